//! Exact (error-free) summation of IEEE-754 binary64 values, the basis of reductions that
//! are bit-identical whatever the distribution.
//!
//! Every finite `f64` is an integer multiple of 2^-1074 below 2^1024, so the exact sum of
//! any number of them is a big fixed-point integer. [`ExactSum`] keeps it in 32-bit digits
//! held by `i64` limbs (lazy carries), so adding is a few integer additions and merging two
//! accumulators is limb-wise addition: associative and commutative, hence independent of
//! how elements were split over ranks or in which order partials are combined. Only the
//! final [`ExactSum::value`] rounds, once, to nearest-even. [`ExactSums`] is one exact sum
//! per element of a vector (centroid sums, histograms, gradients).
//!
//! # Wire form (serde)
//!
//! An accumulator serialises as `(head: u8, lo: u8, digits: [u32])`: `head` bit 0 = +inf
//! seen, bit 1 = -inf seen, bit 2 = NaN seen, bit 3 = the finite part is negative; the
//! magnitude of the finite part is `sum(digits[i] * 2^(32 (lo + i)))` in units of 2^-1074,
//! without leading or trailing zero digits (so typically 3 to 5 digits, ~15-25 bytes with
//! postcard instead of 545). Decoding refuses any other form (unknown head bits, a zero
//! digit at either end, a "negative zero", digits past the accumulator's range or above
//! its carry headroom), so a decoded accumulator can always be merged without overflow.

use serde::{Deserialize, Serialize};

/// Bits per digit; the `i64` limbs have 31 bits of headroom for lazy carries.
const DIGIT_BITS: u32 = 32;
const DIGIT_MASK: i64 = (1 << DIGIT_BITS) - 1;
/// 2^-1074 .. 2^1024 needs 2098 bits; plus 64 bits for up to 2^64 addends: 68 digits.
const LIMBS: usize = 68;
/// Additions between carry normalisations: each adds < 2^32 per limb, so 2^30 of them
/// stay far below i64 overflow even on top of a normalised limb.
const NORMALISE_EVERY: u32 = 1 << 30;

/// Largest magnitude of the top limb a decoded accumulator may carry: sums of up to 2^64
/// finite values need < 2^18 there; the rest is headroom for merging decoded partials.
const TOP_LIMIT: u64 = 1 << 40;

/// Exact sum of f64 values (and of exact products via [`ExactSum::add_product`]),
/// rounded once at the end. Infinities and NaN are tracked apart: any NaN, or both
/// infinities, yield NaN; one infinity yields that infinity.
///
/// Two accumulators are equal when they hold the same exact sum and saw the same
/// non-finite values. Serialisable (compact; see the module doc), so partial sums can be
/// sent to other ranks or saved in a checkpoint (`#[checkpoint(serde)]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(into = "Wire", try_from = "Wire")]
pub struct ExactSum {
    limbs: [i64; LIMBS],
    pending: u32,
    pos_inf: bool,
    neg_inf: bool,
    nan: bool,
}

impl Default for ExactSum {
    fn default() -> Self {
        Self::new()
    }
}

impl ExactSum {
    /// The empty sum (value `+0.0`).
    pub fn new() -> Self {
        ExactSum {
            limbs: [0; LIMBS],
            pending: 0,
            pos_inf: false,
            neg_inf: false,
            nan: false,
        }
    }

