//! berthd as a process: its socket, signals, restarts and configuration
//! errors, seen from outside.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use berth_cri_proto::v1::VersionRequest;
use nix::sys::signal::Signal;
use support::berthd::Berthd;

async fn answers(berthd: &Berthd) {
    let v = berthd
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .expect("Version");
    assert_eq!(v.into_inner().runtime_name, "berth");
}

#[tokio::test]
async fn socket_is_0660_and_removed_on_sigterm() {
    let mut berthd = Berthd::start().await;
    let meta = std::fs::metadata(berthd.socket()).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    answers(&berthd).await;

    let status = berthd.stop_with(Signal::SIGTERM).await;
    assert!(
        status.success(),
        "SIGTERM must be a clean exit: {status}\n{}",
        berthd.log()
    );
    assert!(
        !berthd.socket().exists(),
        "socket left behind after SIGTERM"
    );
    assert!(berthd.log().contains("shutting down"), "{}", berthd.log());
}

#[tokio::test]
async fn sigint_stops_gracefully() {
    let mut berthd = Berthd::start().await;
    let status = berthd.stop_with(Signal::SIGINT).await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn restart_after_kill9_replaces_the_stale_socket() {
    let mut berthd = Berthd::start().await;
    answers(&berthd).await;
    berthd.kill9().await;
    assert!(
        berthd.socket().exists(),
        "a killed berthd leaves its socket"
    );
    berthd.restart().await;
    answers(&berthd).await;
    assert!(
        berthd.log().contains("replacing stale socket"),
        "{}",
        berthd.log()
    );
}

#[tokio::test]
async fn second_berthd_on_a_live_socket_is_refused() {
    let berthd = Berthd::start().await;
    let out = berthd.command().output().expect("run second berthd");
    assert!(!out.status.success(), "second berthd must fail");
    let log = berthd.log();
    // The store lock or the live socket stops it, whichever comes first;
    // either message says another berthd holds it.
    assert!(log.contains("another berthd"), "{log}");
    answers(&berthd).await;
}

#[tokio::test]
async fn bad_config_fails_naming_the_key() {
    let berthd = Berthd::start().await;
    let bad = berthd.dir().join("bad.toml");
    for (text, needle) in [
        ("[grpc]\nadress = \"/x\"\n", "adress"),
        ("cgroup_driver = \"nope\"\n", "nope"),
        ("default_runtime = \"kata\"\n", "default_runtime"),
    ] {
        std::fs::write(&bad, text).expect("write config");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
            .arg("--config")
            .arg(&bad)
            .output()
            .expect("run berthd");
        assert!(!out.status.success(), "{text:?} must be refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{text:?}: {stderr}");
    }
}

#[test]
fn config_default_prints_the_packaged_file() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["config", "default"])
        .output()
        .expect("berthd config default");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    let packaged = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/config.toml"
    ))
    .expect("packaging/config.toml");
    assert_eq!(
        printed, packaged,
        "packaging/config.toml is stale: regenerate it with `berthd config default`"
    );
}
