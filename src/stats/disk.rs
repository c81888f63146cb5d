//! Disk usage of a directory tree (a container's writable layer), counted
//! like `du -x`: allocated blocks, hard links once, symlinks not followed,
//! other filesystems not entered.
//!
//! The walk goes through directory file descriptors (`openat` with
//! `O_NOFOLLOW`, `statx` relative to the parent), so a container that
//! swaps a directory for a symlink mid-walk cannot lead it outside the
//! tree, and path length never limits it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags, Statx, StatxAttributes, StatxFlags};

use super::StatsError;

/// How deep the walk descends. Each level holds one open directory, so
/// this bounds the descriptors one walk uses; deeper directories are
/// counted in [`DiskUsage::skipped`], not walked.
const MAX_DEPTH: usize = 256;

/// What a directory tree uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes allocated on disk (`st_blocks` × 512, as `du`), the root
    /// directory and every directory, file and symlink below it included;
    /// a file with several hard links in the tree counts once. Sparse
    /// files count what they allocate, not their size.
    pub used_bytes: u64,
    /// Distinct inodes in the tree, the root included.
    pub inodes_used: u64,
    /// Entries that could not be examined (permission denied, I/O error)
    /// and directories deeper than the walk goes: the figures above are
    /// then a lower bound. Entries that vanish during the walk are not
    /// counted here; they are simply gone.
    pub skipped: u64,
    /// When the walk finished.
    pub measured_at: SystemTime,
}

/// Measures the tree under `root`, on the calling thread.
///
/// It reads every directory of the tree and can take long on big trees:
/// from async code call [`disk_usage`], which runs this on the blocking
/// pool. Only a root that cannot be opened or examined is an error.
pub fn disk_usage_blocking(root: &Path) -> Result<DiskUsage, StatsError> {
    let root_error = |op: &'static str| {
        move |e: rustix::io::Errno| StatsError::DiskUsageRoot {
            path: root.to_path_buf(),
            op,
            source: e.into(),
        }
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(CWD, root, flags, Mode::empty()).map_err(root_error("open"))?;
    let top =
        rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, wanted()).map_err(root_error("stat"))?;
    let device = (top.stx_dev_major, top.stx_dev_minor);

    let mut walk = Walk {
        device,
        used_bytes: blocks_bytes(&top),
        inodes_used: 1,
        skipped: 0,
        linked: HashSet::new(),
    };
    let mut stack = vec![Dir::new(fd).map_err(root_error("read"))?];
    loop {
        let depth = stack.len();
        let Some(dir) = stack.last_mut() else { break };
        let entry = match dir.read() {
            None => {
                stack.pop();
                continue;
            }
            Some(Ok(entry)) => entry,
            Some(Err(rustix::io::Errno::NOENT)) => {
                stack.pop();
                continue;
            }
            Some(Err(_)) => {
                walk.skipped += 1;
                stack.pop();
                continue;
            }
        };
        let name = entry.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        let parent = match dir.fd() {
            Ok(fd) => fd,
            Err(_) => {
                walk.skipped += 1;
                continue;
            }
        };
        let stat = match rustix::fs::statx(parent, name, AtFlags::SYMLINK_NOFOLLOW, wanted()) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(_) => {
                walk.skipped += 1;
                continue;
            }
        };
        if (stat.stx_dev_major, stat.stx_dev_minor) != walk.device || is_mount_root(&stat) {
            // Another filesystem mounted inside the tree: not ours to count.
            continue;
        }
        walk.count(&stat);
        if FileType::from_raw_mode(u32::from(stat.stx_mode)) != FileType::Directory {
            continue;
        }
        if depth >= MAX_DEPTH {
            walk.skipped += 1;
            continue;
        }
        match open_child(parent, name) {
            Ok(child) => stack.push(child),
            Err(rustix::io::Errno::NOENT) => {}
            Err(_) => walk.skipped += 1,
        }
    }
    Ok(DiskUsage {
        used_bytes: walk.used_bytes,
        inodes_used: walk.inodes_used,
        skipped: walk.skipped,
        measured_at: SystemTime::now(),
    })
}

/// Measures the tree under `root` on tokio's blocking pool (see
/// [`disk_usage_blocking`]).
pub async fn disk_usage(root: PathBuf) -> Result<DiskUsage, StatsError> {
    let path = root.clone();
    tokio::task::spawn_blocking(move || disk_usage_blocking(&root))
        .await
        .map_err(|e| StatsError::DiskUsageTask {
            path,
            reason: e.to_string(),
        })?
}

/// The running totals of one walk.
struct Walk {
    device: (u32, u32),
    used_bytes: u64,
    inodes_used: u64,
    skipped: u64,
    /// Inodes with more than one link, seen once already.
    linked: HashSet<u64>,
}

