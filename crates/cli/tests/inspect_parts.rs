//! `lazarus inspect --parts/--json` per-rank parts and commit status, and `lazarus verify`
//! global consistency (every rank's manifest present, none beyond the world size), on a
//! 3-rank repository written with the store API.

use lazarus::format::{CheckpointId, ObjectInfo, ObjectKind, ObjectSpec, Rank};
use lazarus::store::{CommitMeta, RepoOptions, Repository};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn lazarus(args: &[&str], repo: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lazarus"))
        .args(args)
        .arg(repo)
        .output()
        .expect("run lazarus")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn serde_obj<'a>(name: &str, data: &'a [u8]) -> ObjectSpec<'a> {
    ObjectSpec {
        info: ObjectInfo {
            name: name.into(),
            type_name: "T".into(),
            kind: ObjectKind::Serde,
            sharing: None,
            layout: None,
        },
        data: data.into(),
        hint: None,
    }
}

const CHANNEL_BYTES: usize = 777;

/// One committed 3-rank checkpoint (rank 1 holds a `lazarus.channels` object) and one
/// pending checkpoint with parts for ranks 0 and 2 only.
fn build() -> (tempfile::TempDir, PathBuf, CheckpointId, CheckpointId) {
    let d = tempfile::tempdir().unwrap();
    let repo_path = d.path().join("repo");
    let mut repo = Repository::open(&repo_path, RepoOptions::default()).unwrap();
    let state: Vec<Vec<u8>> = (0..3u8).map(|r| vec![r; 1000 + usize::from(r)]).collect();
    let chan = vec![9u8; CHANNEL_BYTES];
    let p = repo.begin(3).unwrap();
    let w = p.part_writer();
    let mut receipts = Vec::new();
    for r in 0..3u32 {
        let mut objs = vec![serde_obj("state", &state[r as usize])];
        if r == 1 {
            objs.push(serde_obj("lazarus.channels", &chan));
        }
        receipts.push(w.write(Rank(r), &objs).unwrap());
    }
    let committed = repo
        .commit(p, receipts, CommitMeta::default())
        .unwrap()
        .summary
        .id;
    let p = repo.begin(3).unwrap();
    let w = p.part_writer();
    w.write(Rank(0), &[serde_obj("state", &state[0])]).unwrap();
    w.write(Rank(2), &[serde_obj("state", &state[2])]).unwrap();
    let pending = p.id();
    drop(p);
    drop(repo);
    (d, repo_path, committed, pending)
}

fn manifest(repo: &Path, id: CheckpointId, rank: u32) -> PathBuf {
    repo.join("checkpoints")
        .join(id.to_string())
        .join(format!("rank-{rank}.manifest"))
}

#[test]
fn json_has_per_rank_parts_channel_bytes_and_flags_uncommitted() {
    let (_d, repo, committed, pending) = build();
    let o = lazarus(&["inspect", "--json"], &repo);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cps = v["checkpoints"].as_array().unwrap();
    assert_eq!(
        cps.len(),
        1,
        "pending checkpoint must not be listed as committed: {v}"
    );
    assert_eq!(cps[0]["id"], committed.0);
    assert_eq!(cps[0]["status"], "committed");
    let parts = cps[0]["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    for (r, p) in parts.iter().enumerate() {
        assert_eq!(p["rank"], r as u64);
        let want_chan = if r == 1 { CHANNEL_BYTES as u64 } else { 0 };
        assert_eq!(p["channel_bytes"], want_chan, "{p}");
        assert_eq!(p["objects"], if r == 1 { 2 } else { 1 });
        assert_eq!(p["logical_bytes"], 1000 + r as u64 + want_chan);
        assert!(p["stored_bytes"].as_u64().unwrap() > 0);
        assert_eq!(p["manifest_digest"].as_str().unwrap().len(), 12);
        assert!(p["damaged"].is_null());
    }
    let un = v["uncommitted"].as_array().unwrap();
    assert_eq!(un.len(), 1, "{v}");
    assert_eq!(un[0]["id"], pending.0);
    assert_eq!(un[0]["status"], "uncommitted (pending or aborted)");
    assert_eq!(un[0]["manifest_ranks"], serde_json::json!([0, 2]));

    let o = lazarus(&["inspect", "--parts"], &repo);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let t = text(&o.stdout);
    assert!(t.contains("channels") && t.contains("777 B"), "{t}");
    assert!(
        t.lines().last().unwrap().starts_with(&format!(
            "uncommitted: {} [uncommitted (pending or aborted); rank parts: 0,2]",
            pending.0
        )),
        "{t}"
    );
    // The default table keeps one line per committed checkpoint, plus the trailing line.
    let o = lazarus(&["inspect"], &repo);
    assert_eq!(text(&o.stdout).lines().count(), 3, "{}", text(&o.stdout));
}

