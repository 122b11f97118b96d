//! COMPRESSED: an LZ4 block (`lz4_flex`, no size prefix), used only when it shrinks the payload.

use crate::wire::{ErrorCode, WireError};

/// Compresses `input` into `out` (cleared first) and returns true if the block is smaller
/// than the input; otherwise leaves `out` empty and returns false.
///
/// `out` grows to the LZ4 worst case for `input` once and is reused after that.
pub fn compress_into(input: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    if input.is_empty() {
        return false;
    }
    out.resize(lz4_flex::block::get_maximum_output_size(input.len()), 0);
    match lz4_flex::block::compress_into(input, out) {
        Ok(n) if n < input.len() => {
            out.truncate(n);
            true
        }
        _ => {
            out.clear();
            false
        }
    }
}

/// Decompresses the LZ4 block `input` into `out`, which bounds the decompressed size, and
/// returns the decompressed length.
///
/// # Errors
/// 3.8 if the block is malformed or would decompress to more than `out.len()` octets.
pub fn decompress_into(input: &[u8], out: &mut [u8]) -> Result<usize, WireError> {
    lz4_flex::block::decompress_into(input, out).map_err(|_| {
        WireError::new(
            ErrorCode::Compression,
            "malformed LZ4 block or decompressed size over the limit",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_when_smaller() {
        let mut out = Vec::new();
        assert!(!compress_into(b"abc", &mut out));
        assert!(out.is_empty());
        let repetitive = vec![7u8; 1000];
        assert!(compress_into(&repetitive, &mut out));
        assert!(out.len() < 1000);
        let mut back = vec![0u8; 1000];
        assert_eq!(decompress_into(&out, &mut back).unwrap(), 1000);
        assert_eq!(back, repetitive);
        let mut small = vec![0u8; 999];
        assert_eq!(
            decompress_into(&out, &mut small).unwrap_err().code,
            ErrorCode::Compression
        );
    }
}
