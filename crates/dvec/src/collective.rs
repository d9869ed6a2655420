//! Collective operations of `DVec`: every rank calls them in the same order.
//!
//! Messages use user tags `0xD157_0000..=0xD157_00FF` (reserved for this crate; programs
//! must not use them). Point-to-point transfers follow one list shared by all ranks, so
//! even a blocking transport could not deadlock; `Comm` sends are eager anyway.

use crate::balance::Decision;
use crate::dvec::{scalars, DVec};
use crate::elem::{BlockPart, BlockParts, DElem, SumAcc};
use crate::error::{DistError, DistErrorKind, Result};
use crate::exact::ExactSums;
use crate::partition::{Distribution, Plan, DEFAULT_PIECE_BYTES};
use lazarus_format::Rank;
use lazarus_net::{Comm, NetError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::ops::Range;
use std::sync::OnceLock;

const TAG_MIGRATE: u32 = 0xD157_0001;
const TAG_HALO: u32 = 0xD157_0002;
const TAG_GATHER: u32 = 0xD157_0003;
const TAG_SCATTER: u32 = 0xD157_0004;

pub(crate) fn comm_err(what: &str) -> impl Fn(NetError) -> DistError + '_ {
    move |e| DistError::with_source(DistErrorKind::Comm, what.to_string(), e)
}

/// Rows next to a rank's block, received by [`DVec::halo`].
#[derive(Clone, Debug, PartialEq)]
pub struct Halo<T> {
    /// Up to `w` rows just before the block (fewer at the global start), in order.
    pub left: Vec<T>,
    /// Up to `w` rows just after the block (fewer at the global end), in order.
    pub right: Vec<T>,
    /// Global rows of `left`.
    pub left_rows: Range<u64>,
    /// Global rows of `right`.
    pub right_rows: Range<u64>,
}

impl<T: DElem> DVec<T> {
    fn check_comm(&self, comm: &Comm) -> Result<()> {
        if let Some(why) = &self.unusable {
            return Err(DistError::new(DistErrorKind::Unusable, why.clone()));
        }
        if comm.rank() != self.rank || comm.size() != self.world {
            return Err(DistError::invalid(format!(
                "DVec of {} in a world of {} used with the communicator of {} in a world of {}",
                self.rank,
                self.world,
                comm.rank(),
                comm.size()
            )));
        }
        Ok(())
    }

    /// The block distribution, verified. Collective.
    ///
    /// A vector built by this crate knows its (valid) distribution; a restored one holds
    /// only its own part's recorded range, which nothing has compared with the other
    /// ranks' yet. Then this runs one allgather of every rank's range and checks that the
    /// ranges tile the same global length in rank order (every rank gets the same answer:
    /// the layout, or the same `BadCheckpoint` error naming the first rank that overlaps,
    /// leaves a gap or records another length). The verified layout is kept, so later
    /// calls cost nothing; a failed check is repeated (and fails again) by every later
    /// collective. Every collective operation of `DVec` calls this first, so none
    /// computes on an unverified layout.
    pub fn sync_distribution(&self, comm: &Comm) -> Result<&Distribution> {
        self.check_comm(comm)?;
        if let Some(d) = self.dist.get() {
            return Ok(d);
        }
        let mine = (self.my.start, self.my.end, self.total);
        let all: Vec<(u64, u64, u64)> = comm
            .allgather(&mine)
            .map_err(comm_err("learning the distribution"))?;
        let ranges: Vec<_> = all
            .iter()
            .map(|&(s, e, t)| lazarus_format::GlobalRange {
                start: s,
                len: e.saturating_sub(s),
                total: t,
            })
            .collect();
        let d = Distribution::from_ranges(&ranges).map_err(|e| match &self.restored_from {
            Some(field) => DistError::new(
                e.kind(),
                format!(
                    "field `{field}`, in rows of {}: {}",
                    self.width,
                    e.message()
                ),
            ),
            None => e,
        })?;
        Ok(self.dist.get_or_init(|| d))
    }

    fn piece_rows(&self) -> u64 {
        let row_bytes = (self.width * std::mem::size_of::<T>()).max(1);
        (DEFAULT_PIECE_BYTES / row_bytes).max(1) as u64
    }

    // ---- reductions ---------------------------------------------------------------------

