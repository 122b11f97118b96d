//! A client of tickwire written against `docs/PROTOCOL.md` alone, below the crate's `Client`:
//! the handshake of §3 on a plain `UdpSocket`, returning the session keys, so that a tool can
//! then seal packets of its choosing. Shared by `examples/attack.rs` (its cheaters) and
//! `examples/shard_bench.rs` (its cheap load generator), included by both with `#[path]`.
// Each example uses its own part of this module.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use tickwire::crypto::{
    derive_session_keys, macs_equal, transcript_hash, EphemeralKey, SessionKeys, FINISHED_LEN,
    PUBLIC_KEY_LEN,
};
use tickwire::endpoint::handshake::{
    auth_datagram, client_auth, finished_datagram, COOKIE_LEN, MIN_CLIENT_AUTH,
    SERVER_FINISHED_DATA,
};
use tickwire::pipeline::seal::packet_number;
use tickwire::pipeline::Decoder;
use tickwire::wire::{Body, Flags, Packet, PacketType, TypeFields};
use tickwire::ServerKey;

/// A finished handshake: the socket (connected to the server, blocking), the keys, the
/// client id the server gave, and what the handshake cost.
pub struct Handshake {
    /// Bound to the client's address and connected to the server's.
    pub sock: UdpSocket,
    /// The session keys (`client_to_server` seals what this side sends).
    pub keys: SessionKeys,
    /// The client id from the server's finished datagram.
    pub id: u64,
    /// When the handshake began.
    pub started: Instant,
    /// Datagrams and octets sent, octets received, stateless retries answered.
    pub sends: u64,
    pub sent: u64,
    pub received: u64,
    pub retries: u32,
}

