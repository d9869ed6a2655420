//! Leaf loops (no call inside) count their iterations in a local and keep the hook call
//! outside the loop (docs/VM.md, "Instrumentation"). This WAT program has them in every
//! shape the rewrite must keep correct — a loop with a result value, left by `return`, by
//! `br_table` and by a value-carrying `br_if` to an outer block, reached only through
//! `call_indirect` — and must give the uninstrumented module's result when run
//! instrumented, and when stopped after every checkpoint and resumed, alternating runtimes.
//! Its loops are small enough to be strip-mined (instrumenter v3: several copies of the
//! body per count), so these runs also cover the fast path, its exits and the one-by-one
//! count that runs up to each tick.

mod common;

use common::{have_wasm_opt, runtimes};
use lazarus_vm::{instrument, run, time_module, Every, RuntimeKind, VmConfig};

fn program(n: u64, rounds: u64) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (type $k (func (param i64) (result i64)))
  (memory (export "memory") 1)
  (table 2 funcref)
  (elem (i32.const 0) $scan $mix)
  ;; A loop with a result, left by `return` from its middle or by falling through.
  (func $scan (type $k) (param $s i64) (result i64) (local $i i64)
    (loop $l (result i64)
      (local.set $s (i64.add (i64.mul (local.get $s) (i64.const 6364136223846793005))
                             (i64.xor (local.get $i) (i64.shr_u (local.get $s) (i64.const 29)))))
      (if (i64.eq (i64.and (local.get $s) (i64.const 0xfffff)) (i64.const 0x12345))
        (then (return (i64.xor (local.get $s) (local.get $i)))))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $l (i64.lt_u (local.get $i) (i64.const {n})))
      (local.get $s)))
  ;; A loop left by br_table and by a br_if carrying a value to the enclosing block.
  (func $mix (type $k) (param $s i64) (result i64) (local $i i64) (local $acc i64)
    (block $out (result i64)
      (loop $l
        (local.set $s (i64.xor (local.get $s) (i64.shl (local.get $s) (i64.const 13))))
        (local.set $s (i64.xor (local.get $s) (i64.shr_u (local.get $s) (i64.const 7))))
        (local.set $s (i64.xor (local.get $s) (i64.shl (local.get $s) (i64.const 17))))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (block $b2 (block $b1 (block $b0
          (br_table $b0 $b1 $b2 $l (i32.wrap_i64 (i64.and (local.get $s) (i64.const 3)))))
          (local.set $acc (i64.add (local.get $acc) (local.get $s)))
          (br $l))
          (local.set $acc (i64.xor (local.get $acc) (local.get $i))))
        (drop (br_if $out (i64.xor (local.get $acc) (local.get $s))
                          (i64.ge_u (local.get $i) (i64.const {n}))))
        (br $l))
      (unreachable)))
  (func (export "_start") (local $r i64) (local $acc i64)
    (local.set $acc (i64.const 7))
    (loop $round
      (local.set $acc (call_indirect (type $k) (local.get $acc)
                        (i32.wrap_i64 (i64.and (local.get $r) (i64.const 1)))))
      (local.set $r (i64.add (local.get $r) (i64.const 1)))
      (br_if $round (i64.lt_u (local.get $r) (i64.const {rounds}))))
    (call $exit (i32.wrap_i64 (i64.rem_u (local.get $acc) (i64.const 125))))))"#
    ))
    .unwrap()
}

#[test]
fn leaf_loops_give_the_uninstrumented_result_across_checkpoints() {
    if !have_wasm_opt() {
        return;
    }
    let module = program(300_000, 6);
    // The reference is the module as written, not instrumented.
    let (want, _) = time_module(RuntimeKind::Wasmi, &module, &[]).unwrap();
    let inst = instrument::instrument(&module).unwrap();
    for rt in runtimes() {
        let (code, _) = time_module(rt, &inst, &[]).unwrap();
        assert_eq!(code, want, "instrumented, uninterrupted, on {rt:?}");
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("leaf.wasm");
    std::fs::write(&p, &module).unwrap();
    let mut c = VmConfig::new(&p, vec![]);
    c.repo = Some(d.path().join("repo"));
    c.cache_dir = None;
    c.seed = Some(1);
    // Not a divisor of any trip count: checkpoints land all over the loops.
    c.every = Every::Steps(77_777);
    c.stop_after_checkpoints = Some(1);
    let rts = runtimes();
    let mut legs = 0;
    let end = loop {
        c.runtime = rts[legs % rts.len()];
        let r = run(&c).unwrap();
        if !r.stopped {
            break r;
        }
        legs += 1;
        assert!(legs < 200, "never finished");
    };
    assert_eq!(end.exit_code, want, "after {legs} legs");
    // ~1.8 M iterations in 6 calls: most checkpoints were taken inside the leaf loops.
    assert!(
        legs >= 15,
        "expected checkpoints inside the loops, got {legs} legs"
    );
}
