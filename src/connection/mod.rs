//! One peer's state after the handshake: sealing, the replay window, reliability (acks,
//! resends, fragment acks), channels, congestion and pacing, heartbeats, timeouts and closing.
//!
//! A connection does no I/O and reads no clock: every call takes `now`. The endpoint owns the
//! connections and drives them: [`Connection::handle_datagram`] for each datagram from the peer,
//! [`Connection::poll_transmit`] until it returns `None`, [`Connection::handle_timeout`] at
//! [`Connection::poll_timeout`].

pub mod budget;
pub mod congestion;
pub mod frame;
pub mod recv;
pub mod rtt;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{ConnectionConfig, DeliveryMode};
use crate::pipeline::{
    encode_into, fragment, seal, Decoder, FragmentBitmap, PacketKey, Reassembler, Reassembly, Seal,
    SendOptions,
};
use crate::types::{ChannelId, ClientId, ConnectionStats, DisconnectReason, Event, SendError};
use crate::wire::{
    AckFields, Body, ErrorCode, Flags, Header, Heartbeat, Packet, TypeFields, WireError, MAX_DATA,
    MAX_PAYLOAD,
};
use budget::{message_cost, Admit, Budget, Incoming};
use congestion::Congestion;
use frame::{Frame, Frames};
use recv::{Receiver, Seen};
use rtt::RttEstimator;

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
/// Octets of a sealed path-challenge PING (header with IV, heartbeat octet, 12 octets, tag).
const CHALLENGE_DATAGRAM_LEN: u64 = 6 + 1 + 12 + seal::TAG_LEN as u64;

/// The start of a PING's Data that challenges a new path (then 8 octets to echo).
const PATH_CHALLENGE: &[u8] = b"path";

/// After this long without a message sent or delivered, a connection gives back the buffers
/// traffic grew.
const IDLE_TRIM: Duration = Duration::from_secs(2);

/// A fragment whose packet number is more than this above the newest one accepted is refused:
/// the peer keeps fewer packets than this in flight (reliable ones stay within the replay
/// window), so only a forger sends it.
const FRAGMENT_AHEAD: u32 = recv::WINDOW;

/// Every this many unreliable data packets, the receiver sends an ACK.
const UNRELIABLE_ACK_EVERY: u32 = 8;

/// Unreliable data packets remembered for congestion control at most.
const UNRELIABLE_TRACKED: usize = 1024;

/// Reliable packets up to this size are sent twice while loss lasts.
const REDUNDANT_MAX: usize = 600;
/// The smoothed loss estimate from which small reliable packets are sent twice.
const REDUNDANCY_LOSS: f64 = 0.02;

/// Buffers kept for reuse per connection.
const POOL_LIMIT: usize = 64;

/// Until a new address answers its challenge, it is sent at most this many times the octets
/// of authentic packets received from it (RFC 9000's anti-amplification rule).
const AMPLIFICATION_FACTOR: u64 = 3;

/// A new peer address being validated: the random value its PONG must echo, when the
/// challenge last went out, and the octets exchanged with that address so far.
#[derive(Debug, Clone, Copy)]
struct Challenge {
    addr: SocketAddr,
    value: [u8; 8],
    sent_at: Option<Instant>,
    bytes_received: u64,
    bytes_sent: u64,
}

/// The most plaintext a peer's sealed packet may carry after decompression with this
/// configuration: one packet of coalesced messages and frames, or fragment reports and one
/// message of `max_message_size` alone. A packet that decompresses to more is refused before
/// anything is charged for it (the decompression buffer is the endpoint's, of this size).
pub fn plaintext_limit(config: &ConnectionConfig) -> usize {
    (PACKET_PLAINTEXT + frame::message_frame_len(config.max_message_size, true)).min(MAX_PAYLOAD)
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

struct Queued {
    data: Vec<u8>,
    enqueued: Instant,
}

struct SendChannel {
    mode: DeliveryMode,
    compress: bool,
    queue: VecDeque<Queued>,
    /// Octets of the messages in `queue`.
    queued: usize,
    next_seq: u16,
    /// Reliable-ordered: acked flags of messages from `window_base` on.
    window: VecDeque<bool>,
    window_base: u16,
}

struct RecvChannel {
    mode: DeliveryMode,
    /// Sequenced: the newest delivered; ordered: the next expected.
    seq: Option<u16>,
    /// Ordered: messages waiting for a gap before them, index i is seq `seq + i`.
    held: VecDeque<Option<Vec<u8>>>,
}

/// A range of one channel's messages in a packet.
#[derive(Debug, Clone, Copy)]
struct SeqRange {
    channel: u8,
    first: u16,
    count: u16,
}

struct SentPacket {
    pn: u32,
    header: Header,
    fields: TypeFields,
    payload: Vec<u8>,
    /// Fragments the receiver reported holding (unfragmented packets: unused).
    held: FragmentBitmap,
    first_sent: Instant,
    last_sent: Instant,
    resends: u32,
    size: u64,
    /// What its messages cost the send budget (released when acked).
    message_bytes: usize,
    ordered: Vec<SeqRange>,
    declared_lost: bool,
    /// The first packet number assigned after this packet's latest transmission began: an
    /// acknowledgement of it or later shows this transmission had its chance.
    sent_before_pn: u32,
    /// Whether the receiver reported its fragments since the latest transmission.
    fresh_report: bool,
    /// The highest fragment index written in the latest transmission.
    last_index: usize,
    /// When the receiver last reported the fragments it holds.
    last_report: Option<Instant>,
}

/// A close in progress: the ERROR packet and what to report when it ends.
struct Closing {
    code: ErrorCode,
    message: Vec<u8>,
    packet: Option<SentPacket>,
    report: Option<DisconnectReason>,
}

impl SentPacket {
    /// What the resend timer counts from: the latest transmission, or the latest fragment
    /// report if later (a large packet crossing a slow link keeps reporting progress, and is
    /// not resent while it does).
    fn timer_base(&self) -> Instant {
        match self.last_report {
            Some(r) if r > self.last_sent => r,
            _ => self.last_sent,
        }
    }

    /// The record of packet `pn`, first sent at `now`, with its processed payload.
    fn new(now: Instant, pn: u32, header: Header, fields: TypeFields, payload: Vec<u8>) -> Self {
        Self {
            pn,
            header,
            fields,
            payload,
            held: FragmentBitmap::ZERO,
            first_sent: now,
            last_sent: now,
            resends: 0,
            size: 0,
            message_bytes: 0,
            ordered: Vec::new(),
            declared_lost: false,
            sent_before_pn: pn.saturating_add(1),
            fresh_report: false,
            last_index: 0,
            last_report: None,
        }
    }
}

/// A datagram job: the fragments of a packet still to write.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// A reliable packet from `sent`, fragments from `next` on, skipping those held.
    Reliable { pn: u32, next: usize },
    /// The unreliable packet in `unreliable_payload`.
    Unreliable { next: usize },
    /// The ERROR packet closing the connection (resent like a reliable packet).
    Close,
}

