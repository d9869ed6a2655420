//! The restart loop around [`Launcher::run`].

use crate::output::{split_at_marker, Marker, OutputCommit};
use crate::plan::{KillPlan, KillTrigger, ResolvedKill};
use crate::report::{FailureReport, JobEnd, OutputLine, Refusal, Report, RestorePoint};
use crate::shrink::{self, Shrink};
use lazarus_format::{count, Rank};
use lazarus_net::launch::shim::ENV_HOST as HOST_ENV;
use lazarus_net::launch::{HostSpec, LaunchConfig, LaunchObserver, Launcher};
use lazarus_net::{JobToken, NetError};
use lazarus_policy::FailureHistory;
use lazarus_store::{CheckpointSummary, RepoOptions, RepoReader, Repository, StoreError};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Variable telling the Job to write output-commit markers on stdout (with its key).
pub use lazarus_coord::OUTPUT_MARKERS_ENV;
/// Variable naming the repository (read by `lazarus::Job`).
pub const REPO_ENV: &str = "LAZARUS_REPO";

/// Errors that stop the supervisor before or between launches (a rank failing is not an
/// error: it is handled, and reported in [`Report`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// The configuration is unusable.
    #[error("invalid supervisor configuration: {0}")]
    Config(String),
    /// The repository could not be opened, locked or read.
    #[error("checkpoint repository {path}: {source}")]
    Repo {
        /// repository root
        path: PathBuf,
        /// the store's error
        source: StoreError,
    },
    /// The ranks could not be started.
    #[error("launching incarnation {incarnation}: {source}")]
    Launch {
        /// which launch
        incarnation: u64,
        /// the launcher's error
        source: NetError,
    },
}

/// What to supervise. Built from a [`LaunchConfig`]; its `token`, `observer`, `incarnation`
/// and `rank_env` are managed by the supervisor.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// The job (ranks, program, args, env, timeouts).
    pub launch: LaunchConfig,
    /// The checkpoint repository; exported to the ranks as `LAZARUS_REPO`.
    pub repo: PathBuf,
    /// Restarts allowed before giving up.
    pub max_restarts: u32,
    /// Fault injection (empty by default).
    pub kill_plan: KillPlan,
    /// Print released stdout lines (with the `[rank r]` prefix) on this process's stdout.
    pub echo_output: bool,
    /// Keep released stdout lines in [`Report::output`].
    pub capture_output: bool,
    /// Print one human line per failure/restart on stderr.
    pub progress: bool,
    /// After a rank failure, restart on one rank fewer (down to a minimum) instead of the
    /// same number; `None` (default) restarts on the same number. See [`Shrink`].
    /// Under a multi-host engine it applies to lost hosts only (by their ranks).
    pub shrink: Option<Shrink>,
    /// Hosts for a multi-host engine (`launch.engine`), in order; empty: the engine's own
    /// (a Slurm allocation's nodes). The supervisor places the ranks on them.
    pub hosts: Vec<HostSpec>,
    /// The last `spares` hosts replace lost ones (SCR-style); see `hosts.rs`.
    pub spares: u32,
    /// The ranks keep fast checkpoint levels (node-local, partner, parity;
    /// docs/LEVELS.md) that the supervisor does not read: a restart may resume from a
    /// newer checkpoint than the repository's newest, and the reports say so.
    pub fast_levels: bool,
}

