//! CheckpointContainer end to end: a running container that counts in
//! memory is checkpointed into an archive in the layout CRI-O, containerd
//! and checkpointctl share, and keeps running; wrong requests get the
//! right codes and leave nothing behind.
//!
//! Then the counter is restored twice: from the archive's path into a new
//! container of the pod, and from a checkpoint image (the archive as an
//! OCI image's layer) pulled from the registry into another pod, as a
//! migration does; each goes on counting from
//! where the checkpoint left it, on the checkpointed writable layer.
//!
//! Broken checkpoints (not a tar, no spec, an image that is not on the
//! node, no CRIU images) are refused with the right code, undoing what
//! was made.
//!
//! Needs root and CRIU (Debian package criu; installed by scripts/test).
//! Where `criu check` fails on the host (Debian 12's CRIU 3.17 cannot run
//! on kernels from 6.13 on, whose vDSO it does not know; CRIU 4.1 can),
//! the test checks that a checkpoint fails cleanly with CRIU's reason
//! instead, and says loudly that the archive and the restores were not
//! checked. A newer `criu` first in `PATH` runs the whole test.

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use berth_cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use berth_cri_proto::v1::*;
use tonic::transport::Channel;

fn cgroup_parent() -> String {
    format!("berth-ckpt-{}", std::process::id())
}

fn pod_config(logs: &Path, name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "berth-test".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/{}", cgroup_parent()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(image: &str, name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        labels: HashMap::from([("role".to_string(), name.to_string())]),
        ..Default::default()
    }
}

async fn checkpoint(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    location: &str,
) -> Result<(), tonic::Status> {
    rt.checkpoint_container(CheckpointContainerRequest {
        container_id: id.into(),
        location: location.into(),
        timeout: 120,
    })
    .await
    .map(|_| ())
}

async fn state(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> i32 {
    rt.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("ContainerStatus")
    .into_inner()
    .status
    .map(|s| s.state)
    .unwrap_or(-1)
}

/// The highest `count N` the counter logged.
fn last_count(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.rsplit_once("count ")
                .and_then(|(_, n)| n.trim().parse().ok())
        })
        .max()
        .unwrap_or(0)
}

async fn wait_count_above(log: &Path, above: u64) -> u64 {
    for _ in 0..100 {
        let n = last_count(log);
        if n > above {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the counter did not go past {above} in {}", log.display());
}

/// Every entry of a tar archive (gzip when `gzip`) with its bytes.
fn entries(path: &Path, gzip: bool) -> HashMap<String, Vec<u8>> {
    let file = std::fs::File::open(path).expect("open archive");
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = HashMap::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read entry");
        out.insert(name.trim_end_matches('/').to_string(), bytes);
    }
    out
}

fn json(entries: &HashMap<String, Vec<u8>>, name: &str) -> serde_json::Value {
    let bytes = entries
        .get(name)
        .unwrap_or_else(|| panic!("{name} in the archive"));
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{name} is JSON: {e}"))
}

/// Whether CRIU can run on this host, and what it said when it cannot.
fn criu_check() -> Result<(), String> {
    let criu = support::require_binary("criu");
    let out = std::process::Command::new(&criu)
        .arg("check")
        .output()
        .expect("run criu check");
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Names in `dir` starting with `prefix`.
fn leftovers(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Creates a container from the archive at `archive` (its path as the
/// image, as CRI-O takes it), starts it, and checks that its counter goes on
/// from the checkpoint instead of starting again, on the checkpointed
/// writable layer.
async fn restore_continues_the_count(
    rt: &mut RuntimeServiceClient<Channel>,
    (pod, pod_name): (&str, &str),
    logs: &Path,
    (archive, image): (&Path, &str),
    name: &str,
    before: u64,
) {
    let in_archive = entries(archive, true);
    let archived_log = in_archive.get("container.log").expect("container.log");
    let at_checkpoint = archived_log
        .split(|b| *b == b'\n')
        .filter_map(|l| {
            let l = String::from_utf8_lossy(l);
            l.rsplit_once("count ")
                .and_then(|(_, n)| n.trim().parse::<u64>().ok())
        })
        .max()
        .expect("counts in the archived log");
    let mut config = container_config(image, name, "exit 1");
    config.labels.insert("restored".into(), "yes".into());
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config(logs, pod_name)),
        })
        .await
        .expect("CreateContainer from the checkpoint archive")
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer restores");
    assert_eq!(
        state(rt, &id).await,
        ContainerState::ContainerRunning as i32
    );
    // The new log starts with the old one; what follows is the restored
    // process's own.
    let log = logs.join(format!("{name}.log"));
    let copied = archived_log.len();
    let mut first_new = None;
    for _ in 0..100 {
        let text = std::fs::read(&log).unwrap_or_default();
        let new = String::from_utf8_lossy(text.get(copied..).unwrap_or_default()).into_owned();
        first_new = new
            .lines()
            .filter_map(|l| {
                l.rsplit_once("count ")
                    .and_then(|(_, n)| n.trim().parse::<u64>().ok())
            })
            .next();
        if first_new.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_new = first_new.expect("the restored container counts");
    eprintln!(
        "{name}: {before} before the checkpoint, {at_checkpoint} in the archived log, \
         {first_new} first after the restore"
    );
    assert!(
        first_new > before && first_new <= at_checkpoint + 1,
        "the restored counter goes on from the checkpoint ({before} < {first_new} <= {at_checkpoint} + 1)"
    );
    let out = rt
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "cat /data/state; test -e /home/guest && echo guest-back".into(),
            ],
            timeout: 10,
        })
        .await
        .expect("ExecSync in the restored container")
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "saved\n",
        "the checkpointed writable layer, deletions included"
    );
}

