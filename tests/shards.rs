//! Shards over `SO_REUSEPORT` (`tickwire::io::ShardedServer`): clients spread over the shards,
//! ids unique across them, one operator view, and clients that move to another shard under
//! load (a NAT rebinding: a new source port) keep their connection with every reliable message
//! delivered exactly once and in order. Loopback only; every wait bounded.

#![cfg(target_os = "linux")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tickwire::io::{bind_socket, ClientDriver, Shard, ShardedServer, SocketConfig};
use tickwire::{
    ChannelId, ClientConfig, ClientId, Event, IpPrefix, SendError, ServerConfig, ServerIdentity,
    ServerKey,
};

const WALL: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_millis(20);
const RELIABLE_ORDERED: ChannelId = ChannelId(3);

/// What one shard's echo loop saw.
#[derive(Debug, Default)]
struct ShardLog {
    connected: Vec<ClientId>,
    /// The next sequence number expected from each client.
    next: HashMap<ClientId, u32>,
    /// Messages that came out of order or twice.
    errors: Vec<String>,
    relayed_in: u64,
    migrations: u64,
}

/// Echoes every reliable message back, checking each client's sequence numbers arrive
/// exactly once and in order, until `stop`.
fn echo_shard(mut shard: Shard, stop: Arc<AtomicBool>) -> ShardLog {
    let mut log = ShardLog::default();
    let mut backlog: HashMap<ClientId, std::collections::VecDeque<Vec<u8>>> = HashMap::new();
    let give_up = Instant::now() + WALL + Duration::from_secs(10);
    while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
        match shard.run_until_event(Some(STEP)).expect("run_until_event") {
            Some(Event::Connected { client }) => log.connected.push(client),
            Some(Event::Message { client, data, .. }) => {
                let seq = u32::from_be_bytes(data[..4].try_into().unwrap());
                let next = log.next.entry(client).or_default();
                if seq != *next {
                    log.errors
                        .push(format!("client {client}: got {seq}, expected {next}"));
                }
                *next = seq + 1;
                backlog.entry(client).or_default().push_back(data);
            }
            Some(Event::Disconnected { client, .. }) => {
                backlog.remove(&client);
            }
            _ => {}
        }
        for (&client, queue) in &mut backlog {
            while let Some(data) = queue.front() {
                match shard.send(client, RELIABLE_ORDERED, data) {
                    Ok(()) => {}
                    Err(SendError::QueueFull) => break,
                    Err(e) => panic!("echo to {client}: {e}"),
                }
                let data = queue.pop_front().unwrap();
                shard.recycle(data);
            }
        }
    }
    log.relayed_in = shard.relay_stats().taken;
    log.migrations = shard.server().stats().migrations;
    log
}

struct Running {
    handle: ShardedServer,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ShardLog>>,
}

fn start(shards: usize, clients: usize) -> Running {
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.max_clients = clients.max(64);
    config.max_clients_per_ip = clients.max(64);
    config.max_pending_per_ip = clients.max(64);
    let (handle, shards) = ShardedServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        config,
        SocketConfig::default(),
        shards,
    )
    .expect("bind shards");
    let stop = Arc::new(AtomicBool::new(false));
    let threads = shards
        .into_iter()
        .map(|shard| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || echo_shard(shard, stop))
        })
        .collect();
    Running {
        handle,
        stop,
        threads,
    }
}

impl Running {
    fn finish(self) -> Vec<ShardLog> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("shard thread"))
            .collect()
    }
}

fn message(seq: u32) -> Vec<u8> {
    let mut m = seq.to_be_bytes().to_vec();
    m.extend((0..60).map(|i| (seq as u8).wrapping_add(i)));
    m
}

