//! No rank survives its launcher: SIGKILL of `lazarus run` (PDEATHSIG) and SIGTERM
//! (forwarded, then clean stop with status 128+15).

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
