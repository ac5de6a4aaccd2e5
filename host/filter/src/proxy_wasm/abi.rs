//! The proxy-wasm ABI's numbers (0.2.1, the same as 0.2.0 for what both
//! have) and its header-map encoding.

/// Statuses the host answers with.
pub(crate) mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INTERNAL_FAILURE: i32 = 10;
}

/// What a stream callback tells the host.
pub(crate) const ACTION_PAUSE: i32 = 1;

/// Header maps.
pub(crate) mod map {
    pub const REQUEST_HEADERS: i32 = 0;
    pub const REQUEST_TRAILERS: i32 = 1;
    pub const RESPONSE_HEADERS: i32 = 2;
    pub const RESPONSE_TRAILERS: i32 = 3;
    pub const CALL_RESPONSE_HEADERS: i32 = 6;
    pub const CALL_RESPONSE_TRAILERS: i32 = 7;
}

/// Buffers.
pub(crate) mod buffer {
    pub const REQUEST_BODY: i32 = 0;
    pub const RESPONSE_BODY: i32 = 1;
    pub const CALL_RESPONSE_BODY: i32 = 4;
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
}

/// The ABI versions a module may declare by exporting its marker.
pub(crate) const VERSIONS: [(&str, &str); 2] = [
    ("proxy_abi_version_0_2_1", "0.2.1"),
    ("proxy_abi_version_0_2_0", "0.2.0"),
];

/// The pairs encoded as the ABI has them: the count, each key's and
/// value's length (u32, little-endian), then each key and value followed
/// by a NUL.
pub(crate) fn encode_map<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let count = pairs.clone().count();
    let mut out = Vec::with_capacity(4 + count * 8);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The pairs in an encoded map; `None` if it is malformed.
pub(crate) fn decode_map(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let word = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let count = word(0)?;
    let mut sizes = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        sizes.push((word(4 + i * 8)?, word(8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut pairs = Vec::with_capacity(sizes.len());
    for (k, v) in sizes {
        let key = bytes.get(at..at + k)?.to_vec();
        at += k + 1;
        let value = bytes.get(at..at + v)?.to_vec();
        at += v + 1;
        pairs.push((key, value));
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/a?b"), (b"x-empty", b"")];
        let encoded = encode_map(pairs.iter().copied());
        assert_eq!(&encoded[..4], &2u32.to_le_bytes());
        let back = decode_map(&encoded).unwrap();
        assert_eq!(back[0], (b":path".to_vec(), b"/a?b".to_vec()));
        assert_eq!(back[1], (b"x-empty".to_vec(), Vec::new()));
        assert!(decode_map(&encoded[..encoded.len() - 3]).is_none());
    }
}