/// A client that sends `count` reliable-ordered messages as its queue allows and checks every
/// echo comes back once and in order; after every `rebind_every` echoes it moves to a new
/// local port (a NAT rebinding). Returns its id and the number of rebinds.
fn run_client(addr: SocketAddr, key: ServerKey, count: u32, rebind_every: u32) -> (ClientId, u32) {
    let socket = SocketConfig::default();
    let mut driver = ClientDriver::connect(ClientConfig::new(key), addr, socket.clone()).unwrap();
    let give_up = Instant::now() + WALL;
    let id = loop {
        assert!(Instant::now() < give_up, "no connection");
        match driver.run_until_event(Some(STEP)).unwrap() {
            Some(Event::Connected { client }) => break client,
            Some(other) => panic!("expected Connected, got {other:?}"),
            None => {}
        }
    };
    let (mut sent, mut echoed, mut rebinds) = (0u32, 0u32, 0u32);
    while echoed < count {
        assert!(
            Instant::now() < give_up,
            "client {id}: {echoed} of {count} echoes"
        );
        while sent < count && sent - echoed < 256 {
            match driver.send(RELIABLE_ORDERED, &message(sent)) {
                Ok(()) => sent += 1,
                Err(SendError::QueueFull) => break,
                Err(e) => panic!("client {id}: send {sent}: {e}"),
            }
        }
        match driver.run_until_event(Some(STEP)).unwrap() {
            Some(Event::Message { data, .. }) => {
                assert_eq!(data, message(echoed), "client {id}: echo out of order");
                echoed += 1;
                if rebind_every > 0 && echoed % rebind_every == 0 && echoed < count {
                    // A NAT rebinding: the same connection, a new source port (the kernel's
                    // hash may pick another shard for it).
                    let client = driver.into_client();
                    let udp = bind_socket("127.0.0.1:0".parse().unwrap(), &socket).unwrap();
                    driver = ClientDriver::with_socket(client, udp, &socket).unwrap();
                    rebinds += 1;
                }
            }
            Some(other) => panic!("client {id}: unexpected {other:?}"),
            None => {}
        }
    }
    driver.disconnect("done");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if let Some(Event::Disconnected { .. }) = driver.run_until_event(Some(STEP)).unwrap() {
            break;
        }
    }
    (id, rebinds)
}

/// Clients spread over two shards, with ids unique across them; the handle lists, kicks,
/// bans and counts over both.
#[test]
fn clients_spread_over_shards_with_one_operator_view() {
    let running = start(2, 32);
    let (addr, key) = (running.handle.local_addr(), running.handle.public_key());
    let mut drivers = Vec::new();
    for _ in 0..32 {
        drivers.push(
            ClientDriver::connect(ClientConfig::new(key), addr, SocketConfig::default()).unwrap(),
        );
    }
    let mut ids = Vec::new();
    let give_up = Instant::now() + WALL;
    for d in &mut drivers {
        loop {
            assert!(Instant::now() < give_up, "no connection");
            match d.run_until_event(Some(STEP)).unwrap() {
                Some(Event::Connected { client }) => {
                    ids.push(client);
                    break;
                }
                Some(other) => panic!("{other:?}"),
                None => {}
            }
        }
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 32, "ids unique across shards: {ids:?}");
    let listed: Vec<ClientId> = running.handle.clients().iter().map(|c| c.id).collect();
    assert_eq!(listed, sorted);
    let stats = running.handle.stats();
    assert_eq!(stats.len(), 2);
    let per_shard: Vec<usize> = stats.iter().map(|s| s.clients).collect();
    assert_eq!(per_shard.iter().sum::<usize>(), 32);
    // 32 ports hashed over 2 sockets: both get some (all on one: 2^-31).
    assert!(per_shard.iter().all(|&n| n > 0), "{per_shard:?}");
    // Kick finds the client wherever it is.
    assert!(running.handle.kick(ids[5], "bye"));
    assert!(!running.handle.kick(ClientId(9999), "nobody"));
    // A ban reaches every shard and kicks everyone on 127.0.0.1 but the one gone already.
    let kicked = running
        .handle
        .ban("127.0.0.1".parse::<IpPrefix>().unwrap(), None);
    assert!(kicked.len() >= 31, "{kicked:?}");
    assert_eq!(running.handle.bans().len(), 1);
    assert!(running.handle.unban("127.0.0.1".parse().unwrap()));
    assert_eq!(running.handle.shutdown("test over"), 2);
    let logs = running.finish();
    assert_eq!(logs.iter().map(|l| l.connected.len()).sum::<usize>(), 32);
}

