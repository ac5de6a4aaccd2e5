//! Path normalisation, so that the router, the filters and the upstream read
//! one path the same way: percent-encoded unreserved characters decoded and
//! other escapes upper-cased (RFC 3986 §6.2.2), dot segments removed
//! (§5.2.4), repeated slashes merged. What cannot be made unambiguous is
//! refused: an encoded `/` or `\` (unless the listener says otherwise), a
//! `..` that climbs above the root, a NUL, a broken escape.

use serde::Deserialize;

/// What to do with `%2F`, `%5C` and a raw `\` in a path, which some servers
/// read as separators and others do not.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EscapedSlashes {
    /// Refuse the request with 400 (the default).
    #[default]
    Reject,
    /// Leave them encoded: not separators for routing, passed on as they came.
    Keep,
    /// Decode them to `/` and normalise the result.
    Decode,
}

/// How a listener normalises paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Collapse `//` into `/`.
    pub merge_slashes: bool,
    /// What an encoded slash or a backslash means.
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F`, `%5C` or `\` under [`EscapedSlashes::Reject`].
    #[error("an encoded `/` or a `\\` in the path")]
    EscapedSlash,
    /// More `..` segments than there are segments to climb.
    #[error("a `..` that climbs above the root")]
    AboveRoot,
    /// `%00`.
    #[error("a NUL in the path")]
    Nul,
    /// `%` not followed by two hex digits.
    #[error("a broken percent-encoding in the path")]
    BadEscape,
    /// Not starting with `/`.
    #[error("the path is not absolute")]
    NotAbsolute,
}

/// The normal form of `path` (without its query), or `None` when it is
/// already normal — the common case, which allocates nothing.
pub fn normalize(path: &str, rules: PathRules) -> Result<Option<String>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(bytes, rules) {
        return Ok(None);
    }
    let decoded = decode(bytes, rules.escaped_slashes)?;
    let normal = remove_dot_segments(&decoded, rules.merge_slashes)?;
    // Only ASCII was replaced by ASCII, so the bytes are still UTF-8.
    let normal = String::from_utf8(normal).map_err(|_| PathError::BadEscape)?;
    Ok((normal != path).then_some(normal))
}

/// Whether nothing in `path` could change: no escape, no backslash, no dot
/// segment, no repeated slash. Errs on the side of the slow path.
fn is_plain(path: &[u8], rules: PathRules) -> bool {
    let mut previous = 0u8;
    for &b in path {
        match b {
            b'%' | b'\\' => return false,
            b'.' if previous == b'/' => return false,
            b'/' if previous == b'/' && rules.merge_slashes => return false,
            _ => {}
        }
        previous = b;
    }
    true
}

fn decode(path: &[u8], slashes: EscapedSlashes) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'%' => {
                let byte = path
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or(PathError::BadEscape)?;
                match byte {
                    0 => return Err(PathError::Nul),
                    b'/' | b'\\' => match slashes {
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                        EscapedSlashes::Keep => push_escape(&mut out, byte),
                        EscapedSlashes::Decode => out.push(b'/'),
                    },
                    b if is_unreserved(b) => out.push(b),
                    b => push_escape(&mut out, b),
                }
                i += 3;
            }
            b'\\' => {
                match slashes {
                    EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                    EscapedSlashes::Keep => out.push(b'\\'),
                    EscapedSlashes::Decode => out.push(b'/'),
                }
                i += 1;
            }
            0 => return Err(PathError::Nul),
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn push_escape(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[
        b'%',
        HEX[usize::from(byte >> 4)],
        HEX[usize::from(byte & 15)],
    ]);
}

/// `path` starts with `/`. Segments `.` go, `..` take the previous one with
/// them (refused at the root), empty ones go when merging slashes; a path
/// that ended in a slash or a dot segment keeps its trailing slash.
fn remove_dot_segments(path: &[u8], merge_slashes: bool) -> Result<Vec<u8>, PathError> {
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    let mut segments = path[1..].split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            b"" if last => trailing_slash = true,
            b"" if merge_slashes => {}
            b"." => trailing_slash = last,
            b".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = last;
            }
            _ => kept.push(segment),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for segment in &kept {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(rules: PathRules, path: &str) -> Result<String, PathError> {
        normalize(path, rules).map(|n| n.unwrap_or_else(|| path.to_owned()))
    }

    fn norm(path: &str) -> Result<String, PathError> {
        with(PathRules::default(), path)
    }

    #[test]
    fn plain_paths_are_left_alone_without_allocating() {
        for path in ["/", "/api/orders", "/api/orders/", "/a-b_c~d", "/v1.2/x"] {
            assert_eq!(normalize(path, PathRules::default()), Ok(None), "{path}");
        }
    }

    #[test]
    fn tricks_that_reached_a_protected_prefix_normalise_to_it() {
        for path in [
            "//api/orders",
            "/%61pi/orders",
            "/public/../api/orders",
            "/./api/orders",
            "/x/%2e%2e/api/orders",
            "/x/%2E%2E/api/orders",
            "///api///orders",
            "/api/./orders",
            "/api/orders/x/..",
        ] {
            let normal = norm(path).unwrap();
            assert!(
                normal == "/api/orders" || normal == "/api/orders/",
                "{path} -> {normal}"
            );
        }
    }

    #[test]
    fn what_cannot_be_made_unambiguous_is_refused() {
        assert_eq!(norm("/api%2forders"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/api%2Forders"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/api%5corders"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/api\\orders"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/.."), Err(PathError::AboveRoot));
        assert_eq!(norm("/a/../../etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(norm("/%2e%2e/x"), Err(PathError::AboveRoot));
        assert_eq!(norm("/a%00b"), Err(PathError::Nul));
        assert_eq!(norm("/a%zzb"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%2"), Err(PathError::BadEscape));
        assert_eq!(norm("api"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn other_escapes_stay_encoded_in_upper_case() {
        assert_eq!(norm("/a%3ab").unwrap(), "/a%3Ab");
        assert_eq!(norm("/%7euser").unwrap(), "/~user");
        assert_eq!(norm("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        // `%25` is `%` itself: decoded once, never twice.
        assert_eq!(norm("/%252e%252e/x").unwrap(), "/%252e%252e/x");
    }

    #[test]
    fn dot_segments_follow_rfc_3986() {
        assert_eq!(norm("/a/b/c/./../../g").unwrap(), "/a/g");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/.well-known/x").unwrap(), "/.well-known/x");
        assert_eq!(norm("/a/..b/c").unwrap(), "/a/..b/c");
    }

    #[test]
    fn listeners_can_keep_or_decode_escaped_slashes_and_keep_double_slashes() {
        let keep = PathRules {
            escaped_slashes: EscapedSlashes::Keep,
            ..PathRules::default()
        };
        assert_eq!(with(keep, "/api%2forders").unwrap(), "/api%2Forders");
        let decode = PathRules {
            escaped_slashes: EscapedSlashes::Decode,
            ..PathRules::default()
        };
        assert_eq!(with(decode, "/api%2forders").unwrap(), "/api/orders");
        assert_eq!(with(decode, "/x%2f..%2fapi").unwrap(), "/api");
        assert_eq!(with(decode, "/a\\b").unwrap(), "/a/b");
        let unmerged = PathRules {
            merge_slashes: false,
            ..PathRules::default()
        };
        assert_eq!(with(unmerged, "//api//x").unwrap(), "//api//x");
        assert_eq!(with(unmerged, "/a//../b").unwrap(), "/a/b");
    }
}
