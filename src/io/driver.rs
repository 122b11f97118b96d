//! The loop both drivers share: read until `WouldBlock`, feed, run timers, drain, send, wait.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use quinn_udp::{RecvMeta, Transmit as Segments, UdpSocketState};

use super::socket::SocketConfig;
use super::timer::{needs_timer, Timer};
use crate::endpoint::{Client, Server};
use crate::types::Transmit;

/// The socket's token in the driver's [`Poll`].
const SOCKET: Token = Token(0);
/// The precise timer's token.
const TIMER: Token = Token(1);
/// The token of a [`mio::Waker`] (a shard's inbox).
const WAKE: Token = Token(2);
/// A receive buffer: any UDP datagram fits, and so does any GRO batch (the kernel coalesces
/// at most 64 KiB), so none is truncated.
const RECV_BUF: usize = 1 << 16;
/// Receive buffers at most, with offload: datagrams (or GRO batches) one call may return.
const RECV_SLOTS: usize = 16;
/// The room handed to `poll_transmit` for one datagram (the endpoints need at least 1,200).
const SEND_BUF: usize = 1500;
/// Datagrams in one GSO call at most (Linux takes 64).
const MAX_SEGMENTS: usize = 64;
/// Octets in one GSO call at most: what one UDP datagram could carry, less some room.
const MAX_RUN_BYTES: usize = 60_000;
/// Datagrams read in one go before the timers and the outgoing side get a turn.
const READ_BATCH: usize = 1024;
/// Whether a batch read that fills fewer buffers than it offered ends the read, as
/// `WouldBlock` does. On Linux `recvmmsg` on a non-blocking socket returns fewer only when the
/// queue ran empty or an error stopped it after some datagrams (the driver's sockets are not
/// connected and do not ask for ICMP errors, so none is reported), and every datagram queued
/// after that wakes an edge-triggered epoll (each arrival calls the socket's wake-up);
/// elsewhere the read goes on to `WouldBlock`.
const SHORT_READ_DRAINS: bool = cfg!(target_os = "linux");
/// Datagrams fed to the endpoint at most before its output is drained, when one call read
/// more (with GRO one call reads up to 16 runs of up to 64 KiB). The acknowledgements a
/// batch owes then leave together, oldest first, mostly in one GSO call, and the peer reads
/// them in one wake-up: draining every 16 datagrams sent each of a game frame's two or three
/// ACK datagrams with its own `sendto`, and woke the peer for each. The bound keeps what the
/// drain waits for (the batch's own processing) to a fraction of a millisecond.
const FLUSH_EVERY: usize = 256;
/// The shortest wait for a deadline that was already due at the last pass (see
/// [`IoStats::stale_deadlines`]); about mio's resolution.
const MIN_STALE_WAIT: Duration = Duration::from_millis(1);

/// Counters of a driver's socket work (the endpoint's own are in its stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Datagrams read from the socket.
    pub datagrams_received: u64,
    /// System calls that read them (fewer than datagrams with `recvmmsg` and GRO).
    pub recv_calls: u64,
    /// Octets in them.
    pub bytes_received: u64,
    /// Datagrams the socket took.
    pub datagrams_sent: u64,
    /// System calls that sent them (fewer than datagrams where GSO sends runs in one).
    pub send_calls: u64,
    /// Octets in them.
    pub bytes_sent: u64,
    /// Times `send_to` returned `WouldBlock` (the datagram was kept and sent later).
    pub send_would_block: u64,
    /// Datagrams kept back because the socket would block (all sent later, in order).
    pub datagrams_queued: u64,
    /// Times the held-back queue was full, so the endpoint's remaining datagrams were left to
    /// it until the socket turned writable (nothing is dropped for this).
    pub send_queue_full: u64,
    /// Datagrams `send_to` refused with another error (dropped; the endpoint resends what is
    /// reliable). The error is logged at debug level.
    pub send_errors: u64,
    /// GSO sends that failed other than with `WouldBlock` (their datagrams were then sent one
    /// by one; logged at debug level).
    pub gso_errors: u64,
    /// Errors of `recv_from` other than `WouldBlock` (logged at debug level).
    pub recv_errors: u64,
    /// Returns from `Poll::poll` (readiness, a deadline, or the caller's limit).
    pub wakeups: u64,
    /// Waits that set the precise timer because mio would have rounded them up to the next
    /// millisecond (pacing deadlines, mostly).
    pub precise_waits: u64,
    /// Wake-ups without readiness of the socket (a deadline, the caller's limit), which
    /// therefore did not try to read it.
    pub reads_skipped: u64,
    /// Reads that ended after a batch call filled fewer buffers than it offered (the queue
    /// was empty: Linux only), instead of one more call to find `WouldBlock`.
    pub reads_short: u64,
    /// Precise waits whose deadline was the one the timer was already set for, so it was not
    /// set again (a system call saved).
    pub timer_kept: u64,
    /// Waits for an endpoint deadline that was already due when the last pass ran its timers
    /// (then the wait is at least a millisecond, so that such a deadline cannot make the loop
    /// spin). Non-zero while the send queue is full is expected; otherwise it points at an
    /// endpoint timer that stays due after `handle_timeout`.
    pub stale_deadlines: u64,
}

