//! The rank's local undo journal and its state file (under `<root>/.lazarus/rank-<r>/`).
//!
//! `state` holds the base: the committed checkpoint the working tree was at when the
//! journal was started, with every file's size and chunk digests. `journal` holds what
//! the job changed since, each record written **before** the change it describes:
//! namespace changes and the first change of an existing file's content in an interval
//! (`Touch`) are fsynced before the change; content records (`Dirty`, `Resized`) are
//! written (not fsynced) before the data, which orders them before it in the page cache
//! and so across any process crash; they are fsynced at every checkpoint and by
//! `sync_all`. After a power loss (the boot id differs), differences inside touched files
//! are attributed to the job (see docs/FILES.md). The journal is only a record of *which*
//! bytes the job changed: the bytes to go back to are in the checkpoint repository.
//!
//! Framing: `len: u32 LE | crc32(payload): u32 LE | payload (postcard)`. A reader stops at
//! the first frame that is short or fails its CRC (a torn tail); an append that fails is
//! cut off again, so a torn frame is never followed by a valid one.

use crate::error::{FilesError, FilesErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// One journal record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Rec {
    /// First record: the base checkpoint (as in `state`) and the boot id when written.
    Header { base: Option<u64>, boot: String },
    /// The content of an existing file is about to change in this interval (fsynced).
    Touch(String),
    /// Chunks `from..to` of an existing file are about to be overwritten.
    Dirty { path: String, from: u64, to: u64 },
    /// The file's length is about to differ from its base length.
    Resized(String),
    /// A file or directory is about to be created (fsynced).
    Create { path: String, dir: bool },
    /// A file or (empty) directory is about to be removed (fsynced).
    Remove(String),
    /// A rename is about to happen (fsynced).
    Rename { from: String, to: String },
    /// A restore is about to rewrite the tree (fsynced): the tree is in flux until the
    /// next `state`.
    Restoring,
}

/// A file's or directory's entry in the base index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Entry {
    /// A directory.
    Dir,
    /// A file of `len` bytes with BLAKE3 digests of its `chunk`-sized pieces.
    File { len: u64, digests: Vec<[u8; 32]> },
}

/// The base: which checkpoint the working tree was at, and what it held.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LocalState {
    /// The checkpoint id, `None` for the empty tree of a fresh start.
    pub base: Option<u64>,
    /// Chunk size of `digests`.
    pub chunk: u64,
    /// Every path of the tree.
    pub entries: BTreeMap<String, Entry>,
    /// Output marks (paths or directory prefixes).
    pub outputs: Vec<String>,
}

const STATE_MAGIC: &[u8; 8] = b"LZFSST01";

/// Fault injection: a byte budget for journal writes, shared by clones (tests only).
#[derive(Clone, Debug, Default)]
pub(crate) struct Budget(pub(crate) Option<Arc<AtomicU64>>);

impl Budget {
    fn take(&self, n: u64) -> std::io::Result<()> {
        let Some(b) = &self.0 else { return Ok(()) };
        b.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(n)
        })
        .map(|_| ())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::ENOSPC))
    }
}

/// The append-only journal file.
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    len: u64,
    budget: Budget,
}

