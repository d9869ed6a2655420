//! Writing one rank's part of a pending checkpoint: chunking, hashing, dedup, compression,
//! durable chunk files, then the rank manifest.

use crate::backend::{DirKey, ObjectKey, PutMode, Staged, WriteBackend};
use crate::error::{StoreError, StoreErrorKind};
use crate::fpcache::{self, Fingerprint, PartCache};
use crate::fsutil::{failpoint, Budget};
use crate::known::{self, Known};
use crate::lease::LeaseConfig;
use lazarus_format::{
    encode_chunk, ChangeHint, CheckpointId, ChunkCodec, ChunkDigest, ChunkHeader, ChunkRef,
    Manifest, ManifestObject, ObjectKind, ObjectSpec, Rank, WriteTicket,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Default maximum raw chunk length: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest accepted chunk size.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest accepted chunk size.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;

/// Compression policy for new chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    /// zstd level 1 (byte-shuffled first for f32/f64) when a 64 KiB probe of the chunk
    /// shrinks by at least 5 % and the whole chunk then does too; raw otherwise, so
    /// incompressible data pays only for the probe.
    #[default]
    Auto,
    /// Never compress.
    None,
    /// Always zstd level 1 (byte-shuffled for f32/f64).
    Zstd,
}

impl std::str::FromStr for Codec {
    type Err = String;

    /// `auto`, `none` or `zstd` (any case); an error names the value.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Codec::Auto),
            "none" => Ok(Codec::None),
            "zstd" => Ok(Codec::Zstd),
            _ => Err(format!("{s:?}: expected a codec: auto, none or zstd")),
        }
    }
}

impl std::fmt::Display for Codec {
    /// The name [`Codec`]'s `FromStr` reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Codec::Auto => "auto",
            Codec::None => "none",
            Codec::Zstd => "zstd",
        })
    }
}

/// Options for opening a repository or a part writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoOptions {
    /// Maximum raw bytes per chunk (`MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE`); default 1 MiB.
    pub chunk_size: u32,
    /// Compression policy for new chunks.
    pub codec: Codec,
    /// Job token of the writer; its BLAKE3 prefix (not the token) is stored in `LOCK`.
    pub job_token: Option<String>,
    /// Lease timing for backends that lock with a lease (object stores, memory); `None`:
    /// the backend's own (docs/STORAGE.md). Ignored by the directory backend (flock).
    pub lease: Option<LeaseConfig>,
}

impl Default for RepoOptions {
    fn default() -> Self {
        RepoOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            codec: Codec::Auto,
            job_token: None,
            lease: None,
        }
    }
}

impl RepoOptions {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if let Some(l) = &self.lease {
            l.validate()?;
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                None,
                format!(
                    "chunk_size {} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                    self.chunk_size
                ),
            ));
        }
        Ok(())
    }
}

/// Proof that one rank's part is durable: sent to the committer (over the network in the
/// two-phase commit), which checks it against the manifest on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartReceipt {
    /// The rank that wrote the part.
    pub rank: Rank,
    /// The checkpoint the part belongs to.
    pub checkpoint: CheckpointId,
    /// BLAKE3 of the whole manifest file.
    pub manifest_digest: ChunkDigest,
    /// Sum of the object lengths.
    pub logical_bytes: u64,
    /// Bytes of chunk files newly written (not deduplicated).
    pub stored_new_bytes: u64,
    /// Number of chunks referenced by the part.
    pub chunks: u64,
    /// Number of those chunks that were newly written.
    pub new_chunks: u64,
    /// Number of chunks whose digest came from this process's fingerprint cache (unchanged
    /// since its previous checkpoint of the rank, not re-hashed with BLAKE3).
    #[serde(default)]
    pub cached_chunks: u64,
    /// Number of chunks whose digest was reused because the object's change hint reported
    /// them unchanged since the write it names: their bytes were not read at all.
    #[serde(default)]
    pub hinted_chunks: u64,
    /// The manifest file's bytes when the writer kept it inline (format 1.1, see
    /// [`PartWriter::with_inline_manifest`]): no `rank-<r>.manifest` file was written, and
    /// the committer stores these bytes in COMMIT. `None`: the manifest is a durable file.
    #[serde(default)]
    pub manifest: Option<Vec<u8>>,
}

/// The tails of objects whose chunks were written (durably) ahead of their part by
/// [`PartWriter::write_ahead`]: an asynchronous checkpoint whose state does not fit its
/// staging budget writes what does not fit inside the call, and the rest of the part
/// (the staged heads, the manifest) later, with [`PartWriter::write_with`] (docs/ASYNC.md).
///
/// It also carries the chunks of objects captured *sparsely* ([`Unchanged`], added with
/// [`WrittenAhead::reuse`]): chunks an incremental capture did not copy because they are
/// unchanged since the previous committed checkpoint, which the part names by digest.
#[derive(Clone, Debug, Default)]
pub struct WrittenAhead {
    checkpoint: Option<CheckpointId>,
    /// Object name → (byte offset where its tail starts, the tail's chunks in order).
    tails: std::collections::BTreeMap<String, (u64, Vec<ChunkRef>)>,
    new_bytes: u64,
    new_chunks: u64,
    /// Object name → its chunks unchanged since the previous committed checkpoint.
    reused: std::collections::BTreeMap<String, Unchanged>,
}

impl WrittenAhead {
    /// Bytes of object data written ahead.
    pub fn bytes(&self) -> u64 {
        self.tails
            .values()
            .flat_map(|(_, c)| c.iter())
            .map(|c| c.len)
            .sum()
    }

    /// True when nothing was written ahead and no chunk is reused.
    pub fn is_empty(&self) -> bool {
        self.tails.is_empty() && self.reused.is_empty()
    }

    /// Adds the unchanged chunks of one object captured sparsely: the part then names
    /// them by digest, and the object given to [`PartWriter::write_with`] holds only its
    /// other chunks' bytes, in order ([`Unchanged::copy_changed`]). Fails when that object
    /// already has reused chunks or a tail written ahead.
    pub fn reuse(&mut self, u: Unchanged) -> Result<(), StoreError> {
        if self.reused.contains_key(&u.name) || self.tails.contains_key(&u.name) {
            return Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                None,
                format!(
                    "object {:?}: reused chunks given twice, or with a tail written ahead",
                    u.name
                ),
            ));
        }
        self.reused.insert(u.name.clone(), u);
        Ok(())
    }

    /// Raw bytes of the reused chunks (not copied, not read).
    pub fn reused_bytes(&self) -> u64 {
        self.reused
            .values()
            .map(|u| u.len - u.changed_bytes())
            .sum()
    }

    fn reused_chunks(&self) -> u64 {
        self.reused.values().map(|u| u.reused() as u64).sum()
    }
}

