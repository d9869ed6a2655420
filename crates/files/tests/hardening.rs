//! Regressions from the second review of the managed files (2026-12-07): publication that
//! stopped at the first unpublishable output, a temp name an output could have, symbolic
//! links followed by live operations, lengths near the end of the offset range, a file
//! truncated behind the job, a torn journal tail hiding `Restoring`, and data-write errors
//! that did not name the file. Each failed on the code before its fix.

mod common;

use common::{disk_tree, Rig, Tmpfs, CHUNK};
use lazarus_files::FilesErrorKind;
use std::io::{ErrorKind, Write};

/// Publication stopped at the first output it could not publish: every later output (in
/// path order) was never published. Here three outputs cannot be published the old way
/// (a name too long for the old temp name, a consumer who deleted a growing published
/// log, a published file where a directory is now needed) and one cannot be published
/// at all; every other output must still be.
#[test]
fn one_unpublishable_output_does_not_block_the_others() {
    let mut rig = Rig::new();
    let out = rig.root.join("output/rank-0");
    let f = rig.restored(None, false).unwrap();
    let long = "n".repeat(250); // a valid name, but `.lazarus-tmp-<name>` is not
    for p in ["a", "log", "z", long.as_str()] {
        f.mark_output(p).unwrap();
    }
    f.write("a", b"a file for now").unwrap();
    f.append("log").unwrap().write_all(b"line 1\n").unwrap();
    rig.checkpoint(&f);
    assert_eq!(std::fs::read(out.join("log")).unwrap(), b"line 1\n");
    assert_eq!(std::fs::read(out.join("a")).unwrap(), b"a file for now");

    // A consumer deletes the published log; the job turns `a` into a directory (its
    // published file stays: output that left the job stays), so `a/x` cannot be
    // published; and the job writes the long-named output and `z`.
    std::fs::remove_file(out.join("log")).unwrap();
    f.remove_file("a").unwrap();
    f.create_dir("a").unwrap();
    f.write("a/x", b"blocked").unwrap();
    f.append("log").unwrap().write_all(b"line 2\n").unwrap();
    f.write(&long, b"long name").unwrap();
    f.write("z", b"last in path order").unwrap();
    rig.checkpoint(&f);

    assert_eq!(
        std::fs::read(out.join("log")).unwrap(),
        b"line 1\nline 2\n",
        "a deleted published log is recreated with the committed content"
    );
    assert_eq!(std::fs::read(out.join(&long)).unwrap(), b"long name");
    assert_eq!(std::fs::read(out.join("z")).unwrap(), b"last in path order");
    // The blocked one is left as it was (and retried at the next commit).
    assert_eq!(std::fs::read(out.join("a")).unwrap(), b"a file for now");
    // Once the consumer clears the way, the next commit publishes it.
    std::fs::remove_file(out.join("a")).unwrap();
    f.append("log").unwrap().write_all(b"line 3\n").unwrap();
    rig.checkpoint(&f);
    assert_eq!(std::fs::read(out.join("a/x")).unwrap(), b"blocked");
    assert_eq!(
        std::fs::read(out.join("log")).unwrap(),
        b"line 1\nline 2\nline 3\n"
    );
}

/// Outputs `x` and `.lazarus-tmp-x`: publishing `x` went through the other output's
/// published copy as its temp file, deleting it for good.
#[test]
fn publish_temp_name_never_collides_with_an_output() {
    let mut rig = Rig::new();
    let out = rig.root.join("output/rank-0");
    let f = rig.restored(None, false).unwrap();
    f.mark_output("x").unwrap();
    f.mark_output(".lazarus-tmp-x").unwrap();
    f.write(".lazarus-tmp-x", b"an output of its own").unwrap();
    f.write("x", b"x v1").unwrap();
    rig.checkpoint(&f);
    f.write("x", b"x v2").unwrap(); // replaced, through the temp name
    rig.checkpoint(&f);
    assert_eq!(std::fs::read(out.join("x")).unwrap(), b"x v2");
    assert_eq!(
        std::fs::read(out.join(".lazarus-tmp-x")).unwrap(),
        b"an output of its own"
    );
    let names: Vec<String> = disk_tree(&out).into_keys().collect();
    assert_eq!(names, [".lazarus-tmp-x", "x"], "no temp file is left");
}

