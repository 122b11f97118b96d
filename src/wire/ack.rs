//! The ACK packet's fields.
//!
//! ```text
//! | header (4-10) | ACK ID (16) | ACK Bits (16) | Data (0..=988) |
//! ```
//! ACK ID is the newest Sequence ID received; bit *i* of ACK Bits (MSB first, i = 0..15) set
//! means `ACK ID - 1 - i` (wrapping) was received too.

use super::{check_buffer, read_u16, EmitError, WireError};

/// ACK ID and ACK Bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AckFields {
    /// The newest Sequence ID received.
    pub ack_id: u16,
    /// Bit i (MSB first) acknowledges `ack_id - 1 - i`.
    pub ack_bits: u16,
}

impl AckFields {
    /// Length on the wire.
    pub const LEN: usize = 4;

    /// Parses the fields, returning them and the Data after them.
    ///
    /// # Errors
    /// 3.0 if fewer than 4 octets remain.
    pub fn parse(input: &[u8]) -> Result<(Self, &[u8]), WireError> {
        let ack_id = read_u16(input, 0, "truncated ack id")?;
        let ack_bits = read_u16(input, 2, "truncated ack bits")?;
        Ok((Self { ack_id, ack_bits }, &input[Self::LEN..]))
    }

    /// Writes the fields at the start of `buf`.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`] if `buf` is shorter than 4 octets.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        check_buffer(buf, Self::LEN)?;
        buf[0..2].copy_from_slice(&self.ack_id.to_be_bytes());
        buf[2..4].copy_from_slice(&self.ack_bits.to_be_bytes());
        Ok(Self::LEN)
    }

    /// Whether these fields acknowledge `sequence`.
    pub fn acknowledges(&self, sequence: u16) -> bool {
        let back = self.ack_id.wrapping_sub(sequence);
        match back {
            0 => true,
            1..=16 => self.ack_bits & (0x8000 >> (back - 1)) != 0,
            _ => false,
        }
    }

    /// The sequence ids these fields acknowledge, newest first.
    pub fn acknowledged(&self) -> impl Iterator<Item = u16> + '_ {
        std::iter::once(self.ack_id).chain(
            (0..16u16)
                .filter(|i| self.ack_bits & (0x8000 >> i) != 0)
                .map(|i| self.ack_id.wrapping_sub(1 + i)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_name_earlier_packets_msb_first() {
        let f = AckFields {
            ack_id: 1,
            ack_bits: 0x8001,
        };
        assert!(f.acknowledges(1));
        assert!(f.acknowledges(0));
        assert!(f.acknowledges(1u16.wrapping_sub(16)));
        assert!(!f.acknowledges(1u16.wrapping_sub(17)));
        assert!(!f.acknowledges(2));
        assert_eq!(f.acknowledged().collect::<Vec<_>>(), vec![1, 0, 65521]);
    }

    #[test]
    fn test_truncated() {
        for n in 0..4 {
            assert!(AckFields::parse(&[0u8; 4][..n]).is_err());
        }
    }
}
