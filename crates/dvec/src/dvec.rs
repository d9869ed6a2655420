//! `DVec<T>`: the distributed vector, its local operations and its `Checkpoint` impl.
//! Collective operations (reductions, scan, gather/scatter, halo, migration) are in
//! `collective.rs`.

use crate::balance::{BalanceConfig, Balancer};
use crate::elem::DElem;
use crate::error::{DistError, Result};
use crate::partition::Distribution;
use lazarus_format::{GlobalRange, Rank};
use lazarus_net::Comm;
use lazarus_state::{Checkpoint, PageTracker, StateError, StateReader, StateWriter};
use std::ops::Range;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Environment variable of the test knob that slows ranks down: `"1:3"` makes rank 1
/// take 3x as long for every timed operation (it sleeps `(factor - 1) * elapsed` after
/// each one, emulating a slower node without stealing CPU from the others). Several
/// entries are comma-separated: `"1:3,2:1.5"`.
pub const SLOWDOWN_ENV: &str = "LAZARUS_SLOWDOWN";

/// A global vector of `len()` elements split into contiguous blocks, one per rank.
///
/// Each element is a row of `width()` scalars (`width == 1` for a plain vector; a 2-D grid
/// is a `DVec` of rows). Every rank holds the rows of its global range, in order, as one
/// local slice. Local operations need no communication; collective ones take the `Comm`
/// and must be called by every rank in the same order (SPMD).
#[derive(Debug)]
pub struct DVec<T: DElem> {
    pub(crate) data: Vec<T>,
    pub(crate) width: usize,
    pub(crate) rank: Rank,
    pub(crate) world: u32,
    /// my rows
    pub(crate) my: Range<u64>,
    /// global rows
    pub(crate) total: u64,
    /// all blocks, verified; unset right after a restore until the next collective
    /// verifies the restored parts with one allgather (`sync_distribution`)
    pub(crate) dist: OnceLock<Distribution>,
    pub(crate) meter: Meter,
    pub(crate) balancer: Option<Balancer>,
    pub(crate) balance_cfg: BalanceConfig,
    /// Pages of `data` written since the last durable checkpoint.
    pub(crate) tracker: PageTracker,
    /// The field this DVec was restored from (its checkpoint path), so that a layout the
    /// first collective finds bad names it (found in review: with several DVecs the error
    /// did not say which).
    pub(crate) restored_from: Option<String>,
    /// Why this vector is unusable: a migration failed after rows had moved, here or on
    /// another rank (found in review: the rows and the range disagreed, and sums and
    /// checkpoints went on silently). Every collective and every save refuses it; a
    /// restore clears it.
    pub(crate) unusable: Option<String>,
}

/// Work measured since the last balancing decision.
#[derive(Clone, Debug, Default)]
pub(crate) struct Meter {
    pub(crate) elements: u64,
    pub(crate) seconds: f64,
    pub(crate) slowdown: f64,
}

impl<T: DElem> DVec<T> {
    /// A zero-filled vector of `len` elements, evenly distributed over `comm`'s ranks.
    pub fn new(comm: &Comm, len: u64) -> Result<Self> {
        Self::with_width(comm, len, 1)
    }

    /// A zero-filled vector of `rows` rows of `width` scalars each (2-D data).
    pub fn with_width(comm: &Comm, rows: u64, width: usize) -> Result<Self> {
        let dist = Distribution::even(rows, comm.size() as usize)?;
        Self::with_distribution(comm, dist, width)
    }

