//! A server-side SPDY/3.1 session, shaped for the clients Kubernetes
//! streaming uses (`k8s.io/apimachinery/pkg/util/httpstream/spdy` on
//! `github.com/moby/spdystream`): the client opens every stream with
//! SYN_STREAM, the server answers SYN_REPLY, both sides exchange DATA and
//! half-close with FIN.
//!
//! [`serve`] runs a session on an upgraded connection and returns a
//! [`Session`] (close it, wait for its end) and an [`Incoming`] (the
//! streams the client opens). A [`Stream`] is `AsyncRead + AsyncWrite` and
//! splits into halves for separate tasks.
//!
//! # Tasks and backpressure
//! One reader task decodes frames, one writer task encodes them; streams
//! meet both in one mutex-protected state.
//! - Outgoing DATA waits in one queue bounded in bytes; stream writes wait
//!   while it is full, so a slow socket slows the writers down.
//! - Incoming DATA is buffered per stream up to [`STREAM_BUFFER`] bytes.
//!   When a stream's buffer is full the reader stops reading the socket
//!   until the application reads (head-of-line blocking, as in spdystream
//!   itself): an application must read, or drop the read half of, every
//!   stream it accepts.
//! - Control frames waiting for the writer (PING answers, RST_STREAM,
//!   WINDOW_UPDATE) are bounded too: the reader stops while too many wait.
//!
//! # Flow control
//! What moby/spdystream (the client library of kubectl and crictl, and the
//! kubelet's server) does, as read in its source: its framer parses
//! WINDOW_UPDATE and SETTINGS but the connection drops them as "unhandled
//! frame type"; it never sends either, and writes DATA without looking at
//! any window. It speaks SPDY/3 framing with no flow control, relying on
//! TCP. Hence:
//! - Sending: the peer's windows are tracked (per stream from 64 KiB or the
//!   peer's SETTINGS_INITIAL_WINDOW_SIZE; the SPDY/3.1 session window from
//!   64 KiB) but only waited on once the peer shows it does flow control:
//!   stream windows after it sends SETTINGS_INITIAL_WINDOW_SIZE or a stream
//!   WINDOW_UPDATE, the session window after a WINDOW_UPDATE for stream 0.
//!   A spdystream client does neither, so output to it never stalls at
//!   64 KiB.
//! - Receiving: our windows are never enforced (spdystream overruns them on
//!   every stream); the per-stream buffer and backpressure bound memory.
//!   WINDOW_UPDATE is still sent as the application consumes data (per
//!   stream, in [`WINDOW_UPDATE_STEP`] steps) so a flow-controlling client
//!   keeps sending. The session window is credited as data is buffered
//!   rather than consumed, so one unread stream cannot starve the others
//!   through it (its buffer is bounded anyway). spdystream ignores both.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::bytes::{Buf, Bytes, BytesMut};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::frame::{
    Frame, FrameDecoder, FrameEncoder, FrameError, GoAwayStatus, Headers, RstStatus, Setting,
    StreamId,
};

/// The initial window of every stream and of the session, both ways.
const DEFAULT_WINDOW: i64 = 64 * 1024;
/// The largest window the protocol allows.
const MAX_WINDOW: i64 = 0x7fff_ffff;
/// Consumed bytes that make us send a WINDOW_UPDATE (half the window).
pub const WINDOW_UPDATE_STEP: usize = 32 * 1024;
/// Bytes buffered per stream before the reader stops reading the socket.
pub const STREAM_BUFFER: usize = 64 * 1024;
/// The largest DATA payload we send in one frame.
const MAX_DATA_CHUNK: usize = 32 * 1024;
/// Bytes of DATA queued for the writer before stream writes wait.
const WRITE_QUEUE_LIMIT: usize = 256 * 1024;
/// Bytes of DATA the writer takes in one batch.
const WRITE_BATCH: usize = 128 * 1024;
/// Control frames queued for the writer before the reader waits.
const CONTROL_QUEUE_LIMIT: usize = 256;
/// Opened streams waiting for `accept` before the reader waits.
const PENDING_LIMIT: usize = 64;
/// Streams remembered after we closed them while the peer was sending,
/// so DATA still in flight is dropped quietly.
const RECENTLY_CLOSED: usize = 32;
/// Socket read size.
const READ_CHUNK: usize = 32 * 1024;
/// How long after our GOAWAY we keep reading (and discarding) so the
/// peer is not reset while our last frames are on their way.
const LINGER: Duration = Duration::from_secs(2);

/// Starts a server-side session on `io` (an upgraded HTTP connection) and
/// spawns its reader and writer tasks on the current tokio runtime.
///
/// The session ends when the peer closes the connection, when it sent
/// GOAWAY and its last stream is done, on a protocol violation, or when
/// [`Session::close`] is called or the last [`Session`] clone dropped.
///
/// # Panics
/// Outside a tokio runtime.
pub fn serve<T>(io: T) -> (Session, Incoming)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let shared = Arc::new(Shared::new());
    let (rd, wr) = tokio::io::split(io);
    let reader = tokio::spawn(read_loop(shared.clone(), rd));
    tokio::spawn(run_writer(shared.clone(), wr, reader));
    let handle = Arc::new(SessionHandle {
        shared: shared.clone(),
    });
    (Session { handle }, Incoming { shared })
}

/// The handle on a session: close it and wait for its end. Clones share
/// the session; dropping the last clone closes it like
/// [`Session::close`].
#[derive(Clone)]
pub struct Session {
    handle: Arc<SessionHandle>,
}

/// Closes the session when the last [`Session`] clone goes.
struct SessionHandle {
    shared: Arc<Shared>,
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        self.shared.start_close(&mut st, GoAwayStatus::OK);
    }
}

impl Session {
    /// Sends GOAWAY after the frames already queued, closes the connection
    /// and waits until it is gone (the peer gets up to two seconds to close
    /// its side). Streams still open are cut: reads end after what was
    /// received, writes fail. Shut streams down and read them to EOF first
    /// for a graceful end.
    pub async fn close(&self) {
        let shared = &self.handle.shared;
        {
            let mut st = shared.lock();
            shared.start_close(&mut st, GoAwayStatus::OK);
        }
        self.closed().await;
    }

    /// Resolves once the connection is gone: both tasks ended and the I/O
    /// object dropped.
    pub async fn closed(&self) {
        self.handle.shared.done.cancelled().await;
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.handle.shared.done.is_cancelled()
    }
}

/// The streams the peer opens, in order. Dropping it refuses the streams
/// that were not accepted and every later one.
pub struct Incoming {
    shared: Arc<Shared>,
}

impl Incoming {
    /// The next stream the peer opened, already answered with SYN_REPLY
    /// (empty headers, as Kubernetes answers). `None` once the session has
    /// ended or the peer sent GOAWAY and every stream it opened was taken.
    pub async fn accept(&mut self) -> Option<Stream> {
        Some(self.accept_pending().await?.reply())
    }

    /// Like [`Incoming::accept`], but the stream is not answered yet: the
    /// caller looks at its headers and replies or refuses. Both are
    /// cancel-safe: a stream is taken only when the call returns it.
    pub async fn accept_pending(&mut self) -> Option<PendingStream> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<PendingStream>> {
        let shared = &self.shared;
        let mut st = shared.lock();
        while let Some((id, headers)) = st.pending.pop_front() {
            shared.reader_wake.notify_one();
            if st.streams.get(&id).is_some_and(|s| !s.reset) {
                return Poll::Ready(Some(PendingStream {
                    shared: shared.clone(),
                    id,
                    headers,
                    answered: false,
                }));
            }
            // The peer reset it before we got to it.
            st.streams.remove(&id);
            shared.end_if_drained(&mut st);
        }
        if st.closing.is_some() || st.peer_goaway {
            return Poll::Ready(None);
        }
        st.accept_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.incoming_dropped = true;
        while let Some((id, _)) = st.pending.pop_front() {
            self.shared.refuse(&mut st, id);
        }
    }
}

/// A stream the peer opened that is not answered yet. Dropping it refuses
/// it like [`PendingStream::refuse`].
pub struct PendingStream {
    shared: Arc<Shared>,
    id: StreamId,
    headers: Headers,
    answered: bool,
}

