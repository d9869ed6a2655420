//! Keeping every path inside its preopen — the one place that turns a path under a
//! preopen into a host path, for the program's calls (`fs.rs`) and for the host's own
//! restores on resume (descriptors reopened, tracked files restored, the undo journal).
//!
//! Guarantee: a path returned by [`confine`] lies inside the preopen's canonical root *at
//! the time of the check*, with every directory on the way resolved; its last name is
//! resolved too when the caller follows symlinks and it exists, and otherwise left as a
//! name that the caller opens with `O_NOFOLLOW` (a symlink there is refused with `ELOOP`,
//! never followed). Restores never write through a symlink: a regular file is rewritten in
//! place opened with `O_NOFOLLOW` ([`rewrite_in_place`], keeping its inode); anything else
//! is replaced by [`replace_file`], which writes a new file next to the path and renames it
//! over the path (a rename replaces a symlink, not its target). Not guaranteed: a third party that swaps a checked directory for a symlink
//! between the check and the use (a TOCTOU race; docs/VM.md, "Limits").

use super::Preopen;
use crate::error::{VmError, VmErrorKind};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a path under a preopen cannot be used.
#[derive(Debug)]
pub(crate) enum Confine {
    /// It leads out of the preopen (through a symlink).
    Outside,
    /// The host refused (`NotFound` when a directory on the way does not exist).
    Io(io::Error),
}

impl From<io::Error> for Confine {
    fn from(e: io::Error) -> Confine {
        Confine::Io(e)
    }
}

impl Confine {
    /// True when something on the way does not exist.
    pub(crate) fn not_found(&self) -> bool {
        matches!(self, Confine::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }

    /// A host-side error naming `what` and the path.
    pub(crate) fn error(self, path: &Path, what: &str) -> VmError {
        match self {
            Confine::Outside => VmError::new(
                VmErrorKind::Mismatch,
                format!(
                    "{}: {what}: the path leads out of its preopened directory through a \
                     symbolic link; refusing to follow it",
                    path.display()
                ),
            ),
            Confine::Io(e) => VmError::io(path, what, e),
        }
    }
}

/// `root` (canonical) + `rel` (normalised: no `.`, `..` or empty components) as a host
/// path inside `root`: when `follow` and the path exists, its canonical form; otherwise
/// the canonical form of its parent joined with its last name (unresolved: open it with
/// `O_NOFOLLOW`). `Outside` when either leaves `root`. An empty `rel` is `root`.
pub(crate) fn confine(root: &Path, rel: &str, follow: bool) -> Result<PathBuf, Confine> {
    if rel.is_empty() {
        return Ok(root.to_path_buf());
    }
    let joined = root.join(rel);
    if follow {
        match std::fs::canonicalize(&joined) {
            Ok(c) if c.starts_with(root) => return Ok(c),
            Ok(_) => return Err(Confine::Outside),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Confine::Io(e)),
        }
    }
    let (Some(parent), Some(name)) = (joined.parent(), joined.file_name()) else {
        return Err(Confine::Outside);
    };
    let c = std::fs::canonicalize(parent)?;
    if !c.starts_with(root) {
        return Err(Confine::Outside);
    }
    Ok(c.join(name))
}

/// The path of `p` (inside `root`) relative to `root`, as the `rel` of a descriptor or a
/// tracked path; `None` if it is not inside or not UTF-8.
pub(crate) fn rel_of(root: &Path, p: &Path) -> Option<String> {
    p.strip_prefix(root).ok()?.to_str().map(str::to_owned)
}

/// The canonical root of preopen `pre`, resolved now (host-side restores: the checkpoint's
/// recorded root may have become a symlink since).
pub(crate) fn host_root(preopens: &[Preopen], pre: usize) -> crate::Result<PathBuf> {
    let p = preopens.get(pre).ok_or_else(|| {
        VmError::new(
            VmErrorKind::Corrupt,
            format!("preopen {pre} does not exist"),
        )
    })?;
    std::fs::canonicalize(&p.host).map_err(|e| VmError::io(&p.host, "preopened directory", e))
}

/// Makes sure `rel` (normalised) is a directory inside `root`, creating what is missing one
/// level at a time, each checked by [`confine`] (never `create_dir_all` through a symlink).
pub(crate) fn ensure_dir(root: &Path, rel: &str) -> Result<PathBuf, Confine> {
    let mut prefix = String::new();
    let mut at = root.to_path_buf();
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(c);
        at = confine(root, &prefix, true)?;
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Confine::Io(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", at.display()),
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir(&at)?,
            Err(e) => return Err(Confine::Io(e)),
        }
    }
    Ok(at)
}

/// The directory part of a normalised `rel` (`""` at the root).
pub(crate) fn parent_rel(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(p, _)| p)
}

