//! Header edits both ways, a local reply, and a response body rewritten
//! (dropping `content-length`, as filters written for Envoy do), configured
//! at `on_configure` from the route's JSON, and response trailers read and
//! added to.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

#[derive(Deserialize, Clone, Default)]
struct Config {
    /// A request header to set, and its value.
    header: String,
    value: String,
    /// Requests to this path are answered 403 by the filter.
    #[serde(default)]
    deny: String,
    /// Upper-case response bodies.
    #[serde(default)]
    shout: bool,
    /// Tell the upstream the `:path` and `:method` it saw.
    #[serde(default)]
    trace: bool,
    /// Copy the response's `grpc-status` trailer into `x-pw-grpc-status`.
    #[serde(default)]
    trailers: bool,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    config: Config,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            return false;
        };
        match serde_json::from_slice(&bytes) {
            Ok(config) => {
                self.config = config;
                true
            }
            Err(e) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &format!("bad configuration: {e}"))
                    .ok();
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Headers {
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Headers {
    config: Config,
}

impl Context for Headers {}

impl HttpContext for Headers {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if !self.config.deny.is_empty() && path == self.config.deny {
            self.send_http_response(403, vec![("x-denied-by", "pw-headers")], Some(b"denied\n"));
            return Action::Pause;
        }
        self.set_http_request_header(&self.config.header, Some(&self.config.value));
        if self.config.trace {
            self.set_http_request_header("x-pw-path", Some(&path));
            let method = self.get_http_request_header(":method").unwrap_or_default();
            self.set_http_request_header("x-pw-method", Some(&method));
            // Properties, as Envoy encodes them: text, and ports as 8 bytes.
            let source = self
                .get_property(vec!["source", "address"])
                .unwrap_or_default();
            self.set_http_request_header("x-pw-source", Some(&String::from_utf8_lossy(&source)));
            let port = self
                .get_property(vec!["destination", "port"])
                .unwrap_or_default();
            let port = port.try_into().map(u64::from_le_bytes).unwrap_or(0);
            self.set_http_request_header("x-pw-destination-port", Some(&port.to_string()));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_response_header("x-pw-response", Some("seen"));
        if self.config.shout {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !self.config.shout {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_response_body(0, size) {
            self.set_http_response_body(0, size, &body.to_ascii_uppercase());
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
        if self.config.trailers {
            let status = self
                .get_http_response_trailer("grpc-status")
                .unwrap_or_default();
            self.add_http_response_trailer("x-pw-grpc-status", &status);
        }
        Action::Continue
    }
}
