//! The managed tree of one rank: the table of files and directories, the namespace
//! operations, and the write-ahead bookkeeping every content change goes through.

use crate::bits::Bits;
use crate::error::{FilesError, FilesErrorKind};
use crate::file::{File, OpenOptions};
use crate::journal::{self, Budget, Journal, Rec};
use crate::path;
use crate::publish::Pub;
use lazarus_format::{WriteTicket, WrittenSink};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where a rank's managed files live, all under the job's managed directory `root`:
/// `root/rank-<r>/` the working tree (what the program reads and writes, rolled back on
/// restore), `root/output/rank-<r>/` the published output (only committed bytes), and
/// `root/.lazarus/rank-<r>/` the undo journal and state.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The working tree.
    pub work: PathBuf,
    /// The published output.
    pub out: PathBuf,
    /// The journal, state and restore staging.
    pub meta: PathBuf,
}

impl Layout {
    /// The layout of `rank` under `root`.
    pub fn new(root: &Path, rank: u32) -> Layout {
        Layout {
            work: root.join(format!("rank-{rank}")),
            out: root.join("output").join(format!("rank-{rank}")),
            meta: root.join(".lazarus").join(format!("rank-{rank}")),
        }
    }

    pub(crate) fn state(&self) -> PathBuf {
        self.meta.join("state")
    }

    pub(crate) fn journal(&self) -> PathBuf {
        self.meta.join("journal")
    }

    pub(crate) fn staging(&self) -> PathBuf {
        self.meta.join("staging")
    }

    pub(crate) fn work_path(&self, p: &str) -> PathBuf {
        self.work.join(p)
    }

    pub(crate) fn out_path(&self, p: &str) -> PathBuf {
        self.out.join(p)
    }
}

/// How a rank's managed files are set up.
#[derive(Clone, Debug)]
pub struct FilesConfig {
    /// The job's managed directory (shared by all ranks; each has its own area in it).
    pub root: PathBuf,
    /// This rank.
    pub rank: u32,
    /// Chunk size of the checkpoint repository (digests and change tracking use it).
    pub chunk: u64,
    /// On restore, put files changed outside the job back to the checkpoint's content
    /// (and remove unknown files) instead of refusing.
    pub accept_changes: bool,
}

/// Receives the store's write ticket for a file object (see `ChangeHint`).
#[derive(Default)]
pub(crate) struct Sink(Mutex<Option<WriteTicket>>);

impl WrittenSink for Sink {
    fn written(&self, ticket: WriteTicket) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(ticket);
    }
}

impl Sink {
    pub(crate) fn take(&self) -> Option<WriteTicket> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// One managed file's bookkeeping.
pub(crate) struct FileState {
    /// Its managed path; `None` once removed or replaced while a handle was open.
    pub path: Option<String>,
    pub fd: Option<std::fs::File>,
    pub len: u64,
    /// Its length at the base checkpoint; `None` when created since (nothing to journal).
    pub base_len: Option<u64>,
    /// `Touch` written in this interval.
    pub touched: bool,
    /// `Resized` written in this interval.
    pub resized: bool,
    /// Chunks with a `Dirty` record in this interval.
    pub journaled: Bits,
    /// Chunk digests as of the last checkpoint's snapshot.
    pub digests: Vec<[u8; 32]>,
    /// Chunks changed since `digests` were computed.
    pub stale: Bits,
    /// Chunks changed since the store's last durable write of the file (`ticket`).
    pub unhinted: Bits,
    pub ticket: Option<WriteTicket>,
    pub sink: Arc<Sink>,
    /// Written since the last fsync.
    pub unsynced: bool,
    pub handles: usize,
    /// What is known of its published copy (output files).
    pub published: Option<Pub>,
}

impl FileState {
    pub(crate) fn new(path: String, len: u64, base_len: Option<u64>) -> FileState {
        FileState {
            path: Some(path),
            fd: None,
            len,
            base_len,
            touched: false,
            resized: false,
            journaled: Bits::default(),
            digests: Vec::new(),
            stale: Bits::default(),
            unhinted: Bits::default(),
            ticket: None,
            sink: Arc::new(Sink::default()),
            unsynced: false,
            handles: 0,
            published: None,
        }
    }
}

/// A node of the working tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    Dir,
    File(u64),
}

