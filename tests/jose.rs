//! `jwt-auth` on the gateway's native crypto, against tokens from a real JOSE
//! library (PyJWT): every algorithm it accepts, tampered and expired tokens,
//! keys fetched from an identity provider (OpenID discovery, rotation, an
//! outage), and the token cache, which never outlives a token's `exp`.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::{Gateway, Reply, Upstream, get_bearer, plugin, toml_str, unix_now};

/// Keys and tokens made by `tests/python/jose_tokens.py` from `spec`.
struct Jose {
    keys: Value,
    tokens: Vec<String>,
}

fn jose(spec: &Value) -> Jose {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/jose_tokens.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs (PyJWT: pip install -r tests/python/requirements.txt)");
    serde_json::to_writer(child.stdin.take().expect("stdin"), spec).expect("spec written");
    let out = child.wait_with_output().expect("the script ends");
    assert!(out.status.success(), "jose_tokens.py failed");
    let mut made: Value = serde_json::from_slice(&out.stdout).expect("JSON out");
    Jose {
        keys: made["keys"].take(),
        tokens: serde_json::from_value(made["tokens"].take()).expect("tokens"),
    }
}

impl Jose {
    /// A key's public JWK, with `kid` set.
    fn jwk(&self, name: &str, kid: &str) -> Value {
        let mut jwk = self.keys[name]["jwk"].clone();
        jwk["kid"] = json!(kid);
        jwk
    }

    fn text(&self, name: &str, field: &str) -> String {
        self.keys[name][field]
            .as_str()
            .expect("a text field")
            .to_owned()
    }
}

fn description(reply: &Reply) -> String {
    reply.json()["error_description"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

const IDENTITY: &str =
    r#"{ plugin = "headers", config = { request = { set = { x-user = "{identity}" } } } }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_every_algorithm_verify_and_spoilt_ones_are_refused() {
    let keys = json!({
        "rs": "RSA", "rs-other": "RSA", "p256": "P-256", "p256-other": "P-256",
        "p384": "P-384", "ed": "Ed25519", "ed-other": "Ed25519", "hs": "oct",
    });
    let algorithms = [
        ("HS256", "hs", "hs"),
        ("HS384", "hs", "hs"),
        ("HS512", "hs", "hs"),
        ("RS256", "rs", "rs-other"),
        ("RS384", "rs", "rs-other"),
        ("RS512", "rs", "rs-other"),
        ("PS256", "rs", "rs-other"),
        ("PS384", "rs", "rs-other"),
        ("PS512", "rs", "rs-other"),
        ("ES256", "p256", "p256-other"),
        ("ES384", "p384", "p384"),
        ("EdDSA", "ed", "ed-other"),
    ];
    let good = json!({ "sub": "alice", "exp": unix_now() + 600 });
    let expired = json!({ "sub": "alice", "exp": unix_now() - 600 });
    let mut tokens = Vec::new();
    for (alg, key, other) in algorithms {
        let token = |key: &str, claims: &Value, tamper: bool| json!({ "key": key, "alg": alg, "kid": key.split('-').next(), "claims": claims, "tamper": tamper });
        tokens.push(token(key, &good, false));
        tokens.push(token(key, &good, true));
        tokens.push(token(key, &expired, false));
        tokens.push(token(other, &good, false));
    }
    let made = jose(&json!({ "keys": keys, "tokens": tokens }));
    let published = ["rs", "p256", "p384", "ed"].map(|k| made.jwk(k, k));
    let jwks = json!({ "keys": published });
    let secret = toml_str(&made.text("hs", "secret"));
    let pems: Vec<String> = ["rs", "p256", "p384", "ed"]
        .iter()
        .map(|k| format!("{{ pem = {} }}", toml_str(&made.text(k, "pem"))))
        .collect();
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"[plugins.jwt]
path = "{jwt}"
grants = ["crypto"]
deny = ["http", "metrics"]
[plugins.headers]
path = "{headers}"
[upstreams.a]
targets = ["{up}"]

[[routes]]
match = {{ path_prefix = "/jwks" }}
upstream = "a"
filters = [{{ plugin = "jwt", config = {{ jwks = {jwks}, keys = [{{ kid = "hs", secret = {secret} }}], leeway_secs = 5 }} }}, {IDENTITY}]

[[routes]]
match = {{ path_prefix = "/pem" }}
upstream = "a"
filters = [{{ plugin = "jwt", config = {{ keys = [{pems}, {{ secret = {secret} }}], leeway_secs = 5 }} }}, {IDENTITY}]
"#,
        jwt = plugin("jwt-auth"),
        headers = plugin("headers"),
        up = up.addr,
        jwks = toml_str(&jwks.to_string()),
        pems = pems.join(", "),
    ))
    .await
    .unwrap();

    for (i, (alg, _, other)) in algorithms.iter().enumerate() {
        let [good, tampered, expired, foreign] = &made.tokens[i * 4..i * 4 + 4] else {
            unreachable!("four tokens per algorithm")
        };
        for route in ["/jwks", "/pem"] {
            let reply = get_bearer(&gw, route, good).await;
            assert_eq!(reply.status, 200, "{alg} on {route}: {:?}", reply.body);
            assert_eq!(reply.echoed("x-user"), ["alice"], "{alg} on {route}");
            let refused = [
                (tampered, "signature does not verify"),
                (expired, "expired"),
            ];
            for (token, reason) in refused {
                let reply = get_bearer(&gw, route, token).await;
                assert_eq!(reply.status, 401, "{alg} on {route}, {reason}");
                assert!(
                    description(&reply).contains(reason),
                    "{alg}: {}",
                    description(&reply)
                );
            }
            // Signed by a key of the same type that the gateway does not have
            // (ES384 has no other key here: its own token stands in).
            if *other != "p384" && *other != "hs" {
                let reply = get_bearer(&gw, route, foreign).await;
                assert_eq!(reply.status, 401, "{alg} on {route}, foreign key");
            }
        }
    }
    // Two requests per good token reached the upstream, nothing else.
    assert_eq!(up.hits(), algorithms.len() * 2);
}

