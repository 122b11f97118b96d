//! End-to-end throughput over 127.0.0.1: tickwire through the mio drivers against raw UDP
//! (`std::net::UdpSocket`, one datagram per system call), measured in the same run with the
//! same socket buffer sizes ([`SocketConfig::default`]).
//!
//! # Usage
//! ```text
//! cargo run --release --example loopback_bench                    # every scenario, 2 s each
//! cargo run --release --example loopback_bench -- --secs 3 --only 900 --offload on
//! ```
//! Scenarios: unreliable 64 B messages, unreliable 900 B messages, reliable-ordered 100 B
//! messages, all sealed (tickwire always encrypts after the handshake). Each scenario runs once
//! per stack, on two threads, a sender and a receiver:
//!
//! - raw UDP: the sender thread calls `send_to` in a loop with the payload, the receiver thread
//!   `recv_from` in a loop (blocking sockets, one message per datagram);
//! - tickwire, with [`SocketConfig::offload`] on (GSO, GRO, `recvmmsg`) and off (one system
//!   call per datagram), unless `--offload` picks one: a [`ClientDriver`] thread sends messages
//!   as fast as it can and a [`ServerDriver`] thread counts the [`Event::Message`]s delivered.
//!   Reliable sends that meet [`SendError::QueueFull`] wait in `run_until_event` (which pumps
//!   the socket) and try again. Unreliable sends are refused with `QueueFull` once the channel
//!   holds what the path sends within `unreliable_deadline`; besides, the client keeps at most
//!   `--window` messages sent but neither delivered nor dropped by the endpoint, as a game
//!   would not produce faster than its transport carries; `--open-loop` removes that limit
//!   (and shows what overproducing costs: the refusals).
//!   A window that makes no progress for 20 ms is written off, so that kernel drops cannot
//!   stall the sender.
//!
//! The window is kept small because `send` on an unreliable channel costs time in proportion
//! to the messages already queued on it (see `--window` to measure that).
//!
//! After `--warmup` the controller samples the receiver's delivered count and the CPU time of
//! the process and of both threads, sleeps `--secs`, and samples again. Only what the receiver delivered counts: datagrams the kernel dropped under
//! overload (UDP has no flow control) are not in the figures. CPU time comes from `/proc`:
//! `/proc/self/stat` for the process (user + system, in clock ticks of 10 ms) and
//! `/proc/self/task/TID/schedstat` for each thread (ns, and the time it waited for a CPU while
//! runnable, which shows the machine's other load). The kernel's loopback delivery runs mostly
//! on the sending thread. On a shared machine the figures are noisy: compare the ratios
//! measured in the same run.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use socket2::{Domain, Protocol, Socket, Type};
use tickwire::io::{ClientDriver, IoStats, ServerDriver, SocketConfig};
use tickwire::{ChannelId, ClientConfig, Event, SendError, ServerConfig, ServerIdentity};

const UNRELIABLE: ChannelId = ChannelId(0);
const RELIABLE_ORDERED: ChannelId = ChannelId(3);
/// Messages sent between two passes of a sender.
const SEND_BATCH: usize = 256;
/// How long a blocked tickwire sender waits at most in one `run_until_event` (it returns
/// earlier on an event; the driver keeps sub-millisecond waits on Linux).
const BLOCKED_WAIT: Duration = Duration::from_micros(250);
/// A window without progress for this long is written off.
const STALL: Duration = Duration::from_millis(20);
/// How long the handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a thread may take to stop once told.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    channel: ChannelId,
    size: usize,
    reliable: bool,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "unreliable 64 B",
        channel: UNRELIABLE,
        size: 64,
        reliable: false,
    },
    Scenario {
        name: "unreliable 900 B",
        channel: UNRELIABLE,
        size: 900,
        reliable: false,
    },
    Scenario {
        name: "unreliable 1000 B",
        channel: UNRELIABLE,
        size: 1000,
        reliable: false,
    },
    Scenario {
        name: "reliable-ordered 100 B",
        channel: RELIABLE_ORDERED,
        size: 100,
        reliable: true,
    },
];

