//! What the remote engines share: their launcher processes (one `mpirun`, one `srun`, or
//! one `ssh` per rank), reading the ranks' records out of the launcher's output, and
//! stopping everything through the launcher.

use super::engine::{OutputSink, RunningJob};
use super::local::join_until;
use super::record::{Record, RecordStream, Tagging};
use super::shim::{
    encode_inject, encode_rank_env, hard_stop_signal, ENV_SHIM_INJECT, ENV_SHIM_RANK_ENV,
};
use super::{stop_sessions, LaunchConfig, RankStatus, ShimCommand};
use crate::error::{ErrorKind, NetError, Result};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The ranks as the records told them.
#[derive(Debug, Default)]
pub(crate) struct RankBook {
    pub statuses: Vec<Option<RankStatus>>,
    pub hosts: Vec<Option<String>>,
    /// Slurm steps the ranks run in (`job.step`).
    pub steps: Vec<String>,
    /// A record of the rank arrived (its shim runs).
    pub seen: Vec<bool>,
}

pub(crate) type Book = Arc<Mutex<RankBook>>;

fn lock_book(b: &Book) -> MutexGuard<'_, RankBook> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a hard stop lets the shims in a launcher's session act on their hard-stop
/// signal (SIGKILL their rank's group, exit) before it SIGKILLs what is left. They act as
/// soon as they are scheduled; this only bounds a very loaded machine.
const SESSION_SETTLE: Duration = Duration::from_secs(1);

/// An engine's last resort to stop what its launcher process could not.
pub(crate) type HardKill = Box<dyn Fn(&RankBook) + Send>;

/// One launcher process.
pub(crate) struct Proc {
    child: Child,
    /// When its readers last got bytes (ms since `born`).
    last_read: Arc<std::sync::atomic::AtomicU64>,
    born: Instant,
    /// For messages: `mpirun`, `srun`, `ssh <host>`.
    pub name: String,
    readers: Vec<JoinHandle<()>>,
    stdin: Option<ChildStdin>,
    status: Option<ExitStatus>,
    exited_at: Option<Instant>,
}

impl Proc {
    pub(crate) fn stdin_mut(&mut self) -> Option<&mut ChildStdin> {
        self.stdin.as_mut()
    }
}

/// A started remote incarnation.
pub(crate) struct RemoteJob {
    pub procs: Vec<Proc>,
    pub book: Book,
    /// Extra hard stop (srun: `scancel` of the steps).
    pub hard_kill: Option<HardKill>,
    /// Removed when the job is finished (srun's hostfile).
    pub temp_files: Vec<std::path::PathBuf>,
}

/// The shim invocation: `shim.program shim.args… [flags] -- program args…`.
pub(crate) fn shim_argv(cfg: &LaunchConfig, flags: &[&str]) -> Result<(OsString, Vec<OsString>)> {
    let shim: &ShimCommand = cfg.shim.as_ref().ok_or_else(|| {
        NetError::new(
            ErrorKind::Config,
            format!(
                "the {} engine needs the rank shim (LaunchConfig::shim, e.g. `lazarus __shim`)",
                cfg.engine.name()
            ),
        )
    })?;
    let mut args: Vec<OsString> = shim.args.clone();
    args.extend(flags.iter().map(OsString::from));
    args.push("--".into());
    args.push(cfg.program.clone());
    args.extend(cfg.args.iter().cloned());
    Ok((shim.program.clone().into_os_string(), args))
}

/// Linux's limit on one environment string, `NAME=value` and its NUL (`MAX_ARG_STRLEN`,
/// 32 pages): `execve` fails with E2BIG beyond it.
pub(crate) const MAX_ENV_STRING: usize = 128 * 1024;

