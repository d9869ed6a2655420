//! The VM checkpoint metadata (`vm.meta` object, docs/VM.md "Checkpoint objects"): JSON,
//! versioned, and validated field by field on decode, because a resume trusts it to size
//! memory, place the unwind region and reopen files. The store already verified its bytes
//! against their BLAKE3 digest; [`VmMeta::decode`] guards against a writer bug or a
//! crafted repository (fuzzed: `fuzz/fuzz_targets/vm_meta.rs`).

use crate::error::{corrupt, Result};
use crate::instrument::GLOBAL_EXPORT_PREFIX;
use crate::runtime::{GlobalValue, RuntimeKind, UnwindRegion};
use crate::wasi::{FdState, TrackedPath, WasiState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Version of the metadata layout; a reader refuses any other.
pub const VM_META_VERSION: u32 = 1;
/// Largest memory a wasm32 module can have, in 64 KiB pages.
pub const MAX_PAGES: u64 = 65_536;
/// Largest encoded metadata accepted (the WASI state of a sane program is kilobytes).
pub const MAX_META_BYTES: usize = 64 << 20;

/// Object names in a VM checkpoint part.
pub mod objects {
    /// This metadata, JSON.
    pub const META: &str = "vm.meta";
    /// The instrumented module the checkpoint resumes with.
    pub const MODULE: &str = "vm.module";
    /// Linear memory, all of it.
    pub const MEMORY: &str = "vm.memory";
    /// Prefix of tracked files' contents (`vm.file.0`, ...).
    pub const FILE_PREFIX: &str = "vm.file.";
}

/// Which program a checkpoint belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramId {
    /// BLAKE3 of the original (uninstrumented) module, hex.
    pub digest: String,
    /// File name the module was run from (informational).
    pub name: String,
    /// Size of the original module.
    pub bytes: u64,
}

/// What a tracked path looked like at the checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase", deny_unknown_fields)]
pub enum FileState {
    /// Did not exist.
    Absent,
    /// A directory.
    Dir,
    /// A regular file whose bytes are object `object`.
    File {
        /// object name in the checkpoint part
        object: String,
        /// its length
        len: u64,
    },
}

/// One tracked path and its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// The path.
    pub path: TrackedPath,
    /// Its state.
    pub state: FileState,
}

/// Everything a resume needs besides the memory, module and file bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmMeta {
    /// [`VM_META_VERSION`].
    pub version: u32,
    /// The program.
    pub program: ProgramId,
    /// BLAKE3 of the instrumented module stored as `vm.module`, hex.
    pub instrumented_digest: String,
    /// Instrumenter version that produced it.
    pub instrumenter_version: u32,
    /// Runtime that took the checkpoint (informational: any runtime resumes it).
    pub runtime: RuntimeKind,
    /// Counted steps executed.
    pub steps: u64,
    /// `Some(status)`: the program had exited; nothing to resume.
    pub exit: Option<i32>,
    /// Memory size in pages.
    pub memory_pages: u64,
    /// The saved call stack's region of memory.
    pub region: Option<UnwindRegion>,
    /// Values of the exported mutable globals.
    pub globals: Vec<(String, GlobalValue)>,
    /// WASI state.
    pub wasi: WasiState,
    /// Tracked paths and their state.
    pub files: Vec<FileEntry>,
}

