//! N→M restore from fast levels (issue #15 part 5, docs/LEVELS.md "N→M"), with real
//! processes (`lazarus run`, TCP on loopback, fsync, SIGKILL). A DVec program runs on 4
//! ranks on 2 simulated hosts (`LAZARUS_SIM_HOSTS=2`: ranks 0,1 on `sim0`, 2,3 on `sim1`)
//! with L1 and L2 on every checkpoint and no L4; every rank SIGKILLs itself mid-run
//! (`--max-restarts 0`: the supervisor gives up), possibly after deleting node-local
//! directories ("losing a host"). The job is then started again on another number of
//! ranks and must finish with the failure-free checksum, restored from the fast levels
//! by redistribution, with nothing in L4.
//!
//! The worker is this test binary itself, run by `lazarus run` with `WORKER_ENV` set.

mod common;

use common::{assert_refused_as_lost, checksum, lazarus_run_worker, text};
use lazarus::format::Rank;
use lazarus::{Checkpoint, DVec, Job};
use std::error::Error;
use std::path::Path;

/// `steps,kill_step,mode` for the worker. Modes: `none`; `kill` (every rank SIGKILLs
/// itself after step `kill_step`); `rank1` (only rank 1 does, in the first incarnation); `host1` (also, sim1's directory is deleted first);
/// `part2` (sim1 lost and sim0's partner copy of rank 2 deleted: old rank 2's part
/// exists nowhere); `own0` (sim1 lost and sim0's L1 copy of rank 0 deleted: with parity
/// only, group {0, 2} keeps one input of the two it needs); `perrank` (no kill; the
/// state is per-rank, not a DVec).
const WORKER_ENV: &str = "LAZARUS_TEST_LEVELS_NM";
const STEPS: u64 = 24;
const LEN: u64 = 48 * 1024 + 5;

#[derive(Checkpoint)]
struct State {
    grid: DVec<u64>,
    #[checkpoint(serde, replicated)]
    mixed: u64,
}

#[derive(Checkpoint)]
struct PerRank {
    data: Vec<u64>,
}

fn worker(spec: &str) -> Result<(), Box<dyn Error>> {
    let parts: Vec<&str> = spec.split(',').collect();
    let [steps, kill_step, mode] = parts[..] else {
        return Err(format!("{WORKER_ENV}={spec:?}: expected steps,kill_step,mode").into());
    };
    let (steps, kill_step): (u64, u64) = (steps.parse()?, kill_step.parse()?);
    let mut job = Job::builder()
        .every_steps(2)
        .keep(2)
        .comm(lazarus::init()?)
        .open()?;
    let comm = job.comm().clone();
    let (me, size) = (comm.rank().0, comm.size());
    if mode == "perrank" {
        let mut s = job.restore_or_init(|| PerRank {
            data: vec![u64::from(me); 64],
        })?;
        while job.step() < steps {
            job.checkpoint(&s)?;
            s.data[0] += 1;
        }
        job.finish(&s)?;
        return Ok(());
    }
    let mut s = job.restore_or_init(|| State {
        grid: DVec::from_fn(&comm, LEN, |i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .expect("the grid"),
        mixed: 0,
    })?;
    while job.step() < steps {
        let step = job.checkpoint(&s)?;
        let first_run = std::env::var("LAZARUS_INCARNATION").is_ok_and(|v| v == "0");
        if step == kill_step && mode != "none" && (mode != "rank1" || first_run) {
            let host = format!("sim{}", me * 2 / size);
            let root = std::env::var_os("LAZARUS_L1_DIR").ok_or("no LAZARUS_L1_DIR")?;
            let lose = |rel: &str| {
                let _ = std::fs::remove_dir_all(Path::new(&root).join(rel));
            };
            // These tests assert the exact restore point: the checkpoint just taken (in
            // the background) is complete before the rank dies.
            job.flush()?;
            if mode == "rank1" && me == 1 {
                // Only rank 1 dies (no barrier: the others notice its loss).
                // SAFETY: raising a signal in our own process.
                unsafe { libc::raise(libc::SIGKILL) };
            }
            if (mode == "host1" || mode == "part2" || mode == "own0") && host == "sim1" {
                lose("sim1");
            }
            if mode == "own0" && me == 0 {
                lose("sim0/rank-0");
            }
            if mode == "part2" && me == 0 {
                lose("sim0/partner-of-2");
            }
            if mode != "rank1" {
                // Every rank deletes what it deletes before any rank dies.
                comm.barrier()?;
                // SAFETY: raising a signal in our own process.
                unsafe { libc::raise(libc::SIGKILL) };
            }
        }
        // Change a window of the global array (the same elements on any number of
        // ranks), and mix in the global sum.
        let k = (step * 997) % LEN;
        let window = k..(k + LEN / 16).min(LEN);
        s.grid.for_each_mut(|g, x| {
            if window.contains(&g) {
                *x = x.wrapping_mul(6364136223846793005).wrapping_add(step + 1);
            }
        });
        let mut local = 0u64;
        s.grid.for_each(|_, x| local = local.wrapping_add(*x));
        let all = comm.allgather(&local)?;
        let total = all.iter().fold(0u64, |a, x| a.wrapping_add(*x));
        s.mixed = s.mixed.rotate_left(7) ^ total;
    }
    job.finish(&s)?;
    if let Some(grid) = s.grid.gather(&comm, Rank(0))? {
        let sum = grid.iter().fold(s.mixed, |a, x| a.rotate_left(5) ^ x);
        println!("levels checksum={sum:016x}");
    }
    Ok(())
}

/// The rank program; does nothing unless `lazarus run` started it with `WORKER_ENV`.
#[test]
#[ignore = "a rank of the other tests, started by `lazarus run`"]
fn levels_nm_worker() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        if let Err(e) = worker(&spec) {
            eprintln!("levels nm worker: error: {e}");
            std::process::exit(1);
        }
    }
}

