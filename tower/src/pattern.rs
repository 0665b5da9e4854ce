//! Route paths: `/v1/persons/{id}` matches `/v1/persons/42` with `id = 42`; a final
//! `{*rest}` matches the remaining segments (at least one).

use std::collections::BTreeMap;

use crate::routes::RoutesError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Parameter(String),
    Rest(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathPattern {
    segments: Vec<Segment>,
}

impl PathPattern {
    pub fn parse(pattern: &str) -> Result<Self, RoutesError> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(RoutesError(format!(
                "the path '{pattern}' must start with '/'"
            )));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) => match name.strip_prefix('*') {
                    Some(name) if index + 1 == parts.len() && !name.is_empty() => {
                        Segment::Rest(name.to_owned())
                    }
                    Some(_) => {
                        return Err(RoutesError(format!(
                            "in '{pattern}', only the last segment may be '{{*name}}'"
                        )));
                    }
                    None if !name.is_empty() && !name.contains(['{', '}']) => {
                        Segment::Parameter(name.to_owned())
                    }
                    None => {
                        return Err(RoutesError(format!(
                            "in '{pattern}', '{part}' is not a parameter"
                        )));
                    }
                },
                None if part.contains(['{', '}']) => {
                    return Err(RoutesError(format!(
                        "in '{pattern}', a parameter must be a whole segment: '{part}'"
                    )));
                }
                None => Segment::Literal((*part).to_owned()),
            };
            segments.push(segment);
        }
        Ok(Self { segments })
    }

    pub fn has_parameter(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|segment| matches!(segment, Segment::Parameter(p) | Segment::Rest(p) if p == name))
    }

    /// The path's parameters if it matches.
    pub fn matches(&self, path: &str) -> Option<BTreeMap<String, String>> {
        let rest = path.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let mut parameters = BTreeMap::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(literal) => {
                    if parts.next()? != literal {
                        return None;
                    }
                }
                Segment::Parameter(name) => {
                    let part = parts.next().filter(|part| !part.is_empty())?;
                    parameters.insert(name.clone(), part.to_owned());
                }
                Segment::Rest(name) => {
                    let remaining: Vec<&str> = parts.by_ref().collect();
                    if remaining.iter().all(|part| part.is_empty()) {
                        return None;
                    }
                    parameters.insert(name.clone(), remaining.join("/"));
                }
            }
        }
        parts.next().is_none().then_some(parameters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> PathPattern {
        PathPattern::parse(text).unwrap_or_else(|error| unreachable!("{error}"))
    }

    #[test]
    fn literals_parameters_and_a_rest_match_as_written() {
        assert_eq!(
            pattern("/v1/enhance").matches("/v1/enhance"),
            Some(BTreeMap::new())
        );
        assert_eq!(pattern("/v1/enhance").matches("/v1/enhance/"), None);
        assert_eq!(pattern("/v1/enhance").matches("/v1"), None);
        assert_eq!(pattern("/").matches("/"), Some(BTreeMap::new()));
        let found = pattern("/v1/donors/{id}").matches("/v1/donors/d-7");
        assert_eq!(
            found.and_then(|p| p.get("id").cloned()),
            Some("d-7".to_owned())
        );
        assert_eq!(pattern("/v1/donors/{id}").matches("/v1/donors/"), None);
        assert_eq!(pattern("/v1/donors/{id}").matches("/v1/donors/a/b"), None);
        let rest = pattern("/files/{*path}").matches("/files/a/b.txt");
        assert_eq!(
            rest.and_then(|p| p.get("path").cloned()),
            Some("a/b.txt".to_owned())
        );
        assert_eq!(pattern("/files/{*path}").matches("/files"), None);
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["v1", "/a/{*rest}/b", "/a/{}", "/a/x{id}", "/a/{*}"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
