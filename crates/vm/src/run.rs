//! The runner: fresh start or resume, then the loop "run until the hook unwinds, write a
//! checkpoint, rewind, continue" until the program exits.

use crate::error::{corrupt, Result, VmError, VmErrorKind};
use crate::instrument;
use crate::meta::{objects, FileEntry, FileState, ProgramId, VmMeta, VM_META_VERSION};
use crate::runtime::{self, Control, HostData, Instance, Phase, RunEnd, RuntimeKind};
use crate::store::{Obj, VmRepo, WriteStats};
use crate::wasi::journal::Journal;
use crate::wasi::{restore, tracked_host_path, Preopen, Want, Wasi, WasiConfig};
use lazarus_format::CheckpointId;
use lazarus_policy::{FailureHistory, Formula, ModelSpec, PolicySpec};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// When to checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum Every {
    /// Exactly every N counted steps (loop iterations and recursive calls): the same
    /// program positions on every runtime.
    Steps(u64),
    /// A time- or model-based policy (`10s`, `auto`, `daly,mtbf=6h`, ...).
    Policy(PolicySpec),
    /// Never (no repository).
    Never,
}

impl Every {
    /// Parses `--every`: an integer is steps, `auto` is Daly's interval with the measured
    /// checkpoint cost and the supervisor's failure history, a duration (`30s`, `500ms`)
    /// a fixed interval, anything else a `lazarus-policy` spec.
    pub fn parse(s: &str) -> Result<Every> {
        if let Ok(n) = s.parse::<u64>() {
            if n == 0 {
                return Err(VmError::new(
                    VmErrorKind::InvalidArgument,
                    "--every 0: must be at least 1 step",
                ));
            }
            return Ok(Every::Steps(n));
        }
        if s == "auto" {
            return Ok(Every::Policy(PolicySpec::Model(ModelSpec::new(
                Formula::DalyHigherOrder,
            ))));
        }
        if let Ok(d) = lazarus_policy::parse_duration("--every", s) {
            return Ok(Every::Policy(PolicySpec::EveryInterval(d)));
        }
        s.parse::<PolicySpec>()
            .map(Every::Policy)
            .map_err(|e| VmError::new(VmErrorKind::InvalidArgument, format!("--every {s:?}: {e}")))
    }

    fn control(&self, region_bytes: u32) -> Control {
        match self {
            Every::Steps(n) => Control::new(
                Box::new(lazarus_policy::EverySteps::new(*n)),
                Some(*n),
                region_bytes,
            ),
            Every::Policy(p) => {
                let history = FailureHistory::from_env().ok().flatten();
                Control::new(p.build(history), None, region_bytes)
            }
            Every::Never => Control::new(Box::new(Never), None, region_bytes),
        }
    }
}

struct Never;
impl lazarus_policy::Policy for Never {
    fn should_checkpoint(&mut self, _: lazarus_policy::Opportunity) -> bool {
        false
    }
    fn checkpoint_taken(&mut self, _: lazarus_policy::Opportunity, _: std::time::Duration) {}
}

/// Everything `lazarus vm run` needs.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The WASI command module.
    pub module: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Environment (`KEY=VALUE`).
    pub env: Vec<String>,
    /// Preopened directories.
    pub preopens: Vec<Preopen>,
    /// Seed of `random_get`; `None`: from the OS on a fresh start, the recorded one on
    /// resume.
    pub seed: Option<u64>,
    /// Checkpoint repository; `None` runs without checkpoints.
    pub repo: Option<PathBuf>,
    /// The supervisor's job token (shares its repository lock).
    pub job_token: Option<String>,
    /// Write supervisor output-commit markers (with the key `lazarus run` puts in
    /// `LAZARUS_OUTPUT_MARKERS`; without one none are written).
    pub markers: bool,
    /// When to checkpoint.
    pub every: Every,
    /// Which runtime executes.
    pub runtime: RuntimeKind,
    /// Committed checkpoints kept (older ones are garbage-collected).
    pub keep: usize,
    /// Where instrumented modules are cached (`None`: not cached).
    pub cache_dir: Option<PathBuf>,
    /// Size of the region that receives the saved call stack at a checkpoint.
    pub unwind_bytes: u32,
    /// Test hook: stop (as if killed) right after this many checkpoints of this run.
    pub stop_after_checkpoints: Option<u64>,
    /// Called once the program's stdout and stderr are where it goes on writing (put
    /// back to the checkpoint's offsets on a resume), before the program runs; also when
    /// a run ends before that. The `lazarus` command releases the log lines it held back
    /// until then (`lazarus::hold_log_lines`), so that none lands over the program's
    /// output in a file the restarted process inherited at offset 0.
    pub streams_positioned: Option<fn()>,
}

