//! A pod for the container-spec tests: runs a sandbox on a [`Berthd`],
//! creates and starts containers in it, runs commands in them (ExecSync),
//! reads their CRI logs, finds their processes and cgroups on the host,
//! and checks that a refused CreateContainer left nothing behind.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use berth_cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use berth_cri_proto::v1::*;
use tonic::transport::Channel;

use super::berthd::Berthd;

/// A pod config named `name`: its own cgroup parent
/// (`/berth-<tag>-<test pid>-<name>`), every namespace the pod's own.
pub fn pod_config(tag: &str, name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "berth-test".into(),
            attempt: 0,
        }),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/berth-{tag}-{}-{name}", std::process::id()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What ExecSync answered.
#[derive(Debug)]
pub struct Exec {
    /// The command's exit code.
    pub exit_code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// A running pod sandbox and a client to its berthd.
pub struct TestPod {
    /// The RuntimeService client.
    pub rt: RuntimeServiceClient<Channel>,
    /// The sandbox id.
    pub id: String,
    /// The config the pod was run with (sent again with each container).
    pub config: PodSandboxConfig,
    /// The image containers run by default.
    pub image: String,
    /// berthd's private directory (to look for what a container left).
    berthd_dir: PathBuf,
    /// The pod's log directory.
    logs: tempfile::TempDir,
}

impl TestPod {
    /// Runs a pod from `config` (its log directory is set to a temporary
    /// one) whose containers run `image` by default.
    pub async fn run(berthd: &Berthd, image: &str, mut config: PodSandboxConfig) -> TestPod {
        let logs = tempfile::Builder::new()
            .prefix("berth-pod-logs-")
            .tempdir()
            .expect("pod log directory");
        config.log_directory = logs.path().display().to_string();
        let mut rt = berthd.runtime().await;
        let id = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        TestPod {
            rt,
            id,
            config,
            image: image.to_string(),
            berthd_dir: berthd.dir().to_path_buf(),
            logs,
        }
    }

    /// The pod's cgroup parent, without the leading `/`.
    pub fn cgroup_parent(&self) -> String {
        self.config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.trim_start_matches('/').to_string())
            .unwrap_or_default()
    }

