//! The client endpoint: the handshake's client side, then one connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::handshake::{self, SERVER_FINISHED_DATA};
use crate::config::{ClientConfig, ConfigError, ConnectionConfig, ServerKeyPolicy};
use crate::connection::{Connection, Role, Scratch};
use crate::crypto::{self, EphemeralKey, ServerKey, SessionKeys, FINISHED_LEN};
use crate::pipeline::{seal, Decoder};
use crate::types::{
    ChannelId, ClientId, ConnectionStats, DisconnectReason, Event, SendBudget, SendError, Transmit,
};
use crate::wire::{Body, ErrorCode, Flags, Packet, PacketType};

/// Stateless retries answered at once per handshake (a server under load sends one; more
/// means the cookies keep expiring, or someone forges retries); later ones are answered by
/// the resend timer.
const MAX_RETRIES: u32 = 4;

enum Stage {
    /// Our AUTH is out; waiting for the server's.
    AwaitingAuth,
    /// Our finished is out; waiting for the server's.
    AwaitingFinished {
        keys: Box<SessionKeys>,
        finished: Vec<u8>,
    },
}

enum State {
    Handshaking {
        ephemeral: Box<EphemeralKey>,
        auth: Vec<u8>,
        stage: Stage,
        resend_at: Instant,
        interval: Duration,
        deadline: Instant,
        send_now: bool,
        /// When the current stage's datagram last went out, and how many times it went out.
        sent_at: Instant,
        sends: u32,
        /// The RTT the AUTH exchange gave, if its AUTH went out once.
        rtt: Option<Duration>,
        /// What the hello carries, to rebuild the AUTH with a retry's cookie.
        token: Vec<u8>,
        ticket: Option<Box<[u8; handshake::TICKET_LEN]>>,
        /// Retries answered so far (at most [`MAX_RETRIES`]).
        retries: u32,
    },
    Connected(Box<Connection>),
    Closed,
}

/// A client endpoint: one connection to one server.
///
/// Feed it with [`Client::handle_datagram`] and [`Client::handle_timeout`]; after each input
/// drain [`Client::poll_transmit`] and [`Client::poll_event`]; then wait until
/// [`Client::poll_timeout`] or the next datagram.
pub struct Client {
    config: ClientConfig,
    conn_config: Arc<ConnectionConfig>,
    server: SocketAddr,
    state: State,
    events: VecDeque<Event>,
    error_out: Option<Vec<u8>>,
    scratch: Scratch,
    server_key: Option<ServerKey>,
    id: Option<ClientId>,
    resumption: Option<Resumption>,
    dropped: u64,
    /// The connection's counters when it ended.
    final_stats: Option<ConnectionStats>,
}

/// What a client keeps to get its client id back after losing its connection: pass it to
/// [`Client::resume`]. It holds a secret of the session; keep it in memory only.
#[derive(Clone, PartialEq, Eq)]
pub struct Resumption {
    /// The id the server gave.
    pub client: ClientId,
    secret: [u8; 32],
}

impl std::fmt::Debug for Resumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumption")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .field("id", &self.id)
            .finish()
    }
}

impl Client {
    /// A client that starts connecting to `server` at `now`.
    ///
    /// # Errors
    /// [`ConfigError`] if the configuration is invalid.
    pub fn connect(
        config: ClientConfig,
        server: SocketAddr,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        Self::start(config, server, now, &[], None)
    }

    /// Like [`Client::connect_with_token`], and asks the server to give back the client id of
    /// an earlier session (see [`Client::resumption`]); if the server no longer knows it, the
    /// connection gets a new id.
    ///
    /// # Errors
    /// [`ConfigError`] if the configuration is invalid or the token is over 1024 octets.
    pub fn resume(
        config: ClientConfig,
        server: SocketAddr,
        now: Instant,
        token: &[u8],
        resumption: &Resumption,
    ) -> Result<Self, ConfigError> {
        Self::start(config, server, now, token, Some(resumption))
    }

    /// Like [`Client::connect`], presenting `token` (a connect token from the game's backend)
    /// in the client hello.
    ///
    /// # Errors
    /// [`ConfigError`] if the configuration is invalid or the token is over 1024 octets.
    pub fn connect_with_token(
        config: ClientConfig,
        server: SocketAddr,
        now: Instant,
        token: &[u8],
    ) -> Result<Self, ConfigError> {
        Self::start(config, server, now, token, None)
    }

