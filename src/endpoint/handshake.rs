//! The handshake's datagrams, shared by the server and the client.
//!
//! ```text
//! client                                   server
//!   AUTH(ephemeral key, client hello)  ->
//!                                      <-  AUTH(ephemeral key, certificate)
//!   ACK pn 0 sealed, Data = finished_c ->
//!                                      <-  ACK pn 0 sealed, Data = finished_s || client id
//! ```
//! Under handshake load the server may first answer with a *retry* (an AUTH with no key whose
//! certificate field is a [`COOKIE_LEN`]-octet cookie); the client then sends its AUTH again,
//! same key, with the cookie in its hello, and the handshake goes on from there.
//!
//! The client hello (AUTH's certificate field) is
//! `token length (16) | token | ticket length (8) | ticket | cookie length (8) | cookie |
//! zero padding`: the token is a
//! connect token (see [`crate::token`]), the ticket a resumption ticket (client id (64) then
//! HMAC-SHA256 under the old session's resumption secret over "tickwire v0 resume" and the
//! new client ephemeral key), and the padding makes the client's AUTH at least
//! [`MIN_CLIENT_AUTH`] octets, so that no reply of the server before the client proves its
//! address is larger than what it received.

use crate::crypto::{FINISHED_LEN, PUBLIC_KEY_LEN};
use crate::pipeline::{encode_into, fragment, PacketKey, Seal, SendOptions};
use crate::wire::{AckFields, AuthFields, Body, ErrorCode, Header, Packet, PacketType, TypeFields};

/// The smallest client AUTH the server answers: larger than the server's AUTH (138 octets)
/// and any ERROR it sends before the address is validated.
pub const MIN_CLIENT_AUTH: usize = 160;
/// The largest token a client hello carries.
pub const MAX_TOKEN: usize = 1024;
/// Length of the server's finished Data: the MAC then the client id.
pub const SERVER_FINISHED_DATA: usize = FINISHED_LEN + 8;

/// Length of a resumption ticket: client id then MAC.
pub const TICKET_LEN: usize = 8 + 32;

/// Length of a retry cookie: the server's clock in seconds when it was issued (u32), then the
/// first 16 octets of HMAC-SHA256 under the server's retry secret.
pub const COOKIE_LEN: usize = 4 + 16;

/// Label of the channel-configuration digest.
pub const CHANNELS_LABEL: &[u8] = b"tickwire v0 channels";

/// Length of the channel-configuration digest a client hello carries.
pub const CHANNELS_DIGEST_LEN: usize = 4;

