//! What a connection begins with, read without taking it off the socket:
//! a PROXY protocol header, a TLS ClientHello.

use std::time::Duration;

use tokio::net::TcpStream;

/// Why nothing whole was peeked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unpeeked {
    /// Not within the time given.
    Timeout,
    /// The client closed first.
    Closed,
    /// `capacity` bytes in and still not whole.
    Full,
}

/// Peek at up to `capacity` of `stream`'s first bytes until `parse` makes
/// something of them (`None`: more is needed), within `within`.
pub(crate) async fn peek_until<T>(
    stream: &TcpStream,
    capacity: usize,
    within: Duration,
    mut parse: impl FnMut(&[u8]) -> Option<T>,
) -> Result<T, Unpeeked> {
    let reading = async {
        let mut buffer = vec![0; capacity];
        let mut seen = 0;
        loop {
            let n = (stream.peek(&mut buffer).await).map_err(|_| Unpeeked::Closed)?;
            if n == 0 {
                return Err(Unpeeked::Closed);
            }
            if let Some(done) = parse(&buffer[..n]) {
                return Ok(done);
            }
            if n == capacity {
                return Err(Unpeeked::Full);
            }
            if n == seen {
                // More is on its way: wait a moment rather than spin on the same bytes.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen = n;
        }
    };
    tokio::time::timeout(within, reading)
        .await
        .map_err(|_| Unpeeked::Timeout)?
}