/// The sans-IO surface the loop drives; implemented by [`Server`] and [`Client`].
pub(crate) trait Endpoint {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn poll_event(&mut self) -> Option<crate::Event> {
        None
    }
    fn has_event(&self) -> bool {
        false
    }
    /// Called at the start of every pass (before the socket is read), with the socket
    /// counters so far: a shard takes its inbox here.
    fn service(&mut self, _io: &IoStats) {}
}

impl Endpoint for Server {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        Server::handle_datagram(self, now, from, data);
    }
    fn handle_timeout(&mut self, now: Instant) {
        Server::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        Server::poll_transmit(self, now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Server::poll_timeout(self)
    }
    fn poll_event(&mut self) -> Option<crate::Event> {
        Server::poll_event(self)
    }
    fn has_event(&self) -> bool {
        Server::has_event(self)
    }
}

impl Endpoint for Client {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        Client::handle_datagram(self, now, from, data);
    }
    fn handle_timeout(&mut self, now: Instant) {
        Client::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        Client::poll_transmit(self, now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Client::poll_timeout(self)
    }
    fn poll_event(&mut self) -> Option<crate::Event> {
        Client::poll_event(self)
    }
    fn has_event(&self) -> bool {
        Client::has_event(self)
    }
}

/// A socket registered with its own [`Poll`], its buffers, and the datagrams held back while
/// it would block.
pub(crate) struct Io {
    socket: UdpSocket,
    poll: Poll,
    events: Events,
    /// With offload: the socket's GSO/GRO state (quinn-udp), through which it is read, and
    /// through which runs of datagrams to one peer are sent.
    offload: Option<UdpSocketState>,
    /// Receive buffers, [`RECV_BUF`] octets each (a GRO batch fits one): one without offload;
    /// with it, one more each time a read filled them all, up to [`RECV_SLOTS`].
    recv_bufs: Vec<Box<[u8]>>,
    recv_meta: Vec<RecvMeta>,
    /// The transmit buffer: one datagram, or with GSO a run of them for one peer.
    send_buf: Box<[u8]>,
    /// Wakes the wait for a deadline that mio would round up by a millisecond.
    timer: Option<Timer>,
    /// Datagrams `send_to` would not take yet, oldest first.
    held: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Buffers of sent held-back datagrams, for reuse.
    spare: Vec<Vec<u8>>,
    held_limit: usize,
    /// Whether WRITABLE interest is registered (only while datagrams are held back).
    writable_interest: bool,
    /// The last read stopped at the batch limit, not at `WouldBlock`: read again without
    /// waiting for readiness (mio's readiness is edge-triggered).
    read_pending: bool,
    /// When the last pass ran the endpoint's timers.
    timers_run_at: Option<Instant>,
    stats: IoStats,
}

