//! N→M restore from fast levels: a checkpoint written by N ranks, held only on the
//! node-local levels (L1 copies, L2 partner copies, L3 parity), restored on M ≠ N ranks by
//! redistribution (`lazarus_dist::Reshard`, the same classification and the same refusal
//! as an N→M restore from the durable repository).
//!
//! The plan ([`crate::plan`]) names, for every old rank, one copy of its part on a host
//! where a current rank runs; that host's lowest rank is the copy's *holder*. An old part
//! without a copy is named *rebuilt from parity*: new rank `old mod M` (its *rebuilder*)
//! rebuilds it. Collective, every rank with the same plan:
//! 0. the parity rebuilds, by the same-size code (`NodeLevels::rebuild_from_parity`):
//!    the holders of the surviving members' L1 copies and of the shards send them to
//!    the rebuilder, which checks every header against its recorded hash and every
//!    rebuilt chunk against its slot, and installs the part into `rank-<old>` of its
//!    host; from then on it is the holder of that part, exactly like a copy. Damage it
//!    finds is reported in step 1's allgather;
//! 1. every holder reads the manifests of the copies it holds (digests checked by the
//!    store) and all ranks exchange the old parts' object lists (an allgather);
//! 2. every rank classifies them with `Reshard::new` (identical input, identical outcome:
//!    a state that is not redistributable is refused on every rank alike);
//! 3. every holder sends each new rank, in one [`PiecesMsg`], exactly the reads
//!    `Reshard::reads` lists for it from the parts it holds: byte ranges of the old DVec
//!    blocks overlapping the new rank's block, and every old copy of replicated objects;
//!    the bytes are read through the copy's verified manifest (a damaged chunk is found
//!    here and sent as [`PiecesMsg::Failed`]);
//! 4. every rank assembles its block from what it received, and nothing else.
//!
//! Every part goes over the communicator, also between ranks of one host: a rank never
//! reads another host's directory. A holder that cannot read a copy sends `Failed`, and
//! every rank still receives every message it expects, so no message is left behind;
//! the failure is damage, and every rank falls back together.

use crate::error::LevelError;
use crate::node::{LoadOutcome, NodeLevels};
use crate::plan::{FastPlan, RankSource};
use lazarus_dist::{PartRead, PartSource, Reshard};
use lazarus_format::{CheckpointId, LoadedObject, Manifest, ObjectInfo, Rank};
use lazarus_net::Tag;
use lazarus_store::{RepoReader, StoreError, StoreErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Checkpoint-space tag of N→M piece transfers at restore.
pub(crate) const TAG_PIECES: u32 = 0x310;

/// One read a holder serves: bytes of object `name` of old rank `old`'s part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// the old rank whose part it is
    pub old: u32,
    /// the object's name
    pub name: String,
    /// the first byte (0 for a whole object)
    pub offset: u64,
    /// true for a whole object (a replicated one), false for a byte range
    pub whole: bool,
    /// the bytes
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// A message of the N→M transfer (module docs). Decoded from another rank's bytes: the
/// receiver uses a piece only when it is one it asked for, at the offset and length it
/// asked ([`PiecesMsg::decode`]; fuzz target `levels_pieces_msg`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PiecesMsg {
    /// The pieces of checkpoint `seq` the receiver reads from the sender's copies.
    Pieces {
        /// the job-wide checkpoint number
        seq: u64,
        /// the pieces, in the order the receiver reads them
        pieces: Vec<Piece>,
    },
    /// The sender could not read a copy; its message.
    Failed(String),
}

impl PiecesMsg {
    /// Encodes for the wire (postcard).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing owned vectors and strings into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a message of `from`; refuses trailing bytes.
    pub fn decode(from: Rank, bytes: &[u8]) -> Result<PiecesMsg, LevelError> {
        let bad = |detail: String| LevelError::Protocol { rank: from, detail };
        let (msg, rest): (PiecesMsg, _) =
            postcard::take_from_bytes(bytes).map_err(|e| bad(format!("pieces message: {e}")))?;
        if !rest.is_empty() {
            return Err(bad(format!(
                "{} trailing bytes after a pieces message",
                rest.len()
            )));
        }
        Ok(msg)
    }
}

/// The key of a read: (old rank, name, offset, whole).
type Key = (u32, String, u64, bool);

