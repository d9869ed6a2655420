//! The single-process Job API: open a repository, restore or initialise the state, and
//! checkpoint at the top of the main loop when the policy says so.
//!
//! Step semantics (the contract the examples and tests rely on):
//! - `job.step()` is the number of loop iterations *completed* when the state is in its
//!   current form. It starts at 0, or at the step of the restored checkpoint.
//! - `job.checkpoint(&state)` is called once at the top of every iteration. It may save
//!   `state` as "the state after `step()` iterations" (recorded as `step` in COMMIT), and
//!   then counts the iteration: it returns the index of the iteration about to run and
//!   increments `step()`. So `while job.step() < n { job.checkpoint(&s)?; work(&mut s); }`
//!   runs exactly `n` iterations in total, across any number of restarts.
//! - Right after a restore, the first `checkpoint()` does not save again the checkpoint it
//!   was restored from.
//!
//! Several ranks: give every rank's builder its communicator (`.comm(lazarus::init()?)`).
//! Without one, the job is a world of one. Every rank must call `checkpoint(&state)` at the
//! same step with its channels quiet (aligned checkpoints); each writes its own part and a
//! two-phase commit (crate `lazarus-coord`, docs/PROTOCOL.md) makes rank 0 write COMMIT
//! only after every rank reported its part durable. A round that fails anywhere is aborted
//! on every rank and never used; rank 0 deletes its directory.
//!
//! Agreement on *when*: a step-based policy (`every_steps` alone) is evaluated by every rank
//! locally at no cost. Any other policy (time-based, adaptive) is evaluated by rank 0 and
//! its decision broadcast at every step (one small collective per step).
//!
//! Restore, agreed by every rank: rank 0 lists the committed checkpoints that pass a cheap
//! check (COMMIT and manifests decode, chunk files present with their sizes; no data read)
//! and broadcasts the newest. Every rank loads its objects, which verifies every chunk
//! digest, so the data is read once. The ranks then exchange their outcomes: if any rank
//! found damage, all fall back together to the next older candidate (rank 0 logs what was
//! damaged and skipped); if any rank hit another error, all fail; only when every rank
//! loaded do they restore, and a restore (schema) failure on one rank fails all. So no
//! job ever runs on a mix of checkpoints.
//!
//! Elastic restore: a checkpoint written by N ranks restores on M != N ranks when all of
//! the state is redistributable (crate `lazarus-dist`, [`lazarus_dist::Reshard`]): bulk
//! objects with a global range (a `DVec`) are cut into M even blocks, each new rank
//! reading only the byte ranges it keeps; every other field must be declared
//! `#[checkpoint(replicated)]` (parameters, a config struct, a counter every rank advances
//! alike: rank 0's copy is used, every old copy is compared), whatever the number of old
//! ranks. Any other field (per-rank state), a declared one that differs between old ranks,
//! or one only some ranks have, makes the restore fail on every rank with
//! [`JobError::NotRedistributable`] naming it; that is not retried with older checkpoints.
//! (Checkpoints before format 1.2 record no declaration: docs/DIST.md says how they are
//! classified.) Rank 0 says so on stderr: `lazarus:
//! restoring checkpoint 12 written by 4 ranks on 3 ranks by redistribution`. The job's
//! step count is in COMMIT, not in the state, so it carries over as is.

