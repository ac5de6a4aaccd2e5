//! Request ids: every request carries one `x-request-id` from the edge on.
//! The client's is kept when the listener trusts it and it is well formed
//! (a gateway behind another keeps the id the first one gave); otherwise a
//! fresh UUID (version 4) replaces it. The upstream gets it, filters see
//! it, the client gets it back, and the log lines about the request name it.

use std::hash::BuildHasher;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};

/// The header that carries it.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id kept from a client.
const MAX_LEN: usize = 200;

/// Settle the request's id in `headers` (trusting the client's if
/// `trust_client`), and answer it for the response.
pub fn settle(headers: &mut HeaderMap, trust_client: bool) -> HeaderValue {
    // One probe finds the client's and puts ours in its place.
    match headers.entry(HEADER) {
        Entry::Occupied(mut sent) => {
            let mut ids = sent.iter();
            if trust_client
                && let (Some(id), None) = (ids.next(), ids.next())
                && well_formed(id)
            {
                return id.clone();
            }
            let id = generate();
            sent.insert(id.clone());
            id
        }
        Entry::Vacant(slot) => slot.insert(generate()).clone(),
    }
}

/// Printable ASCII, no spaces, not too long: safe in a log line.
fn well_formed(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// A random UUID: a counter through a keyed hash seeded at random once per
/// process (no system call per request, and no two alike).
fn generate() -> HeaderValue {
    static KEYS: LazyLock<(
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    )> = LazyLock::new(Default::default);
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let bits = (u128::from(KEYS.0.hash_one(n)) << 64) | u128::from(KEYS.1.hash_one(n));
    // Version 4, variant 10.
    let bits = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    // Two hex digits a byte, in groups of 8-4-4-4-12, each byte's pair
    // looked up whole.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut text = [b'-'; 36];
    for (byte, at) in bits.to_be_bytes().into_iter().zip(AT) {
        text[at..at + 2].copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    HeaderValue::from_bytes(&text).expect("hex and dashes")
}

/// Each byte's two hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    pairs
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_trusted_id_is_kept_and_others_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("req-42"));
        assert_eq!(settle(&mut headers, true), "req-42");
        assert_eq!(headers[&HEADER], "req-42");

        let replaced = settle(&mut headers, false);
        assert_ne!(replaced, "req-42");
        assert_eq!(headers[&HEADER], replaced);

        for bad in ["has space", "", &"x".repeat(201)] {
            headers.insert(HEADER, HeaderValue::from_str(bad).unwrap());
            assert_ne!(settle(&mut headers, true), bad, "{bad:?}");
        }
        // Two ids: neither is the request's.
        headers.insert(HEADER, HeaderValue::from_static("a"));
        headers.append(HEADER, HeaderValue::from_static("b"));
        let id = settle(&mut headers, true);
        assert_eq!(headers.get_all(&HEADER).iter().collect::<Vec<_>>(), [&id]);
    }

    #[test]
    fn generated_ids_are_distinct_version_4_uuids() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 1000);
        for id in ids.iter().take(10) {
            let id = id.to_str().unwrap();
            assert_eq!(id.len(), 36);
            assert_eq!(&id[14..15], "4", "{id}");
            assert!("89ab".contains(&id[19..20]), "{id}");
        }
    }
}
