//! The UDP proxy: the impairment model between real peers on loopback.
//!
//! The proxy listens on one address and relays to one upstream address (a game server).
//! Each client source address gets its own upstream socket, bound to an ephemeral loopback
//! port, so the server sees one distinct address per client; replies from the server go back
//! to that client from the listen socket. Each client has its own pair of [`Link`]s, one per
//! direction, like a player on their own access network: `--rate` limits each client's each
//! direction. Their seeds derive from the proxy's seed and the order in which clients
//! appeared, so a run over the same traffic replays the same impairments.
//!
//! The loop is a mio poll whose timeout is the earliest link deadline (or the next second's
//! report, the end of `--duration`, or 100 ms to notice the stop flag): it never spins and
//! never sleeps a fixed tick. After each wake it reads every ready socket until `WouldBlock`
//! (at most [`MAX_READS_PER_WAKE`] datagrams at once; a socket cut short is polled again
//! without waiting), then sends every datagram that is due.
//!
//! Only loopback addresses (127.0.0.0/8 and ::1) are accepted, for both ends: this is a test
//! tool, not a relay for the open network.
//!
//! ```no_run
//! use netsim::proxy::{run_proxy, ProxyConfig};
//! use std::sync::{atomic::AtomicBool, Arc};
//! use std::time::Duration;
//!
//! let mut config = ProxyConfig::new(
//!     "127.0.0.1:4001".parse().unwrap(),
//!     "127.0.0.1:4000".parse().unwrap(),
//! );
//! config.link = config.link.with_loss(0.05).with_delay(Duration::from_millis(20));
//! config.duration = Some(Duration::from_secs(60));
//! let summary = run_proxy(config, Arc::new(AtomicBool::new(false))).unwrap();
//! eprintln!("{summary}");
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

use crate::model::{Datagram, GilbertElliott, Link, LinkConfig, LinkStats};

/// Datagrams read from one socket per wake before the others get a turn.
pub const MAX_READS_PER_WAKE: usize = 256;

/// Datagrams one link may hold in flight; beyond, the proxy drops (`overflow`).
pub const MAX_IN_FLIGHT: u64 = 100_000;

/// The longest the loop waits before it looks at the stop flag again.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// How often idle clients are looked for.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// The listen socket's token; clients count up from 1.
const LISTEN: Token = Token(0);

/// Everything the proxy needs to run.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// Where clients send; loopback only. Port 0 picks one ([`Proxy::local_addr`]).
    pub listen: SocketAddr,
    /// The server datagrams are relayed to; loopback only.
    pub upstream: SocketAddr,
    /// The impairments of each direction of each client.
    pub link: LinkConfig,
    /// The seed of every random choice; `None` draws one (see [`Proxy::seed`]).
    pub seed: Option<u64>,
    /// Stop after this long; `None` runs until the stop flag is set.
    pub duration: Option<Duration>,
    /// Client addresses relayed at once; datagrams from more are dropped.
    pub max_clients: usize,
    /// A client silent this long, with nothing in flight, is forgotten (its socket closed).
    pub idle_timeout: Duration,
    /// How often a line of counters goes to stderr; `None` for none.
    pub report_interval: Option<Duration>,
}

impl ProxyConfig {
    /// A proxy from `listen` to `upstream` with no impairment and the default options.
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Self {
        Self {
            listen,
            upstream,
            link: LinkConfig::perfect(),
            seed: None,
            duration: None,
            max_clients: 256,
            idle_timeout: Duration::from_secs(60),
            report_interval: Some(Duration::from_secs(1)),
        }
    }

    /// Checks that both addresses are loopback and distinct, the impairments are in range and
    /// at least one client is allowed.
    ///
    /// # Errors
    /// What is wrong, in words for the command line.
    pub fn validate(&self) -> Result<(), ArgError> {
        for (flag, addr) in [("--listen", self.listen), ("--upstream", self.upstream)] {
            if !is_loopback(addr.ip()) {
                return Err(ArgError(format!(
                    "{flag} {addr} is not a loopback address: netsim only relays on \
                     127.0.0.0/8 and ::1"
                )));
            }
        }
        if self.listen == self.upstream {
            return Err(ArgError(format!(
                "--listen and --upstream are both {}",
                self.listen
            )));
        }
        if self.max_clients == 0 {
            return Err(ArgError("--max-clients must be at least 1".into()));
        }
        self.link.validate().map_err(|e| ArgError(e.to_string()))
    }
}

