//! The handshake's cryptography: P-256 ECDH with fresh keys per connection, the server's
//! certificate (its long-term P-256 key signing both ephemeral keys), and the key schedule
//! (HKDF-SHA256 over the transcript). Every primitive comes from RustCrypto crates.
//!
//! `docs/PROTOCOL.md` gives the exact bytes: certificate layout, signature input, HKDF labels
//! and the finished MAC.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use rand_core::OsRng;
use sha2::{Digest, Sha256};
use std::fmt;

use crate::pipeline::seal::{KEY_LEN, SALT_LEN};
use crate::pipeline::PacketKey;

/// Length of a compressed SEC1 P-256 public key.
pub const PUBLIC_KEY_LEN: usize = 33;
/// The first octets of a compressed SEC1 point: 02 (even y) and 03 (odd y).
pub const COMPRESSED_PREFIXES: [u8; 2] = [0x02, 0x03];
/// Length of an ECDSA P-256 signature (r || s).
pub const SIGNATURE_LEN: usize = 64;
/// Length of the server's certificate: its long-term public key then the signature.
pub const CERTIFICATE_LEN: usize = PUBLIC_KEY_LEN + SIGNATURE_LEN;
/// Length of a finished MAC (HMAC-SHA256).
pub const FINISHED_LEN: usize = 32;
/// The label that starts the certificate's signature input.
pub const CERTIFICATE_LABEL: &[u8] = b"tickwire v0 certificate";
/// The label that starts the transcript hash.
pub const TRANSCRIPT_LABEL: &[u8] = b"tickwire v0 transcript";

/// The server's long-term identity: a P-256 signing key.
#[derive(Clone)]
pub struct ServerIdentity {
    signing: SigningKey,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerIdentity({})", self.public_key())
    }
}

impl ServerIdentity {
    /// A new identity from the operating system's random number generator.
    pub fn generate() -> Self {
        Self {
            signing: SigningKey::random(&mut OsRng),
        }
    }

    /// The identity whose secret scalar is `secret` (32 octets, big-endian).
    ///
    /// # Errors
    /// [`KeyError`] if `secret` is zero or not below the curve order.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Result<Self, KeyError> {
        let signing = SigningKey::from_bytes(secret.into()).map_err(|_| KeyError::Secret)?;
        Ok(Self { signing })
    }

    /// The secret scalar, to store the identity.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes().into()
    }

    /// The public key clients pin.
    pub fn public_key(&self) -> ServerKey {
        ServerKey::from_verifying_key(self.signing.verifying_key())
    }

    /// The certificate for one handshake: this identity's public key, then its signature over
    /// the certificate label || client ephemeral key || server ephemeral key.
    pub fn certificate(
        &self,
        client_ephemeral: &[u8],
        server_ephemeral: &[u8],
    ) -> [u8; CERTIFICATE_LEN] {
        let msg = signature_input(client_ephemeral, server_ephemeral);
        let sig: Signature = self.signing.sign(&msg);
        let mut cert = [0u8; CERTIFICATE_LEN];
        cert[..PUBLIC_KEY_LEN].copy_from_slice(self.public_key().as_bytes());
        cert[PUBLIC_KEY_LEN..].copy_from_slice(&sig.to_bytes());
        cert
    }
}

/// A server's public key (compressed SEC1, 33 octets), as a client pins it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerKey([u8; PUBLIC_KEY_LEN]);

impl ServerKey {
    fn from_verifying_key(key: &VerifyingKey) -> Self {
        let point = key.to_encoded_point(true);
        let mut out = [0u8; PUBLIC_KEY_LEN];
        out.copy_from_slice(point.as_bytes());
        Self(out)
    }

