//! A WASI preview 1 host written once over a runtime-agnostic interface: every function
//! takes the guest memory as a byte slice and its arguments as integers
//! ([`Wasi::call`]); the runtime bindings (`crate::runtime`) only move values. Because this
//! host owns all the state the program sees through WASI, that state can be captured
//! ([`Wasi::state`]) and restored ([`Wasi::resume`]) identically under any runtime.
//!
//! Determinism: `random_get` draws from a ChaCha12 stream whose seed and position are
//! captured, so a resumed program sees the bytes an uninterrupted run would have seen;
//! the monotonic clock continues from its captured value (never jumps back); directory
//! listings are sorted by name.

mod confine;
pub mod errno;
mod fs;
pub mod journal;
pub mod mem;
pub mod output;
pub mod sig;

pub(crate) use confine::{restore, Want};
use errno::*;
pub(crate) use fs::tracked_host_path;
pub use fs::{join_rel_checked, FdState, TrackedPath, MAX_FDS, MAX_WRITE_BYTES};
use mem::Mem;
pub use output::{Output, OutputState, Sink};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// A host directory made visible to the program under a guest path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preopen {
    /// Directory on the host.
    pub host: PathBuf,
    /// Name the program sees (`fd_prestat_dir_name`), e.g. `/data` or `.`.
    pub guest: String,
}

/// What the program is started with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasiConfig {
    /// `argv`, program name first.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// Preopened directories, fds 3, 4, ... in this order.
    pub preopens: Vec<Preopen>,
    /// Seed of `random_get`.
    pub seed: u64,
}

/// The WASI state a checkpoint captures (besides the contents of tracked files, which
/// are stored as their own objects).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasiState {
    /// What the program was started with.
    pub config: WasiConfig,
    /// Position of the `random_get` stream (ChaCha12 32-bit words).
    pub rng_word_pos: u128,
    /// The guest's monotonic clock at the checkpoint, ns.
    pub monotonic_ns: u64,
    /// Open descriptors.
    pub fds: Vec<(u32, FdState)>,
    /// Bytes read from stdin.
    pub stdin_consumed: u64,
    /// stdout.
    pub stdout: OutputState,
    /// stderr.
    pub stderr: OutputState,
    /// Paths the program created, wrote, renamed or removed (restored on resume).
    pub tracked: Vec<TrackedPath>,
}

/// How a WASI call ended, besides returning an errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `proc_exit(code)`.
    Exit(i32),
}

/// The host. One per program run.
pub struct Wasi {
    config: WasiConfig,
    rng: ChaCha12Rng,
    mono_base_ns: u64,
    started: Instant,
    pub(crate) fds: BTreeMap<u32, fs::Fd>,
    pub(crate) roots: Vec<PathBuf>,
    stdin_consumed: u64,
    /// The program's stdout.
    pub stdout: Output,
    /// The program's stderr.
    pub stderr: Output,
    pub(crate) tracked: std::collections::BTreeSet<TrackedPath>,
    journal: Option<journal::Journal>,
}

impl std::fmt::Debug for Wasi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wasi")
            .field("args", &self.config.args)
            .field("fds", &self.fds.len())
            .finish()
    }
}

impl Wasi {
    /// A fresh host: stdio on fds 0-2, the preopens from 3. `lines`: supervised stdout
    /// (see [`output`]).
    pub fn new(config: WasiConfig, lines: bool) -> crate::Result<Wasi> {
        let roots = fs::canonical_roots(&config.preopens)?;
        let mut w = Wasi {
            rng: ChaCha12Rng::seed_from_u64(config.seed),
            mono_base_ns: 0,
            started: Instant::now(),
            fds: BTreeMap::new(),
            roots,
            stdin_consumed: 0,
            stdout: Output::new(1, lines),
            stderr: Output::new(2, false),
            tracked: Default::default(),
            journal: None,
            config,
        };
        w.fds.insert(0, fs::Fd::Stdin);
        w.fds.insert(1, fs::Fd::Stdout);
        w.fds.insert(2, fs::Fd::Stderr);
        for i in 0..w.config.preopens.len() {
            w.fds.insert(3 + i as u32, fs::Fd::preopen(i));
        }
        Ok(w)
    }

