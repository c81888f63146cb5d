//! The container's process end to end, through a real berthd, berth-shim
//! and runc: the command line merged from the CRI config and the image's
//! Entrypoint and Cmd, the environment, the working directory, and the
//! user and groups it runs as (from the security context or the image,
//! names resolved in the image's `/etc/passwd` and `/etc/group`), with the
//! refusals that must leave nothing behind.
//!
//! Needs root.

mod support;

use std::collections::BTreeSet;

use berth_cri_proto::v1::*;
use support::container::{TestPod, env_map, pod_config};
use support::image::ImageBuilder;
use tonic::Code;

/// One identity to run `id` with, and what it must print.
#[derive(Clone)]
struct UserCase<'a> {
    name: &'a str,
    image: &'a str,
    run_as_user: Option<i64>,
    run_as_username: &'a str,
    run_as_group: Option<i64>,
    supplemental_groups: &'a [i64],
    strict: bool,
    want: Id,
}

/// The `id` of busybox, parsed: uid, gid and the set of groups.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Id {
    uid: u32,
    gid: u32,
    groups: BTreeSet<u32>,
}

/// Parses `uid=1000(berth) gid=100(users) groups=10(wheel),100(users)`.
fn parse_id(text: &str) -> Id {
    let number = |field: &str| -> u32 {
        field
            .split('(')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number in {field:?} of {text:?}"))
    };
    let value = |key: &str| -> &str {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {text:?}"))
    };
    Id {
        uid: number(value("uid=")),
        gid: number(value("gid=")),
        groups: value("groups=").split(',').map(number).collect(),
    }
}

fn id(uid: u32, gid: u32, groups: &[u32]) -> Id {
    Id {
        uid,
        gid,
        groups: groups.iter().copied().collect(),
    }
}

fn security(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

#[tokio::test]
async fn command_env_and_working_dir_merge_with_the_image() {
    if !support::root_tests("command_env_and_working_dir_merge_with_the_image") {
        return;
    }
    let (registry, _busybox, berthd) = support::berthd_with_busybox("berth/proc-base").await;
    let image = ImageBuilder::busybox("berth/proc-entrypoint")
        .layer(
            support::image::Layer::new()
                .dir("/srv", 0o755)
                .dir("/srv/app", 0o755),
        )
        .entrypoint(["echo", "entrypoint"])
        .cmd(["from-cmd"])
        .env("FROM_IMAGE", "image")
        .env("SHARED", "image")
        .working_dir("/srv/app")
        .tag("v1")
        .push(&registry)
        .await
        .expect("push the entrypoint image")
        .reference()
        .to_string();
    berthd.pull(&image).await;
    let mut pod = TestPod::run(&berthd, &image, {
        let mut config = pod_config("proc", "merge");
        config.hostname = "merge-host".into();
        config
    })
    .await;

    // The kubelet's rules: command replaces Entrypoint (and then Cmd is
    // not used), args replace Cmd.
    for (name, command, args, want) in [
        ("image", &[][..], &[][..], "entrypoint from-cmd"),
        ("args", &[], &["from-args"], "entrypoint from-args"),
        ("command", &["echo", "from-command"], &[], "from-command"),
        (
            "both",
            &["echo", "from-command"],
            &["from-args"],
            "from-command from-args",
        ),
    ] {
        let mut config = pod.container(name, command);
        config.args = args.iter().map(|s| s.to_string()).collect();
        let (status, log) = pod.run_to_exit(config).await;
        assert_eq!(status.exit_code, 0, "{name}: {status:?}");
        assert_eq!(log, format!("{want}\n"), "{name}: command line");
    }

    // Environment: the image's, overridden by the config's by name, with
    // PATH and HOSTNAME; the working directory from the image unless the
    // config names one.
    let mut config = pod.container("env", &["sh", "-c", "env; pwd"]);
    config.envs = vec![
        KeyValue {
            key: "SHARED".into(),
            value: b"config".to_vec(),
        },
        KeyValue {
            key: "WITH_EQUALS".into(),
            value: b"a=b c".to_vec(),
        },
    ];
    let (status, log) = pod.run_to_exit(config).await;
    assert_eq!(status.exit_code, 0, "{status:?}: {log}");
    let env = env_map(&log);
    assert_eq!(env.get("FROM_IMAGE").map(String::as_str), Some("image"));
    assert_eq!(env.get("SHARED").map(String::as_str), Some("config"));
    assert_eq!(env.get("WITH_EQUALS").map(String::as_str), Some("a=b c"));
    assert_eq!(env.get("HOSTNAME").map(String::as_str), Some("merge-host"));
    assert_eq!(
        env.get("PATH").map(String::as_str),
        Some(support::image::DEFAULT_PATH)
    );
    assert_eq!(log.lines().last(), Some("/srv/app"), "image WorkingDir");

    let mut config = pod.container("workdir", &["pwd"]);
    config.working_dir = "/tmp".into();
    let (status, log) = pod.run_to_exit(config).await;
    assert_eq!((status.exit_code, log.as_str()), (0, "/tmp\n"));

    // Wrong input is refused and names the field.
    let mut config = pod.container("relative", &["pwd"]);
    config.working_dir = "tmp".into();
    let err = pod.create(config).await.expect_err("relative working dir");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("working_dir"), "{}", err.message());
    let mut config = pod.container("badenv", &["true"]);
    config.envs = vec![KeyValue {
        key: "A=B".into(),
        value: b"c".to_vec(),
    }];
    let err = pod.create(config).await.expect_err("bad env name");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("envs[0]"), "{}", err.message());

    pod.remove().await;
}

