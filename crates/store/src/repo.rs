//! The writable repository: lock, checkpoint lifecycle (begin -> parts -> commit/abort),
//! retention and mark-and-sweep GC, written once over the backend seam (`backend/`).

use crate::backend::{DirKey, LockGuard, LockOwner, ObjectKey, PutMode, WriteBackend};
use crate::error::{StoreError, StoreErrorKind};
use crate::fsutil::{self, failpoint, Budget, TMP_PREFIX};
use crate::reader::{CheckpointSummary, RepoReader};
use crate::writer::{PartReceipt, PartWriter, RepoOptions};
use lazarus_format::{
    CheckpointId, ChunkDigest, CommitPart, CommitRecord, FormatVersion, Manifest, WriterInfo,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Application data recorded in COMMIT.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMeta {
    /// The application step at which the checkpoint was taken.
    pub step: u64,
    /// Free-form metadata.
    pub app: BTreeMap<String, String>,
}

/// A checkpoint that has been begun but not committed. Its directory exists; parts can be
/// written to it with [`PendingCheckpoint::part_writer`] (or `PartWriter::open` elsewhere).
#[derive(Debug)]
pub struct PendingCheckpoint {
    id: CheckpointId,
    world_size: u32,
    writer: PartWriter,
    _guard: PendingGuard,
}

#[derive(Debug)]
struct PendingGuard(Arc<AtomicUsize>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PendingCheckpoint {
    /// The id this checkpoint will have once committed.
    pub fn id(&self) -> CheckpointId {
        self.id
    }
    /// The world size given to `begin`.
    pub fn world_size(&self) -> u32 {
        self.world_size
    }
    /// A writer for this checkpoint's rank parts (clone it into threads freely).
    pub fn part_writer(&self) -> PartWriter {
        self.writer.clone()
    }
}

/// A checkpoint whose COMMIT is durable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedCheckpoint {
    /// What the COMMIT records.
    pub summary: CheckpointSummary,
}

/// What [`Repository::retain`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Committed checkpoints kept, oldest first.
    pub kept: Vec<CheckpointId>,
    /// Committed checkpoints removed (older than the newest `keep`).
    pub removed: Vec<CheckpointId>,
    /// Uncommitted leftover checkpoint directories removed.
    pub removed_uncommitted: Vec<CheckpointId>,
    /// Checkpoint directories left alone because their COMMIT is damaged.
    pub damaged_left: Vec<CheckpointId>,
    /// Chunk files deleted by the sweep (or retired as spares, see `bytes_freed`).
    pub chunks_removed: u64,
    /// Bytes the sweep took out of the repository (chunk files and temp leftovers); with
    /// [`Repository::recycle_dead_chunks`] the retired chunks' files stay on disk as
    /// spares until the next checkpoint reuses them or the next collection deletes them.
    pub bytes_freed: u64,
    /// Chunk files still referenced.
    pub chunks_kept: u64,
}

/// The stage a [`Repository::retain_with_progress`] call reports progress for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcStage {
    /// Reading the manifests of kept checkpoints (unit: checkpoints).
    Mark,
    /// Removing old and uncommitted checkpoint directories (unit: checkpoints).
    Remove,
    /// Deleting unreferenced chunk files (unit: `chunks/<hh>` directories).
    Sweep,
}

/// A repository opened for writing, on any backend. Holds the lock (a flock, or a lease
/// renewed in the background) until dropped.
#[derive(Debug)]
pub struct Repository {
    backend: Arc<dyn WriteBackend>,
    opts: RepoOptions,
    lock: Box<dyn LockGuard>,
    pending: Arc<AtomicUsize>,
    budget: Budget,
    /// Highest id this handle has handed out. An aborted checkpoint's directory is deleted,
    /// so the directory listing alone would hand its id out again; the coordinator refuses
    /// a round whose id does not increase, which would wedge checkpointing for the rest of
    /// the run. Ids therefore never repeat within one writer's lifetime.
    last_begun: u64,
    /// The newest checkpoint this handle committed: its chunks were proven present at
    /// its commit, so retention need not check it again (on an object store that check
    /// is a request per chunk, and jobs collect after every commit).
    last_committed: Option<CheckpointId>,
    /// Fault injection: the next commit's directory fsync after the rename fails.
    fail_commit_sync: bool,
    /// Most manifest bytes a COMMIT carries inline (see [`INLINE_COMMIT_BUDGET`]).
    inline_budget: usize,
    /// Garbage collection retires dead chunks for reuse instead of deleting them
    /// ([`Repository::recycle_dead_chunks`]).
    recycle: bool,
}

/// Most manifest bytes (before base64) one COMMIT carries inline; the committer writes the
/// manifests beyond it as `rank-<r>.manifest` files. Why a budget: every restore and every
/// `inspect` reads the whole COMMIT, the envelope refuses bodies over 256 MiB, and inline
/// manifests grow with the world size (up to 64 KiB each: 4096 ranks would already exceed
/// the envelope). 16 MiB keeps ~24,000 empty-state ranks, or 256 ranks at the per-manifest
/// maximum, inline.
pub const INLINE_COMMIT_BUDGET: usize = 16 << 20;

impl Repository {
    /// Opens (creating if absent) the repository at `path` (a directory, `s3://bucket/prefix`
    /// or `memory://name`) and takes its lock. Refuses an unknown major version
    /// (`VersionUnsupported`), a non-empty directory that is not a repository (`Missing`),
    /// and a lock held by a live process (`Locked`). A stale lock of a dead process is
    /// taken over with a warning.
    pub fn open(path: &Path, opts: RepoOptions) -> Result<Repository, StoreError> {
        Self::open_backend(crate::location::open_backend(path)?, opts)
    }

    /// Like [`Repository::open`], but also succeeds when the lock is held by a live process
    /// of the same job (same non-None `job_token`), e.g. the supervisor while rank 0
    /// commits. The caller must make sure the two never write checkpoints concurrently.
    pub fn open_shared(path: &Path, opts: RepoOptions) -> Result<Repository, StoreError> {
        Self::open_shared_backend(crate::location::open_backend(path)?, opts)
    }

