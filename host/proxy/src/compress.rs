//! Response compression: an encoding both sides prefer, negotiated by
//! `Accept-Encoding` (RFC 9110 §12.5.3), for responses of a compressible
//! type and size that are not encoded already. The codecs are
//! async-compression's.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use async_compression::Level;
use async_compression::brotli::EncoderParams;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::body::ProxyBody;
use crate::config::CompressionConfig;

/// An encoding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Brotli.
    Br,
    /// Zstandard.
    Zstd,
    /// gzip.
    Gzip,
}

impl Encoding {
    fn token(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }
}

/// A route's compression settings.
#[derive(Debug)]
pub struct Compression {
    encodings: Vec<Encoding>,
    min_size: u64,
    types: Vec<String>,
    brotli_streams: usize,
}

/// Brotli streams running now, in the whole process.
static BROTLI_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// Brotli's window: 512 KiB (nginx's brotli module's default), not the
/// library's 4 MiB; with quality 4, about 1 MiB a stream in all.
const BROTLI_WINDOW: i32 = 19;

impl Compression {
    /// From configuration; the error names an unknown encoding.
    pub fn new(config: &CompressionConfig) -> Result<Compression, String> {
        let encodings = config
            .encodings
            .iter()
            .map(|name| match name.as_str() {
                "br" => Ok(Encoding::Br),
                "zstd" => Ok(Encoding::Zstd),
                "gzip" => Ok(Encoding::Gzip),
                other => Err(format!(
                    "compression: unknown encoding `{other}` (br, zstd, gzip)"
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(Compression {
            encodings,
            min_size: config.min_size.as_u64(),
            types: config
                .types
                .iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
            brotli_streams: config.brotli_streams,
        })
    }

    /// The encoding for a client that sent `headers`: the highest `q` among
    /// ours, ties going to our order; none for `q=0` or no header.
    pub fn negotiate(&self, headers: &HeaderMap) -> Option<Encoding> {
        let offered: Vec<(&str, f32)> = headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|item| {
                let mut parts = item.split(';');
                let name = parts.next()?.trim();
                let q = parts
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                (!name.is_empty()).then_some((name, q))
            })
            .collect();
        let q_of = |token: &str| {
            let named = offered.iter().find(|(n, _)| n.eq_ignore_ascii_case(token));
            named
                .or_else(|| offered.iter().find(|(n, _)| *n == "*"))
                .map_or(0.0, |(_, q)| *q)
        };
        // Past the brotli streams allowed, the client's next choice.
        let busy = BROTLI_STREAMS.load(Ordering::Relaxed) >= self.brotli_streams;
        let mut best: Option<(Encoding, f32)> = None;
        for &encoding in &self.encodings {
            if busy && encoding == Encoding::Br {
                continue;
            }
            let q = q_of(encoding.token());
            if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((encoding, q));
            }
        }
        best.map(|(encoding, _)| encoding)
    }

    /// Compress `body` with `encoding` if the response is worth it: a
    /// body-bearing status, not encoded already, `no-transform` not asked,
    /// a listed type, and not known to be under `min_size`. The head is
    /// adjusted to match (encoding, no length, `Vary`, a weak `ETag`).
    pub fn apply(
        &self,
        encoding: Encoding,
        method: &Method,
        status: StatusCode,
        headers: &mut HeaderMap,
        body: ProxyBody,
    ) -> ProxyBody {
        let skip = *method == Method::HEAD
            || !status.is_success()
            || status == StatusCode::NO_CONTENT
            || headers.contains_key(header::CONTENT_ENCODING)
            || headers
                .get(header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|cc| cc.to_ascii_lowercase().contains("no-transform"))
            || !self.compressible(headers)
            || headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|length| length < self.min_size);
        if skip {
            return body;
        }
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.token()),
        );
        let varies = headers
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case("accept-encoding") || v.trim() == "*");
        if !varies {
            headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
        // The encoded bytes differ: a strong validator would lie.
        if let Some(etag) = headers.get(header::ETAG).and_then(|v| v.to_str().ok())
            && !etag.starts_with("W/")
            && let Ok(weak) = HeaderValue::try_from(format!("W/{etag}"))
        {
            headers.insert(header::ETAG, weak);
        }
        encode(encoding, body)
    }

    fn compressible(&self, headers: &HeaderMap) -> bool {
        let Some(media) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
        else {
            return false;
        };
        self.types.iter().any(|t| match t.strip_suffix("/*") {
            Some(family) => media.split('/').next() == Some(family),
            None => *t == media,
        })
    }
}

/// `body`, encoded as it streams.
fn encode(encoding: Encoding, body: ProxyBody) -> ProxyBody {
    let data = TryStreamExt::map_err(body.into_data_stream(), std::io::Error::other);
    let reader = StreamReader::new(data);
    match encoding {
        Encoding::Br => {
            let params = EncoderParams::default()
                .quality(Level::Precise(4))
                .window_size(BROTLI_WINDOW);
            BROTLI_STREAMS.fetch_add(1, Ordering::Relaxed);
            wrap(Counted(BrotliEncoder::with_params(reader, params)))
        }
        Encoding::Zstd => wrap(ZstdEncoder::with_quality(reader, Level::Default)),
        Encoding::Gzip => wrap(GzipEncoder::with_quality(reader, Level::Default)),
    }
}

/// A brotli encoder, counted in [`BROTLI_STREAMS`] until it is dropped.
struct Counted<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R> Drop for Counted<R> {
    fn drop(&mut self) {
        BROTLI_STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

fn wrap<R>(encoder: R) -> ProxyBody
where
    R: tokio::io::AsyncRead + Send + Sync + 'static,
{
    let frames = TryStreamExt::map_ok(ReaderStream::new(encoder), http_body::Frame::data);
    crate::body::stream(StreamBody::new(frames))
}
