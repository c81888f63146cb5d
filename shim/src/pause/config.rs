//! The pause process's command line, parsed by hand: a flag parser would
//! cost more resident memory than everything else the process does.

use std::ffi::OsString;
use std::path::PathBuf;

use super::{Namespace, PauseError, Sysctl};

/// The command line, printed with every usage error and by `--help`.
pub const USAGE: &str = "usage: berth-pause --state-dir DIR [--net] [--ipc] [--uts] [--pid] \
[--hostname NAME] [--sysctl KEY=VALUE]... [--uid-map C:H:N --gid-map C:H:N]

Holds a pod's namespaces: unshares the ones asked for, sets the hostname (needs --uts) and
the sysctls inside them (net.* needs --net; kernel.shm*, kernel.msg*, kernel.sem and
fs.mqueue.* need --ipc; kernel.domainname needs --uts; nothing else is accepted), pins each
on DIR/ns/<name>, drops every capability, writes DIR/pause.pid and its pid on stdout when
ready, reaps zombies, and exits 0 on SIGTERM or SIGINT. Release the pins with
berth_shim::pause::unpin(DIR) when the pod is removed.

--uid-map and --gid-map (both, once each: CONTAINER_ID:HOST_ID:LENGTH, mapping
container id 0) create a user namespace first, owning every other namespace,
and pin it on DIR/ns/user.";

/// What the pause process is asked to do; every check that can be made
/// without touching the system is made when it is parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseConfig {
    /// The sandbox's state directory (absolute): pins go in `ns/`, the pid in
    /// `pause.pid`.
    pub state_dir: PathBuf,
    /// The namespaces to create, each once, in [`Namespace::ALL`] order.
    pub namespaces: Vec<Namespace>,
    /// The hostname to set in the new UTS namespace.
    pub hostname: Option<String>,
    /// Sysctls to set inside the new namespaces, in order.
    pub sysctls: Vec<Sysctl>,
    /// The pod's user namespace, created before (and owning) the others.
    pub user_namespace: Option<UserNamespace>,
}

/// One ID mapping line: `length` ids from `container_id` inside the user
/// namespace are `host_id`.. outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// First id inside the namespace.
    pub container_id: u32,
    /// The host id it stands for.
    pub host_id: u32,
    /// How many ids are mapped.
    pub length: u32,
}

impl IdMap {
    /// Parses `CONTAINER_ID:HOST_ID:LENGTH`, refusing an empty range or
    /// one that runs past the last id.
    pub fn parse(flag: &str, text: &str) -> Result<Self, PauseError> {
        let bad = |why: &str| PauseError::Usage(format!("{flag} {text:?}: {why}"));
        let mut parts = text.split(':').map(|p| p.parse::<u32>());
        let (Some(Ok(container_id)), Some(Ok(host_id)), Some(Ok(length)), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(
                "expected CONTAINER_ID:HOST_ID:LENGTH, three decimal ids",
            ));
        };
        if length == 0 {
            return Err(bad("the length is 0"));
        }
        // The kernel refuses ranges that end past u32::MAX (and uses
        // u32::MAX itself as the invalid id).
        let end = |start: u32| u64::from(start) + u64::from(length) > u64::from(u32::MAX);
        if end(container_id) || end(host_id) {
            return Err(bad("the range runs past the last id"));
        }
        Ok(Self {
            container_id,
            host_id,
            length,
        })
    }

    /// The line for `/proc/<pid>/uid_map` or `gid_map`.
    pub fn proc_line(&self) -> String {
        format!("{} {} {}\n", self.container_id, self.host_id, self.length)
    }

    /// The argument form, `CONTAINER_ID:HOST_ID:LENGTH`.
    pub fn to_arg(&self) -> String {
        format!("{}:{}:{}", self.container_id, self.host_id, self.length)
    }
}

/// The ID maps of the pod's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserNamespace {
    /// The uid mapping.
    pub uid: IdMap,
    /// The gid mapping.
    pub gid: IdMap,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Run the pause process.
    Run(PauseConfig),
    /// Print [`USAGE`] and exit 0.
    Help,
}