/// Only the final name of a published copy was protected: a directory of the output tree
/// replaced by a symbolic link was followed (`create_dir_all`, then the copy), writing
/// the output into the link's target.
#[test]
fn publishing_never_follows_a_symlinked_output_directory() {
    let mut rig = Rig::new();
    let out = rig.root.join("output/rank-0");
    let elsewhere = rig.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let f = rig.restored(None, false).unwrap();
    f.mark_output("snaps").unwrap();
    f.mark_output("top").unwrap();
    f.create_dir("snaps").unwrap();
    f.write("snaps/1.bin", b"one").unwrap();
    rig.checkpoint(&f);
    assert_eq!(std::fs::read(out.join("snaps/1.bin")).unwrap(), b"one");
    std::fs::remove_dir_all(out.join("snaps")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("snaps")).unwrap();
    f.write("snaps/2.bin", b"two").unwrap();
    f.write("top", b"published").unwrap();
    rig.checkpoint(&f);
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing is written through the link"
    );
    assert_eq!(std::fs::read(out.join("top")).unwrap(), b"published");
    // Once the link is gone, the next commit publishes the directory again.
    std::fs::remove_file(out.join("snaps")).unwrap();
    f.write("top", b"published again").unwrap();
    rig.checkpoint(&f);
    assert_eq!(std::fs::read(out.join("snaps/2.bin")).unwrap(), b"two");
}

/// A symbolic link planted in the working tree (at a name the job is about to create, at
/// a file the job reopens) or at the journal was followed: `files.create` truncated and
/// wrote the link's target.
#[test]
fn live_operations_never_follow_a_planted_symlink() {
    let mut rig = Rig::new();
    let victim = rig.dir.path().join("victim.txt");
    std::fs::write(&victim, b"precious\n").unwrap();
    let f = rig.restored(None, false).unwrap();
    f.write("a", b"managed").unwrap();
    rig.checkpoint(&f);

    // At the journal, restarted at the first change after a checkpoint.
    let journal = rig.root.join(".lazarus/rank-0/journal");
    std::fs::remove_file(&journal).unwrap();
    std::os::unix::fs::symlink(&victim, &journal).unwrap();
    let e = f.create("other").unwrap_err();
    assert!(e.to_string().contains(&*journal.to_string_lossy()), "{e}");
    assert!(!f.exists("other"));
    std::fs::remove_file(&journal).unwrap();

    // At a name that is not yet created.
    let planted = rig.work().join("new");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let e = f.create("new").unwrap_err();
    assert!(e.to_string().contains(&*planted.to_string_lossy()), "{e}");
    assert!(!f.exists("new"));
    std::fs::remove_file(&planted).unwrap();

    // At an existing managed file with no open handle (reopened by path).
    let a = rig.work().join("a");
    std::fs::remove_file(&a).unwrap();
    std::os::unix::fs::symlink(&victim, &a).unwrap();
    let e = f.options().write(true).open("a").unwrap_err();
    assert!(e.to_string().contains(&*a.to_string_lossy()), "{e}");
    let e = f.read("a").unwrap_err();
    assert!(e.to_string().contains(&*a.to_string_lossy()), "{e}");

    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
}

/// `set_len(u64::MAX)` marked 2^52 chunks changed before the system call refused the
/// length: growing the bitmap to that size aborted the process.
#[test]
fn set_len_u64_max_is_an_error() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    let h = f.create("x").unwrap();
    h.write_all_at(b"abc", 0).unwrap();
    let c = rig.checkpoint(&f);
    for len in [u64::MAX, i64::MAX as u64] {
        let e = h.set_len(len).unwrap_err();
        assert!(e.to_string().contains("rank-0/x"), "{e}");
    }
    assert_eq!(h.len(), 3);
    assert_eq!(f.read("x").unwrap(), b"abc");
    // The job goes on: the next checkpoint and a restore see the file as it is.
    h.write_all_at(b"d", 3).unwrap();
    let c2 = rig.checkpoint(&f);
    assert_ne!(c, c2);
    drop((h, f));
    let _g = rig.restored(Some(c2), false).unwrap();
    assert_eq!(std::fs::read(rig.work().join("x")).unwrap(), b"abcd");
}

