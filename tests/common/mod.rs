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
