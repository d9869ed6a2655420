//! The directory backend's `LOCK`: one writer per repository.
//!
//! Mechanism: an exclusive, non-blocking `flock(2)` on `LOCK`, which the kernel releases
//! when the holder dies (so a `kill -9`'d writer never blocks the next one), plus a small
//! JSON body naming the owner (pid, host, a BLAKE3 prefix of the job token - never the
//! token itself, which is a secret). A lock whose file still names an owner but whose
//! flock is free is stale: it is taken over with a log line. On clean release the body is
//! truncated rather than the file removed, so two openers can never lock different inodes.
//! Limitation: flock is not reliable on some network file systems (documented in FORMAT.md).

use super::{LockGuard, LockOwner};
use crate::error::{StoreError, StoreErrorKind};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Contents of the `LOCK` file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct LockRecord {
    pub pid: u32,
    pub host: String,
    /// First 16 hex digits of BLAKE3(job token), or null.
    pub job: Option<String>,
    pub since_unix_ms: u64,
}

/// A held (or shared) repository lock; released on drop.
#[derive(Debug)]
pub(crate) struct RepoLock {
    /// The locked file; `None` when sharing the lock of our job's holder.
    file: Option<File>,
    path: PathBuf,
    /// A sharer's job tag and its own descriptor of `LOCK`, kept for its checks (`None`
    /// for the holder).
    shared: Option<(String, File)>,
}

impl RepoLock {
    /// Acquires the lock. With `shared`, a lock held by a live process of the same job
    /// (same non-None job token) is accepted without being taken.
    pub(crate) fn acquire(
        path: &Path,
        owner: &LockOwner,
        shared: bool,
    ) -> Result<Self, StoreError> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        let mut file = open_lock_file(path, &mut opts)?;
        // SAFETY: flock on a valid, owned fd.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        let previous = read_owner(&file);
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(StoreError::io(path, "flock", err));
            }
            let mine = owner.job.clone();
            if let Some(job) =
                mine.filter(|j| shared && previous.as_ref().and_then(|o| o.job.as_ref()) == Some(j))
            {
                tracing::debug!(path = %path.display(), "sharing the lock of our own job");
                return Ok(RepoLock {
                    file: None,
                    path: path.to_path_buf(),
                    shared: Some((job, file)),
                });
            }
            let who = match previous {
                Some(o) => format!(
                    "held by pid {} on host {} since {} ms",
                    o.pid, o.host, o.since_unix_ms
                ),
                None => "held by another process".to_string(),
            };
            return Err(StoreError::new(
                StoreErrorKind::Locked,
                Some(path),
                format!("repository is locked: {who}"),
            ));
        }
        if let Some(o) = previous {
            // Routine recovery after a crash (the kernel already released the dead
            // writer's flock), not a warning: at warn level it went into every restarted
            // program's stderr, where a resumed VM program repositions and overwrites it
            // (seen as a torn line in vm_kill's seeded trials).
            tracing::info!(
                path = %path.display(),
                "taking over stale lock of dead writer pid {} on host {} (since {} ms)",
                o.pid, o.host, o.since_unix_ms
            );
        }
        let me = LockRecord {
            pid: owner.pid,
            host: owner.host.clone(),
            job: owner.job.clone(),
            since_unix_ms: crate::fsutil::now_unix_ms(),
        };
        let body = serde_json::to_vec(&me).unwrap_or_default();
        (|| {
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(&body)?;
            file.sync_all()
        })()
        .map_err(|e| StoreError::io(path, "writing lock file", e))?;
        Ok(RepoLock {
            file: Some(file),
            path: path.to_path_buf(),
            shared: None,
        })
    }
}

/// Opens `LOCK` never through a symbolic link and never a FIFO or device (`O_NOFOLLOW |
/// O_NONBLOCK | O_CLOEXEC`, then `fstat`): whoever can write the repository could otherwise
/// make the next writer (or an administrator's `gc`) empty any file it can write
/// (regression: `a_symlinked_lock_is_refused_not_followed`), or block a probe forever on a
/// FIFO (regression: `probe_lock_does_not_block_on_a_fifo_lock`).
fn open_lock_file(path: &Path, opts: &mut OpenOptions) -> Result<File, StoreError> {
    let file = opts
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                StoreError::new(
                    StoreErrorKind::Corrupt,
                    Some(path),
                    "lock file is a symbolic link; refusing to follow it out of the repository (remove it)",
                )
            } else {
                StoreError::io(path, "opening lock file", e)
            }
        })?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(StoreError::new(
            StoreErrorKind::Corrupt,
            Some(path),
            "lock file is not a regular file (remove it)",
        ));
    }
    Ok(file)
}