    /// A container config named `name` that runs `command` in the pod's
    /// image, logging to `<name>.log` in the pod's log directory.
    pub fn container(&self, name: &str, command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    /// CreateContainer in this pod.
    pub async fn create(&mut self, config: ContainerConfig) -> Result<String, tonic::Status> {
        self.rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: self.id.clone(),
                config: Some(config),
                sandbox_config: Some(self.config.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    /// Creates and starts a container; returns its id.
    async fn create_and_start(&mut self, config: ContainerConfig) -> String {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let id = self
            .create(config)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e:?}"));
        self.rt
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("start {name}: {e:?}"));
        id
    }

    /// Creates and starts a container, and waits until it runs.
    pub async fn start(&mut self, config: ContainerConfig) -> String {
        let id = self.create_and_start(config).await;
        self.wait_state(&id, ContainerState::ContainerRunning).await;
        id
    }

    /// Creates and starts a container, waits until it exits, and returns
    /// its status and what it wrote (stdout and stderr, in order).
    pub async fn run_to_exit(&mut self, config: ContainerConfig) -> (ContainerStatus, String) {
        let id = self.create_and_start(config).await;
        let status = self.wait_state(&id, ContainerState::ContainerExited).await;
        let log = self.log(&status.log_path);
        (status, log)
    }

    /// The text of a CRI log file (`<time> <stream> <P|F> <text>` lines),
    /// partial lines joined.
    pub fn log(&self, path: &str) -> String {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read log {path}: {e}"));
        let mut out = String::new();
        for line in text.lines() {
            let mut fields = line.splitn(4, ' ');
            let (_time, _stream, tag) = (fields.next(), fields.next(), fields.next());
            out.push_str(fields.next().unwrap_or_default());
            if tag == Some("F") {
                out.push('\n');
            }
        }
        out
    }

    /// ContainerStatus.
    pub async fn status(&mut self, id: &str) -> ContainerStatus {
        self.rt
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("status")
    }

    /// Waits (up to 10 s) until container `id` is in state `want`.
    pub async fn wait_state(&mut self, id: &str, want: ContainerState) -> ContainerStatus {
        for _ in 0..1000 {
            let st = self.status(id).await;
            if st.state == want as i32 {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let st = self.status(id).await;
        panic!("container {id} never reached {want:?}: {st:?}");
    }

    /// ExecSync `cmd` in container `id` (10 s timeout).
    pub async fn exec(&mut self, id: &str, cmd: &[&str]) -> Exec {
        let out = self
            .rt
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 10,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {id}: {e:?}"))
            .into_inner();
        Exec {
            exit_code: out.exit_code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `sh -c script` in container `id`, expects success, and returns
    /// its standard output.
    pub async fn sh(&mut self, id: &str, script: &str) -> String {
        let out = self.exec(id, &["sh", "-c", script]).await;
        assert_eq!(out.exit_code, 0, "`{script}` in {id}: {out:?}");
        out.stdout
    }

    /// Runs `sh -c script` in container `id`, expects it to fail, and
    /// returns its standard error.
    pub async fn sh_fails(&mut self, id: &str, script: &str) -> String {
        let out = self.exec(id, &["sh", "-c", script]).await;
        assert_ne!(out.exit_code, 0, "`{script}` in {id} succeeded: {out:?}");
        out.stderr
    }

    /// The container's cgroup under `controller` (v1 hierarchy) on the host.
    pub fn cgroup_dir(&self, controller: &str, id: &str) -> PathBuf {
        PathBuf::from(format!(
            "/sys/fs/cgroup/{controller}/{}/{id}",
            self.cgroup_parent()
        ))
    }

    /// A file of the container's cgroup, trimmed.
    pub fn cgroup_file(&self, controller: &str, id: &str, file: &str) -> String {
        let path = self.cgroup_dir(controller, id).join(file);
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// The host pid of the container's process whose command line starts
    /// with `argv0`, found in its memory cgroup.
    pub fn host_pid(&self, id: &str, argv0: &str) -> i32 {
        let procs = self.cgroup_file("memory", id, "cgroup.procs");
        procs
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).next() == Some(argv0.as_bytes()))
            })
            .unwrap_or_else(|| panic!("no `{argv0}` process in {id}'s cgroup: {procs:?}"))
    }

    /// Asserts that the pod holds exactly the containers `ids` (by
    /// ListContainers), that berthd keeps no directory or rootfs mount of
    /// a container it does not list, and that the pod's cgroup parent has
    /// no cgroup but theirs (and the pause's): what a refused
    /// CreateContainer must leave.
    pub async fn assert_only_containers(&mut self, ids: &[&str]) {
        let listed = |pod: Option<&str>| ContainerFilter {
            pod_sandbox_id: pod.unwrap_or_default().to_string(),
            ..Default::default()
        };
        let mut list = async |filter: ContainerFilter| -> BTreeSet<String> {
            self.rt
                .list_containers(ListContainersRequest {
                    filter: Some(filter),
                })
                .await
                .expect("ListContainers")
                .into_inner()
                .containers
                .into_iter()
                .map(|c| c.id)
                .collect()
        };
        let in_pod = list(listed(Some(&self.id))).await;
        let everywhere = list(listed(None)).await;
        let want: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
        assert_eq!(in_pod, want, "containers listed in the pod");
        // berthd's directories and mounts hold only listed containers
        // (of any pod).
        for dir in ["root/containers", "run/containers"] {
            let on_disk: BTreeSet<String> = std::fs::read_dir(self.berthd_dir.join(dir))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let stray: Vec<&String> = on_disk.difference(&everywhere).collect();
            assert!(stray.is_empty(), "{dir} holds stray entries {stray:?}");
        }
        let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
        let prefix = self.berthd_dir.join("root/containers");
        let prefix = prefix.display().to_string();
        for line in mounts.lines().filter(|l| l.contains(&prefix)) {
            assert!(
                everywhere.iter().any(|id| line.contains(id.as_str())),
                "a mount of no listed container is left: {line}"
            );
        }
        let parent = PathBuf::from("/sys/fs/cgroup/memory").join(self.cgroup_parent());
        let cgroups: BTreeSet<String> = std::fs::read_dir(&parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let stray: Vec<&String> = cgroups
            .difference(&want)
            .filter(|c| **c != self.id)
            .collect();
        assert!(stray.is_empty(), "stray cgroups under the pod: {stray:?}");
    }

    /// Stops and removes the pod (and its containers) and removes its
    /// cgroup parent.
    /// Fails when a cgroup of the pod outlives it by more than a moment.
    pub async fn remove(mut self) {
        super::stop_and_remove_pod(&mut self.rt, &self.id).await;
        let parent = self.cgroup_parent();
        let left = || -> Vec<PathBuf> {
            std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
                .flat_map(|h| {
                    std::fs::read_dir(h.path().join(&parent))
                        .into_iter()
                        .flatten()
                })
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        };
        for _ in 0..200 {
            if left().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = left();
        for dir in &left {
            let _ = std::fs::remove_dir(dir);
        }
        super::remove_test_cgroup(&parent);
        assert!(left.is_empty(), "cgroups outlive the pod: {left:?}");
    }
}

/// A key-value map of `KEY=value` lines (as `env` prints them).
pub fn env_map(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The value of field `name` (`CapEff`, `NoNewPrivs`, …) in a
/// `/proc/<pid>/status` text.
pub fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {name} in status:\n{status}"))
}
