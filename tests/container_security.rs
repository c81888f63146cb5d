//! A container's security settings end to end, through a real berthd,
//! berth-shim and runc, as the container's own process sees them in
//! `/proc/1/status` and by what it may do: capabilities (the default set,
//! additions and drops, `ALL`, ambient ones, a non-root user's), privileged
//! mode, no_new_privs, masked and read-only paths, seccomp (RuntimeDefault,
//! a Localhost profile, Unconfined); and refusals that leave nothing.
//!
//! Needs root. AppArmor and SELinux are not on the test host; user
//! namespaces have tests of their own.

mod support;

use berth_cri_proto::v1::*;
use support::container::{TestPod, pod_config, status_field};
use tonic::Code;

/// containerd's default capability set, by kernel number: chown,
/// dac_override, fowner, fsetid, kill, setgid, setuid, setpcap,
/// net_bind_service, net_raw, sys_chroot, mknod, audit_write, setfcap.
const DEFAULT_CAPS: &[u32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];
const CAP_CHOWN: u32 = 0;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_TIME: u32 = 25;

fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | 1 << c)
}

/// A capability mask as `/proc/<pid>/status` prints it.
fn hex(mask: u64) -> String {
    format!("{mask:016x}")
}

fn security(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

fn caps(add: &[&str], drop: &[&str]) -> Option<Capability> {
    Some(Capability {
        add_capabilities: add.iter().map(|s| s.to_string()).collect(),
        drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

fn profile(kind: security_profile::ProfileType, localhost: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: localhost.into(),
    })
}

#[tokio::test]
async fn capabilities_privileged_and_no_new_privs() {
    if !support::root_tests("capabilities_privileged_and_no_new_privs") {
        return;
    }
    let (_registry, image, berthd) = support::berthd_with_busybox("berth/sec-caps").await;
    let berthd_status =
        std::fs::read_to_string(format!("/proc/{}/status", berthd.pid())).expect("berthd's status");
    let bounding = u64::from_str_radix(&status_field(&berthd_status, "CapBnd"), 16)
        .expect("berthd's bounding set");
    let mut config = pod_config("sec", "caps");
    if let Some(linux) = config.linux.as_mut() {
        linux.security_context = Some(LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        });
    }
    let mut pod = TestPod::run(&berthd, &image, config).await;

    // (name, how the config is changed, CapEff, CapBnd, CapAmb)
    type Change = fn(&mut LinuxContainerSecurityContext);
    let default = mask(DEFAULT_CAPS);
    let cases: Vec<(&str, Change, u64, u64, u64)> = vec![
        ("default", |_| {}, default, default, 0),
        (
            "add-drop",
            |sc| sc.capabilities = caps(&["NET_ADMIN", "cap_sys_time"], &["CAP_CHOWN"]),
            (default | mask(&[CAP_NET_ADMIN, CAP_SYS_TIME])) & !mask(&[CAP_CHOWN]),
            (default | mask(&[CAP_NET_ADMIN, CAP_SYS_TIME])) & !mask(&[CAP_CHOWN]),
            0,
        ),
        (
            "drop-all",
            |sc| sc.capabilities = caps(&[], &["ALL"]),
            0,
            0,
            0,
        ),
        (
            "drop-all-add-one",
            |sc| sc.capabilities = caps(&["NET_BIND_SERVICE"], &["ALL"]),
            mask(&[CAP_NET_BIND_SERVICE]),
            mask(&[CAP_NET_BIND_SERVICE]),
            0,
        ),
        (
            "add-all-drop-one",
            |sc| sc.capabilities = caps(&["ALL"], &["NET_RAW"]),
            bounding & !mask(&[CAP_NET_RAW]),
            bounding & !mask(&[CAP_NET_RAW]),
            0,
        ),
        (
            "privileged",
            |sc| {
                sc.privileged = true;
                // Ignored when privileged.
                sc.capabilities = caps(&[], &["ALL"]);
            },
            bounding,
            bounding,
            0,
        ),
        // A non-root user keeps no effective capability…
        (
            "non-root",
            |sc| sc.run_as_user = Some(Int64Value { value: 1000 }),
            0,
            default,
            0,
        ),
        // …but an ambient one.
        (
            "ambient",
            |sc| {
                sc.run_as_user = Some(Int64Value { value: 1000 });
                sc.capabilities = Some(Capability {
                    add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
                    ..Default::default()
                });
            },
            mask(&[CAP_NET_BIND_SERVICE]),
            default,
            mask(&[CAP_NET_BIND_SERVICE]),
        ),
    ];
    let mut ids = Vec::new();
    for (name, change, eff, bnd, amb) in cases {
        let mut config = pod.container(name, &["sleep", "3600"]);
        change(security(&mut config));
        let id = pod.start(config).await;
        let status = pod.sh(&id, "cat /proc/1/status").await;
        assert_eq!(
            (
                status_field(&status, "CapEff"),
                status_field(&status, "CapBnd"),
                status_field(&status, "CapAmb"),
            ),
            (hex(eff), hex(bnd), hex(amb)),
            "{name}: effective, bounding and ambient capabilities"
        );
        assert_eq!(status_field(&status, "NoNewPrivs"), "0", "{name}");
        // An ExecSync (a probe) runs with the same capabilities.
        let exec = pod.sh(&id, "cat /proc/self/status").await;
        for field in ["CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(
                status_field(&exec, field),
                status_field(&status, field),
                "{name}: {field} of an exec"
            );
        }
        ids.push((name, id));
    }

    // What the sets allow: binding a low port as non-root only with the
    // ambient capability (nc binds, then exits on the timeout).
    let id = |name: &str| -> String {
        ids.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, id)| id.clone())
            .unwrap_or_else(|| panic!("no container {name}"))
    };
    let bind = "timeout 1 nc -l -p 80 2>&1; [ $? = 143 ]";
    pod.sh(&id("ambient"), bind).await;
    let err = pod.exec(&id("non-root"), &["sh", "-c", bind]).await;
    assert!(
        err.exit_code != 0 && err.stdout.contains("Permission denied"),
        "{err:?}"
    );
    // chown needs CAP_CHOWN, which add-drop dropped.
    pod.sh(&id("default"), "touch /tmp/f && chown 1000 /tmp/f")
        .await;
    let err = pod
        .sh_fails(&id("add-drop"), "touch /tmp/f && chown 1000 /tmp/f")
        .await;
    assert!(err.contains("Operation not permitted"), "{err}");
    // A privileged container sees the host's devices and a writable /sys.
    pod.sh(&id("privileged"), "test -c /dev/kmsg").await;
    pod.sh_fails(&id("default"), "test -c /dev/kmsg").await;
    // (The mount's own flags: sysfs's superblock is the pod network
    // namespace's, made read-only by whichever container mounted it first.)
    let sys_flags = "awk '$5 == \"/sys\" { print $6 }' /proc/self/mountinfo";
    let sys = pod.sh(&id("privileged"), sys_flags).await;
    assert!(sys.starts_with("rw,"), "privileged /sys: {sys}");
    let sys = pod.sh(&id("default"), sys_flags).await;
    assert!(sys.starts_with("ro,"), "/sys: {sys}");

    // no_new_privs.
    let mut config = pod.container("nnp", &["sleep", "3600"]);
    security(&mut config).no_new_privs = true;
    let nnp = pod.start(config).await;
    let status = pod.sh(&nnp, "cat /proc/1/status /proc/self/status").await;
    assert_eq!(
        status
            .lines()
            .filter(|l| l.starts_with("NoNewPrivs:"))
            .map(|l| l.split_whitespace().last().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["1", "1"],
        "the container's process and an exec"
    );

    // Refused: a privileged container in a pod that is not, an unknown
    // capability, an AppArmor profile this host cannot apply.
    let mut plain = TestPod::run(&berthd, &image, pod_config("sec", "plain")).await;
    let mut config = plain.container("wants-privileges", &["true"]);
    security(&mut config).privileged = true;
    let err = plain.create(config).await.expect_err("privileged");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message()
            .contains("config.linux.security_context.privileged"),
        "{}",
        err.message()
    );
    let mut config = plain.container("bad-cap", &["true"]);
    security(&mut config).capabilities = caps(&["NET_ADMIN", "CAP_FLY"], &[]);
    let err = plain.create(config).await.expect_err("unknown capability");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("capabilities.add_capabilities[1]")
            && err.message().contains("CAP_FLY"),
        "{}",
        err.message()
    );
    let mut config = plain.container("apparmor", &["true"]);
    security(&mut config).apparmor = profile(security_profile::ProfileType::Localhost, "berth-x");
    let err = plain.create(config).await.expect_err("AppArmor profile");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("AppArmor"), "{}", err.message());
    plain.assert_only_containers(&[]).await;
    plain.remove().await;
    pod.remove().await;
}

