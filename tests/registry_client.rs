//! The registry client (`berthd::registry`) against a real registry
//! (Debian's `docker-registry` on loopback) and, for what a real registry
//! does not do on demand (stalls, schema 1, token auth, lying digests), a
//! tiny HTTP server written here.
//!
//! Every host these tests name is a loopback address or `localhost`: no
//! test can make berth look up or contact a public registry, even when the
//! code under test is wrong.
//!
//! Needs Debian's `docker-registry` and `busybox-static`, not root.

mod support;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use berthd::config::{RegistryConfig, RegistryHost, RegistryMirror};
use berthd::registry::{
    Credentials, DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, Digest, OCI_INDEX,
    OCI_MANIFEST, Platform, Reference, Registries, RegistryError, ResolvedImage,
};
use fake::{FakeServer, Reply, Request};
use serde_json::json;
use support::image::{BuiltImage, ImageBuilder, Layer, PushedImage};
use support::registry::Registry;

const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn start_registry() -> Registry {
    support::require_binary("docker-registry");
    Registry::start().expect("start docker-registry")
}

fn registries_from(config: RegistryConfig) -> Registries {
    Registries::new(&config).expect("registries from a valid config")
}

fn reference(text: &str) -> Reference {
    Reference::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

/// A one-layer image whose content depends on `marker`, so different
/// markers give different digests.
fn small_image(repository: &str, marker: &str) -> ImageBuilder {
    ImageBuilder::new(repository)
        .layer(Layer::new().file("/marker", marker, 0o644))
        .label("marker", marker)
}

/// A port on 127.0.0.1 nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn mirrors(registry: &str, endpoints: &[String]) -> RegistryConfig {
    RegistryConfig {
        mirrors: [(
            registry.to_owned(),
            RegistryMirror {
                endpoints: endpoints.to_vec(),
            },
        )]
        .into(),
        ..RegistryConfig::default()
    }
}

fn basic(username: &str, password: &str) -> Credentials {
    Credentials {
        username: username.into(),
        password: password.into(),
        ..Credentials::default()
    }
}

/// Fetches config and layers, all at once from spawned tasks, and returns
/// them in manifest order.
async fn fetch_all(registries: &Arc<Registries>, image: &ResolvedImage) -> Vec<Vec<u8>> {
    let mut tasks = tokio::task::JoinSet::new();
    let blobs = std::iter::once(image.config.clone()).chain(image.layers.iter().cloned());
    for (i, blob) in blobs.enumerate() {
        let registries = Arc::clone(registries);
        let image = image.clone();
        tasks.spawn(async move {
            let mut bytes = Vec::new();
            let written = registries
                .fetch_blob(&image, &blob, &mut bytes)
                .await
                .unwrap_or_else(|e| panic!("fetch {}: {e}", blob.digest));
            assert_eq!(written, bytes.len() as u64);
            (i, bytes)
        });
    }
    let mut fetched = tasks.join_all().await;
    fetched.sort_by_key(|(i, _)| *i);
    fetched.into_iter().map(|(_, bytes)| bytes).collect()
}

fn assert_is_pushed(image: &ResolvedImage, built: &BuiltImage, pushed: &PushedImage) {
    assert_eq!(image.digest.as_str(), pushed.manifest_digest);
    assert_eq!(image.manifest.bytes, built.manifest);
    assert_eq!(image.manifest.media_type, OCI_MANIFEST);
    assert_eq!(image.config.digest.as_str(), pushed.config_digest);
    assert_eq!(image.config.size, built.config.len() as u64);
    let layers: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layers, pushed.layer_digests);
    for (layer, built) in image.layers.iter().zip(&built.layers) {
        assert_eq!(layer.size, built.blob.len() as u64);
        assert_eq!(layer.media_type, built.media_type);
    }
}

#[tokio::test]
async fn resolves_and_fetches_by_tag() {
    let registry = start_registry();
    let built = ImageBuilder::busybox("berth-test/busybox")
        .layer(Layer::new().file("/etc/motd", "hello\n", 0o644))
        .tag("v1")
        .build();
    let pushed = built.push(&registry).await.expect("push");
    let registries = Arc::new(registries_from(RegistryConfig::default()));

    let wanted = reference(pushed.reference());
    let image = registries.resolve(&wanted, None).await.expect("resolve");
    assert_is_pushed(&image, &built, &pushed);
    assert_eq!(image.reference, wanted);
    assert_eq!(image.repo_digest, image.digest, "no manifest list");
    assert!(image.index.is_none() && image.platform.is_none());
    assert_eq!(image.endpoint.url, registry.url(), "loopback is plain HTTP");
    assert!(!image.endpoint.mirror);
    assert_eq!(
        image.repo_digest_reference().to_string(),
        format!(
            "{}/berth-test/busybox@{}",
            registry.host(),
            pushed.manifest_digest
        )
    );
    assert_eq!(image.size(), pushed.size);

    let blobs = fetch_all(&registries, &image).await;
    assert_eq!(blobs[0], built.config);
    for (fetched, layer) in blobs[1..].iter().zip(&built.layers) {
        assert!(fetched == &layer.blob, "layer {} differs", layer.digest);
    }
}