fn key_of(r: &PartRead) -> Key {
    match r {
        PartRead::Object { old, name } => (old.0, name.clone(), 0, true),
        PartRead::Range {
            old, name, offset, ..
        } => (old.0, name.clone(), *offset, false),
    }
}

fn old_of(r: &PartRead) -> u32 {
    match r {
        PartRead::Object { old, .. } | PartRead::Range { old, .. } => old.0,
    }
}

/// A piece the assembly asked for that did not come (a holder broke the protocol).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotSent(String);

/// The pieces this rank received, served to `Reshard::assemble_from`.
struct Received<'a> {
    infos: &'a [Vec<ObjectInfo>],
    pieces: BTreeMap<Key, Vec<u8>>,
    /// Where each old part comes from, to name the holder that did not send a piece.
    sources: &'a [RankSource],
    /// The first piece not sent: (its holder, what).
    failed: Option<(Rank, String)>,
}

impl Received<'_> {
    fn missing(&mut self, old: Rank, what: String) -> NotSent {
        let holder = match self.sources.get(old.index()) {
            Some(RankSource::Remote { holder, .. }) => Rank(*holder),
            _ => old,
        };
        self.failed.get_or_insert_with(|| (holder, what.clone()));
        NotSent(what)
    }
}

impl PartSource for Received<'_> {
    type Error = NotSent;

    fn object(&mut self, rank: Rank, name: &str) -> Result<LoadedObject, NotSent> {
        let info = self
            .infos
            .get(rank.index())
            .and_then(|objs| objs.iter().find(|o| o.name == name))
            .cloned();
        match (
            info,
            self.pieces.remove(&(rank.0, name.to_string(), 0, true)),
        ) {
            (Some(info), Some(data)) => Ok(LoadedObject { info, data }),
            _ => Err(self.missing(rank, format!("object `{name}` of old {rank} was not sent"))),
        }
    }

    fn read_into(
        &mut self,
        rank: Rank,
        name: &str,
        offset: u64,
        out: &mut [u8],
    ) -> Result<bool, NotSent> {
        match self
            .pieces
            .remove(&(rank.0, name.to_string(), offset, false))
        {
            Some(b) if b.len() == out.len() => {
                out.copy_from_slice(&b);
                Ok(true)
            }
            _ => Err(self.missing(
                rank,
                format!(
                    "bytes {offset}..+{} of `{name}` of old {rank} were not sent",
                    out.len()
                ),
            )),
        }
    }
}

/// Damage found while restoring checkpoint `seq` N→M (every rank falls back).
fn damaged(seq: u64, me: u32, msg: String) -> LoadOutcome {
    LoadOutcome::Store(StoreError::new(
        StoreErrorKind::Corrupt,
        None,
        format!("redistributing checkpoint {seq} from the fast levels (rank {me}): {msg}"),
    ))
}

