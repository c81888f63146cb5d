//! Tests against the real kernel: cgroups with processes in them, and a
//! tree with a mount inside. They need root and run only when
//! `BERTH_ROOT_TESTS=1` (the rule of `tests/support`: skipped loudly when
//! not asked for, failed when asked for without root). They kill only the
//! processes they start and remove what they create, even when they fail.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::{CgroupReader, CgroupStats, CpuRateKeeper, StatsError, disk_usage_blocking};
use crate::cgroup::Hierarchy;

const ROOT_TESTS_ENV: &str = "BERTH_ROOT_TESTS";
const BUSYBOX: &str = "/bin/busybox";
const MIB: u64 = 1 << 20;

fn root_tests(test: &str) -> bool {
    let asked = std::env::var(ROOT_TESTS_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
    if !asked {
        eprintln!(
            "\n!!! SKIPPED {test}: needs root; set {ROOT_TESTS_ENV}=1 (as root) to run it !!!\n"
        );
        return false;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test}: {ROOT_TESTS_ENV} is set but the tests are not running as root"
    );
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{test}: {BUSYBOX} is needed (Debian's busybox-static)"
    );
    true
}

/// A busybox shell running `script` once a line arrives on its stdin, so
/// it can be moved into a cgroup before it does anything.
fn held_shell(script: &str) -> Child {
    Command::new(BUSYBOX)
        .args(["sh", "-c", &format!("read _; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start busybox sh")
}

fn release(child: &mut Child) {
    let stdin = child.stdin.as_mut().expect("child stdin");
    stdin.write_all(b"go\n").expect("release child");
    stdin.flush().expect("flush child stdin");
}

fn read_line(stdout: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    stdout.read_line(&mut line).expect("child output");
    line
}

/// The cgroup dirs made by a test (each removed once empty), the
/// processes it started (killed and reaped first) and mounts (detached).
struct Cleanup {
    children: Vec<Child>,
    dirs: Vec<PathBuf>,
    mounts: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for mount in self.mounts.iter().rev() {
            let _ = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH);
        }
        for dir in self.dirs.iter().rev() {
            // The kernel may count an exiting process for a moment.
            for _ in 0..250 {
                match std::fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => break,
                }
            }
        }
    }
}

/// Reads until `done` holds, for at most 20 s (the machine may be busy).
fn read_until(
    reader: &CgroupReader,
    path: &str,
    done: impl Fn(&CgroupStats) -> bool,
) -> CgroupStats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = reader.read(path).expect("read stats");
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cpu_and_memory_of_a_real_cgroup_grow() {
    if !root_tests("stats::root_tests::cpu_and_memory_of_a_real_cgroup_grow") {
        return;
    }
    let hierarchy = Hierarchy::detect().expect("detect cgroups");
    let reader = CgroupReader::new(&hierarchy).expect("reader");
    let path = format!("berth-stats-test-{}", std::process::id());
    let mut cleanup = Cleanup {
        children: Vec::new(),
        dirs: hierarchy.dirs(&path).expect("cgroup dirs"),
        mounts: Vec::new(),
    };

    let spinner = held_shell("while :; do :; done");
    let spinner_pid = i32::try_from(spinner.id()).expect("pid");
    hierarchy.join(&path, spinner_pid).expect("move spinner");
    let mut hog = held_shell(&format!(
        "x=$({BUSYBOX} head -c {} /dev/zero | {BUSYBOX} tr '\\0' a); echo ready ${{#x}}; read _",
        48 * MIB
    ));
    let hog_pid = i32::try_from(hog.id()).expect("pid");
    hierarchy.join(&path, hog_pid).expect("move memory hog");
    let mut hog_out = BufReader::new(hog.stdout.take().expect("hog stdout"));
    cleanup.children.push(spinner);
    cleanup.children.push(hog);

    let before = reader.read(&path).expect("stats before");
    let cpu_before = before.cpu.usage_core_ns.expect("cpu usage");
    let memory_before = before.memory.usage_bytes.expect("memory usage");
    let faults_before = before.memory.page_faults.expect("page faults");
    assert_eq!(before.process_count, Some(2), "{before:?}");

    for child in &mut cleanup.children {
        release(child);
    }
    assert_eq!(
        read_line(&mut hog_out).trim(),
        format!("ready {}", 48 * MIB),
        "the hog holds its memory"
    );

    let keeper = CpuRateKeeper::new(Duration::from_secs(60));
    let first = read_until(&reader, &path, |s| {
        s.cpu.usage_core_ns.unwrap_or(0) > cpu_before + 100_000_000
    });
    assert_eq!(
        keeper.sample(&path, first.cpu.usage_core_ns.unwrap_or(0), first.monotonic),
        None
    );
    std::thread::sleep(Duration::from_millis(1500));
    let after = reader.read(&path).expect("stats after");

    let cpu_after = after.cpu.usage_core_ns.expect("cpu usage");
    assert!(
        cpu_after > cpu_before + 100_000_000,
        "cpu usage grew: {cpu_before} → {cpu_after}"
    );
    let rate = keeper
        .sample(&path, cpu_after, after.monotonic)
        .expect("a rate after 1.5 s");
    // One spinning shell on a shared machine: more than a tenth of a core,
    // at most one core (plus the hog's brief work).
    assert!(rate > 100_000_000, "usage_nano_cores {rate}");
    assert!(rate < 1_500_000_000, "usage_nano_cores {rate}");

    let memory = &after.memory;
    let usage = memory.usage_bytes.expect("memory usage");
    assert!(
        usage >= memory_before + 40 * MIB,
        "memory usage grew: {memory_before} → {usage}"
    );
    let working_set = memory.working_set_bytes.expect("working set");
    assert!(
        working_set <= usage && working_set >= 40 * MIB,
        "{memory:?}"
    );
    assert!(memory.rss_bytes.expect("rss") >= 40 * MIB, "{memory:?}");
    assert!(
        memory.page_faults.expect("page faults") > faults_before,
        "{memory:?}"
    );
    assert!(memory.major_page_faults.is_some(), "{memory:?}");
    // Created without a limit.
    assert_eq!(memory.limit_bytes, None, "{memory:?}");
    assert_eq!(memory.available_bytes, None, "{memory:?}");
    assert_eq!(after.process_count, Some(2), "{after:?}");
    if matches!(hierarchy, Hierarchy::V2(_)) {
        assert!(after.cpu.pressure.is_some() || !Path::new("/proc/pressure/cpu").exists());
    }

    let dirs = cleanup.dirs.clone();
    drop(cleanup);
    for dir in &dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    let err = reader.read(&path).expect_err("removed cgroup");
    assert!(matches!(err, StatsError::CgroupNotFound { .. }), "{err:?}");
}

