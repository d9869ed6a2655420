//! lazarus-net (under construction).