impl NodeLevels {
    /// [`NodeLevels::load`] of a checkpoint written by another number of ranks (module
    /// docs). Collective.
    pub(crate) fn load_resharded(
        &mut self,
        plan: &FastPlan,
    ) -> Result<Vec<LoadedObject>, LoadOutcome> {
        let comm = self.comm().clone();
        let (me, size) = (comm.rank().0, comm.size());
        let seq = plan.seq;
        let net = LoadOutcome::Level;
        // 0. Old parts that only parity holds: rebuilt first (the same-size rebuild), each
        //    by its rebuilder into `rank-<old>` of its host, which then holds it like a
        //    copy. A rebuild that finds damage is reported in step 1's allgather, so every
        //    rank falls back together.
        let (sources, rebuild_failed) = self.rebuild_parity_parts(plan)?;
        // 1. The manifests of the copies this rank holds.
        let mut mine: Vec<(u32, RepoReader, Manifest)> = Vec::new();
        // Object lists as JSON (the manifest's own encoding: `ObjectInfo` flattens its
        // kind, which a non-self-describing wire format cannot carry).
        let mut listed: Result<Vec<(u32, String)>, String> = match rebuild_failed {
            Some(m) => Err(m),
            None => Ok(Vec::new()),
        };
        for (s, src) in sources.iter().enumerate() {
            let RankSource::Remote {
                holder,
                host,
                dir,
                local,
            } = src
            else {
                listed = Err(format!("old rank {s} has no copy to send"));
                continue;
            };
            if *holder != me {
                continue;
            }
            let p = self.host_dir(host).join(dir);
            let read = RepoReader::open(&p).and_then(|reader| {
                crate::node::check_planned(&reader, *local, seq, s as u32)?;
                let mut m = reader.manifests(CheckpointId(*local))?;
                match (m.pop(), m.is_empty()) {
                    (Some(man), true) => Ok((reader, man)),
                    _ => Err(StoreError::new(
                        StoreErrorKind::Corrupt,
                        Some(&p),
                        format!("checkpoint {local} is not a one-rank level checkpoint"),
                    )),
                }
            });
            match read {
                Ok((reader, man)) => {
                    let infos: Vec<&ObjectInfo> = man.objects.iter().map(|o| &o.info).collect();
                    match (&mut listed, serde_json::to_string(&infos)) {
                        (Ok(l), Ok(json)) => l.push((s as u32, json)),
                        (Ok(_), Err(e)) => listed = Err(format!("old rank {s}'s objects: {e}")),
                        (Err(_), _) => {}
                    }
                    mine.push((s as u32, reader, man));
                }
                Err(e) => {
                    if listed.is_ok() {
                        listed = Err(format!("old rank {s}'s copy in {}: {e}", p.display()));
                    }
                }
            }
        }
        let all = comm
            .allgather(&listed)
            .map_err(|e| net(LevelError::Net(e)))?;
        let mut infos: Vec<Option<Vec<ObjectInfo>>> = vec![None; plan.world as usize];
        for (r, l) in all.into_iter().enumerate() {
            match l {
                Ok(parts) => {
                    for (s, json) in parts {
                        let objs: Vec<ObjectInfo> = serde_json::from_str(&json).map_err(|e| {
                            net(LevelError::Protocol {
                                rank: Rank(r as u32),
                                detail: format!("old rank {s}'s object list: {e}"),
                            })
                        })?;
                        match infos.get_mut(s as usize) {
                            Some(slot @ None) => *slot = Some(objs),
                            _ => {
                                return Err(net(LevelError::Protocol {
                                    rank: Rank(r as u32),
                                    detail: format!("listed old rank {s}'s part unexpectedly"),
                                }))
                            }
                        }
                    }
                }
                Err(m) => return Err(damaged(seq, me, format!("rank {r}: {m}"))),
            }
        }
        let Some(infos) = infos.into_iter().collect::<Option<Vec<_>>>() else {
            return Err(damaged(seq, me, "an old rank's part was not listed".into()));
        };
        // 2. The same classification (and the same refusal) as from the repository.
        let reshard = Reshard::new(&infos, size).map_err(LoadOutcome::NotRedistributable)?;
        // 3. Holders send every rank what it reads from their copies.
        let mut own: Option<PiecesMsg> = None;
        if !mine.is_empty() {
            for t in 0..size {
                let reads = reshard
                    .reads(Rank(t))
                    .map_err(LoadOutcome::NotRedistributable)?;
                let wanted: Vec<&PartRead> = reads
                    .iter()
                    .filter(|r| mine.iter().any(|(s, ..)| *s == old_of(r)))
                    .collect();
                if wanted.is_empty() {
                    continue;
                }
                let msg = match read_pieces(&mine, &wanted) {
                    Ok(pieces) => PiecesMsg::Pieces { seq, pieces },
                    Err(e) => PiecesMsg::Failed(e),
                };
                if t == me {
                    own = Some(msg);
                } else {
                    comm.send_bytes(Rank(t), Tag::checkpoint(TAG_PIECES), msg.encode())
                        .map_err(|e| net(LevelError::Net(e)))?;
                }
            }
        }
        // 4. Receive from every holder of a part this rank reads, then assemble.
        let reads = reshard
            .reads(Rank(me))
            .map_err(LoadOutcome::NotRedistributable)?;
        let holders: BTreeSet<u32> = reads
            .iter()
            .filter_map(|r| match sources.get(old_of(r) as usize) {
                Some(RankSource::Remote { holder, .. }) => Some(*holder),
                _ => None,
            })
            .collect();
        let wanted: BTreeMap<Key, u64> = reads
            .iter()
            .map(|r| {
                let len = match r {
                    PartRead::Range { len, .. } => *len,
                    PartRead::Object { .. } => u64::MAX,
                };
                (key_of(r), len)
            })
            .collect();
        let mut problem: Option<String> = None;
        let mut pieces: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
        for h in holders {
            let msg = if h == me {
                own.take().unwrap_or(PiecesMsg::Pieces {
                    seq,
                    pieces: Vec::new(),
                })
            } else {
                let env = comm
                    .recv_envelope(Some(Rank(h)), Some(Tag::checkpoint(TAG_PIECES)))
                    .map_err(|e| net(LevelError::Net(e)))?;
                PiecesMsg::decode(Rank(h), &env.payload).map_err(net)?
            };
            match msg {
                PiecesMsg::Pieces { seq: s, pieces: ps } if s == seq => {
                    for p in ps {
                        let key = (p.old, p.name, p.offset, p.whole);
                        let fits = match wanted.get(&key) {
                            Some(&u64::MAX) => p.whole,
                            Some(&len) => !p.whole && p.bytes.len() as u64 == len,
                            None => false,
                        };
                        let from_holder = matches!(
                            sources.get(p.old as usize),
                            Some(RankSource::Remote { holder, .. }) if *holder == h
                        );
                        if !fits || !from_holder {
                            return Err(net(LevelError::Protocol {
                                rank: Rank(h),
                                detail: format!(
                                    "sent a piece of `{}` of old rank {} that was not asked for",
                                    key.1, key.0
                                ),
                            }));
                        }
                        pieces.insert(key, p.bytes);
                    }
                }
                PiecesMsg::Failed(m) => {
                    problem.get_or_insert(format!("rank {h} could not read its copies: {m}"));
                }
                PiecesMsg::Pieces { seq: s, .. } => {
                    return Err(net(LevelError::Protocol {
                        rank: Rank(h),
                        detail: format!("sent pieces of checkpoint {s}, not {seq}"),
                    }))
                }
            }
        }
        if let Some(p) = problem {
            return Err(damaged(seq, me, p));
        }
        let mut src = Received {
            infos: &infos,
            pieces,
            sources: &sources,
            failed: None,
        };
        match reshard.assemble_from(Rank(me), &mut src) {
            Ok(objects) => Ok(objects),
            Err(e) => match src.failed {
                Some((holder, m)) => Err(net(LevelError::Protocol {
                    rank: holder,
                    detail: format!("redistributing checkpoint {seq} to rank {me}: {m}"),
                })),
                None => Err(LoadOutcome::NotRedistributable(e)),
            },
        }
    }
}

