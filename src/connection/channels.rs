//! Channels: the send queues (with their budget charge), the per-channel sequence numbers and
//! ordered window, and delivery on the receiving side (sequenced, ordered with held messages).

use super::*;

/// A set of channel indices (at most 256 channels): which channels have messages queued, so
/// that the builder and the timers visit those channels only (each `SendChannel` is a cache
/// line or two of its own; on a server with many connections a visit is a miss).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ChannelSet([u64; 4]);

impl ChannelSet {
    pub(super) fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    pub(super) fn remove(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }

    /// The indices in the set and not in `except`, in increasing order.
    pub(super) fn iter_except(self, except: ChannelSet) -> ChannelSetIter {
        let mut words = self.0;
        for (w, e) in words.iter_mut().zip(except.0) {
            *w &= !e;
        }
        ChannelSetIter { words, word: 0 }
    }

    /// The indices in the set, in increasing order.
    pub(super) fn iter(self) -> ChannelSetIter {
        self.iter_except(ChannelSet::default())
    }
}

/// The indices of a [`ChannelSet`], lowest first.
pub(super) struct ChannelSetIter {
    words: [u64; 4],
    word: usize,
}

impl Iterator for ChannelSetIter {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.word < 4 {
            let bits = self.words[self.word];
            if bits != 0 {
                self.words[self.word] = bits & (bits - 1);
                return Some(self.word * 64 + bits.trailing_zeros() as usize);
            }
            self.word += 1;
        }
        None
    }
}

#[cfg(test)]
mod channel_set_tests {
    use super::ChannelSet;

    #[test]
    fn indices_in_every_word() {
        let mut s = ChannelSet::default();
        for i in [0, 63, 64, 127, 128, 200, 255] {
            s.insert(i);
        }
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![0, 63, 64, 127, 128, 200, 255]
        );
        let mut except = ChannelSet::default();
        except.insert(64);
        except.insert(255);
        assert_eq!(
            s.iter_except(except).collect::<Vec<_>>(),
            vec![0, 63, 127, 128, 200]
        );
        s.remove(63);
        s.remove(255);
        s.remove(255);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 64, 127, 128, 200]);
    }
}

pub(super) struct Queued {
    pub(super) data: Vec<u8>,
    pub(super) enqueued: Instant,
    /// A part of a message too large for one packet (sent as a MESSAGE_PART frame).
    pub(super) part: Option<Part>,
}

/// Where a MESSAGE_PART's octets belong: the whole message's length and the part's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Part {
    pub(super) total: u32,
    pub(super) offset: u32,
}

/// A reliable-ordered message (or part) held for a gap before it.
pub(crate) struct Held {
    pub(super) data: Vec<u8>,
    pub(super) part: Option<Part>,
}

/// A message too large for one packet, being assembled from its parts in order.
pub(crate) struct Assembly {
    /// The octets assembled so far: the buffer grows with the parts (never past `total`),
    /// so it holds about what the peer sent, whatever `total` it declared.
    pub(super) data: Vec<u8>,
    /// Its length, reserved (`assembling_bytes`) at the first part.
    pub(super) total: usize,
}

pub(super) struct SendChannel {
    pub(super) mode: DeliveryMode,
    pub(super) compress: bool,
    pub(super) queue: VecDeque<Queued>,
    /// Octets of the messages in `queue`.
    pub(super) queued: usize,
    pub(super) next_seq: u16,
    /// Reliable-ordered: acked flag and receive-side cost (length + overhead) of messages
    /// from `window_base` on.
    pub(super) window: VecDeque<(bool, u32)>,
    pub(super) window_base: u16,
    /// Reliable-ordered: the receive-side cost of the messages in `window`. The receiver may
    /// hold all of them behind a gap, so it stays within `window_limit`.
    pub(super) window_bytes: usize,
    /// The receive budget divided among the ordered channels (a peer configured alike never
    /// holds more than its budget of ordered messages behind gaps).
    pub(super) window_limit: usize,
    /// Lane priority (0 highest) and weight, from the channel's config.
    pub(super) priority: u8,
    pub(super) weight: u16,
    /// A less-than-best-effort lane (limited by `Connection::ledbat`).
    pub(super) lbe: bool,
    /// Weighted fair queueing among channels of one priority: the virtual time at which
    /// this channel's next message would finish (octets served / weight, scaled).
    pub(super) lane_finish: u64,
    /// This channel's send-side counters (kept here, beside the queue `send` touches anyway,
    /// rather than in a table of their own: one cache line fewer per message on a busy server).
    pub(super) counted: SendCounted,
}

