//! Bevy plugins for [tickwire]: a server endpoint and a client endpoint as resources, their
//! socket work scheduled once per frame, and what arrives as Bevy messages.
//!
//! - [`TickwireServerPlugin`] binds a [`ServerDriver`] into the [`TickwireServer`] resource
//!   and writes [`ClientConnected`], [`ClientDisconnected`], [`ClientAddressChanged`] and
//!   [`FromClient`] messages.
//! - [`TickwireClientPlugin`] connects a [`ClientDriver`] into the [`TickwireClient`] resource
//!   and writes [`Connected`], [`Disconnected`] and [`FromServer`] messages.
//!
//! Each frame, in [`PreUpdate`] ([`TickwireSystems::Receive`]), the driver makes one pass that
//! never blocks (`poll_once`: it reads every waiting datagram, runs the due timers and sends
//! what is due) and its events become messages, readable in [`Update`](bevy_app::Update) with
//! a [`MessageReader`](bevy_ecs::message::MessageReader). Any system queues messages through
//! the resource ([`ServerDriver::send`], [`ServerDriver::broadcast`], ... through [`Deref`] to
//! the driver); they leave in [`PostUpdate`]
//! ([`TickwireSystems::Send`]). The frame is never blocked.
//!
//! ```
//! use bevy_app::{App, Update};
//! use bevy_ecs::prelude::*;
//! use bevy_tickwire::*;
//! use tickwire::{ChannelId, ServerIdentity};
//!
//! // The server echoes every message back on its channel.
//! fn echo(mut from: MessageReader<FromClient>, mut server: ResMut<TickwireServer>) {
//!     for m in from.read() {
//!         let _ = server.send(m.client, m.channel, &m.data);
//!     }
//! }
//!
//! let identity = ServerIdentity::generate();
//! let key = identity.public_key();
//! let mut server = App::new();
//! server
//!     .add_plugins(TickwireServerPlugin::new("127.0.0.1:0".parse().unwrap(), identity))
//!     .add_systems(Update, echo.run_if(server_running));
//! let addr = server.world().resource::<TickwireServer>().local_addr().unwrap();
//!
//! let mut client = App::new();
//! client.add_plugins(TickwireClientPlugin::new(addr, key));
//! client.add_systems(Update, |mut client: ResMut<TickwireClient>, mut done: Local<bool>| {
//!     if client.is_connected() && !*done {
//!         *done = client.send(ChannelId::RELIABLE_ORDERED, b"hello").is_ok();
//!     }
//! });
//! # let mut echoed = false;
//! # let start = std::time::Instant::now();
//! # for _ in 0..5000 {
//! #     server.update();
//! #     client.update();
//! #     let w = client.world_mut();
//! #     let msgs = w.resource::<Messages<FromServer>>();
//! #     echoed |= msgs.iter_current_update_messages().any(|m| m.data == b"hello");
//! #     if echoed || start.elapsed() > std::time::Duration::from_secs(20) { break; }
//! #     std::thread::sleep(std::time::Duration::from_millis(1));
//! # }
//! # assert!(echoed);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The README's setup is compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};

use bevy_app::{App, Plugin, PostUpdate, PreUpdate};
use bevy_ecs::message::{Message, MessageWriter};
use bevy_ecs::resource::Resource;
use bevy_ecs::schedule::{IntoScheduleConfigs, SystemSet};
use bevy_ecs::system::{Res, ResMut};
use tickwire::io::{bind_socket, BindError, ClientDriver, ServerDriver, SocketConfig};
use tickwire::{
    ChannelId, Client, ClientConfig, ClientId, ConnectionStats, DisconnectReason, Event,
    ServerConfig, ServerIdentity, ServerKey, TokenPolicy,
};

pub use tickwire;

/// The system sets of both plugins, so that a game's systems can be ordered around them.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TickwireSystems {
    /// In [`PreUpdate`]: the socket pass and the events turned into messages.
    Receive,
    /// In [`PostUpdate`]: what the frame queued is sent.
    Send,
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// The server endpoint on its socket, as a resource. It dereferences to the
/// [`ServerDriver`], so every system with `ResMut<TickwireServer>` can
/// [`send`](ServerDriver::send), [`broadcast`](ServerDriver::broadcast),
/// [`broadcast_except`](ServerDriver::broadcast_except),
/// [`send_to_many`](ServerDriver::send_to_many), [`disconnect`](ServerDriver::disconnect) or
/// [`shutdown`](ServerDriver::shutdown); what it queues leaves in [`PostUpdate`].
///
/// Insert it yourself (for instance from [`TickwireServer::bind`] in a system, to start
/// serving later) or let [`TickwireServerPlugin`] bind it; remove it to close the socket.
#[derive(Resource, Debug)]
pub struct TickwireServer {
    driver: ServerDriver,
}

