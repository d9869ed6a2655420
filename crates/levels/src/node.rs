//! One rank's fast levels: its L1 repository, the mirrors it keeps for its partner
//! sources, the level round of a checkpoint, the inventory and the fast restore.

use crate::config::{Due, Levels};
use crate::error::LevelError;
use crate::l3::{self, ParityMsg, TAG_PARITY, TAG_PARITY_REBUILD};
use crate::parity;
use crate::partner::{self, CopyMsg, Installed, TAG_COPY, TAG_REBUILD};
use crate::plan::{self, FastPlan, Held, ParityHeld, ParitySource, RankSource, ShardSource};
use lazarus_format::{CheckpointId, LoadedObject, ObjectInfo, ObjectKind, ObjectSpec, Rank};
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
/// COMMIT key of an L3 parity checkpoint: the shard's index j.
pub const PARITY_SHARD_KEY: &str = "lazarus.parity.shard";
/// COMMIT key of an L3 parity checkpoint: the group's number of parity shards m.
pub const PARITY_M_KEY: &str = "lazarus.parity.m";
/// COMMIT key of an L3 parity checkpoint: the group's members (ranks, comma-separated).
pub const PARITY_MEMBERS_KEY: &str = "lazarus.parity.members";
/// COMMIT key of an L3 parity checkpoint: each member's L1 checkpoint id.
pub const PARITY_LOCALS_KEY: &str = "lazarus.parity.locals";
/// COMMIT key of an L3 parity checkpoint: each member's blob length.
pub const PARITY_LENS_KEY: &str = "lazarus.parity.lens";
/// COMMIT key of an L3 parity checkpoint: each member's blob BLAKE3 hash (hex).
pub const PARITY_HASHES_KEY: &str = "lazarus.parity.hashes";
/// COMMIT key of an L3 parity checkpoint: bytes per shard.
pub const PARITY_SHARD_BYTES_KEY: &str = "lazarus.parity.shard_bytes";
/// Name of the one object of a parity checkpoint (the shard's bytes).
const PARITY_OBJECT: &str = "parity";

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
    /// The parity round (zero when L3 was not due).
    pub l3: Duration,
    /// Blob bytes this rank sent to its group's parity holders.
    pub l3_bytes: u64,
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
    parity: Vec<ParityHeld>,
    groups: Vec<Vec<u32>>,
    next_seq: u64,
    /// True once this world's first checkpoint on every configured fast level removed
    /// the copies no rank of this world writes any more (crate `nm`, docs/LEVELS.md).
    tidied: bool,
}

/// What one host's node-local directory holds.
type Inventory = (Vec<Held>, Vec<ParityHeld>);

fn dir_of(rank: u32, primary: bool) -> String {
    if primary {
        format!("rank-{rank}")
    } else {
        format!("partner-of-{rank}")
    }
}

