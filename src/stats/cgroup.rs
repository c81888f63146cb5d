//! A cgroup's cpu, memory, process and pressure figures on cgroup v1 and v2,
//! with cAdvisor's meanings (the ones the kubelet evicts and schedules on).
//!
//! A read is a fixed handful of small files (7 on v1, 10 on v2, plus a
//! `stat` of the directory for each file that is missing, and the
//! `cgroup.procs` of the subtree where no pids controller counts): no mount
//! table is parsed per call, the layout comes from a [`Hierarchy`] detected
//! once. Pressure (PSI) exists only on v2: upstream kernels have no
//! `*.pressure` files in v1 hierarchies.

use std::collections::HashSet;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::{StatsError, malformed};
use crate::cgroup::Hierarchy;

/// A v1 limit above this means "no limit": the kernel writes "unlimited"
/// as the largest page-aligned `i64`, which differs by page size, so
/// cAdvisor and containerd compare with 2^62 instead.
const UNLIMITED_ABOVE: u64 = 1 << 62;

/// Reads [`CgroupStats`] of cgroups on one node's hierarchies.
///
/// Reading is a few `open`/`read` calls on cgroupfs (kernel memory, no
/// disk), cheap enough for hundreds of cgroups per request: about 80 µs a
/// cgroup on a v1 host (500 reads in 40 ms on a busy 2-core VM).
#[derive(Debug, Clone)]
pub struct CgroupReader {
    layout: Layout,
}

#[derive(Debug, Clone)]
enum Layout {
    /// The v1 mounts stats read from, and which of them is which (two
    /// controllers may share one mount).
    V1 {
        mounts: Hierarchy,
        cpuacct: Option<usize>,
        memory: Option<usize>,
        pids: Option<usize>,
    },
    V2(Hierarchy),
}

/// What one cgroup has used, read at one instant.
///
/// Every figure is `None` when the kernel does not report it for this
/// cgroup (controller not enabled, swap accounting off, no PSI), never a
/// made-up zero.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupStats {
    /// Wall-clock time of the read (the CRI's `timestamp`).
    pub timestamp: SystemTime,
    /// Monotonic time of the read, for rates ([`super::CpuRateKeeper`]).
    pub monotonic: Instant,
    /// CPU time.
    pub cpu: CpuStats,
    /// Memory.
    pub memory: MemoryStats,
    /// Block I/O (only pressure so far).
    pub io: IoStats,
    /// Tasks in the cgroup and its descendants: `pids.current` where the
    /// pids controller is on (it counts threads, as containerd reports),
    /// otherwise the distinct process ids in `cgroup.procs` of the cgroup
    /// and every descendant.
    pub process_count: Option<u64>,
}

/// CPU usage of a cgroup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuStats {
    /// Cumulative CPU time of all tasks, in core-nanoseconds (one second
    /// on each of two cores is 2·10⁹): v1 `cpuacct.usage`, v2 `cpu.stat`
    /// `usage_usec` × 1000.
    pub usage_core_ns: Option<u64>,
    /// CPU pressure (`cpu.pressure`, cgroup v2 with PSI).
    pub pressure: Option<Pressure>,
}

/// Memory usage of a cgroup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryStats {
    /// Bytes charged to the cgroup, page cache included: v1
    /// `memory.usage_in_bytes`, v2 `memory.current`.
    pub usage_bytes: Option<u64>,
    /// Usage minus the inactive file cache (v1 `total_inactive_file`, v2
    /// `inactive_file` of `memory.stat`), never below zero: what the
    /// kernel cannot easily reclaim, the figure the kubelet evicts on.
    pub working_set_bytes: Option<u64>,
    /// Anonymous memory: v1 `total_rss`, v2 `anon` (as cAdvisor).
    pub rss_bytes: Option<u64>,
    /// Cumulative page faults (`total_pgfault` / `pgfault`).
    pub page_faults: Option<u64>,
    /// Cumulative major page faults, those that read from disk
    /// (`total_pgmajfault` / `pgmajfault`).
    pub major_page_faults: Option<u64>,
    /// The hard limit (v1 `memory.limit_in_bytes`, v2 `memory.max`);
    /// `None` when there is none.
    pub limit_bytes: Option<u64>,
    /// Limit minus working set, never below zero; `None` without a limit.
    pub available_bytes: Option<u64>,
    /// Swap in use: v2 `memory.swap.current`; v1
    /// `memory.memsw.usage_in_bytes` minus usage (memsw is memory plus
    /// swap). `None` without swap accounting.
    pub swap_usage_bytes: Option<u64>,
    /// How much more may be swapped before the limit: v2 `memory.swap.max`
    /// minus swap in use; v1 memsw limit minus memsw usage (the memory +
    /// swap budget left). `None` without a swap limit.
    pub swap_available_bytes: Option<u64>,
    /// Memory pressure (`memory.pressure`, cgroup v2 with PSI).
    pub pressure: Option<Pressure>,
}

