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

/// Bytes of every shard encoded or decoded at once (a multiple of 64). Reed-Solomon
/// here encodes each 64-byte block position of the shards on its own (see [`update`]),
/// so encoding stripe by stripe gives the whole shards' parity byte for byte; but the
/// library's work space is about (k + m) shards (rounded up to powers of two) of the
/// size it is given, and at whole shards of 256 MiB every pass went to memory (and
/// first-touched GiBs of fresh pages): 48-176 MiB/s for k = 2, m = 2 in `bench levels`. At a stripe the
/// work space stays in cache and is reused, and no original is copied whole into a
/// padded buffer (only a stripe past a shorter original's end is padded).
const STRIPE_BYTES: usize = 256 * 1024;

/// Bytes of every shard [`rebuild`] decodes at once (a multiple of 64), larger than
/// [`STRIPE_BYTES`]: each decode has a fixed cost independent of the stripe (it
/// evaluates the erasure locator over the whole 2^16-element field), which at 64 KiB
/// stripes made a rebuild slower than whole shards; 1-2 MiB measured fastest
/// (`stripe_timings`).
const REBUILD_STRIPE_BYTES: usize = 1024 * 1024;

/// `b[at..at + len]`, or what of it `b` has, padded with zeros to `len` bytes in `pad`.
fn stripe_of<'a>(b: &'a [u8], at: usize, len: usize, pad: &'a mut Vec<u8>) -> &'a [u8] {
    if let Some(s) = b.get(at..at.saturating_add(len)) {
        return s;
    }
    pad.clear();
    pad.extend_from_slice(b.get(at..).unwrap_or(&[]));
    pad.resize(len, 0);
    pad
}

/// Refuses a group the codec cannot encode (before anything is allocated for it).
fn check_counts(k: usize, m: usize) -> Result<(), LevelError> {
    if k == 0 || m == 0 {
        return Err(bad(format!(
            "parity needs at least one member and one parity shard (got k={k}, m={m})"
        )));
    }
    if !reed_solomon_simd::ReedSolomonEncoder::supports(k, m) {
        return Err(bad(format!("{k} members and {m} parity shards")));
    }
    Ok(())
}

/// The parity shards `want` (each < m) of `originals` padded with zeros to
/// `shard_bytes` (a positive multiple of 64, at least the longest original), encoded
/// `stripe` bytes of every shard at a time (a positive multiple of 64); `out[x]` is
/// shard `want[x]`.
fn encode_striped(
    originals: &[&[u8]],
    m: usize,
    shard_bytes: usize,
    want: &[usize],
    stripe: usize,
) -> Result<Vec<Vec<u8>>, LevelError> {
    let k = originals.len();
    check_counts(k, m)?;
    let longest = originals.iter().map(|b| b.len()).max().unwrap_or(0);
    if shard_bytes == 0 || shard_bytes % 64 != 0 || shard_bytes < longest {
        return Err(bad(format!(
            "shards of {shard_bytes} bytes for originals of up to {longest} bytes"
        )));
    }
    if let Some(j) = want.iter().find(|j| **j >= m) {
        return Err(bad(format!("parity shard {j} of {m}")));
    }
    debug_assert!(stripe > 0 && stripe % 64 == 0);
    let err = |e: reed_solomon_simd::Error| bad(format!("encoding {k} + {m} shards: {e}"));
    let mut out: Vec<Vec<u8>> = want
        .iter()
        .map(|_| Vec::with_capacity(shard_bytes))
        .collect();
    let mut len = stripe.min(shard_bytes);
    let mut enc = reed_solomon_simd::ReedSolomonEncoder::new(k, m, len).map_err(err)?;
    let mut pad = Vec::new();
    let mut at = 0;
    while at < shard_bytes {
        if at >= longest {
            // Zeros encode to zeros: the padding past every original pads the parity.
            for v in &mut out {
                v.resize(shard_bytes, 0);
            }
            break;
        }
        if shard_bytes - at < len {
            // The last stripe, shorter (still a multiple of 64).
            len = shard_bytes - at;
            enc.reset(k, m, len).map_err(err)?;
        }
        for b in originals {
            enc.add_original_shard(stripe_of(b, at, len, &mut pad))
                .map_err(err)?;
        }
        // Dropping the result resets the encoder for the next stripe.
        let r = enc.encode().map_err(err)?;
        for (v, j) in out.iter_mut().zip(want) {
            let s = r
                .recovery(*j)
                .ok_or_else(|| bad(format!("parity shard {j} of {m} not encoded")))?;
            v.extend_from_slice(s);
        }
        at += len;
    }
    Ok(out)
}

