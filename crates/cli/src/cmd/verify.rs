//! `lazarus verify REPO`: re-hashes every COMMIT, manifest and chunk of every committed
//! checkpoint. Exit 0 when sound; exit 1 naming the first bad file and the checkpoints it
//! breaks (and every other problem after it); exit 2 when the repository cannot be read.
//!
//! Global consistency is checked explicitly for every committed checkpoint: a manifest
//! for each rank `0..world_size` is present (a missing one is reported as
//! `checkpoint <id> rank <r>: manifest missing`), each matches the digest in COMMIT (done by
//! the store's verify), and no `rank-<r>.manifest` exists for `r >= world_size`. Decision:
//! such a stray manifest fails verification (exit 1, kind `inconsistent`) because something
//! wrote into a committed checkpoint, but it does not make the checkpoint unrestorable
//! (restore reads only the ranks COMMIT lists), so it breaks no checkpoint. Directories
//! without COMMIT (pending or aborted) are listed as a note, never as a failure.

use super::CmdResult;
use lazarus::format::CheckpointId;
use lazarus::store::{CommitStatus, Problem, RepoReader, VerifyReport};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `lazarus verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The checkpoint repository.
    pub repo: PathBuf,
    /// Print the full report as JSON (the repository, `--level l4`, only: refused with
    /// --level l1/l2/l3).
    #[arg(long)]
    pub json: bool,
    /// Which level of a multi-level job (docs/LEVELS.md): `l4` (the repository, the
    /// default), `l1` (every rank's node-local repository), `l2` (every partner copy) or
    /// `l3` (every parity shard repository, then every shard re-encoded from its
    /// members' L1 copies: `agrees`, `unchecked` when a copy is gone, or FAILED), found
    /// under --l1-dir.
    #[arg(long, value_name = "l1|l2|l3|l4", default_value = "l4")]
    pub level: String,
    /// With --level l1/l2/l3 (refused otherwise): the node-local root [default: the
    /// job's default, /dev/shm/lazarus-<hash of REPO>].
    #[arg(long, value_name = "DIR")]
    pub l1_dir: Option<PathBuf>,
}

/// The node-local root of the job whose repository is `repo`.
pub(crate) fn l1_root(repo: &std::path::Path, given: Option<&std::path::Path>) -> PathBuf {
    given
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| lazarus::levels::default_root(&lazarus::store::repo_location(repo)))
}

/// Re-encodes every parity shard under `root` from its members' L1 copies
/// (`lazarus_levels::audit_parity`): `agrees:` or `unchecked:` (a member's copy is gone)
/// on stdout, `FAILED` on stderr. Returns the number that differ.
fn audit_parity(root: &std::path::Path) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    use lazarus::levels::ParityAudit;
    let mut shards = lazarus::levels::scan_parity(root)?;
    shards.sort_by(|a, b| (&a.host, &a.dir, a.local).cmp(&(&b.host, &b.dir, b.local)));
    let mut bad = 0;
    for p in &shards {
        let what = format!(
            "{}/{} checkpoint {} (shard {} of checkpoint {})",
            p.host, p.dir, p.local, p.shard, p.seq
        );
        match lazarus::levels::audit_parity(root, p) {
            ParityAudit::Agrees => outln!(
                "agrees: {what}: the parity of its {} members' L1 copies",
                p.members.len()
            )?,
            ParityAudit::Unchecked(why) => outln!("unchecked: {what}: {why}")?,
            ParityAudit::Differs(why) => {
                bad += 1;
                errln!("lazarus verify: FAILED: {what}: {why}");
            }
        }
    }
    Ok(bad)
}

/// Why each committed checkpoint of the parity repository `r` cannot serve a rebuild
/// (`lazarus_levels::parity_record_problem`); empty when all can.
fn unusable_parity(r: &std::path::Path) -> Result<Vec<String>, lazarus::store::StoreError> {
    Ok(RepoReader::open(r)?
        .committed()?
        .iter()
        .filter_map(|c| {
            lazarus::levels::parity_record_problem(r, c)
                .map(|why| format!("checkpoint {}: {why}", c.id))
        })
        .collect())
}

/// `lazarus verify --level l1|l2|l3`: every level repository under the node-local root
/// whose name starts with `prefix`, each verified like a repository (every chunk
/// re-hashed; for L3 the parity shards, then each shard re-encoded from its members'
/// L1 copies).
fn verify_level(args: &Args, prefix: &str) -> CmdResult {
    let root = l1_root(&args.repo, args.l1_dir.as_deref());
    let mut bad = 0usize;
    let mut seen = 0usize;
    let mut hosts: Vec<_> = match std::fs::read_dir(&root) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(e) => return Err(format!("lazarus verify: {}: {e}", root.display()).into()),
    };
    hosts.sort();
    for host in hosts {
        // A host directory that cannot be listed is a failure, never skipped in silence
        // (its ranks' copies went unmentioned and verify said ok).
        let listed = std::fs::read_dir(&host).and_then(|rd| {
            rd.map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<Vec<_>>>()
        });
        let mut repos = match listed {
            Ok(repos) => repos,
            Err(e) if !host.is_dir() && e.kind() == std::io::ErrorKind::NotADirectory => continue,
            Err(e) => {
                bad += 1;
                errln!("lazarus verify: FAILED: {}: {e}", host.display());
                continue;
            }
        };
        repos.sort();
        for r in repos {
            let name = r
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if !name.starts_with(prefix) {
                continue;
            }
            seen += 1;
            let report = RepoReader::open(&r).and_then(|rd| rd.verify(&|_, _| {}));
            // A parity shard whose bytes verify but whose COMMIT record no rebuild can
            // use (restore skips it) fails too.
            if prefix == "parity-" && report.is_ok() {
                let why = match unusable_parity(&r) {
                    Ok(problems) if problems.is_empty() => None,
                    Ok(problems) => Some(format!(
                        "parity record unusable for a rebuild: {}",
                        problems.join("; ")
                    )),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(why) = why {
                    bad += 1;
                    errln!("lazarus verify: FAILED: {}: {why}", r.display());
                    continue;
                }
            }
            match report {
                Ok(rep) if rep.problems.is_empty() => outln!(
                    "ok: {}: {} checkpoint(s), {} chunk(s)",
                    r.display(),
                    rep.checkpoints.len(),
                    rep.chunks_checked
                )?,
                Ok(rep) => {
                    bad += 1;
                    errln!(
                        "lazarus verify: FAILED: {}: first bad file: {}",
                        r.display(),
                        rep.problems.first().map(problem_text).unwrap_or_default()
                    );
                }
                Err(e) => {
                    bad += 1;
                    errln!("lazarus verify: FAILED: {}: {e}", r.display());
                }
            }
        }
    }
    if seen == 0 {
        outln!("no {} repositories under {}", args.level, root.display())?;
    }
    if prefix == "parity-" {
        bad += audit_parity(&root)?;
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs `lazarus verify`.
pub fn main(args: Args) -> CmdResult {
    // No flag is accepted and ignored: the level reports are text only, and the
    // repository has no node-local root.
    let node_local = matches!(args.level.as_str(), "l1" | "l2" | "l3");
    if !node_local && args.level != "l4" {
        return Err(format!(
            "lazarus verify: --level {:?}: expected l1, l2, l3 or l4",
            args.level
        )
        .into());
    }
    if node_local && args.json {
        return Err(format!(
            "lazarus verify: --json is not supported with --level {} (its report is text \
             only); drop --json",
            args.level
        )
        .into());
    }
    if !node_local && args.l1_dir.is_some() {
        return Err(
            "lazarus verify: --l1-dir applies only with --level l1, l2 or l3 (the repository, \
             --level l4, has no node-local root)"
                .into(),
        );
    }
    match args.level.as_str() {
        "l4" => {}
        "l1" => return verify_level(&args, "rank-"),
        "l2" => return verify_level(&args, "partner-of-"),
        // l3 (any other level was refused above).
        _ => return verify_level(&args, "parity-"),
    }
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
    let mut report = reader.verify(&|done, total| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let uncommitted = check_ranks(&reader, &mut report)?;
    if !uncommitted.is_empty() && !args.json {
        outln!(
            "note: {} uncommitted checkpoint dir(s) (pending or aborted, never restored): {}",
            uncommitted.len(),
            ids_text(&uncommitted)
        )?;
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    }
    let Some(first) = report.problems.first() else {
        if !args.json {
            outln!(
                "ok: {} committed checkpoint(s), {} chunk(s), {} verified",
                report.checkpoints.len(),
                report.chunks_checked,
                super::inspect::human(report.bytes_checked)
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let ids = |v: &[CheckpointId]| {
        if v.is_empty() {
            "none (restore unaffected)".to_string()
        } else {
            ids_text(v)
        }
    };
    errln!(
        "lazarus verify: FAILED: first bad file: {}; it breaks checkpoint(s) {}",
        problem_text(first),
        ids(&first.breaks)
    );
    for p in report.problems.iter().skip(1) {
        errln!(
            "  also bad: {} (breaks {})",
            problem_text(p),
            ids(&p.breaks)
        );
    }
    errln!(
        "intact checkpoints: {}",
        if report.intact.is_empty() {
            "none".to_string()
        } else {
            ids_text(&report.intact)
        }
    );
    Ok(ExitCode::from(1))
}

fn ids_text(v: &[CheckpointId]) -> String {
    v.iter()
        .map(|i| i.0.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Adds the per-rank consistency problems of committed checkpoints to `report` (a missing
/// manifest replaces the store's generic read error for the same file, so each file is
/// named once) and returns the ids of directories without COMMIT.
fn check_ranks(
    reader: &RepoReader,
    report: &mut VerifyReport,
) -> Result<Vec<CheckpointId>, lazarus::store::StoreError> {
    let mut uncommitted = Vec::new();
    for d in reader.checkpoint_dirs()? {
        let w = match (&d.status, d.world_size) {
            (CommitStatus::Committed, Some(w)) => w,
            (CommitStatus::Uncommitted, _) => {
                uncommitted.push(d.id);
                continue;
            }
            // A damaged COMMIT is already a problem from the store's verify.
            _ => continue,
        };
        for r in 0..w {
            // Format 1.1: a manifest inline in COMMIT needs no file.
            if d.manifest_ranks
                .iter()
                .chain(&d.inline_ranks)
                .any(|m| m.0 == r)
            {
                continue;
            }
            let p = Problem {
                path: reader.manifest_location(d.id, lazarus::format::Rank(r)),
                kind: "missing".into(),
                detail: format!(
                    "checkpoint {} rank {r}: manifest missing (COMMIT lists world size {w})",
                    d.id
                ),
                breaks: vec![d.id],
            };
            match report.problems.iter_mut().find(|q| q.path == p.path) {
                Some(q) => *q = p,
                None => report.problems.push(p),
            }
            report.intact.retain(|i| *i != d.id);
        }
        for m in d.manifest_ranks.iter().filter(|m| m.0 >= w) {
            report.problems.push(Problem {
                path: reader.manifest_location(d.id, *m),
                kind: "inconsistent".into(),
                detail: format!(
                    "checkpoint {} rank {}: stray manifest beyond world size {w} in COMMIT",
                    d.id, m.0
                ),
                breaks: Vec::new(),
            });
        }
    }
    Ok(uncommitted)
}

/// The problem with its file named once: the store's message usually names it already.
fn problem_text(p: &lazarus::store::Problem) -> String {
    let path = p.path.display().to_string();
    if p.detail.contains(&path) {
        p.detail.clone()
    } else {
        format!("{path}: {}", p.detail)
    }
}
