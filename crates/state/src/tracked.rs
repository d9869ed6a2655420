//! `DirtyVec<T>`: a vector of primitive numbers that records which pages were written since
//! its last durable checkpoint, so an incremental checkpoint neither reads nor hashes the
//! rest (libckpt-style user-directed incremental checkpointing, made automatic by the type).
//!
//! # How it stays correct
//!
//! Every mutable access goes through a method that marks the touched 4 KiB pages with the
//! current *epoch*; `save` takes a snapshot (it reads the epoch and moves it on, so writes
//! after the snapshot carry a later epoch) and attaches a [`ChangeHint`] to its bulk
//! object: "pages not written after snapshot `e_B` are unchanged since the write the store
//! confirmed under ticket `T`". The store confirms a write only once the part is durable,
//! and sends the ticket back through the hint; `(e_B, T)` is then the base of the next
//! snapshot. Nothing is ever *cleared*: a page is dirty relative to a base exactly when its
//! epoch is newer, so
//! - a round that fails before or while writing confirms nothing: the next snapshot is
//!   still relative to the older base, and every page written since then is dirty;
//! - a round that wrote the part durably and was then aborted (2PC) did confirm: its digests
//!   are digests of the bytes as of that snapshot whether or not COMMIT followed, and the
//!   store checks that each reused chunk file still exists (GC may have removed an aborted
//!   round's chunks), writing it again from memory otherwise;
//! - the store uses the hint only if it still holds digests recorded under `T` for this
//!   object name, rank, repository and chunk size, and the length is unchanged: the first
//!   checkpoint, a restarted process, another repository, a chunk-size change, a write
//!   without the fingerprint cache in between, or a failed write all fall back to hashing;
//! - a snapshot captured now and written later (the unaligned protocol copies the bytes)
//!   carries its own epoch, so writes made meanwhile stay dirty for the snapshot after it.
//!
//! Length changes, `restore`, `clone` and the escape hatches ([`DirtyVec::vec_mut`],
//! [`DirtyVec::as_mut_slice`], [`DirtyVec::fill`]) mark everything dirty.
//!
//! The bookkeeping itself is [`PageTracker`], so containers of other crates (the
//! distributed `DVec` of `lazarus-dist`) get exactly the same guarantees.

