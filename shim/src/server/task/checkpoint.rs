//! Checkpointing the task's container with CRIU, through the runtime
//! (`runc checkpoint`): the container's processes are dumped into an image
//! directory and, unless asked to exit, keep running. What the dump needs
//! beyond the flags ([`CheckpointOptions`]) the runtime finds in the
//! container's state: the namespaces it joined by path (the pod's network
//! namespace) are external to the dump, its stdio pipes are recorded for a
//! restore.
//!
//! Restoring is `Create` with the images' directory ([`restore_args`]):
//! `runc restore` in place of `runc create`, so the init runs from then on
//! and `Start` only marks it running.

use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::Stdio;

use super::super::record::Runner;
use super::{RuncFailure, RuncStdin, Status, Supervisor, TaskError};
use crate::checkpoint::CheckpointOptions;

/// CRIU's log in the work directory.
const DUMP_LOG: &str = "dump.log";
/// CRIU's log of a restore, beside the images.
const RESTORE_LOG: &str = "restore.log";
/// How many of CRIU's error lines a failure quotes.
const QUOTED_ERRORS: usize = 4;

impl Supervisor {
    /// Dumps the running container `id` into `image_path` (created if
    /// missing); CRIU's log and statistics go to the options' work path
    /// (the image path when it has none).
    pub(crate) fn checkpoint(
        &self,
        id: &str,
        image_path: &Path,
        options: &CheckpointOptions,
    ) -> Result<(), TaskError> {
        if !image_path.is_absolute() {
            return Err(TaskError::InvalidArgument(format!(
                "checkpoint: the image path {} is not absolute",
                image_path.display()
            )));
        }
        let work_path = options.work_path.as_deref().unwrap_or(image_path);
        if !work_path.is_absolute() {
            return Err(TaskError::InvalidArgument(format!(
                "checkpoint: the work path {} is not absolute",
                work_path.display()
            )));
        }
        let mut guard = self.lock();
        let task = Self::get(&mut guard, id)?;
        if !matches!(task.runner, Runner::Runc { .. }) {
            return Err(TaskError::FailedPrecondition(format!(
                "task {id:?} is the pause process, which cannot be checkpointed"
            )));
        }
        if task.view.status != Status::Running || task.view.exit.is_some() {
            return Err(TaskError::FailedPrecondition(format!(
                "task {id:?} is not running: only a running container can be checkpointed"
            )));
        }
        // It holds every memory page of the container: for root only.
        for dir in [image_path, work_path] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    TaskError::Internal(format!("checkpoint: cannot create {}: {e}", dir.display()))
                })?;
        }
        let args = checkpoint_args(id, image_path, work_path, options);
        self.runc_io(
            &task.runner,
            &args,
            RuncStdin::Null,
            Stdio::null(),
            Stdio::null(),
        )
        .map_err(|failure| match failure {
            RuncFailure::Spawn(message) => TaskError::Internal(message),
            RuncFailure::Failed {
                what,
                status,
                message,
            } => TaskError::Internal(format!(
                "{what} failed with status {status}: {}{}",
                message.trim(),
                criu_errors(&work_path.join(DUMP_LOG))
            )),
        })
    }
}

/// `restore` and its flags, up to (without) the options `runc create`
/// shares with it: the console socket, the pid file and the id. The init
/// is restored detached (the shim, subreaper, reaps it) and its stdio are
/// the runtime's, mapped by the runtime onto the ones it had when dumped.
/// CRIU's log (`restore.log`) goes beside the images.
pub(super) fn restore_args(bundle: &Path, images: &Path) -> Vec<OsString> {
    vec![
        "restore".into(),
        "--detach".into(),
        "--bundle".into(),
        bundle.into(),
        "--image-path".into(),
        images.into(),
        "--work-path".into(),
        images.parent().unwrap_or(images).into(),
    ]
}

