//! Connections to one target. HTTP/1.1 connections are checked out for one
//! exchange and go back when the response body has been read to its end
//! (one dropped half-read is closed instead, since HTTP/1.1 cannot reuse
//! it); an HTTP/2 connection is shared by every exchange at once. To an
//! upstream that takes the PROXY protocol, a connection begun with one
//! client connection's header carries only that client connection's
//! requests (HAProxy's servers with `send-proxy` do the same).

use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};

use super::connect::{Connector, Sender};
use super::inline::Io;
use super::proxy_header::Who;
use crate::body::{BoxError, ProxyBody};

/// Idle connections kept per target; more are opened under load and closed after.
const MAX_IDLE: usize = 256;

/// One target's connections.
pub(super) struct Pool {
    addr: SocketAddr,
    /// The target's host name, for TLS.
    host: String,
    connector: Arc<Connector>,
    /// An idle connection is closed after this long: servers drop idle
    /// keep-alive connections after a while (nginx: 75 s), and connections
    /// opened for a burst should not hold their buffers forever.
    idle_timeout: Duration,
    /// Most recently used last: reusing warm connections lets cold ones
    /// expire. Each with the client connection its PROXY header named.
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connection, once there is one.
    shared: Mutex<Option<http2::SendRequest<ProxyBody>>>,
}

/// An idle HTTP/1.1 connection, since when, and whose it is (boxed: most
/// upstreams take no PROXY header, and their connections stay small).
type Idle = (http1::SendRequest<ProxyBody>, Io, Instant, Option<Box<Who>>);

/// A connection checked out of its pool.
pub(super) struct Conn {
    sender: Sender,
    pool: Arc<Pool>,
    /// The client connection its PROXY header named, if it sent one.
    who: Option<Box<Who>>,
    /// Whether it came from the pool (and so may have been closed by the server meanwhile).
    pub(super) reused: bool,
    /// Whether it goes back to the pool after the exchange.
    pooled: bool,
}