/// End-to-end throughput over 127.0.0.1: tickwire through the mio drivers against raw UDP.
#[derive(Parser, Debug, Clone)]
#[command(name = "loopback_bench", long_about = None)]
struct Args {
    /// Seconds measured per scenario and stack, 0.1..=60.
    #[arg(long, value_name = "S", default_value_t = 2.0, value_parser = secs_measured)]
    secs: f64,
    /// Seconds before measuring, 0..=10.
    #[arg(long, value_name = "S", default_value_t = 0.3, value_parser = warmup_secs)]
    warmup: f64,
    /// Only the scenarios whose name contains TEXT (e.g. 64, 900, reliable).
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
    /// tickwire with SocketConfig::offload on, off, or both.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = Offload::Both)]
    offload: Offload,
    /// tickwire unreliable: messages sent and not yet delivered, at most [default: 1024 for
    /// 64 B, 128 for 900 B: over a millisecond of what pacing lets out].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    window: Option<u64>,
    /// tickwire unreliable: no window, send as fast as `send` returns.
    #[arg(long)]
    open_loop: bool,
    /// Skip raw UDP.
    #[arg(long)]
    no_raw: bool,
    /// Keep the system's default socket buffer sizes (no `SO_RCVBUF`/`SO_SNDBUF` request, for
    /// raw UDP and tickwire alike), as an application that does not set
    /// `SocketConfig::recv_buffer_bytes` gets on a host whose `net.core.rmem_max` is not
    /// raised (a stock Linux host: 208 KiB). Without it both ask for 2 MiB.
    #[arg(long)]
    os_buffers: bool,
    /// A game's frame loop instead of flat out: at `--hz` frames per second the sender hands
    /// over RATE messages per second (spread evenly over the frames), then waits in the
    /// driver until the next frame; `unlimited` sends in batches for the whole frame. Raw
    /// UDP sends the same quota per frame and sleeps.
    #[arg(long, value_name = "RATE", value_parser = offered_rate)]
    rate: Option<Rate>,
    /// The receiver in a frame loop too, at `--hz`: once per frame one `poll_once` (which
    /// reads what the socket holds) and every event, then a sleep until the next frame; the
    /// socket buffer holds a frame's worth of datagrams. Without it the receiver waits in
    /// `run_until_event` and reads as datagrams come.
    #[arg(long)]
    receiver_frames: bool,
    /// Frames per second of `--rate` and `--receiver-frames`.
    #[arg(long, value_name = "HZ", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10000))]
    hz: u32,
    /// Also measure the machine's floor for each unreliable scenario, per message: sealing and
    /// opening its packet (tickwire's AEAD backend, one thread, 20,000 times) plus sending its
    /// datagrams with UDP GSO and receiving them with GRO (quinn-udp, raw sockets, one GSO
    /// call per datagram size per frame at `--rate`, or 50k messages/s), process CPU per
    /// datagram received.
    #[arg(long)]
    limit: bool,
    /// Print each run's socket and connection counters.
    #[arg(short, long)]
    verbose: bool,
}

/// `--offload`: the offload settings to run tickwire with.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Offload {
    On,
    Off,
    Both,
}

impl Offload {
    fn settings(self) -> &'static [bool] {
        match self {
            Offload::On => &[true],
            Offload::Off => &[false],
            Offload::Both => &[true, false],
        }
    }
}

/// `--rate`: messages per second offered, or as many as the frame lets the sender hand over.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rate {
    PerSec(f64),
    Unlimited,
}

fn offered_rate(s: &str) -> Result<Rate, String> {
    if s == "unlimited" {
        return Ok(Rate::Unlimited);
    }
    match s.parse::<f64>() {
        Ok(v) if (1.0..=1e8).contains(&v) => Ok(Rate::PerSec(v)),
        _ => Err("not `unlimited` or messages per second in 1..=1e8".into()),
    }
}

/// The socket buffers a run asks for: 2 MiB each, or the system's defaults (`--os-buffers`).
fn socket_config(args: &Args) -> SocketConfig {
    if args.os_buffers {
        SocketConfig {
            recv_buffer_bytes: None,
            send_buffer_bytes: None,
            ..SocketConfig::default()
        }
    } else {
        SocketConfig::default()
    }
}

/// Frame `n`'s share of `rate` at `hz` frames per second (whole messages, the fractions
/// carried over), or `None` for `unlimited`.
fn frame_quota(rate: Rate, hz: u32, n: u64) -> Option<u64> {
    match rate {
        Rate::Unlimited => None,
        Rate::PerSec(r) => {
            let per = r / f64::from(hz);
            Some(((n + 1) as f64 * per) as u64 - (n as f64 * per) as u64)
        }
    }
}

fn secs_measured(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=60.0).contains(&v) => Ok(v),
        _ => Err("not a number of seconds in 0.1..=60".into()),
    }
}

