//! `sluice plugin new`: a ready project for a filter in one of the
//! languages with a component toolchain (the source, a copy of the WIT it
//! builds against, its build command, and cases for `sluice plugin test`),
//! or a proxy-wasm filter with the Rust SDK, as written for Envoy.

use std::path::Path;

use anyhow::{anyhow, bail};

/// A language a project can be made for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
    Go,
    /// A proxy-wasm module (the Rust SDK, crates.io `proxy-wasm`).
    #[value(name = "proxy-wasm-rust")]
    ProxyWasmRust,
    /// A proxy-wasm module (the AssemblyScript SDK, npm
    /// `@gcoredev/proxy-wasm-sdk-as`).
    #[value(name = "proxy-wasm-as")]
    ProxyWasmAs,
}

/// The WIT every project carries (the contract this gateway speaks).
const WIT: &[(&str, &str)] = &[
    ("wit/types.wit", include_str!("../../../../wit/types.wit")),
    ("wit/host.wit", include_str!("../../../../wit/host.wit")),
    (
        "wit/policies.wit",
        include_str!("../../../../wit/policies.wit"),
    ),
    ("wit/worlds.wit", include_str!("../../../../wit/worlds.wit")),
];

/// A proxy-wasm project's README: it speaks the ABI, not the WIT.
const PROXY_WASM_README: (&str, &str) = (
    "README.md",
    include_str!("../../templates/proxy-wasm-README.md"),
);

/// What every project has, unless its language has its own.
const COMMON: &[(&str, &str)] = &[
    ("cases.toml", include_str!("../../templates/cases.toml")),
    ("README.md", include_str!("../../templates/README.md")),
];

impl Lang {
    fn named(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
            Lang::C => "C",
            Lang::Go => "Go",
            Lang::ProxyWasmRust => "proxy-wasm (Rust SDK)",
            Lang::ProxyWasmAs => "proxy-wasm (AssemblyScript SDK)",
        }
    }

    /// The route's `config` the template's filter reads, as TOML.
    fn config(self) -> &'static str {
        match self {
            Lang::ProxyWasmAs => "\"x-api-version\"",
            _ => "{ header = \"x-api-version\" }",
        }
    }

    /// The language's own files; `build.sh` is made executable.
    fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Lang::Rust => &[
                (
                    "Cargo.toml",
                    include_str!("../../templates/rust/Cargo.toml"),
                ),
                (
                    "src/lib.rs",
                    include_str!("../../templates/rust/src/lib.rs"),
                ),
                ("build.sh", include_str!("../../templates/rust/build.sh")),
            ],
            Lang::Python => &[
                ("app.py", include_str!("../../templates/python/app.py")),
                ("build.sh", include_str!("../../templates/python/build.sh")),
            ],
            Lang::Js => &[
                ("filter.js", include_str!("../../templates/js/filter.js")),
                (
                    "package.json",
                    include_str!("../../templates/js/package.json"),
                ),
                ("build.sh", include_str!("../../templates/js/build.sh")),
            ],
            Lang::C => &[
                ("filter.c", include_str!("../../templates/c/filter.c")),
                ("build.sh", include_str!("../../templates/c/build.sh")),
            ],
            Lang::Go => &[
                ("filter.go", include_str!("../../templates/go/filter.go")),
                ("build.sh", include_str!("../../templates/go/build.sh")),
            ],
            Lang::ProxyWasmRust => &[
                (
                    "Cargo.toml",
                    include_str!("../../templates/proxy-wasm-rust/Cargo.toml"),
                ),
                (
                    "src/lib.rs",
                    include_str!("../../templates/proxy-wasm-rust/src/lib.rs"),
                ),
                (
                    "build.sh",
                    include_str!("../../templates/proxy-wasm-rust/build.sh"),
                ),
                PROXY_WASM_README,
            ],
            Lang::ProxyWasmAs => &[
                (
                    "assembly/index.ts",
                    include_str!("../../templates/proxy-wasm-as/assembly/index.ts"),
                ),
                (
                    "package.json",
                    include_str!("../../templates/proxy-wasm-as/package.json"),
                ),
                (
                    "asconfig.json",
                    include_str!("../../templates/proxy-wasm-as/asconfig.json"),
                ),
                (
                    "build.sh",
                    include_str!("../../templates/proxy-wasm-as/build.sh"),
                ),
                (
                    "cases.toml",
                    include_str!("../../templates/proxy-wasm-as/cases.toml"),
                ),
                PROXY_WASM_README,
            ],
        }
    }
}

/// Write a project for a filter called `name` in `lang` into `dir/name`.
pub fn create(lang: Lang, name: &str, dir: &Path) -> anyhow::Result<()> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "`{name}`: a plugin name is lowercase letters, digits and `-`, starting with a letter"
        );
    }
    let files = lang.files();
    let root = dir.join(name);
    if root.exists() {
        bail!("{}: already exists", root.display());
    }
    let value = clap::ValueEnum::to_possible_value(&lang).expect("every language is offered");
    let page = match lang {
        Lang::ProxyWasmRust | Lang::ProxyWasmAs => "proxy-wasm",
        _ => value.get_name(),
    };
    let guide = format!(
        "\nThe {} guide is `docs/languages/{page}.md` in Sluice's repository.",
        lang.named(),
    );
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{language}}", lang.named())
            .replace("{{contract}}", sluice_filter::CONTRACT)
            .replace("{{guide}}", &guide)
            .replace("{{config}}", lang.config())
    };
    let wit = match lang {
        Lang::ProxyWasmRust | Lang::ProxyWasmAs => &[][..],
        _ => WIT,
    };
    let common = COMMON
        .iter()
        .filter(|(path, _)| !files.iter().any(|(own, _)| own == path));
    for (path, text) in files.iter().chain(common).chain(wit) {
        let path = root.join(path);
        let parent = path.parent().expect("files are in the project");
        std::fs::create_dir_all(parent).map_err(|e| anyhow!("{}: {e}", parent.display()))?;
        std::fs::write(&path, fill(text)).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    }
    make_executable(&root.join("build.sh"))?;
    println!(
        "made {} ({} filter); build and test it with:\n  cd {}\n  ./build.sh\n  sluice plugin test {name}.wasm cases.toml",
        root.display(),
        lang.named(),
        root.display()
    );
    Ok(())
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}
