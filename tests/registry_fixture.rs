//! Checks the test ground itself: images built by `support::image` and
//! pushed to the `support::registry` fixture come back from a real registry
//! byte for byte, with correct digests, and basic auth is enforced.
//!
//! Needs Debian's `docker-registry` and `busybox-static`, not root.

mod support;

use std::io::Read;

use oci_client::Reference;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{IMAGE_LAYER_GZIP_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use support::image::{BUSYBOX, ImageBuilder, Layer, PushedImage, sha256_digest};
use support::registry::Registry;

/// Two layers (busybox base, then an app layer) with a full config.
fn two_layer_image() -> ImageBuilder {
    ImageBuilder::busybox("berth-test/two-layers")
        .layer(
            Layer::new()
                .dir("/app", 0o755)
                .file("/app/hello.sh", "#!/bin/sh\necho hello\n", 0o755)
                .symlink("/app/current", "hello.sh")
                .hardlink("/app/hello-again.sh", "/app/hello.sh")
                .owner("/app/hello.sh", 1000, 1000),
        )
        .user("1000:1000")
        .env("GREETING", "hello")
        .entrypoint(["/bin/sh", "-c"])
        .cmd(["/app/hello.sh"])
        .working_dir("/app")
        .label("org.example.test", "registry-fixture")
        .expose("8080/tcp")
        .stop_signal("SIGINT")
        .tag("v1")
        .tag("latest")
}

fn gunzip(blob: &[u8]) -> Vec<u8> {
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(blob)
        .read_to_end(&mut tar)
        .expect("gunzip a layer");
    tar
}

/// Pulls the image at `reference` (manifest, config, every layer) and checks
/// it against what was pushed, by digest. Returns the uncompressed layers.
async fn pull_and_verify(
    registry: &Registry,
    auth: &RegistryAuth,
    reference: &str,
    pushed: &PushedImage,
) -> Vec<Vec<u8>> {
    let client = registry.client();
    let reference: Reference = reference.parse().expect("parse the reference");

    let (raw, digest) = client
        .pull_manifest_raw(&reference, auth, &[OCI_IMAGE_MEDIA_TYPE])
        .await
        .expect("pull the manifest");
    assert_eq!(
        digest, pushed.manifest_digest,
        "manifest digest of {reference}"
    );
    assert_eq!(sha256_digest(&raw), pushed.manifest_digest);
    let manifest: OciImageManifest = serde_json::from_slice(&raw).expect("parse the manifest");
    assert_eq!(manifest.media_type.as_deref(), Some(OCI_IMAGE_MEDIA_TYPE));

    let mut config = Vec::new();
    client
        .pull_blob(&reference, &manifest.config, &mut config)
        .await
        .expect("pull the config");
    assert_eq!(sha256_digest(&config), manifest.config.digest);
    assert_eq!(manifest.config.digest, pushed.config_digest);
    assert_eq!(config.len() as i64, manifest.config.size);
    let config: serde_json::Value = serde_json::from_slice(&config).expect("parse the config");
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .expect("config has rootfs.diff_ids")
        .iter()
        .map(|d| d.as_str().expect("diff_id is a string"))
        .collect();
    assert_eq!(diff_ids, pushed.diff_ids);
    assert_eq!(manifest.layers.len(), diff_ids.len());

    let mut tars = Vec::new();
    for (layer, diff_id) in manifest.layers.iter().zip(&diff_ids) {
        let mut blob = Vec::new();
        client
            .pull_blob(&reference, layer, &mut blob)
            .await
            .expect("pull a layer");
        assert_eq!(sha256_digest(&blob), layer.digest, "layer blob digest");
        assert_eq!(blob.len() as i64, layer.size);
        assert_eq!(layer.media_type, IMAGE_LAYER_GZIP_MEDIA_TYPE);
        let tar = gunzip(&blob);
        assert_eq!(&sha256_digest(&tar), diff_id, "diff_id of {}", layer.digest);
        tars.push(tar);
    }
    let layer_digests: Vec<&str> = manifest.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layer_digests, pushed.layer_digests);
    tars
}

/// Returns the content of regular file `path` in `tar`, and its mode.
fn file_in_tar(tar: &[u8], path: &str) -> Option<(Vec<u8>, u32)> {
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().expect("read the layer tar") {
        let mut entry = entry.expect("read a tar entry");
        if entry.path().expect("entry path").as_os_str() == path {
            let mode = entry.header().mode().expect("entry mode");
            let mut content = Vec::new();
            entry.read_to_end(&mut content).expect("read a tar entry");
            return Some((content, mode));
        }
    }
    None
}

