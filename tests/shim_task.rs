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
use berthd::shim_client::attach::{AttachError, AttachReader, OutputStream};
use berthd::shim_client::{
    self, CreateTask, ExecIo, ShimClient, ShimClientError, TaskIo, TaskOptions, TaskStatus,
};
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::event::Envelope;

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
        self.start_with_events(None).await
    }

    /// Starts the shim with `events` as its events socket.
    async fn start_with_events(&self, events: Option<&str>) -> ShimClient {
        shim_client::start(&self.shim, NAMESPACE, &self.id, &self.state_dir(), events)
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

/// One event as the test's events server received it.
#[derive(Debug)]
struct Received {
    envelope: Envelope,
    /// The ttrpc namespace header of the request.
    namespace_header: Option<String>,
    /// Whether the exit file existed when the event arrived.
    exit_file_existed: bool,
}

/// What berthd's events service is to a shim: a ttrpc server with
/// containerd's `Events/Forward`, here collecting what it receives.
struct EventsServer {
    socket: PathBuf,
    server: Option<ttrpc::Server>,
    received: tokio::sync::mpsc::UnboundedReceiver<Received>,
    sender: tokio::sync::mpsc::UnboundedSender<Received>,
    exit_file: PathBuf,
}

struct Collector {
    sender: tokio::sync::mpsc::UnboundedSender<Received>,
    exit_file: PathBuf,
}

impl containerd_shim_protos::shim_sync::Events for Collector {
    fn forward(
        &self,
        ctx: &ttrpc::TtrpcContext,
        req: containerd_shim_protos::api::ForwardRequest,
    ) -> ttrpc::Result<containerd_shim_protos::protobuf::well_known_types::empty::Empty> {
        let _ = self.sender.send(Received {
            envelope: req.envelope.into_option().unwrap_or_default(),
            namespace_header: ctx
                .metadata
                .get("containerd-namespace-ttrpc")
                .and_then(|v| v.first().cloned()),
            exit_file_existed: self.exit_file.exists(),
        });
        Ok(Default::default())
    }
}

impl EventsServer {
    /// A server on a socket in `dir`'s test ground; `exit_file` is checked
    /// as each event arrives.
    fn new(dir: &ShimDir) -> Self {
        let (sender, received) = tokio::sync::mpsc::unbounded_channel();
        let mut events = Self {
            socket: dir.dir.path().join("events.sock"),
            server: None,
            received,
            sender,
            exit_file: ExitRecord::path(&dir.state_dir()),
        };
        events.listen();
        events
    }

    fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn listen(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let collector = Collector {
            sender: self.sender.clone(),
            exit_file: self.exit_file.clone(),
        };
        let mut server = ttrpc::Server::new()
            .bind(&self.address())
            .expect("bind the events socket")
            .register_service(containerd_shim_protos::shim_sync::create_events(
                std::sync::Arc::new(collector),
            ));
        server.start().expect("start the events server");
        self.server = Some(server);
    }

    /// Stops serving and closes every connection: a berthd going down.
    fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// The next event; fails after a few seconds without one.
    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.received.recv())
            .await
            .expect("an event within 10 s")
            .expect("the events channel is open")
    }

    /// Fails if an event arrives within a short while.
    async fn assert_quiet(&mut self) {
        if let Ok(Some(extra)) =
            tokio::time::timeout(Duration::from_millis(300), self.received.recv()).await
        {
            panic!("unexpected event {:?}", extra.envelope.topic);
        }
    }
}

impl Drop for EventsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Checks an event's envelope and decodes its payload.
fn event<M: Message>(received: &Received, topic: &str, type_name: &str) -> M {
    let envelope = &received.envelope;
    assert_eq!(envelope.topic, topic, "{envelope:?}");
    assert_eq!(envelope.namespace, NAMESPACE);
    assert_eq!(received.namespace_header.as_deref(), Some(NAMESPACE));
    assert!(envelope.timestamp.is_some(), "{topic} has no timestamp");
    let any = envelope.event.as_ref().expect("an event");
    assert_eq!(any.type_url, type_name);
    M::parse_from_bytes(&any.value).expect("the event decodes")
}

/// The OCI process spec (JSON) of an exec running `args` as root.
fn process_spec(args: &[&str]) -> Vec<u8> {
    process_spec_with(args, false)
}

/// The OCI process spec (JSON) of an exec running `args` as root, with a
/// terminal when `terminal`.
fn process_spec_with(args: &[&str], terminal: bool) -> Vec<u8> {
    serde_json::json!({
        "args": args,
        "cwd": "/",
        "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0},
        "terminal": terminal,
    })
    .to_string()
    .into_bytes()
}

/// A FIFO at `dir/name`, as berthd makes one for an exec's stdio.
fn fifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    path
}

/// Reads `reader` into `buf` until `buf` contains `text`; fails after a
/// few seconds.
async fn read_until(reader: &mut tokio::net::unix::pipe::Receiver, buf: &mut Vec<u8>, text: &str) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(buf).contains(text) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, reader.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {text:?} within 10 s; got {:?}",
                    String::from_utf8_lossy(buf)
                )
            })
            .expect("read the FIFO");
        assert!(
            n > 0,
            "EOF before {text:?}; got {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads `reader` to its end (the shim closed the FIFO); fails after a few
/// seconds.
async fn read_to_eof(reader: &mut tokio::net::unix::pipe::Receiver) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut rest))
        .await
        .expect("the shim closed the FIFO within 10 s")
        .expect("read the FIFO");
    rest
}