/// Whether `ip` is 127.0.0.0/8 or ::1.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip == Ipv6Addr::LOCALHOST,
    }
}

/// The command line: `netsim --listen ADDR --upstream ADDR [impairments] [options]`.
///
/// The impairment flags are `None` unless given: `--preset` applies first, wherever it
/// stands, and the flags given override it (see [`Cli::into_config`]).
#[derive(clap::Parser, Clone, Debug, PartialEq)]
#[command(
    name = "netsim",
    about = "A UDP proxy on loopback that impairs traffic like tc netem",
    long_about = None,
    after_help = "Impairments apply to each direction of each client.\n\
        Units: P is a percentage (5%, 0.1%; 0 alone is allowed); D takes ns, us, ms, s, m or h.\n\
        Example: netsim --listen 127.0.0.1:4001 --upstream 127.0.0.1:4000 --loss 5% --delay 20ms --jitter 5ms"
)]
pub struct Cli {
    /// Where clients send (loopback only), e.g. 127.0.0.1:4001.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub listen: SocketAddr,
    /// The server to relay to (loopback only), e.g. 127.0.0.1:4000.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub upstream: SocketAddr,
    /// Start from this link (the other impairment flags override it) [default: perfect].
    #[arg(long, value_name = "NAME", value_parser = preset, help_heading = "Impairments")]
    pub preset: Option<LinkConfig>,
    /// Random loss, e.g. 5%.
    #[arg(long, value_name = "P", value_parser = parse_percent, help_heading = "Impairments")]
    pub loss: Option<f64>,
    /// Gilbert-Elliott bursts (netem gemodel order): good->bad P, bad->good R, loss in bad B
    /// (default 100%), in good G (default 0%).
    #[arg(
        long,
        visible_alias = "loss-burst",
        value_name = "P,R[,B[,G]]",
        value_parser = parse_burst,
        help_heading = "Impairments"
    )]
    pub burst: Option<GilbertElliott>,
    /// One-way latency, e.g. 20ms.
    #[arg(long, value_name = "D", value_parser = parse_duration, help_heading = "Impairments")]
    pub delay: Option<Duration>,
    /// Uniform +- jitter on the latency (never reorders), e.g. 5ms.
    #[arg(long, value_name = "D", value_parser = parse_duration, help_heading = "Impairments")]
    pub jitter: Option<Duration>,
    /// Duplication, e.g. 1%.
    #[arg(long, value_name = "P", value_parser = parse_percent, help_heading = "Impairments")]
    pub duplicate: Option<f64>,
    /// Datagrams that skip the latency and overtake the rest, e.g. 2%.
    #[arg(long, value_name = "P", value_parser = parse_percent, help_heading = "Impairments")]
    pub reorder: Option<f64>,
    /// Rate limit, e.g. 1mbit (bit, kbit, mbit, gbit, kibit, mibit, gibit).
    #[arg(long, value_name = "R", value_parser = parse_rate, help_heading = "Impairments")]
    pub rate: Option<u64>,
    /// Bytes that may wait for the rate limit, e.g. 64kb (b, kb, mb, kib, mib) [default: 64kib].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Impairments")]
    pub queue: Option<usize>,
    /// One bit flipped, e.g. 0.1%.
    #[arg(long, value_name = "P", value_parser = parse_percent, help_heading = "Impairments")]
    pub corrupt: Option<f64>,
    /// Drop payloads larger than N bytes.
    #[arg(long, value_name = "N", value_parser = parse_integer::<usize>, help_heading = "Impairments")]
    pub mtu: Option<usize>,
    /// Seed of every random choice [default: random, printed].
    #[arg(long, value_name = "N", value_parser = parse_integer::<u64>)]
    pub seed: Option<u64>,
    /// Stop after D, e.g. 60s or 5m, and print the summary.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Client addresses relayed at once.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = parse_integer::<usize>)]
    pub max_clients: usize,
    /// Forget a client silent for D.
    #[arg(long, value_name = "D", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// No live counters.
    #[arg(long)]
    pub quiet: bool,
}

