//! Per-client backlogs of messages the transport's send queue had no room for, bounded in
//! octets; shared by `examples/echo.rs` and `examples/chat_server.rs` (included by both with
//! `#[path]`).
//!
//! [`tickwire::Server::send`] refuses a reliable message with [`SendError::QueueFull`] while
//! the client's reliable send queue is full, that is while the client does not acknowledge
//! (read) fast enough. A server that keeps such messages to retry later must bound what it
//! keeps, or a client that sends many small requests and never reads the answers makes it grow
//! without end. Here each client's backlog holds at most a fixed number of octets, every entry
//! costing its length plus [`ENTRY_OVERHEAD`]. A message that would overflow it is dropped
//! (and counted) on an unreliable channel. A reliable one first takes the room of unreliable
//! messages waiting (the oldest first, dropped and counted) if that is enough; if not, the
//! client cannot get every message any more, so [`Backlogs::send`] says to disconnect it (and
//! counts that), forgets its backlog, and refuses everything for it until
//! [`Backlogs::remove`].
//!
//! Messages go out in order per client: while a client's backlog is not empty, new messages
//! join its end, and [`Backlogs::flush`] retries it from the front.

// Each binary uses its own part of this module.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};

use tickwire::{ChannelId, ClientId, ConnectionConfig, SendError};

/// What an entry costs in a backlog besides its octets: the `Vec`, the channel and the queue
/// slot, rounded up, so that empty messages are not free.
pub const ENTRY_OVERHEAD: usize = 64;

/// The default bound of one client's backlog, in octets (entries' lengths plus
/// [`ENTRY_OVERHEAD`] each): 1 MiB, on top of the transport's own send queue
/// ([`ConnectionConfig::send_queue_bytes`]). It holds several largest messages
/// ([`tickwire::MAX_MESSAGE_SIZE`]) or thousands of small ones.
pub const DEFAULT_BACKLOG_BYTES: usize = 1 << 20;

/// One client's messages waiting for room in its send queue, in order, at most `limit` octets.
#[derive(Debug)]
pub struct Backlog {
    entries: VecDeque<(ChannelId, Vec<u8>)>,
    /// The cost of `entries`: their lengths plus [`ENTRY_OVERHEAD`] each.
    bytes: usize,
    limit: usize,
}