/// Reads attach frames until the bytes of `stream` contain `text`; fails
/// after a few seconds or at the end of the connection.
async fn attach_until(
    reader: &mut AttachReader,
    stream: OutputStream,
    buf: &mut Vec<u8>,
    text: &str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(buf).contains(text) {
        let frame = tokio::time::timeout_at(deadline, reader.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {text:?} within 10 s; got {:?}",
                    String::from_utf8_lossy(buf)
                )
            })
            .expect("an attach frame");
        let Some((got, bytes)) = frame else {
            panic!(
                "attach closed before {text:?}; got {:?}",
                String::from_utf8_lossy(buf)
            );
        };
        if got == stream {
            buf.extend_from_slice(&bytes);
        }
    }
}

/// Fails unless the attach connection ends within a few seconds.
async fn attach_ends(reader: &mut AttachReader) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, reader.next()).await {
            Ok(Ok(None)) => return,
            Ok(Ok(Some(_))) => {}
            Ok(Err(e)) => panic!("attach failed: {e}"),
            Err(_) => panic!("the attach connection stayed open"),
        }
    }
}

/// The number of open fds of process `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count()
}

/// User plus system CPU time of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat format");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `state` was field 3.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
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

/// An OCI bundle with a busybox rootfs, run through real runc with a
/// runtime root of the test's own.
struct Bundle {
    path: PathBuf,
    runc: PathBuf,
    root: PathBuf,
    /// The container's cgroup (relative to each hierarchy's root).
    cgroup: String,
}

impl Bundle {
    /// `runc spec`, with the process running `args` (no terminal) and
    /// `tweak` applied to config.json.
    fn new(dir: &ShimDir, args: &[&str], tweak: impl FnOnce(&mut serde_json::Value)) -> Self {
        let runc = support::require_binary("runc");
        let path = dir.dir.path().join("bundle");
        std::fs::create_dir_all(path.join("rootfs/bin")).expect("rootfs");
        std::fs::copy(support::image::BUSYBOX, path.join("rootfs/bin/busybox")).expect("busybox");
        let spec = Command::new(&runc)
            .args(["spec", "--bundle"])
            .arg(&path)
            .status()
            .expect("runc spec");
        assert!(spec.success(), "runc spec failed");
        let config_path = path.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config_path).expect("config.json"))
                .expect("config.json parses");
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = serde_json::json!(args);
        // A cgroup of the test's own, which runc removes on delete.
        let cgroup = format!("berth-shim-test-{}-{}", dir.id, std::process::id());
        config["linux"]["cgroupsPath"] = format!("/{cgroup}").into();
        tweak(&mut config);
        std::fs::write(&config_path, config.to_string()).expect("write config.json");
        Self {
            root: dir.dir.path().join("runc-root"),
            path,
            runc,
            cgroup,
        }
    }

    /// The task running this bundle, its stdout and stderr in `output`.
    fn task(&self, dir: &ShimDir, output: Option<PathBuf>) -> CreateTask {
        CreateTask {
            id: dir.id.clone(),
            bundle: self.path.clone(),
            stdout: output.clone(),
            stderr: output,
            options: TaskOptions::Runc {
                binary: Some(self.runc.clone()),
                root: Some(self.root.clone()),
            },
        }
    }

    /// The container's cgroup directories that exist.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        mounts
            .lines()
            .filter_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let point = left.split(' ').nth(4)?;
                right
                    .starts_with("cgroup")
                    .then(|| PathBuf::from(point).join(&self.cgroup))
            })
            .filter(|dir| dir.exists())
            .collect()
    }

    /// Fails unless runc has forgotten every container of this root and
    /// removed the container's cgroup.
    fn assert_runc_forgot(&self) {
        let left = self.cgroup_dirs();
        assert!(left.is_empty(), "cgroups left behind: {left:?}");
        let list = Command::new(&self.runc)
            .arg("--root")
            .arg(&self.root)
            .args(["list", "-q"])
            .output()
            .expect("runc list");
        assert_eq!(
            String::from_utf8_lossy(&list.stdout).trim(),
            "",
            "runc still knows the container"
        );
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // After a failed test: runc deletes the cgroup once the container
        // is gone (ShimDir's drop), this catches what it could not.
        for dir in self.cgroup_dirs() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Fails unless `file` contains `text` within a few seconds.
async fn wait_for_text(file: &Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(file)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in {}: {:?}",
            file.display(),
            std::fs::read_to_string(file).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The file `name` of process `pid`'s cgroup in the v1 hierarchy with
/// `controller`, or in the v2 hierarchy when `controller` is `None`.
fn cgroup_file(pid: u32, controller: Option<&str>, name: &str) -> Option<PathBuf> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let wanted = match controller {
            Some(c) => controllers.split(',').any(|x| x == c),
            None => controllers.is_empty(),
        };
        wanted.then(|| path.trim_start_matches('/').to_owned())
    })?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let point = mounts.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let options = right.nth(1)?;
        let wanted = match controller {
            Some(c) => fstype == "cgroup" && options.split(',').any(|o| o == c),
            None => fstype == "cgroup2",
        };
        wanted.then(|| PathBuf::from(point))
    })?;
    let file = point.join(path).join(name);
    file.exists().then_some(file)
}

