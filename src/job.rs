//! The Job API: open a repository, restore or initialise the state, checkpoint at the top
//! of the main loop when the policy says so, and record completion. The contract users
//! rely on is documented on [`Job`] (this module is private).

use crate::error::JobError;
use crate::flush::{self, Flusher, InFlight, L1Part, LevelTask, Task};
use crate::report::{CheckpointReport, FreshStart, RestoreReport};
use crate::restore;
use lazarus_coord::restore::{AgreeError, Candidate, LoadError, RestoreAgreement, Source, Start};
use lazarus_coord::{
    capture, meta, AlignedRuntime, OnAllDamaged, RankStore, RoundTarget, StartedRound, Timeouts,
};
use lazarus_files::{Files, FilesConfig, FilesError};
use lazarus_format::{count, CheckpointId, LoadedObject, Rank};
pub use lazarus_levels::Levels;
use lazarus_levels::{Due, L1Capture, LevelClock, LevelError, LoadOutcome, NodeLevels};
use lazarus_net::Comm;
use lazarus_policy::{EveryInterval, EverySteps, Opportunity, Policy};
use lazarus_state::Checkpoint;
use lazarus_store::{CommitMeta, RepoOptions, RepoReader, Repository, StoreError};
use lazarus_supervisor::Marker;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Environment variable naming the repository when the builder was given none.
pub use lazarus_coord::REPO_ENV;
use lazarus_coord::TOKEN_ENV;

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
    // Asynchronous checkpoints (issue #16, docs/ASYNC.md).
    sync_writes: bool,
    staging_budget: Option<u64>,
    // Retention frees dead chunk files instead of recycling them.
    free_dead_chunks: bool,
    // Multi-level checkpoints (issue #15, docs/LEVELS.md).
    levels: Option<Levels>,
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

    /// Writes every checkpoint inside the checkpoint call, as before asynchronous
    /// checkpoints (docs/ASYNC.md): `checkpoint` returns only once the checkpoint is
    /// committed. The default is asynchronous: the call returns once the state is copied
    /// into staging memory, and the part is written, voted and committed in the background.
    pub fn sync_writes(mut self) -> Self {
        self.sync_writes = true;
        self
    }

    /// Most bytes of staging memory an asynchronous checkpoint may hold (the copy of the
    /// state written in the background). A state larger than this is captured in pieces:
    /// what fits is copied, the rest written inside the call, so the call stalls only for
    /// what does not fit. Default: a quarter of the machine's physical memory (1 GiB when
    /// unknown). See docs/ASYNC.md.
    pub fn staging_budget(mut self, bytes: u64) -> Self {
        self.staging_budget = Some(bytes);
        self
    }

    /// The repository: a directory (created if absent), `s3://bucket/prefix` (feature `s3`,
    /// docs/STORAGE.md) or `memory://name`. Without it, `LAZARUS_REPO` is used.
    pub fn repo(mut self, path: impl Into<PathBuf>) -> Self {
        self.repo = Some(path.into());
        self
    }

    /// Multi-level checkpoints (docs/LEVELS.md): which checkpoints also (or only) go to
    /// the node-local level L1, the partner copy L2 and the parity group L3, and which to
    /// the durable repository (L4). Without it, `LAZARUS_L1_EVERY` / `LAZARUS_L2_EVERY` /
    /// `LAZARUS_L3_EVERY` / `LAZARUS_L4_EVERY` / `LAZARUS_L1_DIR` (what `lazarus run
    /// --l1-every ...` exports) decide; without those, every checkpoint goes to the
    /// repository only.
    ///
    /// ```
    /// use lazarus::Levels;
    /// // L1 and L2 every checkpoint, L3 parity every 5th, the repository every 10th.
    /// let levels = Levels::new().l1(1).l2(1).l3(5).l4(10);
    /// # let _ = lazarus::Job::builder().levels(levels);
    /// ```
    pub fn levels(mut self, levels: Levels) -> Self {
        self.levels = Some(levels);
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

    /// Whether retention keeps the files of the chunks it finds dead in the durable
    /// repository as spares that the next checkpoint writes its new chunks into (`true`,
    /// the default: a file system that neither frees nor allocates files per checkpoint
    /// writes them faster and with less CPU), or deletes them (`false`: the space comes
    /// back at once; the spares would hold up to one collection's dead chunks until the
    /// next checkpoint). See [`lazarus_store::Repository::recycle_dead_chunks`].
    pub fn recycle_chunk_files(mut self, on: bool) -> Self {
        self.free_dead_chunks = !on;
        self
    }

    /// Keep the newest `k` committed checkpoints (default 3; at least 1).
    pub fn keep(mut self, k: usize) -> Self {
        self.keep = Some(k);
        self
    }

    /// Free-form metadata recorded in every COMMIT (e.g. the program's version). Keys
    /// starting with `lazarus.` are reserved for the runtime's own (completion, cost).
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
        if let Some(k) = self
            .app
            .keys()
            .find(|k| k.starts_with(meta::RESERVED_PREFIX))
        {
            return Err(JobError::Config(format!(
                "app key {k:?}: the prefix {:?} is reserved for Lazarus's own COMMIT metadata",
                meta::RESERVED_PREFIX
            )));
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
        let levels = match self.levels {
            Some(l) => Some(l),
            None => Levels::from_env().map_err(JobError::Config)?,
        };
        let levels = match levels {
            Some(l) if l.is_multilevel() => {
                l.validate().map_err(JobError::Config)?;
                if self.files.is_some() {
                    return Err(JobError::Config(
                        "managed files (JobBuilder::files) are not supported with fast checkpoint levels yet (docs/LEVELS.md)".into(),
                    ));
                }
                Some(l)
            }
            Some(l) if l.periods()[3] != lazarus_levels::Period::Checkpoints(1) => {
                return Err(JobError::Config(format!(
                    "levels: l4 every {} without a fast level (l1/l2/l3) would only skip checkpoints; use every_steps",
                    l.periods()[3]
                )))
            }
            _ => None,
        };
        let files = match &self.files {
            Some(root) => Some(Files::new(FilesConfig {
                root: root.clone(),
                rank: comm.rank().0,
                chunk: u64::from(options.chunk_size),
                accept_changes: self.accept_file_changes,
            })?),
            None => None,
        };
        let level_options = options.clone();
        let store = if comm.rank() == Rank(0) {
            // Without a job token `open_shared` shares with nobody, exactly like `open`.
            let opened = Repository::open_shared(&path, options).map(|mut r| {
                // The Job collects after every commit (docs/PERFORMANCE.md, "Recycled
                // chunk files").
                r.recycle_dead_chunks(!self.free_dead_chunks);
                r
            });
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
        let rank = comm.rank().0;
        let runtime = AlignedRuntime::new(comm.clone(), store, self.timeouts.unwrap_or_default())
            .map_err(|source| JobError::Round { step: 0, source })?;
        let mut level_clock = LevelClock::new(Instant::now());
        let levels = match levels {
            Some(l) => {
                let (l, durable_age) = open_levels(&runtime, &path, l, level_options, keep)?;
                if let Some(age) = durable_age {
                    // A time period on L4 counts from its last write, across restarts:
                    // failures more frequent than the period must not postpone it forever.
                    level_clock.written_ago(4, age, Instant::now());
                }
                Some(l)
            }
            None => None,
        };
        // A job without levels on a repository a multi-level run used still keeps the
        // record up to date (`Job::record_history`): rank 0 reads it here.
        let prior_history = if levels.is_none() && comm.rank() == Rank(0) {
            let reader = RepoReader::open(&path).map_err(|source| JobError::Store {
                path: path.clone(),
                source,
            })?;
            read_history(&reader)?
        } else {
            None
        };
        // With fast levels too: the flush owns the levels and runs the level round before
        // the rest of the durable round, on the same captured objects (docs/LEVELS.md).
        let flusher = if self.sync_writes {
            None
        } else {
            match flush::start(rank) {
                Ok(f) => Some(f),
                Err(e) => {
                    // Synchronous writes are always correct, only slower: go on with them.
                    tracing::warn!("no background flush thread ({e}): checkpoints are synchronous");
                    None
                }
            }
        };
        Ok(Job {
            levels,
            prior_history,
            level_clock,
            runtime: Some(runtime),
            comm,
            flusher,
            staging_budget: self.staging_budget.unwrap_or_else(capture::default_budget),
            pool: Vec::new(),
            lost: None,
            path,
            policy,
            local_policy,
            keep,
            app: self.app,
            step: 0,
            saved_at: None,
            decided: false,
            report: None,
            files,
            on_all_damaged,
            fresh: None,
            finished: None,
            newest: None,
            last: None,
        })
    }
}

/// Collective: every rank's fast levels (docs/LEVELS.md), with the host map and the
/// inventory of node-local data exchanged; on rank 0 (whose clock schedules levels by
/// time) also how long ago the newest durable checkpoint was committed.
fn open_levels(
    runtime: &AlignedRuntime,
    path: &Path,
    levels: Levels,
    options: RepoOptions,
    keep: usize,
) -> Result<(NodeLevels, Option<Duration>), JobError> {
    let comm = runtime.comm().clone();
    let root = levels
        .root()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| lazarus_levels::default_root(&lazarus_store::repo_location(path)));
    let host =
        lazarus_levels::host_identity(comm.rank().0, comm.size()).map_err(JobError::Config)?;
    // Rank 0: the newest job-wide number in the durable repository, so new numbers never
    // repeat one it holds. An error here ends rank 0's open before the collective level
    // exchange below; the other ranks' exchange then fails on the lost peer.
    let (durable_seq, durable_age, history) = if comm.rank() == Rank(0) {
        let reader = RepoReader::open(path).map_err(|source| JobError::Store {
            path: path.to_path_buf(),
            source,
        })?;
        let history = read_history(&reader)?;
        match reader.committed() {
            Ok(c) => {
                let seq = c
                    .iter()
                    .filter_map(|c| meta::level_seq(&c.app))
                    .max()
                    .unwrap_or(0);
                let newest = c.iter().map(|c| c.time_unix_ms).max();
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let age = newest.map(|t| Duration::from_millis(now.saturating_sub(t)));
                (seq, age, history)
            }
            // Without the newest durable number, new numbers could repeat one the
            // repository holds and a later restore prefer that older checkpoint: fail the
            // open (a restart retries it) rather than number from the node-local copies.
            Err(source) => {
                return Err(JobError::Store {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    } else {
        (0, None, None)
    };
    let levels = NodeLevels::open(
        comm,
        levels,
        root,
        host,
        options,
        keep,
        durable_seq,
        history,
    )
    .map_err(|source| JobError::Level { step: 0, source })?;
    Ok((levels, durable_age))
}

/// Rank 0: the repository's level history record (docs/LEVELS.md, "One history"), `None`
/// when it has none. Unreadable or malformed, the open fails naming it rather than risk
/// restoring a copy of an abandoned run.
fn read_history(reader: &RepoReader) -> Result<Option<lazarus_levels::History>, JobError> {
    let store_err = |source| JobError::Store {
        path: reader.path().to_path_buf(),
        source,
    };
    let Some(bytes) = reader.level_history().map_err(store_err)? else {
        return Ok(None);
    };
    let location = reader.level_history_location();
    lazarus_levels::History::decode(&bytes, &location.display().to_string())
        .map(Some)
        .map_err(|why| {
            store_err(lazarus_store::StoreError::new(
                lazarus_store::StoreErrorKind::Corrupt,
                None,
                format!(
                    "{why} (the record of which runs a multi-level job continues; removing it \
                     lets restore pick the newest complete copy, also of an abandoned run)"
                ),
            ))
        })
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
    fn flush_completed(&mut self, flush: Duration) {
        self.0.flush_completed(flush);
        self.1.flush_completed(flush);
    }
    fn checkpoint_failed(&mut self, at: Opportunity) {
        self.0.checkpoint_failed(at);
        self.1.checkpoint_failed(at);
    }
}

/// A running job: owns the (locked) repository, the checkpoint policy and the step count.
///
/// # The step contract
///
/// - A restore method ([`Job::restore_or_init`] and its two siblings) comes first: it
///   decides where the job starts. `checkpoint`, `checkpoint_now` and `finish` before it
///   fail with [`JobError::Config`] (they would write step-0 checkpoints over the
///   repository's newest ones, which retention then deletes).
/// - [`Job::step`] is the number of loop iterations *completed* when the state is in its
///   current form. It starts at 0, or at the step of the restored checkpoint.
/// - A save counts as taken at its step on every rank, whatever its outcome: after a
///   failed `checkpoint_now`, the `checkpoint()` of the same step does not save (a rank
///   that failed alone would otherwise save again while the others skip).
/// - [`Job::checkpoint`] is called once at the top of every iteration. It may save the
///   state as "the state after `step()` iterations" (recorded as `step` in COMMIT), and
///   then counts the iteration: it returns the index of the iteration about to run and
///   increments `step()`. So `while job.step() < n { job.checkpoint(&s)?; work(&mut s); }`
///   runs exactly `n` iterations in total, across any number of restarts.
/// - Right after a restore, the first `checkpoint()` does not save again the checkpoint
///   it was restored from.
/// - [`Job::finish`] after the loop records the final state as the job's result. A rerun
///   of a finished job restores that state at step `n`: the loop runs no iteration and
///   `finish` does nothing ([`Job::is_finished`] says so). Without `finish`, a rerun
///   restores the newest checkpoint (at most one interval before the end) and redoes the
///   iterations after it.
///
/// ```
/// use lazarus::{Checkpoint, Job};
///
/// #[derive(Checkpoint)]
/// struct Sim { x: Vec<f64> }
///
/// # let dir = tempfile::tempdir()?;
/// # let repo = dir.path().join("repo");
/// let mut iterations = 0;
/// for _run in 0..2 {
///     // The second run finds the finished job: it restores step 25 and does nothing.
///     let mut job = Job::builder().repo(&repo).every_steps(10).open()?;
///     let mut sim = job.restore_or_init(|| Sim { x: vec![1.0; 4] })?;
///     while job.step() < 25 {
///         job.checkpoint(&sim)?;
///         sim.x.iter_mut().for_each(|v| *v *= 0.5);
///         iterations += 1;
///     }
///     job.finish(&sim)?;
///     assert!(job.is_finished());
/// }
/// assert_eq!(iterations, 25);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Initialising, or restoring without initialising
///
/// The state is restored *in place*: the checkpoint's fields are written into a value of
/// the program's type, whose skipped fields (`#[checkpoint(skip)]`), communicators and
/// anything else not saved come from that value and are rebuilt by the `after_restore`
/// hooks. So a restore needs a value to restore into, and the three entry points differ
/// only in where it comes from:
///
/// | method | fresh start | restore |
/// |---|---|---|
/// | [`restore_or_init(init)`](Job::restore_or_init) | `init()` | into `init()` |
/// | [`restore_or_try_init(init)`](Job::restore_or_try_init) | `init()?` | into `init()?` |
/// | [`restore_or_init_with(shell, init)`](Job::restore_or_init_with) | `init()?` | into `shell()`; `init` never runs |
///
/// Each closure runs at most once, and only after every rank agreed on what to restore
/// (and loaded and verified it): a job that fails before, or an unusable repository,
/// never pays for an initialiser. Use `restore_or_init_with` when building the initial
/// state is expensive or can fail (reading an input file, computing initial conditions)
/// and an empty value of the right shape is cheap (`Default`, or the communicator and
/// sizes). A failing initialiser fails every rank ([`JobError::Init`] on its rank,
/// [`JobError::Peer`] on the others).
///
/// # Several ranks
///
/// Give every rank's builder its communicator (`.comm(lazarus::init()?)`). Without one,
/// the job is a world of one. Every rank must call `checkpoint(&state)` at the same step
/// with its channels quiet (aligned checkpoints); each writes its own part and a
/// two-phase commit (docs/PROTOCOL.md) makes rank 0 write COMMIT only after every rank
/// reported its part durable. A round that fails anywhere is aborted on every rank and
/// never used; rank 0 deletes its directory. `finish` is collective like `checkpoint`.
///
/// Agreement on *when*: a step-based policy (`every_steps` alone, or a step-only
/// [`policy`](JobBuilder::policy)) is evaluated by every rank locally at no cost. Any
/// other policy (time-based, adaptive) is evaluated by rank 0 and its decision broadcast
/// at every step (one small collective per step).
///
/// # Agreed restore
///
/// Rank 0 lists the committed checkpoints that pass a cheap check (COMMIT and manifests
/// decode, chunk files present with their sizes; no data read) and broadcasts the newest.
/// Every rank loads its objects, which verifies every chunk digest, so the data is read
/// once. The ranks then exchange their outcomes: if any rank found damage, all fall back
/// together to the next older candidate (rank 0 logs what was damaged and skipped); if
/// any rank hit another error, all fail; only when every rank loaded do they restore, and
/// a restore (schema) failure on one rank fails all. So no job ever runs on a mix of
/// checkpoints. ([`crate::coord::restore`] implements this for the Job and
/// [`AsyncSession`](crate::coord::AsyncSession) alike.)
///
/// # Elastic restore
///
/// A checkpoint written by N ranks restores on M != N ranks when all of the state is
/// redistributable ([`crate::dist::Reshard`]): bulk objects with a global range (a
/// [`DVec`](crate::DVec)) are cut into M even blocks, each new rank reading only the byte
/// ranges it keeps; every other field must be declared `#[checkpoint(replicated)]`
/// (parameters, a config struct, a counter every rank advances alike: rank 0's copy is
/// used, every old copy is compared), whatever the number of old ranks. Any other field
/// (per-rank state), a declared one that differs between old ranks, or one only some
/// ranks have, makes the restore fail on every rank with
/// [`JobError::NotRedistributable`] naming it; that is not retried with older
/// checkpoints. (Checkpoints before format 1.2 record no declaration: docs/DIST.md says
/// how they are classified.) Rank 0 says so on stderr: `lazarus: restoring checkpoint 12
/// written by 4 ranks on 3 ranks by redistribution`. The job's step count is in COMMIT,
/// not in the state, so it carries over as is.
pub struct Job {
    /// `None` while a background flush owns it (see `crate::flush`).
    runtime: Option<AlignedRuntime>,
    comm: Comm,
    /// The background worker; `None` with `sync_writes`.
    flusher: Option<Flusher>,
    staging_budget: u64,
    /// The previous capture's staging buffers, reused by the next one.
    pool: Vec<Vec<u8>>,
    /// A background flush whose thread died with the runtime: the Job cannot checkpoint.
    lost: Option<CheckpointId>,
    path: PathBuf,
    policy: Box<dyn Policy>,
    local_policy: bool,
    keep: usize,
    app: BTreeMap<String, String>,
    step: u64,
    saved_at: Option<u64>,
    /// A restore method returned: the job knows where it starts. No checkpoint before
    /// that (it would write step-0 checkpoints over the repository's newest ones).
    decided: bool,
    report: Option<RestoreReport>,
    files: Option<Files>,
    on_all_damaged: OnAllDamaged,
    fresh: Option<FreshStart>,
    /// The checkpoint that records the job as finished and its step (restored or written).
    finished: Option<(CheckpointId, u64)>,
    /// The newest checkpoint this process restored or took (captured, if asynchronous).
    newest: Option<CheckpointId>,
    last: Option<CheckpointReport>,
    /// The fast checkpoint levels, when configured (docs/LEVELS.md).
    levels: Option<NodeLevels>,
    /// Without levels, on rank 0: the level history record a multi-level run left in the
    /// repository, which this job keeps up to date (docs/LEVELS.md, "One history").
    prior_history: Option<lazarus_levels::History>,
    /// When each level was last written (levels scheduled by time).
    level_clock: LevelClock,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("repo", &self.path)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

/// Which value `restore_agreed` asks its maker for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Make {
    /// The initial state (fresh start).
    Initial,
    /// A value to restore a checkpoint into.
    Shell,
}

impl Job {
    /// Starts configuring a job.
    pub fn builder() -> JobBuilder {
        JobBuilder::default()
    }

    /// Iterations completed by the current state (see [the step contract](Job#the-step-contract)).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The repository root.
    pub fn repo_path(&self) -> &Path {
        &self.path
    }

    /// This rank's communicator (a world of one without `JobBuilder::comm`).
    pub fn comm(&self) -> &Comm {
        &self.comm
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

    /// `Some` when the last `restore_or_init` restored nothing and returned the initial
    /// state; its [`FreshStart::damaged`] lists the damaged checkpoints given up under
    /// [`OnAllDamaged::StartFresh`] (empty when the repository had none committed).
    pub fn fresh_start(&self) -> Option<&FreshStart> {
        self.fresh.as_ref()
    }

    /// True when the current state is the job's recorded final state: [`Job::finish`]
    /// was called, or the restore found a checkpoint written by `finish`, and neither was
    /// a step counted since nor a newer checkpoint taken ([`Job::checkpoint_now`] at the
    /// finished step supersedes it). A program may still go on (e.g. a longer run of a
    /// finished job): the next [`Job::checkpoint`] counts a step and the job is no longer
    /// finished.
    pub fn is_finished(&self) -> bool {
        self.finished
            .is_some_and(|(id, s)| s == self.step && self.newest == Some(id))
    }

    /// The step at which the job was last recorded finished (by this process's
    /// [`Job::finish`] or in the restored checkpoint), even if it went on since.
    pub fn finished_at(&self) -> Option<u64> {
        self.finished.map(|(_, s)| s)
    }

    /// What the last checkpoint this process committed cost on this rank (`None` before
    /// the first one). See [`CheckpointReport`]. An asynchronous checkpoint appears here
    /// once its background flush is known to have committed (at a later call, or after
    /// [`Job::flush`]).
    pub fn last_checkpoint(&self) -> Option<&CheckpointReport> {
        self.last.as_ref()
    }

    /// Waits until the checkpoint being written in the background (if any) is committed,
    /// and returns the newest committed checkpoint's report. An error is that
    /// checkpoint's ([`JobError::Flush`], or [`JobError::LevelFlush`] for a checkpoint
    /// that went to fast levels only): it did not commit, the previous committed
    /// checkpoint stays the restart point; when [`JobError::is_retryable`], the job can go
    /// on and the next checkpoint may commit. Not collective.
    pub fn flush(&mut self) -> Result<Option<&CheckpointReport>, JobError> {
        self.settle()?;
        Ok(self.last.as_ref())
    }

    /// Fault injection for tests: rank 0's repository (and the part writers it hands out)
    /// behaves as a disk with only `bytes` left; `u64::MAX` lifts it. Waits for the
    /// background flush first and returns its error, after applying the budget. A no-op
    /// on other ranks.
    #[doc(hidden)]
    pub fn set_write_budget(&mut self, bytes: u64) -> Result<(), JobError> {
        let flushed = self.settle();
        if let Some(repo) = held(&mut self.runtime, self.lost)?.repository_mut() {
            repo.set_write_budget(bytes);
        }
        flushed
    }

    /// Fault injection for tests: this rank's L1 node-local repository behaves as a disk
    /// with only `bytes` left; `u64::MAX` lifts it. Waits for the background flush first
    /// and returns its error, after applying the budget. A no-op without fast levels.
    #[doc(hidden)]
    pub fn set_level_write_budget(&mut self, bytes: u64) -> Result<(), JobError> {
        let flushed = self.settle();
        if let Some(l) = &mut self.levels {
            l.set_l1_write_budget(bytes)
                .map_err(|source| JobError::Level {
                    step: self.step,
                    source,
                })?;
        }
        flushed
    }

    /// True while an asynchronous checkpoint is being written in the background.
    pub fn flushing(&self) -> bool {
        self.flusher.as_ref().is_some_and(Flusher::busy)
    }

    /// The runtime, once no flush owns it.
    fn rt(&mut self) -> Result<&mut AlignedRuntime, JobError> {
        self.settle()?;
        held(&mut self.runtime, self.lost)
    }

    /// Waits for the background flush and takes back the runtime; its error, if any.
    fn settle(&mut self) -> Result<(), JobError> {
        let r = match self.flusher.as_mut() {
            Some(f) => f.settle(),
            None => Ok(None),
        };
        self.absorb(r)
    }

    /// The outcome of a background flush, recorded: the runtime and staging buffers
    /// come back, a commit becomes `last_checkpoint`, a failure becomes the error.
    fn absorb(
        &mut self,
        outcome: Result<Option<(InFlight, flush::Done)>, InFlight>,
    ) -> Result<(), JobError> {
        let (info, done) = match outcome {
            Ok(None) => return Ok(()),
            Err(info) => {
                if info.due.is_some() {
                    // The flush thread died (a panic) owning this rank's side of a level
                    // round, which has no deadline: the other ranks would wait for it as
                    // long as this process lives. End the process, as the same panic on
                    // the program's thread would have, so the job is restarted.
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "lazarus: the background flush of checkpoint {} died during its level round; ending this rank so the job restarts",
                        info.checkpoint.0
                    );
                    std::process::abort();
                }
                self.lost = Some(info.checkpoint);
                self.failed(info.step);
                return Err(JobError::FlushLost {
                    checkpoint: info.checkpoint,
                });
            }
            Ok(Some(x)) => x,
        };
        self.runtime = Some(done.runtime);
        self.pool = done.pool;
        if let Some(l) = done.levels {
            self.levels = Some(l);
        }
        let now = Instant::now();
        match (done.level, done.result) {
            (None, None) => Ok(()),
            (level, Some(Ok(c))) => {
                if let Some(Err(e)) = &level {
                    // As synchronously: the fast levels only lose this one copy.
                    tracing::warn!(
                        "checkpoint {} (step {}): {e}; the durable repository still got it",
                        c.checkpoint.0,
                        info.step
                    );
                }
                if let Some(due) = info.due {
                    let written = match level {
                        Some(Ok(_)) | None => due,
                        Some(Err(_)) => Due {
                            l4: true,
                            ..Due::default()
                        },
                    };
                    self.level_clock.written(written, now);
                }
                let mut report = CheckpointReport::of(&c, info.step, info.stall, Some(done.flush));
                report.captured_bytes = info.captured;
                // The background time bounds how often checkpoints can be taken (#16.5).
                self.policy.flush_completed(done.flush);
                tracing::debug!("{report}");
                self.last = Some(report);
                Ok(())
            }
            (level, Some(Err(source))) => {
                if let Some(Err(e)) = &level {
                    tracing::warn!(
                        "checkpoint {} (step {}): the level round failed too: {e}",
                        info.checkpoint.0,
                        info.step
                    );
                }
                self.failed(info.step);
                Err(JobError::Flush {
                    checkpoint: info.checkpoint,
                    step: info.step,
                    source,
                })
            }
            (Some(Ok(r)), None) => {
                if let Some(due) = info.due {
                    self.level_clock.written(due, now);
                }
                let report = CheckpointReport {
                    checkpoint: info.checkpoint,
                    step: info.step,
                    stall: info.stall,
                    write: r.l1 + r.l2 + r.l3,
                    logical_bytes: r.logical_bytes,
                    written_bytes: r.written_bytes,
                    flush: Some(done.flush),
                    captured_bytes: info.captured,
                };
                self.policy.flush_completed(done.flush);
                tracing::debug!("{report} (fast levels only)");
                self.last = Some(report);
                Ok(())
            }
            (Some(Err(source)), None) => {
                self.failed(info.step);
                Err(JobError::LevelFlush {
                    checkpoint: info.checkpoint,
                    step: info.step,
                    source,
                })
            }
        }
    }

    /// Tells the policy that the checkpoint of `step`, reported taken at its capture
    /// ([`Policy::checkpoint_taken`]), did not commit: it retries at the next opportunity,
    /// as after a failed synchronous checkpoint (which is never reported taken).
    fn failed(&mut self, step: u64) {
        self.policy.checkpoint_failed(Opportunity {
            step,
            now: Instant::now(),
        });
    }

    /// Returns the state of the newest committed checkpoint that verifies, or `init()`
    /// when there is none. `init` runs exactly once, in both cases: on a restore its value
    /// is what the checkpoint is restored into (see
    /// [the table](Job#initialising-or-restoring-without-initialising); use
    /// [`Job::restore_or_init_with`] to restore without running an expensive `init`).
    ///
    /// Damaged newer checkpoints are skipped and logged (`tracing::warn!`) and listed in
    /// [`Job::restore_report`]. Every rank restores the same checkpoint or every rank
    /// fails ([agreed restore](Job#agreed-restore)). A checkpoint written by another
    /// number of ranks is redistributed when the state allows it, else
    /// [`JobError::NotRedistributable`]. When every committed checkpoint is damaged:
    /// [`JobError::AllDamaged`], or a fresh start said loudly on stderr, as
    /// [`JobBuilder::on_all_damaged`] says. A checkpoint written by [`Job::finish`] makes
    /// [`Job::is_finished`] true.
    ///
    /// Under a supervisor each rank first reports the repository it opened (marker `repo`,
    /// normalized by [`crate::store::repo_location`]), and a restore error of its own that
    /// no restart can fix is reported too (marker `refused`), so that `lazarus run` stops
    /// instead of restarting (docs/RECOVERY.md).
    pub fn restore_or_init<T: Checkpoint>(
        &mut self,
        init: impl FnOnce() -> T,
    ) -> Result<T, JobError> {
        self.restore_made(|_| Ok::<T, std::convert::Infallible>(init()))
    }

    /// [`Job::restore_or_init`] with an initialiser that can fail. It runs exactly once
    /// (on a restore its value is restored into); its error fails every rank:
    /// [`JobError::Init`] here, [`JobError::Peer`] on the others.
    pub fn restore_or_try_init<T, E>(
        &mut self,
        init: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, JobError>
    where
        T: Checkpoint,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        self.restore_made(|_| init())
    }

    /// Restores the newest committed checkpoint into `shell()`, or returns `init()` when
    /// there is none: `init` runs only on a fresh start, `shell` only on a restore, and
    /// never both. `shell` builds a value of the right shape to restore into, cheaply
    /// (`Default::default`, or the communicator and sizes a `DVec` needs); its skipped
    /// fields are what the `after_restore` hooks start from. `init` builds the initial
    /// state and may be expensive or fail ([`JobError::Init`], every rank failing).
    /// Otherwise as [`Job::restore_or_init`].
    ///
    /// ```
    /// use lazarus::{Checkpoint, Job};
    ///
    /// #[derive(Checkpoint, Default)]
    /// struct Model { weights: Vec<f32> }
    ///
    /// fn load_initial_weights() -> std::io::Result<Model> {
    ///     Ok(Model { weights: vec![0.5; 1024] }) // e.g. read a large file
    /// }
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let mut job = Job::builder().repo(dir.path()).open()?;
    /// let model = job.restore_or_init_with(Model::default, load_initial_weights)?;
    /// job.finish(&model)?;
    /// drop(job); // releases the repository
    ///
    /// let mut job = Job::builder().repo(dir.path()).open()?;
    /// let again = job.restore_or_init_with(Model::default, || -> std::io::Result<Model> {
    ///     unreachable!("a checkpoint exists: the initial state is not built again")
    /// })?;
    /// assert_eq!(again.weights, model.weights);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn restore_or_init_with<T, E>(
        &mut self,
        shell: impl FnOnce() -> T,
        init: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, JobError>
    where
        T: Checkpoint,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        self.restore_made(|m| match m {
            Make::Shell => Ok(shell()),
            Make::Initial => init(),
        })
    }

    /// The three restore methods: `make` builds the value asked for; its error becomes
    /// this rank's [`JobError::Init`].
    fn restore_made<T, E>(&mut self, make: impl FnOnce(Make) -> Result<T, E>) -> Result<T, JobError>
    where
        T: Checkpoint,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let rank = self.comm().rank().0;
        self.restore_agreed(|m| {
            make(m).map_err(|e| JobError::Init {
                rank,
                source: e.into(),
            })
        })
    }

    /// The markers around the agreed restore, and the refusal a supervisor must see.
    fn restore_agreed<T: Checkpoint>(
        &mut self,
        make: impl FnOnce(Make) -> Result<T, JobError>,
    ) -> Result<T, JobError> {
        // A restore sees every checkpoint this process wrote, committed or not.
        self.settle()?;
        let location = lazarus_store::repo_location(&self.path);
        self.rt()?.marker(&Marker::Repo { location });
        let r = self.agree(make);
        self.decided = r.is_ok();
        if let Err(e) = &r {
            if e.is_restore_refusal() {
                self.rt()?.marker(&Marker::Refused {
                    message: e.to_string(),
                });
            }
        }
        r
    }

    /// Runs [`RestoreAgreement`] with the Job's load (state objects, redistributed if
    /// needed, and the managed files' plan) and apply (build the value, restore it, put
    /// the files back; or start fresh).
    fn agree<T: Checkpoint>(
        &mut self,
        make: impl FnOnce(Make) -> Result<T, JobError>,
    ) -> Result<T, JobError> {
        let comm = self.comm.clone();
        let (me, size) = (comm.rank(), comm.size());
        let agreement = RestoreAgreement {
            comm: &comm,
            repo: &self.path,
            on_all_damaged: self.on_all_damaged,
        };
        // Fast levels (docs/LEVELS.md): every rank computed the same plans at open.
        let mut levels = self.levels.take();
        let plans = levels.as_ref().map(NodeLevels::plans).unwrap_or_default();
        let fast: Vec<Candidate> = plans
            .iter()
            .map(|p| Candidate {
                id: CheckpointId(p.seq),
                step: p.step,
                world: p.world,
                app: p.app.clone(),
                source: Source::Fast { level: p.level },
            })
            .collect();
        // A checkpoint known complete that no level can rebuild counts as damage: never
        // a fresh start that silently throws it away (docs/LEVELS.md, "Lost progress").
        let lost: Vec<_> = levels
            .as_ref()
            .and_then(NodeLevels::lost)
            .into_iter()
            .collect();
        let level_root = levels.as_ref().map(|l| l.root().to_path_buf());
        let load = |c: &Candidate| -> Result<_, LoadError<JobError>> {
            if let Source::Fast { .. } = c.source {
                let (Some(l), Some(p)) = (levels.as_mut(), plans.iter().find(|p| p.seq == c.id.0))
                else {
                    return Err(LoadError::Fatal(JobError::Rank0(format!(
                        "fast-level checkpoint {} is not in this rank's plan",
                        c.id.0
                    ))));
                };
                return match l.load(p) {
                    Ok(objects) => Ok((objects, None)),
                    Err(LoadOutcome::Store(e)) => {
                        Err(LoadError::from_store(c.id, e, |source| JobError::Store {
                            path: level_root.clone().unwrap_or_default(),
                            source,
                        }))
                    }
                    Err(LoadOutcome::Level(source)) => Err(LoadError::Fatal(JobError::Level {
                        step: c.step,
                        source,
                    })),
                    // The same refusal as an N→M restore from the repository.
                    Err(LoadOutcome::NotRedistributable(source)) => {
                        Err(LoadError::Fatal(JobError::NotRedistributable {
                            checkpoint: c.id,
                            saved: c.world,
                            current: size,
                            source,
                        }))
                    }
                };
            }
            let files = self.files_prepare(c.id, c.world, size)?;
            let objects = restore::load(&self.path, c.id, c.world, me, size)?;
            Ok((objects, files))
        };
        let apply = |chosen: Option<(&Candidate, Loaded)>| match chosen {
            None => {
                self.files_fresh()?;
                make(Make::Initial)
            }
            Some((c, (objects, files))) => {
                if c.world != size && me == Rank(0) {
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "lazarus: restoring checkpoint {} written by {} on {} by \
                         redistribution",
                        c.id.0,
                        count(c.world, "rank"),
                        count(size, "rank")
                    );
                }
                let mut state = make(Make::Shell)?;
                lazarus_state::restore(&mut state, objects).map_err(|source| {
                    JobError::Restore {
                        checkpoint: c.id,
                        step: c.step,
                        source,
                    }
                })?;
                // The managed files go back only with the state (issue #17).
                if let (Some(plan), Some(f)) = (files, &self.files) {
                    f.apply_restore(plan)?;
                }
                Ok(state)
            }
        };
        let agreed = agreement.run_with(fast, lost, load, apply);
        self.levels = levels;
        let (state, start) = agreed.map_err(|e| match e {
            AgreeError::Own(e) => e,
            AgreeError::Peer {
                rank,
                checkpoint,
                message,
                ..
            } => JobError::Peer {
                rank: rank.0,
                checkpoint,
                message,
            },
            AgreeError::Listing(source) => self.store_err(source),
            AgreeError::Rank0(why) => JobError::Rank0(why),
            AgreeError::AllDamaged(damaged) => JobError::AllDamaged {
                path: self.path.clone(),
                damaged,
            },
            AgreeError::Net(e) => JobError::Net(e),
        })?;
        // Before any rank says `resumed` (the supervisor then drops the output the
        // re-execution prints again): the run this incarnation continues, durably.
        let restored = match &start {
            Start::Fresh { .. } => None,
            Start::Restored { from, .. } => Some(match from.source {
                Source::Fast { .. } => (from.id.0, from.app.get(lazarus_levels::LINEAGE_KEY)),
                // A durable checkpoint without a job-wide number (written without
                // levels) has no fast copy in its run: 0 admits none.
                Source::Durable => (
                    meta::level_seq(&from.app).unwrap_or(0),
                    from.app.get(lazarus_levels::LINEAGE_KEY),
                ),
            }),
        };
        self.record_history(restored.map(|(s, l)| (s, l.map(String::as_str))))?;
        if let Some(l) = &mut self.levels {
            // Retention keeps the restored checkpoint until a newer one completes.
            l.restored(restored.map(|(s, _)| s).filter(|s| *s > 0));
        }
        match start {
            Start::Fresh { damaged } => {
                // Never a silent fresh start. With damage, rank 0 already said so (the
                // agreement's warning names each checkpoint).
                let why = match self.levels.as_ref().filter(|_| damaged.is_empty()) {
                    // Copies survive, but no level can rebuild every rank's part of any
                    // checkpoint.
                    Some(l) => match l.newest_seen() {
                        Some(seq) => Some(format!(
                            "lazarus: fast-level copies up to checkpoint {seq} survive, but no level can rebuild every rank's part of any checkpoint (more hosts lost than partner copies and parity cover) and the repository holds none: starting from the initial state"
                        )),
                        // Nothing survives, but the history record says the job ran.
                        None if l.ran_before() => Some(
                            "lazarus: this job ran before (the repository's level history records it), but no level holds a checkpoint of it that every rank can restore and the repository holds none: starting from the initial state".to_string(),
                        ),
                        None => None,
                    },
                    None => None,
                };
                if let Some(why) = why {
                    if me == Rank(0) {
                        let _ = writeln!(std::io::stderr().lock(), "{why}");
                    }
                    tracing::warn!("{why}");
                }
                self.step = 0;
                self.saved_at = None;
                self.report = None;
                self.finished = None;
                self.newest = None;
                self.fresh = Some(FreshStart { damaged });
                self.rt()?.marker(&Marker::Resumed {
                    id: None,
                    step: 0,
                    seq: None,
                });
            }
            Start::Restored { from, skipped } => {
                let finished = meta::is_finished(&from.app);
                self.step = from.step;
                self.saved_at = Some(from.step);
                self.finished = finished.then_some((from.id, from.step));
                self.newest = Some(from.id);
                let level = match from.source {
                    Source::Fast { .. } => plans.iter().find(|p| p.seq == from.id.0).map(|p| {
                        let parity = p.from_parity();
                        let lost = || {
                            let lost = self
                                .levels
                                .as_ref()
                                .map(|l| l.parity_member_hosts(p.seq, &parity))
                                .unwrap_or_default();
                            format!(
                                "L3 parity ({} {} lost)",
                                if lost.len() == 1 { "host" } else { "hosts" },
                                lost.join(", ")
                            )
                        };
                        if p.resharded(size) {
                            // The report adds "(written by N ranks, redistributed on M)".
                            if !parity.is_empty() {
                                return lost();
                            }
                            let mirrored = p.from_partner_copies();
                            if mirrored.is_empty() {
                                return "L1 node-local".to_string();
                            }
                            let ranks: Vec<String> =
                                mirrored.iter().map(|r| format!("rank {r}")).collect();
                            return format!(
                                "L2 partner copy (old {} from partner copies)",
                                ranks.join(", ")
                            );
                        }
                        let rebuilt = p.rebuilt();
                        if !parity.is_empty() {
                            lost()
                        } else if p.level == 1 {
                            "L1 node-local".to_string()
                        } else if rebuilt.is_empty() {
                            "L2 partner copy".to_string()
                        } else {
                            let ranks: Vec<String> =
                                rebuilt.iter().map(|r| format!("rank {r}")).collect();
                            format!(
                                "L2 partner copy (rebuilt {} from other hosts)",
                                ranks.join(", ")
                            )
                        }
                    }),
                    Source::Durable if self.levels.is_some() => {
                        Some("L4 durable repository".to_string())
                    }
                    Source::Durable => None,
                };
                let report = RestoreReport {
                    checkpoint: from.id,
                    step: from.step,
                    skipped,
                    written_by: from.world,
                    restored_on: size,
                    finished,
                    level,
                };
                if report.level.is_some() && me == Rank(0) {
                    let _ = writeln!(std::io::stderr().lock(), "lazarus: {report}");
                }
                tracing::info!("{report}");
                self.report = Some(report);
                self.fresh = None;
                // The restored checkpoint's job-wide number tells apart two cuts at
                // one step (`checkpoint_now`, then `finish`); a fast copy's id is it.
                let seq = match from.source {
                    Source::Fast { .. } => Some(from.id.0),
                    Source::Durable => meta::level_seq(&from.app),
                };
                self.rt()?.marker(&Marker::Resumed {
                    id: Some(from.id),
                    step: from.step,
                    seq,
                });
            }
        }
        Ok(state)
    }

    /// The level history (docs/LEVELS.md, "One history"): rank 0 writes the durable
    /// record of the run this incarnation continues (the path to the restored checkpoint,
    /// `None` for a fresh start, then this incarnation's lineage), and every rank learns
    /// whether it is durable. Until it is, no rank may report `resumed` nor write a
    /// checkpoint: a later restore must not pick a copy of the run this one abandons.
    /// A multi-level job always writes it; a job without levels only updates a record a
    /// multi-level run left (else a later multi-level run would take the copies this job
    /// abandoned for its current path). A failure fails the open on every rank (a
    /// restart retries it).
    fn record_history(&mut self, restored: Option<(u64, Option<&str>)>) -> Result<(), JobError> {
        let record = match (&self.levels, &self.prior_history) {
            (Some(levels), _) => Some(levels.history_after(restored)),
            (None, Some(prior)) => Some(lazarus_levels::History::after(
                Some(prior),
                restored,
                &lazarus_levels::history::new_lineage(),
            )),
            // Rank 0 of a job without levels and without a record (the others never know
            // of one): nothing to write.
            (None, None) => None,
        };
        let mut mine: Result<(), JobError> = Ok(());
        if let (Some(record), true) = (record, self.comm.rank() == Rank(0)) {
            let path = self.path.clone();
            mine = held(&mut self.runtime, self.lost).and_then(|rt| {
                let bytes = record.encode().map_err(JobError::Rank0)?;
                match rt.repository_mut() {
                    Some(repo) => repo
                        .write_level_history(&bytes)
                        .map_err(|source| JobError::Store { path, source }),
                    None => Err(JobError::Rank0(
                        "rank 0 holds no repository to record the level history in".into(),
                    )),
                }
            });
        }
        let mut outcome: Result<(), String> = mine.as_ref().map(|_| ()).map_err(|e| e.to_string());
        self.comm.clone().broadcast(Rank(0), &mut outcome)?;
        mine?;
        outcome.map_err(|why| {
            JobError::Rank0(format!(
                "recording the level history in the repository: {why}"
            ))
        })
    }

    /// The policy's answer, identical on every rank: local for step policies, rank 0's
    /// broadcast otherwise.
    fn decide(&mut self, at: Opportunity) -> Result<bool, JobError> {
        let comm = &self.comm;
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
    ///
    /// Asynchronous by default (docs/ASYNC.md): a save returns once `state` is copied into
    /// staging memory; the program may change it at once. The write, the votes and COMMIT
    /// run in the background; the next save first waits for them. A background failure is
    /// returned as [`JobError::Flush`] ([`JobError::LevelFlush`] for a checkpoint of fast
    /// levels only) by the first call that finds it (every call checks, without waiting). With [`JobBuilder::sync_writes`], the call returns once committed.
    pub fn checkpoint<T: Checkpoint + ?Sized>(&mut self, state: &T) -> Result<u64, JobError> {
        self.require_decided("checkpoint")?;
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
            self.save(state, false, Instant::now()).map(|_| ())
        } else {
            // A background flush that ended is reported now, not at the next save.
            let r = match self.flusher.as_mut() {
                Some(f) => f.poll(),
                None => Ok(None),
            };
            self.absorb(r)
        };
        self.step += 1;
        saved.map(|()| current)
    }

    /// Saves `state` now as the state after `step()` iterations, whatever the policy says
    /// (e.g. before a planned shutdown); does not count a step. Returns the checkpoint's id once
    /// the state is captured (asynchronous, as in [`Job::checkpoint`]); [`Job::flush`]
    /// waits until it is committed.
    pub fn checkpoint_now<T: Checkpoint + ?Sized>(
        &mut self,
        state: &T,
    ) -> Result<CheckpointId, JobError> {
        self.require_decided("checkpoint_now")?;
        self.save(state, false, Instant::now())
    }

    /// Records that the job is complete: saves `state` as its final state, after
    /// `step()` iterations, in a checkpoint marked finished (`lazarus.finished` in
    /// COMMIT). A rerun restores it, [`Job::is_finished`] is true and, with the loop of
    /// [the step contract](Job#the-step-contract), no iteration runs again. Called on a
    /// job that is already finished at this step (the rerun), it saves nothing and returns
    /// that checkpoint. Collective: every rank calls it, like `checkpoint`. Retention
    /// keeps it (it is the newest), so the result stays restorable until a later run
    /// writes newer checkpoints. Always synchronous: it first waits for the checkpoint
    /// being written in the background (returning its failure, [`JobError::Flush`] or
    /// [`JobError::LevelFlush`], after
    /// saving) and returns once the final checkpoint is committed.
    pub fn finish<T: Checkpoint + ?Sized>(&mut self, state: &T) -> Result<CheckpointId, JobError> {
        self.require_decided("finish")?;
        // The stall counts from the call: it includes the wait for the previous flush.
        let started = Instant::now();
        if let Some((id, step)) = self.finished {
            // A checkpoint still in flight is waited for, and its failure reported.
            self.settle()?;
            if step == self.step && self.newest == Some(id) {
                return Ok(id);
            }
        }
        self.save(state, true, started)
    }

    /// Refuses a save before the restore decision: a new run that forgot
    /// `restore_or_init` would write step-0 checkpoints that supersede (and, through
    /// retention, delete) the repository's newest ones. Every rank refuses alike.
    fn require_decided(&self, call: &str) -> Result<(), JobError> {
        if self.decided {
            return Ok(());
        }
        Err(JobError::Config(format!(
            "Job::{call} before the restore decision: call restore_or_init (or \
             restore_or_try_init, restore_or_init_with) first, so that the job continues from \
             the newest checkpoint in {} instead of writing step-0 checkpoints over it",
            self.path.display()
        )))
    }

    /// Saves `state` (the policy said so, or `checkpoint_now`/`finish`). First waits for
    /// the previous background flush (back-pressure: one in flight, commits in order); a
    /// failure of that flush is returned after this checkpoint was taken, so every rank
    /// still takes part in every round. `started` is when the call began: the stall
    /// (COMMIT's `lazarus.stall_us`, the policy's cost, [`CheckpointReport::stall`])
    /// includes the wait for the previous flush, which the program paid too
    /// (docs/ASYNC.md).
    fn save<T: Checkpoint + ?Sized>(
        &mut self,
        state: &T,
        finished: bool,
        started: Instant,
    ) -> Result<CheckpointId, JobError> {
        let earlier = self.settle();
        let now = self.save_now(state, finished, started);
        if let Ok(id) = &now {
            // A save at the finished step after `finish` supersedes the finished
            // checkpoint: `finish` must save again and `is_finished` is false, as a rerun
            // restoring the newer one says.
            self.newest = Some(*id);
        }
        match (earlier, now) {
            (Ok(()), now) => now,
            (Err(e), Err(later)) => Err(reported_of_two(e, later)),
            (Err(e), Ok(_)) => Err(e),
        }
    }

    fn save_now<T: Checkpoint + ?Sized>(
        &mut self,
        state: &T,
        finished: bool,
        started: Instant,
    ) -> Result<CheckpointId, JobError> {
        let step = self.step;
        // Taken at the call on every rank, whatever the path (levels or not, background or
        // not) and whatever the outcome on this rank: a second call at this step must
        // skip on every rank alike. Set only on success, a rank whose save failed alone
        // (its state, its staging, a full disk) saved again at this step while the others
        // skipped, and its part of this step joined their next round: one COMMIT holding
        // two steps (regression test
        // `a_checkpoint_now_that_failed_on_one_rank_does_not_mix_steps`).
        self.saved_at = Some(step);
        let mut meta = CommitMeta {
            step,
            app: self.app.clone(),
        };
        if finished {
            meta.app.insert(meta::FINISHED_KEY.into(), "true".into());
        }
        // Which levels this checkpoint goes to (docs/LEVELS.md); without levels: L4.
        let (seq, due) = match &mut self.levels {
            Some(l) => {
                let seq = l.take_seq();
                let now = Instant::now();
                let mut due = l.levels().due_at(seq, &self.level_clock, now);
                if l.levels().has_intervals() && self.comm.size() > 1 {
                    // Time is rank 0's: every rank must write the same levels.
                    let mut bits = due.to_bits();
                    self.comm.clone().broadcast(Rank(0), &mut bits)?;
                    due = Due::from_bits(bits);
                }
                if finished {
                    // The job's result goes where it lasts: the durable repository if any.
                    if l.levels().has_l4() {
                        due.l4 = true;
                    } else {
                        due.l1 = true;
                    }
                }
                meta.app.insert(meta::LEVEL_SEQ_KEY.into(), seq.to_string());
                meta.app
                    .insert(lazarus_levels::LINEAGE_KEY.into(), l.lineage().to_string());
                (Some(seq), due)
            }
            None => (
                None,
                Due {
                    l4: true,
                    ..Due::default()
                },
            ),
        };
        if let Some(seq) = seq {
            // Where this checkpoint call sits in the output, for the supervisor's output
            // commit after a restore from a level it cannot see (docs/LEVELS.md).
            // Not `?`: every rank must reach the level round below (it is collective).
            if let Ok(rt) = self.rt() {
                rt.marker(&Marker::Cut { seq, step });
            }
        }
        // The managed files join the part (issue #17): same round, same cut on every rank.
        let snap = match self.files.as_ref().map(Files::snapshot).transpose() {
            Ok(s) => s,
            Err(e) => {
                fail_rounds(
                    &mut self.levels,
                    &mut self.runtime,
                    self.lost,
                    &e.to_string(),
                    &meta,
                    due,
                    None,
                )?;
                return Err(JobError::Files(e));
            }
        };
        let objects = match lazarus_state::save(state) {
            Ok(objects) => objects,
            Err(source) => {
                // Still take part, voting Failed, so the other ranks are not left waiting.
                fail_rounds(
                    &mut self.levels,
                    &mut self.runtime,
                    self.lost,
                    &source.to_string(),
                    &meta,
                    due,
                    None,
                )?;
                return Err(JobError::Save { step, source });
            }
        };
        // In the background: neither the final checkpoint (finish returns once it is
        // committed) nor managed files (their snapshot is mapped, not copied). A state
        // over the staging budget is captured in pieces (docs/ASYNC.md); with fast levels
        // it is written synchronously instead (docs/LEVELS.md).
        let background = self.flusher.is_some() && !finished && snap.is_none();
        if background && self.levels.is_none() {
            drop(snap);
            return self.save_in_background(objects, meta, started);
        }
        // With fast levels, one order on every rank, in the background or not: the
        // durable round begins at the call, the level round runs, the durable round
        // completes (`flush::rounds`).
        let begun = if self.levels.is_some() && due.l4 {
            Some(held(&mut self.runtime, self.lost)?.begin_round(&meta))
        } else {
            None
        };
        let mut objects = objects;
        let mut begun = begun;
        if let (Some(seq), true) = (seq, background) {
            if !matches!(begun, Some(Err(_))) {
                let durable = match (&mut begun, self.runtime.as_mut()) {
                    (Some(Ok(b)), Some(rt)) => Some(rt.capture_target(b)),
                    _ => None,
                };
                let budget = self.staging_budget;
                match level_capture(
                    &mut self.levels,
                    &mut self.pool,
                    budget,
                    objects,
                    due,
                    durable,
                ) {
                    LevelCapture::Staged {
                        staged,
                        captured,
                        l1,
                    } => {
                        drop(snap);
                        let fast = Some((seq, due, l1));
                        let begun = begun.and_then(Result::ok);
                        return self.hand_off(staged, captured, begun, fast, meta, started);
                    }
                    LevelCapture::Synchronous(o) => objects = o,
                    LevelCapture::Failed(e) => {
                        // This rank's rounds still run (they are collective), failed.
                        fail_rounds(
                            &mut self.levels,
                            &mut self.runtime,
                            self.lost,
                            &e.to_string(),
                            &meta,
                            due,
                            begun.and_then(Result::ok),
                        )?;
                        return Err(e.into_job_error(step));
                    }
                }
            }
        }
        if let Some(s) = &snap {
            objects.extend(s.objects());
        }
        let (fast, round) = match (seq, self.levels.as_mut()) {
            (Some(seq), Some(l)) => {
                let rt = held(&mut self.runtime, self.lost)?;
                let levels = due.fast().then_some((l, seq, due, L1Part::Whole));
                let (fast, round) = flush::rounds(rt, levels, begun, &objects, &meta);
                (
                    fast.map(|r| r.map_err(|source| JobError::Level { step, source })),
                    round,
                )
            }
            _ => {
                let round = if due.l4 {
                    Some(held(&mut self.runtime, self.lost)?.round(&objects, &meta))
                } else {
                    None
                };
                (None, round)
            }
        };
        drop(objects);
        let Some(round) = round else {
            // Fast levels only: every rank learnt the outcome in the level round.
            let r = match fast {
                Some(r) => r?,
                None => return Err(JobError::Config("no level due for this checkpoint".into())),
            };
            self.level_clock.written(due, Instant::now());
            let id = CheckpointId(seq.unwrap_or(0));
            let report = CheckpointReport {
                checkpoint: id,
                step,
                stall: started.elapsed(),
                write: r.l1 + r.l2 + r.l3,
                logical_bytes: r.logical_bytes,
                written_bytes: r.written_bytes,
                flush: None,
                captured_bytes: 0,
            };
            cost_taken(&mut *self.policy, step, report.stall);
            tracing::debug!("{report} (fast levels only)");
            self.last = Some(report);
            if finished {
                self.finished = Some((id, step));
            }
            return Ok(id);
        };
        if let Some(Err(e)) = &fast {
            // The durable copy of this checkpoint may still commit: the fast levels only
            // lose this one copy.
            tracing::warn!("{e}; the durable repository still gets this checkpoint");
        }
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
        let written = match fast {
            Some(Ok(_)) => due,
            _ => Due {
                l4: true,
                ..Due::default()
            },
        };
        self.level_clock.written(written, Instant::now());
        flush::retain(
            held(&mut self.runtime, self.lost)?,
            self.keep,
            done.checkpoint,
        );
        let report = CheckpointReport::of(&done, step, started.elapsed(), None);
        cost_taken(&mut *self.policy, step, report.stall);
        tracing::debug!("{report}");
        self.last = Some(report);
        if finished {
            self.finished = Some((done.checkpoint, step));
            // Spare chunk files kept for the next checkpoint: there is none.
            if let Some(repo) = held(&mut self.runtime, self.lost)?.repository_mut() {
                if let Err(e) = repo.clear_spares() {
                    tracing::warn!("removing spare chunk files: {e}");
                }
            }
            // The result is durable: node-local copies are no longer needed.
            if let Some(l) = &mut self.levels {
                if let Err(e) = l.clean() {
                    tracing::warn!("levels: cleaning node-local data: {e}");
                }
            }
        }
        Ok(done.checkpoint)
    }

    /// The asynchronous checkpoint: capture (copy the state into staging buffers), begin
    /// the round (every rank learns the checkpoint id, the `part` output marker goes out
    /// at this point of the program's output), then hand the round to the worker.
    fn save_in_background(
        &mut self,
        objects: Vec<lazarus_format::ObjectSpec<'_>>,
        meta: CommitMeta,
        started: Instant,
    ) -> Result<CheckpointId, JobError> {
        let step = meta.step;
        // An incremental capture copies only changed chunks (docs/ASYNC.md): possible when
        // a tracked object has a change hint and this Job's previous checkpoint committed
        // (its chunks are retained and the store holds their digests). Then, and over the
        // budget, the round begins first (its part writer knows the chunk size and what
        // the store holds), and the capture follows.
        let base = capture::incremental_base(self.last.map(|r| r.checkpoint), &objects);
        let full = capture::borrowed_bytes(&objects);
        let capture = if base.is_some() || full > self.staging_budget {
            Err(objects)
        } else {
            Ok((
                capture::stage(objects, std::mem::take(&mut self.pool)),
                full,
            ))
        };
        let runtime = self.rt()?;
        let begun = match runtime.begin_round(&meta) {
            Ok(b) => b,
            Err(source) => {
                if let Ok((staged, _)) = capture {
                    self.pool = staged.into_iter().map(|o| o.data.into_owned()).collect();
                }
                return Err(JobError::Round { step, source });
            }
        };
        let (begun, staged, captured) = match capture {
            Ok((staged, captured)) => (begun, staged, captured),
            Err(objects) => self.capture_late(objects, begun, &meta, base)?,
        };
        self.hand_off(staged, captured, Some(begun), None, meta, started)
    }

    /// The end of every asynchronous capture: the stall is known (recorded in the durable
    /// round `begun`, if any, and given to the policy as the checkpoint's cost, issue #16
    /// item 5), the step counts as saved, and the flush (the levels `fast` goes to, if
    /// any, then the rest of `begun`) is handed to the worker with the runtime. Returns
    /// the checkpoint's id: the durable one when L4 is due, else the job-wide number.
    fn hand_off(
        &mut self,
        staged: Vec<lazarus_format::ObjectSpec<'static>>,
        captured: u64,
        mut begun: Option<StartedRound>,
        fast: Option<(u64, Due, L1Part)>,
        meta: CommitMeta,
        started: Instant,
    ) -> Result<CheckpointId, JobError> {
        let step = meta.step;
        let stall = started.elapsed();
        if let Some(b) = &mut begun {
            b.set_stall(stall);
        }
        let checkpoint = match (&begun, &fast) {
            (Some(b), _) => b.checkpoint(),
            (None, Some((seq, _, _))) => CheckpointId(*seq),
            (None, None) => {
                return Err(JobError::Config("no level due for this checkpoint".into()))
            }
        };
        cost_taken(&mut *self.policy, step, stall);
        let Some(runtime) = self.runtime.take() else {
            return Err(JobError::FlushLost { checkpoint });
        };
        let due = fast.as_ref().map(|(_, due, _)| *due);
        let levels = match fast {
            Some((seq, due, l1)) if due.fast() => self.levels.take().map(|levels| LevelTask {
                levels,
                seq,
                due,
                l1,
            }),
            _ => None,
        };
        let task = Task {
            runtime,
            begun,
            levels,
            objects: staged,
            meta,
            keep: self.keep,
        };
        let info = InFlight {
            checkpoint,
            step,
            stall,
            captured,
            due,
        };
        self.submit(task, info)?;
        Ok(checkpoint)
    }

    /// Hands a flush to the worker; if the worker is gone, runs it here, synchronously
    /// (correct, only slower).
    fn submit(&mut self, task: Task, info: InFlight) -> Result<(), JobError> {
        let submitted = match self.flusher.as_mut() {
            Some(f) => f.submit(task, info),
            None => Err(Box::new(task)),
        };
        if let Err(task) = submitted {
            self.flusher = None;
            let done = flush::run(*task);
            self.absorb(Ok(Some((info, done))))?;
        }
        Ok(())
    }

    /// The capture after the round began (`begun`), for an incremental capture or a
    /// state over the staging budget ([`capture::capture_into`] into the round's part,
    /// [`AlignedRuntime::capture_target`]); returns the staged objects and the bytes
    /// copied.
    ///
    /// Incremental (`base`: this Job's previous committed checkpoint): the store says,
    /// now, which chunks of each tracked object are unchanged since `base`'s part (no
    /// cache of that part, as after a restart or a failed flush, means none); only the
    /// other chunks are copied and the part names the unchanged ones by digest. If even
    /// that copy is over the budget, the capture is a full one in pieces.
    ///
    /// Over the budget (issue #16 item 3): what fits in the budget is copied into staging
    /// (the heads, returned for the background flush), the rest written as durable
    /// chunks here, inside the call. So the call stalls for the copy plus the write of
    /// what does not fit, and staging never holds more than the budget. On failure the
    /// round is completed with this rank's failed vote before the error is returned.
    fn capture_late(
        &mut self,
        objects: Vec<lazarus_format::ObjectSpec<'_>>,
        mut begun: StartedRound,
        meta: &CommitMeta,
        base: Option<CheckpointId>,
    ) -> Result<(StartedRound, Vec<lazarus_format::ObjectSpec<'static>>, u64), JobError> {
        let step = meta.step;
        let budget = self.staging_budget;
        let pool = std::mem::take(&mut self.pool);
        let runtime = held(&mut self.runtime, self.lost)?;
        let written = capture::capture_into(
            &mut runtime.capture_target(&mut begun),
            objects,
            pool,
            budget,
            base,
        );
        match written {
            Ok((staged, captured)) => Ok((begun, staged, captured)),
            Err(source) => {
                // Vote Failed so no rank waits for this one; the round aborts everywhere.
                if let Err(e) = runtime.complete_round(begun, Err(source.to_string()), meta) {
                    tracing::debug!("round after a failed capture: {e}");
                }
                Err(JobError::Round { step, source })
            }
        }
    }

    /// Managed files (issue #17), restore phase 1 on this rank: check the tree and stage
    /// the target's changed chunks. Damage in the repository makes every rank fall back
    /// like damage in the state; a refusal (files changed outside the job) fails all.
    fn files_prepare(
        &self,
        id: CheckpointId,
        world: u32,
        size: u32,
    ) -> Result<Option<lazarus_files::RestorePlan>, LoadError<JobError>> {
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
    /// an incarnation that died before the first checkpoint are removed). Every rank
    /// learns whether all could through the agreement.
    fn files_fresh(&self) -> Result<(), JobError> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        files
            .prepare_restore(None)
            .map_err(|e| match e {
                lazarus_files::RestoreError::Files(e) => e,
                lazarus_files::RestoreError::Store(e) => {
                    FilesError::new(lazarus_files::FilesErrorKind::Io, None, e.to_string())
                }
            })
            .and_then(|plan| files.apply_restore(plan))
            .map_err(JobError::Files)
    }

    fn store_err(&self, source: StoreError) -> JobError {
        JobError::Store {
            path: self.path.clone(),
            source,
        }
    }
}

/// The capture of an asynchronous checkpoint of a [`Job`] with fast levels
/// (docs/LEVELS.md, "Asynchronous level rounds"); the flush then takes the levels and
/// the runtime (level round, then the rest of the durable round `durable` begun by the
/// caller when L4 is due).
///
/// A whole copy into staging when the state fits the staging budget and no
/// incremental capture is possible. Otherwise the parts are begun first
/// ([`capture::capture_into`]): this rank's next L1 checkpoint when a fast level is due
/// ([`L1Capture`]), and the durable round's part when L4 is. When L4 is not due (the
/// usual case, L4 being rare), only the chunks changed since the previous L1
/// checkpoint are copied if that fits the budget (the part names the others by digest,
/// as the durable path does). Over the budget, what fits is copied and the tails are
/// written inside the call into every part begun: L1 and, with L4 due, the durable
/// repository too. A capture that fails after it began (a full node-local disk, a
/// durable write error) is [`LevelCapture::Failed`]; one that cannot begin its L1
/// checkpoint is written synchronously ([`LevelCapture::Synchronous`]), whose round
/// meets and reports the same error.
fn level_capture<'a>(
    levels: &mut Option<NodeLevels>,
    pool_of_job: &mut Vec<Vec<u8>>,
    budget: u64,
    objects: Vec<lazarus_format::ObjectSpec<'a>>,
    due: Due,
    durable: Option<RoundTarget<'_>>,
) -> LevelCapture<'a> {
    let full = capture::borrowed_bytes(&objects);
    let Some(levels) = levels.as_mut() else {
        return LevelCapture::Synchronous(objects);
    };
    // A durable part in the checkpoint is hashed in full (`flush::rounds`), so the
    // capture is incremental only against L1, and only when L4 is not due.
    let base = if due.l4 {
        None
    } else {
        capture::incremental_base(levels.l1_base(), &objects)
    };
    if base.is_none() && full <= budget {
        return LevelCapture::Staged {
            staged: capture::stage(objects, std::mem::take(pool_of_job)),
            captured: full,
            l1: L1Part::Whole,
        };
    }
    if due.l4 && durable.is_none() {
        return LevelCapture::Synchronous(objects);
    }
    let mut l1 = None;
    if due.fast() {
        match levels.begin_capture() {
            Ok(c) => l1 = Some(c),
            Err(e) => {
                tracing::debug!("levels: beginning the L1 capture: {e}");
                return LevelCapture::Synchronous(objects);
            }
        }
    }
    let pool = std::mem::take(pool_of_job);
    let mut target = LevelTarget {
        l1: l1.as_mut(),
        durable,
        durable_failed: false,
        l1_failed: None,
    };
    let captured = capture::capture_into(&mut target, objects, pool, budget, base);
    let l1_failed = target.l1_failed.take();
    match captured {
        Ok((staged, captured)) => LevelCapture::Staged {
            staged,
            captured,
            l1: match (l1, l1_failed) {
                (Some(c), None) => L1Part::Captured(Box::new(c)),
                (Some(c), Some(e)) => {
                    levels.abort_capture(c);
                    L1Part::Failed(e)
                }
                (None, _) => L1Part::Whole,
            },
        },
        Err(e) => {
            if let Some(c) = l1 {
                levels.abort_capture(c);
            }
            LevelCapture::Failed(e)
        }
    }
}