/// A failed `runc restore` as a task error, with CRIU's reasons.
pub(super) fn restore_error(failure: RuncFailure, images: &Path) -> TaskError {
    match failure {
        RuncFailure::Spawn(message) => TaskError::Internal(message),
        RuncFailure::Failed {
            what,
            status,
            message,
        } => TaskError::Internal(format!(
            "{what} failed with status {status}: {}{}",
            message.trim(),
            criu_errors(&images.parent().unwrap_or(images).join(RESTORE_LOG))
        )),
    }
}

/// `checkpoint` and its flags for the runtime.
fn checkpoint_args(
    id: &str,
    image_path: &Path,
    work_path: &Path,
    options: &CheckpointOptions,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "checkpoint".into(),
        "--image-path".into(),
        image_path.into(),
        "--work-path".into(),
        work_path.into(),
    ];
    let flags = [
        (!options.exit, "--leave-running"),
        (options.open_tcp, "--tcp-established"),
        (options.external_unix_sockets, "--ext-unix-sk"),
        (options.terminal, "--shell-job"),
        (options.file_locks, "--file-locks"),
    ];
    args.extend(flags.iter().filter(|(on, _)| *on).map(|(_, f)| f.into()));
    for ns in &options.empty_namespaces {
        args.extend(["--empty-ns".into(), ns.into()]);
    }
    if !options.cgroups_mode.is_empty() {
        args.extend([
            "--manage-cgroups-mode".into(),
            options.cgroups_mode.as_str().into(),
        ]);
    }
    args.push(id.into());
    args
}

/// The last error lines of CRIU's log, as `; CRIU: <line> | <line>`
/// (empty when the log has none): the runtime's own message only names
/// the log file.
fn criu_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error (") || l.contains("Error:"))
        .map(str::trim)
        .collect();
    if errors.is_empty() {
        return String::new();
    }
    let tail = &errors[errors.len().saturating_sub(QUOTED_ERRORS)..];
    format!("; CRIU: {}", tail.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_the_container_running_unless_asked_to_exit() {
        let args = |options: &CheckpointOptions| -> Vec<String> {
            checkpoint_args("c1", Path::new("/i"), Path::new("/w"), options)
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            args(&CheckpointOptions::default()),
            [
                "checkpoint",
                "--image-path",
                "/i",
                "--work-path",
                "/w",
                "--leave-running",
                "c1"
            ]
        );
        let all = CheckpointOptions {
            exit: true,
            open_tcp: true,
            external_unix_sockets: true,
            terminal: true,
            file_locks: true,
            empty_namespaces: vec!["network".into()],
            cgroups_mode: "soft".into(),
            ..Default::default()
        };
        let all = args(&all);
        assert!(!all.contains(&"--leave-running".to_string()));
        for flag in [
            "--tcp-established",
            "--ext-unix-sk",
            "--shell-job",
            "--file-locks",
        ] {
            assert!(all.contains(&flag.to_string()), "{flag} in {all:?}");
        }
        let ns = all.iter().position(|a| a == "--empty-ns");
        assert_eq!(
            ns.and_then(|i| all.get(i + 1)).map(String::as_str),
            Some("network")
        );
        assert_eq!(all.last().map(String::as_str), Some("c1"));
    }

    #[test]
    fn restores_detached_from_the_images_with_the_log_beside_them() {
        let args: Vec<String> = restore_args(Path::new("/b"), Path::new("/c/restore/checkpoint"))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "restore",
                "--detach",
                "--bundle",
                "/b",
                "--image-path",
                "/c/restore/checkpoint",
                "--work-path",
                "/c/restore"
            ]
        );
    }

    #[test]
    fn quotes_the_last_criu_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(DUMP_LOG);
        assert_eq!(criu_errors(&log), "");
        let mut text = String::from("(00.0001) Version: 3.17\n");
        for i in 0..6 {
            text.push_str(&format!("(00.00{i}) Error (criu/x.c:{i}): failure {i}\n"));
        }
        std::fs::write(&log, text).expect("write log");
        let quoted = criu_errors(&log);
        assert!(quoted.starts_with("; CRIU: "), "{quoted}");
        assert!(quoted.contains("failure 5") && quoted.contains("failure 2"));
        assert!(!quoted.contains("failure 1") && !quoted.contains("Version"));
    }
}
