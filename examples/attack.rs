//! Attacks your own tickwire server over loopback, the way a spoofing stranger and a cheating
//! authenticated client would, and reports whether it held.
//!
//! # Usage
//! ```text
//! cargo run --release --example echo -- --server 127.0.0.1:7777 &    # prints `server key: HEX`
//! cargo run --release --example attack -- --target 127.0.0.1:7777 --server-key HEX \
//!     --attack all [--secs 10] [--pid SERVER_PID] [--rss-cap-mb 2048]
//! ```
//! `--attack` takes a name, a number, a comma-separated list of them, or `all` (each in turn,
//! in the order of their numbers; after a flood the tool waits 11 s, so that the next attack
//! does not meet its half-open handshakes). `--secs` is how long each attack runs (default
//! 10).
//! `--pid` lets the tool read the server's resident memory (`VmRSS` in `/proc/PID/status`)
//! before, during and after each attack; an attack stops early once the server has grown by
//! `--rss-cap-mb` (default 2048). Every packet goes to loopback: the target must be an IPv4
//! address in 127.0.0.0/8, and every address the tool uses is one too (Linux lets a program
//! bind any address of 127/8).
//!
//! # What each attack does
//! While an attack runs, a *probe* (a real [`tickwire::io::ClientDriver`], connected before
//! the attack from its own address 127.50.N.1) sends reliable messages on channel 2 (64
//! octets at 100/s; 4000 octets at 400/s for `frag-spoof`) and counts the echoes, and every
//! couple of seconds a *fresh* probe (127.51.N.k) tries to connect (3 s allowed).
//!
//! 1. `migrate`: a cheater with a real session forges one sealed packet from a victim address
//!    V (where the tool listens) and counts what the server then sends to V; then it answers
//!    the path challenge it predicts (`(next pn << 16) ^ 1`) from V, and sends compressed
//!    echo requests from V. Failure: more than 3x the octets sent from V reached V.
//! 2. `frag-spoof`: 13-octet sealed-looking last fragments (random packet numbers above the
//!    window) forged from the probe's address, 32 every 2 s, while the probe echoes
//!    4000-octet messages: 8 announce 255 fragments, which fill the 2 MiB reassembly budget,
//!    and 24 announce 2, which take the remaining packet slots (of 32). Fragment Number 255
//!    alone leaves room for 16 of the probe's 5-fragment packets and hurts nothing.
//!    Failure: under 95% of the echoes the probe meant to send came back.
//! 3. `held-ordered`: 4 cheaters send reliable-ordered messages (channel 3, 16 KiB each) with
//!    seq 1..=1023 and never seq 0, so that the server holds them all. Watch the RSS.
//! 4. `empty-reliable`: a cheater sends packets full of empty reliable messages as fast as it
//!    can and never acknowledges the echoes. Watch the RSS.
//! 5. `lz4-bomb`: a cheater sends COMPRESSED packets (about 1 KB each, ~98 KB/s) whose
//!    plaintext, four 60,000-octet messages of zeros, decompresses to 240,024 octets.
//! 6. `auth-rekey`: client AUTHs with a different key each time from one address, 2500/s.
//! 7. `halfopen-ports`: client AUTHs from 127.9.9.9 over 2048 ports, 2000/s.
//! 8. `slot-hog`: 64 real clients from 127.8.8.8 (a PING every 5 s of their own), then a
//!    probe from another address and one from 127.8.8.8 try to connect.
//! 9. `auth-flood`: client AUTHs (160 octets, 509 pre-generated P-256 keys cycled so that an
//!    address never repeats its previous key) from 4096 addresses, as fast as possible.
//!
//! The cheaters (1, 3, 4, 5) run their own handshake from the crate's public API
//! (`docs/PROTOCOL.md` §3), including the stateless retry a server under load may answer
//! with: an unsealed AUTH with E = 0 whose certificate field is a 20-octet cookie, echoed in
//! the next client hello. The floods do not answer retries (a spoofer could not); they count
//! them among the octets received.
//!
//! Attacks 1 and 2 forge source addresses through a raw socket (IP_HDRINCL), which needs root
//! (CAP_NET_RAW); without it they are reported as skipped.
//!
//! # The report
//! One line per attack, then a table: packets and octets the attack sent, octets the tool
//! received back (amplification = received / sent; for `migrate`, octets that reached V /
//! octets sent from V), fresh probes connected, probe echoes returned / meant to be sent
//! (its rate times the attack's length), the server's RSS, and either `server held` or the
//! failures observed: a fresh probe that could not connect, echoes missing after a 3 s
//! drain, the server growing by more than 32 MiB, or the attack's own criterion. The exit
//! status is 0 whatever the results (it is a measuring tool); 2 only for bad usage.
//!
//! `cargo test --release --example attack` checks the cheaters' handshake: the AUTH with a
//! cookie against the protocol's test vector, and a full handshake through a proxy that
//! answers the first AUTH with a stateless retry.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rand_core::{OsRng, RngCore};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tickwire::connection::PACKET_PLAINTEXT;
use tickwire::crypto::EphemeralKey;
use tickwire::endpoint::handshake::client_auth;
use tickwire::io::{ClientDriver, SocketConfig};
use tickwire::pipeline::fragment::write_datagram;
use tickwire::pipeline::seal::packet_number;
use tickwire::pipeline::{encode_into, Decoder, PacketKey, Seal, SendOptions};
use tickwire::wire::frame;
use tickwire::wire::{
    Body, ErrorCode, Flags, Heartbeat, Packet, PacketType, TypeFields, MAX_DATA_DATAGRAM,
};
use tickwire::{ChannelId, ClientConfig, DisconnectReason, Event, ServerKey};

#[path = "common/raw.rs"]
mod raw;

/// Memory growth above which an attack counts as a success against the server.
const RSS_FAILURE_MIB: u64 = 32;
/// How long a fresh probe may take to connect.
const FRESH_TIMEOUT: Duration = Duration::from_secs(3);
/// The pause between the end of one fresh probe's try and the next.
const FRESH_EVERY: Duration = Duration::from_secs(2);
/// How long the probe waits for its last echoes after an attack.
const DRAIN: Duration = Duration::from_secs(3);
/// How long the probe may take to connect before an attack (the server may still be
/// recovering from the previous one).
const PROBE_CONNECT: Duration = Duration::from_secs(15);
/// The pause after a flood, before the next attack: the server's handshake timeout and 1 s.
const COOLDOWN: Duration = Duration::from_secs(11);
/// The channel the probes echo on (reliable-unordered in the default configuration).
const PROBE_CHANNEL: ChannelId = ChannelId(2);
/// Length of the stateless retry's cookie.
/// P-256 keys pre-generated for the floods (prime, so that no address repeats its key).
const FLOOD_KEYS: usize = 509;

// ---------------------------------------------------------------------------------------------
// Arguments

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    Migrate,
    FragSpoof,
    HeldOrdered,
    EmptyReliable,
    Lz4Bomb,
    AuthRekey,
    HalfopenPorts,
    SlotHog,
    AuthFlood,
}

impl Attack {
    const ALL: [Attack; 9] = [
        Attack::Migrate,
        Attack::FragSpoof,
        Attack::HeldOrdered,
        Attack::EmptyReliable,
        Attack::Lz4Bomb,
        Attack::AuthRekey,
        Attack::HalfopenPorts,
        Attack::SlotHog,
        Attack::AuthFlood,
    ];

    fn number(self) -> u8 {
        Self::ALL.iter().position(|&a| a == self).expect("listed") as u8 + 1
    }

    fn name(self) -> &'static str {
        match self {
            Attack::Migrate => "migrate",
            Attack::FragSpoof => "frag-spoof",
            Attack::HeldOrdered => "held-ordered",
            Attack::EmptyReliable => "empty-reliable",
            Attack::Lz4Bomb => "lz4-bomb",
            Attack::AuthRekey => "auth-rekey",
            Attack::HalfopenPorts => "halfopen-ports",
            Attack::SlotHog => "slot-hog",
            Attack::AuthFlood => "auth-flood",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s || a.number().to_string() == s)
    }

    /// Whether the attack leaves half-open handshakes behind (a server forgets them after its
    /// handshake timeout, 10 s by default).
    fn leaves_half_open(self) -> bool {
        matches!(
            self,
            Attack::AuthRekey | Attack::HalfopenPorts | Attack::AuthFlood
        )
    }

    /// Whether the attack forges source addresses (raw socket, root).
    fn needs_raw_socket(self) -> bool {
        matches!(self, Attack::Migrate | Attack::FragSpoof)
    }
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.number(), self.name())
    }
}

