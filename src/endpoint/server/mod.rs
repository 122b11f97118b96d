//! The server endpoint: the connection table, the handshake's server side and its limits.

mod accept;
mod table;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::admission::{ip_key, Ban, BanList, IpPrefix};
use super::deadlines::Deadlines;
use super::handshake::{self, MIN_CLIENT_AUTH, SERVER_FINISHED_DATA};
use super::idmap::{IdMap, IdSet};
use crate::config::{ConfigError, ConnectionConfig, RetryPolicy, ServerConfig};
use crate::connection::{Connection, Role, Scratch};
use crate::crypto::{self, EphemeralKey, SessionKeys, FINISHED_LEN, PUBLIC_KEY_LEN};
use crate::pipeline::seal;
use crate::token::ConnectToken;
use crate::types::{ChannelId, ClientId, ConnectionStats, Event, SendBudget, SendError, Transmit};
use crate::wire::{Body, ErrorCode, Flags, Packet, PacketType, TypeFields};

/// A half-open handshake: the server answered an AUTH and waits for the client's finished.
struct Pending {
    client_key: [u8; PUBLIC_KEY_LEN],
    reply: Vec<u8>,
    keys: SessionKeys,
    deadline: Instant,
    /// The id a token or a resumption ticket gave the client.
    client_id: Option<ClientId>,
    /// When our AUTH last went out, and whether it was a resend (no RTT sample then).
    replied_at: Instant,
    resent: bool,
    /// When the entry was made (a new key from the same address replaces it only after
    /// [`REKEY_AFTER`]).
    created: Instant,
}

/// A handshake datagram waiting to go out.
enum Reply {
    /// The server AUTH stored in the pending handshake of the destination.
    PendingAuth,
    /// An unsealed ERROR 1.x.
    Error(ErrorCode, &'static str),
    /// A stateless retry.
    Retry([u8; handshake::COOKIE_LEN]),
    /// A server finished.
    Finished(Vec<u8>),
}

/// What one IP address (an IPv6 /64) holds: connections and half-open handshakes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IpUse {
    connections: u32,
    pending: u32,
}

/// An AUTH with a new key from an address whose handshake is half open replaces it only
/// this long after that handshake began (so one address cannot keep the server doing key
/// exchanges).
pub const REKEY_AFTER: Duration = Duration::from_secs(1);

/// A retry cookie is accepted this many seconds of the server's clock after it was issued.
pub const COOKIE_LIFETIME_SECS: u32 = 10;

/// Handshake datagrams queued between two drains of `poll_transmit` at most; an AUTH whose
/// answer would go beyond is dropped (counted in `handshakes_dropped`).
const MAX_REPLY_QUEUE: usize = 4096;

/// Octets charged to the server's memory budget per half-open handshake.
const PENDING_COST: usize = std::mem::size_of::<Pending>() + 256;

/// A client id that may be resumed with its session's secret until `until`.
struct Resumable {
    secret: [u8; 32],
    until: Option<Instant>,
    /// The connection's counters when it ended (kept as long as the id may be resumed).
    final_stats: Option<ConnectionStats>,
}

/// With connect tokens configured, ids the server picks have this bit set, and tokens may
/// not name such ids: the two never collide.
pub const SERVER_ID_BIT: u64 = 1 << 63;

/// The most connections a datagram from an unknown address is tried against.
const MAX_MIGRATION_TRIALS: usize = 16;
/// Searches and trial decryptions for datagrams from unknown addresses, per second of the
/// server's clock.
const MAX_TRIALS_PER_SEC: u32 = 4096;
/// Datagrams a connection sends in a row from `poll_transmit` before the next one's turn.
const TRANSMIT_TURN: u32 = 2;
/// Token uses remembered (to refuse a token from a second address) at most.
const MAX_TOKEN_USES: usize = 1 << 16;

/// A datagram for another shard: `(shard, from, datagram)`, `None` for every other shard.
pub(crate) type Unclaimed = (Option<usize>, SocketAddr, Vec<u8>);

/// Sealed datagrams from unknown addresses kept for the other shards between two drains
/// (see [`Server::take_unclaimed`]) at most.
const MAX_UNCLAIMED: usize = 1024;