/// The parts a capture with fast levels begins first ([`level_capture`]): this rank's
/// next L1 checkpoint, the durable round's part, or both (the tails written ahead go to
/// each, cut at a multiple of both chunk sizes). With both, a failure of one leaves the
/// other going, as in every other path (the level round and the durable round of one
/// checkpoint succeed or fail apart): a failed durable part votes Failed when its round
/// completes ([`AlignedRuntime::capture_target`]), a failed L1 part fails the level round
/// on this rank ([`L1Part::Failed`]); the capture fails only when every part it began
/// did.
struct LevelTarget<'r> {
    l1: Option<&'r mut L1Capture>,
    durable: Option<RoundTarget<'r>>,
    /// The durable part failed, the L1 part goes on.
    durable_failed: bool,
    /// The L1 part failed, the durable part goes on.
    l1_failed: Option<LevelError>,
}

impl LevelTarget<'_> {
    /// A durable step failed: an error only when no L1 part goes on without it.
    fn durable_error(&mut self, e: lazarus_coord::RoundError) -> Result<(), LevelCaptureError> {
        if self.l1.is_none() || self.l1_failed.is_some() {
            return Err(LevelCaptureError::Durable(e));
        }
        tracing::warn!(
            "the durable part of this checkpoint fails, the fast levels still get it: {e}"
        );
        self.durable_failed = true;
        Ok(())
    }
}

