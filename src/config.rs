//! Configuration of endpoints, connections and channels, validated when built.

use std::fmt;
use std::time::Duration;

use crate::crypto::{ServerIdentity, ServerKey};
use crate::endpoint::IpPrefix;
use crate::pipeline::ReassemblyConfig;
use crate::wire::MAX_PAYLOAD;
use std::net::SocketAddr;

/// The largest message one packet carries: 255 fragments, less the tag and the message's
/// framing. A larger message (up to [`MAX_LARGE_MESSAGE_SIZE`], on a reliable-ordered channel)
/// is carried in several packets, its parts.
pub const MAX_MESSAGE_SIZE: usize = MAX_PAYLOAD - 16 - 8;

/// The most `ConnectionConfig::max_message_size` may be: 16 MiB. A message above
/// [`MAX_MESSAGE_SIZE`] is cut into parts of up to 251,908 octets, one packet each, and is
/// only accepted on reliable-ordered channels.
pub const MAX_LARGE_MESSAGE_SIZE: usize = 16 << 20;

/// How a channel delivers its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// At most once, in any order; dropped if it cannot go out in time.
    Unreliable,
    /// At most once; a message older than one already delivered is dropped, never delivered
    /// after a newer one.
    UnreliableSequenced,
    /// Exactly once, in any order.
    ReliableUnordered,
    /// Exactly once, in the order sent.
    ReliableOrdered,
}

impl DeliveryMode {
    /// Whether messages are resent until acknowledged.
    pub const fn is_reliable(self) -> bool {
        matches!(self, Self::ReliableUnordered | Self::ReliableOrdered)
    }

    /// Whether messages carry a per-channel sequence number.
    pub const fn is_sequenced(self) -> bool {
        matches!(self, Self::UnreliableSequenced | Self::ReliableOrdered)
    }
}

/// One channel of a connection. Both sides must configure the same channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelConfig {
    /// The delivery guarantee.
    pub mode: DeliveryMode,
    /// Whether packets holding only this channel's (and other compressing channels') messages
    /// may be LZ4-compressed. Leave it off for a channel that mixes secrets with data an
    /// attacker controls: compression before encryption reveals compressibility by length.
    pub compress: bool,
    /// The channel's lane priority: 0 is the highest, the default. When several channels
    /// have messages queued, the sender packs those of the highest priority first, so a
    /// high-priority message never waits behind lower-priority octets queued in tickwire
    /// (the fragments of a large lower-priority packet already on their way included). A
    /// sender's choice: the peer need not configure the same.
    pub priority: u8,
    /// The channel's share of the bandwidth among channels of the same priority, in
    /// proportion to the others' weights (default 1, at least 1): a channel of weight 3
    /// gets three times the octets of one of weight 1 while both have messages queued.
    pub weight: u16,
    /// Whether the channel is a less-than-best-effort lane (default off; on for the default
    /// bulk lane, [`crate::ChannelId::BULK`]). Packets holding only such channels' messages
    /// are limited by a second, delay-based window (after LEDBAT, RFC 6817: see
    /// [`ConnectionConfig::bulk_target_delay`]) on top of the connection's loss-based one,
    /// and do not count against the window the other lanes' packets fit in: a bulk transfer
    /// then keeps the bottleneck's queue, which the game's packets share, short. Reliable
    /// channels only (unreliable ones ignore it). A sender's choice.
    pub less_than_best_effort: bool,
}

impl ChannelConfig {
    /// A channel of `mode` without compression, priority 0, weight 1, best effort.
    pub const fn new(mode: DeliveryMode) -> Self {
        Self {
            mode,
            compress: false,
            priority: 0,
            weight: 1,
            less_than_best_effort: false,
        }
    }

    /// This channel as a less-than-best-effort lane (see
    /// [`ChannelConfig::less_than_best_effort`]).
    #[must_use]
    pub const fn less_than_best_effort(mut self) -> Self {
        self.less_than_best_effort = true;
        self
    }

    /// This channel with compression allowed.
    #[must_use]
    pub const fn compressed(mut self) -> Self {
        self.compress = true;
        self
    }

    /// This channel with lane priority `priority` (0 highest).
    #[must_use]
    pub const fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// This channel with weight `weight` among the channels of its priority.
    #[must_use]
    pub const fn with_weight(mut self, weight: u16) -> Self {
        self.weight = weight;
        self
    }
}