impl VmConfig {
    /// Defaults for running `module` with `args`: wasmi, no repository, 8 MiB unwind
    /// region, keep 2 checkpoints, cache under `$XDG_CACHE_HOME/lazarus/vm`.
    pub fn new(module: impl Into<PathBuf>, args: Vec<String>) -> VmConfig {
        VmConfig {
            module: module.into(),
            args,
            env: Vec::new(),
            preopens: Vec::new(),
            seed: None,
            repo: None,
            job_token: None,
            markers: false,
            every: Every::Never,
            runtime: RuntimeKind::Wasmi,
            keep: 2,
            cache_dir: default_cache_dir(),
            unwind_bytes: 8 << 20,
            stop_after_checkpoints: None,
            streams_positioned: None,
        }
    }
}

/// `$LAZARUS_VM_CACHE`, else `$XDG_CACHE_HOME/lazarus/vm`, else `~/.cache/lazarus/vm`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LAZARUS_VM_CACHE") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("lazarus").join("vm"))
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The program's exit status.
    pub exit_code: i32,
    /// Checkpoints written by this run.
    pub checkpoints: Vec<WriteStats>,
    /// The checkpoint resumed from (id, steps).
    pub resumed: Option<(CheckpointId, u64)>,
    /// Checkpoints skipped as damaged before the one resumed.
    pub skipped: Vec<String>,
    /// Counted steps at the end.
    pub steps: u64,
    /// The repository said the program had already exited: nothing ran.
    pub already_finished: bool,
    /// Stopped by [`VmConfig::stop_after_checkpoints`] (held output not written).
    pub stopped: bool,
    /// Checkpoints that were due but not taken because a descriptor was detached (its
    /// file renamed, replaced or deleted while open: see [`crate::wasi::Wasi::detached_fds`]).
    pub postponed: u64,
}

/// Runs (or resumes) the program of `cfg` to its end, on a thread with a stack large
/// enough for deep guest recursion on either runtime.
pub fn run(cfg: &VmConfig) -> Result<Report> {
    let c = cfg.clone();
    std::thread::Builder::new()
        .name("lazarus-vm".into())
        .stack_size(runtime::RUNNER_STACK_BYTES)
        .spawn(move || run_here(&c))
        .map_err(|e| VmError::new(VmErrorKind::Io, format!("starting the VM thread: {e}")))?
        .join()
        .map_err(|_| VmError::new(VmErrorKind::Trap, "the VM thread panicked"))?
}

