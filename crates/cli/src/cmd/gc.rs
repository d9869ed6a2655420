//! `lazarus gc REPO --keep K`: keep the newest K intact committed checkpoints (older ones
//! in place of newer ones missing a chunk), remove older ones and uncommitted leftovers,
//! and sweep chunks no kept checkpoint uses. Takes the repository lock (fails while a live
//! writer holds it).

use super::CmdResult;
use lazarus::store::{GcStage, RepoOptions, Repository};
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `lazarus gc`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The checkpoint repository.
    pub repo: PathBuf,
    /// How many of the newest committed checkpoints to keep (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `lazarus gc`.
pub fn main(args: Args) -> CmdResult {
    // Refuse to create a repository as a side effect of a typo (on every backend).
    lazarus::store::RepoReader::open(&args.repo)?;
    let keep = usize::try_from(args.keep)?;
    let mut repo = Repository::open(&args.repo, RepoOptions::default())?;
    let bar = super::inspect::progress_bar("{msg:8} {bar:40} {pos}/{len}", 0);
    let r = repo.retain_intact_with_progress(keep, &|stage, done, total| {
        if let Some(b) = &bar {
            let msg = match stage {
                GcStage::Mark => "marking",
                GcStage::Remove => "removing",
                GcStage::Sweep => "sweeping",
            };
            b.set_message(msg);
            b.set_length(total);
            b.set_position(done);
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let r = r?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
    } else {
        outln!(
            "kept {} checkpoint(s), removed {} (+{} uncommitted leftover(s)); swept {} chunk(s), freed {}",
            r.kept.len(),
            r.removed.len(),
            r.removed_uncommitted.len(),
            r.chunks_removed,
            super::inspect::human(r.bytes_freed)
        )?;
        if !r.damaged_left.is_empty() {
            outln!(
                "left alone (damaged COMMIT): {:?}",
                r.damaged_left.iter().map(|i| i.0).collect::<Vec<_>>()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