    /// Adds `x` exactly.
    #[inline]
    pub fn add(&mut self, x: f64) {
        let bits = x.to_bits();
        let neg = bits >> 63 != 0;
        let biased = ((bits >> 52) & 0x7ff) as u32;
        let frac = bits & ((1u64 << 52) - 1);
        if biased == 0x7ff {
            if frac != 0 {
                self.nan = true;
            } else if neg {
                self.neg_inf = true;
            } else {
                self.pos_inf = true;
            }
            return;
        }
        // value = mant * 2^(shift - 1074)
        let (mant, shift) = if biased == 0 {
            (frac, 0)
        } else {
            (frac | (1u64 << 52), biased - 1)
        };
        if mant == 0 {
            return;
        }
        let limb = (shift / DIGIT_BITS) as usize;
        let off = shift % DIGIT_BITS;
        let wide = (mant as u128) << off; // < 2^85: three digits
        let digits = [
            (wide as u64 & DIGIT_MASK as u64) as i64,
            ((wide >> 32) as u64 & DIGIT_MASK as u64) as i64,
            ((wide >> 64) as u64 & DIGIT_MASK as u64) as i64,
        ];
        for (k, d) in digits.into_iter().enumerate() {
            // limb + 2 <= 2097/32 + 2 = 67 < LIMBS: never out of bounds.
            if let Some(l) = self.limbs.get_mut(limb + k) {
                if neg {
                    *l -= d;
                } else {
                    *l += d;
                }
            }
        }
        self.pending += 1;
        if self.pending >= NORMALISE_EVERY {
            self.normalise();
        }
    }

    /// Adds the exact product `a * b` (as `p + e` with `e = fma(a, b, -p)`; exact unless
    /// the product under- or overflows, and deterministic in every case).
    #[inline]
    pub fn add_product(&mut self, a: f64, b: f64) {
        let p = a * b;
        self.add(p);
        if p.is_finite() {
            self.add(a.mul_add(b, -p));
        }
    }

    /// Adds another accumulator (exactly; order of merges never matters).
    pub fn merge(&mut self, other: &ExactSum) {
        self.normalise();
        let mut o = other.clone();
        o.normalise();
        for (a, b) in self.limbs.iter_mut().zip(o.limbs.iter()) {
            *a += *b;
        }
        self.pending = 1;
        self.normalise();
        self.pos_inf |= o.pos_inf;
        self.neg_inf |= o.neg_inf;
        self.nan |= o.nan;
    }

    /// Propagates carries so every limb but the last is a digit in `0..2^32`.
    fn normalise(&mut self) {
        if self.pending == 0 {
            return;
        }
        let mut carry = 0i64;
        for l in self.limbs.iter_mut() {
            let v = *l + carry;
            *l = v & DIGIT_MASK;
            carry = v >> DIGIT_BITS; // arithmetic shift: floor division
        }
        // The top limb keeps the sign (two's complement over the whole number).
        if let Some(top) = self.limbs.last_mut() {
            *top += carry << DIGIT_BITS;
        }
        self.pending = 0;
    }

    /// The exact sum rounded to the nearest f64 (ties to even); `±inf` on overflow; an exact
    /// zero is `+0.0`.
    pub fn value(&self) -> f64 {
        if self.nan || (self.pos_inf && self.neg_inf) {
            return f64::NAN;
        }
        if self.pos_inf {
            return f64::INFINITY;
        }
        if self.neg_inf {
            return f64::NEG_INFINITY;
        }
        let (limbs, neg) = self.magnitude();
        let mut mag = [0u64; LIMBS];
        for (m, l) in mag.iter_mut().zip(limbs.iter()) {
            *m = *l as u64;
        }
        let sign = if neg { 1u64 << 63 } else { 0 };
        let Some(top) = mag.iter().rposition(|&d| d != 0) else {
            return f64::from_bits(sign);
        };
        let p = top as u32 * DIGIT_BITS + (63 - mag[top].leading_zeros()); // highest bit
        let bit = |i: u32| -> u64 {
            let (l, o) = ((i / DIGIT_BITS) as usize, i % DIGIT_BITS);
            (mag.get(l).copied().unwrap_or(0) >> o) & 1
        };
        if p < 53 {
            // M * 2^-1074 with M < 2^53: the bit pattern of the f64 is M itself.
            let m = mag[0] | (mag[1] << 32);
            return f64::from_bits(sign | m);
        }
        let mut m = 0u64;
        for i in (p - 52..=p).rev() {
            m = (m << 1) | bit(i);
        }
        let round = bit(p - 53) == 1;
        let sticky = (0..p - 53).any(|i| bit(i) == 1);
        let mut p = p;
        if round && (sticky || m & 1 == 1) {
            m += 1;
            if m == 1 << 53 {
                m >>= 1;
                p += 1;
            }
        }
        let biased = u64::from(p) - 51;
        if biased >= 0x7ff {
            return f64::from_bits(sign | (0x7ffu64 << 52));
        }
        f64::from_bits(sign | (biased << 52) | (m & ((1u64 << 52) - 1)))
    }