/// Runs the handshake of `docs/PROTOCOL.md` §3 with the server at `target`, whose key is
/// `key`, from a socket bound to `ip` (any port), answering a stateless retry; 10 s at most.
pub fn handshake(ip: Ipv4Addr, target: SocketAddr, key: &ServerKey) -> Result<Handshake, String> {
    let sock = UdpSocket::bind((ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
    sock.connect(target).map_err(|e| format!("connect: {e}"))?;
    let started = Instant::now();
    let mut ex = Exchange {
        sock: &sock,
        deadline: started + Duration::from_secs(10),
        sends: 0,
        sent: 0,
        received: 0,
    };
    let ephemeral = EphemeralKey::generate();
    let first = client_auth(ephemeral.public_bytes(), &[], None);
    debug_assert_eq!(first, auth_with_cookie(ephemeral.public_bytes(), &[], &[]));
    // The AUTH exchange, with the stateless retry.
    let mut retries = 0u32;
    let keys = ex.run(first, "server AUTH", |auth, reply| {
        let packet = Packet::parse(reply).ok()?;
        match packet.body {
            Body::Auth(f) if f.public_key.is_empty() => {
                let cookie = f.certificate.unwrap_or(&[]);
                (cookie.len() == COOKIE_LEN && retries < 8).then(|| {
                    retries += 1;
                    Step::Resend(auth_with_cookie(ephemeral.public_bytes(), &[], cookie))
                })
            }
            Body::Auth(f) => {
                let cert = f.certificate.unwrap_or(&[]);
                if key
                    .verify_certificate(cert, ephemeral.public_bytes(), f.public_key)
                    .is_err()
                {
                    return Some(Step::Fail(
                        "the server's certificate does not verify".into(),
                    ));
                }
                let Ok(shared) = ephemeral.shared_secret(f.public_key) else {
                    return Some(Step::Fail("the server's key is not a P-256 point".into()));
                };
                // The transcript covers the AUTH that was answered (with its cookie).
                let transcript = transcript_hash(auth, reply);
                Some(Step::Done(derive_session_keys(&shared, &transcript)))
            }
            Body::Data {
                fields: TypeFields::Error(code),
                data,
            } if !packet.header.flags.contains(Flags::ENCRYPTED) => Some(refused(code, data)),
            _ => None,
        }
    })?;
    // The finished exchange.
    let finished = finished_datagram(&keys.client_to_server, &keys.client_finished);
    let id = ex.run(finished, "server finished", |_, reply| {
        let packet = Packet::parse(reply).ok()?;
        let Body::Data { fields, data } = packet.body else {
            return None;
        };
        if let TypeFields::Error(code) = fields {
            if !packet.header.flags.contains(Flags::ENCRYPTED) {
                return Some(refused(code, data));
            }
        }
        let is_finished = packet.header.packet_type == PacketType::Ack
            && packet.header.flags == Flags::ENCRYPTED
            && packet_number(&packet.header) == 0
            && data.len() == SERVER_FINISHED_DATA + 16;
        if !is_finished {
            return None;
        }
        let mut sealed = data.to_vec();
        let mut decoder = Decoder::with_limit(0);
        let opened = decoder
            .open(
                &packet.header,
                &fields,
                &mut sealed,
                Some(&keys.server_to_client),
            )
            .ok()?;
        let (mac, id) = opened.plaintext.split_at(FINISHED_LEN);
        if !macs_equal(mac, &keys.server_finished) {
            return Some(Step::Fail("the server's finished MAC is wrong".into()));
        }
        Some(Step::Done(u64::from_be_bytes(
            id.try_into().expect("8 octets"),
        )))
    })?;
    let (sends, sent, received) = (ex.sends, ex.sent, ex.received);
    Ok(Handshake {
        sock,
        keys,
        id,
        started,
        sends,
        sent,
        received,
        retries,
    })
}

/// What a reply to a handshake datagram leads to.
enum Step<T> {
    /// Send this datagram instead, from now on (the backoff starts again).
    Resend(Vec<u8>),
    /// The exchange is over.
    Done(T),
    /// The handshake failed.
    Fail(String),
}

/// The answer to an unsealed ERROR: the server refused the handshake.
fn refused<T>(code: impl std::fmt::Display, data: &[u8]) -> Step<T> {
    Step::Fail(format!(
        "refused with {code}: {}",
        String::from_utf8_lossy(data)
    ))
}

/// One step of the handshake: a datagram sent until a reply settles it, 250 ms then doubling
/// up to 1 s between sends, until the handshake's deadline; counts what it sends and reads.
struct Exchange<'a> {
    sock: &'a UdpSocket,
    deadline: Instant,
    sends: u64,
    sent: u64,
    received: u64,
}

impl Exchange<'_> {
    /// Sends `datagram` and hands every reply to `on` (with the datagram it answers) until
    /// `on` says what follows; `None` from `on` ignores the reply.
    fn run<T>(
        &mut self,
        mut datagram: Vec<u8>,
        what: &str,
        mut on: impl FnMut(&[u8], &[u8]) -> Option<Step<T>>,
    ) -> Result<T, String> {
        let mut buf = vec![0u8; 2048];
        let mut interval = Duration::from_millis(250);
        'send: loop {
            if Instant::now() >= self.deadline {
                return Err(format!("no {what} within 10 s"));
            }
            self.sent += self
                .sock
                .send(&datagram)
                .map_err(|e| format!("send: {e}"))? as u64;
            self.sends += 1;
            let resend_at = (Instant::now() + interval).min(self.deadline);
            interval = (interval * 2).min(Duration::from_secs(1));
            while let Some(n) = recv_until(self.sock, resend_at, &mut buf) {
                self.received += n as u64;
                match on(&datagram, &buf[..n]) {
                    None => {}
                    Some(Step::Resend(d)) => {
                        datagram = d;
                        interval = Duration::from_millis(250);
                        continue 'send;
                    }
                    Some(Step::Done(t)) => return Ok(t),
                    Some(Step::Fail(why)) => return Err(why),
                }
            }
        }
    }
}

/// The client AUTH that answers a stateless retry: the same ephemeral key, and the cookie in
/// the hello (`u16 token length || token || ticket length (0: none) || cookie length ||
/// cookie || zero padding` to a 160-octet datagram). Without a cookie it is the AUTH that
/// `client_auth` writes.
pub fn auth_with_cookie(public_key: &[u8; PUBLIC_KEY_LEN], token: &[u8], cookie: &[u8]) -> Vec<u8> {
    let mut hello = Vec::with_capacity(MIN_CLIENT_AUTH);
    hello.extend_from_slice(&(token.len() as u16).to_be_bytes());
    hello.extend_from_slice(token);
    hello.push(0); // no ticket
    if !cookie.is_empty() {
        hello.push(cookie.len() as u8);
        hello.extend_from_slice(cookie);
    }
    let fixed = 4 + 2 + PUBLIC_KEY_LEN + 2;
    if fixed + hello.len() < MIN_CLIENT_AUTH {
        hello.resize(MIN_CLIENT_AUTH - fixed, 0);
    }
    auth_datagram(public_key, &hello)
}

/// Waits for one datagram on a connected socket until `until`.
pub fn recv_until(sock: &UdpSocket, until: Instant, buf: &mut [u8]) -> Option<usize> {
    let wait = until.saturating_duration_since(Instant::now());
    sock.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .ok()?;
    sock.recv(buf).ok()
}
