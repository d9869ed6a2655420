//! DVec over real communicators (in-process ranks): results must not depend on the
//! distribution, N -> M restore must finish like the run that never changed size.

mod parts;

use lazarus_dist::{DVec, Decision, DistErrorKind, Distribution, Reshard};
use lazarus_format::{LoadedObject, Rank};
use lazarus_net::{local, Comm};
use lazarus_state::{Checkpoint, StateError};
use proptest::prelude::*;

fn value(g: u64, seed: u64) -> f64 {
    // Values over many magnitudes so naive float sums would depend on order.
    let mut x = g.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
    x ^= x >> 29;
    let m = (x % 2001) as f64 - 1000.0;
    m * 10f64.powi(((x >> 11) % 17) as i32 - 8)
}

fn bounds_from(total: u64, n: usize, cuts: &[u64]) -> Distribution {
    let mut b: Vec<u64> = cuts.iter().take(n - 1).map(|c| c % (total + 1)).collect();
    b.sort_unstable();
    let mut all = vec![0];
    all.extend(b);
    while all.len() < n {
        all.push(total);
    }
    all.push(total);
    Distribution::from_bounds(all).unwrap()
}

#[derive(Debug, PartialEq)]
struct Results {
    sum: u64,
    dot: u64,
    min: Option<u64>,
    max: Option<u64>,
    naive_ordered: u64,
    scan_last: Option<u64>,
    all: Vec<u64>,
}