use crate::restore::{self, Attempt, FreshStart, LoadError};
use lazarus_coord::OnAllDamaged;
use lazarus_coord::{AlignedRuntime, RankStore, RoundError, Timeouts};
use lazarus_dist::DistError;
use lazarus_files::{Files, FilesConfig, FilesError};
use lazarus_format::{CheckpointId, Rank};
use lazarus_net::{Comm, NetError};
use lazarus_policy::{EveryInterval, EverySteps, Opportunity, Policy};
use lazarus_state::{Checkpoint, StateError};
use lazarus_store::{
    CheckpointSummary, CommitMeta, Damage, RepoOptions, RepoReader, Repository, StoreError,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Environment variable naming the repository when the builder was given none.
pub use lazarus_coord::REPO_ENV;
use lazarus_coord::TOKEN_ENV;

/// Errors of the Job API. Each says which step failed and wraps the store or state error
/// that names the file or field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Neither `JobBuilder::repo` nor `LAZARUS_REPO` named a repository.
    #[error("no checkpoint repository: call JobBuilder::repo(..) or set {REPO_ENV}")]
    NoRepo,
    /// A builder value is out of range.
    #[error("invalid job configuration: {0}")]
    Config(String),
    /// The repository could not be opened, read or written.
    #[error("checkpoint repository {path}: {source}")]
    Store {
        /// repository root
        path: PathBuf,
        /// the store's error (kind, file, message)
        source: StoreError,
    },
    /// The state could not be saved (e.g. a serde value failed to encode).
    #[error("saving state at step {step}: {source}")]
    Save {
        /// the step being saved
        step: u64,
        /// the error naming the field
        source: StateError,
    },
    /// The newest intact checkpoint does not fit the program's state type (schema
    /// mismatch) or a restore hook failed. Not retried with older checkpoints: they were
    /// written by the same program and would fail the same way.
    #[error("restoring checkpoint {checkpoint} (step {step}): {source}")]
    Restore {
        /// the checkpoint that was tried
        checkpoint: CheckpointId,
        /// its step
        step: u64,
        /// the error naming the field
        source: StateError,
    },
    /// The checkpoint round at `step` did not commit (a rank failed to write, died or
    /// missed the deadline); the checkpoint is never used and its leftovers are collected.
    #[error("checkpoint at step {step}: {source}")]
    Round {
        /// the step being saved
        step: u64,
        /// the round's error, naming the rank
        source: RoundError,
    },
    /// Talking to the other ranks failed (usually: one died).
    #[error("job communication: {0}")]
    Net(#[from] NetError),
    /// Rank 0 failed while preparing the restore; its own error says why.
    #[error("rank 0 could not prepare the restore: {0}")]
    Rank0(String),
    /// The checkpoint was written by another number of ranks and part of the state is
    /// per-rank (not a distributed array, and not identical on every rank), so it cannot
    /// be redistributed. `source` names the field.
    #[error("checkpoint {checkpoint} was written by {saved} ranks and cannot be restored on {current} by redistribution: {source}; restart with {saved} ranks")]
    NotRedistributable {
        /// the checkpoint
        checkpoint: CheckpointId,
        /// its world size
        saved: u32,
        /// this job's world size
        current: u32,
        /// why, naming the field and the ranks
        source: DistError,
    },
    /// The managed files (`JobBuilder::files`) could not be recorded or restored: changed
    /// outside the job, a full disk while journaling, another world size. Names the file.
    #[error("managed files: {0}")]
    Files(#[from] FilesError),
    /// The repository holds committed checkpoints and every one is damaged; under
    /// [`OnAllDamaged::Refuse`] (the default) the job does not start from scratch, which
    /// would silently give up all their progress. `damaged` names each one.
    #[error("{}", lazarus_coord::all_damaged_message(path, damaged))]
    AllDamaged {
        /// repository root
        path: PathBuf,
        /// the damaged checkpoints, newest first
        damaged: Vec<Damage>,
    },
    /// Another rank could not restore the checkpoint every rank agreed on, so no rank
    /// restores it (the job never runs on a mix of checkpoints).
    #[error("rank {rank} could not restore checkpoint {checkpoint}: {message}")]
    Peer {
        /// the rank that failed
        rank: u32,
        /// the checkpoint
        checkpoint: CheckpointId,
        /// its error
        message: String,
    },
}

impl JobError {
    /// True when running the same program again later can succeed without changing it or
    /// repairing the repository (a held lock, a full disk, a transient I/O error), or, for
    /// a failed checkpoint round, when the job may go on and try the next one.
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::Store { source, .. } => source.is_retryable(),
            JobError::Round { source, .. } => source.is_retryable(),
            JobError::Files(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// True for a restore error of this rank's own that no restart can fix: the
    /// checkpoint cannot be restored on this number of ranks, does not fit the state type,
    /// every checkpoint is damaged (under [`OnAllDamaged::Refuse`]), or the repository
    /// cannot be used at all. Errors relayed from other ranks are not (they report their
    /// own). A supervisor is told (marker `refused`) and stops instead of restarting.
    fn is_restore_refusal(&self) -> bool {
        match self {
            JobError::NotRedistributable { .. }
            | JobError::Restore { .. }
            | JobError::AllDamaged { .. } => true,
            JobError::Store { source, .. } => !source.is_retryable(),
            _ => false,
        }
    }
}

/// Rank 0's restore decision, broadcast to every rank; `skipped` carries the damage rank
/// 0 found so every rank reports the same.
#[derive(Serialize, Deserialize)]
enum Plan {
    Fresh {
        skipped: Vec<Damage>,
    },
    /// Every committed checkpoint is damaged and rank 0's policy refuses a fresh start.
    AllDamaged {
        skipped: Vec<Damage>,
    },
    From {
        id: u64,
        step: u64,
        world: u32,
        skipped: Vec<Damage>,
    },
    Failed(String),
}

/// What `restore_or_init` found: the checkpoint used and the newer ones skipped as damaged.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    /// The checkpoint the state was restored from.
    pub checkpoint: CheckpointId,
    /// Its step; `Job::step()` starts here.
    pub step: u64,
    /// Newer committed checkpoints that failed verification, newest first.
    pub skipped: Vec<Damage>,
    /// The number of ranks that wrote the checkpoint; differs from this job's when the
    /// state was redistributed.
    pub written_by: u32,
    /// The number of ranks it was restored on.
    pub restored_on: u32,
}

impl RestoreReport {
    /// True when the checkpoint was written by another number of ranks and redistributed.
    pub fn redistributed(&self) -> bool {
        self.written_by != self.restored_on
    }
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "restored checkpoint {} at step {}",
            self.checkpoint.0, self.step
        )?;
        if self.redistributed() {
            write!(
                f,
                " (written by {} ranks, redistributed on {})",
                self.written_by, self.restored_on
            )?;
        }
        for d in &self.skipped {
            write!(
                f,
                "; skipped damaged checkpoint {} ({}: {})",
                d.checkpoint.0, d.kind, d.detail
            )?;
        }
        Ok(())
    }
}

