//! What this process knows about chunks already in a repository (issue #11, item 2: a
//! damaged chunk must never be reused by a new checkpoint).
//!
//! A chunk is *known good* when this process wrote it as part of a durable part, or read
//! it back and found its digest right (every restore, range read and verify does); it is
//! *known bad* when a read found it damaged. The writer reuses a chunk found under its
//! final name only when it is known good, rewrites it when known bad, and otherwise reads
//! and verifies it first (once per process). So after a restore that skipped a damaged
//! checkpoint, the chunks it restored from are reused for free and the damaged ones are
//! rewritten. Memory: ~50 bytes per chunk; the good set is forgotten past
//! [`MAX_GOOD`] entries (those chunks are then verified again when next relied on).

use lazarus_format::ChunkDigest;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Most known-good digests remembered per repository.
pub(crate) const MAX_GOOD: usize = 1 << 21;

#[derive(Default)]
struct Sets {
    good: HashSet<ChunkDigest>,
    bad: HashSet<ChunkDigest>,
}

/// What is known about one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Known {
    Good,
    Bad,
    Unknown,
}

fn all() -> &'static Mutex<HashMap<PathBuf, Sets>> {
    static ALL: OnceLock<Mutex<HashMap<PathBuf, Sets>>> = OnceLock::new();
    ALL.get_or_init(Default::default)
}

fn with<T>(repo: &Path, f: impl FnOnce(&mut Sets) -> T) -> T {
    let mut g = all().lock().unwrap_or_else(|e| e.into_inner());
    f(g.entry(repo.to_path_buf()).or_default())
}

/// What this process knows about chunk `d` of the repository at `repo`.
pub(crate) fn status(repo: &Path, d: &ChunkDigest) -> Known {
    with(repo, |s| {
        if s.bad.contains(d) {
            Known::Bad
        } else if s.good.contains(d) {
            Known::Good
        } else {
            Known::Unknown
        }
    })
}

/// Records chunks verified or written durably by this process.
pub(crate) fn good(repo: &Path, ds: impl IntoIterator<Item = ChunkDigest>) {
    with(repo, |s| {
        for d in ds {
            s.bad.remove(&d);
            if s.good.len() >= MAX_GOOD {
                s.good.clear();
            }
            s.good.insert(d);
        }
    })
}

/// Records a chunk that a read found damaged (or not a regular file).
pub(crate) fn bad(repo: &Path, d: ChunkDigest) {
    with(repo, |s| {
        s.good.remove(&d);
        s.bad.insert(d);
    })
}
