//! Server operations on the sans-IO core: kicks, bans, the allow-list, connect tokens,
//! address changes and resumption.

mod common;

use common::*;
use std::time::Duration;
use tickwire::token::TokenSigner;
use tickwire::wire::ErrorCode;
use tickwire::{
    ChannelId, Client, ClientConfig, ClientId, DisconnectReason, Event, IpPrefix, ServerConfig,
    ServerIdentity, TokenPolicy,
};

fn reason_of(events: &[Event]) -> Option<DisconnectReason> {
    events.iter().find_map(|e| match e {
        Event::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

fn connected_sim(n: usize) -> Sim {
    let (mut sim, _) = Sim::with_defaults();
    let cfg = sim.client_config();
    for _ in 0..n {
        sim.add_client(cfg.clone());
    }
    sim.connect_all();
    sim
}

#[test]
fn kicked_client_sees_the_reason() {
    let mut sim = connected_sim(2);
    let now = sim.now;
    assert!(sim.server.kick(now, ClientId(1), "cheating"));
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        reason_of(&sim.client_events[0]),
        Some(DisconnectReason::Peer {
            code: ErrorCode::Disconnect,
            message: "cheating".into()
        })
    );
    assert!(sim.clients[0].1.is_closed());
    assert!(sim.clients[1].1.is_connected());
    let listed: Vec<ClientId> = sim.server.clients().iter().map(|c| c.id).collect();
    assert_eq!(listed, vec![ClientId(2)]);
}

#[test]
fn list_shows_address_since_and_traffic() {
    let mut sim = connected_sim(3);
    let now = sim.now;
    sim.clients[1]
        .1
        .send(now, ChannelId(3), b"traffic")
        .unwrap();
    sim.run_for(Duration::from_secs(1));
    let list = sim.server.clients();
    assert_eq!(list.len(), 3);
    assert_eq!(list[1].addr, sim.clients[1].0);
    assert!(list[1].connected_at <= sim.now);
    assert!(list[1].stats.messages_received == 1 && list[1].stats.bytes_received > 0);
    assert!(list[1].stats.rtt > Duration::ZERO);
}

#[test]
fn banned_address_is_kicked_refused_then_accepted_after_expiry() {
    let mut sim = connected_sim(1);
    let now = sim.now;
    let prefix: IpPrefix = "127.0.0.0/8".parse().unwrap();
    let kicked = sim.server.ban(now, prefix, Some(Duration::from_secs(60)));
    assert_eq!(kicked, vec![ClientId(1)]);
    sim.run_for(Duration::from_secs(2));
    assert!(matches!(
        reason_of(&sim.client_events[0]),
        Some(DisconnectReason::Peer {
            code: ErrorCode::Disconnect,
            ..
        })
    ));
    // A new handshake from the banned prefix is refused without state.
    let cfg = sim.client_config();
    sim.add_client(cfg.clone());
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        reason_of(&sim.client_events[1]),
        Some(DisconnectReason::HandshakeFailed(
            ErrorCode::CertificateInvalid
        ))
    );
    assert_eq!(sim.server.pending_count(), 0);
    assert_eq!(sim.server.stats().refused_banned, 1);
    assert_eq!(sim.server.bans(sim.now).len(), 1);
    // After the ban expires, the same address connects.
    sim.run_for(Duration::from_secs(60));
    assert!(sim.server.bans(sim.now).is_empty());
    let i = sim.add_client(cfg);
    sim.run_until(Duration::from_secs(5), |s| s.clients[i].1.is_connected());
    assert!(sim.clients[i].1.is_connected());
}

#[test]
fn unban_lifts_a_ban() {
    let mut sim = connected_sim(0);
    let now = sim.now;
    let prefix: IpPrefix = "127.0.0.1".parse().unwrap();
    sim.server.ban(now, prefix, None);
    assert!(sim.server.unban(prefix));
    let cfg = sim.client_config();
    sim.add_client(cfg);
    sim.connect_all();
}

#[test]
fn allow_list_refuses_a_stranger() {
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.allow_list = Some(vec!["10.0.0.0/8".parse().unwrap()]);
    let mut sim = Sim::new(config);
    let cfg = sim.client_config();
    sim.add_client(cfg.clone());
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        reason_of(&sim.client_events[0]),
        Some(DisconnectReason::HandshakeFailed(
            ErrorCode::CertificateInvalid
        ))
    );
    assert_eq!(sim.server.stats().refused_not_allowed, 1);
    assert_eq!(sim.server.pending_count(), 0);
    // Once allowed, it connects.
    sim.server.allow("127.0.0.0/8".parse().unwrap());
    sim.add_client(cfg);
    sim.run_until(Duration::from_secs(5), |s| s.clients[1].1.is_connected());
    assert!(sim.clients[1].1.is_connected());
}

