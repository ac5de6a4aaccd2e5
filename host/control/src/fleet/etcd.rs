//! etcd v3 through its JSON gateway (`/v3/...`, which etcd 3.4 serves on
//! its client port): ranges, transactions, leases and watches, over the
//! gateway's HTTP stack and rustls, without a gRPC toolchain. Keys and
//! values travel base64-encoded and 64-bit numbers as strings, as
//! protobuf's JSON mapping has them.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::oci::transport::exchange;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port`, tried in turn.
    pub endpoints: Vec<String>,
    /// The CA for `https` endpoints (the system's roots without it).
    pub ca: Option<PathBuf>,
    /// A client certificate and key, for etcd's `--client-cert-auth`.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// etcd's user and password, when its auth is on.
    pub user: Option<(String, String)>,
    /// The longest one call may take (watches excepted).
    pub timeout: Duration,
}

/// Why etcd did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint could be reached, or it did not answer in time.
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// etcd answered with an error.
    #[error("etcd: {0}")]
    Refused(String),
}

/// One key's value and its place in etcd's history.
#[derive(Debug, Clone)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: Bytes,
    /// The revision that created it.
    pub create_revision: i64,
    /// The revision that last changed it.
    pub mod_revision: i64,
    /// How many times it was written since created.
    pub version: i64,
}

/// What a watch saw.
pub enum WatchEvent {
    /// Keys written (`Some`) or deleted (`None`), at a revision.
    Changed(Vec<(Kv, bool)>),
    /// The revision asked for is compacted away: read again from scratch.
    Compacted(i64),
}

/// A watch's stream of events: newline-separated JSON messages.
pub struct Watch {
    body: hyper::body::Incoming,
    buffer: BytesMut,
}

impl Watch {
    /// The next batch of changes; an error when the stream ends.
    pub async fn next(&mut self) -> Result<WatchEvent, EtcdError> {
        loop {
            while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(end + 1);
                let message: Value = serde_json::from_slice(line.chunk())
                    .map_err(|e| EtcdError::Refused(format!("a watch message: {e}")))?;
                if let Some(error) = message.get("error") {
                    return Err(EtcdError::Refused(error.to_string()));
                }
                let result = &message["result"];
                if let Some(compacted) = int(&result["compact_revision"]).filter(|r| *r > 0) {
                    return Ok(WatchEvent::Compacted(compacted));
                }
                let events: Vec<(Kv, bool)> = result["events"]
                    .as_array()
                    .map(|events| {
                        events
                            .iter()
                            .filter_map(|e| Some((kv(&e["kv"])?, e["type"] != "DELETE")))
                            .collect()
                    })
                    .unwrap_or_default();
                if !events.is_empty() {
                    return Ok(WatchEvent::Changed(events));
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(EtcdError::Unreachable(e.to_string())),
                None => return Err(EtcdError::Unreachable("the watch ended".into())),
            }
        }
    }
}

/// An etcd client.
pub struct Etcd {
    options: EtcdOptions,
    tls: TlsConnector,
    token: Mutex<Option<String>>,
}

impl Etcd {
    /// A client for `options` (nothing is connected yet).
    pub fn new(options: EtcdOptions) -> Result<Etcd, String> {
        let identity = options
            .identity
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        let tls = sluice_proxy::tls::connector(options.ca.as_deref(), identity, &[b"http/1.1"])?;
        Ok(Etcd {
            options,
            tls,
            token: Mutex::new(None),
        })
    }

    /// The value of `key` and the store's revision, at `revision` (0: now).
    pub async fn get(&self, key: &str, revision: i64) -> Result<(Option<Kv>, i64), EtcdError> {
        let mut body = json!({ "key": b64(key) });
        if revision > 0 {
            body["revision"] = json!(revision.to_string());
        }
        let answer = self.call("/v3/kv/range", body).await?;
        let kv = kvs(&answer).into_iter().next();
        Ok((kv, revision_of(&answer)))
    }

