//! A configuration file as read, and errors that point into it: the file,
//! the line and the key at fault.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a configuration came from, to point errors at the right line.
#[derive(Debug, Default, Clone)]
pub struct Source {
    /// The file's path as given.
    pub path: PathBuf,
    text: String,
}

impl Source {
    /// `text`, as read from `path`.
    pub fn new(path: &Path, text: String) -> Source {
        Source {
            path: path.to_owned(),
            text,
        }
    }

    /// The folder relative paths in the file are resolved against.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The file's text, as parsed.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// An error at byte offset `at` of the file, about `key`.
    pub fn error(
        &self,
        at: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let line = self.text[..at.min(self.text.len())].matches('\n').count() + 1;
        ConfigError {
            file: self.path.clone(),
            line,
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A configuration error, pointing at the file, line and key at fault.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// The key at fault, as a dotted path (may be empty for syntax errors).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}