impl Pool {
    /// A pool for the target at `addr` (named `host`), which closes
    /// connections idle for `idle_timeout` (looked at by a task of its own
    /// for as long as the pool lives).
    pub(super) fn new(
        addr: SocketAddr,
        host: &str,
        connector: Arc<Connector>,
        idle_timeout: Duration,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            addr,
            host: host.to_owned(),
            connector,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            shared: Mutex::new(None),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Connections open and waiting for a request: idle HTTP/1.1 ones, and
    /// the shared HTTP/2 one.
    pub(super) fn idle(&self) -> usize {
        let shared = self.shared.lock().expect("pool lock");
        let h2 = shared.as_ref().is_some_and(|s| !s.is_closed());
        self.idle.lock().expect("pool lock").len() + usize::from(h2)
    }

    /// Close the connections idle for longer than the idle timeout.
    fn close_stale(&self) {
        let mut idle = self.idle.lock().expect("pool lock");
        // Oldest first: the stale ones are a prefix.
        let stale = idle
            .iter()
            .take_while(|(_, _, since, _)| since.elapsed() > self.idle_timeout)
            .count();
        idle.drain(..stale);
    }

    /// A ready connection for `who`'s requests: the shared HTTP/2 one, the
    /// most recent idle one that is still open, or a new one.
    pub(super) async fn checkout(self: &Arc<Self>, who: Option<Who>) -> Result<Conn, BoxError> {
        let shared = self.shared.lock().expect("pool lock").clone();
        if let Some(sender) = shared.filter(|s| !s.is_closed()) {
            return Ok(self.conn(Sender::H2(sender), true, None));
        }
        loop {
            let idle = {
                let mut idle = self.idle.lock().expect("pool lock");
                let mine = |(.., whose): &Idle| whose.as_deref() == who.as_ref();
                match idle.last() {
                    // Without PROXY headers every one is `None`: the last is ours.
                    Some(last) if mine(last) => idle.pop(),
                    _ => idle.iter().rposition(mine).map(|i| idle.remove(i)),
                }
            };
            let Some((mut sender, mut io, since, whose)) = idle else {
                break;
            };
            io.catch_up().await;
            if !io.is_open() || sender.is_closed() || since.elapsed() > self.idle_timeout {
                continue;
            }
            // The connection may still have the previous exchange to wind
            // down, or find that the server closed it meanwhile.
            if sender.is_ready() || io.driving(pin!(sender.ready())).await.is_ok() {
                return Ok(self.conn(Sender::H1(sender, io), true, whose));
            }
        }
        // Boxed: a new connection's state stays out of every checkout.
        Box::pin(self.connect(who)).await
    }

    /// A new connection for `who`'s requests (HTTP/2 ones are shared from
    /// now on, unless a PROXY header made it `who`'s alone).
    pub(super) async fn connect(self: &Arc<Self>, who: Option<Who>) -> Result<Conn, BoxError> {
        let sender = (self.connector)
            .connect(self.addr, &self.host, false, who)
            .await?;
        if let Sender::H2(h2) = &sender {
            match who {
                None => *self.shared.lock().expect("pool lock") = Some(h2.clone()),
                Some(_) => {
                    return Ok(Conn {
                        pooled: false,
                        ..self.conn(sender, false, who.map(Box::new))
                    });
                }
            }
        }
        Ok(self.conn(sender, false, who.map(Box::new)))
    }

    /// A new HTTP/1.1 connection of its own, for a request that may switch protocols.
    pub(super) async fn connect_upgradable(
        self: &Arc<Self>,
        who: Option<Who>,
    ) -> Result<Conn, BoxError> {
        let sender = (self.connector)
            .connect(self.addr, &self.host, true, who)
            .await?;
        Ok(Conn {
            pooled: false,
            ..self.conn(sender, false, who.map(Box::new))
        })
    }

    fn conn(self: &Arc<Self>, sender: Sender, reused: bool, who: Option<Box<Who>>) -> Conn {
        Conn {
            sender,
            pool: self.clone(),
            who,
            reused,
            pooled: true,
        }
    }

    fn put(&self, sender: http1::SendRequest<ProxyBody>, io: Io, who: Option<Box<Who>>) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push((sender, io, Instant::now(), who));
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

/// The outcome of a send that failed: why, and the request if it never left.
pub(super) type SendError = (BoxError, Option<Box<Request<ProxyBody>>>);

impl Conn {
    /// Send `request`; on failure the request comes back if it never left,
    /// so it can be tried again on another connection.
    pub(super) async fn send(
        mut self,
        request: Box<Request<ProxyBody>>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let secure = self.pool.connector.secure();
        match self.sender.send(request, secure, &self.pool.host).await {
            Ok(response) => Ok(response.map(|incoming| UpstreamBody {
                incoming,
                conn: Some(self),
            })),
            Err(mut error) => {
                let unsent = error.take_message().map(Box::new);
                Err((error.into_error().into(), unsent))
            }
        }
    }
}

/// An upstream response body. Once read to its end, an HTTP/1.1 connection
/// returns to the pool.
pub struct UpstreamBody {
    incoming: Incoming,
    conn: Option<Conn>,
}

impl UpstreamBody {
    fn release(&mut self) {
        // A connection whose I/O ended is not worth keeping.
        let Some(Conn {
            sender: Sender::H1(sender, mut io),
            pool,
            who,
            pooled: true,
            ..
        }) = self.conn.take()
        else {
            return;
        };
        if !io.is_open() {
            return;
        }
        // Only once the request went out whole: a server that answered
        // early (a 401 or 413 before reading an upload) leaves the rest of
        // the body unsent, and the next request would wait behind it.
        // Reading the response's end usually leaves a finished exchange
        // ready; if not, one poll lets it wind down (the wake-up it would
        // register is not wanted: the next checkout polls again).
        if !sender.is_ready() {
            io.poll_unwatched();
        }
        if io.is_open() && sender.is_ready() {
            pool.put(sender, io, who);
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
        let UpstreamBody { incoming, conn } = &mut *self;
        let mut incoming = Pin::new(incoming);
        let polled = match conn {
            Some(Conn {
                sender: Sender::H1(_, io),
                ..
            }) => io.drive(cx, |cx| incoming.as_mut().poll_frame(cx)),
            _ => incoming.poll_frame(cx),
        };
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
