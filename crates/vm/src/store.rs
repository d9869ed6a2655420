//! The only module that talks to `lazarus-store` (so a change of the store's API touches
//! this file alone). A VM checkpoint is an ordinary one-rank checkpoint: its objects
//! (`vm.meta`, `vm.module`, `vm.memory`, `vm.file.N`) are chunked at 64 KiB — one
//! WebAssembly page — so an incremental checkpoint stores only the pages that changed:
//! the writer's per-process fingerprint cache (XXH3) finds unchanged chunks without
//! BLAKE3 and without writing them, and content addressing deduplicates the rest.

use crate::error::{Result, VmError, VmErrorKind};
use lazarus_format::{CheckpointId, DType, LoadedObject, ObjectInfo, ObjectKind, ObjectSpec, Rank};
use lazarus_store::{CommitMeta, RepoOptions, RepoReader, Repository, StoreErrorKind};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Chunk size of VM repositories: one wasm page.
pub const VM_CHUNK_SIZE: u32 = 64 << 10;

/// One object to write: name, a type label, bytes.
pub(crate) struct Obj<'a> {
    pub name: String,
    pub type_name: &'static str,
    pub data: Cow<'a, [u8]>,
}

/// What one checkpoint cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WriteStats {
    /// The committed checkpoint.
    pub id: CheckpointId,
    /// Bytes described (memory + module + files + metadata).
    pub logical_bytes: u64,
    /// Bytes of chunk files newly written.
    pub new_bytes: u64,
    /// Chunks referenced / newly written.
    pub chunks: u64,
    /// Chunks newly written.
    pub new_chunks: u64,
    /// Wall time of the write and commit, seconds.
    pub secs: f64,
}

/// A committed checkpoint found for resume.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub id: CheckpointId,
    pub step: u64,
}

/// A committed checkpoint that fails the cheap check: its id and why.
pub(crate) type Damaged = (CheckpointId, String);

/// A VM repository opened for writing.
pub(crate) struct VmRepo {
    repo: Repository,
    path: PathBuf,
    keep: usize,
}

impl VmRepo {
    /// Opens (creating) the repository; `token`: the supervisor's job token, with which
    /// the lock it holds is shared.
    pub fn open(path: &Path, token: Option<String>, keep: usize) -> Result<VmRepo> {
        let shared = token.is_some();
        let opts = RepoOptions {
            chunk_size: VM_CHUNK_SIZE,
            job_token: token,
            ..RepoOptions::default()
        };
        let repo = if shared {
            Repository::open_shared(path, opts)
        } else {
            Repository::open(path, opts)
        }
        .map_err(|e| {
            let locked = e.kind() == StoreErrorKind::Locked;
            let e = VmError::from(e);
            let kind = if locked {
                VmErrorKind::InvalidArgument
            } else {
                e.kind()
            };
            VmError::new(
                kind,
                format!("opening repository {}: {}", path.display(), e.message()),
            )
        })?;
        Ok(VmRepo {
            repo,
            path: path.to_path_buf(),
            keep: keep.max(1),
        })
    }

    /// Committed checkpoints that pass the cheap check, newest first, and the ones that
    /// fail it (id, why).
    pub fn candidates(&self) -> Result<(Vec<Candidate>, Vec<Damaged>)> {
        let reader = RepoReader::open(&self.path)?;
        let (ok, damaged) = reader.newest_committed_candidates()?;
        Ok((
            ok.into_iter()
                .map(|s| Candidate {
                    id: s.id,
                    step: s.step,
                })
                .collect(),
            damaged
                .into_iter()
                .map(|d| (d.checkpoint, d.detail))
                .collect(),
        ))
    }

    /// Loads a checkpoint's objects by name (every chunk digest verified).
    pub fn load(&self, id: CheckpointId) -> Result<BTreeMap<String, Vec<u8>>> {
        let reader = RepoReader::open(&self.path)?;
        let objs: Vec<LoadedObject> = reader.load_part(id, Rank(0))?;
        Ok(objs.into_iter().map(|o| (o.info.name, o.data)).collect())
    }

    /// Writes and commits one checkpoint of `objects`, then keeps the newest `keep`.
    pub fn write(
        &mut self,
        step: u64,
        app: BTreeMap<String, String>,
        objects: Vec<Obj<'_>>,
    ) -> Result<WriteStats> {
        let t = std::time::Instant::now();
        let pending = self.repo.begin(1)?;
        let specs: Vec<ObjectSpec<'_>> = objects
            .into_iter()
            .map(|o| {
                ObjectSpec::new(
                    ObjectInfo {
                        name: o.name,
                        type_name: o.type_name.to_string(),
                        kind: ObjectKind::Bulk {
                            dtype: DType::U8,
                            len: o.data.len() as u64,
                            global: None,
                        },
                        sharing: Some(lazarus_format::Sharing::Rank),
                        layout: None,
                    },
                    o.data,
                )
            })
            .collect();
        let receipt = pending.part_writer().write(Rank(0), &specs)?;
        let stats = WriteStats {
            id: pending.id(),
            logical_bytes: receipt.logical_bytes,
            new_bytes: receipt.stored_new_bytes,
            chunks: receipt.chunks,
            new_chunks: receipt.new_chunks,
            secs: 0.0,
        };
        self.repo
            .commit(pending, vec![receipt], CommitMeta { step, app })?;
        let stats = WriteStats {
            secs: t.elapsed().as_secs_f64(),
            ..stats
        };
        if let Err(e) = self.repo.retain(self.keep) {
            // Old checkpoints left behind cost space, not correctness.
            tracing::warn!("could not remove old checkpoints: {e}");
        }
        Ok(stats)
    }

    /// The repository root.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
