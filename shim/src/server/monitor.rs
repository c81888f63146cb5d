//! The shim's one reaper: a thread that reaps every child (and every orphan
//! re-parented to the subreaper) on SIGCHLD and fans the exits out to
//! whoever waits for a pid.
//!
//! Nothing else in the shim may call `waitpid`. A waiter first takes a
//! [`Cursor`] (before it spawns the process, so an exit that comes before
//! the spawn call returns is not missed), then waits for its pid. Exits are
//! kept until every open cursor has looked past them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use crate::exit::ExitRecord;

/// The exits seen so far and who is still looking at them.
#[derive(Default)]
struct Log {
    /// Sequence number of the next exit.
    next_seq: u64,
    /// Exits not yet seen by every cursor, oldest first.
    exits: VecDeque<(u64, ExitRecord)>,
    /// Open cursors: id → the first sequence number not yet looked at.
    cursors: HashMap<u64, u64>,
    next_cursor: u64,
}

impl Log {
    fn prune(&mut self) {
        let oldest = self
            .cursors
            .values()
            .min()
            .copied()
            .unwrap_or(self.next_seq);
        while self.exits.front().is_some_and(|(seq, _)| *seq < oldest) {
            self.exits.pop_front();
        }
    }
}

/// Fans child exits out to waiters.
#[derive(Default)]
pub(crate) struct Monitor {
    log: Mutex<Log>,
    changed: Condvar,
}

impl Monitor {
    /// Starts the reaper thread. SIGCHLD is handled from here on; children
    /// that exited earlier are reaped at once.
    pub(crate) fn start() -> std::io::Result<Arc<Monitor>> {
        let monitor = Arc::new(Monitor::default());
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGCHLD])?;
        let reaper = monitor.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                reaper.reap();
                for _ in signals.forever() {
                    reaper.reap();
                }
            })?;
        Ok(monitor)
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reaps every child that has exited.
    fn reap(&self) {
        loop {
            let record = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    ExitRecord::exited(pid.as_raw(), code, SystemTime::now())
                }
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    ExitRecord::signaled(pid.as_raw(), signal as i32, SystemTime::now())
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            self.push(record);
        }
    }

    /// Adds an exit to the log and wakes the waiters.
    fn push(&self, record: ExitRecord) {
        let mut log = self.lock();
        let seq = log.next_seq;
        log.next_seq += 1;
        log.exits.push_back((seq, record));
        log.prune();
        drop(log);
        self.changed.notify_all();
    }

    /// A cursor that sees every exit from now on.
    pub(crate) fn subscribe(self: &Arc<Self>) -> Cursor {
        let mut log = self.lock();
        let id = log.next_cursor;
        log.next_cursor += 1;
        let next = log.next_seq;
        log.cursors.insert(id, next);
        Cursor {
            monitor: self.clone(),
            id,
        }
    }
}

/// A waiter's place in the exit log; see the module doc.
pub(crate) struct Cursor {
    monitor: Arc<Monitor>,
    id: u64,
}

impl Cursor {
    /// Blocks until `pid` exits (or has exited since the cursor was taken).
    pub(crate) fn wait(&self, pid: i32) -> ExitRecord {
        let mut log = self.monitor.lock();
        loop {
            let from = log.cursors.get(&self.id).copied().unwrap_or(0);
            let found = log
                .exits
                .iter()
                .position(|(seq, e)| *seq >= from && e.pid == pid);
            let next = match found {
                Some(i) => log.exits[i].0 + 1,
                None => log.next_seq,
            };
            log.cursors.insert(self.id, next);
            if let Some(i) = found {
                let record = log.exits.remove(i).map(|(_, e)| e);
                log.prune();
                if let Some(record) = record {
                    return record;
                }
            }
            log.prune();
            log = self
                .monitor
                .changed
                .wait(log)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        let mut log = self.monitor.lock();
        log.cursors.remove(&self.id);
        log.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(pid: i32) -> ExitRecord {
        ExitRecord::exited(pid, 0, SystemTime::now())
    }

    #[test]
    fn a_cursor_sees_exits_after_it_was_taken_and_the_log_is_pruned() {
        let monitor = Arc::new(Monitor::default());
        monitor.push(exit(10));
        let cursor = monitor.subscribe();
        let other = monitor.subscribe();
        monitor.push(exit(11));
        monitor.push(exit(12));
        assert_eq!(cursor.wait(12).pid, 12);
        // 11 is kept: `other` has not looked at it yet.
        assert_eq!(monitor.lock().exits.len(), 1);
        drop(other);
        assert!(monitor.lock().exits.is_empty());

        // An exit before the cursor was taken is never reported to it.
        let waiter = std::thread::spawn(move || cursor.wait(10));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "an old exit of pid 10 was reported");
        monitor.push(exit(10));
        assert_eq!(waiter.join().expect("waiter").pid, 10);
        assert!(monitor.lock().exits.is_empty());
        assert!(monitor.lock().cursors.is_empty());
    }
}
