//! wasmtime glue (cargo feature `wasmtime`): registers the WASI functions and the hook,
//! moves values. No logic here; it mirrors `wasmi.rs` line for line.

use super::{GlobalValue, Guest, HostData, Instance, RunEnd};
use crate::error::{Result, VmError, VmErrorKind};
use crate::instrument::{
    BUDGET_EXPORT, GLOBAL_EXPORT_PREFIX, MEMORY_EXPORT, TICK_MODULE, TICK_NAME,
};
use crate::wasi::sig::{self, Ty};
use crate::wasi::Stop;
use wasmtime::{
    Caller, Config, Engine, Extern, Func, FuncType, Linker, Memory, Module, Store, Val, ValType,
};

pub(crate) struct Data {
    host: HostData,
    mem: Option<Memory>,
}

/// `proc_exit` travelling through wasmtime as an error.
#[derive(Debug)]
struct ProcExit(i32);

impl std::fmt::Display for ProcExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proc_exit({})", self.0)
    }
}

impl std::error::Error for ProcExit {}

/// A module instantiated on wasmtime.
pub struct WasmtimeInstance {
    store: Store<Data>,
    instance: wasmtime::Instance,
    mem: Memory,
}

fn err(what: &str, e: impl std::fmt::Display) -> VmError {
    VmError::new(VmErrorKind::Trap, format!("wasmtime: {what}: {e}"))
}

fn vt(t: Ty) -> ValType {
    match t {
        Ty::I32 => ValType::I32,
        Ty::I64 => ValType::I64,
    }
}

fn to_u64(v: &Val) -> u64 {
    match v {
        Val::I32(x) => *x as u32 as u64,
        Val::I64(x) => *x as u64,
        _ => 0,
    }
}

struct CallerGuest<'a, 'b>(&'a mut Caller<'b, Data>);

impl CallerGuest<'_, '_> {
    fn func(&mut self, name: &str) -> Result<Func> {
        self.0
            .get_export(name)
            .and_then(Extern::into_func)
            .ok_or_else(|| err("missing export", name))
    }
}

impl Guest for CallerGuest<'_, '_> {
    fn ctl(&mut self) -> &mut super::Control {
        &mut self.0.data_mut().host.ctl
    }
    fn call(&mut self, export: &str, arg: Option<i32>) -> Result<()> {
        let f = self.func(export)?;
        let args: Vec<Val> = arg.map(Val::I32).into_iter().collect();
        f.call(&mut *self.0, &args, &mut [])
            .map_err(|e| err(export, e))
    }
    fn set_budget(&mut self, v: i32) -> Result<()> {
        let g = self
            .0
            .get_export(BUDGET_EXPORT)
            .and_then(Extern::into_global)
            .ok_or_else(|| err("missing export", BUDGET_EXPORT))?;
        g.set(&mut *self.0, Val::I32(v))
            .map_err(|e| err("budget", e))
    }
    fn pages(&mut self) -> u64 {
        self.0.data().mem.map_or(0, |m| m.size(&*self.0))
    }
    fn grow(&mut self, pages: u64) -> Result<()> {
        let m = self.0.data().mem.ok_or_else(|| err("memory", "missing"))?;
        m.grow(&mut *self.0, pages)
            .map(|_| ())
            .map_err(|e| err("growing memory for the unwind region", e))
    }
    fn write(&mut self, at: u32, bytes: &[u8]) -> Result<()> {
        let m = self.0.data().mem.ok_or_else(|| err("memory", "missing"))?;
        m.write(&mut *self.0, at as usize, bytes)
            .map_err(|e| err("memory write", e))
    }
}

