//! Protocol switches (WebSocket and other `Upgrade`s over HTTP/1.1): the
//! request keeps its `Upgrade` past the edge's hop-by-hop stripping, goes
//! to the target on a connection of its own, and once both sides have
//! switched, bytes are copied each way until either closes or both are
//! quiet for the listener's idle timeout.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// A client's request to switch protocols.
pub struct Upgrade {
    /// The protocol asked for (`websocket`).
    protocol: HeaderValue,
    /// The client's side, once hyper has sent our `101`.
    client: OnUpgrade,
}

/// The switch `head` asks for, if it is an HTTP/1.1 request naming
/// `upgrade` in `Connection` and a protocol in `Upgrade`. Call before the
/// edge strips hop-by-hop headers.
pub fn requested(head: &mut http::request::Parts) -> Option<Upgrade> {
    if head.version != Version::HTTP_11 {
        return None;
    }
    // `Upgrade` first: most requests have none, and then one lookup settles it.
    let protocol = head.headers.get(header::UPGRADE)?.clone();
    let asks = head
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let client = head.extensions.remove::<OnUpgrade>()?;
    asks.then_some(Upgrade { protocol, client })
}

impl Upgrade {
    /// Put the switch back on a message whose hop-by-hop headers went.
    pub fn restore(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.protocol.clone());
    }

    /// The target agreed (`101` in `response`): join the two sides once
    /// both have switched, on a task of its own.
    pub fn join<B>(self, response: &mut Response<B>, idle: Duration) {
        let target = hyper::upgrade::on(response);
        tokio::spawn(async move {
            let (client, target) = match tokio::join!(self.client, target) {
                (Ok(client), Ok(target)) => (client, target),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!("protocol switch abandoned: {e}");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut target = TokioIo::new(target);
            if let Err(e) = copy_until_idle(&mut client, &mut target, idle).await {
                tracing::debug!("upgraded connection ended: {e}");
            }
            let _ = client.shutdown().await;
            let _ = target.shutdown().await;
        });
    }
}

/// Copy both ways until either side closes, or neither sends for `idle`.
async fn copy_until_idle<A, B>(a: &mut A, b: &mut B, idle: Duration) -> std::io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut from_a = vec![0u8; 16 << 10];
    let mut from_b = vec![0u8; 16 << 10];
    loop {
        let step = async {
            tokio::select! {
                n = a.read(&mut from_a) => {
                    let n = n?;
                    if n == 0 { return Ok(false); }
                    b.write_all(&from_a[..n]).await?;
                    Ok::<_, std::io::Error>(true)
                }
                n = b.read(&mut from_b) => {
                    let n = n?;
                    if n == 0 { return Ok(false); }
                    a.write_all(&from_b[..n]).await?;
                    Ok(true)
                }
            }
        };
        match tokio::time::timeout(idle, step).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
    }
}
