//! Block distributions of `total` elements over ranks, and redistribution plans.
//!
//! A [`Distribution`] gives every rank one contiguous, possibly empty, block; blocks appear
//! in rank order (rank `r` holds `bounds[r]..bounds[r+1]`), so global order is rank order.
//! A [`Plan`] says, for a change from one distribution to another (N -> M restart, or a
//! load-balancing migration), which global ranges go from which source rank to which
//! destination rank. Pieces are at most `max_piece` elements long so that a migration
//! never needs more than one piece of transient buffer per message (see docs/DIST.md, "K").

use crate::error::{DistError, Result};
use lazarus_format::{GlobalRange, Rank};
use std::ops::Range;

/// Default maximum piece length for migrations, in bytes (`K` in docs/DIST.md): 4 MiB, the
/// upper chunk size of the store, large enough to run at link speed, small enough that the
/// transient buffer is negligible next to a block.
pub const DEFAULT_PIECE_BYTES: usize = 4 << 20;

/// Contiguous blocks, one per rank, in rank order. Invariant: `bounds` has `ranks + 1`
/// non-decreasing entries, starting at 0 and ending at `total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Distribution {
    bounds: Vec<u64>,
}

impl Distribution {
    /// Near-equal blocks: the first `total % ranks` ranks hold one extra element.
    /// Errors when `ranks == 0`.
    pub fn even(total: u64, ranks: usize) -> Result<Self> {
        if ranks == 0 {
            return Err(DistError::invalid("a distribution needs at least one rank"));
        }
        let n = ranks as u64;
        let (q, r) = (total / n, total % n);
        let mut bounds = Vec::with_capacity(ranks + 1);
        let mut at = 0u64;
        bounds.push(0);
        for i in 0..n {
            at += q + u64::from(i < r);
            bounds.push(at);
        }
        Ok(Distribution { bounds })
    }

    /// Blocks proportional to `weights` (e.g. measured rates): rank `r`'s block ends at
    /// `round(total * sum(weights[..=r]) / sum(weights))`. Deterministic for given inputs.
    /// Errors when `weights` is empty, holds a negative or non-finite value, or sums to 0.
    pub fn weighted(total: u64, weights: &[f64]) -> Result<Self> {
        if weights.is_empty() {
            return Err(DistError::invalid("a distribution needs at least one rank"));
        }
        for (r, w) in weights.iter().enumerate() {
            if !w.is_finite() || *w < 0.0 {
                return Err(DistError::invalid(format!(
                    "weight of rank {r} is {w}; weights must be finite and >= 0"
                )));
            }
        }
        let sum: f64 = weights.iter().sum();
        if sum <= 0.0 || !sum.is_finite() {
            return Err(DistError::invalid("weights sum to zero or overflow"));
        }
        let mut bounds = Vec::with_capacity(weights.len() + 1);
        bounds.push(0u64);
        let mut cum = 0.0f64;
        let last = weights.len() - 1;
        for (r, w) in weights.iter().enumerate() {
            cum += w;
            let b = if r == last {
                total
            } else {
                // `as` saturates; the clamp keeps bounds monotone despite rounding.
                ((total as f64) * (cum / sum)).round() as u64
            };
            let prev = bounds.last().copied().unwrap_or(0);
            bounds.push(b.clamp(prev, total));
        }
        Ok(Distribution { bounds })
    }

    /// From explicit block boundaries (`ranks + 1` non-decreasing values starting at 0).
    pub fn from_bounds(bounds: Vec<u64>) -> Result<Self> {
        if bounds.len() < 2 {
            return Err(DistError::invalid(
                "block boundaries need at least two entries (one rank)",
            ));
        }
        if bounds.first() != Some(&0) {
            return Err(DistError::invalid("block boundaries must start at 0"));
        }
        if let Some(i) = bounds.windows(2).position(|w| w[0] > w[1]) {
            return Err(DistError::invalid(format!(
                "block boundaries decrease between rank {i} and rank {}",
                i + 1
            )));
        }
        Ok(Distribution { bounds })
    }

