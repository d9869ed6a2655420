//! NaN canonicalisation happens where the bits of a float become observable (docs/VM.md,
//! "Instrumentation"): a store to memory, a reinterpretation as an integer, the sign
//! source of `copysign`. A NaN made by `0/0` or `sqrt(-1)` (negative on x86, positive on
//! ARM, the payload up to the engine) must be seen as the canonical positive quiet NaN
//! through each of them, on every runtime. The exit code is a bitmask of the observations
//! that were not canonical (0: all were).

mod common;

use common::{have_wasm_opt, runtimes};
use lazarus_vm::{instrument, time_module};

const PROGRAM: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory 1)
  (func $bad (param $code i32) (param $bit i32) (param $ok i32) (result i32)
    (select (local.get $code) (i32.or (local.get $code) (local.get $bit)) (local.get $ok)))
  (func (export "_start") (local $z f64) (local $n f64) (local $q f64) (local $f f32)
                          (local $code i32)
    ;; 0.0 from memory, so that no compiler can fold the division.
    (local.set $z (f64.load (i32.const 64)))
    (local.set $n (f64.div (local.get $z) (local.get $z)))
    (local.set $q (f64.sqrt (f64.sub (local.get $z) (f64.const 1))))
    (local.set $f (f32.div (f32.demote_f64 (local.get $z)) (f32.demote_f64 (local.get $z))))
    ;; 1: reinterpret
    (local.set $code (call $bad (local.get $code) (i32.const 1)
      (i64.eq (i64.reinterpret_f64 (local.get $n)) (i64.const 0x7ff8000000000000))))
    ;; 2: store, then load the bits as an integer
    (f64.store (i32.const 0) (local.get $q))
    (local.set $code (call $bad (local.get $code) (i32.const 2)
      (i64.eq (i64.load (i32.const 0)) (i64.const 0x7ff8000000000000))))
    ;; 4: the sign source of copysign
    (local.set $code (call $bad (local.get $code) (i32.const 4)
      (f64.gt (f64.copysign (f64.const 1) (local.get $n)) (f64.const 0))))
    ;; 8: f32 through a store
    (f32.store (i32.const 8) (local.get $f))
    (local.set $code (call $bad (local.get $code) (i32.const 8)
      (i32.eq (i32.load (i32.const 8)) (i32.const 0x7fc00000))))
    ;; 16: arithmetic on a NaN, negated (a sign flip), then reinterpreted
    (local.set $code (call $bad (local.get $code) (i32.const 16)
      (i64.eq (i64.reinterpret_f64 (f64.neg (f64.mul (local.get $n) (f64.const 2))))
              (i64.const 0x7ff8000000000000))))
    (call $exit (local.get $code))))"#;

#[test]
fn nans_are_canonical_wherever_their_bits_are_observed() {
    if !have_wasm_opt() {
        return;
    }
    let module = instrument::instrument(&wat::parse_str(PROGRAM).unwrap()).unwrap();
    for rt in runtimes() {
        let (code, _) = time_module(rt, &module, &[]).unwrap();
        assert_eq!(code, 0, "{rt:?}: non-canonical NaN observations (bitmask)");
    }
}