fn run(dir: &Path, n: u32, levels: &[&str], extra: &[&str], spec: &str) -> std::process::Output {
    run_env(dir, n, levels, extra, spec, &[])
}

/// [`run`] with more environment for the job.
fn run_env(
    dir: &Path,
    n: u32,
    levels: &[&str],
    extra: &[&str],
    spec: &str,
    more_env: &[(&str, &str)],
) -> std::process::Output {
    let l1 = dir.join("l1");
    let l1 = l1.to_str().expect("utf-8 path");
    let mut args = Vec::new();
    // `lazarus run` refuses --l1-dir without a fast level (the ranks would ignore it).
    if !levels.is_empty() {
        args.extend(["--l1-dir", l1]);
    }
    args.extend_from_slice(levels);
    args.extend_from_slice(extra);
    let mut env = vec![(WORKER_ENV, spec), ("LAZARUS_SIM_HOSTS", "2")];
    env.extend_from_slice(more_env);
    lazarus_run_worker("levels_nm_worker", n, &dir.join("repo"), &args, &env)
}

/// The failure-free checksum (without levels, on 4 ranks; the same on any number).
fn reference() -> String {
    static REF: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    REF.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        checksum(&run(dir.path(), 4, &[], &[], &format!("{STEPS},0,none")))
    })
    .clone()
}

/// Committed checkpoints in the durable repository.
fn durable_checkpoints(repo: &Path) -> usize {
    lazarus::store::RepoReader::open(repo)
        .and_then(|r| r.committed())
        .map(|c| c.len())
        .unwrap_or(0)
}

const FAST_ONLY: [&str; 6] = ["--l1-every", "1", "--l2-every", "1", "--l4-every", "0"];

/// 4 ranks killed after step `kill` (mode `mode`, the supervisor does not restart them).
fn killed_on_four(dir: &Path, levels: &[&str], kill: u64, mode: &str) {
    let out = run(
        dir,
        4,
        levels,
        &["--max-restarts", "0"],
        &format!("{STEPS},{kill},{mode}"),
    );
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success() && !stdout.contains("checksum="),
        "{stdout}{stderr}"
    );
}

/// Killed on 4 ranks at step 9 (checkpoint 4 at step 8 is the newest), continued on
/// `m`: every old part from its own L1 copy, redistributed, the failure-free result.
fn four_to(m: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    killed_on_four(dir.path(), &FAST_ONLY, 9, "kill");
    let out = run(dir.path(), m, &FAST_ONLY, &[], &format!("{STEPS},0,none"));
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), reference(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "restored checkpoint 4 at step 8 from L1 node-local (written by 4 ranks, redistributed on {m})"
        )),
        "{stderr}"
    );
    assert_eq!(durable_checkpoints(&dir.path().join("repo")), 0);
    dir
}

