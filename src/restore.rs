//! Loading one rank's objects of a chosen checkpoint, on the same or on another number of
//! ranks, and telling damage (fall back to an older checkpoint, together) from a fatal
//! error (fail every rank).
//!
//! The agreement itself (rank 0 picks, every rank reports, all fall back or all fail) is
//! `lazarus_coord::restore`, shared with `AsyncSession`; this module only loads.

use crate::error::JobError;
use lazarus_coord::restore::LoadError;
use lazarus_dist::{PartSource, Reshard};
use lazarus_format::{CheckpointId, LoadedObject, Manifest, ObjectInfo, Rank};
use lazarus_store::{RepoReader, StoreError, StoreErrorKind};
use std::path::{Path, PathBuf};

/// A store error while loading checkpoint `id` of the repository at `repo`: damage (fall
/// back) or a fatal [`JobError::Store`] ([`lazarus_coord::restore::classify`] decides).
pub(crate) fn classify(repo: &Path, id: CheckpointId, e: StoreError) -> LoadError<JobError> {
    LoadError::from_store(id, e, |source| JobError::Store {
        path: repo.to_path_buf(),
        source,
    })
}

/// Loads `me`'s objects of checkpoint `id`, written by `old_world` ranks, for a world of
/// `new_world`. Same size: `me`'s own part. Other size: redistributed with [`Reshard`],
/// reading only the byte ranges of the old parts that `me` keeps. Returns the objects and
/// whether they were redistributed.
pub(crate) fn load(
    repo: &Path,
    id: CheckpointId,
    old_world: u32,
    me: Rank,
    new_world: u32,
) -> Result<Vec<LoadedObject>, LoadError<JobError>> {
    let reader = RepoReader::open(repo).map_err(|e| classify(repo, id, e))?;
    if old_world == new_world {
        // Without the managed files' objects (issue #17): those are restored by the files
        // layer, reading only the chunks that differ.
        return lazarus_files::load_state_objects(&reader, id, me)
            .map_err(|e| classify(repo, id, e));
    }
    let manifests = reader.manifests(id).map_err(|e| classify(repo, id, e))?;
    let infos: Vec<Vec<ObjectInfo>> = manifests
        .iter()
        .map(|m| m.objects.iter().map(|o| o.info.clone()).collect())
        .collect();
    let refuse = |source| {
        LoadError::Fatal(JobError::NotRedistributable {
            checkpoint: id,
            saved: old_world,
            current: new_world,
            source,
        })
    };
    let plan = Reshard::new(&infos, new_world).map_err(refuse)?;
    let mut src = StoreSource {
        reader: &reader,
        manifests: &manifests,
        failed: None,
    };
    match plan.assemble_from(me, &mut src) {
        Ok(objects) => Ok(objects),
        // A read failed: damage or I/O, not a property of the state.
        Err(e) => match src.failed.take() {
            Some((kind, path, message)) => Err(classify(
                repo,
                id,
                StoreError::new(kind, path.as_deref(), message),
            )),
            None => Err(refuse(e)),
        },
    }
}

/// Reads old parts through the verified manifests; remembers the first store error so
/// that damage is told apart from a refusal.
struct StoreSource<'a> {
    reader: &'a RepoReader,
    manifests: &'a [Manifest],
    failed: Option<(StoreErrorKind, Option<PathBuf>, String)>,
}

impl StoreSource<'_> {
    fn note<T>(&mut self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r {
            self.failed.get_or_insert_with(|| {
                (
                    e.kind(),
                    e.path().map(Path::to_path_buf),
                    e.message().to_string(),
                )
            });
        }
        r
    }

    fn manifest(&self, rank: Rank) -> Result<&Manifest, StoreError> {
        self.manifests.get(rank.index()).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::InvalidArgument,
                None,
                format!("no manifest of {rank}"),
            )
        })
    }
}

impl PartSource for StoreSource<'_> {
    type Error = StoreError;

    fn object(&mut self, rank: Rank, name: &str) -> Result<LoadedObject, StoreError> {
        let r = self
            .manifest(rank)
            .and_then(|m| self.reader.load_object(m, name));
        self.note(r)
    }

    fn read_into(
        &mut self,
        rank: Rank,
        name: &str,
        offset: u64,
        out: &mut [u8],
    ) -> Result<bool, StoreError> {
        let r = self
            .manifest(rank)
            .and_then(|m| self.reader.read_object_range_into(m, name, offset, out));
        self.note(r).map(|()| true)
    }
}
