//! Recording the managed files in a checkpoint: one bulk object per file (its bytes,
//! mapped, with a change hint so the store reads only changed chunks) plus the `@files`
//! index (directories and output marks), in the rank's part of the aligned round — so
//! the files are part of the same cut as the state on every rank.

use crate::error::{FilesError, FilesErrorKind};
use crate::fs::{Files, Inner, Node};
use crate::journal::{Entry, LocalState};
use crate::mmap::Map;
use crate::publish;
use lazarus_format::{
    ChangeHint, CheckpointId, ChunkDigest, DType, ObjectInfo, ObjectKind, ObjectSpec, Sharing,
    WrittenSink,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, MutexGuard};

/// Name of the index object in a rank's part.
pub const INDEX_OBJECT: &str = "@files";
/// Prefix of the file objects' names (`@files/<managed path>`).
pub const FILE_PREFIX: &str = "@files/";
/// Type name recorded for file objects.
const FILE_TYPE: &str = "lazarus_files::File";
const INDEX_TYPE: &str = "lazarus_files::Index";

/// True for the objects this crate adds to a part (the state layer must not see them).
pub fn is_files_object(name: &str) -> bool {
    name == INDEX_OBJECT || name.starts_with(FILE_PREFIX)
}

/// The `@files` object: the tree's directories and files (sizes and digests are in the
/// manifest, per file object) and the output marks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartIndex {
    pub version: u32,
    /// Every managed path; `true` for a directory.
    pub entries: Vec<(String, bool)>,
    pub outputs: Vec<String>,
}

/// The managed files frozen for one checkpoint: holds the lock (no file changes while
/// the part is written) and the mappings the objects borrow. Tell it the round's outcome
/// with [`Snapshot::committed`] or [`Snapshot::failed`].
pub struct Snapshot<'a> {
    guard: MutexGuard<'a, Inner>,
    index: Vec<u8>,
    maps: Vec<(u64, String, Map, ChangeHint)>,
}

impl Files {
    /// Freezes the managed files for a checkpoint: flushes every changed file and the
    /// journal to disk, updates the digests of changed chunks, maps the files. Before
    /// `restore_or_init` (no tree yet) the snapshot is empty.
    pub fn snapshot(&self) -> Result<Snapshot<'_>, FilesError> {
        let mut g = self.lock();
        let mut maps = Vec::new();
        g.crash_point()?;
        if !g.ready {
            return Ok(Snapshot {
                guard: g,
                index: Vec::new(),
                maps,
            });
        }
        if let Some(j) = g.journal.as_mut() {
            j.sync()?;
        }
        let c = g.chunk;
        let ids: Vec<(String, u64)> = g
            .tree
            .iter()
            .filter_map(|(p, n)| match n {
                Node::File(id) => Some((p.clone(), *id)),
                Node::Dir => None,
            })
            .collect();
        for (p, id) in ids {
            let w = g.layout.work_path(&p);
            g.fd(id)?;
            let Some(s) = g.files.get_mut(&id) else {
                continue;
            };
            let Some(fd) = s.fd.as_ref() else { continue };
            if s.unsynced {
                fd.sync_data()
                    .map_err(|e| FilesError::io(&w, "syncing before the checkpoint", &e))?;
            }
            // Mapped at the length the job wrote: a file cut shorter behind the job's back
            // would make every page past its new end a SIGBUS when hashed or stored
            // (regression: `a_file_truncated_outside_the_job_fails_the_checkpoint_by_name`).
            // A truncation racing this very checkpoint is not caught (docs/FILES.md).
            let on_disk = fd
                .metadata()
                .map_err(|e| FilesError::io(&w, "stat before the checkpoint", &e))?
                .len();
            if on_disk < s.len {
                return Err(FilesError::new(
                    FilesErrorKind::ForeignChange,
                    Some(&w),
                    format!(
                        "managed file is {on_disk} bytes but the job wrote {}: it was truncated outside the job, and a checkpoint cannot record it (restart from the last checkpoint)",
                        s.len
                    ),
                ));
            }
            let map = Map::new(fd, s.len).map_err(|e| FilesError::io(&w, "mapping", &e))?;
            if s.handles == 0 {
                // The mapping keeps the file; a tree of many files must not pin a
                // descriptor each between checkpoints.
                s.fd = None;
            }
            s.unsynced = false;
            let n = s.len.div_ceil(c);
            s.digests.resize(n as usize, [0; 32]);
            let bytes = map.bytes();
            for k in 0..n {
                if s.stale.contains(k) || s.digests[k as usize] == [0; 32] {
                    let a = (k * c) as usize;
                    let b = ((k + 1) * c).min(s.len) as usize;
                    s.digests[k as usize] = ChunkDigest::of(&bytes[a..b]).0;
                }
            }
            s.stale.clear();
            let sink: Arc<dyn WrittenSink> = s.sink.clone();
            let hint = ChangeHint::new(s.len, c, s.ticket, s.unhinted.words().to_vec(), Some(sink));
            maps.push((id, p, map, hint));
        }
        let index = PartIndex {
            version: 1,
            entries: g
                .tree
                .iter()
                .map(|(p, n)| (p.clone(), *n == Node::Dir))
                .collect(),
            outputs: g.outputs.iter().cloned().collect(),
        };
        let index = postcard::to_allocvec(&index).map_err(|e| {
            FilesError::new(
                FilesErrorKind::Io,
                None,
                format!("encoding the files index: {e}"),
            )
        })?;
        Ok(Snapshot {
            guard: g,
            index,
            maps,
        })
    }
}