/// The chunks of one object that are unchanged since the previous committed checkpoint
/// of this rank ([`PartWriter::unchanged_since`]), with their digests: an incremental
/// asynchronous capture copies only the *other* chunks (issue #16), and the part names
/// these by digest. Decided at capture time, from the object's change hint and this
/// process's fingerprint cache of exactly that checkpoint's part; never by hashing a
/// sparse copy (there is nothing to hash for the chunks not copied).
#[derive(Clone, Debug)]
pub struct Unchanged {
    name: String,
    len: u64,
    chunk_size: u64,
    base: CheckpointId,
    /// Per chunk index: the fingerprint and digest recorded by `base`'s part when the
    /// chunk is reused; `None` when it is copied (changed, or not known).
    chunks: Vec<Option<(Fingerprint, ChunkDigest)>>,
}

impl Unchanged {
    /// The object's name.
    pub fn object(&self) -> &str {
        &self.name
    }

    /// The committed checkpoint whose chunks are reused.
    pub fn base(&self) -> CheckpointId {
        self.base
    }

    /// Number of chunks reused.
    pub fn reused(&self) -> usize {
        self.chunks.iter().filter(|c| c.is_some()).count()
    }

    /// The byte range of chunk `index` of the object.
    fn range(&self, index: usize) -> std::ops::Range<u64> {
        let start = index as u64 * self.chunk_size;
        start..(start + self.chunk_size).min(self.len)
    }

    /// Bytes of the chunks not reused: what a sparse capture copies.
    pub fn changed_bytes(&self) -> u64 {
        (0..self.chunks.len())
            .filter(|&i| self.chunks.get(i).is_some_and(Option::is_none))
            .map(|i| {
                let r = self.range(i);
                r.end - r.start
            })
            .sum()
    }

    /// Appends to `out` the bytes of the chunks not reused, in order, taken from `data`
    /// (the whole object, as described when this was computed): the sparse capture.
    /// Fails when `data` is not that object's length.
    pub fn copy_changed(&self, data: &[u8], out: &mut Vec<u8>) -> Result<(), StoreError> {
        if data.len() as u64 != self.len {
            return Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                None,
                format!(
                    "object {:?} has {} bytes, not the {} its unchanged chunks were computed for",
                    self.name,
                    data.len(),
                    self.len
                ),
            ));
        }
        out.reserve(self.changed_bytes() as usize);
        for (i, c) in self.chunks.iter().enumerate() {
            if c.is_none() {
                let r = self.range(i);
                if let Some(b) = data.get(r.start as usize..r.end as usize) {
                    out.extend_from_slice(b);
                }
            }
        }
        Ok(())
    }
}

/// Writes rank parts of one pending checkpoint. Cheap to clone, `Send + Sync`; can be built
/// in another process with [`PartWriter::open`] without holding the repository lock.
#[derive(Clone, Debug)]
pub struct PartWriter {
    backend: Arc<dyn WriteBackend>,
    id: CheckpointId,
    opts: RepoOptions,
    budget: Budget,
    fingerprint_cache: bool,
    /// `fpcache::fingerprint`, replaceable by unit tests to force collisions.
    fingerprint_fn: fn(&[u8]) -> Fingerprint,
    /// Manifests up to this many bytes go into the receipt instead of a file (0: never).
    inline_limit: usize,
}

struct Job<'a> {
    obj: usize,
    name: &'a str,
    /// Chunk index within the object.
    index: usize,
    /// Byte offset of the chunk within the object.
    offset: u64,
    data: &'a [u8],
    shuffle: Option<u8>,
    /// The object's change hint, when it describes exactly the object's bytes.
    hint: Option<&'a ChangeHint>,
}

/// A chunk file's bytes: `Raw` borrows the caller's data (no copy), `Owned` is a
/// compressed encoding.
enum Encoded<'a> {
    Raw([u8; lazarus_format::CHUNK_HEADER_LEN], &'a [u8]),
    Owned(Vec<u8>),
}

impl Encoded<'_> {
    /// The file's bytes as the pieces to write (header and borrowed data for `Raw`).
    fn parts(&self) -> [&[u8]; 2] {
        match self {
            Encoded::Raw(h, d) => [h, d],
            Encoded::Owned(v) => [v, &[]],
        }
    }

    fn len(&self) -> usize {
        match self {
            Encoded::Raw(h, d) => h.len() + d.len(),
            Encoded::Owned(v) => v.len(),
        }
    }
}

struct ChunkOutcome {
    chunk: ChunkRef,
    /// Fingerprint of the raw bytes when the fingerprint cache is on.
    fp: Option<Fingerprint>,
    /// The stored size is not known yet: another worker of this write is writing the same
    /// chunk; filled in from that worker's outcome.
    stored_pending: bool,
    /// The digest came from the fingerprint cache.
    cached: bool,
    /// The digest came from the fingerprint cache on the object's change hint (bytes unread).
    hinted: bool,
    new_bytes: u64,
    /// A newly written, not yet published/durable chunk.
    staged: Option<Staged>,
    /// The chunk's directory, to fsync before the part counts as durable: the one a new
    /// chunk was renamed into, or the one a chunk found by dedup lies in.
    dir: Option<DirKey>,
}

impl PartWriter {
    pub(crate) fn new(
        backend: Arc<dyn WriteBackend>,
        id: CheckpointId,
        opts: RepoOptions,
        budget: Budget,
    ) -> Self {
        PartWriter {
            backend,
            id,
            opts,
            budget,
            fingerprint_cache: true,
            fingerprint_fn: fpcache::fingerprint,
            inline_limit: 0,
        }
    }