/// Block I/O of a cgroup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IoStats {
    /// I/O pressure (`io.pressure`, cgroup v2 with PSI).
    pub pressure: Option<Pressure>,
}

/// Pressure stall information of one resource (a `*.pressure` file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pressure {
    /// Time in which at least one task stalled on the resource.
    pub some: Option<PressureLine>,
    /// Time in which all non-idle tasks stalled at once (absent from
    /// `cpu.pressure` before Linux 5.13).
    pub full: Option<PressureLine>,
}

/// One line of a pressure file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PressureLine {
    /// Share of wall time stalled over the last 10 s, in percent.
    pub avg10: f64,
    /// The same over 60 s.
    pub avg60: f64,
    /// The same over 300 s.
    pub avg300: f64,
    /// Cumulative stall time in microseconds, as the kernel reports it.
    pub total_us: u64,
}

impl PressureLine {
    /// Cumulative stall time in nanoseconds (what the CRI's `PsiData.total`
    /// carries).
    pub fn total_ns(&self) -> u64 {
        self.total_us.saturating_mul(1000)
    }
}

impl CgroupReader {
    /// A reader for the hierarchies in `hierarchy` (detect it once with
    /// [`Hierarchy::detect`] and keep the reader).
    ///
    /// On v1 the cpuacct, memory and pids hierarchies are recognised by
    /// their mount point's name (`cpu,cpuacct`), or for cpuacct and memory
    /// by their files when the name says nothing.
    pub fn new(hierarchy: &Hierarchy) -> Result<CgroupReader, StatsError> {
        let layout = match hierarchy {
            Hierarchy::V2(_) => Layout::V2(hierarchy.clone()),
            Hierarchy::V1(all) => {
                let named = |controller: &str| {
                    all.iter().find(|mount| {
                        mount
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.split(',').any(|c| c == controller))
                    })
                };
                let probed = |marker: &str| all.iter().find(|mount| mount.join(marker).is_file());
                let roles = [
                    named("cpuacct").or_else(|| probed("cpuacct.usage")),
                    named("memory").or_else(|| probed("memory.stat")),
                    named("pids"),
                ];
                let mut mounts: Vec<PathBuf> = Vec::new();
                let [cpuacct, memory, pids] = roles.map(|mount| {
                    let mount = mount?;
                    Some(match mounts.iter().position(|m| m == mount) {
                        Some(i) => i,
                        None => {
                            mounts.push(mount.clone());
                            mounts.len() - 1
                        }
                    })
                });
                if mounts.is_empty() {
                    let mounts = all.iter().map(|m| m.display().to_string());
                    return Err(StatsError::NoController {
                        mounts: mounts.collect::<Vec<_>>().join(", "),
                    });
                }
                Layout::V1 {
                    mounts: Hierarchy::V1(mounts),
                    cpuacct,
                    memory,
                    pids,
                }
            }
        };
        Ok(CgroupReader { layout })
    }

    /// Reads the figures of cgroup `path`, relative to the hierarchy roots
    /// (`/kubepods/pod1/abc`, or a systemd path from
    /// [`crate::cgroup::object_path`]).
    ///
    /// A cgroup that does not exist is [`StatsError::CgroupNotFound`]; a
    /// file that exists but cannot be read or parsed is an error naming it.
    pub fn read(&self, path: &str) -> Result<CgroupStats, StatsError> {
        let mut stats = CgroupStats {
            timestamp: SystemTime::now(),
            monotonic: Instant::now(),
            cpu: CpuStats::default(),
            memory: MemoryStats::default(),
            io: IoStats::default(),
            process_count: None,
        };
        let mut files = Files::default();
        // One directory per mount (one on v2), never none.
        let (dirs, result) = match &self.layout {
            Layout::V2(hierarchy) => {
                let dirs = hierarchy.dirs(path)?;
                let result = match dirs.first() {
                    Some(dir) => read_v2(dir, &mut files, &mut stats),
                    None => Err(ReadError::Gone),
                };
                (dirs, result)
            }
            Layout::V1 {
                mounts,
                cpuacct,
                memory,
                pids,
            } => {
                let dirs = mounts.dirs(path)?;
                let dir = |i: &Option<usize>| i.and_then(|i| dirs.get(i));
                let result = read_v1(
                    [dir(cpuacct), dir(memory), dir(pids)],
                    &mut files,
                    &mut stats,
                );
                (dirs, result)
            }
        };
        match result {
            Ok(()) => Ok(stats),
            Err(ReadError::Other(e)) => Err(e),
            Err(ReadError::Gone) => Err(StatsError::CgroupNotFound {
                path: crate::input::quoted(path),
                dir: dirs.into_iter().next().unwrap_or_default(),
            }),
        }
    }
}