/// Reads a directory name back: `(subject, primary)`.
pub(crate) fn parse_dir(name: &str) -> Option<(u32, bool)> {
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
        let mine: Result<Inventory, String> = if server {
            scan_host(&root, &host).map_err(|e| e.to_string())
        } else {
            Ok((Vec::new(), Vec::new()))
        };
        let all: Vec<Result<Inventory, String>> = comm.allgather(&mine)?;
        let mut held = Vec::new();
        let mut parity = Vec::new();
        for (r, h) in all.into_iter().enumerate() {
            match h {
                Ok((h, p)) => {
                    held.extend(h);
                    parity.extend(p);
                }
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
        let next_seq = held
            .iter()
            .map(|h| h.seq)
            .chain(parity.iter().map(|p| p.seq))
            .max()
            .unwrap_or(0)
            .max(dseq)
            + 1;
        let groups = l3::parity_groups(&hosts);
        let l3_every = levels.l3_every();
        if levels.l3_every() > 0 && me == 0 {
            let covered: usize = groups.iter().map(Vec::len).sum();
            if covered < hosts.len() {
                tracing::warn!(
                    "levels: L3 parity groups need ranks on at least two hosts with the same number of ranks; {} of {} ranks are in no group and have no L3",
                    hosts.len() - covered,
                    hosts.len()
                );
            }
        }
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
            // The newest L3 checkpoint must stay in its members' L1 for a parity rebuild:
            // with L3 every n checkpoints, keep at least the newest n.
            keep: keep.max(1).max(l3_every as usize),
            own: None,
            mirrors: BTreeMap::new(),
            held,
            parity,
            groups,
            next_seq,
            tidied: false,
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
        plan::plan_with_parity(&self.held, &self.parity, &self.hosts)
    }

    /// The newest job-wide number of any level copy or parity shard found at
    /// [`NodeLevels::open`], whether or not it can be restored.
    pub fn newest_seen(&self) -> Option<u64> {
        self.held
            .iter()
            .map(|h| h.seq)
            .chain(self.parity.iter().map(|p| p.seq))
            .max()
    }

    /// The L3 parity groups (members by global rank, each group on distinct hosts).
    pub fn groups(&self) -> &[Vec<u32>] {
        &self.groups
    }

    fn me(&self) -> u32 {
        self.comm.rank().0
    }

    pub(crate) fn comm(&self) -> &Comm {
        &self.comm
    }

    pub(crate) fn partners(&self) -> &[Option<u32>] {
        &self.partners
    }

    /// Marks the tidy step done; true the first time.
    pub(crate) fn first_tidy(&mut self) -> bool {
        !std::mem::replace(&mut self.tidied, true)
    }

    pub(crate) fn host_dir(&self, host: &str) -> PathBuf {
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

    /// The level round of checkpoint `seq` (collective when L2 or L3 is due): writes this
    /// rank's part to L1 and, if due, copies it to the partner and receives the copies of
    /// the ranks this rank is the partner of (L2), then sends it to its parity group's
    /// parity holders, which encode and commit their shard (L3). Every rank ends the round knowing whether
    /// every rank succeeded (an allgather); an `Err` on one rank is a `Peer` error on the
    /// others. A failed round leaves no COMMIT that a restore could mistake for a
    /// complete checkpoint: restore only plans numbers every rank's copy has.
    pub fn checkpoint(
        &mut self,
        seq: u64,
        objects: &[ObjectSpec<'_>],
        meta: &CommitMeta,
        due: Due,
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
        let local = written.as_ref().ok().copied();
        let copied = if due.l2 {
            self.exchange(local).map(|b| receipt.l2_bytes = b)
        } else {
            Ok(())
        };
        receipt.l2 = t1.elapsed();
        let t2 = Instant::now();
        let paritied = if due.l3 {
            self.parity_round(seq, local, meta)
                .map(|b| receipt.l3_bytes = b)
        } else {
            Ok(())
        };
        receipt.l3 = t2.elapsed();
        let mine: Result<(), String> = match (&written, &copied, &paritied) {
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e.to_string()),
            _ => Ok(()),
        };
        let all: Vec<Result<(), String>> = self.comm.allgather(&mine)?;
        written?;
        copied?;
        paritied?;
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
        self.tidy_after(due);
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
    pub fn fail(&mut self, message: &str, due: Due) -> Result<(), LevelError> {
        if due.l2 {
            let _ = self.exchange(None);
        }
        if due.l3 {
            let _ = self.parity_round(0, None, &CommitMeta::default());
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

    /// The L3 round of checkpoint `seq`; `local` is this rank's new L1 checkpoint
    /// (`None`: writing it failed, the holders are told so). Every member sends its blob
    /// to each parity holder (members 0..m of its group); holder j receives every
    /// member's blob, encodes, and commits shard j as a one-rank checkpoint of
    /// `<host>/parity-<g>-<j>/` (COMMIT last: complete or absent). Returns the blob bytes
    /// sent.
    fn parity_round(
        &mut self,
        seq: u64,
        local: Option<CheckpointId>,
        meta: &CommitMeta,
    ) -> Result<u64, LevelError> {
        let me = self.me();
        let Some((g, group)) = self
            .groups
            .iter()
            .enumerate()
            .find(|(_, g)| g.contains(&me))
            .map(|(g, m)| (g as u32, m.clone()))
        else {
            return Ok(0);
        };
        let index = group.iter().position(|m| *m == me).unwrap_or(0) as u32;
        let m = l3::shards_for(group.len());
        let own: Result<(u64, Vec<u8>), String> = match local {
            Some(id) => self
                .own_reader()
                .and_then(|r| l3::blob(&r, me, id).map_err(LevelError::l1))
                .map(|b| (id.0, b))
                .map_err(|e| e.to_string()),
            None => Err(format!("rank {me}: L1 write failed")),
        };
        // 1. Every member sends its blob to every other holder (sends do not block).
        let mut sent = 0u64;
        for &h in &group[..m] {
            if h == me {
                continue;
            }
            let msg = match &own {
                Ok((l, b)) => {
                    sent += b.len() as u64;
                    ParityMsg::Blob {
                        seq,
                        index,
                        local: *l,
                        bytes: b.clone(),
                    }
                }
                Err(e) => ParityMsg::Failed(e.clone()),
            };
            l3::send(&self.comm, h, TAG_PARITY, &msg)?;
        }
        // 2. A holder receives every member's blob, encodes and commits its shard.
        let Some(j) = group[..m].iter().position(|h| *h == me) else {
            return own.map(|_| sent).map_err(LevelError::Config);
        };
        let mut blobs: Vec<Option<(u64, Vec<u8>)>> = Vec::with_capacity(group.len());
        let mut first_err: Option<LevelError> = None;
        for (i, &u) in group.iter().enumerate() {
            if u == me {
                match &own {
                    Ok(b) => blobs.push(Some(b.clone())),
                    Err(e) => {
                        first_err.get_or_insert(LevelError::Config(e.clone()));
                        blobs.push(None);
                    }
                }
                continue;
            }
            match l3::recv(&self.comm, u, TAG_PARITY)? {
                ParityMsg::Blob {
                    seq: s,
                    index: ix,
                    local: l,
                    bytes,
                } if s == seq && ix as usize == i => blobs.push(Some((l, bytes))),
                ParityMsg::Failed(msg) => {
                    first_err.get_or_insert(LevelError::Peer {
                        rank: Rank(u),
                        message: msg,
                    });
                    blobs.push(None);
                }
                // Recorded, and every other member still received: no message of this
                // round is left behind for the next one.
                other => {
                    first_err.get_or_insert(LevelError::Protocol {
                        rank: Rank(u),
                        detail: format!(
                            "expected the blob of member {i} for checkpoint {seq}, got {}",
                            other.kind()
                        ),
                    });
                    blobs.push(None);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let blobs: Vec<(u64, Vec<u8>)> = blobs.into_iter().flatten().collect();
        let refs: Vec<&[u8]> = blobs.iter().map(|(_, b)| b.as_slice()).collect();
        let encoded = parity::encode(&refs, m)?;
        let join = |v: Vec<String>| v.join(",");
        let mut pm = meta.clone();
        let app = &mut pm.app;
        app.insert(SEQ_KEY.into(), seq.to_string());
        app.insert(LEVEL_WORLD_KEY.into(), self.comm.size().to_string());
        app.insert(PARITY_SHARD_KEY.into(), j.to_string());
        app.insert(PARITY_M_KEY.into(), m.to_string());
        app.insert(
            PARITY_MEMBERS_KEY.into(),
            join(group.iter().map(u32::to_string).collect()),
        );
        app.insert(
            PARITY_LOCALS_KEY.into(),
            join(blobs.iter().map(|(l, _)| l.to_string()).collect()),
        );
        app.insert(
            PARITY_LENS_KEY.into(),
            join(blobs.iter().map(|(_, b)| b.len().to_string()).collect()),
        );
        app.insert(
            PARITY_HASHES_KEY.into(),
            join(blobs.iter().map(|(_, b)| l3::hash_hex(b)).collect()),
        );
        app.insert(
            PARITY_SHARD_BYTES_KEY.into(),
            encoded.layout.shard_bytes.to_string(),
        );
        let shard = encoded
            .parity
            .into_iter()
            .nth(j)
            .ok_or_else(|| LevelError::Parity(format!("shard {j} of {m} not encoded")))?;
        drop(blobs);
        self.write_parity(g, j as u32, &shard, pm)?;
        own.map(|_| sent).map_err(LevelError::Config)
    }

    /// Commits `shard` as the next checkpoint of `<host>/parity-<g>-<j>/`.
    fn write_parity(
        &mut self,
        g: u32,
        j: u32,
        shard: &[u8],
        meta: CommitMeta,
    ) -> Result<(), LevelError> {
        let p = self
            .host_dir(&self.hosts[self.me() as usize])
            .join(l3::parity_dir(g, j));
        let l3err = |source| LevelError::Store {
            level: "L3 parity",
            source,
        };
        let mut repo = Repository::open(&p, self.options.clone()).map_err(l3err)?;
        let pending = repo.begin(1).map_err(l3err)?;
        let spec = ObjectSpec::new(
            ObjectInfo {
                name: PARITY_OBJECT.into(),
                type_name: "lazarus.parity.shard".into(),
                kind: ObjectKind::Serde,
                sharing: None,
            },
            shard,
        );
        let part = match pending.part_writer().write(Rank(0), &[spec]) {
            Ok(p) => p,
            Err(e) => {
                let _ = repo.abort(pending);
                return Err(l3err(e));
            }
        };
        lazarus_store::failpoint("levels_parity_before_commit");
        repo.commit(pending, vec![part], meta).map_err(l3err)?;
        if let Err(e) = repo.retain(self.keep) {
            tracing::warn!("levels: L3 retention of {}: {e}", p.display());
        }
        Ok(())
    }

    fn own_reader(&self) -> Result<RepoReader, LevelError> {
        let me = self.me();
        let p = self
            .host_dir(&self.hosts[me as usize])
            .join(dir_of(me, true));
        RepoReader::open(&p).map_err(LevelError::l1)
    }

    /// The message carrying parity shard `sh` of checkpoint `seq`, read from this host.
    fn shard_msg(&self, sh: &ShardSource, seq: u64) -> ParityMsg {
        let p = self.host_dir(&sh.host).join(&sh.dir);
        let read = RepoReader::open(&p)
            .and_then(|r| r.load_part(CheckpointId(sh.local), Rank(0)))
            .map_err(|e| e.to_string())
            .and_then(|objects| {
                objects
                    .into_iter()
                    .find(|o| o.info.name == PARITY_OBJECT)
                    .map(|o| o.data)
                    .ok_or_else(|| format!("{}: no parity object", p.display()))
            });
        match read {
            Ok(bytes) => ParityMsg::Shard {
                seq,
                shard: sh.shard,
                bytes,
            },
            Err(e) => ParityMsg::Failed(e),
        }
    }

    /// Rebuilds this rank's blob from the members' blobs and parity shards the plan
    /// names (every one received, whatever fails, so no message is left behind), checks
    /// every blob against the recorded hash, and installs it into this rank's L1.
    fn rebuild_from_parity(&mut self, seq: u64, ps: &ParitySource) -> Result<u64, LoadOutcome> {
        let me = self.me();
        let net = LoadOutcome::Level;
        let damaged = |msg: String| {
            LoadOutcome::Store(StoreError::new(
                lazarus_store::StoreErrorKind::Corrupt,
                None,
                format!("rebuilding rank {me}'s part of checkpoint {seq} from L3 parity: {msg}"),
            ))
        };
        let mut problem: Option<String> = None;
        let mut present: Vec<(usize, Vec<u8>)> = Vec::new();
        for (idx, u, local) in &ps.members {
            match l3::recv(&self.comm, *u, TAG_PARITY_REBUILD).map_err(net)? {
                ParityMsg::Blob {
                    seq: s,
                    index,
                    local: l,
                    bytes,
                } if s == seq && index == *idx && l == *local => {
                    let want = ps.hashes.get(*idx as usize).cloned().unwrap_or_default();
                    if l3::hash_hex(&bytes) == want {
                        present.push((*idx as usize, bytes));
                    } else {
                        problem.get_or_insert(format!(
                            "rank {u}'s checkpoint {local} differs from the one the parity was computed over"
                        ));
                    }
                }
                ParityMsg::Failed(m) => {
                    problem.get_or_insert(format!("rank {u} could not send its blob: {m}"));
                }
                other => {
                    return Err(LoadOutcome::Level(LevelError::Protocol {
                        rank: Rank(*u),
                        detail: format!("expected the blob of member {idx}, got {}", other.kind()),
                    }))
                }
            }
        }
        let mut shards: Vec<(usize, Vec<u8>)> = Vec::new();
        for sh in &ps.shards {
            let msg = if sh.holder == me {
                self.shard_msg(sh, seq)
            } else {
                l3::recv(&self.comm, sh.holder, TAG_PARITY_REBUILD).map_err(net)?
            };
            match msg {
                ParityMsg::Shard {
                    seq: s,
                    shard,
                    bytes,
                } if s == seq && shard == sh.shard => shards.push((shard as usize, bytes)),
                ParityMsg::Failed(m) => {
                    problem.get_or_insert(format!(
                        "parity shard {} on {} could not be read: {m}",
                        sh.shard, sh.host
                    ));
                }
                other => {
                    return Err(LoadOutcome::Level(LevelError::Protocol {
                        rank: Rank(sh.holder),
                        detail: format!("expected parity shard {}, got {}", sh.shard, other.kind()),
                    }))
                }
            }
        }
        if let Some(p) = problem {
            return Err(damaged(p));
        }
        let layout = parity::Layout {
            shard_bytes: usize::try_from(ps.shard_bytes).map_err(|e| damaged(e.to_string()))?,
            lens: ps.lens.clone(),
            m: ps.m as usize,
        };
        let present_refs: Vec<(usize, &[u8])> =
            present.iter().map(|(i, b)| (*i, b.as_slice())).collect();
        let shard_refs: Vec<(usize, &[u8])> =
            shards.iter().map(|(i, b)| (*i, b.as_slice())).collect();
        let rebuilt = parity::rebuild(&layout, &present_refs, &shard_refs)
            .map_err(|e| damaged(e.to_string()))?;
        let index = ps.index as usize;
        let blob = rebuilt
            .into_iter()
            .find(|(i, _)| *i == index)
            .map(|(_, b)| b)
            .ok_or_else(|| damaged(format!("member {index} was not rebuilt")))?;
        if Some(&l3::hash_hex(&blob)) != ps.hashes.get(index) {
            return Err(damaged(
                "the rebuilt blob does not match its recorded hash".into(),
            ));
        }
        let local = ps.locals.get(index).copied().unwrap_or(0);
        match CopyMsg::decode(Rank(me), &blob) {
            Ok(CopyMsg::Data {
                subject,
                local: l,
                chunks,
                files,
            }) if subject == me && l == local => {
                self.install_own(local, &chunks, &files)?;
                Ok(local)
            }
            Ok(_) => Err(damaged(
                "the rebuilt blob is not this rank's checkpoint".into(),
            )),
            Err(e) => Err(damaged(e.to_string())),
        }
    }

    /// Installs a checkpoint sent by another rank into this rank's own L1 repository.
    fn install_own(
        &mut self,
        local: u64,
        chunks: &[([u8; 32], Vec<u8>)],
        files: &[(String, Vec<u8>)],
    ) -> Result<(), LoadOutcome> {
        let repo = self.own_repo().map_err(LoadOutcome::Level)?;
        let reader = repo.reader().map_err(LoadOutcome::Store)?;
        let installed = partner::install(repo.backend().as_ref(), &reader, local, chunks, files)
            .map_err(LoadOutcome::Store)?;
        if installed == Installed::Diverged {
            return Err(LoadOutcome::Store(StoreError::new(
                lazarus_store::StoreErrorKind::Corrupt,
                Some(repo.path()),
                format!("checkpoint {local} exists with other content; cannot rebuild into it"),
            )));
        }
        Ok(())
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
    ///
    /// A checkpoint written by another number of ranks ([`FastPlan::world`]) is restored
    /// by redistribution: the holders of the old parts send each rank the pieces it
    /// needs (docs/LEVELS.md, "N→M").
    pub fn load(&mut self, plan: &FastPlan) -> Result<Vec<LoadedObject>, LoadOutcome> {
        if plan.resharded(self.comm.size()) {
            return self.load_resharded(plan);
        }
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
            if let RankSource::Parity(ps) = src {
                for (idx, u, local) in &ps.members {
                    if *u == me {
                        let msg = self
                            .own_reader()
                            .and_then(|reader| {
                                l3::blob(&reader, me, CheckpointId(*local)).map_err(LevelError::l1)
                            })
                            .map(|bytes| ParityMsg::Blob {
                                seq: plan.seq,
                                index: *idx,
                                local: *local,
                                bytes,
                            })
                            .unwrap_or_else(|e| ParityMsg::Failed(e.to_string()));
                        l3::send(&self.comm, r as u32, TAG_PARITY_REBUILD, &msg)
                            .map_err(LoadOutcome::Level)?;
                    }
                }
                for sh in &ps.shards {
                    if sh.holder == me && r as u32 != me {
                        let msg = self.shard_msg(sh, plan.seq);
                        l3::send(&self.comm, r as u32, TAG_PARITY_REBUILD, &msg)
                            .map_err(LoadOutcome::Level)?;
                    }
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
                self.install_own(*local, &chunks, &files)?;
                (dir_of(me, true), *local)
            }
            RankSource::Parity(ps) => {
                let ps = ps.clone();
                let local = self.rebuild_from_parity(plan.seq, &ps)?;
                (dir_of(me, true), local)
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
    /// A checkpoint of another world size holds state that cannot be redistributed (the
    /// same refusal as an N→M restore from the repository).
    NotRedistributable(lazarus_dist::DistError),
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
    Ok(scan_hosts(root)?.0)
}

/// Every committed L3 parity shard under `root` (every host directory), for tools
/// (`lazarus inspect --levels`, `verify --level l3`); unreadable entries are logged and
/// left out.
pub fn scan_parity(root: &Path) -> Result<Vec<ParityHeld>, StoreError> {
    Ok(scan_hosts(root)?.1)
}

/// The copies and parity shards of every host directory under `root` (none when `root`
/// does not exist).
fn scan_hosts(root: &Path) -> Result<(Vec<Held>, Vec<ParityHeld>), StoreError> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(StoreError::io(root, "listing node-local data", e)),
    };
    let (mut copies, mut shards) = (Vec::new(), Vec::new());
    for ent in rd.flatten() {
        if ent.file_type().is_ok_and(|t| t.is_dir()) {
            let (c, p) = scan_host(root, &ent.file_name().to_string_lossy())?;
            copies.extend(c);
            shards.extend(p);
        }
    }
    Ok((copies, shards))
}

/// A parity checkpoint's description from its COMMIT metadata; `None` (with the reason)
/// when a key is missing or malformed.
fn parity_held(
    host: &str,
    dir: &str,
    shard: u32,
    c: &lazarus_store::CheckpointSummary,
) -> Result<ParityHeld, String> {
    let get = |k: &str| c.app.get(k).ok_or_else(|| format!("no {k}"));
    let num = |k: &str| -> Result<u64, String> {
        get(k)?
            .parse::<u64>()
            .map_err(|_| format!("{k} is not a number"))
    };
    let list = |k: &str| -> Result<Vec<u64>, String> {
        get(k)?
            .split(',')
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{k} is not a list of numbers"))
            })
            .collect()
    };
    let small =
        |v: u64, what: &str| u32::try_from(v).map_err(|_| format!("{what} {v} out of range"));
    let members = list(PARITY_MEMBERS_KEY)?
        .into_iter()
        .map(|v| small(v, "member"))
        .collect::<Result<Vec<u32>, _>>()?;
    let hashes: Vec<String> = get(PARITY_HASHES_KEY)?
        .split(',')
        .map(str::to_string)
        .collect();
    let recorded = num(PARITY_SHARD_KEY)?;
    if recorded != u64::from(shard) {
        return Err(format!(
            "records shard {recorded}, its directory says {shard}"
        ));
    }
    let p = ParityHeld {
        host: host.to_string(),
        dir: dir.to_string(),
        shard,
        m: small(num(PARITY_M_KEY)?, "m")?,
        seq: num(SEQ_KEY)?,
        step: c.step,
        world: small(num(LEVEL_WORLD_KEY)?, "world")?,
        local: c.id.0,
        locals: list(PARITY_LOCALS_KEY)?,
        lens: list(PARITY_LENS_KEY)?,
        hashes,
        shard_bytes: num(PARITY_SHARD_BYTES_KEY)?,
        members,
        app: c.app.clone(),
    };
    let k = p.members.len();
    if k < 2
        || p.locals.len() != k
        || p.lens.len() != k
        || p.hashes.len() != k
        || p.m == 0
        || p.shard >= p.m
    {
        return Err(format!(
            "inconsistent group: {k} members, {} ids, {} lengths, {} hashes, shard {} of {}",
            p.locals.len(),
            p.lens.len(),
            p.hashes.len(),
            p.shard,
            p.m
        ));
    }
    Ok(p)
}

/// Every committed copy and parity shard in `<root>/<host>/`.
fn scan_host(root: &Path, host: &str) -> Result<Inventory, StoreError> {
    let dir = root.join(host);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(StoreError::io(&dir, "listing node-local data", e)),
    };
    let mut out = Vec::new();
    let mut parity = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().to_string();
        if let Some((_, shard)) = l3::parse_parity_dir(&name) {
            let found = RepoReader::open(&ent.path()).and_then(|r| r.newest_committed_candidates());
            match found {
                Ok((ok, damaged)) => {
                    for d in damaged {
                        tracing::warn!(
                            "levels: {}: damaged checkpoint {}: {}",
                            ent.path().display(),
                            d.checkpoint.0,
                            d.detail
                        );
                    }
                    for c in ok {
                        match parity_held(host, &name, shard, &c) {
                            Ok(p) => parity.push(p),
                            Err(e) => tracing::warn!(
                                "levels: {}: checkpoint {}: {e}; not used",
                                ent.path().display(),
                                c.id.0
                            ),
                        }
                    }
                }
                Err(e) => tracing::warn!("levels: {}: {e}; not used", ent.path().display()),
            }
            continue;
        }
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
    Ok((out, parity))
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
