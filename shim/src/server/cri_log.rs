//! The CRI container log, written by the shim itself: each line the
//! container writes on stdout or stderr becomes
//! `<RFC3339Nano time> <stdout|stderr> <F|P> <text>` in the log file the
//! kubelet named. A line longer than [`MAX_LINE`] is split into `P`
//! (partial) records ending with one `F` (full) record. The shim owns the
//! pipes, so output is neither lost nor blocked while berthd is down.
//!
//! SIGUSR1 makes the shim reopen its log files (CRI ReopenContainerLog,
//! after the kubelet rotated a log by renaming it).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once, PoisonError, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest text of one log record (the kubelet's default, 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// Stack of each copying thread: it only copies bytes.
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

/// The write ends to hand the OCI runtime as the container's stdout and
/// stderr; the read ends are drained into `path` by two threads.
pub fn start(path: &Path) -> std::io::Result<(std::io::PipeWriter, std::io::PipeWriter)> {
    watch_reopen()?;
    let file = Arc::new(Mutex::new(open(path)?));
    OPEN_LOGS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((path.to_path_buf(), Arc::downgrade(&file)));
    let (out_r, out_w) = std::io::pipe()?;
    let (err_r, err_w) = std::io::pipe()?;
    for (stream, reader) in [("stdout", out_r), ("stderr", err_r)] {
        let file = file.clone();
        std::thread::Builder::new()
            .name(format!("log-{stream}"))
            .stack_size(THREAD_STACK)
            .spawn(move || copy(reader, stream, &file))?;
    }
    Ok((out_w, err_w))
}

/// Copies one stream into the log until every writer has closed it.
fn copy(reader: impl Read, stream: &str, file: &Mutex<File>) {
    let mut reader = BufReader::with_capacity(MAX_LINE, reader);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        // Reads at most MAX_LINE bytes of one line.
        let read = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (text, tag) = match line.strip_suffix(b"\n") {
            Some(text) => (text, 'F'),
            // Cut at MAX_LINE, or the stream ended without a newline.
            None if line.len() >= MAX_LINE => (&line[..], 'P'),
            None => (&line[..], 'F'),
        };
        let record = record(SystemTime::now(), stream, tag, text);
        let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
        if file.write_all(&record).is_err() {
            // The disk is full or the file is gone: keep draining so the
            // container never blocks on a full pipe.
            continue;
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
        let file = Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .expect("open"),
        );
        let mut input = vec![b'a'; MAX_LINE + 10];
        input.extend_from_slice(b"\nshort\nno newline");
        copy(&input[..], "stderr", &file);
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
