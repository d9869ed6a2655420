//! Read-only access: listing committed checkpoints, loading parts with every digest
//! verified, finding the newest intact checkpoint, and verifying a whole repository.
//! Takes no lock; safe while a writer is active (writers only add complete files under
//! final names, and a checkpoint is visible only once its COMMIT is).

use crate::backend::{DirKey, ObjectKey, ReadBackend};
use crate::error::{StoreError, StoreErrorKind};
use crate::known;
use lazarus_format::{
    decode_chunk, CheckpointId, ChunkCodec, ChunkDigest, ChunkHeader, CommitPart, CommitRecord,
    FormatVersion, LoadedObject, Manifest, Rank, WriterInfo, CHUNK_HEADER_LEN,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A checkpoint directory with a COMMIT file, and the result of decoding that COMMIT.
pub(crate) type Scanned = (CheckpointId, Result<CommitRecord, StoreError>);

/// What a COMMIT says about a committed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    /// Checkpoint id.
    pub id: CheckpointId,
    /// Application step.
    pub step: u64,
    /// Commit wall time, ms since the Unix epoch.
    pub time_unix_ms: u64,
    /// Number of ranks.
    pub world_size: u32,
    /// Application metadata.
    pub app: BTreeMap<String, String>,
    /// Per-rank manifest digests and sizes, indexed by rank.
    pub parts: Vec<CommitPart>,
    /// Sum of logical bytes over ranks.
    pub logical_bytes: u64,
    /// Sum of newly stored chunk bytes over ranks.
    pub stored_new_bytes: u64,
    /// Who wrote it.
    pub writer: WriterInfo,
}

impl From<CommitRecord> for CheckpointSummary {
    fn from(c: CommitRecord) -> Self {
        CheckpointSummary {
            id: c.checkpoint,
            step: c.step,
            time_unix_ms: c.time_unix_ms,
            world_size: c.world_size,
            app: c.app,
            logical_bytes: c.parts.iter().map(|p| p.logical_bytes).sum(),
            stored_new_bytes: c.parts.iter().map(|p| p.stored_new_bytes).sum(),
            parts: c.parts,
            writer: c.writer,
        }
    }
}

/// Serializes a path as text, replacing bytes that are not UTF-8 (serde's own `PathBuf`
/// serialization fails on them, and a report about a repository must still be written).
fn lossy_path<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// Why a committed checkpoint cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    /// The unusable checkpoint.
    pub checkpoint: CheckpointId,
    /// The first damaged file found (in JSON: text, lossily for a non-UTF-8 path).
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// Error kind, as text (`corrupt`, `missing`, ...).
    pub kind: String,
    /// The full error message.
    pub detail: String,
}

/// One problem found by [`RepoReader::verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The damaged or missing file (in JSON: text, lossily for a non-UTF-8 path).
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// Error kind, as text.
    pub kind: String,
    /// The full error message.
    pub detail: String,
    /// Committed checkpoints that this problem makes unrestorable.
    pub breaks: Vec<CheckpointId>,
}

/// Result of a full verification. The repository is sound iff `problems` is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Committed checkpoints found.
    pub checkpoints: Vec<CheckpointId>,
    /// Checkpoints with no problem.
    pub intact: Vec<CheckpointId>,
    /// Problems, in discovery order (COMMITs and manifests first, then chunks by digest).
    pub problems: Vec<Problem>,
    /// Distinct chunks re-hashed.
    pub chunks_checked: u64,
    /// Raw bytes re-hashed.
    pub bytes_checked: u64,
}

/// Read-only view of a repository, on any backend.
#[derive(Clone, Debug)]
pub struct RepoReader {
    backend: Arc<dyn ReadBackend>,
    version: FormatVersion,
}

pub(crate) fn check_format<B: ReadBackend + ?Sized>(
    backend: &B,
) -> Result<FormatVersion, StoreError> {
    let p = backend.describe(&ObjectKey::Format);
    let bytes = backend.read(&ObjectKey::Format).map_err(|e| {
        if e.kind() == StoreErrorKind::Missing {
            StoreError::new(
                StoreErrorKind::Missing,
                Some(&p),
                "not a Lazarus repository (no FORMAT file)",
            )
        } else {
            e
        }
    })?;
    FormatVersion::decode(&bytes).map_err(|e| StoreError::format(&p, "", e))
}

