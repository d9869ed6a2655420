//! What recording and checking a serde value's layout costs, against the postcard
//! encoding and decoding it rides on (docs/PERFORMANCE.md, "Serde layouts"). Not a
//! timed test: it prints the ratios. Run:
//! `cargo test --release -p lazarus-state --test layout_cost -- --ignored --nocapture`

use lazarus_state::{restore, save, to_loaded, Serde};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Serialize, Deserialize, Default, Clone, PartialEq, Debug)]
struct Particle {
    id: u32,
    pos: [f64; 3],
    kind: Kind,
}

#[derive(Serialize, Deserialize, Default, Clone, PartialEq, Debug)]
enum Kind {
    #[default]
    Free,
    Bound(u16),
}

fn best_of<R>(n: usize, mut f: impl FnMut() -> R) -> f64 {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn measure<T>(what: &str, value: T)
where
    T: Serialize + serde::de::DeserializeOwned + Default + PartialEq + std::fmt::Debug,
{
    let wrapped = Serde(value);
    let bytes = postcard::to_stdvec(&wrapped.0).unwrap();
    let encode = best_of(5, || postcard::to_stdvec(&wrapped.0).unwrap());
    let decode = best_of(5, || postcard::from_bytes::<T>(&bytes).unwrap());
    let objs = to_loaded(&save(&wrapped).unwrap());
    let saving = best_of(5, || save(&wrapped).unwrap().len());
    let restoring = best_of(5, || {
        let mut back = Serde(T::default());
        restore(&mut back, objs.clone()).unwrap();
        back
    });
    let mut back = Serde(T::default());
    restore(&mut back, objs.clone()).unwrap();
    assert_eq!(back.0, wrapped.0);
    println!(
        "{what}: {} postcard bytes; save {:.1} ms = {:.2}x encode ({:.1} ms), restore {:.1} ms = {:.2}x decode ({:.1} ms); layout {:?}",
        bytes.len(),
        saving * 1e3,
        saving / encode,
        encode * 1e3,
        restoring * 1e3,
        restoring / decode,
        decode * 1e3,
        objs[0].info.layout,
    );
}

#[test]
#[ignore = "a measurement; run with --release --ignored --nocapture"]
fn layout_cost_against_postcard() {
    let n = 1_000_000usize;
    measure("Vec<u8> x 1M", vec![7u8; n]);
    measure(
        "Vec<f64> x 1M",
        (0..n).map(|i| i as f64).collect::<Vec<_>>(),
    );
    measure(
        "Vec<Particle> x 1M",
        (0..n)
            .map(|i| Particle {
                id: i as u32,
                pos: [i as f64; 3],
                kind: if i % 3 == 0 {
                    Kind::Bound(i as u16)
                } else {
                    Kind::Free
                },
            })
            .collect::<Vec<_>>(),
    );
    // The worst case: elements whose layouts mostly differ (every inner length and
    // None/Some pattern is another element layout), so most elements are traced in full.
    measure(
        "Vec<Vec<Option<u8>>> x 200k, mixed shapes",
        (0..n / 5)
            .map(|i| {
                (0..i % 7)
                    .map(|j| ((i >> j) & 1 == 1).then_some(j as u8))
                    .collect()
            })
            .collect::<Vec<Vec<Option<u8>>>>(),
    );
    measure(
        "BTreeMap<String, Vec<u32>> x 100k",
        (0..n / 10)
            .map(|i| (format!("k{i}"), vec![i as u32; 4]))
            .collect::<BTreeMap<_, _>>(),
    );
}
