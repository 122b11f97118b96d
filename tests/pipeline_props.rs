//! Property tests of the wire layer and the flag pipeline.
//!
//! - every well-formed packet round-trips through `emit` → `parse`, and any datagram that
//!   parses re-emits to the same octets;
//! - arbitrary octets never panic `Packet::parse`, arbitrary datagram sequences never panic a
//!   `Reassembler` (checked against a model of what it holds);
//! - a payload of 0..=246 KiB survives checksum → compress → encrypt → fragment → shuffle and
//!   duplicate → reassemble → open;
//! - a flipped bit anywhere in a sealed packet's datagrams is rejected by parse, reassembly or
//!   open: altered plaintext is never delivered.
//!
//! Regression files are not written (`failure_persistence: None`): a failure prints its
//! minimal input instead.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::Config as ProptestConfig;

use tickwire::pipeline::seal::packet_number;
use tickwire::pipeline::{
    Decoder, EncodeError, Encoder, PacketKey, Reassembler, Reassembly, ReassemblyConfig, Seal,
    SendOptions,
};
use tickwire::wire::{
    AckFields, AuthFields, Body, ErrorCode, Flags, FragmentFields, Header, Heartbeat, Packet,
    PacketType, TypeFields, WireError, MAX_DATA, MAX_PAYLOAD,
};

/// The largest plaintext the round-trip property sends: 246 KiB (251 904 octets; sealed it is
/// 251 920, under the 255 × 988 = 251 940 a packet holds).
const MAX_PLAINTEXT: usize = 246 * 1024;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// splitmix64: a small deterministic generator for bulk data and shuffles.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Pseudo-random octets: LZ4 cannot shrink them.
    Incompressible,
    /// A short random pattern repeated, with a random octet every so often.
    Repetitive,
    /// All zeros.
    Zeros,
}

fn make_payload(kind: Kind, len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = vec![0u8; len];
    match kind {
        Kind::Incompressible => rng.fill(&mut out),
        Kind::Repetitive => {
            let mut pattern = vec![0u8; 1 + rng.below(64)];
            rng.fill(&mut pattern);
            for (i, b) in out.iter_mut().enumerate() {
                *b = pattern[i % pattern.len()];
            }
            let mut i = 0;
            while i < len {
                out[i] = rng.next() as u8;
                i += 50 + rng.below(200);
            }
        }
        Kind::Zeros => {}
    }
    out
}

fn arb_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        2 => Just(Kind::Incompressible),
        2 => Just(Kind::Repetitive),
        1 => Just(Kind::Zeros),
    ]
}

fn arb_type_fields() -> impl Strategy<Value = TypeFields> {
    prop_oneof![
        Just(TypeFields::Default),
        (any::<u16>(), any::<u16>())
            .prop_map(|(ack_id, ack_bits)| TypeFields::Ack(AckFields { ack_id, ack_bits })),
        any::<bool>().prop_map(|pong| TypeFields::Heartbeat(if pong {
            Heartbeat::Pong
        } else {
            Heartbeat::Ping
        })),
        select(ErrorCode::ALL.to_vec()).prop_map(TypeFields::Error),
    ]
}

fn arb_opts() -> impl Strategy<Value = SendOptions> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(reliable, checksum, compress)| {
        SendOptions {
            reliable,
            checksum,
            compress,
        }
    })
}

