//! The container's security settings: capabilities (containerd's default
//! set, the config's additions and drops, `ALL`), privileged mode,
//! no_new_privs, masked and read-only paths, seccomp (RuntimeDefault,
//! Localhost, Unconfined) and AppArmor (refused, the host has none).

use std::path::Path;

use berth_cri_proto::v1 as cri;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxSeccomp,
};

use super::seccomp_default;
use super::spec::{SpecError, invalid};
use crate::input::quoted;

const SC: &str = "config.linux.security_context";

/// The capabilities a container gets unless the config says otherwise:
/// containerd's (and Docker's) default set.
const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability the kernel knows (up to CAP_CHECKPOINT_RESTORE).
const ALL_CAPABILITIES: &[Capability] = &[
    Capability::AuditControl,
    Capability::AuditRead,
    Capability::AuditWrite,
    Capability::BlockSuspend,
    Capability::Bpf,
    Capability::CheckpointRestore,
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::Kill,
    Capability::Lease,
    Capability::LinuxImmutable,
    Capability::MacAdmin,
    Capability::MacOverride,
    Capability::Mknod,
    Capability::NetAdmin,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetRaw,
    Capability::Perfmon,
    Capability::Setgid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysChroot,
    Capability::SysModule,
    Capability::SysNice,
    Capability::SysPacct,
    Capability::SysPtrace,
    Capability::SysRawio,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Syslog,
    Capability::WakeAlarm,
];

/// Paths of `/proc` and `/sys` hidden from a container when the kubelet
/// sends none (the kubelet's and containerd's default list).
const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths of `/proc` a container may only read when the kubelet sends none.
const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The security parts of the spec.
#[derive(Debug, Clone)]
pub struct Security {
    /// The process's capabilities.
    pub capabilities: LinuxCapabilities,
    /// `process.noNewPrivileges`.
    pub no_new_privileges: bool,
    /// `linux.maskedPaths`.
    pub masked_paths: Vec<String>,
    /// `linux.readonlyPaths`.
    pub readonly_paths: Vec<String>,
    /// `linux.seccomp`; `None` is unconfined.
    pub seccomp: Option<LinuxSeccomp>,
}

/// Which seccomp profile applies.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SeccompProfile {
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

