//! Terminals: the console socket through which the OCI runtime hands the
//! shim a container process's pty master (`runc create|exec
//! --console-socket`), and what the shim does with a master: set its
//! window size, send end-of-file.
//!
//! runc connects to the socket once the pty exists and sends one message
//! whose ancillary data carries the master (`SCM_RIGHTS`) and whose bytes
//! name the pty. It has done so by the time `runc create` (or `runc exec
//! --detach`) exits successfully, so the shim receives the master after the
//! runtime returns, without a thread.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use rustix::termios::{SpecialCodeIndex, Winsize};

/// How long the runtime's message may take once it has exited.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A listening console socket, removed when dropped.
pub(crate) struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens on `path` (a stale file there is replaced).
    pub(crate) fn bind(path: &Path) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// The socket's path, for `--console-socket`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The pty master the runtime sent, once it has exited successfully.
    pub(crate) fn receive(&self) -> io::Result<OwnedFd> {
        let (stream, _) = self.listener.accept().map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => io::Error::other("the runtime sent no console"),
            _ => e,
        })?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut name = [0u8; 256];
        rustix::net::recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut name)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut master = None;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                // Keep the first; any other is dropped (closed) here.
                for fd in fds {
                    master.get_or_insert(fd);
                }
            }
        }
        master.ok_or_else(|| io::Error::other("the runtime's console message carried no fd"))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sets the window size of the terminal whose master is `master`.
pub(crate) fn resize(master: impl AsFd, width: u32, height: u32) -> io::Result<()> {
    let size = |n: u32, what: &str| {
        u16::try_from(n).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} {n} is out of range"),
            )
        })
    };
    let winsize = Winsize {
        ws_row: size(height, "height")?,
        ws_col: size(width, "width")?,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, winsize)?;
    Ok(())
}

/// The byte that means end-of-file to the terminal's reader (its `VEOF`,
/// Ctrl-D unless the program changed it).
pub(crate) fn eof_byte(master: impl AsFd) -> u8 {
    rustix::termios::tcgetattr(master)
        .map(|t| t.special_codes[SpecialCodeIndex::VEOF])
        .unwrap_or(0x04)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn receives_the_fd_a_runtime_sends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = ConsoleSocket::bind(&dir.path().join("console.sock")).expect("bind");
        assert!(socket.receive().is_err(), "nothing was sent yet");
        // What runc does: connect and send the master with its name.
        let file = std::fs::File::open("/dev/null").expect("open");
        let stream = UnixStream::connect(socket.path()).expect("connect");
        let fds = [file.as_fd()];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &stream,
            &[io::IoSlice::new(b"/dev/pts/9")],
            &mut control,
            rustix::net::SendFlags::empty(),
        )
        .expect("sendmsg");
        let received = socket.receive().expect("receive");
        let (ours, theirs) = (
            rustix::fs::fstat(&received).expect("fstat"),
            rustix::fs::fstat(&file).expect("fstat"),
        );
        assert_eq!((ours.st_dev, ours.st_ino), (theirs.st_dev, theirs.st_ino));
        let path = socket.path().to_owned();
        drop(socket);
        assert!(!path.exists(), "the socket file stays");
    }

    #[test]
    fn resizing_needs_a_terminal_and_sizes_in_range() {
        let file = std::fs::File::open("/dev/null").expect("open");
        assert!(resize(&file, 80, 24).is_err());
        assert_eq!(
            resize(&file, 70_000, 24).map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::InvalidInput)
        );
    }
}
