//! A chat server over tickwire, speaking a small line-based chat protocol (described below:
//! IDENT, BCST, USERS, end-to-end encrypted PMs, QUIT, FAILnn codes); `examples/chat_client.rs`
//! is its terminal client.
//!
//! # Usage
//! ```text
//! cargo run --example chat_server -- --listen 127.0.0.1:7000
//! cargo run --example chat_client -- --connect 127.0.0.1:7000 --server-key HEX
//! ```
//! The server prints `server key: HEX` (for the clients to pin) and `listening on ADDR` (the
//! bound address: give port 0 to get a free one), then one log line per connection, login,
//! departure and timeout. Options:
//! - `--listen ADDR`: the UDP address to serve on (required);
//! - `--secs S`: stop after S seconds (closing every connection); default: run until killed;
//! - `--timeout-ms N`: the transport's connection timeout (default 10 000): a client that
//!   sends nothing, not even heartbeats, for this long is dropped;
//! - `--log-received FILE`: append every line received from a client to FILE, as
//!   `<client id> <line>` (to check what the server saw: private messages arrive encrypted).
//!
//! # Transport
//! Each protocol line is one message on channel 3 (reliable-ordered in the default
//! configuration), without its line feed; a message holding a line feed or carriage return
//! is refused with FAIL00, so that no one can forge a line on someone else's terminal.
//! The protocol's PING/PONG are tickwire's heartbeats: a client that stops answering times out
//! (`--timeout-ms`), the server logs `DSCN <user> Pong timeout (FAIL05 Ping without pong)`
//! (the client cannot hear it any more) and the others get `LEFT <user>`. Lines `PING` and
//! `PONG` are therefore unknown commands.
//!
//! A line the client's send queue has no room for (the client does not read fast enough,
//! typically while others broadcast) waits in that client's backlog, with every line for it
//! after it, and is retried first on every turn of the server's loop. The backlog holds at
//! most [`BACKLOG_BYTES`] (1 MiB, each line costing its length plus 64); a client whose next
//! line does not fit is disconnected with the reason `too far behind: ...` (logged, and the
//! others get `LEFT <user>`), so that a client that never reads cannot grow the server
//! without end.
//!
//! # Lines (C: client to server, S: server to client)
//! - on connecting, S: `INIT Welcome to the server!`
//! - C: `IDENT <name>` → S: `OK IDENT <name>`; every other logged-in user gets `JOINED <name>`;
//!   the newcomer then gets `PM_PUBKEY <user> <key>` for every user who published a key.
//!   Names: 3 to 14 ASCII letters, digits or `_` (no dashes, colons or spaces), unique
//!   case-insensitively. FAIL04 if this connection is logged in already (checked first),
//!   FAIL02 for a bad name, FAIL01 if the name is taken.
//! - C: `BCST <text>` → S: `OK BCST <text>`; every other logged-in user gets
//!   `BCST <sender> <text>`. The text may be empty.
//! - C: `USERS` → S: `OK USERS <a>:<b>:<c>`: every logged-in user including the caller,
//!   sorted by name; FAIL06 if the caller is the only one.
//! - C: `PM <user> <payload>` → S: `OK PM <user> <payload>`; `<user>` gets
//!   `NPM <sender> <payload>`. The payload is opaque to the server (the client sends
//!   hex ciphertext, see below). FAIL08 to oneself, FAIL07 if no such user is logged in.
//! - C: `PM_PUBKEY <hex>` (a compressed P-256 key, 66 hex digits) → S: `OK PM_PUBKEY`; every
//!   other logged-in user gets `PM_PUBKEY <sender> <hex>` (and users who log in later get it
//!   too). Publishing again replaces the key.
//! - C: `PM_SESSIONKEY <user> <blob>` → nothing to the sender; `<user>` gets
//!   `PM_SESSIONKEY <sender> <blob>`. Same FAIL07/FAIL08 as PM.
//! - C: `OK PM_PUBKEY <user>` and `OK PM_SESSIONKEY <user>`: the recipient's acknowledgements
//!   of the protocol; accepted without an answer.
//! - C: `QUIT` → S: `OK GOODBYE`; if the caller was logged in, the others get `LEFT <name>`
//!   at once and the name is free. The client then closes the connection; if it has not
//!   within 2 s the server closes it. Allowed before login.
//! - A logged-in user whose connection ends without QUIT (closed, timed out): the others get
//!   `LEFT <name>`.
//! - Any command but IDENT and QUIT before login: `FAIL03 USER MUST LOGIN FIRST`.
//! - An unknown command (commands are upper case: `ident` is unknown), or a known one with
//!   missing or malformed arguments (`PM bob`, `PM_PUBKEY xyz`): `FAIL00 Unknown command`,
//!   whether logged in or not.
//!
//! Where the protocol's original description is ambiguous this follows its table's descriptions for the wording of FAIL00,
//! FAIL01, FAIL02, FAIL04 and FAIL05, its upper-case lines for FAIL03, FAIL06, FAIL07 and
//! FAIL08 (with the digit 0 where the original has the letter O), and its table's `PM`/`NPM` names
//! for the encrypted private message (its section 3 calls them `PRIVATE_MESSAGE` and
//! `RECEIVE_PRIVATE_MSG`).
//!
//! # End-to-end encrypted private messages
//! The server only stores and forwards public keys, wrapped session keys and ciphertext: the
//! client (see `examples/chat/e2e.rs`) wraps a per-direction session key with P-256 ECDH and
//! HKDF for its recipient and seals each message with AES-256-GCM under it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use tickwire::io::{ServerDriver, SocketConfig};
use tickwire::{ClientId, DisconnectReason, Event, ServerConfig, ServerIdentity};

