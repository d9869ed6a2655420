//! The remote engines on real separate network hosts: Linux network namespaces on a bridge
//! (`lazarus-testbed`), ranks started by a real Open MPI `mpirun` whose remote-shell agent
//! enters a namespace, by the ssh engine through the same agent, and by a real Slurm
//! `srun`. Checks the rendezvous across hosts, the rank->host map, that every output line
//! comes back exactly once whatever the launcher does to chunk boundaries, and that a dead
//! process and a lost host are told apart.
//!
//! Needs root, iproute2, Open MPI and Slurm (.ci/run installs them): skipped with a loud
//! message elsewhere, failing under CI=true.

use lazarus_net::launch::{
    FailureKind, InjectAt, JobOutcome, LaunchConfig, LaunchObserver, Launcher, MpirunEngine,
    RankStatus, ShimCommand, SrunEngine, SshEngine,
};
use lazarus_net::NetConfig;
use lazarus_testbed::{skip_or_fail, Cluster, Slurm, Unavailable};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
struct Capture {
    lines: Mutex<BTreeMap<u32, Vec<String>>>,
    injected: Mutex<Vec<u32>>,
}

impl LaunchObserver for Capture {
    fn stdout_line(&self, rank: u32, line: &[u8]) -> bool {
        let text = String::from_utf8_lossy(line)
            .trim_end_matches('\n')
            .to_string();
        self.lines
            .lock()
            .unwrap()
            .entry(rank)
            .or_default()
            .push(text);
        true
    }
    fn injected(&self, rank: u32) {
        self.injected.lock().unwrap().push(rank);
    }
}

fn base(n: u32, args: &[&str], hosts: Vec<String>) -> (LaunchConfig, Arc<Capture>) {
    let mut c = LaunchConfig::new(
        n,
        env!("CARGO_BIN_EXE_lazarus-net-probe"),
        args.iter().map(|a| a.into()).collect(),
    );
    c.net = NetConfig {
        heartbeat_interval: Duration::from_millis(100),
        failure_timeout: Duration::from_millis(1500),
        connect_timeout: Duration::from_secs(30),
        ..NetConfig::default()
    };
    c.kill_grace = Duration::from_millis(1000);
    c.hosts = hosts;
    c.shim = Some(ShimCommand {
        program: env!("CARGO_BIN_EXE_lazarus-shim").into(),
        args: Vec::new(),
    });
    let cap = Arc::new(Capture::default());
    c.observer = Some(cap.clone());
    (c, cap)
}

fn mpirun(cl: &Cluster) -> Arc<MpirunEngine> {
    Arc::new(MpirunEngine {
        agent: Some(cl.agent().to_path_buf()),
        // Open MPI's hwloc shared-memory topology crashes orted inside a namespace here.
        extra_args: ["--mca", "rtc", "^hwloc"].map(Into::into).to_vec(),
        ..MpirunEngine::default()
    })
}

fn ssh(cl: &Cluster) -> Arc<SshEngine> {
    Arc::new(SshEngine {
        program: cl.agent().to_path_buf(),
        extra_args: Vec::new(),
    })
}

fn cluster(test: &str, k: usize) -> Option<Cluster> {
    let c = Cluster::new(k).and_then(|c| {
        lazarus_testbed::which("mpirun")
            .map(|_| c)
            .ok_or_else(|| Unavailable("mpirun is not installed (openmpi-bin)".into()))
    });
    skip_or_fail(test, c)
}

/// Runs the launcher on a thread with a deadline: a hang is a failure.
fn run(c: LaunchConfig) -> JobOutcome {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Launcher::run(&c));
    });
    let o = rx
        .recv_timeout(Duration::from_secs(180))
        .expect("the launcher did not return within 180 s")
        .expect("launch failed");
    eprintln!("{o:?}");
    o
}

/// 2 hosts x 2 ranks: every rank joins across hosts, the map is the placement.
fn ring_on(engine: &str, cl: &Cluster) {
    let h = cl.host_names();
    let hosts = vec![h[0].clone(), h[0].clone(), h[1].clone(), h[1].clone()];
    let (mut c, cap) = base(4, &["ring"], hosts.clone());
    c.engine = if engine == "mpirun" {
        mpirun(cl)
    } else {
        ssh(cl)
    };
    let o = run(c);
    assert!(o.success(), "{engine}: {o:?}");
    assert_eq!(o.statuses, vec![RankStatus::Exited(0); 4]);
    assert_eq!(o.hosts, hosts.into_iter().map(Some).collect::<Vec<_>>());
    let lines = cap.lines.lock().unwrap();
    for r in 0..4 {
        let l = lines.get(&r).cloned().unwrap_or_default();
        assert!(
            l.len() == 1 && l[0].starts_with("ok hops=") && l[0].contains("sum=6"),
            "{engine} rank {r}: {l:?}"
        );
    }
}

#[test]
fn mpirun_and_ssh_engines_run_a_job_across_namespace_hosts() {
    let Some(cl) = cluster("mpirun_and_ssh_engines_run_a_job_across_namespace_hosts", 2) else {
        return;
    };
    ring_on("mpirun", &cl);
    ring_on("ssh", &cl);
}

