//! Byte ranges: one `Range` answered from a stored response, and stored partial responses.

use http::header::{self, HeaderMap};
use http::StatusCode;

/// The key a URL's stored partial response (a `206`) lives under: never a complete
/// response's.
pub(crate) fn partial_key(full: &str) -> String {
    format!("{full}|#partial")
}

/// A `Content-Range: bytes first-last/complete` of one range (a known complete length).
pub(crate) fn content_range(headers: &HeaderMap) -> Option<(u64, u64, u64)> {
    let mut values = headers.get_all(header::CONTENT_RANGE).iter();
    let v = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (range, complete) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, complete): (u64, u64, u64) = (
        first.trim().parse().ok()?,
        last.trim().parse().ok()?,
        complete.trim().parse().ok()?,
    );
    (first <= last && last < complete).then_some((first, last, complete))
}

/// The bytes a `Range` asks of a stored partial response, which holds them all.
pub(crate) struct Part {
    /// The first and last byte asked for, in the complete response.
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// The complete response's length.
    pub(crate) complete: u64,
    /// Where the stored body starts in the complete response.
    pub(crate) first: u64,
}

/// The part of a stored partial response (its status `206`, its `Content-Range`, its body)
/// that answers `range`, when it holds all of it.
pub(crate) fn partial_covers(entry: &crate::Entry, range: &http::HeaderValue) -> Option<Part> {
    if entry.status() != StatusCode::PARTIAL_CONTENT {
        return None;
    }
    let (first, last, complete) = content_range(entry.headers())?;
    if entry.body().len() as u64 != last - first + 1 {
        return None;
    }
    let (start, end) = byte_range(range, complete)?;
    (first <= start && end <= last).then_some(Part {
        start,
        end,
        complete,
        first,
    })
}

/// The byte range a `Range: bytes=...` header asks of a body `len` long: one range only
/// (`a-b`, `a-`, `-n`), clamped to the body; `None` for anything else (several ranges, other
/// units, unsatisfiable), which is answered with the whole body.
pub(crate) fn byte_range(range: &http::HeaderValue, len: u64) -> Option<(u64, u64)> {
    let spec = range.to_str().ok()?.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let (start, end) = if first.is_empty() {
        let n: u64 = last.parse().ok()?;
        if n == 0 {
            return None;
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() {
            len - 1
        } else {
            last.parse::<u64>().ok()?.min(len - 1)
        };
        (start, end)
    };
    (start <= end && start < len).then_some((start, end))
}
