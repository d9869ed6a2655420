//! The runtime-agnostic side of running an instrumented module: the host state every
//! runtime binding carries ([`HostData`]), the checkpoint hook's logic (`tick`), and the
//! small interface the runner drives (`Instance`). `wasmi.rs` and `wasmtime.rs` are thin
//! glue: they register [`crate::wasi::sig::FUNCS`] and `lazarus.tick` and move values.

use crate::error::{Result, VmError, VmErrorKind};
use crate::wasi::Wasi;
use lazarus_policy::{Opportunity, Policy};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

pub mod wasmi;
#[cfg(feature = "wasmtime")]
pub mod wasmtime;

/// Which engine runs the module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// wasmi, a pure-Rust interpreter (always available).
    Wasmi,
    /// wasmtime with Cranelift (cargo feature `wasmtime`).
    Wasmtime,
}

impl RuntimeKind {
    /// The name used on the command line and in checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Wasmi => "wasmi",
            RuntimeKind::Wasmtime => "wasmtime",
        }
    }

    /// True when this build includes the runtime.
    pub fn available(self) -> bool {
        match self {
            RuntimeKind::Wasmi => true,
            RuntimeKind::Wasmtime => cfg!(feature = "wasmtime"),
        }
    }
}

impl std::str::FromStr for RuntimeKind {
    type Err = VmError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "wasmi" => Ok(RuntimeKind::Wasmi),
            "wasmtime" => Ok(RuntimeKind::Wasmtime),
            _ => Err(VmError::new(
                VmErrorKind::InvalidArgument,
                format!("unknown runtime {s:?} (wasmi or wasmtime)"),
            )),
        }
    }
}

/// The value of a global, as its bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    content = "bits",
    rename_all = "lowercase",
    deny_unknown_fields
)]
pub enum GlobalValue {
    /// i32
    I32(u32),
    /// i64
    I64(u64),
    /// f32 (bits)
    F32(u32),
    /// f64 (bits)
    F64(u64),
}

/// Where the execution is with respect to Asyncify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Running normally.
    Normal,
    /// The hook started an unwind: `_start` returns with the stack saved.
    Unwinding,
    /// `_start` was called to rewind into the saved stack; the hook stops it.
    Rewinding,
}

/// The region of linear memory that holds the saved call stack (Asyncify's data: an
/// 8-byte header `{current, end}` then the frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnwindRegion {
    /// First byte (64 KiB aligned).
    pub start: u32,
    /// Length in bytes.
    pub len: u32,
}

/// The checkpoint hook's state: counting, the policy, the Asyncify phase.
pub struct Control {
    /// Asyncify phase.
    pub phase: Phase,
    /// Counted steps (loop iterations and recursive calls) executed so far.
    pub steps: u64,
    /// The budget handed to the module at the last tick (consumed by the next one).
    last_budget: u32,
    /// `--every STEPS`: ticks land exactly on multiples of it; else the budget adapts to
    /// ~10 ms between ticks.
    fixed_quantum: Option<u64>,
    quantum: u32,
    last_tick: Instant,
    policy: Box<dyn Policy>,
    /// The unwind region, once allocated.
    pub region: Option<UnwindRegion>,
    /// Size of the region to allocate.
    pub region_bytes: u32,
    /// True while `_start` runs (a tick during instantiation never checkpoints).
    pub in_start: bool,
    /// Set by the runner to stop at the next tick (tests: deterministic checkpoints).
    pub force: bool,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("phase", &self.phase)
            .field("steps", &self.steps)
            .finish()
    }
}

impl Control {
    /// A hook following `policy`; `steps_quantum`: tick exactly every this many steps.
    pub fn new(policy: Box<dyn Policy>, steps_quantum: Option<u64>, region_bytes: u32) -> Self {
        let fixed = steps_quantum.map(|q| q.max(1));
        Control {
            phase: Phase::Normal,
            steps: 0,
            last_budget: 0,
            fixed_quantum: fixed,
            quantum: 1 << 16,
            last_tick: Instant::now(),
            policy,
            region: None,
            region_bytes,
            in_start: false,
            force: false,
        }
    }

    /// Restores the step counter of a checkpoint.
    pub fn resume_at(&mut self, steps: u64, region: Option<UnwindRegion>) {
        self.steps = steps;
        self.region = region;
        self.last_budget = 0;
    }

    /// Tells the policy a checkpoint was taken.
    pub fn checkpoint_taken(&mut self, cost: Duration) {
        let at = Opportunity {
            step: self.steps,
            now: Instant::now(),
        };
        self.policy.checkpoint_taken(at, cost);
    }

