//! RunPodSandbox: reserve the name, write the pod's files, start the pause
//! process (which creates and pins the namespaces), attach the network,
//! record the sandbox. Any failure undoes every step already taken.

use std::os::unix::fs::DirBuilderExt;

use super::record::{NamespaceMode, SandboxRecord, SandboxState};
use super::{SandboxError, SandboxSpec, Sandboxes, files, io_error, new_id, pause};
use crate::events::Lifecycle;
use crate::store::{StoreError, Table};

impl Sandboxes {
    /// Runs a pod sandbox; returns its id. `idmap_mounts` says whether the
    /// handler's runtime has idmapped mounts (a pod user namespace needs
    /// them).
    pub async fn run(
        &self,
        spec: SandboxSpec,
        runtime_handler: &str,
        idmap_mounts: bool,
    ) -> Result<String, SandboxError> {
        let (handler, handler_config) = self
            .config
            .runtime_handler(runtime_handler)
            .ok_or_else(|| SandboxError::UnknownHandler(crate::input::quoted(runtime_handler)))?;
        if spec.user_namespace.is_some() {
            // Checked before anything exists: nothing to undo.
            super::userns::require(handler, &handler_config.runtime, idmap_mounts)?;
        }
        let id = new_id()?;
        let name = spec.reserved_name();
        self.store.reserve_name(&name, &id).map_err(|e| match e {
            StoreError::NameTaken { name, holder } => SandboxError::NameTaken { name, holder },
            other => other.into(),
        })?;
        let record = SandboxRecord {
            id: id.clone(),
            name,
            metadata: spec.metadata,
            labels: spec.labels,
            annotations: spec.annotations,
            hostname: spec.hostname,
            log_directory: spec.log_directory,
            dns: spec.dns,
            port_mappings: spec.port_mappings,
            namespaces: spec.namespaces,
            user_namespace: spec.user_namespace,
            cgroup_parent: spec.cgroup_parent,
            sysctls: spec.sysctls,
            privileged: spec.privileged,
            runtime_handler: handler.to_string(),
            created_at: crate::clock::now_nanos(),
            state: SandboxState::NotReady,
            pause: None,
            shim_address: None,
            ips: Vec::new(),
            network_attached: false,
            dir: self.config.root.join("sandboxes").join(&id),
            state_dir: self.config.state.join("sandboxes").join(&id),
        };
        // Recorded first (NotReady), so a crash mid-way leaves a record that
        // RemovePodSandbox can clean up.
        self.store.put(Table::Sandboxes, &id, &record)?;
        let entry = self.insert(record.clone());
        let _op = entry.op.lock().await;
        match self.start(record).await {
            Ok(record) => {
                tracing::info!(
                    sandbox = %id,
                    pod = %record.name,
                    ips = ?record.ips,
                    pause_pid = record.pause.map(|p| p.pid),
                    "pod sandbox ready"
                );
                self.save(&entry, record)?;
                self.lifecycle.publish(&id, &id, Lifecycle::Created);
                self.lifecycle.publish(&id, &id, Lifecycle::Started);
                Ok(id)
            }
            Err((record, e)) => {
                tracing::warn!(sandbox = %id, error = %e, "RunPodSandbox failed; rolling back");
                self.teardown(&record).await;
                self.forget(&record);
                Err(e)
            }
        }
    }