#[tokio::test]
async fn resolves_by_digest_and_by_tag_with_digest() {
    let registry = start_registry();
    let built = small_image("berth-test/pinned", "pinned").tag("v1").build();
    let pushed = built.push(&registry).await.expect("push");
    let registries = Arc::new(registries_from(RegistryConfig::default()));

    let by_digest = reference(&pushed.digest_reference());
    assert_eq!(by_digest.tag(), None);
    let image = registries
        .resolve(&by_digest, None)
        .await
        .expect("resolve by digest");
    assert_is_pushed(&image, &built, &pushed);
    assert_eq!(fetch_all(&registries, &image).await[0], built.config);

    // The digest decides what is fetched; the tag only names it.
    let other = small_image("berth-test/pinned", "other").tag("v2");
    other.push(&registry).await.expect("push another image");
    let tag_and_digest = reference(&format!(
        "{}/berth-test/pinned:v2@{}",
        registry.host(),
        pushed.manifest_digest
    ));
    let image = registries
        .resolve(&tag_and_digest, None)
        .await
        .expect("resolve");
    assert_eq!(image.digest.as_str(), pushed.manifest_digest);
    assert_eq!(image.reference.tag(), Some("v2"));

    // A well-formed digest the registry does not have.
    let missing = reference(&format!(
        "{}/berth-test/pinned@{}",
        registry.host(),
        Digest::sha256(b"no such manifest")
    ));
    let err = registries
        .resolve(&missing, None)
        .await
        .expect_err("missing digest");
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
}

/// Pushes a manifest list of `media_type` under `tag`, with `entries`
/// (manifest digest, size, media type, platform JSON); returns its digest.
async fn push_index(
    registry: &Registry,
    repository: &str,
    tag: &str,
    media_type: &str,
    entries: &[(&str, usize, &str, serde_json::Value)],
) -> Digest {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(digest, size, entry_type, platform)| {
            json!({"mediaType": entry_type, "digest": digest, "size": size, "platform": platform})
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests});
    let bytes = serde_json::to_vec(&index).expect("serialise the index");
    let oci_reference =
        oci_client::Reference::with_tag(registry.host(), repository.into(), tag.into());
    registry
        .client()
        .push_manifest_raw(
            &oci_reference,
            bytes.clone(),
            media_type.parse().expect("header"),
        )
        .await
        .expect("push the index");
    Digest::sha256(&bytes)
}

#[tokio::test]
async fn manifest_list_resolves_to_the_host_platform() {
    let registry = start_registry();
    let amd64 = small_image("berth-test/multi", "amd64")
        .tag("amd64")
        .build();
    let arm64 = small_image("berth-test/multi", "arm64")
        .tag("arm64")
        .build();
    amd64.push(&registry).await.expect("push amd64");
    arm64.push(&registry).await.expect("push arm64");
    let entries = [
        // The host's entry is not the first, and an attestation-like entry
        // sits in between: the choice is by platform, not by position.
        (
            arm64.manifest_digest.as_str(),
            arm64.manifest.len(),
            OCI_MANIFEST,
            json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ),
        (
            arm64.manifest_digest.as_str(),
            arm64.manifest.len(),
            OCI_MANIFEST,
            json!({"os": "unknown", "architecture": "unknown"}),
        ),
        (
            amd64.manifest_digest.as_str(),
            amd64.manifest.len(),
            OCI_MANIFEST,
            json!({"os": "linux", "architecture": "amd64"}),
        ),
    ];
    let index_digest =
        push_index(&registry, "berth-test/multi", "multi", OCI_INDEX, &entries).await;
    let wanted = reference(&format!("{}/berth-test/multi:multi", registry.host()));

    let host = registries_from(RegistryConfig::default());
    assert_eq!(host.platform(), &Platform::host());
    let expected = match Platform::host().architecture.as_str() {
        "amd64" => &amd64,
        "arm64" => &arm64,
        other => panic!("no test image for this host's architecture {other}"),
    };
    let image = host.resolve(&wanted, None).await.expect("resolve the list");
    assert_eq!(image.digest.as_str(), expected.manifest_digest);
    assert_eq!(image.manifest.bytes, expected.manifest);
    assert_eq!(image.config.digest.as_str(), expected.config_digest);
    assert_eq!(
        image.repo_digest, index_digest,
        "the repo digest is the list's"
    );
    let index = image.index.as_ref().expect("the list is kept");
    assert_eq!(index.digest, index_digest);
    assert_eq!(index.media_type, OCI_INDEX);
    assert_eq!(image.platform.as_ref(), Some(&Platform::host()));

    // Another platform picks the other entry of the same list.
    let arm = registries_from(RegistryConfig::default())
        .with_platform(Platform::new("linux", "arm64", None));
    let image = arm.resolve(&wanted, None).await.expect("resolve for arm64");
    assert_eq!(image.digest.as_str(), arm64.manifest_digest);
    assert_eq!(image.repo_digest, index_digest);

    // By the list's digest, too.
    let pinned = reference(&format!(
        "{}/berth-test/multi@{index_digest}",
        registry.host()
    ));
    let image = host
        .resolve(&pinned, None)
        .await
        .expect("resolve the list by digest");
    assert_eq!(image.digest.as_str(), expected.manifest_digest);
    assert_eq!(image.repo_digest, index_digest);
}

