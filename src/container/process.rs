//! The container's process: its command (the kubelet's merge of command and
//! args with the image's Entrypoint and Cmd), environment, working
//! directory, terminal, user and OOM score.

use std::path::Path;

use berth_cri_proto::v1 as cri;
use oci_spec::runtime::{Process, UserBuilder};

use super::security::Security;
use super::spec::{SpecError, SpecInput, invalid};
use super::user;

/// The `PATH` a container gets when its image sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the process of the spec.
pub fn build(input: &SpecInput<'_>, security: &Security) -> Result<Process, SpecError> {
    let config = input.config;
    let linux = config.linux.as_ref();
    let sc = linux.and_then(|l| l.security_context.as_ref());
    let user = user::resolve(sc, &input.image.user, input.rootfs)?;
    let oom_score_adj = linux
        .and_then(|l| l.resources.as_ref())
        .map(|r| r.oom_score_adj)
        .unwrap_or_default();
    let oom_score_adj = i32::try_from(oom_score_adj)
        .ok()
        .filter(|v| (-1000..=1000).contains(v))
        .ok_or_else(|| {
            invalid(
                "config.linux.resources.oom_score_adj",
                format!("{oom_score_adj} is not between -1000 and 1000"),
            )
        })?;

    let mut process = Process::default();
    process.set_terminal(Some(config.tty));
    process.set_args(Some(args(config, input.image)?));
    process.set_env(Some(env(input)?));
    process.set_cwd(cwd(config, input.image)?.into());
    process.set_user(
        UserBuilder::default()
            .uid(user.uid)
            .gid(user.gid)
            .additional_gids(user.additional_gids)
            .build()?,
    );
    process.set_capabilities(Some(security.capabilities.clone()));
    process.set_no_new_privileges(Some(security.no_new_privileges));
    process.set_oom_score_adj(Some(restrict_oom_score_adj(oom_score_adj)));
    // Limits are the shim's, as with containerd's CRI: the kubelet sets
    // none and a fixed default (1024 open files) breaks real workloads.
    process.set_rlimits(None);
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);
    Ok(process)
}

/// The kubelet's merge: `command` replaces the Entrypoint (and then `args`
/// alone are the arguments), `args` alone replace Cmd.
fn args(
    config: &cri::ContainerConfig,
    image: &crate::image::ImageConfig,
) -> Result<Vec<String>, SpecError> {
    let mut out = if !config.command.is_empty() {
        config.command.clone()
    } else if image.entrypoint.len() == 1 && image.entrypoint[0].is_empty() {
        // `ENTRYPOINT [""]` resets the entrypoint.
        Vec::new()
    } else {
        image.entrypoint.clone()
    };
    if !config.args.is_empty() {
        out.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        out.extend(image.cmd.iter().cloned());
    }
    if out.is_empty() {
        return Err(invalid(
            "config.command",
            "no command specified (neither the config nor the image has one)",
        ));
    }
    Ok(out)
}

/// `PATH`, `HOSTNAME`, the image's variables, then the config's, each
/// replacing an earlier one of the same name.
fn env(input: &SpecInput<'_>) -> Result<Vec<String>, SpecError> {
    let mut env = vec![DEFAULT_PATH.to_string()];
    set(&mut env, format!("HOSTNAME={}", hostname(input)));
    for entry in &input.image.env {
        set(&mut env, entry.clone());
    }
    for (i, kv) in input.config.envs.iter().enumerate() {
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(invalid(
                format!("config.envs[{i}].key"),
                format!("{} is not a variable name", crate::input::quoted(&kv.key)),
            ));
        }
        let value = String::from_utf8_lossy(&kv.value);
        set(&mut env, format!("{}={value}", kv.key));
    }
    Ok(env)
}

