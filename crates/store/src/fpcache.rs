//! Per-process cache that lets an incremental checkpoint skip BLAKE3 on unchanged chunks.
//!
//! For every chunk the writer wrote or found in the previous checkpoint of a rank, the cache
//! remembers `(XXH3-128 of the raw bytes, raw length) -> BLAKE3 digest`, keyed by
//! (repository root, rank, object name, chunk index). The next checkpoint of that rank
//! fingerprints each chunk with XXH3 (~10x cheaper than BLAKE3) and reuses the digest when
//! the fingerprint and length at the same position match.
//!
//! Why reusing a digest on a fingerprint match is safe in practice (docs/FORMAT.md, "Writer
//! notes"):
//! - a wrong reuse needs two *different* byte strings of the same length at the same
//!   position of the same object of the same rank, in two consecutive checkpoints of the
//!   same process, with equal 128-bit XXH3: ~2^-128 per changed chunk for data that is not
//!   chosen to collide;
//! - the hash is seeded with a random per-process secret, so inputs crafted offline to
//!   collide under a known seed do not transfer (XXH3 is not cryptographic: this raises the
//!   bar, it does not prove resistance against an adversary who controls the data and can
//!   observe timing; such a caller can turn the cache off, see
//!   `PartWriter::without_fingerprint_cache`);
//! - nothing of it is persisted: a restarted process starts empty and hashes everything;
//!   BLAKE3 stays the on-disk identity and every read verifies it, so the worst case of a
//!   collision is a checkpoint holding the previous, intact bytes of that chunk, never a
//!   corrupt or foreign chunk;
//! - a hit is still checked against the repository (the chunk file must exist), so GC or a
//!   deleted repository between two checkpoints only turns the hit into a write.
//!
//! Each object's entry also carries the [`WriteTicket`] of the write that filled it. A
//! producer that tracks its own writes (the state layer's `DirtyVec`) receives that ticket
//! and later hands back a `ChangeHint` naming it: then chunks the hint reports clean reuse
//! the entry's `(fingerprint, digest)` without reading the bytes at all. A hint naming any
//! other ticket (a write that failed and so left no entry, another repository, rank or
//! chunk size, a later write by someone else) finds no match and the chunk is read.

use lazarus_format::{CheckpointId, ChunkDigest, Rank, WriteTicket};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// A cheap, seeded, non-persisted fingerprint of a chunk's raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    hash: u128,
    len: u64,
}

fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        // RandomState is seeded from the OS's random source once per process.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    })
}

/// XXH3-128 (seeded) of `data` plus its length.
pub(crate) fn fingerprint(data: &[u8]) -> Fingerprint {
    Fingerprint {
        hash: xxhash_rust::xxh3::xxh3_128_with_seed(data, seed()),
        len: data.len() as u64,
    }
}

/// The digests of one rank's part as last written by this process.
#[derive(Debug, Default)]
pub(crate) struct PartCache {
    chunk_size: u64,
    /// The checkpoint whose durable part filled the cache (set when it is stored).
    checkpoint: Option<CheckpointId>,
    objects: HashMap<String, CachedObject>,
}

/// One object of the part: the ticket of the write that recorded it, and per chunk (in
/// order) the fingerprint and digest of its raw bytes.
#[derive(Debug)]
struct CachedObject {
    ticket: WriteTicket,
    chunks: Vec<(Fingerprint, ChunkDigest)>,
}

impl PartCache {
    /// An empty cache for parts written with `chunk_size`.
    pub(crate) fn new(chunk_size: u64) -> Self {
        PartCache {
            chunk_size,
            checkpoint: None,
            objects: HashMap::new(),
        }
    }

    /// Records that these entries are those of `id`'s part (durable).
    pub(crate) fn set_checkpoint(&mut self, id: CheckpointId) {
        self.checkpoint = Some(id);
    }

    /// The digest recorded for chunk `index` of `object` if its fingerprint equals `fp`.
    pub(crate) fn lookup(
        &self,
        object: &str,
        index: usize,
        fp: Fingerprint,
    ) -> Option<ChunkDigest> {
        let (old, digest) = self.objects.get(object)?.chunks.get(index)?;
        (*old == fp).then_some(*digest)
    }

