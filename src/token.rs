//! Connect tokens: a game's backend signs, with its P-256 key, which client may join which
//! servers until when; the client presents the token in its AUTH, and a server configured
//! with the backend's public key checks it.
//!
//! ```text
//! version (8) = 1
//! client id (64)
//! expires (64): Unix time in seconds
//! server count (8): 1..=8
//! per server: family (8: 4 or 6) | address (32 or 128) | port (16)
//! signature (512): ECDSA P-256 / SHA-256, r || s, over "tickwire v0 token" || every octet above
//! ```
//! All integers are big-endian.
//!
//! ```
//! use tickwire::token::{ConnectToken, TokenSigner};
//! let backend = TokenSigner::generate();
//! let server = "127.0.0.1:4000".parse().unwrap();
//! let bytes = backend.issue(42, 1_900_000_000, &[server]);
//! let token = ConnectToken::verify(&bytes, &backend.public_key()).unwrap();
//! assert_eq!(token.client_id, 42);
//! assert!(token.names(server));
//! ```

use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::OsRng;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::crypto::{ServerKey, SIGNATURE_LEN};

/// The label that starts a token's signature input.
pub const TOKEN_LABEL: &[u8] = b"tickwire v0 token";
/// The token format version.
pub const TOKEN_VERSION: u8 = 1;
/// The most servers one token names.
pub const MAX_TOKEN_SERVERS: usize = 8;

/// A checked connect token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectToken {
    /// The id the connection gets.
    pub client_id: u64,
    /// Unix time (seconds) after which the token is refused.
    pub expires: u64,
    /// The servers the client may join with it.
    pub servers: Vec<SocketAddr>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token of this format.
    Malformed,
    /// The signature does not verify under the authority's key.
    BadSignature,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => f.write_str("malformed connect token"),
            Self::BadSignature => f.write_str("connect token signature invalid"),
        }
    }
}

impl std::error::Error for TokenError {}

impl ConnectToken {
    /// Checks `bytes` against the authority's key and returns what it says.
    ///
    /// Expiry and the server list are checked by the caller (the server knows the time and
    /// its address).
    ///
    /// # Errors
    /// [`TokenError`] if the token is malformed or its signature does not verify.
    pub fn verify(bytes: &[u8], authority: &ServerKey) -> Result<Self, TokenError> {
        let body_len = bytes
            .len()
            .checked_sub(SIGNATURE_LEN)
            .ok_or(TokenError::Malformed)?;
        let (body, sig) = bytes.split_at(body_len);
        let token = Self::parse_body(body)?;
        let key = VerifyingKey::from_sec1_bytes(authority.as_bytes())
            .map_err(|_| TokenError::BadSignature)?;
        let sig = Signature::from_slice(sig).map_err(|_| TokenError::BadSignature)?;
        let mut msg = Vec::with_capacity(TOKEN_LABEL.len() + body.len());
        msg.extend_from_slice(TOKEN_LABEL);
        msg.extend_from_slice(body);
        key.verify(&msg, &sig)
            .map_err(|_| TokenError::BadSignature)?;
        Ok(token)
    }

    fn parse_body(body: &[u8]) -> Result<Self, TokenError> {
        let m = TokenError::Malformed;
        let [version, rest @ ..] = body else {
            return Err(m);
        };
        if *version != TOKEN_VERSION || rest.len() < 17 {
            return Err(m);
        }
        let client_id = u64::from_be_bytes(rest[0..8].try_into().map_err(|_| m)?);
        let expires = u64::from_be_bytes(rest[8..16].try_into().map_err(|_| m)?);
        let count = usize::from(rest[16]);
        if count == 0 || count > MAX_TOKEN_SERVERS {
            return Err(m);
        }
        let mut at = &rest[17..];
        let mut servers = Vec::with_capacity(count);
        for _ in 0..count {
            let (&family, tail) = at.split_first().ok_or(m)?;
            let n = match family {
                4 => 4,
                6 => 16,
                _ => return Err(m),
            };
            let addr = tail.get(..n).ok_or(m)?;
            let port = tail.get(n..n + 2).ok_or(m)?;
            let ip = if n == 4 {
                IpAddr::from(<[u8; 4]>::try_from(addr).map_err(|_| m)?)
            } else {
                IpAddr::from(<[u8; 16]>::try_from(addr).map_err(|_| m)?)
            };
            servers.push(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])));
            at = &tail[n + 2..];
        }
        if !at.is_empty() {
            return Err(m);
        }
        Ok(Self {
            client_id,
            expires,
            servers,
        })
    }

    /// Whether the token names `server`.
    pub fn names(&self, server: SocketAddr) -> bool {
        self.servers.contains(&server)
    }
}

/// A game backend's signing key for connect tokens.
#[derive(Clone)]
pub struct TokenSigner {
    signing: SigningKey,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSigner({})", self.public_key())
    }
}

impl TokenSigner {
    /// A new key from the operating system's random number generator.
    pub fn generate() -> Self {
        Self {
            signing: SigningKey::random(&mut OsRng),
        }
    }

    /// The key whose secret scalar is `secret`.
    ///
    /// # Errors
    /// [`crate::crypto::KeyError`] if `secret` is not a valid scalar.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Result<Self, crate::crypto::KeyError> {
        SigningKey::from_bytes(secret.into())
            .map(|signing| Self { signing })
            .map_err(|_| crate::crypto::KeyError::Secret)
    }

    /// The public key servers are configured with.
    pub fn public_key(&self) -> ServerKey {
        let point = self.signing.verifying_key().to_encoded_point(true);
        ServerKey::from_bytes(point.as_bytes()).expect("a valid verifying key")
    }

    /// Issues a token for `client_id`, valid until `expires` (Unix seconds), for `servers`
    /// (1 to 8; more are ignored).
    pub fn issue(&self, client_id: u64, expires: u64, servers: &[SocketAddr]) -> Vec<u8> {
        let servers = &servers[..servers.len().min(MAX_TOKEN_SERVERS)];
        let mut body = vec![TOKEN_VERSION];
        body.extend_from_slice(&client_id.to_be_bytes());
        body.extend_from_slice(&expires.to_be_bytes());
        body.push(servers.len() as u8);
        for s in servers {
            match s.ip() {
                IpAddr::V4(v4) => {
                    body.push(4);
                    body.extend_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    body.push(6);
                    body.extend_from_slice(&v6.octets());
                }
            }
            body.extend_from_slice(&s.port().to_be_bytes());
        }
        let mut msg = TOKEN_LABEL.to_vec();
        msg.extend_from_slice(&body);
        let sig: Signature = self.signing.sign(&msg);
        body.extend_from_slice(&sig.to_bytes());
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_and_altered_tokens_fail() {
        let backend = TokenSigner::generate();
        let other = TokenSigner::generate();
        let s: SocketAddr = "[::1]:9".parse().unwrap();
        let t = backend.issue(7, 100, &[s, "127.0.0.1:1".parse().unwrap()]);
        let ok = ConnectToken::verify(&t, &backend.public_key()).unwrap();
        assert_eq!(ok.servers.len(), 2);
        assert_eq!(
            ConnectToken::verify(&t, &other.public_key()),
            Err(TokenError::BadSignature)
        );
        let mut bad = t.clone();
        bad[5] ^= 1;
        assert!(ConnectToken::verify(&bad, &backend.public_key()).is_err());
        for n in 0..t.len() {
            assert!(ConnectToken::verify(&t[..n], &backend.public_key()).is_err());
        }
    }
}
