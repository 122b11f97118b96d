//! `reassembly`: a sequence of datagrams into a `Reassembler` with small limits and a
//! simulated clock, completed payloads into `Decoder::open` under a fixed key.
//!
//! The input is decoded with `arbitrary` into limits and a list of operations:
//! - `Raw`: a datagram as the fuzzer wrote it (parsed; fed in if it is a Data packet),
//! - `Fragment`: a fragment built from a few fields (so the fuzzer reaches valid fragments
//!   of 988 octets without having to write them out), emitted and parsed again,
//! - `Encoded`: a real packet from `Encoder` (plain or sealed under the fixed key), of which
//!   the fuzzer picks which datagrams arrive and in what order (loss, reordering, duplicates),
//! - `Advance`, `Expire`, `Held`: the clock and the queries.
//!
//! After every step the target checks the reassembler's invariants: the limits
//! (`reserved_bytes() <= max_bytes`, `len() <= max_packets`), that `reserved_bytes()` is the
//! sum of what the packets in reassembly reserved, that `held` and `packets` agree, that no
//! deadline is later than `timeout` after now, that an error or a refusal changes nothing, and
//! that a sealed packet that opens under the key is one the target sealed with that number.

#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tickwire::pipeline::{
    Decoder, Encoder, PacketKey, Reassembler, Reassembly, ReassemblyConfig, Seal, SendOptions,
};
use tickwire::wire::{
    AckFields, Body, ErrorCode, Flags, FragmentFields, Header, Heartbeat, Packet, TypeFields,
    MAX_DATA, MAX_DATA_DATAGRAM,
};

const MAX_OPS: usize = 64;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    max_packets: u8,
    max_fragments: u8,
    timeout_ms: u16,
    decoder_limit: u16,
    ops: Vec<Op<'a>>,
}

