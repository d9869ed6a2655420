//! `SupervisorConfig::shrink` with real processes and real SIGKILL: the supervisor restarts
//! on one rank fewer only when the newest checkpoint can be redistributed (the probe's
//! per-rank state cannot), or when there is no checkpoint yet (a fresh start fits any
//! size); a bad minimum is a configuration error. The redistributing case (a DVec job that
//! finishes on N-1 ranks with the same checksum) is `tests/elastic_restart.rs` at the root.

mod common;

use common::{deadline, Probe};
use lazarus_format::Rank;
use lazarus_supervisor::{
    FailpointKill, JobEnd, KillPlan, KillTrigger, PlannedKill, Shrink, Supervisor, SupervisorError,
};
use std::time::Duration;

const PROBE: Probe = Probe {
    ranks: 3,
    steps: 12,
    every: 3,
    sleep_ms: 4,
    lines: 2,
};

#[test]
fn per_rank_checkpoint_restarts_on_the_same_number_of_ranks() {
    deadline(60);
    let reference = {
        let dir = tempfile::tempdir().unwrap();
        let r = PROBE.run(&dir.path().join("repo"), KillPlan::none(), 0);
        PROBE.check_output(&r)
    };
    // Rank 2 dies right after the first commit: the checkpoint holds per-rank state.
    let plan = KillPlan {
        kills: vec![PlannedKill {
            incarnation: 0,
            rank: Some(Rank(2)),
            trigger: KillTrigger::AfterCommits {
                commits: 1,
                delay: Duration::ZERO,
            },
        }],
        ..KillPlan::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = PROBE.config(&dir.path().join("repo"), plan, 2);
    cfg.shrink = Some(Shrink { min_ranks: 1 });
    let r = Supervisor::run(&cfg).unwrap();
    assert_eq!(r.end, JobEnd::Completed, "{r:?}");
    assert_eq!(r.failures.len(), 1, "{r:?}");
    assert!(r.failures[0].restored.is_some(), "{r:?}");
    assert_eq!(r.ranks, 3, "not shrunk: the state is per-rank");
    assert_eq!(PROBE.check_output(&r), reference);
}

#[test]
fn no_checkpoint_yet_shrinks_to_a_fresh_start() {
    deadline(60);
    // Rank 0 dies before the first COMMIT: nothing to redistribute.
    let plan = KillPlan {
        failpoints: vec![FailpointKill {
            incarnation: 0,
            rank: Rank(0),
            name: "before_commit".into(),
        }],
        ..KillPlan::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = PROBE.config(&dir.path().join("repo"), plan, 2);
    cfg.shrink = Some(Shrink { min_ranks: 2 });
    let r = Supervisor::run(&cfg).unwrap();
    assert_eq!(r.end, JobEnd::Completed, "{r:?}");
    assert_eq!(r.failures.len(), 1);
    assert_eq!(r.failures[0].restored, None);
    assert_eq!(r.ranks, 2);
    // Every line of the 2-rank run was released once; none of the dead run's.
    let probe2 = Probe { ranks: 2, ..PROBE };
    probe2.check_output(&r);
}

#[test]
fn minimum_out_of_range_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    for min in [0, 4] {
        let mut cfg = PROBE.config(&dir.path().join("repo"), KillPlan::none(), 0);
        cfg.shrink = Some(Shrink { min_ranks: min });
        match Supervisor::run(&cfg) {
            Err(SupervisorError::Config(m)) => assert!(m.contains("1..=3"), "{m}"),
            other => panic!("min {min}: {other:?}"),
        }
    }
}
