//! `google.api.http` path templates: `/v1/{name=shelves/*}/books/{id}:verb`.
//! A segment is a literal, `*` (one segment) or `**` (the rest); a
//! variable `{field.path}` binds one segment, `{field=pattern}` the
//! segments its pattern covers.

use std::fmt;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
    verb: Option<String>,
    variables: Vec<Variable>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`
    One,
    /// `**`, last only
    Rest,
}

/// A field the path sets: its dotted path and the segments it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field: String,
    start: usize,
    end: usize,
}

/// A bound variable: the field's dotted path and its decoded value.
pub type Binding = (String, String);

impl Template {
    /// Parse `text`, which starts with `/`.
    pub fn parse(text: &str) -> Result<Template, String> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| format!("`{text}` does not start with `/`"))?;
        let (path, verb) = split_verb(rest);
        let mut template = Template {
            segments: Vec::new(),
            verb: verb.map(str::to_owned),
            variables: Vec::new(),
            text: text.to_owned(),
        };
        let mut chars = path;
        while !chars.is_empty() {
            if let Some(inner) = chars.strip_prefix('{') {
                let close = inner
                    .find('}')
                    .ok_or_else(|| format!("`{text}`: a `{{` without its `}}`"))?;
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((field, pattern)) => (field, pattern),
                    None => (&inner[..close], "*"),
                };
                if field.is_empty() || !field.split('.').all(is_identifier) {
                    return Err(format!("`{text}`: `{field}` is not a field path"));
                }
                let start = template.segments.len();
                for segment in pattern.split('/') {
                    template.segments.push(Segment::parse(segment, text)?);
                }
                template.variables.push(Variable {
                    field: field.to_owned(),
                    start,
                    end: template.segments.len(),
                });
                chars = &inner[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                template.segments.push(Segment::parse(&chars[..end], text)?);
                chars = &chars[end..];
            }
            chars = match chars.strip_prefix('/') {
                Some(next) if !next.is_empty() => next,
                Some(_) => return Err(format!("`{text}` ends with `/`")),
                None if chars.is_empty() => chars,
                None => return Err(format!("`{text}`: a variable must be a whole segment")),
            };
        }
        let last = template.segments.len().saturating_sub(1);
        if (template.segments.iter())
            .position(|s| *s == Segment::Rest)
            .is_some_and(|at| at != last)
        {
            return Err(format!("`{text}`: `**` must be the last segment"));
        }
        Ok(template)
    }

    /// The fields `path` sets, if it matches.
    pub fn matches(&self, path: &str) -> Option<Vec<Binding>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let given: Vec<&str> = match path.is_empty() {
            true => Vec::new(),
            false => path.split('/').collect(),
        };
        let rest = self.segments.last() == Some(&Segment::Rest);
        let fixed = self.segments.len() - usize::from(rest);
        if given.len() < fixed || (!rest && given.len() != fixed) {
            return None;
        }
        for (segment, text) in self.segments.iter().zip(&given) {
            match segment {
                Segment::Literal(literal) if literal != text => return None,
                Segment::One if text.is_empty() => return None,
                _ => {}
            }
        }
        let bound = self.variables.iter().map(|variable| {
            let end = match variable.end == self.segments.len() && rest {
                true => given.len(),
                false => variable.end,
            };
            let raw = given[variable.start..end].join("/");
            // One segment: every escape decoded; several: `%2F` stays, so
            // the value's own slashes are told from the path's.
            let value = match end - variable.start {
                1 => decode(&raw),
                _ => decode(&raw.replace("%2F", "%252F").replace("%2f", "%252f")),
            };
            (variable.field.clone(), value)
        });
        Some(bound.collect())
    }

    /// The fields the path sets, dotted.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.field.as_str())
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Segment {
    fn parse(text: &str, template: &str) -> Result<Segment, String> {
        match text {
            "*" => Ok(Segment::One),
            "**" => Ok(Segment::Rest),
            "" => Err(format!("`{template}`: an empty segment")),
            literal if literal.contains(['{', '}', '*', '=']) => {
                Err(format!("`{template}`: `{literal}` is not a segment"))
            }
            literal => Ok(Segment::Literal(literal.to_owned())),
        }
    }
}

/// The path and its `:verb`, which follows the last segment.
fn split_verb(path: &str) -> (&str, Option<&str>) {
    let last = path.rfind(['/', '}']).map_or(0, |at| at + 1);
    match path[last..].rfind(':') {
        Some(at) => (&path[..last + at], Some(&path[last + at + 1..])),
        None => (path, None),
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        Template::parse(template).unwrap().matches(path)
    }

    fn pairs(list: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            list.iter()
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn variables_bind_segments() {
        assert_eq!(
            bound(
                "/v1/shelves/{shelf}/books/{book.id}",
                "/v1/shelves/s%201/books/7"
            ),
            pairs(&[("shelf", "s 1"), ("book.id", "7")])
        );
        assert_eq!(
            bound("/v1/{name=shelves/*/books/*}", "/v1/shelves/a/books/b"),
            pairs(&[("name", "shelves/a/books/b")])
        );
        assert_eq!(
            bound("/files/{path=**}", "/files/a/b%2Fc/d"),
            pairs(&[("path", "a/b%2Fc/d")])
        );
        assert_eq!(bound("/v1/shelves/{shelf}", "/v1/shelves"), None);
        assert_eq!(bound("/v1/shelves/{shelf}", "/v1/shelves/a/b"), None);
        assert_eq!(bound("/v1/shelves/{shelf}", "/v1/shelves/"), None);
        assert_eq!(bound("/v1/shelves", "/v1/shelvez"), None);
    }

    #[test]
    fn verbs_follow_the_last_segment() {
        assert_eq!(bound("/v1:search", "/v1:search"), pairs(&[]));
        assert_eq!(
            bound("/v1/{name=books/*}:publish", "/v1/books/9:publish"),
            pairs(&[("name", "books/9")])
        );
        assert_eq!(bound("/v1/{name=books/*}:publish", "/v1/books/9"), None);
        assert_eq!(bound("/v1:search", "/v1:find"), None);
    }

    #[test]
    fn malformed_templates() {
        for bad in [
            "v1/x", "/v1/{x", "/v1/{}", "/v1/**/x", "/v1/a{x}", "/v1//x", "/v1/x/", "/v1/{1x}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
