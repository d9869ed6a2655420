//! The stable layout of a member's L3 parity input, which makes parity updates
//! incremental (issue #15 part 4, docs/LEVELS.md "Incremental parity").
//!
//! A member's parity input for one L1 checkpoint has two parts:
//!
//! - its **region**: every chunk file of the checkpoint (stored bytes, as in the L1
//!   repository) at a *slot* `[offset, offset + len)`, zeros between slots. A chunk that
//!   stays from one parity round to the next keeps its slot; a removed chunk frees its
//!   slot; a new chunk takes the first free gap it fits in, else goes after the end. So a
//!   checkpoint that changed 1 % of its chunks changes about 1 % of the region. Only the
//!   region is Reed-Solomon encoded.
//! - its **header** ([`Header`]): the checkpoint's manifests and COMMIT, and the slot
//!   table (digest, offset, length and BLAKE3 hash of the stored bytes of every chunk).
//!   Small; sent whole every round and stored as it is (not encoded) next to every
//!   parity shard of the group. Its BLAKE3 hash is recorded in the parity COMMIT, and a
//!   rebuilt region is accepted only when every chunk at its slot has the recorded hash.
//!
//! Because Reed-Solomon encoding is linear and works on each 64-byte block of the
//! shards independently, parity(new) = parity(old) XOR encode(old XOR new) where the
//! member's XOR is nonzero only in the changed ranges ([`Segment`]s) and zero for the
//! other members ([`crate::parity::update`]).

use crate::error::LevelError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A region whose gaps exceed this share of its live bytes (plus [`SLACK`]) is laid out
/// again from scratch, in a full parity round.
const MAX_WASTE_RATIO: u64 = 1;
/// Free bytes a region may always hold without being laid out again.
const SLACK: u64 = 1 << 20;

/// One chunk's place in a member's region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The chunk's digest (its file name in the repository).
    pub digest: [u8; 32],
    /// Where its stored bytes start in the region.
    pub offset: u64,
    /// How many stored bytes.
    pub len: u64,
    /// BLAKE3 of the stored bytes.
    pub hash: [u8; 32],
}

impl Slot {
    fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// A member's header for one parity round (module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The member's global rank.
    pub subject: u32,
    /// Its L1 checkpoint id.
    pub local: u64,
    /// The region's length in bytes (every slot ends within it).
    pub region_len: u64,
    /// The slots, by digest.
    pub slots: Vec<Slot>,
    /// The checkpoint's manifests and COMMIT (name, bytes), COMMIT last.
    #[serde(with = "crate::bulk::keyed")]
    pub files: Vec<(String, Vec<u8>)>,
}

/// A changed byte range of a region: `bytes` is old XOR new from `offset` on.
pub type Segment = (u64, Vec<u8>);

/// A chunk file: its digest and stored bytes.
pub type Chunk = ([u8; 32], Vec<u8>);

impl Header {
    /// Encodes (postcard).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing owned vectors and strings into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a header read from another rank or from a parity repository (`what`
    /// names it in errors): refuses trailing bytes, slots out of the region, overlapping
    /// or duplicate slots.
    pub fn decode(what: &str, bytes: &[u8]) -> Result<Header, LevelError> {
        let bad = |m: String| LevelError::Parity(format!("{what}: {m}"));
        let (h, rest): (Header, _) =
            postcard::take_from_bytes(bytes).map_err(|e| bad(format!("parity header: {e}")))?;
        if !rest.is_empty() {
            return Err(bad(format!(
                "{} trailing bytes after a parity header",
                rest.len()
            )));
        }
        h.check().map_err(bad)?;
        Ok(h)
    }

