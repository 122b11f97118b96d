//! One connection's memory budget: every octet the endpoint holds on the peer's behalf is
//! charged here, and the checks that keep it within its limits live here.
//!
//! Two sides, each with its limit from [`crate::ConnectionConfig`]:
//! - **send** (`send_queue_bytes`): reliable messages queued or sent and not yet
//!   acknowledged, each charged its buffer plus [`MESSAGE_OVERHEAD`] (so empty messages are not
//!   free). Past it, `send` returns [`crate::SendError::QueueFull`].
//! - **receive** (`receive_buffer_bytes`): messages delivered and not yet taken by
//!   `poll_event`, reliable-ordered messages held for a gap before them, and packets in
//!   reassembly (their reserved octets). Past it, an arriving packet is dropped
//!   unacknowledged: the peer resends it later, which is flow control, not loss.
//!
//! Received messages are charged `len + MESSAGE_OVERHEAD` (their buffers never have more
//! than twice their length plus 64 octets of capacity), so what a packet costs is known from
//! its frames before it is acted on.
//!
//! The exception on the receive side keeps ordered channels from deadlocking: a packet that
//! may be what held messages wait for is taken even past the limit, as long as the
//! application keeps up (its undelivered messages and the packet's fit the limit) and held
//! messages stay within twice the limit. So the receive side never holds more than three times
//! its limit, whatever the peer sends; a peer with the same configuration never sends more
//! past a gap than the limit (its ordered byte window, `builder.rs`).

/// Octets charged per message on top of its buffer: the bookkeeping a queued or held message
/// costs (queue entry, allocation header). An empty message costs this much.
pub const MESSAGE_OVERHEAD: usize = 64;

/// Octets charged for one message whose buffer has `capacity` octets and holds `len`.
pub const fn message_cost(len: usize, capacity: usize) -> usize {
    let n = if capacity > len { capacity } else { len };
    n + MESSAGE_OVERHEAD
}

/// What one connection has charged, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    send_limit: usize,
    receive_limit: usize,
    /// Reliable messages queued or unacknowledged.
    pub(crate) queued: usize,
    /// Delivered messages the application has not taken.
    pub(crate) undelivered: usize,
    /// Reliable-ordered messages held for a gap.
    pub(crate) held: usize,
    /// Messages too large for one packet being assembled from their parts: each the buffer
    /// reserved for its whole length (+ [`MESSAGE_OVERHEAD`]). Charged on top of the receive
    /// limit (at most one per reliable-ordered channel, each at most `max_message_size`): the
    /// parts themselves pass through the limit like other messages.
    pub(crate) assembling: usize,
    /// What those messages hold so far: each its buffer's capacity (which grows with its
    /// parts, up to its length) + [`MESSAGE_OVERHEAD`]. This, not the reservation, is what
    /// the server's `memory_budget` counts (a declared length costs the peer nothing).
    pub(crate) assembled: usize,
}

/// What a packet that opened would do to the receive side, found by reading its frames
/// before acting on any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Incoming {
    /// Octets its messages delivered at once would add (unordered, unreliable, in order).
    pub delivered: usize,
    /// Octets of its messages that would be held for a gap.
    pub held: usize,
    /// Octets of held messages it would release (they follow a gap it fills).
    pub released: usize,
    /// Whether it carries a message for an ordered channel that holds messages, or the next
    /// expected message of an ordered channel while any holds messages: it may be what the
    /// held messages wait for.
    pub for_gap: bool,
    /// Whether it breaks the packing rule: a plaintext larger than one datagram's carries
    /// exactly one message (a sender puts a large message alone).
    pub violation: bool,
}

/// Whether a packet is taken, and if not why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Within the budget.
    Yes,
    /// Over the budget: drop it unacknowledged.
    OverBudget,
    /// The peer broke the packing rule: close with 3.0.
    Violation,
}

impl Budget {
    /// A budget with these limits.
    pub fn new(send_limit: usize, receive_limit: usize) -> Self {
        Self {
            send_limit,
            receive_limit,
            ..Self::default()
        }
    }

    /// Whether a reliable message costing `cost` may be queued (one always may when nothing
    /// is queued, so the largest message always goes).
    pub fn can_queue(&self, cost: usize) -> bool {
        self.queued == 0 || self.queued + cost <= self.send_limit
    }

    /// The send side's limit.
    pub fn send_limit(&self) -> usize {
        self.send_limit
    }

    /// Octets charged on the receive side, with `reassembly` octets reserved for packets in
    /// reassembly.
    pub fn received(&self, reassembly: usize) -> usize {
        self.undelivered + self.held + reassembly
    }

    /// Whether a new packet in reassembly reserving `reserve` octets fits (one always does
    /// when nothing is charged, so the largest packet always gets in).
    pub fn can_reassemble(&self, reassembly: usize, reserve: usize) -> bool {
        let used = self.received(reassembly);
        used == 0 || used + reserve <= self.receive_limit
    }