    /// [`Repository::open`] on a backend.
    pub fn open_backend(
        backend: Arc<dyn WriteBackend>,
        opts: RepoOptions,
    ) -> Result<Repository, StoreError> {
        Self::open_impl(backend, opts, false)
    }

    /// [`Repository::open_shared`] on a backend.
    pub fn open_shared_backend(
        backend: Arc<dyn WriteBackend>,
        opts: RepoOptions,
    ) -> Result<Repository, StoreError> {
        Self::open_impl(backend, opts, true)
    }

    fn open_impl(
        backend: Arc<dyn WriteBackend>,
        opts: RepoOptions,
        shared: bool,
    ) -> Result<Repository, StoreError> {
        opts.validate()?;
        let b = backend.as_ref();
        b.ensure_dirs(&[DirKey::Root])?;
        // Check the version before touching LOCK so a future repository is left untouched.
        let has_format = || b.stat(&ObjectKey::Format).map(|m| m.is_some());
        let mut on_disk = if has_format()? {
            Some(crate::reader::check_format(b)?)
        } else {
            None
        };
        let owner = LockOwner {
            pid: std::process::id(),
            host: crate::lease::hostname(),
            job: opts.job_token.as_deref().map(crate::lease::job_tag),
        };
        let lock = match b.process_lock(&owner, shared) {
            Some(l) => l?,
            None => crate::lease::acquire(
                backend.clone(),
                opts.lease.clone().unwrap_or_else(|| b.lease_config()),
                &owner,
                shared,
            )?,
        };
        // Another writer may have created the repository while we waited for the lock.
        if on_disk.is_none() && has_format()? {
            on_disk = Some(crate::reader::check_format(b)?);
        }
        if on_disk.is_none() {
            let foreign = b
                .list(&DirKey::Root)?
                .iter()
                .any(|e| e.name != "LOCK" && !e.name.starts_with(TMP_PREFIX));
            if foreign {
                return Err(StoreError::new(
                    StoreErrorKind::Missing,
                    Some(&b.describe(&ObjectKey::Format)),
                    "directory is not empty and has no FORMAT file: not a Lazarus repository",
                ));
            }
        }
        // A new repository gets FORMAT; an older minor is raised, because a writer may commit
        // 1.1 records (inline manifests) and must say so in FORMAT before the first one can
        // exist. Older readers accept any minor of major 1 (docs/FORMAT.md).
        if on_disk.is_none_or(|v| v.minor < FormatVersion::CURRENT.minor) {
            b.put(
                &ObjectKey::Format,
                &[&FormatVersion::CURRENT.encode()],
                PutMode::Overwrite,
            )?;
        }
        // Every chunks/<hh>/ is created here, durably, never per checkpoint: a writer that
        // created one and failed before fsyncing chunks/ would leave an entry that later,
        // successful writers trust; and one fsync per new directory inside the write loop
        // cost a fresh repository's first checkpoint more than its hashing. GC never
        // removes them.
        let mut dirs = vec![DirKey::Chunks];
        dirs.extend(DirKey::chunk_fans());
        dirs.push(DirKey::Checkpoints);
        b.ensure_dirs(&dirs)?;
        Ok(Repository {
            backend,
            opts,
            lock,
            pending: Arc::new(AtomicUsize::new(0)),
            budget: Budget::default(),
            last_begun: 0,
            last_committed: None,
            fail_commit_sync: false,
            inline_budget: INLINE_COMMIT_BUDGET,
            recycle: false,
        })
    }

    /// With `on`, garbage collection does not free the files of dead chunks but keeps
    /// them as spares that the next checkpoint's new chunks are written into (on the
    /// directory backend; other backends delete as before). For a writer that checkpoints
    /// periodically and collects after each commit (the Job does): the file system then
    /// neither frees nor allocates storage per checkpoint, which on ext4 and tmpfs costs
    /// more than writing the bytes (docs/PERFORMANCE.md, "Recycled chunk files"). The
    /// price: until the next checkpoint reuses them the spares hold what the collection
    /// would have freed (at most one collection's dead chunks: each collection first
    /// deletes the spares left from the one before; [`Repository::clear_spares`] deletes
    /// them at once). Off by default, so `lazarus gc` frees space.
    pub fn recycle_dead_chunks(&mut self, on: bool) {
        self.recycle = on;
    }

    /// Deletes the spare chunk files retired by collections with
    /// [`Repository::recycle_dead_chunks`] and not reused (a job that ends calls this).
    pub fn clear_spares(&self) -> Result<(), StoreError> {
        self.backend.clear_retired()
    }

    /// Test hook: lowers the inline-manifest budget of this repository's COMMITs (see
    /// [`INLINE_COMMIT_BUDGET`]) so that a test can make the committer spill manifests.
    #[doc(hidden)]
    pub fn set_inline_commit_budget(&mut self, bytes: usize) {
        self.inline_budget = bytes.min(INLINE_COMMIT_BUDGET);
    }

    /// Simulates a disk with only `bytes` left for files written through this repository
    /// and the part writers it hands out (fault injection for tests).
    pub fn set_write_budget(&mut self, bytes: u64) {
        self.budget = Budget::limited(bytes);
    }

    /// Simulates a directory fsync failure (EIO) right after the next commit's COMMIT
    /// rename, when COMMIT is already visible (fault injection for tests: that commit
    /// fails with [`StoreErrorKind::CommitUnknown`]).
    pub fn fail_next_commit_sync(&mut self) {
        self.fail_commit_sync = true;
    }

    /// The repository's location (directory path or URL).
    pub fn path(&self) -> &Path {
        self.backend.location()
    }

