//! No rank survives its launcher: SIGKILL of `lazarus run` (PDEATHSIG, and the ranks'
//! launcher watch for what a shell wrapper started) and SIGTERM (forwarded, then clean stop
//! with status 128+15).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Direct children of `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            // Fields after the parenthesised command name: state, ppid, ...
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if f.get(1).and_then(|x| x.parse::<u32>().ok()) == Some(pid) {
                    out.push(p);
                }
            }
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie is dead; it only waits to be reaped.
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

// The child is returned to the caller, which waits for it (the lint cannot see that).
#[allow(clippy::zombie_processes)]
fn start(n: usize) -> (std::process::Child, Vec<u32>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lazarus"))
        .args([
            "run",
            "-n",
            &n.to_string(),
            "--kill-grace-ms",
            "500",
            "--",
            "sleep",
            "30",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let ranks = children(child.id());
        if ranks.len() == n {
            return (child, ranks);
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ranks did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_all_gone(ranks: &[u32]) {
    let t0 = Instant::now();
    while ranks.iter().any(|p| alive(*p)) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "orphan rank survived: {ranks:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigkill_of_launcher_leaves_no_rank_alive() {
    let (mut child, ranks) = start(3);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    assert_all_gone(&ranks);
}

#[test]
fn sigterm_is_forwarded_and_stops_everything_cleanly() {
    let (mut child, ranks) = start(2);
    // SAFETY: signalling our own child (handlers are installed before ranks are spawned).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(128 + libc::SIGTERM));
    assert_all_gone(&ranks);
}

/// Every process below `pid` (children, grandchildren, ...), from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// SIGKILLs the listed processes (our own descendants) that still run, so a failing test
/// leaves nothing behind.
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for p in self.0.iter().filter(|p| alive(**p)) {
            // SAFETY: signalling a process this test started (checked alive just now).
            unsafe { libc::kill(*p as i32, libc::SIGKILL) };
        }
    }
}

/// Id of the newest checkpoint with a COMMIT in `repo` (0 if none).
fn newest_commit(repo: &std::path::Path) -> u64 {
    let Ok(dir) = std::fs::read_dir(repo.join("checkpoints")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| e.path().join("COMMIT").exists())
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// Regression, issue #11 item 7: ranks wrapped in a shell (`lazarus run -- sh -c 'prog …'`)
/// survived a SIGKILLed supervisor (the death signal reached only the shell) and kept
/// committing checkpoints without the lock, which a new job then took over as stale while
/// they ran. Now every rank leads its own process group and its communicator watches the
/// launcher: the whole group stops, no COMMIT appears afterwards, and a new job waits for
/// them before taking the lock over, then resumes.
#[test]
fn shell_wrapped_ranks_survived_a_sigkilled_supervisor_and_kept_committing() {
    shell_wrapped(2);
}

/// The same with one rank: a world of one under a launcher watches it too (it used to
/// take no connection at all, so nothing could tell it its supervisor was gone).
#[test]
fn a_single_shell_wrapped_rank_survived_a_sigkilled_supervisor() {
    shell_wrapped(1);
}

fn shell_wrapped(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let lz = env!("CARGO_BIN_EXE_lazarus");
    // `; true` keeps the shell as the rank's first process (no exec of the program).
    let long = format!("{lz} __heat-rank --steps 1000000000 --size 24 --every 100; true");
    let timeouts = ["--failure-timeout-ms", "1000", "--heartbeat-ms", "100"];
    let mut sup = Command::new(lz)
        .args(["run", "-n", &n.to_string(), "--repo"])
        .arg(&repo)
        .args(timeouts)
        .args(["--", "sh", "-c", &long])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let ranks = loop {
        // The shells and the programs they started, and a committed checkpoint.
        let d = descendants(sup.id());
        if d.len() >= 2 * n && newest_commit(&repo) > 0 {
            break d;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = sup.kill();
            let _ = sup.wait();
            panic!("the job did not start and commit within 60 s: {d:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _cleanup = KillOnDrop(ranks.clone());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(sup.id() as i32, libc::SIGKILL) };
    let _ = sup.wait();
    // The ranks stop at once (their control connection closed) or at the latest after the
    // failure timeout; allow much more on a loaded machine, but never forever.
    let t_kill = Instant::now();
    while ranks.iter().any(|p| alive(*p)) {
        assert!(
            t_kill.elapsed() < Duration::from_secs(15),
            "rank processes outlived their SIGKILLed supervisor: {:?} of {ranks:?}",
            ranks.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let last = newest_commit(&repo);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        newest_commit(&repo),
        last,
        "a checkpoint was committed after the ranks stopped"
    );
    // A new job finds the lock stale, waits for the dead job's ranks, then resumes.
    let resumed = format!("{lz} __heat-rank --steps 1 --size 24 --every 100; exit $?");
    let out = Command::new(lz)
        .args(["run", "-n", &n.to_string(), "--repo"])
        .arg(&repo)
        .args(timeouts)
        .args(["--", "sh", "-c", &resumed])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "resume failed: {err}");
    assert!(
        err.contains("died without releasing it") && err.contains("waiting"),
        "the new job must wait for the dead job's ranks: {err}"
    );
}
