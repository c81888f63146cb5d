//! Namespace pins: bind mounts of `/proc/<pid>/ns/<name>` on files under the
//! sandbox's state dir, which keep a namespace alive after its last process
//! exits and give containers a path to join it by.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{UnmountFlags, mount_bind, unmount};

use super::{Namespace, PauseError};

/// The pid file the pause process writes, atomically, once its pins exist.
pub const PID_FILE: &str = "pause.pid";

/// `<state_dir>/ns`, the directory of the pins.
pub fn ns_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ns")
}

/// `<state_dir>/ns/<name>`, the pin of one namespace; the path a container
/// joins it by.
pub fn pin_path(state_dir: &Path, namespace: Namespace) -> PathBuf {
    ns_dir(state_dir).join(namespace.name())
}

/// `<state_dir>/pause.pid`.
pub fn pid_file(state_dir: &Path) -> PathBuf {
    state_dir.join(PID_FILE)
}

/// Releases a sandbox's namespaces: unmounts and removes every pin under
/// `<state_dir>/ns`, the `ns` directory and a stale `pause.pid`.
///
/// Call it when the pod is removed, after its pause process has exited or
/// died; a namespace lives on while a process is still in it. Idempotent:
/// what is already gone is skipped.
pub fn unpin(state_dir: &Path) -> Result<(), PauseError> {
    for namespace in Namespace::ALL {
        release(&pin_path(state_dir, namespace))?;
    }
    remove_if_present(&ns_dir(state_dir), |p| std::fs::remove_dir(p))?;
    remove_if_present(&pid_file(state_dir), |p| std::fs::remove_file(p))
}

/// Unmounts `pin` (every layer, if it was bind-mounted more than once) and
/// removes the file.
fn release(pin: &Path) -> Result<(), PauseError> {
    loop {
        match unmount(pin, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
            Ok(()) => continue,
            // Not a mount point (any more), or not there at all.
            Err(Errno::INVAL | Errno::NOENT) => break,
            Err(e) => {
                return Err(PauseError::io(format!("unmounting {}", pin.display()), e));
            }
        }
    }
    remove_if_present(pin, |p| std::fs::remove_file(p))
}

fn remove_if_present(path: &Path, remove: fn(&Path) -> io::Result<()>) -> Result<(), PauseError> {
    match remove(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(PauseError::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// The pins one pause process creates. Until [`Pins::keep`] is called,
/// dropping it releases exactly what it created (never a pin it found), so
/// a failed start leaves nothing behind.
pub(crate) struct Pins {
    state_dir: PathBuf,
    created: Vec<PathBuf>,
    created_ns_dir: bool,
    keep: bool,
}

impl Pins {
    /// Creates the empty pin files for `namespaces`, refusing a state dir
    /// that already has any of them.
    pub(crate) fn create(state_dir: &Path, namespaces: &[Namespace]) -> Result<Self, PauseError> {
        let mut pins = Self {
            state_dir: state_dir.to_owned(),
            created: Vec::new(),
            created_ns_dir: false,
            keep: false,
        };
        if namespaces.is_empty() {
            return Ok(pins);
        }
        let dir = ns_dir(state_dir);
        match std::fs::create_dir(&dir) {
            Ok(()) => pins.created_ns_dir = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(PauseError::io(format!("creating {}", dir.display()), e)),
        }
        for &namespace in namespaces {
            let pin = pin_path(state_dir, namespace);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&pin)
            {
                Ok(_) => pins.created.push(pin),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(PauseError::InUse(pin));
                }
                Err(e) => return Err(PauseError::io(format!("creating {}", pin.display()), e)),
            }
        }
        Ok(pins)
    }

    /// Bind-mounts `source` (a `/proc/.../ns/<name>` file) on the pin of
    /// `namespace`.
    pub(crate) fn pin(&self, namespace: Namespace, source: &Path) -> Result<(), PauseError> {
        let pin = pin_path(&self.state_dir, namespace);
        mount_bind(source, &pin).map_err(|e| {
            PauseError::io(
                format!("pinning {} on {}", source.display(), pin.display()),
                e,
            )
        })
    }

    /// The pins are in place for good: from now on only [`unpin`] removes
    /// them.
    pub(crate) fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for pin in &self.created {
            if let Err(e) = release(pin) {
                eprintln!("berth-pause: cleaning up: {e}");
            }
        }
        if self.created_ns_dir {
            let _ = std::fs::remove_dir(ns_dir(&self.state_dir));
        }
    }
}