impl Snapshot<'_> {
    /// The objects to add to the rank's part (none before the tree is restored).
    pub fn objects(&self) -> Vec<ObjectSpec<'_>> {
        if !self.guard.ready {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(self.maps.len() + 1);
        out.push(ObjectSpec::new(
            ObjectInfo {
                name: INDEX_OBJECT.into(),
                type_name: INDEX_TYPE.into(),
                kind: ObjectKind::Serde,
                // Managed files are each rank's own (docs/FILES.md): never moved N->M.
                sharing: Some(Sharing::Rank),
                layout: None,
            },
            self.index.as_slice(),
        ));
        for (_, p, map, hint) in &self.maps {
            let bytes = map.bytes();
            out.push(
                ObjectSpec::new(
                    ObjectInfo {
                        name: format!("{FILE_PREFIX}{p}"),
                        type_name: FILE_TYPE.into(),
                        kind: ObjectKind::Bulk {
                            dtype: DType::U8,
                            len: bytes.len() as u64,
                            global: None,
                        },
                        sharing: Some(Sharing::Rank),
                        layout: None,
                    },
                    bytes,
                )
                .with_hint(hint.clone()),
            );
        }
        out
    }

    /// Number of managed files recorded.
    pub fn file_count(&self) -> usize {
        self.maps.len()
    }

    fn take_tickets(&mut self) {
        for (id, _, _, _) in &self.maps {
            if let Some(s) = self.guard.files.get_mut(id) {
                if let Some(t) = s.sink.take() {
                    // The store holds the digests of this durable write: later hints are
                    // relative to it, whatever the round's outcome.
                    s.ticket = Some(t);
                    s.unhinted.clear();
                }
            }
        }
    }

    /// The round failed or aborted: the base stays the previous committed checkpoint and
    /// the journal goes on.
    pub fn failed(mut self) {
        self.take_tickets();
    }

    /// The round committed as checkpoint `id` on every rank: it becomes the base (the
    /// local state is replaced durably and the journal restarted), then output is
    /// published. An error here leaves the previous base and journal in force (still a
    /// correct record of every change since); a publishing error is only logged and the
    /// publication retried at the next commit.
    pub fn committed(mut self, id: CheckpointId) -> Result<(), FilesError> {
        self.take_tickets();
        self.maps.clear();
        let g = &mut *self.guard;
        if !g.ready {
            return Ok(());
        }
        let state = local_state(g, Some(id.0));
        let stored = state.store(&g.layout.state());
        if let Err(e) = stored {
            // The store fails after its rename only when the directory's fsync does: the
            // state on disk then names `id`, and memory must follow it, or later changes
            // go into a journal headed with the old base, which the next restart would
            // not take as the state's (finding 8 of the 2026-12-07 review).
            let on_disk = LocalState::load(&g.layout.state()).ok().flatten();
            if on_disk.is_none_or(|s| s.base != Some(id.0)) {
                return Err(e);
            }
            tracing::warn!("{e} (the new base is in place; it may not survive a power loss)");
        }
        g.base = Some(id.0);
        g.journal = None;
        for s in g.files.values_mut() {
            s.touched = false;
            s.resized = false;
            s.journaled.clear();
            s.base_len = s.path.is_some().then_some(s.len);
        }
        // The new journal starts lazily, at the first change.
        if let Err(e) = publish::publish_committed(g) {
            tracing::warn!(
                "publishing output after checkpoint {}: {e} (retried at the next commit)",
                id.0
            );
        }
        Ok(())
    }
}

/// The tree as a base index (the digests are current: called right after a snapshot).
pub(crate) fn local_state(g: &Inner, base: Option<u64>) -> LocalState {
    let mut entries = BTreeMap::new();
    for (p, n) in &g.tree {
        let e = match n {
            Node::Dir => Entry::Dir,
            Node::File(id) => match g.files.get(id) {
                Some(s) => Entry::File {
                    len: s.len,
                    digests: s.digests.clone(),
                },
                None => continue,
            },
        };
        entries.insert(p.clone(), e);
    }
    LocalState {
        base,
        chunk: g.chunk,
        entries,
        outputs: g.outputs.iter().cloned().collect(),
    }
}