impl PendingStream {
    /// The stream id (odd: the client opened it).
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The headers of the peer's SYN_STREAM.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// Accepts the stream: queues SYN_REPLY with empty headers.
    pub fn reply(mut self) -> Stream {
        self.answered = true;
        let id = self.id;
        {
            let mut st = self.shared.lock();
            st.last_replied = st.last_replied.max(id);
            // A unidirectional stream gets no reply: we may not send on it.
            if st
                .streams
                .get(&id)
                .is_some_and(|s| !s.reset && !s.unidirectional)
            {
                let reply = Frame::SynReply {
                    stream_id: id,
                    fin: false,
                    headers: Headers::new(),
                };
                self.shared.push_control(&mut st, reply);
            }
        }
        Stream {
            headers: std::mem::take(&mut self.headers),
            read: ReadHalf {
                shared: self.shared.clone(),
                id,
            },
            write: WriteHalf {
                shared: self.shared.clone(),
                id,
            },
        }
    }

    /// Refuses the stream with RST_STREAM REFUSED_STREAM.
    pub fn refuse(self) {
        drop(self);
    }
}

impl Drop for PendingStream {
    fn drop(&mut self) {
        if !self.answered {
            let mut st = self.shared.lock();
            self.shared.refuse(&mut st, self.id);
        }
    }
}

/// An accepted stream: reads return the peer's DATA (EOF after its FIN or
/// RST_STREAM, or when the session ends); writes send DATA; shutdown sends
/// FIN. Dropping it sends FIN if not sent yet, and RST_STREAM CANCEL if the
/// peer has not finished sending, so the peer stops.
pub struct Stream {
    headers: Headers,
    read: ReadHalf,
    write: WriteHalf,
}

impl Stream {
    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.read.id
    }

    /// The headers of the peer's SYN_STREAM.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// Aborts the stream with RST_STREAM `status`; see [`WriteHalf::reset`].
    pub fn reset(&self, status: RstStatus) {
        self.write.reset(status);
    }

    /// Splits the stream into halves usable from different tasks.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        (self.read, self.write)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

/// The receiving half of a [`Stream`]. Dropping it discards what the peer
/// sends from then on (the peer's window is still credited).
pub struct ReadHalf {
    shared: Arc<Shared>,
    id: StreamId,
}

impl ReadHalf {
    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.shared.poll_recv(cx, self.id, buf)
    }
}

impl Drop for ReadHalf {
    fn drop(&mut self) {
        self.shared.release_read(self.id);
    }
}

/// The sending half of a [`Stream`]. Writes are queued for the session's
/// writer task (`poll_flush` does not wait for the socket); shutdown and
/// drop send FIN after the queued data.
pub struct WriteHalf {
    shared: Arc<Shared>,
    id: StreamId,
}

impl WriteHalf {
    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Aborts the stream with RST_STREAM `status`: data not yet received is
    /// discarded, reads end, writes fail. The RST_STREAM may overtake DATA
    /// still queued; shut down instead to end a stream gracefully.
    pub fn reset(&self, status: RstStatus) {
        self.shared.reset(self.id, status);
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared.poll_send(cx, self.id, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shared.send_fin(self.id))
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        self.shared.release_write(self.id);
    }
}

/// What the tasks and the handles share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer task: frames queued, or the session closing.
    writer_wake: Notify,
    /// Wakes the reader task when what it waits for may have changed.
    reader_wake: Notify,
    /// Tells the reader task to stop.
    stop_reading: CancellationToken,
    /// Cancelled once both tasks ended and the connection is dropped.
    done: CancellationToken,
}

struct State {
    streams: HashMap<StreamId, StreamState>,
    /// Opened streams waiting for `accept`, with their headers.
    pending: VecDeque<(StreamId, Headers)>,
    accept_waker: Option<Waker>,
    incoming_dropped: bool,
    /// Control frames for the writer, sent before DATA.
    control: VecDeque<Frame>,
    /// DATA (and the RST_STREAM that must follow a stream's DATA), in order.
    data: VecDeque<Frame>,
    /// DATA payload bytes in `data`.
    data_queued: usize,
    last_peer_stream: StreamId,
    /// Streams forgotten while the peer may still send (see [`RECENTLY_CLOSED`]).
    recently_closed: VecDeque<StreamId>,
    /// The last stream answered with SYN_REPLY or RST_STREAM (for GOAWAY).
    last_replied: StreamId,
    peer_goaway: bool,
    /// Set once the session ends: no new frames are queued, the writer
    /// sends what is queued, then GOAWAY with this status, then closes.
    closing: Option<GoAwayStatus>,
    peer_initial_window: i64,
    /// The peer does per-stream flow control: wait on stream windows.
    stream_windows_enforced: bool,
    /// The peer does SPDY/3.1 session flow control: wait on that window.
    session_window_enforced: bool,
    session_send_window: i64,
    /// Received bytes not yet credited back with a session WINDOW_UPDATE.
    session_unacked: usize,
}

struct StreamState {
    recv: VecDeque<Bytes>,
    buffered: usize,
    /// Consumed bytes not yet credited back with a WINDOW_UPDATE.
    unacked: usize,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    send_window: i64,
    remote_fin: bool,
    local_fin: bool,
    /// Reset by either side, or cut by the session's end.
    reset: bool,
    unidirectional: bool,
    read_open: bool,
    write_open: bool,
}

impl StreamState {
    fn new(send_window: i64, remote_fin: bool, unidirectional: bool) -> Self {
        Self {
            recv: VecDeque::new(),
            buffered: 0,
            unacked: 0,
            read_waker: None,
            write_waker: None,
            send_window,
            remote_fin,
            local_fin: unidirectional,
            reset: false,
            unidirectional,
            read_open: true,
            write_open: true,
        }
    }

    fn wake(&mut self) {
        if let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }

    /// Ends the stream locally: reads end once the buffer is drained,
    /// writes fail.
    fn cut(&mut self) {
        self.reset = true;
        self.wake();
    }

    /// Counts `n` consumed bytes; returns the WINDOW_UPDATE delta to send
    /// once enough have accumulated (none after the peer's FIN).
    fn take_credit(&mut self, n: usize) -> Option<u32> {
        self.unacked += n;
        if self.remote_fin || self.reset || self.unacked < WINDOW_UPDATE_STEP {
            return None;
        }
        let delta = self.unacked.min(MAX_WINDOW as usize) as u32;
        self.unacked = 0;
        Some(delta)
    }
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "SPDY stream was reset")
}

impl Shared {
    fn new() -> Self {
        Self {
            state: Mutex::new(State {
                streams: HashMap::new(),
                pending: VecDeque::new(),
                accept_waker: None,
                incoming_dropped: false,
                control: VecDeque::new(),
                data: VecDeque::new(),
                data_queued: 0,
                last_peer_stream: 0,
                recently_closed: VecDeque::new(),
                last_replied: 0,
                peer_goaway: false,
                closing: None,
                peer_initial_window: DEFAULT_WINDOW,
                stream_windows_enforced: false,
                session_window_enforced: false,
                session_send_window: DEFAULT_WINDOW,
                session_unacked: 0,
            }),
            writer_wake: Notify::new(),
            reader_wake: Notify::new(),
            stop_reading: CancellationToken::new(),
            done: CancellationToken::new(),
        }
    }

