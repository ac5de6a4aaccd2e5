//! The body type that flows through the proxy: the client's or upstream's
//! stream, untouched, or bytes a filter produced; and the client's request
//! body held to its route's size limit and its listener's body timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tokio::time::Sleep;

/// Any body the proxy sends on; errors are boxed so streams and buffers mix.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A boxed error from either side of the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body made of bytes already in hand.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A streamed body, passed on as it arrives.
pub fn stream<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// An upstream's response body, given up on when the upstream pauses
/// longer than `limit` mid-body (nginx's `proxy_read_timeout`): the
/// client's response ends there rather than hang open.
pub fn paced<B>(body: B, limit: Duration) -> ProxyBody
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    Paced {
        inner: body,
        pause: Pause::new(limit),
    }
    .boxed()
}

/// Why an upstream's response body was cut short.
#[derive(Debug, thiserror::Error)]
#[error("the upstream paused longer than {0:?} in its response body")]
pub struct UpstreamStalled(Duration);

struct Paced<B> {
    inner: B,
    pause: Pause,
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.pause.moved();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                ready!(this.pause.poll_waited(cx));
                let stalled = UpstreamStalled(this.pause.limit);
                Poll::Ready(Some(Err(stalled.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body made of bytes in hand, ended by `trailers` if there are any.
pub fn whole(bytes: Bytes, trailers: Option<http::HeaderMap>) -> ProxyBody {
    match trailers {
        None => full(bytes),
        Some(trailers) => Full::new(bytes)
            .with_trailers(std::future::ready(Some(Ok(trailers))))
            .map_err(|never| match never {})
            .boxed(),
    }
}

/// Read a whole body into memory, refusing more than `limit` bytes.
pub async fn collect(body: ProxyBody, limit: usize) -> Result<Bytes, BoxError> {
    collect_whole(body, limit).await.map(|(bytes, _)| bytes)
}

/// [`collect`], keeping the body's trailers (gRPC's status travels in them).
pub async fn collect_whole(
    mut body: ProxyBody,
    limit: usize,
) -> Result<(Bytes, Option<http::HeaderMap>), BoxError> {
    let mut buffer = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                if buffer.len() + data.len() > limit {
                    return Err(ClientBodyError::TooLarge.into());
                }
                buffer.extend_from_slice(&data);
            }
            Err(frame) => {
                if let Ok(more) = frame.into_trailers() {
                    trailers
                        .get_or_insert_with(http::HeaderMap::new)
                        .extend(more);
                }
            }
        }
    }
    Ok((buffer.freeze(), trailers))
}

/// Why a client's request body was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientBodyError {
    /// More bytes than the route takes: 413.
    #[error("request body larger than the route allows")]
    TooLarge,
    /// The client paused longer than the listener's body timeout: 408.
    #[error("the client stopped sending its request body")]
    Timeout,
    /// Not HTTP: a bad chunk size, an overlong chunk extension: 400.
    #[error("the client sent a malformed request body")]
    Malformed,
    /// The client hung up before the end of its body (logged as 499, as
    /// nginx does; nobody is left to answer).
    #[error("the client went away before the end of its request body")]
    Aborted,
}

impl ClientBodyError {
    /// The client body error behind `error`, if that is what it is.
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<ClientBodyError> {
        cause::<ClientBodyError>(error).copied()
    }

    /// What a client's body stream failing with `error` says of the
    /// client: a body that is not HTTP, or a hang-up. Either way it is the
    /// client's fault, never the upstream's.
    fn of_stream(error: &(dyn std::error::Error + 'static)) -> ClientBodyError {
        match cause::<std::io::Error>(error).map(std::io::Error::kind) {
            Some(std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput) => {
                ClientBodyError::Malformed
            }
            _ => ClientBodyError::Aborted,
        }
    }
}

/// A pause timer for a stream: armed when the stream has to wait, disarmed
/// when it moves, and due once it has waited `limit` in one go. Nothing is
/// allocated or registered until a wait begins, so a stream that never
/// waits costs nothing.
pub struct Pause {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl Pause {
    /// A timer for pauses of at most `limit`.
    pub fn new(limit: Duration) -> Pause {
        Pause {
            limit,
            timer: None,
            waiting: false,
        }
    }

    /// The stream is waiting: `Ready` once this wait has lasted `limit`.
    pub fn poll_waited(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = || tokio::time::Instant::now() + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline())));
        if !std::mem::replace(&mut self.waiting, true) {
            timer.as_mut().reset(deadline());
        }
        timer.as_mut().poll(cx)
    }

    /// The stream moved: the next wait starts afresh.
    pub fn moved(&mut self) {
        self.waiting = false;
    }
}

/// The first error of type `T` in `error`'s chain of sources.
fn cause<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    std::iter::successors(Some(error), |e| e.source()).find_map(|e| e.downcast_ref::<T>())
}

/// How a client's upload went: when it ended, so the upstream's response
/// timeout can start then rather than when the request was sent, and how
/// many bytes it had (for the access log).
#[derive(Debug, Default)]
pub struct Upload {
    finished: OnceLock<Instant>,
    read: AtomicU64,
}

impl Upload {
    /// When the last byte was read, if it has been.
    pub fn finished_at(&self) -> Option<Instant> {
        self.finished.get().copied()
    }

    /// The body's bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

/// A client's request body, held to `limit` bytes and to at most `gap`
/// between two pieces of it.
pub struct ClientBody<B> {
    inner: B,
    left: u64,
    /// Runs only while waiting on the client, not while the upstream is slow to take the body.
    pause: Pause,
    upload: Arc<Upload>,
}

impl<B: Body<Data = Bytes> + Unpin> ClientBody<B> {
    /// `body`, allowed `limit` bytes and pauses up to `gap`; the [`Upload`]
    /// says when it ended.
    pub fn new(body: B, limit: u64, gap: Duration) -> (ClientBody<B>, Arc<Upload>) {
        let upload = Arc::new(Upload::default());
        let body = ClientBody {
            inner: body,
            left: limit,
            pause: Pause::new(gap),
            upload: upload.clone(),
        };
        (body, upload)
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Poll::Ready(frame) = polled else {
            ready!(this.pause.poll_waited(cx));
            return Poll::Ready(Some(Err(ClientBodyError::Timeout.into())));
        };
        this.pause.moved();
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.left {
                        return Poll::Ready(Some(Err(ClientBodyError::TooLarge.into())));
                    }
                    this.left -= len;
                    this.upload.read.fetch_add(len, Ordering::Relaxed);
                }
                if this.inner.is_end_stream() {
                    let _ = this.upload.finished.set(Instant::now());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                let error: BoxError = error.into();
                let fault = ClientBodyError::of_stream(&*error);
                Poll::Ready(Some(Err(fault.into())))
            }
            None => {
                let _ = this.upload.finished.set(Instant::now());
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