#[tokio::test]
async fn checkpoint_archives_a_running_container_that_keeps_running() {
    if !support::root_tests("checkpoint_archives_a_running_container_that_keeps_running") {
        return;
    }
    let criu = criu_check();
    let (registry, image, berthd) = support::berthd_with_busybox("berth/checkpoint").await;
    let logs = tempfile::tempdir().expect("log dir");
    let out = tempfile::tempdir().expect("archive dir");
    let mut rt = berthd.runtime().await;
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config(logs.path(), "checkpoint")),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let create = async |rt: &mut RuntimeServiceClient<Channel>, name: &str, script: &str| {
        rt.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config(&image, name, script)),
            sandbox_config: Some(pod_config(logs.path(), "checkpoint")),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id
    };
    // The counter lives in the shell's memory; the container also writes
    // a file and deletes one of the image's.
    let counter = create(
        &mut rt,
        "counter",
        "mkdir -p /data && echo saved > /data/state && rmdir /home/guest; \
         i=0; while :; do i=$((i+1)); echo \"count $i\"; sleep 0.1; done",
    )
    .await;
    let idle = create(&mut rt, "idle", "sleep 3600").await;
    rt.start_container(StartContainerRequest {
        container_id: counter.clone(),
    })
    .await
    .expect("StartContainer");
    let log = logs.path().join("counter.log");
    let before = wait_count_above(&log, 3).await;

    // Wrong requests.
    let location = out.path().join("counter.tar");
    let location_text = location.display().to_string();
    let code = |r: Result<(), tonic::Status>| r.err().map(|s| s.code());
    assert_eq!(
        code(checkpoint(&mut rt, &counter, "").await),
        Some(tonic::Code::InvalidArgument)
    );
    assert_eq!(
        code(checkpoint(&mut rt, &counter, "relative.tar").await),
        Some(tonic::Code::InvalidArgument)
    );
    let missing_dir = out.path().join("missing").join("c.tar");
    assert_eq!(
        code(checkpoint(&mut rt, &counter, &missing_dir.display().to_string()).await),
        Some(tonic::Code::InvalidArgument)
    );
    assert_eq!(
        code(checkpoint(&mut rt, &"f".repeat(64), &location_text).await),
        Some(tonic::Code::NotFound)
    );
    let not_running = checkpoint(&mut rt, &idle, &location_text).await;
    assert_eq!(
        code(not_running),
        Some(tonic::Code::FailedPrecondition),
        "a created container cannot be checkpointed"
    );
    assert!(!location.exists());

    let mut other_pod = None;
    let containers_dir = berthd.dir().join("root").join("containers").join(&counter);
    match criu {
        Ok(()) => {
            checkpoint(&mut rt, &counter, &location_text)
                .await
                .expect("CheckpointContainer");
            let gz = out.path().join("counter.tar.gz");
            checkpoint(&mut rt, &counter, &gz.display().to_string())
                .await
                .expect("CheckpointContainer to .tar.gz");
            for (path, gzip) in [(&location, false), (&gz, true)] {
                let entries = entries(path, gzip);
                assert!(
                    entries.contains_key("checkpoint/inventory.img"),
                    "CRIU's images in {:?}",
                    entries.keys().collect::<Vec<_>>()
                );
                assert!(entries.keys().any(|k| k.starts_with("checkpoint/pages-")));
                let config = json(&entries, "config.dump");
                assert_eq!(config["id"], counter.as_str());
                assert_eq!(config["rootfsImageName"], image.as_str());
                let spec = json(&entries, "spec.dump");
                assert_eq!(
                    spec["annotations"]["io.kubernetes.cri.container-name"],
                    "counter"
                );
                assert_eq!(
                    spec["annotations"]["io.kubernetes.cri.sandbox-id"],
                    pod.as_str()
                );
                let status = json(&entries, "status.dump");
                assert_eq!(status["metadata"]["name"], "counter");
                assert_eq!(status["labels"]["role"], "counter");
                let deleted = json(&entries, "deleted.files");
                assert!(
                    deleted
                        .as_array()
                        .is_some_and(|d| d.iter().any(|p| p == "/home/guest")),
                    "{deleted}"
                );
                let diff = entries.get("rootfs-diff.tar").expect("rootfs-diff.tar");
                let mut diff_tar = tar::Archive::new(diff.as_slice());
                let mut state = None;
                for entry in diff_tar.entries().expect("diff entries") {
                    let mut entry = entry.expect("diff entry");
                    if entry.path().expect("path").as_os_str() == "data/state" {
                        let mut text = String::new();
                        entry.read_to_string(&mut text).expect("read");
                        state = Some(text);
                    }
                }
                assert_eq!(state.as_deref(), Some("saved\n"), "the writable layer");
                let logged =
                    String::from_utf8_lossy(entries.get("container.log").expect("container.log"))
                        .into_owned();
                assert!(logged.contains("count "), "{logged}");
                assert!(entries.contains_key("dump.log"));
            }
            // 0600: it holds the container's memory.
            use std::os::unix::fs::MetadataExt;
            assert_eq!(
                std::fs::metadata(&location).expect("stat").mode() & 0o777,
                0o600
            );
            // From the archive's path, as CRI-O takes it.
            let gz_name = gz.display().to_string();
            let from_archive = (gz.as_path(), gz_name.as_str());
            restore_continues_the_count(
                &mut rt,
                (&pod, "checkpoint"),
                logs.path(),
                from_archive,
                "restored",
                before,
            )
            .await;
            // From a checkpoint image: the archive as the one layer of an
            // OCI image marked with the checkpoint annotation, pulled.
            let mut layer = support::image::Layer::new();
            for (name, bytes) in entries(&gz, true) {
                layer = if name == "checkpoint" {
                    layer.dir("/checkpoint", 0o700)
                } else {
                    layer.file(&format!("/{name}"), bytes, 0o600)
                };
            }
            let checkpoint_image = support::image::ImageBuilder::new("berth/counter-checkpoint")
                .tag("v1")
                .layer(layer)
                .annotation("io.kubernetes.cri-o.annotations.checkpoint.name", "counter")
                .push(&registry)
                .await
                .expect("push the checkpoint image")
                .reference()
                .to_string();
            berthd.pull(&checkpoint_image).await;
            let from_image = (gz.as_path(), checkpoint_image.as_str());
            // Into another pod (its own network namespace), as a migration
            // does.
            let target = rt
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(pod_config(logs.path(), "checkpoint-target")),
                    runtime_handler: String::new(),
                })
                .await
                .expect("RunPodSandbox for the restore")
                .into_inner()
                .pod_sandbox_id;
            other_pod = Some(target.clone());
            restore_continues_the_count(
                &mut rt,
                (&target, "checkpoint-target"),
                logs.path(),
                from_image,
                "from-image",
                before,
            )
            .await;
        }
        Err(why) => {
            eprintln!(
                "\n!!! checkpoint_archives_a_running_container_that_keeps_running: `criu check` \
                 fails on this host, so the archive itself is not checked; checking a clean \
                 failure instead. CRIU said:\n{why}!!!\n"
            );
            let failed = checkpoint(&mut rt, &counter, &location_text)
                .await
                .expect_err("a checkpoint without a working CRIU fails");
            eprintln!("CheckpointContainer answered: {failed:?}");
            assert_eq!(failed.code(), tonic::Code::Internal, "{failed:?}");
            assert!(
                failed.message().contains("criu") || failed.message().contains("CRIU"),
                "the error names CRIU: {}",
                failed.message()
            );
            assert!(!location.exists());
        }
    }
    // Nothing left behind: no temporary archive, no work directory.
    assert!(leftovers(out.path(), ".").is_empty());
    assert!(leftovers(&containers_dir, "checkpoint-").is_empty());
    // The container kept running, and kept counting.
    assert_eq!(
        state(&mut rt, &counter).await,
        ContainerState::ContainerRunning as i32
    );
    let after = last_count(&log);
    wait_count_above(&log, after.max(before)).await;

    if let Some(other) = other_pod {
        support::stop_and_remove_pod(&mut rt, &other).await;
    }
    support::stop_and_remove_pod(&mut rt, &pod).await;
    support::remove_test_cgroup(&cgroup_parent());
}

