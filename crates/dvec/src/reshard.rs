//! N -> M restart: cutting the parts of a checkpoint written by N ranks into what each of
//! M ranks restores.
//!
//! Classification, from the manifests alone — by the sharing each object records (format
//! 1.2, [`Sharing`]), never by the number of old ranks:
//! - **distributed**: a bulk object that records a [`GlobalRange`] on every rank (a DVec);
//!   the ranges must tile the array. New rank `r` of M gets rows
//!   `Distribution::even(rows, M).range(r)` (rows of the width in the DVec type name), the
//!   layout `DVec::new` creates, re-assembled from the old parts that overlap it.
//! - **replicated**: an object recorded `replicated` (`#[checkpoint(replicated)]`); every
//!   new rank gets rank 0's copy, after checking that every old rank's copy is identical
//!   (the declaration is a promise, and a broken one is refused, naming the ranks).
//! - **per-rank**: an object recorded `rank` (anything not declared), or that only some
//!   ranks have. It cannot be redistributed: the restore is refused with an error naming it.
//!
//! Checkpoints written before 1.2 record no sharing. For those (decision, docs/DIST.md): a
//! checkpoint of N > 1 ranks keeps the old rule — a non-distributed object identical on
//! every old rank is replicated — while a checkpoint of one rank is refused for every
//! non-distributed object: with a single old copy, "identical on every rank" proves nothing,
//! and copying a per-rank value to every new rank would silently change the result.
//!
//! Reading: [`Reshard::assemble_from`] takes a [`PartSource`], which reads whole objects
//! (replicated ones, to check every old copy) or byte ranges of one object (the rows a new
//! rank gets from an overlapping old part), so a new rank reads only what it keeps.

use crate::dvec::row_width_of;
use crate::error::{DistError, Result};
use crate::partition::Distribution;
use lazarus_format::{GlobalRange, LoadedObject, ObjectInfo, ObjectKind, Rank, Sharing};
use std::collections::BTreeMap;

/// How an object of a checkpoint moves to another world size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectClass {
    /// Blocks of one distributed array: re-cut for the new world.
    Distributed {
        /// the old parts' ranges, indexed by old rank
        parts: Vec<GlobalRange>,
        /// scalars per row (from the DVec type name; 1 otherwise)
        row_width: u64,
    },
    /// Must be identical on every old rank (checked while assembling).
    Replicated,
}

/// Where [`Reshard::assemble_from`] reads the parts of the old ranks.
pub trait PartSource {
    /// The reader's error (e.g. the store's, naming the file).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The whole object `name` of old rank `rank`'s part.
    fn object(&mut self, rank: Rank, name: &str) -> std::result::Result<LoadedObject, Self::Error>;

    /// Fills `out` with bytes `offset..offset + out.len()` of object `name` of old rank
    /// `rank`'s part (straight into the restored block: no intermediate buffer). A reader
    /// that cannot read ranges may read the object and copy the slice; returning `false`
    /// (the object is shorter) is reported as a bad checkpoint naming the field and rank.
    fn read_into(
        &mut self,
        rank: Rank,
        name: &str,
        offset: u64,
        out: &mut [u8],
    ) -> std::result::Result<bool, Self::Error>;
}

/// A [`PartSource`] over a closure that reads whole objects (`fetch(old_rank, name)`).
struct Whole<F>(F);

