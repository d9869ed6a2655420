//! Property: random values of the supported field types survive a real checkpoint
//! (postcard + raw LE chunks + fsync + COMMIT) and a restore by a new Job, bit for bit.

use lazarus::store::{Codec, RepoOptions};
use lazarus::{Checkpoint, Job};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
enum Phase {
    #[default]
    Warmup,
    Run {
        iter: u32,
        tag: String,
    },
}

#[derive(Checkpoint, Clone, Debug, Default)]
struct State {
    step: u64,
    temp: f64,
    flag: bool,
    label: String,
    best: Option<i32>,
    grid: Vec<f64>,
    mask: Vec<u8>,
    counts: Vec<i64>,
    coeffs: [f32; 4],
    #[checkpoint(serde)]
    phase: Phase,
}

fn bits(s: &State) -> Vec<u8> {
    lazarus::state::save(s)
        .unwrap()
        .iter()
        .flat_map(|o| o.data.to_vec())
        .collect()
}

prop_compose! {
    fn state()(
        step in any::<u64>(), temp in any::<f64>(), flag in any::<bool>(), label in ".{0,12}",
        best in any::<Option<i32>>(),
        grid in prop::collection::vec(any::<f64>(), 0..3000),
        mask in prop::collection::vec(any::<u8>(), 0..5000),
        counts in prop::collection::vec(any::<i64>(), 0..100),
        coeffs in any::<[f32; 4]>(),
        phase in prop_oneof![Just(Phase::Warmup), (any::<u32>(), ".{0,5}").prop_map(|(iter, tag)| Phase::Run { iter, tag })],
    ) -> State {
        State { step, temp, flag, label, best, grid, mask, counts, coeffs, phase }
    }
}

proptest! {
    // Each case fsyncs a checkpoint: keep the count small.
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn checkpoint_then_restore_in_a_new_job(s in state(), zstd in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        // Small chunks so arrays span several; zstd or raw.
        let opts = RepoOptions { chunk_size: 4096, codec: if zstd { Codec::Zstd } else { Codec::None }, ..RepoOptions::default() };
        {
            let mut job = Job::builder().repo(dir.path()).repo_options(opts.clone()).open().unwrap();
            job.restore_or_init(State::default).unwrap();
            job.checkpoint_now(&s).unwrap();
        }
        let mut job = Job::builder().repo(dir.path()).repo_options(opts).open().unwrap();
        let back = job.restore_or_init(State::default).unwrap();
        prop_assert_eq!(bits(&back), bits(&s));
        prop_assert_eq!(&back.phase, &s.phase);
        prop_assert_eq!(&back.label, &s.label);
    }
}

#[test]
fn interval_policy_and_env_repo() {
    let dir = tempfile::tempdir().unwrap();
    // Only this test in this binary touches the variable.
    std::env::set_var(lazarus::REPO_ENV, dir.path());
    let mut job = Job::builder()
        .every(std::time::Duration::from_millis(1))
        .open()
        .unwrap();
    std::env::remove_var(lazarus::REPO_ENV);
    assert_eq!(job.repo_path(), dir.path());
    let mut s = job.restore_or_init(State::default).unwrap();
    while job.step() < 5 {
        job.checkpoint(&s).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3));
        s.step += 1;
    }
    drop(job);
    let mut job = Job::builder().repo(dir.path()).open().unwrap();
    let back = job.restore_or_init(State::default).unwrap();
    // The interval policy fired at least once after the first opportunity.
    assert!(
        job.step() >= 1 && job.step() <= 4,
        "restored step {}",
        job.step()
    );
    assert_eq!(back.step, job.step());
}
