//! Scale out: a game backend that signs connect tokens for several echo servers, and clients
//! that get their token from it and connect to the server it names.
//!
//! # Usage
//! ```text
//! cargo run --release --example token_backend                      # 2 servers, 8 clients
//! cargo run --release --example token_backend -- --servers 4 --clients 32 --shards 2
//! ```
//! One run holds three roles, each talking to the others only as separate machines would:
//!
//! - the backend (a matchmaker): a TCP listener on 127.0.0.1 with a line protocol.
//!   `REGISTER ADDR KEY` (a server announces itself, once it is ready) and `DRAIN ADDR` (it
//!   takes no new clients) answer `OK`; `JOIN` answers `TOKEN ADDR KEY TOKEN_HEX ID`: the
//!   least-loaded registered server, its key to pin, and a connect token signed with the
//!   backend's key ([`TokenSigner::issue`]) naming that server's address only, valid 30 s, for
//!   a client id the backend picks (below 2^63). `ERR ...` when no server takes clients;
//! - `--servers` echo servers, each on its own port (a thread each here; a process or a
//!   machine each in a deployment), each a [`ShardedServer`] of `--shards` shards that
//!   requires tokens signed by the backend's public key ([`TokenPolicy`]) and registers with
//!   the backend over TCP once bound. The servers know nothing of each other or of the
//!   clients; they only know the backend's public key;
//! - `--clients` clients: each asks the backend over TCP for a token, connects with it
//!   ([`ClientDriver::connect_with_token`]), checks that its id is the one the backend picked,
//!   and has 100 reliable-ordered messages echoed intact and in order. One more client
//!   presents a token for one server to another, which must refuse it.
//!
//! Exits 0 only if every client connected through the backend, got every echo, the servers
//! shared the clients, and the misdirected token was refused; 1 otherwise.
//!
//! The backend here is a demonstration on loopback, not a service to expose: anyone who
//! reaches its port can `REGISTER` a server of their own (its address and the key clients
//! will pin, so the backend would sign tokens sending clients to it) or `DRAIN` a real one,
//! and it takes lines of any length on a thread per connection. A deployed backend
//! authenticates its servers (a shared secret or mutual TLS), bounds its connections and
//! request lines, and is reachable by clients only for `JOIN`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tickwire::io::{ClientDriver, Shard, ShardedServer, SocketConfig};
use tickwire::token::TokenSigner;
use tickwire::{
    ChannelId, ClientConfig, ClientId, Event, SendError, ServerConfig, ServerIdentity, ServerKey,
    TokenPolicy,
};

const RELIABLE_ORDERED: ChannelId = ChannelId(3);
const MESSAGES: u32 = 100;
const TOKEN_LIFETIME_SECS: u64 = 30;
const WALL: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_millis(20);

/// A backend that signs connect tokens for N echo servers, and clients that connect through it.
#[derive(Parser, Debug, Clone, Copy)]
#[command(name = "token_backend", long_about = None)]
struct Args {
    /// Echo servers.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=8))]
    servers: u16,
    /// Clients (each asks the backend for a token).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    clients: u16,
    /// Shards per server.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    shards: u16,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The backend's book: the registered servers and how many clients each was given.
#[derive(Default)]
struct Book {
    servers: Vec<(SocketAddr, ServerKey, bool)>,
    given: HashMap<SocketAddr, u32>,
    next_id: u64,
}

/// Answers one request line.
fn backend_answer(line: &str, book: &Mutex<Book>, signer: &TokenSigner) -> String {
    let mut words = line.split_whitespace();
    let mut book = book.lock().unwrap();
    match (words.next(), words.next(), words.next()) {
        (Some("REGISTER"), Some(addr), Some(key)) => {
            match (addr.parse::<SocketAddr>(), key.parse::<ServerKey>()) {
                (Ok(addr), Ok(key)) => {
                    book.servers.retain(|s| s.0 != addr);
                    book.servers.push((addr, key, true));
                    "OK".to_string()
                }
                _ => "ERR bad address or key".to_string(),
            }
        }
        (Some("DRAIN"), Some(addr), None) => match addr.parse::<SocketAddr>() {
            Ok(addr) => {
                for s in &mut book.servers {
                    if s.0 == addr {
                        s.2 = false;
                    }
                }
                "OK".to_string()
            }
            Err(_) => "ERR bad address".to_string(),
        },
        (Some("JOIN"), None, None) => {
            let Some((addr, key)) = book
                .servers
                .iter()
                .filter(|s| s.2)
                .min_by_key(|s| book.given.get(&s.0).copied().unwrap_or(0))
                .map(|s| (s.0, s.1))
            else {
                return "ERR no server takes clients".to_string();
            };
            *book.given.entry(addr).or_default() += 1;
            book.next_id += 1;
            let id = book.next_id;
            let token = signer.issue(id, unix_now() + TOKEN_LIFETIME_SECS, &[addr]);
            format!("TOKEN {addr} {key} {} {id}", hex::encode(token))
        }
        _ => "ERR unknown request".to_string(),
    }
}

/// The backend: a TCP listener, one thread per connection, one line per request.
fn run_backend(listener: TcpListener, signer: TokenSigner, book: Arc<Mutex<Book>>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (signer, book) = (signer.clone(), Arc::clone(&book));
        std::thread::spawn(move || {
            let mut out = stream.try_clone().expect("clone the stream");
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let answer = backend_answer(&line, &book, &signer);
                if writeln!(out, "{answer}").is_err() {
                    break;
                }
            }
        });
    }
}

