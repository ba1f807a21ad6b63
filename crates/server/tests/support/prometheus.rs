//! A small parser of the Prometheus text exposition format 0.0.4, strict enough to catch what
//! a scraper would reject: every line a HELP, a TYPE or a sample `name{labels} value`; one HELP
//! and one TYPE per family, before its samples, and each family's samples together; label
//! values escaped; histogram buckets cumulative, ending at `+Inf` equal to `_count`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: HashMap<String, String>,
    pub help: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include `labels`; panics unless exactly one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0].value
    }

    /// The sum of the samples `name` (all label sets).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples.iter().filter(|s| s.name == name).map(|s| s.value).sum()
    }

    /// Whether a family of that name was declared.
    pub fn has_family(&self, name: &str) -> bool {
        self.types.contains_key(name)
    }

    /// The `q` quantile (0..1) of a histogram family, interpolated linearly in its bucket, of
    /// the observations between `before` and `self`; None without observations.
    pub fn quantile_since(&self, before: &Exposition, family: &str, q: f64) -> Option<f64> {
        let buckets = |e: &Exposition| -> Vec<(f64, f64)> {
            let mut v: Vec<(f64, f64)> = e
                .samples
                .iter()
                .filter(|s| s.name == format!("{family}_bucket"))
                .map(|s| (parse_value(&s.labels["le"]).unwrap(), s.value))
                .collect();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v
        };
        let (now, then) = (buckets(self), buckets(before));
        let diff: Vec<(f64, f64)> =
            now.iter().map(|(le, n)| (*le, n - then.iter().find(|b| b.0 == *le).map_or(0.0, |b| b.1))).collect();
        let total = diff.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for (le, n) in diff {
            if n >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let share = if n > lower.1 { (rank - lower.1) / (n - lower.1) } else { 1.0 };
                return Some(lower.0 + (le - lower.0) * share);
            }
            lower = (le, n);
        }
        None
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The family a sample belongs to: a histogram's `_bucket`, `_sum` and `_count` belong to it.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "histogram" || t == "summary")
        {
            return base;
        }
    }
    name
}

/// Parses `{k="v",...}` at the start of `s`: the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("no {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let key = &rest[..eq];
        if !valid_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("raw line feed in a label value".into()),
                (_, c) => value.push(c),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses and checks an exposition; the error names the line.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let mut seen_samples: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut closed: HashSet<String> = HashSet::new();
    let mut series: HashSet<String> = HashSet::new();
    if !text.ends_with('\n') {
        return Err("the last line has no line feed".into());
    }
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').ok_or_else(|| err("HELP without text".into()))?;
            if !valid_name(name) || e.help.insert(name.to_owned(), help.to_owned()).is_some() {
                return Err(err("bad or repeated HELP".into()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| err("TYPE without a type".into()))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(err(format!("unknown type {kind}")));
            }
            if seen_samples.contains(name) || e.types.insert(name.to_owned(), kind.to_owned()).is_some() {
                return Err(err("TYPE repeated or after the family's samples".into()));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(err("neither HELP, TYPE nor a sample".into()));
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(err("bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(err)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value = rest.strip_prefix(' ').ok_or_else(|| err("no space before the value".into()))?;
        // An optional timestamp may follow; we write none.
        let value = parse_value(value).ok_or_else(|| err("bad value".into()))?;
        let family = family_of(name, &e.types).to_owned();
        if !e.types.contains_key(&family) || !e.help.contains_key(&family) {
            return Err(err("sample without a TYPE and HELP before it".into()));
        }
        if current.as_deref() != Some(&family) {
            if closed.contains(&family) {
                return Err(err("the family's samples are not together".into()));
            }
            if let Some(c) = current.take() {
                closed.insert(c);
            }
            current = Some(family.clone());
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(err("the same series twice".into()));
        }
        seen_samples.insert(family);
        e.samples.push(Sample { name: name.to_owned(), labels, value });
    }
    check_histograms(&e)?;
    Ok(e)
}

fn check_histograms(e: &Exposition) -> Result<(), String> {
    for (family, _) in e.types.iter().filter(|(_, t)| *t == "histogram") {
        let mut buckets: Vec<(f64, f64)> = e
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
            .map(|s| (s.labels.get("le").and_then(|l| parse_value(l)).unwrap_or(f64::NAN), s.value))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.is_empty() || buckets.iter().any(|b| b.0.is_nan()) {
            return Err(format!("{family}: no buckets, or a bucket without le"));
        }
        if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!("{family}: buckets not cumulative: {buckets:?}"));
        }
        let last = buckets.last().unwrap();
        let count = e.value(&format!("{family}_count"), &[]);
        if !last.0.is_infinite() || last.1 != count {
            return Err(format!("{family}: +Inf bucket {last:?} is not _count {count}"));
        }
        e.value(&format!("{family}_sum"), &[]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_rejects_what_a_scraper_would() {
        let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 3\n";
        let e = parse(ok).unwrap();
        assert_eq!(e.samples[0].labels["x"], "q\"\\\n");
        for bad in [
            "a_total 3\n",
            "# HELP a A.\n# TYPE a gauge\na{x=\"unterminated} 1\n",
            "# HELP a A.\n# TYPE a gauge\na 1\n# HELP b B.\n# TYPE b gauge\nb 1\na{y=\"1\"} 2\n",
            "# HELP a A.\n# TYPE a gauge\na 1\na 2\n",
            "# HELP a A.\n# TYPE a gauge\na one\n",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "# HELP a A.\n# TYPE a gauge\na 1",
            "# HELP a A.\n# TYPE a gauge\n\na 1\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
