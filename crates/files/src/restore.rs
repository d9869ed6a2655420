//! Putting the working tree back to a checkpoint's state, in two phases that match the
//! Job's agreed restore: [`Files::prepare_restore`] checks the tree against the local base
//! and journal (refusing files changed by someone else), works out the difference to the
//! target checkpoint and reads the changed chunks from the repository (verified) into a
//! staging file — so damage is found before any rank changes anything — and
//! [`Files::apply_restore`], once every rank agreed, rewrites the tree.
//!
//! Cost: verification reads the files the base recorded (their unchanged chunks are
//! hashed and compared); the repository is read only for chunks that differ between the
//! tree and the target, so going back to the newest checkpoint costs what changed since,
//! and going back further costs what changed since that older checkpoint.

use crate::bits::Bits;
use crate::error::{FilesError, FilesErrorKind};
use crate::fs::{FileState, Files, Inner, Node};
use crate::journal::{self, read_journal, Entry, Journal, LocalState, Rec};
use crate::publish;
use crate::store_io::{self, TargetTree};
use lazarus_format::{CheckpointId, ChunkDigest, Rank};
use lazarus_store::{RepoReader, StoreError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Why a restore of the managed files could not be prepared.
#[derive(Debug)]
pub enum RestoreError {
    /// Reading the checkpoint failed; the caller tells damage (fall back to an older
    /// checkpoint) from other errors by the store error's kind.
    Store(StoreError),
    /// The managed files refuse (changed outside the job, another world size) or local
    /// I/O failed.
    Files(FilesError),
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::Store(e) => write!(f, "{e}"),
            RestoreError::Files(e) => write!(f, "{e}"),
        }
    }
}

impl From<FilesError> for RestoreError {
    fn from(e: FilesError) -> Self {
        RestoreError::Files(e)
    }
}

/// The checkpoint to restore: which repository and checkpoint, the number of ranks that
/// wrote it and the number restoring it.
pub struct RestoreTarget<'a> {
    /// The repository.
    pub reader: &'a RepoReader,
    /// The checkpoint.
    pub id: CheckpointId,
    /// Ranks that wrote it.
    pub world: u32,
    /// Ranks of this job.
    pub size: u32,
}

/// A prepared restore: what to move, delete and rewrite (changed chunks are staged).
#[derive(Debug)]
pub struct RestorePlan {
    /// The journal on disk is valid for the local base (append `Restoring` to it).
    journal_valid: bool,
    old_base: Option<u64>,
    state: LocalState,
    moves: Vec<(String, String)>,
    deletes: Vec<String>,
    del_dirs: Vec<String>,
    fetches: Vec<Fetch>,
    /// Bytes read from the repository.
    fetched: u64,
}

impl RestorePlan {
    /// Bytes of file content read from the repository for this restore.
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched
    }
}

#[derive(Debug)]
struct Fetch {
    path: String,
    offset: u64,
    len: u64,
    at: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disk {
    Dir,
    File(u64),
    Other,
}

#[derive(Default)]
struct Known {
    origin: Option<String>,
    dirty: Bits,
    resized: bool,
}

/// Every path under `root`, with its kind. Refuses (before anything is changed) a rank
/// area that is a symbolic link, whose contents are not the job's to remove or rewrite
/// (regression: `a_symlinked_rank_area_is_refused_even_when_accepting_changes`), and a
/// name that is not UTF-8, which no managed path can have and which a lossy name could
/// not remove (regression: `a_name_that_is_not_utf8_is_refused_before_anything_changes`).
fn scan(root: &Path) -> Result<BTreeMap<String, Disk>, FilesError> {
    if fs::symlink_metadata(root).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(FilesError::new(
            FilesErrorKind::InvalidPath,
            Some(root),
            "the rank's managed area is a symbolic link; refusing to restore through it (make it a directory)",
        ));
    }
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && prefix.is_empty() => continue,
            Err(e) => return Err(FilesError::io(&dir, "listing the managed directory", &e)),
        };
        for ent in rd {
            let ent = ent.map_err(|e| FilesError::io(&dir, "listing the managed directory", &e))?;
            let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                return Err(FilesError::new(
                    FilesErrorKind::InvalidPath,
                    Some(&ent.path()),
                    "a name that is not UTF-8 is never a managed file's, so someone else made it; refusing to restore over it (remove or rename it)",
                ));
            };
            let key = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let ft = ent
                .file_type()
                .map_err(|e| FilesError::io(&ent.path(), "stat", &e))?;
            let kind = if ft.is_dir() {
                stack.push((ent.path(), key.clone()));
                Disk::Dir
            } else if ft.is_file() {
                let m = ent
                    .metadata()
                    .map_err(|e| FilesError::io(&ent.path(), "stat", &e))?;
                Disk::File(m.len())
            } else {
                Disk::Other
            };
            out.insert(key, kind);
        }
    }
    Ok(out)
}