/// The environment every rank gets through a remote engine: the launcher's, plus the
/// shim's encoded per-rank variables and planned kills. `only`: the one rank this
/// environment is for (ssh starts each rank apart: it gets its own entries alone);
/// `None`: one environment for all ranks (mpirun, srun), which carries every rank's
/// entries in one variable and is refused, naming the limit, when that variable would
/// pass Linux's limit for one environment string (the launcher would fail with E2BIG).
pub(crate) fn shim_env(
    cfg: &LaunchConfig,
    env: &[(OsString, OsString)],
    only: Option<u32>,
) -> Result<Vec<(OsString, OsString)>> {
    let mut out = env.to_vec();
    let entries: Vec<(u32, OsString, OsString)> = cfg
        .rank_env
        .iter()
        .filter(|(r, _, _)| only.is_none_or(|o| *r == o))
        .cloned()
        .collect();
    if !entries.is_empty() {
        // Grouped by value (docs/RUNTIME.md): one host name per host, not per rank.
        let value = encode_rank_env(&entries);
        let size = ENV_SHIM_RANK_ENV.len() + value.len() + 2;
        if size > MAX_ENV_STRING {
            return Err(NetError::new(
                ErrorKind::Config,
                format!(
                    "the {} engine passes every rank's own variables ({} entries for {} ranks, \
                     such as LAZARUS_HOST) in one environment variable, {ENV_SHIM_RANK_ENV}, \
                     of {size} bytes even grouped by value: over Linux's limit of \
                     {MAX_ENV_STRING} bytes for one environment string (the launch would \
                     fail with E2BIG); use the ssh engine, fewer hosts or shorter host names",
                    cfg.engine.name(),
                    entries.len(),
                    cfg.ranks
                ),
            ));
        }
        out.push((ENV_SHIM_RANK_ENV.into(), value.into()));
    }
    if !cfg.inject.is_empty() {
        out.push((ENV_SHIM_INJECT.into(), encode_inject(&cfg.inject).into()));
    }
    // Ranks log like the launcher unless told otherwise.
    if let Some(v) = std::env::var_os("RUST_LOG") {
        if !out.iter().any(|(k, _)| k == "RUST_LOG") {
            out.push(("RUST_LOG".into(), v));
        }
    }
    Ok(out)
}

/// Spawns one launcher process in its own session (so a hard stop takes its local helpers,
/// e.g. ssh clients, with it) and starts reading its output: stdout carries the ranks'
/// records, stderr text.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    mut cmd: Command,
    name: String,
    tagging: Tagging,
    trust_hosts: bool,
    book: &Book,
    sink: &Arc<OutputSink>,
    with_stdin: bool,
) -> Result<Proc> {
    cmd.stdin(if with_stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: between fork and exec: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| NetError::new(ErrorKind::Launch, format!("cannot start {name}: {e}")))?;
    let engine: Arc<str> = Arc::from(name.split(' ').next().unwrap_or("launcher"));
    let mut readers = Vec::new();
    let born = Instant::now();
    let last_read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    if let Some(o) = child.stdout.take() {
        let (book, sink, engine) = (book.clone(), sink.clone(), engine.clone());
        let o = Activity::new(o, last_read.clone(), born);
        readers.push(std::thread::spawn(move || {
            read_records(o, tagging, trust_hosts, &book, &sink, &engine)
        }));
    }
    if let Some(e) = child.stderr.take() {
        let (sink, engine) = (sink.clone(), engine.clone());
        let e = Activity::new(e, last_read.clone(), born);
        readers.push(std::thread::spawn(move || {
            read_text(e, tagging, &sink, &engine)
        }));
    }
    let stdin = child.stdin.take();
    Ok(Proc {
        child,
        last_read,
        born,
        name,
        readers,
        stdin,
        status: None,
        exited_at: None,
    })
}

/// A pipe that records when it last delivered bytes.
struct Activity<R> {
    inner: R,
    last: Arc<std::sync::atomic::AtomicU64>,
    born: Instant,
}

impl<R> Activity<R> {
    fn new(inner: R, last: Arc<std::sync::atomic::AtomicU64>, born: Instant) -> Self {
        Activity { inner, last, born }
    }
}

impl<R: Read> Read for Activity<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let ms = self.born.elapsed().as_millis() as u64;
        self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Per rank, the line being reassembled from pieces.
#[derive(Default)]
struct Partial {
    out: Vec<u8>,
    err: Vec<u8>,
}

