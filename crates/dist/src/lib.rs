//! lazarus-dist (under construction).
