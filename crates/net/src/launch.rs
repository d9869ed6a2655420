//! The launcher: starts N ranks through an [`Engine`] (this machine, or a cluster's own
//! launcher: Open MPI's `mpirun`, Slurm's `srun`, `ssh`), hosts their rendezvous, prefixes
//! their output with the rank, detects the first failure (exit status, signal, lost control
//! connection, missed heartbeats, a rank that never joined), tells a lost host from a dead
//! process, stops everyone through the same engine and reports a [`JobOutcome`].
//!
//! Orphans: each rank is the leader of its own session and process group (the group is
//! killed when stopping, so a rank wrapped in a shell goes with everything it started) and
//! has `PR_SET_PDEATHSIG = SIGKILL` (Linux). If the launcher is SIGKILLed, the death signal
//! kills each rank's first process, and the rank's communicator, which watches the
//! launcher's heartbeats, kills the rest of its group (`LAZARUS_RANK_SESSION=1`). On other
//! hosts the rank shim (`shim.rs`) does the same, and a rank that cannot hear the launcher
//! (partition) stops within the failure timeout.
//! Caveat: the death signal fires when the *thread* that spawned the ranks exits, so call
//! [`Launcher::run`] from a thread that outlives the job (e.g. the main thread).

mod engine;
mod local;
mod mpirun;
mod record;
mod remote;
mod route;
pub mod shim;
mod srun;
mod ssh;

pub use engine::{
    host_blocks, parse_hostfile, parse_hosts, place, Engine, HostSpec, LaunchObserver, OutputSink,
    RunningJob, StartSpec,
};
pub use local::LocalEngine;
pub use mpirun::MpirunEngine;
#[doc(hidden)]
pub use record::fuzz_launcher_output;
pub use route::{advertise_address, host_part, probe_host, unusable_advertise};
pub use srun::{in_allocation, SrunEngine};
pub use ssh::SshEngine;

use crate::auth::JobToken;
use crate::config::NetConfig;
use crate::env::{ENV_COORD, ENV_INCARNATION, ENV_LAUNCHER, ENV_TOKEN};
use crate::error::{ErrorKind, NetError, Result};
use crate::rdv::{Liveness, RendezvousServer};
use lazarus_format::Rank;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
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
    pub observer: Option<Arc<dyn LaunchObserver>>,
    /// How ranks are started (default: [`LocalEngine`], this machine).
    pub engine: Arc<dyn Engine>,
    /// Host of each rank, one entry per rank (remote engines; empty for the local one).
    pub hosts: Vec<String>,
    /// Address the ranks are given for the rendezvous (`LAZARUS_COORD`); `None`: 127.0.0.1
    /// for the local engine, else the local address of the route to the ranks' hosts.
    pub advertise: Option<IpAddr>,
    /// Address the rendezvous listens on; `None`: the advertised one.
    pub bind: Option<IpAddr>,
    /// How remote engines run the rank shim (`lazarus __shim`): program and leading
    /// arguments; the rank's program follows `--`.
    pub shim: Option<ShimCommand>,
    /// Kills injected by remote engines (through the shim): `(rank, when)`. The local
    /// engine's kills are made by the caller (it has the pids, see
    /// [`LaunchObserver::spawned`]).
    pub inject: Vec<(u32, InjectAt)>,
}

/// The command that runs the rank shim on a rank's host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimCommand {
    /// Its program (the same path on every host, e.g. the `lazarus` binary).
    pub program: PathBuf,
    /// Arguments before the shim's own (e.g. `["__shim"]`).
    pub args: Vec<OsString>,
}

/// Environment variable holding the key of a launch's output markers (set by `lazarus run
/// --repo`; the marker format is `lazarus_coord::marker`'s). Defined here, the lowest crate
/// that reads it: the rank shim counts part markers for kills planned after commits.
pub const OUTPUT_MARKERS_ENV: &str = "LAZARUS_OUTPUT_MARKERS";

