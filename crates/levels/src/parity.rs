//! The Reed-Solomon codec for L3 parity groups (issue #15): k members' regions
//! (of any lengths) in, m parity shards out; any k of the k + m shards rebuild every
//! missing region, byte for byte; [`update`] applies a parity update for changed ranges only. Built on `reed-solomon-simd` (Leopard-RS, O(n log n)).
//!
//! The L3 level built on it (groups, the parity round, restore from parity) is in
//! [`crate::l3`] and the crate's node module (docs/LEVELS.md, "L3 parity").

use crate::error::LevelError;

/// The shape of one group's parity, recorded next to it: every shard (original, padded
/// with zeros, and parity) is `shard_bytes` long; `lens` are the originals' true lengths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes per shard (a positive multiple of 64, at least the longest original).
    pub shard_bytes: usize,
    /// The originals' lengths, by member index (k = `lens.len()`).
    pub lens: Vec<u64>,
    /// The number of parity shards.
    pub m: usize,
}

/// A group's parity: its layout and the m recovery shards (`parity[j]` is shard j).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parity {
    /// The shape.
    pub layout: Layout,
    /// The m recovery shards.
    pub parity: Vec<Vec<u8>>,
}

fn bad(msg: impl Into<String>) -> LevelError {
    LevelError::Parity(msg.into())
}

fn padded(b: &[u8], shard_bytes: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(shard_bytes);
    v.extend_from_slice(b);
    v.resize(shard_bytes, 0);
    v
}

/// Encodes `m` parity shards over `originals` (k ≥ 1 members, m ≥ 1).
pub fn encode(originals: &[&[u8]], m: usize) -> Result<Parity, LevelError> {
    if originals.is_empty() || m == 0 {
        return Err(bad(format!(
            "parity needs at least one member and one parity shard (got k={}, m={m})",
            originals.len()
        )));
    }
    let longest = originals.iter().map(|b| b.len()).max().unwrap_or(0);
    let shard_bytes = longest.div_ceil(64).max(1) * 64;
    let shards: Vec<Vec<u8>> = originals.iter().map(|b| padded(b, shard_bytes)).collect();
    let parity = reed_solomon_simd::encode(originals.len(), m, &shards)
        .map_err(|e| bad(format!("encoding {} + {m} shards: {e}", originals.len())))?;
    Ok(Parity {
        layout: Layout {
            shard_bytes,
            lens: originals.iter().map(|b| b.len() as u64).collect(),
            m,
        },
        parity,
    })
}

/// Encodes `m` parity shards over `originals`, each padded with zeros to `shard_bytes`
/// (a positive multiple of 64, at least the longest original): the full encode an
/// incremental [`update`] must agree with.
pub fn encode_padded(
    originals: &[&[u8]],
    m: usize,
    shard_bytes: usize,
) -> Result<Parity, LevelError> {
    let longest = originals.iter().map(|b| b.len()).max().unwrap_or(0);
    if shard_bytes == 0 || shard_bytes % 64 != 0 || shard_bytes < longest {
        return Err(bad(format!(
            "shards of {shard_bytes} bytes for originals of up to {longest} bytes"
        )));
    }
    let mut p = encode(originals, m)?;
    for s in &mut p.parity {
        // Zeros encode to zeros, block by block: padding the originals pads the parity.
        s.resize(shard_bytes, 0);
    }
    p.layout.shard_bytes = shard_bytes;
    Ok(p)
}

/// The number of 64-byte blocks [`update`] encodes at once (bounds its memory).
const UPDATE_BATCH_BLOCKS: usize = 16 * 1024;

