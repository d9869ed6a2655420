//! Output commit for files: an output file's committed content is copied to the output
//! tree only after the checkpoint holding it committed, so a watcher of the output never
//! sees bytes a restart could rewrite.
//!
//! A file that only grew since its last publication gets the new bytes appended to the
//! published copy (fsynced); any other change replaces the published copy atomically
//! (temp file, fsync, rename, fsync of the directory). Publishing is idempotent: it
//! brings the published copy to the committed content from whatever state a crash left
//! it in, so a crash between COMMIT and publication is repaired by the restore, which
//! publishes the restored checkpoint's output again.

use crate::error::FilesError;
use crate::fs::{Inner, Node};
use crate::journal;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// What this process knows about a published copy: its first `len` bytes equal the
/// working file's, and (`clean`) nothing below `len` changed since.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pub {
    pub len: u64,
    pub clean: bool,
}

const BLOCK: usize = 1 << 20;

/// The temp file of a replacement, next to the copy it replaces. A backslash is in no
/// managed path (`path::normalize` refuses it), so no output can have this name: with
/// `.lazarus-tmp-<name>`, publishing `x` deleted the published copy of an output named
/// `.lazarus-tmp-x` (regression: `publish_temp_name_never_collides_with_an_output`); and
/// being short, it fits wherever the output's own name fits (`<name>` with a prefix did
/// not when the name was 243 to 255 bytes long).
const TEMP_NAME: &str = ".lazarus\\tmp";

/// Publishes every output file of the tree (called with the working tree equal to the
/// checkpoint just committed or restored). Each output is published on its own: one that
/// cannot be (a name the file system refuses, a file where a directory is now needed)
/// used to stop every later one in path order for good (regression:
/// `one_unpublishable_output_does_not_block_the_others`). Every failure is logged; the
/// error returned names how many failed and the first few.
pub(crate) fn publish_committed(g: &mut Inner) -> Result<(), FilesError> {
    let outputs: Vec<(String, u64)> = g
        .tree
        .iter()
        .filter_map(|(p, n)| match n {
            Node::File(id) if g.is_output(p) => Some((p.clone(), *id)),
            _ => None,
        })
        .collect();
    let mut failed: Vec<FilesError> = Vec::new();
    for (p, id) in outputs {
        if let Err(e) = publish_one(g, &p, id) {
            tracing::warn!("publishing output: {e}");
            failed.push(e);
        }
    }
    let Some(first) = failed.first() else {
        return Ok(());
    };
    const SHOWN: usize = 4;
    let mut msg = format!(
        "{} of the outputs could not be published (retried at the next commit): ",
        failed.len()
    );
    let listed: Vec<String> = failed.iter().take(SHOWN).map(|e| e.to_string()).collect();
    msg.push_str(&listed.join("; "));
    if failed.len() > SHOWN {
        msg.push_str(&format!("; and {} more", failed.len() - SHOWN));
    }
    Err(FilesError::new(first.kind(), Some(&g.layout.out), msg))
}

/// Brings the published copy of output `p` (file `id`) to its committed content.
fn publish_one(g: &mut Inner, p: &str, id: u64) -> Result<(), FilesError> {
    let (len, known) = g.files.get(&id).map_or((0, None), |s| (s.len, s.published));
    if let Some(Pub {
        len: l,
        clean: true,
    }) = known
    {
        if l == len {
            return Ok(());
        }
    }
    let out = g.layout.out_path(p);
    let work = g.layout.work_path(p);
    out_dirs(&g.layout.out, p)?;
    let fd = g.fd(id)?;
    let now = match known {
        Some(Pub {
            len: l,
            clean: true,
        }) if l < len => match append_from(fd, &out, l, len) {
            Ok(()) => len,
            // The published copy is not what this process left (changed, replaced by a
            // link, removed by a consumer): compare and repair through the full copy.
            Err(e) if e.kind() == crate::FilesErrorKind::ForeignChange => {
                sync_copy(fd, &work, &out, len)?
            }
            Err(e) => return Err(e),
        },
        _ => sync_copy(fd, &work, &out, len)?,
    };
    if let Some(s) = g.files.get_mut(&id) {
        s.published = Some(Pub {
            len: now,
            clean: now == len,
        });
    }
    Ok(())
}

/// Makes the directories of output `p` below the output tree `root`, never through a
/// symbolic link: the output tree may be writable by others, and a directory replaced by
/// a link would make every publication below it write into the link's target. A link
/// or a file where a directory is needed is an error naming it (a link swapped in while
/// this runs is not caught: that needs `openat` walks).
fn out_dirs(root: &Path, p: &str) -> Result<(), FilesError> {
    let mut dir = root.to_path_buf();
    let Some(parent) = crate::path::parent(p) else {
        return Ok(());
    };
    let stat_error = |dir: &Path, e| FilesError::io(dir, "stat of the output directory", &e);
    for part in parent.split('/') {
        dir.push(part);
        let m = match fs::symlink_metadata(&dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match fs::create_dir(&dir) {
                    // Someone else may have made it meanwhile: looked at below.
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(FilesError::io(&dir, "creating the output directory", &e))
                    }
                }
                fs::symlink_metadata(&dir).map_err(|e| stat_error(&dir, e))?
            }
            Err(e) => return Err(stat_error(&dir, e)),
        };
        if !m.is_dir() {
            let what = if m.file_type().is_symlink() {
                "a symbolic link"
            } else {
                "a file"
            };
            return Err(FilesError::new(
                crate::FilesErrorKind::ForeignChange,
                Some(&dir),
                format!("{what} is where an output directory must be (never followed; remove it)"),
            ));
        }
    }
    Ok(())
}