/// Sends one request line to the backend and returns the answer.
fn ask(backend: SocketAddr, line: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(backend)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(stream, "{line}")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(answer.trim().to_string())
}

/// One echo server: binds, registers with the backend, echoes until `stop`, drains.
fn run_server(
    backend: SocketAddr,
    authority: ServerKey,
    shards: u16,
    stop: Arc<AtomicBool>,
) -> Result<(SocketAddr, u64), String> {
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.tokens = Some(TokenPolicy {
        authority,
        required: true,
    });
    config.max_clients_per_ip = 256;
    config.max_clients = 256;
    let (handle, shards) = ShardedServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        config,
        SocketConfig::default(),
        usize::from(shards),
    )
    .map_err(|e| e.to_string())?;
    let addr = handle.local_addr();
    let threads: Vec<_> = shards
        .into_iter()
        .map(|shard| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || echo(shard, &stop))
        })
        .collect();
    // Ready: the shards run. Tell the backend.
    let answer = ask(backend, &format!("REGISTER {addr} {}", handle.public_key()))
        .map_err(|e| e.to_string())?;
    if answer != "OK" {
        return Err(format!("backend refused the registration: {answer}"));
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(STEP);
    }
    // A graceful drain: the backend sends no one new, then every client is closed.
    let _ = ask(backend, &format!("DRAIN {addr}"));
    handle.drain();
    handle.shutdown("server draining");
    let mut connected = 0;
    for t in threads {
        connected += t.join().map_err(|_| "shard thread panicked")??;
    }
    Ok((addr, connected))
}

/// One shard's echo loop; returns the connections it accepted.
fn echo(mut shard: Shard, stop: &AtomicBool) -> Result<u64, String> {
    let mut backlog: HashMap<ClientId, std::collections::VecDeque<Vec<u8>>> = HashMap::new();
    let mut connected = 0;
    let give_up = Instant::now() + WALL * 2;
    loop {
        // The server's handle shuts every shard down when the server drains.
        if shard.is_shut_down() && shard.server().is_idle() {
            break;
        }
        if stop.load(Ordering::Relaxed) && Instant::now() > give_up {
            return Err("not shut down in time".into());
        }
        match shard
            .run_until_event(Some(STEP))
            .map_err(|e| e.to_string())?
        {
            Some(Event::Connected { .. }) => connected += 1,
            Some(Event::Message { client, data, .. }) => {
                backlog.entry(client).or_default().push_back(data);
            }
            Some(Event::Disconnected { client, .. }) => {
                backlog.remove(&client);
            }
            _ => {}
        }
        for (&client, queue) in &mut backlog {
            while let Some(data) = queue.front() {
                match shard.send(client, RELIABLE_ORDERED, data) {
                    Ok(()) | Err(SendError::NotConnected | SendError::Closed) => {}
                    Err(SendError::QueueFull) => break,
                    Err(e) => return Err(format!("echo to {client}: {e}")),
                }
                let data = queue.pop_front().expect("front checked");
                shard.recycle(data);
            }
        }
    }
    Ok(connected)
}

/// What the backend said to a JOIN.
struct Ticket {
    server: SocketAddr,
    key: ServerKey,
    token: Vec<u8>,
    id: u64,
}

fn join(backend: SocketAddr) -> Result<Ticket, String> {
    let answer = ask(backend, "JOIN").map_err(|e| e.to_string())?;
    let words: Vec<&str> = answer.split_whitespace().collect();
    match words.as_slice() {
        ["TOKEN", addr, key, token, id] => Ok(Ticket {
            server: addr.parse().map_err(|_| "bad address")?,
            key: key.parse().map_err(|_| "bad key")?,
            token: hex::decode(token).map_err(|_| "bad token")?,
            id: id.parse().map_err(|_| "bad id")?,
        }),
        _ => Err(format!("backend: {answer}")),
    }
}

