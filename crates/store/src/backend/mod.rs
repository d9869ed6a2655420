//! The storage seam: a small read trait, a write trait that extends it, and the one place
//! where object keys are built. Everything a repository does (chunk dedup, manifests,
//! COMMIT as the only commit point, retention, GC, verify, fallback to an intact
//! checkpoint, the lock) is written once above these traits, in `repo.rs`, `writer.rs`
//! and `reader.rs`; a backend only moves bytes.
//!
//! Backends: [`DirBackend`] (a local or parallel file system directory, the on-disk format
//! of docs/FORMAT.md), [`MemoryBackend`] (a process-local map, for tests and diskless
//! checkpoint levels) and, with the `s3` feature, `S3Backend` (any S3-compatible object
//! store). docs/STORAGE.md describes their guarantees.
//!
//! The contract every backend keeps (what the repository logic relies on):
//! - **Atomic objects.** A reader sees an object whole or not at all, never a prefix.
//! - **Durable on success.** When [`WriteBackend::put`] returns `Ok`, the object survives a
//!   crash (of the process, and of the machine for the directory). The durability hooks
//!   ([`WriteBackend::stage`] .. [`WriteBackend::sync_dirs`]) let a backend batch that
//!   work (the directory fsyncs many temp files together); their defaults are plain puts.
//! - **Exclusive create.** `put` with [`PutMode::Create`] fails with
//!   [`StoreErrorKind::Conflict`] when the key exists, atomically: of two concurrent
//!   creators exactly one succeeds. COMMIT is written this way.
//! - **Regular objects only.** Reads open nothing but regular objects (no FIFO, device or
//!   directory; a FIFO must not block): anything else is [`StoreErrorKind::Corrupt`].

pub(crate) mod dir;
mod flock;
mod memory;
#[cfg(feature = "s3")]
pub mod s3;

pub use dir::DirBackend;
pub use flock::{probe_lock, LockProbe};
pub use memory::MemoryBackend;

use crate::error::{StoreError, StoreErrorKind};
use lazarus_format::{CheckpointId, ChunkDigest, Rank};
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A container of objects: a directory on a file system, a key prefix on an object store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DirKey {
    /// The repository root.
    Root,
    /// `chunks/`.
    Chunks,
    /// `chunks/<hh>/`, the fan-out directory of chunks whose name starts with `hh`.
    ChunkFan(u8),
    /// `checkpoints/`.
    Checkpoints,
    /// `checkpoints/<id>/`.
    Checkpoint(CheckpointId),
}

impl DirKey {
    /// The directory's path relative to the repository root, `/`-separated, without a
    /// trailing slash (`""` for the root).
    pub fn rel_path(&self) -> String {
        match self {
            DirKey::Root => String::new(),
            DirKey::Chunks => "chunks".into(),
            DirKey::ChunkFan(b) => format!("chunks/{b:02x}"),
            DirKey::Checkpoints => "checkpoints".into(),
            DirKey::Checkpoint(id) => format!("checkpoints/{id}"),
        }
    }

    /// Every fan-out directory `chunks/00` .. `chunks/ff`.
    pub fn chunk_fans() -> impl Iterator<Item = DirKey> {
        (0..=255u8).map(DirKey::ChunkFan)
    }
}

/// Name of the commit record inside a checkpoint directory.
pub(crate) const COMMIT_NAME: &str = "COMMIT";

/// Every object of a repository (docs/FORMAT.md, "Repository layout"). The only place
/// where object names are built.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKey {
    /// `FORMAT`: the format version.
    Format,
    /// `LOCK`: the writer lock (a flock'd file) or lease (an object with an expiry).
    Lock,
    /// `LEVELS-HISTORY`: which fast-level checkpoints belong to the job's current history
    /// (a multi-level job's record, docs/LEVELS.md "One history"; its bytes are the levels
    /// crate's to read).
    LevelHistory,
    /// `chunks/<hh>/<digest>`.
    Chunk(ChunkDigest),
    /// `checkpoints/<id>/rank-<r>.manifest`.
    Manifest(CheckpointId, Rank),
    /// `checkpoints/<id>/COMMIT`.
    Commit(CheckpointId),
    /// Any other name found by listing a directory (temporaries, strays). The name never
    /// contains `/`.
    Entry(DirKey, String),
}