/// Hashes byte ranges of working files, keeping the last file open (verification walks
/// a file's chunks in order).
#[derive(Default)]
struct Hasher {
    open: Option<(std::path::PathBuf, fs::File)>,
    buf: Vec<u8>,
}

impl Hasher {
    /// BLAKE3 of bytes `a..b` of the file at `p`.
    fn range(&mut self, p: &Path, a: u64, b: u64) -> Result<[u8; 32], FilesError> {
        if self.open.as_ref().is_none_or(|(q, _)| q != p) {
            let f = fs::File::open(p).map_err(|e| FilesError::io(p, "opening to verify", &e))?;
            self.open = Some((p.to_path_buf(), f));
        }
        let Some((_, f)) = &self.open else {
            return Err(FilesError::new(FilesErrorKind::Io, Some(p), "not open"));
        };
        self.buf.resize((b - a) as usize, 0);
        f.read_exact_at(&mut self.buf, a)
            .map_err(|e| FilesError::io(p, "reading to verify", &e))?;
        Ok(ChunkDigest::of(&self.buf).0)
    }
}

fn move_subtree(cur: &mut BTreeMap<String, Known>, from: &str, to: &str) {
    let keys: Vec<String> = cur
        .keys()
        .filter(|k| crate::path::is_under(k, from) || crate::path::is_under(k, to))
        .cloned()
        .collect();
    let mut moved = Vec::new();
    for k in keys {
        if let Some(v) = cur.remove(&k) {
            if crate::path::is_under(&k, from) {
                moved.push((crate::path::rebase(&k, from, to), v));
            }
        }
    }
    cur.extend(moved);
}