    /// Whether an opened packet of `plaintext_len` octets fits. `scan` reads its frames
    /// (only called when the packet does not fit at first sight, or is larger than one
    /// datagram's plaintext).
    pub fn admit(
        &self,
        reassembly: usize,
        plaintext_len: usize,
        scan: impl FnOnce() -> Incoming,
    ) -> Admit {
        let used = self.received(reassembly);
        // Every message frame takes at least 3 octets and is charged its length + 64.
        let most = plaintext_len + (plaintext_len / 3 + 1) * MESSAGE_OVERHEAD;
        let small = plaintext_len <= super::PACKET_PLAINTEXT;
        if small && (used == 0 || used + most <= self.receive_limit) {
            return Admit::Yes;
        }
        let s = scan();
        if s.violation {
            return Admit::Violation;
        }
        if s.delivered + s.held == 0 || used == 0 {
            // Acks, fragment reports and heartbeats hold nothing; one packet always fits.
            return Admit::Yes;
        }
        if used + s.delivered + s.held <= self.receive_limit {
            return Admit::Yes;
        }
        let keeps_up = self.undelivered + s.delivered <= self.receive_limit;
        let held_after = (self.held + s.held).saturating_sub(s.released);
        if keeps_up
            && (held_after <= self.receive_limit
                || (s.for_gap && held_after <= 2 * self.receive_limit))
        {
            Admit::Yes
        } else {
            Admit::OverBudget
        }
    }
}

use super::channels::Held;
use super::{Connection, Job, Queued, RecvChannel, SendChannel, SentPacket, SeqRange};
use std::time::Instant;

impl Connection {
    /// Octets charged to this connection's send and receive budgets (cheap to read); a
    /// message being assembled from its parts counts what it holds so far, not its
    /// reservation.
    pub fn budget_used(&self) -> usize {
        self.budget.received(self.reassembler.reserved_bytes())
            + self.budget.assembled
            + self.budget.queued
    }

    /// Octets this connection holds, counted by capacity.
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let mut n = size_of::<Self>()
            + self
                .close
                .as_ref()
                .map_or(0, |_| size_of::<super::Closing>())
            + self.unreliable_payload.capacity()
            + self.tails.capacity()
            + self.tail_lens.capacity() * size_of::<u16>();
        n += self.reassembler.memory_bytes();
        for ch in &self.send_channels {
            n += size_of::<SendChannel>()
                + ch.queue.capacity() * size_of::<Queued>()
                + ch.queue.iter().map(|q| q.data.capacity()).sum::<usize>()
                + ch.window.capacity() * size_of::<(bool, u32)>();
        }
        for ch in &self.recv_channels {
            n += size_of::<RecvChannel>()
                + ch.held.capacity() * size_of::<Option<Held>>()
                + ch.held
                    .iter()
                    .flatten()
                    .map(|h| h.data.capacity())
                    .sum::<usize>()
                + ch.assembly.as_ref().map_or(0, |a| a.data.capacity());
        }
        n += self.sent.capacity() * size_of::<SentPacket>();
        for p in &self.sent {
            n += p.payload.capacity() + p.ordered.capacity() * size_of::<SeqRange>();
        }
        n += self.jobs.capacity() * size_of::<Job>();
        n += self.unreliable_sent.capacity() * size_of::<(u32, u32, Instant)>();
        n += self.copies.capacity() * size_of::<(Instant, u32, u8)>();
        n
    }

    /// Octets of delivered messages still waiting in the endpoint's event queue.
    pub(crate) fn undelivered_charge(&self) -> usize {
        self.budget.undelivered
    }

    /// Takes over the charge of a replaced connection of the same client whose messages still
    /// wait in the event queue (their `release_delivered` comes to this connection).
    pub(crate) fn inherit_undelivered(&mut self, charge: usize) {
        self.budget.undelivered += charge;
    }

    /// The application took a delivered message of `len` octets: its charge leaves the
    /// receive budget.
    pub fn release_delivered(&mut self, len: usize) {
        self.budget.undelivered = self.budget.undelivered.saturating_sub(message_cost(len, 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_messages_cost_the_overhead() {
        assert_eq!(message_cost(0, 0), MESSAGE_OVERHEAD);
        assert_eq!(message_cost(10, 4096), 4096 + MESSAGE_OVERHEAD);
        let mut b = Budget::new(10 * MESSAGE_OVERHEAD, 1000);
        let mut n = 0;
        while b.can_queue(message_cost(0, 0)) {
            b.queued += message_cost(0, 0);
            n += 1;
        }
        assert_eq!(n, 10);
    }

    #[test]
    fn held_messages_count_and_gap_fillers_pass() {
        let mut b = Budget::new(1000, 1000);
        b.held = 990;
        let plain = || Incoming {
            delivered: 0,
            held: 100,
            ..Incoming::default()
        };
        assert_eq!(b.admit(0, 100, plain), Admit::OverBudget);
        let filler = || Incoming {
            delivered: 100,
            released: 500,
            for_gap: true,
            ..Incoming::default()
        };
        assert_eq!(b.admit(0, 100, filler), Admit::Yes);
        // A packet for a gap may take held messages past the limit, not past twice it.
        let greedy = || Incoming {
            delivered: 10,
            held: 900,
            for_gap: true,
            ..Incoming::default()
        };
        assert_eq!(b.admit(0, 100, greedy), Admit::Yes);
        let too_greedy = || Incoming {
            delivered: 10,
            held: 1100,
            for_gap: true,
            ..Incoming::default()
        };
        assert_eq!(b.admit(0, 100, too_greedy), Admit::OverBudget);
        // An application that does not poll blocks even gap fillers.
        b.held = 0;
        b.undelivered = 950;
        assert_eq!(b.admit(0, 100, filler), Admit::OverBudget);
        // Packets without messages always pass; a broken packing rule is a violation.
        assert_eq!(b.admit(0, 100, Incoming::default), Admit::Yes);
        let packed = || Incoming {
            violation: true,
            ..Incoming::default()
        };
        assert_eq!(b.admit(0, 5000, packed), Admit::Violation);
    }
}
