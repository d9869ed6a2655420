//! Lazarus: high-level, portable checkpoint/restart and automatic recovery for
//! distributed Rust programs. (Facade crate: re-exports the workspace crates.)
pub use lazarus_format as format;
pub use lazarus_policy as policy;
