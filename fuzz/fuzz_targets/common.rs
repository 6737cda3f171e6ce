//! The JWT services the token targets verify with, built once.

use std::path::Path;
use std::sync::OnceLock;

use authgate::auth::jwt::JwtService;
use authgate::clock::Clock;
use authgate::config::Config;

pub const SECRET: &str = "fuzz-secret-that-is-long-enough-0123456789";

fn service(toml: &str) -> JwtService {
    std::env::set_var("AUTHGATE_FUZZ_SECRET", SECRET);
    std::env::set_var(
        "AUTHGATE_FUZZ_OLD_SECRET",
        "old-fuzz-secret-that-is-long-enough-98765",
    );
    let config = Config::parse(Path::new("fuzz.toml"), toml).expect("fuzz config");
    JwtService::from_config(&config.jwt, Clock::system()).expect("fuzz jwt service")
}

/// HS256, no `key_id`: a header naming any `kid` is refused.
pub fn plain() -> &'static JwtService {
    static JWT: OnceLock<JwtService> = OnceLock::new();
    JWT.get_or_init(|| service("[jwt]\nsecret_env = \"AUTHGATE_FUZZ_SECRET\"\n"))
}

/// HS256 with a current and a previous `kid`: the header selects the key.
pub fn rotating() -> &'static JwtService {
    static JWT: OnceLock<JwtService> = OnceLock::new();
    JWT.get_or_init(|| {
        service(
            "[jwt]\nsecret_env = \"AUTHGATE_FUZZ_SECRET\"\nkey_id = \"new\"\n\
             [[jwt.previous_keys]]\nkey_id = \"old\"\nsecret_env = \"AUTHGATE_FUZZ_OLD_SECRET\"\n",
        )
    })
}