/// Settings every connection of an endpoint shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// The channels, indexed by [`crate::ChannelId`]; at most 256, the same on both sides.
    /// Default: 0 unreliable, 1 unreliable-sequenced, 2 reliable-unordered, 3 reliable-ordered
    /// (all priority 0), 4 the bulk lane ([`crate::ChannelId::BULK`]: reliable-ordered at
    /// priority 255, the lowest, less than best effort).
    pub channels: Vec<ChannelConfig>,
    /// The largest message `send` accepts and a peer may send: at most
    /// [`MAX_LARGE_MESSAGE_SIZE`] (16 MiB). Default 65,536 (64 KiB). A message up to
    /// [`MAX_MESSAGE_SIZE`] (251,916) goes in one packet on any channel; a larger one only on a
    /// reliable-ordered channel (such as [`crate::ChannelId::BULK`]), in parts of one packet
    /// each, and `send_queue_bytes` must hold it. The receiver reserves its length at its
    /// first part (charged to the receive budget, on top of `receive_buffer_bytes`: at most one
    /// such message per reliable-ordered channel at once) and assembles it in a buffer that
    /// grows with the parts that arrive (the server's `memory_budget` counts that buffer),
    /// while its parts pass through the receive budget like other messages.
    pub max_message_size: usize,
    /// A PING goes out when nothing was sent for this long (and at least every four
    /// intervals, to keep measuring the RTT). Default 250 ms.
    pub heartbeat_interval: Duration,
    /// A connection that receives nothing for this long ends with
    /// [`crate::DisconnectReason::TimedOut`]. Default 10 s.
    pub timeout: Duration,
    /// The send budget: octets of reliable messages that may wait to be sent or acknowledged,
    /// each charged its buffer plus 64 octets (so empty messages are not free); `send` beyond
    /// it returns [`crate::SendError::QueueFull`]. Also the most each unreliable channel's
    /// queue holds, which is otherwise what the path sends within `unreliable_deadline`
    /// (at least 64 KiB; past it `send` refuses the message with `QueueFull` too).
    /// Default 4 MiB.
    pub send_queue_bytes: usize,
    /// An unreliable message not sent within this time is dropped and counted
    /// (`ConnectionStats::unreliable_dropped`), never sent late. Default 200 ms.
    pub unreliable_deadline: Duration,
    /// The RTT assumed before the first sample (the handshake gives one). Default 100 ms.
    pub initial_rtt: Duration,
    /// The shortest resend timeout. Default 30 ms.
    pub min_rto: Duration,
    /// The longest resend timeout (backoff stops here: a game would rather resend than wait).
    /// Default 1 s.
    pub max_rto: Duration,
    /// Acknowledgements wait at most this long to be grouped (zero: sent at the next
    /// `poll_transmit`). The ACK fields carry no delay, so this side also takes it as the
    /// peer's: RTT samples from acknowledgements are corrected by it (never below the smallest
    /// sample seen) and the resend timeout allows for it. Give both sides the same value.
    /// Default zero.
    pub ack_delay: Duration,
    /// The receive budget: octets of received messages not yet taken by `poll_event` and
    /// reliable-ordered messages held behind a gap (each its length + 64), and packets in
    /// reassembly, above which arriving packets are dropped unacknowledged (the sender resends
    /// them later). A packet that may fill an ordering gap is still taken while the
    /// application keeps up, so at most three times this is held. A sender keeps each
    /// reliable-ordered channel's unacknowledged messages within this divided by the number of
    /// ordered channels. Default 4 MiB.
    pub receive_buffer_bytes: usize,
    /// Limits of fragment reassembly. Default 32 packets, 2 MiB, 10 s.
    pub reassembly: ReassemblyConfig,
    /// How long a closing connection waits for its ERROR 2.x to be acknowledged (reliable
    /// messages accepted before the close go first, within this time). Default 1 s.
    pub close_timeout: Duration,
    /// The queueing delay the less-than-best-effort lanes (the bulk lane by default: see
    /// [`ChannelConfig::less_than_best_effort`]) aim for: their window grows while the RTT
    /// exceeds its minimum of the last ten seconds by less than this, and shrinks in
    /// proportion above it, so a bulk transfer through a bottleneck with a deep queue adds
    /// about this much delay to the game's packets instead of filling the queue. Loss while
    /// the queue is shorter than half this is taken as random (not congestion) and does not
    /// slow them. `None`: those lanes use the loss-based window like the others. Default
    /// 25 ms (RFC 6817's ceiling for the target is 100 ms; a game wants less).
    pub bulk_target_delay: Option<Duration>,
}