    /// The normalised limbs of the magnitude of the finite part, and whether it is
    /// negative: limbs `0..LIMBS-1` are digits, the top one is non-negative.
    fn magnitude(&self) -> ([i64; LIMBS], bool) {
        let mut s = self.clone();
        s.pending = 1;
        s.normalise();
        let neg = s.limbs[LIMBS - 1] < 0;
        if neg {
            // Negating every limb and re-normalising yields the digits of the magnitude.
            for l in s.limbs.iter_mut() {
                *l = -*l;
            }
            s.pending = 1;
            s.normalise();
        }
        (s.limbs, neg)
    }

    fn flags(&self) -> u8 {
        u8::from(self.pos_inf) | u8::from(self.neg_inf) << 1 | u8::from(self.nan) << 2
    }
}

impl PartialEq for ExactSum {
    fn eq(&self, other: &Self) -> bool {
        self.flags() == other.flags() && self.magnitude() == other.magnitude()
    }
}

impl Eq for ExactSum {}

/// Head bits of the wire form (module doc).
const HEAD_POS_INF: u8 = 1;
const HEAD_NEG_INF: u8 = 2;
const HEAD_NAN: u8 = 4;
const HEAD_NEGATIVE: u8 = 8;

/// The serde form of an [`ExactSum`] (module doc, "Wire form").
#[derive(Serialize, Deserialize)]
struct Wire {
    head: u8,
    lo: u8,
    digits: Vec<u32>,
}

impl From<ExactSum> for Wire {
    fn from(s: ExactSum) -> Wire {
        let (mag, neg) = s.magnitude();
        // Digits 0..=LIMBS: the non-negative top limb may need a second digit.
        let mut d = [0u32; LIMBS + 1];
        for (o, l) in d.iter_mut().zip(mag.iter()) {
            *o = (*l & DIGIT_MASK) as u32;
        }
        d[LIMBS] = (mag[LIMBS - 1] >> DIGIT_BITS) as u32;
        let lo = d.iter().position(|&x| x != 0).unwrap_or(0);
        let hi = d.iter().rposition(|&x| x != 0).map_or(lo, |h| h + 1);
        let nonzero = hi > lo;
        Wire {
            head: s.flags() | if neg && nonzero { HEAD_NEGATIVE } else { 0 },
            lo: lo as u8,
            digits: d.get(lo..hi).unwrap_or_default().to_vec(),
        }
    }
}

impl TryFrom<Wire> for ExactSum {
    type Error = String;

    fn try_from(w: Wire) -> Result<ExactSum, String> {
        if w.head & !(HEAD_POS_INF | HEAD_NEG_INF | HEAD_NAN | HEAD_NEGATIVE) != 0 {
            return Err(format!("exact sum: unknown head bits {:#04x}", w.head));
        }
        let lo = usize::from(w.lo);
        let end = lo + w.digits.len();
        match (w.digits.first(), w.digits.last()) {
            (Some(0), _) | (_, Some(0)) => {
                return Err("exact sum: digits with a leading or trailing zero".into())
            }
            (None, _) if w.lo != 0 || w.head & HEAD_NEGATIVE != 0 => {
                return Err("exact sum: non-canonical zero".into())
            }
            _ => {}
        }
        if end > LIMBS + 1 {
            return Err(format!(
                "exact sum: digits up to {end} exceed the {} of the accumulator",
                LIMBS + 1
            ));
        }
        let mut s = ExactSum::new();
        for (i, &d) in (lo..end).zip(w.digits.iter()) {
            match i.cmp(&(LIMBS - 1)) {
                std::cmp::Ordering::Less => s.limbs[i] = i64::from(d),
                std::cmp::Ordering::Equal => s.limbs[i] |= i64::from(d),
                std::cmp::Ordering::Greater => s.limbs[LIMBS - 1] |= i64::from(d) << DIGIT_BITS,
            }
        }
        if s.limbs[LIMBS - 1] as u64 > TOP_LIMIT {
            return Err("exact sum: magnitude beyond the carry headroom".into());
        }
        if w.head & HEAD_NEGATIVE != 0 {
            for l in s.limbs.iter_mut() {
                *l = -*l;
            }
            s.pending = 1;
            s.normalise();
        }
        s.pos_inf = w.head & HEAD_POS_INF != 0;
        s.neg_inf = w.head & HEAD_NEG_INF != 0;
        s.nan = w.head & HEAD_NAN != 0;
        Ok(s)
    }
}

