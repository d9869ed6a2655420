//! The directory backend: a repository in a local (or parallel) file system directory, in
//! exactly the on-disk format of docs/FORMAT.md.
//!
//! Every file is written as: temp name in the same directory -> write -> fsync -> rename to
//! its final name -> fsync of the directory (the two fsyncs batched across files by the
//! staged path: [`WriteBackend::stage`] writes temps and starts their writeback,
//! `sync_staged` fsyncs them concurrently, `publish` renames, `sync_dirs` fsyncs the
//! directories concurrently). A reader therefore only ever sees complete files under final
//! names. `Create` renames with `RENAME_NOREPLACE`, so two creators of one COMMIT can never
//! both succeed. Reads open with `O_NONBLOCK | O_NOFOLLOW` and refuse anything `fstat`
//! does not call a regular file, so a FIFO or symlink under a repository name never blocks
//! or redirects a reader. The writer lock is `flock(2)` on `LOCK` (`flock.rs`).

use super::flock::RepoLock;
use super::{
    not_regular, DirKey, Entry, LockGuard, LockOwner, ObjectKey, ObjectMeta, ObjectReader, PutMode,
    ReadBackend, Staged, StagedState, Version, WriteBackend,
};
use crate::error::{StoreError, StoreErrorKind};
use crate::fsutil::TMP_PREFIX;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Concurrent fsyncs of new files and of their directories.
pub(crate) const FSYNC_THREADS: usize = 8;

/// A repository directory. Cheap: holds its root path and the names of spare files it
/// listed last (shared by clones); no I/O until used.
#[derive(Clone, Debug)]
pub struct DirBackend {
    root: PathBuf,
    spares: Arc<Mutex<Spares>>,
}

/// Where retired chunk files wait to be reused, relative to the root. Its name starts
/// with the temporary prefix, so every reader ignores it (docs/FORMAT.md).
const SPARE_DIR: &str = "chunks/.tmp-spare";

/// The spare files this backend listed and has not tried yet, and the spare directory's
/// modification time at that listing: an empty list is refilled only when the directory
/// changed since, so a writer with no spares pays one `stat` per chunk, not a listing.
#[derive(Debug, Default)]
struct Spares {
    names: Vec<std::ffi::OsString>,
    listed_at: Option<std::time::SystemTime>,
}