use crate::element::Element;
use crate::{Checkpoint, StateError, StateReader, StateWriter};
use lazarus_format::{ChangeHint, WriteTicket, WrittenSink};
use std::fmt;
use std::ops::{Bound, Deref, DerefMut, Range, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Granularity of dirty tracking in bytes: the store's smallest chunk size, so any chunk
/// size is a whole number of pages apart from an object's last chunk.
pub const TRACK_PAGE: usize = 4096;

/// A `Vec<T>` of primitive numbers that remembers which pages changed since its last
/// durable checkpoint; checkpoints as a bulk object with the schema name `Vec<T>`, so a
/// field can switch between `Vec<T>` and `DirtyVec<T>` without invalidating checkpoints.
///
/// Reading is free (`Deref<Target = [T]>`); every way to write marks what it touches:
/// [`get_mut`](Self::get_mut), [`set`](Self::set), [`slice_mut`](Self::slice_mut),
/// [`iter_mut`](Self::iter_mut) (pages of the range), [`fill`](Self::fill),
/// [`as_mut_slice`](Self::as_mut_slice) and [`vec_mut`](Self::vec_mut) (everything),
/// [`mark_dirty`](Self::mark_dirty) (explicit). Marking a page is one store per page,
/// so bulk access through a range is as fast as a plain slice.
///
/// ```
/// use lazarus_state::DirtyVec;
/// let mut v = DirtyVec::from(vec![0.0f64; 1 << 20]);
/// v.set(10, 1.5);                                  // marks one 4 KiB page
/// if let Some(s) = v.slice_mut(4096..8192) {       // marks the pages of the range
///     s.iter_mut().for_each(|x| *x += 1.0);
/// }
/// assert_eq!(v[10], 1.5);
/// ```
pub struct DirtyVec<T: Element> {
    data: Vec<T>,
    tracker: PageTracker,
}

/// The write tracking behind [`DirtyVec`], for any container that saves one bulk object
/// through [`StateWriter::bulk_hinted`]: it remembers the epoch of the last write to each
/// [`TRACK_PAGE`]-byte page of the object's bytes and produces the [`ChangeHint`] of a
/// snapshot (module doc, "How it stays correct").
///
/// The container's duty: call [`mark`](Self::mark) with the byte range of every write
/// (or [`mark_all`](Self::mark_all) for writes it cannot locate), [`resize`](Self::resize)
/// when the byte length changes, [`reset`](Self::reset) after a restore or when the bytes
/// were replaced by others, and pass [`hint`](Self::hint) to `bulk_hinted` in `save`.
/// Forgetting a mark is the only way to get a wrong checkpoint; every other mistake only
/// costs re-hashing.
pub struct PageTracker {
    /// Epoch of the last write to each page.
    pages: Vec<u64>,
    /// Every page counts as written at this epoch as well (escape hatches, restore).
    all: u64,
    /// Writes are tagged with the current value; `hint` takes it and moves it on.
    epoch: AtomicU64,
    /// The last durable write the store confirmed: (snapshot epoch, its ticket).
    inbox: Arc<Inbox>,
}

#[derive(Default)]
struct Inbox(Mutex<Option<(u64, WriteTicket)>>);

impl Inbox {
    fn get(&self) -> Option<(u64, WriteTicket)> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sink of one snapshot: records that the snapshot taken at `epoch` is durable.
struct Snapshot {
    inbox: Arc<Inbox>,
    epoch: u64,
}

impl WrittenSink for Snapshot {
    fn written(&self, ticket: WriteTicket) {
        // The newest confirmation wins; the store uses the hint only while it still holds
        // digests under exactly this ticket, so a confirmation racing another write of the
        // same object can cost a re-hash but never give a wrong digest.
        *self.inbox.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((self.epoch, ticket));
    }
}

fn pages_for(bytes: usize) -> usize {
    bytes.div_ceil(TRACK_PAGE)
}

impl PageTracker {
    /// Tracking for an object of `bytes` bytes that was never written anywhere: everything
    /// is dirty and there is no base.
    pub fn new(bytes: usize) -> Self {
        let mut t = PageTracker {
            pages: Vec::new(),
            all: 1,
            epoch: AtomicU64::new(1),
            inbox: Arc::default(),
        };
        t.reset(bytes);
        t
    }

    /// Marks the pages of the byte range `bytes` written.
    pub fn mark(&mut self, bytes: Range<usize>) {
        if bytes.is_empty() {
            return;
        }
        let first = bytes.start / TRACK_PAGE;
        let last = (bytes.end - 1) / TRACK_PAGE;
        let epoch = *self.epoch.get_mut();
        if let Some(p) = self.pages.get_mut(first..=last) {
            p.fill(epoch);
        } else {
            // Pages out of step with the data (a container that missed a `resize`): be
            // conservative.
            self.all = epoch;
        }
    }

    /// Marks everything written.
    pub fn mark_all(&mut self) {
        self.all = *self.epoch.get_mut();
    }

    /// The object now has `bytes` bytes: everything counts as written (the store ignores
    /// a hint whose length differs from the last write anyway).
    pub fn resize(&mut self, bytes: usize) {
        let epoch = *self.epoch.get_mut();
        self.pages.resize(pages_for(bytes), epoch);
        self.all = epoch;
    }

    /// Forgets every confirmed write: everything dirty, tracking sized to `bytes`, and no
    /// base. After a restore or a clone nothing these bytes were written as is known.
    pub fn reset(&mut self, bytes: usize) {
        self.pages = vec![0; pages_for(bytes)];
        self.all = *self.epoch.get_mut();
        self.inbox = Arc::default();
    }

    /// Takes a snapshot of an object of `bytes` bytes: the hint for its bytes as they are
    /// now. Writes marked after this call belong to the next snapshot.
    pub fn hint(&self, bytes: usize) -> ChangeHint {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst);
        let base = self.inbox.get().filter(|(b, _)| self.all <= *b);
        let (ticket, dirty) = match base {
            None => (None, Vec::new()),
            Some((b, t)) if self.pages.len() == pages_for(bytes) => {
                let mut words = vec![0u64; self.pages.len().div_ceil(64)];
                for (p, _) in self.pages.iter().enumerate().filter(|(_, &e)| e > b) {
                    if let Some(w) = words.get_mut(p / 64) {
                        *w |= 1 << (p % 64);
                    }
                }
                (Some(t), words)
            }
            Some(_) => (None, Vec::new()),
        };
        let sink = Arc::new(Snapshot {
            inbox: self.inbox.clone(),
            epoch,
        });
        ChangeHint::new(bytes as u64, TRACK_PAGE as u64, ticket, dirty, Some(sink))
    }

    /// Bytes in pages that the next snapshot of an object of `bytes` bytes will have the
    /// store read: everything without a confirmed write, else the pages written since the
    /// snapshot of the last confirmed write. Informational (benchmarks, tests).
    pub fn dirty_bytes(&self, bytes: usize) -> u64 {
        let total = bytes as u64;
        match self.inbox.get() {
            None => total,
            Some((base, _)) if self.all > base => total,
            Some((base, _)) => {
                let dirty = self.pages.iter().filter(|&&e| e > base).count() as u64;
                (dirty * TRACK_PAGE as u64).min(total)
            }
        }
    }
}

impl fmt::Debug for PageTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageTracker")
            .field("pages", &self.pages.len())
            .field("base", &self.inbox.get().map(|(e, _)| e))
            .finish()
    }
}

