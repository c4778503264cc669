//! Printing results.
