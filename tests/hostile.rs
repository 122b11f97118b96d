//! The attacks of a spoofing stranger and of a cheater with a real connection, each replayed
//! deterministically against the sans-IO core (virtual time, seeded randomness), with what the
//! server must still do: keep its memory within its budgets, keep serving legitimate clients,
//! and never send an unvalidated address more than three times what it sent.
//!
//! 1. migration onto a victim by a predictable path challenge
//! 2. reassembly starvation by spoofed fragments
//! 3. reliable-ordered messages held past a gap, outside every limit
//! 4. empty reliable messages that cost nothing
//! 5. LZ4 bombs
//! 6. one address doing full handshakes with new keys
//! 7. one IP filling the half-open table from many ports
//! 8. one IP holding every connection slot
//! 9. a spoofed flood of fresh-key AUTHs from thousands of addresses

mod common;

use common::*;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickwire::connection::{Connection, Role, Scratch};
use tickwire::crypto::EphemeralKey;
use tickwire::endpoint::handshake;
use tickwire::pipeline::{encode_into, fragment, PacketKey, Seal, SendOptions};
use tickwire::wire::frame;
use tickwire::wire::{ErrorCode, Heartbeat, TypeFields};
use tickwire::{
    ChannelConfig, ChannelId, ClientId, ConnectionConfig, DeliveryMode, DisconnectReason, Event,
    SendError, ServerConfig, ServerIdentity,
};

// ---------------------------------------------------------------------------------------
// A cheater's raw session: a server-side Connection whose peer keys the test holds, so the
// test can seal any packet the peer could.

struct Raw {
    conn: Connection,
    scratch: Scratch,
    events: VecDeque<Event>,
    /// The key the cheater seals with (the connection's receive key).
    peer_key: PacketKey,
    next_pn: u32,
    now: Instant,
    client_addr: SocketAddr,
}

const C2S: ([u8; 16], [u8; 12]) = ([1; 16], [2; 12]);
const S2C: ([u8; 16], [u8; 12]) = ([3; 16], [4; 12]);

impl Raw {
    fn new(config: ConnectionConfig) -> Self {
        let now = Instant::now();
        let config = Arc::new(config);
        let limit = tickwire::connection::plaintext_limit(&config);
        let conn = Connection::new(
            now,
            ClientId(1),
            addr(5000),
            Role::Server,
            config,
            PacketKey::new(&S2C.0, &S2C.1),
            PacketKey::new(&C2S.0, &C2S.1),
            None,
            None,
        );
        Self {
            conn,
            scratch: Scratch::new(limit),
            events: VecDeque::new(),
            peer_key: PacketKey::new(&C2S.0, &C2S.1),
            next_pn: 1,
            now,
            client_addr: addr(5000),
        }
    }

    /// Seals `plain` as the peer's next packet and returns its datagrams.
    fn seal(&mut self, fields: TypeFields, plain: &[u8], opts: SendOptions) -> Vec<Vec<u8>> {
        let pn = self.next_pn;
        self.next_pn += 1;
        let mut out = Vec::new();
        let header = encode_into(
            &mut Vec::new(),
            fields,
            plain,
            opts,
            Seal::Sealed {
                key: &self.peer_key,
                packet_number: pn,
            },
            &mut out,
        )
        .unwrap();
        let count = header.fragment.map_or(1, |f| usize::from(f.count));
        (0..count)
            .map(|i| {
                let mut buf = vec![0u8; 1500];
                let n = fragment::write_datagram(&header, &fields, &out, i, &mut buf).unwrap();
                buf.truncate(n);
                buf
            })
            .collect()
    }

    fn deliver_from(&mut self, from: SocketAddr, datagrams: Vec<Vec<u8>>) {
        for mut d in datagrams {
            self.conn
                .handle_datagram(self.now, from, &mut d, &mut self.scratch, &mut self.events);
        }
    }

    fn deliver(&mut self, datagrams: Vec<Vec<u8>>) {
        let from = self.client_addr;
        self.deliver_from(from, datagrams);
    }

    /// Drains what the connection sends: (destination, octets).
    fn drain(&mut self) -> Vec<(SocketAddr, usize)> {
        let mut buf = vec![0u8; 1500];
        let mut out = Vec::new();
        while let Some((n, to)) = self
            .conn
            .poll_transmit(self.now, &mut self.scratch, &mut buf)
        {
            out.push((to, n));
            assert!(out.len() < 100_000, "runaway transmit");
        }
        out
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.conn.poll_timeout().is_some_and(|t| t <= self.now) {
            self.conn
                .handle_timeout(self.now, &mut self.events, &mut self.scratch);
        }
    }
}

fn reliable() -> SendOptions {
    SendOptions {
        reliable: true,
        ..SendOptions::default()
    }
}

fn message(channel: u8, seq: Option<u16>, data: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    frame::put_message(&mut plain, channel, seq, data);
    plain
}

// ---------------------------------------------------------------------------------------
// 1. A cheater moves its connection onto a victim.

#[test]
fn a_victim_address_gets_at_most_three_times_what_came_from_it() {
    let mut raw = Raw::new(ConnectionConfig::default());
    let victim = addr(7777);
    // The cheater spoofs one authentic packet from the victim's address.
    let spoofed = raw.seal(
        TypeFields::Default,
        &message(0, None, b"x"),
        SendOptions::default(),
    );
    let from_victim: usize = spoofed.iter().map(Vec::len).sum();
    raw.conn.start_path_challenge(victim);
    raw.deliver_from(victim, spoofed);
    // Ten seconds of challenge resends.
    let mut to_victim = 0;
    for _ in 0..1000 {
        for (to, n) in raw.drain() {
            if to == victim {
                to_victim += n;
            }
        }
        raw.advance(Duration::from_millis(10));
    }
    assert!(to_victim > 0, "the new address was challenged");
    assert!(
        to_victim <= 3 * from_victim,
        "victim got {to_victim} octets for {from_victim} sent from it"
    );
    assert!(raw.conn.stats().amplification_limited > 0);
    assert_eq!(raw.conn.addr(), addr(5000));
}

#[test]
fn a_path_challenge_cannot_be_predicted() {
    let mut raw = Raw::new(ConnectionConfig::default());
    let victim = addr(7777);
    let spoofed = raw.seal(
        TypeFields::Default,
        &message(0, None, b"x"),
        SendOptions::default(),
    );
    raw.conn.start_path_challenge(victim);
    raw.deliver_from(victim, spoofed);
    raw.drain();
    // The cheater answers every value it could predict from what it sees (the old value was
    // (next packet number << 16) ^ challenges sent), forged from the victim's address.
    for pn in 0..64u64 {
        for k in 1..4u64 {
            let value = (pn << 16) ^ k;
            let mut data = b"path".to_vec();
            data.extend_from_slice(&value.to_be_bytes());
            let d = raw.seal(
                TypeFields::Heartbeat(Heartbeat::Pong),
                &data,
                SendOptions::default(),
            );
            raw.deliver_from(victim, d);
            raw.drain();
        }
    }
    assert!(
        !raw.events
            .iter()
            .any(|e| matches!(e, Event::AddressChanged { .. })),
        "the connection moved to an unvalidated address"
    );
    assert_eq!(raw.conn.addr(), addr(5000));
}