    /// The key from its 33 compressed SEC1 octets: 02 or 03, then the x-coordinate.
    ///
    /// # Errors
    /// [`KeyError`] if there are not 33 octets, the first is not 02 or 03 (uncompressed,
    /// compact and hybrid encodings are refused), or they are not a point on P-256.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let key = public_key_from_bytes(bytes)?;
        Ok(Self::from_verifying_key(&VerifyingKey::from(key)))
    }

    /// The key from 66 hexadecimal digits (as `echo --server` prints it), under the rule of
    /// [`ServerKey::from_bytes`].
    ///
    /// # Errors
    /// [`KeyError`] if the text is not 66 hex digits or its octets are refused by
    /// [`ServerKey::from_bytes`].
    pub fn from_hex(hex: &str) -> Result<Self, KeyError> {
        let hex = hex.trim();
        if hex.len() != PUBLIC_KEY_LEN * 2 {
            return Err(KeyError::Length);
        }
        if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(KeyError::NotHex);
        }
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| KeyError::NotHex)?;
        }
        Self::from_bytes(&bytes)
    }

    /// The 33 octets.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Checks `certificate` against this key and both ephemeral keys.
    ///
    /// # Errors
    /// [`KeyError`] if the certificate names another key or its signature does not verify.
    pub fn verify_certificate(
        &self,
        certificate: &[u8],
        client_ephemeral: &[u8],
        server_ephemeral: &[u8],
    ) -> Result<(), KeyError> {
        let certified = Self::from_certificate(certificate, client_ephemeral, server_ephemeral)?;
        if certified == *self {
            Ok(())
        } else {
            Err(KeyError::Certificate)
        }
    }

    /// The key a certificate names, if its signature over both ephemeral keys verifies.
    ///
    /// # Errors
    /// [`KeyError`] if the certificate is malformed or its signature does not verify.
    pub fn from_certificate(
        certificate: &[u8],
        client_ephemeral: &[u8],
        server_ephemeral: &[u8],
    ) -> Result<Self, KeyError> {
        if certificate.len() != CERTIFICATE_LEN {
            return Err(KeyError::Certificate);
        }
        let (key, sig) = certificate.split_at(PUBLIC_KEY_LEN);
        let verifying = VerifyingKey::from(public_key_from_bytes(key)?);
        let sig = Signature::from_slice(sig).map_err(|_| KeyError::Certificate)?;
        let msg = signature_input(client_ephemeral, server_ephemeral);
        verifying
            .verify(&msg, &sig)
            .map_err(|_| KeyError::Certificate)?;
        Ok(Self::from_verifying_key(&verifying))
    }
}

impl fmt::Display for ServerKey {
    /// Lower-case hex, 66 digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerKey({self})")
    }
}

impl std::str::FromStr for ServerKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_hex(s)
    }
}

/// Why a key or certificate is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// A public key that is not 33 octets (66 hex digits).
    Length,
    /// Key text with a character that is not a hex digit.
    NotHex,
    /// A public key whose first octet is not 02 or 03: only compressed SEC1 points are
    /// accepted.
    NotCompressed,
    /// 33 octets that are not the compressed form of a point on P-256.
    NotOnCurve,
    /// A secret scalar that is zero or not below the curve order.
    Secret,
    /// A certificate that is malformed, names another key, or whose signature does not
    /// verify.
    Certificate,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Length => "a P-256 public key is 33 octets (66 hex digits)",
            Self::NotHex => "the key is not hexadecimal",
            Self::NotCompressed => "not a compressed SEC1 point: the first octet must be 02 or 03",
            Self::NotOnCurve => "not a point on P-256",
            Self::Secret => "not a valid P-256 secret scalar",
            Self::Certificate => "certificate invalid or signature does not verify",
        })
    }
}

/// Parses a public key under the protocol's rule: 33 octets, the first 02 or 03 (a compressed
/// SEC1 point), the rest the x-coordinate of a point on P-256. `p256` alone would also take
/// the uncompressed (04), compact (05) and identity (00) encodings.
///
/// # Errors
/// [`KeyError::Length`], [`KeyError::NotCompressed`] or [`KeyError::NotOnCurve`].
pub(crate) fn public_key_from_bytes(bytes: &[u8]) -> Result<PublicKey, KeyError> {
    if bytes.len() != PUBLIC_KEY_LEN {
        return Err(KeyError::Length);
    }
    if !COMPRESSED_PREFIXES.contains(&bytes[0]) {
        return Err(KeyError::NotCompressed);
    }
    PublicKey::from_sec1_bytes(bytes).map_err(|_| KeyError::NotOnCurve)
}

impl std::error::Error for KeyError {}

fn signature_input(client_ephemeral: &[u8], server_ephemeral: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(CERTIFICATE_LABEL.len() + 2 * PUBLIC_KEY_LEN);
    msg.extend_from_slice(CERTIFICATE_LABEL);
    msg.extend_from_slice(client_ephemeral);
    msg.extend_from_slice(server_ephemeral);
    msg
}

/// A fresh P-256 key pair for one handshake.
pub struct EphemeralKey {
    secret: SecretKey,
    public: [u8; PUBLIC_KEY_LEN],
}

