//! [`AsyncConfig`]: where and how an [`AsyncSession`](crate::AsyncSession) checkpoints.

use crate::aligned::Timeouts;
use crate::damage::OnAllDamaged;
use lazarus_store::RepoOptions;
use std::path::PathBuf;

/// Where and how an [`AsyncSession`](crate::AsyncSession) checkpoints.
#[derive(Clone, Debug)]
pub struct AsyncConfig {
    /// The repository (a directory every rank can reach). Rank 0 opens it for writing
    /// and holds its lock for the session's lifetime; the others only write parts.
    pub repo: PathBuf,
    /// Store options (chunk size, codec, job token) used by every rank.
    pub store: RepoOptions,
    /// Bounds of the commit protocol; `round` also bounds marker collection.
    pub timeouts: Timeouts,
    /// After each commit, keep only this many newest checkpoints (`None`: keep all).
    pub keep: Option<usize>,
    /// Write output-commit markers on stdout (docs/PROTOCOL.md, "Output markers"): a
    /// `part` marker at each local snapshot, `commit` on rank 0 after COMMIT, `resumed`
    /// after `open`. Set by `lazarus run --repo` through the marker key in `LAZARUS_OUTPUT_MARKERS`.
    pub output_markers: bool,
    /// What `open` does when every committed checkpoint is damaged (default: refuse).
    pub on_all_damaged: OnAllDamaged,
    /// Write each part inside the session call that completes its snapshot, as before
    /// asynchronous checkpoints (default `false`: the snapshot is captured in the call and
    /// the part written by a background thread, docs/ASYNC.md).
    pub sync_writes: bool,
    /// Most bytes a local snapshot copies into staging (the same meaning and default as
    /// the Job's `.staging_budget`: a quarter of physical memory,
    /// [`crate::capture::default_budget`]). A snapshot larger than this is captured in
    /// pieces: what fits is copied, the rest written as durable chunks inside the call
    /// that takes the snapshot (docs/ASYNC.md, "Unaligned rounds"). The channel state
    /// does not count against it.
    pub staging_budget: u64,
    /// Whether rank 0's retention keeps the files of dead chunks as spares that the next
    /// round's parts write their new chunks into (default `true`, as the Job's
    /// `.recycle_chunk_files`; see
    /// [`Repository::recycle_dead_chunks`](lazarus_store::Repository::recycle_dead_chunks)).
    /// A session that finishes deletes the spares left over.
    pub recycle_chunk_files: bool,
}

impl AsyncConfig {
    /// Defaults: store defaults, `Timeouts::default()`, keep the newest 2, parts written in
    /// the background, the default staging budget, dead chunk files recycled.
    pub fn new(repo: impl Into<PathBuf>) -> Self {
        AsyncConfig {
            repo: repo.into(),
            store: RepoOptions::default(),
            timeouts: Timeouts::default(),
            keep: Some(2),
            output_markers: false,
            on_all_damaged: OnAllDamaged::Refuse,
            sync_writes: false,
            staging_budget: crate::capture::default_budget(),
            recycle_chunk_files: true,
        }
    }

    /// The configuration of a rank started by `lazarus run`: the repository is `repo` or
    /// else `LAZARUS_REPO` (`None` if neither names one); the job token
    /// (`LAZARUS_JOB_TOKEN`) lets rank 0 share the repository lock with the supervisor;
    /// a marker key in `LAZARUS_OUTPUT_MARKERS` turns output markers on; `LAZARUS_ON_ALL_DAMAGED` sets
    /// `on_all_damaged` (an unknown value keeps the default, refuse, with a warning). Other
    /// fields as in `new`.
    pub fn from_env(repo: Option<PathBuf>) -> Option<Self> {
        let repo = repo.or_else(|| std::env::var_os(crate::REPO_ENV).map(PathBuf::from))?;
        let mut c = AsyncConfig::new(repo);
        c.store.job_token = std::env::var(crate::TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty());
        c.output_markers = crate::marker::markers_enabled();
        match OnAllDamaged::from_env() {
            Ok(p) => c.on_all_damaged = p.unwrap_or_default(),
            Err(e) => tracing::warn!("{e}; refusing a fresh start over damaged checkpoints"),
        }
        Some(c)
    }
}
