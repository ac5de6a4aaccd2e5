//! The response cache that cache-policy filters steer: in memory, bounded in
//! bytes, least recently used out; one upstream fetch per key however many
//! requests miss it at once. Routes with `shared_cache` keep their entries
//! in Redis too ([`shared`]), for the fleet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use lru::LruCache;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::config::CacheConfig;

pub mod shared;

/// A stored response.
#[derive(Debug)]
pub struct CachedResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers as the upstream sent them (hop-by-hop ones removed).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    stored: Instant,
    expires: Instant,
    /// The request headers named by `Vary`, with the values this was stored for.
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    size: usize,
}

impl CachedResponse {
    /// A response `age` old, fresh for `ttl` more.
    fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        vary: Vec<(HeaderName, Option<HeaderValue>)>,
        age: Duration,
        ttl: Duration,
    ) -> CachedResponse {
        let size = body.len()
            + headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len())
                .sum::<usize>();
        let now = Instant::now();
        CachedResponse {
            status,
            headers,
            body,
            stored: now.checked_sub(age).unwrap_or(now),
            expires: now + ttl,
            vary,
            size,
        }
    }

    /// Seconds since it was stored, for the `Age` header.
    pub fn age(&self) -> u64 {
        self.stored.elapsed().as_secs()
    }

    fn fits(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| request.get(name) == value.as_ref())
    }
}

/// What a lookup found.
pub enum Lookup {
    /// A fresh response.
    Hit(Arc<CachedResponse>),
    /// Nothing usable; fetch upstream. With a guard, this request is the one
    /// fetching for the key, and others wait until it is dropped.
    Miss(Option<FillGuard>),
}

/// Held by the one request fetching a key; dropping it wakes the waiters.
pub struct FillGuard {
    cache: Arc<ResponseCache>,
    key: String,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        // Dropping the sender ends every waiter's `changed()`.
        self.cache
            .fills
            .lock()
            .expect("fills lock")
            .remove(&self.key);
    }
}

struct Entries {
    lru: LruCache<String, Arc<CachedResponse>>,
    bytes: usize,
}

/// The cache shared by every route of a gateway.
pub struct ResponseCache {
    entries: Mutex<Entries>,
    fills: Mutex<HashMap<String, watch::Sender<()>>>,
    max_bytes: usize,
    max_entry: usize,
    /// The bytes held, for `sluice_cache_bytes`.
    held: Gauge,
}