fn run_here(cfg: &VmConfig) -> Result<Report> {
    let original = std::fs::read(&cfg.module)
        .map_err(|e| VmError::io(&cfg.module, "reading the module", e))?;
    let program = ProgramId {
        digest: blake3::hash(&original).to_hex().to_string(),
        name: cfg.module.file_name().map_or_else(
            || "program.wasm".into(),
            |n| n.to_string_lossy().into_owned(),
        ),
        bytes: original.len() as u64,
    };
    instrument::check(&original).map_err(|e| e.context(cfg.module.display()))?;
    let mut preopens = Vec::new();
    for p in &cfg.preopens {
        let host = std::fs::canonicalize(&p.host)
            .map_err(|e| VmError::io(&p.host, "preopened directory", e))?;
        preopens.push(Preopen {
            host,
            guest: p.guest.clone(),
        });
    }
    let mut argv = vec![program.name.clone()];
    argv.extend(cfg.args.iter().cloned());
    let mut repo = match &cfg.repo {
        Some(p) => Some(VmRepo::open(p, cfg.job_token.clone(), cfg.keep)?),
        None => None,
    };
    let mut report = Report::default();
    let journal = match &repo {
        Some(r) => {
            let dir = r.path().join(JOURNAL_DIR);
            Some(
                Journal::open(&dir)
                    .map_err(|e| VmError::io(&dir, "opening the undo journal", e))?,
            )
        }
        None => None,
    };
    let resumed = match &repo {
        Some(r) => find_checkpoint(r, &program, &mut report)?,
        None => None,
    };
    let mut ctl = cfg.every.control(cfg.unwind_bytes);
    let (mut inst, module) = match resumed {
        Some((id, meta, objs)) => {
            // Also for a finished program: another command line is another job, refused
            // rather than answered with this one's exit status (test
            // `finished_record_refuses_another_command_line`).
            check_same_command(
                &meta,
                &argv,
                &cfg.env,
                &preopens,
                cfg.seed,
                repo.as_ref().map(VmRepo::path),
            )?;
            if let Some(code) = meta.exit {
                // Nothing runs and nothing is written again, so nothing is truncated
                // (bytes appended after the program ended stay: test
                // `rerun_of_a_finished_program_keeps_what_others_appended`); a stream
                // that is still the program's output file only moves to its end, so
                // whatever is written now, such as the caller's note, follows the output
                // instead of overwriting it from the descriptor's current offset (test
                // `rerun_of_a_finished_program_keeps_its_output`).
                let io = |stream: &str, e: std::io::Error| {
                    VmError::new(VmErrorKind::Io, format!("{stream}: {e}"))
                };
                crate::wasi::output::position_at_end(1, &meta.wasi.stdout)
                    .map_err(|e| io("stdout", e))?;
                crate::wasi::output::position_at_end(2, &meta.wasi.stderr)
                    .map_err(|e| io("stderr", e))?;
                if let Some(f) = cfg.streams_positioned {
                    f();
                }
                report.exit_code = code;
                report.already_finished = true;
                report.resumed = Some((id, meta.steps));
                return Ok(report);
            }
            report.resumed = Some((id, meta.steps));
            report.steps = meta.steps;
            let (inst, module) = resume(cfg.runtime, id, &meta, objs, ctl, cfg.markers, journal)?;
            (inst, module)
        }
        None => {
            let module = instrument::instrument_cached(&original, cfg.cache_dir.as_deref())
                .map_err(|e| e.context(cfg.module.display()))?;
            let seed = cfg.seed.unwrap_or_else(rand::random);
            // A run killed before its first checkpoint may have changed files: undo that.
            let journal = undo_journal(journal, &preopens, None)?;
            let mut wasi = Wasi::new(
                WasiConfig {
                    args: argv,
                    env: cfg.env.clone(),
                    preopens,
                    seed,
                },
                cfg.markers,
            )?;
            if let Some(j) = journal {
                wasi.set_journal(j);
            }
            ctl.region = None;
            let inst = runtime::instantiate(cfg.runtime, &module, HostData { wasi, ctl })?;
            (inst, module)
        }
    };
    if let Some(f) = cfg.streams_positioned {
        f();
    }
    if cfg.markers {
        let m = lazarus_supervisor::Marker::Resumed {
            id: report.resumed.map(|r| r.0),
            step: report.steps,
            seq: None,
        };
        if let Some(key) = lazarus_supervisor::marker_key() {
            control_line(inst.as_mut(), &m.line(key))?;
        }
    }
    let ctx = Ctx {
        program: &program,
        module: &module,
        runtime: cfg.runtime,
        markers: cfg.markers,
    };
    let Some(code) = drive(
        inst.as_mut(),
        repo.as_mut(),
        &ctx,
        &mut report,
        cfg.stop_after_checkpoints,
    )?
    else {
        report.stopped = true;
        report.steps = inst.host().ctl.steps;
        return Ok(report);
    };
    let host = inst.host();
    host.wasi
        .stdout
        .finish()
        .map_err(|e| VmError::new(VmErrorKind::Io, format!("stdout: {e}")))?;
    host.wasi
        .stderr
        .finish()
        .map_err(|e| VmError::new(VmErrorKind::Io, format!("stderr: {e}")))?;
    report.steps = host.ctl.steps;
    report.exit_code = code;
    if let Some(r) = repo.as_mut() {
        // Records the end, so running the same command again does not run the tail twice.
        let meta = exit_meta(&ctx, inst.as_mut(), code);
        let end = r.write(report.steps, app(&ctx, Some(code)), vec![meta_obj(&meta)?])?;
        inst.host()
            .wasi
            .checkpoint_committed(end.id.0)
            .map_err(|e| {
                VmError::new(VmErrorKind::Io, format!("clearing the undo journal: {e}"))
            })?;
    }
    Ok(report)
}

struct Ctx<'a> {
    program: &'a ProgramId,
    module: &'a [u8],
    runtime: RuntimeKind,
    markers: bool,
}

fn control_line(inst: &mut dyn Instance, line: &str) -> Result<()> {
    inst.host()
        .wasi
        .stdout
        .control_line(line)
        .map_err(|e| VmError::new(VmErrorKind::Io, format!("stdout: {e}")))
}