/// Everything behind the lock.
pub(crate) struct Inner {
    pub layout: Layout,
    pub rank: u32,
    pub chunk: u64,
    pub accept: bool,
    /// True once restored (or started fresh): operations are allowed.
    pub ready: bool,
    pub tree: BTreeMap<String, Node>,
    pub files: HashMap<u64, FileState>,
    pub next_id: u64,
    pub outputs: BTreeSet<String>,
    pub journal: Option<Journal>,
    pub base: Option<u64>,
    pub budget: Budget,
    /// Test hook: crash (fail every later operation) after this many more crash points.
    pub crash: Option<u64>,
}

/// A rank's managed files: open, create, rename and remove files and directories of its
/// area of the job's managed directory. Cheap to clone (shared); every operation takes
/// one lock, which a checkpoint holds while it records the files.
#[derive(Clone)]
pub struct Files {
    pub(crate) inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("Files")
            .field("work", &g.layout.work)
            .field("files", &g.files.len())
            .finish_non_exhaustive()
    }
}

fn not_found(p: &Path, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: {what}", p.display()))
}

fn io_err(kind: io::ErrorKind, p: &Path, msg: &str) -> io::Error {
    io::Error::new(kind, format!("{}: {msg}", p.display()))
}

impl Files {
    /// The managed files of `cfg.rank` under `cfg.root`; creates the directories. No
    /// operation is allowed until a restore (or fresh start) has put the tree in a known
    /// state: the Job does that in `restore_or_init`.
    pub fn new(cfg: FilesConfig) -> Result<Files, FilesError> {
        let layout = Layout::new(&cfg.root, cfg.rank);
        for d in [&layout.work, &layout.out, &layout.meta] {
            std::fs::create_dir_all(d)
                .map_err(|e| FilesError::io(d, "creating the managed directory", &e))?;
        }
        Ok(Files {
            inner: Arc::new(Mutex::new(Inner {
                layout,
                rank: cfg.rank,
                chunk: cfg.chunk.max(1),
                accept: cfg.accept_changes,
                ready: false,
                tree: BTreeMap::new(),
                files: HashMap::new(),
                next_id: 0,
                outputs: BTreeSet::new(),
                journal: None,
                base: None,
                budget: Budget::default(),
                crash: None,
            })),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The directory layout of this rank.
    pub fn layout(&self) -> Layout {
        self.lock().layout.clone()
    }

    /// The on-disk path of managed path `p` in the working tree (for reading it with
    /// other tools; writes must go through [`Files`]).
    pub fn work_path(&self, p: impl AsRef<Path>) -> io::Result<PathBuf> {
        let p = path::normalize(p.as_ref())?;
        Ok(self.lock().layout.work_path(&p))
    }

    /// Where managed path `p` is published if it is output.
    pub fn output_path(&self, p: impl AsRef<Path>) -> io::Result<PathBuf> {
        let p = path::normalize(p.as_ref())?;
        Ok(self.lock().layout.out_path(&p))
    }

    /// Options to open a file, as [`std::fs::OpenOptions`].
    pub fn options(&self) -> OpenOptions {
        OpenOptions::new(self.clone())
    }

    /// Opens `p` read-only, like [`std::fs::File::open`].
    pub fn open(&self, p: impl AsRef<Path>) -> io::Result<File> {
        self.options().read(true).open(p)
    }

    /// Creates or truncates `p` for writing, like [`std::fs::File::create`].
    pub fn create(&self, p: impl AsRef<Path>) -> io::Result<File> {
        self.options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
    }

    /// Opens `p` for appending, creating it if needed.
    pub fn append(&self, p: impl AsRef<Path>) -> io::Result<File> {
        self.options().append(true).create(true).open(p)
    }

    /// The whole content of `p`, like [`std::fs::read`].
    pub fn read(&self, p: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        let mut f = self.open(p)?;
        let mut v = Vec::new();
        io::Read::read_to_end(&mut f, &mut v)?;
        Ok(v)
    }

    /// Replaces the content of `p` by `data`, like [`std::fs::write`].
    pub fn write(&self, p: impl AsRef<Path>, data: impl AsRef<[u8]>) -> io::Result<()> {
        let mut f = self.create(p)?;
        io::Write::write_all(&mut f, data.as_ref())
    }

    /// True when `p` is a managed file or directory.
    pub fn exists(&self, p: impl AsRef<Path>) -> bool {
        path::normalize(p.as_ref()).is_ok_and(|p| self.lock().tree.contains_key(&p))
    }

    /// The length of managed file `p`.
    pub fn len(&self, p: impl AsRef<Path>) -> io::Result<u64> {
        let pa = p.as_ref();
        let key = path::normalize(pa)?;
        let g = self.lock();
        match g.tree.get(&key) {
            Some(Node::File(id)) => Ok(g.files.get(id).map_or(0, |s| s.len)),
            Some(Node::Dir) => Err(io_err(io::ErrorKind::IsADirectory, pa, "is a directory")),
            None => Err(not_found(pa, "no such managed file")),
        }
    }

    /// The managed paths (files and directories), sorted.
    pub fn list(&self) -> Vec<String> {
        self.lock().tree.keys().cloned().collect()
    }

    /// Renames a file or directory, like [`std::fs::rename`]: a file replaces an existing
    /// file, a directory an existing empty directory. Journaled (fsynced) first.
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
        let (fa, ta) = (from.as_ref(), to.as_ref());
        let (f, t) = (path::normalize(fa)?, path::normalize(ta)?);
        let mut g = self.lock();
        g.check_ready()?;
        let Some(node) = g.tree.get(&f).copied() else {
            return Err(not_found(fa, "no such managed file or directory"));
        };
        if f == t {
            return Ok(());
        }
        if node == Node::Dir && path::is_under(&t, &f) {
            return Err(io_err(
                io::ErrorKind::InvalidInput,
                ta,
                "cannot move a directory into itself",
            ));
        }
        g.check_parent(&t, ta)?;
        match (node, g.tree.get(&t).copied()) {
            (_, None) => {}
            (Node::File(_), Some(Node::File(_))) => {}
            (Node::Dir, Some(Node::Dir)) if !g.has_children(&t) => {}
            _ => {
                return Err(io_err(
                    io::ErrorKind::AlreadyExists,
                    ta,
                    "exists (a file can replace only a file, a directory only an empty directory)",
                ))
            }
        }
        let mark = g.log_sync(Rec::Rename {
            from: f.clone(),
            to: t.clone(),
        })?;
        let (src, dst) = (g.layout.work_path(&f), g.layout.work_path(&t));
        let r = std::fs::rename(&src, &dst);
        g.made(mark, r, &dst, "renaming")?;
        g.sync_parents(&[&f, &t])?;
        if let Some(Node::File(old)) = g.tree.remove(&t) {
            g.detach(old);
        }
        g.tree.remove(&t);
        let moved: Vec<(String, Node)> = g
            .tree
            .range(f.clone()..)
            .take_while(|(k, _)| k.starts_with(f.as_str()))
            .filter(|(k, _)| path::is_under(k, &f))
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        for (k, n) in moved {
            g.tree.remove(&k);
            let nk = path::rebase(&k, &f, &t);
            if let Node::File(id) = n {
                if let Some(s) = g.files.get_mut(&id) {
                    s.path = Some(nk.clone());
                    // The store remembers digests by object name: a new name is a new
                    // object to it, so every chunk is looked at once more.
                    s.ticket = None;
                    // Published (if output) under the new name from scratch.
                    s.published = None;
                }
            }
            g.tree.insert(nk, n);
        }
        Ok(())
    }

    /// Removes a file, like [`std::fs::remove_file`]. Open handles keep working on the
    /// removed file, which is no longer part of checkpoints.
    pub fn remove_file(&self, p: impl AsRef<Path>) -> io::Result<()> {
        let pa = p.as_ref();
        let key = path::normalize(pa)?;
        let mut g = self.lock();
        g.check_ready()?;
        let id = match g.tree.get(&key) {
            Some(Node::File(id)) => *id,
            Some(Node::Dir) => {
                return Err(io_err(io::ErrorKind::IsADirectory, pa, "is a directory"))
            }
            None => return Err(not_found(pa, "no such managed file")),
        };
        let mark = g.log_sync(Rec::Remove(key.clone()))?;
        let w = g.layout.work_path(&key);
        let r = std::fs::remove_file(&w);
        g.made(mark, r, &w, "removing")?;
        g.sync_parents(&[&key])?;
        g.tree.remove(&key);
        g.detach(id);
        Ok(())
    }

    /// Creates a directory, like [`std::fs::create_dir`] (the parent must exist).
    pub fn create_dir(&self, p: impl AsRef<Path>) -> io::Result<()> {
        let pa = p.as_ref();
        let key = path::normalize(pa)?;
        let mut g = self.lock();
        g.check_ready()?;
        if g.tree.contains_key(&key) {
            return Err(io_err(io::ErrorKind::AlreadyExists, pa, "exists"));
        }
        g.check_parent(&key, pa)?;
        let mark = g.log_sync(Rec::Create {
            path: key.clone(),
            dir: true,
        })?;
        let w = g.layout.work_path(&key);
        let r = std::fs::create_dir(&w);
        g.made(mark, r, &w, "creating the directory")?;
        g.sync_parents(&[&key])?;
        g.tree.insert(key, Node::Dir);
        Ok(())
    }

    /// Creates a directory and its missing parents, like [`std::fs::create_dir_all`].
    pub fn create_dir_all(&self, p: impl AsRef<Path>) -> io::Result<()> {
        let key = path::normalize(p.as_ref())?;
        let mut at = String::new();
        for part in key.split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            match self.lock().tree.get(&at) {
                Some(Node::Dir) => continue,
                Some(Node::File(_)) => {
                    return Err(io_err(
                        io::ErrorKind::NotADirectory,
                        Path::new(&at),
                        "is a file",
                    ))
                }
                None => {}
            }
            self.create_dir(&at)?;
        }
        Ok(())
    }

    /// Removes an empty directory, like [`std::fs::remove_dir`].
    pub fn remove_dir(&self, p: impl AsRef<Path>) -> io::Result<()> {
        let pa = p.as_ref();
        let key = path::normalize(pa)?;
        let mut g = self.lock();
        g.check_ready()?;
        match g.tree.get(&key) {
            Some(Node::Dir) => {}
            Some(Node::File(_)) => {
                return Err(io_err(io::ErrorKind::NotADirectory, pa, "not a directory"))
            }
            None => return Err(not_found(pa, "no such managed directory")),
        }
        if g.has_children(&key) {
            return Err(io_err(
                io::ErrorKind::DirectoryNotEmpty,
                pa,
                "directory not empty",
            ));
        }
        let mark = g.log_sync(Rec::Remove(key.clone()))?;
        let w = g.layout.work_path(&key);
        let r = std::fs::remove_dir(&w);
        g.made(mark, r, &w, "removing the directory")?;
        g.sync_parents(&[&key])?;
        g.tree.remove(&key);
        Ok(())
    }

    /// Marks `p` (a file, or a directory and everything below it) as output: from the
    /// next committed checkpoint on, its committed content is published under
    /// [`Files::output_path`] (appended to when the file only grew, replaced atomically
    /// otherwise), never anything a restart could roll back. The mark is part of the
    /// checkpoints like the files.
    pub fn mark_output(&self, p: impl AsRef<Path>) -> io::Result<()> {
        let key = path::normalize(p.as_ref())?;
        let mut g = self.lock();
        g.check_ready()?;
        g.outputs.insert(key);
        Ok(())
    }

    /// Crash simulation for tests: after `points` more crash points (before and after
    /// each journal record, between a record and the change it protects, after each
    /// change, between the steps of a restore) every operation fails, as if the process
    /// had died there; drop this `Files` and restore with a new one.
    #[doc(hidden)]
    pub fn simulate_crash_after(&self, points: u64) {
        self.lock().crash = Some(points);
    }

    /// Test hook: the journal as a power loss could leave it (un-fsynced records lost,
    /// another boot id). Use on a `Files` about to be dropped.
    #[doc(hidden)]
    pub fn simulate_power_loss(&self) -> Result<(), FilesError> {
        let mut g = self.lock();
        g.journal = None;
        journal::simulate_power_loss(&g.layout.journal())
    }

    /// Fault injection for tests: journal writes fail with ENOSPC after `bytes` more.
    #[doc(hidden)]
    pub fn limit_journal_bytes(&self, bytes: u64) {
        let mut g = self.lock();
        let b = Budget(Some(Arc::new(std::sync::atomic::AtomicU64::new(bytes))));
        g.budget = b.clone();
        if let Some(j) = g.journal.take() {
            drop(j);
            // Reopened lazily with the budget (appending to the same journal).
            g.journal = Journal::reopen(&g.layout.journal(), b).ok();
        }
    }
}

impl Inner {
    /// A simulated crash point (see [`Files::simulate_crash_after`]).
    pub(crate) fn crash_point(&mut self) -> Result<(), FilesError> {
        match self.crash {
            Some(0) => {
                self.ready = false;
                Err(FilesError::new(FilesErrorKind::Io, None, "simulated crash"))
            }
            Some(n) => {
                self.crash = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub(crate) fn check_ready(&self) -> Result<(), FilesError> {
        if self.crash == Some(0) {
            return Err(FilesError::new(FilesErrorKind::Io, None, "simulated crash"));
        }
        if self.ready {
            Ok(())
        } else {
            Err(FilesError::new(
                FilesErrorKind::NotReady,
                Some(&self.layout.work),
                "managed files are usable only after Job::restore_or_init",
            ))
        }
    }

    /// The parent of `key` must be a managed directory (or the top of the area).
    pub(crate) fn check_parent(&self, key: &str, shown: &Path) -> io::Result<()> {
        match path::parent(key) {
            None => Ok(()),
            Some(p) => match self.tree.get(p) {
                Some(Node::Dir) => Ok(()),
                _ => Err(not_found(shown, "parent directory does not exist")),
            },
        }
    }

    pub(crate) fn has_children(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.tree
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    pub(crate) fn is_output(&self, p: &str) -> bool {
        self.outputs.iter().any(|o| path::is_under(p, o))
    }

    /// The journal, started on first use after a checkpoint or restore.
    pub(crate) fn journal(&mut self) -> Result<&mut Journal, FilesError> {
        if self.journal.is_none() {
            let j = Journal::start(&self.layout.journal(), self.base, self.budget.clone())?;
            self.journal = Some(j);
        }
        self.journal
            .as_mut()
            .ok_or_else(|| FilesError::new(FilesErrorKind::Io, None, "undo journal unavailable"))
    }

    /// Journals `rec` (fsynced) before the change it announces; returns the journal's
    /// length before it, for [`Inner::made`].
    pub(crate) fn log_sync(&mut self, rec: Rec) -> Result<u64, FilesError> {
        self.crash_point()?;
        let j = self.journal()?;
        let mark = j.len();
        j.append(&rec, true)?;
        self.crash_point()?;
        Ok(mark)
    }

    /// The outcome `r` of the change journaled at `mark` (`what` on `p`): when it failed,
    /// its record is cut off again, so that a restart after a later crash does not take
    /// a change that never happened for the job's (and the file as it is for someone
    /// else's change). Regression: `a_failed_create_or_rename_does_not_refuse_the_next_restart`.
    fn made<T>(
        &mut self,
        mark: u64,
        r: io::Result<T>,
        p: &Path,
        what: &str,
    ) -> Result<T, FilesError> {
        r.map_err(|e| {
            if let Err(cut) = self.journal().and_then(|j| j.cut_back(mark)) {
                tracing::warn!("{cut} (after {what} {} failed)", p.display());
            }
            FilesError::io(p, what, &e)
        })
    }

    /// fsync of the parent directories of `keys` in the working tree.
    fn sync_parents(&self, keys: &[&str]) -> Result<(), FilesError> {
        let mut dirs = BTreeSet::new();
        for k in keys {
            dirs.insert(match path::parent(k) {
                Some(p) => self.layout.work_path(p),
                None => self.layout.work.clone(),
            });
        }
        for d in dirs {
            journal::sync_dir(&d)?;
        }
        Ok(())
    }

    /// The file left the tree: forget it unless a handle still uses it.
    pub(crate) fn detach(&mut self, id: u64) {
        if let Some(s) = self.files.get_mut(&id) {
            s.path = None;
            if s.handles == 0 {
                self.files.remove(&id);
            }
        }
    }

    /// Creates the new empty file `key` (journaled first) and returns its id.
    pub(crate) fn create_file(&mut self, key: &str, shown: &Path) -> io::Result<u64> {
        self.check_parent(key, shown)?;
        let mark = self.log_sync(Rec::Create {
            path: key.to_string(),
            dir: false,
        })?;
        let w = self.layout.work_path(key);
        // The tree says the name is new: whatever is there (a symbolic link planted at
        // it above all, whose target create+truncate would have written) is someone
        // else's, refused by name, never followed or replaced
        // (regression: `live_operations_never_follow_a_planted_symlink`).
        let r = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&w);
        let what = match &r {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                "creating: something not in the managed tree is at its name (someone else put it there; remove it)"
            }
            _ => "creating",
        };
        let fd = self.made(mark, r, &w, what)?;
        self.sync_parents(&[key])?;
        let id = self.next_id;
        self.next_id += 1;
        let mut s = FileState::new(key.to_string(), 0, None);
        s.fd = Some(fd);
        self.files.insert(id, s);
        self.tree.insert(key.to_string(), Node::File(id));
        Ok(id)
    }

    /// The open descriptor of file `id` (opened read-write on first use, never through a
    /// symbolic link: one planted at a managed file's name is refused, naming it).
    pub(crate) fn fd(&mut self, id: u64) -> Result<&std::fs::File, FilesError> {
        let Some(s) = self.files.get(&id) else {
            return Err(self.stale_handle());
        };
        if s.fd.is_none() {
            let p = match &s.path {
                Some(p) => self.layout.work_path(p),
                // Removed while open: its descriptor was kept until the last handle went.
                None => return Err(self.stale_handle()),
            };
            let fd = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .map_err(|e| FilesError::io(&p, &opening(&e), &e))?;
            if let Some(s) = self.files.get_mut(&id) {
                s.fd = Some(fd);
            }
        }
        self.files
            .get(&id)
            .and_then(|s| s.fd.as_ref())
            .ok_or_else(|| self.stale_handle())
    }

    /// A handle whose file the table no longer has (the tree was restored since it was
    /// opened).
    pub(crate) fn stale_handle(&self) -> FilesError {
        FilesError::new(
            FilesErrorKind::Io,
            Some(&self.layout.work),
            "stale managed file handle (the managed files were restored since it was opened)",
        )
    }

    /// The I/O error `e` of `what` on file `id`, naming the file and keeping `e`'s kind
    /// (callers of a std-like API match on `UnexpectedEof`, `StorageFull`, ...).
    pub(crate) fn data_error(&self, id: u64, what: &str, e: io::Error) -> io::Error {
        let fe = match self.files.get(&id).and_then(|s| s.path.as_deref()) {
            Some(p) => FilesError::io(&self.layout.work_path(p), what, &e),
            None => {
                let kind = if crate::error::is_disk_full(&e) {
                    FilesErrorKind::DiskFull
                } else {
                    FilesErrorKind::Io
                };
                let msg = format!("{what} (a managed file removed while open): {e}");
                FilesError::new(kind, Some(&self.layout.work), msg)
            }
        };
        io::Error::new(e.kind(), fe)
    }

    /// Journals a change of file `id`'s bytes `a..b` that leaves it `new_len` long,
    /// before it is made (a failure leaves the file untouched). The chunks are marked
    /// changed only once the change is made ([`mark_changed`]), with the length it
    /// actually left: a length the system refuses must not size the bitmaps.
    pub(crate) fn before_change(
        &mut self,
        id: u64,
        a: u64,
        b: u64,
        new_len: u64,
    ) -> Result<(), FilesError> {
        let c = self.chunk;
        let Some(s) = self.files.get(&id) else {
            return Ok(());
        };
        let Some(path) = s.path.clone() else {
            // Removed while open: not part of the tree, nothing to undo.
            return Ok(());
        };
        if let Some(bl) = s.base_len {
            let mut recs = Vec::new();
            let touch = !s.touched;
            // Checkpointed bytes about to be overwritten or cut off.
            let mut dirty = |from: u64, to: u64| {
                let (k0, k1) = (from / c, to.div_ceil(c));
                if from < to && !s.journaled.all(k0, k1) {
                    recs.push((k0, k1));
                }
            };
            dirty(a.min(bl), b.min(bl));
            if new_len < bl {
                dirty(new_len, bl);
            }
            let resize = new_len != bl && !s.resized;
            if touch || !recs.is_empty() || resize {
                if touch {
                    self.log_sync(Rec::Touch(path.clone()))?;
                    if let Some(s) = self.files.get_mut(&id) {
                        s.touched = true;
                    }
                }
                for (k0, k1) in &recs {
                    self.journal()?.append(
                        &Rec::Dirty {
                            path: path.clone(),
                            from: *k0,
                            to: *k1,
                        },
                        false,
                    )?;
                }
                if resize {
                    self.journal()?.append(&Rec::Resized(path.clone()), false)?;
                }
                if let Some(s) = self.files.get_mut(&id) {
                    for (k0, k1) in recs {
                        s.journaled.set_range(k0, k1);
                    }
                    s.resized |= resize;
                }
            }
        }
        Ok(())
    }

    /// Writes `buf` at `off` of file `id` (`None`: at its end), journaled first; returns
    /// the offset written at.
    pub(crate) fn write_at(&mut self, id: u64, off: Option<u64>, buf: &[u8]) -> io::Result<u64> {
        let c = self.chunk;
        let armed = self.crash.is_some();
        let Some(s) = self.files.get_mut(&id) else {
            return Err(self.stale_handle().into());
        };
        let off = off.unwrap_or(s.len);
        let Some(end) = end_of(off, buf.len(), c) else {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a write of {} bytes at offset {off} ends past the largest file offset of a managed file ({} bytes)",
                    buf.len(),
                    max_len(c)
                ),
            );
            return Err(self.data_error(id, "writing", e));
        };
        let new_len = s.len.max(end);
        // The common case (an append, or a rewrite already journaled in this interval)
        // needs no record: one lookup, no allocation.
        let fast = !needs_record(s, off, end, new_len, c);
        if fast && !armed && s.fd.is_some() {
            failpoint_between();
            if let Some(f) = &s.fd {
                let r = f.write_all_at(buf, off);
                written(s, r.is_ok(), off, end, new_len, c);
                return r
                    .map(|()| off)
                    .map_err(|e| self.data_error(id, "writing", e));
            }
        }
        if !fast {
            self.before_change(id, off, end, new_len)?;
        }
        failpoint_between();
        self.crash_point()?;
        self.fd(id)?;
        let Some(s) = self.files.get_mut(&id) else {
            return Err(self.stale_handle().into());
        };
        let r = match &s.fd {
            Some(f) => f.write_all_at(buf, off),
            None => Err(io::Error::other("managed file not open")),
        };
        written(s, r.is_ok(), off, end, new_len, c);
        r.map_err(|e| self.data_error(id, "writing", e))?;
        self.crash_point()?;
        Ok(off)
    }