#[tokio::test]
async fn manifest_list_without_this_platform_is_unsupported_naming_platforms() {
    let registry = start_registry();
    let image = small_image("berth-test/foreign", "foreign")
        .tag("one")
        .build();
    image.push(&registry).await.expect("push");
    let entries = [
        (
            image.manifest_digest.as_str(),
            image.manifest.len(),
            OCI_MANIFEST,
            json!({"os": "linux", "architecture": "s390x"}),
        ),
        (
            image.manifest_digest.as_str(),
            image.manifest.len(),
            OCI_MANIFEST,
            json!({"os": "linux", "architecture": "arm", "variant": "v7"}),
        ),
    ];
    push_index(&registry, "berth-test/foreign", "list", OCI_INDEX, &entries).await;
    let wanted = reference(&format!("{}/berth-test/foreign:list", registry.host()));
    let registries = registries_from(RegistryConfig::default())
        .with_platform(Platform::new("linux", "amd64", None));
    let err = registries
        .resolve(&wanted, None)
        .await
        .expect_err("no amd64 image");
    assert!(matches!(err, RegistryError::Unsupported { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("no image for linux/amd64; it has linux/s390x, linux/arm/v7"),
        "{message}"
    );
    assert!(message.contains(&wanted.to_string()), "{message}");
}

#[tokio::test]
async fn docker_schema2_manifests_and_lists_resolve() {
    let registry = start_registry();
    let built = small_image("berth-test/docker", "docker")
        .tag("oci")
        .build();
    built.push(&registry).await.expect("push the blobs");
    // The same blobs under Docker media types.
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&built.manifest).expect("parse the manifest");
    manifest["mediaType"] = json!(DOCKER_MANIFEST);
    manifest["config"]["mediaType"] = json!(DOCKER_CONFIG);
    for layer in manifest["layers"].as_array_mut().expect("layers") {
        layer["mediaType"] = json!(DOCKER_LAYER);
    }
    let manifest = serde_json::to_vec(&manifest).expect("serialise");
    let oci_reference =
        oci_client::Reference::with_tag(registry.host(), "berth-test/docker".into(), "v2".into());
    registry
        .client()
        .push_manifest_raw(
            &oci_reference,
            manifest.clone(),
            DOCKER_MANIFEST.parse().expect("header"),
        )
        .await
        .expect("push the Docker manifest");
    let manifest_digest = Digest::sha256(&manifest);
    let list_digest = push_index(
        &registry,
        "berth-test/docker",
        "list",
        DOCKER_MANIFEST_LIST,
        &[(
            manifest_digest.as_str(),
            manifest.len(),
            DOCKER_MANIFEST,
            json!({"os": "linux", "architecture": Platform::host().architecture}),
        )],
    )
    .await;

    let registries = Arc::new(registries_from(RegistryConfig::default()));
    let wanted = reference(&format!("{}/berth-test/docker:list", registry.host()));
    let image = registries.resolve(&wanted, None).await.expect("resolve");
    assert_eq!(image.digest, manifest_digest);
    assert_eq!(image.repo_digest, list_digest);
    assert_eq!(image.manifest.media_type, DOCKER_MANIFEST);
    assert_eq!(
        image.index.as_ref().map(|i| i.media_type.as_str()),
        Some(DOCKER_MANIFEST_LIST)
    );
    assert_eq!(image.config.media_type, DOCKER_CONFIG);
    assert!(image.layers.iter().all(|l| l.media_type == DOCKER_LAYER));
    let blobs = fetch_all(&registries, &image).await;
    assert_eq!(blobs[0], built.config);
    assert!(blobs[1] == built.layers[0].blob);
}

#[tokio::test]
async fn a_mirror_that_has_the_image_answers_first() {
    let registry = start_registry();
    let built = small_image("berth-test/mirrored", "mirrored")
        .tag("v1")
        .build();
    let pushed = built.push(&registry).await.expect("push");
    // The image's own registry is a loopback port nothing listens on: were
    // it asked, the pull would fail.
    let unreachable = format!("localhost:{}", closed_port());
    let registries = Arc::new(registries_from(mirrors(&unreachable, &[registry.url()])));

    let wanted = reference(&format!("{unreachable}/berth-test/mirrored:v1"));
    let endpoints = registries.endpoints(&wanted);
    assert_eq!(endpoints.len(), 2);
    assert_eq!(endpoints[1].url, format!("http://{unreachable}"));

    let image = registries
        .resolve(&wanted, None)
        .await
        .expect("resolve via the mirror");
    assert!(image.endpoint.mirror);
    assert_eq!(image.endpoint.url, registry.url());
    assert_is_pushed(&image, &built, &pushed);
    assert_eq!(image.reference, wanted, "the image keeps its own name");
    let blobs = fetch_all(&registries, &image).await;
    assert!(blobs[1] == built.layers[0].blob);
}

#[tokio::test]
async fn a_mirror_path_prefixes_the_repository() {
    let registry = start_registry();
    let built = small_image("cache/berth-test/prefixed", "prefixed").build();
    built.push(&registry).await.expect("push");
    let unreachable = format!("127.0.0.1:{}", closed_port());
    let mirror = format!("{}/v2/cache", registry.url());
    let registries = registries_from(mirrors(&unreachable, &[mirror]));
    let wanted = reference(&format!("{unreachable}/berth-test/prefixed"));
    let image = registries
        .resolve(&wanted, None)
        .await
        .expect("resolve via the mirror");
    assert_eq!(image.endpoint.repository, "cache/berth-test/prefixed");
    assert_eq!(image.digest.as_str(), built.manifest_digest);
    let mut config = Vec::new();
    registries
        .fetch_blob(&image, &image.config, &mut config)
        .await
        .expect("fetch the config");
    assert_eq!(config, built.config);
}

#[tokio::test]
async fn dead_and_empty_mirrors_fall_through_in_order() {
    let registry = start_registry();
    let empty = start_registry();
    let built = small_image("berth-test/fallthrough", "fallthrough").build();
    built.push(&registry).await.expect("push");

    // Dead mirror, then the registry itself.
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let registries = registries_from(mirrors(&registry.host(), std::slice::from_ref(&dead)));
    let wanted = reference(&format!("{}/berth-test/fallthrough", registry.host()));
    let image = registries
        .resolve(&wanted, None)
        .await
        .expect("resolve past a dead mirror");
    assert!(!image.endpoint.mirror);
    assert_eq!(image.endpoint.url, registry.url());

    // Dead mirror, mirror without the image (404), working mirror; the
    // registry itself is unreachable and never needed.
    let unreachable = format!("localhost:{}", closed_port());
    let registries = registries_from(mirrors(&unreachable, &[dead, empty.url(), registry.url()]));
    let wanted = reference(&format!("{unreachable}/berth-test/fallthrough"));
    let image = registries
        .resolve(&wanted, None)
        .await
        .expect("resolve via the third mirror");
    assert!(image.endpoint.mirror);
    assert_eq!(image.endpoint.url, registry.url());
    let mut layer = Vec::new();
    registries
        .fetch_blob(&image, &image.layers[0], &mut layer)
        .await
        .expect("fetch a layer from the mirror that answered");
    assert!(layer == built.layers[0].blob);

    // When every endpoint fails, the registry's own failure is reported.
    let registries = registries_from(mirrors(&unreachable, &[empty.url()]));
    let err = registries
        .resolve(&wanted, None)
        .await
        .expect_err("nobody has it");
    assert!(matches!(err, RegistryError::Transport { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("http://{unreachable}")),
        "{err}"
    );
}

#[tokio::test]
async fn failing_and_stalled_mirrors_give_way() {
    let registry = start_registry();
    let built = small_image("berth-test/stalled-mirror", "x").build();
    built.push(&registry).await.expect("push");
    let failing = FakeServer::start(|_: &Request| {
        Reply::json(
            503,
            json!({"errors": [{"code": "UNAVAILABLE", "message": "down"}]}),
        )
    })
    .await;
    let stalled = FakeServer::start(|_: &Request| Reply::stall_before_headers()).await;
    let timeout = Duration::from_millis(300);
    let config = RegistryConfig {
        progress_timeout: timeout,
        ..mirrors(&registry.host(), &[failing.url(), stalled.url()])
    };
    let registries = registries_from(config);
    let wanted = reference(&format!("{}/berth-test/stalled-mirror", registry.host()));
    let started = Instant::now();
    let image = registries
        .resolve(&wanted, None)
        .await
        .expect("resolve past a 503 and a stall");
    assert_eq!(image.endpoint.url, registry.url());
    assert!(started.elapsed() >= timeout, "the stall was waited for");
}

#[tokio::test]
async fn a_mirror_that_refuses_credentials_is_reported() {
    let registry = start_registry();
    let locked = Registry::start_with_basic_auth("alice", "secret").expect("start");
    let built = small_image("berth-test/locked-mirror", "x").build();
    built.push(&registry).await.expect("push");
    built
        .push(&locked)
        .await
        .expect("push to the locked mirror");

    let config = mirrors(&registry.host(), &[locked.url()]);
    let wanted = reference(&format!("{}/berth-test/locked-mirror", registry.host()));
    // The pull's own credentials belong to the image's registry, not to
    // the mirror: the mirror refuses, and that is reported, not skipped.
    let err = registries_from(config.clone())
        .resolve(&wanted, Some(&basic("alice", "secret")))
        .await
        .expect_err("the mirror refuses");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains(&locked.url()), "{err}");

    // Credentials configured for the mirror host are used there.
    let mut config = config;
    config.hosts.insert(
        locked.host(),
        RegistryHost {
            username: Some("alice".into()),
            password: Some("secret".into()),
            ..RegistryHost::default()
        },
    );
    let image = registries_from(config)
        .resolve(&wanted, None)
        .await
        .expect("resolve via the mirror");
    assert_eq!(image.endpoint.url, locked.url());
}

#[tokio::test]
async fn basic_auth_registry_needs_credentials() {
    support::require_binary("docker-registry");
    let registry = Registry::start_with_basic_auth("alice", "s3cret:with:colons").expect("start");
    let built = small_image("berth-test/private", "private")
        .tag("v1")
        .build();
    let pushed = built.push(&registry).await.expect("push");
    let wanted = reference(pushed.reference());
    let open = Arc::new(registries_from(RegistryConfig::default()));

    let err = open.resolve(&wanted, None).await.expect_err("anonymous");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains(&wanted.to_string()), "{err}");

    let wrong = basic("alice", "wrong");
    let err = open
        .resolve(&wanted, Some(&wrong))
        .await
        .expect_err("wrong password");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");

    let right = basic("alice", "s3cret:with:colons");
    let image = open
        .resolve(&wanted, Some(&right))
        .await
        .expect("user and password");
    assert_is_pushed(&image, &built, &pushed);
    assert!(fetch_all(&open, &image).await[1] == built.layers[0].blob);

    let encoded = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:with:colons");
    let auth = Credentials {
        auth: encoded,
        ..Credentials::default()
    };
    let image = open
        .resolve(&wanted, Some(&auth))
        .await
        .expect("auth field");
    assert_eq!(fetch_all(&open, &image).await[0], built.config);

    let garbled = Credentials {
        auth: "%%%".into(),
        ..Credentials::default()
    };
    let err = open
        .resolve(&wanted, Some(&garbled))
        .await
        .expect_err("bad auth field");
    assert!(
        matches!(err, RegistryError::InvalidCredentials { .. }),
        "{err:?}"
    );

    let configured = Arc::new(registries_from(RegistryConfig {
        hosts: [(
            registry.host(),
            RegistryHost {
                username: Some("alice".into()),
                password: Some("s3cret:with:colons".into()),
                ..RegistryHost::default()
            },
        )]
        .into(),
        ..RegistryConfig::default()
    }));
    let image = configured
        .resolve(&wanted, None)
        .await
        .expect("config credentials");
    assert_eq!(fetch_all(&configured, &image).await[0], built.config);
    // A pull's own credentials win over the config's.
    let err = configured
        .resolve(&wanted, Some(&wrong))
        .await
        .expect_err("own credentials win");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
}

