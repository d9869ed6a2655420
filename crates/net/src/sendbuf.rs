//! Owned send buffers: the zero-copy path for bulk numeric messages.
//!
//! [`Comm::send_slice`](crate::Comm::send_slice) must copy: the reliable channel keeps every
//! message until the peer acknowledges it (to retransmit after a reconnect), and the caller
//! may change its slice as soon as the call returns. On loopback that one copy is about a
//! quarter of the cost of moving a 1 MiB message. A [`SendBuf`] is storage the communicator
//! may keep: the program writes the message into it, [`Comm::send_buf`](crate::Comm::send_buf)
//! hands it over without copying, and once the peer has acknowledged it the storage goes back
//! to a process-wide pool that the next [`SendBuf`] of a similar size is taken from.

use crate::scalar::Scalar;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// A buffer of `T` that [`Comm::send_buf`](crate::Comm::send_buf) sends without copying.
///
/// Dereferences to `[T]`. Guarantees: the length is fixed at creation; every element is an
/// initialized value of `T`; dropping an unsent buffer just recycles its storage.
pub struct SendBuf<T: Scalar> {
    storage: Storage<T>,
    _elem: PhantomData<T>,
}

enum Storage<T> {
    /// Little-endian bytes of the elements, in recycled storage aligned for `T`.
    Bytes(Vec<u8>),
    /// The allocator handed out storage not aligned for `T` (no mainstream allocator does
    /// for buffers this size), or the host is big-endian: plain elements, converted (one
    /// copy) when sent.
    Elems(Vec<T>),
}

impl<T: Scalar> SendBuf<T> {
    /// `len` elements in recycled storage. The contents are *unspecified*: zero, or bytes
    /// of an earlier message this process sent or received (the pool also recycles receive
    /// buffers). Never uninitialized memory, but write every element you mean to send; use
    /// [`SendBuf::zeroed`] when you need a known starting value.
    pub fn recycled(len: usize) -> Self {
        let bytes = len.saturating_mul(std::mem::size_of::<T>());
        if cfg!(target_endian = "little") {
            let v = crate::pool::take_filled(bytes);
            if v.as_ptr().align_offset(std::mem::align_of::<T>()) == 0 {
                return Self {
                    storage: Storage::Bytes(v),
                    _elem: PhantomData,
                };
            }
            crate::pool::give(v);
        }
        Self {
            storage: Storage::Elems(vec![T::zeroed(); len]),
            _elem: PhantomData,
        }
    }

    /// `len` zero elements (recycled storage, cleared: one pass over the memory).
    pub fn zeroed(len: usize) -> Self {
        let mut b = Self::recycled(len);
        b.fill(T::zeroed());
        b
    }

    /// A copy of `data` (one pass over the memory, like
    /// [`Comm::send_slice`](crate::Comm::send_slice)).
    pub fn from_slice(data: &[T]) -> Self {
        let mut b = Self::recycled(data.len());
        b.copy_from_slice(data);
        b
    }

    /// The message bytes in wire order (little-endian), without copying when possible.
    pub(crate) fn into_wire_bytes(mut self) -> Vec<u8> {
        // Leaves an empty storage behind for Drop, which then has nothing to recycle.
        match std::mem::replace(&mut self.storage, Storage::Elems(Vec::new())) {
            Storage::Bytes(v) => v,
            Storage::Elems(v) => crate::scalar::to_le_bytes(&v),
        }
    }
}

impl<T: Scalar> Deref for SendBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.storage {
            // Alignment was checked when the storage was taken, and the length is a whole
            // number of elements, so the cast cannot fail; the fallback keeps it panic-free.
            Storage::Bytes(v) => bytemuck::try_cast_slice(v).unwrap_or(&[]),
            Storage::Elems(v) => v,
        }
    }
}

impl<T: Scalar> DerefMut for SendBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.storage {
            Storage::Bytes(v) => bytemuck::try_cast_slice_mut(v).unwrap_or(&mut []),
            Storage::Elems(v) => v,
        }
    }
}

impl<T: Scalar> Drop for SendBuf<T> {
    fn drop(&mut self) {
        if let Storage::Bytes(v) = &mut self.storage {
            crate::pool::give(std::mem::take(v));
        }
    }
}

impl<T: Scalar + std::fmt::Debug> std::fmt::Debug for SendBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBuf").field("len", &self.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_contents_and_recycling() {
        let b = SendBuf::<f64>::from_slice(&[1.0, 2.5, -3.0]);
        assert_eq!(&b[..], &[1.0, 2.5, -3.0]);
        assert_eq!(
            b.into_wire_bytes(),
            crate::scalar::to_le_bytes(&[1.0f64, 2.5, -3.0])
        );

        // A big buffer goes back to the pool on drop and is handed out again, still a whole
        // number of aligned elements; zeroed() really clears what the last user left.
        let n = crate::pool::MIN_POOLED; // elements, so 8x that many bytes
        let mut big = SendBuf::<u64>::recycled(n);
        assert_eq!(big.len(), n);
        big.fill(u64::MAX);
        drop(big);
        let again = SendBuf::<u64>::zeroed(n);
        assert_eq!(again.len(), n);
        assert!(again.iter().all(|&x| x == 0));
        let wire = again.into_wire_bytes();
        assert_eq!(wire.len(), n * 8);
    }

    #[test]
    fn odd_sizes_and_empty() {
        let e = SendBuf::<u32>::recycled(0);
        assert!(e.is_empty());
        let mut b = SendBuf::<u16>::recycled(100_003);
        b[100_002] = 7;
        assert_eq!(b.len(), 100_003);
        assert_eq!(b.into_wire_bytes().len(), 200_006);
    }
}