fn damage(id: CheckpointId, e: &StoreError) -> Damage {
    Damage {
        checkpoint: id,
        path: e.path().map(Path::to_path_buf).unwrap_or_default(),
        kind: e.kind().to_string(),
        detail: e.to_string(),
    }
}

impl RepoReader {
    /// Opens the repository at `path` (a directory, `s3://bucket/prefix` or
    /// `memory://name`) for reading; fails with `Missing` if there is no `FORMAT` file and
    /// `VersionUnsupported` for an unknown major version.
    pub fn open(path: &Path) -> Result<RepoReader, StoreError> {
        Self::from_backend(crate::location::open_read_backend(path)?)
    }

    /// Opens the repository held by `backend` for reading (same checks as `open`).
    pub fn from_backend(backend: Arc<dyn ReadBackend>) -> Result<RepoReader, StoreError> {
        let version = check_format(backend.as_ref())?;
        Ok(RepoReader { backend, version })
    }

    /// The repository's location (directory path or URL).
    pub fn path(&self) -> &Path {
        self.backend.location()
    }

    /// The backend the repository is read through.
    pub fn backend(&self) -> &Arc<dyn ReadBackend> {
        &self.backend
    }

    /// The multi-level job's history record ([`ObjectKey::LevelHistory`], written by
    /// [`crate::Repository::write_level_history`]); `None` when the repository has none.
    /// The bytes are not interpreted here.
    pub fn level_history(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match self.backend.read(&ObjectKey::LevelHistory) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == StoreErrorKind::Missing => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where the multi-level job's history record is (or would be), for messages.
    pub fn level_history_location(&self) -> PathBuf {
        self.backend.describe(&ObjectKey::LevelHistory)
    }

    /// Where rank `rank`'s manifest file of checkpoint `id` is (or would be), for messages.
    pub fn manifest_location(&self, id: CheckpointId, rank: Rank) -> PathBuf {
        self.backend.describe(&ObjectKey::Manifest(id, rank))
    }

    /// Ids of the checkpoint directories present (committed or not), ascending. Names that
    /// are not 16 decimal digits are ignored.
    pub(crate) fn checkpoint_ids(&self) -> Result<Vec<CheckpointId>, StoreError> {
        checkpoint_ids(self.backend.as_ref())
    }

    /// The repository's format version.
    pub fn version(&self) -> FormatVersion {
        self.version
    }

    /// Reads and validates the COMMIT of `id`.
    pub fn commit_record(&self, id: CheckpointId) -> Result<CommitRecord, StoreError> {
        let bytes = self.backend.read(&ObjectKey::Commit(id))?;
        self.decode_commit(id, &bytes)
    }

    /// [`RepoReader::check_committed`] of a COMMIT not written yet: `bytes` would be
    /// checkpoint `id`'s COMMIT, whose manifests and chunks are already in the repository.
    /// A copier checks its copy is complete before it commits it.
    pub fn check_commit_to_write(
        &self,
        id: CheckpointId,
        bytes: &[u8],
    ) -> Result<CommitRecord, StoreError> {
        self.check_record(self.decode_commit(id, bytes)?)
    }

    /// Decodes `bytes` as checkpoint `id`'s COMMIT (errors name where it is stored).
    fn decode_commit(&self, id: CheckpointId, bytes: &[u8]) -> Result<CommitRecord, StoreError> {
        let p = self.backend.describe(&ObjectKey::Commit(id));
        let c = CommitRecord::decode(bytes)
            .map_err(|e| StoreError::format(&p, &format!("checkpoint {id}"), e))?;
        if c.checkpoint != id {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                Some(&p),
                format!("COMMIT in directory {id} names checkpoint {}", c.checkpoint),
            ));
        }
        Ok(c)
    }

    /// All checkpoint directories that contain a COMMIT file, oldest first, with the result
    /// of decoding it.
    pub(crate) fn scan(&self) -> Result<Vec<Scanned>, StoreError> {
        let mut out = Vec::new();
        for id in self.checkpoint_ids()? {
            if self.backend.stat(&ObjectKey::Commit(id))?.is_some() {
                out.push((id, self.commit_record(id)));
            }
        }
        Ok(out)
    }

    /// Committed checkpoints whose COMMIT decodes, oldest first. Damaged COMMITs are
    /// skipped with a warning (see [`RepoReader::newest_intact`] and `verify` for details).
    pub fn committed(&self) -> Result<Vec<CheckpointSummary>, StoreError> {
        let mut out = Vec::new();
        for (id, r) in self.scan()? {
            match r {
                Ok(c) => out.push(CheckpointSummary::from(c)),
                Err(e) => tracing::warn!("skipping checkpoint {id}: {e}"),
            }
        }
        Ok(out)
    }

    /// Reads rank `rank`'s manifest of committed checkpoint `id`, checked against the digest
    /// recorded in COMMIT.
    pub fn manifest(&self, id: CheckpointId, rank: Rank) -> Result<Manifest, StoreError> {
        let c = self.commit_record(id)?;
        self.manifest_checked(&c, rank)
    }

    /// Every rank's manifest of committed checkpoint `id`, in rank order, each checked
    /// against COMMIT; COMMIT is read once (with inline manifests it holds them all).
    pub fn manifests(&self, id: CheckpointId) -> Result<Vec<Manifest>, StoreError> {
        let c = self.commit_record(id)?;
        (0..c.world_size)
            .map(|r| self.manifest_checked(&c, Rank(r)))
            .collect()
    }

    /// Rank `rank`'s manifest of the committed checkpoint whose decoded COMMIT is `c`.
    pub(crate) fn manifest_checked(
        &self,
        c: &CommitRecord,
        rank: Rank,
    ) -> Result<Manifest, StoreError> {
        let id = c.checkpoint;
        let mkey = ObjectKey::Manifest(id, rank);
        let p = self.backend.describe(&mkey);
        let part = c.parts.get(rank.index()).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::InvalidArgument,
                Some(&p),
                format!("checkpoint {id} has world size {}, no {rank}", c.world_size),
            )
        })?;
        // Format 1.1: the manifest rides in COMMIT; the error then names COMMIT.
        let (bytes, p, what) = match part.inline_manifest() {
            Some(b) => {
                let cp = self.backend.describe(&ObjectKey::Commit(id));
                let b = b.map_err(|e| StoreError::format(&cp, &format!("checkpoint {id}"), e))?;
                (b, cp, "inline manifest")
            }
            None => (self.backend.read(&mkey)?, p, "manifest"),
        };
        let m = Manifest::decode(&bytes)
            .map_err(|e| StoreError::format(&p, &format!("checkpoint {id} {rank}"), e))?;
        if ChunkDigest::of(&bytes) != part.manifest_digest {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                Some(&p),
                format!("checkpoint {id} {rank}: {what} digest differs from the one in COMMIT"),
            ));
        }
        if m.checkpoint != id || m.rank != rank {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                Some(&p),
                format!(
                    "{what} names checkpoint {} {}, expected {id} {rank}",
                    m.checkpoint, m.rank
                ),
            ));
        }
        Ok(m)
    }

    /// Whether checkpoint `id`'s COMMIT exists, distinguishing a definite "no" from an
    /// error: `Ok(Some(..))` it exists and decodes; `Ok(None)` neither COMMIT nor (when
    /// `dir_gone` is asked for) the checkpoint directory exists; `Err` anything else,
    /// including a COMMIT that exists but cannot be read (an I/O error is not an answer).
    pub fn commit_presence(&self, id: CheckpointId) -> Result<Presence, StoreError> {
        if self.backend.stat(&ObjectKey::Commit(id))?.is_some() {
            return self.commit_record(id).map(Presence::Committed);
        }
        if self.backend.dir_exists(&DirKey::Checkpoint(id))? {
            Ok(Presence::Pending)
        } else {
            Ok(Presence::Gone)
        }
    }

    /// Loads rank `rank`'s objects of committed checkpoint `id`, verifying the COMMIT, the
    /// manifest (against COMMIT) and every chunk (against its digest).
    pub fn load_part(&self, id: CheckpointId, rank: Rank) -> Result<Vec<LoadedObject>, StoreError> {
        let m = self.manifest(id, rank)?;
        let ctx = format!("checkpoint {id} {rank}");
        let mut out = Vec::with_capacity(m.objects.len());
        for o in m.objects {
            let mut data = Vec::new();
            let n = usize::try_from(o.bytes).ok();
            let ok = n.is_some_and(|n| data.try_reserve_exact(n).is_ok());
            if !ok {
                return Err(StoreError::new(
                    StoreErrorKind::Corrupt,
                    Some(&self.manifest_location(id, rank)),
                    format!(
                        "{ctx}: object {:?} of {} bytes cannot be allocated",
                        o.info.name, o.bytes
                    ),
                ));
            }
            data.resize(n.unwrap_or(0), 0);
            let mut slices = Vec::with_capacity(o.chunks.len());
            let mut rest: &mut [u8] = &mut data;
            for c in &o.chunks {
                let Some((a, b)) = rest.split_at_mut_checked(c.len as usize) else {
                    return Err(StoreError::new(
                        StoreErrorKind::Corrupt,
                        Some(&self.manifest_location(id, rank)),
                        format!(
                            "{ctx}: object {:?} chunk lengths exceed its size",
                            o.info.name
                        ),
                    ));
                };
                slices.push((c.digest, a));
                rest = b;
            }
            self.read_chunks_into(slices, &ctx)?;
            out.push(LoadedObject { info: o.info, data });
        }
        Ok(out)
    }

    fn read_chunks_into(
        &self,
        slices: Vec<(ChunkDigest, &mut [u8])>,
        ctx: &str,
    ) -> Result<(), StoreError> {
        let threads = self.backend.read_concurrency();
        crate::par::try_for_each(slices, threads, |(d, out)| self.read_chunk_into(&d, out))
            .map_err(|e| e.context(ctx))
    }

    /// Reads chunk `d` into `out` (whose length is the chunk's raw length per the manifest)
    /// and verifies its digest. Uncompressed chunks are read straight into `out`. The
    /// outcome is remembered for the writer (`known.rs`): a chunk read intact may be
    /// reused by later checkpoints of this process, a damaged one is rewritten.
    pub(crate) fn read_chunk_into(
        &self,
        d: &ChunkDigest,
        out: &mut [u8],
    ) -> Result<(), StoreError> {
        read_chunk_into(self.backend.as_ref(), d, out)
    }
}

