//! `lazarus run`'s multi-host flags: which launcher starts the ranks (`--launcher`), on
//! which hosts (`--hosts`/`--hostfile`, `--spares`), and where the rendezvous is reached
//! (`--advertise`, `--bind`). Turned into a `lazarus::net::launch::Engine` and a host list.

use lazarus::net::launch::{
    in_allocation, parse_hostfile, parse_hosts, unusable_advertise, Engine, HostSpec, LocalEngine,
    MpirunEngine, ShimCommand, SrunEngine, SshEngine,
};
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Which launcher starts the ranks.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LauncherKind {
    /// Child processes of `lazarus run` on this machine.
    #[default]
    Local,
    /// Open MPI's `mpirun` on the hosts.
    Mpirun,
    /// Slurm's `srun`, inside an allocation.
    Srun,
    /// One `ssh` per rank.
    Ssh,
    /// `srun` inside a Slurm allocation, else `local`.
    Auto,
}

/// Multi-host flags of `lazarus run`.
#[derive(clap::Args, Debug, Default)]
pub struct ClusterArgs {
    /// How ranks are started: local | mpirun | srun | ssh | auto (srun inside a Slurm
    /// allocation, else local).
    #[arg(long, value_enum, default_value_t = LauncherKind::Local)]
    launcher: LauncherKind,
    /// Hosts to run on, `host[:slots],…` in order (mpirun, ssh; srun: nodes of the
    /// allocation, by default all of them).
    #[arg(long, value_name = "LIST", conflicts_with = "hostfile")]
    hosts: Option<String>,
    /// File with one host per line (`host`, `host slots=N` or `host:N`; `#` comments).
    #[arg(long, value_name = "FILE")]
    hostfile: Option<PathBuf>,
    /// With --repo: keep the last K hosts as spares that replace lost hosts.
    #[arg(long, value_name = "K", default_value_t = 0, requires = "repo")]
    spares: u32,
    /// Address given to the ranks for the rendezvous [default: the local address of the
    /// route to the hosts; 127.0.0.1 for the local launcher]. Never an unspecified
    /// (0.0.0.0, ::), multicast or broadcast address (refused; --bind may be 0.0.0.0).
    #[arg(long, value_name = "IP")]
    advertise: Option<IpAddr>,
    /// Address the rendezvous listens on [default: the advertised one].
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// The launcher program (default: mpirun, srun or ssh on PATH).
    #[arg(long, value_name = "PATH")]
    launcher_program: Option<PathBuf>,
    /// Remote shell that runs a command on a host (`CMD HOST COMMAND`): Open MPI's
    /// plm_rsh_agent for mpirun, the ssh program (without ssh's options) for ssh, then
    /// instead of --launcher-program (refused with both, and with srun).
    #[arg(long, value_name = "CMD")]
    rsh_agent: Option<PathBuf>,
    /// Extra argument for the launcher program (repeatable), e.g. `--launcher-arg=--mca`.
    #[arg(long = "launcher-arg", value_name = "ARG", allow_hyphen_values = true)]
    launcher_args: Vec<OsString>,
}

/// What the flags decide.
pub struct Cluster {
    /// The engine.
    pub engine: Arc<dyn Engine>,
    /// Hosts in order (empty: the engine's own, or local).
    pub hosts: Vec<HostSpec>,
    /// Spare hosts.
    pub spares: u32,
    /// Rendezvous addresses.
    pub advertise: Option<IpAddr>,
    /// Rendezvous bind address.
    pub bind: Option<IpAddr>,
    /// The rank shim: this very binary's hidden `__shim` subcommand.
    pub shim: Option<ShimCommand>,
}

impl ClusterArgs {
    /// Validates the flags; errors name the flag.
    pub fn resolve(&self) -> Result<Cluster, String> {
        let kind = match self.launcher {
            LauncherKind::Auto if in_allocation() => LauncherKind::Srun,
            LauncherKind::Auto => LauncherKind::Local,
            k => k,
        };
        if let Some(a) = self.advertise {
            if let Some(why) = unusable_advertise(a) {
                return Err(format!(
                    "--advertise {a}: {why}; give an address of this machine that the hosts reach"
                ));
            }
        }
        // No flag is accepted and ignored.
        if self.rsh_agent.is_some() {
            match kind {
                LauncherKind::Srun => {
                    return Err(
                        "--rsh-agent: srun starts the ranks itself (no remote shell); \
                                drop --rsh-agent"
                            .into(),
                    )
                }
                LauncherKind::Ssh if self.launcher_program.is_some() => {
                    return Err(
                        "--rsh-agent and --launcher-program: with --launcher ssh both \
                                name the ssh program; give one"
                            .into(),
                    )
                }
                _ => {}
            }
        }
        let hosts = match (&self.hosts, &self.hostfile) {
            (Some(list), _) => parse_hosts(list).map_err(|e| format!("--hosts: {e}"))?,
            (None, Some(f)) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| format!("--hostfile {}: {e}", f.display()))?;
                parse_hostfile(&text, &f.display().to_string()).map_err(|e| e.to_string())?
            }
            (None, None) => Vec::new(),
        };
        let program = |default: &str| {
            self.launcher_program
                .clone()
                .unwrap_or_else(|| PathBuf::from(default))
        };
        let args = self.launcher_args.clone();
        let engine: Arc<dyn Engine> = match kind {
            LauncherKind::Local | LauncherKind::Auto => {
                if !hosts.is_empty() || self.spares > 0 {
                    return Err(
                        "--hosts, --hostfile and --spares need --launcher mpirun, srun \
                                or ssh (the local launcher runs every rank on this machine)"
                            .into(),
                    );
                }
                if self.rsh_agent.is_some() || !args.is_empty() || self.launcher_program.is_some() {
                    return Err("--rsh-agent, --launcher-program and --launcher-arg need \
                                --launcher mpirun, srun or ssh"
                        .into());
                }
                Arc::new(LocalEngine)
            }
            LauncherKind::Mpirun => Arc::new(MpirunEngine {
                program: program("mpirun"),
                agent: self.rsh_agent.clone(),
                extra_args: args,
            }),
            LauncherKind::Srun => Arc::new(SrunEngine {
                program: program("srun"),
                extra_args: args,
            }),
            LauncherKind::Ssh => match &self.rsh_agent {
                Some(agent) => Arc::new(SshEngine {
                    program: agent.clone(),
                    extra_args: args,
                }),
                None => {
                    let mut e = SshEngine {
                        program: program("ssh"),
                        ..SshEngine::default()
                    };
                    e.extra_args.extend(args);
                    Arc::new(e)
                }
            },
        };
        if engine.remote() && hosts.is_empty() && kind != LauncherKind::Srun {
            return Err(format!(
                "--launcher {}: give the hosts (--hosts or --hostfile)",
                engine.name()
            ));
        }
        let shim = engine
            .remote()
            .then(|| {
                std::env::current_exe()
                    .map(|program| ShimCommand {
                        program,
                        args: vec!["__shim".into()],
                    })
                    .map_err(|e| format!("finding the lazarus binary for the rank shim: {e}"))
            })
            .transpose()?;
        Ok(Cluster {
            engine,
            hosts,
            spares: self.spares,
            advertise: self.advertise,
            bind: self.bind,
            shim,
        })
    }
}
