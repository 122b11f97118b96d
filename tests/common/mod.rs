//! A small deterministic harness for the sans-IO core: one server, clients, and links with a
//! fixed one-way delay and a scriptable filter, stepped in virtual time.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tickwire::{Client, ClientConfig, Event, Server, ServerConfig, ServerIdentity};

/// A datagram on its way.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub at: Instant,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// What the filter decides for a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Deliver,
    Drop,
    /// Deliver twice.
    Duplicate,
    /// Deliver after this extra delay.
    Delay(Duration),
}

/// Direction of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToServer,
    ToClient,
}

pub type Filter = Box<dyn FnMut(Dir, usize, &[u8]) -> Fate>;

pub struct Sim {
    pub now: Instant,
    pub server: Server,
    pub server_addr: SocketAddr,
    pub clients: Vec<(SocketAddr, Client)>,
    pub delay: Duration,
    pub wire: Vec<InFlight>,
    pub server_events: Vec<Event>,
    pub client_events: Vec<Vec<Event>>,
    pub filter: Filter,
    /// Datagrams seen per direction, counted before the filter.
    pub counts: [usize; 2],
    pub steps: usize,
    /// Addresses whose datagrams (from or to) are dropped: a client whose network is gone.
    pub muted: Vec<SocketAddr>,
    /// While true, the server's events are left in the server (the application is busy).
    pub hold_server_events: bool,
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Sim {
    pub fn new(server_config: ServerConfig) -> Self {
        let now = Instant::now();
        Self {
            now,
            server: Server::new(server_config).unwrap(),
            server_addr: addr(4000),
            clients: Vec::new(),
            delay: Duration::from_millis(10),
            wire: Vec::new(),
            server_events: Vec::new(),
            client_events: Vec::new(),
            filter: Box::new(|_, _, _| Fate::Deliver),
            counts: [0, 0],
            steps: 0,
            muted: Vec::new(),
            hold_server_events: false,
        }
    }

    pub fn with_defaults() -> (Self, ServerIdentity) {
        let identity = ServerIdentity::generate();
        (Self::new(ServerConfig::new(identity.clone())), identity)
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.server.public_key())
    }

    pub fn add_client(&mut self, config: ClientConfig) -> usize {
        let port = 5000 + self.clients.len() as u16;
        let client = Client::connect(config, self.server_addr, self.now).unwrap();
        self.clients.push((addr(port), client));
        self.client_events.push(Vec::new());
        self.clients.len() - 1
    }

    fn flush(&mut self) {
        let mut buf = vec![0u8; 1500];
        while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
            self.put(
                Dir::ToClient,
                self.server_addr,
                t.destination,
                buf[..t.len].to_vec(),
            );
        }
        while let Some(e) = (!self.hold_server_events)
            .then(|| self.server.poll_event())
            .flatten()
        {
            self.server_events.push(e);
        }
        for i in 0..self.clients.len() {
            loop {
                let (caddr, client) = &mut self.clients[i];
                let caddr = *caddr;
                let Some(t) = client.poll_transmit(self.now, &mut buf) else {
                    break;
                };
                let data = buf[..t.len].to_vec();
                self.put(Dir::ToServer, caddr, t.destination, data);
            }
            while let Some(e) = self.clients[i].1.poll_event() {
                self.client_events[i].push(e);
            }
        }
    }

    fn put(&mut self, dir: Dir, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        if self.muted.contains(&from) || self.muted.contains(&to) {
            return;
        }
        let n = self.counts[dir as usize];
        self.counts[dir as usize] += 1;
        let at = self.now + self.delay;
        match (self.filter)(dir, n, &data) {
            Fate::Deliver => self.wire.push(InFlight { at, from, to, data }),
            Fate::Drop => {}
            Fate::Duplicate => {
                self.wire.push(InFlight {
                    at,
                    from,
                    to,
                    data: data.clone(),
                });
                self.wire.push(InFlight { at, from, to, data });
            }
            Fate::Delay(d) => self.wire.push(InFlight {
                at: at + d,
                from,
                to,
                data,
            }),
        }
    }

    /// The next time anything happens.
    fn next_time(&self) -> Option<Instant> {
        let mut t = self.wire.iter().map(|d| d.at).min();
        let mut take = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t: Instant| t.min(x)));
            }
        };
        take(self.server.poll_timeout());
        for (_, c) in &self.clients {
            take(c.poll_timeout());
        }
        t
    }

    /// One step: advance to the next event, deliver what is due, run timers, flush.
    pub fn step(&mut self) -> bool {
        self.step_until(None)
    }

    /// One step that never jumps past `limit`.
    pub fn step_until(&mut self, limit: Option<Instant>) -> bool {
        self.flush();
        let Some(mut t) = self.next_time() else {
            return false;
        };
        if let Some(l) = limit {
            t = t.min(l);
        }
        if t > self.now {
            self.now = t;
        }
        self.steps += 1;
        let now = self.now;
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire)
            .into_iter()
            .partition(|d| d.at <= now);
        self.wire = rest;
        for mut d in due {
            if d.to == self.server_addr {
                self.server.handle_datagram(now, d.from, &mut d.data);
            } else if let Some((_, c)) = self.clients.iter_mut().find(|(a, _)| *a == d.to) {
                c.handle_datagram(now, d.from, &mut d.data);
            }
        }
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        for (_, c) in &mut self.clients {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
        }
        self.flush();
        true
    }

    /// Steps until `cond` holds or `limit` of simulated time passes (panics after 1,000,000
    /// steps: a livelock).
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&mut Self) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            if cond(self) {
                return true;
            }
            if self.now >= end {
                return false;
            }
            assert!(self.steps < 1_000_000, "livelock: too many steps");
            if !self.step_until(Some(end)) {
                return cond(self);
            }
        }
    }

    /// Steps for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }

    pub fn connect_all(&mut self) {
        let n = self.clients.len();
        let ok = self.run_until(Duration::from_secs(5), |s| {
            s.clients.iter().all(|(_, c)| c.is_connected())
                && s.server_events
                    .iter()
                    .filter(|e| matches!(e, Event::Connected { .. }))
                    .count()
                    >= n
        });
        assert!(ok, "clients did not connect");
    }

    pub fn server_messages(&mut self) -> Vec<(u64, u8, Vec<u8>)> {
        let mut out = Vec::new();
        self.server_events.retain(|e| match e {
            Event::Message {
                client,
                channel,
                data,
            } => {
                out.push((client.0, channel.0, data.clone()));
                false
            }
            _ => true,
        });
        out
    }

    pub fn client_messages(&mut self, i: usize) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        self.client_events[i].retain(|e| match e {
            Event::Message { channel, data, .. } => {
                out.push((channel.0, data.clone()));
                false
            }
            _ => true,
        });
        out
    }
}

/// A small seeded generator (xorshift64*), so that tests replay exactly from their seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// A filter that drops, duplicates and delays datagrams at random after the handshake's
/// first `spare` datagrams of each direction.
pub fn lossy(seed: u64, loss: f64, dup: f64, reorder: f64, spare: usize) -> Filter {
    let mut rng = Rng(seed | 1);
    Box::new(move |_, n, _| {
        if n < spare {
            return Fate::Deliver;
        }
        if rng.chance(loss) {
            Fate::Drop
        } else if rng.chance(dup) {
            Fate::Duplicate
        } else if rng.chance(reorder) {
            Fate::Delay(Duration::from_millis(1 + rng.next_u64() % 30))
        } else {
            Fate::Deliver
        }
    })
}