impl VmMeta {
    /// JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// JSON bytes for a checkpoint about to be written: refused (an error, so nothing is
    /// committed) when over [`MAX_META_BYTES`], which [`VmMeta::decode`] would refuse at
    /// every resume. Committing it would let retention drop the older checkpoints that
    /// still load. The error names the sizes of the fields that can grow.
    pub fn encode_checked(&self) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec(self).map_err(|e| {
            crate::VmError::new(
                crate::VmErrorKind::Trap,
                format!("checkpoint not written: encoding its vm.meta: {e}"),
            )
        })?;
        if bytes.len() > MAX_META_BYTES {
            let w = &self.wasi;
            // A resource limit of the program (like the unwind region): Trap.
            return Err(crate::VmError::new(
                crate::VmErrorKind::Trap,
                format!(
                    "checkpoint not written: its vm.meta would be {} bytes, over the \
                     {MAX_META_BYTES} a resume reads (wasi.stdout.pending {} bytes, \
                     wasi.stderr.pending {} bytes, wasi.fds {} descriptors, wasi.tracked {} \
                     paths, files {} entries, globals {}, wasi.config.args+env {} bytes)",
                    bytes.len(),
                    w.stdout.pending.len(),
                    w.stderr.pending.len(),
                    w.fds.len(),
                    w.tracked.len(),
                    self.files.len(),
                    self.globals.len(),
                    w.config
                        .args
                        .iter()
                        .chain(&w.config.env)
                        .map(String::len)
                        .sum::<usize>(),
                ),
            ));
        }
        Ok(bytes)
    }

    /// Decodes and validates; every inconsistency is a `Corrupt` error naming the field.
    pub fn decode(bytes: &[u8]) -> Result<VmMeta> {
        if bytes.len() > MAX_META_BYTES {
            return Err(corrupt(format!(
                "vm.meta is {} bytes, over {MAX_META_BYTES}",
                bytes.len()
            )));
        }
        let m: VmMeta =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("vm.meta: {e}")))?;
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: String| Err(corrupt(format!("vm.meta: {field}: {why}")));
        if self.version != VM_META_VERSION {
            return bad(
                "version",
                format!("{} (this build reads {VM_META_VERSION})", self.version),
            );
        }
        for (field, d) in [
            ("program.digest", &self.program.digest),
            ("instrumented_digest", &self.instrumented_digest),
        ] {
            if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(field, format!("{d:?} is not a BLAKE3 hex digest"));
            }
        }
        if self.exit.is_some() {
            return Ok(());
        }
        if self.memory_pages == 0 || self.memory_pages > MAX_PAGES {
            return bad(
                "memory_pages",
                format!("{} is outside 1..={MAX_PAGES}", self.memory_pages),
            );
        }
        let mem_bytes = self.memory_pages * 65_536;
        match self.region {
            None => return bad("region", "missing for a running program".into()),
            Some(r) => {
                let end = u64::from(r.start) + u64::from(r.len);
                // Ending at 4 GiB is refused too: Asyncify's end pointer could not hold it
                // (no checkpoint is written with such a region).
                if r.len < 16
                    || r.start % 65_536 != 0
                    || end > mem_bytes
                    || end > u64::from(u32::MAX)
                {
                    return bad(
                        "region",
                        format!("{r:?} does not fit in {mem_bytes} bytes of memory"),
                    );
                }
            }
        }
        let mut names = BTreeSet::new();
        for (n, _) in &self.globals {
            let idx = n.strip_prefix(GLOBAL_EXPORT_PREFIX);
            if !idx.is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())) {
                return bad("globals", format!("{n:?} is not an instrumentation global"));
            }
            if !names.insert(n) {
                return bad("globals", format!("{n:?} given twice"));
            }
        }
        let pre = self.wasi.config.preopens.len();
        let mut fds = BTreeSet::new();
        for (n, f) in &self.wasi.fds {
            if !fds.insert(*n) {
                return bad("wasi.fds", format!("fd {n} given twice"));
            }
            let p = match f {
                FdState::Dir { pre, rel, .. } | FdState::File { pre, rel, .. } => {
                    if crate::wasi::join_rel_checked(rel).is_none() {
                        return bad(
                            "wasi.fds",
                            format!("fd {n}: path {rel:?} leaves its preopen"),
                        );
                    }
                    Some(*pre)
                }
                _ => None,
            };
            if p.is_some_and(|p| p >= pre) {
                return bad(
                    "wasi.fds",
                    format!("fd {n} names a preopen that does not exist"),
                );
            }
        }
        // Tracked paths are restored and reopened on resume like `files`: each must name a
        // preopen and stay inside it.
        for t in &self.wasi.tracked {
            if t.pre >= pre || crate::wasi::join_rel_checked(&t.rel).is_none_or(|r| r.is_empty()) {
                return bad(
                    "wasi.tracked",
                    format!("{t:?} is not a path under a preopen"),
                );
            }
        }
        let mut objs = BTreeSet::new();
        for f in &self.files {
            if f.path.pre >= pre
                || crate::wasi::join_rel_checked(&f.path.rel).is_none_or(|r| r.is_empty())
            {
                return bad(
                    "files",
                    format!("{:?} is not a path under a preopen", f.path),
                );
            }
            if let FileState::File { object, .. } = &f.state {
                if !object.starts_with(objects::FILE_PREFIX) || !objs.insert(object) {
                    return bad(
                        "files",
                        format!("object {object:?} is not a unique file object"),
                    );
                }
            }
        }
        Ok(())
    }
}

/// serde helper: bytes as a hex string (JSON arrays of numbers are 4x larger).
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(b.len() * 2);
        for x in b {
            out.push_str(&format!("{x:02x}"));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd hex length"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| {
                s.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| serde::de::Error::custom("bad hex"))
            })
            .collect()
    }
}
