//! No heap allocation per packet on the steady-state send and receive paths: a counting
//! global allocator watches a server and a client exchange messages over a perfect in-memory
//! network after a warm-up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tickwire::ChannelId;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);
/// The count is global: the tests that count take turns.
static COUNTING_TURN: Mutex<()> = Mutex::new(());

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

#[path = "../examples/common/world.rs"]
mod world;
use world::World;

/// A server and a client over a perfect in-memory network (the benches' harness), after the
/// handshake and 50 ticks of 1 ms.
fn connected() -> World {
    let mut w = World::new(1);
    for _ in 0..50 {
        tick(&mut w);
    }
    w
}

/// One tick of 1 ms: both sides send what they have, the other side receives it, events are
/// drained and their buffers recycled.
fn tick(w: &mut World) {
    w.tick::<false>(Duration::from_millis(1));
}

/// One message on each of the four channels, each way.
fn send_all(w: &mut World, msg: &[u8]) {
    let now = w.now;
    let client = &mut w.clients[0].1;
    let id = client.id().unwrap();
    for ch in 0..4 {
        client.send(now, ChannelId(ch), msg).unwrap();
        w.server.send(now, id, ChannelId(ch), msg).unwrap();
    }
}

/// `warm_up` ticks of `send_all(msg)`, then `ticks` more with the allocations counted:
/// returns the messages delivered and the allocations during the counted ticks.
fn counted(p: &mut World, msg: &[u8], warm_up: usize, ticks: usize) -> (u64, usize) {
    for _ in 0..warm_up {
        send_all(p, msg);
        tick(p);
    }
    ALLOCATIONS.store(0, Ordering::Relaxed);
    let before = p.delivered;
    COUNTING.store(true, Ordering::Relaxed);
    for _ in 0..ticks {
        send_all(p, msg);
        tick(p);
    }
    COUNTING.store(false, Ordering::Relaxed);
    (p.delivered - before, ALLOCATIONS.load(Ordering::Relaxed))
}

#[test]
fn steady_state_send_and_receive_do_not_allocate() {
    let _turn = COUNTING_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = connected();
    assert!(p.clients[0].1.is_connected());
    let msg = [7u8; 100];
    // Warm-up: pools, queues and windows reach their working size.
    let (delivered, allocations) = counted(&mut p, &msg, 2000, 1000);
    println!("{delivered} messages delivered, {allocations} allocations");
    assert!(delivered >= 7900, "messages flowed: {delivered}");
    assert_eq!(allocations, 0, "allocations on the steady-state path");
}

/// Messages larger than one datagram (1000 B: two fragments; 2,500 B: three) on every
/// channel, each way: reassembly and the packets' buffers are reused too.
#[test]
fn fragmented_messages_do_not_allocate() {
    let _turn = COUNTING_TURN.lock().unwrap_or_else(|e| e.into_inner());
    for size in [1000, 2500] {
        let mut p = connected();
        let msg = vec![3u8; size];
        // Warm-up: queues and the record of unreliable packets sent (4,096 entries) reach
        // their working size. A buffer pool that loses buffers shows after it as one
        // allocation or more per packet.
        let (delivered, allocations) = counted(&mut p, &msg, 3000, 500);
        println!("{size} B: {delivered} messages delivered, {allocations} allocations");
        assert!(delivered >= 3900, "{size} B messages flowed: {delivered}");
        assert_eq!(
            allocations, 0,
            "allocations on the fragmented path, {size} B"
        );
    }
}

/// An idle connection holds little memory (the performance issue's bound: 8 KiB), once the
/// traffic that grew its buffers has stopped.
#[test]
fn idle_connection_holds_at_most_8_kib() {
    let _turn = COUNTING_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = connected();
    // Small messages and ones of two datagrams (which grow the reassembly and send pools).
    for _ in 0..100 {
        send_all(&mut p, &[1u8; 100]);
        send_all(&mut p, &[2u8; 1000]);
        tick(&mut p);
    }
    for _ in 0..5000 {
        tick(&mut p);
    }
    let server_side = p.server.clients()[0].stats.memory_bytes;
    let client_side = p.clients[0].1.stats().memory_bytes;
    println!("idle connection: server side {server_side} octets, client side {client_side}");
    assert!(server_side <= 8192, "server side holds {server_side}");
    assert!(client_side <= 8192, "client side holds {client_side}");
}