/// Replaces `dest` (its directory already checked, e.g. by [`confine`]) with a regular
/// file holding `data`: written and fsynced as a new file next to it, then renamed over it,
/// so a symlink at `dest` is replaced, never written through. Keeps the permission bits of
/// a regular file it replaces.
pub(crate) fn replace_file(dest: &Path, data: &[u8]) -> io::Result<()> {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", dest.display()),
        ));
    };
    let tmp = dir.join(format!(
        ".{}.lazarus-restore-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mode = std::fs::symlink_metadata(dest)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.permissions().mode());
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        if let Some(mode) = mode {
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Rewrites the regular file `dest` in place with `data` (opened with `O_NOFOLLOW`, never
/// created: a symlink or a missing file there is an error), truncated, written and
/// fsynced: its inode and hard links are kept.
pub(crate) fn rewrite_in_place(dest: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a regular file", dest.display()),
        ));
    }
    f.set_len(0)?;
    f.write_all(data)?;
    f.sync_all()
}

/// What a restore puts at a tracked path.
pub(crate) enum Want<'a> {
    /// Nothing (an empty directory is removed; a non-empty one is left with a warning).
    Absent,
    /// A directory.
    Dir,
    /// A regular file with these bytes.
    File(&'a [u8]),
}

/// Puts tracked path `t` back to `want` (a checkpoint's or the undo journal's state), inside
/// its preopen and never through a symlink: missing directories are created one level at
/// a time ([`ensure_dir`]), an existing regular file is rewritten in place (keeping its
/// inode: [`rewrite_in_place`]), anything else in the way of a file (absent, a symlink) is
/// replaced by a rename ([`replace_file`]); a symlink is never followed. Errors name the
/// path.
pub(crate) fn restore(
    preopens: &[Preopen],
    t: &super::TrackedPath,
    want: Want<'_>,
) -> crate::Result<()> {
    let root = host_root(preopens, t.pre)?;
    let rel = super::join_rel_checked(&t.rel)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| crate::error::corrupt(format!("bad tracked path {t:?}")))?;
    let shown = root.join(&rel);
    let gone = |p: &Path| match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Want::Absent = want {
        let p = match confine(&root, &rel, false) {
            Err(e) if e.not_found() => return Ok(()),
            r => r.map_err(|e| e.error(&shown, "removing"))?,
        };
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            // Only an empty directory is removed: anything in it is not ours to drop.
            if let Err(e) = std::fs::remove_dir(&p) {
                tracing::warn!(
                    "{}: did not exist at the checkpoint; left in place: {e}",
                    p.display()
                );
            }
            return Ok(());
        }
        return gone(&p).map_err(|e| VmError::io(&p, "removing", e));
    }
    ensure_dir(&root, parent_rel(&rel)).map_err(|e| e.error(&shown, "restoring its directory"))?;
    let p = confine(&root, &rel, false).map_err(|e| e.error(&shown, "restoring"))?;
    let md = std::fs::symlink_metadata(&p).ok();
    match want {
        Want::Absent => {}
        Want::Dir => {
            if !md.as_ref().is_some_and(|m| m.is_dir()) {
                gone(&p).map_err(|e| VmError::io(&p, "removing what is in the way", e))?;
                std::fs::create_dir(&p).map_err(|e| VmError::io(&p, "creating", e))?;
            }
        }
        Want::File(data) => {
            let same = md
                .as_ref()
                .is_some_and(|m| m.is_file() && m.len() == data.len() as u64)
                && std::fs::read(&p).is_ok_and(|d| d == data);
            if !same {
                if md.as_ref().is_some_and(|m| m.is_file()) {
                    // In place: the inode (a descriptor open at the checkpoint is checked
                    // against it on reopen) and its hard links stay.
                    match rewrite_in_place(&p, data) {
                        // A read-only file: replaced (a new inode) rather than not restored.
                        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                            replace_file(&p, data)
                        }
                        r => r,
                    }
                    .map_err(|e| VmError::io(&p, "restoring", e))?;
                } else {
                    if md.as_ref().is_some_and(|m| m.is_dir()) {
                        std::fs::remove_dir(&p)
                            .map_err(|e| VmError::io(&p, "removing a directory in the way", e))?;
                    }
                    replace_file(&p, data).map_err(|e| VmError::io(&p, "restoring", e))?;
                }
            }
        }
    }
    Ok(())
}

/// Undoes the rename of directory `from` to `to`: renames `to` back when it is a directory
/// and nothing is at `from` (a path the program re-created there is left, with a warning).
pub(crate) fn move_back(
    preopens: &[Preopen],
    from: &super::TrackedPath,
    to: &super::TrackedPath,
) -> crate::Result<()> {
    let place = |t: &super::TrackedPath| -> crate::Result<Option<PathBuf>> {
        let root = host_root(preopens, t.pre)?;
        let rel = super::join_rel_checked(&t.rel)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| crate::error::corrupt(format!("bad tracked path {t:?}")))?;
        ensure_dir(&root, parent_rel(&rel))
            .map_err(|e| e.error(&root.join(&rel), "restoring its directory"))?;
        match confine(&root, &rel, false) {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.not_found() => Ok(None),
            Err(e) => Err(e.error(&root.join(&rel), "moving a directory back")),
        }
    };
    let (Some(src), Some(dest)) = (place(to)?, place(from)?) else {
        return Ok(());
    };
    if !std::fs::symlink_metadata(&src).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    if std::fs::symlink_metadata(&dest).is_ok() {
        tracing::warn!(
            "{}: renamed to {} after the checkpoint, but something is there again; left \
             in place",
            dest.display(),
            src.display()
        );
        return Ok(());
    }
    std::fs::rename(&src, &dest).map_err(|e| VmError::io(&dest, "moving a directory back", e))
}
