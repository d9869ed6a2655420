//! The standalone Python reader (tools/lazarus_reader.py, numpy only, written from
//! docs/FORMAT.md) must decode what the Rust writer writes, bit for bit: DVecs over several
//! ranks with skewed block boundaries, plain per-rank objects, codec none and zstd with
//! byte-shuffle, and the committed golden repository. Also runs the reader's own unittest.
//!
//! Needs `python3` with `numpy` and `zstandard`. When they are missing the test prints a
//! note and passes, unless the environment variable `CI` is set: then it fails, so CI
//! cannot silently skip it (.ci/run installs both).

use lazarus::dist::Distribution;
use lazarus::format::{LoadedObject, ObjectSpec, Rank};
use lazarus::store::{Codec, CommitMeta, RepoOptions, Repository};
use lazarus::{Checkpoint, DVec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn reader() -> PathBuf {
    root().join("tools/lazarus_reader.py")
}

/// True when python3 with numpy and zstandard is usable; otherwise skips (or fails in CI).
fn python_ready() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import numpy, zstandard"])
        .output();
    let problem = match probe {
        Ok(o) if o.status.success() => return true,
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run python3: {e}"),
    };
    let msg = format!(
        "python reader test needs python3 with numpy and zstandard \
         (`python3 -m pip install numpy zstandard`): {problem}"
    );
    assert!(!lazarus_testbed::in_ci(), "{msg}");
    eprintln!("note: skipping: {msg}");
    false
}

