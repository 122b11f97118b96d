//! End-to-end encryption of private messages for `examples/chat_client.rs`, from the same
//! vetted RustCrypto crates the transport uses: P-256 ECDH (`p256`), HKDF-SHA256 (`hkdf`),
//! AES-256-GCM (`aes-gcm`), randomness from the operating system (`rand_core::OsRng`).
//!
//! - Each client makes a P-256 key pair at start and publishes the public half (compressed
//!   SEC1, 33 octets) with `PM_PUBKEY`.
//! - A session key is 32 random octets, one per direction of a pair of users (made by the
//!   sender before its first PM to that user, so two users who start writing at the same time
//!   never race), forgotten when either user leaves.
//! - [`wrap`] sends it: with a fresh ephemeral key pair E, sender key pair S and recipient
//!   public key R, the key-encryption key is
//!   `HKDF-SHA256(salt = WRAP_LABEL, ikm = ECDH(E, R) || ECDH(S, R),
//!   info = WRAP_LABEL || E.pub || S.pub || R || sender || ">" || recipient)`, and the blob is
//!   `E.pub (33) || nonce (12) || AES-256-GCM(kek, nonce, session key, aad = "session key")`
//!   (93 octets). The ephemeral half makes every wrap fresh; the static half means only the
//!   holder of S's secret could have made it (as far as the published keys can be trusted).
//! - [`seal`] encrypts one message: `nonce (12) || AES-256-GCM(session key, nonce,
//!   counter (8, big-endian) || text, aad = MESSAGE_LABEL || sender || ">" || recipient)`,
//!   with a random nonce per message. The names in the associated data stop the server from
//!   turning a message around or passing it off as another pair's; the counter, which must
//!   grow, stops it from replaying one.
//!
//! The server is the key directory: it could hand out its own keys instead of the users'
//! (a man in the middle). Comparing `* my PM key` fingerprints out of band would detect that;
//! this example does not go further.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;

/// The HKDF label (salt and start of the info) of key wrapping.
const WRAP_LABEL: &[u8] = b"tickwire-chat v1 session key wrap";
/// The start of a message's associated data.
const MESSAGE_LABEL: &[u8] = b"tickwire-chat v1 private message ";
/// Octets of a compressed SEC1 public key.
const PUBLIC_LEN: usize = 33;
/// Octets of an AES-GCM nonce.
const NONCE_LEN: usize = 12;
/// Octets of an AES-GCM tag.
const TAG_LEN: usize = 16;
/// Octets of a session key (AES-256).
pub const SESSION_KEY_LEN: usize = 32;

/// A session key.
pub type SessionKey = [u8; SESSION_KEY_LEN];

/// Why something could not be decrypted (or a key was unusable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoError(pub &'static str);

impl std::fmt::Display for CryptoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// A user's long-term (for the process's life) key pair.
pub struct Identity {
    secret: SecretKey,
    public: [u8; PUBLIC_LEN],
}

impl Identity {
    /// A fresh key pair.
    pub fn generate() -> Self {
        let secret = SecretKey::random(&mut OsRng);
        let public = compressed(&secret.public_key());
        Self { secret, public }
    }

    /// The public key, compressed SEC1.
    pub fn public_bytes(&self) -> &[u8; PUBLIC_LEN] {
        &self.public
    }
}

fn compressed(key: &PublicKey) -> [u8; PUBLIC_LEN] {
    let mut out = [0u8; PUBLIC_LEN];
    out.copy_from_slice(key.to_encoded_point(true).as_bytes());
    out
}

/// A peer's public key, checked to be a point on P-256.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerKey {
    key: PublicKey,
    bytes: [u8; PUBLIC_LEN],
}

impl PeerKey {
    /// Parses a compressed or uncompressed SEC1 public key.
    ///
    /// # Errors
    /// If it is not a point on P-256.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let key =
            PublicKey::from_sec1_bytes(bytes).map_err(|_| CryptoError("not a P-256 public key"))?;
        Ok(Self {
            bytes: compressed(&key),
            key,
        })
    }
}

fn ecdh(secret: &SecretKey, public: &PublicKey) -> [u8; 32] {
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine());
    (*shared.raw_secret_bytes()).into()
}

/// A new random session key.
pub fn new_session_key() -> SessionKey {
    let mut key = [0u8; SESSION_KEY_LEN];
    OsRng.fill_bytes(&mut key);
    key
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    nonce
}

