//! Loopback tests: the mio drivers over real UDP on 127.0.0.1 and [::1].
//!
//! Every loop is bounded in count and in wall time (a test fails after [`WALL`] rather than
//! hang); nothing sleeps to wait for the other side, and nothing asserts on timing.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tickwire::io::{ClientDriver, ServerDriver, SocketConfig};
use tickwire::{
    ChannelId, ClientConfig, ClientId, ConnectionConfig, Event, SendError, ServerConfig,
    ServerIdentity, ServerKey,
};

/// A test that has not finished after this long fails.
const WALL: Duration = Duration::from_secs(20);
/// How long one wait for an event lasts at most (the loops check their deadlines between).
const STEP: Duration = Duration::from_millis(50);
const UNRELIABLE: ChannelId = ChannelId(0);
const RELIABLE_UNORDERED: ChannelId = ChannelId(2);
const RELIABLE_ORDERED: ChannelId = ChannelId(3);

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// The message with sequence number `seq`: `seq` then a pattern, `len` octets (at least 4).
fn message(seq: u32, len: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend((4..len).map(|i| {
        (seq as u8)
            .wrapping_mul(31)
            .wrapping_add((i as u8).wrapping_mul(7))
    }));
    m
}

/// The sequence number of `data` if it is exactly `message(seq, data.len())`.
fn check(data: &[u8]) -> Option<u32> {
    let seq = u32::from_be_bytes(data.get(..4)?.try_into().ok()?);
    (data == message(seq, data.len()).as_slice()).then_some(seq)
}

fn deadline() -> Instant {
    Instant::now() + WALL
}

/// An echo server on its own thread: every message goes back to its sender on its channel.
struct EchoServer {
    addr: SocketAddr,
    key: ServerKey,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<EchoReport>,
}

/// What the echo server saw.
#[derive(Debug, Default)]
struct EchoReport {
    connected: Vec<ClientId>,
    disconnected: usize,
    echoed: u64,
    wakeups: u64,
}

impl EchoServer {
    /// Binds `ip` (port 0) and serves until stopped. `tick` drives it with `poll_once` once per
    /// millisecond instead of `run_until_event`. `None` if `ip` cannot be bound.
    fn start(ip: IpAddr, config: ServerConfig, tick: bool) -> Option<Self> {
        Self::start_with(
            SocketAddr::new(ip, 0),
            config,
            SocketConfig::default(),
            tick,
        )
    }

    fn start_with(
        bind: SocketAddr,
        config: ServerConfig,
        socket: SocketConfig,
        tick: bool,
    ) -> Option<Self> {
        // Every client of these tests comes from the one loopback address.
        let mut config = config;
        config.max_clients_per_ip = config.max_clients;
        config.max_pending_per_ip = config.max_pending;
        let mut driver = match ServerDriver::bind(bind, config, socket) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("note: cannot bind {bind} ({e}); skipping this test");
                return None;
            }
        };
        let addr = driver.local_addr().expect("bound socket has an address");
        let key = driver.server().public_key();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || serve(&mut driver, &stopping, tick));
        Some(Self {
            addr,
            key,
            stop,
            thread,
        })
    }

    fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.key)
    }

    fn finish(self) -> EchoReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("echo server thread panicked")
    }
}

fn serve(driver: &mut ServerDriver, stop: &AtomicBool, tick: bool) -> EchoReport {
    let give_up = Instant::now() + WALL + Duration::from_secs(10);
    let mut report = EchoReport::default();
    // Echoes the reliable send queue had no room for, per client, in order.
    let mut backlog: HashMap<ClientId, VecDeque<(ChannelId, Vec<u8>)>> = HashMap::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
        let mut events = Vec::new();
        if tick {
            driver.poll_once().expect("poll_once");
            while let Some(ev) = driver.poll_event() {
                events.push(ev);
            }
        } else if let Some(ev) = driver.run_until_event(Some(STEP)).expect("run_until_event") {
            events.push(ev);
        }
        for ev in events {
            match ev {
                Event::Connected { client } => report.connected.push(client),
                Event::Disconnected { client, .. } => {
                    report.disconnected += 1;
                    backlog.remove(&client);
                }
                Event::Message {
                    client,
                    channel,
                    data,
                } => {
                    let queue = backlog.entry(client).or_default();
                    queue.push_back((channel, data));
                }
                _ => {}
            }
        }
        for (&client, queue) in &mut backlog {
            while let Some((channel, data)) = queue.front() {
                match driver.send(client, *channel, data) {
                    Ok(()) => report.echoed += 1,
                    Err(SendError::QueueFull) => break,
                    Err(e) => panic!("echo to {client} failed: {e}"),
                }
                let (_, data) = queue.pop_front().expect("front checked");
                driver.recycle(data);
            }
        }
        if tick {
            driver.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(1)); // the rest of the game tick
        }
    }
    report.wakeups = driver.io_stats().wakeups;
    report
}