    /// Records the state of every path before the program first changes it (see
    /// [`journal`]).
    pub fn set_journal(&mut self, j: journal::Journal) {
        self.journal = Some(j);
    }

    /// Checkpoint `id`, tracking every changed path, is committed: the journal is
    /// obsolete, and its later entries follow `id` ([`journal::Journal::committed`]).
    pub fn checkpoint_committed(&mut self, id: u64) -> std::io::Result<()> {
        match self.journal.as_mut() {
            Some(j) => j.committed(id),
            None => Ok(()),
        }
    }

    /// Called before the program changes `rel` under preopen `pre` (at `host`): the first
    /// time in this run, its current state goes to the journal and it becomes tracked. A
    /// symlink itself (unlinked, renamed, replaced) cannot be captured and restored, so
    /// changing one is refused with `ENOTSUP` (the program cannot create symlinks either).
    pub(crate) fn before_change(
        &mut self,
        pre: usize,
        rel: &str,
        host: &std::path::Path,
    ) -> Result<(), Errno> {
        if std::fs::symlink_metadata(host).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(NOTSUP);
        }
        let t = TrackedPath {
            pre,
            rel: rel.to_string(),
        };
        if rel.is_empty() || self.tracked.contains(&t) {
            return Ok(());
        }
        if let Some(j) = self.journal.as_mut() {
            j.record(host, &t).map_err(|e| {
                tracing::error!(
                    "{}: cannot record it in the undo journal: {e}",
                    host.display()
                );
                IO
            })?;
        }
        self.tracked.insert(t);
        Ok(())
    }

    /// Called before the program renames directory `r1` (under preopen `p1`) to `r2`,
    /// tracked or not: the journal records the move, so that an undo moves the directory
    /// back with its contents (a checkpoint knows only the tracked paths inside it).
    /// True when an entry was written.
    pub(crate) fn journal_move(
        &mut self,
        p1: usize,
        r1: &str,
        p2: usize,
        r2: &str,
    ) -> Result<bool, Errno> {
        let (from, to) = (
            TrackedPath {
                pre: p1,
                rel: r1.to_string(),
            },
            TrackedPath {
                pre: p2,
                rel: r2.to_string(),
            },
        );
        let Some(j) = self
            .journal
            .as_mut()
            .filter(|_| !r1.is_empty() && !r2.is_empty())
        else {
            return Ok(false);
        };
        j.record_move(&from, &to).map_err(|e| {
            tracing::error!("{r1}: cannot record its rename in the undo journal: {e}");
            IO
        })?;
        Ok(true)
    }

    /// The rename journaled by [`Wasi::journal_move`] failed: its entry is withdrawn.
    pub(crate) fn journal_unmove(&mut self) {
        if let Some(j) = self.journal.as_mut() {
            if let Err(e) = j.withdraw_last() {
                tracing::warn!("withdrawing a directory rename from the undo journal: {e}");
            }
        }
    }

    /// The configuration the program was started with.
    pub fn config(&self) -> &WasiConfig {
        &self.config
    }

    /// The state to capture. Call only between WASI calls.
    pub fn state(&self) -> WasiState {
        WasiState {
            config: self.config.clone(),
            rng_word_pos: self.rng.get_word_pos(),
            monotonic_ns: self.monotonic_ns(),
            fds: self
                .fds
                .iter()
                .map(|(n, f)| (*n, f.state(&self.roots)))
                .collect(),
            stdin_consumed: self.stdin_consumed,
            stdout: self.stdout.state(),
            stderr: self.stderr.state(),
            tracked: self.tracked.iter().cloned().collect(),
        }
    }

    /// The descriptors (number, path under its preopen) whose path no longer names the
    /// open file (renamed, replaced or deleted while open): a checkpoint taken now could
    /// not be resumed, so none is taken while this is non-empty.
    pub fn detached_fds(&self) -> Vec<(u32, String)> {
        self.fds
            .iter()
            .filter_map(|(n, f)| match f.state(&self.roots) {
                FdState::File {
                    rel,
                    detached: true,
                    ..
                } => Some((*n, rel)),
                _ => None,
            })
            .collect()
    }

    /// The host as captured in `state`: the files of `state.tracked` must already be
    /// restored; descriptors are reopened at their offsets, stdio made consistent.
    pub fn resume(state: &WasiState, lines: bool) -> crate::Result<Wasi> {
        let mut w = Wasi::new(state.config.clone(), lines)?;
        w.rng.set_word_pos(state.rng_word_pos);
        w.mono_base_ns = state.monotonic_ns;
        w.fds.clear();
        for (n, f) in &state.fds {
            let tracked = match f {
                FdState::File { pre, rel, .. } => state.tracked.contains(&TrackedPath {
                    pre: *pre,
                    rel: rel.clone(),
                }),
                _ => false,
            };
            let fd = fs::Fd::reopen(f, &w.config.preopens, tracked)
                .map_err(|e| e.context(format!("fd {n}")))?;
            w.fds.insert(*n, fd);
        }
        w.stdin_consumed = state.stdin_consumed;
        fs::skip_stdin(state.stdin_consumed);
        let io = |what: &str, e: std::io::Error| {
            crate::VmError::new(crate::VmErrorKind::Io, format!("restoring {what}: {e}"))
        };
        (w.stdout, w.stderr) = output::resume_both((1, 2), (&state.stdout, &state.stderr), lines)
            .map_err(|e| io("output", e))?;
        w.tracked = state.tracked.iter().cloned().collect();
        Ok(w)
    }

    fn monotonic_ns(&self) -> u64 {
        self.mono_base_ns
            .saturating_add(self.started.elapsed().as_nanos().min(u64::MAX as u128) as u64)
    }

    /// Runs WASI function number `func` (an index into [`sig::FUNCS`]) with `args` (i32
    /// arguments zero-extended). Returns the errno to hand back, or how the program stops.
    pub fn call(&mut self, memory: &mut [u8], func: usize, args: &[u64]) -> Result<i32, Stop> {
        let name = sig::FUNCS.get(func).map_or("", |f| f.0);
        let mut m = Mem(memory);
        let a = |i: usize| args.get(i).copied().unwrap_or(0) as u32;
        let l = |i: usize| args.get(i).copied().unwrap_or(0);
        let r = match name {
            "proc_exit" => return Err(Stop::Exit(a(0) as i32)),
            "args_get" => strings_get(&mut m, &self.config.args, a(0), a(1)),
            "args_sizes_get" => strings_sizes(&mut m, &self.config.args, a(0), a(1)),
            "environ_get" => strings_get(&mut m, &self.config.env, a(0), a(1)),
            "environ_sizes_get" => strings_sizes(&mut m, &self.config.env, a(0), a(1)),
            "clock_res_get" => match a(0) {
                0..=3 => m.put_u64(a(1), 1_000),
                _ => Err(INVAL),
            },
            "clock_time_get" => match a(0) {
                0 => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64);
                    m.put_u64(a(2), now)
                }
                1..=3 => m.put_u64(a(2), self.monotonic_ns()),
                _ => Err(INVAL),
            },
            "random_get" => m.slice_mut(a(0), a(1)).map(|b| self.rng.fill_bytes(b)),
            "sched_yield" => Ok(()),
            "poll_oneoff" => self.poll_oneoff(&mut m, a(0), a(1), a(2), a(3)),
            "proc_raise" | "sock_accept" | "sock_recv" | "sock_send" | "sock_shutdown"
            | "path_link" | "path_symlink" => Err(NOTSUP),
            _ => self.fs_call(&mut m, name, &a, &l),
        };
        Ok(match r {
            Ok(()) => SUCCESS as i32,
            Err(e) => e as i32,
        })
    }

    /// Clock subscriptions sleep until the earliest deadline; descriptor subscriptions
    /// are reported ready at once (every descriptor here is blocking).
    fn poll_oneoff(
        &mut self,
        m: &mut Mem<'_>,
        input: u32,
        out: u32,
        n: u32,
        nevents: u32,
    ) -> Result<(), Errno> {
        if n == 0 {
            return Err(INVAL);
        }
        let mut events = Vec::new();
        let mut sleep_ns: Option<u64> = None;
        let mut clocks = Vec::new();
        for k in 0..n {
            let s = input
                .checked_add(k.checked_mul(48).ok_or(FAULT)?)
                .ok_or(FAULT)?;
            // A field's address may pass 4 GiB when the record sits at the end of a full
            // 32-bit memory: EFAULT, never a wrapped address.
            let at = |off: u32| s.checked_add(off).ok_or(FAULT);
            let userdata = m.u64(s)?;
            let tag = m.slice(at(8)?, 1)?[0];
            match tag {
                0 => {
                    let id = m.u32(at(16)?)?;
                    let timeout = m.u64(at(24)?)?;
                    let flags =
                        u16::from_le_bytes(m.slice(at(40)?, 2)?.try_into().map_err(|_| FAULT)?);
                    let rel = if flags & 1 != 0 {
                        let now = if id == 0 {
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_nanos() as u64)
                        } else {
                            self.monotonic_ns()
                        };
                        timeout.saturating_sub(now)
                    } else {
                        timeout
                    };
                    sleep_ns = Some(sleep_ns.map_or(rel, |s| s.min(rel)));
                    clocks.push((userdata, rel));
                }
                1 | 2 => events.push((userdata, tag, SUCCESS)),
                _ => return Err(INVAL),
            }
        }
        if events.is_empty() {
            let d = sleep_ns.unwrap_or(0);
            std::thread::sleep(std::time::Duration::from_nanos(d));
            events.extend(
                clocks
                    .iter()
                    .filter(|(_, rel)| *rel <= d)
                    .map(|(u, _)| (*u, 0u8, SUCCESS)),
            );
        }
        for (i, (userdata, ty, err)) in events.iter().enumerate() {
            let e = out
                .checked_add((i as u32).checked_mul(32).ok_or(FAULT)?)
                .ok_or(FAULT)?;
            let mut rec = [0u8; 32];
            rec[0..8].copy_from_slice(&userdata.to_le_bytes());
            rec[8..10].copy_from_slice(&err.to_le_bytes());
            rec[10] = *ty;
            m.write(e, &rec)?;
        }
        m.put_u32(nevents, events.len() as u32)
    }
}

fn strings_get(m: &mut Mem<'_>, list: &[String], ptrs: u32, buf: u32) -> Result<(), Errno> {
    // Every address is checked: the last string may end on the last byte of a full 4 GiB
    // memory, and the next one must then be EFAULT, not written at address 0.
    let mut at = Some(buf);
    for (i, s) in list.iter().enumerate() {
        let here = at.ok_or(FAULT)?;
        let slot = u32::try_from(i)
            .ok()
            .and_then(|i| i.checked_mul(4))
            .and_then(|o| ptrs.checked_add(o))
            .ok_or(FAULT)?;
        m.put_u32(slot, here)?;
        m.write(here, s.as_bytes())?;
        let len = u32::try_from(s.len()).map_err(|_| FAULT)?;
        let end = here.checked_add(len).ok_or(FAULT)?;
        m.write(end, &[0])?;
        at = end.checked_add(1);
    }
    Ok(())
}

fn strings_sizes(m: &mut Mem<'_>, list: &[String], count: u32, size: u32) -> Result<(), Errno> {
    m.put_u32(count, list.len() as u32)?;
    let total: usize = list.iter().map(|s| s.len() + 1).sum();
    m.put_u32(size, u32::try_from(total).map_err(|_| FAULT)?)
}
