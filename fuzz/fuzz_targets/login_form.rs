//! Arbitrary `/token` bodies, as a form and as JSON: parsing never panics,
//! and a password grant always carries a bounded username and password.
#![no_main]

use authgate::auth::login::{fields, token_request, BodyKind, TokenRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in [BodyKind::Form, BodyKind::Json] {
        let Ok(parsed) = fields(kind, data) else {
            continue;
        };
        if let Ok(TokenRequest::Password {
            username, password, ..
        }) = token_request(parsed)
        {
            assert!(!username.is_empty() && username.len() <= 256);
            assert!(!password.is_empty() && password.len() <= 1024);
        }
    }
});
