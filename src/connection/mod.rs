//! One peer's state after the handshake: sealing, the replay window, reliability (acks,
//! resends, fragment acks), channels, congestion and pacing, heartbeats, timeouts and closing.
//!
//! A connection does no I/O and reads no clock: every call takes `now`. The endpoint owns the
//! connections and drives them: [`Connection::handle_datagram`] for each datagram from the peer,
//! [`Connection::poll_transmit`] until it returns `None`, [`Connection::handle_timeout`] at
//! [`Connection::poll_timeout`].
//!
//! One concern per file: this file holds the state, the public surface, receiving (open,
//! admit, dispatch) and closing; `channels` the send queues and delivery per channel; `sent`
//! packets in flight, acknowledgements and loss detection; `path` path validation; `timers`
//! every deadline; `builder` the send path and datagram writing; `budget` memory accounting
//! and the limits; `recv` the replay window and owed acks; `congestion` and `rtt` the
//! controller and estimator, `ledbat` the bulk lane's delay-based limiter. The frames inside sealed packets are in [`crate::wire::frame`].

pub mod budget;
mod builder;
mod channels;
pub mod congestion;
pub mod ledbat;
mod loss;
mod path;
pub mod recv;
pub mod rtt;
mod sent;
mod timers;

#[cfg(test)]
pub(crate) use timers::TIMER_VISITS;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{ConnectionConfig, DeliveryMode, MAX_MESSAGE_SIZE};
use crate::pipeline::{
    encode_in_place, encode_into, fragment, seal, Decoder, FragmentBitmap, PacketKey, Reassembler,
    Reassembly, Seal, SendOptions,
};
use crate::types::{
    ChannelId, ChannelStats, ClientId, ConnectionStats, DisconnectReason, Event, SendBudget,
    SendError,
};
use crate::wire::frame::{self, Frame, Frames};
use crate::wire::{
    AckFields, Body, ErrorCode, Flags, Header, Heartbeat, Packet, TypeFields, WireError, MAX_DATA,
    MAX_PAYLOAD,
};
use budget::{message_cost, Admit, Budget, Incoming};
use builder::Job;
use channels::{
    ChannelSet, Part, Queued, RecvChannel, RecvCounted, SendChannel, SendCounted, SeqRange,
};
use congestion::Congestion;
use path::{Challenge, PATH_CHALLENGE};
use recv::{Receiver, Seen};
use rtt::RttEstimator;
use sent::SentPacket;

/// Plaintext octets one unfragmented sealed packet holds (988 less the tag).
pub const PACKET_PLAINTEXT: usize = MAX_DATA - seal::TAG_LEN;
/// How far a reliable-ordered channel's sequence numbers may run ahead of the oldest
/// unacknowledged one (the receiver buffers at most this many messages per channel).
pub const ORDER_WINDOW: u16 = 1024;
/// Reliable packets in flight at most (well inside the receiver's replay window).
const MAX_IN_FLIGHT_PACKETS: usize = 2048;
/// A reliable packet unacknowledged while this many later ones were acknowledged is lost.
const PACKET_THRESHOLD: u32 = 3;
/// The connection closes before its packet number passes this.
const PN_LIMIT: u32 = u32::MAX - 64;
/// Octets a datagram adds around its Data (header with fragment fields and IV, ACK fields).
const DATAGRAM_OVERHEAD: usize = 10 + 4;
/// Octets of a datagram carrying a bare ACK (sealed header, ACK fields, tag).
const ACK_DATAGRAM_LEN: usize = 6 + 4 + seal::TAG_LEN;

/// After this long without a message sent or delivered, a connection gives back the buffers
/// traffic grew.
const IDLE_TRIM: Duration = Duration::from_secs(2);

/// A fragment whose packet number is more than this above the newest one accepted is refused:
/// the peer keeps fewer packets than this in flight (reliable ones stay within the replay
/// window), so only a forger sends it.
const FRAGMENT_AHEAD: u32 = recv::WINDOW;

/// Every this many unreliable data packets, the receiver sends an ACK.
const UNRELIABLE_ACK_EVERY: u32 = 8;

/// Unreliable data packets remembered for congestion control at most; with that many within
/// the resend timeout, no more unreliable packets go out. As many as the receiver's window of
/// plausible fragment packet numbers (`FRAGMENT_AHEAD`), so that a sender never gets that far
/// ahead of what was acknowledged.
const UNRELIABLE_TRACKED: usize = 4096;

/// How late a packet may arrive after the one that showed it missing and still count as
/// reordered rather than lost (for the incoming loss estimate): a sixteenth of the RTT
/// within these bounds (250 µs to 10 ms). A resend, or the redundant copy a quarter RTT after the original,
/// arrives later and does not take the loss back.
const REORDER_MIN: Duration = Duration::from_micros(250);
const REORDER_MAX: Duration = Duration::from_millis(10);

/// While small reliable packets are sent twice, one goes once when this many went twice
/// since the loss estimate last learned a packet's fate: the fate of a packet sent twice does
/// not tell the path's loss, that of one sent once does.
const PROBE_EVERY: u32 = 32;

/// Reliable packets up to this size are sent twice while loss lasts.
const REDUNDANT_MAX: usize = 600;
/// The loss estimate (of datagrams to the peer) from which small reliable packets are sent
/// twice.
const REDUNDANCY_LOSS: f64 = 0.02;

