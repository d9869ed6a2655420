//! `lazarus bench files`: managed files (issue #17) against `std::fs::File` doing the same
//! in the same run — appends and random 4 KiB overwrites of checkpointed data, each ended
//! by `sync_all` — and the cost a checkpoint pays for a large managed tree of which a
//! small part changed (clustered: whole chunks; scattered: 4 KiB pages all over), next to
//! raw write+fsync of the changed bytes, plus the restore after such a change.

use super::{load_average, median, Scratch};
use crate::cmd::CmdResult;
use lazarus::{Checkpoint, Job};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

/// Flags of `lazarus bench files`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// MiB appended per run (in `--line`-byte appends).
    #[arg(long, default_value_t = 64)]
    append_mib: u64,
    /// Bytes per append.
    #[arg(long, default_value_t = 100)]
    line: usize,
    /// MiB of the file the random 4 KiB writes go to.
    #[arg(long, default_value_t = 256)]
    random_mib: u64,
    /// Random 4 KiB writes per run.
    #[arg(long, default_value_t = 20000)]
    writes: usize,
    /// MiB of managed files for the checkpoint-cost measurement (4 files).
    #[arg(long, default_value_t = 1024)]
    tree_mib: u64,
    /// Percent of the tree changed before the incremental checkpoint.
    #[arg(long, default_value_t = 1.0)]
    changed_pct: f64,
    /// Paired repetitions (medians reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Directory for the scratch files [default: the system temp dir].
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

#[derive(Checkpoint)]
struct Nothing {
    x: u64,
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn open_job(root: &Path) -> Result<Job, Box<dyn std::error::Error>> {
    Ok(Job::builder()
        .repo(root.join("repo"))
        .files(root.join("files"))
        .every_steps(u64::MAX)
        .keep(2)
        .open()?)
}

/// Seconds for `line`-byte appends adding up to `mib` MiB and a final sync: managed, std
/// (in the order `std_first` says: repetitions alternate, so neither always runs on a
/// warmer or a busier disk).
fn appends(
    root: &Path,
    mib: u64,
    line: usize,
    std_first: bool,
) -> Result<Pair, Box<dyn std::error::Error>> {
    let mut job = open_job(root)?;
    job.restore_or_init(|| Nothing { x: 0 })?;
    let files = job.files()?.clone();
    let n = (mib << 20) as usize / line.max(1);
    let buf = vec![b'x'; line.max(1)];
    let managed = || -> Result<(f64, f64), Box<dyn std::error::Error>> {
        let t = Instant::now();
        let mut f = files.append("log")?;
        for _ in 0..n {
            f.write_all(&buf)?;
        }
        let writes = secs(t);
        f.sync_all()?;
        Ok((secs(t), writes))
    };
    let plain = || -> Result<(f64, f64), Box<dyn std::error::Error>> {
        let t = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("std-log"))?;
        for _ in 0..n {
            f.write_all(&buf)?;
        }
        let writes = secs(t);
        f.sync_all()?;
        Ok((secs(t), writes))
    };
    let (m, p) = if std_first {
        let p = plain()?;
        (managed()?, p)
    } else {
        let m = managed()?;
        (m, plain()?)
    };
    Ok(Pair {
        managed: m.0,
        plain: p.0,
        managed_writes: m.1,
        plain_writes: p.1,
    })
}

/// Paired timings: with the final `sync_all`, and of the writes alone.
struct Pair {
    managed: f64,
    plain: f64,
    managed_writes: f64,
    plain_writes: f64,
}

