//! `balance_together`: vectors whose rows belong together (points and their labels) stay
//! on one partition through balancing, checkpoints and restores on another number of
//! ranks; misaligned groups are refused before anything moves.

mod common;

use common::{repo, restore_on, round, Ranks, Round};
use lazarus_dist::{balance_together, DVec, Decision, DistErrorKind, Distribution};
use lazarus_net::{local, Comm};
use lazarus_state::Checkpoint;
use proptest::prelude::*;

#[derive(Checkpoint, Debug)]
struct Clusters {
    #[checkpoint(replicated)]
    step: u64,
    /// rows of (x, y)
    points: DVec<f64>,
    labels: DVec<u32>,
    weights: DVec<f32>,
}

fn point(g: u64) -> [f64; 2] {
    [g as f64 * 0.25, -(g as f64)]
}

fn clusters(c: &Comm, rows: u64) -> Clusters {
    let mut points = DVec::<f64>::with_width(c, rows, 2).unwrap();
    points.for_each_row_mut(|g, r| r.copy_from_slice(&point(g)));
    Clusters {
        step: 0,
        points,
        labels: DVec::from_fn(c, rows, |g| (g % 7) as u32).unwrap(),
        weights: DVec::from_fn(c, rows, |g| g as f32).unwrap(),
    }
}

/// Every member holds the same rows here, and row `g` of each is still row `g`'s data.
fn aligned(s: &Clusters) -> Result<(), String> {
    let r = s.points.range();
    if s.labels.range() != r || s.weights.range() != r {
        return Err(format!(
            "{}: points {r:?}, labels {:?}, weights {:?}",
            s.points.rank(),
            s.labels.range(),
            s.weights.range()
        ));
    }
    for g in r {
        let ok = s.points.row(g) == Some(&point(g)[..])
            && s.labels.get(g) == Some((g % 7) as u32)
            && s.weights.get(g) == Some(g as f32);
        if !ok {
            return Err(format!("row {g} lost its partners on {}", s.points.rank()));
        }
    }
    Ok(())
}

/// Rank `r` reports `speed[r]` times the time per row of the fastest (on the points only:
/// the group combines the members' measurements).
fn report(c: &Comm, s: &mut Clusters, speed: &[f64]) {
    let rows = s.points.range().end - s.points.range().start;
    let f = speed[c.rank().index() % speed.len()];
    s.points.record_work(rows, rows as f64 * 1e-6 * f);
}

fn balance(c: &Comm, s: &mut Clusters) -> Decision {
    balance_together(c, &mut [&mut s.points, &mut s.labels, &mut s.weights]).unwrap()
}

#[test]
fn members_move_together_off_a_slow_rank() {
    let out = local(3, |c| {
        let mut s = clusters(&c, 3000);
        let mut moved = false;
        for _ in 0..4 {
            report(&c, &mut s, &[1.0, 3.0, 1.0]);
            moved |= matches!(balance(&c, &mut s), Decision::Rebalance { .. });
            aligned(&s).unwrap();
        }
        (moved, s.points.range())
    })
    .unwrap();
    assert!(out.iter().all(|o| o.0), "{out:?}");
    // The slow rank ends with about a seventh of the rows (rates 1 : 1/3 : 1).
    let slow = out[1].1.end - out[1].1.start;
    assert!((380..480).contains(&slow), "{out:?}");
}

#[test]
fn misaligned_groups_are_refused_before_anything_moves() {
    local(2, |c| {
        let mut s = clusters(&c, 100);
        let mut other = DVec::<u32>::new(&c, 101).unwrap();
        report(&c, &mut s, &[1.0, 5.0]);
        let e = balance_together(&c, &mut [&mut s.points, &mut other]).unwrap_err();
        assert_eq!(e.kind(), DistErrorKind::InvalidArgument);
        let m = e.to_string();
        assert!(
            m.contains("member 1 (DVec<u32>)") && m.contains("DVec<[f64; 2]>"),
            "{m}"
        );
        assert!(
            m.contains("[0, 51, 101]") && m.contains("[0, 50, 100]"),
            "{m}"
        );
        // Same length, other blocks.
        s.labels
            .redistribute(&c, &Distribution::from_bounds(vec![0, 10, 100]).unwrap())
            .unwrap();
        let e = balance_together(&c, &mut [&mut s.points, &mut s.labels]).unwrap_err();
        assert!(e.to_string().contains("share one distribution"), "{e}");
        assert_eq!(
            s.points.range(),
            Distribution::even(100, 2).unwrap().range(c.rank())
        );
        assert!(balance_together(&c, &mut []).is_err());
    })
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_group_balancing_keeps_rows_together(
        n in 1u32..=6, rows in 0u64..2000,
        speeds in prop::collection::vec(prop::collection::vec(1.0f64..6.0, 6), 1..6),
    ) {
        let out = local(n, |c| {
            let mut s = clusters(&c, rows);
            for sp in &speeds {
                report(&c, &mut s, sp);
                balance(&c, &mut s);
                aligned(&s)?;
            }
            Ok::<_, String>(())
        })
        .unwrap();
        for o in out {
            prop_assert!(o.is_ok(), "{:?}", o);
        }
    }
}

/// Balanced on N ranks (skewed layout), checkpointed to a real repository, restored on M:
/// same-size restores adopt the shared saved layout, other sizes cut every member into
/// the same even blocks; balancing together goes on from there.
#[test]
fn group_checkpoint_restores_aligned_on_any_number_of_ranks() {
    const ROWS: u64 = 5000;
    for n in 1..=5u32 {
        let dir = tempfile::tempdir().unwrap();
        let mut repo = repo(dir.path(), 4096);
        let ranks = Ranks::new(n, |c| clusters(c, ROWS));
        ranks.each(|c, s| {
            for _ in 0..3 {
                report(c, s, &[1.0, 4.0, 2.0, 1.0, 3.0]);
                balance(c, s);
            }
            s.step = 3;
        });
        let (id, _) = round(&mut repo, &ranks, Round::Commit, 4096).unwrap();
        let saved: Vec<_> = ranks.each(|_, s| s.points.range());
        for m in 1..=5u32 {
            let back = restore_on(repo.path(), id, m, |c| clusters(c, 1));
            let out = back.each(|c, s| {
                assert_eq!(s.step, 3);
                aligned(s)?;
                if m == n && s.points.range() != saved[c.rank().index()] {
                    return Err("a same-size restore changed the layout".to_string());
                }
                report(c, s, &[2.0, 1.0, 5.0]);
                balance(c, s);
                aligned(s)?;
                let total = s.weights.sum(c).unwrap();
                Ok(total)
            });
            // (0..ROWS) as f32 are exact and their exact sum rounds to this f32.
            let want = (0..ROWS).map(|g| g as f64).sum::<f64>() as f32;
            for o in &out {
                assert_eq!(
                    o.as_ref().map(|t| t.to_bits()),
                    Ok(want.to_bits()),
                    "{n} -> {m}"
                );
            }
        }
    }
}