impl Default for ConnectionConfig {
    /// One channel of each mode (0 unreliable, 1 sequenced, 2 reliable-unordered, 3
    /// reliable-ordered) and the bulk lane (4, reliable-ordered at the lowest priority), 64 KiB
    /// messages, PING after 250 ms idle, 10 s timeout.
    fn default() -> Self {
        Self {
            channels: vec![
                ChannelConfig::new(DeliveryMode::Unreliable),
                ChannelConfig::new(DeliveryMode::UnreliableSequenced),
                ChannelConfig::new(DeliveryMode::ReliableUnordered),
                ChannelConfig::new(DeliveryMode::ReliableOrdered),
                ChannelConfig::new(DeliveryMode::ReliableOrdered)
                    .with_priority(u8::MAX)
                    .less_than_best_effort(),
            ],
            max_message_size: 64 * 1024,
            heartbeat_interval: Duration::from_millis(250),
            timeout: Duration::from_secs(10),
            send_queue_bytes: 4 << 20,
            unreliable_deadline: Duration::from_millis(200),
            initial_rtt: Duration::from_millis(100),
            min_rto: Duration::from_millis(30),
            max_rto: Duration::from_secs(1),
            ack_delay: Duration::ZERO,
            receive_buffer_bytes: 4 << 20,
            reassembly: ReassemblyConfig::default(),
            close_timeout: Duration::from_secs(1),
            bulk_target_delay: Some(Duration::from_millis(25)),
        }
    }
}

impl ConnectionConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.channels.is_empty() || self.channels.len() > 256 {
            return Err(ConfigError("between 1 and 256 channels"));
        }
        if self.channels.iter().any(|c| c.weight == 0) {
            return Err(ConfigError("a channel's weight must be at least 1"));
        }
        if self.max_message_size == 0 || self.max_message_size > MAX_LARGE_MESSAGE_SIZE {
            return Err(ConfigError(
                "max_message_size must be 1..=MAX_LARGE_MESSAGE_SIZE",
            ));
        }
        if self.timeout <= self.heartbeat_interval {
            return Err(ConfigError("timeout must exceed heartbeat_interval"));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError("heartbeat_interval must be above zero"));
        }
        if self.min_rto.is_zero() || self.min_rto > self.max_rto {
            return Err(ConfigError("need 0 < min_rto <= max_rto"));
        }
        if self.send_queue_bytes < self.max_message_size {
            return Err(ConfigError(
                "send_queue_bytes must hold one largest message",
            ));
        }
        if self.receive_buffer_bytes < self.max_message_size.min(MAX_MESSAGE_SIZE) {
            return Err(ConfigError(
                "receive_buffer_bytes must hold one largest message of one packet",
            ));
        }
        if self.reassembly.max_packets == 0 || self.reassembly.max_bytes < MAX_PAYLOAD {
            return Err(ConfigError("reassembly must hold one largest packet"));
        }
        Ok(())
    }
}

/// A server endpoint's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The long-term key whose public half clients pin.
    pub identity: ServerIdentity,
    /// Settings of every connection.
    pub connection: ConnectionConfig,
    /// Connected clients at most; a client beyond gets ERROR 1.1 `server full`. Default 64.
    pub max_clients: usize,
    /// Half-open handshakes at most; AUTH beyond it is dropped and counted
    /// (`ServerStats::handshakes_dropped`). Default 1024.
    pub max_pending: usize,
    /// A handshake not finished within this time is forgotten. Default 10 s.
    pub handshake_timeout: Duration,
    /// If set, only these addresses may connect; others are refused with ERROR 1.2.
    pub allow_list: Option<Vec<IpPrefix>>,
    /// If set, clients present connect tokens signed by this authority.
    pub tokens: Option<TokenPolicy>,
    /// The addresses tokens must name for this server (the driver adds its bound address).
    pub public_addrs: Vec<SocketAddr>,
    /// How long a closed connection's client may resume its id with its resumption secret.
    /// Default 120 s.
    pub resume_window: Duration,
    /// Connections from one IP address (IPv6: one /64) at most; a client beyond gets ERROR
    /// 1.1 `too many connections from this address`. Default 16.
    pub max_clients_per_ip: usize,
    /// Half-open handshakes from one IP address (IPv6: one /64) at most; an AUTH beyond is
    /// dropped and counted (`ServerStats::handshakes_dropped_ip`). Default 8.
    pub max_pending_per_ip: usize,
    /// When an AUTH must first return a stateless retry cookie (proving its address) before
    /// the server does a key exchange. Default [`RetryPolicy::UnderLoad`] at 64 AUTHs/s.
    pub retry: RetryPolicy,
    /// Octets the server may hold for all its connections and half-open handshakes (their
    /// budgets' use, see `ServerStats`); past it, new clients get ERROR 1.1 `server memory
    /// budget reached`. Each connection is bounded by its own budget too. Default 512 MiB.
    pub memory_budget: usize,
}

