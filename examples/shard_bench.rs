//! Shards against one server: 1,000 clients over 127.0.0.1 sending reliable-ordered messages
//! to a [`ShardedServer`] of 1 shard, then of 2 (and so on), in one process; messages
//! delivered per second and CPU time per message for each.
//!
//! # Usage
//! ```text
//! cargo run --release --example shard_bench                        # 1,000 clients, 1 and 2 shards
//! cargo run --release --example shard_bench -- --shards 1,2 --rounds 3 --secs 3
//! cargo run --release --example shard_bench -- --work-us 5         # 5 us of game logic per message
//! ```
//! The clients are sans-IO [`Client`]s, each on its own UDP socket, all driven by
//! `--client-threads` threads (default 1) over one mio poll each: per pass a thread reads every
//! socket that is readable, runs the due timers (once a millisecond), and visits only the
//! clients that received something, had a timer due or still have room to send: each is offered
//! up to 8 new messages (its send queue holds 64 KiB; once full, it is offered nothing more until
//! a datagram, an ack, arrives) and sends what it has due. So a thread that waits for the
//! server costs little, and the clients' CPU per message stays about what sending costs. Each shard's thread runs [`Shard::run_until_event`] and counts the
//! messages delivered, spinning `--work-us` per message if asked (the game logic a real server
//! runs per message).
//!
//! After all clients connected and `--warmup` seconds, the controller samples the delivered
//! count and the CPU time of every thread (`/proc/self/task/TID/schedstat`, ns, with the time
//! each waited runnable for a CPU) and of the process, sleeps `--secs`, and samples again.
//! Printed per run: messages delivered per second, the server threads' CPU per message, the
//! clients' CPU per message, and their time waiting for a CPU (how much the machine's cores
//! were oversubscribed). With `--rounds` the shard counts alternate (1, 2, 1, 2, ...) so that
//! a drift of the machine's load hits both.
//!
//! The clients need CPU too: on a machine with as many cores as shards, the clients take part
//! of the cores the shards would use, so the gain of a second shard is bounded by what the
//! clients leave (see the README's "Shards" for the figures and what they mean).
//!
//! `--load raw` replaces the `Client`s with a cheap generator written against
//! `docs/PROTOCOL.md` (`examples/common/raw.rs` does the handshake): each of the 1,000 clients
//! seals packets of as many reliable-ordered MESSAGE_SEQ frames as one packet holds (13 of 64
//! octets), keeps `--window` of them unacknowledged (refilling once half are acknowledged, in
//! one GSO call), reads only the ACK fields of what the server sends back (no decryption), and
//! resends a packet unacknowledged for max(250 ms, 3 x the smoothed time to its ack), the same
//! octets; all clients together keep at most `--in-flight` packets per shard unacknowledged,
//! what the server's socket buffer holds. It costs a fraction of a `Client`'s CPU per message,
//! but on loopback the sender's system calls also do the receiving kernel's work (a NIC and the
//! server's kernel would do it on a real network), so on two cores it still takes most of the
//! second core when the server does nothing but count.
//!
//! ```text
//! cargo run --release --example shard_bench -- --load raw --rounds 3 --work-us 2
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use mio::{Events, Interest, Poll, Token};
use tickwire::io::{bind_socket, Shard, ShardedServer, SocketConfig};
use tickwire::{
    ChannelId, Client, ClientConfig, ConnectionConfig, Event, RetryPolicy, ServerConfig,
    ServerIdentity, ServerKey,
};

