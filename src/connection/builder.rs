//! The send path: what goes out next (`poll_transmit`), packing queued messages into a sealed
//! packet, and writing each datagram (data, resends, copies, acks, heartbeats, the close).

use super::*;

/// A resend round of at most this many fragments sends each twice.
const ROUND_DOUBLED: usize = 8;
/// At the end of a transfer, a resend round that a fragment report told of (some fragments
/// held) sends each twice up to this many: the transfer ends when this round arrives (a 250 KiB
/// message lacks about 13 fragments after its first round at 5% loss). The end of a transfer:
/// no more than [`LARGE_REST`] octets of its message follow in later packets, and no more than
/// that is queued on reliable channels or in later fragmented packets in flight; the
/// rounds of a transfer's earlier packets overlap its later packets' sending and keep the
/// smaller limit.
const TAIL_ROUND_DOUBLED: usize = 32;
/// See [`TAIL_ROUND_DOUBLED`].
const LARGE_REST: usize = 64 << 10;

/// Last fragments held back at most (more make a burst of drops at a full queue cost more
/// messages: one datagram lost in each of two runs loses two messages).
const MAX_TAILS: usize = 16;

/// Unreliable packets sent after one that went a resend timeout without acknowledgement that
/// make it a loss (see `Connection::can_send_unreliable`).
const STALE_LOSS_AFTER: usize = 128;

/// A datagram job: the fragments of a packet still to write.
#[derive(Debug, Clone, Copy)]
pub(super) enum Job {
    /// A reliable packet from `sent`, fragments from `next` on, skipping those held.
    Reliable { pn: u32, next: usize },
    /// The unreliable packet in `unreliable_payload`.
    Unreliable { next: usize },
    /// The ERROR packet closing the connection (resent like a reliable packet).
    Close,
}

