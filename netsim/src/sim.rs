//! The simulator: tickwire's sans-IO server and clients over simulated [`Link`]s, in virtual
//! time.
//!
//! Each step jumps to the earliest deadline of every endpoint and every link, delivers what is
//! due, runs the timers that are due, and drains every endpoint's output into its link. Nothing
//! reads the clock and every random choice comes from the seed, so a run replays exactly from
//! its seed. A bound on steps turns a livelock into an error instead of a hang.
//!
//! ```
//! use netsim::model::LinkConfig;
//! use netsim::sim::Simulation;
//! use std::time::Duration;
//! use tickwire::{ChannelId, ServerConfig, ServerIdentity};
//!
//! let link = LinkConfig::perfect().with_delay(Duration::from_millis(20)).with_loss(0.1);
//! let mut sim = Simulation::new(ServerConfig::new(ServerIdentity::generate()), 2, link, 7);
//! sim.run_until_connected(Duration::from_secs(10)).unwrap();
//! let now = sim.now();
//! sim.client_mut(0).send(now, ChannelId(3), b"hi").unwrap();
//! sim.run_for(Duration::from_secs(2)).unwrap();
//! assert_eq!(sim.take_server_messages().len(), 1);
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tickwire::{Client, ClientConfig, ClientId, Event, Server, ServerConfig};

use crate::model::{Datagram, Link, LinkConfig};

/// Why a simulation stopped with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimError {
    /// More steps than the bound: something keeps asking to run without time passing.
    Livelock {
        /// The seed that replays the run.
        seed: u64,
        /// Steps taken.
        steps: u64,
    },
    /// A condition was not met in the simulated time given.
    Timeout {
        /// The seed that replays the run.
        seed: u64,
        /// What was waited for.
        what: &'static str,
    },
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Livelock { seed, steps } => {
                write!(f, "livelock after {steps} steps (replay with seed {seed})")
            }
            Self::Timeout { seed, what } => {
                write!(f, "timed out waiting for {what} (replay with seed {seed})")
            }
        }
    }
}

impl std::error::Error for SimError {}

/// One simulated client: its endpoint, its address and its two links.
pub struct SimClient {
    /// The client's address.
    pub addr: SocketAddr,
    /// The sans-IO client.
    pub client: Client,
    /// Client to server.
    pub up: Link,
    /// Server to client.
    pub down: Link,
    /// Events taken from the client, oldest first.
    pub events: VecDeque<Event>,
}

/// A server and its clients over simulated links.
pub struct Simulation {
    now: Instant,
    start: Instant,
    seed: u64,
    steps: u64,
    max_steps: u64,
    server: Server,
    server_addr: SocketAddr,
    server_events: VecDeque<Event>,
    clients: Vec<SimClient>,
    buf: Vec<u8>,
}

impl fmt::Debug for Simulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulation")
            .field("seed", &self.seed)
            .field("elapsed", &self.elapsed())
            .field("steps", &self.steps)
            .field("clients", &self.clients.len())
            .finish()
    }
}

impl Simulation {
    /// A server and `clients` clients (pinning the server's key, default settings), each
    /// with `link` in both directions; every link's randomness derives from `seed`.
    pub fn new(server_config: ServerConfig, clients: usize, link: LinkConfig, seed: u64) -> Self {
        let key = server_config.identity.public_key();
        let mut sim = Self::empty(server_config, seed);
        for _ in 0..clients {
            sim.add_client(ClientConfig::new(key), link.clone(), link.clone());
        }
        sim
    }

    /// A server and no client yet.
    pub fn empty(server_config: ServerConfig, seed: u64) -> Self {
        let now = Instant::now();
        Self {
            now,
            start: now,
            seed,
            steps: 0,
            max_steps: 50_000_000,
            server: Server::new(server_config).expect("valid server configuration"),
            server_addr: SocketAddr::from(([10, 0, 0, 1], 4000)),
            server_events: VecDeque::new(),
            clients: Vec::new(),
            buf: vec![0; 2048],
        }
    }

    /// Adds a client that starts connecting now, with its own links; returns its index.
    pub fn add_client(&mut self, config: ClientConfig, up: LinkConfig, down: LinkConfig) -> usize {
        let i = self.clients.len();
        let addr = SocketAddr::from(([10, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8], 5000));
        let salt = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let client = Client::connect(config, self.server_addr, self.now)
            .expect("valid client configuration");
        self.clients.push(SimClient {
            addr,
            client,
            up: Link::new(up, self.seed ^ salt),
            down: Link::new(down, self.seed ^ salt.rotate_left(17)),
            events: VecDeque::new(),
        });
        i
    }

    /// The bound on steps (default 50 million).
    pub fn set_max_steps(&mut self, max: u64) {
        self.max_steps = max;
    }

    /// The seed of the run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The simulated time now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The server, to send or operate on it.
    pub fn server_mut(&mut self) -> &mut Server {
        &mut self.server
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.server_addr
    }

    /// Client `i`.
    pub fn client(&self, i: usize) -> &Client {
        &self.clients[i].client
    }

    /// Client `i`, to send on it.
    pub fn client_mut(&mut self, i: usize) -> &mut Client {
        &mut self.clients[i].client
    }

