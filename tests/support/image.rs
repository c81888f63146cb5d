//! OCI images built in memory for the tests, from Debian's static busybox,
//! and pushed to the [`Registry`] fixture.
//!
//! Builds are deterministic — fixed mtimes, entries sorted by path, uid and
//! gid 0 unless set, gzip without timestamp, JSON with fixed key order — so
//! the same builder always gives the same digests.
//!
//! ```ignore
//! let image = ImageBuilder::busybox("test/sleeper")
//!     .layer(Layer::new().file("/etc/motd", "hi\n", 0o644))
//!     .cmd(["sleep", "3600"])
//!     .tag("v1")
//!     .push(&registry)
//!     .await
//!     .expect("push the image");
//! ```

use std::collections::BTreeMap;
use std::io::{self, Write};

use oci_client::Reference;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::registry::Registry;

/// Where Debian's `busybox-static` package installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Modification time of every entry: 2000-01-01T00:00:00Z.
pub const MTIME: u64 = 946_684_800;

/// `created` time of every image config and history entry (= [`MTIME`]).
pub const CREATED: &str = "2000-01-01T00:00:00Z";

/// `PATH` set by [`ImageBuilder::busybox`].
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Applets linked to busybox in `/bin` by [`Layer::busybox`].
pub const BUSYBOX_APPLETS: &[&str] = &[
    "cat", "chmod", "chown", "cp", "date", "df", "du", "echo", "env", "false", "find", "grep",
    "head", "hostname", "id", "ip", "kill", "ln", "ls", "mkdir", "mount", "mv", "nc", "nslookup",
    "ping", "printf", "ps", "pwd", "readlink", "rm", "sed", "seq", "sh", "sleep", "stat", "tail",
    "tee", "test", "timeout", "top", "touch", "true", "uname", "wc", "wget", "whoami",
];

/// `/etc/passwd` of [`Layer::busybox`]: root, daemon, `berth` (1000:1000,
/// also in groups `wheel` and `users`), `guest` (1001, primary group
/// `users` 100) and nobody.
pub const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/:/bin/false
berth:x:1000:1000:berth test user:/home/berth:/bin/sh
guest:x:1001:100:guest:/home/guest:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
";

/// `/etc/group` of [`Layer::busybox`].
pub const GROUP: &str = "\
root:x:0:
daemon:x:1:
wheel:x:10:berth
users:x:100:berth
berth:x:1000:
nogroup:x:65534:
";

/// How a layer's tar is stored in the registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerCompression {
    /// `application/vnd.oci.image.layer.v1.tar+gzip`.
    #[default]
    Gzip,
    /// `application/vnd.oci.image.layer.v1.tar`: the blob is the tar itself.
    None,
}

/// What an entry of a layer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file with this content.
    File(Vec<u8>),
    /// A directory.
    Dir,
    /// A symbolic link to this target, stored as given.
    Symlink(String),
    /// A hard link to this other entry of the archive.
    Hardlink(String),
}

/// One entry of a layer's tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What the entry is.
    pub kind: EntryKind,
    /// Permission bits, with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
}

/// A layer under construction: a set of entries keyed by their path in the
/// archive (a later entry for the same path replaces the earlier one).
///
/// Paths given to the building methods may start with `/`; it is stripped,
/// as image layers hold relative paths. [`Layer::raw_file`] keeps its path
/// verbatim, for hostile layers. Parent directories are not added for you:
/// a layer holds exactly the entries it was given.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    entries: BTreeMap<String, Entry>,
    compression: LayerCompression,
}

impl Layer {
    /// An empty, gzip-compressed layer.
    pub fn new() -> Layer {
        Layer::default()
    }

