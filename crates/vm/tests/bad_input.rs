//! Bad input gets a clear error, never a wrong continuation: modules this VM cannot
//! capture (non-WASI imports, threads, SIMD, table mutation, several memories, no
//! `_start`), a checkpoint of another program, another command line, a damaged checkpoint.
//! The runtime tests use a WAT program (no C toolchain) but need Binaryen's `wasm-opt`.

mod common;

use common::{have_wasm_opt, runtimes};
use lazarus_vm::{instrument, run, Every, VmConfig, VmErrorKind};
use std::path::Path;

fn wat(src: &str) -> Vec<u8> {
    wat::parse_str(src).expect("test WAT")
}

fn refused(src: &str, kind: VmErrorKind, needle: &str) {
    let e = instrument::check(&wat(src)).expect_err("must be refused");
    assert_eq!(e.kind(), kind, "{e}");
    assert!(
        e.to_string().contains(needle),
        "{e:?} should mention {needle:?}"
    );
}

#[test]
fn non_wasi_import_is_refused_naming_it() {
    refused(
        r#"(module (import "env" "now" (func)) (memory 1) (func (export "_start")))"#,
        VmErrorKind::Unsupported,
        "import env.now",
    );
}

#[test]
fn unknown_or_mistyped_wasi_function_is_refused() {
    refused(
        r#"(module (import "wasi_snapshot_preview1" "fd_teleport" (func)) (memory 1) (func (export "_start")))"#,
        VmErrorKind::Unsupported,
        "unknown WASI preview 1 function",
    );
    refused(
        r#"(module (import "wasi_snapshot_preview1" "fd_close" (func (param i64) (result i32))) (memory 1) (func (export "_start")))"#,
        VmErrorKind::Unsupported,
        "does not match WASI preview 1",
    );
}

#[test]
fn threaded_module_is_refused() {
    refused(
        r#"(module (memory 1 1 shared) (func (export "_start")))"#,
        VmErrorKind::Unsupported,
        "threads",
    );
    refused(
        r#"(module (import "wasi" "thread-spawn" (func (param i32) (result i32))) (memory 1) (func (export "_start")))"#,
        VmErrorKind::Unsupported,
        "threads cannot be checkpointed",
    );
}

#[test]
fn simd_and_table_mutation_and_memories_are_refused() {
    refused(
        r#"(module (memory 1) (func (export "_start") (drop (v128.const i64x2 0 0))))"#,
        VmErrorKind::Unsupported,
        "feature",
    );
    refused(
        r#"(module (memory 1) (table 1 funcref) (func (export "_start") (table.set 0 (i32.const 0) (ref.null func))))"#,
        VmErrorKind::Unsupported,
        "table.set",
    );
    refused(
        r#"(module (memory 1) (memory 1) (func (export "_start")))"#,
        VmErrorKind::Unsupported,
        "memor",
    );
    refused(
        r#"(module (import "wasi_snapshot_preview1" "memory" (memory 1)) (func (export "_start")))"#,
        VmErrorKind::Unsupported,
        "only functions may be imported",
    );
}

/// Regression (review): a mutable `funcref`/`externref` global passed the load check and
/// failed only at the first checkpoint ("Unsupported" from the runtime), after all the
/// work up to it. Refused at load now, naming the global.
#[test]
fn mutable_reference_global_is_refused_at_load() {
    refused(
        r#"(module (memory 1) (global (mut i32) (i32.const 0)) (global (mut funcref) (ref.null func)) (func (export "_start")))"#,
        VmErrorKind::Unsupported,
        "global 1: a mutable funcref global",
    );
    refused(
        r#"(module (memory 1) (global (mut externref) (ref.null extern)) (func (export "_start")))"#,
        VmErrorKind::Unsupported,
        "global 0: a mutable externref global",
    );
    // An immutable one is captured by the module digest: accepted.
    let ok =
        wat(r#"(module (memory 1) (global funcref (ref.null func)) (func (export "_start")))"#);
    instrument::check(&ok).unwrap();
}

#[test]
fn reactor_and_garbage_are_refused() {
    refused(
        r#"(module (memory 1) (func (export "_initialize")))"#,
        VmErrorKind::Unsupported,
        "no `_start` export",
    );
    let e = instrument::check(b"\0asm\x01\0\0\0garbage").unwrap_err();
    assert_eq!(e.kind(), VmErrorKind::InvalidModule, "{e}");
    let e = instrument::check(b"#!/bin/sh\n").unwrap_err();
    assert_eq!(e.kind(), VmErrorKind::InvalidModule, "{e}");
}

#[test]
fn already_instrumented_module_is_refused() {
    refused(
        r#"(module (memory 1) (func (export "_start")) (func (export "asyncify_start_unwind") (param i32)))"#,
        VmErrorKind::Unsupported,
        "reserved",
    );
}

/// A compute loop that exits with a checksum of `n` iterations (argument-free: `n` is
/// baked in), recursing every 1000 iterations to exercise function-entry checks.
fn counter(n: u64) -> Vec<u8> {
    wat(&format!(
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory 1)
  (global $acc (mut i64) (i64.const 1))
  (global $f (mut f64) (f64.const 0.5))
  (func $rec (param $d i32) (result i32)
    (if (result i32) (i32.eqz (local.get $d))
      (then (i32.const 1))
      (else (i32.add (i32.const 1) (call $rec (i32.sub (local.get $d) (i32.const 1)))))))
  (func (export "_start") (local $i i64)
    (loop $l
      (global.set $acc (i64.add (i64.mul (global.get $acc) (i64.const 6364136223846793005)) (local.get $i)))
      (global.set $f (f64.add (f64.mul (global.get $f) (f64.const 1.0000001)) (f64.const 0.25)))
      (if (i64.eqz (i64.rem_u (local.get $i) (i64.const 1000)))
        (then (global.set $acc (i64.add (global.get $acc) (i64.extend_i32_u (call $rec (i32.const 50)))))))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $l (i64.lt_u (local.get $i) (i64.const {n}))))
    (call $exit (i32.wrap_i64 (i64.and
      (i64.xor (global.get $acc) (i64.reinterpret_f64 (global.get $f))) (i64.const 127))))))"#
    ))
}

