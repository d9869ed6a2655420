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
//! A single process is a world of one: rank 0 writes the only part and commits it. The
//! multi-rank issue adds a coordinator (agreement on when to checkpoint, a two-phase commit)
//! behind the same calls; `World` is where it plugs in.

use lazarus_format::{CheckpointId, Rank};
use lazarus_policy::{EveryInterval, EverySteps, Opportunity, Policy};
use lazarus_state::{Checkpoint, StateError};
use lazarus_store::{CommitMeta, Damage, RepoOptions, RepoReader, Repository, StoreError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Environment variable naming the repository when the builder was given none.
pub const REPO_ENV: &str = "LAZARUS_REPO";

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
}

impl JobError {
    /// True when running the same program again later can succeed without changing it or
    /// repairing the repository (a held lock, a full disk, a transient I/O error).
    pub fn is_retryable(&self) -> bool {
        matches!(self, JobError::Store { source, .. } if source.is_retryable())
    }
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
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "restored checkpoint {} at step {}",
            self.checkpoint.0, self.step
        )?;
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
}

impl JobBuilder {
    /// The repository directory (created if absent). Without it, `LAZARUS_REPO` is used.
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

    /// Store options (chunk size, codec, job token).
    pub fn repo_options(mut self, options: RepoOptions) -> Self {
        self.options = options;
        self
    }

    /// Validates the configuration and opens (creating if needed) and locks the repository.
    /// With no policy given, checkpoints every 60 s.
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
        let policy: Box<dyn Policy> = match (self.policy, self.every_steps, self.every) {
            (Some(p), _, _) => p,
            (None, Some(n), None) => Box::new(EverySteps::new(n)),
            (None, None, Some(t)) => Box::new(EveryInterval::new(t)),
            (None, Some(n), Some(t)) => Box::new(Either(EverySteps::new(n), EveryInterval::new(t))),
            (None, None, None) => Box::new(EveryInterval::new(Duration::from_secs(60))),
        };
        let repo = Repository::open(&path, self.options).map_err(|source| JobError::Store {
            path: path.clone(),
            source,
        })?;
        Ok(Job {
            repo,
            path,
            policy,
            keep,
            app: self.app,
            world: World::single(),
            step: 0,
            saved_at: None,
            report: None,
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

/// This process's place in the job. A single process is rank 0 of a world of 1.
#[derive(Clone, Copy, Debug)]
struct World {
    rank: Rank,
    size: u32,
}

impl World {
    fn single() -> Self {
        World {
            rank: Rank(0),
            size: 1,
        }
    }
}

/// A running job: owns the (locked) repository, the checkpoint policy and the step count.
pub struct Job {
    repo: Repository,
    path: PathBuf,
    policy: Box<dyn Policy>,
    keep: usize,
    app: BTreeMap<String, String>,
    world: World,
    step: u64,
    saved_at: Option<u64>,
    report: Option<RestoreReport>,
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

    /// What the last `restore_or_init` restored and skipped; `None` after a fresh start.
    pub fn restore_report(&self) -> Option<&RestoreReport> {
        self.report.as_ref()
    }

    /// Returns the state of the newest committed checkpoint that verifies, or `init()` when
    /// there is none. `init()` is always called: restore overwrites the saved fields in place,
    /// so skipped fields keep their initial value until the `after_restore` hooks rebuild
    /// them. Damaged newer checkpoints are skipped and logged (`tracing::warn!`) and listed
    /// in [`Job::restore_report`].
    pub fn restore_or_init<T: Checkpoint>(
        &mut self,
        init: impl FnOnce() -> T,
    ) -> Result<T, JobError> {
        let mut state = init();
        let reader = RepoReader::open(&self.path).map_err(|e| self.store_err(e))?;
        let Some((summary, skipped)) = reader.newest_intact().map_err(|e| self.store_err(e))?
        else {
            self.step = 0;
            self.saved_at = None;
            self.report = None;
            return Ok(state);
        };
        for d in &skipped {
            tracing::warn!(
                checkpoint = d.checkpoint.0,
                path = %d.path.display(),
                "skipping damaged checkpoint {} ({}): {}",
                d.checkpoint.0,
                d.kind,
                d.detail
            );
        }
        let objects = reader
            .load_part(summary.id, self.world.rank)
            .map_err(|e| self.store_err(e))?;
        lazarus_state::restore(&mut state, objects).map_err(|source| JobError::Restore {
            checkpoint: summary.id,
            step: summary.step,
            source,
        })?;
        self.step = summary.step;
        self.saved_at = Some(summary.step);
        let report = RestoreReport {
            checkpoint: summary.id,
            step: summary.step,
            skipped,
        };
        tracing::info!("{report}");
        self.report = Some(report);
        Ok(state)
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
        let saved = if self.saved_at != Some(current) && self.policy.should_checkpoint(at) {
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
        let objects =
            lazarus_state::save(state).map_err(|source| JobError::Save { step, source })?;
        let pending = self
            .repo
            .begin(self.world.size)
            .map_err(|e| self.store_err(e))?;
        let written = pending.part_writer().write(self.world.rank, &objects);
        let receipt = match written {
            Ok(r) => r,
            Err(e) => {
                // Best effort: a leftover pending directory is also removed by the next GC.
                let _ = self.repo.abort(pending);
                return Err(self.store_err(e));
            }
        };
        let meta = CommitMeta {
            step,
            app: self.app.clone(),
        };
        let done = self
            .repo
            .commit(pending, vec![receipt], meta)
            .map_err(|e| self.store_err(e))?;
        self.saved_at = Some(step);
        // Retention failing leaves extra checkpoints behind, never a broken one: log it.
        if let Err(e) = self.repo.retain(self.keep) {
            tracing::warn!(
                "retention after checkpoint {} failed: {e}",
                done.summary.id.0
            );
        }
        tracing::debug!("checkpoint {} committed at step {step}", done.summary.id.0);
        Ok(done.summary.id)
    }

    fn store_err(&self, source: StoreError) -> JobError {
        JobError::Store {
            path: self.path.clone(),
            source,
        }
    }
}
