//! Executing one CNI plugin binary per the CNI spec: finding it in the bin
//! dirs, passing the `CNI_*` environment and the network config on stdin,
//! bounding it with a timeout, and turning its output or error JSON into a
//! precise outcome.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// The operations of the CNI spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    /// Attach a container to a network.
    Add,
    /// Detach a container from a network.
    Del,
    /// Check that an attachment is as ADD left it (0.4.0+).
    Check,
    /// Ask whether the network is ready for ADD (1.1.0+).
    Status,
    /// Release resources of attachments that no longer exist (1.1.0+).
    Gc,
}

impl CniCommand {
    /// The `CNI_COMMAND` value.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Status => "STATUS",
            CniCommand::Gc => "GC",
        }
    }
}

impl fmt::Display for CniCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a plugin call failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// No bin dir holds the plugin.
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    NotFound {
        /// The plugin type.
        plugin: String,
        /// The directories searched, comma-separated.
        dirs: String,
    },
    /// The plugin could not be started or talked to.
    #[error("CNI plugin {plugin:?} {command}: cannot run {path}: {source}")]
    Io {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: CniCommand,
        /// The binary.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The plugin did not finish in time and was killed.
    #[error("CNI plugin {plugin:?} {command} timed out after {timeout:?} and was killed")]
    Timeout {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: CniCommand,
        /// The limit it exceeded.
        timeout: Duration,
    },
    /// The plugin reported an error in the spec's error format.
    #[error(
        "CNI plugin {plugin:?} {command} failed (code {code}{}): {msg}{}",
        code_meaning(*code).map(|m| format!(", {m}")).unwrap_or_default(),
        if details.is_empty() { String::new() } else { format!(": {details}") }
    )]
    Failed {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: CniCommand,
        /// The spec's error code.
        code: u32,
        /// The error message.
        msg: String,
        /// Longer details, possibly empty.
        details: String,
    },
    /// The plugin exited unsuccessfully without a valid error object.
    #[error("CNI plugin {plugin:?} {command} {status}: {output}")]
    Exited {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: CniCommand,
        /// How it exited (`exit status: 1`, `signal: 9`).
        status: String,
        /// The start of its stderr, or of its stdout when stderr is empty.
        output: String,
    },
    /// The plugin succeeded but its output is not what the spec says.
    #[error("CNI plugin {plugin:?} {command} wrote invalid output ({reason}): {output:?}")]
    BadOutput {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: CniCommand,
        /// What is wrong with it.
        reason: String,
        /// The start of the output.
        output: String,
    },
}

/// The meaning of the spec's well-known error codes.
fn code_meaning(code: u32) -> Option<&'static str> {
    Some(match code {
        1 => "incompatible CNI version",
        2 => "unsupported field in network configuration",
        3 => "container unknown or does not exist",
        4 => "invalid necessary environment variables",
        5 => "I/O failure",
        6 => "failed to decode content",
        7 => "invalid network config",
        11 => "try again later",
        50 => "plugin not available",
        51 => "plugin not available, existing containers may be damaged",
        _ => return None,
    })
}

