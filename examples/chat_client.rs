//! The terminal client of `examples/chat_server.rs` (whose doc comment lists the protocol).
//!
//! # Usage
//! ```text
//! cargo run --example chat_client -- --connect 127.0.0.1:7000 --server-key HEX
//! ```
//! Type commands, one per line (`IDENT alice`, `BCST hello`, `USERS`, `PM bob hi there`,
//! `QUIT`); every line the server sends is printed as it arrives, verbatim. Lines the client
//! adds itself (decrypted private messages, errors, the connection's state) start with `* `.
//! Standard input may be a script as well as a terminal: lines typed before the connection is
//! up are sent once it is. When standard input ends the client sends QUIT (unless it did
//! already) and exits after `OK GOODBYE` and the close, or after a bounded wait. Exit status:
//! 0 after QUIT, 1 if the connection was lost or refused, 2 for bad arguments.
//!
//! Options:
//! - `--connect ADDR`, `--server-key HEX`: the server and the key it printed (required);
//! - `--raw`: send every line exactly as typed and do nothing automatically (no key
//!   publishing, no acknowledgements, no encryption: `PM bob text` goes out in clear); for
//!   testing the server;
//! - `--timeout-ms N`: the transport's connection timeout (default 10 000).
//!
//! # Private messages, end to end
//! Once logged in (on `OK IDENT <name>`) the client publishes its public key with
//! `PM_PUBKEY <hex>`, and it keeps the key of every user the server announces
//! (`PM_PUBKEY <user> <hex>`, acknowledged with `OK PM_PUBKEY <user>`). `PM <user> <text>`
//! never leaves the client in clear: before the first message to `<user>` it sends
//! `PM_SESSIONKEY <user> <hex>` (a fresh session key wrapped for `<user>`), then
//! `PM <user> <hex>`, the text sealed under that key. The recipient unwraps the key
//! (answering `OK PM_SESSIONKEY <sender>`), prints the `NPM <sender> <hex>` line the server
//! relayed, then `* PM from <sender>: <text>`. A `PM` the client cannot encrypt (not logged in,
//! no key for the user, to oneself) is refused locally with a `* ` line and nothing is sent.
//! When a user leaves (`LEFT <user>`) their key and both session keys are forgotten; a new
//! session key is made when they are back. The cryptography is described in
//! `examples/chat/e2e.rs`.
//!
//! A test hook, `--freeze-after-ms N`, makes the client stop driving its connection N ms
//! after it logged in (it stays alive, silent, until standard input ends): to the server it
//! is a client that stopped answering.

use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use clap::Parser;
use tickwire::io::{ClientDriver, SocketConfig};
use tickwire::{ClientConfig, DisconnectReason, Event, ServerKey};

#[path = "common/cli.rs"]
mod cli;
#[path = "chat/e2e.rs"]
mod e2e;
#[path = "chat/protocol.rs"]
mod protocol;

use e2e::{CryptoError, Identity, PeerKey, SessionKey};
use protocol::{fold, from_hex, line_of, split_word, to_hex, CHANNEL, FAIL05, GOODBYE};

/// The longest wait for network events before standard input is looked at again.
const TICK: Duration = Duration::from_millis(20);
/// How long `OK GOODBYE` is waited for after QUIT.
const GOODBYE_WAIT: Duration = Duration::from_secs(3);
/// How long the close may take after `OK GOODBYE`.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long standard input may end before the connection is up, and still QUIT.
const CONNECT_WAIT: Duration = Duration::from_secs(15);

/// The terminal client of chat_server: reads commands from standard input, one per line;
/// prints what the server sends.
#[derive(Parser, Debug)]
#[command(name = "chat_client", long_about = None)]
struct Args {
    /// The chat server's address.
    #[arg(long, value_name = "ADDR")]
    connect: SocketAddr,
    /// The key the server printed.
    #[arg(long, value_name = "HEX")]
    server_key: ServerKey,
    /// Send lines exactly as typed, nothing automatic (no key publishing, no encryption).
    #[arg(long)]
    raw: bool,
    /// Connection timeout in ms [default: 10000], at least 20.
    #[arg(long = "timeout-ms", value_name = "N", value_parser = cli::timeout_ms)]
    timeout: Option<Duration>,
    /// Test hook: stop driving the connection N ms after logging in.
    #[arg(long = "freeze-after-ms", value_name = "N", value_parser = cli::millis, hide = true)]
    freeze_after: Option<Duration>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the standard input thread sends.
enum Input {
    Line(String),
    End,
}

fn run(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut config = ClientConfig::new(args.server_key);
    if let Some(timeout) = args.timeout {
        config.connection.timeout = timeout;
        config.connection.heartbeat_interval =
            config.connection.heartbeat_interval.min(timeout / 4);
    }
    let driver = ClientDriver::connect(config, args.connect, SocketConfig::default())?;
    let (tx, input) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(Input::Line(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Input::End);
    });
    let mut chat = Chat {
        driver,
        raw: args.raw,
        identity: Identity::generate(),
        me: None,
        peers: HashMap::new(),
        connected: false,
        pending: VecDeque::new(),
        input_ended: false,
        quit_sent: false,
        closing: false,
        deadline: None,
        freeze_after: args.freeze_after,
        freeze_at: None,
    };
    if !args.raw {
        note(&format!(
            "my PM key: {}",
            to_hex(chat.identity.public_bytes())
        ));
    }
    chat.run(&input)
}

