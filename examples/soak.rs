//! A real soak test: the echo server, the netsim impairment proxy and N client processes on
//! loopback, for a given duration and impairment, with a live progress line, a report and an
//! SVG chart over time.
//!
//! # Usage
//! ```text
//! cargo run --release --example soak -- --secs 60 --clients 8 --loss 5% --delay 20ms --jitter 5ms
//! cargo run --release --example soak -- --secs 600 --clients 32 --preset congested-mobile --out mobile.svg
//! ```
//! First it runs `cargo build` for the two programs it drives (`--example echo` and netsim's
//! `--bin netsim`, same profile as itself; `--no-build` skips that and only checks that they
//! exist). Then it starts, all on 127.0.0.1:
//! 1. `echo --server 127.0.0.1:0`, reading `server key: HEX` and `listening on ADDR`;
//! 2. `netsim --listen 127.0.0.1:0 --upstream ADDR` with the impairment flags (each direction of
//!    each client has its own links), reading its address and seed, then its counters each second;
//! 3. `--clients` copies of itself in the hidden `--worker` mode (see `soak/worker.rs`), each a
//!    client through the proxy that sends, `--hz` times a second, one `--size`-octet message on
//!    each default channel (0 unreliable, 1 sequenced, 2 reliable-unordered, 3 reliable-ordered),
//!    checks every echo (intact; reliable exactly once, ordered in order; unreliable at most
//!    once; sequenced never older than one delivered) and measures its round trip from the send
//!    time carried in the message.
//!
//! With `--bulk SIZE` (e.g. `4MiB`, at most `16MiB`), the server also sends each client, once
//! connected, one message of SIZE octets on the bulk lane (`ChannelId::BULK`, reliable-ordered
//! at the lowest priority) while the game channels keep running; the client checks it octet for
//! octet against a pattern derived from SIZE, and the report gets one line: `bulk: N of M
//! transfers of S octets complete and intact; time p50 X s, max Y s` (the time from the
//! client's connection to the download's arrival). A download missing after the drain fails
//! the run.
//!
//! While it runs, a progress line each second goes to standard error. At the end, the report
//! goes to standard output (per mode: sent, echoed, round-trip p50/p90/p99/max; resends; loss
//! seen by netsim, by the application and by tickwire; invariant violations) and the chart to
//! `--out` (three panels over time: RTT, throughput, loss). Every child is stopped when it ends
//! (also on an error or a panic); each child also has its own time limit (the server's `--secs`,
//! netsim's `--duration`, the workers' own run), and Ctrl-C on a terminal reaches the whole
//! process group.
//!
//! Exit status: 0 if every client connected, every check passed and every reliable message came
//! back within the drain period; 1 if not; 2 for a command line or setup error.

#[path = "common/bulk.rs"]
mod bulk;
#[path = "soak/chart.rs"]
mod chart;
#[path = "soak/histogram.rs"]
mod histogram;
#[path = "soak/worker.rs"]
mod worker;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use clap::Parser;
use tickwire::{ConnectionConfig, MAX_MESSAGE_SIZE};

use chart::{Panel, Series};
use histogram::{exact_percentile, Histogram};

/// How long a client's handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close may take.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the server and the proxy may take to start and print their addresses.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an exiting child is waited for before it is killed.
const EXIT_WAIT: Duration = Duration::from_secs(5);

const MODES: [&str; 4] = [
    "unreliable",
    "sequenced",
    "reliable-unordered",
    "reliable-ordered",
];

/// Settings of both sides, as in the echo example: messages of any size the protocol allows.
pub fn connection_config() -> ConnectionConfig {
    ConnectionConfig {
        max_message_size: MAX_MESSAGE_SIZE,
        ..ConnectionConfig::default()
    }
}

#[derive(Debug, Clone)]
struct Args {
    secs: u64,
    clients: usize,
    hz: u32,
    size: usize,
    drain: u64,
    out: PathBuf,
    build: bool,
    netsim: Vec<String>,
    bulk: Option<usize>,
}

/// Runs the echo server, the netsim proxy and N client processes on loopback, shows progress,
/// then prints a report and writes an SVG chart.
#[derive(Parser, Debug)]
#[command(
    name = "soak",
    long_about = None,
    after_help = "Example: soak --secs 60 --clients 8 --loss 5% --delay 20ms --jitter 5ms --duplicate 1% --reorder 1%"
)]
struct Cli {
    /// Seconds of sending.
    #[arg(long, value_name = "N", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    secs: u64,
    /// Client processes (the echo server admits 64).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    clients: u16,
    /// Messages per second on each of the 4 channels per client.
    #[arg(long, value_name = "N", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=240))]
    hz: u32,
    /// Message size in octets, 19..=1200.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = message_size)]
    size: usize,
    /// Seconds to wait for outstanding echoes after sending.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=120))]
    drain: u64,
    /// The chart.
    #[arg(long, value_name = "PATH", default_value = "soak-report.svg")]
    out: PathBuf,
    /// Do not run cargo build; the echo example and netsim must exist.
    #[arg(long)]
    no_build: bool,
    /// Each client, once connected, also downloads one message of SIZE octets (e.g. 4MiB, at
    /// most 16MiB) from the server on the bulk lane while the game channels keep running;
    /// its content is checked.
    #[arg(long, value_name = "SIZE", value_parser = bulk::size)]
    bulk: Option<usize>,
    #[command(flatten)]
    impairments: Impairments,
}