const UNIX_NOW: u64 = 1_800_000_000;

fn token_sim(required: bool) -> (Sim, TokenSigner) {
    let backend = TokenSigner::generate();
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.tokens = Some(TokenPolicy {
        authority: backend.public_key(),
        required,
    });
    let mut sim = Sim::new(config);
    let now = sim.now;
    sim.server.set_wall_clock(now, UNIX_NOW);
    let addr = sim.server_addr;
    sim.server.add_public_addr(addr);
    (sim, backend)
}

fn add_token_client(sim: &mut Sim, token: &[u8]) -> usize {
    let port = 5000 + sim.clients.len() as u16;
    let client = Client::connect_with_token(
        ClientConfig::new(sim.server.public_key()),
        sim.server_addr,
        sim.now,
        token,
    )
    .unwrap();
    sim.clients.push((addr(port), client));
    sim.client_events.push(Vec::new());
    sim.clients.len() - 1
}

#[test]
fn valid_token_gives_its_client_id() {
    let (mut sim, backend) = token_sim(true);
    let token = backend.issue(777, UNIX_NOW + 60, &[sim.server_addr]);
    let i = add_token_client(&mut sim, &token);
    sim.connect_all();
    assert_eq!(sim.clients[i].1.id(), Some(ClientId(777)));
    assert!(sim.server.is_connected(ClientId(777)));
}

#[test]
fn missing_expired_forged_foreign_and_reused_tokens_are_refused() {
    let (mut sim, backend) = token_sim(true);
    let server = sim.server_addr;
    let forger = TokenSigner::generate();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("missing", Vec::new()),
        ("expired", backend.issue(1, UNIX_NOW - 1, &[server])),
        ("forged", forger.issue(2, UNIX_NOW + 60, &[server])),
        ("foreign", backend.issue(3, UNIX_NOW + 60, &[addr(9999)])),
    ];
    for (name, token) in &cases {
        let i = add_token_client(&mut sim, token);
        sim.run_for(Duration::from_secs(1));
        assert_eq!(
            reason_of(&sim.client_events[i]),
            Some(DisconnectReason::HandshakeFailed(
                ErrorCode::CertificateInvalid
            )),
            "{name}"
        );
    }
    assert_eq!(sim.server.stats().refused_token, 4);
    // A good token works once, from one address; from a second address it is refused.
    let token = backend.issue(50, UNIX_NOW + 60, &[server]);
    let first = add_token_client(&mut sim, &token);
    sim.run_until(Duration::from_secs(5), |s| {
        s.clients[first].1.is_connected()
    });
    assert!(sim.clients[first].1.is_connected());
    let thief = add_token_client(&mut sim, &token);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        reason_of(&sim.client_events[thief]),
        Some(DisconnectReason::HandshakeFailed(
            ErrorCode::CertificateInvalid
        ))
    );
    assert!(
        sim.clients[first].1.is_connected(),
        "the thief did not displace the owner"
    );
    assert_eq!(sim.server.pending_count(), 0);
}

