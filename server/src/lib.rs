//! thaw control plane.
