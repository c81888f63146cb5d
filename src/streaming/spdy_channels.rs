//! Exec and attach over SPDY: the client opens one stream per channel,
//! named by its `streamType` header (`error`, `stdin`, `stdout`, `stderr`,
//! `resize`); the session starts once every stream the request implies has
//! arrived.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::remotecommand::{BoxRead, BoxWrite, Channels, Options, Version};
use super::{Pending, Shared, spdy};

/// How long a client gets to open its streams (the kubelet's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The streams a session expects.
fn expected(options: &Options, version: Version) -> Vec<&'static str> {
    let mut names = vec!["error"];
    if options.stdin {
        names.push("stdin");
    }
    if options.stdout {
        names.push("stdout");
    }
    if options.wants_stderr() {
        names.push("stderr");
    }
    if options.tty && version >= Version::V3 {
        names.push("resize");
    }
    names
}

/// Serves one exec or attach connection.
pub(crate) async fn serve_remote_command<IO>(
    io: IO,
    version: Version,
    pending: Pending,
    shared: Arc<Shared>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let options = match &pending {
        Pending::Exec(r) => r.options,
        Pending::Attach(r) => r.options,
        Pending::PortForward(_) => return,
    };
    let (session, mut incoming) = spdy::serve(io);
    let wanted = expected(&options, version);
    let mut streams: Vec<(&'static str, spdy::Stream)> = Vec::new();
    let gathered = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
        while streams.len() < wanted.len() {
            let stream = incoming.accept().await?;
            let kind = stream.header("streamtype").unwrap_or_default().to_string();
            match wanted.iter().find(|w| **w == kind) {
                Some(name) if !streams.iter().any(|(n, _)| n == name) => {
                    streams.push((name, stream));
                }
                _ => {
                    tracing::debug!(stream_type = %kind, "unexpected stream refused");
                    stream.reset(spdy::RstStatus::REFUSED_STREAM);
                }
            }
        }
        Some(())
    })
    .await;
    if !matches!(gathered, Ok(Some(()))) {
        tracing::debug!(
            ?wanted,
            got = streams.len(),
            "client did not open its streams"
        );
        session.close().await;
        return;
    }
    let mut take = |name: &str| {
        streams
            .iter()
            .position(|(n, _)| *n == name)
            .map(|i| streams.swap_remove(i).1)
    };
    let split = |s: spdy::Stream| -> (BoxRead, BoxWrite) {
        let (r, w) = tokio::io::split(s);
        (Box::pin(r), Box::pin(w))
    };
    let Some(error) = take("error") else {
        session.close().await;
        return;
    };
    let stdin = take("stdin").map(|s| split(s).0);
    let stdout = take("stdout").map(|s| split(s).1);
    let stderr = take("stderr").map(|s| split(s).1);
    let resize = take("resize").map(|s| split(s).0);
    let closed_session = session.clone();
    let channels = Channels {
        stdin,
        stdout,
        stderr,
        resize,
        error: split(error).1,
        closed: Box::pin(async move { closed_session.closed().await }),
    };
    // Streams the client opens later (none are expected) are refused.
    let refuser = tokio::spawn(async move {
        while let Some(stream) = incoming.accept().await {
            stream.reset(spdy::RstStatus::REFUSED_STREAM);
        }
    });
    match pending {
        Pending::Exec(request) => super::run_exec(channels, version, request, shared).await,
        Pending::Attach(request) => super::run_attach(channels, version, request, shared).await,
        Pending::PortForward(_) => {}
    }
    refuser.abort();
    session.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_streams_follow_the_options() {
        let all = Options {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        assert_eq!(
            expected(&all, Version::V4),
            ["error", "stdin", "stdout", "stderr"]
        );
        let tty = Options { tty: true, ..all };
        assert_eq!(
            expected(&tty, Version::V4),
            ["error", "stdin", "stdout", "resize"]
        );
        assert_eq!(expected(&tty, Version::V2), ["error", "stdin", "stdout"]);
    }
}
