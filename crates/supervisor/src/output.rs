//! Output commit: a rank's stdout lines are held back until the checkpoint that follows
//! them is committed, so a restart from that checkpoint neither loses nor repeats them.
//!
//! Protocol (docs/RECOVERY.md): the ranks write [`Marker`] lines on their stdout (the type,
//! its format and its writer live in `lazarus_coord::marker`, next to the runtimes that
//! write them). [`OutputCommit`] is a pure state machine: lines and markers in,
//! releasable lines out.

pub use lazarus_coord::marker::{Marker, MARKER_PREFIX};
use lazarus_format::CheckpointId;

#[derive(Debug)]
enum Item {
    Line(Vec<u8>),
    Part(CheckpointId),
}

/// Per-rank buffers of held-back stdout lines, released by checkpoint commits.
///
/// Guarantees: a line is released at most once; lines are released in the order the rank
/// wrote them; a line is released only when a committed checkpoint follows it in its rank's
/// stream, or at [`OutputCommit::finish`]; [`OutputCommit::rollback`] drops exactly the
/// lines the re-execution from the restored checkpoint prints again.
#[derive(Debug)]
pub struct OutputCommit {
    ranks: Vec<Vec<Item>>,
    /// Newest committed checkpoint known (commit marker or repository).
    committed: Option<CheckpointId>,
}

impl OutputCommit {
    /// Empty buffers for `ranks` ranks.
    pub fn new(ranks: u32) -> Self {
        OutputCommit {
            ranks: (0..ranks).map(|_| Vec::new()).collect(),
            committed: None,
        }
    }

    /// The newest checkpoint known to be committed.
    pub fn committed(&self) -> Option<CheckpointId> {
        self.committed
    }

    /// Appends one ordinary line of `rank`. Returns nothing: ordinary lines are never
    /// releasable on arrival (a committed checkpoint must follow them).
    pub fn line(&mut self, rank: u32, line: Vec<u8>) {
        if let Some(b) = self.ranks.get_mut(rank as usize) {
            b.push(Item::Line(line));
        }
    }

    /// Feeds a marker of `rank`; returns the lines that became releasable, `(rank, line)`.
    pub fn marker(&mut self, rank: u32, m: Marker) -> Vec<(u32, Vec<u8>)> {
        match m {
            Marker::Part { id, .. } => {
                if let Some(b) = self.ranks.get_mut(rank as usize) {
                    b.push(Item::Part(id));
                }
                self.release()
            }
            Marker::Commit { id, .. } => self.mark_committed(id),
            Marker::Resumed { .. } | Marker::Repo { .. } | Marker::Refused { .. } => Vec::new(),
        }
    }

    /// Records that checkpoint `id` is committed (e.g. found in the repository after rank 0
    /// died between COMMIT and its marker); returns the lines that became releasable.
    pub fn mark_committed(&mut self, id: CheckpointId) -> Vec<(u32, Vec<u8>)> {
        if self.committed.is_none_or(|c| c < id) {
            self.committed = Some(id);
        }
        self.release()
    }

    /// Releases, per rank, everything before its last part marker that is not newer than
    /// the newest committed checkpoint. Ids grow, so an older part marker (even of an
    /// aborted checkpoint) precedes the committed one in the stream and is covered.
    fn release(&mut self) -> Vec<(u32, Vec<u8>)> {
        let Some(c) = self.committed else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (r, buf) in self.ranks.iter_mut().enumerate() {
            let cut = buf
                .iter()
                .rposition(|i| matches!(i, Item::Part(id) if *id <= c))
                .map(|p| p + 1);
            if let Some(cut) = cut {
                for item in buf.drain(..cut) {
                    if let Item::Line(l) = item {
                        out.push((r as u32, l));
                    }
                }
            }
        }
        out
    }

    /// After a failure, before the restart from `restored` (`None`: from scratch): first
    /// releases what `restored` commits, then drops every line still held (they were
    /// printed after the restored point and will be printed again). Returns
    /// `(released, dropped_count)`.
    pub fn rollback(&mut self, restored: Option<CheckpointId>) -> (Vec<(u32, Vec<u8>)>, usize) {
        let released = match restored {
            Some(id) => self.mark_committed(id),
            None => Vec::new(),
        };
        let mut dropped = 0;
        for b in &mut self.ranks {
            dropped += b.iter().filter(|i| matches!(i, Item::Line(_))).count();
            b.clear();
        }
        (released, dropped)
    }

    /// At the successful end of the job: everything still held, rank by rank.
    pub fn finish(&mut self) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        for (r, b) in self.ranks.iter_mut().enumerate() {
            for item in b.drain(..) {
                if let Item::Line(l) = item {
                    out.push((r as u32, l));
                }
            }
        }
        out
    }

    /// Number of ordinary lines currently held back.
    pub fn held(&self) -> usize {
        self.ranks
            .iter()
            .flatten()
            .filter(|i| matches!(i, Item::Line(_)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn commit_before_part_marker_of_a_slow_rank() {
        let mut o = OutputCommit::new(2);
        o.line(0, l("a0"));
        o.line(1, l("a1"));
        let p = |id| Marker::Part {
            id: CheckpointId(id),
            step: 1,
        };
        assert!(o.marker(0, p(1)).is_empty());
        let out = o.marker(
            0,
            Marker::Commit {
                id: CheckpointId(1),
                step: 1,
            },
        );
        assert_eq!(out, vec![(0, l("a0"))]);
        // Rank 1's part marker arrives after the commit (different pipes).
        assert_eq!(o.marker(1, p(1)), vec![(1, l("a1"))]);
        o.line(1, l("b1"));
        let (rel, dropped) = o.rollback(Some(CheckpointId(1)));
        assert!(rel.is_empty());
        assert_eq!(dropped, 1);
        assert_eq!(o.held(), 0);
    }

    #[test]
    fn rollback_releases_a_commit_found_in_the_repo() {
        let mut o = OutputCommit::new(1);
        o.line(0, l("x"));
        o.marker(
            0,
            Marker::Part {
                id: CheckpointId(4),
                step: 10,
            },
        );
        o.line(0, l("y"));
        let (rel, dropped) = o.rollback(Some(CheckpointId(4)));
        assert_eq!(rel, vec![(0, l("x"))]);
        assert_eq!(dropped, 1);
    }
}
