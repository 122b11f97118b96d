//! Scripted tests of the sans-IO core in virtual time: the handshake and its failures, every
//! delivery mode under loss, reordering and duplication, timeouts, closing, replays and
//! tampering.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tickwire::endpoint::handshake;
use tickwire::wire::{ErrorCode, Packet};
use tickwire::{
    ChannelId, ClientConfig, DisconnectReason, Event, SendError, ServerConfig, ServerIdentity,
};

fn sim_with_client() -> Sim {
    let (mut sim, _) = Sim::with_defaults();
    let cfg = sim.client_config();
    sim.add_client(cfg);
    sim
}

fn has_message(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::Message { .. }))
}

fn client_disconnect_reason(sim: &Sim, i: usize) -> Option<DisconnectReason> {
    sim.client_events[i].iter().find_map(|e| match e {
        Event::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

fn server_disconnect_reason(sim: &Sim) -> Option<DisconnectReason> {
    sim.server_events.iter().find_map(|e| match e {
        Event::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

#[test]
fn handshake_and_echo() {
    let mut sim = sim_with_client();
    sim.connect_all();
    assert_eq!(sim.clients[0].1.id(), Some(tickwire::ClientId(1)));
    assert_eq!(sim.clients[0].1.server_key(), Some(sim.server.public_key()));
    let now = sim.now;
    sim.clients[0].1.send(now, ChannelId(3), b"hello").unwrap();
    assert!(sim.run_until(Duration::from_secs(1), |s| has_message(&s.server_events)));
    assert_eq!(sim.server_messages(), vec![(1, 3, b"hello".to_vec())]);
    sim.server
        .send(sim.now, tickwire::ClientId(1), ChannelId(2), b"back")
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(1), |s| has_message(&s.client_events[0])));
    assert_eq!(sim.client_messages(0), vec![(2, b"back".to_vec())]);
}

/// Drops the datagram with index `which` in direction `dir`.
fn drop_nth(dir: Dir, which: usize) -> Filter {
    Box::new(move |d, n, _| {
        if d == dir && n == which {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    })
}

#[test]
fn lost_client_auth_is_resent() {
    let mut sim = sim_with_client();
    sim.filter = drop_nth(Dir::ToServer, 0);
    sim.connect_all();
    assert!(sim.counts[0] >= 3, "AUTH resent");
}

#[test]
fn lost_server_auth_is_answered_again() {
    let mut sim = sim_with_client();
    sim.filter = drop_nth(Dir::ToClient, 0);
    sim.connect_all();
    assert_eq!(sim.server.pending_count(), 0);
}

#[test]
fn lost_client_finished_is_resent() {
    let mut sim = sim_with_client();
    sim.filter = drop_nth(Dir::ToServer, 1);
    sim.connect_all();
}

#[test]
fn lost_server_finished_is_resent() {
    let mut sim = sim_with_client();
    // 0: server AUTH, 1: server finished.
    sim.filter = drop_nth(Dir::ToClient, 1);
    sim.connect_all();
    assert_eq!(sim.server.stats().connections_accepted, 1);
}

#[test]
fn wrong_server_key_is_refused_with_1_2() {
    let (mut sim, _) = Sim::with_defaults();
    let impostor_pin = ServerIdentity::generate().public_key();
    sim.add_client(ClientConfig::new(impostor_pin));
    sim.run_for(Duration::from_secs(1));
    assert!(sim.clients[0].1.is_closed());
    assert_eq!(
        client_disconnect_reason(&sim, 0),
        Some(DisconnectReason::HandshakeFailed(
            ErrorCode::CertificateInvalid
        ))
    );
    assert_eq!(sim.server.client_count(), 0);
}

#[test]
fn insecure_client_accepts_any_key_only_when_asked() {
    let (mut sim, _) = Sim::with_defaults();
    sim.add_client(ClientConfig::insecure_accept_any_server_key());
    sim.connect_all();
    assert_eq!(sim.clients[0].1.server_key(), Some(sim.server.public_key()));
}

#[test]
fn full_server_answers_1_1_and_keeps_no_state() {
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.max_clients = 1;
    let mut sim = Sim::new(config);
    let cfg = sim.client_config();
    sim.add_client(cfg.clone());
    sim.connect_all();
    sim.add_client(cfg);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        client_disconnect_reason(&sim, 1),
        Some(DisconnectReason::HandshakeFailed(ErrorCode::NoSpace))
    );
    assert_eq!(sim.server.pending_count(), 0);
    assert_eq!(sim.server.stats().refused_full, 1);
    assert!(sim.clients[0].1.is_connected());
}

#[test]
fn handshake_times_out_without_a_server() {
    let mut sim = sim_with_client();
    sim.filter = Box::new(|_, _, _| Fate::Drop);
    sim.run_for(Duration::from_secs(11));
    // The reason names the address and the time, in plain words.
    let reason = client_disconnect_reason(&sim, 0).unwrap();
    assert_eq!(
        reason,
        DisconnectReason::NoAnswer {
            server: sim.server_addr,
            after: Duration::from_secs(10)
        }
    );
    assert!(reason
        .to_string()
        .starts_with("no answer from 127.0.0.1:4000 within 10.0 s"));
}

#[test]
fn short_client_auth_gets_no_answer() {
    // Anti-amplification: an AUTH below the minimum size is never answered.
    let (mut sim, _) = Sim::with_defaults();
    let key = tickwire::crypto::EphemeralKey::generate();
    let mut auth = handshake::auth_datagram(key.public_bytes(), &[0, 0]);
    assert!(auth.len() < handshake::MIN_CLIENT_AUTH);
    let now = sim.now;
    sim.server.handle_datagram(now, addr(6000), &mut auth);
    let mut buf = [0u8; 1500];
    assert!(sim.server.poll_transmit(now, &mut buf).is_none());
    assert_eq!(sim.server.pending_count(), 0);
    // A full-size one is answered with no more octets than it carried.
    let mut auth = handshake::client_auth(key.public_bytes(), &[], None);
    sim.server.handle_datagram(now, addr(6000), &mut auth);
    let t = sim.server.poll_transmit(now, &mut buf).unwrap();
    assert!(t.len <= auth.len());
    assert!(sim.server.poll_transmit(now, &mut buf).is_none());
}

#[test]
fn bad_finished_is_refused_with_1_3() {
    use tickwire::crypto::{derive_session_keys, transcript_hash, EphemeralKey};
    let (mut sim, _) = Sim::with_defaults();
    let from: SocketAddr = addr(6001);
    let now = sim.now;
    let eph = EphemeralKey::generate();
    let mut auth = handshake::client_auth(eph.public_bytes(), &[], None);
    let client_auth = auth.clone();
    sim.server.handle_datagram(now, from, &mut auth);
    let mut buf = [0u8; 1500];
    let t = sim.server.poll_transmit(now, &mut buf).unwrap();
    let server_auth = buf[..t.len].to_vec();
    let Ok(Packet {
        body: tickwire::wire::Body::Auth(fields),
        ..
    }) = Packet::parse(&server_auth)
    else {
        panic!("server answered with AUTH")
    };
    let shared = eph.shared_secret(fields.public_key).unwrap();
    let keys = derive_session_keys(&shared, &transcript_hash(&client_auth, &server_auth));
    // Sealed under the right key, so it opens, but the MAC is wrong.
    let mut finished = handshake::finished_datagram(&keys.client_to_server, &[0u8; 32]);
    sim.server.handle_datagram(now, from, &mut finished);
    let t = sim.server.poll_transmit(now, &mut buf).unwrap();
    let reply = Packet::parse(&buf[..t.len]).unwrap();
    assert_eq!(
        reply.body,
        tickwire::wire::Body::Data {
            fields: tickwire::wire::TypeFields::Error(ErrorCode::FinishInvalid),
            data: b"finished invalid"
        }
    );
    assert_eq!(sim.server.stats().bad_finished, 1);
    assert_eq!(sim.server.pending_count(), 0);
    assert_eq!(sim.server.client_count(), 0);
}

/// Sends `count` messages from the client on `channel` under the given impairments and
/// returns what the server received on it, in order of delivery.
fn deliver_under(
    channel: u8,
    count: usize,
    seed: u64,
    loss: f64,
    dup: f64,
    reorder: f64,
) -> (Vec<u32>, Sim) {
    let mut sim = sim_with_client();
    sim.connect_all();
    sim.filter = lossy(seed, loss, dup, reorder, 0);
    let mut sent = 0usize;
    let mut got = Vec::new();
    let mut ticks = 0;
    while ticks < 20_000 {
        ticks += 1;
        if sent < count {
            let now = sim.now;
            let msg = (sent as u32).to_be_bytes();
            if sim.clients[0].1.send(now, ChannelId(channel), &msg).is_ok() {
                sent += 1;
            }
        }
        // A 60 Hz game tick.
        let tick_end = sim.now + Duration::from_micros(16_667);
        sim.run_until(Duration::from_secs(1), |s| s.now >= tick_end);
        for (_, ch, data) in sim.server_messages() {
            assert_eq!(ch, channel);
            got.push(u32::from_be_bytes(data[..4].try_into().unwrap()));
        }
        if sent == count && ticks > count + 300 {
            break;
        }
    }
    (got, sim)
}

#[test]
fn reliable_ordered_under_loss_duplication_and_reordering() {
    for seed in 1..=4 {
        let (got, sim) = deliver_under(3, 300, seed, 0.2, 0.05, 0.1);
        assert_eq!(got, (0..300).collect::<Vec<_>>(), "seed {seed}");
        assert!(sim.clients[0].1.is_connected(), "seed {seed}");
        assert!(sim.clients[0].1.stats().packets_resent > 0);
    }
}

#[test]
fn reliable_unordered_exactly_once() {
    for seed in 1..=4 {
        let (mut got, _) = deliver_under(2, 300, seed, 0.2, 0.05, 0.1);
        got.sort_unstable();
        assert_eq!(got, (0..300).collect::<Vec<_>>(), "seed {seed}");
    }
}

#[test]
fn unreliable_at_most_once() {
    for seed in 1..=4 {
        let (mut got, _) = deliver_under(0, 300, seed, 0.2, 0.2, 0.1);
        let n = got.len();
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), n, "no duplicates, seed {seed}");
        assert!(n > 150 && n < 300, "some lost, most through: {n}");
    }
}

#[test]
fn sequenced_never_delivers_stale() {
    for seed in 1..=4 {
        let (got, sim) = deliver_under(1, 300, seed, 0.1, 0.2, 0.3);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "seed {seed}: {got:?}");
        assert!(!got.is_empty());
        let stale = sim
            .server
            .client_stats(tickwire::ClientId(1))
            .unwrap()
            .stale_dropped;
        assert!(stale > 0, "reordering made some stale, seed {seed}");
    }
}

#[test]
fn large_message_under_loss_resends_only_missing_fragments() {
    let mut sim = sim_with_client();
    sim.connect_all();
    sim.filter = lossy(7, 0.05, 0.0, 0.0, 0);
    let msg: Vec<u8> = (0..60_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let now = sim.now;
    sim.clients[0].1.send(now, ChannelId(3), &msg).unwrap();
    assert!(sim.run_until(Duration::from_secs(10), |s| has_message(&s.server_events)));
    let got = sim.server_messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].2, msg);
    let stats = sim.clients[0].1.stats();
    // 61 fragments at 5% loss: whole-packet resends would send 61 each time.
    assert!(stats.packets_resent < 40, "resent {}", stats.packets_resent);
}