#[test]
fn optional_tokens_let_tokenless_clients_in() {
    let (mut sim, _) = token_sim(false);
    let cfg = sim.client_config();
    sim.add_client(cfg);
    sim.connect_all();
}

/// Adds a client on port `port` that resumes the session `resumption` came from.
fn add_resumed_client(sim: &mut Sim, port: u16, resumption: &tickwire::Resumption) -> usize {
    let client = Client::resume(
        ClientConfig::new(sim.server.public_key()),
        sim.server_addr,
        sim.now,
        &[],
        resumption,
    )
    .unwrap();
    sim.clients.push((addr(port), client));
    sim.client_events.push(Vec::new());
    sim.clients.len() - 1
}

/// Changes client `i`'s address (a NAT rebinding): its datagrams now come from `new`.
fn rebind(sim: &mut Sim, i: usize, port: u16) {
    sim.clients[i].0 = addr(port);
}

#[test]
fn client_changing_port_mid_stream_keeps_its_connection_and_messages() {
    let mut sim = connected_sim(2);
    sim.filter = lossy(11, 0.05, 0.0, 0.0, 0);
    let mut sent = 0u32;
    let mut got = Vec::new();
    for tick in 0..400 {
        if tick == 150 {
            rebind(&mut sim, 0, 7777);
        }
        let now = sim.now;
        if sim.clients[0]
            .1
            .send(now, ChannelId(3), &sent.to_be_bytes())
            .is_ok()
        {
            sent += 1;
        }
        let end = sim.now + Duration::from_millis(16);
        sim.run_until(Duration::from_secs(1), |s| s.now >= end);
        for (client, _, data) in sim.server_messages() {
            assert_eq!(client, 1);
            got.push(u32::from_be_bytes(data[..4].try_into().unwrap()));
        }
    }
    sim.filter = Box::new(|_, _, _| Fate::Deliver);
    sim.run_for(Duration::from_secs(3));
    for (_, _, data) in sim.server_messages() {
        got.push(u32::from_be_bytes(data[..4].try_into().unwrap()));
    }
    assert_eq!(
        got,
        (0..sent).collect::<Vec<_>>(),
        "every reliable message, in order"
    );
    assert!(sim.clients[0].1.is_connected());
    let changed = sim.server_events.iter().find_map(|e| match e {
        Event::AddressChanged { client, old, new } => Some((*client, *old, *new)),
        _ => None,
    });
    assert_eq!(changed, Some((ClientId(1), addr(5000), addr(7777))));
    assert_eq!(sim.server.clients()[0].addr, addr(7777));
    // The server answers on the new address.
    let now = sim.now;
    sim.server
        .send(now, ClientId(1), ChannelId(3), b"still here")
        .unwrap();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.client_messages(0), vec![(3, b"still here".to_vec())]);
}

#[test]
fn spoofed_address_change_is_ignored() {
    let mut sim = connected_sim(1);
    // Capture a genuine datagram and deliver a copy from a spoofed address first.
    let now = sim.now;
    sim.clients[0]
        .1
        .send(now, ChannelId(3), b"genuine")
        .unwrap();
    let mut buf = [0u8; 1500];
    let t = sim.clients[0].1.poll_transmit(now, &mut buf).unwrap();
    let spoofed = addr(6666);
    let mut copy = buf[..t.len].to_vec();
    sim.server.handle_datagram(now, spoofed, &mut copy);
    // The server challenges the spoofed address; nobody there can answer.
    let mut challenge_to = Vec::new();
    while let Some(t) = sim.server.poll_transmit(now, &mut buf) {
        challenge_to.push(t.destination);
    }
    assert!(
        challenge_to.contains(&spoofed),
        "a challenge went to the new address"
    );
    let mut genuine = buf[..0].to_vec();
    genuine.extend_from_slice(&copy);
    sim.run_for(Duration::from_secs(2));
    // The connection still lives at the real address and nothing moved.
    assert_eq!(sim.server.clients()[0].addr, sim.clients[0].0);
    assert!(!sim
        .server_events
        .iter()
        .any(|e| matches!(e, Event::AddressChanged { .. })));
    assert!(sim.clients[0].1.is_connected());
    // The message (it was authentic) arrived exactly once.
    assert_eq!(sim.server_messages().len(), 1);
    // Replaying it from yet another address changes nothing either.
    let mut again = copy.clone();
    let now = sim.now;
    sim.server.handle_datagram(now, addr(6667), &mut again);
    sim.run_for(Duration::from_secs(1));
    assert!(sim.server_messages().is_empty());
    assert_eq!(sim.server.clients()[0].addr, sim.clients[0].0);
}