impl Backlog {
    /// An empty backlog holding at most `limit` octets.
    pub fn new(limit: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    /// What a message of `len` octets costs in a backlog.
    pub const fn cost(len: usize) -> usize {
        len.saturating_add(ENTRY_OVERHEAD)
    }

    /// Appends a copy of `data` for `channel`; false (and nothing queued) if that would take
    /// the backlog past its limit.
    pub fn push(&mut self, channel: ChannelId, data: &[u8]) -> bool {
        let cost = Self::cost(data.len());
        if cost > self.limit - self.bytes {
            return false;
        }
        self.bytes += cost;
        self.entries.push_back((channel, data.to_vec()));
        true
    }

    /// Makes room for an entry costing `cost` by removing entries on channels `droppable`
    /// says may be dropped, the oldest first, as few as needed; returns how many it removed,
    /// or `None` (removing nothing) if even removing all of them would not make enough room.
    pub fn make_room(&mut self, cost: usize, droppable: impl Fn(ChannelId) -> bool) -> Option<u64> {
        let free = self.limit - self.bytes;
        if cost <= free {
            return Some(0);
        }
        let releasable: usize = self
            .entries
            .iter()
            .filter(|(channel, _)| droppable(*channel))
            .map(|(_, data)| Self::cost(data.len()))
            .sum();
        if cost > free + releasable {
            return None;
        }
        let (limit, mut bytes, mut removed) = (self.limit, self.bytes, 0);
        self.entries.retain(|(channel, data)| {
            if cost <= limit - bytes || !droppable(*channel) {
                return true;
            }
            bytes -= Self::cost(data.len());
            removed += 1;
            false
        });
        self.bytes = bytes;
        Some(removed)
    }

    /// Sends from the front while `send` takes the messages; stops at the first
    /// [`SendError::QueueFull`] (that message stays first). A message refused for another
    /// reason is removed and counted in [`Flushed::failed`] (`send` sees the error first);
    /// after [`SendError::NotConnected`] the rest is removed and counted too, untried.
    pub fn flush(
        &mut self,
        mut send: impl FnMut(ChannelId, &[u8]) -> Result<(), SendError>,
    ) -> Flushed {
        let mut done = Flushed::default();
        while let Some((channel, data)) = self.entries.front() {
            match send(*channel, data) {
                Ok(()) => done.sent += 1,
                Err(SendError::QueueFull) => break,
                Err(SendError::NotConnected | SendError::Closed) => {
                    done.failed += self.entries.len() as u64;
                    self.entries.clear();
                    self.bytes = 0;
                    break;
                }
                Err(_) => done.failed += 1,
            }
            self.bytes -= Self::cost(data.len());
            self.entries.pop_front();
        }
        done
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The cost of what is waiting (at most the limit).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// What [`Backlog::flush`] or [`Backlogs::flush`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Messages `send` took.
    pub sent: u64,
    /// Messages `send` refused for another reason than a full queue (removed).
    pub failed: u64,
}

/// What [`Backlogs::send`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Handed to the transport.
    Now,
    /// Queued in the client's backlog, behind earlier messages or for a full send queue.
    Queued,
    /// Unreliable, and the client's backlog is full: dropped (counted in
    /// [`Backlogs::dropped`]).
    Dropped,
    /// Reliable, and the client's backlog is full even without the unreliable messages
    /// waiting: the caller must disconnect the client. Its backlog is freed and everything for
    /// it refused until [`Backlogs::remove`] (counted in [`Backlogs::disconnected`]).
    Overflow,
    /// The client was cut off earlier by [`Sent::Overflow`]: nothing sent or queued.
    CutOff,
    /// The transport refused it for another reason than a full queue.
    Failed(SendError),
}

/// Every client's [`Backlog`], and what overflowing them cost.
#[derive(Debug)]
pub struct Backlogs {
    limit: usize,
    /// Whether each channel (by index) is reliable.
    reliable: Vec<bool>,
    /// Only clients with something waiting.
    clients: HashMap<ClientId, Backlog>,
    /// Clients told to disconnect for overflowing, until [`Backlogs::remove`].
    cut_off: HashSet<ClientId>,
    /// Unreliable messages dropped because their client's backlog was full (arriving, or
    /// waiting and making room for a reliable one).
    pub dropped: u64,
    /// Clients to disconnect because a reliable message overflowed their backlog.
    pub disconnected: u64,
}

impl Backlogs {
    /// Backlogs of at most `limit` octets per client, for connections configured as `config`.
    pub fn new(limit: usize, config: &ConnectionConfig) -> Self {
        Self {
            limit,
            reliable: config
                .channels
                .iter()
                .map(|c| c.mode.is_reliable())
                .collect(),
            clients: HashMap::new(),
            cut_off: HashSet::new(),
            dropped: 0,
            disconnected: 0,
        }
    }

