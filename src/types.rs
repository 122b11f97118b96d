//! The names the application sees: ids, events, errors, statistics.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::wire::ErrorCode;

/// A client of a server, never confused with an address: it stays the same when the client's
/// address changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A channel of a connection: an index into [`crate::ConnectionConfig::channels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u8);

impl ChannelId {
    /// Channel 0 of the default configuration: unreliable (a message may be lost, duplicates
    /// are dropped, order is not kept). For inputs sent every tick.
    pub const UNRELIABLE: ChannelId = ChannelId(0);
    /// Channel 1 of the default configuration: unreliable-sequenced (a message older than
    /// one already delivered is dropped). For snapshots.
    pub const SEQUENCED: ChannelId = ChannelId(1);
    /// Channel 2 of the default configuration: reliable, delivered as it arrives. For events
    /// whose order does not matter.
    pub const RELIABLE_UNORDERED: ChannelId = ChannelId(2);
    /// Channel 3 of the default configuration: reliable and in order. For chat, commands,
    /// anything that must arrive in sequence.
    pub const RELIABLE_ORDERED: ChannelId = ChannelId(3);
    /// Channel 4 of the default configuration: the bulk lane, reliable and in order at the
    /// lowest lane priority (255). For downloads (maps, replays, assets): its octets go out
    /// only when no other channel has messages queued, and a large bulk message already on
    /// its way yields to game messages between its datagrams.
    pub const BULK: ChannelId = ChannelId(4);
}

/// Something that happened on an endpoint, taken with `poll_event`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake finished: `client` may send and receive. On a client endpoint, `client`
    /// is the id the server gave it.
    Connected {
        /// The connection.
        client: ClientId,
    },
    /// The connection ended; nothing more comes from it.
    Disconnected {
        /// The connection.
        client: ClientId,
        /// Why.
        reason: DisconnectReason,
        /// Its statistics when it ended (all zeros if the handshake never finished).
        stats: Box<ConnectionStats>,
    },
    /// The client's address changed (a NAT rebinding, a new network) and the new path was
    /// confirmed: the connection goes on from `new`.
    AddressChanged {
        /// The connection.
        client: ClientId,
        /// The address it had.
        old: SocketAddr,
        /// The address it has now.
        new: SocketAddr,
    },
    /// A message arrived.
    Message {
        /// From this connection.
        client: ClientId,
        /// On this channel.
        channel: ChannelId,
        /// Its bytes. Hand the vector back with the endpoint's `recycle` to spare an
        /// allocation.
        data: Vec<u8>,
    },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The peer closed it with this ERROR code (2.x, or 1.x during the handshake) and message.
    Peer {
        /// The code the peer sent.
        code: ErrorCode,
        /// The peer's message (UTF-8, lossy).
        message: String,
    },
    /// This side closed it (`disconnect` or `shutdown`) with this code.
    Local {
        /// The code sent to the peer.
        code: ErrorCode,
    },
    /// Nothing arrived for the configured timeout.
    TimedOut,
    /// Nothing came back from the server during the handshake: no server at that address
    /// and port, or the path drops the datagrams (`ClientConfig::handshake_timeout`).
    NoAnswer {
        /// Where the client sent its handshake.
        server: SocketAddr,
        /// How long it tried.
        after: Duration,
    },
    /// The handshake did not finish: the code says why (1.1 server full, 1.2
    /// certificate or client refused, 1.3 bad finished).
    HandshakeFailed(ErrorCode),
    /// The peer broke the protocol after authenticating (the code names how).
    ProtocolViolation(ErrorCode),
    /// The 32-bit packet number space of the connection is used up.
    PacketNumbersExhausted,
    /// The same client connected again (a resumption or a connect token with its id) and the
    /// new connection took over this one.
    Replaced,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Peer { code, message } => {
                write!(f, "closed by peer ({code} {}): {message}", code.name())
            }
            Self::Local { code } => write!(f, "closed locally ({code} {})", code.name()),
            Self::TimedOut => f.write_str("timed out"),
            Self::NoAnswer { server, after } => write!(
                f,
                "no answer from {server} within {:.1} s (is a server running at that address \
                 and port, and is the port reachable?)",
                after.as_secs_f64()
            ),
            Self::HandshakeFailed(code) => {
                write!(f, "handshake failed ({code} {})", code.name())?;
                let hint = match code.parts() {
                    (1, 0) => {
                        ": no answer from the server before the handshake deadline (is it \
                         running at that address and port, and is the port reachable?)"
                    }
                    (1, 1) => ": the server is full, or has too many clients from this address",
                    (1, 2) => {
                        ": the server's key is not the pinned one, or the server refused this \
                         client (banned, not on its allow-list, a missing or bad connect token, \
                         or channels configured differently from the server's)"
                    }
                    (1, 3) => ": the two sides derived different keys (a man in the middle?)",
                    _ => "",
                };
                f.write_str(hint)
            }
            Self::ProtocolViolation(code) => {
                write!(f, "protocol violation ({code} {})", code.name())?;
                let hint = match code.parts() {
                    (3, 0) => {
                        ": a malformed frame, a message on a channel this side does not have \
                         (both sides must configure the same channels), or a message over \
                         max_message_size"
                    }
                    (3, 4) => ": a reliable-ordered message far outside the ordered window",
                    (3, 8) => ": a packet that does not decompress within the size limit",
                    _ => "",
                };
                f.write_str(hint)
            }
            Self::PacketNumbersExhausted => f.write_str("packet numbers exhausted"),
            Self::Replaced => f.write_str("replaced by a newer connection of the same client"),
        }
    }
}

