//! Rank manifests (`checkpoints/<id>/rank-<r>.manifest`) and COMMIT records
//! (`checkpoints/<id>/COMMIT`): JSON bodies in the self-checksummed envelope of
//! [`crate::envelope`]. Field meanings are specified in docs/FORMAT.md.

use crate::envelope::{self, COMMIT_MAGIC, MANIFEST_MAGIC};
use crate::error::{FormatError, FormatErrorKind};
use crate::ids::{CheckpointId, ChunkDigest, Rank};
use crate::object::{ObjectInfo, ObjectKind, Sharing, MAX_LAYOUT_LEN};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One chunk of an object, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's raw bytes; also its file name.
    pub digest: ChunkDigest,
    /// Raw (decoded) length of the chunk in bytes.
    pub len: u64,
    /// Size of the chunk file as stored (header + payload); informational, for statistics.
    pub stored: u64,
}

/// One object of a rank's part: its description, total byte length and chunk list.
/// The object's bytes are the concatenation of its chunks' raw bytes, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestObject {
    /// Name, type name and kind (bulk dtype/len/global range, or serde).
    #[serde(flatten)]
    pub info: ObjectInfo,
    /// Total length of the object's bytes.
    pub bytes: u64,
    /// The chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

/// The manifest of one rank's part of one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The checkpoint this part belongs to.
    pub checkpoint: CheckpointId,
    /// The rank that wrote it.
    pub rank: Rank,
    /// Maximum raw chunk length used when splitting objects.
    pub chunk_size: u64,
    /// The objects, in the order they were written.
    pub objects: Vec<ManifestObject>,
}

impl Manifest {
    /// Encodes the manifest file (envelope + JSON). The envelope says minor 3 when an
    /// object records its layout (format 1.3), 2 when one records its sharing (1.2), 0
    /// otherwise (byte-identical to 1.0).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs of integers and strings to JSON cannot fail.
        let body = serde_json::to_vec_pretty(self).unwrap_or_default();
        let minor = if self.objects.iter().any(|o| o.info.layout.is_some()) {
            3
        } else if self.objects.iter().any(|o| o.info.sharing.is_some()) {
            2
        } else {
            0
        };
        envelope::seal(MANIFEST_MAGIC, minor, &body)
    }

    /// Decodes and validates a manifest file: envelope, JSON (no duplicate key), and
    /// internal consistency
    /// (each object's chunk lengths add up to `bytes`; a bulk object's `bytes` equals
    /// `len * dtype width`; names unique; a recorded sharing is `distributed` exactly for
    /// the bulk objects with a global range).
    pub fn decode(file: &[u8]) -> Result<Manifest, FormatError> {
        let body = envelope::open(MANIFEST_MAGIC, "manifest", file)?;
        crate::json::check_no_duplicate_keys(body).map_err(|e| {
            FormatError::new(FormatErrorKind::Invalid, format!("manifest JSON: {e}"))
        })?;
        let m: Manifest = serde_json::from_slice(body).map_err(|e| {
            FormatError::new(FormatErrorKind::Invalid, format!("manifest JSON: {e}"))
        })?;
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), FormatError> {
        if CheckpointId::new(self.checkpoint.0).is_none() {
            return Err(invalid(CheckpointId::out_of_range(self.checkpoint.0)));
        }
        let mut names = std::collections::BTreeSet::new();
        for o in &self.objects {
            let name = &o.info.name;
            if !names.insert(name.as_str()) {
                return Err(invalid(format!("object {name:?} appears twice")));
            }
            let mut sum: u64 = 0;
            for c in &o.chunks {
                if c.len == 0 || c.len > crate::chunk::MAX_CHUNK_LEN {
                    return Err(invalid(format!(
                        "object {name:?}: chunk {} has length {}",
                        c.digest, c.len
                    )));
                }
                sum = sum
                    .checked_add(c.len)
                    .ok_or_else(|| invalid(format!("object {name:?}: chunk lengths overflow")))?;
            }
            if sum != o.bytes {
                return Err(invalid(format!(
                    "object {name:?}: chunks hold {sum} bytes, object says {}",
                    o.bytes
                )));
            }
            if let ObjectKind::Bulk { dtype, len, global } = &o.info.kind {
                let want = len.checked_mul(dtype.size() as u64);
                if want != Some(o.bytes) {
                    return Err(invalid(format!(
                        "object {name:?}: {len} elements of {} is not {} bytes",
                        dtype.tag(),
                        o.bytes
                    )));
                }
                if let Some(g) = global {
                    let end = g.start.checked_add(g.len);
                    if g.len != *len || end.is_none_or(|e| e > g.total) {
                        return Err(invalid(format!(
                            "object {name:?}: global range {}+{} of {} does not fit {len} elements",
                            g.start, g.len, g.total
                        )));
                    }
                }
            }
            if let Some(layout) = &o.info.layout {
                if o.info.kind != ObjectKind::Serde {
                    return Err(invalid(format!(
                        "object {name:?}: a layout is recorded for serde objects only"
                    )));
                }
                if layout.is_empty() || layout.len() > MAX_LAYOUT_LEN {
                    return Err(invalid(format!(
                        "object {name:?}: layout of {} bytes (1..={MAX_LAYOUT_LEN})",
                        layout.len()
                    )));
                }
            }
            if let Some(sharing) = o.info.sharing {
                let global = matches!(
                    o.info.kind,
                    ObjectKind::Bulk {
                        global: Some(_),
                        ..
                    }
                );
                if global != (sharing == Sharing::Distributed) {
                    return Err(invalid(format!(
                        "object {name:?}: sharing {:?} {} a global range",
                        sharing.tag(),
                        if global { "contradicts" } else { "needs" }
                    )));
                }
            }
        }
        Ok(())
    }
}

