//! Heterogeneous restart: a checkpoint taken under one runtime resumes under the other
//! with identical output — wasmi -> wasmtime -> wasmi and wasmtime -> wasmi -> wasmtime,
//! each leg stopping right after a checkpoint (`--stop-after-checkpoints`, deterministic
//! step-based positions). Plus the supervised path: `lazarus run -n 1 --repo` restarts a
//! SIGKILLed `lazarus vm run` and releases every stdout line exactly once.

mod vm_common;

use std::path::Path;
use std::process::Output;
use vm_common::*;

fn vm(args: &[&str], work: &Path, repo: Option<&Path>, rt: &str, extra: &[&str]) -> Output {
    let mut c = lazarus();
    c.args(["vm", "run", "--seed", "7", "--runtime", rt])
        .args(extra);
    c.arg("--dir").arg(format!("{}::.", work.display()));
    match repo {
        Some(r) => c.arg("--repo").arg(r),
        None => c.arg("--no-checkpoint"),
    };
    c.args(args);
    c.output().expect("running lazarus")
}

fn legs(prog: &str, args: &[&str], every: &str, order: &[&str]) {
    let wasm = program(prog);
    let root = tempfile::tempdir().unwrap();
    let refw = root.path().join("ref");
    std::fs::create_dir_all(&refw).unwrap();
    let mut full: Vec<&str> = vec![wasm.to_str().unwrap(), "--"];
    full.extend(args);
    let want = vm(&full, &refw, None, "wasmi", &[]);
    assert!(
        want.status.success(),
        "{prog}: reference failed: {}",
        String::from_utf8_lossy(&want.stderr)
    );
    let w = root.path().join("w");
    std::fs::create_dir_all(&w).unwrap();
    let repo = root.path().join("repo");
    let mut stdout = Vec::new();
    for (i, rt) in order.iter().enumerate() {
        let last = i + 1 == order.len();
        let extra: Vec<&str> = if last {
            vec!["--every", every]
        } else {
            vec!["--every", every, "--stop-after-checkpoints", "2"]
        };
        let o = vm(&full, &w, Some(&repo), rt, &extra);
        let code = o.status.code();
        assert_eq!(
            code,
            Some(if last { 0 } else { 3 }),
            "{prog}: leg {i} on {rt}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        // stdout is a pipe here: what a stopped leg printed after its last checkpoint is
        // printed again by the next one, so only the last leg's final line is compared
        // (it depends on the whole computation); `stdout_file_is_exact_across_runtimes`
        // checks the bytes.
        stdout = o.stdout;
    }
    // The last leg printed everything after the checkpoint it resumed from; the program's
    // final lines (which depend on the whole computation) must match.
    let tail = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .last()
            .map(str::to_string)
    };
    assert_eq!(
        tail(&stdout),
        tail(&want.stdout),
        "{prog}: {order:?}: final line differs"
    );
    let files = |d: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(files(&w), files(&refw), "{prog}: {order:?}: files differ");
}

#[test]
fn checkpoints_move_between_runtimes_with_identical_results() {
    if !toolchain("checkpoints_move_between_runtimes_with_identical_results") {
        return;
    }
    let rts = runtimes();
    if rts.len() < 2 {
        assert!(
            !lazarus_testbed::in_ci(),
            "under CI but this lazarus has no wasmtime (feature `wasmtime` off): {rts:?}"
        );
        eprintln!("*** SKIPPED: this lazarus has no wasmtime (feature `wasmtime` off) ***");
        return;
    }
    for order in [
        ["wasmi", "wasmtime", "wasmi"],
        ["wasmtime", "wasmi", "wasmtime"],
    ] {
        legs("loop", &["3000000"], "500000", &order);
        legs("floats", &["8000"], "30000", &order);
        legs("recurse", &["2000", "6"], "150000", &order);
        legs("files", &["200"], "40000", &order);
    }
}

/// stdout to a file: every leg's output lands in one file, truncated back to the
/// checkpoint on each resume, so the whole output must equal the reference byte for byte.
#[test]
fn stdout_file_is_exact_across_runtimes() {
    if !toolchain("stdout_file_is_exact_across_runtimes") {
        return;
    }
    let legs = legs_to_file("floats", &["10000"], "40000");
    assert!(legs >= 2, "expected several legs, got {legs}");
}

#[test]
fn supervised_vm_run_survives_sigkill_with_exactly_once_stdout() {
    if !toolchain("supervised_vm_run_survives_sigkill_with_exactly_once_stdout") {
        return;
    }
    let wasm = program("loop");
    let root = tempfile::tempdir().unwrap();
    let want = lazarus()
        .args(["vm", "run", "--no-checkpoint", "--seed", "3"])
        .arg(&wasm)
        .args(["--", "20000000"])
        .output()
        .unwrap();
    assert!(want.status.success());
    let repo = root.path().join("repo");
    let o = lazarus()
        .args(["run", "-n", "1", "--repo"])
        .arg(&repo)
        .args([
            "--max-restarts",
            "5",
            "--inject-kill-after",
            "0@1500ms",
            "--inject-kill-after",
            "0@800ms",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_lazarus"))
        .args(["vm", "run", "--every", "100ms", "--seed", "3"])
        .arg(&wasm)
        .args(["--", "20000000"])
        .env(
            "LAZARUS_VM_CACHE",
            std::env::temp_dir().join("lazarus-vm-test-cache"),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "supervised run failed: {stderr}");
    let got: String = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("[rank 0] ").unwrap_or(l)))
        .collect();
    assert_eq!(
        got,
        String::from_utf8_lossy(&want.stdout),
        "stderr: {stderr}"
    );
}
