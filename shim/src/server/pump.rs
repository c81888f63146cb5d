//! The pump: one thread per process that moves its stdio bytes, from its
//! stdout and stderr (pipes, or a pty master) to where they go (the CRI
//! log, FIFOs the client reads, files), and from a FIFO the client writes
//! to its stdin. Every descriptor is non-blocking and watched with
//! `poll(2)`, so no stream can hold up another and the pump can always
//! be told to stop.
//!
//! A process that exited may leave its output behind it in the pipes, and a
//! background child may hold the pipes open long after. So after
//! [`PumpHandle::finish`] the pump keeps copying while output comes, and
//! stops once the pipes have been quiet for [`DRAIN_QUIET`] (or after
//! [`DRAIN_MAX`] in any case); then it closes every descriptor, so the
//! client reading a FIFO sees end-of-file even while a background child
//! still holds the other end of the pipe. `finish` returns only then, which
//! is what lets an exit be reported after the output it produced.
//!
//! A client that goes away (closes its FIFO) ends its route: a reader gone
//! closes the pipe from the process (whose next write fails, as in a shell
//! pipeline), a writer gone closes the process's stdin.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

/// After the process exited: how long the output may be quiet before the
/// pump closes everything.
pub(crate) const DRAIN_QUIET: Duration = Duration::from_millis(50);
/// After the process exited: the longest the pump keeps copying.
pub(crate) const DRAIN_MAX: Duration = Duration::from_secs(2);
/// Bytes read at once.
const CHUNK: usize = 16 * 1024;
/// Bytes a route holds for a sink that does not keep up; past this it
/// stops reading its source (the writer then blocks, as on a full pipe).
const MAX_PENDING: usize = 64 * 1024;

const EXITED: u8 = 1;
const CLOSE_STDIN: u8 = 2;

/// Something that takes a stream's bytes without ever blocking the pump
/// (the CRI log writer, the attach fan-out).
pub(crate) trait Output: Send {
    /// Takes the next bytes.
    fn write(&mut self, data: &[u8]);
    /// The stream ended.
    fn finish(&mut self);
}

/// Where a route's bytes go.
pub(crate) enum Sink {
    /// A pipe, FIFO, pty master or file, written without blocking.
    Fd(OwnedFd),
    /// An [`Output`].
    Output(Box<dyn Output>),
}

/// One stream: its source, its sink, and what it is to the process.
pub(crate) struct Route {
    source: Option<OwnedFd>,
    sink: Option<Sink>,
    pending: Vec<u8>,
    /// The process's stdin (not drained at exit), and for a terminal the
    /// byte that tells the reader end-of-file.
    stdin: Option<Option<u8>>,
}

impl Route {
    /// The process's output from `source` to `sink`.
    pub(crate) fn output(source: OwnedFd, sink: Sink) -> Self {
        Self {
            source: Some(source),
            sink: Some(sink),
            pending: Vec::new(),
            stdin: None,
        }
    }

    /// The process's input from `source` to `sink`; `eof` is the byte that
    /// ends input on a terminal sink (`None` for a pipe, which is closed).
    pub(crate) fn stdin(source: OwnedFd, sink: OwnedFd, eof: Option<u8>) -> Self {
        Self {
            source: Some(source),
            sink: Some(Sink::Fd(sink)),
            pending: Vec::new(),
            stdin: Some(eof),
        }
    }

    fn is_closed(&self) -> bool {
        self.source.is_none() && self.sink.is_none()
    }

    /// Takes `data` from the source.
    fn deliver(&mut self, data: &[u8]) {
        match &mut self.sink {
            Some(Sink::Output(out)) => out.write(data),
            Some(Sink::Fd(fd)) => {
                let written = if self.pending.is_empty() {
                    match write_some(fd, data) {
                        Ok(n) => n,
                        Err(_) => return self.break_off(),
                    }
                } else {
                    0
                };
                self.pending.extend_from_slice(&data[written..]);
            }
            None => {}
        }
    }

    /// Writes what is pending; closes the sink once the source is gone and
    /// nothing is left.
    fn flush(&mut self) {
        if let Some(Sink::Fd(fd)) = &self.sink
            && !self.pending.is_empty()
        {
            match write_some(fd, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(_) => return self.break_off(),
            }
        }
        if self.source.is_none() && self.pending.is_empty() {
            self.close_sink();
        }
    }

    /// The source ended.
    fn source_ended(&mut self) {
        self.source = None;
        self.flush();
    }

