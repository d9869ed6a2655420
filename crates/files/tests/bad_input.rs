//! Bad input and hostile conditions: files changed outside the job between the crash and
//! the restart, a full disk (injected, and a real small tmpfs), a checkpoint written by
//! another number of ranks, output publication across a crash after COMMIT.

mod common;

use common::{disk_tree, refused, Rig, Tmpfs, CHUNK};
use lazarus_files::{FilesErrorKind, RestoreError, RestoreTarget};
use lazarus_store::RepoReader;
use std::io::{ErrorKind, Write};

#[test]
fn a_file_changed_outside_the_job_is_refused_by_name_unless_accepted() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    f.write("keep.bin", vec![1u8; 3 * CHUNK as usize]).unwrap();
    f.write("log", b"line 1\n").unwrap();
    let c = rig.checkpoint(&f);
    // The job's own change after the checkpoint is fine...
    f.append("log").unwrap().write_all(b"line 2\n").unwrap();
    drop(f);
    let want = {
        let f = rig.restored(Some(c), false).unwrap();
        drop(f);
        disk_tree(&rig.work())
    };
    // ...a change by someone else is not.
    let p = rig.work().join("keep.bin");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[CHUNK as usize + 5] ^= 0xff;
    std::fs::write(&p, &bytes).unwrap();
    let e = refused(rig.restored(Some(c), false));
    assert_eq!(e.kind(), FilesErrorKind::ForeignChange);
    let msg = e.to_string();
    assert!(msg.contains("keep.bin") && msg.contains("differ"), "{msg}");
    assert_eq!(
        std::fs::read(&p).unwrap(),
        bytes,
        "a refused restore changes nothing"
    );

    // A size change, an unknown file and a missing file are refused too.
    std::fs::write(&p, b"short").unwrap();
    let e = refused(rig.restored(Some(c), false));
    assert!(e.to_string().contains("5 bytes"), "{e}");
    std::fs::write(rig.work().join("intruder"), b"?").unwrap();
    let e = refused(rig.restored(Some(c), false));
    assert!(
        e.to_string().contains("more"),
        "all differences are counted: {e}"
    );
    std::fs::remove_file(rig.work().join("log")).unwrap();
    let e = refused(rig.restored(Some(c), false));
    assert_eq!(e.kind(), FilesErrorKind::ForeignChange);

    // Accepted: everything goes back to the checkpoint's content.
    let _f = rig.restored(Some(c), true).unwrap();
    assert_eq!(disk_tree(&rig.work()), want);
}

#[test]
fn files_in_the_area_without_a_journal_are_refused() {
    let rig = Rig::new();
    std::fs::create_dir_all(rig.work()).unwrap();
    std::fs::write(rig.work().join("stale-output"), b"from another run").unwrap();
    let e = refused(rig.restored(None, false));
    assert!(e.to_string().contains("stale-output"), "{e}");
    let _f = rig.restored(None, true).unwrap();
    assert!(disk_tree(&rig.work()).is_empty());
}

#[test]
fn journal_full_fails_the_write_and_leaves_the_file_unchanged() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    f.write("data", vec![3u8; 10_000]).unwrap();
    let c = rig.checkpoint(&f);
    f.limit_journal_bytes(0);
    let h = f.options().write(true).open("data").unwrap();
    let e = h.write_all_at(&[9u8; 100], 10).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StorageFull, "{e}");
    assert!(e.to_string().contains("journal"), "{e}");
    assert_eq!(
        std::fs::read(rig.work().join("data")).unwrap(),
        vec![3u8; 10_000]
    );
    let e = f.create("new").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StorageFull, "{e}");
    assert!(!rig.work().join("new").exists());
    f.limit_journal_bytes(1 << 20);
    h.write_all_at(&[9u8; 100], 10).unwrap();
    drop(h);
    drop(f);
    let _f = rig.restored(Some(c), false).unwrap();
    assert_eq!(
        std::fs::read(rig.work().join("data")).unwrap(),
        vec![3u8; 10_000]
    );
}

#[test]
fn real_full_disk_fails_writes_cleanly_and_the_restore_is_exact() {
    let mut rig = Rig::new();
    let mnt = rig.dir.path().join("small");
    let Some(_fs) = Tmpfs::mount_or_skip(&mnt, "real_full_disk") else {
        return;
    };
    rig.root = mnt.join("managed");
    let f = rig.restored(None, false).unwrap();
    f.write("data", vec![5u8; 100_000]).unwrap();
    let mut log = f.append("log").unwrap();
    log.write_all(b"committed\n").unwrap();
    let c = rig.checkpoint(&f);
    // Fill the file system.
    let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
    let block = vec![0u8; 4096];
    while filler.write_all(&block).is_ok() {}
    let _ = filler.sync_all();
    // The first change after the checkpoint needs a journal record: no room.
    let h = f.options().write(true).open("data").unwrap();
    let mut failed = 0;
    for i in 0..50u64 {
        match h.write_all_at(&[7u8; 4096], i * 2000) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::StorageFull, "{e}");
                failed += 1;
            }
        }
        if log.write_all(&vec![b'x'; 5000]).is_err() {
            failed += 1;
        }
    }
    assert!(failed > 0, "the full disk was never hit");
    drop((h, log));
    drop(f);
    drop(filler);
    std::fs::remove_file(mnt.join("filler")).unwrap();
    let _f = rig.restored(Some(c), false).unwrap();
    assert_eq!(
        std::fs::read(rig.work().join("data")).unwrap(),
        vec![5u8; 100_000]
    );
    assert_eq!(
        std::fs::read(rig.work().join("log")).unwrap(),
        b"committed\n"
    );
}

