//! Arbitrary `Cookie` headers: parsing never panics, and removing
//! authgate's cookies leaves none of them behind.
#![no_main]

use authgate::cookies;
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

const OURS: [&str; 2] = ["access_token", "refresh_token"];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(COOKIE, value);
        }
    }
    let all: Vec<(String, String)> = cookies::pairs(&headers)
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    for name in OURS {
        if let Some(value) = cookies::get(&headers, name) {
            assert!(!value.is_empty());
            assert!(all.iter().any(|(n, v)| n == name && v == value));
        }
    }
    let others: Vec<(String, String)> = all
        .iter()
        .filter(|(n, _)| !OURS.contains(&n.as_str()))
        .cloned()
        .collect();
    cookies::remove(&mut headers, &OURS);
    let left: Vec<(String, String)> = cookies::pairs(&headers)
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert!(
        left.iter().all(|(n, _)| !OURS.contains(&n.as_str())),
        "{left:?}"
    );
    // Everything else survives, in order.
    assert_eq!(left, others);
});
