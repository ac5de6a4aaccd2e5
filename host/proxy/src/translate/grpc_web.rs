//! gRPC-Web, the gRPC browsers can send (grpc/grpc's PROTOCOL-WEB), to
//! gRPC and back: the request's content type made gRPC's (its body
//! base64-decoded in the `-text` forms), and the response's trailers sent
//! as the body's last frame (flag 0x80), since neither fetch nor HTTP/1.1
//! hands trailers to a page.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, header};
use http_body::{Body, Frame, SizeHint};

use super::Refusal;
use super::frames::{TRAILERS, frame};
use crate::body::{BoxError, ProxyBody};
use crate::upstream::Payload;

/// How the client spoke gRPC-Web, so its response is sent the same way.
pub(crate) struct Flavor {
    /// The base64 form.
    text: bool,
    /// The client's content type, which its response gets.
    content_type: HeaderValue,
}

/// Make a gRPC-Web `request` a gRPC one, or leave any other (gRPC itself,
/// a CORS preflight) as it is.
pub(crate) fn request(request: &mut Request<Payload>) -> Result<Option<Flavor>, Refusal> {
    let Some(content_type) = request.headers().get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let content_type = content_type.to_str().unwrap_or_default();
    let (text, rest) = if let Some(rest) = content_type.strip_prefix("application/grpc-web-text") {
        (true, rest)
    } else if let Some(rest) = content_type.strip_prefix("application/grpc-web") {
        (false, rest)
    } else {
        return Ok(None);
    };
    let grpc = HeaderValue::try_from(format!("application/grpc{rest}"))
        .expect("made of a header value's characters");
    let headers = request.headers_mut();
    let content_type = headers
        .insert(header::CONTENT_TYPE, grpc)
        .expect("it was there");
    headers.remove("x-grpc-web");
    if text {
        headers.remove(header::CONTENT_LENGTH);
        let body = request.body_mut();
        *body = match std::mem::replace(body, Payload::Bytes(Bytes::new())) {
            Payload::Bytes(bytes) => {
                let decoded = decode_quanta(&bytes).map_err(|e| {
                    Refusal::bad_request("grpc_web_malformed", format!("grpc-web-text body: {e}"))
                })?;
                Payload::Bytes(decoded.into())
            }
            Payload::Stream(stream) => Payload::Stream(ProxyBody::new(Decoded {
                inner: stream,
                pending: BytesMut::new(),
            })),
        };
    }
    Ok(Some(Flavor { text, content_type }))
}

/// The gRPC response in the client's gRPC-Web form; anything else (the
/// upstream answered without gRPC) as it is.
pub(crate) fn response(
    flavor: Flavor,
    head: &mut http::response::Parts,
    body: ProxyBody,
) -> ProxyBody {
    let grpc = (head.headers.get(header::CONTENT_TYPE))
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return body;
    }
    head.headers
        .insert(header::CONTENT_TYPE, flavor.content_type);
    head.headers.remove(header::CONTENT_LENGTH);
    ProxyBody::new(Framed {
        inner: body,
        carry: flavor.text.then(BytesMut::new),
        done: false,
    })
}

/// Base64 of whole four-character groups, each padded run decoded on its
/// own: a client may encode each message separately and send them together.
fn decode_quanta(text: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    if !text.len().is_multiple_of(4) {
        return Err(base64::DecodeError::InvalidLength(text.len()));
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut start = 0;
    for end in (4..=text.len()).step_by(4) {
        if text[end - 1] == b'=' || end == text.len() {
            STANDARD.decode_vec(&text[start..end], &mut out)?;
            start = end;
        }
    }
    Ok(out)
}

/// A `-text` request body, decoded as whole groups arrive.
struct Decoded {
    inner: ProxyBody,
    pending: BytesMut,
}

impl Body for Decoded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.pending.extend_from_slice(&data);
                        let whole = this.pending.len() / 4 * 4;
                        if whole == 0 {
                            continue;
                        }
                        let text = this.pending.split_to(whole);
                        let decoded = decode_quanta(&text).map_err(|e| Box::new(e) as BoxError);
                        return Poll::Ready(Some(decoded.map(|d| Frame::data(d.into()))));
                    }
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None if this.pending.is_empty() => return Poll::Ready(None),
                None => {
                    let length = this.pending.len();
                    this.pending.clear();
                    let error = base64::DecodeError::InvalidLength(length);
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
            }
        }
    }
}

/// A gRPC response body with its trailers as a last frame, base64-encoded
/// for `-text` clients (whole three-byte groups at a time, `carry` holding
/// the rest).
struct Framed {
    inner: ProxyBody,
    carry: Option<BytesMut>,
    done: bool,
}

impl Framed {
    fn encode(&mut self, bytes: Bytes, last: bool) -> Bytes {
        let Some(carry) = &mut self.carry else {
            return bytes;
        };
        carry.extend_from_slice(&bytes);
        let whole = match last {
            true => carry.len(),
            false => carry.len() / 3 * 3,
        };
        STANDARD.encode(carry.split_to(whole)).into()
    }
}

impl Body for Framed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        while !this.done {
            let (bytes, last) = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => (data, false),
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => (frame_trailers(&trailers), true),
                        Err(_) => continue,
                    },
                },
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => (Bytes::new(), true),
            };
            this.done = last;
            let out = this.encode(bytes, last);
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Trailers as gRPC-Web's last frame: HTTP/1 header lines.
fn frame_trailers(trailers: &HeaderMap) -> Bytes {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    frame(TRAILERS, &block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separately_padded_messages_decode_together() {
        let mut text = STANDARD.encode(b"a").into_bytes();
        text.extend_from_slice(STANDARD.encode(b"bcde").as_bytes());
        assert_eq!(decode_quanta(&text).unwrap(), b"abcde");
        assert!(decode_quanta(b"abc").is_err());
        assert!(decode_quanta(b"a=bc").is_err());
    }

    #[test]
    fn trailers_frame_as_header_lines() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("ok"));
        let framed = frame_trailers(&trailers);
        assert_eq!(framed[0], TRAILERS);
        assert_eq!(&framed[5..], b"grpc-status: 0\r\ngrpc-message: ok\r\n");
    }
}
