//! Simulated soak tests: many clients, every delivery mode, a bad network, minutes of play,
//! and the invariants a game relies on. Each run prints its seed on failure; the same seed
//! replays it exactly.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use netsim::model::LinkConfig;
use netsim::sim::Simulation;
use tickwire::{ChannelId, ClientConfig, ClientId, Event, SendError, ServerConfig, ServerIdentity};

const CHANNELS: [u8; 4] = [0, 1, 2, 3];

/// What one direction of one client's traffic looks like on one channel.
#[derive(Default)]
struct Stream {
    sent: u32,
    received: Vec<u32>,
}

/// Invariants over every stream of a run.
#[derive(Default)]
struct Ledger {
    /// (client index, to_server, channel) -> stream
    streams: HashMap<(usize, bool, u8), Stream>,
}

fn message(client: usize, channel: u8, seq: u32, len: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(len.max(7));
    m.extend_from_slice(&(client as u16).to_be_bytes());
    m.push(channel);
    m.extend_from_slice(&seq.to_be_bytes());
    while m.len() < len {
        m.push((seq as usize + m.len()) as u8);
    }
    m
}

fn parse(data: &[u8]) -> (usize, u8, u32) {
    let client = u16::from_be_bytes([data[0], data[1]]) as usize;
    let seq = u32::from_be_bytes(data[3..7].try_into().unwrap());
    for (i, b) in data.iter().enumerate().skip(7) {
        assert_eq!(*b, (seq as usize + i) as u8, "message bytes intact");
    }
    (client, data[2], seq)
}

impl Ledger {
    fn check(&self, seed: u64, finished: bool) {
        for (&(client, up, channel), s) in &self.streams {
            let ctx = format!("seed {seed}, client {client}, to_server {up}, channel {channel}");
            let mut seen = HashSet::new();
            for &r in &s.received {
                assert!(seen.insert(r), "{ctx}: message {r} delivered twice");
                assert!(r < s.sent, "{ctx}: message {r} never sent");
            }
            match channel {
                1 => assert!(
                    s.received.windows(2).all(|w| w[0] < w[1]),
                    "{ctx}: stale sequenced message delivered"
                ),
                3 => assert!(
                    s.received.iter().enumerate().all(|(i, &r)| r == i as u32),
                    "{ctx}: reliable-ordered out of order"
                ),
                _ => {}
            }
            if finished && (channel == 2 || channel == 3) {
                assert_eq!(
                    s.received.len() as u32,
                    s.sent,
                    "{ctx}: reliable messages lost"
                );
            }
        }
    }
}