impl ObjectKey {
    /// The directory holding the object.
    pub fn dir(&self) -> DirKey {
        match self {
            ObjectKey::Format | ObjectKey::Lock | ObjectKey::LevelHistory => DirKey::Root,
            ObjectKey::Chunk(d) => DirKey::ChunkFan(d.0[0]),
            ObjectKey::Manifest(id, _) | ObjectKey::Commit(id) => DirKey::Checkpoint(*id),
            ObjectKey::Entry(dir, _) => dir.clone(),
        }
    }

    /// The object's name inside its directory.
    pub fn name(&self) -> String {
        match self {
            ObjectKey::Format => "FORMAT".into(),
            ObjectKey::Lock => "LOCK".into(),
            ObjectKey::LevelHistory => "LEVELS-HISTORY".into(),
            ObjectKey::Chunk(d) => d.to_hex(),
            ObjectKey::Manifest(_, r) => manifest_name(*r),
            ObjectKey::Commit(_) => COMMIT_NAME.into(),
            ObjectKey::Entry(_, n) => n.clone(),
        }
    }

    /// The object's path relative to the repository root, `/`-separated.
    pub fn rel_path(&self) -> String {
        join_rel(&self.dir().rel_path(), &self.name())
    }
}

/// `rank-<r>.manifest`, `r` in decimal without padding.
pub(crate) fn manifest_name(rank: Rank) -> String {
    format!("rank-{}.manifest", rank.0)
}

fn join_rel(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// What [`ReadBackend::stat`] found under a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// False for anything but a regular object (a directory, FIFO, symlink or device where
    /// an object should be): never opened by readers, replaced by writers.
    pub regular: bool,
}

/// One name found by [`ReadBackend::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name inside the listed directory (no `/`).
    pub name: String,
    /// A sub-directory (or, on an object store, a common prefix) rather than an object.
    pub is_dir: bool,
    /// Size in bytes when the listing tells it (object stores do; the directory backend does
    /// not stat every entry: ask [`ReadBackend::stat`]).
    pub size: Option<u64>,
}

/// An opened object: its size and a reader of its bytes from the start.
pub struct ObjectReader {
    /// Size in bytes, known before reading.
    pub len: u64,
    /// The bytes.
    pub reader: Box<dyn Read + Send>,
}

impl fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectReader")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// An opaque version of an object (an ETag, a counter), for conditional updates.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(pub String);

/// How [`WriteBackend::put`] treats an existing object under the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it (atomically: readers see the old or the new object, whole).
    Overwrite,
    /// Fail with [`StoreErrorKind::Conflict`] if it exists; of concurrent creators exactly
    /// one succeeds.
    Create,
    /// Replace it only if its current version is this one, else `Conflict` (also when it
    /// does not exist). Needed only by backends without a process lock (the lease).
    IfMatch(Version),
}

/// Where a staged write stands (see [`WriteBackend::stage`]).
#[derive(Debug)]
pub enum StagedState {
    /// Already durable and visible under its final key.
    Visible,
    /// Written to this temporary file, to be made durable and renamed by `publish`.
    TempFile(PathBuf),
    /// Held in memory, to be written by `publish`.
    Held(Vec<u8>),
}

/// A write begun by [`WriteBackend::stage`]; finish it with `publish` or drop it with
/// `discard`.
#[derive(Debug)]
pub struct Staged {
    /// The final key.
    pub key: ObjectKey,
    /// How the final key is written.
    pub mode: PutMode,
    /// Where the bytes are now.
    pub state: StagedState,
}