fn warmup_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=10.0).contains(&v) => Ok(v),
        _ => Err("not a number of seconds in 0..=10".into()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One scenario's results: raw UDP, tickwire with offload, tickwire without.
#[derive(Debug, Default)]
struct Row {
    raw: Option<Measure>,
    offload: Option<Measure>,
    plain: Option<Measure>,
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let scenarios: Vec<Scenario> = SCENARIOS
        .into_iter()
        .filter(|s| {
            args.only
                .as_ref()
                .is_none_or(|o| s.name.contains(o.as_str()))
        })
        .collect();
    if scenarios.is_empty() {
        return Err("no scenario matches --only".into());
    }
    let socket = socket_config(args);
    let granted = tickwire::io::bind_socket("127.0.0.1:0".parse()?, &socket)
        .and_then(|s| tickwire::io::buffer_sizes(&s))?;
    println!(
        "loopback_bench: {} s per run after {} s warm-up; socket buffers asked {:?} / {:?} B, \
         granted {} / {} B (as getsockopt reports them: Linux doubles); {}; {} CPUs",
        args.secs,
        args.warmup,
        socket.recv_buffer_bytes,
        socket.send_buffer_bytes,
        granted.0,
        granted.1,
        match args.rate {
            None => "flat out".to_string(),
            Some(Rate::Unlimited) => format!("frame loop at {} Hz, unlimited", args.hz),
            Some(Rate::PerSec(r)) => format!("frame loop at {} Hz, {r} msg/s offered", args.hz),
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rows = Vec::new();
    for s in &scenarios {
        let mut row = Row::default();
        if args.limit && !s.reliable {
            match floor(s, args) {
                Ok(f) => println!(
                    "{} / floor: seal + open {:.0} ns per packet, GSO send + GRO receive {:.0} \
                     ns per datagram ({} per message: {:?} B), {:.0} ns per message",
                    s.name,
                    f.crypto_ns,
                    f.io_ns,
                    f.datagrams.len(),
                    f.datagrams,
                    f.crypto_ns + f.io_ns * f.datagrams.len() as f64
                ),
                Err(e) => println!("{} / floor: not measured: {e}", s.name),
            }
        }
        if !args.no_raw {
            let m = raw_udp(s, args)?;
            m.print(&format!("{} / raw UDP", s.name), args.verbose);
            row.raw = Some(m);
        }
        for &offload in args.offload.settings() {
            let m = tickwire(s, args, offload)?;
            let label = if offload { "offload on" } else { "offload off" };
            m.print(&format!("{} / tickwire, {label}", s.name), args.verbose);
            if offload {
                row.offload = Some(m);
            } else {
                row.plain = Some(m);
            }
        }
        rows.push((s, row));
    }
    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[(&Scenario, Row)]) {
    let rate = |m: &Option<Measure>| m.as_ref().map(Measure::rate);
    let cpu = |m: &Option<Measure>| m.as_ref().and_then(Measure::cpu_per_msg_ns);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    let num = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.0}"));
    let one = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
    println!();
    println!(
        "messages delivered per second (tickwire: offload on / off), ratio to raw UDP in the \
         same run:"
    );
    println!();
    println!(
        "| scenario | raw UDP msg/s | tickwire msg/s | ×raw | tickwire (offload off) msg/s \
         | ×raw | tickwire datagrams/s | msgs/datagram | datagrams/send call | \
         datagrams/recv call |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (s, r) in rows {
        let tw = r.offload.as_ref().or(r.plain.as_ref());
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.name,
            num(rate(&r.raw)),
            num(rate(&r.offload)),
            ratio(rate(&r.offload), rate(&r.raw)),
            num(rate(&r.plain)),
            ratio(rate(&r.plain), rate(&r.raw)),
            num(tw.map(Measure::datagram_rate)),
            one(tw.map(Measure::per_datagram)),
            one(tw.and_then(|m| m.per_send_call)),
            one(tw.and_then(|m| m.per_recv_call)),
        );
    }
    println!();
    println!(
        "process CPU time per delivered message (both threads, user + system), and the share of \
         the messages that went out which arrived:"
    );
    println!();
    println!(
        "| scenario | raw UDP ns/msg | tickwire ns/msg | ×raw | tickwire (offload off) ns/msg \
         | ×raw | raw delivered | tickwire delivered | (offload off) delivered |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let share = |m: &Option<Measure>| {
        m.as_ref()
            .and_then(Measure::delivery)
            .map_or_else(|| "-".into(), |d| format!("{:.1}%", 100.0 * d))
    };
    for (s, r) in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.name,
            num(cpu(&r.raw)),
            num(cpu(&r.offload)),
            ratio(cpu(&r.offload), cpu(&r.raw)),
            num(cpu(&r.plain)),
            ratio(cpu(&r.plain), cpu(&r.raw)),
            share(&r.raw),
            share(&r.offload),
            share(&r.plain),
        );
    }
}

/// The machine's floor for one message of a scenario.
struct Floor {
    crypto_ns: f64,
    io_ns: f64,
    datagrams: Vec<usize>,
}

/// The datagrams tickwire sends for one `size`-octet unreliable message (alone in its packet):
/// 30 octets of header, fields, frame and tag in one datagram, or fragments of at most
/// `MAX_DATA` sealed octets, each with its 30-octet header.
fn datagram_sizes(size: usize) -> Vec<usize> {
    const OVERHEAD: usize = 30;
    let data = tickwire::wire::MAX_DATA;
    if size + OVERHEAD <= tickwire::wire::MAX_DATA_DATAGRAM {
        return vec![size + OVERHEAD];
    }
    let full = tickwire::wire::MAX_DATA_DATAGRAM;
    let sealed = size + 16 + 4;
    let mut v = vec![full; sealed / data];
    if sealed % data != 0 {
        v.push(sealed % data + full - data);
    }
    v
}

