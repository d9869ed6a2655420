//! One history (docs/LEVELS.md, "One history"): which fast-level checkpoints belong to
//! the run the job is continuing, so a restore never picks a copy of a run it abandoned.
//!
//! Every incarnation of a multi-level job writes its checkpoints under a *lineage*, a
//! random id recorded in each copy's COMMIT ([`LINEAGE_KEY`]). When an incarnation
//! restores checkpoint `s` of lineage `L` (or starts fresh), everything `L` wrote after
//! `s`, and every other lineage not on the path to `L`, is abandoned: the re-execution
//! produces those steps (and their output) again. A copy of an abandoned run can survive
//! on a host that was not part of that restore (its node-local directory outlives the
//! job's use of it) and come back later, complete; restoring it would skip output the
//! supervisor already dropped, or mix parts of two runs that share a job-wide number.
//!
//! The record of the current path lives in the durable repository
//! (`LEVELS-HISTORY`, written by rank 0 before any rank reports `resumed`), since it must
//! survive the loss of any host. This module is pure: the record, its decoding, and the
//! rule that admits a copy.

use serde::{Deserialize, Serialize};

/// The COMMIT key holding the lineage that wrote a level checkpoint (on every level,
/// L1 to L4). Absent in copies written before lineages existed: their lineage is `None`.
pub const LINEAGE_KEY: &str = "lazarus.level.lineage";

/// The record's format version; a record of another version is refused, not guessed.
pub const HISTORY_VERSION: u32 = 1;

/// The largest record accepted: the store's cap on `LEVELS-HISTORY` (also applied when it
/// is read).
const MAX_RECORD_BYTES: usize = lazarus_store::MAX_LEVEL_HISTORY_LEN as usize;

/// The most segments a record keeps (the oldest ancestors go first; about 60 bytes
/// each, far under [`MAX_RECORD_BYTES`]).
const MAX_SEGMENTS: usize = 1000;

/// One stretch of the current path: checkpoints of `lineage` numbered up to `upto`
/// (the tip, still being written, has no bound).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The lineage (`None`: copies written before lineages existed).
    pub lineage: Option<String>,
    /// The newest job-wide number of this lineage that is on the path; `None` for the
    /// tip.
    pub upto: Option<u64>,
}

/// The current path through the job's runs, oldest first, the tip last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// [`HISTORY_VERSION`].
    pub version: u32,
    /// The segments, oldest first; the last one is the tip.
    pub path: Vec<Segment>,
}

