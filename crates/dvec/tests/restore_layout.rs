//! Restored layouts: a same-N restore adopts each rank's recorded range, and no collective
//! may compute on those ranges before checking that they tile the vector; N -> M restores
//! of uneven layouts onto more ranks than rows; replicated copies that differ only in
//! their encoding order.

mod parts;

use lazarus_dist::{DVec, Distribution, Reshard};
use lazarus_format::{DType, GlobalRange, LoadedObject, ObjectInfo, ObjectKind, Rank, Sharing};
use lazarus_net::local;
use lazarus_state::Checkpoint;
use std::collections::HashMap;

/// One rank's saved `DVec<f64>` (the root object) holding `vals` at rows `start..` of
/// `total`. Each part alone is valid (`start + len <= total`), as the manifest check
/// requires.
fn part(start: u64, vals: &[f64], total: u64) -> Vec<LoadedObject> {
    let len = vals.len() as u64;
    vec![LoadedObject {
        info: ObjectInfo {
            name: "value".into(),
            type_name: "DVec<f64>".into(),
            kind: ObjectKind::Bulk {
                dtype: DType::F64,
                len,
                global: Some(GlobalRange { start, len, total }),
            },
            sharing: Some(Sharing::Distributed),
            layout: None,
        },
        data: vals.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }]
}

/// Restores `parts[rank]` on 2 ranks and runs every reduction and the scan: each must
/// fail (on every rank) with an error containing `want`, never return a value.
fn every_collective_refuses(name: &str, parts: [Vec<LoadedObject>; 2], want: &str) {
    let out = local(2, |c| {
        let mut v = DVec::<f64>::new(&c, 4).unwrap();
        lazarus_state::restore(&mut v, parts[c.rank().index()].clone()).unwrap();
        assert!(
            v.distribution().is_none(),
            "{name}: unverified after restore"
        );
        let msg = |r: Result<String, lazarus_dist::DistError>| match r {
            Ok(value) => format!("computed {value}"),
            Err(e) => e.to_string(),
        };
        let got = vec![
            ("sum", msg(v.sum(&c).map(|x| x.to_string()))),
            ("dot", msg(v.dot(&c, &v).map(|x| x.to_string()))),
            ("min", msg(v.min(&c).map(|x| format!("{x:?}")))),
            ("max", msg(v.max(&c).map(|x| format!("{x:?}")))),
            (
                "reduce",
                msg(v
                    .reduce(&c, 0.0, |_, r| r[0], |a, b| a + b)
                    .map(|x| x.to_string())),
            ),
            (
                "scan_sum",
                msg(v.scan_sum(&c).map(|s| format!("{:?}", s.local()))),
            ),
        ];
        assert!(
            v.distribution().is_none(),
            "{name}: a failed check keeps it unverified"
        );
        got
    })
    .unwrap();
    for (rank, got) in out.iter().enumerate() {
        for (op, m) in got {
            assert!(
                m.contains("bad checkpoint") && m.contains(want),
                "{name}: {op} on rank {rank}: {m}"
            );
            // Which DVec, and in which unit (found in review: neither was said).
            assert!(
                m.contains("field `value`, in rows of 1"),
                "{name}: {op} on rank {rank}: {m}"
            );
        }
    }
}

/// The bug: a same-N restore adopted each rank's recorded range unchecked, and the
/// reductions and the scan computed on it (overlapping parts: sum 20 instead of 10; parts
/// out of rank order: a wrong prefix) without any error.
#[test]
fn restored_parts_that_do_not_tile_make_every_reduction_and_scan_fail_instead_of_computing() {
    let all = [1.0, 2.0, 3.0, 4.0];
    every_collective_refuses(
        "overlap",
        [part(0, &all, 4), part(0, &all, 4)],
        "rank 1 starts at global index 0 but the previous ranks end at 4 (overlap)",
    );
    every_collective_refuses(
        "gap",
        [part(0, &all[..2], 4), part(3, &all[3..], 4)],
        "rank 1 starts at global index 3 but the previous ranks end at 2 (gap)",
    );
    every_collective_refuses(
        "different totals",
        [part(0, &all[..2], 6), part(4, &all[2..], 8)],
        "rank 1 records a global length of 8 but rank 0 records 6",
    );
    every_collective_refuses(
        "swapped",
        [part(2, &all[2..], 4), part(0, &all[..2], 4)],
        "rank 0 starts at global index 2 but the previous ranks end at 0 (gap)",
    );
}

