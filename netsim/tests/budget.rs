//! The send budget a game reads each tick: a game that sends only what
//! `Server::send_budget` allows keeps the link busy without building a queue in tickwire, and
//! the budget's rate follows the link's. Deterministic (seeded links, virtual clock).

use std::time::Duration;

use netsim::model::LinkConfig;
use netsim::sim::Simulation;
use tickwire::{ChannelId, ServerConfig, ServerIdentity};

/// A message's share of the wire beyond its length: framing, and a datagram's header and tag
/// for each of the about 1,000 octets it fills.
const MESSAGE: usize = 900;
const WIRE_COST: u64 = 940;

struct Run {
    /// The link's rate in octets per second.
    link: f64,
    /// `bytes_per_second` sampled every 100 ms from 2 s to 6 s.
    rates: Vec<u64>,
    /// Octets of messages delivered per second from 2 s to 6 s.
    goodput: f64,
    /// The most octets ever queued in tickwire (unsent) when the game read the budget.
    max_queued: u64,
}

/// The server sends 900-octet reliable messages to one client each 1 ms tick, as many as
/// `bytes_now` allows, over a `bits`/s link with 20 ms delay each way and a 64 KiB queue.
fn run(bits: u64, seed: u64) -> Run {
    let link = LinkConfig::perfect()
        .with_delay(Duration::from_millis(20))
        .with_rate(bits)
        .with_queue_bytes(64 * 1024);
    let mut sim = Simulation::new(ServerConfig::new(ServerIdentity::generate()), 1, link, seed);
    sim.run_until_connected(Duration::from_secs(10)).unwrap();
    let id = sim.server().clients()[0].id;
    let mut rates = Vec::new();
    let mut delivered = 0usize;
    let mut max_queued = 0;
    for tick in 0..6000u32 {
        let now = sim.now();
        let budget = sim.server().send_budget(now, id).expect("connected");
        if tick >= 2000 {
            max_queued = max_queued.max(budget.queued_bytes);
        }
        for _ in 0..budget.bytes_now / WIRE_COST {
            sim.server_mut()
                .send(now, id, ChannelId::RELIABLE_UNORDERED, &[7; MESSAGE])
                .unwrap();
        }
        if tick >= 2000 && tick % 100 == 0 {
            rates.push(budget.bytes_per_second);
        }
        sim.run_for(Duration::from_millis(1)).unwrap();
        let got = sim.take_client_messages(0);
        if tick >= 2000 {
            delivered += got.iter().map(|(_, d)| d.len()).sum::<usize>();
        }
    }
    Run {
        link: bits as f64 / 8.0,
        rates,
        goodput: delivered as f64 / 4.0,
        max_queued,
    }
}

#[test]
fn budget_rate_follows_the_link() {
    for (bits, seed) in [(1_000_000, 1), (4_000_000, 2), (20_000_000, 3)] {
        let r = run(bits, seed);
        let mean = r.rates.iter().sum::<u64>() as f64 / r.rates.len() as f64;
        let min = *r.rates.iter().min().unwrap() as f64;
        let max = *r.rates.iter().max().unwrap() as f64;
        println!(
            "{} Mbit/s: budget rate mean {:.0}% of the link (min {:.0}%, max {:.0}%), \
             goodput {:.0}% of the link, at most {} octets queued in tickwire",
            bits / 1_000_000,
            mean / r.link * 100.0,
            min / r.link * 100.0,
            max / r.link * 100.0,
            r.goodput / r.link * 100.0,
            r.max_queued
        );
        assert!(
            (mean / r.link - 1.0).abs() <= 0.2,
            "{bits} bit/s: budget rate {mean:.0} B/s against {:.0}",
            r.link
        );
        assert!(
            r.goodput >= 0.7 * r.link,
            "{bits} bit/s: goodput {:.0} B/s",
            r.goodput
        );
    }
}

/// An unreliable message still queued past `unreliable_deadline` is dropped and counted, never
/// sent late, even when the application asks for datagrams before the timer that drops it ran.
#[test]
fn unreliable_past_its_deadline_is_dropped_never_sent_late() {
    let link = LinkConfig::perfect().with_delay(Duration::from_millis(5));
    let mut sim = Simulation::new(ServerConfig::new(ServerIdentity::generate()), 1, link, 9);
    sim.run_until_connected(Duration::from_secs(10)).unwrap();
    sim.run_for(Duration::from_millis(50)).unwrap();
    sim.take_server_messages();
    let now = sim.now();
    for i in 0..10u8 {
        sim.client_mut(0)
            .send(now, ChannelId::UNRELIABLE, &[i; 100])
            .unwrap();
    }
    // The deadline (200 ms by default) passes with no call to `handle_timeout`.
    let late = now + Duration::from_millis(250);
    let from = sim.clients()[0].addr;
    let mut buf = vec![0u8; 2048];
    let mut datagrams = Vec::new();
    for _ in 0..100 {
        let Some(t) = sim.client_mut(0).poll_transmit(late, &mut buf) else {
            break;
        };
        datagrams.push(buf[..t.len].to_vec());
    }
    for mut d in datagrams {
        sim.server_mut().handle_datagram(late, from, &mut d);
    }
    let mut messages = 0;
    while let Some(e) = sim.server_mut().poll_event() {
        messages += usize::from(matches!(e, tickwire::Event::Message { .. }));
    }
    assert_eq!(messages, 0, "a message went out past its deadline");
    let stats = sim.client(0).stats();
    assert_eq!(stats.unreliable_dropped, 10);
    assert_eq!(stats.channels[0].dropped_unsent, 10);
    assert_eq!(stats.channels[0].queued_messages, 0);
}
