//! The undo journal: the state of a path *before* the program first changes it in this
//! run, so that a resume can roll back changes the checkpoint does not know about (a
//! pre-existing log appended to, a file created, before the first checkpoint that tracks
//! them). Written before the change, durably (the file copy and the entry are fsynced),
//! cleared after each committed checkpoint (which then tracks the path itself).
//!
//! Resume = undo the journal newest entry first, then restore the checkpoint's tracked
//! files. Each entry is stamped with the checkpoint committed before it was written
//! (`base`): entries from before the checkpoint resumed from (a kill between its COMMIT
//! and the clear) are skipped, not undone (undoing a directory rename the checkpoint
//! already has would move the directory back and leave an empty one in its place);
//! entries after it are rolled back.

use super::confine::Want;
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
    File {
        data: String,
    },
    /// The directory at `path` was renamed to `to` (undone by renaming it back, contents
    /// and all; recorded at every directory rename, tracked or not).
    Moved {
        to: TrackedPath,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    path: TrackedPath,
    #[serde(flatten)]
    pre: Pre,
    /// 1 + the id of the checkpoint committed before the entry was written, 0 before the
    /// first; absent in entries of older versions (always undone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<u64>,
}

impl Entry {
    fn moved_to(&self) -> Option<&TrackedPath> {
        match &self.pre {
            Pre::Moved { to } => Some(to),
            _ => None,
        }
    }
}

