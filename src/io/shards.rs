//! [`ShardedServer`]: one address served by N [`Shard`]s, each a [`Server`] on its own
//! `SO_REUSEPORT` socket and its own thread.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::driver::{Endpoint, Io, IoStats};
use super::server::set_clock_and_addr;
use super::socket::{bind_with, SocketConfig};
use super::BindError;
use crate::config::ServerConfig;
use crate::crypto::ServerKey;
use crate::endpoint::{Ban, ClientInfo, IpPrefix, Server, ServerStats, SharedAdmission, Unclaimed};
use crate::types::{ChannelId, ClientId, Event, SendError, Transmit};

/// Addresses a shard relays to their owner at most (past it, a moved client's datagrams are
/// offered to every shard each time, which still works, at a higher cost).
const MAX_FORWARD: usize = 1 << 16;

/// Relayed datagrams waiting in one shard's inbox at most (past it, a relay to that shard is
/// dropped and counted in the sender's [`RelayStats::dropped`]: a real client resends). Without
/// it, a shard that falls behind (or a stranger spoofing a relayed address at line rate) would
/// grow another shard's inbox without bound.
const MAX_INBOX_RELAYS: usize = 1024;

/// What crosses from one shard (or the operator's handle) to a shard.
enum Msg {
    /// A datagram shard `origin` received from `addr`; `direct` if it came through the
    /// origin's forwarding map (the origin already knows this shard owns `addr`).
    Relay {
        origin: usize,
        addr: SocketAddr,
        data: Vec<u8>,
        direct: bool,
    },
    /// Shard `owner` owns `addr`: relay its datagrams there.
    Claim { addr: SocketAddr, owner: usize },
    /// The shard this was relayed to no longer owns `addr`.
    Unclaim { addr: SocketAddr },
    /// An operator's command.
    Run(Command),
}

/// An operator's command, run on a shard's server.
type Command = Box<dyn FnOnce(&mut Server, &ShardInfo) + Send>;

/// How to reach one shard.
struct Peer {
    tx: Sender<Msg>,
    waker: mio::Waker,
    /// Relayed datagrams sent to it and not yet taken.
    relays: AtomicUsize,
}

impl Peer {
    fn send(&self, msg: Msg) {
        if self.tx.send(msg).is_ok() {
            if let Err(e) = self.waker.wake() {
                tracing::debug!(error = %e, "waking a shard failed");
            }
        }
    }

    /// Sends a relayed datagram unless [`MAX_INBOX_RELAYS`] wait already; returns whether it
    /// went.
    fn relay(&self, msg: Msg) -> bool {
        if self.relays.fetch_add(1, Ordering::Relaxed) >= MAX_INBOX_RELAYS {
            self.relays.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.send(msg);
        true
    }
}

/// What every shard and handle shares.
struct Shared {
    local_addr: SocketAddr,
    public_key: ServerKey,
    peers: Vec<Peer>,
}

/// Counters of one shard's relaying (see [`ShardedServer`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagrams this shard could not place and offered to every other shard.
    pub offered: u64,
    /// Datagrams this shard relayed straight to the shard that owns their address.
    pub forwarded: u64,
    /// Relayed datagrams this shard took (it owned their address, or a connection of its own
    /// opened them: a migration from another shard's hash).
    pub taken: u64,
    /// Relayed datagrams this shard did not own (dropped, as a lone server drops a datagram
    /// from an unknown address).
    pub refused: u64,
    /// Addresses this shard relays to another shard now.
    pub forwarding: u64,
    /// Relays this shard dropped because the target shard's inbox held 1,024 relayed
    /// datagrams not yet taken (it falls behind, or is flooded).
    pub dropped: u64,
}

/// One shard's state as an operator's command sees it.
#[derive(Debug, Clone, Copy)]
pub struct ShardInfo {
    /// The shard's index, 0..N.
    pub index: usize,
    /// Its socket counters at the start of the pass that runs the command.
    pub io: IoStats,
    /// Its relay counters.
    pub relay: RelayStats,
    /// Whether [`ShardedServer::shutdown`] (or [`Shard::shutdown`]) was called.
    pub shut_down: bool,
}

