//! The shim's command line, in containerd's shim v2 shape, parsed by hand
//! (a flag parser would cost resident memory in every shim).

use std::ffi::OsString;
use std::path::PathBuf;

use super::ShimError;

/// The command line, printed with every usage error.
pub const USAGE: &str = "usage: berth-shim -namespace NS -id ID [-address ADDR] [-bundle DIR] \
[-state-dir DIR] [-publish-binary BIN] [-debug] start|delete

start   daemonizes a shim for task ID, listening on a ttrpc socket in the state dir
        (default /run/berth/shim/NS/ID), prints its address and exits 0 once it listens
delete  cleans up after a shim that cannot be reached: kills its processes, removes its
        socket, and prints a protobuf DeleteResponse

environment: TTRPC_ADDRESS (a socket path or unix://PATH) receives task events through
containerd.services.events.ttrpc.v1.Events/Forward";

/// What the shim is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start (daemonize) a shim.
    Start,
    /// Clean up after a shim.
    Delete,
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    /// The containerd namespace (berth: `k8s.io`).
    pub namespace: String,
    /// The task id.
    pub id: String,
    /// The caller's own address (containerd's; kept for compatibility, not
    /// used: events go to the socket in `TTRPC_ADDRESS`, see
    /// [`super::events`]).
    pub address: Option<String>,
    /// The task's bundle, if given.
    pub bundle: Option<PathBuf>,
    /// The shim's state dir (absolute).
    pub state_dir: PathBuf,
    /// What to do.
    pub action: Action,
}

impl ShimArgs {
    /// Parses the arguments (without the program name). Flags take one or
    /// two dashes, `-flag value` or `-flag=value`.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, ShimError> {
        let usage = |m: String| ShimError::Usage(m);
        let (mut namespace, mut id, mut address, mut bundle, mut state_dir, mut action) =
            (None, None, None, None, None, None);
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let arg = arg
                .into_string()
                .map_err(|a| usage(format!("argument {a:?} is not UTF-8")))?;
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                let wanted = match arg.as_str() {
                    "start" => Action::Start,
                    "delete" => Action::Delete,
                    other => return Err(usage(format!("unknown action {other:?}"))),
                };
                if action.replace(wanted).is_some() {
                    return Err(usage("more than one action".into()));
                }
                continue;
            };
            let (flag, inline) = match flag.split_once('=') {
                Some((f, v)) => (f, Some(v.to_owned())),
                None => (flag, None),
            };
            if flag == "debug" {
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => args
                    .next()
                    .ok_or_else(|| usage(format!("-{flag} needs a value")))?
                    .into_string()
                    .map_err(|v| usage(format!("-{flag} {v:?} is not UTF-8")))?,
            };
            match flag {
                "namespace" => namespace = Some(value),
                "id" => id = Some(value),
                "address" => address = Some(value),
                "bundle" => bundle = Some(PathBuf::from(value)),
                "state-dir" => state_dir = Some(PathBuf::from(value)),
                "publish-binary" => {}
                other => return Err(usage(format!("unknown flag -{other}"))),
            }
        }
        let namespace = namespace.ok_or_else(|| usage("-namespace is required".into()))?;
        let id = id.ok_or_else(|| usage("-id is required".into()))?;
        for (what, name) in [("namespace", &namespace), ("id", &id)] {
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                return Err(usage(format!("invalid {what} {name:?}")));
            }
        }
        let state_dir = state_dir
            .unwrap_or_else(|| PathBuf::from("/run/berth/shim").join(&namespace).join(&id));
        if !state_dir.is_absolute() {
            return Err(usage(format!(
                "-state-dir {} is not absolute",
                state_dir.display()
            )));
        }
        let action = action.ok_or_else(|| usage("no action (start or delete)".into()))?;
        Ok(Self {
            namespace,
            id,
            address,
            bundle,
            state_dir,
            action,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ShimArgs, ShimError> {
        ShimArgs::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn parses_containerd_shape_and_berth_flags() {
        let args = parse(&[
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-id",
            "abc",
            "--state-dir=/run/x",
            "-debug",
            "start",
        ])
        .expect("parse");
        assert_eq!(args.namespace, "k8s.io");
        assert_eq!(args.id, "abc");
        assert_eq!(args.state_dir, PathBuf::from("/run/x"));
        assert_eq!(args.action, Action::Start);
        let args = parse(&["-namespace", "n", "-id", "i", "delete"]).expect("parse");
        assert_eq!(args.state_dir, PathBuf::from("/run/berth/shim/n/i"));
        assert_eq!(args.action, Action::Delete);
    }

    #[test]
    fn refuses_bad_command_lines() {
        for bad in [
            &["-id", "i", "start"][..],
            &["-namespace", "n", "start"],
            &["-namespace", "n", "-id", "../x", "start"],
            &["-namespace", "n", "-id", "i"],
            &["-namespace", "n", "-id", "i", "run"],
            &["-namespace", "n", "-id", "i", "-state-dir", "rel", "start"],
            &["-namespace", "n", "-id", "i", "-bogus", "1", "start"],
            &["-namespace", "n", "-id"],
        ] {
            assert!(
                matches!(parse(bad), Err(ShimError::Usage(_))),
                "{bad:?} was accepted"
            );
        }
    }
}