/// Why a capture with fast levels failed, by the part it was writing.
enum LevelCaptureError {
    L1(LevelError),
    Durable(lazarus_coord::RoundError),
}

impl LevelCaptureError {
    /// The error the checkpoint call returns.
    fn into_job_error(self, step: u64) -> JobError {
        match self {
            LevelCaptureError::L1(source) => JobError::Level { step, source },
            LevelCaptureError::Durable(source) => JobError::Round { step, source },
        }
    }
}

impl std::fmt::Display for LevelCaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LevelCaptureError::L1(e) => e.fmt(f),
            LevelCaptureError::Durable(e) => e.fmt(f),
        }
    }
}

impl capture::CaptureTarget for LevelTarget<'_> {
    type Error = LevelCaptureError;

    fn unchanged_since(
        &mut self,
        objects: &[lazarus_format::ObjectSpec<'_>],
        base: CheckpointId,
    ) -> Result<Vec<Option<lazarus_store::Unchanged>>, LevelCaptureError> {
        // Only an L1 part of its own may name chunks by digest (see `level_capture`).
        Ok(match (&self.l1, &self.durable) {
            (Some(l1), None) => capture::unchanged_since(l1.writer(), Rank(0), objects, base),
            _ => Vec::new(),
        })
    }

    fn reuse(&mut self, unchanged: Vec<lazarus_store::Unchanged>) -> Result<(), LevelCaptureError> {
        let Some(l1) = self.l1.as_mut() else {
            return Ok(());
        };
        for u in unchanged {
            l1.reuse(u).map_err(LevelCaptureError::L1)?;
        }
        Ok(())
    }

    fn chunk_size(&mut self) -> Result<u64, LevelCaptureError> {
        let l1 = self.l1.as_ref().map(|c| c.writer().chunk_size());
        let durable = match self.durable.as_mut().map(|d| d.chunk_size()) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                self.durable_error(e)?;
                None
            }
            None => None,
        };
        Ok(match (l1, durable) {
            (Some(a), Some(b)) => lcm(a, b),
            (a, b) => a.or(b).unwrap_or(1),
        })
    }

    fn write_ahead(&mut self, tails: &[capture::Tail<'_>]) -> Result<(), LevelCaptureError> {
        if !self.durable_failed {
            if let Some(Err(e)) = self.durable.as_mut().map(|d| d.write_ahead(tails)) {
                self.durable_error(e)?;
            }
        }
        if let Some(Err(e)) = self.l1.as_mut().map(|l1| l1.write_ahead(tails)) {
            if self.durable.is_none() || self.durable_failed {
                return Err(LevelCaptureError::L1(e));
            }
            tracing::warn!(
                "the L1 part of this checkpoint fails, the durable repository still gets it: {e}"
            );
            self.l1_failed = Some(e);
        }
        Ok(())
    }

    fn staging_failed(source: lazarus_store::StoreError) -> LevelCaptureError {
        LevelCaptureError::L1(LevelError::l1(source))
    }
}