    /// The header's consistency: slots sorted by digest, distinct, inside the region and
    /// not overlapping.
    fn check(&self) -> Result<(), String> {
        for w in self.slots.windows(2) {
            if w[0].digest >= w[1].digest {
                return Err("slots not sorted by distinct digests".into());
            }
        }
        let mut by_offset: Vec<(u64, u64)> = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let end = s
                .offset
                .checked_add(s.len)
                .filter(|e| *e <= self.region_len)
                .ok_or_else(|| {
                    format!(
                        "slot at {} of {} bytes outside the region of {} bytes",
                        s.offset, s.len, self.region_len
                    )
                })?;
            by_offset.push((s.offset, end));
        }
        by_offset.sort_unstable();
        for w in by_offset.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(format!("slots at {} and {} overlap", w[0].0, w[1].0));
            }
        }
        Ok(())
    }

    /// BLAKE3 (hex) of the encoded header: what the parity COMMIT records.
    pub fn hash_hex(bytes: &[u8]) -> String {
        blake3::hash(bytes).to_hex().to_string()
    }

    /// The bytes of the chunks in this header: live bytes of the region.
    pub fn live_bytes(&self) -> u64 {
        self.slots.iter().map(|s| s.len).sum()
    }

    /// Lays out `chunks` (digest → stored bytes) compactly, by digest: a full round's
    /// layout.
    pub fn compact(
        subject: u32,
        local: u64,
        chunks: &BTreeMap<[u8; 32], Vec<u8>>,
        files: Vec<(String, Vec<u8>)>,
    ) -> Header {
        let mut offset = 0u64;
        let slots = chunks
            .iter()
            .map(|(d, b)| {
                let s = Slot {
                    digest: *d,
                    offset,
                    len: b.len() as u64,
                    hash: *blake3::hash(b).as_bytes(),
                };
                offset += s.len;
                s
            })
            .collect();
        Header {
            subject,
            local,
            region_len: offset,
            slots,
            files,
        }
    }

    /// The region: every chunk at its slot, zeros between. `chunk` gives a chunk's stored
    /// bytes; each is checked against its slot (length and hash).
    pub fn region(
        &self,
        mut chunk: impl FnMut(&[u8; 32]) -> Option<Vec<u8>>,
    ) -> Result<Vec<u8>, String> {
        let len = usize::try_from(self.region_len).map_err(|e| e.to_string())?;
        let mut out = vec![0u8; len];
        for s in &self.slots {
            let b = chunk(&s.digest).ok_or_else(|| format!("chunk {} missing", hex(&s.digest)))?;
            s.verify(&b)?;
            out[s.offset as usize..s.end() as usize].copy_from_slice(&b);
        }
        Ok(out)
    }

    /// The chunks of a region laid out by this header, each checked against its slot.
    pub fn chunks_of(&self, region: &[u8]) -> Result<Vec<Chunk>, String> {
        if region.len() as u64 != self.region_len {
            return Err(format!(
                "region of {} bytes, the header says {}",
                region.len(),
                self.region_len
            ));
        }
        self.slots
            .iter()
            .map(|s| {
                let b = region[s.offset as usize..s.end() as usize].to_vec();
                s.verify(&b)?;
                Ok((s.digest, b))
            })
            .collect()
    }
}

