//! Packets in flight: the record of each reliable packet sent, acknowledgements (ACK fields
//! and FRAGMENT_ACK reports), loss detection and what it tells congestion control.

use super::*;

pub(super) struct SentPacket {
    pub(super) pn: u32,
    pub(super) header: Header,
    pub(super) fields: TypeFields,
    pub(super) payload: Vec<u8>,
    /// Fragments the receiver reported holding (unfragmented packets: unused).
    pub(super) held: FragmentBitmap,
    pub(super) first_sent: Instant,
    pub(super) last_sent: Instant,
    pub(super) resends: u32,
    pub(super) size: u64,
    /// The part of `size` counted in the connection's octets in flight: all of it, less the
    /// share of the fragments the receiver reported holding (they have left the network).
    pub(super) flight: u64,
    /// What its messages cost the send budget (released when acked).
    pub(super) message_bytes: usize,
    pub(super) ordered: Vec<SeqRange>,
    pub(super) declared_lost: bool,
    /// The first packet number assigned after this packet's latest transmission began: an
    /// acknowledgement of it or later shows this transmission had its chance.
    pub(super) sent_before_pn: u32,
    /// Whether the receiver reported its fragments since the latest transmission.
    pub(super) fresh_report: bool,
    /// The highest fragment index written in the latest transmission.
    pub(super) last_index: usize,
    /// When the receiver last reported the fragments it holds.
    pub(super) last_report: Option<Instant>,
    /// The highest lane priority (lowest number) among its messages.
    pub(super) priority: u8,
    /// Whether it holds only less-than-best-effort lanes' messages.
    pub(super) lbe: bool,
    /// Whether its latest transmission is sent twice (a small reliable packet while loss
    /// lasts): its fate then says little of the path's loss and is not counted.
    pub(super) copy_planned: bool,
    /// The transmission the loss estimate judges: its `sent_before_pn`, and the first packet
    /// number sent after it was resent (`u32::MAX` until then). Only ACKs naming a packet
    /// number below the latter describe it.
    pub(super) judge_from_pn: u32,
    pub(super) judge_until_pn: u32,
    /// Whether the loss estimate has counted its latest transmission.
    pub(super) judged: bool,
    /// Whether it holds a part of a message with more than `builder::LARGE_REST` octets of
    /// parts after it (then its resend rounds are not what the message's delivery waits for
    /// last).
    pub(super) part_follows: bool,
}

impl SentPacket {
    /// What the resend timer counts from: the latest transmission, or the latest fragment
    /// report if later (a large packet crossing a slow link keeps reporting progress, and is
    /// not resent while it does).
    pub(super) fn timer_base(&self) -> Instant {
        match self.last_report {
            Some(r) if r > self.last_sent => r,
            _ => self.last_sent,
        }
    }

    /// Its latest transmission (the first, or a resend round) has written its last datagram:
    /// a fragmented packet counts for the packet threshold from the packet numbers assigned
    /// from `next_pn` on, and a resend round counts as one resend.
    pub(super) fn end_transmission(&mut self, next_pn: u32) {
        if self.header.fragment.is_some_and(|f| f.count > 1) {
            self.sent_before_pn = next_pn;
        }
        if self.declared_lost {
            self.resends += 1;
            self.declared_lost = false;
        }
    }

    /// The record of packet `pn`, first sent at `now`, with its processed payload.
    pub(super) fn new(
        now: Instant,
        pn: u32,
        header: Header,
        fields: TypeFields,
        payload: Vec<u8>,
    ) -> Self {
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
            flight: 0,
            message_bytes: 0,
            ordered: Vec::new(),
            declared_lost: false,
            sent_before_pn: pn.saturating_add(1),
            fresh_report: false,
            last_index: 0,
            last_report: None,
            priority: 0,
            lbe: false,
            copy_planned: false,
            judge_from_pn: pn.saturating_add(1),
            judge_until_pn: u32::MAX,
            judged: false,
            part_follows: false,
        }
    }
}