#[test]
fn a_real_address_change_still_validates() {
    let mut sim = Sim::new(ServerConfig::new(ServerIdentity::generate()));
    let cfg = sim.client_config();
    sim.add_client(cfg);
    sim.connect_all();
    // The client's NAT mapping changes.
    sim.clients[0].0 = addr(5999);
    let now = sim.now;
    sim.clients[0].1.send(now, ChannelId(3), b"moved").unwrap();
    assert!(sim.run_until(Duration::from_secs(3), |s| s
        .server_events
        .iter()
        .any(|e| matches!(e, Event::AddressChanged { .. }))));
    assert_eq!(sim.server.clients()[0].addr, addr(5999));
}

// ---------------------------------------------------------------------------------------
// 2. Spoofed fragments starve reassembly.

/// A 13-octet fragment that looks sealed: FRAG and ENCRYPTED, Fragment Number 255, the last
/// fragment, with packet number `pn`.
fn forged_fragment(pn: u32) -> Vec<u8> {
    let mut d = vec![0x00, 0x18, (pn & 0xFF00) as u8, pn as u8];
    d[2] = (pn >> 8) as u8;
    d[3] = pn as u8;
    d.extend_from_slice(&[254, 255]);
    d.extend_from_slice(&((pn >> 16) as u16).to_be_bytes());
    d.extend_from_slice(&[0xAB; 5]);
    d
}

#[test]
fn spoofed_fragments_do_not_starve_reassembly_in_either_direction() {
    let mut sim = Sim::new(ServerConfig::new(ServerIdentity::generate()));
    let cfg = sim.client_config();
    sim.add_client(cfg);
    sim.connect_all();
    let client_addr = sim.clients[0].0;
    let server_addr = sim.server_addr;
    let mut rng = Rng(0x5eed);
    let mut sent = 0;
    let mut echoed = 0;
    let big = vec![0x42u8; 4000];
    let start = sim.now;
    let mut next_spray = sim.now;
    while sim.now < start + Duration::from_secs(20) {
        if sim.now >= next_spray {
            next_spray = sim.now + Duration::from_secs(2);
            // 32 forged fragments each way: made-up packet numbers, and a few plausible ones
            // (an attacker guessing from the connection's age).
            for k in 0..32u32 {
                let pn = if k < 24 {
                    (rng.next_u64() as u32) | 0x1000_0000
                } else {
                    k * 3 + 2
                };
                let now = sim.now;
                sim.server
                    .handle_datagram(now, client_addr, &mut forged_fragment(pn));
                sim.clients[0]
                    .1
                    .handle_datagram(now, server_addr, &mut forged_fragment(pn));
            }
        }
        if sent < 200 && sim.now >= start + Duration::from_millis(50 * sent as u64) {
            let now = sim.now;
            if sim.clients[0].1.send(now, ChannelId(3), &big).is_ok() {
                sent += 1;
            }
        }
        for (client, channel, data) in sim.server_messages() {
            let now = sim.now;
            sim.server
                .send(now, ClientId(client), ChannelId(channel), &data)
                .unwrap();
        }
        echoed += sim
            .client_messages(0)
            .iter()
            .filter(|(_, d)| d.len() == 4000)
            .count();
        let limit = sim.now + Duration::from_millis(5);
        sim.step_until(Some(limit));
    }
    assert_eq!(sent, 200);
    assert_eq!(
        echoed, 200,
        "every 4000-octet echo came back under fragment spoofing"
    );
    let server_side = sim.server.clients()[0].stats.clone();
    assert!(server_side.fragments_refused > 0);
    assert!(sim.clients[0].1.stats().fragments_refused > 0);
}

// ---------------------------------------------------------------------------------------
// 3. Ordered messages held behind a gap the cheater never fills.

#[test]
fn messages_held_for_a_gap_are_charged_to_the_receive_budget() {
    let config = ConnectionConfig::default();
    let limit = config.receive_buffer_bytes;
    let mut raw = Raw::new(config);
    let data = vec![7u8; 60_000];
    // Seq 1..=1023 on the reliable-ordered channel, never seq 0: 61 MB if all were held.
    for seq in 1..=1023u16 {
        let d = raw.seal(
            TypeFields::Default,
            &message(3, Some(seq), &data),
            reliable(),
        );
        raw.deliver(d);
        raw.drain();
    }
    let stats = raw.conn.stats();
    assert!(
        stats.receive_buffered_bytes as usize <= 2 * limit,
        "{} octets held",
        stats.receive_buffered_bytes
    );
    assert!(
        stats.memory_bytes < 3 * limit as u64,
        "{} octets of memory",
        stats.memory_bytes
    );
    assert!(stats.dropped_over_budget > 900);
    assert!(raw.conn.is_connected());
    // The gap filler always gets in, and what was held is delivered in order behind it.
    let d = raw.seal(
        TypeFields::Default,
        &message(3, Some(0), b"zero"),
        reliable(),
    );
    raw.deliver(d);
    let mut seqs = Vec::new();
    while let Some(e) = raw.events.pop_front() {
        if let Event::Message { data, .. } = e {
            seqs.push(data.len());
            raw.conn.release_delivered(data.len());
        }
    }
    assert_eq!(seqs[0], 4);
    assert!(seqs.len() > 1, "held messages followed the gap filler");
    assert!(seqs[1..].iter().all(|&n| n == 60_000));
}