/// Who holds (or wants) the writer lock; recorded in the lock object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockOwner {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// First 16 hex digits of BLAKE3(job token), never the token itself.
    pub job: Option<String>,
}

/// A held writer lock; released on drop.
pub trait LockGuard: Send + Sync + fmt::Debug {
    /// Ok while the lock is known held by this process (or, shared, by its job): a commit
    /// or a GC deletion may be done now. A lease that expired, was lost or cannot be
    /// renewed fails here, so a writer that lost its lock never commits.
    fn check(&self) -> Result<(), StoreError>;
    /// [`LockGuard::check`], also saying how long its answer holds: `Ok(None)` when the
    /// lock is held until this process exits (a flock), `Ok(Some(t))` when a request
    /// *issued* before `t` (this process's monotonic clock) is as safe as one issued
    /// right after a successful `check`, i.e. it lands, or is abandoned, before any other
    /// writer can take the lock over (a lease: `t` is when `check` would start to fail).
    /// Lets a long run of deletions (GC) be fenced request by request at the cost of one
    /// check per window. The default, `Some(now)`, asks for a `check` before every request.
    fn check_until(&self) -> Result<Option<std::time::Instant>, StoreError> {
        self.check().map(|()| Some(std::time::Instant::now()))
    }
    /// The lease generation (incremented by every takeover), for backends with leases.
    fn generation(&self) -> Option<u64> {
        None
    }
}

/// Read access to a repository's objects. Implementations must be cheap to share between
/// threads (`Send + Sync`); every method may be called concurrently.
pub trait ReadBackend: Send + Sync + fmt::Debug {
    /// Where the repository is, as given by the user (a directory path, `s3://bucket/prefix`,
    /// `memory://name`): in messages, and as the key of per-process caches.
    fn location(&self) -> &Path;

    /// Where `key` is, for messages (a path, or a URL for object stores).
    fn describe(&self, key: &ObjectKey) -> PathBuf {
        self.location().join(key.rel_path())
    }

    /// Where `dir` is, for messages.
    fn describe_dir(&self, dir: &DirKey) -> PathBuf {
        let rel = dir.rel_path();
        if rel.is_empty() {
            self.location().to_path_buf()
        } else {
            self.location().join(rel)
        }
    }

    /// Opens `key` for reading. `Missing` when absent; `Corrupt` when it is not a regular
    /// object (never blocks on a FIFO).
    fn open(&self, key: &ObjectKey) -> Result<ObjectReader, StoreError>;

    /// Bytes `range` of `key` (clamped to its end). The default reads through `open`.
    fn read_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let o = self.open(key)?;
        let start = range.start.min(o.len);
        let end = range.end.min(o.len).max(start);
        let mut r = o.reader;
        std::io::copy(&mut (&mut r).take(start), &mut std::io::sink())
            .map_err(|e| StoreError::io(&self.describe(key), "reading", e))?;
        let mut out = Vec::with_capacity((end - start) as usize);
        r.take(end - start)
            .read_to_end(&mut out)
            .map_err(|e| StoreError::io(&self.describe(key), "reading", e))?;
        Ok(out)
    }

    /// The whole object, refused (`Corrupt`, naming it) before its bytes are read when it
    /// is larger than the format allows its kind ([`size_cap`]); never allocates more than
    /// its announced size, and fails if more bytes than that arrive.
    fn read(&self, key: &ObjectKey) -> Result<Vec<u8>, StoreError> {
        let o = self.open(key)?;
        CappedRead::new(self.describe(key), key, o.len)?.read_all(o.reader)
    }

    /// Size and kind of whatever is under `key`; `None` when nothing is.
    fn stat(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError>;

    /// The names directly inside `dir` (objects and sub-directories); empty when `dir` does
    /// not exist. Order unspecified.
    fn list(&self, dir: &DirKey) -> Result<Vec<Entry>, StoreError>;

    /// Whether `dir` exists (on an object store: holds at least one object).
    fn dir_exists(&self, dir: &DirKey) -> Result<bool, StoreError> {
        Ok(!self.list(dir)?.is_empty())
    }

    /// How many reads of this backend are worth running at once (2 for a local disk, where
    /// hashing is the bottleneck; more for a network store, where latency is).
    fn read_concurrency(&self) -> usize {
        2
    }
}