/// Datagrams taken from the endpoint, at the start of the transmit buffer, not yet sent: all
/// for `to`, each `segment` octets but the last, which may be shorter (what GSO sends).
#[derive(Debug, Clone, Copy)]
struct Run {
    to: SocketAddr,
    segment: usize,
    len: usize,
    count: usize,
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io")
            .field("local_addr", &self.socket.local_addr().ok())
            .field("offload", &self.offload.is_some())
            .field("held", &self.held.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Io {
    /// Registers `socket` (non-blocking) with a new [`Poll`], with offload if `config` asks
    /// for it and the system has it.
    pub(crate) fn new(mut socket: UdpSocket, config: &SocketConfig) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut socket, SOCKET, Interest::READABLE)?;
        let offload = if config.offload {
            match UdpSocketState::new((&socket).into()) {
                Ok(state) => Some(state),
                Err(e) => {
                    tracing::debug!(error = %e, "no UDP offload; one datagram per system call");
                    None
                }
            }
        } else {
            None
        };
        let timer = Timer::new(poll.registry(), TIMER);
        let send_len = if offload.as_ref().is_some_and(|s| s.max_gso_segments() > 1) {
            MAX_RUN_BYTES + SEND_BUF
        } else {
            SEND_BUF
        };
        Ok(Self {
            socket,
            poll,
            events: Events::with_capacity(16),
            offload,
            recv_bufs: vec![vec![0u8; RECV_BUF].into_boxed_slice()],
            recv_meta: vec![RecvMeta::default()],
            send_buf: vec![0u8; send_len].into_boxed_slice(),
            timer,
            held: VecDeque::new(),
            spare: Vec::new(),
            held_limit: config.send_queue_datagrams.max(1),
            writable_interest: false,
            read_pending: false,
            timers_run_at: None,
            stats: IoStats::default(),
        })
    }

    pub(crate) fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    pub(crate) fn stats(&self) -> IoStats {
        self.stats
    }

    /// Datagrams held back because the socket would block.
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    /// Whether the socket sends and receives in batches with segmentation offload.
    pub(crate) fn has_offload(&self) -> bool {
        self.offload.is_some()
    }

    /// One pass that never blocks: send what is due, read every waiting datagram (draining
    /// the endpoint's output after each batch), run due timers, send again.
    pub(crate) fn pump<E: Endpoint>(&mut self, endpoint: &mut E) -> io::Result<()> {
        self.pass(endpoint, true)
    }

    /// A waker that ends this driver's wait in [`Poll::poll`] from another thread (the pass
    /// that follows calls [`Endpoint::service`]).
    pub(crate) fn waker(&self) -> io::Result<mio::Waker> {
        mio::Waker::new(self.poll.registry(), WAKE)
    }

    /// [`Io::pump`], reading the socket only if `read`.
    fn pass<E: Endpoint>(&mut self, endpoint: &mut E, read: bool) -> io::Result<()> {
        endpoint.service(&self.stats);
        self.flush(endpoint)?;
        if read {
            self.read(endpoint)?;
        }
        let now = Instant::now();
        if endpoint.poll_timeout().is_some_and(|t| t <= now) {
            endpoint.handle_timeout(now);
        }
        self.timers_run_at = Some(now);
        self.flush(endpoint)
    }

    /// Blocks in [`Poll::poll`] until the socket is readable (or writable while datagrams are
    /// held back), the endpoint's deadline, or `limit`, whichever comes first; then makes one
    /// [`Io::pump`] pass.
    pub(crate) fn wait_and_pump<E: Endpoint>(
        &mut self,
        endpoint: &mut E,
        limit: Option<Instant>,
    ) -> io::Result<()> {
        let now = Instant::now();
        let mut timeout = limit.map(|l| l.saturating_duration_since(now));
        if let Some(deadline) = endpoint.poll_timeout() {
            let mut wait = deadline.saturating_duration_since(now);
            if self.timers_run_at.is_some_and(|t| deadline <= t) {
                // Due already when the timers last ran: nothing will change it but a datagram,
                // writability or time, so don't spin on it.
                self.stats.stale_deadlines += 1;
                wait = wait.max(MIN_STALE_WAIT);
            }
            timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
        }
        if self.read_pending {
            timeout = Some(Duration::ZERO);
        }
        if let (Some(t), Some(timer)) = (timeout, self.timer.as_mut()) {
            if needs_timer(t) {
                // mio would round this wait up to the next millisecond; the timer ends it on
                // time (mio's timeout stays as the upper bound).
                if !timer.arm(now, t)? {
                    self.stats.timer_kept += 1;
                }
                self.stats.precise_waits += 1;
            }
        }
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.stats.wakeups += 1;
        // Readiness only says "try": the pass below reads until `WouldBlock` and flushes the
        // held-back datagrams whatever the events were. It skips the read only when the
        // socket reported nothing: every datagram that arrives after a read ended at
        // `WouldBlock` raises an edge that a poll reports (one a `poll_once` already read
        // only costs a read that finds nothing), so a wake-up by a deadline need not try the
        // socket (a system call per wake-up for a pacing sender).
        let read = self.read_pending
            || self.events.iter().any(|e| {
                e.token() == SOCKET && (e.is_readable() || e.is_error() || e.is_read_closed())
            });
        if !read {
            self.stats.reads_skipped += 1;
        }
        self.pass(endpoint, read)
    }

