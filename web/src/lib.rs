//! The dashboard's static assets, embedded in the binary.
#![forbid(unsafe_code)]
