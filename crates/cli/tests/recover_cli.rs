//! `lazarus run --repo`: restart budget, clear give-up message, output released once.

use std::process::Command;
use std::time::{Duration, Instant};

const LAZARUS: &str = env!("CARGO_BIN_EXE_lazarus");

/// Runs `lazarus` with a deadline: a hang fails the test instead of blocking CI.
fn lazarus(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(LAZARUS)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lazarus {args:?} exceeded its 60 s deadline");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn budget_exhausted_names_rank_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let (code, out, err) = lazarus(&[
        "run",
        "-n",
        "2",
        "--repo",
        repo.to_str().unwrap(),
        "--max-restarts",
        "2",
        "--",
        "sh",
        "-c",
        "echo partial; [ \"$LAZARUS_RANK\" = 1 ] && kill -9 $$; sleep 7.3125",
    ]);
    assert_eq!(code, 137, "stderr: {err}");
    assert!(
        err.contains("giving up after 2 restart(s)")
            && err.contains("rank 1 was killed by signal 9"),
        "{err}"
    );
    assert_eq!(err.matches("restarting all 2 ranks").count(), 2, "{err}");
    // No checkpoint was ever committed: nothing printed may be released.
    assert!(!out.contains("partial"), "{out}");
    // No orphans: the survivors' `sleep` of every incarnation is gone.
    std::thread::sleep(Duration::from_millis(100));
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("sleep 7.3125"))
        .collect();
    assert!(left.is_empty(), "orphans: {left:?}");
}

#[test]
fn output_of_a_clean_run_is_released_once_with_rank_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let (code, out, err) = lazarus(&[
        "run",
        "-n",
        "3",
        "--repo",
        repo.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo hello from $LAZARUS_RANK; printf '\\036lazarus:resumed - 0\\n'",
    ]);
    assert_eq!(code, 0, "{err}");
    for r in 0..3 {
        assert_eq!(
            out.matches(&format!("[rank {r}] hello from {r}\n")).count(),
            1,
            "{out}"
        );
    }
    assert!(!out.contains('\u{1e}'), "markers are never shown: {out:?}");
}

#[test]
fn ranks_find_the_repository_and_token_from_the_launcher() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let (code, out, err) = lazarus(&[
        "run",
        "-n",
        "1",
        "--repo",
        repo.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo repo=$LAZARUS_REPO inc=$LAZARUS_INCARNATION markers=$LAZARUS_OUTPUT_MARKERS; \
         [ -n \"$LAZARUS_JOB_TOKEN\" ] && [ -n \"$LAZARUS_JOB_START\" ] && echo env-ok",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("repo={} inc=0 markers=1", repo.display())),
        "{out}"
    );
    assert!(out.contains("env-ok"), "{out}");
    // The supervisor created the repository and held its lock.
    assert!(repo.join("FORMAT").exists() || repo.join("LOCK").exists());
}

#[test]
fn injection_flags_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    for (bad, why) in [
        ("5@10ms", "\"5\""),
        ("1@0c", "commit count"),
        ("1@10ms+5ms", "only follows a commit"),
    ] {
        let (code, _, err) = lazarus(&[
            "run",
            "-n",
            "2",
            "--repo",
            repo.to_str().unwrap(),
            "--inject-kill-after",
            bad,
            "--",
            "true",
        ]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(
            err.contains("--inject-kill-after") && err.contains(why),
            "{bad}: {err}"
        );
    }
    let (code, _, err) = lazarus(&["run", "-n", "2", "--inject-kill-mtbf", "1s", "--", "true"]);
    assert_eq!(code, 2);
    assert!(err.contains("need --repo"), "{err}");
}

#[test]
fn sigint_stops_the_supervised_job_without_restarting() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut child = Command::new(LAZARUS)
        .args(["run", "-n", "2", "--repo", repo.to_str().unwrap(), "--"])
        .args(["sh", "-c", "echo started; sleep 9.8125"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted by signal 2"), "{err}");
    assert!(!err.contains("restarting"), "{err}");
}

/// Issue #12: the fault-injection flags are documented, under their own "Testing"
/// heading after the flags a production run uses (they used to be hidden).
#[test]
fn fault_injection_flags_are_shown_under_a_testing_heading() {
    let (code, out, _) = lazarus(&["run", "--help"]);
    assert_eq!(code, 0);
    let heading = out.find("\nTesting:\n").expect("a Testing heading");
    for flag in [
        "--inject-kill-after",
        "--inject-kill-mtbf",
        "--inject-failpoint",
        "--seed",
    ] {
        let at = out
            .find(flag)
            .unwrap_or_else(|| panic!("{flag} missing:\n{out}"));
        assert!(at > heading, "{flag} is not under Testing:\n{out}");
    }
    assert!(out.find("--max-restarts").unwrap() < heading, "{out}");
}
