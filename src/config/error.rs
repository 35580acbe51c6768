//! Errors that name the file, the line and the field.

use super::Config;
use crate::ConfigError;
use std::fmt;
use std::ops::Range;

/// What is wrong with a configuration file: each mistake with its line and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFileError {
    pub(super) file: String,
    pub(super) errors: Vec<FileError>,
}

/// One mistake in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The line (from 1), or 0 when the mistake is about the whole file.
    pub line: usize,
    /// The field, such as `routes."GET /users/{id}".ttl`, if known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigFileError {
    pub(super) fn whole(file: &str, message: String) -> Self {
        Self {
            file: file.to_owned(),
            errors: vec![FileError {
                line: 0,
                field: None,
                message,
            }],
        }
    }

    /// The file's name.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Each mistake.
    pub fn errors(&self) -> &[FileError] {
        &self.errors
    }
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if e.line > 0 {
                write!(f, ":{}", e.line)?;
            }
            write!(f, ": ")?;
            if let Some(field) = &e.field {
                write!(f, "{field}: ")?;
            }
            write!(f, "{}", e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigFileError {}

impl Config {
    pub(super) fn result(&self, errors: Vec<FileError>) -> Result<(), ConfigFileError> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigFileError {
                file: self.file().to_owned(),
                errors,
            })
        }
    }

    pub(super) fn file(&self) -> &str {
        self.source.as_ref().map_or("(config)", |(f, _)| f.as_str())
    }

    pub(super) fn text(&self) -> &str {
        self.source.as_ref().map_or("", |(_, t)| t.as_str())
    }

    pub(super) fn error_at(
        &self,
        span: Range<usize>,
        field: Option<String>,
        message: String,
    ) -> FileError {
        FileError {
            line: if self.text().is_empty() {
                0
            } else {
                line_of(self.text(), span.start)
            },
            field,
            message,
        }
    }

    /// The span of the table `place` names (`routes[GET /x]`, `policies.name`, `stash`),
    /// narrowed to the line of `field` in it when there is one.
    pub(super) fn find(&self, place: &str, field: Option<&str>) -> Range<usize> {
        let table = if let Some(route) = place
            .strip_prefix("routes[")
            .and_then(|r| r.strip_suffix(']'))
        {
            self.spans.routes.get(route).cloned()
        } else if let Some(route) = place
            .strip_prefix("rules[")
            .and_then(|r| r.strip_suffix(']'))
        {
            self.spans.rules.get(route).cloned()
        } else if let Some(name) = place.strip_prefix("policies.") {
            self.spans.policies.get(name).cloned()
        } else {
            // `[stash]` or `[stash.redis]`: from its header to the next one.
            let header = format!("[{place}]");
            let text = self.text();
            text.find(&header).map(|at| {
                let end = text[at + header.len()..]
                    .find("\n[")
                    .map_or(text.len(), |n| at + header.len() + n);
                at..end
            })
        };
        let Some(table) = table else {
            return 0..0;
        };
        // A table's span may cover its header only: its fields run to the next header.
        let text = self.text();
        let table = {
            let from = table.end.min(text.len());
            let end = text[from..].find("\n[").map_or(text.len(), |n| from + n);
            table.start..end.max(table.end)
        };
        let Some(field) = field else {
            return table;
        };
        let body = &text[table.clone()];
        let mut offset = 0;
        for line in body.split_inclusive('\n') {
            let trimmed = line.trim_start();
            if let Some(rest) = trimmed.strip_prefix(field) {
                if rest.trim_start().starts_with('=') {
                    let at = table.start + offset + (line.len() - trimmed.len());
                    return at..at + field.len();
                }
            }
            offset += line.len();
        }
        // Inline tables (`{ key = .. }`): search the text of the table.
        match body.find(&format!("{field} =")) {
            Some(at) => table.start + at..table.start + at + field.len(),
            None => table,
        }
    }

    /// [`ConfigError`] lines (`routes[GET /x].key: ...`) with their file lines.
    pub(super) fn place_errors(&self, e: &ConfigError) -> Vec<FileError> {
        e.errors()
            .iter()
            .map(|line| {
                let (place, message) = line.split_once(": ").unwrap_or(("", line));
                // `routes[GET /x].key`, `policies.name.ttl`, `stash.namespace`
                let (table, field) = match place.rfind(']') {
                    Some(end) => {
                        let field = place[end + 1..].strip_prefix('.');
                        (&place[..=end], field)
                    }
                    None => match place.split_once('.') {
                        Some((head, rest)) if head == "policies" => match rest.split_once('.') {
                            Some((name, field)) => {
                                (&place[..head.len() + 1 + name.len()], Some(field))
                            }
                            None => (place, None),
                        },
                        Some((head, field)) => (head, Some(field)),
                        None => (place, None),
                    },
                };
                let span = self.find(table, field);
                FileError {
                    line: if self.text().is_empty() {
                        0
                    } else {
                        line_of(self.text(), span.start)
                    },
                    field: Some(toml_place(table, field)),
                    message: message.to_owned(),
                }
            })
            .collect()
    }
}

/// A [`ConfigError`] place (`routes[GET /x]`, `policies.p`, `stash`) written as the file
/// writes it (`routes."GET /x"`).
pub(super) fn toml_place(table: &str, field: Option<&str>) -> String {
    let mut s = if let Some(route) = table
        .strip_prefix("routes[")
        .and_then(|r| r.strip_suffix(']'))
    {
        format!("routes.\"{route}\"")
    } else if let Some(route) = table
        .strip_prefix("rules[")
        .and_then(|r| r.strip_suffix(']'))
    {
        format!("rules.\"{route}\"")
    } else {
        table.to_owned()
    };
    if let Some(f) = field {
        s.push('.');
        s.push_str(f);
    }
    s
}

/// The line (from 1) of byte `offset`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted name of the key on the line of `offset`: its table header and the key.
pub(super) fn field_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let header = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let line_header = line
        .trim()
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    match (line_header, header, key) {
        (Some(h), _, _) => Some(h),
        (None, Some(h), Some(k)) => Some(format!("{h}.{k}")),
        (None, None, Some(k)) => Some(k),
        (None, Some(h), None) => Some(h),
        (None, None, None) => None,
    }
}
