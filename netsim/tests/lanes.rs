//! Lanes: channel priorities and weights decide what goes out first when the path is the
//! bottleneck. Deterministic (seeded links, virtual clock).

use std::time::Duration;

use netsim::model::LinkConfig;
use netsim::sim::Simulation;
use tickwire::{
    ChannelConfig, ChannelId, ClientConfig, DeliveryMode, ServerConfig, ServerIdentity,
};

/// A simulation of one client over a 2 Mbit/s link with 10 ms delay, both sides with
/// `channels`.
fn sim_with(channels: Vec<ChannelConfig>, seed: u64) -> Simulation {
    let link = LinkConfig::perfect()
        .with_delay(Duration::from_millis(10))
        .with_rate(2_000_000)
        .with_queue_bytes(256 * 1024);
    let mut server_config = ServerConfig::new(ServerIdentity::generate());
    server_config.connection.channels = channels.clone();
    let key = server_config.identity.public_key();
    let mut client_config = ClientConfig::new(key);
    client_config.connection.channels = channels;
    let mut sim = Simulation::empty(server_config, seed);
    sim.add_client(client_config, link.clone(), link);
    sim.run_until_connected(Duration::from_secs(10)).unwrap();
    sim
}

/// Queues 2.4 MB of bulk data on channel 1, then after 0.5 s 100 game messages of 900 octets
/// on channel 0 (0.36 s of the link). Returns the bulk octets delivered between the first and
/// the last game message, and the last game message's delay.
fn game_behind_bulk(bulk_priority: u8, seed: u64) -> (usize, Duration) {
    let ordered = ChannelConfig::new(DeliveryMode::ReliableOrdered);
    let mut sim = sim_with(vec![ordered, ordered.with_priority(bulk_priority)], seed);
    let now = sim.now();
    for i in 0..40u8 {
        sim.client_mut(0)
            .send(now, ChannelId(1), &[i; 60_000])
            .unwrap();
    }
    sim.run_for(Duration::from_millis(500)).unwrap();
    let sent_at = sim.now();
    for _ in 0..100 {
        sim.client_mut(0)
            .send(sent_at, ChannelId(0), &[9; 900])
            .unwrap();
    }
    let (mut game, mut bulk_between) = (0, 0);
    for _ in 0..5000 {
        sim.run_for(Duration::from_millis(1)).unwrap();
        for (_, channel, data) in sim.take_server_messages() {
            if channel == 0 {
                game += 1;
            } else if game > 0 {
                bulk_between += data.len();
            }
        }
        if game == 100 {
            return (bulk_between, sim.now() - sent_at);
        }
    }
    panic!("only {game} game messages arrived");
}

#[test]
fn high_priority_messages_go_before_queued_bulk_data() {
    let (shared, shared_delay) = game_behind_bulk(0, 1);
    let (behind, delay) = game_behind_bulk(1, 1);
    println!(
        "same priority: {shared} bulk octets among the game messages, last after \
         {shared_delay:?}; bulk at priority 1: {behind} octets, last after {delay:?}"
    );
    // At one priority the two share the link; with the bulk lane below, the game messages
    // go first and only bulk fragments already on their way arrive among them.
    assert!(shared >= 60_000, "{shared}");
    assert!(behind < shared, "{behind}");
    assert!(delay < shared_delay, "{delay:?} vs {shared_delay:?}");
}

#[test]
fn weights_share_the_link_within_a_priority() {
    let ordered = ChannelConfig::new(DeliveryMode::ReliableOrdered);
    let mut sim = sim_with(vec![ordered.with_weight(3), ordered.with_weight(1)], 2);
    let now = sim.now();
    for _ in 0..400 {
        sim.client_mut(0)
            .send(now, ChannelId(0), &[1; 900])
            .unwrap();
        sim.client_mut(0)
            .send(now, ChannelId(1), &[2; 900])
            .unwrap();
    }
    // While both are backlogged (400 × 900 octets each is over 1 s of the link apiece).
    let mut got = [0u64; 2];
    for _ in 0..800 {
        sim.run_for(Duration::from_millis(1)).unwrap();
        for (_, channel, _) in sim.take_server_messages() {
            got[usize::from(channel)] += 1;
        }
    }
    let ratio = got[0] as f64 / got[1].max(1) as f64;
    println!(
        "weight 3 : weight 1 delivered {} : {} ({ratio:.2})",
        got[0], got[1]
    );
    assert!(got[0] < 400, "channel 0 was still backlogged");
    assert!((2.4..3.6).contains(&ratio), "ratio {ratio:.2}");
}