    /// The steps that can fail; on failure, the record as far as it got.
    async fn start(
        &self,
        mut record: SandboxRecord,
    ) -> Result<SandboxRecord, (SandboxRecord, SandboxError)> {
        macro_rules! step {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err((record, e)),
                }
            };
        }
        for dir in [record.dir.clone(), record.state_dir.clone()] {
            step!(
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o711)
                    .create(&dir)
                    .map_err(io_error("create directory", &dir))
            );
        }
        let node_hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = record.dir.clone();
        step!(files::write(&record, &node_hostname).map_err(io_error("write files in", &dir)));
        if let Some(shm) = record.shm_dir() {
            step!(mount_shm(&shm));
        }
        let (pause, shim) = step!(
            pause::start(
                &self.pause_binary,
                &record,
                &crate::events::address(&self.config.state)
            )
            .await
        );
        record.pause = Some(pause);
        record.shim_address = Some(shim);
        if let Some(cgroup) = self.cgroup_path(&record) {
            let hierarchy = step!(self.hierarchy());
            // The pause process and what it forked: the child in the pod's
            // user namespace, PID 1 of a shared PID namespace.
            for pid in std::iter::once(pause.pid).chain(pause::children(pause.pid)) {
                step!(
                    hierarchy
                        .join(&cgroup, pid)
                        .map_err(|e| SandboxError::Cgroup(e.to_string()))
                );
            }
        }
        // Saved now so that a crash from here on still knows the pause pid.
        step!(
            self.store
                .put(Table::Sandboxes, &record.id, &record)
                .map_err(SandboxError::from)
        );
        if record.namespaces.network == NamespaceMode::Pod {
            record.network_attached = true;
            let ips = step!(self.attach_network(&record).await);
            record.ips = ips;
        }
        record.state = SandboxState::Ready;
        Ok(record)
    }

    /// Undoes what a sandbox set up, best effort, each step logged: network,
    /// pause process, namespace pins, directories.
    pub(super) async fn teardown(&self, record: &SandboxRecord) {
        if record.network_attached
            && let Err(e) = self.detach_network(record).await
        {
            tracing::warn!(sandbox = %record.id, error = %e, "network teardown failed");
        }
        if let Some(p) = &record.pause {
            pause::stop(record, p).await;
        }
        if let (Some(cgroup), Ok(hierarchy)) = (self.cgroup_path(record), self.hierarchy())
            && let Err(e) = hierarchy.remove(&cgroup).await
        {
            tracing::warn!(sandbox = %record.id, error = %e, "cgroup not removed");
        }
        if let Some(shm) = record.shm_dir() {
            match nix::mount::umount2(&shm, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => tracing::warn!(sandbox = %record.id, error = %e, "shm not unmounted"),
            }
        }
        if let Err(e) = pause::unpin(&record.state_dir) {
            tracing::warn!(sandbox = %record.id, error = %e, "namespace pins not removed");
        }
        for dir in [&record.state_dir, &record.dir] {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(sandbox = %record.id, dir = %dir.display(), error = %e, "directory not removed")
                }
            }
        }
    }

    /// The pause process's cgroup: a leaf under the pod's cgroup parent;
    /// `None` when the kubelet gave no parent.
    pub fn cgroup_path(&self, record: &SandboxRecord) -> Option<String> {
        (!record.cgroup_parent.is_empty()).then(|| {
            crate::cgroup::object_path(self.config.cgroup_driver, &record.cgroup_parent, &record.id)
        })
    }

    fn hierarchy(&self) -> Result<crate::cgroup::Hierarchy, SandboxError> {
        crate::cgroup::Hierarchy::detect().map_err(|e| SandboxError::Cgroup(e.to_string()))
    }

    /// Drops a sandbox's record and name.
    pub(super) fn forget(&self, record: &SandboxRecord) {
        if let Err(e) = self.store.transaction(|tx| {
            tx.delete(Table::Sandboxes, &record.id)?;
            if tx.get::<String>(Table::Names, &record.name)?.as_deref() == Some(record.id.as_str())
            {
                tx.delete(Table::Names, &record.name)?;
            }
            Ok(())
        }) {
            tracing::warn!(sandbox = %record.id, error = %e, "record not removed");
        }
        self.entries.remove(&record.id);
    }
}

/// The pod's `/dev/shm`: a 64 MiB tmpfs, as Docker and containerd give.
fn mount_shm(dir: &std::path::Path) -> Result<(), SandboxError> {
    use nix::mount::{MsFlags, mount};
    std::fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    mount(
        Some("shm"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=67108864"),
    )
    .map_err(|e| io_error("mount shm tmpfs on", dir)(e.into()))
}
