//! A Lazarus program started by a real Open MPI `mpirun` (only as a process starter: no MPI
//! library is linked). Checks that `init()` reads `OMPI_COMM_WORLD_RANK/SIZE`, that rank 0
//! hosts the rendezvous at `LAZARUS_COORD`, that every rank joins the mesh, and that
//! allreduces give the right sums.
//!
//! `mpirun` missing: the test fails when `CI` is set (CI installs `openmpi-bin`, see
//! `.ci/run`) and is skipped with a loud message otherwise.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mpirun() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("mpirun"))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn real_mpirun_ranks_rendezvous_and_allreduce() {
    let Some(mpirun) = mpirun() else {
        assert!(
            !lazarus_testbed::in_ci(),
            "mpirun not found on PATH: CI must install openmpi-bin (see .ci/run)"
        );
        eprintln!(
            "\n********************************************************************\n\
             SKIPPED real_mpirun_ranks_rendezvous_and_allreduce: no `mpirun` on PATH\n\
             (apt-get install -y openmpi-bin). CI=true makes this a failure.\n\
             ********************************************************************\n"
        );
        return;
    };
    let n = 4;
    let coord = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(mpirun);
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-n",
        &n.to_string(),
    ])
    .args(["-x", "LAZARUS_COORD", "-x", "LAZARUS_JOB_TOKEN"])
    .arg(env!("CARGO_BIN_EXE_lazarus-net-probe"))
    .arg("allreduce")
    .env("LAZARUS_COORD", &coord)
    .env("LAZARUS_JOB_TOKEN", "mpirun-test-token")
    .env("LAZARUS_CONNECT_TIMEOUT_MS", "20000")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // Variables that would take precedence over Open MPI's or change who hosts the
    // rendezvous must not leak in from the test's own environment.
    for v in [
        "LAZARUS_RANK",
        "LAZARUS_WORLD_SIZE",
        "LAZARUS_LAUNCHER",
        "SLURM_PROCID",
        "SLURM_NTASKS",
    ] {
        cmd.env_remove(v);
    }
    let mut child = cmd.spawn().expect("spawn mpirun");
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mpirun did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    eprintln!("mpirun status {status}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(status.success(), "mpirun failed: {status}");
    let want = f64::from(n * (n + 1) / 2);
    for r in 0..n {
        let line = format!("ok rank={r} size={n} sum={want}");
        assert!(out.lines().any(|l| l.trim() == line), "missing {line:?}");
    }
}
