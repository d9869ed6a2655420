//! The rank shim: what a cluster launcher (`mpirun`, `srun`, `ssh`) starts on a rank's
//! host in place of the program (`lazarus __shim [--newlines] [--stdin-control] -- PROG
//! ARGS…`, or the `lazarus-shim` binary; `--rank-from VAR` names the launcher's rank
//! variable, by default the first of `LAZARUS_RANK`, `SLURM_PROCID`, `OMPI_COMM_WORLD_RANK`…).
//!
//! It runs the program as the rank (`LAZARUS_RANK`/`LAZARUS_WORLD_SIZE` from the
//! launcher's rank variables), in its own session with a death signal, and reports to the
//! launcher through its stdout in records (`record.rs`): host, pid, every output line,
//! injected kills, and the exit status. It stops the program's whole process group when
//! told to stop (a signal, or end of its control stdin), when its own parent dies (the
//! launcher's daemon), and after the program exits (nothing the rank started survives).
//!
//! Environment it reads besides the rank variables: `LAZARUS_SHIM_RANK_ENV` (variables for
//! ranks: `v2;KEY|RANKS:VALUE|…;…`, see `encode_rank_env`), `LAZARUS_SHIM_INJECT` (planned
//! kills: `rank@start:MS` or `rank@parts:K+MS`, `;`-separated), `LAZARUS_HOST` (the host's
//! name as the launcher knows it; else `SLURMD_NODENAME`, else the hostname). With
//! `--stdin-control` (ssh) it first reads `env HEXKEY HEXVAL` lines up to `go`, then `sig N`
//! lines; end of input stops the rank.

use super::record::{self, Record};
use super::InjectAt;
use crate::env::{RANK_VARS, SIZE_VARS};
use crate::watch::ENV_RANK_SESSION;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per-rank variables for the shim (see the module doc).
pub const ENV_SHIM_RANK_ENV: &str = "LAZARUS_SHIM_RANK_ENV";
/// Planned kills for the shim (see the module doc).
pub const ENV_SHIM_INJECT: &str = "LAZARUS_SHIM_INJECT";
/// The rank's host name as the launcher knows it.
pub const ENV_HOST: &str = "LAZARUS_HOST";

/// How long the program's group gets between SIGTERM and SIGKILL when the shim stops it.
const STOP_GRACE: Duration = Duration::from_secs(2);

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Marks the encoding of [`ENV_SHIM_RANK_ENV`]: a shim of another version refuses the
/// variable instead of misreading it.
const RANK_ENV_FORMAT: &str = "v2";

/// Escapes `b` for one field of [`ENV_SHIM_RANK_ENV`]: letters, digits and `._-` (host
/// names, variable names) stand for themselves, every other byte is `%XX`.
fn escape_field(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &x in b {
        if x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-') {
            s.push(char::from(x));
        } else {
            s.push_str(&format!("%{x:02x}"));
        }
    }
    s
}

fn unescape_field(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(x) = bytes.next() {
        match x {
            b'%' => {
                let h = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&h).ok()?, 16).ok()?);
            }
            x if x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-') => out.push(x),
            _ => return None,
        }
    }
    Some(out)
}

/// Writes the sorted, distinct `ranks` as comma-separated arithmetic progressions
/// (`a`, `a-b` for a step of 1, `a-b/s`): a block placement (ranks 0-31 on one host) and a
/// cyclic one (ranks 3, 11, 19… on the fourth of eight hosts) are one item per host.
fn encode_ranks(ranks: &[u32]) -> String {
    let mut items = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let a = ranks[i];
        // The longest progression from `a` with the step to its successor; fewer than
        // three terms are written one by one unless consecutive.
        let (mut j, mut step) = (i, 1);
        if let Some(&next) = ranks.get(i + 1) {
            step = next - a;
            j = i + 1;
            while ranks.get(j + 1).is_some_and(|&r| r - ranks[j] == step) {
                j += 1;
            }
            if j - i < 2 && step != 1 {
                j = i;
            }
        }
        let b = ranks[j];
        items.push(match (j - i, step) {
            (0, _) => format!("{a}"),
            (_, 1) => format!("{a}-{b}"),
            _ => format!("{a}-{b}/{step}"),
        });
        i = j + 1;
    }
    items.join(",")
}

