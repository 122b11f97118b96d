//! ENCRYPTED: AES-128-GCM with a nonce derived from the 32-bit packet number.
//!
//! The nonce is the direction's 96-bit salt XOR the packet number (big-endian, in the last four
//! octets). The packet number's high 16 bits travel as Init Vector and its low 16 bits as
//! Sequence ID, so the nonce is never sent whole and never repeats under one key as long as
//! the packet number does not wrap (the connection layer closes or rekeys before it does).
//! The 16-octet tag ends the sealed Data. The associated data is the header fields that do not
//! change between fragments plus the type-specific fields (see [`associated_data`]).
//!
//! With the cargo feature `ring` (on by default), sealing and opening go through `ring`'s
//! AES-128-GCM (several times faster where the CPU has AES and carry-less multiply
//! instructions); without it (`default-features = false`), through the RustCrypto `aes-gcm`
//! crate. The bytes on the wire are the same, and `tests/aead_backends.rs` checks the two
//! against each other.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce, Tag};

use crate::wire::{ErrorCode, Header, TypeFields, WireError};

/// Length of the GCM tag that ends sealed Data.
pub const TAG_LEN: usize = 16;
/// Length of an AES-128 key.
pub const KEY_LEN: usize = 16;
/// Length of the per-direction nonce salt.
pub const SALT_LEN: usize = 12;
/// The longest associated data: 4 fixed octets, Fragment Number, Init Vector, 4 field octets.
pub const MAX_AAD: usize = 11;

/// The key and nonce salt of one direction of a connection.
///
/// It holds the key schedule of the build's backend only (ring's with the `ring` feature, else
/// `aes-gcm`'s): two per connection, so half a kilobyte each matters on a server with many.
#[derive(Clone)]
pub struct PacketKey {
    #[cfg(not(feature = "ring"))]
    cipher: Aes128Gcm,
    #[cfg(feature = "ring")]
    ring: ring::aead::LessSafeKey,
    /// The key itself, for the RustCrypto path that tests compare ring with.
    #[cfg(feature = "ring")]
    key: [u8; KEY_LEN],
    salt: [u8; SALT_LEN],
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketKey(..)")
    }
}