#[test]
fn reconnecting_client_resumes_its_id() {
    let mut sim = connected_sim(2);
    let resumption = sim.clients[0].1.resumption().unwrap();
    assert_eq!(resumption.client, ClientId(1));
    // The client loses its network for good (its connection times out on both sides).
    let dead = sim.clients[0].0;
    sim.muted.push(dead);
    sim.run_for(Duration::from_secs(11));
    assert!(!sim.server.is_connected(ClientId(1)));
    // It comes back from a new address with its resumption ticket.
    add_resumed_client(&mut sim, 8888, &resumption);
    sim.run_until(Duration::from_secs(5), |s| s.clients[2].1.is_connected());
    assert_eq!(sim.clients[2].1.id(), Some(ClientId(1)));
    assert!(sim.server.is_connected(ClientId(1)));
    assert_eq!(sim.server.stats().resumed, 1);
    assert_ne!(dead, addr(8888));
}

#[test]
fn resumption_expires_after_its_window() {
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.resume_window = Duration::from_secs(5);
    let mut sim = Sim::new(config);
    let cfg = sim.client_config();
    sim.add_client(cfg);
    sim.connect_all();
    let resumption = sim.clients[0].1.resumption().unwrap();
    let dead = sim.clients[0].0;
    sim.muted.push(dead);
    sim.run_for(Duration::from_secs(20));
    add_resumed_client(&mut sim, 8890, &resumption);
    sim.run_until(Duration::from_secs(5), |s| s.clients[1].1.is_connected());
    assert_ne!(
        sim.clients[1].1.id(),
        Some(ClientId(1)),
        "a new id after the window"
    );
    assert_eq!(sim.server.stats().resumed, 0);
}

#[test]
fn resuming_while_the_old_connection_lives_replaces_it() {
    let mut sim = connected_sim(1);
    let resumption = sim.clients[0].1.resumption().unwrap();
    add_resumed_client(&mut sim, 8889, &resumption);
    sim.run_until(Duration::from_secs(5), |s| s.clients[1].1.is_connected());
    assert_eq!(sim.clients[1].1.id(), Some(ClientId(1)));
    assert!(sim.server_events.iter().any(|e| matches!(
        e,
        Event::Disconnected {
            client: ClientId(1),
            reason: DisconnectReason::Replaced,
            ..
        }
    )));
    assert_eq!(sim.server.client_count(), 1);
}

#[test]
fn oversized_message_from_peer_is_a_protocol_error() {
    // The client may send 64 KiB; the server accepts at most 1 KiB.
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.connection.max_message_size = 1024;
    config.connection.send_queue_bytes = 4 << 20;
    let mut sim = Sim::new(config);
    let cfg = sim.client_config();
    sim.add_client(cfg);
    sim.connect_all();
    let now = sim.now;
    sim.clients[0]
        .1
        .send(now, ChannelId(3), &[7u8; 2000])
        .unwrap();
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        reason_of(&sim.server_events),
        Some(DisconnectReason::ProtocolViolation(ErrorCode::Packet))
    );
    assert!(sim.server_messages().is_empty());
    assert_eq!(sim.server.stats().protocol_violations, 1);
}