fn floor(s: &Scenario, args: &Args) -> Result<Floor, Box<dyn std::error::Error>> {
    use tickwire::pipeline::PacketKey;
    let key = PacketKey::new(&[7; 16], &[9; 12]);
    let mut buf = Vec::with_capacity(s.size + 64);
    let aad = [0u8; 11];
    const N: u32 = 20_000;
    // This thread's CPU time, not the wall clock: other load on the machine does not count.
    let tid = current_tid();
    let cpu = || thread_cpu(tid).map(|c| c.0);
    let (t, c0) = (Instant::now(), cpu());
    for pn in 0..N {
        buf.clear();
        buf.resize(s.size, 0x5a);
        key.seal(pn, &aad, &mut buf);
        let n = key
            .open(pn, &aad, &mut buf)
            .map_err(|e| format!("open: {e:?}"))?;
        std::hint::black_box(n);
    }
    let spent = match (c0, cpu()) {
        (Some(a), Some(b)) => b - a,
        _ => t.elapsed(),
    };
    let crypto_ns = spent.as_nanos() as f64 / f64::from(N);

    let datagrams = datagram_sizes(s.size);
    let config = socket_config(args);
    let receiver = raw_socket(&config)?;
    receiver.set_read_timeout(Some(Duration::from_millis(20)))?;
    let to = receiver.local_addr()?;
    let sender = raw_socket(&config)?;
    let per_frame = match args.rate {
        Some(Rate::PerSec(r)) => (r / f64::from(args.hz)).ceil() as usize,
        _ => 50_000 / args.hz as usize,
    }
    .clamp(1, 64);
    let shared = Arc::new(Shared::default());
    let recv_thread = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || -> Result<(), String> {
            shared.receiver_tid.store(current_tid(), Ordering::Relaxed);
            // quinn-udp makes the socket non-blocking: wait for it with mio.
            let state = quinn_udp::UdpSocketState::new((&receiver).into())
                .map_err(|e| format!("no offload: {e}"))?;
            let mut receiver = mio::net::UdpSocket::from_std(receiver);
            let mut poll = mio::Poll::new().map_err(|e| e.to_string())?;
            poll.registry()
                .register(&mut receiver, mio::Token(0), mio::Interest::READABLE)
                .map_err(|e| e.to_string())?;
            let mut events = mio::Events::with_capacity(4);
            let mut bufs: Vec<Vec<u8>> = (0..16).map(|_| vec![0u8; 65536]).collect();
            let mut meta = vec![quinn_udp::RecvMeta::default(); bufs.len()];
            let mut n = 0u64;
            while !shared.stop.load(Ordering::Relaxed) {
                let mut slices: Vec<io::IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
                match state.recv((&receiver).into(), &mut slices, &mut meta) {
                    Ok(k) => {
                        for m in &meta[..k] {
                            n += (m.len / m.stride.max(1)) as u64
                                + u64::from(m.len % m.stride.max(1) != 0);
                        }
                        shared.delivered.store(n, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        poll.poll(&mut events, Some(Duration::from_millis(20)))
                            .map_err(|e| e.to_string())?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("recv: {e}")),
                }
            }
            Ok(())
        })
    };
    let send_thread = {
        let shared = Arc::clone(&shared);
        let (hz, datagrams) = (args.hz, datagrams.clone());
        std::thread::spawn(move || -> Result<(), String> {
            shared.sender_tid.store(current_tid(), Ordering::Relaxed);
            let state = quinn_udp::UdpSocketState::new((&sender).into())
                .map_err(|e| format!("no offload: {e}"))?;
            let runs: Vec<(usize, Vec<u8>)> = datagrams
                .iter()
                .map(|&len| (len, vec![0x5au8; len * per_frame]))
                .collect();
            shared.ready.store(true, Ordering::Release);
            let period = Duration::from_secs_f64(1.0 / f64::from(hz));
            let mut next_frame = Instant::now();
            while !shared.stop.load(Ordering::Relaxed) {
                for (len, contents) in &runs {
                    let t = quinn_udp::Transmit {
                        destination: to,
                        ecn: None,
                        contents,
                        segment_size: (per_frame > 1).then_some(*len),
                        src_ip: None,
                    };
                    let _ = state.try_send((&sender).into(), &t);
                }
                next_frame = (next_frame + period).max(Instant::now());
                std::thread::sleep(next_frame.saturating_duration_since(Instant::now()));
            }
            Ok(())
        })
    };
    let m = measure(&shared, args, vec![recv_thread, send_thread])?;
    // Both threads' CPU time (schedstat, in ns) per datagram received.
    let io_ns = match (m.sender_cpu, m.receiver_cpu) {
        (Some(a), Some(b)) if m.delivered > 0 => (a + b).as_nanos() as f64 / m.delivered as f64,
        _ => m.cpu_per_msg_ns().ok_or("nothing received")?,
    };
    if args.verbose {
        println!(
            "    floor: {:.0} datagrams/s received of {:.0} per s sent",
            m.rate(),
            (per_frame * datagrams.len()) as f64 * f64::from(args.hz)
        );
    }
    Ok(Floor {
        crypto_ns,
        io_ns,
        datagrams,
    })
}

/// What one run measured between its two samples.
#[derive(Debug, Clone, Default)]
struct Measure {
    secs: f64,
    /// Messages the sender handed over (raw: datagrams `send_to` took).
    sent: u64,
    /// Messages that went out in datagrams.
    on_wire: u64,
    delivered: u64,
    /// Datagrams the receiver read.
    datagrams: u64,
    /// CPU time of the whole process, from `/proc/self/stat` (None without it).
    process_cpu: Option<Duration>,
    sender_cpu: Option<Duration>,
    receiver_cpu: Option<Duration>,
    /// Time both threads waited for a CPU while runnable (the machine's other load).
    runnable_wait: Option<Duration>,
    /// Sender-side counts: attempts refused (raw: send errors; tickwire: QueueFull), unreliable
    /// messages the endpoint dropped unsent, windows written off.
    refused: u64,
    dropped_unsent: u64,
    stalls: u64,
    /// Over the whole run (tickwire): the sender's datagrams per sending system call and the
    /// receiver's datagrams per reading system call.
    per_send_call: Option<f64>,
    per_recv_call: Option<f64>,
    /// Counters the threads reported when they stopped.
    notes: Vec<String>,
}

