//! The undo journal: the state of a path *before* the program first changes it in this
//! run, so that a resume can roll back changes the checkpoint does not know about (a
//! pre-existing log appended to, a file created, before the first checkpoint that tracks
//! them). Written before the change, durably (the file copy and the entry are fsynced),
//! cleared after each committed checkpoint (which then tracks the path itself).
//!
//! Resume = undo the journal newest entry first, then restore the checkpoint's tracked
//! files: entries from before the checkpoint (a kill between COMMIT and the clear) are
//! overwritten by the checkpoint's content, entries after it are rolled back.

use super::fs::TrackedPath;
use super::Preopen;
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "pre", rename_all = "lowercase")]
enum Pre {
    Absent,
    Dir,
    File { data: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    path: TrackedPath,
    #[serde(flatten)]
    pre: Pre,
}

/// The journal directory of one repository.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    next: u64,
}

fn entries(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(n) = name
                    .strip_suffix(".json")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    v.push((n, e.path()));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    v.sort();
    Ok(v)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Journal {
    /// Opens (creating) the journal in `dir`.
    pub fn open(dir: &Path) -> io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let next = entries(dir)?.last().map_or(0, |(n, _)| n + 1);
        Ok(Journal {
            dir: dir.to_path_buf(),
            next,
        })
    }

    /// Records the current state of `host` (the path `path` names) before a change.
    pub fn record(&mut self, host: &Path, path: &TrackedPath) -> io::Result<()> {
        let n = self.next;
        self.next += 1;
        let pre = match std::fs::symlink_metadata(host) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Pre::Absent,
            Err(e) => return Err(e),
            Ok(m) if m.is_dir() => Pre::Dir,
            Ok(_) => {
                let data = format!("{n}.data");
                let dest = self.dir.join(&data);
                std::fs::copy(host, &dest)?;
                std::fs::File::open(&dest)?.sync_all()?;
                Pre::File { data }
            }
        };
        let bytes = serde_json::to_vec(&Entry {
            path: path.clone(),
            pre,
        })
        .map_err(io::Error::other)?;
        let tmp = self.dir.join(format!(".{n}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(format!("{n}.json")))?;
        fsync_dir(&self.dir)
    }

    /// Forgets every entry (after a checkpoint that tracks their paths is committed).
    pub fn clear(&mut self) -> io::Result<()> {
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            std::fs::remove_file(e.path())?;
        }
        self.next = 0;
        fsync_dir(&self.dir)
    }

    /// Puts every journaled path back as it was before the change, newest entry first;
    /// returns how many entries were undone. Entries naming a path outside the preopens
    /// (a damaged journal) are refused.
    pub fn undo(&mut self, preopens: &[Preopen]) -> crate::Result<usize> {
        let io = |p: &Path, what: &str, e: io::Error| crate::VmError::io(p, what, e);
        let list = entries(&self.dir).map_err(|e| io(&self.dir, "listing the undo journal", e))?;
        for (_, p) in list.iter().rev() {
            let bytes = std::fs::read(p).map_err(|e| io(p, "reading", e))?;
            let entry: Entry = serde_json::from_slice(&bytes)
                .map_err(|e| crate::error::corrupt(format!("{}: {e}", p.display())))?;
            let host = super::fs::tracked_host_path(preopens, &entry.path).ok_or_else(|| {
                crate::error::corrupt(format!(
                    "{}: path {:?} is not under a preopen",
                    p.display(),
                    entry.path
                ))
            })?;
            let md = std::fs::symlink_metadata(&host).ok();
            match entry.pre {
                Pre::Absent => match md {
                    Some(m) if m.is_dir() => {
                        if let Err(e) = std::fs::remove_dir(&host) {
                            tracing::warn!(
                                "{}: created after the checkpoint; left in place: {e}",
                                host.display()
                            );
                        }
                    }
                    Some(_) => std::fs::remove_file(&host).map_err(|e| io(&host, "removing", e))?,
                    None => {}
                },
                Pre::Dir => {
                    if !md.is_some_and(|m| m.is_dir()) {
                        std::fs::create_dir_all(&host).map_err(|e| io(&host, "recreating", e))?;
                    }
                }
                Pre::File { data } => {
                    if data.contains('/') {
                        return Err(crate::error::corrupt(format!(
                            "{}: bad data name",
                            p.display()
                        )));
                    }
                    let src = self.dir.join(&data);
                    if md.is_some_and(|m| m.is_dir()) {
                        let _ = std::fs::remove_dir(&host);
                    }
                    std::fs::copy(&src, &host)
                        .map_err(|e| io(&host, "restoring from the undo journal", e))?;
                }
            }
        }
        Ok(list.len())
    }
}
