//! SPDY/3.1 as Kubernetes streaming clients speak it (server side).
//!
//! kubectl and crictl reach Exec, Attach and PortForward over an HTTP
//! connection upgraded to `SPDY/3.1`, framed by moby/spdystream. No crate
//! implements the server side, so it lives here in two layers:
//! - [`frame`]: the wire format, every frame type and the zlib-compressed
//!   header blocks with the SPDY/3 dictionary.
//! - [`session`]: a server-side session over any tokio byte stream: the
//!   streams the client opens, DATA both ways with backpressure, PING,
//!   GOAWAY, and flow control as spdystream clients (do not) do it.

pub mod frame;
pub mod session;

pub use frame::{GoAwayStatus, Headers, RstStatus, StreamId};
pub use session::{Incoming, PendingStream, ReadHalf, Session, Stream, WriteHalf, serve};