impl Measure {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.secs
    }

    /// Delivered messages per message that went out (what the kernel did not drop).
    fn delivery(&self) -> Option<f64> {
        (self.on_wire > 0).then(|| self.delivered as f64 / self.on_wire as f64)
    }

    fn datagram_rate(&self) -> f64 {
        self.datagrams as f64 / self.secs
    }

    fn per_datagram(&self) -> f64 {
        self.delivered as f64 / self.datagrams.max(1) as f64
    }

    /// The process's CPU time per delivered message, or the threads' if `/proc/self/stat` is
    /// missing.
    fn cpu_per_msg_ns(&self) -> Option<f64> {
        let cpu = self
            .process_cpu
            .or_else(|| Some(self.sender_cpu? + self.receiver_cpu?))?;
        (self.delivered > 0).then(|| cpu.as_nanos() as f64 / self.delivered as f64)
    }

    fn print(&self, label: &str, verbose: bool) {
        let pct = |d: Option<Duration>| {
            d.map_or_else(
                || "-".into(),
                |d| format!("{:.0}%", 100.0 * d.as_secs_f64() / self.secs),
            )
        };
        println!(
            "{label}: {:.0} msg/s delivered of {:.0} sent ({:.0} went out, {:.1}% of them \
             delivered), {:.0} datagrams/s; CPU {:.0} ns/msg \
             (process {}, sender {}, receiver {}, waiting for a CPU {}); refused {}, dropped \
             unsent {}, windows written off {}",
            self.rate(),
            self.sent as f64 / self.secs,
            self.on_wire as f64 / self.secs,
            self.delivery().map_or(f64::NAN, |d| 100.0 * d),
            self.datagram_rate(),
            self.cpu_per_msg_ns().unwrap_or(f64::NAN),
            pct(self.process_cpu),
            pct(self.sender_cpu),
            pct(self.receiver_cpu),
            pct(self.runnable_wait),
            self.refused,
            self.dropped_unsent,
            self.stalls,
        );
        if verbose {
            for line in &self.notes {
                println!("    {line}");
            }
        }
    }
}

/// Counters the worker threads publish and the controller samples.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// The sender is up (raw) or connected (tickwire).
    ready: AtomicBool,
    sent: AtomicU64,
    /// Messages that went out in datagrams (tickwire: accepted by `send` and neither dropped
    /// unsent nor still queued; raw UDP: datagrams `send_to` took).
    on_wire: AtomicU64,
    delivered: AtomicU64,
    datagrams: AtomicU64,
    refused: AtomicU64,
    dropped_unsent: AtomicU64,
    stalls: AtomicU64,
    sender_tid: AtomicU64,
    receiver_tid: AtomicU64,
    /// The threads' socket counters when they stopped.
    sender_io: Mutex<Option<IoStats>>,
    receiver_io: Mutex<Option<IoStats>>,
    /// Lines the threads leave for the report when they stop.
    notes: Mutex<Vec<String>>,
}

/// A snapshot of the counters and CPU clocks.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    sent: u64,
    on_wire: u64,
    delivered: u64,
    datagrams: u64,
    refused: u64,
    dropped_unsent: u64,
    stalls: u64,
    process_cpu: Option<Duration>,
    sender_cpu: Option<(Duration, Duration)>,
    receiver_cpu: Option<(Duration, Duration)>,
}

impl Shared {
    fn note(&self, line: String) {
        self.notes.lock().expect("not poisoned").push(line);
    }

    fn sample(&self) -> Sample {
        Sample {
            at: Instant::now(),
            sent: self.sent.load(Ordering::Relaxed),
            on_wire: self.on_wire.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            datagrams: self.datagrams.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            dropped_unsent: self.dropped_unsent.load(Ordering::Relaxed),
            stalls: self.stalls.load(Ordering::Relaxed),
            process_cpu: process_cpu(),
            sender_cpu: thread_cpu(self.sender_tid.load(Ordering::Relaxed)),
            receiver_cpu: thread_cpu(self.receiver_tid.load(Ordering::Relaxed)),
        }
    }
}

fn between(a: &Sample, b: &Sample) -> Measure {
    let sub = |x: Option<Duration>, y: Option<Duration>| Some(y?.saturating_sub(x?));
    let ran = |x: Option<(Duration, Duration)>| x.map(|x| x.0);
    let waited = |x: Option<(Duration, Duration)>| x.map(|x| x.1);
    Measure {
        secs: (b.at - a.at).as_secs_f64(),
        sent: b.sent - a.sent,
        on_wire: b.on_wire.saturating_sub(a.on_wire),
        delivered: b.delivered - a.delivered,
        datagrams: b.datagrams - a.datagrams,
        process_cpu: sub(a.process_cpu, b.process_cpu),
        sender_cpu: sub(ran(a.sender_cpu), ran(b.sender_cpu)),
        receiver_cpu: sub(ran(a.receiver_cpu), ran(b.receiver_cpu)),
        runnable_wait: sub(waited(a.sender_cpu), waited(b.sender_cpu))
            .and_then(|s| Some(s + sub(waited(a.receiver_cpu), waited(b.receiver_cpu))?)),
        refused: b.refused - a.refused,
        dropped_unsent: b.dropped_unsent - a.dropped_unsent,
        stalls: b.stalls - a.stalls,
        ..Measure::default()
    }
}

