//! Interleaved comparisons.