#[test]
fn oversized_message_is_refused_at_send() {
    let mut sim = sim_with_client();
    sim.connect_all();
    let now = sim.now;
    let big = vec![0u8; 64 * 1024 + 1];
    assert_eq!(
        sim.clients[0].1.send(now, ChannelId(3), &big),
        Err(tickwire::SendError::MessageTooLarge {
            len: big.len(),
            limit: 64 * 1024
        })
    );
    assert_eq!(
        sim.clients[0].1.send(now, ChannelId(9), b"x"),
        Err(tickwire::SendError::UnknownChannel(ChannelId(9)))
    );
}

#[test]
fn reliable_queue_applies_backpressure() {
    let mut sim = sim_with_client();
    sim.connect_all();
    let now = sim.now;
    let msg = vec![1u8; 60 * 1024];
    let mut accepted = 0;
    loop {
        match sim.clients[0].1.send(now, ChannelId(3), &msg) {
            Ok(()) => accepted += 1,
            Err(tickwire::SendError::QueueFull) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(accepted < 1000);
    }
    assert!(
        accepted >= 60,
        "4 MiB queue holds ~68 such messages: {accepted}"
    );
    // Once acknowledged, the queue drains and takes messages again.
    sim.run_for(Duration::from_secs(5));
    assert!(sim.clients[0].1.send(sim.now, ChannelId(3), &msg).is_ok());
    assert_eq!(sim.server_messages().len(), accepted);
}

#[test]
fn silence_times_out_both_sides() {
    let mut sim = sim_with_client();
    sim.connect_all();
    sim.filter = Box::new(|_, _, _| Fate::Drop);
    sim.run_for(Duration::from_secs(11));
    assert_eq!(
        client_disconnect_reason(&sim, 0),
        Some(DisconnectReason::TimedOut)
    );
    assert_eq!(
        server_disconnect_reason(&sim),
        Some(DisconnectReason::TimedOut)
    );
    assert_eq!(sim.server.client_count(), 0);
}

#[test]
fn heartbeats_keep_an_idle_connection_up_and_measure_rtt() {
    let mut sim = sim_with_client();
    sim.delay = Duration::from_millis(25);
    sim.connect_all();
    sim.run_for(Duration::from_secs(30));
    assert!(sim.clients[0].1.is_connected());
    let rtt = sim.clients[0].1.stats().rtt;
    assert!(
        rtt >= Duration::from_millis(50) && rtt < Duration::from_millis(60),
        "{rtt:?}"
    );
}

#[test]
fn graceful_close_carries_the_reason() {
    let mut sim = sim_with_client();
    sim.connect_all();
    let now = sim.now;
    sim.clients[0].1.disconnect(now, "bye now");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        server_disconnect_reason(&sim),
        Some(DisconnectReason::Peer {
            code: ErrorCode::ClientDisconnect,
            message: "bye now".into()
        })
    );
    assert_eq!(
        client_disconnect_reason(&sim, 0),
        Some(DisconnectReason::Local {
            code: ErrorCode::ClientDisconnect
        })
    );
    assert!(sim.clients[0].1.is_closed());
    assert_eq!(sim.server.client_count(), 0);
}