    /// A zero-filled vector laid out as `dist`, which must have one block per rank.
    pub fn with_distribution(comm: &Comm, dist: Distribution, width: usize) -> Result<Self> {
        if width == 0 {
            return Err(DistError::invalid("a DVec row needs at least one scalar"));
        }
        if dist.ranks() != comm.size() as usize {
            return Err(DistError::invalid(format!(
                "distribution over {} for a world of {}",
                lazarus_format::count(dist.ranks() as u64, "rank"),
                comm.size()
            )));
        }
        let rank = comm.rank();
        let my = dist.range(rank);
        let n = scalars(my.end - my.start, width)?;
        let slowdown = slowdown_from_env(rank)?;
        let d = OnceLock::new();
        let total = dist.total();
        let _ = d.set(dist);
        let data = vec![T::default(); n];
        Ok(DVec {
            tracker: PageTracker::new(std::mem::size_of_val(data.as_slice())),
            restored_from: None,
            unusable: None,
            data,
            width,
            rank,
            world: comm.size(),
            my,
            total,
            dist: d,
            meter: Meter {
                slowdown,
                ..Meter::default()
            },
            balancer: None,
            balance_cfg: BalanceConfig::default(),
        })
    }

    /// A vector of `len` elements whose element `g` is `f(g)`, evenly distributed.
    pub fn from_fn(comm: &Comm, len: u64, f: impl FnMut(u64) -> T) -> Result<Self> {
        let mut v = Self::new(comm, len)?;
        let start = v.my.start;
        let mut f = f;
        for (i, x) in v.data.iter_mut().enumerate() {
            *x = f(start + i as u64);
        }
        Ok(v)
    }

    /// Number of elements (rows) of the whole vector.
    ///
    /// Local, so right after a restore it is the global length recorded in this rank's
    /// part, which no other rank has confirmed yet: ranks restored from parts that
    /// disagree may see different values until a collective operation (or
    /// [`DVec::sync_distribution`]) verifies the layout, and that operation fails
    /// instead of computing. Once [`DVec::distribution`] is `Some`, every rank sees the
    /// same length.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True when the whole vector has no element.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Scalars per element (1 for a plain vector).
    pub fn width(&self) -> usize {
        self.width
    }

    /// This rank.
    pub fn rank(&self) -> Rank {
        self.rank
    }

    /// Global range of the elements (rows) held here.
    pub fn range(&self) -> Range<u64> {
        self.my.clone()
    }

    /// The current block distribution, if known and verified: `None` right after a
    /// restore until the next collective operation (or [`DVec::sync_distribution`])
    /// learns and checks it with one allgather.
    pub fn distribution(&self) -> Option<&Distribution> {
        self.dist.get()
    }

    /// Local scalars, row after row.
    pub fn local(&self) -> &[T] {
        &self.data
    }

    /// Local scalars, mutable; marks the whole block written (the next checkpoint reads
    /// all of it: prefer [`DVec::rows_mut`] for small updates). Work done through this
    /// slice is not timed for load balancing; use [`DVec::work`] or record it with
    /// [`DVec::record_work`].
    pub fn local_mut(&mut self) -> &mut [T] {
        self.tracker.mark_all();
        &mut self.data
    }

    /// The scalars of the local rows `rows` (global indices) for writing, marking only
    /// their pages; `None` (marking nothing) unless every row is held here. Untimed.
    pub fn rows_mut(&mut self, rows: Range<u64>) -> Option<&mut [T]> {
        let r = self.local_scalars(rows)?;
        let size = std::mem::size_of::<T>();
        self.tracker.mark(r.start * size..r.end * size);
        self.data.get_mut(r)
    }

    /// Local row `g` for writing (marks its page), if held here. Untimed.
    pub fn row_mut(&mut self, g: u64) -> Option<&mut [T]> {
        self.rows_mut(g..g.checked_add(1)?)
    }

    /// Marks the local rows of `rows` written (rows not held here are ignored), e.g. after
    /// writing them through a path the vector cannot see.
    pub fn mark_dirty(&mut self, rows: Range<u64>) {
        let clipped = rows.start.max(self.my.start)..rows.end.min(self.my.end);
        if let Some(r) = self.local_scalars(clipped) {
            let size = std::mem::size_of::<T>();
            self.tracker.mark(r.start * size..r.end * size);
        }
    }

    /// Bytes of the local block the next checkpoint will read: all of it until the store
    /// confirmed a write of this vector, then the pages written since. Informational.
    pub fn dirty_bytes(&self) -> u64 {
        self.tracker
            .dirty_bytes(std::mem::size_of_val(self.data.as_slice()))
    }

