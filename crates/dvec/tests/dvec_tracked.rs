//! Incremental checkpoints of `DVec`s against the real store: the page tracking lets a
//! checkpoint after a small update read and write about as many chunks as were touched,
//! and never misses a change — across balancing migrations, restores on the same or
//! another number of ranks, aborted, unwritten and failed rounds, and GC. Every manifest
//! is compared with digests computed from the bytes (`common::round`).

mod common;

use common::{repo, restore_on, round, Ranks, Round};
use lazarus_dist::{DVec, Distribution};
use lazarus_format::Rank;
use lazarus_net::Comm;
use lazarus_state::Checkpoint;
use proptest::prelude::*;

const CHUNK: usize = 4096;

#[derive(Checkpoint, Debug)]
struct Sim {
    #[checkpoint(replicated)]
    step: u64,
    a: DVec<f64>,
    /// rows of 3
    b: DVec<u32>,
}

fn b_init(g: u64, k: usize) -> u32 {
    (g * 3 + k as u64) as u32
}

fn sim(c: &Comm, len_a: u64, len_b: u64) -> Sim {
    let a = DVec::from_fn(c, len_a, |g| g as f64 * 0.5).unwrap();
    let mut b = DVec::<u32>::with_width(c, len_b, 3).unwrap();
    b.for_each_row_mut(|g, row| {
        row.iter_mut()
            .enumerate()
            .for_each(|(k, x)| *x = b_init(g, k))
    });
    Sim { step: 0, a, b }
}

fn chunks_of(bytes: u64) -> u64 {
    bytes.div_ceil(CHUNK as u64)
}

#[test]
fn touching_one_percent_reads_and_writes_about_one_percent_of_chunks() {
    const LEN: u64 = 1 << 19; // 4 MiB of f64: 512 chunks of 4 KiB per rank on 2 ranks
    let dir = tempfile::tempdir().unwrap();
    let mut repo = repo(dir.path(), CHUNK as u32);
    let ranks = Ranks::new(2, |c| sim(c, LEN, 0));
    let (_, first) = round(&mut repo, &ranks, Round::Commit, CHUNK).unwrap();
    assert!(first.iter().all(|r| r.hinted_chunks == 0), "{first:?}");
    // 1% of every rank's rows as one range, plus three single rows.
    let dirty_bytes = ranks.each(|_, s| {
        let r = s.a.range();
        let n = (r.end - r.start) / 100;
        let from = r.start + (r.end - r.start) / 3;
        s.a.rows_mut(from..from + n)
            .unwrap()
            .iter_mut()
            .for_each(|x| *x += 1.0);
        for g in [r.start, r.start + 77_777, r.end - 1] {
            s.a.row_mut(g).unwrap()[0] = -1.0;
        }
        s.step += 1;
        s.a.dirty_bytes()
    });
    let (_, second) = round(&mut repo, &ranks, Round::Commit, CHUNK).unwrap();
    for (r, (rec, dirty)) in second.iter().zip(&dirty_bytes).enumerate() {
        let field = chunks_of(LEN / 2 * 8);
        // 1% of 512 chunks is 5.2: the range spans at most 7, the three rows 3 more.
        let touched = chunks_of(*dirty);
        assert!(touched <= 10, "rank {r}: {dirty} dirty bytes");
        assert_eq!(rec.hinted_chunks, field - touched, "rank {r}: {rec:?}");
        // New chunks: the touched ones and the step counter's.
        assert!(rec.new_chunks <= touched + 1, "rank {r}: {rec:?}");
        assert!(
            rec.new_chunks >= 4,
            "rank {r}: the changes were written: {rec:?}"
        );
    }
    // Nothing written since: nothing is read.
    let (_, third) = round(&mut repo, &ranks, Round::Commit, CHUNK).unwrap();
    assert!(
        third
            .iter()
            .all(|r| r.hinted_chunks == chunks_of(LEN / 2 * 8)),
        "{third:?}"
    );
}

/// Regression: a migration that keeps a rank's block length but shifts its rows leaves
/// every page at its old epoch unless `redistribute` marks it; the hint would then claim
/// the shifted bytes unchanged and the manifest would keep the old digests.
#[test]
fn migration_that_keeps_the_length_still_marks_the_block() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = repo(dir.path(), CHUNK as u32);
    let ranks = Ranks::new(3, |c| {
        let d = Distribution::from_bounds(vec![0, 30_000, 60_000, 90_000]).unwrap();
        let mut a = DVec::<f64>::with_distribution(c, d, 1).unwrap();
        a.for_each_mut(|g, x| *x = g as f64);
        Sim {
            step: 0,
            a,
            b: DVec::with_width(c, 0, 3).unwrap(),
        }
    });
    round(&mut repo, &ranks, Round::Commit, CHUNK).unwrap();
    ranks.each(|c, s| {
        // Rank 1: 30_000..60_000 becomes 20_000..50_000, the same length.
        let to = Distribution::from_bounds(vec![0, 20_000, 50_000, 90_000]).unwrap();
        s.a.redistribute(c, &to).unwrap();
    });
    // `round` checks every rank's manifest against the bytes.
    let (_, r) = round(&mut repo, &ranks, Round::Commit, CHUNK).unwrap();
    assert_eq!(r[1].hinted_chunks, 0, "{:?}", r[1]);
}