    /// Keeps manifests of at most `max_bytes` (capped at [`lazarus_format::MAX_INLINE_MANIFEST`])
    /// out of the file system: [`PartWriter::write`] still makes every chunk durable, but
    /// returns the manifest bytes in [`PartReceipt::manifest`] instead of writing and
    /// fsyncing `rank-<r>.manifest`; the committer stores them inline in COMMIT (format 1.1).
    /// Until that COMMIT is durable the part exists only in the receipt, so a receipt with
    /// an inline manifest must reach the committer (as a two-phase-commit vote does).
    pub fn with_inline_manifest(mut self, max_bytes: usize) -> Self {
        self.inline_limit = max_bytes.min(lazarus_format::MAX_INLINE_MANIFEST);
        self
    }

    /// The same writer (options, budget, cache and inline settings) for another pending
    /// checkpoint `id` of the same repository, without re-reading `FORMAT`: per-round
    /// reopening is what [`PartWriter::open`] would cost. Whether `id` is pending is
    /// checked by [`PartWriter::write`] (which fails like `open` when it is not), not here:
    /// that is one check per round instead of two.
    pub fn for_checkpoint(&self, id: CheckpointId) -> Result<PartWriter, StoreError> {
        Ok(PartWriter { id, ..self.clone() })
    }

    /// Turns off the per-process fingerprint cache for this writer: every chunk is hashed
    /// with BLAKE3 on every checkpoint, as for a freshly started process. For callers whose
    /// state is chosen by an adversary who could try to craft XXH3 collisions (see
    /// docs/FORMAT.md, "Writer notes"); costs a full BLAKE3 pass over the data.
    pub fn without_fingerprint_cache(mut self) -> Self {
        self.fingerprint_cache = false;
        self
    }

    /// A writer for the pending checkpoint `id` of the repository at `repo` (a directory,
    /// `s3://bucket/prefix` or `memory://name`); the pending directory must exist (created
    /// by `Repository::begin`) and must not be committed.
    pub fn open(
        repo: &Path,
        id: CheckpointId,
        opts: RepoOptions,
    ) -> Result<PartWriter, StoreError> {
        Self::open_backend(crate::location::open_backend(repo)?, id, opts)
    }

    /// [`PartWriter::open`] on a backend.
    pub fn open_backend(
        backend: Arc<dyn WriteBackend>,
        id: CheckpointId,
        opts: RepoOptions,
    ) -> Result<PartWriter, StoreError> {
        opts.validate()?;
        crate::reader::check_format(backend.as_ref())?;
        let w = PartWriter::new(backend, id, opts, Budget::default());
        w.check_pending()?;
        Ok(w)
    }

    /// Simulates a disk with only `bytes` left for this writer's files (fault injection).
    pub fn with_write_budget(mut self, bytes: u64) -> Self {
        self.budget = Budget::limited(bytes);
        self
    }

    /// The checkpoint this writer writes to.
    pub fn id(&self) -> CheckpointId {
        self.id
    }

    /// The raw chunk length this writer cuts objects into: a split of an object between
    /// [`PartWriter::write_ahead`] and [`PartWriter::write_with`] must fall on a multiple.
    pub fn chunk_size(&self) -> u64 {
        u64::from(self.opts.chunk_size)
    }

    /// The chunks of `object` that may be named by digest instead of copied: those its
    /// change hint reports clean relative to the write this process's fingerprint cache
    /// recorded for it, provided that write was `rank`'s part of checkpoint `base` (the
    /// caller's previous *committed* checkpoint, so the chunks are retained), with this
    /// writer's chunk size and the object's length, and not known damaged. `None` when no
    /// chunk qualifies: no hint, no cache (a restart, or the previous write failed), a
    /// cache of another checkpoint (the previous round aborted), the cache turned off. So
    /// whether a capture is sparse is decided here, at capture time, and a write given
    /// the result never has to hash bytes it was not given.
    pub fn unchanged_since(
        &self,
        rank: Rank,
        object: &ObjectSpec<'_>,
        base: CheckpointId,
    ) -> Option<Unchanged> {
        if !self.fingerprint_cache {
            return None;
        }
        let hint = object.hint.as_ref()?;
        let ticket = hint.base()?;
        let len = object.data.len() as u64;
        if hint.len() != len || len == 0 {
            return None;
        }
        let chunk = self.chunk_size();
        let repo = self.backend.location();
        let name = object.info.name.as_str();
        let n = len.div_ceil(chunk) as usize;
        let chunks = fpcache::peek(repo, rank, chunk, base, |c| {
            (0..n)
                .map(|i| {
                    let start = i as u64 * chunk;
                    let end = (start + chunk).min(len);
                    if !hint.is_clean(start..end) {
                        return None;
                    }
                    c.inherit(name, ticket, i, end - start)
                        .filter(|(_, d)| known::status(repo, d) != Known::Bad)
                })
                .collect::<Vec<_>>()
        })?;
        if chunks.iter().all(Option::is_none) {
            return None;
        }
        Some(Unchanged {
            name: name.to_owned(),
            len,
            chunk_size: chunk,
            base,
            chunks,
        })
    }