#[test]
fn graceful_close_survives_a_lost_error_packet() {
    let mut sim = sim_with_client();
    sim.connect_all();
    let base = sim.counts[Dir::ToServer as usize];
    sim.filter = drop_nth(Dir::ToServer, base);
    let now = sim.now;
    sim.clients[0].1.disconnect(now, "bye");
    sim.run_for(Duration::from_secs(2));
    assert!(matches!(
        server_disconnect_reason(&sim),
        Some(DisconnectReason::Peer {
            code: ErrorCode::ClientDisconnect,
            ..
        })
    ));
}

#[test]
fn server_shutdown_reaches_every_client() {
    let (mut sim, _) = Sim::with_defaults();
    let cfg = sim.client_config();
    for _ in 0..5 {
        sim.add_client(cfg.clone());
    }
    sim.connect_all();
    let now = sim.now;
    sim.server.shutdown(now, "maintenance");
    assert!(sim.run_until(Duration::from_secs(2), |s| s.server.is_idle()));
    for i in 0..5 {
        assert_eq!(
            client_disconnect_reason(&sim, i),
            Some(DisconnectReason::Peer {
                code: ErrorCode::ServerDisconnect,
                message: "maintenance".into()
            })
        );
    }
}

/// Captures every datagram the client sends after the handshake.
fn capture_client_datagrams(sim: &mut Sim) -> std::rc::Rc<std::cell::RefCell<Vec<Vec<u8>>>> {
    let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let l2 = log.clone();
    sim.filter = Box::new(move |d, _, data| {
        if d == Dir::ToServer {
            l2.borrow_mut().push(data.to_vec());
        }
        Fate::Deliver
    });
    log
}

