//! The common header every packet starts with (4 to 10 octets).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-------+-------+---------------+-------------------------------+
//! |Version| Type  |     Flags     |          Sequence ID          |
//! +-------+-------+---------------+-------------------------------+
//! | Fragment ID*  |Fragment Numb.*|         Init Vector*          |
//! +---------------+---------------+-------------------------------+
//! |        Checksum Hash*         |
//! +-------------------------------+
//! ```
//! Starred fields are present only when their flag is set, in this order.

use bitvec::prelude::*;
use std::fmt;

use super::{check_buffer, read_u16, EmitError, ErrorCode, WireError, VERSION};

/// Octet positions of the fixed part of the header.
mod field {
    pub const VERSION_TYPE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const SEQUENCE: usize = 2;
    pub const OPTIONAL: usize = 4;
}

/// The packet types (`Type`, the low nibble of octet 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// 0: Data only.
    Default,
    /// 1: acknowledgements (ACK ID, ACK Bits), optionally with Data.
    Ack,
    /// 2: the handshake's key exchange (public key, optional certificate).
    Auth,
    /// 3: PING / PONG.
    Heartbeat,
    /// 4: an error code and a message.
    Error,
}

impl PacketType {
    /// The 4-bit value on the wire.
    pub const fn to_bits(self) -> u8 {
        match self {
            Self::Default => 0,
            Self::Ack => 1,
            Self::Auth => 2,
            Self::Heartbeat => 3,
            Self::Error => 4,
        }
    }

    /// The type for a 4-bit value, or `None` for the reserved values 5..=15.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::Default),
            1 => Some(Self::Ack),
            2 => Some(Self::Auth),
            3 => Some(Self::Heartbeat),
            4 => Some(Self::Error),
            _ => None,
        }
    }

    /// The type's name (`DEFAULT`, `ACK`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Default => "DEFAULT",
            Self::Ack => "ACK",
            Self::Auth => "AUTH",
            Self::Heartbeat => "HEARTBEAT",
            Self::Error => "ERROR",
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The Flags octet. Bits are named MSB first, as docs/PROTOCOL.md §2 draws them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// Resent until acknowledged.
    pub const RELIABLE: Flags = Flags(0x80);
    /// Carries a Checksum Hash (low 16 bits of CRC-32 of the plaintext).
    pub const CHECKSUM: Flags = Flags(0x40);
    /// Data is an LZ4 block.
    pub const COMPRESSED: Flags = Flags(0x20);
    /// Data is AES-GCM sealed; carries an Init Vector.
    pub const ENCRYPTED: Flags = Flags(0x10);
    /// One fragment of a larger packet; carries Fragment ID and Fragment Number.
    pub const FRAG: Flags = Flags(0x08);
    /// The three low bits, which must be zero.
    pub const RESERVED_MASK: u8 = 0x07;

    /// No flag set.
    pub const fn empty() -> Self {
        Flags(0)
    }

    /// The flags of an octet, or `None` if a reserved bit is set.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        if bits & Self::RESERVED_MASK != 0 {
            None
        } else {
            Some(Flags(bits))
        }
    }

    /// The octet on the wire.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// These flags with `other`'s set too.
    #[must_use]
    pub const fn with(self, other: Flags) -> Self {
        Flags(self.0 | other.0)
    }

    /// These flags with `other`'s cleared.
    #[must_use]
    pub const fn without(self, other: Flags) -> Self {
        Flags(self.0 & !other.0)
    }

    /// The names of the flags set, most significant first.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        const NAMES: [(Flags, &str); 5] = [
            (Flags::RELIABLE, "RELIABLE"),
            (Flags::CHECKSUM, "CHECKSUM"),
            (Flags::COMPRESSED, "COMPRESSED"),
            (Flags::ENCRYPTED, "ENCRYPTED"),
            (Flags::FRAG, "FRAG"),
        ];
        NAMES
            .into_iter()
            .filter(move |(flag, _)| self.contains(*flag))
            .map(|(_, name)| name)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.with(rhs)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Flags(")?;
        for (i, name) in self.names().enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            f.write_str(name)?;
        }
        f.write_str(")")
    }
}

