//! Serving one accepted connection: TLS, then HTTP/1.1 or HTTP/2 through
//! hyper, watched for two timeouts hyper does not keep apart — a client
//! that takes too long to send a request head (`header_timeout`), and a
//! connection with nothing in flight for too long (`idle_timeout`) — and
//! for the drain at shutdown.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::ListenerSettings;
use crate::body::{BoxError, Pause, ProxyBody};
use crate::edge::ConnectionInfo;
use crate::gateway::Gateway;

/// What the connection's watcher reads, kept up to date by its I/O and its requests.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` when the last request ended.
    idle_since: AtomicU64,
    /// One more than the milliseconds after `started` when bytes of a new
    /// request head began to arrive; 0 when none are arriving.
    head_since: AtomicU64,
    /// HTTP/2 frames arrive between requests (pings, settings): no head timer there.
    h2: AtomicBool,
    seen_bytes: AtomicBool,
}

impl Activity {
    fn new(h2: bool) -> Activity {
        Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            h2: AtomicBool::new(h2),
            seen_bytes: AtomicBool::new(false),
        }
    }

    fn millis(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn at(&self, millis: u64) -> Instant {
        self.started + Duration::from_millis(millis)
    }

    /// Bytes came in: on an idle HTTP/1 connection they start a request head.
    fn read(&self, bytes: &[u8]) {
        if !self.seen_bytes.swap(true, Ordering::Relaxed) && bytes.starts_with(b"PRI * HTTP/2") {
            self.h2.store(true, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
            && !self.h2.load(Ordering::Relaxed)
        {
            self.head_since.store(self.millis() + 1, Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    fn request_ended(&self) {
        self.idle_since.store(self.millis(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// When to look again, and what to do if it is now.
    fn check(&self, settings: &ListenerSettings) -> (Instant, Verdict) {
        let now = Instant::now();
        let limits = &settings.limits;
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return (now + limits.idle_timeout, Verdict::Open);
        }
        match self.head_since.load(Ordering::Relaxed) {
            0 => {
                let deadline =
                    self.at(self.idle_since.load(Ordering::Relaxed)) + limits.idle_timeout;
                match deadline <= now {
                    true => (now, Verdict::Idle),
                    // A head may start arriving meanwhile: look again within a header timeout.
                    false => (deadline.min(now + limits.header_timeout), Verdict::Open),
                }
            }
            since => {
                let deadline = self.at(since - 1) + limits.header_timeout;
                match deadline <= now {
                    true => (now, Verdict::SlowHead),
                    false => (deadline, Verdict::Open),
                }
            }
        }
    }
}

enum Verdict {
    Open,
    Idle,
    SlowHead,
}

/// Serve `io` until the client is done, a timeout closes it, or the drain
/// (shutdown) has let its requests finish.
pub(super) async fn serve<I>(
    io: I,
    h2: bool,
    info: ConnectionInfo,
    settings: Arc<ListenerSettings>,
    gateway: Arc<arc_swap::ArcSwap<Gateway>>,
    mut drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(h2));
    let client = info.client_ip;
    let info = Arc::new(info);
    let watched = Watched {
        io,
        activity: activity.clone(),
        unread: Pause::new(settings.limits.send_timeout),
    };
    let requests = activity.clone();
    let service = service_fn(move |request| {
        // Each request runs on the gateway current when it arrived, even if
        // a reload swaps in another while it is in flight.
        let gateway = gateway.load_full();
        let info = info.clone();
        requests.request_started();
        let done = Ended(requests.clone());
        // Boxed: hyper keeps room for one request's future on every
        // connection for as long as it lives, and ours is a few KiB; boxed,
        // an idle connection holds a pointer instead.
        Box::pin(async move {
            let response = gateway.handle(request, &info).await;
            Ok::<_, std::convert::Infallible>(response.map(|body| Tracked { body, _done: done }))
        })
    });
    let connection = settings
        .builder
        .serve_connection_with_upgrades(TokioIo::new(watched), service);
    tokio::pin!(connection);
    let mut draining = *drain.borrow();
    if draining {
        connection.as_mut().graceful_shutdown();
    }
    // The drain and the timer wake the task through `nudge`, and are polled
    // only when it says they did: not at every wake-up of the connection's
    // I/O, several a request.
    let nudge = Arc::new(Nudge::default());
    let side_waker = Waker::from(nudge.clone());
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    // The task's waker as `nudge` holds it: registered again only once a
    // nudge took it, or if the task's waker changed, not at every wake-up.
    let mut holds: Option<Waker> = None;
    loop {
        let (next, verdict) = activity.check(&settings);
        match verdict {
            Verdict::Open => {}
            Verdict::Idle if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
                continue;
            }
            Verdict::Idle => {}
            // Part of a head and no more for too long: nothing to finish.
            Verdict::SlowHead => return,
        }
        timer.as_mut().reset(next);
        // Both are polled once after being set up, to register.
        nudge.asked.store(true, Ordering::Relaxed);
        let woke = {
            let changed = drain.changed();
            tokio::pin!(changed);
            std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                    return Poll::Ready(Woke::Ended(result));
                }
                if !holds.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    nudge.task.register(cx.waker());
                    holds = Some(cx.waker().clone());
                }
                if !nudge.asked.swap(false, Ordering::AcqRel) {
                    return Poll::Pending;
                }
                // The nudge took the waker: the next must find it.
                nudge.task.register(cx.waker());
                let mut side = Context::from_waker(&side_waker);
                if !draining && let Poll::Ready(changed) = changed.as_mut().poll(&mut side) {
                    return Poll::Ready(Woke::Drain(changed.is_ok()));
                }
                timer.as_mut().poll(&mut side).map(|()| Woke::Timer)
            })
            .await
        };
        match woke {
            Woke::Ended(result) => {
                if let Err(error) = result {
                    tracing::debug!(%client, "connection ended: {error}");
                }
                return;
            }
            Woke::Drain(open) => {
                if !open || *drain.borrow() {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            Woke::Timer => {}
        }
    }
}

/// What woke a connection's watcher.
enum Woke<E> {
    Ended(Result<(), E>),
    /// The drain changed (`false`: its sender is gone).
    Drain(bool),
    Timer,
}

/// Wakes a connection's task for its watcher's own futures, noting that
/// they asked.
#[derive(Default)]
struct Nudge {
    asked: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Nudge {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.asked.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Marks a request ended when dropped: with its response body, once hyper
/// has sent it (or given up on it).
struct Ended(Arc<Activity>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that ends its request's activity when it is dropped.
pub struct Tracked {
    body: ProxyBody,
    _done: Ended,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's I/O, reporting reads to its [`Activity`], and given
/// up on when a client leaves what it is sent unread for `send_timeout`.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
    unread: Pause,
}

impl<I> Watched<I> {
    /// A write's outcome, after the client's pace: a write that has waited
    /// `send_timeout` fails.
    fn paced<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Pending => {
                ready!(self.unread.poll_waited(cx));
                let why = "the client left its response unread past send_timeout";
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why)))
            }
            done => {
                self.unread.moved();
                done
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.paced(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.paced(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.paced(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