/// A header of `packet_type` with arbitrary flags and the optional fields they call for.
/// CHECKSUM and ENCRYPTED never come together (the protocol forbids it).
fn arb_data_header(packet_type: PacketType) -> impl Strategy<Value = Header> {
    (
        any::<u8>(),
        any::<bool>(),
        any::<u16>(),
        (1u8..=255).prop_flat_map(|count| (0..count, Just(count))),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(
            move |(bits, keep_checksum, sequence, (id, count), iv, sum)| {
                let mut flags = Flags::from_bits(bits & !Flags::RESERVED_MASK).unwrap();
                if flags.contains(Flags::CHECKSUM | Flags::ENCRYPTED) {
                    flags = flags.without(if keep_checksum {
                        Flags::ENCRYPTED
                    } else {
                        Flags::CHECKSUM
                    });
                }
                Header {
                    packet_type,
                    flags,
                    sequence,
                    fragment: flags
                        .contains(Flags::FRAG)
                        .then_some(FragmentFields { id, count }),
                    init_vector: flags.contains(Flags::ENCRYPTED).then_some(iv),
                    checksum: flags.contains(Flags::CHECKSUM).then_some(sum),
                }
            },
        )
}

/// A packet as owned values (a `Packet` borrows its Data).
#[derive(Debug, Clone)]
enum OwnedPacket {
    Data {
        header: Header,
        fields: TypeFields,
        data: Vec<u8>,
    },
    Auth {
        sequence: u16,
        key: Vec<u8>,
        certificate: Option<Vec<u8>>,
    },
}

impl OwnedPacket {
    fn packet(&self) -> Packet<'_> {
        match self {
            Self::Data {
                header,
                fields,
                data,
            } => Packet {
                header: *header,
                body: Body::Data {
                    fields: *fields,
                    data,
                },
            },
            Self::Auth {
                sequence,
                key,
                certificate,
            } => Packet {
                header: Header::new(PacketType::Auth, *sequence),
                body: Body::Auth(AuthFields {
                    public_key: key,
                    certificate: certificate.as_deref(),
                }),
            },
        }
    }
}

fn arb_packet() -> impl Strategy<Value = OwnedPacket> {
    let data_packet = arb_type_fields().prop_flat_map(|fields| {
        (
            arb_data_header(fields.packet_type()),
            prop_oneof![
                4 => proptest::collection::vec(any::<u8>(), 0..=40),
                1 => proptest::collection::vec(any::<u8>(), 0..=MAX_DATA),
                1 => proptest::collection::vec(any::<u8>(), MAX_DATA - 4..=MAX_DATA),
            ],
        )
            .prop_map(move |(header, data)| OwnedPacket::Data {
                header,
                fields,
                data,
            })
    });
    let auth = (
        any::<u16>(),
        prop_oneof![Just(33usize), Just(65usize), 0usize..=255, Just(255usize)]
            .prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=1500)),
    )
        .prop_map(|(sequence, key, certificate)| OwnedPacket::Auth {
            sequence,
            key,
            certificate,
        });
    prop_oneof![4 => data_packet, 1 => auth]
}

/// Datagrams that get past the header often: a plausible first octet and flags, random rest.
fn arb_datagram() -> impl Strategy<Value = Vec<u8>> {
    let plausible = (
        prop_oneof![4 => 0u8..=4, 1 => any::<u8>()],
        prop_oneof![
            4 => any::<u8>().prop_map(|f| f & !Flags::RESERVED_MASK),
            1 => any::<u8>()
        ],
        proptest::collection::vec(any::<u8>(), 0..1998),
    )
        .prop_map(|(first, flags, rest)| {
            let mut d = vec![first, flags];
            d.extend(rest);
            d
        });
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..2000),
        2 => plausible,
    ]
}

/// The receiving side of a connection: parse → reassemble (FRAG) → open.
struct Receiver {
    reassembler: Reassembler,
    decoder: Decoder,
    key: Option<PacketKey>,
    now: Instant,
}

impl Receiver {
    fn new(key: Option<PacketKey>) -> Self {
        Self {
            reassembler: Reassembler::new(ReassemblyConfig::default()),
            decoder: Decoder::new(),
            key,
            now: Instant::now(),
        }
    }

