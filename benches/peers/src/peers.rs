//! One small synchronous facade over each transport, so that every scenario is written once.
//!
//! - A [`ServerSide`] is pumped by one thread: `pump(max_wait, on_msg)` does the socket work,
//!   waits at most `max_wait` for something to arrive, and hands every delivered message to
//!   `on_msg`.
//! - A [`ClientSide`] sends (`Unreliable` or `Reliable` = reliable-ordered) and is pumped the
//!   same way (what it receives is dropped).
//!
//! Each adapter uses its library the way the library's documentation shows; where a library
//! needs something extra to work in these scenarios, the adapter says so (see `laminar`).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How a message is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Unreliable,
    /// Reliable and ordered.
    Reliable,
}

pub trait ServerSide: Send {
    fn pump(&mut self, max_wait: Duration, on_msg: &mut dyn FnMut(&[u8]));
}

pub trait ClientSide: Send {
    fn pump(&mut self, max_wait: Duration);
    fn connected(&self) -> bool;
    /// False when the transport refused the message (full queue, too large, not connected).
    fn send(&mut self, mode: Mode, data: &[u8]) -> bool;
}

/// Makes a client connected to the given address (the server, or a proxy in front of it).
pub type ClientFactory = Arc<dyn Fn(SocketAddr) -> Box<dyn ClientSide> + Send + Sync>;

pub struct ServerHandle {
    pub server: Box<dyn ServerSide>,
    pub connect: ClientFactory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Tickwire,
    Laminar,
    Renet,
    Quinn,
}

pub const PEERS: [Peer; 4] = [Peer::Tickwire, Peer::Laminar, Peer::Renet, Peer::Quinn];

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Tickwire => "tickwire",
            Peer::Laminar => "laminar",
            Peer::Renet => "renet",
            Peer::Quinn => "quinn",
        }
    }

    /// A server bound to `bind`; `public` lists every address clients may dial (the server's
    /// own and a proxy's), which renet's netcode checks in its connect tokens.
    pub fn server(self, bind: SocketAddr, public: &[SocketAddr]) -> Result<ServerHandle, String> {
        match self {
            Peer::Tickwire => tw::server(bind),
            Peer::Laminar => lam::server(bind),
            Peer::Renet => ren::server(bind, public),
            Peer::Quinn => qn::server(bind),
        }
    }

    /// The largest message the scenarios ask this peer to carry.
    pub fn max_message(self) -> usize {
        match self {
            Peer::Tickwire => 1 << 20,
            Peer::Laminar => lam::MAX_FRAGMENTS as usize * lam::FRAGMENT_SIZE as usize,
            Peer::Renet | Peer::Quinn => usize::MAX,
        }
    }
}

