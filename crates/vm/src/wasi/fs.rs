//! Descriptors, paths and files of the WASI host. Files are read and written with
//! positional I/O at an offset this host keeps itself, so an open file is fully described
//! by (preopen, relative path, offset, mode) and can be reopened on resume.
//!
//! Paths are resolved lexically under a preopen (`..` may not climb out; absolute paths are
//! refused), then every directory on the way — and the last component too when the call
//! follows symlinks — must resolve inside the preopen's canonical root, and files are
//! opened with `O_NOFOLLOW` at the checked path ([`confine`]), so a symlink cannot lead
//! the program out of what it was given (up to a third party racing symlinks in between).

use super::errno::*;
use super::mem::Mem;
use super::{confine, Preopen, Wasi};
use crate::error::{Result, VmError, VmErrorKind};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

const RIGHT_FD_READ: u64 = 1 << 1;
const RIGHT_FD_WRITE: u64 = 1 << 6;
const RIGHT_FD_ALLOCATE: u64 = 1 << 8;
const RIGHT_FD_FILESTAT_SET_SIZE: u64 = 1 << 22;
const ALL_RIGHTS: u64 = (1 << 29) - 1;
const OFLAG_CREAT: u32 = 1;
const OFLAG_DIRECTORY: u32 = 2;
const OFLAG_EXCL: u32 = 4;
const OFLAG_TRUNC: u32 = 8;
const FDFLAG_APPEND: u32 = 1;
const FT_CHAR: u8 = 2;
const FT_DIR: u8 = 3;
const FT_FILE: u8 = 4;
const FT_SYMLINK: u8 = 7;

/// Most descriptors open at once, stdio and preopens included (docs/VM.md, "Limits"): one
/// more is `EMFILE`, as a process past its `ulimit -n` sees.
pub const MAX_FDS: usize = 4096;
/// Most bytes one `fd_write`/`fd_pwrite` gathers: iovecs may all point at the whole memory,
/// so without a bound one call could make the host allocate memory² / 8 bytes. The
/// rest is left to the program, as a short write (allowed by WASI, and what a pipe does).
pub const MAX_WRITE_BYTES: u32 = 16 << 20;

/// A path the program changed, relative to preopen `pre` (restored on resume).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackedPath {
    /// Index of the preopen.
    pub pre: usize,
    /// Normalised path under it (`a/b.txt`).
    pub rel: String,
}

/// A captured descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum FdState {
    /// fd 0
    Stdin,
    /// fd 1
    Stdout,
    /// fd 2
    Stderr,
    /// A directory (a preopen when `rel` is empty and `preopen` is set).
    Dir {
        /// preopen index
        pre: usize,
        /// path under it
        rel: String,
        /// one of the preopened descriptors
        preopen: bool,
    },
    /// A regular file.
    File {
        /// preopen index
        pre: usize,
        /// path under it
        rel: String,
        /// current offset
        offset: u64,
        /// opened for reading
        read: bool,
        /// opened for writing
        write: bool,
        /// `O_APPEND`
        append: bool,
        /// `[device, inode]` of the open file at the checkpoint (absent in older records).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_id: Option<[u64; 2]>,
        /// At the checkpoint the path no longer named the open file (renamed, replaced or
        /// unlinked while open): the descriptor cannot be reopened by its path.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        detached: bool,
    },
}

pub(crate) enum Fd {
    Stdin,
    Stdout,
    Stderr,
    Dir {
        pre: usize,
        rel: String,
        preopen: bool,
    },
    File {
        pre: usize,
        rel: String,
        file: File,
        offset: u64,
        read: bool,
        write: bool,
        append: bool,
    },
}

impl Fd {
    pub(crate) fn preopen(i: usize) -> Fd {
        Fd::Dir {
            pre: i,
            rel: String::new(),
            preopen: true,
        }
    }