fn read_records(
    mut src: impl Read,
    tagging: Tagging,
    trust_hosts: bool,
    book: &Book,
    sink: &OutputSink,
    engine: &str,
) {
    let mut rs = RecordStream::new(tagging);
    let mut partial: std::collections::BTreeMap<u32, Partial> = Default::default();
    let mut text = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut handle = |(recs, t): (Vec<(u32, Record)>, Vec<u8>),
                      partial: &mut std::collections::BTreeMap<u32, Partial>| {
        text.extend_from_slice(&t);
        while let Some(nl) = text.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = text.drain(..=nl).collect();
            sink.engine_line(engine, &line);
        }
        for (r, rec) in recs {
            on_record(r, rec, trust_hosts, book, sink, partial);
        }
    };
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => handle(rs.feed(&buf[..n]), &mut partial),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    handle(rs.finish(), &mut partial);
    sink.engine_line(engine, &text);
    for (r, p) in partial {
        // The shim died mid-line: what it sent is still the rank's output.
        if !p.out.is_empty() {
            sink.line(r, false, &p.out);
        }
        if !p.err.is_empty() {
            sink.line(r, true, &p.err);
        }
    }
    for (r, bad, err, left) in rs.problems() {
        tracing::warn!(
            "{engine}: rank {r}: {bad} malformed output record(s) skipped{}{}",
            err.map(|e| format!(" (last: {e})")).unwrap_or_default(),
            if left > 0 {
                format!(", {left} byte(s) of an unfinished record at the end")
            } else {
                String::new()
            }
        );
    }
}

fn on_record(
    r: u32,
    rec: Record,
    trust_hosts: bool,
    book: &Book,
    sink: &OutputSink,
    partial: &mut std::collections::BTreeMap<u32, Partial>,
) {
    let slot = r as usize;
    if let Some(s) = lock_book(book).seen.get_mut(slot) {
        *s = true;
    }
    match rec {
        Record::Out { bytes, end } => {
            let p = partial.entry(r).or_default();
            p.out.extend_from_slice(&bytes);
            if end {
                let line = std::mem::take(&mut p.out);
                sink.line(r, false, &line);
            }
        }
        Record::Err { bytes, end } => {
            let p = partial.entry(r).or_default();
            p.err.extend_from_slice(&bytes);
            if end {
                let line = std::mem::take(&mut p.err);
                sink.line(r, true, &line);
            }
        }
        Record::Host(h) if trust_hosts => {
            let mut b = lock_book(book);
            if let Some(x) = b.hosts.get_mut(slot) {
                *x = Some(h);
            }
        }
        Record::Step(s) => {
            let mut b = lock_book(book);
            if !b.steps.contains(&s) {
                b.steps.push(s);
            }
        }
        Record::Host(_) | Record::Pid(_) => {}
        Record::Injected => {
            if let Some(o) = sink.observer() {
                o.injected(r);
            }
        }
        Record::Exited(c) => set_status(book, slot, RankStatus::Exited(c)),
        Record::Signaled(s) => set_status(book, slot, RankStatus::Signaled(s)),
    }
}

fn set_status(b: &Book, slot: usize, s: RankStatus) {
    if let Some(x) = lock_book(b).statuses.get_mut(slot) {
        x.get_or_insert(s);
    }
}

/// Stderr of a launcher: the ranks' (the shim's own messages) by tag, the rest its own.
fn read_text(mut src: impl Read, tagging: Tagging, sink: &OutputSink, engine: &str) {
    use super::record::{Demux, Piece};
    let mut d = Demux::new(tagging);
    let mut lines: std::collections::BTreeMap<Option<u32>, Vec<u8>> = Default::default();
    let mut buf = vec![0u8; 16 << 10];
    let emit = |pieces: Vec<Piece>,
                lines: &mut std::collections::BTreeMap<Option<u32>, Vec<u8>>| {
        for p in pieces {
            let (who, bytes) = match p {
                Piece::Rank(r, b) => (Some(r), b),
                Piece::Untagged(b) => (None, b),
            };
            let acc = lines.entry(who).or_default();
            for b in bytes {
                acc.push(b);
                if b == b'\n' {
                    let line = std::mem::take(acc);
                    match who {
                        Some(r) => sink.line(r, true, &line),
                        None => sink.engine_line(engine, &line),
                    }
                }
            }
        }
    };
    loop {
        let mut pieces = Vec::new();
        match src.read(&mut buf) {
            Ok(n) if n > 0 => d.feed(&buf[..n], &mut pieces),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            _ => {
                d.finish(&mut pieces);
                emit(pieces, &mut lines);
                break;
            }
        }
        emit(pieces, &mut lines);
    }
    for (who, rest) in lines {
        if !rest.is_empty() {
            match who {
                Some(r) => sink.line(r, true, &rest),
                None => sink.engine_line(engine, &rest),
            }
        }
    }
}

