//! The attach socket: how clients (berthd's streaming server, for CRI
//! Attach) reach a running container's init stdio.
//!
//! Every runc task serves a unix socket, `attach.sock` in the state dir (or
//! a short path under [`super::SHORT_SOCKET_DIR`] when that is too long, the
//! rule of the ttrpc socket); its address, `unix://<path>`, is in the state
//! dir's [`super::ATTACH_ADDRESS_FILE`]. Any number of clients may connect.
//!
//! # Protocol
//!
//! Both directions carry frames: one byte of kind, the payload's length as
//! a big-endian `u32`, the payload.
//!
//! ```text
//! +------+----------------+-------------------+
//! | kind | length (u32 BE)| payload (length)  |
//! +------+----------------+-------------------+
//! ```
//!
//! - kind `0`, client to shim: bytes for the init's stdin. A frame of length
//!   0 means this client closes its stdin (others may still write). Bytes
//!   for a task without stdin, or whose stdin was closed (`CloseIO`), are
//!   dropped. A payload may be at most [`MAX_FRAME`] bytes.
//! - kind `1` and `2`, shim to client: bytes the init wrote on stdout and on
//!   stderr (a terminal's output is all stdout), from the moment the client
//!   connected.
//!
//! Any other kind, or a longer payload, from a client ends its connection.
//! Attaching never takes output from the log: the log file gets everything
//! whether or not anyone is attached. A client that does not read fast
//! enough is disconnected once [`MAX_BEHIND`] bytes wait for it; it never
//! holds up the log or the container. When the init exits the shim sends
//! what is left (for at most [`FLUSH_MAX`]), closes every connection and
//! removes the socket.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

/// Frame kind: stdin, client to shim.
pub const KIND_STDIN: u8 = 0;
/// Frame kind: stdout, shim to client.
pub const KIND_STDOUT: u8 = 1;
/// Frame kind: stderr, shim to client.
pub const KIND_STDERR: u8 = 2;
/// The length of a frame's header.
pub const HEADER_LEN: usize = 5;
/// The longest payload a client may send in one frame.
pub const MAX_FRAME: usize = 64 * 1024;
/// Output bytes that may wait for one client before it is disconnected.
pub const MAX_BEHIND: usize = 256 * 1024;
/// How long the shim keeps sending waiting output after the init exited.
pub const FLUSH_MAX: Duration = Duration::from_secs(1);

const CLOSE: u8 = 1;
const CLOSE_STDIN: u8 = 2;

/// One output stream of the init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Its stdout (or its terminal).
    Stdout,
    /// Its stderr.
    Stderr,
}

impl Stream {
    /// The stream's name in the CRI log.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }

    fn kind(self) -> u8 {
        match self {
            Self::Stdout => KIND_STDOUT,
            Self::Stderr => KIND_STDERR,
        }
    }
}

/// One attached client.
struct Conn {
    stream: UnixStream,
    state: Mutex<ConnState>,
}

#[derive(Default)]
struct ConnState {
    /// Output frames not yet written to the client.
    out: Vec<u8>,
    /// Bytes read from the client, not yet a whole frame.
    input: Vec<u8>,
    /// Stdin bytes from this client the init has not taken yet; the client
    /// is not read from until they are gone.
    stdin: Vec<u8>,
    /// The client closed its stdin.
    stdin_closed: bool,
    /// The connection is over.
    dead: bool,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ConnState {
    /// Writes waiting output; a client that went away is dead.
    fn flush(&mut self, stream: &UnixStream) {
        while !self.out.is_empty() && !self.dead {
            match (&*stream).write(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.dead = true,
            }
        }
    }
}

/// The clients attached to one init: what its output streams are copied
/// to. Shared by the pump (which calls [`Hub::broadcast`]) and the attach
/// thread.
pub(crate) struct Hub {
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Write end of the attach thread's wake-up pipe.
    wake: OwnedFd,
    flags: AtomicU8,
}

impl Hub {
    fn conns(&self) -> MutexGuard<'_, Vec<Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self) {
        let _ = rustix::io::write(&self.wake, &[1]);
    }