    /// Closes the sink: finishes an output, tells a terminal end-of-file.
    fn close_sink(&mut self) {
        match self.sink.take() {
            Some(Sink::Output(mut out)) => out.finish(),
            Some(Sink::Fd(fd)) => {
                if let Some(Some(eof)) = self.stdin {
                    let _ = write_some(&fd, &[eof]);
                }
            }
            None => {}
        }
    }

    /// The other side went away: nothing more moves either way.
    fn break_off(&mut self) {
        self.pending.clear();
        self.source = None;
        if let Some(Sink::Output(mut out)) = self.sink.take() {
            out.finish();
        }
    }

    /// Closes the route now (pending bytes are dropped).
    fn close(&mut self) {
        self.pending.clear();
        self.source = None;
        self.close_sink();
    }
}

/// Writes what a non-blocking `fd` takes now (0 when it is full).
fn write_some(fd: impl AsFd, data: &[u8]) -> Result<usize, Errno> {
    loop {
        match rustix::io::write(&fd, data) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

/// Makes `fd` non-blocking (its open file description: every duplicate).
pub(crate) fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    rustix::io::ioctl_fionbio(fd, true)?;
    Ok(())
}

/// The control side of a running pump.
pub(crate) struct PumpHandle {
    wake: OwnedFd,
    flags: Arc<AtomicU8>,
    thread: Option<JoinHandle<()>>,
}

impl PumpHandle {
    /// Starts a pump thread named `name` over `routes`.
    pub(crate) fn spawn(name: &str, routes: Vec<Route>) -> io::Result<Self> {
        let (wake_rx, wake_tx) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        let flags = Arc::new(AtomicU8::new(0));
        let thread_flags = flags.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .stack_size(64 * 1024)
            .spawn(move || run(routes, &wake_rx, &thread_flags))?;
        Ok(Self {
            wake: wake_tx,
            flags,
            thread: Some(thread),
        })
    }

    fn signal(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::SeqCst);
        let _ = write_some(&self.wake, &[flag]);
    }

    /// Closes the process's stdin (a terminal is sent end-of-file).
    pub(crate) fn close_stdin(&self) {
        self.signal(CLOSE_STDIN);
    }

    /// The process exited: drains its output (see the module doc), closes
    /// everything, and returns once the pump has stopped.
    pub(crate) fn finish(mut self) {
        self.signal(EXITED);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Who a poll entry is.
#[derive(Clone, Copy)]
enum Entry {
    Wake,
    Source(usize),
    Sink(usize),
}

/// The pump's loop; see the module doc.
fn run(mut routes: Vec<Route>, wake: &OwnedFd, flags: &AtomicU8) {
    let mut buf = vec![0u8; CHUNK];
    let mut deadline: Option<Instant> = None;
    loop {
        let state = flags.load(Ordering::SeqCst);
        if state & (EXITED | CLOSE_STDIN) != 0 {
            for route in routes.iter_mut().filter(|r| r.stdin.is_some()) {
                route.close();
            }
        }
        if state & EXITED != 0 && deadline.is_none() {
            deadline = Some(Instant::now() + DRAIN_MAX);
        }
        if routes.iter().all(Route::is_closed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let mut fds = vec![PollFd::new(wake, PollFlags::IN)];
        let mut entries = vec![Entry::Wake];
        for (i, route) in routes.iter().enumerate() {
            if let Some(source) = &route.source
                && route.pending.len() < MAX_PENDING
            {
                fds.push(PollFd::new(source, PollFlags::IN));
                entries.push(Entry::Source(i));
            }
            if let Some(Sink::Fd(sink)) = &route.sink {
                // Without OUT, poll still reports a reader that went away.
                let wanted = if route.pending.is_empty() {
                    PollFlags::empty()
                } else {
                    PollFlags::OUT
                };
                fds.push(PollFd::new(sink, wanted));
                entries.push(Entry::Sink(i));
            }
        }
        let timeout = deadline.map(|_| Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(DRAIN_QUIET.subsec_nanos()),
        });
        let ready = match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(_) => break,
        };
        let events: Vec<(Entry, PollFlags)> = entries
            .into_iter()
            .zip(fds.iter().map(PollFd::revents))
            .collect();
        drop(fds);
        if ready == 0 {
            // Draining, and nothing came for DRAIN_QUIET.
            if routes.iter().all(|r| r.pending.is_empty()) {
                break;
            }
            continue;
        }
        for (entry, revents) in events {
            if revents.is_empty() {
                continue;
            }
            match entry {
                Entry::Wake => {
                    let mut drained = [0u8; 16];
                    while matches!(rustix::io::read(wake, &mut drained), Ok(n) if n > 0) {}
                }
                Entry::Source(i) => {
                    let Some(route) = routes.get_mut(i) else {
                        continue;
                    };
                    let Some(source) = &route.source else {
                        continue;
                    };
                    match rustix::io::read(source, &mut buf) {
                        Ok(0) => route.source_ended(),
                        Ok(n) => route.deliver(&buf[..n]),
                        Err(Errno::AGAIN | Errno::INTR) => {}
                        // EIO: a pty master whose terminal has no process
                        // left; any other error ends the stream too.
                        Err(_) => route.source_ended(),
                    }
                }
                Entry::Sink(i) => {
                    let Some(route) = routes.get_mut(i) else {
                        continue;
                    };
                    if revents.intersects(PollFlags::ERR | PollFlags::HUP)
                        && !revents.contains(PollFlags::OUT)
                    {
                        route.break_off();
                    } else {
                        route.flush();
                    }
                }
            }
        }
    }
    for route in &mut routes {
        route.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Mutex;

    /// An output that collects what it gets.
    struct Collect(Arc<Mutex<(Vec<u8>, bool)>>);

    impl Output for Collect {
        fn write(&mut self, data: &[u8]) {
            self.0.lock().expect("lock").0.extend_from_slice(data);
        }
        fn finish(&mut self) {
            self.0.lock().expect("lock").1 = true;
        }
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe")
    }

    #[test]
    fn copies_until_the_source_ends_and_finishes_the_output() {
        let (rx, tx) = pipe();
        set_nonblocking(&rx).expect("nonblocking");
        let seen = Arc::new(Mutex::new((Vec::new(), false)));
        let pump = PumpHandle::spawn(
            "test",
            vec![Route::output(
                rx,
                Sink::Output(Box::new(Collect(seen.clone()))),
            )],
        )
        .expect("spawn");
        let mut writer = std::fs::File::from(tx);
        writer.write_all(b"hello ").expect("write");
        writer.write_all(b"world").expect("write");
        drop(writer);
        pump.finish();
        assert_eq!(*seen.lock().expect("lock"), (b"hello world".to_vec(), true));
    }

    #[test]
    fn finish_returns_while_a_background_writer_holds_the_pipe() {
        let (rx, tx) = pipe();
        set_nonblocking(&rx).expect("nonblocking");
        let (out_rx, out_tx) = pipe();
        set_nonblocking(&out_tx).expect("nonblocking");
        let pump =
            PumpHandle::spawn("test", vec![Route::output(rx, Sink::Fd(out_tx))]).expect("spawn");
        let mut writer = std::fs::File::from(tx);
        writer.write_all(b"last words").expect("write");
        // `writer` stays open: a background child holding stdout.
        let started = Instant::now();
        pump.finish();
        assert!(
            started.elapsed() < DRAIN_MAX,
            "finish waited for the holder"
        );
        let mut got = Vec::new();
        std::fs::File::from(out_rx)
            .read_to_end(&mut got)
            .expect("EOF on the sink once the pump stopped");
        assert_eq!(got, b"last words");
        drop(writer);
    }

    #[test]
    fn a_reader_that_goes_away_ends_the_route_and_a_closed_stdin_source_closes_the_sink() {
        // Output whose reader leaves: the pump stops without spinning.
        let (rx, tx) = pipe();
        set_nonblocking(&rx).expect("nonblocking");
        let (out_rx, out_tx) = pipe();
        set_nonblocking(&out_tx).expect("nonblocking");
        // Stdin whose writer leaves: the process's stdin is closed.
        let (in_rx, in_tx) = pipe();
        set_nonblocking(&in_rx).expect("nonblocking");
        let (proc_rx, proc_tx) = pipe();
        set_nonblocking(&proc_tx).expect("nonblocking");
        let pump = PumpHandle::spawn(
            "test",
            vec![
                Route::output(rx, Sink::Fd(out_tx)),
                Route::stdin(in_rx, proc_tx, None),
            ],
        )
        .expect("spawn");
        drop(out_rx);
        let mut input = std::fs::File::from(in_tx);
        input.write_all(b"typed").expect("write");
        drop(input);
        let mut got = Vec::new();
        std::fs::File::from(proc_rx)
            .read_to_end(&mut got)
            .expect("EOF on the process's stdin");
        assert_eq!(got, b"typed");
        let mut writer = std::fs::File::from(tx);
        // The pump noticed the reader left and closed the pipe's read end.
        let deadline = Instant::now() + Duration::from_secs(2);
        while writer.write_all(b"x").is_ok() {
            assert!(Instant::now() < deadline, "the pipe stayed open");
            std::thread::sleep(Duration::from_millis(10));
        }
        pump.finish();
    }
}