#[test]
fn killed_on_four_ranks_restores_on_three_from_node_local_copies() {
    let dir = four_to(3);
    // The 3-rank world's first checkpoint on L1 and L2 removed what no rank of it writes
    // (old rank 3's L1 copy and its mirror); the rest is its own, and verifies.
    let l1 = dir.path().join("l1");
    assert!(!l1.join("sim1/rank-3").exists() && !l1.join("sim0/partner-of-3").exists());
    for d in [
        "sim0/rank-0",
        "sim0/rank-1",
        "sim1/rank-2",
        "sim0/partner-of-2",
        "sim1/partner-of-0",
        "sim1/partner-of-1",
    ] {
        assert!(l1.join(d).is_dir(), "{d}");
    }
    for level in ["l1", "l2"] {
        let out = std::process::Command::new(common::lazarus_bin())
            .args(["verify", "--level", level, "--l1-dir"])
            .arg(&l1)
            .arg(dir.path().join("repo"))
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        assert_eq!(stdout.matches("ok: ").count(), 3, "{level}: {stdout}");
    }
}

#[test]
fn killed_on_four_ranks_restores_on_two_and_on_six_from_node_local_copies() {
    four_to(2);
    four_to(6);
}

/// `--shrink-on-failure`: rank 1 of 4 is SIGKILLed, the supervisor restarts the job on 3
/// ranks (L4 holds nothing, so it has nothing to check), and the 3 ranks restore the
/// 4-rank checkpoint from the fast levels by redistribution.
#[test]
fn shrink_on_failure_restores_from_the_fast_levels_on_one_rank_fewer() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        4,
        &FAST_ONLY,
        &["--max-restarts", "2", "--shrink-on-failure"],
        &format!("{STEPS},9,rank1"),
    );
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), reference(), "{stderr}");
    assert!(
        stderr.contains("restarting on 3 ranks instead of 4"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "restored checkpoint 4 at step 8 from L1 node-local (written by 4 ranks, redistributed on 3)"
        ),
        "{stderr}"
    );
    assert_eq!(durable_checkpoints(&dir.path().join("repo")), 0);
}

/// Host sim1 lost (its directory deleted) before the N→M restart: old ranks 2 and 3 come
/// from their partner copies on sim0, sent by rank 0 to the new ranks that need them.
#[test]
fn lost_host_before_a_restart_on_three_ranks_uses_partner_copies() {
    let dir = tempfile::tempdir().unwrap();
    killed_on_four(dir.path(), &FAST_ONLY, 9, "host1");
    assert!(!dir.path().join("l1/sim1").exists());
    let out = run(dir.path(), 3, &FAST_ONLY, &[], &format!("{STEPS},0,none"));
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), reference(), "{stderr}");
    assert!(
        stderr.contains(
            "restored checkpoint 4 at step 8 from L2 partner copy (old rank 2, rank 3 from partner copies) (written by 4 ranks, redistributed on 3)"
        ),
        "{stderr}"
    );
    assert_eq!(durable_checkpoints(&dir.path().join("repo")), 0);
}

/// Old rank 2's part exists nowhere (sim1 lost and its partner copy deleted): the fast
/// levels cannot rebuild checkpoint 4, so the restore on 3 ranks falls back to the older
/// durable checkpoint (number 3, step 6), redistributed from L4.
#[test]
fn an_old_part_missing_everywhere_falls_back_to_the_durable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let levels = ["--l1-every", "1", "--l2-every", "1", "--l4-every", "3"];
    killed_on_four(dir.path(), &levels, 9, "part2");
    let out = run(dir.path(), 3, &levels, &[], &format!("{STEPS},0,none"));
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), reference(), "{stderr}");
    assert!(
        stderr.contains(
            "restored checkpoint 1 at step 6 from L4 durable repository (written by 4 ranks, redistributed on 3)"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("from L1") && !stderr.contains("from L2"),
        "{stderr}"
    );
}

