//! Load-time instrumentation of an unmodified WASI command module, so that its whole
//! execution state becomes linear memory + globals (docs/VM.md, "Instrumentation"):
//!
//! 1. [`check`]: refuse what cannot be captured (threads, SIMD, table mutation, non-WASI
//!    imports, several memories, no `_start`), with a message naming the construct.
//! 2. walrus pass: a countdown global `__lz_budget` decremented once per loop iteration and
//!    at the entry of every function that can recurse; when it is zero the code calls the
//!    import `lazarus.tick` (the only place a checkpoint can happen). Leaf loops (no call,
//!    no loop inside) count in a local with the tick call outside the loop
//!    (`strip_leaf_loop`), so Asyncify leaves their iterations alone; small ones are
//!    strip-mined (`Unroll`: k copies of the body per count). A float is made
//!    canonical where its NaN bits could become observable (`nan_observed`), so output is
//!    the same on every runtime and host. Mutable globals and the memory are exported under
//!    `__lz_*` names; a `start` function is moved to the top of `_start` (so instantiating
//!    on restore runs no program code).
//! 3. Binaryen's `wasm-opt --asyncify` over `lazarus.tick` only (WASI calls complete
//!    synchronously and never unwind), then `-O2`.
//!
//! The result is cached by the digest of the original module and [`INSTRUMENTER_VERSION`];
//! the checkpoint stores the instrumented bytes themselves, so a resume never depends on the
//! cache or on the installed Binaryen.

use crate::error::{unsupported, Result, VmError, VmErrorKind};
use crate::wasi::sig::{self, Ty};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use walrus::ir::{BinaryOp, Instr, InstrLocId, InstrSeqId, UnaryOp, Value};
use walrus::{ConstExpr, FunctionId, LocalId, ValType};

/// Bumped whenever the instrumentation changes what it emits (part of the cache key).
pub const INSTRUMENTER_VERSION: u32 = 3;
/// Import module of the checkpoint hook.
pub const TICK_MODULE: &str = "lazarus";
/// Import name of the checkpoint hook.
pub const TICK_NAME: &str = "tick";
/// Export name of the countdown global.
pub const BUDGET_EXPORT: &str = "__lz_budget";
/// Export name of the linear memory.
pub const MEMORY_EXPORT: &str = "__lz_memory";
/// Prefix of the export names of the module's mutable globals (`__lz_g0`, `__lz_g1`, ...).
pub const GLOBAL_EXPORT_PREFIX: &str = "__lz_g";
/// The canonical NaNs every observable NaN is mapped to (positive, quiet,
/// zero payload: what Cranelift's NaN canonicalisation produces too).
pub const CANONICAL_NAN32: u32 = 0x7fc0_0000;
/// See [`CANONICAL_NAN32`].
pub const CANONICAL_NAN64: u64 = 0x7ff8_0000_0000_0000;

/// Features an accepted module may use: WebAssembly 2.0 without SIMD (lanes would need
/// their own NaN canonicalisation; C built for wasm32-wasi does not use SIMD by default).
fn accepted_features() -> wasmparser::WasmFeatures {
    wasmparser::WasmFeatures::WASM2.difference(wasmparser::WasmFeatures::SIMD)
}

/// What [`check`] learned about an acceptable module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The WASI functions the module imports.
    pub wasi_imports: Vec<String>,
    /// Initial pages of its memory.
    pub initial_pages: u64,
}