/// The error object a failing plugin prints.
#[derive(Deserialize)]
struct ErrorJson {
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// How much of a plugin's output an error quotes.
const QUOTED_OUTPUT: usize = 512;

/// The attachment a command is about (absent for STATUS and GC).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttachmentEnv<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS` (may be empty on DEL when the netns is gone).
    pub netns: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS`.
    pub args: &'a str,
}

/// Runs plugin binaries found in a list of directories.
#[derive(Debug, Clone)]
pub(crate) struct PluginRunner {
    bin_dirs: Vec<PathBuf>,
    timeout: Duration,
}

impl PluginRunner {
    pub(crate) fn new(bin_dirs: Vec<PathBuf>, timeout: Duration) -> PluginRunner {
        PluginRunner { bin_dirs, timeout }
    }

    fn find(&self, plugin: &str) -> Result<PathBuf, PluginError> {
        let valid = !plugin.is_empty() && !plugin.contains('/') && plugin != "." && plugin != "..";
        self.bin_dirs
            .iter()
            .map(|dir| dir.join(plugin))
            .find(|path| valid && path.is_file())
            .ok_or_else(|| PluginError::NotFound {
                plugin: plugin.to_string(),
                dirs: self.cni_path().replace(':', ", "),
            })
    }

    /// `CNI_PATH`: the bin dirs joined with `:`.
    fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Runs `plugin` for `command` with `stdin` as its network config and
    /// returns its stdout when it succeeds.
    pub(crate) async fn run(
        &self,
        plugin: &str,
        command: CniCommand,
        attachment: Option<AttachmentEnv<'_>>,
        stdin: &[u8],
    ) -> Result<Vec<u8>, PluginError> {
        let path = self.find(plugin)?;
        let io_error = |source| PluginError::Io {
            plugin: plugin.to_string(),
            command,
            path: path.clone(),
            source,
        };
        let mut cmd = Command::new(&path);
        cmd.env("CNI_COMMAND", command.as_str())
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match attachment {
            Some(a) => {
                cmd.env("CNI_CONTAINERID", a.container_id)
                    .env("CNI_NETNS", a.netns)
                    .env("CNI_IFNAME", a.ifname)
                    .env("CNI_ARGS", a.args);
            }
            None => {
                for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"] {
                    cmd.env_remove(var);
                }
            }
        }
        let mut child = cmd.spawn().map_err(io_error)?;
        let (mut input, mut stdout, mut stderr) =
            match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                (Some(i), Some(o), Some(e)) => (i, o, e),
                _ => return Err(io_error(std::io::Error::other("plugin pipes missing"))),
            };
        let exchange = async {
            let write = async {
                // A plugin may exit without reading its config (a broken
                // pipe); its exit status tells what happened.
                let _ = input.write_all(stdin).await;
                drop(input);
            };
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (_, out_read, err_read) = tokio::join!(
                write,
                stdout.read_to_end(&mut out),
                stderr.read_to_end(&mut err)
            );
            out_read?;
            err_read?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, out, err))
        };
        let outcome = tokio::time::timeout(self.timeout, exchange).await;
        let (status, out, err) = match outcome {
            Ok(done) => done.map_err(io_error)?,
            Err(_) => {
                // Kill by pid, then reap so no zombie is left.
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(PluginError::Timeout {
                    plugin: plugin.to_string(),
                    command,
                    timeout: self.timeout,
                });
            }
        };
        if status.success() {
            return Ok(out);
        }
        if let Ok(e) = serde_json::from_slice::<ErrorJson>(&out) {
            return Err(PluginError::Failed {
                plugin: plugin.to_string(),
                command,
                code: e.code,
                msg: e.msg,
                details: e.details,
            });
        }
        let quoted = if err.iter().all(u8::is_ascii_whitespace) {
            &out
        } else {
            &err
        };
        Err(PluginError::Exited {
            plugin: plugin.to_string(),
            command,
            status: status.to_string(),
            output: quote(quoted),
        })
    }
}

/// The start of a plugin's output, as text, for an error message.
pub(crate) fn quote(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(&output[..output.len().min(QUOTED_OUTPUT)]);
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn plugin(dir: &std::path::Path, name: &str, script: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("write plugin");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn runner(dir: &std::path::Path, timeout: Duration) -> PluginRunner {
        PluginRunner::new(vec![dir.join("none"), dir.to_path_buf()], timeout)
    }

    const ENV: AttachmentEnv<'static> = AttachmentEnv {
        container_id: "c1",
        netns: "/run/netns/x",
        ifname: "eth0",
        args: "IgnoreUnknown=1",
    };

    #[tokio::test]
    async fn passes_environment_and_stdin() {
        let tmp = tempfile::tempdir().expect("tempdir");
        plugin(
            tmp.path(),
            "echo",
            r#"printf '{"env":"%s %s %s %s %s %s","stdin":' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$CNI_PATH"; cat; printf '}'"#,
        );
        let r = runner(tmp.path(), Duration::from_secs(10));
        let out = r
            .run("echo", CniCommand::Add, Some(ENV), br#"{"a":1}"#)
            .await
            .expect("plugin runs");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        let path = format!(
            "{}:{}",
            tmp.path().join("none").display(),
            tmp.path().display()
        );
        assert_eq!(
            v["env"],
            format!("ADD c1 /run/netns/x eth0 IgnoreUnknown=1 {path}")
        );
        assert_eq!(v["stdin"]["a"], 1);
    }

    #[tokio::test]
    async fn error_json_is_precise() {
        let tmp = tempfile::tempdir().expect("tempdir");
        plugin(
            tmp.path(),
            "bad",
            r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"bad subnet","details":"10.0.0.0/33"}'; exit 1"#,
        );
        let e = runner(tmp.path(), Duration::from_secs(10))
            .run("bad", CniCommand::Del, Some(ENV), b"{}")
            .await
            .expect_err("plugin fails");
        assert_eq!(
            e.to_string(),
            "CNI plugin \"bad\" DEL failed (code 7, invalid network config): bad subnet: 10.0.0.0/33"
        );
    }

    #[tokio::test]
    async fn garbage_failure_quotes_stderr() {
        let tmp = tempfile::tempdir().expect("tempdir");
        plugin(tmp.path(), "crash", "echo 'panic: boom' >&2; exit 2");
        let e = runner(tmp.path(), Duration::from_secs(10))
            .run("crash", CniCommand::Add, Some(ENV), b"{}")
            .await
            .expect_err("plugin fails");
        assert_eq!(
            e.to_string(),
            "CNI plugin \"crash\" ADD exit status: 2: panic: boom"
        );
    }

    #[tokio::test]
    async fn missing_plugin_names_the_dirs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let e = runner(tmp.path(), Duration::from_secs(10))
            .run("bridge", CniCommand::Add, Some(ENV), b"{}")
            .await
            .expect_err("no plugin");
        let msg = e.to_string();
        assert!(
            msg.starts_with("CNI plugin \"bridge\" not found in ")
                && msg.contains(&tmp.path().display().to_string()),
            "{msg}"
        );
        let e = runner(tmp.path(), Duration::from_secs(10))
            .run("../sh", CniCommand::Add, Some(ENV), b"{}")
            .await
            .expect_err("not a plugin name");
        assert!(matches!(e, PluginError::NotFound { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_hung_plugin_is_killed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let marker = tmp.path().join("pid");
        plugin(
            tmp.path(),
            "hang",
            &format!("echo $$ > {}; exec sleep 30", marker.display()),
        );
        let started = std::time::Instant::now();
        let e = runner(tmp.path(), Duration::from_millis(300))
            .run("hang", CniCommand::Status, None, b"{}")
            .await
            .expect_err("times out");
        assert!(matches!(e, PluginError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&marker)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        // The plugin was killed and reaped: its pid is gone.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