    /// Sends `data` to `client` on `channel` with `send` if nothing is waiting for that
    /// client, else (or if the send queue is full) queues it in the client's backlog.
    pub fn send(
        &mut self,
        client: ClientId,
        channel: ChannelId,
        data: &[u8],
        send: impl FnOnce(ChannelId, &[u8]) -> Result<(), SendError>,
    ) -> Sent {
        if self.cut_off.contains(&client) {
            return Sent::CutOff;
        }
        if !self.clients.contains_key(&client) {
            match send(channel, data) {
                Ok(()) => return Sent::Now,
                Err(SendError::QueueFull) => {}
                Err(e) => return Sent::Failed(e),
            }
        }
        let limit = self.limit;
        let backlog = self
            .clients
            .entry(client)
            .or_insert_with(|| Backlog::new(limit));
        if backlog.push(channel, data) {
            return Sent::Queued;
        }
        let created_for_this = backlog.is_empty();
        let table = &self.reliable;
        if is_reliable(table, channel) {
            let cost = Backlog::cost(data.len());
            if let Some(removed) = backlog.make_room(cost, |c| !is_reliable(table, c)) {
                self.dropped += removed;
                let queued = backlog.push(channel, data);
                debug_assert!(queued);
                return Sent::Queued;
            }
            self.clients.remove(&client);
            self.cut_off.insert(client);
            self.disconnected += 1;
            return Sent::Overflow;
        }
        if created_for_this {
            self.clients.remove(&client);
        }
        self.dropped += 1;
        Sent::Dropped
    }

    /// Retries every backlog from its front (see [`Backlog::flush`]); `send` gets the client,
    /// the channel and the message. Frees the backlogs emptied.
    pub fn flush(
        &mut self,
        mut send: impl FnMut(ClientId, ChannelId, &[u8]) -> Result<(), SendError>,
    ) -> Flushed {
        let mut total = Flushed::default();
        self.clients.retain(|&client, backlog| {
            let done = backlog.flush(|channel, data| send(client, channel, data));
            total.sent += done.sent;
            total.failed += done.failed;
            !backlog.is_empty()
        });
        total
    }

    /// Forgets `client` (it disconnected): frees its backlog.
    pub fn remove(&mut self, client: ClientId) {
        self.clients.remove(&client);
        self.cut_off.remove(&client);
    }

    /// The cost of what waits for `client`.
    pub fn bytes(&self, client: ClientId) -> usize {
        self.clients.get(&client).map_or(0, Backlog::bytes)
    }

