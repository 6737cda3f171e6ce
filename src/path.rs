//! Path normalization: the path routes are matched on and forwarded with.
//!
//! Routing and policy must see the same path the upstream will act on,
//! otherwise `/public/../admin` is checked as public and served as admin.
//! So the path is normalized once (RFC 3986 §6.2.2): percent-encoded
//! unreserved characters are decoded, `.` and `..` segments resolved,
//! repeated slashes merged. Anything an upstream might read as a dot
//! segment but we cannot resolve unambiguously (`..;`, `..%2F`, `..\`) is
//! refused rather than guessed at.

use std::borrow::Cow;

use crate::response::GatewayError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `..` above the root.
    EscapesRoot,
    /// Not an origin-form path, bad percent-encoding, NUL, or an ambiguous
    /// dot segment.
    Malformed,
}

/// [`normalize`], its refusal as the 400 the client gets. The pipeline
/// (a request's own path) and `/verify` (the original request's path)
/// share it, so both route on the same path.
pub fn normalized(path: &str) -> Result<Cow<'_, str>, GatewayError> {
    normalize(path).map_err(|e| match e {
        PathError::EscapesRoot => GatewayError::BadRequest("Path escapes the root"),
        PathError::Malformed => GatewayError::BadRequest("Malformed path"),
    })
}

/// Normalizes an origin-form path (without the query).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::Malformed);
    }
    if is_already_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    let mut parts = path[1..].split('/').peekable();
    while let Some(raw) = parts.next() {
        let last = parts.peek().is_none();
        let segment = decode_unreserved(raw)?;
        if is_ambiguous(&segment) {
            return Err(PathError::Malformed);
        }
        match segment.as_str() {
            "" | "." => trailing_slash = last,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
                trailing_slash = last;
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// The common case costs one scan and no allocation.
fn is_already_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    // Control bytes take the slow path, which refuses them.
    !bytes
        .iter()
        .any(|&b| b == b'%' || b == b'\\' || b == b';' || b.is_ascii_control())
        && !path.contains("//")
        && !path.contains("/./")
        && !path.contains("/../")
        && !path.ends_with("/.")
        && !path.ends_with("/..")
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    // Bytes, not chars: a multi-byte character is copied byte for byte.
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::Malformed)?;
            // `from_str_radix` would also take a sign ("%+f").
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(PathError::Malformed);
            }
            let hex = std::str::from_utf8(hex).map_err(|_| PathError::Malformed)?;
            let value = u8::from_str_radix(hex, 16).map_err(|_| PathError::Malformed)?;
            if value == 0 {
                return Err(PathError::Malformed);
            }
            if is_unreserved(value) {
                out.push(value);
            } else {
                out.push(b'%');
                out.extend_from_slice(hex.to_ascii_uppercase().as_bytes());
            }
            i += 3;
        } else {
            if b == 0 || b.is_ascii_control() {
                return Err(PathError::Malformed);
            }
            out.push(b);
            i += 1;
        }
    }
    // Original bytes of valid UTF-8 plus ASCII: still valid.
    String::from_utf8(out).map_err(|_| PathError::Malformed)
}

/// A segment some upstream could read as `.` or `..` after splitting on
/// an encoded slash, a backslash or a `;` path parameter (Tomcat's `..;`).
fn is_ambiguous(segment: &str) -> bool {
    if !segment.contains(['\\', ';', '%']) {
        return false;
    }
    segment
        .split(['\\', ';'])
        .flat_map(|part| part.split("%2F"))
        .flat_map(|part| part.split("%5C"))
        .any(|piece| piece == "." || piece == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(path: &str) -> Result<String, PathError> {
        normalize(path).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_pass_untouched() {
        assert!(matches!(normalize("/api/x?"), Ok(Cow::Borrowed(_))));
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/api/movies/").unwrap(), "/api/movies/");
    }

    #[test]
    fn dot_segments_resolve() {
        assert_eq!(n("/public/../admin/x").unwrap(), "/admin/x");
        assert_eq!(n("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/public/%2E%2E/admin").unwrap(), "/admin");
    }

    #[test]
    fn slashes_merge() {
        assert_eq!(n("//admin").unwrap(), "/admin");
        assert_eq!(n("/a//b///c").unwrap(), "/a/b/c");
    }

    #[test]
    fn unreserved_decode_and_reserved_stay_encoded() {
        assert_eq!(n("/%7Euser/%61").unwrap(), "/~user/a");
        assert_eq!(n("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
    }

    #[test]
    fn escaping_root_is_refused() {
        assert_eq!(n("/.."), Err(PathError::EscapesRoot));
        assert_eq!(n("/a/../../b"), Err(PathError::EscapesRoot));
    }

    #[test]
    fn ambiguous_and_malformed_are_refused() {
        assert_eq!(n("/public/..;/admin"), Err(PathError::Malformed));
        assert_eq!(n("/public/%2E%2E%2Fadmin"), Err(PathError::Malformed));
        assert_eq!(n("/public/..%5Cadmin"), Err(PathError::Malformed));
        assert_eq!(n("/public/..\\admin"), Err(PathError::Malformed));
        assert_eq!(n("/a%00b"), Err(PathError::Malformed));
        assert_eq!(n("/a%zz"), Err(PathError::Malformed));
        assert_eq!(n("/a%2"), Err(PathError::Malformed));
        assert_eq!(n("*"), Err(PathError::Malformed));
    }

    #[test]
    fn raw_control_bytes_are_refused_on_the_fast_path_too() {
        // Found by `fuzz/` (path_normalize): "/\n" came back unchanged.
        assert_eq!(n("/\n"), Err(PathError::Malformed));
        assert_eq!(n("/a\u{0}b"), Err(PathError::Malformed));
        assert_eq!(n("/a\tb"), Err(PathError::Malformed));
        assert_eq!(n("/a\u{7f}"), Err(PathError::Malformed));
    }

    #[test]
    fn non_ascii_survives_the_slow_path() {
        // Found by `fuzz/` (path_normalize): each byte became a char.
        assert_eq!(n("/caf\u{e9}/;/.").unwrap(), "/caf\u{e9}/;/");
        assert_eq!(n("/\u{7ff}//x").unwrap(), "/\u{7ff}/x");
    }

    #[test]
    fn signed_escapes_are_malformed() {
        assert_eq!(n("/a%+f"), Err(PathError::Malformed));
        assert_eq!(n("/a%-1"), Err(PathError::Malformed));
    }

    #[test]
    fn harmless_semicolons_pass() {
        assert_eq!(n("/a;v=1/b").unwrap(), "/a;v=1/b");
    }
}
