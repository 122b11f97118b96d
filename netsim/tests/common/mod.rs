//! What the bulk-lane tests share: a seeded message pattern and a game beside a download.

use std::time::Duration;

use netsim::sim::Simulation;
use tickwire::ChannelId;

/// A seeded pattern: octet i of message `seed`.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Game messages both ways for `millis` on the simulation's first client (4 channels x 30 Hz
/// of 64 octets, echoed by the server), and with `download` that message sent to the client on
/// the bulk lane from the start. Returns when the download arrived (checked intact) and the
/// game's reliable-ordered round trips, sorted.
pub fn game_beside_download(
    sim: &mut Simulation,
    download: Option<&[u8]>,
    millis: u32,
) -> (Option<Duration>, Vec<Duration>) {
    let id = sim.server().clients()[0].id;
    let start = sim.now();
    if let Some(message) = download {
        sim.server_mut()
            .send(start, id, ChannelId::BULK, message)
            .unwrap();
    }
    let mut took = None;
    let mut rtts = Vec::new();
    for ms in 0..millis {
        if ms % 33 == 0 {
            let now = sim.now();
            for ch in 0..4u8 {
                let mut m = vec![ch; 64];
                m[..4].copy_from_slice(&ms.to_be_bytes());
                sim.client_mut(0).send(now, ChannelId(ch), &m).unwrap();
            }
        }
        sim.run_for(Duration::from_millis(1)).unwrap();
        for (_, ch, data) in sim.take_server_messages() {
            let now = sim.now();
            sim.server_mut()
                .send(now, id, ChannelId(ch), &data)
                .unwrap();
        }
        for (ch, data) in sim.take_client_messages(0) {
            if ch == ChannelId::BULK.0 {
                assert!(Some(&data[..]) == download, "the download arrived altered");
                took = Some(sim.now() - start);
            } else if ch == ChannelId::RELIABLE_ORDERED.0 {
                let sent = u32::from_be_bytes(data[..4].try_into().unwrap());
                rtts.push(sim.now() - start - Duration::from_millis(u64::from(sent)));
            }
        }
    }
    rtts.sort();
    (took, rtts)
}