/// Range lists (of the ordered messages in a packet) kept for reuse per connection.
const POOL_LIMIT: usize = 64;

/// The most plaintext a peer's sealed packet may carry after decompression with this
/// configuration: one packet of coalesced messages and frames, or fragment reports and one
/// message of `max_message_size` alone. A packet that decompresses to more is refused before
/// anything is charged for it (the decompression buffer is the endpoint's, of this size).
pub fn plaintext_limit(config: &ConnectionConfig) -> usize {
    (PACKET_PLAINTEXT + frame::message_frame_len(config.max_message_size, true)).min(MAX_PAYLOAD)
}

/// Octets per second over the last full second.
#[derive(Debug, Clone, Copy)]
struct Rate {
    since: Instant,
    bytes: u64,
    packets: u64,
    per_sec: u64,
    packets_per_sec: u64,
}

impl Rate {
    fn new(now: Instant) -> Self {
        Self {
            since: now,
            bytes: 0,
            packets: 0,
            per_sec: 0,
            packets_per_sec: 0,
        }
    }

    fn add(&mut self, now: Instant, len: usize) {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= Duration::from_secs(1) {
            self.per_sec = (self.bytes as f64 / elapsed.as_secs_f64()) as u64;
            self.packets_per_sec = (self.packets as f64 / elapsed.as_secs_f64()) as u64;
            self.since = now;
            self.bytes = 0;
            self.packets = 0;
        }
        self.bytes += len as u64;
        self.packets += 1;
    }
}

/// Which side of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client: it sent the first AUTH.
    Client,
    /// The server.
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Exchanging messages.
    Connected,
    /// Our ERROR 2.x is out; waiting for its ack until the deadline.
    Closing { deadline: Instant },
    /// The peer closed; owed acks still go out, then the connection is gone.
    Draining,
    /// Nothing more to do; the endpoint removes the connection.
    Closed,
}

/// A close in progress: the ERROR packet and what to report when it ends.
struct Closing {
    code: ErrorCode,
    message: Vec<u8>,
    packet: Option<SentPacket>,
    report: Option<DisconnectReason>,
}

/// The per-endpoint scratch space connections share, so that a connection holds none.
pub struct Scratch {
    plain: Vec<u8>,
    compressed: Vec<u8>,
    decoder: Decoder,
    /// The endpoint's buffers for reuse: message buffers and packet payloads.
    pub(crate) messages: MessagePool,
}

/// The endpoint's buffers kept for reuse, shared by its connections: message buffers the
/// application handed back (`recycle`) and the connections' own (a message's once it is in a
/// packet, a packet's payload once acknowledged, one refused or dropped unsent). At most
/// [`MessagePool::MAX_BUFFERS`] buffers of at most [`MessagePool::MAX_BUFFER`] octets, and
/// [`MessagePool::MAX_BYTES`] octets of capacity, so that a burst of deliveries (a batch of
/// datagrams read at once can hold thousands of small messages) and a steady stream of
/// messages and packets are served without allocating. One pool for all (newest first) also
/// means a buffer is usually reused while still in cache: the one a connection just gave
/// back is the next one's.
#[derive(Debug, Default)]
pub(crate) struct MessagePool {
    /// Buffers of less than a datagram's capacity (messages, mostly), newest last.
    small: Vec<Vec<u8>>,
    /// Buffers of a datagram's capacity or more (packets' payloads, large messages).
    large: Vec<Vec<u8>>,
    /// Capacity of all of them.
    bytes: usize,
}

impl MessagePool {
    /// Buffers kept at most.
    pub(crate) const MAX_BUFFERS: usize = 4096;
    /// Octets of capacity kept at most.
    pub(crate) const MAX_BYTES: usize = 1 << 20;
    /// The largest buffer kept (the default `max_message_size`): a larger one is freed.
    pub(crate) const MAX_BUFFER: usize = 64 << 10;

    /// A buffer holding a delivered message `data` (see [`MessagePool::take_empty`]): one
    /// larger than twice its length + `MESSAGE_OVERHEAD` is not used (a received message is
    /// charged its length + `MESSAGE_OVERHEAD`, and holds at most about twice that).
    pub(crate) fn take(&mut self, data: &[u8]) -> Vec<u8> {
        let mut buf = self.take_empty(data.len(), budget::MESSAGE_OVERHEAD);
        buf.extend_from_slice(data);
        buf
    }

    /// An empty buffer for `len` octets. Under a datagram's worth, the newest small one (it
    /// grows if it must), else the newest large one; from a datagram's worth on, the newest
    /// large one unless it is smaller than `len`; either unless it is larger than twice `len`
    /// plus `slack`. A buffer too large is freed (it would be held, and charged or not, whole
    /// by what it holds, and left on top it would be met again), and then, or with none, a
    /// new one of capacity `len` is made. `send` and the builder, which charge a buffer's
    /// capacity, allow a datagram's worth of slack; deliveries `MESSAGE_OVERHEAD`.
    pub(crate) fn take_empty(&mut self, len: usize, slack: usize) -> Vec<u8> {
        let fits = |b: &Vec<u8>| b.capacity() <= 2 * len + slack;
        let found = if len < MAX_DATA {
            self.small.pop().or_else(|| self.large.pop())
        } else {
            self.large.pop()
        };
        let mut buf = found
            .inspect(|b| self.bytes -= b.capacity())
            .filter(|b| fits(b) && (len < MAX_DATA || b.capacity() >= len))
            .unwrap_or_else(|| Vec::with_capacity(len));
        buf.clear();
        buf
    }

