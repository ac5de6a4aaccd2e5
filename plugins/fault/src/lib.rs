//! Fault injection, for testing how the gateway contains a misbehaving plugin
//! (and for chaos drills): on configured paths it panics, spins forever or
//! allocates without bound; `reject = true` makes it refuse its configuration.

use serde::Deserialize;
use sluice_sdk::{HttpFilter, Plugin, Request, Verdict};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Panic (a trap) on this path.
    panic_on: Option<String>,
    /// Loop forever on this path.
    spin_on: Option<String>,
    /// Allocate until memory runs out on this path.
    hog_on: Option<String>,
    /// Refuse the configuration.
    #[serde(default)]
    reject: bool,
}

struct Fault {
    config: Config,
}

impl Plugin for Fault {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.reject {
            return Err("configured to reject its configuration".into());
        }
        Ok(Fault { config })
    }
}

impl HttpFilter for Fault {
    fn on_request(&self, req: &Request) -> Verdict {
        let path = req.path();
        let on = |p: &Option<String>| p.as_deref() == Some(path.as_str());
        if on(&self.config.panic_on) {
            panic!("fault injected at {path}");
        }
        if on(&self.config.spin_on) {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if on(&self.config.hog_on) {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Verdict::Forward
    }
}

sluice_sdk::export!(http_filter: Fault);
