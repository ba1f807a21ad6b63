//! The configuration file as text: where an error is (file, line, column and the dotted key),
//! and edits written back with the file's comments and order kept (`toml_edit`), for config
//! reloads and `PATCH /api/v1/config/paths/{pattern}`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Document, DocumentMut, Item, TableLike};

use crate::config::Config;

/// A configuration that was refused: where, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (None for text that came from elsewhere, e.g. the API).
    pub file: Option<PathBuf>,
    /// 1-based line and column of the offending key or value, when known.
    pub at: Option<(usize, usize)>,
    /// The dotted key (`rtmp.chunk_size`, `paths."cams/*".record`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some((line, col)) = self.at {
                write!(f, ":{line}:{col}")?;
            }
            f.write_str(": ")?;
        } else if let Some((line, col)) = self.at {
            write!(f, "line {line}, column {col}: ")?;
        }
        if let Some(key) = &self.key
            && !self.message.contains(key.as_str())
        {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Reads and checks a configuration file; the error says where ([`ConfigError`]).
pub fn load(file: &Path) -> Result<(Config, String), ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: Some(file.to_owned()),
        at: None,
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    let config = parse(&text, Some(file))?;
    Ok((config, text))
}

/// [`Config::parse`] with the error located in `text`.
pub fn parse(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
    Config::parse(text).map_err(|e| locate(text, file, &e))
}

/// Where `err` (from [`Config::parse`] of `text`) is: TOML errors carry a span; a check that
/// failed after parsing names its key first in its message (`rtmp.chunk_size must be ...`),
/// which is looked up in the text.
pub fn locate(text: &str, file: Option<&Path>, err: &anyhow::Error) -> ConfigError {
    let doc = Document::parse(text.to_owned()).ok();
    if let Some(te) = err.chain().find_map(|e| e.downcast_ref::<toml::de::Error>()) {
        let span = te.span();
        let key = span.as_ref().and_then(|s| doc.as_ref().and_then(|d| key_at(d.as_table(), s.start)));
        return ConfigError {
            file: file.map(Path::to_owned),
            at: span.map(|s| line_col(text, s.start)),
            key,
            message: te.message().trim().to_owned(),
        };
    }
    let message = format!("{err:#}");
    let named = leading_key(&message);
    let found = named.as_ref().and_then(|k| doc.as_ref().and_then(|d| span_of(d.as_table(), k)));
    ConfigError { file: file.map(Path::to_owned), at: found.map(|s| line_col(text, s.start)), key: named, message }
}

/// 1-based line and column of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A key as written in a dotted key: bare when it can be, else quoted.
fn quote(key: &str) -> String {
    if !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// The deepest key whose name or value covers byte `offset`.
fn key_at(table: &dyn TableLike, offset: usize) -> Option<String> {
    fn walk(table: &dyn TableLike, prefix: &str, offset: usize, best: &mut Option<String>) {
        for (name, item) in table.iter() {
            let Some((key, _)) = table.get_key_value(name) else { continue };
            let here = if prefix.is_empty() { quote(name) } else { format!("{prefix}.{}", quote(name)) };
            let covers = |s: Option<Range<usize>>| s.is_some_and(|s| s.contains(&offset) || s.start == offset);
            if covers(key.span()) || covers(item.span()) {
                *best = Some(here.clone());
            }
            match item {
                Item::ArrayOfTables(a) => {
                    for (i, t) in a.iter().enumerate() {
                        walk(t, &format!("{here}[{i}]"), offset, best);
                    }
                }
                _ => {
                    if let Some(t) = item.as_table_like() {
                        walk(t, &here, offset, best);
                    }
                }
            }
        }
    }
    let mut best = None;
    walk(table, "", offset, &mut best);
    best
}

/// The key a check's message starts with (`paths."x/*".record_max_bytes must ...`,
/// `hooks.targets[0].url: ...`), if it starts with one.
fn leading_key(message: &str) -> Option<String> {
    let mut end = 0;
    let mut quoted = false;
    for (i, c) in message.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if !quoted && (c.is_whitespace() || c == ':') => break,
            _ => {}
        }
        end = i + c.len_utf8();
    }
    let key = &message[..end];
    (key.contains('.') && !key.ends_with('.') && parse_dotted(key).is_some()).then(|| key.to_owned())
}

/// One step of a dotted key: a name, or an index into an array of tables.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Name(String),
    Index(usize),
}

fn parse_dotted(key: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    let mut rest = key;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"')?;
            steps.push(Step::Name(r[..end].to_owned()));
            rest = &r[end + 1..];
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            if end == 0 && !rest.starts_with('[') {
                return None;
            }
            if end > 0 {
                steps.push(Step::Name(rest[..end].to_owned()));
            }
            rest = &rest[end..];
        }
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            steps.push(Step::Index(r[..end].parse().ok()?));
            rest = &r[end + 1..];
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    Some(steps)
}