/// Clients under load move to new source ports (a NAT rebinding) four times each; about half
/// the moves land on the other shard, which relays to the owner. Every reliable message
/// reaches the server exactly once and in order, and every echo the client exactly once and
/// in order, and no connection is lost.
#[test]
fn clients_moved_between_shards_under_load_lose_and_repeat_nothing() {
    const CLIENTS: usize = 12;
    const COUNT: u32 = 2_000;
    let running = start(2, CLIENTS);
    let (addr, key) = (running.handle.local_addr(), running.handle.public_key());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| std::thread::spawn(move || run_client(addr, key, COUNT, COUNT / 5)))
        .collect();
    let results: Vec<(ClientId, u32)> = clients
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let stats = running.handle.stats();
    // The clients left: the shards that relayed for them forget their addresses (the owner
    // gives each back within a second of its connection ending).
    let give_up = Instant::now() + Duration::from_secs(15);
    loop {
        let forwarding: u64 = running
            .handle
            .stats()
            .iter()
            .map(|s| s.info.relay.forwarding)
            .sum();
        if forwarding == 0 {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "{forwarding} addresses still relayed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = running.finish();
    for log in &logs {
        assert!(log.errors.is_empty(), "{:?}", log.errors);
    }
    // Every client connected once, on one shard, and the server saw all its messages there.
    let mut seen: HashMap<ClientId, u32> = HashMap::new();
    for log in &logs {
        for (&client, &next) in &log.next {
            assert!(
                seen.insert(client, next).is_none(),
                "{client} on two shards"
            );
        }
        assert_eq!(log.connected.len(), log.next.len());
    }
    for (id, rebinds) in &results {
        assert_eq!(*rebinds, 4);
        assert_eq!(seen.get(id), Some(&COUNT), "client {id}");
    }
    let migrations: u64 = logs.iter().map(|l| l.migrations).sum();
    let relayed: u64 = logs.iter().map(|l| l.relayed_in).sum();
    let offered: u64 = stats.iter().map(|s| s.info.relay.offered).sum();
    eprintln!("migrations {migrations}, relayed datagrams taken {relayed}, offered {offered}");
    // (A move whose path validation was still under way when the client left is not counted.)
    assert!(migrations >= (CLIENTS * 3) as u64, "{migrations}");
    // 48 moves, each to the other shard with probability 1/2: none at all is 2^-48.
    assert!(
        relayed > 0 && offered > 0,
        "no client landed on the other shard"
    );
}

/// A client that resumes its session from a new socket (a new port, so the kernel's hash may
/// pick the other shard) gets its id back every time: a shard that did not issue the ticket
/// relays the AUTH to the one that did.
#[test]
fn resumption_works_from_whichever_shard_the_new_port_hashes_to() {
    use tickwire::Client;
    let running = start(2, 8);
    let (addr, key) = (running.handle.local_addr(), running.handle.public_key());
    let socket = SocketConfig::default();
    let until_event = |driver: &mut ClientDriver, what: &str| -> Event {
        let give_up = Instant::now() + WALL;
        loop {
            assert!(Instant::now() < give_up, "no {what}");
            if let Some(ev) = driver.run_until_event(Some(STEP)).unwrap() {
                return ev;
            }
        }
    };
    let mut driver = ClientDriver::connect(ClientConfig::new(key), addr, socket.clone()).unwrap();
    let Event::Connected { client: id } = until_event(&mut driver, "connection") else {
        panic!("not connected");
    };
    for round in 0..20 {
        let resumption = driver.client().resumption().expect("a resumption ticket");
        assert_eq!(resumption.client, id);
        // The old socket goes away without a close (a crash or a lost network); the new one
        // resumes.
        drop(driver);
        let client = Client::resume(
            ClientConfig::new(key),
            addr,
            Instant::now(),
            &[],
            &resumption,
        )
        .unwrap();
        let udp = bind_socket("127.0.0.1:0".parse().unwrap(), &socket).unwrap();
        driver = ClientDriver::with_socket(client, udp, &socket).unwrap();
        match until_event(&mut driver, "resumed connection") {
            Event::Connected { client } => assert_eq!(client, id, "round {round}"),
            other => panic!("round {round}: {other:?}"),
        }
        driver.send(RELIABLE_ORDERED, &message(0)).unwrap();
        match until_event(&mut driver, "echo") {
            Event::Message { data, .. } => assert_eq!(data, message(0)),
            other => panic!("round {round}: {other:?}"),
        }
    }
    let stats = running.handle.stats();
    let resumed: u64 = stats.iter().map(|s| s.server.resumed).sum();
    let relayed: u64 = stats.iter().map(|s| s.info.relay.taken).sum();
    assert_eq!(resumed, 20);
    // 20 new ports, each on the other shard with probability 1/2: none is 2^-20.
    assert!(relayed > 0, "no resumption landed on the other shard");
    // Every resumed connection lives on the one shard that issued the id.
    assert_eq!(stats.iter().filter(|s| s.clients > 0).count(), 1);
    running.finish();
}

/// A stranger's sealed-looking datagram from an unknown address, `len` octets of plaintext
/// under a key no connection has (fragmented past one datagram): its datagrams.
fn stranger_datagrams(pn: u32, len: usize) -> Vec<Vec<u8>> {
    use tickwire::pipeline::{encode_into, fragment, PacketKey, Seal, SendOptions};
    use tickwire::wire::TypeFields;
    let key = PacketKey::new(&[7; 16], &[8; 12]);
    let mut out = Vec::new();
    let header = encode_into(
        &mut Vec::new(),
        TypeFields::Default,
        &vec![0x55; len],
        SendOptions::default(),
        Seal::Sealed {
            key: &key,
            packet_number: pn,
        },
        &mut out,
    )
    .unwrap();
    let count = header.fragment.map_or(1, |f| usize::from(f.count));
    (0..count)
        .map(|i| {
            let mut buf = vec![0u8; 1500];
            let n =
                fragment::write_datagram(&header, &TypeFields::Default, &out, i, &mut buf).unwrap();
            buf.truncate(n);
            buf
        })
        .collect()
}

/// A stranger floods a shard that has no connection with sealed-looking datagrams and
/// fragments from an unknown address. A shard with no connection used to relay every one to
/// every other shard, unbudgeted (a search of no connections cost nothing), and every
/// fragment too (which no shard tries as a migration). Relays stay within the trial budget
/// (4,096 searches per second per shard), and fragments are never relayed.
#[test]
fn a_stranger_cannot_make_an_empty_shard_relay_without_bound() {
    let config = ServerConfig::new(ServerIdentity::generate());
    let (handle, mut shards) = ShardedServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        config,
        SocketConfig::default(),
        2,
    )
    .expect("bind shards");
    let addr = handle.local_addr();
    let small = stranger_datagrams(5, 100).remove(0);
    let fragment = stranger_datagrams(6, 3000).remove(0);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    const SENT: usize = 12_000;
    let start = Instant::now();
    let pump = |shards: &mut Vec<Shard>| {
        for s in shards.iter_mut() {
            s.poll_once().unwrap();
        }
    };
    for i in 0..SENT {
        let d = if i % 3 == 0 { &fragment } else { &small };
        udp.send_to(d, addr).unwrap();
        if i % 64 == 63 {
            pump(&mut shards);
        }
    }
    // Loopback queues a datagram at the receiver within send_to (or drops it when the buffer
    // is full): pump until nothing more comes.
    let mut received = u64::MAX;
    for _ in 0..1000 {
        pump(&mut shards);
        let now: u64 = shards.iter().map(|s| s.io_stats().datagrams_received).sum();
        if now == received {
            break;
        }
        received = now;
    }
    // Each shard's clock seconds since its first datagram: at most this many budget windows.
    let windows = start.elapsed().as_secs() + 1;
    let received: u64 = shards.iter().map(|s| s.io_stats().datagrams_received).sum();
    let offered: u64 = shards.iter().map(|s| s.relay_stats().offered).sum();
    let refused: u64 = shards.iter().map(|s| s.relay_stats().refused).sum();
    eprintln!("received {received}, offered {offered}, refused {refused}, {windows} windows");
    assert!(received >= SENT as u64 / 2, "{received} of {SENT} arrived");
    // One source address: one shard took them all. At most its trial budget was relayed.
    assert!(
        offered <= 4096 * windows,
        "{offered} relays from {received} stranger datagrams in {windows} s"
    );
    // Fragments (a third) are never relayed.
    assert!(offered <= received * 2 / 3 + 1, "{offered} of {received}");
}

