//! Bodies stream through without being buffered: 200 MB each way with the
//! process's memory staying bounded. (nextest runs it in a process of its
//! own, so no other test shares the process whose memory is measured.)

use bytes::Bytes;
use futures_util::stream;
use http::Request;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use sluice_tests::{Gateway, Upstream, client, plugin};

const TOTAL: usize = 200 << 20;
const CHUNK: usize = 64 << 10;

/// Peak resident memory of this process so far, in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    line.split_whitespace()
        .nth(1)
        .and_then(|kb| kb.parse::<usize>().ok())
        .expect("a number")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_and_downloads_stream_with_bounded_memory() {
    let up = Upstream::start("a").await;
    // A filter on the route, so the streaming path is the one with plugins.
    let gw = Gateway::start(&format!(
        "[plugins.headers]\npath = \"{}\"\n[upstreams.a]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"a\"\nmax_body = \"1GiB\"\n\
         filters = [{{ plugin = \"headers\", config = {{ response = {{ set = {{ x-streamed = \"yes\" }} }} }} }}]\n",
        plugin("headers"),
        up.addr
    ))
    .await
    .unwrap();
    let http = client();
    let warm = http
        .request(
            Request::get(gw.url("/warm"))
                .body(Empty::new().boxed())
                .unwrap(),
        )
        .await
        .unwrap();
    warm.into_body().collect().await.unwrap();
    let before = peak_rss();

    let chunk = Bytes::from(vec![b'u'; CHUNK]);
    let upload =
        StreamBody::new(stream::iter((0..TOTAL / CHUNK).map(move |_| {
            Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))
        })));
    let response = http
        .request(
            Request::post(gw.url("/upload"))
                .body(upload.boxed())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let counted = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        counted,
        TOTAL.to_string().as_bytes(),
        "the upstream received every byte"
    );

    let response = http
        .request(
            Request::get(gw.url(&format!("/download?bytes={TOTAL}")))
                .body(Empty::new().boxed())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-streamed"], "yes");
    let mut body = response.into_body();
    let mut received = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len();
        }
    }
    assert_eq!(received, TOTAL);

    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "peak memory grew by {} MiB while moving 400 MiB; bodies must stream, not buffer",
        grown >> 20
    );
}
