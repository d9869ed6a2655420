//! Exact (error-free) summation of IEEE-754 binary64 values, the basis of reductions that
//! are bit-identical whatever the distribution.
//!
//! Every finite `f64` is an integer multiple of 2^-1074 below 2^1024, so the exact sum of
//! any number of them is a big fixed-point integer. [`ExactSum`] keeps it in 32-bit digits
//! held by `i64` limbs (lazy carries), so adding is a few integer additions and merging two
//! accumulators is limb-wise addition: associative and commutative, hence independent of
//! how elements were split over ranks or in which order partials are combined. Only the
//! final [`ExactSum::value`] rounds, once, to nearest-even.

/// Bits per digit; the `i64` limbs have 31 bits of headroom for lazy carries.
const DIGIT_BITS: u32 = 32;
const DIGIT_MASK: i64 = (1 << DIGIT_BITS) - 1;
/// 2^-1074 .. 2^1024 needs 2098 bits; plus 64 bits for up to 2^64 addends: 68 digits.
const LIMBS: usize = 68;
/// Additions between carry normalisations: each adds < 2^32 per limb, so 2^30 of them
/// stay far below i64 overflow even on top of a normalised limb.
const NORMALISE_EVERY: u32 = 1 << 30;

/// Exact sum of f64 values (and of exact products via [`ExactSum::add_product`]),
/// rounded once at the end. Infinities and NaN are tracked apart: any NaN, or both
/// infinities, yield NaN; one infinity yields that infinity.
#[derive(Clone, Debug, PartialEq, Eq)]
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
        let mut mag = [0u64; LIMBS];
        for (m, l) in mag.iter_mut().zip(s.limbs.iter()) {
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

    /// The limbs in little-endian byte order plus flags, for sending to another rank.
    /// Layout: `LIMBS` i64 LE (normalised), then one flag byte (bit0 +inf, bit1 -inf, bit2 NaN).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut s = self.clone();
        s.normalise();
        let mut out = Vec::with_capacity(LIMBS * 8 + 1);
        for l in s.limbs {
            out.extend_from_slice(&l.to_le_bytes());
        }
        out.push(u8::from(s.pos_inf) | u8::from(s.neg_inf) << 1 | u8::from(s.nan) << 2);
        out
    }

    /// Inverse of [`ExactSum::to_le_bytes`]; `None` if the length or a limb is invalid.
    pub fn from_le_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != LIMBS * 8 + 1 {
            return None;
        }
        let mut s = ExactSum::new();
        for (l, c) in s.limbs.iter_mut().zip(b.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            *l = i64::from_le_bytes(a);
        }
        // Normalised limbs are digits, except the signed top one; anything else could
        // overflow later merges, so it is refused rather than trusted.
        if s.limbs[..LIMBS - 1]
            .iter()
            .any(|&l| !(0..=DIGIT_MASK).contains(&l))
            || s.limbs[LIMBS - 1].unsigned_abs() > (1u64 << 40)
        {
            return None;
        }
        let f = b[LIMBS * 8];
        s.pos_inf = f & 1 != 0;
        s.neg_inf = f & 2 != 0;
        s.nan = f & 4 != 0;
        Some(s)
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
            let wire = ExactSum::from_le_bytes(&r.to_le_bytes()).unwrap();
            prop_assert_eq!(a.to_bits(), wire.value().to_bits());
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
}