/// Encodes `m` parity shards over `originals` (k ≥ 1 members, m ≥ 1), each padded with
/// zeros to the shortest positive multiple of 64 bytes that holds the longest.
pub fn encode(originals: &[&[u8]], m: usize) -> Result<Parity, LevelError> {
    let longest = originals.iter().map(|b| b.len()).max().unwrap_or(0);
    encode_padded(originals, m, longest.div_ceil(64).max(1) * 64)
}

/// Encodes `m` parity shards over `originals`, each padded with zeros to `shard_bytes`
/// (a positive multiple of 64, at least the longest original): the full encode an
/// incremental [`update`] must agree with.
pub fn encode_padded(
    originals: &[&[u8]],
    m: usize,
    shard_bytes: usize,
) -> Result<Parity, LevelError> {
    check_counts(originals.len(), m)?;
    let all: Vec<usize> = (0..m).collect();
    let parity = encode_striped(originals, m, shard_bytes, &all, STRIPE_BYTES)?;
    Ok(Parity {
        layout: Layout {
            shard_bytes,
            lens: originals.iter().map(|b| b.len() as u64).collect(),
            m,
        },
        parity,
    })
}

/// Parity shard `j` (< m) of [`encode_padded`]`(originals, m, shard_bytes)`, without
/// holding the other m − 1 shards (a holder stores only its own).
pub fn encode_shard(
    originals: &[&[u8]],
    m: usize,
    shard_bytes: usize,
    j: usize,
) -> Result<Vec<u8>, LevelError> {
    encode_striped(originals, m, shard_bytes, &[j], STRIPE_BYTES)?
        .pop()
        .ok_or_else(|| bad(format!("parity shard {j} of {m} not encoded")))
}

/// The number of 64-byte blocks [`update`] encodes at once: a stripe (bounds its
/// memory and keeps the encoder's work space in cache, as [`STRIPE_BYTES`]).
const UPDATE_BATCH_BLOCKS: usize = STRIPE_BYTES / 64;

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
    if blocks.is_empty() {
        return Ok(());
    }
    let err = |e: reed_solomon_simd::Error| bad(format!("encoding a parity update: {e}"));
    // One encoder and one buffer per member for every batch (only the last is shorter).
    let mut len = blocks.len().min(UPDATE_BATCH_BLOCKS) * 64;
    let mut enc = reed_solomon_simd::ReedSolomonEncoder::new(k, m, len).map_err(err)?;
    let mut originals = vec![Vec::with_capacity(len); k];
    for batch in blocks.chunks(UPDATE_BATCH_BLOCKS) {
        let pos: std::collections::BTreeMap<u64, usize> =
            batch.iter().enumerate().map(|(p, b)| (*b, p)).collect();
        let (first, last) = (batch[0] * 64, (batch[batch.len() - 1] + 1) * 64);
        if batch.len() * 64 != len {
            len = batch.len() * 64;
            enc.reset(k, m, len).map_err(err)?;
        }
        for o in &mut originals {
            o.clear();
            o.resize(len, 0);
        }
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
        for o in &originals {
            enc.add_original_shard(o).map_err(err)?;
        }
        // Dropping the result resets the encoder for the next batch.
        let r = enc.encode().map_err(err)?;
        let par = r
            .recovery(j)
            .ok_or_else(|| bad(format!("parity shard {j} of {m} not encoded")))?;
        for (p, b) in batch.iter().enumerate() {
            let at = (*b * 64) as usize;
            for (d, x) in shard[at..at + 64].iter_mut().zip(&par[p * 64..p * 64 + 64]) {
                *d ^= x;
            }
        }
    }
    Ok(())
}

/// Rebuilds the originals missing from `present` (member index, blob) using the parity
/// shards in `parity` (shard index, shard): returns the missing ones, by index, cut to
/// their recorded lengths. Refuses inconsistent input (a wrong length, an index out of
/// range, fewer than k shards, a shard size that is not a positive multiple of 64, a
/// missing member recorded longer than the shards) with an error naming it.
pub fn rebuild(
    meta: &Layout,
    present: &[(usize, &[u8])],
    parity: &[(usize, &[u8])],
) -> Result<Vec<(usize, Vec<u8>)>, LevelError> {
    rebuild_striped(meta, present, parity, REBUILD_STRIPE_BYTES)
}

