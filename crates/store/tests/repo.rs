//! Repository behaviour: round trips, dedup, damage detection and fallback, versions,
//! full disk, locking, retention and GC.

mod common;

use common::*;
use lazarus_format::{CheckpointId, Rank};
use lazarus_store::{RepoOptions, RepoReader, Repository, StoreErrorKind};

#[test]
fn round_trip_and_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let a = checkpoint(&mut repo, 3, 7, 3000);
    assert_holds(dir.path(), a, 3, 7, 3000);
    // Same content again: nothing new stored except manifests.
    let pending = repo.begin(1).unwrap();
    let bytes = le_f64(&field(0, 7, 3000));
    let r = pending
        .part_writer()
        .write(Rank(0), &[bulk_f64("field", &bytes, None)])
        .unwrap();
    assert_eq!(r.stored_new_bytes, 0);
    assert_eq!(r.new_chunks, 0);
    repo.abort(pending).unwrap();
    let s = RepoReader::open(dir.path()).unwrap().committed().unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].step, 7);
    assert_eq!(s[0].world_size, 3);
}

#[test]
fn incremental_writes_only_changed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let opts = RepoOptions {
        codec: lazarus_store::Codec::None,
        ..small_opts()
    };
    let mut repo = Repository::open(dir.path(), opts).unwrap();
    let mut v: Vec<f64> = (0..51200).map(|i| (i as f64).sin()).collect(); // 100 chunks of 4 KiB
    let write = |repo: &mut Repository, v: &[f64]| {
        let p = repo.begin(1).unwrap();
        let b = le_f64(v);
        let r = p
            .part_writer()
            .write(Rank(0), &[bulk_f64("v", &b, None)])
            .unwrap();
        repo.commit(p, vec![r.clone()], Default::default()).unwrap();
        r
    };
    let full = write(&mut repo, &v);
    for x in &mut v[1000..1512] {
        *x += 1.0; // one contiguous 1 % region
    }
    let inc = write(&mut repo, &v);
    assert_eq!(full.new_chunks, 100);
    assert!(inc.new_chunks <= 2, "{inc:?}");
    assert!(
        inc.stored_new_bytes * 20 <= full.stored_new_bytes,
        "{inc:?} vs {full:?}"
    );
}

#[test]
fn flipped_chunk_falls_back_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let a = checkpoint(&mut repo, 2, 1, 2000);
    let b = checkpoint(&mut repo, 2, 2, 2000);
    drop(repo);
    // Find a chunk only checkpoint b uses: rank 1's field at step 2.
    let reader = RepoReader::open(dir.path()).unwrap();
    let m = reader.manifest(b, Rank(1)).unwrap();
    let d = m.objects[0].chunks[0].digest;
    let path = files(dir.path(), &d.to_hex())[0].clone();
    flip(&path, 100);
    let e = reader.load_part(b, Rank(1)).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Corrupt);
    assert_eq!(e.path(), Some(path.as_path()));
    assert!(e.to_string().contains("rank 1"), "{e}");
    let (s, damage) = reader.newest_intact().unwrap().unwrap();
    assert_eq!(s.id, a);
    assert_eq!(damage.len(), 1);
    assert_eq!(damage[0].checkpoint, b);
    assert_eq!(damage[0].path, path);
    assert_holds(dir.path(), a, 2, 1, 2000);
    let rep = reader.verify(&|_, _| {}).unwrap();
    assert_eq!(rep.problems.len(), 1);
    assert_eq!(rep.problems[0].breaks, vec![b]);
    assert_eq!(rep.intact, vec![a]);
}