impl Cli {
    /// The proxy's configuration: the preset (or a perfect link), then every impairment flag
    /// given over it.
    pub fn into_config(self) -> ProxyConfig {
        let mut link = self.preset.unwrap_or_else(LinkConfig::perfect);
        if let Some(loss) = self.loss {
            link.loss = loss;
        }
        if let Some(burst) = self.burst {
            link.burst = Some(burst);
        }
        if let Some(delay) = self.delay {
            link.delay = delay;
        }
        if let Some(jitter) = self.jitter {
            link.jitter = jitter;
        }
        if let Some(duplicate) = self.duplicate {
            link.duplicate = duplicate;
        }
        if let Some(reorder) = self.reorder {
            link.reorder = reorder;
        }
        if let Some(rate) = self.rate {
            link.rate = Some(rate);
        }
        if let Some(queue) = self.queue {
            link.queue_bytes = queue;
        }
        if let Some(corrupt) = self.corrupt {
            link.corrupt = corrupt;
        }
        if let Some(mtu) = self.mtu {
            link.mtu = Some(mtu);
        }
        let mut config = ProxyConfig::new(self.listen, self.upstream);
        config.link = link;
        config.seed = self.seed;
        config.duration = self.duration;
        config.max_clients = self.max_clients;
        config.idle_timeout = self.idle_timeout;
        if self.quiet {
            config.report_interval = None;
        }
        config
    }
}

/// A command line that cannot be run, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgError(pub String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgError {}

/// Parses the command line (without the program name) and checks it.
///
/// Flags take their value as the next argument or after `=`. `--preset` applies first,
/// wherever it stands; the other impairment flags override it.
///
/// # Errors
/// clap's error: `--help` ([`clap::error::ErrorKind::DisplayHelp`]), an unknown flag, a
/// missing or malformed value, or (as [`clap::error::ErrorKind::ValueValidation`]) a setting
/// out of range or an address that is not loopback. [`clap::Error::exit`] prints it.
pub fn parse_args<I, S>(args: I) -> Result<ProxyConfig, clap::Error>
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, Parser};
    let argv =
        std::iter::once(std::ffi::OsString::from("netsim")).chain(args.into_iter().map(Into::into));
    let config = Cli::try_parse_from(argv)?.into_config();
    config
        .validate()
        .map_err(|e| Cli::command().error(clap::error::ErrorKind::ValueValidation, e.0))?;
    Ok(config)
}

fn preset(name: &str) -> Result<LinkConfig, String> {
    match name {
        "perfect" => Ok(LinkConfig::perfect()),
        "good-wifi" | "good_wifi" => Ok(LinkConfig::good_wifi()),
        "congested-mobile" | "congested_mobile" => Ok(LinkConfig::congested_mobile()),
        "lossy" => Ok(LinkConfig::lossy()),
        _ => Err("not one of perfect, good-wifi, congested-mobile, lossy".into()),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "not an IP address and port, like 127.0.0.1:4000 or [::1]:4000".into())
}

fn parse_integer<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| "not a whole number in range".into())
}

/// Splits `"12.5ms"` into `(12.5, "ms")`.
fn number_and_unit(s: &str) -> Result<(f64, &str), String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    if !number.is_finite() {
        return Err(format!("{s:?} is not a finite number"));
    }
    Ok((number, unit))
}

/// `"5%"` is 0.05; a bare `"0"` is 0.
fn parse_percent(s: &str) -> Result<f64, String> {
    let (number, unit) = number_and_unit(s)?;
    match unit {
        "%" => {}
        "" if number == 0.0 => {}
        "" => return Err(format!("write a percentage, like {number}%")),
        _ => {
            return Err(format!(
                "unknown unit {unit:?}: write a percentage, like 5%"
            ))
        }
    }
    let fraction = number / 100.0;
    if fraction > 1.0 {
        return Err("a probability cannot exceed 100%".into());
    }
    Ok(fraction)
}

/// `"20ms"`, `"1.5s"`, `"100us"`, `"5m"`; a bare `"0"` is zero.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = number_and_unit(s)?;
    let seconds_per_unit = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" if number == 0.0 => 0.0,
        "" => return Err(format!("give a unit, like {number}ms")),
        _ => return Err(format!("unknown unit {unit:?}: use ns, us, ms, s, m or h")),
    };
    Duration::try_from_secs_f64(number * seconds_per_unit).map_err(|e| e.to_string())
}