    /// From the global ranges recorded by each rank of a checkpoint, indexed by rank.
    /// Errors, naming the rank, unless the ranges tile `0..total` in rank order.
    pub fn from_ranges(ranges: &[GlobalRange]) -> Result<Self> {
        let Some(first) = ranges.first() else {
            return Err(DistError::bad_checkpoint("no parts recorded"));
        };
        let total = first.total;
        let mut bounds = Vec::with_capacity(ranges.len() + 1);
        bounds.push(0u64);
        let mut at = 0u64;
        for (r, g) in ranges.iter().enumerate() {
            if g.total != total {
                return Err(DistError::bad_checkpoint(format!(
                    "rank {r} records a global length of {} but rank 0 records {total}",
                    g.total
                )));
            }
            if g.start != at {
                return Err(DistError::bad_checkpoint(format!(
                    "rank {r} starts at global index {} but the previous ranks end at {at} \
                     ({})",
                    g.start,
                    if g.start > at { "gap" } else { "overlap" }
                )));
            }
            at = g.start.checked_add(g.len).ok_or_else(|| {
                DistError::bad_checkpoint(format!("rank {r}: start + len overflows"))
            })?;
            if at > total {
                return Err(DistError::bad_checkpoint(format!(
                    "rank {r} ends at {at}, past the global length {total}"
                )));
            }
            bounds.push(at);
        }
        if at != total {
            return Err(DistError::bad_checkpoint(format!(
                "parts end at {at} but the global length is {total}"
            )));
        }
        Ok(Distribution { bounds })
    }

    /// Number of elements of the whole array.
    pub fn total(&self) -> u64 {
        self.bounds.last().copied().unwrap_or(0)
    }

    /// Number of ranks.
    pub fn ranks(&self) -> usize {
        self.bounds.len() - 1
    }

    /// The `ranks + 1` block boundaries.
    pub fn bounds(&self) -> &[u64] {
        &self.bounds
    }

    /// Global index range of `rank`'s block; empty for a rank outside the distribution.
    pub fn range(&self, rank: Rank) -> Range<u64> {
        let i = rank.index();
        match (self.bounds.get(i), self.bounds.get(i + 1)) {
            (Some(&a), Some(&b)) => a..b,
            _ => 0..0,
        }
    }

    /// Number of elements held by `rank`.
    pub fn len_of(&self, rank: Rank) -> u64 {
        let r = self.range(rank);
        r.end - r.start
    }

    /// The [`GlobalRange`] recorded in a checkpoint for `rank`'s block.
    pub fn global_range(&self, rank: Rank) -> GlobalRange {
        let r = self.range(rank);
        GlobalRange {
            start: r.start,
            len: r.end - r.start,
            total: self.total(),
        }
    }

    /// The rank owning global index `global`, or `None` past the end. With empty blocks the
    /// owner is the unique rank whose block is non-empty and contains the index.
    pub fn owner(&self, global: u64) -> Option<Rank> {
        if global >= self.total() {
            return None;
        }
        // First boundary > global, minus one, is the block holding it (skips empty blocks).
        let p = self.bounds.partition_point(|&b| b <= global);
        Some(Rank((p - 1) as u32))
    }

    /// Local offset of `global` in `rank`'s block, or `None` if `rank` does not hold it.
    pub fn to_local(&self, rank: Rank, global: u64) -> Option<usize> {
        let r = self.range(rank);
        if r.contains(&global) {
            usize::try_from(global - r.start).ok()
        } else {
            None
        }
    }

    /// Global index of local offset `local` of `rank`'s block, or `None` past its end.
    pub fn to_global(&self, rank: Rank, local: usize) -> Option<u64> {
        let r = self.range(rank);
        let g = r.start.checked_add(local as u64)?;
        (g < r.end).then_some(g)
    }

