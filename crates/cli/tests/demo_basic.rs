//! `lazarus demo` end to end: a rank SIGKILLed after the first checkpoint, recovery, and
//! the same checksum as the failure-free run, within a deadline.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn demo_recovers_and_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lazarus"))
        .args([
            // Steps enough that the run cannot end before the kill lands (it fires a few
            // ms after the first checkpoint; 50 more checkpoints, each fsynced, follow).
            "demo", "--size", "96", "--steps", "1500", "--every", "30", "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lazarus demo exceeded its 90 s deadline");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("Result: identical"), "{stdout}");
    assert!(
        stdout.contains("was killed by signal 9 (on purpose)"),
        "{stdout}"
    );
}
