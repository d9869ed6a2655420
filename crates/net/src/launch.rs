//! The launcher: starts N ranks of a program on this machine, hosts their rendezvous,
//! prefixes their output with the rank, detects the first failure (exit status, signal,
//! lost control connection, missed heartbeats), stops everyone and reports a [`JobOutcome`].
//!
//! Orphans: each rank is the leader of its own session and process group (the group is
//! killed when stopping, so a rank wrapped in a shell goes with everything it started) and
//! has `PR_SET_PDEATHSIG = SIGKILL` (Linux). If the launcher is SIGKILLed, the death signal
//! kills each rank's first process, and the rank's communicator, which watches the
//! launcher's heartbeats, kills the rest of its group (`LAZARUS_RANK_SESSION=1`).
//! Caveat: the death signal fires when the *thread* that spawned the ranks exits, so call
//! [`Launcher::run`] from a thread that outlives the job (e.g. the main thread).

use crate::auth::JobToken;
use crate::config::NetConfig;
use crate::env::{ENV_COORD, ENV_INCARNATION, ENV_LAUNCHER, ENV_TOKEN};
use crate::error::{ErrorKind, NetError, Result};
use crate::rdv::{Liveness, RendezvousServer};
use crate::watch::ENV_RANK_SESSION;
use lazarus_format::Rank;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// What to start and how to supervise it.
#[derive(Clone, Debug)]
pub struct LaunchConfig {
    /// Number of ranks (>= 1).
    pub ranks: u32,
    /// Program to run.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment passed to every rank (e.g. `LAZARUS_REPO`, failure history).
    pub env: Vec<(OsString, OsString)>,
    /// Timeouts passed to the ranks (as environment) and used for detection here.
    pub net: NetConfig,
    /// Restart count of this job, exported as `LAZARUS_INCARNATION`.
    pub incarnation: u64,
    /// After a failure, how long the other ranks may take to exit on their own (their
    /// blocking calls fail within the failure timeout) before they are signalled.
    pub stop_grace: Duration,
    /// After SIGTERM (or a forwarded Ctrl-C), how long before SIGKILL.
    pub kill_grace: Duration,
    /// The job token to hand to the ranks; `None`: a fresh random one per run. A supervisor
    /// that restarts the job passes the same token every time (it also names the job in
    /// the repository lock).
    pub token: Option<JobToken>,
    /// Extra environment for one rank only, `(rank, key, value)` (fault injection).
    pub rank_env: Vec<(u32, OsString, OsString)>,
    /// Sees every spawned rank and may take over its stdout lines (output commit).
    pub observer: Option<std::sync::Arc<dyn LaunchObserver>>,
}

/// Hooks into a running job, called from the launcher's threads.
pub trait LaunchObserver: Send + Sync + std::fmt::Debug {
    /// Rank `rank` was spawned as process `pid` (not yet reaped: the pid is valid here).
    fn spawned(&self, rank: u32, pid: u32) {
        let _ = (rank, pid);
    }
    /// One stdout line of `rank` (with its newline). Return true if handled; false lets
    /// the launcher print it with the `[rank r]` prefix.
    fn stdout_line(&self, rank: u32, line: &[u8]) -> bool {
        let _ = (rank, line);
        false
    }
}

impl LaunchConfig {
    /// `ranks` copies of `program args…` with default timeouts.
    pub fn new(ranks: u32, program: impl Into<OsString>, args: Vec<OsString>) -> Self {
        LaunchConfig {
            ranks,
            program: program.into(),
            args,
            env: Vec::new(),
            net: NetConfig::default(),
            incarnation: 0,
            stop_grace: Duration::ZERO,
            kill_grace: Duration::from_secs(2),
            token: None,
            rank_env: Vec::new(),
            observer: None,
        }
    }
}

/// How one rank ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

impl RankStatus {
    fn of(s: ExitStatus) -> Self {
        match (s.code(), s.signal()) {
            (Some(c), _) => RankStatus::Exited(c),
            (None, Some(sig)) => RankStatus::Signaled(sig),
            (None, None) => RankStatus::Exited(-1),
        }
    }
    /// True for exit code 0.
    pub fn success(self) -> bool {
        self == RankStatus::Exited(0)
    }
}

/// Why the job was declared failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The rank exited with a non-zero code.
    Exited(i32),
    /// The rank was killed by a signal.
    Signaled(i32),
    /// The rank stopped sending heartbeats for longer than the failure timeout.
    MissedHeartbeats,
    /// The rank's control connection closed without a goodbye (and it did not exit).
    LostConnection,
}

/// The first failure of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankFailure {
    /// Which rank.
    pub rank: Rank,
    /// How.
    pub kind: FailureKind,
}

impl std::fmt::Display for RankFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            FailureKind::Exited(c) => write!(f, "{} exited with status {c}", self.rank),
            FailureKind::Signaled(s) => write!(f, "{} was killed by signal {s}", self.rank),
            FailureKind::MissedHeartbeats => write!(f, "{} missed heartbeats", self.rank),
            FailureKind::LostConnection => write!(f, "{} lost its connection", self.rank),
        }
    }
}