impl ResponseCache {
    /// An empty cache with the configured bounds; `held` shows its size.
    pub fn new(config: &CacheConfig, held: Gauge) -> ResponseCache {
        ResponseCache {
            entries: Mutex::new(Entries {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            fills: Mutex::new(HashMap::new()),
            max_bytes: config.max_mib << 20,
            max_entry: config.max_entry_kib << 10,
            held,
        }
    }

    /// The largest body worth buffering for the cache.
    pub fn max_entry(&self) -> usize {
        self.max_entry
    }

    fn fresh(&self, key: &str, request: &HeaderMap) -> Option<Arc<CachedResponse>> {
        let mut entries = self.entries.lock().expect("cache lock");
        let entry = entries.lru.get(key)?.clone();
        if entry.expires <= Instant::now() {
            entries.lru.pop(key);
            entries.bytes -= entry.size;
            self.held.set(entries.bytes as i64);
            return None;
        }
        entry.fits(request).then_some(entry)
    }

    /// Look `key` up for a request with `request` headers. On a miss, the first
    /// request becomes the one that fetches; the others wait for it once.
    pub async fn lookup(self: &Arc<Self>, key: &str, request: &HeaderMap) -> Lookup {
        if let Some(hit) = self.fresh(key, request) {
            return Lookup::Hit(hit);
        }
        let mut waiting = {
            let mut fills = self.fills.lock().expect("fills lock");
            match fills.get(key) {
                Some(filling) => filling.subscribe(),
                None => {
                    fills.insert(key.to_owned(), watch::channel(()).0);
                    return Lookup::Miss(Some(FillGuard {
                        cache: self.clone(),
                        key: key.to_owned(),
                    }));
                }
            }
        };
        let _ = waiting.changed().await;
        match self.fresh(key, request) {
            Some(hit) => Lookup::Hit(hit),
            // The fetch failed or was not cacheable (or varies): fetch independently.
            None => Lookup::Miss(None),
        }
    }

    /// Store a response for `ttl`, evicting the least recently used entries
    /// to stay within bounds; the entry stored, if it was. Responses with
    /// `Vary: *` or larger than an entry may be are not kept.
    pub fn store(
        &self,
        key: String,
        request: &HeaderMap,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        ttl: Duration,
    ) -> Option<Arc<CachedResponse>> {
        let mut vary = Vec::new();
        for value in headers.get_all(header::VARY) {
            for name in value.to_str().unwrap_or("*").split(',').map(str::trim) {
                match HeaderName::try_from(name) {
                    Ok(name) => vary.push((name.clone(), request.get(&name).cloned())),
                    Err(_) => return None, // `*` or garbage: never a hit
                }
            }
        }
        let entry = CachedResponse::new(status, headers, body, vary, Duration::ZERO, ttl);
        self.insert(key, entry)
    }

    /// Keep `entry` under `key`, if it fits.
    fn insert(&self, key: String, mut entry: CachedResponse) -> Option<Arc<CachedResponse>> {
        entry.size += key.len();
        if entry.size > self.max_entry || entry.expires <= Instant::now() {
            return None;
        }
        let entry = Arc::new(entry);
        let size = entry.size;
        let mut entries = self.entries.lock().expect("cache lock");
        if let Some(old) = entries.lru.put(key, entry.clone()) {
            entries.bytes -= old.size;
        }
        entries.bytes += size;
        while entries.bytes > self.max_bytes {
            let Some((_, evicted)) = entries.lru.pop_lru() else {
                break;
            };
            entries.bytes -= evicted.size;
        }
        self.held.set(entries.bytes as i64);
        Some(entry)
    }
}

/// How long the upstream allows a shared cache to keep a response, from
/// `Cache-Control` (`s-maxage` over `max-age`); `None` for `no-store`,
/// `private`, `no-cache`, responses that set cookies, and anything without an
/// explicit lifetime.
pub fn upstream_ttl(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if !matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 404 | 410) || private(headers) {
        return None;
    }
    let mut max_age = None;
    let mut s_maxage = None;
    for value in headers.get_all(header::CACHE_CONTROL) {
        for directive in value.to_str().ok()?.split(',') {
            let (name, arg) = directive
                .trim()
                .split_once('=')
                .unwrap_or((directive.trim(), ""));
            let seconds = || arg.trim_matches('"').parse::<u64>().ok();
            match name.to_ascii_lowercase().as_str() {
                "no-cache" => return None,
                "max-age" => max_age = seconds(),
                "s-maxage" => s_maxage = seconds(),
                _ => {}
            }
        }
    }
    s_maxage.or(max_age).map(Duration::from_secs)
}

/// Whether a response is for its client alone: it sets a cookie, or its
/// `Cache-Control` says `private` or `no-store`. Such a response is never
/// stored for others unless its route says so (`cache_private`).
pub fn private(headers: &HeaderMap) -> bool {
    headers.contains_key(header::SET_COOKIE)
        || headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .flat_map(|value| value.to_str().unwrap_or("private").split(','))
            .any(|directive| {
                let name = directive.split('=').next().unwrap_or("").trim();
                name.eq_ignore_ascii_case("private") || name.eq_ignore_ascii_case("no-store")
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn cache_control_decides_the_lifetime() {
        let ok = StatusCode::OK;
        assert_eq!(
            upstream_ttl(ok, &headers(&[("cache-control", "max-age=60")])),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            upstream_ttl(ok, &headers(&[("cache-control", "max-age=60, s-maxage=5")])),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            upstream_ttl(ok, &headers(&[("cache-control", "private, max-age=60")])),
            None
        );
        assert_eq!(
            upstream_ttl(ok, &headers(&[("cache-control", "no-store")])),
            None
        );
        assert_eq!(upstream_ttl(ok, &headers(&[])), None);
        assert_eq!(
            upstream_ttl(
                StatusCode::INTERNAL_SERVER_ERROR,
                &headers(&[("cache-control", "max-age=60")])
            ),
            None
        );
        assert_eq!(
            upstream_ttl(
                ok,
                &headers(&[("cache-control", "max-age=60"), ("set-cookie", "a=b")])
            ),
            None
        );
    }

    #[test]
    fn least_recently_used_entries_are_evicted_to_stay_within_bytes() {
        let held = Gauge::default();
        let config = CacheConfig {
            max_mib: 1,
            max_entry_kib: 600,
        };
        let cache = ResponseCache::new(&config, held.clone());
        let body = Bytes::from(vec![0u8; 400 << 10]);
        let none = HeaderMap::new();
        let ttl = Duration::from_secs(60);
        cache.store(
            "a".into(),
            &none,
            StatusCode::OK,
            HeaderMap::new(),
            body.clone(),
            ttl,
        );
        cache.store(
            "b".into(),
            &none,
            StatusCode::OK,
            HeaderMap::new(),
            body.clone(),
            ttl,
        );
        assert!(cache.fresh("a", &none).is_some()); // `a` is now the most recently used
        cache.store(
            "c".into(),
            &none,
            StatusCode::OK,
            HeaderMap::new(),
            body,
            ttl,
        );
        assert!(
            cache.fresh("b", &none).is_none(),
            "b was least recently used"
        );
        assert!(cache.fresh("a", &none).is_some());
        assert!(cache.fresh("c", &none).is_some());
        let two = (2 * (400 << 10) + 2) as i64;
        assert_eq!(held.get(), two, "the gauge shows what is held");
    }
}