    /// Writes the *tails* of objects ahead of their part: for each `(object, start)`,
    /// `object.data` holds the object's bytes from offset `start` (a multiple of
    /// [`PartWriter::chunk_size`]) to its end, and `object.info` is the whole object's.
    /// Every chunk is durable when this returns; the part itself (manifest, the heads) is
    /// written by [`PartWriter::write_with`] given the result, typically later and on
    /// another thread. Without that write the chunks belong to no part, and GC removes
    /// them like those of any uncommitted checkpoint. No fingerprint cache and no change
    /// hints are used or fed: the tails are hashed in full (correct, never stale).
    pub fn write_ahead(
        &self,
        rank: Rank,
        objects: &[(ObjectSpec<'_>, u64)],
    ) -> Result<WrittenAhead, StoreError> {
        self.check_pending()?;
        let ctx = format!("checkpoint {} {rank} (written ahead)", self.id);
        let chunk_size = self.opts.chunk_size as usize;
        let mut jobs = Vec::new();
        let mut names = HashSet::new();
        for (i, (o, start)) in objects.iter().enumerate() {
            if !names.insert(o.info.name.as_str()) || start % chunk_size as u64 != 0 {
                return Err(StoreError::new(
                    StoreErrorKind::InvalidArgument,
                    None,
                    format!(
                        "{ctx}: object {:?} given twice or split at {start}, not a multiple of the chunk size {chunk_size}",
                        o.info.name
                    ),
                ));
            }
            let shuffle = match &o.info.kind {
                ObjectKind::Bulk { dtype, .. } => dtype.is_float().then_some(dtype.size() as u8),
                ObjectKind::Serde => None,
            };
            let first = (start / chunk_size as u64) as usize;
            for (k, piece) in o.data.chunks(chunk_size).enumerate() {
                jobs.push(Job {
                    obj: i,
                    name: o.info.name.as_str(),
                    index: first + k,
                    offset: start + (k * chunk_size) as u64,
                    data: piece,
                    shuffle,
                    hint: None,
                });
            }
        }
        let results = self.write_chunks(&jobs, None, &ctx)?;
        let mut ahead = WrittenAhead {
            checkpoint: Some(self.id),
            ..WrittenAhead::default()
        };
        let mut per_obj: Vec<Vec<ChunkRef>> = vec![Vec::new(); objects.len()];
        let mut dirs = BTreeSet::new();
        let mut staged = Vec::new();
        let mut digests = Vec::with_capacity(jobs.len());
        for (job, r) in jobs.iter().zip(results) {
            digests.push(r.chunk.digest);
            ahead.new_bytes += r.new_bytes;
            if r.new_bytes > 0 {
                ahead.new_chunks += 1;
            }
            if let Some(d) = r.dir {
                dirs.insert(d);
            }
            if let Some(t) = r.staged {
                staged.push(t);
            }
            if let Some(v) = per_obj.get_mut(job.obj) {
                v.push(r.chunk);
            }
        }
        // Chunks only: durable (file fsyncs, renames, directory fsyncs), no manifest.
        let b = self.backend.as_ref();
        let files: Vec<&Staged> = staged.iter().collect();
        if let Err(e) = b.sync_staged(&files) {
            staged.into_iter().for_each(|s| b.discard(s));
            return Err(e.context(&ctx));
        }
        let mut rest = staged.into_iter();
        while let Some(st) = rest.next() {
            if let Err(e) = b.publish(st) {
                rest.for_each(|s| b.discard(s));
                return Err(e.context(&ctx));
            }
            failpoint("after_chunk_write");
        }
        let dirs: Vec<DirKey> = dirs.into_iter().collect();
        b.sync_dirs(&dirs).map_err(|e| e.context(&ctx))?;
        known::good(self.backend.location(), digests);
        for ((o, start), chunks) in objects.iter().zip(per_obj) {
            ahead.tails.insert(o.info.name.clone(), (*start, chunks));
        }
        Ok(ahead)
    }

    fn check_pending(&self) -> Result<(), StoreError> {
        let dir = DirKey::Checkpoint(self.id);
        if !self.backend.dir_exists(&dir)? {
            return Err(StoreError::new(
                StoreErrorKind::Missing,
                Some(&self.backend.describe_dir(&dir)),
                format!("checkpoint {} {}", self.id, crate::error::NOT_PENDING),
            ));
        }
        let commit = ObjectKey::Commit(self.id);
        if self.backend.stat(&commit)?.is_some() {
            return Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                Some(&self.backend.describe(&commit)),
                format!("checkpoint {} is already committed", self.id),
            ));
        }
        Ok(())
    }

