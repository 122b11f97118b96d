//! A server and clients over a perfect in-memory network in virtual time, stepped one tick at
//! a time: the workload of `benches/core` and `examples/server_cost`, which share it. The
//! server's calls of a measured tick go through the `measured_*` functions (never inlined),
//! so that callgrind's `--toggle-collect='*measured_*'` counts the server alone.
//! `tests/alloc.rs` runs its no-allocation and idle-memory checks over it too, and
//! `tests/endpoint_props.rs` its arbitrary and altered datagrams (`captured`, `server_messages`).
#![allow(dead_code)] // each user takes part of it

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tickwire::{
    ChannelId, Client, ClientConfig, ClientId, Event, RetryPolicy, Server, ServerConfig,
    ServerIdentity, Transmit,
};

/// A server and clients over a perfect in-memory network.
pub struct World {
    pub now: Instant,
    pub server: Server,
    pub server_addr: SocketAddr,
    pub clients: Vec<(SocketAddr, Client)>,
    index: std::collections::HashMap<SocketAddr, usize>,
    /// Datagrams of one direction of a tick: (client index, buffer, length), reused.
    batch: Vec<(usize, Vec<u8>, usize)>,
    /// CPU time spent inside the server's calls of measured ticks.
    pub server_time: Duration,
    /// Whether the server echoes every message back on its channel (default false).
    pub echo: bool,
    /// Messages delivered, at the server and at the clients.
    pub delivered: u64,
    /// When set, a copy of every datagram the clients send, taken before the server opens it
    /// in place (for tests that replay or alter genuine datagrams).
    pub captured: Option<Vec<Vec<u8>>>,
    /// When set, the messages the server receives are kept here instead of recycled.
    pub server_messages: Option<Vec<Vec<u8>>>,
}

impl World {
    /// A server and `n` clients, connected (every handshake in the same millisecond).
    pub fn new(n: usize) -> Self {
        let mut w = Self::unconnected(n);
        w.connect();
        w
    }

    /// A server and `n` clients that have sent nothing yet.
    pub fn unconnected(n: usize) -> Self {
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
        Self {
            now,
            server,
            server_addr,
            clients,
            index,
            batch: Vec::new(),
            server_time: Duration::ZERO,
            echo: false,
            delivered: 0,
            captured: None,
            server_messages: None,
        }
    }

    /// Ticks of 1 ms until every client is connected (panics after 5,000).
    pub fn connect(&mut self) {
        for _ in 0..5000 {
            self.tick::<false>(Duration::from_millis(1));
            if self.clients.iter().all(|c| c.1.is_connected()) {
                return;
            }
        }
        panic!("clients did not connect");
    }

    /// Every client sends `msg` on channel 3 (reliable-ordered), then one tick of 33 ms (30 Hz).
    /// `MEASURED`: the server's calls go through the `measured_*` functions and their time is
    /// counted.
    pub fn round<const MEASURED: bool>(&mut self, msg: &[u8]) {
        let now = self.now;
        for (_, c) in &mut self.clients {
            c.send(now, ChannelId(3), msg)
                .expect("room for one message");
        }
        self.tick::<MEASURED>(Duration::from_millis(33));
    }

    /// One tick: every client's datagrams are collected first and handed to the server in one
    /// batch (as a server reads them from its socket), the server's events (and echoes) run,
    /// then its datagrams are handed to the clients; time advances by `dt` and the timers due
    /// run. Only the server's calls are timed, and the clients' work does not run between
    /// them: on a real server the clients are other machines.
    pub fn tick<const MEASURED: bool>(&mut self, dt: Duration) {
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
                if let Some(c) = &mut self.captured {
                    c.push(slot.1[..t.len].to_vec());
                }
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
                self.delivered += 1;
                if let Some(kept) = &mut self.server_messages {
                    kept.push(data);
                } else if MEASURED {
                    measured_echo(&mut self.server, now, client, channel, data, self.echo);
                } else {
                    if self.echo {
                        let _ = self.server.send(now, client, channel, &data);
                    }
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
                    self.delivered += 1;
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
    echo: bool,
) {
    if echo {
        let _ = s.send(now, client, channel, &data);
    }
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