/// Configures and opens a [`Job`]. Nothing is touched on disk before [`JobBuilder::open`].
#[derive(Default)]
pub struct JobBuilder {
    repo: Option<PathBuf>,
    every_steps: Option<u64>,
    every: Option<Duration>,
    policy: Option<Box<dyn Policy>>,
    keep: Option<usize>,
    app: BTreeMap<String, String>,
    options: RepoOptions,
    comm: Option<Comm>,
    timeouts: Option<Timeouts>,
    // Managed files (issue #17): the directory and whether foreign changes are accepted.
    files: Option<PathBuf>,
    accept_file_changes: bool,
    on_all_damaged: Option<OnAllDamaged>,
}

impl JobBuilder {
    /// Manages user files under `dir` (shared by all ranks; rank r works in
    /// `dir/rank-<r>/`): files opened through [`Job::files`] are recorded in every
    /// checkpoint and put back on restore, byte for byte, and files marked as output are
    /// published to `dir/output/rank-<r>/` only once committed (docs/FILES.md).
    pub fn files(mut self, dir: impl Into<PathBuf>) -> Self {
        self.files = Some(dir.into());
        self
    }

    /// On restore, put managed files that were changed outside the job back to the
    /// checkpoint's content instead of refusing (default: refuse, naming the file).
    pub fn accept_file_changes(mut self, yes: bool) -> Self {
        self.accept_file_changes = yes;
        self
    }

    /// The repository: a directory (created if absent), `s3://bucket/prefix` (feature `s3`,
    /// docs/STORAGE.md) or `memory://name`. Without it, `LAZARUS_REPO` is used.
    pub fn repo(mut self, path: impl Into<PathBuf>) -> Self {
        self.repo = Some(path.into());
        self
    }

    /// Checkpoint when the step is a positive multiple of `n`.
    pub fn every_steps(mut self, n: u64) -> Self {
        self.every_steps = Some(n);
        self
    }

    /// Checkpoint when `interval` has passed since the last checkpoint (or the start).
    /// Combined with `every_steps`, either one firing takes a checkpoint.
    pub fn every(mut self, interval: Duration) -> Self {
        self.every = Some(interval);
        self
    }

    /// Any other policy; replaces `every_steps`/`every`.
    pub fn policy(mut self, policy: impl Policy + 'static) -> Self {
        self.policy = Some(Box::new(policy));
        self
    }

    /// Never checkpoint on the policy's initiative ([`lazarus_policy::Never`]), e.g. in
    /// benchmarks: `checkpoint` only counts steps, `checkpoint_now` still saves, and a
    /// restart still restores the newest checkpoint. Replaces `every_steps`/`every`.
    pub fn never_checkpoint(self) -> Self {
        self.policy(lazarus_policy::Never)
    }

