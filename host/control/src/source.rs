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
    /// A second document appended to the file's text (a fleet's
    /// configuration from etcd): its name and where it starts.
    appended: Option<(PathBuf, usize)>,
}

impl Source {
    /// `text`, as read from `path`.
    pub fn new(path: &Path, text: String) -> Source {
        Source {
            path: path.to_owned(),
            text,
            appended: None,
        }
    }

    /// `text` from `path`, followed by `more` from `name`: one configuration
    /// whose errors point into whichever part they are in.
    pub fn joined(path: &Path, text: &str, name: &str, more: &str) -> Source {
        let mut joined = String::with_capacity(text.len() + more.len() + 1);
        joined.push_str(text);
        if !joined.ends_with('\n') {
            joined.push('\n');
        }
        let start = joined.len();
        joined.push_str(more);
        Source {
            path: path.to_owned(),
            text: joined,
            appended: Some((PathBuf::from(name), start)),
        }
    }

    /// The part from the file itself (all of it, unless another was appended).
    pub fn own_text(&self) -> &str {
        &self.text[..self
            .appended
            .as_ref()
            .map_or(self.text.len(), |(_, at)| *at)]
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
        let at = at.min(self.text.len());
        let (file, start) = match &self.appended {
            Some((name, start)) if at >= *start => (name.clone(), *start),
            _ => (self.path.clone(), 0),
        };
        let line = self.text[start..at].matches('\n').count() + 1;
        ConfigError {
            file,
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
