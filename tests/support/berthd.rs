//! A real berthd: the binary cargo built, started on a private root, state
//! directory, socket and CNI directory, reached through tonic CRI clients.
//!
//! The daemon's log goes to a file in its directory ([`Berthd::log`]), so a
//! failing test can show what berthd said. Dropping the fixture kills the
//! process it started (by pid) and removes its directories.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use berth_cri_proto::v1::image_service_client::ImageServiceClient;
use berth_cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::Channel;

/// How long berthd may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A berthd process and its private directories.
pub struct Berthd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Extra TOML appended to the generated configuration.
    extra_config: String,
    /// The pod network of [`Berthd::start_with_network`].
    network: Option<TestNetwork>,
}

/// A CNI network of the fixture's own: a bridge and a /24 no other test
/// uses, IP allocations in the fixture's directory.
#[derive(Debug, Clone)]
pub struct TestNetwork {
    /// Bridge name.
    pub bridge: String,
    /// Subnet prefix, e.g. `10.231.7` for `10.231.7.0/24`.
    pub prefix: String,
}

/// Counts networks made by this test process, so parallel tests differ.
static NETWORKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Where Debian installs the CNI plugins.
const CNI_PLUGINS: &str = "/usr/lib/cni";

impl Berthd {
    /// Starts berthd with the fixture's configuration.
    pub async fn start() -> Berthd {
        Berthd::start_with("").await
    }

    /// Starts berthd with `extra_config` (TOML) appended to the fixture's
    /// configuration; top-level keys must come first in it.
    pub async fn start_with(extra_config: &str) -> Berthd {
        Berthd::start_inner(extra_config, None).await
    }

    /// Starts berthd with a working pod network (real CNI plugins: bridge,
    /// host-local, portmap) on a bridge and subnet of its own, and with the
    /// pause binary built. Needs root.
    pub async fn start_with_network(extra_config: &str) -> Berthd {
        ensure_pause_binary();
        let n = NETWORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let network = TestNetwork {
            bridge: format!("bt{}x{n}", pid % 100_000),
            prefix: format!("10.{}.{}", 200 + (n % 50), pid % 250),
        };
        Berthd::start_inner(extra_config, Some(network)).await
    }