/// An error while reading one cgroup: its directory is missing, or
/// something else went wrong.
enum ReadError {
    Gone,
    Other(StatsError),
}

impl From<StatsError> for ReadError {
    fn from(e: StatsError) -> ReadError {
        ReadError::Other(e)
    }
}

/// What reading one cgroup file found.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    /// The file's text is in [`Files::text`].
    Text,
    /// The cgroup exists but does not have this file (controller off,
    /// swap accounting off, PSI disabled).
    NoFile,
    /// The cgroup's directory does not exist (or was just removed).
    NoCgroup,
}

/// One reusable buffer for the files of a read, and the path of the last
/// file read (for error messages).
#[derive(Default)]
struct Files {
    path: PathBuf,
    text: String,
}

impl Files {
    fn read(&mut self, dir: &Path, name: &str) -> Result<Got, StatsError> {
        self.path.clear();
        self.path.push(dir);
        self.path.push(name);
        self.text.clear();
        let result =
            std::fs::File::open(&self.path).and_then(|mut f| f.read_to_string(&mut self.text));
        match result {
            Ok(_) => Ok(Got::Text),
            // ENODEV: the cgroup was removed while the file was open.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => Ok(Got::NoCgroup),
            // EOPNOTSUPP: PSI switched off (`cgroup.pressure` 0, `psi=0`),
            // or `cgroup.procs` of a threaded cgroup.
            Err(e) if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => Ok(Got::NoFile),
            Err(e) if e.kind() == ErrorKind::NotFound => match dir.try_exists() {
                Ok(true) => Ok(Got::NoFile),
                Ok(false) => Ok(Got::NoCgroup),
                Err(source) => Err(StatsError::Read {
                    path: dir.to_path_buf(),
                    source,
                }),
            },
            Err(source) => Err(StatsError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Reads a file and parses it with `parse` when it is there.
    fn parse<T>(
        &mut self,
        dir: &Path,
        name: &str,
        parse: impl FnOnce(&Path, &str) -> Result<T, StatsError>,
    ) -> Result<Option<T>, ReadError> {
        match self.read(dir, name)? {
            Got::Text => Ok(Some(parse(&self.path, &self.text)?)),
            Got::NoFile => Ok(None),
            Got::NoCgroup => Err(ReadError::Gone),
        }
    }
}

/// The `memory.stat` keys stats use.
#[derive(Default)]
struct MemoryStat {
    inactive_file: Option<u64>,
    rss: Option<u64>,
    pgfault: Option<u64>,
    pgmajfault: Option<u64>,
}

fn read_v2(dir: &Path, files: &mut Files, stats: &mut CgroupStats) -> Result<(), ReadError> {
    // `cpu.stat` is a core file of every v2 cgroup: its absence means the
    // cgroup is gone, and checking it first makes that the error.
    match files.read(dir, "cpu.stat")? {
        Got::Text => {
            let mut usage_us = None;
            flat_keyed(&files.path, &files.text, |key, value| {
                if key == "usage_usec" {
                    usage_us = Some(value);
                }
            })?;
            stats.cpu.usage_core_ns = usage_us.map(|us| us.saturating_mul(1000));
        }
        Got::NoFile => {}
        Got::NoCgroup => return Err(ReadError::Gone),
    }
    stats.cpu.pressure = files.parse(dir, "cpu.pressure", pressure)?;

    let memory = &mut stats.memory;
    memory.usage_bytes = files.parse(dir, "memory.current", single_u64)?;
    if memory.usage_bytes.is_some() {
        memory.limit_bytes = files.parse(dir, "memory.max", limit)?.flatten();
        let stat = files.parse(dir, "memory.stat", |path, text| {
            let mut stat = MemoryStat::default();
            flat_keyed(path, text, |key, value| match key {
                "inactive_file" => stat.inactive_file = Some(value),
                "anon" => stat.rss = Some(value),
                "pgfault" => stat.pgfault = Some(value),
                "pgmajfault" => stat.pgmajfault = Some(value),
                _ => {}
            })?;
            Ok(stat)
        })?;
        apply_memory_stat(memory, stat);
        memory.swap_usage_bytes = files.parse(dir, "memory.swap.current", single_u64)?;
        if let Some(swap) = memory.swap_usage_bytes
            && let Some(max) = files.parse(dir, "memory.swap.max", limit)?.flatten()
        {
            memory.swap_available_bytes = Some(max.saturating_sub(swap));
        }
    }
    stats.memory.pressure = files.parse(dir, "memory.pressure", pressure)?;
    stats.io.pressure = files.parse(dir, "io.pressure", pressure)?;

    stats.process_count = match files.parse(dir, "pids.current", single_u64)? {
        Some(count) => Some(count),
        None => count_procs(dir, files)?,
    };
    Ok(())
}

/// `dirs` are the cgroup's directories in the cpuacct, memory and pids
/// hierarchies (`None` where that hierarchy is not mounted). A controller
/// whose directory is missing contributes nothing; the cgroup is missing
/// when none has it.
fn read_v1(
    dirs: [Option<&PathBuf>; 3],
    files: &mut Files,
    stats: &mut CgroupStats,
) -> Result<(), ReadError> {
    let [cpuacct, memory_dir, pids] = dirs;
    // The directory the cgroup was found in first.
    let mut found = None;
    if read_first(files, cpuacct, "cpuacct.usage", &mut found)? {
        stats.cpu.usage_core_ns = Some(single_u64(&files.path, &files.text)?);
    }

    if read_first(files, memory_dir, "memory.usage_in_bytes", &mut found)?
        && let Some(dir) = memory_dir
    {
        let usage = single_u64(&files.path, &files.text)?;
        let memory = &mut stats.memory;
        memory.usage_bytes = Some(usage);
        memory.limit_bytes = files.parse(dir, "memory.limit_in_bytes", limit)?.flatten();
        let stat = files.parse(dir, "memory.stat", |path, text| {
            // The `total_` keys cover the descendants too; the plain ones
            // are kept for kernels without hierarchical accounting.
            let (mut total, mut local) = (MemoryStat::default(), MemoryStat::default());
            flat_keyed(path, text, |key, value| match key {
                "total_inactive_file" => total.inactive_file = Some(value),
                "total_rss" => total.rss = Some(value),
                "total_pgfault" => total.pgfault = Some(value),
                "total_pgmajfault" => total.pgmajfault = Some(value),
                "inactive_file" => local.inactive_file = Some(value),
                "rss" => local.rss = Some(value),
                "pgfault" => local.pgfault = Some(value),
                "pgmajfault" => local.pgmajfault = Some(value),
                _ => {}
            })?;
            Ok(MemoryStat {
                inactive_file: total.inactive_file.or(local.inactive_file),
                rss: total.rss.or(local.rss),
                pgfault: total.pgfault.or(local.pgfault),
                pgmajfault: total.pgmajfault.or(local.pgmajfault),
            })
        })?;
        apply_memory_stat(memory, stat);
        if let Some(memsw) = files.parse(dir, "memory.memsw.usage_in_bytes", single_u64)? {
            memory.swap_usage_bytes = Some(memsw.saturating_sub(usage));
            if let Some(memsw_limit) = files
                .parse(dir, "memory.memsw.limit_in_bytes", limit)?
                .flatten()
            {
                memory.swap_available_bytes = Some(memsw_limit.saturating_sub(memsw));
            }
        }
    }

    if read_first(files, pids, "pids.current", &mut found)? {
        stats.process_count = Some(single_u64(&files.path, &files.text)?);
    }

    let Some(dir) = found else {
        return Err(ReadError::Gone);
    };
    if stats.process_count.is_none() {
        stats.process_count = count_procs(dir, files)?;
    }
    Ok(())
}

/// Reads a controller's first file, which tells whether the cgroup exists
/// in that hierarchy: `true` when its text is in `files`. `found` is set to
/// the first directory that exists.
fn read_first<'a>(
    files: &mut Files,
    dir: Option<&'a PathBuf>,
    name: &str,
    found: &mut Option<&'a PathBuf>,
) -> Result<bool, StatsError> {
    let Some(dir) = dir else { return Ok(false) };
    let got = files.read(dir, name)?;
    if got != Got::NoCgroup && found.is_none() {
        *found = Some(dir);
    }
    Ok(got == Got::Text)
}

/// Working set, rss, faults and available bytes from `memory.stat`, with
/// cAdvisor's rules: no inactive file count means a working set equal to
/// usage; no `memory.stat` means no working set.
fn apply_memory_stat(memory: &mut MemoryStats, stat: Option<MemoryStat>) {
    let Some(stat) = stat else { return };
    memory.working_set_bytes = memory
        .usage_bytes
        .map(|usage| usage.saturating_sub(stat.inactive_file.unwrap_or(0)));
    memory.rss_bytes = stat.rss;
    memory.page_faults = stat.pgfault;
    memory.major_page_faults = stat.pgmajfault;
    if let (Some(limit), Some(working_set)) = (memory.limit_bytes, memory.working_set_bytes) {
        memory.available_bytes = Some(limit.saturating_sub(working_set));
    }
}

/// The distinct processes in `cgroup.procs` of `dir` and its descendants
/// (v1 may list a process twice). Descendants that vanish meanwhile are
/// skipped; `None` when `dir` itself has no `cgroup.procs`.
fn count_procs(dir: &Path, files: &mut Files) -> Result<Option<u64>, ReadError> {
    let mut pids = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        match files.read(&current, "cgroup.procs")? {
            Got::Text => {
                for (i, line) in files.text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    let pid: u32 = line.parse().map_err(|_| {
                        malformed(&files.path, i + 1, "expected a process id", line)
                    })?;
                    pids.insert(pid);
                }
            }
            Got::NoFile if current == dir => return Ok(None),
            Got::NoCgroup if current == dir => return Err(ReadError::Gone),
            Got::NoFile | Got::NoCgroup => continue,
        }
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(StatsError::Read {
                    path: current,
                    source,
                }
                .into());
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(StatsError::Read {
                        path: current.clone(),
                        source,
                    }
                    .into());
                }
            };
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    Ok(Some(u64::try_from(pids.len()).unwrap_or(u64::MAX)))
}