impl RemoteJob {
    pub(crate) fn new(ranks: u32, hosts: &[String]) -> Self {
        RemoteJob {
            procs: Vec::new(),
            book: Arc::new(Mutex::new(RankBook {
                statuses: vec![None; ranks as usize],
                hosts: hosts.iter().cloned().map(Some).collect(),
                steps: Vec::new(),
                seen: vec![false; ranks as usize],
            })),
            hard_kill: None,
            temp_files: Vec::new(),
        }
    }

    fn procs_done(&self) -> bool {
        self.procs.iter().all(|p| p.status.is_some())
    }
}

impl RunningJob for RemoteJob {
    fn poll(&mut self) -> Result<()> {
        for p in &mut self.procs {
            if p.status.is_none() {
                if let Some(s) = p
                    .child
                    .try_wait()
                    .map_err(|e| NetError::io(format!("waiting for {}", p.name), e))?
                {
                    p.status = Some(s);
                    p.exited_at = Some(Instant::now());
                    if !s.success() {
                        tracing::debug!("{} ended with {s}", p.name);
                    }
                }
            }
        }
        Ok(())
    }

    fn status(&self, rank: u32) -> Option<RankStatus> {
        lock_book(&self.book)
            .statuses
            .get(rank as usize)
            .copied()
            .flatten()
    }

    fn all_done(&self) -> bool {
        if lock_book(&self.book).statuses.iter().all(Option::is_some) {
            return true;
        }
        // The launcher processes are gone: once their output is read (or after a moment,
        // if a helper on an unreachable host still holds a pipe) nothing more will come.
        self.procs_done()
            && self.procs.iter().all(|p| {
                p.readers.iter().all(|t| t.is_finished())
                    || p.exited_at
                        .is_some_and(|t| t.elapsed() > Duration::from_secs(2))
            })
    }

    fn signal(&mut self, sig: i32) {
        if sig == libc::SIGKILL {
            // srun cannot forward a SIGKILL sent to it (it dies first) and the step would
            // run on: its engine's hard kill (scancel) reaches the ranks. mpirun has none:
            // its death stops the ranks through the shims' parent-death signal, which
            // lets each shim take its rank's group with it (killing the shims' group
            // instead would orphan the ranks). Found in review.
            if let Some(k) = &self.hard_kill {
                k(&lock_book(&self.book));
            }
        }
        for p in self.procs.iter_mut().filter(|p| p.status.is_none()) {
            match p.stdin.as_mut() {
                // The shim forwards it to the rank's group.
                Some(w) => {
                    let _ = writeln!(w, "sig {sig}").and_then(|()| w.flush());
                }
                // mpirun and srun forward it to every rank.
                None => {
                    // SAFETY: a child we spawned and have not reaped.
                    unsafe { libc::kill(p.child.id() as i32, sig) };
                }
            }
        }
    }

    fn kill(&mut self) {
        if let Some(k) = &self.hard_kill {
            k(&lock_book(&self.book));
        }
        for p in &mut self.procs {
            // Closing a shim's control input stops its rank even if the kill below only
            // reaches the local ssh client.
            drop(p.stdin.take());
        }
        // The launchers themselves die at once (mpirun's death is its shims' hard-stop
        // signal too), then the rest of their sessions, including what a launcher started
        // in groups of their own (mpirun's ssh clients), get the shims' hard-stop signal.
        for p in self.procs.iter().filter(|p| p.status.is_none()) {
            // SAFETY: a child we spawned and have not reaped.
            unsafe { libc::kill(p.child.id() as i32, libc::SIGKILL) };
        }
        let sids: Vec<i32> = self.procs.iter().map(|p| p.child.id() as i32).collect();
        stop_sessions(&sids, hard_stop_signal(), SESSION_SETTLE);
    }

    fn started(&self, rank: u32) -> bool {
        lock_book(&self.book)
            .seen
            .get(rank as usize)
            .copied()
            .unwrap_or(false)
    }

    fn host(&self, rank: u32) -> Option<String> {
        lock_book(&self.book)
            .hosts
            .get(rank as usize)
            .cloned()
            .flatten()
    }

