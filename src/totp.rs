//! The second factor: time-based one-time codes (RFC 6238) and the key that
//! keeps their secrets encrypted at rest.
//!
//! Parameters are the ones every authenticator app supports: a 160-bit
//! random secret (base32 in the `otpauth://` URI), HMAC-SHA1, 6 digits, 30 s
//! steps. A code is accepted for its own step and one step either side, so
//! a phone whose clock is off by up to 30 s still works; which step matched
//! is returned, so the caller can refuse a replay (see
//! `auth::second_factor`).
//!
//! Secrets are stored as `v1:` + base64(nonce || ciphertext), sealed with
//! ChaCha20-Poly1305 under the key from `[users] totp_key_env` (32 bytes,
//! base64), a random 96-bit nonce per secret, and the username as
//! associated data: a sealed secret copied onto another user does not
//! open. The same key seals the sign-in page's short-lived "password
//! passed" ticket ([`Ticket`]).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::config::{Located, Problem};
use crate::users::User;

/// Secret size: 160 bits, the HMAC-SHA1 block RFC 4226 recommends.
pub const SECRET_BYTES: usize = 20;
/// Seconds per step.
pub const PERIOD: u64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Steps accepted either side of the current one.
pub const TOLERANCE: u64 = 1;
/// How long a sign-in ticket (password passed, code still to come) lasts.
pub const TICKET_TTL_MS: u64 = 5 * 60 * 1000;

const VERSION: &str = "v1:";
const NONCE_BYTES: usize = 12;
/// Associated data prefixes: a sealed secret never opens as a ticket, nor
/// the other way round.
const SECRET_AD: &[u8] = b"authgate totp secret\0";
const TICKET_AD: &[u8] = b"authgate sign-in ticket\0";

/// A TOTP secret in clear; only ever in memory.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn generate() -> Secret {
        Secret(rand::random::<[u8; SECRET_BYTES]>().to_vec())
    }

    pub fn from_bytes(bytes: &[u8]) -> Secret {
        Secret(bytes.to_vec())
    }

    /// Base32 without padding, as authenticator apps take it.
    pub fn base32(&self) -> String {
        data_encoding::BASE32_NOPAD.encode(&self.0)
    }

    pub fn from_base32(text: &str) -> Option<Secret> {
        let text = text.trim().to_ascii_uppercase().replace(' ', "");
        let text = text.trim_end_matches('=');
        data_encoding::BASE32_NOPAD
            .decode(text.as_bytes())
            .ok()
            .map(Secret)
    }

    /// The code of time step `step` (RFC 4226 §5.3 with RFC 6238's counter).
    pub fn code_at(&self, step: u64) -> u32 {
        let mut mac =
            <Hmac<Sha1> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(&step.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let offset = usize::from(digest[digest.len() - 1] & 0x0f);
        let bin = u32::from_be_bytes([
            digest[offset] & 0x7f,
            digest[offset + 1],
            digest[offset + 2],
            digest[offset + 3],
        ]);
        bin % 10u32.pow(DIGITS)
    }

    /// The step in which `code` is valid at `unix_secs`, within the
    /// tolerance; `None` for a wrong or malformed code. Every candidate
    /// step is computed, so the time taken does not tell which matched.
    pub fn verify(&self, code: &str, unix_secs: u64) -> Option<u64> {
        let code = normalize(code)?;
        let now = unix_secs / PERIOD;
        let mut found = None;
        for step in now.saturating_sub(TOLERANCE)..=now + TOLERANCE {
            let expected = format!("{:0width$}", self.code_at(step), width = DIGITS as usize);
            if subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), code.as_bytes()).into() {
                found = found.or(Some(step));
            }
        }
        found
    }

    /// The `otpauth://` URI authenticator apps scan.
    pub fn uri(&self, issuer: &str, username: &str) -> String {
        use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
        let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={PERIOD}",
            enc(issuer),
            enc(username),
            self.base32(),
            enc(issuer),
        )
    }
}

/// A code as typed: spaces allowed ("123 456"); six ASCII digits.
fn normalize(code: &str) -> Option<String> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    (code.len() == DIGITS as usize && code.bytes().all(|b| b.is_ascii_digit())).then_some(code)
}

/// The step of the current time, for callers that compute codes.
pub fn step_of(unix_secs: u64) -> u64 {
    unix_secs / PERIOD
}

/// The secret of an `otpauth://` URI (what a test or a script reads back
/// from `users totp enroll`).
pub fn secret_of_uri(uri: &str) -> Option<Secret> {
    let query = uri.strip_prefix("otpauth://totp/")?.split_once('?')?.1;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find_map(|(k, v)| (k == "secret").then(|| Secret::from_base32(&v)))
        .flatten()
}

/// A QR code of `text` drawn with Unicode half blocks, two rows a line,
/// with its quiet zone: dark on light, as phones expect.
pub fn qr_text(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

/// Why a sealed secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a sealed secret of a known version (expected \"v1:...\")")]
    Format,
    #[error("does not open with this key (another key, or not this user's)")]
    Key,
}