/// Whether rank `me` is in `ranks` (as [`encode_ranks`] writes them); `None`: malformed.
fn ranks_contain(ranks: &str, me: u32) -> Option<bool> {
    let mut found = false;
    for item in ranks.split(',') {
        let (span, step) = match item.split_once('/') {
            Some((span, step)) => (span, step.parse::<u32>().ok().filter(|s| *s > 0)?),
            None => (item, 1),
        };
        let (a, b) = match span.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let a = span.parse::<u32>().ok()?;
                (a, a)
            }
        };
        if a > b {
            return None;
        }
        found |= (a..=b).contains(&me) && (me - a) % step == 0;
    }
    Some(found)
}

/// Encodes `(rank, key, value)` entries for [`ENV_SHIM_RANK_ENV`]: `v2`, then one
/// `;`-separated section per key, `KEY|RANKS:VALUE|RANKS:VALUE…`, one item per distinct
/// value with its ranks as progressions, the fields escaped. A table of one
/// `LAZARUS_HOST` per rank costs about one host name per *host* (≈ 20 bytes for a name of
/// 8 characters: 65536 ranks on 4096 such hosts take ~90 KiB of the 128 KiB an
/// environment string may hold). For a rank with several values of one key the last one
/// counts, as in a process's environment.
pub(crate) fn encode_rank_env(entries: &[(u32, OsString, OsString)]) -> String {
    use std::collections::{BTreeMap, HashMap};
    use std::os::unix::ffi::OsStrExt;
    let mut last: BTreeMap<(u32, &OsString), &OsString> = BTreeMap::new();
    for (r, k, v) in entries {
        last.insert((*r, k), v);
    }
    // Keys, and values within a key, in the order of their first entry: the output does
    // not depend on how a map orders byte strings, and reads like the table it came from.
    type Values<'a> = Vec<(&'a OsString, Vec<u32>)>;
    let mut keys: Vec<(&OsString, Values<'_>)> = Vec::new();
    let mut index: HashMap<(&OsString, &OsString), (usize, usize)> = HashMap::new();
    for (r, k, _) in entries {
        let v = last[&(*r, k)];
        let (ki, vi) = *index.entry((k, v)).or_insert_with(|| {
            let ki = match keys.iter().position(|(key, _)| *key == k) {
                Some(ki) => ki,
                None => {
                    keys.push((k, Vec::new()));
                    keys.len() - 1
                }
            };
            keys[ki].1.push((v, Vec::new()));
            (ki, keys[ki].1.len() - 1)
        });
        keys[ki].1[vi].1.push(*r);
    }
    let mut out = String::from(RANK_ENV_FORMAT);
    for (k, values) in keys {
        out.push(';');
        out.push_str(&escape_field(k.as_bytes()));
        for (v, mut ranks) in values {
            ranks.sort_unstable();
            ranks.dedup();
            out.push('|');
            out.push_str(&encode_ranks(&ranks));
            out.push(':');
            out.push_str(&escape_field(v.as_bytes()));
        }
    }
    out
}