#[test]
fn every_damage_kind_is_detected_and_named() {
    // (what to damage, how) -> load of the newest fails naming the file; fallback works.
    type Damage = fn(&std::path::Path);
    let cases: Vec<(&str, &str, Damage)> = vec![
        ("manifest flip", "rank-0.manifest", |p| flip(p, 60)),
        ("manifest header flip", "rank-0.manifest", |p| flip(p, 9)),
        ("manifest truncated", "rank-0.manifest", |p| {
            let b = std::fs::read(p).unwrap();
            std::fs::write(p, &b[..b.len() / 2]).unwrap();
        }),
        ("manifest not valid at all", "rank-0.manifest", |p| {
            std::fs::write(p, b"{\"hello\": 1}").unwrap()
        }),
        ("commit flip", "COMMIT", |p| flip(p, 70)),
        ("commit truncated", "COMMIT", |p| {
            std::fs::write(p, b"LZCM").unwrap()
        }),
        ("manifest missing", "rank-0.manifest", |p| {
            std::fs::remove_file(p).unwrap()
        }),
    ];
    for (what, needle, damage) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
        let a = checkpoint(&mut repo, 1, 1, 1000);
        let b = checkpoint(&mut repo, 1, 2, 1000);
        drop(repo);
        let target = dir
            .path()
            .join("checkpoints")
            .join(b.to_string())
            .join(needle);
        damage(&target);
        let reader = RepoReader::open(dir.path()).unwrap();
        let e = reader.load_part(b, Rank(0)).unwrap_err();
        assert_eq!(e.path(), Some(target.as_path()), "{what}: {e}");
        assert!(
            matches!(e.kind(), StoreErrorKind::Corrupt | StoreErrorKind::Missing),
            "{what}: {e}"
        );
        let (s, dmg) = reader.newest_intact().unwrap().unwrap();
        assert_eq!(s.id, a, "{what}");
        assert_eq!(dmg[0].checkpoint, b, "{what}");
        assert_holds(dir.path(), a, 1, 1, 1000);
        let rep = reader.verify(&|_, _| {}).unwrap();
        assert!(!rep.problems.is_empty(), "{what}");
        assert_eq!(rep.problems[0].path, target, "{what}");
        assert_eq!(rep.problems[0].breaks, vec![b], "{what}");
    }
}

#[test]
fn missing_and_truncated_chunks() {
    for truncate in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
        let a = checkpoint(&mut repo, 1, 1, 1000);
        let b = checkpoint(&mut repo, 1, 2, 1000);
        drop(repo);
        let reader = RepoReader::open(dir.path()).unwrap();
        let d = reader.manifest(b, Rank(0)).unwrap().objects[1].chunks[0].digest;
        let path = files(dir.path(), &d.to_hex())[0].clone();
        if truncate {
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        let e = reader.load_part(b, Rank(0)).unwrap_err();
        assert_eq!(e.path(), Some(path.as_path()));
        let want = if truncate {
            StoreErrorKind::Corrupt
        } else {
            StoreErrorKind::Missing
        };
        assert_eq!(e.kind(), want, "{e}");
        assert_eq!(reader.newest_intact().unwrap().unwrap().0.id, a);
    }
}

#[test]
fn future_major_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Repository::open(dir.path(), RepoOptions::default()).unwrap());
    let mut f = std::fs::read(dir.path().join("FORMAT")).unwrap();
    f[8] = 2; // major 2
    std::fs::write(dir.path().join("FORMAT"), &f).unwrap();
    let e = RepoReader::open(dir.path()).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::VersionUnsupported);
    let v = format!("2.{}", lazarus_format::FORMAT_MINOR);
    assert!(e.to_string().contains(&v), "{e}");
    let e = Repository::open(dir.path(), RepoOptions::default()).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::VersionUnsupported);
    // A non-repository directory is not silently adopted.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("data.txt"), b"x").unwrap();
    let e = Repository::open(other.path(), RepoOptions::default()).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Missing);
}

