//! Peak memory of an unaligned snapshot over the staging budget (issue #16 item 3,
//! docs/ASYNC.md "Unaligned rounds"): 256 MiB of state with a 64 MiB budget, one rank.
//! The snapshot copies what fits in the budget and writes the rest inside the call, so
//! peak resident memory (VmHWM) over the state stays within the budget plus a documented
//! constant, and the checkpoint holds the values at the call although the program
//! overwrites them right after it. Its own test binary: VmHWM is per process.

mod common;

use common::{comms, peak_rss};
use lazarus_coord::{AsyncConfig, AsyncSession, Outcome};
use lazarus_format::Rank;
use lazarus_state::Checkpoint;
use std::time::{Duration, Instant};

/// What the writer and the runtime may hold besides the staging copy (compression
/// buffers of a few chunks in flight per core, manifests, channel buffers); the same
/// constant as the Job's (`tests/async_pieces.rs`, docs/ASYNC.md).
const SLACK: u64 = 48 << 20;

#[derive(Checkpoint, Default)]
struct Big {
    a: Vec<u64>,
    b: Vec<f64>,
}

fn word(i: u64, seed: u64) -> u64 {
    (i ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[test]
fn a_256_mib_unaligned_snapshot_with_a_64_mib_budget_is_captured_in_pieces() {
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
    let mut cfg = AsyncConfig::new(&repo);
    cfg.staging_budget = budget;
    let before = peak_rss();
    let (mut session, _) = AsyncSession::open(comms(1).remove(0), cfg, &mut s).unwrap();
    let t = Instant::now();
    assert!(session.start_checkpoint(&s).unwrap(), "a round starts");
    // The program goes on at once: the background writer must not see this.
    s.a.iter_mut().step_by(4096).for_each(|w| *w = 0);
    s.b.iter_mut().step_by(4096).for_each(|w| *w = -1.0);
    let report = loop {
        if let Some(r) = session.take_report() {
            break r;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "round never decided");
        session.poll(&s).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(report.outcome, Outcome::Commit, "{report:?}");
    let stats = session.stats();
    session.finish(&s, Duration::from_secs(10)).unwrap();
    let grew = peak_rss().saturating_sub(before);
    eprintln!(
        "peak RSS over the state: {} MiB; copied {} MiB, written in the call {} MiB",
        grew >> 20,
        stats.captured_bytes >> 20,
        stats.ahead_bytes >> 20
    );
    assert!(stats.captured_bytes <= budget, "{stats:?}");
    assert!(
        grew <= budget + SLACK,
        "peak RSS grew by {} MiB for a 256 MiB state with a 64 MiB budget (allowed {} MiB)",
        grew >> 20,
        (budget + SLACK) >> 20
    );
    drop(s);
    let reader = lazarus_store::RepoReader::open(&repo).unwrap();
    let mut got = Big::default();
    let objects = reader
        .load_part(report.round.ckpt, Rank(0))
        .unwrap()
        .into_iter()
        .filter(|o| o.info.name != lazarus_coord::CHANNELS_OBJECT)
        .collect();
    lazarus_state::restore(&mut got, objects).unwrap();
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