#[test]
fn a_lossy_link_with_a_long_gap_still_delivers_everything_in_order() {
    // The legitimate side of the same rule: the packet that fills the gap is never refused,
    // even with the receive budget full of held messages.
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.connection.receive_buffer_bytes = 256 << 10;
    let mut sim = Sim::new(config);
    let mut cfg = sim.client_config();
    cfg.connection.receive_buffer_bytes = 256 << 10;
    sim.add_client(cfg);
    sim.connect_all();
    // Drop every client datagram for 300 ms once, so that a gap opens, then nothing.
    let drop_from = sim.counts[0] + 5;
    sim.filter = Box::new(move |dir, n, _| {
        if dir == Dir::ToServer && (drop_from..drop_from + 3).contains(&n) {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let msg = vec![1u8; 3000];
    let mut queued = 0u32;
    let mut got = Vec::new();
    let ok = sim.run_until(Duration::from_secs(30), |s| {
        while queued < 400 {
            let now = s.now;
            match s.clients[0].1.send(
                now,
                ChannelId(3),
                &[&queued.to_be_bytes()[..], &msg].concat(),
            ) {
                Ok(()) => queued += 1,
                Err(SendError::QueueFull) => break,
                Err(e) => panic!("{e}"),
            }
        }
        for (_, _, d) in s.server_messages() {
            got.push(u32::from_be_bytes(d[..4].try_into().unwrap()));
        }
        got.len() == 400
    });
    assert!(ok, "delivered {} of 400", got.len());
    assert!(got.iter().copied().eq(0..400), "in order");
}

// ---------------------------------------------------------------------------------------
// 4. Empty reliable messages.

#[test]
fn empty_reliable_messages_fill_the_send_budget() {
    let mut sim = Sim::new(ServerConfig::new(ServerIdentity::generate()));
    let cfg = sim.client_config();
    sim.add_client(cfg);
    sim.connect_all();
    sim.muted.push(sim.clients[0].0); // the peer never acknowledges
    let id = sim.server.clients()[0].id;
    let now = sim.now;
    let mut accepted = 0usize;
    let refused = loop {
        match sim.server.send(now, id, ChannelId(3), &[]) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1_000_000, "empty messages are never refused");
    };
    assert_eq!(refused, SendError::QueueFull);
    let budget = ConnectionConfig::default().send_queue_bytes;
    assert!(accepted <= budget / 64, "{accepted} empty messages queued");
    let stats = sim.server.client_stats(id).unwrap();
    assert!(
        stats.memory_bytes < 2 * budget as u64,
        "{} octets",
        stats.memory_bytes
    );
}

// ---------------------------------------------------------------------------------------
// 5. LZ4 bombs.

#[test]
fn a_packet_decompressing_past_the_limit_is_refused_before_allocation_and_closes() {
    let mut raw = Raw::new(ConnectionConfig::default());
    // Three 60 KB messages of zeros: 180 KB of plaintext, a few hundred octets compressed.
    let mut plain = Vec::new();
    for _ in 0..3 {
        frame::put_message(&mut plain, 2, None, &[0u8; 60_000]);
    }
    let opts = SendOptions {
        reliable: true,
        compress: true,
        ..SendOptions::default()
    };
    let bomb = raw.seal(TypeFields::Default, &plain, opts);
    assert_eq!(bomb.len(), 1, "compressed into one datagram");
    raw.deliver(bomb);
    assert!(raw.events.iter().any(|e| matches!(
        e,
        Event::Disconnected {
            reason: DisconnectReason::ProtocolViolation(ErrorCode::Compression),
            ..
        }
    )));
    assert!(!raw
        .events
        .iter()
        .any(|e| matches!(e, Event::Message { .. })));
}

#[test]
fn compressed_messages_within_the_limit_are_charged_and_flow_controlled() {
    let mut raw = Raw::new(ConnectionConfig::default());
    let limit = ConnectionConfig::default().receive_buffer_bytes;
    let opts = SendOptions {
        reliable: true,
        compress: true,
        ..SendOptions::default()
    };
    // 200 packets of one 60 KB message each (12 MB), never taken by the application.
    for _ in 0..200 {
        let d = raw.seal(TypeFields::Default, &message(2, None, &[0u8; 60_000]), opts);
        raw.deliver(d);
    }
    let stats = raw.conn.stats();
    assert!(stats.receive_buffered_bytes as usize <= limit);
    assert!(stats.dropped_over_budget > 100);
    assert!(raw.conn.is_connected());
}

#[test]
fn ack_only_packets_draw_no_acks_and_every_8th_unreliable_data_packet_does() {
    let mut raw = Raw::new(ConnectionConfig::default());
    assert!(raw.drain().is_empty());
    let ack = TypeFields::Ack(tickwire::wire::AckFields {
        ack_id: 0,
        ack_bits: 0,
    });
    // ACK-only packets, empty or carrying only a fragment report: nothing is owed for them,
    // else two peers would acknowledge each other's acknowledgements.
    for i in 0..16 {
        let mut plain = Vec::new();
        if i % 2 == 1 {
            frame::put_fragment_ack(&mut plain, 9999, 2, &[0x80]);
        }
        let d = raw.seal(ack, &plain, SendOptions::default());
        raw.deliver(d);
    }
    assert!(raw.drain().is_empty(), "an ACK-only packet drew an answer");
    // Unreliable data packets: the 8th is acknowledged (with ack_delay 0, at once).
    for i in 0..8 {
        let d = raw.seal(
            ack,
            &message(0, None, b"unreliable"),
            SendOptions::default(),
        );
        raw.deliver(d);
        let out = raw.drain();
        if i < 7 {
            assert!(out.is_empty(), "packet {i} was acknowledged");
        } else {
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].1, 10 + 16, "an ACK-only packet");
        }
    }
}

#[test]
fn a_batch_is_acked_oldest_first_within_the_ack_delay() {
    let config = ConnectionConfig {
        ack_delay: Duration::from_millis(20),
        ..ConnectionConfig::default()
    };
    let mut raw = Raw::new(config);
    let ack = TypeFields::Ack(tickwire::wire::AckFields {
        ack_id: 0,
        ack_bits: 0,
    });
    // pns 1..=20, all reliable, taken before one drain.
    for i in 0..20u8 {
        let d = raw.seal(ack, &message(2, None, &[i]), reliable());
        raw.deliver(d);
    }
    let mut buf = [0u8; 1500];
    let acks = |raw: &mut Raw, buf: &mut [u8]| {
        let mut got = Vec::new();
        while let Some((n, _)) = raw.conn.poll_transmit(raw.now, &mut raw.scratch, buf) {
            let p = tickwire::wire::Packet::parse(&buf[..n]).unwrap();
            match p.body {
                tickwire::wire::Body::Data {
                    fields: TypeFields::Ack(a),
                    ..
                } => got.push(a.ack_id),
                other => panic!("not an ACK: {other:?}"),
            }
        }
        got
    };
    // 16 or more owed: at once, naming pns 1..=17 (ACK ID 17); 18..=20 wait for the delay.
    assert_eq!(acks(&mut raw, &mut buf), vec![17]);
    assert_eq!(
        raw.conn.poll_timeout(),
        Some(raw.now + Duration::from_millis(20))
    );
    raw.advance(Duration::from_millis(19));
    assert!(acks(&mut raw, &mut buf).is_empty());
    raw.advance(Duration::from_millis(1));
    assert_eq!(acks(&mut raw, &mut buf), vec![20]);
}

#[test]
fn a_closing_side_answers_no_ping_but_still_acknowledges() {
    let mut raw = Raw::new(ConnectionConfig::default());
    let now = raw.now;
    raw.conn.close(now, ErrorCode::Disconnect, "bye");
    assert_eq!(raw.drain().len(), 1, "the ERROR");
    let ping = raw.seal(
        TypeFields::Heartbeat(Heartbeat::Ping),
        &7u64.to_be_bytes(),
        SendOptions::default(),
    );
    raw.deliver(ping);
    assert!(raw.drain().is_empty(), "a PONG went out while closing");
    let ack = TypeFields::Ack(tickwire::wire::AckFields {
        ack_id: 0,
        ack_bits: 0,
    });
    let data = raw.seal(ack, &message(2, None, b"late"), reliable());
    raw.deliver(data);
    let out = raw.drain();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1, 10 + 16, "an ACK-only packet");
}

// ---------------------------------------------------------------------------------------
// Handshake floods: raw AUTH datagrams.

fn auth_datagram(key: &EphemeralKey) -> Vec<u8> {
    handshake::client_auth(key.public_bytes(), &[], None)
}

fn count_connected(sim: &Sim) -> usize {
    sim.clients.iter().filter(|(_, c)| c.is_connected()).count()
}

/// Runs the simulation for `d`, feeding `per_ms` attack datagrams each millisecond from
/// `attack(i)`.
fn run_with_flood(
    sim: &mut Sim,
    d: Duration,
    per_ms: usize,
    mut attack: impl FnMut(usize) -> (SocketAddr, Vec<u8>),
) {
    let end = sim.now + d;
    let mut i = 0;
    while sim.now < end {
        for _ in 0..per_ms {
            let (from, mut datagram) = attack(i);
            i += 1;
            let now = sim.now;
            sim.server.handle_datagram(now, from, &mut datagram);
        }
        let limit = sim.now + Duration::from_millis(1);
        while sim.now < limit {
            sim.step_until(Some(limit));
        }
    }
}