/// Write access. Methods that change the repository must keep the contract in the module
/// docs; the durability hooks have defaults that are never wrong (a plain durable `put`).
pub trait WriteBackend: ReadBackend {
    /// This backend as a read-only one (for the readers a writer hands out).
    fn as_read(self: Arc<Self>) -> Arc<dyn ReadBackend>;

    /// Writes `key` as the concatenation of `parts`, atomically and durably (on a file
    /// system: temp, fsync, rename, fsync of the directory). Returns the new version.
    fn put(
        &self,
        key: &ObjectKey,
        parts: &[&[u8]],
        mode: PutMode,
    ) -> Result<Option<Version>, StoreError>;

    /// Reads `key` with its version, for a later [`PutMode::IfMatch`]; `None` when absent.
    fn read_versioned(&self, key: &ObjectKey) -> Result<Option<(Vec<u8>, Version)>, StoreError>;

    /// Removes whatever is under `key` (an object, or a directory/FIFO squatting its name);
    /// absent is fine.
    fn delete(&self, key: &ObjectKey) -> Result<(), StoreError>;

    /// Creates `dir` exclusively: `Ok(true)` when this call created it, `Ok(false)` when it
    /// existed. On an object store a directory is a marker object, `<dir>/.dir`, written
    /// with [`PutMode::Create`]. Not made durable (see [`WriteBackend::sync_dirs`]).
    fn create_dir(&self, dir: &DirKey) -> Result<bool, StoreError>;

    /// Creates each of `dirs` that is missing and makes their entries durable (a file
    /// system: one fsync per parent). Backends without directories do nothing.
    fn ensure_dirs(&self, _dirs: &[DirKey]) -> Result<(), StoreError> {
        Ok(())
    }

    /// Removes a chunk that garbage collection found dead, where the backend may keep its
    /// storage for a later chunk write because reusing it is cheaper than freeing and
    /// allocating again (the directory backend moves the file into a spare directory:
    /// docs/FORMAT.md, "Recycled chunk files"). Either way the chunk is gone from the
    /// repository when this returns `Ok`; absent is fine. The default deletes.
    fn retire_chunk(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.delete(key)
    }

