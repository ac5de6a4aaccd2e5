//! Outbound HTTP to upstreams named in the configuration, never to
//! arbitrary hosts (grant `http:<name>` per upstream). Calls share the
//! upstream's pools and balancing, are bounded by the plugin's
//! `outbound_timeout`, and their time does not count against its `call_timeout`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use wasmtime::component::{HasData, Linker};

use super::{Grant, Refusals};
use crate::bindings::{v1, v2};
use crate::config::PluginConfig;
use crate::cpu::CallClock;
use crate::error::HostError;

/// Largest outbound response body handed to a plugin.
pub(crate) const MAX_OUTBOUND_BODY: usize = 8 << 20;
/// Most requests in one `send-all`.
const MAX_BATCH: usize = 16;

/// A named upstream a plugin may call, as the gateway offers it: the host
/// picks the server and reuses connections.
#[async_trait::async_trait]
pub trait HttpUpstream: Send + Sync {
    /// Its name in the configuration.
    fn name(&self) -> &str;
    /// Send `request` and read the whole response, refusing a body over `limit` bytes.
    async fn send(
        &self,
        request: Request<Bytes>,
        limit: usize,
    ) -> Result<http::Response<Bytes>, String>;
}

/// One plugin's outbound access: only the upstreams granted.
pub(crate) struct Outbound {
    granted: HashMap<String, Arc<dyn HttpUpstream>>,
    timeout: Duration,
    refusals: Refusals,
}

/// A request as a plugin asked for it, in either version of the contract.
struct Call {
    upstream: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout_millis: Option<u32>,
}

/// A whole response.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Outbound {
    pub(crate) fn bind(
        grants: &[Grant],
        config: &PluginConfig,
        upstreams: &HashMap<String, Arc<dyn HttpUpstream>>,
        refusals: Refusals,
    ) -> Outbound {
        let granted = grants
            .iter()
            .filter_map(|g| match g {
                Grant::Http(name) => Some((name.clone(), upstreams.get(name)?.clone())),
                _ => None,
            })
            .collect();
        Outbound {
            granted,
            timeout: config.outbound_timeout,
            refusals,
        }
    }

    /// The upstream `name`, if granted (a refusal is counted), and how long a call to it may take.
    pub(crate) fn upstream(
        &self,
        name: &str,
    ) -> Result<(Arc<dyn HttpUpstream>, Duration), HostError> {
        match self.granted.get(name) {
            Some(upstream) => Ok((upstream.clone(), self.timeout)),
            None => Err(self.refusals.refuse(&Grant::Http(name.to_owned()))),
        }
    }

    async fn send(&self, call: Call) -> Result<Answer, HostError> {
        let (upstream, timeout) = self.upstream(&call.upstream)?;
        let limit = call
            .timeout_millis
            .map_or(timeout, |ms| Duration::from_millis(ms.into()))
            .min(timeout);
        let request = build_request(call)?;
        let exchange = async {
            let response = upstream
                .send(request, MAX_OUTBOUND_BODY)
                .await
                .map_err(HostError::Unavailable)?;
            let (head, body) = response.into_parts();
            Ok(Answer {
                status: head.status.as_u16(),
                headers: head
                    .headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect(),
                body: body.to_vec(),
            })
        };
        tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(HostError::Timeout(format!(
                    "upstream `{}` timed out after {limit:?}",
                    upstream.name()
                )))
            })
    }

    /// Several at once, answers in order.
    async fn send_all(&self, calls: Vec<Call>) -> Vec<Result<Answer, HostError>> {
        if calls.len() > MAX_BATCH {
            let refusal = HostError::Limit(format!("at most {MAX_BATCH} requests in one send-all"));
            return calls.iter().map(|_| Err(refusal.clone())).collect();
        }
        join_all(calls.into_iter().map(|c| self.send(c))).await
    }
}

fn build_request(call: Call) -> Result<Request<Bytes>, HostError> {
    let invalid = |m: String| HostError::Invalid(m);
    let method = Method::from_bytes(call.method.as_bytes())
        .map_err(|_| invalid(format!("invalid method `{}`", call.method)))?;
    if !call.path.starts_with('/') {
        return Err(invalid(format!(
            "the path must start with `/`: `{}`",
            call.path
        )));
    }
    let uri: Uri = call
        .path
        .parse()
        .map_err(|_| invalid(format!("invalid path `{}`", call.path)))?;
    let mut request = Request::new(Bytes::from(call.body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    for (name, value) in &call.headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| invalid(format!("invalid header name `{name}`")))?;
        let value = HeaderValue::try_from(value.as_str())
            .map_err(|_| invalid(format!("invalid value for header `{name}`")))?;
        request.headers_mut().append(name, value);
    }
    Ok(request)
}

/// What a call into `outbound` borrows from the instance's store data.
pub(crate) struct OutboundView<'a> {
    pub(crate) outbound: &'a Outbound,
    pub(crate) clock: &'a mut CallClock,
}

struct OutboundData;

impl HasData for OutboundData {
    type Data<'a> = OutboundView<'a>;
}

/// Store data that can lend outbound HTTP its view.
pub(crate) trait OutboundHost {
    fn outbound(&mut self) -> OutboundView<'_>;
}

pub(crate) fn link<T: OutboundHost + Send + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    v2::outbound::add_to_linker::<_, OutboundData>(linker, T::outbound)?;
    v1::outbound::add_to_linker::<_, OutboundData>(linker, T::outbound)
}

/// Both versions' imports: they differ in their types only.
macro_rules! outbound_host {
    ($v:ident, $error:ty, $convert:expr) => {
        impl From<$v::outbound::OutboundRequest> for Call {
            fn from(r: $v::outbound::OutboundRequest) -> Call {
                Call {
                    upstream: r.upstream,
                    method: r.method,
                    path: r.path,
                    headers: r.headers,
                    body: r.body,
                    timeout_millis: r.timeout_millis,
                }
            }
        }

        impl From<Answer> for $v::outbound::OutboundResponse {
            fn from(a: Answer) -> Self {
                $v::outbound::OutboundResponse {
                    status: a.status,
                    headers: a.headers,
                    body: a.body,
                }
            }
        }

        impl $v::outbound::Host for OutboundView<'_> {
            async fn send(
                &mut self,
                request: $v::outbound::OutboundRequest,
            ) -> wasmtime::Result<Result<$v::outbound::OutboundResponse, $error>> {
                let answer = self.clock.wait(self.outbound.send(request.into())).await;
                Ok(answer.map(Into::into).map_err($convert))
            }

            async fn send_all(
                &mut self,
                requests: Vec<$v::outbound::OutboundRequest>,
            ) -> wasmtime::Result<Vec<Result<$v::outbound::OutboundResponse, $error>>> {
                let calls = requests.into_iter().map(Call::from).collect();
                let answers = self.clock.wait(self.outbound.send_all(calls)).await;
                Ok(answers
                    .into_iter()
                    .map(|a| a.map(Into::into).map_err($convert))
                    .collect())
            }
        }
    };
}

outbound_host!(v2, v2::types::Error, v2::types::Error::from);
outbound_host!(v1, String, |e: HostError| e.to_string());
