//! The server endpoint: the connection table, the handshake's server side and its limits.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::handshake::{self, MIN_CLIENT_AUTH, SERVER_FINISHED_DATA};
use crate::config::{ConfigError, ConnectionConfig, ServerConfig};
use crate::connection::{Connection, Role, Scratch};
use crate::crypto::{self, EphemeralKey, SessionKeys, FINISHED_LEN, PUBLIC_KEY_LEN};
use crate::pipeline::seal;
use crate::types::{ChannelId, ClientId, ConnectionStats, Event, SendError, Transmit};
use crate::wire::{Body, ErrorCode, Flags, Packet, PacketType, TypeFields};

/// A half-open handshake: the server answered an AUTH and waits for the client's finished.
struct Pending {
    client_key: [u8; PUBLIC_KEY_LEN],
    reply: Vec<u8>,
    keys: SessionKeys,
    deadline: Instant,
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
}

/// What the server knows of one client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientInfo {
    /// The client.
    pub id: ClientId,
    /// Its current address.
    pub addr: SocketAddr,
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
    handshake_out: VecDeque<(SocketAddr, Vec<u8>)>,
    dirty: VecDeque<ClientId>,
    scratch: Scratch,
    stats: ServerStats,
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
            scratch: Scratch::new(crate::wire::MAX_PAYLOAD),
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
                stats: c.stats(),
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// One client's counters.
    pub fn client_stats(&self, client: ClientId) -> Option<ConnectionStats> {
        self.connections.get(&client).map(Connection::stats)
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
        self.dirty.push_back(client);
        Ok(())
    }

    /// Queues a message for every connected client; returns how many took it.
    pub fn broadcast(&mut self, now: Instant, channel: ChannelId, message: &[u8]) -> usize {
        let ids: Vec<ClientId> = self.connections.keys().copied().collect();
        ids.into_iter()
            .filter(|&id| self.send(now, id, channel, message).is_ok())
            .count()
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
        self.pending.clear();
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

    /// Takes one datagram that arrived from `from` at `now`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        let packet = match Packet::parse(datagram) {
            Ok(p) => p,
            Err(e) => {
                self.stats.datagrams_dropped += 1;
                tracing::debug!(%from, code = %e.code, reason = e.reason, "unreadable datagram");
                return;
            }
        };
        if let Some(&id) = self.by_addr.get(&from) {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.handle_packet(
                    now,
                    &packet,
                    datagram.len(),
                    &mut self.scratch,
                    &mut self.events,
                );
                self.dirty.push_back(id);
                self.reap(id);
                return;
            }
        }
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
        if len < MIN_CLIENT_AUTH || handshake::hello_token(hello).is_none() {
            self.stats.datagrams_dropped += 1;
            tracing::debug!(%from, len, "client AUTH too short or malformed hello");
            return;
        }
        let Ok(client_key) = <[u8; PUBLIC_KEY_LEN]>::try_from(client_key) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        if let Some(p) = self.pending.get(&from) {
            if p.client_key == client_key {
                // A resent AUTH: our reply was lost. Send the same reply again.
                self.handshake_out.push_back((from, p.reply.clone()));
                return;
            }
        }
        if self.connections.len() >= self.config.max_clients {
            self.stats.refused_full += 1;
            let reply = handshake::error_datagram(ErrorCode::NoSpace, "server full");
            self.handshake_out.push_back((from, reply));
            return;
        }
        if self.pending.len() >= self.config.max_pending && !self.pending.contains_key(&from) {
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
        let cert = self
            .config
            .identity
            .certificate(&client_key, ephemeral.public_bytes());
        let reply = handshake::auth_datagram(ephemeral.public_bytes(), &cert);
        debug_assert!(reply.len() <= MIN_CLIENT_AUTH);
        let transcript = crypto::transcript_hash(datagram, &reply);
        let keys = crypto::derive_session_keys(&shared, &transcript);
        self.handshake_out.push_back((from, reply.clone()));
        self.pending.insert(
            from,
            Pending {
                client_key,
                reply,
                keys,
                deadline: now + self.config.handshake_timeout,
            },
        );
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
            self.pending.remove(&from);
            let reply = handshake::error_datagram(ErrorCode::FinishInvalid, "finished invalid");
            self.handshake_out.push_back((from, reply));
            return;
        }
        let p = self.pending.remove(&from).expect("looked up above");
        let id = ClientId(self.next_id);
        self.next_id += 1;
        let mut data = [0u8; SERVER_FINISHED_DATA];
        data[..FINISHED_LEN].copy_from_slice(&p.keys.server_finished);
        data[FINISHED_LEN..].copy_from_slice(&id.0.to_be_bytes());
        let finished = handshake::finished_datagram(&p.keys.server_to_client, &data);
        self.handshake_out.push_back((from, finished.clone()));
        let conn = Connection::new(
            now,
            id,
            from,
            Role::Server,
            Arc::clone(&self.conn_config),
            p.keys.server_to_client,
            p.keys.client_to_server,
            Some(finished),
        );
        self.connections.insert(id, conn);
        self.by_addr.insert(from, id);
        self.stats.connections_accepted += 1;
        self.events.push_back(Event::Connected { client: id });
    }

    fn expire_pending(&mut self, now: Instant) {
        let before = self.pending.len();
        self.pending.retain(|_, p| p.deadline > now);
        self.stats.handshakes_expired += (before - self.pending.len()) as u64;
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
        let addr = conn.addr();
        self.connections.remove(&id);
        if self.by_addr.get(&addr) == Some(&id) {
            self.by_addr.remove(&addr);
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_pending(now);
        let due: Vec<ClientId> = self
            .connections
            .iter()
            .filter(|(_, c)| c.poll_timeout().is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.handle_timeout(now, &mut self.events);
                self.dirty.push_back(id);
            }
            self.reap(id);
        }
    }

    /// Writes the next datagram to send into `buf` (at least 1200 octets), or returns `None`
    /// when nothing is due. Call it until it returns `None` after every input.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((to, datagram)) = self.handshake_out.pop_front() {
            buf[..datagram.len()].copy_from_slice(&datagram);
            return Some(Transmit {
                destination: to,
                len: datagram.len(),
            });
        }
        while let Some(id) = self.dirty.pop_front() {
            let Some(conn) = self.connections.get_mut(&id) else {
                continue;
            };
            if let Some(len) = conn.poll_transmit(now, &mut self.scratch, buf) {
                let destination = conn.addr();
                // Round robin: it goes to the back, others get their turn first.
                self.dirty.push_back(id);
                self.dedup_dirty();
                return Some(Transmit { destination, len });
            }
            self.reap(id);
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
                conn.release_delivered(data.len());
            }
        }
        Some(ev)
    }

    /// The earliest time [`Server::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conns = self
            .connections
            .values()
            .filter_map(Connection::poll_timeout);
        let pending = self.pending.values().map(|p| p.deadline);
        conns.chain(pending).min()
    }
}