/// `"1mbit"` is 1,000,000 bits per second; `"1mibit"` is 1,048,576.
fn parse_rate(s: &str) -> Result<u64, String> {
    let (number, unit) = number_and_unit(s)?;
    let multiplier: f64 = match unit.to_ascii_lowercase().as_str() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "kibit" => 1024.0,
        "mibit" => 1024.0 * 1024.0,
        "gibit" => 1024.0 * 1024.0 * 1024.0,
        "" => return Err(format!("give a unit, like {number}mbit")),
        _ => {
            return Err(format!(
                "unknown unit {unit:?}: use bit, kbit, mbit, gbit, kibit, mibit or gibit"
            ))
        }
    };
    let bits = (number * multiplier).round();
    if bits < 1.0 || bits >= u64::MAX as f64 {
        return Err("the rate must be at least 1bit and finite".into());
    }
    Ok(bits as u64)
}

/// `"65536"`, `"64kb"` (64,000) or `"64kib"` (65,536).
fn parse_bytes(s: &str) -> Result<usize, String> {
    let (number, unit) = number_and_unit(s)?;
    let multiplier: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        _ => return Err(format!("unknown unit {unit:?}: use b, kb, mb, kib or mib")),
    };
    let bytes = (number * multiplier).round();
    if bytes >= usize::MAX as f64 {
        return Err("too large".into());
    }
    Ok(bytes as usize)
}

/// `"1%,30%"` or `"1%,30%,100%,0%"` (netem gemodel order: p, r, loss in bad, loss in good).
fn parse_burst(s: &str) -> Result<GilbertElliott, String> {
    let parts = s
        .split(',')
        .map(|p| parse_percent(p.trim()))
        .collect::<Result<Vec<f64>, String>>()?;
    match parts[..] {
        [p, r] => Ok(GilbertElliott::from_netem(p, r, 1.0, 0.0)),
        [p, r, bad] => Ok(GilbertElliott::from_netem(p, r, bad, 0.0)),
        [p, r, bad, good] => Ok(GilbertElliott::from_netem(p, r, bad, good)),
        _ => Err("give P_GOOD_TO_BAD,P_BAD_TO_GOOD[,LOSS_BAD[,LOSS_GOOD]]".into()),
    }
}

/// What a proxy run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxySummary {
    /// The seed of the run: pass it to `--seed` to replay the impairments.
    pub seed: u64,
    /// How long the proxy ran.
    pub elapsed: Duration,
    /// Client to upstream, every client's link added up.
    pub up: LinkStats,
    /// Upstream to client, every client's link added up.
    pub down: LinkStats,
    /// Client addresses seen.
    pub clients_seen: u64,
    /// Clients relayed now.
    pub clients_now: usize,
    /// Datagrams dropped because `max_clients` were already relayed.
    pub rejected: u64,
    /// Datagrams dropped because a link held [`MAX_IN_FLIGHT`].
    pub overflow: u64,
    /// Datagrams the operating system refused to send (or to open a socket for).
    pub io_errors: u64,
    /// Datagrams on a client's upstream socket from somewhere other than upstream.
    pub stray: u64,
}

impl fmt::Display for ProxySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "netsim: seed {}, ran {:.1}s, {} clients ({} now)",
            self.seed,
            self.elapsed.as_secs_f64(),
            self.clients_seen,
            self.clients_now
        )?;
        for (name, s) in [
            ("client -> upstream", &self.up),
            ("upstream -> client", &self.down),
        ] {
            writeln!(
                f,
                "  {name}: sent {}, delivered {}, lost {}, queue full {}, over mtu {}, \
                 duplicated {}, reordered {}, corrupted {}, in flight {}",
                s.sent,
                s.delivered,
                s.dropped_loss,
                s.dropped_queue,
                s.dropped_mtu,
                s.duplicated,
                s.reordered,
                s.corrupted,
                s.queued
            )?;
        }
        write!(
            f,
            "  turned away {} (max clients), overflow {}, i/o errors {}, stray {}",
            self.rejected, self.overflow, self.io_errors, self.stray
        )
    }
}

/// One client address being relayed.
struct Relayed {
    /// The socket the server sees this client as.
    socket: UdpSocket,
    /// Client to upstream.
    up: Link,
    /// Upstream to client.
    down: Link,
    /// The last datagram either way.
    last_active: Instant,
}

/// A bound proxy, ready to [`Proxy::run`].
pub struct Proxy {
    config: ProxyConfig,
    seed: u64,
    poll: Poll,
    listen: UdpSocket,
    local_addr: SocketAddr,
    clients: HashMap<SocketAddr, Relayed>,
    tokens: HashMap<Token, SocketAddr>,
    next_token: usize,
    /// The stats of clients forgotten already.
    retired_up: LinkStats,
    retired_down: LinkStats,
    summary: ProxySummary,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("local_addr", &self.local_addr)
            .field("upstream", &self.config.upstream)
            .field("seed", &self.seed)
            .field("clients", &self.clients.len())
            .finish()
    }
}

