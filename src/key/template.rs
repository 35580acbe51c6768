//! Key templates: `user:{id}` filled from path parameters.

use super::{escape_param_into, is_literal};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
}

/// A parsed key template such as `user:{id}` or `product:{id}:reviews`.
#[derive(Debug, Clone, PartialEq, Eq)]
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
        Ok(Self { parts })
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
    fn finds_path_params() {
        assert_eq!(path_params("/users/{id}/{*rest}"), params(&["id", "rest"]));
        assert_eq!(path_params("/a/{{x}}/{y}"), params(&["y"]));
        assert!(path_params("/static").is_empty());
    }
}