/// When an injected kill fires, counted from the start of the rank's program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectAt {
    /// This long after the program started.
    AfterStart(Duration),
    /// `delay` after the rank's `parts`-th checkpoint part marker (needs output markers).
    AfterParts {
        /// part markers to wait for (>= 1)
        parts: u32,
        /// extra delay
        delay: Duration,
    },
}

impl LaunchConfig {
    /// `ranks` copies of `program args…` on this machine, default timeouts.
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
            engine: Arc::new(LocalEngine),
            hosts: Vec::new(),
            advertise: None,
            bind: None,
            shim: None,
            inject: Vec::new(),
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
    pub(crate) fn of(s: ExitStatus) -> Self {
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
    /// The rank showed no sign of life (no rendezvous, nothing from the engine) within the
    /// connect timeout plus the failure timeout: it never started (e.g. its host is down).
    NeverJoined,
    /// The engine ended without reporting how the rank ended.
    NoStatus,
}

impl FailureKind {
    /// True when the rank's own exit status says how it ended (its host answered).
    pub fn has_status(self) -> bool {
        matches!(self, FailureKind::Exited(_) | FailureKind::Signaled(_))
    }
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
            FailureKind::NeverJoined => write!(f, "{} never joined the job", self.rank),
            FailureKind::NoStatus => {
                write!(
                    f,
                    "{} ended without an exit status reaching the launcher",
                    self.rank
                )
            }
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
    /// The host of each rank (`None` if unknown; `localhost` for the local engine).
    pub hosts: Vec<Option<String>>,
    /// Hosts found unreachable when the failure was handled (their ranks silent and no
    /// answer on the network): the failure is a lost host, not only a dead process.
    pub lost_hosts: Vec<String>,
    /// When the failure was detected (the failure itself happened up to the failure
    /// timeout earlier for a silent rank, at most a poll interval for an exit).
    pub failed_at: Option<Instant>,
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
            let code = match f.kind {
                FailureKind::Exited(c) => c,
                FailureKind::Signaled(s) => 128 + s,
                _ => 1,
            };
            // A failure never reads as success, nor as a status no process can have.
            return if (1..=255).contains(&code) { code } else { 1 };
        }
        match self.interrupted {
            Some(s) => 128 + s,
            None => 0,
        }
    }

    /// The host of the failing rank, if any.
    pub fn failed_host(&self) -> Option<&str> {
        let f = self.failure?;
        self.hosts.get(f.rank.index())?.as_deref()
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

/// Takes the signal [`install_signal_forwarding`] caught that no launch has acted on yet
/// (else the next [`Launcher::run`] stops on it at once). A caller that waits between
/// launches (a supervisor) checks it to stop there, instead of starting ranks only to stop
/// them, or of sleeping through a Ctrl-C.
pub fn take_interrupt() -> Option<i32> {
    pending_signal()
}

pub(crate) fn pending_signal() -> Option<i32> {
    match PENDING_SIGNAL.swap(0, Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

pub(crate) fn killpg(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: plain syscall on a process group we created.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// Sends `sig` to every process of the sessions `sids` but the caller's. A launcher started as
/// a session leader (`setsid`) may put its own children in other process groups: Open
/// MPI runs each ssh client to a remote daemon in a group of its own, so `killpg` misses
/// them, and the client to a lost host (its link down) then outlives the job, hung on a
/// connection nobody answers. Safe after the leader was reaped: a process id is not
/// reused while it names the session of a living process. Linux (`/proc`); elsewhere a
/// no-op.
pub(crate) fn kill_sessions(sids: &[i32], sig: i32) {
    for pid in session_members(sids) {
        // SAFETY: kill is a plain syscall on a process id.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// The live processes of the sessions `sids` but the caller (zombies, which no signal
/// stops any more, are left out), in one pass over `/proc`. Ids that are not positive
/// name no session; empty when `/proc` is missing.
pub(crate) fn session_members(sids: &[i32]) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|&pid| {
            pid != me && {
                // SAFETY: getsid is a plain syscall on a process id.
                let sid = unsafe { libc::getsid(pid) };
                sid > 0 && sids.contains(&sid)
            }
        })
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| Some(s.get(s.rfind(')')? + 2..)?.starts_with('Z')))
                .is_some_and(|zombie| !zombie)
        })
        .collect()
}

/// Stops every process of the launchers' sessions `sids` for good: `first` to every
/// member, then, once all are gone or after `settle` (one deadline for all sessions),
/// SIGKILL to what is left. `first` is the shims' hard-stop signal: a shim SIGKILLed
/// before it acted takes only its rank along (the rank's parent-death signal), and what
/// the rank started lives on as orphans (found when a rank's `sleep` outlived a
/// hard-stopped job under mpirun on a loaded machine).
pub(crate) fn stop_sessions(sids: &[i32], first: i32, settle: Duration) {
    kill_sessions(sids, first);
    let deadline = Instant::now() + settle;
    while !session_members(sids).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for &sid in sids {
        killpg(sid, libc::SIGKILL);
    }
    kill_sessions(sids, libc::SIGKILL);
}

/// Runs jobs; see the module documentation.
#[derive(Debug)]
pub struct Launcher;

impl Launcher {
    /// Starts the job, supervises it to the end and returns its outcome. `Err` only when
    /// the job could not be started (nothing left running in that case).
    ///
    /// When it returns, no rank of the job runs any more, or (a rank on a host that became
    /// unreachable) it is certain to have stopped by itself: the launcher waited until the
    /// failure timeout plus two heartbeats had passed since that rank was last heard.
    pub fn run(cfg: &LaunchConfig) -> Result<JobOutcome> {
        if cfg.ranks == 0 {
            return Err(NetError::new(
                ErrorKind::InvalidArgument,
                "-n must be at least 1",
            ));
        }
        let net = cfg.net.clone().validated()?;
        let remote = cfg.engine.remote();
        if !remote && !cfg.hosts.is_empty() {
            return Err(NetError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "the {} engine runs every rank on this machine: a host list needs a remote \
                     engine (mpirun, srun, ssh)",
                    cfg.engine.name()
                ),
            ));
        }
        if remote {
            engine::check_placement(cfg.engine.name(), cfg.ranks, &cfg.hosts)?;
        }
        let token = cfg.token.clone().unwrap_or_else(JobToken::random);
        let advertise = match cfg.advertise {
            Some(a) => match unusable_advertise(a) {
                Some(why) => {
                    return Err(NetError::new(
                        ErrorKind::InvalidArgument,
                        format!("advertise address {a}: {why}"),
                    ))
                }
                None => a,
            },
            None if remote => advertise_address(&cfg.hosts)?,
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let bind = SocketAddr::new(cfg.bind.unwrap_or(advertise), 0);
        let server = RendezvousServer::bind(
            &bind.to_string(),
            cfg.ranks,
            token.clone(),
            cfg.incarnation,
            net.clone(),
        )?;
        let coord = SocketAddr::new(advertise, server.local_addr().port()).to_string();
        let mut env: Vec<(OsString, OsString)> = cfg.env.clone();
        env.extend(net.to_env().into_iter().map(|(k, v)| (k.into(), v.into())));
        for (k, v) in [
            ("LAZARUS_WORLD_SIZE", cfg.ranks.to_string()),
            (ENV_COORD, coord),
            (ENV_TOKEN, token.expose()),
            (ENV_INCARNATION, cfg.incarnation.to_string()),
            (ENV_LAUNCHER, "1".into()),
        ] {
            env.push((k.into(), v.into()));
        }
        let sink = Arc::new(OutputSink::new(cfg.observer.clone()));
        let t0 = Instant::now();
        let mut job = cfg.engine.start(StartSpec {
            cfg,
            env,
            hosts: &cfg.hosts,
            sink: sink.clone(),
        })?;
        if let Some(o) = &cfg.observer {
            o.launched();
        }
        let hosts_of = |job: &dyn RunningJob| -> Vec<Option<String>> {
            (0..cfg.ranks)
                .map(|r| {
                    job.host(r)
                        .or_else(|| cfg.hosts.get(r as usize).cloned())
                        .or_else(|| (!remote).then(|| "localhost".to_string()))
                })
                .collect()
        };
        let outcome = supervise(cfg, &net, &server, job.as_mut(), t0, &hosts_of);
        if outcome.as_ref().is_ok_and(JobOutcome::success) {
            // Every rank is done: let the engine end by itself (srun releases the
            // allocation it made, mpirun reports); a SIGKILL at this point can leave a
            // Slurm job allocated.
            job.finish(cfg.kill_grace);
        }
        // Whatever happened, nothing of the job survives this call.
        job.kill();
        job.finish(Duration::from_secs(5));
        let mut o = outcome?;
        if remote {
            fence_unreachable_ranks(&server, job.as_ref(), &net, &o, &hosts_of(job.as_ref()));
        }
        drop(server);
        sink.close();
        o.statuses = (0..cfg.ranks)
            .map(|r| job.status(r).unwrap_or(RankStatus::Signaled(libc::SIGKILL)))
            .collect();
        o.hosts = hosts_of(job.as_ref());
        o.elapsed = t0.elapsed();
        Ok(o)
    }
}

