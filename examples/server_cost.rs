//! The server's cost per message with 1 or many connected clients, in a form a cache simulator
//! can count: the same workload as `benches/core`'s `endpoint` group (each client sends one
//! reliable-ordered 100 B message per tick at 30 Hz, the server echoes it, the clients' datagrams
//! reach the server in one batch per tick), over a perfect in-memory network in virtual time.
//!
//! Run natively it prints the server's CPU time per message (minimum and median of the rounds);
//! the machine's noise shows in those. Under callgrind it gives counts that do not vary between
//! runs: every server call of a measured tick goes through a function named `measured_*`
//! (setup ticks call the server directly), so
//!
//! ```text
//! cargo build --release --example server_cost
//! valgrind --tool=callgrind --cache-sim=yes --LL=1048576,16,64 --collect-atstart=no \
//!     --toggle-collect='*measured_*' target/release/examples/server_cost \
//!     --clients 1000 --ticks 12 --rounds 1
//! callgrind_annotate callgrind.out.<pid> | head -20
//! ```
//!
//! counts the instructions (`Ir`) and the misses of a 1 MiB last-level cache (`DLmr`, `DLmw`:
//! about this machine's L2, 512 KiB a core) of the server alone; divide by clients × ticks ×
//! rounds for a message.

use clap::Parser;

#[derive(Parser)]
#[command(about = "The server's cost per echoed message with many clients (see the source)")]
struct Args {
    /// Connected clients (comma-separated for several runs).
    #[arg(long, default_value = "1,1000,10000", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Ticks per round (default: 300,000 messages' worth, 30 to 3,000 ticks).
    #[arg(long)]
    ticks: Option<usize>,
    /// Measured rounds (one more warms up first).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

#[path = "common/world.rs"]
mod world;
use world::World;

fn main() {
    let args = Args::parse();
    let msg = [9u8; 100];
    for &n in &args.clients {
        let mut w = World::new(n);
        w.echo = true;
        let ticks = args.ticks.unwrap_or((300_000 / n.max(1)).clamp(30, 3000));
        // Warm-up: queues, pools and RTT estimates settle.
        for _ in 0..30 {
            w.round::<false>(&msg);
        }
        let mut per = Vec::new();
        for _ in 0..args.rounds {
            let before = w.server_time;
            for _ in 0..ticks {
                w.round::<true>(&msg);
            }
            let spent = w.server_time - before;
            per.push(spent.as_nanos() as f64 / (ticks * n) as f64);
        }
        per.sort_by(f64::total_cmp);
        if let (Some(min), Some(median)) = (per.first(), per.get(per.len() / 2)) {
            println!(
                "{n:>6} clients: server CPU per message {min:.0} ns (least of {} rounds of {ticks} \
                 ticks), median {median:.0} ns",
                per.len()
            );
        }
    }
}