    /// Every key under `prefix`, and the store's revision.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), EtcdError> {
        let body = json!({ "key": b64(prefix), "range_end": b64(&range_end(prefix)) });
        let answer = self.call("/v3/kv/range", body).await?;
        Ok((kvs(&answer), revision_of(&answer)))
    }

    /// Put `value` at `key`, tied to `lease` if given.
    pub async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": b64(key), "value": B64.encode(value) });
        if let Some(lease) = lease {
            body["lease"] = json!(lease.to_string());
        }
        let answer = self.call("/v3/kv/put", body).await?;
        Ok(revision_of(&answer))
    }

    /// Put every `(key, value)` at once, if `key`'s version is still
    /// `version` (0: it does not exist). The revision written, or `None`
    /// when the version moved.
    pub async fn put_if_version(
        &self,
        key: &str,
        version: i64,
        puts: &[(String, Vec<u8>)],
    ) -> Result<Option<i64>, EtcdError> {
        let success: Vec<Value> = puts
            .iter()
            .map(|(k, v)| json!({ "request_put": { "key": b64(k), "value": B64.encode(v) } }))
            .collect();
        let body = json!({
            "compare": [{ "key": b64(key), "target": "VERSION", "result": "EQUAL", "version": version.to_string() }],
            "success": success,
        });
        let answer = self.call("/v3/kv/txn", body).await?;
        Ok(answer["succeeded"]
            .as_bool()
            .unwrap_or(false)
            .then(|| revision_of(&answer)))
    }

    /// A lease of `ttl`; its id.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let answer = self
            .call(
                "/v3/lease/grant",
                json!({ "TTL": ttl.as_secs().to_string() }),
            )
            .await?;
        int(&answer["ID"]).ok_or_else(|| EtcdError::Refused("a lease without an id".into()))
    }

    /// End `lease`, deleting the keys still tied to it.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({ "ID": lease.to_string() }))
            .await
            .map(drop)
    }

    /// Compact history up to `revision` (tests and operators).
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        let body = json!({ "revision": revision.to_string(), "physical": true });
        self.call("/v3/kv/compaction", body).await.map(drop)
    }

    /// Watch keys under `prefix` from `revision` on.
    pub async fn watch(&self, prefix: &str, revision: i64) -> Result<Watch, EtcdError> {
        let body = json!({ "create_request": {
            "key": b64(prefix), "range_end": b64(&range_end(prefix)), "start_revision": revision.to_string(),
        }});
        let response = self.open("/v3/watch", &body).await?;
        Ok(Watch {
            body: response.into_body(),
            buffer: BytesMut::new(),
        })
    }

    /// A call answered whole, on the first endpoint that answers.
    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let timeout = self.options.timeout;
        let answer = tokio::time::timeout(timeout, async {
            let response = self.open(path, &body).await?;
            let bytes = response
                .collect()
                .await
                .map_err(|e| EtcdError::Unreachable(e.to_string()))?
                .to_bytes();
            serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| EtcdError::Refused(format!("{path}: {e}")))
        })
        .await
        .map_err(|_| EtcdError::Unreachable(format!("no answer in {timeout:?}")))??;
        match answer.get("error") {
            Some(error) => Err(EtcdError::Refused(error.as_str().unwrap_or("?").to_owned())),
            None => Ok(answer),
        }
    }

    /// Send `body` to `path`, authenticated if etcd wants it: the response,
    /// its body not yet read.
    async fn open(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<http::Response<hyper::body::Incoming>, EtcdError> {
        for attempt in 0..2 {
            let token = self.token(attempt > 0).await?;
            let response = self.send(path, body, token.as_deref()).await?;
            let status = response.status();
            if status == StatusCode::OK {
                return Ok(response);
            }
            let text = response
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    v["error"]
                        .as_str()
                        .or(v["message"].as_str())
                        .map(str::to_owned)
                })
                .unwrap_or(text);
            // A token expires; authenticate once more.
            let expired = message.contains("invalid auth token") && self.options.user.is_some();
            if !expired || attempt > 0 {
                return Err(EtcdError::Refused(format!("{path}: {status}: {message}")));
            }
        }
        unreachable!("the loop returns")
    }

    /// The auth token, fetched (again, when `fresh`) if etcd's auth is used.
    async fn token(&self, fresh: bool) -> Result<Option<String>, EtcdError> {
        let Some((name, password)) = &self.options.user else {
            return Ok(None);
        };
        if !fresh && let Some(token) = self.token.lock().expect("token lock").clone() {
            return Ok(Some(token));
        }
        let body = json!({ "name": name, "password": password });
        let response = self.send("/v3/auth/authenticate", &body, None).await?;
        let status = response.status();
        let bytes = response
            .collect()
            .await
            .map_err(|e| EtcdError::Unreachable(e.to_string()))?
            .to_bytes();
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let Some(token) = answer["token"]
            .as_str()
            .filter(|_| status == StatusCode::OK)
        else {
            let why = match answer["error"].as_str().or(answer["message"].as_str()) {
                Some(error) => error.to_owned(),
                None => format!("{status}: {}", String::from_utf8_lossy(&bytes)),
            };
            return Err(EtcdError::Refused(format!(
                "authenticating as `{name}`: {why}"
            )));
        };
        *self.token.lock().expect("token lock") = Some(token.to_owned());
        Ok(Some(token.to_owned()))
    }

    /// One request, to the first endpoint that takes a connection.
    async fn send(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<http::Response<hyper::body::Incoming>, EtcdError> {
        let mut failures = Vec::new();
        for endpoint in &self.options.endpoints {
            match self.send_to(endpoint, path, body, token).await {
                Ok(response) => return Ok(response),
                Err(e) => failures.push(format!("{endpoint}: {e}")),
            }
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }

    async fn send_to(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let url: http::Uri = format!("{endpoint}{path}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let host = url.host().ok_or("no host")?.to_owned();
        let tls = url.scheme_str() == Some("https");
        let port = url.port_u16().unwrap_or(2379);
        let connect = TcpStream::connect((host.as_str(), port));
        let tcp = tokio::time::timeout(self.options.timeout, connect)
            .await
            .map_err(|_| "no connection in time".to_owned())?
            .map_err(|e| e.to_string())?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(
                header::HOST,
                url.authority().map_or(host.as_str(), |a| a.as_str()),
            )
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, token);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        if tls {
            let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| e.to_string())?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            exchange(TokioIo::new(stream), request).await
        } else {
            exchange(TokioIo::new(tcp), request).await
        }
        .map_err(|e| e.to_string())
    }
}

fn b64(text: &str) -> String {
    B64.encode(text)
}

/// The end of the range holding every key that starts with `prefix`.
fn range_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    String::from_utf8_lossy(&end).into_owned()
}

/// A 64-bit number, which protobuf's JSON mapping writes as a string.
fn int(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn revision_of(answer: &Value) -> i64 {
    int(&answer["header"]["revision"]).unwrap_or(0)
}

fn kvs(answer: &Value) -> Vec<Kv> {
    answer["kvs"]
        .as_array()
        .map(|kvs| kvs.iter().filter_map(kv).collect())
        .unwrap_or_default()
}

fn kv(value: &Value) -> Option<Kv> {
    #[derive(Deserialize)]
    struct Raw {
        key: String,
        #[serde(default)]
        value: String,
    }
    let raw: Raw = serde_json::from_value(value.clone()).ok()?;
    let key = String::from_utf8(B64.decode(raw.key).ok()?).ok()?;
    Some(Kv {
        key,
        value: Bytes::from(B64.decode(raw.value).ok()?),
        create_revision: int(&value["create_revision"]).unwrap_or(0),
        mod_revision: int(&value["mod_revision"]).unwrap_or(0),
        version: int(&value["version"]).unwrap_or(0),
    })
}