/// Why `send` refused a message. Nothing was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No such connection, or its handshake has not finished yet.
    NotConnected,
    /// The connection has ended or is closing: its `Event::Disconnected` (queued, if not
    /// taken yet) says why.
    Closed,
    /// The message is longer than the configured `max_message_size`.
    MessageTooLarge {
        /// The message's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The send queue is full, and the message was not queued. On a reliable channel: the
    /// send budget (`send_queue_bytes`) is spent; try again after acknowledgements arrive. On
    /// an unreliable one: the unreliable channels already hold what the path can send within
    /// `unreliable_deadline` (at least 64 KiB, see `docs/LIMITS.md`); drop the message, or
    /// send fresher state at the next tick. What `send` accepted goes out unless the path
    /// slows after (or is slower than 64 KiB per deadline); a game that keeps within
    /// [`crate::SendBudget`] never sees this.
    QueueFull,
    /// The channel is not configured.
    UnknownChannel(ChannelId),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotConnected => f.write_str("not connected"),
            Self::Closed => f.write_str("the connection has ended or is closing"),
            Self::MessageTooLarge { len, limit } => {
                write!(f, "message of {len} octets exceeds the limit of {limit}")
            }
            Self::QueueFull => f.write_str("send queue full"),
            Self::UnknownChannel(c) => write!(f, "unknown channel {}", c.0),
        }
    }
}

impl std::error::Error for SendError {}

/// A datagram `poll_transmit` wrote into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Its length at the start of the buffer.
    pub len: usize,
}

