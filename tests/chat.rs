//! Runs `examples/chat_server.rs` and scripted `examples/chat_client.rs` processes over
//! 127.0.0.1 and walks the chat protocol: every command, every FAIL code, end-to-end
//! encrypted private messages (the server's log of what it received must not hold the
//! plaintext), a user who quits and users who stop answering.
//!
//! The examples are built once with `$CARGO build --example chat_server --example
//! chat_client` (the same profile as this test) and run from the `examples` directory next to
//! this test's `deps` directory. Every wait is bounded ([`WAIT`]); lines are read by a thread
//! per process and taken with `recv_timeout`. The test asserts each process's lines in order
//! (a reply is the next line the client prints, apart from the client's own `* ` notes), so an
//! unexpected extra line fails the test too. Every process is killed when its [`Proc`] drops,
//! also when an assertion fails.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tickwire::io::{ClientDriver, SocketConfig};
use tickwire::{ChannelId, ClientConfig, Event, ServerKey};

/// The longest any single expected line or exit is waited for.
const WAIT: Duration = Duration::from_secs(10);

const INIT: &str = "INIT Welcome to the server!";
const GOODBYE: &str = "OK GOODBYE";
const FAIL00: &str = "FAIL00 Unknown command";
const FAIL01: &str = "FAIL01 User already logged in";
const FAIL02: &str = "FAIL02 Username has an invalid format or length";
const FAIL03: &str = "FAIL03 USER MUST LOGIN FIRST";
const FAIL04: &str = "FAIL04 User cannot login twice";
const FAIL06: &str = "FAIL06 YOU ARE THE ONLY CONNECTED USER";
const FAIL07: &str = "FAIL07 USER DOES NOT EXIST";
const FAIL08: &str = "FAIL08 CANNOT SEND PRIVATE MESSAGE TO YOURSELF";
/// A compressed P-256 public key (the generator), as a raw client publishes it.
const SOME_KEY: &str = "036b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296";

/// The directory holding the built example binaries (built on first use).
fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--example",
            "chat_server",
            "--example",
            "chat_client",
        ]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release"); // the profile `cargo test --release` built this test with
        }
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "building the chat examples failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // This test runs as <target>/<profile>/deps/chat-<hash>; examples are in
        // <target>/<profile>/examples.
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("<target>/<profile>")
            .join("examples");
        assert!(
            dir.join(format!("chat_server{}", std::env::consts::EXE_SUFFIX))
                .exists(),
            "no chat_server in {}",
            dir.display()
        );
        dir
    })
}

