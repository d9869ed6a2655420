//! Distributed heat under `lazarus run` (real processes, real TCP on loopback, real fsync):
//! the checksum does not depend on the number of ranks, and a rank killed between "every
//! part durable" and COMMIT never leaves a half-used checkpoint behind.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const LAZARUS: &str = env!("CARGO_BIN_EXE_lazarus");
const HEAT: [&str; 6] = ["--steps", "30", "--size", "24", "--every", "10"];

/// Runs `lazarus run -n <n> --repo <repo> [extra] -- lazarus __heat-rank <HEAT>` with a
/// deadline: the child is killed and the test fails if it is not done in time.
fn run(n: u32, repo: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(LAZARUS);
    cmd.arg("run")
        .args(["-n", &n.to_string(), "--repo"])
        .arg(repo)
        .args(extra)
        .args(["--", LAZARUS, "__heat-rank"])
        .args(HEAT)
        .env_remove("LAZARUS_FAILPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn lazarus run");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "lazarus run -n {n} did not finish in 90 s\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn checksums(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("checksum=").nth(1).map(|s| s.trim().to_string()))
        .collect()
}

fn committed(repo: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(repo.join("checkpoints"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().join("COMMIT").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn all_dirs(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("checkpoints")).map_or(0, |d| d.count())
}

#[test]
fn heat_checksum_is_the_same_on_1_2_3_4_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let mut sums = Vec::new();
    for n in 1..=4 {
        let out = run(n, &dir.path().join(format!("r{n}")), &[]);
        assert!(
            out.status.success(),
            "n={n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = checksums(&out);
        assert_eq!(s.len(), 1, "n={n}: exactly rank 0 prints: {s:?}");
        sums.push(s[0].clone());
        // Steps 10 and 20 are committed by all n ranks.
        assert!(committed(&dir.path().join(format!("r{n}"))).len() >= 2);
    }
    assert!(sums.iter().all(|s| *s == sums[0]), "{sums:?}");
}

#[test]
fn kill_between_parts_durable_and_commit_never_half_uses_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let reference = run(3, &dir.path().join("ref"), &[]);
    assert!(reference.status.success());
    let want = checksums(&reference);

    // Rank 0 SIGKILLs itself after every rank reported its part durable, before COMMIT.
    let repo = dir.path().join("crash");
    let out = run(
        3,
        &repo,
        &[
            "--max-restarts",
            "0",
            "--env",
            "LAZARUS_FAILPOINT=before_commit",
        ],
    );
    assert!(!out.status.success(), "the failpoint must kill the job");
    assert!(checksums(&out).is_empty());
    assert!(
        committed(&repo).is_empty(),
        "no checkpoint may be committed: {:?}",
        committed(&repo)
    );
    assert!(all_dirs(&repo) >= 1, "the round's parts were written");

    // The rerun never uses the uncommitted round, finishes with the right answer, and
    // collects the leftovers (retention after its first commit).
    let out = run(3, &repo, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(checksums(&out), want);
    assert_eq!(
        all_dirs(&repo),
        committed(&repo).len(),
        "leftovers collected"
    );
}
