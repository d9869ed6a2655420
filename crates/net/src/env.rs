//! Joining a job: from explicit options ([`join`]) or from the environment set by
//! `lazarus run`, Slurm's `srun` or an MPI launcher ([`init`]).

use crate::auth::JobToken;
use crate::comm::Comm;
use crate::config::NetConfig;
use crate::error::{ErrorKind, NetError, Result};
use crate::mailbox::Mailbox;
use crate::rdv::{register, RendezvousServer};
use crate::tcp::{MeshParams, TcpTransport};
use crate::watch::{self, OnLoss};
use lazarus_format::Rank;
use std::net::TcpListener;
use std::sync::Arc;

/// Rank variables, most specific first: ours, Slurm, Open MPI, MPICH/Hydra, PMIx.
pub const RANK_VARS: [&str; 5] = [
    "LAZARUS_RANK",
    "SLURM_PROCID",
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
    "PMIX_RANK",
];
/// World-size variables, in the same order.
pub const SIZE_VARS: [&str; 4] = [
    "LAZARUS_WORLD_SIZE",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
];
/// Coordinator address (`host:port`).
pub const ENV_COORD: &str = "LAZARUS_COORD";
/// Shared secret of the job.
pub const ENV_TOKEN: &str = "LAZARUS_JOB_TOKEN";
/// Restart count of the job (default 0).
pub const ENV_INCARNATION: &str = "LAZARUS_INCARNATION";
/// Set by `lazarus run`: the launcher hosts the rendezvous, rank 0 must not.
pub const ENV_LAUNCHER: &str = "LAZARUS_LAUNCHER";

/// Everything needed to join a TCP job explicitly.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// This rank.
    pub rank: Rank,
    /// World size.
    pub size: u32,
    /// Coordinator `host:port`.
    pub coord: String,
    /// Shared secret.
    pub token: JobToken,
    /// Restart count, stamped on every header.
    pub incarnation: u64,
    /// Timeouts and limits.
    pub config: NetConfig,
    /// Rank 0 hosts the rendezvous server at `coord` (srun/mpirun mode).
    pub host_rendezvous: bool,
    /// The rendezvous host is a Lazarus launcher that this rank must not outlive: when its
    /// heartbeats stop (closed connection, or silence longer than the failure timeout) the
    /// process exits with [`crate::EXIT_LAUNCHER_LOST`] (see `watch.rs`). [`init`] sets it
    /// under `lazarus run` (`LAZARUS_LAUNCHER=1`).
    pub exit_with_launcher: bool,
}

fn first_var(names: &[&str]) -> Result<Option<(String, u64)>> {
    for n in names {
        if let Ok(v) = std::env::var(n) {
            let x = v.trim().parse::<u64>().map_err(|_| {
                NetError::new(
                    ErrorKind::Config,
                    format!("{n}={v:?} is not a non-negative integer"),
                )
            })?;
            return Ok(Some((n.to_string(), x)));
        }
    }
    Ok(None)
}

/// The communicator of this process.
///
/// Reads the rank and world size from `LAZARUS_RANK`/`LAZARUS_WORLD_SIZE`, or from Slurm
/// (`SLURM_PROCID`/`SLURM_NTASKS`), Open MPI (`OMPI_COMM_WORLD_*`) or MPICH (`PMI_*`)
/// variables; then `LAZARUS_COORD`, `LAZARUS_JOB_TOKEN`, `LAZARUS_INCARNATION` and the
/// [`NetConfig`] variables. Without rank/size variables (or with a world of 1) the program
/// is a world of size 1 and needs nothing else. Under an external launcher, rank 0 hosts
/// the rendezvous at `LAZARUS_COORD`.
pub fn init() -> Result<Comm> {
    let rank = first_var(&RANK_VARS)?;
    let size = first_var(&SIZE_VARS)?;
    let (rank, size) = match (rank, size) {
        (None, None) => return Ok(Comm::solo()),
        (Some((rn, _)), None) => {
            return Err(NetError::new(
                ErrorKind::Config,
                format!(
                    "{rn} is set but no world size variable ({})",
                    SIZE_VARS.join(", ")
                ),
            ))
        }
        (None, Some((sn, _))) => {
            return Err(NetError::new(
                ErrorKind::Config,
                format!(
                    "{sn} is set but no rank variable ({})",
                    RANK_VARS.join(", ")
                ),
            ))
        }
        (Some((_, r)), Some((sn, s))) => {
            let s = u32::try_from(s).ok().filter(|s| *s >= 1).ok_or_else(|| {
                NetError::new(
                    ErrorKind::Config,
                    format!("{sn}={s} is not a valid world size"),
                )
            })?;
            if r >= u64::from(s) {
                return Err(NetError::new(
                    ErrorKind::Config,
                    format!("rank {r} >= world size {s}"),
                ));
            }
            (Rank(r as u32), s)
        }
    };
    // A world of one needs nothing, except under a Lazarus launcher: it must still watch
    // its launcher (a rank must not outlive it, docs/RUNTIME.md).
    if size == 1 && std::env::var_os(ENV_LAUNCHER).is_none() {
        return Ok(Comm::solo());
    }
    let coord = std::env::var(ENV_COORD).map_err(|_| {
        NetError::new(ErrorKind::Config, format!("world size {size} needs {ENV_COORD}=host:port (the coordinator; rank 0 hosts it under srun/mpirun)"))
    })?;
    let token = std::env::var(ENV_TOKEN).map_err(|_| {
        NetError::new(
            ErrorKind::Config,
            format!("world size {size} needs {ENV_TOKEN} (the same secret on every rank)"),
        )
    })?;
    let incarnation = match first_var(&[ENV_INCARNATION])? {
        Some((_, i)) => i,
        None => 0,
    };
    join(JoinOptions {
        rank,
        size,
        coord,
        token: JobToken::new(&token)?,
        incarnation,
        config: NetConfig::from_env()?,
        host_rendezvous: std::env::var_os(ENV_LAUNCHER).is_none(),
        exit_with_launcher: std::env::var_os(ENV_LAUNCHER).is_some(),
    })
}