    /// Truncates or extends file `id` to `len` (journaled first).
    pub(crate) fn set_len(&mut self, id: u64, len: u64) -> io::Result<()> {
        let c = self.chunk;
        let Some(old) = self.files.get(&id).map(|s| s.len) else {
            return Err(self.stale_handle().into());
        };
        if old == len {
            return Ok(());
        }
        if len > max_len(c) {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes is past the largest length of a managed file ({} bytes)",
                    max_len(c)
                ),
            );
            return Err(self.data_error(id, "setting the length", e));
        }
        self.before_change(id, old.min(len), old.min(len), len)?;
        self.crash_point()?;
        let f = self.fd(id)?;
        let r = f.set_len(len);
        // A failed call leaves the length as it was (read back when it can be).
        let now = match &r {
            Ok(()) => len,
            Err(_) => f.metadata().map_or(old, |m| m.len()),
        };
        if let Some(s) = self.files.get_mut(&id) {
            mark_changed(s, now.min(old), now.min(old), now, c);
            s.len = now;
        }
        r.map_err(|e| self.data_error(id, "setting the length", e))?;
        Ok(self.crash_point()?)
    }
}

/// True when changing bytes `a..b` of `s` (leaving it `new_len` long) needs a journal
/// record first (see [`Inner::before_change`]).
fn needs_record(s: &FileState, a: u64, b: u64, new_len: u64, c: u64) -> bool {
    let Some(bl) = s.base_len else { return false };
    if s.path.is_none() {
        return false;
    }
    let covered = |from: u64, to: u64| from >= to || s.journaled.all(from / c, to.div_ceil(c));
    !s.touched
        || !covered(a.min(bl), b.min(bl))
        || (new_len < bl && !covered(new_len, bl))
        || (new_len != bl && !s.resized)
}