    /// Replaces the multi-level job's history record ([`ObjectKey::LevelHistory`]) with
    /// `bytes`, atomically and durably (readers see the old or the new record, whole;
    /// durable when this returns). Fenced by the writer's lock like COMMIT.
    pub fn write_level_history(&self, bytes: &[u8]) -> Result<(), StoreError> {
        // Fencing, as for COMMIT: a writer whose lock is gone never changes the record.
        self.lock
            .check()
            .map_err(|e| e.context("level history not written"))?;
        failpoint("before_level_history");
        self.backend
            .put(&ObjectKey::LevelHistory, &[bytes], PutMode::Overwrite)
            .map(|_| ())
    }

    /// The backend the repository is stored in.
    pub fn backend(&self) -> &Arc<dyn WriteBackend> {
        &self.backend
    }

    /// The lease generation of this writer, on backends that lock with a lease.
    pub fn lease_generation(&self) -> Option<u64> {
        self.lock.generation()
    }

    /// The options the repository was opened with.
    pub fn options(&self) -> &RepoOptions {
        &self.opts
    }

    /// A reader on the same repository.
    pub fn reader(&self) -> Result<RepoReader, StoreError> {
        RepoReader::from_backend(self.backend.clone().as_read())
    }

    /// Starts a checkpoint of `world_size` ranks: creates its directory under the next id,
    /// greater than every id present (committed or not) when this handle first began one,
    /// and than every id this handle handed out. The directory entry is made durable by
    /// `commit` (which fsyncs `checkpoints/` after COMMIT), not here: until COMMIT exists a
    /// lost directory only loses an uncommitted checkpoint, and one fsync per round less
    /// is a tenth of an empty round's latency (docs/PERFORMANCE.md).
    pub fn begin(&mut self, world_size: u32) -> Result<PendingCheckpoint, StoreError> {
        if world_size == 0 {
            return Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                None,
                "world size must be at least 1",
            ));
        }
        // After the first round, skip the directory listing: this handle holds the lock,
        // so nobody else creates checkpoint directories. Should one appear anyway, the
        // creation fails with AlreadyExists and the listing decides.
        let mut scanned = false;
        let mut next = self.last_begun + 1;
        if self.last_begun == 0 {
            next = self.scan_next_id()?;
            scanned = true;
        }
        // Creating the directory claims the id exclusively (an object store writes a
        // marker with a conditional create): two writers never share a checkpoint id.
        let mut tries = 0;
        let id = loop {
            let id = CheckpointId::new(next).ok_or_else(|| {
                StoreError::new(
                    StoreErrorKind::InvalidArgument,
                    None,
                    CheckpointId::out_of_range(next),
                )
            })?;
            if self.backend.create_dir(&DirKey::Checkpoint(id))? {
                break id;
            }
            tries += 1;
            if tries > 16 {
                return Err(StoreError::new(
                    StoreErrorKind::Conflict,
                    Some(&self.backend.describe_dir(&DirKey::Checkpoint(id))),
                    "checkpoint ids keep being taken by another writer",
                ));
            }
            next = if scanned {
                next + 1
            } else {
                scanned = true;
                self.scan_next_id()?
            };
        };
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.last_begun = id.0;
        Ok(PendingCheckpoint {
            id,
            world_size,
            writer: PartWriter::new(
                self.backend.clone(),
                id,
                self.opts.clone(),
                self.budget.clone(),
            ),
            _guard: PendingGuard(self.pending.clone()),
        })
    }

    fn scan_next_id(&self) -> Result<u64, StoreError> {
        Ok(crate::reader::checkpoint_ids(self.backend.as_ref())?
            .last()
            .map_or(1, |id| id.0 + 1)
            .max(self.last_begun + 1))
    }

    /// Commits `pending`: checks that `parts` has exactly one receipt per rank, that each
    /// manifest (inline in the receipt, or the file on disk) matches its receipt's digest,
    /// decodes and names this checkpoint and rank, and that every chunk it names exists;
    /// then writes COMMIT durably (temp, fsync, rename, fsync of the checkpoint directory
    /// and of `checkpoints/`). Inline manifests are stored in COMMIT (format 1.1).
    ///
    /// `Err` of any kind but [`StoreErrorKind::CommitUnknown`] means COMMIT is not visible
    /// and the pending directory is left: remove it with [`Repository::remove_uncommitted`]
    /// (or leave it to GC). `CommitUnknown` means COMMIT
    /// was renamed into place (readers see the checkpoint as committed) but could not be
    /// made durable: the caller must not report the round as aborted nor delete it.
    pub fn commit(
        &mut self,
        pending: PendingCheckpoint,
        parts: Vec<PartReceipt>,
        meta: CommitMeta,
    ) -> Result<CommittedCheckpoint, StoreError> {
        let id = pending.id;
        let n = pending.world_size;
        let dkey = DirKey::Checkpoint(id);
        let dir = self.backend.describe_dir(&dkey);
        let mut by_rank: Vec<Option<PartReceipt>> = vec![None; n as usize];
        for r in parts {
            if r.checkpoint != id {
                return Err(arg(
                    &dir,
                    format!(
                        "receipt of {} is for checkpoint {}, not {id}",
                        r.rank, r.checkpoint
                    ),
                ));
            }
            let slot = by_rank.get_mut(r.rank.index()).ok_or_else(|| {
                arg(
                    &dir,
                    format!(
                        "checkpoint {id}: receipt from {} but world size is {n}",
                        r.rank
                    ),
                )
            })?;
            if slot.is_some() {
                return Err(arg(
                    &dir,
                    format!("checkpoint {id}: two receipts from {}", r.rank),
                ));
            }
            *slot = Some(r);
        }
        let t = std::time::Instant::now();
        let mut commit_parts = Vec::with_capacity(n as usize);
        // Inline manifests beyond the budget, written as files before COMMIT (rank order,
        // so which ones spill is deterministic).
        let mut inline_left = self.inline_budget;
        let mut spilled: Vec<(ObjectKey, Vec<u8>)> = Vec::new();
        let mut chunks: BTreeSet<ChunkDigest> = BTreeSet::new();
        for (i, r) in by_rank.into_iter().enumerate() {
            let r =
                r.ok_or_else(|| arg(&dir, format!("checkpoint {id}: no receipt from rank {i}")))?;
            let mkey = ObjectKey::Manifest(id, r.rank);
            let p = self.backend.describe(&mkey);
            let (bytes, inline) = match r.manifest {
                Some(b) => (b, true),
                None => (self.backend.read(&mkey)?, false),
            };
            let what = if inline {
                "inline manifest"
            } else {
                "manifest"
            };
            if ChunkDigest::of(&bytes) != r.manifest_digest {
                return Err(StoreError::new(
                    StoreErrorKind::Corrupt,
                    Some(&p),
                    format!(
                        "checkpoint {id} {}: {what} differs from the receipt's digest",
                        r.rank
                    ),
                ));
            }
            let m = Manifest::decode(&bytes)
                .map_err(|e| StoreError::format(&p, &format!("checkpoint {id} {}", r.rank), e))?;
            if m.checkpoint != id || m.rank != r.rank {
                return Err(StoreError::new(
                    StoreErrorKind::Corrupt,
                    Some(&p),
                    format!(
                        "{what} names checkpoint {} {}, expected {id} {}",
                        m.checkpoint, m.rank, r.rank
                    ),
                ));
            }
            chunks.extend(
                m.objects
                    .iter()
                    .flat_map(|o| o.chunks.iter().map(|c| c.digest)),
            );
            let keep_inline = inline && bytes.len() <= inline_left;
            if keep_inline {
                inline_left -= bytes.len();
            }
            commit_parts.push(CommitPart {
                rank: r.rank,
                manifest_digest: r.manifest_digest,
                logical_bytes: r.logical_bytes,
                stored_new_bytes: r.stored_new_bytes,
                manifest: keep_inline.then(|| lazarus_format::base64::encode(&bytes)),
            });
            if inline && !keep_inline {
                spilled.push((mkey, bytes));
            }
        }
        self.check_chunks_present(id, chunks)?;
        if !spilled.is_empty() {
            // Same bytes, so the same digest, as if the rank had written the file itself
            // (format 1.0 path). Durable, directory included, before COMMIT can exist.
            let t = std::time::Instant::now();
            let b = self.backend.as_ref();
            let mut staged = Vec::with_capacity(spilled.len());
            let mut failed = None;
            for (key, bytes) in &spilled {
                let r = self
                    .budget
                    .take(bytes.len() as u64, &b.describe(key))
                    .and_then(|()| b.stage(key, &[bytes], PutMode::Overwrite));
                match r {
                    Ok(s) => staged.push(s),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) =
                failed.or_else(|| b.sync_staged(&staged.iter().collect::<Vec<_>>()).err())
            {
                staged.into_iter().for_each(|s| b.discard(s));
                return Err(e);
            }
            for s in staged {
                b.publish(s)?;
            }
            b.sync_dirs(std::slice::from_ref(&dkey))?;
            tracing::debug!(
                manifests = spilled.len(),
                secs = t.elapsed().as_secs_f64(),
                "commit: inline manifests over the budget written as files"
            );
        }
        tracing::debug!(secs = t.elapsed().as_secs_f64(), "commit: parts checked");
        let t = std::time::Instant::now();
        let mut writer = WriterInfo::this_host();
        writer.lease_generation = self.lock.generation();
        let record = CommitRecord {
            checkpoint: id,
            world_size: n,
            step: meta.step,
            time_unix_ms: fsutil::now_unix_ms(),
            app: meta.app,
            parts: commit_parts,
            writer,
        };
        let encoded = record.encode();
        let ckey = ObjectKey::Commit(id);
        let cpath = self.backend.describe(&ckey);
        // A COMMIT no reader would accept must never be written: its rename would "commit"
        // a checkpoint that every restore then skips as damaged.
        let body =
            (encoded.len() as u64).saturating_sub(lazarus_format::ENVELOPE_HEADER_LEN as u64);
        if body > lazarus_format::MAX_ENVELOPE_BODY {
            return Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                Some(&cpath),
                format!(
                    "checkpoint {id}: the COMMIT record would be {body} bytes, over the format's \
                     limit of {}",
                    lazarus_format::MAX_ENVELOPE_BODY
                ),
            ));
        }
        failpoint("before_commit");
        // Fencing: a writer whose lock is gone (a lease expired or taken over) never commits.
        self.lock
            .check()
            .map_err(|e| e.context(&format!("checkpoint {id} not committed")))?;
        self.budget.take(encoded.len() as u64, &cpath)?;
        let b = self.backend.as_ref();
        let staged = b.stage(&ckey, &[&encoded], PutMode::Create)?;
        if let Err(e) = b.sync_staged(&[&staged]) {
            b.discard(staged);
            return Err(e);
        }
        failpoint("before_commit_rename");
        if let Err(e) = b.publish(staged) {
            self.settle_failed_commit(id, &encoded, e)?;
        }
        failpoint("after_commit_rename");
        // COMMIT is visible from here on: no failure may be reported as "not committed".
        let injected = std::mem::take(&mut self.fail_commit_sync);
        let synced = if injected {
            Err(StoreError::io(
                &dir,
                "fsync of directory",
                std::io::Error::from_raw_os_error(libc::EIO),
            ))
        } else {
            b.sync_dirs(&[dkey, DirKey::Checkpoints])
        };
        if let Err(e) = synced {
            // The pending guard is dropped: the directory is not ours to abort any more.
            drop(pending);
            return Err(StoreError::new(
                StoreErrorKind::CommitUnknown,
                e.path(),
                format!(
                    "checkpoint {id}: COMMIT is visible but not known durable ({}); \
                     its outcome is decided by what survives",
                    e.message()
                ),
            ));
        }
        failpoint("after_commit");
        tracing::debug!(secs = t.elapsed().as_secs_f64(), "commit: COMMIT durable");
        drop(pending);
        self.last_committed = Some(id);
        Ok(CommittedCheckpoint {
            summary: CheckpointSummary::from(record),
        })
    }

    /// Every chunk the parts name must exist (as a regular object) before COMMIT may. The
    /// stats run concurrently: on an object store each is a request.
    fn check_chunks_present(
        &self,
        id: CheckpointId,
        chunks: BTreeSet<ChunkDigest>,
    ) -> Result<(), StoreError> {
        let b = self.backend.as_ref();
        // Chunks this process wrote durably or verified (its own rank's part, when the
        // committer is a rank) need no request: every chunk a part names was proven present
        // when the part was written, after `begin` (a conditional create or a stat), and
        // while this writer holds the lock nothing removes chunks but its own GC, refused
        // while a checkpoint is pending. A former holder's GC cannot: each of its deletes
        // is fenced like a COMMIT (`Fence`), so it stops before anyone can take the lease
        // over. Outside that guarantee (docs/STORAGE.md, "What it does not guarantee": a
        // server applying a delete beyond the operation bound, clocks further apart than
        // `max_clock_skew`, two processes sharing one generation of a job's lease) a chunk
        // may be gone and the COMMIT names it: that checkpoint is then damaged, found by
        // `verify` and skipped by restore, never restored wrong.
        let repo = b.location();
        let chunks: Vec<ChunkDigest> = chunks
            .into_iter()
            .filter(|d| crate::known::status(repo, d) != crate::known::Known::Good)
            .collect();
        let threads = b.read_concurrency().min(chunks.len()).max(1);
        crate::par::try_for_each(chunks, threads, |d| {
            let key = ObjectKey::Chunk(d);
            match b.stat(&key)? {
                Some(m) if m.regular => Ok(()),
                _ => Err(StoreError::new(
                    StoreErrorKind::Missing,
                    Some(&b.describe(&key)),
                    format!("checkpoint {id}: chunk {d} is missing"),
                )),
            }
        })
    }

    /// After the conditional create of COMMIT failed with `err`, COMMIT is read back for
    /// every error but `InvalidArgument` (raised before anything was sent): Ok when our own
    /// COMMIT is there after all (a retried request whose first attempt landed), `Conflict`
    /// when another writer's is, `err` when it is certainly absent (not there, and `err`
    /// was a definite answer, not a conflict or a transport failure that an attempt still
    /// in flight may follow), else `CommitUnknown` (also when the read-back fails). Found
    /// in review: only `Conflict`/`Unavailable` were read back, so a first PUT applied but
    /// answered 503, whose retry got 403 or 404, was reported as not committed.
    fn settle_failed_commit(
        &self,
        id: CheckpointId,
        ours: &[u8],
        err: StoreError,
    ) -> Result<(), StoreError> {
        if err.kind() == StoreErrorKind::InvalidArgument {
            return Err(err);
        }
        let in_flight = matches!(
            err.kind(),
            StoreErrorKind::Conflict | StoreErrorKind::Unavailable
        );
        let key = ObjectKey::Commit(id);
        match self.backend.read(&key) {
            Ok(there) if there == ours => {
                tracing::debug!("checkpoint {id}: our COMMIT landed despite: {err}");
                Ok(())
            }
            Ok(_) => Err(StoreError::new(
                StoreErrorKind::Conflict,
                Some(&self.backend.describe(&key)),
                format!("checkpoint {id} was committed by another writer; ours is not"),
            )),
            Err(e) if e.kind() == StoreErrorKind::Missing && !in_flight => Err(err),
            // A conflict with no COMMIT there is not proof that none will be: S3 answers
            // 409 ConditionalRequestConflict while an earlier attempt of this very write
            // (the client's retry) is still in flight. So it is unknown, like a read error
            // (test a_commit_conflict_with_no_commit_there_is_an_unknown_outcome_not_an_abort).
            Err(_) => Err(StoreError::new(
                StoreErrorKind::CommitUnknown,
                err.path(),
                format!(
                    "checkpoint {id}: the COMMIT request failed ({}) and may still be applied; \
                     its outcome is decided by what the store holds later",
                    err.message()
                ),
            )),
        }
    }

    /// Abandons `pending`: removes its directory (its new chunks are swept by the next GC).
    pub fn abort(&mut self, pending: PendingCheckpoint) -> Result<(), StoreError> {
        self.backend.delete_dir(&DirKey::Checkpoint(pending.id))?;
        self.backend.sync_dirs(&[DirKey::Checkpoints])
    }

    /// Removes the directory of checkpoint `id` after [`Repository::commit`] failed with
    /// any kind but [`StoreErrorKind::CommitUnknown`] (`commit` consumed the
    /// `PendingCheckpoint`, so [`Repository::abort`] cannot be used). A coordinator that
    /// announces the abort of such a round must remove the directory first: ranks that
    /// missed the decision read "directory gone" as the abort (docs/PROTOCOL.md).
    ///
    /// Refused (`Conflict`, nothing deleted) when COMMIT of `id` exists, and an error when
    /// its presence cannot be read: a committed checkpoint is never removed here. Refused
    /// too (the lock's error) when this handle no longer holds the repository's lock.
    pub fn remove_uncommitted(&mut self, id: CheckpointId) -> Result<(), StoreError> {
        // A writer that lost its lock (a commit can fail for that very reason) deletes
        // nothing: the repository may be another writer's now.
        self.lock.check()?;
        let ckey = ObjectKey::Commit(id);
        let present = self
            .backend
            .stat(&ckey)
            .map_err(|e| e.context(&format!("checkpoint {id}: checking for COMMIT")))?;
        if present.is_some() {
            return Err(StoreError::new(
                StoreErrorKind::Conflict,
                Some(&self.backend.describe(&ckey)),
                format!("checkpoint {id} has a COMMIT: not removed as uncommitted"),
            ));
        }
        self.backend
            .delete_dir(&DirKey::Checkpoint(id))
            .map_err(|e| e.context(&format!("removing uncommitted checkpoint {id}")))?;
        self.backend.sync_dirs(&[DirKey::Checkpoints])
    }

    /// Makes every checkpoint this handle begins from now on number above `id` (and
    /// above every id present, as always). For a repository whose numbers must not
    /// repeat ones held elsewhere: the multi-level layer's node-local copies, whose
    /// numbers their partner copies reuse, started again on a new host.
    pub fn number_above(&mut self, id: u64) -> Result<(), StoreError> {
        let next = self.scan_next_id()?.max(id.saturating_add(1));
        self.last_begun = self.last_begun.max(next - 1);
        Ok(())
    }

    /// Removes committed checkpoint `id` (COMMIT first, so a crash midway leaves an
    /// uncommitted directory, which the next [`Repository::retain`] removes, never a
    /// committed one with missing files). Its chunks stay until the next `retain`
    /// sweeps what no kept checkpoint references. For a checkpoint that must never be
    /// restored (the multi-level layer drops a copy of an abandoned run with it); a
    /// writer that lost its lock is refused.
    pub fn remove_checkpoint(&mut self, id: CheckpointId) -> Result<(), StoreError> {
        if self.pending.load(Ordering::SeqCst) != 0 {
            return Err(arg(
                self.backend.location(),
                "remove: a checkpoint is pending; commit or abort it first".into(),
            ));
        }
        let what = format!("removal of checkpoint {id}");
        let mut fence = Fence::new(self.lock.as_ref(), self.backend.location(), &what);
        remove_committed(self.backend.as_ref(), id, &mut fence)?;
        if self.last_committed == Some(id) {
            // Gone on purpose: a collection must not take its absence for a stale listing.
            self.last_committed = None;
        }
        self.backend.sync_dirs(&[DirKey::Checkpoints])
    }

    /// Keeps the newest `keep` committed checkpoints, removes older ones and uncommitted
    /// leftovers, then deletes every chunk no kept checkpoint references. Refused while a
    /// checkpoint begun by this repository is pending. Checkpoints with a damaged COMMIT
    /// are neither counted nor removed; chunks named by their readable manifests are kept.
    /// Fails without deleting anything if a kept checkpoint's manifest is unreadable.
    ///
    /// Fenced by the writer's lock request by request (docs/STORAGE.md, "Fencing of GC"):
    /// every delete is issued while a lock check would pass, so a writer whose lease runs
    /// out or is taken over stops, with [`StoreErrorKind::Locked`] naming the repository,
    /// before another writer can hold the lease, and never deletes what that writer puts.
    /// A collection stopped midway leaves a consistent repository (COMMIT is deleted
    /// before the rest of a checkpoint; leftovers are removed by the next collection).
    pub fn retain(&mut self, keep: usize) -> Result<GcReport, StoreError> {
        self.retain_with_progress(keep, &|_, _, _| {})
    }

    /// [`Repository::retain`] that also keeps every older committed checkpoint whose
    /// COMMIT `protect` accepts (the multi-level runtime keeps the newest checkpoint
    /// known complete on every rank, however many failed rounds came after it).
    pub fn retain_protecting(
        &mut self,
        keep: usize,
        protect: &dyn Fn(&lazarus_format::CommitRecord) -> bool,
    ) -> Result<GcReport, StoreError> {
        self.collect(keep, 1, protect, &|_, _, _| {})
    }

    /// [`Repository::retain_with_progress`] that keeps `keep` *intact* checkpoints: each
    /// kept one not committed by this handle gets the cheap check (every chunk it names
    /// exists), and older committed checkpoints are kept in place of damaged newer ones
    /// until `keep` pass it (or none is left). For `lazarus gc --keep K` (found in
    /// review: with K > 1, a newest checkpoint missing a chunk left fewer than K intact
    /// ones, and only the newest intact one was spared). Costs a `stat` per chunk of each
    /// kept checkpoint.
    pub fn retain_intact_with_progress(
        &mut self,
        keep: usize,
        progress: &dyn Fn(GcStage, u64, u64),
    ) -> Result<GcReport, StoreError> {
        self.collect(keep, keep, &|_| false, progress)
    }

    /// [`Repository::retain`], calling `progress(stage, done, total)` as it goes (for
    /// progress bars; the callback must be cheap and cannot stop the collection).
    pub fn retain_with_progress(
        &mut self,
        keep: usize,
        progress: &dyn Fn(GcStage, u64, u64),
    ) -> Result<GcReport, StoreError> {
        self.collect(keep, 1, &|_| false, progress)
    }

    /// Retention: the newest `keep` committed checkpoints and the older ones `protect`
    /// accepts stay, and older ones in place of damaged newer ones until `intact` of the
    /// kept ones pass the cheap check; see [`Repository::retain`].
    fn collect(
        &mut self,
        keep: usize,
        intact: usize,
        protect: &dyn Fn(&lazarus_format::CommitRecord) -> bool,
        progress: &dyn Fn(GcStage, u64, u64),
    ) -> Result<GcReport, StoreError> {
        let root = self.backend.location();
        if keep == 0 {
            return Err(arg(root, "retain: keep must be at least 1".into()));
        }
        if self.pending.load(Ordering::SeqCst) != 0 {
            return Err(arg(
                root,
                "retain: a checkpoint is pending; commit or abort it first".into(),
            ));
        }
        let reader = self.reader()?;
        let mut report = GcReport::default();
        let mut committed = Vec::new();
        let mut damaged = Vec::new();
        let ids = reader.checkpoint_ids()?;
        // A listing that misses the checkpoint this handle committed is stale or
        // incomplete (an object store's LIST): collecting by it would sweep that
        // checkpoint's new chunks (regression:
        // `gc_refuses_a_listing_that_misses_the_checkpoint_just_committed`).
        if let Some(last) = self.last_committed.filter(|l| !ids.contains(l)) {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                Some(&self.backend.describe_dir(&DirKey::Checkpoints)),
                format!(
                    "garbage collection stopped before deleting anything: the listing misses \
                     checkpoint {last}, which this writer committed (a stale or incomplete \
                     listing; retry later)"
                ),
            ));
        }
        let scanned: BTreeMap<_, _> = reader.scan()?.into_iter().collect();
        let mut uncommitted = Vec::new();
        for id in ids {
            match scanned.get(&id) {
                Some(Ok(_)) => committed.push(id),
                // A COMMIT that could not be *read* (no permission, a server error) is
                // not a damaged one: collecting as if it were swept the chunks of an
                // intact checkpoint (regression: `gc_stops_at_a_commit_it_cannot_read`).
                Some(Err(e)) if crate::reader::is_fatal(e) => {
                    return Err(StoreError::new(
                        e.kind(),
                        e.path(),
                        format!(
                            "garbage collection stopped before deleting anything: {}",
                            e.message()
                        ),
                    ))
                }
                Some(Err(_)) => damaged.push(id),
                None => uncommitted.push(id),
            }
        }
        let split = committed.len().saturating_sub(keep);
        let (old, newest) = committed.split_at(split);
        let (protected, mut old): (Vec<CheckpointId>, Vec<CheckpointId>) = old
            .iter()
            .partition(|id| matches!(scanned.get(id), Some(Ok(c)) if protect(c)));
        let mut kept: Vec<CheckpointId> = protected
            .into_iter()
            .chain(newest.iter().copied())
            .collect();
        // Never the last checkpoint a restart could use: when the newest committed ones
        // are broken (a chunk lost), the newest ones that pass the cheap check stay, until
        // `intact` of them do, even if they are older than `keep` (regression:
        // `gc_keeps_the_newest_intact_checkpoint_when_the_newest_are_broken`,
        // `gc_keep_k_keeps_k_intact_checkpoints_when_the_newest_lost_a_chunk`).
        let mut found = 0;
        for id in committed.iter().rev() {
            if found >= intact {
                break;
            }
            if Some(*id) == self.last_committed {
                found += 1; // committed by this handle: every chunk proven present then
                continue;
            }
            match reader.check_committed(*id) {
                Ok(_) => {
                    found += 1;
                    if let Some(i) = old.iter().position(|o| o == id) {
                        old.remove(i);
                        tracing::warn!(
                            "{}: some of the newest {} committed checkpoint(s) are damaged; keeping checkpoint {id}, an intact older one",
                            root.display(),
                            keep
                        );
                        kept.insert(0, *id);
                    }
                }
                Err(e) if crate::reader::is_fatal(&e) => {
                    return Err(e.context("garbage collection stopped before deleting anything"))
                }
                Err(_) => {}
            }
        }
        // Mark.
        let mut live: HashSet<ChunkDigest> = HashSet::new();
        let n_mark = (kept.len() + damaged.len()) as u64;
        for (i, id) in kept.iter().enumerate() {
            progress(GcStage::Mark, i as u64, n_mark);
            // Decoded once by the scan above (kept ids are all `Ok` there); borrowed, since
            // a COMMIT with inline manifests can be megabytes.
            let read_again;
            let c = match scanned.get(id) {
                Some(Ok(c)) => c,
                _ => {
                    read_again = reader.commit_record(*id)?;
                    &read_again
                }
            };
            for p in &c.parts {
                let m = reader.manifest_checked(c, p.rank)?;
                live.extend(
                    m.objects
                        .iter()
                        .flat_map(|o| o.chunks.iter().map(|c| c.digest)),
                );
            }
        }
        let b = self.backend.as_ref();
        for (i, id) in damaged.iter().enumerate() {
            progress(GcStage::Mark, (kept.len() + i) as u64, n_mark);
            let dir = DirKey::Checkpoint(*id);
            for ent in b.list(&dir)?.into_iter().filter(|e| !e.is_dir) {
                let is_commit = ent.name == crate::backend::COMMIT_NAME;
                // Only what can name chunks: a stray file (a core dump) is never read
                // (found in review: every file of a damaged checkpoint was read whole).
                let is_manifest = ent.name.starts_with("rank-") && ent.name.ends_with(".manifest");
                if !is_commit && !is_manifest {
                    continue;
                }
                let key = ObjectKey::Entry(dir.clone(), ent.name);
                let bytes = match b.read(&key) {
                    Ok(bytes) => bytes,
                    // Unreadable is not damaged: its chunks may be live.
                    Err(e) if crate::reader::is_fatal(&e) => {
                        return Err(e.context("garbage collection stopped before deleting anything"))
                    }
                    Err(_) => continue,
                };
                // Manifests carry their own checksum, so one found as a file or inline in
                // the damaged COMMIT (1.1) is trustworthy even though COMMIT is not.
                let manifests = if is_commit {
                    salvage_inline_manifests(&bytes)
                } else {
                    vec![bytes]
                };
                for m in manifests.iter().filter_map(|b| Manifest::decode(b).ok()) {
                    live.extend(
                        m.objects
                            .iter()
                            .flat_map(|o| o.chunks.iter().map(|c| c.digest)),
                    );
                }
            }
        }
        // Fencing: from here on GC deletes; a writer that lost its lock must not. Every
        // delete below is issued while a lock check would pass (`Fence`), so a writer
        // whose lease runs out or is taken over mid-collection stops before anyone else
        // can hold the lease, however long the collection takes.
        let mut fence = Fence::new(self.lock.as_ref(), root, "garbage collection");
        fence.pass()?;
        // Remove old committed checkpoints: COMMIT first, so a crash midway leaves an
        // uncommitted directory (never a committed one with missing manifests).
        progress(GcStage::Mark, n_mark, n_mark);
        let n_remove = (old.len() + uncommitted.len()) as u64;
        for (i, id) in old.iter().enumerate() {
            progress(GcStage::Remove, i as u64, n_remove);
            remove_committed(b, *id, &mut fence)?;
        }
        for (i, id) in uncommitted.iter().enumerate() {
            progress(GcStage::Remove, (old.len() + i) as u64, n_remove);
            fence.pass()?;
            b.delete_dir(&DirKey::Checkpoint(*id))?;
            fence.deleted += 1;
        }
        progress(GcStage::Remove, n_remove, n_remove);
        b.sync_dirs(&[DirKey::Checkpoints])?;
        // Sweep. Spares the last collection retired and no write reused go first, so
        // spares never hold more than one collection's dead chunks.
        fence.pass()?;
        if let Err(e) = b.clear_retired() {
            // Not fatal: what the sweep frees matters more than old spares.
            tracing::warn!("garbage collection: {e}");
        }
        let fans: Vec<DirKey> = b
            .list(&DirKey::Chunks)?
            .into_iter()
            .filter(|e| e.is_dir)
            .filter_map(|e| {
                let v = u8::from_str_radix(&e.name, 16).ok()?;
                (e.name.len() == 2 && e.name == format!("{v:02x}")).then_some(DirKey::ChunkFan(v))
            })
            .collect();
        let n_sweep = fans.len() as u64;
        for (i, fan) in fans.into_iter().enumerate() {
            progress(GcStage::Sweep, i as u64, n_sweep);
            let mut removed_here = false;
            // Listed right before its deletions, each of which is fenced: a chunk another
            // writer put here can only exist after it took the lease over, and by then
            // this writer's fence fails (docs/STORAGE.md, "Fencing").
            fence.pass()?;
            for ent in b.list(&fan)? {
                let is_tmp = ent.name.starts_with(TMP_PREFIX);
                let digest = ChunkDigest::from_hex(&ent.name);
                let dead = is_tmp || digest.is_some_and(|d| !live.contains(&d));
                if !dead {
                    if digest.is_some() {
                        report.chunks_kept += 1;
                    }
                    continue;
                }
                let key = match digest {
                    Some(d) if ent.name == d.to_hex() => ObjectKey::Chunk(d),
                    _ => ObjectKey::Entry(fan.clone(), ent.name.clone()),
                };
                let len = match ent.size {
                    Some(n) => n,
                    None => b.stat(&key).ok().flatten().map_or(0, |m| m.size),
                };
                fence.pass()?;
                if self.recycle && !is_tmp {
                    b.retire_chunk(&key)
                } else {
                    b.delete(&key)
                }
                .map_err(|e| e.context("removing chunk"))?;
                fence.deleted += 1;
                failpoint("gc_during_sweep");
                removed_here = true;
                report.bytes_freed += len;
                if !is_tmp {
                    report.chunks_removed += 1;
                }
            }
            if removed_here {
                b.sync_dirs(&[fan])?;
            }
        }
        progress(GcStage::Sweep, n_sweep, n_sweep);
        report.kept = kept.to_vec();
        report.removed = old.to_vec();
        report.removed_uncommitted = uncommitted;
        report.damaged_left = damaged;
        Ok(report)
    }
}