fn invalid(msg: String) -> FormatError {
    FormatError::new(FormatErrorKind::Invalid, msg)
}

/// One rank's entry in a COMMIT record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitPart {
    /// The rank.
    pub rank: Rank,
    /// BLAKE3 of the rank's whole manifest file (header included).
    pub manifest_digest: ChunkDigest,
    /// Sum of the rank's object lengths.
    pub logical_bytes: u64,
    /// Bytes of chunk files this rank newly wrote for this checkpoint (after dedup).
    pub stored_new_bytes: u64,
    /// Format 1.1: the rank's whole manifest file (envelope + JSON), base64, stored here
    /// instead of as `rank-<r>.manifest`. Its BLAKE3 is `manifest_digest`, exactly as for a
    /// file, so the digest has one definition. Absent in 1.0 COMMITs and for manifests over
    /// [`MAX_INLINE_MANIFEST`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

/// Largest manifest file (bytes) a writer stores inline in COMMIT; larger ones are files.
/// Readers accept any inline size that fits the COMMIT envelope.
pub const MAX_INLINE_MANIFEST: usize = 64 << 10;

impl CommitPart {
    /// The inline manifest file bytes, when this part has one: `None` for a manifest stored
    /// as a file, `Some(Err)` when the inline text is not canonical base64. The bytes are
    /// not checked against `manifest_digest` here (the reader does that, naming the file).
    pub fn inline_manifest(&self) -> Option<Result<Vec<u8>, FormatError>> {
        self.manifest.as_deref().map(|text| {
            crate::base64::decode(text).ok_or_else(|| {
                invalid(format!(
                    "COMMIT part of {}: inline manifest is not canonical base64",
                    self.rank
                ))
            })
        })
    }
}

/// Who wrote a COMMIT (informational only; readers never depend on it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterInfo {
    /// `std::env::consts::ARCH` of the writer.
    pub arch: String,
    /// `"little"` or `"big"`: the writer's native byte order (the data is LE regardless).
    pub endian: String,
    /// `std::env::consts::OS` of the writer.
    pub os: String,
    /// Version of the Lazarus crate that wrote it.
    pub lazarus_version: String,
    /// The generation of the writer's lease on backends that lock with a lease (object
    /// stores, docs/STORAGE.md); absent for a directory repository (flock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_generation: Option<u64>,
}

impl WriterInfo {
    /// Describes the running host.
    pub fn this_host() -> WriterInfo {
        WriterInfo {
            arch: std::env::consts::ARCH.to_string(),
            endian: if cfg!(target_endian = "little") {
                "little"
            } else {
                "big"
            }
            .to_string(),
            os: std::env::consts::OS.to_string(),
            lazarus_version: env!("CARGO_PKG_VERSION").to_string(),
            lease_generation: None,
        }
    }
}

/// The COMMIT record: the only commit point of a checkpoint. A checkpoint directory
/// without a valid COMMIT is never restored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// The checkpoint id (equals the directory name).
    pub checkpoint: CheckpointId,
    /// Number of ranks; `parts` has exactly one entry per rank `0..world_size`, in order.
    pub world_size: u32,
    /// Application step at which the checkpoint was taken.
    pub step: u64,
    /// Wall time of the commit, milliseconds since the Unix epoch (UTC).
    pub time_unix_ms: u64,
    /// Free-form application metadata.
    pub app: BTreeMap<String, String>,
    /// One entry per rank.
    pub parts: Vec<CommitPart>,
    /// Writer host description.
    pub writer: WriterInfo,
}

impl CommitRecord {
    /// Encodes the COMMIT file (envelope + JSON). The envelope says minor 1 when a part
    /// carries an inline manifest, 0 otherwise (byte-identical to a 1.0 writer's COMMIT).
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec_pretty(self).unwrap_or_default();
        let minor = u16::from(self.parts.iter().any(|p| p.manifest.is_some()));
        envelope::seal(COMMIT_MAGIC, minor, &body)
    }

    /// Decodes and validates a COMMIT file (envelope, JSON without duplicate keys, one part
    /// per rank in order).
    pub fn decode(file: &[u8]) -> Result<CommitRecord, FormatError> {
        let body = envelope::open(COMMIT_MAGIC, "COMMIT", file)?;
        crate::json::check_no_duplicate_keys(body)
            .map_err(|e| FormatError::new(FormatErrorKind::Invalid, format!("COMMIT JSON: {e}")))?;
        let c: CommitRecord = serde_json::from_slice(body)
            .map_err(|e| FormatError::new(FormatErrorKind::Invalid, format!("COMMIT JSON: {e}")))?;
        if CheckpointId::new(c.checkpoint.0).is_none() {
            return Err(invalid(CheckpointId::out_of_range(c.checkpoint.0)));
        }
        // A checkpoint of no rank restores nothing: accepted, it passed `verify` and then
        // stopped every restart ("cannot reshard 0 ranks") instead of a fallback to an
        // older checkpoint (regression: `a_commit_of_world_size_zero_is_refused`).
        if c.world_size == 0 {
            return Err(invalid("COMMIT has world size 0".to_string()));
        }
        if c.parts.len() as u64 != u64::from(c.world_size) {
            return Err(invalid(format!(
                "COMMIT lists {} parts for world size {}",
                c.parts.len(),
                c.world_size
            )));
        }
        for (i, p) in c.parts.iter().enumerate() {
            if p.rank.index() != i {
                return Err(invalid(format!("COMMIT part {i} is for {}", p.rank)));
            }
        }
        Ok(c)
    }
}
