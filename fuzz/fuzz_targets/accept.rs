//! Arbitrary `Accept` headers (one value per input line): `wants_html`
//! agrees with a reference reading of RFC 9110 §12.5.1 and §12.4.2.
//!
//! The rule: some media range, compared without regard to case, is
//! `text/html` or `application/xhtml+xml` and carries no `q` parameter
//! (name in any case) of weight 0. Optional whitespace (space, tab) may
//! surround elements, ranges and parameters. A value that is not visible
//! ASCII is ignored whole (a browser never sends one).
//!
//! Inputs the reference does not rule on are only checked not to panic:
//! a quoted string (the code splits on commas and semicolons inside one)
//! and a `q` whose value is not a qvalue (`0.5`, `1`, `0.000`, not `-1`,
//! `.5`, `nan` or ` 0`), where what the code does is its own choice.
#![no_main]

use authgate::endpoints::sign_in::wants_html;
use http::header::ACCEPT;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fn ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`: whether
/// it is zero, or None when `s` is not one.
fn weight_is_zero(s: &str) -> Option<bool> {
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (s, ""),
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match int {
        "0" => Some(frac.bytes().all(|b| b == b'0')),
        "1" if frac.bytes().all(|b| b == b'0') => Some(false),
        _ => None,
    }
}

fn reference(values: &[HeaderValue]) -> Option<bool> {
    let mut wants = false;
    for value in values {
        let Ok(value) = value.to_str() else {
            continue;
        };
        if value.contains('"') {
            return None;
        }
        for element in value.split(',') {
            let mut parts = element.split(';');
            let media = ows(parts.next().unwrap_or(""));
            let mut refused = false;
            for param in parts {
                let param = ows(param);
                let (name, weight) = param.split_once('=').unwrap_or((param, ""));
                if !name.eq_ignore_ascii_case("q") {
                    // `q =0` is no weight, but not a clear non-weight either.
                    if ows(name).eq_ignore_ascii_case("q") {
                        return None;
                    }
                    continue;
                }
                refused |= weight_is_zero(weight)?;
            }
            let html = media.eq_ignore_ascii_case("text/html")
                || media.eq_ignore_ascii_case("application/xhtml+xml");
            wants |= html && !refused;
        }
    }
    Some(wants)
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    let mut values = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(ACCEPT, value.clone());
            values.push(value);
        }
    }
    let got = wants_html(&headers);
    if let Some(expected) = reference(&values) {
        assert_eq!(got, expected, "{values:?}");
    }
});