    /// Reads datagrams until `WouldBlock` (or [`READ_BATCH`] of them), feeding each to the
    /// endpoint and draining its output after each system call's batch (and every
    /// [`FLUSH_EVERY`] datagrams within one).
    fn read<E: Endpoint>(&mut self, endpoint: &mut E) -> io::Result<()> {
        self.read_pending = false;
        let mut read = 0;
        // Bounded also in calls, should every call fail with an error.
        for _ in 0..READ_BATCH {
            if read >= READ_BATCH {
                break;
            }
            // The buffers this call offers (a batch read may add one for the next call).
            let offered = self.recv_bufs.len().min(quinn_udp::BATCH_SIZE);
            let got = if self.offload.is_some() {
                self.recv_batch()
            } else {
                self.recv_one()
            };
            match got {
                Ok(filled) => {
                    self.stats.recv_calls += 1;
                    read += self.feed(endpoint, filled)?;
                    if SHORT_READ_DRAINS && self.offload.is_some() && filled < offered {
                        // `recvmmsg` stopped short of its buffers: the socket's queue was
                        // empty. Another call would only find `WouldBlock` (half the reads
                        // of a game loop's receiver); a datagram arriving from now on raises
                        // a new edge, as after `WouldBlock`.
                        self.stats.reads_short += 1;
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ICMP errors surfacing on the socket (e.g. ECONNREFUSED, or
                    // ECONNRESET on Windows) concern one past datagram: note it and go on.
                    self.stats.recv_errors += 1;
                    tracing::debug!(error = %e, "receive failed");
                }
            }
        }
        self.read_pending = true;
        Ok(())
    }

    /// Reads one datagram with `recv_from` into the first buffer; returns 1 (buffers filled).
    fn recv_one(&mut self) -> io::Result<usize> {
        let (len, from) = self.socket.recv_from(&mut self.recv_bufs[0])?;
        let meta = &mut self.recv_meta[0];
        meta.addr = from;
        meta.len = len;
        meta.stride = len;
        Ok(1)
    }

    /// Reads what one call gives: several datagrams with `recvmmsg`, each buffer a run of
    /// datagrams from one peer with GRO. Returns how many buffers were filled.
    fn recv_batch(&mut self) -> io::Result<usize> {
        let state = self.offload.as_ref().expect("only with offload");
        let slots = self.recv_bufs.len();
        let filled = {
            let mut slices: [IoSliceMut<'_>; RECV_SLOTS] =
                std::array::from_fn(|_| IoSliceMut::new(&mut []));
            for (slice, buf) in slices.iter_mut().zip(self.recv_bufs.iter_mut()) {
                *slice = IoSliceMut::new(buf);
            }
            state.recv(
                (&self.socket).into(),
                &mut slices[..slots],
                &mut self.recv_meta[..slots],
            )?
        };
        if filled == slots && slots < RECV_SLOTS {
            // Busy: read more per call from now on.
            self.recv_bufs.push(vec![0u8; RECV_BUF].into_boxed_slice());
            self.recv_meta.push(RecvMeta::default());
        }
        Ok(filled)
    }

    /// Feeds the datagrams in the first `filled` receive buffers (one each, or a GRO run cut
    /// at its stride) to the endpoint, draining its output every [`FLUSH_EVERY`] datagrams
    /// and at the end; returns how many datagrams.
    fn feed<E: Endpoint>(&mut self, endpoint: &mut E, filled: usize) -> io::Result<usize> {
        let now = Instant::now();
        let mut count = 0;
        let mut unflushed = 0;
        for slot in 0..filled {
            let meta = self.recv_meta[slot];
            let len = meta.len.min(RECV_BUF);
            let stride = if meta.stride == 0 { len } else { meta.stride };
            let mut start = 0;
            loop {
                let end = (start + stride).min(len);
                self.stats.datagrams_received += 1;
                self.stats.bytes_received += (end - start) as u64;
                endpoint.handle_datagram(now, meta.addr, &mut self.recv_bufs[slot][start..end]);
                count += 1;
                unflushed += 1;
                if unflushed >= FLUSH_EVERY {
                    self.flush(endpoint)?;
                    unflushed = 0;
                }
                start = end;
                if start >= len {
                    break;
                }
            }
        }
        if unflushed > 0 {
            self.flush(endpoint)?;
        }
        Ok(count)
    }

    /// Sends the held-back datagrams, then drains the endpoint's `poll_transmit` while the
    /// socket takes them: with GSO, consecutive datagrams for one peer of one size (the last
    /// may be shorter) go out in one call. Registers WRITABLE interest while anything is held
    /// back.
    /// The drivers' `run_until_event`: an event already there at once, else send what is
    /// queued, then wait and pump until an event or `max_wait`.
    pub(crate) fn run_until_event<E: Endpoint>(
        &mut self,
        endpoint: &mut E,
        max_wait: Option<Duration>,
    ) -> io::Result<Option<crate::Event>> {
        // An event already there costs no system call and no clock read: a pass can leave
        // hundreds (a message per event), and this is called once per event.
        if let Some(ev) = endpoint.poll_event() {
            return Ok(Some(ev));
        }
        let limit = max_wait.and_then(|d| Instant::now().checked_add(d));
        self.flush(endpoint)?;
        loop {
            self.wait_and_pump(endpoint, limit)?;
            if let Some(ev) = endpoint.poll_event() {
                return Ok(Some(ev));
            }
            if limit.is_some_and(|l| Instant::now() >= l) {
                return Ok(None);
            }
        }
    }

    /// Like `run_until_event`, but leaves the event in the endpoint: returns whether one waits.
    pub(crate) fn wait_for_event<E: Endpoint>(
        &mut self,
        endpoint: &mut E,
        max_wait: Option<Duration>,
    ) -> io::Result<bool> {
        if endpoint.has_event() {
            return Ok(true);
        }
        let limit = max_wait.and_then(|d| Instant::now().checked_add(d));
        self.flush(endpoint)?;
        loop {
            self.wait_and_pump(endpoint, limit)?;
            if endpoint.has_event() {
                return Ok(true);
            }
            if limit.is_some_and(|l| Instant::now() >= l) {
                return Ok(false);
            }
        }
    }

    pub(crate) fn flush<E: Endpoint>(&mut self, endpoint: &mut E) -> io::Result<()> {
        while let Some((to, data)) = self.held.front() {
            match self.socket.send_to(data, *to) {
                Ok(_) => {
                    self.stats.send_calls += 1;
                    self.stats.datagrams_sent += 1;
                    self.stats.bytes_sent += data.len() as u64;
                    let (_, buf) = self.held.pop_front().expect("front checked");
                    self.spare.push(buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.send_would_block += 1;
                    return self.set_writable_interest(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.stats.send_errors += 1;
                    tracing::debug!(error = %e, to = %to, "send_to failed; datagram dropped");
                    let (_, buf) = self.held.pop_front().expect("front checked");
                    self.spare.push(buf);
                }
            }
        }
        let max_segments = self
            .offload
            .as_ref()
            .map_or(1, |s| s.max_gso_segments().clamp(1, MAX_SEGMENTS));
        let now = Instant::now();
        // A datagram taken that did not fit the run before it, now at the buffer's start.
        let mut carried: Option<(SocketAddr, usize)> = None;
        loop {
            let mut run = carried.take().map(|(to, len)| Run {
                to,
                segment: len,
                len,
                count: 1,
            });
            let mut drained = false;
            // While datagrams are held back, each is held alone, so that the limit is exact.
            let max_segments = if self.held.is_empty() {
                max_segments
            } else {
                1
            };
            loop {
                if run.is_some_and(|r| {
                    r.count >= max_segments
                        || r.len < r.segment * r.count
                        || r.len + SEND_BUF > self.send_buf.len()
                }) {
                    break; // full, or ended by a shorter datagram
                }
                let at = run.map_or(0, |r| r.len);
                let Some(t) = endpoint.poll_transmit(now, &mut self.send_buf[at..at + SEND_BUF])
                else {
                    drained = true;
                    break;
                };
                match run.as_mut() {
                    None => {
                        run = Some(Run {
                            to: t.destination,
                            segment: t.len,
                            len: t.len,
                            count: 1,
                        });
                    }
                    Some(r)
                        if t.destination == r.to
                            && t.len <= r.segment
                            && r.len + t.len <= MAX_RUN_BYTES =>
                    {
                        r.len += t.len;
                        r.count += 1;
                    }
                    Some(_) => {
                        carried = Some((t.destination, t.len));
                        break;
                    }
                }
            }
            let Some(r) = run else { break };
            self.send_run(r);
            if let Some((_, len)) = carried {
                self.send_buf.copy_within(r.len..r.len + len, 0);
            }
            if self.held.len() >= self.held_limit {
                // Leave the rest with the endpoint until the socket is writable.
                self.stats.send_queue_full += 1;
                if let Some((to, len)) = carried.take() {
                    self.hold(to, 0..len);
                }
                break;
            }
            if drained && carried.is_none() {
                break;
            }
        }
        self.set_writable_interest(!self.held.is_empty())
    }

    /// Sends the run at the start of the transmit buffer: in one GSO call if it has more than
    /// one datagram, else (or if GSO failed) datagram by datagram. Holds back what the socket
    /// would not take, and everything while something is held back.
    fn send_run(&mut self, run: Run) {
        if !self.held.is_empty() {
            for range in segments(run) {
                self.hold(run.to, range);
            }
            return;
        }
        if run.count > 1 {
            let state = self.offload.as_ref().expect("runs need GSO");
            let transmit = Segments {
                destination: run.to,
                ecn: None,
                contents: &self.send_buf[..run.len],
                segment_size: Some(run.segment),
                src_ip: None,
            };
            match state.try_send((&self.socket).into(), &transmit) {
                Ok(()) => {
                    self.stats.send_calls += 1;
                    self.stats.datagrams_sent += run.count as u64;
                    self.stats.bytes_sent += run.len as u64;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.send_would_block += 1;
                    for range in segments(run) {
                        self.hold(run.to, range);
                    }
                    return;
                }
                Err(e) => {
                    // Some devices refuse GSO (quinn-udp then stops offering it): send the
                    // datagrams one by one.
                    self.stats.gso_errors += 1;
                    tracing::debug!(error = %e, to = %run.to, "GSO send failed; sending singly");
                }
            }
        }
        for range in segments(run) {
            self.send_one(run.to, range);
        }
    }

    /// Sends one datagram of the transmit buffer with `send_to`, holding it back if the
    /// socket would block (and if anything is held back already).
    fn send_one(&mut self, to: SocketAddr, range: std::ops::Range<usize>) {
        if !self.held.is_empty() {
            self.hold(to, range);
            return;
        }
        loop {
            match self.socket.send_to(&self.send_buf[range.clone()], to) {
                Ok(_) => {
                    self.stats.send_calls += 1;
                    self.stats.datagrams_sent += 1;
                    self.stats.bytes_sent += range.len() as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.send_would_block += 1;
                    self.hold(to, range);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.stats.send_errors += 1;
                    tracing::debug!(error = %e, to = %to, "send_to failed; datagram dropped");
                }
            }
            return;
        }
    }

    /// Keeps `range` of the transmit buffer, a datagram for `to`, for later.
    fn hold(&mut self, to: SocketAddr, range: std::ops::Range<usize>) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&self.send_buf[range]);
        self.held.push_back((to, buf));
        self.stats.datagrams_queued += 1;
    }

    fn set_writable_interest(&mut self, on: bool) -> io::Result<()> {
        if self.writable_interest == on {
            return Ok(());
        }
        let interest = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        self.poll
            .registry()
            .reregister(&mut self.socket, SOCKET, interest)?;
        self.writable_interest = on;
        Ok(())
    }
}

/// The datagrams of `run` in the transmit buffer.
fn segments(run: Run) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..run.count).map(move |i| {
        let start = i * run.segment;
        start..(start + run.segment).min(run.len)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::bind_socket;

    /// An endpoint that sends a script of datagrams, `(to, len)` each: datagram `i` is `i` as
    /// four octets, then octet `i as u8` repeated (at least 4 octets long). It records what it
    /// receives.
    #[derive(Default)]
    struct Scripted {
        script: VecDeque<(SocketAddr, usize)>,
        sent: u32,
        received: Vec<(SocketAddr, Vec<u8>)>,
    }

    fn datagram(i: u32, len: usize) -> Vec<u8> {
        let mut d = vec![i as u8; len];
        d[..4].copy_from_slice(&i.to_be_bytes());
        d
    }

    impl Endpoint for Scripted {
        fn handle_datagram(&mut self, _: Instant, from: SocketAddr, data: &mut [u8]) {
            self.received.push((from, data.to_vec()));
        }
        fn handle_timeout(&mut self, _: Instant) {}
        fn poll_transmit(&mut self, _: Instant, buf: &mut [u8]) -> Option<Transmit> {
            let (to, len) = self.script.pop_front()?;
            buf[..len].copy_from_slice(&datagram(self.sent, len));
            self.sent += 1;
            Some(Transmit {
                destination: to,
                len,
            })
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
    }

    fn loopback() -> UdpSocket {
        bind_socket("127.0.0.1:0".parse().unwrap(), &SocketConfig::default()).unwrap()
    }

    fn io(offload: bool) -> Io {
        let config = SocketConfig {
            offload,
            ..SocketConfig::default()
        };
        Io::new(loopback(), &config).unwrap()
    }

    /// Reads `n` datagrams with plain `recv_from`, waiting (bounded) for each.
    fn receive(socket: &mut UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(socket, SOCKET, Interest::READABLE)
            .unwrap();
        let mut events = Events::with_capacity(4);
        let mut got = Vec::new();
        let give_up = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        while got.len() < n && Instant::now() < give_up {
            match socket.recv_from(&mut buf) {
                Ok((len, _)) => got.push(buf[..len].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll.poll(&mut events, Some(Duration::from_millis(100)))
                        .unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    #[test]
    fn held_datagrams_go_first_and_in_order() {
        for offload in [false, true] {
            let mut peer = loopback();
            let to = peer.local_addr().unwrap();
            let mut io = io(offload);
            for b in [b'a', b'b'] {
                io.send_buf[..3].fill(b);
                io.hold(to, 0..3);
            }
            io.set_writable_interest(true).unwrap();
            let mut talker = Scripted {
                script: [(to, 4), (to, 4)].into(),
                ..Scripted::default()
            };
            io.flush(&mut talker).unwrap();
            assert_eq!(io.held(), 0);
            assert!(!io.writable_interest);
            assert_eq!(io.stats().datagrams_sent, 4);
            assert_eq!(io.stats().datagrams_queued, 2);
            let got = receive(&mut peer, 4);
            assert_eq!(
                got,
                [
                    b"aaa".to_vec(),
                    b"bbb".to_vec(),
                    datagram(0, 4),
                    datagram(1, 4)
                ]
            );
            // Their buffers are kept for the next time the socket would block.
            assert_eq!(io.spare.len(), 2);
        }
    }

    /// Runs for one peer end at another peer's datagram, at a longer one, after a shorter
    /// one, and at the segment limit; each peer gets its datagrams whole and in order.
    #[test]
    fn runs_split_where_gso_needs_and_keep_order() {
        for offload in [false, true] {
            let (mut a, mut b) = (loopback(), loopback());
            let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
            let mut script = Vec::new();
            script.extend((0..100).map(|_| (to_a, 1000))); // past MAX_SEGMENTS
            script.push((to_a, 300)); // ends that run
            script.extend((0..3).map(|_| (to_a, 1000)));
            script.extend((0..5).map(|_| (to_b, 500))); // another peer
            script.push((to_a, 1200)); // longer: a new run
            script.extend((0..2).map(|_| (to_a, 1200)));
            let mut talker = Scripted {
                script: script.iter().copied().collect(),
                ..Scripted::default()
            };
            let mut io = io(offload);
            io.flush(&mut talker).unwrap();
            assert_eq!(io.held(), 0);
            assert_eq!(io.stats().datagrams_sent, script.len() as u64);
            let sent_to = |peer| {
                script
                    .iter()
                    .enumerate()
                    .filter(|(_, (to, _))| *to == peer)
                    .map(|(i, (_, len))| datagram(i as u32, *len))
                    .collect::<Vec<_>>()
            };
            let expect_a = sent_to(to_a);
            let expect_b = sent_to(to_b);
            assert_eq!(receive(&mut a, expect_a.len()), expect_a);
            assert_eq!(receive(&mut b, expect_b.len()), expect_b);
            let calls = io.stats().send_calls;
            if io
                .offload
                .as_ref()
                .is_some_and(|s| s.max_gso_segments() > 1)
            {
                // 64, then 36 ended by the 300, then 3, 5 and 3.
                assert_eq!(calls, 5, "{:?}", io.stats());
            } else {
                assert_eq!(calls, script.len() as u64);
            }
        }
    }

    /// A receiving driver with offload splits what GRO coalesced back into the datagrams sent.
    #[test]
    fn batches_read_are_split_into_the_datagrams_sent() {
        for offload in [false, true] {
            let mut receiver = io(offload);
            let to = receiver.socket.local_addr().unwrap();
            let mut script: Vec<(SocketAddr, usize)> = (0..200).map(|_| (to, 700)).collect();
            script.push((to, 250));
            script.extend((0..20).map(|_| (to, 900)));
            let mut talker = Scripted {
                script: script.iter().copied().collect(),
                ..Scripted::default()
            };
            let mut sender = io(true);
            let from = sender.socket.local_addr().unwrap();
            sender.flush(&mut talker).unwrap();
            assert_eq!(sender.held(), 0);
            let mut sink = Scripted::default();
            let give_up = Instant::now() + Duration::from_secs(10);
            while sink.received.len() < script.len() && Instant::now() < give_up {
                receiver
                    .wait_and_pump(&mut sink, Some(Instant::now() + Duration::from_millis(100)))
                    .unwrap();
            }
            let expected: Vec<_> = script
                .iter()
                .enumerate()
                .map(|(i, (_, len))| (from, datagram(i as u32, *len)))
                .collect();
            assert_eq!(sink.received, expected);
            let stats = receiver.stats();
            assert_eq!(stats.datagrams_received, script.len() as u64);
            if !offload {
                assert_eq!(stats.recv_calls, stats.datagrams_received);
            } else if cfg!(target_os = "linux") {
                // recvmmsg alone, without GRO, already reads several per call.
                assert!(stats.recv_calls * 4 < stats.datagrams_received, "{stats:?}");
                // The last call of a read that drained the queue came back short, not with
                // WouldBlock.
                assert!(stats.reads_short > 0, "{stats:?}");
            }
        }
    }

    #[test]
    fn a_deadline_already_handled_does_not_spin() {
        /// An endpoint whose deadline stays in the past whatever it is told.
        struct Stuck(Instant);
        impl Endpoint for Stuck {
            fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: &mut [u8]) {}
            fn handle_timeout(&mut self, _: Instant) {}
            fn poll_transmit(&mut self, _: Instant, _: &mut [u8]) -> Option<Transmit> {
                None
            }
            fn poll_timeout(&self) -> Option<Instant> {
                Some(self.0)
            }
        }
        let mut io = io(true);
        let mut stuck = Stuck(Instant::now());
        io.pump(&mut stuck).unwrap();
        for _ in 0..3 {
            io.wait_and_pump(&mut stuck, None).unwrap();
        }
        // Each wait was counted as one for a stale deadline (and so lasted at least
        // MIN_STALE_WAIT instead of returning at once).
        assert_eq!(io.stats().stale_deadlines, 3);
        assert_eq!(io.stats().wakeups, 3);
    }

    /// A deadline a fraction of a millisecond away wakes the wait on time, not at mio's next
    /// millisecond.
    #[test]
    #[cfg(target_os = "linux")]
    fn sub_millisecond_deadlines_are_kept() {
        struct Due(Instant);
        impl Endpoint for Due {
            fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: &mut [u8]) {}
            fn handle_timeout(&mut self, _: Instant) {}
            fn poll_transmit(&mut self, _: Instant, _: &mut [u8]) -> Option<Transmit> {
                None
            }
            fn poll_timeout(&self) -> Option<Instant> {
                Some(self.0)
            }
        }
        let mut io = io(true);
        for _ in 0..20 {
            let mut due = Due(Instant::now() + Duration::from_micros(200));
            io.wait_and_pump(&mut due, None).unwrap();
            // The timer ended the wait (mio's own timeout, rounded up, is a millisecond).
            assert!(io.events.iter().any(|e| e.token() == TIMER));
        }
        assert_eq!(io.stats().precise_waits, 20);
        assert_eq!(io.stats().wakeups, 20);
        // Woken by the timer alone, none of them tried the socket.
        assert_eq!(io.stats().reads_skipped, 20);
    }
}