impl Files {
    /// Phase 1 of a restore to `target` (`None`: the empty tree of a fresh start): checks
    /// the tree, plans the changes and stages the chunks to rewrite. Changes nothing in
    /// the tree.
    pub fn prepare_restore(
        &self,
        target: Option<RestoreTarget<'_>>,
    ) -> Result<RestorePlan, RestoreError> {
        let g = self.lock();
        let layout = g.layout.clone();
        let staging = layout.staging();
        match fs::remove_dir_all(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(FilesError::io(&staging, "clearing restore staging", &e).into()),
        }
        fs::create_dir_all(&staging)
            .map_err(|e| FilesError::io(&staging, "creating restore staging", &e))?;

        // 1. What the job knows: the base and the journal since.
        let base = LocalState::load(&layout.state())?.unwrap_or_default();
        let recs = read_journal(&layout.journal())?;
        let (journal_valid, boot_changed) = match recs.first() {
            Some(Rec::Header { base: b, boot }) if *b == base.base => {
                (true, journal::rebooted_since(boot))
            }
            _ => (false, false),
        };
        let recs: &[Rec] = if journal_valid { &recs[1..] } else { &[] };

        // 2. What is on disk.
        let disk = scan(&layout.work)?;

        // 3. Replay the journal over the base.
        let mut cur: BTreeMap<String, Known> = base
            .entries
            .keys()
            .map(|p| {
                (
                    p.clone(),
                    Known {
                        origin: Some(p.clone()),
                        ..Known::default()
                    },
                )
            })
            .collect();
        let mut unknown_all = false;
        let mut named: BTreeSet<String> = BTreeSet::new();
        for r in recs {
            match r {
                Rec::Header { .. } => {}
                Rec::Touch(p) => {
                    named.insert(p.clone());
                }
                Rec::Dirty { path, from, to } => {
                    if let Some(k) = cur.get_mut(path) {
                        let cap = base_chunks(&base, k.origin.as_deref());
                        k.dirty.set_range((*from).min(cap), (*to).min(cap));
                    }
                }
                Rec::Resized(p) => {
                    if let Some(k) = cur.get_mut(p) {
                        k.resized = true;
                    }
                }
                Rec::Create { path, .. } => {
                    named.insert(path.clone());
                    cur.insert(path.clone(), Known::default());
                }
                Rec::Remove(p) => {
                    named.insert(p.clone());
                    cur.remove(p);
                }
                Rec::Rename { from, to } => {
                    named.insert(from.clone());
                    named.insert(to.clone());
                    move_subtree(&mut cur, from, to);
                }
                Rec::Restoring => unknown_all = true,
            }
        }
        if unknown_all {
            tracing::warn!(
                "{}: a restore was interrupted: every managed file is checked by content, changes outside the job cannot be told apart this time",
                layout.work.display()
            );
        }
        // A record is written before its change: the last one's namespace change may not
        // have happened (the process died in between), so its paths may be either way.
        let uncertain: Vec<String> = match recs.last() {
            Some(Rec::Create { path, .. }) | Some(Rec::Remove(path)) => vec![path.clone()],
            Some(Rec::Rename { from, to }) => vec![from.clone(), to.clone()],
            _ => Vec::new(),
        };
        // After a reboot, un-fsynced content records may be lost: differences inside
        // paths the journal names are the job's (docs/FILES.md, "Crash semantics").
        let relaxed = |p: &str| {
            uncertain.iter().any(|n| crate::path::is_under(p, n))
                || (boot_changed && named.iter().any(|n| crate::path::is_under(p, n)))
        };

        // 4. Verify: every difference must be explained by the journal.
        let c = base.chunk.max(1);
        let mut foreign: Vec<(String, String)> = Vec::new();
        let mut know: HashMap<String, HashMap<(u64, u64), [u8; 32]>> = HashMap::new();
        let mut hasher = Hasher::default();
        let base_name = base
            .base
            .map_or("the fresh start".to_string(), |b| format!("checkpoint {b}"));
        for (p, kind) in &disk {
            if unknown_all {
                continue;
            }
            let Some(k) = cur.get(p) else {
                if !relaxed(p) {
                    foreign.push((
                        p.clone(),
                        "appeared outside the job (not in the checkpoint, not created by the job)"
                            .into(),
                    ));
                }
                continue;
            };
            let Some(origin) = &k.origin else { continue };
            match (base.entries.get(origin), kind) {
                (Some(Entry::Dir), Disk::Dir) => {}
                (Some(Entry::File { len, digests }), Disk::File(z)) => {
                    if !k.resized && z != len && !relaxed(p) {
                        foreign.push((
                            p.clone(),
                            format!("is {z} bytes, {base_name} recorded {len}"),
                        ));
                        continue;
                    }
                    let w = layout.work_path(p);
                    let mut kn = HashMap::new();
                    for (i, d) in digests.iter().enumerate() {
                        let a = i as u64 * c;
                        let b = (a + c).min(*len);
                        if k.dirty.contains(i as u64) || b > *z {
                            continue;
                        }
                        let h = hasher.range(&w, a, b)?;
                        if h == *d {
                            kn.insert((a, b), h);
                        } else if !relaxed(p) {
                            foreign.push((p.clone(), format!("bytes {a}..{b} differ from {base_name} and the job did not write them")));
                            break;
                        }
                    }
                    know.insert(p.clone(), kn);
                }
                _ if relaxed(p) => {}
                _ => foreign.push((
                    p.clone(),
                    format!("changed kind (file/directory) since {base_name}"),
                )),
            }
        }
        if !unknown_all {
            for p in cur.keys() {
                if !disk.contains_key(p) && !relaxed(p) {
                    foreign.push((
                        p.clone(),
                        format!("is missing: removed outside the job since {base_name}"),
                    ));
                }
            }
        }
        if !foreign.is_empty() {
            if !g.accept {
                let (p, why) = &foreign[0];
                let more = if foreign.len() > 1 {
                    format!(
                        " (and {} more: {})",
                        foreign.len() - 1,
                        foreign[1..]
                            .iter()
                            .take(4)
                            .map(|(p, _)| p.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    String::new()
                };
                return Err(FilesError::new(
                    FilesErrorKind::ForeignChange,
                    Some(&layout.work_path(p)),
                    format!("managed file {why}{more}; refusing to restore over it (JobBuilder::accept_file_changes(true) puts it back to the checkpoint's content)"),
                )
                .into());
            }
            for (p, why) in &foreign {
                tracing::warn!(
                    "managed file {}: {why}; putting it back to the checkpoint's content",
                    layout.work_path(p).display()
                );
                know.remove(p);
            }
        }

        // 5. The target tree.
        let tt: Option<TargetTree> = match &target {
            None => None,
            Some(t) if t.world != t.size => {
                if store_io::has_files(t.reader, t.id, Rank(0)).map_err(RestoreError::Store)? {
                    return Err(FilesError::new(
                        FilesErrorKind::Incompatible,
                        Some(&layout.work),
                        format!(
                            "checkpoint {} was written by {} and holds managed files, which are per rank: it cannot be restored on {}; restart with {}",
                            t.id.0,
                            lazarus_format::count(t.world, "rank"),
                            lazarus_format::count(t.size, "rank"),
                            t.world
                        ),
                    )
                    .into());
                }
                None
            }
            Some(t) => {
                store_io::load_target(t.reader, t.id, Rank(g.rank)).map_err(RestoreError::Store)?
            }
        };
        let empty = BTreeMap::new();
        let (t_entries, tc) = match &tt {
            Some(t) => (&t.entries, t.chunk.max(1)),
            None => (&empty, g.chunk),
        };

        // 6. Plan: a source on disk for each target file, the chunks to fetch.
        let by_origin: HashMap<String, String> = cur
            .iter()
            .filter(|(p, _)| matches!(disk.get(*p), Some(Disk::File(_))))
            .filter_map(|(p, k)| k.origin.clone().map(|o| (o, p.clone())))
            .collect();
        let mut used: BTreeSet<String> = BTreeSet::new();
        let mut moves = Vec::new();
        let mut wanted: Vec<(String, u64, u64)> = Vec::new();
        for (tp, te) in t_entries {
            let Entry::File { len, digests } = te else {
                continue;
            };
            let src = by_origin
                .get(tp)
                .filter(|d| !used.contains(*d))
                .cloned()
                .or_else(|| {
                    (matches!(disk.get(tp), Some(Disk::File(_))) && !used.contains(tp))
                        .then(|| tp.clone())
                });
            let z = match src.as_ref().and_then(|s| disk.get(s)) {
                Some(Disk::File(z)) => *z,
                _ => 0,
            };
            if let Some(s) = &src {
                used.insert(s.clone());
                if s != tp {
                    moves.push((s.clone(), tp.clone()));
                }
            }
            for (i, d) in digests.iter().enumerate() {
                let a = i as u64 * tc;
                let b = (a + tc).min(*len);
                let same = match &src {
                    Some(s) if b <= z => {
                        let known = know.get(s).and_then(|m| m.get(&(a, b))).copied();
                        let h = match known {
                            Some(h) => h,
                            None => hasher.range(&layout.work_path(s), a, b)?,
                        };
                        h == *d
                    }
                    _ => false,
                };
                if !same {
                    wanted.push((tp.clone(), a, b - a));
                }
            }
        }
        let deletes: Vec<String> = disk
            .iter()
            .filter(|(p, k)| !matches!(k, Disk::Dir) && !used.contains(*p))
            .map(|(p, _)| p.clone())
            .collect();
        let mut del_dirs: Vec<String> = disk
            .iter()
            .filter(|(p, k)| {
                matches!(k, Disk::Dir) && !matches!(t_entries.get(*p), Some(Entry::Dir))
            })
            .map(|(p, _)| p.clone())
            .collect();
        // Deepest first.
        del_dirs.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));

        // 7. Read the changed chunks (verified) into the staging file.
        let mut fetches = Vec::new();
        let mut fetched = 0u64;
        if let (Some(t), Some(tt)) = (&target, &tt) {
            let sp = staging.join("fetched");
            let mut sf = fs::File::create(&sp).map_err(|e| FilesError::io(&sp, "creating", &e))?;
            let mut chunk = Vec::new();
            for (p, off, len) in wanted {
                chunk.resize(len as usize, 0);
                tt.fetch(t.reader, &p, off, &mut chunk)
                    .map_err(RestoreError::Store)?;
                sf.write_all(&chunk)
                    .map_err(|e| FilesError::io(&sp, "staging restored data", &e))?;
                fetches.push(Fetch {
                    path: p,
                    offset: off,
                    len,
                    at: fetched,
                });
                fetched += len;
            }
            sf.sync_data()
                .map_err(|e| FilesError::io(&sp, "syncing staged data", &e))?;
        }
        let state = LocalState {
            base: tt.as_ref().map(|t| t.id.0),
            chunk: tc,
            entries: t_entries.clone(),
            outputs: tt.as_ref().map(|t| t.outputs.clone()).unwrap_or_default(),
        };
        Ok(RestorePlan {
            journal_valid,
            old_base: base.base,
            state,
            moves,
            deletes,
            del_dirs,
            fetches,
            fetched,
        })
    }

