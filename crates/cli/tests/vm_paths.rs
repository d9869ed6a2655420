//! The code shapes the instrumentation treats specially (docs/VM.md, "Instrumentation"):
//! leaf loops that count in a local (left by `return`, `break` and a `switch`), reached
//! only through `call_indirect`, and deep recursion through a function pointer whose every
//! frame runs a leaf loop. Each program runs in many legs, each stopping right after one
//! checkpoint (deterministic step positions) on alternating runtimes, its stdout going to
//! one file that every resume truncates back to its checkpoint: the whole output must equal
//! an uninterrupted run byte for byte.

mod vm_common;

use std::path::Path;
use vm_common::*;

/// Runs `prog args` in legs of one checkpoint every `every` steps; returns how many legs
/// stopped at a checkpoint before the last one finished.
fn legs_to_file(prog: &str, args: &[&str], every: &str) -> usize {
    let wasm = program(prog);
    let root = tempfile::tempdir().unwrap();
    let run = |rt: &str, repo: Option<&Path>, out: &Path| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(out)
            .unwrap();
        let mut c = lazarus();
        c.args(["vm", "run", "--seed", "5", "--runtime", rt]);
        match repo {
            Some(r) => {
                c.arg("--repo")
                    .arg(r)
                    .args(["--every", every, "--stop-after-checkpoints", "1"])
            }
            None => c.arg("--no-checkpoint"),
        };
        c.arg(&wasm).arg("--").args(args).stdout(f);
        c.status().unwrap()
    };
    let refo = root.path().join("ref.txt");
    assert!(run("wasmi", None, &refo).success(), "{prog}: reference run");
    let rts = runtimes();
    let out = root.path().join("out.txt");
    let repo = root.path().join("repo");
    let mut k = 0;
    loop {
        let rt = rts[k % rts.len()];
        let st = run(rt, Some(&repo), &out);
        if st.success() {
            break;
        }
        assert_eq!(st.code(), Some(3), "{prog}: leg {k} on {rt}");
        k += 1;
        assert!(k < 500, "{prog}: never finished");
    }
    assert_eq!(read(&out), read(&refo), "{prog}: output after {k} legs");
    k
}

#[test]
fn leaf_loops_behind_call_indirect_checkpoint_and_resume_identically() {
    if !toolchain("leaf_loops_behind_call_indirect_checkpoint_and_resume_identically") {
        return;
    }
    // 4 rounds; the only long loops are the leaf loops of `scan`/`mix` (reached through a
    // function-pointer table) and `down`'s (1500 frames deep through a function pointer).
    // More legs than rounds means checkpoints landed inside those loops and frames.
    let legs = legs_to_file("paths", &["400000", "4"], "90001");
    assert!(
        legs >= 12,
        "expected checkpoints inside the kernels, got {legs}"
    );
}

#[test]
fn deep_recursion_with_leaf_loops_resumes_identically() {
    if !toolchain("deep_recursion_with_leaf_loops_resumes_identically") {
        return;
    }
    // `dive` recurses 2000 deep (a check at every entry) and works in every frame.
    let legs = legs_to_file("recurse", &["2000", "3"], "20011");
    assert!(legs >= 6, "expected several legs, got {legs}");
}
