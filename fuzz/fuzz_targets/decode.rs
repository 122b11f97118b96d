//! `decode`: arbitrary bytes → `Packet::parse`.
//!
//! Holds the wire layer to its panic contract (`src/wire/mod.rs`): parsing never panics and
//! never allocates, and a parsed packet emits back to a datagram that parses to the same
//! packet, of `len()` octets. Every field of the layout is either checked or stored, so the
//! emitted datagram must also be the input, octet for octet.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use tickwire::wire::{Body, EmitError, Packet, MAX_DATA, MAX_DATA_DATAGRAM};

/// Counts allocations, so that the target can check that `Packet::parse` makes none.
struct CountingAlloc;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fuzz_target!(|data: &[u8]| {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let parsed = Packet::parse(data);
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(before, after, "Packet::parse allocated");

    let packet = match parsed {
        Ok(p) => p,
        Err(e) => {
            // The error names a 3.x code (malformed packet).
            assert_eq!(e.code.parts().0, 3, "parse error {e} is not a 3.x code");
            return;
        }
    };

    // What parse accepts, emit can write.
    if let Body::Data { data: d, .. } = packet.body {
        assert!(d.len() <= MAX_DATA);
        assert!(packet.len() <= MAX_DATA_DATAGRAM);
    }
    let len = packet.len();
    let mut buf = vec![0xA5u8; len + 8];
    let n = packet
        .emit(&mut buf)
        .unwrap_or_else(|e| panic!("parsed packet failed to emit: {e:?}\n{packet:?}"));
    assert_eq!(n, len, "emit wrote a length other than len()");
    assert!(
        buf[n..].iter().all(|&b| b == 0xA5),
        "emit wrote past its length"
    );
    assert_eq!(&buf[..n], data, "emit(parse(x)) != x");

    let again = Packet::parse(&buf[..n]).expect("emitted packet failed to parse");
    assert_eq!(again, packet, "parse(emit(p)) != p");

    // A buffer one octet short is refused, and nothing is written.
    let mut short = vec![0x5Au8; len - 1];
    match packet.emit(&mut short) {
        Err(EmitError::BufferTooSmall { needed, available }) => {
            assert_eq!((needed, available), (len, len - 1));
        }
        other => panic!("emit into a short buffer gave {other:?}"),
    }
    assert!(short.iter().all(|&b| b == 0x5A), "failed emit wrote");
});
