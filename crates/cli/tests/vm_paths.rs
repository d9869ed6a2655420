//! The code shapes the instrumentation treats specially (docs/VM.md, "Instrumentation"):
//! leaf loops that count in a local (left by `return`, `break` and a `switch`), reached
//! only through `call_indirect`, and deep recursion through a function pointer whose every
//! frame runs a leaf loop. Each program runs in many legs, each stopping right after one
//! checkpoint (deterministic step positions) on alternating runtimes, its stdout going to
//! one file that every resume truncates back to its checkpoint: the whole output must equal
//! an uninterrupted run byte for byte.

mod vm_common;

use vm_common::*;

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
