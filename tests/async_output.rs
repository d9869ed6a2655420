//! Output commit with asynchronous checkpoints (issue #16, docs/ASYNC.md): the `lines_async`
//! example (Job API, asynchronous writes) runs under the supervisor on 3 ranks and is
//! SIGKILLed inside background flushes (store failpoints at their n-th hit, so earlier
//! checkpoints committed); every line must be released exactly once and the result must
//! equal a failure-free run's. A line printed after a capture but before that checkpoint's
//! part is durable must not be released with it (the `part` marker is written at the
//! capture point), or the restart would print it a second time.

mod common;

use lazarus::net::launch::LaunchConfig;
use lazarus::net::NetConfig;
use lazarus::supervisor::{FailpointKill, JobEnd, KillPlan, Report, Supervisor, SupervisorConfig};
use lazarus::Rank;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const RANKS: u32 = 3;
const STEPS: u64 = 24;

fn run(repo: &Path, plan: KillPlan) -> Report {
    let bin = common::example_bin("lines_async");
    let args = [
        "--steps",
        "24",
        "--every",
        "3",
        "--kib",
        "2048",
        "--sleep-ms",
        "3",
    ]
    .iter()
    .map(Into::into)
    .collect();
    let mut l = LaunchConfig::new(RANKS, bin.into_os_string(), args);
    l.net = NetConfig {
        failure_timeout: Duration::from_millis(3000),
        heartbeat_interval: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(20),
        ..NetConfig::default()
    };
    l.kill_grace = Duration::from_millis(500);
    let mut c = SupervisorConfig::new(l, repo);
    c.kill_plan = plan;
    c.max_restarts = 4;
    c.echo_output = false;
    c.capture_output = true;
    c.progress = false;
    Supervisor::run(&c).unwrap_or_else(|e| panic!("supervisor error: {e}"))
}

/// Every `r<rank> s<step>` exactly once, one checksum; returns the checksum.
fn check_output(r: &Report) -> String {
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut checksum = Vec::new();
    for l in &r.output {
        if l.text.starts_with("checksum=") {
            checksum.push(l.text.clone());
        } else {
            *seen.entry(l.text.clone()).or_default() += 1;
        }
    }
    for rank in 0..RANKS {
        for s in 0..STEPS {
            let k = format!("r{rank} s{s}");
            assert_eq!(seen.get(&k).copied(), Some(1), "line {k:?}: {seen:?}");
        }
    }
    assert_eq!(seen.len() as u64, u64::from(RANKS) * STEPS, "{seen:?}");
    assert_eq!(checksum.len(), 1, "{checksum:?}");
    checksum.remove(0)
}

#[test]
fn output_is_released_exactly_once_when_killed_inside_background_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let reference = run(&dir.path().join("reference"), KillPlan::none());
    assert_eq!(reference.end, JobEnd::Completed, "{reference:?}");
    let want = check_output(&reference);
    let kill = |incarnation, rank, name: &str| FailpointKill {
        incarnation,
        rank: Rank(rank),
        name: name.into(),
    };
    let plan = KillPlan {
        failpoints: vec![
            // Rank 1 dies writing its part of the 3rd checkpoint (in its flush thread).
            kill(0, 1, "before_manifest_rename#3"),
            // Rank 0 dies just before COMMIT of the 2nd checkpoint of the next run.
            kill(1, 0, "before_commit#2"),
            // Rank 2 dies after its part of the 2nd checkpoint of the third run is durable.
            kill(2, 2, "after_manifest_rename#2"),
        ],
        ..KillPlan::default()
    };
    let r = run(&dir.path().join("killed"), plan);
    assert_eq!(r.end, JobEnd::Completed, "{r:?}");
    assert_eq!(
        r.failures.len(),
        3,
        "every failpoint fired: {:?}",
        r.failures
    );
    assert_eq!(check_output(&r), want);
}