/// The per-endpoint scratch space connections share, so that a connection holds none.
pub struct Scratch {
    plain: Vec<u8>,
    compressed: Vec<u8>,
    decoder: Decoder,
    /// Message buffers handed back by the application, reused for delivery.
    pub(crate) messages: Vec<Vec<u8>>,
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
            messages: Vec::new(),
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
    cc: Congestion,
    send_channels: Vec<SendChannel>,
    recv_channels: Vec<RecvChannel>,
    sent: VecDeque<SentPacket>,
    in_flight: u64,
    largest_acked: Option<u32>,
    /// Every octet held for the peer, charged against the connection's limits.
    budget: Budget,
    jobs: VecDeque<Job>,
    unreliable_header: Option<(Header, TypeFields)>,
    unreliable_payload: Vec<u8>,
    epoch: Instant,
    last_recv: Instant,
    last_send: Instant,
    last_ping: Instant,
    pong: Option<([u8; 16], usize)>,
    frag_ack_due: Option<Instant>,
    close: Option<Closing>,
    /// The handshake's own pn-0 datagram of this side, resent when the peer shows it lacks it.
    finished: Option<Vec<u8>>,
    resend_finished: bool,
    rotate: usize,
    paced_until: Option<Instant>,
    /// A new address being validated.
    challenge: Option<Challenge>,
    path_response: Option<([u8; 16], usize)>,
    loss_ewma: f64,
    stats: ConnectionStats,
    pool: Vec<Vec<u8>>,
    range_pool: Vec<Vec<SeqRange>>,
    /// Unreliable data packets recently sent: (packet number, octets, when), so that their
    /// acknowledgements grow the window and their gaps shrink it like reliable packets'.
    unreliable_sent: VecDeque<(u32, u32, Instant)>,
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
            })
            .collect();
        let recv_channels = config
            .channels
            .iter()
            .map(|c| RecvChannel {
                mode: c.mode,
                seq: None,
                held: VecDeque::new(),
            })
            .collect();
        let mut receiver = Receiver::new();
        receiver.accept(0);
        let mut rtt = RttEstimator::new(config.initial_rtt, config.min_rto, config.max_rto);
        if let Some(sample) = handshake_rtt {
            rtt.update(sample);
        }
        Self {
            budget: Budget::new(config.send_queue_bytes, config.receive_buffer_bytes),
            id,
            addr,
            role,
            state: State::Connected,
            rtt,
            reassembler: Reassembler::new(config.reassembly),
            config,
            send_key,
            recv_key,
            next_pn: 1,
            receiver,
            cc: Congestion::new(),
            send_channels,
            recv_channels,
            sent: VecDeque::new(),
            in_flight: 0,
            largest_acked: None,
            jobs: VecDeque::new(),
            unreliable_header: None,
            unreliable_payload: Vec::new(),
            epoch: now,
            last_recv: now,
            last_send: now,
            last_ping: now,
            pong: None,
            frag_ack_due: None,
            close: None,
            finished,
            resend_finished: false,
            rotate: 0,
            paced_until: None,
            challenge: None,
            path_response: None,
            loss_ewma: 0.0,
            stats: ConnectionStats::default(),
            pool: Vec::new(),
            range_pool: Vec::new(),
            copies: VecDeque::new(),
            unreliable_sent: VecDeque::new(),
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
        let mut s = self.stats;
        s.rtt = self.rtt.srtt();
        s.jitter = self.rtt.rttvar();
        s.rto = self.rtt.rto();
        s.loss = self.loss_ewma;
        s.in_flight_bytes = self.in_flight;
        s.congestion_window = self.cc.window();
        s.send_rate = self.cc.pacing_rate(self.rtt.srtt());
        s.memory_bytes = self.memory_bytes() as u64;
        s.receive_buffered_bytes = self.budget.received(self.reassembler.reserved_bytes()) as u64;
        s.send_queued_bytes = self.budget.queued as u64;
        s
    }

    /// Octets charged to this connection's send and receive budgets (cheap to read).
    pub fn budget_used(&self) -> usize {
        self.budget.received(self.reassembler.reserved_bytes()) + self.budget.queued
    }

    /// Octets this connection holds, counted by capacity.
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let vecs = |v: &Vec<Vec<u8>>| v.iter().map(Vec::capacity).sum::<usize>();
        let mut n = size_of::<Self>() + vecs(&self.pool) + self.unreliable_payload.capacity();
        n += self.reassembler.memory_bytes();
        for ch in &self.send_channels {
            n += size_of::<SendChannel>()
                + ch.queue.capacity() * size_of::<Queued>()
                + ch.queue.iter().map(|q| q.data.capacity()).sum::<usize>()
                + ch.window.capacity();
        }
        for ch in &self.recv_channels {
            n += size_of::<RecvChannel>()
                + ch.held.capacity() * size_of::<Option<Vec<u8>>>()
                + ch.held.iter().flatten().map(Vec::capacity).sum::<usize>();
        }
        n += self.sent.capacity() * size_of::<SentPacket>();
        for p in &self.sent {
            n += p.payload.capacity() + p.ordered.capacity() * size_of::<SeqRange>();
        }
        n += self.jobs.capacity() * size_of::<Job>();
        n += self.unreliable_sent.capacity() * size_of::<(u32, u32, Instant)>();
        n += self.copies.capacity() * size_of::<(Instant, u32, u8)>();
        n += self.receiver.memory_bytes();
        n
    }

    /// The application took a delivered message of `len` octets in a buffer of `capacity`
    /// octets: its charge leaves the receive budget.
    pub fn release_delivered(&mut self, len: usize, capacity: usize) {
        self.budget.undelivered = self
            .budget
            .undelivered
            .saturating_sub(message_cost(len, capacity));
    }

    /// Queues a message.
    ///
    /// # Errors
    /// See [`SendError`]; nothing is queued on error.
    pub fn send(&mut self, now: Instant, channel: ChannelId, data: &[u8]) -> Result<(), SendError> {
        if self.state != State::Connected {
            return Err(SendError::NotConnected);
        }
        let limit = self.config.max_message_size;
        let ch = self
            .send_channels
            .get(usize::from(channel.0))
            .ok_or(SendError::UnknownChannel(channel))?;
        if data.len() > limit {
            return Err(SendError::MessageTooLarge {
                len: data.len(),
                limit,
            });
        }
        let reliable = ch.mode.is_reliable();
        // A pooled buffer much larger than the message would be charged (and held) whole.
        let mut buf = match self.pool.pop() {
            Some(b) if b.capacity() <= 2 * data.len() + MAX_DATA => b,
            Some(b) => {
                self.pool.push(b);
                Vec::new()
            }
            None => Vec::new(),
        };
        buf.clear();
        buf.extend_from_slice(data);
        let cost = message_cost(buf.len(), buf.capacity());
        if reliable && !self.budget.can_queue(cost) {
            if self.pool.len() < POOL_LIMIT {
                self.pool.push(buf);
            }
            self.stats.queue_full += 1;
            return Err(SendError::QueueFull);
        }
        let ch = &mut self.send_channels[usize::from(channel.0)];
        if reliable {
            self.budget.queued += cost;
        } else {
            // Unreliable messages never block the sender: the oldest make room.
            while ch.queued + cost > self.config.send_queue_bytes {
                let Some(old) = ch.queue.pop_front() else {
                    break;
                };
                ch.queued -= message_cost(old.data.len(), old.data.capacity());
                self.stats.unreliable_dropped += 1;
                if self.pool.len() < POOL_LIMIT {
                    self.pool.push(old.data);
                }
            }
        }
        ch.queued += cost;
        ch.queue.push_back(Queued {
            data: buf,
            enqueued: now,
        });
        self.stats.messages_sent += 1;
        self.last_data = now;
        self.trimmed = false;
        Ok(())
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
        self.close = Some(Closing {
            code,
            message: msg.to_vec(),
            packet: None,
            report: Some(DisconnectReason::Local { code }),
        });
        for ch in &mut self.send_channels {
            if !ch.mode.is_reliable() {
                self.stats.unreliable_dropped += ch.queue.len() as u64;
                ch.queue.clear();
                ch.queued = 0;
            }
        }
        if !flush {
            self.jobs.clear();
            self.jobs.push_back(Job::Close);
        }
    }

    /// Whether a flushing close has nothing left to deliver before its ERROR.
    fn close_ready(&self) -> bool {
        self.sent.is_empty()
            && !self.jobs.iter().any(|j| matches!(j, Job::Reliable { .. }))
            && self
                .send_channels
                .iter()
                .all(|c| !c.mode.is_reliable() || c.queue.is_empty())
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
            if self.reassembler.held(pn).is_none() {
                let reserve = usize::from(f.count) * MAX_DATA;
                if !self
                    .budget
                    .can_reassemble(self.reassembler.reserved_bytes(), reserve)
                {
                    self.stats.dropped_over_budget += 1;
                    self.drop_datagram("receive budget full: no room for a new fragmented packet");
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
                    self.drop_datagram("reassembly limits reached");
                    None
                }
                Ok(Reassembly::Duplicate) => {
                    self.stats.duplicates += 1;
                    None
                }
                Ok(Reassembly::Incomplete) => {
                    if reliable && due.is_none() {
                        self.frag_ack_due = Some(now);
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
        let reassembly = self.reassembler.reserved_bytes();
        let admit = self.budget.admit(reassembly, plaintext.len(), || {
            self.scan_incoming(plaintext)
        });
        if admit == Admit::OverBudget {
            self.stats.dropped_over_budget += 1;
            self.drop_datagram("receive budget full: the application is not polling events, or the peer sends past an ordering gap");
            return;
        }
        self.receiver.accept(pn);
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
        if header.flags.contains(Flags::RELIABLE) {
            self.receiver.ack_later(now, pn);
        } else if matches!(fields, TypeFields::Default | TypeFields::Ack(_)) {
            // Unreliable data is acknowledged too, every few packets (one ACK covers 17), so
            // that the sender's window and pacing follow what actually gets through.
            self.unreliable_unacked += 1;
            if self.unreliable_unacked >= UNRELIABLE_ACK_EVERY {
                self.unreliable_unacked = 0;
                self.receiver.ack_later(now, pn);
            }
        }
        match fields {
            TypeFields::Ack(ack) => self.on_ack_fields(now, &ack),
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
                    let sent = self.epoch + Duration::from_micros(u64::from_be_bytes(b));
                    if sent <= now {
                        self.rtt.update(now - sent);
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
                    });
                }
                self.state = State::Draining;
                self.jobs.clear();
                return;
            }
            TypeFields::Default => {}
        }
        // Frames. A packet that opened but does not parse is a protocol violation.
        let mut violation = None;
        for frame in Frames::new(plaintext) {
            match frame {
                Err(e) => {
                    violation = Some(e.code);
                    break;
                }
                Ok(Frame::Message { channel, seq, data }) => {
                    if let Err(code) = self.deliver(channel, seq, data, messages, events) {
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
        }
    }

    /// What an opened packet's messages would add to the receive budget, read without acting
    /// on them. Each channel's messages in one packet are consecutive (the sender packs them
    /// so), so the first one of a channel says whether the rest are in order.
    fn scan_incoming(&self, plaintext: &[u8]) -> Incoming {
        let mut s = Incoming::default();
        let mut current: Option<(u8, u16)> = None;
        for frame in Frames::new(plaintext) {
            let Ok(Frame::Message { channel, seq, data }) = frame else {
                continue;
            };
            let cost = message_cost(data.len(), 0);
            s.bytes += cost;
            let Some(ch) = self.recv_channels.get(usize::from(channel)) else {
                continue;
            };
            let (DeliveryMode::ReliableOrdered, Some(seq)) = (ch.mode, seq) else {
                continue;
            };
            let next = match current {
                Some((c, n)) if c == channel => n,
                _ => ch.seq.unwrap_or(0),
            };
            let offset = seq.wrapping_sub(next);
            if offset == 0 {
                s.fills_gap |= !ch.held.is_empty();
                current = Some((channel, next.wrapping_add(1)));
            } else if offset < ORDER_WINDOW {
                if ch.held.get(usize::from(offset)).is_none_or(Option::is_none) {
                    s.held += cost;
                }
                current = Some((channel, next));
            }
        }
        s
    }

    fn deliver(
        &mut self,
        channel: u8,
        seq: Option<u16>,
        data: &[u8],
        messages: &mut Vec<Vec<u8>>,
        events: &mut VecDeque<Event>,
    ) -> Result<(), ErrorCode> {
        let mut take_buf = |data: &[u8]| {
            let mut buf = messages.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(data);
            buf
        };
        if data.len() > self.config.max_message_size {
            return Err(ErrorCode::Packet);
        }
        let ch = self
            .recv_channels
            .get_mut(usize::from(channel))
            .ok_or(ErrorCode::Packet)?;
        if ch.mode.is_sequenced() != seq.is_some() {
            return Err(ErrorCode::Packet);
        }
        let client = self.id;
        let channel_id = ChannelId(channel);
        match (ch.mode, seq) {
            (DeliveryMode::UnreliableSequenced, Some(s)) => {
                if let Some(last) = ch.seq {
                    if (s.wrapping_sub(last) as i16) <= 0 {
                        self.stats.stale_dropped += 1;
                        return Ok(());
                    }
                }
                ch.seq = Some(s);
            }
            (DeliveryMode::ReliableOrdered, Some(s)) => {
                let next = ch.seq.unwrap_or(0);
                let offset = s.wrapping_sub(next);
                if offset >= 0x8000 {
                    // Already delivered (cannot happen past the replay window, but harmless).
                    return Ok(());
                }
                if offset >= ORDER_WINDOW {
                    return Err(ErrorCode::SequenceId);
                }
                let offset = usize::from(offset);
                if offset > 0 {
                    if ch.held.len() <= offset {
                        ch.held.resize_with(offset + 1, || None);
                    }
                    if ch.held[offset].is_none() {
                        let buf = take_buf(data);
                        self.budget.held += message_cost(buf.len(), buf.capacity());
                        ch.held[offset] = Some(buf);
                    }
                    return Ok(());
                }
                // In order: deliver it, then everything held behind it.
                let buf = take_buf(data);
                self.budget.undelivered += message_cost(buf.len(), buf.capacity());
                self.stats.messages_received += 1;
                events.push_back(Event::Message {
                    client,
                    channel: channel_id,
                    data: buf,
                });
                let mut next = next.wrapping_add(1);
                if !ch.held.is_empty() {
                    ch.held.pop_front();
                }
                while let Some(Some(_)) = ch.held.front() {
                    let msg = ch.held.pop_front().flatten().expect("front is Some");
                    let cost = message_cost(msg.len(), msg.capacity());
                    self.budget.held -= cost;
                    self.budget.undelivered += cost;
                    self.stats.messages_received += 1;
                    events.push_back(Event::Message {
                        client,
                        channel: channel_id,
                        data: msg,
                    });
                    next = next.wrapping_add(1);
                }
                ch.seq = Some(next);
                return Ok(());
            }
            _ => {}
        }
        let buf = take_buf(data);
        self.budget.undelivered += message_cost(buf.len(), buf.capacity());
        self.stats.messages_received += 1;
        events.push_back(Event::Message {
            client,
            channel: channel_id,
            data: buf,
        });
        Ok(())
    }

    fn on_ack_fields(&mut self, now: Instant, ack: &AckFields) {
        // Map the 16-bit ACK ID to the nearest packet number we sent.
        let newest = self.next_pn.wrapping_sub(1);
        let base = newest
            .wrapping_sub(u32::from(newest as u16).wrapping_sub(u32::from(ack.ack_id)) & 0xFFFF);
        let ack_pn = base;
        if ack_pn > newest {
            return;
        }
        for back in 0..=16u32 {
            let Some(pn) = ack_pn.checked_sub(back) else {
                break;
            };
            if back > 0 && ack.ack_bits & (0x8000 >> (back - 1)) == 0 {
                continue;
            }
            self.on_packet_acked(now, pn);
        }
        if self.largest_acked.is_none_or(|l| ack_pn > l) {
            self.largest_acked = Some(ack_pn);
        }
        self.unreliable_acks(now, ack, ack_pn);
        self.detect_losses(now);
    }

    /// Acknowledged unreliable packets grow the window; those left behind by
    /// `PACKET_THRESHOLD` newer acknowledged ones count as a loss (once per round trip).
    fn unreliable_acks(&mut self, now: Instant, ack: &AckFields, ack_pn: u32) {
        let mut i = 0;
        while i < self.unreliable_sent.len() {
            let (pn, size, sent) = self.unreliable_sent[i];
            let back = ack_pn.wrapping_sub(pn);
            let acked =
                back == 0 || (1..=16).contains(&back) && ack.ack_bits & (0x8000 >> (back - 1)) != 0;
            if acked {
                self.cc.on_ack(u64::from(size), sent);
                self.unreliable_sent.remove(i);
            } else if pn < ack_pn && (PACKET_THRESHOLD..=16).contains(&back) {
                // Inside the window the ACK describes and not in it: lost.
                self.cc.on_loss(now, sent);
                self.unreliable_sent.remove(i);
            } else if pn < ack_pn && back > 16 {
                // Older than any ACK will describe again: forget it.
                self.unreliable_sent.remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn on_packet_acked(&mut self, now: Instant, pn: u32) {
        if let Some(Closing {
            packet: Some(close),
            ..
        }) = &self.close
        {
            if close.pn == pn {
                self.state = State::Closed;
                return;
            }
        }
        let Ok(i) = self.sent.binary_search_by_key(&pn, |p| p.pn) else {
            return;
        };
        let packet = self.sent.remove(i).expect("index from binary search");
        if packet.resends == 0 {
            self.rtt
                .update(now.saturating_duration_since(packet.first_sent));
        }
        self.in_flight = self.in_flight.saturating_sub(packet.size);
        self.cc.on_ack(packet.size, packet.first_sent);
        self.budget.queued = self.budget.queued.saturating_sub(packet.message_bytes);
        self.loss_ewma *= 0.99;
        for r in &packet.ordered {
            let ch = &mut self.send_channels[usize::from(r.channel)];
            for k in 0..r.count {
                let idx = usize::from(r.first.wrapping_add(k).wrapping_sub(ch.window_base));
                if let Some(slot) = ch.window.get_mut(idx) {
                    *slot = true;
                }
            }
            while ch.window.front() == Some(&true) {
                ch.window.pop_front();
                ch.window_base = ch.window_base.wrapping_add(1);
            }
        }
        self.recycle_sent(packet);
    }

    fn recycle_sent(&mut self, packet: SentPacket) {
        if self.pool.len() < POOL_LIMIT && packet.payload.capacity() <= 2 * MAX_DATA {
            self.pool.push(packet.payload);
        }
        if self.range_pool.len() < POOL_LIMIT && packet.ordered.capacity() > 0 {
            self.range_pool.push(packet.ordered);
        }
    }

    fn on_fragment_ack(&mut self, now: Instant, pn: u32, count: u8, bitmap: &[u8]) {
        let Ok(i) = self.sent.binary_search_by_key(&pn, |p| p.pn) else {
            return;
        };
        let packet = &mut self.sent[i];
        if packet.header.fragment.map(|f| f.count) != Some(count) {
            return;
        }
        // Fragments newly reported held grow the window as acknowledged octets would, so a
        // large transfer opens it (slow start) without waiting for its one final ack.
        let before = packet.held.count_ones();
        let sent_at = packet.last_sent;
        // The latest report replaces the earlier ones: the receiver may have dropped an
        // incomplete packet since (at its reassembly deadline).
        packet.held = FragmentBitmap::ZERO;
        for (dst, src) in packet.held.as_raw_mut_slice().iter_mut().zip(bitmap) {
            *dst = *src;
        }
        packet.held[usize::from(count)..].fill(false);
        packet.fresh_report = true;
        packet.last_report = Some(now);
        let gained = packet.held.count_ones().saturating_sub(before);
        self.cc.on_ack((gained * MAX_DATA) as u64, sent_at);
        // Fragments missing below the last one the receiver holds of this transmission are
        // lost (the fragment-level packet threshold): resend them now rather than at the
        // resend timeout. A report that arrives while the packet is being (re)sent, or
        // after it was already declared lost, changes nothing.
        let count = usize::from(count);
        // (No time rule: on a slow link the fragments of one burst arrive over a long time,
        // and a report in the middle of it would make every fragment still in flight look
        // lost.)
        let received_last = packet.held[..count]
            .last_one()
            .is_some_and(|i| i >= packet.last_index);
        let missing = packet.held[..count].not_all();
        let queued = self
            .jobs
            .iter()
            .any(|j| matches!(j, Job::Reliable { pn: p, .. } if *p == pn));
        if received_last && missing && !packet.declared_lost && !queued {
            packet.declared_lost = true;
            self.on_lost(now, pn);
        }
    }

    /// Packets unacknowledged while `PACKET_THRESHOLD` later ones were acked, or older than
    /// 9/8 RTT behind an acked one, are lost: resend them now.
    fn detect_losses(&mut self, now: Instant) {
        let Some(largest) = self.largest_acked else {
            return;
        };
        let rtt = self.rtt.srtt().max(self.rtt.latest());
        let time_threshold = rtt * 9 / 8;
        let mut lost = Vec::new();
        for p in self.sent.iter_mut() {
            if p.pn >= largest {
                break;
            }
            // Resends keep their packet number, so what counts is whether packets sent after
            // this packet's latest transmission were acknowledged.
            if p.declared_lost || largest < p.sent_before_pn {
                continue;
            }
            let by_count = largest - p.sent_before_pn + 1 >= PACKET_THRESHOLD;
            let by_time = now.saturating_duration_since(p.last_sent) >= time_threshold;
            if by_count || by_time {
                p.declared_lost = true;
                lost.push(p.pn);
            }
        }
        for pn in lost {
            self.on_lost(now, pn);
        }
    }

    fn on_lost(&mut self, now: Instant, pn: u32) {
        let Ok(i) = self.sent.binary_search_by_key(&pn, |p| p.pn) else {
            return;
        };
        let sent_at = self.sent[i].last_sent;
        self.cc.on_loss(now, sent_at);
        self.stats.packets_lost += 1;
        self.loss_ewma = self.loss_ewma * 0.99 + 0.01;
        if !self
            .jobs
            .iter()
            .any(|j| matches!(j, Job::Reliable { pn: p, .. } if *p == pn))
        {
            self.jobs.push_back(Job::Reliable { pn, next: 0 });
        }
    }

    fn fail(&mut self, now: Instant, code: ErrorCode, events: &mut VecDeque<Event>) {
        if self.state == State::Connected {
            events.push_back(Event::Disconnected {
                client: self.id,
                reason: DisconnectReason::ProtocolViolation(code),
            });
            self.start_close(now, code, "protocol violation", false);
            if let Some(c) = self.close.as_mut() {
                // The event is out already: closing ends silently.
                c.report = None;
            }
        }
    }

    /// A packet of this connection that opened arrived from `addr`, not its address: send a
    /// challenge there; the connection moves only when the answer comes back from it.
    pub fn start_path_challenge(&mut self, addr: SocketAddr) {
        if self.state != State::Connected || addr == self.addr {
            return;
        }
        if self.challenge.is_some_and(|c| c.addr == addr) {
            return;
        }
        // The value comes from the OS's CSPRNG: the peer (which may be the one spoofing the
        // new address) cannot predict it, so only a host that receives at `addr` answers.
        let mut value = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut value);
        self.challenge = Some(Challenge {
            addr,
            value,
            sent_at: None,
            bytes_received: 0,
            bytes_sent: 0,
        });
    }

    /// The address being validated, if any.
    pub fn candidate_addr(&self) -> Option<SocketAddr> {
        self.challenge.map(|c| c.addr)
    }

    /// Whether `pn` would be accepted (used to find the connection of a datagram from an
    /// unknown address before trying its key).
    pub fn would_accept(&self, pn: u32) -> bool {
        self.state == State::Connected && self.receiver.check(pn) == Seen::New
    }

    /// Whether a sealed, unfragmented packet opens under this connection's key (nothing
    /// changes either way).
    pub fn opens(&self, packet: &Packet<'_>, scratch: &mut Scratch) -> bool {
        let Body::Data { fields, data } = packet.body else {
            return false;
        };
        if packet.header.fragment.is_some() || !packet.header.flags.contains(Flags::ENCRYPTED) {
            return false;
        }
        let mut buf = std::mem::take(&mut scratch.plain);
        buf.clear();
        buf.extend_from_slice(data);
        let ok = scratch
            .decoder
            .open(&packet.header, &fields, &mut buf, Some(&self.recv_key))
            .is_ok();
        scratch.plain = buf;
        ok
    }

    fn on_path_response(&mut self, from: SocketAddr, echo: &[u8], events: &mut VecDeque<Event>) {
        let Some(c) = self.challenge else {
            return;
        };
        if from != c.addr || !crate::crypto::macs_equal(echo, &c.value) {
            return;
        }
        let old = self.addr;
        self.addr = c.addr;
        self.challenge = None;
        events.push_back(Event::AddressChanged {
            client: self.id,
            old,
            new: c.addr,
        });
    }

    /// The reason to report once the connection is closed, taken once.
    pub fn take_report(&mut self) -> Option<DisconnectReason> {
        if self.state != State::Closed {
            return None;
        }
        self.close.as_mut().and_then(|c| c.report.take())
    }

    /// Runs the timers due at `now`: the idle timeout, resends, expiry of unreliable messages
    /// and of incomplete packets, and the end of a close.
    pub fn handle_timeout(&mut self, now: Instant, events: &mut VecDeque<Event>) {
        match self.state {
            State::Closed => return,
            State::Closing { deadline } if now >= deadline => {
                self.state = State::Closed;
                return;
            }
            _ => {}
        }
        if now.saturating_duration_since(self.last_recv) >= self.config.timeout {
            if self.state == State::Connected {
                events.push_back(Event::Disconnected {
                    client: self.id,
                    reason: DisconnectReason::TimedOut,
                });
            }
            self.state = State::Closed;
            if let Some(c) = self.close.as_mut() {
                c.report = None;
            }
            return;
        }
        if self.state == State::Connected && self.next_pn >= PN_LIMIT {
            self.close(now, ErrorCode::Disconnect, "packet numbers exhausted");
            if let Some(c) = self.close.as_mut() {
                c.report = Some(DisconnectReason::PacketNumbersExhausted);
            }
        }
        if let State::Closing { .. } = self.state {
            if let Some(Closing {
                packet: Some(p), ..
            }) = &self.close
            {
                if now >= p.last_sent + self.rtt.backoff_rto(p.resends)
                    && !self.jobs.iter().any(|j| matches!(j, Job::Close))
                {
                    self.jobs.push_back(Job::Close);
                }
                return;
            }
        }
        // Unreliable messages that could not go out in time.
        let deadline = self.config.unreliable_deadline;
        for ch in &mut self.send_channels {
            if ch.mode.is_reliable() {
                continue;
            }
            while ch
                .queue
                .front()
                .is_some_and(|q| now.saturating_duration_since(q.enqueued) >= deadline)
            {
                let q = ch.queue.pop_front().expect("front checked");
                ch.queued -= message_cost(q.data.len(), q.data.capacity());
                self.stats.unreliable_dropped += 1;
                if self.pool.len() < POOL_LIMIT {
                    self.pool.push(q.data);
                }
            }
        }
        // Resend timeouts.
        let mut expired = Vec::new();
        for p in &self.sent {
            if now >= p.timer_base() + self.rtt.backoff_rto(p.resends) {
                expired.push(p.pn);
            }
        }
        for pn in expired {
            if self
                .jobs
                .iter()
                .any(|j| matches!(j, Job::Reliable { pn: p, .. } if *p == pn))
            {
                continue;
            }
            let Ok(i) = self.sent.binary_search_by_key(&pn, |p| p.pn) else {
                continue;
            };
            let first_loss = !self.sent[i].declared_lost;
            self.sent[i].declared_lost = true;
            let reassembly_timeout = self.config.reassembly.timeout;
            let p = &mut self.sent[i];
            if !p.fresh_report
                && p.last_report
                    .is_some_and(|t| now.saturating_duration_since(t) >= reassembly_timeout)
            {
                // No report for as long as the receiver keeps an incomplete packet: what it
                // held is gone; send every fragment.
                p.held = FragmentBitmap::ZERO;
            }
            if first_loss {
                self.on_lost(now, pn);
            } else {
                let sent_at = self.sent[i].last_sent;
                self.cc.on_loss(now, sent_at);
                self.jobs.push_back(Job::Reliable { pn, next: 0 });
            }
        }
        if self.reassembler.expire(now) > 0 {
            tracing::debug!(client = self.id.0, "incomplete packets expired");
        }
        if !self.trimmed && now.saturating_duration_since(self.last_data) >= IDLE_TRIM {
            self.trim_when_idle();
        }
    }

    /// With nothing queued, in flight or in reassembly, gives back the buffers that traffic
    /// grew, so that an idle connection holds little memory.
    fn trim_when_idle(&mut self) {
        let idle = self.sent.is_empty()
            && self.jobs.is_empty()
            && self.reassembler.is_empty()
            && self.send_channels.iter().all(|c| c.queue.is_empty())
            && self.recv_channels.iter().all(|c| c.held.is_empty());
        if !idle {
            return;
        }
        self.pool.truncate(2);
        self.pool.retain(|b| b.capacity() <= 2 * MAX_DATA);
        self.range_pool.truncate(4);
        if self.unreliable_payload.capacity() > 2 * MAX_DATA {
            self.unreliable_payload = Vec::new();
        }
        self.reassembler.trim();
        self.receiver.trim();
        self.sent.shrink_to(0);
        self.jobs.shrink_to(0);
        // Unacknowledged unreliable packets this old will never be acknowledged.
        self.unreliable_sent.clear();
        self.unreliable_sent.shrink_to(0);
        self.copies.shrink_to(0);
        for ch in &mut self.send_channels {
            ch.queue.shrink_to(0);
            ch.window.shrink_to(0);
        }
        for ch in &mut self.recv_channels {
            ch.held.shrink_to(0);
        }
        self.trimmed = true;
    }

    /// The earliest time [`Connection::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut t = self.last_recv + self.config.timeout;
        let mut consider = |x: Instant| {
            if x < t {
                t = x;
            }
        };
        match self.state {
            State::Closing { deadline } => {
                consider(deadline);
                if let Some(Closing {
                    packet: Some(p), ..
                }) = &self.close
                {
                    consider(p.last_sent + self.rtt.backoff_rto(p.resends));
                    return Some(t);
                }
                for p in &self.sent {
                    consider(p.timer_base() + self.rtt.backoff_rto(p.resends));
                }
                // Jobs (and messages still queued) waiting for pacing tokens wait for
                // `paced_until`; waking at `last_send` instead would spin without progress.
                if let Some(d) = self.paced_until {
                    consider(d);
                } else if !self.jobs.is_empty() {
                    consider(self.last_send);
                }
                if let Some(&(due, _, _)) = self.copies.front() {
                    consider(due);
                }
                if let Some(since) = self.receiver.pending_since() {
                    consider(since + self.config.ack_delay);
                }
                return Some(t);
            }
            State::Draining => {
                consider(self.last_recv);
                return Some(t);
            }
            _ => {}
        }
        consider(self.next_ping());
        for p in &self.sent {
            consider(p.timer_base() + self.rtt.backoff_rto(p.resends));
        }
        for ch in &self.send_channels {
            if let Some(q) = ch.queue.front() {
                if !ch.mode.is_reliable() {
                    consider(q.enqueued + self.config.unreliable_deadline);
                }
            }
        }
        if let Some(d) = self.paced_until {
            consider(d);
        }
        if let Some(d) = self.reassembler.next_deadline() {
            consider(d);
        }
        if let Some(&(due, _, _)) = self.copies.front() {
            consider(due);
        }
        if let Some(since) = self.receiver.pending_since() {
            consider(since + self.config.ack_delay);
        }
        if let Some(due) = self.frag_ack_due {
            consider(due + self.frag_ack_interval());
        }
        if let Some(Challenge {
            sent_at: Some(sent),
            ..
        }) = self.challenge
        {
            consider(sent + self.rtt.rto());
        }
        // Jobs waiting for pacing tokens wait for `paced_until` (considered above).
        if (!self.jobs.is_empty() && self.paced_until.is_none())
            || self.pong.is_some()
            || self.path_response.is_some()
            || self.resend_finished
        {
            consider(self.last_send);
        }
        Some(t)
    }

    /// A PING goes out after `heartbeat_interval` of sending nothing, and at least every four
    /// intervals even while other packets flow, so both sides keep measuring the RTT.
    fn next_ping(&self) -> Instant {
        let interval = self.config.heartbeat_interval;
        (self.last_send + interval).min(self.last_ping + interval * 4)
    }

    fn frag_ack_interval(&self) -> Duration {
        (self.rtt.srtt() / 4).max(Duration::from_millis(2))
    }

    /// Writes the next datagram for the peer into `buf` (at least
    /// [`crate::wire::MAX_DATA_DATAGRAM`] octets) and returns its length and destination, or
    /// `None` when nothing is due.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        scratch: &mut Scratch,
        buf: &mut [u8],
    ) -> Option<(usize, SocketAddr)> {
        if let Some(c) = self.challenge {
            let due = c.sent_at.is_none_or(|t| now >= t + self.rtt.rto());
            // A challenge is about 35 octets; it goes only while the address has been sent
            // less than AMPLIFICATION_FACTOR times what it sent.
            let allowed =
                c.bytes_sent + CHALLENGE_DATAGRAM_LEN <= AMPLIFICATION_FACTOR * c.bytes_received;
            if self.state == State::Connected && due && allowed {
                let mut data = [0u8; 12];
                data[..4].copy_from_slice(PATH_CHALLENGE);
                data[4..].copy_from_slice(&c.value);
                let n = self.write_small(
                    now,
                    TypeFields::Heartbeat(Heartbeat::Ping),
                    &data,
                    scratch,
                    buf,
                );
                self.challenge = Some(Challenge {
                    sent_at: Some(now),
                    bytes_sent: c.bytes_sent + n as u64,
                    ..c
                });
                return Some((n, c.addr));
            } else if self.state == State::Connected && due && !allowed && c.sent_at.is_some() {
                // Wait for more from the address (its next packet re-arms the challenge).
                self.stats.amplification_limited += 1;
                self.challenge = Some(Challenge { sent_at: None, ..c });
            }
        }
        let addr = self.addr;
        self.poll_datagram(now, scratch, buf).map(|n| (n, addr))
    }

    fn poll_datagram(
        &mut self,
        now: Instant,
        scratch: &mut Scratch,
        buf: &mut [u8],
    ) -> Option<usize> {
        if self.state == State::Closed {
            return None;
        }
        if self.paced_until.is_some_and(|t| t <= now) {
            self.paced_until = None;
        }
        if self.resend_finished {
            self.resend_finished = false;
            if let Some(f) = &self.finished {
                buf[..f.len()].copy_from_slice(f);
                return Some(self.count_sent(now, f.len(), false));
            }
        }
        while let Some(job) = self.jobs.front().copied() {
            // The fragments of a large packet are paced like any datagram: a burst of 255 at
            // once overflows socket buffers on the way. (Small jobs, the close, go at once.)
            if matches!(job, Job::Reliable { .. } | Job::Unreliable { .. })
                && self.job_is_large(job)
                && !self.pace(now)
            {
                break;
            }
            if let Some(n) = self.run_job(now, job, scratch, buf) {
                return Some(n);
            }
            self.jobs.pop_front();
        }
        while let Some(&(due, pn, index)) = self.copies.front() {
            if due > now {
                break;
            }
            self.copies.pop_front();
            let Ok(i) = self.sent.binary_search_by_key(&pn, |p| p.pn) else {
                continue; // acknowledged already
            };
            let p = &self.sent[i];
            let index = usize::from(index);
            if p.header.fragment.is_some() && p.held[index] {
                continue; // the receiver has it
            }
            let n = fragment::write_datagram(&p.header, &p.fields, &p.payload, index, buf)
                .expect("buffer holds a full datagram");
            return Some(self.count_sent(now, n, true));
        }
        match self.state {
            State::Closing { .. } => {
                let sealed = self.close.as_ref().is_some_and(|c| c.packet.is_some());
                if !sealed {
                    // Deliver what `send` accepted, then the ERROR.
                    if self.can_send_reliable(now) && self.build_packet(now, true, scratch) {
                        return self.poll_datagram(now, scratch, buf);
                    }
                    if self.close_ready() && !self.jobs.iter().any(|j| matches!(j, Job::Close)) {
                        self.jobs.push_back(Job::Close);
                        return self.poll_datagram(now, scratch, buf);
                    }
                }
                return self.write_ack(now, scratch, buf);
            }
            State::Draining => {
                let n = self.write_ack(now, scratch, buf);
                if n.is_none() {
                    self.state = State::Closed;
                }
                return n;
            }
            _ => {}
        }
        if let Some((data, len)) = self.path_response.take().or_else(|| self.pong.take()) {
            let n = self.write_small(
                now,
                TypeFields::Heartbeat(Heartbeat::Pong),
                &data[..len],
                scratch,
                buf,
            );
            return Some(n);
        }
        if self.can_send_reliable(now) && self.build_packet(now, true, scratch) {
            return self.poll_datagram(now, scratch, buf);
        }
        if self.has_unreliable()
            && !self.window_exhausted()
            && self.pace(now)
            && self.build_packet(now, false, scratch)
        {
            return self.poll_datagram(now, scratch, buf);
        }
        if now >= self.next_ping() {
            self.last_ping = now;
            let micros = now.saturating_duration_since(self.epoch).as_micros() as u64;
            let n = self.write_small(
                now,
                TypeFields::Heartbeat(Heartbeat::Ping),
                &micros.to_be_bytes(),
                scratch,
                buf,
            );
            return Some(n);
        }
        let frag_ack_due = self
            .frag_ack_due
            .is_some_and(|d| now >= d + self.frag_ack_interval());
        let acks_due = self.receiver.has_pending_acks()
            && (self.receiver.pending_count() >= 16
                || self
                    .receiver
                    .pending_since()
                    .is_some_and(|s| now >= s + self.config.ack_delay));
        if acks_due || frag_ack_due {
            return self.write_ack(now, scratch, buf);
        }
        None
    }

    fn has_unreliable(&self) -> bool {
        self.send_channels
            .iter()
            .any(|c| !c.mode.is_reliable() && !c.queue.is_empty())
    }

    fn can_send_reliable(&mut self, now: Instant) -> bool {
        if !self
            .send_channels
            .iter()
            .any(|c| c.mode.is_reliable() && !c.queue.is_empty())
        {
            return false;
        }
        if self.sent.len() >= MAX_IN_FLIGHT_PACKETS {
            return false;
        }
        if self.window_exhausted() {
            return false;
        }
        if self.in_flight > 0 && self.in_flight + MAX_DATA as u64 > self.cc.window() {
            return false;
        }
        self.pace(now)
    }

    /// Whether a job writes a fragmented packet (and is therefore paced).
    fn job_is_large(&self, job: Job) -> bool {
        match job {
            Job::Reliable { pn, .. } => self
                .sent
                .binary_search_by_key(&pn, |p| p.pn)
                .is_ok_and(|i| self.sent[i].header.fragment.is_some()),
            Job::Unreliable { .. } => self
                .unreliable_header
                .is_some_and(|(h, _)| h.fragment.is_some()),
            Job::Close => false,
        }
    }

    /// Whether the oldest unacknowledged reliable packet is so far behind that more new
    /// packets could push its resends out of the receiver's replay window.
    fn window_exhausted(&self) -> bool {
        self.sent
            .front()
            .is_some_and(|oldest| self.next_pn - oldest.pn >= recv::WINDOW - 512)
    }

    /// Takes pacing tokens for one datagram, or records when they will be there.
    fn pace(&mut self, now: Instant) -> bool {
        if self.cc.try_pace(now, self.rtt.srtt()) {
            self.paced_until = None;
            true
        } else {
            let at = self.cc.pace_deadline(self.rtt.srtt()).unwrap_or(now);
            self.paced_until = Some(at.max(now + Duration::from_micros(100)));
            false
        }
    }

    /// Packs queued messages of reliable (or unreliable) channels into a new packet, seals
    /// it and queues the job that writes it. Returns false if there was nothing to pack.
    fn build_packet(&mut self, now: Instant, reliable: bool, scratch: &mut Scratch) -> bool {
        let plain = &mut scratch.plain;
        plain.clear();
        let frag_ack_due = self.frag_ack_due;
        self.put_fragment_acks(plain, PACKET_PLAINTEXT / 4);
        let mut compress = true;
        let mut message_bytes = 0usize;
        let mut ordered = self.range_pool.pop().unwrap_or_default();
        ordered.clear();
        let n = self.send_channels.len();
        let start = self.rotate % n;
        self.rotate = self.rotate.wrapping_add(1);
        let mut any = false;
        'channels: for k in 0..n {
            let ci = (start + k) % n;
            let ch = &mut self.send_channels[ci];
            if ch.mode.is_reliable() != reliable {
                continue;
            }
            while let Some(q) = ch.queue.front() {
                let seq = ch.mode.is_sequenced().then_some(ch.next_seq);
                let frame_len = frame::message_frame_len(q.data.len(), seq.is_some());
                let alone = plain.is_empty() && frame_len > PACKET_PLAINTEXT;
                if !alone && plain.len() + frame_len > PACKET_PLAINTEXT {
                    break 'channels;
                }
                if ch.mode == DeliveryMode::ReliableOrdered
                    && ch.next_seq.wrapping_sub(ch.window_base) >= ORDER_WINDOW
                {
                    break;
                }
                let q = ch.queue.pop_front().expect("front checked");
                let cost = message_cost(q.data.len(), q.data.capacity());
                ch.queued -= cost;
                frame::put_message(plain, ci as u8, seq, &q.data);
                any = true;
                compress &= ch.compress;
                if reliable {
                    message_bytes += cost;
                }
                if ch.mode == DeliveryMode::ReliableOrdered {
                    ch.window.push_back(false);
                    match ordered.last_mut() {
                        Some(r) if usize::from(r.channel) == ci => r.count += 1,
                        _ => ordered.push(SeqRange {
                            channel: ci as u8,
                            first: ch.next_seq,
                            count: 1,
                        }),
                    }
                }
                if seq.is_some() {
                    ch.next_seq = ch.next_seq.wrapping_add(1);
                }
                if self.pool.len() < POOL_LIMIT {
                    self.pool.push(q.data);
                }
                if alone {
                    break 'channels;
                }
            }
        }
        if !any {
            self.range_pool.push(ordered);
            self.frag_ack_due = frag_ack_due;
            return false;
        }
        let fields = self.ack_fields();
        let pn = self.take_pn();
        let opts = SendOptions {
            reliable,
            checksum: false,
            compress,
        };
        let mut out = if reliable {
            self.pool.pop().unwrap_or_default()
        } else {
            std::mem::take(&mut self.unreliable_payload)
        };
        let header = encode_into(
            &mut scratch.compressed,
            fields,
            &scratch.plain,
            opts,
            Seal::Sealed {
                key: &self.send_key,
                packet_number: pn,
            },
            &mut out,
        )
        .expect("messages are bounded by max_message_size, within one packet");
        if reliable {
            let count = header.fragment.map_or(1, |f| usize::from(f.count));
            let size = (out.len() + count * DATAGRAM_OVERHEAD) as u64;
            self.in_flight += size;
            let mut packet = SentPacket::new(now, pn, header, fields, out);
            packet.size = size;
            packet.message_bytes = message_bytes;
            packet.ordered = ordered;
            self.sent.push_back(packet);
            self.jobs.push_back(Job::Reliable { pn, next: 0 });
        } else {
            if self.unreliable_sent.len() >= UNRELIABLE_TRACKED {
                self.unreliable_sent.pop_front();
            }
            let count = header.fragment.map_or(1, |f| usize::from(f.count));
            let size = (out.len() + count * DATAGRAM_OVERHEAD) as u32;
            self.unreliable_sent.push_back((pn, size, now));
            self.unreliable_payload = out;
            self.unreliable_header = Some((header, fields));
            self.jobs.push_back(Job::Unreliable { next: 0 });
        }
        true
    }

    fn ack_fields(&mut self) -> TypeFields {
        match self.receiver.latest_ack() {
            Some(ack) => {
                self.receiver.covered_by(&ack);
                TypeFields::Ack(ack)
            }
            None => TypeFields::Default,
        }
    }

    fn take_pn(&mut self) -> u32 {
        let pn = self.next_pn;
        self.next_pn = self.next_pn.saturating_add(1);
        pn
    }

    /// Appends FRAGMENT_ACK frames for the packets in reassembly, within `budget` octets.
    fn put_fragment_acks(&mut self, plain: &mut Vec<u8>, budget: usize) {
        if self.frag_ack_due.is_none() {
            return;
        }
        let start = plain.len();
        for pn in self.reassembler.packets() {
            let Some((count, held)) = self.reassembler.held(pn) else {
                continue;
            };
            if plain.len() - start + frame::fragment_ack_len(count) > budget {
                return;
            }
            let mut bits = [0u8; 32];
            for (i, b) in held.iter().by_vals().enumerate() {
                if b {
                    bits[i / 8] |= 0x80 >> (i % 8);
                }
            }
            frame::put_fragment_ack(plain, pn, count, &bits);
        }
        self.frag_ack_due = None;
    }

    fn run_job(
        &mut self,
        now: Instant,
        job: Job,
        scratch: &mut Scratch,
        buf: &mut [u8],
    ) -> Option<usize> {
        match job {
            Job::Reliable { pn, next } => {
                let i = self.sent.binary_search_by_key(&pn, |p| p.pn).ok()?;
                let p = &mut self.sent[i];
                let count = p.header.fragment.map_or(1, |f| usize::from(f.count));
                if next == 0 && count > 1 && p.held[..count].all() {
                    // Every fragment was reported held, yet no ack came: the receiver dropped
                    // the packet after reassembly. Forget the report and send it all again.
                    p.held = FragmentBitmap::ZERO;
                }
                let index = (next..count).find(|&k| count == 1 || !p.held[k])?;
                let n = fragment::write_datagram(&p.header, &p.fields, &p.payload, index, buf)
                    .expect("buffer holds a full datagram");
                if next == 0 {
                    p.sent_before_pn = self.next_pn;
                    p.fresh_report = false;
                }
                p.last_index = index;
                p.last_sent = now;
                let resend = p.resends > 0 || p.declared_lost;
                let gap = (self.rtt.srtt() / 4).max(Duration::from_millis(2));
                if !resend
                    && count == 1
                    && p.payload.len() <= REDUNDANT_MAX
                    && self.loss_ewma >= REDUNDANCY_LOSS
                    && self.in_flight + p.size <= self.cc.window()
                {
                    // While loss lasts, a small reliable packet goes out twice, a quarter RTT
                    // apart: a game cannot wait a resend timeout for its inputs.
                    self.copies.push_back((now + gap, pn, 0));
                } else if count > 1 {
                    // The last fragment of a transmission goes twice (losing it costs a resend
                    // timeout, as nothing after it shows the gap), and so does every fragment
                    // of a resend round of a few: one more loss there costs the same.
                    let missing = count - p.held[..count].count_ones();
                    let last_of_round = (index + 1..count).all(|k| p.held[k]);
                    if last_of_round || (resend && missing <= 8) {
                        self.copies.push_back((now + gap, pn, index as u8));
                    }
                }
                // The transmission ends at the last fragment the receiver lacks.
                if (index + 1..count).all(|k| p.held[k]) {
                    if p.declared_lost {
                        p.resends += 1;
                        p.declared_lost = false;
                    }
                    self.jobs.pop_front();
                } else if let Some(Job::Reliable { next, .. }) = self.jobs.front_mut() {
                    *next = index + 1;
                }
                Some(self.count_sent(now, n, resend))
            }
            Job::Unreliable { next } => {
                let (header, fields) = self.unreliable_header?;
                let count = header.fragment.map_or(1, |f| usize::from(f.count));
                if next >= count {
                    return None;
                }
                let n =
                    fragment::write_datagram(&header, &fields, &self.unreliable_payload, next, buf)
                        .expect("buffer holds a full datagram");
                if let Some(Job::Unreliable { next: nx }) = self.jobs.front_mut() {
                    *nx += 1;
                }
                if next + 1 >= count {
                    self.jobs.pop_front();
                    self.unreliable_header = None;
                }
                Some(self.count_sent(now, n, false))
            }
            Job::Close => {
                let close = self.close.as_mut()?;
                if close.packet.is_none() {
                    let pn = self.next_pn;
                    self.next_pn = self.next_pn.saturating_add(1);
                    let mut out = Vec::new();
                    let fields = TypeFields::Error(close.code);
                    let opts = SendOptions {
                        reliable: true,
                        ..SendOptions::default()
                    };
                    let header = encode_into(
                        &mut scratch.compressed,
                        fields,
                        &close.message,
                        opts,
                        Seal::Sealed {
                            key: &self.send_key,
                            packet_number: pn,
                        },
                        &mut out,
                    )
                    .expect("close message fits one packet");
                    close.packet = Some(SentPacket::new(now, pn, header, fields, out));
                }
                let p = close.packet.as_mut().expect("built above");
                let n = fragment::write_datagram(&p.header, &p.fields, &p.payload, 0, buf)
                    .expect("buffer holds a full datagram");
                let resend = p.last_sent != now || p.resends > 0;
                if p.last_sent != now {
                    p.resends += 1;
                }
                p.last_sent = now;
                self.jobs.pop_front();
                Some(self.count_sent(now, n, resend))
            }
        }
    }

    /// Writes a one-datagram unreliable packet of `fields` and `data` (a heartbeat).
    fn write_small(
        &mut self,
        now: Instant,
        fields: TypeFields,
        data: &[u8],
        scratch: &mut Scratch,
        buf: &mut [u8],
    ) -> usize {
        let pn = self.take_pn();
        let mut out = std::mem::take(&mut scratch.plain);
        let header = encode_into(
            &mut scratch.compressed,
            fields,
            data,
            SendOptions::default(),
            Seal::Sealed {
                key: &self.send_key,
                packet_number: pn,
            },
            &mut out,
        )
        .expect("a heartbeat fits one datagram");
        let n = fragment::write_datagram(&header, &fields, &out, 0, buf)
            .expect("buffer holds a full datagram");
        scratch.plain = out;
        self.count_sent(now, n, false)
    }

    /// Writes an ACK packet with the owed acknowledgements and fragment acks, if any.
    fn write_ack(&mut self, now: Instant, scratch: &mut Scratch, buf: &mut [u8]) -> Option<usize> {
        let ack = self.receiver.take_ack();
        if ack.is_none() && self.frag_ack_due.is_none() {
            return None;
        }
        let fields = match ack {
            Some(a) => TypeFields::Ack(a),
            None => self.ack_fields(),
        };
        let mut plain = std::mem::take(&mut scratch.plain);
        plain.clear();
        self.put_fragment_acks(&mut plain, PACKET_PLAINTEXT);
        let pn = self.take_pn();
        let mut out = std::mem::take(&mut scratch.compressed);
        let mut compressed = Vec::new();
        let header = encode_into(
            &mut compressed,
            fields,
            &plain,
            SendOptions::default(),
            Seal::Sealed {
                key: &self.send_key,
                packet_number: pn,
            },
            &mut out,
        )
        .expect("acks fit one datagram");
        let n = fragment::write_datagram(&header, &fields, &out, 0, buf)
            .expect("buffer holds a full datagram");
        scratch.plain = plain;
        scratch.compressed = out;
        Some(self.count_sent(now, n, false))
    }

    fn count_sent(&mut self, now: Instant, len: usize, resend: bool) -> usize {
        self.cc.on_sent(len);
        self.last_send = now;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += len as u64;
        if resend {
            self.stats.packets_resent += 1;
        }
        len
    }

    fn drop_datagram(&mut self, why: &'static str) {
        self.stats.datagrams_dropped += 1;
        tracing::debug!(client = self.id.0, why, "datagram dropped");
    }

    fn drop_wire(&mut self, e: WireError) {
        self.stats.datagrams_dropped += 1;
        tracing::debug!(client = self.id.0, code = %e.code, reason = e.reason, "datagram dropped");
    }
}
