//! lazarus-dist: data-parallel objects with built-in checkpointing, deterministic
//! reductions, dynamic load balancing and N -> M restart.
#![deny(missing_docs)]

mod balance;
mod error;
mod exact;
mod partition;

pub use balance::{BalanceConfig, Balancer, CostModel, Decision, Sample};
pub use error::{DistError, DistErrorKind, Result};
pub use exact::ExactSum;
pub use partition::{Distribution, Piece, Plan, DEFAULT_PIECE_BYTES};