    fn next_budget(&mut self) -> u32 {
        if let Some(n) = self.fixed_quantum {
            // The budget is an i32: a larger interval takes several ticks, the last one
            // landing exactly on the multiple of n.
            let to_next = n - self.steps % n;
            self.last_budget = to_next.min(i32::MAX as u64) as u32;
            return self.last_budget;
        }
        // Aim for a tick every ~10 ms whatever the speed of the code.
        let dt = self.last_tick.elapsed();
        if dt < Duration::from_millis(5) {
            self.quantum = self.quantum.saturating_mul(2).min(1 << 30);
        } else if dt > Duration::from_millis(20) {
            self.quantum = (self.quantum / 2).max(1 << 10);
        }
        self.last_tick = Instant::now();
        self.last_budget = self.quantum;
        self.quantum
    }
}

/// What one runtime's store carries: the WASI host and the hook.
#[derive(Debug)]
pub struct HostData {
    /// The WASI host.
    pub wasi: Wasi,
    /// The checkpoint hook.
    pub ctl: Control,
}

/// What the hook needs from the guest, implemented by each runtime over its caller.
pub(crate) trait Guest {
    fn ctl(&mut self) -> &mut Control;
    fn call(&mut self, export: &str, arg: Option<i32>) -> Result<()>;
    fn set_budget(&mut self, v: i32) -> Result<()>;
    fn pages(&mut self) -> u64;
    fn grow(&mut self, pages: u64) -> Result<()>;
    fn write(&mut self, at: u32, bytes: &[u8]) -> Result<()>;
}

/// The `lazarus.tick` import: counts, asks the policy, and starts an unwind when a
/// checkpoint is due; when rewinding, it ends the rewind (the program continues right
/// after the call it checkpointed in).
pub(crate) fn tick(g: &mut dyn Guest) -> Result<()> {
    let ctl = g.ctl();
    if ctl.phase == Phase::Rewinding {
        ctl.phase = Phase::Normal;
        // The region's frames are consumed: a resume with a larger --unwind-buffer moves
        // the region to the end of memory at the next checkpoint.
        if ctl.region.is_some_and(|r| r.len < ctl.region_bytes) {
            ctl.region = None;
        }
        let b = ctl.next_budget();
        g.call("asyncify_stop_rewind", None)?;
        return g.set_budget(b as i32);
    }
    ctl.steps += u64::from(ctl.last_budget);
    let at = Opportunity {
        step: ctl.steps,
        now: Instant::now(),
    };
    let due = ctl.in_start && (std::mem::take(&mut ctl.force) || ctl.policy.should_checkpoint(at));
    if !due {
        let b = ctl.next_budget();
        return g.set_budget(b as i32);
    }
    let region = match ctl.region {
        Some(r) => r,
        None => {
            // Allocated at the first checkpoint, at the end of memory as it is then, so
            // a program that never checkpoints sees exactly its own memory sizes.
            let bytes = ctl.region_bytes;
            let pages = u64::from(bytes.div_ceil(65536));
            let r = new_region(g.pages(), pages)?;
            g.grow(pages)?;
            g.ctl().region = Some(r);
            r
        }
    };
    g.write(region.start, &region_header(region)?)?;
    g.ctl().phase = Phase::Unwinding;
    g.call("asyncify_start_unwind", Some(region.start as i32))
}

fn no_room(what: String) -> VmError {
    VmError::new(
        VmErrorKind::Trap,
        format!(
            "{what}: Asyncify's end pointer is 32-bit, so the unwind region must end below \
             4 GiB; give the program less memory or a smaller --unwind-buffer"
        ),
    )
}

/// The unwind region of `pages` pages placed after a memory of `mem_pages` pages, refused
/// (before growing anything) when it would end at or past 4 GiB, where its end address no
/// longer fits Asyncify's 32-bit pointer.
fn new_region(mem_pages: u64, pages: u64) -> Result<UnwindRegion> {
    let start = mem_pages.saturating_mul(65536);
    let len = pages.saturating_mul(65536);
    let end = start.saturating_add(len);
    match (u32::try_from(start), u32::try_from(len), u32::try_from(end)) {
        (Ok(start), Ok(len), Ok(_)) => Ok(UnwindRegion { start, len }),
        _ => Err(no_room(format!(
            "no room for the {len}-byte unwind region after {start} bytes of memory"
        ))),
    }
}

/// Asyncify's data header at the start of `r`: the first free address (after the header)
/// and the end. Checked: a region ending at exactly 4 GiB (a resumed region, or memory
/// grown to the limit) would otherwise wrap the end to 0 (and panic in a debug build).
fn region_header(r: UnwindRegion) -> Result<[u8; 8]> {
    let (Some(first), Some(end)) = (r.start.checked_add(8), r.start.checked_add(r.len)) else {
        return Err(no_room(format!("the unwind region {r:?} reaches 4 GiB")));
    };
    let mut header = [0u8; 8];
    header[0..4].copy_from_slice(&first.to_le_bytes());
    header[4..8].copy_from_slice(&end.to_le_bytes());
    Ok(header)
}