    /// Writes `rank`'s objects: every chunk, then the manifest, each durable (fsynced and
    /// renamed, directories fsynced) before this returns. Chunks already present in the
    /// repository are not rewritten. Object names must be unique.
    pub fn write(&self, rank: Rank, objects: &[ObjectSpec<'_>]) -> Result<PartReceipt, StoreError> {
        self.write_with(rank, objects, &WrittenAhead::default())
    }

    /// [`PartWriter::write`] of a part some of whose objects' tails were written by
    /// [`PartWriter::write_ahead`] (for this checkpoint): an object named in `ahead` gives
    /// here only its head (its bytes before the tail's start, exactly), and its manifest
    /// entry names the head's chunks followed by the tail's. Every object in `ahead` must be
    /// among `objects` (with an empty head when it was written ahead whole).
    pub fn write_with(
        &self,
        rank: Rank,
        objects: &[ObjectSpec<'_>],
        ahead: &WrittenAhead,
    ) -> Result<PartReceipt, StoreError> {
        // Taken first: a write that fails, however early (a reused chunk found missing
        // included), leaves no cache behind, so the next capture of this rank is a full
        // one instead of reusing the same missing chunk again (docs/ASYNC.md).
        let cache = if self.fingerprint_cache {
            fpcache::take(
                self.backend.location(),
                rank,
                u64::from(self.opts.chunk_size),
            )
        } else {
            None
        };
        self.check_pending()?;
        let ctx = format!("checkpoint {} {rank}", self.id);
        if ahead.checkpoint.is_some_and(|c| c != self.id) {
            return Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                None,
                format!("{ctx}: chunks written ahead for another checkpoint"),
            ));
        }
        let tail = |name: &str| ahead.tails.get(name);
        let tail_bytes =
            |name: &str| tail(name).map_or(0, |(_, c)| c.iter().map(|c| c.len).sum::<u64>());
        for (names, what) in [
            (ahead.tails.keys().collect::<Vec<_>>(), "written ahead"),
            (ahead.reused.keys().collect(), "captured sparsely"),
        ] {
            if let Some(name) = names
                .into_iter()
                .find(|n| !objects.iter().any(|o| &o.info.name == *n))
            {
                return Err(StoreError::new(
                    StoreErrorKind::InvalidArgument,
                    None,
                    format!("{ctx}: object {name:?} was {what} but is not in the part"),
                ));
            }
        }
        let mut names = HashSet::new();
        let chunk_size = self.opts.chunk_size as usize;
        // Sparse objects: every reused chunk must still be in the repository (it is a
        // chunk of the previous committed checkpoint, so retained; a chunk removed or found
        // damaged since cannot be rewritten, its bytes were not captured: the part fails
        // and the caller's next capture is a full one, as no cache survives a failed write).
        let mut reused_refs: std::collections::HashMap<&str, Vec<Option<(ChunkRef, Fingerprint)>>> =
            std::collections::HashMap::new();
        for u in ahead.reused.values() {
            if u.chunk_size != chunk_size as u64 {
                return Err(StoreError::new(
                    StoreErrorKind::InvalidArgument,
                    None,
                    format!(
                        "{ctx}: object {:?} was captured sparsely for chunks of {} bytes, not {chunk_size}",
                        u.name, u.chunk_size
                    ),
                ));
            }
            let mut refs = Vec::with_capacity(u.chunks.len());
            for (i, c) in u.chunks.iter().enumerate() {
                let Some((fp, digest)) = c else {
                    refs.push(None);
                    continue;
                };
                let key = ObjectKey::Chunk(*digest);
                let present = match self.backend.stat(&key)? {
                    Some(m)
                        if m.regular
                            && known::status(self.backend.location(), digest) != Known::Bad =>
                    {
                        Some(m.size)
                    }
                    _ => None,
                };
                let Some(stored) = present else {
                    return Err(StoreError::new(
                        StoreErrorKind::Missing,
                        Some(&self.backend.describe(&key)),
                        format!(
                            "{ctx}: chunk {i} of object {:?}, unchanged since checkpoint {} and so not captured, is missing or damaged in the repository; this part cannot be written (the next capture copies the whole state)",
                            u.name, u.base
                        ),
                    ));
                };
                let r = u.range(i);
                refs.push(Some((
                    ChunkRef {
                        digest: *digest,
                        len: r.end - r.start,
                        stored,
                    },
                    *fp,
                )));
            }
            reused_refs.insert(u.name.as_str(), refs);
        }
        let mut jobs = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            if !names.insert(o.info.name.as_str()) {
                return Err(StoreError::new(
                    StoreErrorKind::InvalidArgument,
                    None,
                    format!("{ctx}: object {:?} given twice", o.info.name),
                ));
            }
            let head = o.data.len() as u64;
            if let Some(u) = ahead.reused.get(&o.info.name) {
                if u.changed_bytes() != head {
                    return Err(StoreError::new(
                        StoreErrorKind::InvalidArgument,
                        None,
                        format!(
                            "{ctx}: object {:?} was captured sparsely: {} changed bytes expected, {head} given",
                            o.info.name,
                            u.changed_bytes()
                        ),
                    ));
                }
                let shuffle = checked_shuffle(&ctx, &o.info, u.len)?;
                // Only the changed chunks are here, back to back: each is hashed.
                let mut at = 0usize;
                for (index, c) in u.chunks.iter().enumerate() {
                    if c.is_some() {
                        continue;
                    }
                    let r = u.range(index);
                    let n = (r.end - r.start) as usize;
                    let piece = o.data.get(at..at + n).unwrap_or_default();
                    at += n;
                    jobs.push(Job {
                        obj: i,
                        name: o.info.name.as_str(),
                        index,
                        offset: r.start,
                        data: piece,
                        shuffle,
                        hint: None,
                    });
                }
                continue;
            }
            if let Some((start, _)) = tail(&o.info.name) {
                if *start != head {
                    return Err(StoreError::new(
                        StoreErrorKind::InvalidArgument,
                        None,
                        format!(
                            "{ctx}: object {:?} has a {head}-byte head but its tail starts at {start}",
                            o.info.name
                        ),
                    ));
                }
            }
            let total = head + tail_bytes(&o.info.name);
            let shuffle = checked_shuffle(&ctx, &o.info, total)?;
            // A split object's hint describes the whole object, not the head: unused.
            let hint = o
                .hint
                .as_ref()
                .filter(|h| h.len() == total && total == head);
            for (index, piece) in o.data.chunks(chunk_size).enumerate() {
                jobs.push(Job {
                    obj: i,
                    name: o.info.name.as_str(),
                    index,
                    offset: (index * chunk_size) as u64,
                    data: piece,
                    shuffle,
                    hint,
                });
            }
        }

