//! Messages larger than one packet (above `MAX_MESSAGE_SIZE`, up to 16 MiB): carried in parts
//! on a reliable-ordered channel, reassembled with bounded memory, only what was lost resent.
//! Deterministic (seeded links, virtual clock).

use std::time::Duration;

use netsim::model::LinkConfig;
use netsim::sim::Simulation;
use tickwire::{
    ChannelId, ClientConfig, SendError, ServerConfig, ServerIdentity, MAX_LARGE_MESSAGE_SIZE,
    MAX_MESSAGE_SIZE,
};

mod common;
use common::pattern;

/// One client over `link` both ways, both sides allowing 16 MiB messages (the send budget
/// holds one; the receive budget stays at its default 4 MiB).
fn sim(link: LinkConfig, seed: u64) -> Simulation {
    let mut server_config = ServerConfig::new(ServerIdentity::generate());
    server_config.connection.max_message_size = MAX_LARGE_MESSAGE_SIZE;
    server_config.connection.send_queue_bytes = MAX_LARGE_MESSAGE_SIZE + (1 << 20);
    let mut client_config = ClientConfig::new(server_config.identity.public_key());
    client_config.connection = server_config.connection.clone();
    let mut sim = Simulation::empty(server_config, seed);
    sim.add_client(client_config, link.clone(), link);
    sim.run_until_connected(Duration::from_secs(10)).unwrap();
    sim
}

struct Download {
    data: Vec<u8>,
    took: Duration,
    /// The most the client's connection had charged to its receive budget (sampled each 1 ms).
    peak_buffered: u64,
    /// The most memory the client's connection held (by capacity), sampled alike.
    peak_memory: u64,
}

/// The server sends `message` to the client on the bulk lane; the client takes it.
fn download(sim: &mut Simulation, message: &[u8], limit: Duration) -> Download {
    let id = sim.server().clients()[0].id;
    let start = sim.now();
    sim.server_mut()
        .send(start, id, ChannelId::BULK, message)
        .unwrap();
    let mut peak_buffered = 0;
    let mut peak_memory = 0;
    let steps = limit.as_millis() as u32;
    for _ in 0..steps {
        sim.run_for(Duration::from_millis(1)).unwrap();
        let s = sim.client(0).stats();
        peak_buffered = peak_buffered.max(s.receive_buffered_bytes);
        peak_memory = peak_memory.max(s.memory_bytes);
        let got = sim.take_client_messages(0);
        if let Some((channel, data)) = got.into_iter().next() {
            assert_eq!(channel, ChannelId::BULK.0);
            return Download {
                data,
                took: sim.now() - start,
                peak_buffered,
                peak_memory,
            };
        }
    }
    panic!("the message did not arrive within {limit:?}");
}

#[test]
fn a_16_mib_message_round_trips_under_5_percent_loss_with_bounded_memory() {
    let link = LinkConfig::perfect()
        .with_delay(Duration::from_millis(10))
        .with_loss(0.05);
    let mut sim = sim(link, 14);
    let message = pattern(MAX_LARGE_MESSAGE_SIZE, 1);
    let d = download(&mut sim, &message, Duration::from_secs(120));
    assert!(d.data == message, "the message arrived altered");
    let id = sim.server().clients()[0].id;
    let server = sim.server().client_stats(id).unwrap();
    let client = sim.client(0).stats();
    let resent = server.packets_resent as f64 / server.packets_sent as f64;
    println!(
        "16 MiB at 5% loss each way, 10 ms delay: {:.2} s; server sent {} datagrams, resent {} \
         ({:.1}%); client peak receive charge {} octets, peak memory {} octets; {} large \
         message(s) received, {} octets assembling after",
        d.took.as_secs_f64(),
        server.packets_sent,
        server.packets_resent,
        resent * 100.0,
        d.peak_buffered,
        d.peak_memory,
        client.large_messages_received,
        client.assembling_bytes
    );
    assert_eq!(client.large_messages_received, 1);
    assert_eq!(client.assembling_bytes, 0);
    // The receiver holds the message being assembled (its whole length, reserved at the first
    // part) plus at most its receive budget (4 MiB: parts behind a gap, packets in
    // reassembly).
    let bound = (MAX_LARGE_MESSAGE_SIZE + 64 + (4 << 20)) as u64;
    assert!(
        d.peak_buffered <= bound,
        "peak receive charge {} > {bound}",
        d.peak_buffered
    );
    assert!(
        d.peak_memory <= bound + (1 << 20),
        "peak memory {}",
        d.peak_memory
    );
    // Only what was lost goes again: about the loss rate, not whole parts.
    assert!(resent < 0.10, "resent {:.1}% of datagrams", resent * 100.0);
}