/// Attacks your own tickwire server over loopback, the way a spoofing stranger and a cheating
/// authenticated client would, and reports whether it held.
#[derive(Parser, Debug, Clone)]
#[command(name = "attack", long_about = None)]
struct Args {
    /// The server, an IPv4 loopback address (e.g. 127.0.0.1:7777).
    #[arg(long, value_name = "ADDR", value_parser = loopback_v4)]
    target: SocketAddrV4,
    /// The server's key (echo --server prints it).
    #[arg(long = "server-key", value_name = "HEX")]
    key: ServerKey,
    /// all, or names/numbers separated by commas: 1 migrate, 2 frag-spoof, 3 held-ordered,
    /// 4 empty-reliable, 5 lz4-bomb, 6 auth-rekey, 7 halfopen-ports, 8 slot-hog, 9 auth-flood.
    #[arg(
        long = "attack",
        value_name = "NAMES",
        default_value = "all",
        value_parser = attack_list
    )]
    attacks: AttackList,
    /// Seconds per attack, 1..=600.
    #[arg(long, value_name = "S", default_value_t = 10.0, value_parser = attack_secs)]
    secs: f64,
    /// The server's process id, to read its RSS.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Stop an attack once the server grew by this much.
    #[arg(long, value_name = "MB", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    rss_cap_mb: u64,
}

/// The attacks `--attack` names, in the order given.
#[derive(Debug, Clone)]
struct AttackList(Vec<Attack>);

impl std::ops::Deref for AttackList {
    type Target = [Attack];
    fn deref(&self) -> &[Attack] {
        &self.0
    }
}

fn loopback_v4(s: &str) -> Result<SocketAddrV4, String> {
    match s.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) if a.ip().is_loopback() => Ok(a),
        Ok(_) => Err("must be an IPv4 loopback address (127.0.0.0/8)".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn attack_list(s: &str) -> Result<AttackList, String> {
    if s == "all" {
        return Ok(AttackList(Attack::ALL.to_vec()));
    }
    s.split(',')
        .map(|a| Attack::parse(a.trim()).ok_or_else(|| format!("unknown attack {:?}", a.trim())))
        .collect::<Result<_, _>>()
        .map(AttackList)
}

fn attack_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (1.0..=600.0).contains(&v) => Ok(v),
        _ => Err("not a number of seconds in 1..=600".into()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    println!(
        "attacking {} for {} s per attack{}",
        args.target,
        args.secs,
        args.pid.map_or_else(
            || " (no --pid: RSS not measured)".into(),
            |p| format!(", server pid {p}")
        )
    );
    let mut reports = Vec::new();
    for (i, &attack) in args.attacks.iter().enumerate() {
        let report = run_attack(&args, attack);
        println!("{}", report.line());
        reports.push(report);
        if attack.leaves_half_open() && i + 1 < args.attacks.len() {
            // So that the next attack does not measure this one's aftermath.
            println!(
                "   (waiting {} s for its half-open handshakes to expire)",
                COOLDOWN.as_secs()
            );
            std::thread::sleep(COOLDOWN);
        }
    }
    print_table(&reports);
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------------
// Measurement: the server's memory, the context an attack runs in, and its report

fn read_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

/// The server's resident memory, sampled by the probe thread.
struct RssWatch {
    pid: Option<u32>,
    before: Option<u64>,
    peak: AtomicU64,
    cap_kb: u64,
    capped: AtomicBool,
}

impl RssWatch {
    fn new(pid: Option<u32>, cap_mb: u64) -> Self {
        let before = pid.and_then(read_rss_kb);
        Self {
            pid,
            before,
            peak: AtomicU64::new(before.unwrap_or(0)),
            cap_kb: cap_mb * 1024,
            capped: AtomicBool::new(false),
        }
    }

    fn sample(&self) -> Option<u64> {
        let kb = read_rss_kb(self.pid?)?;
        self.peak.fetch_max(kb, Ordering::Relaxed);
        if self.before.is_some_and(|b| kb > b + self.cap_kb) {
            self.capped.store(true, Ordering::Relaxed);
        }
        Some(kb)
    }
}

/// What an attack needs to know.
struct Ctx<'a> {
    target: SocketAddrV4,
    key: ServerKey,
    deadline: Instant,
    /// The attack's number, which the probes' addresses carry.
    index: u8,
    /// The probe's address (frag-spoof forges it).
    probe_addr: Option<SocketAddr>,
    rss: &'a RssWatch,
}

impl Ctx<'_> {
    /// Whether the attack goes on: its time is not up and the server is under the RSS cap.
    fn running(&self) -> bool {
        Instant::now() < self.deadline && !self.rss.capped.load(Ordering::Relaxed)
    }

    fn target(&self) -> SocketAddr {
        SocketAddr::V4(self.target)
    }
}

/// What an attack body reports.
#[derive(Debug, Default)]
struct Outcome {
    packets: u64,
    bytes: u64,
    received: u64,
    /// migrate: octets that reached the victim address, octets sent from it.
    victim: Option<(u64, u64)>,
    /// The server's RSS at the end of the attack, before the attack's state was released.
    rss_after: Option<u64>,
    notes: Vec<String>,
    /// The failure the attack observed itself.
    failure: Option<String>,
    /// Why the attack could not run.
    skipped: Option<String>,
}

/// What the probes saw.
#[derive(Debug, Default)]
struct ProbeResult {
    connected: bool,
    /// Messages the probe meant to send during the attack (its rate times the time).
    echoes_wanted: u64,
    /// Messages its send queue took (fewer than wanted when the queue was full).
    echoes_sent: u64,
    echoes_returned: u64,
    /// Echoes that came back while the attack ran.
    returned_during: u64,
    lost: Option<String>,
    fresh_tried: u64,
    fresh_ok: u64,
    fresh_failures: Vec<String>,
    fresh_ms: Vec<u128>,
}

#[derive(Debug)]
enum Verdict {
    Held,
    Failed(Vec<String>),
    Skipped(String),
}

#[derive(Debug)]
struct Report {
    attack: Attack,
    outcome: Outcome,
    probe: ProbeResult,
    rss_before: Option<u64>,
    rss_peak: Option<u64>,
    verdict: Verdict,
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 10_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 10_000 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

impl Report {
    fn amplification(&self) -> Option<f64> {
        let (got, sent) = self
            .outcome
            .victim
            .unwrap_or((self.outcome.received, self.outcome.bytes));
        (sent > 0).then(|| got as f64 / sent as f64)
    }

    fn rss_text(&self) -> String {
        match (self.rss_before, self.outcome.rss_after, self.rss_peak) {
            (Some(b), Some(a), Some(p)) => {
                format!("{:.1} -> {:.1} MiB (peak {:.1})", mib(b), mib(a), mib(p))
            }
            (Some(b), None, _) => format!("{:.1} -> ? MiB", mib(b)),
            _ => "-".into(),
        }
    }

    fn verdict_text(&self) -> String {
        match &self.verdict {
            Verdict::Held => "server held".into(),
            Verdict::Failed(why) => format!("FAILED: {}", why.join("; ")),
            Verdict::Skipped(why) => format!("skipped: {why}"),
        }
    }

