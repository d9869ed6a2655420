//! `lazarus run -n N [--launcher local|mpirun|srun|ssh|auto --hosts LIST [--spares K]]
//! [--repo DIR --max-restarts K [--shrink-on-failure [--min-ranks M]]] -- PROG ARGS…`: a
//! thin CLI over `lazarus::net::launch`, and over `lazarus::supervisor` when `--repo` asks
//! for recovery.

use super::CmdResult;
use lazarus::net::launch::{install_signal_forwarding, place, HostSpec, LaunchConfig, Launcher};
use lazarus::net::NetConfig;
use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `lazarus run`. Timeouts default to the `LAZARUS_*` environment variables, then
/// to built-in defaults; flags win. Everything is validated before any rank starts.
#[derive(clap::Args, Debug)]
#[command(after_help = EXIT_STATUS)]
pub struct Args {
    /// Number of ranks to start (on this machine, or on the hosts with --launcher).
    #[arg(short = 'n', long = "ranks", value_parser = clap::value_parser!(u32).range(1..=4096))]
    ranks: u32,
    /// A rank silent (or disconnected) this long is declared dead [default: 3000].
    #[arg(long)]
    failure_timeout_ms: Option<u64>,
    /// Heartbeat interval [default: 250].
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Bound on rendezvous and connection set-up [default: 20000].
    #[arg(long)]
    connect_timeout_ms: Option<u64>,
    /// Largest frame on the wire, bytes [default: 67108864].
    #[arg(long)]
    max_frame: Option<u32>,
    /// `off`: data payloads outside the per-frame MAC, for networks that provide integrity
    /// themselves (WireGuard, IPsec); headers stay sealed, the handshake unchanged
    /// [default: on]. Overrides LAZARUS_FRAME_MAC; every rank gets the launcher's value.
    #[arg(long, value_name = "on|off")]
    frame_mac: Option<lazarus::net::FrameMac>,
    /// After a failure, time the other ranks get to exit on their own before SIGTERM.
    /// With --repo, 0 (the default) means 200 ms.
    #[arg(long, default_value_t = 0)]
    stop_grace_ms: u64,
    /// Time between SIGTERM (or a forwarded Ctrl-C) and SIGKILL.
    #[arg(long, default_value_t = 2000)]
    kill_grace_ms: u64,
    /// Incarnation (restart count) exported as LAZARUS_INCARNATION, for a restart you
    /// launch yourself; not with --repo, whose supervisor numbers them.
    #[arg(long, default_value_t = 0)]
    incarnation: u64,
    /// Extra environment for every rank, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Checkpoint repository: enables automatic recovery. Each rank finds it through
    /// LAZARUS_REPO; after a failure all ranks restart from its newest committed checkpoint.
    #[arg(long, value_name = "DIR")]
    repo: Option<std::path::PathBuf>,
    /// With --repo: restarts allowed before giving up.
    #[arg(long, default_value_t = 3, requires = "repo")]
    max_restarts: u32,
    /// With --repo: after a rank failure, restart on one rank fewer (a lost node) instead
    /// of the same number, down to --min-ranks. The checkpoint is redistributed on
    /// restore; if it cannot be (per-rank state), the job restarts on the same number.
    #[arg(long, requires = "repo")]
    shrink_on_failure: bool,
    /// With --shrink-on-failure: never restart on fewer ranks than this [default: 1].
    #[arg(long, value_name = "K", requires = "shrink_on_failure",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    min_ranks: Option<u32>,
    /// Multi-level checkpoints (docs/LEVELS.md): write every N-th checkpoint to the
    /// node-local level L1 (0: never), or, with a unit (500ms, 30s, 10m, 2h), the first
    /// checkpoint at least that long after the previous L1 write. Exported as
    /// LAZARUS_L1_EVERY.
    #[arg(long, value_name = "N|TIME")]
    l1_every: Option<lazarus::levels::Period>,
    /// Copy every N-th checkpoint (or one every TIME, as for --l1-every) to a partner rank
    /// on another host, L2 (0: never). Exported as LAZARUS_L2_EVERY.
    #[arg(long, value_name = "N|TIME")]
    l2_every: Option<lazarus::levels::Period>,
    /// Add every N-th checkpoint to the Reed-Solomon parity of the rank's parity group on
    /// other hosts, L3 (0: never; a count only). Exported as LAZARUS_L3_EVERY.
    #[arg(long, value_name = "N")]
    l3_every: Option<lazarus::levels::Period>,
    /// With --l3-every: parity groups of at most K ranks, each on its own host (default:
    /// one group per row of hosts, as many ranks as hosts). Smaller groups make a parity
    /// round and a rebuild cheaper and survive one lost host per group. Exported as
    /// LAZARUS_L3_GROUP.
    #[arg(long, value_name = "K", requires = "l3_every",
          value_parser = clap::value_parser!(u32).range(2..=65536))]
    l3_group: Option<u32>,
    /// With --l3-every: Reed-Solomon parity shards per group, each on a member's host
    /// [default: 2]: any M/2 lost hosts of one group are rebuilt. Exported as
    /// LAZARUS_L3_SHARDS.
    #[arg(long, value_name = "M", requires = "l3_every",
          value_parser = clap::value_parser!(u32).range(2..=64))]
    l3_shards: Option<u32>,
    /// With --l1-every/--l2-every/--l3-every: write every N-th checkpoint (or one every
    /// TIME, as for --l1-every) to the repository, L4 (0: never) [default: 1]. Exported as
    /// LAZARUS_L4_EVERY.
    #[arg(long, value_name = "N|TIME")]
    l4_every: Option<lazarus::levels::Period>,
    /// With --l1-every/--l2-every/--l3-every: how the fast levels store chunks: none
    /// (raw, the default: fastest), auto or zstd (smaller node-local copies and partner
    /// traffic for compressible state, at zstd's CPU cost). Exported as
    /// LAZARUS_FAST_CODEC.
    #[arg(long, value_name = "CODEC")]
    fast_codec: Option<lazarus::store::Codec>,
    /// With --l1-every/--l2-every/--l3-every (refused otherwise): root of the node-local
    /// directories (one per host) [default: /dev/shm/lazarus-<hash of the repository>].
    /// Exported as LAZARUS_L1_DIR.
    #[arg(long, value_name = "DIR")]
    l1_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    cluster: super::cluster::ClusterArgs,
    #[command(flatten)]
    inject: super::recover::InjectArgs,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "PROG")]
    command: Vec<OsString>,
}