impl TickwireServer {
    /// A server with `config` on a new socket bound to `addr` (port 0 picks a free one).
    ///
    /// With connect tokens ([`ServerConfig::tokens`]), the server is also given the wall clock
    /// (for token expiry) and, unless it was bound to an unspecified address, the bound
    /// address as one that tokens may name ([`ServerConfig::public_addrs`]).
    ///
    /// # Errors
    /// [`BindError::Config`] if `config` or `socket` is invalid, [`BindError::Io`] if the
    /// socket could not be set up or bound.
    pub fn bind(
        addr: SocketAddr,
        config: ServerConfig,
        socket: SocketConfig,
    ) -> Result<Self, BindError> {
        let tokens = config.tokens.is_some();
        let mut driver = ServerDriver::bind(addr, config, socket)?;
        if tokens {
            let local = driver.local_addr()?;
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let server = driver.server_mut();
            server.set_wall_clock(std::time::Instant::now(), unix);
            if !local.ip().is_unspecified() {
                server.add_public_addr(local);
            }
        }
        Ok(Self::from_driver(driver))
    }

    /// Wraps a driver set up by other means.
    pub fn from_driver(driver: ServerDriver) -> Self {
        Self { driver }
    }

    /// The driver.
    pub fn driver(&self) -> &ServerDriver {
        &self.driver
    }

    /// The driver, to call it directly.
    pub fn driver_mut(&mut self) -> &mut ServerDriver {
        &mut self.driver
    }

    /// Gives the driver back.
    pub fn into_driver(self) -> ServerDriver {
        self.driver
    }

    /// The server's public key, which clients pin ([`ClientConfig::new`]).
    pub fn public_key(&self) -> ServerKey {
        self.driver.server().public_key()
    }

    /// The connected clients' ids.
    pub fn clients(&self) -> Vec<ClientId> {
        self.driver
            .server()
            .clients()
            .iter()
            .map(|c| c.id)
            .collect()
    }

    /// How many clients are connected.
    pub fn client_count(&self) -> usize {
        self.driver.server().client_count()
    }

    /// Whether `client` is connected.
    pub fn is_connected(&self, client: ClientId) -> bool {
        self.driver.server().is_connected(client)
    }

    /// `client`'s statistics, or `None` for an id the server does not know (the final
    /// statistics of a closed connection come in [`ClientDisconnected::stats`]).
    pub fn client_stats(&self, client: ClientId) -> Option<ConnectionStats> {
        self.driver.server().client_stats(client)
    }
}

impl Deref for TickwireServer {
    type Target = ServerDriver;
    fn deref(&self) -> &ServerDriver {
        &self.driver
    }
}

impl DerefMut for TickwireServer {
    fn deref_mut(&mut self) -> &mut ServerDriver {
        &mut self.driver
    }
}

/// What [`TickwireServerPlugin`] binds: its address, the endpoint's settings (with the
/// server's identity and, optionally, the connect-token policy) and the socket's.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The address to bind (port 0 picks a free one; see [`ServerDriver::local_addr`]).
    pub addr: SocketAddr,
    /// The endpoint's settings; [`ServerConfig::new`] gives the defaults.
    pub config: ServerConfig,
    /// The socket's settings; default [`SocketConfig::default`].
    pub socket: SocketConfig,
}

/// Why [`TickwireServerPlugin`] could not bind: inserted as a resource instead of
/// [`TickwireServer`] (so [`server_running`] stays false).
#[derive(Resource, Debug)]
pub struct ServerBindError(pub BindError);

/// The server plugin: the [`TickwireSystems`] systems for a [`TickwireServer`], its
/// messages ([`ClientConnected`], [`ClientDisconnected`], [`ClientAddressChanged`],
/// [`FromClient`]) and, when built with settings, the bound server.
///
/// [`TickwireServerPlugin::default`] binds nothing: insert a [`TickwireServer`] yourself.
/// With settings, the socket is bound while the plugin is added, so its address can be read at
/// once; if binding fails, the error is logged and inserted as [`ServerBindError`].
#[derive(Debug, Clone, Default)]
pub struct TickwireServerPlugin {
    /// What to bind, if anything. Default `None`.
    pub settings: Option<ServerSettings>,
}

