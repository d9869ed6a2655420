//! User files that roll back with a Lazarus job (Libra-style persistent state), and
//! output that leaves the job exactly once.
//!
//! [`Files`] manages one rank's area of the job's managed directory with an API shaped
//! like `std::fs` ([`File`] is `Read + Write + Seek`, with `set_len`, `sync_all`,
//! `write_all_at`; [`Files`] has `create`, `open`, `append`, `options`, `rename`,
//! `remove_file`, `create_dir(_all)`, `remove_dir`). The Job records every managed file
//! in each checkpoint ([`Files::snapshot`]: one object per file in the rank's part, so the
//! files are in the same cut as the state) and puts them back on restore
//! ([`Files::prepare_restore`], [`Files::apply_restore`]): every file byte-identical to
//! the checkpoint restored, files created since removed, removed ones back, renamed ones
//! back under their old names — also when the restore falls back to an older checkpoint.
//!
//! How changes are undone: the bytes to go back to are the checkpoint's own chunks in the
//! repository (content-addressed, so a checkpoint costs only the chunks that changed:
//! the change hint tells the store which ones). What is local is a write-ahead journal of
//! *which* bytes and names the job changed since the last committed checkpoint: a
//! restore rewrites only those (and whatever differs from an older target), and anything
//! else that differs was changed by someone else — the restore refuses, naming the file.
//!
//! Output ([`Files::mark_output`]) is published under `output/rank-<r>/` only after the
//! checkpoint holding it committed: appended when the file only grew, replaced
//! atomically otherwise; idempotent across a crash between COMMIT and publication.
//!
//! Layout, model and limits: docs/FILES.md.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod bits;
mod error;
mod file;
mod fs;
mod journal;
mod mmap;
mod path;
mod publish;
mod restore;
mod snapshot;
mod store_io;

pub use error::{FilesError, FilesErrorKind};
pub use file::{File, OpenOptions};
pub use fs::{Files, FilesConfig, Layout};
pub use lazarus_store::FAILPOINT_ENV;
pub use path::MAX_PATH_LEN;
pub use restore::{RestoreError, RestorePlan, RestoreTarget};
pub use snapshot::{is_files_object, Snapshot, FILE_PREFIX, INDEX_OBJECT};
pub use store_io::load_state_objects;

/// Runs every decoder of bytes this crate reads back (journal frames, the base state, the
/// `@files` index of a part) on `bytes`; for the fuzz target and the property tests. Must
/// never panic; returns how many journal records decoded.
#[doc(hidden)]
pub fn decode_untrusted(bytes: &[u8]) -> usize {
    let _ = journal::LocalState::decode(bytes, std::path::Path::new("fuzz"));
    let _ = postcard::from_bytes::<snapshot::PartIndex>(bytes);
    journal::decode_frames(bytes).len()
}
