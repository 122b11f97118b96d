//! A headless server App and two client Apps in one process over 127.0.0.1: each client sends
//! its position every frame (sequenced) and a chat line every 50 frames (reliable-ordered);
//! the server relays positions to the other client and echoes chat to its sender.
//!
//! `cargo run -p bevy_tickwire --example headless -- --seconds 3`
//!
//! Prints each side's statistics and exits 0 when every chat line came back, in order;
//! status 1 otherwise.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bevy_app::{App, Update};
use bevy_ecs::prelude::*;
use bevy_tickwire::{
    client_connected, server_running, ClientConnected, ClientDisconnected, FromClient, FromServer,
    TickwireClient, TickwireClientPlugin, TickwireServer, TickwireServerPlugin,
};
use tickwire::{ChannelId, ServerIdentity};

const POSITION: ChannelId = ChannelId::SEQUENCED;
const CHAT: ChannelId = ChannelId::RELIABLE_ORDERED;

/// The server relays positions to everyone else and echoes chat to its sender.
fn relay(
    mut server: ResMut<TickwireServer>,
    mut connected: MessageReader<ClientConnected>,
    mut disconnected: MessageReader<ClientDisconnected>,
    mut from: MessageReader<FromClient>,
) {
    for m in connected.read() {
        println!("server: client {} connected", m.client);
    }
    for m in disconnected.read() {
        println!(
            "server: client {} left ({}): rtt {:?}, {} packets sent, {} received, {} resent",
            m.client,
            m.reason,
            m.stats.rtt,
            m.stats.packets_sent,
            m.stats.packets_received,
            m.stats.packets_resent
        );
    }
    for m in from.read() {
        if m.channel == POSITION {
            server.broadcast_except(m.client, POSITION, &m.data);
        } else if m.channel == CHAT {
            if let Err(e) = server.send(m.client, CHAT, &m.data) {
                eprintln!("server: echo to {} failed: {e}", m.client);
            }
        }
    }
}

/// One client's game state.
#[derive(Resource, Default)]
struct Player {
    name: &'static str,
    frame: u64,
    /// Chat lines sent, numbered from 0.
    chat_sent: u32,
    /// Chat lines that came back, in order.
    chat_echoed: u32,
    /// A chat line came back out of order or altered.
    chat_broken: bool,
    /// Positions of the other player received.
    positions: u64,
    /// Stop sending chat (the run is over).
    quiet: bool,
}

fn play(mut client: ResMut<TickwireClient>, mut player: ResMut<Player>) {
    player.frame += 1;
    let x = player.frame as f32 * 0.1;
    let mut pos = [0u8; 8];
    pos[..4].copy_from_slice(&x.to_le_bytes());
    pos[4..].copy_from_slice(&(x * 2.0).to_le_bytes());
    // A full queue just means this position is skipped: the next one replaces it.
    let _ = client.send(POSITION, &pos);
    if !player.quiet && player.frame.is_multiple_of(50) {
        let line = format!("{} says {}", player.name, player.chat_sent);
        match client.send(CHAT, line.as_bytes()) {
            Ok(()) => player.chat_sent += 1,
            Err(e) => eprintln!("{}: chat not sent: {e}", player.name),
        }
    }
}

fn listen(mut player: ResMut<Player>, mut from: MessageReader<FromServer>) {
    for m in from.read() {
        if m.channel == POSITION {
            player.positions += 1;
        } else if m.channel == CHAT {
            let expected = format!("{} says {}", player.name, player.chat_echoed);
            if m.data == expected.as_bytes() {
                player.chat_echoed += 1;
            } else {
                player.chat_broken = true;
            }
        }
    }
}

fn seconds_from_args() -> Result<f64, String> {
    let mut args = std::env::args().skip(1);
    let mut seconds = 3.0;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let v = args.next().ok_or("--seconds needs a value")?;
                seconds = v.parse().map_err(|_| format!("bad --seconds {v}"))?;
            }
            "-h" | "--help" => {
                return Err("usage: headless [--seconds N]  (default 3)".into());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(seconds)
}

fn main() -> ExitCode {
    let seconds = match seconds_from_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let identity = ServerIdentity::generate();
    let key = identity.public_key();
    let mut server = App::new();
    server
        .add_plugins(TickwireServerPlugin::new(
            "127.0.0.1:0".parse().unwrap(),
            identity,
        ))
        .add_systems(Update, relay.run_if(server_running));
    let Some(addr) = server
        .world()
        .get_resource::<TickwireServer>()
        .and_then(|s| s.local_addr().ok())
    else {
        eprintln!("server did not start");
        return ExitCode::FAILURE;
    };
    println!("server on {addr}");

    let mut clients: Vec<App> = ["alice", "bob"]
        .into_iter()
        .map(|name| {
            let mut app = App::new();
            app.insert_resource(Player {
                name,
                ..Player::default()
            })
            .add_plugins(TickwireClientPlugin::new(addr, key))
            .add_systems(Update, (play.run_if(client_connected), listen).chain());
            app
        })
        .collect();

    // The run, then up to 2 s for the last echoes, then the disconnects.
    let start = Instant::now();
    let run = Duration::from_secs_f64(seconds);
    let mut quiet_since = None;
    while start.elapsed() < run + Duration::from_secs(4) {
        server.update();
        for c in &mut clients {
            c.update();
        }
        if start.elapsed() >= run && quiet_since.is_none() {
            for c in &mut clients {
                c.world_mut().resource_mut::<Player>().quiet = true;
            }
            quiet_since = Some(Instant::now());
        }
        let all_back = clients.iter().all(|c| {
            let p = c.world().resource::<Player>();
            p.chat_echoed == p.chat_sent
        });
        if quiet_since.is_some_and(|t| all_back || t.elapsed() > Duration::from_secs(2)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }

    let mut ok = true;
    for c in &mut clients {
        let p = c.world().resource::<Player>();
        let stats = c.world().resource::<TickwireClient>().stats();
        println!(
            "{}: chat {}/{} back{}, {} positions of the other player; rtt {:?}, loss {:.3}, {} packets sent, {} received",
            p.name,
            p.chat_echoed,
            p.chat_sent,
            if p.chat_broken { " (out of order!)" } else { "" },
            p.positions,
            stats.rtt,
            stats.loss,
            stats.packets_sent,
            stats.packets_received
        );
        ok &= p.chat_sent > 0 && p.chat_echoed == p.chat_sent && !p.chat_broken;
        c.world_mut()
            .resource_mut::<TickwireClient>()
            .disconnect("game over");
    }
    // Deliver the closes (bounded).
    let give_up = Instant::now() + Duration::from_secs(2);
    while Instant::now() < give_up
        && !clients
            .iter()
            .all(|c| c.world().resource::<TickwireClient>().is_closed())
    {
        server.update();
        for c in &mut clients {
            c.update();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..20 {
        server.update();
        std::thread::sleep(Duration::from_millis(1));
    }
    let s = server.world().resource::<TickwireServer>().server().stats();
    println!("server: {s:?}");
    if ok {
        println!("every chat line came back");
        ExitCode::SUCCESS
    } else {
        println!("some chat lines did not come back");
        ExitCode::FAILURE
    }
}