#[tokio::test]
async fn pushed_image_pulls_back_identical() {
    support::require_binary("docker-registry");
    let registry = Registry::start().expect("start docker-registry");
    let built = two_layer_image().build();
    let pushed = built.push(&registry).await.expect("push the image");

    let host = registry.host();
    assert_eq!(registry.url(), format!("http://{host}"));
    assert_eq!(
        pushed.references,
        [
            format!("{host}/berth-test/two-layers:v1"),
            format!("{host}/berth-test/two-layers:latest"),
        ]
    );
    assert_eq!(pushed.image_id(), pushed.config_digest);
    assert_eq!(pushed.layer_digests.len(), 2);

    let mut all_tars = Vec::new();
    for reference in &pushed.references {
        all_tars
            .push(pull_and_verify(&registry, &RegistryAuth::Anonymous, reference, &pushed).await);
    }
    let by_digest = pull_and_verify(
        &registry,
        &RegistryAuth::Anonymous,
        &pushed.digest_reference(),
        &pushed,
    )
    .await;
    assert_eq!(by_digest, all_tars[0]);

    let tars = &all_tars[0];
    let busybox = std::fs::read(BUSYBOX).expect("read the host's busybox");
    let (content, mode) = file_in_tar(&tars[0], "bin/busybox").expect("bin/busybox in layer 1");
    assert!(
        content == busybox,
        "bin/busybox in layer 1 differs from {BUSYBOX}"
    );
    assert_eq!(mode, 0o755);
    let (passwd, _) = file_in_tar(&tars[0], "etc/passwd").expect("etc/passwd in layer 1");
    assert!(String::from_utf8_lossy(&passwd).starts_with("root:x:0:0:"));
    let (hello, _) = file_in_tar(&tars[1], "app/hello.sh").expect("app/hello.sh in layer 2");
    assert_eq!(hello, b"#!/bin/sh\necho hello\n");
    assert!(file_in_tar(&tars[1], "bin/busybox").is_none());
}

#[tokio::test]
async fn config_carries_the_runtime_settings() {
    let built = two_layer_image().build();
    let config: serde_json::Value = serde_json::from_slice(&built.config).expect("parse config");
    let runtime = &config["config"];
    assert_eq!(runtime["User"], "1000:1000");
    assert_eq!(
        runtime["Env"],
        serde_json::json!([
            format!("PATH={}", support::image::DEFAULT_PATH),
            "GREETING=hello"
        ])
    );
    assert_eq!(runtime["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(runtime["Cmd"], serde_json::json!(["/app/hello.sh"]));
    assert_eq!(runtime["WorkingDir"], "/app");
    assert_eq!(runtime["Labels"]["org.example.test"], "registry-fixture");
    assert_eq!(runtime["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert_eq!(runtime["StopSignal"], "SIGINT");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["rootfs"]["type"], "layers");
}

#[test]
fn builds_are_deterministic() {
    let a = two_layer_image().build();
    let b = two_layer_image().build();
    assert_eq!(a.manifest_digest, b.manifest_digest);
    assert_eq!(a.manifest, b.manifest);
    assert_eq!(a.config, b.config);
    let different = two_layer_image().label("extra", "1").build();
    assert_ne!(a.manifest_digest, different.manifest_digest);
    assert_eq!(a.layers[0].digest, different.layers[0].digest);
}

/// Whether the registry answered 401, which `oci-client` reports in two ways.
fn is_unauthorized(err: &OciDistributionError) -> bool {
    matches!(
        err,
        OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::ServerError { code: 401, .. }
    )
}

#[tokio::test]
async fn basic_auth_registry_refuses_anonymous_pulls() {
    support::require_binary("docker-registry");
    let registry =
        Registry::start_with_basic_auth("berth", "s3cret").expect("start docker-registry");
    let image = ImageBuilder::busybox("berth-test/private").tag("v1");
    let pushed = image.push(&registry).await.expect("push with credentials");

    let anonymous = image
        .build()
        .push_with_auth(&registry, &RegistryAuth::Anonymous)
        .await
        .expect_err("anonymous push was accepted");
    assert!(
        is_unauthorized(&anonymous),
        "unexpected refusal: {anonymous}"
    );

    let reference: Reference = pushed.reference().parse().expect("parse the reference");
    for auth in [
        RegistryAuth::Anonymous,
        RegistryAuth::Basic("berth".into(), "wrong".into()),
    ] {
        let refused = registry
            .client()
            .pull_image_manifest(&reference, &auth)
            .await
            .expect_err("pull without the right credentials was accepted");
        assert!(is_unauthorized(&refused), "unexpected refusal: {refused}");
    }

    pull_and_verify(&registry, &registry.auth(), pushed.reference(), &pushed).await;
}
