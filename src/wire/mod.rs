//! Bytes to structs and back: tickwire's packet layout, nothing more.
//!
//! This layer has no state, no clock and no crypto. Each packet type has its own file with a
//! parsed form, `parse(&[u8]) -> Result<(Self, &[u8]), WireError>`, `len()` and
//! `emit(&self, &mut [u8])` (smoltcp's shape).
//!
//! # Panic contract
//! Parsing never panics and never allocates: it borrows from the datagram, and any input gives
//! either a packet or a [`WireError`] naming the wire's error code. Emitting checks the buffer it
//! is given and the limits of the wire (Data at most [`MAX_DATA`] octets, a certificate at most
//! 65535) and returns an error instead of writing a truncated datagram. The fuzz targets in
//! `fuzz/` hold the code to this.
//!
//! # Layout
//! Bit 0 is the most significant bit of the first octet; multi-octet fields are big-endian.
//! `docs/PROTOCOL.md` §2 describes the layout, the flags and the error codes byte by byte.

mod ack;
mod auth;
mod error;
pub mod frame;
mod header;
mod heartbeat;
mod packet;

pub use ack::AckFields;
pub use auth::AuthFields;
pub use error::{ErrorCode, ErrorFields};
pub use header::{Flags, FragmentFields, Header, PacketType};
pub use heartbeat::Heartbeat;
pub use packet::{Body, Packet, TypeFields};

use std::fmt;

/// The protocol version this crate speaks (0: the only version so far).
pub const VERSION: u8 = 0;
/// The most octets of Data one datagram carries.
pub const MAX_DATA: usize = 988;
/// The most fragments one packet is split into (the Fragment Number field is 8 bits).
pub const MAX_FRAGMENTS: usize = 255;
/// The most octets a packet's processed payload (after compression and sealing) can hold:
/// 255 fragments of 988 octets.
pub const MAX_PAYLOAD: usize = MAX_FRAGMENTS * MAX_DATA;
/// The longest common header: 4 fixed octets, fragment fields, Init Vector and Checksum.
pub const MAX_HEADER: usize = 10;
/// The longest type-specific fields of a packet that carries Data (ACK: ACK ID and ACK Bits).
pub const MAX_TYPE_FIELDS: usize = 4;
/// The largest datagram a packet carrying Data can need: 10 + 4 + 988 = 1002 octets.
pub const MAX_DATA_DATAGRAM: usize = MAX_HEADER + MAX_TYPE_FIELDS + MAX_DATA;
/// The longest certificate the 16-bit `C` field can describe.
pub const MAX_CERTIFICATE: usize = u16::MAX as usize;

/// Why a datagram could not be read or a packet could not be written.
///
/// Every error names the wire's error code (`code`) and says in a few words what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError {
    /// The wire's error code for this failure (3.x for malformed packets).
    pub code: ErrorCode,
    /// A short, static explanation for logs.
    pub reason: &'static str,
}

impl WireError {
    pub(crate) const fn new(code: ErrorCode, reason: &'static str) -> Self {
        Self { code, reason }
    }

    pub(crate) const fn unreadable(reason: &'static str) -> Self {
        Self::new(ErrorCode::Packet, reason)
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error {}: {}", self.code, self.reason)
    }
}

impl std::error::Error for WireError {}

/// Why a packet could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitError {
    /// The caller's buffer is shorter than [`Packet::len`].
    BufferTooSmall {
        /// Octets the packet needs.
        needed: usize,
        /// Octets the buffer has.
        available: usize,
    },
    /// Data is longer than the 988 octets one datagram may carry.
    DataTooLong(usize),
    /// The certificate is longer than the 16-bit `C` field can describe.
    CertificateTooLong(usize),
    /// The public key is longer than the 8-bit `E` field can describe.
    KeyTooLong(usize),
    /// A header field is inconsistent (fragment id >= fragment number, number 0, or a field
    /// present without its flag).
    InvalidHeader(&'static str),
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed, available } => {
                write!(
                    f,
                    "buffer too small: {needed} octets needed, {available} available"
                )
            }
            Self::DataTooLong(n) => write!(f, "Data of {n} octets exceeds {MAX_DATA}"),
            Self::CertificateTooLong(n) => {
                write!(f, "certificate of {n} octets exceeds {MAX_CERTIFICATE}")
            }
            Self::KeyTooLong(n) => write!(f, "public key of {n} octets exceeds 255"),
            Self::InvalidHeader(why) => write!(f, "invalid header: {why}"),
        }
    }
}

impl std::error::Error for EmitError {}

/// Checks that `buf` holds at least `needed` octets.
pub(crate) fn check_buffer(buf: &[u8], needed: usize) -> Result<(), EmitError> {
    if buf.len() < needed {
        Err(EmitError::BufferTooSmall {
            needed,
            available: buf.len(),
        })
    } else {
        Ok(())
    }
}

/// Reads a big-endian u16 at `at`, or the unreadable error if the input is too short.
pub(crate) fn read_u16(input: &[u8], at: usize, reason: &'static str) -> Result<u16, WireError> {
    match input.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(WireError::unreadable(reason)),
    }
}