/// The result of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOutcome {
    /// The first failure, if any.
    pub failure: Option<RankFailure>,
    /// A signal (SIGINT/SIGTERM/SIGHUP) that made the launcher stop the job.
    pub interrupted: Option<i32>,
    /// How each rank ended, in rank order.
    pub statuses: Vec<RankStatus>,
    /// Wall time from first spawn to last exit.
    pub elapsed: Duration,
}

impl JobOutcome {
    /// True when no rank failed and no signal stopped the job.
    pub fn success(&self) -> bool {
        self.failure.is_none() && self.interrupted.is_none()
    }

    /// The launcher's exit status: the first failure's code (128+signal for signals,
    /// 1 for heartbeat/connection failures), 128+signal when interrupted, else 0.
    pub fn exit_code(&self) -> i32 {
        if let Some(f) = self.failure {
            return match f.kind {
                FailureKind::Exited(c) if c != 0 => c,
                FailureKind::Signaled(s) => 128 + s,
                _ => 1,
            };
        }
        match self.interrupted {
            Some(s) => 128 + s,
            None => 0,
        }
    }
}

static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe: a single atomic store.
    PENDING_SIGNAL.store(sig, Ordering::SeqCst);
}

/// Installs SIGINT/SIGTERM/SIGHUP handlers so that a running [`Launcher::run`] forwards
/// the signal to its ranks and stops them cleanly instead of dying and orphaning them.
pub fn install_signal_forwarding() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

fn pending_signal() -> Option<i32> {
    match PENDING_SIGNAL.swap(0, Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

fn killpg(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: plain syscall on a process group we created.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

fn pump(
    rank: u32,
    src: impl Read,
    to_stderr: bool,
    observer: Option<std::sync::Arc<dyn LaunchObserver>>,
) {
    let mut r = BufReader::new(src);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                if let Some(o) = &observer {
                    if !to_stderr && o.stdout_line(rank, &line) {
                        continue;
                    }
                }
                let mut out = Vec::with_capacity(line.len() + 12);
                out.extend_from_slice(format!("[rank {rank}] ").as_bytes());
                out.extend_from_slice(&line);
                // One write per line under the lock keeps lines from interleaving.
                let _ = if to_stderr {
                    std::io::stderr().lock().write_all(&out)
                } else {
                    std::io::stdout().lock().write_all(&out)
                };
            }
        }
    }
}

/// Runs jobs; see the module documentation.
#[derive(Debug)]
pub struct Launcher;

struct Ranks {
    children: Vec<Child>,
    statuses: Vec<Option<RankStatus>>,
}