fn to_range(r: impl RangeBounds<usize>, len: usize) -> Option<Range<usize>> {
    let start = match r.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match r.end_bound() {
        Bound::Included(&e) => e.checked_add(1)?,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => len,
    };
    (start <= end && end <= len).then_some(start..end)
}

impl<T: Element> DirtyVec<T> {
    /// An empty vector.
    pub fn new() -> Self {
        Self::from(Vec::new())
    }

    /// `n` copies of `value`.
    pub fn from_elem(value: T, n: usize) -> Self {
        Self::from(vec![value; n])
    }

    /// The elements, read-only (also available through `Deref`).
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }

    /// The inner vector, giving up tracking.
    pub fn into_inner(self) -> Vec<T> {
        self.data
    }

    /// Element `i` for writing (marks its page), or `None` past the end.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        if i >= self.data.len() {
            return None;
        }
        self.mark(i..i + 1);
        self.data.get_mut(i)
    }

    /// Writes `value` at `i` (marks its page) and returns the old value, or `None` (and
    /// changes nothing) past the end.
    pub fn set(&mut self, i: usize, value: T) -> Option<T> {
        self.get_mut(i).map(|x| std::mem::replace(x, value))
    }

    /// The elements of `range` for writing (marks their pages), or `None` if the range is
    /// not within the vector.
    pub fn slice_mut(&mut self, range: impl RangeBounds<usize>) -> Option<&mut [T]> {
        let r = to_range(range, self.data.len())?;
        self.mark(r.clone());
        self.data.get_mut(r)
    }

    /// Iterates mutably over the elements of `range` (marks their pages up front), or
    /// `None` if the range is not within the vector.
    pub fn iter_mut(
        &mut self,
        range: impl RangeBounds<usize>,
    ) -> Option<std::slice::IterMut<'_, T>> {
        self.slice_mut(range).map(|s| s.iter_mut())
    }

    /// Sets every element to `value` (everything dirty).
    pub fn fill(&mut self, value: T) {
        self.mark_all_dirty();
        self.data.fill(value);
    }

    /// Marks the pages of `range` dirty, e.g. to force their chunks to be re-read; a range
    /// not within the vector is clipped to it.
    pub fn mark_dirty(&mut self, range: impl RangeBounds<usize>) {
        let len = self.data.len();
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .min(len);
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => len,
        }
        .min(len);
        if start < end {
            self.mark(start..end);
        }
    }

    /// Marks everything dirty: the next checkpoint reads every byte.
    pub fn mark_all_dirty(&mut self) {
        self.tracker.mark_all();
    }

    /// The whole slice for writing, untracked in detail: marks everything dirty.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        self.mark_all_dirty();
        &mut self.data
    }

    /// The inner `Vec` for any change, including of its length: marks everything dirty
    /// (and re-sizes the tracking when the guard is dropped).
    pub fn vec_mut(&mut self) -> VecMut<'_, T> {
        self.mark_all_dirty();
        VecMut { v: self }
    }

    /// Bytes in pages that the next checkpoint will read: everything when the store has
    /// not confirmed a write of this vector yet, else the pages written since the snapshot
    /// of the last confirmed write. Informational (benchmarks, tests).
    pub fn dirty_bytes(&self) -> u64 {
        self.tracker.dirty_bytes(self.bytes())
    }

    fn bytes(&self) -> usize {
        std::mem::size_of_val(self.data.as_slice())
    }

    fn mark(&mut self, elems: Range<usize>) {
        let size = std::mem::size_of::<T>();
        self.tracker.mark(elems.start * size..elems.end * size);
    }
}