/// The least common multiple of two chunk sizes (both are powers of two in practice;
/// saturating, so a pair that overflows cuts nothing off and stages less).
fn lcm(a: u64, b: u64) -> u64 {
    let (mut x, mut y) = (a.max(1), b.max(1));
    while y != 0 {
        (x, y) = (y, x % y);
    }
    (a.max(1) / x).saturating_mul(b.max(1))
}

/// What [`level_capture`] did with the state.
enum LevelCapture<'a> {
    /// Captured: the staged objects (whole, sparse or heads only), the bytes copied, and
    /// this rank's L1 part (begun for them, failed, or whole for a whole copy or with L4
    /// alone due).
    Staged {
        staged: Vec<lazarus_format::ObjectSpec<'static>>,
        captured: u64,
        l1: L1Part,
    },
    /// Not captured: written inside the call, as a synchronous checkpoint.
    Synchronous(Vec<lazarus_format::ObjectSpec<'a>>),
    /// The capture failed on this rank after it began, in every part it began (nothing
    /// staged).
    Failed(LevelCaptureError),
}

/// The runtime the Job holds (no flush in flight), or why it has none.
/// Takes part in a checkpoint's rounds as a rank that failed before writing (it votes
/// Failed), so the other ranks are not left waiting: the level round when a fast level is
/// due, the durable round when L4 is. (Free-standing: the caller may hold a borrow of the
/// Job's managed files.)
fn fail_rounds(
    levels: &mut Option<NodeLevels>,
    runtime: &mut Option<AlignedRuntime>,
    lost: Option<CheckpointId>,
    why: &str,
    meta: &CommitMeta,
    due: Due,
    begun: Option<StartedRound>,
) -> Result<(), JobError> {
    match levels.as_mut() {
        Some(l) if due.fast() => {
            // The order of every rank's rounds (`Job::save_now`): the durable round
            // begins (unless the caller began it), the level round runs, the durable
            // round completes.
            let seq = meta::level_seq(&meta.app).unwrap_or(0);
            let begun = match begun {
                Some(b) => Some(Ok(b)),
                None if due.l4 => Some(held(runtime, lost)?.begin_round(meta)),
                None => None,
            };
            let _ = l.fail(seq, why, due);
            if let Some(Ok(b)) = begun {
                let _ = held(runtime, lost)?.complete_round(b, Err(why.to_string()), meta);
            }
        }
        _ => match begun {
            Some(b) => {
                let _ = held(runtime, lost)?.complete_round(b, Err(why.to_string()), meta);
            }
            None if due.l4 => {
                let _ = held(runtime, lost)?.round_failed(why.to_string(), meta);
            }
            None => {}
        },
    }
    Ok(())
}

