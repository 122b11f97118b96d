//! The frames inside a sealed packet's plaintext, after the handshake.
//!
//! ```text
//! 0x00 PADDING       the rest of the plaintext is padding
//! 0x01 MESSAGE       channel (8) | length (varint) | bytes
//! 0x02 MESSAGE_SEQ   channel (8) | message seq (16) | length (varint) | bytes
//! 0x03 FRAGMENT_ACK  packet number (32) | fragment number (8) | bitmap (ceil(n/8) octets, MSB first)
//! 0x04 MESSAGE_PART  channel (8) | message seq (16) | total length (32) | offset (32) | length (varint) | bytes
//! ```
//! A MESSAGE_PART carries octets `offset..offset + length` of a reliable-ordered message of
//! `total` octets too large for one packet (`total` > [`crate::MAX_MESSAGE_SIZE`]); its parts
//! take consecutive sequence numbers of their channel, in order of offset.
//! Lengths are QUIC variable-length integers (RFC 9000 §16): the two high bits of the first
//! octet give the length (1, 2, 4 or 8 octets).

use crate::wire::{ErrorCode, WireError};

/// Frame type octets.
pub mod kind {
    /// The rest is padding.
    pub const PADDING: u8 = 0x00;
    /// A message without a sequence number.
    pub const MESSAGE: u8 = 0x01;
    /// A message with a per-channel sequence number.
    pub const MESSAGE_SEQ: u8 = 0x02;
    /// The fragments held of an incomplete packet.
    pub const FRAGMENT_ACK: u8 = 0x03;
    /// A part of a message too large for one packet.
    pub const MESSAGE_PART: u8 = 0x04;
}

/// The most message octets one MESSAGE_PART carries: a packet of 255 fragments less the tag
/// and the part's framing (16 octets). A message of more than [`crate::MAX_MESSAGE_SIZE`]
/// octets is cut into parts of this size, the last one shorter.
pub const MAX_PART: usize = crate::wire::MAX_PAYLOAD - 16 - PART_HEADER;

/// Octets of a MESSAGE_PART frame before its bytes (with a 4-octet length varint).
const PART_HEADER: usize = 1 + 1 + 2 + 4 + 4 + 4;

/// One frame, borrowed from the plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A message.
    Message {
        /// Channel index.
        channel: u8,
        /// Per-channel sequence number, for sequenced and ordered channels.
        seq: Option<u16>,
        /// The message.
        data: &'a [u8],
    },
    /// The receiver holds these fragments of packet `packet_number`.
    FragmentAck {
        /// The incomplete packet.
        packet_number: u32,
        /// Its Fragment Number.
        count: u8,
        /// Bit i (MSB first) set: fragment i is held.
        bitmap: &'a [u8],
    },
    /// A part of a reliable-ordered message too large for one packet.
    MessagePart {
        /// Channel index.
        channel: u8,
        /// The part's sequence number on its channel.
        seq: u16,
        /// The whole message's length.
        total: u32,
        /// Where the part's octets start in the message.
        offset: u32,
        /// The part's octets.
        data: &'a [u8],
    },
}

