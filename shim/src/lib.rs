//! berth-shim: the processes berth leaves running next to every pod.
//!
//! berthd never parents a container process (DESIGN.md §1). Per pod it
//! starts a pause process that holds the pod's namespaces; per container (and
//! per sandbox) it will start a berth-shim that supervises the OCI runtime and
//! speaks containerd's shim v2 Task API. This crate never depends on berthd.
//!
//! Map:
//! - [`pause`]: the pause process (binary `berth-pause`) and what a
//!   supervisor needs to know about it: its command line, where it pins the
//!   namespaces, and [`pause::unpin`] to release them when the pod goes.
//! - `sys` (private): the crate's only unsafe code, `fork` and `unshare`.

pub mod pause;
mod sys;
