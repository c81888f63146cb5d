//! The user a container runs as: the CRI's run_as_user / run_as_username /
//! run_as_group or the image's `User`, resolved in the image's own
//! `/etc/passwd` and `/etc/group`, and its supplemental groups.

use std::path::{Component, Path, PathBuf};

use berth_cri_proto::v1 as cri;

use super::spec::{SpecError, invalid};
use crate::input::quoted;

/// The security-context fields, as paths in the request.
const RUN_AS_USER: &str = "config.linux.security_context.run_as_user";
const RUN_AS_USERNAME: &str = "config.linux.security_context.run_as_username";
const RUN_AS_GROUP: &str = "config.linux.security_context.run_as_group";
const SUPPLEMENTAL_GROUPS: &str = "config.linux.security_context.supplemental_groups";
const IMAGE_USER: &str = "image config User";

/// How many symlinks a path inside the rootfs may pass through.
const MAX_SYMLINKS: usize = 40;

/// The identity of the container's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Every group it is in, the primary one first.
    pub additional_gids: Vec<u32>,
}

/// A line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// A line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// A user or group as written: a number or a name.
enum Id<'a> {
    Number(u32),
    Name(&'a str),
}

fn parse_id(text: &str) -> Id<'_> {
    match text.parse::<u32>() {
        Ok(n) => Id::Number(n),
        Err(_) => Id::Name(text),
    }
}

fn id_from_i64(value: i64, field: &str) -> Result<u32, SpecError> {
    u32::try_from(value).map_err(|_| {
        invalid(
            field,
            format!("{value} is not a valid id (0 to 4294967295)"),
        )
    })
}

/// Resolves the user of `sc` (or of the image's `image_user` when `sc`
/// names none) in the image at `rootfs`.
pub fn resolve(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    image_user: &str,
    rootfs: &Path,
) -> Result<ResolvedUser, SpecError> {
    let username = sc.map(|s| s.run_as_username.as_str()).unwrap_or_default();
    let run_as_user = sc.and_then(|s| s.run_as_user.as_ref()).map(|v| v.value);
    let run_as_group = sc.and_then(|s| s.run_as_group.as_ref()).map(|v| v.value);
    if run_as_group.is_some() && username.is_empty() && run_as_user.is_none() {
        return Err(invalid(
            RUN_AS_GROUP,
            "is set without run_as_user or run_as_username",
        ));
    }
    let run_as_user = run_as_user
        .map(|v| id_from_i64(v, RUN_AS_USER))
        .transpose()?;
    let run_as_group = run_as_group
        .map(|v| id_from_i64(v, RUN_AS_GROUP))
        .transpose()?;

    // The user as written, where it came from, and the group written with
    // it (only the image's `User` carries one).
    let (user, user_field, group): (Id<'_>, &str, Option<Id<'_>>) = if !username.is_empty() {
        (parse_id(username), RUN_AS_USERNAME, None)
    } else if let Some(uid) = run_as_user {
        (Id::Number(uid), RUN_AS_USER, None)
    } else {
        let (user, group) = match image_user.split_once(':') {
            Some((u, g)) => (u, Some(g).filter(|g| !g.is_empty())),
            None => (image_user, None),
        };
        if user.is_empty() {
            (Id::Number(0), IMAGE_USER, group.map(parse_id))
        } else {
            (parse_id(user), IMAGE_USER, group.map(parse_id))
        }
    };

    let passwd = read_passwd(rootfs)?;
    let (uid, mut gid, name) = match user {
        Id::Number(uid) => match passwd.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name.clone())),
            None => (uid, 0, None),
        },
        Id::Name(name) => match passwd.iter().find(|e| e.name == name) {
            Some(e) => (e.uid, e.gid, Some(e.name.clone())),
            None => {
                return Err(SpecError::NotFound(format!(
                    "user {} ({user_field}) is not in the image's /etc/passwd",
                    quoted(name)
                )));
            }
        },
    };

    let merge = sc.is_none_or(|s| {
        s.supplemental_groups_policy != cri::SupplementalGroupsPolicy::Strict as i32
    });
    let needs_groups = matches!(group, Some(Id::Name(_))) || (merge && name.is_some());
    let groups = if needs_groups {
        read_group(rootfs)?
    } else {
        Vec::new()
    };
    if let Some(g) = run_as_group {
        gid = g;
    } else if let Some(group) = group {
        gid = match group {
            Id::Number(g) => g,
            Id::Name(name) => match groups.iter().find(|g| g.name == name) {
                Some(g) => g.gid,
                None => {
                    return Err(SpecError::NotFound(format!(
                        "group {} ({IMAGE_USER}) is not in the image's /etc/group",
                        quoted(name)
                    )));
                }
            },
        };
    }

    let mut additional_gids = vec![gid];
    if merge && let Some(name) = &name {
        for group in groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == name))
        {
            additional_gids.push(group.gid);
        }
    }
    for (i, g) in sc
        .map(|s| s.supplemental_groups.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        additional_gids.push(id_from_i64(*g, &format!("{SUPPLEMENTAL_GROUPS}[{i}]"))?);
    }
    let mut seen = std::collections::HashSet::new();
    additional_gids.retain(|g| seen.insert(*g));
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// Reads a file of the image, following symlinks inside the rootfs only (a
/// hostile image's `/etc/passwd -> /etc/shadow` must not read the host's).
/// A missing file reads as empty.
fn read_image_file(rootfs: &Path, path: &str) -> Result<String, SpecError> {
    let Some(resolved) = resolve_in_root(rootfs, Path::new(path))? else {
        return Ok(String::new());
    };
    match std::fs::read(&resolved) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(SpecError::Io {
            op: "read",
            path: resolved,
            source,
        }),
    }
}

