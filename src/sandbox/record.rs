//! What berth remembers of a pod sandbox: the parts of its CRI config that
//! later operations need, and its runtime state. Stored in the `sandboxes`
//! table under the sandbox id.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Whether a sandbox can run containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// The pause process runs and the network is set up.
    Ready,
    /// Stopped, or its pause process died.
    NotReady,
}

/// Which namespace a pod's containers use for one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceMode {
    /// One namespace for the whole pod, held by the pause process.
    Pod,
    /// A namespace per container (PID only).
    Container,
    /// The node's namespace.
    Node,
}

/// The pod's namespace choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    /// Network namespace.
    pub network: NamespaceMode,
    /// PID namespace.
    pub pid: NamespaceMode,
    /// IPC namespace.
    pub ipc: NamespaceMode,
}

/// One ID mapping of a user namespace: `length` ids from `container_id`
/// inside it are `host_id`.. on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    /// First id inside the namespace.
    pub container_id: u32,
    /// The host id it stands for.
    pub host_id: u32,
    /// How many ids are mapped.
    pub length: u32,
}

/// The pod's own user namespace (CRI `NamespaceMode::POD`): one uid and one
/// gid mapping, each mapping container id 0. The pause process creates it
/// before, and as the owner of, the pod's other namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    /// The uid mapping.
    pub uid: IdMapping,
    /// The gid mapping.
    pub gid: IdMapping,
}

/// The pod's identity, as the kubelet names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxMetadata {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Pod namespace.
    pub namespace: String,
    /// Attempt number (0 for the first sandbox of the pod).
    pub attempt: u32,
}

/// DNS settings for the pod's `/etc/resolv.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// Resolver options.
    pub options: Vec<String>,
}

/// A hostPort mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Port inside the pod.
    pub container_port: u16,
    /// Port on the node.
    pub host_port: u16,
    /// Node address to bind, empty for all.
    pub host_ip: String,
}

/// One pod sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// 64 hex digits.
    pub id: String,
    /// The reserved name: `<name>_<namespace>_<uid>_<attempt>`.
    pub name: String,
    /// Pod identity.
    pub metadata: SandboxMetadata,
    /// Labels from the config.
    pub labels: BTreeMap<String, String>,
    /// Annotations from the config.
    pub annotations: BTreeMap<String, String>,
    /// The pod's hostname.
    pub hostname: String,
    /// Where the kubelet wants container logs.
    pub log_directory: String,
    /// DNS settings.
    pub dns: Dns,
    /// hostPort mappings.
    pub port_mappings: Vec<PortMapping>,
    /// Namespace choices.
    pub namespaces: Namespaces,
    /// The pod's user namespace; `None`: the node's.
    #[serde(default)]
    pub user_namespace: Option<UserNamespace>,
    /// Parent cgroup for the pod's processes.
    pub cgroup_parent: String,
    /// Namespaced sysctls applied in the pod's namespaces.
    pub sysctls: BTreeMap<String, String>,
    /// Whether the pod may run privileged containers.
    pub privileged: bool,
    /// The runtime handler (RuntimeClass) name, resolved (never empty).
    pub runtime_handler: String,
    /// Creation time, nanoseconds since the epoch.
    pub created_at: i64,
    /// Current state.
    pub state: SandboxState,
    /// The pause process, while it runs.
    pub pause: Option<PauseProcess>,
    /// Address of the shim supervising the pause process.
    #[serde(default)]
    pub shim_address: Option<String>,
    /// Pod IPs, IPv4 first.
    pub ips: Vec<String>,
    /// Whether the CNI network was set up (and must be torn down).
    pub network_attached: bool,
    /// Directory of the sandbox's persistent files (hosts, resolv.conf).
    pub dir: PathBuf,
    /// Directory of the sandbox's runtime state (namespace pins).
    pub state_dir: PathBuf,
}

/// The identity of a pause process, safe against pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseProcess {
    /// Its pid in berthd's PID namespace.
    pub pid: i32,
    /// Its start time (`/proc/<pid>/stat` field 22), to tell it from a
    /// later process with the same pid.
    pub start_time: u64,
}

impl SandboxRecord {
    /// The file a namespace of this sandbox is pinned at (`net`, `ipc`,
    /// `uts`, `pid`).
    pub fn ns_path(&self, kind: &str) -> PathBuf {
        self.state_dir.join("ns").join(kind)
    }

    /// The tmpfs the pod's containers share as `/dev/shm`, when the pod has
    /// its own IPC namespace.
    pub fn shm_dir(&self) -> Option<PathBuf> {
        (self.namespaces.ipc == NamespaceMode::Pod).then(|| self.state_dir.join("shm"))
    }

    /// Path of the network namespace containers join, `None` for
    /// host-network pods.
    pub fn netns(&self) -> Option<PathBuf> {
        (self.namespaces.network == NamespaceMode::Pod).then(|| self.ns_path("net"))
    }
}
