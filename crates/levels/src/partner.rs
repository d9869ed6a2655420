//! L2: partner placement and the incremental copy of one level checkpoint from one
//! repository to another, over the communicator.
//!
//! The copy moves files of the repository format as they are (chunk files, manifests,
//! COMMIT), so the mirror is the same repository, checkpoint for checkpoint, as its
//! source. Protocol between a sender S and its receiver R (tags in the checkpoint space):
//! S → R `Offer` (the checkpoint's id and chunk digests); R → S `Want` (the digests its
//! mirror lacks); S → R a stream of those chunks: `Chunks` messages, then `Data` (the
//! manifests and COMMIT). R writes chunks as they come and manifests (each durable on
//! return), then, once every chunk it asked for has arrived and every chunk the manifests
//! name is there, COMMIT with an exclusive create: the mirror's copy is complete or
//! absent. A rebuild at restore streams the same way on [`TAG_REBUILD`].
//! Either side that fails sends `Failed` instead of its next message (a stream ends with
//! `Data` or `Failed`), so nobody waits for a message that never comes.

use crate::error::LevelError;
use lazarus_format::{CheckpointId, ChunkDigest, Rank};
use lazarus_net::{Comm, Tag};
use lazarus_store::backend::ObjectReader;
use lazarus_store::backend::PutMode;
use lazarus_store::{
    DirKey, ObjectKey, ReadBackend, RepoReader, StoreError, StoreErrorKind, WriteBackend,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Read;
use std::ops::Range;

/// Checkpoint-space tag of level copies (`0x300..0x400` belong to this crate).
pub(crate) const TAG_COPY: u32 = 0x300;
/// Checkpoint-space tag of rebuild transfers at restore.
pub(crate) const TAG_REBUILD: u32 = 0x301;

/// A message of the copy protocol (module docs). Decoded from another rank's bytes:
/// every field is checked before use ([`CopyMsg::decode`]; fuzz target `levels_copy_msg`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyMsg {
    /// The sender's checkpoint `local` of rank `subject`'s L1 repository has these chunks.
    Offer {
        /// whose part
        subject: u32,
        /// its id in the subject's L1 repository
        local: u64,
        /// every chunk it names
        chunks: Vec<[u8; 32]>,
    },
    /// The receiver lacks these chunks.
    Want {
        /// the digests to send
        missing: Vec<[u8; 32]>,
    },
    /// The checkpoint's files: its manifests and COMMIT, and chunks (a streamed copy
    /// sends its chunks in `Chunks` messages and leaves these empty; an L3 blob holds
    /// them here).
    Data {
        /// whose part
        subject: u32,
        /// its id
        local: u64,
        /// chunk files (digest, stored bytes)
        #[serde(with = "crate::bulk::keyed")]
        chunks: Vec<([u8; 32], Vec<u8>)>,
        /// `COMMIT` and `rank-<r>.manifest` files (name, bytes)
        #[serde(with = "crate::bulk::keyed")]
        files: Vec<(String, Vec<u8>)>,
    },
    /// The other side failed; its message.
    Failed(String),
    /// Some of the chunks asked for, ahead of the `Data` that ends a streamed copy
    /// (`send_stream`). Last variant: the others keep their wire index (an L3 blob is
    /// a `Data` message's bytes, on disk).
    Chunks {
        /// whose part
        subject: u32,
        /// its id
        local: u64,
        /// chunk files (digest, stored bytes)
        #[serde(with = "crate::bulk::keyed")]
        chunks: Vec<([u8; 32], Vec<u8>)>,
    },
}

impl CopyMsg {
    /// Encodes for the wire (postcard).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing owned vectors and strings into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// What the message is, for errors ("expected data, got an offer").
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            CopyMsg::Offer { .. } => "an offer",
            CopyMsg::Want { .. } => "a want list",
            CopyMsg::Data { .. } => "data",
            CopyMsg::Failed(_) => "a failure",
            CopyMsg::Chunks { .. } => "chunks",
        }
    }

    /// Decodes a message of `from`; refuses trailing bytes and file names the copy never
    /// writes.
    pub fn decode(from: Rank, bytes: &[u8]) -> Result<CopyMsg, LevelError> {
        let bad = |detail: String| LevelError::Protocol { rank: from, detail };
        let (msg, rest): (CopyMsg, _) =
            postcard::take_from_bytes(bytes).map_err(|e| bad(format!("copy message: {e}")))?;
        if !rest.is_empty() {
            return Err(bad(format!(
                "{} trailing bytes after a copy message",
                rest.len()
            )));
        }
        match &msg {
            CopyMsg::Data { local, files, .. } => {
                checked_id(*local)
                    .ok_or_else(|| bad(format!("checkpoint id {local} out of range")))?;
                for (name, _) in files {
                    file_key(CheckpointId(*local), name)
                        .ok_or_else(|| bad(format!("file name {name:?}")))?;
                }
            }
            // An offer's number too: the partner acts on it before any chunk arrives
            // (found in review: `Offer { local: 0 }` made it drop every checkpoint of
            // the mirror, for a round refused a moment later).
            CopyMsg::Chunks { local, .. } | CopyMsg::Offer { local, .. } => {
                checked_id(*local)
                    .ok_or_else(|| bad(format!("checkpoint id {local} out of range")))?;
            }
            _ => {}
        }
        Ok(msg)
    }
}

