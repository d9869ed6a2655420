//! Regressions from the second review of the managed files (2026-12-07): publication that
//! stopped at the first unpublishable output, a temp name an output could have, symbolic
//! links followed by live operations, lengths near the end of the offset range, a file
//! truncated behind the job, a torn journal tail hiding `Restoring`, and data-write errors
//! that did not name the file. Each failed on the code before its fix.

mod common;

use common::{disk_tree, Rig, CHUNK};
use lazarus_files::FilesErrorKind;
use std::io::{ErrorKind, Write};
use std::path::Path;

/// A power loss tore the journal's tail; the restart's restore was then killed mid-apply.
/// `Restoring` was appended after the torn bytes, where no reader sees it: the next
/// restart took the job's own half-finished restore for foreign changes and refused.
#[test]
fn restoring_after_a_torn_tail_is_seen() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    f.write("a", vec![1u8; 2 * CHUNK as usize]).unwrap();
    let c = rig.checkpoint(&f);
    f.write("new", b"created after the checkpoint").unwrap();
    f.write("a", b"rewritten").unwrap(); // so `new`'s record is not the last
    drop(f);
    let journal = rig.root.join(".lazarus/rank-0/journal");
    let mut j = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    j.write_all(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe]).unwrap(); // a frame cut short
    drop(j);
    let f = rig.files(false);
    // Past `Restoring` and the deletion of `new`: the tree is half restored.
    f.simulate_crash_after(2);
    assert!(rig.restore(&f, Some(c)).is_err());
    drop(f);
    assert!(!rig.work().join("new").exists(), "the restore got that far");
    let _g = rig
        .restored(Some(c), false)
        .unwrap_or_else(|e| panic!("the interrupted restore was not seen: {e}"));
    assert_eq!(
        std::fs::read(rig.work().join("a")).unwrap(),
        vec![1u8; 2 * CHUNK as usize]
    );
    assert_eq!(disk_tree(&rig.work()).len(), 1);
}
