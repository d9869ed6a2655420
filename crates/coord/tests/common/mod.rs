//! Helpers shared by the session tests of this crate.

use lazarus_net::{loopback_comms, Comm, NetConfig};
use std::time::Duration;

/// `n` ranks over loopback TCP, with failure detection fast enough for tests.
pub fn comms(n: u32) -> Vec<Comm> {
    let config = NetConfig {
        heartbeat_interval: Duration::from_millis(100),
        failure_timeout: Duration::from_millis(1500),
        connect_timeout: Duration::from_secs(10),
        ..NetConfig::default()
    };
    loopback_comms(n, config).unwrap()
}

/// Peak resident memory of this process so far (`VmHWM` of /proc/self/status), in bytes.
#[allow(dead_code)]
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib * 1024
}