/// Flags handed to netsim as they are (netsim checks them); see `netsim --help`.
#[derive(clap::Args, Debug)]
#[command(
    next_help_heading = "Impairments (passed to netsim, applied to each direction of each client)"
)]
struct Impairments {
    /// perfect | good-wifi | congested-mobile | lossy.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Random loss, e.g. 5%.
    #[arg(long, value_name = "P")]
    loss: Option<String>,
    /// Gilbert-Elliott bursts (netem gemodel order).
    #[arg(long, visible_alias = "loss-burst", value_name = "P,R[,B[,G]]")]
    burst: Option<String>,
    /// One-way latency, e.g. 20ms.
    #[arg(long, value_name = "D")]
    delay: Option<String>,
    /// Uniform +- jitter on the latency, e.g. 5ms.
    #[arg(long, value_name = "D")]
    jitter: Option<String>,
    /// Duplication, e.g. 1%.
    #[arg(long, value_name = "P")]
    duplicate: Option<String>,
    /// Datagrams that overtake the rest, e.g. 2%.
    #[arg(long, value_name = "P")]
    reorder: Option<String>,
    /// One bit flipped, e.g. 0.1%.
    #[arg(long, value_name = "P")]
    corrupt: Option<String>,
    /// Rate limit, e.g. 4mbit.
    #[arg(long, value_name = "R")]
    rate: Option<String>,
    /// Bytes that may wait for the rate limit, e.g. 64kib.
    #[arg(long, value_name = "BYTES")]
    queue: Option<String>,
    /// Drop payloads larger than N bytes.
    #[arg(long, value_name = "N")]
    mtu: Option<String>,
    /// Seed of netsim's random choices.
    #[arg(long, value_name = "N")]
    seed: Option<String>,
}

impl Impairments {
    /// netsim's flags and values, in the order of `netsim --help`.
    fn flags(&self) -> Vec<String> {
        let all = [
            ("--preset", &self.preset),
            ("--loss", &self.loss),
            ("--burst", &self.burst),
            ("--delay", &self.delay),
            ("--jitter", &self.jitter),
            ("--duplicate", &self.duplicate),
            ("--reorder", &self.reorder),
            ("--corrupt", &self.corrupt),
            ("--rate", &self.rate),
            ("--queue", &self.queue),
            ("--mtu", &self.mtu),
            ("--seed", &self.seed),
        ];
        all.into_iter()
            .filter_map(|(flag, value)| Some([flag.to_string(), value.clone()?]))
            .flatten()
            .collect()
    }
}

fn message_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (worker::MIN_SIZE..=1200).contains(&n) => Ok(n),
        _ => Err(format!("not a size in {}..=1200", worker::MIN_SIZE)),
    }
}

impl From<Cli> for Args {
    fn from(cli: Cli) -> Self {
        Args {
            secs: cli.secs,
            clients: usize::from(cli.clients),
            hz: cli.hz,
            size: cli.size,
            drain: cli.drain,
            out: cli.out,
            build: !cli.no_build,
            netsim: cli.impairments.flags(),
            bulk: cli.bulk,
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--worker") {
        return worker::main(&argv[1..]);
    }
    let args = Args::from(Cli::parse());
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// Every child started, stopped (killed if still running, then reaped with a bounded wait)
/// when this goes out of scope, whatever the way out.
#[derive(Default)]
struct Procs {
    list: Vec<(String, Child)>,
}

impl Procs {
    fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<usize, String> {
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        self.list.push((name.to_string(), child));
        Ok(self.list.len() - 1)
    }

    fn child(&mut self, i: usize) -> &mut Child {
        &mut self.list[i].1
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.list {
            stop_child(child);
        }
    }
}

/// Kills `child` if it still runs and reaps it, waiting at most [`EXIT_WAIT`].
fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = wait_timeout(child, EXIT_WAIT);
}

/// Waits at most `limit` for `child` to exit.
fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Server,
    Proxy,
    Worker(usize),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Server => f.write_str("the echo server"),
            Self::Proxy => f.write_str("netsim"),
            Self::Worker(i) => write!(f, "worker {i}"),
        }
    }
}

/// A line from a child, or `None` when its output closed.
struct Msg {
    from: Source,
    line: Option<String>,
}

/// Forwards the lines of `r` to `tx` on a thread, which ends when `r` closes.
fn forward(r: impl Read + Send + 'static, from: Source, tx: &Sender<Msg>) {
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx
                .send(Msg {
                    from,
                    line: Some(line),
                })
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send(Msg { from, line: None });
    });
}

