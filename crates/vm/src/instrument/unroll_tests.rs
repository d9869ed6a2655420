//! Differential test of the leaf-loop rewrite (`strip_leaf_loop`, with and without
//! strip-mining): on generated loop shapes — branches to the loop and to outer blocks at
//! every nesting depth, `br_if` carrying a value, `br_table` mixing the loop and outer
//! labels, `return` from the middle, loops with a result, value blocks — the rewritten
//! module must compute what the plain one computes, and the unrolled rewrite must tick at
//! exactly the iterations where the one-by-one count ticks (same budgets handed out by the
//! host, same iteration counter seen at every tick, same budget left at the end).

use super::{rewrite_with, Unroll, BUDGET_EXPORT, GLOBAL_EXPORT_PREFIX, TICK_MODULE, TICK_NAME};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt::Write;

#[derive(Clone, Copy, PartialEq)]
enum Arity {
    Void,
    I64,
}

struct Gen {
    rng: ChaCha8Rng,
    labels: Vec<(String, Arity)>,
    next: usize,
}

impl Gen {
    fn cond(&mut self) -> String {
        let m = [1, 3, 7, 15][self.rng.gen_range(0..4)];
        format!("(i64.eqz (i64.and (local.get $s) (i64.const {m})))")
    }

    fn label(&mut self) -> (String, Arity) {
        let i = self.rng.gen_range(0..self.labels.len());
        self.labels[i].clone()
    }

    fn stmts(&mut self, depth: u32, out: &mut String) {
        for _ in 0..self.rng.gen_range(1..=4) {
            self.stmt(depth, out);
        }
    }

    fn stmt(&mut self, depth: u32, out: &mut String) {
        let kinds = if depth < 2 { 9 } else { 6 };
        match self.rng.gen_range(0..kinds) {
            0 => {
                let c = self.rng.gen::<u32>() | 1;
                let _ = write!(
                    out,
                    "(local.set $s (i64.add (i64.mul (local.get $s) (i64.const {c})) \
                     (i64.extend_i32_u (global.get $it))))"
                );
            }
            1 => {
                let sh = self.rng.gen_range(1..40);
                let _ = write!(
                    out,
                    "(local.set $s (i64.xor (local.get $s) (i64.shr_u (local.get $s) \
                     (i64.const {sh}))))"
                );
            }
            2 => {
                let (l, a) = self.label();
                let c = self.cond();
                let _ = match a {
                    Arity::Void => write!(out, "(br_if {l} {c})"),
                    Arity::I64 => write!(out, "(drop (br_if {l} (local.get $s) {c}))"),
                };
            }
            3 => {
                let void: Vec<String> = self
                    .labels
                    .iter()
                    .filter(|(_, a)| *a == Arity::Void)
                    .map(|(l, _)| l.clone())
                    .collect();
                let n = self.rng.gen_range(1..=4);
                let ts: Vec<&str> = (0..n)
                    .map(|_| void[self.rng.gen_range(0..void.len())].as_str())
                    .collect();
                let c = self.cond();
                let _ = write!(
                    out,
                    "(if {c} (then (br_table {} (i32.wrap_i64 (i64.and (i64.shr_u (local.get $s) \
                     (i64.const 5)) (i64.const 3))))))",
                    ts.join(" ")
                );
            }
            4 => {
                let c = self.cond();
                let _ = write!(
                    out,
                    "(if {c} (then (return (i64.xor (local.get $s) (i64.const 99)))))"
                );
            }
            5 => {
                let (l, a) = self.label();
                let c = self.cond();
                let _ = match a {
                    Arity::Void => write!(out, "(if {c} (then (br {l})))"),
                    Arity::I64 => write!(out, "(if {c} (then (br {l} (local.get $s))))"),
                };
            }
            6 => {
                let l = format!("$b{}", self.next);
                self.next += 1;
                let _ = write!(out, "(block {l} ");
                self.labels.push((l, Arity::Void));
                self.stmts(depth + 1, out);
                self.labels.pop();
                out.push(')');
            }
            7 => {
                let l = format!("$v{}", self.next);
                self.next += 1;
                let _ = write!(out, "(local.set $s (block {l} (result i64) ");
                self.labels.push((l, Arity::I64));
                self.stmts(depth + 1, out);
                self.labels.pop();
                out.push_str("(local.get $s)))");
            }
            _ => {
                let c = self.cond();
                let _ = write!(out, "(if {c} (then ");
                self.stmts(depth + 1, out);
                out.push_str(") (else ");
                self.stmts(depth + 1, out);
                out.push_str("))");
            }
        }
    }
}

