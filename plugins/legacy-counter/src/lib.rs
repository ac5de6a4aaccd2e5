//! A filter built for the previous contract, `sluice:filter@0.1.0`, straight
//! from its WIT with wit-bindgen (no SDK), as a component built before 0.2.0
//! was: it counts requests in the key-value store, tells the upstream the
//! count and names itself on the response. The gateway still loads it.

wit_bindgen::generate!({
    path: "../../host/filter/wit-0.1.0",
    world: "transform-filter",
});

use exports::sluice::filter::transform::{Guest, RequestAction};
use sluice::filter::types::{Request, Response, ResponsePhase};
use sluice::filter::{kv, log};

struct Counter;

impl Guest for Counter {
    fn init(config: String) -> Result<(), String> {
        match serde_json::from_str::<serde_json::Value>(&config) {
            Ok(serde_json::Value::Object(_)) => Ok(()),
            _ => Err("expected a table".into()),
        }
    }

    fn on_request(req: &Request) -> RequestAction {
        // 0.1.0 capability errors are plain text.
        let seen: Result<i64, String> = kv::increment("requests", 1, None);
        let headers = req.headers();
        match seen {
            Ok(n) => {
                let _ = headers.set("x-legacy-count", &n.to_string());
            }
            Err(error) => {
                log::write(log::Level::Warn, &error);
                let _ = headers.set("x-legacy-error", &error);
            }
        }
        RequestAction::Forward
    }

    fn on_response(_req: &Request, resp: &Response) -> ResponsePhase {
        let _ = resp.headers().set("x-legacy", "sluice:filter@0.1.0");
        ResponsePhase::Used
    }
}

export!(Counter);
