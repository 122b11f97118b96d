//! The ERROR packet's fields and the wire's error codes (docs/PROTOCOL.md §2).
//!
//! ```text
//! | header (4-10) | Major (4) | Minor (4) | Data: UTF-8 message (0..=988) |
//! ```

use bitvec::prelude::*;
use std::fmt;

use super::{check_buffer, EmitError, WireError};

/// The wire's error codes, each a (major, minor) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1.0 CONNECTION: the handshake could not finish.
    Connection,
    /// 1.1 NO SPACE: the server has no more space.
    NoSpace,
    /// 1.2 CERTIFICATE INVALID: the certificate is invalid or cannot be validated.
    CertificateInvalid,
    /// 1.3 FINISH INVALID: the handshake's finished is invalid.
    FinishInvalid,
    /// 2.0 DISCONNECT: a party is disconnecting.
    Disconnect,
    /// 2.1 SERVER DISCONNECT: the server is closing, all clients must exit gracefully.
    ServerDisconnect,
    /// 2.2 CLIENT DISCONNECT: the client is closing.
    ClientDisconnect,
    /// 3.0 PACKET: the packet cannot be read.
    Packet,
    /// 3.1 VERSION: the packet version does not match.
    Version,
    /// 3.2 PACKET TYPE: unknown or invalid packet type.
    PacketType,
    /// 3.3 FLAGS: unknown or invalid flags.
    Flags,
    /// 3.4 SEQUENCE ID: the sequence id does not match what was expected.
    SequenceId,
    /// 3.5 FRAGMENT ID: unknown or invalid fragment id.
    FragmentId,
    /// 3.6 FRAGMENT NUMBER: unknown or invalid fragment number.
    FragmentNumber,
    /// 3.7 INIT VECTOR: invalid init vector, i.e. the packet failed to open.
    InitVector,
    /// 3.8 COMPRESSION: decompression failed.
    Compression,
    /// 3.9 CHECKSUM: the checksum does not match.
    Checksum,
}

impl ErrorCode {
    /// Every code, in table order.
    pub const ALL: [ErrorCode; 17] = [
        Self::Connection,
        Self::NoSpace,
        Self::CertificateInvalid,
        Self::FinishInvalid,
        Self::Disconnect,
        Self::ServerDisconnect,
        Self::ClientDisconnect,
        Self::Packet,
        Self::Version,
        Self::PacketType,
        Self::Flags,
        Self::SequenceId,
        Self::FragmentId,
        Self::FragmentNumber,
        Self::InitVector,
        Self::Compression,
        Self::Checksum,
    ];

    /// The (major, minor) pair on the wire.
    pub const fn parts(self) -> (u8, u8) {
        match self {
            Self::Connection => (1, 0),
            Self::NoSpace => (1, 1),
            Self::CertificateInvalid => (1, 2),
            Self::FinishInvalid => (1, 3),
            Self::Disconnect => (2, 0),
            Self::ServerDisconnect => (2, 1),
            Self::ClientDisconnect => (2, 2),
            Self::Packet => (3, 0),
            Self::Version => (3, 1),
            Self::PacketType => (3, 2),
            Self::Flags => (3, 3),
            Self::SequenceId => (3, 4),
            Self::FragmentId => (3, 5),
            Self::FragmentNumber => (3, 6),
            Self::InitVector => (3, 7),
            Self::Compression => (3, 8),
            Self::Checksum => (3, 9),
        }
    }

    /// The code for a (major, minor) pair, or `None` for one the protocol does not define.
    pub fn from_parts(major: u8, minor: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.parts() == (major, minor))
    }

    /// The code's name (`NO SPACE`, `FINISHED INVALID`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connection => "CONNECTION",
            Self::NoSpace => "NO SPACE",
            Self::CertificateInvalid => "CERTIFICATE INVALID",
            Self::FinishInvalid => "FINISH INVALID",
            Self::Disconnect => "DISCONNECT",
            Self::ServerDisconnect => "SERVER DISCONNECT",
            Self::ClientDisconnect => "CLIENT DISCONNECT",
            Self::Packet => "PACKET",
            Self::Version => "VERSION",
            Self::PacketType => "PACKET TYPE",
            Self::Flags => "FLAGS",
            Self::SequenceId => "SEQUENCE ID",
            Self::FragmentId => "FRAGMENT ID",
            Self::FragmentNumber => "FRAGMENT NUMBER",
            Self::InitVector => "INIT VECTOR",
            Self::Compression => "COMPRESSION",
            Self::Checksum => "CHECKSUM",
        }
    }
}

impl fmt::Display for ErrorCode {
    /// Writes `MAJOR.MINOR`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor) = self.parts();
        write!(f, "{major}.{minor}")
    }
}

/// The ERROR packet's type-specific field: one octet, major in the high nibble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFields {
    /// The error code.
    pub code: ErrorCode,
}

impl ErrorFields {
    /// Length on the wire.
    pub const LEN: usize = 1;

    /// Parses the field, returning it and the Data after it.
    ///
    /// # Errors
    /// 3.0 if the field is missing or names a code the protocol does not define.
    pub fn parse(input: &[u8]) -> Result<(Self, &[u8]), WireError> {
        let (&octet, rest) = input
            .split_first()
            .ok_or(WireError::unreadable("truncated error code"))?;
        let bits = octet.view_bits::<Msb0>();
        let (major, minor): (u8, u8) = (bits[0..4].load_be(), bits[4..8].load_be());
        let code = ErrorCode::from_parts(major, minor)
            .ok_or(WireError::unreadable("unknown error code"))?;
        Ok((Self { code }, rest))
    }

    /// Writes the field at the start of `buf`.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`] if `buf` is empty.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        check_buffer(buf, Self::LEN)?;
        let (major, minor) = self.code.parts();
        let bits = buf[0].view_bits_mut::<Msb0>();
        bits[0..4].store_be(major);
        bits[4..8].store_be(minor);
        Ok(Self::LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_display() {
        for code in ErrorCode::ALL {
            let (major, minor) = code.parts();
            assert_eq!(ErrorCode::from_parts(major, minor), Some(code));
            let mut buf = [0xa5];
            ErrorFields { code }.emit(&mut buf).unwrap();
            assert_eq!(buf[0], major << 4 | minor);
            assert_eq!(ErrorFields::parse(&buf).unwrap().0.code, code);
        }
        assert_eq!(ErrorCode::FragmentId.to_string(), "3.5");
        assert_eq!(ErrorCode::from_parts(4, 0), None);
        assert_eq!(ErrorCode::from_parts(1, 4), None);
    }

    #[test]
    fn test_truncated() {
        assert_eq!(ErrorFields::parse(&[]).unwrap_err().code, ErrorCode::Packet);
        assert_eq!(
            ErrorFields::parse(&[0x4F]).unwrap_err().code,
            ErrorCode::Packet
        );
    }
}
