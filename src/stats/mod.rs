//! Resource usage of pods and containers, measured the way cAdvisor and
//! containerd's CRI plugin measure it, in plain Rust types that know
//! nothing of the CRI (the façade converts them).
//!
//! - [`CgroupReader`] reads a cgroup's cpu, memory, process and pressure
//!   figures on cgroup v1 and v2 ([`CgroupStats`]).
//! - [`CpuRateKeeper`] turns successive cpu usage counters into the
//!   `usage_nano_cores` rate.
//! - [`disk_usage`] and [`DiskUsageCache`] measure a container's writable
//!   layer (its overlay upper dir) like `du -x`.
//! - [`read_net_dev`] reads a pod's interfaces from `/proc/<pid>/net/dev`.
//!
//! Every figure the kernel does not report is `None`, never a made-up zero.

mod cgroup;
mod disk;
mod net;
mod rate;
#[cfg(test)]
mod root_tests;

use std::path::PathBuf;

pub use cgroup::{
    CgroupReader, CgroupStats, CpuStats, IoStats, MemoryStats, Pressure, PressureLine,
};
pub use disk::{DiskUsage, DiskUsageCache, disk_usage, disk_usage_blocking};
pub use net::{InterfaceStats, NetworkStats, parse_net_dev, read_net_dev};
pub use rate::CpuRateKeeper;

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The cgroup path is not a clean relative path.
    #[error(transparent)]
    Path(#[from] crate::cgroup::CgroupError),
    /// A v1 host has none of the hierarchies stats are read from.
    #[error("no cpuacct, memory or pids cgroup v1 hierarchy is mounted (mounts: {mounts})")]
    NoController {
        /// The v1 mount points that were looked at.
        mounts: String,
    },
    /// The cgroup does not exist (never created, or already removed).
    #[error("cgroup {path} does not exist: no {dir}")]
    CgroupNotFound {
        /// The cgroup path as the caller gave it, quoted.
        path: String,
        /// The directory that is missing.
        dir: PathBuf,
    },
    /// A file exists but could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file does not have the format the kernel documents.
    #[error("{path} line {line}: {reason}: {text}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was expected.
        reason: &'static str,
        /// The offending line, quoted and cut short.
        text: String,
    },
    /// The root of a disk usage walk could not be opened or examined.
    #[error("disk usage of {path}: {op}: {source}")]
    DiskUsageRoot {
        /// The directory to measure.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The blocking task that walked a directory panicked or was cancelled.
    #[error("disk usage of {path}: the walking task failed: {reason}")]
    DiskUsageTask {
        /// The directory to measure.
        path: PathBuf,
        /// The join error.
        reason: String,
    },
    /// The process whose network namespace was asked for is gone.
    #[error("process {pid} does not exist (no {path})")]
    ProcessNotFound {
        /// The process id.
        pid: u32,
        /// The file that is missing.
        path: PathBuf,
    },
}

/// A malformed-line error for `text` at 1-based `line` of `path`.
fn malformed(path: &std::path::Path, line: usize, reason: &'static str, text: &str) -> StatsError {
    StatsError::Malformed {
        path: path.to_path_buf(),
        line,
        reason,
        text: crate::input::quoted(text),
    }
}