const RELIABLE_ORDERED: ChannelId = ChannelId(3);
/// New messages offered to each connected client per pass.
const BURST: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// 1,000 clients over loopback against 1 and 2 shards: messages per second and CPU per message.
#[derive(Parser, Debug, Clone)]
#[command(name = "shard_bench", long_about = None)]
struct Args {
    /// Clients.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Shard counts to run, comma-separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    shards: Vec<usize>,
    /// Times each shard count runs (alternating).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Threads driving the clients.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Seconds after every client connected, before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Message size in octets (at least 8).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Microseconds of work (a spin) per message on the server, for its game logic.
    #[arg(long, default_value_t = 0.0)]
    work_us: f64,
    /// What sends the messages: `clients`, the crate's `Client`s; `raw`, a cheap generator
    /// of sealed packets written against the protocol (see the module docs).
    #[arg(long, value_enum, default_value_t = Load::Clients)]
    load: Load,
    /// With `--load raw`: packets each client keeps unacknowledged.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// With `--load raw`: packets unacknowledged over all clients, per shard (each shard's
    /// socket has its own receive buffer, which holds about 1,500 of these packets; more in
    /// flight would only be dropped there and sent again).
    #[arg(long, default_value_t = 1024)]
    in_flight: usize,
}

/// What sends the messages.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    /// The crate's sans-IO `Client`s (as a game's clients are).
    Clients,
    /// A generator of sealed packets with little work per message (`raw` module).
    Raw,
}

#[path = "common/raw.rs"]
mod raw;

fn connection_config() -> ConnectionConfig {
    ConnectionConfig {
        send_queue_bytes: 64 << 10,
        ..ConnectionConfig::default()
    }
}

/// A thread's id and what it publishes.
#[derive(Default)]
struct Tids(Mutex<Vec<u64>>);

impl Tids {
    fn add(&self) {
        self.0.lock().unwrap().push(current_tid());
    }
    fn cpu(&self) -> (Duration, Duration) {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|&t| thread_cpu(t))
            .fold((Duration::ZERO, Duration::ZERO), |(a, b), (c, d)| {
                (a + c, b + d)
            })
    }
}

struct Sample {
    at: Instant,
    delivered: u64,
    server: (Duration, Duration),
    clients: (Duration, Duration),
    process: Option<Duration>,
}

