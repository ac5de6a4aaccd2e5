//! JSON/REST to gRPC: each method of a service, found in its own
//! [definitions], is offered at the HTTP routes its `google.api.http` rules
//! give (path [template]s, the body, query parameters to [fields]) and at
//! `POST /package.Service/Method`; its answer comes back as proto3 JSON,
//! or as a stream of them ([reply]).

mod definitions;
mod fields;
mod reply;
mod template;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use prost_reflect::{
    DynamicMessage, ExtensionDescriptor, MessageDescriptor, MethodDescriptor, Value,
};

use prost::Message;
pub(crate) use reply::Call;
use template::Template;

use super::Refusal;
use super::frames::frame;
use crate::config::{StreamFormat, TranscodeConfig, UnknownQuery};
use crate::upstream::Payload;

/// A route's JSON/REST face of one or more gRPC services.
pub struct Transcoder {
    routes: Vec<Arc<Route>>,
    unknown_query: UnknownQuery,
    stream: StreamFormat,
    /// The files the definitions were read from.
    files: Vec<PathBuf>,
}

/// One HTTP route to one method.
pub(super) struct Route {
    method: Method,
    template: Template,
    body: BodyField,
    /// The one field of the answer sent as the body, if not all of it.
    response_body: Option<String>,
    rpc: Arc<Rpc>,
}

/// Where the request body goes in the message.
pub(super) enum BodyField {
    /// Nowhere: the fields come from the path and query.
    None,
    /// It is the message (`body: "*"`).
    Whole,
    /// Into this field (`body: "book"`).
    Field(String),
}

/// One gRPC method.
pub(super) struct Rpc {
    /// `/package.Service/Method`.
    path: PathAndQuery,
    input: MessageDescriptor,
    output: MessageDescriptor,
    server_streaming: bool,
}

impl Transcoder {
    /// The services `config` describes (its files relative to `dir`).
    pub fn load(config: &TranscodeConfig, dir: &Path) -> Result<Transcoder, String> {
        let (pool, files) = definitions::load(config, dir)?;
        for wanted in &config.services {
            if pool.get_service_by_name(wanted).is_none() {
                return Err(format!("the definitions have no service `{wanted}`"));
            }
        }
        let http = pool.get_extension_by_name("google.api.http");
        let mut routes = Vec::new();
        for service in pool.services() {
            let offered = config.services.is_empty()
                || config.services.iter().any(|s| s == service.full_name());
            for method in service.methods().filter(|_| offered) {
                if method.is_client_streaming() {
                    continue;
                }
                let rpc = Arc::new(Rpc {
                    path: PathAndQuery::try_from(format!(
                        "/{}/{}",
                        service.full_name(),
                        method.name()
                    ))
                    .map_err(|e| format!("method `{}`: {e}", method.full_name()))?,
                    input: method.input(),
                    output: method.output(),
                    server_streaming: method.is_server_streaming(),
                });
                for rule in rules(&method, http.as_ref()) {
                    let route = Route::from_rule(&rule, &rpc)
                        .map_err(|e| format!("method `{}`: {e}", method.full_name()))?;
                    routes.push(Arc::new(route));
                }
                routes.push(Arc::new(Route {
                    method: Method::POST,
                    template: Template::parse(rpc.path.as_str()).map_err(|e| {
                        format!("method `{}` cannot be offered: {e}", method.full_name())
                    })?,
                    body: BodyField::Whole,
                    response_body: None,
                    rpc,
                }));
            }
        }
        if routes.is_empty() {
            return Err("the definitions offer no method to call".into());
        }
        Ok(Transcoder {
            routes,
            unknown_query: config.unknown_query,
            stream: config.stream,
            files,
        })
    }