/// What a connection can send now without queueing, read once per game tick (from
/// `Server::send_budget` or `Client::send_budget`) to size what the tick sends: snapshot
/// detail, how much of a download to queue.
///
/// The figures are octets on the wire (datagram headers and the 16-octet tag included): a
/// message costs its length plus about 2 to 5 octets of framing, and each datagram of about
/// 1,000 octets adds 30 more (docs/PROTOCOL.md).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendBudget {
    /// Octets that can go out now without waiting: the room left in the congestion window
    /// (window less the octets in flight), at most the pacer's tokens, less what is already
    /// queued in tickwire (which goes first). Zero when the path is full: what is sent then
    /// waits in the send queue.
    pub bytes_now: u64,
    /// The path's rate as the congestion controller sees it, in octets per second: the window
    /// per smoothed round trip (at most the pacing rate). A game that keeps what it sends
    /// within this neither builds a queue in tickwire nor at the bottleneck; a game that sends
    /// less sees it grow as the window does.
    pub bytes_per_second: u64,
    /// The congestion window, in octets.
    pub window: u64,
    /// Octets in flight: sent and not yet acknowledged (reliable and recent unreliable data).
    pub in_flight: u64,
    /// Octets of messages queued in tickwire and not yet put in a packet, all channels.
    pub queued_bytes: u64,
    /// The same per channel, index `ChannelId.0` (each message its length plus
    /// `MESSAGE_OVERHEAD`, as in `ChannelStats::queued_bytes`).
    pub channel_queued_bytes: Vec<u64>,
}

