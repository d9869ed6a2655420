//! The element types of a `DVec` and their distribution-independent reductions.

use crate::exact::ExactSum;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cmp::Ordering;
use std::fmt::Debug;

mod sealed {
    pub trait Sealed {}
}

/// A number that a `DVec` can hold: saved on the bulk path (raw little-endian), sent as
/// raw little-endian bytes, and reduced bit-identically whatever the distribution.
///
/// Implemented for `u8 i8 u16 i16 u32 i32 u64 i64 f32 f64`. Sums of floats are exact
/// ([`ExactSum`]) and rounded once; sums of integers wrap (two's complement), which is
/// associative, so both are independent of block boundaries. `min`/`max` use the IEEE
/// total order for floats (`-0.0 < +0.0`, NaN above +inf), again order-independent.
pub trait DElem:
    lazarus_state::Element
    + lazarus_net::Scalar
    + Serialize
    + DeserializeOwned
    + PartialEq
    + Debug
    + sealed::Sealed
{
    /// Adds `self` to `acc` exactly (floats) or wrapping (integers).
    fn add_to(self, acc: &mut SumAcc);
    /// Adds `self * other` to `acc` (exact product for floats, wrapping for integers).
    fn add_product_to(self, other: Self, acc: &mut SumAcc);
    /// The accumulated sum converted to `Self` (rounded once for floats).
    fn from_acc(acc: &SumAcc) -> Self;
    /// Total order used by `min`/`max`.
    fn total_cmp(&self, other: &Self) -> Ordering;
}

/// Accumulator of a distribution-independent sum: exact for floats, wrapping 128-bit for
/// integers (truncated to the element width at the end, which equals wrapping in it).
/// Serialisable (the [`ExactSum`] wire form plus the integer), so ranks exchange it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SumAcc {
    exact: ExactSum,
    int: i128,
}

impl SumAcc {
    /// The empty sum.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds another accumulator; merge order never changes the result.
    pub fn merge(&mut self, other: &SumAcc) {
        self.exact.merge(&other.exact);
        self.int = self.int.wrapping_add(other.int);
    }
}

macro_rules! int_elem {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl DElem for $t {
            #[inline]
            fn add_to(self, acc: &mut SumAcc) {
                acc.int = acc.int.wrapping_add(self as i128);
            }
            #[inline]
            fn add_product_to(self, other: Self, acc: &mut SumAcc) {
                acc.int = acc.int.wrapping_add((self as i128).wrapping_mul(other as i128));
            }
            fn from_acc(acc: &SumAcc) -> Self {
                acc.int as $t
            }
            fn total_cmp(&self, other: &Self) -> Ordering {
                self.cmp(other)
            }
        }
    )*};
}
int_elem!(u8, i8, u16, i16, u32, i32, u64, i64);

impl sealed::Sealed for f64 {}
impl DElem for f64 {
    #[inline]
    fn add_to(self, acc: &mut SumAcc) {
        acc.exact.add(self);
    }
    #[inline]
    fn add_product_to(self, other: Self, acc: &mut SumAcc) {
        acc.exact.add_product(self, other);
    }
    fn from_acc(acc: &SumAcc) -> Self {
        acc.exact.value()
    }
    fn total_cmp(&self, other: &Self) -> Ordering {
        f64::total_cmp(self, other)
    }
}

impl sealed::Sealed for f32 {}
impl DElem for f32 {
    #[inline]
    fn add_to(self, acc: &mut SumAcc) {
        acc.exact.add(f64::from(self));
    }
    #[inline]
    fn add_product_to(self, other: Self, acc: &mut SumAcc) {
        // 24 + 24 significant bits fit in 53: the f64 product is exact.
        acc.exact.add(f64::from(self) * f64::from(other));
    }
    /// Exact sum rounded to f64, then to f32 (deterministic; in rare ties this double
    /// rounding differs from a correctly rounded f32).
    fn from_acc(acc: &SumAcc) -> Self {
        acc.exact.value() as f32
    }
    fn total_cmp(&self, other: &Self) -> Ordering {
        f32::total_cmp(self, other)
    }
}

/// Fixed block length, in elements, of ordered custom reductions ([`crate::DVec::reduce`]).
pub const REDUCE_BLOCK: u64 = 1024;

/// One rank's contribution to an ordered custom reduction: partials of the fixed global
/// blocks it holds entirely, and the mapped values of blocks it holds only partly.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) enum BlockPart<A> {
    /// `fold(identity, block)` of a block held entirely by one rank.
    Whole(u64, A),
    /// Mapped values of the part of block `.0` starting at global index `.1`.
    Fragment(u64, u64, Vec<A>),
}

