//! Header edits from configuration: set, add and remove request headers on
//! the way in and response headers on the way out. Values are templates:
//! `{identity}`, `{claim.NAME}`, `{route}`, `{client_ip}`, `{method}`, `{path}`,
//! and `{header.NAME}`: a header of the message being edited (the request's
//! on the way in, the response's on the way out), as it reached this filter.
//! A header whose template names something the message doesn't have (no
//! identity, no such claim or header) is left out.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_sdk::{Action, Edit, Headers, Plugin, Request, Response, Transform};

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
        if !VARIABLES.contains(&name) && !name.starts_with("claim.") && !name.starts_with("header.")
        {
            return Err(format!("unknown variable `{{{name}}}` in `{template}`"));
        }
        rest = &rest[start + end + 1..];
    }
    Ok(())
}

/// Fill in a template; `None` when it names something the message lacks
/// (a template without variables is used as it is.)
fn render<'t>(template: &'t str, req: &Request, headers: &Headers) -> Option<Cow<'t, str>> {
    if !template.contains('{') {
        return Some(Cow::Borrowed(template));
    }
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
            header if header.starts_with("header.") => headers.get(&header["header.".len()..])?,
            claim => req
                .identity()?
                .get(claim.strip_prefix("claim.")?)?
                .to_owned(),
        };
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}

/// The headers whose templates render, with their values.
fn render_all<'t>(
    templates: &'t BTreeMap<String, String>,
    req: &Request,
    headers: &Headers,
) -> Vec<(&'t str, Cow<'t, str>)> {
    (templates.iter())
        .filter_map(|(name, template)| Some((name.as_str(), render(template, req, headers)?)))
        .collect()
}

/// Every edit in one call to the gateway. A header whose template names
/// something the request lacks is left out; one the gateway refuses is
/// skipped, the others are made.
fn apply(edits: &Edits, headers: &Headers, req: &Request) {
    let rendered = |templates| render_all(templates, req, headers);
    let (sets, adds) = (rendered(&edits.set), rendered(&edits.add));
    let list: Vec<Edit> = (edits.remove.iter().map(|name| Edit::Remove(name)))
        .chain(sets.iter().map(|(name, value)| Edit::Set(name, value)))
        .chain(adds.iter().map(|(name, value)| Edit::Append(name, value)))
        .collect();
    let _ = headers.edit(&list);
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