impl DirBackend {
    /// The repository at `root` (relative paths are relative to the current directory,
    /// `r1`, `./r1/`, `../r1` and paths through symlinks all work).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirBackend {
            root: root.into(),
            spares: Arc::default(),
        }
    }

    fn spare_dir(&self) -> PathBuf {
        self.root.join(SPARE_DIR)
    }

    /// The next spare file's name, listing the spare directory again if it changed since
    /// the last listing; `None` when there is none.
    fn next_spare(&self) -> Option<std::ffi::OsString> {
        let mut s = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = s.names.pop() {
            return Some(n);
        }
        let dir = self.spare_dir();
        // Never through a symbolic link (claims go through a handle opened without
        // following one, see `claim_spare`; this only saves the listing).
        let m = fs::symlink_metadata(&dir).ok().filter(|m| m.is_dir())?;
        let changed = m.modified().ok()?;
        if s.listed_at == Some(changed) {
            return None;
        }
        s.listed_at = Some(changed);
        s.names = fs::read_dir(&dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        s.names.pop()
    }

    /// The spare directory, opened without following a symbolic link: renames relative
    /// to it can only move files into or out of the real directory.
    fn open_spare_dir(&self) -> std::io::Result<File> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.spare_dir())
    }

    /// Claims a spare file as the temp file `tmp` and opens it for writing. A spare is
    /// claimed by renaming it, so of several writers (threads or processes) exactly one
    /// gets each; one that another writer claimed first is skipped. `None` (write a new
    /// file) when there is no usable spare.
    fn claim_spare(&self, tmp: &Path) -> Option<File> {
        let mut dir: Option<File> = None;
        // Bounded: every pass consumes a name, and the list is refilled only when the
        // directory changed.
        while let Some(name) = self.next_spare() {
            if dir.is_none() {
                dir = Some(self.open_spare_dir().ok()?);
            }
            let d = dir.as_ref()?;
            if let Err(e) = rename_at((Some(d), &name), (None, tmp.as_os_str())) {
                let no_destination = || tmp.parent().is_some_and(|p| !p.is_dir());
                if e.kind() == std::io::ErrorKind::NotFound && no_destination() {
                    // The destination directory is missing: the caller recreates it
                    // and writes a new file; the spare stays for the next write.
                    self.spares
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .names
                        .push(name);
                    return None;
                }
                continue; // claimed by another writer (or gone)
            }
            // Whatever sits in the spare directory is never trusted to be a file: only a
            // regular file is opened (a FIFO or device never is), without following a
            // symbolic link, and checked again once open.
            let opened = match fs::symlink_metadata(tmp) {
                Ok(m) if m.is_file() => OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
                    .open(tmp),
                _ => Err(std::io::ErrorKind::InvalidInput.into()),
            };
            // And only a file nobody else holds: not one with another name (a hard-linked
            // copy of the repository would change with it), nor one of another user's.
            let ours = |m: &fs::Metadata| {
                use std::os::unix::fs::MetadataExt;
                // SAFETY: geteuid has no preconditions.
                m.is_file() && m.nlink() == 1 && m.uid() == unsafe { libc::geteuid() }
            };
            match opened {
                Ok(f) if f.metadata().is_ok_and(|m| ours(&m)) => return Some(f),
                _ => {
                    let _ = fs::remove_file(tmp).or_else(|_| fs::remove_dir_all(tmp));
                }
            }
        }
        None
    }

    fn dir_path(&self, dir: &DirKey) -> PathBuf {
        let rel = dir.rel_path();
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.rel_path())
    }

    /// Writes a temp file for `key` (no fsync; writeback started). A chunk is written into
    /// a spare file when there is one (see [`WriteBackend::retire_chunk`]). A chunk whose
    /// fan-out directory was removed by hand gets it back (durably) here, once.
    fn write_temp(&self, key: &ObjectKey, parts: &[&[u8]]) -> Result<PathBuf, StoreError> {
        let dir = self.dir_path(&key.dir());
        if matches!(key, ObjectKey::Chunk(_)) {
            let tmp = dir.join(tmp_name(&key.name()));
            if let Some(f) = self.claim_spare(&tmp) {
                return fill_temp(f, tmp, parts, true);
            }
        }
        match write_temp(&dir, &key.name(), parts) {
            Err(e) if e.kind() == StoreErrorKind::Missing && matches!(key, ObjectKey::Chunk(_)) => {
                create_dir_durable(&dir)?;
                write_temp(&dir, &key.name(), parts)
            }
            r => r,
        }
    }

    fn rename(&self, tmp: &Path, key: &ObjectKey, mode: &PutMode) -> Result<(), StoreError> {
        let dest = self.path(key);
        let r = match mode {
            PutMode::Overwrite => {
                fs::rename(tmp, &dest).map_err(|e| StoreError::io(&dest, "renaming temp file", e))
            }
            PutMode::Create => rename_noreplace(tmp, &dest),
            PutMode::IfMatch(_) => Err(no_conditional_update(&dest)),
        };
        if r.is_err() {
            let _ = fs::remove_file(tmp);
        }
        r
    }
}

fn no_conditional_update(p: &Path) -> StoreError {
    StoreError::new(
        StoreErrorKind::InvalidArgument,
        Some(p),
        "the directory backend has no conditional update (it locks with flock, not a lease)",
    )
}

impl ReadBackend for DirBackend {
    fn location(&self) -> &Path {
        &self.root
    }

    fn describe(&self, key: &ObjectKey) -> PathBuf {
        self.path(key)
    }

    fn describe_dir(&self, dir: &DirKey) -> PathBuf {
        self.dir_path(dir)
    }

    fn open(&self, key: &ObjectKey) -> Result<ObjectReader, StoreError> {
        let p = self.path(key);
        let f = open_regular(&p)?;
        let len = f
            .metadata()
            .map_err(|e| StoreError::io(&p, "stat", e))?
            .len();
        Ok(ObjectReader {
            len,
            reader: Box::new(f),
        })
    }

