//! Real multi-host test beds on one machine, for tests and benchmarks of recovery across
//! machines. Nothing here is a mock: hosts are Linux network namespaces with their own
//! network stack and address, joined by a bridge the test bed creates ([`Cluster`]); Slurm
//! is the real `slurmctld`/`slurmd`/`munge` ([`Slurm`]).
//!
//! Rules every test bed follows:
//! - It uses only the names and addresses it creates (a private subnet it picks, names
//!   with its own prefix), and removes them on drop, also when the test panicked; a test
//!   process that was SIGKILLed is cleaned up by the next test bed created on the machine
//!   (each one records its owner's pid).
//! - What it cannot create (not root, no `ip`, no Slurm) is [`Unavailable`]: tests skip
//!   with a loud message ([`skip_or_fail`]), except under `CI=true`, where they fail.
//! - Commands run with a deadline ([`output_within`]): a hang is a failure.
//!
//! Also the measurements tests share ([`peak_rss`]).
#![deny(missing_docs)]

mod netns;
mod run;
mod slurm;

pub use netns::{Cluster, Host};
pub use run::{output_within, TimedOutput};
pub use slurm::Slurm;

/// Peak resident memory of this process so far (`VmHWM` of /proc/self/status), in bytes;
/// `None` where the kernel does not say (no /proc, no such line).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kib * 1024)
}

/// Inode numbers of the files under `dir`, recursively, skipping directories whose name
/// starts with `.tmp-` (a repository's temporaries and spare chunk files): which files a
/// checkpoint wrote into, for the tests of recycled chunk files. Unreadable entries are
/// skipped.
pub fn inodes_under(dir: &std::path::Path) -> std::collections::BTreeSet<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                if !e.file_name().to_string_lossy().starts_with(".tmp-") {
                    stack.push(e.path());
                }
            } else {
                out.insert(m.ino());
            }
        }
    }
    out
}

/// Why a test bed cannot be built on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// True when running under CI (`CI` set to anything but empty or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// The test bed, or `None` after a loud skip message; under CI a missing test bed fails
/// the test (panics) instead.
pub fn skip_or_fail<T>(test: &str, r: Result<T, Unavailable>) -> Option<T> {
    match r {
        Ok(t) => Some(t),
        Err(why) => {
            assert!(!in_ci(), "{test}: test bed unavailable under CI: {why}");
            eprintln!(
                "\n********************************************************************\n\
                 SKIPPED {test}: {why}\n\
                 (needs root, iproute2, Open MPI and Slurm as .ci/run installs them;\n\
                 CI=true makes this a failure)\n\
                 ********************************************************************\n"
            );
            None
        }
    }
}

/// `name` on `PATH` (or in /usr/sbin, /sbin), if present.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(std::path::PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
