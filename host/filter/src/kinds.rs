//! The policy kinds, generated from the one list in `sluice-kinds`: the
//! enum, the exports the host looks for in a component (in either version
//! of the contract), and how it calls them, answers converted to the
//! host's own [`Answer`] and [`ResponseAnswer`].

use wasmtime::Store;
use wasmtime::component::{Instance as Exported, InstancePre, Resource};

use crate::answer::{Answer, ResponseAnswer};
use crate::bindings::{v1, v2};
use crate::connection::{ConnectVerdict, Connection};
use crate::handles::{RequestEntry, ResponseEntry};
use crate::state::FilterState;

/// Something a component exports in the current contract or the previous one.
pub(crate) enum Versioned<Two, One> {
    V2(Two),
    V1(One),
}

/// `true` when a kind lists a response export.
macro_rules! listed {
    () => {
        false
    };
    ($($export:ident)+) => {
        true
    };
}

/// A kind's response call, or `Unused` for kinds without one.
macro_rules! respond {
    ($guest:ident, $store:ident, $req:ident, $resp:ident) => {{
        let _ = ($guest, $store, $req, $resp);
        Ok(ResponseAnswer::Unused)
    }};
    ($guest:ident, $store:ident, $req:ident, $resp:ident, $call:ident) => {
        match $guest {
            Versioned::V2(g) => g.$call($store, $req, $resp).await.map(ResponseAnswer::from),
            Versioned::V1(g) => g.$call($store, $req, $resp).await.map(ResponseAnswer::from),
        }
    };
}

macro_rules! kinds {
    (
        connection: [$( $CKind:ident $csnake:ident $cinterface:literal $cworld:literal
            connect: $connect:ident $call_connect:ident; )*]
        request: [$( $Kind:ident $snake:ident $interface:literal $world:literal
            request: $request:ident $call_request:ident
            response: [$($response:ident $call_response:ident)?]; )*]
    ) => {
        /// The policy kind a plugin implements: the WIT interface it
        /// exports. Listed in phase order: a connection meets connection
        /// filters when it is accepted; a request meets auth filters first.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Kind {
            $(
                #[doc = concat!("Exports `", $cinterface, "` (the `", $cworld, "` world).")]
                $CKind,
            )*
            $(
                #[doc = concat!("Exports `", $interface, "` (the `", $world, "` world).")]
                $Kind,
            )*
        }

        impl Kind {
            /// Every kind, in phase order.
            pub const ALL: &[Kind] = &[$(Kind::$CKind,)* $(Kind::$Kind),*];

            /// The WIT interface it exports.
            pub fn interface(self) -> &'static str {
                match self {
                    $(Kind::$CKind => $cinterface,)*
                    $(Kind::$Kind => $interface,)*
                }
            }

            /// The WIT world a plugin of this kind targets.
            pub fn world(self) -> &'static str {
                match self {
                    $(Kind::$CKind => $cworld,)*
                    $(Kind::$Kind => $world,)*
                }
            }

            /// Whether it is called on connections (TCP listeners), not requests.
            pub fn on_connections(self) -> bool {
                matches!(self, $(Kind::$CKind)|*)
            }

            /// Whether it is called on responses too.
            pub fn has_response_phase(self) -> bool {
                match self {
                    $(Kind::$CKind => false,)*
                    $(Kind::$Kind => listed!($($response)?),)*
                }
            }
        }

        /// Where a plugin's exports are, looked up once when it is linked.
        pub(crate) enum Exports {
            $($CKind(v2::policies::$csnake::GuestIndices),)*
            $(
                $Kind(Versioned<
                    v2::policies::$snake::GuestIndices,
                    v1::policies::$snake::GuestIndices,
                >),
            )*
        }

        /// A live instance's exports.
        pub(crate) enum Guest {
            $($CKind(v2::policies::$csnake::Guest),)*
            $($Kind(Versioned<v2::policies::$snake::Guest, v1::policies::$snake::Guest>),)*
        }

        impl Exports {
            /// Exactly one policy interface, of either version, must be exported.
            pub(crate) fn find(pre: &InstancePre<FilterState>) -> Result<Exports, String> {
                let mut found = Vec::new();
                // Connection kinds are new in 0.2.4: no 0.1.0 version.
                $(
                    if let Ok(i) = v2::policies::$csnake::GuestIndices::new(pre) {
                        found.push(Exports::$CKind(i));
                    }
                )*
                $(
                    if let Ok(i) = v2::policies::$snake::GuestIndices::new(pre) {
                        found.push(Exports::$Kind(Versioned::V2(i)));
                    }
                    if let Ok(i) = v1::policies::$snake::GuestIndices::new(pre) {
                        found.push(Exports::$Kind(Versioned::V1(i)));
                    }
                )*
                match found.len() {
                    1 => Ok(found.pop().expect("one export")),
                    0 => Err(format!(
                        "exports no `sluice:filter` policy interface ({}); is it built with the Sluice SDK or from `wit/`?",
                        Kind::ALL.iter().map(|k| k.interface()).collect::<Vec<_>>().join(", ")
                    )),
                    _ => Err("exports more than one policy interface; a plugin implements one kind".into()),
                }
            }

            pub(crate) fn kind(&self) -> Kind {
                match self {
                    $(Exports::$CKind(_) => Kind::$CKind,)*
                    $(Exports::$Kind(_) => Kind::$Kind,)*
                }
            }

            pub(crate) fn load(
                &self,
                store: &mut Store<FilterState>,
                instance: &Exported,
            ) -> wasmtime::Result<Guest> {
                Ok(match self {
                    $(Exports::$CKind(i) => Guest::$CKind(i.load(&mut *store, instance)?),)*
                    $(
                        Exports::$Kind(Versioned::V2(i)) => {
                            Guest::$Kind(Versioned::V2(i.load(&mut *store, instance)?))
                        }
                        Exports::$Kind(Versioned::V1(i)) => {
                            Guest::$Kind(Versioned::V1(i.load(&mut *store, instance)?))
                        }
                    )*
                })
            }
        }

        impl Guest {
            /// `init`: accept the route's configuration (JSON) or reject it.
            pub(crate) async fn init(
                &self,
                store: &mut Store<FilterState>,
                config: &str,
            ) -> wasmtime::Result<Result<(), String>> {
                match self {
                    $(Guest::$CKind(g) => g.call_init(store, config).await,)*
                    $(
                        Guest::$Kind(Versioned::V2(g)) => g.call_init(store, config).await,
                        Guest::$Kind(Versioned::V1(g)) => g.call_init(store, config).await,
                    )*
                }
            }

            /// The kind's request export.
            pub(crate) async fn request(
                &self,
                store: &mut Store<FilterState>,
                req: Resource<RequestEntry>,
            ) -> wasmtime::Result<Answer> {
                match self {
                    $(Guest::$CKind(_) => Err(wrong_call(Kind::$CKind)),)*
                    $(
                        Guest::$Kind(Versioned::V2(g)) => {
                            g.$call_request(store, req).await.map(Answer::from)
                        }
                        Guest::$Kind(Versioned::V1(g)) => {
                            g.$call_request(store, req).await.map(Answer::from)
                        }
                    )*
                }
            }

            /// The kind's response export (`Unused` for kinds without one).
            pub(crate) async fn response(
                &self,
                store: &mut Store<FilterState>,
                req: Resource<RequestEntry>,
                resp: Resource<ResponseEntry>,
            ) -> wasmtime::Result<ResponseAnswer> {
                match self {
                    $(Guest::$CKind(_) => Err(wrong_call(Kind::$CKind)),)*
                    $(Guest::$Kind(g) => respond!(g, store, req, resp $(, $call_response)?),)*
                }
            }

            /// The kind's connection export.
            pub(crate) async fn connect(
                &self,
                store: &mut Store<FilterState>,
                conn: &Connection,
            ) -> wasmtime::Result<ConnectVerdict> {
                match self {
                    $(
                        Guest::$CKind(g) => {
                            let info = v2::policies::$csnake::ConnectionInfo::from(conn);
                            g.$call_connect(store, &info).await.map(ConnectVerdict::from)
                        }
                    )*
                    $(Guest::$Kind(_) => Err(wrong_call(Kind::$Kind)),)*
                }
            }
        }
    };
}