/// The security settings of `sc`.
pub fn build(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Result<Security, SpecError> {
    let default = cri::LinuxContainerSecurityContext::default();
    let sc = sc.unwrap_or(&default);
    check_apparmor(sc)?;
    let capabilities = capabilities(sc.capabilities.as_ref(), privileged)?;
    if privileged {
        return Ok(Security {
            capabilities,
            no_new_privileges: sc.no_new_privs,
            masked_paths: Vec::new(),
            readonly_paths: Vec::new(),
            seccomp: None,
        });
    }
    let or_default = |given: &[String], default: &[&str]| {
        if given.is_empty() {
            default.iter().map(|p| p.to_string()).collect()
        } else {
            given.to_vec()
        }
    };
    let seccomp = match seccomp_profile(sc)? {
        SeccompProfile::Unconfined => None,
        SeccompProfile::RuntimeDefault => {
            let bounding = capabilities.bounding().clone().unwrap_or_default();
            Some(seccomp_default::profile(&bounding)?)
        }
        SeccompProfile::Localhost(path) => Some(localhost_profile(&path)?),
    };
    Ok(Security {
        capabilities,
        no_new_privileges: sc.no_new_privs,
        masked_paths: or_default(&sc.masked_paths, DEFAULT_MASKED_PATHS),
        readonly_paths: or_default(&sc.readonly_paths, DEFAULT_READONLY_PATHS),
        seccomp,
    })
}

/// containerd's capability math: start from the default set (every
/// capability when privileged, and then the config's lists are not
/// consulted), add `ALL`, drop `ALL`, then add and drop single ones.
/// Ambient capabilities are also put in every other set, as the kernel
/// only keeps an ambient capability that is permitted and inheritable.
fn capabilities(
    caps: Option<&cri::Capability>,
    privileged: bool,
) -> Result<LinuxCapabilities, SpecError> {
    let mut set: Capabilities = if privileged {
        all_in_bounding_set()
    } else {
        DEFAULT_CAPABILITIES.iter().copied().collect()
    };
    let mut ambient = Capabilities::new();
    if let Some(caps) = caps {
        let is_all = |c: &String| c.eq_ignore_ascii_case("ALL");
        if !privileged {
            if caps.add_capabilities.iter().any(is_all) {
                set = all_in_bounding_set();
            }
            if caps.drop_capabilities.iter().any(is_all) {
                set.clear();
            }
            for (i, name) in caps.add_capabilities.iter().enumerate() {
                if !is_all(name) {
                    set.insert(parse(name, "add_capabilities", i)?);
                }
            }
            for (i, name) in caps.drop_capabilities.iter().enumerate() {
                if !is_all(name) {
                    set.remove(&parse(name, "drop_capabilities", i)?);
                }
            }
        }
        for (i, name) in caps.add_ambient_capabilities.iter().enumerate() {
            ambient.insert(parse(name, "add_ambient_capabilities", i)?);
        }
    }
    set.extend(ambient.iter().copied());
    Ok(LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .inheritable(ambient.clone())
        .ambient(ambient)
        .build()?)
}

/// "All capabilities": every one berthd's own bounding set holds. A
/// container can never get more, and asking runc for more fails the start
/// on hosts that restrict the bounding set.
fn all_in_bounding_set() -> Capabilities {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    ALL_CAPABILITIES
        .iter()
        .copied()
        .filter(|c| bounding & (1u64 << number(*c)) != 0)
        .collect()
}

/// The kernel's number of a capability (`linux/capability.h`).
fn number(c: Capability) -> u32 {
    use Capability::*;
    match c {
        Chown => 0,
        DacOverride => 1,
        DacReadSearch => 2,
        Fowner => 3,
        Fsetid => 4,
        Kill => 5,
        Setgid => 6,
        Setuid => 7,
        Setpcap => 8,
        LinuxImmutable => 9,
        NetBindService => 10,
        NetBroadcast => 11,
        NetAdmin => 12,
        NetRaw => 13,
        IpcLock => 14,
        IpcOwner => 15,
        SysModule => 16,
        SysRawio => 17,
        SysChroot => 18,
        SysPtrace => 19,
        SysPacct => 20,
        SysAdmin => 21,
        SysBoot => 22,
        SysNice => 23,
        SysResource => 24,
        SysTime => 25,
        SysTtyConfig => 26,
        Mknod => 27,
        Lease => 28,
        AuditWrite => 29,
        AuditControl => 30,
        Setfcap => 31,
        MacOverride => 32,
        MacAdmin => 33,
        Syslog => 34,
        WakeAlarm => 35,
        BlockSuspend => 36,
        AuditRead => 37,
        Perfmon => 38,
        Bpf => 39,
        CheckpointRestore => 40,
    }
}

/// `CAP_NET_ADMIN`, `NET_ADMIN` or `net_admin`.
fn parse(name: &str, list: &str, i: usize) -> Result<Capability, SpecError> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse::<Capability>().map_err(|_| {
        invalid(
            format!("{SC}.capabilities.{list}[{i}]"),
            format!("{} is not a capability", quoted(name)),
        )
    })
}

