//! Output commit: a rank's stdout lines are held back until the checkpoint that follows
//! them is committed, so a restart from that checkpoint neither loses nor repeats them.
//!
//! Protocol (docs/RECOVERY.md): with `LAZARUS_OUTPUT_MARKERS=1`, a rank writes the control
//! line `"\u{1e}lazarus:part <id> <step>"` once its part of checkpoint `<id>` is durable,
//! and rank 0 writes `"\u{1e}lazarus:commit <id> <step>"` after COMMIT; optionally
//! `"\u{1e}lazarus:resumed <id|-> <step>"` once restored (used to time recovery). Two
//! more tell the supervisor what no restart can change: `"\u{1e}lazarus:repo <location>"`
//! (the repository a rank opened, `lazarus_store::repo_location`) and `"\u{1e}lazarus:refused
//! <message>"` (a restore error no restart can fix: the supervisor stops instead of
//! restarting). [`OutputCommit`] is a pure state machine: lines and markers in, releasable
//! lines out.

use lazarus_format::CheckpointId;

/// First byte of every control line (ASCII record separator): never part of normal text.
pub const MARKER_PREFIX: &str = "\u{1e}lazarus:";

/// A control line written by a rank on its stdout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    /// This rank's part of the checkpoint is durable; the lines before it belong to it.
    Part {
        /// checkpoint
        id: CheckpointId,
        /// its step
        step: u64,
    },
    /// The checkpoint is committed (written by the committing rank, rank 0).
    Commit {
        /// checkpoint
        id: CheckpointId,
        /// its step
        step: u64,
    },
    /// The rank restored this checkpoint (`None`: started fresh) and is running again.
    Resumed {
        /// checkpoint restored, if any
        id: Option<CheckpointId>,
        /// step restored
        step: u64,
    },
    /// The repository the rank opened, as [`repo_location`](lazarus_store::repo_location) normalizes it. The supervisor
    /// stops a job whose ranks opened another repository than its own.
    Repo {
        /// normalized location (one line)
        location: String,
    },
    /// The rank's restore failed in a way no restart can fix (a checkpoint that cannot be
    /// restored on this number of ranks, a schema mismatch, every checkpoint damaged): the
    /// supervisor stops instead of restarting.
    Refused {
        /// the rank's error, naming the checkpoint and why (one line)
        message: String,
    },
}

/// Replaces line breaks so a free-text marker field stays one line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

impl Marker {
    /// The line (without newline) a rank writes for this marker.
    pub fn line(&self) -> String {
        match self {
            Marker::Part { id, step } => format!("{MARKER_PREFIX}part {} {step}", id.0),
            Marker::Commit { id, step } => format!("{MARKER_PREFIX}commit {} {step}", id.0),
            Marker::Resumed { id: Some(id), step } => {
                format!("{MARKER_PREFIX}resumed {} {step}", id.0)
            }
            Marker::Resumed { id: None, step } => format!("{MARKER_PREFIX}resumed - {step}"),
            Marker::Repo { location } => format!("{MARKER_PREFIX}repo {}", one_line(location)),
            Marker::Refused { message } => {
                format!("{MARKER_PREFIX}refused {}", one_line(message))
            }
        }
    }

