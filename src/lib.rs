//! tickwire: a reliable-UDP transport for game servers.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod pipeline;
pub mod wire;
