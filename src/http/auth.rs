//! Who may call `/rpc`: a configured bearer token, or, when no token is configured, loopback clients only.

use std::net::{IpAddr, SocketAddr};

/// The access policy of `/rpc`.
#[derive(Clone)]
pub enum Access {
    /// `Authorization: Bearer <token>` must match one of these (never empty).
    Tokens(Vec<Vec<u8>>),
    /// No tokens configured: only clients connecting from a loopback address are served.
    LoopbackOnly,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Missing or wrong token: HTTP 401.
    Unauthorized,
    /// Not a loopback peer while no token is configured: HTTP 403.
    Forbidden,
}

impl Access {
    /// Empty tokens are ignored: they would let `Authorization: Bearer ` in.
    pub fn from_tokens(tokens: &[crate::secret::Secret]) -> Access {
        let tokens: Vec<Vec<u8>> =
            tokens.iter().map(|t| t.expose().trim()).filter(|t| !t.is_empty()).map(|t| t.as_bytes().to_vec()).collect();
        if tokens.is_empty() {
            Access::LoopbackOnly
        } else {
            Access::Tokens(tokens)
        }
    }

    /// Checks one request: its `Authorization` header value (if any) and the peer's address (if known).
    pub fn check(&self, authorization: Option<&[u8]>, peer: Option<SocketAddr>) -> Result<(), Denied> {
        match self {
            Access::Tokens(tokens) => {
                let Some(given) = authorization.and_then(bearer_token) else {
                    return Err(Denied::Unauthorized);
                };
                // Compare against every token, without stopping at the first match.
                let mut ok = false;
                for t in tokens {
                    ok |= constant_time_eq(given, t);
                }
                if ok {
                    Ok(())
                } else {
                    Err(Denied::Unauthorized)
                }
            }
            Access::LoopbackOnly => match peer {
                Some(p) if is_loopback(p.ip()) => Ok(()),
                _ => Err(Denied::Forbidden),
            },
        }
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 7235).
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if header.len() <= SCHEME.len() || !header[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = header[SCHEME.len()..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// True if the address is a loopback address, IPv4-mapped IPv6 loopback included.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Equality whose time depends only on the lengths, not on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff: u64 = (a.len() ^ b.len()) as u64;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box((x ^ y) as u64);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let a = Access::from_tokens(&["s3cret".into(), "".into(), "other".into()]);
        assert_eq!(a.check(Some(b"Bearer s3cret"), None), Ok(()));
        assert_eq!(a.check(Some(b"bearer other"), None), Ok(()));
        assert_eq!(a.check(Some(b"Bearer s3cre"), None), Err(Denied::Unauthorized));
        assert_eq!(a.check(Some(b"Bearer "), None), Err(Denied::Unauthorized));
        assert_eq!(a.check(Some(b"Basic s3cret"), None), Err(Denied::Unauthorized));
        assert_eq!(a.check(None, None), Err(Denied::Unauthorized));
    }

    #[test]
    fn loopback_only() {
        let a = Access::from_tokens(&["  ".into()]);
        assert!(matches!(a, Access::LoopbackOnly));
        assert_eq!(a.check(None, Some("127.0.0.1:5".parse().unwrap())), Ok(()));
        assert_eq!(a.check(None, Some("[::1]:5".parse().unwrap())), Ok(()));
        assert_eq!(a.check(None, Some("[::ffff:127.0.0.1]:5".parse().unwrap())), Ok(()));
        assert_eq!(a.check(None, Some("10.0.0.1:5".parse().unwrap())), Err(Denied::Forbidden));
        assert_eq!(a.check(None, None), Err(Denied::Forbidden));
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