    fn allreduce_acc(&self, comm: &Comm, local: SumAcc) -> Result<SumAcc> {
        self.sync_distribution(comm)?;
        let all: Vec<SumAcc> = comm.allgather(&local).map_err(comm_err("sum"))?;
        let mut acc = SumAcc::new();
        for a in &all {
            acc.merge(a);
        }
        Ok(acc)
    }

    /// Sum of all elements; bit-identical for every distribution and world size (exact
    /// and rounded once for floats, wrapping for integers). Collective.
    pub fn sum(&self, comm: &Comm) -> Result<T> {
        let mut acc = SumAcc::new();
        for x in &self.data {
            x.add_to(&mut acc);
        }
        Ok(T::from_acc(&self.allreduce_acc(comm, acc)?))
    }

    /// Dot product with an aligned vector; bit-identical for every distribution.
    /// Collective.
    ///
    /// Errors on every rank (not just where the blocks differ) unless both vectors have
    /// the same distribution and row width.
    pub fn dot(&self, comm: &Comm, other: &DVec<T>) -> Result<T> {
        let mine = self.sync_distribution(comm)?;
        let theirs = other.sync_distribution(comm)?;
        if mine != theirs || self.width != other.width {
            return Err(DistError::invalid(format!(
                "dot: DVecs not aligned (blocks {:?} x{} vs {:?} x{}); redistribute one to \
                 the other's distribution first",
                mine.bounds(),
                self.width,
                theirs.bounds(),
                other.width
            )));
        }
        let mut acc = SumAcc::new();
        for (x, y) in self.data.iter().zip(&other.data) {
            x.add_product_to(*y, &mut acc);
        }
        Ok(T::from_acc(&self.allreduce_acc(comm, acc)?))
    }

    fn extreme(&self, comm: &Comm, want: std::cmp::Ordering) -> Result<Option<T>> {
        self.sync_distribution(comm)?;
        let pick = |a: T, b: T| if b.total_cmp(&a) == want { b } else { a };
        let local = self.data.iter().copied().reduce(pick);
        let all: Vec<Option<T>> = comm.allgather(&local).map_err(comm_err("min/max"))?;
        Ok(all.into_iter().flatten().reduce(pick))
    }

    /// Smallest element in the total order (`None` when empty). Collective.
    pub fn min(&self, comm: &Comm) -> Result<Option<T>> {
        self.extreme(comm, std::cmp::Ordering::Less)
    }

    /// Largest element in the total order (`None` when empty). Collective.
    pub fn max(&self, comm: &Comm) -> Result<Option<T>> {
        self.extreme(comm, std::cmp::Ordering::Greater)
    }

    /// Custom reduction in a fixed order: elements (rows, for `width > 1` the row's first
    /// scalar index `g`) are mapped with `map(g, &row)` and folded with `combine` over
    /// fixed global blocks of [`crate::REDUCE_BLOCK`] rows, then block results are folded
    /// in global order. `combine` need not be associative: the result is bit-identical
    /// whatever the distribution. Collective; every rank gets the result.
    pub fn reduce<A>(
        &self,
        comm: &Comm,
        identity: A,
        map: impl Fn(u64, &[T]) -> A,
        combine: impl Fn(A, A) -> A,
    ) -> Result<A>
    where
        A: Clone + Serialize + DeserializeOwned,
    {
        self.sync_distribution(comm)?;
        let rows: Vec<&[T]> = self.data.chunks_exact(self.width).collect();
        let m = |g: u64, r: &&[T]| map(g, r);
        let parts = BlockParts::local(self.my.start, &rows, &identity, &m, &combine);
        let all: Vec<Vec<BlockPart<A>>> = comm.allgather(&parts).map_err(comm_err("reduce"))?;
        Ok(BlockParts::finish(
            all.into_iter().flatten(),
            &identity,
            &combine,
        ))
    }

