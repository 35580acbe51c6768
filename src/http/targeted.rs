//! Targeted cache-control fields (RFC 9213): `CDN-Cache-Control`, or a field naming this very
//! cache, whose directives replace `Cache-Control` and `Expires` for this cache's decisions.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::borrow::Cow;

/// The response headers a cache decides by: `headers` themselves, or, when a field on its
/// target list (in order) is present, valid and not empty, the same with `Cache-Control`
/// holding that field's directives and no `Expires`. The response the client gets keeps
/// every header as it came.
pub(crate) fn effective<'h>(headers: &'h HeaderMap, targets: &[HeaderName]) -> Cow<'h, HeaderMap> {
    for target in targets {
        let mut lines = headers.get_all(target).iter().peekable();
        if lines.peek().is_none() {
            continue;
        }
        let joined: Option<Vec<&str>> = lines.map(|v| v.to_str().ok()).collect();
        let Some(directives) = joined.and_then(|j| dictionary(&j.join(","))) else {
            // Invalid (or empty): as if it were not there.
            continue;
        };
        let mut view = headers.clone();
        view.remove(header::CACHE_CONTROL);
        view.remove(header::EXPIRES);
        if let Ok(value) = HeaderValue::try_from(directives) {
            view.insert(header::CACHE_CONTROL, value);
        }
        return Cow::Owned(view);
    }
    Cow::Borrowed(headers)
}

/// The directives of a Structured Field Dictionary (RFC 8941) as a `Cache-Control` value
/// (`name` or `name=value`, parameters dropped), or `None` when it is empty or not one: a
/// parse error, or a lifetime that is not a non-negative integer. Member names are read in
/// any case, as caches in the field do.
fn dictionary(value: &str) -> Option<String> {
    let mut p = Parser {
        s: value.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    p.spaces();
    if p.done() {
        return None;
    }
    loop {
        let name = p.key()?;
        let item = if p.eat(b'=') {
            if p.peek() == Some(b'(') {
                p.inner_list()?;
                Item::Other
            } else {
                p.bare_item()?
            }
        } else {
            Item::True
        };
        p.parameters()?;
        let lifetime = matches!(
            name.as_str(),
            "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error"
        );
        match item {
            Item::Integer(n) if n >= 0 => out.push(format!("{name}={n}")),
            _ if lifetime => return None,
            Item::True | Item::Other => out.push(name),
            Item::False | Item::Integer(_) => {}
        }
        p.ows();
        if p.done() {
            break;
        }
        if !p.eat(b',') {
            return None;
        }
        p.ows();
        if p.done() {
            // A trailing comma.
            return None;
        }
    }
    Some(out.join(", "))
}

enum Item {
    True,
    False,
    Integer(i64),
    Other,
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn key(&mut self) -> Option<String> {
        let start = self.i;
        match self.peek()? {
            b'a'..=b'z' | b'A'..=b'Z' | b'*' => self.i += 1,
            _ => return None,
        }
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'*') {
                self.i += 1;
            } else {
                break;
            }
        }
        let key = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        Some(key.to_ascii_lowercase())
    }
    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.spaces();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }
    fn inner_list(&mut self) -> Option<()> {
        self.eat(b'(');
        loop {
            self.spaces();
            if self.eat(b')') {
                return self.parameters();
            }
            self.bare_item()?;
            self.parameters()?;
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return None;
            }
        }
    }
    fn bare_item(&mut self) -> Option<Item> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => {
                self.i += 1;
                loop {
                    match self.peek()? {
                        b'\\' => {
                            self.i += 1;
                            if !matches!(self.peek()?, b'"' | b'\\') {
                                return None;
                            }
                            self.i += 1;
                        }
                        b'"' => {
                            self.i += 1;
                            return Some(Item::Other);
                        }
                        0x20..=0x7e => self.i += 1,
                        _ => return None,
                    }
                }
            }
            b'?' => {
                self.i += 1;
                match self.peek()? {
                    b'1' => {
                        self.i += 1;
                        Some(Item::True)
                    }
                    b'0' => {
                        self.i += 1;
                        Some(Item::False)
                    }
                    _ => None,
                }
            }
            b':' => {
                self.i += 1;
                while let Some(b) = self.peek() {
                    self.i += 1;
                    match b {
                        b':' => return Some(Item::Other),
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=' => {}
                        _ => return None,
                    }
                }
                None
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'*' => {
                self.i += 1;
                while let Some(b) = self.peek() {
                    let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b);
                    if !tchar {
                        break;
                    }
                    self.i += 1;
                }
                Some(Item::Other)
            }
            _ => None,
        }
    }
    fn number(&mut self) -> Option<Item> {
        let negative = self.eat(b'-');
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || digits > 15 {
            return None;
        }
        if self.eat(b'.') {
            let frac = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            if self.i == frac || self.i - frac > 3 || digits > 12 {
                return None;
            }
            return Some(Item::Other);
        }
        let n: i64 = std::str::from_utf8(&self.s[start..self.i])
            .ok()?
            .parse()
            .ok()?;
        Some(Item::Integer(if negative { -n } else { n }))
    }
}

#[cfg(test)]
mod tests {
    use super::dictionary;

    #[test]
    fn a_dictionary_becomes_directives_and_anything_else_is_refused() {
        let ok = |v: &str| dictionary(v).unwrap();
        assert_eq!(ok("max-age=60"), "max-age=60");
        assert_eq!(ok("MaX-aGe=60, Private"), "max-age=60, private");
        assert_eq!(ok("foobar, max-age=3600;x=1"), "foobar, max-age=3600");
        assert_eq!(ok("no-store=?1, no-cache=?0"), "no-store");
        assert_eq!(ok("private=\"set-cookie\", x=(a b)"), "private, x");
        assert_eq!(ok("max-age=99999999999"), "max-age=99999999999");
        for bad in [
            "",
            "  ",
            "max-age =100",
            "max-age= 100",
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age=-1",
            "max-age=1.5",
            "max-age=60,",
            "1abc",
        ] {
            assert_eq!(dictionary(bad), None, "{bad}");
        }
    }
}