impl Proxy {
    /// Validates `config` and binds the listen socket.
    ///
    /// # Errors
    /// `InvalidInput` if the configuration is invalid (an address not loopback, say), or the
    /// error from binding.
    pub fn bind(config: ProxyConfig) -> io::Result<Self> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let seed = config.seed.unwrap_or_else(rand::random);
        let poll = Poll::new()?;
        let mut listen = UdpSocket::bind(config.listen)?;
        poll.registry()
            .register(&mut listen, LISTEN, Interest::READABLE)?;
        let local_addr = listen.local_addr()?;
        Ok(Self {
            config,
            seed,
            poll,
            listen,
            local_addr,
            clients: HashMap::new(),
            tokens: HashMap::new(),
            next_token: 1,
            retired_up: LinkStats::default(),
            retired_down: LinkStats::default(),
            summary: ProxySummary {
                seed,
                ..ProxySummary::default()
            },
        })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The seed in use (drawn at random if the configuration had none).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Relays until `stop` is set or the configured duration has passed.
    ///
    /// # Errors
    /// An error from polling; errors on single datagrams are only counted.
    pub fn run(mut self, stop: &AtomicBool) -> io::Result<ProxySummary> {
        let start = Instant::now();
        let end = self.config.duration.map(|d| start + d);
        let mut next_report = self.config.report_interval.map(|i| start + i);
        let mut next_housekeeping = start + HOUSEKEEPING;
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 65_536];
        let mut unfinished: Vec<Token> = Vec::new();
        let is_terminal = io::stderr().is_terminal();
        loop {
            let now = Instant::now();
            if stop.load(Ordering::Relaxed) || end.is_some_and(|end| now >= end) {
                break;
            }
            let mut wake = (now + STOP_CHECK).min(next_housekeeping);
            for deadline in [self.next_deadline(), end, next_report]
                .into_iter()
                .flatten()
            {
                wake = wake.min(deadline);
            }
            let timeout = if unfinished.is_empty() {
                wake.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            let mut ready = std::mem::take(&mut unfinished);
            ready.extend(events.iter().map(|e| e.token()));
            ready.sort_unstable();
            ready.dedup();
            for token in ready {
                if !self.read(now, token, &mut buf) {
                    unfinished.push(token);
                }
            }
            let now = Instant::now();
            self.deliver(now);
            if now >= next_housekeeping {
                self.forget_idle(now);
                next_housekeeping = now + HOUSEKEEPING;
            }
            if let (Some(at), Some(interval)) = (next_report, self.config.report_interval) {
                if now >= at {
                    self.report(start, now, is_terminal);
                    next_report = Some(at.max(now - interval) + interval);
                }
            }
        }
        if next_report.is_some() && is_terminal {
            eprintln!();
        }
        Ok(self.summary(Instant::now() - start))
    }

    /// The counters now.
    fn summary(&self, elapsed: Duration) -> ProxySummary {
        let (mut up, mut down) = (self.retired_up, self.retired_down);
        for client in self.clients.values() {
            up += client.up.stats();
            down += client.down.stats();
        }
        ProxySummary {
            elapsed,
            up,
            down,
            clients_now: self.clients.len(),
            ..self.summary.clone()
        }
    }

    /// The earliest datagram due on any link.
    fn next_deadline(&self) -> Option<Instant> {
        self.clients
            .values()
            .flat_map(|c| [c.up.next_deadline(), c.down.next_deadline()])
            .flatten()
            .min()
    }

