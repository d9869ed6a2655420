//! Ranks started by Slurm's `srun` inside an allocation (`salloc`/`sbatch`): one job step
//! per incarnation, `srun --ntasks=N --distribution=arbitrary --label <shim> -- prog…` with
//! `SLURM_HOSTFILE` naming the node of every rank. The shim's records come back labelled
//! `rank: `; each shim reports its node (`SLURMD_NODENAME`) and step, so a stop that `srun`
//! cannot complete ends with `scancel --signal=KILL <job>.<step>`.

use super::engine::{Engine, RunningJob, StartSpec};
use super::record::Tagging;
use super::remote::{self, RankBook, RemoteJob};
use crate::error::{ErrorKind, NetError, Result};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The `srun` engine.
#[derive(Clone, Debug)]
pub struct SrunEngine {
    /// The `srun` program (default: `srun` on `PATH`).
    pub program: PathBuf,
    /// Extra arguments for `srun`, before the program.
    pub extra_args: Vec<OsString>,
}

impl Default for SrunEngine {
    fn default() -> Self {
        SrunEngine {
            program: "srun".into(),
            extra_args: Vec::new(),
        }
    }
}

/// True inside a Slurm allocation (`SLURM_JOB_ID` set).
pub fn in_allocation() -> bool {
    std::env::var_os("SLURM_JOB_ID").is_some_and(|v| !v.is_empty())
}

impl Engine for SrunEngine {
    fn name(&self) -> &'static str {
        "srun"
    }

    fn remote(&self) -> bool {
        true
    }

    /// The allocation's nodes (`scontrol show hostnames $SLURM_JOB_NODELIST`).
    fn default_hosts(&self) -> Result<Vec<String>> {
        let list = std::env::var("SLURM_JOB_NODELIST").map_err(|_| {
            NetError::new(
                ErrorKind::Config,
                "srun: not inside a Slurm allocation (SLURM_JOB_NODELIST is not set); run \
                 under salloc or sbatch, or give --hosts",
            )
        })?;
        let out = Command::new("scontrol")
            .args(["show", "hostnames", &list])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| NetError::io("running scontrol show hostnames", e))?;
        if !out.status.success() {
            return Err(NetError::new(
                ErrorKind::Launch,
                format!(
                    "scontrol show hostnames {list:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    fn start(&self, spec: StartSpec<'_>) -> Result<Box<dyn RunningJob>> {
        let cfg = spec.cfg;
        let (shim, shim_args) =
            remote::shim_argv(cfg, &["--newlines", "--rank-from", "SLURM_PROCID"])?;
        // Before the host file: a refused environment leaves nothing behind.
        let env = remote::shim_env(cfg, &spec.env, None)?;
        let mut job = RemoteJob::new(cfg.ranks, spec.hosts);
        // One node per line, rank order: Slurm's arbitrary distribution.
        let hostfile = std::env::temp_dir().join(format!(
            "lazarus-srun-{}-{}-{}.hosts",
            std::process::id(),
            cfg.incarnation,
            rand::random::<u32>()
        ));
        // Created, never opened through what is already there: in a shared /tmp another
        // user could plant a symbolic link under a guessed name.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&hostfile)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, (spec.hosts.join("\n") + "\n").as_bytes())
            })
            .map_err(|e| NetError::io(format!("writing {}", hostfile.display()), e))?;
        job.temp_files.push(hostfile.clone());
        let mut cmd = Command::new(&self.program);
        cmd.arg(format!("--ntasks={}", cfg.ranks))
            .args([
                "--distribution=arbitrary",
                "--label",
                "--kill-on-bad-exit=0",
                "--input=none",
                "--overlap",
            ])
            .arg(format!("--job-name=lazarus-{}", cfg.incarnation))
            .args(&self.extra_args)
            .envs(env)
            .env("SLURM_HOSTFILE", &hostfile)
            .arg(shim)
            .args(shim_args);
        // Outside an allocation srun made one for the step: a stop releases it too (an srun
        // killed before it could would leave the job allocated).
        let own_allocation = !in_allocation();
        job.hard_kill = Some(Box::new(move |b: &RankBook| {
            let scancel = |args: &[&str]| {
                let _ = Command::new("scancel")
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            };
            for step in &b.steps {
                scancel(&["--signal=KILL", step]);
                if let (true, Some((job, _))) = (own_allocation, step.split_once('.')) {
                    scancel(&[job]);
                }
            }
        }));
        match remote::spawn(
            cmd,
            "srun".into(),
            Tagging::SlurmLabel,
            true,
            &job.book,
            &spec.sink,
            false,
        ) {
            Ok(p) => job.procs.push(p),
            Err(e) => {
                let _ = std::fs::remove_file(&hostfile);
                return Err(e);
            }
        }
        Ok(Box::new(job))
    }
}