    /// The ranks whose blocks intersect `range`, each with the intersection, in global order.
    pub fn overlapping(&self, range: Range<u64>) -> Vec<(Rank, Range<u64>)> {
        let mut out = Vec::new();
        if range.start >= range.end {
            return out;
        }
        let first = self.bounds.partition_point(|&b| b <= range.start);
        for i in first.saturating_sub(1)..self.ranks() {
            let (a, b) = (self.bounds[i], self.bounds[i + 1]);
            if a >= range.end {
                break;
            }
            let (s, e) = (a.max(range.start), b.min(range.end));
            if s < e {
                out.push((Rank(i as u32), s..e));
            }
        }
        out
    }
}

/// One transfer of a redistribution: elements `global` go from `src` to `dst`.
/// `src == dst` marks elements a rank keeps.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Piece {
    /// rank that holds the elements in the old distribution
    pub src: Rank,
    /// rank that holds them in the new distribution
    pub dst: Rank,
    /// global index range, at most `max_piece` long
    pub global: Range<u64>,
}

/// A redistribution from one distribution to another: pieces sorted by global start,
/// covering `0..total` exactly once. Every rank executes the pieces that involve it in this
/// order; because all ranks share one total order, a blocking send/receive schedule cannot
/// deadlock (the first unfinished piece always has both of its ranks waiting on it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pieces: Vec<Piece>,
}

impl Plan {
    /// Plans the move from `from` to `to`, cutting transfers into pieces of at most
    /// `max_piece` elements (kept ranges are not cut). Errors when the totals differ or
    /// `max_piece == 0`.
    pub fn new(from: &Distribution, to: &Distribution, max_piece: u64) -> Result<Self> {
        if from.total() != to.total() {
            return Err(DistError::invalid(format!(
                "cannot redistribute {} elements into a distribution of {}",
                from.total(),
                to.total()
            )));
        }
        if max_piece == 0 {
            return Err(DistError::invalid("max_piece must be at least 1"));
        }
        let mut pieces = Vec::new();
        // Merge the two boundary lists; each segment has exactly one src and one dst.
        let (mut i, mut j) = (0usize, 0usize);
        let mut at = 0u64;
        let total = from.total();
        while at < total {
            while from.bounds[i + 1] <= at {
                i += 1;
            }
            while to.bounds[j + 1] <= at {
                j += 1;
            }
            let end = from.bounds[i + 1].min(to.bounds[j + 1]);
            let (src, dst) = (Rank(i as u32), Rank(j as u32));
            if src == dst {
                pieces.push(Piece {
                    src,
                    dst,
                    global: at..end,
                });
            } else {
                let mut s = at;
                while s < end {
                    let e = end.min(s.saturating_add(max_piece));
                    pieces.push(Piece {
                        src,
                        dst,
                        global: s..e,
                    });
                    s = e;
                }
            }
            at = end;
        }
        Ok(Plan { pieces })
    }

