//! Where the sign-in page may send a browser back to: only a same-site
//! relative path, so `rd` can never become an open redirect.

use percent_encoding::percent_decode_str;

/// `rd` when it is a same-site relative path (`/x`), else `None`. Refused:
/// `//evil`, `/\evil`, `https://evil`, anything with a control character or
/// whitespace (browsers drop tabs and newlines, turning `/\t/evil` into
/// `//evil`), and anything that percent-decodes to one of those.
pub fn safe_redirect(rd: &str) -> Option<String> {
    let mut current = rd.to_string();
    // Decode a few times: each layer of encoding must be safe on its own.
    for _ in 0..3 {
        if !is_safe_path(&current) {
            return None;
        }
        let decoded = percent_decode_str(&current)
            .decode_utf8()
            .ok()?
            .into_owned();
        if decoded == current {
            return Some(rd.to_string());
        }
        current = decoded;
    }
    None
}

fn is_safe_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && !path.contains('\\')
        && !path.chars().any(|c| c.is_control() || c.is_whitespace())
        && path.len() <= 2048
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_site_paths_pass() {
        assert_eq!(safe_redirect("/").as_deref(), Some("/"));
        assert_eq!(
            safe_redirect("/app/x?y=1#z").as_deref(),
            Some("/app/x?y=1#z")
        );
        assert_eq!(
            safe_redirect("/a?next=https://x").as_deref(),
            Some("/a?next=https://x")
        );
        assert_eq!(safe_redirect("/caf%C3%A9").as_deref(), Some("/caf%C3%A9"));
    }

    #[test]
    fn open_redirects_are_refused() {
        for rd in [
            "",
            "//evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https://evil.com",
            "evil.com",
            "javascript:alert(1)",
            "/%2Fevil.com",
            "%2F%2Fevil.com",
            "/%5Cevil.com",
            "/%252Fevil.com",
            "/\t/evil.com",
            "/%09/evil.com",
            "/%0a/evil.com",
            " /x",
            "/%E0%A4%A",
        ] {
            assert_eq!(safe_redirect(rd), None, "{rd:?}");
        }
    }
}