    /// The state; a panic elsewhere while it was held leaves it usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push_control(&self, st: &mut State, frame: Frame) {
        if st.closing.is_none() {
            st.control.push_back(frame);
            self.writer_wake.notify_one();
        }
    }

    /// Queues a frame behind the DATA already queued; `len` is its payload.
    fn push_data(&self, st: &mut State, frame: Frame, len: usize) {
        if st.closing.is_none() {
            st.data.push_back(frame);
            st.data_queued += len;
            self.writer_wake.notify_one();
        }
    }

    fn wake_accept(st: &mut State) {
        if let Some(waker) = st.accept_waker.take() {
            waker.wake();
        }
    }

    /// Ends the session: cuts every stream, drops unaccepted ones, and
    /// lets the writer finish with GOAWAY `status`. Later calls do nothing.
    fn start_close(&self, st: &mut State, status: GoAwayStatus) {
        if st.closing.is_some() {
            return;
        }
        st.closing = Some(status);
        while let Some((id, _)) = st.pending.pop_front() {
            st.streams.remove(&id);
        }
        for stream in st.streams.values_mut() {
            stream.cut();
        }
        Self::wake_accept(st);
        self.writer_wake.notify_one();
        self.reader_wake.notify_one();
    }

    /// After the peer's GOAWAY the session ends with its last stream.
    fn end_if_drained(&self, st: &mut State) {
        if st.peer_goaway && st.streams.is_empty() && st.pending.is_empty() {
            self.start_close(st, GoAwayStatus::OK);
        }
    }

    fn refuse(&self, st: &mut State, id: StreamId) {
        st.streams.remove(&id);
        st.last_replied = st.last_replied.max(id);
        let rst = Frame::RstStream {
            stream_id: id,
            status: RstStatus::REFUSED_STREAM,
        };
        self.push_control(st, rst);
        self.end_if_drained(st);
    }

    /// Forgets a stream whose handles are all gone.
    fn finish(&self, st: &mut State, id: StreamId) {
        let Some(stream) = st.streams.remove(&id) else {
            return;
        };
        if !stream.remote_fin {
            if st.recently_closed.len() == RECENTLY_CLOSED {
                st.recently_closed.pop_front();
            }
            st.recently_closed.push_back(id);
            if !stream.reset {
                // Nobody will read what the peer still sends: ask it to
                // stop, after the DATA and FIN queued for the stream.
                let rst = Frame::RstStream {
                    stream_id: id,
                    status: RstStatus::CANCEL,
                };
                self.push_data(st, rst, 0);
            }
        }
        self.end_if_drained(st);
    }

    fn release_read(&self, id: StreamId) {
        let mut st = self.lock();
        let Some(s) = st.streams.get_mut(&id) else {
            return;
        };
        s.read_open = false;
        let was_full = s.buffered >= STREAM_BUFFER;
        let freed = s.buffered;
        s.recv.clear();
        s.buffered = 0;
        let credit = s.take_credit(freed);
        let write_open = s.write_open;
        if was_full {
            self.reader_wake.notify_one();
        }
        if let Some(delta) = credit {
            self.push_control(
                &mut st,
                Frame::WindowUpdate {
                    stream_id: id,
                    delta,
                },
            );
        }
        if !write_open {
            self.finish(&mut st, id);
        }
    }

    fn release_write(&self, id: StreamId) {
        let mut st = self.lock();
        let Some(s) = st.streams.get_mut(&id) else {
            return;
        };
        s.write_open = false;
        let send_fin = !s.local_fin && !s.reset;
        s.local_fin = true;
        let read_open = s.read_open;
        if send_fin {
            let fin = Frame::Data {
                stream_id: id,
                fin: true,
                data: Bytes::new(),
            };
            self.push_data(&mut st, fin, 0);
        }
        if !read_open {
            self.finish(&mut st, id);
        }
    }

    fn reset(&self, id: StreamId, status: RstStatus) {
        let mut st = self.lock();
        let Some(s) = st.streams.get_mut(&id) else {
            return;
        };
        if s.reset {
            return;
        }
        let was_full = s.buffered >= STREAM_BUFFER;
        s.recv.clear();
        s.buffered = 0;
        s.cut();
        if was_full {
            self.reader_wake.notify_one();
        }
        self.push_control(
            &mut st,
            Frame::RstStream {
                stream_id: id,
                status,
            },
        );
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        id: StreamId,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.lock();
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Ok(()));
        };
        if s.buffered == 0 {
            if s.remote_fin || s.reset {
                return Poll::Ready(Ok(()));
            }
            s.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let was_full = s.buffered >= STREAM_BUFFER;
        let mut copied = 0;
        while buf.remaining() > 0 {
            let Some(chunk) = s.recv.front_mut() else {
                break;
            };
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            chunk.advance(n);
            copied += n;
            if chunk.is_empty() {
                s.recv.pop_front();
            }
        }
        s.buffered -= copied;
        if was_full && s.buffered < STREAM_BUFFER {
            self.reader_wake.notify_one();
        }
        if let Some(delta) = s.take_credit(copied) {
            self.push_control(
                &mut st,
                Frame::WindowUpdate {
                    stream_id: id,
                    delta,
                },
            );
        }
        Poll::Ready(Ok(()))
    }

    fn poll_send(&self, cx: &mut Context<'_>, id: StreamId, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(reset_error()));
        };
        if s.reset {
            return Poll::Ready(Err(reset_error()));
        }
        if s.local_fin {
            let msg = "SPDY stream is closed for writing";
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, msg)));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut n = buf.len().min(MAX_DATA_CHUNK);
        if st.stream_windows_enforced {
            n = n.min(s.send_window.max(0) as usize);
        }
        if st.session_window_enforced {
            n = n.min(st.session_send_window.max(0) as usize);
        }
        if n == 0 || st.data_queued >= WRITE_QUEUE_LIMIT {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        s.send_window -= n as i64;
        st.session_send_window -= n as i64;
        let frame = Frame::Data {
            stream_id: id,
            fin: false,
            data: Bytes::copy_from_slice(&buf[..n]),
        };
        self.push_data(st, frame, n);
        Poll::Ready(Ok(n))
    }

    fn send_fin(&self, id: StreamId) -> io::Result<()> {
        let mut st = self.lock();
        let Some(s) = st.streams.get_mut(&id) else {
            return Err(reset_error());
        };
        if s.local_fin {
            return Ok(());
        }
        if s.reset {
            return Err(reset_error());
        }
        s.local_fin = true;
        let fin = Frame::Data {
            stream_id: id,
            fin: true,
            data: Bytes::new(),
        };
        self.push_data(&mut st, fin, 0);
        Ok(())
    }

    /// Moves queued frames into `frames` for the writer: all control
    /// frames, then DATA up to [`WRITE_BATCH`] bytes.
    fn take_batch(&self, st: &mut State, frames: &mut Vec<Frame>) {
        if !st.control.is_empty() {
            frames.extend(st.control.drain(..));
            self.reader_wake.notify_one();
        }
        let mut bytes = 0;
        while bytes < WRITE_BATCH {
            let Some(frame) = st.data.pop_front() else {
                break;
            };
            if let Frame::Data { data, .. } = &frame {
                bytes += data.len();
            }
            frames.push(frame);
        }
        if bytes > 0 {
            st.data_queued = st.data_queued.saturating_sub(bytes);
            for stream in st.streams.values_mut() {
                if let Some(waker) = stream.write_waker.take() {
                    waker.wake();
                }
            }
        }
    }

    // ---- the reader's side ----

    /// Handles one frame from the peer; false once the session is closing.
    async fn handle_frame(&self, frame: Frame) -> bool {
        // Stop taking frames while the peer does not read our answers or
        // the application does not accept the streams already opened.
        self.wait(|st| st.control.len() < CONTROL_QUEUE_LIMIT && st.pending.len() < PENDING_LIMIT)
            .await;
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                let mut data = Some(data);
                self.wait(|st| self.on_data(st, stream_id, fin, &mut data))
                    .await;
            }
            other => {
                let mut st = self.lock();
                if st.closing.is_none() {
                    self.on_control(&mut st, other);
                }
            }
        }
        self.lock().closing.is_none()
    }

    /// Waits until `ready` (run under the lock) returns true, the session
    /// closes, or the reader is told to stop.
    async fn wait(&self, mut ready: impl FnMut(&mut State) -> bool) {
        loop {
            {
                let mut st = self.lock();
                if st.closing.is_some() || ready(&mut st) {
                    return;
                }
            }
            tokio::select! {
                _ = self.reader_wake.notified() => {}
                _ = self.stop_reading.cancelled() => return,
            }
        }
    }

    /// Decoding failed: a stream error resets the stream, anything else
    /// ends the session. False once the session is closing.
    fn frame_error(&self, err: FrameError) -> bool {
        let mut st = self.lock();
        match err.stream_error() {
            Some((id, status)) => {
                debug!(%err, "SPDY stream error");
                if !id.is_multiple_of(2) && id > st.last_peer_stream {
                    st.last_peer_stream = id;
                }
                if let Some(s) = st.streams.get_mut(&id) {
                    s.cut();
                }
                self.push_control(
                    &mut st,
                    Frame::RstStream {
                        stream_id: id,
                        status,
                    },
                );
            }
            None => {
                warn!(%err, "SPDY protocol error, closing the session");
                self.start_close(&mut st, GoAwayStatus::PROTOCOL_ERROR);
            }
        }
        st.closing.is_none()
    }

    /// Delivers DATA; false while the stream's buffer is full (the frame
    /// stays in `data` for the next try).
    fn on_data(&self, st: &mut State, id: StreamId, fin: bool, data: &mut Option<Bytes>) -> bool {
        let len = data.as_ref().map_or(0, Bytes::len);
        let mut reply = None;
        match st.streams.get_mut(&id) {
            // We closed it while the peer was sending: in flight, drop it.
            None if st.recently_closed.contains(&id) => {}
            None => {
                let status = RstStatus::INVALID_STREAM;
                reply = Some(Frame::RstStream {
                    stream_id: id,
                    status,
                });
            }
            Some(s) if s.reset => {}
            Some(s) if s.remote_fin => {
                s.cut();
                let status = RstStatus::STREAM_ALREADY_CLOSED;
                reply = Some(Frame::RstStream {
                    stream_id: id,
                    status,
                });
            }
            Some(s) => {
                if s.read_open {
                    if len > 0 && s.buffered >= STREAM_BUFFER {
                        return false;
                    }
                    if let Some(bytes) = data.take().filter(|b| !b.is_empty()) {
                        s.buffered += bytes.len();
                        s.recv.push_back(bytes);
                    }
                } else if let Some(delta) = s.take_credit(len) {
                    // Nobody reads it: drop it, but keep the peer sending.
                    reply = Some(Frame::WindowUpdate {
                        stream_id: id,
                        delta,
                    });
                }
                if fin {
                    s.remote_fin = true;
                }
                s.wake();
            }
        }
        if let Some(frame) = reply {
            self.push_control(st, frame);
        }
        st.session_unacked += len;
        if st.session_unacked >= WINDOW_UPDATE_STEP {
            let delta = st.session_unacked.min(MAX_WINDOW as usize) as u32;
            st.session_unacked = 0;
            self.push_control(
                st,
                Frame::WindowUpdate {
                    stream_id: 0,
                    delta,
                },
            );
        }
        true
    }

    fn on_control(&self, st: &mut State, frame: Frame) {
        match frame {
            Frame::SynStream {
                stream_id,
                fin,
                unidirectional,
                headers,
                ..
            } => {
                self.on_syn_stream(st, stream_id, fin, unidirectional, headers);
            }
            Frame::SynReply { stream_id, .. } => {
                // We open no streams, so no SYN_REPLY is ever due.
                if let Some(s) = st.streams.get_mut(&stream_id) {
                    s.cut();
                }
                let rst = Frame::RstStream {
                    stream_id,
                    status: RstStatus::PROTOCOL_ERROR,
                };
                self.push_control(st, rst);
            }
            Frame::RstStream { stream_id, status } => {
                if let Some(s) = st.streams.get_mut(&stream_id) {
                    debug!(stream_id, %status, "SPDY stream reset by the peer");
                    s.cut();
                }
            }
            Frame::Settings { entries, .. } => {
                // A repeated id counts once, first value wins (2.6.4).
                let window = entries
                    .iter()
                    .find(|e| e.id == Setting::INITIAL_WINDOW_SIZE);
                if let Some(setting) = window {
                    self.set_initial_window(st, setting.value);
                }
            }
            Frame::Ping { id } => {
                // Even ids are server pings; we send none, so ignore them.
                if !id.is_multiple_of(2) {
                    self.push_control(st, Frame::Ping { id });
                }
            }
            Frame::GoAway { status, .. } => {
                debug!(%status, "SPDY GOAWAY from the peer");
                st.peer_goaway = true;
                Self::wake_accept(st);
                self.end_if_drained(st);
            }
            Frame::Headers { stream_id, fin, .. } => match st.streams.get_mut(&stream_id) {
                // Extra headers mean nothing to Kubernetes streams; FIN does.
                Some(s) => {
                    if fin {
                        s.remote_fin = true;
                        s.wake();
                    }
                }
                None => {
                    let rst = Frame::RstStream {
                        stream_id,
                        status: RstStatus::INVALID_STREAM,
                    };
                    self.push_control(st, rst);
                }
            },
            Frame::WindowUpdate { stream_id, delta } => self.on_window_update(st, stream_id, delta),
            // DATA takes the on_data path.
            Frame::Data { .. } => {}
        }
    }

    fn on_syn_stream(
        &self,
        st: &mut State,
        id: StreamId,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    ) {
        if st.peer_goaway {
            debug!(id, "SPDY SYN_STREAM after the peer's GOAWAY ignored");
            return;
        }
        if id.is_multiple_of(2) {
            debug!(id, "SPDY client opened an even-numbered stream");
            self.push_control(
                st,
                Frame::RstStream {
                    stream_id: id,
                    status: RstStatus::PROTOCOL_ERROR,
                },
            );
            return;
        }
        if id < st.last_peer_stream {
            warn!(
                id,
                last = st.last_peer_stream,
                "SPDY stream ids went backwards, closing the session"
            );
            self.start_close(st, GoAwayStatus::PROTOCOL_ERROR);
            return;
        }
        if id == st.last_peer_stream {
            debug!(id, "SPDY stream id reused");
            if let Some(s) = st.streams.get_mut(&id) {
                s.cut();
            }
            self.push_control(
                st,
                Frame::RstStream {
                    stream_id: id,
                    status: RstStatus::PROTOCOL_ERROR,
                },
            );
            return;
        }
        st.last_peer_stream = id;
        if st.incoming_dropped {
            self.refuse(st, id);
            return;
        }
        st.streams.insert(
            id,
            StreamState::new(st.peer_initial_window, fin, unidirectional),
        );
        st.pending.push_back((id, headers));
        Self::wake_accept(st);
    }

    fn set_initial_window(&self, st: &mut State, value: u32) {
        let value = i64::from(value);
        if value > MAX_WINDOW {
            warn!(
                value,
                "SPDY SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1 ignored"
            );
            return;
        }
        let delta = value - st.peer_initial_window;
        st.peer_initial_window = value;
        st.stream_windows_enforced = true;
        for stream in st.streams.values_mut() {
            stream.send_window += delta;
            stream.wake();
        }
    }

    fn on_window_update(&self, st: &mut State, id: StreamId, delta: u32) {
        let delta = i64::from(delta);
        if id == 0 {
            st.session_window_enforced = true;
            st.session_send_window += delta;
            if st.session_send_window > MAX_WINDOW {
                warn!("SPDY session window over 2^31-1, closing the session");
                self.start_close(st, GoAwayStatus::PROTOCOL_ERROR);
                return;
            }
            for stream in st.streams.values_mut() {
                stream.wake();
            }
            return;
        }
        st.stream_windows_enforced = true;
        let Some(s) = st.streams.get_mut(&id) else {
            return;
        };
        if s.local_fin || s.reset {
            return;
        }
        s.send_window += delta;
        if s.send_window > MAX_WINDOW {
            debug!(id, "SPDY stream window over 2^31-1");
            s.cut();
            self.push_control(
                st,
                Frame::RstStream {
                    stream_id: id,
                    status: RstStatus::FLOW_CONTROL_ERROR,
                },
            );
            return;
        }
        s.wake();
    }
}