impl TickwireServerPlugin {
    /// A plugin that binds a server with `identity` and default settings at `addr`.
    pub fn new(addr: SocketAddr, identity: ServerIdentity) -> Self {
        Self::with_config(addr, ServerConfig::new(identity))
    }

    /// A plugin that binds a server with `config` at `addr`, default socket settings.
    pub fn with_config(addr: SocketAddr, config: ServerConfig) -> Self {
        Self {
            settings: Some(ServerSettings {
                addr,
                config,
                socket: SocketConfig::default(),
            }),
        }
    }

    /// Requires a connect token signed by `authority` (the key of the game backend's
    /// [`tickwire::token::TokenSigner`]) from every client (`required`), or only checks the
    /// tokens that come. No effect on a plugin without settings.
    pub fn tokens(mut self, authority: ServerKey, required: bool) -> Self {
        if let Some(s) = &mut self.settings {
            s.config.tokens = Some(TokenPolicy {
                authority,
                required,
            });
        }
        self
    }

    /// Sets the socket's settings. No effect on a plugin without settings.
    pub fn socket(mut self, socket: SocketConfig) -> Self {
        if let Some(s) = &mut self.settings {
            s.socket = socket;
        }
        self
    }
}

impl Plugin for TickwireServerPlugin {
    fn build(&self, app: &mut App) {
        app.add_message::<ClientConnected>()
            .add_message::<ClientDisconnected>()
            .add_message::<ClientAddressChanged>()
            .add_message::<FromClient>()
            .configure_sets(PreUpdate, TickwireSystems::Receive)
            .configure_sets(PostUpdate, TickwireSystems::Send)
            .add_systems(
                PreUpdate,
                server_receive
                    .in_set(TickwireSystems::Receive)
                    .run_if(server_running),
            )
            .add_systems(
                PostUpdate,
                server_send
                    .in_set(TickwireSystems::Send)
                    .run_if(server_running),
            );
        if let Some(s) = &self.settings {
            match TickwireServer::bind(s.addr, s.config.clone(), s.socket.clone()) {
                Ok(server) => {
                    app.insert_resource(server);
                }
                Err(e) => {
                    tracing::error!("tickwire server on {} not started: {e}", s.addr);
                    app.insert_resource(ServerBindError(e));
                }
            }
        }
    }
}

/// A client finished its handshake (server side).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct ClientConnected {
    /// Its id.
    pub client: ClientId,
}

/// A client's connection ended (server side); nothing more comes from it.
#[derive(Message, Debug, Clone)]
pub struct ClientDisconnected {
    /// Its id.
    pub client: ClientId,
    /// Why (the client's own reason arrives as [`DisconnectReason::Peer`]).
    pub reason: DisconnectReason,
    /// Its final statistics.
    pub stats: Box<ConnectionStats>,
}

/// A client's address changed and the new path was confirmed (server side).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct ClientAddressChanged {
    /// Its id.
    pub client: ClientId,
    /// The address it had.
    pub old: SocketAddr,
    /// The address it has now.
    pub new: SocketAddr,
}

/// A message from a client (server side).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct FromClient {
    /// From this client.
    pub client: ClientId,
    /// On this channel (filter on it to read one channel).
    pub channel: ChannelId,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Run condition: a [`TickwireServer`] resource exists (bound and serving).
pub fn server_running(server: Option<Res<TickwireServer>>) -> bool {
    server.is_some()
}

fn server_receive(
    mut server: ResMut<TickwireServer>,
    mut connected: MessageWriter<ClientConnected>,
    mut disconnected: MessageWriter<ClientDisconnected>,
    mut moved: MessageWriter<ClientAddressChanged>,
    mut messages: MessageWriter<FromClient>,
) {
    if let Err(e) = server.driver.poll_once() {
        tracing::error!("tickwire server poll failed: {e}");
    }
    while let Some(event) = server.driver.poll_event() {
        match event {
            Event::Connected { client } => {
                connected.write(ClientConnected { client });
            }
            Event::Disconnected {
                client,
                reason,
                stats,
            } => {
                disconnected.write(ClientDisconnected {
                    client,
                    reason,
                    stats,
                });
            }
            Event::AddressChanged { client, old, new } => {
                moved.write(ClientAddressChanged { client, old, new });
            }
            Event::Message {
                client,
                channel,
                data,
            } => {
                messages.write(FromClient {
                    client,
                    channel,
                    data,
                });
            }
            // `Event` is non-exhaustive: a kind this version does not know is skipped.
            _ => {}
        }
    }
}