/// Updates parity shard `j` of a group of `k` members and `m` shards in place for
/// changed members: `deltas` are (member index, segments), each segment `(offset, old
/// XOR new)` of that member's original. Reed-Solomon is linear and encodes each 64-byte
/// block of the shards on its own, so parity(new) = parity(old) XOR encode(delta), where
/// the delta is zero outside the segments and for the members not listed; only the
/// 64-byte blocks some segment touches are encoded. Refuses a segment beyond the shard.
pub fn update(
    shard: &mut [u8],
    j: usize,
    k: usize,
    m: usize,
    deltas: &[(usize, &[crate::slots::Segment])],
) -> Result<(), LevelError> {
    if j >= m || k == 0 || shard.len() % 64 != 0 {
        return Err(bad(format!(
            "updating shard {j} of {m} for {k} members, {} bytes",
            shard.len()
        )));
    }
    let mut blocks = std::collections::BTreeSet::new();
    for (i, segs) in deltas {
        if *i >= k {
            return Err(bad(format!("member {i} of {k}")));
        }
        for (o, v) in segs.iter() {
            let end = o
                .checked_add(v.len() as u64)
                .filter(|e| *e <= shard.len() as u64);
            let Some(end) = end else {
                return Err(bad(format!(
                    "member {i}: a change at {o} of {} bytes beyond the shard's {} bytes",
                    v.len(),
                    shard.len()
                )));
            };
            if v.is_empty() {
                continue;
            }
            blocks.extend(o / 64..end.div_ceil(64));
        }
    }
    let blocks: Vec<u64> = blocks.into_iter().collect();
    for batch in blocks.chunks(UPDATE_BATCH_BLOCKS) {
        let pos: std::collections::BTreeMap<u64, usize> =
            batch.iter().enumerate().map(|(p, b)| (*b, p)).collect();
        let (first, last) = (batch[0] * 64, (batch[batch.len() - 1] + 1) * 64);
        let mut originals = vec![vec![0u8; batch.len() * 64]; k];
        for (i, segs) in deltas {
            for (o, v) in segs.iter() {
                // The part of this segment inside the batch's blocks.
                let (s, e) = ((*o).max(first), (o + v.len() as u64).min(last));
                let mut at = s;
                while at < e {
                    let b = at / 64;
                    let upto = ((b + 1) * 64).min(e);
                    if let Some(p) = pos.get(&b) {
                        let dst = p * 64 + (at - b * 64) as usize;
                        let src = (at - o) as usize;
                        let n = (upto - at) as usize;
                        for (d, x) in originals[*i][dst..dst + n].iter_mut().zip(&v[src..src + n]) {
                            *d ^= x;
                        }
                    }
                    at = upto;
                }
            }
        }
        let parity = reed_solomon_simd::encode(k, m, &originals)
            .map_err(|e| bad(format!("encoding a parity update: {e}")))?;
        let enc = &parity[j];
        for (p, b) in batch.iter().enumerate() {
            let at = (*b * 64) as usize;
            for (d, x) in shard[at..at + 64].iter_mut().zip(&enc[p * 64..p * 64 + 64]) {
                *d ^= x;
            }
        }
    }
    Ok(())
}