    /// What a checkpoint records; `roots`: the preopens' canonical roots (to tell whether
    /// a file's path still names the open file).
    pub(crate) fn state(&self, roots: &[PathBuf]) -> FdState {
        match self {
            Fd::Stdin => FdState::Stdin,
            Fd::Stdout => FdState::Stdout,
            Fd::Stderr => FdState::Stderr,
            Fd::Dir { pre, rel, preopen } => FdState::Dir {
                pre: *pre,
                rel: rel.clone(),
                preopen: *preopen,
            },
            Fd::File {
                pre,
                rel,
                file,
                offset,
                read,
                write,
                append,
            } => {
                let id = |m: std::fs::Metadata| [m.dev(), m.ino()];
                let file_id = file.metadata().ok().map(id);
                let at_path = roots
                    .get(*pre)
                    .and_then(|r| std::fs::symlink_metadata(r.join(rel)).ok())
                    .map(id);
                FdState::File {
                    pre: *pre,
                    rel: rel.clone(),
                    offset: *offset,
                    read: *read,
                    write: *write,
                    append: *append,
                    file_id,
                    detached: file_id.is_some() && file_id != at_path,
                }
            }
        }
    }

    /// Reopens a captured descriptor (never creating or truncating anything). The path is
    /// checked to lie inside its preopen (symlinks resolved, see [`confine`]) and opened
    /// with `O_NOFOLLOW` at its canonical form; one leading out is refused naming the path.
    /// A file must be the one open at the checkpoint: refused when its path no longer
    /// named it then (`detached`), and, unless the path is `tracked` (restored to the
    /// checkpoint's content just before, possibly as a new file), when the reopened file
    /// is another one (its inode differs; the device is not compared: it differs between
    /// the client nodes of a network file system).
    pub(crate) fn reopen(s: &FdState, preopens: &[Preopen], tracked: bool) -> Result<Fd> {
        let place = |pre: usize, rel: &str, what: &str| -> Result<PathBuf> {
            let root = confine::host_root(preopens, pre)?;
            confine::confine(&root, rel, true).map_err(|e| e.error(&root.join(rel), what))
        };
        Ok(match s {
            FdState::Stdin => Fd::Stdin,
            FdState::Stdout => Fd::Stdout,
            FdState::Stderr => Fd::Stderr,
            FdState::Dir { pre, rel, preopen } => {
                let p = place(*pre, rel, "directory open at the checkpoint")?;
                if !std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    return Err(VmError::new(
                        VmErrorKind::Mismatch,
                        format!("directory {} open at the checkpoint is gone", p.display()),
                    ));
                }
                Fd::Dir {
                    pre: *pre,
                    rel: rel.clone(),
                    preopen: *preopen,
                }
            }
            FdState::File {
                pre,
                rel,
                offset,
                read,
                write,
                append,
                file_id,
                detached,
            } => {
                let p = place(*pre, rel, "file open at the checkpoint")?;
                if *detached {
                    return Err(VmError::new(
                        VmErrorKind::Mismatch,
                        format!(
                            "file {} open at the checkpoint had been renamed, replaced or \
                             deleted while open: the descriptor cannot be reopened by its \
                             path, so this checkpoint cannot be resumed",
                            p.display()
                        ),
                    ));
                }
                let file = std::fs::OpenOptions::new()
                    .read(*read || !*write)
                    .write(*write)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&p)
                    .map_err(|e| {
                        VmError::new(
                            VmErrorKind::Mismatch,
                            format!(
                                "file {} open at the checkpoint cannot be reopened: {e}",
                                p.display()
                            ),
                        )
                    })?;
                // The inode only: the device number of a network file system (NFS, Lustre)
                // differs between client nodes and across remounts, and a restart on
                // another node must not refuse every untracked input.
                let now = file.metadata().ok().map(|m| m.ino());
                if let (Some([_, was]), false) = (file_id, tracked) {
                    if now != Some(*was) {
                        return Err(VmError::new(
                            VmErrorKind::Mismatch,
                            format!(
                                "file {} is not the file open at the checkpoint (inode {was}, \
                                 now {}): it was replaced since",
                                p.display(),
                                now.map_or_else(|| "unknown".to_string(), |n| n.to_string())
                            ),
                        ));
                    }
                }
                Fd::File {
                    pre: *pre,
                    rel: rel.clone(),
                    file,
                    offset: *offset,
                    read: *read,
                    write: *write,
                    append: *append,
                }
            }
        })
    }
}

