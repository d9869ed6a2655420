//! Typed identifiers. Bare integers never cross a crate boundary: a `Rank` cannot be
//! confused with an index, a `CheckpointId` with a step.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The id of one process (or thread) of an SPMD job, `0..world_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rank(pub u32);

impl Rank {
    /// The rank as a `usize` index into per-rank tables.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for Rank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {}", self.0)
    }
}

/// A checkpoint epoch: incremented once per global checkpoint attempt; carried on
/// messages so that the consistent-cut protocol can tell pre- from post-cut traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

/// The id of a checkpoint in a repository; strictly increasing in commit order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckpointId(pub u64);

impl CheckpointId {
    /// The largest id: a checkpoint directory is named by its id in exactly 16 decimal
    /// digits (docs/FORMAT.md), so 10^16 and more cannot be stored. Writers refuse to
    /// begin a checkpoint past it and decoders refuse records naming one.
    pub const MAX: CheckpointId = CheckpointId(9_999_999_999_999_999);

    /// `Some` when `id` fits the 16-digit directory names (`id <= MAX`).
    pub fn new(id: u64) -> Option<CheckpointId> {
        (id <= Self::MAX.0).then_some(CheckpointId(id))
    }

    /// The error text of an id past [`CheckpointId::MAX`], naming it.
    pub fn out_of_range(id: u64) -> String {
        format!(
            "checkpoint id {id} does not fit the 16 decimal digits of a checkpoint directory \
             name (largest {})",
            Self::MAX.0
        )
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Zero-padded so lexical order of directory names equals numeric order.
        write!(f, "{:016}", self.0)
    }
}

/// The BLAKE3 digest of a chunk's *uncompressed* bytes; the chunk's name in a repository.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkDigest(pub [u8; 32]);

impl ChunkDigest {
    /// Digest of `raw` bytes.
    pub fn of(raw: &[u8]) -> Self {
        ChunkDigest(*blake3::hash(raw).as_bytes())
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses 64 hex characters; `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ChunkDigest(out))
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkDigest({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for ChunkDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChunkDigest::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid chunk digest {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_round_trips() {
        let d = ChunkDigest::of(b"lazarus");
        assert_eq!(ChunkDigest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(ChunkDigest::from_hex("zz"), None);
        assert_eq!(ChunkDigest::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn checkpoint_id_sorts_lexically() {
        assert!(CheckpointId(9).to_string() < CheckpointId(10).to_string());
    }
}
