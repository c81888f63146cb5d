//! berth-shim end to end: `start` daemonizes a shim that berthd's
//! [`shim_client`] drives over ttrpc; the shim supervises a pause process,
//! records its exit before reporting it, keeps it across client
//! disconnects, and leaves nothing behind after Delete and Shutdown or
//! `berth-shim delete`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use berth_shim::exit::ExitRecord;
use berthd::shim_client::{self, CreateTask, ShimClient, ShimClientError, TaskOptions, TaskStatus};
use containerd_shim_protos::protobuf::Message;

const NAMESPACE: &str = "berth-test";

/// The binaries of the shim crate, built once per test run (cargo only
/// builds berthd's own binaries for its integration tests).
fn shim_binaries() -> (PathBuf, PathBuf) {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let dir = Path::new(env!("CARGO_BIN_EXE_berthd"))
        .parent()
        .expect("the target dir")
        .to_owned();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "berth-shim", "--bins"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for berth-shim");
        assert!(status.success(), "cargo build -p berth-shim failed");
    });
    (dir.join("berth-shim"), dir.join("berth-pause"))
}

/// One shim's test ground. Dropping it runs `berth-shim delete`, which
/// kills whatever the test left running and releases the pins.
struct ShimDir {
    dir: tempfile::TempDir,
    state_dir: PathBuf,
    id: String,
    shim: PathBuf,
    pause: PathBuf,
}

impl ShimDir {
    fn new(id: &str) -> Self {
        let (shim, pause) = shim_binaries();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("pod")).expect("pod dir");
        Self {
            state_dir: dir.path().join("shim"),
            dir,
            id: id.to_owned(),
            shim,
            pause,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.state_dir.clone()
    }

    fn pod_dir(&self) -> PathBuf {
        self.dir.path().join("pod")
    }

    async fn start(&self) -> ShimClient {
        shim_client::start(&self.shim, NAMESPACE, &self.id, &self.state_dir())
            .await
            .expect("berth-shim start")
    }

    fn pause_task(&self) -> CreateTask {
        CreateTask {
            id: self.id.clone(),
            bundle: self.pod_dir(),
            stdout: None,
            stderr: None,
            options: TaskOptions::Pause {
                binary: Some(self.pause.clone()),
                args: vec![
                    "--state-dir".into(),
                    self.pod_dir().to_string_lossy().into_owned(),
                    "--uts".into(),
                    "--ipc".into(),
                ],
            },
        }
    }

    /// Runs `berth-shim delete` and returns its decoded DeleteResponse.
    fn delete_command(&self) -> containerd_shim_protos::api::DeleteResponse {
        let output = Command::new(&self.shim)
            .args(["-namespace", NAMESPACE, "-id", &self.id, "-state-dir"])
            .arg(self.state_dir())
            .arg("delete")
            .output()
            .expect("run berth-shim delete");
        assert!(
            output.status.success(),
            "berth-shim delete: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        containerd_shim_protos::api::DeleteResponse::parse_from_bytes(&output.stdout)
            .expect("a DeleteResponse on stdout")
    }

    fn exit_file(&self) -> Option<ExitRecord> {
        ExitRecord::read(&self.state_dir()).expect("readable exit file")
    }

    fn assert_nothing_left(&self, pids: &[u32]) {
        for pid in pids {
            wait_gone(*pid);
        }
        let socket = self.state_dir().join("shim.sock");
        assert!(!socket.exists(), "{} left behind", socket.display());
        assert!(!self.state_dir().join("address").exists());
        let ns = self.pod_dir().join("ns");
        let pins: Vec<_> = std::fs::read_dir(&ns)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(pins.is_empty(), "namespace pins left behind: {pins:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let dir = self.dir.path().to_string_lossy().into_owned();
        assert!(!mounts.contains(&dir), "mounts left under {dir}:\n{mounts}");
    }
}

impl Drop for ShimDir {
    fn drop(&mut self) {
        if self.state_dir().exists() {
            let _ = Command::new(&self.shim)
                .args(["-namespace", NAMESPACE, "-id", &self.id, "-state-dir"])
                .arg(self.state_dir())
                .arg("delete")
                .output();
        }
    }
}

/// `(state, ppid, session)` of process `pid` from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(String, u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((
        fields.first()?.to_string(),
        fields.get(1)?.parse().ok()?,
        fields.get(3)?.parse().ok()?,
    ))
}

fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _, _)| state != "Z" && state != "X")
}

/// Fails unless process `pid` is gone (or a zombie) within a few seconds.
fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails unless the exit file appears within a few seconds.
fn wait_exit_file(dir: &ShimDir) -> ExitRecord {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(exit) = dir.exit_file() {
            return exit;
        }
        assert!(Instant::now() < deadline, "no exit file");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    nix::sys::signal::kill(pid, signal).expect("kill");
}

#[tokio::test]
async fn pause_task_lifecycle() {
    if !support::root_tests("pause_task_lifecycle") {
        return;
    }
    let dir = ShimDir::new("lifecycle");
    let client = dir.start().await;
    assert_eq!(
        client.address(),
        format!("unix://{}", dir.state_dir().join("shim.sock").display())
    );
    let info = client.connect(&dir.id).await.expect("connect");
    assert_eq!(info.task_pid, 0, "no task yet");
    assert!(info.version.starts_with("berth-shim"));
    let shim = info.shim_pid;
    let (_, ppid, session) = stat(shim).expect("the shim runs");
    assert_ne!(ppid, std::process::id(), "the shim was not re-parented");
    assert_eq!(session, shim, "the shim is not in its own session");

    let pid = client.create(&dir.pause_task()).await.expect("create");
    let state = client.state(&dir.id).await.expect("state");
    assert_eq!((state.pid, state.status), (pid, TaskStatus::Created));
    assert_eq!(
        stat(pid).expect("pause runs").1,
        shim,
        "pause is the shim's child"
    );
    assert!(dir.pod_dir().join("ns/uts").exists(), "pause pinned uts");
    assert!(matches!(
        client.create(&dir.pause_task()).await,
        Err(ShimClientError::AlreadyExists(_))
    ));
    assert_eq!(client.start(&dir.id).await.expect("start"), pid);
    let state = client.state(&dir.id).await.expect("state");
    assert_eq!((state.status, state.exit), (TaskStatus::Running, None));
    assert!(client.pids(&dir.id).await.expect("pids").contains(&pid));
    assert!(matches!(
        client.state("other").await,
        Err(ShimClientError::NotFound(_))
    ));
    assert!(matches!(
        client.delete(&dir.id).await,
        Err(ShimClientError::FailedPrecondition(_))
    ));
    // Methods the shim does not implement say so, by name.
    let raw = containerd_shim_protos::shim_async::TaskClient::new(
        ttrpc::asynchronous::Client::connect(client.address())
            .await
            .expect("raw connect"),
    );
    match raw
        .stats(
            ttrpc::context::Context::default(),
            &containerd_shim_protos::api::StatsRequest::new(),
        )
        .await
    {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), ttrpc::Code::UNIMPLEMENTED);
            assert!(s.message.contains("Stats"), "{}", s.message);
        }
        other => panic!("Stats answered {other:?}"),
    }

    // Wait blocks until the exit, which is on disk before it is reported.
    let waiter = {
        let client = client.clone();
        let id = dir.id.clone();
        tokio::spawn(async move { client.wait(&id).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "Wait returned before the task exited"
    );
    let before = SystemTime::now();
    client.kill(&dir.id, 15, false).await.expect("kill");
    let exit = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("Wait returns after the kill")
        .expect("join")
        .expect("wait");
    assert_eq!(exit.exit_status, 0, "pause exits 0 on SIGTERM");
    assert!(exit.exited_at >= before && exit.exited_at <= SystemTime::now());
    let recorded = dir
        .exit_file()
        .expect("exit file written before Wait returned");
    assert_eq!(
        (recorded.pid, recorded.exit_status, recorded.exited_at),
        (i32::try_from(pid).expect("pid"), 0, exit.exited_at)
    );
    let state = client.state(&dir.id).await.expect("state");
    assert_eq!(
        (state.status, state.exit),
        (TaskStatus::Stopped, Some(exit))
    );
    assert!(matches!(
        client.kill(&dir.id, 9, false).await,
        Err(ShimClientError::NotFound(_))
    ));

    let deleted = client.delete(&dir.id).await.expect("delete");
    assert_eq!((deleted.pid, deleted.exit), (pid, exit));
    assert!(matches!(
        client.state(&dir.id).await,
        Err(ShimClientError::NotFound(_))
    ));
    client.shutdown(&dir.id).await.expect("shutdown");
    dir.assert_nothing_left(&[shim, pid]);
    assert!(dir.exit_file().is_some(), "the exit file stays for berthd");
    assert!(shim_client::connect(client.address()).await.is_err());
}

#[tokio::test]
async fn exit_while_no_client_is_connected_is_reported_to_the_next() {
    if !support::root_tests("exit_while_no_client_is_connected_is_reported_to_the_next") {
        return;
    }
    let dir = ShimDir::new("restart");
    let client = dir.start().await;
    let shim = client.connect(&dir.id).await.expect("connect").shim_pid;
    let pid = client.create(&dir.pause_task()).await.expect("create");
    client.start(&dir.id).await.expect("start");
    let address = client.address().to_owned();
    drop(client);

    // The shim outlives its client, as it outlives a berthd restart.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        alive(shim) && alive(pid),
        "shim or task died with the client"
    );
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    let recorded = wait_exit_file(&dir);
    assert_eq!((recorded.exit_status, recorded.signal), (137, Some(9)));

    // What berthd does after a restart: the address from the state dir.
    assert_eq!(
        berth_shim::server::read_address(&dir.state_dir()).as_deref(),
        Some(address.as_str())
    );
    let client = shim_client::connect(&address).await.expect("reconnect");
    let state = client.state(&dir.id).await.expect("state");
    assert_eq!(state.status, TaskStatus::Stopped);
    let exit = state.exit.expect("the exit");
    assert_eq!(
        (exit.exit_status, exit.exited_at),
        (137, recorded.exited_at)
    );
    assert_eq!(client.wait(&dir.id).await.expect("wait"), exit);
    assert_eq!(
        shim_client::read_exit_file(&dir.state_dir()).expect("exit file"),
        Some(exit)
    );
    client.delete(&dir.id).await.expect("delete");
    client.shutdown(&dir.id).await.expect("shutdown");
    dir.assert_nothing_left(&[shim, pid]);
}