/// `path` inside `root` with every symlink resolved against `root`, never
/// leaving it; `None` when a component does not exist.
pub(super) fn resolve_in_root(root: &Path, path: &Path) -> Result<Option<PathBuf>, SpecError> {
    let mut pending: Vec<PathBuf> = Vec::new();
    for c in path.components().rev() {
        if let Component::Normal(part) = c {
            pending.push(PathBuf::from(part));
        } else if c == Component::ParentDir {
            pending.push(PathBuf::from(".."));
        }
    }
    let mut current = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part.as_os_str() == ".." {
            current.pop();
            continue;
        }
        let candidate = current.join(&part);
        let full = root.join(&candidate);
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SpecError::Io {
                    op: "stat",
                    path: full,
                    source,
                });
            }
        };
        if !meta.file_type().is_symlink() {
            current = candidate;
            continue;
        }
        hops += 1;
        if hops > MAX_SYMLINKS {
            return Err(SpecError::Io {
                op: "resolve",
                path: full,
                source: std::io::Error::from_raw_os_error(nix::libc::ELOOP),
            });
        }
        let target = std::fs::read_link(&full).map_err(|source| SpecError::Io {
            op: "read link",
            path: full.clone(),
            source,
        })?;
        if target.is_absolute() {
            current = PathBuf::new();
        }
        for c in target.components().rev() {
            match c {
                Component::Normal(p) => pending.push(PathBuf::from(p)),
                Component::ParentDir => pending.push(PathBuf::from("..")),
                _ => {}
            }
        }
    }
    Ok(Some(root.join(current)))
}

fn read_passwd(rootfs: &Path) -> Result<Vec<PasswdEntry>, SpecError> {
    let text = read_image_file(rootfs, "etc/passwd")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            // name:password:uid:gid:gecos:home:shell
            let mut f = line.split(':');
            let name = f.next()?.trim();
            let uid = f.nth(1)?.trim().parse().ok()?;
            let gid = f.next()?.trim().parse().ok()?;
            (!name.is_empty() && !name.starts_with('#')).then(|| PasswdEntry {
                name: name.to_string(),
                uid,
                gid,
            })
        })
        .collect())
}