    /// Reads `token`'s socket until `WouldBlock`; false if it stopped at the bound first.
    fn read(&mut self, now: Instant, token: Token, buf: &mut [u8]) -> bool {
        for _ in 0..MAX_READS_PER_WAKE {
            let received = if token == LISTEN {
                self.listen.recv_from(buf)
            } else {
                let Some(client) = self.tokens.get(&token).and_then(|a| self.clients.get(a)) else {
                    return true;
                };
                client.socket.recv_from(buf)
            };
            match received {
                Ok((len, from)) => {
                    if token == LISTEN {
                        self.handle_client_datagram(now, from, &buf[..len]);
                    } else {
                        self.handle_upstream_datagram(now, token, from, &buf[..len]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                // ICMP errors reported on a UDP socket, or a signal: keep reading.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(_) => {
                    self.summary.io_errors += 1;
                    return true;
                }
            }
        }
        false
    }

    /// A datagram from a client: into its up link, the client made if it is new.
    fn handle_client_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if !self.clients.contains_key(&from) {
            if self.clients.len() >= self.config.max_clients {
                self.summary.rejected += 1;
                return;
            }
            if self.add_client(now, from).is_err() {
                self.summary.io_errors += 1;
                return;
            }
        }
        let client = self.clients.get_mut(&from).expect("added just above");
        client.last_active = now;
        if client.up.stats().queued >= MAX_IN_FLIGHT {
            self.summary.overflow += 1;
            return;
        }
        client.up.send(
            now,
            Datagram {
                from,
                to: self.config.upstream,
                data: data.to_vec(),
            },
        );
    }

    /// A datagram on a client's upstream socket: into its down link if it is from upstream.
    fn handle_upstream_datagram(
        &mut self,
        now: Instant,
        token: Token,
        from: SocketAddr,
        data: &[u8],
    ) {
        if from != self.config.upstream {
            self.summary.stray += 1;
            return;
        }
        let Some(&addr) = self.tokens.get(&token) else {
            return;
        };
        let client = self
            .clients
            .get_mut(&addr)
            .expect("tokens and clients agree");
        client.last_active = now;
        if client.down.stats().queued >= MAX_IN_FLIGHT {
            self.summary.overflow += 1;
            return;
        }
        client.down.send(
            now,
            Datagram {
                from,
                to: addr,
                data: data.to_vec(),
            },
        );
    }

    /// Opens the upstream socket of a new client and gives it its links.
    fn add_client(&mut self, now: Instant, addr: SocketAddr) -> io::Result<()> {
        let local: IpAddr = match self.config.upstream {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        };
        let mut socket = UdpSocket::bind(SocketAddr::new(local, 0))?;
        let token = Token(self.next_token);
        self.poll
            .registry()
            .register(&mut socket, token, Interest::READABLE)?;
        self.next_token += 1;
        let index = self.summary.clients_seen;
        self.summary.clients_seen += 1;
        self.tokens.insert(token, addr);
        self.clients.insert(
            addr,
            Relayed {
                socket,
                up: Link::new(self.config.link.clone(), derive_seed(self.seed, index, 0)),
                down: Link::new(self.config.link.clone(), derive_seed(self.seed, index, 1)),
                last_active: now,
            },
        );
        Ok(())
    }

    /// Sends every datagram due at `now`.
    fn deliver(&mut self, now: Instant) {
        for client in self.clients.values_mut() {
            while let Some(d) = client.up.poll_deliver(now) {
                if client.socket.send_to(&d.data, d.to).is_err() {
                    self.summary.io_errors += 1;
                }
            }
            while let Some(d) = client.down.poll_deliver(now) {
                if self.listen.send_to(&d.data, d.to).is_err() {
                    self.summary.io_errors += 1;
                }
            }
        }
    }

    /// Forgets the clients silent for the idle timeout with nothing in flight.
    fn forget_idle(&mut self, now: Instant) {
        let timeout = self.config.idle_timeout;
        let idle: Vec<SocketAddr> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                now.saturating_duration_since(c.last_active) >= timeout
                    && c.up.next_deadline().is_none()
                    && c.down.next_deadline().is_none()
            })
            .map(|(addr, _)| *addr)
            .collect();
        for addr in idle {
            let mut client = self.clients.remove(&addr).expect("listed just above");
            // Closing the socket unregisters it; deregistering first keeps mio tidy.
            let _ = self.poll.registry().deregister(&mut client.socket);
            self.tokens.retain(|_, a| *a != addr);
            self.retired_up += client.up.stats();
            self.retired_down += client.down.stats();
        }
    }

    /// One line of counters to stderr.
    fn report(&self, start: Instant, now: Instant, is_terminal: bool) {
        let s = self.summary(now - start);
        let dropped = s.up.dropped() + s.down.dropped() + s.rejected + s.overflow;
        let line = format!(
            "netsim {:>5.0}s | up {} down {} | dropped {} (loss {}, queue {}, mtu {}) | dup {} \
             reord {} corrupt {} | in flight {} | clients {}",
            s.elapsed.as_secs_f64(),
            s.up.delivered,
            s.down.delivered,
            dropped,
            s.up.dropped_loss + s.down.dropped_loss,
            s.up.dropped_queue + s.down.dropped_queue,
            s.up.dropped_mtu + s.down.dropped_mtu,
            s.up.duplicated + s.down.duplicated,
            s.up.reordered + s.down.reordered,
            s.up.corrupted + s.down.corrupted,
            s.up.queued + s.down.queued,
            s.clients_now,
        );
        let mut stderr = io::stderr().lock();
        let _ = if is_terminal {
            write!(stderr, "\r{line}\x1b[K")
        } else {
            writeln!(stderr, "{line}")
        };
        let _ = stderr.flush();
    }
}