impl Ranks {
    /// Signals every rank's process group (each rank leads its own, see the module doc).
    /// Also the groups of ranks that already exited: what they started may still run.
    fn signal(&self, sig: i32) {
        for c in &self.children {
            killpg(c.id() as i32, sig);
        }
    }
    fn poll(&mut self) -> Result<()> {
        for (c, st) in self.children.iter_mut().zip(self.statuses.iter_mut()) {
            if st.is_none() {
                if let Some(s) = c.try_wait().map_err(|e| NetError::io("waitpid", e))? {
                    *st = Some(RankStatus::of(s));
                }
            }
        }
        Ok(())
    }
    fn all_done(&self) -> bool {
        self.statuses.iter().all(|s| s.is_some())
    }
    /// Polls until every rank exited or `d` elapsed.
    fn wait_for(&mut self, d: Duration) -> Result<bool> {
        let end = Instant::now() + d;
        loop {
            self.poll()?;
            if self.all_done() {
                return Ok(true);
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Launcher {
    /// Starts the job, supervises it to the end and returns its outcome. `Err` only when
    /// the job could not be started (nothing left running in that case).
    pub fn run(cfg: &LaunchConfig) -> Result<JobOutcome> {
        if cfg.ranks == 0 {
            return Err(NetError::new(
                ErrorKind::InvalidArgument,
                "-n must be at least 1",
            ));
        }
        let net = cfg.net.clone().validated()?;
        let token = cfg.token.clone().unwrap_or_else(JobToken::random);
        let server = RendezvousServer::bind(
            "127.0.0.1:0",
            cfg.ranks,
            token.clone(),
            cfg.incarnation,
            net.clone(),
        )?;
        let coord = server.local_addr().to_string();
        let t0 = Instant::now();
        let mut ranks = Ranks {
            children: Vec::new(),
            statuses: Vec::new(),
        };
        let mut pumps = Vec::new();
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        for r in 0..cfg.ranks {
            let mut cmd = Command::new(&cfg.program);
            cmd.args(&cfg.args)
                .envs(cfg.env.iter().map(|(k, v)| (k, v)))
                .envs(net.to_env())
                .env("LAZARUS_RANK", r.to_string())
                .env("LAZARUS_WORLD_SIZE", cfg.ranks.to_string())
                .env(ENV_COORD, &coord)
                .env(ENV_TOKEN, token.expose())
                .env(ENV_INCARNATION, cfg.incarnation.to_string())
                .env(ENV_LAUNCHER, "1")
                .env(ENV_RANK_SESSION, "1")
                .envs(
                    cfg.rank_env
                        .iter()
                        .filter(|(rr, _, _)| *rr == r)
                        .map(|(_, k, v)| (k, v)),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // SAFETY: the closure runs between fork and exec and only makes
            // async-signal-safe syscalls (setsid, prctl, getppid, _exit).
            unsafe {
                cmd.pre_exec(move || {
                    // Own session: the rank's process group is its alone (killed as a
                    // whole), and a terminal's Ctrl-C reaches ranks only through the
                    // launcher's forwarding.
                    libc::setsid();
                    #[cfg(target_os = "linux")]
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::getppid() != parent {
                        libc::_exit(137);
                    }
                    Ok(())
                });
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    ranks.signal(libc::SIGKILL);
                    let _ = ranks.wait_for(Duration::from_secs(5));
                    return Err(NetError::new(
                        ErrorKind::Launch,
                        format!("cannot start {:?} as rank {r}: {e}", cfg.program),
                    ));
                }
            };
            if let Some(o) = &cfg.observer {
                o.spawned(r, child.id());
            }
            if let Some(o) = child.stdout.take() {
                let obs = cfg.observer.clone();
                pumps.push(std::thread::spawn(move || pump(r, o, false, obs)));
            }
            if let Some(e) = child.stderr.take() {
                pumps.push(std::thread::spawn(move || pump(r, e, true, None)));
            }
            ranks.children.push(child);
            ranks.statuses.push(None);
        }
        let outcome = supervise(cfg, &net, &server, &mut ranks, t0);
        // Whatever happened, nothing of the job survives this call.
        ranks.signal(libc::SIGKILL);
        let _ = ranks.wait_for(Duration::from_secs(5));
        drop(server);
        for p in pumps {
            let _ = p.join();
        }
        let mut o = outcome?;
        o.statuses = ranks
            .statuses
            .iter()
            .map(|s| s.unwrap_or(RankStatus::Signaled(libc::SIGKILL)))
            .collect();
        o.elapsed = t0.elapsed();
        Ok(o)
    }
}

fn supervise(
    cfg: &LaunchConfig,
    net: &NetConfig,
    server: &RendezvousServer,
    ranks: &mut Ranks,
    t0: Instant,
) -> Result<JobOutcome> {
    let mut failure: Option<RankFailure> = None;
    let mut interrupted = None;
    let mut lost_since: Vec<Option<Instant>> = vec![None; cfg.ranks as usize];
    // Give a rank whose connection dropped this long to show an exit status instead.
    let lost_grace = Duration::from_millis(500);
    loop {
        ranks.poll()?;
        for (i, st) in ranks.statuses.iter().enumerate() {
            if let Some(s) = st {
                if !s.success() && failure.is_none() {
                    let kind = match *s {
                        RankStatus::Exited(c) => FailureKind::Exited(c),
                        RankStatus::Signaled(g) => FailureKind::Signaled(g),
                    };
                    failure = Some(RankFailure {
                        rank: Rank(i as u32),
                        kind,
                    });
                }
            }
        }
        if failure.is_none() {
            for (i, l) in server.liveness().into_iter().enumerate() {
                if ranks.statuses.get(i).is_some_and(|s| s.is_some()) {
                    continue;
                }
                let kind = match l {
                    Liveness::MissedHeartbeats => Some(FailureKind::MissedHeartbeats),
                    Liveness::LostConnection => {
                        let since = lost_since
                            .get_mut(i)
                            .map(|s| *s.get_or_insert_with(Instant::now));
                        since
                            .filter(|s| s.elapsed() > lost_grace)
                            .map(|_| FailureKind::LostConnection)
                    }
                    _ => None,
                };
                if let Some(kind) = kind {
                    failure = Some(RankFailure {
                        rank: Rank(i as u32),
                        kind,
                    });
                    break;
                }
            }
        }
        if let Some(sig) = pending_signal() {
            tracing::warn!("launcher: got signal {sig}, stopping all ranks");
            interrupted = Some(sig);
            ranks.signal(sig);
            if !ranks.wait_for(cfg.kill_grace)? {
                ranks.signal(libc::SIGKILL);
            }
            break;
        }
        if let Some(f) = failure {
            tracing::error!("launcher: {f}; stopping the other ranks");
            if !ranks.wait_for(cfg.stop_grace)? {
                ranks.signal(libc::SIGTERM);
                if !ranks.wait_for(cfg.kill_grace)? {
                    ranks.signal(libc::SIGKILL);
                }
            }
            break;
        }
        if ranks.all_done() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5).min(net.heartbeat_interval));
    }
    Ok(JobOutcome {
        failure,
        interrupted,
        statuses: Vec::new(),
        elapsed: t0.elapsed(),
    })
}
