//! Asynchronous checkpoints of a Job with fast levels (issues #15/#16, docs/LEVELS.md,
//! "Asynchronous level rounds"): real processes (`lazarus run -n 4`, TCP on loopback,
//! fsync, SIGKILL), 4 ranks on 2 simulated hosts. `checkpoint` returns once the state is
//! staged; the level round (L1, L2, L3, the outcome) runs on the Job's background thread
//! while the program goes on, collectives included.
//!
//! The worker is this test binary itself, run by `lazarus run` with `WORKER_ENV` set.

mod common;

use common::{checksum, lazarus_run_worker, text};
use lazarus::format::Rank;
use lazarus::{Checkpoint, Job, JobError};
use std::error::Error;
use std::path::Path;

/// `mode` for the worker: `iso` (snapshot isolation: every element overwritten right
/// after each checkpoint call; every rank SIGKILLed at step 9 of the first incarnation,
/// after waiting for the flush; the restore checks every element), `coll` (the program's
/// own collectives every step, concurrent with the background level rounds; no kill),
/// `fail` (rank 1's L1 repository fails the checkpoint at step 4 in the background).
const WORKER_ENV: &str = "LAZARUS_TEST_LEVELS_ASYNC";
const STEPS: u64 = 16;
const LEN: usize = 32 * 1024;

#[derive(Checkpoint)]
struct State {
    data: Vec<u64>,
    #[checkpoint(serde)]
    mixed: u64,
}

