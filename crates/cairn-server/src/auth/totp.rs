//! The second factor: time-based one-time passwords (RFC 6238: HMAC-SHA-1, 6 digits, 30 s
//! steps, as every authenticator app reads them from an `otpauth://` URL).
//!
//! A code is accepted for its own 30-second step and one step either side (clocks drift); the
//! caller records the step it matched so that a code is never accepted twice
//! ([`cairn_configdb::ConfigDb::accept_totp_step`]).

use totp_rs::{Algorithm, Builder, Secret, Totp};

/// Issuer shown by authenticator apps.
pub const ISSUER: &str = "cairn";

/// Why a TOTP secret cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the stored TOTP secret cannot be used: {0}")]
pub struct TotpError(String);

/// A new random secret (160 bits), base32 as stored and shown.
pub fn new_secret() -> String {
    Secret::generate().to_base32()
}

fn totp(secret_base32: &str, account: &str) -> Result<Totp, TotpError> {
    let secret = Secret::try_from_base32(secret_base32).map_err(|e| TotpError(e.to_string()))?;
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_skew(1)
        .with_secret(secret)
        .with_account_name(account)
        .with_issuer(Some(ISSUER))
        .build()
        .map_err(|e| TotpError(e.to_string()))
}

/// The `otpauth://totp/…` URL an authenticator app reads (as a QR code or typed in).
pub fn otpauth_url(secret_base32: &str, user: &str) -> Result<String, TotpError> {
    totp(secret_base32, user)?
        .to_url()
        .map_err(|e| TotpError(e.to_string()))
}

/// The time step `code` is valid for at `unix_secs` (its own step or one either side), if any.
pub fn matching_step(secret_base32: &str, code: &str, unix_secs: u64) -> Result<Option<i64>, TotpError> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    Ok(totp(secret_base32, "check")?
        .check(&code, unix_secs)
        .and_then(|step| i64::try_from(step).ok()))
}

/// The code of `unix_secs` (tests and tools).
pub fn code_at(secret_base32: &str, unix_secs: u64) -> Result<String, TotpError> {
    Ok(totp(secret_base32, "code")?.generate(unix_secs).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_vector_and_the_window_of_one_step_either_side() {
        // RFC 6238 appendix B, SHA-1, secret "12345678901234567890": at 59 s the 8-digit code is
        // 94287082, so the 6-digit one is 287082.
        let secret = Secret::from(b"12345678901234567890".to_vec()).to_base32();
        assert_eq!(code_at(&secret, 59).unwrap(), "287082");
        assert_eq!(matching_step(&secret, "287082", 59).unwrap(), Some(1));
        assert_eq!(
            matching_step(&secret, "287 082", 80).unwrap(),
            Some(1),
            "next step, spaces ignored"
        );
        assert_eq!(matching_step(&secret, "287082", 100).unwrap(), None, "two steps later");
        assert_eq!(matching_step(&secret, "28708", 59).unwrap(), None);
        assert_eq!(matching_step(&secret, "abcdef", 59).unwrap(), None);
    }

    #[test]
    fn new_secrets_make_urls_apps_read() {
        let s = new_secret();
        assert_eq!(Secret::try_from_base32(&s).unwrap().as_bytes().len(), 20);
        let url = otpauth_url(&s, "ann").unwrap();
        assert!(url.starts_with("otpauth://totp/cairn:ann?"), "{url}");
        assert!(url.contains(&format!("secret={s}")), "{url}");
        assert_ne!(s, new_secret());
    }
}