    fn read_range(
        &self,
        key: &ObjectKey,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>, StoreError> {
        let p = self.path(key);
        let mut f = open_regular(&p)?;
        let len = f
            .metadata()
            .map_err(|e| StoreError::io(&p, "stat", e))?
            .len();
        let start = range.start.min(len);
        let end = range.end.min(len).max(start);
        let mut out = Vec::new();
        out.try_reserve_exact((end - start) as usize).map_err(|_| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                Some(&p),
                format!("{} bytes cannot be allocated", end - start),
            )
        })?;
        f.seek(std::io::SeekFrom::Start(start))
            .and_then(|_| f.take(end - start).read_to_end(&mut out))
            .map_err(|e| StoreError::io(&p, "reading", e))?;
        Ok(out)
    }

    fn stat(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        let p = self.path(key);
        match fs::symlink_metadata(&p) {
            Ok(m) => Ok(Some(ObjectMeta {
                size: m.len(),
                regular: m.file_type().is_file(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(&p, "stat", e)),
        }
    }

    fn list(&self, dir: &DirKey) -> Result<Vec<Entry>, StoreError> {
        let p = self.dir_path(dir);
        let rd = match fs::read_dir(&p) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(&p, "listing", e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| StoreError::io(&p, "listing", e))?;
            // Names that are not UTF-8 are nothing this format ever writes.
            let Ok(name) = ent.file_name().into_string() else {
                continue;
            };
            let is_dir = ent.file_type().is_ok_and(|t| t.is_dir());
            out.push(Entry {
                name,
                is_dir,
                size: None,
            });
        }
        Ok(out)
    }

    fn dir_exists(&self, dir: &DirKey) -> Result<bool, StoreError> {
        let p = self.dir_path(dir);
        match fs::metadata(&p) {
            Ok(m) => Ok(m.is_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io(&p, "stat of directory", e)),
        }
    }
}

impl WriteBackend for DirBackend {
    fn as_read(self: Arc<Self>) -> Arc<dyn ReadBackend> {
        self
    }

    fn put(
        &self,
        key: &ObjectKey,
        parts: &[&[u8]],
        mode: PutMode,
    ) -> Result<Option<Version>, StoreError> {
        let tmp = self.write_temp(key, parts)?;
        if let Err(e) = fsync_file(&tmp) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.rename(&tmp, key, &mode)?;
        fsync_dir(&self.dir_path(&key.dir()))?;
        Ok(None)
    }

    fn read_versioned(&self, key: &ObjectKey) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        Err(no_conditional_update(&self.path(key)))
    }

    fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let p = self.path(key);
        let r = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
            Ok(_) => fs::remove_file(&p),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&p, "removing", e)),
        }
    }

    /// Moves the chunk file into the spare directory, where the next chunk write takes
    /// it instead of creating a file. Why: a file system frees and allocates a file's
    /// storage at a cost (ext4 creating and deleting ~1000 chunk files per GiB took
    /// 3x the wall time and 2-5x the CPU of rewriting retired ones in place; tmpfs
    /// zeroing fresh pages ~1.7x the time; docs/PERFORMANCE.md). No fsync of its own:
    /// the collection fsyncs the fan-out directory after its sweep, and a move a crash
    /// undoes leaves an unreferenced chunk for the next collection, as a lost unlink
    /// would (docs/FORMAT.md, "Recycled chunk files", for file systems that reorder).
    fn retire_chunk(&self, key: &ObjectKey) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt;
        let p = self.path(key);
        match fs::symlink_metadata(&p) {
            // A file with other names (a hard-linked copy of the repository) is only
            // unlinked: rewriting it in place would change the copy.
            Ok(m) if m.is_file() && m.nlink() == 1 => {}
            Ok(_) => return self.delete(key),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io(&p, "stat", e)),
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = std::ffi::OsString::from(format!("{}-{n}", std::process::id()));
        let dir = match self.open_spare_dir() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = fs::create_dir(self.spare_dir());
                self.open_spare_dir()
            }
            r => r,
        };
        // Anything but a plain move (no space for the directory entry, a fan-out on
        // another file system, a symbolic link squatting the spare directory) falls back
        // to deleting: a collection must free what it can.
        let moved = dir.and_then(|d| rename_at((None, p.as_os_str()), (Some(&d), &name)));
        match moved {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !p.exists() => Ok(()),
            Err(_) => self.delete(key),
        }
    }

    fn clear_retired(&self) -> Result<(), StoreError> {
        let dir = self.spare_dir();
        // Whatever squats the name goes too (a file there would stop every collection).
        let r = match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&dir),
            Ok(_) => fs::remove_file(&dir),
            Err(e) => Err(e),
        };
        self.spares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .names
            .clear();
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&dir, "removing directory", e)),
        }
    }

    fn create_dir(&self, dir: &DirKey) -> Result<bool, StoreError> {
        let p = self.dir_path(dir);
        match fs::create_dir(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(StoreError::io(&p, "creating directory", e)),
        }
    }

    fn ensure_dirs(&self, dirs: &[DirKey]) -> Result<(), StoreError> {
        // One listing per parent instead of a stat per directory (256 fan-outs on every
        // open), and one fsync per parent that received an entry.
        let mut listed: HashMap<PathBuf, HashSet<std::ffi::OsString>> = HashMap::new();
        let mut to_sync: BTreeSet<PathBuf> = BTreeSet::new();
        for d in dirs {
            let p = self.dir_path(d);
            if *d == DirKey::Root {
                if !p.is_dir() {
                    fs::create_dir_all(&p)
                        .map_err(|e| StoreError::io(&p, "creating directory", e))?;
                    to_sync.insert(parent_or_dot(&p));
                }
                continue;
            }
            let parent = parent_or_dot(&p);
            let present = match listed.entry(parent.clone()) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let names = fs::read_dir(&parent)
                        .map_err(|e| StoreError::io(&parent, "listing", e))?
                        .filter_map(Result::ok)
                        .map(|e| e.file_name())
                        .collect();
                    v.insert(names)
                }
            };
            if p.file_name().is_some_and(|n| present.contains(n)) {
                continue;
            }
            match fs::create_dir(&p) {
                Ok(()) => {
                    to_sync.insert(parent);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io(&p, "creating directory", e)),
            }
            if let Some(n) = p.file_name() {
                present.insert(n.to_os_string());
            }
        }
        for p in to_sync {
            fsync_dir(&p)?;
        }
        Ok(())
    }

    fn delete_dir(&self, dir: &DirKey) -> Result<(), StoreError> {
        let p = self.dir_path(dir);
        match fs::remove_dir_all(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&p, "removing directory", e)),
        }
    }

    fn delete_dir_if_empty(&self, dir: &DirKey) -> Result<(), StoreError> {
        // Fails harmlessly while other entries (or temp files) are still there.
        let _ = fs::remove_dir(self.dir_path(dir));
        Ok(())
    }

    fn stage(&self, key: &ObjectKey, parts: &[&[u8]], mode: PutMode) -> Result<Staged, StoreError> {
        let tmp = self.write_temp(key, parts)?;
        Ok(Staged {
            key: key.clone(),
            mode,
            state: StagedState::TempFile(tmp),
        })
    }

    fn sync_staged(&self, staged: &[&Staged]) -> Result<(), StoreError> {
        let files: Vec<&Path> = staged
            .iter()
            .filter_map(|s| match &s.state {
                StagedState::TempFile(p) => Some(p.as_path()),
                _ => None,
            })
            .collect();
        fsync_all(&files)
    }

    fn publish(&self, staged: Staged) -> Result<(), StoreError> {
        match staged.state {
            StagedState::TempFile(tmp) => self.rename(&tmp, &staged.key, &staged.mode),
            StagedState::Visible => Ok(()),
            StagedState::Held(b) => self.put(&staged.key, &[&b], staged.mode).map(|_| ()),
        }
    }

    fn discard(&self, staged: Staged) {
        if let StagedState::TempFile(tmp) = staged.state {
            let _ = fs::remove_file(tmp);
        }
    }

    fn sync_dirs(&self, dirs: &[DirKey]) -> Result<(), StoreError> {
        let paths: Vec<PathBuf> = dirs.iter().map(|d| self.dir_path(d)).collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        fsync_all(&refs)
    }

    fn process_lock(
        &self,
        owner: &LockOwner,
        shared: bool,
    ) -> Option<Result<Box<dyn LockGuard>, StoreError>> {
        let p = self.path(&ObjectKey::Lock);
        Some(RepoLock::acquire(&p, owner, shared).map(|l| Box::new(l) as Box<dyn LockGuard>))
    }
}