impl fmt::Debug for EphemeralKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EphemeralKey(..)")
    }
}

impl EphemeralKey {
    /// A new key pair from the operating system's random number generator.
    pub fn generate() -> Self {
        Self::from_secret(SecretKey::random(&mut OsRng))
    }

    /// The key pair of a fixed secret scalar (for test vectors).
    ///
    /// # Errors
    /// [`KeyError`] if `secret` is zero or not below the curve order.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Result<Self, KeyError> {
        SecretKey::from_bytes(secret.into())
            .map(Self::from_secret)
            .map_err(|_| KeyError::Secret)
    }

    fn from_secret(secret: SecretKey) -> Self {
        let point = secret.public_key().to_encoded_point(true);
        let mut public = [0u8; PUBLIC_KEY_LEN];
        public.copy_from_slice(point.as_bytes());
        Self { secret, public }
    }

    /// The public key (compressed SEC1) sent in AUTH.
    pub fn public_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.public
    }

    /// The ECDH shared secret with the peer's public key (compressed SEC1, 33 octets).
    ///
    /// # Errors
    /// [`KeyError`] if the peer's key is not 33 octets starting 02 or 03 (a compressed SEC1
    /// point), or not a point on P-256.
    pub fn shared_secret(&self, peer_public: &[u8]) -> Result<[u8; 32], KeyError> {
        let peer = public_key_from_bytes(peer_public)?;
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
        Ok((*shared.raw_secret_bytes()).into())
    }
}

/// SHA-256 of [`TRANSCRIPT_LABEL`] || client AUTH datagram || server AUTH datagram.
pub fn transcript_hash(client_auth: &[u8], server_auth: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(TRANSCRIPT_LABEL);
    h.update(client_auth);
    h.update(server_auth);
    h.finalize().into()
}

