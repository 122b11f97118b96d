//! The proxy in-process between a UDP echo server and client sockets, all on loopback.
//!
//! Every loop is bounded and every read has a timeout; nothing asserts on timing.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use netsim::model::LinkConfig;
use netsim::proxy::{Proxy, ProxyConfig, ProxySummary};

/// Datagrams sent before waiting for their echoes, so no socket buffer overflows.
const WINDOW: u32 = 16;

/// A UDP echo server on `ip`, recording the addresses it hears from.
struct Echo {
    addr: SocketAddr,
    peers: Arc<Mutex<HashSet<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(ip: &str) -> Echo {
        let socket = UdpSocket::bind((ip, 0)).expect("bind echo");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peers, stop) = (peers.clone(), stop.clone());
            thread::spawn(move || {
                let started = Instant::now();
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                    if let Ok((len, from)) = socket.recv_from(&mut buf) {
                        peers.lock().unwrap().insert(from);
                        let _ = socket.send_to(&buf[..len], from);
                    }
                }
            })
        };
        Echo {
            addr,
            peers,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The proxy running in a thread.
struct Running {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<ProxySummary>>,
}

impl Running {
    fn start(listen: &str, upstream: SocketAddr, link: LinkConfig, seed: u64) -> Running {
        let mut config = ProxyConfig::new(format!("{listen}:0").parse().unwrap(), upstream);
        config.link = link;
        config.seed = Some(seed);
        config.report_interval = None;
        let proxy = Proxy::bind(config).expect("bind proxy");
        assert_eq!(proxy.seed(), seed);
        let addr = proxy.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || proxy.run(&stop))
        };
        Running { addr, stop, thread }
    }

    fn stop(self) -> ProxySummary {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .expect("proxy thread")
            .expect("proxy run")
    }
}

