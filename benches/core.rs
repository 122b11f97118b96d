//! The core's cost per message with no sockets (sans-IO): send → encode → seal → open → ack →
//! deliver, for one connection and for a server with 1, 100 and 1000 connections.
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
    buf: Vec<u8>,
    delivered: u64,
}

impl World {
    fn new(n: usize) -> Self {
        let mut config = ServerConfig::new(ServerIdentity::generate());
        config.max_clients = n.max(1);
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
            buf: vec![0; 1500],
            delivered: 0,
        };
        for _ in 0..20 {
            w.tick(Duration::from_millis(1));
        }
        for c in &mut w.clients {
            c.2 = c.1.id().expect("connected");
        }
        w
    }

    fn tick(&mut self, dt: Duration) {
        let now = self.now;
        for (addr, c, _) in &mut self.clients {
            while let Some(t) = c.poll_transmit(now, &mut self.buf) {
                let (d, _) = self.buf.split_at_mut(t.len);
                self.server.handle_datagram(now, *addr, d);
            }
        }
        while let Some(t) = self.server.poll_transmit(now, &mut self.buf) {
            if let Some(&i) = self.index.get(&t.destination) {
                let (d, _) = self.buf.split_at_mut(t.len);
                self.clients[i].1.handle_datagram(now, self.server_addr, d);
            }
        }
        while let Some(e) = self.server.poll_event() {
            if let Event::Message { data, .. } = e {
                self.delivered += 1;
                self.server.recycle(data);
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
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
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
    for n in [1usize, 100, 1000] {
        let mut w = World::new(n);
        let msg = [9u8; 100];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::new("one_message_per_client_per_tick", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let now = w.now;
                    for (_, c, id) in &mut w.clients {
                        c.send(now, ChannelId(3), &msg).unwrap();
                        let _ = id;
                    }
                    w.tick(Duration::from_millis(33));
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, per_message, endpoint_scaling);
criterion_main!(benches);