#[test]
fn full_disk_fails_cleanly_and_keeps_the_last_checkpoint() {
    let mut commit_failures = 0;
    for budget in [
        0u64, 5000, 20_000, 40_300, 41_000, 41_500, 42_000, 42_500, 43_000, 60_000,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut repo = Repository::open(
            dir.path(),
            RepoOptions {
                codec: lazarus_store::Codec::None,
                ..small_opts()
            },
        )
        .unwrap();
        let a = checkpoint(&mut repo, 1, 1, 5000);
        repo.set_write_budget(budget);
        let pending = repo.begin(1).unwrap();
        let bytes = le_f64(&field(0, 2, 5000));
        let step = 2u64.to_le_bytes();
        let r = pending.part_writer().write(
            Rank(0),
            &[bulk_f64("field", &bytes, None), serde_obj("step", &step)],
        );
        match r {
            Err(e) => {
                assert_eq!(e.kind(), StoreErrorKind::NoSpace, "budget {budget}: {e}");
                assert!(e.is_retryable());
                repo.abort(pending).unwrap();
            }
            Ok(rec) => match repo.commit(pending, vec![rec], Default::default()) {
                Err(e) => {
                    commit_failures += 1;
                    assert_eq!(e.kind(), StoreErrorKind::NoSpace, "budget {budget}: {e}");
                }
                Ok(c) => {
                    assert_holds(dir.path(), c.summary.id, 1, 2, 5000);
                    continue;
                }
            },
        }
        let reader = RepoReader::open(dir.path()).unwrap();
        assert_eq!(reader.newest_intact().unwrap().unwrap().0.id, a);
        assert!(
            files(dir.path(), ".tmp-").is_empty(),
            "temp files left at budget {budget}"
        );
        repo.set_write_budget(u64::MAX);
        repo.retain(5).unwrap();
        assert!(reader.verify(&|_, _| {}).unwrap().problems.is_empty());
        let c = checkpoint(&mut repo, 1, 3, 5000);
        assert_holds(dir.path(), c, 1, 3, 5000);
    }
    assert!(commit_failures >= 1, "no budget hit the COMMIT write");
}

#[test]
fn one_writer_per_repository() {
    let dir = tempfile::tempdir().unwrap();
    let opts = RepoOptions {
        job_token: Some("job-1".into()),
        ..RepoOptions::default()
    };
    let repo = Repository::open(dir.path(), opts.clone()).unwrap();
    let e = Repository::open(dir.path(), RepoOptions::default()).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Locked);
    assert!(
        e.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{e}"
    );
    // Same job may share; another job may not, even with open_shared.
    let shared = Repository::open_shared(dir.path(), opts.clone()).unwrap();
    drop(shared);
    let other = RepoOptions {
        job_token: Some("job-2".into()),
        ..RepoOptions::default()
    };
    assert_eq!(
        Repository::open_shared(dir.path(), other)
            .unwrap_err()
            .kind(),
        StoreErrorKind::Locked
    );
    // The token itself never lands on disk.
    let lock = std::fs::read_to_string(dir.path().join("LOCK")).unwrap();
    assert!(!lock.contains("job-1"), "{lock}");
    drop(repo);
    Repository::open(dir.path(), RepoOptions::default()).unwrap();
}

