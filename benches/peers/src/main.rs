//! tickwire side by side with laminar, renet and quinn: the same scenarios, one run, one table.
//!
//! ```text
//! cargo run --release --manifest-path benches/peers/Cargo.toml -- [--secs S] [--only NAME]
//! ```
//! `--secs S` (default 5) is the measured time of each throughput case, each latency case and
//! the fleet case. `--only NAME` (repeatable, or comma-separated) keeps only the peers
//! (`tickwire`, `laminar`, `renet`, `quinn`) and/or scenarios (`throughput`, `latency`,
//! `large`, `fleet`) named. See README.md for what each scenario does.

mod peers;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netsim::model::LinkConfig;
use netsim::proxy::{Proxy, ProxyConfig};
use peers::{ClientFactory, ClientSide, Mode, Peer, PEERS};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const WARMUP: Duration = Duration::from_millis(300);
const WINDOW: u64 = 2048;
const STALL: Duration = Duration::from_millis(20);
const DELAY: Duration = Duration::from_millis(20);
const FLEET_CLIENTS: usize = 256;
const FLEET_THREADS: usize = 2;

fn epoch() -> Instant {
    static E: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// CPU time of the whole process (utime + stime), from /proc/self/stat.
fn process_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based) -> index 11, 12.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// CPU time of the threads whose name starts with `prefix` (nanoseconds from schedstat).
fn threads_cpu(prefix: &str) -> Duration {
    let mut total = 0u64;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let p = t.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            if comm.trim_end().starts_with(prefix) {
                let ss = std::fs::read_to_string(p.join("schedstat")).unwrap_or_default();
                total += ss
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(total)
}

/// A free loopback port for a server, so that a proxy can be bound in front of it first.
fn reserve_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().unwrap()
}

fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("spawn")
}

/// Message layout: seq u64, send time u64 (ns since the process epoch), padding.
fn message(buf: &mut Vec<u8>, size: usize, seq: u64) {
    buf.clear();
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&now_ns().to_le_bytes());
    buf.resize(size.max(16), 0xAB);
}

fn parse(m: &[u8]) -> Option<(u64, u64)> {
    if m.len() < 16 {
        return None;
    }
    Some((
        u64::from_le_bytes(m[0..8].try_into().unwrap()),
        u64::from_le_bytes(m[8..16].try_into().unwrap()),
    ))
}

/// A server thread pumping until `stop`, calling `on_msg` for each delivery.
fn serve(
    peer: Peer,
    mut server: Box<dyn peers::ServerSide>,
    stop: Arc<AtomicBool>,
    mut on_msg: impl FnMut(&[u8]) + Send + 'static,
) -> JoinHandle<()> {
    spawn(format!("srv-{}", peer.name()), move || {
        let hard = Instant::now() + Duration::from_secs(600);
        while !stop.load(Ordering::Relaxed) && Instant::now() < hard {
            server.pump(Duration::from_millis(2), &mut on_msg);
        }
        drop(server);
    })
}

fn connect(factory: &ClientFactory, addr: SocketAddr) -> Option<Box<dyn ClientSide>> {
    let mut c = factory(addr);
    let give_up = Instant::now() + CONNECT_TIMEOUT;
    while !c.connected() && Instant::now() < give_up {
        c.pump(Duration::from_millis(5));
    }
    c.connected().then_some(c)
}

fn start_proxy(upstream: SocketAddr, link: LinkConfig, stop: Arc<AtomicBool>) -> (SocketAddr, JoinHandle<()>) {
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), upstream);
    config.link = link;
    config.seed = Some(7);
    config.report_interval = None;
    config.max_clients = 1024;
    let proxy = Proxy::bind(config).expect("proxy bind");
    let addr = proxy.local_addr();
    let h = spawn("proxy".into(), move || {
        let _ = proxy.run(&stop);
    });
    (addr, h)
}

// ------------------------------------------------------------------------------------------
// 1. Unreliable throughput

