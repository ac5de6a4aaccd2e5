//! What every plugin has without a grant: logging, tagged with its name,
//! and the clock.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::{HasData, Linker};

use crate::bindings::{v1, v2};

/// What logging and the clock borrow from the instance's store data.
pub(crate) struct BasicsView<'a> {
    pub(crate) plugin: &'a str,
    /// When the instance started: the origin of its monotonic clock.
    pub(crate) started: Instant,
}

struct BasicsData;

impl HasData for BasicsData {
    type Data<'a> = BasicsView<'a>;
}

/// Store data that can lend logging and the clock their view.
pub(crate) trait BasicsHost {
    fn basics(&mut self) -> BasicsView<'_>;
}

pub(crate) fn link<T: BasicsHost + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    v2::log::add_to_linker::<_, BasicsData>(linker, T::basics)?;
    v2::clock::add_to_linker::<_, BasicsData>(linker, T::basics)?;
    v1::log::add_to_linker::<_, BasicsData>(linker, T::basics)?;
    v1::clock::add_to_linker::<_, BasicsData>(linker, T::basics)
}

impl BasicsView<'_> {
    fn log(&self, level: tracing::Level, message: &str) {
        let plugin = self.plugin;
        match level {
            tracing::Level::TRACE => tracing::trace!(plugin, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(plugin, "{message}"),
            tracing::Level::INFO => tracing::info!(plugin, "{message}"),
            tracing::Level::WARN => tracing::warn!(plugin, "{message}"),
            tracing::Level::ERROR => tracing::error!(plugin, "{message}"),
        }
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Both versions' imports: the same functions.
macro_rules! basics_host {
    ($v:ident) => {
        impl $v::log::Host for BasicsView<'_> {
            fn write(&mut self, level: $v::log::Level, message: String) -> wasmtime::Result<()> {
                use $v::log::Level;
                let level = match level {
                    Level::Trace => tracing::Level::TRACE,
                    Level::Debug => tracing::Level::DEBUG,
                    Level::Info => tracing::Level::INFO,
                    Level::Warn => tracing::Level::WARN,
                    Level::Error => tracing::Level::ERROR,
                };
                self.log(level, &message);
                Ok(())
            }
        }

        impl $v::clock::Host for BasicsView<'_> {
            fn now_millis(&mut self) -> wasmtime::Result<u64> {
                Ok(now_millis())
            }

            fn monotonic_nanos(&mut self) -> wasmtime::Result<u64> {
                Ok(self.started.elapsed().as_nanos() as u64)
            }
        }
    };
}

basics_host!(v2);
basics_host!(v1);