/// The canonical form of every preopen's host directory (which must exist).
pub(crate) fn canonical_roots(preopens: &[Preopen]) -> Result<Vec<PathBuf>> {
    preopens
        .iter()
        .map(|p| {
            std::fs::canonicalize(&p.host)
                .map_err(|e| VmError::io(&p.host, "preopened directory", e))
                .and_then(|c| {
                    if c.is_dir() {
                        Ok(c)
                    } else {
                        Err(VmError::new(
                            VmErrorKind::InvalidArgument,
                            format!("{}: preopen is not a directory", p.host.display()),
                        ))
                    }
                })
        })
        .collect()
}

/// Skips what the program had consumed of stdin when stdin is seekable (a regular file):
/// moves it `consumed` bytes forward from where the resumed run's stdin stands, which is
/// right when the resume is given stdin at the same starting point as the first run (the
/// same `< input` again, or a descriptor at the same offset), also a non-zero one. A pipe
/// cannot be rewound, and is continued where it stands.
pub(crate) fn skip_stdin(consumed: u64) {
    if consumed == 0 {
        return;
    }
    let Ok(delta) = libc::off_t::try_from(consumed) else {
        tracing::warn!("stdin: cannot skip {consumed} bytes");
        return;
    };
    // SAFETY: lseek on fd 0; an error (a pipe) just leaves it.
    let r = unsafe { libc::lseek(0, delta, libc::SEEK_CUR) };
    if r < 0 {
        tracing::warn!(
            "stdin is not seekable: the {consumed} bytes the program had read before the \
             checkpoint are not read again"
        );
    }
}