/// Rebuilds the originals missing from `present` (member index, blob) using the parity
/// shards in `parity` (shard index, shard): returns the missing ones, by index, cut to
/// their recorded lengths. Refuses inconsistent input (a wrong length, an index out of
/// range, fewer than k shards) with an error naming it.
pub fn rebuild(
    meta: &Layout,
    present: &[(usize, &[u8])],
    parity: &[(usize, &[u8])],
) -> Result<Vec<(usize, Vec<u8>)>, LevelError> {
    let (k, m) = (meta.lens.len(), meta.m);
    for (i, b) in present {
        let want = meta
            .lens
            .get(*i)
            .ok_or_else(|| bad(format!("member {i} of {k}")))?;
        if b.len() as u64 != *want {
            return Err(bad(format!(
                "member {i}: {} bytes, the parity records {want}",
                b.len()
            )));
        }
    }
    for (j, p) in parity {
        if *j >= m {
            return Err(bad(format!("parity shard {j} of {m}")));
        }
        if p.len() != meta.shard_bytes {
            return Err(bad(format!(
                "parity shard {j}: {} bytes, expected {}",
                p.len(),
                meta.shard_bytes
            )));
        }
    }
    let missing: Vec<usize> = (0..k)
        .filter(|i| !present.iter().any(|(p, _)| p == i))
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    if present.len() + parity.len() < k {
        return Err(bad(format!(
            "{} of {k} members and {} parity shards left: at least {k} shards are needed",
            present.len(),
            parity.len()
        )));
    }
    let originals: Vec<(usize, Vec<u8>)> = present
        .iter()
        .map(|(i, b)| (*i, padded(b, meta.shard_bytes)))
        .collect();
    let mut restored = reed_solomon_simd::decode(k, m, originals, parity.iter().copied())
        .map_err(|e| bad(format!("decoding: {e}")))?;
    missing
        .into_iter()
        .map(|i| {
            let mut v = restored
                .remove(&i)
                .ok_or_else(|| bad(format!("member {i} was not restored")))?;
            v.truncate(meta.lens[i] as usize);
            Ok((i, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blobs(k: usize, seed: u8) -> Vec<Vec<u8>> {
        (0..k)
            .map(|i| {
                (0..(37 * i + 5))
                    .map(|b| (b as u8) ^ seed ^ (i as u8) << 4)
                    .collect()
            })
            .collect()
    }

    /// Every erasure pattern of at most m shards, for every k ≤ 4 and m ≤ 3.
    #[test]
    fn every_erasure_pattern_of_small_groups_rebuilds() {
        for k in 1..=4usize {
            for m in 1..=3usize {
                let data = blobs(k, 7);
                let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
                let p = encode(&refs, m).unwrap();
                for mask in 0u32..(1 << (k + m)) {
                    let lost = mask.count_ones() as usize;
                    let present: Vec<(usize, &[u8])> = (0..k)
                        .filter(|i| mask & (1 << i) == 0)
                        .map(|i| (i, refs[i]))
                        .collect();
                    let parity: Vec<(usize, &[u8])> = (0..m)
                        .filter(|j| mask & (1 << (k + j)) == 0)
                        .map(|j| (j, p.parity[j].as_slice()))
                        .collect();
                    let r = rebuild(&p.layout, &present, &parity);
                    if lost > m {
                        assert!(
                            r.is_err() || present.len() == k,
                            "k={k} m={m} mask={mask:b}"
                        );
                        continue;
                    }
                    let r = r.unwrap_or_else(|e| panic!("k={k} m={m} mask={mask:b}: {e}"));
                    for (i, b) in r {
                        assert_eq!(b, data[i], "k={k} m={m} mask={mask:b} member {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn inconsistent_input_is_refused() {
        let data = blobs(3, 1);
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let p = encode(&refs, 2).unwrap();
        let short = &refs[0][1..];
        assert!(rebuild(&p.layout, &[(0, short), (1, refs[1])], &[(0, &p.parity[0])]).is_err());
        assert!(rebuild(
            &p.layout,
            &[(5, refs[1])],
            &[(0, &p.parity[0]), (1, &p.parity[1])]
        )
        .is_err());
        assert!(encode(&[], 1).is_err());
        assert!(encode(&refs, 0).is_err());
    }

    /// A stale shard (the previous round's) with the new record decodes to a region
    /// whose chunks do not match the new header's slots: refused, never wrong data.
    #[test]
    fn a_stale_shard_never_rebuilds_wrong_data() {
        use crate::slots::{relayout, Header};
        use std::collections::{BTreeMap, BTreeSet};
        let chunk = |s: u8| -> ([u8; 32], Vec<u8>) {
            let b: Vec<u8> = (0..100u32).map(|i| (i as u8).wrapping_mul(s) ^ s).collect();
            (*blake3::hash(&b).as_bytes(), b)
        };
        let a: BTreeMap<[u8; 32], Vec<u8>> = (1..9).map(chunk).collect();
        let b: BTreeMap<[u8; 32], Vec<u8>> = (11..19).map(chunk).collect();
        let (ha, hb) = (
            Header::compact(0, 1, &a, vec![]),
            Header::compact(1, 1, &b, vec![]),
        );
        let ra = ha.region(|d| a.get(d).cloned()).unwrap();
        let rb = hb.region(|d| b.get(d).cloned()).unwrap();
        let old = encode_padded(&[&ra, &rb], 2, 832).unwrap();
        // Member 0 replaces one chunk; the new shards are updated from the old ones.
        let mut a2 = a.clone();
        a2.pop_first();
        a2.extend([chunk(50)]);
        let now: BTreeSet<[u8; 32]> = a2.keys().copied().collect();
        let (ha2, segs) = relayout(
            &ha,
            2,
            &now,
            vec![],
            |d| a.get(d).cloned().ok_or_else(|| "o".into()),
            |d| a2.get(d).cloned().ok_or_else(|| "n".into()),
        )
        .unwrap()
        .unwrap();
        let mut new = old.parity.clone();
        for (j, s) in new.iter_mut().enumerate() {
            update(s, j, 2, 2, &[(0, &segs)]).unwrap();
        }
        let layout = Layout {
            shard_bytes: 832,
            lens: vec![ha2.region_len, hb.region_len],
            m: 2,
        };
        // The updated shard rebuilds member 0; the stale one gives a region the header refuses.
        let good = rebuild(&layout, &[(1, &rb)], &[(0, &new[0])]).unwrap();
        assert_eq!(ha2.chunks_of(&good[0].1).unwrap().len(), 8);
        let stale = rebuild(&layout, &[(1, &rb)], &[(0, &old.parity[0])]).unwrap();
        assert!(ha2.chunks_of(&stale[0].1).is_err());
    }

    proptest! {
        /// A damaged record (any layout) with shards of any length is refused or
        /// rebuilds; it never panics (as fuzz target `levels_parity_msg`).
        #[test]
        fn any_layout_and_shards_never_panic(
            shard_bytes in 0usize..300,
            lens in proptest::collection::vec(0u64..400, 1..5),
            m in 0usize..4,
            shards in proptest::collection::vec((0usize..5, proptest::collection::vec(any::<u8>(), 0..300)), 0..4),
            present in proptest::collection::vec((0usize..5, proptest::collection::vec(any::<u8>(), 0..300)), 0..4),
        ) {
            let layout = Layout { shard_bytes, lens, m };
            let p: Vec<(usize, &[u8])> = present.iter().map(|(i, b)| (*i, b.as_slice())).collect();
            let s: Vec<(usize, &[u8])> = shards.iter().map(|(i, b)| (*i, b.as_slice())).collect();
            let _ = rebuild(&layout, &p, &s);
        }

        /// Incremental parity: k members change their chunk sets at random over several
        /// rounds (slots kept, gaps reused, regions growing, members unchanged in some
        /// rounds); updating the previous shards with each round's segments gives exactly
        /// the shards of a full encode of the final regions, and those rebuild any member.
        #[test]
        fn incremental_updates_equal_a_full_encode_of_the_final_data(
            rounds in proptest::collection::vec(proptest::collection::vec(proptest::collection::btree_set((0u32..30, 1usize..300), 0..12), 2..4), 1..6),
            m in 1usize..3,
            lose in any::<prop::sample::Index>(),
        ) {
            use crate::slots::{relayout, Header};
            use std::collections::{BTreeMap, BTreeSet};
            let k = rounds[0].len();
            let chunk = |s: u32, l: usize| -> ([u8; 32], Vec<u8>) {
                let b: Vec<u8> = (0..l).map(|i| (i as u32).wrapping_mul(s + 7) as u8 ^ (s >> 3) as u8).collect();
                (*blake3::hash(&b).as_bytes(), b)
            };
            let set = |st: &BTreeSet<(u32, usize)>| -> BTreeMap<[u8; 32], Vec<u8>> { st.iter().map(|(s, l)| chunk(*s, *l)).collect() };
            let mut cur: Vec<BTreeMap<[u8; 32], Vec<u8>>> = (0..k).map(|i| set(&rounds[0][i])).collect();
            let mut heads: Vec<Header> = (0..k).map(|i| Header::compact(i as u32, 1, &cur[i], vec![])).collect();
            let region = |h: &Header, c: &BTreeMap<[u8; 32], Vec<u8>>| h.region(|d| c.get(d).cloned()).unwrap();
            let regions: Vec<Vec<u8>> = (0..k).map(|i| region(&heads[i], &cur[i])).collect();
            let sb = |h: &[Header]| (h.iter().map(|h| h.region_len).max().unwrap_or(0) as usize).div_ceil(64).max(1) * 64;
            let refs: Vec<&[u8]> = regions.iter().map(Vec::as_slice).collect();
            let mut shard_bytes = sb(&heads);
            let mut shards = encode_padded(&refs, m, shard_bytes).unwrap().parity;
            for (r, round) in rounds.iter().enumerate().skip(1) {
                // A round with fewer members' sets changes only those; the rest keep theirs.
                let mut deltas = Vec::new();
                let mut full = false;
                for i in 0..k {
                    let next = match round.get(i) { Some(s) => set(s), None => cur[i].clone() };
                    let now: BTreeSet<[u8; 32]> = next.keys().copied().collect();
                    match relayout(&heads[i], r as u64 + 1, &now, vec![], |d| cur[i].get(d).cloned().ok_or_else(|| "old".into()), |d| next.get(d).cloned().ok_or_else(|| "new".into())).unwrap() {
                        Some((h, segs)) => { heads[i] = h; deltas.push((i, segs)); }
                        None => { heads[i] = Header::compact(i as u32, r as u64 + 1, &next, vec![]); full = true; }
                    }
                    cur[i] = next;
                }
                let regions: Vec<Vec<u8>> = (0..k).map(|i| region(&heads[i], &cur[i])).collect();
                let refs: Vec<&[u8]> = regions.iter().map(Vec::as_slice).collect();
                if full {
                    shard_bytes = sb(&heads);
                    shards = encode_padded(&refs, m, shard_bytes).unwrap().parity;
                    continue;
                }
                shard_bytes = shard_bytes.max(sb(&heads));
                let d: Vec<(usize, &[crate::slots::Segment])> = deltas.iter().map(|(i, s)| (*i, s.as_slice())).collect();
                for (j, s) in shards.iter_mut().enumerate() {
                    s.resize(shard_bytes, 0);
                    update(s, j, k, m, &d).unwrap();
                }
                let want = encode_padded(&refs, m, shard_bytes).unwrap();
                prop_assert_eq!(&shards, &want.parity);
                // And the updated shards rebuild a lost member.
                let lost = lose.index(k);
                let present: Vec<(usize, &[u8])> = (0..k).filter(|i| *i != lost).map(|i| (i, refs[i])).collect();
                let par: Vec<(usize, &[u8])> = shards.iter().enumerate().map(|(j, s)| (j, s.as_slice())).collect();
                let mut layout = want.layout.clone();
                layout.shard_bytes = shard_bytes;
                let rebuilt = rebuild(&layout, &present, &par).unwrap();
                prop_assert_eq!(&rebuilt, &vec![(lost, regions[lost].clone())]);
            }
        }

        /// Any k of the k + m shards rebuild every blob.
        #[test]
        fn any_k_of_k_plus_m_shards_rebuild(
            data in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6),
            m in 1usize..4,
            lose in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
        ) {
            let k = data.len();
            let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let p = encode(&refs, m).unwrap();
            let mut lost: Vec<usize> = lose.iter().map(|ix| ix.index(k + m)).collect();
            lost.sort_unstable();
            lost.dedup();
            lost.truncate(m);
            let present: Vec<(usize, &[u8])> = (0..k).filter(|i| !lost.contains(i)).map(|i| (i, refs[i])).collect();
            let parity: Vec<(usize, &[u8])> = (0..m).filter(|j| !lost.contains(&(k + j))).map(|j| (j, p.parity[j].as_slice())).collect();
            for (i, b) in rebuild(&p.layout, &present, &parity).unwrap() {
                prop_assert_eq!(&b, &data[i]);
            }
        }
    }
}
