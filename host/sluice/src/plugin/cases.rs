//! `sluice plugin test`: load a component without a gateway, feed it the
//! requests a cases file describes, and check what it decides and edits.
//! The file is the same for a filter written in any language, so one
//! harness serves every language's project and CI.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use serde::Deserialize;
use sluice_control::config::EngineConfig;
use sluice_filter::config::PluginConfig;
use sluice_filter::{
    Answer, Capabilities, ConnectVerdict, Connection, Exchange, Filter, FilterEngine, Identity,
    ResponseAnswer, Services, StoreDecision,
};

/// A cases file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cases {
    /// The plugin's settings, as under `[plugins.NAME]` in a gateway's
    /// configuration, without `path` (grants, limits, failure policy).
    #[serde(default)]
    plugin: toml::Table,
    /// The route's configuration for the filter, given to `init` as JSON
    /// (a string is given as it is, as a route gives it to proxy-wasm filters).
    #[serde(default = "no_config")]
    config: toml::Value,
    /// Whether the filter reads and replaces bodies (the route's `body = true`).
    #[serde(default)]
    body: bool,
    #[serde(rename = "case")]
    cases: Vec<Case>,
}

fn no_config() -> toml::Value {
    toml::Value::Table(toml::Table::new())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// What a connection filter is called with (connection filters only).
    #[serde(default)]
    connection: ConnectionSpec,
    #[serde(default)]
    request: RequestSpec,
    /// The upstream's response: when given, and the request goes on, the
    /// filter's response call runs on it.
    response: Option<ResponseSpec>,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    #[serde(default = "get")]
    method: String,
    /// Path and query, as the client sent them.
    #[serde(default = "root")]
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, Values>,
    body: Option<String>,
    #[serde(default = "loopback")]
    client_ip: IpAddr,
    /// Set by an earlier auth filter.
    identity: Option<IdentitySpec>,
    #[serde(default = "route")]
    route: String,
}