/// Seconds for `writes` random 4 KiB overwrites of a checkpointed `mib` MiB file and a
/// final sync: managed, std (same offsets).
fn random(
    root: &Path,
    mib: u64,
    writes: usize,
    seed: u64,
) -> Result<Pair, Box<dyn std::error::Error>> {
    let mut job = open_job(root)?;
    let state = job.restore_or_init(|| Nothing { x: 0 })?;
    let files = job.files()?.clone();
    let size = mib << 20;
    let block = vec![7u8; 1 << 20];
    let f = files.create("field")?;
    let g = std::fs::File::create(root.join("std-field"))?;
    for i in 0..mib {
        f.write_all_at(&block, i << 20)?;
        g.write_all_at(&block, i << 20)?;
    }
    f.sync_all()?;
    g.sync_all()?;
    // The writes below overwrite checkpointed bytes: the journaled path.
    job.checkpoint_now(&state)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let offs: Vec<u64> = (0..writes)
        .map(|_| rng.gen_range(0..size / 4096) * 4096)
        .collect();
    let page = vec![3u8; 4096];
    let run = |w: &dyn Fn(u64) -> std::io::Result<()>,
               sync: &dyn Fn() -> std::io::Result<()>|
     -> std::io::Result<(f64, f64)> {
        let t = Instant::now();
        for o in &offs {
            w(*o)?;
        }
        let writes = secs(t);
        sync()?;
        Ok((secs(t), writes))
    };
    let managed_run = || run(&|o| f.write_all_at(&page, o), &|| f.sync_all());
    let plain_run = || run(&|o| g.write_all_at(&page, o), &|| g.sync_all());
    // Alternate the order between repetitions, as for the appends.
    let ((managed, managed_writes), (plain, plain_writes)) = if seed % 2 == 1 {
        let p = plain_run()?;
        (managed_run()?, p)
    } else {
        let m = managed_run()?;
        (m, plain_run()?)
    };
    Ok(Pair {
        managed,
        plain,
        managed_writes,
        plain_writes,
    })
}

struct TreeCost {
    full: f64,
    unchanged: f64,
    clustered: f64,
    scattered: f64,
    raw_changed: f64,
    restore: f64,
    fetched: u64,
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}

