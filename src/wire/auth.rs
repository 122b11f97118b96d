//! The AUTH packet's fields.
//!
//! ```text
//! | header (4-10) | Reserved (8) = 0 | E (8) | EC public key (E) | [ C (16) | certificate (C) ] |
//! ```
//! Whether `C` is present is decided by the remaining length: nothing after the key means no
//! certificate; anything after it must be a complete `C` and certificate.

use super::{check_buffer, read_u16, EmitError, WireError, MAX_CERTIFICATE};

/// The key exchange fields, borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFields<'a> {
    /// The sender's ephemeral EC public key: in tickwire a compressed SEC1 P-256 point (33
    /// octets, first 02 or 03; the endpoints refuse any other), 0 in a retry. The layout
    /// allows 0..=255 octets.
    pub public_key: &'a [u8],
    /// The certificate, if present (0..=65535 octets).
    pub certificate: Option<&'a [u8]>,
}

impl<'a> AuthFields<'a> {
    /// Parses the fields, returning them and what follows (always empty: the certificate
    /// runs to the end of the datagram when `C` says so, and nothing may follow it).
    ///
    /// # Errors
    /// 3.0 for a truncated key, a truncated `C` or certificate, a non-zero Reserved octet, or
    /// octets after the certificate.
    pub fn parse(input: &'a [u8]) -> Result<(Self, &'a [u8]), WireError> {
        let [reserved, key_len, rest @ ..] = input else {
            return Err(WireError::unreadable("truncated auth fields"));
        };
        if *reserved != 0 {
            return Err(WireError::unreadable("auth reserved octet not zero"));
        }
        let key_len = usize::from(*key_len);
        let public_key = rest
            .get(..key_len)
            .ok_or(WireError::unreadable("truncated public key"))?;
        let rest = &rest[key_len..];
        if rest.is_empty() {
            return Ok((
                Self {
                    public_key,
                    certificate: None,
                },
                rest,
            ));
        }
        let cert_len = usize::from(read_u16(rest, 0, "truncated certificate size")?);
        let certificate = rest
            .get(2..2 + cert_len)
            .ok_or(WireError::unreadable("truncated certificate"))?;
        if rest.len() != 2 + cert_len {
            return Err(WireError::unreadable("octets after the certificate"));
        }
        Ok((
            Self {
                public_key,
                certificate: Some(certificate),
            },
            &rest[rest.len()..],
        ))
    }

    /// Length on the wire.
    pub fn len(&self) -> usize {
        2 + self.public_key.len() + self.certificate.map_or(0, |c| 2 + c.len())
    }

    /// Always false: the fields are at least 2 octets.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the fields at the start of `buf`.
    ///
    /// # Errors
    /// [`EmitError::KeyTooLong`] for a key over 255 octets, [`EmitError::CertificateTooLong`]
    /// for a certificate over 65535, [`EmitError::BufferTooSmall`] if `buf` is too short.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        let key_len = u8::try_from(self.public_key.len())
            .map_err(|_| EmitError::KeyTooLong(self.public_key.len()))?;
        if let Some(cert) = self.certificate {
            if cert.len() > MAX_CERTIFICATE {
                return Err(EmitError::CertificateTooLong(cert.len()));
            }
        }
        let len = self.len();
        check_buffer(buf, len)?;
        buf[0] = 0;
        buf[1] = key_len;
        let mut at = 2;
        buf[at..at + self.public_key.len()].copy_from_slice(self.public_key);
        at += self.public_key.len();
        if let Some(cert) = self.certificate {
            buf[at..at + 2].copy_from_slice(&(cert.len() as u16).to_be_bytes());
            buf[at + 2..at + 2 + cert.len()].copy_from_slice(cert);
            at += 2 + cert.len();
        }
        debug_assert_eq!(at, len);
        Ok(len)
    }
}
