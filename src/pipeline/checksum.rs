//! CHECKSUM: the low 16 bits of the CRC-32 (IEEE) of the plaintext payload.

/// The Checksum Hash field for `plaintext`: the low 16 bits of its CRC-32 (IEEE).
pub fn checksum16(plaintext: &[u8]) -> u16 {
    crc32fast::hash(plaintext) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_bits_of_crc32() {
        // CRC-32 of "123456789" is 0xCBF43926.
        assert_eq!(checksum16(b"123456789"), 0x3926);
        assert_eq!(checksum16(b""), 0x0000);
    }
}