impl Connection {
    pub(super) fn on_ack_fields(&mut self, now: Instant, ack: &AckFields, pool: &mut MessagePool) {
        // Map the 16-bit ACK ID to the nearest packet number we sent.
        let newest = self.next_pn.wrapping_sub(1);
        let base = newest
            .wrapping_sub(u32::from(newest as u16).wrapping_sub(u32::from(ack.ack_id)) & 0xFFFF);
        let ack_pn = base;
        if ack_pn > newest {
            return;
        }
        // One RTT sample per ACK, from the newest packet it newly acknowledges (sent once):
        // older ones waited longer in the peer's ack delay and would read high.
        let mut newest_sent: Option<Instant> = None;
        // The ACK describes `ack_pn` and the 16 before it. Only packets still in flight (and
        // a close's packet) have anything to learn from it: they are found with one search
        // instead of one per packet number described, newest first.
        let oldest = ack_pn.saturating_sub(16);
        let mut pns = [0u32; 18];
        let mut n = 0;
        let start = self.sent.partition_point(|p| p.pn < oldest);
        for p in self.sent.range(start..) {
            if p.pn > ack_pn {
                break;
            }
            pns[n] = p.pn;
            n += 1;
        }
        if let Some(Closing {
            packet: Some(close),
            ..
        }) = self.close.as_deref()
        {
            if (oldest..=ack_pn).contains(&close.pn) && !pns[..n].contains(&close.pn) {
                pns[n] = close.pn;
                n += 1;
                pns[..n].sort_unstable();
            }
        }
        for &pn in pns[..n].iter().rev() {
            let back = ack_pn - pn;
            if back > 0 && ack.ack_bits & (0x8000 >> (back - 1)) == 0 {
                self.judge_missing(pn, ack_pn);
                continue;
            }
            if let Some(sent) = self.on_packet_acked(pn, ack_pn, pool) {
                newest_sent = newest_sent.max(Some(sent));
            }
        }
        if self.largest_acked.is_none_or(|l| ack_pn > l) {
            self.largest_acked = Some(ack_pn);
        }
        if let Some(sent) = self.unreliable_acks(now, ack, ack_pn) {
            newest_sent = newest_sent.max(Some(sent));
        }
        if let Some(sent) = newest_sent {
            let sample = now.saturating_duration_since(sent);
            self.rtt.update_acked(sample);
            if let Some(l) = &mut self.ledbat {
                l.on_rtt(now, sample.saturating_sub(self.config.ack_delay));
            }
        }
        self.detect_losses(now);
    }

    /// Acknowledged unreliable packets grow the window; those left behind by
    /// `PACKET_THRESHOLD` newer acknowledged ones count as a loss (once per round trip).
    /// Returns when the newest one acknowledged was sent.
    pub(super) fn unreliable_acks(
        &mut self,
        now: Instant,
        ack: &AckFields,
        ack_pn: u32,
    ) -> Option<Instant> {
        let mut newest = None;
        let mut i = 0;
        while i < self.unreliable_sent.len() {
            let (pn, size, sent) = self.unreliable_sent[i];
            let back = ack_pn.wrapping_sub(pn);
            let acked =
                back == 0 || (1..=16).contains(&back) && ack.ack_bits & (0x8000 >> (back - 1)) != 0;
            if acked {
                newest = newest.max(Some(sent));
                self.cc.on_ack(u64::from(size), sent);
                self.record_loss(false);
                self.forget_unreliable(i);
            } else if pn < ack_pn && (PACKET_THRESHOLD..=16).contains(&back) {
                // Inside the window the ACK describes and not in it: lost.
                self.cc.on_loss(now, sent);
                self.record_loss(true);
                self.forget_unreliable(i);
            } else if pn < ack_pn && back > 16 {
                // Older than any ACK will describe again: forget it.
                self.forget_unreliable(i);
            } else {
                i += 1;
            }
        }
        newest
    }

    /// For the loss estimate: the ACK naming `ack_pn` describes
    /// reliable packet `pn` as missing. Its transmission counts as lost if a packet sent after
    /// it arrived (without loss detection's allowance for reordering: that is rare, and an
    /// estimate that waited for three later packets would, at a game's packet rate, see the
    /// resend timer first), once per transmission. Losses are
    /// counted only from what an ACK shows, never from a timer, so that a lost ACK does not
    /// read as a lost packet.
    fn judge_missing(&mut self, pn: u32, ack_pn: u32) {
        let Ok(i) = self.sent.binary_search_by_key(&pn, |p| p.pn) else {
            return;
        };
        let p = &self.sent[i];
        let from = p.judge_from_pn;
        if !p.judged && ack_pn < p.judge_until_pn && ack_pn >= from {
            self.judge(i, true);
        }
    }

    /// Counts the fate of `self.sent[i]`'s latest transmission (once), unless it was sent
    /// twice.
    fn judge(&mut self, i: usize, lost: bool) {
        let p = &mut self.sent[i];
        p.judged = true;
        if !p.copy_planned {
            self.record_loss(lost);
        }
    }

    /// One transmission's fate for the loss estimate.
    fn record_loss(&mut self, lost: bool) {
        self.path_loss.record(lost);
        self.copy_turn = 0;
    }