#[test]
fn local_writes_mark_what_they_touch_and_out_of_range_marks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = repo(dir.path(), CHUNK as u32);
    let ranks = Ranks::new(2, |c| sim(c, 10_000, 10));
    round(&mut repo, &ranks, Round::Commit, CHUNK).unwrap();
    ranks.each(|_, s| {
        let r = s.a.range();
        assert_eq!(s.a.dirty_bytes(), 0);
        assert!(s.a.rows_mut(r.start..r.end + 1).is_none());
        assert!(s.a.row_mut(r.end).is_none());
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = s.a.rows_mut(r.end..r.start);
        assert!(backwards.is_none());
        s.a.mark_dirty(r.end..r.end + 100);
        assert_eq!(s.a.dirty_bytes(), 0, "nothing held here was marked");
        s.a.mark_dirty(r.start..r.start + 1);
        assert_eq!(s.a.dirty_bytes(), 4096);
        s.a.local_mut()[0] += 1.0;
        assert_eq!(
            s.a.dirty_bytes(),
            5000 * 8,
            "local_mut marks the whole block"
        );
    });
    round(&mut repo, &ranks, Round::Commit, CHUNK).unwrap();
    ranks.each(|_, s| {
        s.a.work(|_, _| ());
        assert_eq!(s.a.dirty_bytes(), 5000 * 8, "work marks the whole block");
    });
}

// ---- property: never a stale digest --------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    SetA(u64, f64),
    FillA(u64, u64, f64),
    SetB(u64, usize, u32),
    WorkB(u32),
    LocalMutA(u64, f64),
    MarkDirtyA(u64, u64),
    Redistribute(bool, Vec<u64>),
    /// Moves every interior bound of `a` by the same amount: the middle ranks keep their
    /// block length while their rows shift (the store then trusts a length-equal hint).
    Shift(i64),
    Round(Round),
    Gc,
    Restore(u32),
}

fn op() -> impl Strategy<Value = Op> {
    let how = prop_oneof![
        6 => Just(Round::Commit),
        2 => Just(Round::AbortAfterWrite),
        1 => Just(Round::NeverWritten),
        1 => Just(Round::FailedWrite),
    ];
    prop_oneof![
        6 => (any::<u64>(), -1e3f64..1e3).prop_map(|(g, v)| Op::SetA(g, v)),
        3 => (any::<u64>(), 0u64..3000, -1e3f64..1e3).prop_map(|(g, n, v)| Op::FillA(g, n, v)),
        3 => (any::<u64>(), 0usize..3, any::<u32>()).prop_map(|(g, k, v)| Op::SetB(g, k, v)),
        1 => any::<u32>().prop_map(Op::WorkB),
        2 => (any::<u64>(), -1e3f64..1e3).prop_map(|(g, v)| Op::LocalMutA(g, v)),
        1 => (any::<u64>(), 0u64..3000).prop_map(|(g, n)| Op::MarkDirtyA(g, n)),
        2 => (any::<bool>(), prop::collection::vec(any::<u64>(), 3)).prop_map(|(w, c)| Op::Redistribute(w, c)),
        2 => (-3000i64..3000).prop_map(Op::Shift),
        7 => how.prop_map(Op::Round),
        1 => Just(Op::Gc),
        2 => (1u32..=4).prop_map(Op::Restore),
    ]
}

/// The whole arrays as they should be.
#[derive(Clone, Debug, PartialEq)]
struct Model {
    a: Vec<f64>,
    b: Vec<u32>,
}

fn bounds(total: u64, n: u32, cuts: &[u64]) -> Distribution {
    let mut b: Vec<u64> = cuts
        .iter()
        .take(n as usize - 1)
        .map(|c| c % (total + 1))
        .collect();
    b.sort_unstable();
    let mut all = vec![0];
    all.extend(b);
    while all.len() < n as usize {
        all.push(total);
    }
    all.push(total);
    Distribution::from_bounds(all).unwrap()
}