/// The common header, parsed.
///
/// The optional fields are `Some` exactly when their flag is set; [`Header::parse`] guarantees
/// it, and [`Header::emit`] refuses a header that breaks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The packet type.
    pub packet_type: PacketType,
    /// The flags.
    pub flags: Flags,
    /// Sequence ID: the sender's packet id (the low 16 bits of the packet number when sealed).
    pub sequence: u16,
    /// Fragment ID and Fragment Number, present with FRAG.
    pub fragment: Option<FragmentFields>,
    /// Init Vector, present with ENCRYPTED: the high 16 bits of the packet number.
    pub init_vector: Option<u16>,
    /// Checksum Hash, present with CHECKSUM.
    pub checksum: Option<u16>,
}

/// Fragment ID and Fragment Number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentFields {
    /// 0-based position of this fragment.
    pub id: u8,
    /// Total fragments of the packet, 1..=255.
    pub count: u8,
}

impl FragmentFields {
    /// Checks the fields against each other.
    ///
    /// # Errors
    /// 3.6 for Fragment Number 0, 3.5 for Fragment ID >= Fragment Number.
    pub fn check(&self) -> Result<(), WireError> {
        if self.count == 0 {
            return Err(WireError::new(
                ErrorCode::FragmentNumber,
                "fragment number 0",
            ));
        }
        if self.id >= self.count {
            return Err(WireError::new(
                ErrorCode::FragmentId,
                "fragment id not below fragment number",
            ));
        }
        Ok(())
    }
}

impl Header {
    /// A header of `packet_type` with no flags and no optional field.
    pub const fn new(packet_type: PacketType, sequence: u16) -> Self {
        Self {
            packet_type,
            flags: Flags::empty(),
            sequence,
            fragment: None,
            init_vector: None,
            checksum: None,
        }
    }

    /// Parses the header at the start of `input`, returning it and the rest of the datagram.
    ///
    /// # Errors
    /// 3.0 if the input is too short for the fields its flags announce, 3.1 for a version
    /// other than 0, 3.2 for a reserved type, 3.3 for a reserved flag bit or a combination
    /// the protocol forbids (CHECKSUM with ENCRYPTED), 3.6 for Fragment Number 0 and 3.5 for
    /// Fragment ID >= Fragment Number.
    pub fn parse(input: &[u8]) -> Result<(Self, &[u8]), WireError> {
        if input.len() < field::OPTIONAL {
            return Err(WireError::unreadable("shorter than the 4-octet header"));
        }
        let first = input[field::VERSION_TYPE].view_bits::<Msb0>();
        let version: u8 = first[0..4].load_be();
        let type_bits: u8 = first[4..8].load_be();
        if version != VERSION {
            return Err(WireError::new(ErrorCode::Version, "unknown version"));
        }
        let packet_type = PacketType::from_bits(type_bits).ok_or(WireError::new(
            ErrorCode::PacketType,
            "reserved packet type",
        ))?;
        let flags = Flags::from_bits(input[field::FLAGS])
            .ok_or(WireError::new(ErrorCode::Flags, "reserved flag bit set"))?;
        if flags.contains(Flags::ENCRYPTED | Flags::CHECKSUM) {
            return Err(WireError::new(
                ErrorCode::Flags,
                "a sealed packet carries no checksum",
            ));
        }
        let sequence = read_u16(input, field::SEQUENCE, "truncated sequence id")?;
        let mut at = field::OPTIONAL;
        let fragment = if flags.contains(Flags::FRAG) {
            let b = input
                .get(at..at + 2)
                .ok_or(WireError::unreadable("truncated fragment fields"))?;
            at += 2;
            let fields = FragmentFields {
                id: b[0],
                count: b[1],
            };
            fields.check()?;
            Some(fields)
        } else {
            None
        };
        let init_vector = if flags.contains(Flags::ENCRYPTED) {
            let iv = read_u16(input, at, "truncated init vector")?;
            at += 2;
            Some(iv)
        } else {
            None
        };
        let checksum = if flags.contains(Flags::CHECKSUM) {
            let sum = read_u16(input, at, "truncated checksum")?;
            at += 2;
            Some(sum)
        } else {
            None
        };
        let header = Self {
            packet_type,
            flags,
            sequence,
            fragment,
            init_vector,
            checksum,
        };
        Ok((header, &input[at..]))
    }

    /// The header's length on the wire: 4 to 10 octets.
    pub const fn len(&self) -> usize {
        4 + if self.fragment.is_some() { 2 } else { 0 }
            + if self.init_vector.is_some() { 2 } else { 0 }
            + if self.checksum.is_some() { 2 } else { 0 }
    }