fn throughput(peer: Peer, size: usize, secs: f64) -> Result<(f64, f64), String> {
    let bind = reserve_port();
    let h = peer.server(bind, &[])?;
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let d2 = delivered.clone();
    let srv = serve(peer, h.server, stop.clone(), move |_m| {
        d2.fetch_add(1, Ordering::Relaxed);
    });
    let ready = Arc::new(AtomicBool::new(false));
    let (stop2, d3, r2, factory) = (stop.clone(), delivered.clone(), ready.clone(), h.connect);
    let cli = spawn(format!("cli-{}", peer.name()), move || -> Result<(), String> {
        let mut c = connect(&factory, bind).ok_or("client did not connect")?;
        r2.store(true, Ordering::Relaxed);
        let msg = vec![0x5Au8; size];
        let (mut sent, mut written_off) = (0u64, 0u64);
        let mut last_progress = (Instant::now(), 0u64);
        let hard = Instant::now() + Duration::from_secs_f64(secs + 30.0);
        while !stop2.load(Ordering::Relaxed) && Instant::now() < hard {
            let got = d3.load(Ordering::Relaxed);
            if got != last_progress.1 {
                last_progress = (Instant::now(), got);
            }
            if sent.saturating_sub(got).saturating_sub(written_off) < WINDOW {
                for _ in 0..64 {
                    if c.send(Mode::Unreliable, &msg) {
                        sent += 1;
                    }
                }
                c.pump(Duration::ZERO);
            } else {
                c.pump(Duration::from_millis(1));
                if last_progress.0.elapsed() > STALL {
                    written_off = sent.saturating_sub(got);
                    last_progress.0 = Instant::now();
                }
            }
        }
        Ok(())
    });
    let give_up = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(1);
    while !ready.load(Ordering::Relaxed) && Instant::now() < give_up && !cli.is_finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut result = Err("client did not connect".to_string());
    if ready.load(Ordering::Relaxed) {
        std::thread::sleep(WARMUP);
        let (n0, c0, t0) = (delivered.load(Ordering::Relaxed), process_cpu(), Instant::now());
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (n1, c1, t1) = (delivered.load(Ordering::Relaxed), process_cpu(), Instant::now());
        let n = (n1 - n0) as f64;
        result = Ok((n / (t1 - t0).as_secs_f64(), (c1 - c0).as_secs_f64() * 1e6 / n.max(1.0)));
    }
    stop.store(true, Ordering::Relaxed);
    match cli.join() {
        Ok(Err(e)) => result = result.and(Err(e)),
        Err(_) => result = Err("client panicked".into()),
        _ => {}
    }
    let _ = srv.join();
    result
}

// ------------------------------------------------------------------------------------------
// 2. Reliable-ordered latency through the proxy

struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
    sent: u64,
    delivered: u64,
    misordered: u64,
}

