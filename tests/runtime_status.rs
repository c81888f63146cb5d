//! Version, Status, RuntimeConfig, UpdateRuntimeConfig and
//! UpdatePodSandboxResources' checks against a real berthd.

mod support;

use berth_cri_proto::v1::*;
use support::berthd::Berthd;
use tonic::Code;

#[tokio::test]
async fn version_names_berth_and_cri_v1() {
    let berthd = Berthd::start().await;
    let v = berthd
        .runtime()
        .await
        .version(VersionRequest {
            version: "0.1.0".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.version, "0.1.0");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
}

fn condition<'a>(status: &'a StatusResponse, kind: &str) -> &'a RuntimeCondition {
    status
        .status
        .as_ref()
        .expect("status")
        .conditions
        .iter()
        .find(|c| c.r#type == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {status:?}"))
}

#[tokio::test]
async fn network_ready_follows_the_cni_config() {
    let berthd = Berthd::start().await;
    let mut rt = berthd.runtime().await;

    let s = rt
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(condition(&s, "RuntimeReady").status);
    let net = condition(&s, "NetworkReady");
    assert!(!net.status, "no CNI config yet: {net:?}");
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(net.message.contains("no network config found"), "{net:?}");
    assert!(s.info.is_empty(), "info only when verbose");

    // A config whose plugin is not installed keeps the network not ready,
    // and says which plugin is missing.
    let conflist = r#"{"cniVersion":"1.0.0","name":"testnet","plugins":[{"type":"bridge"}]}"#;
    std::fs::write(berthd.cni_conf_dir().join("10-test.conflist"), conflist)
        .expect("write conflist");
    let s = rt
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let net = condition(&s, "NetworkReady");
    assert!(!net.status);
    assert!(net.message.contains("\"bridge\" not found"), "{net:?}");

    std::fs::create_dir_all(berthd.cni_bin_dir()).expect("bin dir");
    std::fs::write(berthd.cni_bin_dir().join("bridge"), "#!/bin/sh\n").expect("plugin");
    let s = rt
        .status(StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let net = condition(&s, "NetworkReady");
    assert!(net.status, "{net:?}");
    assert_eq!(s.info["lastCNILoadStatus"], "OK");
    let cni: serde_json::Value =
        serde_json::from_str(&s.info["cniconfig"]).expect("cniconfig json");
    assert_eq!(cni["name"], "testnet");
}

#[tokio::test]
async fn verbose_status_shows_config_and_handlers() {
    let berthd = Berthd::start_with(
        "[registry.hosts.\"r.example\"]\nusername = \"u\"\npassword = \"hunter2\"\n",
    )
    .await;
    let s = berthd
        .runtime()
        .await
        .status(StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).expect("config json");
    assert_eq!(
        config["grpc"]["address"],
        berthd.socket().display().to_string()
    );
    assert_eq!(config["default_runtime"], "runc");
    assert!(
        !s.info["config"].contains("hunter2"),
        "password leaked: {}",
        s.info["config"]
    );
    assert_eq!(s.info["storeSchemaVersion"], "1");
    let names: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        ["", "crun", "runc"],
        "default handler first, as \"\""
    );
}

#[tokio::test]
async fn runtime_config_reports_the_cgroup_driver() {
    let berthd = Berthd::start().await;
    let c = berthd
        .runtime()
        .await
        .runtime_config(RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    assert_eq!(
        c.linux.expect("linux").cgroup_driver(),
        CgroupDriver::Cgroupfs
    );

    let berthd = Berthd::start_with("cgroup_driver = \"systemd\"").await;
    let c = berthd
        .runtime()
        .await
        .runtime_config(RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    assert_eq!(
        c.linux.expect("linux").cgroup_driver(),
        CgroupDriver::Systemd
    );
}

fn pod_cidr(cidr: &str) -> UpdateRuntimeConfigRequest {
    UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    }
}

#[tokio::test]
async fn update_runtime_config_checks_the_pod_cidr() {
    let berthd = Berthd::start().await;
    let mut rt = berthd.runtime().await;
    rt.update_runtime_config(pod_cidr("10.88.0.0/16,fd00:88::/64"))
        .await
        .expect("valid CIDRs");
    let err = rt
        .update_runtime_config(pod_cidr("10.88.0.0/40"))
        .await
        .expect_err("invalid CIDR");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("pod_cidr"), "{}", err.message());
}

#[tokio::test]
async fn update_pod_sandbox_resources_checks_its_request() {
    let berthd = Berthd::start().await;
    let mut rt = berthd.runtime().await;
    let request = |id: &str, cpu_quota: i64| UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: id.into(),
        overhead: None,
        resources: Some(LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota,
            memory_limit_in_bytes: 256 << 20,
            ..Default::default()
        }),
    };
    let err = rt
        .update_pod_sandbox_resources(request("0123456789ab", 50_000))
        .await
        .expect_err("no such pod");
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    let err = rt
        .update_pod_sandbox_resources(request("0123456789ab", -7))
        .await
        .expect_err("negative quota");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("resources.cpu_quota"),
        "{}",
        err.message()
    );
    let err = rt
        .update_pod_sandbox_resources(request("", 50_000))
        .await
        .expect_err("no id");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("pod_sandbox_id"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn messages_up_to_16_mib_are_accepted_larger_refused() {
    let berthd = Berthd::start().await;
    let mut rt = berthd.runtime().await;
    // Large but under the limit: decoded, then refused for its content.
    let big = "1".repeat(15 * 1024 * 1024);
    let err = rt
        .update_runtime_config(pod_cidr(&big))
        .await
        .expect_err("not a CIDR");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());

    let huge = "1".repeat(17 * 1024 * 1024);
    let err = rt
        .update_runtime_config(pod_cidr(&huge))
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    // The daemon is still fine afterwards.
    rt.version(VersionRequest::default())
        .await
        .expect("Version after oversized request");
}