#[tokio::test]
async fn missing_images_are_not_found_naming_the_reference() {
    let registry = start_registry();
    small_image("berth-test/exists", "x")
        .tag("v1")
        .push(&registry)
        .await
        .expect("push");
    let registries = registries_from(RegistryConfig::default());
    for missing in ["berth-test/nope:latest", "berth-test/exists:v2"] {
        let wanted = reference(&format!("{}/{missing}", registry.host()));
        let err = registries.resolve(&wanted, None).await.expect_err(missing);
        let RegistryError::NotFound { reference, .. } = &err else {
            panic!("{missing}: {err:?}");
        };
        assert_eq!(reference, &wanted.to_string());
        let message = err.to_string();
        assert!(message.contains(&wanted.to_string()), "{message}");
        assert!(message.contains(&registry.url()), "{message}");
    }
}

/// Path of a blob in the registry's filesystem storage.
fn blob_path(registry: &Registry, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[tokio::test]
async fn corrupted_blobs_are_refused() {
    let registry = start_registry();
    let built = small_image("berth-test/corrupt", "corrupt")
        .layer(Layer::new().file("/second", "second layer", 0o644))
        .build();
    let pushed = built.push(&registry).await.expect("push");
    let registries = registries_from(RegistryConfig::default());
    let wanted = reference(pushed.reference());
    let image = registries.resolve(&wanted, None).await.expect("resolve");

    // Same size, other bytes: the digest tells.
    let first = &image.layers[0];
    let path = blob_path(&registry, first.digest.as_str());
    let mut bytes = std::fs::read(&path).expect("read the stored blob");
    for b in &mut bytes {
        *b = !*b;
    }
    std::fs::write(&path, &bytes).expect("corrupt the blob");
    let err = registries
        .fetch_blob(&image, first, Vec::new())
        .await
        .expect_err("corrupt layer");
    let RegistryError::DigestMismatch {
        expected, actual, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(expected, first.digest.as_str());
    assert_eq!(actual, &Digest::sha256(&bytes).to_string());
    let message = err.to_string();
    assert!(
        message.contains(&format!("layer {}", first.digest)),
        "{message}"
    );

    // One byte more: the size tells, before any byte is trusted.
    let second = &image.layers[1];
    let path = blob_path(&registry, second.digest.as_str());
    let mut bytes = std::fs::read(&path).expect("read the stored blob");
    bytes.push(0);
    std::fs::write(&path, &bytes).expect("grow the blob");
    let err = registries
        .fetch_blob(&image, second, Vec::new())
        .await
        .expect_err("grown layer");
    let RegistryError::SizeMismatch {
        expected, actual, ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!((expected, actual), (second.size, second.size + 1));
}

#[tokio::test]
async fn a_corrupted_manifest_is_refused() {
    let registry = start_registry();
    let built = small_image("berth-test/corrupt-manifest", "m").build();
    let pushed = built.push(&registry).await.expect("push");
    let path = blob_path(&registry, &pushed.manifest_digest);
    // Still a valid manifest (the registry parses what it serves), but
    // naming another config.
    let stored = std::fs::read_to_string(&path).expect("read the stored manifest");
    let config_hex = &pushed.config_digest["sha256:".len()..];
    let flipped: String = config_hex
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let corrupted = stored.replace(config_hex, &flipped);
    assert_ne!(corrupted, stored);
    std::fs::write(&path, &corrupted).expect("corrupt the manifest");
    let registries = registries_from(RegistryConfig::default());
    for wanted in [pushed.reference().to_owned(), pushed.digest_reference()] {
        let err = registries
            .resolve(&reference(&wanted), None)
            .await
            .expect_err("corrupt manifest");
        let RegistryError::DigestMismatch { expected, .. } = &err else {
            panic!("{wanted}: {err:?}");
        };
        assert_eq!(expected, &pushed.manifest_digest, "{wanted}");
    }
}

/// A fake registry that serves `image` (under any repository and tag)
/// with `manifest_type`; `tweak` may replace any reply.
async fn serve_image(
    image: BuiltImage,
    manifest_type: &'static str,
    tweak: impl Fn(&Request, &BuiltImage) -> Option<Reply> + Send + Sync + 'static,
) -> FakeServer {
    FakeServer::start(move |request: &Request| {
        if let Some(reply) = tweak(request, &image) {
            return reply;
        }
        let path = request.path_without_query();
        if path == "/v2/" {
            return Reply::json(200, json!({}));
        }
        if path.contains("/manifests/") {
            return Reply::ok(image.manifest.clone())
                .header("Content-Type", manifest_type)
                .header("Docker-Content-Digest", &image.manifest_digest);
        }
        if let Some((_, digest)) = path.split_once("/blobs/") {
            let blob = std::iter::once(&image.config)
                .chain(image.layers.iter().map(|l| &l.blob))
                .find(|blob| support::image::sha256_digest(blob) == digest);
            if let Some(blob) = blob {
                return Reply::ok(blob.clone()).header("Docker-Content-Digest", digest);
            }
        }
        Reply::json(
            404,
            json!({"errors": [{"code": "BLOB_UNKNOWN", "message": "unknown"}]}),
        )
    })
    .await
}

#[tokio::test]
async fn a_stalled_blob_times_out_naming_it() {
    let big = Layer::new().file("/big", vec![7u8; 256 * 1024], 0o644);
    let built = ImageBuilder::new("berth-test/stall").layer(big).build();
    let server = serve_image(built, OCI_MANIFEST, |request, image| {
        // Headers and the first bytes of the layer, then nothing.
        let layer = &image.layers[0];
        let path = request.path_without_query();
        path.ends_with(&format!("/blobs/{}", layer.digest))
            .then(|| Reply::ok(layer.blob.clone()).stall_after(10))
    })
    .await;
    let timeout = Duration::from_millis(500);
    let registries = registries_from(RegistryConfig {
        progress_timeout: timeout,
        ..RegistryConfig::default()
    });
    let wanted = reference(&format!("{}/berth-test/stall:v1", server.host()));
    let image = registries.resolve(&wanted, None).await.expect("resolve");
    let blob = image.layers[0].clone();

    let started = Instant::now();
    let err = registries
        .fetch_blob(&image, &blob, Vec::new())
        .await
        .expect_err("stalled blob");
    let elapsed = started.elapsed();
    let RegistryError::Timeout { object, after, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(object, &format!("layer {}", blob.digest));
    assert_eq!(*after, timeout);
    assert!(elapsed >= timeout, "gave up after {elapsed:?}");
    assert!(elapsed < timeout * 6, "took {elapsed:?} to notice");
    assert!(err.to_string().contains(blob.digest.as_str()), "{err}");
}

#[tokio::test]
async fn a_stalled_manifest_times_out() {
    let server = FakeServer::start(|_: &Request| Reply::stall_before_headers()).await;
    let timeout = Duration::from_millis(300);
    let registries = registries_from(RegistryConfig {
        progress_timeout: timeout,
        ..RegistryConfig::default()
    });
    let wanted = reference(&format!("{}/berth-test/stall", server.host()));
    let started = Instant::now();
    let err = registries
        .resolve(&wanted, None)
        .await
        .expect_err("stalled");
    assert!(matches!(err, RegistryError::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < timeout * 6,
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn schema1_manifests_are_refused_by_name() {
    let schema1 = json!({
        "schemaVersion": 1,
        "name": "berth-test/old",
        "tag": "latest",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": Digest::sha256(b"layer").to_string()}],
        "history": [{"v1Compatibility": "{}"}],
        "signatures": [],
    });
    let bytes = serde_json::to_vec(&schema1).expect("serialise");
    let server = FakeServer::start(move |request: &Request| {
        if request.path_without_query() == "/v2/" {
            return Reply::json(200, json!({}));
        }
        Reply::ok(bytes.clone()).header(
            "Content-Type",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        )
    })
    .await;
    let wanted = reference(&format!("{}/berth-test/old", server.host()));
    let err = registries_from(RegistryConfig::default())
        .resolve(&wanted, None)
        .await
        .expect_err("schema 1");
    assert!(matches!(err, RegistryError::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("Docker schema 1"), "{err}");
}

#[tokio::test]
async fn a_manifest_that_does_not_hash_to_the_pinned_digest_is_refused() {
    let built = small_image("berth-test/liar", "liar").build();
    let other = small_image("berth-test/liar", "other").build();
    let other_manifest = other.manifest.clone();
    // Serves another manifest for any digest, with or without a header
    // claiming the requested digest.
    let server = serve_image(built.clone(), OCI_MANIFEST, move |request, _| {
        let path = request.path_without_query();
        let (_, asked) = path.split_once("/manifests/")?;
        let reply = Reply::ok(other_manifest.clone()).header("Content-Type", OCI_MANIFEST);
        Some(if path.contains("/with-header/") {
            reply.header("Docker-Content-Digest", asked)
        } else {
            reply
        })
    })
    .await;
    let registries = registries_from(RegistryConfig::default());
    for repository in ["berth-test/with-header/liar", "berth-test/liar"] {
        let pinned = reference(&format!(
            "{}/{repository}@{}",
            server.host(),
            built.manifest_digest
        ));
        let err = registries
            .resolve(&pinned, None)
            .await
            .expect_err("wrong body");
        let RegistryError::DigestMismatch {
            expected, actual, ..
        } = &err
        else {
            panic!("{repository}: {err:?}");
        };
        assert_eq!(expected, &built.manifest_digest, "{repository}");
        assert_eq!(actual, &other.manifest_digest, "{repository}");
    }
}

#[tokio::test]
async fn a_lying_digest_header_is_refused() {
    let built = small_image("berth-test/liar", "liar").build();
    let server = serve_image(built.clone(), OCI_MANIFEST, |request, image| {
        request
            .path_without_query()
            .contains("/manifests/")
            .then(|| {
                Reply::ok(image.manifest.clone())
                    .header("Content-Type", OCI_MANIFEST)
                    .header(
                        "Docker-Content-Digest",
                        Digest::sha256(b"something else").as_ref(),
                    )
            })
    })
    .await;
    let wanted = reference(&format!("{}/berth-test/liar:v1", server.host()));
    let err = registries_from(RegistryConfig::default())
        .resolve(&wanted, None)
        .await
        .expect_err("lying header");
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
}

/// Token auth as Docker Hub does it: `/v2/` challenges with a Bearer realm
/// on this server; the realm grants `TOKEN` for basic auth (GET) or for the
/// refresh token `REFRESH` (POST); the registry API wants `TOKEN`.
async fn token_registry(image: BuiltImage) -> FakeServer {
    const TOKEN: &str = "token-for-berth";
    let user = base64::engine::general_purpose::STANDARD.encode("bob:hunter2");
    let listening = Arc::new(std::sync::OnceLock::<String>::new());
    let realm_host = Arc::clone(&listening);
    let server = serve_image(image, OCI_MANIFEST, move |request, _| {
        let path = request.path_without_query();
        if path == "/token" {
            let scope_ok = request
                .path
                .contains("scope=repository%3Aberth-test%2Ftoken%3Apull")
                || request
                    .body_text()
                    .contains("scope=repository%3Aberth-test%2Ftoken%3Apull");
            if !scope_ok {
                return Some(Reply::json(400, json!({"error": "bad scope"})));
            }
            let granted = match request.method.as_str() {
                "GET" => request.header("authorization") == Some(&format!("Basic {user}")),
                "POST" => {
                    let body = request.body_text();
                    body.contains("grant_type=refresh_token")
                        && body.contains("refresh_token=REFRESH")
                        && body.contains("service=fake-registry")
                }
                _ => false,
            };
            return Some(if granted {
                Reply::json(200, json!({"token": TOKEN, "access_token": TOKEN}))
            } else {
                Reply::json(401, json!({"error": "invalid_grant"}))
            });
        }
        if request.header("authorization") == Some(&format!("Bearer {TOKEN}")) {
            return None;
        }
        let realm = format!(
            "http://{}/token",
            realm_host.get().map_or("", String::as_str)
        );
        Some(
            Reply::json(
                401,
                json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}),
            )
            .header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="{realm}",service="fake-registry""#),
            ),
        )
    })
    .await;
    listening.set(server.host()).expect("set once");
    server
}

#[tokio::test]
async fn bearer_token_auth_with_every_kind_of_credentials() {
    let built = small_image("berth-test/token", "token").build();
    let server = token_registry(built.clone()).await;
    let registries = Arc::new(registries_from(RegistryConfig::default()));
    let wanted = reference(&format!("{}/berth-test/token", server.host()));

    let err = registries
        .resolve(&wanted, None)
        .await
        .expect_err("anonymous");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    let err = registries
        .resolve(&wanted, Some(&basic("bob", "wrong")))
        .await
        .expect_err("wrong password");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");

    let kinds = [
        ("user and password", basic("bob", "hunter2")),
        (
            "identity token",
            Credentials {
                identity_token: "REFRESH".into(),
                ..Credentials::default()
            },
        ),
        (
            "registry token",
            Credentials {
                registry_token: "token-for-berth".into(),
                ..Credentials::default()
            },
        ),
    ];
    for (kind, credentials) in kinds {
        let image = registries
            .resolve(&wanted, Some(&credentials))
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(image.digest.as_str(), built.manifest_digest, "{kind}");
        let blobs = fetch_all(&registries, &image).await;
        assert_eq!(blobs[0], built.config, "{kind}");
    }

    let stale = Credentials {
        identity_token: "EXPIRED".into(),
        ..Credentials::default()
    };
    let err = registries
        .resolve(&wanted, Some(&stale))
        .await
        .expect_err("stale token");
    let RegistryError::Unauthorized { detail, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        detail.contains("refused the identity token: HTTP 401"),
        "{detail}"
    );
}

#[tokio::test]
async fn tls_settings_are_honoured() {
    let tls = tls::TlsRegistry::start();
    let host = tls.host();
    let wanted = reference(&format!("{host}/berth-test/absent"));
    let with_host = |settings: RegistryHost| {
        registries_from(RegistryConfig {
            hosts: [(host.clone(), settings)].into(),
            ..RegistryConfig::default()
        })
    };
    let over_tls = |settings: RegistryHost| {
        with_host(RegistryHost {
            plain_http: Some(false),
            ..settings
        })
    };
    // Reaching the TLS server at all shows as the registry's 404.
    let reached = |result: Result<ResolvedImage, RegistryError>, case: &str| match result {
        Err(RegistryError::NotFound { endpoint, .. }) => {
            assert_eq!(endpoint, format!("https://{host}"), "{case}")
        }
        other => panic!("{case}: {other:?}"),
    };

    // Loopback means plain HTTP unless the config says otherwise.
    let err = registries_from(RegistryConfig::default())
        .resolve(&wanted, None)
        .await
        .expect_err("plain HTTP to a TLS port");
    assert!(matches!(err, RegistryError::Transport { .. }), "{err:?}");

    // TLS with the system's roots: the test CA is unknown.
    let err = over_tls(RegistryHost::default())
        .resolve(&wanted, None)
        .await
        .expect_err("unknown CA");
    let RegistryError::Transport { detail, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(detail.contains("certificate"), "{detail}");

    let trusted = over_tls(RegistryHost {
        ca_file: Some(tls.ca_file()),
        ..RegistryHost::default()
    });
    reached(trusted.resolve(&wanted, None).await, "ca_file");

    let unverified = over_tls(RegistryHost {
        skip_verify: true,
        ..RegistryHost::default()
    });
    reached(unverified.resolve(&wanted, None).await, "skip_verify");

    // A mirror URL says its scheme itself; its host's CA applies. The
    // image's own registry is dead, so only the mirror can serve it.
    let built = small_image("berth-test/over-tls", "tls").build();
    tls.push(&built).await;
    let unreachable = format!("localhost:{}", closed_port());
    let mut config = mirrors(&unreachable, &[format!("https://{host}")]);
    config.hosts.insert(
        host.clone(),
        RegistryHost {
            ca_file: Some(tls.ca_file()),
            ..RegistryHost::default()
        },
    );
    let registries = registries_from(config);
    let via_mirror = reference(&format!("{unreachable}/berth-test/over-tls"));
    let image = registries
        .resolve(&via_mirror, None)
        .await
        .expect("resolve from the TLS mirror");
    assert_eq!(image.endpoint.url, format!("https://{host}"));
    assert_eq!(image.digest.as_str(), built.manifest_digest);
    let mut layer = Vec::new();
    registries
        .fetch_blob(&image, &image.layers[0], &mut layer)
        .await
        .expect("fetch a layer over TLS");
    assert!(layer == built.layers[0].blob);
}

/// A `docker-registry` serving TLS on 127.0.0.1 with a certificate from a
/// CA made for the test (the shared fixture speaks plain HTTP only).
mod tls {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use berthd::registry::OCI_MANIFEST;
    use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};

    use super::support::image::BuiltImage;

    pub struct TlsRegistry {
        child: Child,
        addr: SocketAddr,
        dir: tempfile::TempDir,
    }

    impl TlsRegistry {
        pub fn start() -> TlsRegistry {
            let binary = super::support::require_binary("docker-registry");
            let dir = tempfile::Builder::new()
                .prefix("berth-tls-registry-")
                .tempdir()
                .expect("temp dir");
            make_certificates(dir.path());
            let addr = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port");
            let config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n\
                 http:\n  addr: {addr}\n  tls:\n    certificate: {cert}\n    key: {key}\n",
                storage = dir.path().join("storage").display(),
                cert = dir.path().join("server.pem").display(),
                key = dir.path().join("server.key").display(),
            );
            std::fs::write(dir.path().join("config.yml"), config).expect("write config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
            let mut command = Command::new(binary);
            command
                .arg("serve")
                .arg(dir.path().join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log);
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("REGISTRY_") {
                    command.env_remove(name);
                }
            }
            super::support::sys::die_with_test(&mut command);
            let child = command.spawn().expect("spawn docker-registry");
            let registry = TlsRegistry { child, addr, dir };
            let deadline = Instant::now() + Duration::from_secs(20);
            while TcpStream::connect(addr).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "TLS registry did not listen on {addr}: {}",
                    std::fs::read_to_string(registry.dir.path().join("registry.log"))
                        .unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            registry
        }

        pub fn host(&self) -> String {
            self.addr.to_string()
        }

        pub fn ca_file(&self) -> PathBuf {
            self.dir.path().join("ca.pem")
        }

        /// Pushes `image` (blobs, then the manifest as `latest`).
        pub async fn push(&self, image: &BuiltImage) {
            let ca = std::fs::read(self.ca_file()).expect("read the CA");
            let client = oci_client::Client::try_from(ClientConfig {
                protocol: ClientProtocol::Https,
                extra_root_certificates: vec![Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: ca,
                }],
                ..ClientConfig::default()
            })
            .expect("a TLS client");
            let reference = oci_client::Reference::with_tag(
                self.host(),
                image.repository.clone(),
                "latest".into(),
            );
            let blobs = image
                .layers
                .iter()
                .map(|l| (&l.blob, &l.digest))
                .chain([(&image.config, &image.config_digest)]);
            for (blob, digest) in blobs {
                client
                    .push_blob(&reference, blob.clone(), digest)
                    .await
                    .expect("push a blob over TLS");
            }
            let content_type = OCI_MANIFEST.parse().expect("header value");
            client
                .push_manifest_raw(&reference, image.manifest.clone(), content_type)
                .await
                .expect("push the manifest over TLS");
        }
    }

    impl Drop for TlsRegistry {
        fn drop(&mut self) {
            // Exactly the process this fixture started.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// `ca.pem`, and `server.pem`/`server.key` for IP 127.0.0.1 signed by it.
    fn make_certificates(dir: &Path) {
        let openssl = super::support::require_binary("openssl");
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write extensions");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: [Vec<&str>; 3] = [
            [
                &["req", "-x509"],
                &ec[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=berth test CA",
                ],
            ]
            .concat(),
            [
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
            vec![
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        ];
        for args in steps {
            let output = Command::new(&openssl)
                .args(&args)
                .current_dir(dir)
                .output()
                .expect("run openssl");
            assert!(
                output.status.success(),
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// A tiny HTTP/1.1 server on 127.0.0.1, one request per connection, for
/// registry behaviours a real registry does not show on demand.
mod fake {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::{JoinHandle, JoinSet};

    /// Long enough to outlast any test.
    const FOREVER: Duration = Duration::from_secs(3600);

    /// A request as received.
    pub struct Request {
        pub method: String,
        /// Path with query.
        pub path: String,
        /// Lowercase names.
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Request {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        pub fn path_without_query(&self) -> &str {
            self.path.split('?').next().unwrap_or_default()
        }

        pub fn body_text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    enum Stall {
        No,
        BeforeHeaders,
        AfterBytes(usize),
    }

    /// What to answer.
    pub struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        stall: Stall,
    }

    impl Reply {
        pub fn ok(body: Vec<u8>) -> Reply {
            Reply {
                status: 200,
                headers: Vec::new(),
                body,
                stall: Stall::No,
            }
        }

        pub fn json(status: u16, value: serde_json::Value) -> Reply {
            Reply {
                status,
                ..Reply::ok(serde_json::to_vec(&value).expect("serialise"))
            }
            .header("Content-Type", "application/json")
        }

        /// Accepts the request and never answers.
        pub fn stall_before_headers() -> Reply {
            Reply {
                stall: Stall::BeforeHeaders,
                ..Reply::ok(Vec::new())
            }
        }

        pub fn header(mut self, name: &str, value: &str) -> Reply {
            self.headers.push((name.to_owned(), value.to_owned()));
            self
        }

        /// Sends the headers (with the full Content-Length) and `bytes`
        /// of the body, then nothing more.
        pub fn stall_after(mut self, bytes: usize) -> Reply {
            self.stall = Stall::AfterBytes(bytes);
            self
        }
    }

    type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

    /// The server; dropping it stops it and every connection.
    pub struct FakeServer {
        addr: SocketAddr,
        task: JoinHandle<()>,
    }

    impl FakeServer {
        pub async fn start(
            handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
        ) -> FakeServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local address");
            let handler: Arc<Handler> = Arc::new(handler);
            let task = tokio::spawn(async move {
                // Dropped with the task: aborts every connection.
                let mut connections = JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    connections.spawn(serve(stream, Arc::clone(&handler)));
                    while connections.try_join_next().is_some() {}
                }
            });
            FakeServer { addr, task }
        }

        /// `127.0.0.1:PORT`.
        pub fn host(&self) -> String {
            self.addr.to_string()
        }

        /// `http://127.0.0.1:PORT`.
        pub fn url(&self) -> String {
            format!("http://{}", self.addr)
        }
    }

    impl Drop for FakeServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve(mut stream: TcpStream, handler: Arc<Handler>) {
        let Some(request) = read_request(&mut stream).await else {
            return;
        };
        let reply = handler(&request);
        if let Stall::BeforeHeaders = reply.stall {
            tokio::time::sleep(FOREVER).await;
            return;
        }
        let mut head = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
            reply.status,
            reply.body.len()
        );
        for (name, value) in &reply.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        match reply.stall {
            Stall::AfterBytes(n) => {
                let _ = stream
                    .write_all(&reply.body[..n.min(reply.body.len())])
                    .await;
                let _ = stream.flush().await;
                tokio::time::sleep(FOREVER).await;
            }
            _ => {
                let _ = stream.write_all(&reply.body).await;
                let _ = stream.shutdown().await;
            }
        }
    }

    async fn read_request(stream: &mut TcpStream) -> Option<Request> {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let method = first.next()?.to_owned();
        let path = first.next()?.to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = buffer[head_end + 4..].to_vec();
        while body.len() < length {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Some(Request {
            method,
            path,
            headers,
            body,
        })
    }
}
