//! A real single-machine Slurm cluster (munge + slurmctld + slurmd started as root by
//! `tools/testbed/slurm.sh`, the same script `.ci/run` uses): one node with 8 CPUs
//! (overcommitted), proctrack/linuxproc, task/none, no accounting. Shared by every test of
//! a process; stopped when the last one is done, if this process started it.

use crate::Unavailable;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// (users, started by us)
static USERS: Mutex<(usize, bool)> = Mutex::new((0, false));

/// A handle on the running cluster; clients need [`Slurm::env`].
#[derive(Debug)]
pub struct Slurm {
    conf: PathBuf,
}

fn script() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/testbed/slurm.sh"
    ))
}

fn run(arg: &str) -> Result<String, String> {
    let out = Command::new(script())
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} {arg}: {e}", script().display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{} {arg} failed: {}{}",
            script().display(),
            text,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Slurm {
    /// The cluster, started if needed. Unavailable without root or the Slurm packages.
    pub fn up() -> Result<Slurm, Unavailable> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Unavailable("starting Slurm daemons needs root".into()));
        }
        for b in ["slurmctld", "slurmd", "munged", "srun", "sinfo", "scontrol"] {
            if crate::which(b).is_none() {
                return Err(Unavailable(format!(
                    "{b} is not installed (apt-get install slurmd slurmctld slurm-client munge)"
                )));
            }
        }
        let mut u = USERS.lock().unwrap_or_else(|e| e.into_inner());
        if u.0 == 0 {
            let was_up = run("status").is_ok();
            run("up").map_err(Unavailable)?;
            u.1 = !was_up;
        }
        u.0 += 1;
        let conf = run("env")
            .ok()
            .and_then(|l| l.trim().strip_prefix("SLURM_CONF=").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/tmp/lazarus-slurm/slurm.conf"));
        Ok(Slurm { conf })
    }

    /// Environment variables Slurm clients (`srun`, `salloc`, `sbatch`) need.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SLURM_CONF".into(), self.conf.display().to_string())]
    }

    /// A `salloc` command (no shell) for `nodes` nodes with `tasks` tasks running
    /// `inner…`, with the client environment set, and `--no-kill` (a failed node does not
    /// end the allocation).
    pub fn salloc(&self, tasks: u32, inner: &[&str]) -> Command {
        let mut c = Command::new("salloc");
        c.args(["--no-kill", "-N", "1", "-n", &tasks.to_string(), "--"])
            .args(inner)
            .envs(self.env());
        c
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let mut u = USERS.lock().unwrap_or_else(|e| e.into_inner());
        u.0 = u.0.saturating_sub(1);
        if u.0 == 0 && u.1 {
            if let Err(e) = run("down") {
                eprintln!("testbed: stopping Slurm: {e}");
            }
            u.1 = false;
        }
    }
}
