//! `berth-shim start`: daemonize a shim and return once it listens.
//!
//! The caller's process forks; the child leaves the caller's session
//! (`setsid`), sends its stdio to `/dev/null` and `shim.log`, becomes a
//! child subreaper, starts the reaper, binds the ttrpc socket and only then
//! tells the parent (through a pipe) that it is ready. The parent prints the
//! address and exits 0, so the child is re-parented to init: the caller
//! (berthd) can die without taking the shim with it. A `start` for a state
//! dir whose shim answers prints that shim's address instead.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use containerd_shim_protos::shim::shim_ttrpc::create_task;

use super::events::Publisher;
use super::monitor::Monitor;
use super::service::Service;
use super::task::Supervisor;
use super::{ADDRESS_FILE, LOG_FILE, PID_FILE, ShimArgs, ShimError, read_address, socket_path};
use crate::exit::write_atomic;
use crate::sys::{self, Forked};

/// How long the exiting shim leaves its last reply (to `Shutdown`) to be
/// written before it exits.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(50);

/// Starts a shim for `args` (see the module doc) and prints its address on
/// stdout.
pub fn start(args: &ShimArgs) -> Result<(), ShimError> {
    let state_dir = &args.state_dir;
    std::fs::create_dir_all(state_dir)
        .map_err(|e| ShimError::io(format!("create {}", state_dir.display()), e))?;
    if let Some(address) = read_address(state_dir).filter(|a| answers(a)) {
        println!("{address}");
        return Ok(());
    }
    let socket = socket_path(state_dir);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ShimError::io(format!("create {}", dir.display()), e))?;
    }
    // A socket file nobody answers on is a dead shim's.
    let _ = std::fs::remove_file(&socket);
    let address = format!("unix://{}", socket.display());

    let (ready_rx, ready_tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| ShimError::io("pipe", e))?;
    match sys::fork().map_err(|e| ShimError::io("fork", e))? {
        Forked::Parent(_) => {
            drop(ready_tx);
            let mut report = String::new();
            let _ = std::fs::File::from(ready_rx).read_to_string(&mut report);
            if report == "ok" {
                println!("{address}");
                Ok(())
            } else if report.is_empty() {
                Err(ShimError::NotStarted(format!(
                    "it exited before it listened; see {}",
                    state_dir.join(LOG_FILE).display()
                )))
            } else {
                Err(ShimError::NotStarted(report))
            }
        }
        Forked::Child => {
            drop(ready_rx);
            let mut ready = std::fs::File::from(ready_tx);
            match set_up(args, &address) {
                Ok((_server, shutdown)) => {
                    // EOF after "ok" releases the parent.
                    let _ = ready.write_all(b"ok");
                    drop(ready);
                    // Serve until Shutdown (a closed channel means the same:
                    // the sender lives as long as the server).
                    let _ = shutdown.recv();
                    std::thread::sleep(SHUTDOWN_FLUSH);
                    for file in [ADDRESS_FILE, PID_FILE] {
                        let _ = std::fs::remove_file(state_dir.join(file));
                    }
                    let _ = std::fs::remove_file(&socket);
                    std::process::exit(0)
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&socket);
                    let _ = ready.write_all(e.to_string().as_bytes());
                    eprintln!("berth-shim {}: {e}", args.id);
                    std::process::exit(1)
                }
            }
        }
    }
}

/// Whether a shim answers on `address`.
fn answers(address: &str) -> bool {
    address
        .strip_prefix("unix://")
        .is_some_and(|path| UnixStream::connect(path).is_ok())
}

/// The daemonized child's set-up; returns the listening server and what
/// `Shutdown` sends to.
fn set_up(args: &ShimArgs, address: &str) -> Result<(ttrpc::Server, Receiver<()>), ShimError> {
    let state_dir = &args.state_dir;
    sys::use_one_malloc_arena();
    sys::setsid().map_err(|e| ShimError::io("setsid", e))?;
    redirect_stdio(&state_dir.join(LOG_FILE))?;
    sys::set_child_subreaper().map_err(|e| ShimError::io("set child subreaper", e))?;
    write_atomic(
        &state_dir.join(PID_FILE),
        format!("{}\n", std::process::id()).as_bytes(),
    )?;

    let monitor = Monitor::start().map_err(|e| ShimError::io("start the reaper", e))?;
    let events = Publisher::from_env(&args.namespace)
        .map_err(|e| ShimError::io("start the events publisher", e))?;
    let supervisor = Arc::new(Supervisor::new(state_dir.clone(), monitor, events));
    let (shutdown_tx, shutdown_rx) = std::sync::mpsc::channel();
    let service = Arc::new(Service::new(supervisor, shutdown_tx));
    let server_err = |source| ShimError::Server {
        address: address.to_owned(),
        source,
    };
    let mut server = ttrpc::Server::new()
        .bind(address)
        .map_err(server_err)?
        .register_service(create_task(service));
    server.start().map_err(server_err)?;
    write_atomic(
        &state_dir.join(ADDRESS_FILE),
        format!("{address}\n").as_bytes(),
    )?;
    Ok((server, shutdown_rx))
}

/// stdin from `/dev/null`, stdout and stderr appended to `log`.
fn redirect_stdio(log: &Path) -> Result<(), ShimError> {
    let null = std::fs::File::open("/dev/null").map_err(|e| ShimError::io("open /dev/null", e))?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| ShimError::io(format!("open {}", log.display()), e))?;
    let dup = |r: rustix::io::Result<()>| r.map_err(|e| ShimError::io("redirect stdio", e));
    dup(rustix::stdio::dup2_stdin(&null))?;
    dup(rustix::stdio::dup2_stdout(&log_file))?;
    dup(rustix::stdio::dup2_stderr(&log_file))?;
    Ok(())
}