sluice_kinds::for_each_kind!(kinds);

/// A call the kind does not have: the proxy calls connection kinds only on
/// connections and the others only on requests, as configurations are checked.
fn wrong_call(kind: Kind) -> wasmtime::Error {
    wasmtime::Error::msg(format!(
        "a `{}` filter was called in the wrong phase",
        kind.interface()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_listed_in_phase_order_with_their_interfaces() {
        let interfaces: Vec<&str> = Kind::ALL.iter().map(|k| k.interface()).collect();
        assert_eq!(
            interfaces,
            [
                "connection",
                "auth",
                "rate-limit",
                "transform",
                "http-filter",
                "routing",
                "cache-policy"
            ]
        );
        assert!(Kind::ALL.windows(2).all(|w| w[0] < w[1]));
        let answering: Vec<Kind> = Kind::ALL
            .iter()
            .copied()
            .filter(|k| k.has_response_phase())
            .collect();
        assert_eq!(
            answering,
            [Kind::Transform, Kind::HttpFilter, Kind::CachePolicy]
        );
    }

    /// The README's table of kinds is derived from the same list: the
    /// interfaces and worlds, in phase order.
    #[test]
    fn the_readme_lists_the_kinds_as_the_table_does() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("## Policy kinds")
            .nth(1)
            .expect("README has a `## Policy kinds` section");
        let rows: Vec<(String, String)> = section
            .lines()
            .take_while(|l| !l.starts_with("## "))
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (
                    cells[1].trim_matches('`').into(),
                    cells[2].trim_matches('`').into(),
                )
            })
            .collect();
        let table: Vec<(String, String)> = Kind::ALL
            .iter()
            .map(|k| (k.interface().into(), k.world().into()))
            .collect();
        assert_eq!(rows, table);
    }
}
