//! [`ServerDriver`]: a [`Server`] on a UDP socket.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::driver::{Io, IoStats};
use super::socket::{bind_socket, SocketConfig};
use super::BindError;
use crate::config::ServerConfig;
use crate::endpoint::Server;
use crate::types::{ChannelId, ClientId, Event, SendBudget, SendError};

/// Gives `server` the wall clock and, with `tokens` and a specified `local` address, that
/// address as one connect tokens may name.
pub(crate) fn set_clock_and_addr(server: &mut Server, tokens: bool, local: SocketAddr) {
    server.set_wall_clock(Instant::now(), unix_now());
    if tokens && !local.ip().is_unspecified() {
        server.add_public_addr(local);
    }
}

/// Seconds since the Unix epoch by the system clock (0 if it is set before 1970).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A [`Server`] driving a non-blocking UDP socket registered with its own mio
/// [`Poll`](mio::Poll).
///
/// Drive it in one of two ways (see the [module docs](super) for both in full):
/// - once per game tick, [`ServerDriver::poll_once`], which never blocks, then
///   [`ServerDriver::poll_event`] until `None`;
/// - event by event, [`ServerDriver::run_until_event`], which blocks until an event, the
///   server's next deadline or the caller's limit, and uses no CPU while it waits.
///
/// Messages sent with [`ServerDriver::send`] (or through [`ServerDriver::server_mut`]) go out
/// at the next [`ServerDriver::flush`], [`ServerDriver::poll_once`], or
/// [`ServerDriver::run_until_event`] that has no event waiting (so after the events of one
/// pass were taken).
#[derive(Debug)]
pub struct ServerDriver {
    server: Server,
    io: Io,
}

impl ServerDriver {
    /// A server with `config` on a new socket bound to `addr` (port 0 picks a free one; see
    /// [`ServerDriver::local_addr`]).
    ///
    /// The server is given the wall clock ([`Server::set_wall_clock`], for connect-token
    /// expiry) and, with connect tokens ([`ServerConfig::tokens`]) on an address that is not
    /// unspecified, the bound address as one tokens may name ([`Server::add_public_addr`]).
    ///
    /// # Errors
    /// [`BindError::Config`] if `config` or `socket` is invalid, [`BindError::Io`] if the
    /// socket could not be set up or bound.
    pub fn bind(
        addr: SocketAddr,
        config: ServerConfig,
        socket: SocketConfig,
    ) -> Result<Self, BindError> {
        socket.validate()?;
        let tokens = config.tokens.is_some();
        let mut server = Server::new(config)?;
        let udp = bind_socket(addr, &socket)?;
        set_clock_and_addr(&mut server, tokens, udp.local_addr()?);
        Ok(Self::with_socket(server, udp, &socket)?)
    }

    /// Drives `server` on `socket`, which must be non-blocking (as [`bind_socket`] makes it).
    /// Only `socket.send_queue_datagrams` of `config` is used here.
    ///
    /// # Errors
    /// Any error creating the [`Poll`](mio::Poll) or registering the socket.
    pub fn with_socket(
        server: Server,
        socket: mio::net::UdpSocket,
        config: &SocketConfig,
    ) -> io::Result<Self> {
        Ok(Self {
            server,
            io: Io::new(socket, config)?,
        })
    }

