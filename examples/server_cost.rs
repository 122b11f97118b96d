//! The server's cost per message with 1 or many connected clients, in a form a cache simulator
//! can count: the same workload as `benches/core`'s `endpoint` group (each client sends one
//! reliable-ordered 100 B message per tick at 30 Hz, the server echoes it, the clients' datagrams
//! reach the server in one batch per tick), over a perfect in-memory network in virtual time.
//!
//! Run natively it prints the server's CPU time per message (minimum and median of the rounds);
//! the machine's noise shows in those. Under callgrind it gives counts that do not vary between
//! runs: every server call of a measured tick goes through a function named `measured_*`
//! (setup ticks call the server directly), so
//!
//! ```text
//! cargo build --release --example server_cost
//! valgrind --tool=callgrind --cache-sim=yes --LL=1048576,16,64 --collect-atstart=no \
//!     --toggle-collect='*measured_*' target/release/examples/server_cost --clients 1000 --ticks 12 --rounds 1
//! callgrind_annotate callgrind.out.<pid> | head -20
//! ```
//!
//! counts the instructions (`Ir`) and the misses of a 1 MiB last-level cache (`DLmr`, `DLmw`:
//! this machine's L2) of the server alone; divide by clients × ticks × rounds for a message.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use tickwire::{
    ChannelId, Client, ClientConfig, ClientId, Event, RetryPolicy, Server, ServerConfig,
    ServerIdentity, Transmit,
};

#[derive(Parser)]
#[command(about = "The server's cost per echoed message with many clients (see the source)")]
struct Args {
    /// Connected clients (comma-separated for several runs).
    #[arg(long, default_value = "1,1000,10000", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Ticks per round (default: 300,000 messages' worth, 30 to 3,000 ticks).
    #[arg(long)]
    ticks: Option<usize>,
    /// Measured rounds (one more warms up first).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// A server and clients over a perfect in-memory network.
struct World {
    now: Instant,
    server: Server,
    server_addr: SocketAddr,
    clients: Vec<(SocketAddr, Client)>,
    index: std::collections::HashMap<SocketAddr, usize>,
    /// Datagrams of one direction of a tick: (client index, buffer, length), reused.
    batch: Vec<(usize, Vec<u8>, usize)>,
    /// CPU time spent inside the server's calls of measured ticks.
    server_time: Duration,
}

impl World {
    fn new(n: usize) -> Self {
        let mut config = ServerConfig::new(ServerIdentity::generate());
        config.max_clients = n.max(1);
        config.max_pending = n.max(1);
        config.retry = RetryPolicy::Never;
        let server = Server::new(config).expect("valid configuration");
        let server_addr: SocketAddr = "127.0.0.1:4000".parse().expect("address");
        let now = Instant::now();
        let clients: Vec<(SocketAddr, Client)> = (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([127, 0, (i / 250) as u8, 1 + (i % 250) as u8], 5000));
                let config = ClientConfig::new(server.public_key());
                let c = Client::connect(config, server_addr, now).expect("valid configuration");
                (addr, c)
            })
            .collect();
        let index = clients.iter().enumerate().map(|(i, c)| (c.0, i)).collect();
        let mut w = Self {
            now,
            server,
            server_addr,
            clients,
            index,
            batch: Vec::new(),
            server_time: Duration::ZERO,
        };
        for _ in 0..5000 {
            w.tick::<false>(Duration::from_millis(1));
            if w.clients.iter().all(|c| c.1.is_connected()) {
                return w;
            }
        }
        panic!("clients did not connect");
    }

    /// Every client sends one message, then one tick as in `benches/core`. `MEASURED`: the
    /// server's calls go through the `measured_*` functions and their time is counted.
    fn round<const MEASURED: bool>(&mut self, msg: &[u8]) {
        let now = self.now;
        for (_, c) in &mut self.clients {
            c.send(now, ChannelId(3), msg)
                .expect("room for one message");
        }
        self.tick::<MEASURED>(Duration::from_millis(33));
    }

    fn tick<const MEASURED: bool>(&mut self, dt: Duration) {
        let now = self.now;
        let mut n = 0;
        for (i, (_, c)) in self.clients.iter_mut().enumerate() {
            loop {
                if n == self.batch.len() {
                    self.batch.push((0, vec![0; 1500], 0));
                }
                let slot = &mut self.batch[n];
                let Some(t) = c.poll_transmit(now, &mut slot.1) else {
                    break;
                };
                slot.0 = i;
                slot.2 = t.len;
                n += 1;
            }
        }
        let start = Instant::now();
        for (i, d, len) in &mut self.batch[..n] {
            let from = self.clients[*i].0;
            if MEASURED {
                measured_receive(&mut self.server, now, from, &mut d[..*len]);
            } else {
                self.server.handle_datagram(now, from, &mut d[..*len]);
            }
        }
        loop {
            let e = if MEASURED {
                measured_event(&mut self.server)
            } else {
                self.server.poll_event()
            };
            let Some(e) = e else { break };
            if let Event::Message {
                client,
                channel,
                data,
            } = e
            {
                if MEASURED {
                    measured_echo(&mut self.server, now, client, channel, data);
                } else {
                    let _ = self.server.send(now, client, channel, &data);
                    self.server.recycle(data);
                }
            }
        }
        let mut n = 0;
        loop {
            if n == self.batch.len() {
                self.batch.push((0, vec![0; 1500], 0));
            }
            let slot = &mut self.batch[n];
            let t = if MEASURED {
                measured_transmit(&mut self.server, now, &mut slot.1)
            } else {
                self.server.poll_transmit(now, &mut slot.1)
            };
            let Some(t) = t else { break };
            slot.0 = self
                .index
                .get(&t.destination)
                .copied()
                .unwrap_or(usize::MAX);
            slot.2 = t.len;
            n += 1;
        }
        let mut spent = start.elapsed();
        for (i, d, len) in &mut self.batch[..n] {
            if let Some((_, c)) = self.clients.get_mut(*i) {
                c.handle_datagram(now, self.server_addr, &mut d[..*len]);
            }
        }
        for (_, c) in &mut self.clients {
            while let Some(e) = c.poll_event() {
                if let Event::Message { data, .. } = e {
                    c.recycle(data);
                }
            }
        }
        self.now += dt;
        let start = Instant::now();
        if MEASURED {
            measured_timeout(&mut self.server, self.now);
        } else if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
        spent += start.elapsed();
        if MEASURED {
            self.server_time += spent;
        }
        for (_, c) in &mut self.clients {
            if c.poll_timeout().is_some_and(|t| t <= self.now) {
                c.handle_timeout(self.now);
            }
        }
    }
}