#[path = "common/backlog.rs"]
mod backlog;
#[path = "common/cli.rs"]
mod cli;
#[path = "chat/protocol.rs"]
mod protocol;

use backlog::{Backlogs, Sent, DEFAULT_BACKLOG_BYTES};

use protocol::{
    fold, from_hex, line_of, split_word, valid_username, CHANNEL, FAIL00, FAIL01, FAIL02, FAIL03,
    FAIL04, FAIL05, FAIL06, FAIL07, FAIL08, GOODBYE, INIT, PUBLIC_KEY_LEN,
};

/// How long a client that said QUIT has to close the connection itself.
const QUIT_GRACE: Duration = Duration::from_secs(2);
/// How long closing every connection may take when the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// The longest wait for network events, so that deadlines are checked in time.
const TICK: Duration = Duration::from_millis(50);
/// The most octets of lines kept per client while its send queue is full, each line costing
/// its length plus [`backlog::ENTRY_OVERHEAD`]; a client whose next line does not fit is
/// disconnected ([`TOO_FAR_BEHIND`]).
const BACKLOG_BYTES: usize = DEFAULT_BACKLOG_BYTES;
/// Why a client whose backlog overflowed is disconnected.
const TOO_FAR_BEHIND: &str = "too far behind: the client does not read the lines sent to it";

/// A chat server over tickwire (line protocol: IDENT, BCST, USERS, PM, QUIT); prints
/// `server key: HEX` and `listening on ADDR`.
#[derive(Parser, Debug)]
#[command(name = "chat_server", long_about = None)]
struct Args {
    /// UDP address to serve on (port 0: any free port).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Stop after S seconds, closing every connection [default: run until killed].
    #[arg(long, value_name = "S", value_parser = cli::positive_secs)]
    secs: Option<f64>,
    /// Drop a client silent (not even heartbeats) for N ms [default: 10000], at least 20.
    #[arg(long = "timeout-ms", value_name = "N", value_parser = cli::timeout_ms)]
    timeout: Option<Duration>,
    /// Append every line received to FILE, as `<client id> <line>`.
    #[arg(long, value_name = "FILE")]
    log_received: Option<String>,
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

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = ServerConfig::new(ServerIdentity::generate());
    if let Some(timeout) = args.timeout {
        config.connection.timeout = timeout;
        // Heartbeats must come well within the timeout.
        config.connection.heartbeat_interval =
            config.connection.heartbeat_interval.min(timeout / 4);
    }
    let log = match &args.log_received {
        Some(path) => Some(File::options().create(true).append(true).open(path)?),
        None => None,
    };
    let backlogs = Backlogs::new(BACKLOG_BYTES, &config.connection);
    let driver = ServerDriver::bind(args.listen, config, SocketConfig::default())?;
    println!("server key: {}", driver.server().public_key());
    println!("listening on {}", driver.local_addr()?);
    let until = args
        .secs
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let mut chat = Chat {
        driver,
        sessions: HashMap::new(),
        names: BTreeMap::new(),
        backlogs,
        log,
    };
    while until.is_none_or(|u| Instant::now() < u) {
        let event = chat.driver.run_until_event(Some(TICK))?;
        // What waits goes before anything new.
        chat.flush_backlogs();
        if let Some(event) = event {
            chat.on_event(event);
        }
        chat.close_lingering_quitters();
    }
    println!("stopping");
    chat.driver.shutdown("server stopping");
    let give_up = Instant::now() + SHUTDOWN_GRACE;
    while !chat.driver.server().is_idle() && Instant::now() < give_up {
        chat.driver.run_until_event(Some(TICK))?;
    }
    Ok(())
}