impl PacketKey {
    /// A key from its 16 key octets and 12 salt octets (the key schedule's output).
    pub fn new(key: &[u8; KEY_LEN], salt: &[u8; SALT_LEN]) -> Self {
        Self {
            #[cfg(not(feature = "ring"))]
            cipher: Aes128Gcm::new(key.into()),
            #[cfg(feature = "ring")]
            key: *key,
            #[cfg(feature = "ring")]
            ring: ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, key)
                    .expect("a 16-octet key suits AES-128-GCM"),
            ),
            salt: *salt,
        }
    }

    /// The nonce of packet number `pn`: the salt XOR `pn` in the last four octets.
    pub fn nonce(&self, pn: u32) -> [u8; SALT_LEN] {
        let mut nonce = self.salt;
        for (n, p) in nonce[SALT_LEN - 4..].iter_mut().zip(pn.to_be_bytes()) {
            *n ^= p;
        }
        nonce
    }

    /// Seals `buf` in place and appends the tag: `buf` holds the plaintext on entry and the
    /// ciphertext followed by the 16-octet tag on return.
    ///
    /// `buf` should have 16 octets of spare capacity, so that the tag needs no allocation.
    pub fn seal(&self, pn: u32, aad: &[u8], buf: &mut Vec<u8>) {
        #[cfg(feature = "ring")]
        {
            let tag = self
                .ring
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(self.nonce(pn)),
                    ring::aead::Aad::from(aad),
                    buf,
                )
                .expect("AES-GCM seals any payload under 64 GiB");
            buf.extend_from_slice(tag.as_ref());
        }
        #[cfg(not(feature = "ring"))]
        self.seal_rustcrypto(pn, aad, buf);
    }

    /// Opens `buf` (ciphertext then tag) in place and returns the plaintext's length.
    ///
    /// # Errors
    /// 3.7 if `buf` is shorter than the tag or the tag does not verify; `buf` is then left
    /// in an unspecified state and nothing it held may be used.
    pub fn open(&self, pn: u32, aad: &[u8], buf: &mut [u8]) -> Result<usize, WireError> {
        #[cfg(feature = "ring")]
        {
            if buf.len() < TAG_LEN {
                return Err(too_short());
            }
            let plain = self
                .ring
                .open_in_place(
                    ring::aead::Nonce::assume_unique_for_key(self.nonce(pn)),
                    ring::aead::Aad::from(aad),
                    buf,
                )
                .map_err(|_| failed_to_open())?;
            Ok(plain.len())
        }
        #[cfg(not(feature = "ring"))]
        self.open_rustcrypto(pn, aad, buf)
    }

    /// The RustCrypto cipher: the one this key holds, or (with `ring`) one made for the call.
    fn rustcrypto(&self) -> std::borrow::Cow<'_, Aes128Gcm> {
        #[cfg(not(feature = "ring"))]
        return std::borrow::Cow::Borrowed(&self.cipher);
        #[cfg(feature = "ring")]
        std::borrow::Cow::Owned(Aes128Gcm::new((&self.key).into()))
    }

    /// [`seal`](Self::seal) through the RustCrypto `aes-gcm` crate whatever the features;
    /// for tests that compare the backends (with `ring`, it expands the key at each call).
    #[doc(hidden)]
    pub fn seal_rustcrypto(&self, pn: u32, aad: &[u8], buf: &mut Vec<u8>) {
        let nonce = self.nonce(pn);
        let tag = self
            .rustcrypto()
            .encrypt_in_place_detached(&Nonce::from(nonce), aad, buf)
            .expect("AES-GCM seals any payload under 64 GiB");
        buf.extend_from_slice(&tag);
    }

    /// [`open`](Self::open) through the RustCrypto `aes-gcm` crate whatever the features;
    /// for tests that compare the backends.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    #[doc(hidden)]
    pub fn open_rustcrypto(&self, pn: u32, aad: &[u8], buf: &mut [u8]) -> Result<usize, WireError> {
        let Some(body_len) = buf.len().checked_sub(TAG_LEN) else {
            return Err(too_short());
        };
        let (body, tag) = buf.split_at_mut(body_len);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().expect("split at TAG_LEN from the end");
        self.rustcrypto()
            .decrypt_in_place_detached(&Nonce::from(self.nonce(pn)), aad, body, &Tag::from(tag))
            .map_err(|_| failed_to_open())?;
        Ok(body_len)
    }
}

fn too_short() -> WireError {
    WireError::new(ErrorCode::InitVector, "sealed Data shorter than its tag")
}

fn failed_to_open() -> WireError {
    WireError::new(ErrorCode::InitVector, "packet failed to open")
}

/// The 32-bit packet number of a sealed packet: Init Vector high, Sequence ID low.
pub fn packet_number(header: &Header) -> u32 {
    u32::from(header.init_vector.unwrap_or(0)) << 16 | u32::from(header.sequence)
}

/// Writes the associated data of a sealed packet into `out` and returns its length.
///
/// It is octet 0 (version and type), Flags, Sequence ID, Fragment Number (only with FRAG; the
/// Fragment ID differs between fragments and is left out), Init Vector, then the type-specific
/// fields.
pub fn associated_data(header: &Header, fields: &TypeFields, out: &mut [u8; MAX_AAD]) -> usize {
    out[0] = crate::wire::VERSION << 4 | header.packet_type.to_bits();
    out[1] = header.flags.bits();
    out[2..4].copy_from_slice(&header.sequence.to_be_bytes());
    let mut at = 4;
    if let Some(frag) = header.fragment {
        out[at] = frag.count;
        at += 1;
    }
    out[at..at + 2].copy_from_slice(&header.init_vector.unwrap_or(0).to_be_bytes());
    at += 2;
    at += fields
        .emit(&mut out[at..])
        .expect("MAX_AAD leaves room for the longest type fields");
    at
}