fn compute(comm: &Comm, dist: Distribution, seed: u64) -> Results {
    let mut v = DVec::<f64>::with_distribution(comm, dist, 1).unwrap();
    v.map_inplace(|g, _| value(g, seed));
    let sum = v.sum(comm).unwrap().to_bits();
    let dot = v.dot(comm, &v.map(|_, x| x * 0.5)).unwrap().to_bits();
    let min = v.min(comm).unwrap().map(f64::to_bits);
    let max = v.max(comm).unwrap().map(f64::to_bits);
    let naive_ordered = v
        .reduce(comm, 0.0f64, |_, r| r[0], |a, b| a + b)
        .unwrap()
        .to_bits();
    let scan = v.scan_sum(comm).unwrap();
    let all_scan = scan.gather(comm, Rank(0)).unwrap();
    let all = v.gather(comm, Rank(0)).unwrap();
    Results {
        sum,
        dot,
        min,
        max,
        naive_ordered,
        scan_last: all_scan.and_then(|s| s.last().map(|x| x.to_bits())),
        all: all
            .map(|a| a.iter().map(|x| x.to_bits()).collect())
            .unwrap_or_default(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn reductions_are_bit_identical_across_distributions(
        total in 0u64..3000, n in 1u32..=6, cuts in prop::collection::vec(any::<u64>(), 5),
        seed in any::<u64>(),
    ) {
        let reference = local(1, |c| compute(&c, Distribution::even(total, 1).unwrap(), seed))
            .unwrap().remove(0);
        let got = local(n, |c| compute(&c, bounds_from(total, n as usize, &cuts), seed)).unwrap();
        prop_assert_eq!(&got[0], &reference);
        // sum of the scan's last element equals the sum
        if total > 0 {
            prop_assert_eq!(reference.scan_last, Some(reference.sum));
        }
    }

    #[test]
    fn redistribution_and_halo_move_the_right_rows(
        total in 0u64..500, n in 1u32..=6, width in 1usize..4,
        a in prop::collection::vec(any::<u64>(), 5), b in prop::collection::vec(any::<u64>(), 5),
        w in 1u64..5,
    ) {
        let ok = local(n, |comm| {
            let from = bounds_from(total, n as usize, &a);
            let to = bounds_from(total, n as usize, &b);
            let mut v = DVec::<i64>::with_distribution(&comm, from, width).unwrap();
            v.for_each_row_mut(|g, row| for (k, x) in row.iter_mut().enumerate() {
                *x = (g * 10 + k as u64) as i64;
            });
            let h = v.halo(&comm, w).unwrap();
            let expect = |rows: std::ops::Range<u64>| -> Vec<i64> {
                rows.flat_map(|g| (0..width).map(move |k| (g * 10 + k as u64) as i64)).collect()
            };
            assert_eq!(h.left, expect(h.left_rows.clone()));
            assert_eq!(h.right, expect(h.right_rows.clone()));
            assert_eq!(h.left_rows.end, v.range().start);
            v.redistribute(&comm, &to).unwrap();
            assert_eq!(v.range(), to.range(comm.rank()));
            let mut ok = true;
            v.for_each(|g, x| ok &= (*x as u64) / 10 == g);
            let all = v.gather(&comm, Rank(0)).unwrap();
            if let Some(all) = all {
                ok &= all == expect(0..total);
            }
            let s = DVec::<i64>::scatter(&comm, Rank(0), Some(&expect(0..total)), width).unwrap();
            ok &= s.local() == expect(s.range()).as_slice();
            ok
        }).unwrap();
        prop_assert!(ok.iter().all(|&b| b));
    }
}

// ---- N -> M restart --------------------------------------------------------------------

#[derive(Checkpoint, Debug)]
struct Sim {
    #[checkpoint(replicated)]
    step: u64,
    field: DVec<f64>,
}

/// One explicit heat step with fixed boundary values, using a halo of 1.
fn heat_step(comm: &Comm, s: &mut Sim) {
    let h = s.field.halo(comm, 1).unwrap();
    let total = s.field.len();
    let start = s.field.range().start;
    let old: Vec<f64> = s.field.local().to_vec();
    let at = |g: u64| -> f64 {
        if g < start {
            h.left[0]
        } else if g >= start + old.len() as u64 {
            h.right[0]
        } else {
            old[(g - start) as usize]
        }
    };
    s.field.for_each_mut(|g, x| {
        if g > 0 && g + 1 < total {
            *x += 0.25 * (at(g - 1) - 2.0 * *x + at(g + 1));
        }
    });
    s.step += 1;
}

fn new_sim(comm: &Comm, len: u64) -> Sim {
    Sim {
        step: 0,
        field: DVec::from_fn(
            comm,
            len,
            |g| if g == 0 { 100.0 } else { value(g, 7).abs() },
        )
        .unwrap(),
    }
}

fn finish(comm: &Comm, s: &mut Sim, steps: u64) -> (u64, Vec<u64>) {
    while s.step < steps {
        heat_step(comm, s);
    }
    let all = s.field.gather(comm, Rank(0)).unwrap().unwrap_or_default();
    (
        s.field.sum(comm).unwrap().to_bits(),
        all.iter().map(|x| x.to_bits()).collect(),
    )
}

#[test]
fn checkpoint_on_n_restores_on_m_with_the_same_result() {
    const LEN: u64 = 97;
    const STEPS: u64 = 12;
    let reference = local(1, |c| {
        let mut s = new_sim(&c, LEN);
        finish(&c, &mut s, STEPS)
    })
    .unwrap()
    .remove(0);
    for n in 1..=6u32 {
        // Run 5 steps on n ranks, rebalance to a skewed layout, then checkpoint.
        let parts: Vec<Vec<LoadedObject>> = local(n, |c| {
            let mut s = new_sim(&c, LEN);
            for _ in 0..5 {
                heat_step(&c, &mut s);
            }
            let skew: Vec<f64> = (0..n).map(|r| 1.0 + r as f64).collect();
            s.field
                .redistribute(&c, &Distribution::weighted(LEN, &skew).unwrap())
                .unwrap();
            lazarus_state::to_loaded(&lazarus_state::save(&s).unwrap())
        })
        .unwrap();
        let infos = parts::infos(&parts);
        for m in 1..=6u32 {
            let plan = Reshard::new(&infos, m).unwrap();
            let got = local(m, |c| {
                let mut fetch = parts::fetch_from(&parts);
                let objs = plan.assemble(c.rank(), &mut fetch).unwrap();
                let mut s = new_sim(&c, 1);
                lazarus_state::restore(&mut s, objs).unwrap();
                assert_eq!(s.step, 5);
                finish(&c, &mut s, STEPS)
            })
            .unwrap();
            assert_eq!(got[0], reference, "checkpoint of {n} ranks restored on {m}");
        }
    }
}

#[test]
fn same_n_restore_keeps_the_balanced_layout() {
    let out = local(3, |c| {
        let mut s = new_sim(&c, 30);
        let to = Distribution::from_bounds(vec![0, 5, 6, 30]).unwrap();
        s.field.redistribute(&c, &to).unwrap();
        let saved = lazarus_state::to_loaded(&lazarus_state::save(&s).unwrap());
        let mut t = new_sim(&c, 30);
        lazarus_state::restore(&mut t, saved).unwrap();
        assert_eq!(t.field.range(), to.range(c.rank()));
        t.field.sync_distribution(&c).unwrap() == &to
    })
    .unwrap();
    assert!(out.iter().all(|&b| b));
}

#[derive(Checkpoint, Debug)]
struct PerRank {
    field: DVec<f64>,
    local_seed: u64,
}

#[test]
fn per_rank_state_is_refused_by_name() {
    let parts: Vec<Vec<LoadedObject>> = local(2, |c| {
        let s = PerRank {
            field: DVec::new(&c, 8).unwrap(),
            local_seed: u64::from(c.rank().0) + 1,
        };
        lazarus_state::to_loaded(&lazarus_state::save(&s).unwrap())
    })
    .unwrap();
    let infos = parts::infos(&parts);
    // The sharing is recorded: refused from the manifests alone, no data read.
    let e = Reshard::new(&infos, 3).unwrap_err();
    assert!(e.to_string().contains("`local_seed`"), "{e}");
    assert!(e.to_string().contains("not redistributable"), "{e}");
}

#[derive(Checkpoint, Debug)]
struct Declared {
    field: DVec<f64>,
    #[checkpoint(replicated)]
    seed: u64,
}

/// A field declared replicated that is not (a broken promise) is still refused, naming the
/// two ranks, by the byte comparison of every old rank's copy.
#[test]
fn a_declared_replicated_field_that_differs_is_refused() {
    let parts: Vec<Vec<LoadedObject>> = local(2, |c| {
        let s = Declared {
            field: DVec::new(&c, 8).unwrap(),
            seed: u64::from(c.rank().0),
        };
        lazarus_state::to_loaded(&lazarus_state::save(&s).unwrap())
    })
    .unwrap();
    let infos = parts::infos(&parts);
    let plan = Reshard::new(&infos, 3).unwrap();
    let mut fetch = parts::fetch_from(&parts);
    let e = plan.check(&mut fetch).unwrap_err();
    assert!(
        e.to_string()
            .contains("field `seed` differs between rank 0 and rank 1"),
        "{e}"
    );
}

#[test]
fn balance_moves_work_off_the_slow_rank_without_changing_results() {
    let out = local(3, |c| {
        let mut v = DVec::<f64>::from_fn(&c, 3000, |g| value(g, 3)).unwrap();
        let before = v.sum(&c).unwrap();
        // rank 1 reports a 3x slower rate
        let secs = if c.rank() == Rank(1) { 3.0 } else { 1.0 };
        v.record_work(1000, secs);
        let d = v.balance(&c).unwrap();
        let moved = matches!(d, Decision::Rebalance { .. });
        let after = v.sum(&c).unwrap();
        (moved, v.range(), before.to_bits() == after.to_bits())
    })
    .unwrap();
    assert!(out.iter().all(|o| o.0 && o.2), "{out:?}");
    assert_eq!(out[1].1, 1286..1714);
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    local(2, |c| {
        let a = DVec::<f64>::new(&c, 10).unwrap();
        let b = DVec::<f64>::new(&c, 11).unwrap();
        assert!(a.dot(&c, &b).is_err());
        assert!(DVec::<f64>::with_width(&c, 4, 0).is_err());
        let mut a = a;
        assert!(a
            .redistribute(&c, &Distribution::even(10, 3).unwrap())
            .is_err());
    })
    .unwrap();
}

#[allow(dead_code)]
fn _assert_error_is_std(e: StateError) -> Box<dyn std::error::Error> {
    Box::new(e)
}

/// The tag of the migration's pieces (crates/dvec/src/collective.rs): a test rank that
/// plays a broken peer sends on it.
const TAG_MIGRATE: u32 = 0xD157_0001;

/// Review: a migration that failed after rows had moved left the vector's rows and its
/// range disagreeing on the failed rank (rows compacted, zeros where a piece never
/// arrived) while ranks whose own moves succeeded went on with the new layout: sums
/// double-counted some rows and dropped others, and a checkpoint of it was written
/// without error. Now every rank of the migration learns its outcome, and on failure
/// the vector is unusable on every one of them until restored: collectives and saves
/// are refused naming why. Rows 0..12 on 3 ranks move to the blocks [0, 6, 10, 12];
/// rank 2 plays a broken peer that sends rank 1 one value instead of rows 8..10.
#[test]
fn a_migration_that_failed_half_way_leaves_the_vector_unusable_on_every_rank() {
    let out = local(3, |c| {
        let mut v = DVec::<f64>::from_fn(&c, 12, |g| g as f64).unwrap();
        let to = Distribution::from_bounds(vec![0, 6, 10, 12]).unwrap();
        if c.rank() == Rank(2) {
            c.send_slice(Rank(1), TAG_MIGRATE, &[1.0f64]).unwrap();
            c.allgather(&true).unwrap();
            return None;
        }
        let e = v.redistribute(&c, &to).unwrap_err();
        assert_eq!(e.kind(), DistErrorKind::Unusable, "{e}");
        assert!(!e.is_retryable());
        // Refused before any message: no rank waits for another.
        let sum = v.sum(&c).unwrap_err();
        assert_eq!(sum.kind(), DistErrorKind::Unusable, "{sum}");
        let saved = lazarus_state::save(&v).unwrap_err().to_string();
        assert!(saved.contains("unusable"), "{saved}");
        assert!(v.local().is_empty() && v.range().is_empty());
        Some(e.to_string())
    })
    .unwrap();
    let (r0, r1) = (out[0].clone().unwrap(), out[1].clone().unwrap());
    // Rank 0's own moves succeeded: it learns of rank 1's failure from the agreement.
    assert!(r0.contains("the migration failed on rank 1"), "{r0}");
    assert!(
        r1.contains("rank 2"),
        "rank 1 names the peer that sent it garbage: {r1}"
    );
}

/// Review: `scatter` checked the root's input on the root alone, which returned before
/// the broadcast the others were waiting in; now every rank gets the root's error.
#[test]
fn scatter_with_bad_root_input_fails_on_every_rank() {
    for data in [None, Some(&[1.0f64, 2.0, 3.0][..])] {
        let out = local(3, |c| {
            let e = DVec::<f64>::scatter(&c, Rank(0), data, 2).unwrap_err();
            // The communicator is still in step: a collective after the error completes.
            let n: Vec<u32> = c.allgather(&c.rank().0).unwrap();
            (e.kind(), e.to_string(), n.len())
        })
        .unwrap();
        for (r, (kind, msg, n)) in out.iter().enumerate() {
            assert_eq!(*kind, DistErrorKind::InvalidArgument, "rank {r}: {msg}");
            assert_eq!(*n, 3);
            if r > 0 {
                assert!(msg.contains("on the root, rank 0"), "rank {r}: {msg}");
            }
        }
    }
}

/// Review of the fix above: a rank whose receive failed returned at once, before the sends
/// that came later in its part of the plan, so the rank waiting for one of them waited
/// for ever and nobody reached the agreement. Rows 0..12 on 3 ranks move to the blocks
/// [0, 2, 6, 12]: rank 1 first receives rows 2..4 from rank 0 (here a broken peer that
/// sends one value), then sends rows 6..8 to rank 2, which must still get them.
#[test]
fn a_rank_whose_receive_failed_still_sends_what_the_others_wait_for() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = local(3, |c| {
            let mut v = DVec::<f64>::from_fn(&c, 12, |g| g as f64).unwrap();
            let to = Distribution::from_bounds(vec![0, 2, 6, 12]).unwrap();
            if c.rank() == Rank(0) {
                c.send_slice(Rank(1), TAG_MIGRATE, &[1.0f64]).unwrap();
                c.allgather(&true).unwrap();
                return None;
            }
            let e = v.redistribute(&c, &to).unwrap_err();
            Some((e.kind(), e.to_string()))
        });
        let _ = tx.send(out);
    });
    let out = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the migration hung")
        .unwrap();
    for (r, o) in out.iter().enumerate().skip(1) {
        let (kind, msg) = o.clone().unwrap();
        assert_eq!(kind, DistErrorKind::Unusable, "rank {r}: {msg}");
    }
    let r2 = out[2].clone().unwrap().1;
    assert!(r2.contains("the migration failed on rank 1"), "{r2}");
}
