//! The only code that touches sockets or reads the clock: a mio loop around the sans-IO
//! [`Server`](crate::Server) and [`Client`](crate::Client).
//!
//! A [`ShardedServer`] serves one address from N threads: N `SO_REUSEPORT` sockets, each with
//! its own [`Server`](crate::Server) driven as a [`Shard`] (the same loop and methods as a
//! [`ServerDriver`]), ids unique across them, and one operator handle over all of them.
//!
//! A [`ServerDriver`] or [`ClientDriver`] owns a non-blocking UDP socket set up with socket2
//! ([`SocketConfig`]: buffer sizes, IPv6 dual-stack, offload) and registered with its own mio
//! [`Poll`](mio::Poll), and the endpoint it drives. Each pass follows the endpoint's rule: read
//! every datagram until `WouldBlock` and feed it, draining the endpoint's `poll_transmit` after
//! each batch the system call returned (and every 16 datagrams); run the timers that are due;
//! send what is due. Events stay in the endpoint until taken with `poll_event`, so that its
//! receive buffer limit keeps working as flow control.
//!
//! Batching ([`SocketConfig::offload`], on by default; Linux, through quinn-udp): consecutive
//! datagrams for one peer, of one size but the last, leave in one `sendmsg` with UDP GSO (up to
//! 64 of them); reads take several datagrams per `recvmmsg`, and with UDP GRO a run of
//! datagrams from one peer per buffer, which the driver splits again before feeding them. The
//! clock is read once per batch. Where the system has none of it, or with offload off, each
//! datagram takes one `send_to` or `recv_from`. [`IoStats`] counts datagrams and system calls.
//!
//! Sending: a datagram the socket would not take (`WouldBlock`) is kept, in order, in a small
//! bounded queue while WRITABLE interest is registered; when that queue is full the rest waits
//! in the endpoint. Nothing is dropped for a full socket buffer; other `send_to` errors drop
//! the datagram (the endpoint resends what is reliable). [`IoStats`] counts both.
//!
//! Waiting: [`ServerDriver::run_until_event`] sleeps in [`Poll::poll`](mio::Poll::poll) with
//! the timeout `min(poll_timeout - now, max_wait)`. mio rounds timeouts up to whole
//! milliseconds; on Linux a wait shorter than 10 ms that is not a whole number of milliseconds
//! (a pacing deadline, typically) also sets a `timerfd` registered with the same poll, which
//! ends the wait on time. A deadline that turns out not due yet just means another wait. An
//! idle endpoint wakes only at its deadlines (heartbeats, resends, the idle timeout).
//!
//! # Once per game tick
//! [`ServerDriver::poll_once`] never blocks; the events follow with `poll_event`.
//! ```
//! use std::time::{Duration, Instant};
//! use tickwire::io::{ClientDriver, ServerDriver, SocketConfig};
//! use tickwire::{ChannelId, ClientConfig, Event, ServerConfig, ServerIdentity};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ServerConfig::new(ServerIdentity::generate());
//! let mut server = ServerDriver::bind("127.0.0.1:0".parse()?, config, SocketConfig::default())?;
//! let key = server.server().public_key();
//! let addr = server.local_addr()?;
//! let mut client = ClientDriver::connect(ClientConfig::new(key), addr, SocketConfig::default())?;
//!
//! let give_up = Instant::now() + Duration::from_secs(10);
//! let mut echoed = false;
//! while !echoed && Instant::now() < give_up {
//!     // One tick of the game loop: the socket work, then the events.
//!     server.poll_once()?;
//!     while let Some(event) = server.poll_event() {
//!         if let Event::Message { client, channel, data } = event {
//!             server.send(client, channel, &data)?; // echo it
//!             server.recycle(data);
//!         }
//!     }
//!     client.poll_once()?;
//!     while let Some(event) = client.poll_event() {
//!         match event {
//!             Event::Connected { .. } => client.send(ChannelId(3), b"hello")?,
//!             Event::Message { data, .. } => echoed = data == b"hello",
//!             Event::Disconnected { reason, .. } => panic!("{reason}"),
//!             _ => {}
//!         }
//!     }
//!     std::thread::sleep(Duration::from_millis(1)); // the rest of the tick
//! }
//! assert!(echoed);
//! # Ok(())
//! # }
//! ```
//!
//! # Event by event
//! [`ServerDriver::run_until_event`] blocks until an event or the limit, and uses no CPU in
//! between.
//! ```
//! use std::time::Duration;
//! use tickwire::io::{ClientDriver, ServerDriver, SocketConfig};
//! use tickwire::{ChannelId, ClientConfig, Event, ServerConfig, ServerIdentity};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ServerConfig::new(ServerIdentity::generate());
//! let mut server = ServerDriver::bind("127.0.0.1:0".parse()?, config, SocketConfig::default())?;
//! let key = server.server().public_key();
//! let addr = server.local_addr()?;
//! let serving = std::thread::spawn(move || -> std::io::Result<()> {
//!     // A real server loops until told to stop; this one until its one client leaves.
//!     while let Some(event) = server.run_until_event(Some(Duration::from_secs(10)))? {
//!         match event {
//!             Event::Message { client, channel, data } => {
//!                 let _ = server.send(client, channel, &data);
//!                 server.recycle(data);
//!             }
//!             Event::Disconnected { .. } => break,
//!             _ => {}
//!         }
//!     }
//!     Ok(())
//! });
//!
//! let mut client = ClientDriver::connect(ClientConfig::new(key), addr, SocketConfig::default())?;
//! while let Some(event) = client.run_until_event(Some(Duration::from_secs(10)))? {
//!     match event {
//!         Event::Connected { .. } => client.send(ChannelId(3), b"hello")?,
//!         Event::Message { data, .. } => {
//!             assert_eq!(data, b"hello");
//!             client.disconnect("done");
//!         }
//!         Event::Disconnected { .. } => break,
//!         _ => {}
//!     }
//! }
//! serving.join().expect("server thread")?;
//! # Ok(())
//! # }
//! ```

mod client;
mod driver;
mod server;
mod shards;
mod socket;
mod timer;

use std::fmt;

pub use client::ClientDriver;
pub use driver::IoStats;
pub use server::ServerDriver;
pub use shards::{RelayStats, Shard, ShardInfo, ShardReport, ShardedServer};
pub use socket::{bind_socket, buffer_sizes, SocketConfig};

use crate::config::ConfigError;

/// Why a driver could not be set up.
#[derive(Debug)]
pub enum BindError {
    /// The endpoint's or the socket's configuration is invalid.
    Config(ConfigError),
    /// Creating, setting up, binding or registering the socket failed.
    Io(std::io::Error),
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::Io(e) => write!(f, "socket setup failed: {e}"),
        }
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::Io(e) => Some(e),
        }
    }
}

impl From<ConfigError> for BindError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

impl From<std::io::Error> for BindError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}