struct RunResult {
    shards: usize,
    rate: f64,
    server_ns: f64,
    client_ns: f64,
    process_ns: Option<f64>,
    server_wait_pct: f64,
    client_wait_pct: f64,
    relayed: u64,
    /// Seconds until every client connected (each handshake takes the shared locks).
    connect_secs: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.size < 8 || args.clients == 0 || args.client_threads == 0 {
        eprintln!("error: --size at least 8, --clients and --client-threads at least 1");
        return ExitCode::from(2);
    }
    println!(
        "{} clients on {} thread(s), {} octet reliable-ordered messages, {:.1} s measured, \
         {:.1} us of work per message on the server, {} cores",
        args.clients,
        args.client_threads,
        args.size,
        args.secs,
        args.work_us,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut results = Vec::new();
    for _ in 0..args.rounds {
        for &n in &args.shards {
            match run(&args, n) {
                Ok(r) => {
                    print_result(&r);
                    results.push(r);
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    }
    if args.rounds > 1 || args.shards.len() > 1 {
        println!("median per shard count:");
        let mut counts = args.shards.clone();
        counts.sort_unstable();
        counts.dedup();
        let base = median(&results, counts[0], |r| r.rate);
        for n in counts {
            let rate = median(&results, n, |r| r.rate);
            println!(
                "  {n} shard(s): {:.0} msg/s ({:.2}x), server {:.0} ns/msg, clients {:.0} ns/msg",
                rate,
                rate / base,
                median(&results, n, |r| r.server_ns),
                median(&results, n, |r| r.client_ns),
            );
        }
    }
    ExitCode::SUCCESS
}

fn median(results: &[RunResult], shards: usize, f: impl Fn(&RunResult) -> f64) -> f64 {
    let mut v: Vec<f64> = results
        .iter()
        .filter(|r| r.shards == shards)
        .map(f)
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn print_result(r: &RunResult) {
    println!(
        "{} shard(s): {:>9.0} msg/s; CPU per message: server {:>5.0} ns, clients {:>5.0} ns, \
         process {}; waiting for a CPU: server {:.0}%, clients {:.0}%; {} datagrams relayed; \
         all connected in {:.2} s",
        r.shards,
        r.rate,
        r.server_ns,
        r.client_ns,
        r.process_ns
            .map_or_else(|| "-".to_string(), |n| format!("{n:.0} ns")),
        r.server_wait_pct,
        r.client_wait_pct,
        r.relayed,
        r.connect_secs
    );
}

fn run(args: &Args, shards: usize) -> Result<RunResult, Box<dyn std::error::Error>> {
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.connection = connection_config();
    config.max_clients = args.clients;
    config.max_clients_per_ip = args.clients;
    config.max_pending_per_ip = args.clients;
    config.max_pending = args.clients.max(1024);
    config.retry = RetryPolicy::Never;
    let (handle, shard_list) = ShardedServer::bind(
        "127.0.0.1:0".parse()?,
        config,
        SocketConfig::default(),
        shards,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let server_tids = Arc::new(Tids::default());
    let counters: Vec<Arc<AtomicU64>> = (0..shards).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let work = Duration::from_secs_f64(args.work_us / 1e6);
    let servers: Vec<JoinHandle<std::io::Result<()>>> = shard_list
        .into_iter()
        .zip(&counters)
        .map(|(shard, count)| {
            let (stop, tids, count) = (
                Arc::clone(&stop),
                Arc::clone(&server_tids),
                Arc::clone(count),
            );
            std::thread::spawn(move || serve(shard, &stop, &tids, &count, work))
        })
        .collect();
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let client_tids = Arc::new(Tids::default());
    let per_thread = args.clients.div_ceil(args.client_threads);
    let mut clients = Vec::new();
    let mut left = args.clients;
    while left > 0 {
        let n = per_thread.min(left);
        left -= n;
        let progress = Progress {
            stop: Arc::clone(&stop),
            connected: Arc::clone(&connected),
            failed: Arc::clone(&failed),
            tids: Arc::clone(&client_tids),
        };
        let (addr, key, size) = (handle.local_addr(), handle.public_key(), args.size);
        let (load, window) = (args.load, args.window);
        let cap = (args.in_flight * shards).div_ceil(args.client_threads);
        clients.push(std::thread::spawn(move || match load {
            Load::Clients => drive_clients(addr, key, n, size, &progress),
            Load::Raw => drive_raw(addr, &key, n, size, window, cap, &progress),
        }));
    }
    let connecting = Instant::now();
    let give_up = connecting + CONNECT_TIMEOUT;
    while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < args.clients {
        if Instant::now() > give_up {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let connect_secs = connecting.elapsed().as_secs_f64();
    let n_connected = connected.load(Ordering::Relaxed);
    if n_connected < args.clients {
        eprintln!(
            "note: {n_connected} of {} clients connected ({} failed)",
            args.clients,
            failed.load(Ordering::Relaxed)
        );
    }
    std::thread::sleep(Duration::from_secs_f64(args.warmup));
    let sample = || Sample {
        at: Instant::now(),
        delivered: counters.iter().map(|c| c.load(Ordering::Relaxed)).sum(),
        server: server_tids.cpu(),
        clients: client_tids.cpu(),
        process: process_cpu(),
    };
    let a = sample();
    std::thread::sleep(Duration::from_secs_f64(args.secs));
    let b = sample();
    let relayed = handle
        .stats()
        .iter()
        .map(|s| s.info.relay.taken)
        .sum::<u64>();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread")?;
    }
    for s in servers {
        s.join().expect("shard thread")?;
    }
    let msgs = (b.delivered - a.delivered).max(1) as f64;
    let secs = (b.at - a.at).as_secs_f64();
    let ns = |d: Duration| d.as_nanos() as f64 / msgs;
    let wall_ns = (b.at - a.at).as_nanos() as f64;
    Ok(RunResult {
        shards,
        rate: msgs / secs,
        server_ns: ns(b.server.0 - a.server.0),
        client_ns: ns(b.clients.0 - a.clients.0),
        process_ns: a.process.zip(b.process).map(|(a, b)| ns(b - a)),
        server_wait_pct: (b.server.1 - a.server.1).as_nanos() as f64 / wall_ns / shards as f64
            * 100.0,
        client_wait_pct: (b.clients.1 - a.clients.1).as_nanos() as f64
            / wall_ns
            / args.client_threads as f64
            * 100.0,
        relayed,
        connect_secs,
    })
}

/// One shard's thread: counts the messages, spinning `work` for each.
fn serve(
    mut shard: Shard,
    stop: &AtomicBool,
    tids: &Tids,
    count: &AtomicU64,
    work: Duration,
) -> std::io::Result<()> {
    tids.add();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match shard.run_until_event(Some(Duration::from_millis(10)))? {
            Some(Event::Message { data, .. }) => {
                if !work.is_zero() {
                    let until = Instant::now() + work;
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                }
                shard.recycle(data);
                n += 1;
                if n % 64 == 0 {
                    count.store(n, Ordering::Relaxed);
                }
            }
            Some(_) => {}
            None => count.store(n, Ordering::Relaxed),
        }
    }
    Ok(())
}

/// What a client thread shares with the controller: when to stop, how many of its clients
/// connected or failed, and its thread id (for its CPU time).
struct Progress {
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tids: Arc<Tids>,
}

/// Drives `n` clients on one thread until `progress.stop`.
fn drive_clients(
    server: SocketAddr,
    key: ServerKey,
    n: usize,
    size: usize,
    progress: &Progress,
) -> std::io::Result<()> {
    progress.tids.add();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let socket_config = SocketConfig {
        recv_buffer_bytes: Some(256 << 10),
        send_buffer_bytes: Some(256 << 10),
        ..SocketConfig::default()
    };
    let mut sockets = Vec::with_capacity(n);
    let mut endpoints = Vec::with_capacity(n);
    let mut up = vec![false; n];
    for i in 0..n {
        let mut socket = bind_socket("127.0.0.1:0".parse().unwrap(), &socket_config)?;
        poll.registry()
            .register(&mut socket, Token(i), Interest::READABLE)?;
        sockets.push(socket);
        let mut config = ClientConfig::new(key);
        config.connection = connection_config();
        endpoints
            .push(Client::connect(config, server, Instant::now()).map_err(std::io::Error::other)?);
    }
    let message = vec![0x5a; size];
    let mut buf = vec![0u8; 1 << 16];
    let mut out = vec![0u8; 1500];
    // Clients to visit this pass (each once): readable, a timer due, or with room to send.
    let mut active: Vec<usize> = (0..n).collect();
    let mut queued = vec![true; n];
    // Clients whose send queue was full: offered nothing until a datagram (an ack) arrives.
    let mut blocked = vec![false; n];
    let mut next_scan = Instant::now();
    while !progress.stop.load(Ordering::Relaxed) {
        let wait = if active.is_empty() {
            Some(Duration::from_millis(1))
        } else {
            Some(Duration::ZERO)
        };
        poll.poll(&mut events, wait)?;
        let now = Instant::now();
        for ev in &events {
            let i = ev.token().0;
            loop {
                match sockets[i].recv_from(&mut buf) {
                    Ok((len, from)) => endpoints[i].handle_datagram(now, from, &mut buf[..len]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
            blocked[i] = false;
            if !queued[i] {
                queued[i] = true;
                active.push(i);
            }
        }
        if now >= next_scan {
            // The timers (resends, acks owed, heartbeats), once a millisecond.
            next_scan = now + Duration::from_millis(1);
            for (i, client) in endpoints.iter_mut().enumerate() {
                if client.poll_timeout().is_some_and(|t| t <= now) {
                    client.handle_timeout(now);
                    if !queued[i] {
                        queued[i] = true;
                        active.push(i);
                    }
                }
            }
        }
        let visiting = std::mem::take(&mut active);
        for &i in &visiting {
            queued[i] = false;
            let client = &mut endpoints[i];
            if up[i] && !blocked[i] {
                for _ in 0..BURST {
                    if client.send(now, RELIABLE_ORDERED, &message).is_err() {
                        blocked[i] = true;
                        break;
                    }
                }
            }
            while let Some(t) = client.poll_transmit(now, &mut out) {
                // A datagram the socket would not take is left to the reliable layer's resend.
                let _ = sockets[i].send_to(&out[..t.len], t.destination);
            }
            while let Some(ev) = client.poll_event() {
                match ev {
                    Event::Connected { .. } => {
                        up[i] = true;
                        progress.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Disconnected { reason, .. } => {
                        if up[i] {
                            progress.connected.fetch_sub(1, Ordering::Relaxed);
                        }
                        up[i] = false;
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("note: client disconnected: {reason}");
                    }
                    Event::Message { data, .. } => client.recycle(data),
                    _ => {}
                }
            }
            // Still room to send: visit it again next pass.
            if up[i] && !blocked[i] && !queued[i] {
                queued[i] = true;
                active.push(i);
            }
        }
    }
    Ok(())
}

/// The shortest resend timeout of the raw generator's packets; it is otherwise three times
/// the smoothed time to an acknowledgement. On loopback a packet is lost only when a socket
/// buffer overflows, which the in-flight cap keeps rare, while the time to an acknowledgement
/// varies a lot (a server reads a batch, then works through its messages): a short timeout
/// resends what is merely queued.
const RAW_MIN_RTO: Duration = Duration::from_millis(250);

/// A packet the raw generator sent and the server has not acknowledged.
struct InFlight {
    pn: u32,
    sent: Instant,
    acked: bool,
    /// Sent more than once (its acknowledgement then gives no RTT sample).
    again: bool,
    datagram: Vec<u8>,
}

/// One client of the raw generator: the session keys of a real handshake, and packets of
/// reliable-ordered MESSAGE_SEQ frames, as many as one unfragmented packet holds, sealed
/// here and sent `window` at a time with one GSO call (they are all the same length). It
/// reads only the ACK fields of what the server sends (no decryption): acknowledged packets
/// free the window, and a packet unacknowledged after `RAW_RTO` goes again, the same octets
/// (its packet number was never received, or the server drops the copy and acknowledges it
/// again), so every message is delivered once and in order.
struct RawClient {
    sock: mio::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
    key: tickwire::pipeline::PacketKey,
    next_pn: u32,
    next_seq: u16,
    /// The newest packet number the server sent (what this side's ACK fields name).
    server_pn: u32,
    in_flight: std::collections::VecDeque<InFlight>,
    spare: Vec<Vec<u8>>,
    /// Packets in `in_flight` not acknowledged yet.
    unacked: usize,
    /// Datagrams sent, and of those sent again.
    sent: u64,
    resent: u64,
}

impl RawClient {
    /// Seals the next packet: `per_packet` messages of `message`, each its sequence number.
    fn seal_next(
        &mut self,
        message: &[u8],
        per_packet: usize,
        scratch: &mut (Vec<u8>, Vec<u8>, Vec<u8>),
    ) {
        use tickwire::pipeline::{encode_into, Seal, SendOptions};
        use tickwire::wire::{frame, AckFields, TypeFields};
        let (plain, compressed, payload) = scratch;
        plain.clear();
        for _ in 0..per_packet {
            frame::put_message(plain, RELIABLE_ORDERED.0, Some(self.next_seq), message);
            self.next_seq = self.next_seq.wrapping_add(1);
        }
        let fields = TypeFields::Ack(AckFields {
            ack_id: self.server_pn as u16,
            ack_bits: 0,
        });
        let pn = self.next_pn;
        self.next_pn += 1;
        let opts = SendOptions {
            reliable: true,
            ..SendOptions::default()
        };
        let seal = Seal::Sealed {
            key: &self.key,
            packet_number: pn,
        };
        let header = encode_into(compressed, fields, plain, opts, seal, payload)
            .expect("one packet's worth of messages");
        let mut datagram = self.spare.pop().unwrap_or_default();
        datagram.resize(tickwire::wire::MAX_DATA_DATAGRAM, 0);
        let n = tickwire::pipeline::fragment::write_datagram(
            &header,
            &fields,
            payload,
            0,
            &mut datagram,
        )
        .expect("an unfragmented packet");
        datagram.truncate(n);
        self.unacked += 1;
        self.in_flight.push_back(InFlight {
            pn,
            sent: Instant::now(),
            acked: false,
            again: false,
            datagram,
        });
    }

    /// Takes the ACK fields of a datagram from the server; returns how many packets they
    /// acknowledged first. Updates `srtt` from those sent once.
    fn on_datagram(&mut self, datagram: &[u8], now: Instant, srtt: &mut Duration) -> usize {
        use tickwire::pipeline::seal::packet_number;
        use tickwire::wire::{Body, Packet, TypeFields};
        let Ok(packet) = Packet::parse(datagram) else {
            return 0;
        };
        self.server_pn = self.server_pn.max(packet_number(&packet.header));
        let Body::Data {
            fields: TypeFields::Ack(ack),
            ..
        } = packet.body
        else {
            return 0;
        };
        // The 16-bit ACK ID names the newest of this side's packet numbers it can.
        let newest = self.next_pn - 1;
        let Some(p) = newest.checked_sub(u32::from((newest as u16).wrapping_sub(ack.ack_id)))
        else {
            return 0;
        };
        let mut newly = 0;
        for f in &mut self.in_flight {
            let back = p.wrapping_sub(f.pn);
            let named =
                back == 0 || (1..=16).contains(&back) && ack.ack_bits & (0x8000 >> (back - 1)) != 0;
            if named && !f.acked {
                f.acked = true;
                newly += 1;
                self.unacked -= 1;
                if !f.again {
                    *srtt = (*srtt * 7 + now.saturating_duration_since(f.sent)) / 8;
                }
            }
        }
        while self.in_flight.front().is_some_and(|f| f.acked) {
            let f = self.in_flight.pop_front().expect("a front");
            self.spare.push(f.datagram);
        }
        newly
    }

    /// Sends the unacknowledged datagrams from `from` on, those of one length in one GSO
    /// call (as many as the socket's GSO takes); returns how many went.
    fn send_from(&mut self, from: usize, batch: &mut Vec<u8>) -> u64 {
        let max_segments = self.state.max_gso_segments().max(1);
        let mut sent = 0;
        let mut i = from;
        while i < self.in_flight.len() {
            if self.in_flight[i].acked {
                i += 1;
                continue;
            }
            let len = self.in_flight[i].datagram.len();
            batch.clear();
            while i < self.in_flight.len()
                && self.in_flight[i].datagram.len() == len
                && batch.len() + len <= 64_000
                && batch.len() / len < max_segments
            {
                if !self.in_flight[i].acked {
                    batch.extend_from_slice(&self.in_flight[i].datagram);
                }
                i += 1;
            }
            let t = quinn_udp::Transmit {
                destination: self.sock.peer_addr().expect("connected"),
                ecn: None,
                contents: batch,
                segment_size: (batch.len() > len).then_some(len),
                src_ip: None,
            };
            // A datagram the socket would not take goes again at its resend timeout.
            if self.state.try_send((&self.sock).into(), &t).is_ok() {
                sent += (batch.len() / len.max(1)) as u64;
            }
        }
        self.sent += sent;
        sent
    }
}

/// Drives `n` raw clients on one thread until `progress.stop` (`--load raw`).
fn drive_raw(
    server: SocketAddr,
    key: &ServerKey,
    n: usize,
    size: usize,
    window: usize,
    in_flight_cap: usize,
    progress: &Progress,
) -> std::io::Result<()> {
    use tickwire::connection::PACKET_PLAINTEXT;
    use tickwire::wire::frame;
    progress.tids.add();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let message = vec![0x5a; size];
    // As many MESSAGE_SEQ frames as one packet holds.
    let mut probe = Vec::new();
    frame::put_message(&mut probe, RELIABLE_ORDERED.0, Some(0), &message);
    let per_packet = (PACKET_PLAINTEXT / probe.len()).max(1);
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        match raw::handshake(std::net::Ipv4Addr::LOCALHOST, server, key) {
            Ok(h) => {
                h.sock.set_nonblocking(true)?;
                let state = quinn_udp::UdpSocketState::new((&h.sock).into())?;
                let mut sock = mio::net::UdpSocket::from_std(h.sock);
                poll.registry()
                    .register(&mut sock, Token(clients.len()), Interest::READABLE)?;
                clients.push(RawClient {
                    sock,
                    state,
                    key: h.keys.client_to_server,
                    next_pn: 1,
                    next_seq: 0,
                    server_pn: 0,
                    in_flight: std::collections::VecDeque::with_capacity(2 * window),
                    spare: Vec::new(),
                    unacked: 0,
                    sent: 0,
                    resent: 0,
                });
                progress.connected.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                progress.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("note: raw client {i} did not connect: {e}");
            }
        }
        if progress.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
    let mut scratch = (Vec::new(), Vec::new(), Vec::new());
    let mut batch = Vec::with_capacity(64_000);
    let mut buf = vec![0u8; 2048];
    // Clients with room in their window: all, at first.
    let mut active: Vec<usize> = (0..clients.len()).collect();
    let mut queued = vec![true; clients.len()];
    let mut next_scan = Instant::now();
    // Packets unacknowledged over all this thread's clients, at most `in_flight_cap` (more
    // than the server's socket buffer holds would only be dropped there and sent again).
    let mut unacked = 0usize;
    let mut srtt = RAW_MIN_RTO;
    let mut waiting = std::collections::VecDeque::<usize>::new();
    while !progress.stop.load(Ordering::Relaxed) {
        let wait = if active.is_empty() {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        };
        poll.poll(&mut events, Some(wait))?;
        let now = Instant::now();
        for ev in &events {
            let i = ev.token().0;
            while let Ok(len) = clients[i].sock.recv(&mut buf) {
                unacked -= clients[i].on_datagram(&buf[..len], now, &mut srtt);
            }
            if !queued[i] {
                queued[i] = true;
                active.push(i);
            }
        }
        // Clients that waited for the generator's budget, first come first served.
        while unacked < in_flight_cap && !waiting.is_empty() {
            let i = waiting.pop_front().expect("a waiting client");
            if !queued[i] {
                queued[i] = true;
                active.push(i);
            }
        }
        if now >= next_scan {
            // Resends, every 10 ms: the packets unacknowledged for the resend timeout.
            next_scan = now + Duration::from_millis(10);
            let rto = (srtt * 3).max(RAW_MIN_RTO);
            for c in &mut clients {
                let due = c
                    .in_flight
                    .iter()
                    .position(|f| !f.acked && now.saturating_duration_since(f.sent) >= rto);
                if let Some(first) = due {
                    for f in c.in_flight.iter_mut().skip(first) {
                        f.sent = now;
                        f.again = true;
                    }
                    c.resent += c.send_from(first, &mut batch);
                }
            }
        }
        for i in std::mem::take(&mut active) {
            queued[i] = false;
            let c = &mut clients[i];
            let from = c.in_flight.len();
            // New packets once half the window is free (so that each GSO call carries
            // several), while the window has room and the ordered window is far.
            if c.unacked > window / 2 {
                continue;
            }
            while c.unacked < window && c.in_flight.len() < 2 * window {
                if unacked >= in_flight_cap {
                    waiting.push_back(i);
                    break;
                }
                c.seal_next(&message, per_packet, &mut scratch);
                unacked += 1;
            }
            if c.in_flight.len() > from {
                c.send_from(from, &mut batch);
            }
        }
    }
    let sent: u64 = clients.iter().map(|c| c.sent).sum();
    let resent: u64 = clients.iter().map(|c| c.resent).sum();
    eprintln!("  (raw generator: {sent} datagrams sent, {resent} of them again)");
    Ok(())
}

/// This thread's id (Linux), 0 where `/proc/thread-self` is missing.
fn current_tid() -> u64 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time of thread `tid` and the time it waited, runnable, for a CPU (ns, `schedstat`).
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

/// User plus system CPU time of the whole process, from `/proc/self/stat` (10 ms ticks).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}