#[test]
fn one_address_with_new_keys_gets_one_key_exchange_per_second() {
    // Attack 6: 2,500 AUTHs/s from one address, each with a new key.
    let mut sim = Sim::new(ServerConfig::new(ServerIdentity::generate()));
    let keys: Vec<EphemeralKey> = (0..64).map(|_| EphemeralKey::generate()).collect();
    let attacker = SocketAddr::from(([127, 6, 6, 6], 4444));
    let cfg = sim.client_config();
    sim.add_client(cfg);
    run_with_flood(&mut sim, Duration::from_secs(3), 3, |i| {
        (attacker, auth_datagram(&keys[i % keys.len()]))
    });
    let stats = sim.server.stats();
    assert!(
        stats.key_exchanges <= 3 + 1 + 1,
        "{} key exchanges",
        stats.key_exchanges
    );
    assert!(stats.rekeys_dropped > 7000);
    assert_eq!(
        count_connected(&sim),
        1,
        "a new client connected during the flood"
    );
}

#[test]
fn one_ip_cannot_fill_the_half_open_table() {
    // Attack 7: 2,000 AUTHs/s from 2,048 ports of one IP.
    let mut sim = Sim::new(ServerConfig::new(ServerIdentity::generate()));
    let keys: Vec<EphemeralKey> = (0..64).map(|_| EphemeralKey::generate()).collect();
    for _ in 0..4 {
        let cfg = sim.client_config();
        sim.add_client(cfg);
    }
    run_with_flood(&mut sim, Duration::from_secs(2), 2, |i| {
        let from = SocketAddr::from(([127, 7, 7, 7], 10_000 + (i % 2048) as u16));
        (from, auth_datagram(&keys[i % keys.len()]))
    });
    let stats = sim.server.stats();
    assert!(sim.server.pending_count() <= 8 + 4);
    assert!(stats.handshakes_dropped_ip > 3000);
    assert_eq!(
        count_connected(&sim),
        4,
        "new clients connected during the flood"
    );
}

#[test]
fn one_ip_holds_at_most_its_share_of_connections() {
    // Attack 8: 64 real connections from one IP.
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.retry = tickwire::RetryPolicy::Never;
    let mut sim = Sim::new(config);
    for port in 0..64u16 {
        let cfg = sim.client_config();
        let i = sim.add_client(cfg);
        sim.clients[i].0 = SocketAddr::from(([127, 8, 8, 8], 20_000 + port));
    }
    sim.run_for(Duration::from_secs(3));
    assert_eq!(count_connected(&sim), 16);
    assert!(sim.server.stats().refused_ip_limit >= 48);
    let refused = sim.client_events[63].iter().any(|e| {
        matches!(
            e,
            Event::Disconnected {
                reason: DisconnectReason::HandshakeFailed(ErrorCode::NoSpace),
                ..
            }
        )
    });
    assert!(refused, "the 17th client from the IP was told why");
    // A client from another IP still gets in.
    let cfg = sim.client_config();
    let other = sim.add_client(cfg);
    sim.clients[other].0 = SocketAddr::from(([127, 0, 0, 99], 5000));
    assert!(sim.run_until(Duration::from_secs(3), |s| s.clients[other]
        .1
        .is_connected()));
}

#[test]
fn a_spoofed_auth_flood_costs_no_key_exchange_and_real_clients_get_in() {
    // Attack 9: fresh-key AUTHs from 4,096 addresses, 20,000 per second.
    let mut sim = Sim::new(ServerConfig::new(ServerIdentity::generate()));
    let keys: Vec<EphemeralKey> = (0..256).map(|_| EphemeralKey::generate()).collect();
    let mut started = false;
    let mut rng = Rng(9);
    run_with_flood(&mut sim, Duration::from_millis(500), 20, |i| {
        let n = (rng.next_u64() % 4096) as u32;
        let from = SocketAddr::from(([127, 10, (n >> 8) as u8, n as u8], 30_000));
        (from, auth_datagram(&keys[i % keys.len()]))
    });
    // The flood goes on; clients arrive in the middle of it.
    for _ in 0..4 {
        let cfg = sim.client_config();
        sim.add_client(cfg);
    }
    run_with_flood(&mut sim, Duration::from_secs(2), 20, |i| {
        started = true;
        let n = (rng.next_u64() % 4096) as u32;
        let from = SocketAddr::from(([127, 10, (n >> 8) as u8, n as u8], 30_000));
        (from, auth_datagram(&keys[i % keys.len()]))
    });
    assert!(started);
    let stats = sim.server.stats();
    assert_eq!(
        count_connected(&sim),
        4,
        "real clients connected during the flood"
    );
    assert!(stats.retries_sent > 40_000);
    // Key exchanges: those before the AUTH rate tripped the retries, and the real clients.
    assert!(
        stats.key_exchanges <= 64 + 1 + 4,
        "{} key exchanges for {} AUTHs",
        stats.key_exchanges,
        stats.retries_sent
    );
}

#[test]
fn the_retry_is_smaller_than_the_auth_and_forged_cookies_are_refused() {
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.retry = tickwire::RetryPolicy::Always;
    let mut sim = Sim::new(config);
    let key = EphemeralKey::generate();
    let from = addr(6100);
    let now = sim.now;
    let mut auth = auth_datagram(&key);
    let auth_len = auth.len();
    sim.server.handle_datagram(now, from, &mut auth);
    let mut buf = [0u8; 1500];
    let t = sim.server.poll_transmit(now, &mut buf).unwrap();
    assert_eq!(t.destination, from);
    assert!(
        t.len <= auth_len,
        "retry {} octets for an AUTH of {auth_len}",
        t.len
    );
    assert_eq!(sim.server.stats().key_exchanges, 0);
    let packet = tickwire::wire::Packet::parse(&buf[..t.len]).unwrap();
    let tickwire::wire::Body::Auth(a) = packet.body else {
        panic!("a retry is an AUTH")
    };
    let cookie = handshake::parse_retry(&a).unwrap();
    // The cookie from another address, or with another key, or altered, buys nothing.
    let other_key = EphemeralKey::generate();
    let mut forged = cookie;
    forged[19] ^= 1;
    for (src, k, c) in [
        (addr(6101), &key, &cookie),
        (from, &other_key, &cookie),
        (from, &key, &forged),
    ] {
        let mut d = handshake::client_auth_with_cookie(k.public_bytes(), &[], None, Some(c));
        sim.server.handle_datagram(now, src, &mut d);
        while sim.server.poll_transmit(now, &mut buf).is_some() {}
    }
    assert_eq!(sim.server.stats().key_exchanges, 0);
    assert_eq!(sim.server.stats().bad_cookies, 3);
    // The genuine one gets the key exchange.
    let mut d = handshake::client_auth_with_cookie(key.public_bytes(), &[], None, Some(&cookie));
    sim.server.handle_datagram(now, from, &mut d);
    assert_eq!(sim.server.stats().key_exchanges, 1);
    // And a real client follows the retry by itself.
    let cfg = sim.client_config();
    sim.add_client(cfg);
    sim.connect_all();
}