/// An identity provider: OpenID discovery and a JWK set the test changes,
/// or a 503 while it is "down".
struct Provider {
    jwks: Arc<Mutex<Value>>,
    down: Arc<Mutex<bool>>,
    upstream: Upstream,
}

impl Provider {
    async fn start(jwks: Value) -> Provider {
        let jwks = Arc::new(Mutex::new(jwks));
        let down = Arc::new(Mutex::new(false));
        let (set, is_down) = (jwks.clone(), down.clone());
        let upstream = Upstream::start_with("idp", move |head| {
            let json = vec![("content-type", "application/json".to_owned())];
            if *is_down.lock().unwrap() {
                return (503, json, "{}".into());
            }
            match head.uri.path() {
                "/.well-known/openid-configuration" => (
                    200,
                    json,
                    json!({ "issuer": "https://idp.test", "jwks_uri": "https://idp.test/oauth/keys" })
                        .to_string(),
                ),
                "/oauth/keys" => (200, json, set.lock().unwrap().to_string()),
                _ => (404, json, "{}".into()),
            }
        })
        .await;
        Provider {
            jwks,
            down,
            upstream,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_openid_discovery_rotate_and_survive_an_outage() {
    let claims = json!({ "sub": "alice", "iss": "https://idp.test", "exp": unix_now() + 600 });
    let stranger = json!({ "sub": "alice", "iss": "https://evil.test", "exp": unix_now() + 600 });
    let made = jose(&json!({
        "keys": { "k1": "RSA", "k2": "P-256", "k3": "RSA" },
        "tokens": [
            { "key": "k1", "alg": "RS256", "kid": "k1", "claims": claims },
            { "key": "k2", "alg": "ES256", "kid": "k2", "claims": claims },
            { "key": "k3", "alg": "RS256", "kid": "k3", "claims": claims },
            { "key": "k1", "alg": "RS256", "kid": "k1", "claims": stranger },
        ],
    }));
    let [k1, k2, k3, wrong_issuer] = &made.tokens[..] else {
        unreachable!("four tokens")
    };
    let idp = Provider::start(json!({ "keys": [made.jwk("k1", "k1")] })).await;
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"[plugins.jwt]
path = "{jwt}"
grants = ["crypto", "http:idp"]
deny = ["metrics"]
# One instance, so each step below meets the same key set and cache.
max_concurrency = 1
[plugins.headers]
path = "{headers}"
[upstreams.a]
targets = ["{up}"]
[upstreams.idp]
targets = ["{idp}"]

[[routes]]
upstream = "a"
filters = [{{ plugin = "jwt", config = {{ jwks_from = {{ upstream = "idp", path = "/.well-known/openid-configuration", refresh_secs = 3600, min_refresh_secs = 0 }} }} }}, {IDENTITY}]
"#,
        jwt = plugin("jwt-auth"),
        headers = plugin("headers"),
        up = up.addr,
        idp = idp.upstream.addr,
    ))
    .await
    .unwrap();

    // The discovered set verifies k1's tokens; the discovered issuer is required.
    assert_eq!(get_bearer(&gw, "/", k1).await.status, 200);
    let reply = get_bearer(&gw, "/", wrong_issuer).await;
    assert_eq!(reply.status, 401);
    assert!(
        description(&reply).contains("issuer"),
        "{}",
        description(&reply)
    );
    // k2 is unknown: looked for (a fetch), not found.
    let fetches = idp.upstream.hits();
    let reply = get_bearer(&gw, "/", k2).await;
    assert_eq!(reply.status, 401);
    assert!(
        description(&reply).contains("no key"),
        "{}",
        description(&reply)
    );
    assert_eq!(idp.upstream.hits(), fetches + 2, "discovery, then the set");

    // Rotation: the provider publishes k2 and drops k1. A k2 token brings
    // in the new set; k1's tokens, even the one verified (and cached)
    // before, are refused from then on.
    *idp.jwks.lock().unwrap() = json!({ "keys": [made.jwk("k2", "k2")] });
    let reply = get_bearer(&gw, "/", k2).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.echoed("x-user"), ["alice"]);
    assert_eq!(
        get_bearer(&gw, "/", k1).await.status,
        401,
        "a dropped key's token"
    );

