//! Regression (review): a checkpoint taken while a descriptor was detached (its file
//! renamed, replaced or deleted while open) was committed with only a warning, although
//! no resume could reopen the descriptor; the journal clear and the GC then left the job
//! with no resumable checkpoint. Such a checkpoint is now postponed until the program
//! closes the descriptor.

mod common;

use lazarus_vm::wasi::Preopen;
use lazarus_vm::{run, Every, VmConfig};

/// Opens `in.txt` for reading at step 0, deletes it at ~10,000, closes the descriptor at
/// ~100,000 and exits with status 7 at ~150,000.
const WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_unlink_file" (func $unlink (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory 1)
  (data (i32.const 16) "in.txt")
  (func (export "_start") (local $i i32)
    (if (call $open (i32.const 3) (i32.const 1) (i32.const 16) (i32.const 6) (i32.const 0)
                    (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 100))
      (then (call $exit (i32.const 1))))
    (loop $l
      (if (i32.eq (local.get $i) (i32.const 10000))
        (then (if (call $unlink (i32.const 3) (i32.const 16) (i32.const 6))
          (then (call $exit (i32.const 2))))))
      (if (i32.eq (local.get $i) (i32.const 100000))
        (then (drop (call $close (i32.load (i32.const 100))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 150000))))
    (call $exit (i32.const 7))))"#;

#[test]
fn no_checkpoint_is_committed_while_a_deleted_file_is_held_open() {
    if !common::have_wasm_opt() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("in.txt"), "input\n").unwrap();
    let p = d.path().join("p.wasm");
    std::fs::write(&p, wat::parse_str(WAT).unwrap()).unwrap();
    let mut c = VmConfig::new(p, vec![]);
    c.repo = Some(d.path().join("repo"));
    c.every = Every::Steps(40_000);
    c.seed = Some(5);
    c.cache_dir = None;
    c.preopens = vec![Preopen {
        host: data,
        guest: ".".into(),
    }];
    let r = run(&c).unwrap();
    assert_eq!(r.exit_code, 7);
    // Due at ~40,000 and ~80,000 (detached: postponed), ~120,000 (closed: taken).
    assert!(r.postponed >= 1, "{r:?}");
    assert_eq!(r.checkpoints.len(), 1, "{r:?}");
}