#[test]
fn concurrent_handshakes_do_not_exceed_max_clients() {
    // The limit is checked when an AUTH arrives and again when its handshake finishes.
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.max_clients = 2;
    let mut sim = Sim::new(config);
    for _ in 0..5 {
        let cfg = sim.client_config();
        sim.add_client(cfg);
    }
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.server.client_count(), 2);
    assert_eq!(count_connected(&sim), 2);
    let refused = (0..5)
        .filter(|&i| {
            sim.client_events[i].iter().any(|e| {
                matches!(
                    e,
                    Event::Disconnected {
                        reason: DisconnectReason::HandshakeFailed(ErrorCode::NoSpace),
                        ..
                    }
                )
            })
        })
        .count();
    assert_eq!(refused, 3);
}

#[test]
fn a_client_with_other_channels_is_refused_at_the_handshake() {
    // A client configured with 2 channels meets a server with the default 4: it is told at
    // once, instead of being closed with a protocol violation at the first message.
    let mut sim = Sim::new(ServerConfig::new(ServerIdentity::generate()));
    let mut cfg = sim.client_config();
    cfg.connection.channels.truncate(2);
    sim.add_client(cfg);
    sim.run_for(Duration::from_secs(1));
    assert!(!sim.clients[0].1.is_connected());
    assert!(sim.client_events[0].iter().any(|e| matches!(
        e,
        Event::Disconnected {
            reason: DisconnectReason::HandshakeFailed(ErrorCode::CertificateInvalid),
            ..
        }
    )));
    assert_eq!(sim.server.stats().refused_channels, 1);
    assert_eq!(sim.server.client_count(), 0);
    // The same channels connect.
    let cfg = sim.client_config();
    sim.add_client(cfg);
    assert!(sim.run_until(Duration::from_secs(1), |s| s.clients[1].1.is_connected()));
}

#[test]
fn an_auth_key_that_is_not_a_compressed_point_is_refused_and_keeps_no_state() {
    // p256 alone takes 05 || x (the "compact" form) as a point: the protocol does not.
    let key = EphemeralKey::generate();
    let good = *key.public_bytes();
    let mut compact = good;
    compact[0] = 0x05;
    let mut prefix_04 = good;
    prefix_04[0] = 0x04;
    let mut zero = good;
    zero[0] = 0x00;
    // 02 || x for an x that is no point's x-coordinate.
    let off_curve = (0u8..=255)
        .map(|b| {
            let mut k = good;
            k[32] = b;
            k
        })
        .find(|k| {
            tickwire::crypto::ServerKey::from_bytes(k)
                == Err(tickwire::crypto::KeyError::NotOnCurve)
        })
        .expect("half of all x are not on the curve");
    let mut cases: Vec<Vec<u8>> = [compact, prefix_04, zero, off_curve]
        .iter()
        .map(|k| handshake::client_auth(k, &[], None))
        .collect();
    // 65 octets starting 04, the length of an uncompressed point.
    let mut uncompressed = vec![0x04];
    uncompressed.extend_from_slice(&[0x11; 64]);
    cases.push(handshake::auth_datagram(&uncompressed, &[0u8; 100]));

    let mut sim = Sim::new(ServerConfig::new(ServerIdentity::generate()));
    let mut buf = [0u8; 1500];
    for (i, mut auth) in cases.into_iter().enumerate() {
        let from = addr(6200 + i as u16);
        let now = sim.now;
        assert!(auth.len() >= 160);
        sim.server.handle_datagram(now, from, &mut auth);
        let t = sim.server.poll_transmit(now, &mut buf).expect("an answer");
        assert_eq!(t.destination, from);
        let packet = tickwire::wire::Packet::parse(&buf[..t.len]).unwrap();
        let tickwire::wire::Body::Data {
            fields: TypeFields::Error(code),
            data,
        } = packet.body
        else {
            panic!("case {i}: not an ERROR: {packet:?}")
        };
        assert_eq!(code, ErrorCode::CertificateInvalid, "case {i}");
        assert_eq!(data, b"client key invalid", "case {i}");
        assert!(sim.server.poll_transmit(now, &mut buf).is_none());
        let stats = sim.server.stats();
        assert_eq!(stats.refused_client_key, i as u64 + 1);
        assert_eq!(stats.key_exchanges, 0);
        assert_eq!(sim.server.pending_count(), 0);
        assert_eq!(sim.server.client_count(), 0);
        assert_eq!(sim.server.memory_charged(), 0);
    }
    // The same key with its own prefix is accepted.
    let mut auth = handshake::client_auth(&good, &[], None);
    let now = sim.now;
    sim.server.handle_datagram(now, addr(6300), &mut auth);
    assert_eq!(sim.server.stats().key_exchanges, 1);
    assert_eq!(sim.server.pending_count(), 1);
}

// ---------------------------------------------------------------------------------------
// Found in review: the budget under conflicting fragments, empty messages and two ordered
// channels, and forged retries.

fn forged_frag(pn: u32, id: u8, count: u8, data_len: usize) -> Vec<u8> {
    let mut d = vec![0x00, 0x18, (pn >> 8) as u8, pn as u8, id, count];
    d.extend_from_slice(&((pn >> 16) as u16).to_be_bytes());
    d.extend_from_slice(&vec![0xAB; data_len]);
    d
}

/// (Found in review) a spoofing stranger reserves reassembly memory far past `receive_buffer_bytes`: the
/// budget is checked only when no slot holds the packet number, but a conflicting fragment
/// (another Fragment Number) replaces a one-fragment slot with a bigger reservation unchecked.
#[test]
fn conflicting_fragment_counts_stay_within_the_receive_budget() {
    let config = ConnectionConfig {
        receive_buffer_bytes: 64 << 10,
        ..ConnectionConfig::default()
    };
    let limit = config.receive_buffer_bytes;
    let mut raw = Raw::new(config);
    for pn in 1..=32u32 {
        raw.deliver(vec![forged_frag(pn, 1, 2, 5)]);
    }
    let after_small = raw.conn.stats().receive_buffered_bytes;
    for pn in 1..=32u32 {
        raw.deliver(vec![forged_frag(pn, 254, 255, 5)]);
    }
    let s = raw.conn.stats();
    eprintln!(
        "after count-2 fragments: {after_small}; after count-255 replacements: reserved {} (limit {limit}), memory {}",
        s.receive_buffered_bytes, s.memory_bytes
    );
    assert!(
        s.receive_buffered_bytes as usize <= 2 * limit,
        "{} octets reserved for a {} budget",
        s.receive_buffered_bytes,
        limit
    );
}

/// (Found in review) one small compressed packet of empty messages is admitted on the fast path
/// (plaintext + 64) but charged 64 octets per message: the receive side goes far past twice
/// its limit, and one ~100-octet datagram makes 22,000 events.
#[test]
fn many_empty_messages_in_one_packet_stay_within_the_receive_budget() {
    let config = ConnectionConfig {
        receive_buffer_bytes: 64 << 10,
        ..ConnectionConfig::default()
    };
    let limit = config.receive_buffer_bytes;
    let mut raw = Raw::new(config);
    let mut plain = Vec::new();
    for _ in 0..22_000 {
        frame::put_message(&mut plain, 2, None, &[]);
    }
    let opts = SendOptions {
        reliable: true,
        compress: true,
        ..SendOptions::default()
    };
    let d = raw.seal(TypeFields::Default, &plain, opts);
    let wire: usize = d.iter().map(Vec::len).sum();
    raw.deliver(d);
    let s = raw.conn.stats();
    let n = raw
        .events
        .iter()
        .filter(|e| matches!(e, Event::Message { .. }))
        .count();
    eprintln!(
        "{wire} octets on the wire -> {n} events, {} octets charged (limit {limit})",
        s.receive_buffered_bytes
    );
    assert!(
        s.receive_buffered_bytes as usize <= 2 * limit,
        "{} octets charged for a {} budget",
        s.receive_buffered_bytes,
        limit
    );
}

