//! Format 1.1: manifests inline in COMMIT (one durable file per checkpoint), the
//! "COMMIT visible but not durable" outcome, and how readers, GC and version checks treat
//! them.

mod common;

use common::*;
use lazarus_format::{CommitRecord, FormatVersion, Manifest, Rank, MAX_INLINE_MANIFEST};
use lazarus_store::{CommitMeta, CommitStatus, Presence, RepoReader, Repository, StoreErrorKind};

/// Writes a checkpoint of `world` ranks whose manifests all ride inline, returns its id.
fn inline_checkpoint(repo: &mut Repository, world: u32, step: u64) -> lazarus_format::CheckpointId {
    checkpoint_with(repo, world, step, 700, true)
}

#[test]
fn inline_manifests_leave_only_commit_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let a = inline_checkpoint(&mut repo, 3, 5);
    let ckdir = dir.path().join("checkpoints").join(a.to_string());
    let names: Vec<String> = std::fs::read_dir(&ckdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["COMMIT".to_string()]);
    let c = std::fs::read(ckdir.join("COMMIT")).unwrap();
    assert_eq!(
        u16::from_le_bytes([c[6], c[7]]),
        1,
        "COMMIT envelope is 1.1"
    );
    let reader = RepoReader::open(dir.path()).unwrap();
    assert_eq!(reader.version(), FormatVersion::CURRENT);
    assert_holds(dir.path(), a, 3, 5, 700);
    let v = reader.verify(&|_, _| {}).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    let d = &reader.checkpoint_dirs().unwrap()[0];
    assert_eq!(d.inline_ranks, vec![Rank(0), Rank(1), Rank(2)]);
    assert!(d.manifest_ranks.is_empty());
    // A large manifest still goes to a file, in the same COMMIT as inline ones.
    let p = repo.begin(2).unwrap();
    let big = le_f64(&field(9, 1, 700));
    let objs: Vec<_> = (0..600)
        .map(|i| serde_obj(Box::leak(format!("o{i:04}").into_boxed_str()), &big[..8]))
        .collect();
    let r0 = p
        .part_writer()
        .with_inline_manifest(MAX_INLINE_MANIFEST)
        .write(Rank(0), &objs)
        .unwrap();
    assert!(
        r0.manifest.is_none(),
        "manifest over the inline limit is a file"
    );
    let r1 = p
        .part_writer()
        .with_inline_manifest(MAX_INLINE_MANIFEST)
        .write(Rank(1), &[bulk_f64("field", &big, None)])
        .unwrap();
    let b = p.id();
    repo.commit(p, vec![r0, r1], CommitMeta::default()).unwrap();
    assert_eq!(reader.load_part(b, Rank(0)).unwrap().len(), 600);
    assert_eq!(reader.load_part(b, Rank(1)).unwrap()[0].data, big);
    let d = &reader.checkpoint_dirs().unwrap()[1];
    assert_eq!(
        (d.manifest_ranks.clone(), d.inline_ranks.clone()),
        (vec![Rank(0)], vec![Rank(1)])
    );
    // GC keeps the chunks named by inline manifests and sweeps the rest.
    let report = repo.retain(1).unwrap();
    assert_eq!(report.kept, vec![b]);
    assert_eq!(reader.load_part(b, Rank(1)).unwrap()[0].data, big);
    assert!(reader.verify(&|_, _| {}).unwrap().problems.is_empty());
}

/// Inline manifests grow with the world size and every restore reads the whole COMMIT: past
/// the COMMIT's inline budget the committer writes the rest as manifest files (same bytes,
/// same digests) before COMMIT, and everything reads them back as if ranks had.
#[test]
fn inline_manifests_over_the_commit_budget_are_written_as_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    // Measure one manifest, then allow two and a half of them inline.
    let one = {
        let p = repo.begin(1).unwrap();
        let bytes = le_f64(&field(0, 7, 700));
        let s = 7u64.to_le_bytes();
        let r = p
            .part_writer()
            .with_inline_manifest(MAX_INLINE_MANIFEST)
            .write(
                Rank(0),
                &[bulk_f64("field", &bytes, None), serde_obj("step", &s)],
            )
            .unwrap();
        let n = r.manifest.as_ref().unwrap().len();
        repo.abort(p).unwrap();
        n
    };
    repo.set_inline_commit_budget(one * 5 / 2);
    let a = inline_checkpoint(&mut repo, 5, 7);
    let reader = RepoReader::open(dir.path()).unwrap();
    let d = &reader.checkpoint_dirs().unwrap()[0];
    assert_eq!(
        d.inline_ranks,
        vec![Rank(0), Rank(1)],
        "first ones stay inline"
    );
    assert_eq!(
        d.manifest_ranks,
        vec![Rank(2), Rank(3), Rank(4)],
        "rest spilled"
    );
    // Same bytes as inline: the COMMIT's digests hold for the files, data reads back,
    // verify and GC agree.
    assert_holds(dir.path(), a, 5, 7, 700);
    assert_eq!(reader.manifests(a).unwrap().len(), 5);
    let v = reader.verify(&|_, _| {}).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    let b = inline_checkpoint(&mut repo, 5, 8);
    let report = repo.retain(1).unwrap();
    assert_eq!(report.kept, vec![b]);
    assert_holds(dir.path(), b, 5, 8, 700);
    assert!(reader.verify(&|_, _| {}).unwrap().problems.is_empty());
}