/// Most chunks a managed file may have: its change bitmaps and digests are kept in
/// memory per chunk, so a length the file system would accept on a sparse file (up to
/// 8 EiB on tmpfs or XFS) must not size them (regressions: `set_len_u64_max_is_an_error`,
/// `write_just_below_i64_max_is_an_error`). 2^26 chunks: 64 TiB at the repository's
/// 1 MiB chunks, 8 MiB per bitmap.
const MAX_CHUNKS: u64 = 1 << 26;

/// The largest length of a managed file in chunks of `c` bytes (at most the largest
/// file offset).
fn max_len(c: u64) -> u64 {
    MAX_CHUNKS.saturating_mul(c).min(i64::MAX as u64)
}

/// The end of a write of `n` bytes at `off`; `None` (an error, as `pwrite`'s EFBIG) when
/// it is past [`max_len`] (it overflowed, and panicked in checked builds).
fn end_of(off: u64, n: usize, c: u64) -> Option<u64> {
    off.checked_add(n as u64).filter(|e| *e <= max_len(c))
}

/// Bookkeeping after a write of bytes `a..b` that should have left the file `new_len`
/// long: a failed write may have written part of it, and may still have extended the
/// file, so then its length is read back and what may have changed is marked.
fn written(s: &mut FileState, ok: bool, a: u64, b: u64, new_len: u64, c: u64) {
    let now = match (&s.fd, ok) {
        (_, true) => new_len,
        (Some(f), false) => f.metadata().map_or(s.len, |m| m.len()),
        (None, false) => s.len,
    };
    mark_changed(s, a, b.min(now.max(s.len)), now, c);
    s.len = now;
}