/// One shard's figures, from [`ShardedServer::stats`].
#[derive(Debug, Clone, Copy)]
pub struct ShardReport {
    /// The shard's socket and relay counters.
    pub info: ShardInfo,
    /// Connected clients.
    pub clients: usize,
    /// Half-open handshakes.
    pub pending: usize,
    /// Its server's counters.
    pub server: ServerStats,
}

/// The endpoint a shard's `Io` drives: its server, its inbox and its forwarding map.
struct Core {
    index: usize,
    server: Server,
    inbox: Receiver<Msg>,
    shared: Arc<Shared>,
    /// Addresses another shard owns: their datagrams go there.
    forward: HashMap<SocketAddr, usize>,
    /// Addresses this shard claimed from another (address, that shard), swept once a second:
    /// one this shard no longer knows is given back (so the other's map does not grow).
    claimed: HashMap<SocketAddr, usize>,
    next_sweep: Instant,
    unclaimed: Vec<Unclaimed>,
    relay: RelayStats,
}

impl Core {
    fn offer_unclaimed(&mut self) {
        self.server.take_unclaimed(&mut self.unclaimed);
        if self.unclaimed.is_empty() {
            return;
        }
        let others = self.shared.peers.len() - 1;
        for (target, addr, data) in self.unclaimed.drain(..) {
            self.relay.offered += 1;
            if let Some(shard) = target {
                // A resumption for the shard that issued its ticket.
                let sent = self.shared.peers[shard].relay(Msg::Relay {
                    origin: self.index,
                    addr,
                    data,
                    direct: false,
                });
                self.relay.dropped += u64::from(!sent);
                continue;
            }
            let mut data = Some(data);
            let mut left = others;
            for (i, peer) in self.shared.peers.iter().enumerate() {
                if i == self.index {
                    continue;
                }
                left -= 1;
                let data = if left == 0 {
                    data.take().expect("taken once, last")
                } else {
                    data.clone().expect("not taken yet")
                };
                let sent = peer.relay(Msg::Relay {
                    origin: self.index,
                    addr,
                    data,
                    direct: false,
                });
                self.relay.dropped += u64::from(!sent);
            }
        }
    }

    fn on_msg(&mut self, msg: Msg, io: &IoStats) {
        match msg {
            Msg::Relay {
                origin,
                addr,
                mut data,
                direct,
            } => {
                self.shared.peers[self.index]
                    .relays
                    .fetch_sub(1, Ordering::Relaxed);
                let owned = self.server.handle_relayed(Instant::now(), addr, &mut data);
                if owned {
                    self.relay.taken += 1;
                    // Not direct: the origin has no entry for `addr` (yet), so claim it.
                    if !direct {
                        self.claimed.insert(addr, origin);
                        self.shared.peers[origin].send(Msg::Claim {
                            addr,
                            owner: self.index,
                        });
                    }
                } else {
                    self.relay.refused += 1;
                    if direct {
                        self.shared.peers[origin].send(Msg::Unclaim { addr });
                    }
                }
            }
            Msg::Claim { addr, owner } => {
                if !self.server.knows_addr(&addr) && self.forward.len() < MAX_FORWARD {
                    self.forward.insert(addr, owner);
                }
            }
            Msg::Unclaim { addr } => {
                self.forward.remove(&addr);
            }
            Msg::Run(f) => {
                let info = self.info(io);
                f(&mut self.server, &info);
            }
        }
    }

    fn info(&self, io: &IoStats) -> ShardInfo {
        let mut relay = self.relay;
        relay.forwarding = self.forward.len() as u64;
        ShardInfo {
            index: self.index,
            io: *io,
            relay,
            shut_down: self.server.is_shut_down(),
        }
    }
}