impl Default for RequestSpec {
    fn default() -> RequestSpec {
        RequestSpec {
            method: get(),
            path: root(),
            headers: BTreeMap::new(),
            body: None,
            client_ip: loopback(),
            identity: None,
            route: route(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionSpec {
    #[serde(default = "loopback")]
    client_ip: IpAddr,
    #[serde(default = "client_port")]
    client_port: u16,
    #[serde(default = "listener")]
    listener: String,
    server_name: Option<String>,
    #[serde(default)]
    alpn: Vec<String>,
    #[serde(default = "one")]
    open_from_client: u32,
    /// What the listener's routes picked.
    #[serde(default = "default_upstream")]
    upstream: String,
}

impl Default for ConnectionSpec {
    fn default() -> ConnectionSpec {
        toml::from_str("").expect("every field has a default")
    }
}

fn client_port() -> u16 {
    40000
}
fn listener() -> String {
    "0.0.0.0:443".into()
}
fn one() -> u32 {
    1
}
fn default_upstream() -> String {
    "default".into()
}
fn get() -> String {
    "GET".into()
}
fn root() -> String {
    "/".into()
}
fn loopback() -> IpAddr {
    [127, 0, 0, 1].into()
}
fn route() -> String {
    "test".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentitySpec {
    subject: String,
    #[serde(default)]
    claims: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseSpec {
    #[serde(default = "ok")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, Values>,
    body: Option<String>,
}

fn ok() -> u16 {
    200
}

/// One header value, or several in order.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Values {
    One(String),
    Many(Vec<String>),
}

impl Values {
    fn list(&self) -> Vec<String> {
        match self {
            Values::One(v) => vec![v.clone()],
            Values::Many(vs) => vs.clone(),
        }
    }
}

/// What the filter should say. Only what is written is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `next`, `allow`, `reply`, `limit`, `rewrite`, `route`, `cache` or
    /// `bypass`; a connection filter's `allow`, `deny` or `route`.
    answer: String,
    /// `deny`: words its reason contains.
    reason: Option<String>,
    /// The reply's status.
    status: Option<u16>,
    /// Header fields of the reply, or of the request as it goes on.
    #[serde(default)]
    headers: BTreeMap<String, Values>,
    /// Header names that must not be there.
    #[serde(default)]
    absent: Vec<String>,
    /// The reply's body, or the request's as it goes on.
    body: Option<String>,
    /// `allow`: the identity.
    subject: Option<String>,
    #[serde(default)]
    claims: BTreeMap<String, String>,
    /// `rewrite`, `route`: the new path.
    path: Option<String>,
    /// `route`: the upstream.
    upstream: Option<String>,
    /// `limit`: the bucket key, or `cache`: the cache key.
    key: Option<String>,
    /// `limit`: the bucket.
    cost: Option<u32>,
    capacity: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    window: Option<Duration>,
    /// After the response call.
    response: Option<ExpectResponse>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectResponse {
    status: Option<u16>,
    #[serde(default)]
    headers: BTreeMap<String, Values>,
    #[serde(default)]
    absent: Vec<String>,
    body: Option<String>,
    /// Cache policy: `follow-upstream`, `skip`, or a time to keep it (`60s`).
    store: Option<String>,
}

/// Run every case in `cases_file` against `component`; prints a line per
/// case and fails if any case does.
pub async fn run(component: &Path, cases_file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(cases_file).with_context(|| format!("{}", cases_file.display()))?;
    let cases: Cases =
        toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", cases_file.display()))?;
    let filter = load(component, &cases)
        .await
        .with_context(|| format!("{}", component.display()))?;

    let mut failed = 0;
    for (i, case) in cases.cases.iter().enumerate() {
        match run_case(&filter, case, cases.body, i as u64 + 1).await {
            Ok(()) => println!("ok {} - {}", i + 1, case.name),
            Err(why) => {
                failed += 1;
                println!("not ok {} - {}\n    {why:#}", i + 1, case.name);
            }
        }
    }
    let total = cases.cases.len();
    println!("{total} cases: {} passed, {failed} failed", total - failed);
    match failed {
        0 => Ok(()),
        _ => Err(anyhow!("{failed} of {total} cases failed")),
    }
}

async fn load(component: &Path, cases: &Cases) -> anyhow::Result<Filter> {
    let bytes = std::fs::read(component)?;
    // The gateway's default compile cache: a second run starts at once.
    let engine = FilterEngine::new(EngineConfig::default().cache_dir().as_deref())?;
    let compiled = engine.compile(&bytes).map_err(anyhow::Error::msg)?;
    let mut settings = cases.plugin.clone();
    // The cases check behaviour, not speed: a machine busy with other work
    // should not fail them (a `call_timeout` in `[plugin]` still applies).
    settings
        .entry("call_timeout")
        .or_insert_with(|| "5s".into());
    settings.insert(
        "path".into(),
        component.to_string_lossy().into_owned().into(),
    );
    let config: PluginConfig =
        toml::from_str(&settings.to_string()).map_err(|e| anyhow!("[plugin]: {}", e.message()))?;
    let name = component
        .file_stem()
        .map_or("plugin".into(), |s| s.to_string_lossy());
    let caps = Capabilities::bind(&name, &config, &Services::standalone());
    let plugin = engine.load(&name, component, &compiled, &config, caps)?;
    let json = serde_json::to_string(&cases.config).expect("TOML values are JSON-representable");
    Ok(Filter::new(Arc::new(plugin), json, cases.body).await?)
}

async fn run_case(filter: &Filter, case: &Case, body: bool, id: u64) -> anyhow::Result<()> {
    if filter.kind().on_connections() {
        return run_connection_case(filter, case, id).await;
    }
    let mut exchange = exchange(&case.request, id)?;
    if body {
        exchange.request_body = Some(Bytes::from(
            case.request.body.clone().unwrap_or_default().into_bytes(),
        ));
    }
    let (answer, lease) = filter.on_request(&mut exchange).await?;
    let expect = &case.expect;
    check_answer(&answer, &exchange, expect)?;

    let Some(response) = &case.response else {
        return Ok(());
    };
    let goes_on = !matches!(answer, Answer::Reply(_));
    if !goes_on || !filter.has_response_phase() {
        return match &expect.response {
            Some(_) => Err(anyhow!(
                "[case.expect.response] given, but the response call did not run"
            )),
            None => Ok(()),
        };
    }
    let (mut parts, ()) = http::Response::builder()
        .status(response.status)
        .body(())?
        .into_parts();
    parts.headers = header_map(&response.headers)?;
    exchange.response = Some(parts);
    if body {
        exchange.response_body = Some(Bytes::from(
            response.body.clone().unwrap_or_default().into_bytes(),
        ));
    }
    let answered = filter.on_response(&mut exchange, lease).await?;
    if let Some(expect) = &expect.response {
        let parts = exchange.response.as_ref().expect("a response");
        check_status("response status", parts.status.as_u16(), expect.status)?;
        check_headers(&parts.headers, &expect.headers, &expect.absent)?;
        check_body(exchange.response_body.as_deref(), expect.body.as_deref())?;
        if let Some(store) = &expect.store {
            check_store(answered, store)?;
        }
    }
    Ok(())
}

/// A connection filter's case: its call on `case.connection`, and its verdict.
async fn run_connection_case(filter: &Filter, case: &Case, id: u64) -> anyhow::Result<()> {
    let spec = &case.connection;
    let conn = Connection {
        id,
        client: (spec.client_ip, spec.client_port).into(),
        listener: spec.listener.clone(),
        server_name: spec.server_name.clone(),
        alpn: spec.alpn.clone(),
        open_from_client: spec.open_from_client,
        upstream: spec.upstream.clone(),
    };
    let verdict = filter.on_connect(&conn).await?;
    let expect = &case.expect;
    let said = match &verdict {
        ConnectVerdict::Allow => "allow",
        ConnectVerdict::Deny(_) => "deny",
        ConnectVerdict::Route(_) => "route",
    };
    if said != expect.answer {
        return Err(anyhow!(
            "expected answer `{}`, the filter answered {verdict:?}",
            expect.answer
        ));
    }
    match &verdict {
        ConnectVerdict::Route(upstream) => check_eq("upstream", upstream, expect.upstream.as_ref()),
        ConnectVerdict::Deny(why) => match &expect.reason {
            Some(words) if !why.contains(words.as_str()) => {
                Err(anyhow!("expected a reason with {words:?}, got {why:?}"))
            }
            _ => Ok(()),
        },
        ConnectVerdict::Allow => Ok(()),
    }
}

fn exchange(spec: &RequestSpec, id: u64) -> anyhow::Result<Box<Exchange>> {
    let (mut parts, ()) = http::Request::builder()
        .method(spec.method.as_str())
        .uri(spec.path.as_str())
        .body(())
        .map_err(|e| anyhow!("[case.request]: {e}"))?
        .into_parts();
    parts.headers = header_map(&spec.headers)?;
    let mut exchange = Box::new(Exchange::new(
        id,
        parts,
        spec.client_ip,
        spec.route.as_str().into(),
    ));
    exchange.identity = spec.identity.as_ref().map(|i| Identity {
        subject: i.subject.clone(),
        claims: i.claims.clone().into_iter().collect(),
    });
    Ok(exchange)
}

/// Header fields as a cases file writes them.
fn header_map(fields: &BTreeMap<String, Values>) -> anyhow::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, values) in fields {
        let name = HeaderName::try_from(name.as_str())?;
        for value in values.list() {
            map.append(&name, value.as_str().try_into()?);
        }
    }
    Ok(map)
}

fn check_answer(answer: &Answer, exchange: &Exchange, expect: &Expect) -> anyhow::Result<()> {
    let said = match answer {
        Answer::Next => "next",
        Answer::Allow(_) => "allow",
        Answer::Reply(_) => "reply",
        Answer::Limit(_) => "limit",
        Answer::Rewrite(_) => "rewrite",
        Answer::Route { .. } => "route",
        Answer::CacheKey(Some(_)) => "cache",
        Answer::CacheKey(None) => "bypass",
    };
    if said != expect.answer {
        return Err(anyhow!(
            "expected answer `{}`, the filter answered {}",
            expect.answer,
            describe(answer)
        ));
    }
    match answer {
        Answer::Reply(reply) => {
            check_status("reply status", reply.status, expect.status)?;
            let mut headers = HeaderMap::new();
            for (name, value) in &reply.headers {
                headers.append(
                    HeaderName::try_from(name.as_str())?,
                    value.as_str().try_into()?,
                );
            }
            check_headers(&headers, &expect.headers, &expect.absent)?;
            return check_body(Some(&reply.body), expect.body.as_deref());
        }
        Answer::Allow(identity) => {
            check_eq("subject", &identity.subject, expect.subject.as_ref())?;
            for (claim, value) in &expect.claims {
                let got = identity.claims.iter().find(|(c, _)| c == claim);
                check_eq(
                    &format!("claim `{claim}`"),
                    &got.map(|(_, v)| v.clone()),
                    Some(&Some(value.clone())),
                )?;
            }
        }
        Answer::Limit(limit) => {
            check_eq("limit key", &limit.key, expect.key.as_ref())?;
            check_eq("limit cost", &limit.cost, expect.cost.as_ref())?;
            check_eq("limit capacity", &limit.capacity, expect.capacity.as_ref())?;
            check_eq("limit window", &limit.window, expect.window.as_ref())?;
        }
        Answer::Rewrite(path) => check_eq("rewritten path", path, expect.path.as_ref())?,
        Answer::Route { upstream, rewrite } => {
            check_eq("upstream", upstream, expect.upstream.as_ref())?;
            if let Some(path) = &expect.path {
                check_eq("rewritten path", rewrite, Some(&Some(path.clone())))?;
            }
        }
        Answer::CacheKey(key) => {
            if let Some(expected) = &expect.key {
                check_eq("cache key", key, Some(&Some(expected.clone())))?;
            }
        }
        Answer::Next => {}
    }
    // The request as it goes on, with the filter's edits.
    check_headers(&exchange.request.headers, &expect.headers, &expect.absent)?;
    check_body(exchange.request_body.as_deref(), expect.body.as_deref())
}

fn describe(answer: &Answer) -> String {
    match answer {
        Answer::Reply(reply) => format!(
            "`reply` {} {:?}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ),
        other => format!("{other:?}"),
    }
}

fn check_eq<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: &T,
    expected: Option<&T>,
) -> anyhow::Result<()> {
    match expected {
        Some(expected) if expected != got => {
            Err(anyhow!("expected {what} {expected:?}, got {got:?}"))
        }
        _ => Ok(()),
    }
}

fn check_status(what: &str, got: u16, expected: Option<u16>) -> anyhow::Result<()> {
    check_eq(what, &got, expected.as_ref())
}

fn check_headers(
    headers: &HeaderMap,
    expected: &BTreeMap<String, Values>,
    absent: &[String],
) -> anyhow::Result<()> {
    for (name, values) in expected {
        let got: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        check_eq(&format!("header `{name}`"), &got, Some(&values.list()))?;
    }
    for name in absent {
        if let Some(value) = headers.get(name.as_str()) {
            return Err(anyhow!("expected no header `{name}`, got {value:?}"));
        }
    }
    Ok(())
}

fn check_body(got: Option<&[u8]>, expected: Option<&str>) -> anyhow::Result<()> {
    match expected {
        Some(expected) if got.unwrap_or_default() != expected.as_bytes() => Err(anyhow!(
            "expected body {expected:?}, got {:?}",
            String::from_utf8_lossy(got.unwrap_or_default())
        )),
        _ => Ok(()),
    }
}

fn check_store(answered: ResponseAnswer, expected: &str) -> anyhow::Result<()> {
    let got = match answered {
        ResponseAnswer::Store(StoreDecision::FollowUpstream) => "follow-upstream".to_owned(),
        ResponseAnswer::Store(StoreDecision::Skip) => "skip".to_owned(),
        ResponseAnswer::Store(StoreDecision::Ttl(ttl)) => {
            humantime::format_duration(ttl).to_string()
        }
        other => format!("{other:?}"),
    };
    let normal = match humantime::parse_duration(expected) {
        Ok(ttl) => humantime::format_duration(ttl).to_string(),
        Err(_) => expected.to_owned(),
    };
    check_eq("store decision", &got, Some(&normal))
}