/// Runs the reader CLI; returns stdout, panicking with its stderr on failure.
fn run_reader(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(reader())
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "lazarus_reader.py {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The reader's dump of a whole checkpoint: object file name -> little-endian bytes.
fn dump_all(repo: &Path, checkpoint: u64) -> BTreeMap<String, Vec<u8>> {
    let out = repo.with_extension(format!("dump-{checkpoint}"));
    run_reader(&[
        repo.to_str().expect("utf-8 temp path"),
        "--checkpoint",
        &checkpoint.to_string(),
        "--dump-all",
        out.to_str().expect("utf-8 temp path"),
    ]);
    std::fs::read_dir(&out)
        .expect("dump dir")
        .map(|e| {
            let p = e.expect("dump entry").path();
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .expect("utf-8 name")
                .to_string();
            (name, std::fs::read(&p).expect("read dump"))
        })
        .collect()
}

/// SplitMix64: seeded, so every value (including NaN payloads and subnormals) is
/// reproducible.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Smooth values in the first half (zstd+shuffle compresses them), random bit patterns in
/// the second (any f64, NaN payloads included: compared as bits).
fn fval(seed: u64, g: u64, total: u64) -> f64 {
    if g < total / 2 {
        (g as f64 * 0.001).sin() * 100.0
    } else {
        f64::from_bits(mix(seed ^ g))
    }
}

#[derive(Checkpoint)]
struct State {
    field: DVec<f64>,
    rows: DVec<u16>,
    ids: Vec<i32>,
    /// A serde object: format 1.3 records its layout, which the reader lists.
    #[checkpoint(serde)]
    knobs: (f64, Option<u8>),
}

const FIELD: u64 = 10_007; // elements: several 4 KiB chunks per rank, odd tail
const ROWS: u64 = 301;
const WIDTH: usize = 3;

/// Writes one checkpoint of `State` from `n` ranks (skewed boundaries) into `repo`.
fn write_repo(repo: &Path, n: u32, codec: Codec, seed: u64) {
    let parts: Vec<Vec<LoadedObject>> = lazarus::local(n, move |comm| {
        // Skewed: rank r's weight is r + 1, so blocks differ in size.
        let w: Vec<f64> = (0..n).map(|r| f64::from(r) + 1.0).collect();
        let d = Distribution::weighted(FIELD, &w).expect("weighted");
        let mut field = DVec::<f64>::with_distribution(&comm, d, 1).expect("field");
        field.for_each_mut(|g, x| *x = fval(seed, g, FIELD));
        let mut rows = DVec::<u16>::with_width(&comm, ROWS, WIDTH).expect("rows");
        rows.for_each_row_mut(|g, row| {
            for (j, x) in row.iter_mut().enumerate() {
                *x = (mix(seed ^ (g * 7 + j as u64)) >> 48) as u16;
            }
        });
        let rank = comm.rank().0 as i32;
        let s = State {
            field,
            rows,
            ids: vec![rank, -rank, i32::MIN + rank],
            knobs: (0.5, Some(3)),
        };
        lazarus::state::to_loaded(&lazarus::state::save(&s).expect("save"))
    })
    .expect("local run");
    let mut r = Repository::open(
        repo,
        RepoOptions {
            chunk_size: 4096,
            codec,
            ..RepoOptions::default()
        },
    )
    .expect("open repo");
    let p = r.begin(n).expect("begin");
    let w = p.part_writer();
    let receipts: Vec<_> = parts
        .iter()
        .enumerate()
        .map(|(rank, objs)| {
            let specs: Vec<ObjectSpec<'_>> = objs
                .iter()
                .map(|o| ObjectSpec {
                    info: o.info.clone(),
                    data: o.data.as_slice().into(),
                    hint: None,
                })
                .collect();
            w.write(Rank(rank as u32), &specs).expect("write part")
        })
        .collect();
    let app = BTreeMap::from([("app".to_string(), "python_reader".to_string())]);
    r.commit(p, receipts, CommitMeta { step: 7, app })
        .expect("commit");
}

#[test]
fn python_reader_matches_rust_writer_bit_for_bit() {
    if !python_ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    for (i, (n, codec)) in [(1, Codec::None), (3, Codec::None), (4, Codec::Zstd)]
        .into_iter()
        .enumerate()
    {
        let seed = 0x5eed_0000 + i as u64;
        eprintln!("case {i}: {n} ranks, {codec:?}, seed {seed:#x}");
        let repo = tmp.path().join(format!("repo-{i}"));
        write_repo(&repo, n, codec, seed);

        let d = dump_all(&repo, 1);
        let field = &d["field.bin"];
        let want: Vec<u8> = (0..FIELD)
            .flat_map(|g| fval(seed, g, FIELD).to_le_bytes())
            .collect();
        assert!(
            *field == want,
            "case {i}: field differs ({} bytes)",
            field.len()
        );

        let rows = &d["rows.bin"];
        let want: Vec<u8> = (0..ROWS)
            .flat_map(|g| (0..WIDTH as u64).map(move |j| (g, j)))
            .flat_map(|(g, j)| ((mix(seed ^ (g * 7 + j)) >> 48) as u16).to_le_bytes())
            .collect();
        assert!(*rows == want, "case {i}: rows differ");

        for rank in 0..n {
            let ids = &d[&format!("ids.rank{rank}.bin")];
            let r = rank as i32;
            let want: Vec<u8> = [r, -r, i32::MIN + r]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            assert_eq!(*ids, want, "case {i}: ids of rank {rank}");
        }
        let summary = run_reader(&[repo.to_str().expect("utf-8"), "--field", "rows"]);
        assert!(
            summary.contains(&format!("shape ({ROWS}, {WIDTH})")),
            "{summary}"
        );
        // Format 1.2: the reader sees each object's sharing.
        let listing = run_reader(&[repo.to_str().expect("utf-8")]);
        assert!(
            listing.contains("rank 0: field (DVec<f64>) bulk")
                && listing.contains("[distributed]")
                && listing.contains("rank 0: ids (Vec<i32>) bulk i32[3] [rank]")
                // Format 1.3: and each serde object's layout.
                && listing.contains("rank 0: knobs ((f64, Option<u8>)) serde (f64,Some(u8)) [rank]"),
            "{listing}"
        );
        if codec == Codec::Zstd {
            // The case must really exercise zstd + shuffle: some chunk has codec 1, filter 1.
            let mut found = false;
            for dir in std::fs::read_dir(repo.join("chunks")).expect("chunks") {
                for f in std::fs::read_dir(dir.expect("entry").path()).expect("chunk dir") {
                    let b = std::fs::read(f.expect("entry").path()).expect("chunk");
                    found |= b.get(4..7) == Some(&[1, 1, 8][..]);
                }
            }
            assert!(found, "no zstd+shuffle chunk was written");
        }
    }
}

#[test]
fn python_reader_golden_and_unittests() {
    if !python_ready() {
        return;
    }
    // Format 1.0 (manifest files) and 1.1 (manifests inline in COMMIT): same values.
    for golden in ["tests/data/golden-v1", "tests/data/golden-v1.1"] {
        let golden = root().join(golden);
        let out = tempfile::tempdir().expect("tempdir");
        let raw = out.path().join("field.bin");
        run_reader(&[
            golden.to_str().expect("utf-8 path"),
            "--checkpoint",
            "2",
            "--field",
            "field",
            "--dump-raw",
            raw.to_str().expect("utf-8 temp path"),
        ]);
        let field = std::fs::read(&raw).expect("read dump");
        let want: Vec<u8> = (0..2000u64)
            .map(|i| {
                if (100..120).contains(&i) {
                    -(i as f64)
                } else {
                    i as f64 * 0.25 + 0.125
                }
            })
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert!(field == want, "{golden:?}: field of checkpoint 2 differs");
    }
    let out = Command::new("python3")
        .args([
            "-m",
            "unittest",
            "discover",
            "-s",
            "tools",
            "-p",
            "test_*.py",
        ])
        .current_dir(root())
        .output()
        .expect("run python3 -m unittest");
    assert!(
        out.status.success(),
        "python unittest failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------------ hostile repositories
// Regression tests of a review of the reader: each fails on the reader before the fix.

/// How the reader ended: exit status (None when killed after the timeout: it hung), stdout,
/// stderr.
struct Outcome {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the reader CLI and returns how it ended, whatever that was. Killed after 60 s (a
/// reader that blocks, on a FIFO say, must fail the test, not hang it).
fn run_reader_outcome(args: &[&str]) -> Outcome {
    let mut child = Command::new("python3")
        .arg(reader())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut hung = false;
    while child.try_wait().expect("wait for python3").is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().expect("kill the hung reader");
            hung = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("reader output");
    let o = Outcome {
        status: if hung { None } else { out.status.code() },
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !o.stderr.contains("Traceback"),
        "lazarus_reader.py {args:?} crashed:\n{}",
        o.stderr
    );
    o
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Renames object `old` to `new` in every rank's manifest of checkpoint `cid` and reseals
/// the manifests, their digests in COMMIT and COMMIT itself (inline or separate manifests):
/// the result is an intact checkpoint whose manifests hold a name the test chose.
const RENAME_OBJECT_PY: &str = r#"
import base64, json, os, struct, sys
sys.path.insert(0, sys.argv[1])
import lazarus_reader as lr
repo, cid, old, new = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
def body(raw):
    n = struct.unpack_from("<Q", raw, 8)[0]
    return json.loads(raw[48:48 + n])
def seal(raw, b):
    data = json.dumps(b).encode()
    head = raw[:8] + struct.pack("<Q", len(data))
    return head + lr.blake3(head + data) + data
d = os.path.join(repo, "checkpoints", "%016d" % cid)
craw = open(os.path.join(d, "COMMIT"), "rb").read()
c = body(craw)
hits = 0
for r, part in enumerate(c["parts"]):
    mfile = os.path.join(d, "rank-%d.manifest" % r)
    mraw = base64.b64decode(part["manifest"]) if "manifest" in part else open(mfile, "rb").read()
    m = body(mraw)
    for o in m["objects"]:
        if o["name"] == old:
            o["name"] = new
            hits += 1
    mraw = seal(mraw, m)
    if "manifest" in part:
        part["manifest"] = base64.b64encode(mraw).decode()
    else:
        open(mfile, "wb").write(mraw)
    part["manifest_digest"] = lr.blake3(mraw).hex()
assert hits, "no object %r" % old
open(os.path.join(d, "COMMIT"), "wb").write(seal(craw, c))
"#;

fn rename_object(repo: &Path, cid: u64, old: &str, new: &str) {
    let out = Command::new("python3")
        .args(["-c", RENAME_OBJECT_PY, s(&root().join("tools")), s(repo)])
        .args([&cid.to_string(), old, new])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "renaming {old} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn commit_path(repo: &Path, cid: u64) -> PathBuf {
    repo.join(format!("checkpoints/{cid:016}/COMMIT"))
}

/// The chunk files of a repository, sorted.
fn chunk_files(repo: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for dir in std::fs::read_dir(repo.join("chunks")).expect("chunks") {
        for f in std::fs::read_dir(dir.expect("entry").path()).expect("chunk dir") {
            v.push(f.expect("entry").path());
        }
    }
    v.sort();
    v
}

/// Finding 1: an object name from the repository must never place a `--dump-all` file
/// outside the output directory (`../../PWNED`, an absolute name), and a symbolic link
/// planted in the output directory must be replaced, not followed.
#[test]
fn python_reader_dump_all_stays_inside_its_directory() {
    if !python_ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let abs = tmp.path().join("ABS");
    for (i, name) in ["../../PWNED", s(&abs), "a\\b", ".."]
        .into_iter()
        .enumerate()
    {
        let repo = tmp.path().join(format!("repo-{i}"));
        write_repo(&repo, 2, Codec::None, 0x7a7a);
        rename_object(&repo, 1, "ids", name);
        let out = tmp.path().join(format!("o{i}/d"));
        let o = run_reader_outcome(&[s(&repo), "--checkpoint", "1", "--dump-all", s(&out)]);
        assert_eq!(o.status, Some(2), "name {name:?}: {}{}", o.stdout, o.stderr);
        assert!(
            o.stderr.contains("checkpoint 1, rank 0")
                && o.stderr.contains(&format!("{name:?}").replace('"', "'"))
                && o.stderr.contains("refuses"),
            "name {name:?}: {}",
            o.stderr
        );
        // Nothing written anywhere: not outside, not even the safe objects inside.
        assert!(!tmp.path().join("PWNED.rank0.bin").exists());
        assert!(!tmp.path().join("ABS.rank0.bin").exists());
        let inside = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
        assert_eq!(inside, 0, "name {name:?}: files were written");
    }

    // A link planted in the output directory (to a file, and dangling) is not followed.
    let repo = tmp.path().join("repo-plain");
    write_repo(&repo, 2, Codec::None, 0x7a7b);
    let out = tmp.path().join("planted");
    std::fs::create_dir(&out).expect("mkdir");
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, b"victim").expect("victim");
    let created = tmp.path().join("created-through-link");
    std::os::unix::fs::symlink(&victim, out.join("field.bin")).expect("symlink");
    std::os::unix::fs::symlink(&created, out.join("ids.rank0.bin")).expect("symlink");
    let o = run_reader_outcome(&[s(&repo), "--checkpoint", "1", "--dump-all", s(&out)]);
    assert_eq!(o.status, Some(0), "{}", o.stderr);
    assert_eq!(std::fs::read(&victim).expect("victim"), b"victim");
    assert!(!created.exists(), "the dangling link was followed");
    for f in ["field.bin", "ids.rank0.bin"] {
        let m = std::fs::symlink_metadata(out.join(f)).expect("dumped");
        assert!(m.file_type().is_file(), "{f} is still a link");
    }
    assert_eq!(
        std::fs::metadata(out.join("field.bin"))
            .expect("field")
            .len(),
        FIELD * 8
    );
}

/// Finding 2: a chunk that is a symbolic link (to an intact copy of itself), a FIFO, or a
/// file larger than the format allows is damage of that file, named, and refused without
/// following, blocking or reading it.
#[test]
fn python_reader_refuses_links_fifos_and_oversized_files() {
    if !python_ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    for kind in ["symbolic link", "FIFO", "larger than the format's maximum"] {
        let repo = tmp.path().join(kind.replace(' ', "-"));
        write_repo(&repo, 1, Codec::None, 0x11);
        let chunk = chunk_files(&repo).remove(0);
        match kind {
            "symbolic link" => {
                let copy = tmp.path().join("chunk-copy");
                std::fs::rename(&chunk, &copy).expect("move chunk");
                std::os::unix::fs::symlink(&copy, &chunk).expect("symlink");
            }
            "FIFO" => {
                std::fs::remove_file(&chunk).expect("rm chunk");
                let c = std::ffi::CString::new(s(&chunk)).expect("no NUL");
                // SAFETY: a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
            }
            _ => {
                // Sparse: no disk space, and the reader must not read it anyway.
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&chunk)
                    .expect("open chunk");
                f.set_len(300 << 20).expect("grow chunk");
            }
        }
        let o = run_reader_outcome(&[
            s(&repo),
            "--checkpoint",
            "1",
            "--dump-all",
            s(&tmp.path().join("out")),
        ]);
        assert_eq!(o.status, Some(2), "{kind}: {}{}", o.stdout, o.stderr);
        assert!(
            o.stderr.contains(s(&chunk)) && o.stderr.contains(kind),
            "{kind}: {}",
            o.stderr
        );
    }
}

/// Finding 3: a COMMIT that exists but does not decode is reported on stderr (naming the
/// file and the reason) and counted in the summary, never skipped silently.
#[test]
fn python_reader_reports_damaged_commits() {
    if !python_ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    write_repo(&repo, 2, Codec::None, 0x21);
    write_repo(&repo, 2, Codec::None, 0x22);
    let damage = |cid| {
        let p = commit_path(&repo, cid);
        let mut b = std::fs::read(&p).expect("COMMIT");
        b[60] ^= 0x01;
        std::fs::write(&p, b).expect("damage COMMIT");
    };
    damage(2);
    let commit2 = commit_path(&repo, 2);
    let o = run_reader_outcome(&[s(&repo)]);
    assert_eq!(o.status, Some(0), "{}", o.stderr);
    assert!(
        o.stdout.contains("2 committed checkpoint(s), 1 damaged")
            && o.stdout.contains("checkpoint 2: damaged"),
        "{}",
        o.stdout
    );
    assert!(
        o.stderr.contains(s(&commit2)) && o.stderr.contains("checksum mismatch"),
        "{}",
        o.stderr
    );
    // Reading the newest falls back to checkpoint 1 and says why.
    let o = run_reader_outcome(&[s(&repo), "--field", "field"]);
    assert_eq!(o.status, Some(0), "{}", o.stderr);
    assert!(o.stderr.contains(s(&commit2)), "{}", o.stderr);
    // Every committed checkpoint damaged: an error saying so, not an empty repository.
    damage(1);
    let o = run_reader_outcome(&[s(&repo), "--field", "field"]);
    assert_eq!(o.status, Some(2), "{}", o.stderr);
    assert!(
        o.stderr.contains("every one damaged") && o.stderr.contains(s(&commit_path(&repo, 1))),
        "{}",
        o.stderr
    );
}

/// Finding 4: an object (or rank) the newest intact checkpoint does not have is "not
/// found" (exit 3) naming the checkpoint, rank and object; never a fallback to an older
/// checkpoint's stale value, nor a claim that the intact checkpoint is damaged.
#[test]
fn python_reader_missing_object_is_not_found_not_a_fallback() {
    if !python_ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    write_repo(&repo, 2, Codec::None, 0x31);
    write_repo(&repo, 2, Codec::None, 0x32);
    rename_object(&repo, 2, "ids", "ids_v2");
    for (args, want) in [
        (
            vec!["--field", "ids"],
            "checkpoint 2 has no object `ids` on any rank",
        ),
        (
            vec!["--field", "ids", "--rank", "1"],
            "checkpoint 2 has no object `ids` on rank 1",
        ),
        (
            vec!["--field", "field", "--rank", "7"],
            "checkpoint 2 has no rank 7",
        ),
    ] {
        let mut a = vec![s(&repo)];
        a.extend(args.iter().copied());
        let o = run_reader_outcome(&a);
        assert_eq!(o.status, Some(3), "{args:?}: {}{}", o.stdout, o.stderr);
        assert!(
            o.stderr.contains(want) && !o.stderr.contains("damaged"),
            "{args:?}: {}",
            o.stderr
        );
    }
    let o = run_reader_outcome(&[s(&repo), "--field", "ids_v2", "--rank", "1"]);
    assert_eq!(o.status, Some(0), "{}", o.stderr);
}

/// Finding 5: `checkpoints/` that is not a directory is an error naming it (exit 2), not
/// an uncaught NotADirectoryError.
#[test]
fn python_reader_checkpoints_not_a_directory_is_an_error() {
    if !python_ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    write_repo(&repo, 1, Codec::None, 0x41);
    let ck = repo.join("checkpoints");
    std::fs::remove_dir_all(&ck).expect("rm checkpoints");
    std::fs::write(&ck, b"not a directory").expect("file");
    for args in [vec![], vec!["--field", "field"]] {
        let mut a = vec![s(&repo)];
        a.extend(args.iter().copied());
        let o = run_reader_outcome(&a);
        assert_eq!(o.status, Some(2), "{args:?}: {}{}", o.stdout, o.stderr);
        assert!(
            o.stderr.contains(s(&ck)) && o.stderr.contains("not a directory"),
            "{args:?}: {}",
            o.stderr
        );
    }
}

/// Sets checkpoint `cid`'s COMMIT to world size 0 with no parts, resealed (its checksum is
/// right): the decoder itself must refuse it.
const WORLD_ZERO_PY: &str = r#"
import json, os, struct, sys
sys.path.insert(0, sys.argv[1])
import lazarus_reader as lr
p = os.path.join(sys.argv[2], "checkpoints", "%016d" % int(sys.argv[3]), "COMMIT")
raw = open(p, "rb").read()
c = json.loads(raw[48:48 + struct.unpack_from("<Q", raw, 8)[0]])
c["world_size"], c["parts"] = 0, []
data = json.dumps(c).encode()
head = raw[:8] + struct.pack("<Q", len(data))
open(p, "wb").write(head + lr.blake3(head + data) + data)
"#;

/// A symbolic link named like a checkpoint (into another repository) is not one: the
/// reader ignores it with a warning, as the Rust listing does, instead of listing the other
/// repository's checkpoint as this one's. A resealed COMMIT of world size 0 is damaged, as
/// the Rust decoder says, not a checkpoint of no ranks.
#[test]
fn python_reader_ignores_symlinked_checkpoints_and_refuses_world_size_zero() {
    if !python_ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    let other = tmp.path().join("other");
    write_repo(&repo, 2, Codec::None, 0x51);
    write_repo(&other, 2, Codec::None, 0x52);
    write_repo(&other, 2, Codec::None, 0x53);
    let link = repo.join("checkpoints/0000000000000002");
    std::os::unix::fs::symlink(other.join("checkpoints/0000000000000002"), &link)
        .expect("plant link");
    let o = run_reader_outcome(&[s(&repo)]);
    assert_eq!(o.status, Some(0), "{}", o.stderr);
    assert!(
        o.stdout.contains("1 committed checkpoint(s), 0 damaged"),
        "{}",
        o.stdout
    );
    assert!(
        o.stderr.contains(s(&link)) && o.stderr.contains("ignored"),
        "{}",
        o.stderr
    );
    // The Rust listing agrees: the link is not a checkpoint.
    let r = Repository::open(&repo, RepoOptions::default()).expect("open");
    let ids: Vec<u64> = r
        .reader()
        .expect("reader")
        .committed()
        .expect("list")
        .iter()
        .map(|c| c.id.0)
        .collect();
    assert_eq!(ids, vec![1]);
    drop(r);

    std::fs::remove_file(&link).expect("rm link");
    let out = Command::new("python3")
        .args(["-c", WORLD_ZERO_PY, s(&root().join("tools")), s(&repo), "1"])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o = run_reader_outcome(&[s(&repo)]);
    assert!(
        o.stdout.contains("1 committed checkpoint(s), 1 damaged"),
        "{}{}",
        o.stdout,
        o.stderr
    );
    assert!(o.stderr.contains("world_size is 0"), "{}", o.stderr);
}
