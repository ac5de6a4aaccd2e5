//! What a plugin's configuration can grant it: `kv`, `metrics`, `crypto`
//! and `http:<upstream>`.

use std::fmt;

/// A capability a plugin's configuration can grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grant {
    /// The key-value store, counters and token buckets (`kv`).
    Kv,
    /// Defining metrics (`metrics`).
    Metrics,
    /// Outbound HTTP to one named upstream (`http:<name>`).
    Http(String),
    /// Digests, HMAC and signature verification (`crypto`).
    Crypto,
}

impl std::str::FromStr for Grant {
    type Err = String;

    fn from_str(s: &str) -> Result<Grant, String> {
        match s {
            "kv" => Ok(Grant::Kv),
            "metrics" => Ok(Grant::Metrics),
            "crypto" => Ok(Grant::Crypto),
            _ => match s.strip_prefix("http:") {
                Some(upstream) if !upstream.is_empty() => Ok(Grant::Http(upstream.to_owned())),
                _ => Err(format!(
                    "unknown grant `{s}`; grants are `kv`, `metrics`, `crypto` and `http:<upstream>`"
                )),
            },
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Kv => f.write_str("kv"),
            Grant::Metrics => f.write_str("metrics"),
            Grant::Crypto => f.write_str("crypto"),
            Grant::Http(upstream) => write!(f, "http:{upstream}"),
        }
    }
}

impl Grant {
    /// The capability it grants (`http` for any `http:<upstream>`).
    pub fn capability(&self) -> &'static str {
        match self {
            Grant::Kv => "kv",
            Grant::Metrics => "metrics",
            Grant::Crypto => "crypto",
            Grant::Http(_) => "http",
        }
    }

    /// Parse a configured grant, checking the upstream an `http:` grant names.
    pub fn check(text: &str, upstream_exists: impl Fn(&str) -> bool) -> Result<Grant, String> {
        match text.parse()? {
            Grant::Http(upstream) if !upstream_exists(&upstream) => {
                Err(format!("unknown upstream `{upstream}`"))
            }
            grant => Ok(grant),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_and_name_known_upstreams() {
        let known = |u: &str| u == "auth";
        assert_eq!(Grant::check("kv", known), Ok(Grant::Kv));
        assert_eq!(
            Grant::check("http:auth", known),
            Ok(Grant::Http("auth".into()))
        );
        assert!(
            Grant::check("http:billing", known)
                .unwrap_err()
                .contains("unknown upstream")
        );
        assert!(
            Grant::check("fs", known)
                .unwrap_err()
                .contains("unknown grant `fs`")
        );
        assert_eq!(Grant::Http("auth".into()).to_string(), "http:auth");
    }
}