    /// Copies `data` from `stream` to every client, without blocking: what
    /// a client cannot take now waits for it, up to [`MAX_BEHIND`] bytes.
    pub(crate) fn broadcast(&self, stream: Stream, data: &[u8]) {
        let Ok(len) = u32::try_from(data.len()) else {
            return;
        };
        let mut wake = false;
        for conn in self.conns().iter() {
            let mut state = conn.lock();
            if state.dead {
                continue;
            }
            if state.out.len() + HEADER_LEN + data.len() > MAX_BEHIND {
                state.dead = true;
                wake = true;
                continue;
            }
            state.out.push(stream.kind());
            state.out.extend_from_slice(&len.to_be_bytes());
            state.out.extend_from_slice(data);
            state.flush(&conn.stream);
            wake |= state.dead || !state.out.is_empty();
        }
        if wake {
            self.wake();
        }
    }
}

/// The attach socket of one init: its thread and its [`Hub`].
pub(crate) struct AttachServer {
    hub: Arc<Hub>,
    thread: Option<JoinHandle<()>>,
}

impl AttachServer {
    /// Listens on `socket` and writes its address to `address_file`;
    /// `stdin` is the init's stdin (a pipe, or its terminal with `eof` the
    /// byte that ends input), if it has one.
    pub(crate) fn start(
        socket: &Path,
        address_file: &Path,
        stdin: Option<OwnedFd>,
        eof: Option<u8>,
    ) -> io::Result<Self> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        listener.set_nonblocking(true)?;
        if let Some(stdin) = &stdin {
            super::pump::set_nonblocking(stdin)?;
        }
        let (wake_rx, wake_tx) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        crate::exit::write_atomic(
            address_file,
            format!("unix://{}\n", socket.display()).as_bytes(),
        )
        .map_err(io::Error::other)?;
        let hub = Arc::new(Hub {
            conns: Mutex::new(Vec::new()),
            wake: wake_tx,
            flags: AtomicU8::new(0),
        });
        let mut thread = Thread {
            hub: hub.clone(),
            listener: Some(listener),
            socket: socket.to_owned(),
            address_file: address_file.to_owned(),
            wake: wake_rx,
            stdin,
            eof,
        };
        let handle = std::thread::Builder::new()
            .name("attach".into())
            .stack_size(64 * 1024)
            .spawn(move || thread.run())?;
        Ok(Self {
            hub,
            thread: Some(handle),
        })
    }

    /// The hub the init's output streams are copied to.
    pub(crate) fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// Closes the init's stdin (a terminal is sent end-of-file).
    pub(crate) fn close_stdin(&self) {
        self.hub.flags.fetch_or(CLOSE_STDIN, Ordering::SeqCst);
        self.hub.wake();
    }

    /// The init exited and its output is drained: sends what waits, closes
    /// every connection and the socket; returns once that is done.
    pub(crate) fn close(mut self) {
        self.hub.flags.fetch_or(CLOSE, Ordering::SeqCst);
        self.hub.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the attach thread owns.
struct Thread {
    hub: Arc<Hub>,
    listener: Option<UnixListener>,
    socket: PathBuf,
    address_file: PathBuf,
    wake: OwnedFd,
    stdin: Option<OwnedFd>,
    eof: Option<u8>,
}

/// Who a poll entry is.
#[derive(Clone, Copy)]
enum Entry {
    Wake,
    Listener,
    Stdin,
    Conn(usize),
}

impl Thread {
    fn run(&mut self) {
        let mut buf = vec![0u8; 16 * 1024];
        let mut closing: Option<Instant> = None;
        loop {
            let flags = self.hub.flags.load(Ordering::SeqCst);
            if flags & CLOSE_STDIN != 0 {
                self.close_stdin();
            }
            if flags & CLOSE != 0 && closing.is_none() {
                closing = Some(Instant::now() + FLUSH_MAX);
                self.close_listener();
                self.close_stdin();
            }
            let conns: Vec<Arc<Conn>> = {
                let mut conns = self.hub.conns();
                conns.retain(|c| {
                    let dead = c.lock().dead;
                    if dead {
                        let _ = c.stream.shutdown(std::net::Shutdown::Both);
                    }
                    !dead
                });
                conns.clone()
            };
            if let Some(deadline) = closing
                && (Instant::now() >= deadline || conns.iter().all(|c| c.lock().out.is_empty()))
            {
                break;
            }
            let mut fds = vec![PollFd::new(&self.wake, PollFlags::IN)];
            let mut entries = vec![Entry::Wake];
            if let Some(listener) = &self.listener {
                fds.push(PollFd::new(listener, PollFlags::IN));
                entries.push(Entry::Listener);
            }
            let mut stdin_waits = false;
            for (i, conn) in conns.iter().enumerate() {
                let state = conn.lock();
                let mut wanted = PollFlags::empty();
                if state.stdin.is_empty() && closing.is_none() {
                    wanted |= PollFlags::IN;
                }
                if !state.out.is_empty() {
                    wanted |= PollFlags::OUT;
                }
                stdin_waits |= !state.stdin.is_empty();
                fds.push(PollFd::new(&conn.stream, wanted));
                entries.push(Entry::Conn(i));
            }
            if let Some(stdin) = self.stdin.as_ref().filter(|_| stdin_waits) {
                fds.push(PollFd::new(stdin, PollFlags::OUT));
                entries.push(Entry::Stdin);
            }
            let timeout = closing.map(|_| Timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            });
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(_) => break,
            }
            let events: Vec<(Entry, PollFlags)> = entries
                .into_iter()
                .zip(fds.iter().map(PollFd::revents))
                .filter(|(_, r)| !r.is_empty())
                .collect();
            drop(fds);
            for (entry, revents) in events {
                match entry {
                    Entry::Wake => {
                        let mut drained = [0u8; 64];
                        while matches!(rustix::io::read(&self.wake, &mut drained), Ok(n) if n > 0) {
                        }
                    }
                    Entry::Listener => self.accept(),
                    Entry::Stdin => {
                        for conn in &conns {
                            let mut state = conn.lock();
                            self.feed_stdin(&mut state);
                        }
                    }
                    Entry::Conn(i) => {
                        let Some(conn) = conns.get(i) else { continue };
                        let mut state = conn.lock();
                        if revents.contains(PollFlags::OUT) {
                            state.flush(&conn.stream);
                        }
                        if revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                            self.read_from(conn, &mut state, &mut buf);
                        }
                    }
                }
            }
        }
        self.close_listener();
        for conn in self.hub.conns().drain(..) {
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
        self.stdin = None;
    }

    fn accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.hub.conns().push(Arc::new(Conn {
                        stream,
                        state: Mutex::new(ConnState::default()),
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: no more; anything else (out of fds): the
                // client waits in the backlog for the next round.
                Err(_) => return,
            }
        }
    }

    /// Reads what a client sent and acts on its whole frames.
    fn read_from(&mut self, conn: &Conn, state: &mut ConnState, buf: &mut [u8]) {
        match (&conn.stream).read(buf) {
            Ok(0) => state.dead = true,
            Ok(n) => state.input.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => state.dead = true,
        }
        while state.input.len() >= HEADER_LEN && !state.dead {
            let kind = state.input[0];
            let len = u32::from_be_bytes([
                state.input[1],
                state.input[2],
                state.input[3],
                state.input[4],
            ]) as usize;
            if kind != KIND_STDIN || len > MAX_FRAME {
                state.dead = true;
                break;
            }
            if state.input.len() < HEADER_LEN + len {
                break;
            }
            if len == 0 {
                state.stdin_closed = true;
            } else if !state.stdin_closed && self.stdin.is_some() {
                let ConnState { input, stdin, .. } = &mut *state;
                stdin.extend_from_slice(&input[HEADER_LEN..HEADER_LEN + len]);
            }
            state.input.drain(..HEADER_LEN + len);
        }
        self.feed_stdin(state);
    }

    /// Writes a client's waiting stdin bytes to the init.
    fn feed_stdin(&mut self, state: &mut ConnState) {
        while !state.stdin.is_empty() {
            let Some(stdin) = &self.stdin else {
                state.stdin.clear();
                return;
            };
            match rustix::io::write(stdin, &state.stdin) {
                Ok(n) => {
                    state.stdin.drain(..n);
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return,
                // The init closed its stdin: input has nowhere to go.
                Err(_) => self.stdin = None,
            }
        }
    }

    fn close_stdin(&mut self) {
        if let (Some(stdin), Some(eof)) = (&self.stdin, self.eof) {
            let _ = rustix::io::write(stdin, &[eof]);
        }
        self.stdin = None;
        self.eof = None;
    }

    fn close_listener(&mut self) {
        if self.listener.take().is_some() {
            let _ = std::fs::remove_file(&self.address_file);
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&u32::try_from(payload.len()).expect("len").to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn read_frame(stream: &mut UnixStream) -> Option<(u8, Vec<u8>)> {
        let mut header = [0u8; HEADER_LEN];
        stream.read_exact(&mut header).ok()?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).ok()?;
        Some((header[0], payload))
    }

    #[test]
    fn clients_get_output_from_when_they_attach_and_feed_stdin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("attach.sock");
        let address = dir.path().join("attach-address");
        let (stdin_rx, stdin_tx) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
        let server = AttachServer::start(&socket, &address, Some(stdin_tx), None).expect("start");
        assert_eq!(
            std::fs::read_to_string(&address).expect("address"),
            format!("unix://{}\n", socket.display())
        );
        let hub = server.hub();
        hub.broadcast(Stream::Stdout, b"before anyone");
        let mut client = UnixStream::connect(&socket).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // The thread accepts the client after the connect returns.
        let deadline = Instant::now() + Duration::from_secs(5);
        while hub.conns().is_empty() {
            assert!(Instant::now() < deadline, "never accepted");
            std::thread::sleep(Duration::from_millis(5));
        }
        hub.broadcast(Stream::Stdout, b"out");
        hub.broadcast(Stream::Stderr, b"err");
        assert_eq!(
            read_frame(&mut client),
            Some((KIND_STDOUT, b"out".to_vec()))
        );
        assert_eq!(
            read_frame(&mut client),
            Some((KIND_STDERR, b"err".to_vec()))
        );

        client
            .write_all(&frame(KIND_STDIN, b"typed\n"))
            .expect("send");
        let mut got = [0u8; 6];
        std::fs::File::from(stdin_rx)
            .read_exact(&mut got)
            .expect("stdin");
        assert_eq!(&got, b"typed\n");

        // A bad frame ends that client only.
        let mut bad = UnixStream::connect(&socket).expect("connect");
        bad.write_all(&frame(7, b"?")).expect("send");
        bad.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut rest = Vec::new();
        assert!(
            bad.read_to_end(&mut rest).is_ok(),
            "the bad client was not closed"
        );
        hub.broadcast(Stream::Stdout, b"still here");
        assert_eq!(
            read_frame(&mut client),
            Some((KIND_STDOUT, b"still here".to_vec()))
        );

        server.close();
        assert_eq!(read_frame(&mut client), None, "the connection stays open");
        assert!(!socket.exists() && !address.exists());
    }

    #[test]
    fn a_client_that_does_not_read_is_dropped_not_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("attach.sock");
        let server =
            AttachServer::start(&socket, &dir.path().join("a"), None, None).expect("start");
        let hub = server.hub();
        let mut stuck = UnixStream::connect(&socket).expect("connect");
        let deadline = Instant::now() + Duration::from_secs(5);
        while hub.conns().is_empty() {
            assert!(Instant::now() < deadline, "never accepted");
            std::thread::sleep(Duration::from_millis(5));
        }
        let started = Instant::now();
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..(4 * MAX_BEHIND / chunk.len()) {
            hub.broadcast(Stream::Stdout, &chunk);
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "broadcast blocked"
        );
        stuck
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut all = Vec::new();
        let _ = stuck.read_to_end(&mut all);
        assert!(
            all.len() < 4 * MAX_BEHIND,
            "the stuck client got everything ({} bytes)",
            all.len()
        );
        server.close();
    }
}
