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
//! - [`server`]: the shim itself (binary `berth-shim`): daemonizing
//!   (`start`), cleaning up after a dead shim (`delete`), the Task service
//!   over ttrpc, the reaper, the task it supervises and its stdio, the
//!   attach socket ([`server::attach`]) and the events it publishes
//!   ([`server::events`]).
//! - [`exit`]: the exit record the shim writes before it reports an exit
//!   (code, signal, time, OOM kill), which berthd reads when the shim is
//!   gone.
//! - [`checkpoint`]: how a container is checkpointed with CRIU, carried
//!   in `CheckpointTaskRequest.options`; shared by the shim and its
//!   clients.
//! - [`options`]: what a task runs (runc bundle or pause process), carried
//!   in `CreateTaskRequest.options`; shared by the shim and its clients.
//! - `sys` (private): the crate's only unsafe code, `fork`, `unshare` and
//!   `mallopt`, and the other process-wide calls (`setsid`, child
//!   subreaper).

pub mod checkpoint;
pub mod exit;
pub mod options;
pub mod pause;
pub mod server;
mod sys;
