//! lazarus-state (under construction).
