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
    let deadline = started + Duration::from_secs(10);
    let ephemeral = EphemeralKey::generate();
    let mut auth = client_auth(ephemeral.public_bytes(), &[], None);
    debug_assert_eq!(auth, auth_with_cookie(ephemeral.public_bytes(), &[], &[]));
    let (mut sends, mut sent, mut received, mut retries) = (0u64, 0u64, 0u64, 0u32);
    let mut buf = vec![0u8; 2048];
    let mut interval = Duration::from_millis(250);
    // The AUTH exchange, with the stateless retry.
    let keys = 'auth: loop {
        if Instant::now() >= deadline {
            return Err("no server AUTH within 10 s".into());
        }
        sent += sock.send(&auth).map_err(|e| format!("send: {e}"))? as u64;
        sends += 1;
        let resend_at = (Instant::now() + interval).min(deadline);
        interval = (interval * 2).min(Duration::from_secs(1));
        while let Some(n) = recv_until(&sock, resend_at, &mut buf) {
            received += n as u64;
            let Ok(packet) = Packet::parse(&buf[..n]) else {
                continue;
            };
            match packet.body {
                Body::Auth(f) if f.public_key.is_empty() => {
                    let cookie = f.certificate.unwrap_or(&[]);
                    if cookie.len() == COOKIE_LEN && retries < 8 {
                        auth = auth_with_cookie(ephemeral.public_bytes(), &[], cookie);
                        retries += 1;
                        interval = Duration::from_millis(250);
                        continue 'auth;
                    }
                }
                Body::Auth(f) => {
                    let cert = f.certificate.unwrap_or(&[]);
                    key.verify_certificate(cert, ephemeral.public_bytes(), f.public_key)
                        .map_err(|_| "the server's certificate does not verify")?;
                    let shared = ephemeral
                        .shared_secret(f.public_key)
                        .map_err(|_| "the server's key is not a P-256 point")?;
                    // The transcript covers the AUTH that was answered (with its cookie).
                    let transcript = transcript_hash(&auth, &buf[..n]);
                    break 'auth derive_session_keys(&shared, &transcript);
                }
                Body::Data {
                    fields: TypeFields::Error(code),
                    data,
                } if !packet.header.flags.contains(Flags::ENCRYPTED) => {
                    return Err(format!(
                        "refused with {code}: {}",
                        String::from_utf8_lossy(data)
                    ));
                }
                _ => {}
            }
        }
    };
    // The finished exchange.
    let finished = finished_datagram(&keys.client_to_server, &keys.client_finished);
    let mut interval = Duration::from_millis(250);
    let id = 'finished: loop {
        if Instant::now() >= deadline {
            return Err("no server finished within 10 s".into());
        }
        sent += sock.send(&finished).map_err(|e| format!("send: {e}"))? as u64;
        sends += 1;
        let resend_at = (Instant::now() + interval).min(deadline);
        interval = (interval * 2).min(Duration::from_secs(1));
        while let Some(n) = recv_until(&sock, resend_at, &mut buf) {
            received += n as u64;
            let Ok(packet) = Packet::parse(&buf[..n]) else {
                continue;
            };
            let Body::Data { fields, data } = packet.body else {
                continue;
            };
            if let TypeFields::Error(code) = fields {
                if !packet.header.flags.contains(Flags::ENCRYPTED) {
                    return Err(format!(
                        "refused with {code}: {}",
                        String::from_utf8_lossy(data)
                    ));
                }
            }
            let is_finished = packet.header.packet_type == PacketType::Ack
                && packet.header.flags == Flags::ENCRYPTED
                && packet_number(&packet.header) == 0
                && data.len() == SERVER_FINISHED_DATA + 16;
            if !is_finished {
                continue;
            }
            let mut sealed = data.to_vec();
            let mut decoder = Decoder::with_limit(0);
            let Ok(opened) = decoder.open(
                &packet.header,
                &fields,
                &mut sealed,
                Some(&keys.server_to_client),
            ) else {
                continue;
            };
            let (mac, id) = opened.plaintext.split_at(FINISHED_LEN);
            if !macs_equal(mac, &keys.server_finished) {
                return Err("the server's finished MAC is wrong".into());
            }
            break 'finished u64::from_be_bytes(id.try_into().expect("8 octets"));
        }
    };
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