    fn line(&self) -> String {
        let o = &self.outcome;
        let p = &self.probe;
        let mut s = format!(
            "[{}] sent {} packets / {}, received {}",
            self.attack,
            o.packets,
            human(o.bytes),
            human(o.received)
        );
        if let Some((at_v, from_v)) = o.victim {
            s += &format!(
                ", at victim {} for {} sent from it",
                human(at_v),
                human(from_v)
            );
        }
        if let Some(a) = self.amplification() {
            s += &format!(" (amplification {a:.2})");
        }
        s += &format!(
            ", fresh probes {}/{} connected, echoes {}/{} ({} during the attack{}), RSS {}: {}",
            p.fresh_ok,
            p.fresh_tried,
            p.echoes_returned,
            p.echoes_wanted,
            p.returned_during,
            if p.echoes_sent < p.echoes_wanted {
                format!("; the send queue took only {}", p.echoes_sent)
            } else {
                String::new()
            },
            self.rss_text(),
            self.verdict_text()
        );
        for n in &o.notes {
            s += &format!("\n    {n}");
        }
        if !p.fresh_failures.is_empty() {
            s += &format!(
                "\n    fresh probe failures: {}",
                p.fresh_failures.join(", ")
            );
        }
        if !p.fresh_ms.is_empty() {
            let ms: Vec<String> = p.fresh_ms.iter().map(|m| format!("{m} ms")).collect();
            s += &format!("\n    fresh probes connected in {}", ms.join(", "));
        }
        s
    }
}

fn print_table(reports: &[Report]) {
    println!();
    println!(
        "{:<18} {:>9} {:>10} {:>10} {:>7} {:>6} {:>11} {:>22}  result",
        "attack", "packets", "sent", "received", "amp", "fresh", "echoes", "RSS MiB before->after"
    );
    for r in reports {
        let rss = match (r.rss_before, r.outcome.rss_after) {
            (Some(b), Some(a)) => format!("{:.1} -> {:.1}", mib(b), mib(a)),
            _ => "-".into(),
        };
        let amp = r
            .amplification()
            .map_or_else(|| "-".into(), |a| format!("{a:.2}"));
        println!(
            "{:<18} {:>9} {:>10} {:>10} {:>7} {:>6} {:>11} {:>22}  {}",
            r.attack.to_string(),
            r.outcome.packets,
            human(r.outcome.bytes),
            human(
                r.outcome
                    .victim
                    .map_or(r.outcome.received, |(at_v, _)| at_v)
            ),
            amp,
            format!("{}/{}", r.probe.fresh_ok, r.probe.fresh_tried),
            format!("{}/{}", r.probe.echoes_returned, r.probe.echoes_wanted),
            rss,
            r.verdict_text()
        );
    }
    println!("(migrate: received = octets that reached the victim address, amp = that / octets sent from it)");
}

// ---------------------------------------------------------------------------------------------
// Running one attack

fn run_attack(args: &Args, attack: Attack) -> Report {
    println!("-- {attack}: {} s", args.secs);
    let mut report = Report {
        attack,
        outcome: Outcome::default(),
        probe: ProbeResult::default(),
        rss_before: None,
        rss_peak: None,
        verdict: Verdict::Held,
    };
    if attack.needs_raw_socket() {
        if let Err(e) = Forger::new() {
            report.verdict = Verdict::Skipped(format!(
                "needs root (CAP_NET_RAW) for a raw socket to forge addresses: {e}"
            ));
            return report;
        }
    }
    let index = attack.number();
    let load = if attack == Attack::FragSpoof {
        ProbeLoad::Large
    } else {
        ProbeLoad::Small
    };
    let probe_ip = Ipv4Addr::new(127, 50, index, 1);
    let main = match connect_probe(probe_ip, args, PROBE_CONNECT) {
        Ok(d) => Some(d),
        Err(e) => {
            report.outcome.notes.push(format!(
                "the probe could not connect before the attack: {e}"
            ));
            None
        }
    };
    let probe_addr = main.as_ref().and_then(|d| d.local_addr().ok());
    let rss = RssWatch::new(args.pid, args.rss_cap_mb);
    report.rss_before = rss.before;
    let ctx = Ctx {
        target: args.target,
        key: args.key,
        deadline: Instant::now() + Duration::from_secs_f64(args.secs),
        index,
        probe_addr,
        rss: &rss,
    };
    let body_done = AtomicBool::new(false);
    let (outcome, probe) = std::thread::scope(|s| {
        let probe = s.spawn(|| run_probe(main, load, &ctx, &body_done));
        let mut out = Outcome::default();
        let result = match attack {
            Attack::Migrate => migrate(&ctx, &mut out),
            Attack::FragSpoof => frag_spoof(&ctx, &mut out),
            Attack::HeldOrdered => held_ordered(&ctx, &mut out),
            Attack::EmptyReliable => empty_reliable(&ctx, &mut out),
            Attack::Lz4Bomb => lz4_bomb(&ctx, &mut out),
            Attack::AuthRekey => auth_rekey(&ctx, &mut out),
            Attack::HalfopenPorts => halfopen_ports(&ctx, &mut out),
            Attack::SlotHog => slot_hog(&ctx, &mut out),
            Attack::AuthFlood => auth_flood(&ctx, &mut out),
        };
        if let Err(e) = result {
            if out.packets == 0 {
                out.skipped = Some(e);
            } else {
                out.notes.push(format!("the attack stopped: {e}"));
            }
        }
        if out.rss_after.is_none() {
            out.rss_after = rss.sample();
        }
        body_done.store(true, Ordering::Relaxed);
        (out, probe.join().expect("the probe thread does not panic"))
    });
    report.outcome = outcome;
    report.probe = probe;
    report.rss_peak = args.pid.map(|_| rss.peak.load(Ordering::Relaxed));
    if rss.capped.load(Ordering::Relaxed) {
        report.outcome.notes.push(format!(
            "stopped early: the server grew by more than {} MB",
            args.rss_cap_mb
        ));
    }
    report.verdict = verdict(&report, args);
    report
}

fn verdict(r: &Report, args: &Args) -> Verdict {
    if let Some(why) = &r.outcome.skipped {
        return Verdict::Skipped(why.clone());
    }
    let mut failures: Vec<String> = r.outcome.failure.iter().cloned().collect();
    if let Some(pid) = args.pid {
        if read_rss_kb(pid).is_none() {
            failures.push("the server process is gone".into());
        }
    }
    let p = &r.probe;
    if p.fresh_tried > p.fresh_ok {
        failures.push(format!(
            "fresh probes could not connect ({} of {} failed)",
            p.fresh_tried - p.fresh_ok,
            p.fresh_tried
        ));
    }
    if !p.connected {
        failures.push("the probe could not connect before the attack".into());
    }
    if let Some(why) = &p.lost {
        failures.push(format!("the probe's connection ended: {why}"));
    }
    if p.echoes_wanted > 0 && (p.echoes_returned as f64) < 0.95 * p.echoes_wanted as f64 {
        failures.push(format!(
            "probe echoes: {} of {} came back",
            p.echoes_returned, p.echoes_wanted
        ));
    }
    if let (Some(before), Some(peak)) = (r.rss_before, r.rss_peak) {
        let grown = peak.saturating_sub(before);
        if grown > RSS_FAILURE_MIB * 1024 {
            failures.push(format!("server RSS grew by {:.0} MiB", mib(grown)));
        }
    }
    if failures.is_empty() {
        Verdict::Held
    } else {
        Verdict::Failed(failures)
    }
}

// ---------------------------------------------------------------------------------------------
// The probe: a real client echoing messages, and fresh clients trying to connect

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeLoad {
    /// 64-octet reliable messages, 100 per second.
    Small,
    /// 4000-octet reliable messages (5 fragments each), 400 per second.
    Large,
}

impl ProbeLoad {
    fn size(self) -> usize {
        match self {
            ProbeLoad::Small => 64,
            ProbeLoad::Large => 4000,
        }
    }

