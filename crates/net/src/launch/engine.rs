//! Launch engines: how ranks are started (here, through Open MPI's `mpirun`, Slurm's
//! `srun`, or `ssh`), how their deaths are learned, and how they are stopped. The launcher
//! ([`super::Launcher`]) is the same for all: it hosts the rendezvous, watches heartbeats,
//! decides failures and classifies lost hosts; an engine only moves processes and bytes.

use super::{LaunchConfig, RankStatus};
use crate::error::{ErrorKind, NetError, Result};
use std::ffi::OsString;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Starts the ranks of one incarnation. Implementations: [`super::LocalEngine`],
/// [`super::MpirunEngine`], [`super::SrunEngine`], [`super::SshEngine`].
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// Short name for messages (`local`, `mpirun`, ...).
    fn name(&self) -> &'static str;
    /// True when ranks may run on other hosts: the rendezvous is then advertised on an
    /// address reachable from them, and lost hosts are told apart from dead processes.
    fn remote(&self) -> bool;
    /// The hosts the engine may use when none are given (a Slurm allocation's nodes);
    /// empty when it needs an explicit list (or is local).
    fn default_hosts(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// Starts every rank. Ranks get `spec.env` plus their rank variables; their output
    /// goes to `spec.sink`. `Err`: nothing of the job is left running.
    fn start(&self, spec: StartSpec<'_>) -> Result<Box<dyn RunningJob>>;
}

/// What an engine starts.
#[derive(Debug)]
pub struct StartSpec<'a> {
    /// The job (program, args, per-rank environment, fault injection, timeouts).
    pub cfg: &'a LaunchConfig,
    /// Environment of every rank: the launcher's `LAZARUS_*` variables and the job's own.
    pub env: Vec<(OsString, OsString)>,
    /// Host of each rank (empty for the local engine).
    pub hosts: &'a [String],
    /// Where output lines go.
    pub sink: Arc<OutputSink>,
}

/// A started incarnation, as its engine sees it.
pub trait RunningJob: Send {
    /// Collects what happened since the last call (exits, output already flows).
    fn poll(&mut self) -> Result<()>;
    /// How rank `rank` ended, once known.
    fn status(&self, rank: u32) -> Option<RankStatus>;
    /// True when nothing more can be learned: every rank has a status, or the engine's
    /// processes are gone (a rank without a status then never reported one).
    fn all_done(&self) -> bool;
    /// Sends `sig` to every rank through the engine (SIGTERM: stop; SIGINT...: forwarded).
    fn signal(&mut self, sig: i32);
    /// Stops everything the engine can reach at once (SIGKILL).
    fn kill(&mut self);
    /// The host rank `rank` runs on, if known.
    fn host(&self, rank: u32) -> Option<String>;
    /// True once rank `rank` showed a sign of life through the engine (spawned here, or
    /// its shim reported). A rank that never joins the rendezvous and shows none either is
    /// taken for a failed start; one that did is a program that does not use the
    /// communicator, and is left alone.
    fn started(&self, rank: u32) -> bool {
        let _ = rank;
        true
    }
    /// Waits (at most `grace`) for output to drain and the engine's processes to end.
    fn finish(&mut self, grace: Duration);
}

/// Hooks into a running job, called from the launcher's threads.
pub trait LaunchObserver: Send + Sync + std::fmt::Debug {
    /// Rank `rank` was spawned as process `pid` on this machine (local engine only; not
    /// yet reaped: the pid is valid here).
    fn spawned(&self, rank: u32, pid: u32) {
        let _ = (rank, pid);
    }
    /// The engine started the ranks (any engine; after `spawned` for the local one).
    fn launched(&self) {}
    /// A kill of `rank` planned in [`LaunchConfig::inject`] fired (remote engines).
    fn injected(&self, rank: u32) {
        let _ = rank;
    }
    /// One stdout line of `rank`. It ends with its newline unless the rank's stream ended
    /// inside it (the rank died mid-line, or a launcher's forwarding lost the rest): the
    /// observer can tell a whole line from a cut one. Return true if handled; false lets
    /// the launcher print it (with a newline) after the `[rank r]` prefix.
    fn stdout_line(&self, rank: u32, line: &[u8]) -> bool {
        let _ = (rank, line);
        false
    }
    /// True once the observer wants every rank stopped at once (e.g. a supervisor saw a
    /// rank open another repository than its own). The launcher polls it and SIGKILLs
    /// every rank through the engine (under ssh the shims forward it; mpirun's death
    /// stops its ranks through the shims' parent-death signal; srun cannot forward it,
    /// so its engine also runs scancel): the observer itself has no pid to signal on
    /// another host. The deaths then end the job as a
    /// failure, handled as usual.
    fn stop_requested(&self) -> bool {
        false
    }
}