    /// The address the socket is bound to.
    ///
    /// # Errors
    /// Any error of `getsockname`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.socket().local_addr()
    }

    /// The socket, to read its options (for instance with [`super::buffer_sizes`]).
    pub fn socket(&self) -> &mio::net::UdpSocket {
        self.io.socket()
    }

    /// The sans-IO server, for its key, clients and counters.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The sans-IO server, to call it directly (what it queues goes out at the next
    /// [`ServerDriver::flush`]).
    pub fn server_mut(&mut self) -> &mut Server {
        &mut self.server
    }

    /// Gives the server back, closing the socket.
    pub fn into_server(self) -> Server {
        self.server
    }

    /// Counters of the socket work.
    pub fn io_stats(&self) -> IoStats {
        self.io.stats()
    }

    /// Datagrams held back because the socket would block.
    pub fn held_datagrams(&self) -> usize {
        self.io.held()
    }

    /// Whether the socket batches its system calls with segmentation offload (see
    /// [`SocketConfig::offload`]): asked for, and available here.
    pub fn has_offload(&self) -> bool {
        self.io.has_offload()
    }

    /// Queues a message for `client` on `channel` (sent at the next flush).
    ///
    /// # Errors
    /// [`SendError`] says why nothing was queued.
    pub fn send(
        &mut self,
        client: ClientId,
        channel: ChannelId,
        message: &[u8],
    ) -> Result<(), SendError> {
        self.server.send(Instant::now(), client, channel, message)
    }

    /// What `client`'s connection can send now without queueing (see
    /// [`Server::send_budget`]); `None` if it is not connected.
    pub fn send_budget(&self, client: ClientId) -> Option<SendBudget> {
        self.server.send_budget(Instant::now(), client)
    }

    /// Queues a message for every connected client; returns how many took it.
    pub fn broadcast(&mut self, channel: ChannelId, message: &[u8]) -> usize {
        self.server.broadcast(Instant::now(), channel, message)
    }

    /// Queues a message for every connected client but `except` (see
    /// [`Server::broadcast_except`]).
    pub fn broadcast_except(
        &mut self,
        except: ClientId,
        channel: ChannelId,
        message: &[u8],
    ) -> usize {
        self.server
            .broadcast_except(Instant::now(), except, channel, message)
    }

    /// Queues a message for each of `clients` (see [`Server::send_to_many`]).
    pub fn send_to_many(
        &mut self,
        clients: &[ClientId],
        channel: ChannelId,
        message: &[u8],
    ) -> usize {
        self.server
            .send_to_many(Instant::now(), clients, channel, message)
    }

    /// Closes `client`'s connection gracefully (see [`Server::disconnect`]).
    pub fn disconnect(&mut self, client: ClientId, reason: &str) {
        self.server.disconnect(Instant::now(), client, reason);
    }

    /// Closes every connection (see [`Server::shutdown`]); keep driving the server until
    /// [`Server::is_idle`] so that the closes are delivered.
    pub fn shutdown(&mut self, reason: &str) {
        self.server.shutdown(Instant::now(), reason);
    }

    /// Hands a message buffer from [`Event::Message`] back for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.server.recycle(buf);
    }

    /// Takes the next event the server has (none arrive without a
    /// [`ServerDriver::poll_once`] or [`ServerDriver::run_until_event`]).
    pub fn poll_event(&mut self) -> Option<Event> {
        self.server.poll_event()
    }

    /// Sends what the server has due now, without reading or waiting.
    ///
    /// # Errors
    /// Only an error of the [`Poll`](mio::Poll) registry; failed `send_to` calls are counted
    /// in [`IoStats`], not returned.
    pub fn flush(&mut self) -> io::Result<()> {
        self.io.flush(&mut self.server)
    }

    /// One pass that never blocks, for a game loop's tick: sends what is due, reads every
    /// waiting datagram, runs the due timers, sends again. Take the events with
    /// [`ServerDriver::poll_event`] afterwards.
    ///
    /// # Errors
    /// Only an error of the [`Poll`](mio::Poll) registry; socket errors of single datagrams
    /// are counted in [`IoStats`], not returned.
    pub fn poll_once(&mut self) -> io::Result<()> {
        self.io.pump(&mut self.server)
    }

    /// Blocks until the server has an event, and returns whether one waits (take it and the
    /// others with [`ServerDriver::poll_event`]), or returns `false` once `max_wait` has passed. The
    /// same loop as [`ServerDriver::run_until_event`], for a game loop that only waits for the
    /// network until its next tick and handles every event after.
    ///
    /// # Errors
    /// An error of [`Poll::poll`](mio::Poll::poll) or its registry.
    pub fn wait_for_event(&mut self, max_wait: Option<Duration>) -> io::Result<bool> {
        self.io.wait_for_event(&mut self.server, max_wait)
    }

    /// Blocks until the server has an event and returns it, or returns `None` once `max_wait`
    /// has passed (`None`: no limit; `Some(Duration::ZERO)`: one pass that never blocks).
    ///
    /// An event the server already has is returned at once, without a pass over the socket
    /// (the events of one pass come out one call each). Otherwise it first sends what is
    /// queued (so what [`ServerDriver::send`] queued goes out before it waits), then sleeps in
    /// [`Poll::poll`](mio::Poll::poll) until a datagram or the server's next deadline, runs
    /// timers at their deadlines and sends what is due.
    ///
    /// # Errors
    /// An error of [`Poll::poll`](mio::Poll::poll) or its registry.
    pub fn run_until_event(&mut self, max_wait: Option<Duration>) -> io::Result<Option<Event>> {
        self.io.run_until_event(&mut self.server, max_wait)
    }
}
