//! Helpers shared by the root package's process-level tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// `target/<profile>`, the directory of this test binary's parent.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// Builds `what` (a no-op when up to date, so a stale binary is never run) once per test
/// process and returns `path`.
fn built(key: &str, what: &[&str], path: PathBuf) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    // Held across the build: concurrent tests wait for the same binary anyway.
    let mut done = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = done.get(key) {
        return p.clone();
    }
    let mut c = Command::new(env!("CARGO"));
    c.arg("build").args(what).args([
        "--manifest-path",
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
    ]);
    if profile_dir().file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    let status = c.status().expect("running cargo build");
    assert!(status.success(), "cargo build {what:?} failed");
    assert!(path.exists(), "{} missing after the build", path.display());
    done.insert(key.to_string(), path.clone());
    path
}

/// The `lazarus` CLI binary of this profile.
#[allow(dead_code)] // not every test file launches the CLI
pub fn lazarus_bin() -> PathBuf {
    let p = profile_dir().join(format!("lazarus{}", std::env::consts::EXE_SUFFIX));
    built("bin:lazarus", &["-p", "lazarus-cli", "--bin", "lazarus"], p)
}

/// The binary of `examples/<name>.rs` of this profile.
#[allow(dead_code)] // not every test file runs an example
pub fn example_bin(name: &str) -> PathBuf {
    let p = profile_dir()
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    built(
        &format!("example:{name}"),
        &["-p", "lazarus", "--example", name],
        p,
    )
}

/// Runs `cmd` (stdout and stderr piped) to completion; kills it and panics with its output
/// when it takes longer than `deadline` (a hung child must fail the test, not hang CI).
#[allow(dead_code)] // not every test file runs commands
pub fn output_within(
    cmd: &mut Command,
    deadline: std::time::Duration,
    what: &str,
) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    let t0 = std::time::Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if t0.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} exceeded {deadline:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `lazarus run -n <n> --repo <repo> <extra> -- <prog>` with short failure detection, the
/// test knobs of the caller's environment removed and `env` added, within 120 s.
#[allow(dead_code)]
pub fn lazarus_run(
    n: u32,
    repo: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    prog: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new(lazarus_bin());
    cmd.arg("run")
        .args(["-n", &n.to_string(), "--repo"])
        .arg(repo)
        .args(["--failure-timeout-ms", "3000", "--heartbeat-ms", "100"])
        .args(extra)
        .arg("--")
        .args(prog);
    for knob in [
        "LAZARUS_FAILPOINT",
        "LAZARUS_SLOWDOWN",
        "LAZARUS_ON_ALL_DAMAGED",
    ] {
        cmd.env_remove(knob);
    }
    cmd.envs(env.iter().copied());
    let deadline = std::time::Duration::from_secs(120);
    output_within(&mut cmd, deadline, &format!("lazarus run -n {n} {prog:?}"))
}

/// `lazarus run` of this test binary's own ignored test `worker` as the rank program
/// (the worker pattern: a test fn that does nothing unless the launcher set its
/// environment variable, given in `env`).
#[allow(dead_code)]
pub fn lazarus_run_worker(
    worker: &str,
    n: u32,
    repo: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let me = std::env::current_exe().expect("test binary path");
    let me = me.to_str().expect("utf-8 path");
    let prog = [me, worker, "--exact", "--ignored", "--nocapture", "-q"];
    lazarus_run(n, repo, extra, env, &prog)
}

/// A finished process's stdout and stderr as text.
#[allow(dead_code)]
pub fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `lazarus run` stopped with the restore refusal (exit 65) because a fast-level
/// checkpoint known complete on every rank is lost (docs/LEVELS.md, "Lost progress").
#[allow(dead_code)]
pub fn assert_refused_as_lost(out: &std::process::Output) {
    let (_, stderr) = text(out);
    assert_eq!(
        out.status.code(),
        Some(lazarus::supervisor::EXIT_RESTORE_REFUSED),
        "{stderr}"
    );
    assert!(
        stderr.contains("refusing to start from scratch")
            && stderr.contains("lost: fast-level checkpoint")
            && stderr.contains("completed on every rank"),
        "{stderr}"
    );
    assert!(!stderr.contains("restored checkpoint"), "{stderr}");
}

/// The one `checksum=` value a successful run printed (panics with the output otherwise).
#[allow(dead_code)]
pub fn checksum(out: &std::process::Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(
        out.status.success(),
        "{:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    one_checksum(&stdout, &stderr)
}

/// The binary `bin` of workspace package `package`, this profile.
#[allow(dead_code)] // not every test file needs one
pub fn package_bin(package: &str, bin: &str) -> PathBuf {
    let p = profile_dir().join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    built(
        &format!("bin:{package}:{bin}"),
        &["-p", package, "--bin", bin],
        p,
    )
}

/// The value of the one `checksum=` line in `stdout` (a job prints its result once, on
/// rank 0, whatever its restarts); panics with both streams otherwise.
#[allow(dead_code)] // not every test file checks a checksum
pub fn one_checksum(stdout: &str, stderr: &str) -> String {
    let sums: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split("checksum=").nth(1))
        .collect();
    assert_eq!(
        sums.len(),
        1,
        "exactly one checksum line:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    sums[0].trim().to_string()
}

/// Every path under `root` with its content (`None` for a directory); empty when `root`
/// does not exist. For comparing managed-file trees byte for byte.
#[allow(dead_code)] // not every test file compares trees
pub fn disk_tree(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((e.path(), key.clone()));
                out.insert(key, None);
            } else {
                out.insert(key, Some(std::fs::read(e.path()).unwrap_or_default()));
            }
        }
    }
    out
}

/// Peak resident memory of this process so far, in bytes (`lazarus_testbed::peak_rss`).
#[allow(dead_code)]
pub fn peak_rss() -> u64 {
    lazarus_testbed::peak_rss().expect("VmHWM in /proc/self/status")
}

/// Damages the newest committed checkpoint of the repository directory `repo` only:
/// flips the last byte of every chunk file that no older checkpoint uses. Returns how
/// many chunks it damaged.
#[allow(dead_code)]
pub fn damage_newest_only_chunks(repo: &Path) -> usize {
    let reader = lazarus::store::RepoReader::open(repo).unwrap();
    let committed = reader.committed().unwrap();
    let newest = committed.last().expect("a committed checkpoint").id;
    let older: std::collections::BTreeSet<_> = committed
        .iter()
        .filter(|c| c.id != newest)
        .flat_map(|c| reader.manifests(c.id).unwrap())
        .flat_map(|m| m.objects.into_iter().flat_map(|o| o.chunks))
        .map(|c| c.digest)
        .collect();
    let mut flipped = 0;
    for m in reader.manifests(newest).unwrap() {
        for c in m.objects.iter().flat_map(|o| &o.chunks) {
            if older.contains(&c.digest) {
                continue;
            }
            let hex = c.digest.to_hex();
            let p = repo.join("chunks").join(&hex[..2]).join(&hex);
            let mut b = std::fs::read(&p).unwrap();
            let last = b.len() - 1;
            b[last] ^= 0xff;
            std::fs::write(&p, b).unwrap();
            flipped += 1;
        }
    }
    flipped
}
