//! A headless server App and client Apps in one process over 127.0.0.1, updated in a loop
//! bounded in iterations and in wall time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bevy_app::{App, Update};
use bevy_ecs::prelude::*;
use bevy_tickwire::*;
use tickwire::token::TokenSigner;
use tickwire::{ChannelId, ClientConfig, ClientId, DisconnectReason, ServerIdentity, ServerKey};

const CHANNELS: [ChannelId; 4] = [
    ChannelId::UNRELIABLE,
    ChannelId::SEQUENCED,
    ChannelId::RELIABLE_UNORDERED,
    ChannelId::RELIABLE_ORDERED,
];

/// What the server app saw.
#[derive(Resource, Default)]
struct ServerLog {
    connected: Vec<ClientId>,
    disconnected: Vec<(ClientId, DisconnectReason)>,
    received: Vec<(ClientId, ChannelId, Vec<u8>)>,
}

/// What a client app saw.
#[derive(Resource, Default)]
struct ClientLog {
    connected: Option<ClientId>,
    disconnected: Option<DisconnectReason>,
    received: Vec<(ChannelId, Vec<u8>)>,
}

/// Logs everything and echoes every message back on its channel.
fn server_log(
    mut log: ResMut<ServerLog>,
    mut server: ResMut<TickwireServer>,
    mut connected: MessageReader<ClientConnected>,
    mut disconnected: MessageReader<ClientDisconnected>,
    mut from: MessageReader<FromClient>,
) {
    log.connected.extend(connected.read().map(|m| m.client));
    log.disconnected
        .extend(disconnected.read().map(|m| (m.client, m.reason.clone())));
    for m in from.read() {
        server.send(m.client, m.channel, &m.data).expect("echo");
        log.received.push((m.client, m.channel, m.data.clone()));
    }
}

fn client_log(
    mut log: ResMut<ClientLog>,
    mut connected: MessageReader<Connected>,
    mut disconnected: MessageReader<Disconnected>,
    mut from: MessageReader<FromServer>,
) {
    if let Some(m) = connected.read().last() {
        log.connected = Some(m.client);
    }
    if let Some(m) = disconnected.read().last() {
        log.disconnected = Some(m.reason.clone());
    }
    log.received
        .extend(from.read().map(|m| (m.channel, m.data.clone())));
}

fn server_app(plugin: TickwireServerPlugin) -> (App, SocketAddr, ServerKey) {
    let mut app = App::new();
    app.init_resource::<ServerLog>()
        .add_plugins(plugin)
        .add_systems(Update, server_log.run_if(server_running));
    let server = app.world().resource::<TickwireServer>();
    let addr = server.local_addr().expect("local addr");
    let key = server.public_key();
    (app, addr, key)
}

fn client_app(plugin: TickwireClientPlugin) -> App {
    let mut app = App::new();
    app.init_resource::<ClientLog>()
        .add_plugins(plugin)
        .add_systems(Update, client_log);
    app
}

/// Updates every app once per iteration until `done`; panics after 5000 iterations or 20 s.
fn run_until(apps: &mut [&mut App], mut done: impl FnMut(&mut [&mut App]) -> bool) {
    let start = Instant::now();
    for _ in 0..5000 {
        for app in apps.iter_mut() {
            app.update();
        }
        if done(apps) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "gave up (time)");
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("gave up (iterations)");
}

fn server_log_of(app: &App) -> &ServerLog {
    app.world().resource::<ServerLog>()
}

fn client_log_of(app: &App) -> &ClientLog {
    app.world().resource::<ClientLog>()
}