/// Found in review: a process sharing its job's lock (rank 0 under `lazarus run`) always
/// said the lock was held. Once the holder died (the kernel frees its flock; `lazarus gc`
/// takes a stale lock at once) the sharer went on committing and collecting beside
/// whoever took the repository next. Now a sharer checks that someone still holds the
/// flock and that `LOCK` names its job before every commit and deletion.
#[test]
fn a_sharer_is_fenced_once_the_holder_dies() {
    let dir = tempfile::tempdir().unwrap();
    let opts = RepoOptions {
        job_token: Some("job-1".into()),
        ..small_opts()
    };
    let holder = Repository::open(dir.path(), opts.clone()).unwrap();
    let mut shared = Repository::open_shared(dir.path(), opts.clone()).unwrap();
    let first = checkpoint(&mut shared, 1, 1, 1500);
    // The holder dies: its flock is gone.
    drop(holder);
    let pending = shared.begin(1).unwrap();
    let b = le_f64(&field(0, 2, 1500));
    let receipt = pending
        .part_writer()
        .write(Rank(0), &[bulk_f64("field", &b, None)])
        .unwrap();
    let e = shared
        .commit(pending, vec![receipt], lazarus_store::CommitMeta::default())
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Locked, "{e}");
    assert!(e.to_string().contains("holder is gone"), "{e}");
    assert_eq!(shared.retain(1).unwrap_err().kind(), StoreErrorKind::Locked);
    // Another writer took the repository over: still refused, naming it.
    let other = Repository::open(dir.path(), RepoOptions::default()).unwrap();
    let e = shared.retain(1).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Locked, "{e}");
    assert!(e.to_string().contains("held by"), "{e}");
    drop(other);
    let reader = RepoReader::open(dir.path()).unwrap();
    let ids: Vec<CheckpointId> = reader.committed().unwrap().iter().map(|c| c.id).collect();
    assert_eq!(
        ids,
        vec![first],
        "only the commit made under the live holder"
    );
}

/// Found in review: COMMIT was read whole before its size was checked, so a sparse
/// multi-GB file under that name was read (and allocated) at every scan. It is refused by
/// its size, as damage naming it, and the older checkpoint restores.
#[test]
fn an_oversized_commit_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let older = checkpoint(&mut repo, 1, 1, 1500);
    let newest = checkpoint(&mut repo, 1, 2, 1500);
    drop(repo);
    let commit = dir
        .path()
        .join("checkpoints")
        .join(newest.to_string())
        .join("COMMIT");
    // One byte more than any COMMIT can be: small enough that the old code allocated
    // and read it (then failed to decode it), large enough to be refused by size.
    let max = lazarus_format::ENVELOPE_HEADER_LEN as u64 + lazarus_format::MAX_ENVELOPE_BODY;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&commit)
        .unwrap()
        .set_len(max + 1)
        .unwrap();
    let reader = RepoReader::open(dir.path()).unwrap();
    let e = reader.commit_record(newest).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("COMMIT"), "{e}");
    assert!(
        e.to_string().contains("more than any COMMIT"),
        "refused by size: {e}"
    );
    let (found, _) = reader.newest_intact().unwrap().unwrap();
    assert_eq!(found.id, older);
}

/// Found in review: the collection of a damaged checkpoint read every file in its
/// directory whole, so a stray huge file (a core dump) could make `lazarus gc` or rank
/// 0's retention run out of memory. Only COMMIT and manifests are read.
#[test]
fn gc_does_not_read_a_huge_stray_file_in_a_damaged_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let damaged = checkpoint(&mut repo, 1, 1, 1500);
    let kept = checkpoint(&mut repo, 1, 2, 1500);
    let cdir = dir.path().join("checkpoints").join(damaged.to_string());
    let commit = cdir.join("COMMIT");
    let mut bytes = std::fs::read(&commit).unwrap();
    let k = bytes.len() - 1;
    bytes[k] ^= 1;
    std::fs::write(&commit, bytes).unwrap();
    // 1 GiB, sparse: the old collection allocated and read it whole.
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(cdir.join("core"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let rep = repo.retain(1).unwrap();
    assert_eq!(rep.kept, vec![kept]);
    let peak = lazarus_testbed::peak_rss().expect("VmHWM in /proc/self/status");
    assert!(
        peak < 512 << 20,
        "the stray file was read: peak RSS {} MiB",
        peak >> 20
    );
}

#[test]
fn retain_keeps_newest_and_sweeps_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let ids: Vec<CheckpointId> = (1..=5).map(|s| checkpoint(&mut repo, 2, s, 1500)).collect();
    let leftover = repo.begin(2).unwrap();
    let b = le_f64(&field(0, 99, 1500));
    leftover
        .part_writer()
        .write(Rank(0), &[bulk_f64("field", &b, None)])
        .unwrap();
    assert_eq!(
        repo.retain(2).unwrap_err().kind(),
        StoreErrorKind::InvalidArgument
    );
    drop(leftover); // e.g. a crashed checkpoint attempt
    let before = files(&dir.path().join("chunks"), "").len();
    let rep = repo.retain(2).unwrap();
    assert_eq!(rep.kept, ids[3..].to_vec());
    assert_eq!(rep.removed, ids[..3].to_vec());
    assert_eq!(rep.removed_uncommitted.len(), 1);
    assert!(rep.chunks_removed > 0);
    assert_eq!(
        files(&dir.path().join("chunks"), "").len() as u64,
        before as u64 - rep.chunks_removed
    );
    let reader = RepoReader::open(dir.path()).unwrap();
    let v = reader.verify(&|_, _| {}).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(v.intact, ids[3..].to_vec());
    assert_holds(dir.path(), ids[4], 2, 5, 1500);
    // Idempotent.
    let again = repo.retain(2).unwrap();
    assert_eq!(again.chunks_removed, 0);
    // Ids keep increasing past removed ones.
    let next = checkpoint(&mut repo, 1, 6, 10);
    assert!(next > ids[4]);
}