#[tokio::test]
async fn delete_command_cleans_up_after_an_unreachable_shim() {
    if !support::root_tests("delete_command_cleans_up_after_an_unreachable_shim") {
        return;
    }
    let dir = ShimDir::new("delete-cmd");
    let client = dir.start().await;
    let shim = client.connect(&dir.id).await.expect("connect").shim_pid;
    let pid = client.create(&dir.pause_task()).await.expect("create");
    client.start(&dir.id).await.expect("start");
    // A second start finds the running shim.
    let again = dir.start().await;
    assert_eq!(again.address(), client.address());
    drop((client, again));

    let resp = dir.delete_command();
    assert_eq!(resp.pid, pid);
    assert_eq!(resp.exit_status, 137, "killed by delete");
    assert!(resp.exited_at.is_some());
    dir.assert_nothing_left(&[shim, pid]);
}

#[tokio::test]
async fn runc_task_lifecycle() {
    if !support::root_tests("runc_task_lifecycle") {
        return;
    }
    let runc = support::require_binary("runc");
    let dir = ShimDir::new("runc-task");
    let bundle = dir.dir.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs/bin")).expect("rootfs");
    std::fs::copy(support::image::BUSYBOX, bundle.join("rootfs/bin/busybox")).expect("busybox");
    let spec = Command::new(&runc)
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .expect("runc spec");
    assert!(spec.success(), "runc spec failed");
    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).expect("config.json"))
            .expect("config.json parses");
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!([
        "/bin/busybox",
        "sh",
        "-c",
        "echo hello from the container; exec /bin/busybox sleep 1000"
    ]);
    std::fs::write(&config_path, config.to_string()).expect("write config.json");
    let runc_root = dir.dir.path().join("runc-root");
    let output = dir.dir.path().join("output.log");

    let client = dir.start().await;
    let shim = client.connect(&dir.id).await.expect("connect").shim_pid;
    let pid = client
        .create(&CreateTask {
            id: dir.id.clone(),
            bundle: bundle.clone(),
            stdout: Some(output.clone()),
            stderr: Some(output.clone()),
            options: TaskOptions::Runc {
                binary: Some(runc.clone()),
                root: Some(runc_root.clone()),
            },
        })
        .await
        .expect("create");
    assert_eq!(
        client.state(&dir.id).await.expect("state").status,
        TaskStatus::Created
    );
    assert_eq!(
        stat(pid).expect("init runs").1,
        shim,
        "the container's init is re-parented to the shim (subreaper)"
    );
    assert_eq!(client.start(&dir.id).await.expect("start"), pid);
    assert_eq!(
        client.state(&dir.id).await.expect("state").status,
        TaskStatus::Running
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&output)
        .unwrap_or_default()
        .contains("hello from the container")
    {
        assert!(
            Instant::now() < deadline,
            "no container output in {}",
            output.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    client.kill(&dir.id, 9, false).await.expect("kill");
    let exit = client.wait(&dir.id).await.expect("wait");
    assert_eq!(exit.exit_status, 137);
    assert_eq!(
        dir.exit_file().map(|e| (e.exit_status, e.exited_at)),
        Some((137, exit.exited_at))
    );
    let deleted = client.delete(&dir.id).await.expect("delete");
    assert_eq!((deleted.pid, deleted.exit), (pid, exit));
    let list = Command::new(&runc)
        .arg("--root")
        .arg(&runc_root)
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    assert_eq!(
        String::from_utf8_lossy(&list.stdout).trim(),
        "",
        "runc still knows the container"
    );
    client.shutdown(&dir.id).await.expect("shutdown");
    dir.assert_nothing_left(&[shim, pid]);
}

#[tokio::test]
async fn a_long_state_dir_gets_a_short_socket_path() {
    if !support::root_tests("a_long_state_dir_gets_a_short_socket_path") {
        return;
    }
    let mut dir = ShimDir::new("long");
    dir.state_dir = dir.dir.path().join("d".repeat(100));
    let client = dir.start().await;
    let socket = client
        .address()
        .strip_prefix("unix://")
        .expect("a unix address")
        .to_owned();
    assert!(
        socket.starts_with(berth_shim::server::SHORT_SOCKET_DIR) && socket.len() <= 107,
        "{socket}"
    );
    let shim_pid = client.connect(&dir.id).await.expect("connect").shim_pid;
    client.shutdown(&dir.id).await.expect("shutdown");
    wait_gone(shim_pid);
    assert!(!Path::new(&socket).exists(), "{socket} left behind");
}

#[tokio::test]
async fn a_bad_command_line_fails_start_with_the_reason() {
    if !support::root_tests("a_bad_command_line_fails_start_with_the_reason") {
        return;
    }
    let (shim, _) = shim_binaries();
    let dir = tempfile::tempdir().expect("tempdir");
    match shim_client::start(&shim, NAMESPACE, "a/b", dir.path()).await {
        Err(ShimClientError::StartFailed { stderr, .. }) => {
            assert!(stderr.contains("invalid id"), "{stderr}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a shim started with id a/b"),
    }
    let missing = dir.path().join("no-such-shim");
    assert!(matches!(
        shim_client::start(&missing, NAMESPACE, "x", dir.path()).await,
        Err(ShimClientError::Spawn { .. })
    ));
}

#[tokio::test]
async fn a_failing_pause_process_fails_create_with_its_message() {
    if !support::root_tests("a_failing_pause_process_fails_create_with_its_message") {
        return;
    }
    let mut dir = ShimDir::new("pause-fails");
    let fake = dir.dir.path().join("fake-pause");
    std::fs::write(&fake, "#!/bin/sh\necho cannot pin: boom >&2\nexit 3\n").expect("fake pause");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    dir.pause = fake;
    let client = dir.start().await;
    match client.create(&dir.pause_task()).await {
        Err(ShimClientError::Internal(message)) => {
            assert!(message.contains("cannot pin: boom"), "{message}");
            assert!(message.contains("status 3"), "{message}");
        }
        other => panic!("create answered {other:?}"),
    }
    let mut bad = dir.pause_task();
    bad.options = TaskOptions::Pause {
        binary: None,
        args: vec!["--bogus".into()],
    };
    assert!(matches!(
        client.create(&bad).await,
        Err(ShimClientError::InvalidArgument(_))
    ));
    assert!(matches!(
        client.state(&dir.id).await,
        Err(ShimClientError::NotFound(_))
    ));
    let shim = client.connect(&dir.id).await.expect("connect").shim_pid;
    client.shutdown(&dir.id).await.expect("shutdown");
    dir.assert_nothing_left(&[shim]);
}
