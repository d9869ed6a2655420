//! Everything this crate reads from the checkpoint repository, through the store's public
//! API only: a rank's manifest, the `@files` index, byte ranges of file objects, and the
//! part's other objects for the state layer.

use crate::journal::Entry;
use crate::snapshot::{is_files_object, PartIndex, FILE_PREFIX, INDEX_OBJECT};
use lazarus_format::{CheckpointId, LoadedObject, Manifest, Rank};
use lazarus_store::{RepoReader, StoreError, StoreErrorKind};
use std::collections::BTreeMap;

/// The managed files of one rank's part of a committed checkpoint.
pub(crate) struct TargetTree {
    pub id: CheckpointId,
    pub chunk: u64,
    pub entries: BTreeMap<String, Entry>,
    pub outputs: Vec<String>,
    manifest: Manifest,
}

/// Loads the part's objects except the managed files (for the state layer), each chunk
/// verified: `RepoReader::load_part` without reading file contents.
pub fn load_state_objects(
    reader: &RepoReader,
    id: CheckpointId,
    rank: Rank,
) -> Result<Vec<LoadedObject>, StoreError> {
    let m = reader.manifest(id, rank)?;
    if !m.objects.iter().any(|o| is_files_object(&o.info.name)) {
        return reader.load_part(id, rank);
    }
    m.objects
        .iter()
        .filter(|o| !is_files_object(&o.info.name))
        .map(|o| reader.load_object(&m, &o.info.name))
        .collect()
}

/// True when any rank's part of checkpoint `id` holds managed files.
pub(crate) fn has_files(
    reader: &RepoReader,
    id: CheckpointId,
    rank: Rank,
) -> Result<bool, StoreError> {
    let m = reader.manifest(id, rank)?;
    Ok(m.objects.iter().any(|o| o.info.name == INDEX_OBJECT))
}

/// The managed files of `rank` in checkpoint `id`; `None` when
/// the part has none. A damaged index is `Corrupt` (the checkpoint is skipped).
pub(crate) fn load_target(
    reader: &RepoReader,
    id: CheckpointId,
    rank: Rank,
) -> Result<Option<TargetTree>, StoreError> {
    let m = reader.manifest(id, rank)?;
    if !m.objects.iter().any(|o| o.info.name == INDEX_OBJECT) {
        return Ok(None);
    }
    let corrupt = |msg: String| {
        StoreError::new(
            StoreErrorKind::Corrupt,
            None,
            format!("checkpoint {id} {rank}: managed files index: {msg}"),
        )
    };
    let idx = reader.load_object(&m, INDEX_OBJECT)?;
    let idx: PartIndex =
        postcard::from_bytes(&idx.data).map_err(|e| corrupt(format!("does not decode: {e}")))?;
    if idx.version != 1 {
        return Err(StoreError::new(
            StoreErrorKind::VersionUnsupported,
            None,
            format!(
                "checkpoint {id} {rank}: managed files index version {}",
                idx.version
            ),
        ));
    }
    let mut entries = BTreeMap::new();
    for (p, dir) in idx.entries {
        if crate::path::normalize(std::path::Path::new(&p))
            .ok()
            .as_deref()
            != Some(p.as_str())
        {
            return Err(corrupt(format!("invalid path {p:?}")));
        }
        let e = if dir {
            Entry::Dir
        } else {
            let name = format!("{FILE_PREFIX}{p}");
            let o = m
                .objects
                .iter()
                .find(|o| o.info.name == name)
                .ok_or_else(|| corrupt(format!("no object for {p:?}")))?;
            let full = o.chunks.iter().all(|c| c.len == m.chunk_size);
            let last_ok = o
                .chunks
                .last()
                .is_none_or(|c| c.len <= m.chunk_size && c.len > 0);
            let sum: u64 = o.chunks.iter().map(|c| c.len).sum();
            let shape = o
                .chunks
                .split_last()
                .is_none_or(|(_, rest)| rest.iter().all(|c| c.len == m.chunk_size));
            if sum != o.bytes || !(full || (shape && last_ok)) {
                return Err(corrupt(format!(
                    "chunks of {p:?} do not tile its {} bytes",
                    o.bytes
                )));
            }
            Entry::File {
                len: o.bytes,
                digests: o.chunks.iter().map(|c| c.digest.0).collect(),
            }
        };
        entries.insert(p, e);
    }
    Ok(Some(TargetTree {
        id,
        chunk: m.chunk_size,
        entries,
        outputs: idx.outputs,
        manifest: m,
    }))
}

impl TargetTree {
    /// Bytes `offset..offset + out.len()` of managed file `path`, verified.
    pub(crate) fn fetch(
        &self,
        reader: &RepoReader,
        path: &str,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), StoreError> {
        reader.read_object_range_into(&self.manifest, &format!("{FILE_PREFIX}{path}"), offset, out)
    }
}