    /// Takes packet `pn`, acknowledged by the ACK naming `ack_pn`, off the record; returns when it was sent if it was sent once (an
    /// RTT sample).
    pub(super) fn on_packet_acked(
        &mut self,
        pn: u32,
        ack_pn: u32,
        pool: &mut MessagePool,
    ) -> Option<Instant> {
        if let Some(Closing {
            packet: Some(close),
            ..
        }) = self.close.as_deref()
        {
            if close.pn == pn {
                self.state = State::Closed;
                return None;
            }
        }
        let Ok(i) = self.sent.binary_search_by_key(&pn, |p| p.pn) else {
            return None;
        };
        if !self.sent[i].judged && ack_pn < self.sent[i].judge_until_pn {
            self.judge(i, false);
        }
        let packet = self.sent.remove(i).expect("index from binary search");
        let sample = (packet.resends == 0).then_some(packet.first_sent);
        self.in_flight = self.in_flight.saturating_sub(packet.flight);
        if packet.lbe {
            self.lbe_in_flight = self.lbe_in_flight.saturating_sub(packet.flight);
            self.lbe_unacked = self.lbe_unacked.saturating_sub(packet.size);
        }
        self.cc.on_ack(packet.size, packet.first_sent);
        if packet.header.fragment.is_none() {
            // (A fragmented packet's octets were counted as its fragments were reported held.)
            let srtt = self.rtt.srtt();
            if let Some(l) = &mut self.ledbat {
                l.on_ack(self.last_recv, packet.size, srtt);
            }
        }
        self.budget.queued = self.budget.queued.saturating_sub(packet.message_bytes);
        for r in &packet.ordered {
            let ch = &mut self.send_channels[usize::from(r.channel)];
            for k in 0..r.count {
                let idx = usize::from(r.first.wrapping_add(k).wrapping_sub(ch.window_base));
                if let Some(slot) = ch.window.get_mut(idx) {
                    slot.0 = true;
                }
            }
            while let Some(&(true, cost)) = ch.window.front() {
                ch.window.pop_front();
                ch.window_bytes -= cost as usize;
                ch.window_base = ch.window_base.wrapping_add(1);
            }
        }
        self.recycle_sent(packet, pool);
        sample
    }

    pub(super) fn recycle_sent(&mut self, packet: SentPacket, pool: &mut MessagePool) {
        pool.give(packet.payload);
        if self.range_pool.len() < POOL_LIMIT && packet.ordered.capacity() > 0 {
            self.range_pool.push(packet.ordered);
        }
    }

    pub(super) fn on_fragment_ack(&mut self, now: Instant, pn: u32, count: u8, bitmap: &[u8]) {
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
        self.recount_flight(i);
        let packet = &mut self.sent[i];
        self.cc.on_ack((gained * MAX_DATA) as u64, sent_at);
        let srtt = self.rtt.srtt();
        if let Some(l) = &mut self.ledbat {
            l.on_ack(now, (gained * MAX_DATA) as u64, srtt);
        }
        // Once the receiver holds the last fragment of this transmission (the first, or a
        // resend round), the fragments it still lacks are lost, as they were sent before that
        // one: resend them now rather than at the resend timeout. A report that arrives while
        // the packet is being (re)sent, or after it was already declared lost, changes
        // nothing; nor does one that shows fragments of an earlier transmission only (the
        // round's own may still be crossing).
        let count = usize::from(count);
        // (No time rule: on a slow link the fragments of one burst arrive over a long time,
        // and a report in the middle of it would make every fragment still in flight look
        // lost.)
        let received_last = packet.held[packet.last_index];
        let missing = packet.held[..count].not_all();
        let declared_lost = packet.declared_lost;
        if received_last && missing && !declared_lost && !self.job_queued(pn) {
            self.sent[i].declared_lost = true;
            self.on_lost(now, pn);
        }
    }

    /// Sets what `self.sent[i]` counts in the octets in flight from the fragments reported
    /// held (after every change of its `held`): a large packet crossing the path frees the
    /// window as its fragments arrive, so that what follows it need not wait for its ack.
    pub(super) fn recount_flight(&mut self, i: usize) {
        let p = &mut self.sent[i];
        let flight = match p.header.fragment {
            Some(f) if f.count > 1 => {
                let count = usize::from(f.count);
                let held = p.held[..count].count_ones() as u64;
                p.size - p.size * held / count as u64
            }
            _ => p.size,
        };
        let old = std::mem::replace(&mut p.flight, flight);
        self.in_flight = (self.in_flight + flight).saturating_sub(old);
        if p.lbe {
            self.lbe_in_flight = (self.lbe_in_flight + flight).saturating_sub(old);
        }
    }

    /// Packets unacknowledged while `PACKET_THRESHOLD` later ones were acked, or older than
    /// 9/8 RTT behind an acked one, are lost: resend them now.
    pub(super) fn detect_losses(&mut self, now: Instant) {
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

    pub(super) fn on_lost(&mut self, now: Instant, pn: u32) {
        let Ok(i) = self.sent.binary_search_by_key(&pn, |p| p.pn) else {
            return;
        };
        let sent_at = self.sent[i].last_sent;
        self.cc.on_loss(now, sent_at);
        let srtt = self.rtt.srtt();
        if let Some(l) = &mut self.ledbat {
            l.on_loss(now, srtt);
        }
        self.stats.packets_lost += 1;
        if !self.job_queued(pn) {
            self.jobs.push_back(Job::Reliable { pn, next: 0 });
        }
    }

    /// Whether the oldest unacknowledged reliable packet is so far behind that more new
    /// packets could push its resends out of the receiver's replay window.
    pub(super) fn window_exhausted(&self) -> bool {
        self.sent
            .front()
            .is_some_and(|oldest| self.next_pn - oldest.pn >= recv::WINDOW - 512)
    }
}
