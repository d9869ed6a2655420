//! VM-level heterogeneous checkpointing of unmodified WebAssembly (WASI preview 1)
//! programs (docs/VM.md).
//!
//! A program compiled to `wasm32-wasi` holds all of its state in the virtual machine:
//! linear memory, globals, tables, the call stack, and what it sees through WASI. This
//! crate makes that state capturable without touching the program's source:
//!
//! - [`instrument`]: load-time instrumentation (a countdown at loop headers that calls the
//!   `lazarus.tick` hook, NaN canonicalisation, exported globals) plus Binaryen's Asyncify,
//!   so the hook can unwind the call stack into linear memory and rewind it later;
//! - [`wasi`]: a WASI preview 1 host written once over plain byte slices, whose state is
//!   captured and restored identically under every runtime;
//! - [`run`]: the runner: fresh start or resume from the newest intact checkpoint of a
//!   Lazarus repository, on wasmi (default) or wasmtime (feature `wasmtime`), either of
//!   which resumes the other's checkpoints.
//!
//! ```no_run
//! use lazarus_vm::{run, Every, VmConfig};
//! let mut cfg = VmConfig::new("prog.wasm", vec!["input.txt".into()]);
//! cfg.repo = Some("ckpt".into());
//! cfg.every = Every::parse("10s")?;
//! let report = run(&cfg)?;
//! std::process::exit(report.exit_code);
//! # Ok::<(), lazarus_vm::VmError>(())
//! ```
#![deny(missing_docs)]

mod error;
pub mod instrument;
pub mod meta;
mod run;
pub mod runtime;
mod store;
pub mod wasi;

pub use error::{Result, VmError, VmErrorKind};
pub use meta::VmMeta;
pub use run::{
    default_cache_dir, run, time_module, Every, Report, VmConfig, MAX_TRACKED_FILE_BYTES,
};
pub use runtime::RuntimeKind;
pub use store::{WriteStats, VM_CHUNK_SIZE};
pub use wasi::Preopen;
