//! A process-wide pool of large payload buffers.
//!
//! Why: a fresh 1 MiB buffer costs 256 first-touch page faults (and glibc may hand big
//! allocations back to the kernel on free), which profiling showed at ~8% of the cycles of a
//! bulk transfer. Send buffers come back here once the peer has acknowledged them (never
//! earlier: the retransmit window owns them until then); receive buffers come back once their
//! bytes have been copied into the caller's slice.
//!
//! Decisions: only buffers of at least [`MIN_POOLED`] bytes are pooled (small allocations
//! are cheap); at most [`MAX_RETAINED`] bytes stay parked (the rest is freed), so an idle
//! process holds at most that much extra memory. Buffers from [`take`] come out empty
//! (`len == 0`) with enough capacity; callers fill them with `extend_from_slice` or
//! `read_to_end`, so stale bytes are never observable there. [`take_filled`] (for
//! `SendBuf`) hands out initialized bytes that may be an earlier message's, sent or
//! received by this process — documented on `SendBuf::recycled`.

use std::sync::{Mutex, MutexGuard};

/// Smallest capacity worth pooling.
pub(crate) const MIN_POOLED: usize = 64 << 10;
/// Upper bound on the bytes parked in the pool.
pub(crate) const MAX_RETAINED: usize = 64 << 20;

struct Pool {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    bufs: Vec::new(),
    bytes: 0,
});

fn lock() -> MutexGuard<'static, Pool> {
    // Every critical section is a push or a swap_remove: a panic cannot leave it torn.
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the parked buffer that fits `n` bytes best, if any. Best fit among buffers no more
/// than twice as large, so small requests do not pin the biggest buffers.
fn take_fitting(n: usize) -> Option<Vec<u8>> {
    if n < MIN_POOLED {
        return None;
    }
    let mut p = lock();
    let mut best: Option<(usize, usize)> = None;
    for (i, b) in p.bufs.iter().enumerate() {
        let c = b.capacity();
        if c >= n && c / 2 <= n && best.is_none_or(|(_, bc)| c < bc) {
            best = Some((i, c));
        }
    }
    let (i, c) = best?;
    p.bytes -= c;
    Some(p.bufs.swap_remove(i))
}

/// An empty vector with capacity for at least `n` bytes, recycled when possible.
pub(crate) fn take(n: usize) -> Vec<u8> {
    match take_fitting(n) {
        Some(mut v) => {
            v.clear();
            v
        }
        None => Vec::with_capacity(n),
    }
}

/// An empty byte vector with room for at least `capacity` bytes, recycled from the runtime's
/// buffer pool when one is parked there (buffers of sent and acknowledged messages, and of
/// received ones handed back with [`recycle_payload`]). A large payload built in
/// it for [`crate::Comm::send_bytes`] costs no fresh pages, and comes back to the pool once
/// the peer has acknowledged it. The vector is empty: no earlier message's bytes are
/// observable through it.
pub fn payload_buffer(capacity: usize) -> Vec<u8> {
    take(capacity)
}

/// Hands a received message's payload (or any byte vector) to the runtime's buffer pool
/// once its bytes have been used: the next large message received, or built in a
/// [`payload_buffer`], reuses its pages instead of faulting in fresh ones. Small vectors,
/// and any beyond what the pool keeps, are simply freed; dropping the vector instead is
/// always correct.
pub fn recycle_payload(payload: Vec<u8>) {
    give(payload)
}

/// A vector of exactly `n` initialized bytes, recycled when possible. Recycled bytes hold
/// whatever an earlier message (sent or received) of this process left there (buffers
/// come back with their length, so everything below it was written); fresh ones are zero.
pub(crate) fn take_filled(n: usize) -> Vec<u8> {
    match take_fitting(n) {
        // Only the tail beyond the old length is zeroed: a buffer recycled for a message of
        // the same size costs nothing.
        Some(mut v) => {
            v.resize(n, 0);
            v
        }
        None => vec![0; n],
    }
}

/// Returns a buffer for reuse (dropped if small or if the pool is full).
pub(crate) fn give(v: Vec<u8>) {
    let c = v.capacity();
    if c < MIN_POOLED {
        return;
    }
    let mut p = lock();
    if p.bytes + c <= MAX_RETAINED {
        p.bytes += c;
        p.bufs.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycles_big_buffers_and_bounds_what_it_keeps() {
        let v = take(MIN_POOLED * 2);
        assert!(v.is_empty() && v.capacity() >= MIN_POOLED * 2);
        let mut v = v;
        v.extend_from_slice(&vec![7u8; MIN_POOLED * 2]);
        give(v);
        let w = take(MIN_POOLED * 2);
        assert!(w.is_empty(), "a recycled buffer must come back empty");
        give(w);
        // Small buffers are never retained and the total stays bounded.
        give(Vec::with_capacity(16));
        for _ in 0..(MAX_RETAINED / MIN_POOLED + 8) {
            give(Vec::with_capacity(MIN_POOLED));
        }
        assert!(lock().bytes <= MAX_RETAINED);
    }
}