/// The digest of a channel configuration: the first 4 octets of SHA-256(`CHANNELS_LABEL` ||
/// u16(channel count) || one octet per channel: 0 unreliable, 1 unreliable-sequenced,
/// 2 reliable-unordered, 3 reliable-ordered). Compression is a sender's choice and not part of
/// it.
pub fn channels_digest(channels: &[crate::ChannelConfig]) -> [u8; CHANNELS_DIGEST_LEN] {
    use crate::DeliveryMode;
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(CHANNELS_LABEL);
    h.update((channels.len() as u16).to_be_bytes());
    for c in channels {
        h.update([match c.mode {
            DeliveryMode::Unreliable => 0u8,
            DeliveryMode::UnreliableSequenced => 1,
            DeliveryMode::ReliableUnordered => 2,
            DeliveryMode::ReliableOrdered => 3,
        }]);
    }
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// Label of the retry cookie's MAC.
pub const COOKIE_LABEL: &[u8] = b"tickwire v0 retry";

/// Length of a retry datagram: header, Reserved, E = 0, C, cookie.
pub const RETRY_LEN: usize = 4 + 2 + 2 + COOKIE_LEN;

/// Writes the client's AUTH datagram: its ephemeral key and a hello carrying `token` and an
/// optional resumption `ticket`, padded to [`MIN_CLIENT_AUTH`] octets.
pub fn client_auth(
    public_key: &[u8; PUBLIC_KEY_LEN],
    token: &[u8],
    ticket: Option<&[u8; TICKET_LEN]>,
) -> Vec<u8> {
    client_auth_with_cookie(public_key, token, ticket, None)
}

/// [`client_auth`] with the cookie of a server's retry in the hello.
pub fn client_auth_with_cookie(
    public_key: &[u8; PUBLIC_KEY_LEN],
    token: &[u8],
    ticket: Option<&[u8; TICKET_LEN]>,
    cookie: Option<&[u8; COOKIE_LEN]>,
) -> Vec<u8> {
    client_auth_full(public_key, token, ticket, cookie, None)
}

/// The client AUTH with everything a hello may carry: token, ticket, a retry's cookie and
/// the digest of the client's channel configuration ([`channels_digest`]).
pub fn client_auth_full(
    public_key: &[u8; PUBLIC_KEY_LEN],
    token: &[u8],
    ticket: Option<&[u8; TICKET_LEN]>,
    cookie: Option<&[u8; COOKIE_LEN]>,
    channels: Option<&[u8; CHANNELS_DIGEST_LEN]>,
) -> Vec<u8> {
    let token = &token[..token.len().min(MAX_TOKEN)];
    let mut hello = Vec::with_capacity(MIN_CLIENT_AUTH);
    hello.extend_from_slice(&(token.len() as u16).to_be_bytes());
    hello.extend_from_slice(token);
    match ticket {
        Some(t) => {
            hello.push(TICKET_LEN as u8);
            hello.extend_from_slice(t);
        }
        None => hello.push(0),
    }
    match cookie {
        Some(c) => {
            hello.push(COOKIE_LEN as u8);
            hello.extend_from_slice(c);
        }
        None if channels.is_some() => hello.push(0),
        None => {}
    }
    if let Some(d) = channels {
        hello.push(CHANNELS_DIGEST_LEN as u8);
        hello.extend_from_slice(d);
    }
    let fixed = 4 + 2 + PUBLIC_KEY_LEN + 2;
    if fixed + hello.len() < MIN_CLIENT_AUTH {
        hello.resize(MIN_CLIENT_AUTH - fixed, 0);
    }
    auth_datagram(public_key, &hello)
}

/// Writes an AUTH datagram (sequence 0, no flags).
pub fn auth_datagram(public_key: &[u8], certificate: &[u8]) -> Vec<u8> {
    let packet = Packet {
        header: Header::new(PacketType::Auth, 0),
        body: Body::Auth(AuthFields {
            public_key,
            certificate: Some(certificate),
        }),
    };
    let mut out = vec![0u8; packet.len()];
    packet
        .emit(&mut out)
        .expect("handshake fields are within the wire's limits");
    out
}

/// What a client hello carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The connect token (empty: none).
    pub token: &'a [u8],
    /// The resumption ticket, if any.
    pub ticket: Option<&'a [u8; TICKET_LEN]>,
    /// The cookie of a server's retry, if any.
    pub cookie: Option<&'a [u8; COOKIE_LEN]>,
    /// The digest of the client's channel configuration, if it sent one.
    pub channels: Option<&'a [u8; CHANNELS_DIGEST_LEN]>,
}

/// Parses a client hello, or `None` if it is malformed (padding is not checked).
pub fn parse_hello(hello: &[u8]) -> Option<Hello<'_>> {
    let len = usize::from(u16::from_be_bytes([*hello.first()?, *hello.get(1)?]));
    if len > MAX_TOKEN {
        return None;
    }
    let token = hello.get(2..2 + len)?;
    let rest = &hello[2 + len..];
    let (ticket, rest) = match rest.first() {
        None => (None, rest),
        Some(0) => (None, &rest[1..]),
        Some(&n) if usize::from(n) == TICKET_LEN => (
            Some(rest.get(1..1 + TICKET_LEN)?.try_into().ok()?),
            &rest[1 + TICKET_LEN..],
        ),
        Some(_) => return None,
    };
    let (cookie, rest) = match rest.first() {
        None => (None, rest),
        Some(0) => (None, &rest[1..]),
        Some(&n) if usize::from(n) == COOKIE_LEN => (
            Some(rest.get(1..1 + COOKIE_LEN)?.try_into().ok()?),
            &rest[1 + COOKIE_LEN..],
        ),
        Some(_) => return None,
    };
    let channels = match rest.first() {
        None | Some(0) => None,
        Some(&n) if usize::from(n) == CHANNELS_DIGEST_LEN => {
            Some(rest.get(1..1 + CHANNELS_DIGEST_LEN)?.try_into().ok()?)
        }
        Some(_) => return None,
    };
    Some(Hello {
        token,
        ticket,
        cookie,
        channels,
    })
}