    /// The local scalar range of the global rows `rows`, if all are held here.
    fn local_scalars(&self, rows: Range<u64>) -> Option<Range<usize>> {
        if rows.start > rows.end || rows.start < self.my.start || rows.end > self.my.end {
            return None;
        }
        let a = usize::try_from(rows.start - self.my.start).ok()?;
        let b = usize::try_from(rows.end - self.my.start).ok()?;
        Some(a.checked_mul(self.width)?..b.checked_mul(self.width)?)
    }

    /// Local row at global index `g`, if held here.
    pub fn row(&self, g: u64) -> Option<&[T]> {
        if !self.my.contains(&g) {
            return None;
        }
        let s = ((g - self.my.start) as usize).checked_mul(self.width)?;
        self.data.get(s..s + self.width)
    }

    /// Local element at global index `g` of a width-1 vector (the first scalar of the row
    /// otherwise), if held here.
    pub fn get(&self, g: u64) -> Option<T> {
        self.row(g).and_then(|r| r.first().copied())
    }

    /// Runs `f(global_rows, local_scalars)` and times it for load balancing (applying the
    /// `LAZARUS_SLOWDOWN` knob). The primitive behind the element-wise operations.
    /// Marks the whole block written.
    pub fn work<R>(&mut self, f: impl FnOnce(Range<u64>, &mut [T]) -> R) -> R {
        self.tracker.mark_all();
        let t = Instant::now();
        let r = f(self.my.clone(), &mut self.data);
        let el = t.elapsed();
        self.finish_work(el);
        r
    }

    fn finish_work(&mut self, el: Duration) {
        let mut secs = el.as_secs_f64();
        if self.meter.slowdown > 1.0 {
            let extra = el.mul_f64(self.meter.slowdown - 1.0);
            std::thread::sleep(extra);
            secs += extra.as_secs_f64();
        }
        self.meter.elements += self.my.end - self.my.start;
        self.meter.seconds += secs;
    }

    /// Records work done outside [`DVec::work`] (`elements` processed in `seconds`).
    pub fn record_work(&mut self, elements: u64, seconds: f64) {
        self.meter.elements += elements;
        if seconds.is_finite() && seconds > 0.0 {
            self.meter.seconds += seconds;
        }
    }

    /// Calls `f(g, row)` for every local row, in global order (timed).
    pub fn for_each_row_mut(&mut self, mut f: impl FnMut(u64, &mut [T])) {
        let w = self.width;
        self.work(|r, d| {
            for (i, row) in d.chunks_exact_mut(w).enumerate() {
                f(r.start + i as u64, row);
            }
        })
    }

