//! Output commit: a rank's stdout lines are held back until the checkpoint that follows
//! them is committed, so a restart from that checkpoint neither loses nor repeats them.
//!
//! Protocol (docs/RECOVERY.md): the ranks write [`Marker`] lines on their stdout (the type,
//! its format and its writer live in `lazarus_coord::marker`, next to the runtimes that
//! write them). [`OutputCommit`] is a pure state machine: lines and markers in,
//! releasable lines out.

pub use lazarus_coord::marker::{marker_key, Marker, MARKER_PREFIX};
use lazarus_format::CheckpointId;

#[derive(Debug)]
enum Item {
    Line(Vec<u8>),
    /// The start of an unfinished line, written before a marker that landed in the
    /// middle of it ([`OutputCommit::fragment`]); the rest of the line follows the marker.
    Fragment(Vec<u8>),
    /// Fragments whose position a release already passed (the part marker of `id` at
    /// `step` followed them): they wait for the rest of their line, which a restore from
    /// that checkpoint or a later one does not print again.
    Carried {
        text: Vec<u8>,
        id: CheckpointId,
        step: u64,
    },
    Part(CheckpointId, u64),
    /// Checkpoint call number `seq` at `step` began here (fast levels: [`Marker::Cut`]).
    Cut {
        seq: u64,
        step: u64,
    },
    /// A restart whose restore point is not known yet ([`OutputCommit::rollback_deferred`]):
    /// what precedes it waits for the ranks' `resumed` marker.
    Restart,
}

/// The checkpoint the ranks restored, as their `resumed` marker names it.
#[derive(Clone, Copy, Debug)]
struct Restored {
    step: u64,
    seq: Option<u64>,
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
    /// A rank wrote a cut marker: the job keeps fast checkpoint levels.
    saw_cuts: bool,
    /// Per rank, the newest part marker its stream delivered in this incarnation.
    delivered: Vec<Option<CheckpointId>>,
    /// The newest committed checkpoint when this incarnation was launched: given by
    /// [`OutputCommit::launching`] before the first one, then the restore point each
    /// rollback names (`None`: none).
    base: Option<CheckpointId>,
    /// The start of this job's markers: [`MARKER_PREFIX`], its key, `:`.
    marker_start: Vec<u8>,
}