#[tokio::test]
async fn runc_task_lifecycle() {
    if !support::root_tests("runc_task_lifecycle") {
        return;
    }
    let dir = ShimDir::new("runc-task");
    let bundle = Bundle::new(
        &dir,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo hello from the container; exec /bin/busybox sleep 1000",
        ],
        |_| {},
    );
    let output = dir.dir.path().join("output.log");

    let client = dir.start().await;
    let shim = client.connect(&dir.id).await.expect("connect").shim_pid;
    let pid = client
        .create(&bundle.task(&dir, Some(output.clone())))
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
    wait_for_text(&output, "hello from the container").await;

    client.kill(&dir.id, 9, false).await.expect("kill");
    let exit = client.wait(&dir.id).await.expect("wait");
    assert_eq!(exit.exit_status, 137);
    assert_eq!(
        dir.exit_file()
            .map(|e| (e.exit_status, e.exited_at, e.oom_killed)),
        Some((137, exit.exited_at, false))
    );
    let deleted = client.delete(&dir.id).await.expect("delete");
    assert_eq!((deleted.pid, deleted.exit), (pid, exit));
    bundle.assert_runc_forgot();
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
    match shim_client::start(&shim, NAMESPACE, "a/b", dir.path(), None).await {
        Err(ShimClientError::StartFailed { stderr, .. }) => {
            assert!(stderr.contains("invalid id"), "{stderr}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a shim started with id a/b"),
    }
    let missing = dir.path().join("no-such-shim");
    assert!(matches!(
        shim_client::start(&missing, NAMESPACE, "x", dir.path(), None).await,
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

#[tokio::test]
async fn events_are_published_in_order_and_survive_a_daemon_restart() {
    if !support::root_tests("events_are_published_in_order_and_survive_a_daemon_restart") {
        return;
    }
    let dir = ShimDir::new("events");
    let bundle = Bundle::new(&dir, &["/bin/busybox", "sleep", "1000"], |_| {});
    let mut events = EventsServer::new(&dir);
    let client = dir.start_with_events(Some(&events.address())).await;
    let shim = client.connect(&dir.id).await.expect("connect").shim_pid;
    let pid = client
        .create(&bundle.task(&dir, None))
        .await
        .expect("create");
    let create: ev::TaskCreate = event(
        &events.next().await,
        "/tasks/create",
        "containerd.events.TaskCreate",
    );
    assert_eq!(
        (create.container_id.as_str(), create.pid),
        (dir.id.as_str(), pid)
    );
    assert_eq!(create.bundle, bundle.path.to_string_lossy());
    client.start(&dir.id).await.expect("start");
    let start: ev::TaskStart = event(
        &events.next().await,
        "/tasks/start",
        "containerd.events.TaskStart",
    );
    assert_eq!(
        (start.container_id.as_str(), start.pid),
        (dir.id.as_str(), pid)
    );

    let output = dir.dir.path().join("exec.out");
    client
        .exec(
            &dir.id,
            "ex1",
            process_spec(&["/bin/busybox", "true"]),
            &output,
            &output,
        )
        .await
        .expect("exec");
    let added: ev::TaskExecAdded = event(
        &events.next().await,
        "/tasks/exec-added",
        "containerd.events.TaskExecAdded",
    );
    assert_eq!(
        (added.container_id.as_str(), added.exec_id.as_str()),
        (dir.id.as_str(), "ex1")
    );
    let exec_pid = client.start_exec(&dir.id, "ex1").await.expect("start exec");
    let started: ev::TaskExecStarted = event(
        &events.next().await,
        "/tasks/exec-started",
        "containerd.events.TaskExecStarted",
    );
    assert_eq!((started.exec_id.as_str(), started.pid), ("ex1", exec_pid));
    let exec_exit = client.wait_exec(&dir.id, "ex1").await.expect("wait exec");
    let exited: ev::TaskExit = event(
        &events.next().await,
        "/tasks/exit",
        "containerd.events.TaskExit",
    );
    assert_eq!(
        (
            exited.container_id.as_str(),
            exited.id.as_str(),
            exited.pid,
            exited.exit_status
        ),
        (dir.id.as_str(), "ex1", exec_pid, exec_exit.exit_status)
    );
    client
        .delete_exec(&dir.id, "ex1")
        .await
        .expect("delete exec");
    events.assert_quiet().await;

    // berthd restarts: the shim publishes the next events on a new
    // connection.
    events.stop();
    events.listen();
    client.kill(&dir.id, 9, false).await.expect("kill");
    let exit = client.wait(&dir.id).await.expect("wait");
    let received = events.next().await;
    assert!(
        received.exit_file_existed,
        "TaskExit was published before the exit file was written"
    );
    let exited: ev::TaskExit = event(&received, "/tasks/exit", "containerd.events.TaskExit");
    assert_eq!(
        (
            exited.container_id.as_str(),
            exited.id.as_str(),
            exited.pid,
            exited.exit_status
        ),
        (dir.id.as_str(), dir.id.as_str(), pid, 137)
    );
    let at = exited.exited_at.as_ref().expect("exited_at");
    assert_eq!(
        SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(at.seconds).expect("seconds"),
                u32::try_from(at.nanos).expect("nanos")
            ),
        exit.exited_at
    );
    client.delete(&dir.id).await.expect("delete");
    let deleted: ev::TaskDelete = event(
        &events.next().await,
        "/tasks/delete",
        "containerd.events.TaskDelete",
    );
    assert_eq!(
        (
            deleted.container_id.as_str(),
            deleted.pid,
            deleted.exit_status
        ),
        (dir.id.as_str(), pid, 137)
    );
    events.assert_quiet().await;
    client.shutdown(&dir.id).await.expect("shutdown");
    dir.assert_nothing_left(&[shim, pid]);
}

#[tokio::test]
async fn a_shim_without_an_events_socket_runs_its_task_all_the_same() {
    if !support::root_tests("a_shim_without_an_events_socket_runs_its_task_all_the_same") {
        return;
    }
    // The events socket names nothing: every event is dropped, nothing
    // waits for it.
    let dir = ShimDir::new("no-events");
    let bundle = Bundle::new(&dir, &["/bin/busybox", "true"], |_| {});
    let nowhere = dir.dir.path().join("nobody.sock");
    let client = dir
        .start_with_events(Some(&nowhere.to_string_lossy()))
        .await;
    let shim = client.connect(&dir.id).await.expect("connect").shim_pid;
    let started = Instant::now();
    let pid = client
        .create(&bundle.task(&dir, None))
        .await
        .expect("create");
    client.start(&dir.id).await.expect("start");
    let exit = client.wait(&dir.id).await.expect("wait");
    assert_eq!(exit.exit_status, 0);
    client.delete(&dir.id).await.expect("delete");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the task waited for undeliverable events"
    );
    client.shutdown(&dir.id).await.expect("shutdown");
    dir.assert_nothing_left(&[shim, pid]);
}

#[tokio::test]
async fn an_oom_kill_is_recorded_in_the_exit_file_and_published() {
    if !support::root_tests("an_oom_kill_is_recorded_in_the_exit_file_and_published") {
        return;
    }
    let dir = ShimDir::new("oom");
    const LIMIT: u64 = 16 << 20;
    // dd's 64 MiB block buffer, filled from /dev/zero, is past the limit.
    let bundle = Bundle::new(
        &dir,
        &[
            "/bin/busybox",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=64M",
            "count=1",
        ],
        |config| {
            config["linux"]["resources"]["memory"] =
                serde_json::json!({"limit": LIMIT, "swap": LIMIT});
        },
    );
    let mut events = EventsServer::new(&dir);
    let client = dir.start_with_events(Some(&events.address())).await;
    let shim = client.connect(&dir.id).await.expect("connect").shim_pid;
    let pid = client
        .create(&bundle.task(&dir, None))
        .await
        .expect("create");
    client.start(&dir.id).await.expect("start");
    let exit = client
        .wait_recorded(&dir.id, &dir.state_dir())
        .await
        .expect("wait");
    assert_eq!(exit.exit_status, 137, "dd was not killed: {exit:?}");
    assert!(exit.oom_killed, "the OOM kill was not recorded: {exit:?}");
    assert!(dir.exit_file().is_some_and(|e| e.oom_killed));
    let topics: Vec<String> = [
        events.next().await,
        events.next().await,
        events.next().await,
    ]
    .into_iter()
    .map(|r| r.envelope.topic)
    .collect();
    assert_eq!(topics, ["/tasks/create", "/tasks/start", "/tasks/oom"]);
    let exited = events.next().await;
    let _: ev::TaskExit = event(&exited, "/tasks/exit", "containerd.events.TaskExit");
    client.delete(&dir.id).await.expect("delete");
    bundle.assert_runc_forgot();
    client.shutdown(&dir.id).await.expect("shutdown");
    dir.assert_nothing_left(&[shim, pid]);

    // A plain SIGKILL is no OOM kill.
    let dir = ShimDir::new("not-oom");
    let bundle = Bundle::new(&dir, &["/bin/busybox", "sleep", "1000"], |config| {
        config["linux"]["resources"]["memory"] = serde_json::json!({"limit": LIMIT});
    });
    let client = dir.start().await;
    let shim = client.connect(&dir.id).await.expect("connect").shim_pid;
    let pid = client
        .create(&bundle.task(&dir, None))
        .await
        .expect("create");
    client.start(&dir.id).await.expect("start");
    client.kill(&dir.id, 9, false).await.expect("kill");
    let exit = client
        .wait_recorded(&dir.id, &dir.state_dir())
        .await
        .expect("wait");
    assert_eq!((exit.exit_status, exit.oom_killed), (137, false));
    client.delete(&dir.id).await.expect("delete");
    bundle.assert_runc_forgot();
    client.shutdown(&dir.id).await.expect("shutdown");
    dir.assert_nothing_left(&[shim, pid]);
}

#[tokio::test]
async fn update_changes_a_running_containers_cgroup() {
    if !support::root_tests("update_changes_a_running_containers_cgroup") {
        return;
    }
    let dir = ShimDir::new("update");
    let bundle = Bundle::new(&dir, &["/bin/busybox", "sleep", "1000"], |config| {
        config["linux"]["resources"]["memory"] = serde_json::json!({"limit": 128u64 << 20});
        config["linux"]["resources"]["cpu"] = serde_json::json!({"shares": 1024});
    });
    let client = dir.start().await;
    let shim = client.connect(&dir.id).await.expect("connect").shim_pid;
    let pid = client
        .create(&bundle.task(&dir, None))
        .await
        .expect("create");
    client.start(&dir.id).await.expect("start");

    let limit: u64 = 64 << 20;
    let resources = serde_json::json!({"memory": {"limit": limit}, "cpu": {"shares": 512}});
    client
        .update(&dir.id, resources.to_string().into_bytes())
        .await
        .expect("update");
    let read = |file: PathBuf| {
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .to_owned()
    };
    if let Some(memory) = cgroup_file(pid, Some("memory"), "memory.limit_in_bytes") {
        assert_eq!(read(memory), limit.to_string());
        let shares = cgroup_file(pid, Some("cpu"), "cpu.shares").expect("a v1 cpu cgroup");
        assert_eq!(read(shares), "512");
    } else {
        let memory = cgroup_file(pid, None, "memory.max").expect("a v2 memory cgroup");
        assert_eq!(read(memory), limit.to_string());
        // runc's conversion of 512 shares to a cgroup v2 weight.
        let weight = cgroup_file(pid, None, "cpu.weight").expect("a v2 cpu cgroup");
        assert_eq!(read(weight), (1 + (512 - 2) * 9999 / 262_142).to_string());
    }

    for bad in [
        &b""[..],
        b"not json",
        b"{\"memory\": {\"limit\": \"lots\"}}",
    ] {
        match client.update(&dir.id, bad.to_vec()).await {
            Err(ShimClientError::InvalidArgument(_)) => {}
            other => panic!(
                "update with {:?} answered {other:?}",
                String::from_utf8_lossy(bad)
            ),
        }
    }
    assert!(matches!(
        client
            .update("other", resources.to_string().into_bytes())
            .await,
        Err(ShimClientError::NotFound(_))
    ));
    client.kill(&dir.id, 9, false).await.expect("kill");
    client.wait(&dir.id).await.expect("wait");
    assert!(matches!(
        client
            .update(&dir.id, resources.to_string().into_bytes())
            .await,
        Err(ShimClientError::FailedPrecondition(_))
    ));
    client.delete(&dir.id).await.expect("delete");
    bundle.assert_runc_forgot();
    client.shutdown(&dir.id).await.expect("shutdown");
    dir.assert_nothing_left(&[shim, pid]);
}

/// Environment variable naming a shim binary whose resident memory
/// [`idle_shim_resident_memory_stays_under_2_mib`] measures (a static
/// `release-small` build, as `scripts/install-and-run` makes).
const RSS_BINARY_ENV: &str = "BERTH_SHIM_RSS_BINARY";

#[tokio::test]
async fn idle_shim_resident_memory_stays_under_2_mib() {
    if !support::root_tests("idle_shim_resident_memory_stays_under_2_mib") {
        return;
    }
    let Some(binary) = std::env::var_os(RSS_BINARY_ENV) else {
        eprintln!(
            "\n!!! SKIPPED idle_shim_resident_memory_stays_under_2_mib: set {RSS_BINARY_ENV} \
             to a static release-small berth-shim to measure it !!!\n"
        );
        return;
    };
    let mut dir = ShimDir::new("rss");
    dir.shim = PathBuf::from(binary);
    let bundle = Bundle::new(
        &dir,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo ready; exec /bin/busybox sleep 1000",
        ],
        |_| {},
    );
    // The publisher's thread runs when the shim has an events socket.
    let events = EventsServer::new(&dir);
    let log = dir.dir.path().join("c.log");
    let client = dir.start_with_events(Some(&events.address())).await;
    let shim = client.connect(&dir.id).await.expect("connect").shim_pid;
    let pid = client
        .create(&bundle.task(&dir, Some(log.clone())))
        .await
        .expect("create");
    client.start(&dir.id).await.expect("start");
    wait_for_text(&log, "ready").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = std::fs::read_to_string(format!("/proc/{shim}/status")).expect("shim status");
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{shim}/task"))
        .expect("shim threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    let parts: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("RssAnon:") || l.starts_with("RssFile:"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or_default())
        .collect();
    eprintln!(
        "berth-shim resident memory with a running container: {rss_kib} KiB \
         (anon, file: {parts:?} KiB), {threads} threads: {names:?}"
    );
    assert!(rss_kib < 2048, "berth-shim uses {rss_kib} KiB");
    client.kill(&dir.id, 9, false).await.expect("kill");
    client.wait(&dir.id).await.expect("wait");
    client.delete(&dir.id).await.expect("delete");
    bundle.assert_runc_forgot();
    client.shutdown(&dir.id).await.expect("shutdown");
    dir.assert_nothing_left(&[shim, pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_init_is_logged_attached_resized_and_its_stdin_closed() {
    if !support::root_tests("a_terminal_init_is_logged_attached_resized_and_its_stdin_closed") {
        return;
    }
    let dir = ShimDir::new("tty-init");
    let bundle = Bundle::new(
        &dir,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox tty; while read line; do echo \"got $line\"; /bin/busybox stty size; done; echo bye",
        ],
        |config| config["process"]["terminal"] = true.into(),
    );
    let log = dir.dir.path().join("c.log");
    let client = dir.start().await;
    let shim = client.connect(&dir.id).await.expect("connect").shim_pid;
    let io = TaskIo {
        stdin: true,
        terminal: true,
    };
    let pid = client
        .create_with_io(&bundle.task(&dir, Some(log.clone())), io)
        .await
        .expect("create");
    client.start(&dir.id).await.expect("start");
    // The terminal's output is the CRI log's stdout.
    wait_for_text(&log, " stdout F /dev/pts/").await;

    let (mut reader, mut writer) = shim_client::attach::connect(&dir.state_dir())
        .await
        .expect("attach")
        .split();
    client
        .resize_pty(&dir.id, "", 100, 40)
        .await
        .expect("resize");
    writer.send_stdin(b"hello\n").await.expect("stdin");
    let mut seen = Vec::new();
    attach_until(&mut reader, OutputStream::Stdout, &mut seen, "40 100").await;
    assert!(
        String::from_utf8_lossy(&seen).contains("got hello"),
        "{seen:?}"
    );
    assert!(matches!(
        client.resize_pty(&dir.id, "", 70_000, 1).await,
        Err(ShimClientError::InvalidArgument(_))
    ));

    // stdin_once: CloseIO ends the input (end-of-file on the terminal).
    client.close_io(&dir.id, "").await.expect("close io");
    attach_until(&mut reader, OutputStream::Stdout, &mut seen, "bye").await;
    let exit = client.wait(&dir.id).await.expect("wait");
    assert_eq!(exit.exit_status, 0);
    attach_ends(&mut reader).await;
    wait_for_text(&log, " stdout F got hello").await;
    assert!(matches!(
        shim_client::attach::connect(&dir.state_dir()).await.err(),
        Some(AttachError::NotRunning(_))
    ));
    client.delete(&dir.id).await.expect("delete");
    bundle.assert_runc_forgot();
    client.shutdown(&dir.id).await.expect("shutdown");
    dir.assert_nothing_left(&[shim, pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_copies_output_to_every_client_and_feeds_a_piped_stdin() {
    if !support::root_tests("attach_copies_output_to_every_client_and_feeds_a_piped_stdin") {
        return;
    }
    let mut dir = ShimDir::new("attach");
    // A long state dir: the attach socket goes to the short-path dir.
    dir.state_dir = dir.dir.path().join("s".repeat(100));
    let bundle = Bundle::new(
        &dir,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo ready; /bin/busybox cat; echo done >&2",
        ],
        |_| {},
    );
    let log = dir.dir.path().join("c.log");
    let client = dir.start().await;
    let shim = client.connect(&dir.id).await.expect("connect").shim_pid;
    let pid = client
        .create_with_io(
            &bundle.task(&dir, Some(log.clone())),
            TaskIo {
                stdin: true,
                terminal: false,
            },
        )
        .await
        .expect("create");
    let address = berth_shim::server::read_attach_address(&dir.state_dir()).expect("address");
    assert!(
        address.starts_with(&format!("unix://{}", berth_shim::server::SHORT_SOCKET_DIR)),
        "{address}"
    );
    client.start(&dir.id).await.expect("start");
    wait_for_text(&log, " stdout F ready").await;

    let (mut first, mut input) = shim_client::attach::connect(&dir.state_dir())
        .await
        .expect("attach")
        .split();
    let (mut second, mut second_input) = shim_client::attach::connect(&dir.state_dir())
        .await
        .expect("attach")
        .split();
    // The second client is done with stdin; the container's stays open.
    second_input
        .close_stdin()
        .await
        .expect("close this client's stdin");
    input.send_stdin(b"one\n").await.expect("stdin");
    for reader in [&mut first, &mut second] {
        let (stream, bytes) = tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .expect("a frame within 10 s")
            .expect("a frame")
            .expect("not closed");
        // Output from before the client attached ("ready") is not replayed.
        assert_eq!(
            (stream, bytes.as_slice()),
            (OutputStream::Stdout, &b"one\n"[..])
        );
    }
    input.send_stdin(b"two\n").await.expect("stdin");
    let mut seen = Vec::new();
    attach_until(&mut first, OutputStream::Stdout, &mut seen, "two").await;

    client.close_io(&dir.id, "").await.expect("close io");
    let mut err = Vec::new();
    attach_until(&mut first, OutputStream::Stderr, &mut err, "done").await;
    assert_eq!(client.wait(&dir.id).await.expect("wait").exit_status, 0);
    attach_ends(&mut first).await;
    attach_ends(&mut second).await;
    wait_for_text(&log, " stdout F two").await;
    wait_for_text(&log, " stderr F done").await;
    let socket = address.strip_prefix("unix://").expect("unix address");
    assert!(!Path::new(socket).exists(), "{socket} left behind");
    client.delete(&dir.id).await.expect("delete");
    bundle.assert_runc_forgot();
    client.shutdown(&dir.id).await.expect("shutdown");
    dir.assert_nothing_left(&[shim, pid]);
}

/// A running busybox container with a shim, for exec tests.
async fn running_container(dir: &ShimDir) -> (Bundle, ShimClient, u32, u32) {
    let bundle = Bundle::new(dir, &["/bin/busybox", "sleep", "1000"], |_| {});
    let client = dir.start().await;
    let shim = client.connect(&dir.id).await.expect("connect").shim_pid;
    let pid = client
        .create(&bundle.task(dir, None))
        .await
        .expect("create");
    client.start(&dir.id).await.expect("start");
    (bundle, client, shim, pid)
}

/// Kills and deletes the container, shuts its shim down, checks that
/// nothing is left.
async fn end_container(dir: &ShimDir, bundle: &Bundle, client: &ShimClient, shim: u32, pid: u32) {
    client.kill(&dir.id, 9, false).await.expect("kill");
    client.wait(&dir.id).await.expect("wait");
    client.delete(&dir.id).await.expect("delete");
    bundle.assert_runc_forgot();
    client.shutdown(&dir.id).await.expect("shutdown");
    dir.assert_nothing_left(&[shim, pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stdin_and_stdout_round_trip_through_fifos() {
    if !support::root_tests("exec_stdin_and_stdout_round_trip_through_fifos") {
        return;
    }
    use tokio::io::AsyncWriteExt;
    let dir = ShimDir::new("exec-stdin");
    let (bundle, client, shim, pid) = running_container(&dir).await;
    let io = ExecIo {
        stdin: Some(fifo(dir.dir.path(), "in")),
        stdout: Some(fifo(dir.dir.path(), "out")),
        stderr: Some(fifo(dir.dir.path(), "err")),
        terminal: false,
    };
    // berthd holds the read ends before Start.
    let open = |path: &Option<PathBuf>| {
        tokio::net::unix::pipe::OpenOptions::new()
            .open_receiver(path.as_ref().expect("a path"))
            .expect("open the FIFO")
    };
    let (mut stdout, mut stderr) = (open(&io.stdout), open(&io.stderr));
    client
        .exec_with_io(
            &dir.id,
            "cat",
            process_spec(&["/bin/busybox", "sh", "-c", "/bin/busybox cat; echo eof >&2"]),
            &io,
        )
        .await
        .expect("exec");
    client.start_exec(&dir.id, "cat").await.expect("start exec");
    let mut stdin = tokio::net::unix::pipe::OpenOptions::new()
        .open_sender(io.stdin.as_ref().expect("stdin"))
        .expect("open stdin");
    stdin.write_all(b"round trip\n").await.expect("write");
    let mut out = Vec::new();
    read_until(&mut stdout, &mut out, "round trip\n").await;
    // berthd closes its end: the process's stdin ends.
    drop(stdin);
    let exit = client.wait_exec(&dir.id, "cat").await.expect("wait exec");
    assert_eq!(exit.exit_status, 0);
    assert!(read_to_eof(&mut stdout).await.is_empty());
    assert_eq!(read_to_eof(&mut stderr).await, b"eof\n");
    client
        .delete_exec(&dir.id, "cat")
        .await
        .expect("delete exec");
    end_container(&dir, &bundle, &client, shim, pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_terminal_reports_its_tty_and_size() {
    if !support::root_tests("exec_with_a_terminal_reports_its_tty_and_size") {
        return;
    }
    use tokio::io::AsyncWriteExt;
    let dir = ShimDir::new("exec-tty");
    let (bundle, client, shim, pid) = running_container(&dir).await;
    let io = ExecIo {
        stdin: Some(fifo(dir.dir.path(), "in")),
        stdout: Some(fifo(dir.dir.path(), "out")),
        stderr: None,
        terminal: true,
    };
    let mut stdout = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(io.stdout.as_ref().expect("stdout"))
        .expect("open stdout");
    let script = "/bin/busybox tty; read go; /bin/busybox stty size";
    client
        .exec_with_io(
            &dir.id,
            "tty",
            process_spec_with(&["/bin/busybox", "sh", "-c", script], true),
            &io,
        )
        .await
        .expect("exec");
    client.start_exec(&dir.id, "tty").await.expect("start exec");
    let mut stdin = tokio::net::unix::pipe::OpenOptions::new()
        .open_sender(io.stdin.as_ref().expect("stdin"))
        .expect("open stdin");
    let mut out = Vec::new();
    read_until(&mut stdout, &mut out, "/dev/pts/").await;
    client
        .resize_pty(&dir.id, "tty", 123, 45)
        .await
        .expect("resize");
    stdin.write_all(b"go\n").await.expect("write");
    read_until(&mut stdout, &mut out, "45 123").await;
    let exit = client.wait_exec(&dir.id, "tty").await.expect("wait exec");
    assert_eq!(exit.exit_status, 0);
    read_to_eof(&mut stdout).await;
    assert!(matches!(
        client.resize_pty(&dir.id, "tty", 80, 24).await,
        Err(ShimClientError::FailedPrecondition(_))
    ));
    assert!(matches!(
        client.resize_pty(&dir.id, "", 80, 24).await,
        Err(ShimClientError::FailedPrecondition(_))
    ));
    drop(stdin);
    client
        .delete_exec(&dir.id, "tty")
        .await
        .expect("delete exec");
    end_container(&dir, &bundle, &client, shim, pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_whose_background_child_holds_its_output_still_returns() {
    if !support::root_tests("an_exec_whose_background_child_holds_its_output_still_returns") {
        return;
    }
    let dir = ShimDir::new("exec-bg");
    let (bundle, client, shim, pid) = running_container(&dir).await;
    let script = "echo started; /bin/busybox sleep 1000 & echo leaving";
    // Output FIFOs (Exec), then plain files (ExecSync).
    let out_fifo = fifo(dir.dir.path(), "out");
    let mut stdout = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(&out_fifo)
        .expect("open stdout");
    let fifo_io = ExecIo {
        stdout: Some(out_fifo),
        ..ExecIo::default()
    };
    client
        .exec_with_io(
            &dir.id,
            "bg",
            process_spec(&["/bin/busybox", "sh", "-c", script]),
            &fifo_io,
        )
        .await
        .expect("exec");
    let started = Instant::now();
    client.start_exec(&dir.id, "bg").await.expect("start exec");
    let exit = tokio::time::timeout(Duration::from_secs(10), client.wait_exec(&dir.id, "bg"))
        .await
        .expect("Wait returned although a background child holds stdout")
        .expect("wait exec");
    assert_eq!(exit.exit_status, 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Everything written before the exit arrived, then EOF.
    assert_eq!(read_to_eof(&mut stdout).await, b"started\nleaving\n");
    client
        .delete_exec(&dir.id, "bg")
        .await
        .expect("delete exec");

    let file = dir.dir.path().join("exec-sync.out");
    client
        .exec(
            &dir.id,
            "bg-file",
            process_spec(&["/bin/busybox", "sh", "-c", script]),
            &file,
            &file,
        )
        .await
        .expect("exec");
    client
        .start_exec(&dir.id, "bg-file")
        .await
        .expect("start exec");
    let exit = tokio::time::timeout(
        Duration::from_secs(10),
        client.wait_exec(&dir.id, "bg-file"),
    )
    .await
    .expect("Wait returned")
    .expect("wait exec");
    assert_eq!(exit.exit_status, 0);
    assert_eq!(
        std::fs::read_to_string(&file).expect("output file"),
        "started\nleaving\n"
    );
    client
        .delete_exec(&dir.id, "bg-file")
        .await
        .expect("delete exec");
    end_container(&dir, &bundle, &client, shim, pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_execs_and_clients_that_go_away_leave_no_fds_and_no_spinning() {
    if !support::root_tests("many_execs_and_clients_that_go_away_leave_no_fds_and_no_spinning") {
        return;
    }
    use tokio::io::AsyncWriteExt;
    let dir = ShimDir::new("exec-fds");
    let (bundle, client, shim, pid) = running_container(&dir).await;
    let fifos = dir.dir.path().join("fifos");
    std::fs::create_dir(&fifos).expect("fifo dir");

    let run = |n: usize, terminal: bool| {
        let client = client.clone();
        let id = dir.id.clone();
        let fifos = fifos.clone();
        async move {
            let exec_id = format!("e{n}");
            let io = ExecIo {
                stdin: Some(fifo(&fifos, &format!("{n}.in"))),
                stdout: Some(fifo(&fifos, &format!("{n}.out"))),
                stderr: (!terminal).then(|| fifo(&fifos, &format!("{n}.err"))),
                terminal,
            };
            let mut stdout = tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(io.stdout.as_ref().expect("stdout"))
                .expect("open stdout");
            let _stderr = io.stderr.as_ref().map(|p| {
                tokio::net::unix::pipe::OpenOptions::new()
                    .open_receiver(p)
                    .expect("open stderr")
            });
            let spec = process_spec_with(&["/bin/busybox", "head", "-n", "1"], terminal);
            client
                .exec_with_io(&id, &exec_id, spec, &io)
                .await
                .expect("exec");
            client.start_exec(&id, &exec_id).await.expect("start exec");
            let mut stdin = tokio::net::unix::pipe::OpenOptions::new()
                .open_sender(io.stdin.as_ref().expect("stdin"))
                .expect("open stdin");
            stdin.write_all(b"line\n").await.expect("write");
            let mut out = Vec::new();
            read_until(&mut stdout, &mut out, "line").await;
            let exit = client.wait_exec(&id, &exec_id).await.expect("wait exec");
            assert_eq!(exit.exit_status, 0);
            read_to_eof(&mut stdout).await;
            client
                .delete_exec(&id, &exec_id)
                .await
                .expect("delete exec");
            for path in [io.stdin, io.stdout, io.stderr].into_iter().flatten() {
                let _ = std::fs::remove_file(path);
            }
        }
    };
    run(0, false).await;
    run(1, true).await;
    let baseline = fd_count(shim);
    for n in 2..22 {
        run(n, n % 2 == 0).await;
    }
    assert_eq!(fd_count(shim), baseline, "the shim leaks fds");

    // A client that goes away: berthd closes every end while the process
    // still runs. The shim neither spins nor keeps the FIFOs.
    let io = ExecIo {
        stdin: Some(fifo(&fifos, "gone.in")),
        stdout: Some(fifo(&fifos, "gone.out")),
        stderr: None,
        terminal: false,
    };
    let stdout = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(io.stdout.as_ref().expect("stdout"))
        .expect("open stdout");
    client
        .exec_with_io(
            &dir.id,
            "gone",
            process_spec(&[
                "/bin/busybox",
                "sh",
                "-c",
                "/bin/busybox sleep 2; echo late; /bin/busybox cat",
            ]),
            &io,
        )
        .await
        .expect("exec");
    client
        .start_exec(&dir.id, "gone")
        .await
        .expect("start exec");
    let stdin = tokio::net::unix::pipe::OpenOptions::new()
        .open_sender(io.stdin.as_ref().expect("stdin"))
        .expect("open stdin");
    drop((stdout, stdin));
    let before = cpu_ticks(shim);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_ticks(shim) - before;
    assert!(
        spent < 10,
        "the shim spent {spent} ticks in 1 s with an idle exec"
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), client.wait_exec(&dir.id, "gone"))
        .await
        .expect("the exec ends once its client is gone")
        .expect("wait exec");
    assert_ne!(exit.exit_status, 0, "echo to a closed stdout succeeded");
    client
        .delete_exec(&dir.id, "gone")
        .await
        .expect("delete exec");
    assert_eq!(fd_count(shim), baseline, "the gone client's fds stay open");
    end_container(&dir, &bundle, &client, shim, pid).await;
}