/// The same without L4: nothing can rebuild every old part of a checkpoint known to have
/// completed on every rank, so the restart is refused naming it (never a partial
/// checkpoint, never a fresh start that throws it away); allowed a fresh start
/// (`LAZARUS_ON_ALL_DAMAGED=start-fresh`), the job says so and starts from the initial
/// state (the failure-free result).
#[test]
fn an_old_part_missing_everywhere_without_the_repository_is_refused_unless_a_fresh_start_is_allowed(
) {
    let dir = tempfile::tempdir().unwrap();
    killed_on_four(dir.path(), &FAST_ONLY, 9, "part2");
    let out = run(dir.path(), 3, &FAST_ONLY, &[], &format!("{STEPS},0,none"));
    assert_refused_as_lost(&out);
    let out = run_env(
        dir.path(),
        3,
        &FAST_ONLY,
        &[],
        &format!("{STEPS},0,none"),
        &[("LAZARUS_ON_ALL_DAMAGED", "start-fresh")],
    );
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), reference(), "{stderr}");
    assert!(
        stderr.contains("WARNING: every committed checkpoint")
            && stderr.contains("lost: fast-level checkpoint"),
        "{stderr}"
    );
    assert!(!stderr.contains("restored checkpoint"), "{stderr}");
}

/// Per-rank state (not a DVec, not replicated) held only in the fast levels is refused on
/// another number of ranks with the error an N→M restore from L4 gives.
#[test]
fn per_rank_state_in_fast_levels_is_refused_on_another_number_of_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let first = run(dir.path(), 4, &FAST_ONLY, &[], "4,0,perrank");
    let (stdout, stderr) = text(&first);
    assert!(first.status.success(), "{stdout}{stderr}");
    let out = run(dir.path(), 3, &FAST_ONLY, &[], "8,0,perrank");
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("was written by 4 ranks and cannot be restored on 3 by redistribution")
            && stderr.contains("field `data` is per-rank state"),
        "{stderr}"
    );
    assert_eq!(durable_checkpoints(&dir.path().join("repo")), 0);
}

/// Old rank 0's newest L1 copy damaged (every chunk only it uses flipped) before the
/// restart on 3 ranks: its holder finds the damage reading it, every rank falls back
/// together to the older fast checkpoint (number 3), redistributed, and the report names
/// the skipped one. Never wrong data.
#[test]
fn a_damaged_old_copy_falls_back_to_the_older_fast_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    killed_on_four(dir.path(), &FAST_ONLY, 9, "kill");
    let own = dir.path().join("l1/sim0/rank-0");
    assert!(common::damage_newest_only_chunks(&own) > 0);
    let out = run(dir.path(), 3, &FAST_ONLY, &[], &format!("{STEPS},0,none"));
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), reference(), "{stderr}");
    assert!(
        stderr.contains(
            "restored checkpoint 3 at step 6 from L1 node-local (written by 4 ranks, redistributed on 3); skipped damaged checkpoint 4"
        ),
        "{stderr}"
    );
    assert_eq!(durable_checkpoints(&dir.path().join("repo")), 0);
}

/// L1 and L3 parity on every checkpoint, no L2, no L4 ever written.
const PARITY_ONLY: [&str; 6] = ["--l1-every", "1", "--l3-every", "1", "--l4-every", "0"];

/// L1 + L3 only (groups {0, 2} and {1, 3}, shard 0 of each on sim0, shard 1 on sim1):
/// host sim1 lost (ranks 2 and 3 SIGKILLed, its directory deleted) after step 9, then
/// the job started on `m` ranks. Old ranks 2 and 3 have no copy anywhere; each is rebuilt
/// from old rank 0's or 1's L1 copy and its group's shard on sim0, sent by new rank 0
/// to the new rank `old mod m` that rebuilds it, which then serves its pieces. The
/// failure-free checksum, the report names L3 parity and the lost host, nothing in L4.
fn lost_host_parity_only_to(m: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    killed_on_four(dir.path(), &PARITY_ONLY, 9, "host1");
    let l1 = dir.path().join("l1");
    assert!(!l1.join("sim1").exists());
    let out = run(dir.path(), m, &PARITY_ONLY, &[], &format!("{STEPS},0,none"));
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), reference(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "restored checkpoint 4 at step 8 from L3 parity (host sim1 lost) (written by 4 ranks, redistributed on {m})"
        )),
        "{stderr}"
    );
    assert_eq!(durable_checkpoints(&dir.path().join("repo")), 0);
    // No partner copy was ever written.
    for host in std::fs::read_dir(&l1).unwrap() {
        for e in std::fs::read_dir(host.unwrap().path()).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            assert!(!name.starts_with("partner-of-"), "{name}");
        }
    }
    dir
}

