//! Regressions from an adversarial review of the managed files (2026-12-06): a failed
//! namespace change, a changed chunk size, planted symbolic links, names that are not
//! UTF-8 and offsets at the end of the file-offset range. Each failed on the code before
//! its fix.

mod common;

use common::{refused, Rig, CHUNK};
use lazarus_files::{Files, FilesConfig, FilesErrorKind};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

/// A create or rename whose system call fails after its journal record (a name too long
/// here; a full disk or no permission in the field) used to leave the record: after a
/// later crash the restart took the job's own tree for someone else's and refused.
#[test]
fn a_failed_create_or_rename_does_not_refuse_the_next_restart() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    f.write("a", b"x").unwrap();
    let c = rig.checkpoint(&f);
    let long = "n".repeat(300); // longer than NAME_MAX, a valid managed path
    let e = f.create(&long).unwrap_err();
    assert!(e.to_string().contains(&long), "{e}");
    let e = f.rename("a", "m".repeat(300)).unwrap_err();
    assert!(e.to_string().contains("renaming"), "{e}");
    f.create_dir("d").unwrap();
    let e = f.create_dir(format!("d/{}", "k".repeat(300))).unwrap_err();
    assert!(e.to_string().contains("creating the directory"), "{e}");
    // The job goes on after the errors, then crashes before the next checkpoint.
    f.write("b", b"y").unwrap();
    f.write("a", b"changed").unwrap();
    drop(f);
    let g = rig
        .restored(Some(c), false)
        .expect("the restart is not refused");
    assert_eq!(g.list(), vec!["a".to_string()]);
    assert_eq!(std::fs::read(rig.work().join("a")).unwrap(), b"x");
}

/// Restored from a checkpoint written with another chunk size, the job's writes were
/// journaled in its own chunk size but read back in the checkpoint's: after a crash the
/// restart refused the job's own write as someone else's.
#[test]
fn a_changed_chunk_size_then_a_crash_restarts() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    let original = vec![1u8; 8 * CHUNK as usize];
    f.write("data", &original).unwrap();
    let c = rig.checkpoint(&f);
    drop(f);
    let big = |root| {
        Files::new(FilesConfig {
            root,
            rank: 0,
            chunk: 4 * CHUNK as u64,
            accept_changes: false,
        })
        .unwrap()
    };
    let g = big(rig.root.clone());
    rig.restore(&g, Some(c)).unwrap();
    let h = g.options().write(true).open("data").unwrap();
    h.write_all_at(b"the job's own write", 2 * CHUNK as u64 + 5)
        .unwrap();
    drop(h);
    drop(g); // a crash before the next checkpoint
    let g2 = big(rig.root.clone());
    rig.restore(&g2, Some(c))
        .unwrap_or_else(|e| panic!("the job's own write was refused: {e}"));
    assert_eq!(std::fs::read(rig.work().join("data")).unwrap(), original);
    // And the re-hashed base goes on working: a checkpoint, a write, a crash, a restore.
    let c2 = rig.checkpoint(&g2);
    g2.write("data", b"short").unwrap();
    drop(g2);
    let g3 = big(rig.root.clone());
    rig.restore(&g3, Some(c2)).unwrap();
    assert_eq!(std::fs::read(rig.work().join("data")).unwrap(), original);
}

/// The rank's area replaced by a symbolic link: with `accept_file_changes` the restore
/// used to remove everything below the link's target as "appeared outside the job".
#[test]
fn a_symlinked_rank_area_is_refused_even_when_accepting_changes() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    f.write("a", b"x").unwrap();
    let c = rig.checkpoint(&f);
    drop(f);
    let elsewhere = rig.dir.path().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("sub")).unwrap();
    std::fs::write(elsewhere.join("sub/important"), b"!").unwrap();
    std::fs::remove_dir_all(rig.work()).unwrap();
    std::os::unix::fs::symlink(&elsewhere, rig.work()).unwrap();
    for accept in [false, true] {
        let e = refused(rig.restored(Some(c), accept));
        assert_eq!(e.kind(), FilesErrorKind::InvalidPath, "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(e.to_string().contains("rank-0"), "{e}");
    }
    assert_eq!(
        std::fs::read(elsewhere.join("sub/important")).unwrap(),
        b"!"
    );
}

/// A name that is not UTF-8 was listed under a lossy name: with `accept_file_changes`
/// its removal failed after the restore had begun, and every later restore failed
/// the same way.
#[test]
fn a_name_that_is_not_utf8_is_refused_before_anything_changes() {
    let mut rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    f.write("a", b"x").unwrap();
    let c = rig.checkpoint(&f);
    f.write("a", b"the job's change").unwrap();
    drop(f);
    let bad = rig.work().join(std::ffi::OsStr::from_bytes(b"bad\xff"));
    std::fs::write(&bad, b"?").unwrap();
    for accept in [false, true, true] {
        let e = refused(rig.restored(Some(c), accept));
        assert_eq!(e.kind(), FilesErrorKind::InvalidPath, "{e}");
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }
    // Nothing changed; once the name is gone the restore goes through.
    assert_eq!(std::fs::read(&bad).unwrap(), b"?");
    std::fs::remove_file(&bad).unwrap();
    rig.restored(Some(c), false).unwrap();
    assert_eq!(std::fs::read(rig.work().join("a")).unwrap(), b"x");
}

/// Publication wrote through a symbolic link planted at the temp name of a replaced
/// copy (truncating the link's target) and appended through one planted at the
/// published copy.
#[test]
fn publishing_never_writes_through_a_planted_symlink() {
    let mut rig = Rig::new();
    let victim = rig.dir.path().join("victim.txt");
    std::fs::write(&victim, b"precious\n").unwrap();
    let f = rig.restored(None, false).unwrap();
    f.mark_output("out.log").unwrap();
    f.append("out.log").unwrap().write_all(b"v1\n").unwrap();
    let c = rig.checkpoint(&f);
    let out_dir = rig.root.join("output/rank-0");
    // A rewrite (not an append): the next publication replaces through the temp name.
    f.write("out.log", b"v2 replaced\n").unwrap();
    // The temp name of a replacement (see publish.rs: no managed path can have it).
    std::os::unix::fs::symlink(&victim, out_dir.join(".lazarus\\tmp")).unwrap();
    rig.checkpoint(&f);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
    let published = out_dir.join("out.log");
    assert!(std::fs::symlink_metadata(&published).unwrap().is_file());
    assert_eq!(std::fs::read(&published).unwrap(), b"v2 replaced\n");
    drop(f);
    // The published copy itself replaced by a link: the restore's republication
    // replaces the link instead of appending through it.
    std::fs::remove_file(&published).unwrap();
    std::os::unix::fs::symlink(&victim, &published).unwrap();
    let _f = rig.restored(Some(c), false).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
    assert!(std::fs::symlink_metadata(&published).unwrap().is_file());
    assert_eq!(std::fs::read(&published).unwrap(), b"v1\n");
}

/// A write whose end is past the largest file offset panicked (overflow) in checked
/// builds and wrapped in release builds.
#[test]
fn a_write_past_the_largest_offset_is_an_error_not_a_panic() {
    let rig = Rig::new();
    let f = rig.restored(None, false).unwrap();
    let h = f.create("x").unwrap();
    for off in [u64::MAX - 1, i64::MAX as u64] {
        let e = h.write_all_at(b"abc", off).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("largest file offset"), "{e}");
    }
    h.write_all_at(b"abc", 0).unwrap();
    assert_eq!(f.read("x").unwrap(), b"abc");
}