impl Endpoint for Core {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        if !self.forward.is_empty() {
            if let Some(&owner) = self.forward.get(&from) {
                let sent = self.shared.peers[owner].relay(Msg::Relay {
                    origin: self.index,
                    addr: from,
                    data: data.to_vec(),
                    direct: true,
                });
                self.relay.forwarded += u64::from(sent);
                self.relay.dropped += u64::from(!sent);
                return;
            }
        }
        self.server.handle_datagram(now, from, data);
        self.offer_unclaimed();
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.server.handle_timeout(now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.server.poll_transmit(now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.server.poll_timeout()
    }
    fn poll_event(&mut self) -> Option<Event> {
        self.server.poll_event()
    }
    fn has_event(&self) -> bool {
        self.server.has_event()
    }
    fn service(&mut self, io: &IoStats) {
        if !self.claimed.is_empty() {
            let now = Instant::now();
            if now >= self.next_sweep {
                self.next_sweep = now + Duration::from_secs(1);
                let (server, peers) = (&self.server, &self.shared.peers);
                self.claimed.retain(|addr, origin| {
                    let keep = server.knows_addr(addr);
                    if !keep {
                        peers[*origin].send(Msg::Unclaim { addr: *addr });
                    }
                    keep
                });
            }
        }
        // Bounded, so that a flood of relays cannot keep the shard from its own socket; the
        // rest are taken in the next pass, which the wake below makes come at once.
        for _ in 0..4096 {
            let Ok(msg) = self.inbox.try_recv() else {
                return;
            };
            self.on_msg(msg, io);
        }
        let _ = self.shared.peers[self.index].waker.wake();
    }
}

/// The operator's handle on N [`Shard`]s serving one address: each a [`Server`] on its own
/// `SO_REUSEPORT` socket and its own thread. Cheap to clone, usable from any thread.
///
/// # How the work is spread
/// Every shard's socket is bound to the same address with `SO_REUSEPORT`; Linux picks the
/// socket of each incoming datagram by a hash of its 4-tuple, so every datagram of one client
/// address reaches the same shard, whose [`Server`] owns that client's connection. A shard
/// runs the same loop as a [`super::ServerDriver`] (the same methods, the same `Io`) and sends
/// from its own socket, whose local address and port are everyone's: the client sees one
/// server.
///
/// # What the shards share
/// - the identity, the connect-token policy and every other setting: each shard's server has
///   a copy of the one [`ServerConfig`];
/// - client ids: one atomic counter, so ids are unique across the shards (and with connect
///   tokens the backend's ids are the backend's);
/// - the per-IP admission counts (connections and half-open handshakes per IP, IPv6 per /64)
///   and the connect tokens used (a token is refused from a second address whichever shard
///   saw the first): one small mutex each, taken when an AUTH is answered, a handshake ends,
///   a connection ends or moves, never per datagram;
/// - resumption: the shard that issued an id keeps its ticket's secret; a map of id to shard
///   (one mutex, taken at AUTHs that carry a ticket, finished handshakes and ticket expiry)
///   lets a shard that receives an AUTH resuming another shard's id (the client's new socket
///   hashed elsewhere) relay it there, as below;
/// - bans and the allow-list: each shard keeps its own list and [`ShardedServer::ban`],
///   [`ShardedServer::unban`] and [`ShardedServer::allow`] change every shard's (so a
///   datagram's check takes no lock).
///
/// `max_clients`, `max_pending` and `memory_budget` are each shard's: N shards hold up to N
/// times as many.
///
/// # A client that moves to another shard
/// A client behind a NAT that rebinds (a new source port) or that moves network arrives from
/// a new address, whose hash may pick another shard. That shard (B) finds no connection for the
/// address and no connection of its own that opens the packet; it then relays the datagram,
/// through the shards' in-memory channels, to every other shard, and the one whose connection
/// opens it (A) takes it as a migration: it challenges the new address from its own socket
/// (same address and port, so the client sees the same server) and tells B that the address
/// is its own. From then on B relays every datagram from that address to A at once (one
/// lookup in a map B keeps, only while it has such addresses; A gives an address back within
/// about a second once none of its connections has it). The connection and its state
/// stay where they were: nothing is exported, and no reliable message is lost or delivered
/// twice (the test `tests/shards.rs` moves clients under load and checks exactly that). A
/// relayed client costs one channel message and one wake-up of A per datagram it sends.
/// Relays are bounded: at most 1,024 datagrams waiting per shard between two passes, only
/// those a shard searched its own connections for within its trial budget, and at most 1,024
/// relayed datagrams waiting in a shard's inbox (more are dropped: [`RelayStats::dropped`]).
///
/// # The operator's view
/// [`ShardedServer`] is a cheap, cloneable handle: [`ShardedServer::clients`],
/// [`ShardedServer::kick`], [`ShardedServer::ban`], [`ShardedServer::stats`],
/// [`ShardedServer::shutdown`] and the rest run on every shard (a closure sent through the
/// shard's channel with a [`mio::Waker`], run at the start of its next pass) and wait for the
/// answers. The shards must be driven (each thread in its loop) for them to answer; a shard
/// that does not answer within [`ShardedServer::ANSWER_TIMEOUT`] is left out.
///
/// ```
/// use std::time::Duration;
/// use tickwire::io::{ClientDriver, ShardedServer, SocketConfig};
/// use tickwire::{ChannelId, ClientConfig, Event, ServerConfig, ServerIdentity};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = ServerConfig::new(ServerIdentity::generate());
/// let (server, shards) =
///     ShardedServer::bind("127.0.0.1:0".parse()?, config, SocketConfig::default(), 2)?;
/// let threads: Vec<_> = shards
///     .into_iter()
///     .map(|mut shard| {
///         std::thread::spawn(move || -> std::io::Result<()> {
///             // Each shard echoes until its server is shut down and idle.
///             while !(shard.is_shut_down() && shard.server().is_idle()) {
///                 if let Some(Event::Message { client, channel, data }) =
///                     shard.run_until_event(Some(Duration::from_millis(50)))?
///                 {
///                     let _ = shard.send(client, channel, &data);
///                     shard.recycle(data);
///                 }
///             }
///             Ok(())
///         })
///     })
///     .collect();
///
/// let config = ClientConfig::new(server.public_key());
/// let mut client = ClientDriver::connect(config, server.local_addr(), SocketConfig::default())?;
/// while let Some(event) = client.run_until_event(Some(Duration::from_secs(10)))? {
///     match event {
///         Event::Connected { .. } => client.send(ChannelId(3), b"hello")?,
///         Event::Message { data, .. } => {
///             assert_eq!(data, b"hello");
///             break;
///         }
///         other => panic!("{other:?}"),
///     }
/// }
/// assert_eq!(server.clients().len(), 1);
/// server.shutdown("done");
/// for t in threads {
///     t.join().expect("shard thread")?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ShardedServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ShardedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedServer")
            .field("local_addr", &self.shared.local_addr)
            .field("shards", &self.shared.peers.len())
            .finish()
    }
}