/// The span of the deepest part of `key` present in the document (a key's own name where it
/// has a span, else its value, else its table header).
fn span_of(table: &dyn TableLike, key: &str) -> Option<Range<usize>> {
    let steps = parse_dotted(key)?;
    let mut found = None;
    let mut item: Option<&Item> = None;
    let mut table = Some(table);
    let mut i = 0;
    while i < steps.len() {
        let Step::Name(name) = &steps[i] else { return found };
        let Some((k, it)) = table.and_then(|t| t.get_key_value(name)) else { return found };
        found = k.span().or_else(|| it.span()).or(found);
        item = Some(it);
        i += 1;
        if let Some(Step::Index(n)) = steps.get(i) {
            let t = it.as_array_of_tables().and_then(|a| a.get(*n))?;
            found = t.span().or(found);
            table = Some(t as &dyn TableLike);
            i += 1;
        } else {
            table = it.as_table_like();
        }
    }
    let _ = item;
    found
}

/// Why a path's settings could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The body is not a JSON object of keys, or holds a value TOML cannot say (null).
    #[error("{0}")]
    Body(String),
    /// The file on disk does not parse (it changed under us).
    #[error("the config file does not parse: {0}")]
    File(String),
    /// The result is not a valid configuration.
    #[error("{0}")]
    Invalid(ConfigError),
}

/// `text` with `[paths."PATTERN"]` given the keys of `patch` (a JSON object): each key is set
/// (or, with a JSON `null`, removed); the entry is created at the end of the file when it does
/// not exist; everything else, comments included, is left as it was. The result is checked
/// like the file ([`Config::parse`]).
pub fn patch_path(text: &str, pattern: &str, patch: &serde_json::Value) -> Result<(String, Config), PatchError> {
    let obj =
        patch.as_object().ok_or_else(|| PatchError::Body("the body must be a JSON object of path keys".into()))?;
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| PatchError::File(e.to_string()))?;
    let root = doc.as_table_mut();
    if !root.contains_key("paths") {
        let mut t = toml_edit::Table::new();
        t.set_implicit(true);
        root.insert("paths", Item::Table(t));
    }
    let paths = root["paths"].as_table_like_mut().ok_or_else(|| PatchError::File("`paths` is not a table".into()))?;
    if paths.get(pattern).is_none() {
        paths.insert(pattern, Item::Table(toml_edit::Table::new()));
    }
    let entry = paths
        .get_mut(pattern)
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| PatchError::File(format!("paths.{pattern:?} is not a table")))?;
    for (key, value) in obj {
        if value.is_null() {
            entry.remove(key);
            continue;
        }
        let v = json_to_toml(value).map_err(|e| PatchError::Body(format!("{key}: {e}")))?;
        match entry.get_mut(key) {
            // Keep the key's comments and spacing: replace the value, keep its decor.
            Some(Item::Value(old)) => {
                let decor = old.decor().clone();
                *old = v;
                *old.decor_mut() = decor;
            }
            _ => {
                entry.insert(key, Item::Value(v));
            }
        }
    }
    let out = doc.to_string();
    let config = parse(&out, None).map_err(PatchError::Invalid)?;
    Ok((out, config))
}

