//! `Server-Timing` for the time a request spent beyond this filter (the
//! upstream, or the cache, and the filters after it): the start is kept on
//! the request and read back on its response, which the gateway runs in the
//! same instance with no other request in between.

use serde::Deserialize;
use sluice_sdk::{Plugin, Request, Response, Transform, log};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The metric's name in the header (default `upstream`).
    #[serde(default = "default_name")]
    name: String,
}

fn default_name() -> String {
    "upstream".into()
}

struct ServerTiming {
    name: String,
}

/// When the request left this filter.
struct Started(u64);

impl Plugin for ServerTiming {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let valid = !config.name.is_empty()
            && config
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        match valid {
            true => Ok(ServerTiming { name: config.name }),
            false => Err(format!("`name` must be a token: `{}`", config.name)),
        }
    }
}

impl Transform for ServerTiming {
    fn on_request(&self, req: &Request) -> sluice_sdk::Action {
        req.keep(Started(log::monotonic_nanos()));
        sluice_sdk::Action::Forward
    }

    fn on_response(&self, req: &Request, resp: &Response) {
        let Some(Started(at)) = req.kept() else {
            return;
        };
        let millis = log::monotonic_nanos().saturating_sub(at) as f64 / 1e6;
        let value = format!(
            "{};dur={millis:.1};desc=\"request {}\"",
            self.name,
            req.id()
        );
        let _ = resp.headers().append("server-timing", &value);
    }
}

sluice_sdk::export!(transform: ServerTiming);