impl WasmtimeInstance {
    /// Instantiates the instrumented `module` with `host`.
    pub fn new(module: &[u8], host: HostData) -> Result<WasmtimeInstance> {
        let mut config = Config::new();
        // The module canonicalises NaNs itself (instrument.rs); Cranelift's own pass
        // would do the same work twice. The stack limit matches wasmi's depth limit in
        // spirit: the runner's thread has a stack large enough for it.
        config.max_wasm_stack(super::WASMTIME_STACK_BYTES);
        // Checked against max_wasm_stack even without async execution.
        config.async_stack_size(super::WASMTIME_STACK_BYTES);
        let engine = Engine::new(&config).map_err(|e| err("engine", e))?;
        let m = Module::new(&engine, module)
            .map_err(|e| err("compiling the instrumented module", e))?;
        let mut store = Store::new(&engine, Data { host, mem: None });
        let mut linker: Linker<Data> = Linker::new(&engine);
        for (idx, (name, params, result)) in sig::FUNCS.iter().enumerate() {
            let ty = FuncType::new(
                &engine,
                params.iter().map(|t| vt(*t)),
                result.iter().map(|t| vt(*t)),
            );
            linker
                .func_new(
                    sig::WASI_MODULE,
                    name,
                    ty,
                    move |mut caller: Caller<'_, Data>, args: &[Val], results: &mut [Val]| {
                        let mem = caller
                            .data()
                            .mem
                            .ok_or_else(|| wasmtime::Error::msg("no memory"))?;
                        let (bytes, data) = mem.data_and_store_mut(&mut caller);
                        let a: Vec<u64> = args.iter().map(to_u64).collect();
                        match data.host.wasi.call(bytes, idx, &a) {
                            Ok(errno) => {
                                if let Some(r) = results.first_mut() {
                                    *r = Val::I32(errno);
                                }
                                Ok(())
                            }
                            Err(Stop::Exit(code)) => Err(wasmtime::Error::new(ProcExit(code))),
                        }
                    },
                )
                .map_err(|e| err("linking WASI", e))?;
        }
        linker
            .func_new(
                TICK_MODULE,
                TICK_NAME,
                FuncType::new(&engine, [], []),
                |mut caller: Caller<'_, Data>, _: &[Val], _: &mut [Val]| {
                    super::tick(&mut CallerGuest(&mut caller))
                        .map_err(|e| wasmtime::Error::msg(e.to_string()))
                },
            )
            .map_err(|e| err("linking the hook", e))?;
        let instance = linker
            .instantiate(&mut store, &m)
            .map_err(|e| err("instantiating", e))?;
        let mem = instance
            .get_memory(&mut store, MEMORY_EXPORT)
            // An uninstrumented module (benchmarks) exports its memory as wasi-libc does.
            .or_else(|| instance.get_memory(&mut store, "memory"))
            .ok_or_else(|| err("missing export", MEMORY_EXPORT))?;
        store.data_mut().mem = Some(mem);
        Ok(WasmtimeInstance {
            store,
            instance,
            mem,
        })
    }
}

impl Instance for WasmtimeInstance {
    fn run_start(&mut self) -> Result<RunEnd> {
        let f = self
            .instance
            .get_func(&mut self.store, "_start")
            .ok_or_else(|| err("missing export", "_start"))?;
        self.store.data_mut().host.ctl.in_start = true;
        let r = f.call(&mut self.store, &[], &mut []);
        self.store.data_mut().host.ctl.in_start = false;
        match r {
            Ok(()) => Ok(RunEnd::Returned),
            Err(e) => match e.downcast_ref::<ProcExit>() {
                Some(ProcExit(code)) => Ok(RunEnd::Exit(*code)),
                None => Err(VmError::new(
                    VmErrorKind::Trap,
                    format!("the program trapped: {e:#}"),
                )),
            },
        }
    }

    fn call(&mut self, export: &str, arg: Option<i32>) -> Result<()> {
        let f = self
            .instance
            .get_func(&mut self.store, export)
            .ok_or_else(|| err("missing export", export))?;
        let args: Vec<Val> = arg.map(Val::I32).into_iter().collect();
        f.call(&mut self.store, &args, &mut [])
            .map_err(|e| err(export, e))
    }

    fn memory(&mut self) -> &mut [u8] {
        self.mem.data_mut(&mut self.store)
    }

    fn grow_to(&mut self, pages: u64) -> Result<()> {
        let now = self.mem.size(&self.store);
        if pages > now {
            self.mem
                .grow(&mut self.store, pages - now)
                .map_err(|e| err("growing memory to the checkpoint's size", e))?;
        }
        Ok(())
    }

    fn globals(&mut self) -> Result<Vec<(String, GlobalValue)>> {
        let exports: Vec<(String, wasmtime::Global)> = self
            .instance
            .exports(&mut self.store)
            .filter(|e| e.name().starts_with(GLOBAL_EXPORT_PREFIX))
            .filter_map(|e| {
                let name = e.name().to_string();
                e.into_global().map(|g| (name, g))
            })
            .collect();
        let mut out = Vec::new();
        for (name, g) in exports {
            let v = match g.get(&mut self.store) {
                Val::I32(x) => GlobalValue::I32(x as u32),
                Val::I64(x) => GlobalValue::I64(x as u64),
                Val::F32(x) => GlobalValue::F32(x),
                Val::F64(x) => GlobalValue::F64(x),
                _ => {
                    return Err(VmError::new(
                        VmErrorKind::Unsupported,
                        format!("global {name} has a reference type"),
                    ))
                }
            };
            out.push((name, v));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn set_global(&mut self, name: &str, v: GlobalValue) -> Result<()> {
        let g = self
            .instance
            .get_global(&mut self.store, name)
            .ok_or_else(|| {
                VmError::new(
                    VmErrorKind::Corrupt,
                    format!("the module has no global {name}"),
                )
            })?;
        let val = match v {
            GlobalValue::I32(x) => Val::I32(x as i32),
            GlobalValue::I64(x) => Val::I64(x as i64),
            GlobalValue::F32(x) => Val::F32(x),
            GlobalValue::F64(x) => Val::F64(x),
        };
        g.set(&mut self.store, val)
            .map_err(|e| VmError::new(VmErrorKind::Corrupt, format!("global {name}: {e}")))
    }

    fn host(&mut self) -> &mut HostData {
        &mut self.store.data_mut().host
    }
}
