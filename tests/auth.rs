//! Auth plugins end to end: `jwt-auth` with tokens signed here by a real JWT
//! library (RS256, ES256, HS256, JWKS), and `ext-auth` asking a real auth
//! service over the gateway's outbound HTTP.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sluice_tests::{Gateway, Reply, Upstream, get, get_bearer, plugin, toml_str, unix_now};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Claims that pass the `/rs` route's checks; tests spoil one at a time.
fn good_claims() -> Value {
    json!({
        "sub": "alice",
        "plan": "gold",
        "iss": "https://idp.test",
        "aud": "orders-api",
        "exp": unix_now() + 600,
        "scope": "orders:read profile",
    })
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("the token signs")
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture("rsa.key")).expect("RSA key")
}

/// The RFC 6750 error code in `WWW-Authenticate`, if any.
fn bearer_error(reply: &Reply) -> String {
    let challenge = reply.header("www-authenticate");
    assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    challenge
        .split("error=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_verifies_signatures_times_issuer_audience_and_scopes() {
    let up = Upstream::start("a").await;
    let rsa_pub = String::from_utf8(fixture("rsa.pub")).unwrap();
    let ec_pub = String::from_utf8(fixture("ec.pub")).unwrap();
    let jwks = JwkSet {
        keys: vec![{
            let mut jwk = Jwk::from_encoding_key(&rsa(), Algorithm::RS256).unwrap();
            jwk.common.key_id = Some("k1".into());
            jwk
        }],
    };
    let jwks = serde_json::to_string(&jwks).unwrap();
    let common = r#"issuers = ["https://idp.test"], audiences = ["orders-api"], claims = ["plan"], leeway_secs = 5"#;
    let identity = r#"{ plugin = "headers", config = { request = { set = { x-user = "{identity}", x-plan = "{claim.plan}" } } } }"#;
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
match = {{ path_prefix = "/rs" }}
upstream = "a"
filters = [{{ plugin = "jwt", config = {{ keys = [{{ alg = "RS256", pem = {rsa_pub} }}], {common} }} }}, {identity}]

[[routes]]
match = {{ path_prefix = "/es" }}
upstream = "a"
filters = [{{ plugin = "jwt", config = {{ keys = [{{ pem = {ec_pub} }}], {common} }} }}, {identity}]

[[routes]]
match = {{ path_prefix = "/hs" }}
upstream = "a"
filters = [{{ plugin = "jwt", config = {{ keys = [{{ secret = "s3cret-shared-by-issuer-and-gateway" }}], {common} }} }}, {identity}]

[[routes]]
match = {{ path_prefix = "/jwks" }}
upstream = "a"
filters = [{{ plugin = "jwt", config = {{ jwks = {jwks}, {common} }} }}, {identity}]

[[routes]]
match = {{ path_prefix = "/scoped" }}
upstream = "a"
filters = [{{ plugin = "jwt", config = {{ keys = [{{ pem = {rsa_pub} }}], required_scopes = ["orders:write"], {common} }} }}]
"#,
        jwt = plugin("jwt-auth"),
        headers = plugin("headers"),
        up = up.addr,
        rsa_pub = toml_str(&rsa_pub),
        ec_pub = toml_str(&ec_pub),
        jwks = toml_str(&jwks),
    ))
    .await
    .unwrap();

    // Valid tokens of each kind: the identity and its claim reach the
    // upstream, the token does not.
    let good = good_claims();
    let es = EncodingKey::from_ec_pem(&fixture("ec.key")).unwrap();
    let hs = EncodingKey::from_secret(b"s3cret-shared-by-issuer-and-gateway");
    for (path, token) in [
        ("/rs", sign(Algorithm::RS256, &rsa(), None, &good)),
        ("/es", sign(Algorithm::ES256, &es, None, &good)),
        ("/hs", sign(Algorithm::HS256, &hs, None, &good)),
        ("/jwks", sign(Algorithm::RS256, &rsa(), Some("k1"), &good)),
    ] {
        let reply = get_bearer(&gw, path, &token).await;
        assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
        assert_eq!(reply.echoed("x-user"), ["alice"], "{path}");
        assert_eq!(reply.echoed("x-plan"), ["gold"], "{path}");
        assert!(reply.echoed("authorization").is_empty(), "{path}");
    }

    // Each spoilt token is refused with `invalid_token` and a reason.
    let spoilt = |field: &str, value: Value| {
        let mut claims = good_claims();
        claims[field] = value;
        claims
    };
    let other = EncodingKey::from_rsa_pem(&fixture("other-rsa.key")).unwrap();
    let cases = [
        (
            "expired",
            sign(
                Algorithm::RS256,
                &rsa(),
                None,
                &spoilt("exp", json!(unix_now() - 60)),
            ),
            "expired",
        ),
        (
            "wrong audience",
            sign(
                Algorithm::RS256,
                &rsa(),
                None,
                &spoilt("aud", json!("billing-api")),
            ),
            "audience",
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                &rsa(),
                None,
                &spoilt("iss", json!("https://evil.test")),
            ),
            "issuer",
        ),
        (
            "not yet valid",
            sign(
                Algorithm::RS256,
                &rsa(),
                None,
                &spoilt("nbf", json!(unix_now() + 600)),
            ),
            "not valid yet",
        ),
        (
            "wrong key",
            sign(Algorithm::RS256, &other, None, &good),
            "signature",
        ),
        // An HS256 token must not be checked against the RSA key as a secret.
        (
            "algorithm swap",
            sign(Algorithm::HS256, &hs, None, &good),
            "no key",
        ),
        ("garbage", "not.a.jwt".to_owned(), "malformed"),
    ];
    for (case, token, reason) in cases {
        let reply = get_bearer(&gw, "/rs", &token).await;
        assert_eq!(reply.status, 401, "{case}");
        assert_eq!(bearer_error(&reply), "invalid_token", "{case}");
        let description = reply.json()["error_description"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(description.contains(reason), "{case}: {description}");
    }
    assert_eq!(up.hits(), 4, "refused requests never reach the upstream");

    // Within the leeway, a just-expired token still passes.
    let lenient = sign(
        Algorithm::RS256,
        &rsa(),
        None,
        &spoilt("exp", json!(unix_now() - 2)),
    );
    assert_eq!(get_bearer(&gw, "/rs", &lenient).await.status, 200);
    // A JWKS key is picked by `kid`; an unknown `kid` finds no key.
    let unknown_kid = sign(Algorithm::RS256, &rsa(), Some("k9"), &good);
    assert_eq!(get_bearer(&gw, "/jwks", &unknown_kid).await.status, 401);

    // No token: a bare challenge. An empty one: `invalid_request` (400).
    let bare = get(&gw.url("/rs"), &[]).await;
    assert_eq!(bare.status, 401);
    assert_eq!(bare.header("www-authenticate"), r#"Bearer realm="sluice""#);
    let empty = get(&gw.url("/rs"), &[("authorization", "Bearer ")]).await;
    assert_eq!(empty.status, 400);
    assert_eq!(bearer_error(&empty), "invalid_request");

    // A valid token without the required scope: 403 `insufficient_scope`.
    let reply = get_bearer(&gw, "/scoped", &sign(Algorithm::RS256, &rsa(), None, &good)).await;
    assert_eq!(reply.status, 403);
    assert_eq!(bearer_error(&reply), "insufficient_scope");
    assert!(
        reply
            .header("www-authenticate")
            .contains(r#"scope="orders:write""#)
    );
    let writer = spoilt("scope", json!("orders:read orders:write"));
    let reply = get_bearer(
        &gw,
        "/scoped",
        &sign(Algorithm::RS256, &rsa(), None, &writer),
    )
    .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn jwt_auth_rejects_bad_key_configuration_at_load() {
    let error = Gateway::start(&format!(
        r#"[plugins.jwt]
path = "{}"
grants = ["crypto"]
deny = ["http", "metrics"]
[upstreams.a]
targets = ["127.0.0.1:1"]
[[routes]]
upstream = "a"
filters = [{{ plugin = "jwt", config = {{ keys = [{{ pem = "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----" }}] }} }}]
"#,
        plugin("jwt-auth")
    ))
    .await
    .err()
    .expect("a broken key is refused")
    .to_string();
    assert!(error.contains("sluice.toml:12"), "{error}");
    assert!(error.contains("rejected its configuration"), "{error}");
    assert!(error.contains("pem"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_auth_asks_the_auth_service_and_caches_its_allows() {
    let up = Upstream::start("a").await;
    // The auth service: knows one token, and checks it was told the original request.
    let auth = Upstream::start_with("auth", |head| {
        let told = head.headers.contains_key("x-original-uri")
            && head.headers.contains_key("x-original-method");
        match head
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        {
            Some("Bearer good") if told => (
                200,
                vec![
                    ("x-auth-subject", "alice".into()),
                    ("x-auth-plan", "gold".into()),
                    ("x-auth-tenant", "t-7".into()),
                ],
                String::new(),
            ),
            _ => (
                401,
                vec![
                    ("www-authenticate", r#"Bearer realm="auth""#.into()),
                    ("content-type", "application/json".into()),
                ],
                r#"{"error":"unknown token"}"#.into(),
            ),
        }
    })
    .await;
    let gw = Gateway::start(&format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[plugins.ext]
path = "{ext}"
grants = ["http:authsvc", "kv", "metrics"]
[plugins.ungranted]
path = "{ext}"
deny = ["http", "kv", "metrics"]
[plugins.headers]
path = "{headers}"

[upstreams.a]
targets = ["{up}"]
[upstreams.authsvc]
targets = ["{auth}"]
[upstreams.dead]
targets = ["127.0.0.1:1"]

[[routes]]
match = {{ path_prefix = "/api" }}
upstream = "a"
filters = [
  {{ plugin = "ext", config = {{ upstream = "authsvc", path = "/check", cache_ttl_ms = 60000, claim_headers = {{ x-auth-plan = "plan" }}, upstream_headers = ["x-auth-tenant"], metrics = true }} }},
  {{ plugin = "headers", config = {{ request = {{ set = {{ x-user = "{{identity}}", x-plan = "{{claim.plan}}" }} }} }} }},
]

[[routes]]
match = {{ path_prefix = "/down" }}
upstream = "a"
filters = [{{ plugin = "ext", config = {{ upstream = "dead" }} }}]

[[routes]]
match = {{ path_prefix = "/ungranted" }}
upstream = "a"
filters = [{{ plugin = "ungranted", config = {{ upstream = "authsvc" }} }}]
"#,
        ext = plugin("ext-auth"),
        headers = plugin("headers"),
        up = up.addr,
        auth = auth.addr,
    ))
    .await
    .unwrap();

    let good = [("authorization", "Bearer good")];
    let reply = get(&gw.url("/api/orders?page=2"), &good).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.echoed("x-user"), ["alice"]);
    assert_eq!(reply.echoed("x-plan"), ["gold"]);
    assert_eq!(reply.echoed("x-auth-tenant"), ["t-7"]);
    assert_eq!(auth.hits(), 1);

    // The allow is cached in the key-value store: the auth service is not asked again.
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/api/orders"), &good).await.status, 200);
    }
    assert_eq!(auth.hits(), 1);

    // Its refusals are passed on as they are, and never cached.
    for _ in 0..2 {
        let reply = get(&gw.url("/api/orders"), &[("authorization", "Bearer bad")]).await;
        assert_eq!(reply.status, 401);
        assert_eq!(reply.header("www-authenticate"), r#"Bearer realm="auth""#);
        assert_eq!(reply.json()["error"], "unknown token");
    }
    assert_eq!(auth.hits(), 3);
    assert_eq!(up.hits(), 6);

    // An unreachable auth service, or one the plugin was not granted: 503, fail closed.
    let down = get(&gw.url("/down"), &good).await;
    assert_eq!(down.status, 503);
    assert_eq!(down.json()["error"], "auth_unavailable");
    let ungranted = get(&gw.url("/ungranted"), &good).await;
    assert_eq!(ungranted.status, 503);
    assert_eq!(auth.hits(), 3, "an ungranted call never leaves the gateway");
    assert_eq!(up.hits(), 6);

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            r#"sluice_capability_denied_total{plugin="ungranted",grant="http:authsvc"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"sluice_plugin_ext_auth_decisions_total{plugin="ext",result="allowed"} 6"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_plugin_ext_auth_seconds_count{plugin="ext"} 3"#),
        "{metrics}"
    );
}
