//! Sysctls set inside the pod's namespaces, and the rule that keeps them
//! there: a sysctl is accepted only when the kernel scopes it to a namespace
//! the pod owns, so that writing it can never change the host.

use std::io::Write;
use std::path::PathBuf;

use super::{Namespace, PauseError};

/// One `key=value` sysctl. The key is dotted (`net.ipv4.ip_forward`) or, as
/// Kubernetes also allows, slashed (`net/ipv4/conf/eth0.100/rp_filter`, for
/// names with a dot inside a component).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    key: String,
    value: String,
}

impl Sysctl {
    /// Parses `key=value`; the key must be a plain path under `/proc/sys`.
    pub fn parse(arg: &str) -> Result<Self, PauseError> {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(PauseError::Usage(format!(
                "--sysctl {arg:?}: expected KEY=VALUE"
            )));
        };
        let refuse = |reason: &str| PauseError::SysctlRefused {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let separator = if key.contains('/') { '/' } else { '.' };
        if key
            .split(separator)
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\0'))
        {
            return Err(refuse(
                "the name has an empty, `.` or `..` component or a NUL byte",
            ));
        }
        if value.contains('\n') {
            return Err(refuse("the value has a newline"));
        }
        Ok(Self {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }

    /// The key as given.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value as given.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The key's components (`["net", "ipv4", "ip_forward"]`).
    fn components(&self) -> impl Iterator<Item = &str> {
        let separator = if self.key.contains('/') { '/' } else { '.' };
        self.key.split(separator)
    }

    /// The namespace that scopes this sysctl, or why none does.
    pub fn namespace(&self) -> Result<Namespace, PauseError> {
        let parts: Vec<&str> = self.components().collect();
        match parts.as_slice() {
            ["net", _, ..] => Ok(Namespace::Net),
            ["kernel", "sem"] => Ok(Namespace::Ipc),
            ["kernel", name] if name.starts_with("shm") || name.starts_with("msg") => {
                Ok(Namespace::Ipc)
            }
            ["fs", "mqueue", _, ..] => Ok(Namespace::Ipc),
            ["kernel", "domainname"] => Ok(Namespace::Uts),
            ["kernel", "hostname"] => Err(self.refused("set the hostname with --hostname")),
            _ => Err(self.refused(
                "it is not scoped to a namespace the pod can own, so it would change the \
                 whole host (allowed: net.* with --net; kernel.shm*, kernel.msg*, kernel.sem \
                 and fs.mqueue.* with --ipc; kernel.domainname with --uts)",
            )),
        }
    }

    /// Checks that this sysctl stays inside the namespaces the pod creates.
    pub fn check_scoped(&self, created: &[Namespace]) -> Result<(), PauseError> {
        let namespace = self.namespace()?;
        if created.contains(&namespace) {
            return Ok(());
        }
        Err(self.refused(&format!(
            "it belongs to the {0} namespace and the pod does not create one (--{0}), \
             so it would change the host's",
            namespace.name()
        )))
    }

    /// `/proc/sys/...` for this sysctl.
    pub fn proc_path(&self) -> PathBuf {
        let mut path = PathBuf::from("/proc/sys");
        path.extend(self.components());
        path
    }

    /// Writes the value; `/proc/sys` resolves to the writer's namespaces.
    pub(crate) fn apply(&self) -> Result<(), PauseError> {
        let path = self.proc_path();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    self.refused(&format!("{} does not exist", path.display()))
                } else {
                    PauseError::io(format!("opening {}", path.display()), e)
                }
            })?;
        file.write_all(self.value.as_bytes())
            .map_err(|e| PauseError::io(format!("setting sysctl {}={:?}", self.key, self.value), e))
    }

    fn refused(&self, reason: &str) -> PauseError {
        PauseError::SysctlRefused {
            key: self.key.clone(),
            reason: reason.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(arg: &str) -> Result<Namespace, PauseError> {
        Sysctl::parse(arg).and_then(|s| s.namespace())
    }

    #[test]
    fn namespaced_sysctls_are_classified() {
        assert_eq!(
            ns("net.ipv4.ip_unprivileged_port_start=0").ok(),
            Some(Namespace::Net)
        );
        assert_eq!(
            ns("net/ipv4/conf/eth0.100/rp_filter=1").ok(),
            Some(Namespace::Net)
        );
        for ipc in [
            "kernel.shmmax=1",
            "kernel.shm_rmid_forced=1",
            "kernel.msgmax=1",
            "kernel.sem=1 2 3 4",
            "fs.mqueue.msg_max=10",
        ] {
            assert_eq!(ns(ipc).ok(), Some(Namespace::Ipc), "{ipc}");
        }
        assert_eq!(ns("kernel.domainname=x").ok(), Some(Namespace::Uts));
    }

    #[test]
    fn host_wide_sysctls_are_refused_with_the_reason() {
        for host in [
            "kernel.panic=1",
            "vm.swappiness=1",
            "kernel.semx=1",
            "fs.file-max=1",
            "net=1",
        ] {
            let err = ns(host).expect_err(host).to_string();
            assert!(err.contains("would change the whole host"), "{err}");
        }
        let err = ns("kernel.hostname=x").expect_err("hostname").to_string();
        assert!(err.contains("--hostname"), "{err}");
    }

    #[test]
    fn a_sysctl_needs_its_namespace() {
        let sysctl = Sysctl::parse("net.core.somaxconn=1024").expect("parse");
        let err = sysctl
            .check_scoped(&[Namespace::Ipc, Namespace::Uts])
            .expect_err("no netns")
            .to_string();
        assert!(
            err.contains("net.core.somaxconn") && err.contains("--net"),
            "{err}"
        );
        sysctl.check_scoped(&[Namespace::Net]).expect("netns");
    }

    #[test]
    fn names_cannot_leave_proc_sys() {
        for bad in [
            "net/../../etc/passwd=x",
            "net..ipv4=1",
            "net.ipv4.=1",
            "noequals",
        ] {
            assert!(Sysctl::parse(bad).is_err(), "{bad}");
        }
        let slashed = Sysctl::parse("net/ipv4/conf/eth0.100/rp_filter=1").expect("parse");
        assert_eq!(
            slashed.proc_path(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        let dotted = Sysctl::parse("net.ipv4.ip_forward=1").expect("parse");
        assert_eq!(
            dotted.proc_path(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
    }
}
