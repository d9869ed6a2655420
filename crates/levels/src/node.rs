//! One rank's fast levels: its L1 repository, the mirrors it keeps for its partner
//! sources, the level round of a checkpoint, the inventory and the fast restore.

use crate::config::Levels;
use crate::error::LevelError;
use crate::partner::{self, CopyMsg, Installed, TAG_COPY, TAG_REBUILD};
use crate::plan::{self, FastPlan, Held, RankSource};
use lazarus_format::{CheckpointId, LoadedObject, ObjectSpec, Rank};
use lazarus_net::Comm;
use lazarus_store::{CommitMeta, RepoOptions, RepoReader, Repository, StoreError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// COMMIT key of a level checkpoint: the job-wide checkpoint number (the same key the
/// durable repository's COMMIT carries in a multi-level job).
pub const SEQ_KEY: &str = "lazarus.level.seq";
/// COMMIT key of a level checkpoint: the global rank whose part it is.
pub const LEVEL_RANK_KEY: &str = "lazarus.level.rank";
/// COMMIT key of a level checkpoint: the number of ranks of the job that wrote it.
pub const LEVEL_WORLD_KEY: &str = "lazarus.level.world";

/// What the fast levels of one checkpoint cost on this rank.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LevelReceipt {
    /// Writing the L1 part (hash, compress, write, commit).
    pub l1: Duration,
    /// The partner exchange (zero when L2 was not due).
    pub l2: Duration,
    /// Chunk bytes this rank sent to its partner.
    pub l2_bytes: u64,
    /// Bytes of this rank's objects.
    pub logical_bytes: u64,
    /// Bytes of new chunks written to L1.
    pub written_bytes: u64,
}

/// This rank's fast levels (module docs of the crate). Created collectively by every rank
/// at job start ([`NodeLevels::open`]), which exchanges the host map and the inventory of
/// every host's node-local directory.
#[derive(Debug)]
pub struct NodeLevels {
    comm: Comm,
    levels: Levels,
    root: PathBuf,
    hosts: Vec<String>,
    partners: Vec<Option<u32>>,
    options: RepoOptions,
    keep: usize,
    own: Option<Repository>,
    mirrors: BTreeMap<u32, Repository>,
    held: Vec<Held>,
    next_seq: u64,
}

fn dir_of(rank: u32, primary: bool) -> String {
    if primary {
        format!("rank-{rank}")
    } else {
        format!("partner-of-{rank}")
    }
}

/// Reads a directory name back: `(subject, primary)`.
fn parse_dir(name: &str) -> Option<(u32, bool)> {
    let (rest, primary) = match name.strip_prefix("rank-") {
        Some(r) => (r, true),
        None => (name.strip_prefix("partner-of-")?, false),
    };
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((rest.parse().ok()?, primary))
}

fn opts_for_level(options: &RepoOptions) -> RepoOptions {
    RepoOptions {
        // Node-local repositories are this rank's alone: no lock sharing.
        job_token: None,
        ..options.clone()
    }
}

impl NodeLevels {
    /// Collective: every rank calls it with the same `levels`. `root` is the node-local
    /// root (host directories under it), `host` this rank's host, `durable_seq` the newest
    /// job-wide number in the durable repository (rank 0's value is used).
    pub fn open(
        comm: Comm,
        levels: Levels,
        root: PathBuf,
        host: String,
        options: RepoOptions,
        keep: usize,
        durable_seq: u64,
    ) -> Result<NodeLevels, LevelError> {
        let hosts: Vec<String> = comm.allgather(&host)?;
        let me = comm.rank().0;
        let server = hosts.iter().position(|h| *h == host) == Some(me as usize);
        // The lowest rank of each host reports everything in the host's directory; an
        // unreadable entry is reported and left out (it is simply not a copy).
        let mine: Result<Vec<Held>, String> = if server {
            scan_host(&root, &host).map_err(|e| e.to_string())
        } else {
            Ok(Vec::new())
        };
        let all: Vec<Result<Vec<Held>, String>> = comm.allgather(&mine)?;
        let mut held = Vec::new();
        for (r, h) in all.into_iter().enumerate() {
            match h {
                Ok(h) => held.extend(h),
                Err(m) => {
                    return Err(LevelError::Peer {
                        rank: Rank(r as u32),
                        message: format!("scanning node-local data: {m}"),
                    })
                }
            }
        }
        let mut dseq = durable_seq;
        comm.broadcast(Rank(0), &mut dseq)?;
        let next_seq = held.iter().map(|h| h.seq).max().unwrap_or(0).max(dseq) + 1;
        let partners = partner::partner_map(&hosts);
        if levels.periods().1 > 0 && partners.iter().all(Option::is_none) && me == 0 {
            tracing::warn!(
                "levels: L2 partner copies need ranks on at least two hosts; all {} ranks run on {host}: L2 is skipped",
                hosts.len()
            );
        }
        Ok(NodeLevels {
            comm,
            levels,
            root,
            hosts,
            partners,
            options: opts_for_level(&options),
            keep: keep.max(1),
            own: None,
            mirrors: BTreeMap::new(),
            held,
            next_seq,
        })
    }