#[tokio::test]
async fn users_and_groups_from_the_security_context_and_the_image() {
    if !support::root_tests("users_and_groups_from_the_security_context_and_the_image") {
        return;
    }
    let (registry, image, berthd) = support::berthd_with_busybox("berth/proc-users").await;
    let mut user_images = Vec::new();
    for (repo, user) in [
        ("berth/proc-user-name", "berth"),
        ("berth/proc-user-group", "guest:wheel"),
    ] {
        let reference = ImageBuilder::busybox(repo)
            .user(user)
            .tag("v1")
            .push(&registry)
            .await
            .expect("push an image with a User")
            .reference()
            .to_string();
        berthd.pull(&reference).await;
        user_images.push(reference);
    }
    let mut pod = TestPod::run(&berthd, &image, pod_config("proc", "users")).await;
    let mut exited = Vec::new();

    let base = UserCase {
        name: "",
        image: image.as_str(),
        run_as_user: None,
        run_as_username: "",
        run_as_group: None,
        supplemental_groups: &[],
        strict: false,
        want: id(0, 0, &[0]),
    };
    let cases = [
        UserCase {
            name: "root",
            ..base.clone()
        },
        // berth is a member of wheel (10) and users (100).
        UserCase {
            name: "merge",
            run_as_user: Some(1000),
            want: id(1000, 1000, &[10, 100, 1000]),
            ..base.clone()
        },
        UserCase {
            name: "strict",
            run_as_user: Some(1000),
            supplemental_groups: &[4242],
            strict: true,
            want: id(1000, 1000, &[1000, 4242]),
            ..base.clone()
        },
        UserCase {
            name: "group",
            run_as_user: Some(1000),
            run_as_group: Some(100),
            supplemental_groups: &[4242],
            want: id(1000, 100, &[10, 100, 4242]),
            ..base.clone()
        },
        UserCase {
            name: "username",
            run_as_username: "guest",
            want: id(1001, 100, &[100]),
            ..base.clone()
        },
        UserCase {
            name: "unknown-uid",
            run_as_user: Some(4321),
            want: id(4321, 0, &[0]),
            ..base.clone()
        },
        UserCase {
            name: "image-user",
            image: user_images[0].as_str(),
            want: id(1000, 1000, &[10, 100, 1000]),
            ..base.clone()
        },
        UserCase {
            name: "image-user-group",
            image: user_images[1].as_str(),
            want: id(1001, 10, &[10]),
            ..base.clone()
        },
        // The security context wins over the image's User.
        UserCase {
            name: "override-image",
            image: user_images[0].as_str(),
            run_as_user: Some(0),
            ..base.clone()
        },
    ];
    for case in cases {
        let name = case.name;
        let want = case.want;
        let mut config = pod.container(name, &["id"]);
        config.image = Some(ImageSpec {
            image: case.image.to_string(),
            ..Default::default()
        });
        let sc = security(&mut config);
        sc.run_as_user = case.run_as_user.map(|value| Int64Value { value });
        sc.run_as_username = case.run_as_username.into();
        sc.run_as_group = case.run_as_group.map(|value| Int64Value { value });
        sc.supplemental_groups = case.supplemental_groups.to_vec();
        if case.strict {
            sc.supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
        }
        let (status, log) = pod.run_to_exit(config).await;
        assert_eq!(status.exit_code, 0, "{name}: {status:?} {log}");
        assert_eq!(parse_id(&log), want, "{name}: `id` printed {log:?}");
        // ContainerStatus reports the same identity.
        let user = status
            .user
            .as_ref()
            .and_then(|u| u.linux.as_ref())
            .unwrap_or_else(|| panic!("{name}: no user in {status:?}"));
        assert_eq!(
            (
                user.uid,
                user.gid,
                user.supplemental_groups.iter().copied().collect()
            ),
            (
                i64::from(want.uid),
                i64::from(want.gid),
                want.groups
                    .iter()
                    .map(|g| i64::from(*g))
                    .collect::<BTreeSet<i64>>()
            ),
            "{name}: reported user"
        );
        exited.push(status.id);
    }

    // ExecSync runs as the container's user too.
    let mut config = pod.container("exec-user", &["sleep", "3600"]);
    security(&mut config).run_as_user = Some(Int64Value { value: 1000 });
    let sleeper = pod.start(config).await;
    let out = pod.exec(&sleeper, &["id"]).await;
    assert_eq!(
        parse_id(&out.stdout),
        id(1000, 1000, &[10, 100, 1000]),
        "{out:?}"
    );
    exited.push(sleeper);

    // RunAsGroup without a user is refused, and so is a user name the
    // image does not have; neither leaves anything behind and the name
    // can be used again.
    let mut config = pod.container("bad-user", &["id"]);
    security(&mut config).run_as_group = Some(Int64Value { value: 100 });
    let err = pod.create(config).await.expect_err("run_as_group alone");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message()
            .contains("config.linux.security_context.run_as_group"),
        "{}",
        err.message()
    );
    let mut config = pod.container("bad-user", &["id"]);
    security(&mut config).run_as_username = "nosuchuser".into();
    let err = pod.create(config).await.expect_err("unknown user name");
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    assert!(
        err.message().contains("nosuchuser") && err.message().contains("/etc/passwd"),
        "{}",
        err.message()
    );
    let mut config = pod.container("bad-user", &["id"]);
    security(&mut config).run_as_user = Some(Int64Value { value: -1 });
    let err = pod.create(config).await.expect_err("negative uid");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("run_as_user"), "{}", err.message());
    let ids: Vec<&str> = exited.iter().map(String::as_str).collect();
    pod.assert_only_containers(&ids).await;
    let (status, log) = pod.run_to_exit(pod.container("bad-user", &["id"])).await;
    assert_eq!((status.exit_code, parse_id(&log)), (0, id(0, 0, &[0])));

    pod.remove().await;
}
