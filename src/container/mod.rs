//! Containers. So far: the OCI runtime spec CreateContainer hands the
//! OCI runtime, built from the CRI config, the image config and the pod
//! sandbox ([`build_spec`]), and the root filesystem it runs on, an
//! overlay of the image's snapshots ([`rootfs`]).
//!
//! The spec's parts, one file each: [`spec`] puts them together;
//! `process` (command, env, working dir), `user` (passwd/group
//! resolution), `namespaces`, `mounts`, `devices`, `resources` (cgroup
//! path and limits), `security` (capabilities, masked paths, seccomp,
//! AppArmor) and `seccomp_default` (the RuntimeDefault profile as data).
//!
//! CheckpointContainer: `checkpoint` (the CRIU dump through the shim) and
//! [`checkpoint_archive`] (the archive's layout, shared with CRI-O,
//! containerd and checkpointctl); `checkpoint_restore` creates a container
//! from such an archive, and StartContainer restores it.

mod checkpoint;
pub mod checkpoint_archive;
mod checkpoint_restore;
mod containers;
mod devices;
mod mounts;
mod namespaces;
mod process;
mod record;
mod resources;
pub mod rootfs;
mod seccomp_default;
mod security;
pub mod spec;
mod stream;
mod task;
mod update;
mod user;

pub use checkpoint::DEFAULT_CHECKPOINT_TIMEOUT;
pub use checkpoint_restore::{
    CHECKPOINT_ANNOTATION, checkpoint_image_dir, requested_archive as requested_checkpoint,
};
pub use containers::{ContainerError, ContainerFilter, Containers};
pub use mounts::{TERMINATION_LOG, TERMINATION_MESSAGE_PATH};
pub use record::{ContainerRecord, ContainerState, MountRecord};
pub use resources::cgroups_path;
pub use spec::{SpecError, SpecInput, build as build_spec};
pub use task::{ExecOutput, MAX_EXEC_OUTPUT};
pub use update::cri_of as cri_resources;
