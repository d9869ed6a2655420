//! Regression (review): on resume stdin was put at `lseek(0, consumed, SEEK_SET)`, wrong
//! when the program had been given stdin at a non-zero offset (a script that read a
//! header first). It now moves `consumed` bytes on from where the resume's stdin stands.
//! Alone in its binary: it redirects this process's fd 0.

mod common;

use lazarus_vm::wasi::Wasi;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;

#[test]
fn stdin_inherited_at_a_nonzero_offset_is_resumed_after_what_was_consumed() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(d.path().join("input"), "HEADER\n0123456789").unwrap();
    let mut f = std::fs::File::open(d.path().join("input")).unwrap();
    f.seek(SeekFrom::Start(7)).unwrap(); // the caller consumed the header
    let (_, w) = common::wasi::host(&data);
    let mut state = w.state();
    state.stdin_consumed = 4; // the program had read "0123"
                              // SAFETY: plain descriptor duplication; fd 0 is put back below.
    let saved = unsafe { libc::dup(0) };
    // SAFETY: as above.
    unsafe { libc::dup2(f.as_raw_fd(), 0) };
    let resumed = Wasi::resume(&state, false);
    // SAFETY: lseek on fd 0, which is the file here.
    let at = unsafe { libc::lseek(0, 0, libc::SEEK_CUR) };
    // SAFETY: as above.
    unsafe { libc::dup2(saved, 0) };
    resumed.unwrap();
    assert_eq!(at, 11, "after the header and the 4 bytes read");
}
