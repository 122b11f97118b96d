//! A fixed-tick authoritative game over tickwire: the loop a game server runs.
//!
//! # Usage
//! ```text
//! cargo run --release --example game_loop                      # 8 clients, 30 ticks/s, 5 s
//! cargo run --release --example game_loop -- --clients 16 --hz 60 --secs 10
//! ```
//! The server simulates 32 entities at `--hz` ticks per second. Each tick it applies the
//! inputs that arrived, moves the entities and broadcasts a snapshot (tick number, every
//! entity's position, each client's last input applied) on the unreliable-sequenced channel
//! (1): a late snapshot is never delivered after a newer one. Each client, in its own thread,
//! sends an input at 60 Hz on the unreliable channel (0) and a chat line every second on the
//! reliable-ordered channel (3), which the server relays to everyone.
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
//! connected), the newest tick seen, chat lines received, and the time from a snapshot's tick
//! to its arrival; it exits with status 0 only if every client connected, received at least
//! 90% of the snapshots and every chat line, and never a snapshot older than one it had.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickwire::io::{ClientDriver, ServerDriver, SocketConfig};
use tickwire::{ChannelId, ClientConfig, ClientId, Event, ServerConfig, ServerIdentity, ServerKey};

const INPUTS: ChannelId = ChannelId(0);
const SNAPSHOTS: ChannelId = ChannelId(1);
const CHAT: ChannelId = ChannelId(3);
const ENTITIES: usize = 32;
const INPUT_HZ: u32 = 60;

struct Args {
    clients: usize,
    hz: u32,
    secs: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        clients: 8,
        hz: 30,
        secs: 5.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--clients" => a.clients = value.parse().map_err(|e| bad(&e))?,
            "--hz" => a.hz = value.parse().map_err(|e| bad(&e))?,
            "--secs" => a.secs = value.parse().map_err(|e| bad(&e))?,
            _ => {
                return Err(format!(
                    "unknown option {flag} (try --clients N --hz N --secs S)"
                ))
            }
        }
    }
    if !(1..=16).contains(&a.clients)
        || !(1..=1000).contains(&a.hz)
        || a.secs.is_nan()
        || a.secs <= 0.0
    {
        return Err("--clients 1..=16, --hz 1..=1000, --secs above 0".into());
    }
    Ok(a)
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
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("game_loop: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("game_loop: {e}");
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
}

fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.max_clients_per_ip = args.clients; // every client is on 127.0.0.1
    let mut server = ServerDriver::bind("127.0.0.1:0".parse()?, config, SocketConfig::default())?;
    let addr = server.local_addr()?;
    let key = server.server().public_key();
    println!(
        "server on {addr}: {ENTITIES} entities at {} ticks/s, {} clients sending inputs at \
         {INPUT_HZ} Hz, {} s",
        args.hz, args.clients, args.secs
    );
    let epoch = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..args.clients)
        .map(|i| {
            let done = Arc::clone(&done);
            let chat_until = epoch + Duration::from_secs_f64(args.secs);
            std::thread::spawn(move || client(i, addr, key, epoch, &done, chat_until))
        })
        .collect();

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
    let start_by = Instant::now() + Duration::from_secs(3);
    while server.server().client_count() < args.clients && Instant::now() < start_by {
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
            Event::Disconnected { client, reason } => {
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
    done.store(true, Ordering::Relaxed);
    let reports: Vec<Report> = clients
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    server.shutdown("game over");
    let until = Instant::now() + Duration::from_secs(1);
    while !server.server().is_idle() && Instant::now() < until {
        server.run_until_event(Some(Duration::from_millis(10)))?;
    }

    println!(
        "\n{:>6} {:>10} {:>8} {:>7} {:>6} {:>9} {:>9}",
        "client", "snapshots", "of", "stale", "chat", "age p50", "age p99"
    );
    let mut ok = true;
    for (i, r) in reports.iter().enumerate() {
        let expected = r.first.map_or(0, |f| u64::from(ticks - f + 1));
        let mut ages = r.ages_ms.clone();
        ages.sort_by(f64::total_cmp);
        let pct = |q: f64| {
            ages.get(((ages.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "{:>6} {:>10} {:>8} {:>7} {:>6} {:>7.2}ms {:>7.2}ms",
            i,
            r.snapshots,
            expected,
            r.stale,
            r.chat,
            pct(0.5),
            pct(0.99)
        );
        let enough = expected > 0 && r.snapshots * 10 >= expected * 9;
        ok &= r.connected && enough && r.stale == 0;
    }
    let chat_sent: u64 = reports.iter().map(|r| r.chats_sent).sum();
    let chat_expected = chat_sent * reports.len() as u64;
    let chat_got: u64 = reports.iter().map(|r| r.chat).sum();
    println!(
        "\n{tick} ticks; chat: {chat_got} of {chat_expected} relayed lines received ({relayed} \
         relayed by the server)"
    );
    ok &= chat_got == chat_expected;
    println!(
        "{}",
        if ok {
            "OK: every client got its snapshots in order and every chat line"
        } else {
            "FAILED: see the table"
        }
    );
    Ok(ok)
}

fn client(
    index: usize,
    server: SocketAddr,
    key: ServerKey,
    epoch: Instant,
    done: &AtomicBool,
    chat_until: Instant,
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
    while !done.load(Ordering::Relaxed) {
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
                    let age = epoch.elapsed().as_micros() as u64 - micros.min(u64::MAX / 2);
                    report.ages_ms.push(age as f64 / 1000.0);
                } else if channel == CHAT {
                    report.chat += 1;
                }
                driver.recycle(data);
            }
            Some(Event::Disconnected { reason, .. }) => {
                println!("client {index}: {reason}");
                break;
            }
            _ => {}
        }
    }
    report
}