/// The newest checkpoint that loads and whose metadata decodes; damaged ones are skipped
/// with a warning (an older consistent state, never a wrong one). A checkpoint of another
/// program is an error, not something to skip.
#[allow(clippy::type_complexity)]
fn find_checkpoint(
    repo: &VmRepo,
    program: &ProgramId,
    report: &mut Report,
) -> Result<Option<(CheckpointId, VmMeta, BTreeMap<String, Vec<u8>>)>> {
    let (cands, damaged) = repo.candidates()?;
    // Damaged checkpoints newer than the one resumed from (the fallback's skips).
    let mut newer: Vec<CheckpointId> = damaged.iter().map(|(id, _)| *id).collect();
    report
        .skipped
        .extend(damaged.into_iter().map(|(_, why)| why));
    for c in &cands {
        let loaded = repo.load(c.id).and_then(|objs| {
            let bytes = objs.get(objects::META).ok_or_else(|| {
                corrupt(format!(
                    "checkpoint {} has no {} object: not a VM checkpoint",
                    c.id.0,
                    objects::META
                ))
            })?;
            let meta = VmMeta::decode(bytes)?;
            Ok((meta, objs))
        });
        match loaded {
            Ok((meta, objs)) => {
                if meta.program.digest != program.digest {
                    return Err(VmError::new(
                        VmErrorKind::Mismatch,
                        format!(
                            "repository {}: checkpoint {} belongs to program {} (BLAKE3 {}), not to {} \
                             (BLAKE3 {}); use another --repo for this program",
                            repo.path().display(),
                            c.id.0,
                            meta.program.name,
                            meta.program.digest,
                            program.name,
                            program.digest
                        ),
                    ));
                }
                newer.retain(|n| n.0 > c.id.0);
                if !newer.is_empty() && !meta.wasi.config.preopens.is_empty() {
                    return Err(fallback_refused(repo.path(), &newer, c, &meta));
                }
                return Ok(Some((c.id, meta, objs)));
            }
            Err(e) if e.kind() == VmErrorKind::Corrupt => {
                newer.push(c.id);
                tracing::warn!(
                    "skipping damaged checkpoint {} (step {}): {e}",
                    c.id.0,
                    c.step
                );
                report.skipped.push(format!("checkpoint {}: {e}", c.id.0));
            }
            Err(e) => return Err(e),
        }
    }
    if !report.skipped.is_empty() {
        return Err(corrupt(format!(
            "repository {} has committed checkpoints but none is intact: {}; refusing to start \
             the program again from scratch over its earlier output",
            repo.path().display(),
            report.skipped.join("; ")
        )));
    }
    Ok(None)
}

/// Falling back past damaged checkpoints `newer` to `c` when the program has directories:
/// the undo journal reaches back only to the newest commit, so files the program changed
/// after `c` that `c` does not track cannot be put back; refused rather than resumed
/// over them (test `fallback_with_directories_is_refused_naming_the_checkpoints`).
fn fallback_refused(
    repo: &Path,
    newer: &[CheckpointId],
    c: &crate::store::Candidate,
    meta: &VmMeta,
) -> VmError {
    let ids: Vec<String> = newer.iter().map(|n| n.0.to_string()).collect();
    let dirs: Vec<String> = meta
        .wasi
        .config
        .preopens
        .iter()
        .map(|p| p.host.display().to_string())
        .collect();
    corrupt(format!(
        "repository {}: checkpoint(s) {} are damaged and checkpoint {} (step {}) is the newest \
         intact one, but the program may have changed files in {} after it that it cannot \
         roll back (the undo journal reaches back only to the newest checkpoint); refusing \
         to resume over them. To resume from checkpoint {}: put those directories back as \
         they were at that checkpoint, then remove the damaged checkpoint(s) and {} from the \
         repository; or start afresh with a new --repo",
        repo.display(),
        ids.join(", "),
        c.id.0,
        c.step,
        dirs.join(", "),
        c.id.0,
        JOURNAL_DIR,
    ))
}

fn check_same_command(
    meta: &VmMeta,
    argv: &[String],
    env: &[String],
    preopens: &[Preopen],
    seed: Option<u64>,
    repo: Option<&Path>,
) -> Result<()> {
    let c = &meta.wasi.config;
    let differs = |field: &str, was: String, now: String| {
        Err(VmError::new(
            VmErrorKind::Mismatch,
            format!(
                "the checkpoint in {} was taken with {field} {was}, this command has {now}; \
                 resume with the same command, or use another --repo",
                repo.map_or_else(String::new, |p| p.display().to_string()),
            ),
        ))
    };
    if c.args.get(1..) != argv.get(1..) {
        return differs(
            "arguments",
            format!("{:?}", c.args.get(1..)),
            format!("{:?}", argv.get(1..)),
        );
    }
    if c.env != env {
        return differs("environment", format!("{:?}", c.env), format!("{env:?}"));
    }
    if c.preopens != preopens {
        let show = |p: &[Preopen]| {
            p.iter()
                .map(|p| format!("{}::{}", p.host.display(), p.guest))
                .collect::<Vec<_>>()
                .join(",")
        };
        return differs("directories", show(&c.preopens), show(preopens));
    }
    if let Some(s) = seed.filter(|s| *s != c.seed) {
        return differs("--seed", c.seed.to_string(), s.to_string());
    }
    Ok(())
}