/// The state of a repository's `LOCK`, as [`probe_lock`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockProbe {
    /// Nobody holds it and it names no owner (never taken, or released cleanly).
    Free,
    /// A live process holds it.
    Held,
    /// Nobody holds it, but it still names an owner: that writer died without releasing it
    /// (e.g. a SIGKILLed supervisor). `owner` describes it (pid, host, since).
    Stale {
        /// pid, host and time of the dead owner, for messages
        owner: String,
    },
}

/// Looks at the `LOCK` of the repository at `root` without keeping it: takes the flock for
/// the duration of the probe (so a concurrent opener may see it held for that instant) and
/// reads the owner it names. A missing repository or `LOCK` is [`LockProbe::Free`].
///
/// Used by the supervisor to wait for the ranks of a dead job to stop before taking its
/// lock over (docs/RECOVERY.md, "A supervisor that dies").
pub fn probe_lock(root: &Path) -> Result<LockProbe, StoreError> {
    let path = root.join("LOCK");
    let file = match open_lock_file(&path, OpenOptions::new().read(true)) {
        Ok(f) => f,
        Err(e) if e.kind() == StoreErrorKind::Missing => return Ok(LockProbe::Free),
        Err(e) => return Err(e),
    };
    // Shared, not exclusive: a probe must never look like a holder to another probe (a
    // sharer's check, found in review), yet it still fails against the holder's
    // exclusive flock. SAFETY: flock on a valid, owned fd; released when `file` closes.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(LockProbe::Held);
        }
        return Err(StoreError::io(&path, "flock", err));
    }
    Ok(match read_owner(&file) {
        None => LockProbe::Free,
        Some(o) => LockProbe::Stale {
            owner: format!(
                "pid {} on host {} since {}",
                o.pid,
                o.host,
                lazarus_format::utc_time(o.since_unix_ms)
            ),
        },
    })
}

/// The owner record in `LOCK` (read at offset 0 without moving the file's offset, so
/// threads sharing one descriptor never interleave), `None` when empty or unreadable.
fn read_owner(file: &File) -> Option<LockRecord> {
    use std::os::unix::fs::FileExt;
    // On the stack: a sharer reads it before every deletion of a collection.
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let s = &buf[..n];
    if s.is_empty() {
        return None;
    }
    Some(serde_json::from_slice(s).unwrap_or(LockRecord {
        pid: 0,
        host: "unknown (unreadable LOCK)".into(),
        job: None,
        since_unix_ms: 0,
    }))
}

impl RepoLock {
    /// A sharer's check: the flock must still be held by someone, and `LOCK` must name our
    /// job. Found in review: a sharer always said "held", so after its job's holder died
    /// (the kernel freed the flock) it went on committing and collecting while another
    /// writer (`lazarus gc` takes a stale lock at once) could take the repository over.
    /// The probe is shared (`LOCK_SH`): it fails against the holder's exclusive flock but
    /// never against another sharer's probe, and works on descriptors NFS's flock
    /// emulation opens for reading. Only `EWOULDBLOCK` means "held"; any other failure is
    /// an I/O error, never taken for a held lock (found in review).
    fn check_shared(&self, job: &str, probe: &File) -> Result<(), StoreError> {
        let lost = |why: String| {
            StoreError::new(
                StoreErrorKind::Locked,
                Some(&self.path),
                format!("the lock this process shared with its job is lost: {why}"),
            )
        };
        // SAFETY: flock on a valid fd this lock owns; a successful probe is undone at once.
        let rc = unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        if rc == 0 {
            // SAFETY: as above.
            unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_UN) };
            return Err(lost("its holder is gone".into()));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(StoreError::io(&self.path, "checking the shared lock", err));
        }
        match read_owner(probe).and_then(|o| o.job) {
            Some(j) if j == job => Ok(()),
            other => Err(lost(format!(
                "it is held by {}",
                other.map_or_else(|| "another process".to_string(), |j| format!("job {j}"))
            ))),
        }
    }
}

impl LockGuard for RepoLock {
    /// The holder: the kernel holds a flock for as long as this process lives, so always
    /// held. A sharer: checked (see `check_shared`).
    fn check(&self) -> Result<(), StoreError> {
        match &self.shared {
            None => Ok(()),
            Some((job, probe)) => self.check_shared(job, probe),
        }
    }

    fn check_until(&self) -> Result<Option<std::time::Instant>, StoreError> {
        match &self.shared {
            None => Ok(None),
            // Nothing bounds how soon another writer takes a freed flock: every request
            // is checked (a flock probe and a read of LOCK on a kept descriptor).
            Some((job, probe)) => self
                .check_shared(job, probe)
                .map(|()| Some(std::time::Instant::now())),
        }
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            // Truncate, never unlink: see the module doc. The flock goes with the fd.
            if let Err(e) = f.set_len(0) {
                tracing::warn!(path = %self.path.display(), "could not clear lock file: {e}");
            }
        }
    }
}
