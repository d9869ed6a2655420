//! Shared helpers: run the probe under the supervisor and check its output.
#![allow(dead_code)]

use lazarus_net::launch::LaunchConfig;
use lazarus_net::NetConfig;
use lazarus_supervisor::{KillPlan, Report, Supervisor, SupervisorConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub const PROBE: &str = env!("CARGO_BIN_EXE_lazarus-recovery-probe");

/// Exits the whole test process if it runs longer than `secs`: a hang is a failure.
pub fn deadline(secs: u64) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        eprintln!("test deadline of {secs} s exceeded: hang");
        std::process::exit(101);
    });
}

pub struct Probe {
    pub ranks: u32,
    pub steps: u64,
    pub every: u64,
    pub sleep_ms: u64,
    pub lines: u64,
}

impl Probe {
    pub fn config(&self, repo: &Path, plan: KillPlan, max_restarts: u32) -> SupervisorConfig {
        let args = [
            "--steps",
            &self.steps.to_string(),
            "--every",
            &self.every.to_string(),
            "--sleep-ms",
            &self.sleep_ms.to_string(),
            "--lines",
            &self.lines.to_string(),
        ]
        .iter()
        .map(Into::into)
        .collect();
        let mut l = LaunchConfig::new(self.ranks, PROBE, args);
        l.net = NetConfig {
            failure_timeout: Duration::from_millis(2000),
            heartbeat_interval: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(10),
            ..NetConfig::default()
        };
        l.kill_grace = Duration::from_millis(500);
        let mut c = SupervisorConfig::new(l, repo);
        c.kill_plan = plan;
        c.max_restarts = max_restarts;
        c.echo_output = false;
        c.capture_output = true;
        c.progress = false;
        c
    }

    pub fn run(&self, repo: &Path, plan: KillPlan, max_restarts: u32) -> Report {
        match Supervisor::run(&self.config(repo, plan, max_restarts)) {
            Ok(r) => r,
            Err(e) => panic!("supervisor error: {e}"),
        }
    }

    /// Checks that every step line of every rank was released exactly once, and returns
    /// the checksum line.
    pub fn check_output(&self, r: &Report) -> String {
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        let mut checksum = Vec::new();
        for l in &r.output {
            if l.text.starts_with("checksum=") {
                assert_eq!(l.rank.0, 0, "checksum from rank 0 only");
                checksum.push(l.text.clone());
                continue;
            }
            assert!(l.text.starts_with(&format!("r{} ", l.rank.0)), "{l:?}");
            *seen.entry(l.text.clone()).or_default() += 1;
        }
        for rank in 0..self.ranks {
            for s in 0..self.steps {
                for j in 0..self.lines {
                    let k = format!("r{rank} s{s} l{j}");
                    assert_eq!(
                        seen.get(&k).copied(),
                        Some(1),
                        "line {k:?} released {:?} times",
                        seen.get(&k)
                    );
                }
            }
        }
        assert_eq!(
            seen.len() as u64,
            self.ranks as u64 * self.steps * self.lines,
            "unexpected extra lines"
        );
        assert_eq!(checksum.len(), 1, "exactly one checksum line: {checksum:?}");
        checksum.remove(0)
    }
}