/// Counters and estimates of one connection.
///
/// Read them with `Server::client_stats` or `Client::stats` while the connection lives and
/// after it ended (the server keeps them as long as the client id stays resumable); the
/// `Disconnected` event carries the final ones.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectionStats {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Round-trip variation (RFC 6298's RTTVAR), the jitter estimate.
    pub jitter: Duration,
    /// The current resend timeout.
    pub rto: Duration,
    /// Fraction of this side's datagrams that did not reach the peer, over about the last
    /// 1,000 packets whose fate is known (0.0 to 1.0), from the peer's acknowledgements:
    /// reliable and unreliable packets an ACK describes as missing once packets sent after
    /// them arrived (never from a timer alone, so a lost acknowledgement does not read as a
    /// lost packet). It counts transmissions, so it tells what the path loses, not what is
    /// left after resends: a resend is a transmission of its own. Small reliable packets sent
    /// twice while loss lasts are not counted (both copies must be lost for the packet to
    /// be); when nothing else was counted for 32 of them, one goes once and is.
    pub loss: f64,
    /// Fraction of the peer's datagrams that did not arrive here, over about the last 1,000
    /// packet numbers (0.0 to 1.0), from gaps in the peer's packet numbers. A packet number
    /// that arrives within a sixteenth of the RTT (250 µs to 10 ms) of the packet that showed it
    /// missing was reordered and is not counted; one that arrives later is a resend or a
    /// redundant copy and takes nothing back. A lost original whose copy arrives before any
    /// later packet leaves no gap, so with redundant copies this reads somewhat low.
    pub incoming_loss: f64,
    /// Octets sent per second, over the last full second of sending.
    pub send_bytes_per_sec: u64,
    /// Octets received per second, over the last full second of receiving.
    pub receive_bytes_per_sec: u64,
    /// Datagrams sent per second, over the last full second of sending.
    pub send_packets_per_sec: u64,
    /// Datagrams received (and accepted) per second, over the last full second of receiving.
    pub receive_packets_per_sec: u64,
    /// Datagrams sent (including resends).
    pub packets_sent: u64,
    /// Datagrams received that opened and were accepted.
    pub packets_received: u64,
    /// Octets sent in datagrams.
    pub bytes_sent: u64,
    /// Octets received in accepted datagrams.
    pub bytes_received: u64,
    /// Datagrams resent.
    pub packets_resent: u64,
    /// Reliable packets declared lost (each may be resent several times).
    pub packets_lost: u64,
    /// Octets sent and not yet acknowledged (reliable, and unreliable still within the resend
    /// timeout): what counts against `congestion_window`.
    pub in_flight_bytes: u64,
    /// The congestion window in octets.
    pub congestion_window: u64,
    /// The pacing rate in octets per second.
    pub send_rate: u64,
    /// The less-than-best-effort lanes' delay-based window in octets (zero when
    /// [`crate::ConnectionConfig::bulk_target_delay`] is `None`).
    pub bulk_window: u64,
    /// The queueing delay that window follows: the latest RTT samples' minimum less the
    /// smallest of the last ten seconds (zero when off or before a sample).
    pub queueing_delay: Duration,
    /// Messages delivered to the application.
    pub messages_received: u64,
    /// Messages accepted by `send`.
    pub messages_sent: u64,
    /// Unreliable messages dropped because they could not go out in time.
    pub unreliable_dropped: u64,
    /// Sequenced messages dropped on arrival because a newer one was delivered.
    pub stale_dropped: u64,
    /// Datagrams dropped: unreadable, failed to open, replayed, too old, or over the receive
    /// buffer.
    pub datagrams_dropped: u64,
    /// Duplicate packets received (and dropped).
    pub duplicates: u64,
    /// Octets of memory the connection holds: its state, queues, unacknowledged packets,
    /// reassembly buffers and reusable buffers.
    pub memory_bytes: u64,
    /// Octets charged to the receive budget now (`ConnectionConfig::receive_buffer_bytes`):
    /// messages not yet taken by `poll_event`, messages held for ordering, packets in
    /// reassembly, and `assembling_bytes`.
    pub receive_buffered_bytes: u64,
    /// Octets reserved now for messages too large for one packet whose parts are arriving
    /// (each its whole length + `MESSAGE_OVERHEAD`, from its first part until it is whole; at
    /// most one per reliable-ordered channel). Included in `receive_buffered_bytes`, on top of
    /// the receive limit.
    pub assembling_bytes: u64,
    /// Messages too large for one packet received whole (assembled from their parts).
    pub large_messages_received: u64,
    /// Octets charged to the send budget now (`ConnectionConfig::send_queue_bytes`): queued
    /// reliable messages and unacknowledged ones, each counted as its length plus
    /// `MESSAGE_OVERHEAD`.
    pub send_queued_bytes: u64,
    /// Packets dropped unacknowledged because they would have put the receive budget over its
    /// limit (the peer resends them later). Also counted in `datagrams_dropped`.
    pub dropped_over_budget: u64,
    /// Fragments refused: a packet number this connection could not legitimately receive yet
    /// (far above the newest one accepted), or reassembly full of packets still progressing.
    /// Also counted in `datagrams_dropped`.
    pub fragments_refused: u64,
    /// Incomplete packets dropped from reassembly to make room for a new one (the least
    /// complete, longest idle first).
    pub reassembly_evictions: u64,
    /// `send` calls refused with `SendError::QueueFull` (the send budget was spent, or an
    /// unreliable channel held what the path sends within `unreliable_deadline`).
    pub queue_full: u64,
    /// Times fragment reports were cut short because their allowance (3 × the fragment octets
    /// received since the last report) was spent.
    pub fragment_reports_limited: u64,
    /// Times a path challenge waited because the new address had been sent three times what
    /// it sent (the anti-amplification limit before validation).
    pub amplification_limited: u64,
    /// Per channel, index `ChannelId.0`: its messages and octets each way, drops and queue.
    pub channels: Vec<ChannelStats>,
}

/// Counters of one channel of a connection, in [`ConnectionStats::channels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelStats {
    /// Messages `send` accepted on this channel.
    pub messages_sent: u64,
    /// Octets of the messages `send` accepted.
    pub bytes_sent: u64,
    /// Messages delivered to the application from this channel.
    pub messages_received: u64,
    /// Octets of the messages delivered.
    pub bytes_received: u64,
    /// Unreliable messages `send` accepted and dropped before they went out: past
    /// `ConnectionConfig::unreliable_deadline` (the path slowed after they were accepted), or
    /// at close.
    pub dropped_unsent: u64,
    /// Sequenced messages dropped on arrival because a newer one was delivered.
    pub dropped_stale: u64,
    /// Messages queued and not yet put in a packet.
    pub queued_messages: u64,
    /// Octets charged for the queued messages (each its length plus `MESSAGE_OVERHEAD`).
    pub queued_bytes: u64,
}