/// [`RepoReader::read_chunk_into`] on any backend (the writer verifies chunks it finds).
pub(crate) fn read_chunk_into<B: ReadBackend + ?Sized>(
    backend: &B,
    d: &ChunkDigest,
    out: &mut [u8],
) -> Result<(), StoreError> {
    let r = read_chunk_unrecorded(backend, d, out);
    match &r {
        Ok(()) => known::good(backend.location(), [*d]),
        Err(e) if matches!(e.kind(), StoreErrorKind::Corrupt) => known::bad(backend.location(), *d),
        Err(_) => {}
    }
    r
}

fn read_chunk_unrecorded<B: ReadBackend + ?Sized>(
    backend: &B,
    d: &ChunkDigest,
    out: &mut [u8],
) -> Result<(), StoreError> {
    {
        let key = ObjectKey::Chunk(*d);
        let p = backend.describe(&key);
        let fmt_err = |e| StoreError::format(&p, &format!("chunk {d}"), e);
        let opened = backend.open(&key)?;
        let file_len = opened.len;
        let mut f = opened.reader;
        let mut head = [0u8; CHUNK_HEADER_LEN];
        f.read_exact(&mut head).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                StoreError::new(
                    StoreErrorKind::Corrupt,
                    Some(&p),
                    format!("chunk {d}: truncated header"),
                )
            } else {
                StoreError::io(&p, "reading chunk", e)
            }
        })?;
        let h = ChunkHeader::decode(&head).map_err(fmt_err)?;
        if h.raw_len != out.len() as u64 {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                Some(&p),
                format!(
                    "chunk {d}: raw length {} but the manifest says {}",
                    h.raw_len,
                    out.len()
                ),
            ));
        }
        if h.codec == ChunkCodec::None && h.shuffle.is_none() {
            if file_len != CHUNK_HEADER_LEN as u64 + h.raw_len {
                return Err(StoreError::new(
                    StoreErrorKind::Corrupt,
                    Some(&p),
                    format!(
                        "chunk {d}: file is {file_len} bytes, expected {}",
                        CHUNK_HEADER_LEN as u64 + h.raw_len
                    ),
                ));
            }
            f.read_exact(out)
                .map_err(|e| StoreError::io(&p, "reading chunk", e))?;
            if ChunkDigest::of(out) != *d {
                return Err(StoreError::new(
                    StoreErrorKind::Corrupt,
                    Some(&p),
                    format!("chunk {d}: content does not match its digest"),
                ));
            }
            return Ok(());
        }
        let cap = crate::backend::size_cap(&key).map_or(u64::MAX, |(cap, _)| cap);
        if file_len > cap {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                Some(&p),
                format!("chunk {d}: file is {file_len} bytes, more than any chunk can be ({cap})"),
            ));
        }
        let mut file = head.to_vec();
        f.take(cap - CHUNK_HEADER_LEN as u64)
            .read_to_end(&mut file)
            .map_err(|e| StoreError::io(&p, "reading chunk", e))?;
        let raw = decode_chunk(&file, d).map_err(fmt_err)?;
        if raw.len() != out.len() {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                Some(&p),
                format!("chunk {d}: wrong length"),
            ));
        }
        out.copy_from_slice(&raw);
        Ok(())
    }
}