    /// Whether `client` was cut off for overflowing its backlog (and not removed since).
    pub fn is_cut_off(&self, client: ClientId) -> bool {
        self.cut_off.contains(&client)
    }
}

/// Whether `channel` is reliable according to `table` (by index). An unknown channel's message
/// would be refused anyway: it counts as unreliable, dropped first.
fn is_reliable(table: &[bool], channel: ChannelId) -> bool {
    table.get(usize::from(channel.0)).copied().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNRELIABLE: ChannelId = ChannelId(0);
    const RELIABLE: ChannelId = ChannelId(3);

    #[test]
    fn pushes_beyond_the_bound_are_refused() {
        let mut b = Backlog::new(1000);
        assert!(b.push(RELIABLE, &[7; 400])); // 464
        assert!(b.push(RELIABLE, &[8; 400])); // 928
        assert_eq!(b.bytes(), 928);
        assert!(!b.push(RELIABLE, &[9; 9])); // 73 more: 1001
        assert_eq!((b.len(), b.bytes()), (2, 928));
        assert!(b.push(RELIABLE, &[9; 8])); // exactly 1000
        assert_eq!(b.bytes(), 1000);
        assert!(!b.push(RELIABLE, &[]));
        assert!(!Backlog::new(10).push(RELIABLE, &[]));
    }

    #[test]
    fn empty_messages_cost_the_overhead() {
        let mut b = Backlog::new(10 * ENTRY_OVERHEAD);
        for _ in 0..10 {
            assert!(b.push(UNRELIABLE, &[]));
        }
        assert_eq!(b.bytes(), 10 * ENTRY_OVERHEAD);
        assert!(!b.push(UNRELIABLE, &[]));
        assert_eq!(b.len(), 10);
    }

    #[test]
    fn flush_sends_in_order_and_stops_at_a_full_queue() {
        let mut b = Backlog::new(DEFAULT_BACKLOG_BYTES);
        for i in 0..5u8 {
            assert!(b.push(RELIABLE, &[i]));
        }
        let mut got = Vec::new();
        let done = b.flush(|_, data| {
            if got.len() == 3 {
                return Err(SendError::QueueFull);
            }
            got.push(data[0]);
            Ok(())
        });
        assert_eq!(got, [0, 1, 2]);
        assert_eq!(done, Flushed { sent: 3, failed: 0 });
        assert_eq!((b.len(), b.bytes()), (2, 2 * Backlog::cost(1)));
        let done = b.flush(|_, data| match data[0] {
            3 => Err(SendError::UnknownChannel(RELIABLE)),
            _ => Ok(()),
        });
        assert_eq!(done, Flushed { sent: 1, failed: 1 });
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn flush_gives_up_on_a_client_gone() {
        let mut b = Backlog::new(DEFAULT_BACKLOG_BYTES);
        for i in 0..5u8 {
            assert!(b.push(RELIABLE, &[i]));
        }
        let mut tried = 0;
        let done = b.flush(|_, data| {
            tried += 1;
            match data[0] {
                0 => Ok(()),
                _ => Err(SendError::NotConnected),
            }
        });
        assert_eq!(tried, 2);
        assert_eq!(done, Flushed { sent: 1, failed: 4 });
        assert_eq!((b.len(), b.bytes()), (0, 0));
    }

    #[test]
    fn overflow_drops_unreliable_and_cuts_off_reliable() {
        let config = ConnectionConfig::default();
        let limit = 3 * Backlog::cost(100);
        let mut all = Backlogs::new(limit, &config);
        let (a, b) = (ClientId(1), ClientId(2));
        let full = |_: ChannelId, _: &[u8]| Err(SendError::QueueFull);
        let never = |_: ChannelId, _: &[u8]| -> Result<(), SendError> {
            panic!("sent past a non-empty backlog")
        };
        assert_eq!(all.send(a, RELIABLE, &[0; 100], full), Sent::Queued);
        // Behind a waiting message, nothing is tried: order is kept.
        assert_eq!(all.send(a, UNRELIABLE, &[1; 100], never), Sent::Queued);
        assert_eq!(all.send(a, RELIABLE, &[2; 100], never), Sent::Queued);
        assert_eq!(all.bytes(a), limit);
        assert_eq!(all.send(a, UNRELIABLE, &[], never), Sent::Dropped);
        assert_eq!(all.dropped, 1);
        assert_eq!(all.bytes(a), limit);
        // Another client is not affected.
        assert_eq!(all.send(b, RELIABLE, &[], |_, _| Ok(())), Sent::Now);
        // A reliable message takes the waiting unreliable one's room...
        assert_eq!(all.send(a, RELIABLE, &[], never), Sent::Queued);
        assert_eq!((all.dropped, all.disconnected), (2, 0));
        // ...and with only reliable ones waiting, the next that does not fit cuts `a` off.
        assert_eq!(all.send(a, RELIABLE, &[3; 100], never), Sent::Overflow);
        assert_eq!((all.disconnected, all.bytes(a)), (1, 0));
        assert!(all.is_cut_off(a));
        assert_eq!(all.send(a, RELIABLE, &[], never), Sent::CutOff);
        assert_eq!(all.send(a, UNRELIABLE, &[], never), Sent::CutOff);
        assert_eq!(
            all.flush(|_, _, _| panic!("nothing waits")),
            Flushed::default()
        );
        all.remove(a);
        assert!(!all.is_cut_off(a));
        assert_eq!(all.send(a, RELIABLE, &[], |_, _| Ok(())), Sent::Now);
    }

    #[test]
    fn make_room_removes_the_oldest_droppable_entries_only_if_that_is_enough() {
        let mut b = Backlog::new(4 * Backlog::cost(100));
        assert!(b.push(UNRELIABLE, &[1; 100]));
        assert!(b.push(RELIABLE, &[2; 100]));
        assert!(b.push(UNRELIABLE, &[3; 100]));
        assert!(b.push(UNRELIABLE, &[4; 100]));
        let droppable = |c: ChannelId| c == UNRELIABLE;
        assert_eq!(b.make_room(Backlog::cost(0), droppable), Some(1));
        assert_eq!(b.bytes(), 3 * Backlog::cost(100));
        // Not enough even without every unreliable entry: nothing removed.
        assert_eq!(b.make_room(Backlog::cost(500), droppable), None);
        assert_eq!(b.len(), 3);
        assert_eq!(b.make_room(Backlog::cost(300), droppable), Some(2));
        assert!(b.push(RELIABLE, &[5; 300]));
        assert_eq!(b.bytes(), Backlog::cost(100) + Backlog::cost(300));
        let mut left = Vec::new();
        b.flush(|_, data| {
            left.push(data[0]);
            Ok(())
        });
        assert_eq!(left, [2, 5]);
    }

    #[test]
    fn a_reliable_message_takes_the_room_of_waiting_unreliable_ones() {
        let limit = 3 * Backlog::cost(100);
        let mut all = Backlogs::new(limit, &ConnectionConfig::default());
        let a = ClientId(1);
        let full = |_: ChannelId, _: &[u8]| Err(SendError::QueueFull);
        assert_eq!(all.send(a, RELIABLE, &[0; 100], full), Sent::Queued);
        assert_eq!(all.send(a, UNRELIABLE, &[1; 100], full), Sent::Queued);
        assert_eq!(all.send(a, UNRELIABLE, &[2; 100], full), Sent::Queued);
        assert_eq!(all.send(a, RELIABLE, &[3; 100], full), Sent::Queued);
        assert_eq!((all.dropped, all.disconnected), (1, 0));
        assert_eq!(all.send(a, RELIABLE, &[4; 100], full), Sent::Queued);
        assert_eq!((all.dropped, all.disconnected), (2, 0));
        assert_eq!(all.bytes(a), limit);
        // Only reliable messages wait now: the next one overflows.
        assert_eq!(all.send(a, RELIABLE, &[5; 0], full), Sent::Overflow);
        assert_eq!((all.dropped, all.disconnected), (2, 1));
    }

    #[test]
    fn a_message_larger_than_the_bound_is_refused_even_when_empty() {
        let mut all = Backlogs::new(100, &ConnectionConfig::default());
        let full = |_: ChannelId, _: &[u8]| Err(SendError::QueueFull);
        assert_eq!(
            all.send(ClientId(1), UNRELIABLE, &[0; 37], full),
            Sent::Dropped
        );
        assert_eq!(all.bytes(ClientId(1)), 0);
        assert_eq!(
            all.send(ClientId(1), RELIABLE, &[0; 37], full),
            Sent::Overflow
        );
        assert_eq!((all.dropped, all.disconnected), (1, 1));
    }

    #[test]
    fn flush_frees_emptied_backlogs_and_keeps_order_per_client() {
        let mut all = Backlogs::new(DEFAULT_BACKLOG_BYTES, &ConnectionConfig::default());
        let full = |_: ChannelId, _: &[u8]| Err(SendError::QueueFull);
        let (a, b) = (ClientId(1), ClientId(2));
        for i in 0..3u8 {
            assert_eq!(all.send(a, RELIABLE, &[i], full), Sent::Queued);
            assert_eq!(all.send(b, RELIABLE, &[10 + i], full), Sent::Queued);
        }
        let mut got: HashMap<ClientId, Vec<u8>> = HashMap::new();
        let done = all.flush(|client, _, data| {
            got.entry(client).or_default().push(data[0]);
            Ok(())
        });
        assert_eq!(done, Flushed { sent: 6, failed: 0 });
        assert_eq!(got[&a], [0, 1, 2]);
        assert_eq!(got[&b], [10, 11, 12]);
        assert_eq!((all.bytes(a), all.bytes(b)), (0, 0));
        assert!(all.clients.is_empty());
    }
}