/// The key second-factor secrets are sealed with.
#[derive(Clone)]
pub struct TotpKey {
    cipher: ChaCha20Poly1305,
    /// The env var it came from, for messages.
    pub env: String,
}

impl std::fmt::Debug for TotpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpKey")
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

impl TotpKey {
    pub fn new(bytes: &[u8; 32], env: &str) -> TotpKey {
        TotpKey {
            cipher: ChaCha20Poly1305::new(bytes.into()),
            env: env.into(),
        }
    }

    /// The key named by `[users] totp_key_env`: `None` when the variable
    /// is unset (no user may then have a second factor); a set variable
    /// that is not 32 bytes of base64 is a problem even so.
    pub fn from_env(env: &Located<String>) -> Result<Option<TotpKey>, Problem> {
        let Ok(text) = std::env::var(&env.value) else {
            return Ok(None);
        };
        let bytes = STANDARD
            .decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                env.problem(format!(
                    "environment variable {} must hold 32 random bytes in base64 \
                     (e.g. `head -c 32 /dev/urandom | base64`)",
                    env.value
                ))
            })?;
        Ok(Some(TotpKey::new(&bytes, &env.value)))
    }

    fn seal_with(&self, ad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: ad,
                },
            )
            .expect("sealing in memory cannot fail");
        [nonce.as_slice(), &ciphertext].concat()
    }

    fn open_with(&self, ad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: ad,
                },
            )
            .ok()
    }

    /// The stored form of `username`'s secret.
    pub fn seal(&self, username: &str, secret: &Secret) -> String {
        let ad = [SECRET_AD, username.as_bytes()].concat();
        format!(
            "{VERSION}{}",
            STANDARD.encode(self.seal_with(&ad, &secret.0))
        )
    }

    pub fn open(&self, username: &str, stored: &str) -> Result<Secret, SealError> {
        let sealed = stored
            .strip_prefix(VERSION)
            .and_then(|b| STANDARD.decode(b).ok())
            .ok_or(SealError::Format)?;
        let ad = [SECRET_AD, username.as_bytes()].concat();
        self.open_with(&ad, &sealed)
            .map(Secret)
            .ok_or(SealError::Key)
    }

    /// A ticket saying `user`'s password was right, until `now_ms` plus
    /// [`TICKET_TTL_MS`].
    pub fn ticket(&self, user: &User, now_ms: u64) -> String {
        let expires = now_ms + TICKET_TTL_MS;
        let mut plain = expires.to_be_bytes().to_vec();
        plain.extend_from_slice(&password_fingerprint(user));
        plain.extend_from_slice(user.username.as_bytes());
        URL_SAFE_NO_PAD.encode(self.seal_with(TICKET_AD, &plain))
    }

    /// The username a ticket was issued to, while it lasts.
    pub fn redeem(&self, ticket: &str, now_ms: u64) -> Option<Ticket> {
        let sealed = URL_SAFE_NO_PAD.decode(ticket.trim()).ok()?;
        let plain = self.open_with(TICKET_AD, &sealed)?;
        if plain.len() < 8 + FINGERPRINT_BYTES {
            return None;
        }
        let (expires, rest) = plain.split_at(8);
        let expires = u64::from_be_bytes(expires.try_into().ok()?);
        if expires <= now_ms {
            return None;
        }
        let (fingerprint, username) = rest.split_at(FINGERPRINT_BYTES);
        Some(Ticket {
            username: String::from_utf8(username.to_vec()).ok()?,
            fingerprint: fingerprint.try_into().ok()?,
        })
    }
}

const FINGERPRINT_BYTES: usize = 16;

/// A digest of the user's password hash: a ticket stops working when the
/// password changes.
fn password_fingerprint(user: &User) -> [u8; FINGERPRINT_BYTES] {
    let digest = Sha256::digest(user.password_hash.as_bytes());
    digest[..FINGERPRINT_BYTES]
        .try_into()
        .expect("a SHA-256 digest is longer")
}

/// A redeemed sign-in ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub username: String,
    fingerprint: [u8; FINGERPRINT_BYTES],
}

impl Ticket {
    /// Whether `user` (as the store has them now) is whom the ticket was
    /// issued to, password unchanged.
    pub fn matches(&self, user: &User) -> bool {
        user.username == self.username && password_fingerprint(user) == self.fingerprint
    }
}

