//! FRAG: splitting a processed payload into datagrams, and putting fragments back together.
//!
//! Every fragment but the last carries exactly [`MAX_DATA`] octets of the payload; the last
//! carries the rest (1..=988). Fragment *i* therefore holds payload octets `i*988 ..`, which
//! lets the receiver place fragments arriving in any order without copying them twice.
//! Every fragment repeats the header's optional fields and the type-specific fields.

use bitvec::prelude::*;
use std::time::{Duration, Instant};

use crate::wire::{
    EmitError, ErrorCode, Flags, FragmentFields, Header, Packet, TypeFields, WireError, MAX_DATA,
    MAX_FRAGMENTS,
};

/// Buffers a reassembler keeps for reuse: as many as the packets a sender writes the first
/// fragments of before their last ones (a frame's worth of two-fragment packets, see the
/// builder's held-back last fragments), so that a steady stream of fragmented packets
/// allocates nothing.
pub const POOL_BUFFERS: usize = 16;
/// Octets of capacity a reassembler keeps for reuse at most (16 two-fragment packets' worth);
/// a larger buffer, or one past this, is freed. Held while the connection is active, given
/// back when it goes idle.
pub const POOL_BYTES: usize = 32 << 10;

/// Which fragments of a packet are held: bit *i* (MSB first) for fragment *i*.
pub type FragmentBitmap = BitArray<[u8; 32], Msb0>;

/// How many fragments a processed payload of `len` octets needs: 0 if it fits one datagram
/// unfragmented, otherwise 2..=255 (or more, which the caller must refuse).
pub fn fragment_count(len: usize) -> usize {
    if len <= MAX_DATA {
        0
    } else {
        len.div_ceil(MAX_DATA)
    }
}

/// Writes datagram `index` of a packet into `buf` and returns its length.
///
/// `header` is the packet's header (with FRAG and the fragment fields when it is fragmented;
/// the Fragment ID is replaced by `index`), `payload` the whole processed payload.
///
/// # Errors
/// [`EmitError::InvalidHeader`] if `index` is not a fragment of the packet,
/// [`EmitError::BufferTooSmall`] if `buf` cannot hold the datagram.
pub fn write_datagram(
    header: &Header,
    fields: &TypeFields,
    payload: &[u8],
    index: usize,
    buf: &mut [u8],
) -> Result<usize, EmitError> {
    let mut header = *header;
    let data = match header.fragment.as_mut() {
        None if index == 0 => payload,
        None => return Err(EmitError::InvalidHeader("index of an unfragmented packet")),
        Some(frag) => {
            if index >= usize::from(frag.count) {
                return Err(EmitError::InvalidHeader("fragment index out of range"));
            }
            frag.id = index as u8;
            let start = index * MAX_DATA;
            let end = (start + MAX_DATA).min(payload.len());
            payload.get(start..end).ok_or(EmitError::InvalidHeader(
                "payload shorter than its fragments",
            ))?
        }
    };
    Packet {
        header,
        body: crate::wire::Body::Data {
            fields: *fields,
            data,
        },
    }
    .emit(buf)
}

/// An incomplete packet that received no fragment for this long may make room for a new one.
pub const STALE_AFTER: Duration = Duration::from_secs(1);

/// Limits of the reassembly of fragmented packets, per connection
/// (`ConnectionConfig::reassembly`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// Packets that may be in reassembly at once.
    pub max_packets: usize,
    /// Octets that may be reserved for packets in reassembly at once (each packet reserves
    /// `Fragment Number × 988` when its first fragment arrives).
    pub max_bytes: usize,
    /// How long an incomplete packet is kept after its first fragment arrived.
    pub timeout: Duration,
}

impl Default for ReassemblyConfig {
    /// 32 packets, 2 MiB, 10 seconds.
    fn default() -> Self {
        Self {
            max_packets: 32,
            max_bytes: 2 << 20,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What one fragment did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reassembly<'a> {
    /// The fragment was stored; the packet is not complete yet.
    Incomplete,
    /// The fragment was held already and was ignored.
    Duplicate,
    /// The packet is in reassembly limits' excess (too many packets or octets at once, and no
    /// incomplete packet could give way): the fragment was dropped and nothing was stored.
    Refused,
    /// The fragment completed its packet.
    Complete {
        /// The header of the packet (with the fragment fields of the last fragment received).
        header: Header,
        /// The type-specific fields.
        fields: TypeFields,
        /// The whole processed payload, ready to be opened in place.
        payload: &'a mut [u8],
    },
}

struct Slot {
    key: u32,
    header: Header,
    fields: TypeFields,
    count: u8,
    received: u8,
    held: FragmentBitmap,
    last_len: usize,
    reserved: usize,
    buf: Vec<u8>,
    deadline: Instant,
    /// When its latest fragment arrived.
    last: Instant,
}

/// Puts the fragments of packets back together, within bounded memory.
///
/// Packets are told apart by their 32-bit packet number (Init Vector high, Sequence ID low).
/// Fragments may arrive in any order; duplicates are ignored; a fragment that contradicts the
/// ones held of its packet is an error with the wire's code. At most
/// [`ReassemblyConfig::max_packets`] packets and [`ReassemblyConfig::max_bytes`] octets are in
/// reassembly at once; when full, a new packet takes the place of the least complete one if
/// that one holds a single fragment or has been idle for [`STALE_AFTER`] (so forged fragments
/// cannot starve it), and an incomplete packet is dropped at its deadline.
pub struct Reassembler {
    config: ReassemblyConfig,
    slots: Vec<Slot>,
    reserved: usize,
    pool: Vec<Vec<u8>>,
    /// Capacity of the buffers in `pool`.
    pool_bytes: usize,
    completed: Vec<u8>,
    evictions: u64,
}

impl std::fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembler")
            .field("packets", &self.slots.len())
            .field("reserved_bytes", &self.reserved)
            .finish()
    }
}