impl Connection {
    /// Writes the next datagram for the peer into `buf` (at least
    /// [`crate::wire::MAX_DATA_DATAGRAM`] octets) and returns its length and destination, or
    /// `None` when nothing is due.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        scratch: &mut Scratch,
        buf: &mut [u8],
    ) -> Option<(usize, SocketAddr)> {
        if let Some(challenge) = self.poll_challenge(now, scratch, buf) {
            return Some(challenge);
        }
        let addr = self.addr;
        self.poll_datagram(now, scratch, buf).map(|n| (n, addr))
    }

    /// The next datagram: what [`Connection::next_datagram`] writes, or a last fragment held
    /// back.
    ///
    /// Last fragments of unreliable packets are held back (in `tails`) while the leading
    /// fragments of the packets after them go out, so that datagrams of one size come in a
    /// row. They still go out in packet-number order before any other datagram: a packet
    /// completing at the receiver ahead of an earlier one would make the earlier look lost
    /// in the acknowledgement. So once anything else is written, it queues behind them.
    pub(super) fn poll_datagram(
        &mut self,
        now: Instant,
        scratch: &mut Scratch,
        buf: &mut [u8],
    ) -> Option<usize> {
        if self.state == State::Closed {
            self.tails.clear();
            self.tail_lens.clear();
            self.tail_read = 0;
            self.tails_draining = false;
            return None;
        }
        if !self.tails_draining {
            self.wrote_leading_fragment = false;
            if let Some(n) = self.next_datagram(now, scratch, buf) {
                if self.tail_lens.is_empty() || self.wrote_leading_fragment {
                    return Some(n);
                }
                self.tails.extend_from_slice(&buf[..n]);
                self.tail_lens.push_back(n as u16);
            }
        }
        self.tails_draining = !self.tail_lens.is_empty();
        self.pop_tail(buf)
    }

    /// Hands out the oldest last fragment held back (already counted as sent).
    fn pop_tail(&mut self, buf: &mut [u8]) -> Option<usize> {
        let n = usize::from(self.tail_lens.pop_front()?);
        let start = self.tail_read;
        buf[..n].copy_from_slice(&self.tails[start..start + n]);
        self.tail_read += n;
        if self.tail_lens.is_empty() {
            self.tails.clear();
            self.tail_read = 0;
            self.tails_draining = false;
        }
        Some(n)
    }

    fn next_datagram(
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
        if self.bulk_paced_until.is_some_and(|t| t <= now) {
            self.bulk_paced_until = None;
        }
        if self.resend_finished {
            self.resend_finished = false;
            if let Some(f) = &self.finished {
                buf[..f.len()].copy_from_slice(f);
                return Some(self.count_sent(now, f.len(), false));
            }
        }
        while let Some(job) = self.jobs.front().copied() {
            let lbe = self.job_is_lbe(job);
            if lbe {
                // The other lanes' jobs (resends included) go before a less-than-best-effort
                // one, which may wait long for its own pacer.
                if let Some(k) = self.jobs.iter().position(|&j| !self.job_is_lbe(j)) {
                    let other = self.jobs.remove(k).expect("position is in range");
                    self.jobs.push_front(other);
                    continue;
                }
            }
            if matches!(self.state, State::Connected)
                && self.job_is_large(job)
                && self.preempt(now, job, scratch)
            {
                continue;
            }
            // The fragments of a large packet are paced like any datagram: a burst of 255 at
            // once overflows socket buffers on the way. (Small jobs, the close, go at once.)
            if matches!(job, Job::Reliable { .. } | Job::Unreliable { .. })
                && self.job_is_large(job)
                && !self.pace(now)
            {
                break;
            }
            if lbe && !self.pace_lbe(now) {
                break;
            }
            match self.run_job(now, job, scratch, buf) {
                // A last fragment held back: the job is done, the next one is at the front.
                Some(0) => continue,
                Some(n) => {
                    if lbe {
                        if let Some(l) = &mut self.ledbat {
                            l.on_sent(now, n);
                        }
                    }
                    return Some(n);
                }
                None => {}
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
                        return self.next_datagram(now, scratch, buf);
                    }
                    if self.close_ready() && !self.jobs.iter().any(|j| matches!(j, Job::Close)) {
                        self.jobs.push_back(Job::Close);
                        return self.next_datagram(now, scratch, buf);
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
        if self.ping_due {
            self.ping_due = false;
            return Some(self.write_ping(now, scratch, buf));
        }
        // Of the two kinds of packet, the one whose queued messages have the higher lane
        // priority goes first (reliable on a tie).
        let unreliable_first = match (self.queued_priority(true), self.queued_priority(false)) {
            (Some(r), Some(u)) => u < r,
            _ => false,
        };
        if unreliable_first
            && self.can_send_unreliable(now)
            && self.build_packet(now, false, scratch)
        {
            return self.next_datagram(now, scratch, buf);
        }
        if self.can_send_reliable(now) && self.build_packet(now, true, scratch) {
            return self.next_datagram(now, scratch, buf);
        }
        if self.can_send_unreliable(now) && self.build_packet(now, false, scratch) {
            return self.next_datagram(now, scratch, buf);
        }
        if now >= self.next_ping() {
            return Some(self.write_ping(now, scratch, buf));
        }
        let frag_ack_due = self.frag_ack_deadline().is_some_and(|d| now >= d);
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

    pub(super) fn can_send_reliable(&mut self, now: Instant) -> bool {
        if !self.has_queued(true) {
            return false;
        }
        if self.sent.len() >= MAX_IN_FLIGHT_PACKETS {
            return false;
        }
        if self.window_exhausted() {
            return false;
        }
        self.game_lanes_open = self.window_open();
        // The bulk lanes' limiter is asked only when they have something to send.
        self.lbe_lanes_open = self.queued_messages[2] > 0 && self.lbe_window_open(now);
        if !self.game_lanes_open && !self.lbe_lanes_open {
            return false;
        }
        self.pace(now)
    }

    /// Whether one more datagram fits the congestion window: reliable and unreliable octets
    /// in flight count alike (a burst of unreliable data overflows a receiver's socket buffer
    /// as surely as a reliable one), and one packet may always be in flight. Packets of
    /// less-than-best-effort lanes do not count here: their own limiter keeps them within
    /// what the path carries without a queue, and a large one (a bulk part, 250 KB) in
    /// flight must not hold the game's packets back.
    pub(super) fn window_open(&self) -> bool {
        let in_flight =
            self.in_flight - self.lbe_in_flight.min(self.in_flight) + self.unreliable_in_flight;
        in_flight == 0 || in_flight + MAX_DATA as u64 <= self.cc.window()
    }

    /// Whether a new packet of less-than-best-effort lanes may be built: their limiter has
    /// tokens, and one more datagram fits the congestion window with every octet in flight
    /// counted, or less than two of their largest packets are unacknowledged. (Their limiter paces
    /// each datagram; a second bulk part goes on while the first one's last fragments and
    /// resends are acknowledged, instead of the link idling a round trip or two per part:
    /// at 20 Mbit/s and 1% loss, 9.4 to 10.0 Mbit/s of goodput over five seeds with one part
    /// in flight, 12.9 to 13.4 with two. The cost: a part's resends wait behind the next
    /// part's fragments, so more went twice: 16 MiB at 5% loss resent 14% of its datagrams,
    /// 6.6% with one part, until a round's end became its own last fragment arriving; 5.9%
    /// since. The parts are counted whole here, until acknowledged, not less what the
    /// receiver reported holding as in the window.)
    pub(super) fn lbe_window_open(&mut self, now: Instant) -> bool {
        let srtt = self.rtt.srtt();
        let Some(l) = &mut self.ledbat else {
            return false;
        };
        if !l.try_pace(now, srtt) {
            return false;
        }
        let in_flight = self.in_flight + self.unreliable_in_flight;
        self.lbe_unacked < 2 * crate::wire::MAX_PAYLOAD as u64
            || in_flight + MAX_DATA as u64 <= self.cc.window()
    }

    /// Whether a job writes a packet of less-than-best-effort lanes only.
    pub(super) fn job_is_lbe(&self, job: Job) -> bool {
        match job {
            Job::Reliable { pn, .. } => self
                .sent
                .binary_search_by_key(&pn, |p| p.pn)
                .is_ok_and(|i| self.sent[i].lbe),
            _ => false,
        }
    }

    /// Takes the less-than-best-effort pacer's tokens for one datagram, or records when they
    /// will be there.
    pub(super) fn pace_lbe(&mut self, now: Instant) -> bool {
        let srtt = self.rtt.srtt();
        let Some(l) = &mut self.ledbat else {
            return true;
        };
        if l.try_pace(now, srtt) {
            self.bulk_paced_until = None;
            true
        } else {
            let at = l.pace_deadline(srtt).unwrap_or(now);
            self.bulk_paced_until = Some(at.max(now + Duration::from_micros(100)));
            false
        }
    }

    /// Whether unreliable data may go out now: something is queued, the window has room
    /// and the pacer tokens. Unreliable packets no acknowledgement described within the
    /// resend timeout stop counting as in flight (the peer acknowledges them only every few
    /// packets, so the last ones of a burst may never be). One with `STALE_LOSS_AFTER` or more
    /// packets sent after it is a loss: any of the 16 after it would have brought an
    /// acknowledgement describing it, so none came through (a receiver that fell behind and
    /// drops, or refuses, everything), and a PING goes out first (`ping_due`): a receiver
    /// refuses fragments more than 4,096 packet numbers above the newest packet it accepted,
    /// and a single datagram brings it up to date.
    pub(super) fn can_send_unreliable(&mut self, now: Instant) -> bool {
        if !self.has_queued(false) || self.window_exhausted() {
            return false;
        }
        let rto = self.rtt.rto();
        while let Some(&(_, size, sent)) = self.unreliable_sent.get(self.unreliable_stale) {
            if now.saturating_duration_since(sent) < rto {
                break;
            }
            if self.unreliable_sent.len() - self.unreliable_stale > STALE_LOSS_AFTER {
                self.cc.on_loss(now, sent);
                self.ping_due = true;
            }
            self.unreliable_in_flight -= u64::from(size);
            self.unreliable_stale += 1;
        }
        if self.unreliable_sent.len() - self.unreliable_stale >= UNRELIABLE_TRACKED {
            // As many unacknowledged packets within the resend timeout as are tracked: more
            // would push out records neither acknowledged nor lost, and the sender would go
            // on blind (that is how a receiver fell more than 4,096 packet numbers behind,
            // past which it refuses fragments). Wait for acks or the timeout.
            return false;
        }
        self.window_open() && self.pace(now)
    }

    /// Stops tracking the oldest unreliable packet (neither acknowledged nor lost).
    pub(super) fn forget_oldest_unreliable(&mut self) {
        self.forget_unreliable(0);
    }

    /// Stops tracking the unreliable packet at `index` of `unreliable_sent`; returns it.
    pub(super) fn forget_unreliable(&mut self, index: usize) -> Option<(u32, u32, Instant)> {
        let entry = self.unreliable_sent.remove(index)?;
        if index < self.unreliable_stale {
            self.unreliable_stale -= 1;
        } else {
            self.unreliable_in_flight -= u64::from(entry.1);
        }
        Some(entry)
    }

    /// The channel whose message goes next into a packet of this kind (reliable or not):
    /// the highest priority with messages queued, then the earliest weighted finish time.
    pub(super) fn next_lane(&self, reliable: bool, blocked: ChannelSet) -> Option<usize> {
        if !self.has_queued(reliable) {
            return None;
        }
        let clock = self.lane_clock;
        self.queued_channels[usize::from(reliable)]
            .iter_except(blocked)
            .min_by_key(|&i| {
                let c = &self.send_channels[i];
                (c.priority, c.lane_finish.max(clock), i)
            })
    }

    /// The highest lane priority among channels of this kind with messages queued.
    pub(super) fn queued_priority(&self, reliable: bool) -> Option<u8> {
        if !self.has_queued(reliable) {
            return None;
        }
        self.queued_channels[usize::from(reliable)]
            .iter()
            .map(|i| self.send_channels[i].priority)
            .min()
    }

    /// The lane priority of what a job writes.
    pub(super) fn job_priority(&self, job: Job) -> u8 {
        match job {
            Job::Reliable { pn, .. } => self
                .sent
                .binary_search_by_key(&pn, |p| p.pn)
                .map_or(0, |i| self.sent[i].priority),
            Job::Unreliable { .. } => self.unreliable_priority,
            Job::Close => 0,
        }
    }

    /// Builds a packet from a channel of higher priority than the large packet being written
    /// (`job`, at the front), and puts its job first: a high-priority message does not wait
    /// behind the fragments of a lower-priority one. Returns whether it did.
    fn preempt(&mut self, now: Instant, job: Job, scratch: &mut Scratch) -> bool {
        let current = self.job_priority(job);
        let reliable = self.queued_priority(true).filter(|&p| p < current);
        let unreliable = self.queued_priority(false).filter(|&p| p < current);
        let built = match (reliable, unreliable) {
            (Some(r), u) if u.is_none_or(|u| r <= u) => {
                self.can_send_reliable(now) && self.build_packet(now, true, scratch)
            }
            (_, Some(_)) => {
                // One unreliable packet is written at a time.
                !self
                    .jobs
                    .iter()
                    .any(|j| matches!(j, Job::Unreliable { .. }))
                    && self.can_send_unreliable(now)
                    && self.build_packet(now, false, scratch)
            }
            _ => false,
        };
        if built {
            let new = self.jobs.pop_back().expect("build_packet queued a job");
            self.jobs.push_front(new);
        }
        built
    }

    /// Whether a job writes a fragmented packet (and is therefore paced).
    pub(super) fn job_is_large(&self, job: Job) -> bool {
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

    /// Takes pacing tokens for one datagram, or records when they will be there.
    pub(super) fn pace(&mut self, now: Instant) -> bool {
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
    pub(super) fn build_packet(
        &mut self,
        now: Instant,
        reliable: bool,
        scratch: &mut Scratch,
    ) -> bool {
        // The frames are written straight into the buffer the packet is kept in (the sent
        // packet's, or the unreliable packet's) and sealed there.
        let mut out = if reliable {
            scratch.messages.take_empty(MAX_DATA, MAX_DATA)
        } else {
            std::mem::take(&mut self.unreliable_payload)
        };
        out.clear();
        // Room for a datagram's worth of frames and the tag, so that the buffer does not
        // grow (doubling) while they are written; a message larger than that is reserved
        // for exactly below, so that its buffer can be pooled again.
        out.reserve(MAX_DATA);
        let plain = &mut out;
        let report_state = (self.frag_ack_due, self.frag_report_soon, self.frag_reported);
        self.put_fragment_acks(now, plain, PACKET_PLAINTEXT / 4);
        let mut compress = true;
        let mut message_bytes = 0usize;
        let mut ordered = self.range_pool.pop().unwrap_or_default();
        ordered.clear();
        let mut any = false;
        let mut priority = u8::MAX;
        let mut lbe = true;
        let mut part_follows = false;
        // Channels skipped for this packet: their ordered window is full, or their kind of
        // lane (less than best effort or not) may not send now.
        let mut blocked = ChannelSet::default();
        if reliable
            && !(self.game_lanes_open && (self.lbe_lanes_open || self.queued_messages[2] == 0))
        {
            for (i, ch) in self.send_channels.iter().enumerate() {
                let open = if ch.lbe {
                    self.lbe_lanes_open
                } else {
                    self.game_lanes_open
                };
                if !open {
                    blocked.insert(i);
                }
            }
        }
        while let Some(ci) = self.next_lane(reliable, blocked) {
            let ch = &mut self.send_channels[ci];
            let q = ch
                .queue
                .front()
                .expect("next_lane picks a channel with messages");
            if !reliable
                && now.saturating_duration_since(q.enqueued) >= self.config.unreliable_deadline
            {
                // Past its deadline (the timer that drops it has not run yet): never sent late.
                self.drop_unsent(ci, &mut scratch.messages);
                continue;
            }
            let seq = ch.mode.is_sequenced().then_some(ch.next_seq);
            let frame_len = match q.part {
                Some(_) => frame::part_frame_len(q.data.len()),
                None => frame::message_frame_len(q.data.len(), seq.is_some()),
            };
            let alone = plain.is_empty() && frame_len > PACKET_PLAINTEXT;
            if !alone && plain.len() + frame_len > PACKET_PLAINTEXT {
                break;
            }
            let receive_cost = message_cost(q.data.len(), 0);
            if ch.mode == DeliveryMode::ReliableOrdered
                && (ch.next_seq.wrapping_sub(ch.window_base) >= ORDER_WINDOW
                    || (!ch.window.is_empty() && ch.window_bytes + receive_cost > ch.window_limit))
            {
                blocked.insert(ci);
                continue;
            }
            if alone {
                plain.reserve_exact(frame_len + seal::TAG_LEN);
            }
            let q = ch.queue.pop_front().expect("front checked");
            self.queued_messages[usize::from(reliable)] -= 1;
            self.queued_messages[2] -= u32::from(ch.lbe);
            if ch.queue.is_empty() {
                self.queued_channels[usize::from(reliable)].remove(ci);
            }
            let cost = message_cost(q.data.len(), q.data.capacity());
            ch.queued -= cost;
            match (q.part, seq) {
                (Some(p), Some(seq)) => {
                    frame::put_part(plain, ci as u8, seq, p.total, p.offset, &q.data);
                    let rest = (p.total as usize).saturating_sub(p.offset as usize + q.data.len());
                    part_follows |= rest > LARGE_REST;
                }
                _ => frame::put_message(plain, ci as u8, seq, &q.data),
            }
            any = true;
            priority = priority.min(ch.priority);
            lbe &= ch.lbe;
            compress &= ch.compress;
            if reliable {
                message_bytes += cost;
            }
            if ch.mode == DeliveryMode::ReliableOrdered {
                ch.window.push_back((false, receive_cost as u32));
                ch.window_bytes += receive_cost;
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
            // Weighted fair queueing: the channel's next message finishes later by its
            // length over its weight, counted from now (the clock) if it was idle.
            let start = ch.lane_finish.max(self.lane_clock);
            ch.lane_finish = start + (frame_len as u64 * 1024) / u64::from(ch.weight);
            self.lane_clock = start;
            scratch.messages.give(q.data);
            if alone {
                break;
            }
        }
        if !any {
            self.range_pool.push(ordered);
            (self.frag_ack_due, self.frag_report_soon, self.frag_reported) = report_state;
            out.clear();
            if reliable {
                scratch.messages.give(out);
            } else {
                self.unreliable_payload = out;
            }
            return false;
        }
        let fields = self.ack_fields();
        let pn = self.take_pn();
        let opts = SendOptions {
            reliable,
            checksum: false,
            compress,
        };
        let header = encode_in_place(
            &mut scratch.compressed,
            fields,
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
            packet.flight = size;
            packet.message_bytes = message_bytes;
            packet.ordered = ordered;
            packet.priority = priority;
            packet.lbe = lbe;
            packet.part_follows = part_follows;
            if lbe {
                self.lbe_in_flight += size;
                self.lbe_unacked += size;
            }
            self.sent.push_back(packet);
            self.jobs.push_back(Job::Reliable { pn, next: 0 });
        } else {
            if self.unreliable_sent.len() >= UNRELIABLE_TRACKED {
                self.forget_oldest_unreliable();
            }
            let count = header.fragment.map_or(1, |f| usize::from(f.count));
            let size = (out.len() + count * DATAGRAM_OVERHEAD) as u32;
            self.unreliable_sent.push_back((pn, size, now));
            self.unreliable_in_flight += u64::from(size);
            self.unreliable_payload = out;
            self.unreliable_header = Some((header, fields));
            self.unreliable_priority = priority;
            self.jobs.push_back(Job::Unreliable { next: 0 });
        }
        true
    }

    /// The ACK fields a packet carries. While acknowledgements are owed, the oldest owed ones
    /// ([`recv::Receiver::take_ack`]): an ACK naming the newest packet of a batch would leave
    /// the batch's oldest packets behind it, and the sender would take them for lost. Otherwise
    /// the newest packet accepted and the 16 before it; DEFAULT before anything arrived.
    pub(super) fn ack_fields(&mut self) -> TypeFields {
        match self
            .receiver
            .take_ack()
            .or_else(|| self.receiver.latest_ack())
        {
            Some(ack) => TypeFields::Ack(ack),
            None => TypeFields::Default,
        }
    }

    pub(super) fn take_pn(&mut self) -> u32 {
        let pn = self.next_pn;
        self.next_pn = self.next_pn.saturating_add(1);
        pn
    }

    /// Appends FRAGMENT_ACK frames for the packets in reassembly, within `budget` octets.
    pub(super) fn put_fragment_acks(&mut self, now: Instant, plain: &mut Vec<u8>, budget: usize) {
        if self.frag_ack_due.is_none() {
            return;
        }
        let start = plain.len();
        // Reports are charged to an allowance of 3x the fragment octets received, so forged
        // fragments draw no more than they carried.
        let allowance = self.frag_report_allowance;
        for pn in self.reassembler.packets() {
            let Some((count, held)) = self.reassembler.held(pn) else {
                continue;
            };
            let len = frame::fragment_ack_len(count);
            if plain.len() - start + len > allowance {
                self.stats.fragment_reports_limited += 1;
                break;
            }
            if plain.len() - start + len > budget {
                self.frag_report_allowance -= plain.len() - start;
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
        self.frag_report_allowance -= plain.len() - start;
        self.frag_ack_due = None;
        self.frag_report_soon = false;
        self.frag_reported = now;
    }

    /// Whether at most [`LARGE_REST`] octets follow `self.sent[i]`: queued on reliable
    /// channels, and in the fragmented packets sent after it (a message's last small part
    /// may be in flight while the round of the part before it goes).
    fn little_follows(&self, i: usize) -> bool {
        let queued: usize = self.queued_channels[1]
            .iter()
            .map(|c| self.send_channels[c].queued)
            .sum();
        let mut rest = queued as u64;
        for later in self.sent.range(i + 1..) {
            if later.header.fragment.is_some() {
                rest += later.size;
            }
            if rest > LARGE_REST as u64 {
                return false;
            }
        }
        rest <= LARGE_REST as u64
    }

    /// Writes the next datagram of `job` (at the front of `jobs`) into `buf` and returns its
    /// length; `Some(0)` when it held back a last fragment instead (in `tails`, the job done
    /// and taken off), `None` when the job has nothing left to write.
    pub(super) fn run_job(
        &mut self,
        now: Instant,
        job: Job,
        scratch: &mut Scratch,
        buf: &mut [u8],
    ) -> Option<usize> {
        match job {
            Job::Reliable { pn, next } => {
                let i = self.sent.binary_search_by_key(&pn, |p| p.pn).ok()?;
                // The end of a transfer: little of its message follows (`part_follows`), and
                // little is queued or in later fragmented packets in flight. Its repair rounds
                // are what the transfer's end waits for (asked only of a resend of a
                // fragmented packet).
                let resending = self.sent[i].resends > 0 || self.sent[i].declared_lost;
                let end_of_transfer = resending
                    && self.sent[i].header.fragment.is_some()
                    && !self.sent[i].part_follows
                    && self.little_follows(i);
                let p = &mut self.sent[i];
                let count = p.header.fragment.map_or(1, |f| usize::from(f.count));
                if next == 0 && count > 1 && p.held[..count].all() {
                    // Every fragment was reported held, yet no ack came: the receiver dropped
                    // the packet after reassembly. Forget the report and send it all again.
                    p.held = FragmentBitmap::ZERO;
                    self.recount_flight(i);
                }
                let p = &mut self.sent[i];
                let Some(index) = (next..count).find(|&k| count == 1 || !p.held[k]) else {
                    // Reports during the round showed the rest held: the round ends here (the
                    // caller takes the job off), as it would have at its last fragment.
                    p.end_transmission(self.next_pn);
                    return None;
                };
                let n = fragment::write_datagram(&p.header, &p.fields, &p.payload, index, buf)
                    .expect("buffer holds a full datagram");
                let resend = p.resends > 0 || p.declared_lost;
                if next == 0 {
                    // A fragmented transmission counts for the packet threshold from its last
                    // fragment on (set below): packets of other lanes written between its
                    // fragments arrive, and are acknowledged, before its later fragments.
                    p.sent_before_pn = if count > 1 { u32::MAX } else { self.next_pn };
                    p.fresh_report = false;
                    if !resend {
                        p.judge_from_pn = self.next_pn;
                    } else if p.judged {
                        // The loss estimate judges this transmission now.
                        p.judge_from_pn = self.next_pn;
                        p.judge_until_pn = u32::MAX;
                        p.copy_planned = false;
                        p.judged = false;
                    } else {
                        // The previous transmission's fate is not known yet (a timer declared
                        // it lost): ACKs naming packets sent before this one still tell it.
                        p.judge_until_pn = p.judge_until_pn.min(self.next_pn);
                    }
                }
                p.last_index = index;
                p.last_sent = now;
                let gap = (self.rtt.srtt() / 4).max(Duration::from_millis(2));
                let candidate = !resend
                    && count == 1
                    && p.payload.len() <= REDUNDANT_MAX
                    && self.path_loss.fraction() >= REDUNDANCY_LOSS
                    && self.in_flight + p.size <= self.cc.window();
                let probe = candidate && {
                    self.copy_turn += 1;
                    self.copy_turn >= PROBE_EVERY
                };
                if probe {
                    self.copy_turn = 0;
                }
                if candidate && !probe {
                    // While loss lasts, a small reliable packet goes out twice, a quarter RTT
                    // apart: a game cannot wait a resend timeout for its inputs. (When no
                    // other packet's fate was learned for PROBE_EVERY of them, one goes once:
                    // its fate keeps the loss estimate true, which a packet sent twice cannot
                    // tell.)
                    p.copy_planned = true;
                    schedule_copy(&mut self.copies, now + gap, pn, 0);
                } else if count > 1 {
                    // The last fragment of a transmission goes twice (losing it costs a resend
                    // timeout, as nothing after it shows the gap), and so does every fragment
                    // of a resend round of a few, or of a few dozen at the end of a transfer
                    // when a report told what is missing: one more loss there costs a round
                    // trip (a 250 KiB message at 5% loss lacks about 13 fragments after its
                    // first round). A blind resend (nothing reported held: a timer, or a
                    // receiver that dropped the packet) is not doubled past a few.
                    let missing = count - p.held[..count].count_ones();
                    let last_of_round = (index + 1..count).all(|k| p.held[k]);
                    let doubled = if end_of_transfer && missing < count {
                        TAIL_ROUND_DOUBLED
                    } else {
                        ROUND_DOUBLED
                    };
                    if last_of_round || (resend && missing <= doubled) {
                        // (A round's copies follow its burst closely: the transfer's end
                        // waits for the round.)
                        let gap = if resend {
                            Duration::from_millis(2)
                        } else {
                            gap
                        };
                        schedule_copy(&mut self.copies, now + gap, pn, index as u8);
                    }
                }
                // The transmission ends at the last fragment the receiver lacks.
                if (index + 1..count).all(|k| p.held[k]) {
                    p.end_transmission(self.next_pn);
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
                    if count > 1 {
                        // Held back while more unreliable packets follow: the full leading
                        // fragments go out in a row, then the short last ones (in order).
                        self.count_sent(now, n, false);
                        self.tails.extend_from_slice(&buf[..n]);
                        self.tail_lens.push_back(n as u16);
                        if self.tail_lens.len() >= MAX_TAILS {
                            self.tails_draining = true;
                        }
                        return Some(0);
                    }
                } else {
                    self.wrote_leading_fragment = true;
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

    /// Writes a PING carrying the microseconds since the connection's epoch (the PONG echoes
    /// them: an RTT sample).
    fn write_ping(&mut self, now: Instant, scratch: &mut Scratch, buf: &mut [u8]) -> usize {
        self.last_ping = now;
        let micros = now.saturating_duration_since(self.epoch).as_micros() as u64;
        self.write_small(
            now,
            TypeFields::Heartbeat(Heartbeat::Ping),
            &micros.to_be_bytes(),
            scratch,
            buf,
        )
    }

    /// Writes a one-datagram unreliable packet of `fields` and `data` (a heartbeat).
    pub(super) fn write_small(
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
    pub(super) fn write_ack(
        &mut self,
        now: Instant,
        scratch: &mut Scratch,
        buf: &mut [u8],
    ) -> Option<usize> {
        let ack = self.receiver.take_ack();
        if ack.is_none() && self.frag_ack_due.is_none() {
            return None;
        }
        let mut plain = std::mem::take(&mut scratch.plain);
        plain.clear();
        self.put_fragment_acks(now, &mut plain, PACKET_PLAINTEXT);
        if ack.is_none() && plain.is_empty() {
            // Only fragment reports were due, and their allowance is spent.
            scratch.plain = plain;
            return None;
        }
        let fields = match ack {
            Some(a) => TypeFields::Ack(a),
            None => self.ack_fields(),
        };
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

    pub(super) fn count_sent(&mut self, now: Instant, len: usize, resend: bool) -> usize {
        self.sent_rate.add(now, len);
        self.cc.on_sent(len);
        self.last_send = now;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += len as u64;
        if resend {
            self.stats.packets_resent += 1;
        }
        len
    }
}

impl Connection {
    /// Whether a job that writes packet `pn` is queued.
    pub(super) fn job_queued(&self, pn: u32) -> bool {
        self.jobs
            .iter()
            .any(|j| matches!(j, Job::Reliable { pn: p, .. } if *p == pn))
    }
}

/// Queues a redundant copy of fragment `index` of packet `pn`, due at `due`, in time order:
/// copies are due a quarter RTT or 2 ms after their original, and the queue is read from
/// the front (as is its earliest deadline in `poll_timeout`).
fn schedule_copy(copies: &mut VecDeque<(Instant, u32, u8)>, due: Instant, pn: u32, index: u8) {
    let at = copies.partition_point(|c| c.0 <= due);
    copies.insert(at, (due, pn, index));
}
