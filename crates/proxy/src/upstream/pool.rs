//! Keep-alive connections to one upstream server. A connection is checked
//! out for one exchange and goes back when the response body has been read to
//! its end; one dropped half-read is closed instead, since HTTP/1.1 cannot
//! reuse it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{BoxError, ProxyBody};

/// Idle connections kept per server; more are opened under load and closed after.
const MAX_IDLE: usize = 256;

/// One server's connections.
pub(super) struct Pool {
    pub(super) target: Authority,
    connect_timeout: Duration,
    /// An idle connection is closed after this long: servers drop idle
    /// keep-alive connections after a while (nginx: 75 s), and connections
    /// opened for a burst should not hold their buffers forever.
    idle_timeout: Duration,
    /// Most recently used last: reusing warm connections lets cold ones expire.
    idle: Mutex<Vec<(SendRequest<ProxyBody>, Instant)>>,
}

/// A connection checked out of its pool.
pub(super) struct Conn {
    sender: SendRequest<ProxyBody>,
    pool: Arc<Pool>,
    /// Whether it came from the pool (and so may have been closed by the server meanwhile).
    pub(super) reused: bool,
}

impl Pool {
    /// A pool for `target`, which closes connections idle for `idle_timeout`
    /// (looked at by a task of its own for as long as the pool lives).
    pub(super) fn new(
        target: Authority,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            target,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Close the connections idle for longer than the idle timeout.
    fn close_stale(&self) {
        let mut idle = self.idle.lock().expect("pool lock");
        // Oldest first: the stale ones are a prefix.
        let stale = idle
            .iter()
            .take_while(|(_, since)| since.elapsed() > self.idle_timeout)
            .count();
        idle.drain(..stale);
    }

    /// A ready connection: the most recent idle one that is still open, or a new one.
    pub(super) async fn checkout(self: &Arc<Self>) -> Result<Conn, BoxError> {
        loop {
            let idle = self.idle.lock().expect("pool lock").pop();
            let Some((mut sender, since)) = idle else {
                break;
            };
            if sender.is_closed() || since.elapsed() > self.idle_timeout {
                continue;
            }
            // The previous exchange may still be winding down on the connection's task.
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Ok(Conn {
                    sender,
                    pool: self.clone(),
                    reused: true,
                });
            }
        }
        self.connect().await
    }

    /// A new connection, its I/O driven by a task of its own.
    pub(super) async fn connect(self: &Arc<Self>) -> Result<Conn, BoxError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.target.as_str()),
        )
        .await
        .map_err(|_| format!("connect timed out after {:?}", self.connect_timeout))??;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("upstream connection ended: {error}");
            }
        });
        Ok(Conn {
            sender,
            pool: self.clone(),
            reused: false,
        })
    }

    fn put(&self, sender: SendRequest<ProxyBody>) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }
}

/// Close `pool`'s stale connections a few times per idle timeout, until it is dropped.
async fn sweep(pool: std::sync::Weak<Pool>) {
    loop {
        let Some(every) = pool
            .upgrade()
            .map(|p| (p.idle_timeout / 4).max(Duration::from_millis(100)))
        else {
            return;
        };
        tokio::time::sleep(every).await;
        match pool.upgrade() {
            Some(pool) => pool.close_stale(),
            None => return,
        }
    }
}

impl Conn {
    /// Send `request`; on failure the request comes back if it never left,
    /// so it can be tried again on another connection.
    pub(super) async fn send(
        mut self,
        request: http::Request<ProxyBody>,
    ) -> Result<http::Response<UpstreamBody>, (BoxError, Option<http::Request<ProxyBody>>)> {
        match self.sender.try_send_request(request).await {
            Ok(response) => Ok(response.map(|incoming| UpstreamBody {
                incoming,
                conn: Some(self),
            })),
            Err(mut error) => {
                let unsent = error.take_message();
                Err((error.into_error().into(), unsent))
            }
        }
    }
}

/// An upstream response body. Once read to its end, its connection returns to the pool.
pub struct UpstreamBody {
    incoming: Incoming,
    conn: Option<Conn>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(Conn { sender, pool, .. }) = self.conn.take() {
            pool.put(sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.incoming).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Read to the end (the usual case: the client took the whole body): reuse.
        if self.incoming.is_end_stream() {
            self.release();
        }
    }
}