/// Waits until every rank that may still run on an unreachable host has stopped by itself
/// (its launcher watch gives up after the failure timeout without our heartbeats). Ranks
/// on live hosts are not waited for: the engine killed them, and closing the rendezvous
/// ends any that escaped it.
fn fence_unreachable_ranks(
    server: &RendezvousServer,
    job: &dyn RunningJob,
    net: &NetConfig,
    o: &JobOutcome,
    hosts: &[Option<String>],
) {
    let bound = net.rank_outlives_launcher();
    let on_lost_host = |r: usize| {
        hosts
            .get(r)
            .and_then(|h| h.as_ref())
            .is_some_and(|h| o.lost_hosts.contains(h))
    };
    let wait = server
        .snapshot()
        .iter()
        .enumerate()
        .filter(|(r, v)| {
            on_lost_host(*r)
                && job.status(*r as u32).is_none()
                && matches!(v.state, Liveness::Running | Liveness::MissedHeartbeats)
        })
        .map(|(_, v)| bound.saturating_sub(v.silent))
        .max()
        .unwrap_or_default();
    if !wait.is_zero() {
        tracing::info!(
            "launcher: waiting {wait:?} for the ranks on unreachable host(s) {} to stop by \
             themselves",
            o.lost_hosts.join(", ")
        );
        std::thread::sleep(wait);
    }
}

