//! L3: parity group placement, the parity messages, and the blob a member contributes.
//!
//! **Groups.** Hosts in order of first appearance, ranks on a host in rank order: the
//! g-th ranks of every host that has one, in host order, form a *row*, whose members are
//! on distinct hosts. Without a group size a row is one group; with a group size K
//! (`Levels::l3_group`) a row of n members is cut, in order, into ⌈n / K⌉ groups of
//! near-equal size, at most K members each (K + 1 when only that avoids a group of one:
//! K = 2 and n odd). Smaller groups cost less per round and per rebuild (a holder keeps k
//! regions in memory; a rebuild reads k − 1 members) and survive one lost host *per
//! group*; larger ones store less parity. A group needs k ≥ 2; a rank in a smaller group
//! has no L3 (a warning says so).
//!
//! **Parity and where it lives.** Each group keeps m Reed-Solomon parity shards over its
//! members' blobs (m = [`PARITY_SHARDS`] = 2 unless `Levels::l3_shards` says more, and at
//! most k); shard j is computed and stored by member j (on member j's host, in
//! `<host>/parity-<g>-<j>/`). The rule: the m shards are on m distinct hosts, each also
//! holding one member. h lost hosts take at most h members and at most h shards, leaving
//! k − h members and m − h shards: k or more when m ≥ 2h, enough to rebuild the lost
//! members. So m = 2 covers one lost host per group, m = 4 two. More lost hosts in one
//! group than that are not covered; restore then falls back to an older checkpoint or
//! L4, or refuses.
//!
//! **Retention.** A parity shard is only useful while the members' L1 checkpoints it was
//! computed over exist: with L3 every n checkpoints, every level repository keeps at
//! least the newest n checkpoints (more than the job's `keep` when n is larger).
//!
//! **Parity input.** What is encoded is each member's *region*: its L1 checkpoint's
//! chunk files at stable slots; the slot table, manifests and COMMIT form its *header*,
//! stored next to every shard of the group and recorded by hash in the parity COMMIT
//! ([`crate::slots`]). A round after a previous one the whole group agrees on sends only
//! the changed ranges and updates the shards in place (incremental); otherwise it sends
//! whole regions (full). A rebuilt region is accepted only when every chunk at its slot
//! has the recorded hash, so a stale or mismatched shard is damage, never wrong data.
//!
//! **Blob.** At restore, a surviving member sends its L1 checkpoint in the form of a
//! [`CopyMsg::Data`] carrying every chunk and file (canonical order); the rebuilding rank
//! lays its chunks out by the member's header.

use crate::error::LevelError;
use crate::partner::{self, CopyMsg};
use lazarus_format::{CheckpointId, Rank};
use lazarus_net::{Comm, Tag};
use lazarus_store::{RepoReader, StoreError};
use serde::{Deserialize, Serialize};

/// Parity shards per group by default, and the fewest allowed (see the module docs for
/// why 2).
pub const PARITY_SHARDS: usize = 2;
/// The most parity shards per group (`Levels::l3_shards`; a parity record claiming more
/// is refused, so a hostile COMMIT cannot make a rebuild allocate m shards at will).
pub const MAX_PARITY_SHARDS: usize = 64;

/// Checkpoint-space tag of the parity round (member updates to the parity holders).
pub(crate) const TAG_PARITY: u32 = 0x302;
/// Checkpoint-space tag of parity rebuild transfers at restore.
pub(crate) const TAG_PARITY_REBUILD: u32 = 0x303;