/// A shard that falls behind (its thread busy elsewhere) while another relays to it: its
/// inbox used to grow with every relay (the channel between shards had no bound; a stranger
/// spoofing an address another shard relays, or sealed-looking datagrams within the trial
/// budget, fill it at the sender's pace). At most 1,024 relayed datagrams wait in a shard's
/// inbox; the rest are dropped and counted by the shard that relays.
#[test]
fn a_shard_that_falls_behind_holds_a_bounded_inbox_of_relays() {
    let config = ServerConfig::new(ServerIdentity::generate());
    let (handle, mut shards) = ShardedServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        config,
        SocketConfig::default(),
        2,
    )
    .expect("bind shards");
    let addr = handle.local_addr();
    let small = stranger_datagrams(5, 100).remove(0);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Which shard the kernel's hash gives this source address.
    udp.send_to(&small, addr).unwrap();
    for s in shards.iter_mut() {
        s.poll_once().unwrap();
    }
    let r = shards
        .iter()
        .position(|s| s.io_stats().datagrams_received == 1)
        .expect("one shard took it");
    let behind = 1 - r;
    // The other shard is not driven while 6,000 more arrive.
    for i in 0..6_000 {
        udp.send_to(&small, addr).unwrap();
        if i % 64 == 63 {
            shards[r].poll_once().unwrap();
        }
    }
    for _ in 0..100 {
        shards[r].poll_once().unwrap();
    }
    let offered = shards[r].relay_stats().offered;
    // Now it catches up: what waited in its inbox.
    for _ in 0..10 {
        shards[behind].poll_once().unwrap();
    }
    let waited = shards[behind].relay_stats().refused;
    eprintln!("offered {offered}, waited {waited}");
    assert!(offered > 2_000, "{offered}");
    assert!(waited <= 1_024 + 1, "{waited} relays waited in the inbox");
    assert_eq!(
        shards[r].relay_stats().dropped,
        offered - waited,
        "the relays left out are counted"
    );
}