/// The parent directory of `p` for fsync: `.` for a bare relative name (`r1`, `r1/`),
/// whose `parent()` is the empty path, which no system call accepts (issue #11: `missing
/// (): fsync of directory`).
fn parent_or_dot(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Opens `p` for reading only if it is a regular file: `O_NOFOLLOW` (a symlink fails with
/// ELOOP) and `O_NONBLOCK` (a FIFO opens at once instead of waiting for a writer), then
/// `fstat` decides.
fn open_regular(p: &Path) -> Result<File, StoreError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => not_regular(p, "a symbolic link"),
            _ => StoreError::io(p, "opening", e),
        })?;
    let t = f
        .metadata()
        .map_err(|e| StoreError::io(p, "stat", e))?
        .file_type();
    if !t.is_file() {
        let what = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "not a file"
        };
        return Err(not_regular(p, what));
    }
    Ok(f)
}

fn tmp_name(final_name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{TMP_PREFIX}{final_name}-{}-{n}", std::process::id())
}

/// Writes the concatenation of `parts` to a new temp file in `dir` for final name `name`
/// WITHOUT fsync, and starts its writeback (`sync_file_range`), so that many files can be
/// made durable by a later [`fsync_file`] each without paying a full round trip per file
/// while writing. Returns the temp path; the temp is removed on error.
fn write_temp(dir: &Path, name: &str, parts: &[&[u8]]) -> Result<PathBuf, StoreError> {
    let tmp = dir.join(tmp_name(name));
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| StoreError::io(&tmp, "creating temp file", e))?;
    fill_temp(f, tmp, parts, false)
}