    /// Phase 2: rewrites the tree to the prepared target, makes it durable, records it as
    /// the new base and publishes its output. A crash in the middle is journaled: the next
    /// restore then re-checks every file by content instead of by the journal.
    pub fn apply_restore(&self, plan: RestorePlan) -> Result<(), FilesError> {
        let mut g = self.lock();
        let layout = g.layout.clone();
        let mut j = if plan.journal_valid {
            Journal::reopen(&layout.journal(), g.budget.clone())?
        } else {
            Journal::start(&layout.journal(), plan.old_base, g.budget.clone())?
        };
        g.crash_point()?;
        j.append(&Rec::Restoring, true)?;
        drop(j);
        g.crash_point()?;
        let staging = layout.staging();
        let io = |p: &Path, what: &str| {
            let p = p.to_path_buf();
            let what = what.to_string();
            move |e: std::io::Error| FilesError::io(&p, &what, &e)
        };
        let mut parked = Vec::new();
        for (i, (src, dst)) in plan.moves.iter().enumerate() {
            let tmp = staging.join(format!("mv-{i}"));
            let s = layout.work_path(src);
            fs::rename(&s, &tmp).map_err(io(&s, "moving aside for the restore"))?;
            parked.push((tmp, dst.clone()));
            g.crash_point()?;
        }
        for p in &plan.deletes {
            let w = layout.work_path(p);
            fs::remove_file(&w).map_err(io(&w, "removing (not in the checkpoint)"))?;
            g.crash_point()?;
        }
        for p in &plan.del_dirs {
            let w = layout.work_path(p);
            fs::remove_dir(&w).map_err(io(&w, "removing directory (not in the checkpoint)"))?;
        }
        journal::failpoint("files_restore_mid_apply");
        let mut dirs: BTreeSet<std::path::PathBuf> = BTreeSet::new();
        dirs.insert(layout.work.clone());
        for (p, e) in &plan.state.entries {
            if *e == Entry::Dir {
                let w = layout.work_path(p);
                fs::create_dir_all(&w).map_err(io(&w, "creating directory"))?;
                dirs.insert(w);
            }
        }
        for (tmp, dst) in &parked {
            let w = layout.work_path(dst);
            fs::rename(tmp, &w).map_err(io(&w, "moving back for the restore"))?;
            g.crash_point()?;
        }
        let sp = staging.join("fetched");
        let staged = if plan.fetches.is_empty() {
            None
        } else {
            Some(fs::File::open(&sp).map_err(io(&sp, "opening staged data"))?)
        };
        let mut by_file: BTreeMap<&str, Vec<&Fetch>> = BTreeMap::new();
        for f in &plan.fetches {
            by_file.entry(f.path.as_str()).or_default().push(f);
        }
        let mut buf = Vec::new();
        for (p, e) in &plan.state.entries {
            let Entry::File { len, .. } = e else { continue };
            let w = layout.work_path(p);
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&w)
                .map_err(io(&w, "opening to restore"))?;
            f.set_len(*len).map_err(io(&w, "setting the length"))?;
            for fe in by_file.get(p.as_str()).into_iter().flatten() {
                buf.resize(fe.len as usize, 0);
                if let Some(s) = &staged {
                    s.read_exact_at(&mut buf, fe.at)
                        .map_err(io(&sp, "reading staged data"))?;
                }
                f.write_all_at(&buf, fe.offset)
                    .map_err(io(&w, "restoring content"))?;
            }
            f.sync_all().map_err(io(&w, "syncing the restored file"))?;
            g.crash_point()?;
        }
        for d in &dirs {
            journal::sync_dir(d)?;
        }
        let state = in_chunks_of(plan.state, g.chunk, &layout.work)?;
        state.store(&layout.state())?;
        // A fresh journal at once: the old one may name the same base (a restore to the
        // base itself) and its records no longer describe the tree.
        let j = Journal::start(&layout.journal(), state.base, g.budget.clone())?;
        let _ = fs::remove_dir_all(&staging);
        rebuild(&mut g, &state);
        g.journal = Some(j);
        // Publishing is idempotent: this repairs a crash between COMMIT and publication.
        if let Err(e) = publish::publish_committed(&mut g) {
            tracing::warn!("publishing the restored output: {e} (retried at the next commit)");
        }
        Ok(())
    }
}

