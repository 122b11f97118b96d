//! The endpoint fed arbitrary datagrams: from a connected client's address, from strangers,
//! and mutations of genuine datagrams. Nothing panics, nothing forged is delivered, and the
//! genuine connection keeps working afterwards.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tickwire::{ChannelId, Client, ClientConfig, Event, Server, ServerConfig, ServerIdentity};

struct Pair {
    now: Instant,
    server: Server,
    client: Client,
    server_addr: SocketAddr,
    client_addr: SocketAddr,
    captured: Vec<Vec<u8>>,
}

impl Pair {
    fn new() -> Self {
        let now = Instant::now();
        let server = Server::new(ServerConfig::new(ServerIdentity::generate())).unwrap();
        let server_addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let client =
            Client::connect(ClientConfig::new(server.public_key()), server_addr, now).unwrap();
        let mut p = Self {
            now,
            server,
            client,
            server_addr,
            client_addr: "127.0.0.1:5000".parse().unwrap(),
            captured: Vec::new(),
        };
        for _ in 0..20 {
            p.tick();
        }
        assert!(p.client.is_connected());
        p
    }

    fn tick(&mut self) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 1500];
        let now = self.now;
        while let Some(t) = self.client.poll_transmit(now, &mut buf) {
            self.captured.push(buf[..t.len].to_vec());
            self.server
                .handle_datagram(now, self.client_addr, &mut buf[..t.len]);
        }
        while let Some(t) = self.server.poll_transmit(now, &mut buf) {
            if t.destination == self.client_addr {
                self.client
                    .handle_datagram(now, self.server_addr, &mut buf[..t.len]);
            }
        }
        let mut got = Vec::new();
        while let Some(e) = self.server.poll_event() {
            if let Event::Message { data, .. } = e {
                got.push(data);
            }
        }
        while self.client.poll_event().is_some() {}
        self.now += Duration::from_millis(5);
        self.server.handle_timeout(self.now);
        self.client.handle_timeout(self.now);
        got
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_datagrams_never_panic_or_deliver(
        junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1200), 1..40),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..40),
    ) {
        let mut p = Pair::new();
        let now = p.now;
        p.client.send(now, ChannelId(3), b"genuine").unwrap();
        p.tick();
        let stranger: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        // Random bytes from the client's address and from a stranger.
        for j in &junk {
            let mut d = j.clone();
            p.server.handle_datagram(now, p.client_addr, &mut d);
            let mut d = j.clone();
            p.server.handle_datagram(now, stranger, &mut d);
        }
        // Genuine datagrams with an octet changed, from both addresses.
        let captured = p.captured.clone();
        for (i, (at, x)) in flips.iter().enumerate() {
            let mut d = captured[i % captured.len()].clone();
            if d.is_empty() || *x == 0 {
                continue;
            }
            let n = d.len();
            d[at % n] ^= x;
            let mut e = d.clone();
            p.server.handle_datagram(now, p.client_addr, &mut d);
            p.server.handle_datagram(now, stranger, &mut e);
        }
        let mut delivered = Vec::new();
        for _ in 0..5 {
            delivered.extend(p.tick());
        }
        prop_assert!(delivered.iter().all(|m| m == b"genuine"), "only genuine messages");
        prop_assert!(p.client.is_connected());
        prop_assert_eq!(p.server.client_count(), 1);
        // The connection still carries messages.
        let now = p.now;
        p.client.send(now, ChannelId(3), b"after").unwrap();
        let mut after = Vec::new();
        for _ in 0..20 {
            after.extend(p.tick());
        }
        prop_assert_eq!(after, vec![b"after".to_vec()]);
    }
}
