//! Unreliable traffic offered faster than the path carries, in simulated time: congestion
//! control must bring the sending rate down to what the bottleneck (a rate limit with a small
//! queue, like a receiver's socket buffer) lets through, so that what goes on the wire
//! arrives instead of being dropped at the queue. Deterministic (seeded links, virtual clock).

use std::time::Duration;

use netsim::model::LinkConfig;
use netsim::sim::Simulation;
use tickwire::{ChannelId, SendError, ServerConfig, ServerIdentity};

/// Floods 1000-octet unreliable messages (two datagrams each) over a `mbit` link with a
/// `queue`-octet queue for 5 s. Returns (messages the client put on the wire, messages the
/// server delivered, octets per second delivered in messages, and after the first second
/// (once the first loss ended slow start) messages `send` accepted and of those dropped
/// unsent).
fn flood(mbit: u64, queue: usize, seed: u64) -> (u64, u64, f64, (u64, u64)) {
    let link = LinkConfig::perfect()
        .with_delay(Duration::from_millis(10))
        .with_rate(mbit * 1_000_000)
        .with_queue_bytes(queue);
    let mut sim = Simulation::new(ServerConfig::new(ServerIdentity::generate()), 1, link, seed);
    sim.run_until_connected(Duration::from_secs(30)).unwrap();
    let id = sim.server().clients()[0].id;
    let secs = 5;
    let mut delivered = 0u64;
    let mut at_1s = (0, 0);
    // Every millisecond the game offers 20 messages: 160 Mbit/s, far over any link here.
    for ms in 0..secs * 1000 {
        if ms == 1000 {
            let ch = sim.client(0).stats().channels[0];
            at_1s = (ch.messages_sent, ch.dropped_unsent);
        }
        let now = sim.now();
        for _ in 0..20 {
            // Past what the path sends within `unreliable_deadline`, `send` refuses.
            match sim
                .client_mut(0)
                .send(now, ChannelId::UNRELIABLE, &[7; 1000])
            {
                Ok(()) | Err(SendError::QueueFull) => {}
                Err(e) => panic!("send: {e}"),
            }
        }
        sim.run_for(Duration::from_millis(1)).unwrap();
        delivered += sim.take_server_messages().len() as u64 * 1000;
    }
    // Messages that went on the wire: accepted by `send`, neither dropped unsent nor queued.
    let ch = sim.client(0).stats().channels[0];
    let sent = ch.messages_sent - ch.dropped_unsent - ch.queued_messages;
    let received = sim.server().client_stats(id).unwrap().channels[0].messages_received;
    let steady = (ch.messages_sent - at_1s.0, ch.dropped_unsent - at_1s.1);
    (sent, received, delivered as f64 / secs as f64, steady)
}

#[test]
fn unreliable_flood_converges_on_a_small_bottleneck_queue() {
    for (mbit, queue, seed) in [(4, 64 * 1024, 1), (20, 208 * 1024, 2), (20, 32 * 1024, 3)] {
        let (sent, received, rate, (accepted, dropped)) = flood(mbit, queue, seed);
        let arrived = received as f64 / sent as f64;
        let link = (mbit * 1_000_000 / 8) as f64;
        println!(
            "{mbit} Mbit/s, {} KiB queue: {sent} messages sent, {:.1}% arrived, {:.0}% of the \
             link carried messages; after 1 s, {dropped} of {accepted} accepted dropped unsent",
            queue / 1024,
            arrived * 100.0,
            rate / link * 100.0
        );
        // What `send` accepts goes out: the channel holds what the path sends in time (the
        // slow start before the first loss may accept what the path turns out not to carry).
        assert!(
            dropped * 100 <= accepted,
            "{mbit} Mbit/s: {dropped} of {accepted} accepted messages dropped unsent"
        );
        assert!(
            arrived >= 0.9,
            "{mbit} Mbit/s: {:.1}% arrived",
            arrived * 100.0
        );
        assert!(rate >= 0.6 * link, "{mbit} Mbit/s: {rate:.0} B/s delivered");
    }
}