    /// The standard base layer: `/bin/busybox` with [`BUSYBOX_APPLETS`]
    /// symlinked to it, `/etc/passwd` ([`PASSWD`]), `/etc/group`
    /// ([`GROUP`]), home directories, and the usual empty top-level
    /// directories (`/tmp` with the sticky bit).
    pub fn busybox() -> Layer {
        let binary = std::fs::read(BUSYBOX)
            .unwrap_or_else(|err| panic!("read {BUSYBOX} (Debian package busybox-static): {err}"));
        let mut layer = Layer::new();
        for (dir, mode) in [
            ("/bin", 0o755),
            ("/dev", 0o755),
            ("/etc", 0o755),
            ("/home", 0o755),
            ("/proc", 0o555),
            ("/root", 0o700),
            ("/sys", 0o555),
            ("/tmp", 0o1777),
            ("/usr", 0o755),
            ("/var", 0o755),
        ] {
            layer = layer.dir(dir, mode);
        }
        layer = layer
            .file("/bin/busybox", binary, 0o755)
            .file("/etc/passwd", PASSWD, 0o644)
            .file("/etc/group", GROUP, 0o644)
            .dir("/home/berth", 0o755)
            .owner("/home/berth", 1000, 1000)
            .dir("/home/guest", 0o755)
            .owner("/home/guest", 1001, 100);
        for applet in BUSYBOX_APPLETS {
            layer = layer.symlink(&format!("/bin/{applet}"), "busybox");
        }
        layer
    }

    /// Adds a regular file.
    pub fn file(self, path: &str, content: impl Into<Vec<u8>>, mode: u32) -> Layer {
        self.insert(normalize(path), EntryKind::File(content.into()), mode)
    }

    /// Adds a directory.
    pub fn dir(self, path: &str, mode: u32) -> Layer {
        self.insert(normalize(path), EntryKind::Dir, mode)
    }

    /// Adds a symbolic link at `path` pointing to `target` (kept as given:
    /// relative, absolute or escaping).
    pub fn symlink(self, path: &str, target: &str) -> Layer {
        self.insert(
            normalize(path),
            EntryKind::Symlink(target.to_owned()),
            0o777,
        )
    }

    /// Adds a hard link at `path` to the entry `target` of this layer.
    /// Hard links are written after all other entries, so their target comes
    /// first in the archive.
    pub fn hardlink(self, path: &str, target: &str) -> Layer {
        let target = normalize(target);
        self.insert(normalize(path), EntryKind::Hardlink(target), 0o644)
    }

    /// Adds the whiteout `.wh.NAME` that deletes `path` from lower layers.
    pub fn whiteout(self, path: &str) -> Layer {
        let path = normalize(path);
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
        let whiteout = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.insert(whiteout, EntryKind::File(Vec::new()), 0o644)
    }

    /// Adds the opaque whiteout `.wh..wh..opq` that hides what lower layers
    /// have in directory `dir`.
    pub fn opaque(self, dir: &str) -> Layer {
        let dir = normalize(dir);
        let path = if dir.is_empty() {
            ".wh..wh..opq".to_owned()
        } else {
            format!("{dir}/.wh..wh..opq")
        };
        self.insert(path, EntryKind::File(Vec::new()), 0o644)
    }

    /// Adds a regular file whose archive path is `name` exactly as given
    /// (`../escape`, `/abs`, …), for hostile-layer tests. At most 100 bytes.
    pub fn raw_file(self, name: &str, content: impl Into<Vec<u8>>, mode: u32) -> Layer {
        assert!(name.len() <= 100, "raw entry name over 100 bytes: {name}");
        self.insert(name.to_owned(), EntryKind::File(content.into()), mode)
    }

    /// Sets the owner of the entry already added at `path`.
    pub fn owner(mut self, path: &str, uid: u64, gid: u64) -> Layer {
        let entry = self
            .entries
            .get_mut(normalize(path).as_str())
            .unwrap_or_else(|| panic!("owner: no entry {path} in the layer"));
        entry.uid = uid;
        entry.gid = gid;
        self
    }

    /// Chooses how the layer blob is compressed (gzip by default).
    pub fn compression(mut self, compression: LayerCompression) -> Layer {
        self.compression = compression;
        self
    }

