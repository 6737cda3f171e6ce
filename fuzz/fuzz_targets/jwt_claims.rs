//! Arbitrary header and claims JSON, *correctly signed*: the claim parser
//! and validator see everything an issuer bug could produce. Never panics;
//! whatever verifies has a subject and an `exp` within the access TTL.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(0);
    let (header, claims) = data.split_at(split);
    let claims = claims.strip_prefix(b"\0").unwrap_or(claims);
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .expect("HMAC signing");
    let token = format!("{message}.{signature}");
    for jwt in [common::plain(), common::rotating()] {
        if let Ok(verified) = jwt.verify(&token) {
            let now = authgate::clock::Clock::system().unix_secs();
            assert!(verified.exp >= now, "expired token accepted");
            assert!(verified.exp <= now + jwt.access_ttl.as_secs() + 1);
            // The identity no longer carries `iss`: read it from what was
            // signed.
            let claims: serde_json::Value = serde_json::from_slice(claims).expect("verified JSON");
            assert_eq!(claims["iss"], "authgate");
        }
    }
});