impl NodeLevels {
    /// Step 0 of [`NodeLevels::load_resharded`] (collective): every old part the plan
    /// rebuilds from parity is rebuilt by its [`crate::plan::ParitySource::rebuilder`]
    /// with the same code as a same-size rebuild (the members' copies and the shards
    /// sent to it, every chunk checked against its recorded hash, installed into
    /// `rank-<old>` of its host). Returns the plan's sources with each rebuilt part as a
    /// copy its rebuilder holds, and the damage this rank found rebuilding (every rank
    /// learns of it in the next allgather).
    fn rebuild_parity_parts(
        &mut self,
        plan: &FastPlan,
    ) -> Result<(Vec<RankSource>, Option<String>), LoadOutcome> {
        let me = self.comm().rank().0;
        // Every failure here is folded into the damage reported in step 1's allgather:
        // a rank that returned early would skip it while the others wait in it (found in
        // review: a protocol error of a rebuild hung every rank).
        let mut failed = None;
        for src in &plan.sources {
            if let RankSource::Parity(ps) = src {
                if let Err(e) = self.send_parity_inputs(plan.seq, ps) {
                    failed.get_or_insert(e.to_string());
                }
            }
        }
        let mut sources = plan.sources.clone();
        for (s, src) in plan.sources.iter().enumerate() {
            let RankSource::Parity(ps) = src else {
                continue;
            };
            let host = self.hosts().get(ps.rebuilder as usize).cloned();
            let local = ps.locals.get(ps.index as usize).copied();
            let (Some(host), Some(local)) = (host, local) else {
                failed.get_or_insert(format!("old rank {s}: the parity plan names no rebuilder"));
                continue;
            };
            if ps.rebuilder == me {
                if let Err(e) = self.rebuild_from_parity(plan.seq, s as u32, ps) {
                    failed.get_or_insert(e.to_string());
                }
            }
            sources[s] = RankSource::Remote {
                holder: ps.rebuilder,
                host,
                dir: format!("rank-{s}"),
                local,
            };
        }
        Ok((sources, failed))
    }