    /// Keeps `buf` for reuse if the pool has room.
    pub(crate) fn give(&mut self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap > 0
            && cap <= Self::MAX_BUFFER
            && self.len() < Self::MAX_BUFFERS
            && self.bytes + cap <= Self::MAX_BYTES
        {
            buf.clear();
            self.bytes += cap;
            if cap < MAX_DATA {
                self.small.push(buf);
            } else {
                self.large.push(buf);
            }
        }
    }

    /// Buffers kept.
    pub(crate) fn len(&self) -> usize {
        self.small.len() + self.large.len()
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch(..)")
    }
}

impl Scratch {
    /// Buffers for the largest packet, whose decompressed payloads may reach `limit` octets.
    pub fn new(limit: usize) -> Self {
        Self {
            plain: Vec::with_capacity(MAX_PAYLOAD),
            compressed: Vec::new(),
            decoder: Decoder::with_limit(limit),
            messages: MessagePool::default(),
        }
    }
}

/// One peer's state after the handshake.
pub struct Connection {
    id: ClientId,
    addr: SocketAddr,
    role: Role,
    state: State,
    config: Arc<ConnectionConfig>,
    send_key: PacketKey,
    recv_key: PacketKey,
    next_pn: u32,
    receiver: Receiver,
    reassembler: Reassembler,
    rtt: RttEstimator,
    /// One info line per interval for notable drops.
    log_limit: crate::log::LogLimit,
    cc: Congestion,
    /// The less-than-best-effort lanes' delay-based limiter (`None`: off).
    ledbat: Option<ledbat::Ledbat>,
    /// Octets of `in_flight` in packets of less-than-best-effort lanes only (not counted
    /// against the window other lanes' packets fit in).
    lbe_in_flight: u64,
    /// The octets of the less-than-best-effort lanes' packets not yet acknowledged, whole
    /// (`lbe_in_flight` is this less the share of their fragments reported held): what
    /// bounds their parts in flight.
    lbe_unacked: u64,
    /// Set by `can_send_reliable` for the packet built next: whether lanes that are not (and
    /// that are) less than best effort may send.
    game_lanes_open: bool,
    lbe_lanes_open: bool,
    /// When the less-than-best-effort pacer has tokens again, while a job waits for them.
    bulk_paced_until: Option<Instant>,
    send_channels: Vec<SendChannel>,
    /// Messages queued in `send_channels`: [unreliable, reliable, of which in
    /// less-than-best-effort lanes]. Read instead of a scan over every channel by the builder
    /// and the timers (the channels are a heap allocation of their own, a cache miss per
    /// connection on a server with many).
    queued_messages: [u32; 3],
    /// The channels with messages queued: [unreliable, reliable].
    queued_channels: [ChannelSet; 2],
    recv_channels: Vec<RecvChannel>,
    sent: VecDeque<SentPacket>,
    in_flight: u64,
    largest_acked: Option<u32>,
    /// Every octet held for the peer, charged against the connection's limits.
    budget: Budget,
    jobs: VecDeque<Job>,
    unreliable_header: Option<(Header, TypeFields)>,
    /// The lane priority of the unreliable packet in `unreliable_payload`.
    unreliable_priority: u8,
    /// The virtual clock of the lane scheduler: the start time of the last message served.
    lane_clock: u64,
    unreliable_payload: Vec<u8>,
    /// Last fragments of unreliable packets, written and not yet handed out
    /// (`builder::MAX_TAILS` at most), and their lengths: they go out after the first
    /// fragments of the packets that follow, so that datagrams of one size come in a row (one
    /// GSO call for all the full fragments of a frame, one for the short ones).
    tails: Vec<u8>,
    tail_lens: VecDeque<u16>,
    /// Where in `tails` the oldest one held back starts.
    tail_read: usize,
    /// The held-back datagrams go out before anything else (the store is full, or a datagram
    /// other than a leading fragment was written after them and queued behind them).
    tails_draining: bool,
    /// The datagram just written is a fragment of an unreliable packet other than its last.
    wrote_leading_fragment: bool,
    /// A PING goes out before any data: acknowledgements stopped while unreliable packets
    /// flowed (see `Connection::can_send_unreliable`). One datagram, not fragmented, so
    /// that a receiver that fell far behind accepts it and takes fragments again.
    ping_due: bool,
    epoch: Instant,
    last_recv: Instant,
    last_send: Instant,
    last_ping: Instant,
    pong: Option<([u8; 16], usize)>,
    frag_ack_due: Option<Instant>,
    /// Whether the last fragment of a packet still incomplete arrived since the last report:
    /// the report then goes sooner (see `frag_ack_deadline`).
    frag_report_soon: bool,
    /// When fragment reports last went out.
    frag_reported: Instant,
    /// Octets of fragment reports that may still go out (3x the fragment octets received).
    frag_report_allowance: usize,
    /// A close in progress (boxed: 280 octets that only a closing connection uses).
    close: Option<Box<Closing>>,
    /// The handshake's own pn-0 datagram of this side, resent when the peer shows it lacks it.
    finished: Option<Vec<u8>>,
    resend_finished: bool,
    paced_until: Option<Instant>,
    /// A new address being validated.
    challenge: Option<Challenge>,
    path_response: Option<([u8; 16], usize)>,
    /// Fraction of datagrams lost on the way to the peer, reliable and unreliable.
    path_loss: loss::LossWindow,
    /// Small reliable packets sent twice since the loss estimate last learned a packet's
    /// fate (see `PROBE_EVERY`).
    copy_turn: u32,
    sent_rate: Rate,
    received_rate: Rate,
    stats: ConnectionStats,
    range_pool: Vec<Vec<SeqRange>>,
    /// Unreliable data packets recently sent: (packet number, octets, when), so that their
    /// acknowledgements grow the window and their gaps shrink it like reliable packets'.
    unreliable_sent: VecDeque<(u32, u32, Instant)>,
    /// Octets of the packets in `unreliable_sent` from index `unreliable_stale` on:
    /// unreliable data in flight, which counts against the congestion window with the
    /// reliable `in_flight`.
    unreliable_in_flight: u64,
    /// How many of the oldest `unreliable_sent` entries are past the resend timeout: still
    /// waiting for an ACK to tell their fate (for the loss figure), no longer in flight.
    unreliable_stale: usize,
    /// Unreliable data packets received since the last one that asked for an ACK.
    unreliable_unacked: u32,
    /// Second copies of datagrams due: (when, packet number, fragment index). Small reliable
    /// packets while loss lasts, and the tail of every fragmented transmission.
    copies: VecDeque<(Instant, u32, u8)>,
    /// When a message was last queued or delivered.
    last_data: Instant,
    trimmed: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("role", &self.role)
            .field("state", &self.state)
            .finish()
    }
}

