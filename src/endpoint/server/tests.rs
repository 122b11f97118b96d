//! The server's wake-up cost by count, not time: with 10 or 10,000 connections,
//! `poll_timeout` visits no connection and `handle_timeout` only those that are due.

use super::*;
use crate::connection::TIMER_VISITS;
use crate::crypto::ServerIdentity;
use crate::pipeline::PacketKey;

/// A server holding `n` established connections (no handshakes: they are inserted directly),
/// created 37 µs apart so that their deadlines differ.
fn server_with(n: usize, t0: Instant) -> Server {
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.max_clients = n;
    config.max_clients_per_ip = n;
    let mut server = Server::new(config).unwrap();
    for i in 0..n {
        let id = ClientId(i as u64 + 1);
        let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 4000));
        let key = |b: u8| PacketKey::new(&[b; 16], &[b; 12]);
        let conn = Connection::new(
            t0 + Duration::from_micros(37 * i as u64),
            id,
            addr,
            Role::Server,
            Arc::clone(&server.conn_config),
            key(1),
            key(2),
            None,
            Some(Duration::from_millis(20)),
        );
        server.timers.schedule(id, conn.poll_timeout());
        server.charged += conn.budget_used();
        server.connections.insert(id, Box::new(conn));
        server.by_addr.insert(addr, id);
    }
    server
}

fn visits() -> u64 {
    TIMER_VISITS.with(|v| v.get())
}

/// Over `wakeups` wake-ups (each: `poll_timeout`, `handle_timeout` at that time, drain
/// `poll_transmit`), the connection visits and heap entries looked at, and the connections
/// run (`timers_run`).
fn wake_up_cost(n: usize, wakeups: u64) -> (u64, u64, u64) {
    let t0 = Instant::now();
    let mut server = server_with(n, t0);
    let mut buf = vec![0u8; 1500];
    let (v0, h0, r0) = (visits(), server.timers.visited(), server.stats.timers_run);
    // Polling visits nothing, however often it is asked.
    for _ in 0..1000 {
        assert!(server.poll_timeout().is_some());
    }
    assert_eq!(visits(), v0, "poll_timeout visited connections");
    assert_eq!(server.timers.visited(), h0);
    // A wake-up before the first deadline runs nothing.
    let first = server.poll_timeout().unwrap();
    server.handle_timeout(first - Duration::from_nanos(1));
    assert_eq!(
        visits(),
        v0,
        "a wake-up with nothing due visited connections"
    );
    for _ in 0..wakeups {
        let t = server.poll_timeout().unwrap();
        server.handle_timeout(t);
        while server.poll_transmit(t, &mut buf).is_some() {}
    }
    (
        visits() - v0,
        server.timers.visited() - h0,
        server.stats.timers_run - r0,
    )
}

#[test]
fn a_wake_up_visits_the_same_few_connections_with_10_or_10000() {
    const WAKEUPS: u64 = 200;
    let small = wake_up_cost(10, WAKEUPS);
    let large = wake_up_cost(10_000, WAKEUPS);
    for (n, (visited, heap, run)) in [(10, small), (10_000, large)] {
        // Each wake-up runs the connection that is due and reads its next deadline: a handful
        // of visits, whatever the number of connections.
        assert!(run <= 2 * WAKEUPS, "{n} connections: {run} run");
        assert!(
            visited <= 4 * WAKEUPS,
            "{n} connections: {visited} connection visits in {WAKEUPS} wake-ups"
        );
        assert!(
            heap <= 8 * WAKEUPS,
            "{n} connections: {heap} heap entries looked at in {WAKEUPS} wake-ups"
        );
    }
    // Not a scan: 1,000 times the connections cost no more than twice the visits.
    assert!(large.0 <= 2 * small.0 + 16, "{small:?} against {large:?}");
}

