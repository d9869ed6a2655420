//! lazarus-store (under construction).