impl OutputCommit {
    /// Empty buffers for `ranks` ranks of a job whose markers carry `key`.
    pub fn new(ranks: u32, key: &str) -> Self {
        OutputCommit {
            ranks: (0..ranks).map(|_| Vec::new()).collect(),
            committed: None,
            saw_cuts: false,
            delivered: vec![None; ranks as usize],
            base: None,
            marker_start: format!("{MARKER_PREFIX}{key}:").into_bytes(),
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

    /// Appends the start of an unfinished line of `rank`: the text before a marker that
    /// was written into the middle of the line (the program had printed part of a line
    /// when a checkpoint call or a background flush wrote its marker; see
    /// [`split_at_marker`]). The text keeps its place before the marker, and it leaves
    /// joined to the rest of its line (the next line), never alone.
    pub fn fragment(&mut self, rank: u32, text: Vec<u8>) {
        if text.is_empty() {
            return;
        }
        if let Some(b) = self.ranks.get_mut(rank as usize) {
            b.push(Item::Fragment(text));
        }
    }

    /// Appends the unfinished last line of `rank`'s stream: the stream ended inside it
    /// (the rank died mid-line, or a launcher's forwarding lost the rest in transit). No
    /// marker is read from it: a marker cut short may still parse, with a shorter number.
    /// A marker start in it ([`MARKER_PREFIX`] or a prefix of it after a record separator)
    /// is dropped, and the text before it waits, as the start of a line, for the rest of
    /// that line; any other text is a line of its own (it gets its newline).
    pub fn unterminated(&mut self, rank: u32, mut line: Vec<u8>) {
        match cut_marker(&line, &self.marker_start) {
            Some(at) => {
                line.truncate(at);
                self.fragment(rank, line);
            }
            None => {
                line.push(b'\n');
                self.line(rank, line);
            }
        }
    }

    /// Feeds a marker of `rank`; returns the lines that became releasable, `(rank, line)`.
    pub fn marker(&mut self, rank: u32, m: Marker) -> Vec<(u32, Vec<u8>)> {
        match m {
            Marker::Part { id, step } => {
                if let Some(b) = self.ranks.get_mut(rank as usize) {
                    b.push(Item::Part(id, step));
                }
                if let Some(d) = self.delivered.get_mut(rank as usize) {
                    *d = (*d).max(Some(id));
                }
                self.release()
            }
            Marker::Commit { id, .. } => self.mark_committed(id),
            Marker::Cut { seq, step } => {
                self.saw_cuts = true;
                if let Some(b) = self.ranks.get_mut(rank as usize) {
                    b.push(Item::Cut { seq, step });
                }
                Vec::new()
            }
            Marker::Resumed { id, step, seq } => self.resumed(id.map(|_| Restored { step, seq })),
            Marker::Repo { .. } | Marker::Refused { .. } => Vec::new(),
        }
    }

    /// The ranks restored checkpoint `restored` (`None`: they started fresh): settles
    /// every rank's lines held before a deferred restart. What the old run wrote up to
    /// that checkpoint's call (its cut marker: the last cut whose seq is `<=` the restored
    /// seq; by step when the restore names no seq, which cannot tell apart two calls at
    /// one step) is not written
    /// again by the re-execution: it stays, in front of the new run's output, as if no
    /// failure had happened. Everything after that call is written again: dropped. What
    /// stays is *not* released here: the restored copy lives on a fast level that a later
    /// failure may lose, and a restart from an older checkpoint would then drop it in
    /// turn; a durable commit after it (or the end of the job) releases it. Every rank
    /// restores the same checkpoint (the restore is agreed), so the first `resumed`
    /// marker settles all ranks, also those a shrunk job no longer has.
    fn resumed(&mut self, restored: Option<Restored>) -> Vec<(u32, Vec<u8>)> {
        for buf in &mut self.ranks {
            let Some(boundary) = buf.iter().rposition(|i| matches!(i, Item::Restart)) else {
                continue;
            };
            let before: Vec<Item> = buf.drain(..=boundary).collect();
            // Segment by segment (one per restart that never resumed): each segment's
            // markers are positions in that incarnation's run.
            let mut kept = Vec::new();
            let mut segment = Vec::new();
            for item in before {
                if !matches!(item, Item::Restart) {
                    segment.push(item);
                    continue;
                }
                let cut = restored.and_then(|r| {
                    segment.iter().rposition(|i| match (i, r.seq) {
                        (Item::Cut { seq, .. }, Some(restored)) => *seq <= restored,
                        (Item::Cut { step, .. }, None) => *step <= r.step,
                        _ => false,
                    })
                });
                if let Some(cut) = cut {
                    segment.truncate(cut + 1);
                    kept.append(&mut segment);
                } else {
                    // Text a release passed stays if the restore is not older than it.
                    kept.extend(segment.drain(..).filter(|i| {
                        matches!(i, Item::Carried { step, .. }
                            if restored.is_some_and(|r| r.step >= *step))
                    }));
                }
                segment.clear();
            }
            buf.splice(0..0, kept);
        }
        // A durable checkpoint already known committed may cover some of what stayed.
        self.release()
    }

    /// After a failure of a job with fast checkpoint levels, before the restart: first
    /// releases what the durable checkpoint `restored` commits, then keeps every other
    /// held line until the ranks say which step they restored (their `resumed` marker):
    /// the supervisor does not see the fast levels, so only the ranks know. Returns the
    /// lines released now.
    pub fn rollback_deferred(
        &mut self,
        restored: Option<(CheckpointId, u64)>,
    ) -> Vec<(u32, Vec<u8>)> {
        let released = self.restart_from(restored);
        for b in &mut self.ranks {
            b.push(Item::Restart);
        }
        released
    }

    /// The first incarnation is launched; `newest` is the newest checkpoint committed
    /// in the repository now (`None`: none; a supervisor may start on a repository that
    /// holds checkpoints). A rollback after it to a newer one knows this incarnation
    /// committed that one, so every rank printed its part marker
    /// (`OutputCommit::cover_undelivered`). Each rollback then sets it for the next
    /// incarnation (its restore point: nothing commits in between, the launcher fenced
    /// every rank of the failed launch).
    pub fn launching(&mut self, newest: Option<CheckpointId>) {
        self.base = newest;
        self.delivered.fill(None);
    }

    /// The start of every rollback: the next incarnation restarts from `restored`
    /// (`None`: from scratch). Releases what `restored` commits, covering part markers
    /// lost in transit ([`OutputCommit::cover_undelivered`]); returns the released lines.
    fn restart_from(&mut self, restored: Option<(CheckpointId, u64)>) -> Vec<(u32, Vec<u8>)> {
        let released = match restored {
            Some((id, step)) => {
                self.cover_undelivered(id, step);
                self.mark_committed(id)
            }
            None => Vec::new(),
        };
        self.launching(restored.map(|(id, _)| id));
        released
    }

    /// At a rollback to the committed checkpoint `id` (at `step`). If the failed
    /// incarnation committed it (it is newer than the newest committed checkpoint at that
    /// incarnation's launch), every rank wrote its part marker before it (a rank prints
    /// the marker before its vote, and COMMIT follows every vote). A rank whose stream
    /// has not delivered that marker lost the end of its stream in transit (a launcher
    /// such as `mpirun` forwards output through daemons that die with the job): all it
    /// did deliver precedes the marker, so the marker is put at its end and the commit
    /// covers it. Without this, a rollback to `id` dropped those lines as if the
    /// re-execution printed them again, which it does not (found by
    /// `every_output_line_is_released_once_across_a_restart_under_mpirun`). A stream cut
    /// inside the marker itself delivered its start as text ending the last line: that
    /// text is dropped, and what the line held before it waits, as a fragment, for the
    /// rest of its line. When the failed incarnation committed nothing newer, its ranks
    /// never print that marker: all they delivered follows it and is printed again.
    fn cover_undelivered(&mut self, id: CheckpointId, step: u64) {
        if self.base.is_some_and(|b| id <= b) {
            return;
        }
        for (buf, d) in self.ranks.iter_mut().zip(&self.delivered) {
            if d.is_some_and(|d| d >= id) {
                continue;
            }
            let cut = match buf.last() {
                Some(Item::Line(l)) => cut_marker(l, &self.marker_start).map(|at| l[..at].to_vec()),
                _ => None,
            };
            if let Some(text) = cut {
                buf.pop();
                if !text.is_empty() {
                    buf.push(Item::Fragment(text));
                }
            }
            buf.push(Item::Part(id, step));
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
            // Lines before a deferred restart wait for the ranks' restore point.
            let start = buf
                .iter()
                .rposition(|i| matches!(i, Item::Restart))
                .map_or(0, |p| p + 1);
            let cut = buf[start..]
                .iter()
                .rposition(|i| matches!(i, Item::Part(id, _) if *id <= c))
                .map(|p| start + p + 1);
            if let Some(cut) = cut {
                let drained: Vec<Item> = buf.drain(start..cut).collect();
                // The start of a line whose rest comes after the cut waits for it: the
                // text after the last whole line, each piece carried with the position
                // of the first part marker after it (a restore from that checkpoint or
                // a later one does not print it again; an older one does).
                let tail = drained
                    .iter()
                    .rposition(|i| matches!(i, Item::Line(_)))
                    .map_or(0, |p| p + 1);
                let mut drained = drained;
                let carried = drained.split_off(tail);
                let mut pending = Vec::new();
                for item in drained {
                    join(item, &mut pending, |l| out.push((r as u32, l)));
                }
                let mut after = (c, 0);
                let mut kept = Vec::new();
                for item in carried.into_iter().rev() {
                    match item {
                        Item::Part(id, step) => after = (id, step),
                        Item::Fragment(text) => kept.push(Item::Carried {
                            text,
                            id: after.0,
                            step: after.1,
                        }),
                        carried @ Item::Carried { .. } => kept.push(carried),
                        Item::Line(_) | Item::Cut { .. } | Item::Restart => {}
                    }
                }
                kept.reverse();
                buf.splice(start..start, kept);
            }
        }
        out
    }

    /// After a failure, before the restart from `restored` (`None`: from scratch): first
    /// releases what `restored` commits, then drops every line still held (they were
    /// printed after the restored point and will be printed again). Returns
    /// `(released, dropped_count)`.
    pub fn rollback(
        &mut self,
        restored: Option<(CheckpointId, u64)>,
    ) -> (Vec<(u32, Vec<u8>)>, usize) {
        let released = self.restart_from(restored);
        let restored = restored.map(|(id, _)| id);
        let mut dropped = 0;
        for b in &mut self.ranks {
            dropped += b.iter().filter(|i| matches!(i, Item::Line(_))).count();
            // Text a release passed stays for the rest of its line, unless the restore
            // is older than it (a damaged newer checkpoint) or a fresh start: then the
            // re-execution prints it again.
            b.retain(
                |i| matches!(i, Item::Carried { id, .. } if restored.is_some_and(|r| r >= *id)),
            );
        }
        (released, dropped)
    }

    /// At the successful end of the job: everything still held, rank by rank. Lines
    /// before a deferred restart that no `resumed` marker settled are dropped (without a
    /// restore point they count as printed again, as after a fresh start).
    pub fn finish(&mut self) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        for (r, b) in self.ranks.iter_mut().enumerate() {
            if let Some(boundary) = b.iter().rposition(|i| matches!(i, Item::Restart)) {
                b.drain(..=boundary);
            }
            let mut pending = Vec::new();
            for item in b.drain(..) {
                join(item, &mut pending, |l| out.push((r as u32, l)));
            }
            // The program ended without finishing its last line: it leaves with a newline,
            // as from the other ends of a stream (found in review: without one, the next
            // rank's line was glued to it, `[rank 0] tail[rank 1] ...`).
            if !pending.is_empty() {
                pending.push(b'\n');
                out.push((r as u32, pending));
            }
        }
        out
    }

    /// When the job ends without [`OutputCommit::finish`] (interrupted, refused, given
    /// up): the starts of lines that a committed checkpoint covers but whose rest never
    /// came, each ended with a newline. Everything else held is withheld (printed again
    /// by a resumed run); these are not, so they leave now.
    pub fn take_carried(&mut self) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        for (r, b) in self.ranks.iter_mut().enumerate() {
            // Adjacent pieces are one line (a release keeps each piece's position apart):
            // joined, with one newline.
            let mut line: Option<Vec<u8>> = None;
            for item in b.iter_mut() {
                match item {
                    Item::Carried { text, .. } => {
                        line.get_or_insert_with(Vec::new).extend_from_slice(text);
                    }
                    _ => {
                        if let Some(mut t) = line.take() {
                            t.push(b'\n');
                            out.push((r as u32, t));
                        }
                    }
                }
            }
            if let Some(mut t) = line.take() {
                t.push(b'\n');
                out.push((r as u32, t));
            }
            b.retain(|i| !matches!(i, Item::Carried { .. }));
        }
        out
    }