/// A module exporting `run(n, seed) -> i64`: one leaf loop of a random shape, at most `n`
/// iterations (counted in the mutable global `$it`, the module's first: `__lz_g0`).
fn program(seed: u64) -> String {
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(seed),
        labels: vec![
            ("$o1".into(), Arity::I64),
            ("$o2".into(), Arity::Void),
            ("$l".into(), Arity::Void),
        ],
        next: 0,
    };
    let with_result = g.rng.gen_bool(0.5);
    let mut body = String::from(
        "(global.set $it (i32.add (global.get $it) (i32.const 1))) \
         (br_if $o2 (i32.gt_u (global.get $it) (local.get $n)))",
    );
    g.stmts(0, &mut body);
    if g.rng.gen_bool(0.5) {
        body.push_str("(br_if $l (i32.lt_u (global.get $it) (local.get $n)))");
    }
    let lp = if with_result {
        format!("(br $o1 (i64.add (i64.const 7) (loop $l (result i64) {body} (local.get $s))))")
    } else {
        format!("(loop $l {body}) (br $o1 (i64.const 3))")
    };
    format!(
        r#"(module
  (memory 1)
  (global $it (mut i32) (i32.const 0))
  (func (export "_start"))
  (func (export "run") (param $n i32) (param $seed i64) (result i64) (local $s i64)
    (global.set $it (i32.const 0))
    (local.set $s (local.get $seed))
    (i64.add
      (i64.mul
        (block $o1 (result i64)
          (block $o2 {lp})
          (i64.const 5))
        (i64.const 1000003))
      (i64.xor (local.get $s) (i64.extend_i32_u (global.get $it))))))"#
    )
}

struct Host {
    rng: u64,
    max_budget: u64,
    /// The iteration counter `$it` at every tick.
    ticks: Vec<i32>,
}

/// Runs `run(n, seed)`; for an instrumented module the hook hands out budgets 1..=max from
/// a fixed xorshift sequence. Returns the result, the ticks and the budget left.
fn exec(wasm: &[u8], n: i32, seed: i64, max_budget: u64) -> (i64, Vec<i32>, i32) {
    use wasmi::{Caller, Engine, Extern, Linker, Module, Store, Val};
    let engine = Engine::default();
    let module = Module::new(&engine, wasm).expect("the module validates");
    let mut store = Store::new(
        &engine,
        Host {
            rng: 0x9e37_79b9_7f4a_7c15,
            max_budget,
            ticks: Vec::new(),
        },
    );
    let mut linker = Linker::<Host>::new(&engine);
    linker
        .func_wrap(TICK_MODULE, TICK_NAME, |mut c: Caller<'_, Host>| {
            let it = c
                .get_export(&format!("{GLOBAL_EXPORT_PREFIX}0"))
                .and_then(Extern::into_global)
                .expect("the counter is exported");
            let Val::I32(it) = it.get(&c) else {
                panic!("counter type")
            };
            let h = c.data_mut();
            h.ticks.push(it);
            h.rng ^= h.rng << 13;
            h.rng ^= h.rng >> 7;
            h.rng ^= h.rng << 17;
            let b = 1 + (h.rng % h.max_budget) as i32;
            let g = c
                .get_export(BUDGET_EXPORT)
                .and_then(Extern::into_global)
                .expect("the budget is exported");
            g.set(&mut c, Val::I32(b)).expect("budget set");
        })
        .expect("link");
    let inst = linker
        .instantiate_and_start(&mut store, &module)
        .expect("instantiate");
    let run = inst
        .get_typed_func::<(i32, i64), i64>(&store, "run")
        .expect("run export");
    let r = run.call(&mut store, (n, seed)).expect("runs");
    let left = inst
        .get_global(&store, BUDGET_EXPORT)
        .map(|g| match g.get(&store) {
            Val::I32(v) => v,
            _ => panic!("budget type"),
        })
        .unwrap_or(0);
    (r, std::mem::take(&mut store.data_mut().ticks), left)
}