impl Reassembler {
    /// An empty reassembler with these limits.
    pub fn new(config: ReassemblyConfig) -> Self {
        Self {
            config,
            slots: Vec::new(),
            reserved: 0,
            pool: Vec::new(),
            pool_bytes: 0,
            completed: Vec::new(),
            evictions: 0,
        }
    }

    /// The limits.
    pub fn config(&self) -> &ReassemblyConfig {
        &self.config
    }

    /// Packets in reassembly.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no packet is in reassembly.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Octets of buffers held, in reassembly and kept for reuse.
    pub fn memory_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.buf.capacity()).sum::<usize>()
            + self.pool.iter().map(Vec::capacity).sum::<usize>()
            + self.completed.capacity()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
    }

    /// Octets reserved for packets in reassembly.
    pub fn reserved_bytes(&self) -> usize {
        self.reserved
    }

    /// Takes one fragment (a datagram whose header has FRAG) at time `now`.
    ///
    /// # Errors
    /// 3.3 if the packet has no FRAG flag or is AUTH; 3.6 if its Fragment Number differs
    /// from the one its packet's earlier fragments gave; 3.5 if its Data length does not fit
    /// its position (all but the last fragment carry exactly 988 octets, the last 1..=988);
    /// 3.0 if its other header fields or type fields differ from its packet's. On error
    /// nothing changes. (A fragment that contradicts a packet holding a single fragment, or
    /// one idle for [`STALE_AFTER`], replaces that packet instead: one of the two is forged.)
    pub fn insert(
        &mut self,
        now: Instant,
        packet: &Packet<'_>,
    ) -> Result<Reassembly<'_>, WireError> {
        let header = packet.header;
        let (fields, data) = match packet.body {
            crate::wire::Body::Data { fields, data } => (fields, data),
            crate::wire::Body::Auth(_) => {
                return Err(WireError::new(ErrorCode::Flags, "AUTH is never fragmented"))
            }
        };
        let Some(FragmentFields { id, count }) = header.fragment else {
            return Err(WireError::new(ErrorCode::Flags, "not a fragment"));
        };
        if !header.flags.contains(Flags::FRAG) {
            return Err(WireError::new(
                ErrorCode::Flags,
                "fragment fields without FRAG",
            ));
        }
        FragmentFields { id, count }.check()?;
        let is_last = id == count - 1;
        let len_ok = if is_last {
            (1..=MAX_DATA).contains(&data.len())
        } else {
            data.len() == MAX_DATA
        };
        if !len_ok {
            return Err(WireError::new(
                ErrorCode::FragmentId,
                "fragment length does not fit its position",
            ));
        }
        let key = crate::pipeline::seal::packet_number(&header);
        let mut existing = self.slots.iter().position(|s| s.key == key);
        if let Some(i) = existing {
            let slot = &self.slots[i];
            let conflict = if slot.count != count {
                Some(WireError::new(
                    ErrorCode::FragmentNumber,
                    "fragment number differs between fragments",
                ))
            } else if !same_packet(&slot.header, &header) || slot.fields != fields {
                Some(WireError::unreadable(
                    "fragment header differs from its packet's",
                ))
            } else {
                None
            };
            if let Some(e) = conflict {
                // One of the two is forged (fragments cannot be authenticated before the
                // packet is whole). A packet of one fragment, or one gone stale, gives way to
                // the newcomer: a forger cannot pin a packet number by sending first.
                let stale = now.saturating_duration_since(slot.last) >= STALE_AFTER;
                if slot.received > 1 && !stale {
                    return Err(e);
                }
                self.drop_slot(i);
                self.evictions += 1;
                existing = None;
            } else if slot.held[usize::from(id)] {
                return Ok(Reassembly::Duplicate);
            }
        }
        let index = match existing {
            Some(i) => i,
            None => {
                let reserve = usize::from(count) * MAX_DATA;
                if reserve > self.config.max_bytes {
                    return Ok(Reassembly::Refused);
                }
                while self.slots.len() >= self.config.max_packets
                    || self.reserved + reserve > self.config.max_bytes
                {
                    if !self.evict_one(now) {
                        return Ok(Reassembly::Refused);
                    }
                }
                // A reused buffer is not cleared first: every octet of the payload handed out
                // is written by its packet's fragments (all but the last fill their 988), so
                // only a shorter buffer's tail is zeroed.
                let mut buf = self.pool.pop().unwrap_or_default();
                self.pool_bytes -= buf.capacity();
                buf.resize(reserve, 0);
                self.reserved += reserve;
                self.slots.push(Slot {
                    key,
                    header,
                    fields,
                    count,
                    received: 0,
                    held: FragmentBitmap::ZERO,
                    last_len: 0,
                    reserved: reserve,
                    buf,
                    deadline: now + self.config.timeout,
                    last: now,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        slot.last = now;
        let start = usize::from(id) * MAX_DATA;
        slot.buf[start..start + data.len()].copy_from_slice(data);
        slot.held.set(usize::from(id), true);
        slot.received += 1;
        if is_last {
            slot.last_len = data.len();
        }
        if slot.received < slot.count {
            return Ok(Reassembly::Incomplete);
        }
        let slot = self.slots.swap_remove(index);
        self.reserved -= slot.reserved;
        let len = (usize::from(slot.count) - 1) * MAX_DATA + slot.last_len;
        let old = std::mem::replace(&mut self.completed, slot.buf);
        self.recycle(old);
        let mut header = slot.header;
        header.fragment = Some(FragmentFields {
            id,
            count: slot.count,
        });
        Ok(Reassembly::Complete {
            header,
            fields: slot.fields,
            payload: &mut self.completed[..len],
        })
    }

    /// Makes room for a new packet by dropping the least complete incomplete packet (the
    /// longest idle among equals), if it is no further along than a new packet's first
    /// fragment or has been idle for [`STALE_AFTER`]: a packet that is making progress is
    /// never dropped for one that has just begun. Returns whether one was dropped.
    fn evict_one(&mut self, now: Instant) -> bool {
        let Some((i, victim)) = self
            .slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| (s.received, s.last))
        else {
            return false;
        };
        let stale = now.saturating_duration_since(victim.last) >= STALE_AFTER;
        if victim.received > 1 && !stale {
            return false;
        }
        self.drop_slot(i);
        self.evictions += 1;
        true
    }

    fn drop_slot(&mut self, i: usize) {
        let slot = self.slots.swap_remove(i);
        self.reserved -= slot.reserved;
        self.recycle(slot.buf);
    }

    /// Incomplete packets dropped so far to make room for new ones.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Gives back the buffers kept for reuse (when the connection goes idle).
    pub fn trim(&mut self) {
        self.pool.clear();
        self.pool_bytes = 0;
        self.completed = Vec::new();
        if self.slots.is_empty() {
            self.slots = Vec::new();
        }
    }

    /// Takes the buffer of the packet the last [`Reassembly::Complete`] returned (its
    /// payload is at the start), to work on it while the reassembler takes more fragments.
    /// Hand it back with [`Reassembler::recycle`].
    pub fn take_completed(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.completed)
    }

    /// Gives a buffer back for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        // The empty buffer `take_completed` left behind is not kept: it would take a slot of
        // the pool, and a full pool of them allocates for every packet.
        let cap = buf.capacity();
        if cap > 0 && self.pool.len() < POOL_BUFFERS && self.pool_bytes + cap <= POOL_BYTES {
            self.pool_bytes += cap;
            self.pool.push(buf);
        }
    }

    /// The fragments held of the incomplete packet `packet_number`, with its Fragment Number,
    /// so that the sender can be told to resend only the missing ones.
    pub fn held(&self, packet_number: u32) -> Option<(u8, &BitSlice<u8, Msb0>)> {
        self.slots
            .iter()
            .find(|s| s.key == packet_number)
            .map(|s| (s.count, &s.held[..usize::from(s.count)]))
    }

    /// The packet numbers of the packets in reassembly.
    pub fn packets(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter().map(|s| s.key)
    }

    /// Drops every incomplete packet whose deadline is at or before `now` and returns how
    /// many were dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.slots.len();
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i].deadline <= now {
                let slot = self.slots.swap_remove(i);
                self.reserved -= slot.reserved;
                self.recycle(slot.buf);
            } else {
                i += 1;
            }
        }
        before - self.slots.len()
    }

    /// The earliest deadline of an incomplete packet.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().map(|s| s.deadline).min()
    }
}

/// Whether two fragments' headers belong to one packet (all but the Fragment ID agree).
fn same_packet(a: &Header, b: &Header) -> bool {
    a.packet_type == b.packet_type
        && a.flags == b.flags
        && a.sequence == b.sequence
        && a.init_vector == b.init_vector
        && a.checksum == b.checksum
        && a.fragment.map(|f| f.count) == b.fragment.map(|f| f.count)
}

/// Fragment count as the 8-bit field, or `None` above 255.
pub(crate) fn count_field(count: usize) -> Option<u8> {
    if count <= MAX_FRAGMENTS {
        u8::try_from(count).ok()
    } else {
        None
    }
}
