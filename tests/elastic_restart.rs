//! Elastic restart with real processes (`lazarus run`, real TCP on loopback, real fsync,
//! real SIGKILL): a checkpoint of `examples/heat_dvec.rs` written by N ranks restores on M
//! ranks by redistribution and the run finishes with the checksum of a run that never
//! changed size; and `--shrink-on-failure` finishes on N-1 ranks after a rank is killed.
//! (Per-rank state refused by name, at once: `tests/supervised_refusals.rs`.)

mod common;

use common::{checksum, lazarus_run, text};
use lazarus::format::count;
use std::sync::OnceLock;

const SIZE: &str = "40";
const STEPS: u64 = 36;

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

/// Writes checkpoints with `n` ranks (steps 10, 20 and the finished 25; rank 1 slowed 3x
/// so the balancer skews the saved layout), then goes on to `STEPS` on `m` ranks from
/// step 25.
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
            "written by {} on {} by redistribution",
            count(n, "rank"),
            count(m, "rank")
        )),
        "{n} -> {m}: stderr says nothing of the redistribution:\n{stderr}"
    );
    // The first run ended with `Job::finish` at step 25: the second one extends it from
    // there (no step is redone).
    assert!(
        stderr.contains("at step 25 (the job had finished there)"),
        "{n} -> {m}:\n{stderr}"
    );
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
        stderr.contains("completed after 1 restart in") && stderr.contains("on 2 ranks"),
        "{stderr}"
    );
}
