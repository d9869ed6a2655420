//! Bounds-checked access to the guest's linear memory (little-endian, as WebAssembly is).
//! Every out-of-range pointer becomes `EFAULT` for the guest, never a host panic.

use super::errno::{Errno, FAULT};

/// The guest memory during one WASI call.
pub struct Mem<'a>(pub &'a mut [u8]);

impl Mem<'_> {
    fn range(&self, ptr: u32, len: u32) -> Result<std::ops::Range<usize>, Errno> {
        let start = ptr as usize;
        let end = start.checked_add(len as usize).ok_or(FAULT)?;
        if end > self.0.len() {
            return Err(FAULT);
        }
        Ok(start..end)
    }

    /// `len` bytes at `ptr`.
    pub fn slice(&self, ptr: u32, len: u32) -> Result<&[u8], Errno> {
        let r = self.range(ptr, len)?;
        Ok(&self.0[r])
    }

    /// `len` writable bytes at `ptr`.
    pub fn slice_mut(&mut self, ptr: u32, len: u32) -> Result<&mut [u8], Errno> {
        let r = self.range(ptr, len)?;
        Ok(&mut self.0[r])
    }

    /// Copies `bytes` to `ptr`.
    pub fn write(&mut self, ptr: u32, bytes: &[u8]) -> Result<(), Errno> {
        let len = u32::try_from(bytes.len()).map_err(|_| FAULT)?;
        self.slice_mut(ptr, len)?.copy_from_slice(bytes);
        Ok(())
    }

    /// A little-endian u32 at `ptr`.
    pub fn u32(&self, ptr: u32) -> Result<u32, Errno> {
        let b = self.slice(ptr, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A little-endian u64 at `ptr`.
    pub fn u64(&self, ptr: u32) -> Result<u64, Errno> {
        let b = self.slice(ptr, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Stores a little-endian u32.
    pub fn put_u32(&mut self, ptr: u32, v: u32) -> Result<(), Errno> {
        self.write(ptr, &v.to_le_bytes())
    }

    /// Stores a little-endian u64.
    pub fn put_u64(&mut self, ptr: u32, v: u64) -> Result<(), Errno> {
        self.write(ptr, &v.to_le_bytes())
    }

    /// A UTF-8 string of `len` bytes at `ptr` (`EILSEQ` when not UTF-8).
    pub fn str(&self, ptr: u32, len: u32) -> Result<String, Errno> {
        let b = self.slice(ptr, len)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| super::errno::ILSEQ)
    }

    /// The `(buf, len)` pairs of an iovec array.
    pub fn iovecs(&self, iovs: u32, n: u32) -> Result<Vec<(u32, u32)>, Errno> {
        let mut out = Vec::with_capacity(n.min(1024) as usize);
        for k in 0..n {
            let at = iovs
                .checked_add(k.checked_mul(8).ok_or(FAULT)?)
                .ok_or(FAULT)?;
            let buf = self.u32(at)?;
            let len = self.u32(at.checked_add(4).ok_or(FAULT)?)?;
            self.range(buf, len)?;
            out.push((buf, len));
        }
        Ok(out)
    }

    /// The bytes of an iovec array, gathered, at most `cap` of them: the iovecs may all
    /// point at the same bytes, so their total is not bounded by the memory's size.
    pub fn gather(&self, iovs: u32, n: u32, cap: u32) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        for (buf, len) in self.iovecs(iovs, n)? {
            let room = cap as usize - out.len();
            if room == 0 {
                break;
            }
            let take = (len as usize).min(room) as u32;
            out.extend_from_slice(self.slice(buf, take)?);
        }
        Ok(out)
    }

    /// Scatters `data` over an iovec array; returns the bytes stored.
    pub fn scatter(&mut self, iovs: &[(u32, u32)], data: &[u8]) -> Result<usize, Errno> {
        let mut done = 0usize;
        for &(buf, len) in iovs {
            let take = (len as usize).min(data.len() - done);
            self.slice_mut(buf, take as u32)?
                .copy_from_slice(&data[done..done + take]);
            done += take;
            if done == data.len() {
                break;
            }
        }
        Ok(done)
    }
}