/// Tells `policy` that the checkpoint of `step` cost the program `stall`, now that it is
/// over: the interval counts from the end of a checkpoint (docs/POLICY.md), so one longer
/// than the interval does not make the next step checkpoint again.
fn cost_taken(policy: &mut dyn Policy, step: u64, stall: Duration) {
    policy.checkpoint_taken(
        Opportunity {
            step,
            now: Instant::now(),
        },
        stall,
    );
}

fn held(
    runtime: &mut Option<AlignedRuntime>,
    lost: Option<CheckpointId>,
) -> Result<&mut AlignedRuntime, JobError> {
    runtime.as_mut().ok_or(JobError::FlushLost {
        checkpoint: lost.unwrap_or(CheckpointId(0)),
    })
}

impl Drop for Job {
    /// Waits for the checkpoint being written in the background: it commits (or fails)
    /// before the process can exit through a normal return. A failure cannot be returned
    /// from Drop, so it is logged and said on stderr; call [`Job::finish`] or
    /// [`Job::flush`] to get it as an error.
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            tracing::error!("{e}");
            let _ = writeln!(std::io::stderr().lock(), "lazarus: {e}");
        }
    }
}

/// What one rank loaded of the agreed checkpoint: its state objects and the managed
/// files' restore plan.
type Loaded = (Vec<LoadedObject>, Option<lazarus_files::RestorePlan>);

