//! Writing one rank's part of a pending checkpoint: chunking, hashing, dedup, compression,
//! durable chunk files, then the rank manifest.

use crate::error::{StoreError, StoreErrorKind};
use crate::fpcache::{self, Fingerprint, PartCache};
use crate::fsutil::{self, failpoint, Budget};
use crate::layout::Layout;
use lazarus_format::{
    encode_chunk, ChangeHint, CheckpointId, ChunkCodec, ChunkDigest, ChunkHeader, ChunkRef,
    Manifest, ManifestObject, ObjectKind, ObjectSpec, Rank, WriteTicket,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Default maximum raw chunk length: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Concurrent fsyncs of new chunk files and of their directories.
pub(crate) const FSYNC_THREADS: usize = 8;
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

/// Options for opening a repository or a part writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoOptions {
    /// Maximum raw bytes per chunk (`MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE`); default 1 MiB.
    pub chunk_size: u32,
    /// Compression policy for new chunks.
    pub codec: Codec,
    /// Job token of the writer; its BLAKE3 prefix (not the token) is stored in `LOCK`.
    pub job_token: Option<String>,
}

impl Default for RepoOptions {
    fn default() -> Self {
        RepoOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            codec: Codec::Auto,
            job_token: None,
        }
    }
}

impl RepoOptions {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
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

/// Writes rank parts of one pending checkpoint. Cheap to clone, `Send + Sync`; can be built
/// in another process with [`PartWriter::open`] without holding the repository lock.
#[derive(Clone, Debug)]
pub struct PartWriter {
    layout: Layout,
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
    /// (temp path, final path) of a newly written, not yet durable chunk.
    temp: Option<(PathBuf, PathBuf)>,
    /// The chunk's directory, to fsync before the part counts as durable: the one a new
    /// chunk was renamed into, or the one a chunk found by dedup lies in.
    dir: Option<PathBuf>,
}

impl PartWriter {
    pub(crate) fn new(layout: Layout, id: CheckpointId, opts: RepoOptions, budget: Budget) -> Self {
        PartWriter {
            layout,
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

    /// A writer for the pending checkpoint `id` of the repository at `repo`; the pending
    /// directory must exist (created by `Repository::begin`) and must not be committed.
    pub fn open(
        repo: &Path,
        id: CheckpointId,
        opts: RepoOptions,
    ) -> Result<PartWriter, StoreError> {
        opts.validate()?;
        let layout = Layout::new(repo);
        crate::reader::check_format(&layout)?;
        let w = PartWriter::new(layout, id, opts, Budget::default());
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

    fn check_pending(&self) -> Result<(), StoreError> {
        let dir = self.layout.checkpoint_dir(self.id);
        if !dir.is_dir() {
            return Err(StoreError::new(
                StoreErrorKind::Missing,
                Some(&dir),
                format!("checkpoint {} is not pending (no directory)", self.id),
            ));
        }
        let commit = self.layout.commit(self.id);
        if commit.exists() {
            return Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                Some(&commit),
                format!("checkpoint {} is already committed", self.id),
            ));
        }
        Ok(())
    }

    /// Writes `rank`'s objects: every chunk, then the manifest, each durable (fsynced and
    /// renamed, directories fsynced) before this returns. Chunks already present in the
    /// repository are not rewritten. Object names must be unique.
    pub fn write(&self, rank: Rank, objects: &[ObjectSpec<'_>]) -> Result<PartReceipt, StoreError> {
        self.check_pending()?;
        let ctx = format!("checkpoint {} {rank}", self.id);
        let mut names = HashSet::new();
        let chunk_size = self.opts.chunk_size as usize;
        let mut jobs = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            if !names.insert(o.info.name.as_str()) {
                return Err(StoreError::new(
                    StoreErrorKind::InvalidArgument,
                    None,
                    format!("{ctx}: object {:?} given twice", o.info.name),
                ));
            }
            let shuffle = match &o.info.kind {
                ObjectKind::Bulk { dtype, len, .. } => {
                    let want = len.checked_mul(dtype.size() as u64);
                    if want != Some(o.data.len() as u64) {
                        return Err(StoreError::new(
                            StoreErrorKind::InvalidArgument,
                            None,
                            format!(
                                "{ctx}: object {:?} declares {len} {} elements but has {} bytes",
                                o.info.name,
                                dtype.tag(),
                                o.data.len()
                            ),
                        ));
                    }
                    dtype.is_float().then_some(dtype.size() as u8)
                }
                ObjectKind::Serde => None,
            };
            let hint = o.hint.as_ref().filter(|h| h.len() == o.data.len() as u64);
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

        let root = self.layout.root();
        let cache = if self.fingerprint_cache {
            fpcache::take(root, rank, chunk_size as u64)
        } else {
            None
        };
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
        let mut cache_obj: Vec<(Fingerprint, ChunkDigest)> = Vec::new();
        let mut per_obj: Vec<Vec<ChunkRef>> = vec![Vec::new(); objects.len()];
        let mut new_bytes = 0u64;
        let mut new_chunks = 0u64;
        let mut cached_chunks = 0u64;
        let mut hinted_chunks = 0u64;
        let mut dirs = BTreeSet::new();
        let mut temps: Vec<(PathBuf, PathBuf)> = Vec::new();
        for (k, (job, r)) in jobs.iter().zip(results).enumerate() {
            if let (Some(c), Some(fp)) = (next_cache.as_mut(), r.fp) {
                cache_obj.push((fp, r.chunk.digest));
                let last_of_object = jobs.get(k + 1).is_none_or(|n| n.obj != job.obj);
                if let (true, Some(t)) = (last_of_object, tickets.get(job.obj)) {
                    c.insert(job.name, *t, std::mem::take(&mut cache_obj));
                }
            }
            new_bytes += r.new_bytes;
            cached_chunks += u64::from(r.cached);
            hinted_chunks += u64::from(r.hinted);
            if r.new_bytes > 0 {
                new_chunks += 1;
            }
            if let Some(d) = r.dir {
                dirs.insert(d);
            }
            if let Some(t) = r.temp {
                temps.push(t);
            }
            if let Some(v) = per_obj.get_mut(job.obj) {
                v.push(r.chunk);
            }
        }
        let manifest = Manifest {
            checkpoint: self.id,
            rank,
            chunk_size: self.opts.chunk_size as u64,
            objects: objects
                .iter()
                .zip(per_obj)
                .map(|(o, chunks)| ManifestObject {
                    info: o.info.clone(),
                    bytes: o.data.len() as u64,
                    chunks,
                })
                .collect(),
        };
        let bytes = manifest.encode();
        // Format 1.1: a small manifest rides in the receipt (then COMMIT), not in a file.
        let inline = bytes.len() <= self.inline_limit;
        let manifest_file = (!inline).then_some(bytes.as_slice());
        self.make_durable(rank, &ctx, &temps, manifest_file, &dirs)?;
        // Only a durable part feeds the cache: a failed write leaves none behind. The
        // producers learn their tickets after the entries exist, so a hint can only name a
        // ticket this process recorded digests under (and a write without the cache tells
        // nobody: their earlier ticket stays the one the cache holds).
        if let Some(c) = next_cache {
            fpcache::put(root, rank, c);
            for (o, t) in objects.iter().zip(&tickets) {
                if let Some(h) = &o.hint {
                    h.written(*t);
                }
            }
        }
        Ok(PartReceipt {
            rank,
            checkpoint: self.id,
            manifest_digest: ChunkDigest::of(&bytes),
            logical_bytes: objects.iter().map(|o| o.data.len() as u64).sum(),
            stored_new_bytes: new_bytes,
            chunks: jobs.len() as u64,
            new_chunks,
            cached_chunks,
            hinted_chunks,
            manifest: inline.then_some(bytes),
        })
    }

    /// Hashes, compresses and writes chunks on up to four threads (hashing+compression of
    /// one chunk overlaps the write of another) into temp files whose writeback has
    /// started; the caller makes them durable and renames them. On error no temp is left.
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
        let workers = cores().clamp(1, 4).min(jobs.len().max(1));
        let written = crate::par::try_for_each(jobs.iter().enumerate(), workers, |(i, job)| {
            let out = self.write_one(job, cache, &claimed)?;
            if let Some(slot) = slots.lock().unwrap_or_else(|e| e.into_inner()).get_mut(i) {
                *slot = Some(out);
            }
            Ok(())
        });
        let slots = slots.into_inner().unwrap_or_else(|e| e.into_inner());
        let temps: Vec<(PathBuf, PathBuf)> = slots
            .iter()
            .flatten()
            .filter_map(|o| o.temp.clone())
            .collect();
        let cleanup = |e: StoreError| {
            for (tmp, _) in &temps {
                let _ = std::fs::remove_file(tmp);
            }
            StoreError::new(e.kind(), e.path(), format!("{ctx}: {}", e.message()))
        };
        if let Err(e) = written {
            return Err(cleanup(e));
        }
        let mut out: Vec<ChunkOutcome> = slots
            .into_iter()
            .map(|o| {
                o.ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Io,
                        None,
                        format!("{ctx}: chunk writer lost a result"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        if out.iter().any(|o| o.stored_pending) {
            let sizes: std::collections::HashMap<ChunkDigest, u64> = out
                .iter()
                .filter(|o| o.temp.is_some())
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

    /// Makes the part durable in two rounds of concurrent fsyncs instead of four: the new
    /// chunks' temps and the manifest's temp together, then (after the renames) their
    /// directories together. Only COMMIT makes a checkpoint visible to restore, and it is
    /// written after this returns, so the manifest may become durable a moment before a
    /// chunk rename it names without any committed state ever depending on that; a crash
    /// in between leaves an uncommitted directory that GC removes (docs/FORMAT.md, "Write
    /// protocol"). On error every temp is removed.
    fn make_durable(
        &self,
        rank: Rank,
        ctx: &str,
        chunk_temps: &[(PathBuf, PathBuf)],
        manifest: Option<&[u8]>,
        chunk_dirs: &BTreeSet<PathBuf>,
    ) -> Result<(), StoreError> {
        let t = std::time::Instant::now();
        let dir = self.layout.checkpoint_dir(self.id);
        let name = Layout::manifest_name(rank);
        let remove_chunk_temps = || {
            for (tmp, _) in chunk_temps {
                let _ = std::fs::remove_file(tmp);
            }
        };
        // `None`: the manifest is inline (in the receipt), only the chunks go to disk.
        let mtmp = match manifest {
            Some(m) => Some(
                fsutil::write_temp(&dir, &name, &[m], &self.budget).inspect_err(|_| {
                    remove_chunk_temps();
                })?,
            ),
            None => None,
        };
        let cleanup = |e: StoreError| {
            remove_chunk_temps();
            if let Some(m) = &mtmp {
                let _ = std::fs::remove_file(m);
            }
            StoreError::new(e.kind(), e.path(), format!("{ctx}: {}", e.message()))
        };
        let mut files: Vec<&Path> = chunk_temps.iter().map(|(t, _)| t.as_path()).collect();
        files.extend(mtmp.as_deref());
        if !files.is_empty() {
            Self::fsync_all(&files).map_err(cleanup)?;
        }
        let synced = t.elapsed().as_secs_f64();
        for (tmp, dest) in chunk_temps {
            std::fs::rename(tmp, dest)
                .map_err(|e| cleanup(StoreError::io(dest, "renaming temp chunk", e)))?;
            failpoint("after_chunk_write");
        }
        let mut dirs: Vec<&Path> = chunk_dirs.iter().map(PathBuf::as_path).collect();
        // The manifest failpoints fire for an inline manifest too, at the same moments
        // (chunks durable, part not yet handed over), so crash tests keep covering them.
        failpoint("before_manifest_rename");
        if let Some(mtmp) = &mtmp {
            let dest = dir.join(&name);
            std::fs::rename(mtmp, &dest)
                .map_err(|e| cleanup(StoreError::io(&dest, "renaming temp manifest", e)))?;
            dirs.push(&dir);
        }
        if !dirs.is_empty() {
            Self::fsync_all(&dirs)?;
        }
        failpoint("after_manifest_rename");
        tracing::debug!(
            files = files.len(),
            dirs = dirs.len(),
            file_fsyncs_secs = synced,
            secs = t.elapsed().as_secs_f64(),
            "chunks and manifest durable"
        );
        Ok(())
    }

    /// fsyncs every path (files or directories) on up to [`FSYNC_THREADS`] threads: an
    /// fsync mostly waits for the device, and concurrent fsyncs let the file system
    /// commit them in one journal transaction instead of one round trip each.
    fn fsync_all(paths: &[&Path]) -> Result<(), StoreError> {
        crate::par::try_for_each(paths, FSYNC_THREADS.min(paths.len()), |p| {
            fsutil::fsync_file(p)
        })
    }

    /// Digest of `job` (from the fingerprint cache when its change hint reports it clean
    /// or its bytes are unchanged, else BLAKE3), then the chunk file unless the repository
    /// already has it.
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
            temp: None,
            dir: None,
        };
        if let Some(digest) = cached {
            // Unchanged since this process's previous checkpoint of the rank: no BLAKE3,
            // no compression trial; one stat proves the chunk is still in the repository
            // (GC may have removed it since), otherwise fall through and write it.
            if let Ok(m) = std::fs::metadata(self.layout.chunk(&digest)) {
                if m.is_file() {
                    return Ok(ChunkOutcome {
                        chunk: ChunkRef {
                            digest,
                            len,
                            stored: m.len(),
                        },
                        fp,
                        stored_pending: false,
                        cached: !hinted,
                        hinted,
                        new_bytes: 0,
                        temp: None,
                        dir: None,
                    });
                }
            }
        }
        let digest = cached.unwrap_or_else(|| ChunkDigest::of(job.data));
        let path = self.layout.chunk(&digest);
        let first_claim = claimed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest);
        if !first_claim {
            // Another worker of this write owns the chunk (it may still be a temp file).
            let stored = std::fs::metadata(&path).map_or(0, |m| m.len());
            return Ok(present(digest, stored, true));
        }
        // Only complete, renamed files exist under a chunk's final name, so presence means
        // the chunk is intact (verify re-hashes it anyway) — but not that its rename is
        // durable: the writer that renamed it may have died before fsyncing the directory.
        // This part will depend on it, so its directory joins this part's fsyncs. (Digests
        // from the fingerprint cache need not: they come from an earlier durable part of
        // this process, which fsynced their directories under this same rule.)
        if let Ok(m) = std::fs::metadata(&path) {
            return Ok(ChunkOutcome {
                dir: Some(self.layout.chunk_dir(&digest)),
                ..present(digest, m.len(), false)
            });
        }
        let file = self.encode(job);
        let dir = self.layout.chunk_dir(&digest);
        // `Repository::open` creates every `chunks/<hh>/` durably, so this only acts when
        // one was removed by hand since (an fsync of `chunks/` per new directory inside
        // the write loop cost more than hashing in a fresh repository).
        fsutil::create_dir_durable(&dir)?;
        let name = Layout::chunk_name(&digest);
        let tmp = match &file {
            Encoded::Raw(h, d) => fsutil::write_temp(&dir, &name, &[h, d], &self.budget)?,
            Encoded::Owned(v) => fsutil::write_temp(&dir, &name, &[v], &self.budget)?,
        };
        Ok(ChunkOutcome {
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
            temp: Some((tmp, path)),
            dir: Some(dir),
        })
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
    let layout = Layout::new(repo);
    if layout.commit(id).exists() {
        return Err(StoreError::new(
            StoreErrorKind::InvalidArgument,
            Some(&layout.commit(id)),
            format!("checkpoint {id} is committed; {rank}'s part cannot be discarded"),
        ));
    }
    let manifest = layout.manifest(id, rank);
    match std::fs::remove_file(&manifest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(&manifest, "removing an aborted part", e)),
    }
    // Fails harmlessly while other ranks' leftovers (or temp files) are still there.
    let _ = std::fs::remove_dir(layout.checkpoint_dir(id));
    Ok(())
}

/// Cores this process may use, asked once: `available_parallelism` reads three cgroup files
/// per call, which showed up as a third of the file opens of an empty checkpoint round.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}