/// One client: a token from the backend, a connection with it, 100 echoes; returns the
/// server it was sent to.
fn run_client(backend: SocketAddr) -> Result<SocketAddr, String> {
    let ticket = join(backend)?;
    let mut driver = ClientDriver::connect_with_token(
        ClientConfig::new(ticket.key),
        ticket.server,
        &ticket.token,
        SocketConfig::default(),
    )
    .map_err(|e| e.to_string())?;
    let give_up = Instant::now() + WALL;
    loop {
        if Instant::now() > give_up {
            return Err("no connection".into());
        }
        match driver
            .run_until_event(Some(STEP))
            .map_err(|e| e.to_string())?
        {
            Some(Event::Connected { client }) if client == ClientId(ticket.id) => break,
            Some(Event::Connected { client }) => {
                return Err(format!(
                    "connected as {client}, the token said {}",
                    ticket.id
                ))
            }
            Some(Event::Disconnected { reason, .. }) => return Err(format!("refused: {reason}")),
            _ => {}
        }
    }
    let (mut sent, mut echoed) = (0u32, 0u32);
    while echoed < MESSAGES {
        if Instant::now() > give_up {
            return Err(format!("{echoed} of {MESSAGES} echoes"));
        }
        while sent < MESSAGES {
            match driver.send(RELIABLE_ORDERED, &sent.to_be_bytes()) {
                Ok(()) => sent += 1,
                Err(SendError::QueueFull) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        match driver
            .run_until_event(Some(STEP))
            .map_err(|e| e.to_string())?
        {
            Some(Event::Message { data, .. }) => {
                if data != echoed.to_be_bytes() {
                    return Err(format!("echo {echoed} wrong or out of order"));
                }
                echoed += 1;
            }
            Some(Event::Disconnected { reason, .. }) => return Err(format!("lost: {reason}")),
            _ => {}
        }
    }
    driver.disconnect("done");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if let Some(Event::Disconnected { .. }) = driver
            .run_until_event(Some(STEP))
            .map_err(|e| e.to_string())?
        {
            break;
        }
    }
    Ok(ticket.server)
}

/// A token the backend signed for one server, presented to another: refused.
fn misdirected(backend: SocketAddr, servers: &[SocketAddr]) -> Result<(), String> {
    let ticket = join(backend)?;
    let Some(&other) = servers.iter().find(|&&s| s != ticket.server) else {
        return Ok(()); // one server: nothing to misdirect to
    };
    // The other server's key: ask the backend for another ticket until it names that server.
    let mut key = None;
    for _ in 0..16 {
        let t = join(backend)?;
        if t.server == other {
            key = Some(t.key);
            break;
        }
    }
    let key = key.ok_or("the backend never named the other server")?;
    let mut driver = ClientDriver::connect_with_token(
        ClientConfig::new(key),
        other,
        &ticket.token,
        SocketConfig::default(),
    )
    .map_err(|e| e.to_string())?;
    let give_up = Instant::now() + WALL;
    while Instant::now() < give_up {
        match driver
            .run_until_event(Some(STEP))
            .map_err(|e| e.to_string())?
        {
            Some(Event::Connected { .. }) => {
                return Err("a token for another server was accepted".into())
            }
            Some(Event::Disconnected { .. }) => return Ok(()),
            _ => {}
        }
    }
    Err("no answer to the misdirected token".into())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("FAIL: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let signer = TokenSigner::generate();
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let backend = listener.local_addr().map_err(|e| e.to_string())?;
    let book = Arc::new(Mutex::new(Book::default()));
    {
        let (signer, book) = (signer.clone(), Arc::clone(&book));
        std::thread::spawn(move || run_backend(listener, signer, book));
    }
    println!(
        "backend on tcp://{backend}, signing key {}",
        signer.public_key()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = (0..args.servers)
        .map(|_| {
            let (stop, authority) = (Arc::clone(&stop), signer.public_key());
            std::thread::spawn(move || run_server(backend, authority, args.shards, stop))
        })
        .collect();
    // Wait (bounded) until every server registered.
    let give_up = Instant::now() + WALL;
    while book.lock().unwrap().servers.len() < usize::from(args.servers) {
        if Instant::now() > give_up {
            return Err("the servers did not register".into());
        }
        std::thread::sleep(STEP);
    }
    let addrs: Vec<SocketAddr> = book.lock().unwrap().servers.iter().map(|s| s.0).collect();
    println!(
        "{} servers registered: {}",
        addrs.len(),
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let clients: Vec<_> = (0..args.clients)
        .map(|_| std::thread::spawn(move || run_client(backend)))
        .collect();
    let mut per_server: HashMap<SocketAddr, u32> = HashMap::new();
    let mut failures = Vec::new();
    for c in clients {
        match c.join().expect("client thread") {
            Ok(server) => *per_server.entry(server).or_default() += 1,
            Err(e) => failures.push(e),
        }
    }
    let refused = misdirected(backend, &addrs);
    stop.store(true, Ordering::Relaxed);
    let mut accepted = Vec::new();
    for s in servers {
        accepted.push(s.join().expect("server thread")?);
    }
    for (addr, n) in &accepted {
        println!(
            "server {addr}: {n} connections, {} clients sent there by the backend",
            per_server.get(addr).copied().unwrap_or(0)
        );
    }
    if let Some(e) = failures.first() {
        return Err(format!("{} clients failed, first: {e}", failures.len()));
    }
    refused.map_err(|e| format!("misdirected token: {e}"))?;
    if args.clients >= args.servers && per_server.len() != usize::from(args.servers) {
        return Err("the backend did not spread the clients over the servers".into());
    }
    println!(
        "OK: {} clients got a token from the backend and {MESSAGES} echoes each, over {} servers; \
         a token for one server was refused by another",
        args.clients, args.servers
    );
    Ok(())
}
