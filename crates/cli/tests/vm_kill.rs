//! `lazarus vm run` under real `kill -9` at seeded random moments, for each C test program:
//! the resumed run's stdout, stderr and files must be byte-identical to an uninterrupted
//! run without checkpoints. Each resume picks a runtime at random (wasmi or wasmtime), so
//! the trials also cross runtimes mid-run. 24 trials in CI (seed printed,
//! `LAZARUS_TEST_SEED` replays); `kill9_soak` (ignored) runs 200.

mod vm_common;

use rand::{Rng, SeedableRng};
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vm_common::*;

/// A test program and how to run it.
struct Case {
    prog: &'static str,
    args: &'static [&'static str],
    /// Steps between checkpoints for the step-based trials.
    steps: u64,
}

const CASES: &[Case] = &[
    Case {
        prog: "loop",
        args: &["8000000"],
        steps: 700_000,
    },
    Case {
        prog: "files",
        args: &["500"],
        steps: 300_000,
    },
    Case {
        prog: "recurse",
        args: &["3000", "12"],
        steps: 400_000,
    },
    Case {
        prog: "floats",
        args: &["30000"],
        steps: 20_000,
    },
];

struct Outcome {
    stdout: String,
    stderr: String,
    files: Vec<(String, String)>,
}

fn spawn(
    wasm: &Path,
    case: &Case,
    work: &Path,
    repo: Option<&Path>,
    runtime: &str,
    every: &str,
) -> Child {
    command(wasm, case, work, repo, runtime, every)
        .spawn()
        .expect("spawning lazarus")
}

/// The `lazarus vm run` of `case` in `work`, its stdout and stderr files opened at offset
/// 0 without truncation (as a restarted process inherits them here).
fn command(
    wasm: &Path,
    case: &Case,
    work: &Path,
    repo: Option<&Path>,
    runtime: &str,
    every: &str,
) -> Command {
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(work.join("stdout"))
        .unwrap();
    let err = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(work.join("stderr"))
        .unwrap();
    let mut c = lazarus();
    c.args(["vm", "run", "--seed", "42", "--runtime", runtime]);
    c.arg("--dir")
        .arg(format!("{}::.", work.join("data").display()));
    match repo {
        Some(r) => {
            c.arg("--repo").arg(r).args(["--every", every]);
        }
        None => {
            c.arg("--no-checkpoint");
        }
    }
    c.arg(wasm).arg("--").args(case.args);
    c.stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .stdin(Stdio::null());
    c
}

fn outcome(work: &Path) -> Outcome {
    let mut files = Vec::new();
    if let Ok(rd) = std::fs::read_dir(work.join("data")) {
        for e in rd.flatten() {
            files.push((
                e.file_name().to_string_lossy().into_owned(),
                read(&e.path()),
            ));
        }
    }
    files.sort();
    Outcome {
        stdout: read(&work.join("stdout")),
        stderr: program_lines(&std::fs::read(work.join("stderr")).unwrap_or_default()),
        files,
    }
}

fn fresh_work(root: &Path, name: &str) -> std::path::PathBuf {
    let w = root.join(name);
    std::fs::create_dir_all(w.join("data")).unwrap();
    // A pre-existing file the program appends to (its earlier content must survive).
    std::fs::write(w.join("data/log.txt"), "existing line\n").unwrap();
    File::create(w.join("stdout")).unwrap();
    File::create(w.join("stderr")).unwrap();
    w
}

fn reference(case: &Case, wasm: &Path, root: &Path) -> (Outcome, Duration) {
    let w = fresh_work(root, &format!("ref-{}", case.prog));
    let t = Instant::now();
    let st = spawn(wasm, case, &w, None, "wasmi", "").wait().unwrap();
    assert!(
        st.success(),
        "{}: reference run failed: {st}\n{}",
        case.prog,
        read(&w.join("stderr"))
    );
    (outcome(&w), t.elapsed())
}

fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn trials(per_case: usize, test: &str) {
    if !toolchain(test) {
        return;
    }
    let base = seed(test);
    let root = tempfile::tempdir().unwrap();
    let rts = runtimes();
    // Kills that landed, and those that left a committed checkpoint behind: the next run
    // had to resume from it (a `COMMIT` file in the repository's checkpoints/<id>/).
    let (mut landed, mut resumable) = (0, 0);
    let committed = |repo: &Path| {
        std::fs::read_dir(repo.join("checkpoints")).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.path().join("COMMIT").exists())
        })
    };
    for (ci, case) in CASES.iter().enumerate() {
        let wasm = program(case.prog);
        let (want, took) = reference(case, &wasm, root.path());
        for t in 0..per_case {
            let s = base.wrapping_add((ci * 1000 + t) as u64);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s);
            let every = if rng.gen_bool(0.5) {
                case.steps.to_string()
            } else {
                "150ms".to_string()
            };
            let kills = rng.gen_range(1..=3);
            let w = fresh_work(root.path(), &format!("{}-{t}", case.prog));
            let repo = w.join("repo");
            let mut log = Vec::new();
            let mut done = false;
            for k in 0..=kills {
                let rt = rts[rng.gen_range(0..rts.len())];
                let mut child = spawn(&wasm, case, &w, Some(&repo), rt, &every);
                if k == kills {
                    let st = wait_until(&mut child, Instant::now() + Duration::from_secs(600))
                        .unwrap_or_else(|| panic!("{}: seed {s}: final run hung", case.prog));
                    assert!(
                        st.success(),
                        "{}: seed {s}: final run failed ({st}) after {log:?}:\n{}",
                        case.prog,
                        read(&w.join("stderr"))
                    );
                    done = true;
                    log.push(format!("{rt}: ran to the end"));
                    break;
                }
                let after = took.mul_f64(rng.gen_range(0.02..1.1));
                match wait_until(&mut child, Instant::now() + after) {
                    Some(st) => {
                        assert!(
                            st.success(),
                            "{}: seed {s}: run failed ({st}) after {log:?}:\n{}",
                            case.prog,
                            read(&w.join("stderr"))
                        );
                        log.push(format!("{rt}: finished before the kill at {after:?}"));
                        done = true;
                        break;
                    }
                    None => {
                        child.kill().unwrap();
                        let _ = child.wait();
                        log.push(format!("{rt}: killed after {after:?}"));
                        landed += 1;
                        if committed(&repo) {
                            resumable += 1;
                        }
                    }
                }
            }
            assert!(done);
            let got = outcome(&w);
            let ctx = format!("{}: seed {s} (every {every}): {log:?}", case.prog);
            assert_eq!(got.stdout, want.stdout, "{ctx}: stdout differs");
            assert_eq!(got.stderr, want.stderr, "{ctx}: stderr differs");
            assert_eq!(got.files, want.files, "{ctx}: files differ");
            eprintln!("{ctx}: identical");
        }
    }
    eprintln!("{test}: {landed} kills landed, {resumable} after a committed checkpoint");
    assert!(
        landed > 0,
        "{test}: no kill landed (every run finished first)"
    );
    assert!(
        resumable > 0,
        "{test}: no kill left a committed checkpoint: no run resumed"
    );
}

