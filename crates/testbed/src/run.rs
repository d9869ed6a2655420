//! Running a command with a deadline: on expiry its whole process group is killed and the
//! caller gets what it printed so far, flagged as timed out.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct TimedOutput {
    /// Exit status (`None` when it was killed at the deadline).
    pub status: Option<ExitStatus>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl TimedOutput {
    /// True when it exited with status 0 before the deadline.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `cmd` (stdin closed, stdout and stderr captured) in its own process group; kills the
/// group with SIGKILL if it is still running after `deadline`.
pub fn output_within(mut cmd: Command, deadline: Duration) -> std::io::Result<TimedOutput> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let t0 = Instant::now();
    let mut child = cmd.spawn()?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let o = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut s);
        }
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut s);
        }
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if t0.elapsed() > deadline {
            // SAFETY: signalling the process group of a child we spawned.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = t0.elapsed();
    // Helpers that escaped the group could hold the pipes: do not wait for them forever.
    let join = |h: std::thread::JoinHandle<Vec<u8>>| {
        let end = Instant::now() + Duration::from_secs(10);
        while !h.is_finished() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        if h.is_finished() {
            h.join().unwrap_or_default()
        } else {
            b"<output still held open by an escaped process>".to_vec()
        }
    };
    Ok(TimedOutput {
        status,
        stdout: String::from_utf8_lossy(&join(o)).into_owned(),
        stderr: String::from_utf8_lossy(&join(e)).into_owned(),
        elapsed,
    })
}