/// Where a repository keeps its undo journal (`wasi/journal.rs`).
const JOURNAL_DIR: &str = "vm-undo";

/// Undoes the journal for a fresh start (`from` = `None`) or a resume from checkpoint
/// `from` (entries written before it was committed are skipped), then clears it; later
/// entries follow `from`.
fn undo_journal(
    journal: Option<Journal>,
    preopens: &[Preopen],
    from: Option<CheckpointId>,
) -> Result<Option<Journal>> {
    let Some(mut j) = journal else {
        return Ok(None);
    };
    let from = from.map(|c| c.0);
    let n = j.undo_from(preopens, from)?;
    if let Some(c) = from {
        j.follows(c);
    }
    if n > 0 {
        tracing::debug!("undid {n} file change(s) made after the last checkpoint");
    }
    j.clear()
        .map_err(|e| VmError::new(VmErrorKind::Io, format!("clearing the undo journal: {e}")))?;
    Ok(Some(j))
}

#[allow(clippy::too_many_arguments)]
fn resume(
    kind: RuntimeKind,
    id: CheckpointId,
    meta: &VmMeta,
    mut objs: BTreeMap<String, Vec<u8>>,
    mut ctl: Control,
    markers: bool,
    journal: Option<Journal>,
) -> Result<(Box<dyn Instance>, Vec<u8>)> {
    let ctx = |what: &str| format!("checkpoint {}: {what}", id.0);
    let module = objs
        .remove(objects::MODULE)
        .ok_or_else(|| corrupt(ctx("no vm.module object")))?;
    if blake3::hash(&module).to_hex().as_str() != meta.instrumented_digest
        || !instrument::looks_instrumented(&module)
    {
        return Err(corrupt(ctx(
            "vm.module is not the instrumented module its metadata names",
        )));
    }
    let memory = objs
        .remove(objects::MEMORY)
        .ok_or_else(|| corrupt(ctx("no vm.memory object")))?;
    if memory.len() as u64 != meta.memory_pages * 65_536 {
        return Err(corrupt(ctx(&format!(
            "vm.memory has {} bytes, the metadata says {} pages",
            memory.len(),
            meta.memory_pages
        ))));
    }
    let region = meta
        .region
        .ok_or_else(|| corrupt(ctx("no unwind region")))?;
    // Everything that can find the checkpoint itself inconsistent runs before any file is
    // touched (the descriptors' files are checked after the restore, below): the instance is built and checked with a placeholder WASI host (instantiating
    // runs no program code), and only then are the journal undone, the files restored and
    // the real host (descriptors reopened, output rolled back) put in place (test
    // `inconsistent_checkpoint_is_refused_before_any_file_is_touched`).
    let placeholder = Wasi::new(meta.wasi.config.clone(), markers)?;
    ctl.resume_at(meta.steps, Some(region));
    let mut inst = runtime::instantiate(
        kind,
        &module,
        HostData {
            wasi: placeholder,
            ctl,
        },
    )?;
    inst.grow_to(meta.memory_pages)?;
    let mem = inst.memory();
    if mem.len() != memory.len() {
        return Err(corrupt(ctx(&format!(
            "the module's memory is {} bytes, larger than the checkpoint's {}",
            mem.len(),
            memory.len()
        ))));
    }
    mem.copy_from_slice(&memory);
    drop(memory);
    let have: Vec<String> = inst.globals()?.into_iter().map(|(n, _)| n).collect();
    let want: Vec<String> = meta.globals.iter().map(|(n, _)| n.clone()).collect();
    if have != want {
        return Err(corrupt(ctx(&format!(
            "its globals do not match the module's: the module exports {have:?}, the \
             checkpoint records {want:?}"
        ))));
    }
    for (n, v) in &meta.globals {
        inst.set_global(n, *v)?;
    }
    inst.host().ctl.phase = Phase::Rewinding;
    inst.call("asyncify_start_rewind", Some(region.start as i32))
        .map_err(|e| corrupt(ctx(&format!("the saved call stack is inconsistent: {e}"))))?;
    // Refusals that need only vm.meta, before anything is touched: a descriptor recorded
    // as detached can never be reopened (no such checkpoint is taken any more, but an
    // older version committed them).
    for (n, f) in &meta.wasi.fds {
        if let crate::wasi::FdState::File {
            rel,
            detached: true,
            ..
        } = f
        {
            return Err(VmError::new(
                VmErrorKind::Mismatch,
                format!(
                    "fd {n}: file {rel} open at the checkpoint had been renamed, replaced or \
                     deleted while open: the descriptor cannot be reopened by its path, so \
                     this checkpoint cannot be resumed (nothing was touched)"
                ),
            ));
        }
    }
    // Every tracked file's object must be there with its recorded length: a checkpoint
    // missing one is damaged, and must be refused before the journal is undone and
    // cleared, not halfway through restoring files.
    file_objects(meta, &objs).map_err(|e| e.context(ctx("restoring files")))?;
    // Checked only after the journal is undone and the files restored, as they depend on
    // them (docs/VM.md, "Damage"): each descriptor's file exists, opens and is the file
    // open at the checkpoint (inode), and stdout/stderr are rolled back (Output::resume).
    let journal = undo_journal(journal, &meta.wasi.config.preopens, Some(id))?;
    restore_files(meta, &objs).map_err(|e| e.context(ctx("restoring files")))?;
    let mut wasi = Wasi::resume(&meta.wasi, markers)?;
    if let Some(j) = journal {
        wasi.set_journal(j);
    }
    inst.host().wasi = wasi;
    Ok((inst, module))
}

