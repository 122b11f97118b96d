//! tickwire: a reliable-UDP transport for game servers.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod connection;
pub mod crypto;
pub mod endpoint;
pub mod pipeline;
pub mod types;
pub mod wire;

pub use config::{
    ChannelConfig, ClientConfig, ConfigError, ConnectionConfig, DeliveryMode, ServerConfig,
    ServerKeyPolicy, MAX_MESSAGE_SIZE,
};
pub use crypto::{ServerIdentity, ServerKey};
pub use endpoint::{Client, ClientInfo, Server, ServerStats};
pub use types::{
    ChannelId, ClientId, ConnectionStats, DisconnectReason, Event, SendError, Transmit,
};
