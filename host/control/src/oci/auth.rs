//! Registry authentication, as Docker's token specification has it (and
//! ghcr.io, Docker Hub, Harbor and the CNCF registry follow): a request
//! answered 401 with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`
//! is retried with a token from the realm, asked for with the registry's
//! credentials if there are any (anonymously otherwise); a `Basic`
//! challenge is answered with the credentials themselves.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode, header};

use super::transport::Transport;

/// A user name and password for one registry.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    fn basic(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// Credentials by registry, and the `Authorization` each registry last took.
#[derive(Default)]
pub(crate) struct Auth {
    credentials: HashMap<String, Credentials>,
    granted: Mutex<HashMap<String, String>>,
}

impl Auth {
    pub(crate) fn new(credentials: HashMap<String, Credentials>) -> Auth {
        Auth {
            credentials,
            granted: Mutex::default(),
        }
    }

    /// The `Authorization` to send to `registry`, if it asked for one before.
    pub(crate) fn authorization(&self, registry: &str) -> Option<String> {
        self.granted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(registry)
            .cloned()
    }

    /// Answer `challenge` (a `WWW-Authenticate` value) from `registry` for
    /// `repository`: the `Authorization` to retry with, kept for later requests.
    pub(crate) async fn answer(
        &self,
        transport: &Transport,
        registry: &str,
        repository: &str,
        push: bool,
        challenge: &str,
    ) -> Result<String, String> {
        let (scheme, params) = parse_challenge(challenge).ok_or_else(|| {
            format!("{registry}: an authentication challenge Sluice cannot read: `{challenge}`")
        })?;
        let credentials = self.credentials.get(registry);
        let authorization = match scheme.to_ascii_lowercase().as_str() {
            "basic" => credentials.map(Credentials::basic).ok_or_else(|| {
                format!("{registry} needs credentials: add [oci.credentials.\"{registry}\"]")
            })?,
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| format!("{registry}: a Bearer challenge without a realm"))?;
                let actions = if push { "pull,push" } else { "pull" };
                let wanted = format!("repository:{repository}:{actions}");
                let scope = params.get("scope").map_or(wanted.as_str(), String::as_str);
                let mut url = format!("{realm}?scope={}", encode(scope));
                if let Some(service) = params.get("service") {
                    url.push_str(&format!("&service={}", encode(service)));
                }
                let basic = credentials.map(Credentials::basic);
                let headers: Vec<_> = basic
                    .iter()
                    .map(|b| (header::AUTHORIZATION, b.as_str()))
                    .collect();
                let answer = transport
                    .send(Method::GET, &url, &headers, Bytes::new(), 1 << 20)
                    .await?;
                if answer.status != StatusCode::OK {
                    let whose = match credentials {
                        Some(c) => format!("the credentials of `{}`", c.username),
                        None => "anonymous access (are credentials needed?)".to_owned(),
                    };
                    return Err(format!(
                        "{registry}: its token service refused {whose}: {}",
                        answer.status
                    ));
                }
                let token: serde_json::Value = serde_json::from_slice(&answer.body)
                    .map_err(|e| format!("{registry}: its token service answered no JSON: {e}"))?;
                let token = token["token"]
                    .as_str()
                    .or(token["access_token"].as_str())
                    .ok_or_else(|| format!("{registry}: its token service answered no token"))?;
                format!("Bearer {token}")
            }
            other => {
                return Err(format!(
                    "{registry}: asks for `{other}` authentication, which Sluice does not speak"
                ));
            }
        };
        self.granted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(registry.to_owned(), authorization.clone());
        Ok(authorization)
    }
}

/// `Scheme k="v",k2=v2`: the scheme and its parameters (quoted values may
/// hold commas, as scopes do).
pub(crate) fn parse_challenge(text: &str) -> Option<(String, HashMap<String, String>)> {
    let (scheme, rest) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    (!scheme.is_empty()).then(|| (scheme.to_owned(), params))
}

/// Percent-encode a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quoted_commas() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["realm"], "https://auth.example/token");
        assert_eq!(params["service"], "registry.example");
        assert_eq!(params["scope"], "repository:a/b:pull,push");
        let (scheme, params) = parse_challenge(r#"Basic realm="basic-realm""#).unwrap();
        assert_eq!(
            (scheme.as_str(), params["realm"].as_str()),
            ("Basic", "basic-realm")
        );
        assert_eq!(
            encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