    /// The entries, by archive path.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    fn insert(mut self, path: String, kind: EntryKind, mode: u32) -> Layer {
        let entry = Entry {
            kind,
            mode,
            uid: 0,
            gid: 0,
        };
        self.entries.insert(path, entry);
        self
    }

    /// The uncompressed tar: entries in path order, hard links last.
    pub fn tar(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let (links, others): (Vec<_>, Vec<_>) = self
            .entries
            .iter()
            .partition(|(_, e)| matches!(e.kind, EntryKind::Hardlink(_)));
        for (path, entry) in others.into_iter().chain(links) {
            append(&mut builder, path, entry)
                .unwrap_or_else(|err| panic!("tar entry {path}: {err}"));
        }
        builder.into_inner().expect("finish the layer tar")
    }

    /// Builds the layer blob and its digests.
    pub fn build(&self) -> BuiltLayer {
        let tar = self.tar();
        let diff_id = sha256_digest(&tar);
        let (blob, media_type) = match self.compression {
            LayerCompression::None => (tar, IMAGE_LAYER_MEDIA_TYPE),
            LayerCompression::Gzip => (gzip(&tar), IMAGE_LAYER_GZIP_MEDIA_TYPE),
        };
        BuiltLayer {
            media_type: media_type.to_owned(),
            digest: sha256_digest(&blob),
            diff_id,
            blob,
        }
    }
}

/// A layer as stored in the registry.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    /// OCI media type of the blob.
    pub media_type: String,
    /// The blob: the tar, compressed or not.
    pub blob: Vec<u8>,
    /// `sha256:` digest of the blob, as in the manifest.
    pub digest: String,
    /// `sha256:` digest of the uncompressed tar, as in the config's diff_ids.
    pub diff_id: String,
}

/// Describes an image — layers and runtime config — and builds or pushes it.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    repository: String,
    tags: Vec<String>,
    layers: Vec<Layer>,
    user: Option<String>,
    env: Vec<(String, String)>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    labels: BTreeMap<String, String>,
    exposed_ports: Vec<String>,
    stop_signal: Option<String>,
    annotations: BTreeMap<String, String>,
}

impl ImageBuilder {
    /// An image for repository `repository` (e.g. `"test/busybox"`) with no
    /// layers and an empty config.
    pub fn new(repository: &str) -> ImageBuilder {
        ImageBuilder {
            repository: repository.to_owned(),
            tags: Vec::new(),
            layers: Vec::new(),
            user: None,
            env: Vec::new(),
            entrypoint: None,
            cmd: None,
            working_dir: None,
            labels: BTreeMap::new(),
            exposed_ports: Vec::new(),
            stop_signal: None,
            annotations: BTreeMap::new(),
        }
    }

    /// An image whose first layer is [`Layer::busybox`], with `PATH` set to
    /// [`DEFAULT_PATH`] and `Cmd` `["sh"]`.
    pub fn busybox(repository: &str) -> ImageBuilder {
        ImageBuilder::new(repository)
            .layer(Layer::busybox())
            .env("PATH", DEFAULT_PATH)
            .cmd(["sh"])
    }

    /// Adds a tag to push; with none, the image is pushed as `latest`.
    pub fn tag(mut self, tag: &str) -> ImageBuilder {
        self.tags.push(tag.to_owned());
        self
    }

    /// Adds a layer on top of the previous ones.
    pub fn layer(mut self, layer: Layer) -> ImageBuilder {
        self.layers.push(layer);
        self
    }

    /// Sets `User` (`"1000"`, `"berth"`, `"1000:100"`, …).
    pub fn user(mut self, user: &str) -> ImageBuilder {
        self.user = Some(user.to_owned());
        self
    }