fn checked_id(local: u64) -> Option<CheckpointId> {
    CheckpointId::new(local).filter(|id| id.0 > 0)
}

/// The key of a checkpoint file the copy moves: `COMMIT` or `rank-<r>.manifest`.
fn file_key(id: CheckpointId, name: &str) -> Option<ObjectKey> {
    if name == "COMMIT" {
        return Some(ObjectKey::Commit(id));
    }
    let r = name.strip_prefix("rank-")?.strip_suffix(".manifest")?;
    if r.is_empty() || !r.bytes().all(|b| b.is_ascii_digit()) || (r.len() > 1 && r.starts_with('0'))
    {
        return None;
    }
    Some(ObjectKey::Manifest(id, Rank(r.parse().ok()?)))
}

/// The partner of every rank: the rank with the same index on the next host (hosts in
/// order of first appearance, ranks on a host in rank order; the index wraps when the next
/// host has fewer ranks). `None` for every rank when all ranks share one host: a copy on
/// the same host survives nothing L1 does not.
pub fn partner_map(hosts: &[String]) -> Vec<Option<u32>> {
    let mut order: Vec<&str> = Vec::new();
    for h in hosts {
        if !order.contains(&h.as_str()) {
            order.push(h);
        }
    }
    if order.len() < 2 {
        return vec![None; hosts.len()];
    }
    let on = |h: &str| -> Vec<u32> {
        (0..hosts.len() as u32)
            .filter(|r| hosts[*r as usize] == h)
            .collect()
    };
    (0..hosts.len())
        .map(|r| {
            let hi = order.iter().position(|h| *h == hosts[r])?;
            let mine = on(order[hi]);
            let idx = mine.iter().position(|x| *x as usize == r)?;
            let next = on(order[(hi + 1) % order.len()]);
            Some(next[idx % next.len()])
        })
        .collect()
}

/// A checkpoint's files other than chunks: (name, bytes), COMMIT last.
pub(crate) type Files = Vec<(String, Vec<u8>)>;

/// The chunk digests of checkpoint `id` and its files (`COMMIT`, manifest files).
pub(crate) fn checkpoint_files(
    reader: &RepoReader,
    id: CheckpointId,
) -> Result<(Vec<ChunkDigest>, Files), StoreError> {
    let mut chunks = BTreeSet::new();
    for m in reader.manifests(id)? {
        for o in &m.objects {
            chunks.extend(o.chunks.iter().map(|c| c.digest));
        }
    }
    let backend = reader.backend();
    let mut files = Vec::new();
    for e in backend.list(&DirKey::Checkpoint(id))? {
        if e.is_dir {
            continue;
        }
        if let Some(key) = file_key(id, &e.name) {
            files.push((e.name.clone(), backend.read(&key)?));
        }
    }
    // COMMIT last: the receiver writes in this order.
    files.sort_by_key(|(n, _)| n == "COMMIT");
    Ok((chunks.into_iter().collect(), files))
}

/// Which of `chunks` `backend` lacks.
pub(crate) fn missing(
    backend: &dyn ReadBackend,
    chunks: &[[u8; 32]],
) -> Result<Vec<[u8; 32]>, StoreError> {
    let mut out = Vec::new();
    for d in chunks {
        if backend.stat(&ObjectKey::Chunk(ChunkDigest(*d)))?.is_none() {
            out.push(*d);
        }
    }
    Ok(out)
}

/// The `Data` message of checkpoint `id` for a receiver lacking `want`.
pub(crate) fn data_msg(
    reader: &RepoReader,
    subject: u32,
    id: CheckpointId,
    want: &[[u8; 32]],
) -> Result<CopyMsg, StoreError> {
    let (_, files) = checkpoint_files(reader, id)?;
    let mut chunks = Vec::with_capacity(want.len());
    for d in want {
        chunks.push((
            *d,
            reader.backend().read(&ObjectKey::Chunk(ChunkDigest(*d)))?,
        ));
    }
    Ok(CopyMsg::Data {
        subject,
        local: id.0,
        chunks,
        files,
    })
}