/// A channel's send-side counters (see [`crate::types::ChannelStats`]).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SendCounted {
    pub(super) messages: u64,
    pub(super) bytes: u64,
    pub(super) dropped_unsent: u64,
}

/// A channel's receive-side counters (see [`crate::types::ChannelStats`]).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RecvCounted {
    pub(super) messages: u64,
    pub(super) bytes: u64,
    pub(super) dropped_stale: u64,
}

impl RecvCounted {
    /// Counts one message of `len` octets delivered.
    fn delivered(&mut self, len: usize) {
        self.messages += 1;
        self.bytes += len as u64;
    }
}

pub(super) struct RecvChannel {
    pub(super) mode: DeliveryMode,
    /// Sequenced: the newest delivered; ordered: the next expected.
    pub(super) seq: Option<u16>,
    /// Ordered: messages waiting for a gap before them, index i is seq `seq + i`.
    pub(super) held: VecDeque<Option<Held>>,
    /// Ordered: the large message whose parts are arriving.
    pub(super) assembly: Option<Assembly>,
    /// This channel's receive-side counters.
    pub(super) counted: RecvCounted,
}

/// A range of one channel's messages in a packet.
#[derive(Debug, Clone, Copy)]
pub(super) struct SeqRange {
    pub(super) channel: u8,
    pub(super) first: u16,
    pub(super) count: u16,
}

/// The least an unreliable channel's queue may hold (octets, each message charged its length
/// plus `MESSAGE_OVERHEAD`), whatever the path's rate: 64 KiB.
pub const UNRELIABLE_QUEUE_MIN: usize = 64 << 10;

