//! Containers end to end: a real berthd creates, starts, stops and removes
//! containers of an image the test builds and serves, through berth-shim
//! and runc; exits while berthd is down are recorded with their real code.
//!
//! Needs root.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use berth_cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use berth_cri_proto::v1::*;
use support::berthd::Berthd;
use support::image::ImageBuilder;
use support::registry::Registry;
use tonic::Code;
use tonic::transport::Channel;

fn pod_config(name: &str) -> PodSandboxConfig {
    support::container::pod_config("ctest", name)
}

fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        labels: HashMap::from([("role".to_string(), name.to_string())]),
        ..Default::default()
    }
}

async fn state(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> ContainerStatus {
    rt.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("ContainerStatus")
    .into_inner()
    .status
    .expect("status")
}

async fn wait_state(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    want: ContainerState,
) -> ContainerStatus {
    for _ in 0..500 {
        let st = state(rt, id).await;
        if st.state == want as i32 {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "container {id} never reached {want:?}: {:?}",
        state(rt, id).await
    );
}

fn remove_parent_cgroup(name: &str) {
    support::remove_test_cgroup(&format!("berth-ctest-{}-{name}", std::process::id()));
}

#[tokio::test]
async fn create_start_stop_remove_and_survive_a_berthd_kill() {
    if !support::root_tests("create_start_stop_remove_and_survive_a_berthd_kill") {
        return;
    }
    let registry = Registry::start().expect("registry");
    let pushed = ImageBuilder::busybox("berth/ctr")
        .tag("v1")
        .push(&registry)
        .await
        .expect("push");
    let image = pushed.reference().to_string();
    let mut berthd = Berthd::start_with_network("").await;
    berthd.pull(&image).await;
    let mut images = berthd.images().await;
    let mut rt = berthd.runtime().await;
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config("c1")),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let create = |name: &str, command: &[&str]| CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(container_config(name, &image, command)),
        sandbox_config: Some(pod_config("c1")),
    };

    // Unknown image, unknown pod, name taken: precise errors.
    let mut bad = create("nope", &["true"]);
    if let Some(c) = bad.config.as_mut() {
        c.image = Some(ImageSpec {
            image: format!("{}/berth/missing:v1", registry.host()),
            ..Default::default()
        });
    }
    let err = rt.create_container(bad).await.expect_err("missing image");
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    let mut orphan = create("orphan", &["true"]);
    orphan.pod_sandbox_id = "0000".into();
    let err = rt.create_container(orphan).await.expect_err("unknown pod");
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());

    let sleeper = rt
        .create_container(create("sleeper", &["sleep", "3600"]))
        .await
        .expect("create sleeper")
        .into_inner()
        .container_id;
    let err = rt
        .create_container(create("sleeper", &["true"]))
        .await
        .expect_err("name taken");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(
        state(&mut rt, &sleeper).await.state,
        ContainerState::ContainerCreated as i32
    );
    let err = images
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("image in use");
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());

    rt.start_container(StartContainerRequest {
        container_id: sleeper.clone(),
    })
    .await
    .expect("start sleeper");
    let st = wait_state(&mut rt, &sleeper, ContainerState::ContainerRunning).await;
    assert!(st.started_at > 0);
    assert_eq!(st.image_ref, pushed.digest_reference());
    // The identity the process runs with (root in the busybox image).
    let user = st.user.and_then(|u| u.linux).expect("user reported");
    assert_eq!((user.uid, user.gid), (0, 0));
    assert_eq!(user.supplemental_groups.first(), Some(&0));

    // A container that exits on its own: exit code and reason.
    let quick = rt
        .create_container(create("quick", &["sh", "-c", "exit 3"]))
        .await
        .expect("create quick")
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: quick.clone(),
    })
    .await
    .expect("start quick");
    let st = wait_state(&mut rt, &quick, ContainerState::ContainerExited).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"));

    // The termination message: reported when berth backs the file (no
    // kubelet mount at the path), left to the kubelet when it mounts one.
    let mut farewell = create(
        "farewell",
        &["sh", "-c", "echo goodbye > /dev/termination-log; exit 2"],
    );
    if let Some(c) = farewell.config.as_mut() {
        c.annotations.insert(
            "io.kubernetes.container.terminationMessagePath".into(),
            "/dev/termination-log".into(),
        );
    }
    let farewell = rt
        .create_container(farewell)
        .await
        .expect("create farewell")
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: farewell.clone(),
    })
    .await
    .expect("start farewell");
    let st = wait_state(&mut rt, &farewell, ContainerState::ContainerExited).await;
    assert_eq!(
        (st.exit_code, st.message.as_str()),
        (2, "goodbye\n"),
        "{st:?}"
    );

    // kill -9 berthd; the sleeper's process dies meanwhile: after the
    // restart its real exit code is known.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", "sleep 3600"])
        .output()
        .expect("pgrep");
    let pid: i32 = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("sleeper pid");
    berthd.kill9().await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill sleeper");
    tokio::time::sleep(Duration::from_millis(200)).await;
    berthd.restart().await;
    let mut rt = berthd.runtime().await;
    let st = wait_state(&mut rt, &sleeper, ContainerState::ContainerExited).await;
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert!(st.finished_at >= st.started_at);

    // A running container is stopped with its signal then removed.
    let again = rt
        .create_container(create("again", &["sleep", "3600"]))
        .await
        .expect("create again")
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: again.clone(),
    })
    .await
    .expect("start again");
    wait_state(&mut rt, &again, ContainerState::ContainerRunning).await;
    // UpdateContainerResources reaches the running container's cgroup and
    // its status; bad values change nothing.
    let update = |linux: LinuxContainerResources| UpdateContainerResourcesRequest {
        container_id: again.clone(),
        linux: Some(linux),
        ..Default::default()
    };
    rt.update_container_resources(update(LinuxContainerResources {
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    }))
    .await
    .expect("update");
    let cgroup = format!("berth-ctest-{}-c1/{again}", std::process::id());
    let read = |controller: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}/{cgroup}/{file}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("{controller}/{file}: {e}"))
    };
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(read("cpu", "cpu.shares"), "512");
    let err = rt
        .update_container_resources(update(LinuxContainerResources {
            memory_limit_in_bytes: -1,
            ..Default::default()
        }))
        .await
        .expect_err("negative memory");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("linux.memory_limit_in_bytes"),
        "{}",
        err.message()
    );
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    let st = state(&mut rt, &again).await;
    let reported = st
        .resources
        .and_then(|r| r.linux)
        .expect("resources reported");
    assert_eq!(
        (reported.cpu_shares, reported.memory_limit_in_bytes),
        (512, 64 << 20)
    );

    rt.stop_container(StopContainerRequest {
        container_id: again.clone(),
        timeout: 1,
    })
    .await
    .expect("stop");
    let st = state(&mut rt, &again).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(
        st.exit_code, 137,
        "sleep as PID 1 ignores SIGTERM: killed after the timeout"
    );
    let err = rt
        .update_container_resources(update(LinuxContainerResources {
            cpu_shares: 256,
            ..Default::default()
        }))
        .await
        .expect_err("exited");
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    // Idempotent.
    rt.stop_container(StopContainerRequest {
        container_id: again.clone(),
        timeout: 0,
    })
    .await
    .expect("stop again");

    // A container whose shim is killed: berthd notices, cleans up with
    // `berth-shim delete` (which kills the orphaned process) and records
    // an exit that says what happened.
    let orphaned = rt
        .create_container(create("orphaned", &["sleep", "3601"]))
        .await
        .expect("create orphaned")
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: orphaned.clone(),
    })
    .await
    .expect("start orphaned");
    wait_state(&mut rt, &orphaned, ContainerState::ContainerRunning).await;
    let pids = |pattern: String| -> Vec<i32> {
        let ps = std::process::Command::new("pgrep")
            .args(["-f", &pattern])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let sleeper_pids = pids("sleep 3601".into());
    assert_eq!(sleeper_pids.len(), 1, "{sleeper_pids:?}");
    let shim_pids = pids(format!("berth-shim .*-id {orphaned}"));
    assert_eq!(shim_pids.len(), 1, "{shim_pids:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");
    let st = wait_state(&mut rt, &orphaned, ContainerState::ContainerExited).await;
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert!(st.message.contains("shim died"), "{st:?}");
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, r)| !r.starts_with('Z'))
        })
    };
    for _ in 0..200 {
        if !alive(sleeper_pids[0]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!alive(sleeper_pids[0]), "the orphaned process was killed");

    let listed = rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                label_selector: HashMap::from([("role".into(), "quick".into())]),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [quick.as_str()]
    );

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("stop pod");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("remove pod and its containers");
    let left = rt
        .list_containers(ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(
        !mounts.contains(&berthd.dir().display().to_string()),
        "mounts left"
    );
    // A shim exits just after answering Shutdown, and an exited shim may
    // wait as a zombie for the host's init to reap it: only live ones
    // count, after a moment.
    let dir = berthd.dir().display().to_string();
    let live = || -> Vec<String> {
        let ps = std::process::Command::new("ps")
            .args(["-eo", "stat=,args="])
            .output()
            .expect("ps");
        String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter(|l| {
                l.contains("berth-shim") && l.contains(&dir) && !l.trim_start().starts_with('Z')
            })
            .map(str::to_string)
            .collect()
    };
    for _ in 0..200 {
        if live().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(live(), Vec::<String>::new(), "shims left");
    remove_parent_cgroup("c1");
}
