//! The namespaces of a container: the pod's user namespace (when it has
//! one), network, IPC and UTS namespaces joined through their pins, its PID
//! namespace per the config's mode, and always a mount namespace of its
//! own (inside the pod's user namespace).

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
        check_user_namespace(userns, sandbox)?;
    }

    let mut out = Vec::new();
    if sandbox.user_namespace.is_some() {
        // Joined first (runc does so whatever the order): the new mount
        // namespace and the pod's others then belong to it. No
        // uidMappings/gidMappings in the spec: runc reads them from the
        // namespace it joins.
        out.push(join(LinuxNamespaceType::User, sandbox, "user")?);
    }
    out.push(new(LinuxNamespaceType::Mount)?);
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

/// The container's `userns_options` must agree with its pod's: the
/// kubelet sends the pod's own options, and a container cannot leave the
/// pod's user namespace (nor enter one the pod does not have).
fn check_user_namespace(
    userns: &cri::UserNamespace,
    sandbox: &SandboxRecord,
) -> Result<(), SpecError> {
    let mode = cri::NamespaceMode::try_from(userns.mode)
        .map_err(|_| invalid(USERNS_FIELD, format!("unknown mode {}", userns.mode)))?;
    match (mode, &sandbox.user_namespace) {
        (cri::NamespaceMode::Node, None) => Ok(()),
        (cri::NamespaceMode::Pod, Some(pod)) => {
            let same = |list: &[cri::IdMapping], m: &crate::sandbox::IdMapping| {
                list.is_empty()
                    || matches!(list, [one] if one.container_id == m.container_id
                        && one.host_id == m.host_id
                        && one.length == m.length)
            };
            if same(&userns.uids, &pod.uid) && same(&userns.gids, &pod.gid) {
                Ok(())
            } else {
                Err(invalid(
                    USERNS_FIELD.replace(".mode", ".uids"),
                    "differ from the pod sandbox's user namespace mappings",
                ))
            }
        }
        (cri::NamespaceMode::Pod, None) => Err(invalid(
            USERNS_FIELD,
            "is POD but the pod sandbox has no user namespace of its own",
        )),
        (cri::NamespaceMode::Node, Some(_)) => Err(invalid(
            USERNS_FIELD,
            "is NODE but the pod sandbox runs in a user namespace of its own (POD)",
        )),
        (mode, _) => Err(invalid(
            USERNS_FIELD,
            format!(
                "{} is not supported for a container's user namespace (NODE or POD, as its pod)",
                mode.as_str_name()
            ),
        )),
    }
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

    fn with_userns(
        mode: cri::NamespaceMode,
        uids: Vec<cri::IdMapping>,
    ) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                userns_options: Some(cri::UserNamespace {
                    mode: mode as i32,
                    uids,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod_userns() -> crate::sandbox::UserNamespace {
        let m = crate::sandbox::IdMapping {
            container_id: 0,
            host_id: 1000,
            length: 100000,
        };
        crate::sandbox::UserNamespace { uid: m, gid: m }
    }

    #[test]
    fn user_namespace_modes_must_match_the_pod() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sb = sandbox(dir.path());
        let mut userns_sb = sandbox(dir.path());
        userns_sb.user_namespace = Some(pod_userns());
        for (mode, sb, ok) in [
            (cri::NamespaceMode::Node, &sb, true),
            (cri::NamespaceMode::Pod, &sb, false),
            (cri::NamespaceMode::Container, &sb, false),
            (cri::NamespaceMode::Target, &sb, false),
            (cri::NamespaceMode::Pod, &userns_sb, true),
            (cri::NamespaceMode::Node, &userns_sb, false),
            (cri::NamespaceMode::Container, &userns_sb, false),
        ] {
            let result = build(Some(&with_userns(mode, Vec::new())), sb, None);
            assert_eq!(result.is_ok(), ok, "{mode:?} in {:?}", sb.user_namespace);
            if let Err(e) = result {
                assert!(e.to_string().starts_with(USERNS_FIELD), "{e}");
            }
        }
        let other = vec![cri::IdMapping {
            container_id: 0,
            host_id: 2000,
            length: 100000,
        }];
        let e = build(
            Some(&with_userns(cri::NamespaceMode::Pod, other)),
            &userns_sb,
            None,
        )
        .expect_err("other mappings");
        assert!(e.to_string().contains("userns_options.uids"), "{e}");
        let same = vec![cri::IdMapping {
            container_id: 0,
            host_id: 1000,
            length: 100000,
        }];
        build(
            Some(&with_userns(cri::NamespaceMode::Pod, same)),
            &userns_sb,
            None,
        )
        .expect("the pod's own mappings");
    }

    #[test]
    fn pod_user_namespace_is_joined_first_by_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sb = sandbox(dir.path());
        sb.user_namespace = Some(pod_userns());
        // No userns_options at all: the container follows its pod.
        let ns = build(Some(&with_pid(cri::NamespaceMode::Pod)), &sb, None).expect("ns");
        assert_eq!(
            kinds(&ns),
            vec![
                (LinuxNamespaceType::User, Some(sb.ns_path("user"))),
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Network, Some(sb.ns_path("net"))),
                (LinuxNamespaceType::Ipc, Some(sb.ns_path("ipc"))),
                (LinuxNamespaceType::Uts, Some(sb.ns_path("uts"))),
                (LinuxNamespaceType::Pid, Some(sb.ns_path("pid"))),
            ]
        );
    }
}