    /// Deletes every retired chunk not reused yet (garbage collection does this before it
    /// retires more, a finished job when it ends). The default has none.
    fn clear_retired(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Removes `dir` and everything under it; absent is fine.
    fn delete_dir(&self, dir: &DirKey) -> Result<(), StoreError>;

    /// Removes `dir` if it holds nothing (best effort).
    fn delete_dir_if_empty(&self, _dir: &DirKey) -> Result<(), StoreError> {
        Ok(())
    }

    /// Begins writing `key`: the bytes are handed over now, the object becomes visible no
    /// later than [`WriteBackend::publish`] and durable no later than the `sync_*` calls
    /// that follow. The default puts `Overwrite` objects at once (visible and durable) and
    /// holds `Create`/`IfMatch` ones for `publish`, so a conditional write never becomes
    /// visible before the caller says so.
    fn stage(&self, key: &ObjectKey, parts: &[&[u8]], mode: PutMode) -> Result<Staged, StoreError> {
        let state = match mode {
            PutMode::Overwrite => {
                self.put(key, parts, PutMode::Overwrite)?;
                StagedState::Visible
            }
            _ => StagedState::Held(parts.concat()),
        };
        Ok(Staged {
            key: key.clone(),
            mode,
            state,
        })
    }

    /// Makes the bytes of staged writes durable (a file system: fsync of the temp files,
    /// concurrently).
    fn sync_staged(&self, _staged: &[&Staged]) -> Result<(), StoreError> {
        Ok(())
    }

    /// Makes a staged write visible under its final key (a file system: rename; an object
    /// store: the put of a held object). `Conflict` for a `Create` whose key exists.
    fn publish(&self, staged: Staged) -> Result<(), StoreError> {
        match staged.state {
            StagedState::Visible => Ok(()),
            StagedState::Held(bytes) => self.put(&staged.key, &[&bytes], staged.mode).map(|_| ()),
            StagedState::TempFile(p) => Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                Some(&p),
                "a temporary file staged by another backend",
            )),
        }
    }

    /// Drops a staged write that will not be published (removes its temporary).
    fn discard(&self, _staged: Staged) {}

    /// Makes the entries of `dirs` durable (a file system: fsync of each directory,
    /// concurrently), after `publish` and `delete`.
    fn sync_dirs(&self, _dirs: &[DirKey]) -> Result<(), StoreError> {
        Ok(())
    }

    /// A lock that the platform releases when its holder dies (flock on a local file
    /// system), or `None` (the default): the repository then keeps a lease object in
    /// `LOCK` with conditional puts (docs/STORAGE.md).
    fn process_lock(
        &self,
        _owner: &LockOwner,
        _shared: bool,
    ) -> Option<Result<Box<dyn LockGuard>, StoreError>> {
        None
    }

    /// Timing of the lease used when [`WriteBackend::process_lock`] is `None`.
    fn lease_config(&self) -> crate::lease::LeaseConfig {
        crate::lease::LeaseConfig::default()
    }

    /// How many chunk writes are worth running at once (hashing and compression included).
    fn write_concurrency(&self) -> usize {
        4
    }

    /// True when asking whether an object exists costs a request (an object store): the
    /// writer then creates a new chunk with one conditional `put(.., Create)` and treats
    /// `Conflict` as "present", instead of a `stat` before every write. Default: false.
    fn dedup_by_create(&self) -> bool {
        false
    }
}

/// The largest `LEVELS-HISTORY` record accepted (a path has one segment per restore that
/// kept its ancestors; thousands of restarts fit in far less).
pub const MAX_LEVEL_HISTORY_LEN: u64 = 1 << 20;

/// zstd's `ZSTD_COMPRESSBOUND(s)`: the most bytes zstd writes for `s` input bytes.
const fn zstd_compress_bound(s: u64) -> u64 {
    let small = if s < (128 << 10) {
        ((128 << 10) - s) >> 11
    } else {
        0
    };
    s + (s >> 8) + small
}

/// The largest object of `key`'s kind the format allows, and the kind's name for messages
/// (docs/FORMAT.md, "Independent readers", "Opening files"): FORMAT 12 bytes; LOCK (a lease)
/// [`crate::LeaseRecord::MAX_LEN`]; LEVELS-HISTORY [`MAX_LEVEL_HISTORY_LEN`]; COMMIT and
/// manifests 48 + `MAX_ENVELOPE_BODY`; a chunk 16 + zstd's compress bound of
/// `MAX_CHUNK_LEN`. `None` for names the format does not define (strays), which are read
/// only as far as their announced size can be allocated. The one place these caps live.
pub fn size_cap(key: &ObjectKey) -> Option<(u64, &'static str)> {
    use lazarus_format::{
        CHUNK_HEADER_LEN, ENVELOPE_HEADER_LEN, MAX_CHUNK_LEN, MAX_ENVELOPE_BODY, REPO_FORMAT_LEN,
    };
    const ENVELOPE: u64 = ENVELOPE_HEADER_LEN as u64 + MAX_ENVELOPE_BODY;
    Some(match key {
        ObjectKey::Format => (REPO_FORMAT_LEN as u64, "FORMAT"),
        ObjectKey::Lock => (crate::LeaseRecord::MAX_LEN as u64, "LOCK"),
        ObjectKey::LevelHistory => (MAX_LEVEL_HISTORY_LEN, "LEVELS-HISTORY"),
        ObjectKey::Chunk(_) => (
            CHUNK_HEADER_LEN as u64 + zstd_compress_bound(MAX_CHUNK_LEN),
            "chunk",
        ),
        ObjectKey::Commit(_) => (ENVELOPE, "COMMIT"),
        ObjectKey::Manifest(..) => (ENVELOPE, "manifest"),
        ObjectKey::Entry(DirKey::Checkpoint(_), n) if n == COMMIT_NAME => (ENVELOPE, "COMMIT"),
        ObjectKey::Entry(DirKey::Checkpoint(_), n)
            if n.starts_with("rank-") && n.ends_with(".manifest") =>
        {
            (ENVELOPE, "manifest")
        }
        ObjectKey::Entry(..) => return None,
    })
}