#[test]
fn verify_passes_and_notes_pending_checkpoint() {
    let (_d, repo, _, pending) = build();
    let o = lazarus(&["verify"], &repo);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    assert!(out.contains("ok: 1 committed checkpoint(s)"), "{out}");
    // The whole note, with the pending checkpoint's id as the line's last word (a bare
    // contains(id) matched any "2" in the output).
    let note = format!(
        "note: 1 uncommitted checkpoint dir(s) (pending or aborted, never restored): {}",
        pending.0
    );
    assert!(
        out.lines().any(|l| l == note),
        "want the line {note:?} in:\n{out}"
    );
}

#[test]
fn verify_names_missing_rank_and_checkpoint() {
    let (_d, repo, committed, _) = build();
    std::fs::remove_file(manifest(&repo, committed, 1)).unwrap();
    let o = lazarus(&["verify"], &repo);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let want = format!("checkpoint {committed} rank 1: manifest missing");
    assert!(err.contains(&want), "want {want:?} in {err}");
    assert!(err.contains("intact checkpoints: none"), "{err}");
    let o = lazarus(&["verify", "--json"], &repo);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let probs = v["problems"].as_array().unwrap();
    assert_eq!(probs.len(), 1, "the missing file is named once: {v}");
    assert_eq!(probs[0]["kind"], "missing");
}

#[test]
fn verify_flags_stray_rank_beyond_world_size() {
    let (_d, repo, committed, _) = build();
    std::fs::copy(manifest(&repo, committed, 0), manifest(&repo, committed, 7)).unwrap();
    let o = lazarus(&["verify"], &repo);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let want = format!("checkpoint {committed} rank 7: stray manifest beyond world size 3");
    assert!(err.contains(&want), "want {want:?} in {err}");
    // Restore reads only the ranks COMMIT lists, so the checkpoint itself stays intact.
    assert!(
        err.contains(&format!("intact checkpoints: {}", committed.0)),
        "{err}"
    );
}

/// Issue #12: the cost of each checkpoint (rank 0's stall until COMMIT and its own part
/// write, recorded in COMMIT) and the checkpoint that finished the job are shown; older
/// checkpoints without the record show `-` (JSON `null`).
#[test]
fn inspect_shows_each_checkpoint_cost_and_the_finished_one() {
    #[derive(lazarus::Checkpoint)]
    struct S {
        x: Vec<f64>,
    }
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    let mut job = lazarus::Job::builder()
        .repo(&repo)
        .every_steps(2)
        .open()
        .unwrap();
    let mut s = job.restore_or_init(|| S { x: vec![1.0; 4096] }).unwrap();
    while job.step() < 5 {
        job.checkpoint(&s).unwrap();
        s.x[0] += 1.0;
    }
    job.finish(&s).unwrap();
    drop(job);
    let out = lazarus(&["inspect", "--json"], &repo);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["checkpoints"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "steps 2, 4 and the finished 5");
    for r in rows {
        let (stall, write) = (
            r["stall_us"].as_u64().unwrap(),
            r["write_us"].as_u64().unwrap(),
        );
        // Asynchronous (issue #16): the stall is the capture, the write is in the flush.
        match r["flush_us"].as_u64() {
            Some(flush) => assert!(flush >= write && write > 0 && stall > 0, "{r}"),
            None => assert!(stall >= write && write > 0, "{r}"),
        }
        assert!(r["time_utc"].as_str().unwrap().ends_with('Z'), "{r}");
    }
    let finished: Vec<bool> = rows
        .iter()
        .map(|r| r["finished"].as_bool().unwrap())
        .collect();
    assert_eq!(finished, [false, false, true]);
    let flushed: Vec<bool> = rows.iter().map(|r| r["flush_us"].is_u64()).collect();
    assert_eq!(flushed, [true, true, false], "finish writes synchronously");
    let table = text(&lazarus(&["inspect"], &repo).stdout);
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("stall") && header.contains("write") && header.contains("flush"),
        "{table}"
    );
    assert!(
        table.lines().last().unwrap().ends_with("finished"),
        "{table}"
    );

    // A checkpoint written without the record (the store API, or before issue #12).
    let (_d, old, _, _) = build();
    let v: serde_json::Value =
        serde_json::from_slice(&lazarus(&["inspect", "--json"], &old).stdout).unwrap();
    assert!(v["checkpoints"][0]["stall_us"].is_null(), "{v}");
    let table = text(&lazarus(&["inspect"], &old).stdout);
    let row = table.lines().nth(1).unwrap();
    assert!(row.trim_end().ends_with("-         -"), "{table}");
}

