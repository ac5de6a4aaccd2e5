//! A request counter in shared data, updated with compare-and-swap: past
//! `limit` requests, 429. Every VM of the plugin counts in the same place.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { limit: 0 }) });
}}

struct Root {
    limit: u64,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config: serde_json::Value = self
            .get_plugin_configuration()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        self.limit = config["limit"].as_u64().unwrap_or(10);
        // A missing key has no version, and a write without one is
        // unconditional: make it before any request, so every request's
        // write compares.
        if let (None, _) = self.get_shared_data("count") {
            let _ = self.set_shared_data("count", Some(b"0"), None);
        }
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Limit { limit: self.limit }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Limit {
    limit: u64,
}

impl Context for Limit {}

impl HttpContext for Limit {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        loop {
            let (data, cas) = self.get_shared_data("count");
            let count: u64 = data
                .and_then(|d| String::from_utf8(d).ok()?.parse().ok())
                .unwrap_or(0);
            if count >= self.limit {
                self.send_http_response(429, vec![], Some(b"limited\n"));
                return Action::Pause;
            }
            match self.set_shared_data("count", Some((count + 1).to_string().as_bytes()), cas) {
                Ok(()) => return Action::Continue,
                Err(Status::CasMismatch) => continue,
                Err(_) => return Action::Continue,
            }
        }
    }
}
