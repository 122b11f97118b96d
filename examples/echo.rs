//! An echo load test over real UDP through the mio drivers ([`tickwire::io`]).
//!
//! # Usage
//! ```text
//! cargo run --release --example echo                 # server + 4 clients on 127.0.0.1, 3 s
//! cargo run --release --example echo -- --clients 16 --secs 5 --size 256
//! cargo run --release --example echo -- --server 127.0.0.1:7777       # only a server
//! cargo run --release --example echo -- --connect 127.0.0.1:7777 --server-key HEX
//! cargo run --release --example echo -- --connect 127.0.0.1:7777 --server-key HEX --clients 4
//! cargo run --release --example echo -- --server 127.0.0.1:7777 --shards 2   # 2 threads
//! ```
//! Each client sends, every millisecond, one reliable-ordered message (channel 3) and one
//! unreliable message (channel 0) of `--size` octets for `--secs` seconds; the server echoes
//! every message back to its sender on the same channel. A client holds its reliable message
//! back (to a later millisecond) while 4 MiB of them wait for their echoes (the server's send
//! queue, see [`echo_window`]), so that it never overflows the server's bounded backlog. Then
//! the clients stop sending, wait (at most 3 s) for the echoes still on their way, and
//! disconnect. Each message is its sequence number, a pattern derived from it and the channel,
//! and an FNV-1a checksum of all that; every echo is compared with the message regenerated
//! from its sequence number.
//!
//! The program prints one row per client (smoothed RTT; the loss estimates `loss out`, the
//! client's packets that did not reach the server, [`ConnectionStats::loss`], and `loss in`,
//! the server's that did not reach the client, [`ConnectionStats::incoming_loss`]; reliable and
//! unreliable messages sent and echoed, resent datagrams, messages echoed per second) and exits
//! with status 0 only if every client connected and every reliable message came back intact and
//! in order (and no unreliable echo was corrupt or duplicated). Status 1: a check failed; 2:
//! usage (`--help` lists the options and their defaults).
//!
//! `--server ADDR` serves (echoing) until interrupted, or for `--secs` if given, and prints
//! `server key: HEX` for clients to pin. `--shards N` (default 1: one server on the calling
//! thread, as without it) serves with a [`ShardedServer`] of N shards, each on its own thread,
//! all bound to the one address with `SO_REUSEPORT`; `--shards 0` takes one per core. The
//! console below works the same over all of them. `--connect ADDR --server-key HEX` runs one client
//! (`--clients N`: N, each in its own thread) against such a server.
//!
//! # Backpressure
//! An echo the client's send queue has no room for (the client does not read its echoes fast
//! enough) waits in that client's backlog, and every echo for the client after it too, so
//! that they stay in order; the backlog is retried first on every turn of the server's loop.
//! The backlog holds at most `--backlog` octets (default 1 MiB), each echo costing its length
//! plus 64. An unreliable echo that does not fit is dropped; a reliable one that does not fit
//! takes the room of unreliable echoes waiting (dropped, oldest first) or, if that is not
//! enough, disconnects the client ("echo backlog full: ..."), which otherwise could grow the
//! server without end by sending and never reading. Both are counted in the server's summary
//! line; the console's `list` shows each client's backlog (`backlog=OCTETS`).
//!
//! # Operator console
//! With `--server`, standard input takes one command per line and each gets a one-line answer
//! on standard output (standard input closing, or never being open, does not stop the server):
//! ```text
//! list                       ID ADDR since=S rtt=MS loss=% sent=N recv=N ... backlog=OCTETS,
//!                            one line each
//! kick ID [REASON]           close that client's connection with ERROR 2.0 and the reason
//! ban IP_OR_PREFIX DURATION  e.g. `ban 192.0.2.0/24 10m` (s, m, h, d; `forever`): kicks and refuses
//! unban IP_OR_PREFIX         lift that ban
//! bans                       the bans in force
//! stats                      one line per shard: clients, half-open handshakes, accepted,
//!                            migrations, datagrams in and out, relayed between shards
//! drain                      refuse new clients (ERROR 1.1 `server draining`); the connected
//!                            ones stay
//! shutdown                   ERROR 2.1 to every client, wait for the acks (bounded), exit
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::Parser;
use tickwire::io::{ClientDriver, IoStats, ServerDriver, Shard, ShardedServer, SocketConfig};
use tickwire::{
    Ban, ChannelId, ClientConfig, ClientId, ClientInfo, ConnectionConfig, ConnectionStats, Event,
    IpPrefix, SendError, Server, ServerConfig, ServerIdentity, ServerKey, MAX_MESSAGE_SIZE,
};

#[path = "common/backlog.rs"]
mod backlog;
#[path = "common/bulk.rs"]
mod bulk;

use backlog::{Backlog, Backlogs, Sent, DEFAULT_BACKLOG_BYTES};

