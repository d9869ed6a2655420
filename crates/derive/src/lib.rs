//! `#[derive(Checkpoint)]` (under construction).