/// Ids of the checkpoint directories of `backend`'s repository, ascending.
pub(crate) fn checkpoint_ids<B: ReadBackend + ?Sized>(
    backend: &B,
) -> Result<Vec<CheckpointId>, StoreError> {
    // Never through a symbolic link: one named like a checkpoint (into another
    // repository, say) is not one of ours, and `gc` deleted that repository's COMMIT
    // through it (regression: `a_symlinked_checkpoint_directory_is_not_followed`). It is
    // ignored with a warning. A regular file named like a checkpoint stays listed: reading
    // its COMMIT then fails, naming it, as for any unreadable checkpoint.
    let mut ids = Vec::new();
    for e in backend.list(&DirKey::Checkpoints)? {
        let Some(id) = parse_id(&e.name) else {
            continue;
        };
        if !e.is_dir {
            let key = ObjectKey::Entry(DirKey::Checkpoints, e.name.clone());
            if !backend.stat(&key)?.is_some_and(|m| m.regular) {
                tracing::warn!(
                    "{}: neither a directory nor a file (a symbolic link?); ignored",
                    backend.describe(&key).display()
                );
                continue;
            }
        }
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

fn parse_id(s: &str) -> Option<CheckpointId> {
    if s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok().map(CheckpointId)
    } else {
        None
    }
}

impl RepoReader {
    /// Fully verifies committed checkpoint `id`: COMMIT, every manifest, every chunk.
    pub fn verify_checkpoint(&self, id: CheckpointId) -> Result<(), StoreError> {
        let c = self.commit_record(id)?;
        let mut seen = BTreeSet::new();
        let mut buf = Vec::new();
        for p in &c.parts {
            let m = self.manifest_checked(&c, p.rank)?;
            for o in &m.objects {
                for ch in &o.chunks {
                    // By digest and length: two manifests may name one digest with two
                    // lengths, and the load checks each against its own (regression:
                    // `verify_reads_a_shared_chunk_at_every_length_a_manifest_gives`).
                    if seen.insert((ch.digest, ch.len)) {
                        buf.resize(ch.len as usize, 0);
                        self.read_chunk_into(&ch.digest, &mut buf).map_err(|e| {
                            StoreError::new(
                                e.kind(),
                                e.path(),
                                format!("checkpoint {id} {}: {}", p.rank, e.message()),
                            )
                        })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The newest committed checkpoint whose COMMIT, manifests and chunks all verify, plus
    /// the reasons every newer committed checkpoint was skipped (newest first). `None` when
    /// no committed checkpoint is intact. Costs one full read of the chosen checkpoint.
    pub fn newest_intact(&self) -> Result<Option<(CheckpointSummary, Vec<Damage>)>, StoreError> {
        let mut damages = Vec::new();
        for (id, r) in self.scan()?.into_iter().rev() {
            let res = r.and_then(|c| self.verify_checkpoint(id).map(|()| c));
            match res {
                Ok(c) => return Ok(Some((CheckpointSummary::from(c), damages))),
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => damages.push(damage(id, &e)),
            }
        }
        Ok(None)
    }

    /// Cheap check of committed checkpoint `id` without reading chunk contents: COMMIT
    /// decodes, every manifest decodes and matches the digest in COMMIT, and every chunk it
    /// names is a regular file of the size recorded when it was written, or, when its
    /// size differs (a truncation, or a damaged chunk written again with another codec),
    /// verifies on reading. Passing does not prove the chunk bytes intact — `load_part`
    /// verifies those as it reads — but catches the usual damage (a crash-truncated or
    /// deleted file, a bad manifest) at the cost of one `stat` per distinct chunk.
    pub fn check_committed(&self, id: CheckpointId) -> Result<CommitRecord, StoreError> {
        self.check_record(self.commit_record(id)?)
    }

    /// [`RepoReader::check_committed`] of an already decoded COMMIT. The stats run
    /// concurrently (on an object store each is a request).
    fn check_record(&self, c: CommitRecord) -> Result<CommitRecord, StoreError> {
        let id = c.checkpoint;
        let mut seen = BTreeSet::new();
        let mut todo = Vec::new();
        for p in &c.parts {
            let m = self.manifest_checked(&c, p.rank)?;
            for ch in m.objects.iter().flat_map(|o| o.chunks.iter()) {
                // By digest and length, as verify: each length a manifest gives is what
                // its load checks.
                if seen.insert((ch.digest, ch.len)) {
                    todo.push((p.rank, ch.digest, ch.stored, ch.len));
                }
            }
        }
        let threads = self.backend.read_concurrency().min(todo.len()).max(1);
        crate::par::try_for_each(todo, threads, |(rank, digest, stored, len)| {
            let key = ObjectKey::Chunk(digest);
            let path = self.backend.describe(&key);
            let ctx = format!("checkpoint {id} {rank}: chunk {digest}");
            let md = self
                .backend
                .stat(&key)
                .map_err(|e| e.context(&ctx))?
                .ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Missing,
                        Some(&path),
                        format!("{ctx}: missing"),
                    )
                })?;
            if !md.regular || md.size < CHUNK_HEADER_LEN as u64 {
                return Err(StoreError::new(
                    StoreErrorKind::Corrupt,
                    Some(&path),
                    if md.regular {
                        format!(
                            "{ctx}: file is {} bytes, shorter than a chunk header",
                            md.size
                        )
                    } else {
                        format!("{ctx}: not a regular file")
                    },
                ));
            }
            // The size recorded when the chunk was written (`stored`) is informational
            // (docs/FORMAT.md): a writer that finds a chunk damaged writes it again with
            // its own codec, so an older manifest may record another size for the same
            // intact content. Taken as proof of damage, it skipped intact checkpoints
            // (regression: `a_chunk_rewritten_with_another_codec_keeps_older_checkpoints_intact`).
            // A size that differs (truncation, or such a rewrite: both rare) is settled
            // by reading and verifying that one chunk.
            if stored != 0 && md.size != stored {
                let mut buf = vec![0u8; len as usize];
                self.read_chunk_into(&digest, &mut buf).map_err(|e| {
                    let why = format!(
                        "{ctx}: file is {} bytes, the manifest recorded {stored}, and it does not verify",
                        md.size
                    );
                    StoreError::new(e.kind(), e.path().or(Some(&path)), format!("{why}: {}", e.message()))
                })?;
            }
            Ok(())
        })?;
        Ok(c)
    }

    /// Committed checkpoints that pass [`RepoReader::check_committed`], newest first, plus
    /// why each committed checkpoint that failed it was skipped. Meant for restore without
    /// reading the data twice: try `load_part` (which verifies every digest) on the first
    /// candidate and fall back to the next one on a `Corrupt`/`Missing` error, instead of
    /// [`RepoReader::newest_intact`] (which reads and hashes everything, then `load_part`
    /// reads it again). With several ranks the fallback must be agreed collectively.
    pub fn newest_committed_candidates(
        &self,
    ) -> Result<(Vec<CheckpointSummary>, Vec<Damage>), StoreError> {
        let mut ok = Vec::new();
        let mut damages = Vec::new();
        for (id, r) in self.scan()?.into_iter().rev() {
            match r.and_then(|c| self.check_record(c)) {
                Ok(c) => ok.push(CheckpointSummary::from(c)),
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => damages.push(damage(id, &e)),
            }
        }
        Ok((ok, damages))
    }

    /// Verifies every committed checkpoint, re-hashing every referenced chunk once.
    /// `progress(done_bytes, total_bytes)` is called as chunks are checked.
    pub fn verify(&self, progress: &dyn Fn(u64, u64)) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let mut broken: BTreeSet<CheckpointId> = BTreeSet::new();
        // (digest, raw length) -> checkpoints that use it. By length too: a manifest
        // naming a digest with another length than the others cannot be loaded, and
        // reading the chunk at only the first length seen called it intact.
        let mut uses: BTreeMap<(ChunkDigest, u64), BTreeSet<CheckpointId>> = BTreeMap::new();
        for (id, r) in self.scan()? {
            report.checkpoints.push(id);
            let c = match r {
                Ok(c) => c,
                // Unreadable (no permission, a server error) is not damage: the
                // repository cannot be verified (`lazarus verify` exit 2, as documented).
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => {
                    report.problems.push(problem(&e, vec![id]));
                    broken.insert(id);
                    continue;
                }
            };
            for p in &c.parts {
                match self.manifest_checked(&c, p.rank) {
                    Err(e) if is_fatal(&e) => return Err(e),
                    Ok(m) => {
                        for ch in m.objects.iter().flat_map(|o| o.chunks.iter()) {
                            uses.entry((ch.digest, ch.len)).or_default().insert(id);
                        }
                    }
                    Err(e) => {
                        report.problems.push(problem(&e, vec![id]));
                        broken.insert(id);
                    }
                }
            }
        }
        let total: u64 = uses.keys().map(|(_, l)| *l).sum();
        let done = AtomicU64::new(0);
        let entries: Vec<_> = uses.iter().collect();
        let next = AtomicUsize::new(0);
        let bad: Mutex<Vec<(usize, StoreError)>> = Mutex::new(Vec::new());
        progress(0, total);
        let workers = self.backend.read_concurrency().max(1);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    let mut buf = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(((d, len), _)) = entries.get(i) else {
                            return;
                        };
                        buf.resize(*len as usize, 0);
                        if let Err(e) = self.read_chunk_into(d, &mut buf) {
                            bad.lock().unwrap_or_else(|e| e.into_inner()).push((i, e));
                        }
                        done.fetch_add(*len, Ordering::Relaxed);
                    }
                });
            }
            // `progress` need not be Sync: only this thread calls it.
            let workers_done = || next.load(Ordering::Relaxed) >= entries.len() + workers;
            while !workers_done() {
                std::thread::sleep(std::time::Duration::from_millis(50));
                progress(done.load(Ordering::Relaxed), total);
            }
        });
        progress(total, total);
        let mut bad = bad.into_inner().unwrap_or_else(|e| e.into_inner());
        bad.sort_by_key(|(i, _)| *i);
        for (i, e) in bad {
            if let Some((_, ids)) = entries.get(i) {
                broken.extend(ids.iter().copied());
                report
                    .problems
                    .push(problem(&e, ids.iter().copied().collect()));
            }
        }
        report.chunks_checked = entries.len() as u64;
        report.bytes_checked = total;
        report.intact = report
            .checkpoints
            .iter()
            .copied()
            .filter(|id| !broken.contains(id))
            .collect();
        Ok(report)
    }
}

