//! Real processes (`lazarus run`, TCP on loopback, fsync, SIGKILL): a k-means whose points
//! and labels are two `DVec`s balanced together (`balance_together`), with centroid sums
//! reduced by `ExactSums`, finishes with the same centroids and labels on any number of
//! ranks, after a rank is killed and the job shrinks onto fewer ranks, and after a restart
//! on more ranks. The worker is this test binary itself, run by `lazarus run` with
//! `WORKER_ENV` set (the `kmeans_worker` test does nothing without it).

mod common;

use common::{checksum, lazarus_run_worker, text};
use lazarus::dist::{balance_together, ExactSums};
use lazarus::format::Rank;
use lazarus::net::ReduceOp;
use lazarus::{Checkpoint, Comm, DVec, Job};
use std::error::Error;

/// `steps,every,balance_every` for the worker.
const WORKER_ENV: &str = "LAZARUS_TEST_KMEANS";
const ROWS: u64 = 20_000;
const K: usize = 4;

#[derive(Checkpoint)]
struct KMeans {
    /// rows of (x, y)
    points: DVec<f64>,
    labels: DVec<u32>,
    /// the same on every rank: computed from an allreduce
    #[checkpoint(serde, replicated)]
    centroids: Vec<f64>,
}

/// Four blobs with deterministic jitter.
fn point(g: u64) -> [f64; 2] {
    let c = (g % K as u64) as f64;
    let mut h = g.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 31;
    let jx = (h % 1000) as f64 / 250.0 - 2.0;
    let jy = ((h >> 20) % 1000) as f64 / 250.0 - 2.0;
    [c * 3.0 + jx, (c * 7.0) % 5.0 + jy]
}

fn nearest(p: &[f64], centroids: &[f64]) -> u32 {
    let d = |k: usize| (p[0] - centroids[2 * k]).powi(2) + (p[1] - centroids[2 * k + 1]).powi(2);
    (1..K).fold(0, |best, k| if d(k) < d(best) { k } else { best }) as u32
}

impl KMeans {
    fn new(comm: &Comm) -> Result<KMeans, Box<dyn Error>> {
        let mut points = DVec::<f64>::with_width(comm, ROWS, 2)?;
        points.for_each_row_mut(|g, r| r.copy_from_slice(&point(g)));
        Ok(KMeans {
            points,
            labels: DVec::new(comm, ROWS)?,
            centroids: (0..K as u64).flat_map(point).collect(),
        })
    }

    /// One Lloyd iteration. The labels are written inside `work`, so the group's balancer
    /// sees each rank's speed (and `LAZARUS_SLOWDOWN`).
    fn step(&mut self, comm: &Comm) -> Result<(), Box<dyn Error>> {
        let pts = self.points.local();
        let cents = &self.centroids;
        self.labels.work(|_, labels| {
            for (l, p) in labels.iter_mut().zip(pts.chunks_exact(2)) {
                *l = nearest(p, cents);
            }
        });
        let mut sums = ExactSums::new(2 * K);
        let mut counts = [0u64; K];
        for (&l, p) in self.labels.local().iter().zip(pts.chunks_exact(2)) {
            sums.add_at(2 * l as usize, p)?;
            counts[l as usize] += 1;
        }
        comm.allreduce(&mut counts, ReduceOp::Sum)?;
        let sums = sums.allreduce(comm)?.values();
        for (k, &n) in counts.iter().enumerate() {
            if n > 0 {
                self.centroids[2 * k] = sums[2 * k] / n as f64;
                self.centroids[2 * k + 1] = sums[2 * k + 1] / n as f64;
            }
        }
        Ok(())
    }
}

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn worker(spec: &str) -> Result<(), Box<dyn Error>> {
    let nums: Vec<u64> = spec
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{WORKER_ENV}={spec:?}: {e}"))?;
    let [steps, every, balance_every] = nums[..] else {
        return Err(format!("{WORKER_ENV}={spec:?}: expected steps,every,balance_every").into());
    };
    let mut job = Job::builder()
        .every_steps(every)
        .keep(2)
        .comm(lazarus::init()?)
        .open()?;
    let comm = job.comm().clone();
    let fresh = KMeans::new(&comm)?;
    let mut s = job.restore_or_init(|| fresh)?;
    if let (Some(r), Rank(0)) = (job.restore_report(), comm.rank()) {
        eprintln!("kmeans: {r}");
    }
    while job.step() < steps {
        let step = job.checkpoint(&s)?;
        s.step(&comm)?;
        if (step + 1) % balance_every == 0 {
            balance_together(&comm, &mut [&mut s.points, &mut s.labels])?;
            if s.points.range() != s.labels.range() {
                return Err(format!("{}: points and labels parted", comm.rank()).into());
            }
        }
    }
    let labels = s.labels.gather(&comm, Rank(0))?;
    if let Some(labels) = labels {
        let mut h = 0xcbf2_9ce4_8422_2325;
        for c in &s.centroids {
            h = fnv(h, &c.to_le_bytes());
        }
        for l in &labels {
            h = fnv(h, &l.to_le_bytes());
        }
        println!("kmeans checksum={h:016x}");
    }
    Ok(())
}

/// The rank program; does nothing unless `lazarus run` started it with `WORKER_ENV`.
#[test]
#[ignore = "a rank of the other tests, started by `lazarus run`"]
fn kmeans_worker() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        if let Err(e) = worker(&spec) {
            eprintln!("kmeans: error: {e}");
            std::process::exit(1);
        }
    }
}

fn run(n: u32, repo: &std::path::Path, extra: &[&str], spec: &str) -> std::process::Output {
    // Rank 1 three times slower: the balancer moves rows off it, so the checkpoints hold
    // skewed (but shared) blocks.
    let env = [(WORKER_ENV, spec), ("LAZARUS_SLOWDOWN", "1:3")];
    lazarus_run_worker("kmeans_worker", n, repo, extra, &env)
}

const SPEC: &str = "400,10,5";

fn reference() -> String {
    static R: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        checksum(&run(2, &d.path().join("ref"), &[], SPEC))
    })
    .clone()
}

#[test]
fn any_number_of_ranks_gives_the_same_centroids_and_labels() {
    let d = tempfile::tempdir().unwrap();
    assert_eq!(
        checksum(&run(3, &d.path().join("r3"), &[], SPEC)),
        reference()
    );
}

#[test]
fn killed_rank_shrinks_onto_two_ranks_with_the_same_result() {
    let d = tempfile::tempdir().unwrap();
    let out = run(
        3,
        &d.path().join("repo"),
        &[
            "--shrink-on-failure",
            "--min-ranks",
            "2",
            "--inject-kill-after",
            "1@2c",
        ],
        SPEC,
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(
        checksum(&out),
        reference(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("rank 1 was killed by signal 9"), "{stderr}");
    assert!(
        stderr.contains("written by 3 ranks on 2 ranks by redistribution"),
        "the restart must restore the 3-rank checkpoint on 2 ranks:\n{stderr}"
    );
}

#[test]
fn restart_on_more_ranks_continues_with_the_same_result() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    // A first run that stops at step 200 (checkpointed), then the rest on 5 ranks.
    let first = run(2, &repo, &[], "200,10,5");
    assert!(first.status.success(), "{:?}", text(&first));
    let out = run(5, &repo, &[], SPEC);
    let (_, stderr) = text(&out);
    assert_eq!(checksum(&out), reference(), "{stderr}");
    assert!(
        stderr.contains("written by 2 ranks on 5 ranks by redistribution"),
        "{stderr}"
    );
}