#[test]
fn damaged_inline_manifest_is_corrupt_and_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let a = inline_checkpoint(&mut repo, 2, 1);
    let b = inline_checkpoint(&mut repo, 2, 2);
    // Re-seal b's COMMIT (valid envelope) with rank 1's inline manifest swapped for rank 0's:
    // the digest chain must catch it.
    let path = dir
        .path()
        .join("checkpoints")
        .join(b.to_string())
        .join("COMMIT");
    let mut c = CommitRecord::decode(&std::fs::read(&path).unwrap()).unwrap();
    c.parts[1].manifest = c.parts[0].manifest.clone();
    std::fs::write(&path, c.encode()).unwrap();
    let reader = RepoReader::open(dir.path()).unwrap();
    let e = reader.load_part(b, Rank(1)).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("inline manifest"), "{e}");
    let (best, damages) = reader.newest_intact().unwrap().unwrap();
    assert_eq!((best.id, damages.len()), (a, 1));
}

#[test]
fn commit_dir_fsync_failure_is_commit_unknown_not_abort() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let p = repo.begin(1).unwrap();
    let id = p.id();
    let bytes = le_f64(&field(0, 1, 100));
    let r = p
        .part_writer()
        .with_inline_manifest(MAX_INLINE_MANIFEST)
        .write(Rank(0), &[bulk_f64("field", &bytes, None)])
        .unwrap();
    repo.fail_next_commit_sync();
    let e = repo.commit(p, vec![r], CommitMeta::default()).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::CommitUnknown, "{e}");
    assert!(!e.is_retryable());
    // COMMIT is visible: every reader sees the checkpoint as committed.
    let reader = RepoReader::open(dir.path()).unwrap();
    assert!(matches!(
        reader.commit_presence(id).unwrap(),
        Presence::Committed(_)
    ));
    assert_eq!(reader.load_part(id, Rank(0)).unwrap()[0].data, bytes);
    // The repository is not wedged: the next checkpoint gets a new id and commits.
    let next = inline_checkpoint(&mut repo, 1, 2);
    assert!(next > id);
}

#[test]
fn commit_presence_distinguishes_gone_pending_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let reader = RepoReader::open(dir.path()).unwrap();
    let p = repo.begin(1).unwrap();
    let id = p.id();
    assert_eq!(reader.commit_presence(id).unwrap(), Presence::Pending);
    repo.abort(p).unwrap();
    assert_eq!(reader.commit_presence(id).unwrap(), Presence::Gone);
    let c = inline_checkpoint(&mut repo, 1, 3);
    assert!(matches!(
        reader.commit_presence(c).unwrap(),
        Presence::Committed(_)
    ));
    // A COMMIT that exists but cannot be decoded is an error, not "absent".
    let path = dir
        .path()
        .join("checkpoints")
        .join(c.to_string())
        .join("COMMIT");
    std::fs::write(&path, b"garbage").unwrap();
    assert!(reader.commit_presence(c).is_err());
}

#[test]
fn a_1_0_repository_is_raised_to_the_current_minor_when_opened_for_writing() {
    let dir = tempfile::tempdir().unwrap();
    drop(Repository::open(dir.path(), small_opts()).unwrap());
    let f = dir.path().join("FORMAT");
    std::fs::write(&f, FormatVersion { major: 1, minor: 0 }.encode()).unwrap();
    assert_eq!(RepoReader::open(dir.path()).unwrap().version().minor, 0);
    drop(Repository::open(dir.path(), small_opts()).unwrap());
    assert_eq!(
        RepoReader::open(dir.path()).unwrap().version(),
        FormatVersion::CURRENT
    );
}

#[test]
fn gc_keeps_chunks_of_inline_manifests_in_a_damaged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let a = inline_checkpoint(&mut repo, 2, 1);
    let _b = inline_checkpoint(&mut repo, 2, 2);
    // Flip one byte of a's COMMIT body outside the inline text: checksum fails, JSON parses.
    let path = dir
        .path()
        .join("checkpoints")
        .join(a.to_string())
        .join("COMMIT");
    let mut c = std::fs::read(&path).unwrap();
    let at = c.windows(6).position(|w| w == b"\"step\"").unwrap() + 8;
    c[at] = if c[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&path, &c).unwrap();
    let reader = RepoReader::open(dir.path()).unwrap();
    assert!(matches!(
        reader.checkpoint_dirs().unwrap()[0].status,
        CommitStatus::Damaged(_)
    ));
    let report = repo.retain(1).unwrap();
    assert_eq!(report.damaged_left, vec![a]);
    // Every chunk a's inline manifests name survived the sweep.
    let body = CommitRecord::decode(&{
        let mut fixed = c.clone();
        fixed[at] = if c[at] == b'1' { b'2' } else { b'1' };
        fixed
    })
    .unwrap();
    for p in &body.parts {
        let m = Manifest::decode(&p.inline_manifest().unwrap().unwrap()).unwrap();
        for ch in m.objects.iter().flat_map(|o| o.chunks.iter()) {
            let hex = ch.digest.to_hex();
            assert!(dir
                .path()
                .join("chunks")
                .join(&hex[..2])
                .join(&hex)
                .is_file());
        }
    }
}