/// A running example process: its standard input, and its output lines as they come.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(name: &str, program: &str, args: &[&str]) -> Self {
        let path = examples_dir().join(format!("{program}{}", std::env::consts::EXE_SUFFIX));
        let mut child = Command::new(&path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
            sink.lock().unwrap().push_str(&text);
        });
        Self {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{}: {what}\nlines so far:\n  {}\nstderr: {}",
            self.name,
            self.seen.join("\n  "),
            self.stderr.lock().unwrap()
        );
    }

    /// Types `line` on the process's standard input.
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            self.fail(&format!("cannot write {line:?}: {e}"));
        }
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next line, or `None` once the output ended; fails after [`WAIT`].
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => self.fail("timed out waiting for a line"),
        }
    }

    /// The next line matching `want`, skipping the client's own `* ` notes that do not; any
    /// other line first fails the test.
    fn expect_with(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next_line(deadline) {
                Some(line) if want(&line) => return line,
                Some(line) if line.starts_with("* ") => {}
                Some(line) => self.fail(&format!("expected {what}, got {line:?}")),
                None => self.fail(&format!("output ended, expected {what}")),
            }
        }
    }

    /// The first line matching `want`, skipping any others (for logs).
    fn skip_until(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next_line(deadline) {
                Some(line) if want(&line) => return line,
                Some(_) => {}
                None => self.fail(&format!("output ended, expected {what}")),
            }
        }
    }

    /// The next line is exactly `want` (see [`Proc::expect_with`]).
    fn expect(&mut self, want: &str) {
        self.expect_with(&format!("{want:?}"), |l| l == want);
    }

    /// The next line starts with `prefix`; returns the rest.
    fn expect_prefix(&mut self, prefix: &str) -> String {
        let line = self.expect_with(&format!("a line starting {prefix:?}"), |l| {
            l.starts_with(prefix)
        });
        line[prefix.len()..].to_string()
    }

    /// Sends `command` and expects `reply` as the next line.
    fn reply(&mut self, command: &str, reply: &str) {
        self.send(command);
        self.expect(reply);
    }

    /// The next lines, in any order, are exactly `want` (notes skipped).
    fn expect_all(&mut self, want: &[&str]) {
        let mut missing: Vec<&str> = want.to_vec();
        while !missing.is_empty() {
            let line = self.expect_with(&format!("one of {missing:?}"), |l| missing.contains(&l));
            missing.retain(|m| *m != line);
        }
    }

    /// Reads until the output ends (only notes allowed), then waits for the exit.
    fn expect_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        while let Some(line) = self.next_line(deadline) {
            if !line.starts_with("* ") {
                self.fail(&format!("expected the end of the output, got {line:?}"));
            }
        }
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => self.fail("output ended but the process did not exit"),
                Err(e) => self.fail(&format!("wait: {e}")),
            }
        }
    }

    /// The lines the process printed that were not read yet, without waiting.
    fn drain(&mut self) -> Vec<String> {
        let rest: Vec<String> = self.lines.try_iter().collect();
        self.seen.extend(rest.iter().cloned());
        rest
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("tickwire-chat-{}-{tag}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A running chat server and what clients need to reach it.
struct Server {
    proc: Proc,
    key: String,
    addr: String,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let mut all = vec!["--listen", "127.0.0.1:0", "--secs", "60"];
        all.extend_from_slice(args);
        let mut proc = Proc::spawn("server", "chat_server", &all);
        let key = proc.expect_prefix("server key: ");
        let addr = proc.expect_prefix("listening on ");
        Self { proc, key, addr }
    }

    /// A client connected to this server, whose first line must be INIT.
    fn client(&self, name: &str, args: &[&str]) -> Proc {
        let mut all = vec!["--connect", &self.addr, "--server-key", &self.key];
        all.extend_from_slice(args);
        let mut client = Proc::spawn(name, "chat_client", &all);
        client.expect(INIT);
        client
    }

    /// A raw client (lines sent exactly as written, nothing automatic).
    fn raw_client(&self, name: &str) -> Proc {
        self.client(name, &["--raw"])
    }
}

#[test]
fn every_command_and_fail_code() {
    let server = Server::start(&[]);
    let mut alice = server.raw_client("alice");

    // Before login: everything but IDENT and QUIT needs a login; unknown stays unknown.
    for command in [
        "BCST hi",
        "USERS",
        "PM bob hi",
        "PM_SESSIONKEY bob 00",
        &format!("PM_PUBKEY {SOME_KEY}"),
        "OK PM_PUBKEY bob",
    ] {
        alice.reply(command, FAIL03);
    }
    for command in ["HELLO", "ident alice", "PING", "PONG", "NPM bob x"] {
        alice.reply(command, FAIL00);
    }

    // IDENT: name rules (FAIL02), success, twice (FAIL04, checked first).
    for bad in [
        "IDENT",
        "IDENT al",
        "IDENT al-ice",
        "IDENT al:ice",
        "IDENT al ice",
        "IDENT fifteen_letters",
        "IDENT élise",
    ] {
        alice.reply(bad, FAIL02);
    }
    alice.reply("IDENT alice", "OK IDENT alice");
    alice.reply("IDENT alice2", FAIL04);
    alice.reply("IDENT al-ice", FAIL04);

    // Alone: USERS fails; PM to oneself or no one fails; malformed arguments are FAIL00.
    alice.reply("USERS", FAIL06);
    alice.reply("PM alice hi", FAIL08);
    alice.reply("PM_SESSIONKEY alice 00", FAIL08);
    alice.reply("PM ALICE hi", FAIL08);
    alice.reply("PM bob hi", FAIL07);
    alice.reply("PM_SESSIONKEY bob 00", FAIL07);
    alice.reply("PM bob", FAIL00);
    alice.reply("PM", FAIL00);
    alice.reply("PM_PUBKEY 1234", FAIL00);
    alice.reply(&format!("PM_PUBKEY {}", &SOME_KEY[1..]), FAIL00);
    alice.reply("OK SOMETHING", FAIL00);
    alice.reply("BCST anyone?", "OK BCST anyone?");

    // A second user: the name is taken case-insensitively (FAIL01); JOINED to the others.
    let mut bob = server.raw_client("bob");
    bob.reply("IDENT alice", FAIL01);
    bob.reply("IDENT ALICE", FAIL01);
    bob.reply("IDENT bob", "OK IDENT bob");
    alice.expect("JOINED bob");
    alice.reply("USERS", "OK USERS alice:bob");
    bob.reply("USERS", "OK USERS alice:bob");

    // BCST: OK to the sender, BCST <sender> to the others (not back to the sender).
    alice.reply(
        "BCST hello, every one: of you",
        "OK BCST hello, every one: of you",
    );
    bob.expect("BCST alice hello, every one: of you");
    bob.reply("BCST", "OK BCST ");
    alice.expect("BCST bob ");

    // PM and PM_SESSIONKEY are relayed as they are; acknowledgements get no answer.
    bob.reply("PM alice opaque payload 1", "OK PM alice opaque payload 1");
    alice.expect("NPM bob opaque payload 1");
    bob.reply("PM Alice x", "OK PM alice x");
    alice.expect("NPM bob x");
    bob.send("PM_SESSIONKEY alice 0a0b0c");
    alice.expect("PM_SESSIONKEY bob 0a0b0c");
    alice.send("OK PM_SESSIONKEY bob");
    alice.reply("USERS", "OK USERS alice:bob"); // nothing came for the acknowledgement
    bob.reply("USERS", "OK USERS alice:bob"); // nothing came for the session key

    // PM_PUBKEY: OK to the publisher, the key to the others and to those who join later.
    alice.reply(&format!("PM_PUBKEY {SOME_KEY}"), "OK PM_PUBKEY");
    bob.expect(&format!("PM_PUBKEY alice {SOME_KEY}"));
    bob.send("OK PM_PUBKEY alice");
    bob.reply("USERS", "OK USERS alice:bob");
    let mut carol = server.raw_client("carol");
    carol.reply("IDENT carol", "OK IDENT carol");
    carol.expect(&format!("PM_PUBKEY alice {SOME_KEY}"));
    alice.expect("JOINED carol");
    bob.expect("JOINED carol");
    carol.reply("USERS", "OK USERS alice:bob:carol");

    // QUIT before login: GOODBYE, and no one hears of it.
    let mut dave = server.raw_client("dave");
    dave.reply("QUIT", GOODBYE);
    assert!(dave.expect_exit().success());

    // QUIT: GOODBYE, the client closes and exits; LEFT to the others; the name is free.
    alice.reply("QUIT", GOODBYE);
    assert!(alice.expect_exit().success());
    bob.expect("LEFT alice");
    carol.expect("LEFT alice");
    bob.reply("USERS", "OK USERS bob:carol");
    bob.reply("PM alice hi", FAIL07);

    // The end of standard input QUITs.
    bob.close_stdin();
    bob.expect(GOODBYE);
    assert!(bob.expect_exit().success());
    carol.expect("LEFT bob");
    carol.reply("USERS", FAIL06);

    let mut alice = server.raw_client("alice again");
    alice.reply("IDENT Alice", "OK IDENT Alice");
    carol.expect("JOINED Alice");
    alice.reply("USERS", "OK USERS Alice:carol");
    carol.reply("PM alice hi", "OK PM Alice hi");
    alice.expect("NPM carol hi");
}

#[test]
fn private_messages_are_end_to_end_encrypted() {
    const SECRET: &str = "the zebra quietly zigzags at 9pm";
    const SECOND: &str = "zero knowledge, zilch";
    const REPLY: &str = "zany reply: yes";
    const AGAIN: &str = "hazy again";
    let log = TempFile::new("e2e");
    let mut server = Server::start(&["--log-received", log.0.to_str().expect("UTF-8 path")]);

    let mut alice = server.client("alice", &[]);
    alice.reply("IDENT alice", "OK IDENT alice");
    alice.expect("OK PM_PUBKEY"); // published automatically
    let mut bob = server.client("bob", &[]);
    bob.reply("IDENT bob", "OK IDENT bob");
    let alice_key = bob.expect_prefix("PM_PUBKEY alice ");
    bob.expect("OK PM_PUBKEY");
    alice.expect("JOINED bob");
    let bob_key = alice.expect_prefix("PM_PUBKEY bob ");
    assert_ne!(alice_key, bob_key);
    assert_eq!(alice_key.len(), 66);

    // First message: a session key, then the message, both opaque to the server.
    alice.send(&format!("PM bob {SECRET}"));
    let sealed = alice.expect_prefix("OK PM bob ");
    let wrapped = bob.expect_prefix("PM_SESSIONKEY alice ");
    assert_eq!(bob.expect_prefix("NPM alice "), sealed);
    bob.expect(&format!("* PM from alice: {SECRET}"));
    for hex in [&sealed, &wrapped] {
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{hex}");
    }

    // Second message: the session key is not sent again.
    alice.send(&format!("PM bob {SECOND}"));
    let sealed2 = alice.expect_prefix("OK PM bob ");
    assert_ne!(sealed, sealed2);
    assert_eq!(bob.expect_prefix("NPM alice "), sealed2);
    bob.expect(&format!("* PM from alice: {SECOND}"));

    // The other direction has its own session key.
    bob.send(&format!("PM alice {REPLY}"));
    bob.expect_prefix("OK PM alice ");
    alice.expect_prefix("PM_SESSIONKEY bob ");
    alice.expect_prefix("NPM bob ");
    alice.expect(&format!("* PM from bob: {REPLY}"));

    // What the client cannot encrypt it does not send.
    alice.send("PM nobody zzz");
    alice.expect_prefix("* cannot PM nobody");
    alice.send("PM alice zzz");
    alice.expect_prefix("* cannot PM yourself");
    alice.send("USERS");
    alice.expect("OK USERS alice:bob");

    // Leaving erases the keys: bob's successor gets a fresh session key.
    bob.close_stdin();
    bob.expect(GOODBYE);
    assert!(bob.expect_exit().success());
    alice.expect("LEFT bob");
    alice.expect("* forgot the session keys shared with bob");
    alice.send("PM bob zzz");
    alice.expect_prefix("* cannot PM bob");
    let mut bob = server.client("bob again", &[]);
    bob.reply("IDENT bob", "OK IDENT bob");
    assert_eq!(bob.expect_prefix("PM_PUBKEY alice "), alice_key);
    bob.expect("OK PM_PUBKEY");
    alice.expect("JOINED bob");
    let new_bob_key = alice.expect_prefix("PM_PUBKEY bob ");
    assert_ne!(new_bob_key, bob_key);
    alice.send(&format!("PM bob {AGAIN}"));
    alice.expect_prefix("OK PM bob ");
    let rewrapped = bob.expect_prefix("PM_SESSIONKEY alice ");
    assert_ne!(rewrapped, wrapped);
    bob.expect_prefix("NPM alice ");
    bob.expect(&format!("* PM from alice: {AGAIN}"));

    // The server saw the ciphertext and never the plaintext. It logs each line before
    // relaying it, so every line above is in the log by now.
    let received = std::fs::read_to_string(&log.0).expect("read the server's log");
    assert!(
        received.contains(&format!(" PM bob {sealed}\n")),
        "{received}"
    );
    assert!(received.contains(&format!(" PM_SESSIONKEY bob {wrapped}\n")));
    let mut server_lines = server.proc.seen.clone();
    server_lines.extend(server.proc.drain());
    for plain in [
        SECRET, SECOND, REPLY, AGAIN, "zebra", "zigzag", "zilch", "zany", "hazy",
    ] {
        assert!(
            !received.contains(plain),
            "the server received {plain:?}:\n{received}"
        );
        assert!(server_lines.iter().all(|l| !l.contains(plain)));
    }
    for line in received.lines() {
        let (_, command) = line.split_once(' ').expect("<client> <line>");
        if let Some(rest) = command.strip_prefix("PM ") {
            let (_, payload) = rest.split_once(' ').expect("PM <user> <payload>");
            assert!(payload.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
        }
    }
}

#[test]
fn clients_that_stop_answering_are_dropped() {
    let mut server = Server::start(&["--timeout-ms", "1500"]);
    let mut alice = server.raw_client("alice");
    alice.reply("IDENT alice", "OK IDENT alice");
    // Carol stops driving her connection as soon as she is logged in.
    let mut carol = server.client("carol", &["--raw", "--freeze-after-ms", "0"]);
    carol.reply("IDENT carol", "OK IDENT carol");
    alice.expect("JOINED carol");
    // Dave's process is killed.
    let mut dave = server.raw_client("dave");
    dave.reply("IDENT dave", "OK IDENT dave");
    alice.expect("JOINED dave");
    dave.child.kill().expect("kill dave");

    alice.expect_all(&["LEFT carol", "LEFT dave"]);
    alice.reply("USERS", FAIL06);
    let mut dropped = Vec::new();
    while dropped.len() < 2 {
        let line = server
            .proc
            .skip_until("a DSCN line", |l| l.starts_with("DSCN "));
        dropped.push(line);
    }
    dropped.sort();
    assert_eq!(
        dropped,
        [
            "DSCN carol Pong timeout (FAIL05 Ping without pong)",
            "DSCN dave Pong timeout (FAIL05 Ping without pong)",
        ]
    );
    let frozen = "* frozen (test hook): no longer driving the connection";
    carol.skip_until(frozen, |l| l == frozen);
}

#[test]
fn a_message_holding_a_line_break_is_refused() {
    let server = Server::start(&[]);
    let mut watcher = server.raw_client("watcher");
    watcher.reply("IDENT watcher", "OK IDENT watcher");
    // Mallory uses tickwire directly, so her messages may hold anything.
    let key = ServerKey::from_hex(&server.key).expect("server key");
    let addr = server.addr.parse().expect("server address");
    let mut mallory = ClientDriver::connect(ClientConfig::new(key), addr, SocketConfig::default())
        .expect("connect");
    let deadline = Instant::now() + WAIT;
    let next = |driver: &mut ClientDriver| -> String {
        loop {
            assert!(Instant::now() < deadline, "mallory: timed out");
            match driver.run_until_event(Some(Duration::from_millis(100))) {
                Ok(Some(Event::Message { data, .. })) => {
                    return String::from_utf8(data).expect("UTF-8");
                }
                Ok(Some(Event::Disconnected { reason, .. })) => panic!("mallory: {reason}"),
                Ok(_) => {}
                Err(e) => panic!("mallory: {e}"),
            }
        }
    };
    let line = ChannelId(3);
    assert_eq!(next(&mut mallory), INIT);
    mallory.send(line, b"IDENT mallory\r\n").expect("send"); // one line break is allowed
    assert_eq!(next(&mut mallory), "OK IDENT mallory");
    watcher.expect("JOINED mallory");
    mallory.send(line, b"BCST hi\nLEFT watcher").expect("send");
    assert_eq!(next(&mut mallory), FAIL00);
    mallory.send(line, b"BCST hi\rLEFT watcher").expect("send");
    assert_eq!(next(&mut mallory), FAIL00);
    mallory
        .send(ChannelId(2), b"BCST on another channel")
        .expect("send");
    mallory.send(line, b"BCST done").expect("send");
    assert_eq!(next(&mut mallory), "OK BCST done");
    watcher.expect("BCST mallory done");
}
