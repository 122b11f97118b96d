//! Cost of the flag pipeline per flag combination and payload size.
//!
//! ```sh
//! cargo bench --bench pipeline -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Groups:
//! - `roundtrip/<combination>/<size>`: one packet sent and received. Sending is
//!   [`Encoder::encode`] plus [`Encoded::write_datagram`] of every datagram into a reused wire
//!   buffer; receiving is [`Packet::parse`] of every datagram, [`Reassembler::insert`] for
//!   fragments and [`Decoder::open`] of the whole packet (in place, no copy of Data).
//! - `encode/<combination>/<size>`: the sending half alone.
//!
//! Throughput is the application payload (plaintext octets) per second.
//!
//! Sizes: 64 B (a small game message), 988 B (the most Data one datagram carries; with
//! ENCRYPTED the 16-octet tag makes it two fragments) and 64 KiB (67 fragments, 53 when
//! compressed).
//!
//! Payload: every combination uses the same game-state-like payload, a snapshot of 24-octet
//! entity records (sequential ids, a few kinds, positions in one region with random low
//! octets, random yaw, small velocities, mostly-full health). It is semi-compressible: LZ4
//! shrinks it to about 88 % at 988 B and 79 % at 64 KiB (start-up prints the wire size of
//! every case). At 64 B LZ4 does not shrink it, so the compress combinations send it
//! uncompressed and measure only the attempt.
//!
//! The Encoder, Decoder, Reassembler and buffers are created once per benchmark and reused, so
//! the measured loop allocates only what the library itself allocates; a counting allocator
//! prints the allocations of one steady-state round trip at start-up (0, except one per
//! compression attempt: `lz4_flex` 0.11 allocates its hash table on every call).
//! Reassembly uses one fixed `Instant` (no clock read in the loop).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tickwire::pipeline::{
    Decoder, Encoded, Encoder, PacketKey, Reassembler, Reassembly, ReassemblyConfig, Seal,
    SendOptions,
};
use tickwire::wire::{Body, Packet, TypeFields, MAX_DATA_DATAGRAM, MAX_FRAGMENTS};

/// Counts allocations, to check that the steady state allocates nothing.
struct CountingAlloc;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// One flag combination.
#[derive(Clone, Copy)]
struct Combination {
    name: &'static str,
    opts: SendOptions,
    encrypted: bool,
}

const COMBINATIONS: [Combination; 6] = [
    Combination {
        name: "plain",
        opts: SendOptions {
            reliable: false,
            checksum: false,
            compress: false,
        },
        encrypted: false,
    },
    Combination {
        name: "checksum",
        opts: SendOptions {
            reliable: false,
            checksum: true,
            compress: false,
        },
        encrypted: false,
    },
    Combination {
        name: "compress",
        opts: SendOptions {
            reliable: false,
            checksum: false,
            compress: true,
        },
        encrypted: false,
    },
    Combination {
        name: "encrypted",
        opts: SendOptions {
            reliable: false,
            checksum: false,
            compress: false,
        },
        encrypted: true,
    },
    Combination {
        name: "compress+encrypted",
        opts: SendOptions {
            reliable: false,
            checksum: false,
            compress: true,
        },
        encrypted: true,
    },
    Combination {
        name: "reliable+checksum+compress",
        opts: SendOptions {
            reliable: true,
            checksum: true,
            compress: true,
        },
        encrypted: false,
    },
];

const SIZES: [(&str, usize); 3] = [("64B", 64), ("988B", 988), ("64KiB", 64 * 1024)];

/// A game-state-like snapshot of `len` octets: 24-octet entity records.
///
/// Record: id u32 (sequential), kind u8 (0..4), flags u8 (mostly 0), x/y/z i32 (one region,
/// random low 12 bits), yaw u16 (random), vx/vy i16 (small), health u8 (mostly 100), ammo u8.
fn game_state(len: usize) -> Vec<u8> {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    };
    let mut out = Vec::with_capacity(len + 24);
    let mut id = 10_000u32;
    while out.len() < len {
        let r = next();
        out.extend_from_slice(&id.to_be_bytes());
        out.push((r & 3) as u8);
        out.push(u8::from(r & 0xF0 == 0));
        for base in [0x0001_2000i32, 0x0000_8000, 0x0003_4000] {
            out.extend_from_slice(&(base + (next() & 0xFFF) as i32).to_be_bytes());
        }
        out.extend_from_slice(&(next() as u16).to_be_bytes());
        let v = next();
        out.extend_from_slice(&((v & 0xF) as i16 - 8).to_be_bytes());
        out.extend_from_slice(&(((v >> 4) & 0xF) as i16 - 8).to_be_bytes());
        out.push(if v & 0x700 == 0 {
            (v >> 16) as u8 % 100
        } else {
            100
        });
        out.push(30);
        id += 1;
    }
    out.truncate(len);
    out
}

/// The sending and receiving ends of one connection direction, reused across iterations.
struct Pipeline {
    combo: Combination,
    key: PacketKey,
    encoder: Encoder,
    decoder: Decoder,
    reassembler: Reassembler,
    /// Datagram `i` is written at `i * MAX_DATA_DATAGRAM`.
    wire: Vec<u8>,
    lens: Vec<usize>,
    now: Instant,
    packet_number: u32,
}