/// `base` + `path` normalised; `None` if it climbs out of the root or is absolute.
pub(crate) fn join_rel(base: &str, path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fn filetype(m: &std::fs::Metadata) -> u8 {
    let t = m.file_type();
    if t.is_dir() {
        FT_DIR
    } else if t.is_symlink() {
        FT_SYMLINK
    } else if t.is_file() {
        FT_FILE
    } else {
        0
    }
}

fn filestat(m: &mut Mem<'_>, at: u32, md: &std::fs::Metadata) -> Result<(), Errno> {
    let mut b = [0u8; 64];
    b[0..8].copy_from_slice(&md.dev().to_le_bytes());
    b[8..16].copy_from_slice(&md.ino().to_le_bytes());
    b[16] = filetype(md);
    b[24..32].copy_from_slice(&md.nlink().to_le_bytes());
    b[32..40].copy_from_slice(&md.size().to_le_bytes());
    let ns = |s: i64, n: i64| (s.max(0) as u64).saturating_mul(1_000_000_000) + n.max(0) as u64;
    b[40..48].copy_from_slice(&ns(md.atime(), md.atime_nsec()).to_le_bytes());
    b[48..56].copy_from_slice(&ns(md.mtime(), md.mtime_nsec()).to_le_bytes());
    b[56..64].copy_from_slice(&ns(md.ctime(), md.ctime_nsec()).to_le_bytes());
    m.write(at, &b)
}

/// Refuses a call that would remove, rename or replace a preopened directory itself (`rel`
/// empty: `"."`, `"sub/.."`, what wasi-libc sends for `rmdir("/data")`): that changes the
/// preopen's parent, outside what the program was given, and a resume could no longer
/// find the preopen. `EBUSY`, as Linux answers for a directory in use as a mount point.
fn not_the_preopen(rel: &str) -> Result<(), Errno> {
    if rel.is_empty() {
        Err(BUSY)
    } else {
        Ok(())
    }
}

fn io_err(e: std::io::Error) -> Errno {
    from_io(&e)
}

impl Wasi {
    /// The host path of a descriptor's `rel` (already confined when it was opened).
    fn host_path(&self, pre: usize, rel: &str) -> Result<PathBuf, Errno> {
        let root = self.roots.get(pre).ok_or(BADF)?;
        Ok(if rel.is_empty() {
            root.clone()
        } else {
            root.join(rel)
        })
    }

    /// Resolves `path` relative to directory descriptor `dirfd` to a place inside its
    /// preopen ([`confine`]): `follow` resolves a symlink in the last component too (and
    /// the target must be inside); otherwise the last component is the entry itself. The
    /// returned `rel` is the canonical path under the preopen, so a descriptor or tracked
    /// path names the real file. Leading out is `ENOTCAPABLE`.
    fn resolve(
        &self,
        dirfd: u32,
        path: &str,
        follow: bool,
    ) -> Result<(usize, String, PathBuf), Errno> {
        let Some(Fd::Dir { pre, rel, .. }) = self.fds.get(&dirfd) else {
            return Err(if self.fds.contains_key(&dirfd) {
                NOTDIR
            } else {
                BADF
            });
        };
        let rel = join_rel(rel, path).ok_or(NOTCAPABLE)?;
        let root = self.roots.get(*pre).ok_or(BADF)?;
        let host = confine::confine(root, &rel, follow).map_err(|e| match e {
            confine::Confine::Outside => NOTCAPABLE,
            confine::Confine::Io(e) => io_err(e),
        })?;
        let rel = confine::rel_of(root, &host).ok_or(ILSEQ)?;
        Ok((*pre, rel, host))
    }

    fn new_fd(&mut self, fd: Fd) -> Result<u32, Errno> {
        // A directory descriptor holds no host handle, so nothing else bounds how many the
        // program opens; each one costs host memory and a line of every checkpoint's
        // vm.meta, and finding a free number scans the table.
        if self.fds.len() >= MAX_FDS {
            return Err(MFILE);
        }
        let n = (3u32..).find(|n| !self.fds.contains_key(n)).ok_or(NOSPC)?;
        self.fds.insert(n, fd);
        Ok(n)
    }

    pub(super) fn fs_call(
        &mut self,
        m: &mut Mem<'_>,
        name: &str,
        a: &dyn Fn(usize) -> u32,
        l: &dyn Fn(usize) -> u64,
    ) -> Result<(), Errno> {
        match name {
            "fd_write" => {
                let data = m.gather(a(1), a(2), MAX_WRITE_BYTES)?;
                let n = self.write_fd(a(0), &data, None)?;
                m.put_u32(a(3), n as u32)
            }
            "fd_pwrite" => {
                let data = m.gather(a(1), a(2), MAX_WRITE_BYTES)?;
                let n = self.write_fd(a(0), &data, Some(l(3)))?;
                m.put_u32(a(4), n as u32)
            }
            "fd_read" => {
                let iovs = m.iovecs(a(1), a(2))?;
                let want: usize = iovs.iter().map(|(_, n)| *n as usize).sum();
                let data = self.read_fd(a(0), want, None)?;
                let n = m.scatter(&iovs, &data)?;
                m.put_u32(a(3), n as u32)
            }
            "fd_pread" => {
                let iovs = m.iovecs(a(1), a(2))?;
                let want: usize = iovs.iter().map(|(_, n)| *n as usize).sum();
                let data = self.read_fd(a(0), want, Some(l(3)))?;
                let n = m.scatter(&iovs, &data)?;
                m.put_u32(a(4), n as u32)
            }
            "fd_seek" => {
                let off = self.seek(a(0), l(1) as i64, a(2))?;
                m.put_u64(a(3), off)
            }
            "fd_tell" => {
                let off = self.seek(a(0), 0, 1)?;
                m.put_u64(a(1), off)
            }
            "fd_close" => self.fds.remove(&a(0)).map(|_| ()).ok_or(BADF),
            "fd_sync" | "fd_datasync" => match self.fds.get(&a(0)) {
                Some(Fd::File { file, .. }) => file.sync_all().map_err(io_err),
                Some(_) => Ok(()),
                None => Err(BADF),
            },
            "fd_advise" => self.fds.get(&a(0)).map(|_| ()).ok_or(BADF),
            "fd_allocate" => {
                let want = l(1).saturating_add(l(2));
                match self.fds.get(&a(0)) {
                    Some(Fd::File { file, pre, rel, .. }) => {
                        let (pre, rel) = (*pre, rel.clone());
                        let len = file.metadata().map_err(io_err)?.len();
                        if want > len {
                            let host = self.host_path(pre, &rel)?;
                            self.before_change(pre, &rel, &host)?;
                            if let Some(Fd::File { file, .. }) = self.fds.get(&a(0)) {
                                file.set_len(want).map_err(io_err)?;
                            }
                        }
                        Ok(())
                    }
                    Some(_) => Err(INVAL),
                    None => Err(BADF),
                }
            }
            "fd_fdstat_get" => {
                let (ft, flags) = match self.fds.get(&a(0)).ok_or(BADF)? {
                    Fd::Stdin | Fd::Stdout | Fd::Stderr => (FT_CHAR, 0u16),
                    Fd::Dir { .. } => (FT_DIR, 0),
                    Fd::File { append, .. } => (FT_FILE, if *append { 1 } else { 0 }),
                };
                let mut b = [0u8; 24];
                b[0] = ft;
                b[2..4].copy_from_slice(&flags.to_le_bytes());
                b[8..16].copy_from_slice(&ALL_RIGHTS.to_le_bytes());
                b[16..24].copy_from_slice(&ALL_RIGHTS.to_le_bytes());
                m.write(a(1), &b)
            }
            "fd_fdstat_set_flags" => match self.fds.get_mut(&a(0)) {
                Some(Fd::File { append, .. }) if a(1) & !FDFLAG_APPEND == 0 => {
                    *append = a(1) & FDFLAG_APPEND != 0;
                    Ok(())
                }
                Some(_) => Err(NOTSUP),
                None => Err(BADF),
            },
            "fd_fdstat_set_rights" => self.fds.get(&a(0)).map(|_| ()).ok_or(BADF),
            "fd_filestat_get" => {
                let md = match self.fds.get(&a(0)).ok_or(BADF)? {
                    Fd::File { file, .. } => file.metadata().map_err(io_err)?,
                    Fd::Dir { pre, rel, .. } => {
                        std::fs::metadata(self.host_path(*pre, rel)?).map_err(io_err)?
                    }
                    _ => {
                        let mut b = [0u8; 64];
                        b[16] = FT_CHAR;
                        return m.write(a(1), &b);
                    }
                };
                filestat(m, a(1), &md)
            }
            "fd_filestat_set_size" => match self.fds.get(&a(0)) {
                Some(Fd::File { pre, rel, .. }) => {
                    let (pre, rel) = (*pre, rel.clone());
                    let host = self.host_path(pre, &rel)?;
                    self.before_change(pre, &rel, &host)?;
                    match self.fds.get(&a(0)) {
                        Some(Fd::File { file, .. }) => file.set_len(l(1)).map_err(io_err),
                        _ => Err(BADF),
                    }
                }
                Some(_) => Err(INVAL),
                None => Err(BADF),
            },
            "fd_filestat_set_times" | "path_filestat_set_times" => Err(NOTSUP),
            "fd_prestat_get" => match self.fds.get(&a(0)) {
                Some(Fd::Dir {
                    pre, preopen: true, ..
                }) => {
                    let len = self.config.preopens[*pre].guest.len() as u32;
                    m.put_u32(a(1), 0)?;
                    m.put_u32(a(1).checked_add(4).ok_or(FAULT)?, len)
                }
                Some(_) => Err(BADF),
                None => Err(BADF),
            },
            "fd_prestat_dir_name" => match self.fds.get(&a(0)) {
                Some(Fd::Dir {
                    pre, preopen: true, ..
                }) => {
                    let g = self.config.preopens[*pre].guest.as_bytes();
                    let n = (a(2) as usize).min(g.len());
                    m.write(a(1), &g[..n])
                }
                _ => Err(BADF),
            },
            "fd_readdir" => self.readdir(m, a(0), a(1), a(2), l(3), a(4)),
            "fd_renumber" => {
                let (from, to) = (a(0), a(1));
                if !self.fds.contains_key(&to) {
                    return Err(BADF);
                }
                let f = self.fds.remove(&from).ok_or(BADF)?;
                self.fds.insert(to, f);
                Ok(())
            }
            "path_open" => {
                let path = m.str(a(2), a(3))?;
                let fd = self.path_open(a(0), a(1), &path, a(4), l(5), a(7))?;
                m.put_u32(a(8), fd)
            }
            "path_create_directory" => {
                let path = m.str(a(1), a(2))?;
                let (pre, rel, host) = self.resolve(a(0), &path, false)?;
                if std::fs::symlink_metadata(&host).is_ok() {
                    return Err(EXIST); // a symlink too: nothing changes, nothing to refuse
                }
                self.before_change(pre, &rel, &host)?;
                std::fs::create_dir(&host).map_err(io_err)
            }
            "path_remove_directory" => {
                let path = m.str(a(1), a(2))?;
                let (pre, rel, host) = self.resolve(a(0), &path, false)?;
                not_the_preopen(&rel)?;
                self.before_change(pre, &rel, &host)?;
                std::fs::remove_dir(&host).map_err(io_err)
            }
            "path_unlink_file" => {
                let path = m.str(a(1), a(2))?;
                let (pre, rel, host) = self.resolve(a(0), &path, false)?;
                not_the_preopen(&rel)?;
                let md = std::fs::symlink_metadata(&host).map_err(io_err)?;
                if md.is_dir() {
                    return Err(ISDIR);
                }
                self.before_change(pre, &rel, &host)?;
                std::fs::remove_file(&host).map_err(io_err)
            }
            "path_rename" => {
                let from = m.str(a(1), a(2))?;
                let to = m.str(a(4), a(5))?;
                let (p1, r1, h1) = self.resolve(a(0), &from, false)?;
                let (p2, r2, h2) = self.resolve(a(3), &to, false)?;
                not_the_preopen(&r1)?;
                not_the_preopen(&r2)?;
                let dir = std::fs::symlink_metadata(&h1).is_ok_and(|m| m.is_dir());
                self.before_change(p1, &r1, &h1)?;
                self.before_change(p2, &r2, &h2)?;
                let moved = dir && self.journal_move(p1, &r1, p2, &r2)?;
                let r = std::fs::rename(&h1, &h2).map_err(io_err);
                if r.is_err() && moved {
                    self.journal_unmove();
                }
                r
            }
            "path_filestat_get" => {
                let path = m.str(a(2), a(3))?;
                let (_, _, host) = self.resolve(a(0), &path, a(1) & 1 != 0)?;
                let md = std::fs::symlink_metadata(&host).map_err(io_err)?;
                filestat(m, a(4), &md)
            }
            "path_readlink" => {
                let path = m.str(a(1), a(2))?;
                let (_, _, host) = self.resolve(a(0), &path, false)?;
                let t = std::fs::read_link(&host).map_err(io_err)?;
                let b = t.to_string_lossy().into_owned().into_bytes();
                let n = (a(4) as usize).min(b.len());
                m.write(a(3), &b[..n])?;
                m.put_u32(a(5), n as u32)
            }
            _ => Err(NOSYS),
        }
    }

    fn path_open(
        &mut self,
        dirfd: u32,
        dirflags: u32,
        path: &str,
        oflags: u32,
        rights: u64,
        fdflags: u32,
    ) -> Result<u32, Errno> {
        // With SYMLINK_FOLLOW (wasi-libc's default) `host` is the link's target, checked
        // to be inside the preopen; the file is opened with O_NOFOLLOW either way.
        let (pre, rel, host) = self.resolve(dirfd, path, dirflags & 1 != 0)?;
        let md = std::fs::symlink_metadata(&host);
        if md.as_ref().is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(LOOP);
        }
        let is_dir = md.as_ref().is_ok_and(|m| m.is_dir());
        if oflags & OFLAG_DIRECTORY != 0 || (is_dir && oflags & (OFLAG_CREAT | OFLAG_TRUNC) == 0) {
            match md {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(NOTDIR),
                Err(e) => return Err(io_err(e)),
            }
            return self.new_fd(Fd::Dir {
                pre,
                rel,
                preopen: false,
            });
        }
        let write = rights & (RIGHT_FD_WRITE | RIGHT_FD_ALLOCATE | RIGHT_FD_FILESTAT_SET_SIZE) != 0;
        let read = rights & RIGHT_FD_READ != 0;
        let mut o = std::fs::OpenOptions::new();
        o.read(read || !write)
            .write(write || oflags & OFLAG_TRUNC != 0);
        if oflags & OFLAG_CREAT != 0 {
            if oflags & OFLAG_EXCL != 0 {
                o.create_new(true);
            } else {
                o.create(true);
            }
        }
        o.truncate(oflags & OFLAG_TRUNC != 0);
        o.custom_flags(libc::O_NOFOLLOW);
        let modifies = write || oflags & (OFLAG_CREAT | OFLAG_TRUNC) != 0;
        if modifies {
            self.before_change(pre, &rel, &host)?;
        }
        let file = o.open(&host).map_err(io_err)?;
        self.new_fd(Fd::File {
            pre,
            rel,
            file,
            offset: 0,
            read,
            write,
            append: fdflags & FDFLAG_APPEND != 0,
        })
    }

    fn write_fd(&mut self, fd: u32, data: &[u8], at: Option<u64>) -> Result<usize, Errno> {
        match self.fds.get_mut(&fd).ok_or(BADF)? {
            Fd::Stdout if at.is_none() => self.stdout.write(data).map_err(io_err)?,
            Fd::Stderr if at.is_none() => self.stderr.write(data).map_err(io_err)?,
            Fd::Stdout | Fd::Stderr => return Err(SPIPE),
            Fd::File {
                file,
                offset,
                write: true,
                append,
                ..
            } => {
                let pos = match at {
                    Some(p) => p,
                    None if *append => file.metadata().map_err(io_err)?.len(),
                    None => *offset,
                };
                file.write_all_at(data, pos).map_err(io_err)?;
                if at.is_none() {
                    *offset = pos + data.len() as u64;
                }
            }
            Fd::File { .. } => return Err(BADF),
            Fd::Dir { .. } => return Err(ISDIR),
            Fd::Stdin => return Err(BADF),
        }
        Ok(data.len())
    }

    fn read_fd(&mut self, fd: u32, want: usize, at: Option<u64>) -> Result<Vec<u8>, Errno> {
        let want = want.min(16 << 20);
        let mut buf = vec![0u8; want];
        match self.fds.get_mut(&fd).ok_or(BADF)? {
            Fd::Stdin if at.is_none() => {
                let n = std::io::stdin().read(&mut buf).map_err(io_err)?;
                self.stdin_consumed += n as u64;
                buf.truncate(n);
            }
            Fd::File {
                file,
                offset,
                read: true,
                ..
            }
            | Fd::File {
                file,
                offset,
                write: false,
                ..
            } => {
                let pos = at.unwrap_or(*offset);
                let mut n = 0;
                while n < buf.len() {
                    match file.read_at(&mut buf[n..], pos + n as u64) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(io_err(e)),
                    }
                }
                buf.truncate(n);
                if at.is_none() {
                    *offset = pos + n as u64;
                }
            }
            Fd::Dir { .. } => return Err(ISDIR),
            _ => return Err(BADF),
        }
        Ok(buf)
    }

    fn seek(&mut self, fd: u32, delta: i64, whence: u32) -> Result<u64, Errno> {
        match self.fds.get_mut(&fd).ok_or(BADF)? {
            Fd::File { file, offset, .. } => {
                let base = match whence {
                    0 => 0i128,
                    1 => *offset as i128,
                    2 => file.metadata().map_err(io_err)?.len() as i128,
                    _ => return Err(INVAL),
                };
                let new = base + delta as i128;
                if new < 0 || new > i64::MAX as i128 {
                    return Err(INVAL);
                }
                *offset = new as u64;
                Ok(*offset)
            }
            Fd::Dir { .. } => Err(ISDIR),
            _ => Err(SPIPE),
        }
    }

    /// Entries sorted by name (deterministic across runs and hosts), `.` and `..` first;
    /// the cookie is the index of the next entry.
    fn readdir(
        &mut self,
        m: &mut Mem<'_>,
        fd: u32,
        buf: u32,
        len: u32,
        cookie: u64,
        used: u32,
    ) -> Result<(), Errno> {
        let Some(Fd::Dir { pre, rel, .. }) = self.fds.get(&fd) else {
            return Err(if self.fds.contains_key(&fd) {
                NOTDIR
            } else {
                BADF
            });
        };
        let dir = self.host_path(*pre, rel)?;
        let mut names: Vec<(String, u64, u8)> = std::fs::read_dir(&dir)
            .map_err(io_err)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let md = e.metadata().ok()?;
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    md.ino(),
                    filetype(&md),
                ))
            })
            .collect();
        names.sort();
        let dot = std::fs::metadata(&dir).map(|m| m.ino()).unwrap_or(0);
        let mut all = vec![
            (".".to_string(), dot, FT_DIR),
            ("..".to_string(), 0, FT_DIR),
        ];
        all.extend(names);
        let mut out = Vec::new();
        for (i, (name, ino, ft)) in all
            .iter()
            .enumerate()
            .skip(cookie.min(usize::MAX as u64) as usize)
        {
            let mut h = [0u8; 24];
            h[0..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            h[8..16].copy_from_slice(&ino.to_le_bytes());
            h[16..20].copy_from_slice(&(name.len() as u32).to_le_bytes());
            h[20] = *ft;
            out.extend_from_slice(&h);
            out.extend_from_slice(name.as_bytes());
            if out.len() >= len as usize {
                break;
            }
        }
        let n = out.len().min(len as usize);
        m.write(buf, &out[..n])?;
        m.put_u32(used, n as u32)
    }
}

/// The host path of a tracked path (its last name unresolved: a symlink there is the
/// entry itself), confined to its preopen as it is now ([`confine`]).
pub(crate) fn tracked_host_path(
    preopens: &[Preopen],
    t: &TrackedPath,
) -> std::result::Result<PathBuf, confine::Confine> {
    // Tracked paths come from a checkpoint: check them as strictly as guest paths.
    let rel = join_rel("", &t.rel)
        .filter(|r| !r.is_empty())
        .ok_or(confine::Confine::Outside)?;
    let p = preopens.get(t.pre).ok_or(confine::Confine::Outside)?;
    let root = std::fs::canonicalize(&p.host)?;
    confine::confine(&root, &rel, false)
}

/// A checkpoint's relative path, normalised; `None` if it would leave its preopen.
pub fn join_rel_checked(rel: &str) -> Option<String> {
    join_rel("", rel)
}
