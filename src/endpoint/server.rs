//! The server endpoint: the connection table, the handshake's server side and its limits.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::{ip_key, Ban, BanList, IpPrefix};
use super::deadlines::Deadlines;
use super::handshake::{self, MIN_CLIENT_AUTH, SERVER_FINISHED_DATA};
use crate::config::{ConfigError, ConnectionConfig, RetryPolicy, ServerConfig};
use crate::connection::{Connection, Role, Scratch};
use crate::crypto::{self, EphemeralKey, SessionKeys, FINISHED_LEN, PUBLIC_KEY_LEN};
use crate::pipeline::seal;
use crate::token::ConnectToken;
use crate::types::{ChannelId, ClientId, ConnectionStats, Event, SendError, Transmit};
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
struct IpUse {
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
/// Token uses remembered (to refuse a token from a second address) at most.
const MAX_TOKEN_USES: usize = 1 << 16;

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
    /// Calls of `handle_timeout`.
    pub wakeups: u64,
    /// Connections visited by `handle_timeout`: only those whose deadline came, so this grows
    /// with the timers due, not with the number of connections (`poll_timeout` visits none).
    pub timers_run: u64,
    /// Sealed datagrams from unknown addresses not tried against any connection because 4,096
    /// trial decryptions were done in the current second (a real client that moved resends).
    pub migration_trials_limited: u64,
}

