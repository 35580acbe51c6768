//! `Vary`: the record of what a URL's responses vary on, and each variant's key.

use http::header::{self, HeaderMap, HeaderName};

/// The internal header of a variant record: the request headers a URL's responses vary on.
pub(crate) const VARY_RECORD: &str = "tower-stash-vary";

/// The header names a variant record stored under the URL key `full` lists, if `entry` is
/// one.
pub(crate) fn record_names(entry: &crate::Entry, full: &str) -> Option<Vec<String>> {
    let value = entry.headers().get(VARY_RECORD)?;
    // The record's key is the URL's and a suffix: compared without building it.
    if entry.key().strip_suffix(RECORD_SUFFIX) != Some(full) {
        return None;
    }
    let names = value.to_str().ok()?;
    Some(names.split(',').map(|n| n.trim().to_owned()).collect())
}

/// What a variant record's key adds to its URL's.
const RECORD_SUFFIX: &str = "|#vary";

/// The key of the variant record stored under a URL's key (it never equals an entry's key).
pub(crate) fn record_key(full: &str) -> String {
    format!("{full}{RECORD_SUFFIX}")
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
    // One buffer for every name's normalised values; items are copied apart only where they
    // are sorted.
    let mut joined = String::new();
    let mut items: Vec<String> = Vec::new();
    for name in names {
        out.push_str("|~");
        crate::key::escape_into(out, name.as_bytes());
        // Looked up once, by a name parsed once (a name no request can carry: absent).
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        let mut lines = request.get_all(&header).iter().peekable();
        if lines.peek().is_none() {
            continue;
        }
        // Language tags and codings are case-insensitive lists (of equal preference unless
        // weighted): one order, one case.
        let sorted = matches!(
            name.as_str(),
            "accept-language" | "accept-encoding" | "accept-charset"
        );
        joined.clear();
        items.clear();
        for line in lines {
            for item in String::from_utf8_lossy(line.as_bytes()).split(',') {
                let mut words = item.split_whitespace().peekable();
                if words.peek().is_none() {
                    continue;
                }
                if sorted {
                    let mut owned = String::with_capacity(item.len());
                    push_words(&mut owned, words);
                    owned.make_ascii_lowercase();
                    items.push(owned);
                } else {
                    if !joined.is_empty() {
                        joined.push(',');
                    }
                    push_words(&mut joined, words);
                }
            }
        }
        if sorted {
            items.sort();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    joined.push(',');
                }
                joined.push_str(item);
            }
        }
        out.push('=');
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

/// Appends `words` separated by single spaces.
fn push_words<'a>(out: &mut String, words: impl Iterator<Item = &'a str>) {
    for (i, word) in words.enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
}