/// The first byte of an encoded `Chunks` message (postcard's variant index): a receiver
/// tells a damaged one from a stream's end by it.
pub(crate) const CHUNKS_VARIANT: u8 = 4;

/// The most stored chunk bytes of one `Chunks` message of a streamed copy (a chunk larger
/// than this goes alone). Why a stream: one message of a whole part was built, sent,
/// reassembled and decoded whole, each copy of the part into memory never touched
/// before, which is the slow kind of memory copy (docs/PERFORMANCE.md, "The physical
/// limit of the 5× target"); batches of this size are built in pooled buffers and go back
/// to the pool once acknowledged (sender) or written (receiver), so a stream reuses a
/// few buffers' pages. (Unit tests: 16 KiB, so their small states stream in several
/// messages.)
pub(crate) const STREAM_BATCH_BYTES: usize = if cfg!(test) { 16 << 10 } else { 8 << 20 };

/// Chunks opened for one `Chunks` message: (digest, its file).
type Batch = Vec<([u8; 32], ObjectReader)>;

/// The most chunks of one `Chunks` message: a batch holds its chunk files open until it
/// is sent, so small chunks must not open thousands at once. (Unit tests: 3, so both
/// limits cut their streams.)
const STREAM_BATCH_CHUNKS: usize = if cfg!(test) { 3 } else { 256 };

/// A checkpoint about to be streamed: where it is read, and its listing
/// ([`checkpoint_files`]), read once for the offer and the stream.
pub(crate) struct Outgoing {
    reader: RepoReader,
    id: CheckpointId,
    chunks: Vec<ChunkDigest>,
    files: Files,
    /// Names the level `reader` is, in read errors.
    level: fn(StoreError) -> LevelError,
}

impl Outgoing {
    /// Lists checkpoint `id` of `reader`, a repository of the level `level` names.
    pub(crate) fn open(
        reader: RepoReader,
        id: CheckpointId,
        level: fn(StoreError) -> LevelError,
    ) -> Result<Self, LevelError> {
        let (chunks, files) = checkpoint_files(&reader, id).map_err(level)?;
        Ok(Outgoing {
            reader,
            id,
            chunks,
            files,
            level,
        })
    }

    /// Every chunk it names, each once.
    pub(crate) fn digests(&self) -> Vec<[u8; 32]> {
        self.chunks.iter().map(|d| d.0).collect()
    }
}

/// Sends checkpoint `out` (rank `subject`'s part) to `to` on `tag` for a receiver lacking
/// `want`, as a stream: `Chunks` messages of at most [`STREAM_BATCH_BYTES`], then `Data`
/// with the checkpoint's files. Every stream ends with `Data` or `Failed`, whatever
/// fails: a read error after the first message sends `Failed` and is returned. `want`
/// `None` sends every chunk of the checkpoint. Returns the chunk bytes sent.
pub(crate) fn send_stream(
    comm: &Comm,
    to: u32,
    tag: u32,
    out: Outgoing,
    subject: u32,
    want: Option<&[[u8; 32]]>,
) -> Result<u64, LevelError> {
    let mut sent = 0u64;
    let all = out.digests();
    let Outgoing {
        reader,
        id,
        files,
        level,
        ..
    } = out;
    let streamed = (|| -> Result<CopyMsg, LevelError> {
        let want = want.unwrap_or(&all);
        // Only chunks of this checkpoint, each once, whatever the receiver asked for.
        let mut offered: BTreeSet<[u8; 32]> = all.iter().copied().collect();
        let mut batch: Batch = Vec::new();
        let mut batch_bytes = 0u64;
        let flush = |batch: &mut Batch| -> Result<(), LevelError> {
            let msg = chunks_message(&reader, subject, id, std::mem::take(batch)).map_err(level)?;
            comm.send_bytes(Rank(to), Tag::checkpoint(tag), msg)?;
            Ok(())
        };
        for d in want.iter().filter(|d| offered.remove(*d)) {
            let r = reader
                .backend()
                .open(&ObjectKey::Chunk(ChunkDigest(*d)))
                .map_err(level)?;
            if !batch.is_empty()
                && (batch_bytes + r.len > STREAM_BATCH_BYTES as u64
                    || batch.len() >= STREAM_BATCH_CHUNKS)
            {
                flush(&mut batch)?;
                sent += batch_bytes;
                batch_bytes = 0;
            }
            batch_bytes += r.len;
            batch.push((*d, r));
        }
        if !batch.is_empty() {
            flush(&mut batch)?;
            sent += batch_bytes;
        }
        Ok(CopyMsg::Data {
            subject,
            local: id.0,
            chunks: Vec::new(),
            files,
        })
    })();
    match streamed {
        Ok(last) => send(comm, to, tag, &last).map(|()| sent),
        Err(e) => {
            // A send error: the receiver sees the connection fail; anything else ends
            // the stream here.
            if !matches!(e, LevelError::Net(_)) {
                let _ = send(comm, to, tag, &CopyMsg::Failed(e.to_string()));
            }
            Err(e)
        }
    }
}