fn frame(rec: &Rec) -> Vec<u8> {
    // Encoding an enum of strings and integers into a Vec cannot fail.
    let payload = postcard::to_allocvec(rec).unwrap_or_default();
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

impl Journal {
    /// Starts a new journal at `path` (replacing any) with its header, durably.
    pub(crate) fn start(
        path: &Path,
        base: Option<u64>,
        budget: Budget,
    ) -> Result<Journal, FilesError> {
        // Never through a symbolic link planted at the journal's name: truncating would
        // destroy its target (regression: `live_operations_never_follow_a_planted_symlink`).
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| FilesError::io(path, "creating the undo journal", &e))?;
        let mut j = Journal {
            file,
            path: path.to_path_buf(),
            len: 0,
            budget,
        };
        j.append(
            &Rec::Header {
                base,
                boot: boot_id(),
            },
            true,
        )?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(j)
    }

    /// Opens the existing journal at `path` to append to it, first cutting off a torn
    /// tail (a crash or power loss mid-record): a record appended after torn bytes is
    /// one no reader ever sees — a `Restoring` lost that way made the next restart
    /// refuse the job's own half-finished restore (regression:
    /// `restoring_after_a_torn_tail_is_seen`).
    pub(crate) fn reopen(path: &Path, budget: Budget) -> Result<Journal, FilesError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| FilesError::io(path, "opening the undo journal", &e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| FilesError::io(path, "reading the undo journal", &e))?;
        let whole = whole_frames_len(&bytes) as u64;
        if whole < bytes.len() as u64 {
            file.set_len(whole)
                .and_then(|()| file.sync_data())
                .map_err(|e| {
                    FilesError::io(path, "cutting off the undo journal's torn tail", &e)
                })?;
        }
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            len: whole,
            budget,
        })
    }

    /// Appends `rec`; with `sync`, fsyncs it before returning. A failed append leaves the
    /// journal as it was (the partial frame is cut off).
    pub(crate) fn append(&mut self, rec: &Rec, sync: bool) -> Result<(), FilesError> {
        let bytes = frame(rec);
        let r = self
            .budget
            .take(bytes.len() as u64)
            .and_then(|()| self.file.write_all(&bytes))
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        match r {
            Ok(()) => {
                self.len += bytes.len() as u64;
                failpoint("files_after_journal_append");
                Ok(())
            }
            Err(e) => {
                // Best effort: without this a later record could follow a torn frame.
                let _ = self.truncate_to(self.len);
                Err(FilesError::io(
                    &self.path,
                    "writing the undo journal (the change was not made)",
                    &e,
                ))
            }
        }
    }

    /// The journal's length: a point to [`Journal::cut_back`] to.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Cuts every record after `len` off again, durably: the change they announced was
    /// not made (its system call failed), and a restart must not replay it.
    pub(crate) fn cut_back(&mut self, len: u64) -> Result<(), FilesError> {
        if len >= self.len {
            return Ok(());
        }
        self.truncate_to(len)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| FilesError::io(&self.path, "cutting back the undo journal", &e))?;
        self.len = len;
        Ok(())
    }

    /// Truncates to `len` and puts the write position there (a journal started with
    /// `Journal::start` is not in append mode: a partial write moved its position).
    fn truncate_to(&mut self, len: u64) -> std::io::Result<()> {
        use std::io::Seek;
        self.file.set_len(len)?;
        self.file.seek(std::io::SeekFrom::Start(len)).map(|_| ())
    }

    /// fsyncs what was appended.
    pub(crate) fn sync(&mut self) -> Result<(), FilesError> {
        self.file
            .sync_data()
            .map_err(|e| FilesError::io(&self.path, "syncing the undo journal", &e))
    }
}

/// Test hook: rewrites the journal at `path` as a power loss could leave it — the records
/// that are not fsynced (`Dirty`, `Resized`) lost, the header from another boot.
pub(crate) fn simulate_power_loss(path: &Path) -> Result<(), FilesError> {
    let kept: Vec<u8> = read_journal(path)?
        .into_iter()
        .filter(|r| !matches!(r, Rec::Dirty { .. } | Rec::Resized(_)))
        .map(|r| match r {
            Rec::Header { base, .. } => Rec::Header {
                base,
                boot: "a-previous-boot".into(),
            },
            r => r,
        })
        .flat_map(|r| frame(&r))
        .collect();
    write_durable(path, &kept)
}

/// Reads a journal: its records up to the first torn or damaged frame.
pub(crate) fn read_journal(path: &Path) -> Result<Vec<Rec>, FilesError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f
            .read_to_end(&mut bytes)
            .map_err(|e| FilesError::io(path, "reading the undo journal", &e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FilesError::io(path, "opening the undo journal", &e)),
    };
    Ok(decode_frames(&bytes))
}

/// Records of `bytes`, stopping at the first frame that is short or fails its CRC.
pub(crate) fn decode_frames(bytes: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    frames(bytes, |r| out.push(r));
    out
}

/// The length of `bytes`' whole, valid frames (where a torn tail begins).
fn whole_frames_len(bytes: &[u8]) -> usize {
    frames(bytes, |_| {})
}

/// Calls `each` with every record of `bytes` up to the first frame that is short, fails
/// its CRC or does not decode; returns the length of those frames.
fn frames(mut bytes: &[u8], mut each: impl FnMut(Rec)) -> usize {
    let mut used = 0;
    while bytes.len() >= 8 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let Some(payload) = bytes.get(8..8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        match postcard::from_bytes::<Rec>(payload) {
            Ok(r) => each(r),
            Err(_) => break,
        }
        bytes = &bytes[8 + len..];
        used += 8 + len;
    }
    used
}