        let root = self.backend.location();
        let t = std::time::Instant::now();
        let results = self.write_chunks(&jobs, cache.as_ref(), &ctx)?;
        tracing::debug!(
            chunks = jobs.len(),
            cache = cache.is_some(),
            secs = t.elapsed().as_secs_f64(),
            "chunks hashed and written"
        );
        drop(cache);
        let mut next_cache = self
            .fingerprint_cache
            .then(|| PartCache::new(chunk_size as u64));
        let tickets: Vec<WriteTicket> = objects.iter().map(|_| WriteTicket::unique()).collect();
        let mut per_obj: Vec<Vec<(ChunkRef, Option<Fingerprint>)>> =
            vec![Vec::new(); objects.len()];
        let mut new_bytes = 0u64;
        let mut new_chunks = 0u64;
        let mut cached_chunks = 0u64;
        let mut hinted_chunks = 0u64;
        let mut dirs = BTreeSet::new();
        let mut staged: Vec<Staged> = Vec::new();
        let mut digests: Vec<ChunkDigest> = Vec::with_capacity(jobs.len());
        for (job, r) in jobs.iter().zip(results) {
            digests.push(r.chunk.digest);
            new_bytes += r.new_bytes;
            cached_chunks += u64::from(r.cached);
            hinted_chunks += u64::from(r.hinted);
            if r.new_bytes > 0 {
                new_chunks += 1;
            }
            if let Some(d) = r.dir {
                dirs.insert(d);
            }
            if let Some(t) = r.staged {
                staged.push(t);
            }
            if let Some(v) = per_obj.get_mut(job.obj) {
                v.push((r.chunk, r.fp));
            }
        }
        // A sparse object's chunks in order: the reused ones where they belong.
        for (o, chunks) in objects.iter().zip(per_obj.iter_mut()) {
            if let Some(refs) = reused_refs.get(o.info.name.as_str()) {
                let mut written = std::mem::take(chunks).into_iter();
                for r in refs {
                    match r {
                        Some((c, fp)) => {
                            digests.push(c.digest);
                            chunks.push((c.clone(), Some(*fp)));
                        }
                        None => chunks.extend(written.next()),
                    }
                }
            }
        }
        if let Some(c) = next_cache.as_mut() {
            for ((o, chunks), t) in objects.iter().zip(&per_obj).zip(&tickets) {
                // A split object's cache entries would cover its head only: none.
                if tail(&o.info.name).is_some() {
                    continue;
                }
                let entries: Option<Vec<(Fingerprint, ChunkDigest)>> = chunks
                    .iter()
                    .map(|(c, fp)| fp.map(|fp| (fp, c.digest)))
                    .collect();
                if let Some(entries) = entries {
                    c.insert(&o.info.name, *t, entries);
                }
            }
        }
        let per_obj: Vec<Vec<ChunkRef>> = per_obj
            .into_iter()
            .map(|v| v.into_iter().map(|(c, _)| c).collect())
            .collect();
        let manifest = Manifest {
            checkpoint: self.id,
            rank,
            chunk_size: self.opts.chunk_size as u64,
            objects: objects
                .iter()
                .zip(per_obj)
                .map(|(o, mut chunks)| {
                    if let Some((_, t)) = tail(&o.info.name) {
                        chunks.extend_from_slice(t);
                    }
                    let bytes = match ahead.reused.get(&o.info.name) {
                        Some(u) => u.len,
                        None => o.data.len() as u64 + tail_bytes(&o.info.name),
                    };
                    ManifestObject {
                        info: o.info.clone(),
                        bytes,
                        chunks,
                    }
                })
                .collect(),
        };
        let bytes = manifest.encode();
        // Format 1.1: a small manifest rides in the receipt (then COMMIT), not in a file.
        let inline = bytes.len() <= self.inline_limit;
        let manifest_file = (!inline).then_some(bytes.as_slice());
        self.make_durable(rank, &ctx, staged, manifest_file, dirs)?;
        // Every chunk this part names is durable and was written, verified or reused from
        // a durable part by this process: known good from now on (known.rs).
        known::good(root, digests);
        // Only a durable part feeds the cache: a failed write leaves none behind. The
        // producers learn their tickets after the entries exist, so a hint can only name a
        // ticket this process recorded digests under (and a write without the cache tells
        // nobody: their earlier ticket stays the one the cache holds).
        if let Some(mut c) = next_cache {
            c.set_checkpoint(self.id);
            fpcache::put(root, rank, c);
            for (o, t) in objects.iter().zip(&tickets) {
                if let (Some(h), None) = (&o.hint, tail(&o.info.name)) {
                    h.written(*t);
                }
            }
        }
        Ok(PartReceipt {
            rank,
            checkpoint: self.id,
            manifest_digest: ChunkDigest::of(&bytes),
            logical_bytes: objects.iter().map(|o| o.data.len() as u64).sum::<u64>()
                + ahead.bytes()
                + ahead.reused_bytes(),
            stored_new_bytes: new_bytes + ahead.new_bytes,
            chunks: jobs.len() as u64
                + ahead.reused_chunks()
                + ahead
                    .tails
                    .values()
                    .map(|(_, c)| c.len() as u64)
                    .sum::<u64>(),
            new_chunks: new_chunks + ahead.new_chunks,
            cached_chunks,
            // Chunks of a sparse capture are reused on their hints too, unread.
            hinted_chunks: hinted_chunks + ahead.reused_chunks(),
            manifest: inline.then_some(bytes),
        })
    }

    /// Hashes, compresses and stages chunks on up to [`WriteBackend::write_concurrency`]
    /// threads (hashing+compression of one chunk overlaps the write of another: temp files
    /// whose writeback has started on a file system, uploads on an object store); the
    /// caller makes them durable and publishes them. On error nothing staged is left.
    fn write_chunks(
        &self,
        jobs: &[Job<'_>],
        cache: Option<&PartCache>,
        ctx: &str,
    ) -> Result<Vec<ChunkOutcome>, StoreError> {
        let claimed: Mutex<HashSet<ChunkDigest>> = Mutex::new(HashSet::new());
        let slots: Mutex<Vec<Option<ChunkOutcome>>> =
            Mutex::new((0..jobs.len()).map(|_| None).collect());
        // One worker (one core, or a single chunk) runs inline: a thread spawn per part costs
        // more than an empty or one-chunk part (measured in `lazarus bench round`).
        let io_bound = self.backend.write_concurrency() > 4;
        let cpu = if io_bound { 64 } else { cores() };
        // The background flush's cap is about cores: waiting on uploads takes none.
        let cpu = match WRITE_THREADS.with(std::cell::Cell::get) {
            Some(n) if !io_bound => cpu.min(n),
            _ => cpu,
        };
        let workers = cpu
            .clamp(1, self.backend.write_concurrency().max(1))
            .min(jobs.len().max(1));
        let written: Result<(), StoreError> =
            crate::par::try_for_each(jobs.iter().enumerate(), workers, |(i, job)| {
                let out = self.write_one(job, cache, &claimed)?;
                if let Some(slot) = slots.lock().unwrap_or_else(|e| e.into_inner()).get_mut(i) {
                    *slot = Some(out);
                }
                Ok(())
            });
        let slots = slots.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = written {
            for o in slots.into_iter().flatten() {
                if let Some(st) = o.staged {
                    self.backend.discard(st);
                }
            }
            return Err(e.context(ctx));
        }
        let mut out: Vec<ChunkOutcome> = Vec::with_capacity(slots.len());
        let mut lost = false;
        for o in slots {
            match o {
                Some(o) => out.push(o),
                None => lost = true,
            }
        }
        if lost {
            for st in out.into_iter().filter_map(|o| o.staged) {
                self.backend.discard(st);
            }
            return Err(StoreError::new(
                StoreErrorKind::Io,
                None,
                format!("{ctx}: chunk writer lost a result"),
            ));
        }
        if out.iter().any(|o| o.stored_pending) {
            let sizes: std::collections::HashMap<ChunkDigest, u64> = out
                .iter()
                .filter(|o| o.staged.is_some())
                .map(|o| (o.chunk.digest, o.chunk.stored))
                .collect();
            for o in out.iter_mut().filter(|o| o.stored_pending) {
                if let Some(s) = sizes.get(&o.chunk.digest) {
                    o.chunk.stored = *s;
                }
            }
        }
        Ok(out)
    }

    /// Makes the part durable in two rounds of concurrent fsyncs instead of four (on a file
    /// system; other backends' staged writes are durable already): the new chunks' temps
    /// and the manifest's temp together, then (after the renames) their directories
    /// together. Only COMMIT makes a checkpoint visible to restore, and it is written after
    /// this returns, so the manifest may become durable a moment before a chunk rename it
    /// names without any committed state ever depending on that; a crash in between leaves
    /// an uncommitted directory that GC removes (docs/FORMAT.md, "Write protocol"). On
    /// error every staged write is discarded.
    fn make_durable(
        &self,
        rank: Rank,
        ctx: &str,
        chunks: Vec<Staged>,
        manifest: Option<&[u8]>,
        chunk_dirs: BTreeSet<DirKey>,
    ) -> Result<(), StoreError> {
        let t = std::time::Instant::now();
        let b = self.backend.as_ref();
        let discard_all = |v: Vec<Staged>| v.into_iter().for_each(|s| b.discard(s));
        // `None`: the manifest is inline (in the receipt), only the chunks go to storage.
        let mstaged = match manifest {
            Some(m) => {
                let key = ObjectKey::Manifest(self.id, rank);
                let r = self
                    .budget
                    .take(m.len() as u64, &b.describe(&key))
                    .and_then(|()| b.stage(&key, &[m], PutMode::Overwrite));
                match r {
                    Ok(s) => Some(s),
                    Err(e) => {
                        discard_all(chunks);
                        return Err(e.context(ctx));
                    }
                }
            }
            None => None,
        };
        let files: Vec<&Staged> = chunks.iter().chain(mstaged.as_ref()).collect();
        let n_files = files.len();
        if let Err(e) = b.sync_staged(&files) {
            discard_all(chunks);
            discard_all(mstaged.into_iter().collect());
            return Err(e.context(ctx));
        }
        let synced = t.elapsed().as_secs_f64();
        let mut rest = chunks.into_iter();
        while let Some(st) = rest.next() {
            if let Err(e) = b.publish(st) {
                discard_all(rest.collect());
                discard_all(mstaged.into_iter().collect());
                return Err(e.context(ctx));
            }
            failpoint("after_chunk_write");
        }
        let mut dirs: Vec<DirKey> = chunk_dirs.into_iter().collect();
        // The manifest failpoints fire for an inline manifest too, at the same moments
        // (chunks durable, part not yet handed over), so crash tests keep covering them.
        failpoint("before_manifest_rename");
        if let Some(m) = mstaged {
            b.publish(m).map_err(|e| e.context(ctx))?;
            dirs.push(DirKey::Checkpoint(self.id));
        }
        b.sync_dirs(&dirs).map_err(|e| e.context(ctx))?;
        failpoint("after_manifest_rename");
        tracing::debug!(
            files = n_files,
            dirs = dirs.len(),
            file_fsyncs_secs = synced,
            secs = t.elapsed().as_secs_f64(),
            "chunks and manifest durable"
        );
        Ok(())
    }

    /// Digest of `job` (from the fingerprint cache when its change hint reports it clean
    /// or its bytes are unchanged, else BLAKE3), then the chunk unless the repository
    /// already has it intact.
    fn write_one(
        &self,
        job: &Job<'_>,
        cache: Option<&PartCache>,
        claimed: &Mutex<HashSet<ChunkDigest>>,
    ) -> Result<ChunkOutcome, StoreError> {
        let len = job.data.len() as u64;
        let inherited = match (cache, job.hint) {
            (Some(c), Some(h)) if h.is_clean(job.offset..job.offset + len) => h
                .base()
                .and_then(|base| c.inherit(job.name, base, job.index, len)),
            _ => None,
        };
        let hinted = inherited.is_some();
        let fp = match inherited {
            Some((fp, _)) => Some(fp),
            None => self
                .fingerprint_cache
                .then(|| (self.fingerprint_fn)(job.data)),
        };
        let cached = match (inherited, cache, fp) {
            (Some((_, digest)), _, _) => Some(digest),
            (None, Some(c), Some(fp)) => c.lookup(job.name, job.index, fp),
            _ => None,
        };
        let repo = self.backend.location();
        // `stored`: the chunk file's size when known (0 while another worker writes it).
        let present = |digest: ChunkDigest, stored: u64, stored_pending: bool| ChunkOutcome {
            chunk: ChunkRef {
                digest,
                len,
                stored,
            },
            fp,
            stored_pending,
            cached: false,
            hinted: false,
            new_bytes: 0,
            staged: None,
            dir: None,
        };
        if let Some(digest) = cached.filter(|d| known::status(repo, d) != Known::Bad) {
            // Unchanged since this process's previous checkpoint of the rank: no BLAKE3,
            // no compression trial; one stat proves the chunk is still in the repository
            // (GC may have removed it since), otherwise fall through and write it. A chunk
            // a read found damaged since is rewritten instead (issue #11).
            if let Some(m) = self.backend.stat(&ObjectKey::Chunk(digest))? {
                if m.regular {
                    return Ok(ChunkOutcome {
                        cached: !hinted,
                        hinted,
                        ..present(digest, m.size, false)
                    });
                }
            }
        }
        let digest = cached.unwrap_or_else(|| ChunkDigest::of(job.data));
        let key = ObjectKey::Chunk(digest);
        let first_claim = claimed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest);
        if !first_claim {
            // Another worker of this write owns the chunk (it may still be staged).
            let stored = self.backend.stat(&key).ok().flatten().map_or(0, |m| m.size);
            return Ok(present(digest, stored, true));
        }
        // Only complete objects exist under a chunk's final name, but that does not make
        // them intact (bit rot, a hand-edited file, a chunk a restore found damaged): a
        // chunk this process relies on for the first time is read and verified once, a
        // damaged one rewritten, something that is not a file there replaced (issue #11).
        // Nor is its rename known durable: the writer that renamed it may have died before
        // fsyncing the directory. This part will depend on it, so its directory joins this
        // part's fsyncs. (Digests from the fingerprint cache need not: they come from an
        // earlier durable part of this process, which fsynced their directories under this
        // same rule.)
        let new_chunk = |file: &Encoded<'_>, staged: Option<Staged>| ChunkOutcome {
            chunk: ChunkRef {
                digest,
                len,
                stored: file.len() as u64,
            },
            fp,
            stored_pending: false,
            cached: false,
            hinted: false,
            new_bytes: file.len() as u64,
            staged,
            dir: Some(key.dir()),
        };
        // Encoded at most once, and only when it is written (a present chunk costs no
        // compression on a file system).
        let mut encoded = None;
        if self.backend.dedup_by_create() && known::status(repo, &digest) != Known::Bad {
            // One conditional PUT instead of a HEAD and a PUT per new chunk (object
            // stores); `Conflict` means present, handled below like a chunk found by stat.
            let file = self.encode(job);
            self.budget
                .take(file.len() as u64, &self.backend.describe(&key))?;
            match self.backend.put(&key, &file.parts(), PutMode::Create) {
                Ok(_) => return Ok(new_chunk(&file, None)),
                Err(e) if e.kind() == StoreErrorKind::Conflict => encoded = Some(file),
                Err(e) => return Err(e),
            }
        }
        if let Some(m) = self.backend.stat(&key)? {
            let path = self.backend.describe(&key);
            if !m.regular {
                tracing::warn!(path = %path.display(), "not a regular file where a chunk belongs: replacing it");
                self.backend.delete(&key)?;
            } else {
                let reuse = match known::status(repo, &digest) {
                    Known::Good => true,
                    Known::Bad => false,
                    Known::Unknown => self.verify_present(&digest, len)?,
                };
                if reuse {
                    return Ok(ChunkOutcome {
                        dir: Some(key.dir()),
                        ..present(digest, m.size, false)
                    });
                }
                tracing::warn!(path = %path.display(), "chunk {digest} is damaged: rewriting it");
            }
        }
        let file = encoded.unwrap_or_else(|| self.encode(job));
        self.budget
            .take(file.len() as u64, &self.backend.describe(&key))?;
        let staged = self
            .backend
            .stage(&key, &file.parts(), PutMode::Overwrite)?;
        Ok(new_chunk(&file, Some(staged)))
    }

    /// Reads and verifies a chunk found present (`len` raw bytes): true when intact; false
    /// when damaged or gone (it is then written anew); `Err` when it cannot be read.
    fn verify_present(&self, digest: &ChunkDigest, len: u64) -> Result<bool, StoreError> {
        let mut buf = vec![0u8; len as usize];
        match crate::reader::read_chunk_into(self.backend.as_ref(), digest, &mut buf) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.kind(), StoreErrorKind::Corrupt | StoreErrorKind::Missing) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn encode<'a>(&self, job: &Job<'a>) -> Encoded<'a> {
        const PROBE: usize = 64 << 10;
        let raw = job.data;
        let stored_raw = || {
            let h = ChunkHeader {
                codec: ChunkCodec::None,
                shuffle: None,
                raw_len: raw.len() as u64,
            };
            Encoded::Raw(h.encode(), raw)
        };
        match self.opts.codec {
            Codec::None => stored_raw(),
            Codec::Zstd => Encoded::Owned(encode_chunk(raw, ChunkCodec::Zstd, job.shuffle, 1)),
            Codec::Auto => {
                let probe_len = raw.len().min(PROBE);
                let probe_len = probe_len - probe_len % job.shuffle.unwrap_or(1).max(1) as usize;
                let probe = encode_chunk(
                    raw.get(..probe_len).unwrap_or(raw),
                    ChunkCodec::Zstd,
                    job.shuffle,
                    1,
                );
                if (probe.len() as f64)
                    > 0.95 * (probe_len as f64 + lazarus_format::CHUNK_HEADER_LEN as f64)
                {
                    return stored_raw();
                }
                if probe_len == raw.len() {
                    return Encoded::Owned(probe);
                }
                let z = encode_chunk(raw, ChunkCodec::Zstd, job.shuffle, 1);
                if (z.len() as f64) > 0.95 * (raw.len() + lazarus_format::CHUNK_HEADER_LEN) as f64 {
                    stored_raw()
                } else {
                    Encoded::Owned(z)
                }
            }
        }
    }
}

