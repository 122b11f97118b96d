//! Timers: every deadline of a connection (idle timeout, resends, heartbeats, pacing, acks,
//! reassembly, the end of a close), `poll_timeout` and `handle_timeout`, and the idle trim.

use super::*;

#[cfg(test)]
thread_local! {
    /// Calls of [`Connection::poll_timeout`] and [`Connection::handle_timeout`] on this thread
    /// (for tests that the endpoint visits only the connections that are due).
    pub(crate) static TIMER_VISITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts one visit of a connection's timers (tests only).
#[inline]
fn count_visit() {
    #[cfg(test)]
    TIMER_VISITS.with(|v| v.set(v.get() + 1));
}

impl Connection {
    /// Runs the timers due at `now`: the idle timeout, resends, expiry of unreliable messages
    /// (their buffers go to the endpoint's pool in `scratch`) and of incomplete packets, and
    /// the end of a close.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        events: &mut VecDeque<Event>,
        scratch: &mut Scratch,
    ) {
        count_visit();
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
                    stats: Box::new(self.stats()),
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
            }) = self.close.as_deref()
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
        for i in self.queued_channels[0].iter() {
            while self.send_channels[i]
                .queue
                .front()
                .is_some_and(|q| now.saturating_duration_since(q.enqueued) >= deadline)
            {
                self.drop_unsent(i, &mut scratch.messages);
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
            if self.job_queued(pn) {
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
                self.recount_flight(i);
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

    /// Drops the oldest message queued on unreliable channel `ci`, unsent (its deadline
    /// passed), and counts it.
    pub(super) fn drop_unsent(&mut self, ci: usize, pool: &mut MessagePool) {
        let ch = &mut self.send_channels[ci];
        let Some(q) = ch.queue.pop_front() else {
            return;
        };
        self.queued_messages[0] -= 1;
        if ch.queue.is_empty() {
            self.queued_channels[0].remove(ci);
        }
        ch.queued -= message_cost(q.data.len(), q.data.capacity());
        self.stats.unreliable_dropped += 1;
        ch.counted.dropped_unsent += 1;
        pool.give(q.data);
    }

    /// With nothing queued, in flight or in reassembly, gives back the buffers that traffic
    /// grew, so that an idle connection holds little memory.
    pub(super) fn trim_when_idle(&mut self) {
        let idle = self.sent.is_empty()
            && self.jobs.is_empty()
            && self.reassembler.is_empty()
            && self.queued_messages == [0; 3]
            && self.recv_channels.iter().all(|c| c.held.is_empty());
        if !idle {
            return;
        }
        self.range_pool.truncate(4);
        // The unreliable packet's buffer (a datagram's worth): the first unreliable message
        // after the pause allocates again.
        self.unreliable_payload = Vec::new();
        if self.tail_lens.is_empty() {
            self.tails = Vec::new();
            self.tail_lens = VecDeque::new();
        }
        self.reassembler.trim();
        self.sent.shrink_to(0);
        self.jobs.shrink_to(0);
        // Unacknowledged unreliable packets this old will never be acknowledged.
        self.unreliable_sent.clear();
        self.unreliable_in_flight = 0;
        self.unreliable_stale = 0;
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

    /// The earliest resend timeout of a packet in flight without a job queued. A packet whose
    /// job is queued (waiting behind a paced large packet, or for pacing) is not resent by its
    /// timer (`handle_timeout` skips it): counting its timeout would make `poll_timeout`
    /// return a time already past until the job runs, a wake-up loop that stops the clock of
    /// a simulation (what wakes the job is the pacing deadline).
    fn resend_deadline(&self) -> Option<Instant> {
        let deadline = |p: &SentPacket| p.timer_base() + self.rtt.backoff_rto(p.resends);
        if !self.jobs.iter().any(|j| matches!(j, Job::Reliable { .. })) {
            return self.sent.iter().map(deadline).min();
        }
        // The packets with a queued job, as bits by their distance from the oldest in flight
        // (packets in flight span less than the replay window: see `window_exhausted`), so
        // that many queued jobs cost one pass, not one search per packet.
        let base = self.sent.front()?.pn;
        let mut queued = [0u64; (recv::WINDOW / 64) as usize];
        for j in &self.jobs {
            if let Job::Reliable { pn, .. } = *j {
                let off = pn.wrapping_sub(base) as usize;
                if off < recv::WINDOW as usize {
                    queued[off / 64] |= 1 << (off % 64);
                }
            }
        }
        self.sent
            .iter()
            .filter(|p| {
                let off = (p.pn - base) as usize;
                off >= recv::WINDOW as usize || queued[off / 64] >> (off % 64) & 1 == 0
            })
            .map(deadline)
            .min()
    }

    /// The earliest time [`Connection::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        count_visit();
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
                }) = self.close.as_deref()
                {
                    consider(p.last_sent + self.rtt.backoff_rto(p.resends));
                    return Some(t);
                }
                if let Some(d) = self.resend_deadline() {
                    consider(d);
                }
                // Jobs (and messages still queued) waiting for pacing tokens wait for
                // `paced_until`; waking at `last_send` instead would spin without progress.
                if let Some(d) = self.paced_until.or(self.bulk_paced_until) {
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
        if let Some(d) = self.resend_deadline() {
            consider(d);
        }
        for i in self.queued_channels[0].iter() {
            if let Some(q) = self.send_channels[i].queue.front() {
                consider(q.enqueued + self.config.unreliable_deadline);
            }
        }
        if let Some(d) = self.paced_until {
            consider(d);
        }
        if let Some(d) = self.bulk_paced_until {
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
        if let Some(due) = self.frag_ack_deadline() {
            consider(due);
        }
        if let Some(Challenge {
            sent_at: Some(sent),
            ..
        }) = self.challenge
        {
            consider(sent + self.rtt.rto());
        }
        // Unreliable data waiting because every tracked packet is within the resend timeout
        // waits for the oldest to go stale (or an acknowledgement).
        if self.unreliable_sent.len() - self.unreliable_stale >= UNRELIABLE_TRACKED {
            if let Some(&(_, _, sent)) = self.unreliable_sent.get(self.unreliable_stale) {
                consider(sent + self.rtt.rto());
            }
        }
        // Jobs waiting for pacing tokens wait for `paced_until` (considered above).
        if (!self.jobs.is_empty() && self.paced_until.is_none() && self.bulk_paced_until.is_none())
            || !self.tail_lens.is_empty()
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
    pub(super) fn next_ping(&self) -> Instant {
        let interval = self.config.heartbeat_interval;
        (self.last_send + interval).min(self.last_ping + interval * 4)
    }

    /// When the fragment reports owed go out: an interval after the first fragment that
    /// awaits one, or, once the last fragment of a packet still incomplete arrived, a quarter
    /// interval after the previous report: the sender's resend round waits for that report.
    pub(super) fn frag_ack_deadline(&self) -> Option<Instant> {
        let due = self.frag_ack_due?;
        let interval = self.frag_ack_interval();
        let regular = due + interval;
        if self.frag_report_soon {
            Some(regular.min((self.frag_reported + interval / 4).max(due)))
        } else {
            Some(regular)
        }
    }

    pub(super) fn frag_ack_interval(&self) -> Duration {
        (self.rtt.srtt() / 4).max(Duration::from_millis(2))
    }
}
