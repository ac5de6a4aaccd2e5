//! {{name}}: a proxy-wasm filter (the Rust SDK, ABI 0.2.1), as Envoy runs
//! them; Sluice runs it unchanged. It refuses requests without the
//! configured header (400) and lets the others through. Replace it with
//! your policy.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

#[derive(Deserialize, Clone, Default)]
struct Config {
    /// The header every request must carry.
    header: String,
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
    /// The route's `config`, as JSON.
    fn on_configure(&mut self, _: usize) -> bool {
        let parsed = self
            .get_plugin_configuration()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        match parsed {
            Some(config) => {
                self.config = config;
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    config: Config,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let header = &self.config.header;
        if self.get_http_request_header(header).is_some() {
            return Action::Continue;
        }
        let body = format!("the {header} header is required\n");
        self.send_http_response(400, vec![("content-type", "text/plain")], Some(body.as_bytes()));
        Action::Pause
    }
}