    /// All pieces in global order.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// Pieces `rank` sends or receives (not the ones it keeps), in plan order.
    pub fn involving(&self, rank: Rank) -> impl Iterator<Item = &Piece> + '_ {
        self.pieces
            .iter()
            .filter(move |p| p.src != p.dst && (p.src == rank || p.dst == rank))
    }

    /// Number of elements that change rank.
    pub fn moved(&self) -> u64 {
        self.pieces
            .iter()
            .filter(|p| p.src != p.dst)
            .map(|p| p.global.end - p.global.start)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn even_spreads_remainder_first() {
        let d = Distribution::even(10, 3).unwrap();
        assert_eq!(d.bounds(), &[0, 4, 7, 10]);
        assert_eq!(d.owner(4), Some(Rank(1)));
        assert_eq!(d.owner(10), None);
        assert!(Distribution::even(5, 0).is_err());
    }

    #[test]
    fn owner_skips_empty_blocks() {
        let d = Distribution::from_bounds(vec![0, 0, 3, 3, 5]).unwrap();
        assert_eq!(d.owner(0), Some(Rank(1)));
        assert_eq!(d.owner(3), Some(Rank(3)));
        assert_eq!(d.to_local(Rank(3), 4), Some(1));
        assert_eq!(d.to_global(Rank(3), 2), None);
    }

    #[test]
    fn weighted_rejects_bad_weights() {
        assert!(Distribution::weighted(10, &[1.0, f64::NAN]).is_err());
        assert!(Distribution::weighted(10, &[0.0, 0.0]).is_err());
        assert!(Distribution::weighted(10, &[-1.0, 2.0]).is_err());
        let d = Distribution::weighted(100, &[1.0, 3.0]).unwrap();
        assert_eq!(d.bounds(), &[0, 25, 100]);
    }

    #[test]
    fn from_ranges_names_the_gap() {
        let g = |start, len| GlobalRange {
            start,
            len,
            total: 10,
        };
        assert!(Distribution::from_ranges(&[g(0, 4), g(4, 6)]).is_ok());
        let e = Distribution::from_ranges(&[g(0, 4), g(5, 5)]).unwrap_err();
        assert!(e.to_string().contains("rank 1"), "{e}");
        assert!(Distribution::from_ranges(&[g(0, 4), g(3, 7)]).is_err());
        assert!(Distribution::from_ranges(&[g(0, 4)]).is_err());
    }

    fn dist_strategy() -> impl Strategy<Value = (u64, Vec<f64>, Vec<f64>)> {
        (
            0u64..2000,
            prop::collection::vec(0.0f64..10.0, 1..=8),
            prop::collection::vec(0.0f64..10.0, 1..=8),
        )
    }

    fn make(total: u64, w: &[f64]) -> Distribution {
        if w.iter().sum::<f64>() > 0.0 {
            Distribution::weighted(total, w).unwrap()
        } else {
            Distribution::even(total, w.len()).unwrap()
        }
    }

    proptest! {
        #[test]
        fn plans_cover_every_element_once(
            (total, wa, wb) in dist_strategy(), k in 1u64..300
        ) {
            let from = make(total, &wa);
            let to = make(total, &wb);
            prop_assert_eq!(from.total(), total);
            let plan = Plan::new(&from, &to, k).unwrap();
            let mut at = 0;
            for p in plan.pieces() {
                prop_assert_eq!(p.global.start, at);
                prop_assert!(p.global.end > p.global.start);
                if p.src != p.dst {
                    prop_assert!(p.global.end - p.global.start <= k);
                }
                // source really holds it, destination really wants it
                prop_assert!(from.range(p.src).start <= p.global.start);
                prop_assert!(from.range(p.src).end >= p.global.end);
                prop_assert!(to.range(p.dst).start <= p.global.start);
                prop_assert!(to.range(p.dst).end >= p.global.end);
                at = p.global.end;
            }
            prop_assert_eq!(at, total);
        }

        #[test]
        fn index_maps_round_trip((total, wa, _wb) in dist_strategy(), g in 0u64..2000) {
            let d = make(total, &wa);
            match d.owner(g) {
                None => prop_assert!(g >= total),
                Some(r) => {
                    let l = d.to_local(r, g).unwrap();
                    prop_assert_eq!(d.to_global(r, l), Some(g));
                }
            }
        }

        #[test]
        fn weighted_is_monotone_and_complete((total, wa, _wb) in dist_strategy()) {
            let d = make(total, &wa);
            prop_assert_eq!(d.ranks(), wa.len());
            prop_assert_eq!(d.total(), total);
            prop_assert!(d.bounds().windows(2).all(|w| w[0] <= w[1]));
            let ranges: Vec<_> = (0..d.ranks()).map(|r| d.global_range(Rank(r as u32))).collect();
            prop_assert_eq!(Distribution::from_ranges(&ranges).unwrap(), d);
        }
    }

    #[test]
    fn every_n_to_m_up_to_8() {
        for total in [0u64, 1, 7, 64, 1001] {
            for n in 1..=8 {
                for m in 1..=8 {
                    let from = Distribution::even(total, n).unwrap();
                    let to = Distribution::even(total, m).unwrap();
                    let plan = Plan::new(&from, &to, 5).unwrap();
                    let covered: u64 = plan
                        .pieces()
                        .iter()
                        .map(|p| p.global.end - p.global.start)
                        .sum();
                    assert_eq!(covered, total, "n={n} m={m}");
                }
            }
        }
    }
}
