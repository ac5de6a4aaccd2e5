//! Aggregation: answers a route by calling several upstreams at once (over
//! the gateway's outbound HTTP) and merging their JSON into one response.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_sdk::outbound::{self, Outbound};
use sluice_sdk::{HttpFilter, Plugin, Reply, Request, Verdict, log};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The calls to make, all at once.
    sources: Vec<Source>,
    /// `nest`: each answer under its source's name; `merge`: the answers'
    /// top-level fields in one object, later sources winning.
    #[serde(default)]
    mode: Mode,
    /// Request headers passed on to every source.
    #[serde(default)]
    forward_headers: Vec<String>,
    /// What a failed source means: `fail` (502 for the whole answer) or
    /// `null` (its part is `null`; not available with `merge`).
    #[serde(default)]
    on_error: OnError,
    /// Give up on a source after this many milliseconds.
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Source {
    /// The key of its part in `nest` mode.
    name: String,
    /// A named upstream, granted as `http:<upstream>`.
    upstream: String,
    /// The path to ask for; `{path}` and `{query}` stand for the client's.
    path: String,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Nest,
    Merge,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum OnError {
    #[default]
    Fail,
    Null,
}

struct Aggregate {
    config: Config,
}

impl Plugin for Aggregate {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.sources.is_empty() {
            return Err("`sources` must list at least one call".into());
        }
        if config.mode == Mode::Merge && config.on_error == OnError::Null {
            return Err("`on_error = \"null\"` needs `mode = \"nest\"`".into());
        }
        for source in &config.sources {
            if !source.path.starts_with('/') && !source.path.starts_with("{path}") {
                return Err(format!(
                    "source `{}`: `path` must start with `/`",
                    source.name
                ));
            }
        }
        Ok(Aggregate { config })
    }
}

fn error(status: u16, code: &str, detail: String) -> Verdict {
    log::warn(&detail);
    Verdict::Respond(Reply::json(
        status,
        &BTreeMap::from([("error", code.to_owned()), ("detail", detail)]),
    ))
}

impl HttpFilter for Aggregate {
    fn on_request(&self, req: &Request) -> Verdict {
        let query = req.query().unwrap_or_default();
        let path = req.path();
        let calls = self
            .config
            .sources
            .iter()
            .map(|s| {
                let target = s.path.replace("{path}", &path).replace("{query}", &query);
                let mut call =
                    Outbound::get(&s.upstream, &target).header("accept", "application/json");
                for name in &self.config.forward_headers {
                    if let Some(value) = req.header(name) {
                        call = call.header(name.as_str(), value);
                    }
                }
                if let Some(ms) = self.config.timeout_ms {
                    call = call.timeout(Duration::from_millis(ms));
                }
                call
            })
            .collect();
        let answers = outbound::send_all(calls);

        let mut merged = Map::new();
        for (source, answer) in self.config.sources.iter().zip(answers) {
            let part = answer
                .map_err(|e| e.to_string())
                .and_then(|a| match a.is_success() {
                    true => a.json::<Value>(),
                    false => Err(format!("status {}", a.status)),
                });
            let part = match (part, &self.config.on_error) {
                (Ok(value), _) => value,
                (Err(e), OnError::Null) => {
                    log::warn(&format!("source `{}` failed: {e}", source.name));
                    Value::Null
                }
                (Err(e), OnError::Fail) => {
                    return error(
                        502,
                        "source_failed",
                        format!("source `{}`: {e}", source.name),
                    );
                }
            };
            match (&self.config.mode, part) {
                (Mode::Nest, part) => {
                    merged.insert(source.name.clone(), part);
                }
                (Mode::Merge, Value::Object(fields)) => merged.extend(fields),
                (Mode::Merge, _) => {
                    let detail = format!("source `{}` did not answer a JSON object", source.name);
                    return error(502, "source_not_object", detail);
                }
            }
        }
        Verdict::Respond(Reply::json(200, &Value::Object(merged)))
    }
}

sluice_sdk::export!(http_filter: Aggregate);