impl ShardedServer {
    /// How long the handle waits for a shard to answer a command.
    pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

    /// Binds `shards` sockets to `addr` with `SO_REUSEPORT` (`0`: one per core, as
    /// [`std::thread::available_parallelism`] counts them; port 0 picks one free port for all),
    /// each with a [`Server`] of `config`, and returns the handle and the shards, to run each
    /// on its own thread. As [`super::ServerDriver::bind`] does, every server gets the wall
    /// clock and, with connect tokens, the bound address as one tokens may name.
    ///
    /// # Errors
    /// [`BindError::Config`] if `config` or `socket` is invalid, [`BindError::Io`] if a socket
    /// could not be set up or bound (also where the system has no `SO_REUSEPORT`, for more than
    /// one shard).
    pub fn bind(
        addr: SocketAddr,
        config: ServerConfig,
        socket: SocketConfig,
        shards: usize,
    ) -> Result<(Self, Vec<Shard>), BindError> {
        socket.validate()?;
        config.validate()?;
        let n = if shards == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        } else {
            shards
        };
        let reuse = n > 1;
        let first = bind_with(addr, &socket, reuse)?;
        let local_addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..n {
            sockets.push(bind_with(local_addr, &socket, reuse)?);
        }
        let admission = Arc::new(SharedAdmission::default());
        let tokens = config.tokens.is_some();
        let public_key = config.identity.public_key();
        let mut peers = Vec::with_capacity(n);
        let mut parts = Vec::with_capacity(n);
        for udp in sockets {
            let index = peers.len();
            // One shard alone relays nothing: a plain server.
            let mut server = if n > 1 {
                Server::new_shard(config.clone(), Arc::clone(&admission), index)?
            } else {
                Server::new(config.clone())?
            };
            set_clock_and_addr(&mut server, tokens, local_addr);
            let io = Io::new(udp, &socket)?;
            let (tx, rx) = mpsc::channel();
            peers.push(Peer {
                tx,
                waker: io.waker()?,
                relays: AtomicUsize::new(0),
            });
            parts.push((server, io, rx));
        }
        let shared = Arc::new(Shared {
            local_addr,
            public_key,
            peers,
        });
        let shards = parts
            .into_iter()
            .enumerate()
            .map(|(index, (server, io, inbox))| Shard {
                core: Core {
                    index,
                    server,
                    inbox,
                    shared: Arc::clone(&shared),
                    forward: HashMap::new(),
                    claimed: HashMap::new(),
                    next_sweep: Instant::now(),
                    unclaimed: Vec::new(),
                    relay: RelayStats::default(),
                },
                io,
            })
            .collect();
        Ok((Self { shared }, shards))
    }

    /// The address every shard is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The servers' public key, which clients pin.
    pub fn public_key(&self) -> ServerKey {
        self.shared.public_key
    }

    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.shared.peers.len()
    }

    /// Runs `f` on every shard's server (at the start of its next pass) and returns the
    /// answers, in shard order, of those that answered within [`Self::ANSWER_TIMEOUT`].
    /// It blocks until then: call it from a thread that drives no shard (a shard's own
    /// thread would answer only after the timeout, and be left out).
    pub fn run_on_each<R, F>(&self, f: F) -> Vec<R>
    where
        R: Send + 'static,
        F: Fn(&mut Server, &ShardInfo) -> R + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let (tx, rx) = mpsc::channel();
        for (i, peer) in self.shared.peers.iter().enumerate() {
            let (f, tx) = (Arc::clone(&f), tx.clone());
            peer.send(Msg::Run(Box::new(move |server, info| {
                let _ = tx.send((i, f(server, info)));
            })));
        }
        drop(tx);
        let give_up = Instant::now() + Self::ANSWER_TIMEOUT;
        let mut answers = Vec::with_capacity(self.shared.peers.len());
        while answers.len() < self.shared.peers.len() {
            let left = give_up.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(a) => answers.push(a),
                Err(_) => break,
            }
        }
        answers.sort_by_key(|(i, _)| *i);
        answers.into_iter().map(|(_, r)| r).collect()
    }

    /// Every shard's connected clients, by id.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let mut all: Vec<ClientInfo> = self
            .run_on_each(|s, _| s.clients())
            .into_iter()
            .flatten()
            .collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Connected clients over every shard.
    pub fn client_count(&self) -> usize {
        self.run_on_each(|s, _| s.client_count()).into_iter().sum()
    }

    /// Kicks `client` wherever it is (see [`Server::kick`]); returns whether it was connected.
    pub fn kick(&self, client: ClientId, reason: &str) -> bool {
        let reason = reason.to_string();
        self.run_on_each(move |s, _| s.kick(Instant::now(), client, &reason))
            .contains(&true)
    }

    /// Bans `prefix` on every shard (see [`Server::ban`]); returns the clients kicked.
    pub fn ban(&self, prefix: IpPrefix, duration: Option<Duration>) -> Vec<ClientId> {
        let mut kicked: Vec<ClientId> = self
            .run_on_each(move |s, _| s.ban(Instant::now(), prefix, duration))
            .into_iter()
            .flatten()
            .collect();
        kicked.sort();
        kicked
    }

    /// Lifts the ban of exactly `prefix` on every shard; returns whether there was one.
    pub fn unban(&self, prefix: IpPrefix) -> bool {
        self.run_on_each(move |s, _| s.unban(prefix))
            .contains(&true)
    }

    /// The bans in force (every shard has the same; the first that answers says).
    pub fn bans(&self) -> Vec<Ban> {
        self.run_on_each(|s, _| s.bans(Instant::now()))
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// Adds `prefix` to every shard's allow-list (see [`Server::allow`]).
    pub fn allow(&self, prefix: IpPrefix) {
        self.run_on_each(move |s, _| s.allow(prefix));
    }

    /// Queues a message for every connected client of every shard; returns how many took it.
    pub fn broadcast(&self, channel: ChannelId, message: &[u8]) -> usize {
        let message = message.to_vec();
        self.run_on_each(move |s, _| s.broadcast(Instant::now(), channel, &message))
            .into_iter()
            .sum()
    }

    /// Each shard's figures, in shard order.
    pub fn stats(&self) -> Vec<ShardReport> {
        self.run_on_each(|s, info| ShardReport {
            info: *info,
            clients: s.client_count(),
            pending: s.pending_count(),
            server: s.stats(),
        })
    }

    /// Starts a graceful drain on every shard (see [`Server::drain`]): new clients are
    /// refused, the connected ones stay. Returns how many shards took it.
    pub fn drain(&self) -> usize {
        self.run_on_each(|s, _| s.drain()).len()
    }

    /// Closes every connection of every shard with ERROR 2.1 (see [`Server::shutdown`]);
    /// keep the shards running until [`Shard::is_shut_down`] and their server
    /// [`Server::is_idle`], so that the closes are delivered. Returns how many shards took it.
    pub fn shutdown(&self, reason: &str) -> usize {
        let reason = reason.to_string();
        self.run_on_each(move |s, _| s.shutdown(Instant::now(), &reason))
            .len()
    }
}