/// One exact sum per element of a vector: the per-element counterpart of [`ExactSum`]
/// for sums of vectors (k-means centroid sums, histograms of weights, gradients).
///
/// Each element is exact and rounded once by [`ExactSums::values`], and merging is exact,
/// so [`ExactSums::allreduce`] gives the same bits on every number of ranks and for every
/// way the addends were split between them. The price is memory: ~550 bytes per element
/// while accumulating (use it for vectors up to ~10^5 elements); on the wire an element
/// takes ~15-25 bytes.
///
/// ```
/// use lazarus_dist::ExactSums;
/// let mut s = ExactSums::new(2);
/// s.add_at(0, &[1e100, 1.0]).unwrap();
/// s.add_at(0, &[-1e100, 2.0]).unwrap();
/// assert_eq!(s.values(), [0.0, 3.0]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExactSums {
    sums: Vec<ExactSum>,
}

impl ExactSums {
    /// `len` empty sums.
    pub fn new(len: usize) -> Self {
        ExactSums {
            sums: vec![ExactSum::new(); len],
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.sums.len()
    }

    /// True when there is no element.
    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }

    /// The sums, one per element.
    pub fn as_slice(&self) -> &[ExactSum] {
        &self.sums
    }

    /// Element `i`'s accumulator, or `None` past the end.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut ExactSum> {
        self.sums.get_mut(i)
    }

    /// Adds `values[k]` to element `offset + k` for every `k` (a row of a matrix of sums:
    /// `add_at(label * d, point)`). Errors, adding nothing, when the row does not fit.
    pub fn add_at(&mut self, offset: usize, values: &[f64]) -> crate::Result<()> {
        let len = self.sums.len();
        let row = offset
            .checked_add(values.len())
            .and_then(|end| self.sums.get_mut(offset..end))
            .ok_or_else(|| {
                crate::DistError::invalid(format!(
                    "ExactSums::add_at: {} values at offset {offset} do not fit in {len} sums",
                    values.len()
                ))
            })?;
        for (s, &x) in row.iter_mut().zip(values) {
            s.add(x);
        }
        Ok(())
    }

    /// Adds `other` element-wise (exactly). Errors, changing nothing, when the lengths
    /// differ.
    pub fn merge(&mut self, other: &ExactSums) -> crate::Result<()> {
        if other.len() != self.len() {
            return Err(crate::DistError::invalid(format!(
                "ExactSums::merge: {} sums and {} sums",
                self.len(),
                other.len()
            )));
        }
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            a.merge(b);
        }
        Ok(())
    }

    /// Every element's sum rounded once to the nearest f64 ([`ExactSum::value`]).
    pub fn values(&self) -> Vec<f64> {
        self.sums.iter().map(ExactSum::value).collect()
    }
}

