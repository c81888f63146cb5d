//! The OCI runtime spec of a container: built from its CRI config, the
//! image config and the pod sandbox it joins, the way the kubelet expects
//! from containerd. The parts live in their own files; this one puts them
//! together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_cri_proto::v1 as cri;
use oci_spec::runtime::{LinuxBuilder, RootBuilder, Spec};

use super::{devices, mounts, namespaces, process, resources, security};
use crate::config::CgroupDriver;
use crate::image::ImageConfig;
use crate::sandbox::SandboxRecord;

/// The OCI runtime spec version berth writes.
const OCI_VERSION: &str = "1.2.0";

/// Annotations the kubelet-facing tools (and OCI hooks) read, under the
/// keys containerd uses so tools written for containerd work unchanged.
pub mod annotations {
    /// `container` (a sandbox's pause would be `sandbox`).
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    /// The sandbox id.
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    /// The pod's name.
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    /// The pod's namespace.
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    /// The pod's UID.
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    /// The container's name from its metadata.
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    /// The image as the kubelet named it.
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
}

/// Why a container's OCI spec cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A request field is wrong.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, as a path in the request
        /// (`config.linux.security_context.run_as_group`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A user, group, file or device the config names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The spec's own validation refused a value.
    #[error("building the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// An [`SpecError::InvalidArgument`].
pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

/// An [`SpecError::Io`] maker for `map_err`.
pub(super) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SpecError {
    let path = path.to_path_buf();
    move |source| SpecError::Io { op, path, source }
}

/// Everything a container's spec is built from.
#[derive(Debug, Clone, Copy)]
pub struct SpecInput<'a> {
    /// The container id.
    pub id: &'a str,
    /// CreateContainer's config.
    pub config: &'a cri::ContainerConfig,
    /// The pod the container joins.
    pub sandbox: &'a SandboxRecord,
    /// The image's runtime config.
    pub image: &'a ImageConfig,
    /// The container's root filesystem (its overlay mount point); the
    /// image's `/etc/passwd` and `/etc/group` are read from it.
    pub rootfs: &'a Path,
    /// The container's own directory: its termination-message file lives
    /// there when the kubelet does not mount one.
    pub container_dir: &'a Path,
    /// How cgroups are named.
    pub cgroup_driver: CgroupDriver,
    /// Whether the node's memory controller limits swap (cgroup v2
    /// `memory.swap.max`, or v1 `memory.memsw.limit_in_bytes`): only then
    /// is a swap limit written.
    pub swap_limit: bool,
    /// The PID namespace of the container the config's
    /// `namespace_options.target_id` names (`/proc/<its pid>/ns/pid`),
    /// found by the caller; only a TARGET PID mode (ephemeral debug
    /// containers) needs it.
    pub target_pid_namespace: Option<&'a Path>,
}

/// Builds the OCI runtime spec of a container.
///
/// Reads the image's `/etc/passwd` and `/etc/group` (inside the rootfs),
/// devices and a Localhost seccomp profile, and creates the host directory
/// of a bind mount whose source is missing (as containerd and Docker do)
/// and the termination-message file: it needs no privileges of its own.
pub fn build(input: &SpecInput<'_>) -> Result<Spec, SpecError> {
    let config = input.config;
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let privileged = sc.is_some_and(|s| s.privileged);
    if privileged && !input.sandbox.privileged {
        return Err(invalid(
            "config.linux.security_context.privileged",
            "the pod sandbox is not privileged",
        ));
    }

    let security = security::build(sc, privileged)?;
    let process = process::build(input, &security)?;
    let mut mounts = mounts::build(input, privileged)?;
    let devices = devices::build(&config.devices, privileged)?;
    let mut resources = resources::build(
        config.linux.as_ref().and_then(|l| l.resources.as_ref()),
        input.swap_limit,
        "config.linux.resources",
    )?;
    resources.set_devices(Some(devices.rules));

    let sysctl: HashMap<String, String> = input
        .sandbox
        .sysctls
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces::build(
            sc,
            input.sandbox,
            input.target_pid_namespace,
        )?)
        .cgroups_path(resources::cgroups_path(
            input.cgroup_driver,
            &input.sandbox.cgroup_parent,
            input.id,
        ))
        .resources(resources)
        .devices(devices.nodes)
        .masked_paths(security.masked_paths)
        .readonly_paths(security.readonly_paths)
        .sysctl(sysctl)
        .build()?;
    linux.set_seccomp(security.seccomp);
    linux.set_rootfs_propagation(mounts.rootfs_propagation.clone());

    let readonly_rootfs = sc.is_some_and(|s| s.readonly_rootfs);
    let root = RootBuilder::default()
        .path(input.rootfs)
        .readonly(readonly_rootfs)
        .build()?;

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_string());
    spec.set_hostname(None);
    spec.set_domainname(None);
    spec.set_root(Some(root));
    spec.set_process(Some(process));
    // Last: nothing is created on the host for a refused request.
    mounts.create_missing_sources()?;
    spec.set_mounts(Some(mounts.mounts));
    spec.set_linux(Some(linux));
    spec.set_annotations(Some(spec_annotations(input)));
    spec.set_hooks(None);
    Ok(spec)
}