/// A whole-object read bounded by [`size_cap`] and by the size the backend announced
/// before the body (a file's `fstat`, an HTTP `Content-Length`): the object is refused
/// before any byte is read when the announced size is over the cap, at most that size is
/// ever reserved (fallibly), and more bytes than announced are an error. Shared by
/// [`ReadBackend::read`] and the S3 backend's streaming GETs.
pub(crate) struct CappedRead {
    pub(crate) at: PathBuf,
    len: u64,
    out: Vec<u8>,
}

impl CappedRead {
    pub(crate) fn new(at: PathBuf, key: &ObjectKey, len: u64) -> Result<Self, StoreError> {
        if let Some((max, what)) = size_cap(key) {
            if len > max {
                return Err(StoreError::new(
                    StoreErrorKind::Corrupt,
                    Some(&at),
                    format!(
                        "{len} bytes, more than any {what} can be ({max}); refusing to read it"
                    ),
                ));
            }
        }
        let mut out = Vec::new();
        if out
            .try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX))
            .is_err()
        {
            // Within its kind's cap, failing to allocate says nothing about the object:
            // a fatal I/O error (never "damaged", which would let a collection sweep an
            // intact checkpoint's chunks or a restore skip it). Only a stray without a
            // cap is refused as corrupt.
            let kind = if size_cap(key).is_some() {
                StoreErrorKind::Io
            } else {
                StoreErrorKind::Corrupt
            };
            return Err(StoreError::new(
                kind,
                Some(&at),
                format!("{len} bytes cannot be allocated"),
            ));
        }
        Ok(CappedRead { at, len, out })
    }

    /// Appends one piece of a streamed body (the S3 backend's GETs).
    #[cfg(feature = "s3")]
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if (self.out.len() + bytes.len()) as u64 > self.len {
            return Err(self.longer());
        }
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    /// Reads `r` to its end straight into the reserved buffer (no bounce copy): one byte
    /// past the announced size is enough to refuse a longer object.
    pub(crate) fn read_all(mut self, r: impl std::io::Read) -> Result<Vec<u8>, StoreError> {
        r.take(self.len.saturating_add(1))
            .read_to_end(&mut self.out)
            .map_err(|e| StoreError::io(&self.at, "reading", e))?;
        if self.out.len() as u64 > self.len {
            return Err(self.longer());
        }
        self.finish()
    }

    fn longer(&self) -> StoreError {
        StoreError::new(
            StoreErrorKind::Corrupt,
            Some(&self.at),
            format!(
                "more bytes arrived than the {} announced; refusing the rest",
                self.len
            ),
        )
    }

    pub(crate) fn finish(self) -> Result<Vec<u8>, StoreError> {
        if (self.out.len() as u64) < self.len {
            return Err(StoreError::new(
                StoreErrorKind::Io,
                Some(&self.at),
                format!(
                    "the read ended after {} of the {} bytes announced",
                    self.out.len(),
                    self.len
                ),
            ));
        }
        Ok(self.out)
    }
}

/// `Corrupt` error for something that is not a regular object where one should be.
pub(crate) fn not_regular(path: &Path, what: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        Some(path),
        format!("not a regular file ({what}); refusing to open it"),
    )
}