/// (Found in review) two reliable-ordered channels deadlock under the receive budget although the
/// application polls everything: the packet with channel B's next message is refused (no
/// held messages on B, so it is no gap filler), and channel A's gap filler is refused
/// because it also carries one of B's later messages (held + s.held > limit).
#[test]
fn two_ordered_channels_do_not_deadlock_under_the_receive_budget() {
    let mut config = ConnectionConfig::default();
    config
        .channels
        .push(ChannelConfig::new(DeliveryMode::ReliableOrdered)); // channel 4
    config.receive_buffer_bytes = 256 << 10;
    let mut raw = Raw::new(config);
    // pn 1: B seq 0. pn 2: A seq 0 + B seq 1. Both lost at first.
    let b0 = raw.seal(
        TypeFields::Default,
        &message(4, Some(0), &[1; 10]),
        reliable(),
    );
    let mut p = message(3, Some(0), &[2; 10]);
    p.extend_from_slice(&message(4, Some(1), &[3; 10]));
    let gap = raw.seal(TypeFields::Default, &p, reliable());
    // A seq 1.. arrive and are held: large ones, then 1-octet ones to top the budget up.
    let mut seq = 1u16;
    for len in [60_000usize, 1] {
        for _ in 0..400 {
            if seq >= 1000 {
                break;
            }
            let before = raw.conn.stats().dropped_over_budget;
            let d = raw.seal(
                TypeFields::Default,
                &message(3, Some(seq), &vec![4; len]),
                reliable(),
            );
            raw.deliver(d);
            raw.drain();
            if raw.conn.stats().dropped_over_budget > before {
                break;
            }
            seq += 1;
        }
    }
    eprintln!(
        "held {} of {}",
        raw.conn.stats().receive_buffered_bytes,
        256 << 10
    );
    // The sender resends pn 1 and pn 2 for ten seconds; the application polls everything.
    let mut delivered = Vec::new();
    for _ in 0..100 {
        raw.deliver(b0.clone());
        raw.deliver(gap.clone());
        // The peer's heartbeats (no messages) keep the connection alive.
        let ping = raw.seal(
            TypeFields::Heartbeat(tickwire::wire::Heartbeat::Ping),
            &[0; 8],
            SendOptions::default(),
        );
        raw.deliver(ping);
        raw.drain();
        while let Some(e) = raw.events.pop_front() {
            if let Event::Message { channel, data, .. } = e {
                delivered.push(channel.0);
                raw.conn.release_delivered(data.len());
            }
        }
        raw.advance(Duration::from_millis(100));
    }
    let s = raw.conn.stats();
    eprintln!(
        "delivered {} messages, dropped_over_budget {}",
        delivered.len(),
        s.dropped_over_budget
    );
    assert!(raw.conn.is_connected());
    assert!(
        !delivered.is_empty(),
        "deadlock: neither gap is ever filled"
    );
}

/// (Found in review) a spoofing stranger who knows a client's address exhausts the client's MAX_RETRIES
/// with forged retries (unauthenticated); under retry the client then never connects.
#[test]
fn forged_retries_do_not_lock_a_client_out() {
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.retry = tickwire::RetryPolicy::Always;
    let mut sim = Sim::new(config);
    let cfg = sim.client_config();
    sim.add_client(cfg);
    let server = sim.server_addr;
    let now = sim.now;
    for k in 0..4u8 {
        let mut buf = [0u8; 64];
        let n = handshake::write_retry(&[k; handshake::COOKIE_LEN], &mut buf);
        sim.clients[0].1.handle_datagram(now, server, &mut buf[..n]);
    }
    let ok = sim.run_until(Duration::from_secs(5), |s| s.clients[0].1.is_connected());
    assert!(
        ok,
        "the client never connected after 4 forged 28-octet retries"
    );
}

// ---------------------------------------------------------------------------------------
// Message parts (messages too large for one packet) from a cheater.

fn part(channel: u8, seq: u16, total: u32, offset: u32, data: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    frame::put_part(&mut plain, channel, seq, total, offset, data);
    plain
}

fn large_config() -> ConnectionConfig {
    ConnectionConfig {
        max_message_size: tickwire::MAX_LARGE_MESSAGE_SIZE,
        send_queue_bytes: tickwire::MAX_LARGE_MESSAGE_SIZE,
        ..ConnectionConfig::default()
    }
}

fn violated(raw: &Raw) -> bool {
    raw.events.iter().any(|e| {
        matches!(
            e,
            Event::Disconnected {
                reason: DisconnectReason::ProtocolViolation(ErrorCode::Packet),
                ..
            }
        )
    })
}

#[test]
fn forged_message_parts_are_protocol_violations() {
    let big = 1u32 << 20;
    let cases: Vec<(&str, ConnectionConfig, Vec<Vec<u8>>)> = vec![
        (
            "a part on a reliable-unordered channel",
            large_config(),
            vec![part(2, 0, big, 0, &[1; 100])],
        ),
        (
            "a part of a message that fits one packet",
            large_config(),
            vec![part(4, 0, tickwire::MAX_MESSAGE_SIZE as u32, 0, &[1; 100])],
        ),
        (
            "a part of a message over max_message_size",
            ConnectionConfig::default(),
            vec![part(4, 0, big, 0, &[1; 100])],
        ),
        (
            "a part past its message's end",
            large_config(),
            vec![part(4, 0, big, big - 50, &[1; 100])],
        ),
        (
            "an empty part",
            large_config(),
            vec![part(4, 0, big, 0, &[])],
        ),
        (
            "a first part that does not start at 0",
            large_config(),
            vec![part(4, 0, big, 100, &[1; 100])],
        ),
        (
            "a part that skips octets",
            large_config(),
            vec![
                part(4, 0, big, 0, &[1; 100]),
                part(4, 1, big, 200, &[1; 100]),
            ],
        ),
        (
            "a part whose total changed",
            large_config(),
            vec![
                part(4, 0, big, 0, &[1; 100]),
                part(4, 1, big + 1, 100, &[1; 100]),
            ],
        ),
        (
            "a whole message between two parts",
            large_config(),
            vec![part(4, 0, big, 0, &[1; 100]), message(4, Some(1), b"x")],
        ),
        (
            "a new message while one is assembled",
            large_config(),
            vec![part(4, 0, big, 0, &[1; 100]), part(4, 1, big, 0, &[1; 100])],
        ),
    ];
    for (what, config, plains) in cases {
        let mut raw = Raw::new(config);
        for plain in plains {
            let d = raw.seal(TypeFields::Default, &plain, reliable());
            raw.deliver(d);
        }
        assert!(violated(&raw), "{what}: no protocol violation");
        assert!(
            !raw.events
                .iter()
                .any(|e| matches!(e, Event::Message { .. })),
            "{what}: delivered"
        );
    }
}

