//! A filter's reply (a 401, a 429, a redirect) made into the response the
//! client gets, refusing what HTTP cannot carry.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use sluice_filter::{Filter, FilterFailure, Reply};

/// Turn a filter's reply into a response, refusing invalid parts.
pub(super) fn into_response(
    reply: Reply,
    filter: &Filter,
) -> Result<(http::response::Parts, Bytes), FilterFailure> {
    let fail = |reason: String| filter.plugin().failed("invalid_answer", reason);
    let status = StatusCode::from_u16(reply.status)
        .map_err(|_| fail(format!("replied with invalid status {}", reply.status)))?;
    let (mut head, ()) = http::Response::new(()).into_parts();
    head.status = status;
    for (name, value) in reply.headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| fail(format!("replied with invalid header `{name}`")))?;
        let value = HeaderValue::try_from(value)
            .map_err(|_| fail(format!("replied with an invalid value for `{name}`")))?;
        head.headers.append(name, value);
    }
    head.headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(reply.body.len()),
    );
    Ok((head, Bytes::from(reply.body)))
}
