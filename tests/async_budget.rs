//! Staging memory of asynchronous checkpoints is bounded (issue #16, docs/ASYNC.md): a state
//! over `.staging_budget` is captured in pieces (at most the budget copied, the rest
//! written inside the call), a state under it costs one copy; the peak resident memory (VmHWM) over the state stays within the budget
//! plus a documented constant. Its own test binary: VmHWM is per process.

mod common;

use common::peak_rss;

use lazarus::{Checkpoint, Job};

/// What the writer and the runtime may hold besides the staging copy (compression buffers
/// of at most 4 chunks in flight, manifests, channel buffers): docs/ASYNC.md.
const SLACK: u64 = 48 << 20;

#[derive(Checkpoint)]
struct Big {
    data: Vec<u64>,
}

fn state(bytes: usize, seed: u64) -> Big {
    Big {
        // Incompressible-ish and touched: resident before the measurement starts.
        data: (0..bytes as u64 / 8)
            .map(|i| (i ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect(),
    }
}

#[test]
fn peak_memory_stays_within_the_staging_budget() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("SKIPPED: no /proc/self/status to read the peak RSS from");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let budget: u64 = 32 << 20;
    // 1. A state under the budget: one staging copy, reused by the next checkpoint.
    let mut small = state(24 << 20, 2);
    let before = peak_rss();
    {
        let mut job = Job::builder()
            .repo(dir.path().join("b"))
            .staging_budget(budget)
            .open()
            .unwrap();
        job.restore_or_init(|| Big { data: Vec::new() }).unwrap();
        for round in 0..3u64 {
            small
                .data
                .iter_mut()
                .step_by(512)
                .for_each(|w| *w ^= round + 1);
            job.checkpoint_now(&small).unwrap();
        }
        let r = *job.flush().unwrap().unwrap();
        assert!(r.flush.is_some(), "under the budget: asynchronous ({r})");
    }
    let grew = peak_rss().saturating_sub(before);
    assert!(
        grew <= budget + SLACK,
        "peak RSS grew by {} MiB for 3 checkpoints of a 24 MiB state (budget 32 MiB)",
        grew >> 20
    );
    // 2. A state four times the budget (a staging copy would add 128 MiB): captured in
    //    pieces, at most the budget staged (the rest written inside the call).
    let big = state(128 << 20, 1);
    let before = peak_rss();
    {
        let mut job = Job::builder()
            .repo(dir.path().join("a"))
            .staging_budget(budget)
            .open()
            .unwrap();
        job.restore_or_init(|| Big { data: Vec::new() }).unwrap();
        job.checkpoint_now(&big).unwrap();
        let r = *job.flush().unwrap().unwrap();
        assert!(
            r.flush.is_some(),
            "over the budget: in pieces, flushed in the background ({r})"
        );
    }
    let grew = peak_rss().saturating_sub(before);
    assert!(
        grew <= budget + SLACK,
        "peak RSS grew by {} MiB for a 128 MiB state with a 32 MiB budget",
        grew >> 20
    );
}