    async fn start_inner(extra_config: &str, network: Option<TestNetwork>) -> Berthd {
        let dir = tempfile::Builder::new()
            .prefix("berthd-test-")
            .tempdir()
            .expect("temp dir for berthd");
        std::fs::create_dir_all(dir.path().join("net.d")).expect("cni conf dir");
        let mut berthd = Berthd {
            child: None,
            dir,
            extra_config: extra_config.to_string(),
            network,
        };
        if let Some(net) = &berthd.network {
            let conflist = serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "berth-test",
                "plugins": [
                    {
                        "type": "bridge", "bridge": net.bridge, "isGateway": true,
                        "ipMasq": false, "hairpinMode": true,
                        "ipam": {
                            "type": "host-local",
                            "dataDir": berthd.dir().join("ipam"),
                            "ranges": [[{"subnet": format!("{}.0/24", net.prefix)}]],
                            "routes": [{"dst": "0.0.0.0/0"}]
                        }
                    },
                    {"type": "portmap", "capabilities": {"portMappings": true}}
                ]
            });
            std::fs::write(
                berthd.cni_conf_dir().join("10-test.conflist"),
                conflist.to_string(),
            )
            .expect("write conflist");
        }
        std::fs::write(berthd.config_path(), berthd.config_text()).expect("write config");
        berthd.launch().await;
        berthd
    }

    /// The pod network, when started with one.
    pub fn network(&self) -> Option<&TestNetwork> {
        self.network.as_ref()
    }

    /// IP allocations of the pod network that are still held.
    pub fn allocated_ips(&self) -> Vec<String> {
        std::fs::read_dir(self.dir().join("ipam/berth-test"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The fixture's private directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CRI socket.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("run/berth.sock")
    }

    /// The configuration file berthd runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("config.toml")
    }

    /// The CNI configuration directory (empty at start).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir().join("net.d")
    }

    /// The CNI plugin directory (empty at start).
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir().join("cni-bin")
    }

    /// The pid of the running berthd.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("berthd is running").id()
    }

    /// Everything berthd has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("berthd.log")).unwrap_or_default()
    }

    fn config_text(&self) -> String {
        let d = self.dir().display();
        let level = std::env::var("BERTH_TEST_LOG")
            .unwrap_or_else(|_| "debug,h2=info,hyper=info,tower=info".into());
        format!(
            "root = \"{d}/root\"\nstate = \"{d}/run\"\nlog_level = \"{level}\"\n{extra}\n\
             [grpc]\naddress = \"{d}/run/berth.sock\"\n\n\
             [cni]\nconf_dir = \"{d}/net.d\"\nbin_dirs = [\"{d}/cni-bin\"{plugins}]\n",
            plugins = if self.network.is_some() {
                format!(", \"{CNI_PLUGINS}\"")
            } else {
                String::new()
            },
            extra = self.extra_config,
        )
    }

    /// A `berthd` command with this fixture's configuration; stderr goes
    /// to the log file.
    pub fn command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join("berthd.log"))
            .expect("open berthd log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berthd"));
        cmd.arg("--config")
            .arg(self.config_path())
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        super::sys::die_with_test(&mut cmd);
        cmd
    }

    async fn launch(&mut self) {
        assert!(self.child.is_none(), "berthd is already running");
        let child = self.command().spawn().expect("spawn berthd");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!("berthd exited during start ({status}):\n{}", self.log());
            }
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "berthd did not serve {} within {START_TIMEOUT:?}:\n{}",
                self.socket().display(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` to berthd and waits for it to exit, without blocking
    /// the test's runtime (its client connections must stay served).
    pub async fn stop_with(&mut self, signal: Signal) -> ExitStatus {
        let mut child = self.child.take().expect("berthd is running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        kill(pid, signal).expect("signal berthd");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for berthd") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "berthd did not exit within {START_TIMEOUT:?} of {signal}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `kill -9` berthd.
    pub async fn kill9(&mut self) {
        self.stop_with(Signal::SIGKILL).await;
    }

    /// Starts berthd again after [`Berthd::kill9`] or [`Berthd::stop_with`].
    pub async fn restart(&mut self) {
        self.launch().await;
    }

    /// A channel to berthd's socket.
    pub async fn channel(&self) -> Channel {
        super::cri::channel(&self.socket().display().to_string()).await
    }

    /// A RuntimeService client.
    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    /// An ImageService client.
    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    /// Pulls `image` (panics on failure).
    pub async fn pull(&self, image: &str) {
        self.images()
            .await
            .pull_image(berth_cri_proto::v1::PullImageRequest {
                image: Some(berth_cri_proto::v1::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("pull {image}: {e}"));
    }
}

/// Builds `berth-pause` and `berth-shim` next to the berthd binary when a
/// test run did not build the whole workspace.
fn ensure_pause_binary() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let dir = Path::new(env!("CARGO_BIN_EXE_berthd"));
        let beside = dir.with_file_name("berth-pause");
        if beside.is_file() && dir.with_file_name("berth-shim").is_file() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "berth-shim", "--bins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for berth-pause");
        assert!(
            status.success() && beside.is_file(),
            "berth-pause was not built at {}",
            beside.display()
        );
    });
}

/// Best-effort clean-up after a test that did not remove its pods: kills
/// the pause processes berthd started, releases their namespace pins and
/// deletes the test's bridge.
fn clean_up_pods(dir: &Path, network: Option<&TestNetwork>) {
    // Whatever a failed test left running: `berth-shim delete` kills each
    // shim and its task, has runc forget it and releases namespace pins.
    let shim = Path::new(env!("CARGO_BIN_EXE_berthd")).with_file_name("berth-shim");
    for kind in ["containers", "sandboxes"] {
        for entry in std::fs::read_dir(dir.join("run").join(kind))
            .into_iter()
            .flatten()
            .flatten()
        {
            let state = entry.path();
            let shim_dir = state.join("shim");
            if shim_dir.join("shim.pid").exists() {
                let _ = Command::new(&shim)
                    .args(["-namespace", "berth", "-id"])
                    .arg(entry.file_name())
                    .arg("-state-dir")
                    .arg(&shim_dir)
                    .arg("delete")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            let _ = nix::mount::umount2(&state.join("shm"), nix::mount::MntFlags::MNT_DETACH);
            for ns in ["net", "ipc", "uts", "pid"] {
                let _ = nix::mount::umount2(
                    &state.join("ns").join(ns),
                    nix::mount::MntFlags::MNT_DETACH,
                );
            }
        }
    }
    for entry in std::fs::read_dir(dir.join("root/containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = nix::mount::umount2(
            &entry.path().join("rootfs"),
            nix::mount::MntFlags::MNT_DETACH,
        );
    }
    if let Some(net) = network {
        let _ = Command::new("ip")
            .args(["link", "del", &net.bridge])
            .status();
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        clean_up_pods(self.dir(), self.network.as_ref());
        if std::thread::panicking() {
            let log = self.log();
            let start = (log.len().saturating_sub(20_000)..log.len())
                .find(|i| log.is_char_boundary(*i))
                .unwrap_or(0);
            let tail = &log[start..];
            eprintln!(
                "--- berthd log ({}), last 20 kB ---\n{tail}",
                self.dir().display()
            );
        }
    }
}
