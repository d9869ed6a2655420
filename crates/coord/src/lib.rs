//! lazarus-coord (under construction).