#[test]
fn commit_checks_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let p = repo.begin(2).unwrap();
    let b = le_f64(&field(0, 1, 10));
    let r0 = p
        .part_writer()
        .write(Rank(0), &[bulk_f64("field", &b, None)])
        .unwrap();
    let e = repo
        .commit(p, vec![r0.clone()], Default::default())
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::InvalidArgument);
    assert!(e.to_string().contains("rank 1"), "{e}");
    let p = repo.begin(2).unwrap();
    let e = repo
        .commit(p, vec![r0.clone(), r0], Default::default())
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::InvalidArgument);
    assert!(RepoReader::open(dir.path())
        .unwrap()
        .committed()
        .unwrap()
        .is_empty());
}

/// Regression: an aborted checkpoint's directory is deleted, and the next `begin` used to
/// hand out the same id again; the coordinator refuses non-increasing round ids, so one
/// aborted round wedged checkpointing for the rest of the run.
#[test]
fn aborted_checkpoint_ids_are_never_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let first = checkpoint(&mut repo, 1, 1, 10);
    let aborted = repo.begin(1).unwrap();
    let aborted_id = aborted.id();
    assert!(aborted_id > first);
    repo.abort(aborted).unwrap();
    let next = repo.begin(1).unwrap();
    assert!(
        next.id() > aborted_id,
        "{:?} reused after abort of {aborted_id:?}",
        next.id()
    );
    let b = le_f64(&field(0, 2, 10));
    let r = next
        .part_writer()
        .write(Rank(0), &[bulk_f64("field", &b, None)])
        .unwrap();
    let committed = repo.commit(next, vec![r], Default::default()).unwrap();
    assert!(committed.summary.id > aborted_id);
    let ids: Vec<CheckpointId> = RepoReader::open(dir.path())
        .unwrap()
        .committed()
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec![first, committed.summary.id]);
}

#[test]
fn retain_protecting_keeps_an_older_checkpoint_it_accepts_and_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let ids: Vec<CheckpointId> = (1..=5).map(|s| checkpoint(&mut repo, 2, s, 1500)).collect();
    let rep = repo.retain_protecting(1, &|c| c.step == 2).unwrap();
    assert_eq!(rep.kept, vec![ids[1], ids[4]]);
    assert_eq!(rep.removed, vec![ids[0], ids[2], ids[3]]);
    let reader = RepoReader::open(dir.path()).unwrap();
    let v = reader.verify(&|_, _| {}).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_holds(dir.path(), ids[1], 2, 2, 1500);
    // Without protection it goes like any other.
    let rep = repo.retain(1).unwrap();
    assert_eq!(rep.removed, vec![ids[1]]);
}

