//! `ExactSums::allreduce` on real multi-rank worlds: any partition of the same addends over
//! 1..=8 ranks, in any order, gives bit-identical per-element sums; the naive
//! `Comm::allreduce(ReduceOp::Sum)` of per-rank float sums does not (docs/DIST.md, "Which
//! reductions depend on the number of ranks").

use lazarus_dist::{DistErrorKind, ExactSums};
use lazarus_net::{local, loopback_comms, Comm, NetConfig, ReduceOp};
use proptest::prelude::*;

/// Values over many magnitudes and both signs, so float sums depend on the order.
fn value(i: u64, seed: u64) -> f64 {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let m = (x % 2001) as f64 - 1000.0;
    m * 10f64.powi(((x >> 13) % 33) as i32 - 16)
}

/// A deterministic permutation of `0..n` from `seed` (xorshift Fisher-Yates).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut s = seed | 1;
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
    v
}

/// The addends: (element, value) pairs.
fn addends(len: usize, count: usize, seed: u64) -> Vec<(usize, f64)> {
    (0..count as u64)
        .map(|i| {
            (
                (value(i, seed ^ 0x55).to_bits() as usize) % len.max(1),
                value(i, seed),
            )
        })
        .collect()
}

/// Rank `comm.rank()` accumulates the addends `owner` gives it, in `order`, and reduces.
fn reduce_on(
    comm: &Comm,
    len: usize,
    adds: &[(usize, f64)],
    owner: &[u32],
    order: &[usize],
) -> Vec<u64> {
    let mut s = ExactSums::new(len);
    for &k in order {
        if owner[k] == comm.rank().0 {
            let (i, x) = adds[k];
            s.add_at(i, &[x]).unwrap();
        }
    }
    s.allreduce(comm)
        .unwrap()
        .values()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn any_partition_over_1_to_8_ranks_gives_the_same_bits(
        len in 1usize..24, count in 0usize..400, n in 1u32..=8, seed in any::<u64>(),
        contiguous in any::<bool>(),
    ) {
        let adds = addends(len, count, seed);
        // The reference: one rank, addends in their natural order.
        let natural: Vec<usize> = (0..count).collect();
        let one = vec![0u32; count];
        let reference = local(1, |c| reduce_on(&c, len, &adds, &one, &natural)).unwrap().remove(0);
        // Each element's sum accumulated sequentially on its own gives the same bits.
        for (e, bits) in reference.iter().enumerate() {
            let mut s = ExactSums::new(1);
            adds.iter().filter(|a| a.0 == e).for_each(|a| s.add_at(0, &[a.1]).unwrap());
            prop_assert_eq!(s.values()[0].to_bits(), *bits);
        }
        // n ranks: contiguous blocks or a scattered assignment, each rank in its own order.
        let owner: Vec<u32> = if contiguous {
            (0..count).map(|k| (k * n as usize / count.max(1)) as u32).collect()
        } else {
            shuffled(count, seed ^ 1).iter().map(|&k| (k % n as usize) as u32).collect()
        };
        let order = shuffled(count, seed ^ 2);
        let got = local(n, |c| reduce_on(&c, len, &adds, &owner, &order)).unwrap();
        for (r, g) in got.iter().enumerate() {
            prop_assert_eq!(g, &reference, "rank {} of {}", r, n);
        }
    }
}

/// Runs `f` on `n` ranks connected by real TCP on loopback, one thread each.
fn over_tcp<T: Send + 'static>(
    n: u32,
    f: impl Fn(Comm) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let comms = loopback_comms(n, NetConfig::default()).expect("loopback ranks");
    let hs: Vec<_> = comms
        .into_iter()
        .map(|c| {
            let f = f.clone();
            std::thread::spawn(move || f(c))
        })
        .collect();
    hs.into_iter()
        .map(|h| h.join().expect("rank thread"))
        .collect()
}

#[test]
fn over_tcp_every_world_size_agrees_with_one_rank() {
    const LEN: usize = 300;
    const COUNT: usize = 20_000;
    let adds = std::sync::Arc::new(addends(LEN, COUNT, 42));
    let natural: Vec<usize> = (0..COUNT).collect();
    let reference = {
        let adds = adds.clone();
        over_tcp(1, move |c| {
            reduce_on(&c, LEN, &adds, &[0; COUNT], &(0..COUNT).collect::<Vec<_>>())
        })
        .remove(0)
    };
    for n in [2u32, 3, 5, 8] {
        let owner: std::sync::Arc<Vec<u32>> =
            std::sync::Arc::new((0..COUNT).map(|k| (k % n as usize) as u32).collect());
        let (adds, natural) = (adds.clone(), natural.clone());
        let got = over_tcp(n, move |c| reduce_on(&c, LEN, &adds, &owner, &natural));
        assert!(
            got.iter().all(|g| g == &reference),
            "{n} ranks over TCP differ"
        );
    }
}

/// Keeps the documentation honest: per-rank float sums combined with `ReduceOp::Sum`
/// depend on the number of ranks, while `ExactSums` does not, on the same data.
#[test]
fn naive_float_allreduce_depends_on_the_rank_count_exact_sums_do_not() {
    const COUNT: usize = 4000;
    let adds = addends(1, COUNT, 7);
    let mut naive = Vec::new();
    let mut exact = Vec::new();
    for n in 1..=8u32 {
        let got = local(n, |c| {
            let mine = (0..COUNT).filter(|k| k * n as usize / COUNT == c.rank().index());
            let mut x = [mine.clone().map(|k| adds[k].1).sum::<f64>()];
            c.allreduce(&mut x, ReduceOp::Sum).unwrap();
            let mut s = ExactSums::new(1);
            mine.for_each(|k| s.add_at(0, &[adds[k].1]).unwrap());
            (
                x[0].to_bits(),
                s.allreduce(&c).unwrap().values()[0].to_bits(),
            )
        })
        .unwrap();
        naive.push(got[0].0);
        exact.push(got[0].1);
    }
    assert!(exact.iter().all(|&e| e == exact[0]), "{exact:?}");
    naive.sort_unstable();
    naive.dedup();
    assert!(
        naive.len() > 1,
        "the naive sum happened not to depend on the rank count"
    );
}

#[test]
fn different_lengths_are_an_error_on_every_rank_naming_two_ranks() {
    let got = local(4, |c| {
        let len = if c.rank().0 == 2 { 5 } else { 4 };
        ExactSums::new(len).allreduce(&c).map(|_| ()).unwrap_err()
    })
    .unwrap();
    for e in got {
        assert_eq!(e.kind(), DistErrorKind::InvalidArgument);
        let m = e.to_string();
        assert!(
            m.contains("rank 2 passed 5 sums") && m.contains("passed 4"),
            "{m}"
        );
        assert!(m.contains("same length"), "{m}");
    }
}