impl Walk {
    fn count(&mut self, stat: &Statx) {
        let is_dir = FileType::from_raw_mode(u32::from(stat.stx_mode)) == FileType::Directory;
        // All entries are on one device here, so the inode number alone
        // identifies a file.
        if !is_dir && stat.stx_nlink > 1 && !self.linked.insert(stat.stx_ino) {
            return;
        }
        self.used_bytes = self.used_bytes.saturating_add(blocks_bytes(stat));
        self.inodes_used += 1;
    }
}

/// The `statx` fields the walk uses.
fn wanted() -> StatxFlags {
    StatxFlags::TYPE | StatxFlags::MODE | StatxFlags::NLINK | StatxFlags::INO | StatxFlags::BLOCKS
}

fn blocks_bytes(stat: &Statx) -> u64 {
    stat.stx_blocks.saturating_mul(512)
}

/// A bind mount of the same filesystem has the same device: `statx` says
/// whether the entry is the root of a mount (Linux 5.8 and later).
fn is_mount_root(stat: &Statx) -> bool {
    stat.stx_attributes_mask
        .contains(StatxAttributes::MOUNT_ROOT)
        && stat.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
}

fn open_child(parent: impl AsFd, name: &std::ffi::CStr) -> rustix::io::Result<Dir> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd: OwnedFd = rustix::fs::openat(parent, name, flags, Mode::empty())?;
    Dir::new(fd)
}

/// Remembers each directory's [`DiskUsage`] for a while, so listing the
/// stats of hundreds of containers does not walk hundreds of trees on
/// every call.
///
/// Callers asking for the same directory at once share one walk. Entries
/// not asked for during `10 × max_age` (at least a minute) are dropped.
#[derive(Debug)]
pub struct DiskUsageCache {
    max_age: Duration,
    slots: Mutex<Slots>,
}

/// One directory's last measurement and when it was taken; the async lock
/// makes concurrent callers wait for one walk.
type Slot = Arc<tokio::sync::Mutex<Option<(Instant, DiskUsage)>>>;

#[derive(Debug, Default)]
struct Slots {
    /// Each directory's slot and when it was last asked for.
    by_dir: HashMap<PathBuf, (Instant, Slot)>,
    last_sweep: Option<Instant>,
}

impl DiskUsageCache {
    /// A cache whose measurements are reused for `max_age`.
    pub fn new(max_age: Duration) -> DiskUsageCache {
        DiskUsageCache {
            max_age,
            slots: Mutex::new(Slots::default()),
        }
    }

    /// The usage of `dir`, measured at most `max_age` ago (walking it on
    /// the blocking pool when the last measurement is older).
    pub async fn get(&self, dir: &Path) -> Result<DiskUsage, StatsError> {
        let slot = {
            let now = Instant::now();
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            self.sweep(&mut slots, now);
            let entry = slots
                .by_dir
                .entry(dir.to_path_buf())
                .or_insert_with(|| (now, Arc::default()));
            entry.0 = now;
            Arc::clone(&entry.1)
        };
        let mut slot = slot.lock_owned().await;
        if let Some((at, usage)) = *slot
            && at.elapsed() <= self.max_age
        {
            return Ok(usage);
        }
        // The walk stores its result even when this caller gives up
        // waiting (a client timeout), so the next caller need not start
        // another walk of the same tree.
        let path = dir.to_path_buf();
        let walk = tokio::spawn(async move {
            let usage = disk_usage(path).await?;
            *slot = Some((Instant::now(), usage));
            Ok(usage)
        });
        walk.await.map_err(|e| StatsError::DiskUsageTask {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?
    }

    /// Forgets `dir` (its container was removed).
    pub fn forget(&self, dir: &Path) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.by_dir.remove(dir);
    }

    /// How many directories are remembered.
    pub fn len(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.by_dir.len()
    }

    /// Whether no directory is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn sweep(&self, slots: &mut Slots, now: Instant) {
        let idle = (self.max_age * 10).max(Duration::from_secs(60));
        if slots
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < idle / 2)
        {
            return;
        }
        slots.last_sweep = Some(now);
        slots
            .by_dir
            .retain(|_, (used, _)| now.saturating_duration_since(*used) <= idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    /// A tree with a file hard-linked twice, a sparse file, a symlink to a
    /// big directory, an empty directory and a nested one.
    fn tree() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        let p = root.path();
        std::fs::write(p.join("data"), vec![7u8; 100 * 1024]).expect("data");
        std::fs::create_dir_all(p.join("sub/deep")).expect("sub");
        std::fs::hard_link(p.join("data"), p.join("sub/link-to-data")).expect("hard link");
        let mut sparse = std::fs::File::create(p.join("sparse")).expect("sparse");
        sparse.set_len(1 << 30).expect("set_len");
        sparse.seek(SeekFrom::Start(512 << 20)).expect("seek");
        sparse.write_all(&[1u8; 4096]).expect("write");
        std::os::unix::fs::symlink("/usr", p.join("usr-link")).expect("symlink");
        std::fs::create_dir(p.join("empty")).expect("empty");
        root
    }

