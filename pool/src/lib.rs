//! Sandboxes, instances and (later) the restorer and the userfaultfd page server.
pub mod protocol;