impl History {
    /// Decodes a record read from `location` (named in every error).
    pub fn decode(bytes: &[u8], location: &str) -> Result<History, String> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(format!(
                "{location}: {} bytes, over the {MAX_RECORD_BYTES}-byte limit of a level history record",
                bytes.len()
            ));
        }
        let h: History = serde_json::from_slice(bytes)
            .map_err(|e| format!("{location}: not a level history record: {e}"))?;
        if h.version != HISTORY_VERSION {
            return Err(format!(
                "{location}: level history record version {}, this build reads version {HISTORY_VERSION}",
                h.version
            ));
        }
        let Some((tip, rest)) = h.path.split_last() else {
            return Err(format!(
                "{location}: level history record with an empty path"
            ));
        };
        if tip.upto.is_some() || rest.iter().any(|s| s.upto.is_none()) {
            return Err(format!(
                "{location}: level history record whose bounds are not all before its tip"
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        if !h.path.iter().all(|s| seen.insert(&s.lineage)) {
            return Err(format!(
                "{location}: level history record naming one lineage twice"
            ));
        }
        Ok(h)
    }

    /// The record's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec_pretty(self).map_err(|e| format!("encoding the level history: {e}"))
    }

    /// True when checkpoint `seq` of `lineage` is on the current path: a copy the job
    /// may restore.
    pub fn admits(&self, seq: u64, lineage: Option<&str>) -> bool {
        self.path
            .iter()
            .any(|s| s.lineage.as_deref() == lineage && s.upto.is_none_or(|u| seq <= u))
    }

    /// The record after an incarnation with lineage `new` restored checkpoint `seq` of
    /// `lineage` (`restored`), or started fresh (`None`), given the record it found
    /// (`previous`, `None` when there was none). The restored checkpoint's ancestors stay
    /// on the path; everything after it is abandoned.
    pub fn after(
        previous: Option<&History>,
        restored: Option<(u64, Option<&str>)>,
        new: &str,
    ) -> History {
        let mut path = Vec::new();
        if let Some((seq, lineage)) = restored {
            if let Some(prev) = previous {
                // The ancestors of the restored checkpoint's segment (when it is on the
                // path; a checkpoint off it keeps none, which only makes older copies
                // unusable, never wrong).
                if let Some(i) = prev.path.iter().position(|s| {
                    s.lineage.as_deref() == lineage && s.upto.is_none_or(|u| seq <= u)
                }) {
                    path.extend(prev.path[..i].iter().cloned());
                }
            }
            path.push(Segment {
                lineage: lineage.map(str::to_string),
                upto: Some(seq),
            });
        }
        path.push(Segment {
            lineage: Some(new.to_string()),
            upto: None,
        });
        // Bounded: dropping the oldest ancestors only makes their copies unusable (restore
        // then falls back to a newer or a durable checkpoint), never admits a wrong one.
        let excess = path.len().saturating_sub(MAX_SEGMENTS);
        path.drain(..excess);
        History {
            version: HISTORY_VERSION,
            path,
        }
    }
}