/// `state` (a checkpoint's tree, just restored under `work`) with its digests in chunks
/// of `chunk` bytes, re-hashing the restored files when the checkpoint was written with
/// another chunk size. The base's chunk size is the unit of the journal's `Dirty`
/// records, which the job writes in its own (configured) chunk size: kept in the
/// checkpoint's, a later restart read them in the wrong unit and refused the job's own
/// writes as someone else's (regression: `a_changed_chunk_size_then_a_crash_restarts`).
fn in_chunks_of(mut state: LocalState, chunk: u64, work: &Path) -> Result<LocalState, FilesError> {
    if state.chunk == chunk {
        return Ok(state);
    }
    let mut hasher = Hasher::default();
    for (p, e) in state.entries.iter_mut() {
        let Entry::File { len, digests } = e else {
            continue;
        };
        let w = work.join(p);
        *digests = (0..len.div_ceil(chunk))
            .map(|k| hasher.range(&w, k * chunk, ((k + 1) * chunk).min(*len)))
            .collect::<Result<_, _>>()?;
    }
    state.chunk = chunk;
    Ok(state)
}

/// Number of chunks of `origin` in the base (journal ranges are capped to it).
fn base_chunks(base: &LocalState, origin: Option<&str>) -> u64 {
    match origin.and_then(|o| base.entries.get(o)) {
        Some(Entry::File { digests, .. }) => digests.len() as u64,
        _ => 0,
    }
}

/// The in-memory tree of a freshly restored base.
fn rebuild(g: &mut Inner, state: &LocalState) {
    g.tree.clear();
    g.files.clear();
    g.journal = None;
    g.base = state.base;
    g.outputs = state.outputs.iter().cloned().collect();
    for (p, e) in &state.entries {
        match e {
            Entry::Dir => {
                g.tree.insert(p.clone(), Node::Dir);
            }
            Entry::File { len, digests } => {
                let id = g.next_id;
                g.next_id += 1;
                let mut s = FileState::new(p.clone(), *len, Some(*len));
                // In the job's chunk size: `in_chunks_of` saw to it.
                s.digests = digests.clone();
                g.files.insert(id, s);
                g.tree.insert(p.clone(), Node::File(id));
            }
        }
    }
    g.ready = true;
}