/// The previous flush and this checkpoint both failed: the error returned is the one that
/// forbids going on, so a retryable error (a full disk) never hides a fatal one (a dead
/// rank); otherwise the earlier. The other is logged, never dropped.
fn reported_of_two(earlier: JobError, later: JobError) -> JobError {
    if earlier.is_retryable() && !later.is_retryable() {
        tracing::warn!("{earlier}; then: {later}");
        later
    } else {
        tracing::warn!("after {earlier}: {later}");
        earlier
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazarus_store::{StoreError, StoreErrorKind};
    use std::path::PathBuf;

    fn store(kind: StoreErrorKind) -> JobError {
        JobError::Store {
            path: PathBuf::from("repo"),
            source: StoreError::new(kind, None, "test"),
        }
    }

    /// Regression: with both failing, the earlier (retryable, full disk) error was returned
    /// and the later fatal one only logged, so the program went on as if it could retry.
    #[test]
    fn a_retryable_flush_error_does_not_hide_a_fatal_checkpoint_error() {
        let full = || store(StoreErrorKind::NoSpace);
        let fatal = || store(StoreErrorKind::Corrupt);
        assert!(full().is_retryable() && !fatal().is_retryable());
        assert!(!reported_of_two(full(), fatal()).is_retryable());
        assert!(!reported_of_two(fatal(), full()).is_retryable());
        // Both retryable (or both fatal): the earlier, which names the older checkpoint.
        let e = reported_of_two(full(), store(StoreErrorKind::Locked));
        assert!(
            matches!(e, JobError::Store { source, .. } if source.kind() == StoreErrorKind::NoSpace)
        );
    }
}
