//! Traces with OpenTelemetry: a span per request (the child of the
//! client's W3C `traceparent`, if it sent one), per filter call and per
//! upstream try (whose `traceparent` the upstream gets), exported over
//! OTLP/HTTP (JSON) in batches by the SDK's own thread, off the request path.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use serde::Deserialize;

/// `[tracing]`: where spans go and how many traces are kept. Read at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// An OTLP/HTTP traces endpoint, e.g. `http://collector:4318/v1/traces`
    /// (spans are sent JSON-encoded).
    pub otlp_endpoint: String,
    /// The `service.name` spans carry.
    #[serde(default = "service_name")]
    pub service_name: String,
    /// The share of traces begun here that are recorded; a client's
    /// `traceparent` decides for the traces it began.
    #[serde(default = "all")]
    pub sample_ratio: f64,
    /// How often a batch of spans is sent.
    #[serde(default = "second", with = "humantime_serde")]
    pub export_every: Duration,
}

fn service_name() -> String {
    "sluice".into()
}

fn all() -> f64 {
    1.0
}

fn second() -> Duration {
    Duration::from_secs(1)
}

/// The tracer and its exporter, for the life of the process.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Tracing {
    /// Start exporting to `config`'s endpoint (on this tokio runtime).
    pub fn start(config: &TracingConfig) -> Result<Arc<Tracing>, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(&config.otlp_endpoint)
            .with_timeout(Duration::from_secs(10))
            .with_http_client(OnTokio::new())
            .build()
            .map_err(|e| format!("tracing.otlp_endpoint: {e}"))?;
        let batches = BatchConfigBuilder::default()
            .with_scheduled_delay(config.export_every)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batches)
            .build();
        let sampler = Sampler::TraceIdRatioBased(config.sample_ratio.clamp(0.0, 1.0));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(sampler)))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Arc::new(Tracing {
            tracer: provider.tracer("sluice"),
            provider,
            propagator: TraceContextPropagator::new(),
        }))
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        // Send what is left.
        let _ = self.provider.shutdown();
    }
}

/// One span, open until ended, and how to make its children.
#[derive(Clone)]
pub struct Trace {
    tracing: Arc<Tracing>,
    cx: Context,
}

impl Trace {
    /// The span of a request with `head` from `client`: a server span, the
    /// child of the client's `traceparent` if it sent one.
    pub fn request(
        tracing: &Arc<Tracing>,
        head: &http::request::Parts,
        client: IpAddr,
        id: &HeaderValue,
    ) -> Trace {
        let parent = tracing.propagator.extract(&HeaderExtractor(&head.headers));
        let attributes = vec![
            KeyValue::new("http.request.method", head.method.to_string()),
            KeyValue::new("url.path", head.uri.path().to_owned()),
            KeyValue::new("client.address", client.to_string()),
            KeyValue::new("sluice.request_id", id.to_str().unwrap_or("").to_owned()),
        ];
        Trace::start(
            tracing,
            &parent,
            head.method.to_string(),
            SpanKind::Server,
            attributes,
        )
    }

    fn start(
        tracing: &Arc<Tracing>,
        parent: &Context,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Trace {
        let span = tracing
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&tracing.tracer, parent);
        Trace {
            tracing: tracing.clone(),
            cx: parent.with_span(span),
        }
    }

    /// A span inside this one.
    pub fn child(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Trace {
        Trace::start(&self.tracing, &self.cx, name, kind, attributes)
    }

    /// Give it an attribute.
    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }

    /// Rename it (a request's span, once its route is known).
    pub fn rename(&self, name: String) {
        self.cx.span().update_name(name);
    }

    /// Mark it failed, with why.
    pub fn fail(&self, why: impl Into<Cow<'static, str>>) {
        self.cx.span().set_status(Status::error(why));
    }

    /// Put its `traceparent` in `headers`, replacing any other.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let propagator = &self.tracing.propagator;
        propagator.inject_context(&self.cx, &mut HeaderInjector(headers));
    }

    /// End it now.
    pub fn end(&self) {
        self.cx.span().end();
    }
}

/// The exporter's HTTP client: a request is sent by a task on the gateway's
/// tokio runtime, which the SDK's export thread waits for.
#[derive(Debug, Clone)]
struct OnTokio {
    runtime: tokio::runtime::Handle,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl OnTokio {
    fn new() -> OnTokio {
        OnTokio {
            runtime: tokio::runtime::Handle::current(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for OnTokio {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let response = client.request(request.map(Full::new)).await?;
            let (head, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(head, body))
        });
        sent.await?
    }
}
