//! Exec, Attach and PortForward end to end, driven by our own SPDY and
//! WebSocket clients (tests/support/streaming.rs) against a real berthd,
//! berth-shim and runc: output, exit codes, stdin, terminals and resize,
//! attach without taking output from the log, port-forward into the pod's
//! network namespace, and single-use URLs.
//!
//! Needs root.

mod support;

use std::time::Duration;

use berth_cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use berth_cri_proto::v1::*;
use support::streaming::{SpdyClient, WsClient, spdy_upgrade};
use tonic::Code;
use tonic::transport::Channel;

fn pod_config(name: &str) -> PodSandboxConfig {
    support::container::pod_config("stest", name)
}

async fn run_container(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    image: &str,
    name: &str,
    command: &[&str],
    stdin: bool,
) -> String {
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: command.iter().map(|s| s.to_string()).collect(),
                stdin,
                log_path: format!("{name}.log"),
                ..Default::default()
            }),
            sandbox_config: Some(pod_config("stream")),
        })
        .await
        .expect("create")
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("start");
    id
}

async fn exec_url(
    rt: &mut RuntimeServiceClient<Channel>,
    container: &str,
    cmd: &[&str],
    (stdin, tty): (bool, bool),
) -> String {
    rt.exec(ExecRequest {
        container_id: container.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
    .await
    .expect("Exec")
    .into_inner()
    .url
}

/// Opens the error and data streams of one port-forward request; returns
/// (error, data).
async fn forward_pair(spdy: &mut SpdyClient, port: &str, request: &str) -> (u32, u32) {
    let error = spdy
        .open(&[
            ("streamType", "error"),
            ("port", port),
            ("requestID", request),
        ])
        .await;
    let data = spdy
        .open(&[
            ("streamType", "data"),
            ("port", port),
            ("requestID", request),
        ])
        .await;
    (error, data)
}

/// Live (non-zombie) processes whose command line matches `pattern`.
fn pids(pattern: &str) -> Vec<i32> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, r)| !r.starts_with('Z'))
            })
        })
        .collect()
}

/// A v4 SPDY session on `url` with one stream per kind, in order; returns
/// the client and the stream ids.
async fn v4_session(url: &str, kinds: &[&str]) -> (SpdyClient, Vec<u32>) {
    let up = spdy_upgrade(url, &["v4.channel.k8s.io"]).await;
    assert_eq!(up.status, 101, "{up:?}");
    let mut spdy = SpdyClient::new(up.stream.expect("upgraded"));
    let mut ids = Vec::new();
    for kind in kinds {
        ids.push(spdy.open(&[("streamType", kind)]).await);
    }
    (spdy, ids)
}

fn status_of(error: &[u8]) -> serde_json::Value {
    serde_json::from_slice(error)
        .unwrap_or_else(|e| panic!("status JSON {:?}: {e}", String::from_utf8_lossy(error)))
}