/// How a call of `_start` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// `_start` returned (program done, or unwound for a checkpoint: see the phase).
    Returned,
    /// `proc_exit(code)`.
    Exit(i32),
}

/// What the runner drives: one instantiated module.
pub(crate) trait Instance {
    /// Calls `_start` (to run, or to rewind after `asyncify_start_rewind`).
    fn run_start(&mut self) -> Result<RunEnd>;
    /// Calls an export taking no or one i32 argument.
    fn call(&mut self, export: &str, arg: Option<i32>) -> Result<()>;
    /// The linear memory.
    fn memory(&mut self) -> &mut [u8];
    /// Grows the memory to `pages` (no-op when already that large).
    fn grow_to(&mut self, pages: u64) -> Result<()>;
    /// The exported mutable globals (`__lz_g*`) by export name, sorted.
    fn globals(&mut self) -> Result<Vec<(String, GlobalValue)>>;
    /// Sets an exported global.
    fn set_global(&mut self, name: &str, v: GlobalValue) -> Result<()>;
    /// The host state.
    fn host(&mut self) -> &mut HostData;
}

/// Instantiates `module` (instrumented) on `kind`.
pub(crate) fn instantiate(
    kind: RuntimeKind,
    module: &[u8],
    host: HostData,
) -> Result<Box<dyn Instance>> {
    match kind {
        RuntimeKind::Wasmi => Ok(Box::new(wasmi::WasmiInstance::new(module, host)?)),
        #[cfg(feature = "wasmtime")]
        RuntimeKind::Wasmtime => Ok(Box::new(wasmtime::WasmtimeInstance::new(module, host)?)),
        #[cfg(not(feature = "wasmtime"))]
        RuntimeKind::Wasmtime => Err(VmError::new(
            VmErrorKind::InvalidArgument,
            "this build has no wasmtime runtime (cargo feature `wasmtime` of lazarus-vm)",
        )),
    }
}

/// Maximum call depth allowed to a program on wasmi.
pub const MAX_CALL_DEPTH: usize = 100_000;

/// Native stack wasmtime may use for wasm frames (the runner's thread gets more).
pub const WASMTIME_STACK_BYTES: usize = 256 << 20;

/// Stack size of the thread the runner executes the program on.
pub const RUNNER_STACK_BYTES: usize = 512 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: with `--every` above i32::MAX the budget was clamped and the step
    /// count never landed on a multiple of the interval, so no checkpoint was ever due.
    #[test]
    fn step_intervals_above_the_i32_budget_land_exactly_on_their_multiples() {
        let n = 5_000_000_000u64;
        let mut c = Control::new(Box::new(lazarus_policy::EverySteps::new(n)), Some(n), 0);
        let mut due = Vec::new();
        for _ in 0..10 {
            c.steps += u64::from(c.last_budget);
            if c.steps > 0 && c.steps.is_multiple_of(n) {
                due.push(c.steps);
            }
            c.next_budget();
        }
        assert_eq!(due, vec![n, 2 * n, 3 * n]);
        assert!(u64::from(c.last_budget) <= i32::MAX as u64);
    }

    /// Regression (review): `region.start + region.len` overflowed for a region ending at
    /// exactly 4 GiB (debug: panic; release: an end pointer of 0, so Asyncify saw no room
    /// at all), and the region's length was cast to u32 unchecked.
    #[test]
    fn unwind_region_reaching_4_gib_is_an_error_naming_it() {
        let last_page = UnwindRegion {
            start: u32::MAX - 65535,
            len: 65536,
        };
        let e = region_header(last_page).unwrap_err().to_string();
        assert!(e.contains("4 GiB"), "{e}");
        let e = new_region(65535, 1).unwrap_err().to_string();
        assert!(e.contains("4 GiB") && e.contains("65536-byte"), "{e}");
        assert!(new_region(0, 65536).is_err(), "a 4 GiB region");
        // Below the limit the header is the first free byte and the end.
        let r = new_region(65534, 1).unwrap();
        assert_eq!(
            r,
            UnwindRegion {
                start: u32::MAX - 2 * 65535 - 1,
                len: 65536
            }
        );
        let h = region_header(r).unwrap();
        assert_eq!(u32::from_le_bytes(h[0..4].try_into().unwrap()), r.start + 8);
        assert_eq!(
            u32::from_le_bytes(h[4..8].try_into().unwrap()),
            u32::MAX - 65535
        );
    }
}
