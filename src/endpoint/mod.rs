//! The endpoints: a [`Server`] holding every client's connection, and a [`Client`].
//!
//! Both are sans-IO: datagrams and time in, datagrams, events and a deadline out.

pub mod admission;
mod client;
mod deadlines;
pub mod handshake;
mod idmap;
mod server;

pub use admission::{Ban, BanList, IpPrefix, PrefixError};
pub use client::{Client, Resumption};
pub use server::{ClientInfo, Server, ServerStats};
pub(crate) use server::{SharedAdmission, Unclaimed};