    /// The HTTP routes offered, one line each: `GET /v1/x/{id} -> pkg.Svc/Method`.
    pub fn describe(&self) -> impl Iterator<Item = String> + '_ {
        self.routes.iter().map(|route| {
            let streaming = match route.rpc.server_streaming {
                true => " (server streaming)",
                false => "",
            };
            format!(
                "{} {} -> {}{streaming}",
                route.method,
                route.template,
                &route.rpc.path.as_str()[1..]
            )
        })
    }

    /// The files the definitions were read from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Make the client's JSON/REST `request`, whose whole body is `body`,
    /// the gRPC call it maps to.
    pub(crate) fn request(
        &self,
        request: &mut Request<Payload>,
        body: Bytes,
    ) -> Result<Call, Refusal> {
        let path = request.uri().path();
        let mut path_matched = false;
        let mut found = None;
        for route in &self.routes {
            if let Some(bound) = route.template.matches(path) {
                if route.method == request.method() {
                    found = Some((route, bound));
                    break;
                }
                path_matched = true;
            }
        }
        let Some((route, bound)) = found else {
            return Err(match path_matched {
                true => Refusal::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{} is not offered at {path}", request.method()),
                ),
                false => Refusal::new(
                    StatusCode::NOT_FOUND,
                    "no_method",
                    format!("no method is offered at {path}"),
                ),
            });
        };
        let json = fields::request_json(
            route,
            bound,
            request.uri().query(),
            &body,
            self.unknown_query,
        )?;
        let message = DynamicMessage::deserialize(route.rpc.input.clone(), json)
            .map_err(|e| Refusal::invalid_argument(e.to_string()))?;
        let mut uri = std::mem::take(request.uri_mut()).into_parts();
        uri.path_and_query = Some(route.rpc.path.clone());
        *request.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
        *request.method_mut() = Method::POST;
        let headers = request.headers_mut();
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::ACCEPT);
        headers.remove(header::ACCEPT_ENCODING);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
        *request.body_mut() = Payload::Bytes(frame(0, &message.encode_to_vec()));
        Ok(Call::new(route.clone(), self.stream))
    }
}

impl Route {
    /// The route an `HttpRule` gives.
    fn from_rule(rule: &DynamicMessage, rpc: &Arc<Rpc>) -> Result<Route, String> {
        let text = |name: &str| {
            rule.get_field_by_name(name)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let verbs = ["get", "put", "post", "delete", "patch"];
        let (method, path) = match verbs.iter().find(|v| rule.has_field_by_name(v)) {
            Some(verb) => (
                Method::from_bytes(verb.to_ascii_uppercase().as_bytes()).expect("a method"),
                text(verb),
            ),
            None => {
                let custom = rule.get_field_by_name("custom");
                let custom = custom.as_deref().and_then(Value::as_message);
                let field = |name| (custom?.get_field_by_name(name)?.as_str()).map(str::to_owned);
                let kind = field("kind").ok_or("an http rule with no pattern")?;
                let method = Method::from_bytes(kind.as_bytes())
                    .map_err(|_| format!("`{kind}` is not a method"))?;
                (method, field("path").unwrap_or_default())
            }
        };
        let template = Template::parse(&path)?;
        for dotted in template.fields() {
            match fields::resolve(&rpc.input, dotted) {
                Some(field) if fields::is_scalar(&field) && !field.is_list() => {}
                _ => {
                    return Err(format!(
                        "path `{path}`: `{dotted}` is not a singular scalar field of `{}`",
                        rpc.input.full_name()
                    ));
                }
            }
        }
        let body = match text("body").as_str() {
            "" => BodyField::None,
            "*" => BodyField::Whole,
            field if rpc.input.get_field_by_name(field).is_some() => {
                BodyField::Field(field.to_owned())
            }
            field => {
                return Err(format!(
                    "body `{field}` is not a field of `{}`",
                    rpc.input.full_name()
                ));
            }
        };
        let response_body = Some(text("response_body")).filter(|f| !f.is_empty());
        if let Some(field) = &response_body
            && rpc.output.get_field_by_name(field).is_none()
        {
            return Err(format!(
                "response_body `{field}` is not a field of `{}`",
                rpc.output.full_name()
            ));
        }
        Ok(Route {
            method,
            template,
            body,
            response_body,
            rpc: rpc.clone(),
        })
    }

    /// Whether the path or the body field sets `name`, so the query may not.
    fn fixed(&self, name: &str) -> bool {
        let covers = |set: &str| {
            name.strip_prefix(set)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        self.template.fields().any(covers)
            || matches!(&self.body, BodyField::Field(field) if covers(field))
    }
}

/// A method's `google.api.http` rule and its additional bindings.
fn rules(method: &MethodDescriptor, http: Option<&ExtensionDescriptor>) -> Vec<DynamicMessage> {
    let options = method.options();
    let Some(http) = http.filter(|h| options.has_extension(h)) else {
        return Vec::new();
    };
    let Value::Message(rule) = &*options.get_extension(http) else {
        return Vec::new();
    };
    let mut all = vec![rule.clone()];
    if let Some(more) = rule.get_field_by_name("additional_bindings")
        && let Value::List(more) = &*more
    {
        all.extend(more.iter().filter_map(|r| r.as_message().cloned()));
    }
    all
}