/// Two shards' servers in simulated time, sharing their admission state, and a client that
/// connects through shard A, then moves (a NAT rebinding) to an address whose datagrams shard
/// B receives, as the kernel's hash may send them: B keeps them for the other shards, A takes
/// them as a migration (the shard loop's relay, done by hand here), and every reliable message
/// reaches A once and in order, and every echo the client once and in order.
#[test]
fn a_client_moved_to_another_shard_is_relayed_and_loses_nothing() {
    use crate::config::ClientConfig;
    use crate::endpoint::Client;
    const COUNT: u32 = 600;
    let shared = Arc::new(SharedAdmission::default());
    let config = ServerConfig::new(ServerIdentity::generate());
    let mut a = Server::new_shard(config.clone(), Arc::clone(&shared), 0).unwrap();
    let mut b = Server::new_shard(config, shared, 1).unwrap();
    let server_addr: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let (old, new): (SocketAddr, SocketAddr) = (
        "198.51.100.7:5000".parse().unwrap(),
        "198.51.100.7:6123".parse().unwrap(),
    );
    let mut t = Instant::now();
    let mut client = Client::connect(ClientConfig::new(a.public_key()), server_addr, t).unwrap();
    let mut at = old;
    // B's forwarding map, as the shard loop keeps it: set when A claims the address.
    let mut forwarded = false;
    let (mut sent, mut got, mut echoed, mut connected) = (0u32, 0u32, 0u32, false);
    let mut buf = vec![0u8; 1500];
    let mut relayed = 0;
    for _ in 0..200_000 {
        if echoed == COUNT {
            break;
        }
        t += Duration::from_micros(200);
        if connected {
            if sent >= COUNT / 3 {
                at = new; // the NAT rebinds: the next datagrams come from another port
            }
            while sent < COUNT && sent - echoed < 64 {
                if client.send(t, ChannelId(3), &sent.to_be_bytes()).is_err() {
                    break;
                }
                sent += 1;
            }
        }
        // Client to server: the old address hashes to A, the new one to B.
        while let Some(tx) = client.poll_transmit(t, &mut buf) {
            assert_eq!(tx.destination, server_addr);
            let d = &mut buf[..tx.len];
            if at == old {
                a.handle_datagram(t, at, d);
            } else if forwarded {
                assert!(a.handle_relayed(t, at, d), "A owns the new address");
                relayed += 1;
            } else {
                b.handle_datagram(t, at, d);
                let mut out = Vec::new();
                b.take_unclaimed(&mut out);
                for (target, from, mut data) in out {
                    assert_eq!(target, None, "offered to every other shard");
                    if a.handle_relayed(t, from, &mut data) {
                        forwarded = true; // A's claim
                    }
                    relayed += 1;
                }
            }
        }
        for server in [&mut a, &mut b] {
            if server.poll_timeout().is_some_and(|d| d <= t) {
                server.handle_timeout(t);
            }
        }
        // A echoes; both sockets send from the server's one address.
        while let Some(ev) = a.poll_event() {
            match ev {
                Event::Message {
                    client: id, data, ..
                } => {
                    let seq = u32::from_be_bytes(data[..4].try_into().unwrap());
                    assert_eq!(seq, got, "A got a message out of order or twice");
                    got += 1;
                    a.send(t, id, ChannelId(3), &data).unwrap();
                }
                Event::Disconnected { reason, .. } => panic!("A lost the client: {reason}"),
                _ => {}
            }
        }
        assert!(b.poll_event().is_none(), "B has no client");
        for server in [&mut a, &mut b] {
            while let Some(tx) = server.poll_transmit(t, &mut buf) {
                // The client only hears what is sent to where it is now.
                if tx.destination == at {
                    client.handle_datagram(t, server_addr, &mut buf[..tx.len]);
                }
            }
        }
        if client.poll_timeout().is_some_and(|d| d <= t) {
            client.handle_timeout(t);
        }
        while let Some(ev) = client.poll_event() {
            match ev {
                Event::Connected { .. } => connected = true,
                Event::Message { data, .. } => {
                    let seq = u32::from_be_bytes(data[..4].try_into().unwrap());
                    assert_eq!(seq, echoed, "echo out of order or twice");
                    echoed += 1;
                }
                Event::Disconnected { reason, .. } => panic!("client lost: {reason}"),
                _ => {}
            }
        }
    }
    assert_eq!((got, echoed), (COUNT, COUNT));
    // Two thirds of the messages went through B after the move (few datagrams: they coalesce).
    assert!(forwarded && relayed >= 2, "relayed {relayed}");
    assert_eq!(a.stats().migrations, 1);
    assert_eq!(a.client_count(), 1);
    assert_eq!(b.client_count(), 0);
    assert_eq!(a.clients()[0].addr, new);
}

/// Under `RetryPolicy::Always`, a flood of AUTHs from spoofed addresses (no cookie) gets
/// stateless retries and takes none of the locks the shards share; an AUTH with its valid
/// cookie then takes them (the per-IP count) and opens a handshake.
#[test]
fn a_spoofed_auth_flood_takes_no_shared_lock() {
    use crate::crypto::EphemeralKey;
    use crate::endpoint::handshake::{client_auth, client_auth_with_cookie};
    use crate::wire::{Body, Packet};
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.retry = crate::RetryPolicy::Always;
    let mut server = Server::new(config).unwrap();
    let now = Instant::now();
    let locks = || ADMISSION_LOCKS.with(|c| c.get());
    let key = EphemeralKey::generate();
    let auth = client_auth(key.public_bytes(), &[], None);
    let before = locks();
    let mut buf = vec![0u8; 1500];
    for i in 0..1000u32 {
        let from = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 5000));
        server.handle_datagram(now, from, &mut auth.clone());
        while server.poll_transmit(now, &mut buf).is_some() {}
    }
    assert_eq!(locks(), before, "a spoofed AUTH took a shared lock");
    assert_eq!(server.stats().retries_sent, 1000);
    assert_eq!(server.pending.len(), 0);
    // The client that owns its address answers the retry with the cookie.
    let from = SocketAddr::from(([10, 2, 0, 1], 5000));
    server.handle_datagram(now, from, &mut auth.clone());
    let t = server.poll_transmit(now, &mut buf).expect("a retry");
    let retry = buf[..t.len].to_vec();
    let packet = Packet::parse(&retry).unwrap();
    let Body::Auth(f) = packet.body else {
        panic!("not a retry: {packet:?}")
    };
    let cookie: [u8; crate::endpoint::handshake::COOKIE_LEN] =
        f.certificate.unwrap().try_into().unwrap();
    let with_cookie = client_auth_with_cookie(key.public_bytes(), &[], None, Some(&cookie));
    let before = locks();
    server.handle_datagram(now, from, &mut with_cookie.clone());
    assert!(locks() > before, "the per-IP count was not taken");
    assert_eq!(server.pending.len(), 1);
}