/// What the server knows of one client.
#[derive(Debug, Clone, Copy, PartialEq)]
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
    connections: HashMap<ClientId, Connection>,
    by_addr: HashMap<SocketAddr, ClientId>,
    pending: HashMap<SocketAddr, Pending>,
    next_id: u64,
    events: VecDeque<Event>,
    /// Handshake datagrams to send, at most [`MAX_REPLY_QUEUE`] (written when polled, so an
    /// answer costs no allocation).
    handshake_out: VecDeque<(SocketAddr, Reply)>,
    dirty: VecDeque<ClientId>,
    scratch: Scratch,
    stats: ServerStats,
    bans: BanList,
    resumable: HashMap<ClientId, Resumable>,
    token_uses: HashMap<[u8; 32], (SocketAddr, u64)>,
    wall_clock: Option<(Instant, u64)>,
    last_now: Instant,
    /// Each connection's next deadline.
    timers: Deadlines<ClientId>,
    /// Reused list of connections whose deadline came.
    due: Vec<ClientId>,
    /// Reused list of the clients a broadcast goes to.
    ids: Vec<ClientId>,
    /// Half-open handshakes by deadline, in the order they began (entries of handshakes
    /// finished or replaced since are skipped).
    pending_expiry: VecDeque<(Instant, SocketAddr)>,
    /// Resumable ids by expiry, in the order they were set.
    resumable_expiry: VecDeque<(Instant, ClientId)>,
    /// Migration searches and trial decryptions this second: (second, count).
    trials: (u64, u32),
    /// Reused list of connections a datagram from an unknown address is tried against.
    candidates: Vec<(bool, ClientId)>,
    /// Connections and half-open handshakes per IP (IPv6 per /64).
    by_ip: HashMap<u128, IpUse>,
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
        config.validate()?;
        let conn_config = Arc::new(config.connection.clone());
        Ok(Self {
            scratch: Scratch::new(crate::connection::plaintext_limit(&config.connection)),
            conn_config,
            config,
            connections: HashMap::new(),
            by_addr: HashMap::new(),
            pending: HashMap::new(),
            next_id: 1,
            events: VecDeque::new(),
            handshake_out: VecDeque::new(),
            dirty: VecDeque::new(),
            stats: ServerStats::default(),
            bans: BanList::default(),
            resumable: HashMap::new(),
            token_uses: HashMap::new(),
            wall_clock: None,
            last_now: Instant::now(),
            timers: Deadlines::new(),
            due: Vec::new(),
            ids: Vec::new(),
            pending_expiry: VecDeque::new(),
            resumable_expiry: VecDeque::new(),
            by_ip: HashMap::new(),
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
            None => self.resumable.get(&client).and_then(|r| r.final_stats),
        }
    }

    /// Whether `client` is connected.
    pub fn is_connected(&self, client: ClientId) -> bool {
        self.connections
            .get(&client)
            .is_some_and(Connection::is_connected)
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
        let conn = self
            .connections
            .get_mut(&client)
            .ok_or(SendError::NotConnected)?;
        conn.send(now, channel, message)?;
        if self.dirty.back() != Some(&client) {
            self.dirty.push_back(client);
            self.dedup_dirty();
        }
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
            conn.close(now, ErrorCode::Disconnect, reason);
            self.dirty.push_back(client);
        }
    }

    /// Closes every connection with ERROR 2.1 (server disconnect).
    pub fn shutdown(&mut self, now: Instant, reason: &str) {
        for (id, conn) in &mut self.connections {
            conn.close(now, ErrorCode::ServerDisconnect, reason);
            self.dirty.push_back(*id);
        }
        let ips: Vec<SocketAddr> = self.pending.keys().copied().collect();
        for a in ips {
            self.remove_pending(&a);
        }
    }

    /// Whether no connection is left (after [`Server::shutdown`], the server may stop).
    pub fn is_idle(&self) -> bool {
        self.connections.is_empty() && self.handshake_out.is_empty()
    }

    /// Hands a message buffer from [`Event::Message`] back for reuse.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.scratch.messages.len() < 256 {
            buf.clear();
            self.scratch.messages.push(buf);
        }
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
            .map(Connection::id)
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
                conn.handle_datagram(now, from, datagram, &mut self.scratch, &mut self.events);
                if conn.addr() != before {
                    self.on_migrated(id, before);
                }
                self.dirty.push_back(id);
                self.reap(id);
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
        if header.flags.contains(Flags::ENCRYPTED)
            && seal::packet_number(&header) != 0
            && self.try_migration(now, from, datagram)
        {
            return;
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

    fn on_client_auth(
        &mut self,
        now: Instant,
        from: SocketAddr,
        len: usize,
        client_key: &[u8],
        hello: &[u8],
        datagram: &[u8],
    ) {
        let hello = match handshake::parse_hello(hello) {
            Some(h) if len >= MIN_CLIENT_AUTH => h,
            _ => {
                self.stats.datagrams_dropped += 1;
                tracing::debug!(%from, len, "client AUTH too short or malformed hello");
                return;
            }
        };
        let Ok(client_key) = <[u8; PUBLIC_KEY_LEN]>::try_from(client_key) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        if self.bans.is_banned(now, from.ip()) {
            self.stats.refused_banned += 1;
            self.refuse(from, ErrorCode::CertificateInvalid, "banned");
            return;
        }
        if let Some(allowed) = &self.config.allow_list {
            if !allowed.iter().any(|p| p.contains(from.ip())) {
                self.stats.refused_not_allowed += 1;
                self.refuse(
                    from,
                    ErrorCode::CertificateInvalid,
                    "address not authorized",
                );
                return;
            }
        }
        if let Some(p) = self.pending.get_mut(&from) {
            if p.client_key == client_key {
                // A resent AUTH: our reply was lost. Send the same reply again.
                p.resent = true;
                self.reply(from, Reply::PendingAuth);
                return;
            }
            if now.saturating_duration_since(p.created) < REKEY_AFTER {
                // A new key from an address whose handshake just began: one address may not
                // keep the server doing key exchanges.
                self.stats.rekeys_dropped += 1;
                return;
            }
        }
        let ip = ip_key(from.ip());
        let use_ = self.by_ip.get(&ip).copied().unwrap_or_default();
        let has_pending = self.pending.contains_key(&from);
        if !has_pending && use_.pending as usize >= self.config.max_pending_per_ip {
            self.expire_pending(now);
            let use_ = self.by_ip.get(&ip).copied().unwrap_or_default();
            if use_.pending as usize >= self.config.max_pending_per_ip {
                self.stats.handshakes_dropped_ip += 1;
                return;
            }
        }
        // Handshake demand: AUTHs that got this far, per second.
        let second = self.clock_secs(now);
        let (at, this, before) = self.auth_rate;
        self.auth_rate = match second.saturating_sub(at) {
            0 => (at, this.saturating_add(1), before),
            1 => (second, 1, this),
            _ => (second, 1, 0),
        };
        if self.needs_retry() {
            let issued = second as u32;
            let valid = hello.cookie.is_some_and(|c| {
                let t = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                let fresh = t <= issued && issued - t <= COOKIE_LIFETIME_SECS;
                let expected = handshake::retry_cookie(&self.retry_secret, t, from, &client_key);
                fresh && crypto::macs_equal(c, &expected)
            });
            if !valid {
                if hello.cookie.is_some() {
                    self.stats.bad_cookies += 1;
                }
                // A stateless retry: no key exchange, no state, fewer octets than the AUTH.
                let cookie = handshake::retry_cookie(&self.retry_secret, issued, from, &client_key);
                if self.reply(from, Reply::Retry(cookie)) {
                    self.stats.retries_sent += 1;
                }
                return;
            }
        }
        let mut client_id = None;
        if let Some(ticket) = hello.ticket {
            client_id = self.check_ticket(now, ticket, &client_key);
        }
        match self.check_token(now, from, hello.token) {
            Ok(Some(id)) => client_id = Some(id),
            Ok(None) => {}
            Err(why) => {
                self.stats.refused_token += 1;
                self.refuse(from, ErrorCode::CertificateInvalid, why);
                return;
            }
        }
        // A client resuming its id, or restarting on its address, replaces its connection.
        let replaces = client_id.is_some_and(|id| self.connections.contains_key(&id))
            || self.by_addr.contains_key(&from);
        if self.connections.len() >= self.config.max_clients && !replaces {
            self.stats.refused_full += 1;
            self.refuse(from, ErrorCode::NoSpace, "server full");
            return;
        }
        if use_.connections as usize >= self.config.max_clients_per_ip && !replaces {
            self.stats.refused_ip_limit += 1;
            self.refuse(
                from,
                ErrorCode::NoSpace,
                "too many connections from this address",
            );
            return;
        }
        if self.memory_charged() + PENDING_COST > self.config.memory_budget {
            self.stats.refused_memory += 1;
            self.refuse(from, ErrorCode::NoSpace, "server memory budget reached");
            return;
        }
        if self.pending.len() >= self.config.max_pending && !has_pending {
            self.expire_pending(now);
            if self.pending.len() >= self.config.max_pending {
                self.stats.handshakes_dropped += 1;
                return;
            }
        }
        let ephemeral = EphemeralKey::generate();
        let Ok(shared) = ephemeral.shared_secret(&client_key) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        self.stats.key_exchanges += 1;
        let cert = self
            .config
            .identity
            .certificate(&client_key, ephemeral.public_bytes());
        let reply = handshake::auth_datagram(ephemeral.public_bytes(), &cert);
        debug_assert!(reply.len() <= MIN_CLIENT_AUTH);
        let transcript = crypto::transcript_hash(datagram, &reply);
        let keys = crypto::derive_session_keys(&shared, &transcript);
        self.reply(from, Reply::PendingAuth);
        self.insert_pending(
            from,
            Pending {
                client_key,
                reply,
                keys,
                deadline: now + self.config.handshake_timeout,
                client_id,
                replied_at: now,
                resent: false,
                created: now,
            },
        );
    }

    /// Seconds of the server's clock (from its first datagram), for cookies and rates.
    fn clock_secs(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_secs()
    }

    /// Whether an AUTH must bring a retry cookie before the server does a key exchange.
    fn needs_retry(&self) -> bool {
        match self.config.retry {
            RetryPolicy::Never => false,
            RetryPolicy::Always => true,
            RetryPolicy::UnderLoad { auths_per_sec } => {
                let (_, this, before) = self.auth_rate;
                2 * self.pending.len() >= self.config.max_pending
                    || this.max(before) > auths_per_sec
            }
        }
    }

    /// Octets charged to the server's memory budget: every connection's budget use and
    /// fixed state, and the half-open handshakes. (Counted when a handshake would begin, not
    /// per datagram.)
    pub fn memory_charged(&self) -> usize {
        let conns: usize = self
            .connections
            .values()
            .map(|c| c.budget_used() + std::mem::size_of::<Connection>())
            .sum();
        conns + self.pending.len() * PENDING_COST
    }

    fn insert_pending(&mut self, from: SocketAddr, p: Pending) {
        self.pending_expiry.push_back((p.deadline, from));
        if self.pending.insert(from, p).is_none() {
            self.by_ip.entry(ip_key(from.ip())).or_default().pending += 1;
        }
    }

    fn remove_pending(&mut self, from: &SocketAddr) -> Option<Pending> {
        let p = self.pending.remove(from)?;
        self.release_ip(from.ip(), |u| u.pending -= 1);
        Some(p)
    }

    /// Updates the use of `ip` and forgets it when nothing is left.
    fn release_ip(&mut self, ip: std::net::IpAddr, f: impl FnOnce(&mut IpUse)) {
        let key = ip_key(ip);
        if let Some(u) = self.by_ip.get_mut(&key) {
            f(u);
            if u.connections == 0 && u.pending == 0 {
                self.by_ip.remove(&key);
            }
        }
    }

    /// Removes connection `id` from the table and the address maps; returns it.
    fn remove_connection(&mut self, id: ClientId) -> Option<Connection> {
        let conn = self.connections.remove(&id)?;
        if let Some(r) = self.resumable.get_mut(&id) {
            r.final_stats = Some(conn.stats());
        }
        self.timers.schedule(id, None);
        for a in std::iter::once(conn.addr()).chain(conn.candidate_addr()) {
            if self.by_addr.get(&a) == Some(&id) {
                self.by_addr.remove(&a);
            }
        }
        self.release_ip(conn.addr().ip(), |u| u.connections -= 1);
        Some(conn)
    }

    fn on_client_finished(
        &mut self,
        now: Instant,
        from: SocketAddr,
        header: &crate::wire::Header,
        fields: TypeFields,
        sealed: &mut [u8],
    ) {
        let Some(p) = self.pending.get(&from) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        let mut decoder = crate::pipeline::Decoder::with_limit(0);
        let Ok(opened) = decoder.open(header, &fields, sealed, Some(&p.keys.client_to_server))
        else {
            self.stats.datagrams_dropped += 1;
            tracing::debug!(%from, "finished failed to open");
            return;
        };
        if !crypto::macs_equal(opened.plaintext, &p.keys.client_finished) {
            self.stats.bad_finished += 1;
            self.remove_pending(&from);
            self.reply(
                from,
                Reply::Error(ErrorCode::FinishInvalid, "finished invalid"),
            );
            return;
        }
        let p = self.remove_pending(&from).expect("looked up above");
        // Handshakes run concurrently: the limits are checked again now that it finished.
        let replaces = p
            .client_id
            .is_some_and(|id| self.connections.contains_key(&id))
            || self.by_addr.contains_key(&from);
        if !replaces {
            let ip_conns = self
                .by_ip
                .get(&ip_key(from.ip()))
                .map_or(0, |u| u.connections as usize);
            if self.connections.len() >= self.config.max_clients {
                self.stats.refused_full += 1;
                self.refuse(from, ErrorCode::NoSpace, "server full");
                return;
            }
            if ip_conns >= self.config.max_clients_per_ip {
                self.stats.refused_ip_limit += 1;
                self.refuse(
                    from,
                    ErrorCode::NoSpace,
                    "too many connections from this address",
                );
                return;
            }
        }
        if let Some(old) = self.by_addr.get(&from).copied() {
            // The client restarted on the same address: the old connection is gone.
            if p.client_id != Some(old) {
                if self.remove_connection(old).is_some() {
                    self.events.push_back(Event::Disconnected {
                        client: old,
                        reason: crate::types::DisconnectReason::Replaced,
                    });
                    self.expire_resumable(old, now + self.config.resume_window);
                }
                self.by_addr.remove(&from);
            }
        }
        let id = match p.client_id {
            Some(id) => {
                if self.remove_connection(id).is_some() {
                    self.events.push_back(Event::Disconnected {
                        client: id,
                        reason: crate::types::DisconnectReason::Replaced,
                    });
                }
                self.stats.resumed += u64::from(self.resumable.contains_key(&id));
                id
            }
            None => {
                // With tokens, the backend owns ids below 2^63; the server picks above.
                let base = if self.config.tokens.is_some() {
                    SERVER_ID_BIT
                } else {
                    0
                };
                while self
                    .connections
                    .contains_key(&ClientId(base | self.next_id))
                    || self.resumable.contains_key(&ClientId(base | self.next_id))
                {
                    self.next_id += 1;
                }
                let id = ClientId(base | self.next_id);
                self.next_id += 1;
                id
            }
        };
        self.resumable.insert(
            id,
            Resumable {
                secret: p.keys.resumption_secret,
                until: None,
                final_stats: None,
            },
        );
        let mut data = [0u8; SERVER_FINISHED_DATA];
        data[..FINISHED_LEN].copy_from_slice(&p.keys.server_finished);
        data[FINISHED_LEN..].copy_from_slice(&id.0.to_be_bytes());
        let finished = handshake::finished_datagram(&p.keys.server_to_client, &data);
        self.reply(from, Reply::Finished(finished.clone()));
        let conn = Connection::new(
            now,
            id,
            from,
            Role::Server,
            Arc::clone(&self.conn_config),
            p.keys.server_to_client,
            p.keys.client_to_server,
            Some(finished),
            (!p.resent).then(|| now.saturating_duration_since(p.replied_at)),
        );
        self.timers.schedule(id, conn.poll_timeout());
        self.connections.insert(id, conn);
        self.by_addr.insert(from, id);
        self.by_ip.entry(ip_key(from.ip())).or_default().connections += 1;
        self.stats.connections_accepted += 1;
        self.events.push_back(Event::Connected { client: id });
    }

    /// Whether a datagram looks like a handshake finished: a sealed ACK with packet number 0.
    fn is_finished(datagram: &[u8]) -> bool {
        Packet::parse(datagram).is_ok_and(|p| {
            p.header.packet_type == PacketType::Ack
                && p.header.flags == Flags::ENCRYPTED
                && seal::packet_number(&p.header) == 0
        })
    }

    /// Answers an AUTH with an unsealed ERROR, keeping no state.
    fn refuse(&mut self, to: SocketAddr, code: ErrorCode, why: &'static str) {
        tracing::debug!(%to, code = %code, why, "handshake refused");
        self.reply(to, Reply::Error(code, why));
    }

    /// Queues a handshake datagram for `to`; returns false (and counts the drop) if the queue
    /// is full.
    fn reply(&mut self, to: SocketAddr, reply: Reply) -> bool {
        if self.handshake_out.len() >= MAX_REPLY_QUEUE {
            self.stats.handshakes_dropped += 1;
            return false;
        }
        self.handshake_out.push_back((to, reply));
        true
    }

    /// The client id a resumption ticket proves, if it is valid.
    fn check_ticket(
        &self,
        now: Instant,
        ticket: &[u8; handshake::TICKET_LEN],
        client_key: &[u8],
    ) -> Option<ClientId> {
        let id = ClientId(u64::from_be_bytes(
            ticket[..8].try_into().expect("8 octets"),
        ));
        let r = self.resumable.get(&id)?;
        if r.until.is_some_and(|u| now >= u) {
            return None;
        }
        let expected = crypto::resume_mac(&r.secret, client_key);
        crypto::macs_equal(&ticket[8..], &expected).then_some(id)
    }

    /// Checks a connect token: `Ok(Some(id))` for a valid one, `Ok(None)` for none where
    /// none is required, `Err(why)` to refuse.
    fn check_token(
        &mut self,
        now: Instant,
        from: SocketAddr,
        token: &[u8],
    ) -> Result<Option<ClientId>, &'static str> {
        let Some(policy) = self.config.tokens else {
            return Ok(None);
        };
        if token.is_empty() {
            return if policy.required {
                Err("connect token required")
            } else {
                Ok(None)
            };
        }
        let t = ConnectToken::verify(token, &policy.authority).map_err(|_| "token invalid")?;
        if t.client_id & SERVER_ID_BIT != 0 {
            return Err("token client id out of range");
        }
        let unix = self
            .unix_time(now)
            .ok_or("server has no wall clock for tokens")?;
        if t.expires <= unix {
            return Err("token expired");
        }
        if !self.config.public_addrs.iter().any(|a| t.names(*a)) {
            return Err("token not for this server");
        }
        let digest: [u8; 32] = {
            use sha2::{Digest, Sha256};
            Sha256::digest(token).into()
        };
        if let Some(&(first, _)) = self.token_uses.get(&digest) {
            if first != from {
                return Err("token already used from another address");
            }
        } else {
            if self.token_uses.len() >= MAX_TOKEN_USES {
                self.token_uses.retain(|_, (_, exp)| *exp > unix);
            }
            if self.token_uses.len() >= MAX_TOKEN_USES {
                return Err("too many tokens in use");
            }
            self.token_uses.insert(digest, (from, t.expires));
        }
        Ok(Some(ClientId(t.client_id)))
    }

    /// A sealed datagram from an unknown address: if it is a new packet of a connection
    /// (it opens under that connection's key), the connection challenges the new address and
    /// moves there only when the challenge is answered from it. Only connections whose
    /// replay window would take the packet are tried, those on the same IP first, at most
    /// [`MAX_MIGRATION_TRIALS`].
    fn try_migration(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) -> bool {
        let Ok(packet) = Packet::parse(datagram) else {
            return false;
        };
        if packet.header.fragment.is_some() {
            return false;
        }
        // The search is budgeted per second (one unit per search and per trial decryption),
        // so a flood of sealed-looking datagrams from unknown addresses costs a bounded amount
        // of work; a real client that moved resends.
        let second = self.clock_secs(now);
        if self.trials.0 != second {
            self.trials = (second, 0);
        }
        let budget = MAX_TRIALS_PER_SEC.saturating_sub(self.trials.1) as usize;
        if budget <= 1 || self.connections.is_empty() {
            if budget <= 1 {
                self.stats.migration_trials_limited += 1;
            }
            return false;
        }
        self.trials.1 += 1;
        let pn = seal::packet_number(&packet.header);
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        candidates.extend(
            self.connections
                .values()
                .filter(|c| c.would_accept(pn))
                .map(|c| (c.addr().ip() != from.ip(), c.id())),
        );
        candidates.sort_unstable();
        let connections = &self.connections;
        let scratch = &mut self.scratch;
        let mut tried = 0u32;
        let owner = candidates
            .iter()
            .take(MAX_MIGRATION_TRIALS.min(budget - 1))
            .find(|(_, id)| {
                tried += 1;
                connections[id].opens(&packet, scratch)
            })
            .copied();
        self.candidates = candidates;
        self.trials.1 += tried;
        if let Some((_, id)) = owner {
            let conn = self.connections.get_mut(&id).expect("collected above");
            if let Some(old) = conn.candidate_addr() {
                if self.by_addr.get(&old) == Some(&id) {
                    self.by_addr.remove(&old);
                }
            }
            conn.start_path_challenge(from);
            self.by_addr.insert(from, id);
            let before = conn.addr();
            conn.handle_datagram(now, from, datagram, &mut self.scratch, &mut self.events);
            if conn.addr() != before {
                self.on_migrated(id, before);
            }
            self.dirty.push_back(id);
            return true;
        }
        false
    }

    /// Updates the address table after `id` moved away from `old`.
    fn on_migrated(&mut self, id: ClientId, old: SocketAddr) {
        if self.by_addr.get(&old) == Some(&id) {
            self.by_addr.remove(&old);
        }
        if let Some(new) = self.connections.get(&id).map(Connection::addr) {
            self.by_addr.insert(new, id);
            self.release_ip(old.ip(), |u| u.connections -= 1);
            self.by_ip.entry(ip_key(new.ip())).or_default().connections += 1;
        }
        self.stats.migrations += 1;
    }

    /// Forgets the half-open handshakes whose deadline has come (only those: the queue is in
    /// deadline order).
    fn expire_pending(&mut self, now: Instant) {
        while let Some((deadline, addr)) = take_due(&mut self.pending_expiry, now) {
            if self
                .pending
                .get(&addr)
                .is_some_and(|p| p.deadline == deadline)
            {
                self.remove_pending(&addr);
                self.stats.handshakes_expired += 1;
            }
        }
    }

    /// Lets `id` be resumed until `until`, then forgets it.
    fn expire_resumable(&mut self, id: ClientId, until: Instant) {
        if let Some(r) = self.resumable.get_mut(&id) {
            r.until = Some(until);
            self.resumable_expiry.push_back((until, id));
        }
    }

    /// Re-reads connection `id`'s next deadline after it ran.
    fn reschedule(&mut self, id: ClientId) {
        let t = self.connections.get(&id).and_then(Connection::poll_timeout);
        self.timers.schedule(id, t);
    }

    /// Removes `id` if its connection closed, reporting why.
    fn reap(&mut self, id: ClientId) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        if !conn.is_closed() {
            return;
        }
        if let Some(reason) = conn.take_report() {
            self.events
                .push_back(Event::Disconnected { client: id, reason });
        }
        self.remove_connection(id);
        self.expire_resumable(id, self.last_now + self.config.resume_window);
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
                conn.handle_timeout(now, &mut self.events);
                self.dirty.push_back(id);
                self.stats.timers_run += 1;
            }
            self.reap(id);
            self.reschedule(id);
        }
        self.due = due;
        self.dedup_dirty();
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
        while let Some(id) = self.dirty.pop_front() {
            let Some(conn) = self.connections.get_mut(&id) else {
                continue;
            };
            if let Some((len, destination)) = conn.poll_transmit(now, &mut self.scratch, buf) {
                // Round robin: it goes to the back, others get their turn first.
                self.dirty.push_back(id);
                self.dedup_dirty();
                return Some(Transmit { destination, len });
            }
            self.reap(id);
            self.reschedule(id);
        }
        None
    }

    /// Keeps the dirty queue from growing with repeated ids.
    fn dedup_dirty(&mut self) {
        if self.dirty.len() > 2 * self.connections.len() + 8 {
            let mut seen = std::collections::HashSet::new();
            self.dirty.retain(|id| seen.insert(*id));
        }
    }

    /// Takes the next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        if let Event::Message { client, data, .. } = &ev {
            if let Some(conn) = self.connections.get_mut(client) {
                conn.release_delivered(data.len(), data.capacity());
            }
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

/// Takes the front of a deadline-ordered queue if its deadline is at or before `now`.
fn take_due<K: Copy>(queue: &mut VecDeque<(Instant, K)>, now: Instant) -> Option<(Instant, K)> {
    let &(at, key) = queue.front()?;
    if at > now {
        return None;
    }
    queue.pop_front();
    Some((at, key))
}