impl From<Vec<ExactSum>> for ExactSums {
    fn from(sums: Vec<ExactSum>) -> Self {
        ExactSums { sums }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(xs: &[f64]) -> f64 {
        let mut s = ExactSum::new();
        for &x in xs {
            s.add(x);
        }
        s.value()
    }

    #[test]
    fn simple_values_are_exact() {
        assert_eq!(exact(&[]).to_bits(), 0.0f64.to_bits());
        assert_eq!(exact(&[1.0, 2.0]), 3.0);
        assert_eq!(exact(&[1e100, 1.0, -1e100]), 1.0);
        assert_eq!(exact(&[0.1, 0.2, -0.3]), 2.7755575615628914e-17);
        assert_eq!(exact(&[-1.5]), -1.5);
        assert_eq!(exact(&[f64::MIN_POSITIVE / 4.0]), f64::MIN_POSITIVE / 4.0);
        assert_eq!(exact(&[f64::MAX, f64::MAX]), f64::INFINITY);
        assert_eq!(exact(&[-f64::MAX, -f64::MAX]), f64::NEG_INFINITY);
        assert!(exact(&[f64::INFINITY, f64::NEG_INFINITY]).is_nan());
        assert_eq!(exact(&[f64::MAX, 1.0, -f64::MAX]), 1.0);
        assert_eq!(exact(&[5e-324, 5e-324]), 1e-323);
    }

    #[test]
    fn ties_round_to_even() {
        // 2^53 + 1 is a tie between 2^53 and 2^53 + 2: even mantissa wins.
        let two53 = 9007199254740992.0;
        assert_eq!(exact(&[two53, 1.0]), two53);
        assert_eq!(exact(&[two53, 1.0, 1e-300]), two53 + 2.0);
        assert_eq!(exact(&[two53 + 2.0, 1.0]), two53 + 4.0);
        assert_eq!(exact(&[-two53, -1.0]), -two53);
    }

    fn finite() -> impl Strategy<Value = f64> {
        prop_oneof![
            -1e6f64..1e6,
            any::<f64>().prop_filter("finite", |x| x.is_finite() && x.abs() < 1e300),
            (-1000i64..1000).prop_map(|i| i as f64 * 0.125),
        ]
    }

    proptest! {
        #[test]
        fn order_and_splitting_never_change_the_bits(
            xs in prop::collection::vec(finite(), 0..200), seed in any::<u64>(), cut in 0usize..200
        ) {
            let a = exact(&xs);
            let mut ys = xs.clone();
            // deterministic shuffle from the seed
            let mut s = seed | 1;
            for i in (1..ys.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                ys.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let cut = cut.min(ys.len());
            let mut l = ExactSum::new();
            ys[..cut].iter().for_each(|&x| l.add(x));
            let mut r = ExactSum::new();
            ys[cut..].iter().for_each(|&x| r.add(x));
            r.merge(&l);
            let wire: ExactSum = postcard::from_bytes(&postcard::to_allocvec(&r).unwrap()).unwrap();
            prop_assert_eq!(a.to_bits(), wire.value().to_bits());
            prop_assert_eq!(&wire, &r);
        }

        #[test]
        fn small_integer_sums_match_naive(xs in prop::collection::vec(-1000i64..1000, 0..100)) {
            let f: Vec<f64> = xs.iter().map(|&x| x as f64 / 8.0).collect();
            let naive: f64 = f.iter().sum(); // exact: all partials representable
            prop_assert_eq!(exact(&f), naive);
        }

        #[test]
        fn two_values_match_ieee_addition(a in finite(), b in finite()) {
            // IEEE addition of two values is correctly rounded, so it must agree.
            // (An exact zero is +0.0 here, while IEEE gives -0.0 for -0.0 + -0.0.)
            let (x, y) = (exact(&[a, b]), a + b);
            prop_assert!(x == y && (x != 0.0 || x.to_bits() == 0), "{} + {}: {} vs {}", a, b, x, y);
        }
    }

    fn any_sum() -> impl Strategy<Value = ExactSum> {
        let special = prop_oneof![
            8 => Just(0.0),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
            1 => Just(f64::NAN),
        ];
        (
            prop::collection::vec(
                prop_oneof![4 => finite(), 1 => special, 1 => any::<f64>()],
                0..20,
            ),
            0usize..4,
        )
            .prop_map(|(xs, big)| {
                let mut s = ExactSum::new();
                xs.iter().for_each(|&x| s.add(x));
                // Push the top limb up: many maximal values.
                for _ in 0..big * 1000 {
                    s.add(f64::MAX);
                }
                s
            })
    }

    proptest! {
        #[test]
        fn wire_form_round_trips_and_is_canonical(s in any_sum()) {
            let bytes = postcard::to_allocvec(&s).unwrap();
            let back: ExactSum = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &s);
            prop_assert_eq!(back.value().to_bits(), s.value().to_bits());
            prop_assert_eq!(postcard::to_allocvec(&back).unwrap(), bytes);
        }

        #[test]
        fn any_decoded_bytes_reencode_identically_and_merge_safely(
            bytes in prop::collection::vec(any::<u8>(), 0..120)
        ) {
            if let Ok(s) = postcard::from_bytes::<ExactSum>(&bytes) {
                let again = postcard::to_allocvec(&s).unwrap();
                let t: ExactSum = postcard::from_bytes(&again).unwrap();
                prop_assert_eq!(&t, &s);
                let mut m = s.clone();
                for _ in 0..64 {
                    m.merge(&s);
                }
                let _ = m.value();
            }
        }
    }

    #[test]
    fn wire_form_is_compact_and_refuses_non_canonical_forms() {
        let mut s = ExactSum::new();
        for x in [1.5, -0.25, 1e10] {
            s.add(x);
        }
        let b = postcard::to_allocvec(&s).unwrap();
        assert!(b.len() <= 16, "{} bytes: {b:?}", b.len());
        let zero = postcard::to_allocvec(&ExactSum::new()).unwrap();
        assert_eq!(zero, [0, 0, 0]);
        let bad = |w: Wire| ExactSum::try_from(w).unwrap_err();
        assert!(bad(Wire {
            head: 16,
            lo: 0,
            digits: vec![]
        })
        .contains("head"));
        assert!(bad(Wire {
            head: 0,
            lo: 3,
            digits: vec![]
        })
        .contains("zero"));
        assert!(bad(Wire {
            head: 8,
            lo: 0,
            digits: vec![]
        })
        .contains("zero"));
        assert!(bad(Wire {
            head: 0,
            lo: 0,
            digits: vec![0, 1]
        })
        .contains("leading"));
        assert!(bad(Wire {
            head: 0,
            lo: 0,
            digits: vec![1, 0]
        })
        .contains("trailing"));
        assert!(bad(Wire {
            head: 0,
            lo: 60,
            digits: vec![1; 10]
        })
        .contains("exceed"));
        assert!(bad(Wire {
            head: 0,
            lo: 68,
            digits: vec![1 << 9]
        })
        .contains("headroom"));
        assert!(bad(Wire {
            head: 0,
            lo: 68,
            digits: vec![u32::MAX]
        })
        .contains("headroom"));
        // The largest allowed top digit decodes and merges.
        let top = ExactSum::try_from(Wire {
            head: 8,
            lo: 68,
            digits: vec![1 << 8],
        })
        .unwrap();
        assert_eq!(top.value(), f64::NEG_INFINITY);
    }

    #[test]
    fn equality_ignores_pending_carries() {
        let mut a = ExactSum::new();
        let mut b = ExactSum::new();
        for x in [3.0, -1.0, 0.5] {
            a.add(x);
        }
        b.add(2.5);
        assert_eq!(a, b);
        b.add(f64::INFINITY);
        assert_ne!(a, b);
    }

    #[test]
    fn exact_sums_add_rows_and_refuse_what_does_not_fit() {
        let mut s = ExactSums::new(4);
        s.add_at(1, &[0.1, 0.2, 0.3]).unwrap();
        s.add_at(1, &[0.2, 0.1, -0.3]).unwrap();
        assert!(s.add_at(2, &[1.0, 1.0, 1.0]).is_err());
        assert!(s.add_at(usize::MAX, &[1.0]).is_err());
        assert_eq!(
            s.values(),
            [0.0, exact(&[0.1, 0.2]), exact(&[0.2, 0.1]), 0.0]
        );
        let mut t = ExactSums::new(3);
        assert!(t.merge(&s).is_err());
        assert_eq!(t, ExactSums::new(3), "a refused merge changes nothing");
        let back: ExactSums = postcard::from_bytes(&postcard::to_allocvec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