    /// Parses a line (with or without its newline). `None` for ordinary text; `Some(Err)`
    /// for a line that starts with the marker prefix but is malformed (never shown to the
    /// user either: the prefix is reserved).
    pub fn parse(line: &[u8]) -> Option<Result<Marker, String>> {
        let rest = line.strip_prefix(MARKER_PREFIX.as_bytes())?;
        let text = match std::str::from_utf8(rest) {
            Ok(t) => t.trim_end_matches(['\n', '\r']),
            Err(_) => return Some(Err("marker is not UTF-8".into())),
        };
        // Free-text markers: everything after the first space is the payload (one line:
        // `line()` never writes a line break into it).
        match text.split_once(' ') {
            Some(("repo" | "refused", p)) if p.contains(['\n', '\r']) => {
                return Some(Err(format!("marker {text:?} has a line break")))
            }
            Some(("repo", loc)) if !loc.is_empty() => {
                return Some(Ok(Marker::Repo {
                    location: loc.to_string(),
                }))
            }
            Some(("refused", msg)) if !msg.is_empty() => {
                return Some(Ok(Marker::Refused {
                    message: msg.to_string(),
                }))
            }
            _ => {}
        }
        let mut it = text.split(' ');
        let (kind, id, step) = (it.next(), it.next(), it.next());
        if it.next().is_some() {
            return Some(Err(format!("marker {text:?} has extra fields")));
        }
        let step = match step.map(str::parse::<u64>) {
            Some(Ok(s)) => s,
            _ => return Some(Err(format!("marker {text:?}: bad or missing step"))),
        };
        let id = match id {
            Some("-") => None,
            Some(s) => match s.parse::<u64>() {
                Ok(v) => Some(CheckpointId(v)),
                Err(_) => return Some(Err(format!("marker {text:?}: bad checkpoint id"))),
            },
            None => return Some(Err(format!("marker {text:?}: missing checkpoint id"))),
        };
        Some(match (kind, id) {
            (Some("part"), Some(id)) => Ok(Marker::Part { id, step }),
            (Some("commit"), Some(id)) => Ok(Marker::Commit { id, step }),
            (Some("resumed"), id) => Ok(Marker::Resumed { id, step }),
            _ => Err(format!("unknown marker {text:?}")),
        })
    }
}

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
    fn marker_round_trip_and_rejects() {
        for m in [
            Marker::Part {
                id: CheckpointId(7),
                step: 30,
            },
            Marker::Commit {
                id: CheckpointId(0),
                step: 0,
            },
            Marker::Resumed { id: None, step: 0 },
            Marker::Resumed {
                id: Some(CheckpointId(3)),
                step: 9,
            },
        ] {
            let line = format!("{}\n", m.line());
            assert_eq!(Marker::parse(line.as_bytes()), Some(Ok(m)));
        }
        for m in [
            Marker::Repo {
                location: "/data/my repo".into(),
            },
            Marker::Repo {
                location: "s3://bucket/prefix".into(),
            },
            Marker::Refused {
                message: "checkpoint 3: field `x` is per-rank state".into(),
            },
        ] {
            let line = format!("{}\n", m.line());
            assert_eq!(Marker::parse(line.as_bytes()), Some(Ok(m)));
        }
        // A multi-line message stays one marker line.
        let m = Marker::Refused {
            message: "a\nb".into(),
        };
        assert_eq!(
            Marker::parse(m.line().as_bytes()),
            Some(Ok(Marker::Refused {
                message: "a b".into()
            }))
        );
        assert_eq!(Marker::parse(b"checksum=12\n"), None);
        for bad in [
            "part x 1",
            "part 1",
            "commit - 3",
            "nope 1 2",
            "part 1 2 3",
            "repo",
            "refused ",
        ] {
            let line = format!("{MARKER_PREFIX}{bad}");
            assert!(
                matches!(Marker::parse(line.as_bytes()), Some(Err(_))),
                "{bad}"
            );
        }
    }

    proptest::proptest! {
        /// Marker lines come from rank stdout, i.e. from any program: parsing never panics,
        /// and whatever parses formats back to a line that parses to the same marker.
        #[test]
        fn marker_parse_never_panics(
            kind in proptest::sample::select(vec!["part ", "commit ", "resumed ", "repo ", "refused ", ""]),
            text in "[ -~\r\n\u{1e}é-]{0,40}",
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
        ) {
            let mut line = MARKER_PREFIX.as_bytes().to_vec();
            line.extend_from_slice(kind.as_bytes());
            line.extend_from_slice(text.as_bytes());
            line.extend_from_slice(&tail);
            if let Some(Ok(m)) = Marker::parse(&line) {
                proptest::prop_assert_eq!(Marker::parse(m.line().as_bytes()), Some(Ok(m)));
            }
        }
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
