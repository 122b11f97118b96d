//! `pipeline`: arbitrary data and options → `Encoder::encode` (plain or sealed) → every
//! datagram written → `Packet::parse` → `Reassembler` (when fragmented) → `Decoder::open`,
//! and the plaintext must come back equal.
//!
//! One input sends 1 to 4 messages through the same encoder, reassembler and decoder (so
//! buffer reuse is exercised), each with its datagrams delivered in an order the fuzzer picks
//! (with duplicates). Payloads can be the fuzzer's bytes, those bytes repeated (compressible,
//! up to the 255-fragment limit) or pseudo-random noise of a chosen length (incompressible,
//! up to past the limit). A sealed message may also be tampered with (one bit of one
//! datagram's Data flipped), and must then fail to open.

#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tickwire::pipeline::{
    checksum16, Decoder, EncodeError, Encoder, PacketKey, Reassembler, Reassembly,
    ReassemblyConfig, Seal, SendOptions,
};
use tickwire::wire::{
    AckFields, ErrorCode, Flags, Header, Heartbeat, Packet, TypeFields, MAX_DATA, MAX_DATA_DATAGRAM,
    MAX_PAYLOAD,
};

const TAG_LEN: usize = 16;

#[derive(Arbitrary, Debug)]
enum PayloadSpec<'a> {
    Bytes(&'a [u8]),
    Repeat(&'a [u8], u16),
    Noise(u32, u32),
}

#[derive(Arbitrary, Debug)]
struct Message<'a> {
    payload: PayloadSpec<'a>,
    sealed: bool,
    packet_number: u32,
    reliable: bool,
    checksum: bool,
    compress: bool,
    type_sel: u8,
    field: u16,
    /// Arrival order: a seed for a shuffle, and datagrams to deliver twice.
    shuffle: u64,
    duplicates: Vec<u8>,
    /// For a sealed message: (datagram, bit) to flip in that datagram's Data.
    tamper: Option<(u8, u16)>,
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    first: Message<'a>,
    more: Vec<Message<'a>>,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn key() -> &'static PacketKey {
    static KEY: OnceLock<PacketKey> = OnceLock::new();
    KEY.get_or_init(|| PacketKey::new(&[7; 16], &[9; 12]))
}

fn type_fields(sel: u8, field: u16) -> TypeFields {
    match sel % 4 {
        0 => TypeFields::Default,
        1 => TypeFields::Ack(AckFields {
            ack_id: field,
            ack_bits: field.rotate_left(7),
        }),
        2 => TypeFields::Heartbeat(if field & 1 == 0 {
            Heartbeat::Ping
        } else {
            Heartbeat::Pong
        }),
        _ => TypeFields::Error(ErrorCode::ALL[usize::from(field) % ErrorCode::ALL.len()]),
    }
}

/// Bounded so that a payload a little over the limit is reachable but memory is not wasted.
const MAX_MESSAGE: usize = MAX_PAYLOAD + 2 * MAX_DATA;

fn payload(spec: &PayloadSpec<'_>) -> Vec<u8> {
    match spec {
        PayloadSpec::Bytes(b) => b.to_vec(),
        PayloadSpec::Repeat(b, n) => {
            let times = (usize::from(*n) + 1).min(MAX_MESSAGE / b.len().max(1));
            let mut v = b.repeat(times);
            v.truncate(MAX_MESSAGE);
            v
        }
        PayloadSpec::Noise(seed, len) => {
            let mut x = u64::from(*seed) | 1 << 40;
            (0..(*len as usize % (MAX_MESSAGE + 1)))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        }
    }
}

fn shuffle(order: &mut [usize], seed: u64) {
    let mut x = seed | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

fn send(
    m: &Message<'_>,
    encoder: &mut Encoder,
    reassembler: &mut Reassembler,
    decoder: &mut Decoder,
) {
    let data = payload(&m.payload);
    let fields = type_fields(m.type_sel, m.field);
    let opts = SendOptions {
        reliable: m.reliable,
        checksum: m.checksum,
        compress: m.compress,
    };
    let seal = if m.sealed {
        Seal::Sealed {
            key: key(),
            packet_number: m.packet_number,
        }
    } else {
        Seal::Plain {
            sequence: m.packet_number as u16,
        }
    };
    let expected_pn = if m.sealed {
        m.packet_number
    } else {
        u32::from(m.packet_number as u16)
    };
    let overhead = if m.sealed { TAG_LEN } else { 0 };
    // A receiver holds a key exactly when its peer seals.
    let open_key = m.sealed.then(key);
    let encoded = match encoder.encode(fields, &data, opts, seal) {
        Ok(e) => e,
        Err(EncodeError::TooLarge { len }) => {
            assert!(len > MAX_PAYLOAD, "TooLarge for {len} octets");
            assert!(
                data.len() + overhead > MAX_PAYLOAD,
                "{} octets refused although they fit uncompressed",
                data.len()
            );
            return;
        }
    };

    // The header says what was asked for.
    let h = encoded.header;
    assert_eq!(h.packet_type, fields.packet_type());
    assert_eq!(h.flags.contains(Flags::RELIABLE), m.reliable);
    assert_eq!(h.flags.contains(Flags::ENCRYPTED), m.sealed);
    assert_eq!(h.flags.contains(Flags::CHECKSUM), m.checksum && !m.sealed);
    if h.flags.contains(Flags::COMPRESSED) {
        assert!(m.compress, "compressed without being asked");
        assert!(encoded.payload.len() < data.len() + overhead, "compression did not shrink");
    } else {
        assert_eq!(encoded.payload.len(), data.len() + overhead);
    }
    if let Some(sum) = h.checksum {
        assert_eq!(sum, checksum16(&data));
    }
    assert!(encoded.payload.len() <= MAX_PAYLOAD);
    let count = encoded.datagram_count();
    assert_eq!(h.flags.contains(Flags::FRAG), encoded.payload.len() > MAX_DATA);
    assert_eq!(count, encoded.payload.len().div_ceil(MAX_DATA).max(1));

    // Write every datagram; each fits the datagram limit and refuses an out-of-range index.
    let mut buf = vec![0u8; MAX_DATA_DATAGRAM];
    let mut datagrams: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let n = encoded.write_datagram(i, &mut buf).expect("write_datagram");
            assert!(n <= MAX_DATA_DATAGRAM);
            buf[..n].to_vec()
        })
        .collect();
    assert!(encoded.write_datagram(count, &mut buf).is_err());

    let tampered = match m.tamper {
        Some((d, bit)) if m.sealed => {
            let d = usize::from(d) % count;
            let packet = Packet::parse(&datagrams[d]).expect("parse");
            let data_len = packet.data().len();
            let start = datagrams[d].len() - data_len;
            if data_len > 0 {
                let bit = usize::from(bit) % (data_len * 8);
                datagrams[d][start + bit / 8] ^= 0x80 >> (bit % 8);
                true
            } else {
                false
            }
        }
        _ => false,
    };

    let mut order: Vec<usize> = (0..count).collect();
    shuffle(&mut order, m.shuffle);
    // Duplicates arrive before the last fragment (after it they would start a new packet).
    let dups: Vec<usize> = m
        .duplicates
        .iter()
        .take(8)
        .map(|&i| order[usize::from(i) % count])
        .filter(|&i| i != order[count - 1])
        .collect();
    let last = order.pop().expect("at least one datagram");
    let mut arrival = order;
    for d in dups {
        let at = arrival.iter().position(|&i| i == d).unwrap();
        arrival.insert(at + 1, d);
    }
    arrival.push(last);

    let mut completed = None;
    for (step, &i) in arrival.iter().enumerate() {
        let packet = Packet::parse(&datagrams[i]).expect("an emitted datagram failed to parse");
        assert_eq!(packet.header.sequence, h.sequence);
        assert_eq!(packet.header.init_vector, h.init_vector);
        assert_eq!(packet.header.checksum, h.checksum);
        assert_eq!(packet.header.flags, h.flags);
        let packet_fields = match packet.body {
            tickwire::wire::Body::Data { fields, .. } => fields,
            tickwire::wire::Body::Auth(_) => panic!("encoded as AUTH"),
        };
        assert_eq!(packet_fields, fields);
        if packet.header.fragment.is_none() {
            assert_eq!(count, 1);
            let mut payload = packet.data().to_vec();
            if !m.sealed {
                keyed_open_refused(decoder, &packet.header, &packet_fields, &payload);
            }
            let result = decoder.open(&packet.header, &packet_fields, &mut payload, open_key);
            check_opened(
                result.map(|o| (o.packet_number, o.plaintext.to_vec())),
                &data,
                expected_pn,
                tampered,
            );
            completed = Some(());
            continue;
        }
        assert_eq!(packet.header.fragment.unwrap().id as usize, i);
        let result = reassembler.insert(base(), &packet).expect("a valid fragment was refused");
        match result {
            Reassembly::Complete {
                header,
                fields: f,
                payload,
            } => {
                assert_eq!(step, arrival.len() - 1, "completed before the last fragment");
                assert_eq!(f, fields);
                assert_eq!(header.flags, h.flags);
                if !m.sealed {
                    keyed_open_refused(decoder, &header, &f, payload);
                }
                let result = decoder.open(&header, &f, payload, open_key);
                check_opened(
                    result.map(|o| (o.packet_number, o.plaintext.to_vec())),
                    &data,
                    expected_pn,
                    tampered,
                );
                completed = Some(());
            }
            Reassembly::Incomplete => assert!(step < arrival.len() - 1),
            Reassembly::Duplicate => {}
            Reassembly::Refused => panic!("refused under the default limits"),
        }
    }
    assert!(completed.is_some(), "every datagram arrived but the packet never completed");
    assert!(reassembler.is_empty(), "a completed packet left state behind");
    assert_eq!(reassembler.reserved_bytes(), 0);
}

