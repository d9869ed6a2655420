//! The Reed-Solomon codec for L3 parity groups (issue #15): k members' checkpoint blobs
//! (of any lengths) in, m parity shards out; any k of the k + m shards rebuild every
//! missing blob, byte for byte. Built on `reed-solomon-simd` (Leopard-RS, O(n log n)).
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
