//! A growable set of chunk indices (one bit each).

/// Chunk indices as a bitmap; words past the end count as clear.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    /// Sets `from..to`, a word at a time: a range of millions of chunks (a sparse file
    /// extended by a terabyte) costs its bitmap's size in words, not a loop per bit.
    pub(crate) fn set_range(&mut self, from: u64, to: u64) {
        if from >= to {
            return;
        }
        let (w0, w1) = ((from / 64) as usize, ((to - 1) / 64) as usize);
        if self.0.len() <= w1 {
            self.0.resize(w1 + 1, 0);
        }
        for w in w0..=w1 {
            // The bits of word `w` inside `from..to`.
            let lo = if w == w0 { from % 64 } else { 0 };
            let hi = if w == w1 { (to - 1) % 64 } else { 63 };
            self.0[w] |= (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
        }
    }

    /// True when `k` is set.
    pub(crate) fn contains(&self, k: u64) -> bool {
        self.0
            .get((k / 64) as usize)
            .is_some_and(|w| w & (1 << (k % 64)) != 0)
    }

    /// True when every index of `from..to` is set.
    pub(crate) fn all(&self, from: u64, to: u64) -> bool {
        (from..to).all(|k| self.contains(k))
    }

    /// Clears everything.
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// The bitmap words (for a change hint: a set bit is a dirty page).
    pub(crate) fn words(&self) -> &[u64] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let mut b = Bits::default();
        b.set_range(62, 66);
        assert!(b.contains(62) && b.contains(65) && !b.contains(66) && !b.contains(61));
        assert!(b.all(62, 66) && !b.all(61, 66));
        b.clear();
        assert!(!b.contains(62) && b.words().is_empty());
    }

    #[test]
    fn set_range_matches_a_bit_at_a_time() {
        for from in 0..130u64 {
            for to in from..200u64 {
                let mut b = Bits::default();
                b.set_range(from, to);
                for k in 0..260 {
                    assert_eq!(
                        b.contains(k),
                        (from..to).contains(&k),
                        "{from}..{to} at {k}"
                    );
                }
            }
        }
    }
}