fn client(ip: &str) -> UdpSocket {
    let socket = UdpSocket::bind((ip, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    socket
}

/// Reads echoes tagged `tag` into `received` until it holds `until` or a read times out.
fn receive(socket: &UdpSocket, proxy: SocketAddr, tag: u8, received: &mut Vec<u32>, until: usize) {
    let mut buf = [0u8; 2048];
    while received.len() < until {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            return;
        };
        assert_eq!(from, proxy, "replies come from the listen socket");
        assert_eq!(len, 64);
        assert!(
            buf[4..len].iter().all(|b| *b == tag),
            "another client's echo"
        );
        received.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
    }
}

/// Sends `count` numbered datagrams through `proxy` in windows, collecting the echoes in the
/// order they arrive; a window ends when all its echoes are back or a read times out.
fn exchange(socket: &UdpSocket, proxy: SocketAddr, tag: u8, count: u32) -> Vec<u32> {
    let mut received = Vec::new();
    let mut sent = 0;
    while sent < count {
        let window_end = (sent + WINDOW).min(count);
        for n in sent..window_end {
            let mut data = vec![tag; 64];
            data[..4].copy_from_slice(&n.to_be_bytes());
            socket.send_to(&data, proxy).unwrap();
        }
        sent = window_end;
        receive(socket, proxy, tag, &mut received, sent as usize);
    }
    received
}

#[test]
fn no_loss_everything_comes_back() {
    let echo = Echo::start("127.0.0.1");
    let proxy = Running::start("127.0.0.1", echo.addr, LinkConfig::perfect(), 1);
    let socket = client("127.0.0.1");
    let received = exchange(&socket, proxy.addr, 0xAB, 200);
    assert_eq!(received, (0..200).collect::<Vec<_>>());
    let summary = proxy.stop();
    assert_eq!((summary.up.sent, summary.up.delivered), (200, 200));
    assert_eq!((summary.down.sent, summary.down.delivered), (200, 200));
    assert_eq!(summary.clients_seen, 1);
    assert_eq!(summary.seed, 1);
}

#[test]
fn latency_and_jitter_keep_everything_in_order() {
    let echo = Echo::start("127.0.0.1");
    let link = LinkConfig::perfect()
        .with_delay(Duration::from_millis(10))
        .with_jitter(Duration::from_millis(5))
        .with_rate(10_000_000);
    let proxy = Running::start("127.0.0.1", echo.addr, link, 2);
    let socket = client("127.0.0.1");
    let received = exchange(&socket, proxy.addr, 0x11, 100);
    assert_eq!(received, (0..100).collect::<Vec<_>>());
    proxy.stop();
}

fn lossy_run(seed: u64) -> (Vec<u32>, ProxySummary) {
    let echo = Echo::start("127.0.0.1");
    let link = LinkConfig::perfect().with_loss(0.5);
    let proxy = Running::start("127.0.0.1", echo.addr, link, seed);
    let socket = client("127.0.0.1");
    let mut received = exchange(&socket, proxy.addr, 0x22, 200);
    // Let stragglers through before stopping, then take everything the proxy sent: it is in
    // the socket's buffer already.
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    receive(&socket, proxy.addr, 0x22, &mut received, 200);
    let addr = proxy.addr;
    let summary = proxy.stop();
    receive(
        &socket,
        addr,
        0x22,
        &mut received,
        summary.down.delivered as usize,
    );
    (received, summary)
}

#[test]
fn seeded_loss_returns_fewer_and_replays() {
    let (received, summary) = lossy_run(7);
    assert!(
        !received.is_empty() && received.len() < 200,
        "{}",
        received.len()
    );
    assert!(summary.up.dropped_loss > 0 && summary.down.dropped_loss > 0);
    assert_eq!(summary.up.sent, 200);
    assert_eq!(
        summary.down.sent, summary.up.delivered,
        "the echo returns everything"
    );
    assert_eq!(received.len() as u64, summary.down.delivered);
    // The same seed and the same traffic drop the same datagrams.
    let (again, _) = lossy_run(7);
    assert_eq!(received, again);
}

#[test]
fn each_client_gets_its_own_upstream_address() {
    let echo = Echo::start("127.0.0.1");
    let proxy = Running::start("127.0.0.1", echo.addr, LinkConfig::perfect(), 3);
    let (a, b) = (client("127.0.0.1"), client("127.0.0.1"));
    assert_eq!(exchange(&a, proxy.addr, 0xA1, 20).len(), 20);
    assert_eq!(exchange(&b, proxy.addr, 0xB2, 20).len(), 20);
    assert_eq!(exchange(&a, proxy.addr, 0xA1, 20).len(), 20);
    let summary = proxy.stop();
    assert_eq!(summary.clients_seen, 2);
    let peers = echo.peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 2, "{peers:?}");
    for peer in peers {
        assert!(peer.ip().is_loopback());
        assert_ne!(peer, a.local_addr().unwrap());
        assert_ne!(peer, b.local_addr().unwrap());
    }
}

#[test]
fn max_clients_turns_the_rest_away() {
    let echo = Echo::start("127.0.0.1");
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), echo.addr);
    config.max_clients = 1;
    config.report_interval = None;
    let proxy = Proxy::bind(config).unwrap();
    let addr = proxy.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        thread::spawn(move || proxy.run(&stop))
    };
    let (a, b) = (client("127.0.0.1"), client("127.0.0.1"));
    assert_eq!(exchange(&a, addr, 1, 5).len(), 5);
    assert_eq!(exchange(&b, addr, 2, 5).len(), 0);
    stop.store(true, Ordering::Relaxed);
    let summary = thread.join().unwrap().unwrap();
    assert_eq!(summary.rejected, 5);
}

#[test]
fn duration_ends_the_run() {
    let echo = Echo::start("127.0.0.1");
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), echo.addr);
    config.duration = Some(Duration::from_millis(200));
    config.report_interval = None;
    let summary = Proxy::bind(config)
        .unwrap()
        .run(&AtomicBool::new(false))
        .unwrap();
    assert_eq!(summary.clients_seen, 0);
}

#[test]
fn ipv6_loopback() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    }
    let echo = Echo::start("::1");
    let proxy = Running::start("[::1]", echo.addr, LinkConfig::perfect(), 4);
    let socket = client("::1");
    assert_eq!(exchange(&socket, proxy.addr, 6, 50).len(), 50);
    proxy.stop();
}
