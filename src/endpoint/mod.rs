//! The endpoints: a [`Server`] holding every client's connection, and a [`Client`].
//!
//! Both are sans-IO: datagrams and time in, datagrams, events and a deadline out.

mod client;
pub mod handshake;
mod server;

pub use client::Client;
pub use server::{ClientInfo, Server, ServerStats};