/// Rank `me`'s variables in an [`ENV_SHIM_RANK_ENV`] value; errors name the section,
/// never its text (a value is the launcher's to keep).
fn decode_rank_env(s: &str, me: u32) -> Result<Vec<(OsString, OsString)>, String> {
    use std::os::unix::ffi::OsStringExt;
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut sections = s.split(';');
    if sections.next() != Some(RANK_ENV_FORMAT) {
        return Err(format!(
            "{ENV_SHIM_RANK_ENV} is not in this shim's format ({RANK_ENV_FORMAT}): the launcher \
             and the shim must be the same version of lazarus"
        ));
    }
    let mut out = Vec::new();
    for (i, section) in sections.enumerate() {
        let bad = || format!("{ENV_SHIM_RANK_ENV}: bad section {}", i + 1);
        let mut items = section.split('|');
        let key = items
            .next()
            .and_then(unescape_field)
            .filter(|k| !k.is_empty())
            .ok_or_else(bad)?;
        let mut mine = None;
        for item in items {
            let (ranks, value) = item.split_once(':').ok_or_else(bad)?;
            let value = unescape_field(value).ok_or_else(bad)?;
            if ranks_contain(ranks, me).ok_or_else(bad)? {
                mine = Some(value);
            }
        }
        if let Some(v) = mine {
            out.push((OsString::from_vec(key), OsString::from_vec(v)));
        }
    }
    Ok(out)
}

/// Encodes planned kills for [`ENV_SHIM_INJECT`].
pub(crate) fn encode_inject(kills: &[(u32, InjectAt)]) -> String {
    kills
        .iter()
        .map(|(r, at)| match at {
            InjectAt::AfterStart(d) => format!("{r}@start:{}", d.as_millis()),
            InjectAt::AfterParts { parts, delay } => {
                format!("{r}@parts:{parts}+{}", delay.as_millis())
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

fn decode_inject(s: &str, me: u32) -> Result<Vec<InjectAt>, String> {
    let mut out = Vec::new();
    for e in s.split(';').filter(|e| !e.is_empty()) {
        let bad = || format!("{ENV_SHIM_INJECT}: bad entry {e:?}");
        let (r, what) = e.split_once('@').ok_or_else(bad)?;
        let r: u32 = r.parse().map_err(|_| bad())?;
        let at = if let Some(ms) = what.strip_prefix("start:") {
            InjectAt::AfterStart(Duration::from_millis(ms.parse().map_err(|_| bad())?))
        } else if let Some(spec) = what.strip_prefix("parts:") {
            let (k, ms) = spec.split_once('+').ok_or_else(bad)?;
            InjectAt::AfterParts {
                parts: k.parse().map_err(|_| bad())?,
                delay: Duration::from_millis(ms.parse().map_err(|_| bad())?),
            }
        } else {
            return Err(bad());
        };
        if r == me {
            out.push(at);
        }
    }
    Ok(out)
}

/// Serialized record output on stdout.
struct Out {
    newlines: bool,
    lock: Mutex<()>,
}

impl Out {
    fn emit(&self, recs: &[Record]) {
        let mut buf = Vec::new();
        for r in recs {
            record::encode(r, &mut buf);
        }
        if self.newlines {
            buf.push(b'\n');
        }
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut o = std::io::stdout().lock();
        // The launcher is our only reader; if it is gone there is nobody to tell.
        let _ = o.write_all(&buf).and_then(|()| o.flush());
    }
}

fn lookup(extra: &[(OsString, OsString)], name: &str) -> Option<String> {
    extra
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.to_string_lossy().into_owned())
        .or_else(|| std::env::var(name).ok())
}

fn first_of(extra: &[(OsString, OsString)], names: &[&str]) -> Result<Option<u64>, String> {
    for n in names {
        if let Some(v) = lookup(extra, n) {
            return v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| format!("{n}={v:?} is not a non-negative integer"));
        }
    }
    Ok(None)
}

/// The kernel's host name (informational: engines trust their own placement or, under
/// srun, `SLURMD_NODENAME`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the shim with `args` (after the subcommand name); returns its exit status (the
/// program's, 128+signal for a signal).
pub fn main(args: Vec<OsString>) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("lazarus shim: {e}\n");
            let _ = std::io::stderr().write_all(msg.as_bytes());
            // Also as the rank's status, so the launcher names the rank and the reason.
            let mut recs = record::line_records(msg.as_bytes(), true);
            recs.push(Record::Exited(127));
            let out = Out {
                newlines: true,
                lock: Mutex::new(()),
            };
            out.emit(&recs);
            127
        }
    }
}

