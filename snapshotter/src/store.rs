//! The content-addressed page store.
