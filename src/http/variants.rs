//! `Vary`: the record of what a URL's responses vary on, and each variant's key.

use http::header::{self, HeaderMap};

/// The internal header of a variant record: the request headers a URL's responses vary on.
pub(crate) const VARY_RECORD: &str = "tower-stash-vary";

/// The header names a variant record stored under the URL key `full` lists, if `entry` is
/// one.
pub(crate) fn record_names(entry: &crate::Entry, full: &str) -> Option<Vec<String>> {
    let value = entry.headers().get(VARY_RECORD)?;
    if entry.key() != record_key(full) {
        return None;
    }
    let names = value.to_str().ok()?;
    Some(names.split(',').map(|n| n.trim().to_owned()).collect())
}

/// The key of the variant record stored under a URL's key (it never equals an entry's key).
pub(crate) fn record_key(full: &str) -> String {
    format!("{full}|#vary")
}

/// The header names of a `Vary` (lowercased, sorted, deduplicated); `None` for `Vary: *`,
/// and an empty list when there is no `Vary`.
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for v in headers.get_all(header::VARY) {
        let v = v.to_str().ok()?;
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            names.push(name.to_ascii_lowercase());
        }
    }
    names.sort();
    names.dedup();
    Some(names)
}

/// Appends a variant's secondary key: each named request header's values, normalised
/// (lines combined, spaces around commas dropped; `Accept-Language`, `Accept-Encoding` and
/// `Accept-Charset` items lowercased and sorted), escaped.
pub(crate) fn push_variant(out: &mut String, names: &[String], request: &HeaderMap) {
    for name in names {
        out.push_str("|~");
        crate::key::escape_into(out, name.as_bytes());
        let values: Vec<String> = request
            .get_all(name.as_str())
            .iter()
            .flat_map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split(',')
                    .map(|item| item.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect::<Vec<_>>()
            })
            .filter(|v| !v.is_empty())
            .collect();
        // Language tags and codings are case-insensitive lists (of equal preference unless
        // weighted): one order, one case.
        let mut values = values;
        if matches!(
            name.as_str(),
            "accept-language" | "accept-encoding" | "accept-charset"
        ) {
            for v in &mut values {
                v.make_ascii_lowercase();
            }
            values.sort();
        }
        if request.contains_key(name.as_str()) {
            out.push('=');
            let joined = values.join(",");
            if matches!(
                name.as_str(),
                "authorization" | "cookie" | "proxy-authorization"
            ) {
                // Never a secret in a key: its 128-bit hash.
                out.push('#');
                crate::key::push_hex(out, &blake3::hash(joined.as_bytes()).as_bytes()[..16]);
            } else {
                crate::key::escape_into(out, joined.as_bytes());
            }
        }
    }
}