/// Encodes `CopyMsg::Chunks { subject, local: id, chunks }` for the chunks of `batch`
/// (byte for byte what [`CopyMsg::encode`] writes; postcard writes the framing) into a
/// pooled buffer, each chunk read from its file straight into the message: one copy of
/// the bytes, and no fresh pages once the pool holds a buffer of this size.
fn chunks_message(
    reader: &RepoReader,
    subject: u32,
    id: CheckpointId,
    batch: Batch,
) -> Result<Vec<u8>, StoreError> {
    let bytes: u64 = batch.iter().map(|(_, r)| r.len).sum();
    // Room for the framing too: each varint is at most 10 bytes. At least a full batch's
    // worth, so that every buffer parked in the pool fits the next batch (reserved pages
    // are not touched, so a small batch does not pay for the rest).
    let capacity = usize::try_from(bytes)
        .ok()
        .and_then(|b| b.checked_add(32 + batch.len() * (32 + 10)))
        .map(|c| c.max(STREAM_BATCH_BYTES + 32 + STREAM_BATCH_CHUNKS * (32 + 10)))
        .ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                None,
                format!("checkpoint {id}: {bytes} chunk bytes do not fit in memory"),
            )
        })?;
    // Encoding into a Vec cannot fail (postcard fails only when a fixed buffer is full).
    let framing = |e: postcard::Error| {
        StoreError::new(StoreErrorKind::Corrupt, None, format!("copy message: {e}"))
    };
    let mut buf = lazarus_net::payload_buffer(capacity);
    buf = postcard::to_extend(
        &(u32::from(CHUNKS_VARIANT), subject, id.0, batch.len()),
        buf,
    )
    .map_err(framing)?;
    for (d, r) in batch {
        buf = postcard::to_extend(&(d, r.len), buf).map_err(framing)?;
        let key = ObjectKey::Chunk(ChunkDigest(d));
        let start = buf.len();
        r.reader
            .take(r.len)
            .read_to_end(&mut buf)
            .map_err(|e| StoreError::io(&reader.backend().describe(&key), "read chunk", e))?;
        let got = (buf.len() - start) as u64;
        if got != r.len {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                Some(&reader.backend().describe(&key)),
                format!(
                    "chunk {} ended after {got} of its {} bytes while it was read",
                    ChunkDigest(d),
                    r.len
                ),
            ));
        }
    }
    Ok(buf)
}

/// A `Chunks` message decoded in place: its chunks are ranges of the received payload,
/// which goes back to the communicator's pool once they are written
/// ([`ChunksMsg::recycle`]). Accepts exactly the bytes [`CopyMsg::decode`] accepts as
/// `Chunks` (property test and the `levels_copy_msg` fuzz target check they agree).
pub(crate) struct ChunksMsg {
    /// whose part
    pub(crate) subject: u32,
    /// its id
    pub(crate) local: u64,
    payload: Vec<u8>,
    chunks: Vec<([u8; 32], Range<usize>)>,
}