    /// Takes one datagram; returns the packet number and plaintext of a packet it completed.
    fn receive(&mut self, datagram: &[u8]) -> Result<Option<(u32, Vec<u8>)>, WireError> {
        let packet = Packet::parse(datagram)?;
        let Body::Data { fields, data } = packet.body else {
            return Ok(None);
        };
        if packet.header.fragment.is_some() {
            match self.reassembler.insert(self.now, &packet)? {
                Reassembly::Complete {
                    header,
                    fields,
                    payload,
                } => {
                    let opened = self
                        .decoder
                        .open(&header, &fields, payload, self.key.as_ref())?;
                    Ok(Some((opened.packet_number, opened.plaintext.to_vec())))
                }
                _ => Ok(None),
            }
        } else {
            let mut data = data.to_vec();
            let opened =
                self.decoder
                    .open(&packet.header, &fields, &mut data, self.key.as_ref())?;
            Ok(Some((opened.packet_number, opened.plaintext.to_vec())))
        }
    }
}

fn write_all(encoded: &tickwire::pipeline::Encoded<'_>) -> Vec<Vec<u8>> {
    (0..encoded.datagram_count())
        .map(|i| {
            let mut buf = vec![0u8; 1100];
            let n = encoded.write_datagram(i, &mut buf).unwrap();
            assert!(n <= 1002, "datagram of {n} octets");
            buf.truncate(n);
            buf
        })
        .collect()
}