/// [`rebuild`], decoding `stripe` bytes of every shard at a time (a positive multiple
/// of 64; see [`STRIPE_BYTES`] and [`REBUILD_STRIPE_BYTES`]).
fn rebuild_striped(
    meta: &Layout,
    present: &[(usize, &[u8])],
    parity: &[(usize, &[u8])],
    stripe: usize,
) -> Result<Vec<(usize, Vec<u8>)>, LevelError> {
    let (k, m, shard_bytes) = (meta.lens.len(), meta.m, meta.shard_bytes);
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
        if p.len() != shard_bytes {
            return Err(bad(format!(
                "parity shard {j}: {} bytes, expected {shard_bytes}",
                p.len(),
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
    // Encoding pads to a positive multiple of 64 (the stripes below rely on it).
    if shard_bytes == 0 || shard_bytes % 64 != 0 {
        return Err(bad(format!(
            "shards of {shard_bytes} bytes, not a positive multiple of 64"
        )));
    }
    // The recorded lengths of the missing members, each within the shards (so the
    // output is bounded by the shards received, not by a damaged record).
    let mut out: Vec<(usize, usize, Vec<u8>)> = Vec::with_capacity(missing.len());
    for i in missing {
        let len = usize::try_from(meta.lens[i])
            .ok()
            .filter(|l| *l <= shard_bytes)
            .ok_or_else(|| {
                bad(format!(
                    "member {i}: {} bytes recorded, beyond the shards' {shard_bytes}",
                    meta.lens[i]
                ))
            })?;
        out.push((i, len, Vec::with_capacity(len)));
    }
    // Past every missing member's end there is only padding: not decoded.
    let end = out.iter().map(|(_, l, _)| *l).max().unwrap_or(0);
    debug_assert!(stripe > 0 && stripe % 64 == 0);
    let err = |e: reed_solomon_simd::Error| bad(format!("decoding: {e}"));
    let mut len = stripe.min(shard_bytes);
    let mut dec = reed_solomon_simd::ReedSolomonDecoder::new(k, m, len).map_err(err)?;
    let mut pad = Vec::new();
    let mut at = 0;
    while at < end {
        if shard_bytes - at < len {
            // The last stripe, shorter (still a multiple of 64).
            len = shard_bytes - at;
            dec.reset(k, m, len).map_err(err)?;
        }
        for (i, b) in present {
            dec.add_original_shard(*i, stripe_of(b, at, len, &mut pad))
                .map_err(err)?;
        }
        for (j, p) in parity {
            // Every shard is shard_bytes long (checked above) and at + len ≤ shard_bytes.
            dec.add_recovery_shard(*j, &p[at..at + len]).map_err(err)?;
        }
        // Dropping the result resets the decoder for the next stripe.
        let r = dec.decode().map_err(err)?;
        for (i, l, v) in &mut out {
            let s = r
                .restored_original(*i)
                .ok_or_else(|| bad(format!("member {i} was not restored")))?;
            v.extend_from_slice(&s[..(*l - at.min(*l)).min(len)]);
        }
        at += len;
    }
    Ok(out.into_iter().map(|(i, _, v)| (i, v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shards with their indices, as `rebuild` takes them.
    type Indexed<'a> = Vec<(usize, &'a [u8])>;

    /// One erasure pattern of a group of `k` members and `m` parity shards, bit `i` of
    /// `mask` set when member `i` (then parity shard `i - k`) is lost: the members and
    /// parity shards still there, each with its index.
    fn survivors<'a>(
        mask: u32,
        members: &[&'a [u8]],
        parity: &'a [Vec<u8>],
    ) -> (Indexed<'a>, Indexed<'a>) {
        let k = members.len();
        let present = (0..k)
            .filter(|i| mask & (1 << i) == 0)
            .map(|i| (i, members[i]))
            .collect();
        let shards = (0..parity.len())
            .filter(|j| mask & (1 << (k + j)) == 0)
            .map(|j| (j, parity[j].as_slice()))
            .collect();
        (present, shards)
    }
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

    /// `len` pseudo-random bytes from `seed` (xorshift: fast enough for MiBs in tests).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// The encoding before stripes (and of every shard on disk): each original copied
    /// into a zero-padded shard of `shard_bytes`, the whole shards encoded at once.
    fn whole_shard_encode(originals: &[&[u8]], m: usize, shard_bytes: usize) -> Vec<Vec<u8>> {
        let shards: Vec<Vec<u8>> = originals
            .iter()
            .map(|b| {
                let mut v = b.to_vec();
                v.resize(shard_bytes, 0);
                v
            })
            .collect();
        reed_solomon_simd::encode(originals.len(), m, &shards).unwrap()
    }

    /// At the real stripe sizes: members of unequal lengths over several stripes (one
    /// not a multiple of 64, one of exactly a rebuild stripe, one shorter than an encode
    /// stripe, one empty) encode as whole shards did, and every pattern of at most m
    /// lost shards rebuilds them.
    #[test]
    fn real_stripes_encode_as_whole_shards_and_rebuild() {
        let r = REBUILD_STRIPE_BYTES;
        let lens = [2 * r + r / 2 + 17, r, STRIPE_BYTES - 3, 0];
        let data: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, l)| noise(i as u64, *l))
            .collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let (k, m) = (refs.len(), 2);
        let p = encode(&refs, m).unwrap();
        assert_eq!(p.layout.shard_bytes, (lens[0]).div_ceil(64) * 64);
        assert_eq!(p.parity, whole_shard_encode(&refs, m, p.layout.shard_bytes));
        // Padded further: the stripes past every original are zeros, as before.
        let wide = 4 * r + STRIPE_BYTES + 64;
        let pw = encode_padded(&refs, m, wide).unwrap();
        assert_eq!(pw.parity, whole_shard_encode(&refs, m, wide));
        assert_eq!(encode_shard(&refs, m, wide, 1).unwrap(), pw.parity[1]);
        for mask in 0u32..(1 << (k + m)) {
            if mask.count_ones() as usize > m {
                continue;
            }
            let (present, parity) = survivors(mask, &refs, &pw.parity);
            let r = rebuild(&pw.layout, &present, &parity).unwrap();
            let lost: Vec<usize> = (0..k).filter(|i| mask & (1 << i) != 0).collect();
            assert_eq!(r.iter().map(|(i, _)| *i).collect::<Vec<_>>(), lost);
            for (i, b) in r {
                assert!(b == data[i], "mask={mask:b} member {i}");
            }
        }
    }

    /// Every erasure pattern of at most m shards, for every k ≤ 4 and m ≤ 3, over
    /// shards of several stripes (a small stripe), from parity encoded as whole shards
    /// (as on disk before stripes).
    #[test]
    fn every_erasure_pattern_rebuilds_over_several_stripes() {
        for k in 1..=4usize {
            for m in 1..=3usize {
                let data: Vec<Vec<u8>> = (0..k)
                    .map(|i| noise((k * 10 + m) as u64 + i as u64, 700 - 131 * i))
                    .collect();
                let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
                let shard_bytes = 768;
                let old = whole_shard_encode(&refs, m, shard_bytes);
                let all: Vec<usize> = (0..m).collect();
                assert_eq!(
                    encode_striped(&refs, m, shard_bytes, &all, 128).unwrap(),
                    old
                );
                let layout = Layout {
                    shard_bytes,
                    lens: data.iter().map(|d| d.len() as u64).collect(),
                    m,
                };
                for mask in 0u32..(1 << (k + m)) {
                    if mask.count_ones() as usize > m {
                        continue;
                    }
                    let (present, parity) = survivors(mask, &refs, &old);
                    for stripe in [64, 128, 320, 1024] {
                        let r = rebuild_striped(&layout, &present, &parity, stripe)
                            .unwrap_or_else(|e| panic!("k={k} m={m} mask={mask:b}: {e}"));
                        let lost: Vec<usize> = (0..k).filter(|i| mask & (1 << i) != 0).collect();
                        assert_eq!(r.iter().map(|(i, _)| *i).collect::<Vec<_>>(), lost);
                        for (i, b) in r {
                            assert_eq!(b, data[i], "k={k} m={m} mask={mask:b} stripe {stripe}");
                        }
                    }
                }
            }
        }
    }

    /// A record whose shards are not a positive multiple of 64, or whose missing member
    /// is longer than the shards, is refused.
    #[test]
    fn a_record_the_stripes_cannot_hold_is_refused() {
        let data = [noise(1, 100), noise(2, 50)];
        let p = encode(&[&data[0], &data[1]], 1).unwrap();
        let mut odd = p.layout.clone();
        odd.shard_bytes = 100;
        let short = &p.parity[0][..100];
        assert!(rebuild(&odd, &[(1, &data[1])], &[(0, short)]).is_err());
        let mut long = p.layout.clone();
        long.lens[0] = 129;
        assert!(rebuild(&long, &[(1, &data[1])], &[(0, &p.parity[0])]).is_err());
        assert!(encode_shard(&[&data[0]], 2, 128, 2).is_err());
        assert!(encode_padded(&[&data[0]], 2, 96).is_err());
        // Counts the codec cannot encode are refused before anything is allocated.
        assert!(encode_padded(&[&data[0]], usize::MAX, 128).is_err());
        assert!(encode_shard(&[&data[0]], usize::MAX, 128, 0).is_err());
    }

    /// Encode and rebuild times of a bench-sized group (k = 2 members of 256 MiB, m = 2)
    /// as whole shards (the encoding before stripes) and in stripes of several sizes.
    /// `cargo test -p lazarus-levels --lib parity::tests::stripe_timings -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn stripe_timings() {
        use std::time::Instant;
        let mib = std::env::var("PARITY_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256usize);
        let data: Vec<Vec<u8>> = (0..2).map(|i| noise(i, mib << 20)).collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let show = |what: String, t: std::time::Duration| {
            let rate = (2 * mib) as f64 / t.as_secs_f64();
            println!(
                "{what}: {:.0} ms ({rate:.0} MiB/s of input)",
                t.as_secs_f64() * 1e3
            );
        };
        let sb = mib << 20;
        for _ in 0..2 {
            let t0 = Instant::now();
            let old = whole_shard_encode(&refs, 2, sb);
            let t = t0.elapsed();
            show("whole-shard encode".into(), t);
            drop(old);
            for stripe in [128 << 10, 256 << 10, 512 << 10, 1 << 20] {
                let t0 = Instant::now();
                let p = encode_striped(&refs, 2, sb, &[0, 1], stripe).unwrap();
                let t = t0.elapsed();
                show(format!("striped encode, {} KiB", stripe >> 10), t);
                drop(p);
            }
        }
        let p = encode(&refs, 2).unwrap();
        for _ in 0..2 {
            // Member 0 lost: rebuilt from member 1 and shard 0.
            let t0 = Instant::now();
            let shards = vec![(1usize, {
                let mut v = data[1].clone();
                v.resize(sb, 0);
                v
            })];
            let old = reed_solomon_simd::decode(2, 2, shards, [(0usize, p.parity[0].as_slice())])
                .unwrap();
            let t = t0.elapsed();
            show("whole-shard rebuild (with its padded copy)".into(), t);
            drop(old);
            for stripe in [256 << 10, 1 << 20, 4 << 20] {
                let t0 = Instant::now();
                let r = rebuild_striped(&p.layout, &[(1, refs[1])], &[(0, &p.parity[0])], stripe)
                    .unwrap();
                let t = t0.elapsed();
                show(format!("striped rebuild, {} KiB", stripe >> 10), t);
                assert!(r[0].1 == data[0]);
            }
        }
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
                    let (present, parity) = survivors(mask, &refs, &p.parity);
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

        /// Striped encoding is the whole-shard encoding, byte for byte, for any k, m,
        /// unequal lengths (multiples of 64 or of the stripe or not) and stripe; a single
        /// shard is that shard; the striped parity rebuilds any lost member in stripes.
        #[test]
        fn striped_encode_equals_the_whole_shard_encode(
            lens in proptest::collection::vec(0usize..1500, 1..6),
            m in 1usize..5,
            stripe_blocks in 1usize..9,
            extra_blocks in 0usize..6,
            seed in any::<u64>(),
            lose in any::<prop::sample::Index>(),
        ) {
            let data: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, l)| noise(seed ^ i as u64, *l)).collect();
            let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let longest = lens.iter().copied().max().unwrap_or(0);
            let shard_bytes = (longest.div_ceil(64).max(1) + extra_blocks) * 64;
            let stripe = stripe_blocks * 64;
            let want = whole_shard_encode(&refs, m, shard_bytes);
    let all: Vec<usize> = (0..m).collect();
            let got = encode_striped(&refs, m, shard_bytes, &all, stripe).unwrap();
            prop_assert_eq!(&got, &want);
            let j = lose.index(m);
            prop_assert_eq!(&encode_striped(&refs, m, shard_bytes, &[j], stripe).unwrap()[0], &want[j]);
            prop_assert_eq!(&encode_padded(&refs, m, shard_bytes).unwrap().parity, &want);
            if extra_blocks == 0 {
                prop_assert_eq!(&encode(&refs, m).unwrap().parity, &want);
            }
            let k = refs.len();
            let lost = lose.index(k);
            let layout = Layout { shard_bytes, lens: lens.iter().map(|l| *l as u64).collect(), m };
            let present: Vec<(usize, &[u8])> = (0..k).filter(|i| *i != lost).map(|i| (i, refs[i])).collect();
            let r = rebuild_striped(&layout, &present, &[(j, &got[j])], stripe).unwrap();
            prop_assert_eq!(r, vec![(lost, data[lost].clone())]);
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
