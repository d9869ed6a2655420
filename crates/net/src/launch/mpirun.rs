//! Ranks started by Open MPI's `mpirun` (only as a process starter: no MPI library is
//! used). `mpirun -n N --host h1:n1,h2:n2 --map-by slot --tag-output -x VAR… <shim> --
//! prog…`: rank r runs on the host of block r (the placement is the rank->host map), its
//! shim's records come back tagged `[job,r]<stdout>:`, and a stop is a signal to `mpirun`,
//! which forwards it to every rank.

use super::engine::{host_blocks, Engine, RunningJob, StartSpec};
use super::record::Tagging;
use super::remote::{self, RemoteJob};
use crate::error::Result;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

/// The `mpirun` engine.
#[derive(Clone, Debug)]
pub struct MpirunEngine {
    /// The `mpirun` program (default: `mpirun` on `PATH`).
    pub program: PathBuf,
    /// Open MPI's remote shell agent (`--mca plm_rsh_agent`): the command that runs a
    /// command on a host, like `ssh` (default: Open MPI's, ssh).
    pub agent: Option<PathBuf>,
    /// Extra arguments for `mpirun`, before the program (e.g. `--mca oob_tcp_if_include
    /// 10.1.0.0/16`).
    pub extra_args: Vec<OsString>,
}

impl Default for MpirunEngine {
    fn default() -> Self {
        MpirunEngine {
            program: "mpirun".into(),
            agent: None,
            extra_args: Vec::new(),
        }
    }
}

impl Engine for MpirunEngine {
    fn name(&self) -> &'static str {
        "mpirun"
    }

    fn remote(&self) -> bool {
        true
    }

    fn start(&self, spec: StartSpec<'_>) -> Result<Box<dyn RunningJob>> {
        let cfg = spec.cfg;
        let (shim, shim_args) = remote::shim_argv(cfg, &["--rank-from", "OMPI_COMM_WORLD_RANK"])?;
        let mut cmd = Command::new(&self.program);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.arg("--allow-run-as-root");
        }
        let hosts: Vec<String> = host_blocks(spec.hosts)
            .into_iter()
            .map(|(h, n)| format!("{h}:{n}"))
            .collect();
        cmd.args(["-n", &cfg.ranks.to_string()])
            .args(["--host", &hosts.join(",")])
            .args(["--map-by", "slot", "--bind-to", "none", "--tag-output"]);
        if let Some(a) = &self.agent {
            cmd.args(["--mca", "plm_rsh_agent"]).arg(a);
        }
        cmd.args(&self.extra_args);
        for (k, v) in remote::shim_env(cfg, &spec.env, None)? {
            cmd.arg("-x").arg(&k).env(&k, &v);
        }
        cmd.arg(shim).args(shim_args);
        let mut job = RemoteJob::new(cfg.ranks, spec.hosts);
        let p = remote::spawn(
            cmd,
            "mpirun".into(),
            Tagging::OpenMpi,
            false,
            &job.book,
            &spec.sink,
            false,
        )?;
        job.procs.push(p);
        Ok(Box::new(job))
    }
}