/// Where the ranks' output goes: stdout lines to the observer (output commit) or, like
/// stderr, to this process with a `[rank r] ` prefix, one write per line.
///
/// Closed when its launch ends: a line that arrives later (a launcher process on an
/// unreachable host still holding a pipe) belongs to a dead incarnation whose held output
/// was already rolled back, and is dropped instead of mixing into the next one.
#[derive(Debug)]
pub struct OutputSink {
    observer: Option<Arc<dyn LaunchObserver>>,
    closed: AtomicBool,
    dropped: AtomicU64,
}

impl OutputSink {
    /// A sink feeding `observer` (or printing everything when `None`).
    pub fn new(observer: Option<Arc<dyn LaunchObserver>>) -> Self {
        OutputSink {
            observer,
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }

    /// One line of rank `rank`: `line` ends with its newline, or is the unfinished end of
    /// the rank's stream. The observer gets it as it is; printed, it gets a newline.
    pub fn line(&self, rank: u32, to_stderr: bool, line: &[u8]) {
        if self.closed.load(Ordering::Acquire) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(o) = &self.observer {
            if !to_stderr && o.stdout_line(rank, line) {
                return;
            }
        }
        self.print(&format!("[rank {rank}] "), to_stderr, &with_newline(line));
    }

    /// A line the engine itself printed (e.g. `mpirun`'s own messages), on stderr.
    pub fn engine_line(&self, engine: &str, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) || self.closed.load(Ordering::Acquire) {
            return;
        }
        self.print(&format!("[{engine}] "), true, &with_newline(line));
    }

    fn print(&self, prefix: &str, to_stderr: bool, line: &[u8]) {
        let mut out = Vec::with_capacity(line.len() + prefix.len());
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(line);
        // One write per line under the lock keeps lines from interleaving.
        let _ = if to_stderr {
            std::io::stderr().lock().write_all(&out)
        } else {
            std::io::stdout().lock().write_all(&out)
        };
    }

    /// The observer, for engine events other than lines.
    pub fn observer(&self) -> Option<&Arc<dyn LaunchObserver>> {
        self.observer.as_ref()
    }

    /// Ends the launch: later lines are dropped (and counted).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Lines dropped because they arrived after [`OutputSink::close`].
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// `line`, ending with a newline.
fn with_newline(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if line.last() == Some(&b'\n') {
        line.into()
    } else {
        [line, b"\n"].concat().into()
    }
}

/// Consecutive runs of the same host in a per-rank host list: `[(host, ranks)]`, in rank
/// order (what `mpirun --host h:n --map-by slot` and a Slurm arbitrary distribution need).
pub fn host_blocks(hosts: &[String]) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for h in hosts {
        match out.last_mut() {
            Some((last, n)) if last == h => *n += 1,
            _ => out.push((h.clone(), 1)),
        }
    }
    out
}

/// Places `ranks` ranks on `hosts` in order: each host takes its slots (or, without slots,
/// an even share: `ceil(ranks / hosts)`), consecutive ranks per host. When the slots add up
/// to fewer than `ranks`, the rest is spread one by one over the hosts in order
/// (oversubscribed). Returns the host of each rank.
pub fn place(hosts: &[HostSpec], ranks: u32) -> Result<Vec<String>> {
    if hosts.is_empty() {
        return Err(NetError::new(
            ErrorKind::Config,
            format!("no host to place {ranks} ranks on"),
        ));
    }
    let share = ranks.div_ceil(hosts.len() as u32);
    let mut counts = vec![0u32; hosts.len()];
    let mut left = ranks;
    for (c, h) in counts.iter_mut().zip(hosts) {
        let take = h.slots.unwrap_or(share).min(left);
        *c = take;
        left -= take;
    }
    let mut i = 0;
    while left > 0 {
        counts[i % hosts.len()] += 1;
        left -= 1;
        i += 1;
    }
    Ok(hosts
        .iter()
        .zip(counts)
        .flat_map(|(h, c)| std::iter::repeat_n(h.name.clone(), c as usize))
        .collect())
}

/// Checks that `hosts` has one entry per rank and each host's ranks are consecutive.
pub(crate) fn check_placement(engine: &str, ranks: u32, hosts: &[String]) -> Result<()> {
    if hosts.len() != ranks as usize {
        return Err(NetError::new(
            ErrorKind::InvalidArgument,
            format!(
                "{engine}: {} host entries for {ranks} ranks (one per rank expected)",
                hosts.len()
            ),
        ));
    }
    for h in hosts {
        check_host_name(h)
            .map_err(|e| NetError::new(ErrorKind::InvalidArgument, format!("{engine}: {e}")))?;
    }
    let blocks = host_blocks(hosts);
    for (i, (h, _)) in blocks.iter().enumerate() {
        if blocks[..i].iter().any(|(x, _)| x == h) {
            return Err(NetError::new(
                ErrorKind::InvalidArgument,
                format!("{engine}: the ranks of host {h} are not consecutive"),
            ));
        }
    }
    Ok(())
}