/// The reader task: decodes frames until the peer closes, then ends the
/// session. Once the session is closing it only drains the socket.
async fn read_loop<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut io: R) {
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut draining = false;
    loop {
        while !draining {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => draining = !shared.handle_frame(frame).await,
                Ok(None) => break,
                Err(err) => draining = !shared.frame_error(err),
            }
        }
        if draining {
            buf.clear();
        }
        buf.reserve(READ_CHUNK);
        tokio::select! {
            _ = shared.stop_reading.cancelled() => break,
            read = io.read_buf(&mut buf) => match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => {
                    debug!(%err, "SPDY connection read failed");
                    break;
                }
            },
        }
    }
    let mut st = shared.lock();
    shared.start_close(&mut st, GoAwayStatus::OK);
}

/// The writer task: writes queued frames until the session closes, then
/// GOAWAY; lingers for the reader; marks the session done.
async fn run_writer<W: AsyncWrite + Unpin>(shared: Arc<Shared>, io: W, mut reader: JoinHandle<()>) {
    let graceful = match write_loop(&shared, io).await {
        Ok(()) => true,
        Err(err) => {
            debug!(%err, "SPDY connection write failed");
            false
        }
    };
    {
        let mut st = shared.lock();
        shared.start_close(&mut st, GoAwayStatus::INTERNAL_ERROR);
        st.control.clear();
        st.data.clear();
        st.data_queued = 0;
    }
    let reader_done = graceful && tokio::time::timeout(LINGER, &mut reader).await.is_ok();
    if !reader_done {
        shared.stop_reading.cancel();
        if let Err(err) = reader.await {
            warn!(%err, "SPDY reader task failed");
        }
    }
    shared.done.cancel();
}

