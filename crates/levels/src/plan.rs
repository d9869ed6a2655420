//! The fast-level restore plan: from the copies every host holds, which job-wide
//! checkpoints can be rebuilt on every rank, and from where. Pure: every rank computes
//! the same plan from the same exchanged inventory, so the plan needs no broadcast.

use crate::history::LINEAGE_KEY;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One committed copy of one rank's part of one job-wide checkpoint, as the host holding
/// it reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The host whose node-local directory holds it.
    pub host: String,
    /// The repository directory under the host's (`rank-<r>`, `partner-of-<r>`).
    pub dir: String,
    /// The rank whose part it is.
    pub subject: u32,
    /// True for the rank's own L1 repository, false for a partner's mirror.
    pub primary: bool,
    /// The job-wide checkpoint number.
    pub seq: u64,
    /// The step recorded in COMMIT.
    pub step: u64,
    /// The number of ranks that wrote the checkpoint.
    pub world: u32,
    /// The checkpoint's id in that repository.
    pub local: u64,
    /// The program's and runtime's COMMIT metadata.
    pub app: BTreeMap<String, String>,
}

/// One committed L3 parity shard of one group's checkpoint, as the host holding it
/// reported it (from the COMMIT of its `parity-<g>-<j>` repository).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParityHeld {
    /// The host whose node-local directory holds it.
    pub host: String,
    /// The repository directory under the host's (`parity-<g>-<j>`).
    pub dir: String,
    /// The shard's index j (0..m).
    pub shard: u32,
    /// The number of parity shards of the group.
    pub m: u32,
    /// The job-wide checkpoint number.
    pub seq: u64,
    /// The step recorded in COMMIT.
    pub step: u64,
    /// The number of ranks of the job that wrote the checkpoint.
    pub world: u32,
    /// The checkpoint's id in the parity repository.
    pub local: u64,
    /// The group's members (global ranks), by member index.
    pub members: Vec<u32>,
    /// Each member's checkpoint id in its L1 repository, by member index.
    pub locals: Vec<u64>,
    /// Each member's region length (the bytes encoded for it), by member index.
    pub lens: Vec<u64>,
    /// Each member's header BLAKE3 hash (hex), by member index.
    pub hashes: Vec<String>,
    /// Bytes per shard.
    pub shard_bytes: u64,
    /// The program's and runtime's COMMIT metadata.
    pub app: BTreeMap<String, String>,
}

/// A parity shard a parity rebuild reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSource {
    /// The shard's index.
    pub shard: u32,
    /// The rank that sends it (the lowest rank on its host).
    pub holder: u32,
    /// That host.
    pub host: String,
    /// The parity repository directory on it.
    pub dir: String,
    /// The checkpoint's id there.
    pub local: u64,
}

/// A surviving group member's L1 copy a parity rebuild reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSource {
    /// The member's index in the group.
    pub index: u32,
    /// The member (the rank, of the world that wrote the checkpoint, whose part it is).
    pub rank: u32,
    /// Its checkpoint id in the member's L1 repository, as the parity recorded it.
    pub local: u64,
    /// The current rank that reads the copy and sends it: the member itself when the
    /// world size is unchanged, else the holder of its copy (the lowest rank on its host).
    pub sender: u32,
    /// The host whose node-local directory holds the copy.
    pub host: String,
    /// The repository directory there (`rank-<rank>`).
    pub dir: String,
}

/// How one rank's part is rebuilt from its group's parity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParitySource {
    /// The rebuilt rank's member index in the group.
    pub index: u32,
    /// The current rank that rebuilds the part and keeps it in its host's directory:
    /// the rank itself when the world size is unchanged; for a checkpoint of another
    /// world size (N→M), new rank `old rank mod M`, which then serves the rebuilt part's
    /// pieces like the holder of a copy.
    pub rebuilder: u32,
    /// Surviving members whose L1 copy is sent to the rebuilder.
    pub members: Vec<MemberSource>,
    /// Parity shards that are sent; members + shards = k.
    pub shards: Vec<ShardSource>,
    /// Each member's region length, by member index (k = its length).
    pub lens: Vec<u64>,
    /// Each member's header hash (hex), by member index.
    pub hashes: Vec<String>,
    /// Each member's L1 checkpoint id, by member index.
    pub locals: Vec<u64>,
    /// Bytes per shard.
    pub shard_bytes: u64,
    /// Parity shards of the group.
    pub m: u32,
}

/// Where one rank reads its part of a planned checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RankSource {
    /// A directory on the rank's own host: read directly.
    Local {
        /// the host directory's child repository (`rank-<r>` or `partner-of-<r>`)
        dir: String,
        /// the checkpoint's id there
        local: u64,
    },
    /// A copy on another host: `holder` (the lowest rank on that host) sends it.
    Remote {
        /// the rank that sends it
        holder: u32,
        /// that host
        host: String,
        /// the repository directory on it
        dir: String,
        /// the checkpoint's id there
        local: u64,
    },
    /// Rebuilt from the group's surviving members and parity shards (L3).
    Parity(ParitySource),
}