    /// Sets environment variable `name` (replacing an earlier value).
    pub fn env(mut self, name: &str, value: &str) -> ImageBuilder {
        match self.env.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.env.push((name.to_owned(), value.to_owned())),
        }
        self
    }

    /// Sets `Entrypoint`.
    pub fn entrypoint<S: Into<String>>(
        mut self,
        args: impl IntoIterator<Item = S>,
    ) -> ImageBuilder {
        self.entrypoint = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Sets `Cmd`.
    pub fn cmd<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> ImageBuilder {
        self.cmd = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Sets `WorkingDir`.
    pub fn working_dir(mut self, dir: &str) -> ImageBuilder {
        self.working_dir = Some(dir.to_owned());
        self
    }

    /// Adds a label.
    pub fn label(mut self, name: &str, value: &str) -> ImageBuilder {
        self.labels.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Adds an exposed port, `"PORT/tcp"` or `"PORT/udp"`.
    pub fn expose(mut self, port: &str) -> ImageBuilder {
        self.exposed_ports.push(port.to_owned());
        self
    }

    /// Sets `StopSignal` (e.g. `"SIGINT"`).
    pub fn stop_signal(mut self, signal: &str) -> ImageBuilder {
        self.stop_signal = Some(signal.to_owned());
        self
    }

    /// Sets an annotation of the manifest.
    pub fn annotation(mut self, name: &str, value: &str) -> ImageBuilder {
        self.annotations.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Builds layers, config and manifest in memory.
    pub fn build(&self) -> BuiltImage {
        let layers: Vec<BuiltLayer> = self.layers.iter().map(Layer::build).collect();
        let config = serde_json::to_vec(&self.config_json(&layers)).expect("serialize config");
        let config_digest = sha256_digest(&config);
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "config": {
                "mediaType": IMAGE_CONFIG_MEDIA_TYPE,
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.blob.len(),
            })).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            manifest["annotations"] = json!(self.annotations);
        }
        let manifest = serde_json::to_vec(&manifest).expect("serialize manifest");
        let tags = if self.tags.is_empty() {
            vec!["latest".to_owned()]
        } else {
            self.tags.clone()
        };
        BuiltImage {
            repository: self.repository.clone(),
            tags,
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_digest,
            config,
            layers,
        }
    }

    /// Builds the image and pushes it to `registry` under every tag, with
    /// the registry's own credentials if it has any.
    pub async fn push(&self, registry: &Registry) -> Result<PushedImage, OciDistributionError> {
        self.build().push(registry).await
    }

    fn config_json(&self, layers: &[BuiltLayer]) -> serde_json::Value {
        let mut config = serde_json::Map::new();
        let mut set = |key: &str, value: serde_json::Value| {
            config.insert(key.to_owned(), value);
        };
        if let Some(user) = &self.user {
            set("User", json!(user));
        }
        if !self.env.is_empty() {
            let env: Vec<String> = self.env.iter().map(|(n, v)| format!("{n}={v}")).collect();
            set("Env", json!(env));
        }
        if let Some(entrypoint) = &self.entrypoint {
            set("Entrypoint", json!(entrypoint));
        }
        if let Some(cmd) = &self.cmd {
            set("Cmd", json!(cmd));
        }
        if let Some(dir) = &self.working_dir {
            set("WorkingDir", json!(dir));
        }
        if !self.labels.is_empty() {
            set("Labels", json!(self.labels));
        }
        if !self.exposed_ports.is_empty() {
            let ports: BTreeMap<&str, serde_json::Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.as_str(), json!({})))
                .collect();
            set("ExposedPorts", json!(ports));
        }
        if let Some(signal) = &self.stop_signal {
            set("StopSignal", json!(signal));
        }
        json!({
            "created": CREATED,
            "architecture": oci_architecture(),
            "os": "linux",
            "config": config,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
            },
            "history": layers.iter().map(|_| json!({
                "created": CREATED,
                "created_by": "berth test image builder",
            })).collect::<Vec<_>>(),
        })
    }
}

/// An image built in memory, ready to push (or to tamper with first).
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// Repository within the registry, e.g. `test/busybox`.
    pub repository: String,
    /// Tags to push the manifest under (at least one).
    pub tags: Vec<String>,
    /// The manifest JSON exactly as pushed.
    pub manifest: Vec<u8>,
    /// `sha256:` digest of [`BuiltImage::manifest`].
    pub manifest_digest: String,
    /// The config JSON exactly as pushed.
    pub config: Vec<u8>,
    /// `sha256:` digest of the config: the image id.
    pub config_digest: String,
    /// Layers, bottom first.
    pub layers: Vec<BuiltLayer>,
}

impl BuiltImage {
    /// Bytes of all blobs: manifest, config and layer blobs (compressed).
    pub fn size(&self) -> u64 {
        let layers: usize = self.layers.iter().map(|l| l.blob.len()).sum();
        (self.manifest.len() + self.config.len() + layers) as u64
    }

