//! Issue 2: bodies stream both ways; nothing is buffered whole. Its own test
//! binary, so the process's peak memory belongs to this test alone.

mod support;

use futures_util::StreamExt;
use support::{client, TestGateway, Upstream};

/// 256 MiB each way: far above the memory bound asserted below.
const BYTES: usize = 256 << 20;
/// Peak resident memory allowed for the whole test process.
const PEAK_RSS_LIMIT_KIB: u64 = 160 << 10;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_with_flat_memory() {
    let up = Upstream::start("a").await;
    let toml = format!(
        "[[routes]]\nprefix = \"/\"\nupstream = \"{}\"\nauth = \"public\"\n",
        up.url()
    );
    let gw = TestGateway::start(&toml, &[]).await;

    // Download: count bytes as they arrive.
    let response = client()
        .get(gw.url(&format!("/download/{BYTES}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut received = 0usize;
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len();
    }
    assert_eq!(received, BYTES);

    // Upload: a generated stream the upstream counts.
    let chunk = bytes::Bytes::from(vec![b'y'; 64 * 1024]);
    let body = futures_util::stream::iter(
        (0..BYTES / chunk.len()).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let response = client()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), BYTES.to_string());

    let peak = peak_rss_kib();
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "peak RSS {peak} KiB: a body was buffered"
    );
}
