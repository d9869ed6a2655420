//! The local engine: every rank a child process of the launcher, on this machine.

use super::engine::{Engine, OutputSink, RunningJob, StartSpec};
use super::{killpg, RankStatus};
use crate::error::{ErrorKind, NetError, Result};
use crate::watch::ENV_RANK_SESSION;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Starts ranks as child processes of this process (`lazarus run`'s default).
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalEngine;

struct LocalJob {
    children: Vec<Child>,
    statuses: Vec<Option<RankStatus>>,
    pumps: Vec<JoinHandle<()>>,
}

/// Forwards the lines of one pipe of `rank` to the sink until the pipe closes.
pub(crate) fn pump(rank: u32, src: impl Read, to_stderr: bool, sink: Arc<OutputSink>) {
    let mut r = BufReader::new(src);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => sink.line(rank, to_stderr, &line),
        }
    }
}

/// Joins `threads`, giving up on those still running at `deadline` (they end when their
/// pipe closes; their late output is dropped by the closed sink).
pub(crate) fn join_until(threads: &mut Vec<JoinHandle<()>>, deadline: Instant) {
    while !threads.is_empty() {
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(threads)
            .into_iter()
            .partition(|t| t.is_finished());
        for t in done {
            let _ = t.join();
        }
        *threads = running;
        if threads.is_empty() || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Engine for LocalEngine {
    fn name(&self) -> &'static str {
        "local"
    }

    fn remote(&self) -> bool {
        false
    }

    fn start(&self, spec: StartSpec<'_>) -> Result<Box<dyn RunningJob>> {
        let cfg = spec.cfg;
        let mut job = LocalJob {
            children: Vec::new(),
            statuses: Vec::new(),
            pumps: Vec::new(),
        };
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        for r in 0..cfg.ranks {
            let mut cmd = Command::new(&cfg.program);
            cmd.args(&cfg.args)
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .env("LAZARUS_RANK", r.to_string())
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
                    job.kill();
                    job.finish(Duration::from_secs(5));
                    return Err(NetError::new(
                        ErrorKind::Launch,
                        format!("cannot start {:?} as rank {r}: {e}", cfg.program),
                    ));
                }
            };
            if let Some(o) = spec.sink.observer() {
                o.spawned(r, child.id());
            }
            if let Some(o) = child.stdout.take() {
                let sink = spec.sink.clone();
                job.pumps
                    .push(std::thread::spawn(move || pump(r, o, false, sink)));
            }
            if let Some(e) = child.stderr.take() {
                let sink = spec.sink.clone();
                job.pumps
                    .push(std::thread::spawn(move || pump(r, e, true, sink)));
            }
            job.children.push(child);
            job.statuses.push(None);
        }
        Ok(Box::new(job))
    }
}

impl LocalJob {
    /// Signals every rank's process group (each rank leads its own, see the module doc).
    /// Also the groups of ranks that already exited: what they started may still run.
    fn signal_groups(&self, sig: i32) {
        for c in &self.children {
            killpg(c.id() as i32, sig);
        }
    }
}

impl RunningJob for LocalJob {
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

    fn status(&self, rank: u32) -> Option<RankStatus> {
        self.statuses.get(rank as usize).copied().flatten()
    }

    fn all_done(&self) -> bool {
        self.statuses.iter().all(Option::is_some)
    }

    fn signal(&mut self, sig: i32) {
        self.signal_groups(sig);
    }

    fn kill(&mut self) {
        self.signal_groups(libc::SIGKILL);
    }

    fn host(&self, _rank: u32) -> Option<String> {
        Some("localhost".into())
    }

    fn finish(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while !self.all_done() && Instant::now() < deadline {
            let _ = self.poll();
            std::thread::sleep(Duration::from_millis(5));
        }
        join_until(&mut self.pumps, deadline);
    }
}