/// The seccomp field, else the deprecated path string; neither set means
/// unconfined (the kubelet always sends one).
#[allow(deprecated)] // older kubelets still send the path string
fn seccomp_profile(sc: &cri::LinuxContainerSecurityContext) -> Result<SeccompProfile, SpecError> {
    if let Some(profile) = &sc.seccomp {
        let field = format!("{SC}.seccomp");
        return match cri::security_profile::ProfileType::try_from(profile.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => {
                Ok(SeccompProfile::RuntimeDefault)
            }
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(SeccompProfile::Unconfined),
            Ok(cri::security_profile::ProfileType::Localhost) => {
                if profile.localhost_ref.is_empty() {
                    Err(invalid(format!("{field}.localhost_ref"), "is empty"))
                } else {
                    Ok(SeccompProfile::Localhost(profile.localhost_ref.clone()))
                }
            }
            Err(_) => Err(invalid(
                format!("{field}.profile_type"),
                format!("unknown type {}", profile.profile_type),
            )),
        };
    }
    match sc.seccomp_profile_path.as_str() {
        "" | "unconfined" => Ok(SeccompProfile::Unconfined),
        "runtime/default" | "docker/default" => Ok(SeccompProfile::RuntimeDefault),
        other => match other.strip_prefix("localhost/") {
            Some(path) if !path.is_empty() => Ok(SeccompProfile::Localhost(path.to_string())),
            _ => Err(invalid(
                format!("{SC}.seccomp_profile_path"),
                format!(
                    "{} is not unconfined, runtime/default or localhost/<path>",
                    quoted(other)
                ),
            )),
        },
    }
}

/// A Localhost profile: an OCI `linux.seccomp` object in a JSON file on
/// the node. The kubelet sends an absolute path.
fn localhost_profile(path: &str) -> Result<LinuxSeccomp, SpecError> {
    let field = format!("{SC}.seccomp.localhost_ref");
    let file = Path::new(path);
    if !file.is_absolute() {
        return Err(invalid(
            field,
            format!("{} is not an absolute path", quoted(path)),
        ));
    }
    let text = std::fs::read(file).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            SpecError::NotFound(format!(
                "seccomp profile {} ({field}) does not exist",
                quoted(path)
            ))
        } else {
            SpecError::Io {
                op: "read",
                path: file.to_path_buf(),
                source: e,
            }
        }
    })?;
    // Docker-format profiles (`archMap`, `includes`/`excludes`) have
    // conditions this form cannot express; refuse them rather than apply
    // their conditional rules to everyone.
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
        invalid(
            field.clone(),
            format!("seccomp profile {} is not JSON: {e}", quoted(path)),
        )
    })?;
    let docker_only = value.get("archMap").is_some()
        || value
            .get("syscalls")
            .and_then(|s| s.as_array())
            .is_some_and(|rules| {
                rules
                    .iter()
                    .any(|r| r.get("includes").is_some() || r.get("excludes").is_some())
            });
    if docker_only {
        return Err(invalid(
            field,
            format!(
                "seccomp profile {} uses Docker's archMap/includes/excludes; \
                 give it as an OCI linux.seccomp object",
                quoted(path)
            ),
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        invalid(
            field,
            format!(
                "seccomp profile {} is not a valid profile: {e}",
                quoted(path)
            ),
        )
    })
}

