//! `lazarus bench ...`: benchmarks that measure against the physical limit in the same run
//! and print a ratio. Results are recorded in docs/PERFORMANCE.md with their command.

use super::CmdResult;

mod balance;
mod checkpoint;
mod experiment;
mod net;
mod round;

/// Benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// DVec load balancing vs the ideal, migration cost, N -> M restore vs same N.
    Balance(balance::Args),
    /// Full / incremental checkpoint and restore vs raw write+fsync and raw read.
    Checkpoint(checkpoint::Args),
    /// Young/Daly in practice: heat under seeded SIGKILLs, measured vs model, interval sweep.
    Experiment(experiment::Args),
    /// Communicator throughput/latency vs raw TCP; allreduce scaling.
    Net(net::Args),
    /// Aligned checkpoint round latency (2..16 ranks) and stall per checkpoint vs floor.
    Round(round::Args),
}

/// Runs the chosen benchmark.
pub fn main(b: Bench) -> CmdResult {
    match b {
        Bench::Balance(a) => balance::main(a),
        Bench::Checkpoint(a) => checkpoint::main(a),
        Bench::Experiment(a) => experiment::main(a),
        Bench::Net(a) => net::main(a),
        Bench::Round(a) => round::main(a),
    }
}