    /// Every simulated client.
    pub fn clients(&self) -> &[SimClient] {
        &self.clients
    }

    /// Every simulated client, mutably (to change a link or an address).
    pub fn clients_mut(&mut self) -> &mut [SimClient] {
        &mut self.clients
    }

    /// Events taken from the server, oldest first.
    pub fn server_events(&mut self) -> &mut VecDeque<Event> {
        &mut self.server_events
    }

    /// Takes the server's message events: (client, channel, data).
    pub fn take_server_messages(&mut self) -> Vec<(ClientId, u8, Vec<u8>)> {
        let mut out = Vec::new();
        self.server_events.retain(|e| match e {
            Event::Message {
                client,
                channel,
                data,
            } => {
                out.push((*client, channel.0, data.clone()));
                false
            }
            _ => true,
        });
        out
    }

    /// Takes client `i`'s message events: (channel, data).
    pub fn take_client_messages(&mut self, i: usize) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        self.clients[i].events.retain(|e| match e {
            Event::Message { channel, data, .. } => {
                out.push((channel.0, data.clone()));
                false
            }
            _ => true,
        });
        out
    }

    /// The earliest time anything has work.
    fn next_deadline(&self) -> Option<Instant> {
        let mut t = self.server.poll_timeout();
        let mut take = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for c in &self.clients {
            take(c.client.poll_timeout());
            take(c.up.next_deadline());
            take(c.down.next_deadline());
        }
        t
    }

    /// Drains every endpoint's datagrams into the links and its events into the queues.
    fn drain(&mut self) {
        let now = self.now;
        while let Some(t) = self.server.poll_transmit(now, &mut self.buf) {
            let data = self.buf[..t.len].to_vec();
            if let Some(c) = self.clients.iter_mut().find(|c| c.addr == t.destination) {
                c.down.send(
                    now,
                    Datagram {
                        from: self.server_addr,
                        to: t.destination,
                        data,
                    },
                );
            }
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push_back(e);
        }
        for c in &mut self.clients {
            while let Some(t) = c.client.poll_transmit(now, &mut self.buf) {
                let data = self.buf[..t.len].to_vec();
                c.up.send(
                    now,
                    Datagram {
                        from: c.addr,
                        to: t.destination,
                        data,
                    },
                );
            }
            while let Some(e) = c.client.poll_event() {
                c.events.push_back(e);
            }
        }
    }

    /// One step: jump to the earliest deadline (never past `limit`), deliver what is due, run
    /// due timers, drain the outputs. Returns false if nothing had any deadline.
    ///
    /// # Errors
    /// [`SimError::Livelock`] past the step bound.
    pub fn step(&mut self, limit: Instant) -> Result<bool, SimError> {
        self.drain();
        self.steps += 1;
        if self.steps > self.max_steps {
            return Err(SimError::Livelock {
                seed: self.seed,
                steps: self.steps,
            });
        }
        let Some(t) = self.next_deadline() else {
            self.now = self.now.max(limit);
            return Ok(false);
        };
        let t = t.min(limit);
        if t > self.now {
            self.now = t;
        }
        let now = self.now;
        let server_addr = self.server_addr;
        for c in &mut self.clients {
            while let Some(mut d) = c.down.poll_deliver(now) {
                c.client.handle_datagram(now, d.from, &mut d.data);
            }
            while let Some(mut d) = c.up.poll_deliver(now) {
                if d.to == server_addr {
                    self.server.handle_datagram(now, d.from, &mut d.data);
                }
            }
            if c.client.poll_timeout().is_some_and(|t| t <= now) {
                c.client.handle_timeout(now);
            }
        }
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        self.drain();
        Ok(true)
    }

    /// Runs until simulated time `until`.
    ///
    /// # Errors
    /// [`SimError::Livelock`] past the step bound.
    pub fn run_to(&mut self, until: Instant) -> Result<(), SimError> {
        while self.now < until {
            self.step(until)?;
        }
        self.drain();
        Ok(())
    }

    /// Runs for `d` of simulated time.
    ///
    /// # Errors
    /// [`SimError::Livelock`] past the step bound.
    pub fn run_for(&mut self, d: Duration) -> Result<(), SimError> {
        let until = self.now + d;
        self.run_to(until)
    }

    /// Runs until `cond` holds, at most `limit` of simulated time.
    ///
    /// # Errors
    /// [`SimError::Timeout`] if the condition does not hold in time, [`SimError::Livelock`]
    /// past the step bound.
    pub fn run_until(
        &mut self,
        limit: Duration,
        what: &'static str,
        mut cond: impl FnMut(&mut Self) -> bool,
    ) -> Result<(), SimError> {
        let end = self.now + limit;
        loop {
            if cond(self) {
                return Ok(());
            }
            if self.now >= end {
                return Err(SimError::Timeout {
                    seed: self.seed,
                    what,
                });
            }
            self.step(end)?;
        }
    }

    /// Runs until every client is connected.
    ///
    /// # Errors
    /// As [`Simulation::run_until`].
    pub fn run_until_connected(&mut self, limit: Duration) -> Result<(), SimError> {
        self.run_until(limit, "every client to connect", |s| {
            s.clients.iter().all(|c| c.client.is_connected())
        })
    }
}
