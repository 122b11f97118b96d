//! The loop both drivers share: read until `WouldBlock`, feed, run timers, drain, send, wait.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

use super::socket::SocketConfig;
use crate::endpoint::{Client, Server};
use crate::types::Transmit;

/// The socket's token in the driver's [`Poll`].
const SOCKET: Token = Token(0);
/// The receive buffer: any UDP datagram fits, so none is truncated.
const RECV_BUF: usize = 1 << 16;
/// The transmit buffer handed to `poll_transmit` (the endpoints need at least 1,200).
const SEND_BUF: usize = 1500;
/// Datagrams read in one go before the timers and the outgoing side get a turn.
const READ_BATCH: usize = 1024;
/// The shortest wait for a deadline that was already due at the last pass (see
/// [`IoStats::stale_deadlines`]); about mio's resolution.
const MIN_STALE_WAIT: Duration = Duration::from_millis(1);

/// Counters of a driver's socket work (the endpoint's own are in its stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Datagrams read from the socket.
    pub datagrams_received: u64,
    /// Octets in them.
    pub bytes_received: u64,
    /// Datagrams the socket took.
    pub datagrams_sent: u64,
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
    /// Errors of `recv_from` other than `WouldBlock` (logged at debug level).
    pub recv_errors: u64,
    /// Returns from `Poll::poll` (readiness, a deadline, or the caller's limit).
    pub wakeups: u64,
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
}

/// A socket registered with its own [`Poll`], its buffers, and the datagrams held back while
/// it would block.
pub(crate) struct Io {
    socket: UdpSocket,
    poll: Poll,
    events: Events,
    recv_buf: Box<[u8]>,
    send_buf: Box<[u8]>,
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

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io")
            .field("local_addr", &self.socket.local_addr().ok())
            .field("held", &self.held.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Io {
    /// Registers `socket` (non-blocking) with a new [`Poll`].
    pub(crate) fn new(mut socket: UdpSocket, config: &SocketConfig) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut socket, SOCKET, Interest::READABLE)?;
        Ok(Self {
            socket,
            poll,
            events: Events::with_capacity(16),
            recv_buf: vec![0u8; RECV_BUF].into_boxed_slice(),
            send_buf: vec![0u8; SEND_BUF].into_boxed_slice(),
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

    /// One pass that never blocks: send what is due, read every waiting datagram (draining
    /// the endpoint's output after each), run due timers, send again.
    pub(crate) fn pump<E: Endpoint>(&mut self, endpoint: &mut E) -> io::Result<()> {
        self.flush(endpoint)?;
        self.read(endpoint)?;
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
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.stats.wakeups += 1;
        // Readiness only says "try": the pass below reads until `WouldBlock` and flushes the
        // held-back datagrams whatever the events were, so they need no inspection.
        self.pump(endpoint)
    }

    /// Reads datagrams until `WouldBlock` (or a batch), feeding each to the endpoint and
    /// draining its output after each.
    fn read<E: Endpoint>(&mut self, endpoint: &mut E) -> io::Result<()> {
        self.read_pending = false;
        for _ in 0..READ_BATCH {
            match self.socket.recv_from(&mut self.recv_buf) {
                Ok((len, from)) => {
                    self.stats.datagrams_received += 1;
                    self.stats.bytes_received += len as u64;
                    let now = Instant::now();
                    endpoint.handle_datagram(now, from, &mut self.recv_buf[..len]);
                    self.flush(endpoint)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ICMP errors surfacing on the socket (e.g. ECONNREFUSED, or
                    // ECONNRESET on Windows) concern one past datagram: note it and go on.
                    self.stats.recv_errors += 1;
                    tracing::debug!(error = %e, "recv_from failed");
                }
            }
        }
        self.read_pending = true;
        Ok(())
    }

    /// Sends the held-back datagrams, then drains the endpoint's `poll_transmit` while the
    /// socket takes them. Registers WRITABLE interest while anything is held back.
    pub(crate) fn flush<E: Endpoint>(&mut self, endpoint: &mut E) -> io::Result<()> {
        while let Some((to, data)) = self.held.front() {
            match self.socket.send_to(data, *to) {
                Ok(_) => {
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
        let now = Instant::now();
        while let Some(t) = endpoint.poll_transmit(now, &mut self.send_buf) {
            if !self.held.is_empty() {
                self.hold(t.destination, t.len);
            } else {
                loop {
                    match self.socket.send_to(&self.send_buf[..t.len], t.destination) {
                        Ok(_) => {
                            self.stats.datagrams_sent += 1;
                            self.stats.bytes_sent += t.len as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.stats.send_would_block += 1;
                            self.hold(t.destination, t.len);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            self.stats.send_errors += 1;
                            tracing::debug!(
                                error = %e,
                                to = %t.destination,
                                "send_to failed; datagram dropped"
                            );
                        }
                    }
                    break;
                }
            }
            if self.held.len() >= self.held_limit {
                // Leave the rest with the endpoint until the socket is writable.
                self.stats.send_queue_full += 1;
                break;
            }
        }
        self.set_writable_interest(!self.held.is_empty())
    }

    /// Keeps the datagram in the transmit buffer for later.
    fn hold(&mut self, to: SocketAddr, len: usize) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&self.send_buf[..len]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::bind_socket;

    /// An endpoint that only has datagrams to send, `len` octets each, byte `i` of the i-th.
    struct Talker {
        to: SocketAddr,
        next: u8,
        count: u8,
    }

    impl Endpoint for Talker {
        fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: &mut [u8]) {}
        fn handle_timeout(&mut self, _: Instant) {}
        fn poll_transmit(&mut self, _: Instant, buf: &mut [u8]) -> Option<Transmit> {
            if self.next >= self.count {
                return None;
            }
            buf[..3].fill(self.next);
            self.next += 1;
            Some(Transmit {
                destination: self.to,
                len: 3,
            })
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
    }

    fn loopback() -> UdpSocket {
        bind_socket("127.0.0.1:0".parse().unwrap(), &SocketConfig::default()).unwrap()
    }

    /// Reads `n` datagrams, waiting (bounded) for each.
    fn receive(socket: &mut UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(socket, SOCKET, Interest::READABLE)
            .unwrap();
        let mut events = Events::with_capacity(4);
        let mut got = Vec::new();
        let give_up = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 64];
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
        let mut peer = loopback();
        let to = peer.local_addr().unwrap();
        let mut io = Io::new(loopback(), &SocketConfig::default()).unwrap();
        for b in [b'a', b'b'] {
            io.send_buf[..3].fill(b);
            io.hold(to, 3);
        }
        io.set_writable_interest(true).unwrap();
        let mut talker = Talker {
            to,
            next: 0,
            count: 2,
        };
        io.flush(&mut talker).unwrap();
        assert_eq!(io.held(), 0);
        assert!(!io.writable_interest);
        assert_eq!(io.stats().datagrams_sent, 4);
        assert_eq!(io.stats().datagrams_queued, 2);
        let got = receive(&mut peer, 4);
        assert_eq!(
            got,
            [b"aaa".to_vec(), b"bbb".to_vec(), vec![0; 3], vec![1; 3]]
        );
        // Their buffers are kept for the next time the socket would block.
        assert_eq!(io.spare.len(), 2);
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
        let mut io = Io::new(loopback(), &SocketConfig::default()).unwrap();
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
}
