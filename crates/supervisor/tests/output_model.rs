//! Model-based proptest of output commit: a simulated job (ranks print one line per step,
//! an aligned checkpoint every K steps with part/commit markers) crashes at random points
//! with random cross-rank interleavings; the released output must contain every line of
//! every rank exactly once, in step order per rank. A crash may also lose the end of a
//! rank's stream in transit, from its part marker of the newest committed checkpoint on
//! (a launcher such as `mpirun` forwards output through daemons that die with the job).

use lazarus_format::CheckpointId;
use lazarus_supervisor::{Marker, OutputCommit};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Ev {
    Line(u64),
    Part(u64),
    Commit(u64),
}

/// Each rank's stream for one incarnation starting at `from` (restored step).
fn streams(ranks: u32, steps: u64, every: u64, from: u64) -> Vec<Vec<Ev>> {
    (0..ranks)
        .map(|r| {
            let mut v = Vec::new();
            for s in from..steps {
                if s > 0 && s % every == 0 && s != from {
                    v.push(Ev::Part(s));
                    if r == 0 {
                        v.push(Ev::Commit(s));
                    }
                }
                v.push(Ev::Line(s));
            }
            v
        })
        .collect()
}

fn feed(
    o: &mut OutputCommit,
    r: u32,
    e: &Ev,
    out: &mut [Vec<u64>],
    text: &dyn Fn(u32, u64) -> Vec<u8>,
) {
    let rel = match e {
        Ev::Line(s) => {
            o.line(r, text(r, *s));
            Vec::new()
        }
        Ev::Part(s) => o.marker(
            r,
            Marker::Part {
                id: CheckpointId(*s),
                step: *s,
            },
        ),
        Ev::Commit(s) => o.marker(
            r,
            Marker::Commit {
                id: CheckpointId(*s),
                step: *s,
            },
        ),
    };
    collect(rel, out);
}

fn collect(rel: Vec<(u32, Vec<u8>)>, out: &mut [Vec<u64>]) {
    for (r, l) in rel {
        let s: u64 = String::from_utf8_lossy(&l)
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or(u64::MAX);
        out[r as usize].push(s);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn every_line_released_exactly_once(
        ranks in 1u32..4,
        steps in 1u64..30,
        every in 1u64..6,
        crashes in proptest::collection::vec((any::<u64>(), any::<bool>(), any::<bool>()), 0..4),
        order in any::<u64>(),
    ) {
        let text = |r: u32, s: u64| format!("r{r} step {s}\n").into_bytes();
        let mut o = OutputCommit::new(ranks, "0123456789abcdef");
        let mut out = vec![Vec::new(); ranks as usize];
        let mut from = 0u64;
        let mut committed: Option<u64> = None;
        let mut rng = order;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for (cut, commit_unmarked, marker_lost) in
            crashes.iter().copied().chain([(u64::MAX, false, false)])
        {
            let st = streams(ranks, steps, every, from);
            // Crash: each rank got a prefix of its stream out (a whole stream when done).
            let mut lens: Vec<usize> = st
                .iter()
                .map(|v| if cut == u64::MAX { v.len() } else { (cut ^ next()) as usize % (v.len() + 1) })
                .collect();
            // A commit marker implies every rank's part of it was printed before, and
            // so delivered, unless the crash lost the marker (and what follows) in
            // transit; everything before it was delivered.
            if let Some(len0) = lens.first().copied() {
                let needed = st[0][..len0]
                    .iter()
                    .filter_map(|e| if let Ev::Commit(s) = e { Some(*s) } else { None })
                    .max();
                for (r, v) in st.iter().enumerate() {
                    let Some(s) = needed else { break };
                    if let Some(p) = v.iter().position(|e| matches!(e, Ev::Part(x) if *x == s)) {
                        let lost = marker_lost && r > 0 && lens[r] <= p;
                        lens[r] = lens[r].max(if lost { p } else { p + 1 });
                    }
                }
            }
            // Random interleaving of the ranks' prefixes.
            let mut pos = vec![0usize; ranks as usize];
            while pos.iter().zip(&lens).any(|(p, l)| p < l) {
                let r = (next() % ranks as u64) as usize;
                if pos[r] < lens[r] {
                    feed(&mut o, r as u32, &st[r][pos[r]], &mut out, &text);
                    pos[r] += 1;
                }
            }
            if cut == u64::MAX {
                collect(o.finish(), &mut out);
                break;
            }
            // Newest committed: the last commit marker printed, or (rank 0 died between
            // COMMIT and its marker) the next checkpoint whose parts are all out.
            for e in &st[0][..lens[0]] {
                if let Ev::Commit(s) = e { committed = Some(*s); }
            }
            if commit_unmarked {
                let all_parts = |s: u64| st.iter().zip(&lens).all(|(v, l)| v[..*l].iter().any(|e| matches!(e, Ev::Part(x) if *x == s)));
                if let Some(Ev::Part(s)) = st[0][..lens[0]].iter().rev().find(|e| matches!(e, Ev::Part(_))) {
                    if Some(*s) > committed && all_parts(*s) {
                        committed = Some(*s);
                    }
                }
            }
            let (rel, _) = o.rollback(committed.map(|s| (CheckpointId(s), s)));
            collect(rel, &mut out);
            from = committed.unwrap_or(0);
        }
        for (r, got) in out.iter().enumerate() {
            let want: Vec<u64> = (0..steps).collect();
            prop_assert_eq!(got, &want, "rank {}", r);
        }
    }
}