/// Running the command again after the program finished runs nothing and says so on
/// stderr; with the output files opened at offset 0 (as a restarted process inherits
/// them here), that note overwrote the program's last stderr line (found by the seeded
/// trials: a kill that landed after the final checkpoint).
#[test]
fn rerun_of_a_finished_program_keeps_its_output() {
    if !toolchain("rerun_of_a_finished_program_keeps_its_output") {
        return;
    }
    let case = &CASES[1];
    assert_eq!(case.prog, "files");
    let wasm = program(case.prog);
    let root = tempfile::tempdir().unwrap();
    let w = fresh_work(root.path(), "rerun");
    let repo = w.join("repo");
    let st = spawn(&wasm, case, &w, Some(&repo), "wasmi", "150ms")
        .wait()
        .unwrap();
    assert!(st.success(), "{}", read(&w.join("stderr")));
    let first = outcome(&w);
    assert!(
        first.stderr.contains("files: stderr line"),
        "{}",
        first.stderr
    );
    let st = spawn(&wasm, case, &w, Some(&repo), "wasmtime", "150ms")
        .wait()
        .unwrap();
    assert!(st.success(), "{}", read(&w.join("stderr")));
    let again = outcome(&w);
    assert_eq!(again.stdout, first.stdout);
    assert_eq!(again.stderr, first.stderr);
    assert_eq!(again.files, first.files);
    // The note is there too, after the program's output.
    let raw = read(&w.join("stderr"));
    assert!(
        raw.ends_with("(use a new --repo to run it again)\n"),
        "{raw}"
    );
}

/// The newest committed checkpoint id of a VM repository (0: none yet).
fn newest_commit(repo: &Path) -> u64 {
    std::fs::read_dir(repo.join("checkpoints"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("COMMIT").exists())
                .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Found by the seeded trials (seed 1796528977562513760): a restarted `vm run` logged the
/// takeover of the killed run's lock before it put the program's stderr back at the
/// checkpoint's offset, so the line landed at offset 0 of the inherited file, over the
/// program's first stderr bytes. Lazarus's own log lines are now held until the
/// program's streams are positioned, then written there, whole.
#[test]
fn a_log_line_before_the_resume_does_not_overwrite_the_programs_stderr() {
    if !toolchain("a_log_line_before_the_resume_does_not_overwrite_the_programs_stderr") {
        return;
    }
    let case = &Case {
        prog: "files",
        args: &["20000"],
        steps: 0,
    };
    let wasm = program(case.prog);
    let root = tempfile::tempdir().unwrap();
    let (want, _) = reference(case, &wasm, root.path());
    let w = fresh_work(root.path(), "log-before-resume");
    let repo = w.join("repo");
    let mut child = spawn(&wasm, case, &w, Some(&repo), "wasmi", "100ms");
    // Kill once a checkpoint has committed after the program wrote stderr lines, so the
    // resumed program's stderr offset is past bytes a stray line could overwrite.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut after = None;
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed: {}",
            read(&w.join("stderr"))
        );
        assert!(
            Instant::now() < deadline,
            "no checkpoint after stderr lines"
        );
        let newest = newest_commit(&repo);
        match after {
            None if read(&w.join("stderr")).lines().count() >= 3 => after = Some(newest),
            Some(a) if newest > a => break,
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let st = command(&wasm, case, &w, Some(&repo), "wasmi", "100ms")
        .env("RUST_LOG", "info")
        .status()
        .unwrap();
    assert!(st.success(), "{}", read(&w.join("stderr")));
    let got = outcome(&w);
    assert_eq!(got.stdout, want.stdout, "stdout differs");
    assert_eq!(got.stderr, want.stderr, "the program's stderr differs");
    assert_eq!(got.files, want.files, "files differ");
    let raw = read(&w.join("stderr"));
    assert!(
        raw.lines()
            .any(|l| l.trim_start().starts_with("INFO ") && l.contains("taking over stale lock")),
        "the takeover line is in the stderr file, whole: {raw}"
    );
}

#[test]
fn kill9_at_random_moments_resumes_byte_identical() {
    trials(6, "kill9_at_random_moments_resumes_byte_identical");
}

#[test]
#[ignore = "soak: 200 trials"]
fn kill9_soak() {
    trials(50, "kill9_soak");
}