    /// Inclusive prefix sums over the global order (each scalar position of a row is
    /// scanned over rows independently... for `width == 1`, element `g` becomes
    /// `x[0] + ... + x[g]`). Floats: every output is the exact prefix sum rounded once, so
    /// it is bit-identical whatever the distribution. Collective.
    pub fn scan_sum(&self, comm: &Comm) -> Result<DVec<T>> {
        // Verified layout: rank order is global order, which the prefix below assumes.
        self.sync_distribution(comm)?;
        let w = self.width;
        let mut local: Vec<SumAcc> = vec![SumAcc::new(); w];
        for row in self.data.chunks_exact(w) {
            for (a, x) in local.iter_mut().zip(row) {
                x.add_to(a);
            }
        }
        let all: Vec<Vec<SumAcc>> = comm.allgather(&local).map_err(comm_err("scan"))?;
        let mut run: Vec<SumAcc> = vec![SumAcc::new(); w];
        for (r, accs) in all.iter().enumerate().take(self.rank.index()) {
            if accs.len() != w {
                return Err(DistError::protocol(format!(
                    "scan: rank {r} sent {} accumulators for rows of {w}",
                    accs.len()
                )));
            }
            for (c, a) in run.iter_mut().zip(accs) {
                c.merge(a);
            }
        }
        let mut out = self.map(|_, x| x);
        for row in out.data.chunks_exact_mut(w) {
            for (c, x) in run.iter_mut().zip(row.iter_mut()) {
                x.add_to(c);
                *x = T::from_acc(c);
            }
        }
        Ok(out)
    }

    // ---- gather / scatter ---------------------------------------------------------------

    /// Collects the whole vector (row-major scalars) on `root`: `Some` there, `None`
    /// elsewhere. Blocks travel in pieces of at most `DEFAULT_PIECE_BYTES`. Collective.
    pub fn gather(&self, comm: &Comm, root: Rank) -> Result<Option<Vec<T>>> {
        let dist = self.sync_distribution(comm)?.clone();
        let pr = self.piece_rows();
        let w = self.width;
        if comm.rank() != root {
            for piece in self.data.chunks(scalars(pr, w)?) {
                comm.send_slice(root, TAG_GATHER, piece)
                    .map_err(comm_err("gather"))?;
            }
            return Ok(None);
        }
        let mut out = Vec::with_capacity(scalars(self.total, w)?);
        for r in 0..self.world {
            let r = Rank(r);
            if r == root {
                out.extend_from_slice(&self.data);
                continue;
            }
            let mut need = scalars(dist.len_of(r), w)?;
            let step = scalars(pr, w)?;
            while need > 0 {
                let v: Vec<T> = comm.recv_vec(r, TAG_GATHER).map_err(comm_err("gather"))?;
                if v.len() != need.min(step) {
                    return Err(DistError::protocol(format!(
                        "gather: {r} sent {} scalars, expected {}",
                        v.len(),
                        need.min(step)
                    )));
                }
                need -= v.len();
                out.extend_from_slice(&v);
            }
        }
        Ok(Some(out))
    }

    /// Builds a vector of rows of `width` from `data` (row-major scalars) held by `root`
    /// (ignored elsewhere), evenly distributed. Collective.
    pub fn scatter(comm: &Comm, root: Rank, data: Option<&[T]>, width: usize) -> Result<Self> {
        if width == 0 {
            return Err(DistError::invalid("a DVec row needs at least one scalar"));
        }
        // The root's verdict on its input travels with the length, so a bad input fails
        // on every rank (it failed on the root alone, which left the others waiting in a
        // collective the root never joined, or receiving its next one).
        let mut head: Result<u64, String> = Ok(0);
        if comm.rank() == root {
            head = match data {
                None => Err("scatter root must pass the data".into()),
                Some(d) if d.len() % width != 0 => Err(format!(
                    "scatter: {} scalars are not whole rows of {width}",
                    d.len()
                )),
                Some(d) => Ok((d.len() / width) as u64),
            };
        }
        comm.broadcast(root, &mut head)
            .map_err(comm_err("scatter"))?;
        let total = head.map_err(|e| {
            DistError::invalid(if comm.rank() == root {
                e
            } else {
                format!("{e} (on the root, {root})")
            })
        })?;
        let mut v = Self::with_width(comm, total, width)?;
        let dist = v.sync_distribution(comm)?.clone();
        let step = scalars(v.piece_rows(), width)?;
        if comm.rank() == root {
            let d = data.unwrap_or(&[]);
            for r in 0..comm.size() {
                let r = Rank(r);
                let g = dist.range(r);
                let block = d
                    .get(scalars(g.start, width)?..scalars(g.end, width)?)
                    .unwrap_or(&[]);
                if r == root {
                    v.data.copy_from_slice(block);
                } else {
                    for piece in block.chunks(step) {
                        comm.send_slice(r, TAG_SCATTER, piece)
                            .map_err(comm_err("scatter"))?;
                    }
                }
            }
        } else {
            for piece in v.data.chunks_mut(step) {
                comm.recv_into(root, TAG_SCATTER, piece)
                    .map_err(comm_err("scatter"))?;
            }
        }
        Ok(v)
    }