/// The contents of every tracked file of `meta`, by entry, each checked to be present with
/// its recorded length.
fn file_objects<'a>(
    meta: &VmMeta,
    objs: &'a BTreeMap<String, Vec<u8>>,
) -> Result<BTreeMap<&'a str, &'a [u8]>> {
    let mut out = BTreeMap::new();
    for f in &meta.files {
        if let FileState::File { object, len } = &f.state {
            let (name, data) = objs.get_key_value(object).ok_or_else(|| {
                corrupt(format!(
                    "no object {object} (the content of {})",
                    f.path.rel
                ))
            })?;
            if data.len() as u64 != *len {
                return Err(corrupt(format!(
                    "object {object} (the content of {}) has {} bytes, not {len}",
                    f.path.rel,
                    data.len()
                )));
            }
            out.insert(name.as_str(), data.as_slice());
        }
    }
    Ok(out)
}

/// Puts every tracked path back as the checkpoint saw it.
fn restore_files(meta: &VmMeta, objs: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    let contents = file_objects(meta, objs)?;
    let pre = &meta.wasi.config.preopens;
    // Directories first (shallow first), then files, then absences (deep first).
    let mut entries: Vec<&FileEntry> = meta.files.iter().collect();
    entries.sort_by_key(|f| match f.state {
        FileState::Dir => (0, f.path.rel.matches('/').count() as i64),
        FileState::File { .. } => (1, 0),
        FileState::Absent => (2, -(f.path.rel.matches('/').count() as i64)),
    });
    for f in entries {
        let want = match &f.state {
            FileState::Dir => Want::Dir,
            FileState::Absent => Want::Absent,
            FileState::File { object, .. } => Want::File(
                contents
                    .get(object.as_str())
                    .copied()
                    .ok_or_else(|| corrupt(format!("no object {object}")))?,
            ),
        };
        restore(pre, &f.path, want)?;
    }
    Ok(())
}

fn app(ctx: &Ctx<'_>, exit: Option<i32>) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert("vm.program".into(), ctx.program.digest.clone());
    a.insert("vm.name".into(), ctx.program.name.clone());
    a.insert("vm.runtime".into(), ctx.runtime.name().into());
    if let Some(c) = exit {
        a.insert("vm.exit".into(), c.to_string());
    }
    a
}

fn meta_obj(meta: &VmMeta) -> Result<Obj<'static>> {
    Ok(Obj {
        name: objects::META.into(),
        type_name: "lazarus-vm meta (JSON)",
        data: Cow::Owned(meta.encode_checked()?),
    })
}

fn base_meta(ctx: &Ctx<'_>, inst: &mut dyn Instance) -> VmMeta {
    let host = inst.host();
    VmMeta {
        version: VM_META_VERSION,
        program: ctx.program.clone(),
        instrumented_digest: blake3::hash(ctx.module).to_hex().to_string(),
        instrumenter_version: instrument::INSTRUMENTER_VERSION,
        runtime: ctx.runtime,
        steps: host.ctl.steps,
        exit: None,
        memory_pages: 0,
        region: host.ctl.region,
        globals: Vec::new(),
        wasi: host.wasi.state(),
        files: Vec::new(),
    }
}

fn exit_meta(ctx: &Ctx<'_>, inst: &mut dyn Instance, code: i32) -> VmMeta {
    VmMeta {
        exit: Some(code),
        region: None,
        ..base_meta(ctx, inst)
    }
}

