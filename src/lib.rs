//! tickwire: a reliable-UDP transport for game servers.
//!
//! A game links tickwire into its server and its clients. It gives them authenticated,
//! encrypted connections (P-256 key exchange, a pinned server key, AES-128-GCM on every packet),
//! channels with the delivery guarantees games need ([`DeliveryMode`]: unreliable, sequenced,
//! reliable-unordered, reliable-ordered), messages of 64 KiB by default and up to 16 MiB
//! (fragmented and reassembled, resending only missing fragments; above about 246 KiB, on
//! reliable-ordered channels, in parts of one packet each), heartbeats, timeouts, graceful
//! closes and per-connection statistics.
//!
//! The default channels ([`ConnectionConfig::channels`]) are one of each mode, 0 to 3
//! ([`ChannelId::UNRELIABLE`], [`ChannelId::SEQUENCED`], [`ChannelId::RELIABLE_UNORDERED`],
//! [`ChannelId::RELIABLE_ORDERED`]), and the bulk lane, 4 ([`ChannelId::BULK`]):
//! reliable-ordered at the lowest lane priority, for downloads that must not delay game
//! traffic. Each tick a game can read what the path takes now ([`Server::send_budget`],
//! [`Client::send_budget`], a [`SendBudget`]) and size what it sends by it.
//!
//! # Architecture
//! The public API is the crate root, [`io`] (the drivers), [`token`] (connect tokens) and
//! [`wire`]; the rest is internal (a newcomer reads it in this order):
//! - [`wire`]: bytes to structs and back, one module per packet type.
//! - `pipeline`: the flag pipeline (checksum → LZ4 → AES-GCM → fragmentation) and reassembly.
//! - `crypto`: the handshake's key exchange, certificate and key schedule.
//! - `connection`: one peer's state after the handshake, one concern per file (channels,
//!   packets in flight and loss detection, the loss estimates, path validation, timers, the
//!   send path, the memory budget, congestion control and the bulk lane's delay-based limiter).
//! - `endpoint`: the sans-IO [`Server`] (connection table, admission with per-IP limits and
//!   stateless retries, a deadline heap so a wake-up costs the same with 10 or 10,000
//!   connections) and [`Client`].
//! - [`io`]: the only code that touches sockets and the clock: a mio driver around the endpoints,
//!   and [`io::ShardedServer`], one server per core on one address (SO_REUSEPORT).
//!
//! Every byte held for a peer is charged to its connection's budget, and every limit has a
//! default and a counter: see `docs/LIMITS.md` in the repository.
//!
//! The core does no I/O and reads no clock: every input carries `now`, so a test can run an
//! hour of lossy network in a second, and the same seed replays the same run.
//!
//! # The run loop
//! 1. Feed every datagram that arrived to [`Server::handle_datagram`] (or
//!    [`Client::handle_datagram`]) with the time it arrived and its source address.
//! 2. If [`Server::poll_timeout`] has passed, call [`Server::handle_timeout`].
//! 3. Queue the game's messages with [`Server::send`] (it returns an error, never drops
//!    silently: unknown channel, message too large, queue full).
//! 4. Drain [`Server::poll_transmit`] until it returns `None`, sending each datagram it writes
//!    to its destination.
//! 5. Drain [`Server::poll_event`] until it returns `None`: connections, disconnections with
//!    their reason, and messages.
//! 6. Sleep until the next datagram or [`Server::poll_timeout`], whichever comes first.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use tickwire::{ChannelId, Client, ClientConfig, Event, Server, ServerConfig, ServerIdentity};
//!
//! let mut server = Server::new(ServerConfig::new(ServerIdentity::generate())).unwrap();
//! let server_addr = "127.0.0.1:4000".parse().unwrap();
//! let client_addr = "127.0.0.1:5000".parse().unwrap();
//! let mut now = Instant::now();
//! let mut client = Client::connect(ClientConfig::new(server.public_key()), server_addr, now).unwrap();
//! let mut buf = [0u8; 1500];
//! let mut received = None;
//! for _ in 0..100 {
//!     // Steps 4 and 1: what one side writes, the other reads (a perfect network).
//!     while let Some(t) = client.poll_transmit(now, &mut buf) {
//!         server.handle_datagram(now, client_addr, &mut buf[..t.len]);
//!     }
//!     while let Some(t) = server.poll_transmit(now, &mut buf) {
//!         client.handle_datagram(now, server_addr, &mut buf[..t.len]);
//!     }
//!     // Step 5.
//!     while let Some(event) = server.poll_event() {
//!         if let Event::Message { data, .. } = event {
//!             received = Some(data);
//!         }
//!     }
//!     while let Some(Event::Connected { .. }) = client.poll_event() {
//!         // Step 3: channel 3 is reliable-ordered in the default configuration.
//!         client.send(now, ChannelId::RELIABLE_ORDERED, b"hello").unwrap();
//!     }
//!     if received.is_some() {
//!         break;
//!     }
//!     now += Duration::from_millis(1);
//!     server.handle_timeout(now);
//!     client.handle_timeout(now);
//! }
//! assert_eq!(received.as_deref(), Some(&b"hello"[..]));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
pub mod io;
mod log;
pub mod token;
mod types;
pub mod wire;

// The internals are private; tests, benches, the fuzz targets and the `attack` and `inspect`
// examples reach them through the `_internal_test_exports` feature (str0m's way), which is not
// part of the API and may change in any release.
#[cfg(feature = "_internal_test_exports")]
#[doc(hidden)]
pub mod connection;
#[cfg(not(feature = "_internal_test_exports"))]
#[allow(dead_code, unused_imports)] // what only the tests and the attack example use
mod connection;
#[cfg(feature = "_internal_test_exports")]
#[doc(hidden)]
pub mod crypto;
#[cfg(not(feature = "_internal_test_exports"))]
#[allow(dead_code, unused_imports)] // what only the tests and the attack example use
mod crypto;
#[cfg(feature = "_internal_test_exports")]
#[doc(hidden)]
pub mod endpoint;
#[cfg(not(feature = "_internal_test_exports"))]
#[allow(dead_code, unused_imports)] // what only the tests and the attack example use
mod endpoint;
#[cfg(feature = "_internal_test_exports")]
#[doc(hidden)]
pub mod pipeline;
#[cfg(not(feature = "_internal_test_exports"))]
#[allow(dead_code, unused_imports)] // what only the tests and the attack example use
mod pipeline;

pub use config::{
    ChannelConfig, ClientConfig, ConfigError, ConnectionConfig, DeliveryMode, RetryPolicy,
    ServerConfig, ServerKeyPolicy, TokenPolicy, MAX_LARGE_MESSAGE_SIZE, MAX_MESSAGE_SIZE,
};
pub use crypto::{KeyError, ServerIdentity, ServerKey};
pub use endpoint::{
    Ban, Client, ClientInfo, IpPrefix, PrefixError, Resumption, Server, ServerStats,
};
pub use pipeline::ReassemblyConfig;
pub use types::{
    ChannelId, ChannelStats, ClientId, ConnectionStats, DisconnectReason, Event, SendBudget,
    SendError, Transmit,
};
pub use wire::ErrorCode;