#[inline(never)]
fn measured_receive(s: &mut Server, now: Instant, from: SocketAddr, d: &mut [u8]) {
    s.handle_datagram(now, from, d);
}

#[inline(never)]
fn measured_event(s: &mut Server) -> Option<Event> {
    s.poll_event()
}

#[inline(never)]
fn measured_echo(
    s: &mut Server,
    now: Instant,
    client: ClientId,
    channel: ChannelId,
    data: Vec<u8>,
) {
    let _ = s.send(now, client, channel, &data);
    s.recycle(data);
}

#[inline(never)]
fn measured_transmit(s: &mut Server, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
    s.poll_transmit(now, buf)
}

#[inline(never)]
fn measured_timeout(s: &mut Server, now: Instant) {
    if s.poll_timeout().is_some_and(|t| t <= now) {
        s.handle_timeout(now);
    }
}

fn main() {
    let args = Args::parse();
    let msg = [9u8; 100];
    for &n in &args.clients {
        let mut w = World::new(n);
        let ticks = args.ticks.unwrap_or((300_000 / n.max(1)).clamp(30, 3000));
        // Warm-up: queues, pools and RTT estimates settle.
        for _ in 0..30 {
            w.round::<false>(&msg);
        }
        let mut per = Vec::new();
        for _ in 0..args.rounds {
            let before = w.server_time;
            for _ in 0..ticks {
                w.round::<true>(&msg);
            }
            let spent = w.server_time - before;
            per.push(spent.as_nanos() as f64 / (ticks * n) as f64);
        }
        per.sort_by(f64::total_cmp);
        if let (Some(min), Some(median)) = (per.first(), per.get(per.len() / 2)) {
            println!(
                "{n:>6} clients: server CPU per message {min:.0} ns (least of {} rounds of {ticks} \
                 ticks), median {median:.0} ns",
                per.len()
            );
        }
    }
}
