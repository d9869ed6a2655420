//! A growable set of chunk indices (one bit each).

/// Chunk indices as a bitmap; words past the end count as clear.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    /// Sets `from..to`.
    pub(crate) fn set_range(&mut self, from: u64, to: u64) {
        for k in from..to {
            let w = (k / 64) as usize;
            if self.0.len() <= w {
                self.0.resize(w + 1, 0);
            }
            self.0[w] |= 1 << (k % 64);
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
}