impl Slot {
    fn verify(&self, b: &[u8]) -> Result<(), String> {
        if b.len() as u64 != self.len || *blake3::hash(b).as_bytes() != self.hash {
            return Err(format!(
                "chunk {} differs from the one the parity was computed over",
                hex(&self.digest)
            ));
        }
        Ok(())
    }
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The next round's header from `prev` for a checkpoint with chunks `now` (digests), and
/// the segments that turn `prev`'s region into the new one. `old` gives the stored bytes
/// of a chunk that left (from the previous L1 checkpoint), `new` those of a chunk that
/// arrived; both are checked. Kept chunks keep their slots and are not read. `None` when
/// the region would waste too much space in gaps (a full round lays it out again).
pub fn relayout(
    prev: &Header,
    local: u64,
    now: &BTreeSet<[u8; 32]>,
    files: Vec<(String, Vec<u8>)>,
    mut old: impl FnMut(&[u8; 32]) -> Result<Vec<u8>, String>,
    mut new: impl FnMut(&[u8; 32]) -> Result<Vec<u8>, String>,
) -> Result<Option<(Header, Vec<Segment>)>, String> {
    let mut kept: Vec<Slot> = Vec::new();
    let mut removed: Vec<&Slot> = Vec::new();
    for s in &prev.slots {
        if now.contains(&s.digest) {
            kept.push(s.clone());
        } else {
            removed.push(s);
        }
    }
    let had: BTreeSet<[u8; 32]> = prev.slots.iter().map(|s| s.digest).collect();
    // Free gaps of the old region (kept slots in offset order).
    let mut taken: Vec<(u64, u64)> = kept.iter().map(|s| (s.offset, s.end())).collect();
    taken.sort_unstable();
    let mut gaps: Vec<(u64, u64)> = Vec::new();
    let mut at = 0u64;
    for (a, b) in &taken {
        if *a > at {
            gaps.push((at, *a));
        }
        at = at.max(*b);
    }
    if prev.region_len > at {
        gaps.push((at, prev.region_len));
    }
    let mut end = prev.region_len;
    // Writes of the new region: (offset, bytes).
    let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut slots = kept;
    for d in now.iter().filter(|d| !had.contains(*d)) {
        let b = new(d)?;
        let len = b.len() as u64;
        let offset = match gaps.iter_mut().find(|(a, z)| z - a >= len) {
            Some(g) => {
                let o = g.0;
                g.0 += len;
                o
            }
            None => {
                let o = end;
                end += len;
                o
            }
        };
        slots.push(Slot {
            digest: *d,
            offset,
            len,
            hash: *blake3::hash(&b).as_bytes(),
        });
        writes.push((offset, b));
    }
    slots.sort_by_key(|s| s.digest);
    let header = Header {
        subject: prev.subject,
        local,
        region_len: end,
        slots,
        files,
    };
    if header.region_len > header.live_bytes() * (1 + MAX_WASTE_RATIO) + SLACK {
        return Ok(None);
    }
    // Erasures of the old region: the removed chunks' old bytes (XOR with the zeros, or
    // with the new chunk, that replace them).
    let mut erases: Vec<(u64, Vec<u8>)> = Vec::with_capacity(removed.len());
    for s in removed {
        let b = old(&s.digest)?;
        s.verify(&b)?;
        erases.push((s.offset, b));
    }
    Ok(Some((header, segments(&erases, &writes))))
}

/// Disjoint segments covering every range of `a` and `b` (each a set of disjoint
/// ranges), holding the XOR of both.
fn segments(a: &[(u64, Vec<u8>)], b: &[(u64, Vec<u8>)]) -> Vec<Segment> {
    let mut ranges: Vec<(u64, u64)> = a
        .iter()
        .chain(b)
        .filter(|(_, v)| !v.is_empty())
        .map(|(o, v)| (*o, o + v.len() as u64))
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut out: Vec<Segment> = merged
        .iter()
        .map(|(s, e)| (*s, vec![0u8; (e - s) as usize]))
        .collect();
    for (o, v) in a.iter().chain(b).filter(|(_, v)| !v.is_empty()) {
        // The merged segment containing o.
        let i = merged.partition_point(|(s, _)| *s <= *o) - 1;
        let seg = &mut out[i];
        let at = (o - seg.0) as usize;
        for (d, x) in seg.1[at..at + v.len()].iter_mut().zip(v) {
            *d ^= x;
        }
    }
    out
}

/// Applies segments to a region (XOR), growing it with zeros to `len` first: what the
/// segments of [`relayout`] do to the old region. For tests and checks.
pub fn apply(region: &mut Vec<u8>, len: usize, segs: &[Segment]) -> Result<(), String> {
    if region.len() < len {
        region.resize(len, 0);
    }
    for (o, v) in segs {
        let o = usize::try_from(*o).map_err(|e| e.to_string())?;
        let d = region
            .get_mut(o..o.saturating_add(v.len()))
            .ok_or_else(|| format!("segment at {o} of {} bytes outside the region", v.len()))?;
        for (d, x) in d.iter_mut().zip(v) {
            *d ^= x;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(seed: u32, len: usize) -> ([u8; 32], Vec<u8>) {
        let b: Vec<u8> = (0..len)
            .map(|i| (i as u32).wrapping_mul(31) as u8 ^ seed as u8)
            .collect();
        let mut d = *blake3::hash(&b).as_bytes();
        d[0] ^= (seed >> 8) as u8;
        (d, b)
    }

    #[test]
    fn relayout_keeps_slots_and_segments_turn_old_into_new() {
        let mut all: BTreeMap<[u8; 32], Vec<u8>> =
            (0..20).map(|s| chunk(s, 100 + s as usize)).collect();
        let h0 = Header::compact(1, 1, &all, vec![]);
        let r0 = h0.region(|d| all.get(d).cloned()).unwrap();
        // Replace 2 chunks.
        let gone: Vec<[u8; 32]> = all.keys().take(2).copied().collect();
        let mut now: BTreeMap<[u8; 32], Vec<u8>> = all.clone();
        for g in &gone {
            now.remove(g);
        }
        now.extend((100..102).map(|s| chunk(s, 90)));
        let set: BTreeSet<[u8; 32]> = now.keys().copied().collect();
        let (h1, segs) = relayout(
            &h0,
            2,
            &set,
            vec![],
            |d| all.get(d).cloned().ok_or_else(|| "old".into()),
            |d| now.get(d).cloned().ok_or_else(|| "new".into()),
        )
        .unwrap()
        .unwrap();
        for s in &h1.slots {
            if let Some(p) = h0.slots.iter().find(|p| p.digest == s.digest) {
                assert_eq!(p.offset, s.offset);
            }
        }
        // The new chunks fit into the freed gaps: the region did not grow.
        assert_eq!(h1.region_len, h0.region_len);
        let changed: usize = segs.iter().map(|s| s.1.len()).sum();
        assert!(changed < r0.len() / 5, "{changed} of {}", r0.len());
        let mut r = r0.clone();
        apply(&mut r, h1.region_len as usize, &segs).unwrap();
        assert_eq!(r, h1.region(|d| now.get(d).cloned()).unwrap());
        all.clear();
        // A damaged old chunk is refused.
        let bad = relayout(
            &h0,
            2,
            &set,
            vec![],
            |_| Ok(vec![1, 2, 3]),
            |d| now.get(d).cloned().ok_or_else(|| "new".into()),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn damaged_headers_are_refused() {
        let all: BTreeMap<[u8; 32], Vec<u8>> = (0..3).map(|s| chunk(s, 10)).collect();
        let h = Header::compact(0, 1, &all, vec![("COMMIT".into(), vec![1])]);
        assert_eq!(Header::decode("t", &h.encode()).unwrap(), h);
        let mut short = h.clone();
        short.region_len -= 1;
        assert!(Header::decode("t", &short.encode()).is_err());
        let mut overlap = h.clone();
        overlap.slots[1].offset = 5;
        assert!(Header::decode("t", &overlap.encode()).is_err());
        let mut unsorted = h.clone();
        unsorted.slots.swap(0, 1);
        assert!(Header::decode("t", &unsorted.encode()).is_err());
        let mut huge = h;
        huge.slots[2].offset = u64::MAX;
        assert!(Header::decode("t", &huge.encode()).is_err());
    }

    proptest! {
        /// Any sequence of chunk sets: the region of each relayout equals the previous
        /// region with the segments applied, and kept chunks never move.
        #[test]
        fn segments_always_turn_the_old_region_into_the_new(
            steps in proptest::collection::vec(proptest::collection::btree_set((0u32..40, 1usize..200), 1..25), 1..8),
        ) {
            let pool: BTreeMap<u32, ([u8; 32], Vec<u8>)> = steps.iter().flatten().map(|(s, l)| (*s, chunk(*s | (*l as u32) << 8, *l))).collect();
            let set_of = |st: &BTreeSet<(u32, usize)>| -> BTreeMap<[u8; 32], Vec<u8>> { st.iter().map(|(s, _)| pool[s].clone()).collect() };
            let mut cur = set_of(&steps[0]);
            let mut h = Header::compact(0, 1, &cur, vec![]);
            let mut region = h.region(|d| cur.get(d).cloned()).unwrap();
            for (i, st) in steps.iter().enumerate().skip(1) {
                let next = set_of(st);
                let digests: BTreeSet<[u8; 32]> = next.keys().copied().collect();
                match relayout(&h, i as u64 + 1, &digests, vec![], |d| cur.get(d).cloned().ok_or_else(|| "old".into()), |d| next.get(d).cloned().ok_or_else(|| "new".into())).unwrap() {
                    Some((h2, segs)) => {
                        apply(&mut region, h2.region_len as usize, &segs).unwrap();
                        prop_assert_eq!(&region, &h2.region(|d| next.get(d).cloned()).unwrap());
                        for s in &h2.slots {
                            if let Some(p) = h.slots.iter().find(|p| p.digest == s.digest) {
                                prop_assert_eq!(p.offset, s.offset);
                            }
                        }
                        prop_assert!(Header::decode("t", &h2.encode()).is_ok());
                        h = h2;
                    }
                    None => {
                        h = Header::compact(0, i as u64 + 1, &next, vec![]);
                        region = h.region(|d| next.get(d).cloned()).unwrap();
                    }
                }
                cur = next;
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_header_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Header::decode("t", &bytes);
        }
    }
}