/// One shard: a [`Server`] on its own `SO_REUSEPORT` socket, driven like a
/// [`super::ServerDriver`] (the same methods) on its own thread. Its events are its own
/// clients'; what it receives for clients of other shards it relays (see the
/// [`ShardedServer`] docs).
pub struct Shard {
    core: Core,
    io: Io,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("index", &self.core.index)
            .field("server", &self.core.server)
            .field("io", &self.io)
            .finish()
    }
}

impl Shard {
    /// The shard's index, 0..N.
    pub fn index(&self) -> usize {
        self.core.index
    }

    /// The address the socket is bound to (every shard's).
    pub fn local_addr(&self) -> SocketAddr {
        self.core.shared.local_addr
    }

    /// The handle on every shard.
    pub fn handle(&self) -> ShardedServer {
        ShardedServer {
            shared: Arc::clone(&self.core.shared),
        }
    }

    /// This shard's server.
    pub fn server(&self) -> &Server {
        &self.core.server
    }

    /// This shard's server, to call it directly (what it queues goes out at the next
    /// [`Shard::flush`]).
    pub fn server_mut(&mut self) -> &mut Server {
        &mut self.core.server
    }

    /// Counters of the socket work.
    pub fn io_stats(&self) -> IoStats {
        self.io.stats()
    }

