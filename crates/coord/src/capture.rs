//! The capture of an asynchronous checkpoint (issue #16, docs/ASYNC.md), shared by the
//! Job API's aligned rounds and [`crate::AsyncSession`]'s unaligned ones: the state's
//! objects are copied into buffers owned by the checkpoint, so the program may change its
//! memory as soon as the call returns (snapshot isolation), and an *incremental* capture
//! copies only the chunks changed since this rank's previous committed checkpoint.
//!
//! One place for the rule that decides whether a capture may be incremental
//! ([`incremental_base`], [`unchanged_since`]): a tracked object (one with a change hint
//! that knows the write it is relative to), a committed predecessor of this process, and
//! the store's word, per chunk, that the chunk is clean relative to exactly that
//! predecessor's part ([`PartWriter::unchanged_since`]). Any doubt makes the capture a
//! full one; a reused chunk that is gone when the part is written fails the part naming
//! it ([`PartWriter::write_with`]), never wrong data.
//!
//! One place, too, for the staging budget (issue #16 item 3, [`default_budget`]): a
//! capture that would copy more than the budget is taken in pieces ([`split`]): the heads
//! copied into staging, the tails written as durable chunks inside the call
//! ([`PartWriter::write_ahead`]), the rest of the part later
//! ([`PartWriter::write_with`]).

use lazarus_format::{CheckpointId, ObjectSpec, Rank};
use lazarus_store::{PartWriter, StoreError, Unchanged};
use std::borrow::Cow;

/// Default staging budget when physical memory is not known.
pub const FALLBACK_BUDGET: u64 = 1 << 30;

/// The default staging budget (the Job's `.staging_budget`, `AsyncConfig::staging_budget`):
/// a quarter of physical memory (`/proc/meminfo`), else [`FALLBACK_BUDGET`]. A capture
/// larger than the budget is taken in pieces ([`split`]).
pub fn default_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(FALLBACK_BUDGET, |kib| kib.saturating_mul(1024) / 4)
}

/// An object's tail to write inside the call ([`PartWriter::write_ahead`]), and the
/// offset it starts at.
pub type Tail<'a> = (ObjectSpec<'a>, u64);

/// Splits a state larger than the staging `budget` (issue #16 item 3): borrowed objects,
/// in order, go whole into the heads while they fit; the first one that does not fit is
/// cut at the largest multiple of `chunk` (the part writer's [`PartWriter::chunk_size`])
/// that does (its head staged, its tail written inside the call); every later borrowed
/// object goes whole into the tails (with an empty head, so the part still lists it).
/// Owned objects are always heads: they are moved, not copied. The heads' borrowed bytes
/// are at most `budget`.
pub fn split(
    objects: Vec<ObjectSpec<'_>>,
    budget: u64,
    chunk: u64,
) -> (Vec<ObjectSpec<'_>>, Vec<Tail<'_>>) {
    let chunk = chunk.max(1);
    let mut room = budget;
    let mut heads = Vec::with_capacity(objects.len());
    let mut tails = Vec::new();
    for o in objects {
        let b = match o.data {
            Cow::Borrowed(b) if b.len() as u64 > room => b,
            Cow::Borrowed(b) => {
                room -= b.len() as u64;
                heads.push(ObjectSpec {
                    data: Cow::Borrowed(b),
                    ..o
                });
                continue;
            }
            Cow::Owned(_) => {
                heads.push(o);
                continue;
            }
        };
        // `cut` < b.len() because room < b.len(); a multiple of the chunk size.
        let cut = room / chunk * chunk;
        room -= cut;
        let at = usize::try_from(cut).unwrap_or(0).min(b.len());
        let (head, tail) = b.split_at(at);
        // The hint describes the whole object: a split one is hashed in full.
        heads.push(ObjectSpec {
            info: o.info.clone(),
            data: Cow::Borrowed(head),
            hint: None,
        });
        tails.push((
            ObjectSpec {
                info: o.info,
                data: Cow::Borrowed(tail),
                hint: None,
            },
            at as u64,
        ));
    }
    (heads, tails)
}

/// What a capture that begins its part first ([`capture_into`]) needs of that part: the
/// durable round's part ([`crate::RoundTarget`]), an L1 part, an unaligned session's
/// part, or several at once. One trait so the steps of such a capture (sparse, else in
/// pieces) are written once.
pub trait CaptureTarget {
    /// Why the target refused a step.
    type Error;

