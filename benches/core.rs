//! The core's cost per message with no sockets (sans-IO): send → encode → seal → open → ack →
//! deliver, for one connection; and the server's own CPU time per message with 1, 100, 1,000
//! and 10,000 connected clients, each sending one message per tick at 30 Hz that the server
//! echoes (only the server's calls are timed).
//!
//! `cargo bench --bench core`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tickwire::{
    ChannelId, Client, ClientConfig, ClientId, Event, Server, ServerConfig, ServerIdentity,
};

/// A server and clients over a perfect in-memory network.
struct World {
    now: Instant,
    server: Server,
    server_addr: SocketAddr,
    clients: Vec<(SocketAddr, Client, ClientId)>,
    index: std::collections::HashMap<SocketAddr, usize>,
    /// Datagrams of one direction of a tick: (client index, buffer, length), reused.
    batch: Vec<(usize, Vec<u8>, usize)>,
    delivered: u64,
    /// Time spent inside the server's calls.
    server_time: Duration,
    /// Whether the server echoes every message back on its channel.
    echo: bool,
}

impl World {
    fn new(n: usize) -> Self {
        let mut config = ServerConfig::new(ServerIdentity::generate());
        config.max_clients = n.max(1);
        config.max_pending = n.max(1);
        // Every client connects in the same millisecond: no retry round trip in the setup.
        config.retry = tickwire::RetryPolicy::Never;
        let server = Server::new(config).unwrap();
        let server_addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let now = Instant::now();
        let clients: Vec<(SocketAddr, Client, ClientId)> = (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([127, 0, (i / 250) as u8, 1 + (i % 250) as u8], 5000));
                let c = Client::connect(ClientConfig::new(server.public_key()), server_addr, now)
                    .unwrap();
                (addr, c, ClientId(0))
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
            delivered: 0,
            server_time: Duration::ZERO,
            echo: false,
        };
        // Handshakes (replies beyond the server's queue are resent by the clients' timers).
        for _ in 0..5000 {
            w.tick(Duration::from_millis(1));
            if w.clients.iter().all(|c| c.1.is_connected()) {
                break;
            }
        }
        for c in &mut w.clients {
            c.2 = c.1.id().expect("connected");
        }
        w
    }

    /// One tick: every client's datagrams are collected first and then handed to the server
    /// in one batch (as a server reads them from its socket), the server's events and echoes
    /// run, then its datagrams are collected and handed to the clients. Only the server's calls
    /// are timed, and the clients' work does not run between them: on a real server the
    /// clients are other machines, and their state would not share the server's caches.
    fn tick(&mut self, dt: Duration) {
        let now = self.now;
        let mut server_time = Duration::ZERO;
        let mut n = 0;
        for (i, (_, c, _)) in self.clients.iter_mut().enumerate() {
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
            self.server
                .handle_datagram(now, self.clients[*i].0, &mut d[..*len]);
        }
        server_time += start.elapsed();
        let start = Instant::now();
        while let Some(e) = self.server.poll_event() {
            if let Event::Message {
                client,
                channel,
                data,
            } = e
            {
                self.delivered += 1;
                if self.echo {
                    let _ = self.server.send(now, client, channel, &data);
                }
                self.server.recycle(data);
            }
        }
        server_time += start.elapsed();
        let mut n = 0;
        let start = Instant::now();
        loop {
            if n == self.batch.len() {
                self.batch.push((0, vec![0; 1500], 0));
            }
            let slot = &mut self.batch[n];
            let Some(t) = self.server.poll_transmit(now, &mut slot.1) else {
                break;
            };
            slot.0 = self
                .index
                .get(&t.destination)
                .copied()
                .unwrap_or(usize::MAX);
            slot.2 = t.len;
            n += 1;
        }
        server_time += start.elapsed();
        for (i, d, len) in &mut self.batch[..n] {
            if let Some((_, c, _)) = self.clients.get_mut(*i) {
                c.handle_datagram(now, self.server_addr, &mut d[..*len]);
            }
        }
        for (_, c, _) in &mut self.clients {
            while let Some(e) = c.poll_event() {
                if let Event::Message { data, .. } = e {
                    self.delivered += 1;
                    c.recycle(data);
                }
            }
        }
        self.now += dt;
        let start = Instant::now();
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
        server_time += start.elapsed();
        self.server_time += server_time;
        for (_, c, _) in &mut self.clients {
            if c.poll_timeout().is_some_and(|t| t <= self.now) {
                c.handle_timeout(self.now);
            }
        }
    }
}

fn per_message(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    for (name, channel, size, batch) in [
        ("unreliable_64B", 0u8, 64usize, 16u64),
        ("unreliable_900B", 0, 900, 16),
        ("reliable_ordered_100B", 3, 100, 16),
    ] {
        let mut w = World::new(1);
        let msg = vec![5u8; size];
        g.throughput(Throughput::Elements(batch));
        g.bench_function(name, |b| {
            b.iter(|| {
                let now = w.now;
                for _ in 0..batch {
                    w.clients[0].1.send(now, ChannelId(channel), &msg).unwrap();
                }
                w.tick(Duration::from_millis(1));
            })
        });
    }
    g.finish();
}

fn endpoint_scaling(c: &mut Criterion) {
    let mut g = c.benchmark_group("endpoint");
    g.sample_size(10);
    let sizes: Vec<usize> = match std::env::var("TICKWIRE_BENCH_CLIENTS") {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) => vec![1, 100, 1000, 10_000],
    };
    for n in sizes {
        let mut w = World::new(n);
        w.echo = true;
        let msg = [9u8; 100];
        // Warm up: queues, pools and RTT estimates settle.
        for _ in 0..30 {
            let now = w.now;
            for (_, c, _) in &mut w.clients {
                c.send(now, ChannelId(3), &msg).unwrap();
            }
            w.tick(Duration::from_millis(33));
        }
        g.throughput(Throughput::Elements(n as u64));
        // Server CPU per message: only the server's calls are timed (the clients' work grows
        // with their number and is not the server's).
        g.bench_with_input(
            BenchmarkId::new("server_time_one_echoed_message_per_client_at_30Hz", n),
            &n,
            |b, _| {
                b.iter_custom(|iters| {
                    let before = w.server_time;
                    for _ in 0..iters {
                        let now = w.now;
                        for (_, c, _) in &mut w.clients {
                            c.send(now, ChannelId(3), &msg).unwrap();
                        }
                        w.tick(Duration::from_millis(33));
                    }
                    w.server_time - before
                })
            },
        );
        let stats = w.server.stats();
        eprintln!(
            "{n} clients: {} connected, {} timers run, largest connection {} B",
            w.server.client_count(),
            stats.timers_run,
            w.server
                .clients()
                .iter()
                .map(|c| c.stats.memory_bytes)
                .max()
                .unwrap_or(0)
        );
    }
    g.finish();
}

criterion_group!(benches, per_message, endpoint_scaling);
criterion_main!(benches);