impl<F, E> PartSource for Whole<F>
where
    F: FnMut(Rank, &str) -> std::result::Result<LoadedObject, E>,
    E: std::error::Error + Send + Sync + 'static,
{
    type Error = E;

    fn object(&mut self, rank: Rank, name: &str) -> std::result::Result<LoadedObject, E> {
        (self.0)(rank, name)
    }

    fn read_into(
        &mut self,
        rank: Rank,
        name: &str,
        offset: u64,
        out: &mut [u8],
    ) -> std::result::Result<bool, E> {
        let o = (self.0)(rank, name)?;
        let a = usize::try_from(offset).unwrap_or(usize::MAX);
        match a.checked_add(out.len()).and_then(|b| o.data.get(a..b)) {
            Some(src) => {
                out.copy_from_slice(src);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// One read [`Reshard::assemble_from`] makes for a new rank ([`Reshard::reads`]), so a
/// holder of old parts can send a new rank exactly what it will read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartRead {
    /// The whole object `name` of old rank `old` (a replicated object).
    Object {
        /// the old rank
        old: Rank,
        /// the object's name
        name: String,
    },
    /// Bytes `offset..offset + len` of object `name` of old rank `old` (a distributed one).
    Range {
        /// the old rank
        old: Rank,
        /// the object's name
        name: String,
        /// the first byte
        offset: u64,
        /// how many bytes
        len: u64,
    },
}

/// A plan to restore a checkpoint of `old_world` ranks on `new_world` ranks.
#[derive(Clone, Debug)]
pub struct Reshard {
    old_world: u32,
    new_world: u32,
    objects: BTreeMap<String, (ObjectInfo, ObjectClass)>,
}

impl Reshard {
    /// Classifies the objects of every old rank's manifest (`old[r]` lists rank `r`'s
    /// objects). Errors, naming the field and rank, when an object is missing on some rank,
    /// changes type or kind between ranks, or has global ranges that do not tile.
    pub fn new(old: &[Vec<ObjectInfo>], new_world: u32) -> Result<Self> {
        if old.is_empty() || new_world == 0 {
            return Err(DistError::invalid(format!(
                "cannot reshard {} onto {new_world}",
                lazarus_format::count(old.len() as u64, "rank")
            )));
        }
        let old_world = u32::try_from(old.len())
            .map_err(|_| DistError::invalid("too many ranks in the checkpoint"))?;
        let mut objects = BTreeMap::new();
        let first = &old[0];
        for info in first {
            let mut ranges = Vec::with_capacity(old.len());
            for (r, part) in old.iter().enumerate() {
                let o = part.iter().find(|o| o.name == info.name).ok_or_else(|| {
                    DistError::bad_checkpoint(format!(
                        "field `{}` is saved by rank 0 but not by rank {r}: per-rank state \
                         is not redistributable",
                        info.name
                    ))
                })?;
                if o.type_name != info.type_name || !same_shape(&o.kind, &info.kind) {
                    return Err(DistError::bad_checkpoint(format!(
                        "field `{}` has type {} {:?} on rank 0 but {} {:?} on rank {r}",
                        info.name, info.type_name, info.kind, o.type_name, o.kind
                    )));
                }
                if o.sharing != info.sharing {
                    return Err(DistError::bad_checkpoint(format!(
                        "field `{}` is recorded as {} on rank 0 but {} on rank {r}",
                        info.name,
                        sharing_tag(info.sharing),
                        sharing_tag(o.sharing)
                    )));
                }
                if let ObjectKind::Bulk {
                    global: Some(g),
                    len,
                    ..
                } = &o.kind
                {
                    if g.len != *len {
                        return Err(DistError::bad_checkpoint(format!(
                            "field `{}` on rank {r}: global range {g:?} disagrees with {len} \
                             stored elements",
                            info.name
                        )));
                    }
                    ranges.push(*g);
                }
            }
            let class = match &info.kind {
                ObjectKind::Bulk {
                    global: Some(_), ..
                } => {
                    Distribution::from_ranges(&ranges).map_err(|e| {
                        DistError::bad_checkpoint(format!(
                            "field `{}`, in scalars: {}",
                            info.name,
                            e.message()
                        ))
                    })?;
                    let w = row_width_of(&info.type_name);
                    let total = ranges.first().map(|g| g.total).unwrap_or(0);
                    if total % w != 0 {
                        return Err(DistError::bad_checkpoint(format!(
                            "field `{}`: {total} scalars are not whole rows of {w}",
                            info.name
                        )));
                    }
                    // Every old block in whole rows too, as a restore on the same number
                    // of ranks demands (found in review: only the total was checked here,
                    // so the two paths accepted different checkpoints).
                    if let Some((r, g)) = (0u32..)
                        .zip(&ranges)
                        .find(|(_, g)| g.start % w != 0 || g.len % w != 0)
                    {
                        return Err(DistError::bad_checkpoint(format!(
                            "field `{}` on rank {r}: global range {g:?} is not whole rows of {w}",
                            info.name
                        )));
                    }
                    ObjectClass::Distributed {
                        parts: ranges,
                        row_width: w,
                    }
                }
                _ => match info.sharing {
                    Some(Sharing::Replicated) => ObjectClass::Replicated,
                    // Written before 1.2: N > 1 identical copies are evidence, one is not.
                    None if old_world > 1 => ObjectClass::Replicated,
                    None => {
                        return Err(DistError::bad_checkpoint(format!(
                            "field `{}` of this 1-rank checkpoint may be per-rank state: the \
                             checkpoint predates format 1.2, which records replicated fields, \
                             and one old copy proves nothing (restore it on 1 rank, declare the \
                             field #[checkpoint(replicated)] or make it a DVec, and checkpoint \
                             again)",
                            info.name
                        )))
                    }
                    Some(Sharing::Rank | Sharing::Distributed) => {
                        return Err(DistError::bad_checkpoint(format!(
                            "field `{}` is per-rank state (neither a DVec nor declared \
                             #[checkpoint(replicated)]), not redistributable from {old_world} \
                             to {}",
                            info.name,
                            lazarus_format::count(new_world, "rank")
                        )))
                    }
                },
            };
            objects.insert(info.name.clone(), (info.clone(), class));
        }
        for (r, part) in old.iter().enumerate().skip(1) {
            if let Some(o) = part.iter().find(|o| !objects.contains_key(&o.name)) {
                return Err(DistError::bad_checkpoint(format!(
                    "field `{}` is saved by rank {r} but not by rank 0: per-rank state is \
                     not redistributable",
                    o.name
                )));
            }
        }
        Ok(Reshard {
            old_world,
            new_world,
            objects,
        })
    }

    /// Every object with its class, by name.
    pub fn classes(&self) -> impl Iterator<Item = (&str, &ObjectClass)> {
        self.objects.iter().map(|(n, (_, c))| (n.as_str(), c))
    }

    /// The world size of the checkpoint.
    pub fn old_world(&self) -> u32 {
        self.old_world
    }

    /// The world size restored on.
    pub fn new_world(&self) -> u32 {
        self.new_world
    }

    /// Checks that every replicated object really is identical on all old ranks, fetching
    /// it from each (`fetch(old_rank, name)`). The error names the first field that is
    /// per-rank state. A supervisor calls this once before relaunching on a new size.
    ///
    /// Copies are compared byte for byte (the Rust type is unknown here), so a value that
    /// is equal on every rank but encodes in a per-process order (a `HashMap` or
    /// `HashSet`) is refused too; for serde copies of equal length the error says so and
    /// names `BTreeMap`/`BTreeSet` (docs/DIST.md).
    pub fn check<E>(
        &self,
        fetch: &mut impl FnMut(Rank, &str) -> Result<LoadedObject, E>,
    ) -> Result<()>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        self.check_from(&mut Whole(fetch))
    }

    /// [`Reshard::check`] over any [`PartSource`].
    pub fn check_from(&self, src: &mut impl PartSource) -> Result<()> {
        for (name, (_, class)) in &self.objects {
            if *class == ObjectClass::Replicated {
                self.replicated(name, src)?;
            }
        }
        Ok(())
    }

    fn replicated(&self, name: &str, src: &mut impl PartSource) -> Result<LoadedObject> {
        let base = fetch_one(src, Rank(0), name)?;
        for r in 1..self.old_world {
            let o = fetch_one(src, Rank(r), name)?;
            if o.data != base.data {
                // Copies are compared as bytes: a serde value equal on every rank but
                // encoded in a per-process order (a HashMap or HashSet iterates in a
                // random order) differs here. Same-length serde copies are the sign.
                let hint = if matches!(base.info.kind, ObjectKind::Serde)
                    && o.data.len() == base.data.len()
                {
                    "; if the value is in fact the same on every rank, it does not encode \
                     deterministically: a HashMap or HashSet encodes in a random order, use \
                     BTreeMap/BTreeSet (docs/DIST.md)"
                } else {
                    ""
                };
                return Err(DistError::bad_checkpoint(format!(
                    "field `{name}` differs between rank 0 and rank {r}: it is per-rank state, \
                     not redistributable, so a checkpoint of {} cannot restore on {} \
                     (make it a DVec, or the same on every rank and declared \
                     #[checkpoint(replicated)]{hint})",
                    lazarus_format::count(self.old_world, "rank"),
                    self.new_world
                )));
            }
        }
        Ok(base)
    }

    /// The objects new rank `rank` restores from, fetching old parts with
    /// `fetch(old_rank, name)` (only the parts overlapping its block, and every rank's copy
    /// of replicated objects to check they agree). Pass the result to
    /// `lazarus_state::restore`.
    pub fn assemble<E>(
        &self,
        rank: Rank,
        fetch: &mut impl FnMut(Rank, &str) -> Result<LoadedObject, E>,
    ) -> Result<Vec<LoadedObject>>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        self.assemble_from(rank, &mut Whole(fetch))
    }

    /// Every read [`Reshard::assemble_from`] makes for new rank `rank`, in its order:
    /// every old rank's copy of each replicated object, and of each distributed object the
    /// byte range of every old part that overlaps the rank's block. A reader that serves
    /// exactly these (e.g. bytes another rank sent) serves the whole assembly.
    pub fn reads(&self, rank: Rank) -> Result<Vec<PartRead>> {
        if rank.0 >= self.new_world {
            return Err(DistError::invalid(format!(
                "{rank} out of range for the new world of {}",
                self.new_world
            )));
        }
        let mut out = Vec::new();
        for (name, (info, class)) in &self.objects {
            match class {
                ObjectClass::Replicated => {
                    for r in 0..self.old_world {
                        out.push(PartRead::Object {
                            old: Rank(r),
                            name: name.clone(),
                        });
                    }
                }
                ObjectClass::Distributed { parts, row_width } => {
                    let (pieces, _, _) =
                        block_pieces(name, info, parts, *row_width, self.new_world, rank)?;
                    for (from, offset, len) in pieces {
                        out.push(PartRead::Range {
                            old: from,
                            name: name.clone(),
                            offset,
                            len,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// [`Reshard::assemble`] reading from `src`: of each overlapping old part of a
    /// distributed object only the byte range this rank keeps, of a replicated object every
    /// old rank's copy (they must be identical; rank 0's is used).
    pub fn assemble_from(
        &self,
        rank: Rank,
        src: &mut impl PartSource,
    ) -> Result<Vec<LoadedObject>> {
        if rank.0 >= self.new_world {
            return Err(DistError::invalid(format!(
                "{rank} out of range for the new world of {}",
                self.new_world
            )));
        }
        let mut out = Vec::with_capacity(self.objects.len());
        for (name, (info, class)) in &self.objects {
            match class {
                ObjectClass::Replicated => out.push(self.replicated(name, src)?),
                ObjectClass::Distributed { parts, row_width } => {
                    out.push(self.cut(name, info, parts, *row_width, rank, src)?)
                }
            }
        }
        Ok(out)
    }

    fn cut(
        &self,
        name: &str,
        info: &ObjectInfo,
        parts: &[GlobalRange],
        w: u64,
        rank: Rank,
        src: &mut impl PartSource,
    ) -> Result<LoadedObject> {
        let ObjectKind::Bulk { dtype, .. } = info.kind else {
            return Err(DistError::bad_checkpoint(format!(
                "field `{name}` is not bulk"
            )));
        };
        let (pieces, want, total) = block_pieces(name, info, parts, w, self.new_world, rank)?;
        let esize = dtype.size() as u64;
        let too_large = |bytes: u64| {
            DistError::bad_checkpoint(format!(
                "field `{name}`: rank {}'s block of {bytes} bytes does not fit this host's memory",
                rank.0
            ))
        };
        let wanted = (want.end - want.start).saturating_mul(esize);
        let n_bytes = usize::try_from(wanted).map_err(|_| too_large(wanted))?;
        // The size comes from the manifests: an allocation that fails is an error, not an
        // abort (found in review).
        let mut data = Vec::new();
        data.try_reserve_exact(n_bytes)
            .map_err(|_| too_large(wanted))?;
        data.resize(n_bytes, 0);
        let mut rest: &mut [u8] = &mut data;
        for (from, a, n) in pieces {
            let n = usize::try_from(n).map_err(|_| too_large(n))?;
            let Some((piece, tail)) = std::mem::take(&mut rest).split_at_mut_checked(n) else {
                return Err(DistError::bad_checkpoint(format!(
                    "field `{name}`: the old blocks overlapping rank {} hold more than its \
                     {n_bytes} bytes",
                    rank.0
                )));
            };
            rest = tail;
            let ok = src.read_into(from, name, a, piece).map_err(|e| {
                DistError::with_source(
                    crate::error::DistErrorKind::BadCheckpoint,
                    format!("reading field `{name}` of rank {}", from.0),
                    e,
                )
            })?;
            if !ok {
                return Err(DistError::bad_checkpoint(format!(
                    "field `{name}` of rank {}: too short for its global range",
                    from.0
                )));
            }
        }
        if !rest.is_empty() {
            return Err(DistError::bad_checkpoint(format!(
                "field `{name}`: the old blocks do not cover rank {}'s rows",
                rank.0
            )));
        }
        let len = want.end - want.start;
        Ok(LoadedObject {
            info: ObjectInfo {
                name: name.to_string(),
                type_name: info.type_name.clone(),
                kind: ObjectKind::Bulk {
                    dtype,
                    len,
                    global: Some(GlobalRange {
                        start: want.start,
                        len,
                        total,
                    }),
                },
                sharing: info.sharing,
                layout: None,
            },
            data,
        })
    }
}

/// The block of new rank `rank` of `new_world` for a distributed object (its scalars
/// `want`, of `total`), and the byte ranges of the old parts that fill it, in order:
/// `(old rank, byte offset in that part, bytes)`.
type Pieces = (Vec<(Rank, u64, u64)>, std::ops::Range<u64>, u64);

fn block_pieces(
    name: &str,
    info: &ObjectInfo,
    parts: &[GlobalRange],
    w: u64,
    new_world: u32,
    rank: Rank,
) -> Result<Pieces> {
    let ObjectKind::Bulk { dtype, .. } = info.kind else {
        return Err(DistError::bad_checkpoint(format!(
            "field `{name}` is not bulk"
        )));
    };
    let esize = dtype.size() as u64;
    let old = Distribution::from_ranges(parts)?;
    let total = old.total();
    let rows = Distribution::even(total / w, new_world as usize)?.range(rank);
    let want = rows.start * w..rows.end * w;
    let mut pieces = Vec::new();
    for (from, sub) in old.overlapping(want.clone()) {
        let base = old.range(from).start;
        pieces.push((
            from,
            (sub.start - base) * esize,
            (sub.end - sub.start) * esize,
        ));
    }
    Ok((pieces, want, total))
}

fn sharing_tag(s: Option<Sharing>) -> &'static str {
    s.map_or("unrecorded (before format 1.2)", Sharing::tag)
}

fn fetch_one(src: &mut impl PartSource, r: Rank, name: &str) -> Result<LoadedObject> {
    src.object(r, name).map_err(|e| {
        DistError::with_source(
            crate::error::DistErrorKind::BadCheckpoint,
            format!("reading field `{name}` of rank {}", r.0),
            e,
        )
    })
}

/// Same kind and dtype (bulk lengths and ranges may differ between ranks).
fn same_shape(a: &ObjectKind, b: &ObjectKind) -> bool {
    match (a, b) {
        (
            ObjectKind::Bulk {
                dtype: da,
                global: ga,
                ..
            },
            ObjectKind::Bulk {
                dtype: db,
                global: gb,
                ..
            },
        ) => da == db && ga.is_some() == gb.is_some(),
        (ObjectKind::Serde, ObjectKind::Serde) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_obj(name: &str, sharing: Option<Sharing>) -> ObjectInfo {
        ObjectInfo {
            name: name.into(),
            type_name: "u64".into(),
            kind: ObjectKind::Serde,
            sharing,
            layout: None,
        }
    }

    fn worlds(n: usize, sharing: Option<Sharing>) -> Vec<Vec<ObjectInfo>> {
        (0..n).map(|_| vec![serde_obj("x", sharing)]).collect()
    }

    #[test]
    fn recorded_sharing_decides_whatever_the_old_world_size() {
        for n in [1, 2, 4] {
            for m in [1, 3, 5] {
                let rank = Reshard::new(&worlds(n, Some(Sharing::Rank)), m);
                let e = rank.unwrap_err().to_string();
                assert!(e.contains("`x` is per-rank state"), "{n}->{m}: {e}");
                let repl = Reshard::new(&worlds(n, Some(Sharing::Replicated)), m).unwrap();
                assert_eq!(
                    repl.classes().next().map(|c| c.1.clone()),
                    Some(ObjectClass::Replicated)
                );
            }
        }
    }

    #[test]
    fn unrecorded_sharing_keeps_the_comparison_for_several_ranks_and_refuses_one() {
        let old = Reshard::new(&worlds(3, None), 2).unwrap();
        assert_eq!(
            old.classes().next().map(|c| c.1.clone()),
            Some(ObjectClass::Replicated)
        );
        let e = Reshard::new(&worlds(1, None), 4).unwrap_err().to_string();
        assert!(e.contains("field `x` of this 1-rank checkpoint"), "{e}");
        assert!(e.contains("#[checkpoint(replicated)]"), "{e}");
    }

    #[test]
    fn ranks_disagreeing_on_sharing_are_refused() {
        let old = vec![
            vec![serde_obj("x", Some(Sharing::Replicated))],
            vec![serde_obj("x", Some(Sharing::Rank))],
        ];
        let e = Reshard::new(&old, 3).unwrap_err().to_string();
        assert!(
            e.contains("`x` is recorded as replicated on rank 0 but rank on rank 1"),
            "{e}"
        );
    }

    /// Rank `start..start + len` (in scalars) of a 16-scalar vector of rows of 4.
    fn grid(start: u64, len: u64) -> ObjectInfo {
        ObjectInfo {
            name: "grid".into(),
            type_name: "DVec<[f64; 4]>".into(),
            kind: ObjectKind::Bulk {
                dtype: lazarus_format::DType::F64,
                len,
                global: Some(GlobalRange {
                    start,
                    len,
                    total: 16,
                }),
            },
            sharing: Some(Sharing::Distributed),
            layout: None,
        }
    }

    /// Found in review: a tiling error said neither the unit nor which way it counts; the
    /// same fault after a same-N restore is counted in rows.
    #[test]
    fn reshard_tiling_error_states_units() {
        let e = Reshard::new(&[vec![grid(0, 8)], vec![grid(4, 12)]], 3)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field `grid`, in scalars: rank 1 starts at global index 4"),
            "{e}"
        );
    }

    /// Review: an N->M restore accepted old blocks cut inside a row (only the total was
    /// checked in rows), which a same-N restore of the same checkpoint refuses.
    #[test]
    fn old_blocks_cut_inside_a_row_are_refused_as_on_a_same_size_restore() {
        let e = Reshard::new(&[vec![grid(0, 6)], vec![grid(6, 10)]], 3)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field `grid` on rank 0: global range") && e.contains("whole rows of 4"),
            "{e}"
        );
        assert!(Reshard::new(&[vec![grid(0, 8)], vec![grid(8, 8)]], 3).is_ok());
    }

    /// Records every read of an assembly and serves deterministic bytes.
    struct Recorder(Vec<PartRead>);

    #[derive(Debug)]
    struct Never;
    impl std::fmt::Display for Never {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("never")
        }
    }
    impl std::error::Error for Never {}

    impl PartSource for Recorder {
        type Error = Never;
        fn object(&mut self, rank: Rank, name: &str) -> std::result::Result<LoadedObject, Never> {
            self.0.push(PartRead::Object {
                old: rank,
                name: name.into(),
            });
            Ok(LoadedObject {
                info: serde_obj(name, Some(Sharing::Replicated)),
                data: vec![7],
            })
        }
        fn read_into(
            &mut self,
            rank: Rank,
            name: &str,
            offset: u64,
            out: &mut [u8],
        ) -> std::result::Result<bool, Never> {
            self.0.push(PartRead::Range {
                old: rank,
                name: name.into(),
                offset,
                len: out.len() as u64,
            });
            Ok(true)
        }
    }

    /// Old parts of a `DVec<[u32; w]>` of `rows` rows cut at `cuts`, plus a replicated
    /// serde object.
    fn dvec_parts(rows: u64, w: u64, cuts: &[u64]) -> Vec<Vec<ObjectInfo>> {
        let mut bounds: Vec<u64> = cuts.iter().map(|c| c % (rows + 1)).collect();
        bounds.push(0);
        bounds.push(rows);
        bounds.sort_unstable();
        bounds
            .windows(2)
            .map(|b| {
                let (start, len) = (b[0] * w, (b[1] - b[0]) * w);
                vec![
                    ObjectInfo {
                        name: "grid".into(),
                        type_name: format!("DVec<[u32; {w}]>"),
                        kind: ObjectKind::Bulk {
                            dtype: lazarus_format::DType::U32,
                            len,
                            global: Some(GlobalRange {
                                start,
                                len,
                                total: rows * w,
                            }),
                        },
                        sharing: Some(Sharing::Distributed),
                        layout: None,
                    },
                    serde_obj("params", Some(Sharing::Replicated)),
                ]
            })
            .collect()
    }

    proptest::proptest! {
        /// `reads` lists exactly what the assembly reads, for any old layout, N and M.
        #[test]
        fn reads_are_exactly_what_assembly_reads(
            rows in 0u64..40,
            w in 1u64..4,
            cuts in proptest::collection::vec(0u64..64, 0..6),
            m in 1u32..8,
        ) {
            let old = dvec_parts(rows, w, &cuts);
            let plan = Reshard::new(&old, m).unwrap();
            for r in 0..m {
                let mut rec = Recorder(Vec::new());
                plan.assemble_from(Rank(r), &mut rec).unwrap();
                proptest::prop_assert_eq!(&rec.0, &plan.reads(Rank(r)).unwrap());
            }
            proptest::prop_assert!(plan.reads(Rank(m)).is_err());
        }
    }
}