impl Pipeline {
    fn new(combo: Combination) -> Self {
        Self {
            combo,
            key: PacketKey::new(&[0x42; 16], &[0x24; 12]),
            encoder: Encoder::new(),
            decoder: Decoder::new(),
            reassembler: Reassembler::new(ReassemblyConfig::default()),
            wire: vec![0; MAX_FRAGMENTS * MAX_DATA_DATAGRAM],
            lens: vec![0; MAX_FRAGMENTS],
            now: Instant::now(),
            packet_number: 0,
        }
    }

    /// Encodes `payload` and writes every datagram; returns how many.
    fn send(&mut self, payload: &[u8]) -> usize {
        self.packet_number = self.packet_number.wrapping_add(1);
        let seal = if self.combo.encrypted {
            Seal::Sealed {
                key: &self.key,
                packet_number: self.packet_number,
            }
        } else {
            Seal::Plain {
                sequence: self.packet_number as u16,
            }
        };
        let encoded: Encoded<'_> = self
            .encoder
            .encode(TypeFields::Default, payload, self.combo.opts, seal)
            .expect("encode");
        let count = encoded.datagram_count();
        for (i, (slot, len)) in self
            .wire
            .chunks_exact_mut(MAX_DATA_DATAGRAM)
            .zip(&mut self.lens)
            .take(count)
            .enumerate()
        {
            *len = encoded.write_datagram(i, slot).expect("write datagram");
        }
        count
    }

    /// Receives the `count` datagrams written by [`Pipeline::send`] and calls `deliver` with
    /// the plaintext of the packet they make.
    fn receive(&mut self, count: usize, mut deliver: impl FnMut(&[u8])) {
        let key = self.combo.encrypted.then_some(&self.key);
        for (slot, &len) in self
            .wire
            .chunks_exact_mut(MAX_DATA_DATAGRAM)
            .zip(&self.lens)
            .take(count)
        {
            let datagram = &mut slot[..len];
            let packet = Packet::parse(datagram).expect("parse");
            let Body::Data { fields, data } = packet.body else {
                unreachable!("the benchmark sends Data packets only");
            };
            if packet.header.fragment.is_some() {
                match self.reassembler.insert(self.now, &packet).expect("insert") {
                    Reassembly::Complete {
                        header,
                        fields,
                        payload,
                    } => {
                        let opened = self
                            .decoder
                            .open(&header, &fields, payload, key)
                            .expect("open");
                        deliver(opened.plaintext);
                    }
                    Reassembly::Incomplete => {}
                    other => panic!("unexpected reassembly result {other:?}"),
                }
            } else {
                // Open in place: the Data is the tail of the datagram.
                let header = packet.header;
                let data_at = len - data.len();
                let opened = self
                    .decoder
                    .open(&header, &fields, &mut datagram[data_at..], key)
                    .expect("open");
                deliver(opened.plaintext);
            }
        }
    }
}

fn pipeline(c: &mut Criterion) {
    let payloads: Vec<(&str, Vec<u8>)> = SIZES
        .iter()
        .map(|&(label, len)| (label, game_state(len)))
        .collect();

    // Report what each case puts on the wire, check the round trip and the allocations.
    eprintln!("case: datagrams, wire octets, flags of datagram 0, allocations per round trip");
    for combo in COMBINATIONS {
        for (label, payload) in &payloads {
            let mut p = Pipeline::new(combo);
            let mut delivered = 0;
            for _ in 0..3 {
                let count = p.send(payload);
                p.receive(count, |plain| {
                    assert_eq!(plain, &payload[..]);
                    delivered += 1;
                });
            }
            assert_eq!(delivered, 3, "{} {label}", combo.name);
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            let count = p.send(payload);
            p.receive(count, |plain| {
                black_box(plain);
            });
            let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
            let wire: usize = p.lens[..count].iter().sum();
            let flags = Packet::parse(&p.wire[..p.lens[0]])
                .expect("parse")
                .header
                .flags;
            eprintln!(
                "{}/{label}: {count} datagram(s), {wire} octets ({:.1} % of payload), {flags:?}, {allocations} allocation(s)",
                combo.name,
                100.0 * wire as f64 / payload.len() as f64,
            );
        }
    }

    let mut roundtrip = c.benchmark_group("roundtrip");
    for combo in COMBINATIONS {
        for (label, payload) in &payloads {
            roundtrip.throughput(Throughput::Bytes(payload.len() as u64));
            let mut p = Pipeline::new(combo);
            roundtrip.bench_with_input(
                BenchmarkId::new(combo.name, label),
                payload,
                |b, payload| {
                    b.iter(|| {
                        let count = p.send(black_box(payload));
                        p.receive(count, |plain| {
                            black_box(plain);
                        });
                    })
                },
            );
        }
    }
    roundtrip.finish();

    let mut encode = c.benchmark_group("encode");
    for combo in COMBINATIONS {
        for (label, payload) in &payloads {
            encode.throughput(Throughput::Bytes(payload.len() as u64));
            let mut p = Pipeline::new(combo);
            encode.bench_with_input(
                BenchmarkId::new(combo.name, label),
                payload,
                |b, payload| b.iter(|| black_box(p.send(black_box(payload)))),
            );
        }
    }
    encode.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