    // ---- halo ---------------------------------------------------------------------------

    /// Receives up to `w` rows on each side of this rank's block from whichever ranks hold
    /// them (several, if blocks are narrower than `w`). Non-periodic. Collective.
    pub fn halo(&self, comm: &Comm, w: u64) -> Result<Halo<T>> {
        let dist = self.sync_distribution(comm)?.clone();
        let me = self.rank;
        let wanted = |r: Rank| {
            let g = dist.range(r);
            (
                g.start.saturating_sub(w)..g.start,
                g.end..g.end.saturating_add(w).min(dist.total()),
            )
        };
        let mut halo = Halo {
            left: Vec::new(),
            right: Vec::new(),
            left_rows: wanted(me).0,
            right_rows: wanted(me).1,
        };
        for d in 0..self.world {
            let d = Rank(d);
            let (l, r) = wanted(d);
            for (side, range) in [(0, l), (1, r)] {
                for (src, sub) in dist.overlapping(range) {
                    if src == me && d != me {
                        let a = scalars(sub.start - self.my.start, self.width)?;
                        let b = scalars(sub.end - self.my.start, self.width)?;
                        let s = self.data.get(a..b).ok_or_else(|| {
                            DistError::protocol(format!("halo: rows {sub:?} not held here"))
                        })?;
                        comm.send_slice(d, TAG_HALO, s).map_err(comm_err("halo"))?;
                    } else if d == me && src != me {
                        let n = scalars(sub.end - sub.start, self.width)?;
                        let v: Vec<T> = comm.recv_vec(src, TAG_HALO).map_err(comm_err("halo"))?;
                        if v.len() != n {
                            return Err(DistError::protocol(format!(
                                "halo: {src} sent {} scalars, expected {n}",
                                v.len()
                            )));
                        }
                        if side == 0 {
                            &mut halo.left
                        } else {
                            &mut halo.right
                        }
                        .extend(v);
                    }
                }
            }
        }
        Ok(halo)
    }

    // ---- migration and balancing --------------------------------------------------------