/// The journal directory of one repository.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    next: u64,
    /// The stamp of new entries (see `Entry::base`).
    base: u64,
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
            base: 0,
        })
    }

    /// Entries written from now on follow checkpoint `id` (committed, or resumed from).
    pub fn follows(&mut self, id: u64) {
        self.base = id.saturating_add(1);
    }

    /// Checkpoint `id` is committed: later entries follow it, and every entry is
    /// forgotten ([`Journal::clear`]).
    pub fn committed(&mut self, id: u64) -> io::Result<()> {
        self.follows(id);
        self.clear()
    }

    /// Records the current state of `host` (the path `path` names) before a change.
    pub fn record(&mut self, host: &Path, path: &TrackedPath) -> io::Result<()> {
        let n = self.next;
        self.next += 1;
        let pre = match std::fs::symlink_metadata(host) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Pre::Absent,
            Err(e) => return Err(e),
            // Never copied through: the program may not change a symlink (fs.rs).
            Ok(m) if m.file_type().is_symlink() => {
                return Err(io::Error::other(format!(
                    "{} is a symbolic link",
                    host.display()
                )))
            }
            Ok(m) if m.is_dir() => Pre::Dir,
            Ok(_) => {
                let data = format!("{n}.data");
                let dest = self.dir.join(&data);
                std::fs::copy(host, &dest)?;
                std::fs::File::open(&dest)?.sync_all()?;
                Pre::File { data }
            }
        };
        self.write_entry(
            n,
            &Entry {
                path: path.clone(),
                pre,
                base: Some(self.base),
            },
        )
    }

    /// Records that the directory `from` is about to be renamed to `to` (after `record`
    /// of both paths): undone by renaming it back, so its contents return with it.
    pub fn record_move(&mut self, from: &TrackedPath, to: &TrackedPath) -> io::Result<()> {
        let n = self.next;
        self.next += 1;
        self.write_entry(
            n,
            &Entry {
                path: from.clone(),
                pre: Pre::Moved { to: to.clone() },
                base: Some(self.base),
            },
        )
    }

    /// Withdraws the newest entry (a [`Journal::record_move`] whose rename then failed:
    /// undoing a move that did not happen would move another directory).
    pub fn withdraw_last(&mut self) -> io::Result<()> {
        let Some(n) = self.next.checked_sub(1) else {
            return Ok(());
        };
        std::fs::remove_file(self.dir.join(format!("{n}.json")))?;
        self.next = n;
        fsync_dir(&self.dir)
    }

    fn write_entry(&self, n: u64, entry: &Entry) -> io::Result<()> {
        let bytes = serde_json::to_vec(entry).map_err(io::Error::other)?;
        let tmp = self.dir.join(format!(".{n}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(format!("{n}.json")))?;
        fsync_dir(&self.dir)
    }

    /// Forgets every entry (after a checkpoint that tracks their paths is committed). Every
    /// `N.json` is removed, the directory fsynced, and only then the data files: a kill in
    /// the middle leaves entries with their data, or data files without an entry (ignored
    /// by [`Journal::undo`] and overwritten by later entries), never an entry whose data
    /// is gone.
    pub fn clear(&mut self) -> io::Result<()> {
        for (_, p) in entries(&self.dir)? {
            std::fs::remove_file(p)?;
        }
        fsync_dir(&self.dir)?;
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            std::fs::remove_file(e.path())?;
        }
        self.next = 0;
        fsync_dir(&self.dir)
    }

    /// Puts every journaled path back as it was before the change, newest entry first;
    /// returns how many entries were undone. Same as [`Journal::undo_from`] with `None`.
    pub fn undo(&mut self, preopens: &[Preopen]) -> crate::Result<usize> {
        self.undo_from(preopens, None)
    }

    /// [`Journal::undo`] for a resume from checkpoint `from`: entries stamped as written
    /// before `from` was committed (left by a kill between its COMMIT and the clear) are
    /// skipped, not undone (the caller clears them afterwards); `None`: no checkpoint,
    /// every entry is undone. Returns how many entries were undone. Only `N.json` entries count: a data file
    /// without its entry (left by a kill during [`Journal::clear`]) is ignored. Entries naming a path outside the preopens
    /// (a damaged journal) are refused.
    pub fn undo_from(&mut self, preopens: &[Preopen], from: Option<u64>) -> crate::Result<usize> {
        let io = |p: &Path, what: &str, e: io::Error| crate::VmError::io(p, what, e);
        let list = entries(&self.dir).map_err(|e| io(&self.dir, "listing the undo journal", e))?;
        let mut undone = 0;
        for (_, p) in list.iter().rev() {
            let bytes = std::fs::read(p).map_err(|e| io(p, "reading", e))?;
            let entry: Entry = serde_json::from_slice(&bytes)
                .map_err(|e| crate::error::corrupt(format!("{}: {e}", p.display())))?;
            if let (Some(base), Some(c)) = (entry.base, from) {
                if base <= c {
                    tracing::debug!(
                        "{}: written before checkpoint {c} was committed; not undone",
                        p.display()
                    );
                    continue;
                }
            }
            undone += 1;
            let outside = |t: &TrackedPath| {
                super::join_rel_checked(&t.rel).is_none_or(|r| r.is_empty())
                    || t.pre >= preopens.len()
            };
            if let Some(t) = [Some(&entry.path), entry.moved_to()]
                .into_iter()
                .flatten()
                .find(|t| outside(t))
            {
                return Err(crate::error::corrupt(format!(
                    "{}: path {t:?} is not under a preopen",
                    p.display(),
                )));
            }
            let data;
            let want = match entry.pre {
                Pre::Moved { to } => {
                    super::confine::move_back(preopens, &entry.path, &to)
                        .map_err(|e| e.context(format!("undoing {}", p.display())))?;
                    continue;
                }
                Pre::Absent => Want::Absent,
                Pre::Dir => Want::Dir,
                Pre::File { data: name } => {
                    if name.contains('/') {
                        return Err(crate::error::corrupt(format!(
                            "{}: bad data name",
                            p.display()
                        )));
                    }
                    let src = self.dir.join(&name);
                    data = std::fs::read(&src).map_err(|e| io(&src, "reading", e))?;
                    Want::File(&data)
                }
            };
            super::confine::restore(preopens, &entry.path, want)
                .map_err(|e| e.context(format!("undoing {}", p.display())))?;
        }
        Ok(undone)
    }
}