/// Checks that every user with a second factor can be served with `key`:
/// the key is there and opens each stored secret. The message names the
/// variable and the first user at fault.
pub fn check_users<'a>(
    users: impl IntoIterator<Item = &'a User>,
    key: Option<&TotpKey>,
    env: &str,
) -> Result<(), String> {
    for user in users {
        let Some(stored) = &user.totp else { continue };
        let Some(key) = key else {
            return Err(format!(
                "user {:?} has a second factor but environment variable {env} is not set: \
                 it must hold the key their secrets were sealed with (32 bytes, base64)",
                user.username
            ));
        };
        match key.open(&user.username, stored) {
            Ok(_) => {}
            Err(SealError::Format) => {
                return Err(format!(
                    "user {:?}: the second-factor secret is not in a known format (expected \"v1:...\")",
                    user.username
                ))
            }
            Err(SealError::Key) => {
                return Err(format!(
                    "user {:?}: the second-factor secret does not open with the key in {env} \
                     (was it sealed with another key, or for another user?)",
                    user.username
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA1 column (8 digits there; our 6 are its
    /// last 6, as RFC 4226's truncation takes the value modulo 10^digits).
    #[test]
    fn rfc_6238_test_vectors() {
        let secret = Secret::from_bytes(b"12345678901234567890");
        for (time, eight) in [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(
                secret.code_at(time / PERIOD),
                eight % 1_000_000,
                "T = {time}"
            );
        }
    }

    #[test]
    fn one_step_of_tolerance_either_way() {
        let secret = Secret::generate();
        let now = 1_700_000_015;
        let step = now / PERIOD;
        let code = |s: u64| format!("{:06}", secret.code_at(s));
        assert_eq!(secret.verify(&code(step), now), Some(step));
        assert_eq!(secret.verify(&code(step - 1), now), Some(step - 1));
        assert_eq!(secret.verify(&code(step + 1), now), Some(step + 1));
        assert_eq!(secret.verify(&code(step - 2), now), None);
        assert_eq!(secret.verify(&code(step + 2), now), None);
        let spaced = format!("{} {}", &code(step)[..3], &code(step)[3..]);
        assert_eq!(secret.verify(&spaced, now), Some(step));
        assert_eq!(secret.verify("12345", now), None);
        assert_eq!(secret.verify("12345a", now), None);
    }

    #[test]
    fn sealed_secrets_open_for_their_user_only() {
        let key = TotpKey::new(&[7; 32], "K");
        let secret = Secret::generate();
        let sealed = key.seal("alice", &secret);
        assert!(sealed.starts_with("v1:"));
        assert_eq!(key.open("alice", &sealed), Ok(secret.clone()));
        assert_eq!(key.open("bob", &sealed), Err(SealError::Key));
        let other = TotpKey::new(&[8; 32], "K");
        assert_eq!(other.open("alice", &sealed), Err(SealError::Key));
        assert_eq!(key.open("alice", "v2:abc"), Err(SealError::Format));
        // A fresh nonce each time.
        assert_ne!(key.seal("alice", &secret), sealed);
    }

    #[test]
    fn uri_round_trip() {
        let secret = Secret::generate();
        let uri = secret.uri("https://auth.example.com", "alice@x");
        assert!(
            uri.starts_with("otpauth://totp/https%3A%2F%2Fauth%2Eexample%2Ecom:alice%40x?secret=")
        );
        assert!(uri.ends_with("&algorithm=SHA1&digits=6&period=30"));
        assert_eq!(secret_of_uri(&uri), Some(secret));
        assert!(qr_text(&uri).unwrap().contains('█'));
    }

    #[test]
    fn tickets_expire_and_follow_the_password() {
        let key = TotpKey::new(&[1; 32], "K");
        let mut user = User {
            username: "alice".into(),
            password_hash: "$2b$04$one".into(),
            ..User::default()
        };
        let ticket = key.ticket(&user, 1_000);
        let redeemed = key.redeem(&ticket, 1_000 + TICKET_TTL_MS - 1).unwrap();
        assert!(redeemed.matches(&user));
        assert!(key.redeem(&ticket, 1_000 + TICKET_TTL_MS).is_none());
        user.password_hash = "$2b$04$two".into();
        assert!(!redeemed.matches(&user));
        assert!(TotpKey::new(&[2; 32], "K").redeem(&ticket, 1_000).is_none());
        // A sealed secret is no ticket.
        let sealed = key.seal("alice", &Secret::generate());
        assert!(key.redeem(&sealed[3..], 0).is_none());
    }

    #[test]
    fn users_need_the_right_key() {
        let key = TotpKey::new(&[3; 32], "AUTHGATE_TOTP_KEY");
        let alice = User {
            username: "alice".into(),
            totp: Some(key.seal("alice", &Secret::generate())),
            ..User::default()
        };
        let bob = User {
            username: "bob".into(),
            ..User::default()
        };
        assert!(check_users([&bob], None, "AUTHGATE_TOTP_KEY").is_ok());
        let e = check_users([&bob, &alice], None, "AUTHGATE_TOTP_KEY").unwrap_err();
        assert!(
            e.contains("AUTHGATE_TOTP_KEY") && e.contains("alice"),
            "{e}"
        );
        assert!(check_users([&alice], Some(&key), "AUTHGATE_TOTP_KEY").is_ok());
        let wrong = TotpKey::new(&[4; 32], "AUTHGATE_TOTP_KEY");
        let e = check_users([&alice], Some(&wrong), "AUTHGATE_TOTP_KEY").unwrap_err();
        assert!(e.contains("does not open"), "{e}");
    }
}
