//! Secrets typed so that neither `Debug` nor `config` can print them (issue 21): [`Secret`] (tokens, passwords,
//! AWS secret keys) and [`SecretUrl`] (a database or broker URL, whose user info or `password=` query parameter may
//! hold one). Both serialise their real value (figment's defaults and tests round-trip settings through serde);
//! what is shown to people goes through `Debug`, `Display` or [`Settings::redacted_toml`], which redact.
//!
//! [`Settings::redacted_toml`]: crate::configuration::Settings::redacted_toml

use serde::{Deserialize, Serialize};
use std::fmt;

/// What every redacted value prints as.
pub const REDACTED: &str = "[redacted]";

/// A secret string. `Debug` and `Display` print [`REDACTED`]; [`Secret::expose`] gives the value to the one place
/// that needs it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A URL that may carry a password (`scheme://user:password@host/...` or `?password=...`). Derefs to the full text
/// for the code that connects; `Debug` and `Display` print [`redact_url`] of it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl AsRef<std::ffi::OsStr> for SecretUrl {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

impl std::ops::Deref for SecretUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretUrl {
    fn from(s: String) -> SecretUrl {
        SecretUrl(s)
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> SecretUrl {
        SecretUrl(s.to_owned())
    }
}

impl PartialEq<&str> for SecretUrl {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Query parameters whose value is a secret (libpq's `password` and `sslpassword`, and the like for other URLs).
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "passwd", "pass", "pwd", "secret", "token", "key"].iter().any(|s| k.contains(s))
}

/// `url` with the password of its user info and the value of every secret-looking query parameter replaced by
/// [`REDACTED`]. A text that does not parse as a URL is redacted whole (it may still hold a password).
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else { return REDACTED.into() };
    if u.password().is_some() {
        let _ = u.set_password(Some(REDACTED));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_key(&k) { REDACTED.to_owned() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s} {:?}", Some(vec![s.clone()])), "[redacted] [redacted] Some([[redacted]])");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn urls_lose_user_info_passwords_and_secret_query_parameters() {
        for (url, kept) in [
            ("postgres://app:hunter2@db:5432/x", "postgres://app:"),
            ("postgres://app@db:5432/x?password=hunter2&sslmode=require", "sslmode=require"),
            ("postgres://db/x?sslpassword=hunter2", "postgres://db/x?sslpassword="),
            ("amqps://guest:hunter2@mq:5671/%2f", "@mq:5671/%2f"),
            ("not a url hunter2", "[redacted]"),
        ] {
            let u = SecretUrl::from(url);
            for shown in [format!("{u:?}"), format!("{u}"), redact_url(url)] {
                assert!(!shown.contains("hunter2"), "{url} -> {shown}");
                assert!(shown.contains(kept), "{url} -> {shown}");
            }
            assert_eq!(&*u, url);
        }
    }
}