/// A fresh lineage id: 64 random bits in hex, from the operating system's random
/// source (so two incarnations never share one, even on different hosts).
pub fn new_lineage() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is keyed from the OS's random source once per process; mixing in the
    // time and pid keeps two ids of one process apart.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(l: Option<&str>, upto: Option<u64>) -> Segment {
        Segment {
            lineage: l.map(str::to_string),
            upto,
        }
    }

    #[test]
    fn a_restore_abandons_what_its_lineage_wrote_after_the_restored_checkpoint() {
        let a = History::after(None, None, "a");
        assert!(a.admits(7, Some("a")));
        assert!(
            !a.admits(7, None),
            "copies older than lineages are not of a fresh run"
        );
        let b = History::after(Some(&a), Some((6, Some("a"))), "b");
        assert!(b.admits(6, Some("a")));
        assert!(!b.admits(7, Some("a")), "checkpoint 7 of the abandoned run");
        assert!(b.admits(8, Some("b")));
        // b dies before its first checkpoint; c restores 6 of a again.
        let c = History::after(Some(&b), Some((6, Some("a"))), "c");
        assert!(!c.admits(7, Some("a")));
        assert!(!c.admits(8, Some("b")), "b's run is abandoned too");
        assert!(c.admits(5, Some("a")));
    }

    #[test]
    fn ancestors_stay_on_the_path() {
        let a = History::after(None, None, "a");
        let b = History::after(Some(&a), Some((6, Some("a"))), "b");
        let c = History::after(Some(&b), Some((9, Some("b"))), "c");
        assert_eq!(
            c.path,
            vec![
                seg(Some("a"), Some(6)),
                seg(Some("b"), Some(9)),
                seg(Some("c"), None)
            ]
        );
        assert!(c.admits(6, Some("a")) && c.admits(9, Some("b")));
        assert!(!c.admits(7, Some("a")) && !c.admits(10, Some("b")));
        // Back to a's checkpoint 4: b is abandoned entirely.
        let d = History::after(Some(&c), Some((4, Some("a"))), "d");
        assert_eq!(d.path, vec![seg(Some("a"), Some(4)), seg(Some("d"), None)]);
    }

    #[test]
    fn a_fresh_start_abandons_every_earlier_run() {
        let b = History::after(None, Some((3, None)), "b");
        assert!(b.admits(3, None) && !b.admits(4, None));
        let c = History::after(Some(&b), None, "c");
        assert!(!c.admits(3, None) && !c.admits(1, Some("b")));
    }

    #[test]
    fn hostile_records_are_refused_with_the_location() {
        let good = History::after(None, Some((3, None)), "b");
        assert_eq!(
            History::decode(&good.encode().unwrap(), "x").as_ref(),
            Ok(&good)
        );
        for (bytes, what) in [
            (b"".to_vec(), "not a level history record"),
            (b"{\"version\":2,\"path\":[{\"lineage\":\"a\",\"upto\":null}]}".to_vec(), "version 2"),
            (b"{\"version\":1,\"path\":[]}".to_vec(), "empty path"),
            (
                b"{\"version\":1,\"path\":[{\"lineage\":\"a\",\"upto\":null},{\"lineage\":\"b\",\"upto\":null}]}"
                    .to_vec(),
                "bounds",
            ),
            (
                b"{\"version\":1,\"path\":[{\"lineage\":\"a\",\"upto\":3},{\"lineage\":\"a\",\"upto\":null}]}"
                    .to_vec(),
                "twice",
            ),
            (good.encode().unwrap()[..10].to_vec(), "not a level history record"),
        ] {
            let e = History::decode(&bytes, "/repo/LEVELS-HISTORY").unwrap_err();
            assert!(e.contains("/repo/LEVELS-HISTORY") && e.contains(what), "{e}");
        }
    }

    #[test]
    fn the_record_keeps_the_newest_segments() {
        let mut h = History::after(None, None, "l0");
        for i in 1..=MAX_SEGMENTS + 5 {
            let tip = h.path.last().and_then(|s| s.lineage.clone());
            h = History::after(Some(&h), Some((i as u64, tip.as_deref())), &format!("l{i}"));
        }
        assert_eq!(h.path.len(), MAX_SEGMENTS);
        assert!(h.encode().unwrap().len() < MAX_RECORD_BYTES);
        assert!(!h.admits(1, Some("l0")), "the oldest ancestor is dropped");
        assert!(h.admits(
            MAX_SEGMENTS as u64 + 5,
            Some(&format!("l{}", MAX_SEGMENTS + 4))
        ));
        assert_eq!(History::decode(&h.encode().unwrap(), "x"), Ok(h));
    }

    #[test]
    fn lineages_differ() {
        assert_ne!(new_lineage(), new_lineage());
    }

    proptest! {
        /// Any bytes: an error or a record that encodes back to what decodes again.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(h) = History::decode(&bytes, "x") {
                prop_assert_eq!(History::decode(&h.encode().unwrap(), "x"), Ok(h));
            }
        }

        /// A chain of restores: the restored checkpoint is admitted afterwards, nothing
        /// its lineage wrote after it is, and the new lineage's checkpoints are.
        #[test]
        fn restores_keep_exactly_the_path(steps in proptest::collection::vec((0u64..20, any::<bool>()), 1..12)) {
            let mut h = History::after(None, None, "l0");
            for (i, (seq, fresh)) in steps.into_iter().enumerate() {
                let new = format!("l{}", i + 1);
                // Restore some admitted checkpoint of the tip's lineage, or start fresh.
                let tip = h.path.last().and_then(|s| s.lineage.clone());
                let restored = (!fresh).then_some((seq, tip.as_deref()));
                let next = History::after(Some(&h), restored, &new);
                if let Some((s, l)) = restored {
                    prop_assert!(next.admits(s, l));
                    prop_assert!(!next.admits(s + 1, l));
                } else {
                    prop_assert!(!next.admits(seq, tip.as_deref()));
                }
                prop_assert!(next.admits(u64::MAX, Some(&new)));
                prop_assert_eq!(History::decode(&next.encode().unwrap(), "x"), Ok(next.clone()));
                h = next;
            }
        }
    }
}