fn read_group(rootfs: &Path) -> Result<Vec<GroupEntry>, SpecError> {
    let text = read_image_file(rootfs, "etc/group")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            // name:password:gid:member,member
            let mut f = line.split(':');
            let name = f.next()?.trim();
            let gid = f.nth(1)?.trim().parse().ok()?;
            let members = f
                .next()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect();
            (!name.is_empty() && !name.starts_with('#')).then(|| GroupEntry {
                name: name.to_string(),
                gid,
                members,
            })
        })
        .collect())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A rootfs with a small `/etc/passwd` and `/etc/group`.
    pub fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("mkdir etc");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n\
             nginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin\n\
             app:x:1000:1000::/home/app:/bin/sh\n\
             broken line\n",
        )
        .expect("write passwd");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nnginx:x:101:\napp:x:1000:\nvideo:x:44:app,nginx\naudio:x:29:app\n",
        )
        .expect("write group");
        dir
    }

    fn sc() -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext::default()
    }

    fn user(v: &str) -> Option<cri::Int64Value> {
        Some(cri::Int64Value {
            value: v.parse().expect("number"),
        })
    }

    #[test]
    fn image_user_forms() {
        let root = rootfs();
        let r = |u: &str| resolve(None, u, root.path());
        let root_user = r("").expect("empty");
        assert_eq!((root_user.uid, root_user.gid), (0, 0));
        let nginx = r("nginx").expect("name");
        assert_eq!((nginx.uid, nginx.gid), (101, 101));
        assert_eq!(nginx.additional_gids, vec![101, 44]);
        let numeric = r("1000").expect("uid");
        assert_eq!((numeric.uid, numeric.gid), (1000, 1000));
        assert_eq!(numeric.additional_gids, vec![1000, 44, 29]);
        let unknown_uid = r("4242").expect("uid not in passwd");
        assert_eq!(unknown_uid.additional_gids, vec![0]);
        assert_eq!(unknown_uid.gid, 0);
        let named_group = r("app:video").expect("name:group");
        assert_eq!((named_group.uid, named_group.gid), (1000, 44));
        let numeric_pair = r("5:7").expect("uid:gid");
        assert_eq!((numeric_pair.uid, numeric_pair.gid), (5, 7));
    }

    #[test]
    fn missing_user_and_group_are_named() {
        let root = rootfs();
        let err = resolve(None, "ghost", root.path()).expect_err("no such user");
        assert!(
            matches!(err, SpecError::NotFound(ref m) if m.contains("\"ghost\"")),
            "{err}"
        );
        let err = resolve(None, "app:wheel", root.path()).expect_err("no such group");
        assert!(
            matches!(err, SpecError::NotFound(ref m) if m.contains("\"wheel\"")),
            "{err}"
        );
        let mut s = sc();
        s.run_as_username = "nobody".into();
        let err = resolve(Some(&s), "", root.path()).expect_err("no such user");
        assert!(err.to_string().contains("run_as_username"), "{err}");
    }

    #[test]
    fn missing_files_read_as_empty() {
        let empty = tempfile::tempdir().expect("tempdir");
        let u = resolve(None, "33:33", empty.path()).expect("numeric needs no files");
        assert_eq!((u.uid, u.gid), (33, 33));
        assert!(resolve(None, "www", empty.path()).is_err());
    }

    #[test]
    fn security_context_overrides_the_image() {
        let root = rootfs();
        let mut s = sc();
        s.run_as_user = user("101");
        let u = resolve(Some(&s), "app:video", root.path()).expect("run_as_user");
        assert_eq!((u.uid, u.gid), (101, 101), "the image's group is not used");
        s.run_as_group = user("5");
        let u = resolve(Some(&s), "", root.path()).expect("run_as_group");
        assert_eq!((u.uid, u.gid), (101, 5));
        assert_eq!(u.additional_gids, vec![5, 44]);
        let mut s = sc();
        s.run_as_username = "app".into();
        let u = resolve(Some(&s), "nginx", root.path()).expect("run_as_username");
        assert_eq!(u.uid, 1000);
        let mut s = sc();
        s.run_as_user = user("-1");
        assert!(resolve(Some(&s), "", root.path()).is_err());
    }

    #[test]
    fn run_as_group_needs_a_user() {
        let root = rootfs();
        let mut s = sc();
        s.run_as_group = user("10");
        let err = resolve(Some(&s), "app", root.path()).expect_err("group alone");
        assert!(
            matches!(err, SpecError::InvalidArgument { ref field, .. } if field == RUN_AS_GROUP),
            "{err}"
        );
    }

    #[test]
    fn supplemental_groups_merge_and_strict() {
        let root = rootfs();
        let mut s = sc();
        s.run_as_user = user("1000");
        s.supplemental_groups = vec![2000, 44];
        let merged = resolve(Some(&s), "", root.path()).expect("merge");
        assert_eq!(merged.additional_gids, vec![1000, 44, 29, 2000]);
        s.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
        let strict = resolve(Some(&s), "", root.path()).expect("strict");
        assert_eq!(strict.additional_gids, vec![1000, 2000, 44]);
    }

    #[test]
    fn image_symlinks_stay_inside_the_rootfs() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("passwd"), "evil:x:7:7::/:/bin/sh\n").expect("write");
        std::fs::create_dir(root.path().join("etc")).expect("mkdir");
        std::os::unix::fs::symlink(
            outside.path().join("passwd"),
            root.path().join("etc/passwd"),
        )
        .expect("symlink");
        assert!(resolve(None, "evil", root.path()).is_err());
        std::fs::write(root.path().join("real"), "good:x:8:8::/:/bin/sh\n").expect("write");
        std::fs::remove_file(root.path().join("etc/passwd")).expect("rm");
        std::os::unix::fs::symlink("../../../real", root.path().join("etc/passwd"))
            .expect("symlink");
        assert_eq!(resolve(None, "good", root.path()).expect("inside").uid, 8);
    }
}
