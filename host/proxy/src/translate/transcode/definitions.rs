//! A service's definitions, loaded: `.proto` files compiled here (imports
//! followed through the include folders, `google/api` and the well-known
//! types built in), or a compiled descriptor set.

use std::path::{Path, PathBuf};

use prost_reflect::DescriptorPool;
use protox::Compiler;
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

use crate::config::TranscodeConfig;

/// The definitions `config` names (paths relative to `dir`), and the files
/// they were read from (to watch).
pub(super) fn load(
    config: &TranscodeConfig,
    dir: &Path,
) -> Result<(DescriptorPool, Vec<PathBuf>), String> {
    match (&config.descriptor, config.protos.is_empty()) {
        (Some(_), false) => Err("`descriptor` or `protos`, not both".into()),
        (None, true) => Err("`protos` or `descriptor` names the service's definitions".into()),
        (Some(descriptor), true) => {
            let path = dir.join(descriptor);
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let pool = DescriptorPool::decode(bytes.as_slice())
                .map_err(|e| format!("{}: not a descriptor set: {e}", path.display()))?;
            Ok((pool, vec![path]))
        }
        (None, false) => {
            let includes: Vec<PathBuf> = match config.include.is_empty() {
                true => vec![dir.to_owned()],
                false => config.include.iter().map(|i| dir.join(i)).collect(),
            };
            let mut resolver = ChainFileResolver::new();
            for include in includes {
                resolver.add(IncludeFileResolver::new(include));
            }
            resolver.add(GoogleApi);
            resolver.add(GoogleFileResolver::new());
            let mut compiler = Compiler::with_file_resolver(resolver);
            compiler.include_imports(true);
            for proto in &config.protos {
                compiler.open_file(proto).map_err(|e| describe(&e))?;
            }
            let read = compiler
                .files()
                .filter_map(|f| f.path().map(Path::to_owned));
            Ok((compiler.descriptor_pool(), read.collect()))
        }
    }
}

/// `google/api/http.proto` and `annotations.proto`, which nearly every
/// annotated service imports.
struct GoogleApi;

impl FileResolver for GoogleApi {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        let source = match name {
            "google/api/http.proto" => include_str!("../google/api/http.proto"),
            "google/api/annotations.proto" => include_str!("../google/api/annotations.proto"),
            _ => return Err(protox::Error::file_not_found(name)),
        };
        File::from_source(name, source)
    }
}

/// A compile error with its file, line and column when it has them.
fn describe(error: &protox::Error) -> String {
    use miette::Diagnostic;
    let at = error
        .labels()
        .and_then(|mut labels| labels.next())
        .and_then(|label| {
            let source = error.source_code()?;
            let span = source.read_span(label.inner(), 0, 0).ok()?;
            let file = span.name().or(error.file())?.to_owned();
            Some(format!("{file}:{}:{}", span.line() + 1, span.column() + 1))
        });
    match (at, error.file()) {
        (Some(at), _) => format!("{at}: {error}"),
        (None, Some(file)) if !error.to_string().contains(file) => format!("{file}: {error}"),
        _ => error.to_string(),
    }
}
