//! A real image registry for the tests: Debian's `docker-registry` (the CNCF
//! distribution server) on a free loopback port, with storage, config and
//! logs in a temporary directory of its own, optionally behind htpasswd
//! basic auth.
//!
//! Dropping a [`Registry`] kills the one process it started, waits for it and
//! removes its directory.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

/// How long the registry may take to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Tries with a fresh port when another process took ours between probing
/// for a free port and the registry binding it.
const START_ATTEMPTS: usize = 3;

/// bcrypt cost for the htpasswd entry: the minimum, as the password is a
/// test fixture and every request to the registry verifies it.
const BCRYPT_COST: u32 = 4;

/// User name and password of a registry started with basic auth.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password in clear.
    pub password: String,
}

/// A running `docker-registry` serving plain HTTP on `127.0.0.1`.
///
/// The process is started with `PR_SET_PDEATHSIG`, so it also dies if the
/// thread that started it ends without dropping the fixture (a killed test
/// binary): start it from the test's own thread or task, not from
/// `spawn_blocking`, whose threads end when idle.
#[derive(Debug)]
pub struct Registry {
    /// `None` for a registry this fixture did not start ([`Registry::existing`]).
    child: Option<Child>,
    addr: SocketAddr,
    credentials: Option<Credentials>,
    // Dropped after `child` is killed (see `Drop`), taking storage and logs.
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry that anyone may pull from and push to.
    pub fn start() -> io::Result<Registry> {
        Self::start_with(None)
    }

    /// Starts a registry that requires HTTP basic auth with this user and
    /// password for every request, pulls included.
    pub fn start_with_basic_auth(username: &str, password: &str) -> io::Result<Registry> {
        Self::start_with(Some(Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        }))
    }

    fn start_with(credentials: Option<Credentials>) -> io::Result<Registry> {
        let binary = super::require_binary("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()?;
        if let Some(credentials) = &credentials {
            write_htpasswd(&dir.path().join("htpasswd"), credentials)?;
        }
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let addr = free_loopback_addr()?;
            write_config(dir.path(), addr, credentials.is_some())?;
            let child = spawn(&binary, dir.path())?;
            match wait_ready(child, addr, &dir.path().join("registry.log")) {
                Ok(child) => {
                    return Ok(Registry {
                        child: Some(child),
                        addr,
                        credentials,
                        dir,
                    });
                }
                Err(StartError::PortTaken(err)) => last_error = Some(err),
                Err(StartError::Failed(err)) => return Err(err),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("registry did not start")))
    }

    /// A registry that is already running at `addr` (plain HTTP, no auth),
    /// e.g. for benchmarks that compare runtimes configured for it. It is
    /// left running when the handle is dropped.
    pub fn existing(addr: SocketAddr) -> io::Result<Registry> {
        Ok(Registry {
            child: None,
            addr,
            credentials: None,
            dir: tempfile::Builder::new()
                .prefix("berth-registry-")
                .tempdir()?,
        })
    }

    /// `host:port` of the registry, the registry part of image references
    /// (`127.0.0.1:PORT`).
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Base URL of the registry (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Credentials the registry requires, if it was started with basic auth.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The auth that pushes to and pulls from this registry: basic auth with
    /// its credentials, or anonymous.
    pub fn auth(&self) -> RegistryAuth {
        match &self.credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// An `oci-client` that talks plain HTTP, as this registry does.
    pub fn client(&self) -> oci_client::Client {
        oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        })
    }

    /// Directory under which the registry stores blobs and manifests
    /// (`docker/registry/v2/...`), for tests that corrupt them on purpose.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// What the registry has logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // `Child::kill` signals exactly our pid; `wait` reaps it so the port
        // and the storage are released before the directory goes.
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Why one start attempt failed.
enum StartError {
    /// Another process bound the port first: worth another try.
    PortTaken(io::Error),
    /// Anything else: give up.
    Failed(io::Error),
}

/// Asks the kernel for a free port on 127.0.0.1 and releases it for the
/// registry to bind.
fn free_loopback_addr() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn write_htpasswd(path: &Path, credentials: &Credentials) -> io::Result<()> {
    let hash = bcrypt::hash(&credentials.password, BCRYPT_COST).map_err(io::Error::other)?;
    std::fs::write(path, format!("{}:{hash}\n", credentials.username))
}

/// Writes `config.yml`: filesystem storage in `dir/storage`, deletes allowed,
/// HTTP on `addr` only, and htpasswd auth from `dir/htpasswd` if asked.
fn write_config(dir: &Path, addr: SocketAddr, basic_auth: bool) -> io::Result<()> {
    let storage = dir.join("storage");
    let mut config = format!(
        "version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
",
        storage = storage.display(),
    );
    if basic_auth {
        config.push_str(&format!(
            "auth:
  htpasswd:
    realm: berth-test-registry
    path: {}
",
            dir.join("htpasswd").display()
        ));
    }
    std::fs::write(dir.join("config.yml"), config)
}

fn spawn(binary: &Path, dir: &Path) -> io::Result<Child> {
    let log = std::fs::File::create(dir.join("registry.log"))?;
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .arg(dir.join("config.yml"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // REGISTRY_* variables override the config file; the fixture's config
    // must be the whole truth.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REGISTRY_") {
            command.env_remove(name);
        }
    }
    super::sys::die_with_test(&mut command);
    command
        .spawn()
        .map_err(|err| io::Error::new(err.kind(), format!("spawn {}: {err}", binary.display())))
}

/// Waits until the registry answers `GET /v2/`; on failure kills the child
/// and reports what it logged.
fn wait_ready(mut child: Child, addr: SocketAddr, log: &Path) -> Result<Child, StartError> {
    let deadline = Instant::now() + START_TIMEOUT;
    let failure = loop {
        match child.try_wait() {
            Ok(Some(status)) => break format!("docker-registry exited with {status}"),
            Ok(None) => {}
            Err(err) => break format!("waiting for docker-registry: {err}"),
        }
        if answers_v2(addr) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            break format!(
                "docker-registry did not answer GET /v2/ on {addr} in {START_TIMEOUT:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let output = std::fs::read_to_string(log).unwrap_or_default();
    let err = io::Error::other(format!("{failure}; its output:\n{output}"));
    if output.contains("address already in use") {
        Err(StartError::PortTaken(err))
    } else {
        Err(StartError::Failed(err))
    }
}

/// Whether `GET /v2/` gets an HTTP answer the API gives when it is up: 200,
/// or 401 when auth is on.
fn answers_v2(addr: SocketAddr) -> bool {
    let attempt = || -> io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(stream, "GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut head = [0; 12];
        stream.read_exact(&mut head)?;
        Ok(String::from_utf8_lossy(&head).into_owned())
    };
    matches!(attempt(), Ok(head) if head.ends_with(" 200") || head.ends_with(" 401"))
}