/// Refuses, with a message naming the construct, a module this VM cannot run and capture.
pub fn check(wasm: &[u8]) -> Result<ModuleInfo> {
    use wasmparser::{Payload, TypeRef};
    let mut v = wasmparser::Validator::new_with_features(accepted_features());
    if let Err(e) = v.validate_all(wasm) {
        let msg = e.message().to_string();
        // Validate once more with everything on: a valid module that uses a refused
        // feature gets "unsupported", real garbage "invalid".
        let mut all = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
        return Err(if all.validate_all(wasm).is_ok() {
            let hint = if msg.contains("shared") || msg.contains("threads") {
                " (threads and shared memory cannot be checkpointed)"
            } else {
                ""
            };
            unsupported(format!(
                "the module uses a WebAssembly feature this VM does not support: {msg} at \
                 offset {}{hint}",
                e.offset()
            ))
        } else {
            VmError::new(
                VmErrorKind::InvalidModule,
                format!(
                    "not a valid WebAssembly module: {msg} at offset {}",
                    e.offset()
                ),
            )
        });
    }
    let mut info = ModuleInfo {
        wasi_imports: Vec::new(),
        initial_pages: 0,
    };
    let mut types: Vec<wasmparser::FuncType> = Vec::new();
    let mut memories = 0usize;
    let mut has_start_export = false;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        let payload =
            payload.map_err(|e| VmError::new(VmErrorKind::InvalidModule, e.to_string()))?;
        match payload {
            Payload::TypeSection(r) => {
                for rg in r.into_iter_err_on_gc_types() {
                    let ft =
                        rg.map_err(|e| VmError::new(VmErrorKind::InvalidModule, e.to_string()))?;
                    types.push(ft);
                }
            }
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    let imp =
                        imp.map_err(|e| VmError::new(VmErrorKind::InvalidModule, e.to_string()))?;
                    let what = format!("import {}.{}", imp.module, imp.name);
                    let TypeRef::Func(ti) = imp.ty else {
                        return Err(unsupported(format!(
                            "{what}: only functions may be imported (the memory, tables and \
                             globals must be the module's own)"
                        )));
                    };
                    if imp.module != sig::WASI_MODULE {
                        return Err(unsupported(format!(
                            "{what}: not a WASI preview 1 function (module {:?}); only {:?} \
                             imports are provided{}",
                            imp.module,
                            sig::WASI_MODULE,
                            if imp.module == "wasi" && imp.name == "thread-spawn" {
                                " — threads cannot be checkpointed"
                            } else {
                                ""
                            }
                        )));
                    }
                    let Some((params, result)) = sig::lookup(imp.name) else {
                        return Err(unsupported(format!(
                            "{what}: unknown WASI preview 1 function"
                        )));
                    };
                    let ft = types.get(ti as usize).ok_or_else(|| {
                        VmError::new(
                            VmErrorKind::InvalidModule,
                            format!("{what}: bad type index"),
                        )
                    })?;
                    if !signature_matches(ft, params, result) {
                        return Err(unsupported(format!(
                            "{what}: signature {ft} does not match WASI preview 1"
                        )));
                    }
                    info.wasi_imports.push(imp.name.to_string());
                }
            }
            Payload::GlobalSection(r) => {
                // Imported globals are refused above, so the index is the position here.
                for (i, g) in r.into_iter().enumerate() {
                    let g =
                        g.map_err(|e| VmError::new(VmErrorKind::InvalidModule, e.to_string()))?;
                    let t = g.ty;
                    if t.mutable && matches!(t.content_type, wasmparser::ValType::Ref(_)) {
                        return Err(unsupported(format!(
                            "global {i}: a mutable {} global cannot be checkpointed (a reference \
                             has no portable value to capture); only numeric mutable globals \
                             are supported",
                            t.content_type
                        )));
                    }
                }
            }
            Payload::MemorySection(r) => {
                for m in r {
                    let m =
                        m.map_err(|e| VmError::new(VmErrorKind::InvalidModule, e.to_string()))?;
                    memories += 1;
                    info.initial_pages = m.initial;
                }
            }
            Payload::ExportSection(r) => {
                for e in r {
                    let e =
                        e.map_err(|e| VmError::new(VmErrorKind::InvalidModule, e.to_string()))?;
                    if e.name == "_start" && e.kind == wasmparser::ExternalKind::Func {
                        has_start_export = true;
                    }
                    if e.name.starts_with("__lz_") || e.name.starts_with("asyncify_") {
                        return Err(unsupported(format!(
                            "export {:?}: the names __lz_* and asyncify_* are reserved for the \
                             instrumentation (is this module already instrumented?)",
                            e.name
                        )));
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body
                    .get_operators_reader()
                    .map_err(|e| VmError::new(VmErrorKind::InvalidModule, e.to_string()))?;
                while !ops.eof() {
                    let op = ops
                        .read()
                        .map_err(|e| VmError::new(VmErrorKind::InvalidModule, e.to_string()))?;
                    use wasmparser::Operator as O;
                    let bad = match op {
                        O::TableSet { .. } => Some("table.set"),
                        O::TableGrow { .. } => Some("table.grow"),
                        O::TableFill { .. } => Some("table.fill"),
                        O::TableCopy { .. } => Some("table.copy"),
                        O::TableInit { .. } => Some("table.init"),
                        O::ElemDrop { .. } => Some("elem.drop"),
                        _ => None,
                    };
                    if let Some(name) = bad {
                        return Err(unsupported(format!(
                            "instruction {name} at offset {}: tables must stay as the module \
                             initialises them (a function reference cannot be captured \
                             portably)",
                            ops.original_position()
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    if memories != 1 {
        return Err(unsupported(format!(
            "the module defines {memories} memories; exactly one is supported"
        )));
    }
    if !has_start_export {
        return Err(unsupported(
            "no `_start` export: not a WASI command (reactor modules are not supported)",
        ));
    }
    Ok(info)
}

fn signature_matches(ft: &wasmparser::FuncType, params: &[Ty], result: Option<Ty>) -> bool {
    let conv = |t: &Ty| match t {
        Ty::I32 => wasmparser::ValType::I32,
        Ty::I64 => wasmparser::ValType::I64,
    };
    let want_p: Vec<_> = params.iter().map(conv).collect();
    let want_r: Vec<_> = result.iter().map(conv).collect();
    ft.params() == want_p.as_slice() && ft.results() == want_r.as_slice()
}

/// Where to find `wasm-opt`: `$LAZARUS_WASM_OPT`, else `wasm-opt` on `PATH`.
pub fn wasm_opt_path() -> PathBuf {
    std::env::var_os("LAZARUS_WASM_OPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("wasm-opt"))
}

/// The instrumented module for `original`: from `cache_dir` if an earlier call left it
/// there, else made and stored there (atomically; a damaged cache entry is remade).
pub fn instrument_cached(original: &[u8], cache_dir: Option<&Path>) -> Result<Vec<u8>> {
    let key = format!(
        "{}-v{INSTRUMENTER_VERSION}.wasm",
        blake3::hash(original).to_hex()
    );
    if let Some(dir) = cache_dir {
        let p = dir.join(&key);
        if let Ok(bytes) = std::fs::read(&p) {
            // The cache is a convenience, not a trust anchor: anything that does not
            // validate as an instrumented module is remade.
            if looks_instrumented(&bytes) {
                return Ok(bytes);
            }
            tracing::warn!(path = %p.display(), "damaged cache entry; instrumenting again");
        }
    }
    let out = instrument(original)?;
    if let Some(dir) = cache_dir {
        if let Err(e) = store_cache(dir, &key, &out) {
            tracing::warn!(
                "could not cache the instrumented module in {}: {e}",
                dir.display()
            );
        }
    }
    Ok(out)
}

fn store_cache(dir: &Path, key: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}-{key}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(key))
}

/// True when `bytes` validate and export what the runner needs.
pub(crate) fn looks_instrumented(bytes: &[u8]) -> bool {
    let mut v = wasmparser::Validator::new_with_features(accepted_features());
    if v.validate_all(bytes).is_err() {
        return false;
    }
    let mut names = HashSet::new();
    for p in wasmparser::Parser::new(0).parse_all(bytes) {
        if let Ok(wasmparser::Payload::ExportSection(r)) = p {
            for e in r.into_iter().flatten() {
                names.insert(e.name.to_string());
            }
        }
    }
    [
        BUDGET_EXPORT,
        MEMORY_EXPORT,
        "_start",
        "asyncify_start_unwind",
        "asyncify_stop_unwind",
        "asyncify_start_rewind",
        "asyncify_stop_rewind",
    ]
    .iter()
    .all(|n| names.contains(*n))
}

/// Checks and instruments `original` (no cache).
pub fn instrument(original: &[u8]) -> Result<Vec<u8>> {
    check(original)?;
    let pass1 = rewrite(original)?;
    let out = wasm_opt(&pass1, true)?;
    if !looks_instrumented(&out) {
        return Err(VmError::new(
            VmErrorKind::Toolchain,
            "wasm-opt produced a module without the asyncify exports",
        ));
    }
    Ok(out)
}

/// The module with the counters and the NaN canonicalisation but without Asyncify, then
/// optimised like [`instrument`]'s output: it runs (the hook only unwinds when a checkpoint
/// is due) but can never checkpoint. For benchmarks: `lazarus bench vm` compares it with
/// [`instrument`] to split the slowdown between the counters and Asyncify.
pub fn instrument_without_asyncify(original: &[u8]) -> Result<Vec<u8>> {
    check(original)?;
    wasm_opt(&rewrite(original)?, false)
}

/// The walrus pass (step 2 of the module doc).
fn rewrite(original: &[u8]) -> Result<Vec<u8>> {
    rewrite_with(original, UNROLL)
}

/// [`rewrite`] with leaf loops unrolled as `unroll` says.
pub(crate) fn rewrite_with(original: &[u8], unroll: Unroll) -> Result<Vec<u8>> {
    let mut m = walrus::Module::from_buffer(original)
        .map_err(|e| VmError::new(VmErrorKind::InvalidModule, format!("walrus: {e}")))?;
    let tick_ty = m.types.add(&[], &[]);
    let (tick, _) = m.add_import_func(TICK_MODULE, TICK_NAME, tick_ty);
    // Initial 0: the first loop header calls the host at once, which then sets the budget.
    let budget = m
        .globals
        .add_local(ValType::I32, true, false, ConstExpr::Value(Value::I32(0)));
    m.exports.add(BUDGET_EXPORT, budget);
    let mutable: Vec<walrus::GlobalId> = m
        .globals
        .iter()
        .filter(|g| g.mutable && g.id() != budget)
        .map(|g| g.id())
        .collect();
    for (i, g) in mutable.into_iter().enumerate() {
        m.exports.add(&format!("{GLOBAL_EXPORT_PREFIX}{i}"), g);
    }
    let mem = m
        .memories
        .iter()
        .next()
        .map(|mm| mm.id())
        .ok_or_else(|| unsupported("the module has no memory"))?;
    m.exports.add(MEMORY_EXPORT, mem);

    let start_fn = m
        .exports
        .iter()
        .find_map(|e| match (e.name.as_str(), e.item) {
            ("_start", walrus::ExportItem::Function(f)) => Some(f),
            _ => None,
        })
        .ok_or_else(|| unsupported("no `_start` export"))?;
    let section_start = m.start.take();

    let recursive = recursive_functions(&m);
    let float_globals: HashMap<walrus::GlobalId, u32> = m
        .globals
        .iter()
        .filter_map(|g| match g.ty {
            ValType::F32 => Some((g.id(), 32)),
            ValType::F64 => Some((g.id(), 64)),
            _ => None,
        })
        .collect();
    let local_ids: Vec<FunctionId> = m.funcs.iter_local().map(|(id, _)| id).collect();
    for id in local_ids {
        let walrus::FunctionKind::Local(f) = &mut m.funcs.get_mut(id).kind else {
            continue;
        };
        instrument_function(
            f,
            &mut m.locals,
            Hook { tick, budget },
            &float_globals,
            recursive.contains(&id),
            (id == start_fn).then_some(section_start).flatten(),
            unroll,
        );
    }
    Ok(m.emit_wasm())
}

/// Functions that can be part of a call cycle: members of a non-trivial strongly connected
/// component of the call graph, where `call_indirect` may reach every function placed in a
/// table. Only they need a budget check at entry: any other unbounded execution goes
/// through a loop.
fn recursive_functions(m: &walrus::Module) -> HashSet<FunctionId> {
    let mut in_tables: Vec<FunctionId> = Vec::new();
    for e in m.elements.iter() {
        match &e.items {
            walrus::ElementItems::Functions(fs) => in_tables.extend(fs.iter().copied()),
            walrus::ElementItems::Expressions(_, es) => {
                in_tables.extend(es.iter().filter_map(|c| match c {
                    ConstExpr::RefFunc(f) => Some(*f),
                    _ => None,
                }))
            }
        }
    }
    let mut edges: HashMap<FunctionId, Vec<FunctionId>> = HashMap::new();
    for (id, f) in m.funcs.iter_local() {
        let mut out = Vec::new();
        for seq in seq_ids(f) {
            for (ins, _) in &f.block(seq).instrs {
                match ins {
                    Instr::Call(c) => out.push(c.func),
                    Instr::CallIndirect(_) => out.extend(in_tables.iter().copied()),
                    _ => {}
                }
            }
        }
        edges.insert(id, out);
    }
    // Tarjan's algorithm, iterative (deep call graphs must not overflow our own stack).
    let nodes: Vec<FunctionId> = edges.keys().copied().collect();
    let mut index: HashMap<FunctionId, usize> = HashMap::new();
    let mut low: HashMap<FunctionId, usize> = HashMap::new();
    let mut on_stack: HashSet<FunctionId> = HashSet::new();
    let mut stack: Vec<FunctionId> = Vec::new();
    let mut result = HashSet::new();
    let mut next = 0usize;
    for &root in &nodes {
        if index.contains_key(&root) {
            continue;
        }
        let mut work: Vec<(FunctionId, usize)> = vec![(root, 0)];
        while let Some((v, i)) = work.pop() {
            if i == 0 {
                index.insert(v, next);
                low.insert(v, next);
                next += 1;
                stack.push(v);
                on_stack.insert(v);
            }
            let succ = edges.get(&v).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(&w) = succ.get(i) {
                work.push((v, i + 1));
                if !edges.contains_key(&w) {
                    continue; // an import
                }
                if !index.contains_key(&w) {
                    work.push((w, 0));
                } else if on_stack.contains(&w) {
                    let lw = index[&w];
                    let lv = low[&v];
                    low.insert(v, lv.min(lw));
                }
                continue;
            }
            // All successors done: propagate low to the parent, pop a component.
            if let Some(&(parent, _)) = work.last() {
                let lv = low[&v];
                let lp = low[&parent];
                low.insert(parent, lp.min(lv));
            }
            if low[&v] == index[&v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack.remove(&w);
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                let self_loop = edges.get(&v).is_some_and(|s| s.contains(&v));
                if comp.len() > 1 || self_loop {
                    result.extend(comp);
                }
            }
        }
    }
    result
}

/// Every instruction sequence of `f`, entry first.
fn seq_ids(f: &walrus::LocalFunction) -> Vec<InstrSeqId> {
    nested_seqs(f, f.entry_block())
}

/// The loop structure of a function: every loop, the sequence holding it, and whether it
/// is a *leaf loop* (see [`strip_leaf_loop`]).
struct Loops {
    /// `(loop body, sequence containing the loop instruction, leaf)`.
    all: Vec<(InstrSeqId, InstrSeqId, bool)>,
}

/// The sequences nested in `seq` (itself included).
fn nested_seqs(f: &walrus::LocalFunction, seq: InstrSeqId) -> Vec<InstrSeqId> {
    let mut out = vec![seq];
    let mut i = 0;
    while let Some(&s) = out.get(i) {
        i += 1;
        for (ins, _) in &f.block(s).instrs {
            match ins {
                Instr::Block(b) => out.push(b.seq),
                Instr::Loop(l) => out.push(l.seq),
                Instr::IfElse(ie) => {
                    out.push(ie.consequent);
                    out.push(ie.alternative);
                }
                _ => {}
            }
        }
    }
    out
}

fn find_loops(f: &walrus::LocalFunction) -> Loops {
    let mut all = Vec::new();
    for parent in seq_ids(f) {
        for (ins, _) in &f.block(parent).instrs {
            let Instr::Loop(l) = ins else { continue };
            // A leaf loop contains no call (nothing inside it can reach the hook or read
            // the budget) and no other loop, and takes no parameters (MVP block type).
            let simple = matches!(f.block(l.seq).ty, walrus::ir::InstrSeqType::Simple(_));
            let leaf = simple
                && nested_seqs(f, l.seq).iter().all(|s| {
                    f.block(*s).instrs.iter().all(|(ins, _)| {
                        !matches!(
                            ins,
                            Instr::Call(_)
                                | Instr::CallIndirect(_)
                                | Instr::CallRef(_)
                                | Instr::ReturnCall(_)
                                | Instr::ReturnCallIndirect(_)
                                | Instr::ReturnCallRef(_)
                                | Instr::Loop(_)
                        )
                    })
                });
            all.push((l.seq, parent, leaf));
        }
    }
    Loops { all }
}

/// The hook and the global it counts down (what every check site needs).
#[derive(Clone, Copy)]
struct Hook {
    tick: FunctionId,
    budget: walrus::GlobalId,
}

fn instrument_function(
    f: &mut walrus::LocalFunction,
    locals: &mut walrus::ModuleLocals,
    hook: Hook,
    float_globals: &HashMap<walrus::GlobalId, u32>,
    at_entry: bool,
    call_first: Option<FunctionId>,
    unroll: Unroll,
) {
    let seqs = seq_ids(f);
    let loops = find_loops(f);
    let checked: HashSet<InstrSeqId> = loops
        .all
        .iter()
        .filter(|(_, _, leaf)| !leaf)
        .map(|(seq, _, _)| *seq)
        .collect();
    let mut t32: Option<LocalId> = None;
    let mut t64: Option<LocalId> = None;
    for seq in seqs {
        let old = std::mem::take(&mut f.block_mut(seq).instrs);
        let mut new = Vec::with_capacity(old.len() + 8);
        let is_entry = seq == f.entry_block();
        if is_entry {
            if let Some(s) = call_first {
                new.push((
                    Instr::Call(walrus::ir::Call { func: s }),
                    InstrLocId::default(),
                ));
            }
        }
        if checked.contains(&seq) || (is_entry && at_entry) {
            new.extend(budget_check(f, hook));
        }
        for (ins, loc) in old {
            match nan_observed(&ins, float_globals) {
                Some(32) => {
                    let t = *t32.get_or_insert_with(|| locals.add(ValType::F32));
                    new.extend(canonicalize(
                        t,
                        Value::F32(f32::from_bits(CANONICAL_NAN32)),
                        BinaryOp::F32Eq,
                    ));
                }
                Some(_) => {
                    let t = *t64.get_or_insert_with(|| locals.add(ValType::F64));
                    new.extend(canonicalize(
                        t,
                        Value::F64(f64::from_bits(CANONICAL_NAN64)),
                        BinaryOp::F64Eq,
                    ));
                }
                None => {}
            }
            new.push((ins, loc));
        }
        f.block_mut(seq).instrs = new;
    }
    let mut count: Option<LocalId> = None;
    for (seq, parent, leaf) in loops.all {
        if leaf {
            let m = *count.get_or_insert_with(|| locals.add(ValType::I32));
            strip_leaf_loop(f, hook, m, seq, parent, unroll);
        }
    }
}

/// How leaf loops are strip-mined (docs/VM.md, "Instrumentation"): a leaf loop whose body
/// has `n` instructions (nested blocks included) gets `k = min(max_copies, max_unrolled / n)`
/// copies of its body, run back to back while the countdown allows k iterations without a
/// tick, so the count is paid once per k iterations; k < 2: not unrolled. The copies of one
/// loop thus hold at most `max_unrolled` instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unroll {
    /// Largest unroll factor k.
    pub max_copies: usize,
    /// Most instructions in the copies of one loop (k x body size).
    pub max_unrolled: usize,
}

impl Unroll {
    /// The unroll factor for a body of `n` instructions (< 2: not unrolled).
    fn copies(self, n: usize) -> usize {
        self.max_copies.min(self.max_unrolled / n.max(1))
    }
}

/// What [`instrument`] does: up to 16 copies, at most 256 instructions of copies per leaf
/// loop (so bodies of more than 128 instructions are not unrolled). Measured
/// (docs/PERFORMANCE.md, "instrumenter v3").
pub(crate) const UNROLL: Unroll = Unroll {
    max_copies: 16,
    max_unrolled: 256,
};

/// Rewrites the leaf loop `body` (held in `parent`) so that it counts its iterations in the
/// local `m` instead of the budget global, and its only hook call sits *outside* it; when
/// the body is small (`unroll`), a fast path runs `k` copies of it per count:
///
/// ```text
/// m = budget
/// block $done (result T)
///   loop $outer
///     if (m <= 0) { tick(); m = budget }       ;; the only call: Asyncify's guards live here
///     block $slow                               ;; (fast path: only when unrolled)
///       loop $fast
///         br_if $slow (m < k)                   ;; fewer than k steps left: count one by one
///         m = m - k
///         block $n1 ... block $n(k-1)           ;; nested: copy j continues into copy j+1
///           copy 0 of the body: `br $body` -> `br $n1`; before leaving, budget = m + k-1
///           budget = m + k-1; br $done          ;; its fall-through leaves the loop
///         end ...
///         copy k-1: `br $body` -> `br $fast`; budget = m before leaving; br $done
///       end
///     end
///     loop $body (result T)                     ;; same sequence: branches to it stay valid
///       br_if $outer ((m = m - 1) < 0)           ;; budget exhausted: go and tick
///       ...original body, `budget = m` before every branch or return that leaves it...
///       budget = m
///     end
///     br $done
///   end
///   unreachable
/// end
/// ```
///
/// The ticks land on exactly the iterations where the global countdown would have
/// reached zero (the header test is the old `if (budget == 0) tick(); budget -= 1`; the
/// fast path only runs k iterations that would all have found the countdown positive, and
/// an exit from copy j leaves the budget the per-iteration count would have left), so step
/// counts and checkpoint positions do not change, and the time between two checks stays
/// bounded by the budget. What changes is the cost per iteration: one decrement and one
/// branch on a local (a register under Cranelift), or 1/k of that when unrolled, instead
/// of a load-modify-store of a global, and no Asyncify state tests, because Asyncify only
/// instruments code around calls that can unwind, and this loop contains none (its guard
/// is tested once per entry of `$outer`'s body, not per iteration). Nothing in the loop
/// can read the budget (it has no calls), so the global only has to be right when the
/// loop is left.
fn strip_leaf_loop(
    f: &mut walrus::LocalFunction,
    hook: Hook,
    m: LocalId,
    body: InstrSeqId,
    parent: InstrSeqId,
    unroll: Unroll,
) {
    use walrus::ir::*;
    let inside: HashSet<InstrSeqId> = nested_seqs(f, body).into_iter().collect();
    let size: usize = inside.iter().map(|s| f.block(*s).instrs.len()).sum();
    let k = unroll.copies(size).min(1 << 16) as u32;
    let unrolled = k > 1
        && inside
            .iter()
            .all(|s| f.block(*s).instrs.iter().all(|(ins, _)| copyable(ins)));
    let ty = f.block(body).ty;
    let b = f.builder_mut();
    let done = b.dangling_instr_seq(ty).id();
    let outer = b.dangling_instr_seq(None).id();
    let mut then = b.dangling_instr_seq(None);
    then.call(hook.tick).global_get(hook.budget).local_set(m);
    let then = then.id();
    let alt = b.dangling_instr_seq(None).id();

    // The fast path, built from copies of the body before the body itself is changed.
    let fast = if unrolled {
        let slow = f.builder_mut().dangling_instr_seq(None).id();
        let fast = f.builder_mut().dangling_instr_seq(None).id();
        // conts[j]: where copy j continues (copy j+1's start; the last: the next chunk).
        let mut conts: Vec<InstrSeqId> = (1..k)
            .map(|_| f.builder_mut().dangling_instr_seq(None).id())
            .collect();
        conts.push(fast);
        let original = f.block(body).instrs.clone();
        // Built from the innermost block out: block $n1 holds copy 0, ...
        let mut acc: Vec<(Instr, InstrLocId)> = Vec::new();
        for (j, &cont) in conts.iter().enumerate() {
            let mut map = HashMap::from([(body, cont)]);
            let copy = clone_instrs(f, &original, &mut map);
            let offset = (k - 1) as i32 - j as i32;
            let copy_inside: HashSet<InstrSeqId> = map.values().copied().collect();
            let nested: Vec<InstrSeqId> =
                copy_inside.iter().copied().filter(|s| *s != cont).collect();
            for s in nested {
                let old = std::mem::take(&mut f.block_mut(s).instrs);
                f.block_mut(s).instrs = with_write_backs(old, &copy_inside, hook, m, offset);
            }
            let mut seq = acc;
            seq.extend(with_write_backs(copy, &copy_inside, hook, m, offset));
            seq.extend(write_back(hook, m, offset));
            seq.push(i(Instr::Br(Br { block: done })));
            if cont == fast {
                acc = seq;
            } else {
                f.block_mut(cont).instrs = seq;
                acc = vec![i(Instr::Block(Block { seq: cont }))];
            }
        }
        let mut head = vec![
            i(Instr::LocalGet(LocalGet { local: m })),
            i(Instr::Const(Const {
                value: Value::I32(k as i32),
            })),
            i(Instr::Binop(Binop {
                op: BinaryOp::I32LtS,
            })),
            i(Instr::BrIf(BrIf { block: slow })),
            i(Instr::LocalGet(LocalGet { local: m })),
            i(Instr::Const(Const {
                value: Value::I32(k as i32),
            })),
            i(Instr::Binop(Binop {
                op: BinaryOp::I32Sub,
            })),
            i(Instr::LocalSet(LocalSet { local: m })),
        ];
        head.extend(acc);
        f.block_mut(fast).instrs = head;
        f.block_mut(slow).instrs = vec![i(Instr::Loop(Loop { seq: fast }))];
        Some(slow)
    } else {
        None
    };

    for s in &inside {
        let old = std::mem::take(&mut f.block_mut(*s).instrs);
        f.block_mut(*s).instrs = with_write_backs(old, &inside, hook, m, 0);
    }
    let old = std::mem::take(&mut f.block_mut(body).instrs);
    let mut new = vec![
        i(Instr::LocalGet(LocalGet { local: m })),
        i(Instr::Const(Const {
            value: Value::I32(1),
        })),
        i(Instr::Binop(Binop {
            op: BinaryOp::I32Sub,
        })),
        i(Instr::LocalTee(LocalTee { local: m })),
        i(Instr::Const(Const {
            value: Value::I32(0),
        })),
        i(Instr::Binop(Binop {
            op: BinaryOp::I32LtS,
        })),
        i(Instr::BrIf(BrIf { block: outer })),
    ];
    new.extend(old);
    new.extend(write_back(hook, m, 0));
    f.block_mut(body).instrs = new;

    let mut outer_instrs = vec![
        i(Instr::LocalGet(LocalGet { local: m })),
        i(Instr::Const(Const {
            value: Value::I32(0),
        })),
        i(Instr::Binop(Binop {
            op: BinaryOp::I32LeS,
        })),
        i(Instr::IfElse(IfElse {
            consequent: then,
            alternative: alt,
        })),
    ];
    if let Some(slow) = fast {
        outer_instrs.push(i(Instr::Block(Block { seq: slow })));
    }
    outer_instrs.extend([
        i(Instr::Loop(Loop { seq: body })),
        i(Instr::Br(Br { block: done })),
    ]);
    f.block_mut(outer).instrs = outer_instrs;
    f.block_mut(done).instrs = vec![
        i(Instr::Loop(Loop { seq: outer })),
        i(Instr::Unreachable(Unreachable {})),
    ];
    let pinstrs = &mut f.block_mut(parent).instrs;
    if let Some(pos) = pinstrs
        .iter()
        .position(|(ins, _)| matches!(ins, Instr::Loop(l) if l.seq == body))
    {
        let loc = pinstrs[pos].1;
        pinstrs.splice(
            pos..=pos,
            [
                i(Instr::GlobalGet(GlobalGet {
                    global: hook.budget,
                })),
                i(Instr::LocalSet(LocalSet { local: m })),
                (Instr::Block(Block { seq: done }), loc),
            ],
        );
    }
}

/// `budget = m + offset`: what the per-iteration count would hold at this point.
fn write_back(hook: Hook, m: LocalId, offset: i32) -> Vec<(Instr, InstrLocId)> {
    use walrus::ir::*;
    let mut v = vec![i(Instr::LocalGet(LocalGet { local: m }))];
    if offset != 0 {
        v.push(i(Instr::Const(Const {
            value: Value::I32(offset),
        })));
        v.push(i(Instr::Binop(Binop {
            op: BinaryOp::I32Add,
        })));
    }
    v.push(i(Instr::GlobalSet(GlobalSet {
        global: hook.budget,
    })));
    v
}

/// `instrs` with [`write_back`] before every branch that leaves `inside` and every return.
fn with_write_backs(
    instrs: Vec<(Instr, InstrLocId)>,
    inside: &HashSet<InstrSeqId>,
    hook: Hook,
    m: LocalId,
    offset: i32,
) -> Vec<(Instr, InstrLocId)> {
    let mut new = Vec::with_capacity(instrs.len() + 4);
    for (ins, loc) in instrs {
        let leaves = match &ins {
            Instr::Br(b) => !inside.contains(&b.block),
            Instr::BrIf(b) => !inside.contains(&b.block),
            Instr::BrTable(t) => {
                !inside.contains(&t.default) || t.blocks.iter().any(|b| !inside.contains(b))
            }
            Instr::Return(_) => true,
            _ => false,
        };
        if leaves {
            new.extend(write_back(hook, m, offset));
        }
        new.push((ins, loc));
    }
    new
}

/// False for the instructions [`clone_instrs`] cannot copy (they hold sequences or branch
/// targets it does not remap; none passes [`check`], which refuses exceptions and GC).
fn copyable(ins: &Instr) -> bool {
    !matches!(
        ins,
        Instr::Loop(_)
            | Instr::Try(_)
            | Instr::TryTable(_)
            | Instr::BrOnNull(_)
            | Instr::BrOnNonNull(_)
            | Instr::BrOnCast(_)
            | Instr::BrOnCastFail(_)
    )
}

/// A deep copy of `instrs`: every nested block gets a new sequence, and every branch to a
/// sequence in `map` goes to its image (`map` starts with the loop -> where a copy
/// continues; branches to sequences outside stay as they are).
fn clone_instrs(
    f: &mut walrus::LocalFunction,
    instrs: &[(Instr, InstrLocId)],
    map: &mut HashMap<InstrSeqId, InstrSeqId>,
) -> Vec<(Instr, InstrLocId)> {
    let mut out = Vec::with_capacity(instrs.len());
    for (ins, loc) in instrs {
        let mut ins = ins.clone();
        match &mut ins {
            Instr::Block(b) => b.seq = clone_seq(f, b.seq, map),
            Instr::IfElse(ie) => {
                ie.consequent = clone_seq(f, ie.consequent, map);
                ie.alternative = clone_seq(f, ie.alternative, map);
            }
            Instr::Br(b) => b.block = *map.get(&b.block).unwrap_or(&b.block),
            Instr::BrIf(b) => b.block = *map.get(&b.block).unwrap_or(&b.block),
            Instr::BrTable(t) => {
                t.default = *map.get(&t.default).unwrap_or(&t.default);
                for b in t.blocks.iter_mut() {
                    *b = *map.get(b).unwrap_or(b);
                }
            }
            _ => {}
        }
        out.push((ins, *loc));
    }
    out
}

fn clone_seq(
    f: &mut walrus::LocalFunction,
    old: InstrSeqId,
    map: &mut HashMap<InstrSeqId, InstrSeqId>,
) -> InstrSeqId {
    let ty = f.block(old).ty;
    let new = f.builder_mut().dangling_instr_seq(ty).id();
    map.insert(old, new);
    let instrs = f.block(old).instrs.clone();
    let copy = clone_instrs(f, &instrs, map);
    f.block_mut(new).instrs = copy;
    new
}

fn i(ins: Instr) -> (Instr, InstrLocId) {
    (ins, InstrLocId::default())
}

/// `if (budget == 0) tick(); budget -= 1;` (the host sets the budget inside tick).
fn budget_check(f: &mut walrus::LocalFunction, hook: Hook) -> Vec<(Instr, InstrLocId)> {
    use walrus::ir::*;
    let Hook { tick, budget } = hook;
    let b = f.builder_mut();
    let mut then = b.dangling_instr_seq(None);
    then.call(tick);
    let consequent = then.id();
    let alternative = b.dangling_instr_seq(None).id();
    vec![
        i(Instr::GlobalGet(GlobalGet { global: budget })),
        i(Instr::Unop(Unop {
            op: UnaryOp::I32Eqz,
        })),
        i(Instr::IfElse(IfElse {
            consequent,
            alternative,
        })),
        i(Instr::GlobalGet(GlobalGet { global: budget })),
        i(Instr::Const(Const {
            value: Value::I32(1),
        })),
        i(Instr::Binop(Binop {
            op: BinaryOp::I32Sub,
        })),
        i(Instr::GlobalSet(GlobalSet { global: budget })),
    ]
}

/// `x -> (x == x) ? x : canonical` with `x` on the stack.
fn canonicalize(t: LocalId, nan: Value, eq: BinaryOp) -> Vec<(Instr, InstrLocId)> {
    use walrus::ir::*;
    vec![
        i(Instr::LocalTee(LocalTee { local: t })),
        i(Instr::Const(Const { value: nan })),
        i(Instr::LocalGet(LocalGet { local: t })),
        i(Instr::LocalGet(LocalGet { local: t })),
        i(Instr::Binop(Binop { op: eq })),
        i(Instr::Select(Select { ty: None })),
    ]
}

/// 32 or 64 when `ins` lets the program observe the bits of the float on top of the stack
/// (its operand), so a NaN there must first be made canonical: a store to memory, a
/// reinterpretation as an integer, the sign source of `copysign`, a write to a global
/// (captured in the checkpoint). Nothing else can tell two NaNs apart: arithmetic,
/// comparisons, conversions, `select`, locals and calls only move or consume them, and
/// WASI functions take no floats. A NaN whose bits differ between runtimes may therefore
/// live in locals and on the operand stack (and in Asyncify's saved frames), but never
/// reaches memory, a global, an integer or a sign.
fn nan_observed(ins: &Instr, float_globals: &HashMap<walrus::GlobalId, u32>) -> Option<u32> {
    use walrus::ir::StoreKind;
    match ins {
        Instr::Store(st) => match st.kind {
            StoreKind::F32 => Some(32),
            StoreKind::F64 => Some(64),
            _ => None,
        },
        Instr::Unop(u) => match u.op {
            UnaryOp::I32ReinterpretF32 => Some(32),
            UnaryOp::I64ReinterpretF64 => Some(64),
            _ => None,
        },
        Instr::Binop(b) => match b.op {
            BinaryOp::F32Copysign => Some(32),
            BinaryOp::F64Copysign => Some(64),
            _ => None,
        },
        Instr::GlobalSet(g) => float_globals.get(&g.global).copied(),
        _ => None,
    }
}

/// Step 3: Binaryen's asyncify over the tick import (when `asyncify`), then optimisation.
fn wasm_opt(wasm: &[u8], asyncify: bool) -> Result<Vec<u8>> {
    let tool = wasm_opt_path();
    let dir = tempdir()?;
    let input = dir.0.join("in.wasm");
    let output = dir.0.join("out.wasm");
    std::fs::write(&input, wasm).map_err(|e| VmError::io(&input, "writing", e))?;
    let mut cmd = std::process::Command::new(&tool);
    cmd.arg(&input).args([
        "--enable-mutable-globals",
        "--enable-sign-ext",
        "--enable-nontrapping-float-to-int",
        "--enable-bulk-memory",
        "--enable-multivalue",
        "--enable-reference-types",
    ]);
    if asyncify {
        cmd.args([
            "--asyncify".to_string(),
            format!("--pass-arg=asyncify-imports@{TICK_MODULE}.{TICK_NAME}"),
        ]);
    }
    let out = cmd.args(["-O2", "-o"]).arg(&output).output().map_err(|e| {
        VmError::new(
            VmErrorKind::Toolchain,
            format!(
                "cannot run {} (Binaryen's wasm-opt, Debian package `binaryen`; or set \
                     LAZARUS_WASM_OPT): {e}",
                tool.display()
            ),
        )
    })?;
    if !out.status.success() {
        return Err(VmError::new(
            VmErrorKind::Toolchain,
            format!(
                "{} --asyncify failed ({}): {}",
                tool.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    std::fs::read(&output).map_err(|e| VmError::io(&output, "reading wasm-opt output", e))
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<TempDir> {
    use rand::Rng;
    let p = std::env::temp_dir().join(format!(
        "lazarus-vm-{}-{:x}",
        std::process::id(),
        rand::thread_rng().gen::<u64>()
    ));
    std::fs::create_dir(&p).map_err(|e| VmError::io(&p, "creating a temp directory", e))?;
    Ok(TempDir(p))
}

#[cfg(test)]
mod unroll_tests;