#[test]
fn connects_and_reads_stats() {
    let (mut server, addr, key) = server_app(TickwireServerPlugin::new(
        "127.0.0.1:0".parse().unwrap(),
        ServerIdentity::generate(),
    ));
    let mut client = client_app(TickwireClientPlugin::new(addr, key));
    run_until(&mut [&mut server, &mut client], |apps| {
        client_log_of(apps[1]).connected.is_some() && !server_log_of(apps[0]).connected.is_empty()
    });
    let id = client_log_of(&client).connected.unwrap();
    assert_eq!(server_log_of(&server).connected, vec![id]);
    let s = server.world().resource::<TickwireServer>();
    assert_eq!(s.clients(), vec![id]);
    assert!(s.is_connected(id));
    assert!(s.client_stats(id).is_some());
    assert!(s.client_stats(ClientId(u64::MAX)).is_none());
    let c = client.world().resource::<TickwireClient>();
    assert!(c.is_connected());
    assert_eq!(c.id(), Some(id));

    // The run conditions.
    assert!(server
        .world_mut()
        .run_system_cached(server_running)
        .unwrap());
    assert!(client
        .world_mut()
        .run_system_cached(client_connected)
        .unwrap());
    assert!(!client
        .world_mut()
        .run_system_cached(client_connecting)
        .unwrap());
    assert!(!client
        .world_mut()
        .run_system_cached(client_disconnected)
        .unwrap());
}

#[test]
fn messages_both_ways_on_every_channel() {
    let (mut server, addr, key) = server_app(TickwireServerPlugin::new(
        "127.0.0.1:0".parse().unwrap(),
        ServerIdentity::generate(),
    ));
    let mut client = client_app(TickwireClientPlugin::new(addr, key));
    // The client sends on each channel: the reliable ones once, the unreliable ones every
    // frame until their echo came back (loopback seldom drops, but may).
    client.add_systems(
        Update,
        (|mut c: ResMut<TickwireClient>, log: Res<ClientLog>, mut sent: Local<bool>| {
            for (i, ch) in CHANNELS.into_iter().enumerate() {
                let echoed = log.received.iter().any(|(c, _)| *c == ch);
                let reliable = i >= 2;
                if (!reliable && !echoed) || (reliable && !*sent) {
                    c.send(ch, format!("on {}", ch.0).as_bytes()).expect("send");
                }
            }
            *sent = true;
        })
        .run_if(client_connected),
    );
    run_until(&mut [&mut server, &mut client], |apps| {
        let got = &client_log_of(apps[1]).received;
        CHANNELS.iter().all(|ch| got.iter().any(|(c, _)| c == ch))
    });
    let server_got = &server_log_of(&server).received;
    for ch in CHANNELS {
        let text = format!("on {}", ch.0).into_bytes();
        assert!(server_got.iter().any(|(_, c, d)| *c == ch && *d == text));
        assert!(client_log_of(&client)
            .received
            .iter()
            .any(|(c, d)| *c == ch && *d == text));
    }
}

#[test]
fn client_disconnect_reason_reaches_the_server() {
    let (mut server, addr, key) = server_app(TickwireServerPlugin::new(
        "127.0.0.1:0".parse().unwrap(),
        ServerIdentity::generate(),
    ));
    let mut client = client_app(TickwireClientPlugin::new(addr, key));
    run_until(&mut [&mut server, &mut client], |apps| {
        !server_log_of(apps[0]).connected.is_empty()
    });
    client
        .world_mut()
        .resource_mut::<TickwireClient>()
        .disconnect("bye");
    run_until(&mut [&mut server, &mut client], |apps| {
        !server_log_of(apps[0]).disconnected.is_empty()
            && client_log_of(apps[1]).disconnected.is_some()
    });
    let (id, reason) = &server_log_of(&server).disconnected[0];
    assert_eq!(Some(*id), client_log_of(&client).connected);
    assert!(
        matches!(reason, DisconnectReason::Peer { message, .. } if message == "bye"),
        "{reason:?}"
    );
    assert!(matches!(
        client_log_of(&client).disconnected,
        Some(DisconnectReason::Local { .. })
    ));
    assert!(client
        .world_mut()
        .run_system_cached(client_disconnected)
        .unwrap());
}