/// A receiver that holds a key refuses an unsealed packet (3.7) and leaves it untouched.
fn keyed_open_refused(decoder: &mut Decoder, header: &Header, fields: &TypeFields, payload: &[u8]) {
    let mut copy = payload.to_vec();
    let err = decoder
        .open(header, fields, &mut copy, Some(key()))
        .expect_err("an unsealed packet opened under a key");
    assert_eq!(err.code, ErrorCode::InitVector);
    assert!(copy == payload, "a refused open changed the payload");
}

fn check_opened(
    result: Result<(u32, Vec<u8>), tickwire::wire::WireError>,
    data: &[u8],
    expected_pn: u32,
    tampered: bool,
) {
    match result {
        Ok((pn, plaintext)) => {
            assert!(!tampered, "a tampered sealed packet opened");
            assert_eq!(pn, expected_pn);
            assert!(plaintext == data, "plaintext differs ({} vs {} octets)", plaintext.len(), data.len());
        }
        Err(e) => {
            assert!(tampered, "opening failed: {e}");
            assert_eq!(e.code, ErrorCode::InitVector);
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    let mut encoder = Encoder::new();
    let mut reassembler = Reassembler::new(ReassemblyConfig::default());
    let mut decoder = Decoder::new();
    for m in std::iter::once(&input.first).chain(input.more.iter().take(3)) {
        send(m, &mut encoder, &mut reassembler, &mut decoder);
    }
});