impl SupervisorConfig {
    /// Supervises `launch` with checkpoints in `repo`, 3 restarts, no fault injection,
    /// output echoed, progress on stderr.
    pub fn new(launch: LaunchConfig, repo: impl Into<PathBuf>) -> Self {
        SupervisorConfig {
            launch,
            repo: repo.into(),
            max_restarts: 3,
            kill_plan: KillPlan::none(),
            echo_output: true,
            capture_output: false,
            progress: true,
            shrink: None,
            hosts: Vec::new(),
            spares: 0,
            fast_levels: false,
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A process handle that cannot hit a recycled pid (Linux pidfd), else the bare pid.
#[derive(Debug)]
struct Victim {
    pid: u32,
    #[cfg(target_os = "linux")]
    fd: Option<std::os::fd::OwnedFd>,
}

impl Victim {
    fn new(pid: u32) -> Self {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::FromRawFd;
            // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
            let fd = (fd >= 0).then(|| {
                // SAFETY: fd is a fresh descriptor we own.
                unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
            });
            Victim { pid, fd }
        }
        #[cfg(not(target_os = "linux"))]
        Victim { pid }
    }

    fn kill(&self) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            use std::os::fd::AsRawFd;
            // SAFETY: valid pidfd; a null siginfo is allowed.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
            return;
        }
        // SAFETY: plain kill(2) on a child we spawned and have not waited for here.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// What the stdout writer thread is asked to do.
#[derive(Debug)]
enum ToStdout {
    Bytes(Vec<u8>),
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// Released lines go to this process's stdout through one thread, in release order, never
/// written from under the [`Shared`] lock: a slow reader of our stdout (`| less`, a
/// paused terminal) then blocks only that thread, not the launcher's output threads.
/// (Found in review: a pump releasing lines blocked on a full stdout pipe while holding
/// the lock, the other ranks' pumps waited for it, the launcher gave up on them at the
/// end of a successful job and closed its sink: their last lines were lost.)
///
/// Queuing never blocks (it happens under the lock, which the launcher's failure
/// detection also takes: found in review, a bounded queue that filled up stalled it).
/// The bound is applied outside the lock instead: a rank's output thread that released
/// lines waits while more than [`STDOUT_BACKLOG_BYTES`] wait for stdout
/// ([`StdoutWriter::wait_for_room`]), so a reader that stays away for good (a `less`
/// left paused) eventually blocks the ranks' output again, as a pipe would, instead of
/// growing this process's memory without bound.
#[derive(Clone, Debug)]
struct StdoutWriter {
    tx: std::sync::mpsc::Sender<ToStdout>,
    /// Bytes queued and not yet written, and the writer's signal that it wrote some.
    backlog: Arc<(Mutex<usize>, std::sync::Condvar)>,
}

/// Released bytes that may wait for a slow stdout before ranks' output threads wait.
const STDOUT_BACKLOG_BYTES: usize = 16 << 20;

impl StdoutWriter {
    /// The writer thread; `None` if it cannot be started (lines are then written directly).
    fn spawn() -> Option<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<ToStdout>();
        let backlog = Arc::new((Mutex::new(0usize), std::sync::Condvar::new()));
        let written = backlog.clone();
        std::thread::Builder::new()
            .name("lazarus-stdout".into())
            .spawn(move || {
                for m in rx {
                    let mut o = std::io::stdout().lock();
                    match m {
                        // A closed or full stdout changes nothing about the job.
                        ToStdout::Bytes(b) => {
                            let _ = o.write_all(&b);
                            let (n, cv) = &*written;
                            let mut n = n.lock().unwrap_or_else(|e| e.into_inner());
                            *n = n.saturating_sub(b.len());
                            cv.notify_all();
                        }
                        ToStdout::Flush(ack) => {
                            let _ = o.flush();
                            let _ = ack.send(());
                        }
                    }
                }
            })
            .ok()
            .map(|_| StdoutWriter { tx, backlog })
    }

    /// Queues `bytes`; never blocks.
    fn write(&self, bytes: Vec<u8>) {
        let len = bytes.len();
        *self.backlog.0.lock().unwrap_or_else(|e| e.into_inner()) += len;
        if let Err(e) = self.tx.send(ToStdout::Bytes(bytes)) {
            let ToStdout::Bytes(b) = e.0 else { return };
            let _ = std::io::stdout().lock().write_all(&b);
            let mut n = self.backlog.0.lock().unwrap_or_else(|e| e.into_inner());
            *n = n.saturating_sub(len);
        }
    }

    /// Waits while more than [`STDOUT_BACKLOG_BYTES`] wait for stdout. Call it without
    /// holding the [`Shared`] lock.
    fn wait_for_room(&self) {
        let (n, cv) = &*self.backlog;
        let mut n = n.lock().unwrap_or_else(|e| e.into_inner());
        while *n > STDOUT_BACKLOG_BYTES {
            n = match cv.wait_timeout(n, Duration::from_millis(200)) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Returns once everything sent before is written (or stdout failed).
    fn flush(&self) {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(ToStdout::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }
}

/// Where released lines are printed, when echoing.
#[derive(Clone, Debug)]
enum Echo {
    Off,
    Thread(StdoutWriter),
    Direct,
}

/// Shared between the launcher's output threads, the kill thread and the restart loop.
#[derive(Debug)]
struct Shared {
    out: OutputCommit,
    victims: Vec<Option<Victim>>,
    spawned_at: Option<Instant>,
    /// A kill planned for a remote engine fired (its shim reported it).
    injected_at: Option<Instant>,
    commits: u64,
    commits_this_run: u32,
    last_step: Option<u64>,
    resumed: Vec<Option<Instant>>,
    captured: Vec<OutputLine>,
    echo: Echo,
    capture: bool,
    bad_markers: u64,
    /// The supervisor's repository as `repo_location` normalizes it.
    repo: String,
    /// Set by a rank's marker: stop instead of restarting.
    refusal: Option<Refusal>,
    /// The key every marker of this job carries (`LAZARUS_OUTPUT_MARKERS`).
    marker_key: String,
}

impl Shared {
    fn new(ranks: u32, echo: Echo, capture: bool, repo: String, marker_key: String) -> Self {
        Shared {
            out: OutputCommit::new(ranks, &marker_key),
            victims: Vec::new(),
            spawned_at: None,
            injected_at: None,
            commits: 0,
            commits_this_run: 0,
            last_step: None,
            resumed: Vec::new(),
            captured: Vec::new(),
            echo,
            capture,
            bad_markers: 0,
            repo,
            refusal: None,
            marker_key,
        }
    }

    fn emit(&mut self, lines: Vec<(u32, Vec<u8>)>) {
        if lines.is_empty() {
            return;
        }
        if !matches!(self.echo, Echo::Off) {
            let mut buf = Vec::new();
            for (r, l) in &lines {
                buf.extend_from_slice(format!("[rank {r}] ").as_bytes());
                buf.extend_from_slice(l);
            }
            match &self.echo {
                Echo::Thread(w) => w.write(buf),
                Echo::Direct => {
                    let _ = std::io::stdout().lock().write_all(&buf);
                }
                Echo::Off => {}
            }
        }
        if self.capture {
            for (r, l) in lines {
                let text = String::from_utf8_lossy(&l)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                self.captured.push(OutputLine {
                    rank: Rank(r),
                    text,
                });
            }
        }
    }

    fn new_launch(&mut self, ranks: u32) {
        self.victims = (0..ranks).map(|_| None).collect();
        self.resumed = vec![None; ranks as usize];
        self.spawned_at = None;
        self.injected_at = None;
        self.commits_this_run = 0;
        self.last_step = None;
        self.refusal = None;
    }

    /// A rank opened `location`: another repository than ours stops the job at once, before
    /// it writes checkpoints where no supervisor looks.
    fn check_repo(&mut self, rank: u32, location: &str) {
        if location == self.repo || self.refusal.is_some() {
            return;
        }
        self.refusal = Some(Refusal::RepoMismatch {
            rank: Rank(rank),
            supervisor: self.repo.clone(),
            rank_repo: location.to_string(),
        });
        for v in self.victims.iter().flatten() {
            v.kill();
        }
    }
}

/// How a job that a refusal stopped ends, and its exit status; says why on stderr.
fn refused(refusal: Refusal, say: bool) -> (JobEnd, i32) {
    if say {
        progress(format_args!("lazarus: {refusal}"));
    }
    let code = refusal.exit_code();
    (JobEnd::Refused(refusal), code)
}

/// The newest committed checkpoint of `reader`'s repository (`None`: none), its COMMIT
/// read but not verified.
fn newest_commit(reader: &RepoReader) -> Result<Option<CheckpointSummary>, StoreError> {
    Ok(reader.committed()?.into_iter().max_by_key(|c| c.id))
}

/// One progress line on stderr; a closed or full stderr changes nothing about the job.
pub(crate) fn progress(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The launcher's view of the job: the shared state, and the stdout writer whose
/// back-pressure a rank's output thread waits for outside the lock (fixed for the run,
/// so it is not looked up under the lock per line).
#[derive(Debug)]
struct Observer(Arc<Mutex<Shared>>, Option<StdoutWriter>);

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic elsewhere must not silence the job's output: keep using the data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LaunchObserver for Observer {
    fn spawned(&self, rank: u32, pid: u32) {
        let mut s = lock(&self.0);
        s.spawned_at.get_or_insert_with(Instant::now);
        if let Some(v) = s.victims.get_mut(rank as usize) {
            *v = Some(Victim::new(pid));
        }
    }

    fn launched(&self) {
        lock(&self.0).spawned_at.get_or_insert_with(Instant::now);
    }

    fn injected(&self, _rank: u32) {
        lock(&self.0).injected_at.get_or_insert_with(Instant::now);
    }

    /// A rank opened another repository: every rank stops now, also on other hosts,
    /// where `check_repo` has no pid to kill (remote engines).
    fn stop_requested(&self) -> bool {
        matches!(lock(&self.0).refusal, Some(Refusal::RepoMismatch { .. }))
    }

    fn stdout_line(&self, rank: u32, line: &[u8]) -> bool {
        let taken = self.take_stdout_line(rank, line);
        // Back-pressure from a slow stdout, outside the lock (see `StdoutWriter`).
        if let Some(w) = &self.1 {
            w.wait_for_room();
        }
        taken
    }
}

impl Observer {
    /// One whole line of `rank`'s stdout (or its cut last line): a marker settles the
    /// output commit, text is held; what becomes releasable is queued for stdout.
    fn take_stdout_line(&self, rank: u32, line: &[u8]) -> bool {
        let mut s = lock(&self.0);
        if line.last() != Some(&b'\n') {
            // The stream ended inside this line. A marker cut short can still parse,
            // with a shorter number (`resumed 5 50 12` as `resumed 5 50 1`), and would
            // settle the output wrongly: nothing in a cut line is read as a marker.
            s.out.unterminated(rank, line.to_vec());
            return true;
        }
        // A marker written into the middle of an unfinished line: the text before it
        // keeps its place, joined to the rest of its line later.
        let line = match split_at_marker(line, &s.marker_key) {
            Some((text, marker)) => {
                s.out.fragment(rank, text.to_vec());
                marker
            }
            None => line,
        };
        match Marker::parse(line, &s.marker_key) {
            None => s.out.line(rank, line.to_vec()),
            Some(Err(e)) => {
                s.bad_markers += 1;
                tracing::warn!("rank {rank}: ignoring malformed output marker: {e}");
            }
            Some(Ok(Marker::Commit { id, .. })) if rank != 0 => {
                // Only rank 0 commits; another rank's `commit` is a bug, not a decision.
                s.bad_markers += 1;
                tracing::warn!("rank {rank}: ignoring a commit marker of checkpoint {id}: only rank 0 writes them");
            }
            Some(Ok(m)) => {
                match &m {
                    Marker::Part { step, .. }
                    | Marker::Commit { step, .. }
                    | Marker::Cut { step, .. } => {
                        let step = *step;
                        s.last_step = Some(s.last_step.map_or(step, |x| x.max(step)));
                    }
                    Marker::Resumed { .. } => {}
                    Marker::Repo { location } => s.check_repo(rank, location),
                    Marker::Refused { message } => {
                        if s.refusal.is_none() {
                            s.refusal = Some(Refusal::Restore {
                                rank: Rank(rank),
                                message: message.clone(),
                            });
                        }
                    }
                }
                if let Marker::Commit { .. } = m {
                    s.commits += 1;
                    s.commits_this_run += 1;
                }
                if let Marker::Resumed { .. } = m {
                    if let Some(t) = s.resumed.get_mut(rank as usize) {
                        t.get_or_insert_with(Instant::now);
                    }
                }
                let rel = s.out.marker(rank, m);
                s.emit(rel);
            }
        }
        true
    }
}

/// Runs a job under supervision; see the crate documentation.
#[derive(Debug)]
pub struct Supervisor;

impl Supervisor {
    /// Runs the job to completion, restarting it from the newest committed checkpoint after
    /// each failure, at most `max_restarts` times. Holds the repository lock (with the job's
    /// token, which rank 0 shares through `open_shared`) for the whole call. `Err` only when
    /// the repository cannot be used or ranks cannot be started.
    pub fn run(cfg: &SupervisorConfig) -> Result<Report, SupervisorError> {
        let echo = match cfg.echo_output {
            false => Echo::Off,
            true => StdoutWriter::spawn().map_or(Echo::Direct, Echo::Thread),
        };
        let result = Self::run_echoing(cfg, echo.clone());
        // Every released line is out before the caller reports the end of the job.
        if let Echo::Thread(w) = &echo {
            w.flush();
        }
        result
    }

    fn run_echoing(cfg: &SupervisorConfig, echo: Echo) -> Result<Report, SupervisorError> {
        let mut n = cfg.launch.ranks;
        if n == 0 {
            return Err(SupervisorError::Config("-n must be at least 1".into()));
        }
        if let Some(sh) = cfg.shrink {
            if sh.min_ranks == 0 || sh.min_ranks > n {
                return Err(SupervisorError::Config(format!(
                    "the minimum number of ranks ({}) must be in 1..={n}",
                    sh.min_ranks
                )));
            }
        }
        let token = JobToken::random();
        let repo_err = |source| SupervisorError::Repo {
            path: cfg.repo.clone(),
            source,
        };
        let opts = RepoOptions {
            job_token: Some(token.expose()),
            ..RepoOptions::default()
        };
        let mut pool = crate::hosts::pool_for(cfg)?;
        let waiting = Instant::now();
        if let Err(sig) =
            crate::fence::wait_for_dead_jobs_ranks(&cfg.repo, &cfg.launch.net, cfg.progress)
        {
            // Interrupted before anything started: nothing launched, the lock untouched.
            return Ok(Report {
                hosts: pool.as_ref().map(crate::hosts::HostPool::report),
                ranks: n,
                end: JobEnd::Interrupted(sig),
                failures: Vec::new(),
                launches: 0,
                commits: 0,
                elapsed: waiting.elapsed(),
                output: Vec::new(),
                last_exit_code: 128 + sig,
            });
        }
        let _lock = Repository::open(&cfg.repo, opts).map_err(repo_err)?;
        let repo_location = lazarus_store::repo_location(&cfg.repo);
        let t0 = Instant::now();
        let mut history = FailureHistory::starting_at(unix_ms() as f64 / 1000.0)
            .map_err(|e| SupervisorError::Config(e.to_string()))?;
        // One key for every launch of this job: a late line of an earlier launch is
        // still read as the marker it is.
        let marker_key = format!("{:032x}", rand::random::<u128>());
        let writer = match &echo {
            Echo::Thread(w) => Some(w.clone()),
            Echo::Off | Echo::Direct => None,
        };
        let shared = Arc::new(Mutex::new(Shared::new(
            n,
            echo,
            cfg.capture_output,
            repo_location,
            marker_key.clone(),
        )));
        let mut failures: Vec<FailureReport> = Vec::new();
        let mut incarnation = 0u64;
        let mut failed_at: Option<Instant> = None;
        // Output commit: the newest checkpoint committed before the first launch (each
        // rollback sets it for the next one).
        let newest = RepoReader::open(&cfg.repo)
            .and_then(|r| newest_commit(&r))
            .map_err(repo_err)?;
        lock(&shared).out.launching(newest.map(|c| c.id));
        loop {
            if let Some(sig) = lazarus_net::launch::take_interrupt() {
                // Ctrl-C/SIGTERM while no rank ran (between a failure and the restart):
                // stop here rather than start ranks only to stop them.
                let mut r = report(
                    &mut lock(&shared),
                    JobEnd::Interrupted(sig),
                    failures,
                    incarnation,
                    t0,
                    128 + sig,
                    n,
                    &pool,
                );
                r.launches = incarnation;
                return Ok(r);
            }
            let mut launch = cfg.launch.clone();
            launch.ranks = n;
            launch.token = Some(token.clone());
            launch.incarnation = incarnation;
            launch.observer = Some(Arc::new(Observer(shared.clone(), writer.clone())));
            let env: [(&str, String); 2] = [
                (OUTPUT_MARKERS_ENV, marker_key.clone()),
                ("LAZARUS_SUPERVISED", "1".into()),
            ];
            for (k, v) in env.into_iter().chain(history.env_vars()) {
                launch.env.push((k.into(), v.into()));
            }
            launch
                .env
                .push((REPO_ENV.into(), cfg.repo.clone().into_os_string()));
            for (r, name) in cfg.kill_plan.failpoints_for(incarnation) {
                launch.rank_env.push((
                    r,
                    OsString::from(lazarus_store::FAILPOINT_ENV),
                    name.into(),
                ));
            }
            let mut kills = cfg.kill_plan.resolve(incarnation, n);
            if let Some(p) = &mut pool {
                launch.hosts = p.placement(n).map_err(SupervisorError::Config)?;
                // Each rank learns the host the launcher placed it on (multi-level
                // checkpoints keep node-local copies per host and partners on other
                // hosts: docs/LEVELS.md); the machine's own name may not tell hosts apart.
                for (r, host) in (0u32..).zip(&launch.hosts) {
                    // `alice@n1` (ssh's login) is host `n1`: a host names a directory
                    // (the levels refused `@` in it).
                    let name = lazarus_net::launch::host_part(host);
                    launch.rank_env.push((r, HOST_ENV.into(), name.into()));
                }
                // Remote ranks are killed by their shim (we have no pid to signal).
                launch.inject = crate::hosts::inject(&kills);
                kills.clear();
            }
            lock(&shared).new_launch(n);
            let run_start = Instant::now();
            let run_start_unix = unix_ms();
            let done = Arc::new(AtomicBool::new(false));
            let fired = Arc::new(Mutex::new(None::<Instant>));
            let killer = (!kills.is_empty()).then(|| {
                let (shared, done, fired) = (shared.clone(), done.clone(), fired.clone());
                std::thread::spawn(move || kill_loop(&kills, &shared, &done, &fired))
            });
            let outcome = Launcher::run(&launch);
            done.store(true, Ordering::SeqCst);
            if let Some(k) = killer {
                let _ = k.join();
            }
            let outcome = outcome.map_err(|source| SupervisorError::Launch {
                incarnation,
                source,
            })?;
            let injected_at =
                (*fired.lock().unwrap_or_else(|e| e.into_inner())).or(lock(&shared).injected_at);
            // Recovery of the previous failure: until every rank of this launch resumed.
            {
                let s = lock(&shared);
                if let (Some(prev), Some(f)) = (failures.last_mut(), failed_at) {
                    prev.restart_latency = s.spawned_at.map(|t| t.saturating_duration_since(f));
                    if s.resumed.iter().all(Option::is_some) {
                        prev.recovery_time = s
                            .resumed
                            .iter()
                            .flatten()
                            .max()
                            .map(|t| t.saturating_duration_since(f));
                    }
                    // Machine-readable for `lazarus bench experiment`, which needs the
                    // restart cost R exactly as paid: kill → every rank resumed.
                    if let (true, Some(rec)) = (cfg.progress, prev.recovery_time) {
                        progress(format_args!(
                            "lazarus: recovered from the failure of incarnation {} in {:.4} s \
                             (ranks spawned after {:.4} s)",
                            prev.incarnation,
                            rec.as_secs_f64(),
                            prev.restart_latency.unwrap_or_default().as_secs_f64()
                        ));
                    }
                }
            }
            if outcome.success() {
                let mut s = lock(&shared);
                let rest = s.out.finish();
                s.emit(rest);
                // A repository mismatch whose kill came too late (the ranks had already
                // exited 0) still stops the job: a rank checkpointed where no supervisor
                // looks, and the job must not be reported completed. A restore refusal
                // followed by a clean exit is not one: the program handled the error
                // (docs/RECOVERY.md).
                if let Some(refusal @ Refusal::RepoMismatch { .. }) = s.refusal.take() {
                    let (end, code) = refused(refusal, cfg.progress);
                    return Ok(report(
                        &mut s,
                        end,
                        failures,
                        incarnation,
                        t0,
                        code,
                        n,
                        &pool,
                    ));
                }
                return Ok(report(
                    &mut s,
                    JobEnd::Completed,
                    failures,
                    incarnation,
                    t0,
                    0,
                    n,
                    &pool,
                ));
            }
            // The newest COMMIT, not re-verified: verifying reads the whole checkpoint and
            // would delay every restart (the ranks verify what they load). If it is damaged
            // the ranks fall back to an older one; see docs/RECOVERY.md for the effect.
            let reader = RepoReader::open(&cfg.repo).map_err(repo_err)?;
            let newest = newest_commit(&reader).map_err(repo_err)?;
            let restored = newest.as_ref().map(|c| RestorePoint {
                id: c.id,
                step: c.step,
                time_unix_ms: c.time_unix_ms,
                finished: lazarus_coord::meta::is_finished(&c.app),
            });
            let mut s = lock(&shared);
            let fast_levels = cfg.fast_levels || s.out.saw_cuts();
            let (released, dropped) = if fast_levels {
                // The ranks may restore a newer checkpoint from a fast level: their
                // `resumed` marker settles the held lines (output.rs).
                (s.out.rollback_deferred(restored.map(|r| (r.id, r.step))), 0)
            } else {
                s.out.rollback(restored.map(|r| (r.id, r.step)))
            };
            s.emit(released);
            if let Some(sig) = outcome.interrupted {
                if cfg.progress && dropped > 0 {
                    progress(format_args!(
                        "lazarus: withheld {dropped} output line(s) printed after the last \
                         committed checkpoint (a resumed run prints them again)"
                    ));
                }
                let code = outcome.exit_code();
                return Ok(report(
                    &mut s,
                    JobEnd::Interrupted(sig),
                    failures,
                    incarnation,
                    t0,
                    code,
                    n,
                    &pool,
                ));
            }
            let Some(failure) = outcome.failure else {
                // Not a success, not interrupted, no failure: cannot happen; treat as done.
                return Ok(report(
                    &mut s,
                    JobEnd::Completed,
                    failures,
                    incarnation,
                    t0,
                    0,
                    n,
                    &pool,
                ));
            };
            let now = Instant::now();
            let f_at = injected_at.or(outcome.failed_at).unwrap_or(now);
            let f_unix =
                unix_ms().saturating_sub(now.saturating_duration_since(f_at).as_millis() as u64);
            let since = restored.map_or(run_start_unix, |r| r.time_unix_ms.max(run_start_unix));
            // A finished job loses nothing: the restart restores its final state.
            let since = match restored {
                Some(r) if r.finished => f_unix,
                _ => since,
            };
            // A rank armed with a failpoint that died by a signal was killed by it.
            let by_failpoint =
                matches!(failure.kind, lazarus_net::launch::FailureKind::Signaled(_))
                    && cfg
                        .kill_plan
                        .failpoints_for(incarnation)
                        .iter()
                        .any(|(r, _)| *r == failure.rank.0);
            let fr = FailureReport {
                incarnation,
                failure,
                injected: injected_at.is_some() || by_failpoint,
                at_unix_ms: f_unix,
                restored,
                last_step: s.last_step,
                lost_time: Duration::from_millis(f_unix.saturating_sub(since)),
                dropped_lines: dropped,
                recovery_time: None,
                restart_latency: None,
                host: outcome.failed_host().map(String::from),
                lost_hosts: outcome.lost_hosts.clone(),
                fast_levels,
            };
            let _ = run_start;
            if let Some(refusal) = s.refusal.take() {
                // What the ranks reported cannot change by restarting: stop now, with the
                // refusal's own status, instead of spending the restart budget.
                failures.push(fr);
                let (end, code) = refused(refusal, cfg.progress);
                return Ok(report(
                    &mut s,
                    end,
                    failures,
                    incarnation,
                    t0,
                    code,
                    n,
                    &pool,
                ));
            }
            if cfg.progress {
                progress(format_args!("lazarus: {fr}"));
            }
            failures.push(fr);
            if failures.len() as u64 > cfg.max_restarts as u64 {
                let code = outcome.exit_code();
                let r = report(
                    &mut s,
                    JobEnd::GaveUp {
                        max_restarts: cfg.max_restarts,
                    },
                    failures,
                    incarnation,
                    t0,
                    code,
                    n,
                    &pool,
                );
                if cfg.progress {
                    if let Some(m) = r.give_up_message() {
                        progress(format_args!("lazarus: {m}"));
                    }
                }
                return Ok(r);
            }
            drop(s);
            let _ = history.record_failure(f_unix as f64 / 1000.0);
            incarnation += 1;
            failed_at = Some(f_at);
            let before = n;
            // Local engine: every failure may be a lost node (one fewer). Multi-host: only
            // the ranks of lost hosts no spare replaced.
            let target = match &mut pool {
                None => n - 1,
                Some(p) => {
                    n - crate::hosts::after_failure(p, &outcome, &launch.hosts, cfg.progress)
                }
            };
            if let Some(sh) = cfg.shrink.filter(|sh| n > sh.min_ranks && target < n) {
                let target = target.max(sh.min_ranks);
                match shrink::can_restore_on(&reader, newest.as_ref(), target) {
                    Ok(()) => n = target,
                    Err(why) => {
                        if cfg.progress {
                            progress(format_args!(
                                "lazarus: not shrinking below {} (minimum {}): {why}",
                                count(n, "rank"),
                                sh.min_ranks
                            ));
                        }
                    }
                }
            }
            if cfg.progress {
                if n < before {
                    progress(format_args!(
                        "lazarus: restarting on {} instead of {before} (shrink on \
                         failure, minimum {}) (restart {incarnation} of at most {})",
                        count(n, "rank"),
                        cfg.shrink.map_or(n, |s| s.min_ranks),
                        cfg.max_restarts
                    ));
                } else {
                    let all = match n {
                        1 => "the only rank".to_string(),
                        n => format!("all {n} ranks"),
                    };
                    progress(format_args!(
                        "lazarus: restarting {all} (restart {incarnation} of at most {})",
                        cfg.max_restarts
                    ));
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    s: &mut Shared,
    end: JobEnd,
    failures: Vec<FailureReport>,
    incarnation: u64,
    t0: Instant,
    code: i32,
    ranks: u32,
    pool: &Option<crate::hosts::HostPool>,
) -> Report {
    // Ended without `finish` (interrupted, refused, given up): starts of lines that a
    // committed checkpoint covers leave now (a resumed run prints only their rest).
    let carried = s.out.take_carried();
    s.emit(carried);
    Report {
        hosts: pool.as_ref().map(crate::hosts::HostPool::report),
        ranks,
        end,
        failures,
        launches: incarnation + 1,
        commits: s.commits,
        elapsed: t0.elapsed(),
        output: std::mem::take(&mut s.captured),
        last_exit_code: code,
    }
}

/// Fires the planned kills of one launch; returns when all fired or the launch ended.
fn kill_loop(
    kills: &[ResolvedKill],
    shared: &Mutex<Shared>,
    done: &AtomicBool,
    fired: &Mutex<Option<Instant>>,
) {
    let mut pending: Vec<(ResolvedKill, Option<Instant>)> =
        kills.iter().map(|k| (*k, None)).collect();
    while !done.load(Ordering::SeqCst) && !pending.is_empty() {
        {
            let s = lock(shared);
            let now = Instant::now();
            pending.retain_mut(|(k, due)| {
                if due.is_none() {
                    *due = match k.trigger {
                        KillTrigger::AfterStart(d) => s.spawned_at.map(|t| t + d),
                        KillTrigger::AfterCommits { commits, delay } => {
                            (s.commits_this_run >= commits.max(1)).then(|| now + delay)
                        }
                    };
                }
                match (*due, s.victims.get(k.rank as usize)) {
                    (Some(t), Some(Some(v))) if now >= t => {
                        v.kill();
                        let mut f = fired.lock().unwrap_or_else(|e| e.into_inner());
                        f.get_or_insert(now);
                        false
                    }
                    _ => true,
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::MARKER_PREFIX;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    /// The shared state of a launch of `ranks` ranks whose markers carry [`KEY`],
    /// capturing released lines.
    fn observed(ranks: u32) -> Arc<Mutex<Shared>> {
        let shared = Arc::new(Mutex::new(Shared::new(
            ranks,
            Echo::Off,
            true,
            String::new(),
            KEY.into(),
        )));
        lock(&shared).new_launch(ranks);
        shared
    }

    /// Found in review: a program's own output could forge markers (any line starting
    /// with the prefix was one). A forged `commit` of a huge id made every later `part`
    /// release its lines before COMMIT was durable, so a crash printed them twice. Now a
    /// line without the launch's key is the program's text, held and released like any
    /// other, and only rank 0's `commit` counts.
    #[test]
    fn a_program_printing_a_forged_commit_marker_does_not_release_lines_early() {
        let shared = observed(2);
        let obs = Observer(shared.clone(), None);
        let forged = format!("{MARKER_PREFIX}commit 18446744073709551615 0\n");
        let forged_keyed = format!("{MARKER_PREFIX}{KEY}:commit 18446744073709551615 0\n");
        assert!(obs.stdout_line(0, b"x\n"));
        assert!(obs.stdout_line(0, forged.as_bytes()));
        assert!(obs.stdout_line(0, format!("y {forged}").as_bytes()));
        // Rank 1 holds the key (it is a rank of the job) but may not commit.
        assert!(obs.stdout_line(1, forged_keyed.as_bytes()));
        assert!(obs.stdout_line(0, format!("{MARKER_PREFIX}{KEY}:part 7 7\n").as_bytes()));
        assert!(obs.stdout_line(1, format!("{MARKER_PREFIX}{KEY}:part 7 7\n").as_bytes()));
        {
            let s = lock(&shared);
            assert!(
                s.captured.is_empty(),
                "released before COMMIT 7: {:?}",
                s.captured
            );
            assert_eq!(s.out.held(), 3, "the forged lines are held as text");
            assert_eq!(s.commits, 0);
            assert_eq!(s.bad_markers, 1, "rank 1's commit");
        }
        assert!(obs.stdout_line(0, format!("{MARKER_PREFIX}{KEY}:commit 7 7\n").as_bytes()));
        let s = lock(&shared);
        let texts: Vec<&str> = s.captured.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "x",
                forged.trim_end(),
                format!("y {}", forged.trim_end()).as_str()
            ]
        );
        assert_eq!(s.commits, 1);
    }

    /// Regression: a marker cut short at the end of a rank's stream still parsed (with a
    /// shorter number) and was acted on: a cut `resumed` settled the held output at the
    /// wrong checkpoint, a cut `part` moved the step. A line without its newline is
    /// never read as a marker.
    #[test]
    fn a_marker_cut_short_at_the_end_of_a_stream_is_not_read() {
        let shared = observed(1);
        let obs = Observer(shared.clone(), None);
        assert!(obs.stdout_line(0, format!("{MARKER_PREFIX}{KEY}:part 3 3\n").as_bytes()));
        assert!(obs.stdout_line(0, b"printed\n"));
        assert!(obs.stdout_line(0, format!("{MARKER_PREFIX}{KEY}:part 4 40").as_bytes()));
        assert!(obs.stdout_line(0, format!("{MARKER_PREFIX}{KEY}:resumed 5 50 1").as_bytes()));
        let s = lock(&shared);
        assert_eq!(s.last_step, Some(3));
        assert_eq!(s.resumed, [None]);
        assert_eq!(s.bad_markers, 0);
        assert_eq!(s.out.held(), 1, "only the whole line is held");
    }
}
