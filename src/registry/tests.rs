//! Endpoint selection and configuration checks; no network.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::config::{RegistryHost, RegistryMirror};

fn config(mirrors: &[(&str, &[&str])], hosts: &[(&str, RegistryHost)]) -> RegistryConfig {
    RegistryConfig {
        mirrors: mirrors
            .iter()
            .map(|(registry, endpoints)| {
                let endpoints = endpoints.iter().map(|e| e.to_string()).collect();
                (registry.to_string(), RegistryMirror { endpoints })
            })
            .collect(),
        hosts: hosts
            .iter()
            .map(|(host, settings)| (host.to_string(), settings.clone()))
            .collect::<BTreeMap<_, _>>(),
        ..RegistryConfig::default()
    }
}

fn endpoints(registries: &Registries, reference: &str) -> Vec<(String, String, bool)> {
    let reference = Reference::parse(reference).expect("valid reference");
    registries
        .endpoints(&reference)
        .into_iter()
        .map(|e| (e.url, e.repository, e.mirror))
        .collect()
}

/// `(url, repository, mirror)` of each endpoint.
type Expected = &'static [(&'static str, &'static str, bool)];

fn owned(list: Expected) -> Vec<(String, String, bool)> {
    list.iter()
        .map(|(url, repo, mirror)| (url.to_string(), repo.to_string(), *mirror))
        .collect()
}

#[test]
fn registries_are_reached_directly_without_mirrors() {
    let registries = Registries::new(&RegistryConfig::default()).expect("default config");
    let cases: &[(&str, Expected)] = &[
        (
            "busybox",
            &[("https://registry-1.docker.io", "library/busybox", false)],
        ),
        (
            "registry.k8s.io/pause:3.9",
            &[("https://registry.k8s.io", "pause", false)],
        ),
        ("localhost/x", &[("http://localhost", "x", false)]),
        ("localhost:5000/x", &[("http://localhost:5000", "x", false)]),
        ("127.0.0.1:5000/x", &[("http://127.0.0.1:5000", "x", false)]),
        ("127.1.2.3:5000/x", &[("http://127.1.2.3:5000", "x", false)]),
        ("[::1]:5000/x", &[("http://[::1]:5000", "x", false)]),
        ("10.0.0.1:5000/x", &[("https://10.0.0.1:5000", "x", false)]),
        (
            "localhost.example.com/x",
            &[("https://localhost.example.com", "x", false)],
        ),
        (
            "[fe80::1]:5000/x",
            &[("https://[fe80::1]:5000", "x", false)],
        ),
    ];
    for (reference, expected) in cases {
        assert_eq!(
            endpoints(&registries, reference),
            owned(expected),
            "{reference}"
        );
    }
}

#[test]
fn mirrors_come_first_and_keep_the_repository() {
    let registries = Registries::new(&config(
        &[
            (
                "docker.io",
                &[
                    "https://mirror.example.com",
                    "http://127.0.0.1:5001/v2/hub/",
                ],
            ),
            (
                "registry.k8s.io",
                &["https://k8s-mirror.example.com:8443/v2"],
            ),
        ],
        &[],
    ))
    .expect("valid config");
    assert_eq!(
        endpoints(&registries, "busybox"),
        owned(&[
            ("https://mirror.example.com", "library/busybox", true),
            ("http://127.0.0.1:5001", "hub/library/busybox", true),
            ("https://registry-1.docker.io", "library/busybox", false),
        ])
    );
    assert_eq!(
        endpoints(&registries, "registry.k8s.io/pause:3.9"),
        owned(&[
            ("https://k8s-mirror.example.com:8443", "pause", true),
            ("https://registry.k8s.io", "pause", false),
        ])
    );
    // Mirrors are per registry.
    assert_eq!(
        endpoints(&registries, "quay.io/x/y"),
        owned(&[("https://quay.io", "x/y", false)])
    );
}

#[test]
fn plain_http_follows_host_settings() {
    let plain = |on: bool| RegistryHost {
        plain_http: Some(on),
        ..RegistryHost::default()
    };
    let registries = Registries::new(&config(
        &[],
        &[
            ("insecure.example.com", plain(true)),
            ("localhost:5000", plain(false)),
            ("myhost", plain(true)),
        ],
    ))
    .expect("valid config");
    let cases = [
        ("insecure.example.com/x", "http://insecure.example.com"),
        ("localhost:5000/x", "https://localhost:5000"),
        ("localhost:5001/x", "http://localhost:5001"),
        // `host` settings apply to every port of it.
        ("myhost:8080/x", "http://myhost:8080"),
    ];
    for (reference, url) in cases {
        assert_eq!(endpoints(&registries, reference)[0].0, url, "{reference}");
    }
}

