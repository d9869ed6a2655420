//! Unaligned checkpoints under real failures: the `pingpong_async` example runs as 3 real
//! processes under the supervisor (what `lazarus run -n 3 --repo DIR --max-restarts K`
//! does), ranks talk over real TCP on loopback, and a seeded plan SIGKILLs a rank at a
//! random moment, after the k-th commit, again during the restore, or at a store
//! failpoint. Every trial must complete with the checksum of a failure-free run: the
//! example itself fails if any rank's counters or receive digest differ from the
//! prediction computed without a network (a message lost, duplicated or orphaned), and
//! every `r<rank> got <n>` line must be released exactly once (output commit).
//!
//! Seed: `LAZARUS_TEST_SEED` (printed) or a fixed default. A larger matrix:
//! `cargo test --test unaligned_kill -- --ignored --nocapture`.

mod common;

use lazarus::format::Rank;
use lazarus::net::launch::LaunchConfig;
use lazarus::net::NetConfig;
use lazarus::supervisor::{
    FailpointKill, JobEnd, KillPlan, KillTrigger, PlannedKill, Report, Supervisor, SupervisorConfig,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

const RANKS: u32 = 3;
/// 900 hops per token: since rank 0 writes COMMIT in the background (issue #16) a run
/// of 300 hops (rank 0 no longer stalls for COMMIT fsyncs) ended before most seeded
/// kills could land.
const ARGS: [&str; 8] = [
    "--tokens", "6", "--hops", "900", "--every", "120", "--report", "200",
];

/// Exits the whole test process if it runs longer than `secs`: a hang is a failure.
fn deadline(secs: u64) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        eprintln!("test deadline of {secs} s exceeded: hang");
        std::process::exit(101);
    });
}

fn config(repo: &Path, plan: KillPlan, max_restarts: u32) -> SupervisorConfig {
    let args = ARGS.iter().map(Into::into).collect();
    let mut l = LaunchConfig::new(RANKS, common::example_bin("pingpong_async"), args);
    l.net = NetConfig {
        failure_timeout: Duration::from_millis(2000),
        heartbeat_interval: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(10),
        ..NetConfig::default()
    };
    l.kill_grace = Duration::from_millis(500);
    let mut c = SupervisorConfig::new(l, repo);
    c.kill_plan = plan;
    c.max_restarts = max_restarts;
    c.echo_output = false;
    c.capture_output = true;
    c.progress = false;
    c
}

fn run(repo: &Path, plan: KillPlan, max_restarts: u32) -> Report {
    match Supervisor::run(&config(repo, plan, max_restarts)) {
        Ok(r) => r,
        Err(e) => panic!("supervisor error: {e}"),
    }
}

/// What one completed run printed: the checksum, the `got` lines with their release
/// counts, and the fields of rank 0's stats line.
struct Printed {
    checksum: String,
    got: BTreeMap<String, u32>,
    stats: BTreeMap<String, String>,
}

fn printed(r: &Report) -> Printed {
    assert_eq!(r.end, JobEnd::Completed, "{r:?}");
    let mut checksum = Vec::new();
    let mut stats = Vec::new();
    let mut got: BTreeMap<String, u32> = BTreeMap::new();
    for l in &r.output {
        if l.text.starts_with("checksum=") || l.text.starts_with("stats ") {
            assert_eq!(l.rank, Rank(0), "only rank 0 prints {:?}", l.text);
            if l.text.starts_with("checksum=") {
                checksum.push(l.text.clone());
            } else {
                stats.push(l.text.clone());
            }
            continue;
        }
        assert!(
            l.text.starts_with(&format!("r{} got ", l.rank.0)),
            "unexpected line {l:?}"
        );
        *got.entry(l.text.clone()).or_default() += 1;
    }
    assert_eq!(checksum.len(), 1, "exactly one checksum line: {checksum:?}");
    assert_eq!(stats.len(), 1, "exactly one stats line: {stats:?}");
    let stats = stats[0]
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Printed {
        checksum: checksum.remove(0),
        got,
        stats,
    }
}

