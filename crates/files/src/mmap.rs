//! A read-only shared mapping of a managed file, so a checkpoint can hand the whole file
//! to the store as one slice while the store (told by the change hint which chunks are
//! clean) reads only the changed ones: untouched pages are never faulted in.
//!
//! Sound only while nobody truncates the file: the mapping lives inside a checkpoint,
//! which holds the lock every managed-file operation takes, and the snapshot checks the
//! file's size before mapping it. A truncation by another process racing the checkpoint
//! itself is not caught: touching the lost pages raises SIGBUS (docs/FILES.md).

use std::fs::File;
use std::os::fd::AsRawFd;

/// A `PROT_READ`, `MAP_SHARED` mapping of a whole file (empty files map nothing).
pub(crate) struct Map {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned; the pointer is not aliased mutably.
unsafe impl Send for Map {}
// SAFETY: as above; shared reads of a read-only mapping are fine from any thread.
unsafe impl Sync for Map {}

impl Map {
    /// Maps the first `len` bytes of `file` (its current length).
    pub(crate) fn new(file: &File, len: u64) -> std::io::Result<Map> {
        let len =
            usize::try_from(len).map_err(|_| std::io::Error::other("file too large to map"))?;
        if len == 0 {
            return Ok(Map {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh mapping of a valid fd; the result is checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Map { ptr, len })
    }

    /// The mapped bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr maps len readable bytes for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping exactly what mmap returned.
            unsafe {
                libc::munmap(self.ptr, self.len);
            }
        }
    }
}