/// Removes `rank`'s part of the uncommitted checkpoint `id` (its manifest, then the
/// checkpoint directory if that leaves it empty), for a participant that learns its round
/// was aborted. The coordinator deletes an aborted checkpoint's directory, but a slow rank
/// may finish writing its manifest afterwards and so recreate it; this makes the leftovers
/// go away at once instead of at the next GC. Chunks stay for the GC sweep (other
/// checkpoints may share them). Refuses a committed checkpoint: that part is in use.
pub fn discard_part(repo: &Path, id: CheckpointId, rank: Rank) -> Result<(), StoreError> {
    discard_part_in(crate::location::open_backend(repo)?.as_ref(), id, rank)
}

/// [`discard_part`] on a backend.
pub fn discard_part_in(
    backend: &dyn WriteBackend,
    id: CheckpointId,
    rank: Rank,
) -> Result<(), StoreError> {
    let commit = ObjectKey::Commit(id);
    if backend.stat(&commit)?.is_some() {
        return Err(StoreError::new(
            StoreErrorKind::InvalidArgument,
            Some(&backend.describe(&commit)),
            format!("checkpoint {id} is committed; {rank}'s part cannot be discarded"),
        ));
    }
    backend
        .delete(&ObjectKey::Manifest(id, rank))
        .map_err(|e| e.context("removing an aborted part"))?;
    backend.delete_dir_if_empty(&DirKey::Checkpoint(id))
}

