//! `netsim`: a UDP proxy on loopback that impairs traffic like `tc netem`.
//!
//! ```text
//! cargo run --release --bin netsim -- --listen 127.0.0.1:4001 --upstream 127.0.0.1:4000 \
//!     --loss 5% --delay 20ms --jitter 5ms
//! ```
//!
//! Exit status: 0 after a clean stop (`--duration`), 1 if the proxy could not bind or poll,
//! 2 for a command line it cannot run (an address that is not loopback, say). Ctrl-C ends it
//! at once, without the summary; the live line has the counters.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use netsim::proxy::{parse_args, Proxy};

fn main() -> ExitCode {
    // clap prints `--help` (status 0) or the error with a usage line (status 2).
    let config = parse_args(std::env::args_os().skip(1)).unwrap_or_else(|e| e.exit());
    let upstream = config.upstream;
    let proxy = match Proxy::bind(config) {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("netsim: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "netsim: relaying {} -> {upstream}, seed {} (replay with --seed {})",
        proxy.local_addr(),
        proxy.seed(),
        proxy.seed()
    );
    match proxy.run(&AtomicBool::new(false)) {
        Ok(summary) => {
            eprintln!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netsim: stopped: {e}");
            ExitCode::FAILURE
        }
    }
}