/// The config's annotations plus berth's, which a config cannot override.
fn spec_annotations(input: &SpecInput<'_>) -> HashMap<String, String> {
    let config = input.config;
    let mut out: HashMap<String, String> = config
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let sandbox = input.sandbox;
    let image = config
        .image
        .as_ref()
        .map(|i| {
            if i.user_specified_image.is_empty() {
                i.image.clone()
            } else {
                i.user_specified_image.clone()
            }
        })
        .unwrap_or_default();
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    for (key, value) in [
        (annotations::CONTAINER_TYPE, "container".to_string()),
        (annotations::SANDBOX_ID, sandbox.id.clone()),
        (annotations::SANDBOX_NAME, sandbox.metadata.name.clone()),
        (
            annotations::SANDBOX_NAMESPACE,
            sandbox.metadata.namespace.clone(),
        ),
        (annotations::SANDBOX_UID, sandbox.metadata.uid.clone()),
        (annotations::CONTAINER_NAME, name),
        (annotations::IMAGE_NAME, image),
    ] {
        out.insert(key.to_string(), value);
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::sandbox::{
        Dns, NamespaceMode, Namespaces, SandboxMetadata, SandboxRecord, SandboxState,
    };

    /// A pod with its own network, IPC and PID namespaces under `dir`.
    pub fn sandbox(dir: &Path) -> SandboxRecord {
        SandboxRecord {
            id: "sb1".into(),
            name: "web_default_uid-1_0".into(),
            metadata: SandboxMetadata {
                name: "web".into(),
                uid: "uid-1".into(),
                namespace: "default".into(),
                attempt: 0,
            },
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            hostname: "web".into(),
            log_directory: String::new(),
            dns: Dns::default(),
            port_mappings: Vec::new(),
            namespaces: Namespaces {
                network: NamespaceMode::Pod,
                pid: NamespaceMode::Pod,
                ipc: NamespaceMode::Pod,
            },
            user_namespace: None,
            cgroup_parent: "/kubepods/besteffort/poduid-1".into(),
            sysctls: BTreeMap::new(),
            privileged: false,
            runtime_handler: "runc".into(),
            created_at: 0,
            state: SandboxState::Ready,
            pause: None,
            shim_address: None,
            ips: Vec::new(),
            network_attached: false,
            dir: dir.join("sandbox"),
            state_dir: dir.join("run"),
        }
    }

    /// A config that runs `sh`.
    pub fn config() -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "docker.io/library/busybox:latest".into(),
                ..Default::default()
            }),
            command: vec!["sh".into()],
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    /// The test world: a rootfs, a sandbox and a container dir.
    pub struct World {
        pub dir: tempfile::TempDir,
        pub rootfs: tempfile::TempDir,
        pub sandbox: SandboxRecord,
        pub image: ImageConfig,
    }

    impl World {
        pub fn new() -> World {
            let dir = tempfile::tempdir().expect("tempdir");
            let sandbox = sandbox(dir.path());
            std::fs::create_dir_all(&sandbox.dir).expect("sandbox dir");
            std::fs::create_dir_all(dir.path().join("container")).expect("container dir");
            World {
                rootfs: crate::container::user::tests::rootfs(),
                sandbox,
                image: ImageConfig::default(),
                dir,
            }
        }

        pub fn build(&self, config: &cri::ContainerConfig) -> Result<Spec, SpecError> {
            let container_dir = self.dir.path().join("container");
            build(&SpecInput {
                id: "c1",
                config,
                sandbox: &self.sandbox,
                image: &self.image,
                rootfs: self.rootfs.path(),
                container_dir: &container_dir,
                cgroup_driver: CgroupDriver::Cgroupfs,
                swap_limit: true,
                target_pid_namespace: None,
            })
        }
    }

    pub fn sc(config: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
        config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    #[test]
    fn a_plain_container() {
        let world = World::new();
        let spec = world.build(&config()).expect("spec");
        let linux = spec.linux().as_ref().expect("linux");
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/kubepods/besteffort/poduid-1/c1"))
        );
        assert_eq!(
            spec.root().as_ref().expect("root").path(),
            world.rootfs.path()
        );
        assert_eq!(spec.hostname(), &None);
        let annotations = spec.annotations().as_ref().expect("annotations");
        assert_eq!(annotations[annotations::SANDBOX_ID], "sb1");
        assert_eq!(annotations[annotations::CONTAINER_NAME], "app");
        assert_eq!(
            annotations[annotations::IMAGE_NAME],
            "docker.io/library/busybox:latest"
        );
        // It serialises to what runc reads.
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(json["ociVersion"], OCI_VERSION);
        assert!(json["process"]["rlimits"].is_null());
    }

    #[test]
    fn config_annotations_cannot_spoof_berths() {
        let world = World::new();
        let mut c = config();
        c.annotations
            .insert(annotations::SANDBOX_ID.into(), "other".into());
        c.annotations.insert("team".into(), "blue".into());
        let spec = world.build(&c).expect("spec");
        let annotations = spec.annotations().as_ref().expect("annotations");
        assert_eq!(annotations[annotations::SANDBOX_ID], "sb1");
        assert_eq!(annotations["team"], "blue");
    }

    #[test]
    fn privileged_needs_a_privileged_pod() {
        let mut world = World::new();
        let mut c = config();
        sc(&mut c).privileged = true;
        let err = world.build(&c).expect_err("pod not privileged");
        assert!(err.to_string().contains("privileged"), "{err}");
        world.sandbox.privileged = true;
        world.build(&c).expect("privileged pod");
    }

    #[test]
    fn pod_sysctls_are_applied() {
        let mut world = World::new();
        world
            .sandbox
            .sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
        let spec = world.build(&config()).expect("spec");
        let sysctl = spec
            .linux()
            .as_ref()
            .and_then(|l| l.sysctl().clone())
            .expect("sysctl");
        assert_eq!(sysctl["net.ipv4.ip_unprivileged_port_start"], "0");
    }
}