/// Waits for `ready`, warms up, measures for `--secs`, stops the threads and joins them.
fn measure(
    shared: &Shared,
    args: &Args,
    threads: Vec<JoinHandle<Result<(), String>>>,
) -> Result<Measure, Box<dyn std::error::Error>> {
    let give_up = Instant::now() + CONNECT_TIMEOUT;
    let mut failed = None;
    while !shared.ready.load(Ordering::Acquire) {
        if Instant::now() >= give_up || threads.iter().any(JoinHandle::is_finished) {
            failed = Some("the sender was not ready in time".to_string());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut result = None;
    if failed.is_none() {
        std::thread::sleep(Duration::from_secs_f64(args.warmup));
        let a = shared.sample();
        std::thread::sleep(Duration::from_secs_f64(args.secs));
        let b = shared.sample();
        result = Some(between(&a, &b));
    }
    shared.stop.store(true, Ordering::Release);
    let stop_by = Instant::now() + STOP_TIMEOUT;
    for t in threads {
        while !t.is_finished() && Instant::now() < stop_by {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !t.is_finished() {
            return Err("a worker thread did not stop in time".into());
        }
        if let Err(e) = t.join().map_err(|_| "a worker thread panicked")? {
            failed.get_or_insert(e);
        }
    }
    match (failed, result) {
        (Some(e), _) => Err(e.into()),
        (None, Some(mut m)) => {
            let per_call = |n: u64, calls: u64| (calls > 0).then(|| n as f64 / calls as f64);
            if let Some(io) = *shared.sender_io.lock().expect("not poisoned") {
                m.per_send_call = per_call(io.datagrams_sent, io.send_calls);
            }
            if let Some(io) = *shared.receiver_io.lock().expect("not poisoned") {
                m.per_recv_call = per_call(io.datagrams_received, io.recv_calls);
            }
            m.notes = std::mem::take(&mut *shared.notes.lock().expect("not poisoned"));
            Ok(m)
        }
        (None, None) => Err("nothing measured".into()),
    }
}

/// A blocking std UDP socket on 127.0.0.1 with the driver's socket buffer sizes.
fn raw_socket(config: &SocketConfig) -> std::io::Result<UdpSocket> {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(n) = config.recv_buffer_bytes {
        socket.set_recv_buffer_size(n)?;
    }
    if let Some(n) = config.send_buffer_bytes {
        socket.set_send_buffer_size(n)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn raw_udp(s: &Scenario, args: &Args) -> Result<Measure, Box<dyn std::error::Error>> {
    let config = socket_config(args);
    let (rate, hz) = (args.rate, args.hz);
    let receiver = raw_socket(&config)?;
    receiver.set_read_timeout(Some(Duration::from_millis(20)))?;
    let to = receiver.local_addr()?;
    let sender = raw_socket(&config)?;
    let shared = Arc::new(Shared::default());
    let size = s.size;
    let recv_thread = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || -> Result<(), String> {
            shared.receiver_tid.store(current_tid(), Ordering::Relaxed);
            let mut buf = vec![0u8; 65536];
            let mut n = 0u64;
            while !shared.stop.load(Ordering::Relaxed) {
                match receiver.recv_from(&mut buf) {
                    Ok((len, _)) => {
                        if len == size {
                            n += 1;
                            shared.delivered.store(n, Ordering::Relaxed);
                            shared.datagrams.store(n, Ordering::Relaxed);
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(format!("recv_from: {e}")),
                }
            }
            Ok(())
        })
    };
    let send_thread = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || -> Result<(), String> {
            shared.sender_tid.store(current_tid(), Ordering::Relaxed);
            let payload = vec![0x5au8; size];
            shared.ready.store(true, Ordering::Release);
            let (mut sent, mut refused) = (0u64, 0u64);
            let period = Duration::from_secs_f64(1.0 / f64::from(hz));
            let (mut frame, mut next_frame) = (0u64, Instant::now());
            while !shared.stop.load(Ordering::Relaxed) {
                let quota = rate.and_then(|r| frame_quota(r, hz, frame));
                for _ in 0..quota.unwrap_or(SEND_BATCH as u64) {
                    match sender.send_to(&payload, to) {
                        Ok(_) => sent += 1,
                        Err(_) => refused += 1,
                    }
                }
                shared.sent.store(sent, Ordering::Relaxed);
                shared.on_wire.store(sent, Ordering::Relaxed);
                shared.refused.store(refused, Ordering::Relaxed);
                if quota.is_some() {
                    frame += 1;
                    next_frame = (next_frame + period).max(Instant::now());
                    std::thread::sleep(next_frame.saturating_duration_since(Instant::now()));
                }
            }
            Ok(())
        })
    };
    measure(&shared, args, vec![recv_thread, send_thread])
}

fn tickwire(
    s: &Scenario,
    args: &Args,
    offload: bool,
) -> Result<Measure, Box<dyn std::error::Error>> {
    let socket = SocketConfig {
        offload,
        ..socket_config(args)
    };
    let server = ServerDriver::bind(
        "127.0.0.1:0".parse()?,
        ServerConfig::new(ServerIdentity::generate()),
        socket.clone(),
    )?;
    let key = server.server().public_key();
    let addr = server.local_addr()?;
    let shared = Arc::new(Shared::default());
    let (channel, size, reliable) = (s.channel, s.size, s.reliable);
    let server_thread = {
        let shared = Arc::clone(&shared);
        let frames = args.receiver_frames.then_some(args.hz);
        std::thread::spawn(move || serve(server, &shared, channel, size, frames))
    };
    let window = match (args.open_loop, s.reliable) {
        (true, _) | (_, true) => None,
        (false, false) => Some(args.window.unwrap_or(if size < 256 { 1024 } else { 128 })),
    };
    let (rate, hz) = (args.rate, args.hz);
    let client_thread = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || -> Result<(), String> {
            shared.sender_tid.store(current_tid(), Ordering::Relaxed);
            let client = ClientDriver::connect(ClientConfig::new(key), addr, socket)
                .map_err(|e| format!("client: {e}"))?;
            match rate {
                Some(rate) => send_frames(client, &shared, channel, size, rate, hz),
                None => send_flat_out(client, &shared, channel, size, window, !reliable),
            }
        })
    };
    measure(&shared, args, vec![server_thread, client_thread])
}

/// The server: counts the `size`-octet messages delivered on `channel` until told to stop.
fn serve(
    mut server: ServerDriver,
    shared: &Shared,
    channel: ChannelId,
    size: usize,
    frames: Option<u32>,
) -> Result<(), String> {
    shared.receiver_tid.store(current_tid(), Ordering::Relaxed);
    let mut n = 0u64;
    if let Some(hz) = frames {
        let period = Duration::from_secs_f64(1.0 / f64::from(hz));
        let mut next_frame = Instant::now();
        while !shared.stop.load(Ordering::Relaxed) {
            server.poll_once().map_err(|e| format!("server: {e}"))?;
            while let Some(event) = server.poll_event() {
                if let Event::Message {
                    channel: c, data, ..
                } = event
                {
                    if c == channel && data.len() == size {
                        n += 1;
                    }
                    server.recycle(data);
                }
            }
            shared.delivered.store(n, Ordering::Relaxed);
            shared
                .datagrams
                .store(server.io_stats().datagrams_received, Ordering::Relaxed);
            next_frame = (next_frame + period).max(Instant::now());
            std::thread::sleep(next_frame.saturating_duration_since(Instant::now()));
        }
    }
    while !shared.stop.load(Ordering::Relaxed) {
        let event = server
            .run_until_event(Some(Duration::from_millis(20)))
            .map_err(|e| format!("server: {e}"))?;
        if let Some(Event::Message {
            channel: c, data, ..
        }) = event
        {
            if c == channel && data.len() == size {
                n += 1;
                shared.delivered.store(n, Ordering::Relaxed);
            }
            server.recycle(data);
            if n % 64 != 0 {
                continue;
            }
        }
        shared
            .datagrams
            .store(server.io_stats().datagrams_received, Ordering::Relaxed);
    }
    *shared.receiver_io.lock().expect("not poisoned") = Some(server.io_stats());
    shared.note(format!(
        "server io (offload {}): {:?}",
        server.has_offload(),
        server.io_stats()
    ));
    if let Some(c) = server.server().clients().first() {
        shared.note(format!("server connection: {:?}", c.stats));
    }
    Ok(())
}

/// The client: connects, then sends `size`-octet messages on `channel` until told to stop,
/// keeping at most `window` undelivered (if given).
fn send_flat_out(
    mut client: ClientDriver,
    shared: &Shared,
    channel: ChannelId,
    size: usize,
    window: Option<u64>,
    unreliable: bool,
) -> Result<(), String> {
    let give_up = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if Instant::now() >= give_up || shared.stop.load(Ordering::Relaxed) {
            return Err("client: no connection in time".into());
        }
        match client.run_until_event(Some(Duration::from_millis(50))) {
            Ok(Some(Event::Connected { .. })) => break,
            Ok(Some(Event::Disconnected { reason, .. })) => {
                return Err(format!("client: could not connect: {reason}"))
            }
            Ok(_) => {}
            Err(e) => return Err(format!("client: {e}")),
        }
    }
    shared.ready.store(true, Ordering::Release);
    let payload = vec![0x5au8; size];
    let mut sent = 0u64;
    // Messages written off (windows that made no progress).
    let mut written_off = 0u64;
    let mut last_progress = (0u64, Instant::now());
    let mut refused = 0u64;
    let mut dropped = 0u64;
    let mut passes = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let mut blocked = false;
        let mut budget = SEND_BATCH as u64;
        if let Some(w) = window {
            let delivered = shared.delivered.load(Ordering::Relaxed);
            let outstanding = sent.saturating_sub(delivered + written_off + dropped);
            budget = budget.min(w.saturating_sub(outstanding));
            if budget == 0 {
                let now = Instant::now();
                if delivered != last_progress.0 {
                    last_progress = (delivered, now);
                } else if now >= last_progress.1 + STALL {
                    written_off += outstanding;
                    shared.stalls.fetch_add(1, Ordering::Relaxed);
                    last_progress = (delivered, now);
                }
                blocked = true;
            }
        }
        for _ in 0..budget {
            match client.send(channel, &payload) {
                Ok(()) => sent += 1,
                Err(SendError::QueueFull) => {
                    refused += 1;
                    blocked = true;
                    break;
                }
                Err(e) => return Err(format!("client: send refused: {e}")),
            }
        }
        let event = if blocked {
            // Waits (at most BLOCKED_WAIT) for the socket or the client's next deadline,
            // pumping as it goes: acknowledgements free the reliable queue.
            client.run_until_event(Some(BLOCKED_WAIT))
        } else {
            client.poll_once().map(|()| client.poll_event())
        };
        match event {
            Ok(Some(Event::Disconnected { reason, .. })) => {
                return Err(format!("client: disconnected: {reason}"))
            }
            Ok(Some(Event::Message { data, .. })) => client.recycle(data),
            Ok(_) => {}
            Err(e) => return Err(format!("client: {e}")),
        }
        passes += 1;
        if unreliable && (blocked || passes % 16 == 0) {
            // Not every pass, and not for reliable messages (which the endpoint never drops):
            // `stats` walks the connection's queues to sum up its memory.
            let stats = client.client().stats();
            dropped = stats.unreliable_dropped;
            let ch = stats
                .channels
                .get(usize::from(channel.0))
                .copied()
                .unwrap_or_default();
            shared.on_wire.store(
                ch.messages_sent - ch.dropped_unsent - ch.queued_messages,
                Ordering::Relaxed,
            );
        } else if !unreliable {
            shared.on_wire.store(sent, Ordering::Relaxed);
        }
        shared.sent.store(sent, Ordering::Relaxed);
        shared.refused.store(refused, Ordering::Relaxed);
        shared.dropped_unsent.store(dropped, Ordering::Relaxed);
    }
    *shared.sender_io.lock().expect("not poisoned") = Some(client.io_stats());
    shared.note(format!(
        "client io (offload {}): {:?}",
        client.has_offload(),
        client.io_stats()
    ));
    shared.note(format!("client connection: {:?}", client.client().stats()));
    Ok(())
}