    /// The schedule.
    pub fn levels(&self) -> &Levels {
        &self.levels
    }

    /// Every rank's host, by rank.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The node-local root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The job-wide number the next checkpoint gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Counts a checkpoint: returns its number and advances (on every rank alike, whether
    /// or not its writes succeed, so the numbers stay the same on every rank).
    pub fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// The fast-level checkpoints every rank can restore, newest first (from the
    /// inventory taken at [`NodeLevels::open`]).
    pub fn plans(&self) -> Vec<FastPlan> {
        plan::plan(&self.held, &self.hosts)
    }

    fn me(&self) -> u32 {
        self.comm.rank().0
    }

    fn host_dir(&self, host: &str) -> PathBuf {
        self.root.join(host)
    }

    fn own_repo(&mut self) -> Result<&mut Repository, LevelError> {
        if self.own.is_none() {
            let p = self
                .host_dir(&self.hosts[self.me() as usize])
                .join(dir_of(self.me(), true));
            self.own = Some(Repository::open(&p, self.options.clone()).map_err(LevelError::l1)?);
        }
        // Just set if it was None.
        self.own
            .as_mut()
            .ok_or_else(|| LevelError::Config("L1 repository".into()))
    }

    fn mirror(&mut self, subject: u32) -> Result<&mut Repository, LevelError> {
        if !self.mirrors.contains_key(&subject) {
            let p = self
                .host_dir(&self.hosts[self.me() as usize])
                .join(dir_of(subject, false));
            let r = Repository::open(&p, self.options.clone()).map_err(LevelError::l2)?;
            self.mirrors.insert(subject, r);
        }
        self.mirrors
            .get_mut(&subject)
            .ok_or_else(|| LevelError::Config("L2 mirror".into()))
    }

    /// Drops a mirror whose history diverged from its source and starts it empty.
    fn reset_mirror(&mut self, subject: u32) -> Result<(), LevelError> {
        self.mirrors.remove(&subject);
        let p = self
            .host_dir(&self.hosts[self.me() as usize])
            .join(dir_of(subject, false));
        std::fs::remove_dir_all(&p)
            .map_err(|e| LevelError::l2(StoreError::io(&p, "removing a diverged mirror", e)))?;
        tracing::info!(
            "levels: {} diverged from rank {subject}'s L1; started again",
            p.display()
        );
        Ok(())
    }