/// The parity groups of a job whose rank r runs on `hosts[r]`, at most `size` members
/// each (0: no limit; module docs): the g-th rank of every host that has one, in host
/// order, cut into groups of near-equal size. Only groups of at least 2 members are
/// returned; their members are on distinct hosts.
pub fn parity_groups(hosts: &[String], size: u32) -> Vec<Vec<u32>> {
    let mut order: Vec<&str> = Vec::new();
    for h in hosts {
        if !order.contains(&h.as_str()) {
            order.push(h);
        }
    }
    let per_host: Vec<Vec<u32>> = order
        .iter()
        .map(|o| {
            (0..hosts.len() as u32)
                .filter(|r| hosts[*r as usize] == *o)
                .collect()
        })
        .collect();
    let widest = per_host.iter().map(Vec::len).max().unwrap_or(0);
    let mut groups = Vec::new();
    for g in 0..widest {
        let row: Vec<u32> = per_host.iter().filter_map(|h| h.get(g).copied()).collect();
        let n = row.len();
        if n < 2 {
            continue;
        }
        // ⌈n / size⌉ pieces, but never one of fewer than 2 members.
        let pieces = match size as usize {
            0 => 1,
            k => n.div_ceil(k.max(2)).min(n / 2).max(1),
        };
        let (small, extra) = (n / pieces, n % pieces);
        let mut at = 0;
        for i in 0..pieces {
            let len = small + usize::from(i < extra);
            groups.push(row[at..at + len].to_vec());
            at += len;
        }
    }
    groups
}

/// The number of parity shards of a group of `k` members when `m` are configured
/// (`Levels::l3_shards`; 0: [`PARITY_SHARDS`]): at most one per member, since member j
/// holds shard j.
pub fn shards_for(k: usize, m: usize) -> usize {
    let m = if m == 0 { PARITY_SHARDS } else { m };
    m.min(k)
}

/// A message of the parity round or of a parity rebuild. Decoded from another rank's
/// bytes: [`ParityMsg::decode`] checks the framing; the receiver checks every field
/// against what it expects (fuzz target `levels_parity_msg`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParityMsg {
    /// A member's blob for checkpoint `seq` (member index `index` of its group), sent to
    /// a rank rebuilding from parity.
    Blob {
        /// the job-wide checkpoint number
        seq: u64,
        /// the member's index in its group
        index: u32,
        /// the checkpoint's id in the member's L1 repository
        local: u64,
        /// the blob ([`CopyMsg::Data`] bytes)
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Parity shard `shard` of checkpoint `seq`, with the group's member headers stored
    /// next to it ([`crate::slots::Header`] bytes, by member index).
    Shard {
        /// the job-wide checkpoint number
        seq: u64,
        /// the shard's index
        shard: u32,
        /// its bytes
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        /// every member's encoded header
        #[serde(with = "crate::bulk::list")]
        headers: Vec<Vec<u8>>,
    },
    /// A member's contribution to the parity round of checkpoint `seq`: its header and
    /// either its whole region (`full`: one segment at offset 0) or the segments (offset,
    /// old XOR new) that turn its previous region into the new one.
    Update {
        /// the job-wide checkpoint number
        seq: u64,
        /// the member's index in its group
        index: u32,
        /// the checkpoint's id in the member's L1 repository
        local: u64,
        /// a full round (the whole region) or an incremental one (the changes)
        full: bool,
        /// the member's encoded [`crate::slots::Header`]
        #[serde(with = "serde_bytes")]
        header: Vec<u8>,
        /// (offset, bytes) in the region
        #[serde(with = "crate::bulk::keyed")]
        segments: Vec<(u64, Vec<u8>)>,
    },
    /// The sender failed; its message.
    Failed(String),
}

impl ParityMsg {
    /// Encodes for the wire (postcard).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing owned vectors and strings into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a message of `from`; refuses trailing bytes.
    pub fn decode(from: Rank, bytes: &[u8]) -> Result<ParityMsg, LevelError> {
        let bad = |detail: String| LevelError::Protocol { rank: from, detail };
        let (msg, rest): (ParityMsg, _) =
            postcard::take_from_bytes(bytes).map_err(|e| bad(format!("parity message: {e}")))?;
        if !rest.is_empty() {
            return Err(bad(format!(
                "{} trailing bytes after a parity message",
                rest.len()
            )));
        }
        Ok(msg)
    }

    /// What kind of message it is, for errors.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ParityMsg::Blob { .. } => "a blob",
            ParityMsg::Shard { .. } => "a parity shard",
            ParityMsg::Update { .. } => "a parity update",
            ParityMsg::Failed(_) => "a failure",
        }
    }
}

/// Sends `msg` to `to` on `tag`.
pub(crate) fn send(comm: &Comm, to: u32, tag: u32, msg: &ParityMsg) -> Result<(), LevelError> {
    comm.send_bytes(Rank(to), Tag::checkpoint(tag), msg.encode())?;
    Ok(())
}