impl ChunksMsg {
    /// Decodes `payload` (from `from`), which must be an encoded `Chunks` message
    /// ([`CHUNKS_VARIANT`] first); on error the payload is handed back with it.
    pub(crate) fn decode(from: Rank, payload: Vec<u8>) -> Result<Self, (LevelError, Vec<u8>)> {
        let bad = |detail: String| LevelError::Protocol { rank: from, detail };
        let base = payload.as_ptr() as usize;
        type Borrowed<'a> = (u32, u32, u64, Vec<([u8; 32], &'a [u8])>);
        let decoded = match postcard::take_from_bytes::<Borrowed<'_>>(&payload) {
            Err(e) => Err(bad(format!("copy message: {e}"))),
            Ok((_, rest)) if !rest.is_empty() => Err(bad(format!(
                "{} trailing bytes after a copy message",
                rest.len()
            ))),
            Ok(((variant, ..), _)) if variant != u32::from(CHUNKS_VARIANT) => Err(bad(format!(
                "copy message: variant {variant} is not chunks"
            ))),
            Ok(((_, _, local, _), _)) if checked_id(local).is_none() => {
                Err(bad(format!("checkpoint id {local} out of range")))
            }
            Ok(((_, subject, local, chunks), _)) => chunks
                .into_iter()
                .map(|(d, b)| {
                    // Postcard lends slices of its input; checked all the same, so
                    // `chunks` can index without a fallback.
                    let start = (b.as_ptr() as usize).checked_sub(base)?;
                    let end = start.checked_add(b.len())?;
                    (end <= payload.len()).then_some((d, start..end))
                })
                .collect::<Option<Vec<_>>>()
                .map(|chunks| (subject, local, chunks))
                .ok_or_else(|| bad("copy message: a chunk outside the message".into())),
        };
        match decoded {
            Ok((subject, local, chunks)) => Ok(ChunksMsg {
                subject,
                local,
                payload,
                chunks,
            }),
            Err(e) => Err((e, payload)),
        }
    }

    /// The chunks: (digest, stored bytes).
    pub(crate) fn chunks(&self) -> impl Iterator<Item = (&[u8; 32], &[u8])> {
        // In range: checked by `decode`.
        self.chunks
            .iter()
            .map(|(d, r)| (d, &self.payload[r.clone()]))
    }

    /// Hands the payload back to the communicator's buffer pool.
    pub(crate) fn recycle(self) {
        lazarus_net::recycle_payload(self.payload);
    }
}

/// Fuzz entry of the copy protocol's decoders (`fuzz/fuzz_targets/levels_copy_msg.rs`,
/// and the property tests): `data` decodes or is refused, never panics; what
/// [`CopyMsg::decode`] accepts re-encodes to itself; and a `Chunks` message is accepted
/// by the in-place decoder the exchange uses exactly when `CopyMsg::decode` accepts it,
/// with the same fields and bytes.
#[doc(hidden)]
pub fn fuzz_copy_msg(data: &[u8]) {
    let owned = CopyMsg::decode(Rank(1), data);
    if let Ok(m) = &owned {
        let again = CopyMsg::decode(Rank(1), &m.encode());
        assert_eq!(
            again.as_ref().ok(),
            Some(m),
            "a decoded message re-encodes to itself"
        );
    }
    if data.first() != Some(&CHUNKS_VARIANT) {
        return;
    }
    match (owned, ChunksMsg::decode(Rank(1), data.to_vec())) {
        (
            Ok(CopyMsg::Chunks {
                subject,
                local,
                chunks,
            }),
            Ok(c),
        ) => {
            assert_eq!((c.subject, c.local), (subject, local));
            let in_place: Vec<([u8; 32], Vec<u8>)> =
                c.chunks().map(|(d, b)| (*d, b.to_vec())).collect();
            assert_eq!(in_place, chunks, "the two decoders read the same chunks");
        }
        (Err(_), Err(_)) => {}
        (owned, in_place) => panic!(
            "the decoders disagree: CopyMsg::decode {:?}, ChunksMsg::decode {:?}",
            owned.map(|m| m.kind()),
            in_place
                .map(|c| c.chunks.len())
                .map_err(|(e, _)| e.to_string())
        ),
    }
}

/// Checks a copied chunk of checkpoint `id` against its digest `d` (decoded, then
/// hashed); the error is `Corrupt` and names the chunk where `target` would store it.
pub(crate) fn verify_chunk(
    target: &dyn WriteBackend,
    id: CheckpointId,
    d: &[u8; 32],
    bytes: &[u8],
) -> Result<(), StoreError> {
    let digest = ChunkDigest(*d);
    lazarus_format::decode_chunk(bytes, &digest).map_err(|e| {
        StoreError::new(
            StoreErrorKind::Corrupt,
            Some(&target.describe(&ObjectKey::Chunk(digest))),
            format!("checkpoint {id}: the copy's chunk {digest} is damaged ({e})"),
        )
    })?;
    Ok(())
}

/// Writes copied chunks into `target` (each durable on return); a chunk already there is
/// overwritten with the same content.
pub(crate) fn put_chunks<'a>(
    target: &dyn WriteBackend,
    chunks: impl IntoIterator<Item = (&'a [u8; 32], &'a [u8])>,
) -> Result<(), StoreError> {
    for (d, bytes) in chunks {
        target.put(
            &ObjectKey::Chunk(ChunkDigest(*d)),
            &[bytes],
            PutMode::Overwrite,
        )?;
    }
    Ok(())
}