    /// Always false: a header is at least 4 octets (present for clippy's `len` convention).
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Checks that the optional fields match the flags.
    ///
    /// # Errors
    /// [`EmitError::InvalidHeader`] naming the mismatch.
    pub fn validate(&self) -> Result<(), EmitError> {
        let f = self.flags;
        if f.bits() & Flags::RESERVED_MASK != 0 {
            return Err(EmitError::InvalidHeader("reserved flag bit set"));
        }
        if f.contains(Flags::FRAG) != self.fragment.is_some() {
            return Err(EmitError::InvalidHeader(
                "FRAG flag and fragment fields disagree",
            ));
        }
        if f.contains(Flags::ENCRYPTED) != self.init_vector.is_some() {
            return Err(EmitError::InvalidHeader(
                "ENCRYPTED flag and init vector disagree",
            ));
        }
        if f.contains(Flags::CHECKSUM) != self.checksum.is_some() {
            return Err(EmitError::InvalidHeader(
                "CHECKSUM flag and checksum disagree",
            ));
        }
        if f.contains(Flags::ENCRYPTED | Flags::CHECKSUM) {
            return Err(EmitError::InvalidHeader(
                "a sealed packet carries no checksum",
            ));
        }
        if let Some(frag) = self.fragment {
            if frag.count == 0 || frag.id >= frag.count {
                return Err(EmitError::InvalidHeader(
                    "fragment id must be below number >= 1",
                ));
            }
        }
        Ok(())
    }

    /// Writes the header at the start of `buf` and returns its length.
    ///
    /// # Errors
    /// [`EmitError::InvalidHeader`] if the optional fields do not match the flags,
    /// [`EmitError::BufferTooSmall`] if `buf` is shorter than [`Header::len`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        self.validate()?;
        let len = self.len();
        check_buffer(buf, len)?;
        let first = buf[field::VERSION_TYPE].view_bits_mut::<Msb0>();
        first[0..4].store_be(VERSION);
        first[4..8].store_be(self.packet_type.to_bits());
        buf[field::FLAGS] = self.flags.bits();
        buf[field::SEQUENCE..field::OPTIONAL].copy_from_slice(&self.sequence.to_be_bytes());
        let mut at = field::OPTIONAL;
        if let Some(frag) = self.fragment {
            buf[at] = frag.id;
            buf[at + 1] = frag.count;
            at += 2;
        }
        if let Some(iv) = self.init_vector {
            buf[at..at + 2].copy_from_slice(&iv.to_be_bytes());
            at += 2;
        }
        if let Some(sum) = self.checksum {
            buf[at..at + 2].copy_from_slice(&sum.to_be_bytes());
            at += 2;
        }
        debug_assert_eq!(at, len);
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every optional field: DEFAULT, RELIABLE|CHECKSUM|FRAG, seq 0x1234, fragment 2 of 5,
    /// checksum 0xBEEF.
    static PACKET_BYTES: [u8; 8] = [0x00, 0xC8, 0x12, 0x34, 0x02, 0x05, 0xBE, 0xEF];

    fn full() -> Header {
        Header {
            packet_type: PacketType::Default,
            flags: Flags::RELIABLE | Flags::CHECKSUM | Flags::FRAG,
            sequence: 0x1234,
            fragment: Some(FragmentFields { id: 2, count: 5 }),
            init_vector: None,
            checksum: Some(0xBEEF),
        }
    }

    #[test]
    fn test_parse() {
        let (h, rest) = Header::parse(&PACKET_BYTES).unwrap();
        assert_eq!(h, full());
        assert!(rest.is_empty());
    }

    #[test]
    fn test_emit() {
        let mut buf = [0xa5u8; 8];
        assert_eq!(full().emit(&mut buf).unwrap(), 8);
        assert_eq!(buf, PACKET_BYTES);
    }

    #[test]
    fn test_truncated() {
        for n in 0..PACKET_BYTES.len() - 1 {
            let err = Header::parse(&PACKET_BYTES[..n]).unwrap_err();
            assert_eq!(err.code, ErrorCode::Packet, "length {n}");
        }
    }

    #[test]
    fn emit_refuses_small_buffer_and_bad_fields() {
        let mut buf = [0u8; 7];
        assert!(matches!(
            full().emit(&mut buf),
            Err(EmitError::BufferTooSmall { needed: 8, .. })
        ));
        let mut h = full();
        h.checksum = None;
        assert!(matches!(
            h.emit(&mut [0; 16]),
            Err(EmitError::InvalidHeader(_))
        ));
    }
}
