//! The Lazarus checkpoint format: identifiers, object descriptions, chunk and manifest
//! encodings. This crate does no I/O; it turns values into bytes and bytes back into
//! values, verifying every digest and length on the way. See `docs/FORMAT.md`.
#![deny(missing_docs)]

mod ids;
mod object;

pub use ids::{CheckpointId, ChunkDigest, Epoch, Rank};
pub use object::{DType, GlobalRange, LoadedObject, ObjectInfo, ObjectKind, ObjectSpec};
