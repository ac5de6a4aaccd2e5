//! The trivial filter: does nothing on the request and nothing on the
//! response. What a chain of these costs is the gateway's own overhead per
//! filter (the benchmarks in `bench/` measure it).

use serde::Deserialize;
use sluice_sdk::{HttpFilter, Plugin};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

struct Noop;

impl Plugin for Noop {
    type Config = Config;

    fn new(_: Config) -> Result<Self, String> {
        Ok(Noop)
    }
}

impl HttpFilter for Noop {}

sluice_sdk::export!(http_filter: Noop);