/// Review #3: `inspect --json` panicked (exit 101) on a repository at a non-UTF-8 path
/// (serde's `PathBuf` serialization fails), and `verify --json` on a damaged repository
/// there exited 2 ("path contains invalid UTF-8") instead of 1 with the report. Paths are
/// written lossily.
#[test]
fn json_reports_survive_a_non_utf8_repo_path() {
    use std::os::unix::ffi::OsStrExt;
    let (d, repo, committed, _) = build();
    let odd = d.path().join(std::ffi::OsStr::from_bytes(b"r\xff"));
    std::fs::rename(&repo, &odd).unwrap();
    let o = lazarus(&["inspect", "--json"], &odd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["repo"].as_str().unwrap().ends_with("r\u{fffd}"), "{v}");
    std::fs::remove_file(manifest(&odd, committed, 1)).unwrap();
    let o = lazarus(&["verify", "--json"], &odd);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["problems"][0]["kind"], "missing", "{v}");
}

/// Review #6: `inspect --levels` ignored a repository that did not open (exit 0 with an
/// empty L4 column for a typo'd path). With nothing under the node-local root either, it
/// fails naming the path; a directory that is not a repository fails the same way.
#[test]
fn inspect_levels_fails_naming_a_repository_that_does_not_open() {
    let d = tempfile::tempdir().unwrap();
    let l1 = d.path().join("l1");
    std::fs::create_dir(&l1).unwrap();
    let l1 = l1.to_str().unwrap();
    for repo in [
        Path::new("/nonexistent/x").to_path_buf(),
        d.path().to_path_buf(),
    ] {
        let o = lazarus(&["inspect", "--levels", "--l1-dir", l1], &repo);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(repo.to_str().unwrap()), "{err}");
    }
    // A real repository with no level copies: fine, exit 0.
    let (_d, repo, _, _) = build();
    let o = lazarus(&["inspect", "--levels", "--l1-dir", l1], &repo);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

/// Review #7: `verify --level l1/l2/l3 --json` printed plain text (the flag was ignored),
/// and `--l1-dir` was accepted and unused without a node-local level. Both are refused
/// naming the flag.
#[test]
fn verify_refuses_json_with_a_level_and_l1_dir_without_one() {
    let (d, repo, _, _) = build();
    let l1 = d.path().to_str().unwrap();
    for args in [
        &["verify", "--level", "l1", "--json", "--l1-dir", l1][..],
        &["verify", "--level", "l3", "--json"][..],
    ] {
        let o = lazarus(args, &repo);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("--json"), "{err}");
        assert!(o.stdout.is_empty(), "{}", text(&o.stdout));
    }
    for args in [
        &["verify", "--l1-dir", l1][..],
        &["verify", "--level", "l4", "--l1-dir", l1][..],
    ] {
        let o = lazarus(args, &repo);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("--l1-dir"), "{err}");
    }
    let o = lazarus(&["verify", "--level", "l1", "--l1-dir", l1], &repo);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

/// `inspect --levels --parts` accepted --parts and ignored it (the levels table has no
/// parts), and `verify --level l9 --l1-dir D` blamed --l1-dir instead of the bad level.
#[test]
fn inspect_levels_refuses_parts_and_verify_names_a_bad_level_first() {
    let (d, repo, _, _) = build();
    let o = lazarus(&["inspect", "--levels", "--parts"], &repo);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--parts"), "{err}");
    let l1 = d.path().to_str().unwrap();
    let o = lazarus(&["verify", "--level", "l9", "--l1-dir", l1], &repo);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--level \"l9\""), "{err}");
}