/// Runs `_start` until the program ends (its exit status), checkpointing whenever the
/// hook unwinds; `None` when stopped after `stop_after` checkpoints.
fn drive(
    inst: &mut dyn Instance,
    mut repo: Option<&mut VmRepo>,
    ctx: &Ctx<'_>,
    report: &mut Report,
    stop_after: Option<u64>,
) -> Result<Option<i32>> {
    let mut warned_detached = std::collections::BTreeSet::new();
    loop {
        let end = inst.run_start();
        let phase = inst.host().ctl.phase;
        let unwound = phase == Phase::Unwinding;
        let region_len = inst.host().ctl.region.map_or(0, |r| r.len);
        let overflow = || {
            VmError::new(
                VmErrorKind::Trap,
                format!(
                    "checkpoint failed: the call stack did not fit in the {region_len}-byte unwind \
                     region; the program is stopped without a new checkpoint. Run the same command \
                     with a larger --unwind-buffer to resume from the previous checkpoint"
                ),
            )
        };
        match end {
            Err(_) if unwound => return Err(overflow()),
            Err(e) => return Err(e),
            Ok(RunEnd::Exit(c)) => return Ok(Some(c)),
            Ok(RunEnd::Returned) if !unwound => return Ok(Some(0)),
            Ok(RunEnd::Returned) => {}
        }
        inst.call("asyncify_stop_unwind", None)
            .map_err(|_| overflow())?;
        let t = Instant::now();
        let Some(repo) = repo.as_deref_mut() else {
            return Err(VmError::new(
                VmErrorKind::InvalidArgument,
                "a checkpoint was due without a repository",
            ));
        };
        let detached = inst.host().wasi.detached_fds();
        if !detached.is_empty() {
            // A checkpoint now could never be resumed (the descriptor cannot be reopened by
            // its path), and committing it would clear the journal and let GC drop the
            // checkpoint that can: postponed, the previous one stays the restart point.
            for (n, rel) in detached {
                if warned_detached.insert((n, rel.clone())) {
                    tracing::warn!(
                        "fd {n}: {rel} was renamed, replaced or deleted while open; no \
                         checkpoint is taken until the program closes it (the previous \
                         checkpoint stays the restart point)"
                    );
                }
            }
            report.postponed += 1;
            rewind_after_checkpoint(inst, t.elapsed())?;
            continue;
        }
        let stats = write_checkpoint(inst, repo, ctx)?;
        let steps = inst.host().ctl.steps;
        if ctx.markers {
            for m in [
                lazarus_supervisor::Marker::Part {
                    id: stats.id,
                    step: steps,
                },
                lazarus_supervisor::Marker::Commit {
                    id: stats.id,
                    step: steps,
                },
            ] {
                if let Some(key) = lazarus_supervisor::marker_key() {
                    control_line(inst, &m.line(key))?;
                }
            }
        }
        tracing::debug!(
            checkpoint = stats.id.0,
            steps,
            new_bytes = stats.new_bytes,
            secs = t.elapsed().as_secs_f64(),
            "vm checkpoint committed"
        );
        let id = stats.id.0;
        report.checkpoints.push(stats);
        inst.host().wasi.checkpoint_committed(id).map_err(|e| {
            VmError::new(VmErrorKind::Io, format!("clearing the undo journal: {e}"))
        })?;
        if stop_after.is_some_and(|n| report.checkpoints.len() as u64 >= n) {
            return Ok(None);
        }
        rewind_after_checkpoint(inst, t.elapsed())?;
    }
}

/// Tells the policy a checkpoint point was passed (taken or postponed) after `spent`,
/// and rewinds the unwound program to go on where it stopped.
fn rewind_after_checkpoint(inst: &mut dyn Instance, spent: std::time::Duration) -> Result<()> {
    let host = inst.host();
    host.ctl.checkpoint_taken(spent);
    host.ctl.phase = Phase::Rewinding;
    let region = host
        .ctl
        .region
        .ok_or_else(|| corrupt("unwound without a region"))?;
    inst.call("asyncify_start_rewind", Some(region.start as i32))?;
    Ok(())
}