#[test]
fn a_first_part_reserves_its_message_once_within_max_message_size() {
    let mut raw = Raw::new(large_config());
    let total = tickwire::MAX_LARGE_MESSAGE_SIZE as u32;
    let d = raw.seal(
        TypeFields::Default,
        &part(4, 0, total, 0, &[1; 100]),
        reliable(),
    );
    raw.deliver(d);
    // The same part again (a replay of the sequence number) reserves nothing more, and a part
    // held behind a gap is charged as a held message.
    let d = raw.seal(
        TypeFields::Default,
        &part(4, 0, total, 0, &[1; 100]),
        reliable(),
    );
    raw.deliver(d);
    let d = raw.seal(
        TypeFields::Default,
        &part(4, 5, total, 100, &[1; 100]),
        reliable(),
    );
    raw.deliver(d);
    assert!(!violated(&raw));
    let s = raw.conn.stats();
    assert_eq!(s.assembling_bytes, u64::from(total) + 64);
    assert!(s.receive_buffered_bytes <= u64::from(total) + 64 + 100 + 64);
    assert!(
        s.memory_bytes < u64::from(total) + (64 << 10),
        "{}",
        s.memory_bytes
    );
}

/// A cheater opens a 16 MiB message on each reliable-ordered channel with a first part of a
/// few octets and never finishes them. Its declared totals are reserved (`assembling_bytes`),
/// but nothing is allocated or charged to the server's `memory_budget` beyond what arrived:
/// otherwise 16 connections (one IP's share) would charge the default 512 MiB with 32 tiny
/// packets and lock every new client out with ERROR 1.1.
#[test]
fn tiny_first_parts_allocate_and_charge_the_server_only_what_arrived() {
    let mut raw = Raw::new(large_config());
    let total = tickwire::MAX_LARGE_MESSAGE_SIZE as u32;
    for (seq, channel) in [(0u16, 3u8), (0, 4)] {
        let d = raw.seal(
            TypeFields::Default,
            &part(channel, seq, total, 0, &[1; 10]),
            reliable(),
        );
        raw.deliver(d);
    }
    assert!(!violated(&raw));
    let s = raw.conn.stats();
    // The reservation is still reported.
    assert_eq!(s.assembling_bytes, 2 * (u64::from(total) + 64));
    assert!(s.memory_bytes < 1 << 20, "allocated {}", s.memory_bytes);
    assert!(
        raw.conn.budget_used() < 1 << 20,
        "charged to the server {}",
        raw.conn.budget_used()
    );
    // The messages still assemble whole, each part growing its buffer (never past the total).
    let mut offset = 10u32;
    let mut seq = 1u16;
    while offset < total {
        let n = (total - offset).min(frame::MAX_PART as u32);
        let chunk: Vec<u8> = (offset..offset + n).map(|i| i as u8).collect();
        let d = raw.seal(
            TypeFields::Default,
            &part(3, seq, total, offset, &chunk),
            reliable(),
        );
        raw.deliver(d);
        let s = raw.conn.stats();
        assert!(
            s.memory_bytes < 2 * u64::from(offset + n) + (4 << 20),
            "{} for {} assembled",
            s.memory_bytes,
            offset + n
        );
        offset += n;
        seq += 1;
        while let Some(Event::Message { data, .. }) = raw.events.pop_front() {
            assert_eq!(data.len(), total as usize);
            assert!(data[10..]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i + 10) as u8));
            raw.conn.release_delivered(data.len());
        }
    }
    assert!(!violated(&raw));
    assert_eq!(raw.conn.stats().large_messages_received, 1);
}

/// Seeded random frames from a cheater (and forged packets from a stranger) against a
/// connection that takes messages in parts: parts with any channel, sequence number, total,
/// offset and length (edges: 0, the one-packet limit, max_message_size, u32::MAX, offsets
/// near the end), whole messages between them, packet numbers near u32::MAX and jumps past
/// the replay window. Nothing panics; the receive side stays within its documented bound
/// (3 × receive_buffer_bytes + ordered channels × (max_message_size + 64)) in what it
/// allocates and charges; a broken rule closes with 3.0 or 3.4; forged packets change nothing.
#[test]
fn random_parts_and_packet_numbers_never_panic_or_exceed_the_bound() {
    const MAX: usize = 1 << 20;
    let config = ConnectionConfig {
        max_message_size: MAX,
        send_queue_bytes: MAX,
        ..ConnectionConfig::default()
    };
    let bound = 3 * config.receive_buffer_bytes + 2 * (MAX + 64) + (1 << 20);
    let mut rng = Rng(0x7157_c0de);
    let pick = |rng: &mut Rng, edges: &[u32]| -> u32 {
        if rng.chance(0.7) {
            edges[(rng.next_u64() % edges.len() as u64) as usize]
        } else {
            rng.next_u64() as u32
        }
    };
    let one = tickwire::MAX_MESSAGE_SIZE as u32;
    // Messages delivered, of them large, packets taken, rounds that ended in a violation.
    let mut tally = (0usize, 0usize, 0u64, 0usize);
    for round in 0..60 {
        let mut raw = Raw::new(config.clone());
        if round % 3 == 1 {
            raw.next_pn = u32::MAX - 40;
        }
        let mut next_seq = [0u16; 8];
        let mut assembled = [0u32; 8];
        let totals = [0, 1, one, one + 1, MAX as u32, MAX as u32 + 1, u32::MAX];
        // Every other round mostly keeps the rules (so messages assemble and arrive), breaking
        // one now and then.
        let careful = round % 2 == 0;
        let mut total_of = [0u32; 8];
        for _ in 0..80 {
            if raw.next_pn == u32::MAX {
                break;
            }
            let mut plain = Vec::new();
            for _ in 0..1 + rng.next_u64() % 3 {
                if careful && !rng.chance(0.002) {
                    let channel = 3 + (rng.next_u64() % 2) as u8;
                    let c = usize::from(channel);
                    if assembled[c] >= total_of[c] {
                        assembled[c] = 0;
                        total_of[c] = one + 1 + (rng.next_u64() % 300_000) as u32;
                    }
                    let left = total_of[c] - assembled[c];
                    let len = left.min(1 + (rng.next_u64() % 200_000) as u32);
                    let seq = next_seq[c];
                    let mut p = Vec::new();
                    frame::put_part(
                        &mut p,
                        channel,
                        seq,
                        total_of[c],
                        assembled[c],
                        &vec![7; len as usize],
                    );
                    if p.len() > 900 {
                        if !plain.is_empty() {
                            break;
                        }
                        plain = p;
                        next_seq[c] = seq.wrapping_add(1);
                        assembled[c] += len;
                        break;
                    }
                    plain.extend_from_slice(&p);
                    next_seq[c] = seq.wrapping_add(1);
                    assembled[c] += len;
                    continue;
                }
                let channel = (rng.next_u64() % 6) as u8;
                let c = usize::from(channel);
                let seq = if rng.chance(0.8) {
                    next_seq[c]
                } else {
                    next_seq[c].wrapping_add(pick(&mut rng, &[1, 2, 1023, 1024, 0x8000]) as u16)
                };
                if rng.chance(0.8) {
                    let total = pick(&mut rng, &totals);
                    let len = if rng.chance(0.1) {
                        0
                    } else {
                        (rng.next_u64() % 600) as usize + 1
                    };
                    let offset = pick(
                        &mut rng,
                        &[
                            0,
                            assembled[c],
                            total.wrapping_sub(len as u32),
                            u32::MAX - 3,
                            u32::MAX,
                        ],
                    );
                    frame::put_part(&mut plain, channel, seq, total, offset, &vec![7; len]);
                    if seq == next_seq[c] {
                        next_seq[c] = seq.wrapping_add(1);
                        assembled[c] = offset.wrapping_add(len as u32);
                    }
                } else {
                    let len = (rng.next_u64() % 300) as usize;
                    let s = (channel % 2 == 1 || channel >= 3).then_some(seq);
                    frame::put_message(&mut plain, channel, s, &vec![9; len]);
                    if s == Some(next_seq[c]) {
                        next_seq[c] = seq.wrapping_add(1);
                    }
                }
            }
            if rng.chance(0.1) {
                // (Fragments more than 4,096 ahead are refused: a careful round's large parts
                // would never arrive.)
                let jumps: &[u32] = if careful {
                    &[1, 100]
                } else {
                    &[1, 4096, 4097, 1 << 20]
                };
                let jump = pick(&mut rng, jumps);
                raw.next_pn = raw.next_pn.saturating_add(jump).min(u32::MAX - 1);
            }
            let before = raw.conn.stats();
            if rng.chance(0.2) {
                // A stranger's forgery: the same frames under another key.
                let real = std::mem::replace(&mut raw.peer_key, PacketKey::new(&[9; 16], &[9; 12]));
                let pn = raw.next_pn;
                let d = raw.seal(TypeFields::Default, &plain, reliable());
                let skip = if careful { 50 } else { 5000 };
                raw.next_pn = pn
                    .saturating_add(rng.next_u64() as u32 % skip)
                    .min(u32::MAX - 1);
                raw.peer_key = real;
                raw.deliver(d);
                let after = raw.conn.stats();
                assert_eq!(
                    after.packets_received, before.packets_received,
                    "round {round}"
                );
                assert_eq!(after.incoming_loss, before.incoming_loss, "round {round}");
                assert_eq!(after.messages_received, before.messages_received);
                continue;
            }
            let d = raw.seal(TypeFields::Default, &plain, reliable());
            raw.deliver(d);
            raw.advance(Duration::from_millis(rng.next_u64() % 20));
            raw.drain();
            let s = raw.conn.stats();
            assert!(
                (s.memory_bytes as usize) < bound && raw.conn.budget_used() < bound,
                "round {round}: memory {} charged {}",
                s.memory_bytes,
                raw.conn.budget_used()
            );
            assert!(
                (0.0..=1.0).contains(&s.incoming_loss),
                "{}",
                s.incoming_loss
            );
            // The application takes what was delivered.
            while let Some(e) = raw.events.pop_front() {
                match e {
                    Event::Message { data, .. } => {
                        tally.0 += 1;
                        tally.1 += usize::from(data.len() > tickwire::MAX_MESSAGE_SIZE);
                        raw.conn.release_delivered(data.len())
                    }
                    Event::Disconnected { reason, .. } => assert!(
                        matches!(
                            reason,
                            DisconnectReason::ProtocolViolation(
                                ErrorCode::Packet | ErrorCode::SequenceId
                            )
                        ),
                        "round {round}: {reason:?}"
                    ),
                    _ => {}
                }
            }
        }
        tally.2 += raw.conn.stats().packets_received;
        tally.3 += usize::from(!raw.conn.is_connected());
    }
    eprintln!(
        "delivered {}, large {}, packets {}, closed {}",
        tally.0, tally.1, tally.2, tally.3
    );
}