#[tokio::test]
async fn masked_and_readonly_paths_and_seccomp() {
    if !support::root_tests("masked_and_readonly_paths_and_seccomp") {
        return;
    }
    let (_registry, image, berthd) = support::berthd_with_busybox("berth/sec-paths").await;
    let mut pod = TestPod::run(&berthd, &image, pod_config("sec", "paths")).await;
    use security_profile::ProfileType;

    // Default masked and read-only paths.
    let default = pod
        .start(pod.container("default", &["sleep", "3600"]))
        .await;
    assert_eq!(
        pod.sh(&default, "stat -c %F /proc/keys /proc/timer_list")
            .await,
        "character special file\ncharacter special file\n",
        "masked with /dev/null"
    );
    let err = pod
        .sh_fails(&default, "echo 1 > /proc/sys/kernel/shm_rmid_forced")
        .await;
    assert!(err.contains("Read-only file system"), "{err}");
    let irq = pod.sh(&default, "grep ' /proc/irq ' /proc/mounts").await;
    assert!(irq.contains(" ro,"), "{irq}");

    // The config's lists replace the defaults.
    let mut config = pod.container("custom", &["sleep", "3600"]);
    let sc = security(&mut config);
    sc.masked_paths = vec!["/proc/cpuinfo".into()];
    sc.readonly_paths = vec!["/tmp".into()];
    let custom = pod.start(config).await;
    assert_eq!(pod.sh(&custom, "cat /proc/cpuinfo").await, "");
    let timer_list = pod.sh(&custom, "stat -c %F /proc/timer_list").await;
    assert!(
        timer_list.starts_with("regular"),
        "no longer masked: {timer_list}"
    );
    let err = pod.sh_fails(&custom, "touch /tmp/x").await;
    assert!(err.contains("Read-only file system"), "{err}");
    pod.sh(&custom, "touch /x").await;
    let mounts = pod.sh(&custom, "cat /proc/mounts").await;
    assert!(
        !mounts.contains(" /proc/sys "),
        "/proc/sys is no longer read-only: {mounts}"
    );

    // Seccomp. RuntimeDefault refuses unshare without CAP_SYS_ADMIN,
    // which creating a user namespace does not otherwise need.
    let dir = tempfile::tempdir().expect("temp dir for the profile");
    let localhost = dir.path().join("no-mkdir.json");
    std::fs::write(
        &localhost,
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{
                "names": ["mkdir", "mkdirat"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 1
            }]
        })
        .to_string(),
    )
    .expect("write the Localhost profile");
    let localhost = localhost.display().to_string();
    let mut ids = Vec::new();
    for (name, seccomp) in [
        ("runtime-default", profile(ProfileType::RuntimeDefault, "")),
        ("localhost", profile(ProfileType::Localhost, &localhost)),
        ("unconfined", profile(ProfileType::Unconfined, "")),
    ] {
        let mut config = pod.container(name, &["sleep", "3600"]);
        security(&mut config).seccomp = seccomp;
        let id = pod.start(config).await;
        let status = pod.sh(&id, "cat /proc/1/status").await;
        let want = if name == "unconfined" { "0" } else { "2" };
        assert_eq!(status_field(&status, "Seccomp"), want, "{name}: mode");
        let exec = pod.sh(&id, "cat /proc/self/status").await;
        assert_eq!(status_field(&exec, "Seccomp"), want, "{name}: exec's mode");
        ids.push(id);
    }
    let err = pod.sh_fails(&ids[0], "unshare -U true").await;
    assert!(err.contains("Operation not permitted"), "{err}");
    pod.sh(&ids[0], "mkdir /tmp/d").await;
    let err = pod.sh_fails(&ids[1], "mkdir /tmp/d").await;
    assert!(err.contains("Operation not permitted"), "{err}");
    pod.sh(&ids[1], "unshare -U true && touch /tmp/f").await;
    pod.sh(&ids[2], "unshare -U true && mkdir /tmp/d").await;

    // A Localhost profile that is missing or not absolute is refused.
    let mut config = pod.container("missing-profile", &["true"]);
    let missing = dir.path().join("missing.json").display().to_string();
    security(&mut config).seccomp = profile(ProfileType::Localhost, &missing);
    let err = pod.create(config).await.expect_err("missing profile");
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    assert!(err.message().contains(&missing), "{}", err.message());
    let mut config = pod.container("relative-profile", &["true"]);
    security(&mut config).seccomp = profile(ProfileType::Localhost, "profiles/x.json");
    let err = pod.create(config).await.expect_err("relative profile");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("seccomp.localhost_ref"),
        "{}",
        err.message()
    );
    let mut all = vec![default.as_str(), custom.as_str()];
    all.extend(ids.iter().map(String::as_str));
    pod.assert_only_containers(&all).await;
    pod.remove().await;
}
