//! Shared by the WAT-based tests: Binaryen's presence and the runtimes of this build.
#![allow(dead_code)]

use lazarus_vm::{instrument, RuntimeKind};

/// True when `wasm-opt` runs. Otherwise prints a loud SKIPPED line — or panics under
/// CI (`lazarus_testbed::in_ci`), where `.ci/run` must have installed it.
pub fn have_wasm_opt() -> bool {
    let ok = std::process::Command::new(instrument::wasm_opt_path())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg =
            "SKIPPED: needs Binaryen's wasm-opt (Debian package binaryen; .ci/run installs it)";
        if lazarus_testbed::in_ci() {
            panic!("{msg} — failing because CI is set");
        }
        eprintln!("\n*** {msg} ***\n");
    }
    ok
}

/// The runtimes this build has.
pub fn runtimes() -> Vec<RuntimeKind> {
    [RuntimeKind::Wasmi, RuntimeKind::Wasmtime]
        .into_iter()
        .filter(|r| r.available())
        .collect()
}

/// Drives the WASI host directly (no module): each helper calls one WASI function with
/// its arguments laid out in a scratch memory, as a program would.
pub mod wasi {
    use lazarus_vm::wasi::{sig, Preopen, Wasi, WasiConfig};
    use std::path::Path;

    /// Rights: `fd_read`, `fd_write`.
    pub const READ: u64 = 1 << 1;
    /// See [`READ`].
    pub const WRITE: u64 = 1 << 6;
    /// `oflags`.
    pub const CREAT: u64 = 1;
    /// See [`CREAT`].
    pub const TRUNC: u64 = 8;
    /// `fdflags`.
    pub const APPEND: u64 = 1;

    /// Index of WASI function `name` in the host's table.
    pub fn func(name: &str) -> usize {
        sig::FUNCS.iter().position(|f| f.0 == name).unwrap()
    }

    fn put(mem: &mut [u8], at: usize, s: &str) {
        mem[at..at + s.len()].copy_from_slice(s.as_bytes());
    }

    /// `path_open` under fd 3 with SYMLINK_FOLLOW (wasi-libc's default): the errno, and the
    /// new descriptor when it is 0.
    pub fn try_open(
        w: &mut Wasi,
        mem: &mut [u8],
        path: &str,
        oflags: u64,
        rights: u64,
        fdflags: u64,
    ) -> (i32, u32) {
        put(mem, 100, path);
        let args = [
            3,
            1,
            100,
            path.len() as u64,
            oflags,
            rights,
            0,
            fdflags,
            200,
        ];
        let r = w.call(mem, func("path_open"), &args).unwrap();
        (r, u32::from_le_bytes(mem[200..204].try_into().unwrap()))
    }

    /// [`try_open`] that must succeed.
    pub fn open(
        w: &mut Wasi,
        mem: &mut [u8],
        path: &str,
        oflags: u64,
        rights: u64,
        fdflags: u64,
    ) -> u32 {
        let (r, fd) = try_open(w, mem, path, oflags, rights, fdflags);
        assert_eq!(r, 0, "open {path}");
        fd
    }

    /// `fd_write` of all of `data`.
    pub fn write(w: &mut Wasi, mem: &mut [u8], fd: u32, data: &[u8]) {
        mem[400..400 + data.len()].copy_from_slice(data);
        mem[300..304].copy_from_slice(&400u32.to_le_bytes());
        mem[304..308].copy_from_slice(&(data.len() as u32).to_le_bytes());
        assert_eq!(
            w.call(mem, func("fd_write"), &[u64::from(fd), 300, 1, 500]),
            Ok(0)
        );
    }

    /// `fd_read` of up to 64 bytes.
    pub fn read(w: &mut Wasi, mem: &mut [u8], fd: u32) -> Vec<u8> {
        mem[300..304].copy_from_slice(&1000u32.to_le_bytes());
        mem[304..308].copy_from_slice(&64u32.to_le_bytes());
        assert_eq!(
            w.call(mem, func("fd_read"), &[u64::from(fd), 300, 1, 500]),
            Ok(0)
        );
        let n = u32::from_le_bytes(mem[500..504].try_into().unwrap()) as usize;
        mem[1000..1000 + n].to_vec()
    }

    /// `path_rename` under fd 3: the errno.
    pub fn rename(w: &mut Wasi, mem: &mut [u8], from: &str, to: &str) -> i32 {
        put(mem, 100, from);
        put(mem, 150, to);
        let args = [3, 100, from.len() as u64, 3, 150, to.len() as u64];
        w.call(mem, func("path_rename"), &args).unwrap()
    }

    /// A host with `data` preopened as `.` (fd 3).
    pub fn host(data: &Path) -> (Vec<Preopen>, Wasi) {
        let preopens = vec![Preopen {
            host: std::fs::canonicalize(data).unwrap(),
            guest: ".".into(),
        }];
        let w = Wasi::new(
            WasiConfig {
                args: vec!["p".into()],
                env: vec![],
                preopens: preopens.clone(),
                seed: 0,
            },
            false,
        )
        .unwrap();
        (preopens, w)
    }
}

/// A WAT program that, at step 50,000 of a 150,000-step loop, opens `log.txt` in its
/// preopen for appending (fd kept open) and appends `A\n`, then exits with status 7.
pub mod appender {
    use lazarus_vm::wasi::Preopen;
    use lazarus_vm::{Every, VmConfig};
    use std::path::Path;

    const WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory 1)
  (data (i32.const 16) "log.txt")
  (data (i32.const 32) "A\n")
  (func $append
    (drop (call $open (i32.const 3) (i32.const 1) (i32.const 16) (i32.const 7) (i32.const 0)
                      (i64.const 64) (i64.const 0) (i32.const 1) (i32.const 100)))
    (i32.store (i32.const 200) (i32.const 32))
    (i32.store (i32.const 204) (i32.const 2))
    (drop (call $write (i32.load (i32.const 100)) (i32.const 200) (i32.const 1) (i32.const 300))))
  (func (export "_start") (local $i i32)
    (loop $l
      (if (i32.eq (local.get $i) (i32.const 50000)) (then (call $append)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 150000))))
    (call $exit (i32.const 7))))"#;

    /// The program in `d/p.wasm`, preopen `d/data` as `.`, repository `d/repo`,
    /// checkpoints every 40,000 steps (before the append, then after it), seed 5.
    pub fn config(d: &Path) -> VmConfig {
        let data = d.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let p = d.join("p.wasm");
        std::fs::write(&p, wat::parse_str(WAT).unwrap()).unwrap();
        let mut c = VmConfig::new(p, vec![]);
        c.repo = Some(d.join("repo"));
        c.every = Every::Steps(40_000);
        c.seed = Some(5);
        c.cache_dir = None;
        c.preopens = vec![Preopen {
            host: data,
            guest: ".".into(),
        }];
        c
    }
}
