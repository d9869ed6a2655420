//! The `lazarus` command. Thin: every subcommand parses its flags, validates them into a
//! typed configuration, and calls the library.

// A failed stdout/stderr must never panic the CLI (issue #11 item 10): results go through
// `outln!` (errors propagate), diagnostics through `errln!` (errors dropped).
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

use clap::{Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;

mod cmd;

/// Make long-running distributed programs survive failures.
#[derive(Parser, Debug)]
#[command(name = "lazarus", version, about)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start N ranks of a program, here or on a cluster's hosts (and supervise them).
    Run(Box<cmd::run::Args>),
    /// The main demo: distributed heat on 4 ranks, one killed mid-run, automatic recovery.
    Demo(cmd::demo::Args),
    /// List a repository's checkpoints with sizes and ratios.
    Inspect(cmd::inspect::Args),
    /// Re-hash everything in a repository; exit 1 naming the first damage.
    Verify(cmd::verify::Args),
    /// Keep the newest K committed checkpoints and sweep unused chunks.
    Gc(cmd::gc::Args),
    /// Optimal checkpoint interval by Young, Daly, and the exact minimiser; `model levels`:
    /// the periods of a multi-level schedule.
    Model(cmd::model::Args),
    /// The demo's rank program (runs examples/heat.rs; used by `lazarus demo`).
    #[command(name = "__heat-rank", hide = true)]
    HeatRank(cmd::demo::HeatRankArgs),
    /// Benchmarks measured against the machine's physical limits.
    #[command(subcommand)]
    Bench(cmd::bench::Bench),
    /// Checkpoint unmodified WebAssembly (WASI) programs: `lazarus vm run PROG.wasm`.
    #[command(subcommand)]
    Vm(cmd::vm::Vm),
}

fn main() -> ExitCode {
    // The rank shim that remote launchers start on every host (hidden; not parsed by clap,
    // which would take the `--` before the rank's program for itself).
    if std::env::args_os().nth(1).is_some_and(|a| a == "__shim") {
        let code = lazarus::net::launch::shim::main(std::env::args_os().skip(2).collect());
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Run(a) => cmd::run::main(*a),
        Command::Demo(a) => cmd::demo::main(a),
        Command::HeatRank(a) => cmd::demo::heat_rank(a),
        Command::Inspect(a) => cmd::inspect::main(a),
        Command::Verify(a) => cmd::verify::main(a),
        Command::Gc(a) => cmd::gc::main(a),
        Command::Model(a) => cmd::model::main(a),
        Command::Bench(b) => cmd::bench::main(b),
        Command::Vm(v) => cmd::vm::main(v),
    };
    match result {
        Ok(code) => code,
        // The reader of our stdout went away (`lazarus inspect R | head`): stop quietly with
        // the status a SIGPIPE death would give, as other tools in a pipe do.
        Err(e) if is_broken_pipe(e.as_ref()) => ExitCode::from(141),
        Err(e) => {
            // No `eprintln!`: a failed stderr must not turn the error into a panic.
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "lazarus: error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                let _ = writeln!(err, "  caused by: {s}");
                source = s.source();
            }
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // The same rule as every Lazarus program: colour only on a terminal, never with
    // NO_COLOR (lazarus::init_logging).
    lazarus::init_logging(default);
}