    /// `du -sx` in bytes and in inodes.
    fn du(path: &Path) -> (u64, u64) {
        let run = |arg: &str| -> u64 {
            let out = std::process::Command::new("du")
                .args(["-sx", arg])
                .arg(path)
                .output()
                .expect("run du");
            assert!(out.status.success(), "du {arg} failed");
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .expect("du figure")
        };
        (run("--block-size=1"), run("--inodes"))
    }

    #[test]
    fn counts_like_du_hard_links_once_sparse_by_blocks_symlinks_unfollowed() {
        let root = tree();
        let usage = disk_usage_blocking(root.path()).expect("usage");
        // root, data, sub, sub/deep, sparse, usr-link, empty: the hard link
        // is the same inode as data.
        assert_eq!(usage.inodes_used, 7);
        assert_eq!(usage.skipped, 0);
        // The same figure from the files' own metadata...
        let blocks: u64 = ["", "data", "sub", "sub/deep", "sparse", "usr-link", "empty"]
            .iter()
            .map(|name| {
                std::fs::symlink_metadata(root.path().join(name))
                    .expect("metadata")
                    .blocks()
                    * 512
            })
            .sum();
        assert_eq!(usage.used_bytes, blocks);
        // ...and from du.
        assert_eq!((usage.used_bytes, usage.inodes_used), du(root.path()));
        // Neither the 1 GiB sparse file nor /usr behind the symlink count.
        assert!(usage.used_bytes < 4 << 20, "{usage:?}");
        assert!(usage.used_bytes >= 100 * 1024, "{usage:?}");
    }

    #[test]
    fn root_errors_name_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let missing = root.path().join("missing");
        let err = disk_usage_blocking(&missing).expect_err("missing root");
        assert_eq!(
            err.to_string(),
            format!(
                "disk usage of {}: open: No such file or directory (os error 2)",
                missing.display()
            )
        );
        // The root is not followed either when it is a symlink.
        let link = root.path().join("link");
        std::os::unix::fs::symlink(root.path(), &link).expect("symlink");
        let err = disk_usage_blocking(&link).expect_err("symlink root");
        assert!(
            matches!(err, StatsError::DiskUsageRoot { op: "open", .. }),
            "{err:?}"
        );
        let file = root.path().join("file");
        std::fs::write(&file, "x").expect("file");
        let err = disk_usage_blocking(&file).expect_err("file root");
        assert!(
            matches!(err, StatsError::DiskUsageRoot { op: "open", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn too_deep_directories_are_counted_as_skipped() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut deep = root.path().to_path_buf();
        for _ in 0..MAX_DEPTH + 20 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).expect("deep tree");
        let usage = disk_usage_blocking(root.path()).expect("usage");
        // The root and MAX_DEPTH levels below it are counted; the last of
        // those is not entered.
        assert_eq!(usage.inodes_used, 1 + MAX_DEPTH as u64);
        assert_eq!(usage.skipped, 1);
    }

    #[tokio::test]
    async fn async_walk_and_cache() {
        let root = tree();
        let direct = disk_usage(root.path().to_path_buf()).await.expect("usage");
        assert_eq!(direct.inodes_used, 7);

        let cache = DiskUsageCache::new(Duration::from_secs(3600));
        let (a, b) = tokio::join!(cache.get(root.path()), cache.get(root.path()));
        let (a, b) = (a.expect("first"), b.expect("second"));
        assert_eq!(a, b, "concurrent callers share one walk");
        std::fs::write(root.path().join("more"), vec![1u8; 64 * 1024]).expect("more");
        let cached = cache.get(root.path()).await.expect("cached");
        assert_eq!(cached, a, "a fresh measurement is reused");
        assert_eq!(cache.len(), 1);
        cache.forget(root.path());
        assert!(cache.is_empty());
        let again = cache.get(root.path()).await.expect("measured again");
        assert_eq!(again.inodes_used, 8);

        let uncached = DiskUsageCache::new(Duration::ZERO);
        let first = uncached.get(root.path()).await.expect("first");
        std::fs::remove_file(root.path().join("more")).expect("remove");
        let second = uncached.get(root.path()).await.expect("second");
        assert_eq!((first.inodes_used, second.inodes_used), (8, 7));

        let err = cache
            .get(&root.path().join("missing"))
            .await
            .expect_err("missing");
        assert!(matches!(err, StatsError::DiskUsageRoot { .. }), "{err:?}");
    }
}