/// Parts that tile (here unevenly) restore and compute as before; the layout is verified
/// once, by the first collective, and kept.
#[test]
fn restored_parts_that_tile_are_verified_once_and_compute() {
    let all = [1.0, 2.0, 3.0, 4.0, 5.0];
    let parts = [part(0, &all[..1], 5), part(1, &all[1..], 5)];
    let out = local(2, |c| {
        let mut v = DVec::<f64>::new(&c, 2).unwrap();
        lazarus_state::restore(&mut v, parts[c.rank().index()].clone()).unwrap();
        assert!(v.distribution().is_none());
        let s = v.sum(&c).unwrap();
        let verified = v.distribution().cloned();
        let scan = v.scan_sum(&c).unwrap();
        (
            s,
            verified,
            v.dot(&c, &v).unwrap(),
            v.min(&c).unwrap(),
            v.max(&c).unwrap(),
            v.reduce(&c, 0.0, |_, r| r[0], |a, b| a + b).unwrap(),
            scan.local().to_vec(),
            v.len(),
        )
    })
    .unwrap();
    let d = Distribution::from_bounds(vec![0, 1, 5]).unwrap();
    for o in &out {
        assert_eq!(o.0, 15.0);
        assert_eq!(o.1.as_ref(), Some(&d));
        assert_eq!(
            (o.2, o.3, o.4, o.5, o.7),
            (55.0, Some(1.0), Some(5.0), 15.0, 5)
        );
    }
    assert_eq!(out[0].6, vec![1.0]);
    assert_eq!(out[1].6, vec![3.0, 6.0, 10.0, 15.0]);
}

/// N -> M restores where M exceeds the number of rows (empty blocks on both sides) and the
/// old layout is as uneven as it gets: every row on the first or on the last old rank.
#[test]
fn n_to_m_with_more_ranks_than_rows_and_uneven_parts() {
    for rows in 0..4u64 {
        for n in 1..=4u32 {
            for all_on_last in [false, true] {
                let mut b = vec![0u64];
                b.extend((1..n).map(|_| if all_on_last { 0 } else { rows }));
                b.push(rows);
                let parts: Vec<Vec<LoadedObject>> = local(n, |c| {
                    let d = Distribution::from_bounds(b.clone()).unwrap();
                    let mut v = DVec::<i32>::with_distribution(&c, d, 3).unwrap();
                    v.for_each_row_mut(|g, r| {
                        for (k, x) in r.iter_mut().enumerate() {
                            *x = (g * 10 + k as u64) as i32;
                        }
                    });
                    lazarus_state::to_loaded(&lazarus_state::save(&v).unwrap())
                })
                .unwrap();
                let infos = parts::infos(&parts);
                let want: Vec<i32> = (0..rows)
                    .flat_map(|g| (0..3).map(move |k| (g * 10 + k) as i32))
                    .collect();
                for m in 1..=6u32 {
                    let plan = Reshard::new(&infos, m).unwrap();
                    let got = local(m, |c| {
                        let mut fetch = parts::fetch_from(&parts);
                        let objs = plan.assemble(c.rank(), &mut fetch).unwrap();
                        let mut v = DVec::<i32>::with_width(&c, 1, 3).unwrap();
                        lazarus_state::restore(&mut v, objs).unwrap();
                        assert_eq!(
                            v.range(),
                            Distribution::even(rows, m as usize)
                                .unwrap()
                                .range(c.rank())
                        );
                        (v.gather(&c, Rank(0)).unwrap(), v.len())
                    })
                    .unwrap();
                    let ctx = format!("rows {rows}, {n} -> {m} ranks, all on last {all_on_last}");
                    assert_eq!(got[0].0.as_ref(), Some(&want), "{ctx}");
                    assert!(got.iter().all(|g| g.1 == rows), "{ctx}");
                }
            }
        }
    }
}

#[derive(Checkpoint)]
struct Table {
    #[checkpoint(serde, replicated)]
    m: HashMap<u64, u64>,
}

/// A replicated HashMap equal on every rank may still encode differently (postcard writes
/// it in the map's random iteration order): the byte comparison refuses it, and the
/// message must say why and what to use instead.
#[test]
fn replicated_hashmap_encoded_in_another_order_is_refused_with_the_btreemap_hint() {
    let mk = || Table {
        m: (0..16u64).map(|k| (k, k * k)).collect(),
    };
    let a = lazarus_state::to_loaded(&lazarus_state::save(&mk()).unwrap());
    // Each HashMap has its own random hash keys: find one encoded in another order.
    let b = (0..1000)
        .map(|_| lazarus_state::to_loaded(&lazarus_state::save(&mk()).unwrap()))
        .find(|b| b[0].data != a[0].data)
        .expect("16 entries hashed with 1000 random keys all iterate in one order");
    let parts = [a, b];
    let infos = parts::infos(&parts);
    let plan = Reshard::new(&infos, 3).unwrap();
    let mut fetch = parts::fetch_from(&parts);
    let e = plan.check(&mut fetch).unwrap_err().to_string();
    assert!(
        e.contains("field `m` differs between rank 0 and rank 1"),
        "{e}"
    );
    assert!(
        e.contains("a HashMap or HashSet encodes in a random order, use BTreeMap/BTreeSet"),
        "{e}"
    );
}