const UNRELIABLE: ChannelId = ChannelId(0);
const RELIABLE_ORDERED: ChannelId = ChannelId(3);
/// One reliable and one unreliable message per interval.
const INTERVAL: Duration = Duration::from_millis(1);
/// Intervals a late client catches up at most in one go (then it skips ahead).
const MAX_CATCH_UP: u32 = 10;
/// How long the clients wait for outstanding echoes after sending stopped.
const DRAIN: Duration = Duration::from_secs(3);
/// How long unreliable echoes are waited for once every reliable one is back.
const UNRELIABLE_GRACE: Duration = Duration::from_millis(300);
/// How long a handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Octets of reliable messages a client may have sent without their echo back: the server's
/// send queue for it (both sides use [`connection_config`]). Within it, an echo the server
/// cannot queue at once waits in its backlog behind at most another one or two, so a client
/// that reads slower than it sends (a loaded machine, large messages) holds back instead of
/// overflowing the server's backlog and being disconnected.
fn echo_window() -> usize {
    connection_config().send_queue_bytes
}

/// Why a client whose reliable echo overflowed its backlog is disconnected.
const BACKLOG_FULL: &str = "echo backlog full: the client sends faster than it reads its echoes";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Local,
    Server(SocketAddr),
    Client(SocketAddr, ServerKey),
}

/// An echo load test over real UDP: without --server or --connect, a server and N clients over
/// 127.0.0.1 in one process.
#[derive(Parser, Debug, Clone, Copy)]
#[command(name = "echo", long_about = None)]
struct Args {
    /// Clients [default: 4; with --connect: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    clients: Option<u16>,
    /// Seconds of sending [default: 3]; with --server: serve this long (default: until
    /// interrupted).
    #[arg(long, value_name = "S", value_parser = secs)]
    secs: Option<f64>,
    /// Message size in octets, 8..=MAX_MESSAGE_SIZE.
    #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = message_size)]
    size: usize,
    /// Only serve on ADDR (e.g. 127.0.0.1:7777), until interrupted; prints `server key: HEX`.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["connect", "server_key"])]
    server: Option<SocketAddr>,
    /// Only run the clients, against the server at ADDR.
    #[arg(long, value_name = "ADDR", requires = "server_key")]
    connect: Option<SocketAddr>,
    /// The server's key (printed by --server), required with --connect.
    #[arg(long, value_name = "HEX", requires = "connect")]
    server_key: Option<ServerKey>,
    /// Server: octets of echoes kept per client while its send queue is full, each costing its
    /// length + 64; beyond it unreliable echoes are dropped, and a reliable one that still
    /// does not fit disconnects the client.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BACKLOG_BYTES, value_parser = backlog_bytes)]
    backlog: usize,
    /// Server: connections from one IP at most [default: 16, the library's]; local mode
    /// allows all --clients.
    #[arg(long, value_name = "N")]
    max_per_ip: Option<usize>,
    /// Server: shards, each a server on its own thread and SO_REUSEPORT socket (0: one per
    /// core); 1 serves on one thread without SO_REUSEPORT.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=256))]
    shards: u16,
    /// Server: send each client, once connected, one message of SIZE octets (e.g. 4MiB, at
    /// most 16MiB) on the bulk lane (channel 4), a pattern derived from SIZE: the download
    /// `soak --bulk` checks. Clients must allow messages that large.
    #[arg(long, value_name = "SIZE", value_parser = bulk::size, requires = "server")]
    bulk: Option<usize>,
}

impl Args {
    fn mode(&self) -> Mode {
        match (self.server, self.connect, self.server_key) {
            (Some(addr), _, _) => Mode::Server(addr),
            (None, Some(addr), Some(key)) => Mode::Client(addr, key),
            _ => Mode::Local,
        }
    }

    /// Clients to run: `--clients`, or 4 in one process and 1 with `--connect`.
    fn clients(&self) -> usize {
        let default = if self.connect.is_some() { 1 } else { 4 };
        self.clients.map_or(default, usize::from)
    }

    fn send_for(&self) -> Duration {
        Duration::from_secs_f64(self.secs.unwrap_or(3.0))
    }
}

fn secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err("not a number of seconds above 0 and at most a day".into()),
    }
}

fn message_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (8..=MAX_MESSAGE_SIZE).contains(&n) => Ok(n),
        _ => Err(format!("not a size in 8..={MAX_MESSAGE_SIZE}")),
    }
}

