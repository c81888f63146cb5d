//! The test ground's only unsafe code: process set-up between fork and exec.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the child started by `command` get SIGKILL when the thread that
/// spawns it exits, so a test runner killed mid-test leaves no registry or
/// berthd behind. Do not spawn from `spawn_blocking` threads: they exit
/// when idle and would take the child with them.
pub fn die_with_test(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes the prctl system call, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}