/// A file holding one number.
fn single_u64(path: &Path, text: &str) -> Result<u64, StatsError> {
    let value = text.trim();
    value
        .parse()
        .map_err(|_| malformed(path, 1, "expected one unsigned number", value))
}

/// A limit file: a number, or `max` (v2) or a value above 2^62 (v1) for
/// no limit (`None`).
fn limit(path: &Path, text: &str) -> Result<Option<u64>, StatsError> {
    let value = text.trim();
    if value == "max" {
        return Ok(None);
    }
    let limit: u64 = value
        .parse()
        .map_err(|_| malformed(path, 1, "expected a number of bytes or `max`", value))?;
    Ok((limit <= UNLIMITED_ABOVE).then_some(limit))
}

/// A flat-keyed file (`memory.stat`, `cpu.stat`): one `<key> <number>`
/// per line; every line must have that shape.
fn flat_keyed(path: &Path, text: &str, mut each: impl FnMut(&str, u64)) -> Result<(), StatsError> {
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut words = line.split_ascii_whitespace();
        let parsed = match (words.next(), words.next(), words.next()) {
            (Some(key), Some(value), None) => value.parse().ok().map(|v| (key, v)),
            _ => None,
        };
        let Some((key, value)) = parsed else {
            return Err(malformed(
                path,
                i + 1,
                "expected `<key> <unsigned number>`",
                line,
            ));
        };
        each(key, value);
    }
    Ok(())
}

