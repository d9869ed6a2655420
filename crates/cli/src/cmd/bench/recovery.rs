//! `lazarus bench recovery`: how long recovery takes, from a failure to every rank of the
//! next incarnation resumed, for a process failure and a host failure, under the local
//! launcher and under `mpirun` on real separate hosts (network namespaces with sshd,
//! `lazarus-testbed`; needs root). The yardstick is the launcher's own start time: the
//! same engine starting 8 processes of `/bin/true` and seeing them exit, measured alone.
//!
//! Failures, all real: process = a rank SIGKILLed right after the first commit (the
//! supervisor's fault injection; through the rank shim under mpirun); host = under mpirun,
//! every process of one host killed and its link taken down (restart on a spare host);
//! under the local launcher, which has one host, two ranks SIGSTOPped (silent, as a lost
//! host's ranks are: detected by missed heartbeats, not by an exit status).
//!
//! Reported per case (medians of `--repeat`): detection (failure -> the launcher's
//! "stopping the other ranks"; only for host failures, a process failure's exit is seen
//! within milliseconds), recovery as the supervisor measures it (failure or detection ->
//! every rank resumed), the total, and total / launcher start.

use super::{load_average, median, Scratch};
use crate::cmd::CmdResult;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Flags of `lazarus bench recovery`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Ranks of the job.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=64))]
    ranks: u32,
    /// Repetitions of each case (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// Engines to measure: local, mpirun, or both.
    #[arg(long, default_value = "both", value_parser = ["local", "mpirun", "both"])]
    engine: String,
    /// Heat steps (long enough to outlast the failure and the restart).
    #[arg(long, default_value_t = 4000)]
    steps: u64,
    /// Heat grid size.
    #[arg(long, default_value_t = 48)]
    size: u64,
    /// Checkpoint every this many steps.
    #[arg(long, default_value_t = 100)]
    every: u64,
    /// Failure timeout of the job (ms).
    #[arg(long, default_value_t = 3000)]
    failure_timeout_ms: u64,
    /// Heartbeat interval of the job (ms).
    #[arg(long, default_value_t = 250)]
    heartbeat_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Process,
    Host,
}

/// One measured recovery.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    detect: f64,
    recover: f64,
}

/// Timestamped stderr lines of a running `lazarus run`.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

struct Engine {
    name: &'static str,
    /// `lazarus run` flags selecting it, given the hosts' agent and names.
    flags: Vec<String>,
    cluster: Option<lazarus_testbed::Cluster>,
}

fn heat_args(lz: &Path, a: &Args) -> Vec<String> {
    std::iter::once(lz.display().to_string())
        .chain(crate::cmd::demo::heat_rank_args(a.steps, a.size, a.every))
        .collect()
}

fn first_commit(repo: &Path) -> bool {
    std::fs::read_dir(repo.join("checkpoints"))
        .map(|d| d.flatten().any(|e| e.path().join("COMMIT").exists()))
        .unwrap_or(false)
}

/// Pids of the direct children of `parent` whose environment has `LAZARUS_RANK=r`, for
/// `r` in `ranks`.
fn rank_pids(parent: u32, ranks: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok())
            });
        if ppid != Some(parent) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|b| *b == 0).any(|kv| {
            ranks
                .iter()
                .any(|r| kv == format!("LAZARUS_RANK={r}").as_bytes())
        }) {
            out.push(pid);
        }
    }
    out
}

