//! Path validation: a random challenge to a new peer address, the anti-amplification limit
//! until it answers, and the move when it does.

use super::*;

/// Until a new address answers its challenge, it is sent at most this many times the octets
/// of authentic packets received from it (RFC 9000's anti-amplification rule).
pub(super) const AMPLIFICATION_FACTOR: u64 = 3;

/// Octets of a sealed path-challenge PING (header with IV, heartbeat octet, 12 octets, tag).
pub(super) const CHALLENGE_DATAGRAM_LEN: u64 = 6 + 1 + 12 + seal::TAG_LEN as u64;

/// The start of a PING's Data that challenges a new path (then 8 octets to echo).
pub(super) const PATH_CHALLENGE: &[u8] = b"path";

/// A new peer address being validated: the random value its PONG must echo, when the
/// challenge last went out, and the octets exchanged with that address so far.
#[derive(Debug, Clone, Copy)]
pub(super) struct Challenge {
    pub(super) addr: SocketAddr,
    pub(super) value: [u8; 8],
    pub(super) sent_at: Option<Instant>,
    pub(super) bytes_received: u64,
    pub(super) bytes_sent: u64,
}

impl Connection {
    /// A packet of this connection that opened arrived from `addr`, not its address: send a
    /// challenge there; the connection moves only when the answer comes back from it.
    pub fn start_path_challenge(&mut self, addr: SocketAddr) {
        if self.state != State::Connected || addr == self.addr {
            return;
        }
        if self.challenge.is_some_and(|c| c.addr == addr) {
            return;
        }
        // The value comes from the OS's CSPRNG: the peer (which may be the one spoofing the
        // new address) cannot predict it, so only a host that receives at `addr` answers.
        let mut value = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut value);
        self.challenge = Some(Challenge {
            addr,
            value,
            sent_at: None,
            bytes_received: 0,
            bytes_sent: 0,
        });
    }

    /// The address being validated, if any.
    pub fn candidate_addr(&self) -> Option<SocketAddr> {
        self.challenge.map(|c| c.addr)
    }

    /// Whether `pn` would be accepted (used to find the connection of a datagram from an
    /// unknown address before trying its key).
    pub fn would_accept(&self, pn: u32) -> bool {
        self.state == State::Connected && self.receiver.check(pn) == Seen::New
    }

    /// Whether a sealed, unfragmented packet opens under this connection's key (nothing
    /// changes either way).
    pub fn opens(&self, packet: &Packet<'_>, scratch: &mut Scratch) -> bool {
        let Body::Data { fields, data } = packet.body else {
            return false;
        };
        if packet.header.fragment.is_some() || !packet.header.flags.contains(Flags::ENCRYPTED) {
            return false;
        }
        let mut buf = std::mem::take(&mut scratch.plain);
        buf.clear();
        buf.extend_from_slice(data);
        let ok = scratch
            .decoder
            .open(&packet.header, &fields, &mut buf, Some(&self.recv_key))
            .is_ok();
        scratch.plain = buf;
        ok
    }

    pub(super) fn on_path_response(
        &mut self,
        from: SocketAddr,
        echo: &[u8],
        events: &mut VecDeque<Event>,
    ) {
        let Some(c) = self.challenge else {
            return;
        };
        if from != c.addr || !crate::crypto::macs_equal(echo, &c.value) {
            return;
        }
        let old = self.addr;
        self.addr = c.addr;
        self.challenge = None;
        events.push_back(Event::AddressChanged {
            client: self.id,
            old,
            new: c.addr,
        });
    }
    /// The path challenge to send now, if one is due and the new address's
    /// anti-amplification allowance has room: its length and destination.
    pub(super) fn poll_challenge(
        &mut self,
        now: Instant,
        scratch: &mut Scratch,
        buf: &mut [u8],
    ) -> Option<(usize, SocketAddr)> {
        if let Some(c) = self.challenge {
            let due = c.sent_at.is_none_or(|t| now >= t + self.rtt.rto());
            // A challenge is about 35 octets; it goes only while the address has been sent
            // less than AMPLIFICATION_FACTOR times what it sent.
            let allowed =
                c.bytes_sent + CHALLENGE_DATAGRAM_LEN <= AMPLIFICATION_FACTOR * c.bytes_received;
            if self.state == State::Connected && due && allowed {
                let mut data = [0u8; 12];
                data[..4].copy_from_slice(PATH_CHALLENGE);
                data[4..].copy_from_slice(&c.value);
                let n = self.write_small(
                    now,
                    TypeFields::Heartbeat(Heartbeat::Ping),
                    &data,
                    scratch,
                    buf,
                );
                self.challenge = Some(Challenge {
                    sent_at: Some(now),
                    bytes_sent: c.bytes_sent + n as u64,
                    ..c
                });
                return Some((n, c.addr));
            } else if self.state == State::Connected && due && !allowed && c.sent_at.is_some() {
                // Wait for more from the address (its next packet re-arms the challenge).
                self.stats.amplification_limited += 1;
                self.challenge = Some(Challenge { sent_at: None, ..c });
            }
        }
        None
    }
}