/// Everything the key schedule gives one connection.
pub struct SessionKeys {
    /// Seals what the client sends.
    pub client_to_server: PacketKey,
    /// Seals what the server sends.
    pub server_to_client: PacketKey,
    /// The client's finished MAC.
    pub client_finished: [u8; FINISHED_LEN],
    /// The server's finished MAC.
    pub server_finished: [u8; FINISHED_LEN],
    /// A secret both sides share after the handshake, for session resumption.
    pub resumption_secret: [u8; 32],
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

/// HKDF labels of the key schedule, in the order [`SessionKeys`] is filled.
pub mod labels {
    /// Client-to-server AES-128 key (16 octets).
    pub const C2S_KEY: &[u8] = b"tickwire c2s key";
    /// Client-to-server nonce salt (12 octets).
    pub const C2S_SALT: &[u8] = b"tickwire c2s salt";
    /// Server-to-client AES-128 key (16 octets).
    pub const S2C_KEY: &[u8] = b"tickwire s2c key";
    /// Server-to-client nonce salt (12 octets).
    pub const S2C_SALT: &[u8] = b"tickwire s2c salt";
    /// The client's finished key (32 octets).
    pub const C_FINISHED: &[u8] = b"tickwire client finished";
    /// The server's finished key (32 octets).
    pub const S_FINISHED: &[u8] = b"tickwire server finished";
    /// The resumption secret (32 octets).
    pub const RESUMPTION: &[u8] = b"tickwire resumption";
}

/// Runs the key schedule: HKDF-SHA256 with the transcript hash as salt and the ECDH shared
/// secret as input keying material; each output is an HKDF-Expand with its label as info.
/// A finished MAC is HMAC-SHA256 under the finished key over the transcript hash.
pub fn derive_session_keys(shared_secret: &[u8; 32], transcript: &[u8; 32]) -> SessionKeys {
    let hk = Hkdf::<Sha256>::new(Some(transcript), shared_secret);
    let expand = |label: &[u8], out: &mut [u8]| {
        hk.expand(label, out)
            .expect("HKDF-SHA256 gives up to 8160 octets");
    };
    let (mut c2s_key, mut s2c_key) = ([0u8; KEY_LEN], [0u8; KEY_LEN]);
    let (mut c2s_salt, mut s2c_salt) = ([0u8; SALT_LEN], [0u8; SALT_LEN]);
    let (mut c_fin, mut s_fin, mut resumption) = ([0u8; 32], [0u8; 32], [0u8; 32]);
    expand(labels::C2S_KEY, &mut c2s_key);
    expand(labels::C2S_SALT, &mut c2s_salt);
    expand(labels::S2C_KEY, &mut s2c_key);
    expand(labels::S2C_SALT, &mut s2c_salt);
    expand(labels::C_FINISHED, &mut c_fin);
    expand(labels::S_FINISHED, &mut s_fin);
    expand(labels::RESUMPTION, &mut resumption);
    SessionKeys {
        client_to_server: PacketKey::new(&c2s_key, &c2s_salt),
        server_to_client: PacketKey::new(&s2c_key, &s2c_salt),
        client_finished: finished_mac(&c_fin, transcript),
        server_finished: finished_mac(&s_fin, transcript),
        resumption_secret: resumption,
    }
}

fn finished_mac(key: &[u8; 32], transcript: &[u8; 32]) -> [u8; FINISHED_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(transcript);
    mac.finalize().into_bytes().into()
}

/// The label of a resumption ticket's MAC.
pub const RESUME_LABEL: &[u8] = b"tickwire v0 resume";

/// HMAC-SHA256 under a resumption secret over [`RESUME_LABEL`] || the new client ephemeral
/// key: proof that a reconnecting client holds the old session's secret.
pub fn resume_mac(secret: &[u8; 32], client_ephemeral: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(RESUME_LABEL);
    mac.update(client_ephemeral);
    mac.finalize().into_bytes().into()
}

/// Compares two MACs in constant time (`subtle`).
pub fn macs_equal(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_derive_the_same_keys() {
        let c = EphemeralKey::generate();
        let s = EphemeralKey::generate();
        let th = transcript_hash(b"client auth", b"server auth");
        let kc = derive_session_keys(&c.shared_secret(s.public_bytes()).unwrap(), &th);
        let ks = derive_session_keys(&s.shared_secret(c.public_bytes()).unwrap(), &th);
        assert_eq!(kc.client_finished, ks.client_finished);
        assert_ne!(kc.client_finished, kc.server_finished);
        let mut buf = b"hello".to_vec();
        buf.reserve(16);
        kc.client_to_server.seal(1, b"aad", &mut buf);
        let n = ks.client_to_server.open(1, b"aad", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
    }

    #[test]
    fn only_compressed_points_parse_as_server_keys() {
        let key = ServerIdentity::generate().public_key();
        let hex = key.to_string();
        assert_eq!(hex.parse::<ServerKey>(), Ok(key));
        assert_eq!(ServerKey::from_bytes(key.as_bytes()), Ok(key));
        for prefix in ["00", "01", "04", "05", "06", "07", "ff"] {
            let text = format!("{prefix}{}", &hex[2..]);
            assert_eq!(
                text.parse::<ServerKey>(),
                Err(KeyError::NotCompressed),
                "{text}"
            );
        }
        let uncompressed = VerifyingKey::from_sec1_bytes(key.as_bytes())
            .unwrap()
            .to_encoded_point(false);
        assert_eq!(
            ServerKey::from_bytes(uncompressed.as_bytes()),
            Err(KeyError::Length)
        );
        assert_eq!(ServerKey::from_hex(&hex[..64]), Err(KeyError::Length));
        assert_eq!(
            ServerKey::from_hex(&format!("{}zz", &hex[..64])),
            Err(KeyError::NotHex)
        );
        // The other y: still a point, another key.
        let flipped = format!("{:02x}{}", key.as_bytes()[0] ^ 1, &hex[2..]);
        assert_ne!(flipped.parse::<ServerKey>().unwrap(), key);
        assert!(KeyError::NotCompressed.to_string().contains("02 or 03"));
    }

    #[test]
    fn certificate_binds_key_and_ephemerals() {
        let id = ServerIdentity::generate();
        let other = ServerIdentity::generate();
        let (c, s) = ([2u8; 33], [3u8; 33]);
        let cert = id.certificate(&c, &s);
        id.public_key().verify_certificate(&cert, &c, &s).unwrap();
        assert!(other
            .public_key()
            .verify_certificate(&cert, &c, &s)
            .is_err());
        assert!(id.public_key().verify_certificate(&cert, &s, &c).is_err());
        let mut bad = cert;
        bad[50] ^= 1;
        assert!(id.public_key().verify_certificate(&bad, &c, &s).is_err());
        let key = id.public_key();
        assert_eq!(ServerKey::from_hex(&key.to_string()).unwrap(), key);
        let back = ServerIdentity::from_secret_bytes(&id.secret_bytes()).unwrap();
        assert_eq!(back.public_key(), key);
    }
}