/// Prints a line of the client's own (not from the server).
fn note(text: &str) {
    println!("* {text}");
}

/// What the client knows of another user.
struct Peer {
    /// The name as the server spells it.
    name: String,
    key: PeerKey,
    /// The session key of messages to them, and the next message's counter.
    send: Option<(SessionKey, u64)>,
    /// The session key of messages from them, and the lowest counter still acceptable.
    recv: Option<(SessionKey, u64)>,
}

struct Chat {
    driver: ClientDriver,
    raw: bool,
    identity: Identity,
    /// The name this client logged in with.
    me: Option<String>,
    /// Other users by folded name.
    peers: HashMap<String, Peer>,
    connected: bool,
    /// Lines typed before the connection was up.
    pending: VecDeque<String>,
    input_ended: bool,
    quit_sent: bool,
    /// `OK GOODBYE` arrived and the connection is closing.
    closing: bool,
    /// When to give up waiting (for the connection, `OK GOODBYE` or the close).
    deadline: Option<Instant>,
    freeze_after: Option<Duration>,
    freeze_at: Option<Instant>,
}

impl Chat {
    fn run(&mut self, input: &Receiver<Input>) -> Result<ExitCode, Box<dyn std::error::Error>> {
        loop {
            if self.freeze_at.is_some_and(|t| Instant::now() >= t) {
                note("frozen (test hook): no longer driving the connection");
                // Silent until standard input ends (or the process is killed).
                while let Ok(Input::Line(_)) = input.recv() {}
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(event) = self.driver.run_until_event(Some(TICK))? {
                if let Some(code) = self.on_event(event) {
                    return Ok(code);
                }
            }
            loop {
                match input.try_recv() {
                    Ok(Input::Line(line)) => self.on_input(line),
                    Ok(Input::End) | Err(TryRecvError::Disconnected) => {
                        if !self.input_ended {
                            self.input_ended = true;
                            self.on_input_end();
                        }
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                if self.closing {
                    note("the close was not confirmed in time; exiting");
                    return Ok(ExitCode::SUCCESS);
                }
                note("no OK GOODBYE in time; closing");
                self.close();
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Option<ExitCode> {
        match event {
            Event::Connected { .. } => {
                self.connected = true;
                while let Some(line) = self.pending.pop_front() {
                    self.submit(&line);
                }
                if self.input_ended {
                    self.quit();
                }
            }
            Event::Message { channel, data, .. } => {
                if channel == CHANNEL {
                    let line = line_of(&data);
                    self.on_line(&line);
                }
                self.driver.recycle(data);
            }
            Event::Disconnected { reason, .. } => {
                if reason == DisconnectReason::TimedOut {
                    note(&format!("{FAIL05}: the server stopped answering"));
                }
                note(&format!("disconnected: {reason}"));
                return Some(if self.quit_sent || self.closing {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            _ => {}
        }
        None
    }

    /// A line typed (or scripted) on standard input.
    fn on_input(&mut self, line: String) {
        let line = line.strip_suffix('\r').unwrap_or(&line).to_string();
        if line.trim().is_empty() || self.quit_sent || self.closing {
            return;
        }
        if self.connected {
            self.submit(&line);
        } else {
            self.pending.push_back(line);
        }
    }

    fn on_input_end(&mut self) {
        if self.quit_sent || self.closing {
            return;
        }
        if self.connected {
            self.quit();
        } else {
            // QUIT once connected (see on_event), if that happens in time.
            self.deadline = Some(Instant::now() + CONNECT_WAIT);
        }
    }

    fn quit(&mut self) {
        self.send_line("QUIT");
        self.quit_sent = true;
        self.deadline = Some(Instant::now() + GOODBYE_WAIT);
    }

    fn close(&mut self) {
        self.driver.disconnect("goodbye");
        self.closing = true;
        self.deadline = Some(Instant::now() + CLOSE_WAIT);
    }

    /// Sends a typed line, encrypting private messages.
    fn submit(&mut self, line: &str) {
        let (command, rest) = split_word(line);
        match command {
            "PM" if !self.raw => self.private_message(rest),
            "QUIT" => self.quit(),
            _ => self.send_line(line),
        }
    }

    fn send_line(&mut self, line: &str) {
        if let Err(e) = self.driver.send(CHANNEL, line.as_bytes()) {
            note(&format!("cannot send: {e}"));
        }
    }

    fn private_message(&mut self, rest: &str) {
        let (user, text) = split_word(rest);
        if user.is_empty() || text.is_empty() {
            return note("usage: PM <user> <message>");
        }
        let Some(me) = self.me.clone() else {
            return note("cannot PM: log in first (IDENT <name>), nothing was sent");
        };
        if fold(user) == fold(&me) {
            return note("cannot PM yourself, nothing was sent");
        }
        let Some(peer) = self.peers.get_mut(&fold(user)) else {
            return note(&format!(
                "cannot PM {user}: no public key for them (not logged in, or their key has not \
                 arrived yet), nothing was sent"
            ));
        };
        let name = peer.name.clone();
        let mut lines = Vec::with_capacity(2);
        let (session, counter) = peer.send.get_or_insert_with(|| {
            let session = e2e::new_session_key();
            let blob = e2e::wrap(&self.identity, &me, &name, &peer.key, &session);
            lines.push(format!("PM_SESSIONKEY {name} {}", to_hex(&blob)));
            (session, 0)
        });
        let sealed = e2e::seal(session, *counter, &me, &name, text);
        *counter += 1;
        lines.push(format!("PM {name} {}", to_hex(&sealed)));
        for line in lines {
            self.send_line(&line);
        }
    }

    /// A line from the server.
    fn on_line(&mut self, line: &str) {
        println!("{line}");
        let (command, rest) = split_word(line);
        match command {
            "OK" => {
                let (what, arg) = split_word(rest);
                if what == "IDENT" {
                    self.logged_in(arg);
                } else if line == GOODBYE && !self.closing {
                    self.close();
                }
            }
            _ if self.raw => {}
            "PM_PUBKEY" => self.peer_key(rest),
            "PM_SESSIONKEY" => self.session_key(rest),
            "NPM" => self.receive_private_message(rest),
            "LEFT" => {
                if let Some(peer) = self.peers.remove(&fold(rest)) {
                    if peer.send.is_some() || peer.recv.is_some() {
                        note(&format!(
                            "forgot the session keys shared with {}",
                            peer.name
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    fn logged_in(&mut self, name: &str) {
        self.me = Some(name.to_string());
        if !self.raw && !self.quit_sent {
            let line = format!("PM_PUBKEY {}", to_hex(self.identity.public_bytes()));
            self.send_line(&line);
        }
        if let Some(after) = self.freeze_after {
            self.freeze_at = Some(Instant::now() + after);
        }
    }

    /// `PM_PUBKEY <user> <hex>`: another user's (new) key.
    fn peer_key(&mut self, rest: &str) {
        let (user, hex) = split_word(rest);
        let key = from_hex(hex)
            .ok_or(CryptoError("not hex"))
            .and_then(|bytes| PeerKey::from_bytes(&bytes));
        let key = match key {
            Ok(key) => key,
            Err(e) => return note(&format!("ignored a bad public key for {user}: {e}")),
        };
        let slot = fold(user);
        if self.peers.get(&slot).is_none_or(|p| p.key != key) {
            // A new key: sessions with the old one are gone.
            self.peers.insert(
                slot,
                Peer {
                    name: user.to_string(),
                    key,
                    send: None,
                    recv: None,
                },
            );
        }
        self.send_line(&format!("OK PM_PUBKEY {user}"));
    }

    /// `PM_SESSIONKEY <sender> <hex>`: the key of `sender`'s messages to this client.
    fn session_key(&mut self, rest: &str) {
        let (user, hex) = split_word(rest);
        let (Some(me), Some(peer)) = (self.me.as_deref(), self.peers.get_mut(&fold(user))) else {
            return note(&format!(
                "ignored a session key from {user}: no public key for them"
            ));
        };
        let session = from_hex(hex)
            .ok_or(CryptoError("not hex"))
            .and_then(|blob| e2e::unwrap(&self.identity, &peer.name, me, &peer.key, &blob));
        match session {
            Ok(session) => {
                peer.recv = Some((session, 0));
                self.send_line(&format!("OK PM_SESSIONKEY {user}"));
            }
            Err(e) => note(&format!("ignored a session key from {user}: {e}")),
        }
    }

    /// `NPM <sender> <hex>`: an encrypted private message.
    fn receive_private_message(&mut self, rest: &str) {
        let (user, hex) = split_word(rest);
        let (Some(me), Some(peer)) = (self.me.as_deref(), self.peers.get_mut(&fold(user))) else {
            return note(&format!("cannot read a PM from {user}: no keys for them"));
        };
        let Some((session, next)) = &mut peer.recv else {
            return note(&format!("cannot read a PM from {user}: no session key"));
        };
        let opened = from_hex(hex)
            .ok_or(CryptoError("not hex"))
            .and_then(|sealed| e2e::open(session, &peer.name, me, &sealed));
        match opened {
            Ok((counter, _)) if counter < *next => {
                note(&format!("ignored a replayed PM from {user}"));
            }
            Ok((counter, text)) => {
                *next = counter + 1;
                note(&format!("PM from {}: {text}", peer.name));
            }
            Err(e) => note(&format!("cannot read a PM from {user}: {e}")),
        }
    }
}