/// The echo example and netsim next to this program, built first unless `--no-build`.
fn binaries(build: bool) -> Result<(PathBuf, PathBuf), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let examples = exe
        .parent()
        .ok_or("this program has no directory")?
        .to_path_buf();
    let profile_dir = examples
        .parent()
        .ok_or("this program is not in a cargo target directory")?
        .to_path_buf();
    let suffix = std::env::consts::EXE_SUFFIX;
    let echo = examples.join(format!("echo{suffix}"));
    let netsim = profile_dir.join(format!("netsim{suffix}"));
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release")
        .to_string();
    let profile_flags: Vec<String> = match profile.as_str() {
        "release" => vec!["--release".into()],
        "debug" => vec![],
        other => vec!["--profile".into(), other.into()],
    };
    let how = format!(
        "cargo build {}--workspace --bin netsim --example echo",
        profile_flags
            .iter()
            .map(|f| format!("{f} "))
            .collect::<String>()
    );
    if build {
        let cargo = std::env::var_os("CARGO")
            .unwrap_or_else(|| option_env!("CARGO").unwrap_or("cargo").into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        eprintln!("soak: {how}");
        let mut child = Command::new(&cargo)
            .arg("build")
            .arg("--manifest-path")
            .arg(&manifest)
            .args(&profile_flags)
            .args(["--workspace", "--bin", "netsim", "--example", "echo"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {cargo:?}: {e}"))?;
        match wait_timeout(&mut child, Duration::from_secs(1800)) {
            Some(s) if s.success() => {}
            Some(s) => {
                return Err(format!(
                    "`{how}` failed ({s}); fix the build or use --no-build"
                ))
            }
            None => {
                stop_child(&mut child);
                return Err(format!("`{how}` took over 30 minutes"));
            }
        }
    }
    for (name, path) in [("the echo example", &echo), ("netsim", &netsim)] {
        if !path.is_file() {
            return Err(format!(
                "{name} is not built ({} does not exist): run `{how}` first, or drop --no-build",
                path.display()
            ));
        }
    }
    Ok((echo, netsim))
}

// ---------------------------------------------------------------------------------------------
// What the workers and netsim report.

/// A worker's cumulative counters at the end of second `t`.
#[derive(Debug, Default, Clone, Copy)]
struct Tick {
    t: u64,
    sent: [u64; 4],
    got: [u64; 4],
    srtt_us: u64,
    loss_ppm: u64,
    pkts_sent: u64,
    pkts_recv: u64,
    resent: u64,
    lost: u64,
    dups: u64,
    stale: u64,
    unrel_dropped: u64,
    qfull: u64,
    violations: u64,
}

/// `key=value` pairs of a line after its first word.
fn pairs(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|w| w.split_once('='))
        .collect()
}

fn num(p: &BTreeMap<&str, &str>, key: &str) -> u64 {
    p.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn four(p: &BTreeMap<&str, &str>, key: &str) -> [u64; 4] {
    let mut out = [0; 4];
    if let Some(v) = p.get(key) {
        for (o, x) in out.iter_mut().zip(v.split(',')) {
            *o = x.parse().unwrap_or(0);
        }
    }
    out
}

impl Tick {
    fn parse(line: &str) -> Self {
        let p = pairs(line);
        Self {
            t: num(&p, "t"),
            sent: four(&p, "sent"),
            got: four(&p, "got"),
            srtt_us: num(&p, "srtt_us"),
            loss_ppm: num(&p, "loss_ppm"),
            pkts_sent: num(&p, "pkts_sent"),
            pkts_recv: num(&p, "pkts_recv"),
            resent: num(&p, "resent"),
            lost: num(&p, "lost"),
            dups: num(&p, "dups"),
            stale: num(&p, "stale"),
            unrel_dropped: num(&p, "unrel_dropped"),
            qfull: num(&p, "qfull"),
            violations: num(&p, "violations"),
        }
    }
}

/// netsim's counters (both directions, every client) from one of its live lines:
/// `netsim 12s | up U down D | dropped X (loss L, queue Q, mtu M) | dup .. reord .. corrupt .. |
/// in flight F | clients C`.
#[derive(Debug, Default, Clone, Copy)]
struct NetCounters {
    up: u64,
    down: u64,
    dropped: u64,
    loss: u64,
    queue: u64,
    mtu: u64,
    dup: u64,
    reord: u64,
    corrupt: u64,
    in_flight: u64,
}

impl NetCounters {
    fn parse(line: &str) -> Option<Self> {
        let clean: String = line
            .chars()
            .map(|c| if "|(),".contains(c) { ' ' } else { c })
            .collect();
        let words: Vec<&str> = clean.split_whitespace().collect();
        if words.first() != Some(&"netsim") || !words.get(1)?.ends_with('s') {
            return None;
        }
        let after = |key: &str| -> Option<u64> {
            let i = words.iter().position(|w| *w == key)?;
            words.get(i + 1)?.parse().ok()
        };
        Some(Self {
            up: after("up")?,
            down: after("down")?,
            dropped: after("dropped")?,
            loss: after("loss")?,
            queue: after("queue")?,
            mtu: after("mtu")?,
            dup: after("dup")?,
            reord: after("reord")?,
            corrupt: after("corrupt")?,
            in_flight: after("flight")?,
        })
    }

    /// Datagrams that entered the proxy (delivered, dropped or in flight; copies not counted).
    fn offered(&self) -> u64 {
        (self.up + self.down + self.dropped + self.in_flight).saturating_sub(self.dup)
    }
}

#[derive(Debug, Default)]
struct WorkerState {
    proc_index: usize,
    connected: bool,
    last: Tick,
    done: Option<(bool, [u64; 4])>,
    fails: Vec<String>,
    violations: Vec<String>,
    eof: bool,
    status: Option<ExitStatus>,
    /// With --bulk: whether the download arrived intact, and after how many µs.
    bulk: Option<(bool, u64)>,
}

/// The samples and counters of one second (workers' seconds since they started sending).
#[derive(Default)]
struct Second {
    sent: [u64; 4],
    got: [u64; 4],
    resent: u64,
    srtt_sum_us: u64,
    loss_sum_ppm: u64,
    reports: u64,
    net_dropped: u64,
    net_offered: u64,
    /// Unreliable messages sent in this second, and how many of them were echoed.
    unrel_sent: u64,
    unrel_echoed: u64,
    samples: [Vec<u32>; 4],
    /// p50 and p99 of all modes and p99 of reliable-ordered, in µs, once final.
    pct: Option<[Option<u32>; 3]>,
}

impl Second {
    fn finalize(&mut self) {
        if self.pct.is_some() {
            return;
        }
        let mut all: Vec<u32> = self.samples.iter().flatten().copied().collect();
        let p50 = exact_percentile(&mut all, 0.50);
        let p99 = exact_percentile(&mut all, 0.99);
        let p99_ordered = exact_percentile(&mut self.samples[3], 0.99);
        self.pct = Some([p50, p99, p99_ordered]);
        self.samples = Default::default();
    }
}

/// Everything the parent gathers.
struct Soak {
    workers: Vec<WorkerState>,
    seconds: BTreeMap<u64, Second>,
    hist: [Histogram; 4],
    hist_all: Histogram,
    late_samples: u64,
    /// When the first worker connected (its sending started): second 0 of the chart.
    sending_start: Option<Instant>,
    net: Option<NetCounters>,
    server_lines: Vec<String>,
    server_connections: u64,
    server_disconnections: Vec<String>,
    /// RTT samples since the last progress line.
    window: Vec<u32>,
}

impl Soak {
    fn new(clients: usize) -> Self {
        Self {
            workers: (0..clients).map(|_| WorkerState::default()).collect(),
            seconds: BTreeMap::new(),
            hist: Default::default(),
            hist_all: Histogram::default(),
            late_samples: 0,
            sending_start: None,
            net: None,
            server_lines: Vec::new(),
            server_connections: 0,
            server_disconnections: Vec::new(),
            window: Vec::new(),
        }
    }

    fn on_worker_line(&mut self, i: usize, line: &str) {
        let word = line.split_whitespace().next().unwrap_or("");
        match word {
            "connected" => {
                self.workers[i].connected = true;
                if self.sending_start.is_none() {
                    self.sending_start = Some(Instant::now());
                }
            }
            "rtt" => {
                let p = pairs(line);
                let t = num(&p, "t");
                let ch = num(&p, "ch").min(3) as usize;
                let second = self.seconds.entry(t).or_default();
                let open = second.pct.is_none();
                for v in p.get("us").into_iter().flat_map(|v| v.split(',')) {
                    let Ok(us) = v.parse::<u32>() else { continue };
                    self.hist[ch].record(u64::from(us));
                    self.hist_all.record(u64::from(us));
                    self.window.push(us);
                    if open {
                        second.samples[ch].push(us);
                    } else {
                        self.late_samples += 1;
                    }
                }
            }
            "tick" => {
                let tick = Tick::parse(line);
                let w = &mut self.workers[i];
                let prev = w.last;
                w.last = tick;
                let s = self.seconds.entry(tick.t).or_default();
                for m in 0..4 {
                    s.sent[m] += tick.sent[m].saturating_sub(prev.sent[m]);
                    s.got[m] += tick.got[m].saturating_sub(prev.got[m]);
                }
                s.resent += tick.resent.saturating_sub(prev.resent);
                s.srtt_sum_us += tick.srtt_us;
                s.loss_sum_ppm += tick.loss_ppm;
                s.reports += 1;
            }
            "unrel" => {
                let p = pairs(line);
                let s = self.seconds.entry(num(&p, "t")).or_default();
                s.unrel_sent += num(&p, "sent");
                s.unrel_echoed += num(&p, "echoed");
            }
            "violation" => {
                let w = &mut self.workers[i];
                if w.violations.len() < 20 {
                    w.violations
                        .push(line["violation".len()..].trim().to_string());
                }
            }
            "fail" => {
                let w = &mut self.workers[i];
                if w.fails.len() < 20 {
                    w.fails.push(line["fail".len()..].trim().to_string());
                }
            }
            "bulk" => {
                let p = pairs(line);
                let w = &mut self.workers[i];
                if w.bulk.is_none_or(|(ok, _)| !ok) {
                    w.bulk = Some((num(&p, "ok") == 1, num(&p, "us")));
                }
            }
            "done" => {
                let p = pairs(line);
                self.workers[i].done = Some((num(&p, "ok") == 1, four(&p, "missing")));
            }
            _ => {}
        }
    }

    fn on_proxy_line(&mut self, line: &str) {
        let Some(now) = NetCounters::parse(line) else {
            return;
        };
        // The first line counts from the proxy's start (only handshakes before the clients').
        if let Some(start) = self.sending_start {
            let prev = self.net.unwrap_or_default();
            // The line covers the second before it: charged to the worker second it overlaps most.
            let t = start.elapsed().as_secs_f64().round().max(1.0) as u64;
            let s = self.seconds.entry(t).or_default();
            s.net_dropped += now.dropped.saturating_sub(prev.dropped);
            s.net_offered += now.offered().saturating_sub(prev.offered());
        }
        self.net = Some(now);
    }

    fn on_server_line(&mut self, line: &str) {
        if line.starts_with("client ") && line.contains(" connected from ") {
            self.server_connections += 1;
        } else if line.starts_with("client ") && line.contains(" disconnected: ") {
            if self.server_disconnections.len() < 100 {
                self.server_disconnections.push(line.to_string());
            }
        } else if self.server_lines.len() < 100 {
            self.server_lines.push(line.to_string());
        }
    }

    /// Computes the percentiles of the seconds every running worker has reported.
    fn finalize_reported(&mut self) {
        let running = self
            .workers
            .iter()
            .filter(|w| w.connected && w.done.is_none() && !w.eof);
        let upto = running.map(|w| w.last.t).min();
        for (&t, s) in &mut self.seconds {
            if upto.is_none_or(|u| t <= u) {
                s.finalize();
            }
        }
    }

    fn totals(&self) -> Tick {
        let mut sum = Tick::default();
        for w in &self.workers {
            let l = &w.last;
            for m in 0..4 {
                sum.sent[m] += l.sent[m];
                sum.got[m] += l.got[m];
            }
            sum.pkts_sent += l.pkts_sent;
            sum.pkts_recv += l.pkts_recv;
            sum.resent += l.resent;
            sum.lost += l.lost;
            sum.dups += l.dups;
            sum.stale += l.stale;
            sum.unrel_dropped += l.unrel_dropped;
            sum.qfull += l.qfull;
            sum.violations += l.violations;
            sum.t = sum.t.max(l.t);
        }
        sum
    }

    /// Workers still running (not finished and output open).
    fn running(&self) -> usize {
        self.workers.iter().filter(|w| !w.eof).count()
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

fn ms(us: Option<u64>) -> String {
    us.map_or_else(|| "-".into(), |us| format!("{:.1} ms", us as f64 / 1000.0))
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Waits for lines from `from` until `want` returns a value (other sources' lines go to
/// `soak`); an error if `from` closes its output or nothing comes in time.
fn wait_for<T>(
    rx: &Receiver<Msg>,
    from: Source,
    soak: &mut Soak,
    seen: &mut Vec<String>,
    mut want: impl FnMut(&str) -> Option<T>,
) -> Result<T, String> {
    let until = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let msg = match rx.recv_timeout(left) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!("nothing from {from} within {STARTUP_TIMEOUT:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => return Err("reader threads gone".into()),
        };
        match (msg.from, msg.line) {
            (f, Some(line)) if f == from => {
                if let Some(v) = want(&line) {
                    return Ok(v);
                }
                if seen.len() < 50 {
                    seen.push(line);
                }
            }
            (f, None) if f == from => {
                return Err(format!(
                    "{from} exited before it was ready:\n  {}",
                    seen.join("\n  ")
                ))
            }
            (Source::Server, Some(line)) => soak.on_server_line(&line),
            (Source::Proxy, Some(line)) => soak.on_proxy_line(&line),
            _ => {}
        }
    }
}

fn run(args: &Args) -> Result<bool, String> {
    let (echo, netsim) = binaries(args.build)?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut procs = Procs::default();
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut soak = Soak::new(args.clients);
    // Each child's own limit, so none outlives a parent that died without cleaning up.
    let child_limit = CONNECT_TIMEOUT.as_secs() + args.secs + args.drain + 60;

    // 1. The echo server.
    let server = procs.spawn(
        "echo server",
        Command::new(&echo)
            .args([
                "--server",
                "127.0.0.1:0",
                "--secs",
                &child_limit.to_string(),
                // Every client comes through the proxy, from 127.0.0.1.
                "--max-per-ip",
                &args.clients.to_string(),
            ])
            .args(
                args.bulk
                    .iter()
                    .flat_map(|n| ["--bulk".to_string(), n.to_string()]),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )?;
    let out = procs
        .child(server)
        .stdout
        .take()
        .ok_or("no server stdout")?;
    forward(out, Source::Server, &tx);
    let mut seen = Vec::new();
    let key = wait_for(&rx, Source::Server, &mut soak, &mut seen, |l| {
        l.strip_prefix("server key: ").map(str::to_string)
    })?;
    let server_addr: SocketAddr = wait_for(&rx, Source::Server, &mut soak, &mut seen, |l| {
        l.strip_prefix("listening on ")?.trim().parse().ok()
    })?;

    // 2. The proxy.
    let proxy = procs.spawn(
        "netsim",
        Command::new(&netsim)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                &server_addr.to_string(),
            ])
            .args(["--duration", &format!("{child_limit}s")])
            .args(&args.netsim)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )?;
    let err = procs.child(proxy).stderr.take().ok_or("no netsim stderr")?;
    forward(err, Source::Proxy, &tx);
    let mut seen = Vec::new();
    let (proxy_addr, seed): (SocketAddr, String) =
        wait_for(&rx, Source::Proxy, &mut soak, &mut seen, |l| {
            let rest = l.strip_prefix("netsim: relaying ")?;
            let (addr, rest) = rest.split_once(" -> ")?;
            let seed = rest.split(", seed ").nth(1)?.split_whitespace().next()?;
            Some((addr.parse().ok()?, seed.to_string()))
        })?;
    let impairments = if args.netsim.is_empty() {
        "no impairment".to_string()
    } else {
        args.netsim.join(" ")
    };
    eprintln!(
        "soak: echo server {server_addr}, netsim {proxy_addr} -> {server_addr} ({impairments}, \
         seed {seed}), {} clients for {} s",
        args.clients, args.secs
    );

    // 3. The clients.
    for i in 0..args.clients {
        let idx = procs.spawn(
            &format!("worker {i}"),
            Command::new(&exe)
                .arg("--worker")
                .args(["--connect", &proxy_addr.to_string(), "--server-key", &key])
                .args([
                    "--secs",
                    &args.secs.to_string(),
                    "--hz",
                    &args.hz.to_string(),
                ])
                .args(["--size", &args.size.to_string(), "--id", &i.to_string()])
                .args(["--drain", &args.drain.to_string()])
                .args(
                    args.bulk
                        .iter()
                        .flat_map(|n| ["--bulk".to_string(), n.to_string()]),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )?;
        soak.workers[i].proc_index = idx;
        let out = procs.child(idx).stdout.take().ok_or("no worker stdout")?;
        forward(out, Source::Worker(i), &tx);
    }

    // 4. Until every worker is done: lines in, a progress line each second.
    let started = Instant::now();
    let hard_stop = started
        + CONNECT_TIMEOUT
        + Duration::from_secs(args.secs + args.drain)
        + CLOSE_TIMEOUT
        + Duration::from_secs(15);
    let terminal = std::io::stderr().is_terminal();
    let mut next_progress = started + Duration::from_secs(1);
    let mut prev = (soak.totals(), soak.net, Instant::now());
    let mut timed_out = false;
    // Bounded in count too: far more than the lines workers can print in that time.
    let mut budget = (args.secs + args.drain + 60) * (args.clients as u64 + 2) * 100;
    while soak.running() > 0 && budget > 0 {
        budget -= 1;
        let now = Instant::now();
        if now >= hard_stop {
            timed_out = true;
            break;
        }
        if now >= next_progress {
            soak.finalize_reported();
            progress(&mut soak, &mut prev, args, started, terminal);
            next_progress += Duration::from_secs(1);
        }
        let wait = next_progress.min(hard_stop).saturating_duration_since(now);
        match rx.recv_timeout(wait) {
            Ok(Msg { from, line }) => match (from, line) {
                (Source::Worker(i), Some(l)) => soak.on_worker_line(i, &l),
                (Source::Worker(i), None) => soak.workers[i].eof = true,
                (Source::Proxy, Some(l)) => soak.on_proxy_line(&l),
                (Source::Server, Some(l)) => soak.on_server_line(&l),
                (_, None) => {}
            },
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if terminal {
        eprintln!();
    }
    // Lines already queued (the proxy's last counters, say).
    while let Ok(Msg { from, line }) = rx.try_recv() {
        match (from, line) {
            (Source::Worker(i), Some(l)) => soak.on_worker_line(i, &l),
            (Source::Proxy, Some(l)) => soak.on_proxy_line(&l),
            (Source::Server, Some(l)) => soak.on_server_line(&l),
            _ => {}
        }
    }
    for w in &mut soak.workers {
        let child = procs.child(w.proc_index);
        w.status = wait_timeout(child, if timed_out { Duration::ZERO } else { EXIT_WAIT });
        if w.status.is_none() {
            stop_child(child);
        }
    }

    // 5. The server's own summary (console `shutdown`), then every child stopped.
    if let Some(mut stdin) = procs.child(server).stdin.take() {
        let _ = stdin.write_all(b"shutdown\n");
        let until = Instant::now() + EXIT_WAIT;
        let mut summary = false;
        while !summary {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Msg {
                    from: Source::Server,
                    line: Some(l),
                }) => {
                    summary = l.starts_with("served ");
                    soak.on_server_line(&l);
                }
                Ok(Msg {
                    from: Source::Server,
                    line: None,
                }) => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    drop(procs);
    soak.finalize_reported();
    for s in soak.seconds.values_mut() {
        s.finalize();
    }

    // 6. The report and the chart.
    let (text, pass) = report(&soak, args, &impairments, &seed, timed_out);
    let svg = chart_svg(&soak, args, &impairments, &seed, pass);
    let written = match args.out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
        _ => Ok(()),
    }
    .and_then(|()| std::fs::write(&args.out, svg));
    print!("{text}");
    let shown = std::fs::canonicalize(&args.out).unwrap_or_else(|_| args.out.clone());
    match written {
        Ok(()) => println!("chart: {}", shown.display()),
        Err(e) => println!("chart: could not write {}: {e}", args.out.display()),
    }
    println!("result: {}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}

/// One progress line on standard error.
fn progress(
    soak: &mut Soak,
    prev: &mut (Tick, Option<NetCounters>, Instant),
    args: &Args,
    started: Instant,
    terminal: bool,
) {
    let now = Instant::now();
    let totals = soak.totals();
    let dt = now.duration_since(prev.2).as_secs_f64().max(1e-3);
    let sum = |v: &[u64; 4]| v.iter().sum::<u64>();
    let sent = sum(&totals.sent).saturating_sub(sum(&prev.0.sent));
    let got = sum(&totals.got).saturating_sub(sum(&prev.0.got));
    let unrel_sent = totals.sent[0].saturating_sub(prev.0.sent[0]);
    let unrel_got = totals.got[0].saturating_sub(prev.0.got[0]);
    let rt_loss = if unrel_sent > 0 {
        format!("{:.1}%", 100.0 - pct(unrel_got.min(unrel_sent), unrel_sent))
    } else {
        "-".into()
    };
    let net_loss = match (soak.net, prev.1) {
        (Some(n), Some(p)) if n.offered() > p.offered() => format!(
            "{:.1}%",
            pct(n.dropped - p.dropped, n.offered() - p.offered())
        ),
        _ => "-".into(),
    };
    let p50 = exact_percentile(&mut soak.window, 0.5).map(u64::from);
    let p99 = exact_percentile(&mut soak.window, 0.99).map(u64::from);
    soak.window.clear();
    let connected = soak.workers.iter().filter(|w| w.connected).count();
    let line = format!(
        "soak {:>4.0}s/{}s | clients {connected}/{} | {:.0} msg/s sent, {:.0} echoed | rtt p50 {} \
         p99 {} | loss: netsim {net_loss}, unreliable round trip {rt_loss} | resent {} | \
         violations {}",
        now.duration_since(started).as_secs_f64(),
        args.secs,
        args.clients,
        sent as f64 / dt,
        got as f64 / dt,
        ms(p50),
        ms(p99),
        totals.resent,
        totals.violations,
    );
    if terminal {
        eprint!("\r{line}\x1b[K");
    } else {
        eprintln!("{line}");
    }
    *prev = (totals, soak.net, now);
}

/// The report text and whether the run passed.
fn report(
    soak: &Soak,
    args: &Args,
    impairments: &str,
    seed: &str,
    timed_out: bool,
) -> (String, bool) {
    let mut r = String::new();
    let t = soak.totals();
    let connected = soak.workers.iter().filter(|w| w.connected).count();
    let finished_ok = soak
        .workers
        .iter()
        .filter(|w| matches!(w.done, Some((true, _))))
        .count();
    let reliable_missing: u64 = soak
        .workers
        .iter()
        .map(|w| match w.done {
            Some((_, m)) => m[2] + m[3],
            None => (w.last.sent[2] - w.last.got[2]) + (w.last.sent[3] - w.last.got[3]),
        })
        .sum();
    let _ = writeln!(r, "== tickwire soak report ==");
    let _ = writeln!(
        r,
        "run: {} s of sending, {} client processes, {} Hz on each of 4 channels per client, \
         {}-octet messages, drain up to {} s",
        args.secs, args.clients, args.hz, args.size, args.drain
    );
    let _ = writeln!(
        r,
        "network: netsim {impairments} (each direction of each client), seed {seed}"
    );
    let _ = writeln!(
        r,
        "clients: {connected} of {} connected, {finished_ok} finished with every check passed",
        args.clients
    );
    let _ = writeln!(r);
    let _ = writeln!(
        r,
        "{:<20} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9}",
        "mode", "sent", "echoed", "not echoed", "rtt p50", "p90", "p99", "max"
    );
    let row = |r: &mut String, name: &str, sent: u64, got: u64, h: &Histogram| {
        let not_echoed = if sent == 0 {
            "-".to_string()
        } else {
            format!("{:.2}%", 100.0 - pct(got.min(sent), sent))
        };
        let _ = writeln!(
            r,
            "{:<20} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9}",
            name,
            sent,
            got,
            not_echoed,
            ms(h.percentile(0.50)),
            ms(h.percentile(0.90)),
            ms(h.percentile(0.99)),
            ms((h.count() > 0).then(|| h.max())),
        );
    };
    for (m, name) in MODES.iter().enumerate() {
        row(&mut r, name, t.sent[m], t.got[m], &soak.hist[m]);
    }
    row(
        &mut r,
        "all modes",
        t.sent.iter().sum(),
        t.got.iter().sum(),
        &soak.hist_all,
    );
    let _ = writeln!(
        r,
        "(round trip = client -> netsim -> server -> netsim -> client; reliable \"not echoed\" \
         must be 0)"
    );
    let _ = writeln!(r);
    let srtts: Vec<f64> = soak
        .workers
        .iter()
        .filter(|w| w.last.t > 0)
        .map(|w| w.last.srtt_us as f64 / 1000.0)
        .collect();
    let mean = |v: &[f64], unit: &str| {
        if v.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}{unit}", v.iter().sum::<f64>() / v.len() as f64)
        }
    };
    let srtt_mean = mean(&srtts, " ms");
    let loss_est: Vec<f64> = soak
        .workers
        .iter()
        .filter(|w| w.last.t > 0)
        .map(|w| w.last.loss_ppm as f64 / 1e4)
        .collect();
    let loss_est_mean = mean(&loss_est, "%");
    let _ = writeln!(
        r,
        "resends: {} of {} datagrams the clients sent ({:.2}%); {} packets declared lost by the \
         clients; {} duplicate packets received and dropped",
        t.resent,
        t.pkts_sent,
        pct(t.resent, t.pkts_sent),
        t.lost,
        t.dups
    );
    let _ = writeln!(
        r,
        "client-side drops: {} sends refused (queue full), {} unreliable messages past their \
         deadline, {} stale sequenced messages",
        t.qfull, t.unrel_dropped, t.stale
    );
    let net_line = match soak.net {
        Some(n) => {
            format!(
                "netsim dropped {} of {} datagrams ({:.2}%: loss {}, queue {}, mtu {}); \
                 duplicated {}, reordered {}, corrupted {}",
                n.dropped,
                n.offered(),
                pct(n.dropped, n.offered()),
                n.loss,
                n.queue,
                n.mtu,
                n.dup,
                n.reord,
                n.corrupt
            )
        }
        None => "netsim reported no counters".to_string(),
    };
    let _ = writeln!(r, "loss seen: {net_line}");
    let _ = writeln!(
        r,
        "           unreliable round trip: {} of {} not echoed ({:.2}%); tickwire's loss \
         estimate at the end (mean of clients): {loss_est_mean}",
        t.sent[0] - t.got[0].min(t.sent[0]),
        t.sent[0],
        100.0 - pct(t.got[0].min(t.sent[0]), t.sent[0])
    );
    let _ = writeln!(
        r,
        "rtt: tickwire's smoothed RTT at the end, mean of clients: {srtt_mean}"
    );
    let served = soak
        .server_lines
        .iter()
        .find(|l| l.starts_with("served "))
        .cloned()
        .unwrap_or_else(|| "no summary".into());
    let _ = writeln!(
        r,
        "server: {} connections logged; {served}",
        soak.server_connections
    );
    let _ = writeln!(r);
    let violations: u64 = t.violations;
    let _ = writeln!(
        r,
        "invariant violations: {violations} (reliable exactly once, reliable-ordered in order, \
         unreliable at most once, sequenced never stale, every echo intact)"
    );
    let _ = writeln!(
        r,
        "reliable messages missing after the drain: {reliable_missing}"
    );
    if let Some(size) = args.bulk {
        let _ = writeln!(r, "{}", bulk_line(soak, size));
    }
    let mut pass = !timed_out && violations == 0 && reliable_missing == 0;
    if timed_out {
        let _ = writeln!(
            r,
            "FAIL: the run did not finish in time; workers were killed"
        );
    }
    for (i, w) in soak.workers.iter().enumerate() {
        let exit_ok = w.status.is_some_and(|s| s.success());
        let ok = w.connected && matches!(w.done, Some((true, _))) && exit_ok;
        if !ok {
            pass = false;
            let why = w
                .fails
                .first()
                .or(w.violations.first())
                .cloned()
                .unwrap_or_else(|| match w.status {
                    Some(s) if !s.success() => format!("exited with {s}"),
                    None => "did not exit".into(),
                    _ => "did not finish".into(),
                });
            let _ = writeln!(r, "FAIL worker {i}: {why}");
        }
        for v in w.violations.iter().take(5) {
            let _ = writeln!(r, "  worker {i} violation: {v}");
        }
    }
    for d in soak.server_disconnections.iter().take(5) {
        if !d.contains("soak done") {
            let _ = writeln!(r, "  server: {d}");
        }
    }
    if soak.late_samples > 0 {
        let _ = writeln!(
            r,
            "({} RTT samples arrived after their second was charted; they are in the totals)",
            soak.late_samples
        );
    }
    (r, pass)
}

/// The report's one line on the downloads of `--bulk`.
fn bulk_line(soak: &Soak, size: usize) -> String {
    let mut times: Vec<u64> = soak
        .workers
        .iter()
        .filter_map(|w| w.bulk.filter(|(ok, _)| *ok).map(|(_, us)| us))
        .collect();
    times.sort_unstable();
    let secs =
        |us: Option<&u64>| us.map_or("-".to_string(), |&us| format!("{:.2}", us as f64 / 1e6));
    format!(
        "bulk: {} of {} transfers of {size} octets complete and intact; time p50 {} s, max {} s",
        times.len(),
        soak.workers.len(),
        secs(times.get(times.len().saturating_sub(1) / 2)),
        secs(times.last())
    )
}

/// The three panels over time.
fn chart_svg(soak: &Soak, args: &Args, impairments: &str, seed: &str, pass: bool) -> String {
    let x_max = soak.seconds.keys().copied().max().unwrap_or(1) as f64;
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut p99_ordered = Vec::new();
    let mut srtt = Vec::new();
    let mut sent = Vec::new();
    let mut echoed = Vec::new();
    let mut resent = Vec::new();
    let mut net_loss = Vec::new();
    let mut rt_loss = Vec::new();
    let mut est_loss = Vec::new();
    let to_ms = |v: Option<u32>| v.map_or(f64::NAN, |us| f64::from(us) / 1000.0);
    for (&t, s) in &soak.seconds {
        if t == 0 {
            continue;
        }
        let x = t as f64;
        let [a, b, c] = s.pct.unwrap_or([None; 3]);
        p50.push((x, to_ms(a)));
        p99.push((x, to_ms(b)));
        p99_ordered.push((x, to_ms(c)));
        let reports = s.reports.max(1) as f64;
        let avg = |v: u64| {
            if s.reports == 0 {
                f64::NAN
            } else {
                v as f64 / reports
            }
        };
        srtt.push((x, avg(s.srtt_sum_us) / 1000.0));
        sent.push((x, s.sent.iter().sum::<u64>() as f64));
        echoed.push((x, s.got.iter().sum::<u64>() as f64));
        resent.push((x, s.resent as f64));
        net_loss.push((
            x,
            if s.net_offered >= 20 {
                pct(s.net_dropped, s.net_offered)
            } else {
                f64::NAN
            },
        ));
        // A second with few unreliable sends (the drain) says nothing about loss.
        let min_sends = (args.clients as u64 * u64::from(args.hz) / 2).max(1);
        rt_loss.push((
            x,
            if s.unrel_sent >= min_sends {
                100.0 - pct(s.unrel_echoed.min(s.unrel_sent), s.unrel_sent)
            } else {
                f64::NAN
            },
        ));
        est_loss.push((x, avg(s.loss_sum_ppm) / 1e4));
    }
    let series = |name: &str, color: &'static str, dashed: bool, points: Vec<(f64, f64)>| Series {
        name: name.to_string(),
        color,
        dashed,
        points,
    };
    let panels = [
        Panel {
            title: "Round-trip time of echoes".into(),
            unit: "ms".into(),
            series: vec![
                series("p50, all modes", "#1f77b4", false, p50),
                series("p99, all modes", "#d62728", false, p99),
                series("p99, reliable-ordered", "#ff7f0e", true, p99_ordered),
                series("tickwire smoothed RTT (mean)", "#7f7f7f", true, srtt),
            ],
        },
        Panel {
            title: "Throughput, all clients".into(),
            unit: "messages/s".into(),
            series: vec![
                series("sent", "#1f77b4", false, sent),
                series("echoed", "#2ca02c", false, echoed),
                series("datagrams resent", "#d62728", true, resent),
            ],
        },
        Panel {
            title: "Loss".into(),
            unit: "%".into(),
            series: vec![
                series("netsim dropped (datagrams)", "#d62728", false, net_loss),
                series(
                    "unreliable not echoed (round trip, by send second)",
                    "#1f77b4",
                    false,
                    rt_loss,
                ),
                series("tickwire loss estimate (mean)", "#7f7f7f", true, est_loss),
            ],
        },
    ];
    let all = &soak.hist_all;
    let title = format!(
        "tickwire soak: {} clients for {} s through netsim",
        args.clients, args.secs
    );
    let network = format!("netsim, each direction of each client: {impairments}; seed {seed}");
    let t = soak.totals();
    let settings = format!(
        "each client: 4 channels (unreliable, sequenced, reliable-unordered, reliable-ordered) x \
         {} Hz x {} B",
        args.hz, args.size
    );
    let results = format!(
        "{} messages sent, {} echoed | round trip p50 {}, p99 {} | {} invariant violations | {}",
        t.sent.iter().sum::<u64>(),
        t.got.iter().sum::<u64>(),
        ms(all.percentile(0.5)),
        ms(all.percentile(0.99)),
        t.violations,
        if pass { "PASS" } else { "FAIL" }
    );
    chart::render(&title, &[network, settings, results], x_max, &panels)
}
