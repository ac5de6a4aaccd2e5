//! Header edits from configuration: set, add and remove request headers on
//! the way in and response headers on the way out. Values are templates:
//! `{identity}`, `{claim.NAME}`, `{route}`, `{client_ip}`, `{method}`, `{path}`.
//! A header whose template names something the request doesn't have (no
//! identity, no such claim) is left out.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_sdk::{Action, Headers, Plugin, Request, Response, Transform};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: Edits,
    #[serde(default)]
    response: Edits,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Edits {
    /// Replace (or create) these headers.
    #[serde(default)]
    set: BTreeMap<String, String>,
    /// Add these values, keeping existing ones.
    #[serde(default)]
    add: BTreeMap<String, String>,
    /// Remove these headers (applied first).
    #[serde(default)]
    remove: Vec<String>,
}

struct HeaderEdits {
    config: Config,
}

impl Plugin for HeaderEdits {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        for edits in [&config.request, &config.response] {
            for (name, template) in edits.set.iter().chain(&edits.add) {
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                {
                    return Err(format!("`{name}` is not a valid header name"));
                }
                check_template(template)?;
            }
        }
        Ok(HeaderEdits { config })
    }
}

const VARIABLES: [&str; 5] = ["identity", "route", "client_ip", "method", "path"];

fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{template}`"))?;
        let name = &rest[start + 1..start + end];
        if !VARIABLES.contains(&name) && !name.starts_with("claim.") {
            return Err(format!("unknown variable `{{{name}}}` in `{template}`"));
        }
        rest = &rest[start + end + 1..];
    }
    Ok(())
}

/// Fill in a template; `None` when it names something the request lacks.
fn render(template: &str, req: &Request) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}')?;
        let name = &rest[start + 1..end];
        let value = match name {
            "identity" => req.identity()?.subject,
            "route" => req.route(),
            "client_ip" => req.client_ip(),
            "method" => req.method(),
            "path" => req.path(),
            claim => req
                .identity()?
                .get(claim.strip_prefix("claim.")?)?
                .to_owned(),
        };
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn apply(edits: &Edits, headers: &Headers, req: &Request) {
    for name in &edits.remove {
        headers.remove(name);
    }
    for (name, template) in &edits.set {
        if let Some(value) = render(template, req) {
            let _ = headers.set(name, &value);
        }
    }
    for (name, template) in &edits.add {
        if let Some(value) = render(template, req) {
            let _ = headers.append(name, &value);
        }
    }
}

impl Transform for HeaderEdits {
    fn on_request(&self, req: &Request) -> Action {
        apply(&self.config.request, req.headers(), req);
        Action::Forward
    }

    fn on_response(&self, req: &Request, resp: &Response) {
        apply(&self.config.response, resp.headers(), req);
    }
}

sluice_sdk::export!(transform: HeaderEdits);