/// Octets a varint of `v` takes.
pub const fn varint_len(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// Appends the varint of `v` (below 2^62).
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    match varint_len(v) {
        1 => out.push(v as u8),
        2 => out.extend_from_slice(&(v as u16 | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&(v as u32 | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xC000_0000_0000_0000).to_be_bytes()),
    }
}

/// Reads a varint, returning it and the rest.
fn take_varint(input: &[u8]) -> Option<(u64, &[u8])> {
    let first = *input.first()?;
    let len = 1usize << (first >> 6);
    let bytes = input.get(..len)?;
    let mut v = u64::from(first & 0x3F);
    for b in &bytes[1..] {
        v = v << 8 | u64::from(*b);
    }
    Some((v, &input[len..]))
}

/// Octets a MESSAGE or MESSAGE_SEQ frame of `len` octets takes.
pub const fn message_frame_len(len: usize, sequenced: bool) -> usize {
    2 + if sequenced { 2 } else { 0 } + varint_len(len as u64) + len
}

/// Appends a MESSAGE (no `seq`) or MESSAGE_SEQ frame.
pub fn put_message(out: &mut Vec<u8>, channel: u8, seq: Option<u16>, data: &[u8]) {
    match seq {
        None => out.extend_from_slice(&[kind::MESSAGE, channel]),
        Some(s) => {
            out.extend_from_slice(&[kind::MESSAGE_SEQ, channel]);
            out.extend_from_slice(&s.to_be_bytes());
        }
    }
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// Octets a MESSAGE_PART frame of `len` octets takes.
pub const fn part_frame_len(len: usize) -> usize {
    1 + 1 + 2 + 4 + 4 + varint_len(len as u64) + len
}

/// Appends a MESSAGE_PART frame.
pub fn put_part(out: &mut Vec<u8>, channel: u8, seq: u16, total: u32, offset: u32, data: &[u8]) {
    out.extend_from_slice(&[kind::MESSAGE_PART, channel]);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// Appends a FRAGMENT_ACK frame.
pub fn put_fragment_ack(out: &mut Vec<u8>, packet_number: u32, count: u8, bitmap: &[u8]) {
    out.push(kind::FRAGMENT_ACK);
    out.extend_from_slice(&packet_number.to_be_bytes());
    out.push(count);
    out.extend_from_slice(&bitmap[..usize::from(count).div_ceil(8)]);
}

/// Octets a FRAGMENT_ACK frame for `count` fragments takes.
pub const fn fragment_ack_len(count: u8) -> usize {
    6 + (count as usize).div_ceil(8)
}

/// Iterates over the frames of a plaintext. It yields an error (3.0) for a malformed frame
/// and then stops.
pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Frames<'a> {
    /// The frames of `plaintext`.
    pub fn new(plaintext: &'a [u8]) -> Self {
        Self { rest: plaintext }
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'a>>, WireError> {
        let bad = |why| WireError::new(ErrorCode::Packet, why);
        let Some((&k, rest)) = self.rest.split_first() else {
            return Ok(None);
        };
        match k {
            kind::PADDING => {
                self.rest = &[];
                Ok(None)
            }
            kind::MESSAGE | kind::MESSAGE_SEQ => {
                let (&channel, mut rest) =
                    rest.split_first().ok_or(bad("truncated message frame"))?;
                let seq = if k == kind::MESSAGE_SEQ {
                    let s = rest.get(..2).ok_or(bad("truncated message seq"))?;
                    rest = &rest[2..];
                    Some(u16::from_be_bytes([s[0], s[1]]))
                } else {
                    None
                };
                let (len, rest) = take_varint(rest).ok_or(bad("truncated message length"))?;
                let len = usize::try_from(len).map_err(|_| bad("message length overflow"))?;
                let data = rest
                    .get(..len)
                    .ok_or(bad("message longer than its packet"))?;
                self.rest = &rest[len..];
                Ok(Some(Frame::Message { channel, seq, data }))
            }
            kind::FRAGMENT_ACK => {
                let head = rest.get(..5).ok_or(bad("truncated fragment ack"))?;
                let packet_number = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                let count = head[4];
                let n = usize::from(count).div_ceil(8);
                let bitmap = rest.get(5..5 + n).ok_or(bad("truncated fragment bitmap"))?;
                self.rest = &rest[5 + n..];
                Ok(Some(Frame::FragmentAck {
                    packet_number,
                    count,
                    bitmap,
                }))
            }
            kind::MESSAGE_PART => {
                let head = rest.get(..11).ok_or(bad("truncated message part"))?;
                let channel = head[0];
                let seq = u16::from_be_bytes([head[1], head[2]]);
                let total = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
                let offset = u32::from_be_bytes([head[7], head[8], head[9], head[10]]);
                let (len, rest) =
                    take_varint(&rest[11..]).ok_or(bad("truncated message part length"))?;
                let len = usize::try_from(len).map_err(|_| bad("message length overflow"))?;
                let data = rest
                    .get(..len)
                    .ok_or(bad("message part longer than its packet"))?;
                self.rest = &rest[len..];
                Ok(Some(Frame::MessagePart {
                    channel,
                    seq,
                    total,
                    offset,
                    data,
                }))
            }
            _ => Err(bad("unknown frame type")),
        }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_frame() {
            Ok(Some(f)) => Some(Ok(f)),
            Ok(None) => None,
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [
            0u64,
            63,
            64,
            16383,
            16384,
            (1 << 30) - 1,
            1 << 30,
            (1 << 62) - 1,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            assert_eq!(take_varint(&out), Some((v, &[][..])));
        }
    }

    #[test]
    fn frames_round_trip_and_truncations_fail() {
        let mut out = Vec::new();
        put_message(&mut out, 3, None, b"abc");
        put_message(&mut out, 4, Some(0xBEEF), &[9; 100]);
        put_fragment_ack(&mut out, 0x01020304, 10, &[0xFF, 0xC0, 0, 0]);
        assert_eq!(
            out.len(),
            message_frame_len(3, false) + message_frame_len(100, true) + fragment_ack_len(10)
        );
        let frames: Vec<_> = Frames::new(&out).collect::<Result<_, _>>().unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(
            frames[0],
            Frame::Message {
                channel: 3,
                seq: None,
                data: b"abc"
            }
        );
        assert_eq!(
            frames[2],
            Frame::FragmentAck {
                packet_number: 0x01020304,
                count: 10,
                bitmap: &[0xFF, 0xC0]
            }
        );
        for n in 1..out.len() {
            let r: Result<Vec<_>, _> = Frames::new(&out[..n]).collect();
            let first = message_frame_len(3, false);
            let ends_on_frame = [first, first + message_frame_len(100, true)].contains(&n);
            assert_eq!(r.is_ok(), ends_on_frame, "cut at {n}");
        }
        let mut part = Vec::new();
        put_part(&mut part, 4, 7, 300_000, 251_908, b"xyz");
        assert_eq!(part.len(), part_frame_len(3));
        assert_eq!(
            Frames::new(&part).collect::<Result<Vec<_>, _>>().unwrap(),
            vec![Frame::MessagePart {
                channel: 4,
                seq: 7,
                total: 300_000,
                offset: 251_908,
                data: b"xyz"
            }]
        );
        for n in 1..part.len() {
            assert!(Frames::new(&part[..n]).any(|f| f.is_err()), "cut at {n}");
        }
        assert_eq!(part_frame_len(MAX_PART) + 16, crate::wire::MAX_PAYLOAD);
        let mut padded = out.clone();
        padded.extend_from_slice(&[0, 0xFF, 0xFF]);
        assert_eq!(Frames::new(&padded).count(), 3);
    }
}