async fn write_loop<W: AsyncWrite + Unpin>(shared: &Shared, mut io: W) -> io::Result<()> {
    let mut encoder = FrameEncoder::new();
    let mut frames = Vec::new();
    let mut out = Vec::with_capacity(WRITE_BATCH + 4096);
    loop {
        let goaway = {
            let mut st = shared.lock();
            shared.take_batch(&mut st, &mut frames);
            match st.closing {
                Some(status) if frames.is_empty() => Some(Frame::GoAway {
                    last_good_stream_id: st.last_replied,
                    status,
                }),
                _ => None,
            }
        };
        if frames.is_empty() && goaway.is_none() {
            shared.writer_wake.notified().await;
            continue;
        }
        out.clear();
        for frame in frames.drain(..).chain(goaway.clone()) {
            encoder.encode(&frame, &mut out).map_err(io::Error::other)?;
        }
        io.write_all(&out).await?;
        io.flush().await?;
        if goaway.is_some() {
            return io.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{DuplexStream, ReadHalf as PipeRead, WriteHalf as PipeWrite};
    use tokio::task::JoinHandle;
    use tokio::time::{sleep, timeout};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(20);

    /// The sending side of a small SPDY client speaking to the session.
    struct ClientTx {
        io: PipeWrite<DuplexStream>,
        encoder: FrameEncoder,
    }

    impl ClientTx {
        async fn send(&mut self, frame: Frame) {
            let mut out = Vec::new();
            self.encoder.encode(&frame, &mut out).expect("encode");
            self.io.write_all(&out).await.expect("client write");
        }

        async fn open(&mut self, stream_id: StreamId, pairs: &[(&str, &str)]) {
            self.open_with(stream_id, pairs, false, false).await;
        }

        async fn open_with(
            &mut self,
            stream_id: StreamId,
            pairs: &[(&str, &str)],
            fin: bool,
            unidirectional: bool,
        ) {
            let mut headers = Headers::new();
            for (name, value) in pairs {
                headers.append(name, value).expect("header");
            }
            let syn = Frame::SynStream {
                stream_id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin,
                unidirectional,
                headers,
            };
            self.send(syn).await;
        }

        async fn data(&mut self, stream_id: StreamId, data: &[u8], fin: bool) {
            let data = Bytes::copy_from_slice(data);
            self.send(Frame::Data {
                stream_id,
                fin,
                data,
            })
            .await;
        }
    }

    /// The receiving side of the test client.
    struct ClientRx {
        io: PipeRead<DuplexStream>,
        decoder: FrameDecoder,
        buf: BytesMut,
    }

    impl ClientRx {
        /// The next frame from the session; `None` once it closed the
        /// connection.
        async fn next(&mut self) -> Option<Frame> {
            let read = async {
                loop {
                    if let Some(frame) = self.decoder.decode(&mut self.buf).expect("server frame") {
                        return Some(frame);
                    }
                    self.buf.reserve(READ_CHUNK);
                    if self.io.read_buf(&mut self.buf).await.expect("client read") == 0 {
                        assert!(self.buf.is_empty(), "connection closed inside a frame");
                        return None;
                    }
                }
            };
            timeout(TIMEOUT, read)
                .await
                .expect("timed out waiting for a frame")
        }

        /// The next frame that is not a WINDOW_UPDATE.
        async fn next_skipping_updates(&mut self) -> Option<Frame> {
            loop {
                match self.next().await {
                    Some(Frame::WindowUpdate { .. }) => {}
                    other => return other,
                }
            }
        }

        /// Collects stream `id`'s DATA until its FIN; counts WINDOW_UPDATEs.
        async fn read_stream(&mut self, id: StreamId) -> (Vec<u8>, usize) {
            let mut got = Vec::new();
            let mut updates = 0;
            loop {
                match self.next().await {
                    Some(Frame::Data {
                        stream_id,
                        fin,
                        data,
                    }) if stream_id == id => {
                        got.extend_from_slice(&data);
                        if fin {
                            return (got, updates);
                        }
                    }
                    Some(Frame::WindowUpdate { .. }) => updates += 1,
                    other => panic!("unexpected {other:?} while reading stream {id}"),
                }
            }
        }
    }

    fn start() -> (Session, Incoming, ClientTx, ClientRx) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let (session, incoming) = serve(server);
        let (rd, wr) = tokio::io::split(client);
        let tx = ClientTx {
            io: wr,
            encoder: FrameEncoder::new(),
        };
        let rx = ClientRx {
            io: rd,
            decoder: FrameDecoder::new(),
            buf: BytesMut::new(),
        };
        (session, incoming, tx, rx)
    }

    async fn accept(incoming: &mut Incoming) -> Stream {
        timeout(TIMEOUT, incoming.accept())
            .await
            .expect("accept timed out")
            .expect("a stream")
    }

    /// Opens stream `id`, accepts it, and consumes the SYN_REPLY.
    async fn open_accepted(
        id: StreamId,
        incoming: &mut Incoming,
        tx: &mut ClientTx,
        rx: &mut ClientRx,
    ) -> Stream {
        tx.open(id, &[("streamtype", "data")]).await;
        let stream = accept(incoming).await;
        let reply = rx.next().await;
        assert_eq!(
            reply,
            Some(Frame::SynReply {
                stream_id: id,
                fin: false,
                headers: Headers::new()
            })
        );
        stream
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn handles_move_between_tasks() {
        fn send<T: Send + 'static>() {}
        fn shared<T: Send + Sync + 'static>() {}
        send::<Stream>();
        send::<ReadHalf>();
        send::<WriteHalf>();
        send::<PendingStream>();
        send::<Incoming>();
        shared::<Session>();
    }

    #[tokio::test]
    async fn accepts_streams_with_their_headers_and_replies() {
        let (_session, mut incoming, mut tx, mut rx) = start();
        tx.open(1, &[("StreamType", "error"), ("requestid", "7")])
            .await;
        let stream = accept(&mut incoming).await;
        assert_eq!(stream.id(), 1);
        assert_eq!(stream.header("streamtype"), Some("error"));
        assert_eq!(stream.header("STREAMTYPE"), Some("error"));
        assert_eq!(stream.header("RequestID"), Some("7"));
        assert_eq!(stream.header("port"), None);
        let reply = rx.next().await;
        assert_eq!(
            reply,
            Some(Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new()
            })
        );
    }

    #[tokio::test]
    async fn exchanges_data_and_half_closes_both_ways() {
        let (_session, mut incoming, mut tx, mut rx) = start();
        let mut stream = open_accepted(1, &mut incoming, &mut tx, &mut rx).await;
        tx.data(1, b"ping ", false).await;
        tx.data(1, b"pong", false).await;
        tx.data(1, b"", true).await;
        let mut got = Vec::new();
        timeout(TIMEOUT, stream.read_to_end(&mut got))
            .await
            .expect("read timed out")
            .expect("read");
        assert_eq!(got, b"ping pong");

        // Half-closed by the peer, the stream still writes.
        stream.write_all(b"reply").await.expect("write");
        stream.shutdown().await.expect("shutdown");
        let err = stream
            .write_all(b"more")
            .await
            .expect_err("write after shutdown");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        let (data, _) = rx.read_stream(1).await;
        assert_eq!(data, b"reply");
    }

    #[tokio::test]
    async fn headers_with_fin_half_close_and_syn_fin_opens_closed() {
        let (_session, mut incoming, mut tx, mut rx) = start();
        let mut stream = open_accepted(1, &mut incoming, &mut tx, &mut rx).await;
        tx.send(Frame::Headers {
            stream_id: 1,
            fin: true,
            headers: Headers::new(),
        })
        .await;
        let mut got = Vec::new();
        timeout(TIMEOUT, stream.read_to_end(&mut got))
            .await
            .expect("timed out")
            .expect("read");
        assert!(got.is_empty());

        tx.open_with(3, &[], true, false).await;
        let mut stream = accept(&mut incoming).await;
        timeout(TIMEOUT, stream.read_to_end(&mut got))
            .await
            .expect("timed out")
            .expect("read");
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn unidirectional_streams_get_no_reply_and_refuse_writes() {
        let (_session, mut incoming, mut tx, mut rx) = start();
        tx.open_with(1, &[], false, true).await;
        let mut stream = accept(&mut incoming).await;
        let err = stream
            .write_all(b"x")
            .await
            .expect_err("write on unidirectional");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        tx.data(1, b"one way", true).await;
        let mut got = Vec::new();
        timeout(TIMEOUT, stream.read_to_end(&mut got))
            .await
            .expect("timed out")
            .expect("read");
        assert_eq!(got, b"one way");
        // The first frame the client sees is the PING answer, no SYN_REPLY.
        tx.send(Frame::Ping { id: 1 }).await;
        assert_eq!(rx.next().await, Some(Frame::Ping { id: 1 }));
    }

    #[tokio::test]
    async fn answers_client_pings_and_ignores_even_ones() {
        let (_session, _incoming, mut tx, mut rx) = start();
        tx.send(Frame::Ping { id: 1 }).await;
        assert_eq!(rx.next().await, Some(Frame::Ping { id: 1 }));
        tx.send(Frame::Ping { id: 2 }).await;
        tx.send(Frame::Ping { id: 0xffff_ffff }).await;
        assert_eq!(rx.next().await, Some(Frame::Ping { id: 0xffff_ffff }));
    }

    #[tokio::test]
    async fn peer_reset_ends_reads_after_buffered_data_and_fails_writes() {
        let (_session, mut incoming, mut tx, mut rx) = start();
        let mut stream = open_accepted(1, &mut incoming, &mut tx, &mut rx).await;
        tx.data(1, b"abc", false).await;
        tx.send(Frame::RstStream {
            stream_id: 1,
            status: RstStatus::CANCEL,
        })
        .await;
        let mut got = Vec::new();
        timeout(TIMEOUT, stream.read_to_end(&mut got))
            .await
            .expect("timed out")
            .expect("read");
        assert_eq!(got, b"abc");
        let err = stream.write_all(b"x").await.expect_err("write after reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        drop(stream);
        // No RST answers an RST: the next frame is the PING answer.
        tx.send(Frame::Ping { id: 3 }).await;
        assert_eq!(rx.next().await, Some(Frame::Ping { id: 3 }));
    }

    #[tokio::test]
    async fn reset_sends_rst_stream_and_ends_the_stream() {
        let (_session, mut incoming, mut tx, mut rx) = start();
        let mut stream = open_accepted(1, &mut incoming, &mut tx, &mut rx).await;
        stream.reset(RstStatus::INTERNAL_ERROR);
        let rst = rx.next().await;
        assert_eq!(
            rst,
            Some(Frame::RstStream {
                stream_id: 1,
                status: RstStatus::INTERNAL_ERROR
            })
        );
        let mut got = Vec::new();
        stream
            .read_to_end(&mut got)
            .await
            .expect("read after reset");
        assert!(got.is_empty());
        assert!(stream.write_all(b"x").await.is_err());
        drop(stream);
        tx.send(Frame::Ping { id: 5 }).await;
        assert_eq!(
            rx.next().await,
            Some(Frame::Ping { id: 5 }),
            "no second RST on drop"
        );
    }

    #[tokio::test]
    async fn refusing_sends_refused_stream() {
        let (_session, mut incoming, mut tx, mut rx) = start();
        tx.open(1, &[("streamtype", "bogus")]).await;
        let pending = timeout(TIMEOUT, incoming.accept_pending())
            .await
            .expect("timed out")
            .expect("stream");
        assert_eq!(
            (pending.id(), pending.header("StreamType")),
            (1, Some("bogus"))
        );
        pending.refuse();
        let rst = rx.next().await;
        assert_eq!(
            rst,
            Some(Frame::RstStream {
                stream_id: 1,
                status: RstStatus::REFUSED_STREAM
            })
        );

        // Once Incoming is gone every new stream is refused.
        drop(incoming);
        tx.open(3, &[]).await;
        let rst = rx.next().await;
        assert_eq!(
            rst,
            Some(Frame::RstStream {
                stream_id: 3,
                status: RstStatus::REFUSED_STREAM
            })
        );
    }

    #[tokio::test]
    async fn peer_goaway_ends_the_session_after_its_streams() {
        let (session, mut incoming, mut tx, mut rx) = start();
        let mut stream = open_accepted(1, &mut incoming, &mut tx, &mut rx).await;
        tx.send(Frame::GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::OK,
        })
        .await;
        assert!(
            timeout(TIMEOUT, incoming.accept())
                .await
                .expect("timed out")
                .is_none()
        );

        // The open stream carries on.
        tx.data(1, b"last words", true).await;
        let mut got = Vec::new();
        timeout(TIMEOUT, stream.read_to_end(&mut got))
            .await
            .expect("timed out")
            .expect("read");
        assert_eq!(got, b"last words");
        stream.write_all(b"bye").await.expect("write");
        assert!(!session.is_closed());
        drop(stream);

        let (data, _) = rx.read_stream(1).await;
        assert_eq!(data, b"bye");
        let goaway = rx.next_skipping_updates().await;
        assert_eq!(
            goaway,
            Some(Frame::GoAway {
                last_good_stream_id: 1,
                status: GoAwayStatus::OK
            })
        );
        assert_eq!(rx.next().await, None);
        drop((tx, rx));
        timeout(TIMEOUT, session.closed())
            .await
            .expect("session did not close");
        assert!(session.is_closed());
    }

    #[tokio::test]
    async fn close_sends_goaway_after_queued_data_then_closes() {
        let (session, mut incoming, mut tx, mut rx) = start();
        let mut stream = open_accepted(1, &mut incoming, &mut tx, &mut rx).await;
        let sent = pattern(200 * 1024, 1);
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                stream.write_all(&sent).await.expect("write");
                stream
            })
        };
        let stream = timeout(TIMEOUT, writer)
            .await
            .expect("timed out")
            .expect("writer");
        let client = async move {
            let mut got = Vec::new();
            let mut frames = Vec::new();
            while let Some(frame) = rx.next().await {
                match frame {
                    Frame::Data { data, .. } => got.extend_from_slice(&data),
                    other => frames.push(other),
                }
            }
            drop((tx, rx));
            (got, frames)
        };
        let ((got, frames), ()) = timeout(TIMEOUT, async { tokio::join!(client, session.close()) })
            .await
            .expect("close timed out");
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "data differs");
        assert_eq!(
            frames,
            [Frame::GoAway {
                last_good_stream_id: 1,
                status: GoAwayStatus::OK
            }]
        );
        assert!(session.is_closed());
        let mut stream = stream;
        let err = stream.write_all(b"x").await.expect_err("write after close");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(
            timeout(TIMEOUT, incoming.accept())
                .await
                .expect("timed out")
                .is_none()
        );
    }

    #[tokio::test]
    async fn dropping_the_last_session_clone_closes() {
        let (session, _incoming, mut tx, mut rx) = start();
        let clone = session.clone();
        drop(session);
        tx.send(Frame::Ping { id: 1 }).await;
        assert_eq!(
            rx.next().await,
            Some(Frame::Ping { id: 1 }),
            "still open with a clone"
        );
        drop(clone);
        assert_eq!(
            rx.next().await,
            Some(Frame::GoAway {
                last_good_stream_id: 0,
                status: GoAwayStatus::OK
            })
        );
        assert_eq!(rx.next().await, None);
    }

    #[tokio::test]
    async fn session_ends_when_the_peer_disconnects() {
        let (session, mut incoming, mut tx, mut rx) = start();
        let mut stream = open_accepted(1, &mut incoming, &mut tx, &mut rx).await;
        drop((tx, rx));
        let mut got = Vec::new();
        timeout(TIMEOUT, stream.read_to_end(&mut got))
            .await
            .expect("timed out")
            .expect("read");
        assert!(got.is_empty());
        assert!(stream.write_all(b"x").await.is_err());
        assert!(
            timeout(TIMEOUT, incoming.accept())
                .await
                .expect("timed out")
                .is_none()
        );
        timeout(TIMEOUT, session.closed())
            .await
            .expect("session did not close");
    }

    /// A client like spdystream's: it never sends WINDOW_UPDATE, and
    /// writes as fast as the socket takes it.
    #[tokio::test]
    async fn large_transfers_both_ways_do_not_stall_without_window_updates() {
        const SIZE: usize = 3 * 1024 * 1024;
        let (_session, mut incoming, mut tx, mut rx) = start();
        let stream = open_accepted(1, &mut incoming, &mut tx, &mut rx).await;
        let (mut read, mut write) = stream.into_split();
        let server_reader = tokio::spawn(async move {
            let mut got = Vec::new();
            read.read_to_end(&mut got).await.expect("server read");
            got
        });
        let server_writer = tokio::spawn(async move {
            write
                .write_all(&pattern(SIZE, 7))
                .await
                .expect("server write");
            write.shutdown().await.expect("shutdown");
        });
        let client_writer = tokio::spawn(async move {
            for chunk in pattern(SIZE, 3).chunks(32 * 1024) {
                tx.data(1, chunk, false).await;
            }
            tx.data(1, b"", true).await;
            tx
        });
        let (from_server, updates) = rx.read_stream(1).await;
        assert!(
            from_server == pattern(SIZE, 7),
            "server data differs ({} bytes)",
            from_server.len()
        );
        let from_client = timeout(TIMEOUT, server_reader)
            .await
            .expect("timed out")
            .expect("task");
        assert!(
            from_client == pattern(SIZE, 3),
            "client data differs ({} bytes)",
            from_client.len()
        );
        timeout(TIMEOUT, server_writer)
            .await
            .expect("timed out")
            .expect("task");
        timeout(TIMEOUT, client_writer)
            .await
            .expect("timed out")
            .expect("task");
        // Credit went back for what was consumed, per stream and session,
        // at least up to the data consumed before the server's FIN arrived.
        assert!(
            updates >= 2 * (SIZE / WINDOW_UPDATE_STEP) / 2,
            "{updates} WINDOW_UPDATEs"
        );
    }

    #[tokio::test]
    async fn window_updates_credit_consumed_data() {
        let (_session, mut incoming, mut tx, mut rx) = start();
        let mut stream = open_accepted(1, &mut incoming, &mut tx, &mut rx).await;
        tx.data(1, &[0; 40 * 1024], false).await;
        let mut buf = vec![0; 40 * 1024];
        timeout(TIMEOUT, stream.read_exact(&mut buf))
            .await
            .expect("timed out")
            .expect("read");
        let mut updates = vec![rx.next().await, rx.next().await];
        updates.sort_by_key(|f| format!("{f:?}"));
        assert_eq!(
            updates,
            [
                Some(Frame::WindowUpdate {
                    stream_id: 0,
                    delta: 40 * 1024
                }),
                Some(Frame::WindowUpdate {
                    stream_id: 1,
                    delta: 40 * 1024
                }),
            ]
        );
    }

    /// Reads DATA of stream `id` until `want` bytes arrived.
    async fn read_data(rx: &mut ClientRx, id: StreamId, want: usize) -> usize {
        let mut got = 0;
        while got < want {
            match rx.next().await {
                Some(Frame::Data {
                    stream_id, data, ..
                }) if stream_id == id => got += data.len(),
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    }

    async fn assert_quiet(rx: &mut ClientRx) {
        let next = timeout(Duration::from_millis(300), rx.next()).await;
        assert!(next.is_err(), "expected silence, got {next:?}");
    }

    #[tokio::test]
    async fn honours_the_peers_stream_windows_once_it_flow_controls() {
        let (_session, mut incoming, mut tx, mut rx) = start();
        let entry = Setting {
            id: Setting::INITIAL_WINDOW_SIZE,
            flags: 0,
            value: 16 * 1024,
        };
        tx.send(Frame::Settings {
            clear_persisted: false,
            entries: vec![entry],
        })
        .await;
        let mut stream = open_accepted(1, &mut incoming, &mut tx, &mut rx).await;
        let writer = tokio::spawn(async move {
            stream.write_all(&[1; 64 * 1024]).await.expect("write");
            stream.shutdown().await.expect("shutdown");
            stream
        });
        assert_eq!(read_data(&mut rx, 1, 16 * 1024).await, 16 * 1024);
        assert_quiet(&mut rx).await;
        tx.send(Frame::WindowUpdate {
            stream_id: 1,
            delta: 8 * 1024,
        })
        .await;
        assert_eq!(read_data(&mut rx, 1, 8 * 1024).await, 8 * 1024);
        assert_quiet(&mut rx).await;
        tx.send(Frame::WindowUpdate {
            stream_id: 1,
            delta: 1 << 20,
        })
        .await;
        let (rest, _) = rx.read_stream(1).await;
        assert_eq!(rest.len(), 40 * 1024);
        timeout(TIMEOUT, writer)
            .await
            .expect("timed out")
            .expect("writer");
    }

    #[tokio::test]
    async fn honours_the_session_window_once_the_peer_updates_it() {
        let (_session, mut incoming, mut tx, mut rx) = start();
        tx.send(Frame::WindowUpdate {
            stream_id: 0,
            delta: 1,
        })
        .await;
        let mut stream = open_accepted(1, &mut incoming, &mut tx, &mut rx).await;
        let writer = tokio::spawn(async move {
            stream.write_all(&[1; 100 * 1024]).await.expect("write");
            stream.shutdown().await.expect("shutdown");
        });
        let window = 64 * 1024 + 1;
        assert_eq!(read_data(&mut rx, 1, window).await, window);
        assert_quiet(&mut rx).await;
        tx.send(Frame::WindowUpdate {
            stream_id: 0,
            delta: 1 << 20,
        })
        .await;
        let (rest, _) = rx.read_stream(1).await;
        assert_eq!(rest.len(), 100 * 1024 - window);
        timeout(TIMEOUT, writer)
            .await
            .expect("timed out")
            .expect("writer");
    }

    #[tokio::test]
    async fn many_concurrent_streams_echo() {
        const STREAMS: u32 = 40;
        let (_session, mut incoming, mut tx, mut rx) = start();
        let server = tokio::spawn(async move {
            let mut echoes = Vec::new();
            while let Some(mut stream) = incoming.accept().await {
                echoes.push(tokio::spawn(async move {
                    let mut got = Vec::new();
                    stream.read_to_end(&mut got).await.expect("read");
                    stream.write_all(&got).await.expect("write");
                    stream.shutdown().await.expect("shutdown");
                }));
            }
            echoes
        });
        let message = |id: u32| format!("stream {id};").repeat(1000).into_bytes();
        let client_writer = tokio::spawn(async move {
            for i in 0..STREAMS {
                tx.open(2 * i + 1, &[("streamtype", "data")]).await;
            }
            for round in 0..4 {
                for i in 0..STREAMS {
                    let id = 2 * i + 1;
                    let all = message(id);
                    let quarter = all.len() / 4;
                    tx.data(id, &all[round * quarter..(round + 1) * quarter], round == 3)
                        .await;
                }
            }
            tx
        });
        let mut echoed: HashMap<StreamId, Vec<u8>> = HashMap::new();
        let mut finished = 0;
        let mut replies = 0;
        while finished < STREAMS {
            match rx.next().await {
                Some(Frame::SynReply { .. }) => replies += 1,
                Some(Frame::Data {
                    stream_id,
                    fin,
                    data,
                }) => {
                    echoed
                        .entry(stream_id)
                        .or_default()
                        .extend_from_slice(&data);
                    finished += u32::from(fin);
                }
                Some(Frame::WindowUpdate { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(replies, STREAMS);
        for i in 0..STREAMS {
            let id = 2 * i + 1;
            assert!(
                echoed.get(&id) == Some(&message(id)),
                "stream {id} echoed wrong data"
            );
        }
        let tx = timeout(TIMEOUT, client_writer)
            .await
            .expect("timed out")
            .expect("client");
        drop((tx, rx));
        let echoes = timeout(TIMEOUT, server)
            .await
            .expect("timed out")
            .expect("server");
        assert_eq!(echoes.len(), STREAMS as usize);
    }

    #[tokio::test]
    async fn an_unread_stream_stops_socket_reads_instead_of_buffering() {
        const SIZE: usize = 1024 * 1024;
        let (_session, mut incoming, mut tx, mut rx) = start();
        let mut stream = open_accepted(1, &mut incoming, &mut tx, &mut rx).await;
        let sender = tokio::spawn(async move {
            for chunk in pattern(SIZE, 5).chunks(16 * 1024) {
                tx.data(1, chunk, false).await;
            }
            tx.data(1, b"", true).await;
            tx
        });
        sleep(Duration::from_millis(300)).await;
        assert!(!sender.is_finished(), "1 MiB was taken with nobody reading");
        let mut got = Vec::new();
        timeout(TIMEOUT, stream.read_to_end(&mut got))
            .await
            .expect("timed out")
            .expect("read");
        assert!(
            got == pattern(SIZE, 5),
            "data differs ({} bytes)",
            got.len()
        );
        timeout(TIMEOUT, sender)
            .await
            .expect("timed out")
            .expect("sender");
    }

    #[tokio::test]
    async fn a_slow_socket_holds_writers_back() {
        const SIZE: usize = 2 * 1024 * 1024;
        let (_session, mut incoming, mut tx, mut rx) = start();
        let mut stream = open_accepted(1, &mut incoming, &mut tx, &mut rx).await;
        let writer: JoinHandle<()> = tokio::spawn(async move {
            stream.write_all(&pattern(SIZE, 9)).await.expect("write");
            stream.shutdown().await.expect("shutdown");
        });
        sleep(Duration::from_millis(300)).await;
        assert!(
            !writer.is_finished(),
            "2 MiB were queued with nobody reading"
        );
        let (got, _) = rx.read_stream(1).await;
        assert!(
            got == pattern(SIZE, 9),
            "data differs ({} bytes)",
            got.len()
        );
        timeout(TIMEOUT, writer)
            .await
            .expect("timed out")
            .expect("writer");
    }

    #[tokio::test]
    async fn dropping_streams_cancels_them_without_blocking_others() {
        let (_session, mut incoming, mut tx, mut rx) = start();
        let first = open_accepted(1, &mut incoming, &mut tx, &mut rx).await;
        let second = open_accepted(3, &mut incoming, &mut tx, &mut rx).await;
        tx.data(1, &[0; 8 * 1024], false).await;
        // Once the PING is answered the DATA before it is buffered.
        tx.send(Frame::Ping { id: 1 }).await;
        assert_eq!(
            rx.next_skipping_updates().await,
            Some(Frame::Ping { id: 1 })
        );
        drop(first);
        // FIN for our side, then CANCEL so the peer stops sending.
        let fin = rx.next_skipping_updates().await;
        assert_eq!(
            fin,
            Some(Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new()
            })
        );
        let cancel = rx.next_skipping_updates().await;
        assert_eq!(
            cancel,
            Some(Frame::RstStream {
                stream_id: 1,
                status: RstStatus::CANCEL
            })
        );
        // DATA already in flight for it is dropped quietly.
        tx.data(1, &[0; 100 * 1024], false).await;
        tx.send(Frame::Ping { id: 3 }).await;
        assert_eq!(
            rx.next_skipping_updates().await,
            Some(Frame::Ping { id: 3 })
        );

        // Without its read half the second stream discards, credits the
        // window, and still writes.
        let (read, mut write) = second.into_split();
        drop(read);
        tx.data(3, &[0; 64 * 1024], false).await;
        tx.data(3, &[0; 64 * 1024], true).await;
        write.write_all(b"still here").await.expect("write");
        write.shutdown().await.expect("shutdown");
        let mut credited = 0;
        let mut data = Vec::new();
        loop {
            match rx.next().await {
                Some(Frame::WindowUpdate {
                    stream_id: 3,
                    delta,
                }) => credited += delta,
                Some(Frame::WindowUpdate { stream_id: 0, .. }) => {}
                Some(Frame::Data {
                    stream_id: 3,
                    fin,
                    data: d,
                }) => {
                    data.extend_from_slice(&d);
                    if fin {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(data, b"still here");
        drop(write);
        tx.send(Frame::Ping { id: 5 }).await;
        loop {
            match rx.next().await {
                Some(Frame::WindowUpdate {
                    stream_id: 3,
                    delta,
                }) => credited += delta,
                Some(Frame::WindowUpdate { stream_id: 0, .. }) => {}
                Some(Frame::Ping { id: 5 }) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(credited >= 64 * 1024, "only {credited} bytes credited");
    }

    #[tokio::test]
    async fn stream_protocol_violations_get_rst_stream() {
        let (_session, mut incoming, mut tx, mut rx) = start();
        // An even (server-side) stream id from the client.
        tx.open(2, &[]).await;
        let rst = rx.next().await;
        assert_eq!(
            rst,
            Some(Frame::RstStream {
                stream_id: 2,
                status: RstStatus::PROTOCOL_ERROR
            })
        );
        // DATA on a stream nobody opened.
        tx.data(9, b"x", false).await;
        let rst = rx.next().await;
        assert_eq!(
            rst,
            Some(Frame::RstStream {
                stream_id: 9,
                status: RstStatus::INVALID_STREAM
            })
        );
        // A stream id used twice: the stream is reset.
        let mut stream = open_accepted(11, &mut incoming, &mut tx, &mut rx).await;
        tx.open(11, &[]).await;
        let rst = rx.next().await;
        assert_eq!(
            rst,
            Some(Frame::RstStream {
                stream_id: 11,
                status: RstStatus::PROTOCOL_ERROR
            })
        );
        let mut got = Vec::new();
        timeout(TIMEOUT, stream.read_to_end(&mut got))
            .await
            .expect("timed out")
            .expect("read");
        assert!(stream.write_all(b"x").await.is_err());
        // DATA after the peer's FIN.
        let _closed = open_accepted(13, &mut incoming, &mut tx, &mut rx).await;
        tx.data(13, b"end", true).await;
        tx.data(13, b"more", false).await;
        let rst = rx.next_skipping_updates().await;
        assert_eq!(
            rst,
            Some(Frame::RstStream {
                stream_id: 13,
                status: RstStatus::STREAM_ALREADY_CLOSED
            })
        );
        // A SYN_REPLY from the client, and an invalid header block.
        tx.send(Frame::SynReply {
            stream_id: 15,
            fin: false,
            headers: Headers::new(),
        })
        .await;
        let rst = rx.next().await;
        assert_eq!(
            rst,
            Some(Frame::RstStream {
                stream_id: 15,
                status: RstStatus::PROTOCOL_ERROR
            })
        );
        tx.send(Frame::Data {
            stream_id: 17,
            fin: false,
            data: Bytes::new(),
        })
        .await;
        let rst = rx.next().await;
        assert_eq!(
            rst,
            Some(Frame::RstStream {
                stream_id: 17,
                status: RstStatus::INVALID_STREAM
            })
        );
        // The session is still fine.
        tx.send(Frame::Ping { id: 1 }).await;
        assert_eq!(rx.next().await, Some(Frame::Ping { id: 1 }));
    }

    #[tokio::test]
    async fn stream_ids_going_backwards_end_the_session() {
        let (session, mut incoming, mut tx, mut rx) = start();
        let _stream = open_accepted(5, &mut incoming, &mut tx, &mut rx).await;
        tx.open(3, &[]).await;
        let goaway = rx.next().await;
        assert_eq!(
            goaway,
            Some(Frame::GoAway {
                last_good_stream_id: 5,
                status: GoAwayStatus::PROTOCOL_ERROR
            })
        );
        assert_eq!(rx.next().await, None);
        drop((tx, rx));
        timeout(TIMEOUT, session.closed())
            .await
            .expect("session did not close");
    }

    #[tokio::test]
    async fn garbage_ends_the_session_with_protocol_error() {
        for garbage in [
            // A SPDY/2 SYN_STREAM.
            &b"\x80\x02\x00\x01\x00\x00\x00\x0a\0\0\0\x01\0\0\0\0\0\0"[..],
            // A RST_STREAM of the wrong length.
            b"\x80\x03\x00\x03\x00\x00\x00\x04\0\0\0\x01",
            // A header block that is not zlib.
            b"\x80\x03\x00\x02\x00\x00\x00\x08\0\0\0\x01garb",
            // DATA on stream 0.
            b"\0\0\0\0\0\0\0\x01x",
        ] {
            let (session, _incoming, mut tx, mut rx) = start();
            tx.io.write_all(garbage).await.expect("write");
            let goaway = rx.next().await;
            assert_eq!(
                goaway,
                Some(Frame::GoAway {
                    last_good_stream_id: 0,
                    status: GoAwayStatus::PROTOCOL_ERROR
                }),
                "{garbage:?}"
            );
            assert_eq!(rx.next().await, None);
            drop((tx, rx));
            timeout(TIMEOUT, session.closed())
                .await
                .expect("session did not close");
        }
    }
}
