//! The bulk download of `soak --bulk` (and `echo --server --bulk`): the server sends each
//! client, once connected, one message of a given size on the bulk lane (`ChannelId::BULK`);
//! its content is a pattern both sides derive from the size, so the client checks it octet
//! for octet.
// Each example uses some of it.
#![allow(dead_code)]

use tickwire::{ConnectionConfig, MAX_LARGE_MESSAGE_SIZE, MAX_MESSAGE_SIZE};

/// The download's octets: an xorshift sequence seeded from its length.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x = (len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = (len - out.len()).min(8);
        out.extend_from_slice(&x.to_le_bytes()[..n]);
    }
    out
}

/// Whether `data` is the download of `len` octets, intact.
pub fn is_intact(data: &[u8], len: usize) -> bool {
    data.len() == len && data == pattern(len).as_slice()
}

/// `config` made able to carry a download of `bulk` octets: messages that large (on both
/// sides: limits are not negotiated) and a send budget that holds one besides its own.
pub fn with_bulk(mut config: ConnectionConfig, bulk: Option<usize>) -> ConnectionConfig {
    if let Some(n) = bulk {
        config.max_message_size = config.max_message_size.max(n).max(MAX_MESSAGE_SIZE);
        config.send_queue_bytes += n + n.div_ceil(200_000) * 64;
    }
    config
}

/// A download size: a number of octets with an optional unit (b, kb, mb, kib, mib, as
/// netsim's `--queue`), e.g. `4MiB`, from 1 octet to 16 MiB.
pub fn size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("not a size: {s:?} (e.g. 4MiB, 256kib, 100000)"))?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        u => return Err(format!("unknown unit {u:?}: use b, kb, mb, kib or mib")),
    };
    let n = (number * multiplier).round();
    if !(1.0..=MAX_LARGE_MESSAGE_SIZE as f64).contains(&n) {
        return Err(format!("not a size from 1 octet to 16MiB: {s:?}"));
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(size("4MiB"), Ok(4 << 20));
        assert_eq!(size("256kib"), Ok(256 << 10));
        assert_eq!(size("64kb"), Ok(64_000));
        assert_eq!(size("100000"), Ok(100_000));
        assert_eq!(size("16mib"), Ok(16 << 20));
        assert!(size("17MiB").is_err());
        assert!(size("0").is_err());
        assert!(size("4 parsecs").is_err());
    }

    #[test]
    fn the_pattern_is_checked() {
        let p = pattern(1001);
        assert!(is_intact(&p, 1001));
        let mut q = p.clone();
        q[500] ^= 1;
        assert!(!is_intact(&q, 1001));
        assert!(!is_intact(&p[..1000], 1001));
    }
}
