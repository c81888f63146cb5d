//! OOM kills of a task: the kernel's count of them in the task's memory
//! cgroup, noted when the init starts and compared when it exits.
//!
//! The cgroup is found from `/proc/<pid>/cgroup` and the hierarchies in
//! `/proc/self/mountinfo`: the cgroup v1 memory controller's
//! `memory.oom_control` (its `oom_kill N` line) when the process has one,
//! else cgroup v2's `memory.events` (`oom_kill N`). A count that grew
//! between the two readings means the OOM killer killed a process of the
//! container; the exit is then recorded `oom_killed`.

use std::path::{Path, PathBuf};

/// A memory cgroup's `oom_kill` count and its value when it was first
/// read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OomCounter {
    file: PathBuf,
    /// The count when the counter was taken.
    baseline: u64,
}

impl OomCounter {
    /// The counter of process `pid`'s memory cgroup, with its count now;
    /// `None` when it has no memory cgroup with an `oom_kill` count.
    pub(crate) fn of_process(pid: i32) -> Option<Self> {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let file = counter_file(&cgroups, &mountinfo)?;
        let baseline = read_count(&file)?;
        Some(Self { file, baseline })
    }

    /// Whether the count grew since the counter was taken (`false` when
    /// it can no longer be read).
    pub(crate) fn grew(&self) -> bool {
        read_count(&self.file).is_some_and(|n| n > self.baseline)
    }
}

/// The `oom_kill` count in `file`.
fn read_count(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// The file with the `oom_kill` count for a process whose
/// `/proc/<pid>/cgroup` is `cgroups`, given the mount table `mountinfo`.
fn counter_file(cgroups: &str, mountinfo: &str) -> Option<PathBuf> {
    let mut v2 = None;
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            let file = mount_point(mountinfo, Some("memory"))?
                .join(path.trim_start_matches('/'))
                .join("memory.oom_control");
            if file.exists() {
                return Some(file);
            }
        } else if controllers.is_empty() {
            v2 = Some(path.to_owned());
        }
    }
    let file = mount_point(mountinfo, None)?
        .join(v2?.trim_start_matches('/'))
        .join("memory.events");
    file.exists().then_some(file)
}

/// Where the v1 hierarchy with `controller` is mounted, or (for `None`)
/// the cgroup2 hierarchy; the first such mount of the root of the
/// hierarchy.
fn mount_point(mountinfo: &str, controller: Option<&str>) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // id parent major:minor root mount-point options [optional...] - type source super-options
        let (left, right) = line.split_once(" - ")?;
        let mut left = left.split(' ');
        let root = left.nth(3)?;
        let point = left.next()?;
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let options = right.nth(1).unwrap_or_default();
        let wanted = match controller {
            Some(c) => fstype == "cgroup" && options.split(',').any(|o| o == c),
            None => fstype == "cgroup2",
        };
        (wanted && root == "/").then(|| PathBuf::from(unescape(point)))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 1 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 25 0:28 / /sys/fs/cgroup/un\\040ified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_v1_memory_controller_and_the_v2_hierarchy() {
        assert_eq!(
            mount_point(MOUNTINFO, Some("memory")),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            mount_point(MOUNTINFO, None),
            Some(PathBuf::from("/sys/fs/cgroup/un ified"))
        );
        assert_eq!(mount_point(MOUNTINFO, Some("pids")), None);
    }

    #[test]
    fn reads_the_count_of_this_process_when_it_has_one() {
        // Whatever this machine's layout, a count that exists is a number
        // and has not grown by itself.
        let pid = i32::try_from(std::process::id()).expect("pid");
        if let Some(counter) = OomCounter::of_process(pid) {
            assert!(!counter.grew());
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("memory.events");
        std::fs::write(&file, "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n").expect("write");
        let counter = OomCounter {
            file: file.clone(),
            baseline: read_count(&file).expect("count"),
        };
        assert!(!counter.grew());
        std::fs::write(&file, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").expect("write");
        assert!(counter.grew());
        std::fs::remove_file(&file).expect("remove");
        assert!(!counter.grew(), "a vanished cgroup is no OOM");
    }
}
