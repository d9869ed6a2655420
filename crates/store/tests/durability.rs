//! Which directories a part makes durable before it counts as written. Alone in its test
//! binary because the fsync recorder (`lazarus_store::record_fsyncs`) is process-wide.
//!
//! The rules (docs/FORMAT.md, "Write protocol"): every `chunks/<hh>/` exists durably from
//! `Repository::open` on; a part fsyncs the directory of every chunk it renamed *and* of
//! every chunk it found present by name, because the writer that renamed that one may have
//! died before fsyncing its directory, and this part's COMMIT will depend on it.

mod common;

use common::*;
use lazarus_format::{ChunkDigest, Rank};
use lazarus_store::{record_fsyncs, CommitMeta, Repository};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn chunk_dir_of(root: &std::path::Path, bytes: &[u8]) -> PathBuf {
    let hex = ChunkDigest::of(bytes).to_hex();
    root.join("chunks").join(&hex[..2])
}

#[test]
fn parts_fsync_the_directories_of_written_and_deduplicated_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");

    // Open: all 256 fan-out directories, made durable by one fsync of chunks/.
    record_fsyncs(true);
    let mut repo = Repository::open(&root, small_opts()).unwrap();
    let at_open = record_fsyncs(false);
    let subdirs = std::fs::read_dir(root.join("chunks")).unwrap().count();
    assert_eq!(subdirs, 256, "every chunks/<hh>/ exists after open");
    assert!(at_open.contains(&root.join("chunks")), "{at_open:?}");
    // Reopening creates nothing and fsyncs nothing for them.
    drop(repo);
    record_fsyncs(true);
    repo = Repository::open(&root, small_opts()).unwrap();
    let reopen = record_fsyncs(false);
    assert!(!reopen.contains(&root.join("chunks")), "{reopen:?}");

    // One 4 KiB chunk of data, written by a first part: its directory is fsynced.
    let data = le_f64(&field(0, 1, 512));
    assert_eq!(data.len(), 4096);
    let want = chunk_dir_of(&root, &data);
    let p = repo.begin(1).unwrap();
    record_fsyncs(true);
    let r = p
        .part_writer()
        .write(Rank(0), &[bulk_f64("field", &data, None)])
        .unwrap();
    let first = record_fsyncs(false);
    assert_eq!(r.new_chunks, 1);
    assert!(first.contains(&want), "written chunk's dir: {first:?}");
    repo.commit(p, vec![r], CommitMeta::default()).unwrap();

    // A second part of the same bytes by a writer without this process's fingerprint cache
    // (as after a restart, or another rank): the chunk is found by name, nothing is written,
    // and its directory is still fsynced.
    let p = repo.begin(1).unwrap();
    record_fsyncs(true);
    let r = p
        .part_writer()
        .without_fingerprint_cache()
        .write(Rank(0), &[bulk_f64("field", &data, None)])
        .unwrap();
    let second: BTreeSet<PathBuf> = record_fsyncs(false).into_iter().collect();
    assert_eq!(r.new_chunks, 0, "deduplicated, not rewritten");
    assert!(
        second.contains(&want),
        "deduplicated chunk's dir: {second:?}"
    );
    repo.commit(p, vec![r], CommitMeta::default()).unwrap();
}