/// Checkpoint times for a `mib` MiB managed tree: first (full), unchanged, after `pct`
/// percent changed in whole 1 MiB chunks, after the same number of bytes changed in
/// scattered 4 KiB pages; raw write+fsync of that many bytes; restore after a change.
fn tree(
    root: &Path,
    mib: u64,
    pct: f64,
    seed: u64,
) -> Result<(TreeCost, u64), Box<dyn std::error::Error>> {
    let mut job = open_job(root)?;
    let state = job.restore_or_init(|| Nothing { x: 0 })?;
    let files = job.files()?.clone();
    let per = (mib / 4).max(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut block = vec![0u8; 1 << 20];
    let handles = (0..4)
        .map(|i| files.create(format!("part-{i}.bin")))
        .collect::<Result<Vec<_>, _>>()?;
    for h in &handles {
        for k in 0..per {
            rng.fill(&mut block[..]);
            h.write_all_at(&block, k << 20)?;
        }
    }
    let t = Instant::now();
    job.checkpoint_now(&state)?;
    let full = secs(t);
    let t = Instant::now();
    job.checkpoint_now(&state)?;
    let unchanged = secs(t);
    let total = 4 * per;
    let changed = ((total as f64 * pct / 100.0).round() as u64).max(1);
    let chunks = root.join("repo").join("chunks");
    let before = dir_bytes(&chunks);
    for _ in 0..changed {
        let h = &handles[rng.gen_range(0..4)];
        rng.fill(&mut block[..]);
        h.write_all_at(&block, rng.gen_range(0..per) << 20)?;
    }
    let t = Instant::now();
    job.checkpoint_now(&state)?;
    let clustered = secs(t);
    let stored = dir_bytes(&chunks).saturating_sub(before);
    let mut page = vec![0u8; 4096];
    for _ in 0..(changed << 20) / 4096 {
        let h = &handles[rng.gen_range(0..4)];
        rng.fill(&mut page[..]);
        h.write_all_at(&page, rng.gen_range(0..(per << 20) / 4096) * 4096)?;
    }
    let t = Instant::now();
    job.checkpoint_now(&state)?;
    let scattered = secs(t);
    // The floor for the clustered case: writing and fsyncing the changed bytes once.
    let t = Instant::now();
    let mut raw = std::fs::File::create(root.join("raw"))?;
    for _ in 0..changed {
        raw.write_all(&block)?;
    }
    raw.sync_all()?;
    let raw_changed = secs(t);
    // Restore after a clustered change since the newest checkpoint (a crash).
    for _ in 0..changed {
        let h = &handles[rng.gen_range(0..4)];
        rng.fill(&mut block[..]);
        h.write_all_at(&block, rng.gen_range(0..per) << 20)?;
    }
    drop(handles);
    drop(files);
    drop(job);
    let t = Instant::now();
    let mut job = open_job(root)?;
    job.restore_or_init(|| Nothing { x: 0 })?;
    let restore = secs(t);
    drop(job);
    Ok((
        TreeCost {
            full,
            unchanged,
            clustered,
            scattered,
            raw_changed,
            restore,
            fetched: changed << 20,
        },
        stored,
    ))
}

/// Prints medians of paired runs: with the final sync (the target) and writes alone (the
/// API's own cost, less sensitive to the disk's mood).
fn report(what: &str, bytes: f64, pairs: &[Pair], target: &str) -> std::io::Result<()> {
    let med = |f: fn(&Pair) -> f64| median(&pairs.iter().map(f).collect::<Vec<_>>());
    let mb = |s: f64| bytes / s / 1e6;
    let (m, p) = (med(|x| x.managed), med(|x| x.plain));
    let (mw, pw) = (med(|x| x.managed_writes), med(|x| x.plain_writes));
    outln!(
        "{what} + sync_all: managed {:.0} MB/s, std::fs::File {:.0} MB/s: {:.2}x (target >= {target})",
        mb(m),
        mb(p),
        p / m
    )?;
    outln!(
        "  writes alone (no sync): managed {:.0} MB/s, std::fs::File {:.0} MB/s: {:.2}x",
        mb(mw),
        mb(pw),
        pw / mw
    )?;
    Ok(())
}

fn scratch(base: &Option<std::path::PathBuf>, name: &str) -> Result<Scratch, std::io::Error> {
    let parent = base.clone().unwrap_or_else(std::env::temp_dir);
    let p = parent.join(format!("lazarus-bench-files-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p)?;
    Ok(Scratch(p))
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(l) = load_average() {
        outln!("load average: {l}")?;
    }
    let (mut app, mut rnd) = (Vec::new(), Vec::new());
    for i in 0..a.repeat.max(1) {
        let s = scratch(&a.dir, &format!("append-{i}"))?;
        app.push(appends(s.path(), a.append_mib, a.line, i % 2 == 1)?);
        let s = scratch(&a.dir, &format!("random-{i}"))?;
        rnd.push(random(s.path(), a.random_mib, a.writes, i as u64)?);
    }
    let abytes = (a.append_mib << 20) as f64;
    let rbytes = (a.writes * 4096) as f64;
    report(
        &format!("appends of {} B, {} MiB", a.line, a.append_mib),
        abytes,
        &app,
        "0.9x",
    )?;
    report(
        &format!(
            "random 4 KiB overwrites x{} of a checkpointed {} MiB file",
            a.writes, a.random_mib
        ),
        rbytes,
        &rnd,
        "0.5x",
    )?;
    if a.tree_mib > 0 {
        let s = scratch(&a.dir, "tree")?;
        let (c, stored) = tree(s.path(), a.tree_mib, a.changed_pct, 42)?;
        outln!(
            "checkpoint of {} MiB of managed files: first {:.3} s, unchanged {:.3} s",
            a.tree_mib,
            c.full,
            c.unchanged
        )?;
        outln!(
            "  {}% changed in whole chunks: {:.3} s, {:.1} MiB newly stored (raw write+fsync of the changed bytes: {:.3} s)",
            a.changed_pct,
            c.clustered,
            stored as f64 / (1 << 20) as f64,
            c.raw_changed
        )?;
        outln!(
            "  the same bytes changed in scattered 4 KiB pages: {:.3} s (every touched 1 MiB chunk is stored again)",
            c.scattered
        )?;
        outln!(
            "restore after a crash with {:.1} MiB changed since the newest checkpoint: {:.3} s (verification reads the tree once)",
            c.fetched as f64 / (1 << 20) as f64,
            c.restore
        )?;
    }
    Ok(())
}

/// Runs the benchmark.
pub fn main(a: Args) -> CmdResult {
    match run(&a) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(format!("bench files: {e}").into()),
    }
}