    /// Pushes layers, config and the manifest under every tag, with the
    /// registry's own credentials if it has any.
    pub async fn push(&self, registry: &Registry) -> Result<PushedImage, OciDistributionError> {
        self.push_with_auth(registry, &registry.auth()).await
    }

    /// Pushes as [`BuiltImage::push`] does, with the given auth (to test
    /// refused pushes).
    pub async fn push_with_auth(
        &self,
        registry: &Registry,
        auth: &RegistryAuth,
    ) -> Result<PushedImage, OciDistributionError> {
        let host = registry.host();
        let client = registry.client();
        client.store_auth_if_needed(&host, auth).await;
        let references: Vec<Reference> = self
            .tags
            .iter()
            .map(|tag| Reference::with_tag(host.clone(), self.repository.clone(), tag.clone()))
            .collect();
        let first = &references[0];
        for layer in &self.layers {
            client
                .push_blob(first, layer.blob.clone(), &layer.digest)
                .await?;
        }
        client
            .push_blob(first, self.config.clone(), &self.config_digest)
            .await?;
        for reference in &references {
            let content_type = OCI_IMAGE_MEDIA_TYPE
                .parse()
                .expect("media type is a header value");
            client
                .push_manifest_raw(reference, self.manifest.clone(), content_type)
                .await?;
        }
        Ok(PushedImage {
            host,
            repository: self.repository.clone(),
            references: references.iter().map(Reference::whole).collect(),
            manifest_digest: self.manifest_digest.clone(),
            config_digest: self.config_digest.clone(),
            layer_digests: self.layers.iter().map(|l| l.digest.clone()).collect(),
            diff_ids: self.layers.iter().map(|l| l.diff_id.clone()).collect(),
            size: self.size(),
        })
    }
}

/// What a push left in the registry, as the tests check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedImage {
    /// Registry `host:port`.
    pub host: String,
    /// Repository within the registry.
    pub repository: String,
    /// One `host:port/repository:tag` per tag pushed.
    pub references: Vec<String>,
    /// `sha256:` digest of the manifest.
    pub manifest_digest: String,
    /// `sha256:` digest of the config, which is the image id.
    pub config_digest: String,
    /// Digests of the layer blobs, bottom first.
    pub layer_digests: Vec<String>,
    /// Digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<String>,
    /// Bytes of manifest, config and layer blobs together.
    pub size: u64,
}

impl PushedImage {
    /// The first tagged reference, `host:port/repository:tag`.
    pub fn reference(&self) -> &str {
        &self.references[0]
    }

    /// The reference by digest, `host:port/repository@sha256:…`.
    pub fn digest_reference(&self) -> String {
        format!("{}/{}@{}", self.host, self.repository, self.manifest_digest)
    }

    /// The image id (the config digest), as CRI reports it.
    pub fn image_id(&self) -> &str {
        &self.config_digest
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Gzip with no file name and mtime 0, so equal input gives equal output.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// Strips the leading and trailing `/` a caller may write.
fn normalize(path: &str) -> String {
    path.trim_matches('/').to_owned()
}

/// Appends one entry. Names and link targets of up to 100 bytes are written
/// verbatim into the header, so hostile names (`../x`) survive; longer ones
/// go through the `tar` crate, which adds GNU long-name records.
fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, entry: &Entry) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_mtime(MTIME);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mode(entry.mode);
    let (entry_type, link, data): (_, Option<&str>, &[u8]) = match &entry.kind {
        EntryKind::File(content) => (tar::EntryType::Regular, None, content),
        EntryKind::Dir => (tar::EntryType::Directory, None, &[]),
        EntryKind::Symlink(target) => (tar::EntryType::Symlink, Some(target), &[]),
        EntryKind::Hardlink(target) => (tar::EntryType::Link, Some(target), &[]),
    };
    header.set_entry_type(entry_type);
    header.set_size(data.len() as u64);
    let fits = path.len() <= 100 && link.is_none_or(|l| l.len() <= 100);
    if fits {
        let old = header.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, data)
    } else if let Some(link) = link {
        builder.append_link(&mut header, path, link)
    } else {
        builder.append_data(&mut header, path, data)
    }
}

/// The OCI (Go) name of the architecture this test runs on, which is the
/// architecture of the host's busybox.
fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}