/// A job-wide checkpoint every rank can get from the fast levels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastPlan {
    /// The job-wide checkpoint number.
    pub seq: u64,
    /// Its step.
    pub step: u64,
    /// Its COMMIT metadata (of the lowest rank's copy).
    pub app: BTreeMap<String, String>,
    /// 1 when every rank reads its own node-local copy, 2 when a part must come from a
    /// partner copy, 3 when a part is rebuilt from parity. For a checkpoint of another
    /// world size: 1 when every old part is read from its rank's own L1 copy, 2 when one
    /// comes from a partner copy, 3 when one is rebuilt from parity.
    pub level: u8,
    /// The number of ranks that wrote it. When it differs from the current world, the
    /// checkpoint is restored by redistribution (N→M): `sources` is indexed by old rank;
    /// a [`RankSource::Remote`] names a copy whose holder sends the new ranks the pieces
    /// of that part they need, a [`RankSource::Parity`] an old part that its
    /// [`ParitySource::rebuilder`] first rebuilds from parity and then serves alike.
    pub world: u32,
    /// Per rank (per old rank when `world` differs from the current one), where its part
    /// comes from.
    pub sources: Vec<RankSource>,
}

impl FastPlan {
    /// True when the checkpoint was written by another number of ranks than `size` and
    /// is restored by redistribution.
    pub fn resharded(&self, size: u32) -> bool {
        self.world != size
    }

    /// The ranks whose part comes from another host (a partner copy or parity).
    pub fn rebuilt(&self) -> Vec<u32> {
        (0..self.sources.len() as u32)
            .filter(|r| !matches!(self.sources[*r as usize], RankSource::Local { .. }))
            .collect()
    }

    /// The (old) ranks whose part is read from a partner copy (an L2 mirror).
    pub fn from_partner_copies(&self) -> Vec<u32> {
        (0..self.sources.len() as u32)
            .filter(|r| match &self.sources[*r as usize] {
                RankSource::Local { dir, .. } | RankSource::Remote { dir, .. } => {
                    dir.starts_with("partner-of-")
                }
                RankSource::Parity(_) => false,
            })
            .collect()
    }

    /// The ranks whose part is rebuilt from parity.
    pub fn from_parity(&self) -> Vec<u32> {
        (0..self.sources.len() as u32)
            .filter(|r| matches!(self.sources[*r as usize], RankSource::Parity(_)))
            .collect()
    }
}

/// The checkpoints rebuildable on `hosts.len()` ranks (rank r on `hosts[r]`), newest
/// first. A checkpoint is planned only when every rank's part has a copy, all copies
/// agree on its step, world and lineage ([`LINEAGE_KEY`]), and a copy on another host has a live holder there.
/// A checkpoint of another world size (N→M) is planned when every old rank's part has a
/// copy on a host where a rank of the current world runs (that host's lowest rank holds
/// it; [`FastPlan::world`]) or, with [`plan_with_parity`], can be rebuilt from its
/// group's parity.
/// Each rank prefers its own primary copy, then any copy on its host, then a remote one
/// (the primary before a mirror, then the lowest host name: deterministic).
pub fn plan(held: &[Held], hosts: &[String]) -> Vec<FastPlan> {
    plan_with_parity(held, &[], hosts)
}

/// [`plan`] with L3: a rank without a copy of its part on a live host is rebuilt from
/// its parity group when the group's members that read their own node-local copy
/// (checkpoint ids as the parity recorded them) plus the parity shards on live hosts are
/// at least k. The parity shards must all agree on the group (members, ids, lengths,
/// hashes); shards that disagree with the first are not used.
pub fn plan_with_parity(held: &[Held], parity: &[ParityHeld], hosts: &[String]) -> Vec<FastPlan> {
    let size = hosts.len() as u32;
    let mut holder_of: BTreeMap<&str, u32> = BTreeMap::new();
    for (r, h) in hosts.iter().enumerate() {
        holder_of.entry(h.as_str()).or_insert(r as u32);
    }
    let seqs: BTreeSet<u64> = held.iter().map(|h| h.seq).collect();
    let mut out = Vec::new();
    for &seq in seqs.iter().rev() {
        let copies: Vec<&Held> = held.iter().filter(|h| h.seq == seq).collect();
        let first = copies[0];
        let lineage = first.app.get(LINEAGE_KEY);
        if let Some(other) = copies.iter().find(|c| {
            c.step != first.step || c.world != first.world || c.app.get(LINEAGE_KEY) != lineage
        }) {
            // Two runs that share a job-wide number (docs/LEVELS.md, "One history"): never
            // mix their parts.
            tracing::warn!(
                "levels: the copies of checkpoint {seq} disagree on its step, world or lineage ({}/{}: step {}, {} ranks; {}/{}: step {}, {} ranks); not used",
                first.host,
                first.dir,
                first.step,
                first.world,
                other.host,
                other.dir,
                other.step,
                other.world
            );
            continue;
        }
        // The parity shards of this checkpoint.
        let shards: Vec<&ParityHeld> = parity
            .iter()
            .filter(|p| {
                p.seq == seq
                    && p.step == first.step
                    && p.world == first.world
                    && p.app.get(LINEAGE_KEY) == lineage
            })
            .collect();
        if first.world != size {
            if let Some(p) = plan_resharded(seq, &copies, &shards, hosts, &holder_of) {
                out.push(p);
            }
            continue;
        }
        let mut sources: Vec<Option<RankSource>> = Vec::with_capacity(size as usize);
        let mut level = 1u8;
        let mut app = None;
        for r in 0..size {
            let mine: Vec<&&Held> = copies.iter().filter(|c| c.subject == r).collect();
            let rank_host = &hosts[r as usize];
            let local = mine
                .iter()
                .filter(|c| &c.host == rank_host)
                .min_by_key(|c| (!c.primary, c.dir.clone()));
            let src = match local {
                Some(c) => {
                    if !c.primary {
                        level = 2;
                    }
                    app.get_or_insert_with(|| c.app.clone());
                    RankSource::Local {
                        dir: c.dir.clone(),
                        local: c.local,
                    }
                }
                None => {
                    let remote = mine
                        .iter()
                        .filter_map(|c| holder_of.get(c.host.as_str()).map(|h| (c, *h)))
                        .min_by_key(|(c, _)| (!c.primary, c.host.clone(), c.dir.clone()));
                    match remote {
                        Some((c, holder)) => {
                            // The rank's own L1 copy read from another host (placed
                            // elsewhere after a restart) is still L1.
                            if !c.primary {
                                level = 2;
                            }
                            app.get_or_insert_with(|| c.app.clone());
                            RankSource::Remote {
                                holder,
                                host: c.host.clone(),
                                dir: c.dir.clone(),
                                local: c.local,
                            }
                        }
                        None => {
                            sources.push(None);
                            continue;
                        }
                    }
                }
            };
            sources.push(Some(src));
        }
        // L3: the ranks left without a copy, from their group's parity.
        for r in 0..size {
            if sources[r as usize].is_some() {
                continue;
            }
            if let Some((src, a)) = from_parity(r, r, &shards, &sources, hosts, &holder_of) {
                level = 3;
                app.get_or_insert(a);
                sources[r as usize] = Some(RankSource::Parity(src));
            }
        }
        if let Some(sources) = sources.into_iter().collect::<Option<Vec<_>>>() {
            out.push(FastPlan {
                seq,
                step: first.step,
                app: app.unwrap_or_default(),
                level,
                world: size,
                sources,
            });
        }
    }
    out
}