    fn finish(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while !self.procs_done() && Instant::now() < deadline {
            let _ = self.poll();
            std::thread::sleep(Duration::from_millis(5));
        }
        // Readers of a launcher whose helper on an unreachable host still holds the pipe
        // (e.g. its ssh client) never see the end: once the launcher process is gone and
        // its pipes stayed quiet for a moment, they are left behind (the closed sink drops
        // what they read later: output of a dead incarnation, rolled back anyway).
        let quiet = Duration::from_millis(300);
        let bound = deadline.min(Instant::now() + Duration::from_secs(2));
        loop {
            let waiting = self.procs.iter().any(|p| {
                let last = Duration::from_millis(p.last_read.load(Ordering::Relaxed));
                !p.readers.iter().all(|t| t.is_finished())
                    && p.born.elapsed().saturating_sub(last) < quiet
            });
            if !waiting || Instant::now() >= bound {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for p in &mut self.procs {
            join_until(&mut p.readers, Instant::now());
        }
        for f in self.temp_files.drain(..) {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::engine::SeenLines;
    use super::super::record;
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Whether `pid` is a live process (not gone, not a zombie waiting for its reaper).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| Some(s.get(s.rfind(')')? + 2..)?.starts_with('Z')))
            .is_some_and(|zombie| !zombie)
    }

    /// A job of one launcher process running `cmd`, and the launcher's session id.
    fn job_of(cmd: Command, name: &str) -> (RemoteJob, i32) {
        let mut job = RemoteJob::new(1, &["h".to_string()]);
        let sink = Arc::new(OutputSink::new(None));
        let launcher = spawn(
            cmd,
            name.into(),
            Tagging::Fixed(0),
            false,
            &job.book,
            &sink,
            false,
        )
        .unwrap();
        let sid = launcher.child.id() as i32;
        job.procs.push(launcher);
        (job, sid)
    }

    /// The process id a test's process wrote into `file`, waiting up to 10 s for it.
    fn pid_in(file: &std::path::Path) -> i32 {
        let t = Instant::now();
        loop {
            match std::fs::read_to_string(file).map(|s| s.trim().parse()) {
                Ok(Ok(pid)) => return pid,
                _ if t.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                other => panic!("no pid in {}: {other:?}", file.display()),
            }
        }
    }

    /// Regression (an ssh client of mpirun to a lost host outlived every test that lost
    /// a host): a launcher's child in a process group of its own survived the hard stop
    /// of the job, which killed only the launcher's group.
    #[test]
    fn a_launchers_child_in_its_own_group_dies_with_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child");
        let mut cmd = Command::new("bash");
        // Job control puts the background job in a group of its own, as Open MPI does
        // with its ssh clients.
        cmd.arg("-c").arg(format!(
            "set -m; sleep 300 & echo $! > {}; exec sleep 300",
            pid_file.display()
        ));
        let (mut job, sid) = job_of(cmd, "bash");
        let t = Instant::now();
        let child = pid_in(&pid_file);
        // SAFETY: getsid and getpgid on a process id.
        unsafe {
            assert_eq!(libc::getsid(child), sid);
            assert_ne!(
                libc::getpgid(child),
                sid,
                "the child has a group of its own"
            );
        }
        job.kill();
        job.finish(Duration::from_secs(5));
        while alive(child) && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(child), "the child outlived the job");
    }

    /// Regression (a rank's `sleep` outlived a hard-stopped job under mpirun on a loaded
    /// machine): the hard stop SIGKILLed the launcher's whole session at once, so a shim
    /// that had not yet acted on its SIGTERM died without stopping its rank's group, and
    /// what the rank had started (in the rank's own session) lived on. The stand-in shim
    /// here stops its "rank" only on the shims' hard-stop signal, as the real one does.
    #[test]
    fn a_shim_killed_before_it_acted_orphaned_what_its_rank_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("rank");
        let shim = dir.path().join("shim.sh");
        std::fs::write(
            &shim,
            format!(
                "setsid sh -c 'echo $$ > {0}.tmp; mv {0}.tmp {0}; exec sleep 300.25' &\n\
                 trap 'kill $(cat {0}); exit 0' {1}\n\
                 while :; do sleep 0.05; done\n",
                pid_file.display(),
                hard_stop_signal()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("sh {} & exec sleep 300", shim.display()));
        let (mut job, _) = job_of(cmd, "sh");
        let rank = pid_in(&pid_file);
        // Let the stand-in shim reach its loop with the trap set.
        std::thread::sleep(Duration::from_millis(200));
        job.kill();
        job.finish(Duration::from_secs(5));
        let t = Instant::now();
        while alive(rank) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let orphan = alive(rank);
        if orphan {
            // SAFETY: kill on the pid we were told; do not leave it behind.
            unsafe { libc::kill(rank, libc::SIGKILL) };
        }
        assert!(!orphan, "the rank's process outlived the job");
    }

