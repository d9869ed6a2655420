//! Elastic restart with real processes (`lazarus run`, real TCP on loopback, real fsync,
//! real SIGKILL): a checkpoint of `examples/heat_dvec.rs` written by N ranks restores on M
//! ranks by redistribution and the run finishes with the checksum of a run that never
//! changed size; per-rank state (`examples/heat.rs`) is refused naming the field; and
//! `--shrink-on-failure` finishes on N-1 ranks after a rank is killed.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);
const SIZE: &str = "40";
const STEPS: u64 = 36;

/// Runs `lazarus run -n <n> --repo <repo> <extra> -- <prog>` with a deadline.
fn lazarus_run(n: u32, repo: &Path, extra: &[&str], env: &[(&str, &str)], prog: &[&str]) -> Output {
    let mut cmd = Command::new(common::lazarus_bin());
    cmd.arg("run")
        .args(["-n", &n.to_string(), "--repo"])
        .arg(repo)
        .args(["--failure-timeout-ms", "3000", "--heartbeat-ms", "100"])
        .args(extra)
        .arg("--")
        .args(prog)
        .env_remove("LAZARUS_FAILPOINT")
        .env_remove("LAZARUS_SLOWDOWN")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn lazarus run");
    let t0 = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if t0.elapsed() > DEADLINE {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "lazarus run -n {n} {prog:?} exceeded {DEADLINE:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn heat_dvec(steps: u64) -> Vec<String> {
    let bin = common::example_bin("heat_dvec")
        .to_str()
        .expect("utf-8 path")
        .to_string();
    [
        bin,
        "--steps".into(),
        steps.to_string(),
        "--size".into(),
        SIZE.into(),
        "--every".into(),
        "10".into(),
        "--balance-every".into(),
        "3".into(),
    ]
    .into()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn checksum(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(
        out.status.success(),
        "{:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    common::one_checksum(&stdout, &stderr)
}

/// The checksum of a run of `STEPS` that never changed size.
fn reference() -> &'static str {
    static R: OnceLock<String> = OnceLock::new();
    R.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let prog = heat_dvec(STEPS);
        let prog: Vec<&str> = prog.iter().map(String::as_str).collect();
        checksum(&lazarus_run(2, &dir.path().join("ref"), &[], &[], &prog))
    })
}

/// Writes checkpoints with `n` ranks (steps 10, 20; rank 1 slowed 3x so the balancer
/// skews the saved layout), then finishes on `m` ranks from step 20.
fn n_to_m(n: u32, m: u32) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let first = heat_dvec(25);
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let slow: &[(&str, &str)] = if n > 1 {
        &[("LAZARUS_SLOWDOWN", "1:3")]
    } else {
        &[]
    };
    let out = lazarus_run(n, &repo, &[], slow, &first);
    checksum(&out);
    let second = heat_dvec(STEPS);
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let out = lazarus_run(m, &repo, &[], &[], &second);
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), reference(), "{n} -> {m}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "written by {n} ranks on {m} ranks by redistribution"
        )),
        "{n} -> {m}: stderr says nothing of the redistribution:\n{stderr}"
    );
    assert!(stderr.contains("at step 20"), "{n} -> {m}:\n{stderr}");
}

#[test]
fn grow_restores_by_redistribution_with_the_same_checksum() {
    for (n, m) in [(1, 3), (2, 5), (3, 4), (2, 6)] {
        n_to_m(n, m);
    }
}

#[test]
fn shrink_restores_by_redistribution_with_the_same_checksum() {
    for (n, m) in [(3, 2), (4, 3), (6, 4), (5, 1)] {
        n_to_m(n, m);
    }
}

#[test]
fn per_rank_state_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let lz = common::lazarus_bin()
        .to_str()
        .expect("utf-8 path")
        .to_string();
    let heat = [
        lz.as_str(),
        "__heat-rank",
        "--steps",
        "25",
        "--size",
        "24",
        "--every",
        "10",
    ];
    checksum(&lazarus_run(2, &repo, &[], &[], &heat));
    let out = lazarus_run(3, &repo, &["--max-restarts", "0"], &[], &heat);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("written by 2 ranks and cannot be restored on 3 by redistribution")
            && stderr.contains("field `grid` differs between rank 0 and rank 1")
            && stderr.contains("restart with 2 ranks"),
        "{stderr}"
    );
}

#[test]
fn shrink_on_failure_finishes_on_one_rank_fewer_after_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    // 60 checkpoints: the kill after the 2nd commit lands mid-run.
    let heat_dvec = common::example_bin("heat_dvec");
    let prog = [
        heat_dvec.to_str().expect("utf-8 path"),
        "--steps",
        "3000",
        "--size",
        "48",
        "--every",
        "50",
    ];
    let want = {
        let d = tempfile::tempdir().unwrap();
        checksum(&lazarus_run(3, &d.path().join("ref"), &[], &[], &prog))
    };
    let out = lazarus_run(
        3,
        &repo,
        &[
            "--shrink-on-failure",
            "--min-ranks",
            "2",
            // After the 2nd commit, whatever the machine's speed (a fixed delay let an idle
            // machine finish the run before the kill).
            "--inject-kill-after",
            "1@2c",
        ],
        &[],
        &prog,
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(checksum(&out), want, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("rank 1 was killed by signal 9"),
        "the kill must land mid-run:\n{stderr}"
    );
    assert!(
        stderr.contains("restarting on 2 ranks instead of 3"),
        "{stderr}"
    );
    assert!(
        stderr.contains("written by 3 ranks on 2 ranks by redistribution"),
        "the restart must restore a 3-rank checkpoint on 2 ranks:\n{stderr}"
    );
    assert!(
        stderr.contains("completed after 1 restart(s)") && stderr.contains("on 2 ranks"),
        "{stderr}"
    );
}