/// The byte-shuffle width of an object's chunks (floats: their size; otherwise none),
/// after checking that a bulk object of `bytes` bytes holds exactly the elements it
/// declares (an error naming the object otherwise).
fn checked_shuffle(
    ctx: &str,
    info: &lazarus_format::ObjectInfo,
    bytes: u64,
) -> Result<Option<u8>, StoreError> {
    match &info.kind {
        ObjectKind::Bulk { dtype, len, .. } => {
            if len.checked_mul(dtype.size() as u64) != Some(bytes) {
                return Err(StoreError::new(
                    StoreErrorKind::InvalidArgument,
                    None,
                    format!(
                        "{ctx}: object {:?} declares {len} {} elements but has {bytes} bytes",
                        info.name,
                        dtype.tag(),
                    ),
                ));
            }
            Ok(dtype.is_float().then_some(dtype.size() as u8))
        }
        ObjectKind::Serde => Ok(None),
    }
}

thread_local! {
    /// [`cap_write_threads_on_this_thread`]'s cap (`None`: one worker per core).
    static WRITE_THREADS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Caps the workers that hash, compress and stage chunks for the part writes made on the
/// calling thread at `n` (at least 1). A background flush sets it so that the program it
/// runs beside keeps a core (docs/ASYNC.md): with one worker per core, the flush competes
/// with the computation it is meant to overlap. Backends whose writes wait on the
/// network (object stores) are not capped: their workers mostly wait.
pub fn cap_write_threads_on_this_thread(n: usize) {
    WRITE_THREADS.with(|c| c.set(Some(n.max(1))));
}

/// Cores this process may use, asked once: `available_parallelism` reads three cgroup files
/// per call, which showed up as a third of the file opens of an empty checkpoint round.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}