/// A cgroup2 hierarchy mounted beside the v1 ones (a hybrid host's
/// `/sys/fs/cgroup/unified`), from mountinfo.
fn separate_cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if !right.starts_with("cgroup2 ") {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

#[test]
fn v2_cgroup_without_controllers_reports_cpu_and_no_memory() {
    if !root_tests("stats::root_tests::v2_cgroup_without_controllers_reports_cpu_and_no_memory") {
        return;
    }
    if matches!(Hierarchy::detect().expect("detect"), Hierarchy::V2(_)) {
        eprintln!(
            "\n!!! SKIPPED v2_cgroup_without_controllers…: the host is cgroup v2; \
             cpu_and_memory_of_a_real_cgroup_grow covers it !!!\n"
        );
        return;
    }
    let Some(unified) = separate_cgroup2_mount() else {
        eprintln!("\n!!! SKIPPED v2_cgroup_without_controllers…: no cgroup2 mount !!!\n");
        return;
    };
    let controllers =
        std::fs::read_to_string(unified.join("cgroup.controllers")).expect("controllers");
    let hierarchy = Hierarchy::V2(unified.clone());
    let reader = CgroupReader::new(&hierarchy).expect("reader");
    let path = format!("berth-stats-test-v2-{}", std::process::id());
    let dir = unified.join(&path);
    std::fs::create_dir(&dir).expect("create v2 cgroup");
    let mut cleanup = Cleanup {
        children: Vec::new(),
        dirs: vec![dir.clone()],
        mounts: Vec::new(),
    };
    let mut spinner = held_shell("while :; do :; done");
    std::fs::write(dir.join("cgroup.procs"), spinner.id().to_string()).expect("move spinner");
    release(&mut spinner);
    cleanup.children.push(spinner);

    let stats = read_until(&reader, &path, |s| {
        s.cpu.usage_core_ns.unwrap_or(0) > 100_000_000
    });
    assert!(
        stats.cpu.usage_core_ns.unwrap_or(0) > 100_000_000,
        "{stats:?}"
    );
    if !controllers.split_whitespace().any(|c| c == "memory") {
        // PSI files are core files of every v2 cgroup: pressure is real
        // even without the memory controller; the rest must be absent.
        let memory = super::MemoryStats {
            pressure: None,
            ..stats.memory.clone()
        };
        assert_eq!(memory, super::MemoryStats::default(), "no made-up memory");
        assert!(stats.memory.pressure.is_some() || !Path::new("/proc/pressure").exists());
    }
    if !controllers.split_whitespace().any(|c| c == "pids") {
        // Counted from cgroup.procs.
        assert_eq!(stats.process_count, Some(1), "{stats:?}");
    }
    drop(cleanup);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn disk_usage_stays_on_its_own_mount() {
    if !root_tests("stats::root_tests::disk_usage_stays_on_its_own_mount") {
        return;
    }
    use nix::mount::{MsFlags, mount};
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("own"), vec![1u8; 64 * 1024]).expect("own file");
    let alone = disk_usage_blocking(root.path()).expect("usage before mounts");

    let tmpfs = root.path().join("tmpfs");
    let bind = root.path().join("bind");
    let elsewhere = tempfile::tempdir().expect("bind source");
    std::fs::write(elsewhere.path().join("big"), vec![2u8; 4 << 20]).expect("big file");
    std::fs::create_dir(&tmpfs).expect("tmpfs dir");
    std::fs::create_dir(&bind).expect("bind dir");
    let mut cleanup = Cleanup {
        children: Vec::new(),
        dirs: Vec::new(),
        mounts: Vec::new(),
    };
    mount(
        Some("tmpfs"),
        &tmpfs,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=16m"),
    )
    .expect("mount tmpfs");
    cleanup.mounts.push(tmpfs.clone());
    std::fs::write(tmpfs.join("big"), vec![3u8; 4 << 20]).expect("file on tmpfs");
    // Same filesystem, same device number: only statx's mount-root bit
    // tells it apart.
    mount(
        Some(elsewhere.path()),
        &bind,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind mount");
    cleanup.mounts.push(bind.clone());

    let usage = disk_usage_blocking(root.path()).expect("usage with mounts");
    // Only the two mount points' own directories were added, and not
    // even those: mount roots are not counted.
    assert_eq!(
        usage.inodes_used, alone.inodes_used,
        "{usage:?} vs {alone:?}"
    );
    assert!(usage.used_bytes < alone.used_bytes + (1 << 20), "{usage:?}");
    drop(cleanup);
}
