//! Image pull benchmark: PullImage of a large multi-layer image from a
//! registry on loopback, cold and with shared layers, against any CRI
//! endpoints, so berth and containerd are measured side by side.
//!
//! ```sh
//! cargo bench --bench image_pull -- \
//!     berth=unix:///run/berth/berth.sock \
//!     containerd=unix:///run/harness-containerd/containerd.sock
//! ```
//!
//! It starts Debian's `docker-registry` on a free loopback port, builds two
//! images from busybox plus generated layers (about 212 MB compressed,
//! 375 MB unpacked, one layer of 5000 small files), pushes them, then for
//! each endpoint and each round: removes both images, pulls the first
//! (cold: every layer downloaded and unpacked) and then the second (it
//! shares all but its top layer with the first). `BENCH_ROUNDS` (default
//! 3) rounds; the median and every sample are printed. The endpoints must
//! reach `127.0.0.1:<port>` over plain HTTP (berth and containerd do so
//! for loopback registries by default); `BENCH_REGISTRY=127.0.0.1:5000`
//! pushes to and pulls from a registry already running there instead.

#[path = "../tests/support/mod.rs"]
#[allow(missing_docs)]
mod support;

use std::time::{Duration, Instant};

use berth_cri_proto::v1::image_service_client::ImageServiceClient;
use berth_cri_proto::v1::{ImageSpec, PullImageRequest, RemoveImageRequest};
use support::image::{ImageBuilder, Layer};
use support::registry::Registry;
use tonic::transport::Channel;

/// Deterministic pseudo-random bytes (xorshift64*), fast and incompressible.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text-like bytes that gzip shrinks about fourfold.
fn wordy_bytes(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "container ",
        "runtime ",
        "kubelet ",
        "sandbox ",
        "overlay ",
        "layer ",
        "digest ",
        "registry ",
        "manifest ",
        "snapshot ",
        "namespace ",
        "cgroup ",
        "pod ",
        "image ",
        "config ",
        "shim\n",
    ];
    let noise = random_bytes(seed, len / 4 + 1);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(WORDS[(noise[i % noise.len()] & 15) as usize].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// A layer of `files` files of `size` bytes, half random, half text.
fn data_layer(seed: u64, dir: &str, files: usize, size: usize) -> Layer {
    let mut layer = Layer::new().dir(dir, 0o755);
    for i in 0..files {
        let content = if i % 2 == 0 {
            random_bytes(seed * 1000 + i as u64, size)
        } else {
            wordy_bytes(seed * 1000 + i as u64, size)
        };
        layer = layer.file(&format!("{dir}/f{i:05}"), content, 0o644);
    }
    layer
}

fn images() -> (ImageBuilder, ImageBuilder) {
    let mut shared = vec![Layer::busybox()];
    for n in 1..=4 {
        shared.push(data_layer(n, &format!("/data{n}"), 40, 2 << 20));
    }
    shared.push(data_layer(9, "/small", 5000, 4096));
    let mut big = ImageBuilder::new("bench/big").tag("v1");
    let mut sibling = ImageBuilder::new("bench/sibling").tag("v1");
    for layer in &shared {
        big = big.layer(layer.clone());
        sibling = sibling.layer(layer.clone());
    }
    big = big.layer(data_layer(20, "/top", 8, 2 << 20));
    sibling = sibling.layer(data_layer(21, "/top", 8, 2 << 20));
    (big, sibling)
}

async fn connect(endpoint: &str) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(support::cri::channel(endpoint).await)
        .max_decoding_message_size(16 << 20)
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn remove(client: &mut ImageServiceClient<Channel>, image: &str) {
    let _ = client
        .remove_image(RemoveImageRequest { image: spec(image) })
        .await;
}

async fn timed_pull(client: &mut ImageServiceClient<Channel>, image: &str) -> Duration {
    let start = Instant::now();
    client
        .pull_image(PullImageRequest {
            image: spec(image),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("pull {image}: {e}"));
    start.elapsed()
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let Some(endpoints) = support::cri::endpoints_from_args("image_pull") else {
        return;
    };
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);

    // BENCH_REGISTRY=127.0.0.1:5000 uses a registry that is already running
    // (the conformance kit's, which its containerd instance is bound to).
    let registry = match std::env::var("BENCH_REGISTRY") {
        Ok(addr) => Registry::existing(addr.parse().expect("BENCH_REGISTRY is IP:PORT"))
            .expect("registry handle"),
        Err(_) => Registry::start().expect("start docker-registry"),
    };
    let (big, sibling) = images();
    let t = Instant::now();
    let big = big.build();
    let sibling = sibling.build();
    let compressed: u64 = big.layers.iter().map(|l| l.blob.len() as u64).sum();
    eprintln!(
        "built images in {:.1}s: {} layers, {:.0} MB compressed",
        t.elapsed().as_secs_f64(),
        big.layers.len(),
        compressed as f64 / 1e6
    );
    let big_ref = big.push(&registry).await.expect("push big").references[0].clone();
    let sibling_ref = sibling
        .push(&registry)
        .await
        .expect("push sibling")
        .references[0]
        .clone();

    println!(
        "| runtime | cold pull (ms, median) | shared-layer pull (ms, median) | samples cold / shared |"
    );
    println!("| --- | --- | --- | --- |");
    for (name, endpoint) in &endpoints {
        let mut client = connect(endpoint).await;
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            remove(&mut client, &big_ref).await;
            remove(&mut client, &sibling_ref).await;
            // Let the runtime's garbage collection settle.
            tokio::time::sleep(Duration::from_secs(2)).await;
            cold.push(timed_pull(&mut client, &big_ref).await);
            warm.push(timed_pull(&mut client, &sibling_ref).await);
        }
        remove(&mut client, &big_ref).await;
        remove(&mut client, &sibling_ref).await;
        let all = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
        let (c, w) = (all(&cold), all(&warm));
        println!(
            "| {name} | {} | {} | {c} / {w} |",
            ms(median(&mut cold)),
            ms(median(&mut warm))
        );
    }
}
