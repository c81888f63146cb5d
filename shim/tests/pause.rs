//! The pause process against the real kernel: namespaces created and pinned,
//! hostname and sysctls set inside them and not on the host, privileges
//! dropped, orphans reaped, a clean stop on SIGTERM/SIGINT, and nothing left
//! behind by a failed start or by `unpin`.
//!
//! These tests need root; they follow berth's rule for root tests (skipped
//! loudly unless `BERTH_ROOT_TESTS` is set, failed when it is set and the
//! tests are not root).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use berth_shim::pause::{Namespace, ns_dir, pid_file, pin_path, unpin};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Environment variable that asks for the tests that need root (CI sets it).
const ROOT_TESTS_ENV: &str = "BERTH_ROOT_TESTS";

/// Decides whether a test that needs root runs: skipped with a loud message
/// when root tests were not asked for, failed when asked for but not root.
fn root_tests(test: &str) -> bool {
    let asked = std::env::var(ROOT_TESTS_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
    if !asked {
        eprintln!(
            "\n!!! SKIPPED {test}: needs root; set {ROOT_TESTS_ENV}=1 (as root) to run it !!!\n"
        );
        return false;
    }
    assert!(
        rustix::process::geteuid().is_root(),
        "{test}: {ROOT_TESTS_ENV} is set but the tests are not running as root"
    );
    true
}

/// Fails the test with a clear message when a host binary it needs is
/// missing.
fn require_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("required binary `{name}` not found in PATH"))
}

/// `statfs` magic of the namespace filesystem.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// How a start that failed ended.
#[derive(Debug)]
struct Failed {
    status: ExitStatus,
    stderr: String,
}

/// A running pause process on a private state dir. Dropping it kills the
/// process (if still running), unpins and removes the dir, so a failing
/// test leaves no process, mount or namespace behind.
struct Pause {
    child: Child,
    pid: Pid,
    dir: tempfile::TempDir,
}

impl Pause {
    /// Starts `berth-pause --state-dir <new dir> <args>` and waits until it
    /// reports readiness on stdout (or fails).
    fn start(args: &[&str]) -> Result<Self, Failed> {
        let dir = tempfile::Builder::new()
            .prefix("berth-pause-test-")
            .tempdir()
            .expect("temporary state dir");
        Self::start_in(dir, args)
    }

    fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Result<Self, Failed> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth-pause"))
            .arg("--state-dir")
            .arg(dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning berth-pause");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout is piped");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading berth-pause's stdout");
        if line.is_empty() {
            let status = child.wait().expect("waiting for berth-pause");
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .expect("stderr is piped")
                .read_to_string(&mut stderr)
                .expect("reading stderr");
            // The dir is dropped with this frame, so check it here.
            let failed = Failed { status, stderr };
            assert_nothing_left(dir.path(), &failed);
            return Err(failed);
        }
        let pid: i32 = line.trim().parse().expect("berth-pause prints its pid");
        let pause = Self {
            child,
            pid: Pid::from_raw(pid),
            dir,
        };
        assert_eq!(pid, pause.child.id() as i32, "the pid on stdout is its own");
        let written = std::fs::read_to_string(pid_file(pause.dir())).expect("pause.pid");
        assert_eq!(written, format!("{pid}\n"), "pause.pid holds its pid");
        Ok(pause)
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn pin(&self, namespace: Namespace) -> PathBuf {
        pin_path(self.dir(), namespace)
    }

    /// Sends `signal` and waits (up to 10 s) for the exit.
    fn stop(&mut self, signal: Signal) -> ExitStatus {
        kill(self.pid, signal).expect("signalling berth-pause");
        wait_timeout(&mut self.child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("berth-pause did not exit within 10 s of {signal}"))
    }