    /// Keep the newest `k` committed checkpoints (default 3; at least 1).
    pub fn keep(mut self, k: usize) -> Self {
        self.keep = Some(k);
        self
    }

    /// Free-form metadata recorded in every COMMIT (e.g. the program's version).
    pub fn app(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.app.insert(key.into(), value.into());
        self
    }

    /// Store options (chunk size, codec, job token). Without a job token,
    /// `LAZARUS_JOB_TOKEN` is used when set, so rank 0 can share the repository lock with
    /// the supervisor of the same job.
    pub fn repo_options(mut self, options: RepoOptions) -> Self {
        self.options = options;
        self
    }

    /// This rank's communicator: the job spans `comm.size()` ranks (all must open the same
    /// repository path). Without it the job is a world of one.
    pub fn comm(mut self, comm: Comm) -> Self {
        self.comm = Some(comm);
        self
    }

    /// Time bounds of the checkpoint rounds (default: `Timeouts::default()`).
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = Some(timeouts);
        self
    }

    /// What `restore_or_init` does when every committed checkpoint is damaged (see
    /// [`OnAllDamaged`]). Without it, `LAZARUS_ON_ALL_DAMAGED` (`refuse`, `start-fresh`)
    /// decides, else [`OnAllDamaged::Refuse`]. Rank 0's choice applies to every rank.
    pub fn on_all_damaged(mut self, policy: OnAllDamaged) -> Self {
        self.on_all_damaged = Some(policy);
        self
    }

    /// Validates the configuration; rank 0 opens (creating if needed) and locks the
    /// repository (shared with the supervisor when both hold the job token); other ranks
    /// only remember its path. With no policy given, checkpoints every 60 s.
    pub fn open(self) -> Result<Job, JobError> {
        let path = match self.repo {
            Some(p) => p,
            None => std::env::var_os(REPO_ENV)
                .map(PathBuf::from)
                .ok_or(JobError::NoRepo)?,
        };
        let keep = self.keep.unwrap_or(3);
        if keep == 0 {
            return Err(JobError::Config("keep must be at least 1".into()));
        }
        if self.every_steps == Some(0) {
            return Err(JobError::Config("every_steps must be at least 1".into()));
        }
        if self.every == Some(Duration::ZERO) {
            return Err(JobError::Config(
                "checkpoint interval must be positive".into(),
            ));
        }
        // Only a pure step policy gives every rank the same answer without talking.
        let local_policy = match &self.policy {
            Some(p) => p.is_step_only(),
            None => self.every.is_none() && self.every_steps.is_some(),
        };
        let policy: Box<dyn Policy> = match (self.policy, self.every_steps, self.every) {
            (Some(p), _, _) => p,
            (None, Some(n), None) => Box::new(EverySteps::new(n)),
            (None, None, Some(t)) => Box::new(EveryInterval::new(t)),
            (None, Some(n), Some(t)) => Box::new(Either(EverySteps::new(n), EveryInterval::new(t))),
            (None, None, None) => Box::new(EveryInterval::new(Duration::from_secs(60))),
        };
        let on_all_damaged = match self.on_all_damaged {
            Some(p) => p,
            None => OnAllDamaged::from_env()
                .map_err(JobError::Config)?
                .unwrap_or_default(),
        };
        let mut options = self.options;
        if options.job_token.is_none() {
            options.job_token = std::env::var(TOKEN_ENV).ok();
        }
        let comm = self.comm.unwrap_or_else(Comm::solo);
        let files = match &self.files {
            Some(root) => Some(Files::new(FilesConfig {
                root: root.clone(),
                rank: comm.rank().0,
                chunk: u64::from(options.chunk_size),
                accept_changes: self.accept_file_changes,
            })?),
            None => None,
        };
        let store = if comm.rank() == Rank(0) {
            // Without a job token `open_shared` shares with nobody, exactly like `open`.
            let opened = Repository::open_shared(&path, options);
            RankStore::Coordinator(opened.map_err(|source| JobError::Store {
                path: path.clone(),
                source,
            })?)
        } else {
            RankStore::Participant {
                path: path.clone(),
                options,
            }
        };
        let runtime = AlignedRuntime::new(comm, store, self.timeouts.unwrap_or_default())
            .map_err(|source| JobError::Round { step: 0, source })?;
        Ok(Job {
            runtime,
            path,
            policy,
            local_policy,
            keep,
            app: self.app,
            step: 0,
            saved_at: None,
            report: None,
            files,
            on_all_damaged,
            fresh: None,
        })
    }
}