/// Checkpoint `seq` of another world size (its copies all agree on step and world): for
/// every old rank, its copy on a live host (the primary before a mirror, then the lowest
/// host name), held by that host's lowest current rank; an old rank without one is
/// rebuilt from its group's parity (`shards`) by new rank `old rank mod M` when the
/// group's members with a primary copy on a live host plus the shards there make k.
fn plan_resharded(
    seq: u64,
    copies: &[&Held],
    shards: &[&ParityHeld],
    hosts: &[String],
    holder_of: &BTreeMap<&str, u32>,
) -> Option<FastPlan> {
    let first = copies.first()?;
    let size = hosts.len() as u32;
    // Every old rank needs a copy or a parity group: a world larger than the ranks the
    // copies and shards name (or of 0: a record no round writes) plans nothing, before
    // anything is sized by it (the inventory comes from other ranks; a world of 4·10⁹
    // used to allocate and loop per old rank).
    let named: BTreeSet<u32> = copies
        .iter()
        .map(|c| c.subject)
        .chain(shards.iter().flat_map(|p| p.members.iter().copied()))
        .collect();
    if first.world == 0 || first.world as usize > named.len() {
        return None;
    }
    let mut level = 1u8;
    let mut sources: Vec<Option<RankSource>> = Vec::with_capacity(first.world as usize);
    let mut app = None;
    for s in 0..first.world {
        let copy = copies
            .iter()
            .filter(|c| c.subject == s)
            .filter_map(|c| holder_of.get(c.host.as_str()).map(|h| (c, *h)))
            .min_by_key(|(c, _)| (!c.primary, c.host.clone(), c.dir.clone()));
        sources.push(copy.map(|(c, holder)| {
            if !c.primary {
                level = 2;
            }
            app.get_or_insert_with(|| c.app.clone());
            RankSource::Remote {
                holder,
                host: c.host.clone(),
                dir: c.dir.clone(),
                local: c.local,
            }
        }));
    }
    // L3: the old parts left without a copy, from their group's parity.
    for s in 0..first.world {
        if sources[s as usize].is_some() || size == 0 {
            continue;
        }
        let (src, a) = from_parity(s, s % size, shards, &sources, hosts, holder_of)?;
        level = 3;
        app.get_or_insert(a);
        sources[s as usize] = Some(RankSource::Parity(src));
    }
    Some(FastPlan {
        seq,
        step: first.step,
        app: app.unwrap_or_default(),
        level,
        world: first.world,
        sources: sources.into_iter().collect::<Option<Vec<_>>>()?,
    })
}