#[test]
fn another_world_size_is_refused_for_per_rank_files() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    f.write("x", b"1").unwrap();
    let c = rig.checkpoint(&f);
    drop(f);
    let reader = RepoReader::open(rig.repo.path()).unwrap();
    let f = rig.files(false);
    let e = f
        .prepare_restore(Some(RestoreTarget {
            reader: &reader,
            id: c,
            world: 1,
            size: 2,
        }))
        .unwrap_err();
    match e {
        RestoreError::Files(e) => {
            assert_eq!(e.kind(), FilesErrorKind::Incompatible);
            assert!(e.to_string().contains("restart with 1"), "{e}");
        }
        RestoreError::Store(e) => panic!("{e}"),
    }
}

#[test]
fn output_is_published_only_after_commit_and_repaired_after_a_crash() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    f.create_dir("snaps").unwrap();
    f.mark_output("log").unwrap();
    f.mark_output("snaps").unwrap();
    let out = rig.root.join("output/rank-0");
    let mut log = f.append("log").unwrap();
    log.write_all(b"a\n").unwrap();
    f.write("snaps/s1", b"snapshot 1").unwrap();
    assert!(
        !out.join("log").exists(),
        "nothing published before a commit"
    );
    rig.checkpoint(&f);
    assert_eq!(std::fs::read(out.join("log")).unwrap(), b"a\n");
    assert_eq!(std::fs::read(out.join("snaps/s1")).unwrap(), b"snapshot 1");
    log.write_all(b"b\n").unwrap();
    f.write("snaps/s1", b"rewritten").unwrap();
    assert_eq!(std::fs::read(out.join("log")).unwrap(), b"a\n");
    // COMMIT lands, then the process dies before publishing.
    let (c2, snap) = rig.commit_only(&f);
    drop(snap);
    assert_eq!(std::fs::read(out.join("log")).unwrap(), b"a\n");
    log.write_all(b"lost\n").unwrap();
    drop(log);
    drop(f);
    let f = rig.restored(Some(c2), false).unwrap();
    assert_eq!(
        std::fs::read(out.join("log")).unwrap(),
        b"a\nb\n",
        "published by the restore"
    );
    assert_eq!(std::fs::read(out.join("snaps/s1")).unwrap(), b"rewritten");
    // Removing the working copy does not take back published output.
    f.remove_file("snaps/s1").unwrap();
    rig.checkpoint(&f);
    assert!(out.join("snaps/s1").exists());
}

#[test]
fn after_a_power_loss_changes_in_touched_files_are_the_jobs_and_others_still_refused() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    f.write("written", vec![1u8; 3 * CHUNK as usize]).unwrap();
    f.write("untouched", vec![2u8; CHUNK as usize]).unwrap();
    let c = rig.checkpoint(&f);
    let want = disk_tree(&rig.work());
    let h = f.options().write(true).open("written").unwrap();
    h.write_all_at(&[9u8; 10], CHUNK as u64 + 1).unwrap();
    h.set_len(10).unwrap();
    drop(h);
    // The Dirty/Resized records are lost, the data reached the disk.
    f.simulate_power_loss().unwrap();
    drop(f);
    let p = rig.work().join("untouched");
    std::fs::write(&p, b"edited by hand").unwrap();
    let e = refused(rig.restored(Some(c), false));
    assert!(e.to_string().contains("untouched"), "{e}");
    std::fs::write(&p, vec![2u8; CHUNK as usize]).unwrap();
    let _f = rig.restored(Some(c), false).unwrap();
    assert_eq!(disk_tree(&rig.work()), want);
}

#[test]
fn a_damaged_base_state_is_named() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    f.write("x", b"1").unwrap();
    let c = rig.checkpoint(&f);
    drop(f);
    let state = rig.root.join(".lazarus/rank-0/state");
    let mut b = std::fs::read(&state).unwrap();
    let n = b.len();
    b[n - 1] ^= 1;
    std::fs::write(&state, b).unwrap();
    let e = refused(rig.restored(Some(c), false));
    assert_eq!(e.kind(), FilesErrorKind::Corrupt);
    assert!(e.to_string().contains("state"), "{e}");
}