/// Best effort for GC of a damaged COMMIT: the inline manifest bytes of every part whose
/// JSON still parses (the COMMIT checksum is ignored; each manifest's own is checked later).
fn salvage_inline_manifests(commit: &[u8]) -> Vec<Vec<u8>> {
    let body = commit
        .get(lazarus_format::ENVELOPE_HEADER_LEN..)
        .unwrap_or_default();
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    v.get("parts")
        .and_then(|p| p.as_array())
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get("manifest")?.as_str())
                .filter_map(lazarus_format::base64::decode)
                .collect()
        })
        .unwrap_or_default()
}

fn arg(path: &Path, msg: String) -> StoreError {
    StoreError::new(StoreErrorKind::InvalidArgument, Some(path), msg)
}

/// Uncommits checkpoint `id` durably, then deletes its directory (the one order
/// retention and [`Repository::remove_checkpoint`] use), each deletion fenced.
fn remove_committed(
    b: &dyn WriteBackend,
    id: CheckpointId,
    fence: &mut Fence<'_>,
) -> Result<(), StoreError> {
    let dir = DirKey::Checkpoint(id);
    fence.pass()?;
    b.delete(&ObjectKey::Commit(id))
        .map_err(|e| e.context("removing COMMIT"))?;
    fence.deleted += 1;
    b.sync_dirs(std::slice::from_ref(&dir))?;
    failpoint("gc_after_uncommit");
    fence.pass()?;
    b.delete_dir(&dir)?;
    fence.deleted += 1;
    Ok(())
}

