//! The streaming server: Exec, Attach and PortForward sessions that the CRI
//! RPCs hand out as single-use URLs, over SPDY/3.1 and WebSocket.

pub mod spdy;