/// Fires when either policy fires; both are told about every checkpoint taken.
struct Either<A, B>(A, B);

impl<A: Policy, B: Policy> Policy for Either<A, B> {
    fn should_checkpoint(&mut self, at: Opportunity) -> bool {
        // Ask both so that stateful policies see every opportunity.
        let a = self.0.should_checkpoint(at);
        let b = self.1.should_checkpoint(at);
        a || b
    }
    fn checkpoint_taken(&mut self, at: Opportunity, cost: Duration) {
        self.0.checkpoint_taken(at, cost);
        self.1.checkpoint_taken(at, cost);
    }
}

/// The first rank (in rank order) whose attempt is fatal, as a [`JobError::Peer`] (a rank
/// that failed itself returns its own error instead).
fn agreed_failure(all: &[Attempt], id: CheckpointId) -> Option<JobError> {
    all.iter().enumerate().find_map(|(r, a)| match a {
        Attempt::Fatal(message) => Some(JobError::Peer {
            rank: r as u32,
            checkpoint: id,
            message: message.clone(),
        }),
        _ => None,
    })
}

fn warn_damage(d: &Damage) {
    tracing::warn!(
        checkpoint = d.checkpoint.0,
        path = %d.path.display(),
        "skipping damaged checkpoint {} ({}): {}",
        d.checkpoint.0,
        d.kind,
        d.detail
    );
}

