//! Issue #11 item 10: writing to a failed stdout or stderr (a full disk, `/dev/full`, a
//! closed pipe) must never panic (exit 101). Results that cannot be written are an error
//! (non-zero exit); diagnostics that cannot be written are dropped. Real processes with
//! their stdout or stderr on `/dev/full`, which fails every write with ENOSPC.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);
const HEAT: [&str; 6] = ["--steps", "30", "--size", "24", "--every", "10"];

/// /dev/full, or a skip (or a failure under CI) where it does not exist.
fn dev_full() -> Option<File> {
    match std::fs::OpenOptions::new().write(true).open("/dev/full") {
        Ok(f) => Some(f),
        Err(e) => {
            assert!(!lazarus_testbed::in_ci(), "/dev/full: {e}");
            eprintln!("note: skipping: no /dev/full ({e})");
            None
        }
    }
}

/// Runs `cmd` with stdout (`which` = 1) or stderr (2) on /dev/full, the other piped.
fn run_full(mut cmd: Command, which: u8, what: &str) -> Option<Output> {
    let full = dev_full()?;
    let t0 = std::time::Instant::now();
    let child = if which == 1 {
        cmd.stdout(full).stderr(Stdio::piped())
    } else {
        cmd.stderr(full).stdout(Stdio::piped())
    }
    .spawn()
    .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    let out = child.wait_with_output().expect("waiting");
    assert!(t0.elapsed() < DEADLINE, "{what} took {:?}", t0.elapsed());
    Some(out)
}

fn no_panic(out: &Output, what: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(101),
        "{what} panicked\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("panicked") && !stderr.contains("panicked"),
        "{what}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

fn heat(repo: &Path) -> Command {
    let mut c = Command::new(common::example_bin("heat"));
    c.arg("--repo").arg(repo).args(HEAT);
    c
}

#[test]
fn examples_panic_when_writing_to_a_failed_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("r");
    let mut first = heat(&repo);
    let first = common::output_within(&mut first, DEADLINE, "heat");
    assert!(first.status.success(), "{first:?}");
    let want = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(want.contains("checksum="), "{want}");
    // The second run restores and reports it on stderr, which fails.
    let Some(out) = run_full(heat(&repo), 2, "heat, stderr on /dev/full") else {
        return;
    };
    no_panic(&out, "heat with a failed stderr");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    // Its result cannot be written: an error naming why, not a panic.
    let Some(out) = run_full(heat(&repo), 1, "heat, stdout on /dev/full") else {
        return;
    };
    no_panic(&out, "heat with a failed stdout");
    assert!(!out.status.success(), "a lost result must not exit 0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    // heat_dvec likewise.
    let mut c = Command::new(common::example_bin("heat_dvec"));
    c.arg("--repo").arg(dir.path().join("d")).args(HEAT);
    let Some(out) = run_full(c, 1, "heat_dvec, stdout on /dev/full") else {
        return;
    };
    no_panic(&out, "heat_dvec with a failed stdout");
    assert!(!out.status.success());
}

#[test]
fn cli_panics_when_writing_to_a_failed_stdout_or_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("r");
    let mut first = heat(&repo);
    assert!(common::output_within(&mut first, DEADLINE, "heat")
        .status
        .success());
    let lz = common::lazarus_bin();
    let cli = |args: &[&str]| {
        let mut c = Command::new(&lz);
        c.args(args);
        c
    };
    let r = repo.to_str().expect("utf-8 path");
    // Results on a failed stdout: an error, never exit 0, never a panic.
    for args in [
        vec!["inspect", r],
        vec!["verify", r],
        vec!["model", "--cost", "10s", "--mtbf", "1h", "--work", "10h"],
    ] {
        let what = format!("lazarus {args:?} > /dev/full");
        let Some(out) = run_full(cli(&args), 1, &what) else {
            return;
        };
        no_panic(&out, &what);
        assert!(!out.status.success(), "{what}: {out:?}");
    }
    // A reader that went away (`| head`): quiet, with SIGPIPE's status (or 0 when the
    // output fit in the pipe before the reader closed it), never a panic.
    let mut c = cli(&["inspect", r]);
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    no_panic(&out, "lazarus inspect | (closed)");
    assert!(matches!(out.status.code(), Some(0 | 141)), "{out:?}");
    // Diagnostics on a failed stderr: dropped, the exit status still says what happened.
    let missing = dir.path().join("missing");
    let m = missing.to_str().expect("utf-8 path");
    for (args, code) in [
        (vec!["inspect", m], 2),
        (vec!["run", "-n", "2", "--", "false"], 1),
        (
            vec![
                "run",
                "-n",
                "1",
                "--repo",
                r,
                "--max-restarts",
                "1",
                "--",
                "false",
            ],
            1,
        ),
    ] {
        let what = format!("lazarus {args:?} 2> /dev/full");
        let Some(out) = run_full(cli(&args), 2, &what) else {
            return;
        };
        no_panic(&out, &what);
        assert_eq!(out.status.code(), Some(code), "{what}: {out:?}");
    }
}