/// Every echo the server may have to send must fit in an empty backlog.
fn backlog_bytes(s: &str) -> Result<usize, String> {
    let min_backlog = Backlog::cost(MAX_MESSAGE_SIZE);
    match s.parse::<usize>() {
        Ok(n) if n >= min_backlog => Ok(n),
        Ok(_) => Err(format!(
            "must hold one largest message: at least {min_backlog}"
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.mode() {
        Mode::Local => run_local(&args),
        Mode::Server(addr) => run_server_only(addr, &args),
        Mode::Client(addr, key) => run_clients_only(addr, key, &args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--connect`: the clients, each in its own thread, against a server elsewhere.
fn run_clients_only(
    addr: SocketAddr,
    key: ServerKey,
    args: &Args,
) -> Result<bool, Box<dyn std::error::Error>> {
    let clients: Vec<_> = (0..args.clients())
        .map(|_| {
            let args = *args;
            std::thread::spawn(move || run_client(ClientConfig::new(key), addr, &args))
        })
        .collect();
    let mut reports: Vec<ClientReport> = clients
        .into_iter()
        .map(|t| t.join().expect("client thread panicked"))
        .collect();
    reports.sort_by_key(|r| r.id);
    print_reports(&reports, args)
}

/// Connection settings of both sides: messages of any size the protocol allows.
fn connection_config() -> ConnectionConfig {
    ConnectionConfig {
        max_message_size: MAX_MESSAGE_SIZE,
        ..ConnectionConfig::default()
    }
}

fn server_config(args: &Args) -> ServerConfig {
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.connection = bulk::with_bulk(connection_config(), args.bulk);
    if let Some(n) = args.max_per_ip {
        config.max_clients_per_ip = n.max(1);
        config.max_clients = config.max_clients.max(n);
    }
    config
}

/// The echo server: one [`ServerDriver`] on the calling thread, or shards on their own.
enum Serving {
    One(Box<ServerDriver>),
    Sharded(ShardedServer, Vec<Shard>),
}

impl Serving {
    fn bind(
        addr: SocketAddr,
        config: ServerConfig,
        shards: u16,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        Ok(if shards == 1 {
            Self::One(Box::new(ServerDriver::bind(
                addr,
                config,
                SocketConfig::default(),
            )?))
        } else {
            let (handle, shards) =
                ShardedServer::bind(addr, config, SocketConfig::default(), usize::from(shards))?;
            Self::Sharded(handle, shards)
        })
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Self::One(d) => d.local_addr(),
            Self::Sharded(h, _) => Ok(h.local_addr()),
        }
    }

    fn public_key(&self) -> ServerKey {
        match self {
            Self::One(d) => d.server().public_key(),
            Self::Sharded(h, _) => h.public_key(),
        }
    }

    /// Serves until `stop`, `until` or the console's `shutdown`.
    fn serve(
        self,
        stop: &Arc<AtomicBool>,
        until: Option<Instant>,
        console: Option<std::sync::mpsc::Receiver<String>>,
        backlog: usize,
        bulk: Option<usize>,
    ) -> std::io::Result<ServerSummary> {
        let log = console.is_some();
        match self {
            Self::One(driver) => {
                let backlogs = Mutex::new(Backlogs::new(backlog, &connection_config()));
                serve(*driver, stop, until, console.as_ref(), &backlogs, log, bulk)
            }
            Self::Sharded(handle, shards) => {
                let backlogs: Vec<Arc<Mutex<Backlogs>>> = shards
                    .iter()
                    .map(|_| Arc::new(Mutex::new(Backlogs::new(backlog, &connection_config()))))
                    .collect();
                let threads: Vec<_> = shards
                    .into_iter()
                    .zip(&backlogs)
                    .map(|(shard, backlogs)| {
                        let (stop, backlogs) = (Arc::clone(stop), Arc::clone(backlogs));
                        std::thread::spawn(move || {
                            serve(shard, &stop, until, None, &backlogs, log, bulk)
                        })
                    })
                    .collect();
                // The console on this thread, over every shard.
                let mut op = ShardsOperator {
                    handle: handle.clone(),
                    backlogs,
                };
                while !stop.load(Ordering::Relaxed)
                    && until.is_none_or(|u| Instant::now() < u)
                    && !threads.iter().all(|t| t.is_finished())
                {
                    let Some(lines) = &console else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    match lines.recv_timeout(Duration::from_millis(50)) {
                        Ok(line) => {
                            let (answer, shutdown) = console_command(&line, &mut op);
                            if !answer.is_empty() {
                                println!("{answer}");
                            }
                            if shutdown {
                                handle.shutdown("server stopping");
                                break;
                            }
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                stop.store(true, Ordering::Relaxed);
                let mut total: Option<ServerSummary> = None;
                for t in threads {
                    let s = t.join().expect("shard thread panicked")?;
                    match &mut total {
                        None => total = Some(s),
                        Some(t) => t.add(&s),
                    }
                }
                Ok(total.expect("at least one shard"))
            }
        }
    }
}

fn run_local(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let mut config = server_config(args);
    config.max_clients = args.clients().max(64);
    // Every client of the local run comes from 127.0.0.1.
    config.max_clients_per_ip = config.max_clients;
    config.max_pending_per_ip = config.max_pending;
    let serving = Serving::bind("127.0.0.1:0".parse()?, config, args.shards)?;
    let addr = serving.local_addr()?;
    let key = serving.public_key();
    println!(
        "server on {addr}, {} clients, {:.1} s of sending, {} octet messages every {:?} \
         on channels 3 (reliable-ordered) and 0 (unreliable)",
        args.clients(),
        args.send_for().as_secs_f64(),
        args.size,
        INTERVAL
    );
    let stop = Arc::new(AtomicBool::new(false));
    // The server stops when told, and in any case some time after the clients must be done.
    let hard_stop = Instant::now() + CONNECT_TIMEOUT + args.send_for() + DRAIN + CLOSE_TIMEOUT * 2;
    let server = {
        let stop = Arc::clone(&stop);
        let backlog = args.backlog;
        std::thread::spawn(move || serving.serve(&stop, Some(hard_stop), None, backlog, None))
    };
    let clients: Vec<_> = (0..args.clients())
        .map(|_| {
            let args = *args;
            std::thread::spawn(move || run_client(ClientConfig::new(key), addr, &args))
        })
        .collect();
    let mut reports: Vec<ClientReport> = clients
        .into_iter()
        .map(|t| t.join().expect("client thread panicked"))
        .collect();
    reports.sort_by_key(|r| r.id);
    stop.store(true, Ordering::Relaxed);
    let summary = server.join().expect("server thread panicked")?;
    let ok = print_reports(&reports, args)?;
    println!(
        "server: {} connections, {} messages echoed ({} echoes refused), {}, io {}",
        summary.connections,
        summary.echoed,
        summary.refused,
        summary.backlog_line(),
        io_line(&summary.io)
    );
    Ok(ok)
}

fn run_server_only(addr: SocketAddr, args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let serving = Serving::bind(addr, server_config(args), args.shards)?;
    println!("server key: {}", serving.public_key());
    println!("listening on {}", serving.local_addr()?);
    if let Serving::Sharded(handle, _) = &serving {
        println!("shards: {}", handle.shard_count());
    }
    let until = args
        .secs
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let console = spawn_console();
    let stop = Arc::new(AtomicBool::new(false));
    let summary = serving.serve(&stop, until, Some(console), args.backlog, args.bulk)?;
    println!(
        "served {} connections, {} messages echoed, {}, io {}",
        summary.connections,
        summary.echoed,
        summary.backlog_line(),
        io_line(&summary.io)
    );
    Ok(true)
}

/// What the server did.
struct ServerSummary {
    connections: u64,
    echoed: u64,
    /// Echoes `send` refused for another reason than a full queue (unreliable ones only).
    refused: u64,
    /// Unreliable echoes dropped because their client's backlog was full.
    backlog_dropped: u64,
    /// Clients disconnected because a reliable echo overflowed their backlog.
    backlog_disconnected: u64,
    io: IoStats,
}

impl ServerSummary {
    fn backlog_line(&self) -> String {
        format!(
            "backlog full: {} unreliable echoes dropped, {} clients disconnected",
            self.backlog_dropped, self.backlog_disconnected
        )
    }

    /// Adds another shard's figures.
    fn add(&mut self, o: &ServerSummary) {
        self.connections += o.connections;
        self.echoed += o.echoed;
        self.refused += o.refused;
        self.backlog_dropped += o.backlog_dropped;
        self.backlog_disconnected += o.backlog_disconnected;
        self.io.datagrams_received += o.io.datagrams_received;
        self.io.datagrams_sent += o.io.datagrams_sent;
        self.io.send_would_block += o.io.send_would_block;
        self.io.send_errors += o.io.send_errors;
        self.io.wakeups += o.io.wakeups;
    }
}

/// What `serve` needs of a [`ServerDriver`] or a [`Shard`] (they have the same methods).
trait Driver {
    fn server(&self) -> &Server;
    fn server_mut(&mut self) -> &mut Server;
    fn run_until_event(&mut self, max_wait: Option<Duration>) -> std::io::Result<Option<Event>>;
    fn send(&mut self, client: ClientId, channel: ChannelId, data: &[u8]) -> Result<(), SendError>;
    fn disconnect(&mut self, client: ClientId, reason: &str);
    fn shutdown(&mut self, reason: &str);
    fn recycle(&mut self, buf: Vec<u8>);
    fn flush(&mut self) -> std::io::Result<()>;
    fn io_stats(&self) -> IoStats;
}

macro_rules! impl_driver {
    ($t:ty) => {
        impl Driver for $t {
            fn server(&self) -> &Server {
                <$t>::server(self)
            }
            fn server_mut(&mut self) -> &mut Server {
                <$t>::server_mut(self)
            }
            fn run_until_event(&mut self, w: Option<Duration>) -> std::io::Result<Option<Event>> {
                <$t>::run_until_event(self, w)
            }
            fn send(&mut self, c: ClientId, ch: ChannelId, d: &[u8]) -> Result<(), SendError> {
                <$t>::send(self, c, ch, d)
            }
            fn disconnect(&mut self, c: ClientId, reason: &str) {
                <$t>::disconnect(self, c, reason)
            }
            fn shutdown(&mut self, reason: &str) {
                <$t>::shutdown(self, reason)
            }
            fn recycle(&mut self, buf: Vec<u8>) {
                <$t>::recycle(self, buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                <$t>::flush(self)
            }
            fn io_stats(&self) -> IoStats {
                <$t>::io_stats(self)
            }
        }
    };
}
impl_driver!(ServerDriver);
impl_driver!(Shard);

fn lock(b: &Mutex<Backlogs>) -> MutexGuard<'_, Backlogs> {
    b.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Echoes every message back on its channel until `stop`, `until`, the console's `shutdown`
/// or a shutdown from the shards' handle, then shuts down. Echoes the send queue has no room
/// for wait in a backlog of at most its limit per client (see the module's documentation);
/// the backlogs are behind a mutex only this thread and the console take. With `bulk`, each
/// client gets one download of that many octets on the bulk lane once connected.
fn serve<D: Driver>(
    mut driver: D,
    stop: &AtomicBool,
    until: Option<Instant>,
    console: Option<&std::sync::mpsc::Receiver<String>>,
    backlogs: &Mutex<Backlogs>,
    log: bool,
    bulk: Option<usize>,
) -> std::io::Result<ServerSummary> {
    let download = bulk.map(bulk::pattern);
    // Clients whose download `send` refused for a full queue so far.
    let mut pending_bulk: Vec<ClientId> = Vec::new();
    let mut summary = ServerSummary {
        connections: 0,
        echoed: 0,
        refused: 0,
        backlog_dropped: 0,
        backlog_disconnected: 0,
        io: IoStats::default(),
    };
    while !stop.load(Ordering::Relaxed)
        && until.is_none_or(|u| Instant::now() < u)
        && !driver.server().is_shut_down()
    {
        if let Some(lines) = console {
            let mut quit = false;
            while let Ok(line) = lines.try_recv() {
                let io = driver.io_stats();
                let mut op = OneOperator {
                    server: driver.server_mut(),
                    backlogs: &lock(backlogs),
                    io,
                };
                let (answer, shutdown) = console_command(&line, &mut op);
                if !answer.is_empty() {
                    println!("{answer}");
                }
                quit |= shutdown;
            }
            driver.flush()?;
            if quit {
                break;
            }
        }
        let event = driver.run_until_event(Some(Duration::from_millis(50)))?;
        let mut backlogs = lock(backlogs);
        match event {
            Some(Event::Connected { client }) => {
                summary.connections += 1;
                if download.is_some() {
                    pending_bulk.push(client);
                }
                if log {
                    let addr = driver
                        .server()
                        .clients()
                        .iter()
                        .find(|c| c.id == client)
                        .map_or_else(|| "?".to_string(), |c| c.addr.to_string());
                    println!("client {client} connected from {addr}");
                }
            }
            Some(Event::Disconnected { client, reason, .. }) => {
                backlogs.remove(client);
                pending_bulk.retain(|&c| c != client);
                if log {
                    println!("client {client} disconnected: {reason}");
                }
            }
            Some(Event::Message {
                client,
                channel,
                data,
            }) => {
                let sent = backlogs.send(client, channel, &data, |channel, data| {
                    driver.send(client, channel, data)
                });
                match sent {
                    Sent::Now => summary.echoed += 1,
                    Sent::Queued | Sent::Dropped | Sent::CutOff => {}
                    Sent::Overflow => {
                        driver.disconnect(client, BACKLOG_FULL);
                        if log {
                            println!("client {client} disconnected by the server: {BACKLOG_FULL}");
                        }
                    }
                    Sent::Failed(_) => summary.refused += 1,
                }
                driver.recycle(data);
            }
            Some(Event::AddressChanged { client, old, new }) => {
                if log {
                    println!("client {client} moved from {old} to {new}");
                }
            }
            Some(_) | None => {}
        }
        if let Some(d) = &download {
            pending_bulk.retain(|&client| {
                matches!(
                    driver.send(client, ChannelId::BULK, d),
                    Err(SendError::QueueFull)
                )
            });
        }
        let flushed = backlogs.flush(|client, channel, data| driver.send(client, channel, data));
        summary.echoed += flushed.sent;
        summary.refused += flushed.failed;
        summary.backlog_dropped = backlogs.dropped;
        summary.backlog_disconnected = backlogs.disconnected;
    }
    if !driver.server().is_shut_down() {
        driver.shutdown("server stopping");
    }
    let give_up = Instant::now() + CLOSE_TIMEOUT;
    while !driver.server().is_idle() && Instant::now() < give_up {
        driver.run_until_event(Some(Duration::from_millis(50)))?;
    }
    summary.io = driver.io_stats();
    Ok(summary)
}

/// Reads standard input on a thread, one command per line. When standard input closes (or
/// is not open at all) the thread ends and the server goes on serving.
fn spawn_console() -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// What the console works on: one server, or every shard through their handle.
trait Operator {
    fn clients(&self) -> Vec<ClientInfo>;
    fn backlog(&self, client: ClientId) -> usize;
    fn kick(&mut self, client: ClientId, reason: &str) -> bool;
    fn ban(&mut self, prefix: IpPrefix, duration: Option<Duration>) -> Vec<ClientId>;
    fn unban(&mut self, prefix: IpPrefix) -> bool;
    fn bans(&self) -> Vec<Ban>;
    /// One line per shard.
    fn stats(&self) -> Vec<String>;
    fn drain(&mut self);
}

struct OneOperator<'a> {
    server: &'a mut Server,
    backlogs: &'a Backlogs,
    io: IoStats,
}

impl Operator for OneOperator<'_> {
    fn clients(&self) -> Vec<ClientInfo> {
        self.server.clients()
    }
    fn backlog(&self, client: ClientId) -> usize {
        self.backlogs.bytes(client)
    }
    fn kick(&mut self, client: ClientId, reason: &str) -> bool {
        self.server.kick(Instant::now(), client, reason)
    }
    fn ban(&mut self, prefix: IpPrefix, duration: Option<Duration>) -> Vec<ClientId> {
        self.server.ban(Instant::now(), prefix, duration)
    }
    fn unban(&mut self, prefix: IpPrefix) -> bool {
        self.server.unban(prefix)
    }
    fn bans(&self) -> Vec<Ban> {
        self.server.bans(Instant::now())
    }
    fn drain(&mut self) {
        self.server.drain();
    }
    fn stats(&self) -> Vec<String> {
        let s = self.server.stats();
        vec![format!(
            "shard 0: clients={} pending={} accepted={} migrations={} datagrams_in={} datagrams_out={} relayed_in=0 relayed_out=0",
            self.server.client_count(),
            self.server.pending_count(),
            s.connections_accepted,
            s.migrations,
            self.io.datagrams_received,
            self.io.datagrams_sent
        )]
    }
}

struct ShardsOperator {
    handle: ShardedServer,
    backlogs: Vec<Arc<Mutex<Backlogs>>>,
}

impl Operator for ShardsOperator {
    fn clients(&self) -> Vec<ClientInfo> {
        self.handle.clients()
    }
    fn backlog(&self, client: ClientId) -> usize {
        self.backlogs.iter().map(|b| lock(b).bytes(client)).sum()
    }
    fn kick(&mut self, client: ClientId, reason: &str) -> bool {
        self.handle.kick(client, reason)
    }
    fn ban(&mut self, prefix: IpPrefix, duration: Option<Duration>) -> Vec<ClientId> {
        self.handle.ban(prefix, duration)
    }
    fn unban(&mut self, prefix: IpPrefix) -> bool {
        self.handle.unban(prefix)
    }
    fn bans(&self) -> Vec<Ban> {
        self.handle.bans()
    }
    fn drain(&mut self) {
        self.handle.drain();
    }
    fn stats(&self) -> Vec<String> {
        self.handle
            .stats()
            .iter()
            .map(|r| {
                format!(
                    "shard {}: clients={} pending={} accepted={} migrations={} datagrams_in={} datagrams_out={} relayed_in={} relayed_out={}",
                    r.info.index,
                    r.clients,
                    r.pending,
                    r.server.connections_accepted,
                    r.server.migrations,
                    r.info.io.datagrams_received,
                    r.info.io.datagrams_sent,
                    r.info.relay.taken,
                    r.info.relay.offered + r.info.relay.forwarded
                )
            })
            .collect()
    }
}

/// Runs one console command; returns the answer and whether to shut down.
fn console_command(line: &str, op: &mut dyn Operator) -> (String, bool) {
    let now = Instant::now();
    let mut words = line.split_whitespace();
    let Some(cmd) = words.next() else {
        return (String::new(), false);
    };
    let answer = match cmd {
        "list" => {
            let clients = op.clients();
            if clients.is_empty() {
                "no clients".to_string()
            } else {
                clients
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {} since={}s rtt={:.1}ms loss={:.1}% sent={} recv={} bytes_out={} bytes_in={} backlog={}",
                            c.id,
                            c.addr,
                            now.saturating_duration_since(c.connected_at).as_secs(),
                            c.stats.rtt.as_secs_f64() * 1000.0,
                            c.stats.loss * 100.0,
                            c.stats.messages_sent,
                            c.stats.messages_received,
                            c.stats.bytes_sent,
                            c.stats.bytes_received,
                            op.backlog(c.id)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        "kick" => match words.next().map(str::parse::<u64>) {
            Some(Ok(id)) => {
                let reason = words.collect::<Vec<_>>().join(" ");
                let reason = if reason.is_empty() { "kicked" } else { &reason };
                if op.kick(ClientId(id), reason) {
                    format!("kicked {id}: {reason}")
                } else {
                    format!("error: no client {id}")
                }
            }
            _ => "error: usage: kick ID [REASON]".to_string(),
        },
        "ban" => match (words.next().map(str::parse::<IpPrefix>), words.next()) {
            (Some(Ok(prefix)), Some(d)) => match parse_duration(d) {
                Ok(duration) => {
                    let kicked = op.ban(prefix, duration);
                    let how_long = duration.map_or("ever".to_string(), |d| format!(" {}s", d.as_secs()));
                    let kicked: Vec<String> = kicked.iter().map(|c| c.to_string()).collect();
                    format!("banned {prefix} for{how_long}; kicked [{}]", kicked.join(","))
                }
                Err(e) => format!("error: {e}"),
            },
            (Some(Err(e)), _) => format!("error: {e}"),
            _ => "error: usage: ban IP_OR_PREFIX DURATION".to_string(),
        },
        "unban" => match words.next().map(str::parse::<IpPrefix>) {
            Some(Ok(prefix)) => {
                if op.unban(prefix) {
                    format!("unbanned {prefix}")
                } else {
                    format!("error: no ban on {prefix}")
                }
            }
            Some(Err(e)) => format!("error: {e}"),
            None => "error: usage: unban IP_OR_PREFIX".to_string(),
        },
        "bans" => {
            let bans = op.bans();
            if bans.is_empty() {
                "no bans".to_string()
            } else {
                bans.iter()
                    .map(|b| match b.until {
                        Some(u) => format!("{} for {}s", b.prefix, u.saturating_duration_since(now).as_secs()),
                        None => format!("{} forever", b.prefix),
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        "stats" => op.stats().join("\n"),
        "drain" => {
            op.drain();
            "draining: new clients are refused, connected ones stay".to_string()
        }
        "shutdown" => return ("shutting down".to_string(), true),
        "help" => "commands: list | kick ID [REASON] | ban IP_OR_PREFIX DURATION | unban IP_OR_PREFIX | bans | stats | drain | shutdown".to_string(),
        other => format!("error: unknown command {other:?} (try help)"),
    };
    (answer, false)
}

/// `30s`, `10m`, `2h`, `1d`, a bare number of seconds, or `forever` (`None`).
fn parse_duration(text: &str) -> Result<Option<Duration>, String> {
    if text == "forever" {
        return Ok(None);
    }
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("bad duration unit in {text:?} (s, m, h, d)")),
    };
    Ok(Some(Duration::from_secs(secs)))
}

/// What one client saw.
#[derive(Debug, Default)]
struct ClientReport {
    id: Option<ClientId>,
    stats: ConnectionStats,
    io: IoStats,
    reliable_sent: u32,
    reliable_echoed: u32,
    unreliable_sent: u32,
    unreliable_echoed: u32,
    /// Sends refused because the reliable queue was full (retried at the next interval).
    queue_full: u64,
    /// Reliable messages held back because [`echo_window`] octets awaited their echoes
    /// (retried at the next interval).
    held_back: u64,
    sending: Duration,
    /// The first thing that went wrong.
    failure: Option<String>,
}

impl ClientReport {
    fn fail(&mut self, why: String) {
        self.failure.get_or_insert(why);
    }

    fn is_ok(&self) -> bool {
        self.failure.is_none() && self.id.is_some() && self.reliable_echoed == self.reliable_sent
    }
}

/// The message with sequence number `seq` on `channel`, `size` octets (at least 8):
/// `seq`, a pattern derived from both, and the FNV-1a hash of everything before it.
fn message(seq: u32, channel: ChannelId, size: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(size);
    m.extend_from_slice(&seq.to_be_bytes());
    let base = seq
        .wrapping_mul(31)
        .wrapping_add(u32::from(channel.0) * 101);
    m.extend((4..size - 4).map(|i| base.wrapping_add(i as u32 * 7) as u8));
    let sum = fnv1a(&m);
    m.extend_from_slice(&sum.to_be_bytes());
    m
}

fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The sequence number of an echo if it is exactly the message that number stands for.
fn check(data: &[u8], channel: ChannelId, size: usize) -> Option<u32> {
    let seq = u32::from_be_bytes(data.get(..4)?.try_into().ok()?);
    (data.len() == size && data == message(seq, channel, size).as_slice()).then_some(seq)
}

/// One client: connect, send for `args.secs`, wait for the echoes, disconnect.
fn run_client(config: ClientConfig, server: SocketAddr, args: &Args) -> ClientReport {
    let mut report = ClientReport::default();
    let mut config = config;
    config.connection = connection_config();
    let mut driver = match ClientDriver::connect(config, server, SocketConfig::default()) {
        Ok(d) => d,
        Err(e) => {
            report.fail(format!("cannot set up: {e}"));
            return report;
        }
    };
    if let Err(e) = exchange(&mut driver, args, &mut report) {
        report.fail(format!("socket error: {e}"));
    }
    report.io = driver.io_stats();
    report
}

fn exchange(driver: &mut ClientDriver, args: &Args, r: &mut ClientReport) -> std::io::Result<()> {
    let give_up = Instant::now() + CONNECT_TIMEOUT;
    while r.id.is_none() {
        if Instant::now() >= give_up {
            r.fail(format!("no connection within {CONNECT_TIMEOUT:?}"));
            return Ok(());
        }
        match driver.run_until_event(Some(Duration::from_millis(100)))? {
            Some(Event::Connected { client }) => r.id = Some(client),
            Some(Event::Disconnected { reason, .. }) => {
                r.fail(format!("could not connect: {reason}"));
                return Ok(());
            }
            _ => {}
        }
    }
    let mut unreliable_seen: Vec<bool> = Vec::new();
    let window = echo_window();
    let start = Instant::now();
    let stop_sending = start + args.send_for();
    let mut next = start;
    // Sending: a pair of messages per interval, events in between.
    loop {
        let now = Instant::now();
        if now >= stop_sending {
            break;
        }
        let mut sent = 0;
        while next <= now && sent < MAX_CATCH_UP {
            let awaited = (r.reliable_sent - r.reliable_echoed) as usize * args.size;
            if awaited + args.size > window {
                r.held_back += 1;
            } else {
                let reliable = message(r.reliable_sent, RELIABLE_ORDERED, args.size);
                match driver.send(RELIABLE_ORDERED, &reliable) {
                    Ok(()) => r.reliable_sent += 1,
                    Err(SendError::QueueFull) => r.queue_full += 1,
                    Err(e) => r.fail(format!("reliable send refused: {e}")),
                }
            }
            let unreliable = message(r.unreliable_sent, UNRELIABLE, args.size);
            match driver.send(UNRELIABLE, &unreliable) {
                Ok(()) => {
                    r.unreliable_sent += 1;
                    unreliable_seen.push(false);
                }
                Err(e) => r.fail(format!("unreliable send refused: {e}")),
            }
            next += INTERVAL;
            sent += 1;
        }
        if next <= now {
            next = now + INTERVAL; // too far behind: skip rather than burst
        }
        let wait = next
            .min(stop_sending)
            .saturating_duration_since(Instant::now());
        if let Some(ev) = driver.run_until_event(Some(wait))? {
            if !on_event(ev, driver, args, r, &mut unreliable_seen) {
                return Ok(());
            }
        }
    }
    r.sending = start.elapsed();
    // Draining: the echoes still on their way.
    let drain_end = Instant::now() + DRAIN;
    let mut reliable_done_at = None;
    loop {
        let now = Instant::now();
        if r.reliable_echoed == r.reliable_sent {
            let done = *reliable_done_at.get_or_insert(now);
            if r.unreliable_echoed == r.unreliable_sent || now >= done + UNRELIABLE_GRACE {
                break;
            }
        }
        if now >= drain_end {
            break;
        }
        if let Some(ev) = driver.run_until_event(Some(Duration::from_millis(20)))? {
            if !on_event(ev, driver, args, r, &mut unreliable_seen) {
                return Ok(());
            }
        }
    }
    if r.reliable_echoed != r.reliable_sent {
        r.fail(format!(
            "{} of {} reliable echoes missing after {DRAIN:?}",
            r.reliable_sent - r.reliable_echoed,
            r.reliable_sent
        ));
    }
    r.stats = driver.client().stats();
    driver.disconnect("done");
    let give_up = Instant::now() + CLOSE_TIMEOUT;
    while Instant::now() < give_up {
        if let Some(Event::Disconnected { .. }) =
            driver.run_until_event(Some(Duration::from_millis(50)))?
        {
            break;
        }
    }
    Ok(())
}

/// Checks one event; false if the connection ended.
fn on_event(
    ev: Event,
    driver: &mut ClientDriver,
    args: &Args,
    r: &mut ClientReport,
    unreliable_seen: &mut [bool],
) -> bool {
    match ev {
        Event::Message { channel, data, .. } => {
            match (channel, check(&data, channel, args.size)) {
                (RELIABLE_ORDERED, Some(seq)) if seq == r.reliable_echoed => r.reliable_echoed += 1,
                (RELIABLE_ORDERED, Some(seq)) => r.fail(format!(
                    "reliable echo {seq} out of order (expected {})",
                    r.reliable_echoed
                )),
                (UNRELIABLE, Some(seq)) => match unreliable_seen.get_mut(seq as usize) {
                    Some(seen @ false) => {
                        *seen = true;
                        r.unreliable_echoed += 1;
                    }
                    Some(true) => r.fail(format!("unreliable echo {seq} duplicated")),
                    None => r.fail(format!("unreliable echo {seq} never sent")),
                },
                (channel, _) => r.fail(format!(
                    "corrupt echo of {} octets on channel {}",
                    data.len(),
                    channel.0
                )),
            }
            driver.recycle(data);
            true
        }
        Event::Disconnected { reason, .. } => {
            r.fail(format!("disconnected: {reason}"));
            false
        }
        _ => true,
    }
}

/// Prints the table; true if every client passed.
fn print_reports(
    reports: &[ClientReport],
    args: &Args,
) -> Result<bool, Box<dyn std::error::Error>> {
    println!(
        "{:>6} {:>9} {:>8} {:>8} {:>9} {:>10} {:>10} {:>12} {:>7} {:>9}",
        "client",
        "rtt",
        "loss out",
        "loss in",
        "rel sent",
        "rel echoed",
        "unrel sent",
        "unrel echoed",
        "resends",
        "msg/s"
    );
    for r in reports {
        let id = r.id.map_or_else(|| "-".to_string(), |id| id.to_string());
        let secs = r.sending.as_secs_f64().max(1e-9);
        let rate = f64::from(r.reliable_echoed + r.unreliable_echoed) / secs;
        println!(
            "{:>6} {:>9} {:>7.1}% {:>7.1}% {:>9} {:>10} {:>10} {:>12} {:>7} {:>9.0}",
            id,
            format!("{:.3}ms", r.stats.rtt.as_secs_f64() * 1e3),
            r.stats.loss * 100.0,
            r.stats.incoming_loss * 100.0,
            r.reliable_sent,
            r.reliable_echoed,
            r.unreliable_sent,
            r.unreliable_echoed,
            r.stats.packets_resent,
            rate
        );
    }
    let total = |f: fn(&ClientReport) -> u64| reports.iter().map(f).sum::<u64>();
    println!(
        "total: {} reliable and {} unreliable messages echoed; {} sends refused for a full \
         queue, {} held back awaiting echoes; {} datagrams sent, {} received; socket would \
         block {} times",
        total(|r| u64::from(r.reliable_echoed)),
        total(|r| u64::from(r.unreliable_echoed)),
        total(|r| r.queue_full),
        total(|r| r.held_back),
        total(|r| r.io.datagrams_sent),
        total(|r| r.io.datagrams_received),
        total(|r| r.io.send_would_block),
    );
    let mut ok = true;
    for r in reports {
        if !r.is_ok() {
            ok = false;
            let id = r.id.map_or_else(|| "-".to_string(), |id| id.to_string());
            let why = r.failure.as_deref().unwrap_or("reliable echoes missing");
            println!("FAIL client {id}: {why}");
        }
    }
    if ok {
        println!(
            "OK: all {} clients got every reliable message back intact and in order \
             ({} octets each)",
            reports.len(),
            args.size
        );
    }
    Ok(ok)
}

fn io_line(io: &IoStats) -> String {
    format!(
        "{} datagrams in, {} out, would block {}, send errors {}, wakeups {}",
        io.datagrams_received, io.datagrams_sent, io.send_would_block, io.send_errors, io.wakeups
    )
}