/// A running job: owns the (locked) repository, the checkpoint policy and the step count.
pub struct Job {
    runtime: AlignedRuntime,
    path: PathBuf,
    policy: Box<dyn Policy>,
    local_policy: bool,
    keep: usize,
    app: BTreeMap<String, String>,
    step: u64,
    saved_at: Option<u64>,
    report: Option<RestoreReport>,
    files: Option<Files>,
    on_all_damaged: OnAllDamaged,
    fresh: Option<FreshStart>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("repo", &self.path)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl Job {
    /// Starts configuring a job.
    pub fn builder() -> JobBuilder {
        JobBuilder::default()
    }

    /// Iterations completed by the current state (see the module docs).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The repository root.
    pub fn repo_path(&self) -> &Path {
        &self.path
    }

    /// This rank's communicator (a world of one without `JobBuilder::comm`).
    pub fn comm(&self) -> &Comm {
        self.runtime.comm()
    }

    /// This rank's managed files (`JobBuilder::files`), usable after `restore_or_init`.
    pub fn files(&self) -> Result<&Files, JobError> {
        self.files
            .as_ref()
            .ok_or_else(|| JobError::Config("no managed files: call JobBuilder::files(dir)".into()))
    }

    /// What the last `restore_or_init` restored and skipped; `None` after a fresh start.
    pub fn restore_report(&self) -> Option<&RestoreReport> {
        self.report.as_ref()
    }

    /// `Some` when the last `restore_or_init` restored nothing and returned `init()`; its
    /// [`FreshStart::damaged`] lists the damaged checkpoints given up under
    /// [`OnAllDamaged::StartFresh`] (empty when the repository had none committed).
    pub fn fresh_start(&self) -> Option<&FreshStart> {
        self.fresh.as_ref()
    }

    /// Returns the state of the newest committed checkpoint that verifies, or `init()` when
    /// there is none. `init()` is always called: restore overwrites the saved fields in place,
    /// so skipped fields keep their initial value until the `after_restore` hooks rebuild
    /// them. Damaged newer checkpoints are skipped and logged (`tracing::warn!`) and listed
    /// in [`Job::restore_report`]. Every rank restores the same checkpoint or every rank
    /// fails (module docs). A checkpoint written by another number of ranks is
    /// redistributed when the state allows it, else [`JobError::NotRedistributable`]. When
    /// every committed checkpoint is damaged: [`JobError::AllDamaged`], or a fresh start
    /// said loudly on stderr, as [`JobBuilder::on_all_damaged`] says.
    ///
    /// Under a supervisor each rank first reports the repository it opened (marker `repo`,
    /// normalized by `lazarus_store::repo_location`), and a restore error of its own
    /// that no restart can fix is reported too (marker `refused`), so that `lazarus run`
    /// stops instead of restarting (docs/RECOVERY.md).
    pub fn restore_or_init<T: Checkpoint>(
        &mut self,
        init: impl FnOnce() -> T,
    ) -> Result<T, JobError> {
        restore::write_marker(&lazarus_supervisor::Marker::Repo {
            location: lazarus_store::repo_location(&self.path),
        });
        let r = self.restore_agreed(init);
        if let Err(e) = &r {
            if e.is_restore_refusal() {
                restore::write_marker(&lazarus_supervisor::Marker::Refused {
                    message: e.to_string(),
                });
            }
        }
        r
    }

    fn restore_agreed<T: Checkpoint>(&mut self, init: impl FnOnce() -> T) -> Result<T, JobError> {
        let mut state = init();
        let comm = self.runtime.comm().clone();
        let me = comm.rank();
        // Rank 0 only: the candidates, newest first, and the damage found so far.
        let mut candidates = std::collections::VecDeque::new();
        let mut skipped = Vec::new();
        if me == Rank(0) {
            match self.candidates() {
                Ok((c, d)) => {
                    candidates = c.into();
                    skipped = d;
                }
                Err(e) => {
                    // Tell the others before failing, so they do not wait for us.
                    let mut p = Plan::Failed(e.to_string());
                    comm.broadcast(Rank(0), &mut p)?;
                    return Err(e);
                }
            }
        }
        loop {
            let mut plan = match candidates.pop_front() {
                Some(c) => Plan::From {
                    id: c.id.0,
                    step: c.step,
                    world: c.world_size,
                    skipped: skipped.clone(),
                },
                None if !skipped.is_empty() && self.on_all_damaged == OnAllDamaged::Refuse => {
                    Plan::AllDamaged {
                        skipped: skipped.clone(),
                    }
                }
                None => Plan::Fresh {
                    skipped: skipped.clone(),
                },
            };
            comm.broadcast(Rank(0), &mut plan)?;
            let (id, step, world, skipped_now) = match plan {
                Plan::AllDamaged { skipped } => {
                    if me == Rank(0) {
                        lazarus_coord::announce_all_damaged(
                            &self.path,
                            &skipped,
                            OnAllDamaged::Refuse,
                        );
                    }
                    return Err(JobError::AllDamaged {
                        path: self.path.clone(),
                        damaged: skipped,
                    });
                }
                Plan::Fresh { skipped } => {
                    if me == Rank(0) && !skipped.is_empty() {
                        lazarus_coord::announce_all_damaged(
                            &self.path,
                            &skipped,
                            OnAllDamaged::StartFresh,
                        );
                    }
                    self.step = 0;
                    self.saved_at = None;
                    self.report = None;
                    self.files_fresh()?;
                    self.fresh = Some(FreshStart { damaged: skipped });
                    resumed_marker(None, 0);
                    return Ok(state);
                }
                Plan::Failed(e) => return Err(JobError::Rank0(e)),
                Plan::From {
                    id,
                    step,
                    world,
                    skipped,
                } => (CheckpointId(id), step, world, skipped),
            };
            let size = comm.size();
            let loaded = self
                .files_prepare(id, world, size)
                .and_then(|plan| restore::load(&self.path, id, world, me, size).map(|o| (o, plan)));
            let mine = match &loaded {
                Ok(_) => Attempt::Ok,
                Err(e) => e.attempt(),
            };
            let all = comm.allgather(&mine)?;
            if let Some(err) = agreed_failure(&all, id) {
                return Err(match loaded {
                    Err(LoadError::Fatal(own)) => own,
                    _ => err,
                });
            }
            let damaged: Vec<Damage> = all
                .iter()
                .filter_map(|a| match a {
                    Attempt::Damaged(d) => Some(d.clone()),
                    _ => None,
                })
                .collect();
            if let Some(d) = damaged.into_iter().next() {
                // One entry per checkpoint: the first rank's finding.
                if me == Rank(0) {
                    warn_damage(&d);
                    skipped.push(d);
                }
                continue;
            }
            let Ok((objects, files_plan)) = loaded else {
                // Unreachable: every rank reported Ok, this one included.
                return Err(JobError::Rank0("restore outcome lost".into()));
            };
            if world != size && me == Rank(0) {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "lazarus: restoring checkpoint {} written by {world} ranks on {size} ranks \
                     by redistribution",
                    id.0
                );
            }
            let restored = lazarus_state::restore(&mut state, objects);
            // The managed files go back only with the state (issue #17).
            let files_applied = match (&restored, files_plan, &self.files) {
                (Ok(()), Some(plan), Some(f)) => f.apply_restore(plan),
                _ => Ok(()),
            };
            let mine = match (&restored, &files_applied) {
                (Ok(()), Ok(())) => Attempt::Ok,
                (Err(e), _) => {
                    Attempt::Fatal(format!("restoring checkpoint {} (step {step}): {e}", id.0))
                }
                (_, Err(e)) => Attempt::Fatal(format!(
                    "restoring the managed files of checkpoint {} (step {step}): {e}",
                    id.0
                )),
            };
            let all = comm.allgather(&mine)?;
            files_applied?;
            if let Err(source) = restored {
                return Err(JobError::Restore {
                    checkpoint: id,
                    step,
                    source,
                });
            }
            if let Some(err) = agreed_failure(&all, id) {
                return Err(err);
            }
            self.step = step;
            self.saved_at = Some(step);
            let report = RestoreReport {
                checkpoint: id,
                step,
                skipped: skipped_now,
                written_by: world,
                restored_on: size,
            };
            tracing::info!("{report}");
            self.report = Some(report);
            self.fresh = None;
            resumed_marker(Some(id), step);
            return Ok(state);
        }
    }