/// Two checkpoints name one chunk; a crafted (resealed) manifest of the newer one gives
/// it another length. The load refuses that checkpoint, so verify must too: it read each
/// chunk at the first length it saw and called both intact.
#[test]
fn verify_reads_a_shared_chunk_at_every_length_a_manifest_gives() {
    use lazarus_format::{ChunkDigest, CommitRecord, Manifest};
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    let mut repo = Repository::open(&root, small_opts()).unwrap();
    let old = checkpoint(&mut repo, 1, 1, 300);
    let new = checkpoint(&mut repo, 1, 1, 300); // the same content: every chunk shared
    drop(repo);
    let dir = root.join("checkpoints").join(new.to_string());
    let mpath = dir.join("rank-0.manifest");
    let mut m = Manifest::decode(&std::fs::read(&mpath).unwrap()).unwrap();
    let o = m
        .objects
        .iter_mut()
        .find(|o| o.info.name == "step")
        .unwrap();
    o.bytes += 1;
    o.chunks[0].len += 1;
    let mbytes = m.encode();
    std::fs::write(&mpath, &mbytes).unwrap();
    let cpath = dir.join("COMMIT");
    let mut c = CommitRecord::decode(&std::fs::read(&cpath).unwrap()).unwrap();
    c.parts[0].manifest_digest = ChunkDigest::of(&mbytes);
    std::fs::write(&cpath, c.encode()).unwrap();

    let reader = RepoReader::open(&root).unwrap();
    assert!(
        reader.load_part(new, Rank(0)).is_err(),
        "the load refuses it"
    );
    let report = reader.verify(&|_, _| {}).unwrap();
    assert_eq!(report.intact, vec![old], "{:?}", report.problems);
    assert!(reader.verify_checkpoint(new).is_err());
    reader.verify_checkpoint(old).unwrap();
}

/// Bug: `gc --keep 1` kept the newest committed checkpoint although a lost chunk made it
/// unrestorable, and removed the only intact one. The newest intact checkpoint stays.
#[test]
fn gc_keeps_the_newest_intact_checkpoint_when_the_newest_are_broken() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    let mut repo = Repository::open(&root, small_opts()).unwrap();
    let good = checkpoint(&mut repo, 1, 1, 3000);
    let broken = checkpoint(&mut repo, 1, 2, 3000);
    let m = RepoReader::open(&root)
        .unwrap()
        .manifest(broken, Rank(0))
        .unwrap();
    let hex = m.objects[0].chunks[0].digest.to_hex();
    std::fs::remove_file(root.join("chunks").join(&hex[..2]).join(&hex)).unwrap();
    // As `lazarus gc` does: a handle of its own (the writer's handle trusts its own
    // newest commit, whose chunks it proved present).
    drop(repo);
    let mut repo = Repository::open(&root, small_opts()).unwrap();
    let report = repo.retain(1).unwrap();
    assert!(report.kept.contains(&good), "{:?}", report.kept);
    assert!(report.kept.contains(&broken), "{:?}", report.kept);
    assert!(report.removed.is_empty(), "{:?}", report.removed);
    drop(repo);
    assert_holds(&root, good, 1, 1, 3000);
}

/// Found in review: `lazarus gc --keep K` spared only the newest intact checkpoint, so
/// with K = 2 and a newest checkpoint missing a chunk, one intact checkpoint was kept and
/// the older intact ones deleted. `retain_intact_with_progress` keeps K intact ones.
#[test]
fn gc_keep_k_keeps_k_intact_checkpoints_when_the_newest_lost_a_chunk() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    let mut repo = Repository::open(&root, small_opts()).unwrap();
    let ids: Vec<_> = (1..=4).map(|s| checkpoint(&mut repo, 1, s, 3000)).collect();
    let broken = ids[3];
    let m = RepoReader::open(&root)
        .unwrap()
        .manifest(broken, Rank(0))
        .unwrap();
    let hex = m.objects[0].chunks[0].digest.to_hex();
    std::fs::remove_file(root.join("chunks").join(&hex[..2]).join(&hex)).unwrap();
    drop(repo);
    let mut repo = Repository::open(&root, small_opts()).unwrap();
    let report = repo.retain_intact_with_progress(2, &|_, _, _| {}).unwrap();
    assert_eq!(report.kept, ids[1..].to_vec(), "{report:?}");
    assert_eq!(report.removed, vec![ids[0]], "{report:?}");
    drop(repo);
    assert_holds(&root, ids[1], 1, 2, 3000);
    assert_holds(&root, ids[2], 1, 3, 3000);
}

