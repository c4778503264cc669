//! Capture of a live process (see the crate docs).
