//! Crash-safe file primitives, failpoints and the simulated-full-disk write budget.
//!
//! Every file that becomes part of a repository is written as: temp name in the same
//! directory -> write -> fsync -> rename to its final name -> fsync of the directory
//! (the directory fsync may be batched by the caller). A reader therefore only ever sees
//! complete files under final names.

use crate::error::StoreError;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Prefix of temporary files; GC removes leftovers with this prefix.
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// Environment variable naming a failpoint at which the process kills itself (SIGKILL).
pub const FAILPOINT_ENV: &str = "LAZARUS_FAILPOINT";

/// If `LAZARUS_FAILPOINT` equals `name`, the process SIGKILLs itself here. Used by
/// real-process crash tests; a no-op otherwise.
pub(crate) fn failpoint(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(FAILPOINT_ENV).ok());
    if armed.as_deref() == Some(name) {
        // A failed stderr must not turn the planned SIGKILL into a panic.
        let _ = writeln!(
            std::io::stderr(),
            "lazarus-store: failpoint {name}: SIGKILL"
        );
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}

/// A shared budget of bytes that may still be written; exhausting it fails writes with
/// ENOSPC, to simulate a full disk deterministically.
#[derive(Clone, Debug, Default)]
pub(crate) struct Budget(Option<Arc<AtomicU64>>);

impl Budget {
    pub(crate) fn limited(bytes: u64) -> Self {
        Budget(Some(Arc::new(AtomicU64::new(bytes))))
    }

    fn take(&self, n: u64) -> std::io::Result<()> {
        let Some(b) = &self.0 else { return Ok(()) };
        let r = b.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(n)
        });
        match r {
            Ok(_) => Ok(()),
            Err(_) => {
                b.store(0, Ordering::SeqCst);
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
            }
        }
    }
}

fn tmp_name(final_name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{TMP_PREFIX}{final_name}-{}-{n}", std::process::id())
}

/// Writes `bytes` to `dir/name` atomically (temp, fsync, rename). The directory itself is
/// fsynced only when `sync_dir`; `before_rename` names a failpoint hit between the fsync
/// and the rename.
pub(crate) fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    budget: &Budget,
    before_rename: Option<&str>,
    sync_dir: bool,
) -> Result<(), StoreError> {
    let tmp = dir.join(tmp_name(name));
    let dest = dir.join(name);
    let result = (|| {
        budget
            .take(bytes.len() as u64)
            .map_err(|e| StoreError::io(&dest, "writing", e))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| StoreError::io(&tmp, "creating temp file", e))?;
        f.write_all(bytes)
            .map_err(|e| StoreError::io(&tmp, "writing temp file", e))?;
        f.sync_all()
            .map_err(|e| StoreError::io(&tmp, "fsync of temp file", e))?;
        drop(f);
        if let Some(fp) = before_rename {
            failpoint(fp);
        }
        fs::rename(&tmp, &dest).map_err(|e| StoreError::io(&dest, "renaming temp file", e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    if sync_dir {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Writes `bytes` to a new temp file in `dir` for final name `name` WITHOUT fsync, and
/// starts its writeback (`sync_file_range`), so that many files can be made durable by a
/// later [`fsync_file`] each without paying a full round trip per file while writing.
/// Returns the temp path; the temp is removed on error.
/// The file's bytes are the concatenation of `parts` (so a raw chunk's header and the
/// caller's data are written without first copying them into one buffer).
pub(crate) fn write_temp(
    dir: &Path,
    name: &str,
    parts: &[&[u8]],
    budget: &Budget,
) -> Result<PathBuf, StoreError> {
    let tmp = dir.join(tmp_name(name));
    let dest = dir.join(name);
    let result = (|| {
        budget
            .take(parts.iter().map(|p| p.len() as u64).sum())
            .map_err(|e| StoreError::io(&dest, "writing", e))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| StoreError::io(&tmp, "creating temp file", e))?;
        for bytes in parts {
            f.write_all(bytes)
                .map_err(|e| StoreError::io(&tmp, "writing temp file", e))?;
        }
        // SAFETY: valid fd; the call only hints the kernel to start writeback now.
        unsafe {
            libc::sync_file_range(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Test hook: while on, every path fsynced by path (files and directories) is recorded.
/// Process-wide, so a test using it must be alone in its test binary.
static FSYNC_LOG: std::sync::Mutex<Option<Vec<PathBuf>>> = std::sync::Mutex::new(None);
/// Mirrors `FSYNC_LOG.is_some()`, so an fsync takes no global lock unless a test records.
static FSYNC_LOG_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn log_fsync(path: &Path) {
    if !FSYNC_LOG_ON.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    if let Some(log) = FSYNC_LOG.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        log.push(path.to_path_buf());
    }
}

/// Starts (`true`) or stops recording fsynced paths and returns what was recorded so far
/// (test hook; see `tests/durability.rs`).
#[doc(hidden)]
pub fn record_fsyncs(on: bool) -> Vec<PathBuf> {
    let mut log = FSYNC_LOG.lock().unwrap_or_else(|e| e.into_inner());
    let got = log.take().unwrap_or_default();
    if on {
        *log = Some(Vec::new());
    }
    FSYNC_LOG_ON.store(on, std::sync::atomic::Ordering::Relaxed);
    got
}

/// fsyncs a regular file by path.
pub(crate) fn fsync_file(path: &Path) -> Result<(), StoreError> {
    log_fsync(path);
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io(path, "fsync", e))
}

/// fsyncs a directory so that renames and creations in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    log_fsync(dir);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, "fsync of directory", e))
}

/// Creates a directory (and parents) and makes its entry durable in the parent.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, "creating directory", e))?;
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Reads a whole file, mapping errors to `StoreError` naming it.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, StoreError> {
    fs::read(path).map_err(|e| StoreError::io(path, "reading", e))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