fn server_send(mut server: ResMut<TickwireServer>) {
    if let Err(e) = server.driver.flush() {
        tracing::error!("tickwire server flush failed: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// The client endpoint on its socket, as a resource. It dereferences to the
/// [`ClientDriver`], so every system with `ResMut<TickwireClient>` can
/// [`send`](ClientDriver::send) or [`disconnect`](ClientDriver::disconnect); what it queues
/// leaves in [`PostUpdate`]. After a disconnect keep updating the app until
/// [`TickwireClient::is_closed`] so that the close reaches the server.
///
/// Insert it yourself (from [`TickwireClient::connect`] in a system, to connect later; replace
/// it to reconnect) or let [`TickwireClientPlugin`] connect it.
#[derive(Resource, Debug)]
pub struct TickwireClient {
    driver: ClientDriver,
}

impl TickwireClient {
    /// A client with `config` that starts connecting to `server`, presenting `token` (a
    /// connect token from [`tickwire::token::TokenSigner::issue`]) if one is given. Its socket is
    /// bound to an ephemeral port on the loopback address for a loopback server, otherwise
    /// on the unspecified address of the server's family.
    ///
    /// # Errors
    /// [`BindError::Config`] if `config` or `socket` is invalid or the token is over 1024
    /// octets, [`BindError::Io`] if the socket could not be set up or bound.
    pub fn connect(
        server: SocketAddr,
        config: ClientConfig,
        token: Option<&[u8]>,
        socket: SocketConfig,
    ) -> Result<Self, BindError> {
        let Some(token) = token else {
            return ClientDriver::connect(config, server, socket).map(Self::from_driver);
        };
        socket.validate()?;
        let local: SocketAddr = match (server.is_ipv4(), server.ip().is_loopback()) {
            (true, true) => ([127, 0, 0, 1], 0).into(),
            (true, false) => ([0, 0, 0, 0], 0).into(),
            (false, true) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
            (false, false) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let client = Client::connect_with_token(config, server, std::time::Instant::now(), token)?;
        let udp = bind_socket(local, &socket)?;
        Ok(Self::from_driver(ClientDriver::with_socket(
            client, udp, &socket,
        )?))
    }

    /// Wraps a driver set up by other means.
    pub fn from_driver(driver: ClientDriver) -> Self {
        Self { driver }
    }

    /// The driver.
    pub fn driver(&self) -> &ClientDriver {
        &self.driver
    }

    /// The driver, to call it directly.
    pub fn driver_mut(&mut self) -> &mut ClientDriver {
        &mut self.driver
    }

    /// Gives the driver back.
    pub fn into_driver(self) -> ClientDriver {
        self.driver
    }

    /// Whether the handshake finished and the connection is open.
    pub fn is_connected(&self) -> bool {
        self.driver.client().is_connected()
    }

    /// Whether the connection ended (or the handshake failed).
    pub fn is_closed(&self) -> bool {
        self.driver.client().is_closed()
    }

    /// The id the server gave this client, once connected.
    pub fn id(&self) -> Option<ClientId> {
        self.driver.client().id()
    }

    /// The connection's statistics (the final ones once it ended).
    pub fn stats(&self) -> ConnectionStats {
        self.driver.client().stats()
    }
}

impl Deref for TickwireClient {
    type Target = ClientDriver;
    fn deref(&self) -> &ClientDriver {
        &self.driver
    }
}

impl DerefMut for TickwireClient {
    fn deref_mut(&mut self) -> &mut ClientDriver {
        &mut self.driver
    }
}

/// Where and how [`TickwireClientPlugin`] connects.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The server's address.
    pub server: SocketAddr,
    /// The endpoint's settings, with the server key policy; [`ClientConfig::new`] pins a key.
    pub config: ClientConfig,
    /// A connect token to present ([`tickwire::token`]). Default `None`.
    pub token: Option<Vec<u8>>,
    /// The socket's settings; default [`SocketConfig::default`].
    pub socket: SocketConfig,
}

/// Why [`TickwireClientPlugin`] could not start connecting: inserted as a resource instead of
/// [`TickwireClient`].
#[derive(Resource, Debug)]
pub struct ClientConnectError(pub BindError);

/// The client plugin: the [`TickwireSystems`] systems for a [`TickwireClient`], its
/// messages ([`Connected`], [`Disconnected`], [`FromServer`]) and, when built with settings,
/// the connecting client.
///
/// [`TickwireClientPlugin::default`] connects nothing: insert a [`TickwireClient`] yourself.
/// With settings, the client starts connecting while the plugin is added; if that fails, the
/// error is logged and inserted as [`ClientConnectError`].
#[derive(Debug, Clone, Default)]
pub struct TickwireClientPlugin {
    /// Where to connect, if anywhere. Default `None`.
    pub settings: Option<ClientSettings>,
}

impl TickwireClientPlugin {
    /// A plugin that connects to `server`, pinning its key `server_key`, default settings.
    pub fn new(server: SocketAddr, server_key: ServerKey) -> Self {
        Self::with_config(server, ClientConfig::new(server_key))
    }

    /// A plugin that connects to `server` with `config`, default socket settings, no token.
    pub fn with_config(server: SocketAddr, config: ClientConfig) -> Self {
        Self {
            settings: Some(ClientSettings {
                server,
                config,
                token: None,
                socket: SocketConfig::default(),
            }),
        }
    }

    /// Presents `token` (a connect token, [`tickwire::token`]) in the handshake. No effect on
    /// a plugin without settings.
    pub fn token(mut self, token: Vec<u8>) -> Self {
        if let Some(s) = &mut self.settings {
            s.token = Some(token);
        }
        self
    }

    /// Sets the socket's settings. No effect on a plugin without settings.
    pub fn socket(mut self, socket: SocketConfig) -> Self {
        if let Some(s) = &mut self.settings {
            s.socket = socket;
        }
        self
    }
}

impl Plugin for TickwireClientPlugin {
    fn build(&self, app: &mut App) {
        app.add_message::<Connected>()
            .add_message::<Disconnected>()
            .add_message::<FromServer>()
            .configure_sets(PreUpdate, TickwireSystems::Receive)
            .configure_sets(PostUpdate, TickwireSystems::Send)
            .add_systems(
                PreUpdate,
                client_receive
                    .in_set(TickwireSystems::Receive)
                    .run_if(client_exists),
            )
            .add_systems(
                PostUpdate,
                client_send
                    .in_set(TickwireSystems::Send)
                    .run_if(client_exists),
            );
        if let Some(s) = &self.settings {
            let token = s.token.as_deref();
            match TickwireClient::connect(s.server, s.config.clone(), token, s.socket.clone()) {
                Ok(client) => {
                    app.insert_resource(client);
                }
                Err(e) => {
                    tracing::error!("tickwire client to {} not started: {e}", s.server);
                    app.insert_resource(ClientConnectError(e));
                }
            }
        }
    }
}

/// The handshake finished (client side).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// The id the server gave this client.
    pub client: ClientId,
}

/// The connection ended or the handshake failed (client side).
#[derive(Message, Debug, Clone)]
pub struct Disconnected {
    /// Why (the server's reason arrives as [`DisconnectReason::Peer`]).
    pub reason: DisconnectReason,
    /// The final statistics (all zeros if the handshake never finished).
    pub stats: Box<ConnectionStats>,
}

/// A message from the server (client side).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct FromServer {
    /// On this channel (filter on it to read one channel).
    pub channel: ChannelId,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Run condition: a [`TickwireClient`] exists and is connected.
pub fn client_connected(client: Option<Res<TickwireClient>>) -> bool {
    client.is_some_and(|c| c.is_connected())
}

/// Run condition: a [`TickwireClient`] exists and is still in its handshake.
pub fn client_connecting(client: Option<Res<TickwireClient>>) -> bool {
    client.is_some_and(|c| !c.is_connected() && !c.is_closed())
}

/// Run condition: there is no [`TickwireClient`], or its connection ended.
pub fn client_disconnected(client: Option<Res<TickwireClient>>) -> bool {
    client.is_none_or(|c| c.is_closed())
}

fn client_exists(client: Option<Res<TickwireClient>>) -> bool {
    client.is_some()
}

fn client_receive(
    mut client: ResMut<TickwireClient>,
    mut connected: MessageWriter<Connected>,
    mut disconnected: MessageWriter<Disconnected>,
    mut messages: MessageWriter<FromServer>,
) {
    if let Err(e) = client.driver.poll_once() {
        tracing::error!("tickwire client poll failed: {e}");
    }
    while let Some(event) = client.driver.poll_event() {
        match event {
            Event::Connected { client } => {
                connected.write(Connected { client });
            }
            Event::Disconnected { reason, stats, .. } => {
                disconnected.write(Disconnected { reason, stats });
            }
            Event::Message { channel, data, .. } => {
                messages.write(FromServer { channel, data });
            }
            // The server sees address changes; `Event` is non-exhaustive.
            _ => {}
        }
    }
}

fn client_send(mut client: ResMut<TickwireClient>) {
    if let Err(e) = client.driver.flush() {
        tracing::error!("tickwire client flush failed: {e}");
    }
}