/// Joins a TCP job: rendezvous at `coord`, then a full authenticated mesh.
pub fn join(o: JoinOptions) -> Result<Comm> {
    let config = o.config.validated()?;
    if o.size == 0 || o.rank.0 >= o.size {
        return Err(NetError::new(
            ErrorKind::InvalidArgument,
            format!("{} outside world size {}", o.rank, o.size),
        ));
    }
    if o.size == 1 {
        return if o.exit_with_launcher {
            join_watched_solo(o.rank, &o.coord, &o.token, o.incarnation, config)
        } else {
            Ok(Comm::solo())
        };
    }
    let server = if o.host_rendezvous && o.rank == Rank(0) {
        Some(RendezvousServer::bind(
            &o.coord,
            o.size,
            o.token.clone(),
            o.incarnation,
            config.clone(),
        )?)
    } else {
        None
    };
    let mut listener = None;
    let (addrs, control, control_rx) = register(
        &o.coord,
        o.rank.0,
        o.size,
        &o.token,
        o.incarnation,
        &config,
        |s| {
            // Listen on the interface that reaches the coordinator: reachable by the others.
            let ip = s
                .local_addr()
                .map_err(|e| NetError::io("local address", e))?
                .ip();
            let l =
                TcpListener::bind((ip, 0)).map_err(|e| NetError::io(format!("bind {ip}:0"), e))?;
            let a = l
                .local_addr()
                .map_err(|e| NetError::io("listener address", e))?;
            listener = Some(l);
            Ok(a.to_string())
        },
    )?;
    let listener = listener.ok_or_else(|| NetError::new(ErrorKind::Protocol, "no listener"))?;
    let on_loss = if o.exit_with_launcher {
        OnLoss::Exit
    } else {
        OnLoss::Ignore
    };
    let watched = watch::spawn(&control, control_rx, o.rank, &config, on_loss)
        .map_err(|e| NetError::io("starting the launcher watch", e))?;
    let mailbox = Arc::new(Mailbox::new(o.size as usize, config.spin));
    let t = TcpTransport::connect(MeshParams {
        me: o.rank,
        size: o.size,
        incarnation: o.incarnation,
        token: o.token,
        config: config.clone(),
        mailbox: mailbox.clone(),
        addrs,
        listener,
        control: Some(control),
        server,
    })?;
    let t = watch::Watched::new(t, watched);
    Ok(Comm::from_parts(
        o.rank,
        o.size,
        o.incarnation,
        mailbox,
        Some(Box::new(t)),
        config,
    ))
}

/// A world of one under a Lazarus launcher: registers with the launcher's rendezvous (no
/// mesh), heartbeats it and watches it like any rank, says goodbye when dropped.
fn join_watched_solo(
    rank: Rank,
    coord: &str,
    token: &JobToken,
    incarnation: u64,
    config: NetConfig,
) -> Result<Comm> {
    let (_, control, control_rx) = register(
        coord,
        0,
        1,
        token,
        incarnation,
        &config,
        // Nobody dials a rank without peers.
        |_| Ok("0.0.0.0:0".into()),
    )?;
    let control = Arc::new(std::sync::Mutex::new(Some(control)));
    let done = watch::spawn_beating(&control, control_rx, rank, &config, OnLoss::Exit)
        .map_err(|e| NetError::io("starting the launcher watch", e))?;
    Ok(Comm::from_parts(
        rank,
        1,
        incarnation,
        Arc::new(Mailbox::new(1, config.spin)),
        Some(Box::new(watch::SoloControl::new(control, done))),
        config,
    ))
}

/// Builds an `n`-rank TCP job inside this process (a rendezvous server on 127.0.0.1 and one
/// joining thread per rank): the real transport, for tests and benchmarks.
pub fn loopback_comms(n: u32, config: NetConfig) -> Result<Vec<Comm>> {
    let token = JobToken::random();
    let server = RendezvousServer::bind("127.0.0.1:0", n, token.clone(), 0, config.clone())?;
    let coord = server.local_addr().to_string();
    let handles: Vec<_> = (0..n)
        .map(|r| {
            let o = JoinOptions {
                rank: Rank(r),
                size: n,
                coord: coord.clone(),
                token: token.clone(),
                incarnation: 0,
                config: config.clone(),
                host_rendezvous: false,
                exit_with_launcher: false,
            };
            std::thread::spawn(move || join(o))
        })
        .collect();
    let mut out = Vec::with_capacity(n as usize);
    for (r, h) in handles.into_iter().enumerate() {
        let c = h.join().map_err(|_| {
            NetError::new(ErrorKind::PeerFailed, "join thread panicked").with_peer(Rank(r as u32))
        })??;
        out.push(c);
    }
    Ok(out)
}
