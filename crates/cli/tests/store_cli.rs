//! `lazarus inspect | verify | gc` on the golden v1 repository and damaged copies of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/golden-v1")
}

fn lazarus(args: &[&str], repo: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lazarus"))
        .args(args)
        .arg(repo)
        .output()
        .expect("run lazarus")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let dest = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

fn golden_copy() -> (tempfile::TempDir, PathBuf) {
    golden_copy_of(&golden())
}

fn golden_copy_of(src: &Path) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    copy_dir(src, &repo);
    (d, repo)
}

/// Exit status 0, or fail showing both streams.
fn assert_ok(o: &std::process::Output) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// `lazarus verify` succeeds and reports both committed checkpoints.
fn verify_ok(repo: &Path) {
    let o = lazarus(&["verify"], repo);
    assert_ok(&o);
    assert!(
        text(&o.stdout).contains("ok: 2 committed checkpoint(s)"),
        "{}",
        text(&o.stdout)
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn verify_passes_on_golden() {
    verify_ok(&golden());
}

/// Format 1.1 (manifests inline in COMMIT, no rank manifest files): verify finds every
/// rank's part and inspect --parts lists them; gc keeps what the inline manifests name.
#[test]
fn verify_inspect_and_gc_on_golden_1_1() {
    let g = golden().with_file_name("golden-v1.1");
    verify_ok(&g);
    let o = lazarus(&["inspect", "--parts"], &g);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(!text(&o.stdout).contains("DAMAGED"), "{}", text(&o.stdout));
    let (_d, repo) = golden_copy_of(&g);
    assert_ok(&lazarus(&["gc", "--keep", "1"], &repo));
    assert_ok(&lazarus(&["verify"], &repo));
}

#[test]
fn inspect_table_and_json() {
    let o = lazarus(&["inspect"], &golden());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let t = text(&o.stdout);
    assert!(t.contains("logical") && t.contains("dedup"), "{t}");
    assert_eq!(t.lines().count(), 3, "{t}");
    let o = lazarus(&["inspect", "--json"], &golden());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cps = v["checkpoints"].as_array().unwrap();
    assert_eq!(cps.len(), 2);
    assert_eq!(cps[0]["step"], 10);
    assert_eq!(cps[1]["step"], 20);
    assert_eq!(cps[1]["ranks"], 2);
    // 2 ranks x (8000 B field + 256 B ids + params)
    assert!(cps[0]["logical_bytes"].as_u64().unwrap() > 16_512);
    // The second checkpoint changed one region of rank 0's field only.
    assert!(
        cps[1]["new_bytes"].as_u64().unwrap() < cps[0]["new_bytes"].as_u64().unwrap() / 2,
        "{v}"
    );
    assert!(cps[1]["dedup_ratio"].as_f64().unwrap() >= 1.0);
}

#[test]
fn verify_names_the_first_bad_chunk_and_what_it_breaks() {
    let (_d, repo) = golden_copy();
    // A chunk used by both checkpoints: rank 1's ids (unchanged between them).
    let m = std::fs::read(repo.join("checkpoints/0000000000000001/rank-1.manifest")).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&m[48..]).unwrap();
    let digest = body["objects"][1]["chunks"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let chunk = repo.join("chunks").join(&digest[..2]).join(&digest);
    let mut b = std::fs::read(&chunk).unwrap();
    let last = b.len() - 1;
    b[last] ^= 1;
    std::fs::write(&chunk, b).unwrap();
    let o = lazarus(&["verify"], &repo);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(e.contains(&digest), "{e}");
    assert!(e.contains("breaks checkpoint(s) 1, 2"), "{e}");
    assert!(e.contains("intact checkpoints: none"), "{e}");
}

#[test]
fn verify_names_a_damaged_commit() {
    let (_d, repo) = golden_copy();
    let commit = repo.join("checkpoints/0000000000000002/COMMIT");
    let mut b = std::fs::read(&commit).unwrap();
    b[60] ^= 4;
    std::fs::write(&commit, b).unwrap();
    let o = lazarus(&["verify"], &repo);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(
        e.contains("0000000000000002/COMMIT") && e.contains("breaks checkpoint(s) 2"),
        "{e}"
    );
    assert!(e.contains("intact checkpoints: 1"), "{e}");
}

#[test]
fn gc_keeps_newest() {
    let (_d, repo) = golden_copy();
    let o = lazarus(&["gc", "--keep", "1"], &repo);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("kept 1 checkpoint(s), removed 1"),
        "{}",
        text(&o.stdout)
    );
    let o = lazarus(&["verify"], &repo);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("ok: 1 committed"));
    let o = lazarus(&["gc", "--keep", "0"], &repo);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_repositories_are_clear_errors() {
    let (_d, repo) = golden_copy();
    let mut f = std::fs::read(repo.join("FORMAT")).unwrap();
    f[8] = 2;
    std::fs::write(repo.join("FORMAT"), f).unwrap();
    for cmd in ["verify", "inspect"] {
        let o = lazarus(&[cmd], &repo);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            text(&o.stderr).contains("format 2.0 is not supported"),
            "{}",
            text(&o.stderr)
        );
    }
    let o = lazarus(&["gc", "--keep", "1"], &repo);
    assert_eq!(o.status.code(), Some(2));
    let missing = repo.join("nope");
    let o = lazarus(&["gc", "--keep", "1"], &missing);
    assert_eq!(o.status.code(), Some(2));
    assert!(!missing.exists(), "gc must not create a repository");
    assert!(text(&o.stderr).contains("no FORMAT"), "{}", text(&o.stderr));
}

/// Found in review: `gc --keep K` counted COMMIT and manifests only, so with K = 2 and a
/// newest checkpoint missing a chunk it kept one intact checkpoint and deleted the older
/// intact ones. It keeps K intact ones (older ones in place of the broken newest).
#[test]
fn gc_keep_k_keeps_k_intact_checkpoints_when_the_newest_lost_a_chunk() {
    use lazarus::format::{ObjectInfo, ObjectKind, ObjectSpec, Rank};
    use lazarus::store::{CommitMeta, RepoOptions, RepoReader, Repository};
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    let mut r = Repository::open(&repo, RepoOptions::default()).unwrap();
    let ids: Vec<_> = (1..=4u64)
        .map(|step| {
            let data = vec![step as u8; 10_000];
            let p = r.begin(1).unwrap();
            let spec = ObjectSpec {
                info: ObjectInfo {
                    name: "x".into(),
                    type_name: "Params".into(),
                    kind: ObjectKind::Serde,
                    sharing: None,
                    layout: None,
                },
                data: data.as_slice().into(),
                hint: None,
            };
            let rc = p.part_writer().write(Rank(0), &[spec]).unwrap();
            r.commit(
                p,
                vec![rc],
                CommitMeta {
                    step,
                    app: Default::default(),
                },
            )
            .unwrap()
            .summary
            .id
        })
        .collect();
    drop(r);
    let m = RepoReader::open(&repo)
        .unwrap()
        .manifest(ids[3], Rank(0))
        .unwrap();
    let hex = m.objects[0].chunks[0].digest.to_hex();
    std::fs::remove_file(repo.join("chunks").join(&hex[..2]).join(&hex)).unwrap();
    let o = lazarus(&["gc", "--keep", "2", "--json"], &repo);
    assert_ok(&o);
    let rd = RepoReader::open(&repo).unwrap();
    for id in &ids[1..3] {
        rd.check_committed(*id)
            .unwrap_or_else(|e| panic!("intact checkpoint {id} was removed: {e}"));
    }
}
