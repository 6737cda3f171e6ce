//! Arbitrary request paths: normalization never panics, and what it
//! returns is normal — rooted, no dot segments, no empty segments, no
//! control bytes, and a fixed point.
#![no_main]

use authgate::path::normalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = normalize(path) else {
        return;
    };
    assert!(normal.starts_with('/'), "{normal:?}");
    assert!(!normal.contains("//"), "{normal:?}");
    assert!(!normal.bytes().any(|b| b.is_ascii_control()), "{normal:?}");
    for segment in normal.split('/').skip(1) {
        assert!(segment != "." && segment != "..", "{path:?} -> {normal:?}");
    }
    assert_eq!(
        normalize(&normal).as_deref(),
        Ok(&*normal),
        "not idempotent: {path:?}"
    );
});