#[test]
fn lost_host_with_parity_only_restores_on_three_ranks() {
    let dir = lost_host_parity_only_to(3);
    // New rank 2 rebuilt old rank 2 into its own L1 repository on sim1 and kept writing
    // it; old rank 3's part, rebuilt by new rank 0 into sim0/rank-3, was removed by the
    // 3-rank world's first checkpoint on L1 and L3. Every L1 repository left verifies.
    let l1 = dir.path().join("l1");
    assert!(!l1.join("sim0/rank-3").exists());
    for d in ["sim0/rank-0", "sim0/rank-1", "sim1/rank-2"] {
        assert!(l1.join(d).is_dir(), "{d}");
    }
    let out = std::process::Command::new(common::lazarus_bin())
        .args(["verify", "--level", "l1", "--l1-dir"])
        .arg(&l1)
        .arg(dir.path().join("repo"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.matches("ok: ").count(), 3, "{stdout}");
}

#[test]
fn lost_host_with_parity_only_restores_on_two_and_on_six_ranks() {
    lost_host_parity_only_to(2);
    lost_host_parity_only_to(6);
}

/// L1 + L3 only, sim1 lost and old rank 0's L1 copy deleted as well: group {0, 2} keeps
/// one input (shard 0) of the two it needs, so parity cannot rebuild old ranks 0 and 2.
/// With an older durable checkpoint the restore on 3 ranks falls back to it,
/// redistributed; never a partial or wrong state.
#[test]
fn losing_more_than_parity_covers_falls_back_to_the_durable_checkpoint_on_three_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let levels = ["--l1-every", "1", "--l3-every", "1", "--l4-every", "3"];
    killed_on_four(dir.path(), &levels, 9, "own0");
    let out = run(dir.path(), 3, &levels, &[], &format!("{STEPS},0,none"));
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), reference(), "{stderr}");
    assert!(
        stderr.contains(
            "restored checkpoint 1 at step 6 from L4 durable repository (written by 4 ranks, redistributed on 3)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("from L3"), "{stderr}");
}

/// L1 + L3 only, sim1 lost, and the newest parity shard of group {0, 2} on sim0 damaged:
/// the rebuild of old rank 2 finds it (on the rank that rebuilds it), every rank falls
/// back together to checkpoint 3, which parity still rebuilds, and the report names the
/// skipped checkpoint.
#[test]
fn a_damaged_parity_shard_falls_back_to_the_older_checkpoint_rebuilt_from_parity() {
    let dir = tempfile::tempdir().unwrap();
    killed_on_four(dir.path(), &PARITY_ONLY, 9, "host1");
    assert!(common::damage_newest_only_chunks(&dir.path().join("l1/sim0/parity-0-0")) > 0);
    let out = run(dir.path(), 3, &PARITY_ONLY, &[], &format!("{STEPS},0,none"));
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), reference(), "{stderr}");
    assert!(
        stderr.contains(
            "restored checkpoint 3 at step 6 from L3 parity (host sim1 lost) (written by 4 ranks, redistributed on 3); skipped damaged checkpoint 4"
        ),
        "{stderr}"
    );
    assert_eq!(durable_checkpoints(&dir.path().join("repo")), 0);
}

/// L1 + L3 only, sim1 lost, and new rank 2's own L1 directory on sim1 cannot be opened
/// (a file squats its name): new rank 2 rebuilds old rank 2 from parity into it and
/// fails. Found in review: that failure returned before the allgather the other ranks
/// were waiting in, and the restore hung. Now every rank learns it as damage of the
/// checkpoint; with no other checkpoint that can be rebuilt and no L4 the restart is
/// refused with an error naming the directory: never a hang, never a wrong state.
#[test]
fn a_failed_rebuild_in_an_nm_parity_restore_fails_every_rank_without_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    killed_on_four(dir.path(), &PARITY_ONLY, 9, "host1");
    let sim1 = dir.path().join("l1/sim1");
    std::fs::create_dir_all(&sim1).unwrap();
    std::fs::write(sim1.join("rank-2"), b"not a repository").unwrap();
    let out = run(
        dir.path(),
        3,
        &PARITY_ONLY,
        &["--max-restarts", "0"],
        &format!("{STEPS},0,none"),
    );
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success() && !stdout.contains("checksum="),
        "{stdout}{stderr}"
    );
    assert!(stderr.contains("sim1/rank-2"), "{stderr}");
}
