//! [`ClientDriver`]: a [`Client`] on a UDP socket.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::driver::{Io, IoStats};
use super::socket::{bind_socket, SocketConfig};
use super::BindError;
use crate::config::ClientConfig;
use crate::endpoint::Client;
use crate::types::{ChannelId, Event, SendBudget, SendError};

/// The address a client socket for `server` is bound to: an ephemeral port on loopback for a
/// loopback server (never exposed on other interfaces), else on the unspecified address of
/// the server's family.
fn local_for(server: SocketAddr) -> SocketAddr {
    match server {
        SocketAddr::V4(a) if a.ip().is_loopback() => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        SocketAddr::V6(a) if a.ip().is_loopback() => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// A [`Client`] driving a non-blocking UDP socket registered with its own mio
/// [`Poll`](mio::Poll).
///
/// Drive it like a [`super::ServerDriver`]: [`ClientDriver::poll_once`] once per tick, or
/// [`ClientDriver::run_until_event`]. The first event is [`Event::Connected`] (or
/// [`Event::Disconnected`] if the handshake failed).
#[derive(Debug)]
pub struct ClientDriver {
    client: Client,
    io: Io,
}

impl ClientDriver {
    /// A client with `config` that starts connecting to `server` from a new socket bound to
    /// an ephemeral port on the unspecified address of the server's family (on the loopback
    /// address when the server's is loopback).
    ///
    /// # Errors
    /// [`BindError::Config`] if `config` or `socket` is invalid, [`BindError::Io`] if the
    /// socket could not be set up or bound.
    pub fn connect(
        config: ClientConfig,
        server: SocketAddr,
        socket: SocketConfig,
    ) -> Result<Self, BindError> {
        Self::connect_from(local_for(server), config, server, socket)
    }

    /// Like [`ClientDriver::connect`], presenting `token` (a connect token from the game's
    /// backend, see [`crate::token::TokenSigner::issue`]) in the client hello, as
    /// [`Client::connect_with_token`] does.
    ///
    /// # Errors
    /// As [`ClientDriver::connect`]; [`BindError::Config`] also for a token over 1024 octets.
    pub fn connect_with_token(
        config: ClientConfig,
        server: SocketAddr,
        token: &[u8],
        socket: SocketConfig,
    ) -> Result<Self, BindError> {
        socket.validate()?;
        let client = Client::connect_with_token(config, server, Instant::now(), token)?;
        let udp = bind_socket(local_for(server), &socket)?;
        Ok(Self::with_socket(client, udp, &socket)?)
    }

    /// Like [`ClientDriver::connect`], from a socket bound to `local`.
    ///
    /// # Errors
    /// As [`ClientDriver::connect`].
    pub fn connect_from(
        local: SocketAddr,
        config: ClientConfig,
        server: SocketAddr,
        socket: SocketConfig,
    ) -> Result<Self, BindError> {
        socket.validate()?;
        let client = Client::connect(config, server, Instant::now())?;
        let udp = bind_socket(local, &socket)?;
        Ok(Self::with_socket(client, udp, &socket)?)
    }

    /// Drives `client` on `socket`, which must be non-blocking (as [`bind_socket`] makes it).
    /// Only `socket.send_queue_datagrams` of `config` is used here.
    ///
    /// # Errors
    /// Any error creating the [`Poll`](mio::Poll) or registering the socket.
    pub fn with_socket(
        client: Client,
        socket: mio::net::UdpSocket,
        config: &SocketConfig,
    ) -> io::Result<Self> {
        Ok(Self {
            client,
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

    /// The sans-IO client, for its state and counters.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The sans-IO client, to call it directly (what it queues goes out at the next
    /// [`ClientDriver::flush`]).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Gives the client back, closing the socket.
    pub fn into_client(self) -> Client {
        self.client
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

    /// Queues a message on `channel` (sent at the next flush).
    ///
    /// # Errors
    /// [`SendError`] says why nothing was queued.
    pub fn send(&mut self, channel: ChannelId, message: &[u8]) -> Result<(), SendError> {
        self.client.send(Instant::now(), channel, message)
    }

    /// What the connection can send now without queueing (see [`Client::send_budget`]);
    /// `None` while not connected.
    pub fn send_budget(&self) -> Option<SendBudget> {
        self.client.send_budget(Instant::now())
    }

    /// Closes the connection gracefully (see [`Client::disconnect`]); keep driving the client
    /// until [`Client::is_closed`] so that the close is delivered.
    pub fn disconnect(&mut self, reason: &str) {
        self.client.disconnect(Instant::now(), reason);
    }

    /// Hands a message buffer from [`Event::Message`] back for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.client.recycle(buf);
    }

    /// Takes the next event the client has (none arrive without a
    /// [`ClientDriver::poll_once`] or [`ClientDriver::run_until_event`]).
    pub fn poll_event(&mut self) -> Option<Event> {
        self.client.poll_event()
    }

    /// Sends what the client has due now, without reading or waiting.
    ///
    /// # Errors
    /// Only an error of the [`Poll`](mio::Poll) registry; failed `send_to` calls are counted
    /// in [`IoStats`], not returned.
    pub fn flush(&mut self) -> io::Result<()> {
        self.io.flush(&mut self.client)
    }

    /// One pass that never blocks, for a game loop's tick: sends what is due, reads every
    /// waiting datagram, runs the due timers, sends again. Take the events with
    /// [`ClientDriver::poll_event`] afterwards.
    ///
    /// # Errors
    /// Only an error of the [`Poll`](mio::Poll) registry; socket errors of single datagrams
    /// are counted in [`IoStats`], not returned.
    pub fn poll_once(&mut self) -> io::Result<()> {
        self.io.pump(&mut self.client)
    }

    /// Blocks until the client has an event, and returns whether one waits (take it and the
    /// others with [`ClientDriver::poll_event`]), or returns `false` once `max_wait` has passed. The
    /// same loop as [`ClientDriver::run_until_event`], for a game loop that only waits for the
    /// network until its next tick and handles every event after.
    ///
    /// # Errors
    /// An error of [`Poll::poll`](mio::Poll::poll) or its registry.
    pub fn wait_for_event(&mut self, max_wait: Option<Duration>) -> io::Result<bool> {
        self.io.wait_for_event(&mut self.client, max_wait)
    }

    /// Blocks until the client has an event and returns it, or returns `None` once `max_wait`
    /// has passed (`None`: no limit; `Some(Duration::ZERO)`: one pass that never blocks).
    ///
    /// An event the client already has is returned at once, without a pass over the socket
    /// (the events of one pass come out one call each). Otherwise it first sends what is
    /// queued (so what [`ClientDriver::send`] queued goes out before it waits), then sleeps in
    /// [`Poll::poll`](mio::Poll::poll) until a datagram or the client's next deadline, runs
    /// timers at their deadlines and sends what is due. Once the client is closed it has no
    /// deadline: without `max_wait` this then waits for a datagram that changes nothing, so
    /// pass a limit or stop at [`Event::Disconnected`].
    ///
    /// # Errors
    /// An error of [`Poll::poll`](mio::Poll::poll) or its registry.
    pub fn run_until_event(&mut self, max_wait: Option<Duration>) -> io::Result<Option<Event>> {
        self.io.run_until_event(&mut self.client, max_wait)
    }
}