/// The key-encryption key of one wrap (see the module docs).
fn wrap_key(
    dh_ephemeral: &[u8; 32],
    dh_static: &[u8; 32],
    ephemeral_pub: &[u8],
    sender_pub: &[u8],
    recipient_pub: &[u8],
    sender: &str,
    recipient: &str,
) -> [u8; 32] {
    let mut ikm = [0u8; 64];
    ikm[..32].copy_from_slice(dh_ephemeral);
    ikm[32..].copy_from_slice(dh_static);
    let mut info = Vec::with_capacity(WRAP_LABEL.len() + 3 * PUBLIC_LEN + 32);
    info.extend_from_slice(WRAP_LABEL);
    info.extend_from_slice(ephemeral_pub);
    info.extend_from_slice(sender_pub);
    info.extend_from_slice(recipient_pub);
    info.extend_from_slice(sender.as_bytes());
    info.push(b'>');
    info.extend_from_slice(recipient.as_bytes());
    let mut kek = [0u8; 32];
    Hkdf::<Sha256>::new(Some(WRAP_LABEL), &ikm)
        .expand(&info, &mut kek)
        .expect("32 octets is a valid HKDF-SHA256 output length");
    kek
}

/// Encrypts `session` for `recipient` (whose public key is `recipient_key`), from `sender`
/// holding `me`: the blob `PM_SESSIONKEY` carries.
pub fn wrap(
    me: &Identity,
    sender: &str,
    recipient: &str,
    recipient_key: &PeerKey,
    session: &SessionKey,
) -> Vec<u8> {
    let ephemeral = SecretKey::random(&mut OsRng);
    let ephemeral_pub = compressed(&ephemeral.public_key());
    let kek = wrap_key(
        &ecdh(&ephemeral, &recipient_key.key),
        &ecdh(&me.secret, &recipient_key.key),
        &ephemeral_pub,
        &me.public,
        &recipient_key.bytes,
        sender,
        recipient,
    );
    let nonce = random_nonce();
    let sealed = Aes256Gcm::new(&kek.into())
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: session,
                aad: b"session key",
            },
        )
        .expect("AES-GCM encrypts any short message");
    let mut blob = Vec::with_capacity(PUBLIC_LEN + NONCE_LEN + sealed.len());
    blob.extend_from_slice(&ephemeral_pub);
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&sealed);
    blob
}

/// Decrypts a session key `sender` (whose public key is `sender_key`) wrapped for
/// `recipient`, who holds `me`.
///
/// # Errors
/// If the blob is malformed or was not made for this pair of keys and names.
pub fn unwrap(
    me: &Identity,
    sender: &str,
    recipient: &str,
    sender_key: &PeerKey,
    blob: &[u8],
) -> Result<SessionKey, CryptoError> {
    if blob.len() != PUBLIC_LEN + NONCE_LEN + SESSION_KEY_LEN + TAG_LEN {
        return Err(CryptoError("wrapped session key has the wrong length"));
    }
    let (ephemeral_pub, rest) = blob.split_at(PUBLIC_LEN);
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
    let ephemeral = PeerKey::from_bytes(ephemeral_pub)?;
    let kek = wrap_key(
        &ecdh(&me.secret, &ephemeral.key),
        &ecdh(&me.secret, &sender_key.key),
        ephemeral_pub,
        &sender_key.bytes,
        &me.public,
        sender,
        recipient,
    );
    let key = Aes256Gcm::new(&kek.into())
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: sealed,
                aad: b"session key",
            },
        )
        .map_err(|_| CryptoError("session key does not decrypt"))?;
    key.try_into()
        .map_err(|_| CryptoError("session key has the wrong length"))
}

fn message_aad(sender: &str, recipient: &str) -> Vec<u8> {
    let mut aad = MESSAGE_LABEL.to_vec();
    aad.extend_from_slice(sender.as_bytes());
    aad.push(b'>');
    aad.extend_from_slice(recipient.as_bytes());
    aad
}

/// Encrypts message number `counter` from `sender` to `recipient` under `session`.
pub fn seal(
    session: &SessionKey,
    counter: u64,
    sender: &str,
    recipient: &str,
    text: &str,
) -> Vec<u8> {
    let mut plain = Vec::with_capacity(8 + text.len());
    plain.extend_from_slice(&counter.to_be_bytes());
    plain.extend_from_slice(text.as_bytes());
    let nonce = random_nonce();
    let sealed = Aes256Gcm::new(session.into())
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &plain,
                aad: &message_aad(sender, recipient),
            },
        )
        .expect("AES-GCM encrypts any message a line can hold");
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Decrypts a message from `sender` to `recipient` under `session`: its counter and text.
///
/// # Errors
/// If it is malformed, was not sealed under `session` for this pair, or is not UTF-8.
pub fn open(
    session: &SessionKey,
    sender: &str,
    recipient: &str,
    sealed: &[u8],
) -> Result<(u64, String), CryptoError> {
    if sealed.len() < NONCE_LEN + 8 + TAG_LEN {
        return Err(CryptoError("message too short"));
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
    let plain = Aes256Gcm::new(session.into())
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: body,
                aad: &message_aad(sender, recipient),
            },
        )
        .map_err(|_| CryptoError("message does not decrypt"))?;
    let (counter, text) = plain.split_at(8);
    let counter = u64::from_be_bytes(counter.try_into().expect("8 octets"));
    let text = String::from_utf8(text.to_vec()).map_err(|_| CryptoError("text is not UTF-8"))?;
    Ok((counter, text))
}