    fn rate(self) -> f64 {
        match self {
            ProbeLoad::Small => 100.0,
            ProbeLoad::Large => 400.0,
        }
    }
}

fn probe_message(seq: u64, size: usize) -> Vec<u8> {
    let mut m = vec![0u8; size];
    m[..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in m[8..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_add(i) as u8;
    }
    m
}

/// A real client connected from `ip`, within `timeout` (retrying after a refusal).
fn connect_probe(ip: Ipv4Addr, args: &Args, timeout: Duration) -> Result<ClientDriver, String> {
    let give_up = Instant::now() + timeout;
    let mut last = String::from("no attempt");
    while Instant::now() < give_up {
        let mut config = ClientConfig::new(args.key);
        config.handshake_timeout = give_up.saturating_duration_since(Instant::now());
        let mut d = ClientDriver::connect_from(
            SocketAddr::new(IpAddr::V4(ip), 0),
            config,
            SocketAddr::V4(args.target),
            SocketConfig::default(),
        )
        .map_err(|e| e.to_string())?;
        loop {
            match d.run_until_event(Some(Duration::from_millis(50))) {
                Ok(Some(Event::Connected { .. })) => return Ok(d),
                Ok(Some(Event::Disconnected { reason, .. })) => {
                    last = reason.to_string();
                    break;
                }
                Ok(_) if Instant::now() >= give_up => return Err(format!("no answer ({last})")),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(last)
}

/// Closes a client gracefully, driving it for at most a second.
fn close_client(d: &mut ClientDriver) {
    d.disconnect("probe done");
    let give_up = Instant::now() + Duration::from_secs(1);
    while !d.client().is_closed() && Instant::now() < give_up {
        let _ = d.run_until_event(Some(Duration::from_millis(20)));
    }
}

/// Echoes messages on the probe connection while the attack runs (and waits for the last
/// echoes after it), and has a fresh client try to connect every couple of seconds.
fn run_probe(
    mut main: Option<ClientDriver>,
    load: ProbeLoad,
    ctx: &Ctx<'_>,
    body_done: &AtomicBool,
) -> ProbeResult {
    let mut r = ProbeResult {
        connected: main.is_some(),
        ..ProbeResult::default()
    };
    let start = Instant::now();
    let mut next_fresh = start + Duration::from_millis(500);
    let mut fresh: Option<(ClientDriver, Instant)> = None;
    let mut closing: Vec<(ClientDriver, Instant)> = Vec::new();
    let mut next_rss = start;
    let mut attack_over_at: Option<Instant> = None;
    // However the attack goes, the probe ends by then.
    let hard_stop = ctx.deadline + Duration::from_secs(60);
    loop {
        let now = Instant::now();
        // The attack is over at its deadline, or earlier if its body gave up.
        let attacking = ctx.running() && !body_done.load(Ordering::Relaxed);
        if !attacking && attack_over_at.is_none() {
            attack_over_at = Some(now);
        }
        if let Some(m) = main.as_mut() {
            let _ = m.poll_once();
            while let Some(event) = m.poll_event() {
                match event {
                    Event::Message { data, .. } => {
                        if data.len() == load.size() {
                            r.echoes_returned += 1;
                            r.returned_during += u64::from(attacking);
                        }
                        m.recycle(data);
                    }
                    Event::Disconnected { reason, .. } => r.lost = Some(reason.to_string()),
                    _ => {}
                }
            }
            if attacking {
                r.echoes_wanted = ((now - start).as_secs_f64() * load.rate()) as u64;
                // A full send queue (or anything else) refuses: the rest waits a tick.
                while r.echoes_sent < r.echoes_wanted
                    && m.send(PROBE_CHANNEL, &probe_message(r.echoes_sent, load.size()))
                        .is_ok()
                {
                    r.echoes_sent += 1;
                }
            }
            if r.lost.is_some() {
                main = None;
            }
        }
        if attacking {
            match fresh.take() {
                None => {
                    if now >= next_fresh {
                        r.fresh_tried += 1;
                        let host = (r.fresh_tried % 250) as u8 + 1;
                        let ip = Ipv4Addr::new(127, 51, ctx.index, host);
                        let mut config = ClientConfig::new(ctx.key);
                        // The probe gives up at FRESH_TIMEOUT, before the client would.
                        config.handshake_timeout = FRESH_TIMEOUT + Duration::from_secs(1);
                        match ClientDriver::connect_from(
                            SocketAddr::new(IpAddr::V4(ip), 0),
                            config,
                            ctx.target(),
                            SocketConfig::default(),
                        ) {
                            Ok(d) => fresh = Some((d, now)),
                            Err(e) => {
                                r.fresh_failures.push(format!("bind {ip}: {e}"));
                                next_fresh = now + FRESH_EVERY;
                            }
                        }
                    }
                }
                Some((mut d, since)) => {
                    let _ = d.poll_once();
                    let mut result = None;
                    while let Some(event) = d.poll_event() {
                        match event {
                            Event::Connected { .. } => result = Some(Ok(now - since)),
                            Event::Disconnected { reason, .. } => {
                                result = Some(Err(reason.to_string()));
                            }
                            _ => {}
                        }
                    }
                    if result.is_none() && now >= since + FRESH_TIMEOUT {
                        result = Some(Err("no answer within 3 s".into()));
                    }
                    match result {
                        None => fresh = Some((d, since)),
                        Some(Ok(took)) => {
                            r.fresh_ok += 1;
                            r.fresh_ms.push(took.as_millis());
                            d.disconnect("probe done");
                            closing.push((d, now));
                            next_fresh = now + FRESH_EVERY;
                        }
                        Some(Err(why)) => {
                            r.fresh_failures.push(why);
                            next_fresh = now + FRESH_EVERY;
                        }
                    }
                }
            }
        } else if let Some((_, since)) = fresh.take() {
            // The attack ended during this try: it counts as a failure if it had a fair
            // chance (a second), and not at all otherwise.
            let tried = now - since;
            if tried >= Duration::from_secs(1) {
                r.fresh_failures.push(format!(
                    "still connecting after {} ms when the attack ended",
                    tried.as_millis()
                ));
            } else {
                r.fresh_tried -= 1;
            }
        }
        closing.retain_mut(|(d, since)| {
            let _ = d.poll_once();
            while d.poll_event().is_some() {}
            !d.client().is_closed() && now < *since + Duration::from_secs(1)
        });
        if now >= next_rss {
            ctx.rss.sample();
            next_rss = now + Duration::from_millis(250);
        }
        if let Some(over) = attack_over_at {
            let all_back = r.echoes_returned >= r.echoes_sent;
            let drained = all_back || main.is_none() || now >= over + DRAIN;
            if drained && body_done.load(Ordering::Relaxed) {
                break;
            }
        }
        if now >= hard_stop {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if let Some(m) = main.as_mut() {
        close_client(m);
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Forging source addresses: a raw IPv4 socket with IP_HDRINCL

/// Sends UDP datagrams with any (loopback) source address.
struct Forger {
    sock: Socket,
    id: u16,
}

impl Forger {
    fn new() -> io::Result<Self> {
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))?;
        sock.set_header_included_v4(true)?;
        // A raw UDP socket also receives a copy of every UDP datagram; it is never read.
        let _ = sock.set_recv_buffer_size(0);
        Ok(Self { sock, id: 0 })
    }

    /// Sends `payload` from `src` to `dst` (both on loopback) and returns its length.
    fn send(&mut self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> io::Result<usize> {
        assert!(
            src.ip().is_loopback() && dst.ip().is_loopback(),
            "forged datagrams stay on loopback"
        );
        self.id = self.id.wrapping_add(1);
        let total = 20 + 8 + payload.len();
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&self.id.to_be_bytes());
        // Don't fragment, TTL 64, UDP, checksum below.
        p.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]);
        p.extend_from_slice(&src.ip().octets());
        p.extend_from_slice(&dst.ip().octets());
        let sum = ipv4_checksum(&p);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(&src.port().to_be_bytes());
        p.extend_from_slice(&dst.port().to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
        p.extend_from_slice(payload);
        let to = SockAddr::from(SocketAddrV4::new(*dst.ip(), 0));
        self.sock.send_to(&p, &to)?;
        Ok(payload.len())
    }
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

fn v4(addr: SocketAddr) -> Option<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// A cheater's raw session: its own handshake, then sealed packets with packet numbers it
// chooses; it acknowledges nothing

struct RawSession {
    sock: UdpSocket,
    c2s: PacketKey,
    s2c: PacketKey,
    id: u64,
    next_pn: u32,
    /// The largest packet number seen from the server.
    largest_seen: Option<u32>,
    started: Instant,
    compressed: Vec<u8>,
    payload: Vec<u8>,
    datagrams_sent: u64,
    bytes_sent: u64,
    bytes_received: u64,
    /// Stateless retries the server answered the handshake with.
    retries: u32,
    /// Packet numbers the server acknowledged, when tracked.
    acked: Option<HashSet<u32>>,
    /// The code of a sealed ERROR the server closed this session with.
    closed_by_server: Option<ErrorCode>,
}

impl RawSession {
    /// Runs the handshake of `docs/PROTOCOL.md` §3 with the server at `target`, whose key is
    /// `key`, from a socket bound to `ip`.
    fn connect(ip: Ipv4Addr, target: SocketAddr, key: &ServerKey) -> Result<Self, String> {
        let h = raw::handshake(ip, target, key)?;
        h.sock
            .set_nonblocking(true)
            .map_err(|e| format!("nonblocking: {e}"))?;
        Ok(Self {
            sock: h.sock,
            c2s: h.keys.client_to_server,
            s2c: h.keys.server_to_client,
            id: h.id,
            next_pn: 1,
            largest_seen: Some(0),
            started: h.started,
            compressed: Vec::new(),
            payload: Vec::new(),
            datagrams_sent: h.sends,
            bytes_sent: h.sent,
            bytes_received: h.received,
            retries: h.retries,
            acked: None,
            closed_by_server: None,
        })
    }

    /// Seals `plaintext` as packet number `pn` and returns its datagrams (several when it
    /// needs fragmenting). Sealing the same plaintext with the same pn gives the same bytes.
    fn seal_pn(
        &mut self,
        pn: u32,
        fields: TypeFields,
        plaintext: &[u8],
        opts: SendOptions,
    ) -> Vec<Vec<u8>> {
        let header = encode_into(
            &mut self.compressed,
            fields,
            plaintext,
            opts,
            Seal::Sealed {
                key: &self.c2s,
                packet_number: pn,
            },
            &mut self.payload,
        )
        .expect("the attacks' plaintexts fit one packet");
        let count = header.fragment.map_or(1, |f| usize::from(f.count));
        (0..count)
            .map(|i| {
                let mut d = vec![0u8; MAX_DATA_DATAGRAM];
                let n = write_datagram(&header, &fields, &self.payload, i, &mut d)
                    .expect("the buffer holds a datagram");
                d.truncate(n);
                d
            })
            .collect()
    }

    /// Seals `plaintext` with the next packet number.
    fn seal(
        &mut self,
        fields: TypeFields,
        plaintext: &[u8],
        opts: SendOptions,
    ) -> (u32, Vec<Vec<u8>>) {
        let pn = self.next_pn;
        self.next_pn += 1;
        (pn, self.seal_pn(pn, fields, plaintext, opts))
    }

    fn send_datagrams(&mut self, datagrams: &[Vec<u8>]) -> io::Result<()> {
        for d in datagrams {
            loop {
                match self.sock.send(d) {
                    Ok(n) => {
                        self.datagrams_sent += 1;
                        self.bytes_sent += n as u64;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Seals and sends; returns the packet number.
    fn send(&mut self, fields: TypeFields, plaintext: &[u8], opts: SendOptions) -> io::Result<u32> {
        let (pn, datagrams) = self.seal(fields, plaintext, opts);
        self.send_datagrams(&datagrams)?;
        Ok(pn)
    }

    /// A PING, which keeps the server's idle timer from running out.
    fn ping(&mut self) -> io::Result<u32> {
        let micros = self.started.elapsed().as_micros() as u64;
        self.send(
            TypeFields::Heartbeat(Heartbeat::Ping),
            &micros.to_be_bytes(),
            SendOptions::default(),
        )
    }

    /// The close (a sealed RELIABLE ERROR 2.2), as datagrams to send from wherever.
    fn close_datagrams(&mut self) -> Vec<Vec<u8>> {
        let (_, datagrams) = self.seal(
            TypeFields::Error(ErrorCode::ClientDisconnect),
            b"attack over",
            SendOptions {
                reliable: true,
                ..SendOptions::default()
            },
        );
        datagrams
    }

    /// Closes the session: the same ERROR three times, 100 ms apart (a server still busy
    /// with the attack may drop the first).
    fn close(&mut self) {
        let datagrams = self.close_datagrams();
        for _ in 0..3 {
            let _ = self.send_datagrams(&datagrams);
            std::thread::sleep(Duration::from_millis(100));
            self.drain();
        }
    }

    /// Reads what the server sent (without blocking), counting it, noting the packet
    /// numbers and, when tracked, the acknowledgements.
    fn drain(&mut self) {
        let mut buf = [0u8; 2048];
        for _ in 0..10_000 {
            let Ok(n) = self.sock.recv(&mut buf) else {
                return;
            };
            self.bytes_received += n as u64;
            self.on_datagram(&buf[..n]);
        }
    }

    fn on_datagram(&mut self, datagram: &[u8]) {
        let Ok(packet) = Packet::parse(datagram) else {
            return;
        };
        if !packet.header.flags.contains(Flags::ENCRYPTED) {
            return;
        }
        let pn = packet_number(&packet.header);
        self.largest_seen = Some(self.largest_seen.map_or(pn, |l| l.max(pn)));
        match packet.body {
            Body::Data {
                fields: TypeFields::Ack(ack),
                ..
            } => {
                // Map the 16-bit ACK ID to the newest of our packet numbers it can name.
                let Some(acked) = self.acked.as_mut() else {
                    return;
                };
                let newest = self.next_pn - 1;
                let back = u32::from((newest as u16).wrapping_sub(ack.ack_id));
                let Some(p) = newest.checked_sub(back) else {
                    return;
                };
                acked.insert(p);
                for i in 0..16u32 {
                    if ack.ack_bits & (0x8000 >> i) != 0 {
                        if let Some(q) = p.checked_sub(1 + i) {
                            acked.insert(q);
                        }
                    }
                }
            }
            Body::Data {
                fields: TypeFields::Error(code),
                ..
            } if self.open_from_server(datagram).is_some() => {
                self.closed_by_server = Some(code);
            }
            _ => {}
        }
    }

    /// Opens an unfragmented datagram the server sealed for this session. (The tool also
    /// plays the victim of `migrate`, so it can tell a path challenge from other traffic.)
    fn open_from_server(&self, datagram: &[u8]) -> Option<(TypeFields, Vec<u8>)> {
        let packet = Packet::parse(datagram).ok()?;
        if packet.header.fragment.is_some() || !packet.header.flags.contains(Flags::ENCRYPTED) {
            return None;
        }
        let Body::Data { fields, data } = packet.body else {
            return None;
        };
        let mut sealed = data.to_vec();
        let mut decoder = Decoder::new();
        let opened = decoder
            .open(&packet.header, &fields, &mut sealed, Some(&self.s2c))
            .ok()?;
        Some((fields, opened.plaintext.to_vec()))
    }

    /// Adds what the session sent and received to `out`, with a note.
    fn account(&self, name: &str, out: &mut Outcome) {
        out.packets += self.datagrams_sent;
        out.bytes += self.bytes_sent;
        out.received += self.bytes_received;
        let mut note = format!("{name}: client id {}", self.id);
        if self.retries > 0 {
            note += &format!(", {} stateless retries answered", self.retries);
        }
        if let Some(code) = self.closed_by_server {
            note += &format!(", closed by the server with {code}");
        }
        out.notes.push(note);
    }
}

const RELIABLE: SendOptions = SendOptions {
    reliable: true,
    checksum: false,
    compress: false,
};
const RELIABLE_COMPRESSED: SendOptions = SendOptions {
    reliable: true,
    checksum: false,
    compress: true,
};

/// Whether `every` has passed since `last` (which then becomes now).
fn due(last: &mut Instant, every: Duration) -> bool {
    let now = Instant::now();
    if now >= *last + every {
        *last = now;
        true
    } else {
        false
    }
}

fn ms_sleep() {
    std::thread::sleep(Duration::from_millis(1));
}

// ---------------------------------------------------------------------------------------------
// 1. migrate: forge a packet from a victim address, predict the path challenge, redirect

fn migrate(ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), String> {
    let forger = Forger::new().map_err(|e| format!("raw socket: {e}"))?;
    let mut s = RawSession::connect(Ipv4Addr::new(127, 1, 1, 1), ctx.target(), &ctx.key)?;
    let victim = UdpSocket::bind((Ipv4Addr::new(127, 66, 1, 1), 0))
        .map_err(|e| format!("bind the victim: {e}"))?;
    victim
        .set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    let v = victim
        .local_addr()
        .ok()
        .and_then(v4)
        .expect("bound to IPv4");
    let mut at_v = VictimTally::default();
    let mut from_v = FromVictim {
        forger,
        victim: v,
        target: ctx.target,
        bytes: 0,
        datagrams: 0,
    };
    // Let the session settle, so that the server's next packet number is known.
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        s.drain();
        ms_sleep();
    }
    let last = s.largest_seen.unwrap_or(0);

    // Phase 1: one sealed packet (a PING) from V; count what the server sends V unasked.
    let micros = s.started.elapsed().as_micros() as u64;
    let (_, ping) = s.seal(
        TypeFields::Heartbeat(Heartbeat::Ping),
        &micros.to_be_bytes(),
        SendOptions::default(),
    );
    from_v.send(&ping)?;
    let started = Instant::now();
    let total = ctx.deadline.saturating_duration_since(started);
    let phase1_end = started + (total / 3).max(Duration::from_secs(2)).min(total);
    let mut keepalive = Instant::now();
    while ctx.running() && Instant::now() < phase1_end {
        s.drain();
        at_v.drain(&victim, &s);
        if due(&mut keepalive, Duration::from_secs(1)) {
            s.ping().map_err(|e| format!("send: {e}"))?;
        }
        ms_sleep();
    }
    let phase1 = (at_v.bytes, at_v.datagrams, from_v.bytes, started.elapsed());
    out.notes.push(format!(
        "unanswered challenge: 1 forged packet of {} octets from V drew {} octets in {} datagrams at V in {:.1} s",
        phase1.2,
        phase1.0,
        phase1.1,
        phase1.3.as_secs_f64()
    ));

    // Phase 2: answer the challenge from V with the values the cheater predicts.
    let candidates: Vec<u32> = (last + 1..=last + 8).collect();
    for &pn in &candidates {
        let value = (u64::from(pn) << 16) ^ 1;
        let mut plain = b"path".to_vec();
        plain.extend_from_slice(&value.to_be_bytes());
        let (_, pong) = s.seal(
            TypeFields::Heartbeat(Heartbeat::Pong),
            &plain,
            SendOptions::default(),
        );
        from_v.send(&pong)?;
    }
    let wait = Instant::now() + Duration::from_millis(300);
    while Instant::now() < wait {
        s.drain();
        at_v.drain(&victim, &s);
        ms_sleep();
    }
    let predicted = at_v.challenge.map(|value| {
        let pn = (value >> 16) as u32;
        (value, candidates.contains(&pn) && value & 0xFFFF == 1)
    });
    match predicted {
        Some((value, true)) => out.notes.push(format!(
            "challenge value {value:#x} seen at V was among the 8 predicted from pn {last}"
        )),
        Some((value, false)) => out.notes.push(format!(
            "challenge value {value:#x} seen at V was not predicted (from pn {last})"
        )),
        None => out.notes.push("no path challenge reached V".into()),
    }
    let moved_at = at_v.other;

    // Phase 3: compressed echo requests (4 x 60,000 zero octets, ~1 KB on the wire) from V,
    // and a PING every second from V to keep the connection alive.
    let zeros = vec![0u8; 60_000];
    let mut bomb = Vec::new();
    for _ in 0..4 {
        frame::put_message(&mut bomb, 2, None, &zeros);
    }
    let mut last_bomb = Instant::now() - Duration::from_secs(1);
    let mut keepalive = Instant::now();
    while ctx.running() {
        if due(&mut last_bomb, Duration::from_millis(250)) {
            let (_, datagrams) = s.seal(TypeFields::Default, &bomb, RELIABLE_COMPRESSED);
            from_v.send(&datagrams)?;
        }
        if due(&mut keepalive, Duration::from_secs(1)) {
            let micros = s.started.elapsed().as_micros() as u64;
            let (_, ping) = s.seal(
                TypeFields::Heartbeat(Heartbeat::Ping),
                &micros.to_be_bytes(),
                SendOptions::default(),
            );
            from_v.send(&ping)?;
        }
        s.drain();
        at_v.drain(&victim, &s);
        ms_sleep();
    }
    out.rss_after = ctx.rss.sample();
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        s.drain();
        at_v.drain(&victim, &s);
        ms_sleep();
    }
    let moved = at_v.other > 0 || moved_at > 0;
    out.notes.push(format!(
        "at V: {} octets in {} datagrams ({} path challenges, {} other datagrams{})",
        at_v.bytes,
        at_v.datagrams,
        at_v.challenges,
        at_v.other,
        if moved {
            ": the connection moved to V"
        } else {
            ""
        }
    ));
    // Close from V (where the connection may now be) and from the cheater's own address.
    let close = s.close_datagrams();
    from_v.send(&close)?;
    s.close();
    s.account("cheater", out);
    // The cheater's own traffic is in `out`; the victim figures are what the attack is about.
    let forged = from_v.datagrams;
    let from_v = from_v.bytes;
    out.packets += forged;
    out.bytes += from_v;
    out.victim = Some((at_v.bytes, from_v));
    if at_v.bytes > 3 * from_v {
        out.failure = Some(format!(
            "{} octets reached the victim for {} sent from its address ({:.1}x > 3x){}",
            at_v.bytes,
            from_v,
            at_v.bytes as f64 / from_v.max(1) as f64,
            if moved {
                "; the predicted challenge moved the connection there"
            } else {
                ""
            }
        ));
    } else if moved {
        out.failure = Some("the connection moved to the victim address".into());
    }
    Ok(())
}

/// Sends datagrams forged from the victim address, counting them.
struct FromVictim {
    forger: Forger,
    victim: SocketAddrV4,
    target: SocketAddrV4,
    bytes: u64,
    datagrams: u64,
}

impl FromVictim {
    fn send(&mut self, datagrams: &[Vec<u8>]) -> Result<(), String> {
        for d in datagrams {
            let n = self
                .forger
                .send(self.victim, self.target, d)
                .map_err(|e| format!("forge: {e}"))?;
            self.bytes += n as u64;
            self.datagrams += 1;
        }
        Ok(())
    }
}

/// What arrived at the victim address.
#[derive(Debug, Default)]
struct VictimTally {
    bytes: u64,
    datagrams: u64,
    challenges: u64,
    /// Datagrams that are not path challenges (once the connection moved there).
    other: u64,
    /// The first challenge value seen.
    challenge: Option<u64>,
}

impl VictimTally {
    fn drain(&mut self, sock: &UdpSocket, session: &RawSession) {
        let mut buf = [0u8; 2048];
        for _ in 0..10_000 {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                return;
            };
            self.bytes += n as u64;
            self.datagrams += 1;
            match session.open_from_server(&buf[..n]) {
                Some((TypeFields::Heartbeat(Heartbeat::Ping), plain))
                    if plain.len() == 12 && plain.starts_with(b"path") =>
                {
                    self.challenges += 1;
                    let value = u64::from_be_bytes(plain[4..12].try_into().expect("8 octets"));
                    self.challenge.get_or_insert(value);
                }
                _ => self.other += 1,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. frag-spoof: forged last fragments that reserve the probe's reassembly budget

/// Forged fragments per round, and how many of them announce 255 fragments; the others
/// announce 2. Against the default reassembly limits (32 packets, 2 MiB, each packet
/// reserving Fragment Number x 988 octets) 8 x 255 fill the octets but leave room for 16
/// packets of 5 fragments; the 24 small ones take the remaining packet slots.
const FORGED_PER_ROUND: usize = 32;
const FORGED_LARGE: usize = 8;

/// A 13-octet sealed-looking last fragment: DEFAULT, ENCRYPTED | FRAG, Fragment ID
/// `count - 1` of `count` (a last fragment may be short), a random packet number far above
/// the window, 5 random octets.
fn forged_fragment(count: u8) -> [u8; 13] {
    let mut d = [0u8; 13];
    OsRng.fill_bytes(&mut d);
    d[0] = PacketType::Default.to_bits();
    d[1] = Flags::ENCRYPTED.with(Flags::FRAG).bits();
    d[4] = count - 1;
    d[5] = count;
    d[6] |= 0x80; // Init Vector >= 0x8000: packet number >= 2^31
    d
}

fn frag_spoof(ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), String> {
    let p = ctx
        .probe_addr
        .and_then(v4)
        .ok_or("no probe connection to forge fragments from")?;
    let mut forger = Forger::new().map_err(|e| format!("raw socket: {e}"))?;
    let mut last = Instant::now() - Duration::from_secs(2);
    while ctx.running() {
        if due(&mut last, Duration::from_secs(2)) {
            for i in 0..FORGED_PER_ROUND {
                let d = forged_fragment(if i < FORGED_LARGE { 255 } else { 2 });
                out.bytes += forger
                    .send(p, ctx.target, &d)
                    .map_err(|e| format!("forge: {e}"))? as u64;
                out.packets += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    out.notes.push(format!(
        "forged from the probe's address {p}; any answer goes to the probe, so nothing comes back to the tool"
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. held-ordered: ordered messages 1..=1023 that wait forever for message 0

/// Size of each held message.
const HELD_SIZE: usize = 16 * 1024;
/// Datagrams per second the four cheaters send together.
const HELD_RATE: f64 = 12_000.0;

fn held_ordered(ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), String> {
    let mut sessions = Vec::new();
    for i in 0..4 {
        let mut s = RawSession::connect(Ipv4Addr::new(127, 3, 3, 1 + i), ctx.target(), &ctx.key)?;
        s.acked = Some(HashSet::new());
        sessions.push(s);
    }
    let message = vec![0x5Au8; HELD_SIZE];
    let plaintext = |seq: u16| {
        let mut p = Vec::with_capacity(HELD_SIZE + 8);
        frame::put_message(&mut p, 3, Some(seq), &message);
        p
    };
    // Each session's packets: (packet number, seq).
    let mut packets: Vec<Vec<(u32, u16)>> = vec![Vec::new(); sessions.len()];
    let start = Instant::now();
    let mut datagrams = 0u64;
    let mut pace = |n: usize| {
        datagrams += n as u64;
        while ctx.running() && datagrams as f64 > start.elapsed().as_secs_f64() * HELD_RATE {
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    'first: for seq in 1..=1023u16 {
        for (s, sent) in sessions.iter_mut().zip(&mut packets) {
            if !ctx.running() {
                break 'first;
            }
            let plain = plaintext(seq);
            let (pn, dgs) = s.seal(TypeFields::Default, &plain, RELIABLE);
            s.send_datagrams(&dgs).map_err(|e| format!("send: {e}"))?;
            sent.push((pn, seq));
            s.drain();
            pace(dgs.len());
        }
    }
    // Resend what the server did not acknowledge (the same bytes: same pn, same plaintext).
    for _round in 0..3 {
        let wait = Instant::now() + Duration::from_millis(300);
        while ctx.running() && Instant::now() < wait {
            sessions.iter_mut().for_each(RawSession::drain);
            ms_sleep();
        }
        let mut resent = 0;
        for (s, sent) in sessions.iter_mut().zip(&packets) {
            for &(pn, seq) in sent {
                if !ctx.running() {
                    break;
                }
                if s.acked.as_ref().is_some_and(|a| a.contains(&pn)) {
                    continue;
                }
                let dgs = s.seal_pn(pn, TypeFields::Default, &plaintext(seq), RELIABLE);
                s.send_datagrams(&dgs).map_err(|e| format!("send: {e}"))?;
                s.drain();
                resent += 1;
                pace(dgs.len());
            }
        }
        if resent == 0 {
            break;
        }
    }
    // Keep the connections alive; message 0 never comes.
    let mut keepalive = Instant::now();
    while ctx.running() {
        if due(&mut keepalive, Duration::from_secs(1)) {
            for s in &mut sessions {
                s.ping().map_err(|e| format!("send: {e}"))?;
            }
        }
        sessions.iter_mut().for_each(RawSession::drain);
        std::thread::sleep(Duration::from_millis(5));
    }
    out.rss_after = ctx.rss.sample();
    let held: usize = sessions
        .iter()
        .zip(&packets)
        .map(|(s, sent)| {
            let acked = s.acked.as_ref().expect("tracked");
            sent.iter().filter(|(pn, _)| acked.contains(pn)).count()
        })
        .sum();
    let sent: usize = packets.iter().map(Vec::len).sum();
    out.notes.push(format!(
        "{held} of {sent} messages of {HELD_SIZE} octets (seq 1..=1023 on channel 3, never 0) acknowledged: {:.1} MiB the server must hold",
        (held * HELD_SIZE) as f64 / 1048576.0
    ));
    for (i, s) in sessions.iter_mut().enumerate() {
        s.close();
        s.account(&format!("cheater {}", i + 1), out);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. empty-reliable: packets full of empty reliable messages, never acknowledged

fn empty_reliable(ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), String> {
    let mut s = RawSession::connect(Ipv4Addr::new(127, 4, 4, 4), ctx.target(), &ctx.key)?;
    let mut plain = Vec::new();
    while plain.len() + frame::message_frame_len(0, false) <= PACKET_PLAINTEXT {
        frame::put_message(&mut plain, 2, None, &[]);
    }
    let per_packet = plain.len() / frame::message_frame_len(0, false);
    let mut packets = 0u64;
    while ctx.running() {
        for _ in 0..64 {
            s.send(TypeFields::Default, &plain, RELIABLE)
                .map_err(|e| format!("send: {e}"))?;
            packets += 1;
        }
        s.drain();
    }
    out.rss_after = ctx.rss.sample();
    out.notes.push(format!(
        "{} empty reliable messages ({per_packet} per packet) on channel 2, none of the echoes acknowledged",
        packets * per_packet as u64
    ));
    s.close();
    s.account("cheater", out);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. lz4-bomb: ~1 KB compressed packets that decompress to 240 KB

/// Octets per second the bomb sends.
const BOMB_RATE: f64 = 98_000.0;

fn lz4_bomb(ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), String> {
    let mut s = RawSession::connect(Ipv4Addr::new(127, 5, 5, 5), ctx.target(), &ctx.key)?;
    let zeros = vec![0u8; 60_000];
    let mut plain = Vec::new();
    for _ in 0..4 {
        frame::put_message(&mut plain, 2, None, &zeros);
    }
    let start = Instant::now();
    let first = s.bytes_sent;
    let mut packets = 0u64;
    while ctx.running() {
        if ((s.bytes_sent - first) as f64) < start.elapsed().as_secs_f64() * BOMB_RATE {
            s.send(TypeFields::Default, &plain, RELIABLE_COMPRESSED)
                .map_err(|e| format!("send: {e}"))?;
            packets += 1;
        } else {
            ms_sleep();
        }
        s.drain();
    }
    out.rss_after = ctx.rss.sample();
    let wire = s.bytes_sent - first;
    out.notes.push(format!(
        "{packets} packets, {} octets each on average, each decompressing to {} octets ({:.0}x): {:.1} MB of plaintext",
        wire / packets.max(1),
        plain.len(),
        (packets * plain.len() as u64) as f64 / wire.max(1) as f64,
        (packets * plain.len() as u64) as f64 / 1e6
    ));
    s.close();
    s.account("cheater", out);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6, 7, 9: AUTH floods

/// Client AUTH datagrams (160 octets) of pre-generated keys.
fn flood_auths() -> Vec<Vec<u8>> {
    (0..FLOOD_KEYS)
        .map(|_| client_auth(EphemeralKey::generate().public_bytes(), &[], None))
        .collect()
}

/// What came back to the flooding sockets.
#[derive(Debug, Default)]
struct Replies {
    bytes: u64,
    server_auths: u64,
    retries: u64,
    errors: u64,
    other: u64,
}

impl Replies {
    fn drain(&mut self, sock: &UdpSocket, buf: &mut [u8]) {
        for _ in 0..64 {
            let Ok(n) = sock.recv(buf) else {
                return;
            };
            self.bytes += n as u64;
            match Packet::parse(&buf[..n]).map(|p| p.body) {
                Ok(Body::Auth(f)) if f.public_key.is_empty() => self.retries += 1,
                Ok(Body::Auth(_)) => self.server_auths += 1,
                Ok(Body::Data {
                    fields: TypeFields::Error(_),
                    ..
                }) => self.errors += 1,
                _ => self.other += 1,
            }
        }
    }
}

/// Binds non-blocking sockets to `ips` (port chosen by the system).
fn bind_all(ips: impl Iterator<Item = Ipv4Addr>, out: &mut Outcome) -> Vec<UdpSocket> {
    let mut socks = Vec::new();
    let mut failed = None;
    for ip in ips {
        match UdpSocket::bind((ip, 0)) {
            Ok(s) => {
                let _ = s.set_nonblocking(true);
                socks.push(s);
            }
            Err(e) => {
                failed.get_or_insert(format!("bind {ip}: {e}"));
            }
        }
    }
    if let Some(e) = failed {
        out.notes.push(format!("only {} sockets: {e}", socks.len()));
    }
    socks
}

/// Sends AUTHs round-robin over `socks` (each a different key from the previous one on that
/// socket) at `rate` per second, or as fast as possible, until the attack ends.
fn flood(ctx: &Ctx<'_>, socks: &[UdpSocket], rate: Option<f64>, out: &mut Outcome) {
    let auths = flood_auths();
    let target = ctx.target();
    let mut replies = Replies::default();
    let mut buf = [0u8; 2048];
    let mut errors = 0u64;
    let start = Instant::now();
    let mut n = 0u64;
    while ctx.running() && !socks.is_empty() {
        let batch = match rate {
            Some(r) => ((start.elapsed().as_secs_f64() * r) as u64)
                .saturating_sub(n)
                .min(256),
            None => 256,
        };
        if batch == 0 {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        for _ in 0..batch {
            let sock = &socks[(n % socks.len() as u64) as usize];
            replies.drain(sock, &mut buf);
            let auth = &auths[(n % auths.len() as u64) as usize];
            match sock.send_to(auth, target) {
                Ok(k) => {
                    out.packets += 1;
                    out.bytes += k as u64;
                }
                Err(_) => errors += 1,
            }
            n += 1;
        }
    }
    out.rss_after = ctx.rss.sample();
    let secs = start.elapsed().as_secs_f64().max(0.001);
    std::thread::sleep(Duration::from_millis(300));
    for sock in socks {
        replies.drain(sock, &mut buf);
    }
    out.received = replies.bytes;
    out.notes.push(format!(
        "{} sockets, {:.0} AUTHs/s; answers: {} server AUTHs, {} stateless retries, {} ERRORs, {} other{}",
        socks.len(),
        out.packets as f64 / secs,
        replies.server_auths,
        replies.retries,
        replies.errors,
        replies.other,
        if errors > 0 {
            format!("; {errors} sends failed")
        } else {
            String::new()
        }
    ));
}

/// 9. auth-flood: 4096 source addresses, as fast as possible.
fn auth_flood(ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), String> {
    let ips = (0..4096u32).map(|i| Ipv4Addr::new(127, 10, (i / 250) as u8, (i % 250) as u8 + 1));
    let socks = bind_all(ips, out);
    flood(ctx, &socks, None, out);
    Ok(())
}

/// 7. halfopen-ports: one address, 2048 ports, 2000 AUTHs/s.
fn halfopen_ports(ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), String> {
    let socks = bind_all(std::iter::repeat_n(Ipv4Addr::new(127, 9, 9, 9), 2048), out);
    flood(ctx, &socks, Some(2000.0), out);
    Ok(())
}

/// 6. auth-rekey: one address, a different key each time, 2500 AUTHs/s.
fn auth_rekey(ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), String> {
    let socks = bind_all(std::iter::once(Ipv4Addr::new(127, 6, 6, 6)), out);
    flood(ctx, &socks, Some(2500.0), out);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. slot-hog: 64 real connections from one address

const HOG_IP: Ipv4Addr = Ipv4Addr::new(127, 8, 8, 8);
/// Connections the slot hog opens from it.
const HOGS: usize = 64;

/// Connects a client from `ip` while `others` keep being driven; the connect time or why not.
fn try_connect(
    ip: Ipv4Addr,
    ctx: &Ctx<'_>,
    others: &mut [ClientDriver],
) -> Result<Duration, String> {
    let mut config = ClientConfig::new(ctx.key);
    config.handshake_timeout = FRESH_TIMEOUT;
    let mut d = ClientDriver::connect_from(
        SocketAddr::new(IpAddr::V4(ip), 0),
        config,
        ctx.target(),
        SocketConfig::default(),
    )
    .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let result = loop {
        let _ = d.poll_once();
        match d.poll_event() {
            Some(Event::Connected { .. }) => break Ok(start.elapsed()),
            Some(Event::Disconnected { reason, .. }) => break Err(reason.to_string()),
            _ => {}
        }
        if start.elapsed() >= FRESH_TIMEOUT {
            break Err("no answer within 3 s".into());
        }
        for o in others.iter_mut() {
            let _ = o.poll_once();
            while o.poll_event().is_some() {}
        }
        ms_sleep();
    };
    if result.is_ok() {
        close_client(&mut d);
    }
    result
}

fn slot_hog(ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), String> {
    let mut config = ClientConfig::new(ctx.key);
    // A cheater keeps its slots with as little traffic as its own heartbeats allow.
    config.connection.heartbeat_interval = Duration::from_secs(5);
    config.handshake_timeout = Duration::from_secs(4);
    // Keep HOGS handshakes going until that many are connected, the server says it is full,
    // or 8 s have passed; a handshake that fails otherwise (an earlier flood's half-open
    // handshakes may still fill the server's table) is replaced by a new one.
    let mut hogs: Vec<ClientDriver> = Vec::new();
    let mut connecting: Vec<ClientDriver> = Vec::new();
    let mut refusals: std::collections::BTreeMap<String, usize> = Default::default();
    let mut full = false;
    let give_up = Instant::now() + Duration::from_secs(8);
    while hogs.len() < HOGS && !full && Instant::now() < give_up && ctx.running() {
        while hogs.len() + connecting.len() < HOGS {
            let d = ClientDriver::connect_from(
                SocketAddr::new(IpAddr::V4(HOG_IP), 0),
                config.clone(),
                ctx.target(),
                SocketConfig::default(),
            )
            .map_err(|e| e.to_string())?;
            connecting.push(d);
        }
        let mut i = 0;
        while i < connecting.len() {
            let d = &mut connecting[i];
            let _ = d.poll_once();
            let mut result = None;
            while let Some(event) = d.poll_event() {
                match event {
                    Event::Connected { .. } => result = Some(Ok(())),
                    Event::Disconnected { reason, .. } => result = Some(Err(reason)),
                    _ => {}
                }
            }
            match result {
                Some(Ok(())) => hogs.push(connecting.swap_remove(i)),
                Some(Err(reason)) => {
                    full |= reason == DisconnectReason::HandshakeFailed(ErrorCode::NoSpace);
                    *refusals.entry(reason.to_string()).or_default() += 1;
                    connecting.swap_remove(i);
                }
                None => i += 1,
            }
        }
        for d in &mut hogs {
            let _ = d.poll_once();
            while d.poll_event().is_some() {}
        }
        ms_sleep();
    }
    drop(connecting);
    let refusals: Vec<String> = refusals
        .iter()
        .map(|(why, n)| format!("{n} x {why}"))
        .collect();
    out.notes.push(format!(
        "{} of {HOGS} connections from {HOG_IP} established{}",
        hogs.len(),
        if refusals.is_empty() {
            String::new()
        } else {
            format!(" (handshakes that failed: {})", refusals.join(", "))
        }
    ));
    // Then a probe from another address and one from the hogs' address.
    let other_ip = Ipv4Addr::new(127, 52, 8, 1);
    let other = try_connect(other_ip, ctx, &mut hogs);
    let same = try_connect(HOG_IP, ctx, &mut hogs);
    let show = |r: &Result<Duration, String>| match r {
        Ok(t) => format!("connected in {} ms", t.as_millis()),
        Err(why) => format!("could not connect: {why}"),
    };
    out.notes.push(format!(
        "probe from another address ({other_ip}): {}; probe from {HOG_IP}: {}",
        show(&other),
        show(&same)
    ));
    if let Err(why) = &other {
        out.failure = Some(format!(
            "a client from another address could not connect: {why}"
        ));
    }
    // Hold the slots until the attack ends.
    let mut lost = 0;
    while ctx.running() {
        for d in &mut hogs {
            let _ = d.poll_once();
            while let Some(event) = d.poll_event() {
                if let Event::Disconnected { .. } = event {
                    lost += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    out.rss_after = ctx.rss.sample();
    if lost > 0 {
        out.notes
            .push(format!("{lost} hog connections ended early"));
    }
    for d in &mut hogs {
        d.disconnect("attack over");
    }
    let give_up = Instant::now() + Duration::from_secs(2);
    while hogs.iter().any(|d| !d.client().is_closed()) && Instant::now() < give_up {
        for d in &mut hogs {
            let _ = d.poll_once();
            while d.poll_event().is_some() {}
        }
        ms_sleep();
    }
    for d in &hogs {
        let io = d.io_stats();
        out.packets += io.datagrams_sent;
        out.bytes += io.bytes_sent;
        out.received += io.bytes_received;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tests (`cargo test --release --example attack`): the cheaters' handshake, stateless retry
// included, against a real server on loopback.

#[cfg(test)]
mod tests {
    use super::raw::auth_with_cookie;
    use super::*;
    use tickwire::crypto::PUBLIC_KEY_LEN;
    use tickwire::endpoint::handshake::{COOKIE_LEN, MIN_CLIENT_AUTH};
    use tickwire::io::ServerDriver;
    use tickwire::{ServerConfig, ServerIdentity};

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// The stateless retry vector of the protocol description that goes with the retry:
    /// client key of secret 11..11, token "tickwire test token", cookie 00000007 4bed...
    #[test]
    fn auth_with_cookie_matches_the_protocol_vector() {
        let key = EphemeralKey::from_secret_bytes(&[0x11; 32]).expect("valid secret");
        let cookie = hex("00000007 4bedc987 f5ea5188 e21e2879 b770b39a");
        let expected = hex(
            "02000000 00210202 17e617f0 b6443928 278f9699 9e69a23a 4f2c152b df6d6cdf
             66e5b802 82d4ed00 77001374 69636b77 69726520 74657374 20746f6b 656e0014
             00000007 4bedc987 f5ea5188 e21e2879 b770b39a 00000000 00000000 00000000
             00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000
             00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000",
        );
        let auth = auth_with_cookie(key.public_bytes(), b"tickwire test token", &cookie);
        assert_eq!(auth, expected);
        // Without a cookie it is the ordinary client AUTH.
        assert_eq!(
            auth_with_cookie(key.public_bytes(), b"tickwire test token", &[]),
            client_auth(key.public_bytes(), b"tickwire test token", None)
        );
    }

    /// A proxy in front of a real server answers the first AUTH with a retry and forwards
    /// the rest; the raw session must come back with the cookie and finish the handshake
    /// (the server's transcript then covers the AUTH with the cookie, as the client's does).
    #[test]
    fn raw_session_follows_a_stateless_retry() {
        let identity = ServerIdentity::generate();
        let key = identity.public_key();
        let mut server = ServerDriver::bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerConfig::new(identity),
            SocketConfig::default(),
        )
        .expect("bind the server");
        let server_addr = server.local_addr().expect("server address");
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind the proxy");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind the proxy's upstream");
        back.connect(server_addr).expect("connect upstream");
        front.set_nonblocking(true).unwrap();
        back.set_nonblocking(true).unwrap();
        let proxy_addr = front.local_addr().unwrap();
        let cookie = [0xC0u8; COOKIE_LEN];
        let stop = AtomicBool::new(false);
        let give_up = Instant::now() + Duration::from_secs(20);
        std::thread::scope(|s| {
            let serving = s.spawn(|| {
                let mut connected = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
                    if let Ok(Some(Event::Connected { .. })) =
                        server.run_until_event(Some(Duration::from_millis(10)))
                    {
                        connected += 1;
                    }
                }
                connected
            });
            let proxying = s.spawn(|| {
                let (mut client, mut retried, mut cookie_seen) = (None, false, false);
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
                    while let Ok((n, from)) = front.recv_from(&mut buf) {
                        client = Some(from);
                        let d = &buf[..n];
                        if d[0] == PacketType::Auth.to_bits() && !retried {
                            let mut retry = vec![2, 0, 0, 0, 0, 0, 0, COOKIE_LEN as u8];
                            retry.extend_from_slice(&cookie);
                            front.send_to(&retry, from).unwrap();
                            retried = true;
                            continue;
                        }
                        if d[0] == PacketType::Auth.to_bits() {
                            // 4 header, Reserved, E, 33 key, u16 C, then the hello.
                            let hello = &d[4 + 2 + PUBLIC_KEY_LEN + 2..];
                            cookie_seen |= n == MIN_CLIENT_AUTH
                                && hello[..4] == [0, 0, 0, COOKIE_LEN as u8]
                                && hello[4..4 + COOKIE_LEN] == cookie;
                        }
                        back.send(d).unwrap();
                    }
                    while let Ok(n) = back.recv(&mut buf) {
                        if let Some(c) = client {
                            front.send_to(&buf[..n], c).unwrap();
                        }
                    }
                    ms_sleep();
                }
                (retried, cookie_seen)
            });
            let session = RawSession::connect(Ipv4Addr::LOCALHOST, proxy_addr, &key);
            std::thread::sleep(Duration::from_millis(100));
            stop.store(true, Ordering::Relaxed);
            let connected = serving.join().unwrap();
            let (retried, cookie_seen) = proxying.join().unwrap();
            let session = session.expect("the raw handshake finishes");
            assert!(retried && cookie_seen, "the AUTH came back with the cookie");
            assert_eq!(session.retries, 1);
            assert_eq!(connected, 1, "the server accepted the finished");
        });
    }
}