fn reference() -> &'static Printed {
    static R: OnceLock<Printed> = OnceLock::new();
    R.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = printed(&run(&dir.path().join("repo"), KillPlan::none(), 0));
        assert!(
            p.got.values().all(|&n| n == 1),
            "failure-free run repeated a line: {:?}",
            p.got
        );
        assert_ne!(p.stats.get("committed").map(String::as_str), Some("0"));
        p
    })
}

const FAILPOINTS: [&str; 5] = [
    "after_chunk_write",
    "before_manifest_rename",
    "after_manifest_rename",
    "before_commit_rename",
    "after_commit_rename",
];

/// One seeded trial of kind `kind % 4`; returns (failures recovered, messages replayed by
/// the final incarnation).
fn trial(seed: u64, kind: u64) -> (usize, u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut plan = KillPlan {
        seed,
        ..KillPlan::default()
    };
    let after_commits = |rng: &mut ChaCha8Rng| KillTrigger::AfterCommits {
        commits: rng.gen_range(1..4),
        delay: Duration::from_millis(rng.gen_range(0..25)),
    };
    match kind % 4 {
        // Anywhere in the run, including during start-up or a round.
        0 => plan.kills.push(PlannedKill {
            incarnation: 0,
            rank: None,
            trigger: KillTrigger::AfterStart(Duration::from_millis(rng.gen_range(100..900))),
        }),
        // Shortly after a commit: the restore has a cut with tokens in flight.
        1 => plan.kills.push(PlannedKill {
            incarnation: 0,
            rank: None,
            trigger: after_commits(&mut rng),
        }),
        // Then again while the restarted job restores or replays.
        2 => {
            plan.kills.push(PlannedKill {
                incarnation: 0,
                rank: None,
                trigger: after_commits(&mut rng),
            });
            plan.kills.push(PlannedKill {
                incarnation: 1,
                rank: None,
                trigger: KillTrigger::AfterStart(Duration::from_millis(rng.gen_range(0..150))),
            });
        }
        // Inside a part or COMMIT write.
        _ => {
            let name = FAILPOINTS[rng.gen_range(0..FAILPOINTS.len())];
            let rank = if name.contains("commit") {
                0
            } else {
                rng.gen_range(0..RANKS)
            };
            plan.failpoints.push(FailpointKill {
                incarnation: 0,
                rank: Rank(rank),
                name: name.into(),
            });
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let r = run(&dir.path().join("repo"), plan.clone(), 4);
    assert_eq!(r.end, JobEnd::Completed, "seed {seed} plan {plan:?}: {r:?}");
    let p = printed(&r);
    let want = reference();
    assert_eq!(p.checksum, want.checksum, "seed {seed} plan {plan:?}");
    assert_eq!(
        p.got, want.got,
        "seed {seed} plan {plan:?}: output lines lost or repeated"
    );
    let replayed = p
        .stats
        .get("replayed")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    eprintln!(
        "seed {seed} kind {}: {} failure(s), restored {:?}, replayed {replayed}, {:?}",
        kind % 4,
        r.failures.len(),
        p.stats.get("restored"),
        r.elapsed
    );
    (r.failures.len(), replayed)
}

fn trials(n: u64, limit_secs: u64) {
    deadline(limit_secs);
    let base: u64 = std::env::var("LAZARUS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261122);
    eprintln!("base seed {base} (set LAZARUS_TEST_SEED to change)");
    let (mut failures, mut replayed) = (0, 0);
    for i in 0..n {
        let (f, r) = trial(base + i, i);
        failures += f;
        replayed += r;
    }
    eprintln!("{n} trials: {failures} failures recovered, {replayed} messages replayed");
    // The kills must land while the job runs, or the test proves little.
    assert!(
        failures as u64 >= n * 3 / 4,
        "only {failures} failures in {n} trials"
    );
    assert!(replayed > 0, "no restore replayed an in-flight message");
}

#[test]
fn failure_free_run_prints_the_predicted_checksum_once() {
    deadline(120);
    let p = reference();
    assert!(p.checksum.starts_with("checksum="));
    assert_eq!(p.stats.get("restored").map(String::as_str), Some("-"));
}

#[test]
fn sigkill_at_seeded_moments_recovers_exactly_once() {
    trials(4, 240);
}

#[test]
#[ignore = "long: 40 seeded trials (run with --ignored)"]
fn sigkill_matrix() {
    trials(40, 1800);
}
