//! Measurement (ignored; run with `cargo test -p lazarus-supervisor --release --test
//! recovery_time -- --ignored --nocapture`): recovery time from a SIGKILL to every rank
//! resumed, against the state size, next to the time to read the same checkpoint bytes.

mod common;

use common::{deadline, Probe};
use lazarus_supervisor::{KillPlan, KillTrigger, PlannedKill, Supervisor};
use std::time::{Duration, Instant};

fn read_all(dir: &std::path::Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                n += read_all(&p);
            } else if let Ok(b) = std::fs::read(&p) {
                n += b.len() as u64;
            }
        }
    }
    n
}

#[test]
#[ignore = "measurement"]
fn recovery_time_vs_state_size() {
    deadline(600);
    let probe = Probe {
        ranks: 4,
        steps: 6,
        every: 2,
        sleep_ms: 50,
        lines: 1,
    };
    println!("ranks state/rank  restart  resumed  read(same bytes)");
    for kib in [16u64, 1024, 16 * 1024, 64 * 1024] {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let plan = KillPlan {
            seed: 1,
            kills: vec![PlannedKill {
                incarnation: 0,
                rank: None,
                trigger: KillTrigger::AfterCommits {
                    commits: 1,
                    delay: Duration::from_millis(10),
                },
            }],
            ..KillPlan::default()
        };
        let mut cfg = probe.config(&repo, plan, 2);
        if let Some(a) = cfg.launch.args.iter_mut().last() {
            *a = "1".into();
        }
        cfg.launch.args.push("--state-kib".into());
        cfg.launch.args.push(kib.to_string().into());
        let r = Supervisor::run(&cfg).unwrap();
        let f = &r.failures[0];
        let t0 = Instant::now();
        let bytes = read_all(&repo.join("chunks"));
        let read = t0.elapsed();
        println!(
            "{:>5} {:>7} KiB {:>7.3}s {:>7.3}s  {:.3}s for {} MiB (page cache)",
            probe.ranks,
            kib,
            f.restart_latency.unwrap_or_default().as_secs_f64(),
            f.recovery_time.unwrap_or_default().as_secs_f64(),
            read.as_secs_f64(),
            bytes >> 20
        );
    }
}