/// Fencing of deletions (docs/STORAGE.md, "Fencing"), the argument that covers one
/// COMMIT applied to each delete: [`Fence::pass`] right before every delete request
/// guarantees that the request is *issued* while a lock check would pass, so it lands
/// (or is abandoned, within the backend's operation bound) before another writer can
/// take the lock over. It re-checks the lock only when the window of the previous check
/// ([`LockGuard::check_until`]) has closed: free for a flock, one clock read per delete
/// for a lease this process renews, one read of `LOCK` per window for a shared lease.
struct Fence<'a> {
    lock: &'a dyn LockGuard,
    root: &'a Path,
    what: &'a str,
    /// `None`: not checked yet; `Some(None)`: held for good; `Some(Some(t))`: until `t`.
    until: Option<Option<std::time::Instant>>,
    /// Deletions done so far (for the message when the fence fails).
    deleted: u64,
}

impl<'a> Fence<'a> {
    fn new(lock: &'a dyn LockGuard, root: &'a Path, what: &'a str) -> Fence<'a> {
        Fence {
            lock,
            root,
            what,
            until: None,
            deleted: 0,
        }
    }

    /// Ok when a delete may be issued now; the lock error (kind `Locked`, naming `LOCK`
    /// and the repository) otherwise.
    fn pass(&mut self) -> Result<(), StoreError> {
        match self.until {
            Some(None) => return Ok(()),
            Some(Some(t)) if std::time::Instant::now() < t => return Ok(()),
            _ => {}
        }
        match self.lock.check_until() {
            Ok(t) => {
                self.until = Some(t);
                Ok(())
            }
            Err(e) => Err(e.context(&format!(
                "{} of {} stopped after {} deletions: the writer lock is no longer held",
                self.what,
                self.root.display(),
                self.deleted
            ))),
        }
    }
}