/// Polls until every rank is done or `d` elapsed.
fn wait_for(job: &mut dyn RunningJob, d: Duration) -> Result<bool> {
    let end = Instant::now() + d;
    loop {
        job.poll()?;
        if job.all_done() {
            return Ok(true);
        }
        if Instant::now() >= end {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn supervise(
    cfg: &LaunchConfig,
    net: &NetConfig,
    server: &RendezvousServer,
    job: &mut dyn RunningJob,
    t0: Instant,
    hosts_of: &dyn Fn(&dyn RunningJob) -> Vec<Option<String>>,
) -> Result<JobOutcome> {
    let mut failure: Option<RankFailure> = None;
    let mut interrupted = None;
    let mut lost_since: Vec<Option<Instant>> = vec![None; cfg.ranks as usize];
    // Give a rank whose connection dropped this long to show an exit status instead.
    let lost_grace = Duration::from_millis(500);
    let join_deadline = net.connect_timeout + net.failure_timeout;
    let mut hard_stopped = false;
    let fail = |rank: usize, kind| RankFailure {
        rank: Rank(rank as u32),
        kind,
    };
    loop {
        job.poll()?;
        if failure.is_none() {
            let statuses: Vec<Option<RankStatus>> = (0..cfg.ranks).map(|r| job.status(r)).collect();
            failure = first_failure(&statuses).map(|(r, kind)| fail(r, kind));
        }
        if failure.is_none() {
            for (i, v) in server.snapshot().into_iter().enumerate() {
                if job.status(i as u32).is_some() {
                    continue;
                }
                let kind = match v.state {
                    Liveness::MissedHeartbeats => Some(FailureKind::MissedHeartbeats),
                    Liveness::LostConnection => {
                        let since = lost_since
                            .get_mut(i)
                            .map(|s| *s.get_or_insert_with(Instant::now));
                        since
                            .filter(|s| s.elapsed() > lost_grace)
                            .map(|_| FailureKind::LostConnection)
                    }
                    Liveness::Pending if t0.elapsed() > join_deadline && !job.started(i as u32) => {
                        Some(FailureKind::NeverJoined)
                    }
                    _ => None,
                };
                if let Some(kind) = kind {
                    failure = Some(fail(i, kind));
                    break;
                }
            }
        }
        if failure.is_none() && job.all_done() {
            // The engine is gone: a rank without a status never reported one.
            if let Some(r) = (0..cfg.ranks).find(|r| job.status(*r).is_none()) {
                failure = Some(fail(r as usize, FailureKind::NoStatus));
            }
        }
        if failure.is_none()
            && !hard_stopped
            && cfg.observer.as_ref().is_some_and(|o| o.stop_requested())
        {
            // The deaths are the failure the next polls report (a status, or none for a
            // launcher that died with its ranks), stopped and reported as any other.
            tracing::warn!("launcher: the job must stop at once; killing every rank");
            hard_stopped = true;
            // Through the engine: the shims forward it (ssh), mpirun's death takes its
            // ranks along, srun's engine adds scancel (remote.rs).
            job.signal(libc::SIGKILL);
        }
        if let Some(sig) = pending_signal() {
            tracing::warn!("launcher: got signal {sig}, stopping all ranks");
            interrupted = Some(sig);
            job.signal(sig);
            if !wait_for(job, cfg.kill_grace)? {
                job.kill();
            }
            break;
        }
        if let Some(f) = failure {
            let detected = Instant::now();
            tracing::error!("launcher: {f}; stopping the other ranks");
            // Hosts are probed while the job stops (a lost host costs the probe timeout).
            let probes = cfg
                .engine
                .remote()
                .then(|| lost_hosts(server, job, f, &hosts_of(job), net));
            // A silent rank (hung, or on a lost host) cannot act on SIGTERM, and a launcher
            // cannot stop what it cannot reach: waiting `kill_grace` for them only delays
            // the restart. The others have had `stop_grace` to exit on their own.
            let hung = !f.kind.has_status();
            if !wait_for(job, cfg.stop_grace)? {
                if hung {
                    job.kill();
                } else {
                    job.signal(libc::SIGTERM);
                    if !wait_for(job, cfg.kill_grace)? {
                        job.kill();
                    }
                }
            }
            let lost = probes.and_then(|p| p.join().ok()).unwrap_or_default();
            if !lost.is_empty() {
                tracing::error!("launcher: host(s) {} unreachable", lost.join(", "));
            }
            return Ok(JobOutcome {
                failure,
                interrupted,
                statuses: Vec::new(),
                elapsed: t0.elapsed(),
                hosts: Vec::new(),
                lost_hosts: lost,
                failed_at: Some(detected),
            });
        }
        if job.all_done() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5).min(net.heartbeat_interval));
    }
    Ok(JobOutcome {
        failure,
        interrupted,
        statuses: Vec::new(),
        elapsed: t0.elapsed(),
        hosts: Vec::new(),
        lost_hosts: Vec::new(),
        failed_at: None,
    })
}

/// The failure to report among the ranks' statuses seen in one poll: a rank killed by a
/// signal before one that exited non-zero (a rank that exits 1 because its peer was
/// killed, within the same poll, is a consequence, not the cause), else the lowest rank.
/// SIGPIPE comes last: it is what a rank gets when its peer is already gone.
fn first_failure(statuses: &[Option<RankStatus>]) -> Option<(usize, FailureKind)> {
    let rank_of = |s: RankStatus| match s {
        RankStatus::Signaled(g) if g == libc::SIGPIPE => 0,
        RankStatus::Exited(_) => 1,
        RankStatus::Signaled(_) => 2,
    };
    let failed = statuses
        .iter()
        .enumerate()
        .filter_map(|(r, s)| s.filter(|s| !s.success()).map(|s| (r, s)));
    let mut pick: Option<(usize, RankStatus)> = None;
    for (r, s) in failed {
        let better = match pick {
            None => true,
            Some((_, prev)) => rank_of(s) > rank_of(prev),
        };
        if better {
            pick = Some((r, s));
        }
    }
    pick.map(|(r, s)| {
        let kind = match s {
            RankStatus::Exited(c) => FailureKind::Exited(c),
            RankStatus::Signaled(g) => FailureKind::Signaled(g),
        };
        (r, kind)
    })
}

/// Which hosts are gone, at the time of failure `f`: the hosts of ranks that have no exit
/// status and are silent, disconnected or never joined, whose registered address does not
/// answer on the network (a dead process on a live host answers with a refusal). A host
/// none of whose ranks ever joined counts as gone when other hosts' ranks did join.
/// The probes run on a thread: join it for the answer.
fn lost_hosts(
    server: &RendezvousServer,
    job: &dyn RunningJob,
    f: RankFailure,
    hosts: &[Option<String>],
    net: &NetConfig,
) -> std::thread::JoinHandle<Vec<String>> {
    let snap = server.snapshot();
    let half = net.failure_timeout / 2;
    let suspect = |r: usize| -> bool {
        let v = &snap[r];
        job.status(r as u32).is_none()
            && (r == f.rank.index() && !f.kind.has_status()
                || v.silent > half
                || !matches!(v.state, Liveness::Running | Liveness::Finished))
    };
    let mut by_host: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (r, h) in hosts.iter().enumerate() {
        if let Some(h) = h {
            by_host.entry(h.as_str()).or_default().push(r);
        }
    }
    let someone_joined = snap.iter().any(|v| v.addr.is_some());
    let timeout = net.failure_timeout.min(Duration::from_secs(1));
    // One address per host: the question is whether the host answers, not a rank.
    let checks: Vec<(String, Option<SocketAddr>)> = by_host
        .iter()
        .filter(|(_, ranks)| ranks.iter().any(|r| suspect(*r)))
        .map(|(h, ranks)| {
            let addr = ranks
                .iter()
                .find_map(|r| snap[*r].addr.as_deref()?.parse().ok());
            (h.to_string(), addr)
        })
        .collect();
    std::thread::spawn(move || {
        let handles: Vec<_> = checks
            .into_iter()
            .map(|(h, addr)| {
                std::thread::spawn(move || {
                    let gone = match addr {
                        None => someone_joined,
                        Some(a) => !probe_host(a, timeout),
                    };
                    gone.then_some(h)
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .collect()
    })
}

#[cfg(test)]
mod first_failure_tests {
    use super::*;

    /// Regression (review): rank 1 killed by a signal and rank 0 exiting 1 because of it,
    /// seen in the same poll, blamed rank 0 and reported exit code 1 instead of 128+9.
    #[test]
    fn a_rank_killed_by_a_signal_is_blamed_before_one_that_exited_in_the_same_poll() {
        let s = [
            Some(RankStatus::Exited(1)),
            Some(RankStatus::Signaled(9)),
            None,
        ];
        assert_eq!(first_failure(&s), Some((1, FailureKind::Signaled(9))));
        let s = [
            None,
            Some(RankStatus::Exited(0)),
            Some(RankStatus::Exited(3)),
        ];
        assert_eq!(first_failure(&s), Some((2, FailureKind::Exited(3))));
        let s = [
            Some(RankStatus::Signaled(15)),
            Some(RankStatus::Signaled(9)),
        ];
        assert_eq!(first_failure(&s), Some((0, FailureKind::Signaled(15))));
        assert_eq!(first_failure(&[Some(RankStatus::Exited(0)), None]), None);
        // A broken pipe is the consequence of a peer's exit, not the cause.
        let s = [
            Some(RankStatus::Signaled(libc::SIGPIPE)),
            Some(RankStatus::Exited(2)),
        ];
        assert_eq!(first_failure(&s), Some((1, FailureKind::Exited(2))));
        let s = [
            Some(RankStatus::Signaled(libc::SIGPIPE)),
            Some(RankStatus::Signaled(9)),
        ];
        assert_eq!(first_failure(&s), Some((1, FailureKind::Signaled(9))));
    }
}