impl Connection {
    /// A connection whose handshake just finished. Packet number 0 of each direction was the
    /// handshake's finished; `finished` is this side's finished datagram, kept to resend.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        now: Instant,
        id: ClientId,
        addr: SocketAddr,
        role: Role,
        config: Arc<ConnectionConfig>,
        send_key: PacketKey,
        recv_key: PacketKey,
        finished: Option<Vec<u8>>,
        handshake_rtt: Option<Duration>,
    ) -> Self {
        let ordered = config
            .channels
            .iter()
            .filter(|c| c.mode == DeliveryMode::ReliableOrdered)
            .count()
            .max(1);
        let ordered_window_limit = config.receive_buffer_bytes / ordered;
        let send_channels = config
            .channels
            .iter()
            .map(|c| SendChannel {
                mode: c.mode,
                compress: c.compress,
                queue: VecDeque::new(),
                queued: 0,
                next_seq: 0,
                window: VecDeque::new(),
                window_base: 0,
                window_bytes: 0,
                window_limit: ordered_window_limit,
                priority: c.priority,
                weight: c.weight.max(1),
                lbe: c.less_than_best_effort
                    && c.mode.is_reliable()
                    && config.bulk_target_delay.is_some(),
                lane_finish: 0,
                counted: SendCounted::default(),
            })
            .collect();
        let recv_channels = config
            .channels
            .iter()
            .map(|c| RecvChannel {
                mode: c.mode,
                seq: None,
                held: VecDeque::new(),
                assembly: None,
                counted: RecvCounted::default(),
            })
            .collect();
        let mut receiver = Receiver::new();
        receiver.accept(now, 0, Duration::ZERO);
        let mut rtt = RttEstimator::new(
            config.initial_rtt,
            config.min_rto,
            config.max_rto,
            config.ack_delay,
        );
        if let Some(sample) = handshake_rtt {
            rtt.update(sample);
        }
        let mut ledbat = config.bulk_target_delay.map(ledbat::Ledbat::new);
        if let (Some(l), Some(sample)) = (&mut ledbat, handshake_rtt) {
            l.on_rtt(now, sample);
        }
        Self {
            budget: Budget::new(config.send_queue_bytes, config.receive_buffer_bytes),
            id,
            addr,
            role,
            state: State::Connected,
            rtt,
            log_limit: crate::log::LogLimit::default(),
            reassembler: Reassembler::new(config.reassembly),
            config,
            send_key,
            recv_key,
            next_pn: 1,
            receiver,
            cc: Congestion::new(),
            ledbat,
            lbe_in_flight: 0,
            lbe_unacked: 0,
            game_lanes_open: true,
            lbe_lanes_open: true,
            bulk_paced_until: None,
            send_channels,
            queued_messages: [0; 3],
            queued_channels: [ChannelSet::default(); 2],
            recv_channels,
            sent: VecDeque::new(),
            in_flight: 0,
            largest_acked: None,
            jobs: VecDeque::new(),
            unreliable_header: None,
            unreliable_priority: 0,
            lane_clock: 0,
            unreliable_payload: Vec::new(),
            tails: Vec::new(),
            tail_lens: VecDeque::new(),
            tail_read: 0,
            tails_draining: false,
            wrote_leading_fragment: false,
            ping_due: false,
            epoch: now,
            last_recv: now,
            last_send: now,
            last_ping: now,
            pong: None,
            frag_ack_due: None,
            frag_report_soon: false,
            frag_reported: now,
            frag_report_allowance: 0,
            close: None,
            finished,
            resend_finished: false,
            paced_until: None,
            challenge: None,
            path_response: None,
            path_loss: loss::LossWindow::default(),
            copy_turn: 0,
            sent_rate: Rate::new(now),
            received_rate: Rate::new(now),
            stats: ConnectionStats::default(),
            range_pool: Vec::new(),
            copies: VecDeque::new(),
            unreliable_sent: VecDeque::new(),
            unreliable_in_flight: 0,
            unreliable_stale: 0,
            unreliable_unacked: 0,
            last_data: now,
            trimmed: false,
        }
    }

    /// The connection's id.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// When the connection was established.
    pub fn connected_at(&self) -> Instant {
        self.epoch
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Moves the connection to a new peer address.
    pub fn set_addr(&mut self, addr: SocketAddr) {
        self.addr = addr;
    }

    /// Whether messages can be sent.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Whether the endpoint should forget the connection.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the connection is closing or draining (no new messages).
    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing { .. } | State::Draining)
    }

    /// Counters and estimates.
    pub fn stats(&self) -> ConnectionStats {
        let mut s = self.stats.clone();
        s.rtt = self.rtt.srtt();
        s.jitter = self.rtt.rttvar();
        s.rto = self.rtt.rto();
        s.loss = self.path_loss.fraction();
        s.incoming_loss = self.receiver.loss();
        s.send_bytes_per_sec = self.sent_rate.per_sec;
        s.receive_bytes_per_sec = self.received_rate.per_sec;
        s.send_packets_per_sec = self.sent_rate.packets_per_sec;
        s.receive_packets_per_sec = self.received_rate.packets_per_sec;
        s.channels = self
            .send_channels
            .iter()
            .zip(&self.recv_channels)
            .map(|(out, inc)| ChannelStats {
                messages_sent: out.counted.messages,
                bytes_sent: out.counted.bytes,
                messages_received: inc.counted.messages,
                bytes_received: inc.counted.bytes,
                dropped_unsent: out.counted.dropped_unsent,
                dropped_stale: inc.counted.dropped_stale,
                queued_messages: out.queue.len() as u64,
                queued_bytes: out.queued as u64,
            })
            .collect();
        s.in_flight_bytes = self.in_flight + self.unreliable_in_flight;
        s.congestion_window = self.cc.window();
        s.send_rate = self.cc.pacing_rate(self.rtt.srtt());
        if let Some(l) = &self.ledbat {
            s.bulk_window = l.window();
            s.queueing_delay = l.queueing_delay().unwrap_or_default();
        }
        s.memory_bytes = self.memory_bytes() as u64;
        s.receive_buffered_bytes = (self.budget.received(self.reassembler.reserved_bytes())
            + self.budget.assembling) as u64;
        s.assembling_bytes = self.budget.assembling as u64;
        s.send_queued_bytes = self.budget.queued as u64;
        s
    }

    /// What can be sent now without queueing (see [`SendBudget`]).
    pub fn send_budget(&self, now: Instant) -> SendBudget {
        let window = self.cc.window();
        let in_flight = self.in_flight + self.unreliable_in_flight;
        let srtt = self.rtt.srtt();
        let tokens = self.cc.tokens_at(now, srtt).max(0.0) as u64;
        let channel_queued_bytes: Vec<u64> =
            self.send_channels.iter().map(|c| c.queued as u64).collect();
        let queued_bytes: u64 = channel_queued_bytes.iter().sum();
        let room = window.saturating_sub(in_flight).min(tokens);
        let per_rtt = (window as f64 / srtt.as_secs_f64().max(0.001)) as u64;
        SendBudget {
            bytes_now: if self.state == State::Connected {
                room.saturating_sub(queued_bytes)
            } else {
                0
            },
            bytes_per_second: per_rtt.min(self.cc.pacing_rate(srtt)),
            window,
            in_flight,
            queued_bytes,
            channel_queued_bytes,
        }
    }

    /// Starts a graceful close with `code` (2.x) and a message for the peer's logs.
    ///
    /// Reliable messages `send` accepted are delivered first: the ERROR goes out once every
    /// one of them is acknowledged (unreliable ones still queued are dropped), all within
    /// `close_timeout`.
    pub fn close(&mut self, now: Instant, code: ErrorCode, message: &str) {
        self.start_close(now, code, message, true);
    }

    fn start_close(&mut self, now: Instant, code: ErrorCode, message: &str, flush: bool) {
        if self.state != State::Connected {
            return;
        }
        self.state = State::Closing {
            deadline: now + self.config.close_timeout,
        };
        let mut end = message.len().min(PACKET_PLAINTEXT);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let msg = &message.as_bytes()[..end];
        self.close = Some(Box::new(Closing {
            code,
            message: msg.to_vec(),
            packet: None,
            report: Some(DisconnectReason::Local { code }),
        }));
        for i in std::mem::take(&mut self.queued_channels[0]).iter() {
            let ch = &mut self.send_channels[i];
            self.stats.unreliable_dropped += ch.queue.len() as u64;
            ch.counted.dropped_unsent += ch.queue.len() as u64;
            self.queued_messages[0] -= ch.queue.len() as u32;
            ch.queue.clear();
            ch.queued = 0;
        }
        if !flush {
            self.jobs.clear();
            self.copies.clear();
            self.jobs.push_back(Job::Close);
        }
    }

    /// Whether a flushing close has nothing left to deliver before its ERROR.
    fn close_ready(&self) -> bool {
        self.sent.is_empty()
            && !self.jobs.iter().any(|j| matches!(j, Job::Reliable { .. }))
            && !self.has_queued(true)
    }

    /// Whether a channel of this kind (reliable or not) has a message queued.
    #[inline]
    pub(super) fn has_queued(&self, reliable: bool) -> bool {
        debug_assert_eq!(
            self.queued_messages[usize::from(reliable)] as usize,
            self.send_channels
                .iter()
                .filter(|c| c.mode.is_reliable() == reliable)
                .map(|c| c.queue.len())
                .sum::<usize>(),
            "queued_messages out of step with the channels"
        );
        debug_assert_eq!(
            self.queued_messages[2] as usize,
            self.send_channels
                .iter()
                .filter(|c| c.lbe)
                .map(|c| c.queue.len())
                .sum::<usize>(),
            "queued_messages out of step with the bulk lanes"
        );
        debug_assert!(
            self.send_channels.iter().enumerate().all(|(i, c)| {
                let kind = usize::from(c.mode.is_reliable());
                let listed = self.queued_channels[kind].iter().any(|j| j == i);
                let elsewhere = self.queued_channels[1 - kind].iter().any(|j| j == i);
                listed != c.queue.is_empty() && !elsewhere
            }),
            "queued_channels out of step with the channels"
        );
        self.queued_messages[usize::from(reliable)] > 0
    }

    /// Takes one datagram from the peer; a sealed packet is opened in place, in `datagram`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &mut [u8],
        scratch: &mut Scratch,
        events: &mut VecDeque<Event>,
    ) {
        if self.state == State::Closed {
            return;
        }
        let len = datagram.len();
        let packet = match Packet::parse(datagram) {
            Ok(p) => p,
            Err(e) => {
                self.drop_wire(e);
                return;
            }
        };
        let header = packet.header;
        let Body::Data { fields, data } = packet.body else {
            self.drop_datagram("AUTH after the handshake");
            return;
        };
        let data_at = len - data.len();
        if !header.flags.contains(Flags::ENCRYPTED) {
            self.drop_datagram("unsealed packet after the handshake");
            return;
        }
        let pn = seal::packet_number(&header);
        let reliable = header.flags.contains(Flags::RELIABLE);
        match self.receiver.check(pn) {
            Seen::New => {}
            Seen::Duplicate => {
                self.stats.duplicates += 1;
                // Answer a duplicate (re-ack, resend our finished) only if it is authentic, or
                // for a fragment (which cannot be opened alone) only if it is at least as large
                // as the answer: a forged datagram never draws more octets than it carried.
                let authentic = if header.fragment.is_some() {
                    len >= ACK_DATAGRAM_LEN
                } else {
                    let mut copy = std::mem::take(&mut scratch.plain);
                    copy.clear();
                    copy.extend_from_slice(data);
                    let ok = scratch
                        .decoder
                        .open(&header, &fields, &mut copy, Some(&self.recv_key))
                        .is_ok();
                    scratch.plain = copy;
                    ok
                };
                if authentic && reliable {
                    self.receiver.ack_later(now, pn);
                }
                if authentic && pn == 0 && self.finished.is_some() && self.role == Role::Server {
                    self.resend_finished = true;
                }
                return;
            }
            Seen::TooOld => {
                self.drop_datagram("packet number below the replay window");
                return;
            }
        }
        if let Some(f) = header.fragment {
            // Fragments cannot be authenticated before the packet is whole, so a forged one is
            // refused if its packet number is one the peer cannot have sent yet, and a new
            // packet must fit the receive budget.
            let plausible = self
                .receiver
                .largest()
                .is_none_or(|l| pn <= l.saturating_add(FRAGMENT_AHEAD));
            if !plausible {
                self.stats.fragments_refused += 1;
                self.drop_datagram("fragment of an implausible packet number");
                return;
            }
            // A fragment that starts a packet, or replaces one of another Fragment Number,
            // reserves new octets.
            if self
                .reassembler
                .held(pn)
                .is_none_or(|(count, _)| count != f.count)
            {
                let reserve = usize::from(f.count) * MAX_DATA;
                if !self
                    .budget
                    .can_reassemble(self.reassembler.reserved_bytes(), reserve)
                {
                    self.stats.dropped_over_budget += 1;
                    self.drop_notable(
                        now,
                        "receive budget full: no room for a new fragmented packet",
                    );
                    return;
                }
            }
            let due = self.frag_ack_due;
            let evictions = self.reassembler.evictions();
            let complete = match self.reassembler.insert(now, &packet) {
                Err(e) => {
                    self.drop_wire(e);
                    None
                }
                Ok(Reassembly::Refused) => {
                    self.stats.fragments_refused += 1;
                    self.drop_notable(now, "reassembly limits reached");
                    None
                }
                Ok(Reassembly::Duplicate) => {
                    self.stats.duplicates += 1;
                    None
                }
                Ok(Reassembly::Incomplete) => {
                    self.frag_report_allowance =
                        (self.frag_report_allowance + 3 * len).min(4 * PACKET_PLAINTEXT);
                    if reliable {
                        if due.is_none() {
                            self.frag_ack_due = Some(now);
                        }
                        // The packet's last fragment arrived and some are missing: the
                        // sender learns it soon (its resend round waits for this report).
                        if usize::from(f.id) + 1 == usize::from(f.count) {
                            self.frag_report_soon = true;
                        }
                    }
                    None
                }
                Ok(Reassembly::Complete {
                    header,
                    fields,
                    payload,
                }) => Some((header, fields, payload.len())),
            };
            self.stats.reassembly_evictions += self.reassembler.evictions() - evictions;
            if let Some((header, fields, n)) = complete {
                let mut buf = self.reassembler.take_completed();
                buf.truncate(n);
                self.open_and_process(now, from, &header, fields, &mut buf, len, scratch, events);
                self.reassembler.recycle(buf);
            }
            return;
        }
        let data = &mut datagram[data_at..];
        self.open_and_process(now, from, &header, fields, data, len, scratch, events);
    }

    #[allow(clippy::too_many_arguments)]
    fn open_and_process(
        &mut self,
        now: Instant,
        from: SocketAddr,
        header: &Header,
        fields: TypeFields,
        payload: &mut [u8],
        len: usize,
        scratch: &mut Scratch,
        events: &mut VecDeque<Event>,
    ) {
        let Scratch {
            decoder, messages, ..
        } = scratch;
        let opened = match decoder.open(header, &fields, payload, Some(&self.recv_key)) {
            Ok(o) => o,
            Err(e) if matches!(e.code, ErrorCode::Compression | ErrorCode::Checksum) => {
                // It opened (decompression and the checksum come after the tag is checked):
                // the peer itself sent what does not decompress within the limit.
                self.drop_wire(e);
                self.fail(now, e.code, events);
                return;
            }
            Err(e) => {
                self.drop_wire(e);
                return;
            }
        };
        let pn = opened.packet_number;
        let plaintext = opened.plaintext;
        let reliable = header.flags.contains(Flags::RELIABLE);
        let reassembly = self.reassembler.reserved_bytes();
        let admit = self.budget.admit(reassembly, plaintext.len(), || {
            self.scan_incoming(plaintext)
        });
        if admit == Admit::Violation {
            self.drop_datagram("a large packet carrying more than one message");
            self.fail(now, ErrorCode::Packet, events);
            return;
        }
        if admit == Admit::OverBudget {
            self.stats.dropped_over_budget += 1;
            self.drop_notable(now, "receive budget full: the application is not polling events, or the peer sends past an ordering gap");
            return;
        }
        let reorder = (self.rtt.srtt() / 16).clamp(REORDER_MIN, REORDER_MAX);
        self.receiver.accept(now, pn, reorder);
        self.last_recv = now;
        if let Some(c) = self.challenge.as_mut().filter(|c| c.addr == from) {
            c.bytes_received += len as u64;
        }
        if matches!(fields, TypeFields::Default | TypeFields::Ack(_)) && !plaintext.is_empty() {
            self.last_data = now;
            self.trimmed = false;
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += len as u64;
        self.received_rate.add(now, len);
        if reliable {
            self.receiver.ack_later(now, pn);
        }
        match fields {
            TypeFields::Ack(ack) => self.on_ack_fields(now, &ack, messages),
            TypeFields::Heartbeat(Heartbeat::Ping) => {
                let mut echo = [0u8; 16];
                let n = plaintext.len().min(16);
                echo[..n].copy_from_slice(&plaintext[..n]);
                if plaintext.starts_with(PATH_CHALLENGE) {
                    self.path_response = Some((echo, n));
                } else {
                    self.pong = Some((echo, n));
                }
                return;
            }
            TypeFields::Heartbeat(Heartbeat::Pong) => {
                if let Some(rest) = plaintext.strip_prefix(PATH_CHALLENGE) {
                    self.on_path_response(from, rest, events);
                    return;
                }
                if let Ok(b) = <[u8; 8]>::try_from(plaintext) {
                    // The peer echoes what this side sent; a forged far-future value must not
                    // overflow the clock (`Instant + Duration` panics on some platforms).
                    let sent = self
                        .epoch
                        .checked_add(Duration::from_micros(u64::from_be_bytes(b)));
                    if let Some(sent) = sent.filter(|&t| t <= now) {
                        self.rtt.update(now - sent);
                        if let Some(l) = &mut self.ledbat {
                            l.on_rtt(now, now - sent);
                        }
                    }
                }
                return;
            }
            TypeFields::Error(code) => {
                let message = String::from_utf8_lossy(plaintext).into_owned();
                // Both sides closing at once: this side reports its own close only.
                if self.state == State::Connected {
                    events.push_back(Event::Disconnected {
                        client: self.id,
                        reason: DisconnectReason::Peer { code, message },
                        stats: Box::new(self.stats()),
                    });
                }
                self.state = State::Draining;
                self.jobs.clear();
                self.copies.clear();
                self.drop_receive_state();
                return;
            }
            TypeFields::Default => {}
        }
        // Frames. A packet that opened but does not parse is a protocol violation. Once this
        // side has reported the end (a violation, the peer's ERROR), the peer's messages are
        // no longer delivered nor assembled: the application was told the client is gone.
        let mut violation = None;
        let mut carried_message = false;
        let ended = self.end_reported();
        for frame in Frames::new(plaintext) {
            match frame {
                Err(e) => {
                    violation = Some(e.code);
                    break;
                }
                Ok(Frame::Message { .. } | Frame::MessagePart { .. }) if ended => {}
                Ok(Frame::Message { channel, seq, data }) => {
                    carried_message = true;
                    if let Err(code) = self.deliver(channel, seq, None, data, messages, events) {
                        violation = Some(code);
                        break;
                    }
                }
                Ok(Frame::MessagePart {
                    channel,
                    seq,
                    total,
                    offset,
                    data,
                }) => {
                    carried_message = true;
                    let part = Some(Part { total, offset });
                    if let Err(code) =
                        self.deliver(channel, Some(seq), part, data, messages, events)
                    {
                        violation = Some(code);
                        break;
                    }
                }
                Ok(Frame::FragmentAck {
                    packet_number,
                    count,
                    bitmap,
                }) => self.on_fragment_ack(now, packet_number, count, bitmap),
            }
        }
        if let Some(code) = violation {
            self.fail(now, code, events);
        } else if !reliable && carried_message {
            // Unreliable data is acknowledged too, every few packets (one ACK covers 17), so
            // that the sender's window and pacing follow what actually gets through. Packets
            // without messages (ACK-only) are not: the sender keeps no record of them.
            self.unreliable_unacked += 1;
            if self.unreliable_unacked >= UNRELIABLE_ACK_EVERY {
                self.unreliable_unacked = 0;
                self.receiver.ack_later(now, pn);
            }
        }
    }

    /// Whether this side has reported the connection's end (its `Disconnected` event is out,
    /// or the peer closed): a protocol violation, the peer's ERROR, a timeout. A close of
    /// this side's own reports it when it completes.
    fn end_reported(&self) -> bool {
        match self.state {
            State::Connected => false,
            State::Closing { .. } => self.close.as_ref().is_none_or(|c| c.report.is_none()),
            State::Draining | State::Closed => true,
        }
    }

    /// Drops what the receive side holds for the peer's messages (held behind a gap, being
    /// assembled from parts): once the end is reported none of it will be delivered, so none
    /// of it is kept (or charged) for the rest of the close.
    fn drop_receive_state(&mut self) {
        for ch in &mut self.recv_channels {
            ch.held = VecDeque::new();
            ch.assembly = None;
        }
        self.budget.held = 0;
        self.budget.assembling = 0;
        self.budget.assembled = 0;
    }

    fn fail(&mut self, now: Instant, code: ErrorCode, events: &mut VecDeque<Event>) {
        if self.state == State::Connected {
            tracing::warn!(
                client = self.id.0,
                addr = %self.addr,
                code = %code,
                "the peer broke the protocol: closing"
            );
            events.push_back(Event::Disconnected {
                client: self.id,
                reason: DisconnectReason::ProtocolViolation(code),
                stats: Box::new(self.stats()),
            });
            self.start_close(now, code, "protocol violation", false);
            if let Some(c) = self.close.as_mut() {
                // The event is out already: closing ends silently.
                c.report = None;
            }
            self.drop_receive_state();
        }
    }

    /// The reason to report once the connection is closed, taken once.
    pub fn take_report(&mut self) -> Option<DisconnectReason> {
        if self.state != State::Closed {
            return None;
        }
        self.close.as_mut().and_then(|c| c.report.take())
    }

    fn drop_datagram(&mut self, why: &'static str) {
        self.stats.datagrams_dropped += 1;
        tracing::debug!(client = self.id.0, why, "datagram dropped");
    }

    /// A drop an operator should see (the application falls behind, reassembly is full): at
    /// info level, one line per `LogLimit::INTERVAL` per connection.
    fn drop_notable(&mut self, now: Instant, why: &'static str) {
        self.stats.datagrams_dropped += 1;
        match self.log_limit.allow(now) {
            Some(left_out) => {
                tracing::info!(client = self.id.0, why, left_out, "datagram dropped")
            }
            None => tracing::debug!(client = self.id.0, why, "datagram dropped"),
        }
    }

    fn drop_wire(&mut self, e: WireError) {
        self.stats.datagrams_dropped += 1;
        tracing::debug!(client = self.id.0, code = %e.code, reason = e.reason, "datagram dropped");
    }
}

#[cfg(test)]
mod pool_tests {
    use super::MessagePool;

    /// A large buffer neither switches the pool off nor stays on top of it: one above
    /// `MAX_BUFFER` is freed when given, one that is too large for the next message is freed
    /// when that message takes from the pool, and small buffers are reused after either.
    #[test]
    fn large_buffers_do_not_block_the_pool() {
        let mut pool = MessagePool::default();
        pool.give(vec![0; 1 << 20]);
        assert_eq!(pool.bytes, 0, "a 1 MiB buffer was kept");
        pool.give(Vec::with_capacity(60 << 10));
        let small = pool.take(&[1; 64]);
        assert!(
            small.capacity() < 1024,
            "a 60 KiB buffer served a 64 B message"
        );
        assert_eq!(pool.bytes, 0, "the misfit was kept");
        pool.give(small);
        let again = pool.take(&[2; 64]);
        assert_eq!(again, vec![2; 64]);
        assert_eq!(pool.len(), 0);
        for _ in 0..MessagePool::MAX_BUFFERS + 10 {
            pool.give(Vec::with_capacity(128));
        }
        assert_eq!(pool.len(), MessagePool::MAX_BUFFERS);
        assert!(pool.bytes <= MessagePool::MAX_BYTES);
    }
}
