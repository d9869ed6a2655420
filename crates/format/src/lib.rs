//! The Lazarus checkpoint format: identifiers, object descriptions, chunk and manifest
//! encodings. This crate does no I/O; it turns values into bytes and bytes back into
//! values, verifying every digest and length on the way. See `docs/FORMAT.md`.
//!
//! The central types: [`FormatVersion`] (the `FORMAT` file), chunk files
//! ([`encode_chunk`] / [`decode_chunk`]), and the two self-checksummed JSON records
//! [`Manifest`] (one per rank) and [`CommitRecord`] (the commit point).
#![deny(missing_docs)]
// A failed stdout/stderr must never panic a job (issue #11 item 10): no print macros.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod base64;
mod chunk;
mod envelope;
mod error;
mod ids;
mod json;
mod manifest;
mod object;
mod repo;
mod text;

pub use chunk::{
    decode_chunk, encode_chunk, shuffle, unshuffle, ChunkCodec, ChunkHeader, CHUNK_HEADER_LEN,
    CHUNK_LAYOUT_VERSION, CHUNK_MAGIC, MAX_CHUNK_LEN,
};
pub use envelope::{COMMIT_MAGIC, ENVELOPE_HEADER_LEN, MANIFEST_MAGIC, MAX_ENVELOPE_BODY};
pub use error::{FormatError, FormatErrorKind};
pub use ids::{CheckpointId, ChunkDigest, Epoch, Rank};
pub use manifest::{
    ChunkRef, CommitPart, CommitRecord, Manifest, ManifestObject, WriterInfo, MAX_INLINE_MANIFEST,
};
pub use object::{
    ChangeHint, DType, GlobalRange, LoadedObject, ObjectInfo, ObjectKind, ObjectSpec, Sharing,
    WriteTicket, WrittenSink, MAX_LAYOUT_LEN,
};
pub use repo::{FormatVersion, FORMAT_MAJOR, FORMAT_MINOR, REPO_FORMAT_LEN, REPO_MAGIC};
pub use text::{count, utc_time, Count};