/// Waits for the client's `Connected` event.
fn await_connected(client: &mut ClientDriver, shared: &Shared) -> Result<(), String> {
    let give_up = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if Instant::now() >= give_up || shared.stop.load(Ordering::Relaxed) {
            return Err("client: no connection in time".into());
        }
        match client.run_until_event(Some(Duration::from_millis(50))) {
            Ok(Some(Event::Connected { .. })) => return Ok(()),
            Ok(Some(Event::Disconnected { reason, .. })) => {
                return Err(format!("client: could not connect: {reason}"))
            }
            Ok(_) => {}
            Err(e) => return Err(format!("client: {e}")),
        }
    }
}

/// The client in a frame loop: each frame hands over its quota of `rate` (reliable messages
/// refused with `QueueFull` are not retried: the next frame brings new ones) or, unlimited,
/// batches until the frame is over, then waits in the driver until the next frame.
fn send_frames(
    mut client: ClientDriver,
    shared: &Shared,
    channel: ChannelId,
    size: usize,
    rate: Rate,
    hz: u32,
) -> Result<(), String> {
    await_connected(&mut client, shared)?;
    shared.ready.store(true, Ordering::Release);
    let payload = vec![0x5au8; size];
    let period = Duration::from_secs_f64(1.0 / f64::from(hz));
    let (mut frame, mut next_frame) = (0u64, Instant::now() + period);
    let (mut sent, mut refused) = (0u64, 0u64);
    let handle = |event: io::Result<Option<Event>>, client: &mut ClientDriver| match event {
        Ok(Some(Event::Disconnected { reason, .. })) => {
            Err(format!("client: disconnected: {reason}"))
        }
        Ok(Some(Event::Message { data, .. })) => {
            client.recycle(data);
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("client: {e}")),
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let quota = frame_quota(rate, hz, frame);
        loop {
            for _ in 0..quota.unwrap_or(64) {
                match client.send(channel, &payload) {
                    Ok(()) => sent += 1,
                    Err(SendError::QueueFull) => {
                        refused += 1;
                        break;
                    }
                    Err(e) => return Err(format!("client: send refused: {e}")),
                }
            }
            let event = client.poll_once().map(|()| client.poll_event());
            handle(event, &mut client)?;
            if quota.is_some() || Instant::now() >= next_frame {
                break;
            }
        }
        loop {
            let now = Instant::now();
            if now >= next_frame {
                break;
            }
            let event = client.run_until_event(Some(next_frame - now));
            handle(event, &mut client)?;
        }
        frame += 1;
        next_frame = (next_frame + period).max(Instant::now());
        let stats = client.client().stats();
        let ch = stats
            .channels
            .get(usize::from(channel.0))
            .copied()
            .unwrap_or_default();
        let out = ch.messages_sent - ch.dropped_unsent - ch.queued_messages;
        shared.sent.store(sent, Ordering::Relaxed);
        shared.on_wire.store(out, Ordering::Relaxed);
        shared.refused.store(refused, Ordering::Relaxed);
        shared
            .dropped_unsent
            .store(ch.dropped_unsent, Ordering::Relaxed);
    }
    *shared.sender_io.lock().expect("not poisoned") = Some(client.io_stats());
    shared.note(format!("client connection: {:?}", client.client().stats()));
    Ok(())
}

/// This thread's id (Linux), 0 where `/proc/thread-self` is missing.
fn current_tid() -> u64 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time of thread `tid` of this process and the time it waited, runnable, for a CPU: the
/// first two fields of its `schedstat`, in ns.
fn thread_cpu(tid: u64) -> Option<(Duration, Duration)> {
    if tid == 0 {
        return None;
    }
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut f = s.split_whitespace();
    let ran = Duration::from_nanos(f.next()?.parse().ok()?);
    let waited = Duration::from_nanos(f.next()?.parse().ok()?);
    Some((ran, waited))
}

/// User plus system CPU time of the whole process (all threads, live or exited), from
/// `/proc/self/stat`, in clock ticks of 10 ms (`CLK_TCK` is 100 on Linux).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses: utime and stime
    // are fields 14 and 15 of the line, so 12 and 13 after the ')'.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}