    // The provider goes down: the last good set keeps serving, and a token
    // with an unknown key is refused (the failed fetch is only logged).
    *idp.down.lock().unwrap() = true;
    assert_eq!(get_bearer(&gw, "/", k3).await.status, 401);
    assert_eq!(
        get_bearer(&gw, "/", k2).await.status,
        200,
        "the last good set"
    );
    // Back up, with k3 added: found on the next unknown kid.
    *idp.jwks.lock().unwrap() = json!({ "keys": [made.jwk("k2", "k2"), made.jwk("k3", "k3")] });
    *idp.down.lock().unwrap() = false;
    assert_eq!(get_bearer(&gw, "/", k3).await.status, 200);
    assert_eq!(get_bearer(&gw, "/", k2).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_cache_never_accepts_a_token_past_its_exp() {
    let exp = unix_now() + 3;
    let made = jose(&json!({
        "keys": { "rs": "RSA" },
        "tokens": [{ "key": "rs", "alg": "RS256", "claims": { "sub": "alice", "exp": exp } }],
    }));
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[plugins.jwt]
path = "{jwt}"
grants = ["crypto", "metrics"]
deny = ["http"]
[upstreams.a]
targets = ["{up}"]
[[routes]]
upstream = "a"
filters = [{{ plugin = "jwt", config = {{ keys = [{{ pem = {pem} }}], leeway_secs = 0, metrics = true }} }}]
"#,
        jwt = plugin("jwt-auth"),
        up = up.addr,
        pem = toml_str(&made.text("rs", "pem")),
    ))
    .await
    .unwrap();
    let token = &made.tokens[0];
    for _ in 0..20 {
        assert_eq!(get_bearer(&gw, "/", token).await.status, 200);
    }
    let metrics = gw.metrics().await;
    let hits = metrics
        .lines()
        .find(|l| l.contains("jwt_auth_decisions") && l.contains("result=\"cached\""))
        .unwrap_or_else(|| panic!("no cache hits counted:\n{metrics}"));
    let count: f64 = hits.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 10.0, "most of the 20 come from the cache: {hits}");
    while unix_now() < exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = get_bearer(&gw, "/", token).await;
    assert_eq!(reply.status, 401, "a cached token past its exp");
    assert!(description(&reply).contains("expired"));
}