fn gathered(ranks: &Ranks<Sim>) -> Model {
    let mut all = ranks.each(|c, s| {
        (
            s.a.gather(c, Rank(0)).unwrap(),
            s.b.gather(c, Rank(0)).unwrap(),
        )
    });
    let (a, b) = all.swap_remove(0);
    Model {
        a: a.unwrap(),
        b: b.unwrap(),
    }
}

fn run(n: u32, len_a: u64, len_b: u64, ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = repo(dir.path(), CHUNK as u32);
    let mut ranks = Ranks::new(n, |c| sim(c, len_a, len_b));
    let mut model = Model {
        a: (0..len_a).map(|g| g as f64 * 0.5).collect(),
        b: (0..len_b)
            .flat_map(|g| (0..3).map(move |k| b_init(g, k)))
            .collect(),
    };
    let mut last = None;
    for op in ops {
        match op {
            Op::SetA(g, v) => {
                let g = g % len_a;
                ranks.each(|_, s| {
                    if let Some(r) = s.a.row_mut(g) {
                        r[0] = v;
                    }
                });
                model.a[g as usize] = v;
            }
            Op::FillA(g, n, v) => {
                let (from, to) = (g % len_a, (g % len_a + n).min(len_a));
                ranks.each(|_, s| {
                    let r = s.a.range();
                    let (lo, hi) = (from.max(r.start), to.min(r.end));
                    if lo < hi {
                        s.a.rows_mut(lo..hi).unwrap().fill(v);
                    }
                });
                model.a[from as usize..to as usize].fill(v);
            }
            Op::SetB(g, k, v) => {
                if len_b > 0 {
                    let g = g % len_b;
                    ranks.each(|_, s| {
                        if let Some(r) = s.b.row_mut(g) {
                            r[k] = v;
                        }
                    });
                    model.b[g as usize * 3 + k] = v;
                }
            }
            Op::WorkB(add) => {
                ranks.each(|_, s| {
                    s.b.work(|_, d| d.iter_mut().for_each(|x| *x = x.wrapping_add(add)))
                });
                model.b.iter_mut().for_each(|x| *x = x.wrapping_add(add));
            }
            Op::LocalMutA(g, v) => {
                let g = g % len_a;
                ranks.each(|_, s| {
                    let r = s.a.range();
                    if r.contains(&g) {
                        s.a.local_mut()[(g - r.start) as usize] = v;
                    }
                });
                model.a[g as usize] = v;
            }
            Op::MarkDirtyA(g, n) => {
                ranks.each(|_, s| s.a.mark_dirty(g % len_a..g % len_a + n));
            }
            Op::Redistribute(which_a, cuts) => {
                let n = ranks.len();
                ranks.each(|c, s| {
                    if which_a {
                        s.a.redistribute(c, &bounds(len_a, n, &cuts)).unwrap();
                    } else {
                        s.b.redistribute(c, &bounds(len_b, n, &cuts)).unwrap();
                    }
                });
            }
            Op::Shift(delta) => {
                ranks.each(|c, s| {
                    let now = s.a.sync_distribution(c).unwrap().bounds().to_vec();
                    let last = now.len() - 1;
                    let moved: Vec<u64> = now
                        .iter()
                        .enumerate()
                        .map(|(i, &b)| {
                            if i == 0 || i == last {
                                b
                            } else {
                                b.saturating_add_signed(delta).min(len_a)
                            }
                        })
                        .collect();
                    let to = Distribution::from_bounds(moved).unwrap();
                    s.a.redistribute(c, &to).unwrap();
                });
            }
            Op::Round(how) => {
                ranks.each(|_, s| s.step += 1);
                if let Some((id, _)) = round(&mut repo, &ranks, how, CHUNK) {
                    last = Some((id, model.clone()));
                }
            }
            Op::Gc => {
                repo.retain(1).unwrap();
            }
            Op::Restore(m) => {
                if let Some((id, saved)) = &last {
                    ranks = restore_on(repo.path(), *id, m, |c| sim(c, 1, 1));
                    model = saved.clone();
                    assert_eq!(gathered(&ranks), model, "restored on {m} ranks");
                }
            }
        }
    }
    ranks.each(|_, s| s.step += 1);
    let (id, _) = round(&mut repo, &ranks, Round::Commit, CHUNK).unwrap();
    let back = restore_on(repo.path(), id, ranks.len(), |c| sim(c, 1, 1));
    assert_eq!(gathered(&back), model, "final restore");
}

proptest! {
    // Each case runs several real (fsynced) checkpoint rounds: 16 keeps it under ~30 s.
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn tracked_dvec_checkpoints_never_miss_a_change(
        n in 1u32..=4, len_a in 1u64..12_000, len_b in 0u64..3_000,
        ops in prop::collection::vec(op(), 1..24),
    ) {
        run(n, len_a, len_b, ops);
    }
}