/// A client connected to `server`, or a panic naming why not.
fn connect(server: &EchoServer, config: ClientConfig) -> ClientDriver {
    let mut client =
        ClientDriver::connect(config, server.addr, SocketConfig::default()).expect("client socket");
    let give_up = deadline();
    while Instant::now() < give_up {
        match client.run_until_event(Some(STEP)).expect("run_until_event") {
            Some(Event::Connected { .. }) => return client,
            Some(other) => panic!("expected Connected, got {other:?}"),
            None => {}
        }
    }
    panic!("no connection within {WALL:?}");
}

/// Closes `client` gracefully and waits (bounded) for its Disconnected.
fn disconnect(client: &mut ClientDriver) {
    client.disconnect("test done");
    let give_up = Instant::now() + Duration::from_secs(5);
    while Instant::now() < give_up {
        if let Some(Event::Disconnected { .. }) =
            client.run_until_event(Some(STEP)).expect("run_until_event")
        {
            return;
        }
    }
    panic!("no Disconnected within 5 s of disconnect");
}

/// Sends `count` reliable-ordered messages (sizes 4..=200) as the send queue allows and
/// checks every echo arrives intact and in order. Returns how many unreliable echoes (each
/// checked intact) came in between.
fn echo_ordered(client: &mut ClientDriver, count: u32) -> u32 {
    let len = |seq: u32| 4 + (seq as usize * 13) % 197;
    let (mut next_send, mut next_recv, mut unreliable) = (0u32, 0u32, 0u32);
    let give_up = deadline();
    while next_recv < count {
        while next_send < count {
            match client.send(RELIABLE_ORDERED, &message(next_send, len(next_send))) {
                Ok(()) => next_send += 1,
                Err(SendError::QueueFull) => break,
                Err(e) => panic!("send {next_send}: {e}"),
            }
        }
        assert!(
            Instant::now() < give_up,
            "only {next_recv} of {count} echoes within {WALL:?}"
        );
        match client.run_until_event(Some(STEP)).expect("run_until_event") {
            Some(Event::Message { channel, data, .. }) if channel == UNRELIABLE => {
                check(&data).expect("unreliable echo intact");
                unreliable += 1;
            }
            Some(Event::Message { channel, data, .. }) => {
                assert_eq!(channel, RELIABLE_ORDERED);
                let seq = check(&data).expect("echo intact");
                assert_eq!(seq, next_recv, "echo out of order");
                assert_eq!(data.len(), len(seq));
                next_recv += 1;
                client.recycle(data);
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    unreliable
}

fn ten_thousand_ordered(ip: IpAddr) {
    let Some(server) = EchoServer::start(ip, ServerConfig::new(ServerIdentity::generate()), false)
    else {
        return;
    };
    let mut client = connect(&server, server.client_config());
    echo_ordered(&mut client, 10_000);
    let stats = client.client().stats();
    eprintln!("client: {stats:?}\nclient io: {:?}", client.io_stats());
    assert!(stats.messages_sent >= 10_000);
    assert!(stats.messages_received >= 10_000);
    disconnect(&mut client);
    let report = server.finish();
    assert_eq!(report.connected.len(), 1);
    assert_eq!(report.echoed, 10_000);
}

#[test]
fn ten_thousand_reliable_ordered_v4() {
    ten_thousand_ordered(V4);
}

#[test]
fn ten_thousand_reliable_ordered_v6() {
    ten_thousand_ordered(V6);
}

fn large_messages(ip: IpAddr) {
    const SIZE: usize = 200 * 1024;
    let connection = ConnectionConfig {
        max_message_size: SIZE,
        ..ConnectionConfig::default()
    };
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.connection = connection.clone();
    let Some(server) = EchoServer::start(ip, config, false) else {
        return;
    };
    let mut client_config = server.client_config();
    client_config.connection = connection;
    let mut client = connect(&server, client_config);
    // Two on the ordered channel (their order is checked), one unordered, one a byte short.
    let sent = [
        (RELIABLE_ORDERED, message(1, SIZE)),
        (RELIABLE_ORDERED, message(2, SIZE)),
        (RELIABLE_UNORDERED, message(3, SIZE)),
        (RELIABLE_UNORDERED, message(4, SIZE - 1)),
    ];
    for (channel, data) in &sent {
        client.send(*channel, data).expect("send a 200 KiB message");
    }
    let mut ordered = Vec::new();
    let mut unordered = Vec::new();
    let give_up = deadline();
    while ordered.len() + unordered.len() < sent.len() {
        assert!(
            Instant::now() < give_up,
            "large echoes missing after {WALL:?}"
        );
        match client.run_until_event(Some(STEP)).expect("run_until_event") {
            Some(Event::Message { channel, data, .. }) => {
                let seq = check(&data).expect("large echo intact");
                if channel == RELIABLE_ORDERED {
                    ordered.push(seq);
                } else {
                    unordered.push(seq);
                }
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    eprintln!("client io: {:?}", client.io_stats());
    assert_eq!(ordered, [1, 2]);
    unordered.sort_unstable();
    assert_eq!(unordered, [3, 4]);
    disconnect(&mut client);
    assert_eq!(server.finish().echoed, 4);
}

#[test]
fn large_messages_v4() {
    large_messages(V4);
}

#[test]
fn large_messages_v6() {
    large_messages(V6);
}

/// 32 clients, each on its own thread, each echoing reliable-ordered and unreliable messages
/// through a server driven once per tick with `poll_once`.
fn many_clients(ip: IpAddr) {
    const CLIENTS: usize = 32;
    const RELIABLE: u32 = 300;
    const UNRELIABLE_COUNT: u32 = 100;
    let Some(server) = EchoServer::start(ip, ServerConfig::new(ServerIdentity::generate()), true)
    else {
        return;
    };
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let config = server.client_config();
            let addr = server.addr;
            let mut client = ClientDriver::connect(config, addr, SocketConfig::default())
                .expect("client socket");
            std::thread::spawn(move || {
                let give_up = deadline();
                let mut id = None;
                while id.is_none() {
                    assert!(Instant::now() < give_up, "no connection within {WALL:?}");
                    match client.run_until_event(Some(STEP)).expect("run_until_event") {
                        Some(Event::Connected { client }) => id = Some(client),
                        Some(other) => panic!("expected Connected, got {other:?}"),
                        None => {}
                    }
                }
                for seq in 0..UNRELIABLE_COUNT {
                    client
                        .send(UNRELIABLE, &message(seq, 48))
                        .expect("unreliable send");
                }
                let mut unreliable = echo_ordered(&mut client, RELIABLE);
                // Unreliable echoes still on their way.
                let linger = Instant::now() + Duration::from_millis(100);
                while let Some(ev) = client
                    .run_until_event(Some(linger.saturating_duration_since(Instant::now())))
                    .expect("run_until_event")
                {
                    if let Event::Message { channel, data, .. } = ev {
                        assert_eq!(channel, UNRELIABLE);
                        assert!(check(&data).is_some_and(|s| s < UNRELIABLE_COUNT));
                        unreliable += 1;
                    }
                }
                let stats = client.client().stats();
                disconnect(&mut client);
                (id.expect("connected"), stats, unreliable)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in threads {
        let (id, stats, unreliable) = t.join().expect("client thread");
        assert!(stats.messages_sent >= u64::from(RELIABLE + UNRELIABLE_COUNT));
        assert!(unreliable <= UNRELIABLE_COUNT);
        ids.push(id);
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), CLIENTS, "every client has its own id");
    let report = server.finish();
    assert_eq!(report.connected.len(), CLIENTS);
    assert!(report.echoed >= u64::from(RELIABLE) * CLIENTS as u64);
}

#[test]
fn many_clients_v4() {
    many_clients(V4);
}

#[test]
fn many_clients_v6() {
    many_clients(V6);
}

/// A dual-stack server on [::] takes an IPv4 client.
#[test]
fn dual_stack_server_accepts_ipv4() {
    let bind = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);
    let config = ServerConfig::new(ServerIdentity::generate());
    let Some(server) =
        EchoServer::start_with(bind, config, SocketConfig::default().dual_stack(), false)
    else {
        return;
    };
    let v4 = SocketAddr::new(V4, server.addr.port());
    let mut client = ClientDriver::connect(server.client_config(), v4, SocketConfig::default())
        .expect("client socket");
    let give_up = deadline();
    loop {
        assert!(Instant::now() < give_up, "no connection over IPv4 to [::]");
        match client.run_until_event(Some(STEP)).expect("run_until_event") {
            Some(Event::Connected { .. }) => break,
            Some(other) => panic!("expected Connected, got {other:?}"),
            None => {}
        }
    }
    echo_ordered(&mut client, 100);
    disconnect(&mut client);
    server.finish();
}

/// An idle connection wakes its driver only for heartbeats, not in a spin: over half a second
/// both sides wake a handful of times (a spinning loop would count in the thousands).
#[test]
fn idle_drivers_do_not_spin() {
    let Some(server) = EchoServer::start(V4, ServerConfig::new(ServerIdentity::generate()), false)
    else {
        return;
    };
    let mut client = connect(&server, server.client_config());
    let before = client.io_stats().wakeups;
    let idle = client
        .run_until_event(Some(Duration::from_millis(500)))
        .expect("run_until_event");
    assert_eq!(idle, None, "no event on an idle connection");
    let wakeups = client.io_stats().wakeups - before;
    assert!(
        wakeups < 200,
        "{wakeups} wakeups in 500 ms of idling: {:?}, timeout in {:?}",
        client.io_stats(),
        client
            .client()
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()))
    );
    disconnect(&mut client);
    let report = server.finish();
    // The server's STEP-bounded waits add about 10 a second for the whole test.
    assert!(
        report.wakeups < 2000,
        "server woke {} times",
        report.wakeups
    );
}

#[test]
fn wait_for_event_leaves_the_events_to_poll_event() {
    let config = ServerConfig::new(ServerIdentity::generate());
    let Ok(mut server) = ServerDriver::bind(
        "127.0.0.1:0".parse().unwrap(),
        config,
        SocketConfig::default(),
    ) else {
        return;
    };
    let key = server.server().public_key();
    let addr = server.local_addr().unwrap();
    let mut client =
        ClientDriver::connect(ClientConfig::new(key), addr, SocketConfig::default()).unwrap();
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut got = None;
    while got.is_none() && Instant::now() < give_up {
        while client
            .wait_for_event(Some(Duration::from_millis(5)))
            .unwrap()
        {
            if let Some(Event::Connected { .. }) = client.poll_event() {
                client.send(ChannelId(3), b"waited").unwrap();
            }
        }
        if server
            .wait_for_event(Some(Duration::from_millis(5)))
            .unwrap()
        {
            while let Some(event) = server.poll_event() {
                if let Event::Message { data, .. } = event {
                    got = Some(data);
                }
            }
        }
    }
    assert_eq!(got.as_deref(), Some(&b"waited"[..]));
}

/// A server requiring connect tokens, set up by `ServerDriver::bind` alone (which gives it the
/// wall clock and its bound address), admits a client through `ClientDriver::connect_with_token`
/// with the id the token names, and refuses one without a token.
#[test]
fn connect_tokens_through_the_drivers() {
    use tickwire::token::TokenSigner;
    use tickwire::TokenPolicy;
    let backend = TokenSigner::generate();
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.tokens = Some(TokenPolicy {
        authority: backend.public_key(),
        required: true,
    });
    let mut server = ServerDriver::bind(
        "127.0.0.1:0".parse().unwrap(),
        config,
        SocketConfig::default(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let key = server.server().public_key();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let token = backend.issue(42, expires, &[addr]);
    let mut with = ClientDriver::connect_with_token(
        ClientConfig::new(key),
        addr,
        &token,
        SocketConfig::default(),
    )
    .unwrap();
    let mut without =
        ClientDriver::connect(ClientConfig::new(key), addr, SocketConfig::default()).unwrap();
    let (mut admitted, mut refused) = (None, None);
    let give_up = deadline();
    while (admitted.is_none() || refused.is_none()) && Instant::now() < give_up {
        server.poll_once().unwrap();
        while server.poll_event().is_some() {}
        with.poll_once().unwrap();
        while let Some(ev) = with.poll_event() {
            match ev {
                Event::Connected { client } => admitted = Some(client),
                Event::Disconnected { reason, .. } => panic!("token refused: {reason}"),
                _ => {}
            }
        }
        without.poll_once().unwrap();
        while let Some(ev) = without.poll_event() {
            if let Event::Disconnected { reason, .. } = ev {
                refused = Some(reason.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(admitted, Some(ClientId(42)));
    assert!(refused.is_some(), "the client without a token is refused");
    assert_eq!(server.server().stats().refused_token, 1);
}