/// The cookie the server hands a client at `addr` with ephemeral key `client_key`, issued at
/// `issued` seconds of the server's clock, under the server's retry `secret`.
pub fn retry_cookie(
    secret: &[u8; 32],
    issued: u32,
    addr: std::net::SocketAddr,
    client_key: &[u8],
) -> [u8; COOKIE_LEN] {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    mac.update(COOKIE_LABEL);
    mac.update(&issued.to_be_bytes());
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    mac.update(&ip.octets());
    mac.update(&addr.port().to_be_bytes());
    mac.update(client_key);
    let tag = mac.finalize().into_bytes();
    let mut cookie = [0u8; COOKIE_LEN];
    cookie[..4].copy_from_slice(&issued.to_be_bytes());
    cookie[4..].copy_from_slice(&tag[..16]);
    cookie
}

/// Writes a retry datagram carrying `cookie` into `out` (at least [`RETRY_LEN`] octets);
/// returns its length.
pub fn write_retry(cookie: &[u8; COOKIE_LEN], out: &mut [u8]) -> usize {
    let packet = Packet {
        header: Header::new(PacketType::Auth, 0),
        body: Body::Auth(AuthFields {
            public_key: &[],
            certificate: Some(cookie),
        }),
    };
    packet
        .emit(out)
        .expect("a retry fits the buffer given to poll_transmit")
}

/// The cookie of a retry (an AUTH with no key and a cookie-sized certificate), if `auth` is
/// one.
pub fn parse_retry(auth: &AuthFields<'_>) -> Option<[u8; COOKIE_LEN]> {
    if !auth.public_key.is_empty() {
        return None;
    }
    auth.certificate?.try_into().ok()
}

/// The ticket that resumes client `id` with the old session's `secret` on a new handshake
/// whose client ephemeral key is `client_ephemeral`.
pub fn resume_ticket(id: u64, secret: &[u8; 32], client_ephemeral: &[u8]) -> [u8; TICKET_LEN] {
    let mut t = [0u8; TICKET_LEN];
    t[..8].copy_from_slice(&id.to_be_bytes());
    t[8..].copy_from_slice(&crate::crypto::resume_mac(secret, client_ephemeral));
    t
}

/// Writes a finished datagram: a sealed, unreliable ACK with packet number 0.
pub fn finished_datagram(key: &PacketKey, data: &[u8]) -> Vec<u8> {
    let fields = TypeFields::Ack(AckFields::default());
    let mut payload = Vec::with_capacity(data.len() + 16);
    let header = encode_into(
        &mut Vec::new(),
        fields,
        data,
        SendOptions::default(),
        Seal::Sealed {
            key,
            packet_number: 0,
        },
        &mut payload,
    )
    .expect("finished fits one datagram");
    let mut out = vec![0u8; crate::wire::MAX_DATA_DATAGRAM];
    let n = fragment::write_datagram(&header, &fields, &payload, 0, &mut out)
        .expect("buffer holds a datagram");
    out.truncate(n);
    out
}

/// Writes an unsealed ERROR datagram into `out` (at least 69 octets; used before keys
/// exist); returns its length. The message is cut to 64 octets.
pub fn write_error(code: ErrorCode, message: &str, out: &mut [u8]) -> usize {
    let message = &message.as_bytes()[..message.len().min(64)];
    let packet = Packet::with_data(0, TypeFields::Error(code), message);
    packet
        .emit(out)
        .expect("a short error fits the buffer given to poll_transmit")
}

/// Writes an unsealed ERROR datagram (used before keys exist).
pub fn error_datagram(code: ErrorCode, message: &str) -> Vec<u8> {
    let message = &message.as_bytes()[..message.len().min(64)];
    let packet = Packet::with_data(0, TypeFields::Error(code), message);
    let mut out = vec![0u8; packet.len()];
    packet.emit(&mut out).expect("short error fits");
    out
}