fn test_key() -> PacketKey {
    PacketKey::new(
        &[
            0x2B, 0x7E, 0x15, 0x16, 0x28, 0xAE, 0xD2, 0xA6, 0xAB, 0xF7, 0x15, 0x88, 0x09, 0xCF,
            0x4F, 0x3C,
        ],
        &[
            0xC0, 0xFF, 0xEE, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// Wire properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    /// emit → parse gives the packet back, for every type and any consistent header.
    #[test]
    fn packet_round_trips(owned in arb_packet()) {
        let packet = owned.packet();
        let len = packet.len();
        let mut buf = vec![0xa5u8; len + 3];
        let n = packet.emit(&mut buf).unwrap();
        prop_assert_eq!(n, len);
        prop_assert!(buf[n..].iter().all(|&b| b == 0xa5), "wrote past the packet");
        let parsed = Packet::parse(&buf[..n]).unwrap();
        prop_assert_eq!(parsed, packet);
    }

    /// Arbitrary octets never panic the parser, and whatever parses re-emits to the same
    /// octets (the encoding is canonical).
    #[test]
    fn parse_never_panics(datagram in arb_datagram()) {
        if let Ok(packet) = Packet::parse(&datagram) {
            prop_assert_eq!(packet.len(), datagram.len());
            let mut buf = vec![0u8; packet.len()];
            prop_assert_eq!(packet.emit(&mut buf), Ok(datagram.len()));
            prop_assert_eq!(buf, datagram);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reassembler under arbitrary datagrams, against a model
// ---------------------------------------------------------------------------------------------

/// One step of a reassembler run.
#[derive(Debug, Clone)]
struct Step {
    datagram: Vec<u8>,
    /// Milliseconds to advance the clock before the datagram.
    advance_ms: u64,
    /// Call `expire` before the datagram.
    expire: bool,
}

/// A datagram that is usually a fragment, from a small space of packets so that fragments
/// meet: sequence 0..3, Init Vector 0..2, Fragment Number mostly 1..=4.
fn arb_fragment_datagram() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![8 => select(vec![0u8, 1, 3, 4]), 1 => Just(2u8), 1 => any::<u8>()],
        prop_oneof![
            8 => (any::<bool>(), select(vec![0u8, 0x40, 0x10]), any::<bool>())
                .prop_map(|(rel, cs_or_enc, comp)| {
                    0x08 | if rel { 0x80 } else { 0 } | cs_or_enc | if comp { 0x20 } else { 0 }
                }),
            1 => any::<u8>(),
        ],
        0u16..3,
        prop_oneof![8 => 1u8..=4, 1 => any::<u8>()],
        any::<u8>(),
        0u8..2,
        0u8..2,
        select(vec![
            vec![],
            vec![0x00],
            vec![0x01],
            vec![0x21],
            vec![0x00, 0x01, 0x00, 0x00],
            vec![0x00, 0x01, 0x80, 0x00],
        ]),
        prop_oneof![4 => Just(MAX_DATA), 3 => 0usize..=MAX_DATA + 2],
        any::<u8>(),
    )
        .prop_map(
            |(ty, flags, seq, count, id, iv, sum, type_fields, len, fill)| {
                // id mostly below count
                let id = if count > 0 && id % 8 != 0 {
                    id % count
                } else {
                    id
                };
                let mut d = vec![ty, flags];
                d.extend(seq.to_be_bytes());
                if flags & 0x08 != 0 {
                    d.extend([id, count]);
                }
                if flags & 0x10 != 0 {
                    d.extend([0, iv]);
                }
                if flags & 0x40 != 0 {
                    d.extend([0, sum]);
                }
                d.extend(type_fields);
                d.extend(std::iter::repeat_n(fill, len));
                d
            },
        )
}

fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        (
            prop_oneof![6 => arb_fragment_datagram(), 1 => arb_datagram()],
            prop_oneof![4 => Just(0u64), 1 => 0u64..100],
            proptest::bool::weighted(0.1),
        )
            .prop_map(|(datagram, advance_ms, expire)| Step {
                datagram,
                advance_ms,
                expire,
            }),
        0..60,
    )
}

fn arb_reassembly_config() -> impl Strategy<Value = ReassemblyConfig> {
    (
        1usize..=4,
        select(vec![MAX_DATA, 2 * MAX_DATA, 5 * MAX_DATA, 2 << 20]),
        0u64..200,
    )
        .prop_map(|(max_packets, max_bytes, timeout_ms)| ReassemblyConfig {
            max_packets,
            max_bytes,
            timeout: Duration::from_millis(timeout_ms),
        })
}

/// What the model says a packet in reassembly holds: its Fragment Number and the Data of
/// each fragment accepted.
type Model = BTreeMap<u32, (u8, BTreeMap<u8, Vec<u8>>)>;

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary datagram sequences never panic a reassembler; what it holds, completes and
    /// reserves matches a model.
    #[test]
    fn reassembler_never_panics(config in arb_reassembly_config(), steps in arb_steps()) {
        let mut reassembler = Reassembler::new(config);
        let mut model: Model = BTreeMap::new();
        // What tells packets of one packet number apart: a fragment that contradicts a packet
        // of one fragment replaces it.
        let mut sigs: BTreeMap<u32, String> = BTreeMap::new();
        let mut now = Instant::now();
        for step in &steps {
            now += Duration::from_millis(step.advance_ms);
            if step.expire {
                reassembler.expire(now);
                let live: BTreeSet<u32> = reassembler.packets().collect();
                model.retain(|k, _| live.contains(k));
                sigs.retain(|k, _| live.contains(k));
            }
            let Ok(packet) = Packet::parse(&step.datagram) else { continue };
            let evictions = reassembler.evictions();
            let result = reassembler.insert(now, &packet);
            let key = packet_number(&packet.header);
            let sig = match packet.body {
                Body::Data { fields, .. } => format!(
                    "{:?}",
                    (
                        packet.header.packet_type,
                        packet.header.flags,
                        packet.header.checksum,
                        packet.header.fragment.map(|f| f.count),
                        fields
                    )
                ),
                Body::Auth(_) => String::new(),
            };
            match result {
                Err(e) => {
                    if packet.header.fragment.is_none()
                        || matches!(packet.body, Body::Auth(_))
                    {
                        prop_assert_eq!(e.code, ErrorCode::Flags);
                    }
                }
                Ok(Reassembly::Refused) => {
                    // Refused as a new packet: a contradicted one of that number may have
                    // given way first.
                    prop_assert!(sigs.get(&key).is_none_or(|old| *old != sig));
                    model.remove(&key);
                    sigs.remove(&key);
                }
                Ok(Reassembly::Duplicate) => {
                    let id = packet.header.fragment.unwrap().id;
                    prop_assert!(model.get(&key).is_some_and(|(_, held)| held.contains_key(&id)));
                }
                Ok(Reassembly::Incomplete) => {
                    let frag = packet.header.fragment.unwrap();
                    let entry = model.entry(key).or_insert((frag.count, BTreeMap::new()));
                    if sigs.get(&key).is_some_and(|old| *old != sig) {
                        // A contradicting fragment replaced a packet of one fragment.
                        *entry = (frag.count, BTreeMap::new());
                    }
                    prop_assert_eq!(entry.0, frag.count);
                    prop_assert!(entry.1.insert(frag.id, packet.data().to_vec()).is_none());
                    sigs.insert(key, sig);
                }
                Ok(Reassembly::Complete { header, fields, payload }) => {
                    let frag = packet.header.fragment.unwrap();
                    let same = sigs.remove(&key).is_none_or(|old| old == sig);
                    let (count, mut held) = model
                        .remove(&key)
                        .filter(|_| same)
                        .unwrap_or((frag.count, BTreeMap::new()));
                    prop_assert_eq!(count, frag.count);
                    held.insert(frag.id, packet.data().to_vec());
                    prop_assert_eq!(held.len(), usize::from(count));
                    let expected: Vec<u8> = held.into_values().flatten().collect();
                    prop_assert_eq!(&payload[..], &expected[..]);
                    prop_assert_eq!(header.sequence, packet.header.sequence);
                    prop_assert_eq!(header.init_vector, packet.header.init_vector);
                    prop_assert_eq!(header.flags, packet.header.flags);
                    prop_assert_eq!(header.fragment.map(|f| f.count), Some(count));
                    if let Body::Data { fields: sent, .. } = packet.body {
                        prop_assert_eq!(fields, sent);
                    }
                }
            }
            // invariants after every step (a new packet may have evicted a stale or least
            // complete one)
            let evicted = reassembler.evictions() > evictions;
            let live: BTreeSet<u32> = reassembler.packets().collect();
            if evicted {
                model.retain(|k, _| live.contains(k));
                sigs.retain(|k, _| live.contains(k));
            }
            let modelled: BTreeSet<u32> = model.keys().copied().collect();
            prop_assert_eq!(&live, &modelled);
            prop_assert!(reassembler.len() <= config.max_packets);
            prop_assert!(reassembler.reserved_bytes() <= config.max_bytes);
            let mut reserved = 0;
            for (key, (count, held)) in &model {
                let (c, bits) = reassembler.held(*key).unwrap();
                prop_assert_eq!(c, *count);
                let ids: BTreeSet<u8> =
                    bits.iter_ones().map(|i| u8::try_from(i).unwrap()).collect();
                let model_ids: BTreeSet<u8> = held.keys().copied().collect();
                prop_assert_eq!(ids, model_ids);
                reserved += usize::from(*count) * MAX_DATA;
            }
            prop_assert_eq!(reassembler.reserved_bytes(), reserved);
            prop_assert_eq!(reassembler.next_deadline().is_some(), !model.is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Whole payloads through the pipeline
// ---------------------------------------------------------------------------------------------

fn arb_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 0usize..=64,
        3 => 940usize..=1010,  // one datagram or two, plain or sealed (988 - 16 = 972)
        2 => 1950usize..=2000, // two or three fragments
        2 => 2000usize..=60_000,
        2 => 240_000usize..=MAX_PLAINTEXT,
        1 => Just(MAX_PLAINTEXT),
        1 => 0usize..=MAX_PLAINTEXT,
    ]
}

#[derive(Debug, Clone)]
struct Transfer {
    size: usize,
    kind: Kind,
    seed: u64,
    fields: TypeFields,
    opts: SendOptions,
    sealed: bool,
    packet_number: u32,
    shuffle_seed: u64,
    duplicates: usize,
}

fn arb_transfer() -> impl Strategy<Value = Transfer> {
    (
        arb_size(),
        arb_kind(),
        any::<u64>(),
        arb_type_fields(),
        arb_opts(),
        any::<bool>(),
        any::<u32>(),
        any::<u64>(),
        0usize..=4,
    )
        .prop_map(
            |(size, kind, seed, fields, opts, sealed, packet_number, shuffle_seed, duplicates)| {
                Transfer {
                    size,
                    kind,
                    seed,
                    fields,
                    opts,
                    sealed,
                    packet_number,
                    shuffle_seed,
                    duplicates,
                }
            },
        )
}

proptest! {
    #![proptest_config(config(48))]

    /// checksum → compress → encrypt → fragment → shuffle + duplicate → reassemble → open
    /// gives the payload back.
    #[test]
    fn payload_survives_the_pipeline(t in arb_transfer()) {
        let data = make_payload(t.kind, t.size, t.seed);
        let key = test_key();
        let seal = if t.sealed {
            Seal::Sealed { key: &key, packet_number: t.packet_number }
        } else {
            Seal::Plain { sequence: t.packet_number as u16 }
        };
        let mut encoder = Encoder::new();
        let encoded = encoder.encode(t.fields, &data, t.opts, seal).unwrap();
        let h = encoded.header;
        prop_assert_eq!(h.flags.contains(Flags::ENCRYPTED), t.sealed);
        prop_assert_eq!(h.flags.contains(Flags::RELIABLE), t.opts.reliable);
        prop_assert_eq!(h.flags.contains(Flags::CHECKSUM), t.opts.checksum && !t.sealed);
        if h.flags.contains(Flags::COMPRESSED) {
            prop_assert!(t.opts.compress);
        }
        let datagrams = write_all(&encoded);
        prop_assert_eq!(datagrams.len() > 1, h.flags.contains(Flags::FRAG));
        prop_assert!(datagrams.len() <= 255);

        // shuffle, then insert duplicates at random places
        let mut rng = Rng(t.shuffle_seed);
        let mut order: Vec<usize> = (0..datagrams.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for _ in 0..t.duplicates {
            let dup = rng.below(datagrams.len());
            let at = rng.below(order.len() + 1);
            order.insert(at, dup);
        }

        let mut receiver = Receiver::new(t.sealed.then(test_key));
        let expected_pn = if t.sealed { t.packet_number } else { u32::from(t.packet_number as u16) };
        let mut delivered = 0;
        for &i in &order {
            if let Some((pn, plaintext)) = receiver.receive(&datagrams[i]).unwrap() {
                prop_assert_eq!(pn, expected_pn);
                prop_assert!(plaintext == data, "altered plaintext of {} octets", plaintext.len());
                delivered += 1;
            }
        }
        prop_assert!(delivered >= 1, "never delivered");
    }
}

/// Whatever the encoder accepts, the decoder opens: a payload that compresses under the packet
/// limit but is itself larger than the decoder's default limit must either be refused by the
/// encoder (`TooLarge`) or come back whole.
#[test]
fn encoder_output_always_opens() {
    for len in [MAX_PAYLOAD, MAX_PAYLOAD + 1, 300_000, 1 << 20] {
        let data = vec![0u8; len];
        for sealed in [false, true] {
            let key = test_key();
            let seal = if sealed {
                Seal::Sealed {
                    key: &key,
                    packet_number: 7,
                }
            } else {
                Seal::Plain { sequence: 7 }
            };
            let opts = SendOptions {
                compress: true,
                checksum: true,
                ..SendOptions::default()
            };
            let mut encoder = Encoder::new();
            match encoder.encode(TypeFields::Default, &data, opts, seal) {
                Err(EncodeError::TooLarge { .. }) => {}
                Ok(encoded) => {
                    let datagrams = write_all(&encoded);
                    let mut receiver = Receiver::new(sealed.then(test_key));
                    let mut delivered = None;
                    for d in &datagrams {
                        match receiver.receive(d) {
                            Ok(Some((_, p))) => delivered = Some(p),
                            Ok(None) => {}
                            Err(e) => panic!(
                                "{len} zeros (sealed: {sealed}) encoded into {} datagrams \
                                 but do not open: {e}",
                                datagrams.len()
                            ),
                        }
                    }
                    assert!(delivered.as_deref() == Some(&data[..]), "{len} zeros");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Flipped bits in sealed packets
// ---------------------------------------------------------------------------------------------

/// Feeds `datagrams` to a receiver holding `key` and returns every plaintext it delivered.
fn deliveries(datagrams: &[Vec<u8>], key: &PacketKey) -> Vec<Vec<u8>> {
    let mut receiver = Receiver::new(Some(key.clone()));
    datagrams
        .iter()
        .filter_map(|d| receiver.receive(d).ok().flatten())
        .map(|(_, p)| p)
        .collect()
}

fn sealed_datagrams(
    fields: TypeFields,
    data: &[u8],
    opts: SendOptions,
    packet_number: u32,
) -> Vec<Vec<u8>> {
    let key = test_key();
    let mut encoder = Encoder::new();
    let encoded = encoder
        .encode(
            fields,
            data,
            opts,
            Seal::Sealed {
                key: &key,
                packet_number,
            },
        )
        .unwrap();
    write_all(&encoded)
}

/// Every single-bit flip of one small sealed datagram, exhaustively, for each packet type and
/// a packet number whose Init Vector is zero and one whose is not.
#[test]
fn every_bit_flip_of_a_sealed_datagram_is_rejected() {
    let key = test_key();
    let mut accepted = Vec::new();
    for fields in [
        TypeFields::Default,
        TypeFields::Ack(AckFields {
            ack_id: 0x1234,
            ack_bits: 0xF0F0,
        }),
        TypeFields::Heartbeat(Heartbeat::Ping),
        TypeFields::Error(ErrorCode::ServerDisconnect),
    ] {
        for packet_number in [0x0000_0102, 0x0003_0405] {
            for compress in [false, true] {
                let opts = SendOptions {
                    reliable: true,
                    checksum: false,
                    compress,
                };
                let datagrams =
                    sealed_datagrams(fields, b"move 3 4; move 3 4; move 3 4", opts, packet_number);
                assert_eq!(datagrams.len(), 1);
                assert_eq!(deliveries(&datagrams, &key).len(), 1, "unaltered opens");
                let d = &datagrams[0];
                for bit in 0..d.len() * 8 {
                    let mut flipped = d.clone();
                    flipped[bit / 8] ^= 0x80 >> (bit % 8);
                    let got = deliveries(&[flipped.clone()], &key);
                    if !got.is_empty() {
                        accepted.push(format!(
                            "{:?} pn {packet_number:#x} compress {compress}: bit {bit} \
                             (octet {} mask {:#04x}) accepted, datagram {:02x?} delivered \
                             {:02x?}",
                            fields.packet_type(),
                            bit / 8,
                            0x80 >> (bit % 8),
                            flipped,
                            got[0]
                        ));
                    }
                }
            }
        }
    }
    assert!(
        accepted.is_empty(),
        "{} flipped datagrams were delivered:\n{}",
        accepted.len(),
        accepted.join("\n")
    );
}

proptest! {
    #![proptest_config(config(256))]

    /// A flipped bit anywhere in an unfragmented sealed datagram is rejected.
    #[test]
    fn flipped_bit_in_sealed_datagram_is_rejected(
        fields in arb_type_fields(),
        kind in arb_kind(),
        size in 0usize..=960,
        seed in any::<u64>(),
        opts in arb_opts(),
        packet_number in any::<u32>(),
        bit in any::<Index>(),
        in_header in any::<bool>(),
    ) {
        let key = test_key();
        let data = make_payload(kind, size, seed);
        let datagrams = sealed_datagrams(fields, &data, opts, packet_number);
        prop_assert_eq!(datagrams.len(), 1);
        let mut flipped = datagrams[0].clone();
        // half the cases aim at the header and type fields (the first 10 octets)
        let span = if in_header { flipped.len().min(10) } else { flipped.len() };
        let bit = bit.index(span * 8);
        flipped[bit / 8] ^= 0x80 >> (bit % 8);
        let got = deliveries(&[flipped], &key);
        prop_assert!(got.is_empty(), "bit {} flipped and delivered {:02x?}", bit, got);
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// A flipped bit anywhere in one fragment of a sealed fragmented packet is rejected.
    #[test]
    fn flipped_bit_in_sealed_fragment_is_rejected(
        fields in arb_type_fields(),
        kind in arb_kind(),
        size in 1000usize..=6000,
        seed in any::<u64>(),
        opts in arb_opts(),
        packet_number in prop_oneof![0u32..=0xFFFF, any::<u32>()],
        which in any::<Index>(),
        bit in any::<Index>(),
        reverse in any::<bool>(),
    ) {
        let key = test_key();
        // incompressible, so that it stays fragmented even with compression
        let data = make_payload(kind, size, seed);
        let opts = SendOptions { compress: opts.compress && matches!(kind, Kind::Incompressible), ..opts };
        let mut datagrams = sealed_datagrams(fields, &data, opts, packet_number);
        prop_assume!(datagrams.len() > 1);
        prop_assert_eq!(deliveries(&datagrams, &key), vec![data.clone()]);
        let i = which.index(datagrams.len());
        let bit = bit.index(datagrams[i].len() * 8);
        datagrams[i][bit / 8] ^= 0x80 >> (bit % 8);
        if reverse {
            datagrams.reverse();
        }
        let got = deliveries(&datagrams, &key);
        prop_assert!(
            got.is_empty(),
            "fragment {} bit {} flipped and {} plaintexts delivered",
            i, bit, got.len()
        );
    }
}

/// AUTH's extremes round-trip: a 255-octet key and a 65535-octet certificate.
#[test]
fn auth_extremes_round_trip() {
    let key = vec![0x04u8; 255];
    let cert: Vec<u8> = (0..u16::MAX as usize).map(|i| i as u8).collect();
    let owned = OwnedPacket::Auth {
        sequence: 0xFFFF,
        key,
        certificate: Some(cert),
    };
    let packet = owned.packet();
    let mut buf = vec![0xa5u8; packet.len()];
    assert_eq!(packet.emit(&mut buf), Ok(4 + 2 + 255 + 2 + 65535));
    assert_eq!(Packet::parse(&buf).unwrap(), packet);
}

/// A `Packet` is plain data, so a caller can hand the reassembler a fragment that no datagram
/// could parse to. The reassembler must refuse it with the code the parser would give, not
/// panic: Fragment Number 0 (3.6), Fragment ID >= Fragment Number (3.5), fragment fields
/// without the FRAG flag (3.3).
#[test]
fn reassembler_refuses_inconsistent_hand_built_fragments() {
    let data = [1u8; MAX_DATA];
    let cases = [
        (
            "fragment number 0",
            Flags::FRAG,
            0u8,
            0u8,
            ErrorCode::FragmentNumber,
        ),
        (
            "fragment id 5 of 2",
            Flags::FRAG,
            5,
            2,
            ErrorCode::FragmentId,
        ),
        (
            "fragment fields without FRAG",
            Flags::empty(),
            0,
            2,
            ErrorCode::Flags,
        ),
    ];
    let mut failures = Vec::new();
    for (name, flags, id, count, expected) in cases {
        let mut header = Header::new(PacketType::Default, 1);
        header.flags = flags;
        header.fragment = Some(FragmentFields { id, count });
        let packet = Packet {
            header,
            body: Body::Data {
                fields: TypeFields::Default,
                data: &data,
            },
        };
        let outcome = std::panic::catch_unwind(|| {
            let mut reassembler = Reassembler::new(ReassemblyConfig::default());
            reassembler
                .insert(Instant::now(), &packet)
                .map(|r| format!("{r:?}"))
                .map_err(|e| e.code)
        });
        match outcome {
            Ok(Err(code)) if code == expected => {}
            Ok(other) => failures.push(format!("{name}: expected {expected}, got {other:?}")),
            Err(_) => failures.push(format!("{name}: expected {expected}, panicked")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
