//! The body type that flows through the proxy: the client's or upstream's
//! stream, untouched, or bytes a filter produced.

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

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

/// Read a whole body into memory, refusing more than `limit` bytes.
pub async fn collect(mut body: ProxyBody, limit: usize) -> Result<Bytes, BoxError> {
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buffer.len() + data.len() > limit {
                return Err(format!("body larger than {limit} bytes").into());
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}
