//! `lazarus bench ...`: benchmarks that measure against the physical limit in the same run
//! and print a ratio. Results are recorded in docs/PERFORMANCE.md with their command.

use super::CmdResult;

mod async_ckpt;
mod balance;
mod checkpoint;
mod experiment;
mod files;
mod levels;
mod net;
mod recovery;
mod round;
mod s3;
mod vm;

/// Benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// Asynchronous checkpoints: stall (capture) vs memcpy, sync stall vs raw write+fsync,
    /// background flush, incremental capture at 1 % changed.
    Async(async_ckpt::Args),
    /// DVec load balancing vs the ideal, migration cost, N -> M restore vs same N.
    Balance(balance::Args),
    /// Full / incremental checkpoint and restore vs raw write+fsync and raw read.
    Checkpoint(checkpoint::Args),
    /// Young/Daly in practice: heat under seeded SIGKILLs, measured vs model, interval sweep.
    Experiment(experiment::Args),
    /// Managed files vs std::fs::File (appends, random 4 KiB writes); checkpoint cost of a
    /// large managed tree with 1 % changed.
    Files(files::Args),
    /// Checkpoint cost per level (L1 node-local, L1+L2 partner copy, L4) vs memcpy, raw
    /// loopback TCP and raw write + fsync; incremental L2 after 1 % changed.
    Levels(levels::Args),
    /// Communicator throughput/latency vs raw TCP; allreduce scaling.
    Net(net::Args),
    /// Aligned checkpoint round latency (2..16 ranks) and stall per checkpoint vs floor.
    Round(round::Args),
    /// Full checkpoint into an S3-compatible store vs raw PUT throughput of the same client.
    S3(s3::Args),
    /// VM checkpointing: instrumented vs plain module, 256 MiB memory checkpoint vs
    /// memcpy + raw write, incremental size after 1 % of pages changed.
    Vm(vm::Args),
    /// Recovery time (failure -> every rank resumed) for a process and a host failure,
    /// local launcher vs mpirun on network-namespace hosts, vs the launcher's start time.
    Recovery(recovery::Args),
}

/// A scratch directory removed (with everything in it) when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// CPU time of the whole process (every thread, user and system) so far.
fn process_cpu() -> std::time::Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid out-pointer; the clock id is a constant every Linux has.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), printed next to measurements.
fn load_average() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// Median ignoring NaNs (mean of the two middle values for an even count; NaN if none).
fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the chosen benchmark.
pub fn main(b: Bench) -> CmdResult {
    match b {
        Bench::Async(a) => async_ckpt::main(a),
        Bench::Balance(a) => balance::main(a),
        Bench::Checkpoint(a) => checkpoint::main(a),
        Bench::Experiment(a) => experiment::main(a),
        Bench::Files(a) => files::main(a),
        Bench::Levels(a) => levels::main(a),
        Bench::Net(a) => net::main(a),
        Bench::Round(a) => round::main(a),
        Bench::S3(a) => s3::main(a),
        Bench::Vm(a) => vm::main(a),
        Bench::Recovery(a) => recovery::main(a),
    }
}