/// One connection.
#[derive(Default)]
struct Session {
    /// The name it logged in with.
    name: Option<String>,
    /// The public key it published (hex, as received).
    pubkey: Option<String>,
    /// Set by QUIT, or when it is disconnected for being too far behind: nothing it sends
    /// counts any more.
    quit: bool,
    /// Set by QUIT: the connection is closed at this time if the client has not closed it.
    quit_deadline: Option<Instant>,
}

struct Chat {
    driver: ServerDriver,
    sessions: HashMap<ClientId, Session>,
    /// Logged-in users by folded name.
    names: BTreeMap<String, ClientId>,
    /// Lines waiting for room in each client's send queue.
    backlogs: Backlogs,
    log: Option<File>,
}

impl Chat {
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected { client } => {
                let addr = self
                    .driver
                    .server()
                    .clients()
                    .iter()
                    .find(|c| c.id == client)
                    .map_or_else(|| "?".to_string(), |c| c.addr.to_string());
                println!("client {client} connected from {addr}");
                self.sessions.insert(client, Session::default());
                self.send(client, INIT);
            }
            Event::Message {
                client,
                channel,
                data,
            } => {
                if channel == CHANNEL {
                    let line = line_of(&data);
                    self.on_line(client, &line);
                } else {
                    println!(
                        "client {client}: ignored a message on channel {}",
                        channel.0
                    );
                }
                self.driver.recycle(data);
            }
            Event::Disconnected { client, reason, .. } => {
                self.backlogs.remove(client);
                let session = self.sessions.remove(&client).unwrap_or_default();
                match (&session.name, &reason) {
                    (Some(name), DisconnectReason::TimedOut) => {
                        println!("DSCN {name} Pong timeout ({FAIL05})");
                    }
                    (Some(name), _) => println!("{name} disconnected: {reason}"),
                    (None, _) => println!("client {client} disconnected: {reason}"),
                }
                if let Some(name) = session.name {
                    self.log_out(client, &name);
                }
            }
            Event::AddressChanged { client, old, new } => {
                println!("client {client} moved from {old} to {new}");
            }
            _ => {}
        }
    }

    fn on_line(&mut self, client: ClientId, line: &str) {
        if let Some(log) = &mut self.log {
            // Logged before anything is relayed, so a reader who saw the relay sees the line.
            if let Err(e) = writeln!(log, "{client} {line}").and_then(|()| log.flush()) {
                eprintln!("cannot write the log: {e}");
            }
        }
        let Some(session) = self.sessions.get(&client) else {
            return;
        };
        if session.quit {
            return;
        }
        let me = session.name.clone();
        if line.contains(['\n', '\r']) {
            self.send(client, FAIL00);
            return;
        }
        let (command, rest) = split_word(line);
        let needs_login = matches!(
            command,
            "BCST" | "USERS" | "PM" | "PM_PUBKEY" | "PM_SESSIONKEY" | "OK"
        );
        let me = match me {
            Some(name) => name,
            None if needs_login => return self.send(client, FAIL03),
            None => String::new(), // IDENT, QUIT, unknown commands
        };
        match command {
            "IDENT" => self.ident(client, rest),
            "BCST" => {
                self.send(client, &format!("OK BCST {rest}"));
                self.send_to_others(client, &format!("BCST {me} {rest}"));
            }
            "USERS" => {
                if self.names.len() < 2 {
                    self.send(client, FAIL06);
                } else {
                    let mut users: Vec<&str> = self
                        .names
                        .values()
                        .filter_map(|id| self.sessions.get(id)?.name.as_deref())
                        .collect();
                    users.sort_unstable();
                    let line = format!("OK USERS {}", users.join(":"));
                    self.send(client, &line);
                }
            }
            "PM" | "PM_SESSIONKEY" => self.relay(client, &me, command, rest),
            "PM_PUBKEY" => {
                let key = rest;
                if key.len() != 2 * PUBLIC_KEY_LEN || from_hex(key).is_none() {
                    return self.send(client, FAIL00);
                }
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.pubkey = Some(key.to_string());
                }
                self.send(client, "OK PM_PUBKEY");
                self.send_to_others(client, &format!("PM_PUBKEY {me} {key}"));
            }
            "OK" => {
                // A recipient's acknowledgement of a key: nothing to do.
                let (what, user) = split_word(rest);
                if !matches!(what, "PM_PUBKEY" | "PM_SESSIONKEY") || !valid_username(user) {
                    self.send(client, FAIL00);
                }
            }
            "QUIT" => {
                self.send(client, GOODBYE);
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.quit = true;
                    s.quit_deadline = Some(Instant::now() + QUIT_GRACE);
                    s.name = None;
                }
                if !me.is_empty() {
                    println!("{me} quit");
                    self.log_out(client, &me);
                }
            }
            _ => self.send(client, FAIL00),
        }
    }

    fn ident(&mut self, client: ClientId, name: &str) {
        if self.sessions.get(&client).is_some_and(|s| s.name.is_some()) {
            return self.send(client, FAIL04);
        }
        if !valid_username(name) {
            return self.send(client, FAIL02);
        }
        if self.names.contains_key(&fold(name)) {
            return self.send(client, FAIL01);
        }
        self.names.insert(fold(name), client);
        if let Some(s) = self.sessions.get_mut(&client) {
            s.name = Some(name.to_string());
        }
        println!("client {client} logged in as {name}");
        self.send(client, &format!("OK IDENT {name}"));
        self.send_to_others(client, &format!("JOINED {name}"));
        let keys: Vec<String> = self
            .names
            .values()
            .filter(|&&id| id != client)
            .filter_map(|id| {
                let s = self.sessions.get(id)?;
                Some(format!(
                    "PM_PUBKEY {} {}",
                    s.name.as_ref()?,
                    s.pubkey.as_ref()?
                ))
            })
            .collect();
        for line in keys {
            self.send(client, &line);
        }
    }

    /// PM and PM_SESSIONKEY: checks the recipient, relays the payload unread.
    fn relay(&mut self, client: ClientId, me: &str, command: &str, rest: &str) {
        let (user, payload) = split_word(rest);
        if user.is_empty() || payload.is_empty() {
            return self.send(client, FAIL00);
        }
        let Some(&to) = self.names.get(&fold(user)) else {
            return self.send(client, FAIL07);
        };
        if to == client {
            return self.send(client, FAIL08);
        }
        let user = self
            .sessions
            .get(&to)
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| user.to_string());
        if command == "PM" {
            self.send(client, &format!("OK PM {user} {payload}"));
            self.send(to, &format!("NPM {me} {payload}"));
        } else {
            self.send(to, &format!("PM_SESSIONKEY {me} {payload}"));
        }
    }

    /// Forgets `name` (logged in by `client`) and tells the others it left.
    fn log_out(&mut self, client: ClientId, name: &str) {
        if self.names.get(&fold(name)) == Some(&client) {
            self.names.remove(&fold(name));
        }
        self.send_to_others(client, &format!("LEFT {name}"));
    }

    /// Closes the connections of clients that said QUIT and did not close them in time.
    fn close_lingering_quitters(&mut self) {
        let now = Instant::now();
        let due: Vec<ClientId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.quit_deadline.is_some_and(|d| now >= d))
            .map(|(&id, _)| id)
            .collect();
        for client in due {
            if let Some(s) = self.sessions.get_mut(&client) {
                s.quit_deadline = None; // closing: wait for the Disconnected event
            }
            self.driver.disconnect(client, "goodbye");
        }
    }

    /// Sends `line` to `client`, or queues it in the client's backlog behind the lines waiting
    /// there; disconnects the client if its backlog is full.
    fn send(&mut self, client: ClientId, line: &str) {
        let driver = &mut self.driver;
        let sent = self
            .backlogs
            .send(client, CHANNEL, line.as_bytes(), |channel, data| {
                driver.send(client, channel, data)
            });
        match sent {
            Sent::Now | Sent::Queued | Sent::CutOff => {}
            Sent::Failed(e) => println!("client {client}: cannot send a line: {e}"),
            // Not on the reliable line channel; counted in `backlogs.dropped`.
            Sent::Dropped => println!("client {client}: backlog full, dropped a line"),
            Sent::Overflow => {
                println!(
                    "client {client}: disconnecting, {TOO_FAR_BEHIND} ({} so far)",
                    self.backlogs.disconnected
                );
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.quit = true;
                }
                self.driver.disconnect(client, TOO_FAR_BEHIND);
            }
        }
    }

    /// Retries the lines waiting in the backlogs, in order.
    fn flush_backlogs(&mut self) {
        let driver = &mut self.driver;
        self.backlogs.flush(|client, channel, data| {
            let sent = driver.send(client, channel, data);
            if let Err(e) = &sent {
                if *e != tickwire::SendError::QueueFull {
                    println!("client {client}: cannot send a line: {e}");
                }
            }
            sent
        });
    }

    /// Sends `line` to every logged-in user but `client`.
    fn send_to_others(&mut self, client: ClientId, line: &str) {
        let others: Vec<ClientId> = self
            .names
            .values()
            .copied()
            .filter(|&id| id != client)
            .collect();
        for id in others {
            self.send(id, line);
        }
    }
}
