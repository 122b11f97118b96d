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
//! The one exception on the receive side keeps ordered channels from deadlocking: a packet
//! that fills the gap a channel's held messages wait for is taken even past the limit, as long
//! as the application keeps up (its undelivered messages and the packet fit the limit) and
//! held messages stay within the limit. So the receive side never holds more than twice its
//! limit, whatever the peer sends.

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
}

/// What a packet that opened would add on the receive side, found by reading its frames
/// before acting on any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Incoming {
    /// Octets the packet's messages would add (delivered or held).
    pub bytes: usize,
    /// Octets of its messages that would be held for a gap.
    pub held: usize,
    /// Whether it carries the next expected message of a channel that holds messages.
    pub fills_gap: bool,
}

/// Whether a packet is taken, and if not why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Within the budget.
    Yes,
    /// Over the budget: drop it unacknowledged.
    OverBudget,
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
    /// (only called when the packet does not fit at first sight).
    pub fn admit(
        &self,
        reassembly: usize,
        plaintext_len: usize,
        scan: impl FnOnce() -> Incoming,
    ) -> Admit {
        let incoming = plaintext_len + MESSAGE_OVERHEAD;
        let used = self.received(reassembly);
        if used == 0 || used + incoming <= self.receive_limit {
            return Admit::Yes;
        }
        let s = scan();
        if s.bytes == 0 {
            // Acks, fragment reports and heartbeats hold nothing.
            return Admit::Yes;
        }
        let keeps_up = self.undelivered + s.bytes <= self.receive_limit;
        if s.fills_gap && keeps_up && self.held + s.held <= self.receive_limit {
            Admit::Yes
        } else {
            Admit::OverBudget
        }
    }
}

use super::{Connection, Job, Queued, RecvChannel, SendChannel, SentPacket, SeqRange};
use std::time::Instant;

impl Connection {
    /// Octets charged to this connection's send and receive budgets (cheap to read).
    pub fn budget_used(&self) -> usize {
        self.budget.received(self.reassembler.reserved_bytes()) + self.budget.queued
    }

    /// Octets this connection holds, counted by capacity.
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let vecs = |v: &Vec<Vec<u8>>| v.iter().map(Vec::capacity).sum::<usize>();
        let mut n = size_of::<Self>() + vecs(&self.pool) + self.unreliable_payload.capacity();
        n += self.reassembler.memory_bytes();
        for ch in &self.send_channels {
            n += size_of::<SendChannel>()
                + ch.queue.capacity() * size_of::<Queued>()
                + ch.queue.iter().map(|q| q.data.capacity()).sum::<usize>()
                + ch.window.capacity();
        }
        for ch in &self.recv_channels {
            n += size_of::<RecvChannel>()
                + ch.held.capacity() * size_of::<Option<Vec<u8>>>()
                + ch.held.iter().flatten().map(Vec::capacity).sum::<usize>();
        }
        n += self.sent.capacity() * size_of::<SentPacket>();
        for p in &self.sent {
            n += p.payload.capacity() + p.ordered.capacity() * size_of::<SeqRange>();
        }
        n += self.jobs.capacity() * size_of::<Job>();
        n += self.unreliable_sent.capacity() * size_of::<(u32, u32, Instant)>();
        n += self.copies.capacity() * size_of::<(Instant, u32, u8)>();
        n += self.receiver.memory_bytes();
        n
    }

    /// The application took a delivered message of `len` octets in a buffer of `capacity`
    /// octets: its charge leaves the receive budget.
    pub fn release_delivered(&mut self, len: usize, capacity: usize) {
        self.budget.undelivered = self
            .budget
            .undelivered
            .saturating_sub(message_cost(len, capacity));
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
            bytes: 100,
            held: 100,
            fills_gap: false,
        };
        assert_eq!(b.admit(0, 100, plain), Admit::OverBudget);
        let filler = || Incoming {
            bytes: 100,
            held: 0,
            fills_gap: true,
        };
        assert_eq!(b.admit(0, 100, filler), Admit::Yes);
        // A gap filler that would also push held messages past the limit is refused.
        let greedy = || Incoming {
            bytes: 100,
            held: 50,
            fills_gap: true,
        };
        assert_eq!(b.admit(0, 100, greedy), Admit::OverBudget);
        // An application that does not poll blocks even gap fillers.
        b.held = 0;
        b.undelivered = 950;
        assert_eq!(b.admit(0, 100, filler), Admit::OverBudget);
        // Packets without messages always pass.
        assert_eq!(b.admit(0, 100, Incoming::default), Admit::Yes);
    }
}