/// The value of element `i` of rank `rank` after `step` steps in mode `iso`.
fn value(step: u64, i: usize, rank: u32) -> u64 {
    let mut x = step
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(i as u64)
        .wrapping_add(u64::from(rank) << 48);
    x ^= x >> 29;
    x.wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

fn worker(mode: &str) -> Result<(), Box<dyn Error>> {
    let every = if mode == "fail" { 2 } else { 1 };
    let mut job = Job::builder()
        .every_steps(every)
        .keep(2)
        .comm(lazarus::init()?)
        .open()?;
    let comm = job.comm().clone();
    let me = comm.rank().0;
    let first_run = std::env::var("LAZARUS_INCARNATION").is_ok_and(|v| v == "0");
    let mut s = job.restore_or_init(|| State {
        data: (0..LEN).map(|i| value(0, i, me)).collect(),
        mixed: 0,
    })?;
    if mode == "iso" && job.restore_report().is_some() {
        // The restored state is the state at the call of its checkpoint, element for
        // element, although the program overwrote all of it while the flush ran.
        let at = job.step();
        if let Some(i) = (0..LEN).find(|&i| s.data[i] != value(at, i, me)) {
            return Err(format!(
                "rank {me}: element {i} restored at step {at} is {:#x}, not the value at the call",
                s.data[i]
            )
            .into());
        }
        eprintln!("levels-async: rank {me} restored every element of step {at}");
    }
    while job.step() < STEPS {
        if mode == "fail" && me == 1 && job.step() == 4 && first_run {
            // The L1 disk of rank 1 is full for the checkpoint at step 4.
            job.set_level_write_budget(0)?;
        }
        let step = match job.checkpoint(&s) {
            Ok(step) => step,
            Err(e) => return Err(format!("rank {me}: checkpoint: {e}").into()),
        };
        if mode == "iso" {
            // Right after the call: every element changes (to the next step's value).
            for (i, x) in s.data.iter_mut().enumerate() {
                *x = value(step + 1, i, me);
            }
        }
        let leveled = std::env::var_os("LAZARUS_L1_EVERY").is_some();
        if mode == "fail" && step == 5 && first_run && leveled {
            // The failed background level round of checkpoint 2 (step 4) is reported on
            // every rank by the next call that waits for it; the job goes on.
            match job.flush() {
                Err(e @ JobError::LevelFlush { .. }) => {
                    eprintln!(
                        "levels-async: rank {me}: {e} (retryable: {})",
                        e.is_retryable()
                    );
                    if !e.is_retryable() {
                        return Err(e.into());
                    }
                }
                other => {
                    return Err(format!(
                        "rank {me}: expected the level flush failure, got {:?}",
                        other.map(|r| r.map(|r| r.checkpoint))
                    )
                    .into())
                }
            }
            if me == 1 {
                job.set_level_write_budget(u64::MAX)?;
            }
        }
        if mode == "fail" && step == 7 && first_run && leveled {
            // The next checkpoint (3, step 6) completed.
            let report = job.flush()?.map(|r| (r.checkpoint.0, r.step));
            eprintln!("levels-async: rank {me} flushed {report:?}");
        }
        if mode == "iso" && first_run && step == 9 {
            // Wait for checkpoint 9 (step 9), then die: its copy is the restore point.
            job.flush()?;
            comm.barrier()?;
            // SAFETY: raising a signal in our own process.
            unsafe { libc::raise(libc::SIGKILL) };
        }
        // The program's own collectives, every step, while the level round of the
        // checkpoint just taken runs on the background thread.
        let local: u64 = s.data.iter().fold(0u64, |a, x| a.wrapping_add(*x));
        let all = comm.allgather(&local)?;
        let mut root = if me == 0 { s.mixed } else { 0 };
        comm.broadcast(Rank(0), &mut root)?;
        s.mixed = all.iter().fold(root, |a, x| a.rotate_left(7) ^ x);
        if mode == "coll" {
            // A step long enough to overlap the background round, with collectives all
            // along (the counter-numbered messages a collective on the flush thread
            // would take).
            for k in 0..40u64 {
                let v: Vec<u64> = comm.allgather(&(local ^ k))?;
                s.mixed = v.iter().fold(s.mixed, |a, x| a.rotate_left(3) ^ x);
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
        if mode != "iso" {
            let k = (step as usize * 997) % LEN;
            for x in &mut s.data[k..(k + LEN / 16).min(LEN)] {
                *x = x.wrapping_mul(6364136223846793005).wrapping_add(step + 1);
            }
        }
        println!("levels-async line {me} {step}");
    }
    job.finish(&s)?;
    let h = s.data.iter().fold(s.mixed, |a, x| a.rotate_left(5) ^ x);
    if let Some(all) = comm.gather(Rank(0), &h)? {
        let sum = all
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |a, x| a.rotate_left(3) ^ x);
        println!("levels checksum={sum:016x}");
    }
    Ok(())
}

/// The rank program; does nothing unless `lazarus run` started it with `WORKER_ENV`.
#[test]
#[ignore = "a rank of the other tests, started by `lazarus run`"]
fn levels_async_worker() {
    if let Ok(mode) = std::env::var(WORKER_ENV) {
        if let Err(e) = worker(&mode) {
            eprintln!("levels async worker: error: {e}");
            std::process::exit(1);
        }
    }
}

fn run(dir: &Path, levels: &[&str], mode: &str) -> std::process::Output {
    let l1 = dir.join("l1");
    let l1 = l1.to_str().expect("utf-8 path");
    let mut extra = vec!["--max-restarts", "2"];
    // `lazarus run` refuses --l1-dir without a fast level (the ranks would ignore it).
    if !levels.is_empty() {
        extra.extend(["--l1-dir", l1]);
    }
    extra.extend_from_slice(levels);
    let env = [(WORKER_ENV, mode), ("LAZARUS_SIM_HOSTS", "2")];
    lazarus_run_worker("levels_async_worker", 4, &dir.join("repo"), &extra, &env)
}

/// The failure-free result of `mode`, without levels.
fn reference(mode: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    checksum(&run(dir.path(), &[], mode))
}

/// Every rank's per-step line was released exactly once, in step order.
fn assert_lines_once(out: &std::process::Output) {
    let (stdout, stderr) = text(out);
    for rank in 0..4 {
        let steps: Vec<u64> = stdout
            .lines()
            .filter_map(|l| {
                let rest = l.split_once("levels-async line ")?.1;
                let (r, s) = rest.split_once(' ')?;
                (r.parse() == Ok(rank)).then(|| s.trim().parse().ok())?
            })
            .collect();
        assert_eq!(
            steps,
            (0..STEPS).collect::<Vec<_>>(),
            "rank {rank}'s lines\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

/// Snapshot isolation with levels: 4 ranks, L1 + L2 on every checkpoint, no L4; the
/// program overwrites every element as soon as `checkpoint` returns; every rank is killed
/// after step 9; the restore (from L1) has every element as it was at the call.
#[test]
fn a_background_level_round_writes_the_state_at_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let levels = ["--l1-every", "1", "--l2-every", "1", "--l4-every", "0"];
    let out = run(dir.path(), &levels, "iso");
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), reference("iso"), "{stderr}");
    assert_lines_once(&out);
    assert!(
        stderr.contains("restored checkpoint 9 at step 9 from L1 node-local"),
        "{stderr}"
    );
    for r in 0..4 {
        assert!(
            stderr.contains(&format!(
                "levels-async: rank {r} restored every element of step 9"
            )),
            "{stderr}"
        );
    }
}

/// The program's own collectives (allgather and broadcast every step) while level rounds
/// (L1 + L2 + L3 on every checkpoint, L4 every 4th) run in the background on the same
/// communicator: the rounds use only their own private point-to-point messages, so
/// nothing cross-matches and the result is the failure-free one. (With the outcome
/// exchange as a `Comm::allgather`, the two threads' collectives take each other's
/// messages and the run fails.)
#[test]
fn program_collectives_during_background_level_rounds_give_the_right_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let levels = [
        "--l1-every",
        "1",
        "--l2-every",
        "1",
        "--l3-every",
        "1",
        "--l4-every",
        "4",
    ];
    let out = run(dir.path(), &levels, "coll");
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), reference("coll"), "{stderr}");
    assert_lines_once(&out);
    assert!(
        !stderr.contains("restored checkpoint"),
        "no restart: {stderr}"
    );
}

/// An L1 write failure of rank 1 in the background round of checkpoint 2 (step 4; L1 +
/// L2 every checkpoint, no L4) is reported by the next call on every rank (rank 1: its
/// full disk; the others: rank 1's failure), retryable; the job goes on and checkpoint 3
/// (step 6) completes.
#[test]
fn a_background_level_write_failure_is_reported_by_the_next_call_and_the_job_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let levels = ["--l1-every", "1", "--l2-every", "1", "--l4-every", "0"];
    let out = run(dir.path(), &levels, "fail");
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), reference("fail"), "{stderr}");
    assert_lines_once(&out);
    for r in 0..4 {
        let line = stderr
            .lines()
            .find(|l| {
                l.contains(&format!(
                    "levels-async: rank {r}: checkpoint 0000000000000002 (step 4)"
                ))
            })
            .unwrap_or_else(|| panic!("rank {r} did not report checkpoint 2:\n{stderr}"));
        assert!(line.contains("(retryable: true)"), "{line}");
        assert!(
            line.contains("written to the fast levels in the background, did not complete"),
            "{line}"
        );
        assert!(
            stderr.contains(&format!("levels-async: rank {r} flushed Some((3, 6))")),
            "{stderr}"
        );
    }
    assert!(
        !stderr.contains("restored checkpoint"),
        "no restart: {stderr}"
    );
}