/// Whether `e` says the repository could not be read (I/O, server unavailable) rather
/// than that what was read is damaged or missing: the former must stop a restore or a
/// collection, never count as damage.
pub(crate) fn is_fatal(e: &StoreError) -> bool {
    matches!(e.kind(), StoreErrorKind::Io | StoreErrorKind::Unavailable)
}

fn problem(e: &StoreError, breaks: Vec<CheckpointId>) -> Problem {
    Problem {
        path: e.path().map(Path::to_path_buf).unwrap_or_default(),
        kind: e.kind().to_string(),
        detail: e.to_string(),
        breaks,
    }
}

/// What [`RepoReader::commit_presence`] found for one checkpoint id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presence {
    /// COMMIT exists and decodes: the checkpoint is committed.
    Committed(CommitRecord),
    /// The directory exists without COMMIT: pending (its committer may still write COMMIT),
    /// or left over by a crash.
    Pending,
    /// Neither COMMIT nor the directory exists: never committed (or removed by GC).
    Gone,
}

/// Whether a checkpoint directory is a restorable candidate (docs/FORMAT.md: a checkpoint
/// exists iff its COMMIT exists and decodes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum CommitStatus {
    /// COMMIT exists and decodes. Says nothing about manifests or chunks (see `verify`).
    Committed,
    /// No COMMIT: a pending, aborted, crashed or half-deleted checkpoint. Never restorable.
    Uncommitted,
    /// COMMIT exists but does not decode; the reason names the file. Never restorable.
    Damaged(String),
}