    /// Rank 0: committed checkpoints that pass the cheap check, newest first, and the
    /// damage that excluded the others (logged).
    fn candidates(&self) -> Result<(Vec<CheckpointSummary>, Vec<Damage>), JobError> {
        let reader = RepoReader::open(&self.path).map_err(|e| self.store_err(e))?;
        let (ok, damaged) = reader
            .newest_committed_candidates()
            .map_err(|e| self.store_err(e))?;
        for d in &damaged {
            warn_damage(d);
        }
        Ok((ok, damaged))
    }

    /// The policy's answer, identical on every rank: local for step policies, rank 0's
    /// broadcast otherwise.
    fn decide(&mut self, at: Opportunity) -> Result<bool, JobError> {
        let comm = self.runtime.comm();
        if self.local_policy || comm.size() == 1 {
            return Ok(self.policy.should_checkpoint(at));
        }
        let mut yes = comm.rank() == Rank(0) && self.policy.should_checkpoint(at);
        comm.clone().broadcast(Rank(0), &mut yes)?;
        Ok(yes)
    }

    /// Call once at the top of every loop iteration: saves `state` if the policy says so
    /// (and it was not just restored from this step), then counts the iteration. Returns
    /// the index of the iteration about to run.
    ///
    /// The iteration is counted even when saving fails, so a caller that chooses to go on
    /// after a retryable error (a full disk, see [`JobError::is_retryable`]) keeps its step
    /// count right; the failed checkpoint is simply not there.
    pub fn checkpoint<T: Checkpoint + ?Sized>(&mut self, state: &T) -> Result<u64, JobError> {
        let at = Opportunity {
            step: self.step,
            now: Instant::now(),
        };
        let current = self.step;
        let due = if self.saved_at != Some(current) {
            self.decide(at)
        } else {
            Ok(false)
        };
        let due = match due {
            Ok(d) => d,
            Err(e) => {
                self.step += 1;
                return Err(e);
            }
        };
        let saved = if due {
            let t0 = Instant::now();
            let r = self.save(state);
            if r.is_ok() {
                self.policy.checkpoint_taken(at, t0.elapsed());
            }
            r.map(|_| ())
        } else {
            Ok(())
        };
        self.step += 1;
        saved.map(|()| current)
    }

    /// Saves `state` now as the state after `step()` iterations, whatever the policy says
    /// (e.g. before a planned shutdown); does not count a step.
    pub fn checkpoint_now<T: Checkpoint + ?Sized>(
        &mut self,
        state: &T,
    ) -> Result<CheckpointId, JobError> {
        let at = Opportunity {
            step: self.step,
            now: Instant::now(),
        };
        let id = self.save(state)?;
        self.policy.checkpoint_taken(at, at.now.elapsed());
        Ok(id)
    }