    /// Regression: the shim ended a program's unfinished last line with a newline, so a
    /// marker cut short by the program's death (`resumed 5 50 12` as `resumed 5 50 1`)
    /// reached the output commit as a whole marker under ssh, mpirun and srun. Through
    /// the shim's records the observer now sees the line cut, as with the local engine.
    #[test]
    fn a_line_cut_by_the_programs_death_reaches_the_observer_cut_through_the_shim() {
        let program = b"whole\n\x1elazarus:resumed 5 50 1".to_vec();
        let sent = Mutex::new(Vec::new());
        super::super::shim::pump(
            std::io::Cursor::new(program),
            false,
            &AtomicU32::new(0),
            None,
            |recs| {
                let mut s = sent.lock().unwrap_or_else(|e| e.into_inner());
                for r in recs {
                    record::encode(r, &mut s);
                }
            },
        );
        let sent = sent.into_inner().unwrap_or_else(|e| e.into_inner());
        let seen = Arc::new(SeenLines::default());
        let sink = OutputSink::new(Some(seen.clone()));
        let job = RemoteJob::new(1, &["h".to_string()]);
        read_records(
            sent.as_slice(),
            Tagging::Fixed(0),
            false,
            &job.book,
            &sink,
            "ssh",
        );
        assert_eq!(
            seen.lines(),
            [
                (0, b"whole\n".to_vec()),
                (0, b"\x1elazarus:resumed 5 50 1".to_vec())
            ]
        );
    }

    /// Review #1: LAZARUS_SHIM_RANK_ENV carried every rank's entries (LAZARUS_HOST per
    /// rank) in one variable: past Linux's 128 KiB limit for one environment string at a
    /// few thousand ranks, so mpirun/srun failed with E2BIG, and under ssh each rank's
    /// control message carried the whole table (a write that blocked until ssh had
    /// authenticated). A table that still does not fit (a distinct value for every one of
    /// 16384 ranks: the grouped encoding cannot shorten it) is refused up front naming the
    /// limit; each ssh rank gets only its own entries.
    #[test]
    fn a_per_rank_env_table_past_the_env_string_limit_is_refused_and_ssh_ranks_get_theirs() {
        let mut cfg = LaunchConfig::new(16384, "prog", Vec::new());
        cfg.engine = Arc::new(super::super::MpirunEngine {
            program: "mpirun".into(),
            agent: None,
            extra_args: Vec::new(),
        });
        let host = |r: u32| format!("node-{:05}.cluster.example.org", r);
        cfg.rank_env = (0..16384)
            .map(|r| (r, "LAZARUS_HOST".into(), host(r).into()))
            .collect();
        let e = shim_env(&cfg, &[], None).unwrap_err().to_string();
        assert!(
            e.contains(ENV_SHIM_RANK_ENV) && e.contains("131072") && e.contains("mpirun"),
            "{e}"
        );
        // ssh: one rank's own entries alone.
        let env = shim_env(&cfg, &[], Some(77)).unwrap();
        let (_, v) = env.iter().find(|(k, _)| k == ENV_SHIM_RANK_ENV).unwrap();
        let v = v.to_str().unwrap();
        assert_eq!(
            v,
            encode_rank_env(&[(77, "LAZARUS_HOST".into(), host(77).into())])
        );
        // A small table is passed whole: one section (the key) with an item per host.
        cfg.rank_env.truncate(8);
        let env = shim_env(&cfg, &[], None).unwrap();
        let (_, v) = env.iter().find(|(k, _)| k == ENV_SHIM_RANK_ENV).unwrap();
        let v = v.to_str().unwrap();
        assert_eq!(
            (v.split(';').count(), v.split('|').count()),
            (2, 1 + 8),
            "{v}"
        );
    }
}
