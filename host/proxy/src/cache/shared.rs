//! The fleet's tier of the response cache, for routes with `shared_cache`:
//! a response any gateway stored is kept in Redis for its TTL (Redis expires
//! it), so a miss here is a hit if another gateway fetched it. A hit is
//! kept locally for the time Redis says it has left, so the next is local.
//! While Redis cannot answer, the route caches locally alone.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use sluice_state::RedisStore;

use super::{CachedResponse, ResponseCache};

/// Marks the encoding, so a change to it is a miss, not garbage.
const FORMAT: &[u8; 4] = b"SLC1";

/// A route's way to the shared tier.
pub struct SharedCache {
    redis: Arc<RedisStore>,
}

impl SharedCache {
    /// The shared tier in `redis`.
    pub fn new(redis: Arc<RedisStore>) -> SharedCache {
        SharedCache { redis }
    }

    /// The response another gateway stored under `key`, if it suits a
    /// request with `request` headers; kept in `local` too.
    pub async fn lookup(
        &self,
        local: &ResponseCache,
        key: &str,
        request: &HeaderMap,
    ) -> Option<Arc<CachedResponse>> {
        let (blob, ttl) = match self.redis.get_blob(key).await {
            Ok(found) => found?,
            Err(_) => {
                self.fell_back();
                return None;
            }
        };
        let entry = decode(blob, ttl)?;
        if !entry.fits(request) {
            return None;
        }
        local.insert(key.to_owned(), entry)
    }

    /// Keep `entry` in Redis under `key` for `ttl`.
    pub async fn store(&self, key: &str, entry: &CachedResponse, ttl: Duration) {
        if self.redis.put_blob(key, encode(entry), ttl).await.is_err() {
            self.fell_back();
        }
    }

    fn fell_back(&self) {
        self.redis.metrics().fell_back("cache", "local");
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// status, when stored (Unix ms), the `Vary` headers and their values (a
/// flag for absent ones), the headers, then the body.
fn encode(entry: &CachedResponse) -> Bytes {
    let mut out = BytesMut::with_capacity(entry.size + 64);
    out.put_slice(FORMAT);
    out.put_u16(entry.status.as_u16());
    out.put_u64(unix_millis().saturating_sub(entry.stored.elapsed().as_millis() as u64));
    out.put_u32(entry.vary.len() as u32);
    for (name, value) in &entry.vary {
        put(&mut out, name.as_str().as_bytes());
        out.put_u8(u8::from(value.is_some()));
        put(&mut out, value.as_ref().map_or(&[][..], |v| v.as_bytes()));
    }
    out.put_u32(entry.headers.len() as u32);
    for (name, value) in &entry.headers {
        put(&mut out, name.as_str().as_bytes());
        put(&mut out, value.as_bytes());
    }
    out.put_slice(&entry.body);
    out.freeze()
}

fn put(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(bytes.len() as u32);
    out.put_slice(bytes);
}

/// The entry in `blob`, fresh for `ttl`; `None` if it is not one.
fn decode(mut blob: Bytes, ttl: Duration) -> Option<CachedResponse> {
    fn take(blob: &mut Bytes) -> Option<Bytes> {
        let len = (blob.remaining() >= 4).then(|| blob.get_u32() as usize)?;
        (blob.remaining() >= len).then(|| blob.split_to(len))
    }
    fn name(blob: &mut Bytes) -> Option<HeaderName> {
        HeaderName::from_bytes(&take(blob)?).ok()
    }
    fn value(blob: &mut Bytes) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(take(blob)?).ok()
    }
    if blob.remaining() < FORMAT.len() + 2 + 8 + 4 || &blob.split_to(4)[..] != FORMAT {
        return None;
    }
    let status = StatusCode::from_u16(blob.get_u16()).ok()?;
    let age = Duration::from_millis(unix_millis().saturating_sub(blob.get_u64()));
    let mut vary = Vec::new();
    for _ in 0..blob.get_u32() {
        let name = name(&mut blob)?;
        let present = (blob.remaining() >= 1).then(|| blob.get_u8() == 1)?;
        let value = value(&mut blob)?;
        vary.push((name, present.then_some(value)));
    }
    let count = (blob.remaining() >= 4).then(|| blob.get_u32())?;
    let mut headers = HeaderMap::new();
    for _ in 0..count {
        let name = name(&mut blob)?;
        headers.append(name, value(&mut blob)?);
    }
    Some(CachedResponse::new(status, headers, blob, vary, age, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_comes_back_as_it_went() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let vary = vec![
            (
                HeaderName::from_static("accept"),
                Some(HeaderValue::from_static("text/html")),
            ),
            (HeaderName::from_static("x-missing"), None),
        ];
        let ttl = Duration::from_secs(60);
        let body = Bytes::from_static(b"body");
        let entry = CachedResponse::new(
            StatusCode::OK,
            headers.clone(),
            body,
            vary.clone(),
            Duration::ZERO,
            ttl,
        );
        let back = decode(encode(&entry), ttl).expect("decodes");
        assert_eq!(back.status, StatusCode::OK);
        assert_eq!(back.headers, headers);
        assert_eq!(back.vary, vary);
        assert_eq!(&back.body[..], b"body");
        assert!(decode(Bytes::from_static(b"SLC1\x00"), ttl).is_none());
        assert!(decode(Bytes::from_static(b"garbage, not an entry"), ttl).is_none());
    }
}