/// When the server answers an AUTH with a stateless retry instead of a key exchange.
///
/// A retry costs the server one HMAC and no state, and is smaller than the AUTH it answers;
/// the client sends its AUTH again with the cookie, which proves it receives at its address.
/// So a flood of AUTHs from spoofed addresses costs no key exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Never: every acceptable AUTH gets a key exchange (one round trip less per handshake).
    Never,
    /// When the half-open table is at least half full, or more than `auths_per_sec` AUTHs
    /// arrived in the current or previous second.
    UnderLoad {
        /// The AUTH rate above which retries start.
        auths_per_sec: u32,
    },
    /// Always (every handshake takes one more round trip).
    Always,
}

/// How a server checks connect tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPolicy {
    /// The backend's public key that signs tokens.
    pub authority: ServerKey,
    /// Whether a client without a token is refused (ERROR 1.2). Without it, a client with no
    /// token connects with a server-chosen id, and a present token is still checked.
    pub required: bool,
}

impl ServerConfig {
    /// Default settings with this identity: 64 clients (16 per IP), 1024 half-open handshakes
    /// (8 per IP), 10 s handshake deadline, stateless retries above 64 AUTHs/s, a 512 MiB
    /// memory budget.
    pub fn new(identity: ServerIdentity) -> Self {
        Self {
            identity,
            connection: ConnectionConfig::default(),
            max_clients: 64,
            max_pending: 1024,
            handshake_timeout: Duration::from_secs(10),
            allow_list: None,
            tokens: None,
            public_addrs: Vec::new(),
            resume_window: Duration::from_secs(120),
            max_clients_per_ip: 16,
            max_pending_per_ip: 8,
            retry: RetryPolicy::UnderLoad { auths_per_sec: 64 },
            memory_budget: 512 << 20,
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.connection.validate()?;
        if self.max_clients == 0 || self.max_pending == 0 {
            return Err(ConfigError(
                "max_clients and max_pending must be above zero",
            ));
        }
        if self.max_clients_per_ip == 0 || self.max_pending_per_ip == 0 {
            return Err(ConfigError(
                "max_clients_per_ip and max_pending_per_ip must be above zero",
            ));
        }
        Ok(())
    }
}

/// How a client checks the server's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKeyPolicy {
    /// Only a server holding this key is accepted; any other is refused with ERROR 1.2.
    Pinned(ServerKey),
    /// Any server key is accepted. This allows a man in the middle: for tests and LAN tools
    /// only, and it must be asked for by name.
    InsecureAcceptAny,
}

/// A client endpoint's settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How the server's certificate is checked.
    pub server_key: ServerKeyPolicy,
    /// Settings of the connection (channels must match the server's).
    pub connection: ConnectionConfig,
    /// A handshake not finished within this time fails with
    /// `DisconnectReason::HandshakeFailed(1.0)`. Default 10 s.
    pub handshake_timeout: Duration,
    /// The first AUTH is resent after this long without an answer (doubling each time, up
    /// to 1 s). Default 250 ms.
    pub handshake_resend: Duration,
}

impl ClientConfig {
    /// Default settings for a server whose key is `server_key`.
    pub fn new(server_key: ServerKey) -> Self {
        Self::with_policy(ServerKeyPolicy::Pinned(server_key))
    }

    /// Default settings that accept any server key (see [`ServerKeyPolicy::InsecureAcceptAny`]).
    pub fn insecure_accept_any_server_key() -> Self {
        Self::with_policy(ServerKeyPolicy::InsecureAcceptAny)
    }

    fn with_policy(server_key: ServerKeyPolicy) -> Self {
        Self {
            server_key,
            connection: ConnectionConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            handshake_resend: Duration::from_millis(250),
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.connection.validate()?;
        if self.handshake_resend.is_zero() {
            return Err(ConfigError("handshake_resend must be above zero"));
        }
        Ok(())
    }
}

/// A setting out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigError(pub &'static str);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}