/// What the application saw, in order: `msg N` for a message of N octets, `end` for the
/// connection's `Disconnected`.
fn seen(raw: &Raw) -> Vec<String> {
    raw.events
        .iter()
        .filter_map(|e| match e {
            Event::Message { data, .. } => Some(format!("msg {}", data.len())),
            Event::Disconnected { .. } => Some("end".to_string()),
            _ => None,
        })
        .collect()
}

/// A cheater breaks the protocol (or sends its ERROR) and goes on sending during the close:
/// its messages were still delivered, after the `Disconnected` event that told the
/// application the client was gone (a game that dropped the player's state then meets
/// messages of a client it no longer knows), and a first part still reserved 16 MiB. Once
/// the end is reported, nothing more of the peer's is delivered or assembled; acks still
/// work, so the close completes.
#[test]
fn nothing_is_delivered_after_the_end_is_reported() {
    let total = tickwire::MAX_LARGE_MESSAGE_SIZE as u32;
    // A protocol violation (a message on a channel this side does not have).
    let mut raw = Raw::new(large_config());
    let d = raw.seal(
        TypeFields::Default,
        &message(3, Some(0), b"before"),
        reliable(),
    );
    raw.deliver(d);
    let d = raw.seal(TypeFields::Default, &message(9, None, b"bad"), reliable());
    raw.deliver(d);
    assert!(violated(&raw));
    let d = raw.seal(
        TypeFields::Default,
        &message(3, Some(1), b"after"),
        reliable(),
    );
    raw.deliver(d);
    let d = raw.seal(
        TypeFields::Default,
        &part(4, 0, total, 0, &[1; 1000]),
        reliable(),
    );
    raw.deliver(d);
    assert_eq!(seen(&raw), ["msg 6", "end"]);
    assert_eq!(raw.conn.stats().assembling_bytes, 0);
    // The peer's own ERROR, then more messages.
    let mut raw = Raw::new(large_config());
    let d = raw.seal(
        TypeFields::Error(ErrorCode::Disconnect),
        b"bye",
        SendOptions::default(),
    );
    raw.deliver(d);
    let d = raw.seal(
        TypeFields::Default,
        &message(3, Some(0), b"after"),
        reliable(),
    );
    raw.deliver(d);
    let d = raw.seal(
        TypeFields::Default,
        &message(0, None, b"after"),
        SendOptions::default(),
    );
    raw.deliver(d);
    assert_eq!(seen(&raw), ["end"]);
}

/// A cheater starts a large message (and leaves messages held behind a gap), then breaks the
/// protocol: what the receive side held for it stayed allocated and charged for the rest of
/// the close, though none of it will ever be delivered. It is dropped when the end is
/// reported.
#[test]
fn a_violation_releases_what_was_held_or_assembled_for_the_peer() {
    let total = tickwire::MAX_LARGE_MESSAGE_SIZE as u32;
    let mut raw = Raw::new(large_config());
    let d = raw.seal(
        TypeFields::Default,
        &part(4, 0, total, 0, &[1; 200_000]),
        reliable(),
    );
    raw.deliver(d);
    let d = raw.seal(
        TypeFields::Default,
        &message(3, Some(5), &[2; 500]),
        reliable(),
    );
    raw.deliver(d);
    let before = raw.conn.stats();
    assert_eq!(before.assembling_bytes, u64::from(total) + 64);
    assert!(before.receive_buffered_bytes > u64::from(total) + 500);
    let d = raw.seal(TypeFields::Default, &message(9, None, b"bad"), reliable());
    raw.deliver(d);
    assert!(violated(&raw));
    let s = raw.conn.stats();
    assert_eq!(s.assembling_bytes, 0);
    assert_eq!(s.receive_buffered_bytes, 0);
    // (The 200,000 octets assembled are freed; reassembly keeps its one reusable buffer.)
    assert!(
        s.memory_bytes + 200_000 <= before.memory_bytes,
        "{} then {}",
        before.memory_bytes,
        s.memory_bytes
    );
    assert!(
        raw.conn.budget_used() < 10_000,
        "{}",
        raw.conn.budget_used()
    );
}