/// Thousands of short lines written as fast as possible, a line longer than Open MPI's
/// read chunk and than one shim record, and stderr text that looks like tags: every line
/// arrives once, in order (Open MPI's own tagged output loses short lines and splits long
/// ones mid-line; see launch/record.rs).
#[test]
fn every_output_line_comes_back_once_through_mpirun() {
    let Some(cl) = cluster("every_output_line_comes_back_once_through_mpirun", 2) else {
        return;
    };
    let h = cl.host_names();
    let (lines, long) = (3000u32, 100_000usize);
    let (mut c, cap) = base(
        3,
        &["spam", &lines.to_string(), &long.to_string()],
        vec![h[0].clone(), h[1].clone(), h[1].clone()],
    );
    c.engine = mpirun(&cl);
    let o = run(c);
    assert!(o.success(), "{o:?}");
    let got = cap.lines.lock().unwrap();
    for r in 0..3u32 {
        let mut want: Vec<String> = (0..lines)
            .map(|i| format!("r{r} l{i} {}", "x".repeat((i % 97) as usize)))
            .collect();
        want.push(format!("r{r} long {}", "y".repeat(long)));
        want.push(format!("done r{r}"));
        let have = got.get(&r).cloned().unwrap_or_default();
        assert_eq!(have.len(), want.len(), "rank {r}: line count");
        assert!(have == want, "rank {r}: lines differ");
    }
}

/// A rank SIGKILLed (by the shim's planned kill) is a process failure with its exit
/// status; killing every process of a host and cutting its link is a lost host.
#[test]
fn mpirun_tells_a_dead_process_from_a_lost_host() {
    let Some(cl) = cluster("mpirun_tells_a_dead_process_from_a_lost_host", 2) else {
        return;
    };
    let h = cl.host_names();
    let hosts = vec![h[0].clone(), h[0].clone(), h[1].clone(), h[1].clone()];
    let (mut c, cap) = base(4, &["sleep", "60"], hosts.clone());
    c.engine = mpirun(&cl);
    c.inject = vec![(2, InjectAt::AfterStart(Duration::from_secs(2)))];
    let o = run(c);
    let f = o.failure.expect("a failure");
    assert_eq!(
        (f.rank.0, f.kind),
        (2, FailureKind::Signaled(libc::SIGKILL)),
        "{o:?}"
    );
    assert_eq!(o.failed_host(), Some(h[1].as_str()));
    assert!(
        o.lost_hosts.is_empty(),
        "a process died, no host was lost: {o:?}"
    );
    assert_eq!(*cap.injected.lock().unwrap(), vec![2]);

    let (mut c, _) = base(4, &["sleep", "60"], hosts);
    c.engine = mpirun(&cl);
    let t = std::thread::spawn(move || run(c));
    // Wait until the ranks sleep, then fail host 1.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while cl.pids(1).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "ranks did not start on host 1"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    cl.link_down(1).unwrap();
    cl.kill_host(1);
    let o = t.join().unwrap();
    assert!(o.failure.is_some(), "{o:?}");
    assert_eq!(o.lost_hosts, vec![h[1].clone()], "{o:?}");
    cl.link_up(1).unwrap();
}

#[test]
fn srun_engine_runs_a_job_and_reports_a_killed_rank() {
    let Some(slurm) = skip_or_fail(
        "srun_engine_runs_a_job_and_reports_a_killed_rank",
        Slurm::up(),
    ) else {
        return;
    };
    for (k, v) in slurm.env() {
        std::env::set_var(k, v);
    }
    let node = std::process::Command::new("hostname")
        .arg("-s")
        .output()
        .unwrap();
    let node = String::from_utf8_lossy(&node.stdout).trim().to_string();
    let (mut c, cap) = base(4, &["ring"], vec![node.clone(); 4]);
    c.engine = Arc::new(SrunEngine::default());
    let o = run(c);
    assert!(o.success(), "{o:?}");
    assert_eq!(o.hosts, vec![Some(node.clone()); 4]);
    assert_eq!(cap.lines.lock().unwrap().len(), 4);

    let (mut c, cap) = base(4, &["sleep", "60"], vec![node.clone(); 4]);
    c.engine = Arc::new(SrunEngine::default());
    c.inject = vec![(1, InjectAt::AfterStart(Duration::from_secs(2)))];
    let o = run(c);
    let f = o.failure.expect("a failure");
    assert_eq!(
        (f.rank.0, f.kind),
        (1, FailureKind::Signaled(libc::SIGKILL)),
        "{o:?}"
    );
    assert!(o.lost_hosts.is_empty(), "{o:?}");
    assert_eq!(*cap.injected.lock().unwrap(), vec![1]);
    // Both runs made their own allocation (no salloc): neither is left allocated (an srun
    // SIGKILLed as soon as its ranks had exited used to leave it RUNNING forever).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let q = std::process::Command::new("squeue")
            .args(["-h", "-o", "%i %j %T"])
            .output()
            .unwrap();
        let q = String::from_utf8_lossy(&q.stdout).to_string();
        if !q.contains("lazarus-") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "Slurm jobs left: {q}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