/// The exit statuses of `lazarus run`, shown by `--help` (docs/RECOVERY.md).
const EXIT_STATUS: &str = "Exit status:
  0       every rank exited 0
  N       the first failing rank's status (128+signal if killed by one; 1 for a lost
          connection or missed heartbeats); with --repo, the last failure's after giving up
  128+S   interrupted by signal S (forwarded to every rank)
  2       bad flags, or the repository cannot be opened (nothing was started); with
          --repo, also a supervisor that cannot go on between launches (repository
          unreadable, no host left, a restart that could not be launched; it says which)
  65      with --repo: a rank's restore failed in a way no restart can fix (the checkpoint
          cannot be restored on this number of ranks, does not fit the program's state,
          or every checkpoint is damaged); stopped at once, the message names the
          checkpoint and why
  78      with --repo: a rank opened another repository than --repo; stopped at once,
          the message names both";

fn config(
    a: &Args,
) -> Result<(LaunchConfig, super::cluster::Cluster), Box<dyn std::error::Error + Send + Sync>> {
    let mut net = NetConfig::from_env()?;
    if let Some(v) = a.failure_timeout_ms {
        net.failure_timeout = Duration::from_millis(v);
    }
    if let Some(v) = a.heartbeat_ms {
        net.heartbeat_interval = Duration::from_millis(v);
    }
    if let Some(v) = a.connect_timeout_ms {
        net.connect_timeout = Duration::from_millis(v);
    }
    if let Some(v) = a.max_frame {
        net.max_frame = v;
    }
    if let Some(v) = a.frame_mac {
        net.frame_mac = v;
    }
    let net = net.validated()?;
    let (prog, args) = a
        .command
        .split_first()
        .ok_or("lazarus run: missing program after `--`")?;
    let mut c = LaunchConfig::new(a.ranks, prog.clone(), args.to_vec());
    c.net = net;
    c.incarnation = a.incarnation;
    c.stop_grace = Duration::from_millis(a.stop_grace_ms);
    c.kill_grace = Duration::from_millis(a.kill_grace_ms);
    let periods = [a.l1_every, a.l2_every, a.l3_every, a.l4_every];
    if periods[..3].iter().all(Option::is_none) {
        // The ranks read these only with a fast level: they would be silently ignored.
        for (flag, given) in [
            ("--fast-codec", a.fast_codec.is_some()),
            ("--l1-dir", a.l1_dir.is_some()),
        ] {
            if given {
                return Err(format!(
                    "lazarus run: {flag} needs --l1-every, --l2-every or --l3-every"
                )
                .into());
            }
        }
    }
    if periods.iter().any(Option::is_some) {
        // Refuse a schedule the ranks would refuse, before starting them.
        let mut l = lazarus::Levels::new();
        for (level, p) in (1u8..).zip(periods) {
            if let Some(p) = p {
                l = l.period(level, p);
            }
        }
        if l.is_multilevel() {
            l.validate()?;
        }
    }
    for (name, v) in [
        (lazarus::levels::L1_EVERY_ENV, a.l1_every),
        (lazarus::levels::L2_EVERY_ENV, a.l2_every),
        (lazarus::levels::L3_EVERY_ENV, a.l3_every),
        (lazarus::levels::L4_EVERY_ENV, a.l4_every),
    ] {
        if let Some(v) = v {
            c.env.push((name.into(), v.to_string().into()));
        }
    }
    for (name, v) in [
        (lazarus::levels::L3_GROUP_ENV, a.l3_group),
        (lazarus::levels::L3_SHARDS_ENV, a.l3_shards),
    ] {
        if let Some(v) = v {
            c.env.push((name.into(), v.to_string().into()));
        }
    }
    if let Some(codec) = a.fast_codec {
        c.env.push((
            lazarus::levels::FAST_CODEC_ENV.into(),
            codec.to_string().into(),
        ));
    }
    if let Some(d) = &a.l1_dir {
        c.env.push((
            lazarus::levels::L1_DIR_ENV.into(),
            d.clone().into_os_string(),
        ));
    }
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
        c.env.push((k.into(), v.into()));
    }
    let cluster = a.cluster.resolve()?;
    c.engine = cluster.engine.clone();
    c.advertise = cluster.advertise;
    c.bind = cluster.bind;
    c.shim = cluster.shim.clone();
    Ok((c, cluster))
}