fn write_checkpoint(
    inst: &mut dyn Instance,
    repo: &mut VmRepo,
    ctx: &Ctx<'_>,
) -> Result<WriteStats> {
    let mut meta = base_meta(ctx, inst);
    meta.globals = inst.globals()?;
    let mut contents: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, t) in meta.wasi.tracked.iter().enumerate() {
        let what = "capturing a file the program wrote";
        let p = match tracked_host_path(&meta.wasi.config.preopens, t) {
            Ok(p) => p,
            Err(e) if e.not_found() => {
                meta.files.push(FileEntry {
                    path: t.clone(),
                    state: FileState::Absent,
                });
                continue;
            }
            Err(e) => return Err(e.error(Path::new(&t.rel), what)),
        };
        let state = match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileState::Absent,
            Err(e) => return Err(VmError::io(&p, what, e)),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(VmError::new(
                    VmErrorKind::Unsupported,
                    format!(
                        "{}: {what}: it is now a symbolic link, which a checkpoint cannot \
                         capture (the program cannot create one: something else replaced it)",
                        p.display()
                    ),
                ))
            }
            Ok(m) if m.is_dir() => FileState::Dir,
            Ok(m) if m.len() > MAX_TRACKED_FILE_BYTES => {
                return Err(too_big_to_capture(&p, m.len()));
            }
            Ok(_) => {
                let data = std::fs::read(&p)
                    .map_err(|e| VmError::io(&p, "capturing a file the program wrote", e))?;
                // It may have grown since the metadata was read.
                if data.len() as u64 > MAX_TRACKED_FILE_BYTES {
                    return Err(too_big_to_capture(&p, data.len() as u64));
                }
                let object = format!("{}{i}", objects::FILE_PREFIX);
                let len = data.len() as u64;
                contents.push((object.clone(), data));
                FileState::File { object, len }
            }
        };
        meta.files.push(FileEntry {
            path: t.clone(),
            state,
        });
    }
    let mem = inst.memory();
    meta.memory_pages = (mem.len() / 65_536) as u64;
    let steps = meta.steps;
    let mut objs = vec![
        meta_obj(&meta)?,
        Obj {
            name: objects::MODULE.into(),
            type_name: "lazarus-vm instrumented module (wasm)",
            data: Cow::Borrowed(ctx.module),
        },
        Obj {
            name: objects::MEMORY.into(),
            type_name: "lazarus-vm linear memory",
            data: Cow::Borrowed(&*mem),
        },
    ];
    for (name, data) in contents {
        objs.push(Obj {
            name,
            type_name: "lazarus-vm file contents",
            data: Cow::Owned(data),
        });
    }
    repo.write(steps, app(ctx, None), objs)
}

/// Largest file the program changed that a checkpoint captures (docs/VM.md, "Limits"):
/// each checkpoint reads a tracked file whole into memory, and the program can make one
/// huge for free (`fd_filestat_set_size(fd, 1 << 40)` makes a sparse 1 TiB file).
pub const MAX_TRACKED_FILE_BYTES: u64 = 1 << 30;

fn too_big_to_capture(p: &Path, len: u64) -> VmError {
    VmError::new(
        VmErrorKind::Trap,
        format!(
            "checkpoint failed: {} is {len} bytes, over the {MAX_TRACKED_FILE_BYTES} bytes a \
             checkpoint captures of a file the program changed; the program is stopped \
             without a new checkpoint",
            p.display()
        ),
    )
}

/// Benchmark helper: runs `module` exactly as given (instrumented or not, no repository,
/// no checkpoint) on `kind` with `args` and returns its exit status and the CPU time of the
/// thread running `_start` (instantiation excluded). CPU time, not wall time, so that a
/// ratio of two runs stays meaningful on a machine shared with other work; the guest and
/// the hook run on that one thread under both runtimes.
pub fn time_module(
    kind: RuntimeKind,
    module: &[u8],
    args: &[String],
) -> Result<(i32, std::time::Duration)> {
    let module = module.to_vec();
    let args = args.to_vec();
    std::thread::Builder::new()
        .name("lazarus-vm-bench".into())
        .stack_size(runtime::RUNNER_STACK_BYTES)
        .spawn(move || {
            let mut argv = vec!["bench.wasm".to_string()];
            argv.extend(args);
            let wasi = Wasi::new(
                WasiConfig {
                    args: argv,
                    env: Vec::new(),
                    preopens: Vec::new(),
                    seed: 0,
                },
                false,
            )?;
            let ctl = Every::Never.control(0);
            let mut inst = runtime::instantiate(kind, &module, HostData { wasi, ctl })?;
            let t = thread_cpu_time();
            let end = inst.run_start()?;
            let took = thread_cpu_time().saturating_sub(t);
            Ok((
                match end {
                    RunEnd::Exit(c) => c,
                    RunEnd::Returned => 0,
                },
                took,
            ))
        })
        .map_err(|e| VmError::new(VmErrorKind::Io, format!("starting the VM thread: {e}")))?
        .join()
        .map_err(|_| VmError::new(VmErrorKind::Trap, "the VM thread panicked"))?
}

/// CPU time consumed by the calling thread so far.
fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