fn latency(peer: Peer, loss: f64, secs: f64) -> Result<Latency, String> {
    let bind = reserve_port();
    let pstop = Arc::new(AtomicBool::new(false));
    let (paddr, proxy) = start_proxy(
        bind,
        LinkConfig::perfect().with_loss(loss).with_delay(DELAY),
        pstop.clone(),
    );
    let h = match peer.server(bind, &[paddr]) {
        Ok(h) => h,
        Err(e) => {
            pstop.store(true, Ordering::Relaxed);
            let _ = proxy.join();
            return Err(e);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new((Vec::<u64>::new(), 0u64, 0u64))); // lat ns, next seq, misordered
    let s2 = samples.clone();
    let srv = serve(peer, h.server, stop.clone(), move |m| {
        if let Some((seq, t)) = parse(m) {
            let lat = now_ns().saturating_sub(t);
            let mut s = s2.lock().unwrap();
            if seq != s.1 {
                s.2 += 1;
            }
            s.1 = seq + 1;
            s.0.push(lat);
        }
    });
    let factory = h.connect;
    let s3 = samples.clone();
    let cli = spawn(format!("cli-{}", peer.name()), move || -> Result<u64, String> {
        let mut c = connect(&factory, paddr).ok_or("client did not connect")?;
        let interval = Duration::from_secs_f64(1.0 / 60.0);
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let mut next = start;
        let mut seq = 0u64;
        let mut buf = Vec::new();
        let mut refused = 0u64;
        while Instant::now() < end {
            let now = Instant::now();
            if now >= next {
                message(&mut buf, 100, seq);
                if c.send(Mode::Reliable, &buf) {
                    seq += 1;
                } else {
                    refused += 1;
                }
                next += interval;
            }
            c.pump(next.saturating_duration_since(Instant::now()));
        }
        // Drain: keep pumping (resends) until everything arrived, at most 10 s.
        let drain_end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < drain_end && (s3.lock().unwrap().0.len() as u64) < seq {
            c.pump(Duration::from_millis(5));
        }
        if refused > 0 {
            eprintln!("  {}: {refused} sends refused", "latency");
        }
        Ok(seq)
    });
    let sent = cli.join().map_err(|_| "client panicked".to_string())?;
    stop.store(true, Ordering::Relaxed);
    let _ = srv.join();
    pstop.store(true, Ordering::Relaxed);
    let _ = proxy.join();
    let sent = sent?;
    let (mut lat, _, misordered) = std::mem::take(&mut *samples.lock().unwrap());
    if lat.is_empty() {
        return Err("nothing delivered".into());
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize] as f64 / 1e6;
    Ok(Latency {
        p50: pct(0.50),
        p99: pct(0.99),
        max: pct(1.0),
        sent,
        delivered: lat.len() as u64,
        misordered,
    })
}

// ------------------------------------------------------------------------------------------
// 3. One large reliable message through the proxy, with 60 Hz of 100 B inputs around it

const LARGE_REPS: usize = 3;
const LARGE_TIMEOUT: Duration = Duration::from_secs(10);

fn large(peer: Peer, size: usize, loss: f64) -> Result<Vec<Option<f64>>, String> {
    let bind = reserve_port();
    let pstop = Arc::new(AtomicBool::new(false));
    let (paddr, proxy) = start_proxy(
        bind,
        LinkConfig::perfect().with_loss(loss).with_delay(DELAY),
        pstop.clone(),
    );
    let h = match peer.server(bind, &[paddr]) {
        Ok(h) => h,
        Err(e) => {
            pstop.store(true, Ordering::Relaxed);
            let _ = proxy.join();
            return Err(e);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Delivery time of each large message (ns), by the seq in it.
    let got: Arc<Mutex<Vec<(u64, u64)>>> = Default::default();
    let g2 = got.clone();
    let srv = serve(peer, h.server, stop.clone(), move |m| {
        if m.len() >= 1000 {
            if let Some((seq, t)) = parse(m) {
                g2.lock().unwrap().push((seq, now_ns().saturating_sub(t)));
            }
        }
    });
    let factory = h.connect;
    let g3 = got.clone();
    let cli = spawn(format!("cli-{}", peer.name()), move || -> Result<Vec<Option<f64>>, String> {
        let mut c = connect(&factory, paddr).ok_or("client did not connect")?;
        let interval = Duration::from_secs_f64(1.0 / 60.0);
        let mut next = Instant::now();
        let mut small = Vec::new();
        let mut big = Vec::new();
        let mut tick = 0u64;
        let mut results = Vec::new();
        // Background inputs for 0.5 s first (RTT estimates settle), and throughout.
        let mut pump_for = |c: &mut Box<dyn ClientSide>, until: Instant, done: &dyn Fn() -> bool| {
            while Instant::now() < until && !done() {
                if Instant::now() >= next {
                    message(&mut small, 100, tick);
                    c.send(Mode::Reliable, &small);
                    tick += 1;
                    next += interval;
                }
                c.pump(next.saturating_duration_since(Instant::now()).min(Duration::from_millis(5)));
            }
        };
        pump_for(&mut c, Instant::now() + Duration::from_millis(500), &|| false);
        for rep in 0..LARGE_REPS as u64 {
            message(&mut big, size, 1_000_000 + rep);
            let mut sent = c.send(Mode::Reliable, &big);
            let deadline = Instant::now() + LARGE_TIMEOUT;
            while !sent && Instant::now() < deadline {
                pump_for(&mut c, Instant::now() + Duration::from_millis(5), &|| false);
                message(&mut big, size, 1_000_000 + rep);
                sent = c.send(Mode::Reliable, &big);
            }
            let g = g3.clone();
            let done = move || g.lock().unwrap().iter().any(|x| x.0 == 1_000_000 + rep);
            pump_for(&mut c, deadline, &done);
            let r = g3
                .lock()
                .unwrap()
                .iter()
                .find(|x| x.0 == 1_000_000 + rep)
                .map(|x| x.1 as f64 / 1e6);
            results.push(r);
            if r.is_none() {
                break; // timed out: do not spend more time on this case
            }
        }
        Ok(results)
    });
    let r = cli.join().map_err(|_| "client panicked".to_string());
    stop.store(true, Ordering::Relaxed);
    let _ = srv.join();
    pstop.store(true, Ordering::Relaxed);
    let _ = proxy.join();
    r?
}

// ------------------------------------------------------------------------------------------
// 4. 256 clients at 30 Hz, 100 B reliable-ordered each tick

struct Fleet {
    connected: usize,
    rate: f64,
    expected: f64,
    server_us: f64,
    process_us: f64,
}

fn fleet(peer: Peer, secs: f64) -> Result<Fleet, String> {
    let bind = reserve_port();
    let h = peer.server(bind, &[])?;
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let d2 = delivered.clone();
    let srv = serve(peer, h.server, stop.clone(), move |_| {
        d2.fetch_add(1, Ordering::Relaxed);
    });
    let connected = Arc::new(AtomicUsize::new(0));
    let finished_connecting = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(AtomicBool::new(false));
    let per = FLEET_CLIENTS / FLEET_THREADS;
    let mut threads = Vec::new();
    for t in 0..FLEET_THREADS {
        let (factory, stop, connected, fin, go) = (
            h.connect.clone(),
            stop.clone(),
            connected.clone(),
            finished_connecting.clone(),
            go.clone(),
        );
        threads.push(spawn(format!("cli-{}-{t}", peer.name()), move || {
            let mut clients: Vec<Box<dyn ClientSide>> = (0..per).map(|_| factory(bind)).collect();
            let give_up = Instant::now() + CONNECT_TIMEOUT;
            while Instant::now() < give_up && clients.iter().any(|c| !c.connected()) {
                for c in clients.iter_mut() {
                    c.pump(Duration::ZERO);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            clients.retain(|c| c.connected());
            connected.fetch_add(clients.len(), Ordering::Relaxed);
            fin.fetch_add(1, Ordering::Relaxed);
            let hard = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs_f64(secs + 30.0);
            while !go.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) && Instant::now() < hard {
                for c in clients.iter_mut() {
                    c.pump(Duration::ZERO);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let interval = Duration::from_secs_f64(1.0 / 30.0);
            let mut next = Instant::now();
            let mut buf = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < hard {
                if Instant::now() >= next {
                    for c in clients.iter_mut() {
                        message(&mut buf, 100, seq);
                        c.send(Mode::Reliable, &buf);
                    }
                    seq += 1;
                    next += interval;
                }
                for c in clients.iter_mut() {
                    c.pump(Duration::ZERO);
                }
                std::thread::sleep(next.saturating_duration_since(Instant::now()).min(Duration::from_millis(5)));
            }
        }));
    }
    let give_up = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(10);
    while finished_connecting.load(Ordering::Relaxed) < FLEET_THREADS && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(10));
    }
    go.store(true, Ordering::Relaxed);
    let n_conn = connected.load(Ordering::Relaxed);
    let mut result = Err(format!("only {n_conn} of {FLEET_CLIENTS} clients connected"));
    if n_conn > 0 {
        std::thread::sleep(Duration::from_secs(1));
        let (n0, s0, p0, t0) = (delivered.load(Ordering::Relaxed), threads_cpu("srv"), process_cpu(), Instant::now());
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (n1, s1, p1, t1) = (delivered.load(Ordering::Relaxed), threads_cpu("srv"), process_cpu(), Instant::now());
        let n = (n1 - n0) as f64;
        result = Ok(Fleet {
            connected: n_conn,
            rate: n / (t1 - t0).as_secs_f64(),
            expected: n_conn as f64 * 30.0,
            server_us: (s1 - s0).as_secs_f64() * 1e6 / n.max(1.0),
            process_us: (p1 - p0).as_secs_f64() * 1e6 / n.max(1.0),
        });
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let _ = srv.join();
    result
}

// ------------------------------------------------------------------------------------------

struct Table {
    rows: Vec<(String, String, Vec<String>)>,
}

impl Table {
    fn add(&mut self, scenario: &str, metric: &str, peers: &[Peer], cells: Vec<(Peer, String)>) {
        let row = PEERS
            .iter()
            .map(|p| {
                if !peers.contains(p) {
                    return "(not run)".to_string();
                }
                cells
                    .iter()
                    .find(|c| c.0 == *p)
                    .map_or("-".into(), |c| c.1.clone())
            })
            .collect();
        self.rows.push((scenario.into(), metric.into(), row));
        self.print_last();
    }
    fn print_last(&self) {
        let (s, m, r) = self.rows.last().unwrap();
        eprintln!("  {s} | {m} | {}", r.join(" | "));
    }
    fn print(&self) {
        let names: Vec<&str> = PEERS.iter().map(|p| p.name()).collect();
        println!("| scenario | metric | {} |", names.join(" | "));
        println!("| --- | --- |{}", " --- |".repeat(names.len()));
        for (s, m, r) in &self.rows {
            println!("| {s} | {m} | {} |", r.join(" | "));
        }
    }
}

fn main() {
    let mut secs = 5.0f64;
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--secs" => secs = args.next().and_then(|v| v.parse().ok()).expect("--secs S"),
            "--only" => only.extend(
                args.next()
                    .expect("--only NAME")
                    .split(',')
                    .map(|s| s.trim().to_lowercase()),
            ),
            "--os-buffers" => peers::tw::OS_BUFFERS.store(true, Ordering::Relaxed),
            "-h" | "--help" => {
                println!("usage: peers [--secs S] [--only NAME[,NAME..]] [--os-buffers]\n  NAME: tickwire laminar renet quinn throughput latency large fleet\n  --os-buffers: tickwire keeps the system's socket buffer sizes (208 KiB on a stock Linux host) instead of asking for 2 MiB");
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(secs > 0.0 && secs <= 600.0, "--secs must be in (0, 600]");
    epoch();
    let peer_names: Vec<&str> = PEERS.iter().map(|p| p.name()).collect();
    let want_peers: Vec<&String> = only.iter().filter(|o| peer_names.contains(&o.as_str())).collect();
    let want_scen: Vec<&String> = only.iter().filter(|o| !peer_names.contains(&o.as_str())).collect();
    let peers: Vec<Peer> = PEERS
        .iter()
        .copied()
        .filter(|p| want_peers.is_empty() || want_peers.iter().any(|w| *w == p.name()))
        .collect();
    let scen = |name: &str| want_scen.is_empty() || want_scen.iter().any(|w| name.contains(w.as_str()));
    let mut table = Table { rows: Vec::new() };
    let started = Instant::now();
    eprintln!("peers: {:?}, {secs} s per timed case", peers.iter().map(|p| p.name()).collect::<Vec<_>>());

    if scen("throughput") {
        for size in [64usize, 900, 1000] {
            let mut rate = Vec::new();
            let mut cpu = Vec::new();
            for &p in &peers {
                eprintln!("throughput {size} B: {}", p.name());
                match throughput(p, size, secs) {
                    Ok((r, c)) => {
                        rate.push((p, format!("{:.0}", r)));
                        cpu.push((p, format!("{:.2}", c)));
                    }
                    Err(e) => {
                        rate.push((p, format!("failed: {e}")));
                        cpu.push((p, "-".into()));
                    }
                }
            }
            table.add(&format!("1. unreliable {size} B, loopback"), "messages/s delivered", &peers, rate);
            table.add(&format!("1. unreliable {size} B, loopback"), "process CPU µs / delivered msg", &peers, cpu);
        }
    }
    if scen("latency") {
        for loss in [0.0, 0.05, 0.20] {
            let mut pct = Vec::new();
            let mut del = Vec::new();
            for &p in &peers {
                eprintln!("latency {:.0}% loss: {}", loss * 100.0, p.name());
                match latency(p, loss, secs) {
                    Ok(l) => {
                        pct.push((p, format!("{:.1} / {:.1} / {:.1}", l.p50, l.p99, l.max)));
                        let mis = if l.misordered > 0 { format!(", {} out of order", l.misordered) } else { String::new() };
                        del.push((p, format!("{}/{}{mis}", l.delivered, l.sent)));
                    }
                    Err(e) => {
                        pct.push((p, format!("failed: {e}")));
                        del.push((p, "-".into()));
                    }
                }
            }
            let s = format!("2. reliable-ordered 100 B @ 60 Hz, {:.0}% loss, 20 ms delay", loss * 100.0);
            table.add(&s, "latency p50 / p99 / max (ms)", &peers, pct);
            table.add(&s, "delivered / sent", &peers, del);
        }
    }
    if scen("large") {
        for size in [64 * 1024usize, 250 * 1024] {
            for loss in [0.0, 0.05] {
                let mut cells = Vec::new();
                for &p in &peers {
                    let sz = size.min(p.max_message());
                    eprintln!("large {sz} B {:.0}% loss: {}", loss * 100.0, p.name());
                    let cell = match large(p, sz, loss) {
                        Ok(v) => {
                            let mut ok: Vec<f64> = v.iter().flatten().copied().collect();
                            ok.sort_by(|a, b| a.partial_cmp(b).unwrap());
                            let note = if sz != size { format!(" ({sz} B)") } else { String::new() };
                            if ok.len() == v.len() && !ok.is_empty() {
                                format!("{:.0} / {:.0}{note}", ok[ok.len() / 2], ok[ok.len() - 1])
                            } else {
                                format!("timeout >{}s after {} ok{note}", LARGE_TIMEOUT.as_secs(), ok.len())
                            }
                        }
                        Err(e) => format!("failed: {e}"),
                    };
                    cells.push((p, cell));
                }
                table.add(
                    &format!("3. one {} KiB message, {:.0}% loss, 20 ms delay", size / 1024, loss * 100.0),
                    &format!("time to deliver, median / worst of {LARGE_REPS} (ms)"),
                    &peers,
                    cells,
                );
            }
        }
    }
    if scen("fleet") {
        let mut srv = Vec::new();
        let mut proc_ = Vec::new();
        let mut rate = Vec::new();
        for &p in &peers {
            eprintln!("fleet {FLEET_CLIENTS} clients: {}", p.name());
            match fleet(p, secs) {
                Ok(f) => {
                    srv.push((p, format!("{:.2}", f.server_us)));
                    proc_.push((p, format!("{:.2}", f.process_us)));
                    rate.push((p, format!("{:.0} of {:.0} ({} clients)", f.rate, f.expected, f.connected)));
                }
                Err(e) => {
                    srv.push((p, format!("failed: {e}")));
                    proc_.push((p, "-".into()));
                    rate.push((p, "-".into()));
                }
            }
        }
        let s = format!("4. {FLEET_CLIENTS} clients × 100 B reliable-ordered @ 30 Hz, loopback");
        table.add(&s, "server threads CPU µs / msg", &peers, srv);
        table.add(&s, "process CPU µs / msg (clients too)", &peers, proc_);
        table.add(&s, "messages/s delivered", &peers, rate);
    }
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
    table.print();
}