/// Receives the next message from `from` on `tag`.
pub(crate) fn recv(comm: &Comm, from: u32, tag: u32) -> Result<ParityMsg, LevelError> {
    let env = comm.recv_envelope(Some(Rank(from)), Some(Tag::checkpoint(tag)))?;
    ParityMsg::decode(Rank(from), &env.payload)
}

/// The blob of checkpoint `id` of `subject`'s repository read by `reader`: every chunk
/// and file, in a canonical order (chunks by digest, files by name, COMMIT last), so the
/// same checkpoint always gives the same bytes.
pub(crate) fn blob(
    reader: &RepoReader,
    subject: u32,
    id: CheckpointId,
) -> Result<Vec<u8>, StoreError> {
    let (chunks, _) = partner::checkpoint_files(reader, id)?;
    let all: Vec<[u8; 32]> = chunks.into_iter().map(|d| d.0).collect();
    let mut msg = partner::data_msg(reader, subject, id, &all)?;
    if let CopyMsg::Data { files, chunks, .. } = &mut msg {
        chunks.sort_by_key(|a| a.0);
        files.sort_by(|a, b| (a.0 == "COMMIT", &a.0).cmp(&(b.0 == "COMMIT", &b.0)));
    }
    Ok(msg.encode())
}

/// Directory name of parity shard `shard` of group `group`.
pub(crate) fn parity_dir(group: u32, shard: u32) -> String {
    format!("parity-{group}-{shard}")
}