impl LocalState {
    /// Writes the state durably (temp, fsync, rename, fsync of the directory).
    pub(crate) fn store(&self, path: &Path) -> Result<(), FilesError> {
        let body = postcard::to_allocvec(self).map_err(|e| {
            FilesError::new(
                FilesErrorKind::Io,
                Some(path),
                format!("encoding the state: {e}"),
            )
        })?;
        let mut bytes = Vec::with_capacity(body.len() + 12);
        bytes.extend_from_slice(STATE_MAGIC);
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        write_durable(path, &bytes)
    }

    /// Reads the state; `Ok(None)` when there is none.
    pub(crate) fn load(path: &Path) -> Result<Option<LocalState>, FilesError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FilesError::io(path, "reading the managed files' state", &e)),
        };
        LocalState::decode(&bytes, path).map(Some)
    }

    /// Decodes a state file's bytes (`path` names it in errors).
    pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<LocalState, FilesError> {
        let corrupt = |why: &str| {
            FilesError::new(
                FilesErrorKind::Corrupt,
                Some(path),
                format!("the managed files' state is damaged ({why}); remove it and restart with JobBuilder::accept_file_changes(true), which puts every managed file back to the checkpoint's content"),
            )
        };
        if bytes.len() < 12 || &bytes[..8] != STATE_MAGIC {
            return Err(corrupt("bad header"));
        }
        let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let body = &bytes[12..];
        if crc32fast::hash(body) != crc {
            return Err(corrupt("checksum mismatch"));
        }
        let state: LocalState = postcard::from_bytes(body).map_err(|e| corrupt(&e.to_string()))?;
        // A checksum proves the bytes are the ones written, not that they make sense: a
        // forged or mis-written state with a chunk of 0 or digests that do not tile the
        // file's length made the restore panic (regression:
        // `a_state_whose_digests_do_not_tile_is_corrupt`).
        if state.chunk == 0 || state.chunk > u64::from(u32::MAX) {
            return Err(corrupt(&format!(
                "chunk size {} is not in 1..=2^32-1",
                state.chunk
            )));
        }
        for (p, e) in &state.entries {
            if crate::path::normalize(Path::new(p)).ok().as_deref() != Some(p.as_str()) {
                return Err(corrupt(&format!("{p:?} is not a managed path")));
            }
            if let Entry::File { len, digests } = e {
                if digests.len() as u64 != len.div_ceil(state.chunk) {
                    return Err(corrupt(&format!(
                        "{p:?}: {} digests do not tile {len} bytes in chunks of {}",
                        digests.len(),
                        state.chunk
                    )));
                }
            }
        }
        Ok(state)
    }
}

/// temp -> write -> fsync -> rename -> fsync(dir).
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), FilesError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".tmp-{name}"));
    let r = (|| {
        let mut f = create_fresh(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(FilesError::io(path, "writing durably", &e));
    }
    sync_dir(dir)
}

/// Creates `path` as a new empty file for writing, first removing whatever a crash (or
/// anyone else) left there, without ever following a symbolic link: `File::create` on
/// a link planted at a temp file's name would truncate and write the link's target.
pub(crate) fn create_fresh(path: &Path) -> std::io::Result<File> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// fsync of a directory.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FilesError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FilesError::io(dir, "fsync of the directory", &e))
}

/// This boot's id (Linux), so that a restart after a power loss or reboot is told apart
/// from a process crash; empty where unknown (see [`rebooted_since`]).
pub(crate) fn boot_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
    .clone()
}

/// Whether the machine may have rebooted since a journal header recorded `boot`: the
/// ids differ, or either is unknown (empty), which must count as a reboot: equal empty
/// ids prove nothing, and taking them for "no reboot" refused the job's own writes
/// whose records a power loss took.
pub(crate) fn rebooted_since(boot: &str) -> bool {
    let now = boot_id();
    boot.is_empty() || now.is_empty() || boot != now
}