/// Runs `lazarus run`: exits with the first failing rank's status (128+signal for a
/// signal, 1 for a heartbeat/connection failure), 128+signal if interrupted, else 0.
pub fn main(args: Args) -> CmdResult {
    let (mut cfg, cluster) = config(&args)?;
    if let Some(repo) = &args.repo {
        if args.incarnation != 0 {
            // The supervisor counts incarnations itself (0, then one per restart): a
            // value given here would be silently replaced.
            return Err(
                "lazarus run: --incarnation cannot be combined with --repo (the supervisor \
                 numbers incarnations itself)"
                    .into(),
            );
        }
        let shrink = args.shrink_on_failure.then(|| lazarus::supervisor::Shrink {
            min_ranks: args.min_ranks.unwrap_or(1),
        });
        if let Some(s) = shrink.filter(|s| s.min_ranks > args.ranks) {
            return Err(format!(
                "lazarus run: --min-ranks {} is more than -n {}",
                s.min_ranks, args.ranks
            )
            .into());
        }
        return super::recover::supervise(
            cfg,
            repo,
            args.max_restarts,
            shrink,
            &args.inject,
            (cluster.hosts, cluster.spares),
        );
    }
    if args.inject.any() {
        return Err("lazarus run: fault injection flags need --repo".into());
    }
    if cfg.engine.remote() {
        let hosts = if cluster.hosts.is_empty() {
            let names = cfg.engine.default_hosts()?;
            names
                .into_iter()
                .map(|name| HostSpec { name, slots: None })
                .collect()
        } else {
            cluster.hosts
        };
        cfg.hosts = place(&hosts, cfg.ranks)?;
    }
    install_signal_forwarding();
    let outcome = Launcher::run(&cfg)?;
    if let Some(f) = outcome.failure {
        errln!("lazarus run: {f}; stopped the other ranks");
    } else if let Some(s) = outcome.interrupted {
        errln!("lazarus run: interrupted by signal {s}; stopped all ranks");
    }
    let code = outcome.exit_code().clamp(0, 255) as u8;
    Ok(ExitCode::from(code))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        run: super::Args,
    }

    fn parse(args: &[&str]) -> Result<super::Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied())).map(|c| c.run)
    }

    #[test]
    fn help_lists_the_supervisor_refusal_statuses() {
        use lazarus::supervisor::{EXIT_REPO_MISMATCH, EXIT_RESTORE_REFUSED};
        for code in [EXIT_RESTORE_REFUSED, EXIT_REPO_MISMATCH] {
            assert!(
                super::EXIT_STATUS.contains(&format!("\n  {code}  ")),
                "--help must document exit status {code}"
            );
        }
    }

    #[test]
    fn shrink_flags_need_their_prerequisites() {
        let ok = parse(&[
            "-n",
            "3",
            "--repo",
            "r",
            "--shrink-on-failure",
            "--min-ranks",
            "2",
            "--",
            "p",
        ])
        .unwrap();
        assert!(ok.shrink_on_failure);
        assert_eq!(ok.min_ranks, Some(2));
        assert!(parse(&["-n", "3", "--shrink-on-failure", "--", "p"]).is_err());
        assert!(parse(&["-n", "3", "--repo", "r", "--min-ranks", "2", "--", "p"]).is_err());
        let a = parse(&[
            "-n",
            "3",
            "--repo",
            "r",
            "--shrink-on-failure",
            "--min-ranks",
            "0",
            "--",
            "p",
        ]);
        assert!(a.is_err(), "--min-ranks 0 is rejected");
    }

    #[test]
    fn multi_host_flags_are_validated_before_any_launch() {
        let err = |args: &[&str]| match parse(args) {
            Err(e) => e.to_string(),
            Ok(a) => super::main(a).unwrap_err().to_string(),
        };
        let e = err(&["-n", "2", "--hosts", "a,b", "--", "true"]);
        assert!(
            e.contains("--hosts, --hostfile and --spares need --launcher"),
            "{e}"
        );
        let e = err(&["-n", "2", "--launcher", "mpirun", "--", "true"]);
        assert!(e.contains("give the hosts"), "{e}");
        let e = err(&[
            "-n",
            "2",
            "--launcher",
            "ssh",
            "--hosts",
            "a,a",
            "--",
            "true",
        ]);
        assert!(e.contains("listed twice"), "{e}");
        let e = err(&[
            "-n",
            "2",
            "--launcher",
            "mpirun",
            "--hosts",
            "a:0",
            "--",
            "true",
        ]);
        assert!(e.contains("slots must be"), "{e}");
        let e = err(&[
            "-n",
            "2",
            "--launcher",
            "mpirun",
            "--hosts",
            "a",
            "--spares",
            "1",
            "--",
            "true",
        ]);
        assert!(e.contains("--repo"), "--spares needs --repo: {e}");
        let e = err(&[
            "-n",
            "2",
            "--launcher",
            "mpirun",
            "--hosts",
            "a,b",
            "--spares",
            "2",
            "--repo",
            "/nonexistent/lazarus-repo",
            "--",
            "true",
        ]);
        assert!(e.contains("leaves no host to run on"), "{e}");
        let e = err(&["-n", "2", "--rsh-agent", "/bin/x", "--", "true"]);
        assert!(e.contains("need --launcher"), "{e}");
    }

    /// Review #8: `--launcher srun --rsh-agent X` ignored the agent, and `--launcher ssh
    /// --rsh-agent A --launcher-program P` ignored P. Both are refused naming the flags.
    #[test]
    fn rsh_agent_is_refused_where_it_would_be_ignored() {
        let e = |args: &[&str]| {
            let a = parse(args).unwrap();
            a.cluster.resolve().err().unwrap_or_default()
        };
        let srun = e(&[
            "-n",
            "2",
            "--launcher",
            "srun",
            "--rsh-agent",
            "/bin/x",
            "--",
            "true",
        ]);
        assert!(srun.contains("--rsh-agent"), "{srun:?}");
        let ssh = e(&[
            "-n",
            "2",
            "--launcher",
            "ssh",
            "--hosts",
            "a",
            "--rsh-agent",
            "/bin/a",
            "--launcher-program",
            "/bin/p",
            "--",
            "true",
        ]);
        assert!(
            ssh.contains("--rsh-agent") && ssh.contains("--launcher-program"),
            "{ssh:?}"
        );
        // Each alone is fine.
        for one in [["--rsh-agent", "/bin/a"], ["--launcher-program", "/bin/p"]] {
            let a = parse(&[
                "-n",
                "2",
                "--launcher",
                "ssh",
                "--hosts",
                "a",
                one[0],
                one[1],
                "--",
                "true",
            ])
            .unwrap();
            assert!(a.cluster.resolve().is_ok(), "{one:?}");
        }
    }

    /// Review #13: `--advertise 0.0.0.0` (or `::`, a multicast or the broadcast address)
    /// was accepted: every remote rank would dial itself. Refused naming the flag.
    #[test]
    fn advertise_refuses_unspecified_multicast_and_broadcast() {
        for bad in ["0.0.0.0", "::", "239.1.1.1", "255.255.255.255"] {
            let a = parse(&[
                "-n",
                "2",
                "--launcher",
                "ssh",
                "--hosts",
                "a",
                "--advertise",
                bad,
                "--",
                "true",
            ])
            .unwrap();
            let e = a.cluster.resolve().err().unwrap_or_default();
            assert!(e.contains(&format!("--advertise {bad}")), "{bad}: {e:?}");
        }
        let a = parse(&[
            "-n",
            "2",
            "--launcher",
            "ssh",
            "--hosts",
            "a",
            "--advertise",
            "10.0.0.1",
            "--bind",
            "0.0.0.0",
            "--",
            "true",
        ])
        .unwrap();
        assert!(a.cluster.resolve().is_ok());
    }

    /// Review #10: `--l1-dir` was exported to ranks that never read it (no fast level);
    /// refused like --fast-codec.
    #[test]
    fn l1_dir_without_a_fast_level_is_refused() {
        let a = parse(&["-n", "1", "--l1-dir", "/x", "--", "true"]).unwrap();
        let e = super::config(&a)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--l1-dir"), "{e:?}");
        let a = parse(&["-n", "1", "--l1-dir", "/x", "--l1-every", "2", "--", "true"]).unwrap();
        assert!(super::config(&a).is_ok());
    }

    #[test]
    fn minimum_above_the_rank_count_is_refused_before_any_launch() {
        let a = parse(&[
            "-n",
            "2",
            "--repo",
            "/nonexistent/lazarus-repo",
            "--shrink-on-failure",
            "--min-ranks",
            "3",
            "--",
            "true",
        ])
        .unwrap();
        let e = super::main(a).unwrap_err().to_string();
        assert!(e.contains("--min-ranks 3 is more than -n 2"), "{e}");
    }
}
