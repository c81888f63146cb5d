//! Test ground shared by the integration tests: a real berthd on a private
//! root, a real registry on loopback, OCI images built from Debian's static
//! busybox, and the rule for tests that need root.
//!
//! Each integration test file includes this module with `mod support;`, so
//! not every test uses every item.
#![allow(dead_code)]

pub mod berthd;
pub mod container;
pub mod cri;
pub mod image;
pub mod registry;
pub mod streaming;
pub mod sys;

/// Environment variable that asks for the tests that need root (CI sets it).
pub const ROOT_TESTS_ENV: &str = "BERTH_ROOT_TESTS";

/// Decides whether a test that needs root runs.
///
/// Follows containerd's rule: when root tests were not asked for the test is
/// skipped with a loud message (returns `false`); when they were asked for
/// but the process is not root, the test fails instead of passing silently.
pub fn root_tests(test: &str) -> bool {
    let asked = std::env::var(ROOT_TESTS_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
    if !asked {
        eprintln!(
            "\n!!! SKIPPED {test}: needs root; set {ROOT_TESTS_ENV}=1 (as root) to run it !!!\n"
        );
        return false;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test}: {ROOT_TESTS_ENV} is set but the tests are not running as root"
    );
    true
}

/// Fails the test with a clear message when a host binary the test needs is
/// missing (root tests are only run when their tools are installed).
pub fn require_binary(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("required binary `{name}` not found in PATH; run the README's test command, which installs it"))
}

/// Removes the host-wide chains the CNI `portmap` plugin creates on first
/// use (and never deletes) once no pod rule is left in them, so a test that
/// used hostPorts leaves the host's iptables as it found them. Call it at
/// the end of such a test, after its pods are removed.
pub fn remove_unused_portmap_chains() {
    let rules = std::process::Command::new("iptables")
        .args(["-t", "nat", "-S", "CNI-HOSTPORT-DNAT"])
        .output();
    let Ok(rules) = rules else { return };
    let in_use = String::from_utf8_lossy(&rules.stdout)
        .lines()
        .any(|l| l.starts_with("-A CNI-HOSTPORT-DNAT"));
    if in_use || !rules.status.success() {
        return;
    }
    let iptables = |args: &[&str]| {
        let _ = std::process::Command::new("iptables")
            .args(["-t", "nat"])
            .args(args)
            .stderr(std::process::Stdio::null())
            .status();
    };
    iptables(&[
        "-D",
        "PREROUTING",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "CNI-HOSTPORT-DNAT",
    ]);
    iptables(&[
        "-D",
        "OUTPUT",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "CNI-HOSTPORT-DNAT",
    ]);
    iptables(&[
        "-D",
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "CNI portfwd requiring masquerade",
        "-j",
        "CNI-HOSTPORT-MASQ",
    ]);
    for chain in [
        "CNI-HOSTPORT-DNAT",
        "CNI-HOSTPORT-MASQ",
        "CNI-HOSTPORT-SETMARK",
    ] {
        iptables(&["-F", chain]);
        iptables(&["-X", chain]);
    }
}

/// Removes the (empty) cgroup `name` directly under every mounted
/// hierarchy: the cgroup parents tests give their pods.
pub fn remove_test_cgroup(name: &str) {
    // A pod's cgroup can outlive RemovePodSandbox by a moment (its last
    // process being reaped): retry, removing empty children first.
    fn remove_tree(dir: &std::path::Path) {
        for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&child.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let dirs: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|h| h.path().join(name))
        .collect();
    for _ in 0..100 {
        for dir in &dirs {
            remove_tree(dir);
        }
        if dirs.iter().all(|d| !d.exists()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!("test cgroup {name} could not be removed");
}

/// A registry on loopback serving a busybox image `<repo>:v1`, and a berthd
/// with its own pod network that has pulled it: what container tests start
/// from. Returns the registry (keep it alive), the image reference and
/// berthd.
pub async fn berthd_with_busybox(repo: &str) -> (registry::Registry, String, berthd::Berthd) {
    let registry = registry::Registry::start().expect("registry");
    let image = image::ImageBuilder::busybox(repo)
        .tag("v1")
        .push(&registry)
        .await
        .expect("push")
        .reference()
        .to_string();
    let berthd = berthd::Berthd::start_with_network("").await;
    berthd.pull(&image).await;
    (registry, image, berthd)
}

/// StopPodSandbox then RemovePodSandbox, both expected to succeed.
pub async fn stop_and_remove_pod(
    rt: &mut berth_cri_proto::v1::runtime_service_client::RuntimeServiceClient<
        tonic::transport::Channel,
    >,
    id: &str,
) {
    rt.stop_pod_sandbox(berth_cri_proto::v1::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(berth_cri_proto::v1::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("RemovePodSandbox");
}