    /// Datagrams held back because the socket would block.
    pub fn held_datagrams(&self) -> usize {
        self.io.held()
    }

    /// Whether the socket batches its system calls with segmentation offload.
    pub fn has_offload(&self) -> bool {
        self.io.has_offload()
    }

    /// The socket, to read its options.
    pub fn socket(&self) -> &mio::net::UdpSocket {
        self.io.socket()
    }

    /// Counters of the relaying between shards.
    pub fn relay_stats(&self) -> RelayStats {
        self.core.info(&self.io.stats()).relay
    }

    /// Whether this shard's server was shut down (by [`ShardedServer::shutdown`] or
    /// [`Shard::shutdown`]): once [`Server::is_idle`] too, its thread may stop.
    pub fn is_shut_down(&self) -> bool {
        self.core.server.is_shut_down()
    }

    /// Queues a message for `client` (one of this shard's) on `channel`.
    ///
    /// # Errors
    /// [`SendError`] says why nothing was queued.
    pub fn send(
        &mut self,
        client: ClientId,
        channel: ChannelId,
        message: &[u8],
    ) -> Result<(), SendError> {
        self.core
            .server
            .send(Instant::now(), client, channel, message)
    }

    /// Queues a message for every client of this shard; returns how many took it (for every
    /// shard's, see [`ShardedServer::broadcast`]).
    pub fn broadcast(&mut self, channel: ChannelId, message: &[u8]) -> usize {
        self.core.server.broadcast(Instant::now(), channel, message)
    }

