//! A state larger than the staging budget is captured in pieces (issue #16 item 3,
//! docs/ASYNC.md): 256 MiB of state with a 64 MiB budget. What fits in the budget is
//! copied and flushed in the background, the rest written inside the call; peak resident
//! memory (VmHWM) over the state stays within the budget plus a documented constant, and
//! the restore gives the exact values at the call. Its own test binary: VmHWM is per
//! process.

mod common;

use common::peak_rss;

use lazarus::{Checkpoint, Job};

/// What the writer and the runtime may hold besides the staging copy (compression
/// buffers of a few chunks in flight per core, manifests, channel buffers):
/// docs/ASYNC.md.
const SLACK: u64 = 48 << 20;

#[derive(Checkpoint)]
struct Big {
    a: Vec<u64>,
    b: Vec<f64>,
}

fn word(i: u64, seed: u64) -> u64 {
    (i ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[test]
fn a_256_mib_state_with_a_64_mib_budget_is_captured_in_pieces() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("SKIPPED: no /proc/self/status to read the peak RSS from");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let budget: u64 = 64 << 20;
    let words = (128 << 20) / 8;
    // Two 128 MiB arrays, incompressible and touched (resident before the measurement).
    let mut s = Big {
        a: (0..words).map(|i| word(i, 1)).collect(),
        b: (0..words).map(|i| word(i, 2) as f64).collect(),
    };
    let before = peak_rss();
    let id = {
        let mut job = Job::builder()
            .repo(&repo)
            .staging_budget(budget)
            .open()
            .unwrap();
        job.restore_or_init(|| Big {
            a: Vec::new(),
            b: Vec::new(),
        })
        .unwrap();
        let id = job.checkpoint_now(&s).unwrap();
        // The program goes on at once: the background flush must not see this.
        s.a.iter_mut().step_by(4096).for_each(|w| *w = 0);
        s.b.iter_mut().step_by(4096).for_each(|w| *w = -1.0);
        let r = *job.flush().unwrap().unwrap();
        assert_eq!(r.checkpoint, id);
        assert!(r.flush.is_some(), "in pieces, not synchronous: {r}");
        id
    };
    let grew = peak_rss().saturating_sub(before);
    eprintln!("peak RSS over the state: {} MiB", grew >> 20);
    assert!(
        grew <= budget + SLACK,
        "peak RSS grew by {} MiB for a 256 MiB state with a 64 MiB budget (allowed {} MiB)",
        grew >> 20,
        (budget + SLACK) >> 20
    );
    drop(s);
    let mut job = Job::builder().repo(&repo).sync_writes().open().unwrap();
    let got = job
        .restore_or_init(|| Big {
            a: Vec::new(),
            b: Vec::new(),
        })
        .unwrap();
    assert_eq!(job.restore_report().map(|r| r.checkpoint), Some(id));
    assert_eq!(got.a.len() as u64, words);
    assert_eq!(got.b.len() as u64, words);
    for i in 0..words {
        assert_eq!(got.a[i as usize], word(i, 1), "a[{i}]");
        assert_eq!(
            got.b[i as usize].to_bits(),
            (word(i, 2) as f64).to_bits(),
            "b[{i}]"
        );
    }
}
