//! A short network queue: a bulk download through a bloated bottleneck (4 Mbit/s, a 256 KiB
//! queue: 0.5 s when full) beside game traffic. The bulk lane's delay-based limiter keeps the
//! queue near its target, so the game's reliable-ordered round trip barely grows, while the
//! download still uses most of the link. Deterministic (seeded links, virtual clock).

use std::time::Duration;

use netsim::model::LinkConfig;
use netsim::sim::Simulation;
use tickwire::{ClientConfig, ServerConfig, ServerIdentity};

mod common;
use common::{game_beside_download, pattern};

const DOWNLOAD: usize = 4 << 20;

struct Run {
    /// When the download arrived (intact: checked).
    took: Option<Duration>,
    /// The game's reliable-ordered round trips, sorted.
    rtts: Vec<Duration>,
}

impl Run {
    fn p(&self, q: f64) -> f64 {
        let r = &self.rtts;
        r[((r.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3
    }

    /// Goodput of the download in bit/s.
    fn goodput(&self) -> f64 {
        (DOWNLOAD * 8) as f64 / self.took.unwrap().as_secs_f64()
    }
}

/// One client over `rate` bit/s, a 256 KiB queue, 20 ms and `loss` each way, game messages
/// both ways (4 channels x 30 Hz of 64 octets, echoed by the server) for `secs`, and with
/// `bulk` a 4 MiB download on the bulk lane from the start. `target`: the bulk lane's target
/// delay (`None`: loss-based, as before).
fn run(rate: u64, loss: f64, bulk: bool, target: Option<Duration>, secs: u32, seed: u64) -> Run {
    let link = LinkConfig::perfect()
        .with_delay(Duration::from_millis(20))
        .with_rate(rate)
        .with_queue_bytes(256 * 1024)
        .with_loss(loss);
    let mut server_config = ServerConfig::new(ServerIdentity::generate());
    server_config.connection.max_message_size = DOWNLOAD;
    server_config.connection.send_queue_bytes = DOWNLOAD + (1 << 20);
    server_config.connection.bulk_target_delay = target;
    let mut client_config = ClientConfig::new(server_config.identity.public_key());
    client_config.connection = server_config.connection.clone();
    let mut sim = Simulation::empty(server_config, seed);
    sim.add_client(client_config, link.clone(), link);
    sim.run_until_connected(Duration::from_secs(10)).unwrap();
    let message = pattern(DOWNLOAD, 4);
    let (took, rtts) = game_beside_download(&mut sim, bulk.then_some(&message[..]), secs * 1000);
    Run { took, rtts }
}

/// Runs the link with and without the download; prints and checks the figures.
fn check(rate: u64, loss: f64, target: Option<Duration>) -> (Run, Run) {
    let alone = run(rate, loss, false, target, 20, 1);
    let with = run(rate, loss, true, target, 20, 1);
    println!(
        "{} Mbit/s, 256 KiB queue, 20 ms, {:.0}% loss, target {target:?}: 4 MiB in {}, \
         goodput {}; game reliable-ordered round trip p50/p99/max {:.1}/{:.1}/{:.1} ms \
         (without the download {:.1}/{:.1}/{:.1} ms)",
        rate / 1_000_000,
        loss * 100.0,
        with.took
            .map_or("(not done)".into(), |t| format!("{:.2} s", t.as_secs_f64())),
        with.took.map_or("-".into(), |_| format!(
            "{:.2} Mbit/s",
            with.goodput() / 1e6
        )),
        with.p(0.5),
        with.p(0.99),
        with.p(1.0),
        alone.p(0.5),
        alone.p(0.99),
        alone.p(1.0),
    );
    (alone, with)
}

fn assert_short_queue(rate: u64, loss: f64) {
    let (alone, with) = check(rate, loss, Some(Duration::from_millis(25)));
    assert!(with.took.is_some(), "the download did not complete");
    assert!(alone.rtts.len() > 580 && with.rtts.len() > 580);
    assert!(
        with.goodput() >= rate as f64 / 2.0,
        "goodput {:.2} Mbit/s",
        with.goodput() / 1e6
    );
    assert!(
        with.p(0.99) <= alone.p(0.99) + 50.0,
        "p99 {:.1} ms with the download, {:.1} ms without",
        with.p(0.99),
        alone.p(0.99)
    );
}

#[test]
fn a_download_keeps_the_queue_short_at_4_mbit_1_percent_loss() {
    assert_short_queue(4_000_000, 0.01);
}

#[test]
fn a_download_keeps_the_queue_short_at_4_mbit_without_loss() {
    assert_short_queue(4_000_000, 0.0);
}

#[test]
fn a_download_keeps_the_queue_short_at_20_mbit_1_percent_loss() {
    assert_short_queue(20_000_000, 0.01);
}

/// The same link with the bulk lane on the loss-based window (the behaviour before the
/// limiter), for comparison: printed only.
#[test]
fn without_the_limiter_the_queue_fills() {
    check(4_000_000, 0.01, None);
}

#[test]
fn a_download_keeps_the_queue_short_at_20_mbit_without_loss() {
    assert_short_queue(20_000_000, 0.0);
}
