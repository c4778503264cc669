//! The serialisable state of a captured process.