/// What the servers of one [`crate::io::ShardedServer`] share: the client id counter, the
/// connections and half-open handshakes per IP, and the connect-token uses. Each map is
/// behind one small lock taken only when a handshake is answered or finishes, a connection
/// ends or moves: never per datagram. A lone [`Server`] has one of its own (uncontended).
#[derive(Debug)]
pub(crate) struct SharedAdmission {
    /// The next id a server picks (ids are unique across the shards).
    next_id: AtomicU64,
    by_ip: Mutex<HashMap<u128, IpUse>>,
    token_uses: Mutex<HashMap<[u8; 32], (SocketAddr, u64)>>,
    /// Which shard can resume each id (the one that issued its ticket).
    tickets: Mutex<HashMap<ClientId, usize>>,
}

impl Default for SharedAdmission {
    fn default() -> Self {
        Self {
            next_id: AtomicU64::new(1),
            by_ip: Mutex::new(HashMap::new()),
            token_uses: Mutex::new(HashMap::new()),
            tickets: Mutex::new(HashMap::new()),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// The shared locks this thread took (the tests show which datagrams take none).
    pub(crate) static ADMISSION_LOCKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts a shared lock taken, in tests.
fn count_lock() {
    #[cfg(test)]
    ADMISSION_LOCKS.with(|c| c.set(c.get() + 1));
}

impl SharedAdmission {
    pub(crate) fn by_ip(&self) -> MutexGuard<'_, HashMap<u128, IpUse>> {
        count_lock();
        self.by_ip.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn token_uses(&self) -> MutexGuard<'_, HashMap<[u8; 32], (SocketAddr, u64)>> {
        count_lock();
        self.token_uses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn tickets(&self) -> MutexGuard<'_, HashMap<ClientId, usize>> {
        count_lock();
        self.tickets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counters of the server as a whole (per-connection ones are in [`ConnectionStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Datagrams dropped before reaching a connection: unreadable, from unknown addresses,
    /// failing to open, or an AUTH too short to answer.
    pub datagrams_dropped: u64,
    /// AUTHs dropped because `max_pending` handshakes were open.
    pub handshakes_dropped: u64,
    /// AUTHs answered with ERROR 1.1 because `max_clients` were connected.
    pub refused_full: u64,
    /// Finished MACs that did not verify (answered with ERROR 1.3).
    pub bad_finished: u64,
    /// Half-open handshakes forgotten at their deadline.
    pub handshakes_expired: u64,
    /// Connections established.
    pub connections_accepted: u64,
    /// AUTHs refused (ERROR 1.2, no state kept) because the address is banned.
    pub refused_banned: u64,
    /// AUTHs refused (ERROR 1.2, no state kept) because the address is not on the allow-list.
    pub refused_not_allowed: u64,
    /// AUTHs refused (ERROR 1.2, no state kept) for a missing, forged, expired, foreign or
    /// reused connect token.
    pub refused_token: u64,
    /// Connections that resumed an earlier session's client id.
    pub resumed: u64,
    /// Connections that moved to a new, validated address.
    pub migrations: u64,
    /// AUTHs answered with ERROR 1.1 because their IP (IPv6: its /64) had
    /// `max_clients_per_ip` connections.
    pub refused_ip_limit: u64,
    /// AUTHs dropped because their IP (IPv6: its /64) had `max_pending_per_ip` half-open
    /// handshakes.
    pub handshakes_dropped_ip: u64,
    /// AUTHs with a new key dropped because their address began a handshake less than
    /// one second before.
    pub rekeys_dropped: u64,
    /// AUTHs answered with a stateless retry (a cookie) instead of a key exchange.
    pub retries_sent: u64,
    /// AUTHs whose retry cookie was forged, expired or for another address or key (answered
    /// with a fresh retry).
    pub bad_cookies: u64,
    /// AUTHs answered with ERROR 1.1 because the server's memory budget was spent.
    pub refused_memory: u64,
    /// Key exchanges done for AUTHs (each costs a P-256 multiplication and a signature).
    pub key_exchanges: u64,
    /// AUTHs refused with ERROR 1.2 `channels differ from the server's`: the client's hello
    /// names another channel configuration (count or delivery modes).
    pub refused_channels: u64,
    /// AUTHs refused with ERROR 1.2 `client key invalid`, no state kept: the key is not 33
    /// octets starting 02 or 03 (a compressed SEC1 point), or not a point on P-256.
    pub refused_client_key: u64,
    /// Connections closed because the peer broke the protocol (a malformed or forbidden frame,
    /// a message on a channel that does not exist or over `max_message_size`, a bad part...):
    /// the server sent the matching ERROR 3.x and reported
    /// [`DisconnectReason::ProtocolViolation`](crate::DisconnectReason::ProtocolViolation)
    /// (counted as the application takes the event).
    pub protocol_violations: u64,
    /// Calls of `handle_timeout`.
    pub wakeups: u64,
    /// Connections visited by `handle_timeout`: only those whose deadline came, so this grows
    /// with the timers due, not with the number of connections (`poll_timeout` visits none).
    pub timers_run: u64,
    /// Sealed datagrams from unknown addresses not tried against any connection because 4,096
    /// trial decryptions were done in the current second (a real client that moved resends).
    pub migration_trials_limited: u64,
    /// AUTHs answered with ERROR 1.1 `server draining` because [`Server::drain`] was called.
    pub refused_draining: u64,
}

/// What the server knows of one client.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientInfo {
    /// The client.
    pub id: ClientId,
    /// Its current address.
    pub addr: SocketAddr,
    /// When its connection was established.
    pub connected_at: Instant,
    /// Its connection's counters.
    pub stats: ConnectionStats,
}

/// A server endpoint: every client's connection, demultiplexed by address.
///
/// Feed it with [`Server::handle_datagram`] and [`Server::handle_timeout`]; after each input
/// drain [`Server::poll_transmit`] and [`Server::poll_event`]; then wait until
/// [`Server::poll_timeout`] or the next datagram.
pub struct Server {
    config: ServerConfig,
    conn_config: Arc<ConnectionConfig>,
    /// Boxed: the table itself stays small (16 octets a bucket), so a lookup reads memory
    /// that stays in cache, and only the connection it finds is a miss.
    connections: IdMap<ClientId, Box<Connection>>,
    by_addr: HashMap<SocketAddr, ClientId>,
    pending: HashMap<SocketAddr, Pending>,
    /// This server's own half-open handshakes per IP (`ip_key`): the shared count without its
    /// lock, for the check an AUTH meets before its cookie is verified.
    pending_by_ip: HashMap<u128, u32>,
    /// Whether [`Server::shutdown`] was called.
    shut_down: bool,
    /// Whether [`Server::drain`] was called: new handshakes are refused.
    draining: bool,
    /// The id counter and per-IP and token-use tables (shared between shards).
    shared: Arc<SharedAdmission>,
    /// With shards: this shard's index, and the datagrams for other shards: sealed ones from
    /// unknown addresses that no connection here opened, for every other shard to try (a
    /// client whose new address hashed to this shard), and AUTHs resuming an id another
    /// shard issued, for that shard (`Some(index)`).
    shard: usize,
    unclaimed: Option<Vec<Unclaimed>>,
    events: VecDeque<Event>,
    /// Handshake datagrams to send, at most [`MAX_REPLY_QUEUE`] (written when polled, so an
    /// answer costs no allocation).
    handshake_out: VecDeque<(SocketAddr, Reply)>,
    /// Connections waiting for `poll_transmit`, each once, in the order they were queued.
    dirty: VecDeque<ClientId>,
    /// The ids in `dirty`.
    queued: IdSet<ClientId>,
    /// Datagrams the connection at the front of `dirty` sent in its current turn.
    turn_sent: u32,
    /// The sum of the connections' `budget_used`, kept by [`charge`] around every call that
    /// may change it (so an AUTH reads the memory charged without visiting every connection).
    charged: usize,
    scratch: Scratch,
    stats: ServerStats,
    bans: BanList,
    resumable: IdMap<ClientId, Resumable>,
    wall_clock: Option<(Instant, u64)>,
    last_now: Instant,
    /// One info line per interval for refused handshakes.
    refusal_log: crate::log::LogLimit,
    /// Each connection's next deadline.
    timers: Deadlines<ClientId>,
    /// Reused list of connections whose deadline came.
    due: Vec<ClientId>,
    /// Reused list of the clients a broadcast goes to.
    ids: Vec<ClientId>,
    /// The digest of this server's channel configuration, which client hellos must match.
    channels_digest: [u8; handshake::CHANNELS_DIGEST_LEN],
    /// Half-open handshakes by deadline, in the order they began (entries of handshakes
    /// finished or replaced since are skipped).
    pending_expiry: VecDeque<(Instant, SocketAddr)>,
    /// Resumable ids by expiry, in the order they were set.
    resumable_expiry: VecDeque<(Instant, ClientId)>,
    /// Migration searches and trial decryptions this second: (second, count).
    trials: (u64, u32),
    /// Reused list of connections a datagram from an unknown address is tried against.
    candidates: Vec<(bool, ClientId)>,
    /// The secret retry cookies are MACed under (random per server).
    retry_secret: [u8; 32],
    /// The server's clock for cookies: set by the first datagram.
    epoch: Option<Instant>,
    /// AUTHs that passed admission in the current and the previous second of `epoch`:
    /// (second, count this second, count the second before).
    auth_rate: (u64, u32, u32),
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("clients", &self.connections.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Server {
    /// A server with this configuration.
    ///
    /// # Errors
    /// [`ConfigError`] if the configuration is invalid.
    pub fn new(config: ServerConfig) -> Result<Self, ConfigError> {
        Self::with_shared(config, Arc::default(), None)
    }

    /// A server that shares `shared` with the other shards of a
    /// [`crate::io::ShardedServer`], keeping sealed datagrams it cannot place for them.
    pub(crate) fn new_shard(
        config: ServerConfig,
        shared: Arc<SharedAdmission>,
        index: usize,
    ) -> Result<Self, ConfigError> {
        Self::with_shared(config, shared, Some(index))
    }

    fn with_shared(
        config: ServerConfig,
        shared: Arc<SharedAdmission>,
        shard: Option<usize>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let conn_config = Arc::new(config.connection.clone());
        let channels_digest = handshake::channels_digest(&conn_config.channels);
        Ok(Self {
            scratch: Scratch::new(crate::connection::plaintext_limit(&config.connection)),
            conn_config,
            config,
            connections: IdMap::default(),
            by_addr: HashMap::new(),
            pending: HashMap::new(),
            pending_by_ip: HashMap::new(),
            shut_down: false,
            draining: false,
            shared,
            shard: shard.unwrap_or(0),
            unclaimed: shard.map(|_| Vec::new()),
            events: VecDeque::new(),
            handshake_out: VecDeque::new(),
            dirty: VecDeque::new(),
            queued: IdSet::default(),
            turn_sent: 0,
            charged: 0,
            stats: ServerStats::default(),
            bans: BanList::default(),
            resumable: IdMap::default(),
            wall_clock: None,
            last_now: Instant::now(),
            refusal_log: crate::log::LogLimit::default(),
            timers: Deadlines::new(),
            due: Vec::new(),
            ids: Vec::new(),
            channels_digest,
            pending_expiry: VecDeque::new(),
            resumable_expiry: VecDeque::new(),
            trials: (0, 0),
            candidates: Vec::new(),
            retry_secret: {
                let mut k = [0u8; 32];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut k);
                k
            },
            epoch: None,
            auth_rate: (0, 0, 0),
        })
    }

    /// The server's public key, which clients pin.
    pub fn public_key(&self) -> crypto::ServerKey {
        self.config.identity.public_key()
    }

    /// Counters of the server as a whole.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Connected clients.
    pub fn client_count(&self) -> usize {
        self.connections
            .values()
            .filter(|c| c.is_connected())
            .count()
    }

    /// Half-open handshakes.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The connected clients with their address and counters.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let mut v: Vec<_> = self
            .connections
            .values()
            .filter(|c| c.is_connected())
            .map(|c| ClientInfo {
                id: c.id(),
                addr: c.addr(),
                connected_at: c.connected_at(),
                stats: c.stats(),
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// One client's counters; after its connection ended, its final counters for as long as
    /// its id may be resumed (`resume_window`, default 120 s).
    pub fn client_stats(&self, client: ClientId) -> Option<ConnectionStats> {
        match self.connections.get(&client) {
            Some(c) => Some(c.stats()),
            None => self
                .resumable
                .get(&client)
                .and_then(|r| r.final_stats.clone()),
        }
    }

    /// What `client`'s connection can send now without queueing, to size a tick's messages
    /// ([`SendBudget`]); `None` if it is not connected.
    pub fn send_budget(&self, now: Instant, client: ClientId) -> Option<SendBudget> {
        self.connections
            .get(&client)
            .filter(|c| c.is_connected())
            .map(|c| c.send_budget(now))
    }

    /// Whether `client` is connected.
    pub fn is_connected(&self, client: ClientId) -> bool {
        self.connections
            .get(&client)
            .is_some_and(|c| c.is_connected())
    }

    /// Queues a message for `client` on `channel`.
    ///
    /// # Errors
    /// [`SendError`] says why nothing was queued.
    pub fn send(
        &mut self,
        now: Instant,
        client: ClientId,
        channel: ChannelId,
        message: &[u8],
    ) -> Result<(), SendError> {
        let Some(conn) = self.connections.get_mut(&client) else {
            // Ended (its Disconnected may still be queued), or never existed.
            return Err(if self.resumable.contains_key(&client) {
                SendError::Closed
            } else {
                SendError::NotConnected
            });
        };
        let scratch = &mut self.scratch;
        charge(&mut self.charged, conn, |c| {
            c.send(now, channel, message, scratch)
        })?;
        self.mark_dirty(client);
        Ok(())
    }

    /// Queues a message for every connected client; returns how many took it (a client whose
    /// queue is full, see [`SendError::QueueFull`], does not).
    pub fn broadcast(&mut self, now: Instant, channel: ChannelId, message: &[u8]) -> usize {
        self.send_each(now, channel, message, |_| true)
    }

    /// Queues a message for every connected client but `except` (typically its sender);
    /// returns how many took it.
    pub fn broadcast_except(
        &mut self,
        now: Instant,
        except: ClientId,
        channel: ChannelId,
        message: &[u8],
    ) -> usize {
        self.send_each(now, channel, message, |id| id != except)
    }

    /// Queues a message for each of `clients` (a team, a room, the players near an event);
    /// returns how many took it. Unknown or disconnected ids are skipped.
    pub fn send_to_many(
        &mut self,
        now: Instant,
        clients: &[ClientId],
        channel: ChannelId,
        message: &[u8],
    ) -> usize {
        clients
            .iter()
            .filter(|&&id| self.send(now, id, channel, message).is_ok())
            .count()
    }

    fn send_each(
        &mut self,
        now: Instant,
        channel: ChannelId,
        message: &[u8],
        keep: impl Fn(ClientId) -> bool,
    ) -> usize {
        let mut ids = std::mem::take(&mut self.ids);
        ids.clear();
        ids.extend(self.connections.keys().copied().filter(|&id| keep(id)));
        let n = ids
            .iter()
            .filter(|&&id| self.send(now, id, channel, message).is_ok())
            .count();
        self.ids = ids;
        n
    }

    /// Closes `client`'s connection gracefully with ERROR 2.0 and `reason`; its
    /// [`Event::Disconnected`] follows once the peer acknowledged it or the close timed out.
    pub fn disconnect(&mut self, now: Instant, client: ClientId, reason: &str) {
        if let Some(conn) = self.connections.get_mut(&client) {
            charge(&mut self.charged, conn, |c| {
                c.close(now, ErrorCode::Disconnect, reason)
            });
            self.mark_dirty(client);
        }
    }

    /// Closes every connection with ERROR 2.1 (server disconnect).
    pub fn shutdown(&mut self, now: Instant, reason: &str) {
        self.shut_down = true;
        for (id, conn) in &mut self.connections {
            charge(&mut self.charged, conn, |c| {
                c.close(now, ErrorCode::ServerDisconnect, reason)
            });
            if self.queued.insert(*id) {
                self.dirty.push_back(*id);
            }
        }
        let ips: Vec<SocketAddr> = self.pending.keys().copied().collect();
        for a in ips {
            self.remove_pending(&a);
        }
    }

    /// Whether [`Server::shutdown`] was called (new handshakes still proceed unless the
    /// server is also [draining](Server::drain)).
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    /// Starts a graceful drain: from now on every AUTH is refused with ERROR 1.1 `server
    /// draining` (the client's `Disconnected` says the server is full: it should ask its
    /// backend for another), half-open handshakes are forgotten, and the connected clients
    /// stay until they leave or [`Server::shutdown`]. There is no undoing it.
    pub fn drain(&mut self) {
        self.draining = true;
        let ips: Vec<SocketAddr> = self.pending.keys().copied().collect();
        for a in ips {
            self.remove_pending(&a);
        }
    }

    /// Whether [`Server::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Whether no connection is left (after [`Server::shutdown`], the server may stop).
    pub fn is_idle(&self) -> bool {
        self.connections.is_empty() && self.handshake_out.is_empty()
    }

    /// Hands a message buffer from [`Event::Message`] back for reuse: the next deliveries
    /// and sends take it instead of allocating (the endpoint's one pool, which its connections
    /// also feed with the buffers of sent and acknowledged messages). Kept while the pool holds
    /// under 4,096 buffers and 1 MiB of capacity, and if it holds at most 64 KiB (otherwise it
    /// is freed).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.scratch.messages.give(buf);
    }

    /// Closes `client`'s connection with ERROR 2.0 and `reason` (a kick): the client sees
    /// [`Event::Disconnected`] with the reason; this side sees it once the close is
    /// acknowledged or timed out. Returns whether the client was connected.
    pub fn kick(&mut self, now: Instant, client: ClientId, reason: &str) -> bool {
        let connected = self.is_connected(client);
        self.disconnect(now, client, reason);
        connected
    }

    /// Bans `prefix` for `duration` (`None`: until [`Server::unban`]): its connected clients
    /// are kicked, and its handshakes are refused with ERROR 1.2 without keeping any state.
    /// Returns the clients kicked.
    pub fn ban(
        &mut self,
        now: Instant,
        prefix: IpPrefix,
        duration: Option<Duration>,
    ) -> Vec<ClientId> {
        self.bans.ban(now, prefix, duration);
        let kicked: Vec<ClientId> = self
            .connections
            .values()
            .filter(|c| c.is_connected() && prefix.contains(c.addr().ip()))
            .map(|c| c.id())
            .collect();
        for &id in &kicked {
            self.disconnect(now, id, "banned");
        }
        let ips: Vec<SocketAddr> = self
            .pending
            .keys()
            .filter(|a| prefix.contains(a.ip()))
            .copied()
            .collect();
        for a in ips {
            self.remove_pending(&a);
        }
        kicked
    }

    /// Lifts the ban of exactly `prefix`; returns whether there was one.
    pub fn unban(&mut self, prefix: IpPrefix) -> bool {
        self.bans.unban(prefix)
    }

    /// The bans in force at `now`, with their expiry.
    pub fn bans(&self, now: Instant) -> Vec<Ban> {
        self.bans
            .iter()
            .filter(|b| b.until.is_none_or(|u| now < u))
            .copied()
            .collect()
    }

    /// Adds `prefix` to the allow-list, turning allow-list mode on if it was off.
    pub fn allow(&mut self, prefix: IpPrefix) {
        self.config
            .allow_list
            .get_or_insert_with(Vec::new)
            .push(prefix);
    }

    /// Tells the server the wall-clock time (Unix seconds) at `now`, for connect-token
    /// expiry. The driver calls it at start; tests give any time they like.
    pub fn set_wall_clock(&mut self, now: Instant, unix_secs: u64) {
        self.wall_clock = Some((now, unix_secs));
    }

    /// Adds an address connect tokens may name for this server.
    pub fn add_public_addr(&mut self, addr: SocketAddr) {
        if !self.config.public_addrs.contains(&addr) {
            self.config.public_addrs.push(addr);
        }
    }

    fn unix_time(&self, now: Instant) -> Option<u64> {
        self.wall_clock
            .map(|(at, secs)| secs + now.saturating_duration_since(at).as_secs())
    }

    /// Takes one datagram that arrived from `from` at `now`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        self.last_now = now;
        // A connected address that sends AUTH is a client that restarted: its new handshake
        // proceeds, and replaces the old connection when it completes.
        let handshake = datagram
            .first()
            .is_some_and(|b| b & 0x0F == PacketType::Auth.to_bits())
            || (self.pending.contains_key(&from) && Self::is_finished(datagram));
        if let Some(&id) = self.by_addr.get(&from).filter(|_| !handshake) {
            if let Some(conn) = self.connections.get_mut(&id) {
                let before = conn.addr();
                charge(&mut self.charged, conn, |c| {
                    c.handle_datagram(now, from, datagram, &mut self.scratch, &mut self.events)
                });
                let (moved, closed) = (conn.addr() != before, conn.is_closed());
                if moved {
                    self.on_migrated(id, before);
                }
                self.mark_dirty(id);
                if closed {
                    self.reap(id);
                }
                return;
            }
        }
        let header = match Packet::parse(datagram) {
            Ok(p) => p.header,
            Err(e) => {
                self.stats.datagrams_dropped += 1;
                tracing::debug!(%from, code = %e.code, reason = e.reason, "unreadable datagram");
                return;
            }
        };
        if header.flags.contains(Flags::ENCRYPTED) && seal::packet_number(&header) != 0 {
            let limited = self.stats.migration_trials_limited;
            if self.try_migration(now, from, datagram) {
                return;
            }
            if let Some(out) = self.unclaimed.as_mut() {
                // Searched here in vain (not cut off by the trial budget): another shard may
                // own it.
                // A fragment is not: no shard tries a fragment as a migration.
                if header.fragment.is_none()
                    && limited == self.stats.migration_trials_limited
                    && out.len() < MAX_UNCLAIMED
                {
                    out.push((None, from, datagram.to_vec()));
                    return;
                }
            }
        }
        let packet = Packet::parse(datagram).expect("parsed above");
        match packet.body {
            Body::Auth(auth) => {
                let (key, cert) = (auth.public_key, auth.certificate.unwrap_or(&[]));
                self.on_client_auth(now, from, datagram.len(), key, cert, datagram);
            }
            Body::Data { fields, data }
                if packet.header.packet_type == PacketType::Ack
                    && packet.header.flags == Flags::ENCRYPTED
                    && seal::packet_number(&packet.header) == 0 =>
            {
                let mut buf = [0u8; FINISHED_LEN + 16];
                if data.len() != buf.len() {
                    self.stats.datagrams_dropped += 1;
                    return;
                }
                buf.copy_from_slice(data);
                self.on_client_finished(now, from, &packet.header, fields, &mut buf);
            }
            _ => {
                self.stats.datagrams_dropped += 1;
                tracing::debug!(%from, "datagram from an unknown address");
            }
        }
    }

    /// Takes the sealed datagrams from unknown addresses that no connection of this shard
    /// opened, for the other shards to try with [`Server::handle_relayed`] (always empty for a
    /// server that is not a shard).
    pub(crate) fn take_unclaimed(&mut self, into: &mut Vec<Unclaimed>) {
        if let Some(out) = self.unclaimed.as_mut() {
            into.append(out);
        }
    }

    /// A datagram another shard received from `from` and could not place: handled as if it
    /// had arrived here if `from` is a known address or it is an AUTH (one resuming an id this
    /// shard issued), else tried as a migration of one of this shard's connections. Returns
    /// whether this shard owns `from` now (its datagrams should come here): a connection's
    /// address, or a half-open handshake's whose id checked out (a valid resumption ticket or
    /// connect token), never one that a stranger's AUTH with a forged ticket made half-open
    /// (the relaying shard would forward that address for good). Nothing is kept for the
    /// other shards.
    pub(crate) fn handle_relayed(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &mut [u8],
    ) -> bool {
        self.last_now = now;
        let unclaimed = self.unclaimed.take();
        let auth = datagram
            .first()
            .is_some_and(|b| b & 0x0F == PacketType::Auth.to_bits());
        let owned = if self.knows_addr(&from) || auth {
            self.handle_datagram(now, from, datagram);
            self.by_addr.contains_key(&from)
                || self
                    .pending
                    .get(&from)
                    .is_some_and(|p| p.client_id.is_some())
        } else {
            Packet::parse(datagram).is_ok_and(|p| {
                p.header.flags.contains(Flags::ENCRYPTED) && seal::packet_number(&p.header) != 0
            }) && self.try_migration(now, from, datagram)
        };
        self.unclaimed = unclaimed;
        owned
    }

    /// Whether `addr` is a connection's or a half-open handshake's address here.
    pub(crate) fn knows_addr(&self, addr: &SocketAddr) -> bool {
        self.by_addr.contains_key(addr) || self.pending.contains_key(addr)
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        self.stats.wakeups += 1;
        self.expire_pending(now);
        self.bans.expire(now);
        while let Some((until, id)) = take_due(&mut self.resumable_expiry, now) {
            if self
                .resumable
                .get(&id)
                .is_some_and(|r| r.until == Some(until))
            {
                self.resumable.remove(&id);
                if self.unclaimed.is_some() {
                    let mut tickets = self.shared.tickets();
                    if tickets.get(&id) == Some(&self.shard) {
                        tickets.remove(&id);
                    }
                }
            }
        }
        // Only the connections whose deadline has come. They are taken first and run after:
        // a connection whose work waits for `poll_transmit` is due again at once, and must
        // not run twice in one call.
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        while let Some(id) = self.timers.pop_due(now) {
            due.push(id);
        }
        for &id in &due {
            if let Some(conn) = self.connections.get_mut(&id) {
                charge(&mut self.charged, conn, |c| {
                    c.handle_timeout(now, &mut self.events, &mut self.scratch)
                });
                self.mark_dirty(id);
                self.stats.timers_run += 1;
            }
            self.reap(id);
            self.reschedule(id);
        }
        self.due = due;
    }

    /// Writes the next datagram to send into `buf` (at least 1200 octets), or returns `None`
    /// when nothing is due. Call it until it returns `None` after every input.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some((to, reply)) = self.handshake_out.pop_front() {
            let len = match reply {
                Reply::PendingAuth => {
                    // Gone since (finished, expired or replaced): nothing to resend.
                    let Some(p) = self.pending.get(&to) else {
                        continue;
                    };
                    buf[..p.reply.len()].copy_from_slice(&p.reply);
                    p.reply.len()
                }
                Reply::Error(code, why) => handshake::write_error(code, why, buf),
                Reply::Retry(cookie) => handshake::write_retry(&cookie, buf),
                Reply::Finished(d) => {
                    buf[..d.len()].copy_from_slice(&d);
                    d.len()
                }
            };
            return Some(Transmit {
                destination: to,
                len,
            });
        }
        while let Some(&id) = self.dirty.front() {
            let Some(conn) = self.connections.get_mut(&id) else {
                self.dirty.pop_front();
                self.queued.remove(&id);
                self.turn_sent = 0;
                continue;
            };
            let sent = charge(&mut self.charged, conn, |c| {
                c.poll_transmit(now, &mut self.scratch, buf)
            });
            if let Some((len, destination)) = sent {
                // Round robin: after [`TRANSMIT_TURN`] datagrams it goes to the back (still
                // queued), others get their turn first. Within its turn the next call asks it
                // again while its state is in cache (most turns end with the next call).
                self.turn_sent += 1;
                if self.turn_sent >= TRANSMIT_TURN {
                    self.turn_sent = 0;
                    self.dirty.pop_front();
                    self.dirty.push_back(id);
                }
                return Some(Transmit { destination, len });
            }
            self.dirty.pop_front();
            self.turn_sent = 0;
            self.queued.remove(&id);
            if conn.is_closed() {
                self.reap(id);
            } else {
                let t = conn.poll_timeout();
                self.timers.schedule(id, t);
            }
        }
        None
    }

    /// Whether an event waits for [`Server::poll_event`].
    pub fn has_event(&self) -> bool {
        !self.events.is_empty()
    }

    /// Takes the next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        match &ev {
            Event::Message { client, data, .. } => {
                if let Some(conn) = self.connections.get_mut(client) {
                    charge(&mut self.charged, conn, |c| c.release_delivered(data.len()));
                }
            }
            Event::Disconnected {
                reason: crate::DisconnectReason::ProtocolViolation(_),
                ..
            } => self.stats.protocol_violations += 1,
            _ => {}
        }
        Some(ev)
    }

    /// The earliest time [`Server::handle_timeout`] has work. O(1): it reads the top of the
    /// deadline structure, whatever the number of connections. While connections wait in
    /// [`Server::poll_transmit`]'s queue it is the last time given (drain `poll_transmit`
    /// first, as the run loop says).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.dirty.is_empty() {
            return Some(self.last_now);
        }
        [
            self.timers.next(),
            self.pending_expiry.front().map(|e| e.0),
            self.resumable_expiry.front().map(|e| e.0),
            self.bans.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Runs `f` on `conn`, keeping `charged` (the sum of the connections' `budget_used`) exact.
fn charge<R>(
    charged: &mut usize,
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> R,
) -> R {
    let before = conn.budget_used();
    let r = f(conn);
    *charged = *charged - before + conn.budget_used();
    r
}

/// Takes the front of a deadline-ordered queue if its deadline is at or before `now`.
fn take_due<K: Copy>(queue: &mut VecDeque<(Instant, K)>, now: Instant) -> Option<(Instant, K)> {
    let &(at, key) = queue.front()?;
    if at > now {
        return None;
    }
    queue.pop_front();
    Some((at, key))
}
