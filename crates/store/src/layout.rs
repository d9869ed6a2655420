//! The only place where repository paths are built (docs/FORMAT.md, "Repository layout").

use lazarus_format::{CheckpointId, ChunkDigest, Rank};
use std::path::{Path, PathBuf};

/// Paths inside one repository root.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
        }
    }
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
    pub(crate) fn format_file(&self) -> PathBuf {
        self.root.join("FORMAT")
    }
    pub(crate) fn lock_file(&self) -> PathBuf {
        self.root.join("LOCK")
    }
    pub(crate) fn chunks_dir(&self) -> PathBuf {
        self.root.join("chunks")
    }
    /// Every fan-out directory `chunks/00` .. `chunks/ff` (the first two hex digits).
    pub(crate) fn chunk_dirs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        (0..=255u8).map(|b| self.chunks_dir().join(format!("{b:02x}")))
    }
    pub(crate) fn chunk_dir(&self, d: &ChunkDigest) -> PathBuf {
        let hex = d.to_hex();
        self.chunks_dir().join(hex.get(..2).unwrap_or("00"))
    }
    pub(crate) fn chunk_name(d: &ChunkDigest) -> String {
        d.to_hex()
    }
    pub(crate) fn chunk(&self, d: &ChunkDigest) -> PathBuf {
        self.chunk_dir(d).join(Self::chunk_name(d))
    }
    pub(crate) fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub(crate) fn checkpoint_dir(&self, id: CheckpointId) -> PathBuf {
        self.checkpoints_dir().join(id.to_string())
    }
    pub(crate) fn manifest_name(rank: Rank) -> String {
        format!("rank-{}.manifest", rank.0)
    }
    pub(crate) fn manifest(&self, id: CheckpointId, rank: Rank) -> PathBuf {
        self.checkpoint_dir(id).join(Self::manifest_name(rank))
    }
    pub(crate) fn commit(&self, id: CheckpointId) -> PathBuf {
        self.checkpoint_dir(id).join(COMMIT_NAME)
    }

    /// Checkpoint directory ids present (committed or not), ascending. Entries whose names
    /// are not 16 decimal digits are ignored.
    pub(crate) fn checkpoint_ids(&self) -> Result<Vec<CheckpointId>, crate::StoreError> {
        let dir = self.checkpoints_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(crate::StoreError::io(&dir, "listing checkpoints", e)),
        };
        let mut ids = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| crate::StoreError::io(&dir, "listing checkpoints", e))?;
            if let Some(id) = ent.file_name().to_str().and_then(parse_id) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }
}

/// Name of the commit record inside a checkpoint directory.
pub(crate) const COMMIT_NAME: &str = "COMMIT";

fn parse_id(s: &str) -> Option<CheckpointId> {
    if s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok().map(CheckpointId)
    } else {
        None
    }
}