#[test]
fn a_256000_octet_message_is_carried_in_two_parts() {
    let link = LinkConfig::perfect().with_delay(Duration::from_millis(10));
    let mut sim = sim(link, 3);
    let message = pattern(256_000, 2);
    let d = download(&mut sim, &message, Duration::from_secs(10));
    assert!(d.data == message);
    let client = sim.client(0).stats();
    assert_eq!(client.large_messages_received, 1);
    assert_eq!(
        client.channels[ChannelId::BULK.0 as usize].messages_received,
        1
    );
    assert_eq!(
        client.channels[ChannelId::BULK.0 as usize].bytes_received,
        256_000
    );
    // One octet more than one packet carries, and exactly one packet's worth, on the game's
    // reliable-ordered channel too; a message too large for one packet is refused elsewhere.
    let id = sim.server().clients()[0].id;
    let now = sim.now();
    for len in [MAX_MESSAGE_SIZE, MAX_MESSAGE_SIZE + 1] {
        sim.server_mut()
            .send(now, id, ChannelId::RELIABLE_ORDERED, &pattern(len, 3))
            .unwrap();
    }
    assert_eq!(
        sim.server_mut()
            .send(now, id, ChannelId::RELIABLE_UNORDERED, &message),
        Err(SendError::MessageTooLarge {
            len: 256_000,
            limit: MAX_MESSAGE_SIZE
        })
    );
    sim.run_for(Duration::from_secs(5)).unwrap();
    let got = sim.take_client_messages(0);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1, pattern(MAX_MESSAGE_SIZE, 3));
    assert_eq!(got[1].1, pattern(MAX_MESSAGE_SIZE + 1, 3));
}

/// Game messages both ways (4 channels × 30 Hz of 64 octets, echoed by the server) for 12 s
/// over 4 Mbit/s, a 256 KiB queue, 20 ms and 1% loss each way, and with `bulk` a 4 MiB
/// download on the bulk lane from the start. Returns the download's time, the server's
/// (datagrams sent, resent), and the reliable-ordered round trips of the game's messages.
fn game_beside_download(bulk: bool) -> (Option<Duration>, (u64, u64), Vec<Duration>) {
    let link = LinkConfig::perfect()
        .with_delay(Duration::from_millis(20))
        .with_rate(4_000_000)
        .with_queue_bytes(256 * 1024)
        .with_loss(0.01);
    let mut sim = sim(link, 1);
    let message = pattern(4 << 20, 4);
    let (took, rtts) = common::game_beside_download(&mut sim, bulk.then_some(&message[..]), 12_000);
    let id = sim.server().clients()[0].id;
    let s = sim.server().client_stats(id).unwrap();
    (took, (s.packets_sent, s.packets_resent), rtts)
}

/// A 4 MiB download beside game traffic. The game's packets, written between the bulk
/// fragments, are acknowledged before a part's later fragments arrive; they must not make
/// the part count as lost (they did: 45% of the server's datagrams were resends, and the
/// download took 13.9 s instead of 10.3). The game's reliable-ordered round trip is printed
/// with and without the download (the bulk lane's delay-based limiter keeps the bottleneck
/// queue short: see netsim/tests/queue.rs and the README).
#[test]
fn a_download_beside_game_traffic_resends_only_what_was_lost() {
    let p = |r: &[Duration], q: f64| r[((r.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    let (_, _, alone) = game_beside_download(false);
    let (took, (sent, resent), rtts) = game_beside_download(true);
    let took = took.expect("the download arrived within 12 s");
    let share = resent as f64 / sent as f64;
    println!(
        "4 MiB beside game traffic at 4 Mbit/s, 1% loss: {:.2} s, server sent {sent} datagrams, \
         resent {resent} ({:.1}%); game reliable-ordered round trip p50/p99/max {:.1}/{:.1}/{:.1} ms \
         (without the download {:.1}/{:.1}/{:.1} ms)",
        took.as_secs_f64(),
        share * 100.0,
        p(&rtts, 0.5),
        p(&rtts, 0.99),
        p(&rtts, 1.0),
        p(&alone, 0.5),
        p(&alone, 0.99),
        p(&alone, 1.0),
    );
    // About 364 sent in 12 s; the last ones may still be on their way.
    assert!(rtts.len() > 340 && alone.len() > 340);
    assert!(share < 0.15, "resent {:.1}% of datagrams", share * 100.0);
}

/// A small reliable packet declared lost waits for its resend behind the paced fragments of a
/// one-packet message. Its resend timer, due meanwhile, must not be a wake-up: the timer does
/// not resend a packet whose job is queued, so `poll_timeout` returned a time already past
/// until pacing let the job run, and the simulated clock stopped (seed 27 livelocked, 50
/// million steps at one instant). A step bound of 200 per simulated millisecond catches it.
#[test]
fn a_resend_queued_behind_a_paced_message_does_not_stop_the_clock() {
    for seed in [27, 3, 14] {
        let link = LinkConfig::perfect()
            .with_delay(Duration::from_millis(20))
            .with_loss(0.05);
        let mut sim = sim(link, seed);
        let id = sim.server().clients()[0].id;
        let small = pattern(100, 9);
        let message = pattern(MAX_MESSAGE_SIZE, 2);
        let mut delivered = None;
        for ms in 0..3_000u32 {
            sim.set_max_steps(sim.steps() + 200);
            let now = sim.now();
            if ms % 16 == 0 {
                sim.server_mut()
                    .send(now, id, ChannelId::RELIABLE_ORDERED, &small)
                    .unwrap();
            }
            if ms == 500 {
                sim.server_mut()
                    .send(now, id, ChannelId::RELIABLE_ORDERED, &message)
                    .unwrap();
            }
            if let Err(e) = sim.run_for(Duration::from_millis(1)) {
                panic!("seed {seed}, {ms} ms: {e}");
            }
            if sim
                .take_client_messages(0)
                .iter()
                .any(|(_, d)| d.len() == message.len())
            {
                delivered = Some(ms);
                break;
            }
        }
        let ms = delivered.unwrap_or_else(|| panic!("seed {seed}: not delivered in 3 s"));
        assert!(ms > 500, "seed {seed}");
    }
}
