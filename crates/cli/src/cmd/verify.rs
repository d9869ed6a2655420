//! `lazarus verify REPO`: re-hashes every COMMIT, manifest and chunk of every committed
//! checkpoint. Exit 0 when sound; exit 1 naming the first bad file and the checkpoints it
//! breaks (and every other problem after it); exit 2 when the repository cannot be read.

use super::CmdResult;
use lazarus::store::RepoReader;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `lazarus verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The checkpoint repository.
    pub repo: PathBuf,
    /// Print the full report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `lazarus verify`.
pub fn main(args: Args) -> CmdResult {
    let reader = RepoReader::open(&args.repo)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "verifying {bar:40} {bytes}/{total_bytes} ({bytes_per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let report = reader.verify(&|done, total| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    let Some(first) = report.problems.first() else {
        if !args.json {
            println!(
                "ok: {} committed checkpoint(s), {} chunk(s), {} verified",
                report.checkpoints.len(),
                report.chunks_checked,
                super::inspect::human(report.bytes_checked)
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let ids = |v: &[lazarus::format::CheckpointId]| {
        v.iter()
            .map(|i| i.0.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "lazarus verify: FAILED: first bad file {}: {}; it breaks checkpoint(s) {}",
        first.path.display(),
        first.detail,
        ids(&first.breaks)
    );
    for p in report.problems.iter().skip(1) {
        eprintln!(
            "  also bad: {}: {} (breaks {})",
            p.path.display(),
            p.detail,
            ids(&p.breaks)
        );
    }
    eprintln!(
        "intact checkpoints: {}",
        if report.intact.is_empty() {
            "none".to_string()
        } else {
            ids(&report.intact)
        }
    );
    Ok(ExitCode::from(1))
}