    fn start(
        config: ClientConfig,
        server: SocketAddr,
        now: Instant,
        token: &[u8],
        resumption: Option<&Resumption>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        if token.len() > handshake::MAX_TOKEN {
            return Err(ConfigError("token over 1024 octets"));
        }
        let ephemeral = EphemeralKey::generate();
        let ticket = resumption
            .map(|r| handshake::resume_ticket(r.client.0, &r.secret, ephemeral.public_bytes()));
        let channels = handshake::channels_digest(&config.connection.channels);
        let auth = handshake::client_auth_full(
            ephemeral.public_bytes(),
            token,
            ticket.as_ref(),
            None,
            Some(&channels),
        );
        let conn_config = Arc::new(config.connection.clone());
        let scratch = Scratch::new(crate::connection::plaintext_limit(&conn_config));
        Ok(Self {
            state: State::Handshaking {
                ephemeral: Box::new(ephemeral),
                auth,
                stage: Stage::AwaitingAuth,
                resend_at: now + config.handshake_resend,
                interval: config.handshake_resend,
                deadline: now + config.handshake_timeout,
                send_now: true,
                sent_at: now,
                sends: 0,
                rtt: None,
                token: token.to_vec(),
                ticket: ticket.map(Box::new),
                retries: 0,
            },
            config,
            conn_config,
            server,
            events: VecDeque::new(),
            error_out: None,
            scratch,
            server_key: None,
            id: None,
            resumption: None,
            dropped: 0,
            final_stats: None,
        })
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// The id the server gave this client, once connected.
    pub fn id(&self) -> Option<ClientId> {
        self.id
    }

    /// Once connected: what [`Client::resume`] needs to reconnect as the same client id.
    pub fn resumption(&self) -> Option<Resumption> {
        self.resumption.clone()
    }

    /// The key the server proved it holds, once its certificate was checked.
    pub fn server_key(&self) -> Option<ServerKey> {
        self.server_key
    }

    /// Whether the handshake finished and the connection is up.
    pub fn is_connected(&self) -> bool {
        matches!(&self.state, State::Connected(c) if c.is_connected())
    }

    /// Whether the connection ended (or never came up).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The connection's counters (zero before the handshake finished).
    pub fn stats(&self) -> ConnectionStats {
        match &self.state {
            State::Connected(c) => c.stats(),
            _ => self.final_stats.clone().unwrap_or_default(),
        }
    }

    /// What the connection can send now without queueing, to size a tick's messages
    /// ([`SendBudget`]); `None` before the handshake finished and after the connection ended.
    pub fn send_budget(&self, now: Instant) -> Option<SendBudget> {
        match &self.state {
            State::Connected(c) if c.is_connected() => Some(c.send_budget(now)),
            _ => None,
        }
    }

    /// Datagrams dropped before the connection existed.
    pub fn handshake_dropped(&self) -> u64 {
        self.dropped
    }

    /// Queues a message on `channel`.
    ///
    /// # Errors
    /// [`SendError`] says why nothing was queued.
    pub fn send(
        &mut self,
        now: Instant,
        channel: ChannelId,
        message: &[u8],
    ) -> Result<(), SendError> {
        match &mut self.state {
            State::Connected(c) => c.send(now, channel, message, &mut self.scratch),
            State::Closed => Err(SendError::Closed),
            _ => Err(SendError::NotConnected),
        }
    }

    /// Closes the connection gracefully with ERROR 2.2 (client disconnect).
    pub fn disconnect(&mut self, now: Instant, reason: &str) {
        match &mut self.state {
            State::Connected(c) => c.close(now, ErrorCode::ClientDisconnect, reason),
            State::Handshaking { .. } => {
                self.state = State::Closed;
                self.events.push_back(Event::Disconnected {
                    client: ClientId(0),
                    reason: DisconnectReason::Local {
                        code: ErrorCode::ClientDisconnect,
                    },
                    stats: Box::default(),
                });
            }
            State::Closed => {}
        }
    }

    /// Hands a message buffer from [`Event::Message`] back for reuse: the next deliveries
    /// and sends take it instead of allocating (the endpoint's one pool, which its connections
    /// also feed with the buffers of sent and acknowledged messages). Kept while the pool holds
    /// under 4,096 buffers and 1 MiB of capacity, and if it holds at most 64 KiB (otherwise it
    /// is freed).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.scratch.messages.give(buf);
    }