/// What installing a copied checkpoint found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Installed {
    /// Written (or already there, byte for byte).
    Done,
    /// The target holds another checkpoint under this id: its history diverged from the
    /// source's (e.g. the source repository was lost and started again).
    Diverged,
}

/// Writes a copied checkpoint into `target`: chunks and manifests (durable on return),
/// then COMMIT (exclusive create), then the cheap check of the result.
///
/// With `verify`, every chunk is checked against its digest before anything is written
/// (a mismatch is `Corrupt`, naming the chunk): a rebuild at restore writes every chunk
/// of the checkpoint over the rank's own L1, whose other checkpoints may share them, and
/// an unchecked damaged copy would overwrite the intact chunk they rely on (found in
/// review). An L2 round writes only the chunks the mirror lacks, so it overwrites
/// nothing and passes `false`.
pub(crate) fn install(
    target: &dyn WriteBackend,
    reader: &RepoReader,
    local: u64,
    chunks: &[([u8; 32], Vec<u8>)],
    files: &[(String, Vec<u8>)],
    verify: bool,
) -> Result<Installed, StoreError> {
    let id = CheckpointId(local);
    let commit = files.iter().find(|(n, _)| n == "COMMIT").ok_or_else(|| {
        StoreError::new(
            StoreErrorKind::Corrupt,
            Some(&target.describe(&ObjectKey::Commit(id))),
            "copied checkpoint without COMMIT",
        )
    })?;
    if let Some(existing) = target.stat(&ObjectKey::Commit(id))? {
        let _ = existing;
        let same = target.read(&ObjectKey::Commit(id))? == commit.1;
        return Ok(if same {
            Installed::Done
        } else {
            Installed::Diverged
        });
    }
    if verify {
        for (d, bytes) in chunks {
            verify_chunk(target, id, d, bytes).map_err(|e| {
                StoreError::new(
                    e.kind(),
                    e.path(),
                    format!("{}; nothing written", e.message()),
                )
            })?;
        }
    }
    target.create_dir(&DirKey::Checkpoint(id))?;
    put_chunks(target, chunks.iter().map(|(d, b)| (d, b.as_slice())))?;
    for (name, bytes) in files {
        if name == "COMMIT" {
            continue;
        }
        if let Some(key) = file_key(id, name) {
            target.put(&key, &[bytes], PutMode::Overwrite)?;
        }
    }
    // Complete or absent: every chunk the manifests name must be there before COMMIT (a
    // sender may have left some out).
    reader.check_commit_to_write(id, &commit.1)?;
    target.put(&ObjectKey::Commit(id), &[&commit.1], PutMode::Create)?;
    Ok(Installed::Done)
}

/// Sends `msg` to `to` on `tag`.
pub(crate) fn send(comm: &Comm, to: u32, tag: u32, msg: &CopyMsg) -> Result<(), LevelError> {
    comm.send_bytes(Rank(to), Tag::checkpoint(tag), msg.encode())?;
    Ok(())
}

