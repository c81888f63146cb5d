//! The CRI container log, written by the shim itself: each line the
//! container writes on stdout or stderr becomes
//! `<RFC3339Nano time> <stdout|stderr> <F|P> <text>` in the log file the
//! kubelet named. A line longer than [`MAX_LINE`] is split into `P`
//! (partial) records ending with one `F` (full) record. The shim owns the
//! pipes (or the pty), so output is neither lost nor blocked while berthd
//! is down; the same bytes go to attached clients ([`Hub`]).
//!
//! SIGUSR1 makes the shim reopen its log files (CRI ReopenContainerLog,
//! after the kubelet rotated a log by renaming it).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once, PoisonError, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use super::attach::{Hub, Stream};
use super::pump::Output;

/// Longest text of one log record (the kubelet's default, 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// Stack of the reopening thread.
const THREAD_STACK: usize = 64 * 1024;

/// Log files being written, for reopening on SIGUSR1.
static OPEN_LOGS: Mutex<Vec<(PathBuf, Weak<Mutex<File>>)>> = Mutex::new(Vec::new());

fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Reopens every log file at its path (a rotated file was renamed away).
fn reopen_all() {
    let mut logs = OPEN_LOGS.lock().unwrap_or_else(PoisonError::into_inner);
    logs.retain(|(_, file)| file.strong_count() > 0);
    for (path, file) in logs.iter() {
        if let (Some(file), Ok(new)) = (file.upgrade(), open(path)) {
            *file.lock().unwrap_or_else(PoisonError::into_inner) = new;
        }
    }
}

/// Starts, once, the thread that reopens the logs on SIGUSR1.
fn watch_reopen() -> std::io::Result<()> {
    static STARTED: Once = Once::new();
    let mut result = Ok(());
    STARTED.call_once(|| {
        result = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1]).and_then(
            |mut signals| {
                std::thread::Builder::new()
                    .name("log-reopen".into())
                    .stack_size(THREAD_STACK)
                    .spawn(move || {
                        for _ in signals.forever() {
                            reopen_all();
                        }
                    })
                    .map(drop)
            },
        );
    });
    result
}

/// Opens (creates, appends to) the CRI log at `path` for the two
/// [`LogStream`]s of a container, and registers it for reopening.
pub(crate) fn open_log(path: &Path) -> std::io::Result<Arc<Mutex<File>>> {
    watch_reopen()?;
    let file = Arc::new(Mutex::new(open(path)?));
    OPEN_LOGS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((path.to_path_buf(), Arc::downgrade(&file)));
    Ok(file)
}

/// Where a stream's bytes are written.
pub(crate) enum LogFile {
    /// The CRI log, shared by stdout and stderr: one record per line.
    Cri(Arc<Mutex<File>>),
    /// A plain file: the bytes as they come.
    Raw(File),
    /// Nowhere.
    Discard,
}

/// One output stream of a container's init: written to its log file and
/// copied to every attached client. It never blocks: a full disk loses
/// log lines, a slow client loses its connection ([`Hub`]).
pub(crate) struct LogStream {
    stream: Stream,
    file: LogFile,
    hub: Option<Arc<Hub>>,
    /// The current line, until its newline (or [`MAX_LINE`] bytes).
    line: Vec<u8>,
}

impl LogStream {
    /// The `stream` of a container, into `file` and `hub`.
    pub(crate) fn new(stream: Stream, file: LogFile, hub: Option<Arc<Hub>>) -> Self {
        Self {
            stream,
            file,
            hub,
            line: Vec::new(),
        }
    }

    /// Writes one record of the current line to the CRI log.
    fn write_record(&mut self, tag: char) {
        if let LogFile::Cri(file) = &self.file {
            let record = record(SystemTime::now(), self.stream.name(), tag, &self.line);
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            // A full disk or a vanished file loses the record: the
            // container must never block on its log.
            let _ = file.write_all(&record);
        }
        self.line.clear();
    }
}

impl Output for LogStream {
    fn write(&mut self, mut data: &[u8]) {
        if let Some(hub) = &self.hub {
            hub.broadcast(self.stream, data);
        }
        match &mut self.file {
            LogFile::Raw(file) => {
                let _ = file.write_all(data);
            }
            LogFile::Discard => {}
            LogFile::Cri(_) => {
                while !data.is_empty() {
                    let room = MAX_LINE - self.line.len();
                    let take = data.len().min(room);
                    match data[..take].iter().position(|b| *b == b'\n') {
                        Some(i) => {
                            self.line.extend_from_slice(&data[..i]);
                            self.write_record('F');
                            data = &data[i + 1..];
                        }
                        None => {
                            self.line.extend_from_slice(&data[..take]);
                            data = &data[take..];
                            if self.line.len() >= MAX_LINE {
                                self.write_record('P');
                            }
                        }
                    }
                }
            }
        }
    }

    fn finish(&mut self) {
        if !self.line.is_empty() {
            self.write_record('F');
        }
    }
}

/// One log record.
pub fn record(time: SystemTime, stream: &str, tag: char, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 48);
    out.extend_from_slice(rfc3339_nano(time).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.push(b' ');
    out.push(tag as u8);
    out.push(b' ');
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// `2006-01-02T15:04:05.123456789Z` in UTC.
pub fn rfc3339_nano(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_nanos()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_nano_utc() {
        let t = UNIX_EPOCH + Duration::new(1_475_712_729, 669_794_202);
        assert_eq!(rfc3339_nano(t), "2016-10-06T00:12:09.669794202Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(rfc3339_nano(leap).starts_with("2000-02-29T00:00:00"));
    }

    #[test]
    fn records_and_long_lines() {
        let t = UNIX_EPOCH;
        assert_eq!(
            record(t, "stdout", 'F', b"hello"),
            b"1970-01-01T00:00:00.000000000Z stdout F hello\n"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let file = Arc::new(Mutex::new(open(&path).expect("open")));
        let mut log = LogStream::new(Stream::Stderr, LogFile::Cri(file), None);
        let mut input = vec![b'a'; MAX_LINE + 10];
        input.extend_from_slice(b"\nshort\nno newline");
        // In pieces that cut lines anywhere, as reads from a pipe do.
        for piece in input.chunks(1000) {
            log.write(piece);
        }
        log.finish();
        let text = std::fs::read_to_string(&path).expect("read");
        let tags: Vec<(&str, &str, usize)> = text
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let _time = parts.next();
                let stream = parts.next().unwrap_or_default();
                let tag = parts.next().unwrap_or_default();
                (stream, tag, parts.next().unwrap_or_default().len())
            })
            .collect();
        assert_eq!(
            tags,
            [
                ("stderr", "P", MAX_LINE),
                ("stderr", "F", 10),
                ("stderr", "F", 5),
                ("stderr", "F", 10)
            ]
        );
    }
}