/// Bug: a symbolic link named like a checkpoint directory, into another repository, was
/// taken for one of ours: `gc` removed that repository's COMMIT through it.
#[test]
fn a_symlinked_checkpoint_directory_is_not_followed() {
    let d = tempfile::tempdir().unwrap();
    let (root, other) = (d.path().join("repo"), d.path().join("other"));
    for r in [&root, &other] {
        let mut repo = Repository::open(r, small_opts()).unwrap();
        checkpoint(&mut repo, 1, 1, 300);
        checkpoint(&mut repo, 1, 2, 300);
    }
    let name = format!("{:016}", 1);
    std::fs::remove_dir_all(root.join("checkpoints").join(&name)).unwrap();
    std::os::unix::fs::symlink(
        other.join("checkpoints").join(&name),
        root.join("checkpoints").join(&name),
    )
    .unwrap();
    let mut repo = Repository::open(&root, small_opts()).unwrap();
    let report = repo.retain(1).unwrap();
    assert_eq!(report.kept, vec![CheckpointId(2)]);
    assert!(other
        .join("checkpoints")
        .join(&name)
        .join("COMMIT")
        .exists());
    let ids: Vec<_> = RepoReader::open(&root)
        .unwrap()
        .checkpoint_dirs()
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, vec![CheckpointId(2)]);
    assert_holds(&other, CheckpointId(1), 1, 1, 300);
}

/// `remove_uncommitted` (what a coordinator calls after a failed COMMIT write, before it
/// announces the abort) removes a directory without COMMIT and refuses, deleting nothing,
/// one with COMMIT.
#[test]
fn remove_uncommitted_removes_only_a_checkpoint_without_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let committed = checkpoint(&mut repo, 1, 1, 3000);
    let e = repo.remove_uncommitted(committed).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains(&committed.to_string()), "{e}");
    assert_holds(dir.path(), committed, 1, 1, 3000);

    let pending = repo.begin(1).unwrap();
    let id = pending.id();
    let r = pending
        .part_writer()
        .write(
            Rank(0),
            &[bulk_f64("field", &le_f64(&field(0, 2, 3000)), None)],
        )
        .unwrap();
    // A commit that fails with COMMIT not written (a full disk) leaves the directory.
    repo.set_write_budget(0);
    let e = repo
        .commit(pending, vec![r], Default::default())
        .unwrap_err();
    assert_ne!(e.kind(), StoreErrorKind::CommitUnknown, "{e}");
    let reader = RepoReader::open(dir.path()).unwrap();
    assert_eq!(
        reader.commit_presence(id).unwrap(),
        lazarus_store::Presence::Pending
    );
    repo.remove_uncommitted(id).unwrap();
    assert_eq!(
        reader.commit_presence(id).unwrap(),
        lazarus_store::Presence::Gone
    );
}

/// Regression (review of the stale-listing stop): a handle that removed the checkpoint it
/// had just committed took that checkpoint's absence from the listing for a stale listing,
/// and every later collection stopped until its next commit.
#[test]
fn a_collection_after_removing_the_checkpoint_just_committed_is_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let first = checkpoint(&mut repo, 1, 1, 100);
    let newest = checkpoint(&mut repo, 1, 2, 100);
    repo.remove_checkpoint(newest).unwrap();
    let rep = repo.retain(1).unwrap();
    assert_eq!(rep.kept, vec![first]);
    assert_holds(dir.path(), first, 1, 1, 100);
}