/// Waits until `sock` is readable or `max_wait` passes (for libraries that own a plain
/// non-blocking socket and have no wait of their own).
fn wait_readable(fd: i32, max_wait: Duration) {
    if max_wait.is_zero() {
        return;
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: max_wait.as_secs() as libc::time_t,
        tv_nsec: max_wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    unsafe {
        libc::ppoll(&mut pfd, 1, &ts, std::ptr::null());
    }
}

// ------------------------------------------------------------------------------------------
pub mod tw {
    use super::*;
    use tickwire::io::{ClientDriver, ServerDriver, SocketConfig};
    use tickwire::{
        ChannelId, ClientConfig, ConnectionConfig, Event, ServerConfig, ServerIdentity,
    };

    const UNRELIABLE: ChannelId = ChannelId(0);
    const RELIABLE_ORDERED: ChannelId = ChannelId(3);

    /// `--os-buffers`: tickwire keeps the system's socket buffer sizes (as the other peers do)
    /// instead of asking for 2 MiB.
    pub static OS_BUFFERS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    fn socket() -> SocketConfig {
        if OS_BUFFERS.load(std::sync::atomic::Ordering::Relaxed) {
            SocketConfig {
                recv_buffer_bytes: None,
                send_buffer_bytes: None,
                ..SocketConfig::default()
            }
        } else {
            SocketConfig::default()
        }
    }

    fn connection() -> ConnectionConfig {
        // Messages above one packet (`MAX_MESSAGE_SIZE`) go in parts: the 250 KiB case
        // (256,000 octets) is one of them.
        ConnectionConfig {
            max_message_size: 1 << 20,
            ..ConnectionConfig::default()
        }
    }

    struct Server(ServerDriver);

    impl ServerSide for Server {
        fn pump(&mut self, max_wait: Duration, on_msg: &mut dyn FnMut(&[u8])) {
            let mut ev = self.0.run_until_event(Some(max_wait)).ok().flatten();
            while let Some(e) = ev {
                if let Event::Message { data, .. } = e {
                    on_msg(&data);
                    self.0.recycle(data);
                }
                ev = self.0.poll_event();
            }
        }
    }

    struct Client {
        driver: ClientDriver,
        connected: bool,
    }

    impl Client {
        fn on(&mut self, e: Event) {
            match e {
                Event::Connected { .. } => self.connected = true,
                Event::Disconnected { .. } => self.connected = false,
                Event::Message { data, .. } => self.driver.recycle(data),
                _ => {}
            }
        }
    }

    impl ClientSide for Client {
        fn pump(&mut self, max_wait: Duration) {
            if let Some(e) = self.driver.run_until_event(Some(max_wait)).ok().flatten() {
                self.on(e);
            }
            while let Some(e) = self.driver.poll_event() {
                self.on(e);
            }
        }
        fn connected(&self) -> bool {
            self.connected
        }
        fn send(&mut self, mode: Mode, data: &[u8]) -> bool {
            let ch = match mode {
                Mode::Unreliable => UNRELIABLE,
                Mode::Reliable => RELIABLE_ORDERED,
            };
            self.driver.send(ch, data).is_ok()
        }
    }

    pub fn server(bind: SocketAddr) -> Result<ServerHandle, String> {
        let mut config = ServerConfig::new(ServerIdentity::generate());
        config.connection = connection();
        config.max_clients = 512;
        // Every client of the bench comes from 127.0.0.1.
        config.max_clients_per_ip = 512;
        config.max_pending_per_ip = 512;
        let driver =
            ServerDriver::bind(bind, config, socket()).map_err(|e| e.to_string())?;
        let key = driver.server().public_key();
        let connect: ClientFactory = Arc::new(move |addr| {
            let mut config = ClientConfig::new(key);
            config.connection = connection();
            let driver = ClientDriver::connect(config, addr, socket())
                .expect("tickwire client");
            Box::new(Client {
                driver,
                connected: false,
            }) as Box<dyn ClientSide>
        });
        Ok(ServerHandle {
            server: Box::new(Server(driver)),
            connect,
        })
    }
}

// ------------------------------------------------------------------------------------------
/// laminar 0.5: `Socket::bind_with_config`, `send(Packet)`, `manual_poll(now)`, `recv()`.
///
/// laminar has no wait of its own and does not expose its socket: its `start_polling` loop
/// sleeps 1 ms between polls, and so does this adapter when a poll found nothing.
///
/// laminar acknowledges only on reliable packets going the other way (heartbeats carry no
/// acks), and a connection with more than `max_packets_in_flight` unacknowledged reliable
/// packets is dropped. One-way reliable traffic therefore needs replies: the server adapter
/// sends a 1-byte reliable packet back to each client that sent it reliable data, at most once
/// per 10 ms per client ("ack carrier"). Its cost is counted as laminar's.
pub mod lam {
    use super::*;
    use laminar::{Config, DeliveryGuarantee, Packet, Socket, SocketEvent};
    use std::collections::HashMap;

    pub const FRAGMENT_SIZE: u16 = 1024;
    pub const MAX_FRAGMENTS: u8 = 255;
    const IDLE_SLEEP: Duration = Duration::from_millis(1);
    const ACK_CARRIER_EVERY: Duration = Duration::from_millis(10);

    fn config() -> Config {
        Config {
            heartbeat_interval: Some(Duration::from_millis(250)),
            idle_connection_timeout: Duration::from_secs(10),
            max_fragments: MAX_FRAGMENTS,
            fragment_size: FRAGMENT_SIZE,
            max_packet_size: MAX_FRAGMENTS as usize * FRAGMENT_SIZE as usize,
            max_unestablished_connections: 1024,
            socket_event_buffer_size: 1 << 16,
            ..Config::default()
        }
    }

    struct Server {
        socket: Socket,
        /// Per client: the last ack carrier and whether reliable data arrived since.
        carriers: HashMap<SocketAddr, (Instant, bool)>,
    }

    impl Server {
        fn drain(&mut self, on_msg: &mut dyn FnMut(&[u8])) -> bool {
            let mut any = false;
            while let Some(ev) = self.socket.recv() {
                any = true;
                if let SocketEvent::Packet(p) = ev {
                    on_msg(p.payload());
                    if p.delivery_guarantee() == DeliveryGuarantee::Reliable {
                        let epoch = Instant::now() - ACK_CARRIER_EVERY;
                        self.carriers.entry(p.addr()).or_insert((epoch, false)).1 = true;
                    }
                }
            }
            let now = Instant::now();
            for (addr, (last, pending)) in self.carriers.iter_mut() {
                if *pending && now.duration_since(*last) >= ACK_CARRIER_EVERY {
                    let _ = self
                        .socket
                        .send(Packet::reliable_unordered(*addr, vec![0]));
                    *last = now;
                    *pending = false;
                }
            }
            any
        }
    }

    impl ServerSide for Server {
        fn pump(&mut self, max_wait: Duration, on_msg: &mut dyn FnMut(&[u8])) {
            self.socket.manual_poll(Instant::now());
            if !self.drain(on_msg) && !max_wait.is_zero() {
                std::thread::sleep(max_wait.min(IDLE_SLEEP));
                self.socket.manual_poll(Instant::now());
                self.drain(on_msg);
            }
        }
    }

    struct Client {
        socket: Socket,
        server: SocketAddr,
    }

    impl ClientSide for Client {
        fn pump(&mut self, max_wait: Duration) {
            self.socket.manual_poll(Instant::now());
            let mut any = false;
            while self.socket.recv().is_some() {
                any = true;
            }
            if !any && !max_wait.is_zero() {
                std::thread::sleep(max_wait.min(IDLE_SLEEP));
                self.socket.manual_poll(Instant::now());
                while self.socket.recv().is_some() {}
            }
        }
        fn connected(&self) -> bool {
            true // connectionless: a "connection" exists once packets flow
        }
        fn send(&mut self, mode: Mode, data: &[u8]) -> bool {
            let p = match mode {
                Mode::Unreliable => Packet::unreliable(self.server, data.to_vec()),
                Mode::Reliable => Packet::reliable_ordered(self.server, data.to_vec(), None),
            };
            self.socket.send(p).is_ok()
        }
    }

    pub fn server(bind: SocketAddr) -> Result<ServerHandle, String> {
        let socket = Socket::bind_with_config(bind, config()).map_err(|e| e.to_string())?;
        let connect: ClientFactory = Arc::new(move |addr| {
            let socket =
                Socket::bind_with_config("127.0.0.1:0", config()).expect("laminar client");
            Box::new(Client {
                socket,
                server: addr,
            }) as Box<dyn ClientSide>
        });
        Ok(ServerHandle {
            server: Box::new(Server {
                socket,
                carriers: HashMap::new(),
            }),
            connect,
        })
    }
}

// ------------------------------------------------------------------------------------------
/// renet 2 with the renet_netcode transport (the documented pairing): each pass is
/// `update(dt)`, `transport.update(dt)`, read messages, `transport.send_packets`. The transport
/// owns a plain non-blocking socket; the adapter waits on a clone of it with `ppoll`.
/// Channels: `DefaultChannel::config()` (0 unreliable, 2 reliable-ordered with the default
/// 300 ms resend time).
mod ren {
    use super::*;
    use renet::{ClientId, ConnectionConfig, DefaultChannel, RenetClient, RenetServer};
    use renet_netcode::{
        ClientAuthentication, NetcodeClientTransport, NetcodeServerTransport,
        ServerAuthentication, ServerConfig,
    };

    const PROTOCOL_ID: u64 = 0x7469_636b;
    static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

    fn unix_now() -> Duration {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
    }

    fn conn_config() -> ConnectionConfig {
        ConnectionConfig::default()
    }

    struct Server {
        server: RenetServer,
        transport: NetcodeServerTransport,
        fd_sock: UdpSocket,
        last: Instant,
        ids: Vec<ClientId>,
    }

    impl Server {
        fn pass(&mut self, on_msg: &mut dyn FnMut(&[u8])) -> bool {
            let now = Instant::now();
            let dt = now - self.last;
            self.last = now;
            self.server.update(dt);
            let _ = self.transport.update(dt, &mut self.server);
            while self.server.get_event().is_some() {}
            let mut any = false;
            self.ids.clear();
            self.ids.extend(self.server.clients_id_iter());
            for &id in &self.ids {
                for ch in [DefaultChannel::Unreliable, DefaultChannel::ReliableOrdered] {
                    let ch = u8::from(ch);
                    while let Some(m) = self.server.receive_message(id, ch) {
                        on_msg(&m);
                        any = true;
                    }
                }
            }
            self.transport.send_packets(&mut self.server);
            any
        }
    }

    impl ServerSide for Server {
        fn pump(&mut self, max_wait: Duration, on_msg: &mut dyn FnMut(&[u8])) {
            if !self.pass(on_msg) && !max_wait.is_zero() {
                wait_readable(self.fd_sock.as_raw_fd(), max_wait);
                self.pass(on_msg);
            }
        }
    }

    struct Client {
        client: RenetClient,
        transport: NetcodeClientTransport,
        fd_sock: UdpSocket,
        last: Instant,
    }

    impl Client {
        fn pass(&mut self) -> bool {
            let now = Instant::now();
            let dt = now - self.last;
            self.last = now;
            self.client.update(dt);
            let _ = self.transport.update(dt, &mut self.client);
            let mut any = false;
            for ch in [DefaultChannel::Unreliable, DefaultChannel::ReliableOrdered] {
                let ch = u8::from(ch);
                while self.client.receive_message(ch).is_some() {
                    any = true;
                }
            }
            let _ = self.transport.send_packets(&mut self.client);
            any
        }
    }

    impl ClientSide for Client {
        fn pump(&mut self, max_wait: Duration) {
            if !self.pass() && !max_wait.is_zero() {
                wait_readable(self.fd_sock.as_raw_fd(), max_wait);
                self.pass();
            }
        }
        fn connected(&self) -> bool {
            self.client.is_connected()
        }
        fn send(&mut self, mode: Mode, data: &[u8]) -> bool {
            let ch: u8 = match mode {
                Mode::Unreliable => DefaultChannel::Unreliable.into(),
                Mode::Reliable => DefaultChannel::ReliableOrdered.into(),
            };
            if !self.client.can_send_message(ch, data.len()) {
                return false;
            }
            self.client
                .send_message(ch, bytes::Bytes::copy_from_slice(data));
            true
        }
    }

    pub fn server(bind: SocketAddr, public: &[SocketAddr]) -> Result<ServerHandle, String> {
        let socket = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        let fd_sock = socket.try_clone().map_err(|e| e.to_string())?;
        let mut public_addresses = vec![socket.local_addr().unwrap()];
        public_addresses.extend(public.iter().copied());
        public_addresses.dedup();
        let config = ServerConfig {
            current_time: unix_now(),
            max_clients: 512,
            protocol_id: PROTOCOL_ID,
            public_addresses,
            authentication: ServerAuthentication::Unsecure,
        };
        let transport = NetcodeServerTransport::new(config, socket).map_err(|e| e.to_string())?;
        let connect: ClientFactory = Arc::new(move |addr| {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("renet client socket");
            let fd_sock = socket.try_clone().expect("clone");
            let auth = ClientAuthentication::Unsecure {
                protocol_id: PROTOCOL_ID,
                client_id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
                server_addr: addr,
                user_data: None,
            };
            let transport =
                NetcodeClientTransport::new(unix_now(), auth, socket).expect("renet transport");
            Box::new(Client {
                client: RenetClient::new(conn_config()),
                transport,
                fd_sock,
                last: Instant::now(),
            }) as Box<dyn ClientSide>
        });
        Ok(ServerHandle {
            server: Box::new(Server {
                server: RenetServer::new(conn_config()),
                transport,
                fd_sock,
                last: Instant::now(),
                ids: Vec::new(),
            }),
            connect,
        })
    }
}

// ------------------------------------------------------------------------------------------
/// quinn 0.11 on tokio (one worker thread for the server, one shared by a scenario's clients),
/// rustls with the ring provider, a self-signed certificate from rcgen that the clients trust.
/// Unreliable = QUIC DATAGRAM frames (`send_datagram` / `read_datagram`); reliable-ordered =
/// one long-lived unidirectional stream per connection carrying length-prefixed messages.
/// The sync facade hands messages from the runtime to the pumping thread over a channel.
mod qn {
    use super::*;
    use bytes::Bytes;
    use quinn::{ClientConfig, Endpoint, ServerConfig};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::runtime::Runtime;

    fn runtime(name: &str) -> Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("tokio runtime")
    }

    struct Server {
        rx: mpsc::Receiver<Bytes>,
        _endpoint: Endpoint,
        _rt: Runtime,
    }

    impl ServerSide for Server {
        fn pump(&mut self, max_wait: Duration, on_msg: &mut dyn FnMut(&[u8])) {
            let first = if max_wait.is_zero() {
                self.rx.try_recv().ok()
            } else {
                self.rx.recv_timeout(max_wait).ok()
            };
            if let Some(m) = first {
                on_msg(&m);
                while let Ok(m) = self.rx.try_recv() {
                    on_msg(&m);
                }
            }
        }
    }

    struct Client {
        conn: Option<quinn::Connection>,
        stream: Option<quinn::SendStream>,
        _endpoint: Endpoint,
        frame: Vec<u8>,
        rt: Arc<Runtime>,
    }

    impl ClientSide for Client {
        fn pump(&mut self, max_wait: Duration) {
            // The runtime drives the connection on its own thread.
            if !max_wait.is_zero() {
                std::thread::sleep(max_wait);
            }
        }
        fn connected(&self) -> bool {
            self.conn.as_ref().is_some_and(|c| c.close_reason().is_none())
        }
        fn send(&mut self, mode: Mode, data: &[u8]) -> bool {
            let Some(conn) = &self.conn else { return false };
            match mode {
                Mode::Unreliable => conn.send_datagram(Bytes::copy_from_slice(data)).is_ok(),
                Mode::Reliable => {
                    let Some(stream) = self.stream.as_mut() else {
                        return false;
                    };
                    self.frame.clear();
                    self.frame
                        .extend_from_slice(&(data.len() as u32).to_le_bytes());
                    self.frame.extend_from_slice(data);
                    let frame = &self.frame;
                    self.rt.block_on(async {
                        tokio::time::timeout(Duration::from_secs(5), stream.write_all(frame))
                            .await
                            .is_ok_and(|r| r.is_ok())
                    })
                }
            }
        }
    }

    pub fn server(bind: SocketAddr) -> Result<ServerHandle, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .map_err(|e| e.to_string())?;
        let cert_der: CertificateDer<'static> = cert.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
        let server_config = ServerConfig::with_single_cert(vec![cert_der.clone()], key)
            .map_err(|e| e.to_string())?;
        let rt = runtime("srv-quinn");
        let endpoint = {
            let _guard = rt.enter();
            Endpoint::server(server_config, bind).map_err(|e| e.to_string())?
        };
        let (tx, rx) = mpsc::channel::<Bytes>();
        let ep = endpoint.clone();
        rt.spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    let c2 = conn.clone();
                    let tx2 = tx.clone();
                    tokio::spawn(async move {
                        while let Ok(d) = c2.read_datagram().await {
                            if tx2.send(d).is_err() {
                                break;
                            }
                        }
                    });
                    while let Ok(mut recv) = conn.accept_uni().await {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let mut len = [0u8; 4];
                            while recv.read_exact(&mut len).await.is_ok() {
                                let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
                                if recv.read_exact(&mut buf).await.is_err()
                                    || tx.send(Bytes::from(buf)).is_err()
                                {
                                    break;
                                }
                            }
                        });
                    }
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der).map_err(|e| e.to_string())?;
        let client_config =
            ClientConfig::with_root_certificates(Arc::new(roots)).map_err(|e| e.to_string())?;
        // One runtime thread for all clients of this server (made on first use).
        let client_rt: Arc<std::sync::Mutex<Option<Arc<Runtime>>>> = Default::default();
        static CLIENTS: AtomicUsize = AtomicUsize::new(0);
        let connect: ClientFactory = Arc::new(move |addr| {
            CLIENTS.fetch_add(1, Ordering::Relaxed);
            let rt = client_rt
                .lock()
                .unwrap()
                .get_or_insert_with(|| Arc::new(runtime("cli-quinn")))
                .clone();
            let mut endpoint = {
                let _guard = rt.enter();
                Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("quinn client endpoint")
            };
            endpoint.set_default_client_config(client_config.clone());
            let ep = endpoint.clone();
            let res = rt.block_on(async move {
                tokio::time::timeout(Duration::from_secs(20), async move {
                    let conn = ep.connect(addr, "localhost").ok()?.await.ok()?;
                    let stream = conn.open_uni().await.ok()?;
                    Some((conn, stream))
                })
                .await
                .ok()
                .flatten()
            });
            let (conn, stream) = match res {
                Some((c, s)) => (Some(c), Some(s)),
                None => (None, None),
            };
            Box::new(Client {
                rt,
                conn,
                stream,
                _endpoint: endpoint,
                frame: Vec::new(),
            }) as Box<dyn ClientSide>
        });
        Ok(ServerHandle {
            server: Box::new(Server {
                rx,
                _endpoint: endpoint,
                _rt: rt,
            }),
            connect,
        })
    }
}