/// One entry of a host list: a host and how many ranks it takes (`slots`), if given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSpec {
    /// Host name or address, as the engine and the network know it.
    pub name: String,
    /// Ranks it may run (`None`: as many as the even spread gives).
    pub slots: Option<u32>,
}

/// Parses `--hosts a,b:2,c` (`host[:slots]`).
pub fn parse_hosts(list: &str) -> Result<Vec<HostSpec>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.rsplit_once(':') {
            // An IPv6 address has several colons: only `[addr]:n` carries slots then.
            Some((h, n)) if !h.contains(':') || h.ends_with(']') => Ok(HostSpec {
                name: h.trim_start_matches('[').trim_end_matches(']').to_string(),
                slots: Some(parse_slots(s, n)?),
            }),
            _ => Ok(HostSpec {
                name: s.trim_start_matches('[').trim_end_matches(']').to_string(),
                slots: None,
            }),
        })
        .collect::<Result<Vec<_>>>()
        .and_then(nonempty)
}

/// Parses a hostfile: one host per line, `host`, `host slots=N` (Open MPI) or `host:N`;
/// `#` starts a comment.
pub fn parse_hostfile(text: &str, path: &str) -> Result<Vec<HostSpec>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let mut specs = parse_hosts(first)
            .map_err(|e| NetError::new(ErrorKind::Config, format!("{path}:{}: {e}", i + 1)))?;
        if specs.len() != 1 {
            // `a,b` on one line: the old code kept `a` and dropped `b` without a word.
            return Err(NetError::new(
                ErrorKind::Config,
                format!("{path}:{}: one host per line, not {first:?}", i + 1),
            ));
        }
        let mut spec = specs.remove(0);
        for w in words {
            let n = w
                .strip_prefix("slots=")
                .or_else(|| w.strip_prefix("max_slots="))
                .ok_or_else(|| {
                    NetError::new(
                        ErrorKind::Config,
                        format!("{path}:{}: unknown field {w:?} (expected slots=N)", i + 1),
                    )
                })?;
            if w.starts_with("slots=") {
                spec.slots = Some(parse_slots(line, n).map_err(|e| {
                    NetError::new(ErrorKind::Config, format!("{path}:{}: {e}", i + 1))
                })?);
            }
        }
        out.push(spec);
    }
    nonempty(out).map_err(|e| NetError::new(ErrorKind::Config, format!("{path}: {e}")))
}

fn parse_slots(entry: &str, n: &str) -> Result<u32> {
    match n.parse::<u32>() {
        Ok(k) if k >= 1 => Ok(k),
        _ => Err(NetError::new(
            ErrorKind::Config,
            format!("host entry {entry:?}: slots must be an integer >= 1"),
        )),
    }
}