    /// The pid (in our namespace) of the PID namespace's init, the outer
    /// pause process's only child.
    fn init_pid(&self) -> i32 {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid.as_raw()))
                .expect("children of berth-pause");
        let children: Vec<i32> = children
            .split_whitespace()
            .map(|c| c.parse().expect("pid"))
            .collect();
        assert_eq!(children.len(), 1, "one init child: {children:?}");
        children[0]
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Err(e) = unpin(self.dir()) {
            eprintln!("cleaning up {}: {e}", self.dir().display());
        }
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Waits up to 10 s for `condition`.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// Lines of `/proc/self/mounts` that mention `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_str().expect("UTF-8 temp dir");
    std::fs::read_to_string("/proc/self/mounts")
        .expect("/proc/self/mounts")
        .lines()
        .filter(|l| l.contains(dir))
        .map(str::to_owned)
        .collect()
}

/// A failed start left no pin, pin file, `ns` dir or pid file. Releases
/// whatever it finds before failing, so a failing test leaves no mount.
fn assert_nothing_left(dir: &Path, failed: &Failed) {
    let mounts = mounts_under(dir);
    let left: Vec<_> = std::fs::read_dir(dir)
        .expect("state dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    unpin(dir).expect("cleaning up after berth-pause");
    assert_eq!(mounts, Vec::<String>::new(), "{failed:?}");
    assert!(left.is_empty(), "left behind {left:?} after {failed:?}");
}

/// Runs `program args` and returns its trimmed stdout, failing on error.
fn output(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("running a host tool");
    assert!(
        out.status.success(),
        "{} {args:?}: {}\n{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn nsenter(flag: &str, pin: &Path, command: &[&str]) -> String {
    let nsenter = require_binary("nsenter");
    let flag = format!("--{flag}={}", pin.display());
    let mut args = vec![flag.as_str()];
    args.extend_from_slice(command);
    output(&nsenter, &args)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
        .trim()
        .to_owned()
}

/// The pin is an nsfs mount of the same namespace as `pid`'s, and not the
/// test process's.
fn assert_pinned(pause: &Pause, namespace: Namespace, holder: i32) {
    let pin = pause.pin(namespace);
    let statfs = rustix::fs::statfs(&pin).expect("statfs of the pin");
    assert_eq!(
        statfs.f_type as i64,
        NSFS_MAGIC,
        "{} is not on nsfs",
        pin.display()
    );
    let name = namespace.name();
    let pinned = std::fs::metadata(&pin).expect("pin").ino();
    let held = std::fs::metadata(format!("/proc/{holder}/ns/{name}"))
        .expect("the holder's namespace")
        .ino();
    let ours = std::fs::metadata(format!("/proc/self/ns/{name}"))
        .expect("our namespace")
        .ino();
    assert_eq!(pinned, held, "{name} pin is the pause process's namespace");
    assert_ne!(pinned, ours, "{name} pin differs from the test's namespace");
}

/// Every capability set is empty and no_new_privs is set.
fn assert_unprivileged(pid: i32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
        assert!(line.ends_with("0000000000000000"), "pid {pid}: {line}");
    }
    assert!(
        status.lines().any(|l| l == "NoNewPrivs:\t1"),
        "pid {pid}: no_new_privs is not set"
    );
}

/// A value for `path` different from the host's current one.
fn other_than_host(path: &str, candidates: [&'static str; 2]) -> &'static str {
    let host = read_trimmed(path);
    if host == candidates[0] {
        candidates[1]
    } else {
        candidates[0]
    }
}

#[test]
fn pins_net_ipc_uts_with_hostname_and_sysctls_inside() {
    if !root_tests("pins_net_ipc_uts_with_hostname_and_sysctls_inside") {
        return;
    }
    let port_start = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
    let msgmax = "/proc/sys/kernel/msgmax";
    let host_port_start = read_trimmed(port_start);
    let host_msgmax = read_trimmed(msgmax);
    let host_hostname = read_trimmed("/proc/sys/kernel/hostname");
    let port_value = other_than_host(port_start, ["0", "1"]);
    let msgmax_value = other_than_host(msgmax, ["12345", "23456"]);

    let port_sysctl = format!("net.ipv4.ip_unprivileged_port_start={port_value}");
    let msgmax_sysctl = format!("kernel.msgmax={msgmax_value}");
    let mut pause = Pause::start(&[
        "--net",
        "--ipc",
        "--uts",
        "--hostname",
        "berth-test-pod",
        "--sysctl",
        &port_sysctl,
        "--sysctl",
        &msgmax_sysctl,
    ])
    .expect("berth-pause starts");
    let pid = pause.pid.as_raw();

    for namespace in [Namespace::Net, Namespace::Ipc, Namespace::Uts] {
        assert_pinned(&pause, namespace, pid);
    }
    assert!(
        !pause.pin(Namespace::Pid).exists(),
        "no pid pin without --pid"
    );
    assert_eq!(mounts_under(pause.dir()).len(), 3);

    let links = nsenter("net", &pause.pin(Namespace::Net), &["ip", "-o", "link"]);
    let names: Vec<&str> = links
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or_default().trim())
        .collect();
    assert_eq!(names, ["lo"], "only loopback in the pod's netns: {links}");

    let uts = pause.pin(Namespace::Uts);
    assert_eq!(nsenter("uts", &uts, &["hostname"]), "berth-test-pod");
    assert_eq!(read_trimmed("/proc/sys/kernel/hostname"), host_hostname);

    let net = pause.pin(Namespace::Net);
    assert_eq!(nsenter("net", &net, &["cat", port_start]), port_value);
    assert_eq!(read_trimmed(port_start), host_port_start, "host unchanged");
    let ipc = pause.pin(Namespace::Ipc);
    assert_eq!(nsenter("ipc", &ipc, &["cat", msgmax]), msgmax_value);
    assert_eq!(read_trimmed(msgmax), host_msgmax, "host unchanged");

    assert_unprivileged(pid);

    let status = pause.stop(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop: {status}");
    assert!(!pid_file(pause.dir()).exists(), "pause.pid removed on exit");
    // The pins outlive the process: the namespaces are still there.
    assert_eq!(nsenter("uts", &uts, &["hostname"]), "berth-test-pod");
    assert_eq!(mounts_under(pause.dir()).len(), 3);

    unpin(pause.dir()).expect("unpin");
    assert_eq!(mounts_under(pause.dir()), Vec::<String>::new());
    assert!(!ns_dir(pause.dir()).exists(), "ns dir removed");
    unpin(pause.dir()).expect("unpin is idempotent");
}

#[test]
fn pid_namespace_init_is_pid_1_and_reaps_orphans() {
    if !root_tests("pid_namespace_init_is_pid_1_and_reaps_orphans") {
        return;
    }
    let mut pause =
        Pause::start(&["--net", "--ipc", "--uts", "--pid"]).expect("berth-pause starts");
    let outer = pause.pid.as_raw();
    let init = pause.init_pid();

    assert_pinned(&pause, Namespace::Pid, init);
    for namespace in [Namespace::Net, Namespace::Ipc, Namespace::Uts] {
        assert_pinned(&pause, namespace, init);
    }
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).expect("status");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid");
    assert_eq!(nspid, format!("NSpid:\t{init}\t1"), "init is PID 1 inside");
    assert_unprivileged(outer);
    assert_unprivileged(init);

    // An orphan inside the namespace: sh backgrounds a sleep and exits, the
    // sleep is re-parented to the namespace's init, which must reap it.
    let orphan = nsenter(
        "pid",
        &pause.pin(Namespace::Pid),
        &["sh", "-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $!"],
    );
    assert!(orphan.parse::<i32>().is_ok_and(|p| p > 1), "{orphan}");
    let children = format!("/proc/{init}/task/{init}/children");
    let has_children = || !read_trimmed(&children).is_empty();
    // Long-lived, so a loaded machine cannot let it come and go unseen.
    eventually("the orphan to be re-parented to init", has_children);
    for child in read_trimmed(&children).split_whitespace() {
        let pid: i32 = child.parse().expect("child pid");
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill the orphan");
    }
    // A zombie stays in its parent's children list until it is reaped.
    eventually("init to reap the orphan", || !has_children());

    let status = pause.stop(Signal::SIGINT);
    assert_eq!(status.code(), Some(0), "SIGINT is a clean stop: {status}");
    assert!(
        !Path::new(&format!("/proc/{init}")).exists(),
        "init exited with the outer pause process"
    );
    // The PID namespace outlives its init only as a pin; the others too.
    assert_eq!(mounts_under(pause.dir()).len(), 4);
    unpin(pause.dir()).expect("unpin");
    assert_eq!(mounts_under(pause.dir()), Vec::<String>::new());
}

/// The pid of the outer pause process's only child.
fn only_child(pid: i32) -> i32 {
    let children = read_trimmed(&format!("/proc/{pid}/task/{pid}/children"));
    let children: Vec<i32> = children
        .split_whitespace()
        .map(|c| c.parse().expect("pid"))
        .collect();
    assert_eq!(children.len(), 1, "one child of {pid}: {children:?}");
    children[0]
}

#[test]
fn user_namespace_is_created_first_and_owns_the_others() {
    if !root_tests("user_namespace_is_created_first_and_owns_the_others") {
        return;
    }
    let port_start = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
    let host_port_start = read_trimmed(port_start);
    let port_value = other_than_host(port_start, ["0", "1"]);
    let port_sysctl = format!("net.ipv4.ip_unprivileged_port_start={port_value}");
    let mut pause = Pause::start(&[
        "--net",
        "--ipc",
        "--uts",
        "--pid",
        "--hostname",
        "berth-userns-pod",
        "--sysctl",
        &port_sysctl,
        "--uid-map",
        "0:200000:65536",
        "--gid-map",
        "0:300000:1000",
    ])
    .expect("berth-pause starts");
    let outer = pause.pid.as_raw();
    let child = only_child(outer);
    let init = only_child(child);

    // The child holds the user, net, ipc and uts namespaces; its child is
    // PID 1 of the pod's PID namespace.
    for namespace in [
        Namespace::User,
        Namespace::Net,
        Namespace::Ipc,
        Namespace::Uts,
    ] {
        assert_pinned(&pause, namespace, child);
    }
    assert_pinned(&pause, Namespace::Pid, init);
    assert_eq!(mounts_under(pause.dir()).len(), 5);
    assert_eq!(
        read_trimmed(&format!("/proc/{child}/uid_map"))
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "200000", "65536"]
    );
    assert_eq!(
        read_trimmed(&format!("/proc/{child}/gid_map"))
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "300000", "1000"]
    );
    let status = read_trimmed(&format!("/proc/{child}/status"));
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:\t200000\t200000\t200000")),
        "the child is root of the user namespace: {status}"
    );
    assert_eq!(
        read_trimmed(&format!("/proc/{child}/setgroups")),
        "allow",
        "containers joining the namespace may set supplementary groups"
    );
    for pid in [outer, child, init] {
        assert_unprivileged(pid);
    }

    // Root of the pod's user namespace may rename the pod's UTS namespace
    // only because that namespace is owned by the user namespace.
    let nsenter_bin = require_binary("nsenter");
    let user = format!("--user={}", pause.pin(Namespace::User).display());
    let uts = format!("--uts={}", pause.pin(Namespace::Uts).display());
    let net = format!("--net={}", pause.pin(Namespace::Net).display());
    assert_eq!(
        output(&nsenter_bin, &[&user, &uts, "hostname"]),
        "berth-userns-pod"
    );
    output(&nsenter_bin, &[&user, &uts, "hostname", "renamed-inside"]);
    assert_eq!(
        output(&nsenter_bin, &[&user, &uts, "hostname"]),
        "renamed-inside"
    );
    assert_eq!(
        output(&nsenter_bin, &[&user, &net, "cat", port_start]),
        port_value
    );
    assert_eq!(read_trimmed(port_start), host_port_start, "host unchanged");

    let status = pause.stop(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop: {status}");
    for pid in [child, init] {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} exited with the outer pause process"
        );
    }
    assert_eq!(mounts_under(pause.dir()).len(), 5, "the pins outlive it");
    unpin(pause.dir()).expect("unpin");
    assert_eq!(mounts_under(pause.dir()), Vec::<String>::new());
}