/// A JSON value as a TOML value (no nulls; integers stay integers).
fn json_to_toml(v: &serde_json::Value) -> Result<toml_edit::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => return Err("null is only allowed at the top level (it removes the key)".into()),
        J::Bool(b) => (*b).into(),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.into(),
            (None, Some(f)) if n.is_f64() => f.into(),
            _ => return Err(format!("{n} does not fit a TOML integer")),
        },
        J::String(s) => s.as_str().into(),
        J::Array(a) => {
            let mut arr = toml_edit::Array::new();
            for x in a {
                arr.push(json_to_toml(x)?);
            }
            toml_edit::Value::Array(arr)
        }
        J::Object(o) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, x) in o {
                t.insert(k, json_to_toml(x)?);
            }
            toml_edit::Value::InlineTable(t)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        parse(text, Some(Path::new("/etc/ferrocast.toml"))).unwrap_err()
    }

    #[test]
    fn unknown_keys_and_bad_values_give_file_line_and_key() {
        let e = err("log_level = \"info\"\n\n[rtmp]\nchunk_size = 4096\nchunk_sise = 5000\n");
        assert_eq!(e.at, Some((5, 1)), "{e}");
        assert_eq!(e.key.as_deref(), Some("rtmp.chunk_sise"), "{e}");
        let shown = e.to_string();
        assert!(
            shown.starts_with("/etc/ferrocast.toml:5:1: rtmp.chunk_sise: ") && shown.contains("unknown field"),
            "{shown}"
        );
        let e = err("[paths.\"cams/*\"]\nrecord = \"yes\"\n");
        assert_eq!((e.at.map(|a| a.0), e.key.as_deref()), (Some(2), Some("paths.\"cams/*\".record")), "{e}");
        // A syntax error: the line, no key.
        let e = err("[rtmp\n");
        assert_eq!(e.at.map(|a| a.0), Some(1), "{e}");
    }

    #[test]
    fn failed_checks_are_located_by_their_key() {
        let e = err("# comment\n[rtmp]\n\nchunk_size = 1\n");
        assert_eq!((e.at, e.key.as_deref()), (Some((4, 1)), Some("rtmp.chunk_size")), "{e}");
        assert!(e.to_string().starts_with("/etc/ferrocast.toml:4:1: rtmp.chunk_size must be"), "{e}");
        let e = err("[paths.\"x/*\"]\nrecord = true\nhls_segment_duration_ms = 10\n");
        assert_eq!(e.at.map(|a| a.0), Some(3), "{e}");
        let e = err("[hooks]\n[[hooks.targets]]\ncommand = [\"a\"]\n[[hooks.targets]]\nurl = \"ftp://x/\"\n");
        assert_eq!((e.at.map(|a| a.0), e.key.as_deref()), (Some(5), Some("hooks.targets[1].url")), "{e}");
    }

    #[test]
    fn leading_keys() {
        assert_eq!(leading_key("rtmp.chunk_size must be").as_deref(), Some("rtmp.chunk_size"));
        assert_eq!(leading_key("paths.\"a b:c\".record: x").as_deref(), Some("paths.\"a b:c\".record"));
        assert_eq!(leading_key("no key here"), None);
        assert_eq!(
            parse_dotted("hooks.targets[2].url"),
            Some(vec![
                Step::Name("hooks".into()),
                Step::Name("targets".into()),
                Step::Index(2),
                Step::Name("url".into())
            ])
        );
    }

    #[test]
    fn patch_keeps_comments_and_order() {
        let text = "# top comment\nlog_level = \"info\"\n\n[paths.\"cams/*\"]\n# keep me\nrecord = false # inline\n\n\
                    [rtmp]\nchunk_size = 4096\n";
        let (out, c) =
            patch_path(text, "cams/*", &serde_json::json!({"record": true, "record_max_age_ms": 1000})).unwrap();
        assert!(out.contains("# top comment") && out.contains("# keep me") && out.contains("# inline"), "{out}");
        assert!(out.find("cams/*").unwrap() < out.find("[rtmp]").unwrap(), "{out}");
        assert!(c.paths.get("cams/a").record && c.paths.get("cams/a").record_max_age_ms == Some(1000));
        // A new entry, and a key removed with null.
        let (out, c) = patch_path(&out, "live/x", &serde_json::json!({"push": ["rtmp://h/app/k"]})).unwrap();
        assert_eq!(c.paths.get("live/x").push, ["rtmp://h/app/k"]);
        let (_, c) = patch_path(&out, "cams/*", &serde_json::json!({"record_max_age_ms": null})).unwrap();
        assert_eq!(c.paths.get("cams/a").record_max_age_ms, None);
        // Into a file without [paths].
        let (out, c) = patch_path("[rtmp]\nchunk_size = 4096\n", "a", &serde_json::json!({"record": true})).unwrap();
        assert!(c.paths.get("a").record && out.starts_with("[rtmp]"), "{out}");
    }

    /// `[paths]` written as inline tables is edited in place, without a panic.
    #[test]
    fn patch_into_inline_tables() {
        let text = "paths = { \"a\" = { record = false } } # inline\n";
        let (out, c) = patch_path(text, "a", &serde_json::json!({"record": true})).unwrap();
        assert!(c.paths.get("a").record && out.contains("# inline"), "{out}");
        let (_, c) = patch_path(&out, "b/*", &serde_json::json!({"record": true})).unwrap();
        assert!(c.paths.get("b/x").record);
        assert!(matches!(patch_path("paths = 5\n", "a", &serde_json::json!({})), Err(PatchError::File(_))));
    }

    #[test]
    fn patch_errors_name_the_key() {
        let PatchError::Invalid(e) = patch_path("", "a", &serde_json::json!({"recrod": true})).unwrap_err() else {
            panic!()
        };
        assert_eq!(e.key.as_deref(), Some("paths.a.recrod"), "{e}");
        let PatchError::Invalid(e) =
            patch_path("", "a/*", &serde_json::json!({"hls_segment_duration_ms": 5})).unwrap_err()
        else {
            panic!()
        };
        assert!(e.to_string().contains("paths.\"a/*\".hls_segment_duration_ms"), "{e}");
        assert!(matches!(patch_path("", "a", &serde_json::json!([1])), Err(PatchError::Body(_))));
        assert!(matches!(patch_path("", "a//b", &serde_json::json!({})), Err(PatchError::Invalid(_))));
    }
}