#[test]
fn an_id_replaced_by_a_restart_on_the_same_address_stops_being_resumable() {
    // Regression: the id of a connection replaced by a client restarting on the same address
    // stayed resumable forever.
    let mut sim = connected_sim(1);
    let old = sim.clients[0].1.resumption().unwrap();
    let cfg = sim.client_config();
    let restarted = Client::connect(cfg, sim.server_addr, sim.now).unwrap();
    sim.clients[0].1 = restarted;
    assert!(sim.run_until(Duration::from_secs(3), |s| s.clients[0].1.is_connected()));
    assert_ne!(sim.clients[0].1.id(), Some(old.client));
    // Past the resumption window, the old id's ticket no longer works.
    let window = ServerConfig::new(ServerIdentity::generate()).resume_window;
    sim.run_for(window + Duration::from_secs(1));
    let i = add_resumed_client(&mut sim, 5100, &old);
    assert!(sim.run_until(Duration::from_secs(3), |s| s.clients[i].1.is_connected()));
    assert_ne!(sim.clients[i].1.id(), Some(old.client));
}

#[test]
fn a_wake_up_visits_only_the_connections_that_are_due() {
    // 100 idle clients whose timers fall at different times: each wake-up of the server runs
    // the timers of about one connection, not a scan of all of them.
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.max_clients = 128;
    config.max_clients_per_ip = 128;
    let mut sim = Sim::new(config);
    for _ in 0..100 {
        let cfg = sim.client_config();
        sim.add_client(cfg);
        sim.run_for(Duration::from_millis(7));
    }
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.server.client_count(), 100);
    let before = sim.server.stats();
    sim.run_for(Duration::from_secs(5));
    let after = sim.server.stats();
    let wakeups = after.wakeups - before.wakeups;
    let visited = after.timers_run - before.timers_run;
    assert!(wakeups > 100, "{wakeups} wake-ups");
    assert!(
        visited <= 2 * wakeups,
        "{visited} connections visited in {wakeups} wake-ups"
    );
}

#[test]
fn handle_timeout_returns_while_work_waits_for_poll_transmit() {
    // Regression: a connection whose deadline is "now" (work waiting for poll_transmit) was
    // run again and again inside one handle_timeout.
    let mut sim = connected_sim(2);
    let now = sim.now;
    for id in sim.server.clients().iter().map(|c| c.id) {
        sim.server.send(now, id, ChannelId(3), b"pending").unwrap();
    }
    let before = sim.server.stats().timers_run;
    sim.server.handle_timeout(now + Duration::from_secs(1));
    assert!(sim.server.stats().timers_run - before <= 2);
}

#[test]
fn broadcast_except_and_send_to_many_reach_whom_they_name() {
    let mut sim = connected_sim(3);
    let ids: Vec<ClientId> = sim.server.clients().iter().map(|c| c.id).collect();
    let now = sim.now;
    assert_eq!(
        sim.server
            .broadcast_except(now, ids[0], ChannelId(3), b"not you"),
        2
    );
    assert_eq!(
        sim.server
            .send_to_many(now, &[ids[0], ids[2], ClientId(999)], ChannelId(3), b"team"),
        2
    );
    sim.run_for(Duration::from_secs(1));
    let by_client: Vec<Vec<Vec<u8>>> = (0..3)
        .map(|i| sim.client_messages(i).into_iter().map(|(_, d)| d).collect())
        .collect();
    let of = |id: ClientId| {
        let i = (0..3).find(|&i| sim.clients[i].1.id() == Some(id)).unwrap();
        by_client[i].clone()
    };
    assert_eq!(of(ids[0]), vec![b"team".to_vec()]);
    assert_eq!(of(ids[1]), vec![b"not you".to_vec()]);
    assert_eq!(of(ids[2]), vec![b"not you".to_vec(), b"team".to_vec()]);
}
