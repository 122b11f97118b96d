//! The echo example's operator console (`--server` mode), driven through standard input like
//! an operator would: list, kick, ban, bans, unban, shutdown. Loopback only; every wait bounded.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

/// Kills the process when dropped, so a failing test leaves nothing running.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn echo_binary() -> PathBuf {
    example_binary("echo")
}

/// Builds an example (debug) and returns its path.
fn example_binary(name: &str) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("debug").join("examples").join(name)
}

/// Lines of a child's stdout, read on a thread.
fn lines_of(child: &mut Child) -> Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (at most 20 s) for a line containing `needle`; returns it. The panic shows the lines
/// that came instead.
fn expect(lines: &Receiver<String>, needle: &str) -> String {
    let mut others = Vec::new();
    loop {
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => others.push(line),
            Err(e) => panic!("no line containing {needle:?}: {e}; got instead: {others:#?}"),
        }
    }
}

/// Waits (at most 20 s each) for a line containing each of `needles`, in any order.
fn expect_all(lines: &Receiver<String>, needles: &[&str]) {
    let mut left: Vec<&str> = needles.to_vec();
    let mut others = Vec::new();
    while !left.is_empty() {
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => match left.iter().position(|n| line.contains(n)) {
                Some(i) => {
                    left.remove(i);
                }
                None => others.push(line),
            },
            Err(e) => panic!("no line containing {left:?}: {e}; got instead: {others:#?}"),
        }
    }
}

fn say(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
}

#[test]
fn operator_console_lists_kicks_bans_and_shuts_down() {
    console_script(&[]);
}

/// The same console, unchanged, over two shards (`--shards 2`): every command answers for
/// all of them.
#[test]
#[cfg(target_os = "linux")]
fn operator_console_works_over_shards() {
    let stats = console_script(&["--shards", "2"]);
    assert!(stats.contains("shard 1: "), "{stats}");
}

/// Runs the console script against `echo --server` with `extra` arguments; returns the
/// answer to `stats`.
fn console_script(extra: &[&str]) -> String {
    let echo = echo_binary();
    let mut server = Guard(
        Command::new(&echo)
            .args(["--server", "127.0.0.1:0", "--secs", "60"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = lines_of(&mut server.0);
    let key = expect(&out, "server key: ").replace("server key: ", "");
    let addr = expect(&out, "listening on ").replace("listening on ", "");
    let mut stdin = server.0.stdin.take().unwrap();
    say(&mut stdin, "list");
    expect(&out, "no clients");
    let _client = Guard(
        Command::new(&echo)
            .args(["--connect", &addr, "--server-key", &key, "--secs", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    expect(&out, "client 1 connected from 127.0.0.1:");
    say(&mut stdin, "list");
    let row = expect(&out, "rtt=");
    assert!(row.starts_with("1 127.0.0.1:"), "{row}");
    say(&mut stdin, "kick 1 no cheating");
    // Over shards the shard's thread may print the disconnect before the console its answer.
    expect_all(&out, &["kicked 1: no cheating", "client 1 disconnected"]);
    say(&mut stdin, "kick 99");
    expect(&out, "error: no client 99");
    say(&mut stdin, "ban 127.0.0.0/8 10m");
    expect(&out, "banned 127.0.0.0/8 for 600s");
    say(&mut stdin, "bans");
    expect(&out, "127.0.0.0/8 for 5");
    say(&mut stdin, "unban 127.0.0.0/8");
    expect(&out, "unbanned 127.0.0.0/8");
    say(&mut stdin, "frobnicate");
    expect(&out, "error: unknown command");
    say(&mut stdin, "stats");
    let mut stats = expect(&out, "shard 0: clients=");
    if extra.contains(&"--shards") {
        stats.push('\n');
        stats.push_str(&expect(&out, "shard 1: clients="));
    }
    assert!(stats.contains("accepted=1"), "{stats}");
    // A drain refuses the next client (it gives up: its echo run fails), then shut down.
    say(&mut stdin, "drain");
    expect(&out, "draining: new clients are refused");
    let refused = Command::new(&echo)
        .args(["--connect", &addr, "--server-key", &key, "--secs", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let told = String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success(), "{told}");
    assert!(told.contains("could not connect"), "{told}");
    say(&mut stdin, "shutdown");
    expect(&out, "shutting down");
    expect(&out, "served ");
    let status = server.0.wait().unwrap();
    assert!(status.success());
    stats
}

#[test]
fn closed_stdin_does_not_stop_the_server() {
    let echo = echo_binary();
    let mut server = Guard(
        Command::new(&echo)
            .args(["--server", "127.0.0.1:0", "--secs", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = lines_of(&mut server.0);
    expect(&out, "listening on ");
    // It serves until --secs runs out, then reports.
    expect(&out, "served 0 connections");
    assert!(server.0.wait().unwrap().success());
}

/// The README's main job, as CI runs it: the echo example with its defaults exits 0 only if
/// every reliable message came back intact and in order.
#[test]
fn echo_example_runs_clean() {
    let echo = echo_binary();
    let run = Command::new(&echo)
        .args(["--secs", "1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "echo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("OK: all 4 clients"), "{stdout}");
}

/// The echo example's local run over two shards.
#[test]
#[cfg(target_os = "linux")]
fn echo_example_runs_clean_over_shards() {
    let echo = echo_binary();
    let run = Command::new(&echo)
        .args(["--secs", "1", "--clients", "8", "--shards", "2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "echo failed:\n{stdout}");
    assert!(stdout.contains("OK: all 8 clients"), "{stdout}");
    assert!(stdout.contains("server: 8 connections"), "{stdout}");
}

#[test]
fn game_example_runs_clean() {
    // The fixed-tick loop of the README: snapshots in order, every relayed chat line.
    let game = example_binary("game");
    let run = Command::new(&game)
        .args(["--clients", "4", "--secs", "2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "game failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("OK: every client"), "{stdout}");
}

/// Scale out: the token example runs 2 servers and clients through one backend that signs a
/// connect token for one server's address per client (and a token for one server is refused
/// by the other).
#[test]
fn token_backend_example_runs_clean() {
    let example = example_binary("token_backend");
    let mut child = Guard(
        Command::new(&example)
            .args(["--servers", "2", "--clients", "6"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = lines_of(&mut child.0);
    let ok = expect(&out, "OK: ");
    assert!(ok.contains("6 clients") && ok.contains("2 servers"), "{ok}");
    assert!(child.0.wait().unwrap().success());
}
