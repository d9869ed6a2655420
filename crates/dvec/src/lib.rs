//! lazarus-dist: data-parallel objects with built-in checkpointing.
//!
//! Three central types:
//! - [`DVec`]: a global vector (or rows of a 2-D array) split into contiguous blocks, one per
//!   rank: local access, element-wise operations with global indices, reductions that are
//!   bit-identical whatever the distribution, prefix scan, gather/scatter, halo exchange,
//!   migration, and `Checkpoint` through the bulk path with its global range.
//! - [`Distribution`] and [`Plan`]: block boundaries and the piecewise transfers that move
//!   data from one distribution to another (load balancing, N -> M restart).
//! - [`Balancer`]: the load-balancing policy (EWMA rates, threshold, cost/benefit,
//!   hysteresis), a pure function of measurements.
//!
//! [`Reshard`] turns the parts of a checkpoint written by N ranks into the objects each of M
//! ranks restores, or refuses, naming the state that is not redistributable.
//!
//! ```
//! use lazarus_dist::DVec;
//! let sums = lazarus_net::local(3, |comm| {
//!     let v = DVec::<f64>::from_fn(&comm, 10, |g| g as f64 * 0.1).unwrap();
//!     v.sum(&comm).unwrap()
//! })
//! .unwrap();
//! assert!(sums.iter().all(|s| s.to_bits() == sums[0].to_bits()));
//! ```
#![deny(missing_docs)]
// A failed stdout/stderr must never panic a job (issue #11 item 10): no print macros.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod balance;
mod collective;
mod dvec;
mod elem;
mod error;
mod exact;
mod group;
mod partition;
mod reshard;

pub use balance::{BalanceConfig, Balancer, CostModel, Decision, Sample};
pub use collective::Halo;
pub use dvec::{row_width_of, DVec, SLOWDOWN_ENV};
pub use elem::{DElem, SumAcc, REDUCE_BLOCK};
pub use error::{DistError, DistErrorKind, Result};
pub use exact::{ExactSum, ExactSums};
pub use group::{balance_together, Rebalance};
pub use partition::{Distribution, Piece, Plan, DEFAULT_PIECE_BYTES};
pub use reshard::{ObjectClass, PartRead, PartSource, Reshard};