impl Connection {
    /// Queues a message.
    ///
    /// # Errors
    /// See [`SendError`]; nothing is queued on error.
    pub fn send(
        &mut self,
        now: Instant,
        channel: ChannelId,
        data: &[u8],
        scratch: &mut Scratch,
    ) -> Result<(), SendError> {
        if self.state != State::Connected {
            return Err(SendError::Closed);
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
        if data.len() > MAX_MESSAGE_SIZE {
            if ch.mode != DeliveryMode::ReliableOrdered {
                return Err(SendError::MessageTooLarge {
                    len: data.len(),
                    limit: MAX_MESSAGE_SIZE,
                });
            }
            return self.send_parts(now, channel, data);
        }
        // Refused before the copy: a game that offers more than the path takes pays little for
        // what is refused (the charge is at least the message's length).
        let least_cost = message_cost(data.len(), 0);
        if !reliable && !self.unreliable_room(channel, least_cost) {
            self.stats.queue_full += 1;
            return Err(SendError::QueueFull);
        }
        // From the endpoint's pool, which frees a buffer much larger than the message (it
        // would be charged, and held, whole).
        let mut buf = scratch.messages.take_empty(data.len(), MAX_DATA);
        buf.extend_from_slice(data);
        let cost = message_cost(buf.len(), buf.capacity());
        let room = if reliable {
            self.budget.can_queue(cost)
        } else {
            // An unreliable message is refused, not queued to be dropped later: the unreliable
            // channels hold what the path can send within `unreliable_deadline`, so what
            // `send` accepts goes out (unless the path itself shrinks). Checked above already
            // unless the buffer is charged more than the message's length.
            cost == least_cost || self.unreliable_room(channel, cost)
        };
        if !room {
            scratch.messages.give(buf);
            self.stats.queue_full += 1;
            return Err(SendError::QueueFull);
        }
        if reliable {
            self.budget.queued += cost;
        }
        let ch = &mut self.send_channels[usize::from(channel.0)];
        ch.queued += cost;
        self.queued_messages[usize::from(reliable)] += 1;
        self.queued_messages[2] += u32::from(ch.lbe);
        self.queued_channels[usize::from(reliable)].insert(usize::from(channel.0));
        ch.queue.push_back(Queued {
            data: buf,
            enqueued: now,
            part: None,
        });
        self.count_queued(now, channel, data.len());
        Ok(())
    }

    /// Whether unreliable `channel` may queue a message charged `cost`: its queue is empty
    /// (one message always fits), or all unreliable channels' queues together stay within
    /// [`Connection::unreliable_queue_limit`].
    fn unreliable_room(&self, channel: ChannelId, cost: usize) -> bool {
        if self.send_channels[usize::from(channel.0)].queued == 0 {
            return true;
        }
        let queued: usize = self
            .send_channels
            .iter()
            .filter(|c| !c.mode.is_reliable())
            .map(|c| c.queued)
            .sum();
        let after = queued + cost;
        // Within the least limit there is nothing to work out.
        after <= UNRELIABLE_QUEUE_MIN.min(self.config.send_queue_bytes)
            || after <= self.unreliable_queue_limit()
    }

    /// Octets the unreliable channels' queues may hold together: what the path sends within
    /// `unreliable_deadline` at its rate as [`Connection::send_budget`] reports it (window per
    /// smoothed RTT, at most the pacing rate), at least [`UNRELIABLE_QUEUE_MIN`] and at most
    /// `send_queue_bytes`. After the first loss, 70% of that: the window's cut at a loss, so
    /// that a full queue still drains in time after one; before it, twice that (in slow start
    /// the window doubles every round trip).
    pub(crate) fn unreliable_queue_limit(&self) -> usize {
        let srtt = self.rtt.srtt();
        let per_rtt = self.cc.window() as f64 / srtt.as_secs_f64().max(0.001);
        let rate = per_rtt.min(self.cc.pacing_rate(srtt) as f64);
        let growth = if self.cc.in_slow_start() { 2.0 } else { 0.7 };
        let bytes = growth * rate * self.config.unreliable_deadline.as_secs_f64();
        let max = self.config.send_queue_bytes;
        (bytes as usize).clamp(UNRELIABLE_QUEUE_MIN.min(max), max)
    }

    /// Counts a message of `len` octets that `send` queued on `channel` at `now`.
    fn count_queued(&mut self, now: Instant, channel: ChannelId, len: usize) {
        self.stats.messages_sent += 1;
        let c = &mut self.send_channels[usize::from(channel.0)].counted;
        c.messages += 1;
        c.bytes += len as u64;
        self.last_data = now;
        self.trimmed = false;
    }

    /// Queues a reliable-ordered message too large for one packet as parts of up to
    /// [`frame::MAX_PART`] octets, each its own queued message (charged alike), in order.
    fn send_parts(
        &mut self,
        now: Instant,
        channel: ChannelId,
        data: &[u8],
    ) -> Result<(), SendError> {
        let parts = data.len().div_ceil(frame::MAX_PART);
        let cost = data.len() + parts * budget::MESSAGE_OVERHEAD;
        if !self.budget.can_queue(cost) {
            self.stats.queue_full += 1;
            return Err(SendError::QueueFull);
        }
        let total = u32::try_from(data.len()).expect("bounded by MAX_LARGE_MESSAGE_SIZE");
        let ch = &mut self.send_channels[usize::from(channel.0)];
        for (i, chunk) in data.chunks(frame::MAX_PART).enumerate() {
            let buf = chunk.to_vec();
            let cost = message_cost(buf.len(), buf.capacity());
            self.budget.queued += cost;
            ch.queued += cost;
            self.queued_messages[1] += 1;
            self.queued_messages[2] += u32::from(ch.lbe);
            self.queued_channels[1].insert(usize::from(channel.0));
            ch.queue.push_back(Queued {
                data: buf,
                enqueued: now,
                part: Some(Part {
                    total,
                    offset: (i * frame::MAX_PART) as u32,
                }),
            });
        }
        self.count_queued(now, channel, data.len());
        Ok(())
    }

    /// What an opened packet's messages would do to the receive budget, read without acting
    /// on them. Each channel's messages in one packet are consecutive (the sender packs them
    /// so), so the first one of a channel says whether the rest are in order.
    pub(super) fn scan_incoming(&self, plaintext: &[u8]) -> Incoming {
        let mut s = Incoming::default();
        let any_held = self.budget.held > 0;
        let mut messages = 0usize;
        // The ordered channel being read: its next expected seq after the packet's messages so
        // far, and whether the packet delivered in order on it.
        let mut current: Option<(u8, u16, bool)> = None;
        for frame in Frames::new(plaintext) {
            let (channel, seq, data) = match frame {
                Ok(Frame::Message { channel, seq, data }) => (channel, seq, data),
                Ok(Frame::MessagePart {
                    channel, seq, data, ..
                }) => (channel, Some(seq), data),
                _ => continue,
            };
            messages += 1;
            let cost = message_cost(data.len(), 0);
            let ordered = self
                .recv_channels
                .get(usize::from(channel))
                .filter(|ch| ch.mode == DeliveryMode::ReliableOrdered);
            let (Some(ch), Some(seq)) = (ordered, seq) else {
                s.delivered += cost;
                continue;
            };
            if current.is_some_and(|(c, _, _)| c != channel) {
                s.released += self.releasable(current.take().expect("checked"));
            }
            let (next, progressed) = match current {
                Some((_, n, p)) => (n, p),
                None => (ch.seq.unwrap_or(0), false),
            };
            s.for_gap |= !ch.held.is_empty();
            let offset = seq.wrapping_sub(next);
            if offset == 0 {
                s.delivered += cost;
                s.for_gap |= any_held;
                current = Some((channel, next.wrapping_add(1), true));
            } else if offset < ORDER_WINDOW {
                if ch.held.get(usize::from(offset)).is_none_or(Option::is_none) {
                    s.held += cost;
                }
                current = Some((channel, next, progressed));
            }
        }
        if let Some(c) = current {
            s.released += self.releasable(c);
        }
        s.violation = plaintext.len() > PACKET_PLAINTEXT && messages > 1;
        s
    }

    /// Octets of held messages a packet would release on `channel` by delivering up to (not
    /// including) `next`: the held messages that follow without a gap.
    fn releasable(&self, (channel, next, progressed): (u8, u16, bool)) -> usize {
        if !progressed {
            return 0;
        }
        let ch = &self.recv_channels[usize::from(channel)];
        let start = usize::from(next.wrapping_sub(ch.seq.unwrap_or(0)));
        ch.held
            .iter()
            .skip(start)
            .map_while(Option::as_ref)
            .map(|m| message_cost(m.data.len(), 0))
            .sum()
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver(
        &mut self,
        channel: u8,
        seq: Option<u16>,
        part: Option<Part>,
        data: &[u8],
        messages: &mut super::MessagePool,
        events: &mut VecDeque<Event>,
    ) -> Result<(), ErrorCode> {
        if data.len() > self.config.max_message_size {
            return Err(ErrorCode::Packet);
        }
        let channels = self.recv_channels.len();
        let Some(ch) = self.recv_channels.get_mut(usize::from(channel)) else {
            tracing::warn!(
                client = self.id.0,
                channel,
                channels,
                "the peer sent on a channel this side does not have: both sides must configure \
                 the same channels (ConnectionConfig::channels); closing with 3.0"
            );
            return Err(ErrorCode::Packet);
        };
        if ch.mode.is_sequenced() != seq.is_some() {
            tracing::warn!(
                client = self.id.0,
                channel,
                mode = ?ch.mode,
                "the peer's channel has another delivery mode than this side's: both sides must \
                 configure the same channels (ConnectionConfig::channels); closing with 3.0"
            );
            return Err(ErrorCode::Packet);
        }
        if let Some(p) = part {
            let (total, offset) = (p.total as usize, p.offset as usize);
            let valid = ch.mode == DeliveryMode::ReliableOrdered
                && total > MAX_MESSAGE_SIZE
                && total <= self.config.max_message_size
                && !data.is_empty()
                && offset
                    .checked_add(data.len())
                    .is_some_and(|end| end <= total);
            if !valid {
                tracing::warn!(
                    client = self.id.0,
                    channel,
                    total,
                    "a message part that is not within a large message of a reliable-ordered \
                     channel and max_message_size; closing with 3.0"
                );
                return Err(ErrorCode::Packet);
            }
        }
        let client = self.id;
        let channel_id = ChannelId(channel);
        match (ch.mode, seq) {
            (DeliveryMode::UnreliableSequenced, Some(s)) => {
                if let Some(last) = ch.seq {
                    if (s.wrapping_sub(last) as i16) <= 0 {
                        self.stats.stale_dropped += 1;
                        ch.counted.dropped_stale += 1;
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
                        let buf = messages.take(data);
                        self.budget.held += message_cost(buf.len(), 0);
                        ch.held[offset] = Some(Held { data: buf, part });
                    }
                    return Ok(());
                }
                // In order: deliver it, then everything held behind it.
                let mut out = Delivery {
                    budget: &mut self.budget,
                    stats: &mut self.stats,
                    counted: &mut ch.counted,
                    events,
                    client,
                    channel,
                };
                let buf = messages.take(data);
                out.emit(&mut ch.assembly, buf, part, false)?;
                let mut next = next.wrapping_add(1);
                if !ch.held.is_empty() {
                    ch.held.pop_front();
                }
                while let Some(Some(_)) = ch.held.front() {
                    let msg = ch.held.pop_front().flatten().expect("front is Some");
                    out.emit(&mut ch.assembly, msg.data, msg.part, true)?;
                    next = next.wrapping_add(1);
                }
                ch.seq = Some(next);
                return Ok(());
            }
            _ => {}
        }
        let buf = messages.take(data);
        self.budget.undelivered += message_cost(buf.len(), 0);
        self.stats.messages_received += 1;
        ch.counted.delivered(buf.len());
        events.push_back(Event::Message {
            client,
            channel: channel_id,
            data: buf,
        });
        Ok(())
    }
}

/// Where in-order messages of a reliable-ordered channel go: whole ones to the events, parts
/// into the channel's assembly until the message is whole.
struct Delivery<'a> {
    budget: &'a mut Budget,
    stats: &'a mut ConnectionStats,
    counted: &'a mut RecvCounted,
    events: &'a mut VecDeque<Event>,
    client: ClientId,
    channel: u8,
}

impl Delivery<'_> {
    /// Delivers `buf` (a message, or a part of one), which was charged as held if `held`.
    fn emit(
        &mut self,
        assembly: &mut Option<Assembly>,
        buf: Vec<u8>,
        part: Option<Part>,
        held: bool,
    ) -> Result<(), ErrorCode> {
        let cost = message_cost(buf.len(), 0);
        if held {
            self.budget.held -= cost;
        }
        let Some(p) = part else {
            if assembly.is_some() {
                // A whole message between the parts of another.
                return Err(ErrorCode::Packet);
            }
            self.budget.undelivered += cost;
            self.deliver(buf);
            return Ok(());
        };
        let (total, offset) = (p.total as usize, p.offset as usize);
        let a = match assembly {
            None if offset == 0 => {
                // The first part: the whole message's length is reserved now (bounded by
                // max_message_size, checked on arrival), but not allocated: a total costs the
                // peer nothing to declare, so its buffer grows with the parts that arrive, and
                // the server's memory budget is charged that buffer.
                self.budget.assembling += message_cost(total, 0);
                self.budget.assembled += budget::MESSAGE_OVERHEAD;
                assembly.insert(Assembly {
                    data: Vec::new(),
                    total,
                })
            }
            Some(a) if a.total == total && a.data.len() == offset => a,
            // A part out of place: not the next octets of the message being assembled.
            _ => return Err(ErrorCode::Packet),
        };
        // The part's buffer is dropped, not pooled: the endpoint's pool is not charged to any
        // connection and should not keep buffers of a quarter MiB.
        let need = a.data.len() + buf.len();
        if need > a.data.capacity() {
            // Doubling (so at most about twice the octets are copied), never past the total
            // (`need` is within it: checked on arrival).
            let before = a.data.capacity();
            let want = need.max(before.saturating_mul(2)).min(total);
            a.data.reserve_exact(want - a.data.len());
            self.budget.assembled += a.data.capacity() - before;
        }
        a.data.extend_from_slice(&buf);
        if a.data.len() == total {
            let whole = assembly.take().expect("matched above");
            let cost = message_cost(total, 0);
            self.budget.assembling -= cost;
            self.budget.assembled -= whole.data.capacity() + budget::MESSAGE_OVERHEAD;
            self.budget.undelivered += cost;
            self.stats.large_messages_received += 1;
            self.deliver(whole.data);
        }
        Ok(())
    }

    fn deliver(&mut self, data: Vec<u8>) {
        self.stats.messages_received += 1;
        self.counted.delivered(data.len());
        self.events.push_back(Event::Message {
            client: self.client,
            channel: ChannelId(self.channel),
            data,
        });
    }
}