impl<T: Element> From<Vec<T>> for DirtyVec<T> {
    fn from(data: Vec<T>) -> Self {
        let tracker = PageTracker::new(std::mem::size_of_val(data.as_slice()));
        DirtyVec { data, tracker }
    }
}

impl<T: Element> Default for DirtyVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Element> Clone for DirtyVec<T> {
    /// A copy of the elements whose tracking starts over (everything dirty): the copy has
    /// not been written anywhere yet.
    fn clone(&self) -> Self {
        Self::from(self.data.clone())
    }
}

impl<T: Element + fmt::Debug> fmt::Debug for DirtyVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.data.fmt(f)
    }
}

impl<T: Element + PartialEq> PartialEq for DirtyVec<T> {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data
    }
}

impl<T: Element> Deref for DirtyVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.data
    }
}

impl<T: Element> FromIterator<T> for DirtyVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self::from(iter.into_iter().collect::<Vec<T>>())
    }
}

/// Write access to a [`DirtyVec`]'s inner `Vec` (everything is dirty); re-sizes the
/// tracking to the new length when dropped.
pub struct VecMut<'a, T: Element> {
    v: &'a mut DirtyVec<T>,
}

impl<T: Element> Deref for VecMut<'_, T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.v.data
    }
}

impl<T: Element> DerefMut for VecMut<'_, T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.v.data
    }
}

impl<T: Element> Drop for VecMut<'_, T> {
    fn drop(&mut self) {
        let bytes = self.v.bytes();
        self.v.tracker.resize(bytes);
    }
}

