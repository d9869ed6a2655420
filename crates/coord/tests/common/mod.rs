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

/// Peak resident memory of this process so far, in bytes (`lazarus_testbed::peak_rss`).
#[allow(dead_code)]
pub fn peak_rss() -> u64 {
    lazarus_testbed::peak_rss().expect("VmHWM in /proc/self/status")
}