#[derive(Arbitrary, Debug)]
enum Op<'a> {
    Raw(&'a [u8]),
    Fragment(FragSpec),
    Encoded(EncSpec<'a>),
    HandBuilt(HandSpec),
    Advance(u16),
    Expire,
    Held(u32),
    TakeCompleted,
    Trim,
}

/// A `Packet` built by hand, not parsed: its header need not be consistent.
#[derive(Arbitrary, Debug)]
struct HandSpec {
    type_sel: u8,
    field: u16,
    flags: u8,
    sequence: u8,
    fragment: Option<(u8, u8)>,
    init_vector: Option<u8>,
    checksum: Option<u16>,
    len: u16,
    fill: u8,
}

#[derive(Arbitrary, Debug)]
struct FragSpec {
    type_sel: u8,
    field: u16,
    flags: u8,
    sequence: u8,
    init_vector: u8,
    id: u8,
    count: u8,
    len: u16,
    fill: u8,
}

#[derive(Arbitrary, Debug)]
enum PayloadSpec<'a> {
    Bytes(&'a [u8]),
    Repeat(&'a [u8], u8),
    Noise(u32, u16),
}

#[derive(Arbitrary, Debug)]
struct EncSpec<'a> {
    sealed: bool,
    reliable: bool,
    checksum: bool,
    compress: bool,
    type_sel: u8,
    field: u16,
    packet_number: u16,
    payload: PayloadSpec<'a>,
    /// Datagram indices (taken modulo the count) in arrival order; empty means all, in order.
    order: Vec<u8>,
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

fn payload(spec: &PayloadSpec<'_>, max: usize) -> Vec<u8> {
    let mut out = match spec {
        PayloadSpec::Bytes(b) => b.to_vec(),
        PayloadSpec::Repeat(b, n) => b.repeat(usize::from(*n) + 1),
        PayloadSpec::Noise(seed, len) => {
            let mut x = u64::from(*seed) | 1 << 40;
            (0..usize::from(*len))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        }
    };
    out.truncate(max);
    out
}

/// A snapshot of what the reassembler exposes, to check that a step changed nothing.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    len: usize,
    reserved: usize,
    deadline: Option<Instant>,
    packets: Vec<(u32, u8, Vec<bool>)>,
}

fn snapshot(r: &Reassembler) -> Snapshot {
    let mut packets: Vec<_> = r
        .packets()
        .map(|pn| {
            let (count, bits) = r.held(pn).expect("packets() lists a packet held() does not know");
            (pn, count, bits.iter().by_vals().collect())
        })
        .collect();
    packets.sort();
    Snapshot {
        len: r.len(),
        reserved: r.reserved_bytes(),
        deadline: r.next_deadline(),
        packets,
    }
}

fn check_invariants(r: &Reassembler, config: &ReassemblyConfig, now: Instant) {
    assert!(
        r.reserved_bytes() <= config.max_bytes,
        "reserved {} > max_bytes {}",
        r.reserved_bytes(),
        config.max_bytes
    );
    assert!(
        r.len() <= config.max_packets,
        "len {} > max_packets {}",
        r.len(),
        config.max_packets
    );
    assert_eq!(r.is_empty(), r.len() == 0);
    // Buffers: one per packet in reassembly, at most 2 kept for reuse and the completed one,
    // none larger than max_bytes; plus the slot table.
    let memory_bound =
        (config.max_packets + 3) * config.max_bytes + 256 * (4 + 2 * config.max_packets);
    assert!(
        r.memory_bytes() <= memory_bound,
        "memory_bytes {} > {memory_bound}",
        r.memory_bytes()
    );
    let snap = snapshot(r);
    assert_eq!(snap.packets.len(), r.len(), "packets() and len() disagree");
    let distinct: HashSet<u32> = snap.packets.iter().map(|p| p.0).collect();
    assert_eq!(distinct.len(), r.len(), "two packets in reassembly share a number");
    let mut reserved = 0;
    for (pn, count, bits) in &snap.packets {
        assert!(*count >= 1);
        assert_eq!(bits.len(), usize::from(*count), "held bitmap of {pn} has a wrong length");
        let ones = bits.iter().filter(|b| **b).count();
        assert!(ones >= 1, "packet {pn} in reassembly holds no fragment");
        assert!(
            ones < usize::from(*count),
            "packet {pn} holds every fragment but is still in reassembly"
        );
        reserved += usize::from(*count) * MAX_DATA;
    }
    assert_eq!(r.reserved_bytes(), reserved, "reserved_bytes is not the sum of the packets'");
    match r.next_deadline() {
        None => assert!(r.is_empty(), "packets in reassembly but no deadline"),
        Some(d) => {
            assert!(!r.is_empty(), "a deadline with nothing in reassembly");
            assert!(d <= now + config.timeout, "deadline later than now + timeout");
        }
    }
}

struct State {
    config: ReassemblyConfig,
    reassembler: Reassembler,
    decoder: Decoder,
    now: Instant,
    /// Plaintexts sealed under the key, by packet number.
    sealed: HashMap<u32, Vec<Vec<u8>>>,
}

impl State {
    fn datagram(&mut self, datagram: &[u8]) {
        let Ok(packet) = Packet::parse(datagram) else {
            return;
        };
        self.insert(&packet);
    }

    fn insert(&mut self, packet: &Packet<'_>) {
        let packet = *packet;
        let Body::Data { data, .. } = packet.body else {
            // AUTH is never fragmented: insert refuses it without a change.
            let before = snapshot(&self.reassembler);
            assert!(self.reassembler.insert(self.now, &packet).is_err());
            assert_eq!(before, snapshot(&self.reassembler));
            return;
        };
        let before = snapshot(&self.reassembler);
        let pn = u32::from(packet.header.init_vector.unwrap_or(0)) << 16
            | u32::from(packet.header.sequence);
        let fragment = packet.header.fragment.filter(|f| {
            f.count > 0 && f.id < f.count && packet.header.flags.contains(Flags::FRAG)
        });
        let Some(FragmentFields { id, count }) = fragment else {
            // Not a fragment (or an impossible one): insert refuses it and changes nothing.
            assert!(
                self.reassembler.insert(self.now, &packet).is_err(),
                "insert took a packet that is not a valid fragment: {:?}",
                packet.header
            );
            assert_eq!(before, snapshot(&self.reassembler), "a refused non-fragment changed state");
            if packet.header.fragment.is_some() || packet.header.flags.contains(Flags::FRAG) {
                return;
            }
            // Open it whole, as a receiver does with an unfragmented datagram.
            let header = packet.header;
            let fields = match packet.body {
                Body::Data { fields, .. } => fields,
                Body::Auth(_) => unreachable!(),
            };
            let mut buf = data.to_vec();
            open(&mut self.decoder, &self.sealed, &header, &fields, &mut buf);
            return;
        };
        let was_held = before.packets.iter().find(|p| p.0 == pn).cloned();
        // A new packet may take the place of a stale or least complete one, and a fragment
        // that contradicts a packet of one fragment replaces it: then `before` no longer
        // describes the packets the reassembler compares with.
        let evictions = self.reassembler.evictions();
        let result = self.reassembler.insert(self.now, &packet);
        match result {
            Err(_) => {
                drop(result);
                assert_eq!(before, snapshot(&self.reassembler), "a failed insert changed state");
            }
            Ok(Reassembly::Refused) => {
                drop(result);
                if self.reassembler.evictions() > evictions {
                    return;
                }
                assert!(was_held.is_none(), "a fragment of a held packet was refused");
                let need = usize::from(count) * MAX_DATA;
                assert!(
                    before.len >= self.config.max_packets
                        || before.reserved + need > self.config.max_bytes,
                    "refused within the limits"
                );
                assert_eq!(before, snapshot(&self.reassembler), "a refusal changed state");
            }
            Ok(Reassembly::Duplicate) => {
                drop(result);
                let held = was_held.expect("duplicate of a packet not held");
                assert!(held.2[usize::from(id)], "duplicate of a fragment not held");
                assert_eq!(before, snapshot(&self.reassembler), "a duplicate changed state");
            }
            Ok(Reassembly::Incomplete) => {
                drop(result);
                let evicted = self.reassembler.evictions() > evictions;
                let (c, bits) = self.reassembler.held(pn).expect("incomplete packet not held");
                assert_eq!(c, count);
                assert!(bits[usize::from(id)], "stored fragment not marked held");
                if let Some(held) = was_held.filter(|_| !evicted) {
                    assert!(!held.2[usize::from(id)], "a held fragment was stored again");
                }
            }
            Ok(Reassembly::Complete {
                header,
                fields,
                payload,
            }) => {
                let c = usize::from(count);
                assert!(
                    payload.len() > (c - 1) * MAX_DATA && payload.len() <= c * MAX_DATA,
                    "completed payload of {} octets for {c} fragments",
                    payload.len()
                );
                // (A packet of another Fragment Number under this pn was replaced.)
                match was_held.as_ref().filter(|h| h.1 == count) {
                    Some(held) => {
                        let missing: Vec<usize> = (0..c).filter(|&i| !held.2[i]).collect();
                        assert_eq!(missing, vec![usize::from(id)], "completed with fragments missing");
                    }
                    None => assert_eq!(count, 1, "completed from nothing held"),
                }
                assert_eq!(header.fragment.map(|f| f.count), Some(count));
                assert_eq!(header.sequence, packet.header.sequence);
                assert_eq!(header.init_vector, packet.header.init_vector);
                open(&mut self.decoder, &self.sealed, &header, &fields, payload);
                let after_open = payload.to_vec();
                assert!(self.reassembler.held(pn).is_none(), "completed packet still held");
                // The completed buffer holds the payload at its start.
                let taken = self.reassembler.take_completed();
                assert!(taken.len() >= after_open.len());
                assert!(taken[..after_open.len()] == after_open[..], "take_completed lost the payload");
                self.reassembler.recycle(taken);
            }
        }
    }
}

fn open(
    decoder: &mut Decoder,
    sealed: &HashMap<u32, Vec<Vec<u8>>>,
    header: &Header,
    fields: &TypeFields,
    payload: &mut [u8],
) {
    let is_sealed = header.flags.contains(Flags::ENCRYPTED);
    let pn = u32::from(header.init_vector.unwrap_or(0)) << 16 | u32::from(header.sequence);
    if !is_sealed {
        // A receiver that holds a key refuses an unsealed packet (3.7), untouched.
        let mut copy = payload.to_vec();
        let err = decoder
            .open(header, fields, &mut copy, Some(key()))
            .expect_err("an unsealed packet opened under a key");
        assert_eq!(err.code, ErrorCode::InitVector);
        assert!(copy[..] == payload[..], "a refused open changed the payload");
    }
    let open_key = is_sealed.then(key);
    if let Ok(opened) = decoder.open(header, fields, payload, open_key) {
        assert_eq!(opened.packet_number, pn);
        if is_sealed {
            let known = sealed.get(&pn).map(Vec::as_slice).unwrap_or(&[]);
            assert!(
                known.iter().any(|p| p.as_slice() == opened.plaintext),
                "a sealed packet opened to a plaintext never sealed with number {pn:#x}"
            );
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    let config = ReassemblyConfig {
        max_packets: usize::from(input.max_packets % 6),
        max_bytes: usize::from(input.max_fragments % 24) * MAX_DATA + usize::from(input.field_slack()),
        timeout: Duration::from_millis(u64::from(input.timeout_ms % 2000) + 1),
    };
    let mut state = State {
        config,
        reassembler: Reassembler::new(config),
        decoder: Decoder::with_limit(usize::from(input.decoder_limit) * 4),
        now: base(),
        sealed: HashMap::new(),
    };
    let mut encoder = Encoder::new();
    let mut buf = vec![0u8; MAX_DATA_DATAGRAM + 64];
    for op in input.ops.iter().take(MAX_OPS) {
        match op {
            Op::Raw(datagram) => state.datagram(datagram),
            Op::Fragment(f) => {
                let count = if f.count & 0x80 == 0 {
                    1 + f.count % 6
                } else {
                    f.count.max(1)
                };
                let id = f.id % count;
                let len = if f.len & 0x8000 != 0 {
                    // Any length, right or wrong for the position.
                    usize::from(f.len & 0x7FFF) % (MAX_DATA + 8)
                } else if id == count - 1 {
                    1 + usize::from(f.len) % MAX_DATA
                } else {
                    MAX_DATA
                };
                if len > MAX_DATA {
                    continue;
                }
                let flags = Flags::from_bits(f.flags & 0xF0).unwrap() | Flags::FRAG;
                let flags = if flags.contains(Flags::ENCRYPTED | Flags::CHECKSUM) {
                    flags.without(Flags::CHECKSUM)
                } else {
                    flags
                };
                let fields = type_fields(f.type_sel, f.field);
                let header = Header {
                    packet_type: fields.packet_type(),
                    flags,
                    sequence: u16::from(f.sequence % 8),
                    fragment: Some(FragmentFields { id, count }),
                    init_vector: flags
                        .contains(Flags::ENCRYPTED)
                        .then_some(u16::from(f.init_vector % 2)),
                    checksum: flags.contains(Flags::CHECKSUM).then_some(f.field),
                };
                let data = vec![f.fill; len];
                let packet = Packet {
                    header,
                    body: Body::Data { fields, data: &data },
                };
                let n = packet.emit(&mut buf).expect("valid fragment failed to emit");
                let datagram = buf[..n].to_vec();
                state.datagram(&datagram);
            }
            Op::Encoded(e) => {
                let data = payload(&e.payload, 24 * MAX_DATA);
                let opts = SendOptions {
                    reliable: e.reliable,
                    checksum: e.checksum,
                    compress: e.compress,
                };
                let pn = u32::from(e.packet_number % 8) | u32::from(e.packet_number & 0x100) << 8;
                let seal = if e.sealed {
                    Seal::Sealed {
                        key: key(),
                        packet_number: pn,
                    }
                } else {
                    Seal::Plain { sequence: pn as u16 }
                };
                let fields = type_fields(e.type_sel, e.field);
                let Ok(encoded) = encoder.encode(fields, &data, opts, seal) else {
                    continue;
                };
                let count = encoded.datagram_count();
                let order: Vec<usize> = if e.order.is_empty() {
                    (0..count).collect()
                } else {
                    e.order.iter().map(|&i| usize::from(i) % count).collect()
                };
                let datagrams: Vec<Vec<u8>> = order
                    .iter()
                    .map(|&i| {
                        let n = encoded.write_datagram(i, &mut buf).expect("write_datagram");
                        buf[..n].to_vec()
                    })
                    .collect();
                if e.sealed {
                    state.sealed.entry(pn).or_default().push(data);
                }
                for d in &datagrams {
                    state.datagram(d);
                    check_invariants(&state.reassembler, &state.config, state.now);
                }
            }
            Op::HandBuilt(h) => {
                let len = usize::from(h.len) % (MAX_DATA + 64);
                let flags = Flags::from_bits(h.flags & !Flags::RESERVED_MASK).unwrap();
                let fields = type_fields(h.type_sel, h.field);
                let header = Header {
                    packet_type: fields.packet_type(),
                    flags,
                    sequence: u16::from(h.sequence % 8),
                    fragment: h.fragment.map(|(id, count)| FragmentFields {
                        id: id % 8,
                        count: count % 8,
                    }),
                    init_vector: h.init_vector.map(|iv| u16::from(iv % 2)),
                    checksum: h.checksum,
                };
                let data = vec![h.fill; len];
                let packet = Packet {
                    header,
                    body: Body::Data { fields, data: &data },
                };
                state.insert(&packet);
            }
            Op::TakeCompleted => {
                let taken = state.reassembler.take_completed();
                state.reassembler.recycle(taken);
            }
            Op::Trim => {
                let before = snapshot(&state.reassembler);
                let memory = state.reassembler.memory_bytes();
                state.reassembler.trim();
                assert_eq!(before, snapshot(&state.reassembler), "trim changed what is held");
                assert!(state.reassembler.memory_bytes() <= memory, "trim grew memory");
                if state.reassembler.is_empty() {
                    assert_eq!(state.reassembler.memory_bytes(), 0, "an empty trimmed reassembler holds memory");
                }
            }
            Op::Advance(ms) => state.now += Duration::from_millis(u64::from(*ms % 4096)),
            Op::Expire => {
                let before = state.reassembler.len();
                let dropped = state.reassembler.expire(state.now);
                assert_eq!(before - state.reassembler.len(), dropped);
                if let Some(d) = state.reassembler.next_deadline() {
                    assert!(d > state.now, "a packet past its deadline survived expire");
                }
            }
            Op::Held(pn) => {
                let listed = state.reassembler.packets().any(|p| p == *pn);
                assert_eq!(listed, state.reassembler.held(*pn).is_some());
            }
        }
        check_invariants(&state.reassembler, &state.config, state.now);
    }
});

impl Input<'_> {
    /// A few octets of slack in `max_bytes`, so that limits that are not a multiple of 988
    /// are tried too.
    fn field_slack(&self) -> u16 {
        u16::from(self.max_fragments >> 5) * 123
    }
}
