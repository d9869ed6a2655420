//! Regressions (review of the VM mode's WASI host): a guest could remove or replace its own
//! preopened directory, make one `fd_write` allocate memory² / 8 bytes, open directory
//! descriptors without bound, overflow u32 address arithmetic at the end of a full 4 GiB
//! memory, and make every checkpoint read a huge sparse file whole.

mod common;

use common::wasi::func;
use lazarus_vm::wasi::errno::BUSY;
use lazarus_vm::wasi::{Preopen, Wasi, WasiConfig};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `path_*` call `name` under `fd` with one path argument: the errno.
fn path_call(w: &mut Wasi, mem: &mut [u8], name: &str, fd: u64, path: &str) -> i32 {
    mem[100..100 + path.len()].copy_from_slice(path.as_bytes());
    w.call(mem, func(name), &[fd, 100, path.len() as u64])
        .unwrap()
}

/// `path_rename(from_fd, from, to_fd, to)`: the errno.
fn rename_at(w: &mut Wasi, mem: &mut [u8], fd1: u64, from: &str, fd2: u64, to: &str) -> i32 {
    mem[100..100 + from.len()].copy_from_slice(from.as_bytes());
    mem[150..150 + to.len()].copy_from_slice(to.as_bytes());
    let args = [fd1, 100, from.len() as u64, fd2, 150, to.len() as u64];
    w.call(mem, func("path_rename"), &args).unwrap()
}

/// A host with `dirs` preopened as `/d0`, `/d1`, ... (fds 3, 4, ...) and `args`.
fn host_with(dirs: &[&Path], args: &[&str]) -> Wasi {
    Wasi::new(
        WasiConfig {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![],
            preopens: dirs
                .iter()
                .enumerate()
                .map(|(i, d)| Preopen {
                    host: std::fs::canonicalize(d).unwrap(),
                    guest: format!("/d{i}"),
                })
                .collect(),
            seed: 0,
        },
        false,
    )
    .unwrap()
}

/// `rmdir("/data")` reaches the host as `path_remove_directory(3, ".")`: the path reduced
/// to the preopen itself, which was removed (an empty one), changing its parent outside
/// the sandbox; a later resume failed to find the preopen. Renaming it away, or an empty
/// directory over it, went through the same way.
#[test]
fn removing_the_preopened_directory_itself_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (data, other) = (d.path().join("data"), d.path().join("other"));
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir_all(other.join("empty")).unwrap();
    let ino = std::fs::metadata(&data).unwrap().ino();
    let mut w = host_with(&[&data, &other], &["p"]);
    let mut mem = vec![0u8; 65536];
    let busy = i32::from(BUSY);
    for p in [".", "", "x/..", "./."] {
        let r = path_call(&mut w, &mut mem, "path_remove_directory", 3, p);
        assert_eq!(r, busy, "rmdir {p:?}");
        assert!(data.is_dir(), "rmdir {p:?} removed the preopen");
        let r = path_call(&mut w, &mut mem, "path_unlink_file", 3, p);
        assert_eq!(r, busy, "unlink {p:?}");
    }
    // Moving the (empty) preopen into another preopen, or an empty directory over it.
    assert_eq!(rename_at(&mut w, &mut mem, 3, ".", 4, "moved"), busy);
    assert!(!other.join("moved").exists());
    assert_eq!(rename_at(&mut w, &mut mem, 4, "empty", 3, "."), busy);
    assert!(other.join("empty").is_dir());
    assert_eq!(
        std::fs::metadata(&data).unwrap().ino(),
        ino,
        "the same directory"
    );
    // Its contents stay the program's own.
    std::fs::create_dir(data.join("sub")).unwrap();
    assert_eq!(
        path_call(&mut w, &mut mem, "path_remove_directory", 3, "sub"),
        0
    );
    assert!(!data.join("sub").exists());
}
