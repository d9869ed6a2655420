//! Loading one rank's objects of a chosen checkpoint, on the same or on another number of
//! ranks, and telling damage (fall back to an older checkpoint, together) from a fatal
//! error (fail every rank).
//!
//! The agreement itself (rank 0 picks, every rank reports, all fall back or all fail) is
//! in `Job::restore_or_init`; this module only loads and classifies.

use crate::job::JobError;
use lazarus_dist::{PartSource, Reshard};
use lazarus_format::{CheckpointId, LoadedObject, Manifest, ObjectInfo, Rank};
use lazarus_store::{Damage, RepoReader, StoreError, StoreErrorKind};
use lazarus_supervisor::Marker;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `restore_or_init` restored nothing and returned `init()`.
#[derive(Clone, Debug, Default)]
pub struct FreshStart {
    /// The committed checkpoints that were skipped as damaged, newest first: empty for a
    /// repository without committed checkpoints, non-empty only under
    /// [`OnAllDamaged::StartFresh`](lazarus_coord::OnAllDamaged) (all their progress was
    /// given up).
    pub damaged: Vec<Damage>,
}

impl FreshStart {
    /// True when committed checkpoints existed but were all damaged.
    pub fn after_damage(&self) -> bool {
        !self.damaged.is_empty()
    }
}

/// Under a supervisor (`LAZARUS_OUTPUT_MARKERS=1`), writes `m` as a control line on stdout;
/// never shown to the user. A closed stdout must not fail the job: markers only inform.
pub(crate) fn write_marker(m: &Marker) {
    if !std::env::var(lazarus_coord::OUTPUT_MARKERS_ENV).is_ok_and(|v| v == "1") {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", m.line());
    let _ = out.flush();
}

/// One rank's outcome of loading a candidate checkpoint, exchanged with every rank.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Attempt {
    /// Loaded (every chunk verified); ready to restore.
    Ok,
    /// A file of the checkpoint is damaged or missing: every rank falls back.
    Damaged(Damage),
    /// Anything else (I/O error, state not redistributable, restore failed): every rank
    /// fails, with this message on the ranks that did not see it themselves.
    Fatal(String),
}

/// Why loading failed, before it is exchanged.
pub(crate) enum LoadError {
    /// The checkpoint is unusable; try an older one.
    Damaged(Damage),
    /// Stop: the error to return on this rank.
    Fatal(JobError),
}

impl LoadError {
    /// What the other ranks are told.
    pub(crate) fn attempt(&self) -> Attempt {
        match self {
            LoadError::Damaged(d) => Attempt::Damaged(d.clone()),
            LoadError::Fatal(e) => Attempt::Fatal(e.to_string()),
        }
    }
}

/// Damage (a decoder or digest check failed, a file is missing, a version is unknown) or
/// a fatal store error (I/O, which is not evidence that the checkpoint is bad: falling
/// back would silently lose work, so the job fails and the supervisor retries).
pub(crate) fn classify(repo: &Path, id: CheckpointId, e: StoreError) -> LoadError {
    match e.kind() {
        StoreErrorKind::Corrupt | StoreErrorKind::Missing | StoreErrorKind::VersionUnsupported => {
            LoadError::Damaged(Damage {
                checkpoint: id,
                path: e.path().map(Path::to_path_buf).unwrap_or_default(),
                kind: e.kind().to_string(),
                detail: e.to_string(),
            })
        }
        _ => LoadError::Fatal(JobError::Store {
            path: repo.to_path_buf(),
            source: e,
        }),
    }
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
) -> Result<Vec<LoadedObject>, LoadError> {
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