    /// True once a rank wrote a cut marker: its job keeps fast checkpoint levels (also
    /// when only its builder, not the launch's environment, says so), so a failure must
    /// use [`OutputCommit::rollback_deferred`].
    pub fn saw_cuts(&self) -> bool {
        self.saw_cuts
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

/// Where a line ends with the start of a marker cut off in transit: the last record
/// separator whose rest (without the newline the engine added) is a prefix of
/// `marker_start` (the job's [`MARKER_PREFIX`], key and `:`) or begins with it. Other
/// text holding the separator (a JSON text sequence, a marker-like line without the key)
/// is not a marker.
fn cut_marker(line: &[u8], marker_start: &[u8]) -> Option<usize> {
    let prefix = marker_start;
    let at = line.iter().rposition(|b| Some(b) == prefix.first())?;
    let rest = line[at..].strip_suffix(b"\n").unwrap_or(&line[at..]);
    (prefix.starts_with(rest) || rest.starts_with(prefix)).then_some(at)
}

/// Feeds one released item: fragments collect in `pending`, a line leaves joined to the
/// fragments before it, markers leave nothing.
fn join(item: Item, pending: &mut Vec<u8>, mut emit: impl FnMut(Vec<u8>)) {
    match item {
        Item::Fragment(t) | Item::Carried { text: t, .. } => pending.extend_from_slice(&t),
        Item::Line(l) if pending.is_empty() => emit(l),
        Item::Line(l) => {
            pending.extend_from_slice(&l);
            emit(std::mem::take(pending));
        }
        Item::Part(..) | Item::Cut { .. } | Item::Restart => {}
    }
}

/// Splits a rank's stdout line at a marker that does not start it: `(text before, the
/// marker line)`. A marker is written as one whole line, but when the program had
/// printed part of a line (`print!` without a newline) the marker lands after that text:
/// the text goes to [`OutputCommit::fragment`], the marker is parsed as usual, and the
/// rest of the program's line arrives as the next line. `None` when `line` has no
/// well-formed marker with the launch's `key` after its start (or starts with one).
pub fn split_at_marker<'a>(line: &'a [u8], key: &str) -> Option<(&'a [u8], &'a [u8])> {
    let prefix = format!("{MARKER_PREFIX}{key}:");
    let prefix = prefix.as_bytes();
    let at = line
        .windows(prefix.len())
        .position(|w| w == prefix)
        .filter(|&i| i > 0)?;
    let (text, marker) = line.split_at(at);
    // Only a well-formed marker is taken out: other text that happens to hold the
    // prefix stays one ordinary line.
    matches!(Marker::parse(marker, key), Some(Ok(_))).then_some((text, marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn l(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn commit_before_part_marker_of_a_slow_rank() {
        let mut o = OutputCommit::new(2, KEY);
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
        let (rel, dropped) = o.rollback(Some((CheckpointId(1), 0)));
        assert!(rel.is_empty());
        assert_eq!(dropped, 1);
        assert_eq!(o.held(), 0);
    }

    /// Regression (CI, `every_output_line_is_released_once_across_a_restart_under_mpirun`):
    /// rank 1's part marker of checkpoint 2, and its commit marker, were lost with the
    /// killed launcher's forwarding; the repository says 2 is committed. What rank 1 did
    /// deliver precedes its part marker of 2 (it printed the marker before 2 could
    /// commit), and the restore from 2 does not print it again: it must be released,
    /// not dropped (the old code dropped `b1`, a line lost for good).
    #[test]
    fn a_commit_whose_part_marker_was_lost_in_transit_releases_what_the_rank_delivered() {
        let p = |id| Marker::Part {
            id: CheckpointId(id),
            step: id * 5,
        };
        for deferred in [false, true] {
            let mut o = OutputCommit::new(2, KEY);
            let mut out = Vec::new();
            for r in 0..2 {
                o.line(r, l(&format!("a{r}")));
                out.extend(o.marker(r, p(1)));
            }
            out.extend(o.marker(
                0,
                Marker::Commit {
                    id: CheckpointId(1),
                    step: 5,
                },
            ));
            o.line(0, l("b0"));
            out.extend(o.marker(0, p(2)));
            o.line(0, l("c0"));
            o.line(1, l("b1"));
            let restored = Some((CheckpointId(2), 10));
            if deferred {
                out.extend(o.rollback_deferred(restored));
                // The ranks restored checkpoint 2; c0 is printed again.
                out.extend(o.marker(
                    0,
                    Marker::Resumed {
                        id: Some(CheckpointId(2)),
                        step: 10,
                        seq: None,
                    },
                ));
            } else {
                let (rel, dropped) = o.rollback(restored);
                out.extend(rel);
                assert_eq!(dropped, 1, "only c0 is printed again");
            }
            out.sort();
            assert_eq!(
                out,
                vec![(0, l("a0")), (0, l("b0")), (1, l("a1")), (1, l("b1"))],
                "deferred {deferred}"
            );
            // The next incarnation restored 2 and fails before any commit: what it
            // printed follows part 2 on every rank, and is printed again.
            o.line(0, l("c0"));
            o.line(1, l("c1"));
            let rel = if deferred {
                o.rollback_deferred(restored)
            } else {
                o.rollback(restored).0
            };
            assert!(rel.is_empty(), "deferred {deferred}: {rel:?}");
        }
    }

    /// Found in review of the fix above: a supervisor started on a repository that
    /// holds checkpoint 5 (a resumed `lazarus run --repo`) launches ranks that restore 5;
    /// they fail before committing anything. Nothing they printed precedes a part marker
    /// of 5 (they never print one), so everything is printed again: dropped, not
    /// released (which would duplicate it).
    #[test]
    fn a_run_restored_from_an_existing_checkpoint_is_not_taken_for_its_committer() {
        let mut o = OutputCommit::new(2, KEY);
        o.launching(Some(CheckpointId(5)));
        o.line(0, l("x0"));
        o.line(1, l("x1"));
        let (rel, dropped) = o.rollback(Some((CheckpointId(5), 50)));
        assert!(rel.is_empty(), "{rel:?}");
        assert_eq!(dropped, 2);
    }

    /// The stream of rank 0 was cut inside its part marker of the committed checkpoint
    /// 2 (the repository says 2 is committed): the start of the marker arrived as text
    /// ending a line that began with `half ` (printed without a newline before the
    /// checkpoint call). The marker's bytes are never shown; `half ` waits for the rest
    /// of its line, which the restore from 2 prints.
    #[test]
    fn a_marker_cut_in_transit_is_not_released_as_text() {
        let mut o = OutputCommit::new(1, KEY);
        o.launching(None);
        o.line(0, l("a0\n"));
        o.line(0, format!("half {MARKER_PREFIX}{KEY}:pa\n").into_bytes());
        let (mut rel, dropped) = o.rollback(Some((CheckpointId(2), 10)));
        assert_eq!((rel.clone(), dropped), (vec![(0, l("a0\n"))], 0));
        o.line(0, l("rest\n"));
        rel.extend(o.finish());
        assert_eq!(rel, vec![(0, l("a0\n")), (0, l("half rest\n"))]);
        // Found in review: a record separator that starts no marker (an RFC 7464 JSON
        // text sequence) is output, released with the lines before the lost marker.
        let mut o = OutputCommit::new(1, KEY);
        o.launching(None);
        let json = b"\x1e{\"a\": 1}\n".to_vec();
        o.line(0, json.clone());
        let (rel, _) = o.rollback(Some((CheckpointId(2), 10)));
        assert_eq!(rel, vec![(0, json)]);
        let start = format!("{MARKER_PREFIX}{KEY}:").into_bytes();
        assert_eq!(
            cut_marker(format!("x{MARKER_PREFIX}{KEY}:part 2").as_bytes(), &start),
            Some(1)
        );
        assert_eq!(cut_marker(b"x\x1ela\n", &start), Some(1));
        assert_eq!(cut_marker(b"x\x1elb\n", &start), None);
        // Found in review: a marker-like line without the key (the program's own text)
        // lost everything from its separator on at a rollback.
        assert_eq!(
            cut_marker(format!("x{MARKER_PREFIX}commit 1 0\n").as_bytes(), &start),
            None
        );
        let mut o = OutputCommit::new(1, KEY);
        o.launching(None);
        let forged = format!("text {MARKER_PREFIX}commit 1 0\n").into_bytes();
        o.line(0, forged.clone());
        let (rel, _) = o.rollback(Some((CheckpointId(2), 10)));
        assert_eq!(rel, vec![(0, forged)], "released as written");
    }

    #[test]
    fn a_line_cut_by_the_end_of_its_stream_keeps_its_text_and_drops_a_marker_start() {
        let mut o = OutputCommit::new(1, KEY);
        o.launching(None);
        o.line(0, l("a0\n"));
        // The text before a cut marker is the start of a line: it leaves joined to the
        // rest of that line, never as a line of its own.
        o.unterminated(
            0,
            format!("half {MARKER_PREFIX}{KEY}:resumed 5 50 1").into_bytes(),
        );
        let (mut rel, _) = o.rollback(Some((CheckpointId(2), 10)));
        o.line(0, l("rest\n"));
        // A cut line without a marker is a line: it gets its newline.
        o.unterminated(0, l("last"));
        rel.extend(o.finish());
        assert_eq!(
            rel,
            vec![(0, l("a0\n")), (0, l("half rest\n")), (0, l("last\n"))]
        );
    }

    #[test]
    fn rollback_releases_a_commit_found_in_the_repo() {
        let mut o = OutputCommit::new(1, KEY);
        o.line(0, l("x"));
        o.marker(
            0,
            Marker::Part {
                id: CheckpointId(4),
                step: 10,
            },
        );
        o.line(0, l("y"));
        let (rel, dropped) = o.rollback(Some((CheckpointId(4), 0)));
        assert_eq!(rel, vec![(0, l("x"))]);
        assert_eq!(dropped, 1);
    }
}

#[cfg(test)]
mod fast_level_tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";
    use proptest::prelude::*;

    fn l(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn cut(step: u64) -> Marker {
        Marker::Cut { seq: step, step }
    }

    fn resumed(step: Option<u64>) -> Marker {
        Marker::Resumed {
            id: step.map(CheckpointId),
            step: step.unwrap_or(0),
            seq: step,
        }
    }

    fn part(id: u64, step: u64) -> Marker {
        Marker::Part {
            id: CheckpointId(id),
            step,
        }
    }

    fn commit(id: u64, step: u64) -> Marker {
        Marker::Commit {
            id: CheckpointId(id),
            step,
        }
    }

    /// Two checkpoint calls at one step (`checkpoint_now`, then `finish`) with a line
    /// between them; the first one is restored. Matched by step, both cuts were "at or
    /// below" the restored step, the line stayed, and the re-execution, which resumes
    /// after the first call, printed it again.
    #[test]
    fn two_checkpoint_calls_at_one_step_release_the_line_between_them_once() {
        let mut o = OutputCommit::new(1, KEY);
        let mut out = Vec::new();
        o.line(0, l("before"));
        out.extend(o.marker(0, Marker::Cut { seq: 1, step: 10 }));
        o.line(0, l("between"));
        out.extend(o.marker(0, Marker::Cut { seq: 2, step: 10 }));
        o.line(0, l("after"));
        out.extend(o.rollback_deferred(None));
        out.extend(o.marker(
            0,
            Marker::Resumed {
                id: Some(CheckpointId(1)),
                step: 10,
                seq: Some(1),
            },
        ));
        assert_eq!(o.held(), 1, "only the line before the restored call stays");
        o.line(0, l("between"));
        out.extend(o.marker(0, Marker::Cut { seq: 2, step: 10 }));
        o.line(0, l("after"));
        out.extend(o.finish());
        assert_eq!(
            out,
            vec![(0, l("before")), (0, l("between")), (0, l("after"))]
        );
    }

    #[test]
    fn a_restore_from_a_fast_level_keeps_the_lines_before_its_cut() {
        // Rank 0 prints a line per step and cuts every 2 steps; no durable checkpoint.
        let mut o = OutputCommit::new(1, KEY);
        assert!(!o.saw_cuts());
        for step in 0..7u64 {
            if step % 2 == 0 {
                assert!(o.marker(0, cut(step)).is_empty());
            }
            o.line(0, l(&format!("line {step}")));
        }
        assert!(o.saw_cuts(), "the supervisor defers after a job that cuts");
        assert!(o.rollback_deferred(None).is_empty(), "nothing durable");
        assert_eq!(o.held(), 7, "held until the ranks resume");
        // The ranks restored step 4 from L1: lines 0..3 are not printed again; they stay
        // held (the L1 copy may still be lost) until a durable commit or the end.
        assert!(o.marker(0, resumed(Some(4))).is_empty());
        assert_eq!(o.held(), 4, "lines 4..6 are printed again: dropped");
        // The new run goes on as usual, after what stayed.
        o.line(0, l("line 4"));
        let want: Vec<_> = (0..5).map(|s| (0, l(&format!("line {s}")))).collect();
        assert_eq!(o.finish(), want);
    }

    /// Found in review: a marker written while the program's line was unfinished
    /// (`print!("a")`, then a checkpoint call or a background flush's commit marker)
    /// landed mid-line, where it was not recognised: the user saw the marker text and the
    /// supervisor missed it. Now the text before it keeps its place and leaves joined to
    /// the rest of its line, exactly once, also across a rollback to that marker.
    #[test]
    fn a_marker_in_the_middle_of_an_unfinished_line_is_taken_out_and_the_line_leaves_whole() {
        let raw = format!(
            "a{}\n",
            Marker::Part {
                id: CheckpointId(1),
                step: 5
            }
            .line(KEY)
        );
        let (text, marker) = split_at_marker(raw.as_bytes(), KEY).expect("a marker mid-line");
        assert_eq!(text, b"a");
        let Some(Ok(part)) = Marker::parse(marker, KEY) else {
            panic!("the marker parses once taken out: {marker:?}");
        };
        assert!(
            split_at_marker(marker, KEY).is_none(),
            "a line that starts with a marker"
        );
        assert!(split_at_marker(b"plain\n", KEY).is_none());
        assert!(
            split_at_marker(raw.as_bytes(), "fedcba9876543210").is_none(),
            "a marker with another key is text"
        );
        let commit = |id| Marker::Commit {
            id: CheckpointId(id),
            step: 5,
        };
        let part2 = |id| Marker::Part {
            id: CheckpointId(id),
            step: 6,
        };
        let mut o = OutputCommit::new(1, KEY);
        let mut out = Vec::new();
        o.fragment(0, text.to_vec());
        out.extend(o.marker(0, part));
        o.line(0, l("b\n"));
        out.extend(o.marker(0, commit(1)));
        assert!(out.is_empty(), "half a line never leaves alone");
        out.extend(o.marker(0, part2(2)));
        out.extend(o.marker(0, commit(2)));
        assert_eq!(out, vec![(0, l("ab\n"))]);
        // A rollback to the marker inside a line: the re-execution prints only the rest.
        let mut out = Vec::new();
        o.fragment(0, l("x"));
        out.extend(o.marker(0, part2(3)));
        out.extend(o.marker(0, commit(3)));
        o.line(0, l("y\n"));
        o.line(0, l("z\n"));
        let (rel, dropped) = o.rollback(Some((CheckpointId(3), 0)));
        out.extend(rel);
        assert_eq!(dropped, 2, "y and z are printed again");
        o.line(0, l("y\n"));
        o.line(0, l("z\n"));
        out.extend(o.finish());
        assert_eq!(out, vec![(0, l("xy\n")), (0, l("z\n"))]);
        // A program that ends in the middle of a line: the line gets its newline, so the
        // next rank's line is not glued to it.
        let mut o = OutputCommit::new(2, KEY);
        o.fragment(0, l("tail"));
        o.line(1, l("next\n"));
        assert_eq!(o.finish(), vec![(0, l("tail\n")), (1, l("next\n"))]);
        // Text that only looks like a marker stays one ordinary line.
        assert!(
            split_at_marker(format!("x{MARKER_PREFIX}{KEY}:nonsense\n").as_bytes(), KEY).is_none()
        );
    }

    /// Found in review of the fragment change: a fragment a release passed must not
    /// outlive a restore older than it or a fresh start (the re-execution prints it again,
    /// and it would be glued to another line), and must leave when the job ends without
    /// `finish` (nothing prints it again).
    #[test]
    fn a_carried_fragment_is_dropped_by_an_older_restore_and_leaves_at_an_interruption() {
        let run = |o: &mut OutputCommit, out: &mut Vec<(u32, Vec<u8>)>| {
            o.line(0, l("s0\n"));
            out.extend(o.marker(0, part(1, 1)));
            out.extend(o.marker(0, commit(1, 1)));
            o.fragment(0, l("r0 "));
            out.extend(o.marker(0, part(2, 2)));
            out.extend(o.marker(0, commit(2, 2)));
            o.line(0, l("s2\n"));
        };
        for restored in [None, Some((CheckpointId(1), 1))] {
            let mut o = OutputCommit::new(1, KEY);
            let mut out = Vec::new();
            run(&mut o, &mut out);
            // Checkpoint 2 turns out damaged: the job restarts from 1 (or from scratch).
            let (rel, _) = o.rollback(restored);
            out.extend(rel);
            if restored.is_none() {
                o.line(0, l("s0\n"));
            }
            o.line(0, l("r0 s2\n"));
            out.extend(o.finish());
            // (A fresh start prints `s0` again: it was released at checkpoint 1, which
            // is gone too. What matters here: `r0 ` is not glued to a re-printed line.)
            let mut want = vec![(0, l("s0\n"))];
            if restored.is_none() {
                want.push((0, l("s0\n")));
            }
            want.push((0, l("r0 s2\n")));
            assert_eq!(out, want, "restored {restored:?}");
        }
        let mut o = OutputCommit::new(1, KEY);
        let mut out = Vec::new();
        run(&mut o, &mut out);
        let (rel, _) = o.rollback(Some((CheckpointId(2), 0)));
        out.extend(rel);
        out.extend(o.take_carried());
        assert_eq!(out, vec![(0, l("s0\n")), (0, l("r0 \n"))]);
        assert!(o.take_carried().is_empty(), "once");
    }

    /// Regression (found in review): a carried line start that a second release passed
    /// without its rest was re-labelled with the second checkpoint, so a restore from the
    /// first (the second damaged) dropped it although the re-execution does not print it.
    #[test]
    fn a_carried_fragment_keeps_its_position_through_a_later_release() {
        let mut o = OutputCommit::new(1, KEY);
        let mut out = Vec::new();
        o.fragment(0, l("r0 "));
        out.extend(o.marker(0, part(2, 2)));
        out.extend(o.marker(0, commit(2, 2)));
        o.fragment(0, l("r1 "));
        out.extend(o.marker(0, part(3, 3)));
        out.extend(o.marker(0, commit(3, 3)));
        o.line(0, l("s3\n"));
        // Checkpoint 3 turns out damaged: the job restarts from 2, which re-prints what
        // followed part 2 (`r1 s3`), not what preceded it (`r0 `).
        let (rel, _) = o.rollback(Some((CheckpointId(2), 0)));
        out.extend(rel);
        o.line(0, l("r1 s3\n"));
        out.extend(o.finish());
        assert_eq!(out, vec![(0, l("r0 r1 s3\n"))]);
        // Interrupted instead, after commit 3: the two pieces leave as one line.
        let mut o = OutputCommit::new(1, KEY);
        o.fragment(0, l("r0 "));
        o.marker(0, part(2, 2));
        o.marker(0, commit(2, 2));
        o.fragment(0, l("r1 "));
        o.marker(0, part(3, 3));
        o.marker(0, commit(3, 3));
        assert_eq!(o.take_carried(), vec![(0, l("r0 r1 \n"))]);
    }

    #[test]
    fn a_fresh_start_or_a_restart_that_never_resumed_drops_the_held_lines() {
        let mut o = OutputCommit::new(2, KEY);
        o.marker(0, cut(2));
        o.line(0, l("a"));
        o.line(1, l("b"));
        o.rollback_deferred(None);
        // The next incarnation prints a banner and dies before resuming.
        o.line(0, l("banner"));
        o.rollback_deferred(None);
        assert!(o.marker(1, resumed(None)).is_empty());
        assert_eq!(o.held(), 0);
        // A deferred restart no rank settled: dropped at the end, never printed twice.
        let mut o = OutputCommit::new(1, KEY);
        o.line(0, l("x"));
        o.rollback_deferred(None);
        o.line(0, l("y"));
        assert_eq!(o.finish(), vec![(0, l("y"))]);
    }

    /// Found in review: lines kept on the strength of a fast-level restore must still be
    /// rolled back when a later failure restores an older checkpoint (the host holding
    /// the newer copy lost), or they are printed twice.
    #[test]
    fn a_later_restore_from_an_older_checkpoint_drops_what_a_fast_restore_kept() {
        let mut o = OutputCommit::new(1, KEY);
        let mut out = Vec::new();
        for step in 0..50u64 {
            if step % 10 == 0 {
                out.extend(o.marker(0, cut(step)));
            }
            o.line(0, l(&format!("line {step}")));
        }
        out.extend(o.rollback_deferred(None));
        out.extend(o.marker(0, resumed(Some(40))));
        for step in 40..45u64 {
            if step % 10 == 0 && step != 40 {
                out.extend(o.marker(0, cut(step)));
            }
            o.line(0, l(&format!("line {step}")));
        }
        // The L1 copy of step 40 is lost with its host: the next run restores step 20.
        out.extend(o.rollback_deferred(None));
        out.extend(o.marker(0, resumed(Some(20))));
        for step in 20..60u64 {
            if step % 10 == 0 && step != 20 {
                out.extend(o.marker(0, cut(step)));
            }
            o.line(0, l(&format!("line {step}")));
        }
        out.extend(o.finish());
        let want: Vec<_> = (0..60).map(|s| (0, l(&format!("line {s}")))).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn a_later_commit_does_not_release_lines_of_an_unsettled_restart() {
        let mut o = OutputCommit::new(1, KEY);
        o.line(0, l("old"));
        o.marker(
            0,
            Marker::Part {
                id: CheckpointId(5),
                step: 9,
            },
        );
        o.rollback_deferred(None);
        // Checkpoint 5 (of the new run) commits before the resumed marker is read.
        o.marker(
            0,
            Marker::Part {
                id: CheckpointId(5),
                step: 3,
            },
        );
        assert!(o
            .marker(
                0,
                Marker::Commit {
                    id: CheckpointId(5),
                    step: 3
                }
            )
            .is_empty());
        assert_eq!(o.held(), 1);
    }

    proptest! {
        /// A model of one rank: at every step s it may call a checkpoint (a cut), prints
        /// `line s`, and at some steps calls a second checkpoint at the same step (as
        /// `checkpoint_now` then `finish` do) and prints `extra s`. It fails after
        /// `fail` events, restores one of the cuts before the failure (or nothing), and
        /// re-executes from just after that cut to `end`. What is released must be every
        /// line of a failure-free run, each once, in order.
        #[test]
        fn every_line_is_released_exactly_once(
            cuts in proptest::collection::btree_set(0u64..40, 0..10),
            doubles in proptest::collection::btree_set(0u64..40, 0..6),
            splits in proptest::collection::btree_set(0u64..40, 0..6),
            fail in 1usize..80,
            pick in any::<proptest::sample::Index>(),
            end in 40u64..50,
        ) {
            enum Ev { Cut { seq: u64, step: u64 }, Frag(String), Line(String) }
            let mut events = Vec::new();
            let mut seq = 0;
            for step in 0..end {
                if cuts.contains(&step) {
                    seq += 1;
                    events.push(Ev::Cut { seq, step });
                }
                events.push(Ev::Line(format!("line {step}")));
                if doubles.contains(&step) {
                    if splits.contains(&step) {
                        // `print!("ex")`, the second call's marker, then the rest.
                        events.push(Ev::Frag("ex".into()));
                        seq += 1;
                        events.push(Ev::Cut { seq, step });
                        events.push(Ev::Line(format!("tra {step}")));
                    } else {
                        seq += 1;
                        events.push(Ev::Cut { seq, step });
                        events.push(Ev::Line(format!("extra {step}")));
                    }
                }
            }
            let fail = fail.min(events.len());
            let mut o = OutputCommit::new(1, KEY);
            let mut out = Vec::new();
            let feed = |o: &mut OutputCommit, e: &Ev, out: &mut Vec<(u32, Vec<u8>)>| match e {
                Ev::Cut { seq, step } => out.extend(o.marker(0, Marker::Cut { seq: *seq, step: *step })),
                Ev::Frag(t) => o.fragment(0, l(t)),
                Ev::Line(t) => o.line(0, l(t)),
            };
            for e in &events[..fail] {
                feed(&mut o, e, &mut out);
            }
            out.extend(o.rollback_deferred(None));
            let before: Vec<usize> = (0..fail)
                .filter(|&i| matches!(events[i], Ev::Cut { .. }))
                .collect();
            let restored = (!before.is_empty()).then(|| before[pick.index(before.len())]);
            let (resume_at, marker) = match restored.map(|i| &events[i]) {
                Some(Ev::Cut { seq, step }) => (
                    restored.map_or(0, |i| i + 1),
                    Marker::Resumed { id: Some(CheckpointId(*seq)), step: *step, seq: Some(*seq) },
                ),
                _ => (0, Marker::Resumed { id: None, step: 0, seq: None }),
            };
            out.extend(o.marker(0, marker));
            for e in &events[resume_at..] {
                feed(&mut o, e, &mut out);
            }
            out.extend(o.finish());
            let mut want = Vec::new();
            let mut pending = String::new();
            for e in &events {
                match e {
                    Ev::Frag(t) => pending.push_str(t),
                    Ev::Line(t) => want.push((0u32, l(&(std::mem::take(&mut pending) + t)))),
                    Ev::Cut { .. } => {}
                }
            }
            prop_assert_eq!(out, want);
        }
    }
}