/// Reads a parity directory name back: `(group, shard)`.
pub(crate) fn parse_parity_dir(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("parity-")?;
    let (g, j) = rest.split_once('-')?;
    let num = |s: &str| -> Option<u32> {
        if s.is_empty()
            || !s.bytes().all(|b| b.is_ascii_digit())
            || (s.len() > 1 && s.starts_with('0'))
        {
            return None;
        }
        s.parse().ok()
    };
    Some((num(g)?, num(j)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn hs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Every subset of `n` items of an iterator (in order).
    trait Combinations<T> {
        fn combinations_of(self, n: usize) -> Vec<Vec<T>>;
    }

    impl<T: Clone, I: Iterator<Item = T>> Combinations<T> for I {
        fn combinations_of(self, n: usize) -> Vec<Vec<T>> {
            let items: Vec<T> = self.collect();
            let mut out = Vec::new();
            let mut pick = Vec::new();
            fn go<T: Clone>(
                items: &[T],
                n: usize,
                at: usize,
                pick: &mut Vec<T>,
                out: &mut Vec<Vec<T>>,
            ) {
                if pick.len() == n {
                    out.push(pick.clone());
                    return;
                }
                for i in at..items.len() {
                    pick.push(items[i].clone());
                    go(items, n, i + 1, pick, out);
                    pick.pop();
                }
            }
            go(&items, n, 0, &mut pick, &mut out);
            out
        }
    }

    #[test]
    fn groups_take_one_rank_per_host() {
        assert_eq!(
            parity_groups(&hs(&["a", "a", "b", "b"]), 0),
            vec![vec![0, 2], vec![1, 3]]
        );
        assert_eq!(
            parity_groups(&hs(&["a", "b", "c", "a", "b", "c"]), 0),
            vec![vec![0, 1, 2], vec![3, 4, 5]]
        );
        // Uneven hosts: the third rank of a has no partner host; no group.
        assert_eq!(
            parity_groups(&hs(&["a", "a", "a", "b"]), 0),
            vec![vec![0, 3]]
        );
        assert!(parity_groups(&hs(&["a", "a"]), 0).is_empty());
    }

    #[test]
    fn a_group_size_cuts_each_row_into_near_equal_groups() {
        let six = hs(&["a", "b", "c", "d", "e", "f"]);
        assert_eq!(parity_groups(&six, 3), vec![vec![0, 1, 2], vec![3, 4, 5]]);
        assert_eq!(parity_groups(&six, 4), vec![vec![0, 1, 2], vec![3, 4, 5]]);
        assert_eq!(
            parity_groups(&six, 2),
            vec![vec![0, 1], vec![2, 3], vec![4, 5]]
        );
        assert_eq!(parity_groups(&six, 6), vec![vec![0, 1, 2, 3, 4, 5]]);
        // Five hosts in groups of 2: never a group of one.
        let five = hs(&["a", "b", "c", "d", "e"]);
        assert_eq!(parity_groups(&five, 2), vec![vec![0, 1, 2], vec![3, 4]]);
        // Two ranks per host: each row is cut alike.
        let two = hs(&["a", "a", "b", "b", "c", "c", "d", "d"]);
        assert_eq!(
            parity_groups(&two, 2),
            vec![vec![0, 2], vec![4, 6], vec![1, 3], vec![5, 7]]
        );
    }

    #[test]
    fn parity_dir_names_round_trip() {
        assert_eq!(parse_parity_dir(&parity_dir(3, 1)), Some((3, 1)));
        for bad in [
            "parity-",
            "parity-1",
            "parity-1-",
            "parity-01-1",
            "parity-1-x",
            "rank-1",
        ] {
            assert_eq!(parse_parity_dir(bad), None, "{bad}");
        }
    }

    proptest! {
        /// Members of a group are on distinct hosts, every rank is in at most one group,
        /// and the m parity holders (members 0..m) are on m distinct hosts: one lost host
        /// takes at most one member and one shard, so k shards survive.
        #[test]
        fn groups_survive_any_one_host_loss(hosts in proptest::collection::vec(0u8..7, 1..20), size in 0u32..6) {
            let names: Vec<String> = hosts.iter().map(|h| format!("h{h}")).collect();
            let groups = parity_groups(&names, size);
            // A group holds at most `size` members (one more only when `size` is 2 and
            // a row is odd) and groups of one row differ by at most one member.
            for g in &groups {
                let limit = match size { 0 => usize::MAX, 1 | 2 => 3, k => k as usize };
                prop_assert!(g.len() <= limit, "{g:?} over {size}");
            }
            let mut seen = BTreeSet::new();
            for g in &groups {
                prop_assert!(g.len() >= 2);
                let on: BTreeSet<&String> = g.iter().map(|r| &names[*r as usize]).collect();
                prop_assert_eq!(on.len(), g.len());
                for r in g {
                    prop_assert!(seen.insert(*r));
                }
                let k = g.len();
                for m in [0, 2, 3, 4, 5] {
                    let m = shards_for(k, m);
                    // Any m / 2 lost hosts of the group leave k members and shards.
                    let hosts: Vec<&String> = on.iter().copied().collect();
                    for lost in hosts.iter().copied().combinations_of(m / 2) {
                        let gone = |r: &u32| lost.contains(&&names[*r as usize]);
                        let members_left = g.iter().filter(|r| !gone(r)).count();
                        let shards_left = g[..m].iter().filter(|r| !gone(r)).count();
                        prop_assert!(members_left + shards_left >= k, "{g:?} m={m} lost {lost:?}");
                    }
                }
            }
            let distinct = names.iter().collect::<BTreeSet<_>>().len();
            if distinct >= 2 {
                // The first rank of every host is always covered.
                let firsts: BTreeSet<u32> = names.iter().enumerate().filter(|(r, h)| names.iter().position(|x| x == *h) == Some(*r)).map(|(r, _)| r as u32).collect();
                for f in firsts {
                    prop_assert!(seen.contains(&f));
                }
            }
        }

        #[test]
        fn parity_messages_round_trip(seq in any::<u64>(), index in any::<u32>(), bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            for m in [ParityMsg::Blob { seq, index, local: seq ^ 1, bytes: bytes.clone() }, ParityMsg::Shard { seq, shard: index, bytes: bytes.clone(), headers: vec![bytes.clone()] }, ParityMsg::Update { seq, index, local: 3, full: seq % 2 == 0, header: bytes.clone(), segments: vec![(seq, bytes.clone())] }, ParityMsg::Failed("x".into())] {
                prop_assert_eq!(ParityMsg::decode(Rank(1), &m.encode()).unwrap(), m);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_parity_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ParityMsg::decode(Rank(0), &bytes);
        }
    }
}
