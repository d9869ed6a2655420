//! `lazarus inspect REPO`: one row per committed checkpoint with sizes and ratios.
//!
//! Definitions (per checkpoint): *logical* = sum of object lengths over ranks; *unique* =
//! raw bytes of its distinct chunks; *stored* = chunk-file bytes of its distinct chunks;
//! *new* = chunk-file bytes of chunks the previous committed checkpoint did not use;
//! compression = unique / stored; dedup = logical / unique.

use super::CmdResult;
use lazarus::format::{CheckpointId, ChunkDigest};
use lazarus::store::RepoReader;
use serde::Serialize;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `lazarus inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The checkpoint repository.
    pub repo: PathBuf,
    /// Print JSON (one object with a `checkpoints` array) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    id: CheckpointId,
    step: u64,
    time_unix_ms: u64,
    time_utc: String,
    ranks: u32,
    logical_bytes: u64,
    unique_bytes: u64,
    stored_bytes: u64,
    new_bytes: u64,
    compression_ratio: f64,
    dedup_ratio: f64,
    damaged: Option<String>,
}

/// Runs `lazarus inspect`.
pub fn main(args: Args) -> CmdResult {
    let reader = RepoReader::open(&args.repo)?;
    let mut rows = Vec::new();
    let mut prev: Option<HashMap<ChunkDigest, (u64, u64)>> = None;
    let committed = reader.committed()?;
    // Each checkpoint costs one manifest read and decode per rank: long for big jobs.
    let bar = progress_bar(
        "inspecting {bar:40} {pos}/{len} checkpoints",
        committed.len() as u64,
    );
    for s in committed {
        if let Some(b) = &bar {
            b.inc(1);
        }
        let mut chunks: HashMap<ChunkDigest, (u64, u64)> = HashMap::new();
        let mut damaged = None;
        for p in &s.parts {
            match reader.manifest(s.id, p.rank) {
                Ok(m) => {
                    for c in m.objects.iter().flat_map(|o| o.chunks.iter()) {
                        chunks.insert(c.digest, (c.len, c.stored));
                    }
                }
                Err(e) => damaged = Some(e.to_string()),
            }
        }
        let unique: u64 = chunks.values().map(|c| c.0).sum();
        let stored: u64 = chunks.values().map(|c| c.1).sum();
        let new: u64 = chunks
            .iter()
            .filter(|(d, _)| prev.as_ref().is_none_or(|p| !p.contains_key(*d)))
            .map(|(_, c)| c.1)
            .sum();
        rows.push(Row {
            id: s.id,
            step: s.step,
            time_unix_ms: s.time_unix_ms,
            time_utc: utc(s.time_unix_ms),
            ranks: s.world_size,
            logical_bytes: s.logical_bytes,
            unique_bytes: unique,
            stored_bytes: stored,
            new_bytes: new,
            compression_ratio: ratio(unique, stored),
            dedup_ratio: ratio(s.logical_bytes, unique),
            damaged,
        });
        prev = Some(chunks);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.json {
        let out = serde_json::json!({ "repo": args.repo, "checkpoints": rows });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6} {:>10} {:<20} {:>5} {:>10} {:>10} {:>10} {:>6} {:>6}",
        "id", "step", "time (UTC)", "ranks", "logical", "stored", "new", "compr", "dedup"
    );
    for r in &rows {
        println!(
            "{:>6} {:>10} {:<20} {:>5} {:>10} {:>10} {:>10} {:>6.2} {:>6.2}{}",
            r.id.0,
            r.step,
            r.time_utc,
            r.ranks,
            human(r.logical_bytes),
            human(r.stored_bytes),
            human(r.new_bytes),
            r.compression_ratio,
            r.dedup_ratio,
            r.damaged
                .as_ref()
                .map(|d| format!("  DAMAGED: {d}"))
                .unwrap_or_default()
        );
    }
    if rows.is_empty() {
        println!("(no committed checkpoints)");
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr with `template`, only when stderr is a terminal (so pipes,
/// logs and tests see clean output).
pub(crate) fn progress_bar(template: &str, len: u64) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(len);
        b.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    })
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

/// Bytes with a binary unit, e.g. `1.50 MiB`.
pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// `YYYY-MM-DD hh:mm:ss` in UTC (civil-from-days, no time-zone database needed).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
