//! The namespaces of a container: the pod's network, IPC and UTS
//! namespaces joined through their pins, its PID namespace per the
//! config's mode, and always a mount namespace of its own.

use std::path::Path;

use berth_cri_proto::v1 as cri;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType};

use super::spec::{SpecError, invalid};
use crate::sandbox::{NamespaceMode, SandboxRecord};

const PID_FIELD: &str = "config.linux.security_context.namespace_options.pid";
const TARGET_FIELD: &str = "config.linux.security_context.namespace_options.target_id";
const USERNS_FIELD: &str = "config.linux.security_context.namespace_options.userns_options.mode";

/// The spec's namespace list. A namespace of the node is left out.
pub fn build(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    sandbox: &SandboxRecord,
    target_pid: Option<&Path>,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let options = sc.and_then(|s| s.namespace_options.as_ref());
    if let Some(userns) = options.and_then(|o| o.userns_options.as_ref()) {
        match cri::NamespaceMode::try_from(userns.mode) {
            Ok(cri::NamespaceMode::Node) => {}
            Ok(mode) => {
                return Err(invalid(
                    USERNS_FIELD,
                    format!(
                        "{} is not supported: berth runs containers in the node's user namespace",
                        mode.as_str_name()
                    ),
                ));
            }
            Err(_) => {
                return Err(invalid(
                    USERNS_FIELD,
                    format!("unknown mode {}", userns.mode),
                ));
            }
        }
    }

    let mut out = vec![new(LinuxNamespaceType::Mount)?];
    if sandbox.namespaces.network == NamespaceMode::Pod {
        out.push(join(LinuxNamespaceType::Network, sandbox, "net")?);
    }
    if sandbox.namespaces.ipc == NamespaceMode::Pod {
        out.push(join(LinuxNamespaceType::Ipc, sandbox, "ipc")?);
    }
    // The pause process always holds a UTS namespace, with the pod's
    // hostname (or the node's, for host-network pods).
    out.push(join(LinuxNamespaceType::Uts, sandbox, "uts")?);

    let pid = options
        .map(|o| o.pid)
        .unwrap_or(cri::NamespaceMode::Container as i32);
    match cri::NamespaceMode::try_from(pid) {
        Ok(cri::NamespaceMode::Pod) => {
            if sandbox.namespaces.pid != NamespaceMode::Pod {
                return Err(invalid(
                    PID_FIELD,
                    "is POD but the pod sandbox has no shared PID namespace",
                ));
            }
            out.push(join(LinuxNamespaceType::Pid, sandbox, "pid")?);
        }
        Ok(cri::NamespaceMode::Container) => out.push(new(LinuxNamespaceType::Pid)?),
        Ok(cri::NamespaceMode::Node) => {}
        Ok(cri::NamespaceMode::Target) => {
            let target = options.map(|o| o.target_id.as_str()).unwrap_or_default();
            let Some(path) = target_pid.filter(|_| !target.is_empty()) else {
                return Err(invalid(
                    TARGET_FIELD,
                    format!(
                        "PID mode TARGET needs a running target container, {} is not one",
                        crate::input::quoted(target)
                    ),
                ));
            };
            out.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Pid)
                    .path(path)
                    .build()?,
            );
        }
        Err(_) => return Err(invalid(PID_FIELD, format!("unknown mode {pid}"))),
    }
    Ok(out)
}

fn new(typ: LinuxNamespaceType) -> Result<LinuxNamespace, SpecError> {
    Ok(LinuxNamespaceBuilder::default().typ(typ).build()?)
}

fn join(
    typ: LinuxNamespaceType,
    sandbox: &SandboxRecord,
    kind: &str,
) -> Result<LinuxNamespace, SpecError> {
    Ok(LinuxNamespaceBuilder::default()
        .typ(typ)
        .path(sandbox.ns_path(kind))
        .build()?)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::container::spec::tests::sandbox;

    fn with_pid(mode: cri::NamespaceMode) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: mode as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn kinds(list: &[LinuxNamespace]) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        list.iter().map(|n| (n.typ(), n.path().clone())).collect()
    }

    #[test]
    fn pod_namespaces_are_joined_by_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sb = sandbox(dir.path());
        let ns = build(Some(&with_pid(cri::NamespaceMode::Container)), &sb, None).expect("ns");
        assert_eq!(
            kinds(&ns),
            vec![
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Network, Some(sb.ns_path("net"))),
                (LinuxNamespaceType::Ipc, Some(sb.ns_path("ipc"))),
                (LinuxNamespaceType::Uts, Some(sb.ns_path("uts"))),
                (LinuxNamespaceType::Pid, None),
            ]
        );
    }

    #[test]
    fn pid_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sb = sandbox(dir.path());
        let pid = |sb: &SandboxRecord, mode| {
            build(Some(&with_pid(mode)), sb, None).map(|ns| {
                kinds(&ns)
                    .into_iter()
                    .find(|(t, _)| *t == LinuxNamespaceType::Pid)
            })
        };
        assert_eq!(
            pid(&sb, cri::NamespaceMode::Pod).expect("pod"),
            Some((LinuxNamespaceType::Pid, Some(sb.ns_path("pid"))))
        );
        assert_eq!(pid(&sb, cri::NamespaceMode::Node).expect("node"), None);
        let err = pid(&sb, cri::NamespaceMode::Target).expect_err("no target");
        assert!(err.to_string().contains("target_id"), "{err}");
        let mut sc = with_pid(cri::NamespaceMode::Target);
        if let Some(o) = sc.namespace_options.as_mut() {
            o.target_id = "c0".into();
        }
        let target = Path::new("/proc/42/ns/pid");
        let ns = build(Some(&sc), &sb, Some(target)).expect("target");
        assert!(kinds(&ns).contains(&(LinuxNamespaceType::Pid, Some(target.to_path_buf()))));
        sb.namespaces.pid = NamespaceMode::Container;
        assert!(pid(&sb, cri::NamespaceMode::Pod).is_err());
        // No security context: a PID namespace of its own.
        let ns = build(None, &sb, None).expect("default");
        assert!(kinds(&ns).contains(&(LinuxNamespaceType::Pid, None)));
    }

    #[test]
    fn node_namespaces_are_left_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sb = sandbox(dir.path());
        sb.namespaces.network = NamespaceMode::Node;
        sb.namespaces.ipc = NamespaceMode::Node;
        let ns = build(Some(&with_pid(cri::NamespaceMode::Node)), &sb, None).expect("ns");
        assert_eq!(
            kinds(&ns),
            vec![
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Uts, Some(sb.ns_path("uts"))),
            ]
        );
    }

    #[test]
    fn user_namespaces_other_than_node_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sb = sandbox(dir.path());
        for (mode, ok) in [
            (cri::NamespaceMode::Node, true),
            (cri::NamespaceMode::Pod, false),
            (cri::NamespaceMode::Container, false),
            (cri::NamespaceMode::Target, false),
        ] {
            let sc = cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    userns_options: Some(cri::UserNamespace {
                        mode: mode as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let result = build(Some(&sc), &sb, None);
            assert_eq!(result.is_ok(), ok, "{mode:?}");
            if let Err(e) = result {
                assert!(e.to_string().contains("userns_options"), "{e}");
            }
        }
    }
}
