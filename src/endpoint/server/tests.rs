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
        server.connections.insert(id, conn);
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
