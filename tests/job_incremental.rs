//! The bulk path is incremental: updating 1 % of a large array makes the next checkpoint
//! store about 1 % of its bytes. Plus an ignored measurement of save/restore throughput.

use lazarus::store::{Codec, RepoOptions, RepoReader};
use lazarus::{Checkpoint, Job};
use std::time::Instant;

#[derive(Checkpoint)]
struct Big {
    step: u64,
    field: Vec<f64>,
}

fn options(chunk_size: u32) -> RepoOptions {
    RepoOptions {
        chunk_size,
        codec: Codec::None,
        ..RepoOptions::default()
    }
}

#[test]
fn updating_one_percent_writes_about_one_percent() {
    let dir = tempfile::tempdir().unwrap();
    // 100 chunks of 64 KiB.
    let n = 100 * (64 << 10) / 8;
    let mut job = Job::builder()
        .repo(dir.path())
        .repo_options(options(64 << 10))
        .every_steps(1)
        .keep(5)
        .open()
        .unwrap();
    let mut big = job
        .restore_or_init(|| Big {
            step: 0,
            field: (0..n).map(|i| i as f64).collect(),
        })
        .unwrap();
    job.checkpoint(&big).unwrap(); // step 0: nothing saved (policy starts at step 1)
    big.step = 1;
    job.checkpoint(&big).unwrap(); // step 1: full checkpoint
                                   // Touch 1 % of the elements, contiguous (one chunk's worth).
    let start = n / 3;
    for x in &mut big.field[start..start + n / 100] {
        *x = -*x;
    }
    big.step = 2;
    job.checkpoint(&big).unwrap(); // step 2: incremental
    job.flush().unwrap(); // asynchronous by default: wait for the background write
    let all = RepoReader::open(dir.path()).unwrap().committed().unwrap();
    let (full, incr) = (&all[0], &all[1]);
    assert_eq!((full.step, incr.step), (1, 2));
    let array_bytes = (n * 8) as u64;
    assert!(
        full.stored_new_bytes >= array_bytes,
        "first checkpoint stores everything: {}",
        full.stored_new_bytes
    );
    println!(
        "full: {} B new, incremental: {} B new of {} B logical",
        full.stored_new_bytes, incr.stored_new_bytes, incr.logical_bytes
    );
    // 1 % touched may straddle two chunks; allow 2 chunks plus small serde objects.
    assert!(
        incr.stored_new_bytes <= 2 * (64 << 10) + 4096,
        "incremental stored {} B",
        incr.stored_new_bytes
    );
}

/// `cargo test -p lazarus --release --test job_incremental -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_state_throughput() {
    let n = 16 << 20; // 128 MiB of f64
    let big = Big {
        step: 1,
        field: (0..n).map(|i| (i as f64).sin()).collect(),
    };
    let bytes = (n * 8) as f64;
    let t = Instant::now();
    let mut copy = big.field.clone();
    let memcpy = bytes / t.elapsed().as_secs_f64();
    copy[0] = 1.0;
    let t = Instant::now();
    let objs = lazarus::state::save(&big).unwrap();
    let save = t.elapsed();
    let loaded = lazarus::state::to_loaded(&objs);
    let mut back = Big {
        step: 0,
        field: Vec::with_capacity(n),
    };
    let t = Instant::now();
    lazarus::state::restore(&mut back, loaded).unwrap();
    let restore = bytes / t.elapsed().as_secs_f64();
    assert_eq!(back.field, big.field);
    let dir = tempfile::tempdir().unwrap();
    let mut job = Job::builder()
        .repo(dir.path())
        .repo_options(options(1 << 20))
        .open()
        .unwrap();
    job.restore_or_init(|| Big {
        step: 0,
        field: Vec::new(),
    })
    .unwrap();
    let t = Instant::now();
    job.checkpoint_now(&big).unwrap();
    let ckpt = bytes / t.elapsed().as_secs_f64();
    let t = Instant::now();
    job.checkpoint_now(&big).unwrap();
    let ckpt_unchanged = bytes / t.elapsed().as_secs_f64();
    let gb = |x: f64| x / 1e9;
    println!(
        "memcpy (fresh destination, same run): {:.2} GB/s",
        gb(memcpy)
    );
    println!("state::save (zero-copy borrow): {:?} for 128 MiB", save);
    println!(
        "state::restore into a fresh Vec: {:.2} GB/s = {:.2} x memcpy",
        gb(restore),
        restore / memcpy
    );
    println!(
        "Job::checkpoint_now, new data (hash+write+fsync): {:.2} GB/s",
        gb(ckpt)
    );
    println!(
        "Job::checkpoint_now, unchanged data (hash only): {:.2} GB/s",
        gb(ckpt_unchanged)
    );
}
