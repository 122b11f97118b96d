//! The endpoint fed arbitrary datagrams: from a connected client's address, from strangers,
//! and mutations of genuine datagrams. Nothing panics, nothing forged is delivered, and the
//! genuine connection keeps working afterwards.

use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use tickwire::ChannelId;

#[path = "../examples/common/world.rs"]
mod world;
use world::World;

/// A server and a client over a perfect in-memory network (the benches' harness), connected,
/// keeping a copy of every datagram the client sends and the messages the server receives.
fn connected() -> World {
    let mut w = World::unconnected(1);
    // From the first datagram on: the handshake's are mutated and replayed too.
    w.captured = Some(Vec::new());
    w.server_messages = Some(Vec::new());
    w.connect();
    for _ in 0..20 {
        tick(&mut w);
    }
    assert!(w.clients[0].1.is_connected());
    w
}

/// One tick of 5 ms; returns the messages the server received.
fn tick(w: &mut World) -> Vec<Vec<u8>> {
    w.tick::<false>(Duration::from_millis(5));
    std::mem::take(w.server_messages.as_mut().expect("kept"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_datagrams_never_panic_or_deliver(
        junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1200), 1..40),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..40),
    ) {
        let mut p = connected();
        let now = p.now;
        let client_addr = p.clients[0].0;
        p.clients[0].1.send(now, ChannelId(3), b"genuine").unwrap();
        tick(&mut p);
        let stranger: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        // Random bytes from the client's address and from a stranger.
        for j in &junk {
            let mut d = j.clone();
            p.server.handle_datagram(now, client_addr, &mut d);
            let mut d = j.clone();
            p.server.handle_datagram(now, stranger, &mut d);
        }
        // Genuine datagrams with an octet changed, from both addresses.
        let captured = p.captured.clone().unwrap_or_default();
        for (i, (at, x)) in flips.iter().enumerate() {
            let mut d = captured[i % captured.len()].clone();
            if d.is_empty() || *x == 0 {
                continue;
            }
            let n = d.len();
            d[at % n] ^= x;
            let mut e = d.clone();
            p.server.handle_datagram(now, client_addr, &mut d);
            p.server.handle_datagram(now, stranger, &mut e);
        }
        let mut delivered = Vec::new();
        for _ in 0..5 {
            delivered.extend(tick(&mut p));
        }
        prop_assert!(delivered.iter().all(|m| m == b"genuine"), "only genuine messages");
        prop_assert!(p.clients[0].1.is_connected());
        prop_assert_eq!(p.server.client_count(), 1);
        // The connection still carries messages.
        let now = p.now;
        p.clients[0].1.send(now, ChannelId(3), b"after").unwrap();
        let mut after = Vec::new();
        for _ in 0..20 {
            after.extend(tick(&mut p));
        }
        prop_assert_eq!(after, vec![b"after".to_vec()]);
    }
}