impl PauseConfig {
    /// Parses the arguments (without the program name). Accepts `--flag
    /// value` and `--flag=value`.
    pub fn from_args(args: impl IntoIterator<Item = OsString>) -> Result<Command, PauseError> {
        let mut state_dir = None;
        let mut wanted = Vec::new();
        let mut hostname = None;
        let mut sysctls = Vec::new();
        let mut uid_map = None;
        let mut gid_map = None;

        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let arg = arg
                .into_string()
                .map_err(|a| PauseError::Usage(format!("argument {a:?} is not UTF-8")))?;
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            let mut value = |name: &str| -> Result<String, PauseError> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => args
                        .next()
                        .ok_or_else(|| PauseError::Usage(format!("{name} needs a value")))?
                        .into_string()
                        .map_err(|v| PauseError::Usage(format!("{name} {v:?} is not UTF-8"))),
                }
            };
            let namespace = match flag {
                "--net" => Some(Namespace::Net),
                "--ipc" => Some(Namespace::Ipc),
                "--uts" => Some(Namespace::Uts),
                "--pid" => Some(Namespace::Pid),
                _ => None,
            };
            if let Some(namespace) = namespace {
                if inline.is_some() {
                    return Err(PauseError::Usage(format!("{flag} takes no value")));
                }
                wanted.push(namespace);
                continue;
            }
            match flag {
                "--state-dir" => state_dir = Some(PathBuf::from(value(flag)?)),
                "--hostname" => hostname = Some(value(flag)?),
                "--sysctl" => sysctls.push(Sysctl::parse(&value(flag)?)?),
                "--uid-map" | "--gid-map" => {
                    let map = IdMap::parse(flag, &value(flag)?)?;
                    let slot = if flag == "--uid-map" {
                        &mut uid_map
                    } else {
                        &mut gid_map
                    };
                    if slot.replace(map).is_some() {
                        return Err(PauseError::Usage(format!(
                            "{flag} given twice: the pod's user namespace has one mapping"
                        )));
                    }
                }
                "-h" | "--help" => return Ok(Command::Help),
                other => return Err(PauseError::Usage(format!("unknown argument {other:?}"))),
            }
        }

        let state_dir =
            state_dir.ok_or_else(|| PauseError::Usage("--state-dir is required".into()))?;
        if !state_dir.is_absolute() {
            return Err(PauseError::Usage(format!(
                "--state-dir {} must be absolute: containers join the pins by path",
                state_dir.display()
            )));
        }
        let namespaces: Vec<Namespace> = Namespace::ALL
            .into_iter()
            .filter(|n| wanted.contains(n))
            .collect();
        if let Some(name) = &hostname {
            if !namespaces.contains(&Namespace::Uts) {
                return Err(PauseError::Usage(
                    "--hostname needs --uts: without its own UTS namespace it would rename the host"
                        .into(),
                ));
            }
            // The kernel's limit (HOST_NAME_MAX).
            if name.is_empty() || name.len() > 64 || name.contains('\0') {
                return Err(PauseError::Usage(format!(
                    "--hostname {name:?} must be 1 to 64 bytes without NUL"
                )));
            }
        }
        for sysctl in &sysctls {
            sysctl.check_scoped(&namespaces)?;
        }
        let user_namespace = match (uid_map, gid_map) {
            (None, None) => None,
            (Some(uid), Some(gid)) => {
                for (flag, map) in [("--uid-map", uid), ("--gid-map", gid)] {
                    if map.container_id != 0 {
                        return Err(PauseError::Usage(format!(
                            "{flag} {} does not map container id 0: the pause process \
                             runs as root of the user namespace",
                            map.to_arg()
                        )));
                    }
                }
                Some(UserNamespace { uid, gid })
            }
            _ => {
                return Err(PauseError::Usage(
                    "--uid-map and --gid-map go together".into(),
                ));
            }
        };
        Ok(Command::Run(Self {
            state_dir,
            namespaces,
            hostname,
            sysctls,
            user_namespace,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<PauseConfig, PauseError> {
        match PauseConfig::from_args(args.iter().map(OsString::from))? {
            Command::Run(config) => Ok(config),
            Command::Help => Err(PauseError::Usage("help".into())),
        }
    }

    #[test]
    fn parses_a_full_command_line() {
        let config = parse(&[
            "--uts",
            "--state-dir=/run/berth/pods/p1",
            "--net",
            "--ipc",
            "--pid",
            "--net",
            "--hostname",
            "web-0",
            "--sysctl",
            "net.ipv4.ip_unprivileged_port_start=0",
            "--sysctl=kernel.shmmni=8192",
        ])
        .expect("valid");
        assert_eq!(config.state_dir, PathBuf::from("/run/berth/pods/p1"));
        assert_eq!(
            config.namespaces,
            vec![
                Namespace::Net,
                Namespace::Ipc,
                Namespace::Uts,
                Namespace::Pid
            ]
        );
        assert_eq!(config.user_namespace, None);
        assert_eq!(config.hostname.as_deref(), Some("web-0"));
        assert_eq!(config.sysctls.len(), 2);
        assert_eq!(config.sysctls[1].value(), "8192");
    }

    #[test]
    fn refuses_what_would_touch_the_host() {
        let err = |args: &[&str]| parse(args).expect_err("must fail").to_string();
        assert!(err(&["--net"]).contains("--state-dir is required"));
        assert!(err(&["--state-dir", "rel", "--net"]).contains("absolute"));
        assert!(err(&["--state-dir", "/d", "--hostname", "h"]).contains("needs --uts"));
        assert!(err(&["--state-dir", "/d", "--sysctl", "kernel.panic=1"]).contains("kernel.panic"));
        assert!(
            err(&[
                "--state-dir",
                "/d",
                "--ipc",
                "--sysctl",
                "net.core.somaxconn=1"
            ])
            .contains("--net")
        );
        assert!(err(&["--state-dir", "/d", "--bogus"]).contains("unknown argument"));
        assert!(err(&["--state-dir", "/d", "--net=1"]).contains("takes no value"));
        assert!(err(&["--state-dir"]).contains("needs a value"));
    }

    #[test]
    fn id_maps_are_parsed_and_checked() {
        let config = parse(&[
            "--state-dir=/d",
            "--net",
            "--uid-map",
            "0:100000:65536",
            "--gid-map=0:200000:1000",
        ])
        .expect("valid");
        let userns = config.user_namespace.expect("user namespace");
        assert_eq!(
            userns.uid,
            IdMap {
                container_id: 0,
                host_id: 100000,
                length: 65536
            }
        );
        assert_eq!(userns.gid.proc_line(), "0 200000 1000\n");
        assert_eq!(userns.gid.to_arg(), "0:200000:1000");

        let err = |args: &[&str]| parse(args).expect_err("must fail").to_string();
        fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
            [&["--state-dir", "/d"][..], extra].concat()
        }
        assert!(err(&with(&["--uid-map", "0:1:1"])).contains("go together"));
        assert!(
            err(&with(&[
                "--uid-map",
                "0:1:1",
                "--uid-map",
                "0:2:1",
                "--gid-map",
                "0:1:1"
            ]))
            .contains("given twice")
        );
        assert!(
            err(&with(&["--uid-map", "1:1000:10", "--gid-map", "0:1000:10"]))
                .contains("container id 0")
        );
        for bad in [
            "0:1",
            "0:1:2:3",
            "a:1:1",
            "0:-1:1",
            "0:1:0",
            "0:4294967295:2",
        ] {
            let e = err(&with(&["--uid-map", bad, "--gid-map", "0:1:1"]));
            assert!(e.contains("--uid-map") && e.contains(bad), "{bad}: {e}");
        }
    }
}