fn config(dir: &Path, module: &[u8], name: &str) -> VmConfig {
    let p = dir.join(name);
    std::fs::write(&p, module).unwrap();
    let mut c = VmConfig::new(p, vec![]);
    c.repo = Some(dir.join("repo"));
    c.every = Every::Steps(20_000);
    c.seed = Some(5);
    c.cache_dir = None;
    c
}

/// Exit status of `module` run without checkpoints.
fn uninterrupted(dir: &Path, module: &[u8]) -> i32 {
    let mut plain = config(dir, module, "plain.wasm");
    plain.repo = None;
    plain.every = Every::Never;
    run(&plain).unwrap().exit_code
}

#[test]
fn stopped_runs_resume_to_the_uninterrupted_result_on_every_runtime() {
    if !have_wasm_opt() {
        return;
    }
    let module = counter(120_000);
    let d = tempfile::tempdir().unwrap();
    let want = uninterrupted(d.path(), &module);
    for (i, first) in runtimes().into_iter().enumerate() {
        for second in runtimes() {
            let d = tempfile::tempdir().unwrap();
            let mut c = config(d.path(), &module, "p.wasm");
            c.runtime = first;
            c.stop_after_checkpoints = Some(2);
            let r = run(&c).unwrap();
            assert!(r.stopped && r.checkpoints.len() == 2, "{i}: {r:?}");
            c.runtime = second;
            c.stop_after_checkpoints = None;
            let r = run(&c).unwrap();
            assert_eq!(r.exit_code, want, "{first:?} -> {second:?}");
            assert!(r.resumed.is_some());
            // Running the same command again does not run anything twice.
            let again = run(&c).unwrap();
            assert!(again.already_finished);
            assert_eq!(again.exit_code, want);
        }
    }
}

#[test]
fn checkpoint_of_another_program_is_refused() {
    if !have_wasm_opt() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut a = config(d.path(), &counter(100_000), "a.wasm");
    a.stop_after_checkpoints = Some(1);
    assert!(run(&a).unwrap().stopped);
    let b = config(d.path(), &counter(100_001), "b.wasm");
    let e = run(&b).unwrap_err();
    assert_eq!(e.kind(), VmErrorKind::Mismatch, "{e}");
    assert!(e.to_string().contains("belongs to program a.wasm"), "{e}");
}

#[test]
fn other_arguments_or_seed_are_refused_on_resume() {
    if !have_wasm_opt() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut a = config(d.path(), &counter(100_000), "a.wasm");
    a.stop_after_checkpoints = Some(1);
    assert!(run(&a).unwrap().stopped);
    let mut b = a.clone();
    b.args = vec!["x".into()];
    let e = run(&b).unwrap_err();
    assert_eq!(e.kind(), VmErrorKind::Mismatch, "{e}");
    assert!(e.to_string().contains("arguments"), "{e}");
    let mut c = a.clone();
    c.seed = Some(6);
    let e = run(&c).unwrap_err();
    assert!(e.to_string().contains("--seed"), "{e}");
    let mut d2 = a.clone();
    d2.env = vec!["A=1".into()];
    assert!(run(&d2).unwrap_err().to_string().contains("environment"));
}

fn checkpoint_dirs(repo: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(repo.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

#[test]
fn damaged_newest_checkpoint_falls_back_and_all_damaged_is_an_error() {
    if !have_wasm_opt() {
        return;
    }
    let module = counter(150_000);
    let d = tempfile::tempdir().unwrap();
    let want = uninterrupted(d.path(), &module);

    let mut c = config(d.path(), &module, "p.wasm");
    c.stop_after_checkpoints = Some(3);
    assert!(run(&c).unwrap().stopped);
    let repo = d.path().join("repo");
    let dirs = checkpoint_dirs(&repo);
    assert_eq!(dirs.len(), 2, "keep 2: {dirs:?}");
    let newest = dirs.last().unwrap().join("COMMIT");
    let mut bytes = std::fs::read(&newest).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&newest, bytes).unwrap();
    c.stop_after_checkpoints = None;
    let r = run(&c).unwrap();
    assert_eq!(r.exit_code, want, "resumed from the older checkpoint");
    assert!(!r.skipped.is_empty(), "the damage is reported: {r:?}");

    // Now every chunk is damaged: no intact checkpoint, no silent fresh start.
    let d = tempfile::tempdir().unwrap();
    let mut c = config(d.path(), &module, "p.wasm");
    c.stop_after_checkpoints = Some(2);
    assert!(run(&c).unwrap().stopped);
    let chunks = d.path().join("repo/chunks");
    for sub in std::fs::read_dir(&chunks).unwrap().flatten() {
        for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
            let mut b = std::fs::read(f.path()).unwrap();
            let k = b.len() - 1;
            b[k] ^= 0xff;
            std::fs::write(f.path(), b).unwrap();
        }
    }
    c.stop_after_checkpoints = None;
    let e = run(&c).unwrap_err();
    assert_eq!(e.kind(), VmErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("none is intact"), "{e}");
}
