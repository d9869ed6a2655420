//! `lazarus inspect REPO`: one row per committed checkpoint with sizes and ratios.
//!
//! Definitions (per checkpoint): *logical* = sum of object lengths over ranks; *unique* =
//! raw bytes of its distinct chunks; *stored* = chunk-file bytes of its distinct chunks;
//! *new* = chunk-file bytes of chunks the previous committed checkpoint did not use;
//! compression = unique / stored; dedup = logical / unique; *stall* = how long rank 0
//! stood in the checkpoint round until COMMIT (its part written and every rank's vote
//! received, so the slowest rank is in it); *write* = how long rank 0 took to write its own
//! part (both recorded in COMMIT since issue #12, `-` for older checkpoints; JSON
//! `stall_us`/`write_us`, `null` when not recorded); *flush* = for an asynchronous
//! checkpoint (issue #16), the background time from the end of the capture to COMMIT, and
//! *stall* then is the capture alone (JSON `flush_us`; `-`/`null` for synchronous ones). A
//! checkpoint written by `Job::finish` (the job's final state) is marked `finished`.
//!
//! Per-rank parts (`--parts`, and always in `--json` as `parts`): objects, logical bytes,
//! *stored* = chunk-file bytes of the rank's distinct chunks (shared with other ranks or
//! older checkpoints or not), *channel* = logical bytes of the rank's `lazarus.channels`
//! object (in-flight messages of an unaligned checkpoint; 0 if absent), and the short
//! manifest digest from COMMIT. Checkpoint directories without COMMIT (pending or aborted)
//! or with a damaged COMMIT are listed separately (`uncommitted` in JSON, a trailing line in
//! the table) with the rank manifests they hold; they are never restorable or counted.

use super::CmdResult;
use lazarus::coord::meta::{self, RecordedCost};
use lazarus::format::{utc_time, CheckpointId, ChunkDigest};
use lazarus::store::{CommitStatus, RepoReader};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
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
    /// Also print one line per rank part under each checkpoint (not with --levels).
    #[arg(long, conflicts_with = "levels")]
    pub parts: bool,
    /// Multi-level jobs (docs/LEVELS.md): one row per job-wide checkpoint number saying
    /// which levels hold it (L4: the repository's id; L1/L2: how many ranks' parts; L3:
    /// how many of the parity groups' shards; copies of abandoned runs, which restore never
    /// uses, apart).
    #[arg(long)]
    pub levels: bool,
    /// With --levels: the node-local root [default: the job's default,
    /// /dev/shm/lazarus-<hash of REPO>].
    #[arg(long, value_name = "DIR", requires = "levels")]
    pub l1_dir: Option<PathBuf>,
}

/// One job-wide checkpoint number in `lazarus inspect --levels`.
#[derive(Default)]
struct LevelRow {
    step: u64,
    world: u32,
    l4: Option<u64>,
    l1: Vec<u32>,
    l2: Vec<u32>,
    /// Parity shards held: (group members, shard index).
    l3: Vec<(Vec<u32>, u32)>,
    /// Each parity group seen, with its number of shards.
    groups: BTreeMap<Vec<u32>, u32>,
    /// Copies and parity shards of abandoned runs under this number (never restored).
    abandoned: usize,
}

impl LevelRow {
    /// `held/expected` parity shards, `-` without any.
    fn l3_text(&self) -> String {
        if self.groups.is_empty() {
            return "-".into();
        }
        let expected: u32 = self.groups.values().sum();
        format!("{}/{}", self.l3.len(), expected)
    }
}

