//! Real processes under the launcher: success, exit codes, SIGKILL of a rank while the
//! others block (every survivor returns an error within the failure timeout), missed
//! heartbeats of a stopped rank.

use lazarus_format::Rank;
use lazarus_net::launch::{FailureKind, JobOutcome, LaunchConfig, Launcher, RankStatus};
use lazarus_net::{FrameMac, NetConfig};
use std::time::Duration;

fn probe(n: u32, args: &[&str]) -> LaunchConfig {
    let mut c = LaunchConfig::new(
        n,
        env!("CARGO_BIN_EXE_lazarus-net-probe"),
        args.iter().map(|a| a.into()).collect(),
    );
    c.net = NetConfig {
        heartbeat_interval: Duration::from_millis(100),
        failure_timeout: Duration::from_millis(1000),
        connect_timeout: Duration::from_secs(10),
        ..NetConfig::default()
    };
    c.kill_grace = Duration::from_millis(500);
    c
}

fn run(c: &LaunchConfig) -> JobOutcome {
    let o = Launcher::run(c).unwrap();
    eprintln!("{o:?}");
    o
}

#[test]
fn ring_job_succeeds_on_four_ranks() {
    let o = run(&probe(4, &["ring"]));
    assert!(o.success());
    assert_eq!(o.exit_code(), 0);
    assert_eq!(o.statuses, vec![RankStatus::Exited(0); 4]);
}

/// The launcher's frame MAC setting reaches its rendezvous and every rank: with it off
/// the job runs (a rank left on the default would be refused by the rendezvous).
#[test]
fn ring_job_succeeds_with_the_frame_mac_off() {
    let mut c = probe(4, &["ring"]);
    c.net.frame_mac = FrameMac::Off;
    assert!(run(&c).success());
}

/// A rank whose setting differs from the launcher's is refused when it registers (the
/// probe exits 4 on an init error) and the job fails: never a job with mixed settings.
#[test]
fn a_rank_with_another_frame_mac_setting_cannot_join() {
    let mut c = probe(3, &["ring"]);
    c.rank_env
        .push((1, "LAZARUS_FRAME_MAC".into(), "off".into()));
    let o = run(&c);
    assert_eq!(
        o.failure.map(|f| (f.rank, f.kind)),
        Some((Rank(1), FailureKind::Exited(4)))
    );
}

#[test]
fn first_failure_exit_code_is_reported_and_others_are_stopped() {
    let o = run(&probe(3, &["exit", "2", "7"]));
    assert_eq!(
        o.failure.map(|f| (f.rank, f.kind)),
        Some((Rank(2), FailureKind::Exited(7)))
    );
    assert_eq!(o.exit_code(), 7);
    // The sleepers were stopped, not waited for (they sleep 60 s).
    assert!(o.elapsed < Duration::from_secs(20), "{:?}", o.elapsed);
}

fn kill_while_blocked(n: u32, victim: u32, op: &str) {
    let mut c = probe(n, &["die", &victim.to_string(), op]);
    // Let survivors fail on their own so we can see that they do, and in time.
    c.stop_grace = Duration::from_secs(15);
    let o = run(&c);
    assert_eq!(
        o.failure.map(|f| (f.rank, f.kind)),
        Some((Rank(victim), FailureKind::Signaled(libc::SIGKILL)))
    );
    for (r, s) in o.statuses.iter().enumerate() {
        if r as u32 != victim {
            assert_eq!(
                *s,
                RankStatus::Exited(3),
                "rank {r} should have returned an error"
            );
        }
    }
    // Failure timeout 1 s: survivors return within a few seconds, never hang.
    assert!(o.elapsed < Duration::from_secs(8), "{:?}", o.elapsed);
}

#[test]
fn sigkill_during_recv_fails_every_waiter_in_time() {
    kill_while_blocked(3, 1, "recv");
}

#[test]
fn sigkill_of_root_during_allreduce_fails_every_rank_in_time() {
    kill_while_blocked(4, 0, "allreduce");
}

#[test]
fn sigkill_of_leaf_during_allreduce_fails_every_rank_in_time() {
    kill_while_blocked(4, 3, "allreduce");
}

/// Review: a rank sends nothing to the rendezvous between registering and the end of its
/// mesh; the host counted that silence as missed heartbeats, so a rank that joined more
/// than the failure timeout (1 s here) after another failed the job at every start.
#[test]
fn a_rank_that_registers_early_is_not_taken_for_a_silent_one() {
    let o = run(&probe(3, &["late", "2", "2500"]));
    assert!(o.failure.is_none(), "{:?}", o.failure);
    assert_eq!(o.exit_code(), 0);
}

#[test]
fn stopped_rank_is_detected_by_missed_heartbeats() {
    let o = run(&probe(3, &["stall", "2"]));
    assert_eq!(
        o.failure.map(|f| (f.rank, f.kind)),
        Some((Rank(2), FailureKind::MissedHeartbeats))
    );
    assert_eq!(o.exit_code(), 1);
    assert!(o.elapsed < Duration::from_secs(10), "{:?}", o.elapsed);
}

/// A program that does not use the communicator (never joins the rendezvous) is a normal
/// rank of the local launcher: it runs past the join deadline and succeeds.
#[test]
fn programs_that_never_join_are_left_alone() {
    let mut c = LaunchConfig::new(2, "sleep", vec!["3".into()]);
    c.net = NetConfig {
        heartbeat_interval: Duration::from_millis(100),
        failure_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..NetConfig::default()
    };
    let o = run(&c);
    assert!(o.success(), "{o:?}");
    assert!(o.elapsed >= Duration::from_secs(3), "{o:?}");
}