/// Runs one job with one failure; returns the sample.
fn run_once(a: &Args, lz: &Path, e: &mut Engine, kind: Kind) -> Result<Sample, String> {
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "lazarus-bench-recovery-{}-{}",
        std::process::id(),
        rand_suffix()
    )));
    let repo = scratch.path().join("repo");
    let mut cmd = Command::new(lz);
    cmd.arg("run")
        .args(["-n", &a.ranks.to_string(), "--repo"])
        .arg(&repo)
        .args(["--failure-timeout-ms", &a.failure_timeout_ms.to_string()])
        .args(["--heartbeat-ms", &a.heartbeat_ms.to_string()])
        .args(&e.flags);
    if kind == Kind::Process {
        cmd.args(["--inject-kill-after", &format!("{}@1c+10ms", a.ranks / 2)]);
    }
    if kind == Kind::Host && e.cluster.is_some() {
        cmd.args(["--spares", "1"]);
    }
    cmd.arg("--")
        .args(heat_args(lz, a))
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting lazarus run: {e}"))?;
    let lines: Lines = Arc::default();
    let reader = child.stderr.take().map(|s| {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(s).lines().map_while(Result::ok) {
                lines
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((Instant::now(), l));
            }
        })
    });
    let stdout = child.stdout.take().map(|s| {
        std::thread::spawn(move || {
            BufReader::new(s)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        })
    });
    let t0 = Instant::now();
    let deadline = Duration::from_secs(600);
    let mut failed_at = None;
    if kind == Kind::Host {
        while !first_commit(&repo) {
            if t0.elapsed() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                return Err("the job ended or hung before its first commit".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match &e.cluster {
            Some(c) => {
                c.link_down(1)?;
                failed_at = Some(Instant::now());
                c.kill_host(1);
            }
            None => {
                let pids = rank_pids(child.id(), &[2, 3]);
                if pids.len() != 2 {
                    let _ = child.kill();
                    return Err(format!("found ranks 2 and 3 as {pids:?}"));
                }
                failed_at = Some(Instant::now());
                for p in pids {
                    // SAFETY: a rank process of the job we started (child of our child).
                    unsafe { libc::kill(p as i32, libc::SIGSTOP) };
                }
            }
        }
    }
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if t0.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("lazarus run did not end within {deadline:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(r) = reader {
        let _ = r.join();
    }
    let out = stdout.and_then(|t| t.join().ok()).unwrap_or_default();
    if let (Some(c), Kind::Host) = (&e.cluster, kind) {
        c.link_up(1)?;
    }
    let lines = lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    if !status.success() || !out.iter().any(|l| l.contains("checksum=")) {
        return Err(format!("the job failed ({status}):\n{}", text.join("\n")));
    }
    let recover = text
        .iter()
        .find_map(|l| {
            l.split("recovered from the failure of incarnation 0 in ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .ok_or_else(|| format!("no recovery line:\n{}", text.join("\n")))?;
    let detect = match failed_at {
        None => 0.0,
        Some(f) => lines
            .iter()
            .find(|(_, l)| l.contains("stopping the other ranks"))
            .map(|(t, _)| t.saturating_duration_since(f).as_secs_f64())
            .ok_or_else(|| format!("no detection line:\n{}", text.join("\n")))?,
    };
    Ok(Sample { detect, recover })
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The engine alone: start `ranks` processes of `/bin/true` and see them all exit.
fn launcher_start(e: &Engine, ranks: u32) -> Result<f64, String> {
    let t = Instant::now();
    let ok = match &e.cluster {
        None => (0..ranks)
            .map(|_| Command::new("true").spawn())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?
            .into_iter()
            .all(|mut c| c.wait().is_ok_and(|s| s.success())),
        Some(c) => {
            let hosts = c.host_names();
            let per = ranks.div_ceil(4);
            let list: Vec<String> = hosts[..4].iter().map(|h| format!("{h}:{per}")).collect();
            let agent = c.ssh_agent().unwrap_or(c.agent());
            let mut cmd = Command::new("mpirun");
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                cmd.arg("--allow-run-as-root");
            }
            cmd.args(["-n", &ranks.to_string(), "--host", &list.join(",")])
                .args(["--map-by", "slot", "--mca", "plm_rsh_agent"])
                .arg(agent)
                .args(["--mca", "rtc", "^hwloc", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("mpirun: {e}"))?
                .success()
        }
    };
    if !ok {
        return Err(format!("{}: starting {ranks} x /bin/true failed", e.name));
    }
    Ok(t.elapsed().as_secs_f64())
}

fn engines(a: &Args) -> Vec<Result<Engine, String>> {
    let mut out = Vec::new();
    if a.engine != "mpirun" {
        out.push(Ok(Engine {
            name: "local",
            flags: Vec::new(),
            cluster: None,
        }));
    }
    if a.engine != "local" {
        out.push(mpirun_engine());
    }
    out
}

fn mpirun_engine() -> Result<Engine, String> {
    let mut c = lazarus_testbed::Cluster::new(5).map_err(|e| e.to_string())?;
    let agent: PathBuf = c.start_sshd().map_err(|e| e.to_string())?;
    let flags = vec![
        "--launcher".into(),
        "mpirun".into(),
        "--rsh-agent".into(),
        agent.display().to_string(),
        "--hosts".into(),
        c.host_names().join(","),
        "--launcher-arg=--mca".into(),
        "--launcher-arg=rtc".into(),
        "--launcher-arg=^hwloc".into(),
    ];
    Ok(Engine {
        name: "mpirun",
        flags,
        cluster: Some(c),
    })
}

/// Runs the benchmark and prints a table.
pub fn main(a: Args) -> CmdResult {
    let lz = std::env::current_exe()?;
    outln!(
        "# lazarus bench recovery: {} ranks of heat ({} steps, {}x{} grid, checkpoint every \
         {}), failure timeout {} ms, heartbeat {} ms, {} repetition(s); load average {}",
        a.ranks,
        a.steps,
        a.size,
        a.size,
        a.every,
        a.failure_timeout_ms,
        a.heartbeat_ms,
        a.repeat,
        load_average().unwrap_or_else(|| "?".into())
    )?;
    outln!(
        "| engine | failure | detection s | failure -> all resumed s | total s | launcher start s | total / start |"
    )?;
    outln!("|---|---|---|---|---|---|---|")?;
    let mut failed = false;
    for e in engines(&a) {
        let mut e = match e {
            Ok(e) => e,
            Err(why) => {
                outln!("| mpirun | - | skipped: {why} | | | | |")?;
                failed = true;
                continue;
            }
        };
        let starts: Vec<f64> = (0..a.repeat)
            .map(|_| launcher_start(&e, a.ranks))
            .collect::<Result<_, _>>()?;
        let start = median(&starts);
        for kind in [Kind::Process, Kind::Host] {
            let mut samples = Vec::new();
            for _ in 0..a.repeat {
                if kind == Kind::Host && e.cluster.is_some() {
                    // The lost host's sshd died with it: a fresh test bed per host failure.
                    e = mpirun_engine()?;
                }
                samples.push(run_once(&a, &lz, &mut e, kind)?);
            }
            let det = median(&samples.iter().map(|s| s.detect).collect::<Vec<_>>());
            let rec = median(&samples.iter().map(|s| s.recover).collect::<Vec<_>>());
            let total = median(
                &samples
                    .iter()
                    .map(|s| s.detect + s.recover)
                    .collect::<Vec<_>>(),
            );
            let what = match (kind, e.cluster.is_some()) {
                (Kind::Process, _) => "process (SIGKILL)",
                (Kind::Host, true) => "host (killed, link down; spare)",
                (Kind::Host, false) => "host (2 ranks silent)",
            };
            outln!(
                "| {} | {what} | {} | {rec:.3} | {total:.3} | {start:.3} | {:.1}x |",
                e.name,
                if kind == Kind::Host {
                    format!("{det:.3}")
                } else {
                    "-".into()
                },
                total / start
            )?;
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
