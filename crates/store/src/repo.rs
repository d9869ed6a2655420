//! The writable repository: lock, checkpoint lifecycle (begin -> parts -> commit/abort),
//! retention and mark-and-sweep GC.

use crate::error::{StoreError, StoreErrorKind};
use crate::fsutil::{self, failpoint, Budget, TMP_PREFIX};
use crate::layout::{Layout, COMMIT_NAME};
use crate::lock::RepoLock;
use crate::reader::{CheckpointSummary, RepoReader};
use crate::writer::{PartReceipt, PartWriter, RepoOptions};
use lazarus_format::{
    CheckpointId, ChunkDigest, CommitPart, CommitRecord, FormatVersion, Manifest, WriterInfo,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
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
    /// Chunk files deleted by the sweep.
    pub chunks_removed: u64,
    /// Bytes freed by the sweep (chunk files and temp leftovers).
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

/// A repository opened for writing. Holds the `LOCK` until dropped.
#[derive(Debug)]
pub struct Repository {
    layout: Layout,
    opts: RepoOptions,
    _lock: RepoLock,
    pending: Arc<AtomicUsize>,
    budget: Budget,
    /// Highest id this handle has handed out. An aborted checkpoint's directory is deleted,
    /// so the directory listing alone would hand its id out again; the coordinator refuses
    /// a round whose id does not increase, which would wedge checkpointing for the rest of
    /// the run. Ids therefore never repeat within one writer's lifetime.
    last_begun: u64,
}

impl Repository {
    /// Opens (creating if absent) the repository at `path` and takes its lock. Refuses an
    /// unknown major version (`VersionUnsupported`), a non-empty directory that is not a
    /// repository (`Missing`), and a lock held by a live process (`Locked`). A stale lock of
    /// a dead process is taken over with a warning.
    pub fn open(path: &Path, opts: RepoOptions) -> Result<Repository, StoreError> {
        Self::open_impl(path, opts, false)
    }

    /// Like [`Repository::open`], but also succeeds when the lock is held by a live process
    /// of the same job (same non-None `job_token`), e.g. the supervisor while rank 0
    /// commits. The caller must make sure the two never write checkpoints concurrently.
    pub fn open_shared(path: &Path, opts: RepoOptions) -> Result<Repository, StoreError> {
        Self::open_impl(path, opts, true)
    }

    fn open_impl(path: &Path, opts: RepoOptions, shared: bool) -> Result<Repository, StoreError> {
        opts.validate()?;
        let layout = Layout::new(path);
        fsutil::create_dir_durable(path)?;
        // Check the version before touching LOCK so a future repository is left untouched.
        let format = layout.format_file();
        if format.exists() {
            crate::reader::check_format(&layout)?;
        }
        let lock = RepoLock::acquire(&layout.lock_file(), opts.job_token.as_deref(), shared)?;
        if !format.exists() {
            let foreign = std::fs::read_dir(path)
                .map_err(|e| StoreError::io(path, "listing repository", e))?
                .filter_map(Result::ok)
                .any(|e| {
                    e.file_name() != "LOCK"
                        && !e.file_name().to_string_lossy().starts_with(TMP_PREFIX)
                });
            if foreign {
                return Err(StoreError::new(
                    StoreErrorKind::Missing,
                    Some(&format),
                    "directory is not empty and has no FORMAT file: not a Lazarus repository",
                ));
            }
            fsutil::write_atomic(
                path,
                "FORMAT",
                &FormatVersion::CURRENT.encode(),
                &Budget::default(),
                None,
                true,
            )?;
        }
        fsutil::create_dir_durable(&layout.chunks_dir())?;
        fsutil::create_dir_durable(&layout.checkpoints_dir())?;
        Ok(Repository {
            layout,
            opts,
            _lock: lock,
            pending: Arc::new(AtomicUsize::new(0)),
            budget: Budget::default(),
            last_begun: 0,
        })
    }

    /// Simulates a disk with only `bytes` left for files written through this repository
    /// and the part writers it hands out (fault injection for tests).
    pub fn set_write_budget(&mut self, bytes: u64) {
        self.budget = Budget::limited(bytes);
    }

    /// The repository root.
    pub fn path(&self) -> &Path {
        self.layout.root()
    }

    /// The options the repository was opened with.
    pub fn options(&self) -> &RepoOptions {
        &self.opts
    }

    /// A reader on the same repository.
    pub fn reader(&self) -> Result<RepoReader, StoreError> {
        RepoReader::open(self.layout.root())
    }

    /// Starts a checkpoint of `world_size` ranks: creates its directory (durably) under the
    /// next id, greater than every id present, committed or not.
    pub fn begin(&mut self, world_size: u32) -> Result<PendingCheckpoint, StoreError> {
        if world_size == 0 {
            return Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                None,
                "world size must be at least 1",
            ));
        }
        let next = self
            .layout
            .checkpoint_ids()?
            .last()
            .map_or(1, |id| id.0 + 1)
            .max(self.last_begun + 1);
        let id = CheckpointId(next);
        let dir = self.layout.checkpoint_dir(id);
        std::fs::create_dir(&dir)
            .map_err(|e| StoreError::io(&dir, "creating checkpoint directory", e))?;
        fsutil::fsync_dir(&self.layout.checkpoints_dir())?;
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.last_begun = next;
        Ok(PendingCheckpoint {
            id,
            world_size,
            writer: PartWriter::new(
                self.layout.clone(),
                id,
                self.opts.clone(),
                self.budget.clone(),
            ),
            _guard: PendingGuard(self.pending.clone()),
        })
    }

    /// Commits `pending`: checks that `parts` has exactly one receipt per rank, that each
    /// manifest on disk matches its receipt and decodes, and that every chunk it names
    /// exists; then writes COMMIT durably (temp, fsync, rename, fsync dir). On error nothing
    /// is committed and the pending directory is left for `abort` or GC.
    pub fn commit(
        &mut self,
        pending: PendingCheckpoint,
        parts: Vec<PartReceipt>,
        meta: CommitMeta,
    ) -> Result<CommittedCheckpoint, StoreError> {
        let id = pending.id;
        let n = pending.world_size;
        let dir = self.layout.checkpoint_dir(id);
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
        for (i, r) in by_rank.into_iter().enumerate() {
            let r =
                r.ok_or_else(|| arg(&dir, format!("checkpoint {id}: no receipt from rank {i}")))?;
            let p = self.layout.manifest(id, r.rank);
            let bytes = fsutil::read(&p)?;
            if ChunkDigest::of(&bytes) != r.manifest_digest {
                return Err(StoreError::new(
                    StoreErrorKind::Corrupt,
                    Some(&p),
                    format!(
                        "checkpoint {id} {}: manifest differs from the receipt",
                        r.rank
                    ),
                ));
            }
            let m = Manifest::decode(&bytes)
                .map_err(|e| StoreError::format(&p, &format!("checkpoint {id} {}", r.rank), e))?;
            for c in m.objects.iter().flat_map(|o| o.chunks.iter()) {
                let cp = self.layout.chunk(&c.digest);
                if !cp.is_file() {
                    return Err(StoreError::new(
                        StoreErrorKind::Missing,
                        Some(&cp),
                        format!("checkpoint {id} {}: chunk {} is missing", r.rank, c.digest),
                    ));
                }
            }
            commit_parts.push(CommitPart {
                rank: r.rank,
                manifest_digest: r.manifest_digest,
                logical_bytes: r.logical_bytes,
                stored_new_bytes: r.stored_new_bytes,
            });
        }
        tracing::debug!(secs = t.elapsed().as_secs_f64(), "commit: parts checked");
        let t = std::time::Instant::now();
        let record = CommitRecord {
            checkpoint: id,
            world_size: n,
            step: meta.step,
            time_unix_ms: fsutil::now_unix_ms(),
            app: meta.app,
            parts: commit_parts,
            writer: WriterInfo::this_host(),
        };
        failpoint("before_commit");
        fsutil::write_atomic(
            &dir,
            COMMIT_NAME,
            &record.encode(),
            &self.budget,
            Some("before_commit_rename"),
            false,
        )?;
        failpoint("after_commit_rename");
        fsutil::fsync_dir(&dir)?;
        failpoint("after_commit");
        tracing::debug!(secs = t.elapsed().as_secs_f64(), "commit: COMMIT durable");
        drop(pending);
        Ok(CommittedCheckpoint {
            summary: CheckpointSummary::from(record),
        })
    }

    /// Abandons `pending`: removes its directory (its new chunks are swept by the next GC).
    pub fn abort(&mut self, pending: PendingCheckpoint) -> Result<(), StoreError> {
        let dir = self.layout.checkpoint_dir(pending.id);
        remove_dir(&dir)?;
        fsutil::fsync_dir(&self.layout.checkpoints_dir())
    }

    /// Keeps the newest `keep` committed checkpoints, removes older ones and uncommitted
    /// leftovers, then deletes every chunk no kept checkpoint references. Refused while a
    /// checkpoint begun by this repository is pending. Checkpoints with a damaged COMMIT
    /// are neither counted nor removed; chunks named by their readable manifests are kept.
    /// Fails without deleting anything if a kept checkpoint's manifest is unreadable.
    pub fn retain(&mut self, keep: usize) -> Result<GcReport, StoreError> {
        self.retain_with_progress(keep, &|_, _, _| {})
    }

    /// [`Repository::retain`], calling `progress(stage, done, total)` as it goes (for
    /// progress bars; the callback must be cheap and cannot stop the collection).
    pub fn retain_with_progress(
        &mut self,
        keep: usize,
        progress: &dyn Fn(GcStage, u64, u64),
    ) -> Result<GcReport, StoreError> {
        if keep == 0 {
            return Err(arg(
                self.layout.root(),
                "retain: keep must be at least 1".into(),
            ));
        }
        if self.pending.load(Ordering::SeqCst) != 0 {
            return Err(arg(
                self.layout.root(),
                "retain: a checkpoint is pending; commit or abort it first".into(),
            ));
        }
        let reader = self.reader()?;
        let mut report = GcReport::default();
        let mut committed = Vec::new();
        let mut damaged = Vec::new();
        let ids = self.layout.checkpoint_ids()?;
        let scanned: BTreeMap<_, _> = reader.scan()?.into_iter().collect();
        let mut uncommitted = Vec::new();
        for id in ids {
            match scanned.get(&id) {
                Some(Ok(_)) => committed.push(id),
                Some(Err(_)) => damaged.push(id),
                None => uncommitted.push(id),
            }
        }
        let split = committed.len().saturating_sub(keep);
        let (old, kept) = committed.split_at(split);
        // Mark.
        let mut live: HashSet<ChunkDigest> = HashSet::new();
        let n_mark = (kept.len() + damaged.len()) as u64;
        for (i, id) in kept.iter().enumerate() {
            progress(GcStage::Mark, i as u64, n_mark);
            let c = reader.commit_record(*id)?;
            for p in &c.parts {
                let m = reader.manifest(*id, p.rank)?;
                live.extend(
                    m.objects
                        .iter()
                        .flat_map(|o| o.chunks.iter().map(|c| c.digest)),
                );
            }
        }
        for (i, id) in damaged.iter().enumerate() {
            progress(GcStage::Mark, (kept.len() + i) as u64, n_mark);
            let dir = self.layout.checkpoint_dir(*id);
            for ent in std::fs::read_dir(&dir)
                .map_err(|e| StoreError::io(&dir, "listing", e))?
                .flatten()
            {
                if let Ok(bytes) = std::fs::read(ent.path()) {
                    if let Ok(m) = Manifest::decode(&bytes) {
                        live.extend(
                            m.objects
                                .iter()
                                .flat_map(|o| o.chunks.iter().map(|c| c.digest)),
                        );
                    }
                }
            }
        }
        // Remove old committed checkpoints: COMMIT first, so a crash midway leaves an
        // uncommitted directory (never a committed one with missing manifests).
        progress(GcStage::Mark, n_mark, n_mark);
        let n_remove = (old.len() + uncommitted.len()) as u64;
        for (i, id) in old.iter().enumerate() {
            progress(GcStage::Remove, i as u64, n_remove);
            let commit = self.layout.commit(*id);
            std::fs::remove_file(&commit)
                .map_err(|e| StoreError::io(&commit, "removing COMMIT", e))?;
            fsutil::fsync_dir(&self.layout.checkpoint_dir(*id))?;
            failpoint("gc_after_uncommit");
            remove_dir(&self.layout.checkpoint_dir(*id))?;
        }
        for (i, id) in uncommitted.iter().enumerate() {
            progress(GcStage::Remove, (old.len() + i) as u64, n_remove);
            remove_dir(&self.layout.checkpoint_dir(*id))?;
        }
        progress(GcStage::Remove, n_remove, n_remove);
        fsutil::fsync_dir(&self.layout.checkpoints_dir())?;
        // Sweep.
        let chunks = self.layout.chunks_dir();
        let subs: Vec<PathBuf> = std::fs::read_dir(&chunks)
            .map_err(|e| StoreError::io(&chunks, "listing chunks", e))?
            .flatten()
            .map(|e| e.path())
            .collect();
        let n_sweep = subs.len() as u64;
        for (i, subp) in subs.into_iter().enumerate() {
            progress(GcStage::Sweep, i as u64, n_sweep);
            if !subp.is_dir() {
                continue;
            }
            let mut removed_here = false;
            for ent in std::fs::read_dir(&subp)
                .map_err(|e| StoreError::io(&subp, "listing chunks", e))?
                .flatten()
            {
                let name = ent.file_name();
                let name = name.to_string_lossy();
                let is_tmp = name.starts_with(TMP_PREFIX);
                let digest = ChunkDigest::from_hex(&name);
                let dead = is_tmp || digest.is_some_and(|d| !live.contains(&d));
                if !dead {
                    if digest.is_some() {
                        report.chunks_kept += 1;
                    }
                    continue;
                }
                let len = ent.metadata().map(|m| m.len()).unwrap_or(0);
                let p = ent.path();
                std::fs::remove_file(&p).map_err(|e| StoreError::io(&p, "removing chunk", e))?;
                failpoint("gc_during_sweep");
                removed_here = true;
                report.bytes_freed += len;
                if !is_tmp {
                    report.chunks_removed += 1;
                }
            }
            if removed_here {
                fsutil::fsync_dir(&subp)?;
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

fn arg(path: &Path, msg: String) -> StoreError {
    StoreError::new(StoreErrorKind::InvalidArgument, Some(path), msg)
}

fn remove_dir(dir: &PathBuf) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(dir, "removing directory", e)),
    }
}
