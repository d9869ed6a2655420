//! `lazarus run --repo` refuses at once, with its own exit status and a message naming the
//! checkpoint or repository, what no restart can fix (issue #11 items 4, 8 and 9): a
//! checkpoint that cannot be restored on this number of ranks, a repository whose every
//! checkpoint is damaged, and ranks that opened another repository than `--repo`. Real
//! processes, real TCP on loopback, real fsync.

mod common;

use common::{checksum, lazarus_run, text};

use lazarus::supervisor::{EXIT_REPO_MISMATCH, EXIT_RESTORE_REFUSED};

/// The two statuses are part of the command line's contract (docs/RECOVERY.md, sysexits.h's
/// `EX_DATAERR` and `EX_CONFIG`): batch scripts test for these numbers.
#[test]
fn refusal_exit_statuses_are_the_documented_numbers() {
    assert_eq!((EXIT_RESTORE_REFUSED, EXIT_REPO_MISMATCH), (65, 78));
}

fn heat_dvec(extra: &[&str]) -> Vec<String> {
    let bin = common::example_bin("heat_dvec");
    let mut v = vec![bin.to_str().expect("utf-8 path").to_string()];
    v.extend(
        ["--steps", "25", "--size", "24", "--every", "10"]
            .iter()
            .map(|s| s.to_string()),
    );
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Issue #11 item 8: the supervisor restarted K times a job whose checkpoint cannot be
/// restored on this number of ranks (per-rank state), each restart failing the same way.
#[test]
fn supervisor_restarts_k_times_a_job_that_cannot_be_restored_on_this_rank_count() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let lz = common::lazarus_bin();
    let heat = [
        lz.to_str().expect("utf-8 path"),
        "__heat-rank",
        "--steps",
        "25",
        "--size",
        "24",
        "--every",
        "10",
    ];
    checksum(&lazarus_run(2, &repo, &[], &[], &heat));
    let out = lazarus_run(3, &repo, &["--max-restarts", "3"], &[], &heat);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(EXIT_RESTORE_REFUSED), "{stderr}");
    assert!(
        !stderr.contains("lazarus: restarting"),
        "a restore no restart can fix must not be retried:\n{stderr}"
    );
    assert!(
        stderr.contains("not restarting")
            && stderr.contains("was written by 2 ranks and cannot be restored on 3")
            && stderr.contains("field `grid` is per-rank state"),
        "{stderr}"
    );
}

/// Issue #11 item 4 under the supervisor: every checkpoint damaged is refused once (no
/// restart loop) with the damage named; `LAZARUS_ON_ALL_DAMAGED=start-fresh` starts over,
/// loudly, and finishes with the right result.
#[test]
fn all_damaged_under_lazarus_run_is_refused_once_unless_a_fresh_start_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let prog = heat_dvec(&[]);
    let want = checksum(&lazarus_run(2, &repo, &[], &[], &strs(&prog)));
    let mut damaged = Vec::new();
    for e in std::fs::read_dir(repo.join("checkpoints")).unwrap() {
        let commit = e.unwrap().path().join("COMMIT");
        if commit.exists() {
            let mut b = std::fs::read(&commit).unwrap();
            let last = b.len() - 2;
            b[last] ^= 0x20;
            std::fs::write(&commit, b).unwrap();
            damaged.push(commit);
        }
    }
    assert!(!damaged.is_empty());
    let out = lazarus_run(2, &repo, &["--max-restarts", "3"], &[], &strs(&prog));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(EXIT_RESTORE_REFUSED), "{stderr}");
    assert!(!stderr.contains("lazarus: restarting"), "{stderr}");
    assert!(
        stderr.contains("every committed checkpoint")
            && stderr.contains("LAZARUS_ON_ALL_DAMAGED=start-fresh"),
        "{stderr}"
    );
    let out = lazarus_run(
        2,
        &repo,
        &["--env", "LAZARUS_ON_ALL_DAMAGED=start-fresh"],
        &[],
        &strs(&prog),
    );
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), want, "{stderr}");
    assert!(stderr.contains("starting from scratch"), "{stderr}");
}

/// Issue #11 item 9: `lazarus run --repo A -- prog --repo B` was accepted silently (the
/// supervisor reported restarts from scratch while the ranks restored B). The ranks report
/// the repository they opened; a different one stops the job, naming both. The same
/// directory spelled differently (a symlink, a trailing `/.`) is not a mismatch.
#[test]
fn run_repo_a_prog_repo_b_accepted_silently() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let prog = heat_dvec(&["--repo", b.to_str().expect("utf-8 path")]);
    let out = lazarus_run(1, &a, &[], &[], &strs(&prog));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(EXIT_REPO_MISMATCH), "{stderr}");
    let canon_a = std::fs::canonicalize(&a).unwrap();
    assert!(
        stderr.contains(&canon_a.display().to_string()) && stderr.contains("/b"),
        "the message names both repositories:\n{stderr}"
    );
    assert!(!stderr.contains("lazarus: restarting"), "{stderr}");

    // The unaligned runtime (AsyncSession) reports its repository too.
    let pp = common::example_bin("pingpong_async");
    let c = dir.path().join("c");
    let prog = [
        pp.to_str().expect("utf-8 path"),
        "--repo",
        c.to_str().expect("utf-8 path"),
        "--tokens",
        "2",
        "--hops",
        "50",
    ];
    let out = lazarus_run(2, &a, &[], &[], &prog);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(EXIT_REPO_MISMATCH), "{stderr}");
    assert!(stderr.contains("/c,") || stderr.contains("/c "), "{stderr}");

    let link = dir.path().join("link-to-a");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    let same = format!("{}/.", link.display());
    let prog = heat_dvec(&["--repo", &same]);
    checksum(&lazarus_run(1, &a, &[], &[], &strs(&prog)));
}