fn check_shape(shape: u64, k: usize, n: i32, seed: i64, max_budget: u64) {
    let wat = program(shape);
    let plain = wat::parse_str(&wat).expect("generated WAT parses");
    let one_by_one = rewrite_with(
        &plain,
        Unroll {
            max_copies: 1,
            max_unrolled: 0,
        },
    )
    .expect("rewrite");
    let unrolled = rewrite_with(
        &plain,
        Unroll {
            max_copies: k,
            max_unrolled: usize::MAX,
        },
    )
    .expect("rewrite");
    assert!(
        unrolled.len() > one_by_one.len(),
        "the loop was not unrolled:\n{wat}"
    );
    let (want, _, _) = exec(&plain, n, seed, max_budget);
    let (got1, ticks1, left1) = exec(&one_by_one, n, seed, max_budget);
    let (gotk, ticksk, leftk) = exec(&unrolled, n, seed, max_budget);
    assert_eq!(got1, want, "one-by-one count changed the result:\n{wat}");
    assert_eq!(gotk, want, "unrolled by {k} changed the result:\n{wat}");
    assert_eq!(ticksk, ticks1, "unrolled by {k} ticks elsewhere:\n{wat}");
    assert_eq!(
        leftk, left1,
        "unrolled by {k} leaves another budget:\n{wat}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn unrolled_leaf_loops_compute_and_tick_like_the_plain_loop(
        shape in any::<u64>(),
        k in 2usize..=5,
        n in prop_oneof![Just(0i32), Just(1), 2i32..12, 12i32..200],
        seed in any::<i64>(),
        max_budget in prop_oneof![Just(1u64), 2u64..8, 8u64..64],
    ) {
        check_shape(shape, k, n, seed, max_budget);
    }
}

/// The generator produces every construct (a guard against a generator that quietly
/// stopped covering a shape).
#[test]
fn the_generator_covers_every_construct() {
    let all: String = (0..200).map(program).collect();
    for what in [
        "br_table",
        "(br_if $l",
        "(br_if $o1",
        "(br_if $o2",
        "(br $o1 (local.get",
        "(return",
        "(result i64) (global.set",
        "(block $b",
        "(block $v",
        "(else",
    ] {
        assert!(all.contains(what), "no {what:?} in 200 programs");
    }
}

/// The same comparison after Binaryen (`--asyncify -O2`, what [`super::instrument`] runs):
/// its optimiser must not undo what the ticks rely on. Skipped without `wasm-opt`.
#[test]
fn unrolled_leaf_loops_survive_asyncify_and_the_optimiser() {
    if std::process::Command::new(super::wasm_opt_path())
        .arg("--version")
        .output()
        .is_err()
    {
        return;
    }
    for shape in 0..24u64 {
        let plain = wat::parse_str(program(shape)).expect("generated WAT parses");
        let one = super::wasm_opt(
            &rewrite_with(
                &plain,
                Unroll {
                    max_copies: 1,
                    max_unrolled: 0,
                },
            )
            .expect("rewrite"),
            true,
        )
        .expect("wasm-opt");
        let four = super::wasm_opt(
            &rewrite_with(
                &plain,
                Unroll {
                    max_copies: 4,
                    max_unrolled: usize::MAX,
                },
            )
            .expect("rewrite"),
            true,
        )
        .expect("wasm-opt");
        for (n, budget) in [(0, 3), (1, 1), (37, 5), (150, 2), (150, 40)] {
            let seed = shape as i64 * 0x5851_f42d + n as i64;
            let (want, _, _) = exec(&plain, n, seed, budget);
            let (got1, ticks1, left1) = exec(&one, n, seed, budget);
            let (got4, ticks4, left4) = exec(&four, n, seed, budget);
            assert_eq!((got1, got4), (want, want), "shape {shape}, n {n}");
            assert_eq!(ticks4, ticks1, "shape {shape}, n {n}");
            assert_eq!(left4, left1, "shape {shape}, n {n}");
        }
    }
}
