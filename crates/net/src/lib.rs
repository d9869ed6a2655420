//! The Lazarus message-passing runtime.
//!
//! Three central types:
//! - [`Comm`]: this rank's communicator — typed and bulk point-to-point messages, the
//!   envelope level the checkpoint protocol uses, and collectives with bit-reproducible
//!   reductions. Backends: TCP full mesh between processes ([`init`], [`join`]) and threads
//!   in one process ([`local`]).
//! - [`NetConfig`]: heartbeat, failure and connect timeouts and the frame limit, validated
//!   in one place.
//! - [`launch::Launcher`]: starts N ranks through an engine (this machine, or a cluster's
//!   `mpirun`/`srun`/`ssh`), prefixes their output, detects a failure and tells a lost host
//!   from a dead process, stops everyone and reports a [`launch::JobOutcome`].
//!
//! ```
//! let sums = lazarus_net::local(4, |comm| {
//!     let mut x = [comm.rank().0 as f64];
//!     comm.allreduce(&mut x, lazarus_net::ReduceOp::Sum).unwrap();
//!     x[0]
//! })
//! .unwrap();
//! assert_eq!(sums, vec![6.0; 4]);
//! ```
#![deny(missing_docs)]

mod auth;
mod collective;
mod comm;
mod config;
mod env;
mod error;
#[cfg(test)]
mod fault;
mod handshake;
#[cfg(test)]
mod hostile_tests;
pub mod launch;
mod local;
mod mailbox;
mod pool;
mod rdv;
mod reliable;
mod scalar;
mod sendbuf;
mod tcp;
mod watch;
pub mod wire;

pub use auth::{FrameMac, JobToken};
pub use collective::ReduceOp;
pub use comm::Comm;
pub use config::NetConfig;
pub use env::{init, join, loopback_comms, JoinOptions};
pub use error::{ErrorKind, NetError, Result};
#[doc(hidden)]
pub use handshake::fuzz_handshake;
#[doc(hidden)]
pub use launch::fuzz_launcher_output;
pub use local::{local, local_comms, local_comms_with};
pub use mailbox::Envelope;
pub use pool::{payload_buffer, recycle_payload};
pub use rdv::{Liveness, RankView, RendezvousServer};
pub use scalar::Scalar;
pub use sendbuf::SendBuf;
pub use watch::{ENV_RANK_SESSION, EXIT_LAUNCHER_LOST};
#[doc(hidden)]
pub use wire::fuzz_sealed_frames;
pub use wire::{Tag, TagSpace};