/// Writes `parts` into the temp file `f` (at `tmp`) from its start and starts its
/// writeback; `reused`: the file held other bytes (a spare), cut to the new length. The
/// temp is removed on error.
fn fill_temp(
    mut f: File,
    tmp: PathBuf,
    parts: &[&[u8]],
    reused: bool,
) -> Result<PathBuf, StoreError> {
    let result = (|| {
        for bytes in parts {
            f.write_all(bytes)
                .map_err(|e| StoreError::io(&tmp, "writing temp file", e))?;
        }
        if reused {
            let len = parts.iter().map(|p| p.len() as u64).sum();
            f.set_len(len)
                .map_err(|e| StoreError::io(&tmp, "truncating reused temp file", e))?;
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

/// `renameat(2)`: each side is a name relative to an open directory, or (`None`) a path
/// as `rename(2)` takes it.
fn rename_at(
    from: (Option<&File>, &std::ffi::OsStr),
    to: (Option<&File>, &std::ffi::OsStr),
) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let fd = |d: Option<&File>| d.map_or(libc::AT_FDCWD, std::os::fd::AsRawFd::as_raw_fd);
    let c = |n: &std::ffi::OsStr| {
        std::ffi::CString::new(n.as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput)
    };
    let (a, b) = (c(from.1)?, c(to.1)?);
    // SAFETY: valid directory fds (or AT_FDCWD) and NUL-terminated names.
    let rc = unsafe { libc::renameat(fd(from.0), a.as_ptr(), fd(to.0), b.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Renames `tmp` to `dest` unless `dest` exists (`Conflict`): `renameat2(RENAME_NOREPLACE)`,
/// or `link` + `unlink` on file systems without it. The temp is gone either way on success.
fn rename_noreplace(tmp: &Path, dest: &Path) -> Result<(), StoreError> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (Ok(a), Ok(b)) = (c(tmp), c(dest)) else {
        return Err(StoreError::new(
            StoreErrorKind::InvalidArgument,
            Some(dest),
            "path contains a NUL byte",
        ));
    };
    // SAFETY: two valid NUL-terminated paths; AT_FDCWD resolves them like rename(2).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    let err = if rc == 0 {
        return Ok(());
    } else {
        std::io::Error::last_os_error()
    };
    let exists = |e: &std::io::Error| e.kind() == std::io::ErrorKind::AlreadyExists;
    let conflict = || {
        StoreError::new(
            StoreErrorKind::Conflict,
            Some(dest),
            "already exists (created by another writer)",
        )
    };
    if exists(&err) {
        return Err(conflict());
    }
    if !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
        return Err(StoreError::io(dest, "renaming temp file", err));
    }
    // No RENAME_NOREPLACE here: a hard link is just as exclusive.
    match fs::hard_link(tmp, dest) {
        Ok(()) => {
            let _ = fs::remove_file(tmp);
            Ok(())
        }
        Err(e) if exists(&e) => Err(conflict()),
        Err(e) => Err(StoreError::io(dest, "linking temp file", e)),
    }
}

/// Test hook: while on, every path fsynced by path (files and directories) is recorded.
/// Process-wide, so a test using it must be alone in its test binary.
static FSYNC_LOG: std::sync::Mutex<Option<Vec<PathBuf>>> = std::sync::Mutex::new(None);
/// Mirrors `FSYNC_LOG.is_some()`, so an fsync takes no global lock unless a test records.
static FSYNC_LOG_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn log_fsync(path: &Path) {
    if !FSYNC_LOG_ON.load(Ordering::Relaxed) {
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
    FSYNC_LOG_ON.store(on, Ordering::Relaxed);
    got
}

/// fsyncs a regular file by path.
fn fsync_file(path: &Path) -> Result<(), StoreError> {
    log_fsync(path);
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io(path, "fsync", e))
}

/// fsyncs a directory so that renames and creations in it are durable.
fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    log_fsync(dir);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, "fsync of directory", e))
}

