use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("test.toml"))
}

fn err(text: &str) -> String {
    parse(text)
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(parse("").expect("empty file"), Config::default());
}

#[test]
fn default_file_round_trips_and_is_complete() {
    let text = Config::default_toml();
    assert_eq!(
        parse(&text).expect("default file parses"),
        Config::default()
    );
    for key in [
        "root =",
        "state =",
        "log_level =",
        "cgroup_driver =",
        "default_runtime =",
        "[grpc]",
        "max_recv_message_size =",
        "[streaming]",
        "url_lifetime =",
        "[metrics]",
        "[cni]",
        "bin_dirs =",
        "[registry]",
        "progress_timeout =",
        "[runtimes.runc]",
        "[runtimes.crun]",
    ] {
        assert!(text.contains(key), "default file lacks {key}:\n{text}");
    }
}

#[test]
fn file_overrides_defaults() {
    let config = parse(
        r#"
        root = "/srv/berth"
        cgroup_driver = "systemd"
        [grpc]
        address = "/tmp/b.sock"
        [registry]
        progress_timeout = "30s"
        [registry.mirrors."registry.k8s.io"]
        endpoints = ["http://localhost:5000"]
        [registry.hosts."localhost:5000"]
        plain_http = true
        "#,
    )
    .expect("valid config");
    assert_eq!(config.root, PathBuf::from("/srv/berth"));
    assert_eq!(
        config.state,
        PathBuf::from("/run/berth"),
        "unset key keeps its default"
    );
    assert_eq!(config.cgroup_driver, CgroupDriver::Systemd);
    assert_eq!(config.grpc.address, PathBuf::from("/tmp/b.sock"));
    assert_eq!(config.grpc.max_recv_message_size, DEFAULT_MAX_MESSAGE_SIZE);
    assert_eq!(config.registry.progress_timeout, Duration::from_secs(30));
    assert_eq!(
        config.registry.mirrors["registry.k8s.io"].endpoints,
        ["http://localhost:5000"]
    );
    assert_eq!(
        config.registry.hosts["localhost:5000"].plain_http,
        Some(true)
    );
}

#[test]
fn unknown_keys_are_named() {
    let msg = err("rooot = \"/x\"");
    assert!(msg.contains("rooot"), "{msg}");
    let msg = err("[grpc]\nadress = \"/x.sock\"");
    assert!(msg.contains("adress"), "{msg}");
    let msg = err("[runtimes.runc]\nshim = \"s\"\nruntime = \"runc\"\nbogus = 1");
    assert!(msg.contains("bogus"), "{msg}");
}

#[test]
fn bad_values_are_named() {
    let cases = [
        ("cgroup_driver = \"cgroupv3\"", "cgroupv3"),
        ("root = \"relative/path\"", "`root`"),
        ("log_level = \"info,=[\"", "`log_level`"),
        ("default_runtime = \"kata\"", "`default_runtime`"),
        (
            "[grpc]\nmax_recv_message_size = 10",
            "`grpc.max_recv_message_size`",
        ),
        (
            "[streaming]\naddress = \"localhost\"",
            "`streaming.address`",
        ),
        ("[streaming]\nurl_lifetime = \"soon\"", "url_lifetime"),
        (
            "[registry]\nmax_concurrent_downloads = 0",
            "`registry.max_concurrent_downloads`",
        ),
        (
            "[registry.mirrors.\"docker.io\"]\nendpoints = [\"ftp://x\"]",
            "`registry.mirrors.\"docker.io\".endpoints`",
        ),
        (
            "[registry.hosts.\"https://x\"]\nplain_http = true",
            "`registry.hosts.\"https://x\"`",
        ),
        (
            "[runtimes.Bad_Name]\nshim = \"s\"\nruntime = \"r\"\n",
            "`runtimes.\"Bad_Name\"`",
        ),
        ("[cni]\nbin_dirs = []", "`cni.bin_dirs`"),
        (
            "[metrics]\naddress = \"localhost:9387\"",
            "`metrics.address`",
        ),
        ("[metrics]\naddress = \"127.0.0.1\"", "`metrics.address`"),
        ("[metrics]\naddress = \"127.0.0.1:0\"", "`metrics.address`"),
        (
            "[metrics]\naddress = \"127.0.0.1:99999\"",
            "`metrics.address`",
        ),
        ("[metrics]\nport = 9387", "port"),
    ];
    for (text, needle) in cases {
        let msg = err(text);
        assert!(msg.contains(needle), "{text:?}: {msg:?} lacks {needle:?}");
    }
}

#[test]
fn runtimes_table_replaces_the_builtin_set() {
    let config = parse(
        "default_runtime = \"kata\"\n[runtimes.kata]\nshim = \"berth-shim\"\nruntime = \"/opt/kata/bin/kata-runtime\"\n",
    )
    .expect("valid");
    assert_eq!(config.runtimes.keys().collect::<Vec<_>>(), ["kata"]);
    assert_eq!(config.runtime_handler("").map(|(n, _)| n), Some("kata"));
    assert!(config.runtime_handler("runc").is_none());
}

#[test]
fn redacted_hides_passwords() {
    let config =
        parse("[registry.hosts.\"r.example\"]\nusername = \"u\"\npassword = \"hunter2\"\n")
            .expect("valid");
    let shown = serde_json::to_string(&config.redacted()).expect("json");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn missing_explicit_file_is_an_error() {
    let msg = Config::load(Some(Path::new("/nonexistent/berth.toml")))
        .expect_err("missing file")
        .to_string();
    assert!(msg.contains("/nonexistent/berth.toml"), "{msg}");
}

#[test]
fn metrics_endpoint_is_off_unless_given_an_address() {
    assert_eq!(Config::default().metrics.address, "");
    let text = Config::default_toml();
    assert!(
        text.contains("[metrics]\n# Prometheus endpoint"),
        "the default file explains the key:\n{text}"
    );
    for address in ["127.0.0.1:9387", "0.0.0.0:9387", "[::1]:9387"] {
        let config = parse(&format!("[metrics]\naddress = \"{address}\"\n")).expect(address);
        assert_eq!(config.metrics.address, address);
    }
    let msg = err("[metrics]\naddress = \"127.0.0.1:0\"");
    assert!(msg.contains("port 0"), "{msg}");
}
