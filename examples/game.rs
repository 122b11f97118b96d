//! A fixed-tick authoritative game over tickwire: the loop a game server runs.
//!
//! # Usage
//! ```text
//! cargo run --release --example game                      # server and 8 clients, 30 ticks/s, 5 s
//! cargo run --release --example game -- --clients 16 --hz 60 --secs 10
//! cargo run --release --example game -- --hz 1000 --secs 3  # a 1 kHz tick
//!
//! # As separate processes, for example through the netsim proxy:
//! cargo run --release --example game -- --server 127.0.0.1:7777 --clients 4   # prints `server key: HEX`
//! cargo run --release --bin netsim -- --listen 127.0.0.1:9000 --upstream 127.0.0.1:7777 --loss 10% --delay 25ms
//! cargo run --release --example game -- --connect 127.0.0.1:9000 --server-key HEX --clients 4
//! ```
//! The server simulates 32 entities at `--hz` ticks per second. Each tick it applies the
//! inputs that arrived, moves the entities and broadcasts a snapshot (tick number, every
//! entity's position, each client's last input applied) on the unreliable-sequenced channel
//! ([`ChannelId::SEQUENCED`]): a late snapshot is never delivered after a newer one. Each
//! client, in its own thread, sends an input at 60 Hz on the unreliable channel
//! ([`ChannelId::UNRELIABLE`]) and a chat line every second on the reliable-ordered channel
//! ([`ChannelId::RELIABLE_ORDERED`]), which the server relays to everyone.
//!
//! # The loop
//! Between two ticks the server does not sleep: it waits in
//! [`ServerDriver::run_until_event`] with the time left until the next tick, so acks, resends
//! and heartbeats go out when they are due instead of up to a tick late, and events are handled
//! as they arrive:
//!
//! ```text
//! loop {
//!     if now >= next_tick { simulate(); broadcast(snapshot); next_tick += tick; continue; }
//!     match server.run_until_event(Some(next_tick - now))? { Some(event) => handle(event), None => {} }
//! }
//! ```
//! The clients do the same around their 60 Hz input.
//!
//! It prints, per client, the snapshots received (out of those broadcast while it was
//! connected), stale ones, chat lines received, the time from a snapshot's tick to its arrival
//! (in one process only: separate processes share no clock), and the connection's RTT and
//! loss each way. It exits with status 0 only if every client connected, received every chat
//! line and never a snapshot older than one it had, and enough snapshots: 90% in one process,
//! and through a lossy path 90% of what its measured incoming loss lets through.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tickwire::io::{ClientDriver, ServerDriver, SocketConfig};
use tickwire::{
    ChannelId, ClientConfig, ClientId, ConnectionStats, Event, ServerConfig, ServerIdentity,
    ServerKey,
};

const INPUTS: ChannelId = ChannelId::UNRELIABLE;
const SNAPSHOTS: ChannelId = ChannelId::SEQUENCED;
const CHAT: ChannelId = ChannelId::RELIABLE_ORDERED;
const ENTITIES: usize = 32;
const INPUT_HZ: u32 = 60;

/// A fixed-tick authoritative game: a server and its clients, in one process or apart.
#[derive(Parser, Debug)]
#[command(name = "game", long_about = None)]
struct Args {
    /// Clients (in one process, or the ones `--connect` runs; the ones `--server` waits for).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    clients: u16,
    /// Server ticks per second.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1000))]
    hz: u32,
    /// Seconds of play.
    #[arg(long, default_value_t = 5.0, value_parser = positive_secs)]
    secs: f64,
    /// Run only the server, on this address (prints `server key: HEX`).
    #[arg(long, value_name = "ADDR", conflicts_with = "connect")]
    server: Option<SocketAddr>,
    /// Run only the clients, against the server at this address.
    #[arg(long, value_name = "ADDR", requires = "server_key")]
    connect: Option<SocketAddr>,
    /// The server's key (printed by `--server`), required with `--connect`.
    #[arg(long, value_name = "HEX")]
    server_key: Option<ServerKey>,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds above 0")),
    }
}

/// One entity: position and velocity, in millimetres.
#[derive(Clone, Copy)]
struct Entity {
    x: i32,
    y: i32,
    vx: i32,
    vy: i32,
}

