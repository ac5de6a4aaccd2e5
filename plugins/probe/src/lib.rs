//! A test fixture, not a policy: answers each request by exercising one host
//! capability, so tests can see what the gateway grants and refuses.
//!
//! `op`: `count` (increments counter `hits`, answers its value), `kv`
//! (`PUT` stores the body under the path, `GET` reads it back), `take`
//! (takes a token from a 3-token bucket), `metric` (adds 1 to counter
//! `probe_hits`), `http` (fetches `path` from `upstream`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use sluice_sdk::outbound::Outbound;
use sluice_sdk::{Error, HttpFilter, Plugin, Reply, Request, Verdict, kv, metrics};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    op: String,
    #[serde(default)]
    upstream: String,
    #[serde(default)]
    path: String,
}

struct Probe {
    config: Config,
}

impl Plugin for Probe {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        match config.op.as_str() {
            "count" | "kv" | "take" | "metric" | "http" => Ok(Probe { config }),
            other => Err(format!("unknown op `{other}`")),
        }
    }
}

impl Probe {
    fn run(&self, req: &Request) -> Result<Value, Error> {
        Ok(match self.config.op.as_str() {
            "count" => json!({ "count": kv::increment("hits", 1, None)? }),
            "kv" if req.method() == "PUT" => {
                let body = req.body()?;
                kv::set(&req.path(), &body, None)?;
                json!({ "stored": body.len() })
            }
            "kv" => {
                let value = kv::get(&req.path())?.map(|v| String::from_utf8_lossy(&v).into_owned());
                json!({ "value": value })
            }
            "take" => {
                let bucket = kv::take("bucket", 1, 3, Duration::from_secs(3600))?;
                json!({ "allowed": bucket.allowed, "remaining": bucket.remaining })
            }
            "metric" => {
                metrics::counter("probe_hits", &[("route", &req.route())], 1)?;
                json!({ "counted": true })
            }
            _ => {
                let answer = Outbound::get(&self.config.upstream, &self.config.path).send()?;
                json!({ "status": answer.status, "body": String::from_utf8_lossy(&answer.body) })
            }
        })
    }
}

impl HttpFilter for Probe {
    fn on_request(&self, req: &Request) -> Verdict {
        Verdict::Respond(match self.run(req) {
            Ok(value) => Reply::json(200, &value),
            Err(error) => Reply::json(
                500,
                &BTreeMap::from([("error", error.to_string()), ("kind", error.kind().into())]),
            ),
        })
    }
}

sluice_sdk::export!(http_filter: Probe);