    /// Takes one datagram that arrived from `from` at `now`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        if from != self.server {
            self.dropped += 1;
            return;
        }
        let packet = match Packet::parse(datagram) {
            Ok(p) => p,
            Err(e) => {
                self.dropped += 1;
                tracing::debug!(code = %e.code, reason = e.reason, "unreadable datagram");
                return;
            }
        };
        match &mut self.state {
            State::Connected(conn) => {
                conn.handle_datagram(now, from, datagram, &mut self.scratch, &mut self.events);
                self.check_closed();
            }
            State::Handshaking { .. } => self.handshake_packet(now, &packet, datagram),
            State::Closed => {}
        }
    }

    fn handshake_packet(&mut self, now: Instant, packet: &Packet<'_>, datagram: &[u8]) {
        let State::Handshaking {
            ephemeral,
            auth,
            stage,
            resend_at,
            interval,
            sent_at,
            sends,
            rtt,
            token,
            ticket,
            retries,
            send_now,
            ..
        } = &mut self.state
        else {
            return;
        };
        if let (Body::Auth(a), Stage::AwaitingAuth) = (&packet.body, &*stage) {
            if let Some(cookie) = handshake::parse_retry(a) {
                // The server is under load: send the AUTH again, same key, with its cookie.
                // Retries are not authenticated, so the newest cookie is always taken (a forged
                // one cannot shut out the server's), but only the first few go out at once:
                // later ones wait for the resend timer, so forged retries draw little.
                let channels = handshake::channels_digest(&self.config.connection.channels);
                *auth = handshake::client_auth_full(
                    ephemeral.public_bytes(),
                    token,
                    ticket.as_deref(),
                    Some(&cookie),
                    Some(&channels),
                );
                *retries += 1;
                if *retries <= MAX_RETRIES {
                    *send_now = true;
                    *sends = 0;
                    *sent_at = now;
                }
                return;
            }
        }
        match (&packet.body, &*stage) {
            (Body::Auth(server_auth), Stage::AwaitingAuth) => {
                let cert = server_auth.certificate.unwrap_or(&[]);
                let eph_c = *ephemeral.public_bytes();
                let certified = ServerKey::from_certificate(cert, &eph_c, server_auth.public_key);
                let accepted = match (certified, self.config.server_key) {
                    (Ok(k), ServerKeyPolicy::Pinned(pinned)) if k == pinned => Some(k),
                    (Ok(k), ServerKeyPolicy::InsecureAcceptAny) => Some(k),
                    _ => None,
                };
                let Some(server_key) = accepted else {
                    self.fail(ErrorCode::CertificateInvalid, "certificate invalid");
                    return;
                };
                let Ok(shared) = ephemeral.shared_secret(server_auth.public_key) else {
                    self.fail(ErrorCode::CertificateInvalid, "server key invalid");
                    return;
                };
                // The transcript covers the bytes as received.
                let transcript = crypto::transcript_hash(auth, datagram);
                let keys = crypto::derive_session_keys(&shared, &transcript);
                let finished =
                    handshake::finished_datagram(&keys.client_to_server, &keys.client_finished);
                self.server_key = Some(server_key);
                *stage = Stage::AwaitingFinished {
                    keys: Box::new(keys),
                    finished,
                };
                *interval = self.config.handshake_resend;
                *resend_at = now + *interval;
                // Karn: an AUTH sent more than once gives no RTT sample.
                *rtt = (*sends == 1).then(|| now.saturating_duration_since(*sent_at));
                *sends = 0;
                if let State::Handshaking { send_now, .. } = &mut self.state {
                    *send_now = true;
                }
            }
            (Body::Data { fields, data }, Stage::AwaitingFinished { keys, finished })
                if packet.header.packet_type == PacketType::Ack
                    && packet.header.flags == Flags::ENCRYPTED
                    && seal::packet_number(&packet.header) == 0 =>
            {
                let mut buf = [0u8; SERVER_FINISHED_DATA + 16];
                if data.len() != buf.len() {
                    self.dropped += 1;
                    return;
                }
                buf.copy_from_slice(data);
                let mut decoder = Decoder::with_limit(0);
                let Ok(opened) = decoder.open(
                    &packet.header,
                    fields,
                    &mut buf,
                    Some(&keys.server_to_client),
                ) else {
                    self.dropped += 1;
                    return;
                };
                let (mac, id) = opened.plaintext.split_at(FINISHED_LEN);
                if !crypto::macs_equal(mac, &keys.server_finished) {
                    self.fail(ErrorCode::FinishInvalid, "finished invalid");
                    return;
                }
                let id = ClientId(u64::from_be_bytes(id.try_into().expect("8 octets")));
                // The finished exchange is the latest RTT sample (if the finished went out
                // once); else the AUTH exchange's.
                let handshake_rtt = (*sends == 1)
                    .then(|| now.saturating_duration_since(*sent_at))
                    .or(*rtt);
                let finished = finished.clone();
                let Stage::AwaitingFinished { keys, .. } =
                    std::mem::replace(stage, Stage::AwaitingAuth)
                else {
                    unreachable!("matched above");
                };
                let conn = Connection::new(
                    now,
                    id,
                    self.server,
                    Role::Client,
                    Arc::clone(&self.conn_config),
                    keys.client_to_server,
                    keys.server_to_client,
                    Some(finished),
                    handshake_rtt,
                );
                self.id = Some(id);
                self.resumption = Some(Resumption {
                    client: id,
                    secret: keys.resumption_secret,
                });
                self.state = State::Connected(Box::new(conn));
                self.events.push_back(Event::Connected { client: id });
            }
            (Body::Data { fields, data }, _)
                if packet.header.packet_type == PacketType::Error
                    && !packet.header.flags.contains(Flags::ENCRYPTED) =>
            {
                // Unsealed errors can only be 1.x answers to the handshake.
                if let crate::wire::TypeFields::Error(code) = fields {
                    if code.parts().0 == 1 {
                        let _ = data;
                        self.state = State::Closed;
                        self.events.push_back(Event::Disconnected {
                            client: ClientId(0),
                            reason: DisconnectReason::HandshakeFailed(*code),
                            stats: Box::default(),
                        });
                        return;
                    }
                }
                self.dropped += 1;
            }
            _ => self.dropped += 1,
        }
    }

    fn fail(&mut self, code: ErrorCode, message: &str) {
        self.error_out = Some(handshake::error_datagram(code, message));
        self.state = State::Closed;
        self.events.push_back(Event::Disconnected {
            client: ClientId(0),
            reason: DisconnectReason::HandshakeFailed(code),
            stats: Box::default(),
        });
    }

    fn check_closed(&mut self) {
        if let State::Connected(conn) = &mut self.state {
            if conn.is_closed() {
                if let Some(reason) = conn.take_report() {
                    self.events.push_back(Event::Disconnected {
                        client: conn.id(),
                        reason,
                        stats: Box::new(conn.stats()),
                    });
                }
                self.final_stats = Some(conn.stats());
                self.state = State::Closed;
            }
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            State::Connected(conn) => {
                conn.handle_timeout(now, &mut self.events, &mut self.scratch);
                self.check_closed();
            }
            State::Handshaking {
                resend_at,
                interval,
                deadline,
                send_now,
                ..
            } => {
                if now >= *deadline {
                    self.state = State::Closed;
                    self.events.push_back(Event::Disconnected {
                        client: ClientId(0),
                        reason: DisconnectReason::NoAnswer {
                            server: self.server,
                            after: self.config.handshake_timeout,
                        },
                        stats: Box::default(),
                    });
                } else if now >= *resend_at {
                    *send_now = true;
                    *interval = (*interval * 2).min(Duration::from_secs(1));
                    *resend_at = now + *interval;
                }
            }
            State::Closed => {}
        }
    }

    /// Writes the next datagram to send into `buf` (at least 1200 octets), or returns `None`
    /// when nothing is due. Call it until it returns `None` after every input.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(err) = self.error_out.take() {
            buf[..err.len()].copy_from_slice(&err);
            return Some(Transmit {
                destination: self.server,
                len: err.len(),
            });
        }
        let destination = self.server;
        match &mut self.state {
            State::Connected(conn) => {
                let n = conn.poll_transmit(now, &mut self.scratch, buf);
                self.check_closed();
                n.map(|(len, _)| Transmit { destination, len })
            }
            State::Handshaking {
                auth,
                stage,
                send_now,
                sent_at,
                sends,
                ..
            } => {
                if !*send_now {
                    return None;
                }
                *send_now = false;
                *sent_at = now;
                *sends += 1;
                let datagram = match stage {
                    Stage::AwaitingAuth => &auth[..],
                    Stage::AwaitingFinished { finished, .. } => &finished[..],
                };
                buf[..datagram.len()].copy_from_slice(datagram);
                Some(Transmit {
                    destination,
                    len: datagram.len(),
                })
            }
            State::Closed => None,
        }
    }

    /// Whether an event waits for [`Client::poll_event`].
    pub fn has_event(&self) -> bool {
        !self.events.is_empty()
    }

    /// Takes the next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        if let (Event::Message { data, .. }, State::Connected(conn)) = (&ev, &mut self.state) {
            conn.release_delivered(data.len());
        }
        Some(ev)
    }

    /// The earliest time [`Client::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Connected(conn) => conn.poll_timeout(),
            State::Handshaking {
                resend_at,
                deadline,
                ..
            } => Some((*resend_at).min(*deadline)),
            State::Closed => None,
        }
    }
}