    /// Per object of `objects` (same order), the chunks unchanged since `base`
    /// ([`unchanged_since`]); none at all is always correct (a full capture).
    fn unchanged_since(
        &mut self,
        objects: &[ObjectSpec<'_>],
        base: CheckpointId,
    ) -> Result<Vec<Option<Unchanged>>, Self::Error>;

    /// Makes the part name the chunks of `unchanged` by digest.
    fn reuse(&mut self, unchanged: Vec<Unchanged>) -> Result<(), Self::Error>;

    /// The chunk size tails are cut at a multiple of ([`split`]).
    fn chunk_size(&mut self) -> Result<u64, Self::Error>;

    /// Writes `tails` now, durable on return ([`PartWriter::write_ahead`]); once per
    /// capture.
    fn write_ahead(&mut self, tails: &[Tail<'_>]) -> Result<(), Self::Error>;

    /// The error of a sparse copy that found a chunk shorter than the part said
    /// ([`stage_sparse`]).
    fn staging_failed(e: StoreError) -> Self::Error;
}

/// The capture of a checkpoint whose part `target` has begun (incremental, or a state
/// over the staging `budget`; otherwise [`stage`] alone is enough): with `base`, only
/// the chunks changed since it are copied and the part names the others by digest, if
/// that copy fits the budget; else the heads that fit are copied and the tails written
/// into the target inside the call ([`split`]). Returns the staged objects and the bytes
/// copied, never more than `budget` of borrowed bytes. `pool` holds the previous
/// capture's buffers ([`stage`]).
pub fn capture_into<T: CaptureTarget + ?Sized>(
    target: &mut T,
    objects: Vec<ObjectSpec<'_>>,
    pool: Vec<Vec<u8>>,
    budget: u64,
    base: Option<CheckpointId>,
) -> Result<(Vec<ObjectSpec<'static>>, u64), T::Error> {
    if let Some(base) = base {
        let unchanged = target.unchanged_since(&objects, base)?;
        let sparse = sparse_bytes(&objects, &unchanged);
        if sparse <= budget {
            let staged = stage_sparse(objects, pool, &unchanged).map_err(T::staging_failed)?;
            target.reuse(unchanged.into_iter().flatten().collect())?;
            return Ok((staged, sparse));
        }
        // Over the budget even sparse (so a full copy is too): in pieces.
    }
    let chunk = target.chunk_size()?;
    let (heads, tails) = split(objects, budget, chunk);
    target.write_ahead(&tails)?;
    drop(tails);
    let captured = borrowed_bytes(&heads);
    Ok((stage(heads, pool), captured))
}

/// The checkpoint an incremental capture of `objects` would be relative to: `last`, this
/// rank's newest checkpoint known *committed* in this process (so its chunks are
/// retained), if some object borrowed from the program's memory carries a change hint
/// relative to a write of this process. `None`: the capture is a full one.
pub fn incremental_base(
    last: Option<CheckpointId>,
    objects: &[ObjectSpec<'_>],
) -> Option<CheckpointId> {
    last.filter(|_| {
        objects.iter().any(|o| {
            matches!(o.data, Cow::Borrowed(_))
                && o.hint.as_ref().is_some_and(|h| h.base().is_some())
        })
    })
}

/// Per object of `objects` (same order), the chunks unchanged since `rank`'s part of
/// checkpoint `base`, as `writer` (any part writer of the repository: it gives the chunk
/// size and the fingerprint cache) sees them now; `None` for an object with none. Hand
/// them to [`stage_sparse`], and the used ones to the part's
/// [`lazarus_store::WrittenAhead::reuse`].
pub fn unchanged_since(
    writer: &PartWriter,
    rank: Rank,
    objects: &[ObjectSpec<'_>],
    base: CheckpointId,
) -> Vec<Option<Unchanged>> {
    objects
        .iter()
        .map(|o| {
            matches!(o.data, Cow::Borrowed(_))
                .then(|| writer.unchanged_since(rank, o, base))
                .flatten()
        })
        .collect()
}

/// Copies `objects` into owned buffers, reusing `pool` (the previous capture's buffers,
/// in object order) so the copy lands in memory that is already mapped: the capture then
/// costs a `memcpy`, not page faults. Change hints travel with the copy: a `DirtyVec`'s
/// snapshot epoch was taken when `objects` were produced, so pages written after this
/// call stay dirty for the next checkpoint.
pub fn stage(objects: Vec<ObjectSpec<'_>>, pool: Vec<Vec<u8>>) -> Vec<ObjectSpec<'static>> {
    // Without unchanged chunks the copy cannot fail.
    stage_sparse(objects, pool, &[]).unwrap_or_default()
}

/// [`stage`] of an incremental capture: an object with unchanged chunks
/// (`unchanged[i]`, from [`unchanged_since`], decided now) is copied sparsely, only its
/// other chunks ([`Unchanged::copy_changed`]); the part names the unchanged ones by
/// digest.
pub fn stage_sparse(
    objects: Vec<ObjectSpec<'_>>,
    pool: Vec<Vec<u8>>,
    unchanged: &[Option<Unchanged>],
) -> Result<Vec<ObjectSpec<'static>>, StoreError> {
    let mut old = pool.into_iter();
    objects
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let data = match o.data {
                Cow::Owned(v) => v,
                Cow::Borrowed(b) => {
                    let mut buf = old.next().unwrap_or_default();
                    buf.clear();
                    match unchanged.get(i) {
                        Some(Some(u)) => u.copy_changed(b, &mut buf)?,
                        _ => buf.extend_from_slice(b),
                    }
                    buf
                }
            };
            Ok(ObjectSpec {
                info: o.info,
                data: Cow::Owned(data),
                hint: o.hint,
            })
        })
        .collect()
}

/// Bytes an incremental capture copies: the borrowed objects, of which only the changed
/// chunks for those with unchanged ones.
pub fn sparse_bytes(objects: &[ObjectSpec<'_>], unchanged: &[Option<Unchanged>]) -> u64 {
    objects
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o.data, Cow::Borrowed(_)))
        .map(|(i, o)| match unchanged.get(i) {
            Some(Some(u)) => u.changed_bytes(),
            _ => o.data.len() as u64,
        })
        .sum()
}

/// Bytes a full capture copies: the objects borrowed from the program's memory (owned
/// objects, already encoded by `lazarus_state::save`, move without a copy).
pub fn borrowed_bytes(objects: &[ObjectSpec<'_>]) -> u64 {
    objects
        .iter()
        .filter(|o| matches!(o.data, Cow::Borrowed(_)))
        .map(|o| o.data.len() as u64)
        .sum()
}