/// Receives the next message from `from` on `tag` (tests; the exchange and the rebuild
/// read streams with the in-place decoder).
#[cfg(test)]
pub(crate) fn recv(comm: &Comm, from: u32, tag: u32) -> Result<CopyMsg, LevelError> {
    let env = comm.recv_envelope(Some(Rank(from)), Some(Tag::checkpoint(tag)))?;
    CopyMsg::decode(Rank(from), &env.payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn partners_are_on_another_host() {
        assert_eq!(
            partner_map(&hs(&["a", "a", "b", "b"])),
            vec![Some(2), Some(3), Some(0), Some(1)]
        );
        assert_eq!(
            partner_map(&hs(&["a", "b", "c"])),
            vec![Some(1), Some(2), Some(0)]
        );
        assert_eq!(partner_map(&hs(&["a", "a"])), vec![None, None]);
    }

    #[test]
    fn only_format_file_names_are_accepted() {
        let id = CheckpointId(3);
        assert_eq!(file_key(id, "COMMIT"), Some(ObjectKey::Commit(id)));
        assert_eq!(
            file_key(id, "rank-12.manifest"),
            Some(ObjectKey::Manifest(id, Rank(12)))
        );
        for bad in [
            "../COMMIT",
            "rank-.manifest",
            "rank-01.manifest",
            "rank-1/x.manifest",
            "FORMAT",
            "LOCK",
        ] {
            assert_eq!(file_key(id, bad), None, "{bad}");
        }
    }

    /// A one-rank repository at `p` whose checkpoints 1, 2, ... hold `datas`.
    fn repo_with(p: &std::path::Path, datas: &[&[u8]]) -> lazarus_store::Repository {
        use lazarus_format::{ObjectInfo, ObjectKind, ObjectSpec};
        let mut repo =
            lazarus_store::Repository::open(p, lazarus_store::RepoOptions::default()).unwrap();
        for (i, data) in datas.iter().enumerate() {
            let pending = repo.begin(1).unwrap();
            let spec = ObjectSpec::new(
                ObjectInfo {
                    name: "data".into(),
                    type_name: "Vec<u8>".into(),
                    kind: ObjectKind::Serde,
                    sharing: None,
                    layout: None,
                },
                *data,
            );
            let rc = pending.part_writer().write(Rank(0), &[spec]).unwrap();
            let meta = lazarus_store::CommitMeta {
                step: i as u64 + 1,
                app: Default::default(),
            };
            repo.commit(pending, vec![rc], meta).unwrap();
        }
        repo
    }

    /// Regression (review of the level codecs): a rebuild at restore wrote every chunk
    /// it was sent over the rank's own L1 unchecked, so a damaged chunk in the copy it
    /// came from replaced the intact chunk an older checkpoint of that L1 shares, and the
    /// fallback to that checkpoint then failed as well. The damaged copy is refused as
    /// damage (restore falls back) and the L1 keeps its intact chunk.
    #[test]
    fn a_rebuild_from_a_damaged_copy_never_overwrites_an_intact_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        // The copy holds the shared data as its checkpoint 2; this rank's L1 only 1.
        let source = repo_with(&dir.path().join("copy"), &[b"older", &data]);
        let own = repo_with(&dir.path().join("own"), &[&data]);
        let src = source.reader().unwrap();
        let (digests, files) = checkpoint_files(&src, CheckpointId(2)).unwrap();
        let mut chunks: Vec<([u8; 32], Vec<u8>)> = digests
            .iter()
            .map(|d| (d.0, src.backend().read(&ObjectKey::Chunk(*d)).unwrap()))
            .collect();
        let last = chunks[0].1.len() - 1;
        chunks[0].1[last] ^= 0x5a;
        let reader = own.reader().unwrap();
        let r = install(own.backend().as_ref(), &reader, 2, &chunks, &files, true);
        let back = own.reader().unwrap().load_part(CheckpointId(1), Rank(0));
        assert_eq!(
            back.map(|o| o[0].data == data).map_err(|e| e.to_string()),
            Ok(true),
            "checkpoint 1 of the L1 keeps its intact chunk"
        );
        let e = r.expect_err("a damaged copy is refused");
        assert_eq!(e.kind(), StoreErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains(&digests[0].to_string()), "{e}");
    }

    /// Regression (review of the streamed rebuild): a copy whose sender left a chunk out
    /// was committed before the check found it missing, leaving a committed, incomplete
    /// checkpoint behind. The check now runs before COMMIT: the copy is refused naming
    /// the chunk, and nothing is committed.
    #[test]
    fn a_copy_missing_a_chunk_is_refused_before_it_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u64).map(|i| (i * 7919 % 251) as u8).collect();
        let source = repo_with(&dir.path().join("copy"), &[&data]);
        let own = repo_with(&dir.path().join("own"), &[]);
        let src = source.reader().unwrap();
        let (_, files) = checkpoint_files(&src, CheckpointId(1)).unwrap();
        let (_, mut chunks) = batch_of(&src, CheckpointId(1));
        assert!(chunks.len() > 1, "several chunks");
        let (left_out, _) = chunks.remove(1);
        let reader = own.reader().unwrap();
        let r = install(own.backend().as_ref(), &reader, 1, &chunks, &files, true);
        let e = r.expect_err("an incomplete copy is refused");
        assert_eq!(e.kind(), StoreErrorKind::Missing, "{e}");
        assert!(
            e.to_string().contains(&ChunkDigest(left_out).to_string()),
            "{e}"
        );
        let commit = own
            .backend()
            .stat(&ObjectKey::Commit(CheckpointId(1)))
            .unwrap();
        assert!(commit.is_none(), "an incomplete copy was committed");
    }

    /// (digest, stored bytes) of chunks.
    type ChunkBytes = Vec<([u8; 32], Vec<u8>)>;

    /// `chunks` of `src`'s checkpoint `id` opened as a batch, and the same read whole.
    fn batch_of(src: &RepoReader, id: CheckpointId) -> (Batch, ChunkBytes) {
        let (digests, _) = checkpoint_files(src, id).unwrap();
        let open = digests
            .iter()
            .map(|d| (d.0, src.backend().open(&ObjectKey::Chunk(*d)).unwrap()))
            .collect();
        let read = digests
            .iter()
            .map(|d| (d.0, src.backend().read(&ObjectKey::Chunk(*d)).unwrap()))
            .collect();
        (open, read)
    }

    /// A chunk file that shrinks between the batch's open and its read is an error naming
    /// the chunk, never a message with a short chunk in it.
    #[test]
    fn a_chunk_file_cut_short_while_it_is_streamed_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let repo = repo_with(&dir.path().join("r"), &[&data]);
        let src = repo.reader().unwrap();
        let (batch, _) = batch_of(&src, CheckpointId(1));
        let (d, len) = (batch[0].0, batch[0].1.len);
        let path = src.backend().describe(&ObjectKey::Chunk(ChunkDigest(d)));
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len / 2).unwrap();
        let e = chunks_message(&src, 0, CheckpointId(1), batch).expect_err("short chunk");
        assert_eq!(e.kind(), StoreErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains(&ChunkDigest(d).to_string()), "{e}");
    }

    proptest! {
        // Each case writes a repository (fsync): a few dozen cases, not 256.
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The stream's messages, built straight from the chunk files into a pooled buffer,
        /// are byte for byte the `Chunks` messages `CopyMsg::encode` writes, and the
        /// in-place decoder reads them back.
        #[test]
        fn chunks_messages_built_from_files_are_the_encoded_messages(
            subject in any::<u32>(),
            datas in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..4),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let refs: Vec<&[u8]> = datas.iter().map(|d| d.as_slice()).collect();
            let repo = repo_with(&dir.path().join("r"), &refs);
            let src = repo.reader().unwrap();
            let id = CheckpointId(datas.len() as u64);
            let (batch, chunks) = batch_of(&src, id);
            let built = chunks_message(&src, subject, id, batch).unwrap();
            let m = CopyMsg::Chunks { subject, local: id.0, chunks };
            prop_assert_eq!(&built, &m.encode());
            fuzz_copy_msg(&built);
        }
    }

    proptest! {
        /// Hostile bytes, and hostile edits of a genuine `Chunks` message: both decoders
        /// agree, neither panics.
        #[test]
        fn the_in_place_decoder_agrees_with_the_owned_one(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            chunks in proptest::collection::vec((any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..4),
            local in 0u64..4,
            cut in any::<proptest::sample::Index>(),
            flip in any::<proptest::sample::Index>(),
        ) {
            let mut hostile = bytes.clone();
            hostile.insert(0, CHUNKS_VARIANT);
            fuzz_copy_msg(&bytes);
            fuzz_copy_msg(&hostile);
            let genuine = CopyMsg::Chunks { subject: 3, local, chunks }.encode();
            fuzz_copy_msg(&genuine);
            fuzz_copy_msg(&genuine[..cut.index(genuine.len())]);
            let mut flipped = genuine.clone();
            let i = flip.index(flipped.len());
            flipped[i] ^= 0x80;
            fuzz_copy_msg(&flipped);
            let mut longer = genuine;
            longer.push(0);
            fuzz_copy_msg(&longer);
        }

        #[test]
        fn partner_is_on_another_host_whenever_there_are_two(hosts in proptest::collection::vec(0u8..4, 1..12)) {
            let names: Vec<String> = hosts.iter().map(|h| format!("h{h}")).collect();
            let map = partner_map(&names);
            let distinct = names.iter().collect::<BTreeSet<_>>().len();
            for (r, p) in map.iter().enumerate() {
                match p {
                    Some(p) => prop_assert_ne!(&names[*p as usize], &names[r]),
                    None => prop_assert_eq!(distinct, 1),
                }
            }
        }

        #[test]
        fn chunks_messages_start_with_their_variant_index(subject in any::<u32>(), local in 1u64..1000) {
            let m = CopyMsg::Chunks { subject, local, chunks: vec![([1; 32], vec![2])] };
            prop_assert_eq!(m.encode().first().copied(), Some(CHUNKS_VARIANT));
        }

        #[test]
        fn copy_messages_round_trip(subject in any::<u32>(), local in 1u64..1000, chunks in proptest::collection::vec((any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..4)) {
            let m = CopyMsg::Data { subject, local, chunks, files: vec![("COMMIT".into(), vec![1, 2]), ("rank-0.manifest".into(), vec![3])] };
            prop_assert_eq!(CopyMsg::decode(Rank(1), &m.encode()).unwrap(), m);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = CopyMsg::decode(Rank(0), &bytes);
        }
    }
}