/// Checks that `name` can only be read as a host name by the programs it is handed to:
/// `ssh HOST COMMAND` (and Open MPI's remote shell agent), `mpirun --host h:n,…` and
/// Slurm's host file. A name starting with `-` would be read as an option
/// (`-oProxyCommand=…` runs a command on this machine), and whitespace, a comma or a
/// newline would split it into other entries; so only letters, digits and `. - _ : % @`
/// (IPv6 addresses and scopes, `user@host` for ssh) are accepted.
pub(crate) fn check_host_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(NetError::new(ErrorKind::Config, "empty host name"));
    }
    if name.starts_with('-') {
        return Err(NetError::new(
            ErrorKind::Config,
            format!("host name {name:?} starts with '-' (it would be read as an option)"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ".-_:%@".contains(*c)))
    {
        return Err(NetError::new(
            ErrorKind::Config,
            format!(
                "host name {name:?} holds {c:?}: only letters, digits and . - _ : % @ are \
                 accepted"
            ),
        ));
    }
    Ok(())
}

fn nonempty(v: Vec<HostSpec>) -> Result<Vec<HostSpec>> {
    if v.is_empty() {
        return Err(NetError::new(ErrorKind::Config, "the host list is empty"));
    }
    for (i, h) in v.iter().enumerate() {
        check_host_name(&h.name)?;
        if v[..i].iter().any(|x| x.name == h.name) {
            return Err(NetError::new(
                ErrorKind::Config,
                format!("host {} is listed twice", h.name),
            ));
        }
    }
    Ok(v)
}

/// An observer that keeps every stdout line it is handed, for tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct SeenLines(std::sync::Mutex<Vec<(u32, Vec<u8>)>>);

#[cfg(test)]
impl SeenLines {
    /// `(rank, line)` in arrival order.
    pub(crate) fn lines(&self) -> Vec<(u32, Vec<u8>)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
impl LaunchObserver for SeenLines {
    fn stdout_line(&self, rank: u32, line: &[u8]) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((rank, line.to_vec()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lists_and_files_parse_and_bad_ones_name_the_entry() {
        let h = parse_hosts("a, b:2,[::1]:3,10.0.0.1").unwrap();
        assert_eq!(
            h[1],
            HostSpec {
                name: "b".into(),
                slots: Some(2)
            }
        );
        assert_eq!(
            h[2],
            HostSpec {
                name: "::1".into(),
                slots: Some(3)
            }
        );
        assert_eq!(h[3].slots, None);
        assert!(parse_hosts("a:0").unwrap_err().to_string().contains("a:0"));
        assert!(parse_hosts("a,a")
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(parse_hosts(" , ").is_err());
        let f = parse_hostfile("# nodes\nn1 slots=2\nn2:3 # spare\n\nn3\n", "hf").unwrap();
        assert_eq!(
            f.iter().map(|h| h.slots).collect::<Vec<_>>(),
            [Some(2), Some(3), None]
        );
        let e = parse_hostfile("n1\nn2 cpus=4\n", "hf")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hf:2") && e.contains("cpus=4"), "{e}");
    }

    /// Regression (review): a host name was handed to `ssh` (and Open MPI's agent) as
    /// it was, before the remote command: `--hosts=-oProxyCommand=touch\ /tmp/x` made
    /// ssh run that command on this machine; a newline split a Slurm host file entry and
    /// a hostfile line `a,b` silently lost `b`. Host names are now checked, naming the
    /// entry.
    #[test]
    fn a_host_name_that_ssh_would_read_as_an_option_was_accepted() {
        for bad in [
            "-oProxyCommand=touch /tmp/x",
            "-J",
            "node 1",
            "a\nb",
            "a'b",
            "$(id)",
            "a/b",
        ] {
            let e = parse_hosts(bad).unwrap_err().to_string();
            assert!(e.contains("host name"), "{bad:?}: {e}");
        }
        let e = parse_hostfile("n1\n-oProxyCommand=x\n", "hf")
            .unwrap_err()
            .to_string();
        assert!(e.contains("starts with '-'"), "{e}");
        let e = parse_hostfile("n1,n2 slots=2\n", "hf")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hf:1") && e.contains("one host per line"), "{e}");
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let e = check_placement("ssh", 2, &s(&["-oX=y", "-oX=y"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ssh") && e.contains("-oX=y"), "{e}");
        // What real host lists hold still parses.
        for good in [
            "node-01.cluster",
            "10.0.0.1",
            "[fe80::1%eth0]:2",
            "alice@n1",
            "n_2",
        ] {
            assert!(parse_hosts(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn ranks_are_placed_by_slots_then_spread_evenly_then_oversubscribed() {
        let h = |s: &str| parse_hosts(s).unwrap();
        assert_eq!(
            place(&h("a,b,c,d"), 8).unwrap(),
            ["a", "a", "b", "b", "c", "c", "d", "d"]
        );
        assert_eq!(
            place(&h("a,b,c"), 8).unwrap(),
            ["a", "a", "a", "b", "b", "b", "c", "c"]
        );
        assert_eq!(
            place(&h("a:1,b:1,c:1"), 5).unwrap(),
            ["a", "a", "b", "b", "c"]
        );
        assert_eq!(place(&h("a:4,b:4"), 3).unwrap(), ["a", "a", "a"]);
        assert!(place(&[], 2).is_err());
    }

    #[test]
    fn placements_must_keep_a_hosts_ranks_together() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            host_blocks(&s(&["a", "a", "b"])),
            vec![("a".into(), 2), ("b".into(), 1)]
        );
        assert!(check_placement("mpirun", 3, &s(&["a", "a", "b"])).is_ok());
        assert!(check_placement("mpirun", 3, &s(&["a", "b", "a"])).is_err());
        assert!(check_placement("mpirun", 2, &s(&["a"])).is_err());
    }

    /// Regression: the sink ended every line with a newline before the observer saw it,
    /// so a marker cut short at the end of a rank's stream (`resumed 5 50 12` as
    /// `resumed 5 50 1`) looked whole to the output commit.
    #[test]
    fn the_observer_sees_a_line_cut_by_the_end_of_the_stream_without_a_newline() {
        let seen = Arc::new(SeenLines::default());
        let sink = Arc::new(OutputSink::new(Some(seen.clone())));
        let stream = b"whole\n\x1elazarus:resumed 5 50 1".to_vec();
        super::super::local::pump(3, std::io::Cursor::new(stream), false, sink);
        assert_eq!(
            seen.lines(),
            [
                (3, b"whole\n".to_vec()),
                (3, b"\x1elazarus:resumed 5 50 1".to_vec())
            ]
        );
    }
}
