//! The WASI preview 1 functions this host implements, with their core-wasm signatures: the
//! one table the load-time check, the host dispatcher and every runtime binding read.

/// A core WebAssembly value type of a WASI parameter or result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// i32
    I32,
    /// i64
    I64,
}

/// The import module name of WASI preview 1.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";

use Ty::{I32, I64};

/// `(name, params, result)`; every function returns an errno (i32) except `proc_exit`.
pub const FUNCS: &[(&str, &[Ty], Option<Ty>)] = &[
    ("args_get", &[I32, I32], Some(I32)),
    ("args_sizes_get", &[I32, I32], Some(I32)),
    ("environ_get", &[I32, I32], Some(I32)),
    ("environ_sizes_get", &[I32, I32], Some(I32)),
    ("clock_res_get", &[I32, I32], Some(I32)),
    ("clock_time_get", &[I32, I64, I32], Some(I32)),
    ("fd_advise", &[I32, I64, I64, I32], Some(I32)),
    ("fd_allocate", &[I32, I64, I64], Some(I32)),
    ("fd_close", &[I32], Some(I32)),
    ("fd_datasync", &[I32], Some(I32)),
    ("fd_fdstat_get", &[I32, I32], Some(I32)),
    ("fd_fdstat_set_flags", &[I32, I32], Some(I32)),
    ("fd_fdstat_set_rights", &[I32, I64, I64], Some(I32)),
    ("fd_filestat_get", &[I32, I32], Some(I32)),
    ("fd_filestat_set_size", &[I32, I64], Some(I32)),
    ("fd_filestat_set_times", &[I32, I64, I64, I32], Some(I32)),
    ("fd_pread", &[I32, I32, I32, I64, I32], Some(I32)),
    ("fd_prestat_get", &[I32, I32], Some(I32)),
    ("fd_prestat_dir_name", &[I32, I32, I32], Some(I32)),
    ("fd_pwrite", &[I32, I32, I32, I64, I32], Some(I32)),
    ("fd_read", &[I32, I32, I32, I32], Some(I32)),
    ("fd_readdir", &[I32, I32, I32, I64, I32], Some(I32)),
    ("fd_renumber", &[I32, I32], Some(I32)),
    ("fd_seek", &[I32, I64, I32, I32], Some(I32)),
    ("fd_sync", &[I32], Some(I32)),
    ("fd_tell", &[I32, I32], Some(I32)),
    ("fd_write", &[I32, I32, I32, I32], Some(I32)),
    ("path_create_directory", &[I32, I32, I32], Some(I32)),
    ("path_filestat_get", &[I32, I32, I32, I32, I32], Some(I32)),
    (
        "path_filestat_set_times",
        &[I32, I32, I32, I32, I64, I64, I32],
        Some(I32),
    ),
    ("path_link", &[I32, I32, I32, I32, I32, I32, I32], Some(I32)),
    (
        "path_open",
        &[I32, I32, I32, I32, I32, I64, I64, I32, I32],
        Some(I32),
    ),
    ("path_readlink", &[I32, I32, I32, I32, I32, I32], Some(I32)),
    ("path_remove_directory", &[I32, I32, I32], Some(I32)),
    ("path_rename", &[I32, I32, I32, I32, I32, I32], Some(I32)),
    ("path_symlink", &[I32, I32, I32, I32, I32], Some(I32)),
    ("path_unlink_file", &[I32, I32, I32], Some(I32)),
    ("poll_oneoff", &[I32, I32, I32, I32], Some(I32)),
    ("proc_exit", &[I32], None),
    ("proc_raise", &[I32], Some(I32)),
    ("sched_yield", &[], Some(I32)),
    ("random_get", &[I32, I32], Some(I32)),
    ("sock_accept", &[I32, I32, I32], Some(I32)),
    ("sock_recv", &[I32, I32, I32, I32, I32, I32], Some(I32)),
    ("sock_send", &[I32, I32, I32, I32, I32], Some(I32)),
    ("sock_shutdown", &[I32, I32], Some(I32)),
];

/// The signature of WASI function `name`, if this host implements it.
pub fn lookup(name: &str) -> Option<(&'static [Ty], Option<Ty>)> {
    FUNCS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, p, r)| (*p, *r))
}