    /// Queues a message for every client of this shard but `except` (see
    /// [`Server::broadcast_except`]).
    pub fn broadcast_except(
        &mut self,
        except: ClientId,
        channel: ChannelId,
        message: &[u8],
    ) -> usize {
        self.core
            .server
            .broadcast_except(Instant::now(), except, channel, message)
    }

    /// Queues a message for each of `clients` that is this shard's (see
    /// [`Server::send_to_many`]).
    pub fn send_to_many(
        &mut self,
        clients: &[ClientId],
        channel: ChannelId,
        message: &[u8],
    ) -> usize {
        self.core
            .server
            .send_to_many(Instant::now(), clients, channel, message)
    }

    /// Closes `client`'s connection gracefully (see [`Server::disconnect`]).
    pub fn disconnect(&mut self, client: ClientId, reason: &str) {
        self.core.server.disconnect(Instant::now(), client, reason);
    }

    /// Closes every connection of this shard (see [`Server::shutdown`]).
    pub fn shutdown(&mut self, reason: &str) {
        self.core.server.shutdown(Instant::now(), reason);
    }

    /// Hands a message buffer from [`Event::Message`] back for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.core.server.recycle(buf);
    }

    /// Takes the next event of this shard's server.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.core.server.poll_event()
    }

    /// Sends what is due now (see [`super::ServerDriver::flush`]).
    ///
    /// # Errors
    /// Only an error of the [`Poll`](mio::Poll) registry.
    pub fn flush(&mut self) -> io::Result<()> {
        self.io.flush(&mut self.core)
    }

    /// One pass that never blocks (see [`super::ServerDriver::poll_once`]); it also takes the
    /// shard's inbox (relayed datagrams, operator commands).
    ///
    /// # Errors
    /// Only an error of the [`Poll`](mio::Poll) registry.
    pub fn poll_once(&mut self) -> io::Result<()> {
        self.io.pump(&mut self.core)
    }

    /// Blocks until an event waits (see [`super::ServerDriver::wait_for_event`]).
    ///
    /// # Errors
    /// An error of [`Poll::poll`](mio::Poll::poll) or its registry.
    pub fn wait_for_event(&mut self, max_wait: Option<Duration>) -> io::Result<bool> {
        self.io.wait_for_event(&mut self.core, max_wait)
    }

    /// Blocks until an event and returns it, or `None` once `max_wait` has passed (see
    /// [`super::ServerDriver::run_until_event`]). A message from another shard or the
    /// operator's handle wakes it and is taken at once.
    ///
    /// # Errors
    /// An error of [`Poll::poll`](mio::Poll::poll) or its registry.
    pub fn run_until_event(&mut self, max_wait: Option<Duration>) -> io::Result<Option<Event>> {
        self.io.run_until_event(&mut self.core, max_wait)
    }
}