    /// Calls `f(g, &mut x)` for every local element of a width-1 vector, in global order
    /// (for wider rows, `g` is the row of each scalar). Timed.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(u64, &mut T)) {
        let w = self.width as u64;
        self.work(|r, d| {
            for (i, x) in d.iter_mut().enumerate() {
                f(r.start + i as u64 / w, x);
            }
        })
    }

    /// Calls `f(g, &x)` for every local element (untimed: reads only).
    pub fn for_each(&self, mut f: impl FnMut(u64, &T)) {
        let w = self.width as u64;
        for (i, x) in self.data.iter().enumerate() {
            f(self.my.start + i as u64 / w, x);
        }
    }

    /// Replaces every local element `x` by `f(g, x)`. Timed.
    pub fn map_inplace(&mut self, mut f: impl FnMut(u64, T) -> T) {
        self.for_each_mut(|g, x| *x = f(g, *x));
    }

    /// A new vector with the same layout whose elements are `f(g, x)`.
    pub fn map<U: DElem>(&self, mut f: impl FnMut(u64, T) -> U) -> DVec<U> {
        let w = self.width as u64;
        let start = self.my.start;
        let data: Vec<U> = self
            .data
            .iter()
            .enumerate()
            .map(|(i, x)| f(start + i as u64 / w, *x))
            .collect();
        DVec {
            tracker: PageTracker::new(std::mem::size_of_val(data.as_slice())),
            restored_from: None,
            unusable: self.unusable.clone(),
            data,
            width: self.width,
            rank: self.rank,
            world: self.world,
            my: self.my.clone(),
            total: self.total,
            dist: self.dist.clone(),
            meter: Meter {
                slowdown: self.meter.slowdown,
                ..Meter::default()
            },
            balancer: None,
            balance_cfg: self.balance_cfg.clone(),
        }
    }

    /// `f(g, &mut x, y)` for aligned elements of `self` and `other`. Errors unless both
    /// have the same layout (same global range here and same width). Timed.
    pub fn zip_mut<U: DElem>(
        &mut self,
        other: &DVec<U>,
        mut f: impl FnMut(u64, &mut T, U),
    ) -> Result<()> {
        self.check_aligned(other)?;
        let w = self.width as u64;
        let od = &other.data;
        self.work(|r, d| {
            for (i, (x, y)) in d.iter_mut().zip(od.iter()).enumerate() {
                f(r.start + i as u64 / w, x, *y);
            }
        });
        Ok(())
    }

    pub(crate) fn check_aligned<U: DElem>(&self, other: &DVec<U>) -> Result<()> {
        if self.my != other.my || self.width != other.width || self.total != other.total {
            return Err(DistError::invalid(format!(
                "{}: DVecs not aligned (rows {:?} of {} x{} vs {:?} of {} x{}); redistribute \
                 one to the other's distribution first",
                self.rank, self.my, self.total, self.width, other.my, other.total, other.width
            )));
        }
        Ok(())
    }

    /// Balancing policy used by [`DVec::balance`]; resets the measured rates.
    pub fn set_balance_config(&mut self, cfg: BalanceConfig) -> Result<()> {
        Balancer::new(cfg.clone(), self.world as usize)?;
        self.balance_cfg = cfg;
        self.balancer = None;
        Ok(())
    }

    /// The schema type name: `DVec<f64>`, or `DVec<[f64; 64]>` for rows of 64.
    pub fn type_name(&self) -> String {
        type_name::<T>(self.width)
    }
}

pub(crate) fn type_name<T: DElem>(width: usize) -> String {
    if width == 1 {
        format!("DVec<{}>", T::NAME)
    } else {
        format!("DVec<[{}; {width}]>", T::NAME)
    }
}

/// Row width encoded in a DVec schema type name (`DVec<[f64; 64]>` -> 64); 1 for any
/// other name.
pub fn row_width_of(type_name: &str) -> u64 {
    type_name
        .strip_prefix("DVec<[")
        .and_then(|s| s.strip_suffix("]>"))
        .and_then(|s| s.rsplit_once("; "))
        .and_then(|(_, w)| w.parse::<u64>().ok())
        .filter(|&w| w > 0)
        .unwrap_or(1)
}

pub(crate) fn scalars(rows: u64, width: usize) -> Result<usize> {
    usize::try_from(rows)
        .ok()
        .and_then(|r| r.checked_mul(width))
        .ok_or_else(|| DistError::invalid(format!("{rows} rows of {width} do not fit in memory")))
}

fn slowdown_from_env(rank: Rank) -> Result<f64> {
    match std::env::var(SLOWDOWN_ENV) {
        Ok(s) => parse_slowdown(&s, rank),
        Err(_) => Ok(1.0),
    }
}

/// Parses `"r:f,r:f"`; returns this rank's factor (1.0 if absent).
pub(crate) fn parse_slowdown(s: &str, rank: Rank) -> Result<f64> {
    let mut out = 1.0;
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = || {
            DistError::invalid(format!(
                "{SLOWDOWN_ENV}={s:?}: entry {item:?} is not `rank:factor` with factor >= 1"
            ))
        };
        let (r, f) = item.split_once(':').ok_or_else(bad)?;
        let r: u32 = r.trim().parse().map_err(|_| bad())?;
        let f: f64 = f.trim().parse().map_err(|_| bad())?;
        if !(f.is_finite() && f >= 1.0) {
            return Err(bad());
        }
        if r == rank.0 {
            out = f;
        }
    }
    Ok(out)
}

