//! Recycled chunk files (`Repository::recycle_dead_chunks`): garbage collection keeps the
//! files of dead chunks as spares, the next checkpoint writes its new chunks into them,
//! and nothing a reader sees changes.

mod common;

use common::*;
use lazarus_store::{RepoReader, Repository};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const SPARE: &str = "chunks/.tmp-spare";

fn inodes(paths: &[PathBuf]) -> BTreeSet<u64> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().ino())
        .collect()
}

/// The chunk files a reader can see (the spare directory excluded).
fn chunk_files(root: &Path) -> BTreeSet<PathBuf> {
    files(&root.join("chunks"), "")
        .into_iter()
        .filter(|p| !p.starts_with(root.join(SPARE)))
        .collect()
}

fn assert_verifies(root: &Path) {
    let v = RepoReader::open(root).unwrap().verify(&|_, _| {}).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
}

#[test]
fn dead_chunk_files_become_the_next_checkpoints_chunks_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut repo = Repository::open(root, small_opts()).unwrap();
    repo.recycle_dead_chunks(true);
    checkpoint(&mut repo, 2, 1, 6000);
    let b = checkpoint(&mut repo, 2, 2, 3000);
    let rep = repo.retain(1).unwrap();
    assert!(rep.chunks_removed > 0);
    let spares = files(&root.join(SPARE), "");
    assert_eq!(spares.len() as u64, rep.chunks_removed, "{spares:?}");
    let spare_inodes = inodes(&spares);
    assert_verifies(root);
    assert_holds(root, b, 2, 2, 3000);

    // The next checkpoint's new chunks take the spares' files, whatever their sizes.
    let before = chunk_files(root);
    let c = checkpoint(&mut repo, 2, 3, 4500);
    let new: Vec<PathBuf> = chunk_files(root).difference(&before).cloned().collect();
    let reused = inodes(&new).intersection(&spare_inodes).count();
    assert!(reused > 0, "no spare reused");
    assert_eq!(files(&root.join(SPARE), "").len(), spares.len() - reused);
    assert_holds(root, c, 2, 3, 4500);
    assert_holds(root, b, 2, 2, 3000);
    assert_verifies(root);
}

/// A collection deletes the spares the one before it left (nothing reused them), so
/// spares never hold more than one collection's dead chunks; one without recycling (what
/// `lazarus gc` runs) leaves none.
#[test]
fn spares_are_bounded_by_one_collection_and_gc_without_recycling_frees_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut repo = Repository::open(root, small_opts()).unwrap();
    repo.recycle_dead_chunks(true);
    for step in 1..=3 {
        checkpoint(&mut repo, 1, step, 3000);
    }
    let first = repo.retain(2).unwrap();
    let left = inodes(&files(&root.join(SPARE), ""));
    assert_eq!(left.len() as u64, first.chunks_removed);
    assert!(!left.is_empty());
    let second = repo.retain(1).unwrap();
    let now = files(&root.join(SPARE), "");
    // Only the second collection's: the first one's were deleted before it retired more.
    assert!(second.chunks_removed > 0);
    assert_eq!(now.len() as u64, second.chunks_removed);
    repo.recycle_dead_chunks(false);
    let third = repo.retain(1).unwrap();
    assert_eq!(third.chunks_removed, 0);
    assert!(!root.join(SPARE).exists());
    assert_verifies(root);
}

/// A writer without recycling takes spares too (any handle of the repository does), and
/// `clear_spares` deletes what is left.
#[test]
fn clear_spares_deletes_what_no_write_reused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut repo = Repository::open(root, small_opts()).unwrap();
    repo.recycle_dead_chunks(true);
    checkpoint(&mut repo, 1, 1, 3000);
    checkpoint(&mut repo, 1, 2, 3000);
    repo.retain(1).unwrap();
    assert!(!files(&root.join(SPARE), "").is_empty());
    repo.clear_spares().unwrap();
    assert!(!root.join(SPARE).exists());
    assert_verifies(root);
}