/// A write ending just below the largest offset passed the range check but marked 2^51
/// chunks changed before `pwrite` refused it (EFBIG): the process aborted.
#[test]
fn write_just_below_i64_max_is_an_error() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    let h = f.create("x").unwrap();
    h.write_all_at(b"abc", 0).unwrap();
    rig.checkpoint(&f);
    let e = h.write_all_at(b"abc", i64::MAX as u64 - 3).unwrap_err();
    assert!(e.to_string().contains("rank-0/x"), "{e}");
    assert_eq!(h.len(), 3);
    assert_eq!(f.len("x").unwrap(), 3);
    let c = rig.checkpoint(&f);
    drop((h, f));
    let _g = rig.restored(Some(c), false).unwrap();
    assert_eq!(std::fs::read(rig.work().join("x")).unwrap(), b"abc");
}

/// A file truncated outside the job between checkpoints was mapped at its remembered
/// length: hashing its changed chunks touched pages past the end (SIGBUS).
#[test]
fn a_file_truncated_outside_the_job_fails_the_checkpoint_by_name() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    let mut log = f.append("results.log").unwrap();
    log.write_all(&vec![b'r'; 3 * CHUNK as usize]).unwrap();
    let c = rig.checkpoint(&f);
    log.write_all(&vec![b's'; 2 * CHUNK as usize]).unwrap();
    let p = rig.work().join("results.log");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(0)
        .unwrap();
    let e = match f.snapshot() {
        Err(e) => e,
        Ok(_) => panic!("the checkpoint of a truncated file was not refused"),
    };
    assert_eq!(e.kind(), FilesErrorKind::ForeignChange, "{e}");
    assert!(e.to_string().contains("results.log"), "{e}");
    assert!(e.to_string().contains("outside the job"), "{e}");
    drop((log, f));
    // The job had resized the file too (its `Resized` record explains any length), so
    // the restart puts it back to the checkpoint's content.
    let _g = rig.restored(Some(c), false).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), vec![b'r'; 3 * CHUNK as usize]);
}

/// A power loss tore the journal's tail; the restart's restore was then killed mid-apply.
/// `Restoring` was appended after the torn bytes, where no reader sees it: the next
/// restart took the job's own half-finished restore for foreign changes and refused.
#[test]
fn restoring_after_a_torn_tail_is_seen() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    f.write("a", vec![1u8; 2 * CHUNK as usize]).unwrap();
    let c = rig.checkpoint(&f);
    f.write("new", b"created after the checkpoint").unwrap();
    f.write("a", b"rewritten").unwrap(); // so `new`'s record is not the last
    drop(f);
    let journal = rig.root.join(".lazarus/rank-0/journal");
    let mut j = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    j.write_all(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe]).unwrap(); // a frame cut short
    drop(j);
    let f = rig.files(false);
    // Past `Restoring` and the deletion of `new`: the tree is half restored.
    f.simulate_crash_after(2);
    assert!(rig.restore(&f, Some(c)).is_err());
    drop(f);
    assert!(!rig.work().join("new").exists(), "the restore got that far");
    let _g = rig
        .restored(Some(c), false)
        .unwrap_or_else(|e| panic!("the interrupted restore was not seen: {e}"));
    assert_eq!(
        std::fs::read(rig.work().join("a")).unwrap(),
        vec![1u8; 2 * CHUNK as usize]
    );
    assert_eq!(disk_tree(&rig.work()).len(), 1);
}

/// A data write that failed (here a real ENOSPC) came back as the bare OS error: no
/// file named, among many open.
#[test]
fn a_full_disk_on_data_write_names_the_file() {
    let mut rig = Rig::new();
    let mnt = rig.dir.path().join("small");
    let Some(_fs) = Tmpfs::mount_or_skip(&mnt, "a_full_disk_on_data_write_names_the_file") else {
        return;
    };
    rig.root = mnt.join("managed");
    let f = rig.restored(None, false).unwrap();
    f.write("other", b"o").unwrap();
    rig.checkpoint(&f);
    // Created since the checkpoint: its writes need no journal record, so the data
    // write itself is what meets the full disk.
    let mut h = f.create("fills-the-disk").unwrap();
    let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
    let block = vec![0u8; 4096];
    while filler.write_all(&block).is_ok() {}
    let e = loop {
        if let Err(e) = h.write_all(&block) {
            break e;
        }
    };
    assert_eq!(e.kind(), ErrorKind::StorageFull, "{e}");
    assert!(e.to_string().contains("rank-0/fills-the-disk"), "{e}");
    // The in-memory length follows what reached the file.
    let on_disk = std::fs::metadata(rig.work().join("fills-the-disk"))
        .unwrap()
        .len();
    assert_eq!(h.len(), on_disk);
}
