//! `lazarus vm run ...`: a thin CLI over `lazarus_vm` (docs/VM.md). Flags are validated
//! into a `VmConfig`; the library does the rest.

use super::CmdResult;
use lazarus_vm::{Every, Preopen, RuntimeKind, VmConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// `lazarus vm` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Vm {
    /// Run an unmodified WASI program with periodic checkpoints; run the same command
    /// again after a crash to resume it.
    Run(RunArgs),
    /// Write the instrumented module (what `run` executes) to a file.
    Instrument(InstrumentArgs),
}

/// Flags of `lazarus vm run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Checkpoint repository (created if absent). Under `lazarus run --repo` it is the
    /// supervisor's (LAZARUS_REPO).
    #[arg(long, value_name = "DIR", env = "LAZARUS_REPO")]
    repo: Option<PathBuf>,
    /// Run without checkpoints (no repository needed).
    #[arg(long, conflicts_with = "repo")]
    no_checkpoint: bool,
    /// When to checkpoint: STEPS (counted loop iterations, the same positions on every
    /// runtime), a DURATION (`30s`, `500ms`), `auto` (Daly's interval from the measured
    /// checkpoint cost and the failure history), or a policy spec (`daly,mtbf=6h`).
    #[arg(long, default_value = "auto", value_name = "STEPS|DURATION|auto")]
    every: String,
    /// The runtime: wasmi (interpreter) or wasmtime (JIT, if built in). A checkpoint taken
    /// under one resumes under the other.
    #[arg(long, default_value = "wasmi")]
    runtime: String,
    /// Preopen a host directory: `HOST[::GUEST]` (GUEST defaults to HOST). Repeatable.
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    dirs: Vec<String>,
    /// Environment variable for the program, `KEY=VALUE`. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Seed of the program's `random_get` (default: random, recorded in the checkpoint).
    #[arg(long)]
    seed: Option<u64>,
    /// Committed checkpoints to keep; older ones are garbage-collected.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    keep: u32,
    /// MiB reserved for the saved call stack at a checkpoint (deep recursion needs more).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    unwind_buffer: u32,
    /// Test hook: stop (exit status 3, as if killed) right after this many checkpoints.
    #[arg(long, hide = true, value_name = "N")]
    stop_after_checkpoints: Option<u64>,
    /// The WASI program (`.wasm`, a command module).
    #[arg(value_name = "PROG.wasm")]
    module: PathBuf,
    /// Arguments of the program, after `--`.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

/// Flags of `lazarus vm instrument`.
#[derive(clap::Args, Debug)]
pub struct InstrumentArgs {
    /// The WASI program.
    module: PathBuf,
    /// Where to write the instrumented module.
    #[arg(short, long)]
    output: PathBuf,
}

fn config(a: RunArgs) -> Result<VmConfig, Box<dyn std::error::Error + Send + Sync>> {
    let mut c = VmConfig::new(a.module, a.args);
    c.runtime = a.runtime.parse::<RuntimeKind>()?;
    if !c.runtime.available() {
        return Err(format!(
            "lazarus vm run: --runtime {}: this lazarus was built without it (cargo feature \
             `wasmtime` of lazarus-cli)",
            c.runtime.name()
        )
        .into());
    }
    for d in &a.dirs {
        let (host, guest) = d.split_once("::").unwrap_or((d, d));
        if host.is_empty() || guest.is_empty() {
            return Err(format!("--dir {d:?}: expected HOST[::GUEST]").into());
        }
        c.preopens.push(Preopen {
            host: host.into(),
            guest: guest.into(),
        });
    }
    for kv in &a.env {
        if kv.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            return Err(format!("--env {kv:?}: expected KEY=VALUE").into());
        }
        c.env.push(kv.clone());
    }
    c.seed = a.seed;
    c.keep = a.keep as usize;
    c.unwind_bytes = a.unwind_buffer << 20;
    c.stop_after_checkpoints = a.stop_after_checkpoints;
    if a.no_checkpoint {
        c.every = Every::Never;
    } else {
        c.repo = Some(a.repo.ok_or(
            "lazarus vm run: --repo DIR is required (or LAZARUS_REPO, or --no-checkpoint)",
        )?);
        c.every = Every::parse(&a.every)?;
        c.job_token = std::env::var(lazarus::coord::TOKEN_ENV).ok();
        c.markers = lazarus::coord::marker::markers_enabled();
    }
    Ok(c)
}

/// Exit status of a run stopped by `--stop-after-checkpoints`.
const STOPPED: u8 = 3;

/// Runs a `lazarus vm` subcommand; exits with the program's status.
pub fn main(v: Vm) -> CmdResult {
    match v {
        Vm::Run(a) => {
            let mut cfg = config(a)?;
            // Nothing of ours may reach stderr before the program's stderr is back at its
            // offset (a restarted process may inherit the file at offset 0).
            lazarus::hold_log_lines();
            cfg.streams_positioned = Some(lazarus::release_log_lines);
            let report = lazarus_vm::run(&cfg);
            lazarus::release_log_lines();
            let report = report?;
            if report.stopped {
                return Ok(ExitCode::from(STOPPED));
            }
            if report.already_finished {
                errln!(
                    "lazarus vm: the program already ran to completion (exit status {}) in this \
                     repository; nothing to do (use a new --repo to run it again)",
                    report.exit_code
                );
            }
            Ok(ExitCode::from(report.exit_code.clamp(0, 255) as u8))
        }
        Vm::Instrument(a) => {
            let wasm =
                std::fs::read(&a.module).map_err(|e| format!("{}: {e}", a.module.display()))?;
            let out = lazarus_vm::instrument::instrument(&wasm)?;
            std::fs::write(&a.output, out).map_err(|e| format!("{}: {e}", a.output.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