    /// The fingerprint and digest of chunk `index` of `object` as recorded by the write
    /// `ticket`, if that write recorded it and the chunk was `len` bytes long; for chunks a
    /// change hint relative to `ticket` reports clean.
    pub(crate) fn inherit(
        &self,
        object: &str,
        ticket: WriteTicket,
        index: usize,
        len: u64,
    ) -> Option<(Fingerprint, ChunkDigest)> {
        let o = self.objects.get(object)?;
        if o.ticket != ticket {
            return None;
        }
        let (fp, digest) = o.chunks.get(index)?;
        (fp.len == len).then_some((*fp, *digest))
    }

    /// Records the chunks of `object`, in order, as written under `ticket`.
    pub(crate) fn insert(
        &mut self,
        object: &str,
        ticket: WriteTicket,
        chunks: Vec<(Fingerprint, ChunkDigest)>,
    ) {
        self.objects
            .insert(object.to_owned(), CachedObject { ticket, chunks });
    }
}

type Key = (PathBuf, Rank);

fn global() -> &'static Mutex<HashMap<Key, PartCache>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, PartCache>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Takes (removes) the cache of `rank` in the repository at `repo`, if it was written with
/// the same chunk size. Taking rather than borrowing keeps the lock short and means a write
/// that fails leaves no cache behind (the next one hashes everything).
pub(crate) fn take(repo: &Path, rank: Rank, chunk_size: u64) -> Option<PartCache> {
    let c = global()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(repo.to_path_buf(), rank))?;
    (c.chunk_size == chunk_size).then_some(c)
}

/// Runs `f` on the cache of `rank` in the repository at `repo` without taking it, if it
/// was written with `chunk_size` for the part of checkpoint `checkpoint`.
pub(crate) fn peek<R>(
    repo: &Path,
    rank: Rank,
    chunk_size: u64,
    checkpoint: CheckpointId,
    f: impl FnOnce(&PartCache) -> R,
) -> Option<R> {
    let g = global().lock().unwrap_or_else(|e| e.into_inner());
    let c = g.get(&(repo.to_path_buf(), rank))?;
    (c.chunk_size == chunk_size && c.checkpoint == Some(checkpoint)).then(|| f(c))
}

/// Stores the cache of `rank`'s part just made durable, replacing any older one (objects
/// the part no longer has are forgotten, so memory stays proportional to one part).
pub(crate) fn put(repo: &Path, rank: Rank, cache: PartCache) {
    global()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((repo.to_path_buf(), rank), cache);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_length_and_content() {
        let a = fingerprint(b"abc");
        assert_eq!(a, fingerprint(b"abc"));
        assert_ne!(a, fingerprint(b"abd"));
        assert_ne!(fingerprint(b""), fingerprint(&[0u8]));
    }

    #[test]
    fn lookup_needs_same_object_index_and_fingerprint() {
        let d = ChunkDigest::of(b"x");
        let mut c = PartCache::new(4096);
        let t = WriteTicket::unique();
        c.insert("a", t, vec![(fingerprint(b"x"), d)]);
        assert_eq!(c.lookup("a", 0, fingerprint(b"x")), Some(d));
        assert_eq!(c.lookup("a", 1, fingerprint(b"x")), None);
        assert_eq!(c.lookup("b", 0, fingerprint(b"x")), None);
        assert_eq!(c.lookup("a", 0, fingerprint(b"y")), None);
    }

    #[test]
    fn inherit_needs_same_ticket_object_index_and_length() {
        let d = ChunkDigest::of(b"x");
        let mut c = PartCache::new(4096);
        let t = WriteTicket::unique();
        c.insert("a", t, vec![(fingerprint(b"x"), d)]);
        assert_eq!(c.inherit("a", t, 0, 1), Some((fingerprint(b"x"), d)));
        assert_eq!(c.inherit("a", WriteTicket::unique(), 0, 1), None);
        assert_eq!(c.inherit("b", t, 0, 1), None);
        assert_eq!(c.inherit("a", t, 1, 1), None);
        assert_eq!(c.inherit("a", t, 0, 2), None);
    }

    #[test]
    fn take_is_keyed_by_repo_rank_and_chunk_size() {
        let repo = Path::new("/nonexistent/fpcache-test");
        put(repo, Rank(7), PartCache::new(4096));
        assert!(take(repo, Rank(8), 4096).is_none());
        assert!(take(Path::new("/other"), Rank(7), 4096).is_none());
        assert!(take(repo, Rank(7), 8192).is_none());
        put(repo, Rank(7), PartCache::new(4096));
        assert!(take(repo, Rank(7), 4096).is_some());
        assert!(take(repo, Rank(7), 4096).is_none());
    }
}
