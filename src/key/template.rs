//! Key templates: `user:{id}` filled from path parameters.

use super::{escape_param_into, is_literal};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Part {
    Literal(String),
    Param(String),
}

/// A parsed key template such as `user:{id}` or `product:{id}:reviews`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `template`, checking that its literals are plain and that every `{param}` is one of
    /// `params`. The error says what is wrong, for a [`ConfigError`](crate::ConfigError).
    pub(crate) fn parse(template: &str, params: &[String]) -> Result<Self, String> {
        if template.is_empty() {
            return Err("a key template must not be empty".into());
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("`{template}` has a `{{` without its `}}`"))?;
                    let name = &rest[1..end];
                    if !params.iter().any(|p| p == name) {
                        return Err(format!(
                            "`{{{name}}}` in `{template}` is not a parameter of the path (it has: {})",
                            if params.is_empty() { "none".to_string() } else { params.join(", ") }
                        ));
                    }
                    parts.push(Part::Param(name.to_string()));
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    let lit = &rest[..end];
                    if !is_literal(lit, true) {
                        return Err(format!(
                            "`{template}` may only use letters, digits, `-._~:/` and `{{param}}`"
                        ));
                    }
                    parts.push(Part::Literal(lit.to_string()));
                    rest = &rest[end..];
                }
            }
        }
        // A parameter must fill a whole segment, between `:` or `/` (which escaping never
        // produces) or the ends: `file:{n}.{e}` would render `a.b` + `c` and `a` + `b.c` alike.
        for (i, part) in parts.iter().enumerate() {
            if let Part::Param(name) = part {
                let before = i.checked_sub(1).map(|j| &parts[j]);
                let after = parts.get(i + 1);
                let ok_before = match before {
                    None => true,
                    Some(Part::Literal(l)) => l.ends_with([':', '/']),
                    Some(Part::Param(_)) => false,
                };
                let ok_after = match after {
                    None => true,
                    Some(Part::Literal(l)) => l.starts_with([':', '/']),
                    Some(Part::Param(_)) => false,
                };
                if !ok_before || !ok_after {
                    return Err(format!(
                        "`{{{name}}}` in `{template}` must stand between `:` or `/` separators (as in `user:{{{name}}}:posts`)"
                    ));
                }
            }
        }
        Ok(Self { parts })
    }

    /// The template as segments between `:` and `/`: `Some(literal)` or `None` for a parameter,
    /// with the separators.
    fn shape(&self) -> Vec<(Option<String>, Option<char>)> {
        let mut out = Vec::new();
        let mut current: Option<String> = Some(String::new());
        for part in &self.parts {
            match part {
                Part::Param(_) => current = None,
                Part::Literal(l) => {
                    for c in l.chars() {
                        if c == ':' || c == '/' {
                            out.push((current.take(), Some(c)));
                            current = Some(String::new());
                        } else if let Some(cur) = current.as_mut() {
                            cur.push(c);
                        }
                    }
                }
            }
        }
        out.push((current, None));
        out
    }

    /// Can `self` and `other` render the same key from different parameters? Identical
    /// templates share their entries on purpose; overlapping ones (`user:{id}` and `{kind}:1`)
    /// are a mistake.
    pub(crate) fn overlaps(&self, other: &Template) -> bool {
        if self == other {
            return false;
        }
        let (a, b) = (self.shape(), other.shape());
        a.len() == b.len()
            && a.iter().zip(&b).all(|((la, sa), (lb, sb))| {
                sa == sb
                    && match (la, lb) {
                        (Some(x), Some(y)) => x == y,
                        _ => true,
                    }
            })
    }

    /// The names of the parameters the template uses.
    pub(crate) fn params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Param(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Appends the template, filled from `param` (raw path parameters), to `out`.
    pub(crate) fn render_into<'p>(
        &self,
        out: &mut String,
        param: impl Fn(&str) -> Option<&'p str>,
    ) {
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Param(name) => escape_param_into(out, param(name).unwrap_or_default()),
            }
        }
    }
}

/// The parameter names of a matchit path pattern: `/users/{id}/{*rest}` has `id` and `rest`.
pub(crate) fn path_params(pattern: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        if rest[start + 1..].starts_with('{') {
            rest = &rest[start + 2..];
            continue;
        }
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let name = &rest[start + 1..start + len];
        out.push(name.trim_start_matches('*').to_string());
        rest = &rest[start + len + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn renders_params_escaped() {
        let t = Template::parse("user:{id}:posts", &params(&["id"])).unwrap();
        let mut out = String::new();
        t.render_into(&mut out, |_| Some("1:x*?[\n"));
        assert_eq!(out, "user:1%3Ax%2A%3F%5B%0A:posts");
    }

    #[test]
    fn rejects_unknown_params_and_odd_literals() {
        assert!(Template::parse("user:{uid}", &params(&["id"]))
            .unwrap_err()
            .contains("`{uid}`"));
        assert!(Template::parse("user {id}", &params(&["id"])).is_err());
        assert!(Template::parse("user?{id}", &params(&["id"])).is_err());
        assert!(Template::parse("user:{id", &params(&["id"])).is_err());
        assert!(Template::parse("", &params(&[])).is_err());
    }

    #[test]
    fn params_must_fill_whole_segments() {
        let p = params(&["n", "e", "id"]);
        for bad in ["file:{n}.{e}", "item-{id}", "{n}{e}", "a:{id}x", "x{id}:a"] {
            assert!(Template::parse(bad, &p).is_err(), "{bad}");
        }
        for good in ["{id}", "file:{n}:{e}", "a/{id}/b", "user:{id}:posts"] {
            assert!(Template::parse(good, &p).is_ok(), "{good}");
        }
    }

    #[test]
    fn overlapping_templates_are_found() {
        let p = params(&["id", "kind"]);
        let t = |s: &str| Template::parse(s, &p).unwrap();
        assert!(t("user:{id}").overlaps(&t("{kind}:1")));
        assert!(!t("user:{id}").overlaps(&t("user:{kind}:x")));
        assert!(!t("user:{id}").overlaps(&t("user:{id}")));
        assert!(!t("user:{id}").overlaps(&t("users:{id}")));
        assert!(!t("user:{id}").overlaps(&t("user/{id}")));
        assert!(t("a:{id}:c").overlaps(&t("a:b:{kind}")));
    }

    #[test]
    fn finds_path_params() {
        assert_eq!(path_params("/users/{id}/{*rest}"), params(&["id", "rest"]));
        assert_eq!(path_params("/a/{{x}}/{y}"), params(&["y"]));
        assert!(path_params("/static").is_empty());
    }
}