    /// After a level round every rank completed: when the round wrote every configured
    /// fast level (L1, and L2 / L3 when they are on), the first time in this world, the
    /// lowest rank of each host deletes the copies in the host's directory that no rank
    /// of this world writes: `rank-<r>` of a rank that is not on this host (or no longer
    /// exists, after N→M) and `partner-of-<r>` that this host does not mirror any more.
    /// From then on the newest checkpoint has the protection the job asked for, so those
    /// copies of an older world (or of ranks placed elsewhere) would only fill the RAM
    /// file system. Parity repositories are left to L3's own retention. Failures are
    /// logged: the copies are then only wasted space.
    pub(crate) fn tidy_after(&mut self, due: crate::Due) {
        let (l2, l3) = (self.levels().has_l2(), self.levels().has_l3());
        if !due.l1 || (l2 && !due.l2) || (l3 && !due.l3) || !self.first_tidy() {
            return;
        }
        let hosts = self.hosts().to_vec();
        let me = self.comm().rank().0 as usize;
        let host = &hosts[me];
        if hosts.iter().position(|h| h == host) != Some(me) {
            return;
        }
        let dir = self.host_dir(host);
        let used = |r: u32, primary: bool| {
            let here = |x: u32| hosts.get(x as usize) == Some(host);
            if primary {
                here(r)
            } else {
                l2 && matches!(self.partners().get(r as usize), Some(Some(p)) if here(*p))
            }
        };
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().to_string();
            let Some((r, primary)) = crate::node::parse_dir(&name) else {
                continue;
            };
            if used(r, primary) {
                continue;
            }
            match std::fs::remove_dir_all(ent.path()) {
                Ok(()) => tracing::info!(
                    "levels: removed {}: no rank of this world writes it",
                    ent.path().display()
                ),
                Err(e) => tracing::warn!("levels: removing {}: {e}", ent.path().display()),
            }
        }
    }
}

/// Reads `wanted` from the copies this rank holds, through their verified manifests.
fn read_pieces(
    mine: &[(u32, RepoReader, Manifest)],
    wanted: &[&PartRead],
) -> Result<Vec<Piece>, String> {
    let mut out = Vec::with_capacity(wanted.len());
    for r in wanted {
        let s = old_of(r);
        let Some((_, reader, man)) = mine.iter().find(|(o, ..)| *o == s) else {
            return Err(format!("old rank {s}'s part is not held here"));
        };
        let at = |e: StoreError| format!("old rank {s}'s copy in {}: {e}", reader.path().display());
        match r {
            PartRead::Object { name, .. } => {
                let o = reader.load_object(man, name).map_err(at)?;
                out.push(Piece {
                    old: s,
                    name: name.clone(),
                    offset: 0,
                    whole: true,
                    bytes: o.data,
                });
            }
            PartRead::Range {
                name, offset, len, ..
            } => {
                let n = usize::try_from(*len).map_err(|e| e.to_string())?;
                let mut bytes = vec![0u8; n];
                reader
                    .read_object_range_into(man, name, *offset, &mut bytes)
                    .map_err(at)?;
                out.push(Piece {
                    old: s,
                    name: name.clone(),
                    offset: *offset,
                    whole: false,
                    bytes,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pieces_round_trip_and_trailing_bytes_are_refused() {
        let m = PiecesMsg::Pieces {
            seq: 7,
            pieces: vec![Piece {
                old: 3,
                name: "grid".into(),
                offset: 64,
                whole: false,
                bytes: vec![1, 2, 3],
            }],
        };
        let mut b = m.encode();
        assert_eq!(PiecesMsg::decode(Rank(1), &b).unwrap(), m);
        b.push(0);
        let e = PiecesMsg::decode(Rank(1), &b).unwrap_err().to_string();
        assert!(e.contains("trailing"), "{e}");
        let f = PiecesMsg::Failed("disk".into());
        assert_eq!(PiecesMsg::decode(Rank(1), &f.encode()).unwrap(), f);
    }

    proptest! {
        /// Another rank's bytes decode or are refused, never panic; what decodes
        /// re-encodes to itself.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(m) = PiecesMsg::decode(Rank(2), &bytes) {
                prop_assert_eq!(PiecesMsg::decode(Rank(2), &m.encode()).unwrap(), m);
            }
        }
    }
}
