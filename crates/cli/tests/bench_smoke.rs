//! The storage, network and round benchmarks end to end on tiny sizes: they run, pair
//! their measurements and report ratios that are numbers. Not the speed: that is what the
//! benchmarks themselves are for (docs/PERFORMANCE.md), never a timed test.

use std::process::Command;

/// Runs `lazarus` with `args` (and `--dir dir`), asserts success (showing stderr
/// otherwise), returns stdout.
fn run_ok(args: &[&str], dir: Option<&std::path::Path>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lazarus"));
    cmd.args(args);
    if let Some(d) = dir {
        cmd.arg("--dir").arg(d);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bench_checkpoint_pairs_raw_and_full_runs_and_restores_identical_bytes() {
    let scratch = tempfile::tempdir().unwrap();
    // The bench fails when the restore returns other bytes than were checkpointed.
    let out = run_ok(
        &[
            "bench",
            "checkpoint",
            "--size",
            "8MiB",
            "--repeat",
            "2",
            "--json",
        ],
        Some(scratch.path()),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let reps = v["repetitions"].as_array().unwrap();
    assert_eq!(reps.len(), 2, "one entry per paired repetition");
    for r in reps {
        for k in [
            "raw_sequential_s",
            "raw_parallel_prealloc_s",
            "raw_chunk_files_s",
            "raw_chunk_files_writeback_s",
            "full_checkpoint_s",
        ] {
            let s = r[k].as_f64().unwrap();
            assert!(s.is_finite() && s > 0.0, "{k} = {s}");
        }
    }
    for k in ["full_vs_raw_write", "full_vs_raw_sequential"] {
        let x = v[k].as_f64().unwrap();
        assert!(x.is_finite() && x > 0.0, "{k} = {x}");
    }
    // The tracked incremental changed one chunk of eight: the hint skipped the rest and
    // only that chunk's bytes were stored.
    assert!(v["tracked_incremental_hinted_chunks"].as_u64().unwrap() >= 6);
    let frac = v["tracked_incremental_bytes_fraction"].as_f64().unwrap();
    assert!(frac > 0.0 && frac <= 0.25, "bytes fraction {frac}");
    // Every repetition wrote into its own repository, and none is left behind.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn bench_net_reports_both_send_paths() {
    let text = run_ok(
        &[
            "bench",
            "net",
            "--mib",
            "8",
            "--round-trips",
            "200",
            "--repeat",
            "1",
            "--ranks",
            "2",
            "--reps",
            "1",
        ],
        None,
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("throughput 1 MiB msgs"))
        .unwrap_or_else(|| panic!("no throughput line in:\n{text}"));
    assert!(
        line.contains("with send_buf") && line.contains("with send_slice"),
        "{line}"
    );
    // Both limits (raw TCP, raw TCP + frame MAC) and both frame MAC settings, each with
    // its CPU cost per byte.
    assert!(
        line.contains("raw+MAC limit") && line.contains("frame MAC off: Comm/raw TCP"),
        "{line}"
    );
    for row in [
        "raw TCP + frame MAC",
        "Comm send_buf, MAC on",
        "Comm send_buf, MAC off",
    ] {
        let l = text
            .lines()
            .find(|l| l.trim_start().starts_with(row))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{text}"));
        assert!(l.contains("GB/s") && l.contains("ns/B"), "{l}");
    }
    assert!(text.contains("with the frame MAC on") && text.contains("off (target <= 1.50x"));
}

#[test]
fn bench_round_reports_every_world_size() {
    let scratch = tempfile::tempdir().unwrap();
    let text = run_ok(
        &[
            "bench", "round", "--mib", "0", "--ranks", "2,4", "--rounds", "5",
        ],
        Some(scratch.path()),
    );
    for n in ["2", "4"] {
        let row = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(n))
            .unwrap_or_else(|| panic!("no row for {n} ranks in:\n{text}"));
        let ms: f64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(ms.is_finite() && ms > 0.0, "{row}");
    }
}

#[test]
fn bench_files_reports_both_ratios_and_the_tree_cost() {
    let scratch = tempfile::tempdir().unwrap();
    let text = run_ok(
        &[
            "bench",
            "files",
            "--append-mib",
            "2",
            "--random-mib",
            "4",
            "--writes",
            "300",
            "--tree-mib",
            "8",
            "--repeat",
            "1",
        ],
        Some(scratch.path()),
    );
    for what in [
        "appends of",
        "random 4 KiB",
        "changed in whole chunks",
        "restore after",
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line in:\n{text}"));
        if what.starts_with("appends") || what.starts_with("random") {
            let ratio = line
                .rsplit(": ")
                .next()
                .and_then(|r| r.split('x').next())
                .and_then(|r| r.parse::<f64>().ok());
            assert!(ratio.is_some_and(|r| r > 0.0), "{line}");
        }
    }
}

#[test]
fn bench_async_reports_stall_against_memcpy_and_sync_against_raw() {
    let scratch = tempfile::tempdir().unwrap();
    let text = run_ok(
        &[
            "bench", "async", "--ranks", "2", "--mib", "1", "--rounds", "2", "--steps", "6",
            "--every", "2",
        ],
        Some(scratch.path()),
    );
    // Each row's ratio in parentheses is a finite positive number.
    for (row, unit) in [
        ("sync checkpoint stall", "x raw write+fsync"),
        ("async checkpoint stall", "x memcpy"),
        ("async background flush", "flush ="),
        ("incremental 1%", "x memcpy"),
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(row))
            .unwrap_or_else(|| panic!("no {row:?} in:\n{text}"));
        let after = line.rsplit('(').next().unwrap_or_default();
        assert!(after.contains(unit), "{line}");
        let ratio: f64 = after
            .trim_start_matches("raw write+fsync / flush = ")
            .split(['x', ')', ','])
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(ratio.is_finite() && ratio > 0.0, "{line}");
    }
    // The steady-state row: new chunk files against recycled ones, time and CPU, each
    // ratio a finite positive number.
    let line = text
        .lines()
        .find(|l| l.contains("steady state (keep 1)"))
        .unwrap_or_else(|| panic!("no steady-state row in:\n{text}"));
    let ratios: Vec<f64> = line
        .split('(')
        .skip(2)
        .map(|r| r.split('x').next().unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(ratios.len(), 2, "{line}");
    assert!(ratios.iter().all(|r| r.is_finite() && *r > 0.0), "{line}");
    // The step-rate row: steps per second with async and sync checkpoints against none.
    let line = text
        .lines()
        .find(|l| l.contains("step rate"))
        .unwrap_or_else(|| panic!("no step rate row in:\n{text}"));
    for key in ["none ", "async ", "sync "] {
        let rate: f64 = line
            .split(key)
            .nth(1)
            .and_then(|r| r.split("/s").next())
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key:?} rate in {line}"));
        assert!(rate.is_finite() && rate > 0.0, "{line}");
    }
    // The fork() comparison (unix): the parent's stall and the child's write.
    if cfg!(unix) {
        let line = text
            .lines()
            .find(|l| l.contains("fork() capture"))
            .unwrap_or_else(|| panic!("no fork row in:\n{text}"));
        assert!(
            line.contains("copy-on-write") && line.contains("child write+fsync"),
            "{line}"
        );
    }
}

#[test]
fn bench_levels_reports_every_level_and_the_job_rows() {
    let scratch = tempfile::tempdir().unwrap();
    let text = run_ok(
        &[
            "bench", "levels", "--ranks", "2", "--mib", "1", "--reps", "1",
        ],
        Some(scratch.path()),
    );
    // Each level row: a time, its floor and their ratio, all finite; the time is not
    // zero (the floor, printed to 0.1 ms, may be on a fast machine).
    for row in [
        "L1 node-local",
        "L1+L2 partner copy",
        "L1+L3 parity",
        "L4 durable",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no {row:?} in:\n{text}"));
        let numbers: Vec<f64> = line
            .split_whitespace()
            .rev()
            .take(3)
            .map(|x| x.parse().unwrap_or_else(|e| panic!("{line}: {e}")))
            .collect();
        assert!(numbers.iter().all(|x| x.is_finite() && *x >= 0.0), "{line}");
        assert!(numbers[2] > 0.0, "{line}");
    }
    // The physical limit of L2 (raw loopback TCP) and the most an implementation could
    // reach here: positive, finite ratios.
    let line = text
        .lines()
        .find(|l| l.starts_with("the part over raw loopback TCP: "))
        .unwrap_or_else(|| panic!("no raw TCP line in:\n{text}"));
    assert!(line.contains("over the communicator"), "{line}");
    let line = text
        .lines()
        .find(|l| l.starts_with("at most possible here: L4 floor / L1+L2 floor = "))
        .unwrap_or_else(|| panic!("no ceiling line in:\n{text}"));
    let ceiling: f64 = line
        .trim_start_matches("at most possible here: L4 floor / L1+L2 floor = ")
        .split('x')
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no ratio in {line}"));
    assert!(ceiling.is_finite() && ceiling > 0.0, "{line}");
    // The Job rows: each names its ratio against its floor (finite; a stall far below
    // its floor may print as 0.00).
    for (row, ratio_before) in [
        ("Job L1+L2 asynchronous checkpoint", "x),"),
        ("Job L1+L2 asynchronous, 1 %", "x the memcpy"),
        ("Job L1+L2+L4 over a staging budget of 256 KiB", "x)"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no {row:?} in:\n{text}"));
        let ratio: f64 = line
            .split(ratio_before)
            .next()
            .and_then(|l| l.rsplit(['(', ' ']).next())
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("no ratio in {line}"));
        assert!(ratio.is_finite() && ratio >= 0.0, "{line}");
    }
}