    /// The level round of checkpoint `seq` (collective when L2 is due): writes this
    /// rank's part to L1 and, if due, copies it to the partner and receives the copies of
    /// the ranks this rank is the partner of. Every rank ends the round knowing whether
    /// every rank succeeded (an allgather); an `Err` on one rank is a `Peer` error on the
    /// others. A failed round leaves no COMMIT that a restore could mistake for a
    /// complete checkpoint: restore only plans numbers every rank's copy has.
    pub fn checkpoint(
        &mut self,
        seq: u64,
        objects: &[ObjectSpec<'_>],
        meta: &CommitMeta,
        l2: bool,
    ) -> Result<LevelReceipt, LevelError> {
        let mut receipt = LevelReceipt::default();
        let t0 = Instant::now();
        let written = self.write_l1(seq, objects, meta).map(|(id, part)| {
            receipt.logical_bytes = part.logical_bytes;
            receipt.written_bytes = part.stored_new_bytes;
            id
        });
        receipt.l1 = t0.elapsed();
        let t1 = Instant::now();
        let copied = if l2 {
            let local = written.as_ref().ok().copied();
            self.exchange(local).map(|b| receipt.l2_bytes = b)
        } else {
            Ok(())
        };
        receipt.l2 = t1.elapsed();
        let mine: Result<(), String> = match (&written, &copied) {
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
            _ => Ok(()),
        };
        let all: Vec<Result<(), String>> = self.comm.allgather(&mine)?;
        written?;
        copied?;
        if let Some((r, m)) = all
            .into_iter()
            .enumerate()
            .find_map(|(r, a)| a.err().map(|m| (r, m)))
        {
            return Err(LevelError::Peer {
                rank: Rank(r as u32),
                message: m,
            });
        }
        Ok(receipt)
    }

    fn write_l1(
        &mut self,
        seq: u64,
        objects: &[ObjectSpec<'_>],
        meta: &CommitMeta,
    ) -> Result<(CheckpointId, lazarus_store::PartReceipt), LevelError> {
        let (me, world, keep) = (self.me(), self.comm.size(), self.keep);
        let repo = self.own_repo()?;
        let pending = repo.begin(1).map_err(LevelError::l1)?;
        let part = pending.part_writer().write(Rank(0), objects);
        let part = match part {
            Ok(p) => p,
            Err(e) => {
                let _ = repo.abort(pending);
                return Err(LevelError::l1(e));
            }
        };
        let mut m = meta.clone();
        m.app.insert(SEQ_KEY.into(), seq.to_string());
        m.app.insert(LEVEL_RANK_KEY.into(), me.to_string());
        m.app.insert(LEVEL_WORLD_KEY.into(), world.to_string());
        let done = repo
            .commit(pending, vec![part.clone()], m)
            .map_err(LevelError::l1)?;
        lazarus_store::failpoint("levels_after_l1_commit");
        if let Err(e) = repo.retain(keep) {
            tracing::warn!("levels: L1 retention: {e}");
        }
        Ok((done.summary.id, part))
    }

    /// This rank's side of a level round whose state could not be saved: takes part in
    /// the exchange (telling its partner) and in the outcome, so no rank waits for it.
    pub fn fail(&mut self, message: &str, l2: bool) -> Result<(), LevelError> {
        if l2 {
            let _ = self.exchange(None);
        }
        let mine: Result<(), String> = Err(message.to_string());
        let _: Vec<Result<(), String>> = self.comm.allgather(&mine)?;
        Ok(())
    }

    /// The L2 exchange; `local` is this rank's new L1 checkpoint (`None`: writing it
    /// failed, the partner is told so). Returns the chunk bytes sent.
    fn exchange(&mut self, local: Option<CheckpointId>) -> Result<u64, LevelError> {
        let me = self.me();
        let partner = self.partners[me as usize];
        let sources: Vec<u32> = (0..self.hosts.len() as u32)
            .filter(|r| self.partners[*r as usize] == Some(me))
            .collect();
        let own_reader = || -> Result<RepoReader, LevelError> {
            let p = self
                .host_dir(&self.hosts[me as usize])
                .join(dir_of(me, true));
            RepoReader::open(&p).map_err(LevelError::l1)
        };
        // 1. Offer.
        let mut offered = None;
        if let Some(p) = partner {
            let offer = match local.map(|id| (id, own_reader())) {
                Some((id, Ok(reader))) => match partner::checkpoint_files(&reader, id) {
                    Ok((chunks, _)) => {
                        offered = Some((id, reader));
                        CopyMsg::Offer {
                            subject: me,
                            local: id.0,
                            chunks: chunks.into_iter().map(|d| d.0).collect(),
                        }
                    }
                    Err(e) => CopyMsg::Failed(e.to_string()),
                },
                Some((_, Err(e))) => CopyMsg::Failed(e.to_string()),
                None => CopyMsg::Failed(format!("rank {me}: L1 write failed")),
            };
            partner::send(&self.comm, p, TAG_COPY, &offer)?;
        }
        // 2. Answer every source's offer.
        let mut first_err: Option<LevelError> = None;
        for &s in &sources {
            let answer = match partner::recv(&self.comm, s, TAG_COPY)? {
                CopyMsg::Offer {
                    subject,
                    local,
                    chunks,
                } if subject == s => match self.want(s, local, &chunks) {
                    Ok(missing) => CopyMsg::Want { missing },
                    Err(e) => {
                        let m = e.to_string();
                        first_err.get_or_insert(e);
                        CopyMsg::Failed(m)
                    }
                },
                CopyMsg::Failed(_) => CopyMsg::Failed("no offer".into()),
                other => {
                    return Err(LevelError::Protocol {
                        rank: Rank(s),
                        detail: format!("expected an offer, got {}", kind(&other)),
                    })
                }
            };
            partner::send(&self.comm, s, TAG_COPY, &answer)?;
        }
        // 3. Send what the partner lacks.
        let mut sent = 0u64;
        if let Some(p) = partner {
            let want = partner::recv(&self.comm, p, TAG_COPY)?;
            if let Some((id, reader)) = &offered {
                let data = match want {
                    CopyMsg::Want { missing } => partner::data_msg(reader, me, *id, &missing)
                        .unwrap_or_else(|e| CopyMsg::Failed(e.to_string())),
                    CopyMsg::Failed(m) => CopyMsg::Failed(format!("partner refused: {m}")),
                    other => {
                        return Err(LevelError::Protocol {
                            rank: Rank(p),
                            detail: format!("expected a want list, got {}", kind(&other)),
                        })
                    }
                };
                if let CopyMsg::Data { chunks, .. } = &data {
                    sent = chunks.iter().map(|(_, b)| b.len() as u64).sum();
                }
                if let CopyMsg::Failed(m) = &data {
                    first_err.get_or_insert(LevelError::Peer {
                        rank: Rank(p),
                        message: m.clone(),
                    });
                }
                partner::send(&self.comm, p, TAG_COPY, &data)?;
            }
        }
        // 4. Install the sources' data.
        for &s in &sources {
            match partner::recv(&self.comm, s, TAG_COPY) {
                Ok(CopyMsg::Data {
                    subject,
                    local,
                    chunks,
                    files,
                }) if subject == s => {
                    if let Err(e) = self.install_mirror(s, local, &chunks, &files) {
                        first_err.get_or_insert(e);
                    }
                }
                // The source sends nothing after a failed offer or a refused one.
                Ok(CopyMsg::Failed(m)) => {
                    first_err.get_or_insert(LevelError::Peer {
                        rank: Rank(s),
                        message: m,
                    });
                }
                Ok(other) => {
                    return Err(LevelError::Protocol {
                        rank: Rank(s),
                        detail: format!("expected data, got {}", kind(&other)),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }

    /// The chunks the mirror of `subject` lacks for its checkpoint `local`; resets a
    /// mirror whose history diverged (it holds a newer id than the source offers).
    fn want(
        &mut self,
        subject: u32,
        local: u64,
        chunks: &[[u8; 32]],
    ) -> Result<Vec<[u8; 32]>, LevelError> {
        let newest = {
            let m = self.mirror(subject)?;
            m.reader()
                .and_then(|r| r.committed())
                .map_err(LevelError::l2)?
                .last()
                .map(|c| c.id.0)
        };
        if newest.is_some_and(|n| n > local) {
            self.reset_mirror(subject)?;
        }
        let m = self.mirror(subject)?;
        partner::missing(m.backend().as_ref(), chunks).map_err(LevelError::l2)
    }

    fn install_mirror(
        &mut self,
        subject: u32,
        local: u64,
        chunks: &[([u8; 32], Vec<u8>)],
        files: &[(String, Vec<u8>)],
    ) -> Result<(), LevelError> {
        let keep = self.keep;
        let m = self.mirror(subject)?;
        let reader = m.reader().map_err(LevelError::l2)?;
        let r = partner::install(m.backend().as_ref(), &reader, local, chunks, files)
            .map_err(LevelError::l2)?;
        if r == Installed::Diverged {
            // Chunks we skipped as present may belong to the stale history only: start
            // again; the next checkpoint's offer fills the mirror.
            self.reset_mirror(subject)?;
            return Err(LevelError::Config(format!(
                "L2 mirror of rank {subject} held another checkpoint {local}; reset"
            )));
        }
        if let Err(e) = m.retain(keep) {
            tracing::warn!("levels: L2 retention of rank {subject}'s mirror: {e}");
        }
        Ok(())
    }

    /// Loads this rank's part of the planned checkpoint (collective: every rank calls it
    /// for the same plan). Parts held on another host are first sent by their holder and
    /// installed into the receiving rank's own L1 repository (the rebuild), so the data is
    /// read from a local repository, every digest verified. Store errors are returned for
    /// the caller to classify (damage: fall back; anything else: fail).
    pub fn load(&mut self, plan: &FastPlan) -> Result<Vec<LoadedObject>, LoadOutcome> {
        let me = self.me();
        // Holders send first (sends do not block), then receivers receive.
        for (r, src) in plan.sources.iter().enumerate() {
            if let RankSource::Remote {
                holder,
                host,
                dir,
                local,
            } = src
            {
                if *holder == me {
                    let p = self.host_dir(host).join(dir);
                    let msg = RepoReader::open(&p)
                        .and_then(|reader| {
                            let (chunks, _) =
                                partner::checkpoint_files(&reader, CheckpointId(*local))?;
                            let all: Vec<[u8; 32]> = chunks.into_iter().map(|d| d.0).collect();
                            partner::data_msg(&reader, r as u32, CheckpointId(*local), &all)
                        })
                        .unwrap_or_else(|e| CopyMsg::Failed(e.to_string()));
                    partner::send(&self.comm, r as u32, TAG_REBUILD, &msg)
                        .map_err(LoadOutcome::Level)?;
                }
            }
        }
        let host = self.hosts[me as usize].clone();
        let (dir, local) = match &plan.sources[me as usize] {
            RankSource::Local { dir, local } => (dir.clone(), *local),
            RankSource::Remote { holder, local, .. } => {
                let msg =
                    partner::recv(&self.comm, *holder, TAG_REBUILD).map_err(LoadOutcome::Level)?;
                let (chunks, files) = match msg {
                    CopyMsg::Data {
                        subject,
                        local: l,
                        chunks,
                        files,
                    } if subject == me && l == *local => (chunks, files),
                    CopyMsg::Failed(m) => {
                        return Err(LoadOutcome::Store(StoreError::new(
                            lazarus_store::StoreErrorKind::Missing,
                            None,
                            format!("rank {holder} could not send rank {me}'s partner copy: {m}"),
                        )))
                    }
                    other => {
                        return Err(LoadOutcome::Level(LevelError::Protocol {
                            rank: Rank(*holder),
                            detail: format!("expected rebuild data, got {}", kind(&other)),
                        }))
                    }
                };
                // Into our own L1: a rank that lost its host gets its node-local copy back.
                let repo = self.own_repo().map_err(LoadOutcome::Level)?;
                let reader = repo.reader().map_err(LoadOutcome::Store)?;
                let installed =
                    partner::install(repo.backend().as_ref(), &reader, *local, &chunks, &files)
                        .map_err(LoadOutcome::Store)?;
                if installed == Installed::Diverged {
                    return Err(LoadOutcome::Store(StoreError::new(
                        lazarus_store::StoreErrorKind::Corrupt,
                        Some(repo.path()),
                        format!(
                            "checkpoint {local} exists with other content; cannot rebuild into it"
                        ),
                    )));
                }
                (dir_of(me, true), *local)
            }
        };
        let p = self.host_dir(&host).join(&dir);
        let reader = RepoReader::open(&p).map_err(LoadOutcome::Store)?;
        reader
            .load_part(CheckpointId(local), Rank(0))
            .map_err(LoadOutcome::Store)
    }

    /// After a restore from `seq` (or a fresh start, `seq` 0): numbers go on after the
    /// newest anywhere, so an old copy never shares a number with a new checkpoint.
    pub fn restored(&mut self, _seq: u64) {
        // next_seq is already past every number in the inventory and the durable
        // repository (open); nothing newer can have appeared since.
    }

    /// Deletes this host's node-local data (the lowest rank of each host does it) after
    /// the job finished durably. Collective.
    pub fn clean(&mut self) -> Result<(), LevelError> {
        self.comm.barrier()?;
        self.own = None;
        self.mirrors.clear();
        let me = self.me() as usize;
        let host = &self.hosts[me];
        if self.hosts.iter().position(|h| h == host) == Some(me) {
            let p = self.host_dir(host);
            if let Err(e) = std::fs::remove_dir_all(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("levels: cleaning {}: {e}", p.display());
                }
            }
        }
        Ok(())
    }
}

/// Why loading from a fast level failed.
#[derive(Debug)]
pub enum LoadOutcome {
    /// A store error (the caller classifies: damage falls back, I/O fails).
    Store(StoreError),
    /// Talking to another rank failed, or it broke the protocol.
    Level(LevelError),
}

fn kind(m: &CopyMsg) -> &'static str {
    match m {
        CopyMsg::Offer { .. } => "an offer",
        CopyMsg::Want { .. } => "a want list",
        CopyMsg::Data { .. } => "data",
        CopyMsg::Failed(_) => "a failure",
    }
}

/// Every committed level copy under `root` (every host directory), for tools
/// (`lazarus inspect --levels`); unreadable entries are logged and left out.
pub fn scan(root: &Path) -> Result<Vec<Held>, StoreError> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(root, "listing node-local data", e)),
    };
    let mut out = Vec::new();
    for ent in rd.flatten() {
        if ent.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(scan_host(root, &ent.file_name().to_string_lossy())?);
        }
    }
    Ok(out)
}

/// Every committed copy in `<root>/<host>/`.
fn scan_host(root: &Path, host: &str) -> Result<Vec<Held>, StoreError> {
    let dir = root.join(host);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(&dir, "listing node-local data", e)),
    };
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().to_string();
        let Some((subject, primary)) = parse_dir(&name) else {
            continue;
        };
        let reader = match RepoReader::open(&ent.path()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("levels: {}: {e}; not used", ent.path().display());
                continue;
            }
        };
        let (ok, damaged) = match reader.newest_committed_candidates() {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("levels: {}: {e}; not used", ent.path().display());
                continue;
            }
        };
        for d in damaged {
            tracing::warn!(
                "levels: {}: damaged checkpoint {}: {}",
                ent.path().display(),
                d.checkpoint.0,
                d.detail
            );
        }
        for c in ok {
            let num = |k: &str| c.app.get(k).and_then(|v| v.parse::<u64>().ok());
            let (Some(seq), Some(rank), Some(world)) =
                (num(SEQ_KEY), num(LEVEL_RANK_KEY), num(LEVEL_WORLD_KEY))
            else {
                continue;
            };
            if rank != u64::from(subject) || c.world_size != 1 {
                tracing::warn!(
                    "levels: {}: checkpoint {} is not rank {subject}'s; not used",
                    ent.path().display(),
                    c.id.0
                );
                continue;
            }
            out.push(Held {
                host: host.to_string(),
                dir: name.clone(),
                subject,
                primary,
                seq,
                step: c.step,
                world: u32::try_from(world).unwrap_or(0),
                local: c.id.0,
                app: c.app.clone(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_round_trip() {
        assert_eq!(parse_dir(&dir_of(7, true)), Some((7, true)));
        assert_eq!(parse_dir(&dir_of(0, false)), Some((0, false)));
        assert_eq!(parse_dir("rank-"), None);
        assert_eq!(parse_dir("rank-1x"), None);
        assert_eq!(parse_dir("other"), None);
    }
}