/// One directory under `checkpoints/`, as found on disk (see
/// [`RepoReader::checkpoint_dirs`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointDir {
    /// The checkpoint id (the directory name).
    pub id: CheckpointId,
    /// Commit status of the directory.
    pub status: CommitStatus,
    /// World size from the COMMIT, when it decodes.
    pub world_size: Option<u32>,
    /// Ranks whose `rank-<r>.manifest` file exists (ascending), whether or not COMMIT
    /// lists them. Temporaries (`.tmp-*`) and non-canonical names are not counted.
    pub manifest_ranks: Vec<Rank>,
    /// Ranks whose manifest is stored inline in the COMMIT (format 1.1), ascending; empty
    /// when COMMIT is absent or damaged.
    pub inline_ranks: Vec<Rank>,
}

impl RepoReader {
    /// Every checkpoint directory (committed or not), oldest first, with its commit status
    /// and the rank manifests present in it. Reads each COMMIT and lists each directory;
    /// reads no manifest or chunk. Fails only when a directory cannot be listed.
    pub fn checkpoint_dirs(&self) -> Result<Vec<CheckpointDir>, StoreError> {
        let mut out = Vec::new();
        for id in self.checkpoint_ids()? {
            let mut inline_ranks = Vec::new();
            let (status, world_size) = if self.backend.stat(&ObjectKey::Commit(id))?.is_none() {
                (CommitStatus::Uncommitted, None)
            } else {
                match self.commit_record(id) {
                    Ok(c) => {
                        inline_ranks = c
                            .parts
                            .iter()
                            .filter(|p| p.manifest.is_some())
                            .map(|p| p.rank)
                            .collect();
                        (CommitStatus::Committed, Some(c.world_size))
                    }
                    Err(e) => (CommitStatus::Damaged(e.to_string()), None),
                }
            };
            // Removed by a concurrent GC between listing and reading: an empty listing.
            let mut manifest_ranks: Vec<Rank> = self
                .backend
                .list(&DirKey::Checkpoint(id))?
                .iter()
                .filter_map(|e| parse_manifest_name(&e.name))
                .collect();
            manifest_ranks.sort();
            out.push(CheckpointDir {
                id,
                status,
                world_size,
                manifest_ranks,
                inline_ranks,
            });
        }
        Ok(out)
    }
}

