//! Scripted tests of the sans-IO core in virtual time.

mod common;

use common::*;
use std::time::Duration;
use tickwire::{ChannelId, Event};

#[test]
fn handshake_and_echo() {
    let (mut sim, _) = Sim::with_defaults();
    let cfg = sim.client_config();
    sim.add_client(cfg);
    sim.connect_all();
    let now = sim.now;
    sim.clients[0].1.send(now, ChannelId(3), b"hello").unwrap();
    assert!(
        sim.run_until(Duration::from_secs(1), |s| !s.server_events.is_empty()
            && s.server_events
                .iter()
                .any(|e| matches!(e, Event::Message { .. })))
    );
    let msgs = sim.server_messages();
    assert_eq!(msgs, vec![(1, 3, b"hello".to_vec())]);
}
