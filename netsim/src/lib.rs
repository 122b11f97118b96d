//! netsim: network impairment for testing tickwire.
//!
//! One model, two front ends:
//!
//! - [`model`]: the sans-IO impairment model. A [`model::Link`] is one direction of a path;
//!   it takes datagrams with `now` and gives them back when due, after loss (random or bursty
//!   Gilbert-Elliott), latency, jitter, duplication, reordering, a rate limit with a bounded
//!   queue, corruption and an MTU, every choice from a seed.
//! - [`sim`]: a deterministic simulator that runs tickwire's sans-IO endpoints over links in
//!   virtual time.
//! - [`proxy`]: a real UDP proxy between real peers on loopback, a mio loop that impairs each
//!   direction with the same model; the `netsim` binary is its command line.

#![forbid(unsafe_code)]

pub mod model;
pub mod proxy;
pub mod sim;