/// Binds a proxy with `config` and relays until `stop` is set or the duration has passed.
///
/// # Errors
/// As [`Proxy::bind`] and [`Proxy::run`].
pub fn run_proxy(config: ProxyConfig, stop: Arc<AtomicBool>) -> io::Result<ProxySummary> {
    Proxy::bind(config)?.run(&stop)
}

/// The seed of the `direction` link of the `index`th client (splitmix64 mixing).
fn derive_seed(seed: u64, index: u64, direction: u64) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    mix(seed ^ mix(index.wrapping_mul(2).wrapping_add(direction)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<ProxyConfig, clap::Error> {
        let base = ["--listen", "127.0.0.1:4001", "--upstream", "127.0.0.1:4000"];
        parse_args(base.iter().chain(args))
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("5%"), Ok(0.05));
        assert_eq!(parse_percent("0.1%"), Ok(0.001));
        assert_eq!(parse_percent("100%"), Ok(1.0));
        assert_eq!(parse_percent("0"), Ok(0.0));
        assert_eq!(parse_percent("0%"), Ok(0.0));
        assert!(parse_percent("5").is_err(), "a bare number is ambiguous");
        assert!(parse_percent("101%").is_err());
        assert!(parse_percent("-1%").is_err());
        assert!(parse_percent("%").is_err());
        assert!(parse_percent("5ms").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("100ns"), Ok(Duration::from_nanos(100)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("20").is_err());
        assert!(parse_duration("20 ms").is_err());
        assert!(parse_duration("20days").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1mbit"), Ok(1_000_000));
        assert_eq!(parse_rate("1.5mbit"), Ok(1_500_000));
        assert_eq!(parse_rate("500kbit"), Ok(500_000));
        assert_eq!(parse_rate("2gbit"), Ok(2_000_000_000));
        assert_eq!(parse_rate("9600bit"), Ok(9600));
        assert_eq!(parse_rate("1Mbit"), Ok(1_000_000));
        assert_eq!(parse_rate("1kibit"), Ok(1024));
        assert_eq!(parse_rate("1mibit"), Ok(1_048_576));
        assert!(parse_rate("1000").is_err());
        assert!(parse_rate("0mbit").is_err());
        assert!(parse_rate("1mbps").is_err());
    }

    #[test]
    fn byte_counts_and_bursts() {
        assert_eq!(parse_bytes("65536"), Ok(65_536));
        assert_eq!(parse_bytes("64kb"), Ok(64_000));
        assert_eq!(parse_bytes("64kib"), Ok(65_536));
        assert_eq!(parse_bytes("1mib"), Ok(1_048_576));
        assert!(parse_bytes("1gb").is_err());
        assert_eq!(
            parse_burst("1%,30%"),
            Ok(GilbertElliott::from_netem(0.01, 0.3, 1.0, 0.0))
        );
        assert_eq!(
            parse_burst("1%, 30%, 50%, 1%"),
            Ok(GilbertElliott::from_netem(0.01, 0.3, 0.5, 0.01))
        );
        assert!(parse_burst("1%").is_err());
        assert!(parse_burst("1%,2%,3%,4%,5%").is_err());
    }

    #[test]
    fn full_command_line() {
        let config = run(&[
            "--loss",
            "5%",
            "--delay",
            "20ms",
            "--jitter",
            "5ms",
            "--duplicate",
            "1%",
            "--reorder",
            "2%",
            "--rate",
            "1mbit",
            "--corrupt",
            "0.1%",
            "--mtu",
            "1200",
            "--seed",
            "42",
            "--burst",
            "1%,25%",
            "--queue",
            "32kib",
            "--duration",
            "60s",
            "--max-clients",
            "8",
            "--idle-timeout=10s",
            "--quiet",
        ])
        .unwrap();
        let link = LinkConfig::perfect()
            .with_loss(0.05)
            .with_delay(Duration::from_millis(20))
            .with_jitter(Duration::from_millis(5))
            .with_duplicate(0.01)
            .with_reorder(0.02)
            .with_rate(1_000_000)
            .with_corrupt(0.001)
            .with_mtu(1200)
            .with_burst(GilbertElliott::simple(0.01, 0.25))
            .with_queue_bytes(32 * 1024);
        assert_eq!(config.link, link);
        assert_eq!(config.seed, Some(42));
        assert_eq!(config.duration, Some(Duration::from_secs(60)));
        assert_eq!(config.max_clients, 8);
        assert_eq!(config.idle_timeout, Duration::from_secs(10));
        assert_eq!(config.report_interval, None);
        assert_eq!(config.listen, "127.0.0.1:4001".parse().unwrap());
        assert_eq!(config.upstream, "127.0.0.1:4000".parse().unwrap());
    }

    #[test]
    fn defaults_and_presets() {
        let config = run(&[]).unwrap();
        assert_eq!(config.link, LinkConfig::perfect());
        assert_eq!(config.max_clients, 256);
        assert_eq!(config.seed, None);
        assert_eq!(config.duration, None);
        assert!(config.report_interval.is_some());
        // The preset applies first wherever it stands; flags override it.
        let config = run(&["--loss", "1%", "--preset", "lossy"]).unwrap();
        assert_eq!(config.link, LinkConfig::lossy().with_loss(0.01));
        assert_eq!(
            run(&["--preset", "good-wifi"]).unwrap().link,
            LinkConfig::good_wifi()
        );
        assert!(run(&["--preset", "moon"]).is_err());
    }

    #[test]
    fn help_and_mistakes() {
        use clap::error::ErrorKind;
        assert_eq!(
            parse_args(["--help"]).unwrap_err().kind(),
            ErrorKind::DisplayHelp
        );
        assert_eq!(
            parse_args(["--loss", "5%", "-h"]).unwrap_err().kind(),
            ErrorKind::DisplayHelp
        );
        assert!(parse_args(["--upstream", "127.0.0.1:4000"]).is_err());
        assert!(parse_args(["--listen", "127.0.0.1:4000"]).is_err());
        assert!(run(&["--loss"]).is_err(), "missing value");
        assert!(run(&["--frobnicate", "1"]).is_err());
        assert!(run(&["stray"]).is_err());
        assert!(run(&["--max-clients", "0"]).is_err());
        assert!(run(&["--mtu", "-5"]).is_err());
        let err = run(&["--loss", "5"]).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("--loss") && err.contains("'5'"), "{err}");
    }

    #[test]
    fn refuses_addresses_off_loopback() {
        for (listen, upstream) in [
            ("0.0.0.0:4001", "127.0.0.1:4000"),
            ("127.0.0.1:4001", "10.0.0.1:4000"),
            ("127.0.0.1:4001", "192.168.1.10:4000"),
            ("[::]:4001", "[::1]:4000"),
            ("[::1]:4001", "[2001:db8::1]:4000"),
            ("[::1]:4001", "[::ffff:127.0.0.1]:4000"),
        ] {
            let err = parse_args(["--listen", listen, "--upstream", upstream]).unwrap_err();
            assert!(err.to_string().contains("not a loopback address"), "{err}");
        }
        for (listen, upstream) in [
            ("127.0.0.1:4001", "127.0.0.1:4000"),
            ("127.1.2.3:4001", "127.0.0.1:4000"),
            ("[::1]:4001", "[::1]:4000"),
            ("[::1]:4001", "127.0.0.1:4000"),
        ] {
            assert!(parse_args(["--listen", listen, "--upstream", upstream]).is_ok());
        }
        assert!(
            parse_args(["--listen", "localhost:4001", "--upstream", "127.0.0.1:4000"]).is_err()
        );
        assert!(
            parse_args(["--listen", "127.0.0.1:4000", "--upstream", "127.0.0.1:4000"]).is_err()
        );
        // Binding checks too, for callers that skip the parser.
        let config = ProxyConfig::new(
            "0.0.0.0:0".parse().unwrap(),
            "127.0.0.1:4000".parse().unwrap(),
        );
        let err = Proxy::bind(config).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn seeds_differ_per_client_and_direction() {
        let seeds = [
            derive_seed(1, 0, 0),
            derive_seed(1, 0, 1),
            derive_seed(1, 1, 0),
            derive_seed(2, 0, 0),
        ];
        for (i, a) in seeds.iter().enumerate() {
            for b in &seeds[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(derive_seed(1, 0, 0), derive_seed(1, 0, 0));
    }
}