fn run(args: Vec<OsString>) -> Result<i32, String> {
    let mut newlines = false;
    let mut control = false;
    let mut rank_from: Option<String> = None;
    let mut it = args.into_iter();
    let mut prog = Vec::new();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--newlines") => newlines = true,
            Some("--stdin-control") => control = true,
            Some("--rank-from") => {
                rank_from = it.next().and_then(|v| v.into_string().ok());
                if rank_from.is_none() {
                    return Err("--rank-from needs a variable name".into());
                }
            }
            Some("--") => {
                prog.extend(it.by_ref());
                break;
            }
            _ => return Err(format!("unknown argument {a:?} (expected -- PROG ARGS…)")),
        }
    }
    let (program, prog_args) = prog.split_first().ok_or("missing program after `--`")?;
    let mut stdin = BufReader::new(std::io::stdin());
    let mut extra: Vec<(OsString, OsString)> = Vec::new();
    if control {
        read_env(&mut stdin, &mut extra)?;
    }
    let rank = match &rank_from {
        Some(v) => first_of(&extra, &[v.as_str()])?,
        None => first_of(&extra, &RANK_VARS)?,
    }
    .ok_or_else(|| {
        format!(
            "no rank variable ({}) set by the launcher",
            rank_from.clone().unwrap_or_else(|| RANK_VARS.join(", "))
        )
    })?;
    let size = first_of(&extra, &SIZE_VARS)?.ok_or("no world size variable set by the launcher")?;
    let rank = u32::try_from(rank).map_err(|_| format!("rank {rank} is out of range"))?;
    let rank_env = decode_rank_env(&lookup(&extra, ENV_SHIM_RANK_ENV).unwrap_or_default(), rank)?;
    let inject = decode_inject(&lookup(&extra, ENV_SHIM_INJECT).unwrap_or_default(), rank)?;
    let out = Arc::new(Out {
        newlines,
        lock: Mutex::new(()),
    });
    let host = lookup(&extra, ENV_HOST)
        .or_else(|| std::env::var("SLURMD_NODENAME").ok())
        .unwrap_or_else(hostname);
    let mut first = vec![Record::Host(host)];
    if let (Ok(j), Ok(s)) = (
        std::env::var("SLURM_JOB_ID"),
        std::env::var("SLURM_STEP_ID"),
    ) {
        first.push(Record::Step(format!("{j}.{s}")));
    }
    out.emit(&first);
    // The launcher's death (mpirun SIGKILLed by a hard stop, a dropped ssh session) is a
    // hard stop of this rank: the same signal as the launcher's own hard stop.
    // SAFETY: getppid has no preconditions; prctl with PDEATHSIG is a plain syscall.
    let parent = unsafe {
        let p = libc::getppid();
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_PDEATHSIG, hard_stop_signal());
        p
    };
    // SAFETY: same as above.
    if unsafe { libc::getppid() } != parent {
        return Err("the launcher's daemon died while the shim started".into());
    }
    super::install_signal_forwarding();
    // SAFETY: restoring default dispositions we may have inherited as ignored.
    unsafe {
        libc::signal(
            libc::SIGUSR1,
            sig_forward as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGUSR2,
            sig_forward as *const () as libc::sighandler_t,
        );
        libc::signal(
            hard_stop_signal(),
            on_hard_stop as *const () as libc::sighandler_t,
        );
    }
    let mut cmd = Command::new(program);
    cmd.args(prog_args)
        .envs(extra.iter().map(|(k, v)| (k, v)))
        .env_remove(ENV_SHIM_RANK_ENV)
        .env_remove(ENV_SHIM_INJECT)
        .env("LAZARUS_RANK", rank.to_string())
        .env("LAZARUS_WORLD_SIZE", size.to_string())
        .env(ENV_RANK_SESSION, "1")
        .envs(rank_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // syscalls (setsid, prctl).
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("lazarus shim: cannot start {program:?} as rank {rank}: {e}\n");
            let mut recs = record::line_records(msg.as_bytes(), true);
            recs.push(Record::Exited(127));
            out.emit(&recs);
            return Ok(127);
        }
    };
    let pid = child.id();
    out.emit(&[Record::Pid(pid)]);
    let parts = Arc::new(AtomicU32::new(0));
    // A part marker carries the launch's key: other text that looks like one is not.
    let part = lookup(&extra, super::OUTPUT_MARKERS_ENV)
        .map(|key| format!("\x1elazarus:{key}:part ").into_bytes());
    let mut pumps = Vec::new();
    if let Some(o) = child.stdout.take() {
        let (out, parts, part) = (out.clone(), parts.clone(), part.clone());
        pumps.push(std::thread::spawn(move || {
            pump(o, false, &parts, part.as_deref(), |r| out.emit(r))
        }));
    }
    if let Some(e) = child.stderr.take() {
        let (out, parts) = (out.clone(), parts.clone());
        pumps.push(std::thread::spawn(move || {
            pump(e, true, &parts, None, |r| out.emit(r))
        }));
    }
    let stop_asked = Arc::new(AtomicI32::new(0));
    if control {
        let s = stop_asked.clone();
        std::thread::spawn(move || control_loop(stdin, &s, pid));
    }
    let started = Instant::now();
    let mut fired = vec![false; inject.len()];
    let mut part_seen_at: Option<(u32, Instant)> = None;
    let mut term_sent: Option<Instant> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for the program: {e}")),
        }
        let sig = super::pending_signal().or_else(take_forwarded).or_else(|| {
            match stop_asked.swap(0, Ordering::SeqCst) {
                0 => None,
                s => Some(s),
            }
        });
        if let Some(sig) = sig {
            super::killpg(pid as i32, sig);
            if matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGHUP) {
                term_sent.get_or_insert_with(Instant::now);
            }
        }
        if term_sent.is_some_and(|t| t.elapsed() > STOP_GRACE) || HARD_STOP.load(Ordering::SeqCst) {
            super::killpg(pid as i32, libc::SIGKILL);
        }
        let p = parts.load(Ordering::Acquire);
        if part_seen_at.is_none_or(|(k, _)| k != p) {
            part_seen_at = Some((p, Instant::now()));
        }
        for (k, at) in inject.iter().enumerate() {
            let due = match *at {
                InjectAt::AfterStart(d) => started.elapsed() >= d,
                InjectAt::AfterParts { parts: want, delay } => {
                    p >= want.max(1)
                        && part_seen_at
                            .is_some_and(|(seen, t)| seen >= want && t.elapsed() >= delay)
                }
            };
            if due && !fired[k] {
                fired[k] = true;
                out.emit(&[Record::Injected]);
                // SAFETY: our own unreaped child.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // Nothing the rank started outlives it.
    super::killpg(pid as i32, libc::SIGKILL);
    super::local::join_until(&mut pumps, Instant::now() + Duration::from_secs(2));
    let rs = super::RankStatus::of(status);
    let (rec, code) = match rs {
        super::RankStatus::Exited(c) => (Record::Exited(c), c),
        super::RankStatus::Signaled(s) => (Record::Signaled(s), 128 + s),
    };
    out.emit(&[rec]);
    Ok(code)
}

static FORWARDED: AtomicI32 = AtomicI32::new(0);

/// Set by [`hard_stop_signal`]: stop the rank's whole group now, without a grace.
static HARD_STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_hard_stop(_sig: libc::c_int) {
    // Async-signal-safe: a single atomic store.
    HARD_STOP.store(true, Ordering::SeqCst);
}

/// The signal that makes a shim SIGKILL its rank's whole process group at once and exit:
/// what a launcher's hard stop sends to every process of its session, and the shim's own
/// parent-death signal. A shim that is SIGKILLed instead takes only its rank along (the
/// rank's parent-death signal), and what the rank started lives on as orphans; a SIGTERM
/// would give the rank a grace the hard stop does not want. A real-time signal: nothing
/// else sends it, and its default action (terminate) stops the session's other members
/// (mpirun's daemons, ssh clients) as well. SIGTERM where there are none.
pub(crate) fn hard_stop_signal() -> i32 {
    #[cfg(target_os = "linux")]
    {
        libc::SIGRTMIN() + 1
    }
    #[cfg(not(target_os = "linux"))]
    {
        libc::SIGTERM
    }
}

extern "C" fn sig_forward(sig: libc::c_int) {
    // Async-signal-safe: a single atomic store.
    FORWARDED.store(sig, Ordering::SeqCst);
}

fn take_forwarded() -> Option<i32> {
    match FORWARDED.swap(0, Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Reads `env HEXKEY HEXVAL` lines up to `go`. An error names the line number and at most
/// the variable's name, never the line: a value can be a secret (the job token).
fn read_env(stdin: &mut impl BufRead, extra: &mut Vec<(OsString, OsString)>) -> Result<(), String> {
    use std::os::unix::ffi::OsStringExt;
    let mut line = String::new();
    for n in 1u64.. {
        line.clear();
        match stdin.read_line(&mut line) {
            Ok(0) => return Err("control input ended before `go`".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading control input: {e}")),
        }
        // Exactly one space between fields: an empty value is an empty third field.
        let mut w = line.trim_end_matches(['\n', '\r']).split(' ');
        match (w.next(), w.next(), w.next(), w.next()) {
            (Some("go"), None, None, None) => return Ok(()),
            (Some("env"), Some(k), Some(v), None) => {
                let k = unhex(k)
                    .ok_or_else(|| format!("control line {n}: the `env` name is not hex"))?;
                let v = unhex(v).ok_or_else(|| {
                    format!(
                        "control line {n}: the value of `env` {} is not hex",
                        String::from_utf8_lossy(&k)
                    )
                })?;
                extra.push((OsString::from_vec(k), OsString::from_vec(v)));
            }
            _ => {
                return Err(format!(
                    "control line {n}: expected `env NAME VALUE` or `go`"
                ))
            }
        }
    }
    Err("control input: too many lines".into())
}

/// After `go`: `sig N` forwards signal N; end of input (the launcher or its ssh is gone)
/// stops the rank.
fn control_loop(mut stdin: impl BufRead, stop: &AtomicI32, pid: u32) {
    let mut line = String::new();
    loop {
        line.clear();
        match stdin.read_line(&mut line) {
            Ok(0) | Err(_) => {
                stop.store(libc::SIGTERM, Ordering::SeqCst);
                return;
            }
            Ok(_) => {
                if let Some(n) = line
                    .trim()
                    .strip_prefix("sig ")
                    .and_then(|n| n.parse().ok())
                {
                    if n == libc::SIGKILL {
                        super::killpg(pid as i32, n);
                    } else {
                        stop.store(n, Ordering::SeqCst);
                    }
                }
            }
        }
    }
}

/// Forwards one pipe of the program as records, line by line, to `emit`; counts the
/// lines that hold `part` (the part marker's start with the launch's key). A last
/// line the program did not end (it died writing it) goes as it is, without a newline,
/// so the launcher's observer can tell it was cut (a marker cut short must not be read
/// as one).
pub(crate) fn pump(
    src: impl Read,
    stderr: bool,
    parts: &AtomicU32,
    part: Option<&[u8]>,
    emit: impl Fn(&[Record]),
) {
    let mut r = BufReader::new(src);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                // Only a whole marker line counts: one cut by the program's death is
                // not read as a marker by the supervisor either.
                // Anywhere in the line: a marker lands after the text of a line the
                // program had not finished (the supervisor splits it out there too).
                let has_part = |p: &[u8]| line.windows(p.len()).any(|w| w == p);
                if part.is_some_and(|p| !stderr && line.ends_with(b"\n") && has_part(p)) {
                    parts.fetch_add(1, Ordering::AcqRel);
                }
                emit(&record::line_records(&line, stderr));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_input_carries_empty_values_and_refuses_garbage() {
        let input = format!(
            "env {} \nenv {} {}\ngo\nsig 15\n",
            hex(b"EMPTY"),
            hex(b"K"),
            hex(b"v v")
        );
        let mut r = std::io::BufReader::new(input.as_bytes());
        let mut extra = Vec::new();
        read_env(&mut r, &mut extra).unwrap();
        assert_eq!(
            extra,
            vec![("EMPTY".into(), "".into()), ("K".into(), "v v".into())]
        );
        for bad in ["env 4b\ngo\n", "env zz 00\ngo\n", "env 4b 00\n", "hello\n"] {
            assert!(
                read_env(
                    &mut std::io::BufReader::new(bad.as_bytes()),
                    &mut Vec::new()
                )
                .is_err(),
                "{bad:?}"
            );
        }
    }

    /// A malformed control line carrying the job token (`env LAZARUS_JOB_TOKEN <hex>` with
    /// a bad byte, or an extra field) was repeated whole in the error: the error names the
    /// line number and the variable, never the value.
    #[test]
    fn bad_control_line_errors_do_not_repeat_the_token() {
        let token = "0123456789abcdef0123456789abcdef";
        let name = hex(b"LAZARUS_JOB_TOKEN");
        for bad in [
            format!("env {name} {token}z\ngo\n"),
            format!("env {name} {token} extra\ngo\n"),
            format!("env {token}z {token}\ngo\n"),
            format!("{token}\ngo\n"),
        ] {
            let e = read_env(
                &mut std::io::BufReader::new(bad.as_bytes()),
                &mut Vec::new(),
            )
            .unwrap_err();
            assert!(!e.contains(token), "{e}");
            assert!(e.contains("control line 1"), "{e}");
        }
        let e = decode_rank_env(&format!("v2;LAZARUS_JOB_TOKEN|1:{token}%zz"), 1).unwrap_err();
        assert!(!e.contains(token) && e.contains("bad section 1"), "{e}");
    }

    #[test]
    fn rank_env_and_inject_plans_round_trip_and_refuse_garbage() {
        let e = encode_rank_env(&[
            (1, "LAZARUS_FAILPOINT".into(), "before_commit".into()),
            (2, "A".into(), "x;y:z".into()),
        ]);
        assert_eq!(
            decode_rank_env(&e, 2).unwrap(),
            vec![(OsString::from("A"), OsString::from("x;y:z"))]
        );
        assert!(decode_rank_env(&e, 0).unwrap().is_empty());
        assert!(decode_rank_env("1:zz:00", 1).is_err());
        let k = [
            (3, InjectAt::AfterStart(Duration::from_millis(1500))),
            (
                3,
                InjectAt::AfterParts {
                    parts: 2,
                    delay: Duration::from_millis(10),
                },
            ),
        ];
        assert_eq!(
            decode_inject(&encode_inject(&k), 3).unwrap(),
            vec![k[0].1, k[1].1]
        );
        assert!(decode_inject("3@soon", 3).is_err());
        assert!(unhex("abc").is_none());
        assert_eq!(unhex(&hex(b"\x00\xff")).unwrap(), b"\x00\xff");
    }

    /// What each rank must get from a table: its own entries, the last value of each key.
    fn expected(entries: &[(u32, OsString, OsString)], me: u32) -> Vec<(OsString, OsString)> {
        let mut out: Vec<(OsString, OsString)> = Vec::new();
        for (r, k, v) in entries.iter().filter(|(r, _, _)| *r == me) {
            let _ = r;
            match out.iter_mut().find(|(ok, _)| ok == k) {
                Some(e) => e.1 = v.clone(),
                None => out.push((k.clone(), v.clone())),
            }
        }
        out.sort();
        out
    }

    /// The per-rank table under mpirun/srun was one `rank:hex(key):hex(value)` entry per
    /// rank: a `LAZARUS_HOST` for each of ~1500 ranks passed Linux's 128 KiB limit for one
    /// environment string and the start was refused. Grouped by value with the ranks as
    /// progressions, block and cyclic placements of 65536 ranks on 4096 hosts fit.
    #[test]
    fn a_host_table_of_tens_of_thousands_of_ranks_fits_one_environment_string() {
        let host = |h: u32| OsString::from(format!("nid{h:05}"));
        let block: Vec<_> = (0..65536u32)
            .map(|r| (r, OsString::from("LAZARUS_HOST"), host(r / 16)))
            .collect();
        let cyclic: Vec<_> = (0..65536u32)
            .map(|r| (r, OsString::from("LAZARUS_HOST"), host(r % 4096)))
            .collect();
        for table in [&block, &cyclic] {
            let enc = encode_rank_env(table);
            assert!(
                ENV_SHIM_RANK_ENV.len() + enc.len() + 2 <= super::super::remote::MAX_ENV_STRING,
                "{} bytes",
                enc.len()
            );
            for me in [0, 1, 15, 16, 4095, 4096, 40000, 65535] {
                assert_eq!(
                    decode_rank_env(&enc, me).unwrap(),
                    expected(table, me),
                    "rank {me}"
                );
            }
            assert!(decode_rank_env(&enc, 65536).unwrap().is_empty());
        }
    }

    #[test]
    fn hostile_rank_env_values_are_refused_without_panicking() {
        for bad in [
            "1:LAZARUS_HOST:n1", // the old format: another version's shim
            "v1;A|1:b",
            "v2;A|1",       // a missing value
            "v2;|1:b",      // an empty key
            "v2;A|:b",      // no ranks
            "v2;A|1,:b",    // an empty item
            "v2;A|5-3:b",   // a backwards range
            "v2;A|1-9/0:b", // a zero step
            "v2;A|1-9/x:b",
            "v2;A|1-2-3:b",
            "v2;A|4294967296:b", // past u32
            "v2;A|-1:b",
            "v2;A|1:b:c", // an unescaped separator
            "v2;A|1:%4",  // a cut escape
            "v2;A|1:%zz",
            "v2;A|1:b c", // a byte that must be escaped
            "v2;A|1:\u{e9}",
            "v2;A%|1:b",
        ] {
            assert!(decode_rank_env(bad, 1).is_err(), "{bad:?} accepted");
        }
        // Huge ranges are a membership test, not a loop.
        let all = "v2;A|0-4294967295:b;C|0-4294967295/4294967295:d";
        assert_eq!(decode_rank_env(all, u32::MAX).unwrap().len(), 2);
        assert_eq!(decode_rank_env("", 3).unwrap(), Vec::new());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Every rank decodes exactly its own entries (the last value of a key counting),
        /// whatever the table: any bytes in keys and values, any ranks, repeats.
        #[test]
        fn rank_env_tables_round_trip_for_every_rank(
            raw in proptest::collection::vec(
                (0u32..40, proptest::sample::select(vec!["A", "LAZARUS_HOST", "k;:%,-/ \u{e9}"]),
                 proptest::collection::vec(proptest::prelude::any::<u8>(), 0..6)),
                0..60),
            big in proptest::prelude::any::<bool>(),
        ) {
            use std::os::unix::ffi::OsStringExt;
            let table: Vec<(u32, OsString, OsString)> = raw
                .into_iter()
                .map(|(r, k, v)| (if big { r.wrapping_mul(107_374_182) } else { r }, OsString::from(k), OsString::from_vec(v)))
                .collect();
            let enc = encode_rank_env(&table);
            let mut ranks: Vec<u32> = table.iter().map(|e| e.0).collect();
            ranks.extend([0, 1, 41, u32::MAX]);
            for me in ranks {
                let mut got = decode_rank_env(&enc, me).unwrap();
                got.sort();
                proptest::prop_assert_eq!(got, expected(&table, me), "rank {} of {}", me, enc);
            }
        }
    }
}