/// A tar holding `files` (name, bytes).
fn tar_of(path: &Path, files: &[(&str, &[u8])]) {
    let mut tar = tar::Builder::new(std::fs::File::create(path).expect("create tar"));
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, name, *bytes)
            .expect("append to tar");
    }
    tar.finish().expect("finish tar");
}

#[tokio::test]
async fn a_broken_checkpoint_is_refused_and_leaves_nothing() {
    if !support::root_tests("a_broken_checkpoint_is_refused_and_leaves_nothing") {
        return;
    }
    let (_registry, image, berthd) = support::berthd_with_busybox("berth/checkpoint-broken").await;
    let logs = tempfile::tempdir().expect("log dir");
    let dir = tempfile::tempdir().expect("archive dir");
    let mut rt = berthd.runtime().await;
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config(logs.path(), "broken")),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let spec = br#"{"process":{"args":["sh","-c","sleep 60"],"env":["PATH=/bin"],"cwd":"/"}}"#;
    let config_of = |image: &str| {
        serde_json::json!({"id": "x", "name": "x", "rootfsImageName": image}).to_string()
    };
    let not_tar = dir.path().join("not-a-checkpoint.tar");
    std::fs::write(&not_tar, b"just some text, not a tar archive").expect("write");
    let no_spec = dir.path().join("no-spec.tar");
    tar_of(&no_spec, &[("config.dump", config_of(&image).as_bytes())]);
    let missing_image = dir.path().join("missing-image.tar");
    tar_of(
        &missing_image,
        &[
            (
                "config.dump",
                config_of("example.invalid/none:v1").as_bytes(),
            ),
            ("spec.dump", spec),
        ],
    );
    // Everything but CRIU's images: the container is created, then undone.
    let no_images = dir.path().join("no-images.tar");
    tar_of(
        &no_images,
        &[
            ("config.dump", config_of(&image).as_bytes()),
            ("spec.dump", spec),
        ],
    );
    for (archive, code) in [
        (&not_tar, tonic::Code::InvalidArgument),
        (&no_spec, tonic::Code::InvalidArgument),
        (&missing_image, tonic::Code::NotFound),
        (&no_images, tonic::Code::InvalidArgument),
    ] {
        let refused = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config(
                    &archive.display().to_string(),
                    "broken",
                    "exit 1",
                )),
                sandbox_config: Some(pod_config(logs.path(), "broken")),
            })
            .await
            .expect_err("a broken checkpoint is refused");
        assert_eq!(refused.code(), code, "{}: {refused:?}", archive.display());
        if archive == &no_images {
            // Refused after the container was made, which was undone.
            assert!(refused.message().contains("inventory.img"), "{refused:?}");
        }
    }
    let left = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(left.is_empty(), "nothing created: {left:?}");
    let containers_dir = berthd.dir().join("root").join("containers");
    assert!(
        leftovers(&containers_dir, "").is_empty(),
        "no container directory left in {}",
        containers_dir.display()
    );
    // The name is free again.
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config(&image, "broken", "sleep 60")),
            sandbox_config: Some(pod_config(logs.path(), "broken")),
        })
        .await
        .expect("the name is free after the refused restores")
        .into_inner()
        .container_id;
    assert!(!id.is_empty());

    support::stop_and_remove_pod(&mut rt, &pod).await;
    support::remove_test_cgroup(&cgroup_parent());
}