    fn save<T: Checkpoint + ?Sized>(&mut self, state: &T) -> Result<CheckpointId, JobError> {
        let step = self.step;
        let meta = CommitMeta {
            step,
            app: self.app.clone(),
        };
        // The managed files join the part (issue #17): same round, same cut on every rank.
        let snap = match self.files.as_ref().map(Files::snapshot).transpose() {
            Ok(s) => s,
            Err(e) => {
                let _ = self.runtime.round_failed(e.to_string(), &meta);
                return Err(JobError::Files(e));
            }
        };
        let round = match lazarus_state::save(state) {
            Ok(mut objects) => {
                if let Some(s) = &snap {
                    objects.extend(s.objects());
                }
                self.runtime.round(&objects, &meta)
            }
            Err(source) => {
                // Still take part, voting Failed, so the other ranks are not left waiting.
                let _ = self.runtime.round_failed(source.to_string(), &meta);
                return Err(JobError::Save { step, source });
            }
        };
        let done = match (round, snap) {
            (Ok(done), Some(s)) => {
                // The checkpoint is committed whatever happens here: a failure keeps the
                // previous base and journal, which still describe every change.
                if let Err(e) = s.committed(done.checkpoint) {
                    tracing::warn!("managed files after checkpoint {}: {e}", done.checkpoint.0);
                }
                Ok(done)
            }
            (r, s) => {
                if let (Err(_), Some(s)) = (&r, s) {
                    s.failed();
                }
                r
            }
        };
        let done = done.map_err(|source| JobError::Round { step, source })?;
        self.saved_at = Some(step);
        if let Some(repo) = self.runtime.repository_mut() {
            // Retention failing leaves extra checkpoints behind, never a broken one: log it.
            if let Err(e) = repo.retain(self.keep) {
                tracing::warn!(
                    "retention after checkpoint {} failed: {e}",
                    done.checkpoint.0
                );
            }
        }
        tracing::debug!("checkpoint {} committed at step {step}", done.checkpoint.0);
        Ok(done.checkpoint)
    }

    /// Managed files (issue #17), restore phase 1 on this rank: check the tree and stage
    /// the target's changed chunks. Damage in the repository makes every rank fall back
    /// like damage in the state; a refusal (files changed outside the job) fails all.
    fn files_prepare(
        &self,
        id: CheckpointId,
        world: u32,
        size: u32,
    ) -> Result<Option<lazarus_files::RestorePlan>, LoadError> {
        let Some(files) = &self.files else {
            return Ok(None);
        };
        let reader =
            RepoReader::open(&self.path).map_err(|e| restore::classify(&self.path, id, e))?;
        let target = lazarus_files::RestoreTarget {
            reader: &reader,
            id,
            world,
            size,
        };
        match files.prepare_restore(Some(target)) {
            Ok(plan) => Ok(Some(plan)),
            Err(lazarus_files::RestoreError::Store(e)) => Err(restore::classify(&self.path, id, e)),
            Err(lazarus_files::RestoreError::Files(e)) => Err(LoadError::Fatal(JobError::Files(e))),
        }
    }

    /// Managed files (issue #17) on a fresh start: the tree goes back to empty (files of
    /// an incarnation that died before the first checkpoint are removed); every rank
    /// learns whether all could.
    fn files_fresh(&self) -> Result<(), JobError> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        let done = files
            .prepare_restore(None)
            .map_err(|e| match e {
                lazarus_files::RestoreError::Files(e) => e,
                lazarus_files::RestoreError::Store(e) => {
                    FilesError::new(lazarus_files::FilesErrorKind::Io, None, e.to_string())
                }
            })
            .and_then(|plan| files.apply_restore(plan));
        let mine = match &done {
            Ok(()) => Attempt::Ok,
            Err(e) => Attempt::Fatal(format!("managed files on a fresh start: {e}")),
        };
        let all = self.runtime.comm().clone().allgather(&mine)?;
        done?;
        match agreed_failure(&all, CheckpointId(0)) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn store_err(&self, source: StoreError) -> JobError {
        JobError::Store {
            path: self.path.clone(),
            source,
        }
    }
}

/// Under a supervisor (`LAZARUS_OUTPUT_MARKERS=1`), tells it this rank is running again:
/// `\x1elazarus:resumed <id|-> <step>` on stdout. The supervisor times recovery (failure →
/// every rank resumed) from it; the line is never shown to the user.
fn resumed_marker(id: Option<CheckpointId>, step: u64) {
    restore::write_marker(&lazarus_supervisor::Marker::Resumed { id, step });
}