/// The host has no AppArmor: a profile other than unconfined cannot be
/// honoured, and failing is better than running unconfined unasked. The
/// runtime default is no profile where there is no AppArmor, as with
/// CRI-O.
#[allow(deprecated)] // older kubelets still send the profile string
fn check_apparmor(sc: &cri::LinuxContainerSecurityContext) -> Result<(), SpecError> {
    if let Some(profile) = &sc.apparmor {
        if profile.profile_type == cri::security_profile::ProfileType::Localhost as i32 {
            return Err(invalid(
                format!("{SC}.apparmor"),
                format!(
                    "AppArmor is not enabled on this node; cannot apply profile {}",
                    quoted(&profile.localhost_ref)
                ),
            ));
        }
        return Ok(());
    }
    match sc.apparmor_profile.as_str() {
        "" | "unconfined" | "runtime/default" => Ok(()),
        other => Err(invalid(
            format!("{SC}.apparmor_profile"),
            format!(
                "AppArmor is not enabled on this node; cannot apply profile {}",
                quoted(other)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cri::security_profile::ProfileType;

    fn caps(add: &[&str], drop: &[&str]) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                add_ambient_capabilities: Vec::new(),
            }),
            ..Default::default()
        }
    }

    fn effective(sc: &cri::LinuxContainerSecurityContext, privileged: bool) -> Capabilities {
        build(Some(sc), privileged)
            .expect("security")
            .capabilities
            .effective()
            .clone()
            .unwrap_or_default()
    }

    #[test]
    fn default_capabilities() {
        let set = effective(&cri::LinuxContainerSecurityContext::default(), false);
        assert_eq!(set.len(), 14);
        assert!(set.contains(&Capability::NetRaw) && !set.contains(&Capability::SysAdmin));
        let all = build(None, false).expect("security").capabilities;
        assert_eq!(all.bounding(), all.permitted());
        assert_eq!(all.inheritable().as_ref().map(|s| s.len()), Some(0));
    }

    #[test]
    fn add_and_drop_with_and_without_prefix() {
        let set = effective(
            &caps(&["NET_ADMIN", "cap_sys_time"], &["CAP_CHOWN", "kill"]),
            false,
        );
        assert!(set.contains(&Capability::NetAdmin) && set.contains(&Capability::SysTime));
        assert!(!set.contains(&Capability::Chown) && !set.contains(&Capability::Kill));
        assert_eq!(set.len(), 14);
        let err = build(Some(&caps(&["FLY"], &[])), false).expect_err("unknown");
        assert!(
            err.to_string().contains("capabilities.add_capabilities[0]"),
            "{err}"
        );
    }

    #[test]
    fn capability_numbers_are_the_kernels() {
        assert_eq!(number(Capability::Chown), 0);
        assert_eq!(number(Capability::SysAdmin), 21);
        assert_eq!(number(Capability::CheckpointRestore), 40);
        let numbers: std::collections::BTreeSet<u32> =
            ALL_CAPABILITIES.iter().map(|c| number(*c)).collect();
        assert_eq!(numbers.len(), ALL_CAPABILITIES.len(), "distinct");
        assert!(!all_in_bounding_set().is_empty());
    }

    #[test]
    fn all_capability_math() {
        assert_eq!(
            effective(&caps(&["ALL"], &[]), false).len(),
            all_in_bounding_set().len()
        );
        let set = effective(&caps(&["ALL"], &["CHOWN"]), false);
        assert_eq!(set.len(), all_in_bounding_set().len() - 1);
        assert!(!set.contains(&Capability::Chown));
        let set = effective(&caps(&["NET_BIND_SERVICE"], &["ALL"]), false);
        assert_eq!(set, [Capability::NetBindService].into());
        assert!(effective(&caps(&[], &["all"]), false).is_empty());
    }

    #[test]
    fn ambient_capabilities_are_kept_everywhere() {
        let mut sc = caps(&[], &["ALL"]);
        if let Some(c) = sc.capabilities.as_mut() {
            c.add_ambient_capabilities = vec!["NET_BIND_SERVICE".into()];
        }
        let c = build(Some(&sc), false).expect("security").capabilities;
        let one: Capabilities = [Capability::NetBindService].into();
        for set in [
            c.ambient(),
            c.inheritable(),
            c.permitted(),
            c.effective(),
            c.bounding(),
        ] {
            assert_eq!(set.as_ref(), Some(&one));
        }
    }

    #[test]
    fn privileged_has_everything_and_no_confinement() {
        let mut sc = caps(&[], &["ALL"]);
        sc.privileged = true;
        sc.masked_paths = vec!["/proc/x".into()];
        sc.seccomp = Some(cri::SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        let s = build(Some(&sc), true).expect("security");
        assert_eq!(
            s.capabilities.effective().as_ref().map(|c| c.len()),
            Some(all_in_bounding_set().len())
        );
        assert!(s.masked_paths.is_empty() && s.readonly_paths.is_empty());
        assert!(s.seccomp.is_none());
    }

    #[test]
    fn masked_paths_default_or_explicit() {
        let s = build(None, false).expect("security");
        assert!(s.masked_paths.contains(&"/proc/kcore".to_string()));
        assert!(s.readonly_paths.contains(&"/proc/sys".to_string()));
        let sc = cri::LinuxContainerSecurityContext {
            masked_paths: vec!["/proc/one".into()],
            readonly_paths: vec!["/proc/two".into()],
            no_new_privs: true,
            ..Default::default()
        };
        let s = build(Some(&sc), false).expect("security");
        assert_eq!(s.masked_paths, vec!["/proc/one"]);
        assert_eq!(s.readonly_paths, vec!["/proc/two"]);
        assert!(s.no_new_privileges);
    }

    fn with_seccomp(kind: ProfileType, localhost_ref: &str) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: kind as i32,
                localhost_ref: localhost_ref.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn seccomp_modes() {
        let s = |sc: &cri::LinuxContainerSecurityContext| build(Some(sc), false).map(|s| s.seccomp);
        assert!(
            s(&with_seccomp(ProfileType::RuntimeDefault, ""))
                .expect("default")
                .is_some()
        );
        assert!(
            s(&with_seccomp(ProfileType::Unconfined, ""))
                .expect("unconfined")
                .is_none()
        );
        assert!(build(None, false).expect("none").seccomp.is_none());

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("profile.json");
        std::fs::write(
            &file,
            r#"{"defaultAction":"SCMP_ACT_LOG","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_AARCH64"],
                "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        )
        .expect("write");
        let path = file.to_string_lossy().into_owned();
        let local = s(&with_seccomp(ProfileType::Localhost, &path))
            .expect("localhost")
            .expect("profile");
        assert_eq!(
            local.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActLog
        );
        assert_eq!(local.architectures().as_ref().map(|a| a.len()), Some(2));

        let missing = dir
            .path()
            .join("missing.json")
            .to_string_lossy()
            .into_owned();
        let err = s(&with_seccomp(ProfileType::Localhost, &missing)).expect_err("missing");
        assert!(matches!(err, SpecError::NotFound(_)), "{err}");
        std::fs::write(&file, "{not json").expect("write");
        let err = s(&with_seccomp(ProfileType::Localhost, &path)).expect_err("invalid");
        assert!(err.to_string().contains("seccomp.localhost_ref"), "{err}");
        std::fs::write(&file, r#"{"defaultAction":"SCMP_ACT_ERRNO","archMap":[]}"#).expect("write");
        assert!(s(&with_seccomp(ProfileType::Localhost, &path)).is_err());
        assert!(s(&with_seccomp(ProfileType::Localhost, "")).is_err());
        assert!(s(&with_seccomp(ProfileType::Localhost, "rel.json")).is_err());
    }

    #[test]
    #[allow(deprecated)]
    fn deprecated_seccomp_paths() {
        let with_path = |p: &str| cri::LinuxContainerSecurityContext {
            seccomp_profile_path: p.into(),
            ..Default::default()
        };
        let s = |p: &str| build(Some(&with_path(p)), false).map(|s| s.seccomp.is_some());
        assert!(s("runtime/default").expect("runtime/default"));
        assert!(s("docker/default").expect("docker/default"));
        assert!(!s("unconfined").expect("unconfined"));
        assert!(matches!(
            s("localhost/nope.json"),
            Err(SpecError::InvalidArgument { .. })
        ));
        assert!(matches!(
            s("localhost//nope.json"),
            Err(SpecError::NotFound(_))
        ));
        assert!(s("bogus").is_err());
    }

    #[test]
    #[allow(deprecated)]
    fn apparmor_profiles_cannot_be_honoured() {
        let with = |kind: ProfileType| cri::LinuxContainerSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type: kind as i32,
                localhost_ref: "k8s-nginx".into(),
            }),
            ..Default::default()
        };
        assert!(build(Some(&with(ProfileType::RuntimeDefault)), false).is_ok());
        assert!(build(Some(&with(ProfileType::Unconfined)), false).is_ok());
        let err = build(Some(&with(ProfileType::Localhost)), false).expect_err("localhost");
        assert!(err.to_string().contains("AppArmor"), "{err}");
        let old = cri::LinuxContainerSecurityContext {
            apparmor_profile: "localhost/k8s-nginx".into(),
            ..Default::default()
        };
        assert!(build(Some(&old), false).is_err());
    }
}