/// A pressure file: `some` and `full` lines of
/// `avg10=<f> avg60=<f> avg300=<f> total=<µs>`.
fn pressure(path: &Path, text: &str) -> Result<Pressure, StatsError> {
    let mut out = Pressure::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason| malformed(path, i + 1, reason, line);
        let mut words = line.split_ascii_whitespace();
        let slot = match words.next() {
            Some("some") => &mut out.some,
            Some("full") => &mut out.full,
            _ => return Err(bad("expected a `some` or `full` line")),
        };
        let (mut avg10, mut avg60, mut avg300, mut total) = (None, None, None, None);
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(bad("expected `<name>=<value>` fields"));
            };
            let avg = || {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| bad("expected a percentage in avg10, avg60 and avg300"))
            };
            match key {
                "avg10" => avg10 = Some(avg()?),
                "avg60" => avg60 = Some(avg()?),
                "avg300" => avg300 = Some(avg()?),
                "total" => {
                    total = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| bad("expected microseconds in total"))?,
                    );
                }
                // Fields a later kernel may add.
                _ => {}
            }
        }
        let (Some(avg10), Some(avg60), Some(avg300), Some(total_us)) =
            (avg10, avg60, avg300, total)
        else {
            return Err(bad("expected avg10, avg60, avg300 and total"));
        };
        *slot = Some(PressureLine {
            avg10,
            avg60,
            avg300,
            total_us,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CGROUP: &str = "/kubepods/pod1/abc";

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).expect("create cgroup dir");
        std::fs::write(dir.join(name), text).expect("write cgroup file");
    }

    /// A fake v2 cgroup with every file, memory unlimited, swap in use.
    fn v2_tree() -> (tempfile::TempDir, CgroupReader, PathBuf) {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("kubepods/pod1/abc");
        write(
            &dir,
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        );
        write(
            &dir,
            "cpu.pressure",
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=4242\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
        );
        write(&dir, "memory.current", "10000\n");
        write(&dir, "memory.max", "max\n");
        write(
            &dir,
            "memory.stat",
            "anon 4000\nfile 5000\ninactive_file 3000\nactive_file 2000\npgfault 10\npgmajfault 2\n",
        );
        write(&dir, "memory.swap.current", "100\n");
        write(&dir, "memory.swap.max", "max\n");
        write(
            &dir,
            "memory.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        write(
            &dir,
            "io.pressure",
            "some avg10=3.00 avg60=2.00 avg300=1.00 total=99\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        write(&dir, "pids.current", "3\n");
        let reader =
            CgroupReader::new(&Hierarchy::V2(root.path().to_path_buf())).expect("v2 reader");
        (root, reader, dir)
    }

    /// A fake v1 host (`cpu,cpuacct`, `memory`, `pids`, `systemd` mounts)
    /// with the cgroup in each, memory unlimited, swap accounting on.
    fn v1_tree() -> (tempfile::TempDir, CgroupReader, [PathBuf; 3]) {
        let root = tempfile::tempdir().expect("tempdir");
        let mounts: Vec<PathBuf> = ["cpu,cpuacct", "memory", "pids", "systemd"]
            .iter()
            .map(|m| root.path().join(m))
            .collect();
        let dir = |m: &PathBuf| m.join("kubepods/pod1/abc");
        let (cpu, memory, pids) = (dir(&mounts[0]), dir(&mounts[1]), dir(&mounts[2]));
        write(&cpu, "cpuacct.usage", "123456789\n");
        write(&memory, "memory.usage_in_bytes", "20000\n");
        write(&memory, "memory.limit_in_bytes", "9223372036854771712\n");
        write(
            &memory,
            "memory.stat",
            "cache 1\nrss 2\ninactive_file 3\npgfault 4\npgmajfault 5\n\
             total_cache 9000\ntotal_rss 8000\ntotal_inactive_file 6000\n\
             total_pgfault 70\ntotal_pgmajfault 7\n",
        );
        write(&memory, "memory.memsw.usage_in_bytes", "20500\n");
        write(
            &memory,
            "memory.memsw.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(&pids, "pids.current", "4\n");
        std::fs::create_dir_all(dir(&mounts[3])).expect("systemd dir");
        let reader = CgroupReader::new(&Hierarchy::V1(mounts)).expect("v1 reader");
        (root, reader, [cpu, memory, pids])
    }

    #[test]
    fn v2_reads_every_figure() {
        let (_root, reader, _) = v2_tree();
        let stats = reader.read(CGROUP).expect("stats");
        assert_eq!(stats.cpu.usage_core_ns, Some(1_500_000));
        let cpu_psi = stats.cpu.pressure.expect("cpu pressure");
        assert_eq!(
            cpu_psi.some,
            Some(PressureLine {
                avg10: 1.5,
                avg60: 0.25,
                avg300: 0.0,
                total_us: 4242
            })
        );
        assert_eq!(cpu_psi.some.map(|l| l.total_ns()), Some(4_242_000));
        assert_eq!(cpu_psi.full.map(|l| l.total_us), Some(7));
        assert_eq!(
            stats.memory,
            MemoryStats {
                usage_bytes: Some(10000),
                working_set_bytes: Some(7000),
                rss_bytes: Some(4000),
                page_faults: Some(10),
                major_page_faults: Some(2),
                limit_bytes: None,
                available_bytes: None,
                swap_usage_bytes: Some(100),
                swap_available_bytes: None,
                pressure: stats.memory.pressure.clone(),
            }
        );
        assert_eq!(
            stats
                .memory
                .pressure
                .and_then(|p| p.some)
                .map(|l| l.total_us),
            Some(1)
        );
        let io = stats.io.pressure.expect("io pressure");
        assert_eq!(
            io.some.map(|l| (l.avg10, l.avg60, l.avg300)),
            Some((3.0, 2.0, 1.0))
        );
        assert_eq!(stats.process_count, Some(3));
    }

    #[test]
    fn v2_limits_give_available_bytes() {
        let (_root, reader, dir) = v2_tree();
        write(&dir, "memory.max", "16000\n");
        write(&dir, "memory.swap.max", "1000\n");
        let memory = reader.read(CGROUP).expect("stats").memory;
        assert_eq!(memory.limit_bytes, Some(16000));
        assert_eq!(memory.available_bytes, Some(9000));
        assert_eq!(memory.swap_available_bytes, Some(900));

        // Over the limit (possible for a moment): zero, not a wrap-around.
        write(&dir, "memory.max", "5000\n");
        let memory = reader.read(CGROUP).expect("stats").memory;
        assert_eq!(memory.available_bytes, Some(0));
    }

    #[test]
    fn working_set_never_goes_below_zero() {
        let (_root, reader, dir) = v2_tree();
        write(&dir, "memory.stat", "anon 1\ninactive_file 50000\n");
        let memory = reader.read(CGROUP).expect("stats").memory;
        assert_eq!(memory.working_set_bytes, Some(0));
        // No inactive_file line: cAdvisor's working set is the usage.
        write(&dir, "memory.stat", "anon 1\n");
        let memory = reader.read(CGROUP).expect("stats").memory;
        assert_eq!(memory.working_set_bytes, Some(10000));
        assert_eq!(memory.page_faults, None);
    }

    #[test]
    fn v2_missing_files_are_none_not_zero() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("kubepods/pod1/abc");
        // No memory or pids controller, no PSI: only the core files.
        write(&dir, "cpu.stat", "usage_usec 7\n");
        write(&dir, "cgroup.procs", "10\n11\n");
        write(&dir.join("child"), "cgroup.procs", "12\n");
        write(&dir.join("child/grandchild"), "cgroup.procs", "13\n14\n");
        let reader = CgroupReader::new(&Hierarchy::V2(root.path().into())).expect("reader");
        let stats = reader.read(CGROUP).expect("stats");
        assert_eq!(stats.cpu.usage_core_ns, Some(7000));
        assert_eq!(stats.cpu.pressure, None);
        assert_eq!(stats.memory, MemoryStats::default());
        assert_eq!(stats.io.pressure, None);
        assert_eq!(stats.process_count, Some(5));
    }

    #[test]
    fn v2_without_memory_stat_has_no_working_set() {
        let (_root, reader, dir) = v2_tree();
        std::fs::remove_file(dir.join("memory.stat")).expect("remove");
        std::fs::remove_file(dir.join("memory.swap.current")).expect("remove");
        let memory = reader.read(CGROUP).expect("stats").memory;
        assert_eq!(memory.usage_bytes, Some(10000));
        assert_eq!(memory.working_set_bytes, None);
        assert_eq!(memory.rss_bytes, None);
        assert_eq!(memory.swap_usage_bytes, None);
        assert_eq!(memory.swap_available_bytes, None);
    }

    #[test]
    fn missing_cgroup_is_not_found_naming_it() {
        let (root, reader, _) = v2_tree();
        let err = reader.read("/kubepods/pod1/gone").expect_err("missing");
        assert!(matches!(err, StatsError::CgroupNotFound { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "cgroup \"/kubepods/pod1/gone\" does not exist: no {}",
                root.path().join("kubepods/pod1/gone").display()
            )
        );

        let (root, reader, _) = v1_tree();
        let err = reader.read("kubepods/gone").expect_err("missing");
        assert!(matches!(err, StatsError::CgroupNotFound { .. }), "{err:?}");
        assert!(
            err.to_string().contains(
                &root
                    .path()
                    .join("cpu,cpuacct/kubepods/gone")
                    .display()
                    .to_string()
            ),
            "{err}"
        );
    }

    #[test]
    fn escaping_paths_are_refused() {
        let (_root, reader, _) = v2_tree();
        let err = reader.read("/kubepods/../../etc").expect_err("escape");
        assert!(matches!(err, StatsError::Path(_)), "{err:?}");
    }

    #[test]
    fn malformed_files_name_file_and_line() {
        let (_root, reader, dir) = v2_tree();
        write(&dir, "memory.stat", "anon 4000\nfile 12x\n");
        let err = reader.read(CGROUP).expect_err("malformed");
        assert_eq!(
            err.to_string(),
            format!(
                "{} line 2: expected `<key> <unsigned number>`: \"file 12x\"",
                dir.join("memory.stat").display()
            )
        );

        let (_root, reader, dir) = v2_tree();
        write(&dir, "cpu.stat", "usage_usec 1 2\n");
        let err = reader.read(CGROUP).expect_err("malformed");
        assert!(
            matches!(err, StatsError::Malformed { line: 1, .. }),
            "{err:?}"
        );

        let (_root, reader, dir) = v2_tree();
        write(&dir, "memory.max", "lots\n");
        let err = reader.read(CGROUP).expect_err("malformed");
        assert_eq!(
            err.to_string(),
            format!(
                "{} line 1: expected a number of bytes or `max`: \"lots\"",
                dir.join("memory.max").display()
            )
        );

        let (_root, reader, dir) = v2_tree();
        write(&dir, "pids.current", "-1\n");
        let err = reader.read(CGROUP).expect_err("malformed");
        assert!(
            err.to_string().contains("expected one unsigned number"),
            "{err}"
        );
    }

    #[test]
    fn malformed_pressure_lines_are_errors() {
        let path = Path::new("/x/io.pressure");
        let cases = [
            (
                "most avg10=0.00 avg60=0.00 avg300=0.00 total=1",
                "expected a `some` or `full` line",
            ),
            (
                "some avg10=0.00 avg60=0.00 total=1",
                "expected avg10, avg60, avg300 and total",
            ),
            (
                "some avg10=abc avg60=0.00 avg300=0.00 total=1",
                "expected a percentage in avg10, avg60 and avg300",
            ),
            (
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=-3",
                "expected microseconds in total",
            ),
            (
                "some avg10 avg60=0.00 avg300=0.00 total=1",
                "expected `<name>=<value>` fields",
            ),
        ];
        for (line, reason) in cases {
            let text = format!("full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n{line}\n");
            let err = pressure(path, &text).expect_err(line);
            assert_eq!(
                err.to_string(),
                format!("/x/io.pressure line 2: {reason}: {line:?}"),
                "{line}"
            );
        }
        // A field a later kernel adds is not an error; an empty file is
        // empty pressure.
        let p = pressure(
            path,
            "some avg10=1.00 avg60=0.00 avg300=0.00 total=5 extra=1\n",
        )
        .expect("extra field");
        assert_eq!(p.some.map(|l| l.total_us), Some(5));
        assert_eq!(pressure(path, "").expect("empty"), Pressure::default());
    }

    #[test]
    fn unreadable_file_is_a_read_error() {
        let (_root, reader, dir) = v2_tree();
        // A directory where a file should be: read fails with EISDIR.
        std::fs::remove_file(dir.join("memory.current")).expect("remove");
        std::fs::create_dir(dir.join("memory.current")).expect("mkdir");
        let err = reader.read(CGROUP).expect_err("unreadable");
        match &err {
            StatsError::Read { path, .. } => assert_eq!(path, &dir.join("memory.current")),
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn v1_reads_every_figure() {
        let (_root, reader, _) = v1_tree();
        let stats = reader.read(CGROUP).expect("stats");
        assert_eq!(stats.cpu.usage_core_ns, Some(123_456_789));
        assert_eq!(
            stats.memory,
            MemoryStats {
                usage_bytes: Some(20000),
                working_set_bytes: Some(14000),
                rss_bytes: Some(8000),
                page_faults: Some(70),
                major_page_faults: Some(7),
                // 2^63 - 4096 is "unlimited".
                limit_bytes: None,
                available_bytes: None,
                swap_usage_bytes: Some(500),
                swap_available_bytes: None,
                pressure: None,
            }
        );
        assert_eq!(stats.cpu.pressure, None);
        assert_eq!(stats.io.pressure, None);
        assert_eq!(stats.process_count, Some(4));
    }

    #[test]
    fn v1_limits_give_available_bytes() {
        let (_root, reader, [_, memory, _]) = v1_tree();
        write(&memory, "memory.limit_in_bytes", "30000\n");
        write(&memory, "memory.memsw.limit_in_bytes", "40000\n");
        let memory = reader.read(CGROUP).expect("stats").memory;
        assert_eq!(memory.limit_bytes, Some(30000));
        assert_eq!(memory.available_bytes, Some(16000));
        assert_eq!(memory.swap_available_bytes, Some(19500));
    }

    #[test]
    fn v1_without_swap_accounting_has_no_swap() {
        let (_root, reader, [_, memory, _]) = v1_tree();
        std::fs::remove_file(memory.join("memory.memsw.usage_in_bytes")).expect("remove");
        std::fs::remove_file(memory.join("memory.memsw.limit_in_bytes")).expect("remove");
        let memory = reader.read(CGROUP).expect("stats").memory;
        assert_eq!(memory.swap_usage_bytes, None);
        assert_eq!(memory.swap_available_bytes, None);
        assert_eq!(memory.usage_bytes, Some(20000));
    }

    #[test]
    fn v1_without_pids_controller_counts_processes() {
        let (_root, reader, [cpu, _, pids]) = v1_tree();
        std::fs::remove_dir_all(&pids).expect("remove pids cgroup");
        // Nothing to count from: no figure.
        assert_eq!(reader.read(CGROUP).expect("stats").process_count, None);
        // v1 may list a process twice; descendants count too.
        write(&cpu, "cgroup.procs", "5\n6\n5\n");
        write(&cpu.join("sub"), "cgroup.procs", "7\n");
        assert_eq!(reader.read(CGROUP).expect("stats").process_count, Some(3));
        write(&cpu.join("sub"), "cgroup.procs", "7\nseven\n");
        let err = reader.read(CGROUP).expect_err("malformed");
        assert_eq!(
            err.to_string(),
            format!(
                "{} line 2: expected a process id: \"seven\"",
                cpu.join("sub/cgroup.procs").display()
            )
        );
    }

    #[test]
    fn v1_cgroup_missing_in_one_hierarchy_leaves_its_figures_out() {
        let (_root, reader, [_, memory, _]) = v1_tree();
        std::fs::remove_dir_all(&memory).expect("remove memory cgroup");
        let stats = reader.read(CGROUP).expect("stats");
        assert_eq!(stats.cpu.usage_core_ns, Some(123_456_789));
        assert_eq!(stats.memory, MemoryStats::default());
        assert_eq!(stats.process_count, Some(4));
    }

    #[test]
    fn v1_hierarchies_are_found_by_name_or_by_files() {
        let root = tempfile::tempdir().expect("tempdir");
        let acct = root.path().join("acct");
        write(&acct, "cpuacct.usage", "0\n");
        write(&acct.join("x"), "cpuacct.usage", "42\n");
        let reader = CgroupReader::new(&Hierarchy::V1(vec![
            acct.clone(),
            root.path().join("systemd"),
        ]))
        .expect("reader");
        let stats = reader.read("x").expect("stats");
        assert_eq!(stats.cpu.usage_core_ns, Some(42));
        assert_eq!(stats.memory.usage_bytes, None);

        let err = CgroupReader::new(&Hierarchy::V1(vec![root.path().join("systemd")]))
            .expect_err("no controller");
        assert!(matches!(err, StatsError::NoController { .. }), "{err:?}");
        assert!(err.to_string().contains("systemd"), "{err}");
    }
}