pub(crate) use lazarus_store::failpoint;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_tail_and_bad_crc_stop_the_reader() {
        let recs = vec![
            Rec::Header {
                base: Some(3),
                boot: "b".into(),
            },
            Rec::Touch("a".into()),
            Rec::Dirty {
                path: "a".into(),
                from: 1,
                to: 4,
            },
        ];
        let mut bytes: Vec<u8> = recs.iter().flat_map(frame).collect();
        assert_eq!(decode_frames(&bytes), recs);
        for cut in 0..bytes.len() {
            let got = decode_frames(&bytes[..cut]);
            assert!(recs.starts_with(&got), "cut {cut}");
        }
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        assert_eq!(decode_frames(&bytes), recs[..2]);
    }

    #[test]
    fn state_roundtrip_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        assert_eq!(LocalState::load(&p).unwrap(), None);
        let mut s = LocalState {
            base: Some(7),
            chunk: 4096,
            ..Default::default()
        };
        s.entries.insert(
            "x".into(),
            Entry::File {
                len: 3,
                digests: vec![[1; 32]],
            },
        );
        s.store(&p).unwrap();
        assert_eq!(LocalState::load(&p).unwrap(), Some(s));
        let mut b = fs::read(&p).unwrap();
        let n = b.len();
        b[n - 1] ^= 0xff;
        fs::write(&p, b).unwrap();
        let e = LocalState::load(&p).unwrap_err();
        assert_eq!(e.kind(), FilesErrorKind::Corrupt);
        assert!(e.to_string().contains("state"), "{e}");
    }

    #[test]
    fn a_state_whose_digests_do_not_tile_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        let file = |len: u64, n: usize| Entry::File {
            len,
            digests: vec![[7; 32]; n],
        };
        let forged = [
            (4096, "x", file(3, 2)),          // more digests than chunks
            (4096, "x", file(3 * 4096, 2)),   // fewer
            (0, "x", file(0, 0)),             // no chunk size
            ((1 << 63) + 1, "x", file(1, 1)), // a chunk no repository has
            (4096, "../x", file(1, 1)),       // a path outside the area
        ];
        for (chunk, path, e) in forged {
            let mut s = LocalState {
                base: Some(1),
                chunk,
                ..Default::default()
            };
            s.entries.insert(path.into(), e);
            s.store(&p).unwrap(); // a valid checksum over meaningless content
            let e = LocalState::load(&p).unwrap_err();
            assert_eq!(e.kind(), FilesErrorKind::Corrupt, "{e}");
            assert!(e.to_string().contains(&*p.to_string_lossy()), "{e}");
        }
        // The ones that tile still load.
        let mut s = LocalState {
            base: Some(1),
            chunk: 4096,
            ..Default::default()
        };
        s.entries.insert("x".into(), file(4097, 2));
        s.entries.insert("e".into(), file(0, 0));
        s.entries.insert("d".into(), Entry::Dir);
        s.store(&p).unwrap();
        assert_eq!(LocalState::load(&p).unwrap(), Some(s));
    }

    #[test]
    fn reopen_cuts_a_torn_tail_so_appends_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal");
        let mut j = Journal::start(&p, Some(1), Budget::default()).unwrap();
        j.append(&Rec::Touch("a".into()), true).unwrap();
        drop(j);
        let whole = fs::metadata(&p).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let mut j = Journal::reopen(&p, Budget::default()).unwrap();
        assert_eq!(j.len(), whole);
        j.append(&Rec::Restoring, true).unwrap();
        assert_eq!(read_journal(&p).unwrap().last(), Some(&Rec::Restoring));
    }

    #[test]
    fn an_unknown_boot_id_counts_as_a_reboot() {
        assert!(rebooted_since(""));
        assert!(rebooted_since("a-previous-boot"));
        let now = boot_id();
        assert_eq!(rebooted_since(&now), now.is_empty());
    }

    #[test]
    fn cut_back_drops_the_records_after_the_mark_and_appends_go_on_there() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal");
        let mut j = Journal::start(&p, Some(1), Budget::default()).unwrap();
        j.append(&Rec::Touch("a".into()), true).unwrap();
        let mark = j.len();
        j.append(&Rec::Remove("b".into()), true).unwrap();
        j.cut_back(mark).unwrap();
        j.append(&Rec::Touch("c".into()), true).unwrap();
        let recs = read_journal(&p).unwrap();
        assert_eq!(recs[1..], [Rec::Touch("a".into()), Rec::Touch("c".into())]);
        assert_eq!(fs::metadata(&p).unwrap().len(), j.len());
    }

    #[test]
    fn failed_append_leaves_no_torn_frame() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal");
        let budget = Budget(Some(Arc::new(AtomicU64::new(200))));
        let mut j = Journal::start(&p, None, budget.clone()).unwrap();
        let e = j.append(&Rec::Touch("x".repeat(300)), false).unwrap_err();
        assert_eq!(e.kind(), FilesErrorKind::DiskFull);
        assert!(e.to_string().contains("journal"), "{e}");
        if let Some(b) = &budget.0 {
            b.store(1 << 20, Ordering::SeqCst);
        }
        j.append(&Rec::Touch("y".into()), false).unwrap();
        let recs = read_journal(&p).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1], Rec::Touch("y".into()));
    }
}