/// Marks the chunks a change of bytes `a..b` (leaving the file `new_len` long) touches:
/// stale digests, not covered by the store's hint, output to replace if below what was
/// published. Called after the change, with lengths that exist.
fn mark_changed(s: &mut FileState, a: u64, b: u64, new_len: u64, c: u64) {
    let old_len = s.len;
    if let Some(p) = &mut s.published {
        if a.min(new_len) < p.len && (a < b || new_len < p.len) {
            p.clean = false;
        }
    }
    let mut mark = |from: u64, to: u64| {
        if from < to {
            let (k0, k1) = (from / c, to.div_ceil(c));
            // Small appends and rewrites mostly land in a chunk marked already.
            if !(k1 == k0 + 1 && s.stale.contains(k0) && s.unhinted.contains(k0)) {
                s.stale.set_range(k0, k1);
                s.unhinted.set_range(k0, k1);
            }
        }
    };
    mark(a, b);
    if new_len != old_len {
        mark(old_len.min(new_len), old_len.max(new_len));
    }
    s.unsynced = true;
}

/// The message for a failed open of a managed file: a symbolic link at its name says so.
pub(crate) fn opening(e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::ELOOP) {
        "opening: a symbolic link is at the managed file's name (never followed; someone else put it there)".into()
    } else {
        "opening".into()
    }
}

/// A failpoint between the journal record and the data write it protects.
fn failpoint_between() {
    journal::failpoint("files_before_data_write");
}