/// Rank r's part (of the world that wrote the checkpoint) from its group's parity,
/// rebuilt by current rank `rebuilder`, if the group's surviving members and the shards
/// on live hosts make k. A member counts when its own primary copy (`rank-<u>`, the
/// checkpoint id the parity recorded) is planned: read by the member itself
/// ([`RankSource::Local`], same world size) or by the holder of that copy
/// ([`RankSource::Remote`], N→M). One helper for both, so the two can never disagree on
/// what parity can rebuild.
fn from_parity(
    r: u32,
    rebuilder: u32,
    shards: &[&ParityHeld],
    sources: &[Option<RankSource>],
    hosts: &[String],
    holder_of: &BTreeMap<&str, u32>,
) -> Option<(ParitySource, BTreeMap<String, String>)> {
    let mine: Vec<&&ParityHeld> = shards.iter().filter(|p| p.members.contains(&r)).collect();
    let first = mine.first()?;
    let k = first.members.len();
    let consistent = |p: &ParityHeld| {
        p.members == first.members
            && p.locals == first.locals
            && p.lens == first.lens
            && p.hashes == first.hashes
            && p.shard_bytes == first.shard_bytes
            && p.m == first.m
            && (p.shard as usize) < p.m as usize
    };
    if k < 2 || first.locals.len() != k || first.lens.len() != k || first.hashes.len() != k {
        return None;
    }
    let index = first.members.iter().position(|m| *m == r)? as u32;
    let mut members = Vec::new();
    for (i, &u) in first.members.iter().enumerate() {
        if u == r || u as usize >= sources.len() {
            continue;
        }
        // `sources` is indexed by the world that wrote the checkpoint: its length is the
        // current world's exactly when the size is unchanged.
        let (sender, host, dir, local) = match &sources[u as usize] {
            // Same world size: the member reads its own copy on its own host.
            Some(RankSource::Local { dir, local }) if sources.len() == hosts.len() => {
                (u, hosts[u as usize].clone(), dir, *local)
            }
            // N→M: the holder of the member's copy reads it.
            Some(RankSource::Remote {
                holder,
                host,
                dir,
                local,
            }) if sources.len() != hosts.len() => (*holder, host.clone(), dir, *local),
            _ => continue,
        };
        if *dir == format!("rank-{u}") && local == first.locals[i] {
            members.push(MemberSource {
                index: i as u32,
                rank: u,
                local,
                sender,
                host,
                dir: dir.clone(),
            });
        }
    }
    let mut used = BTreeSet::new();
    let mut out_shards = Vec::new();
    let mut ordered: Vec<&&&ParityHeld> = mine.iter().filter(|p| consistent(p)).collect();
    ordered.sort_by_key(|p| (p.shard, p.host.clone()));
    for p in ordered {
        if members.len() + out_shards.len() >= k {
            break;
        }
        let Some(&holder) = holder_of.get(p.host.as_str()) else {
            continue;
        };
        if hosts.get(holder as usize) != Some(&p.host) || !used.insert(p.shard) {
            continue;
        }
        out_shards.push(ShardSource {
            shard: p.shard,
            holder,
            host: p.host.clone(),
            dir: p.dir.clone(),
            local: p.local,
        });
    }
    members.truncate(k.saturating_sub(out_shards.len()));
    if members.len() + out_shards.len() < k {
        return None;
    }
    Some((
        ParitySource {
            index,
            rebuilder,
            members,
            shards: out_shards,
            lens: first.lens.clone(),
            hashes: first.hashes.clone(),
            locals: first.locals.clone(),
            shard_bytes: first.shard_bytes,
            m: first.m,
        },
        first.app.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn held(host: &str, subject: u32, primary: bool, seq: u64) -> Held {
        Held {
            host: host.into(),
            dir: if primary {
                format!("rank-{subject}")
            } else {
                format!("partner-of-{subject}")
            },
            subject,
            primary,
            seq,
            step: seq * 10,
            world: 4,
            local: seq,
            app: BTreeMap::new(),
        }
    }

    fn hosts() -> Vec<String> {
        ["a", "a", "b", "b"].iter().map(|s| s.to_string()).collect()
    }

    /// Ranks 0,1 on a; 2,3 on b; partner of r is on the other host.
    fn full(seq: u64) -> Vec<Held> {
        let mut v = Vec::new();
        for r in 0..4u32 {
            let (own, other) = if r < 2 { ("a", "b") } else { ("b", "a") };
            v.push(held(own, r, true, seq));
            v.push(held(other, r, false, seq));
        }
        v
    }

    #[test]
    fn all_primaries_present_is_level_one() {
        let p = plan(&full(5), &hosts());
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].seq, p[0].level), (5, 1));
        assert!(p[0].rebuilt().is_empty());
    }

    #[test]
    fn lost_host_is_rebuilt_from_partner_copies_on_the_survivor() {
        let survivors: Vec<Held> = full(5).into_iter().filter(|h| h.host == "a").collect();
        let p = plan(&survivors, &hosts());
        assert_eq!(p[0].level, 2);
        assert_eq!(p[0].rebuilt(), vec![2, 3]);
        assert_eq!(
            p[0].sources[2],
            RankSource::Remote {
                holder: 0,
                host: "a".into(),
                dir: "partner-of-2".into(),
                local: 5
            }
        );
    }

    /// Ranks 0 and 2 swapped hosts after a restart: each reads its own L1 copy from the
    /// other host. That is still L1 (it was reported as a partner copy).
    #[test]
    fn a_remote_primary_copy_is_not_reported_as_a_partner_copy() {
        let primaries: Vec<Held> = full(5).into_iter().filter(|h| h.primary).collect();
        let swapped: Vec<String> = ["b", "a", "a", "b"].iter().map(|s| s.to_string()).collect();
        let p = plan(&primaries, &swapped);
        assert_eq!((p[0].seq, p[0].level), (5, 1));
        assert_eq!(p[0].rebuilt(), vec![0, 2]);
        assert_eq!(
            p[0].sources[0],
            RankSource::Remote {
                holder: 1,
                host: "a".into(),
                dir: "rank-0".into(),
                local: 5
            }
        );
    }

    #[test]
    fn a_torn_checkpoint_is_not_planned_and_the_older_one_is() {
        let mut h = full(4);
        // Checkpoint 5 reached rank 0 and its partner only.
        h.push(held("a", 0, true, 5));
        h.push(held("b", 0, false, 5));
        let p = plan(&h, &hosts());
        assert_eq!(p.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![4]);
    }

    /// Regression (review of the level codecs): a copy whose COMMIT records a world of 0
    /// was planned as an N→M restore of no old rank at all, and one recording 4·10⁹
    /// ranks made every rank allocate and loop per old rank (the inventory comes from
    /// other ranks). Neither is planned; the valid checkpoint beside them still is.
    #[test]
    fn a_copy_recording_a_world_of_zero_or_of_billions_plans_nothing() {
        for world in [0, u32::MAX] {
            let mut bad = held("a", 0, true, 6);
            bad.world = world;
            let mut inventory = full(5);
            inventory.push(bad);
            let p = plan(&inventory, &hosts());
            assert_eq!(
                p.iter().map(|p| (p.seq, p.world)).collect::<Vec<_>>(),
                vec![(5, 4)],
                "world {world}"
            );
        }
    }

    #[test]
    fn another_world_size_is_planned_for_redistribution() {
        // 4 old ranks, 3 new ranks on a, a, b: every old part from its own L1 copy.
        let hs: Vec<String> = ["a", "a", "b"].iter().map(|s| s.to_string()).collect();
        let p = plan(&full(5), &hs);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].seq, p[0].world, p[0].level), (5, 4, 1));
        assert!(p[0].resharded(3));
        assert_eq!(
            p[0].sources[3],
            RankSource::Remote {
                holder: 2,
                host: "b".into(),
                dir: "rank-3".into(),
                local: 5
            }
        );
        // Host b lost: its old parts from the partner copies on a, held by rank 0.
        let on_a: Vec<Held> = full(5).into_iter().filter(|h| h.host == "a").collect();
        let p = plan(&on_a, &hs);
        assert_eq!((p[0].world, p[0].level), (4, 2));
        assert!(p[0]
            .sources
            .iter()
            .all(|s| matches!(s, RankSource::Remote { holder: 0, .. })));
        // The new world runs on host a only: b's copies have no live holder.
        let only_a: Vec<String> = ["a", "a"].iter().map(|s| s.to_string()).collect();
        let mut partial = full(5);
        partial.retain(|h| !(h.host == "a" && h.subject == 2));
        assert!(plan(&partial, &only_a).is_empty());
        assert_eq!(plan(&full(5), &only_a)[0].level, 2);
    }

    /// Ranks 0,1 on a; 2,3 on b; groups {0,2} and {1,3}; shard j of each group on the
    /// host of member j (a for shard 0, b for shard 1). L1 copies only, no L2.
    fn with_parity(seq: u64) -> (Vec<Held>, Vec<ParityHeld>) {
        let held: Vec<Held> = (0..4u32)
            .map(|r| held(if r < 2 { "a" } else { "b" }, r, true, seq))
            .collect();
        let mut parity = Vec::new();
        for (g, members) in [[0u32, 2], [1, 3]].iter().enumerate() {
            for j in 0..2u32 {
                parity.push(ParityHeld {
                    host: if j == 0 { "a" } else { "b" }.into(),
                    dir: format!("parity-{g}-{j}"),
                    shard: j,
                    m: 2,
                    seq,
                    step: seq * 10,
                    world: 4,
                    local: seq,
                    members: members.to_vec(),
                    locals: vec![seq, seq],
                    lens: vec![100, 120],
                    hashes: vec!["h0".into(), "h1".into()],
                    shard_bytes: 128,
                    app: BTreeMap::new(),
                });
            }
        }
        (held, parity)
    }

    #[test]
    fn lost_host_is_rebuilt_from_parity_without_partner_copies() {
        let (held, parity) = with_parity(5);
        let on_a = |h: &String| h == "a";
        let held: Vec<Held> = held.into_iter().filter(|h| on_a(&h.host)).collect();
        let parity: Vec<ParityHeld> = parity.into_iter().filter(|p| on_a(&p.host)).collect();
        let p = plan_with_parity(&held, &parity, &hosts());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].level, 3);
        assert_eq!(p[0].from_parity(), vec![2, 3]);
        let RankSource::Parity(ps) = &p[0].sources[2] else {
            panic!("{:?}", p[0].sources[2]);
        };
        // Member 0 (rank 0) sends its blob, shard 0 comes from host a (rank 0).
        assert_eq!(ps.index, 1);
        assert_eq!(
            ps.members
                .iter()
                .map(|m| (m.index, m.rank, m.local, m.sender))
                .collect::<Vec<_>>(),
            vec![(0, 0, 5, 0)]
        );
        assert_eq!(ps.rebuilder, 2);
        assert_eq!(ps.shards.len(), 1);
        assert_eq!((ps.shards[0].shard, ps.shards[0].holder), (0, 0));
        // Without parity, the same survivors plan nothing.
        assert!(plan(&held, &hosts()).is_empty());
    }

    #[test]
    fn parity_never_covers_more_than_it_can() {
        let (held, parity) = with_parity(5);
        // Rank 0's L1 lost as well as host b: group {0, 2} has only shard 0 left.
        let held: Vec<Held> = held.into_iter().filter(|h| h.subject == 1).collect();
        let parity: Vec<ParityHeld> = parity.into_iter().filter(|p| p.host == "a").collect();
        assert!(plan_with_parity(&held, &parity, &hosts()).is_empty());
        // A member whose L1 copy is another checkpoint than the parity recorded is not
        // used for the rebuild.
        let (mut held, parity) = with_parity(5);
        held.retain(|h| h.host == "a");
        held[0].local = 9;
        let parity: Vec<ParityHeld> = parity.into_iter().filter(|p| p.host == "a").collect();
        assert!(plan_with_parity(&held, &parity, &hosts())
            .iter()
            .all(|p| !matches!(p.sources[2], RankSource::Parity(_))));
    }

    #[test]
    fn copies_win_over_parity() {
        let (held, parity) = with_parity(5);
        let p = plan_with_parity(&held, &parity, &hosts());
        assert_eq!(p[0].level, 1);
        let mut held = held;
        for r in 2..4 {
            held.push(self::held("a", r, false, 5));
        }
        held.retain(|h| h.host == "a");
        let p = plan_with_parity(&held, &parity, &hosts());
        assert_eq!((p[0].level, p[0].from_parity().len()), (2, 0));
    }

    #[test]
    fn an_old_part_held_only_through_parity_is_planned_for_redistribution() {
        // 4 old ranks on a, a, b, b (groups {0, 2}, {1, 3}), L1 + L3 only; host b lost;
        // the job restarts on 3 ranks on a, a, b (b a fresh host).
        let (held, parity) = with_parity(5);
        let held: Vec<Held> = held.into_iter().filter(|h| h.host == "a").collect();
        let parity: Vec<ParityHeld> = parity.into_iter().filter(|p| p.host == "a").collect();
        let hs: Vec<String> = ["a", "a", "b"].iter().map(|s| s.to_string()).collect();
        let p = plan_with_parity(&held, &parity, &hs);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].world, p[0].level), (4, 3));
        assert_eq!(p[0].from_parity(), vec![2, 3]);
        assert!(p[0].from_partner_copies().is_empty());
        assert!(
            matches!(&p[0].sources[0], RankSource::Remote { holder: 0, dir, .. } if dir == "rank-0")
        );
        let RankSource::Parity(ps) = &p[0].sources[2] else {
            panic!("{:?}", p[0].sources[2]);
        };
        // Old rank 2 is rebuilt by new rank 2 (2 mod 3) from old rank 0's copy, which
        // new rank 0 (the holder on a) sends, and shard 0 on a.
        assert_eq!((ps.index, ps.rebuilder), (1, 2));
        assert_eq!(
            ps.members,
            vec![MemberSource {
                index: 0,
                rank: 0,
                local: 5,
                sender: 0,
                host: "a".into(),
                dir: "rank-0".into(),
            }]
        );
        assert_eq!(
            (ps.shards.len(), ps.shards[0].shard, ps.shards[0].holder),
            (1, 0, 0)
        );
        let RankSource::Parity(ps) = &p[0].sources[3] else {
            panic!("{:?}", p[0].sources[3]);
        };
        assert_eq!((ps.rebuilder, ps.members[0].rank), (0, 1));
        // Without parity nothing is planned; with old rank 0's copy lost too, group
        // {0, 2} has one shard of the two it needs: nothing is planned either.
        assert!(plan(&held, &hs).is_empty());
        let fewer: Vec<Held> = held.iter().filter(|h| h.subject != 0).cloned().collect();
        assert!(plan_with_parity(&fewer, &parity, &hs).is_empty());
        // A member copy that is not the checkpoint the parity recorded is not used.
        let mut other = held.clone();
        other[0].local = 9;
        assert!(plan_with_parity(&other, &parity, &hs).is_empty());
    }

    /// Every old rank's part of a checkpoint written by `n` ranks on `old_hosts`
    /// (rank r on `old_hosts[r]`): its L1 copy, a partner copy on the next host when
    /// `mirrors`, and the parity shards of its group (shard j on member j's host).
    fn old_world(old: &[String], mirrors: bool) -> (Vec<Held>, Vec<ParityHeld>) {
        let n = old.len() as u32;
        let mut hosts: Vec<&String> = Vec::new();
        for h in old {
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
        let mut held = Vec::new();
        for r in 0..n {
            let mut own = self::held(&old[r as usize], r, true, 3);
            own.world = n;
            held.push(own);
            if mirrors && hosts.len() > 1 {
                let i = hosts
                    .iter()
                    .position(|h| *h == &old[r as usize])
                    .unwrap_or(0);
                let mut m = self::held(hosts[(i + 1) % hosts.len()], r, false, 3);
                m.world = n;
                held.push(m);
            }
        }
        let mut parity = Vec::new();
        for (g, members) in crate::l3::parity_groups(old, 0).into_iter().enumerate() {
            let k = members.len();
            for j in 0..2u32 {
                parity.push(ParityHeld {
                    host: old[members[j as usize] as usize].clone(),
                    dir: format!("parity-{g}-{j}"),
                    shard: j,
                    m: 2,
                    seq: 3,
                    step: 30,
                    world: n,
                    local: 3,
                    members: members.clone(),
                    locals: vec![3; k],
                    lens: vec![64; k],
                    hashes: vec!["h".into(); k],
                    shard_bytes: 64,
                    app: BTreeMap::new(),
                });
            }
        }
        (held, parity)
    }

    proptest! {
        /// N→M with parity: for any N old ranks on 2 or 3 hosts, M new ranks on any of
        /// hosts a, b, c, d and any surviving subset of copies and shards, a resharded
        /// plan names for every old part either a copy that exists on a live host
        /// (held by that host's lowest new rank) or a parity rebuild with exactly k
        /// inputs: members other than the part, each read from its own L1 copy (the
        /// checkpoint the parity recorded) by that copy's holder, and distinct shards of
        /// its group that exist on live hosts, sent by their holders to a new rank. It
        /// is made exactly when every old part is copied or rebuildable that way (and
        /// some copy of the checkpoint is left).
        #[test]
        fn resharded_parity_plans_always_have_k_shards(
            n in 2u32..8,
            old_spread in 2usize..4,
            m in 1u32..8,
            new_spread in 1usize..5,
            mirrors in any::<bool>(),
            keep in proptest::collection::vec(any::<bool>(), 32),
        ) {
            let names = ["a", "b", "c", "d"];
            let old: Vec<String> = (0..n).map(|r| names[(r as usize * old_spread) / n as usize].to_string()).collect();
            let hs: Vec<String> = (0..m).map(|r| names[(r as usize * new_spread) / m as usize].to_string()).collect();
            let (held, parity) = old_world(&old, mirrors);
            let mut bits = keep.into_iter().cycle();
            let held: Vec<Held> = held.into_iter().filter(|_| bits.next().unwrap_or(true)).collect();
            let parity: Vec<ParityHeld> = parity.into_iter().filter(|_| bits.next().unwrap_or(true)).collect();
            let live = |h: &str| hs.iter().any(|x| x == h);
            let holder = |h: &str| hs.iter().position(|x| x == h).map(|i| i as u32);
            let copied = |s: u32| held.iter().any(|h| h.subject == s && live(&h.host));
            let own_copy = |u: u32| held.iter().any(|h| h.subject == u && h.primary && live(&h.host));
            let groups = crate::l3::parity_groups(&old, 0);
            let rebuildable = |s: u32| {
                let Some(g) = groups.iter().find(|g| g.contains(&s)) else { return false };
                let members = g.iter().filter(|u| **u != s && own_copy(**u)).count();
                let shards: BTreeSet<u32> = parity.iter().filter(|p| p.members.contains(&s) && live(&p.host)).map(|p| p.shard).collect();
                members + shards.len() >= g.len()
            };
            // (A checkpoint of which no copy is left anywhere is not seen at all.)
            let coverable = !held.is_empty() && (0..n).all(|s| copied(s) || rebuildable(s));
            let plans: Vec<FastPlan> = plan_with_parity(&held, &parity, &hs).into_iter().filter(|p| p.resharded(m)).collect();
            if n != m {
                prop_assert_eq!(plans.len(), usize::from(coverable));
            }
            for p in plans {
                prop_assert_eq!(p.sources.len(), n as usize);
                prop_assert_eq!(p.level == 3, !p.from_parity().is_empty());
                for (s, src) in p.sources.iter().enumerate() {
                    let s = s as u32;
                    match src {
                        RankSource::Remote { holder: hd, host, dir, local } => {
                            prop_assert_eq!(holder(host), Some(*hd));
                            prop_assert!(held.iter().any(|h| h.subject == s && &h.host == host && &h.dir == dir && h.local == *local));
                        }
                        RankSource::Parity(ps) => {
                            let g = groups.iter().find(|g| g.contains(&s)).cloned().unwrap_or_default();
                            prop_assert!(!copied(s), "old rank {} has a copy", s);
                            prop_assert_eq!(ps.members.len() + ps.shards.len(), g.len());
                            prop_assert!(!ps.shards.is_empty());
                            prop_assert!(ps.rebuilder < m);
                            prop_assert_eq!(g.get(ps.index as usize), Some(&s));
                            let mut seen = BTreeSet::new();
                            for mb in &ps.members {
                                prop_assert!(mb.rank != s && g.get(mb.index as usize) == Some(&mb.rank));
                                prop_assert!(seen.insert(mb.rank));
                                prop_assert_eq!(&mb.dir, &format!("rank-{}", mb.rank));
                                prop_assert_eq!(holder(&mb.host), Some(mb.sender));
                                prop_assert!(held.iter().any(|h| h.subject == mb.rank && h.primary && h.host == mb.host && h.local == mb.local));
                                let sent_by_holder = matches!(&p.sources[mb.rank as usize], RankSource::Remote { holder, dir, .. } if *holder == mb.sender && dir == &mb.dir);
                                prop_assert!(sent_by_holder, "member {} is not read from its planned copy", mb.rank);
                            }
                            let mut idx = BTreeSet::new();
                            for sh in &ps.shards {
                                prop_assert!(idx.insert(sh.shard));
                                prop_assert_eq!(holder(&sh.host), Some(sh.holder));
                                prop_assert!(parity.iter().any(|q| q.host == sh.host && q.dir == sh.dir && q.shard == sh.shard && q.members.contains(&s)));
                            }
                        }
                        RankSource::Local { .. } => prop_assert!(false, "N→M plan with a local source"),
                    }
                }
            }
        }

        /// Whatever subset of L1 copies and parity shards survives, a plan rebuilds a
        /// rank from parity only with k shards in all (members reading their own copy,
        /// as recorded, plus shards on live hosts), and never the rank itself.
        #[test]
        fn parity_plans_always_have_k_shards(keep in proptest::collection::vec(any::<bool>(), 8)) {
            let (held, parity) = with_parity(3);
            let held: Vec<Held> = held.into_iter().zip(keep[..4].iter()).filter(|(_, k)| **k).map(|(h, _)| h).collect();
            let parity: Vec<ParityHeld> = parity.into_iter().zip(keep[4..].iter()).filter(|(_, k)| **k).map(|(h, _)| h).collect();
            for p in plan_with_parity(&held, &parity, &hosts()) {
                for (r, s) in p.sources.iter().enumerate() {
                    if let RankSource::Parity(ps) = s {
                        prop_assert_eq!(ps.members.len() + ps.shards.len(), 2);
                        prop_assert_eq!(ps.rebuilder, r as u32);
                        for m in &ps.members {
                            prop_assert_ne!(m.rank, r as u32);
                            prop_assert_eq!(m.sender, m.rank);
                            prop_assert!(held.iter().any(|h| h.subject == m.rank && h.local == m.local && h.primary && h.host == m.host && h.dir == m.dir));
                        }
                        for sh in &ps.shards {
                            prop_assert!(parity.iter().any(|q| q.host == sh.host && q.dir == sh.dir && q.members.contains(&(r as u32))));
                        }
                    }
                }
            }
        }


        /// For any N old ranks on 2 hosts, M new ranks on 1..3 hosts and any subset of
        /// copies, an N→M plan names, for every old rank, a copy of its part that exists
        /// on a host where its holder (a current rank) runs, and is made whenever every
        /// old part has such a copy.
        #[test]
        fn resharded_plans_only_name_copies_with_a_live_holder(
            n in 1u32..7,
            m in 1u32..8,
            new_hosts in 1usize..4,
            keep in proptest::collection::vec(any::<bool>(), 14),
        ) {
            let old_host = |r: u32| if r * 2 < n { "a" } else { "b" };
            let other = |h: &str| if h == "a" { "b" } else { "a" };
            let mut all = Vec::new();
            for r in 0..n {
                let mut own = held(old_host(r), r, true, 3);
                let mut mirror = held(other(old_host(r)), r, false, 3);
                own.world = n;
                mirror.world = n;
                all.push(own);
                all.push(mirror);
            }
            let some: Vec<Held> = all.into_iter().zip(keep).filter(|(_, k)| *k).map(|(h, _)| h).collect();
            let names = ["a", "b", "c"];
            let hs: Vec<String> = (0..m).map(|r| names[(r as usize * new_hosts) / m as usize].to_string()).collect();
            let plans = plan(&some, &hs);
            let coverable = (0..n).all(|s| some.iter().any(|h| h.subject == s && hs.contains(&h.host)));
            if n != m {
                prop_assert_eq!(plans.len(), usize::from(coverable));
            }
            for p in plans {
                prop_assert_eq!(p.world, n);
                prop_assert_eq!(p.sources.len(), n as usize);
                for (s, src) in p.sources.iter().enumerate() {
                    let RankSource::Remote { holder, host, dir, local } = src else {
                        prop_assert!(n == m, "N→M source {src:?}");
                        continue;
                    };
                    prop_assert_eq!(&hs[*holder as usize], host);
                    prop_assert!(hs.iter().position(|h| h == host) == Some(*holder as usize));
                    prop_assert!(some.iter().any(|h| h.subject == s as u32 && &h.host == host && &h.dir == dir && h.local == *local));
                }
            }
        }

        /// Whatever subset of copies survives, a planned checkpoint names, for every
        /// rank, a copy that exists, of that rank's part, with a holder on its host.
        #[test]
        fn plans_only_name_copies_that_exist(keep in proptest::collection::vec(any::<bool>(), 24)) {
            let all: Vec<Held> = (1..=3).flat_map(full).collect();
            let some: Vec<Held> = all.into_iter().zip(keep).filter(|(_, k)| *k).map(|(h, _)| h).collect();
            let hs = hosts();
            for p in plan(&some, &hs) {
                for (r, s) in p.sources.iter().enumerate() {
                    let found = match s {
                        RankSource::Local { dir, local } => some.iter().any(|h| h.seq == p.seq && h.subject == r as u32 && &h.dir == dir && h.local == *local && h.host == hs[r]),
                        RankSource::Remote { holder, host, dir, local } => hs[*holder as usize] == *host && some.iter().any(|h| h.seq == p.seq && h.subject == r as u32 && &h.dir == dir && h.local == *local && &h.host == host),
                        RankSource::Parity(_) => false,
                    };
                    prop_assert!(found, "rank {r} of plan {p:?}");
                }
            }
        }
    }
}