/// Appends the working file's bytes `from..to` to the published copy and fsyncs it.
fn append_from(src: &fs::File, out: &Path, from: u64, to: u64) -> Result<(), FilesError> {
    // Never through a symbolic link: the output tree may be writable by others.
    let mut f = match fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(out)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(FilesError::new(
                crate::FilesErrorKind::ForeignChange,
                Some(out),
                "published output was replaced by a symbolic link",
            ))
        }
        // A consumer removed it: recreated through the full copy, like any other
        // foreign change (an I/O error here stopped the publication for good).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FilesError::new(
                crate::FilesErrorKind::ForeignChange,
                Some(out),
                "published output was removed outside the job",
            ))
        }
        Err(e) => return Err(FilesError::io(out, "opening the published output", &e)),
    };
    let have = f
        .metadata()
        .map_err(|e| FilesError::io(out, "stat of the published output", &e))?
        .len();
    if have != from {
        // Someone else changed the published copy: fall back to a full comparison.
        return Err(FilesError::new(
            crate::FilesErrorKind::ForeignChange,
            Some(out),
            format!("published output is {have} bytes, {from} expected"),
        ));
    }
    let mut buf = vec![0u8; BLOCK];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(BLOCK);
        src.read_exact_at(&mut buf[..n], at)
            .map_err(|e| FilesError::io(out, "reading the output's working copy", &e))?;
        f.write_all(&buf[..n])
            .map_err(|e| FilesError::io(out, "appending to the published output", &e))?;
        at += n as u64;
    }
    f.sync_data()
        .map_err(|e| FilesError::io(out, "syncing the published output", &e))
}

/// Brings the published copy to the working file's first `len` bytes from any state:
/// a missing copy is created, a prefix is extended, a different copy replaced; a copy
/// longer than `len` whose first `len` bytes agree is left as it is (a restore to an
/// older checkpoint: the re-execution writes those bytes again). Returns the published
/// length.
pub(crate) fn sync_copy(
    src: &fs::File,
    work: &Path,
    out: &Path,
    len: u64,
) -> Result<u64, FilesError> {
    // A symbolic link (or anything but a file) is replaced, never followed.
    let have = match fs::symlink_metadata(out) {
        Ok(m) if m.is_file() => Some(m.len()),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(FilesError::io(out, "stat of the published output", &e)),
    };
    if let Some(have) = have {
        let common = have.min(len);
        if same_prefix(src, work, out, common)? {
            if have <= len {
                if have < len {
                    append_from(src, out, have, len)?;
                }
                return Ok(len);
            }
            return Ok(have);
        }
        tracing::warn!(
            "published output {} differs from the committed content: replacing it",
            out.display()
        );
    }
    replace(src, work, out, len)?;
    Ok(len)
}

fn same_prefix(src: &fs::File, work: &Path, out: &Path, n: u64) -> Result<bool, FilesError> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(out)
        .map_err(|e| FilesError::io(out, "opening", &e))?;
    let (mut a, mut b) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut at = 0u64;
    while at < n {
        let k = ((n - at) as usize).min(BLOCK);
        src.read_exact_at(&mut a[..k], at)
            .map_err(|e| FilesError::io(work, "reading", &e))?;
        f.read_exact(&mut b[..k])
            .map_err(|e| FilesError::io(out, "reading", &e))?;
        if a[..k] != b[..k] {
            return Ok(false);
        }
        at += k as u64;
    }
    Ok(true)
}

/// Writes the first `len` bytes of the working file to a temp file next to `out` (whose
/// directory exists), fsyncs it and renames it over `out` (then fsyncs the directory).
fn replace(src: &fs::File, work: &Path, out: &Path, len: u64) -> Result<(), FilesError> {
    let dir = out.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(TEMP_NAME);
    let r = (|| -> Result<(), FilesError> {
        let mut f =
            journal::create_fresh(&tmp).map_err(|e| FilesError::io(&tmp, "creating", &e))?;
        let mut buf = vec![0u8; BLOCK];
        let mut at = 0u64;
        while at < len {
            let k = ((len - at) as usize).min(BLOCK);
            src.read_exact_at(&mut buf[..k], at)
                .map_err(|e| FilesError::io(work, "reading", &e))?;
            f.write_all(&buf[..k])
                .map_err(|e| FilesError::io(&tmp, "writing the output", &e))?;
            at += k as u64;
        }
        f.sync_all()
            .map_err(|e| FilesError::io(&tmp, "syncing the output", &e))?;
        fs::rename(&tmp, out).map_err(|e| FilesError::io(out, "publishing (rename)", &e))
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r?;
    journal::sync_dir(dir)
}