/// Replaces the variable of `entry`'s name, or appends it.
fn set(env: &mut Vec<String>, entry: String) {
    let key = entry.split('=').next().unwrap_or_default();
    match env
        .iter_mut()
        .find(|e| e.split('=').next().unwrap_or_default() == key)
    {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

/// The pod's hostname as its containers see it: the sandbox's hostname
/// file, else the pod's configured name, else the node's.
fn hostname(input: &SpecInput<'_>) -> String {
    let file = input.sandbox.dir.join("hostname");
    if let Ok(text) = std::fs::read_to_string(file) {
        let name = text.trim();
        if !name.is_empty() {
            return name.to_string();
        }
    }
    if !input.sandbox.hostname.is_empty() {
        return input.sandbox.hostname.clone();
    }
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The config's working directory, else the image's, else `/`.
fn cwd(
    config: &cri::ContainerConfig,
    image: &crate::image::ImageConfig,
) -> Result<String, SpecError> {
    if !config.working_dir.is_empty() {
        if !Path::new(&config.working_dir).is_absolute() {
            return Err(invalid(
                "config.working_dir",
                format!(
                    "{} is not an absolute path",
                    crate::input::quoted(&config.working_dir)
                ),
            ));
        }
        return Ok(config.working_dir.clone());
    }
    if image.working_dir.is_empty() {
        return Ok("/".into());
    }
    // Docker resolves a relative WORKDIR against `/`.
    Ok(Path::new("/")
        .join(&image.working_dir)
        .to_string_lossy()
        .into_owned())
}

/// A process may not lower its own `oom_score_adj` without
/// CAP_SYS_RESOURCE, and runc's init inherits berthd's: without that
/// capability a lower request is raised to berthd's own value (as
/// containerd's `restrict_oom_score_adj` does) instead of failing the start.
fn restrict_oom_score_adj(requested: i32) -> i32 {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    if effective & (1 << CAP_SYS_RESOURCE) != 0 {
        return requested;
    }
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or(requested);
    requested.max(own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::spec::tests::{World, config};
    use crate::image::ImageConfig;

    fn merged(
        command: &[&str],
        args_: &[&str],
        entrypoint: &[&str],
        cmd: &[&str],
    ) -> Option<Vec<String>> {
        let c = cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args_.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let image = ImageConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        args(&c, &image).ok()
    }

    #[test]
    fn command_merge_table() {
        let v = |s: &[&str]| Some(s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        // command replaces the entrypoint, args the cmd.
        assert_eq!(
            merged(&["run"], &["-x"], &["ep"], &["c"]),
            v(&["run", "-x"])
        );
        // command alone: no image cmd.
        assert_eq!(merged(&["run"], &[], &["ep"], &["c"]), v(&["run"]));
        // args alone: entrypoint + args.
        assert_eq!(merged(&[], &["-x"], &["ep"], &["c"]), v(&["ep", "-x"]));
        // neither: entrypoint + cmd.
        assert_eq!(merged(&[], &[], &["ep"], &["c"]), v(&["ep", "c"]));
        assert_eq!(merged(&[], &[], &[], &["c", "d"]), v(&["c", "d"]));
        // ENTRYPOINT [""] is no entrypoint.
        assert_eq!(merged(&[], &[], &[""], &["c"]), v(&["c"]));
        assert_eq!(merged(&[], &[], &[], &[]), None);
        assert_eq!(merged(&[], &[], &[""], &[]), None);
    }

    #[test]
    fn no_command_is_invalid_argument() {
        let world = World::new();
        let mut c = config();
        c.command.clear();
        let err = world.build(&c).expect_err("no command");
        assert!(
            matches!(err, SpecError::InvalidArgument { ref reason, .. } if reason.contains("no command specified")),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_by_key() {
        let mut world = World::new();
        world.image.env = vec!["PATH=/bin".into(), "A=image".into(), "B=image".into()];
        let mut c = config();
        c.envs = vec![
            cri::KeyValue {
                key: "B".into(),
                value: b"config".to_vec(),
            },
            cri::KeyValue {
                key: "C".into(),
                value: b"x=y".to_vec(),
            },
        ];
        let spec = world.build(&c).expect("spec");
        let env = spec
            .process()
            .as_ref()
            .and_then(|p| p.env().clone())
            .expect("env");
        assert_eq!(
            env,
            vec!["PATH=/bin", "HOSTNAME=web", "A=image", "B=config", "C=x=y"]
        );
        c.envs[0].key = "A=B".into();
        assert!(world.build(&c).is_err());
    }

    #[test]
    fn working_dir_tty_and_user() {
        let mut world = World::new();
        world.image.working_dir = "srv".into();
        world.image.user = "app".into();
        let mut c = config();
        c.tty = true;
        let spec = world.build(&c).expect("spec");
        let p = spec.process().as_ref().expect("process");
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!(p.terminal(), Some(true));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
        c.working_dir = "/data".into();
        let spec = world.build(&c).expect("spec");
        assert_eq!(
            spec.process().as_ref().expect("process").cwd(),
            Path::new("/data")
        );
        world.image.working_dir.clear();
        c.working_dir.clear();
        let spec = world.build(&c).expect("spec");
        assert_eq!(
            spec.process().as_ref().expect("process").cwd(),
            Path::new("/")
        );
        c.working_dir = "rel".into();
        assert!(world.build(&c).is_err());
    }

    #[test]
    fn oom_score_adj_is_copied_and_checked() {
        let world = World::new();
        let mut c = config();
        c.linux.get_or_insert_with(Default::default).resources =
            Some(cri::LinuxContainerResources {
                oom_score_adj: 999,
                ..Default::default()
            });
        let spec = world.build(&c).expect("spec");
        assert_eq!(
            spec.process().as_ref().and_then(|p| p.oom_score_adj()),
            Some(999)
        );
        if let Some(r) = c.linux.as_mut().and_then(|l| l.resources.as_mut()) {
            r.oom_score_adj = 5000;
        }
        assert!(world.build(&c).is_err());
    }
}
