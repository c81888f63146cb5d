//! Pod networking through CNI plugins: finding the node's network
//! configuration (this file) and, later, executing plugins per the CNI spec.
//!
//! This module never imports CRI types: the sandbox lifecycle translates.

mod config;

pub use config::{NetworkConfig, NetworkConfigError};