/// `rank-<r>.manifest` with `r` in canonical decimal (what the writer writes).
fn parse_manifest_name(s: &str) -> Option<Rank> {
    let r: u32 = s
        .strip_prefix("rank-")?
        .strip_suffix(".manifest")?
        .parse()
        .ok()?;
    (crate::backend::manifest_name(Rank(r)) == s).then_some(Rank(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CommitMeta, RepoOptions, Repository};
    use lazarus_format::{ObjectInfo, ObjectKind, ObjectSpec};

    fn obj(data: &[u8]) -> ObjectSpec<'_> {
        ObjectSpec {
            info: ObjectInfo {
                name: "p".into(),
                type_name: "P".into(),
                kind: ObjectKind::Serde,
                sharing: None,
                layout: None,
            },
            data: data.into(),
            hint: None,
        }
    }

    #[test]
    fn checkpoint_dirs_reports_status_and_present_ranks() {
        let dir = tempfile::tempdir().unwrap();
        let mut repo = Repository::open(dir.path(), RepoOptions::default()).unwrap();
        let p = repo.begin(2).unwrap();
        let w = p.part_writer();
        let rs = vec![
            w.write(Rank(0), &[obj(b"a")]).unwrap(),
            w.write(Rank(1), &[obj(b"b")]).unwrap(),
        ];
        let a = repo
            .commit(p, rs, CommitMeta::default())
            .unwrap()
            .summary
            .id;
        let p = repo.begin(3).unwrap();
        p.part_writer().write(Rank(2), &[obj(b"c")]).unwrap();
        let b = p.id();
        drop(p);
        let cdir = dir.path().join("checkpoints").join(b.to_string());
        std::fs::write(cdir.join("rank-07.manifest"), b"x").unwrap();
        std::fs::write(cdir.join(".tmp-rank-1.manifest"), b"x").unwrap();

        let dirs = RepoReader::open(dir.path())
            .unwrap()
            .checkpoint_dirs()
            .unwrap();
        assert_eq!(dirs.len(), 2);
        assert_eq!(dirs[0].id, a);
        assert_eq!(dirs[0].status, CommitStatus::Committed);
        assert_eq!(dirs[0].world_size, Some(2));
        assert_eq!(dirs[0].manifest_ranks, vec![Rank(0), Rank(1)]);
        assert_eq!(dirs[1].id, b);
        assert_eq!(dirs[1].status, CommitStatus::Uncommitted);
        assert_eq!(dirs[1].world_size, None);
        assert_eq!(dirs[1].manifest_ranks, vec![Rank(2)]);

        std::fs::write(cdir.join("COMMIT"), b"garbage").unwrap();
        let dirs = RepoReader::open(dir.path())
            .unwrap()
            .checkpoint_dirs()
            .unwrap();
        assert!(
            matches!(&dirs[1].status, CommitStatus::Damaged(r) if r.contains("COMMIT")),
            "{:?}",
            dirs[1].status
        );
    }
}