#[test]
fn replayed_packet_is_dropped_counted_and_not_delivered_twice() {
    let mut sim = sim_with_client();
    sim.connect_all();
    let log = capture_client_datagrams(&mut sim);
    let now = sim.now;
    sim.clients[0].1.send(now, ChannelId(2), b"once").unwrap();
    assert!(sim.run_until(Duration::from_secs(1), |s| has_message(&s.server_events)));
    sim.run_for(Duration::from_millis(100));
    sim.filter = Box::new(|_, _, _| Fate::Deliver);
    assert_eq!(sim.server_messages().len(), 1);
    let before = sim.server.client_stats(tickwire::ClientId(1)).unwrap();
    let client_addr = sim.clients[0].0;
    for d in log.borrow().iter() {
        let mut d = d.clone();
        let now = sim.now;
        sim.server.handle_datagram(now, client_addr, &mut d);
    }
    sim.run_for(Duration::from_millis(100));
    assert!(sim.server_messages().is_empty(), "replay delivered nothing");
    let after = sim.server.client_stats(tickwire::ClientId(1)).unwrap();
    assert!(after.duplicates >= before.duplicates + log.borrow().len() as u64);
}

#[test]
fn tampered_packet_is_dropped_counted_and_changes_nothing() {
    let mut sim = sim_with_client();
    sim.connect_all();
    // Flip one bit in the Data of every datagram the client sends for a while.
    sim.filter = Box::new(|d, _, _| {
        if d == Dir::ToServer {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let now = sim.now;
    sim.clients[0].1.send(now, ChannelId(3), b"secret").unwrap();
    let mut buf = [0u8; 1500];
    let t = sim.clients[0].1.poll_transmit(now, &mut buf).unwrap();
    let before = sim.server.client_stats(tickwire::ClientId(1)).unwrap();
    let client_addr = sim.clients[0].0;
    for bit in 0..t.len * 8 {
        let mut d = buf[..t.len].to_vec();
        d[bit / 8] ^= 0x80 >> (bit % 8);
        sim.server.handle_datagram(now, client_addr, &mut d);
    }
    let mut out = [0u8; 1500];
    while sim.server.poll_transmit(now, &mut out).is_some() {}
    while let Some(e) = sim.server.poll_event() {
        assert!(
            !matches!(e, Event::Message { .. } | Event::Disconnected { .. }),
            "{e:?}"
        );
    }
    let after = sim.server.client_stats(tickwire::ClientId(1)).unwrap();
    assert_eq!(after.packets_received, before.packets_received);
    assert_eq!(after.messages_received, before.messages_received);
    assert!(
        after.datagrams_dropped + sim.server.stats().datagrams_dropped > before.datagrams_dropped
    );
    // The untouched datagram still goes through afterwards.
    let mut d = buf[..t.len].to_vec();
    sim.server.handle_datagram(now, client_addr, &mut d);
    while let Some(e) = sim.server.poll_event() {
        if let Event::Message { data, .. } = e {
            assert_eq!(data, b"secret");
            return;
        }
    }
    panic!("the genuine packet was not delivered");
}

#[test]
fn many_clients_each_get_their_own_messages() {
    let (mut sim, _) = Sim::with_defaults();
    let cfg = sim.client_config();
    for _ in 0..16 {
        sim.add_client(cfg.clone());
    }
    sim.connect_all();
    let now = sim.now;
    for (i, (_, c)) in sim.clients.iter_mut().enumerate() {
        c.send(now, ChannelId(3), &[i as u8; 10]).unwrap();
    }
    assert!(sim.run_until(Duration::from_secs(1), |s| s.server_events.len() >= 16 + 16));
    let msgs = sim.server_messages();
    assert_eq!(msgs.len(), 16);
    for (client, _, data) in msgs {
        assert_eq!(data, vec![(client - 1) as u8; 10]);
    }
}

#[test]
fn forged_duplicate_draws_no_answer() {
    let mut sim = sim_with_client();
    sim.connect_all();
    sim.run_for(Duration::from_millis(100));
    let client_addr = sim.clients[0].0;
    let now = sim.now;
    // Looks like the client's finished (sealed ACK, packet number 0), six octets long.
    for forged in [[0x01u8, 0x10, 0, 0, 0, 0], [0x01, 0x90, 0, 0, 0, 0]] {
        let mut d = forged.to_vec();
        sim.server.handle_datagram(now, client_addr, &mut d);
    }
    let mut buf = [0u8; 1500];
    assert!(
        sim.server.poll_transmit(now, &mut buf).is_none(),
        "no amplification"
    );
}

#[test]
fn simultaneous_close_is_reported_once_per_side() {
    let mut sim = sim_with_client();
    sim.connect_all();
    let now = sim.now;
    sim.clients[0].1.disconnect(now, "client leaves");
    sim.server
        .disconnect(now, tickwire::ClientId(1), "server kicks");
    sim.run_for(Duration::from_secs(3));
    let client_reports = sim.client_events[0]
        .iter()
        .filter(|e| matches!(e, Event::Disconnected { .. }))
        .count();
    let server_reports = sim
        .server_events
        .iter()
        .filter(|e| matches!(e, Event::Disconnected { .. }))
        .count();
    assert_eq!((client_reports, server_reports), (1, 1));
}

#[test]
fn client_restarting_on_the_same_address_reconnects_at_once() {
    let mut sim = sim_with_client();
    sim.connect_all();
    // The game restarts: a fresh client on the same address and port.
    let cfg = sim.client_config();
    let now = sim.now;
    sim.clients[0].1 = tickwire::Client::connect(cfg, sim.server_addr, now).unwrap();
    assert!(sim.run_until(Duration::from_secs(2), |s| s.clients[0].1.is_connected()));
    assert!(sim.server_events.iter().any(|e| matches!(
        e,
        Event::Disconnected {
            reason: DisconnectReason::Replaced,
            ..
        }
    )));
    assert_eq!(sim.server.client_count(), 1);
}

#[test]
fn busy_application_stalls_nothing_once_it_polls_again() {
    // The server's application stops taking events; its receive buffer fills; packets are
    // dropped unacknowledged; when it polls again, every message arrives.
    let mut config = tickwire::ServerConfig::new(tickwire::ServerIdentity::generate());
    config.connection.receive_buffer_bytes = 100_000;
    config.connection.max_message_size = 60_000;
    let mut sim = Sim::new(config);
    let mut cfg = sim.client_config();
    cfg.connection.max_message_size = 60_000;
    sim.add_client(cfg);
    sim.connect_all();
    sim.hold_server_events = true;
    let now = sim.now;
    for i in 0..5u8 {
        sim.clients[0]
            .1
            .send(now, ChannelId(3), &[i; 50_000])
            .unwrap();
    }
    sim.run_for(Duration::from_secs(3));
    sim.hold_server_events = false;
    assert!(sim.run_until(Duration::from_secs(30), |s| s
        .server_events
        .iter()
        .filter(|e| matches!(e, Event::Message { .. }))
        .count()
        == 5));
    let got = sim.server_messages();
    for (i, (_, _, data)) in got.iter().enumerate() {
        assert_eq!(data, &vec![i as u8; 50_000]);
    }
}

#[test]
fn close_delivers_what_send_accepted_first() {
    let mut sim = sim_with_client();
    sim.connect_all();
    sim.filter = lossy(3, 0.2, 0.0, 0.0, 0);
    let now = sim.now;
    for i in 0..50u8 {
        sim.server
            .send(now, tickwire::ClientId(1), ChannelId(3), &[i; 300])
            .unwrap();
    }
    sim.server.disconnect(now, tickwire::ClientId(1), "GOODBYE");
    sim.run_for(Duration::from_secs(3));
    // The messages came before the disconnection.
    let last_message = sim.client_events[0]
        .iter()
        .rposition(|e| matches!(e, Event::Message { .. }));
    let disconnected = sim.client_events[0]
        .iter()
        .position(|e| matches!(e, Event::Disconnected { .. }));
    assert!(last_message.is_some() && last_message < disconnected);
    let got = sim.client_messages(0);
    assert_eq!(
        got.len(),
        50,
        "every accepted message arrived before the close"
    );
    for (i, (_, data)) in got.iter().enumerate() {
        assert_eq!(data, &vec![i as u8; 300]);
    }
    assert_eq!(
        client_disconnect_reason(&sim, 0),
        Some(DisconnectReason::Peer {
            code: ErrorCode::Disconnect,
            message: "GOODBYE".into()
        })
    );
}

#[test]
fn a_close_while_large_messages_are_paced_does_not_livelock() {
    // Regression: the closing connection's deadline ignored pacing, so the endpoint woke at
    // once again and again without being able to send (virtual time stalled).
    let mut sim = sim_with_client();
    sim.connect_all();
    let now = sim.now;
    for i in 0..3u8 {
        sim.server
            .send(
                now,
                tickwire::ClientId(1),
                ChannelId(3),
                &vec![i; 60 * 1024],
            )
            .unwrap();
    }
    sim.server.disconnect(now, tickwire::ClientId(1), "bye");
    let steps = sim.steps;
    assert!(
        sim.run_until(Duration::from_secs(5), |s| client_disconnect_reason(s, 0)
            .is_some())
    );
    assert!(sim.steps - steps < 20_000, "{} steps", sim.steps - steps);
    let got = sim.client_messages(0);
    assert_eq!(got.len(), 3, "the three messages came before the close");
    for (i, (_, data)) in got.iter().enumerate() {
        assert_eq!(data, &vec![i as u8; 60 * 1024]);
    }
}

/// Traffic both ways through 10% loss each way and a 50 ms one-way delay, at a fast and at a
/// game's packet rate: both sides read about 10%
/// each way, although resends and the redundant copies of small reliable packets (sent while
/// loss lasts) repair most of it.
#[test]
fn loss_estimates_tell_what_the_path_loses_not_what_resends_leave() {
    // 100 and 30 packets per second each way.
    for (seed, interval) in [(1u64, 10u64), (2, 10), (3, 33), (4, 33)] {
        let mut sim = sim_with_client();
        sim.delay = Duration::from_millis(50);
        sim.connect_all();
        let mut rng = Rng(seed);
        sim.filter = Box::new(move |_, _, _| {
            if rng.chance(0.10) {
                Fate::Drop
            } else {
                Fate::Deliver
            }
        });
        let id = sim.server.clients()[0].id;
        for _ in 0..1000 {
            let now = sim.now;
            sim.clients[0].1.send(now, ChannelId(0), &[1; 100]).unwrap();
            sim.clients[0].1.send(now, ChannelId(3), &[2; 100]).unwrap();
            let _ = sim.server.send(now, id, ChannelId(0), &[3; 100]);
            let _ = sim.server.send(now, id, ChannelId(3), &[4; 100]);
            sim.run_for(Duration::from_millis(interval));
            sim.server_messages();
            sim.client_messages(0);
        }
        let server = sim.server.client_stats(id).unwrap();
        let client = sim.clients[0].1.stats();
        for (who, v) in [
            ("server loss", server.loss),
            ("server incoming loss", server.incoming_loss),
            ("client loss", client.loss),
            ("client incoming loss", client.incoming_loss),
        ] {
            assert!((0.06..0.14).contains(&v), "seed {seed}: {who} {v}");
        }
    }
}

#[test]
fn stats_tell_the_loss_each_way_the_rates_and_survive_the_close() {
    let mut sim = sim_with_client();
    sim.connect_all();
    // 10% loss from the client to the server only (seeded), after the handshake.
    let mut rng = Rng(77);
    sim.filter = Box::new(move |dir, _, _| {
        if dir == Dir::ToServer && rng.chance(0.10) {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    for _ in 0..300 {
        let now = sim.now;
        sim.clients[0].1.send(now, ChannelId(0), &[1; 100]).unwrap();
        sim.clients[0].1.send(now, ChannelId(3), &[2; 100]).unwrap();
        sim.run_for(Duration::from_millis(10));
    }
    let id = sim.server.clients()[0].id;
    let server = sim.server.client_stats(id).unwrap();
    let client = sim.clients[0].1.stats();
    // What the server sees missing, and what the client learns was lost: about 10% each.
    assert!(
        (0.03..0.2).contains(&server.incoming_loss),
        "server incoming loss {}",
        server.incoming_loss
    );
    assert!(
        (0.03..0.2).contains(&client.loss),
        "client loss {}",
        client.loss
    );
    // Nothing is lost the other way.
    assert!(client.incoming_loss < 0.02, "{}", client.incoming_loss);
    assert!(
        client.send_bytes_per_sec > 10_000,
        "{}",
        client.send_bytes_per_sec
    );
    assert!(server.receive_bytes_per_sec > 10_000);
    // Two messages every 10 ms go out in at least 100 datagrams a second.
    assert!(
        client.send_packets_per_sec >= 100,
        "{}",
        client.send_packets_per_sec
    );
    assert!(server.receive_packets_per_sec >= 80);
    // The sequenced channel 1 carried nothing; the unreliable channel 0 about 90% of 300.
    assert_eq!(server.channels[1].messages_received, 0);
    assert_eq!(client.channels[0].messages_sent, 300);
    assert!((240..=300).contains(&server.channels[0].messages_received));
    // After a graceful close both sides still tell the connection's counters.
    sim.filter = Box::new(|_, _, _| Fate::Deliver);
    let now = sim.now;
    sim.clients[0].1.disconnect(now, "bye");
    assert!(
        sim.run_until(Duration::from_secs(3), |s| s.clients[0].1.is_closed()
            && !s.server.is_connected(id))
    );
    sim.run_for(Duration::from_secs(1));
    assert!(sim.clients[0].1.stats().messages_sent >= 600);
    assert!(sim
        .server
        .client_stats(id)
        .is_some_and(|s| s.messages_received >= 300));
}

#[test]
fn the_rtt_does_not_count_the_peers_ack_delay() {
    // 10 ms each way; both sides hold acknowledgements up to 30 ms. One reliable message
    // every 50 ms, so each acknowledgement waits the full delay: uncorrected, the RTT would
    // read about 50 ms.
    let identity = ServerIdentity::generate();
    let mut config = ServerConfig::new(identity);
    config.connection.ack_delay = Duration::from_millis(30);
    let mut sim = Sim::new(config);
    let mut cfg = sim.client_config();
    cfg.connection.ack_delay = Duration::from_millis(30);
    sim.add_client(cfg);
    sim.connect_all();
    for _ in 0..60 {
        let now = sim.now;
        sim.clients[0].1.send(now, ChannelId(3), &[7; 50]).unwrap();
        sim.run_for(Duration::from_millis(50));
    }
    let stats = sim.clients[0].1.stats();
    assert!(
        stats.rtt >= Duration::from_millis(18) && stats.rtt <= Duration::from_millis(26),
        "rtt {:?}",
        stats.rtt
    );
    // Nothing was resent for waiting in the peer's delay.
    assert_eq!(stats.packets_resent, 0);
}

#[test]
fn disconnected_carries_the_final_stats_and_send_says_closed() {
    let mut sim = sim_with_client();
    sim.connect_all();
    for i in 0..20u8 {
        let now = sim.now;
        sim.clients[0].1.send(now, ChannelId(3), &[i; 10]).unwrap();
        sim.run_for(Duration::from_millis(10));
    }
    let id = sim.server.clients()[0].id;
    let now = sim.now;
    sim.clients[0].1.disconnect(now, "bye");
    // Closing: the client refuses new messages with Closed, not NotConnected.
    assert_eq!(
        sim.clients[0].1.send(now, ChannelId(3), b"late"),
        Err(tickwire::SendError::Closed)
    );
    assert!(
        sim.run_until(Duration::from_secs(3), |s| s.clients[0].1.is_closed()
            && !s.server.is_connected(id))
    );
    let now = sim.now;
    assert_eq!(
        sim.server.send(now, id, ChannelId(3), b"late"),
        Err(tickwire::SendError::Closed)
    );
    assert_eq!(
        sim.server
            .send(now, tickwire::ClientId(999), ChannelId(3), b"x"),
        Err(tickwire::SendError::NotConnected)
    );
    let server_final = sim
        .server_events
        .iter()
        .find_map(|e| match e {
            Event::Disconnected { stats, .. } => Some(stats.clone()),
            _ => None,
        })
        .expect("the server saw the close");
    assert_eq!(server_final.messages_received, 20);
    let client_final = sim.client_events[0]
        .iter()
        .find_map(|e| match e {
            Event::Disconnected { stats, .. } => Some(stats.clone()),
            _ => None,
        })
        .expect("the client saw its close");
    assert_eq!(client_final.messages_sent, 20);
    assert!(client_final.rtt > Duration::ZERO);
    // Per channel: all 20 messages of 10 octets on channel 3, nothing on the others.
    assert_eq!(client_final.channels.len(), 5); // the four modes and the bulk lane
    let sent = client_final.channels[3];
    assert_eq!((sent.messages_sent, sent.bytes_sent), (20, 200));
    assert_eq!(sent.queued_messages, 0);
    let got = server_final.channels[3];
    assert_eq!((got.messages_received, got.bytes_received), (20, 200));
    for ch in [0, 1, 2] {
        assert_eq!(client_final.channels[ch], tickwire::ChannelStats::default());
    }
    // The server keeps the final figures while the id is resumable.
    assert_eq!(
        sim.server
            .client_stats(id)
            .map(|s| s.channels[3].messages_received),
        Some(20)
    );
}

/// Sends `n` reliable messages of 900 octets from the client (one packet each), delivers
/// every datagram the client writes at once to the server as one batch, and returns the
/// number of datagrams in the batch. With `reply`, the server's application answers the
/// batch before the server is polled, so its acknowledgements can ride on a data packet.
fn batch_to_server(sim: &mut Sim, n: usize, reply: bool) -> usize {
    let now = sim.now;
    for i in 0..n {
        sim.clients[0]
            .1
            .send(now, ChannelId(3), &[i as u8; 900])
            .unwrap();
    }
    let mut buf = [0u8; 1500];
    let mut batch = Vec::new();
    while let Some(t) = sim.clients[0].1.poll_transmit(now, &mut buf) {
        batch.push(buf[..t.len].to_vec());
    }
    let client_addr = sim.clients[0].0;
    for d in &mut batch {
        sim.server.handle_datagram(now, client_addr, d);
    }
    if reply {
        sim.server
            .send(now, tickwire::ClientId(1), ChannelId(3), b"got them")
            .unwrap();
    }
    batch.len()
}

#[test]
fn a_batch_of_reliable_packets_is_acked_oldest_first_and_nothing_is_resent() {
    for reply in [false, true] {
        let mut sim = sim_with_client();
        sim.connect_all();
        sim.run_for(Duration::from_millis(300));
        let before = sim.clients[0].1.stats();
        let sent = batch_to_server(&mut sim, 20, reply);
        assert!(sent >= 10, "only {sent} datagrams in the batch");
        sim.run_for(Duration::from_secs(1));
        assert_eq!(sim.server_messages().len(), 20, "reply {reply}");
        let after = sim.clients[0].1.stats();
        assert_eq!(
            after.packets_lost - before.packets_lost,
            0,
            "reply {reply}: packets declared lost"
        );
        assert_eq!(
            after.packets_resent - before.packets_resent,
            0,
            "reply {reply}: packets resent"
        );
    }
}

/// Unreliable 1000 B messages take two fragments each: the full first fragments of the
/// messages queued go out in a row, then the short last ones (so that a GSO call carries each
/// size), and every message arrives.
#[test]
fn unreliable_fragments_go_out_grouped_by_size() {
    let mut sim = sim_with_client();
    sim.connect_all();
    let now = sim.now;
    // Let the heartbeats and acks of the handshake go first.
    let mut buf = vec![0u8; 2048];
    while sim.clients[0].1.poll_transmit(now, &mut buf).is_some() {}
    for i in 0..8u8 {
        sim.clients[0]
            .1
            .send(now, ChannelId(0), &[i; 1000])
            .unwrap();
    }
    let mut lens = Vec::new();
    let mut datagrams = Vec::new();
    while let Some(t) = sim.clients[0].1.poll_transmit(now, &mut buf) {
        lens.push(t.len);
        datagrams.push(buf[..t.len].to_vec());
    }
    assert_eq!(lens.len(), 16, "{lens:?}");
    assert!(lens[..8].iter().all(|&l| l == lens[0]), "{lens:?}");
    assert!(
        lens[8..].iter().all(|&l| l == lens[8] && l < lens[0]),
        "{lens:?}"
    );
    let from = sim.clients[0].0;
    for mut d in datagrams {
        sim.server.handle_datagram(now, from, &mut d);
    }
    let mut got: Vec<u8> = Vec::new();
    while let Some(e) = sim.server.poll_event() {
        if let Event::Message { data, .. } = e {
            assert_eq!(data.len(), 1000);
            got.push(data[0]);
        }
    }
    assert_eq!(got, (0..8).collect::<Vec<u8>>());
}

/// Last fragments sent after the first fragments of the packets that follow are not taken for
/// lost: 2000 unreliable 1000 B messages, 20 per millisecond, over a lossless path.
#[test]
fn grouped_fragments_are_not_taken_for_lost() {
    let mut sim = sim_with_client();
    sim.connect_all();
    for _ in 0..100 {
        let now = sim.now;
        for i in 0..20u8 {
            sim.clients[0]
                .1
                .send(now, ChannelId(0), &[i; 1000])
                .unwrap();
        }
        sim.run_for(Duration::from_millis(1));
    }
    sim.run_for(Duration::from_millis(200));
    let stats = sim.clients[0].1.stats();
    assert_eq!(sim.server_messages().len(), 2000);
    assert_eq!(stats.loss, 0.0, "{stats:?}");
}

/// A sender whose acknowledgements stop (every datagram to it lost) while it floods unreliable
/// 1000 B messages does not put one packet per message offered on the wire within a resend
/// timeout (30 ms at least): at most the 4,096 it tracks, two datagrams each. (From a fresh
/// connection the congestion window, 32 datagrams, stops it first: about 60 datagrams.)
#[test]
fn unreliable_flood_without_acks_is_bounded() {
    let mut sim = sim_with_client();
    sim.connect_all();
    sim.filter = Box::new(|d, _, _| {
        if d == Dir::ToClient {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let before = sim.clients[0].1.stats().packets_sent;
    // 20 ms at 1,000 messages per millisecond.
    for _ in 0..20 {
        let now = sim.now;
        for i in 0..1000u32 {
            // Refused once the channel holds what the path can send within the deadline.
            match sim.clients[0].1.send(now, ChannelId(0), &[i as u8; 1000]) {
                Ok(()) | Err(SendError::QueueFull) => {}
                Err(e) => panic!("send: {e}"),
            }
        }
        sim.run_for(Duration::from_millis(1));
    }
    let sent = sim.clients[0].1.stats().packets_sent - before;
    assert!(sent <= 2 * 4096 + 64, "{sent} datagrams");
}