#[test]
fn bad_mirror_urls_are_refused_naming_the_key() {
    let cases = [
        (
            "ftp://mirror.example.com",
            "the scheme must be http or https",
        ),
        (
            "https://user:pw@mirror.example.com",
            "credentials do not go in the URL",
        ),
        (
            "https://mirror.example.com/other",
            "the path must be empty, /v2 or /v2/<prefix>",
        ),
        (
            "https://mirror.example.com/v2//x",
            "the path must be empty, /v2 or /v2/<prefix>",
        ),
        ("https://mirror.example.com?x=1", "a query or fragment"),
        ("not a url", "relative URL without a base"),
    ];
    for (url, reason) in cases {
        let err = Registries::new(&config(&[("docker.io", &[url])], &[])).expect_err(url);
        let message = err.to_string();
        assert!(
            message.starts_with("registry config `registry.mirrors.\"docker.io\".endpoints`"),
            "{message}"
        );
        assert!(message.contains(reason), "{url}: {message}");
    }
}

#[test]
fn ca_files_are_read_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").expect("write");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let truncated = dir.path().join("truncated.pem");
    std::fs::write(&truncated, "-----BEGIN CERTIFICATE-----\nAAAA\n").expect("write");
    for (path, reason) in [
        (&missing, "No such file"),
        (&empty, "no PEM certificate"),
        (&truncated, "without -----END CERTIFICATE-----"),
        (&garbage, "invalid peer certificate: BadEncoding"),
    ] {
        let host = RegistryHost {
            ca_file: Some(path.clone()),
            ..RegistryHost::default()
        };
        let err = Registries::new(&config(&[], &[("registry.example.com", host)]))
            .expect_err("bad CA file");
        let message = err.to_string();
        assert!(
            message
                .starts_with("registry config `registry.hosts.\"registry.example.com\".ca_file`"),
            "{message}"
        );
        assert!(message.contains(reason), "{message}");
    }
}

/// A self-signed CA certificate (EC P-256, valid until 2126).
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBhzCCAS2gAwIBAgIURAnqTu0qOVSLWH/uNN7cGSFRUS8wCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNYmVydGgtdGVzdC1jYTAgFw0yNjExMjcwNDE0MDhaGA8yMTI2
MTEwMzA0MTQwOFowGDEWMBQGA1UEAwwNYmVydGgtdGVzdC1jYTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABCRK0inAPMOAEqEypPO79GzBaxSeStD8zqCRHEmRAL88
gLr5HruXHLhL0fX93hIwzPYDKPrPvTDPb+DW95RV23qjUzBRMB0GA1UdDgQWBBRO
QKtiMz2G7WcOmO0MwSqSXlX2QzAfBgNVHSMEGDAWgBROQKtiMz2G7WcOmO0MwSqS
XlX2QzAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIF4cZgrPInJH
fnAQX1kkRoGh3xm9radllg9Na9p5wtpvAiEAzcZI29MxXP4+IFdcpcewscCU7gxo
o8jil9hcJuc2UtA=
-----END CERTIFICATE-----
";

#[test]
fn ca_bundles_are_split_into_certificates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, format!("# comment\n{TEST_CA}\n{TEST_CA}")).expect("write");
    let host = RegistryHost {
        ca_file: Some(bundle),
        ..RegistryHost::default()
    };
    let registries = Registries::new(&config(&[], &[("registry.example.com:5000", host)]))
        .expect("a valid CA bundle");
    let settings = registries
        .settings("registry.example.com:5000")
        .expect("settings");
    assert_eq!(settings.ca_pems.len(), 2);
    assert!(settings.ca_pems.iter().all(|pem| pem == TEST_CA.as_bytes()));
    let reference = Reference::parse("registry.example.com:5000/x").expect("valid");
    let endpoint = registries.registry_endpoint(&reference);
    registries
        .oci_client(&endpoint)
        .expect("a client trusting the CA");
}

#[test]
fn loopback_hosts_are_recognised() {
    for host in [
        "localhost",
        "localhost:5000",
        "127.0.0.1",
        "127.255.0.1:80",
        "[::1]",
        "[::1]:5000",
    ] {
        assert!(is_loopback(host), "{host}");
    }
    for host in [
        "localhost.localdomain",
        "128.0.0.1",
        "[::2]:5000",
        "10.0.0.1",
        "registry-1.docker.io",
        "[::1",
    ] {
        assert!(!is_loopback(host), "{host}");
    }
}

#[test]
fn settings_and_timeouts_are_kept() {
    let config = RegistryConfig {
        progress_timeout: Duration::from_secs(7),
        ..RegistryConfig::default()
    };
    let registries = Registries::new(&config).expect("valid");
    assert_eq!(registries.progress_timeout(), Duration::from_secs(7));
    assert_eq!(registries.connect_timeout(), Duration::from_secs(7));
    assert_eq!(registries.platform(), &Platform::host());
    let arm = Platform::new("linux", "arm", Some("v7"));
    assert_eq!(registries.with_platform(arm.clone()).platform(), &arm);
}