#[test]
fn host_wide_sysctl_is_refused_and_nothing_is_left() {
    if !root_tests("host_wide_sysctl_is_refused_and_nothing_is_left") {
        return;
    }
    let failed = Pause::start(&["--net", "--ipc", "--uts", "--sysctl", "kernel.panic=1"])
        .err()
        .expect("kernel.panic is refused");
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert!(
        failed
            .stderr
            .contains("sysctl kernel.panic refused: it is not scoped to a namespace"),
        "{}",
        failed.stderr
    );

    let failed = Pause::start(&["--ipc", "--sysctl", "net.ipv4.ip_forward=1"])
        .err()
        .expect("a net sysctl without a netns is refused");
    assert!(
        failed.stderr.contains("net.ipv4.ip_forward") && failed.stderr.contains("--net"),
        "{}",
        failed.stderr
    );
}

#[test]
fn failure_after_pinning_unmounts_the_pins() {
    if !root_tests("failure_after_pinning_unmounts_the_pins") {
        return;
    }
    // The sysctl passes the namespace check but does not exist: the process
    // fails after it has pinned its namespaces, and must release them.
    for (pid, userns) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut args = vec![
            "--net",
            "--ipc",
            "--uts",
            "--sysctl",
            "net.ipv4.no_such_knob=1",
        ];
        if pid {
            args.push("--pid");
        }
        if userns {
            args.extend(["--uid-map", "0:300000:65536", "--gid-map", "0:300000:65536"]);
        }
        let failed = Pause::start(&args).err().expect("missing sysctl fails");
        assert_eq!(failed.status.code(), Some(1), "{failed:?}");
        assert!(
            failed
                .stderr
                .contains("/proc/sys/net/ipv4/no_such_knob does not exist"),
            "{}",
            failed.stderr
        );
    }
}