/// fsyncs every path (files or directories) on up to [`FSYNC_THREADS`] threads: an fsync
/// mostly waits for the device, and concurrent fsyncs let the file system commit them in
/// one journal transaction instead of one round trip each.
fn fsync_all(paths: &[&Path]) -> Result<(), StoreError> {
    if paths.is_empty() {
        return Ok(());
    }
    crate::par::try_for_each(paths, FSYNC_THREADS.min(paths.len()), |p| fsync_file(p))
}

/// Creates a directory (and parents) and makes its entry durable in the parent.
fn create_dir_durable(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, "creating directory", e))?;
    fsync_dir(&parent_or_dot(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_of_a_bare_name_is_the_current_directory() {
        assert_eq!(parent_or_dot(Path::new("r1")), PathBuf::from("."));
        assert_eq!(parent_or_dot(Path::new("r1/")), PathBuf::from("."));
        assert_eq!(parent_or_dot(Path::new("./r1")), PathBuf::from("."));
        assert_eq!(parent_or_dot(Path::new("../r1")), PathBuf::from(".."));
        assert_eq!(parent_or_dot(Path::new("/a/r1")), PathBuf::from("/a"));
    }

    #[test]
    fn create_renames_only_when_absent() {
        let d = tempfile::tempdir().unwrap();
        let b = DirBackend::new(d.path());
        b.ensure_dirs(&[DirKey::Root]).unwrap();
        b.put(&ObjectKey::Format, &[b"one"], PutMode::Create)
            .unwrap();
        let e = b
            .put(&ObjectKey::Format, &[b"two"], PutMode::Create)
            .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Conflict, "{e}");
        assert_eq!(b.read(&ObjectKey::Format).unwrap(), b"one");
        let left: Vec<_> = fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temp left behind: {left:?}");
    }

    /// A backend over a fresh repository directory with its chunk fan-outs.
    fn chunk_backend(root: &Path) -> DirBackend {
        let b = DirBackend::new(root);
        let mut dirs = vec![DirKey::Root, DirKey::Chunks];
        dirs.extend(DirKey::chunk_fans());
        b.ensure_dirs(&dirs).unwrap();
        b
    }

    fn chunk(bytes: &[u8]) -> ObjectKey {
        ObjectKey::Chunk(lazarus_format::ChunkDigest::of(bytes))
    }

    fn inode(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(p).unwrap().ino()
    }

    fn spares(root: &Path) -> Vec<PathBuf> {
        fs::read_dir(root.join(SPARE_DIR))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// A retired chunk's file becomes the next chunk's file, cut to the new chunk's
    /// length: nothing of the old bytes is left past the end.
    #[test]
    fn a_reused_spare_holds_exactly_the_new_bytes() {
        let d = tempfile::tempdir().unwrap();
        let b = chunk_backend(d.path());
        let old = vec![7u8; 10_000];
        b.put(&chunk(&old), &[&old], PutMode::Overwrite).unwrap();
        let old_inode = inode(&b.path(&chunk(&old)));
        b.retire_chunk(&chunk(&old)).unwrap();
        assert!(
            !b.path(&chunk(&old)).exists(),
            "retired = gone from the repository"
        );
        assert_eq!(spares(d.path()).len(), 1);
        let new = b"short chunk".to_vec();
        b.put(&chunk(&new), &[&new[..5], &new[5..]], PutMode::Overwrite)
            .unwrap();
        let p = b.path(&chunk(&new));
        assert_eq!(inode(&p), old_inode, "the spare file was reused");
        assert_eq!(fs::read(&p).unwrap(), new);
        assert!(spares(d.path()).is_empty());
        // No spare left: a new file, as before.
        let third = vec![1u8; 100];
        b.put(&chunk(&third), &[&third], PutMode::Overwrite)
            .unwrap();
        assert_eq!(fs::read(b.path(&chunk(&third))).unwrap(), third);
    }

    /// Whatever sits in the spare directory is not trusted: a symbolic link there is
    /// never written through (the file it names keeps its bytes), a directory is not
    /// taken for a file; both are dropped and the chunk is written as a new file.
    #[test]
    fn a_symlink_or_directory_in_the_spare_directory_is_never_written_through() {
        let d = tempfile::tempdir().unwrap();
        let b = chunk_backend(d.path());
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        fs::create_dir(d.path().join(SPARE_DIR)).unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join(SPARE_DIR).join("1-0")).unwrap();
        fs::create_dir(d.path().join(SPARE_DIR).join("1-1")).unwrap();
        let new = vec![3u8; 5000];
        b.put(&chunk(&new), &[&new], PutMode::Overwrite).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let p = b.path(&chunk(&new));
        assert!(fs::symlink_metadata(&p).unwrap().is_file());
        assert_eq!(fs::read(&p).unwrap(), new);
        assert!(spares(d.path()).is_empty(), "{:?}", spares(d.path()));
        let fan = b.dir_path(&chunk(&new).dir());
        let names: Vec<_> = fs::read_dir(fan).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temp left behind: {names:?}");
    }

    /// Writers on two backends of one directory (two processes' handles) take spares by
    /// renaming them: no spare is ever given to two chunks.
    #[test]
    fn concurrent_writers_never_share_a_spare() {
        let d = tempfile::tempdir().unwrap();
        let b = chunk_backend(d.path());
        let old: Vec<Vec<u8>> = (0..64u32).map(|i| i.to_le_bytes().repeat(1000)).collect();
        for o in &old {
            b.put(&chunk(o), &[o], PutMode::Overwrite).unwrap();
        }
        for o in &old {
            b.retire_chunk(&chunk(o)).unwrap();
        }
        assert_eq!(spares(d.path()).len(), 64);
        let written: Vec<Vec<(PathBuf, Vec<u8>)>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2u32)
                .map(|t| {
                    let b = DirBackend::new(d.path());
                    s.spawn(move || {
                        (0..48u32)
                            .map(|i| {
                                let bytes = (1000 + t * 100 + i).to_le_bytes().repeat(300);
                                b.put(&chunk(&bytes), &[&bytes], PutMode::Overwrite)
                                    .unwrap();
                                (b.path(&chunk(&bytes)), bytes)
                            })
                            .collect()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut inodes = std::collections::HashSet::new();
        for (p, bytes) in written.iter().flatten() {
            assert_eq!(&fs::read(p).unwrap(), bytes, "{}", p.display());
            assert!(inodes.insert(inode(p)), "{} shares a file", p.display());
        }
        // 96 chunks written, 64 spares: every spare taken once, 32 new files.
        assert!(spares(d.path()).is_empty());
    }

    /// A symbolic link squatting the spare directory's name (to a directory of the
    /// user's) is never followed: no file there is claimed or written, and a retired
    /// chunk is deleted rather than moved there.
    #[test]
    fn a_symlink_squatting_the_spare_directory_is_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let b = chunk_backend(d.path());
        let victim = outside.path().join("1-0");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join(SPARE_DIR)).unwrap();
        let new = vec![4u8; 3000];
        b.put(&chunk(&new), &[&new], PutMode::Overwrite).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(b.path(&chunk(&new))).unwrap(), new);
        b.retire_chunk(&chunk(&new)).unwrap();
        assert!(!b.path(&chunk(&new)).exists());
        let names: Vec<_> = fs::read_dir(outside.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "nothing moved outside: {names:?}");
    }

    /// A chunk file with another name (a hard-linked copy of the repository, as `cp -al`
    /// or `rsync --link-dest` make) is never rewritten in place: retiring it only unlinks
    /// it, and such a file found among the spares is not reused.
    #[test]
    fn a_hard_linked_chunk_file_is_never_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let b = chunk_backend(d.path());
        let old = vec![6u8; 3000];
        b.put(&chunk(&old), &[&old], PutMode::Overwrite).unwrap();
        let backup = d.path().join("backup-of-chunk");
        fs::hard_link(b.path(&chunk(&old)), &backup).unwrap();
        b.retire_chunk(&chunk(&old)).unwrap();
        assert!(!b.path(&chunk(&old)).exists());
        assert!(
            spares(d.path()).is_empty(),
            "a linked file is not kept as a spare"
        );
        // One that got there anyway is not written into.
        fs::create_dir(d.path().join(SPARE_DIR)).unwrap();
        fs::hard_link(&backup, d.path().join(SPARE_DIR).join("1-0")).unwrap();
        let new = vec![8u8; 100];
        b.put(&chunk(&new), &[&new], PutMode::Overwrite).unwrap();
        assert_eq!(fs::read(&backup).unwrap(), old);
        assert_eq!(fs::read(b.path(&chunk(&new))).unwrap(), new);
        assert_ne!(inode(&b.path(&chunk(&new))), inode(&backup));
    }

    /// A file squatting the spare directory's name neither fails a collection nor keeps
    /// chunks from being retired.
    #[test]
    fn a_file_squatting_the_spare_directory_is_cleared() {
        let d = tempfile::tempdir().unwrap();
        let b = chunk_backend(d.path());
        fs::write(d.path().join(SPARE_DIR), b"junk").unwrap();
        let old = vec![5u8; 100];
        b.put(&chunk(&old), &[&old], PutMode::Overwrite).unwrap();
        b.clear_retired().unwrap();
        b.retire_chunk(&chunk(&old)).unwrap();
        assert_eq!(spares(d.path()).len(), 1);
    }

    #[test]
    fn clear_retired_deletes_every_spare() {
        let d = tempfile::tempdir().unwrap();
        let b = chunk_backend(d.path());
        let old = vec![9u8; 100];
        b.put(&chunk(&old), &[&old], PutMode::Overwrite).unwrap();
        b.retire_chunk(&chunk(&old)).unwrap();
        b.retire_chunk(&chunk(b"never written")).unwrap();
        assert_eq!(spares(d.path()).len(), 1);
        b.clear_retired().unwrap();
        assert!(!d.path().join(SPARE_DIR).exists());
        b.clear_retired().unwrap();
    }
}