#[test]
fn server_disconnect_reason_reaches_the_client() {
    let (mut server, addr, key) = server_app(TickwireServerPlugin::new(
        "127.0.0.1:0".parse().unwrap(),
        ServerIdentity::generate(),
    ));
    let mut client = client_app(TickwireClientPlugin::new(addr, key));
    run_until(&mut [&mut server, &mut client], |apps| {
        !server_log_of(apps[0]).connected.is_empty()
    });
    let id = server_log_of(&server).connected[0];
    server
        .world_mut()
        .resource_mut::<TickwireServer>()
        .disconnect(id, "kicked");
    run_until(&mut [&mut server, &mut client], |apps| {
        client_log_of(apps[1]).disconnected.is_some()
    });
    let reason = client_log_of(&client).disconnected.clone().unwrap();
    assert!(
        matches!(&reason, DisconnectReason::Peer { message, .. } if message == "kicked"),
        "{reason:?}"
    );
}

#[test]
fn connect_tokens_are_plugin_configuration() {
    let backend = TokenSigner::generate();
    let (mut server, addr, key) = server_app(
        TickwireServerPlugin::new("127.0.0.1:0".parse().unwrap(), ServerIdentity::generate())
            .tokens(backend.public_key(), true),
    );
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = backend.issue(7, expires, &[addr]);
    let mut with_token = client_app(TickwireClientPlugin::new(addr, key).token(token));
    let mut without = client_app(TickwireClientPlugin::with_config(
        addr,
        ClientConfig::new(key),
    ));
    run_until(&mut [&mut server, &mut with_token, &mut without], |apps| {
        client_log_of(apps[1]).connected.is_some() && client_log_of(apps[2]).disconnected.is_some()
    });
    assert!(client_log_of(&without).connected.is_none());
    assert_eq!(server_log_of(&server).connected.len(), 1);
}

#[test]
fn bind_failure_is_a_resource() {
    // Taken by the first server, so the second cannot bind it.
    let (first, addr, _) = server_app(TickwireServerPlugin::new(
        "127.0.0.1:0".parse().unwrap(),
        ServerIdentity::generate(),
    ));
    let mut app = App::new();
    app.add_plugins(TickwireServerPlugin::new(addr, ServerIdentity::generate()));
    assert!(app.world().get_resource::<TickwireServer>().is_none());
    assert!(app.world().get_resource::<ServerBindError>().is_some());
    app.update(); // the systems do not run without a server
    assert!(!app.world_mut().run_system_cached(server_running).unwrap());
    drop(first);
}

#[test]
fn broadcast_and_send_to_many_from_a_system() {
    let (mut server, addr, key) = server_app(TickwireServerPlugin::new(
        "127.0.0.1:0".parse().unwrap(),
        ServerIdentity::generate(),
    ));
    let mut a = client_app(TickwireClientPlugin::new(addr, key));
    let mut b = client_app(TickwireClientPlugin::new(addr, key));
    run_until(&mut [&mut server, &mut a, &mut b], |apps| {
        server_log_of(apps[0]).connected.len() == 2
    });
    let first = client_log_of(&a).connected.unwrap();
    let second = client_log_of(&b).connected.unwrap();
    // Sending from an ordinary system, once.
    server.add_systems(
        Update,
        move |mut s: ResMut<TickwireServer>, mut done: Local<bool>| {
            if !*done {
                *done = true;
                assert_eq!(s.broadcast(ChannelId::RELIABLE_ORDERED, b"all"), 2);
                assert_eq!(
                    s.broadcast_except(first, ChannelId::RELIABLE_ORDERED, b"not first"),
                    1
                );
                assert_eq!(
                    s.send_to_many(&[first, second], ChannelId::RELIABLE_UNORDERED, b"many"),
                    2
                );
            }
        },
    );
    let want = |log: &ClientLog, n: usize| log.received.len() >= n;
    run_until(&mut [&mut server, &mut a, &mut b], |apps| {
        want(client_log_of(apps[1]), 2) && want(client_log_of(apps[2]), 3)
    });
    let texts = |app: &App| -> Vec<Vec<u8>> {
        let mut t: Vec<_> = client_log_of(app)
            .received
            .iter()
            .map(|(_, d)| d.clone())
            .collect();
        t.sort();
        t
    };
    assert_eq!(texts(&a), vec![b"all".to_vec(), b"many".to_vec()]);
    assert_eq!(
        texts(&b),
        vec![b"all".to_vec(), b"many".to_vec(), b"not first".to_vec()]
    );
}