/// Runs `clients` clients for `play` of simulated time over `link`, every client and the
/// server sending one message per channel per tick, then lets reliable traffic drain.
fn soak(seed: u64, clients: usize, link: LinkConfig, play: Duration, tick: Duration) -> Simulation {
    let mut server_config = ServerConfig::new(ServerIdentity::generate());
    server_config.max_clients = clients;
    server_config.max_clients_per_ip = clients;
    // At 50% loss each way a handshake round trip succeeds one time in four: give it time.
    server_config.handshake_timeout = Duration::from_secs(60);
    let mut client_config = ClientConfig::new(server_config.identity.public_key());
    client_config.handshake_timeout = Duration::from_secs(60);
    let mut sim = Simulation::empty(server_config, seed);
    for _ in 0..clients {
        sim.add_client(client_config.clone(), link.clone(), link.clone());
    }
    if let Err(e) = sim.run_until_connected(Duration::from_secs(60)) {
        panic!("{e}");
    }
    let ids: Vec<ClientId> = (0..clients).map(|i| sim.client(i).id().unwrap()).collect();
    let index: HashMap<ClientId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut ledger = Ledger::default();
    let end_of_play = sim.now() + play;
    let mut max_memory = 0u64;
    let mut tick_no = 0u64;
    while sim.now() < end_of_play {
        tick_no += 1;
        let now = sim.now();
        for (i, &id) in ids.iter().enumerate() {
            for ch in CHANNELS {
                let len = if tick_no % 50 == 0 && ch >= 2 {
                    3000
                } else {
                    40
                };
                let s = ledger.streams.entry((i, true, ch)).or_default();
                match sim
                    .client_mut(i)
                    .send(now, ChannelId(ch), &message(i, ch, s.sent, len))
                {
                    Ok(()) => s.sent += 1,
                    Err(SendError::QueueFull) => {}
                    Err(e) => panic!("seed {seed}: client {i} send: {e}"),
                }
                let s = ledger.streams.entry((i, false, ch)).or_default();
                match sim
                    .server_mut()
                    .send(now, id, ChannelId(ch), &message(i, ch, s.sent, len))
                {
                    Ok(()) => s.sent += 1,
                    Err(SendError::QueueFull) => {}
                    Err(e) => panic!("seed {seed}: server send to {i}: {e}"),
                }
            }
        }
        if let Err(e) = sim.run_for(tick) {
            panic!("{e}");
        }
        collect(&mut sim, &mut ledger, &index, seed);
        if tick_no % 100 == 0 {
            ledger.check(seed, false);
            for c in sim.server().clients() {
                max_memory = max_memory.max(c.stats.memory_bytes);
            }
        }
    }
    // Stop sending; let every reliable message arrive.
    let drained = sim.run_until(Duration::from_secs(120), "reliable traffic to drain", |s| {
        s.clients()
            .iter()
            .all(|c| c.client.stats().in_flight_bytes == 0)
            && s.server()
                .clients()
                .iter()
                .all(|c| c.stats.in_flight_bytes == 0)
    });
    if let Err(e) = drained {
        panic!("{e}");
    }
    sim.run_for(Duration::from_secs(1)).unwrap();
    collect(&mut sim, &mut ledger, &index, seed);
    ledger.check(seed, true);
    for i in 0..clients {
        assert!(
            sim.client(i).is_connected(),
            "seed {seed}: client {i} lost its connection"
        );
    }
    assert_eq!(sim.server().client_count(), clients, "seed {seed}");
    assert!(
        max_memory < 8 << 20,
        "seed {seed}: a connection held {max_memory} octets"
    );
    sim
}

fn collect(sim: &mut Simulation, ledger: &mut Ledger, index: &HashMap<ClientId, usize>, seed: u64) {
    for (client, channel, data) in sim.take_server_messages() {
        let (c, ch, seq) = parse(&data);
        assert_eq!(
            index[&client], c,
            "seed {seed}: message from the wrong client"
        );
        assert_eq!(ch, channel);
        ledger
            .streams
            .entry((c, true, ch))
            .or_default()
            .received
            .push(seq);
    }
    for i in 0..sim.clients().len() {
        for (channel, data) in sim.take_client_messages(i) {
            let (c, ch, seq) = parse(&data);
            assert_eq!(c, i, "seed {seed}: message for another client");
            assert_eq!(ch, channel);
            ledger
                .streams
                .entry((c, false, ch))
                .or_default()
                .received
                .push(seq);
        }
        let disconnected = sim.clients()[i]
            .events
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. }));
        assert!(!disconnected, "seed {seed}: client {i} disconnected");
    }
}

fn bad_network(loss: f64) -> LinkConfig {
    LinkConfig::perfect()
        .with_loss(loss)
        .with_delay(Duration::from_millis(50))
        .with_jitter(Duration::from_millis(20))
        .with_duplicate(0.01)
        .with_reorder(0.02)
}

/// 32 clients, 10 simulated minutes, 20% loss, 50 ms ± 20 ms, 1% duplication, 2% reordering.
#[test]
fn soak_32_clients_10_minutes_20_percent_loss() {
    let sim = soak(
        0x50A4,
        32,
        bad_network(0.2),
        Duration::from_secs(600),
        Duration::from_millis(100),
    );
    let stats = sim.client(0).stats();
    assert!(stats.packets_resent > 0 && stats.packets_lost > 0);
    println!("client 0 after the soak: {stats:?}");
}

/// The same invariants over seeds and loss rates from 0 to 50%.
#[test]
fn sweep_seeds_and_loss_rates() {
    for loss in [0.0, 0.05, 0.2, 0.35, 0.5] {
        for seed in 1..=3u64 {
            soak(
                seed * 1000 + (loss * 100.0) as u64,
                4,
                bad_network(loss),
                Duration::from_secs(30),
                Duration::from_millis(50),
            );
        }
    }
}
