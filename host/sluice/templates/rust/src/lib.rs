//! {{name}}: a Sluice filter. It refuses requests without the configured
//! header (400) and lets the others through. Replace it with your policy.

use serde::Deserialize;

wit_bindgen::generate!({ world: "general-filter", path: "wit" });

use exports::sluice::filter::http_filter::{Guest, Verdict};
use sluice::filter::types::{Reply, Request, Response, ResponsePhase};

#[derive(Deserialize)]
struct Config {
    /// The header every request must carry.
    header: String,
}

static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();

struct Filter;

impl Guest for Filter {
    fn init(config: String) -> Result<(), String> {
        let config: Config = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let _ = CONFIG.set(config);
        Ok(())
    }

    fn on_request(req: &Request) -> Verdict {
        let header = &CONFIG.get().expect("init runs first").header;
        if req.headers().has(header) {
            return Verdict::Forward;
        }
        Verdict::Respond(Reply {
            status: 400,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: format!("the {header} header is required\n").into_bytes(),
        })
    }

    fn on_response(_req: &Request, _resp: &Response) -> ResponsePhase {
        // Tells the host not to call it on responses.
        ResponsePhase::Unused
    }
}

export!(Filter);
