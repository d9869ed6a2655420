//! The crash-safe directory store for Lazarus checkpoints (format v1, docs/FORMAT.md).
//!
//! Three central types:
//! - [`Repository`]: the single writer (holds `LOCK`): `begin` a checkpoint, `commit` it
//!   once every rank's [`PartReceipt`] is in, `abort` it, `retain` the newest K and GC.
//! - [`PartWriter`]: writes one rank's objects (chunked, hashed, deduplicated, compressed,
//!   fsynced) and its manifest; usable from any process without the lock.
//! - [`RepoReader`]: lock-free reads: list committed checkpoints, load a rank's part with
//!   every digest verified, find the newest intact checkpoint, verify everything.
//!
//! Crash safety: files are written temp -> fsync -> rename -> fsync(dir); chunks are durable
//! before the manifest naming them, manifests before COMMIT, and COMMIT is the only commit
//! point. Since format 1.1 a small manifest may skip its file and ride inline in COMMIT
//! ([`PartWriter::with_inline_manifest`]), so a round of small parts costs one durable file. Failpoints named after each step (`after_chunk_write`, `before_manifest_rename`,
//! `after_manifest_rename`, `before_commit`, `before_commit_rename`, `after_commit_rename`,
//! `after_commit`, `gc_after_uncommit`, `gc_during_sweep`) SIGKILL the process when
//! `LAZARUS_FAILPOINT` names them.
//!
//! ```
//! use lazarus_store::{Repository, RepoOptions, RepoReader, CommitMeta};
//! use lazarus_format::{ObjectSpec, ObjectInfo, ObjectKind, DType, Rank};
//! # let dir = tempfile::tempdir().unwrap();
//! let mut repo = Repository::open(dir.path(), RepoOptions::default())?;
//! let pending = repo.begin(1)?;
//! let data: Vec<u8> = [1.5f64, 2.5].iter().flat_map(|x| x.to_le_bytes()).collect();
//! let obj = ObjectSpec {
//!     info: ObjectInfo { name: "x".into(), type_name: "Vec<f64>".into(),
//!         kind: ObjectKind::Bulk { dtype: DType::F64, len: 2, global: None }, sharing: None, layout: None },
//!     data: data.as_slice().into(),
//!     hint: None,
//! };
//! let receipt = pending.part_writer().write(Rank(0), &[obj])?;
//! let done = repo.commit(pending, vec![receipt], CommitMeta::default())?;
//! let reader = RepoReader::open(dir.path())?;
//! let objs = reader.load_part(done.summary.id, Rank(0))?;
//! assert_eq!(objs[0].data, data);
//! # Ok::<(), lazarus_store::StoreError>(())
//! ```
#![deny(missing_docs)]
// A failed stdout/stderr must never panic a job (issue #11 item 10): no print macros.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod backend;
mod error;
mod fpcache;
mod fsutil;
mod known;
mod lease;
mod location;
mod par;
mod ranged;
mod reader;
mod repo;
mod writer;

#[doc(hidden)]
pub use backend::dir::record_fsyncs;
#[cfg(feature = "s3")]
pub use backend::s3::{S3Backend, S3Config};
pub use backend::{
    probe_lock, size_cap, DirBackend, DirKey, LockGuard, LockProbe, MemoryBackend, ObjectKey,
    ReadBackend, WriteBackend, MAX_LEVEL_HISTORY_LEN,
};
pub use error::{StoreError, StoreErrorKind};
pub use fsutil::{failpoint, FAILPOINTS, FAILPOINT_ENV};
pub use lease::{LeaseConfig, LeaseRecord};
pub use location::{open_backend, open_read_backend, repo_location};
pub use reader::{
    CheckpointDir, CheckpointSummary, CommitStatus, Damage, Presence, Problem, RepoReader,
    VerifyReport,
};
pub use repo::{
    CommitMeta, CommittedCheckpoint, GcReport, GcStage, PendingCheckpoint, Repository,
    INLINE_COMMIT_BUDGET,
};
pub use writer::{
    cap_write_threads_on_this_thread, discard_part, discard_part_in, Codec, PartReceipt,
    PartWriter, RepoOptions, Unchanged, WrittenAhead, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
};
