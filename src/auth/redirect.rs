//! Where a sign-in may send the browser afterwards (`rd`).
//!
//! Only a path on this same site is accepted: `/app/x?y=1#z`. Everything a
//! browser could read as another host is refused: `//evil`, `/\evil` (a
//! browser turns `\` into `/`), `https://evil`, `javascript:`, a tab or
//! newline that a browser strips (`/\t/evil`), and each of these hidden
//! behind percent-encoding, however many times it is encoded.

use percent_encoding::percent_decode_str;

/// Longest `rd` accepted.
const MAX_LEN: usize = 2048;
/// How many layers of percent-encoding are peeled off and checked.
const MAX_DECODES: usize = 4;

/// `Some(rd)` when `rd` is a same-site relative path, else `None`.
pub fn safe_redirect(rd: &str) -> Option<String> {
    if rd.len() > MAX_LEN || !rd.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut form = rd.to_string();
    for _ in 0..MAX_DECODES {
        if !is_local_path(&form) {
            return None;
        }
        let decoded = percent_decode_str(&form).decode_utf8().ok()?;
        if decoded == form {
            return Some(rd.to_string());
        }
        form = decoded.into_owned();
    }
    // Still decoding after that many layers: nobody writes that by accident.
    None
}

fn is_local_path(path: &str) -> bool {
    path.starts_with('/')
        && !path[1..].starts_with(['/', '\\'])
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_pass_unchanged() {
        for ok in ["/", "/app", "/app/x?y=1&z=%2F#top", "/a%20b", "/@evil.com"] {
            assert_eq!(safe_redirect(ok).as_deref(), Some(ok), "{ok}");
        }
    }

    #[test]
    fn other_hosts_are_refused() {
        for bad in [
            "",
            "app",
            "//evil.com",
            "///evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https://evil.com",
            "HTTPS://evil.com/",
            "javascript:alert(1)",
            "/%2Fevil.com",
            "/%2fevil.com",
            "/%5Cevil.com",
            "%2F%2Fevil.com",
            "/%252Fevil.com",
            "/%25252F%25252Fevil.com",
            "/\t/evil.com",
            "/%09/evil.com",
            "/%0d%0aSet-Cookie:x=1",
            "/a\nb",
            "/caf\u{e9}",
            "/%ff",
            "/ x",
        ] {
            assert_eq!(safe_redirect(bad), None, "{bad:?}");
        }
        assert_eq!(safe_redirect(&format!("/{}", "a".repeat(3000))), None);
    }
}
