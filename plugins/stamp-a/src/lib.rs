//! A test fixture for hot reload: stamps the request and the response with
//! its package name (`stamp-a` or `stamp-b`, built from this one source) and
//! the configured `label`, so a test can tell which build and which
//! configuration handled each request, on the way in and on the way out.

use serde::Deserialize;
use sluice_sdk::{Action, Plugin, Request, Response, Transform};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    label: String,
}

struct Stamp {
    value: String,
}

impl Plugin for Stamp {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Stamp {
            value: format!("{}:{}", env!("CARGO_PKG_NAME"), config.label),
        })
    }
}

impl Transform for Stamp {
    fn on_request(&self, req: &Request) -> Action {
        let _ = req.headers().set("x-stamp", &self.value);
        Action::Forward
    }

    fn on_response(&self, _req: &Request, resp: &Response) {
        let _ = resp.headers().set("x-stamp", &self.value);
    }
}

sluice_sdk::export!(transform: Stamp);
