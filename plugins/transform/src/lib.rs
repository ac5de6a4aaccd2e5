//! Request and response transformation: header edits, path rewrites with
//! regex captures, API versioning by header, query parameter edits, and JSON
//! body edits by JSON pointer (the filter entry needs `body = true` for those).

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use sluice_sdk::{Action, Edit, Headers, Plugin, Reply, Request, Response, Transform};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Header edits on the request sent upstream.
    #[serde(default)]
    request_headers: HeaderEdits,
    /// Header edits on the response sent to the client.
    #[serde(default)]
    response_headers: HeaderEdits,
    /// Path rewrites; the first whose pattern matches applies.
    #[serde(default)]
    rewrite: Vec<RewriteConfig>,
    /// Map a version header's values to path prefixes.
    version: Option<VersionConfig>,
    /// Query parameter edits.
    #[serde(default)]
    query: QueryEdits,
    /// JSON edits to the request body.
    #[serde(default)]
    request_json: JsonEdits,
    /// JSON edits to the response body.
    #[serde(default)]
    response_json: JsonEdits,
    /// Bodies larger than this are refused (413) rather than edited.
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
}

fn default_max_body() -> usize {
    1 << 20
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RewriteConfig {
    /// A regex over the path.
    pattern: String,
    /// The new path; `$1`, `${name}` refer to captures.
    replacement: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionConfig {
    /// The header naming the version, e.g. `accept-version`.
    header: String,
    /// Version → path prefix, e.g. `{ "2" = "/v2" }`.
    prefixes: BTreeMap<String, String>,
    /// The prefix when the header is absent, if any.
    default: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeaderEdits {
    /// Headers removed first.
    #[serde(default)]
    remove: Vec<String>,
    /// Headers set, replacing any values.
    #[serde(default)]
    set: BTreeMap<String, String>,
    /// Values added, keeping those already there.
    #[serde(default)]
    add: BTreeMap<String, String>,
}

impl HeaderEdits {
    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Every edit in one call to the gateway. Names and values were checked
    /// by `check`; one the gateway keeps itself is skipped.
    fn apply(&self, headers: &Headers) {
        let list: Vec<Edit> = (self.remove.iter().map(|name| Edit::Remove(name)))
            .chain(self.set.iter().map(|(name, value)| Edit::Set(name, value)))
            .chain(
                self.add
                    .iter()
                    .map(|(name, value)| Edit::Append(name, value)),
            )
            .collect();
        let _ = headers.edit(&list);
    }

    fn check(&self) -> Result<(), String> {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        for name in self
            .remove
            .iter()
            .chain(self.set.keys())
            .chain(self.add.keys())
        {
            if name.is_empty() || !name.chars().all(token) {
                return Err(format!("`{name}` is not a header name"));
            }
        }
        for value in self.set.values().chain(self.add.values()) {
            if value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(format!("`{value}` is not a valid header value"));
            }
        }
        Ok(())
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct QueryEdits {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JsonEdits {
    /// JSON pointer → value to put there (intermediate objects are created).
    #[serde(default)]
    set: BTreeMap<String, Value>,
    /// JSON pointers to remove.
    #[serde(default)]
    remove: Vec<String>,
}

impl JsonEdits {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

struct Transformer {
    rewrites: Vec<(Regex, String)>,
    config: Config,
}

impl Plugin for Transformer {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let rewrites = config
            .rewrite
            .iter()
            .map(|r| {
                let regex = Regex::new(&r.pattern)
                    .map_err(|e| format!("invalid pattern `{}`: {e}", r.pattern))?;
                Ok((regex, r.replacement.clone()))
            })
            .collect::<Result<_, String>>()?;
        config.request_headers.check()?;
        config.response_headers.check()?;
        for edits in [&config.request_json, &config.response_json] {
            for pointer in edits.set.keys().chain(&edits.remove) {
                if !pointer.starts_with('/') {
                    return Err(format!(
                        "`{pointer}` is not a JSON pointer (they start with `/`)"
                    ));
                }
            }
        }
        Ok(Transformer { rewrites, config })
    }
}

impl Transformer {
    fn new_path(&self, req: &Request) -> Option<String> {
        if self.config.version.is_none() && self.rewrites.is_empty() {
            return None;
        }
        let path = req.path();
        let mut new = None;
        if let Some(version) = &self.config.version {
            let prefix = match req.header(&version.header) {
                Some(v) => version.prefixes.get(v.trim()),
                None => version.default.as_ref(),
            };
            if let Some(prefix) = prefix {
                new = Some(format!("{}{}", prefix.trim_end_matches('/'), path));
            }
        }
        let current = new.as_deref().unwrap_or(&path);
        // One pass of each regex: a replacement that borrows matched nothing.
        let rewritten = self.rewrites.iter().find_map(|(regex, replacement)| {
            match regex.replace(current, replacement.as_str()) {
                std::borrow::Cow::Owned(rewritten) => Some(rewritten),
                std::borrow::Cow::Borrowed(_) => None,
            }
        });
        rewritten.or(new)
    }

    fn new_query(&self, req: &Request) -> Option<String> {
        let edits = &self.config.query;
        if edits.set.is_empty() && edits.remove.is_empty() {
            return None;
        }
        let query = req.query().unwrap_or_default();
        let mut pairs: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .filter(|(k, _)| !edits.remove.contains(k) && !edits.set.contains_key(k))
            .collect();
        pairs.extend(edits.set.iter().map(|(k, v)| (k.clone(), v.clone())));
        Some(
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&"),
        )
    }
}

/// Apply edits to a JSON body; `None` if it is not JSON (left as it is).
fn edit_json(body: &[u8], edits: &JsonEdits) -> Option<Vec<u8>> {
    let mut doc: Value = serde_json::from_slice(body).ok()?;
    for pointer in &edits.remove {
        let (parent, key) = pointer.rsplit_once('/')?;
        match doc.pointer_mut(parent) {
            Some(Value::Object(map)) => {
                map.remove(&unescape(key));
            }
            Some(Value::Array(items)) => {
                if let Ok(i) = key.parse::<usize>()
                    && i < items.len()
                {
                    items.remove(i);
                }
            }
            _ => {}
        }
    }
    for (pointer, value) in &edits.set {
        set_pointer(&mut doc, pointer, value.clone());
    }
    serde_json::to_vec(&doc).ok()
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Put `value` at `pointer`, creating objects along the way.
fn set_pointer(doc: &mut Value, pointer: &str, value: Value) {
    let mut here = doc;
    let tokens: Vec<String> = pointer.split('/').skip(1).map(unescape).collect();
    for (i, token) in tokens.iter().enumerate() {
        if !here.is_object() {
            *here = Value::Object(Default::default());
        }
        let map = here.as_object_mut().expect("made an object above");
        if i == tokens.len() - 1 {
            map.insert(token.clone(), value);
            return;
        }
        here = map.entry(token.clone()).or_insert(Value::Null);
    }
}

/// Edit a body through `get`/`put`; a body over the limit gives a 413.
fn edit_body(
    edits: &JsonEdits,
    limit: usize,
    get: impl FnOnce() -> Result<Vec<u8>, sluice_sdk::Error>,
    put: impl FnOnce(Vec<u8>) -> Result<(), sluice_sdk::Error>,
) -> Result<(), Reply> {
    if edits.is_empty() {
        return Ok(());
    }
    let body = match get() {
        Ok(body) => body,
        Err(e) => {
            sluice_sdk::log::warn(&format!("JSON edits skipped: {e}"));
            return Ok(());
        }
    };
    if body.len() > limit {
        return Err(Reply::text(413, "body too large to transform\n"));
    }
    if let Some(edited) = edit_json(&body, edits)
        && let Err(e) = put(edited)
    {
        sluice_sdk::log::warn(&format!("could not replace the body: {e}"));
    }
    Ok(())
}

impl Transform for Transformer {
    fn on_request(&self, req: &Request) -> Action {
        self.config.request_headers.apply(req.headers());
        if let Err(reply) = edit_body(
            &self.config.request_json,
            self.config.max_body_bytes,
            || req.body(),
            |b| req.set_body(b),
        ) {
            return Action::Respond(reply);
        }
        let path = self.new_path(req);
        let query = self.new_query(req);
        if path.is_none() && query.is_none() {
            return Action::Forward;
        }
        let path = path.unwrap_or_else(|| req.path());
        match query.or_else(|| req.query()) {
            Some(q) if !q.is_empty() => Action::Rewrite(format!("{path}?{q}")),
            _ => Action::Rewrite(path),
        }
    }

    fn on_response(&self, _req: &Request, resp: &Response) {
        let config = &self.config;
        if config.response_headers.is_empty() && config.response_json.is_empty() {
            return sluice_sdk::skip_response_phase();
        }
        self.config.response_headers.apply(resp.headers());
        // A response too large to edit passes unedited: it is already on its way.
        let _ = edit_body(
            &self.config.response_json,
            self.config.max_body_bytes,
            || resp.body(),
            |b| resp.set_body(b),
        );
    }
}

sluice_sdk::export!(transform: Transformer);