/// A shard's thread that panics (a bug in the application's code on it) used to leave in the
/// tables every shard shares what its server held: its clients' per-IP counts (so with
/// `max_clients_per_ip` their IP was refused by every other shard for good, "too many
/// connections from this address") and its ids in the resumption map (so every resumption of
/// them was relayed to the dead shard, never answered). A shard's server gives both back when
/// it goes away; the other shards go on serving.
#[test]
fn a_shard_that_panics_gives_back_what_it_held_in_the_shared_tables() {
    use tickwire::Client;
    let mut config = ServerConfig::new(ServerIdentity::generate());
    config.max_clients_per_ip = 1;
    let (handle, shards) = ShardedServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        config,
        SocketConfig::default(),
        2,
    )
    .expect("bind shards");
    let (addr, key) = (handle.local_addr(), handle.public_key());
    let stop = Arc::new(AtomicBool::new(false));
    // The first shard to connect a client panics once the client is connected.
    let died = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = shards
        .into_iter()
        .map(|mut shard| {
            let (stop, died) = (Arc::clone(&stop), Arc::clone(&died));
            std::thread::spawn(move || {
                let give_up = Instant::now() + WALL;
                while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
                    if let Some(Event::Connected { .. }) =
                        shard.run_until_event(Some(STEP)).unwrap()
                    {
                        if !died.swap(true, Ordering::Relaxed) {
                            panic!("an application bug on shard {}", shard.index());
                        }
                    }
                }
            })
        })
        .collect();
    let socket = SocketConfig::default();
    let until_event = |driver: &mut ClientDriver, what: &str| -> Event {
        let give_up = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < give_up, "no {what}");
            if let Some(ev) = driver.run_until_event(Some(STEP)).unwrap() {
                return ev;
            }
        }
    };
    let mut first = ClientDriver::connect(ClientConfig::new(key), addr, socket.clone()).unwrap();
    assert!(matches!(
        until_event(&mut first, "connection"),
        Event::Connected { .. }
    ));
    // The shard that holds it dies (its socket closes with it: the kernel sends everything to
    // the other shard from now on).
    let give_up = Instant::now() + WALL;
    while !threads.iter().any(JoinHandle::is_finished) {
        assert!(Instant::now() < give_up, "no shard died");
        std::thread::yield_now();
    }
    let resumption = first.client().resumption().expect("a resumption ticket");
    drop(first);
    // A new client from the same IP gets in.
    let mut second = ClientDriver::connect(ClientConfig::new(key), addr, socket.clone()).unwrap();
    match until_event(&mut second, "second connection") {
        Event::Connected { .. } => {}
        other => panic!("the dead shard's client still counts for its IP: {other:?}"),
    }
    second.disconnect("done");
    loop {
        if let Event::Disconnected { .. } = until_event(&mut second, "disconnection") {
            break;
        }
    }
    // The dead shard's client resumes from a new socket: the live shard answers (the ticket's
    // secret died with its shard, so it is a new session).
    let client = Client::resume(
        ClientConfig::new(key),
        addr,
        Instant::now(),
        &[],
        &resumption,
    )
    .unwrap();
    let udp = bind_socket("127.0.0.1:0".parse().unwrap(), &socket).unwrap();
    let mut resumed = ClientDriver::with_socket(client, udp, &socket).unwrap();
    match until_event(&mut resumed, "resumed connection") {
        Event::Connected { .. } => {}
        other => panic!("{other:?}"),
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = threads.into_iter().map(JoinHandle::join).collect();
    assert_eq!(
        results.iter().filter(|r| r.is_err()).count(),
        1,
        "one shard panicked, the other went on"
    );
}

