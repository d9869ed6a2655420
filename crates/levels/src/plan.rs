//! The fast-level restore plan: from the copies every host holds, which job-wide
//! checkpoints can be rebuilt on every rank, and from where. Pure: every rank computes
//! the same plan from the same exchanged inventory, so the plan needs no broadcast.

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
    /// partner copy.
    pub level: u8,
    /// Per rank, where its part comes from.
    pub sources: Vec<RankSource>,
}

impl FastPlan {
    /// The ranks whose part comes from another host.
    pub fn rebuilt(&self) -> Vec<u32> {
        (0..self.sources.len() as u32)
            .filter(|r| matches!(self.sources[*r as usize], RankSource::Remote { .. }))
            .collect()
    }
}

/// The checkpoints rebuildable on `hosts.len()` ranks (rank r on `hosts[r]`), newest
/// first. A checkpoint is planned only when every rank's part has a copy, all copies
/// agree on its step and world (the world must be the current one: redistribution from
/// fast levels is not supported), and a copy on another host has a live holder there.
/// Each rank prefers its own primary copy, then any copy on its host, then a remote one
/// (the primary before a mirror, then the lowest host name: deterministic).
pub fn plan(held: &[Held], hosts: &[String]) -> Vec<FastPlan> {
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
        if copies
            .iter()
            .any(|c| c.step != first.step || c.world != first.world)
        {
            tracing::warn!(
                "levels: the copies of checkpoint {seq} disagree on its step or world; not used"
            );
            continue;
        }
        if first.world != size {
            continue;
        }
        let mut sources = Vec::with_capacity(size as usize);
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
                    let Some((c, holder)) = remote else {
                        break;
                    };
                    level = 2;
                    app.get_or_insert_with(|| c.app.clone());
                    RankSource::Remote {
                        holder,
                        host: c.host.clone(),
                        dir: c.dir.clone(),
                        local: c.local,
                    }
                }
            };
            sources.push(src);
        }
        if sources.len() == size as usize {
            out.push(FastPlan {
                seq,
                step: first.step,
                app: app.unwrap_or_default(),
                level,
                sources,
            });
        }
    }
    out
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

    #[test]
    fn a_torn_checkpoint_is_not_planned_and_the_older_one_is() {
        let mut h = full(4);
        // Checkpoint 5 reached rank 0 and its partner only.
        h.push(held("a", 0, true, 5));
        h.push(held("b", 0, false, 5));
        let p = plan(&h, &hosts());
        assert_eq!(p.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn another_world_size_is_not_planned() {
        let p = plan(&full(5), &hosts()[..3]);
        assert!(p.is_empty());
    }

    proptest! {
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
                    };
                    prop_assert!(found, "rank {r} of plan {p:?}");
                }
            }
        }
    }
}
