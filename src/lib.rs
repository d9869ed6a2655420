//! Lazarus: high-level, portable checkpoint/restart and automatic recovery for
//! distributed Rust programs.
//!
//! Three types carry a program through failures:
//! - [`Checkpoint`] (usually `#[derive(Checkpoint)]`): what to save. Numbers and `Vec`s of
//!   numbers are saved as raw little-endian arrays, other fields with serde
//!   (`#[checkpoint(serde)]`), and `#[checkpoint(skip)]` fields are rebuilt after restore.
//!   Every attribute of the derive is documented on [the trait](Checkpoint#the-derive).
//! - [`Job`]: where and when. It opens a checkpoint repository, restores the newest intact
//!   checkpoint (falling back past damaged ones) or initialises fresh state, saves at the
//!   top of the main loop when its policy (every N steps, every T seconds, never, or a
//!   model) says so, and records completion with [`Job::finish`]. Its documentation holds
//!   the step contract, the agreed and the elastic restore.
//! - [`store::Repository`]: the portable, crash-safe repository of checkpoints
//!   (content-addressed chunks, per-rank manifests, one COMMIT per checkpoint).
//!
//! Step counting: `job.step()` counts completed iterations; `job.checkpoint(&state)` is
//! called once at the top of each iteration, may save, and counts the iteration. The step
//! is recorded in the checkpoint and restored with it, so the loop below runs exactly
//! `steps` iterations in total however often the process is killed and restarted.
//!
//! ```
//! use lazarus::{Checkpoint, Job, StateError};
//!
//! #[derive(Checkpoint)]
//! #[checkpoint(after_restore = "Sim::rebuild")]
//! struct Sim {
//!     x: Vec<f64>,
//!     #[checkpoint(skip)]
//!     norm: f64,
//! }
//!
//! impl Sim {
//!     fn rebuild(&mut self) -> Result<(), StateError> {
//!         self.norm = self.x.iter().map(|v| v * v).sum::<f64>().sqrt();
//!         Ok(())
//!     }
//! }
//!
//! # let dir = tempfile::tempdir()?;
//! # let repo = dir.path().join("repo");
//! let steps = 25;
//! for _attempt in 0..2 {
//!     // The second attempt restores step 20 and runs the remaining 5 iterations.
//!     let mut job = Job::builder().repo(&repo).every_steps(10).keep(2).open()?;
//!     let mut sim = job.restore_or_init(|| Sim { x: vec![1.0; 4], norm: 2.0 })?;
//!     while job.step() < steps {
//!         job.checkpoint(&sim)?;
//!         for v in &mut sim.x {
//!             *v *= 0.5;
//!         }
//!         sim.rebuild()?;
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Where things are
//!
//! The everyday types are at the top of this crate; each concern is a module, the crate
//! of that name re-exported whole (every page is part of this manual):
//!
//! | module | what it holds |
//! |---|---|
//! | [`state`] | [`Checkpoint`] and its derive, [`DirtyVec`] (page-tracked `Vec`), [`Serde`], the schema check |
//! | [`dist`] | [`DVec`] (a vector partitioned over ranks), [`Distribution`], reductions ([`ExactSum`], [`ExactSums`]), load balancing, N→M redistribution |
//! | [`net`] | [`Comm`] ([`init`], [`local`]): ranks, authenticated reliable channels, collectives ([`ReduceOp`]), the launcher |
//! | [`policy`] | when to checkpoint: [`policy::Policy`], fixed policies, Young/Daly models, [`policy::PolicySpec`] |
//! | [`coord`] | the checkpoint protocols: aligned rounds (used by [`Job`]), unaligned ones ([`coord::AsyncSession`]), the agreed restore, output markers, COMMIT metadata keys |
//! | [`store`] | the repository: writing parts, committing, retention, GC, verification |
//! | [`format`](mod@format) | ids ([`Rank`], [`CheckpointId`]) and the on-disk format (docs/FORMAT.md) |
//! | [`files`] | user files that roll back with the job ([`JobBuilder::files`]) |
//! | [`supervisor`] | `lazarus run --repo`: the restart loop, output commit, fault injection |
//!
//! # Results that depend on the number of ranks
//!
//! A floating-point sum depends on the order of its terms. [`DVec`]'s own reductions are
//! bit-identical for any number of ranks and any balancing; [`Comm::allreduce`] with
//! [`ReduceOp::Sum`] over per-rank partial sums is not (its result changes with the rank
//! count). Where results are compared across rank counts, reduce with [`ExactSum`] (one
//! scalar) or [`ExactSums`] (a `Vec<f64>`, per element); docs/DIST.md, "Which reductions depend
//! on the number of ranks", has the table.
//!
//! # Logging
//!
//! The library reports through `tracing` (a damaged checkpoint skipped, an aborted round);
//! [`init_logging`] (feature `logging`, on by default) sends it to stderr, coloured only on
//! a terminal and never with `NO_COLOR`.
#![deny(missing_docs)]
// A failed stdout/stderr must never panic a job (issue #11 item 10): no print macros.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

// Lets `#[derive(Checkpoint)]`, which names `::lazarus::state`, work inside this crate too.
extern crate self as lazarus;

mod error;
mod flush;
mod job;
#[cfg(feature = "logging")]
mod logging;
mod report;
mod restore;

pub use error::JobError;
pub use job::{Job, JobBuilder, Levels, REPO_ENV};
#[doc(inline)]
pub use lazarus_coord as coord;
pub use lazarus_coord::{OnAllDamaged, ON_ALL_DAMAGED_ENV};
#[doc(inline)]
pub use lazarus_dist as dist;
pub use lazarus_dist::{DVec, Distribution, ExactSum, ExactSums};
#[doc(inline)]
pub use lazarus_files as files;
#[doc(inline)]
pub use lazarus_format as format;
pub use lazarus_format::{CheckpointId, Rank};
#[doc(inline)]
pub use lazarus_levels as levels;
#[doc(inline)]
pub use lazarus_net as net;
pub use lazarus_net::{init, local, Comm, ReduceOp};
#[doc(inline)]
pub use lazarus_policy as policy;
#[doc(inline)]
pub use lazarus_state as state;
pub use lazarus_state::{Checkpoint, DirtyVec, Serde, StateError};
#[doc(inline)]
pub use lazarus_store as store;
#[doc(inline)]
pub use lazarus_supervisor as supervisor;
#[cfg(feature = "logging")]
pub use logging::{colour_on_stderr, hold_log_lines, init_logging, release_log_lines};
pub use report::{CheckpointReport, FreshStart, RestoreReport};

/// README.md's code blocks, compiled (and run unless marked `no_run`) as doctests, so the
/// README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