/// A stranger sends AUTHs resuming a real client's id (ids are small and sequential: easy to
/// guess) with a forged ticket, from many spoofed addresses. The shard that did not issue the
/// id relays each to the one that did, which made a half-open handshake for the address (a
/// new client: the ticket does not check out) and told the relaying shard the address was its
/// own: that shard then kept forwarding it for good, and enough such addresses filled its
/// forwarding map (65,536), after which every moved client's datagrams went the slow way
/// (offered to every shard, within the trial budget). An address is claimed only for a
/// connection or a handshake that proved its id (a valid ticket or token).
#[test]
fn forged_resumptions_do_not_fill_a_shards_forwarding_map() {
    use tickwire::crypto::EphemeralKey;
    use tickwire::endpoint::handshake;
    let running = start(2, 8);
    let (addr, key) = (running.handle.local_addr(), running.handle.public_key());
    let mut driver =
        ClientDriver::connect(ClientConfig::new(key), addr, SocketConfig::default()).unwrap();
    let give_up = Instant::now() + WALL;
    let id = loop {
        assert!(Instant::now() < give_up, "no connection");
        if let Some(Event::Connected { client }) = driver.run_until_event(Some(STEP)).unwrap() {
            break client;
        }
    };
    let mut ticket = [0xAA; handshake::TICKET_LEN];
    ticket[..8].copy_from_slice(&id.0.to_be_bytes());
    // 40 spoofed addresses (one per IP, so no per-IP limit stops them): about half hash to
    // the shard that did not issue the id.
    for i in 0..40u8 {
        let udp =
            std::net::UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 1, i + 1), 0)).unwrap();
        let auth =
            handshake::client_auth(EphemeralKey::generate().public_bytes(), &[], Some(&ticket));
        udp.send_to(&auth, addr).unwrap();
    }
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = running.handle.stats();
        let offered: u64 = stats.iter().map(|s| s.info.relay.offered).sum();
        let done: u64 = stats
            .iter()
            .map(|s| s.info.relay.taken + s.info.relay.refused)
            .sum();
        if offered > 0 && done == offered {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "relays not answered: {offered} offered, {done} done"
        );
        std::thread::yield_now();
    }
    // (Every answer's Claim is in the relaying shard's inbox before this command.)
    let stats = running.handle.stats();
    let offered: u64 = stats.iter().map(|s| s.info.relay.offered).sum();
    let forwarding: u64 = stats.iter().map(|s| s.info.relay.forwarding).sum();
    eprintln!("offered {offered}, forwarding {forwarding}");
    assert_eq!(
        forwarding, 0,
        "{forwarding} forged addresses forwarded for good"
    );
    drop(driver);
    running.finish();
}