    /// Moves to distribution `to` (one block per rank, same length). Pieces of at most
    /// `DEFAULT_PIECE_BYTES` travel one at a time; beyond its final block, a rank holds at
    /// most the rows it receives from the left plus one piece (docs/DIST.md). Collective.
    pub fn redistribute(&mut self, comm: &Comm, to: &Distribution) -> Result<()> {
        let from = self.sync_distribution(comm)?.clone();
        if to.ranks() != self.world as usize || to.total() != self.total {
            return Err(DistError::invalid(format!(
                "cannot redistribute {} over {} into {} over {}",
                lazarus_format::count(self.total, "row"),
                lazarus_format::count(self.world, "rank"),
                lazarus_format::count(to.total(), "row"),
                lazarus_format::count(to.ranks() as u64, "rank")
            )));
        }
        let plan = Plan::new(&from, to, self.piece_rows())?;
        let moved = self.migrate(comm, &plan, to);
        // Every rank learns whether every rank's part of the move succeeded: a rank whose
        // own sends and receives all went through would otherwise go on with the new
        // layout next to a rank left half-way (rows compacted, zeros where a piece never
        // arrived), and sums, gathers and checkpoints would silently mix the two.
        let all = comm
            .allgather(&moved.is_ok())
            .map_err(comm_err("agreeing on the migration's outcome"));
        // The causes too: a wrong-length piece names its sender only in the source.
        let chain = |e: &DistError| {
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                s.push_str(&format!(": {c}"));
                cause = c.source();
            }
            s
        };
        let why = match (&moved, &all) {
            (Ok(()), Ok(all)) if all.iter().all(|ok| *ok) => return Ok(()),
            (Err(e), _) => chain(e),
            (Ok(()), Err(e)) => chain(e),
            (Ok(()), Ok(all)) => format!(
                "the migration failed on {}",
                (0u32..)
                    .zip(all)
                    .filter(|(_, ok)| !**ok)
                    .map(|(r, _)| Rank(r).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let why = format!(
            "{} on {}: a migration to the blocks {:?} failed after rows had moved ({why}); \
             the vector is unusable until it is restored from a checkpoint",
            self.type_name(),
            self.rank,
            to.bounds()
        );
        self.data = Vec::new();
        self.my = self.my.start..self.my.start;
        self.dist = OnceLock::new();
        self.tracker.reset(0);
        self.unusable = Some(why.clone());
        Err(DistError::new(DistErrorKind::Unusable, why))
    }

    /// The moves of [`DVec::redistribute`] on this rank: on success the vector holds its
    /// block of `to`; on error its rows and range may disagree (the caller makes it
    /// unusable).
    fn migrate(&mut self, comm: &Comm, plan: &Plan, to: &Distribution) -> Result<()> {
        let me = self.rank;
        let w = self.width;
        let old = self.my.clone();
        let new = to.range(me);
        let keep = old.start.max(new.start)..old.end.min(new.end).max(old.start.max(new.start));
        if old != new {
            // Marked before any byte moves, so even a migration that fails half-way
            // leaves no page claiming to be unchanged.
            self.tracker.mark_all();
        }
        let mut front: Vec<T> = Vec::new();
        let mut compacted = false;
        let compact = |data: &mut Vec<T>, front: &mut Vec<T>| -> Result<()> {
            if keep.is_empty() {
                data.clear();
            } else {
                data.truncate(scalars(keep.end - old.start, w)?);
                data.drain(..scalars(keep.start - old.start, w)?);
            }
            data.splice(0..0, std::mem::take(front));
            data.reserve_exact(scalars(new.end - new.start, w)?.saturating_sub(data.len()));
            Ok(())
        };
        // After a failure the plan still runs to its end: this rank's later sends go out
        // (a peer waiting for one would otherwise wait for ever: found in review, a rank
        // whose first receive failed never sent the piece the next rank waited for) and
        // its later receives are drained whatever their length, so every rank reaches
        // the agreement in `redistribute` and no piece is left for a later migration.
        let mut failed: Option<DistError> = None;
        for p in plan.involving(me) {
            let n = scalars(p.global.end - p.global.start, w);
            if p.src == me {
                // Outgoing rows are still at their old offsets: compaction happens only
                // once a right-side piece arrives, after every send (global order).
                let held = n.and_then(|n| {
                    let a = scalars(p.global.start - old.start, w)?;
                    self.data.get(a..a.saturating_add(n)).ok_or_else(|| {
                        DistError::protocol(format!("migration: rows {:?} not held", p.global))
                    })
                });
                // Rows not held: an empty piece, which the receiver refuses by its length.
                let (rows, missing) = match held {
                    Ok(rows) => (rows, None),
                    Err(e) => (&[][..], Some(e)),
                };
                let sent = comm
                    .send_slice(p.dst, TAG_MIGRATE, rows)
                    .map_err(comm_err("migration"));
                if let Some(e) = missing.or(sent.err()) {
                    failed.get_or_insert(e);
                }
            } else if failed.is_some() {
                let _ = comm.recv_vec::<T>(p.src, TAG_MIGRATE);
            } else {
                // Received straight into its final place (no temporary vector): the
                // first migration used to pay an extra allocation, first touch and copy
                // per byte (docs/PERFORMANCE.md). A wrong length is an error from
                // `recv_into`, naming the peer (the piece is consumed).
                let mut asked = false;
                let received = n.and_then(|n| {
                    let dst = if p.global.start < old.start {
                        &mut front
                    } else {
                        if !compacted {
                            compact(&mut self.data, &mut front)?;
                            compacted = true;
                        }
                        &mut self.data
                    };
                    let at = dst.len();
                    dst.resize(at + n, T::default());
                    let buf = dst.get_mut(at..).ok_or_else(|| {
                        DistError::protocol(format!("migration: rows {:?} do not fit", p.global))
                    })?;
                    asked = true;
                    comm.recv_into(p.src, TAG_MIGRATE, buf)
                        .map_err(comm_err("migration"))
                });
                if let Err(e) = received {
                    if !asked {
                        // Failed before the receive: the piece is still to be taken.
                        let _ = comm.recv_vec::<T>(p.src, TAG_MIGRATE);
                    }
                    failed = Some(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if !compacted {
            compact(&mut self.data, &mut front)?;
        }
        if self.data.len() != scalars(new.end - new.start, w)? {
            return Err(DistError::protocol(format!(
                "migration left {} with {} scalars, expected rows {new:?}",
                me,
                self.data.len()
            )));
        }
        if old != new {
            // Page positions mean other rows now: nothing of the previous checkpoint can
            // be reused blindly (and the length may have changed).
            self.tracker
                .resize(std::mem::size_of_val(self.data.as_slice()));
        }
        self.my = new;
        self.dist = OnceLock::new();
        let _ = self.dist.set(to.clone());
        Ok(())
    }

    /// Load balancing in one call: shares the work measured since the last call (by
    /// [`DVec::work`] and the element-wise operations), lets the policy decide
    /// ([`crate::Balancer`], docs/DIST.md) and, if it says so, migrates. Every rank gets
    /// the same decision. Results of later operations do not change (reductions are
    /// distribution-independent). Vectors whose rows belong together (points and their
    /// labels) are balanced with [`crate::balance_together`] instead. Collective.
    pub fn balance(&mut self, comm: &Comm) -> Result<Decision> {
        crate::group::balance_together(comm, &mut [self])
    }
}

/// One step of [`ExactSums::allreduce`]: the merged sums of a run of ranks starting at the
/// named one, or the first two contributions whose lengths differ.
#[derive(serde::Serialize, serde::Deserialize)]
enum SumsPartial {
    Sums(u32, ExactSums),
    Mismatch { a: (u32, u64), b: (u32, u64) },
}

impl ExactSums {
    /// Element-wise exact sum over all ranks, rounded once per element by
    /// [`ExactSums::values`]: the same bits on every rank, for every number of ranks and
    /// every way the addends were split between them (merging is exact, so the reduction
    /// tree does not matter). Every rank must pass the same length; otherwise every rank
    /// gets an error naming two ranks that differ. Collective.
    ///
    /// ```
    /// use lazarus_dist::ExactSums;
    /// // The addends 1e16, 1, -1e16, 1 split over 1, 2 or 4 ranks: always exactly 2.
    /// let xs = [1e16, 1.0, -1e16, 1.0];
    /// for n in [1u32, 2, 4] {
    ///     let got = lazarus_net::local(n, |comm| {
    ///         let mut s = ExactSums::new(1);
    ///         for x in xs.iter().skip(comm.rank().index()).step_by(n as usize) {
    ///             s.add_at(0, &[*x]).unwrap();
    ///         }
    ///         s.allreduce(&comm).unwrap().values()
    ///     })
    ///     .unwrap();
    ///     assert!(got.iter().all(|v| v == &[2.0]));
    /// }
    /// ```
    pub fn allreduce(self, comm: &Comm) -> Result<ExactSums> {
        let mine = SumsPartial::Sums(comm.rank().0, self);
        let merged = comm
            .allreduce_with(mine, |lo, hi| match (lo, hi) {
                (SumsPartial::Sums(r, mut a), SumsPartial::Sums(q, b)) => {
                    if a.merge(&b).is_ok() {
                        SumsPartial::Sums(r, a)
                    } else {
                        SumsPartial::Mismatch {
                            a: (r, a.len() as u64),
                            b: (q, b.len() as u64),
                        }
                    }
                }
                (m @ SumsPartial::Mismatch { .. }, _) | (_, m @ SumsPartial::Mismatch { .. }) => m,
            })
            .map_err(comm_err("exact allreduce"))?;
        match merged {
            SumsPartial::Sums(_, s) => Ok(s),
            SumsPartial::Mismatch { a, b } => Err(DistError::invalid(format!(
                "ExactSums::allreduce: rank {} passed {} sums, rank {} passed {}; every rank \
                 must pass the same length",
                a.0, a.1, b.0, b.1
            ))),
        }
    }
}
