//! Connection policy for TCP listeners: an allow list of client networks, a
//! tenant map from TLS server names to upstreams, and a cap on the
//! connections one client address holds open. Checked in that order when a
//! connection is accepted; the first that says no closes it.

use std::collections::HashMap;

use ipnet::IpNet;
use serde::Deserialize;
use sluice_sdk::{Connection, ConnectionInfo, ConnectionVerdict, Plugin};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Client networks let in (`10.0.0.0/8`, `127.0.0.1/32`); everyone when absent.
    allow: Option<Vec<String>>,
    /// Server name (exact, or `*.suffix` for its subdomains) to upstream.
    #[serde(default)]
    tenants: HashMap<String, String>,
    /// Close a connection whose server name is in no tenant (instead of
    /// letting it go where the listener's routes picked).
    #[serde(default)]
    tenants_only: bool,
    /// Most connections one client address holds open at once.
    max_per_client: Option<u32>,
}

struct Policy {
    allow: Option<Vec<IpNet>>,
    exact: HashMap<String, String>,
    /// (`.suffix`, upstream), longest suffix first.
    wildcard: Vec<(String, String)>,
    tenants_only: bool,
    max_per_client: Option<u32>,
}

impl Plugin for Policy {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let allow = match config.allow {
            None => None,
            Some(nets) => Some(
                nets.iter()
                    .map(|net| parse_net(net))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let (mut exact, mut wildcard) = (HashMap::new(), Vec::new());
        for (name, upstream) in config.tenants {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') => {
                    wildcard.push((suffix.to_owned(), upstream))
                }
                Some(_) => return Err(format!("tenant `{name}`: a wildcard is `*.suffix`")),
                None => drop(exact.insert(name, upstream)),
            }
        }
        wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        if config.max_per_client == Some(0) {
            return Err("`max_per_client` must be at least 1".into());
        }
        Ok(Policy {
            allow,
            exact,
            wildcard,
            tenants_only: config.tenants_only,
            max_per_client: config.max_per_client,
        })
    }
}

/// A network, or one address as its own network.
fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`allow`: `{text}` is not a network or an address"))
}

impl Policy {
    fn tenant(&self, name: &str) -> Option<&str> {
        if let Some(upstream) = self.exact.get(name) {
            return Some(upstream);
        }
        (self.wildcard.iter())
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, upstream)| upstream.as_str())
    }
}

impl Connection for Policy {
    fn on_connect(&self, conn: &ConnectionInfo) -> ConnectionVerdict {
        let allowed = |allow: &Vec<IpNet>| allow.iter().any(|net| net.contains(&conn.client_ip));
        if !self.allow.as_ref().is_none_or(allowed) {
            return ConnectionVerdict::Deny(format!("{} is not allowed", conn.client_ip));
        }
        if let Some(max) = self.max_per_client
            && conn.open_from_client > max
        {
            return ConnectionVerdict::Deny(format!(
                "{} holds {max} connections already",
                conn.client_ip
            ));
        }
        let name = conn.server_name.as_deref().map(str::to_ascii_lowercase);
        match name.as_deref().and_then(|name| self.tenant(name)) {
            Some(upstream) => ConnectionVerdict::Route(upstream.to_owned()),
            None if self.tenants_only => ConnectionVerdict::Deny(format!(
                "no tenant for server name {}",
                name.as_deref().unwrap_or("(none)")
            )),
            None => ConnectionVerdict::Allow,
        }
    }
}

sluice_sdk::export!(connection: Policy);
