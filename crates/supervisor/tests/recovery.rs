//! Real processes, real SIGKILL: the supervisor restarts the probe job after every kind of
//! failure and the result and the released output equal a failure-free run's.

mod common;

use common::{deadline, Probe};
use lazarus_format::Rank;
use lazarus_supervisor::{FailpointKill, JobEnd, KillPlan, KillTrigger, PlannedKill};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::OnceLock;
use std::time::Duration;

const PROBE: Probe = Probe {
    ranks: 3,
    steps: 12,
    every: 3,
    sleep_ms: 4,
    lines: 2,
};

fn reference() -> &'static str {
    static R: OnceLock<String> = OnceLock::new();
    R.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let r = PROBE.run(&dir.path().join("repo"), KillPlan::none(), 0);
        assert_eq!(r.end, JobEnd::Completed, "{r:?}");
        PROBE.check_output(&r)
    })
}

const FAILPOINTS: [&str; 6] = [
    "after_chunk_write",
    "before_manifest_rename",
    "after_manifest_rename",
    "before_commit",
    "before_commit_rename",
    "after_commit_rename",
];

/// One seeded trial: a random rank killed at a random moment of the first run, sometimes
/// again early in the restart (during restore), or a store failpoint in a random rank.
fn trial(seed: u64) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut plan = KillPlan {
        seed,
        ..KillPlan::default()
    };
    match rng.gen_range(0..4) {
        0 | 1 => plan.kills.push(PlannedKill {
            incarnation: 0,
            rank: None,
            trigger: KillTrigger::AfterStart(Duration::from_millis(rng.gen_range(0..250))),
        }),
        2 => {
            plan.kills.push(PlannedKill {
                incarnation: 0,
                rank: None,
                trigger: KillTrigger::AfterCommits {
                    commits: rng.gen_range(1..3),
                    delay: Duration::from_millis(rng.gen_range(0..15)),
                },
            });
            // Kill during restore / right after the restart.
            plan.kills.push(PlannedKill {
                incarnation: 1,
                rank: None,
                trigger: KillTrigger::AfterStart(Duration::from_millis(rng.gen_range(0..60))),
            });
        }
        _ => {
            let name = FAILPOINTS[rng.gen_range(0..FAILPOINTS.len())];
            // Commit failpoints only trigger on the committer (rank 0).
            let rank = if name.contains("commit") {
                0
            } else {
                rng.gen_range(0..PROBE.ranks)
            };
            plan.failpoints.push(FailpointKill {
                incarnation: 0,
                rank: Rank(rank),
                name: name.into(),
            });
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let r = PROBE.run(&dir.path().join("repo"), plan.clone(), 4);
    assert_eq!(r.end, JobEnd::Completed, "seed {seed} plan {plan:?}: {r:?}");
    let sum = PROBE.check_output(&r);
    assert_eq!(sum, reference(), "seed {seed} plan {plan:?}");
    r.failures.len()
}

fn trials(from: u64, n: u64) {
    let base: u64 = std::env::var("LAZARUS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261122);
    eprintln!("base seed {base} (set LAZARUS_TEST_SEED to change)");
    let failed: usize = (from..from + n).map(|i| trial(base + i)).sum();
    eprintln!("{n} trials, {failed} failures recovered");
    // Most planned kills must land while the job runs, or the test proves little.
    assert!(
        failed as u64 >= n * 2 / 3,
        "only {failed} failures in {n} trials"
    );
}

#[test]
fn random_kills_a() {
    deadline(240);
    trials(0, 26);
}

#[test]
fn random_kills_b() {
    deadline(240);
    trials(26, 26);
}

#[test]
#[ignore = "soak: hundreds of trials"]
fn random_kills_soak() {
    deadline(3600);
    trials(1000, 400);
}

#[test]
fn no_faults_completes_once() {
    deadline(60);
    let dir = tempfile::tempdir().unwrap();
    let r = PROBE.run(&dir.path().join("repo"), KillPlan::none(), 0);
    assert_eq!(r.launches, 1);
    assert!(r.failures.is_empty());
    assert_eq!(r.commits, 3); // steps 3, 6, 9
    assert_eq!(PROBE.check_output(&r), reference());
}

#[test]
fn kill_between_durable_and_commit_marker_reports_lost_work() {
    deadline(60);
    // Rank 0 dies right after COMMIT, before printing the commit marker: the supervisor
    // finds the checkpoint committed in the repository and releases its output.
    let plan = KillPlan {
        failpoints: vec![FailpointKill {
            incarnation: 0,
            rank: Rank(0),
            name: "after_commit".into(),
        }],
        ..KillPlan::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let r = PROBE.run(&dir.path().join("repo"), plan, 2);
    assert_eq!(r.end, JobEnd::Completed);
    assert_eq!(r.failures.len(), 1);
    let f = &r.failures[0];
    assert_eq!(f.failure.rank, Rank(0));
    assert_eq!(f.restored.map(|p| p.step), Some(3));
    assert!(f.recovery_time.is_some(), "{f:?}");
    assert_eq!(PROBE.check_output(&r), reference());
}

#[test]
fn kill_at_before_commit_restarts_from_scratch() {
    deadline(60);
    let plan = KillPlan {
        failpoints: vec![FailpointKill {
            incarnation: 0,
            rank: Rank(0),
            name: "before_commit".into(),
        }],
        ..KillPlan::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let r = PROBE.run(&dir.path().join("repo"), plan, 1);
    assert_eq!(r.end, JobEnd::Completed);
    assert_eq!(r.failures[0].restored, None);
    assert_eq!(PROBE.check_output(&r), reference());
}

#[test]
fn budget_exhausted_gives_up_naming_the_rank() {
    deadline(60);
    let kills = (0..3)
        .map(|i| PlannedKill {
            incarnation: i,
            rank: Some(Rank(2)),
            trigger: KillTrigger::AfterStart(Duration::from_millis(20)),
        })
        .collect();
    let plan = KillPlan {
        kills,
        ..KillPlan::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let r = PROBE.run(&dir.path().join("repo"), plan, 2);
    assert_eq!(r.end, JobEnd::GaveUp { max_restarts: 2 });
    assert_eq!(r.launches, 3);
    assert_eq!(r.failures.len(), 3);
    assert_ne!(r.exit_code(), 0);
    let msg = r.give_up_message().unwrap();
    assert!(msg.contains("after 2 restart"), "{msg}");
    assert!(msg.contains("rank 2 was killed by signal 9"), "{msg}");
    // Nothing printed after the last commit was released.
    assert!(r.output.iter().all(|l| !l.text.starts_with("checksum")));
}

#[test]
fn poisson_failures_with_mtbf_still_finish_with_the_same_result() {
    deadline(120);
    let probe = Probe {
        // Long enough (>= 0.6 s of work) that the seeded first kill lands inside the run even
        // on an idle machine; with 40 steps a fast run could finish before it (seen in CI).
        steps: 120,
        sleep_ms: 5,
        ..PROBE
    };
    let want = {
        let dir = tempfile::tempdir().unwrap();
        let r = probe.run(&dir.path().join("repo"), KillPlan::none(), 0);
        probe.check_output(&r)
    };
    let plan = KillPlan {
        seed: 11,
        mtbf: Some(Duration::from_millis(150)),
        ..KillPlan::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let r = probe.run(&dir.path().join("repo"), plan, 100);
    assert_eq!(r.end, JobEnd::Completed, "{r:?}");
    eprintln!("mtbf 150 ms: {} failures recovered", r.failures.len());
    assert!(!r.failures.is_empty());
    assert!(r.failures.iter().all(|f| f.injected));
    assert_eq!(probe.check_output(&r), want);
}