#[test]
fn a_state_dir_in_use_is_refused_and_its_pins_kept() {
    if !root_tests("a_state_dir_in_use_is_refused_and_its_pins_kept") {
        return;
    }
    let first = Pause::start(&["--net", "--uts"]).expect("first berth-pause starts");
    let second = Command::new(env!("CARGO_BIN_EXE_berth-pause"))
        .arg("--state-dir")
        .arg(first.dir())
        .args(["--net", "--uts"])
        .output()
        .expect("second berth-pause");
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_pinned(&first, Namespace::Net, first.pid.as_raw());
    assert_pinned(&first, Namespace::Uts, first.pid.as_raw());
    assert_eq!(
        std::fs::read_to_string(pid_file(first.dir())).expect("pause.pid"),
        format!("{}\n", first.pid)
    );
}

#[test]
fn usage_errors_exit_2_before_touching_anything() {
    let out = Command::new(env!("CARGO_BIN_EXE_berth-pause"))
        .args(["--state-dir", "/nonexistent/berth", "--hostname", "h"])
        .output()
        .expect("berth-pause");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--hostname needs --uts"), "{stderr}");
    let help = Command::new(env!("CARGO_BIN_EXE_berth-pause"))
        .arg("--help")
        .output()
        .expect("berth-pause --help");
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: berth-pause"));
}