/// Helpers for reductions whose result must not depend on the distribution: the array is
/// cut into fixed global blocks of [`REDUCE_BLOCK`] elements; each block is folded left to
/// right from `identity`, and block results are folded left to right from `identity`.
/// A block split between ranks travels as mapped values and is folded where it is whole.
pub(crate) struct BlockParts;

impl BlockParts {
    /// The parts of the block range `start..start+values.len()` held by one rank.
    pub(crate) fn local<T, A: Clone>(
        start: u64,
        values: &[T],
        identity: &A,
        map: &impl Fn(u64, &T) -> A,
        combine: &impl Fn(A, A) -> A,
    ) -> Vec<BlockPart<A>> {
        let mut parts = Vec::new();
        let end = start + values.len() as u64;
        let mut g = start;
        while g < end {
            let block = g / REDUCE_BLOCK;
            let (bs, be) = (block * REDUCE_BLOCK, (block + 1) * REDUCE_BLOCK);
            let stop = be.min(end);
            let slice = values
                .get((g - start) as usize..(stop - start) as usize)
                .unwrap_or(&[]);
            if g == bs && stop == be {
                let mut acc = identity.clone();
                for (i, x) in slice.iter().enumerate() {
                    acc = combine(acc, map(g + i as u64, x));
                }
                parts.push(BlockPart::Whole(block, acc));
            } else {
                let mapped = slice
                    .iter()
                    .enumerate()
                    .map(|(i, x)| map(g + i as u64, x))
                    .collect();
                parts.push(BlockPart::Fragment(block, g, mapped));
            }
            g = stop;
        }
        parts
    }

    /// Combines every rank's parts (given in rank order = global order).
    pub(crate) fn finish<A: Clone>(
        parts: impl IntoIterator<Item = BlockPart<A>>,
        identity: &A,
        combine: &impl Fn(A, A) -> A,
    ) -> A {
        let mut acc = identity.clone();
        // The block being assembled from fragments: (block id, its running fold).
        let mut open: Option<(u64, A)> = None;
        for p in parts {
            match p {
                BlockPart::Whole(_, v) => {
                    if let Some((_, f)) = open.take() {
                        acc = combine(acc, f);
                    }
                    acc = combine(acc, v);
                }
                BlockPart::Fragment(b, _, vals) => {
                    let mut cur = match open.take() {
                        Some((ob, f)) if ob == b => f,
                        Some((_, f)) => {
                            acc = combine(acc, f);
                            identity.clone()
                        }
                        None => identity.clone(),
                    };
                    for v in vals {
                        cur = combine(cur, v);
                    }
                    open = Some((b, cur));
                }
            }
        }
        if let Some((_, f)) = open {
            acc = combine(acc, f);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ordered_fold_ignores_block_boundaries(
            xs in prop::collection::vec(-1e3f64..1e3, 0..5000),
            mut cuts in prop::collection::vec(0usize..5000, 0..7),
        ) {
            // A deliberately non-associative combine: naive float addition.
            let map = |_g: u64, x: &f64| *x;
            let combine = |a: f64, b: f64| a + b;
            let whole = BlockParts::finish(BlockParts::local(0, &xs, &0.0, &map, &combine), &0.0, &combine);
            cuts.iter_mut().for_each(|c| *c = (*c).min(xs.len()));
            cuts.sort_unstable();
            let mut parts = Vec::new();
            let mut at = 0;
            for &c in cuts.iter().chain(std::iter::once(&xs.len())) {
                parts.extend(BlockParts::local(at as u64, &xs[at..c], &0.0, &map, &combine));
                at = c;
            }
            let split = BlockParts::finish(parts, &0.0, &combine);
            prop_assert_eq!(whole.to_bits(), split.to_bits());
        }

        #[test]
        fn sums_are_split_independent(xs in prop::collection::vec(any::<f32>(), 0..300), cut in 0usize..300) {
            let cut = cut.min(xs.len());
            let mut a = SumAcc::new();
            xs.iter().for_each(|x| x.add_to(&mut a));
            let (mut l, mut r) = (SumAcc::new(), SumAcc::new());
            xs[..cut].iter().for_each(|x| x.add_to(&mut l));
            xs[cut..].iter().for_each(|x| x.add_to(&mut r));
            r.merge(&l);
            let r: SumAcc = postcard::from_bytes(&postcard::to_allocvec(&r).unwrap()).unwrap();
            prop_assert_eq!(f32::from_acc(&a).to_bits(), f32::from_acc(&r).to_bits());
        }
    }

    #[test]
    fn integer_sums_wrap_like_the_type() {
        let mut a = SumAcc::new();
        for x in [u8::MAX, 2, 3] {
            x.add_to(&mut a);
        }
        assert_eq!(u8::from_acc(&a), 4);
        let mut d = SumAcc::new();
        (-3i64).add_product_to(4, &mut d);
        assert_eq!(i64::from_acc(&d), -12);
    }
}