/// Snapshot layout: u32 tick || u64 micros since start || ENTITIES × (i32 x, i32 y) || then
/// per client (u64 id, u32 last input).
fn encode_snapshot(
    out: &mut Vec<u8>,
    tick: u32,
    micros: u64,
    entities: &[Entity],
    acks: &[(ClientId, u32)],
) {
    out.clear();
    out.extend_from_slice(&tick.to_be_bytes());
    out.extend_from_slice(&micros.to_be_bytes());
    for e in entities {
        out.extend_from_slice(&e.x.to_be_bytes());
        out.extend_from_slice(&e.y.to_be_bytes());
    }
    for (id, input) in acks {
        out.extend_from_slice(&id.0.to_be_bytes());
        out.extend_from_slice(&input.to_be_bytes());
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match (args.server, args.connect, args.server_key) {
        (Some(addr), _, _) => run_server_only(&args, addr),
        (None, Some(addr), Some(key)) => run_clients_only(&args, addr, key),
        _ => run_local(&args),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("game: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

struct Report {
    connected: bool,
    snapshots: u64,
    stale: u64,
    newest: u32,
    first: Option<u32>,
    chat: u64,
    chats_sent: u64,
    ages_ms: Vec<f64>,
    stats: ConnectionStats,
}

/// Server and clients in one process: the clients' threads stop when the server is done.
fn run_local(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let server = bind_server(args, "127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    let key = server.server().public_key();
    let epoch = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let chat_until = epoch + Duration::from_secs_f64(args.secs);
    let clients = spawn_clients(args, addr, key, Some(epoch), &done, chat_until);
    let summary = serve(args, server, epoch, Some(&done))?;
    let reports: Vec<Report> = clients
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    Ok(print_reports(
        &reports,
        summary.ticks,
        summary.relayed,
        false,
    ))
}

/// The server alone: waits for `--clients`, plays `--secs`, shuts down.
fn run_server_only(args: &Args, addr: SocketAddr) -> Result<bool, Box<dyn std::error::Error>> {
    let server = bind_server(args, addr)?;
    println!("server key: {}", server.server().public_key());
    let summary = serve(args, server, Instant::now(), None)?;
    println!(
        "{} ticks; {} chat lines relayed; {} clients connected at the end",
        summary.ticks, summary.relayed, summary.connected
    );
    Ok(summary.connected > 0 || summary.ticks > 0)
}

/// The clients alone: they play until the server ends the game (or it goes silent).
fn run_clients_only(
    args: &Args,
    addr: SocketAddr,
    key: ServerKey,
) -> Result<bool, Box<dyn std::error::Error>> {
    let done = Arc::new(AtomicBool::new(false));
    let chat_until = Instant::now() + Duration::from_secs_f64(args.secs);
    let clients = spawn_clients(args, addr, key, None, &done, chat_until);
    let reports: Vec<Report> = clients
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    let ticks = reports.iter().map(|r| r.newest).max().unwrap_or(0);
    Ok(print_reports(&reports, ticks, 0, true))
}

fn bind_server(args: &Args, addr: SocketAddr) -> Result<ServerDriver, Box<dyn std::error::Error>> {
    let mut config = ServerConfig::new(ServerIdentity::generate());
    // Every client may be on one address (127.0.0.1, or the proxy's).
    config.max_clients_per_ip = usize::from(args.clients);
    let server = ServerDriver::bind(addr, config, SocketConfig::default())?;
    println!(
        "server on {}: {ENTITIES} entities at {} ticks/s, {} clients sending inputs at \
         {INPUT_HZ} Hz, {} s",
        server.local_addr()?,
        args.hz,
        args.clients,
        args.secs
    );
    Ok(server)
}

fn spawn_clients(
    args: &Args,
    addr: SocketAddr,
    key: ServerKey,
    epoch: Option<Instant>,
    done: &Arc<AtomicBool>,
    chat_until: Instant,
) -> Vec<std::thread::JoinHandle<Report>> {
    (0..usize::from(args.clients))
        .map(|i| {
            let done = Arc::clone(done);
            // Apart from the server, a client also gives up some seconds after the game
            // should have ended.
            let give_up = Instant::now() + Duration::from_secs_f64(args.secs + 20.0);
            std::thread::spawn(move || client(i, addr, key, epoch, &done, chat_until, give_up))
        })
        .collect()
}

struct Summary {
    ticks: u32,
    relayed: u64,
    connected: usize,
}

/// The server's loop: wait for the clients, run the ticks, relay chat, shut down. With
/// `done`, the clients are told to stop before the shutdown (one process).
fn serve(
    args: &Args,
    mut server: ServerDriver,
    epoch: Instant,
    done: Option<&AtomicBool>,
) -> Result<Summary, Box<dyn std::error::Error>> {
    let wanted = usize::from(args.clients);
    let wait_for_clients = if done.is_some() { 3 } else { 60 };
    let tick_len = Duration::from_secs_f64(1.0 / f64::from(args.hz));
    let ticks = (args.secs * f64::from(args.hz)).round() as u32;
    let mut entities: Vec<Entity> = (0..ENTITIES as i32)
        .map(|i| Entity {
            x: i * 1000,
            y: 0,
            vx: 100 + i,
            vy: 50 - i,
        })
        .collect();
    let mut inputs: Vec<(ClientId, u32)> = Vec::new();
    let mut snapshot = Vec::with_capacity(1200);
    let mut tick = 0u32;
    let mut next_tick = Instant::now() + tick_len;
    let mut relayed = 0u64;
    // Give the clients a moment to connect before the first tick counts.
    let start_by = Instant::now() + Duration::from_secs(wait_for_clients);
    while server.server().client_count() < wanted && Instant::now() < start_by {
        if let Some(Event::Connected { client }) =
            server.run_until_event(Some(Duration::from_millis(10)))?
        {
            inputs.push((client, 0));
        }
        next_tick = Instant::now() + tick_len;
    }
    while tick < ticks {
        let now = Instant::now();
        if now >= next_tick {
            // One simulation step: inputs were applied as they came (the last one counts).
            for e in &mut entities {
                e.x += e.vx;
                e.y += e.vy;
            }
            tick += 1;
            let micros = epoch.elapsed().as_micros() as u64;
            encode_snapshot(&mut snapshot, tick, micros, &entities, &inputs);
            server.broadcast(SNAPSHOTS, &snapshot);
            next_tick += tick_len;
            continue;
        }
        // Until the next tick: serve the network, handle events as they come.
        let Some(event) = server.run_until_event(Some(next_tick - now))? else {
            continue;
        };
        match event {
            Event::Connected { client } => inputs.push((client, 0)),
            Event::Message {
                client,
                channel,
                data,
            } => {
                if channel == INPUTS && data.len() == 8 {
                    let seq = u32::from_be_bytes(data[..4].try_into().expect("4 octets"));
                    let steer = i32::from_be_bytes(data[4..8].try_into().expect("4 octets"));
                    if let Some(slot) = inputs.iter_mut().find(|(c, _)| *c == client) {
                        slot.1 = slot.1.max(seq);
                    }
                    let e = &mut entities[(client.0 as usize) % ENTITIES];
                    e.vx = steer;
                } else if channel == CHAT {
                    // Relay the line to everyone (reliable-ordered).
                    relayed += server.broadcast(CHAT, &data) as u64;
                }
                server.recycle(data);
            }
            Event::Disconnected { client, reason, .. } => {
                println!("client {client} left: {reason}");
                inputs.retain(|(c, _)| *c != client);
            }
            _ => {}
        }
    }
    // Let the last chat lines and snapshots arrive, then stop the clients.
    let drain = Instant::now() + Duration::from_millis(500);
    while Instant::now() < drain {
        if let Some(Event::Message { channel, data, .. }) =
            server.run_until_event(Some(drain - Instant::now()))?
        {
            if channel == CHAT {
                relayed += server.broadcast(CHAT, &data) as u64;
            }
        }
    }
    let wait_chat = Instant::now() + Duration::from_secs(1);
    while Instant::now() < wait_chat {
        server.run_until_event(Some(Duration::from_millis(10)))?;
    }
    if let Some(done) = done {
        done.store(true, Ordering::Relaxed);
    }
    let connected = server.server().client_count();
    server.shutdown("game over");
    let until = Instant::now() + Duration::from_secs(1);
    while !server.server().is_idle() && Instant::now() < until {
        server.run_until_event(Some(Duration::from_millis(10)))?;
    }
    Ok(Summary {
        ticks: tick,
        relayed,
        connected,
    })
}

/// Prints the table; returns whether every client did well enough.
fn print_reports(reports: &[Report], ticks: u32, relayed: u64, apart: bool) -> bool {
    println!(
        "\n{:>6} {:>10} {:>8} {:>7} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "client",
        "snapshots",
        "of",
        "stale",
        "chat",
        "age p50",
        "age p99",
        "rtt",
        "loss out",
        "loss in"
    );
    let mut ok = true;
    for (i, r) in reports.iter().enumerate() {
        let newest = if apart { r.newest } else { ticks };
        let expected = r
            .first
            .map_or(0, |f| u64::from(newest.saturating_sub(f) + 1));
        let mut ages = r.ages_ms.clone();
        ages.sort_by(f64::total_cmp);
        let pct = |q: f64| {
            ages.get(((ages.len() as f64 - 1.0) * q).round() as usize)
                .map_or("-".to_string(), |a| format!("{a:.2}ms"))
        };
        println!(
            "{:>6} {:>10} {:>8} {:>7} {:>6} {:>9} {:>9} {:>6.1}ms {:>7.1}% {:>7.1}%",
            i,
            r.snapshots,
            expected,
            r.stale,
            r.chat,
            pct(0.5),
            pct(0.99),
            r.stats.rtt.as_secs_f64() * 1000.0,
            r.stats.loss * 100.0,
            r.stats.incoming_loss * 100.0
        );
        // Through a lossy path, snapshots are lost as often as the path loses packets.
        let through = if apart {
            (1.0 - r.stats.incoming_loss).clamp(0.0, 1.0)
        } else {
            1.0
        };
        let enough = expected > 0 && r.snapshots as f64 >= expected as f64 * 0.9 * through;
        ok &= r.connected && enough && r.stale == 0;
    }
    let chat_sent: u64 = reports.iter().map(|r| r.chats_sent).sum();
    let chat_expected = chat_sent * reports.len() as u64;
    let chat_got: u64 = reports.iter().map(|r| r.chat).sum();
    if apart {
        println!(
            "\nnewest tick {ticks}; chat: {chat_got} of {chat_expected} relayed lines received"
        );
    } else {
        println!(
            "\n{ticks} ticks; chat: {chat_got} of {chat_expected} relayed lines received \
             ({relayed} relayed by the server)"
        );
    }
    ok &= chat_got == chat_expected;
    println!(
        "{}",
        if ok {
            "OK: every client got its snapshots in order and every chat line"
        } else {
            "FAILED: see the table"
        }
    );
    ok
}

fn client(
    index: usize,
    server: SocketAddr,
    key: ServerKey,
    epoch: Option<Instant>,
    done: &AtomicBool,
    chat_until: Instant,
    give_up: Instant,
) -> Report {
    let mut report = Report {
        connected: false,
        snapshots: 0,
        stale: 0,
        newest: 0,
        first: None,
        chat: 0,
        chats_sent: 0,
        ages_ms: Vec::new(),
        stats: ConnectionStats::default(),
    };
    let Ok(mut driver) =
        ClientDriver::connect(ClientConfig::new(key), server, SocketConfig::default())
    else {
        return report;
    };
    let input_len = Duration::from_secs_f64(1.0 / f64::from(INPUT_HZ));
    let mut next_input = Instant::now();
    let mut next_chat = Instant::now() + Duration::from_secs(1);
    let mut input_seq = 0u32;
    let mut chats_sent = 0u32;
    while !done.load(Ordering::Relaxed) && Instant::now() < give_up {
        let now = Instant::now();
        if report.connected && now >= next_input {
            input_seq += 1;
            let mut input = [0u8; 8];
            input[..4].copy_from_slice(&input_seq.to_be_bytes());
            let steer = 100 + (input_seq as i32 % 50) - 25;
            input[4..].copy_from_slice(&steer.to_be_bytes());
            let _ = driver.send(INPUTS, &input);
            next_input += input_len;
            if now >= next_chat && now < chat_until {
                let line = format!("client {index} says hello #{chats_sent}");
                if driver.send(CHAT, line.as_bytes()).is_ok() {
                    chats_sent += 1;
                    report.chats_sent += 1;
                    next_chat += Duration::from_secs(1);
                }
            }
            continue;
        }
        let wait = if report.connected {
            next_input.saturating_duration_since(now)
        } else {
            Duration::from_millis(10)
        };
        let Ok(event) = driver.run_until_event(Some(wait)) else {
            break;
        };
        match event {
            Some(Event::Connected { .. }) => {
                report.connected = true;
                next_input = Instant::now();
                next_chat = Instant::now() + Duration::from_secs(1);
            }
            Some(Event::Message { channel, data, .. }) => {
                if channel == SNAPSHOTS && data.len() >= 12 {
                    let tick = u32::from_be_bytes(data[..4].try_into().expect("4 octets"));
                    let micros = u64::from_be_bytes(data[4..12].try_into().expect("8 octets"));
                    if tick <= report.newest {
                        report.stale += 1;
                    }
                    report.newest = report.newest.max(tick);
                    report.first.get_or_insert(tick);
                    report.snapshots += 1;
                    // The age of a snapshot needs the server's clock: one process only.
                    if let Some(epoch) = epoch {
                        let now = epoch.elapsed().as_micros() as u64;
                        report
                            .ages_ms
                            .push(now.saturating_sub(micros) as f64 / 1000.0);
                    }
                } else if channel == CHAT {
                    report.chat += 1;
                }
                driver.recycle(data);
            }
            Some(Event::Disconnected { reason, stats, .. }) => {
                println!("client {index}: {reason}");
                // The connection's figures as it ended.
                report.stats = *stats;
                return report;
            }
            _ => {}
        }
    }
    report.stats = driver.client().stats();
    report
}