/// A DVec saves one bulk object: its local scalars with their [`GlobalRange`] in scalars
/// (rows times width), which is the marker that makes it redistributable: a checkpoint
/// written by N ranks is cut into M blocks by [`crate::Reshard`]. Restore adopts the
/// saved block, so the layout is the checkpoint's (balanced) one. The restore checks this
/// rank's part only: the layout is marked unverified, and the next collective operation
/// first compares every rank's range with one allgather, failing on every rank (naming
/// the rank that overlaps, leaves a gap or records another length) when the parts do not
/// tile the vector in rank order. The object carries the change hint of the vector's page
/// tracking (type doc), so an incremental checkpoint reads only the written pages.
impl<T: DElem> Checkpoint for DVec<T> {
    fn save<'a>(&'a self, out: &mut StateWriter<'a>) -> Result<(), StateError> {
        if let Some(why) = &self.unusable {
            return Err(StateError::custom(
                self.type_name(),
                format!("not saved: {why}"),
            ));
        }
        let w = self.width as u64;
        let g = GlobalRange {
            start: self.my.start * w,
            len: (self.my.end - self.my.start) * w,
            total: self.total * w,
        };
        let hint = self
            .tracker
            .hint(std::mem::size_of_val(self.data.as_slice()));
        out.bulk_hinted(&self.type_name(), &self.data, Some(g), hint)
    }

    fn restore(&mut self, inp: &mut StateReader) -> Result<(), StateError> {
        let field = if inp.path().is_empty() {
            lazarus_state::ROOT_NAME.to_string()
        } else {
            inp.path().to_string()
        };
        let g = inp.bulk_into(&self.type_name(), &mut self.data);
        // Even a failed restore may have changed the data: nothing is known about it.
        self.tracker
            .reset(std::mem::size_of_val(self.data.as_slice()));
        let g = g?;
        let w = self.width as u64;
        let bad = |why: String| StateError::custom(field.clone(), why);
        let g = g.ok_or_else(|| bad("DVec object has no global range".into()))?;
        if g.start % w != 0 || g.len % w != 0 || g.total % w != 0 {
            return Err(bad(format!("global range {g:?} is not whole rows of {w}")));
        }
        if g.len != self.data.len() as u64 || g.start.checked_add(g.len).is_none_or(|e| e > g.total)
        {
            return Err(bad(format!(
                "global range {g:?} does not match the {} stored scalars",
                self.data.len()
            )));
        }
        self.my = g.start / w..(g.start + g.len) / w;
        self.total = g.total / w;
        self.restored_from = Some(field);
        self.unusable = None;
        self.dist = OnceLock::new();
        self.meter.elements = 0;
        self.meter.seconds = 0.0;
        self.balancer = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slowdown_knob_parses_and_rejects() {
        assert_eq!(parse_slowdown("1:3", Rank(1)).unwrap(), 3.0);
        assert_eq!(parse_slowdown("1:3", Rank(0)).unwrap(), 1.0);
        assert_eq!(parse_slowdown(" 0:1.5, 2:2 ", Rank(2)).unwrap(), 2.0);
        assert!(parse_slowdown("1", Rank(1)).is_err());
        assert!(parse_slowdown("x:3", Rank(1)).is_err());
        assert!(parse_slowdown("1:0.5", Rank(1)).is_err());
        assert!(parse_slowdown("1:nan", Rank(1)).is_err());
    }

    #[test]
    fn row_width_round_trips_through_type_name() {
        assert_eq!(row_width_of(&type_name::<f64>(1)), 1);
        assert_eq!(row_width_of(&type_name::<f32>(64)), 64);
        assert_eq!(row_width_of("Vec<f64>"), 1);
        assert_eq!(row_width_of("DVec<[f64; 0]>"), 1);
    }
}