/// `lazarus inspect --levels`: which levels hold each job-wide checkpoint.
fn levels_table(args: &Args) -> CmdResult {
    let root = super::verify::l1_root(&args.repo, args.l1_dir.as_deref());
    let held = lazarus::levels::scan(&root)?;
    let parity = lazarus::levels::scan_parity(&root)?;
    let mut durable = Vec::new();
    let mut history = None;
    // The repository must open: an error (a typo'd path) is never an empty L4 column.
    // Decision: a repository that is not there at all is allowed only when the node-local
    // root holds copies (a job with no L4 checkpoint yet may not have written it), with a
    // warning; with nothing anywhere it is an error naming both paths.
    let named = |e: &lazarus::store::StoreError| {
        let (repo, e) = (args.repo.display().to_string(), e.to_string());
        if e.contains(&repo) {
            e
        } else {
            format!("{repo}: {e}")
        }
    };
    let reader = match RepoReader::open(&args.repo) {
        Ok(reader) => Some(reader),
        Err(e) if e.kind() == lazarus::store::StoreErrorKind::Missing => {
            if held.is_empty() && parity.is_empty() {
                return Err(format!(
                    "lazarus inspect --levels: {}; and no level copies under {}",
                    named(&e),
                    root.display()
                )
                .into());
            }
            errln!(
                "lazarus inspect --levels: warning: {}; showing the node-local copies under {} \
                 only (no L4 column)",
                named(&e),
                root.display()
            );
            None
        }
        Err(e) => return Err(format!("lazarus inspect --levels: {}", named(&e)).into()),
    };
    if let Some(reader) = reader {
        for c in reader.committed()? {
            if let Some(seq) = meta::level_seq(&c.app) {
                durable.push((seq, c.step, c.world_size, c.id.0));
            }
        }
        if let Some(bytes) = reader.level_history()? {
            let location = reader.level_history_location();
            // A diagnostic tool shows what is there: a bad record is reported, and every
            // copy then counts.
            match lazarus::levels::History::decode(&bytes, &location.display().to_string()) {
                Ok(h) => history = Some(h),
                Err(why) => {
                    errln!("lazarus inspect: {why}; copies of abandoned runs are not told apart")
                }
            }
        }
    }
    let rows = level_rows(&held, &parity, &durable, history.as_ref());
    if args.json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(seq, r)| {
                serde_json::json!({"seq": seq, "step": r.step, "world": r.world, "l4": r.l4,
                    "l1_ranks": r.l1.len(), "l2_ranks": r.l2.len(),
                    "l3_shards": r.l3.len(),
                    "l3_shards_expected": r.groups.values().sum::<u32>(),
                    "abandoned_copies": r.abandoned})
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "levels": list }))?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("node-local root: {}", root.display())?;
    outln!(
        "{:>6} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "number",
        "step",
        "L4 id",
        "L1 parts",
        "L2 parts",
        "L3 shards",
        "abandoned"
    )?;
    for (seq, r) in rows.iter().rev() {
        outln!(
            "{seq:>6} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10}",
            r.step,
            r.l4.map_or("-".to_string(), |i| i.to_string()),
            format!("{}/{}", r.l1.len(), r.world),
            format!("{}/{}", r.l2.len(), r.world),
            r.l3_text(),
            if r.abandoned == 0 {
                "-".to_string()
            } else {
                r.abandoned.to_string()
            },
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The rows of `lazarus inspect --levels` from what the node-local root and the durable
/// repository hold (`durable`: job-wide number, step, world, repository id). With the
/// job's history record, copies of abandoned runs (docs/LEVELS.md, "One history") are
/// counted apart (`abandoned`), not as holding the number.
fn level_rows(
    held: &[lazarus::levels::Held],
    parity: &[lazarus::levels::ParityHeld],
    durable: &[(u64, u64, u32, u64)],
    history: Option<&lazarus::levels::History>,
) -> BTreeMap<u64, LevelRow> {
    let admitted = |seq: u64, app: &BTreeMap<String, String>| {
        history.is_none_or(|h| {
            h.admits(
                seq,
                app.get(lazarus::levels::LINEAGE_KEY).map(String::as_str),
            )
        })
    };
    let mut rows: BTreeMap<u64, LevelRow> = BTreeMap::new();
    for &(seq, step, world, id) in durable {
        let r = rows.entry(seq).or_insert_with(|| LevelRow {
            step,
            world,
            ..LevelRow::default()
        });
        r.l4 = Some(id);
    }
    for h in held {
        let r = rows.entry(h.seq).or_insert_with(|| LevelRow {
            step: h.step,
            world: h.world,
            ..LevelRow::default()
        });
        if !admitted(h.seq, &h.app) {
            r.abandoned += 1;
            continue;
        }
        let v = if h.primary { &mut r.l1 } else { &mut r.l2 };
        if !v.contains(&h.subject) {
            v.push(h.subject);
        }
    }
    for p in parity {
        let r = rows.entry(p.seq).or_insert_with(|| LevelRow {
            step: p.step,
            world: p.world,
            ..LevelRow::default()
        });
        if !admitted(p.seq, &p.app) {
            r.abandoned += 1;
            continue;
        }
        r.groups.insert(p.members.clone(), p.m);
        let key = (p.members.clone(), p.shard);
        if !r.l3.contains(&key) {
            r.l3.push(key);
        }
    }
    rows
}

/// Name of the object holding a rank's saved in-flight messages (`lazarus-coord`'s
/// `CHANNELS_OBJECT`; repeated here because the CLI reads repositories, not sessions).
const CHANNELS_OBJECT: &str = "lazarus.channels";

#[derive(Serialize)]
struct PartRow {
    rank: u32,
    objects: usize,
    logical_bytes: u64,
    stored_bytes: u64,
    channel_bytes: u64,
    manifest_digest: String,
    damaged: Option<String>,
}

#[derive(Serialize)]
struct NotCommitted {
    id: CheckpointId,
    status: String,
    manifest_ranks: Vec<u32>,
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
    stall_us: Option<u64>,
    write_us: Option<u64>,
    flush_us: Option<u64>,
    finished: bool,
    damaged: Option<String>,
    status: &'static str,
    parts: Vec<PartRow>,
}

/// Runs `lazarus inspect`.
pub fn main(args: Args) -> CmdResult {
    if args.levels {
        return levels_table(&args);
    }
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
        let mut parts = Vec::with_capacity(s.parts.len());
        for p in &s.parts {
            let hex = p.manifest_digest.to_hex();
            let mut row = PartRow {
                rank: p.rank.0,
                objects: 0,
                logical_bytes: p.logical_bytes,
                stored_bytes: 0,
                channel_bytes: 0,
                manifest_digest: hex.get(..12).unwrap_or(&hex).to_string(),
                damaged: None,
            };
            match reader.manifest(s.id, p.rank) {
                Ok(m) => {
                    let mut own: HashMap<ChunkDigest, u64> = HashMap::new();
                    for c in m.objects.iter().flat_map(|o| o.chunks.iter()) {
                        chunks.insert(c.digest, (c.len, c.stored));
                        own.insert(c.digest, c.stored);
                    }
                    row.objects = m.objects.len();
                    row.stored_bytes = own.values().sum();
                    row.channel_bytes = m
                        .objects
                        .iter()
                        .filter(|o| o.info.name == CHANNELS_OBJECT)
                        .map(|o| o.bytes)
                        .sum();
                }
                Err(e) => {
                    row.damaged = Some(e.to_string());
                    damaged = Some(e.to_string());
                }
            }
            parts.push(row);
        }
        let unique: u64 = chunks.values().map(|c| c.0).sum();
        let stored: u64 = chunks.values().map(|c| c.1).sum();
        let new: u64 = chunks
            .iter()
            .filter(|(d, _)| prev.as_ref().is_none_or(|p| !p.contains_key(*d)))
            .map(|(_, c)| c.1)
            .sum();
        let cost = RecordedCost::from_app(&s.app);
        let us = |d: Option<std::time::Duration>| d.map(|d| d.as_micros() as u64);
        rows.push(Row {
            id: s.id,
            step: s.step,
            time_unix_ms: s.time_unix_ms,
            time_utc: utc_time(s.time_unix_ms),
            ranks: s.world_size,
            logical_bytes: s.logical_bytes,
            unique_bytes: unique,
            stored_bytes: stored,
            new_bytes: new,
            compression_ratio: ratio(unique, stored),
            dedup_ratio: ratio(s.logical_bytes, unique),
            stall_us: us(cost.stall),
            write_us: us(cost.write),
            flush_us: us(cost.flush),
            finished: meta::is_finished(&s.app),
            damaged,
            status: "committed",
            parts,
        });
        prev = Some(chunks);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let not_committed: Vec<NotCommitted> = reader
        .checkpoint_dirs()?
        .into_iter()
        .filter_map(|d| {
            let status = match d.status {
                CommitStatus::Committed => return None,
                CommitStatus::Uncommitted => "uncommitted (pending or aborted)".to_string(),
                CommitStatus::Damaged(r) => format!("damaged COMMIT: {r}"),
            };
            Some(NotCommitted {
                id: d.id,
                status,
                manifest_ranks: d.manifest_ranks.iter().map(|r| r.0).collect(),
            })
        })
        .collect();
    if args.json {
        let out = serde_json::json!({
            // Lossily: a non-UTF-8 path must not fail (or panic) the report.
            "repo": args.repo.to_string_lossy(),
            "checkpoints": rows,
            "uncommitted": not_committed,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:>6} {:>10} {:<20} {:>5} {:>10} {:>10} {:>10} {:>6} {:>6} {:>9} {:>9} {:>9}",
        "id",
        "step",
        "time (UTC)",
        "ranks",
        "logical",
        "stored",
        "new",
        "compr",
        "dedup",
        "stall",
        "write",
        "flush"
    )?;
    for r in &rows {
        outln!(
            "{:>6} {:>10} {:<20} {:>5} {:>10} {:>10} {:>10} {:>6.2} {:>6.2} {:>9} {:>9} {:>9}{}{}",
            r.id.0,
            r.step,
            r.time_utc,
            r.ranks,
            human(r.logical_bytes),
            human(r.stored_bytes),
            human(r.new_bytes),
            r.compression_ratio,
            r.dedup_ratio,
            micros(r.stall_us),
            micros(r.write_us),
            micros(r.flush_us),
            if r.finished { "  finished" } else { "" },
            r.damaged
                .as_ref()
                .map(|d| format!("  DAMAGED: {d}"))
                .unwrap_or_default()
        )?;
        if args.parts {
            print_parts(&r.parts)?;
        }
    }
    if rows.is_empty() {
        outln!("(no committed checkpoints)")?;
    }
    if !not_committed.is_empty() {
        let list: Vec<String> = not_committed
            .iter()
            .map(|n| {
                let ranks: Vec<String> = n.manifest_ranks.iter().map(u32::to_string).collect();
                format!("{} [{}; rank parts: {}]", n.id.0, n.status, ranks.join(","))
            })
            .collect();
        outln!("uncommitted: {}", list.join(", "))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_parts(parts: &[PartRow]) -> std::io::Result<()> {
    outln!(
        "{:>12} {:>7} {:>10} {:>10} {:>10}  manifest",
        "rank",
        "objects",
        "logical",
        "stored",
        "channels"
    )?;
    for p in parts {
        outln!(
            "{:>12} {:>7} {:>10} {:>10} {:>10}  {:<12}{}",
            p.rank,
            p.objects,
            human(p.logical_bytes),
            human(p.stored_bytes),
            human(p.channel_bytes),
            p.manifest_digest,
            p.damaged
                .as_ref()
                .map(|d| format!("  DAMAGED: {d}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
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

/// A recorded duration in microseconds, e.g. `850 us`, `12.3 ms`, `1.25 s`; `-` if none.
fn micros(us: Option<u64>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us < 1_000 => format!("{us} us"),
        Some(us) if us < 1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        Some(us) => format!("{:.2} s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazarus::levels::{Held, History, LINEAGE_KEY};

    fn copy(seq: u64, subject: u32, primary: bool, lineage: &str) -> Held {
        Held {
            host: "sim0".into(),
            dir: format!("rank-{subject}"),
            subject,
            primary,
            seq,
            step: seq * 2,
            world: 2,
            local: seq,
            app: [(LINEAGE_KEY.to_string(), lineage.to_string())].into(),
        }
    }

    #[test]
    fn copies_of_abandoned_runs_are_counted_apart() {
        let held = vec![
            copy(6, 0, true, "a"),
            copy(6, 1, true, "a"),
            copy(7, 0, true, "a"),
            copy(7, 1, true, "a"),
            copy(7, 1, false, "b"),
        ];
        // The job restored 6 of run a; run b continues from it.
        let h = History::after(None, Some((6, Some("a"))), "b");
        let rows = level_rows(&held, &[], &[(4, 8, 2, 1)], Some(&h));
        assert_eq!((rows[&6].l1.len(), rows[&6].abandoned), (2, 0));
        assert_eq!((rows[&7].l1.len(), rows[&7].abandoned), (0, 2));
        assert_eq!((rows[&7].l2.len(), rows[&4].l4), (1, Some(1)));
        // Without a record every copy counts.
        let rows = level_rows(&held, &[], &[], None);
        assert_eq!((rows[&7].l1.len(), rows[&7].abandoned), (2, 0));
    }
}