#[tokio::test]
async fn exec_attach_and_port_forward() {
    if !support::root_tests("exec_attach_and_port_forward") {
        return;
    }
    let logs = tempfile::tempdir().expect("log dir");
    let (_registry, image, berthd) = support::berthd_with_busybox("berth/stream").await;
    let mut rt = berthd.runtime().await;
    let mut config = pod_config("stream");
    config.log_directory = logs.path().display().to_string();
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let sleeper = run_container(&mut rt, &pod, &image, "sleeper", &["sleep", "3600"], false).await;

    // Bad requests: precise errors.
    let err = rt
        .exec(ExecRequest {
            container_id: sleeper.clone(),
            cmd: vec!["true".into()],
            tty: true,
            stderr: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("tty and stderr");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let err = rt
        .exec(ExecRequest {
            container_id: "nope".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("unknown container");
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());

    // 1. SPDY v4 exec: stdout, stderr, and the exit code in the status.
    let url = exec_url(
        &mut rt,
        &sleeper,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        (false, false),
    )
    .await;
    let up = spdy_upgrade(&url, &["v4.channel.k8s.io", "v3.channel.k8s.io"]).await;
    assert_eq!(up.status, 101, "{up:?}");
    assert_eq!(
        up.headers
            .get("x-stream-protocol-version")
            .map(|v| v[0].as_str()),
        Some("v4.channel.k8s.io")
    );
    let mut spdy = SpdyClient::new(up.stream.expect("upgraded"));
    let error = spdy.open(&[("streamType", "error")]).await;
    let stdout = spdy.open(&[("streamType", "stdout")]).await;
    let stderr = spdy.open(&[("streamType", "stderr")]).await;
    let got = spdy.read_until_ended(&[stdout, stderr, error]).await;
    assert_eq!(got[0], b"out\n");
    assert_eq!(got[1], b"err\n");
    let status = status_of(&got[2]);
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "3", "{status}");

    // The URL was single use.
    let again = spdy_upgrade(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(again.status, 404, "{again:?}");
    let (base, _) = url.rsplit_once('/').expect("a token in the URL");
    let unknown = spdy_upgrade(
        &format!("{base}/{}", "f".repeat(32)),
        &["v4.channel.k8s.io"],
    )
    .await;
    assert_eq!(unknown.status, 404);

    // 2. stdin through `cat`, closed by FIN; success status.
    let url = exec_url(&mut rt, &sleeper, &["cat"], (true, false)).await;
    let (mut spdy, ids) = v4_session(&url, &["error", "stdin", "stdout", "stderr"]).await;
    let [error, stdin, stdout, stderr] = ids[..] else {
        panic!("4 streams")
    };
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for chunk in big.chunks(32 * 1024) {
        spdy.send(stdin, chunk, false);
    }
    spdy.send(stdin, b"", true);
    let got = spdy.read_until_ended(&[stdout, stderr, error]).await;
    assert_eq!(got[0].len(), big.len(), "all of stdin came back");
    assert!(got[0] == big);
    assert_eq!(status_of(&got[2])["status"], "Success");

    // 3. A terminal, resized before the command reads its size.
    let url = exec_url(
        &mut rt,
        &sleeper,
        &["sh", "-c", "read x; stty size; tty"],
        (true, true),
    )
    .await;
    let (mut spdy, ids) = v4_session(&url, &["error", "stdin", "stdout", "resize"]).await;
    let [error, stdin, stdout, resize] = ids[..] else {
        panic!("4 streams")
    };
    spdy.send(resize, br#"{"Width":100,"Height":40}"#, false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    spdy.send(stdin, b"go\n", false);
    let out = spdy.read_until_ended(&[stdout, error]).await;
    let text = String::from_utf8_lossy(&out[0]);
    assert!(text.contains("40 100"), "{text:?}");
    assert!(text.contains("/dev/pts/"), "{text:?}");

    // 3b. A process that exits while a background child still holds its
    // output: the session ends anyway.
    let url = exec_url(
        &mut rt,
        &sleeper,
        &["sh", "-c", "sleep 3602 & echo started"],
        (false, false),
    )
    .await;
    let (mut spdy, ids) = v4_session(&url, &["error", "stdout", "stderr"]).await;
    let [error, stdout, stderr] = ids[..] else {
        panic!("3 streams")
    };
    let got = spdy.read_until_ended(&[stdout, stderr, error]).await;
    assert_eq!(got[0], b"started\n");
    assert_eq!(status_of(&got[2])["status"], "Success");

    // 3c. A client that goes away mid-exec: its process is killed, the
    // shim keeps no fd of it.
    let shim_pid = pids(&format!("berth-shim .*-id {sleeper}"));
    assert_eq!(shim_pid.len(), 1, "{shim_pid:?}");
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", shim_pid[0])).map_or(0, |d| d.count());
    let before = fds();
    let url = exec_url(&mut rt, &sleeper, &["sleep", "3603"], (true, false)).await;
    let (spdy, ids) = v4_session(&url, &["error", "stdin", "stdout", "stderr"]).await;
    let [_error, _stdin, _stdout, _stderr] = ids[..] else {
        panic!("4 streams")
    };
    let mut started = false;
    for _ in 0..200 {
        if !pids("sleep 3603").is_empty() {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started, "the exec runs");
    drop(spdy);
    let mut gone = false;
    for _ in 0..300 {
        if pids("sleep 3603").is_empty() && fds() <= before {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gone,
        "process killed ({:?} left) and shim fds back to {before} (now {})",
        pids("sleep 3603"),
        fds()
    );

    // 4. WebSocket v5: stdin closed by the close signal.
    let url = exec_url(
        &mut rt,
        &sleeper,
        &["sh", "-c", "cat; echo done"],
        (true, false),
    )
    .await;
    let mut ws = WsClient::connect(&url, &["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .await
        .expect("websocket");
    assert_eq!(ws.protocol, "v5.channel.k8s.io");
    ws.send(0, b"over websocket\n").await;
    ws.send(255, &[0]).await;
    ws.read_to_close().await;
    assert_eq!(
        ws.channels.get(&1).map(Vec::as_slice),
        Some(&b"over websocket\ndone\n"[..])
    );
    assert_eq!(
        status_of(ws.channels.get(&3).map(Vec::as_slice).unwrap_or_default())["status"],
        "Success"
    );

    // 5. Attach: stdin reaches the container, its answer reaches the
    // client and the log file.
    let echo = run_container(
        &mut rt,
        &pod,
        &image,
        "echo",
        &["sh", "-c", "while read l; do echo got $l; done"],
        true,
    )
    .await;
    let url = rt
        .attach(AttachRequest {
            container_id: echo.clone(),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let (mut spdy, ids) = v4_session(&url, &["error", "stdin", "stdout", "stderr"]).await;
    let [_error, stdin, stdout, _stderr] = ids[..] else {
        panic!("4 streams")
    };
    spdy.send(stdin, b"hello\n", false);
    spdy.read_until_contains(stdout, b"got hello").await;
    drop(spdy);
    let log = logs.path().join("echo.log");
    let mut logged = String::new();
    for _ in 0..100 {
        logged = std::fs::read_to_string(&log).unwrap_or_default();
        if logged.contains("got hello") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logged.contains("stdout F got hello"), "{logged:?}");

    // 6. Port-forward over SPDY and over WebSocket into the pod.
    let _server = run_container(
        &mut rt,
        &pod,
        &image,
        "server",
        &["nc", "-ll", "-p", "8080", "-e", "cat"],
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    let up = spdy_upgrade(&url, &["portforward.k8s.io"]).await;
    assert_eq!(up.status, 101, "{up:?}");
    let mut spdy = SpdyClient::new(up.stream.expect("upgraded"));
    let (_error, data) = forward_pair(&mut spdy, "8080", "0").await;
    spdy.send(data, b"through the tunnel\n", false);
    spdy.read_until_contains(data, b"through the tunnel\n")
        .await;
    // A closed port: the error stream says so.
    let (error, _data) = forward_pair(&mut spdy, "8081", "1").await;
    let said = spdy.read_until_contains(error, b"8081").await;
    assert!(String::from_utf8_lossy(&said).contains("error forwarding port 8081"));

    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    let ws = WsClient::connect(&url, &["SPDY/3.1+portforward.k8s.io"])
        .await
        .expect("websocket");
    assert_eq!(ws.protocol, "SPDY/3.1+portforward.k8s.io");
    let tunnel = berthd::streaming::websocket::byte_stream(ws.into_inner());
    let mut spdy = SpdyClient::new(tunnel);
    let (_error, data) = forward_pair(&mut spdy, "8080", "0").await;
    spdy.send(data, b"over websocket\n", false);
    spdy.read_until_contains(data, b"over websocket\n").await;

    let err = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![70000],
        })
        .await
        .expect_err("bad port");
    assert_eq!(err.code(), Code::InvalidArgument);

    support::stop_and_remove_pod(&mut rt, &pod).await;
    support::remove_test_cgroup(&format!("berth-stest-{}-stream", std::process::id()));
}
