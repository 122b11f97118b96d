//! No heap allocation per packet on the steady-state send and receive paths: a counting
//! global allocator watches a server and a client exchange messages over a perfect in-memory
//! network after a warm-up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tickwire::{ChannelId, Client, ClientConfig, Event, Server, ServerConfig, ServerIdentity};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Pair {
    now: Instant,
    server: Server,
    client: Client,
    buf: Vec<u8>,
    server_addr: SocketAddr,
    client_addr: SocketAddr,
    delivered: usize,
}

impl Pair {
    /// A server and a client over a perfect in-memory network, after the handshake.
    fn connected() -> Self {
        let now = Instant::now();
        let server = Server::new(ServerConfig::new(ServerIdentity::generate())).unwrap();
        let server_addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let client =
            Client::connect(ClientConfig::new(server.public_key()), server_addr, now).unwrap();
        let mut p = Pair {
            now,
            server,
            client,
            buf: vec![0; 1500],
            server_addr,
            client_addr: "127.0.0.1:5000".parse().unwrap(),
            delivered: 0,
        };
        for _ in 0..50 {
            p.tick();
        }
        p
    }

    /// One tick: both sides send what they have, the other side receives it, events are
    /// drained and their buffers recycled.
    fn tick(&mut self) {
        let now = self.now;
        while let Some(t) = self.client.poll_transmit(now, &mut self.buf) {
            let (d, _) = self.buf.split_at_mut(t.len);
            self.server.handle_datagram(now, self.client_addr, d);
        }
        while let Some(t) = self.server.poll_transmit(now, &mut self.buf) {
            let (d, _) = self.buf.split_at_mut(t.len);
            self.client.handle_datagram(now, self.server_addr, d);
        }
        while let Some(e) = self.server.poll_event() {
            if let Event::Message { data, .. } = e {
                self.delivered += 1;
                self.server.recycle(data);
            }
        }
        while let Some(e) = self.client.poll_event() {
            if let Event::Message { data, .. } = e {
                self.delivered += 1;
                self.client.recycle(data);
            }
        }
        self.now += Duration::from_millis(1);
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
        if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
            self.client.handle_timeout(self.now);
        }
    }

    fn send_all(&mut self, msg: &[u8]) {
        let now = self.now;
        let id = self.client.id().unwrap();
        for ch in 0..4 {
            self.client.send(now, ChannelId(ch), msg).unwrap();
            self.server.send(now, id, ChannelId(ch), msg).unwrap();
        }
    }
}

#[test]
fn steady_state_send_and_receive_do_not_allocate() {
    let mut p = Pair::connected();
    assert!(p.client.is_connected());
    let msg = [7u8; 100];
    // Warm-up: pools, queues and windows reach their working size.
    for _ in 0..2000 {
        p.send_all(&msg);
        p.tick();
    }
    ALLOCATIONS.store(0, Ordering::Relaxed);
    let before = p.delivered;
    COUNTING.store(true, Ordering::Relaxed);
    for _ in 0..1000 {
        p.send_all(&msg);
        p.tick();
    }
    COUNTING.store(false, Ordering::Relaxed);
    let delivered = p.delivered - before;
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    println!("{delivered} messages delivered, {allocations} allocations");
    assert!(delivered >= 7900, "messages flowed: {delivered}");
    assert_eq!(allocations, 0, "allocations on the steady-state path");
}

/// An idle connection holds little memory (the performance issue's bound: 8 KiB), once the
/// traffic that grew its buffers has stopped.
#[test]
fn idle_connection_holds_at_most_8_kib() {
    let mut p = Pair::connected();
    for _ in 0..100 {
        p.send_all(&[1u8; 100]);
        p.tick();
    }
    for _ in 0..5000 {
        p.tick();
    }
    let server_side = p.server.clients()[0].stats.memory_bytes;
    let client_side = p.client.stats().memory_bytes;
    println!("idle connection: server side {server_side} octets, client side {client_side}");
    assert!(server_side <= 8192, "server side holds {server_side}");
    assert!(client_side <= 8192, "client side holds {client_side}");
}