impl<T: Element> Checkpoint for DirtyVec<T> {
    fn save<'a>(&'a self, out: &mut StateWriter<'a>) -> Result<(), StateError> {
        let hint = self.tracker.hint(self.bytes());
        out.bulk_hinted(&format!("Vec<{}>", T::NAME), &self.data, None, hint)
    }

    fn restore(&mut self, inp: &mut StateReader) -> Result<(), StateError> {
        let r = inp.bulk_into(&format!("Vec<{}>", T::NAME), &mut self.data);
        // Even a failed restore may have changed the data.
        let bytes = self.bytes();
        self.tracker.reset(bytes);
        r.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint_of(v: &DirtyVec<u64>) -> ChangeHint {
        let objs = crate::save(v).unwrap();
        objs[0].hint.clone().unwrap()
    }

    #[test]
    fn first_snapshot_has_no_base_and_confirmation_gives_one() {
        let mut v = DirtyVec::from(vec![0u64; 4 * 512]); // 4 pages
        let h = hint_of(&v);
        assert_eq!(h.base(), None);
        assert_eq!(h.len(), 4 * 4096);
        let t = WriteTicket::unique();
        h.written(t);
        assert_eq!(v.dirty_bytes(), 0);
        v.set(600, 1); // page 1
        assert_eq!(v.dirty_bytes(), 4096);
        let h2 = hint_of(&v);
        assert_eq!(h2.base(), Some(t));
        assert!(h2.is_clean(0..4096));
        assert!(!h2.is_clean(4096..8192));
        assert!(h2.is_clean(8192..16384));
    }

    #[test]
    fn unconfirmed_snapshot_keeps_pages_dirty() {
        let mut v = DirtyVec::from(vec![0u64; 4 * 512]);
        let t = WriteTicket::unique();
        hint_of(&v).written(t);
        v.set(0, 1);
        let _lost = hint_of(&v); // a round that never wrote: no confirmation
        v.set(3 * 512, 1);
        let h = hint_of(&v);
        assert_eq!(h.base(), Some(t));
        assert!(!h.is_clean(0..4096), "written before the lost round");
        assert!(h.is_clean(4096..12288));
        assert!(!h.is_clean(12288..16384));
    }

    #[test]
    fn snapshot_written_late_leaves_later_writes_dirty() {
        let mut v = DirtyVec::from(vec![0u64; 4 * 512]);
        hint_of(&v).written(WriteTicket::unique());
        v.set(0, 1);
        let snap = hint_of(&v); // captured now, written later
        v.set(512, 1); // after the capture
        let t = WriteTicket::unique();
        snap.written(t);
        let h = hint_of(&v);
        assert_eq!(h.base(), Some(t));
        assert!(h.is_clean(0..4096), "in the confirmed snapshot");
        assert!(!h.is_clean(4096..8192), "written after the snapshot");
    }

    #[test]
    fn escape_hatches_restore_and_clone_mark_everything() {
        let mut v = DirtyVec::from(vec![0u64; 1024]);
        hint_of(&v).written(WriteTicket::unique());
        assert_eq!(v.dirty_bytes(), 0);
        v.as_mut_slice()[0] = 1;
        assert_eq!(v.dirty_bytes(), 8192);
        assert_eq!(hint_of(&v).base(), None);
        hint_of(&v).written(WriteTicket::unique());
        v.vec_mut().push(5);
        assert_eq!(v.len(), 1025);
        let h = hint_of(&v);
        assert_eq!((h.base(), h.len()), (None, 1025 * 8));
        h.written(WriteTicket::unique());
        assert_eq!(v.dirty_bytes(), 0);
        v.set(1024, 6);
        assert_eq!(v.dirty_bytes(), 4096);
        let c = v.clone();
        assert_eq!(c.dirty_bytes(), 1025 * 8);
        assert_eq!(c, v);
        hint_of(&v).written(WriteTicket::unique());
        let loaded = crate::to_loaded(&crate::save(&c).unwrap());
        crate::restore(&mut v, loaded).unwrap();
        assert_eq!(v.dirty_bytes(), 1025 * 8);
        assert_eq!(hint_of(&v).base(), None);
    }

    #[test]
    fn out_of_range_access_is_refused_without_marking() {
        let mut v = DirtyVec::from(vec![1u32; 10]);
        hint_of_u32(&v).written(WriteTicket::unique());
        assert!(v.get_mut(10).is_none());
        assert_eq!(v.set(10, 0), None);
        assert!(v.slice_mut(5..11).is_none());
        assert!(v.iter_mut(11..).is_none());
        v.mark_dirty(20..30);
        assert_eq!(v.dirty_bytes(), 0);
        assert_eq!(v.set(9, 7), Some(1));
        assert_eq!(v.iter_mut(..).map(|i| i.count()), Some(10));
        assert_eq!(v.dirty_bytes(), 40);
    }

    fn hint_of_u32(v: &DirtyVec<u32>) -> ChangeHint {
        crate::save(v).unwrap()[0].hint.clone().unwrap()
    }

    #[test]
    fn schema_is_that_of_vec() {
        let v: DirtyVec<f32> = [1.0f32, 2.0].into_iter().collect();
        let objs = crate::save(&v).unwrap();
        assert_eq!(objs[0].info.type_name, "Vec<f32>");
        let mut plain: Vec<f32> = Vec::new();
        crate::restore(&mut plain, crate::to_loaded(&objs)).unwrap();
        assert_eq!(plain, [1.0, 2.0]);
        let mut back = DirtyVec::<f32>::new();
        crate::restore(&mut back, crate::to_loaded(&crate::save(&plain).unwrap())).unwrap();
        assert_eq!(&*back, &[1.0, 2.0]);
    }
}
