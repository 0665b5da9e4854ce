//! What a route reads from a request and from its answer: the tenant, the items, the
//! attributes, the outcome; and what it writes back: a batch cut to its admitted items,
//! the policy's meta merged into the answer.

use std::collections::BTreeMap;

use http::HeaderMap;
use http::request::Parts;
use serde_json::Value;

use crate::answer::GatewayError;
use crate::routes::{
    AttributeSource, CompiledRoute, CompiledRoutes, CompiledTenant, OutcomeSource,
};

/// The tenant of a request: 401 `unknown_tenant` when it names none.
pub(crate) fn tenant(routes: &CompiledRoutes, headers: &HeaderMap) -> Result<String, GatewayError> {
    let value = |name: &http::HeaderName| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|value| !value.is_empty())
    };
    match &routes.tenant {
        CompiledTenant::Header(name) => value(name).map(str::to_owned).ok_or_else(|| {
            GatewayError::unknown_tenant(format!(
                "the request has no '{name}' header naming its tenant"
            ))
        }),
        CompiledTenant::ApiKey(name) => {
            let key = value(name).ok_or_else(|| {
                GatewayError::unknown_tenant(format!("the request has no API key in '{name}'"))
            })?;
            let key = strip_bearer(key);
            routes
                .api_keys
                .get(key)
                .cloned()
                .ok_or_else(|| GatewayError::unknown_tenant("the API key is not known".to_owned()))
        }
    }
}

fn strip_bearer(value: &str) -> &str {
    match value.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key.trim(),
        _ => value,
    }
}

/// The transaction id: the idempotency key header, if the request has one.
pub(crate) fn transaction_id(
    routes: &CompiledRoutes,
    headers: &HeaderMap,
) -> Result<Option<String>, GatewayError> {
    match headers.get(&routes.idempotency_header) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .map(|key| Some(key.to_owned()))
            .ok_or_else(|| {
                GatewayError::bad_request(
                    "invalid_idempotency_key",
                    format!(
                        "the '{}' header must be visible ASCII text",
                        routes.idempotency_header
                    ),
                )
            }),
    }
}

/// The items of the route from the request's JSON body.
pub(crate) fn items(
    route: &CompiledRoute,
    body: Option<&Value>,
) -> Result<Vec<String>, GatewayError> {
    let Some(source) = &route.route.items else {
        return Ok(Vec::new());
    };
    let Some(body) = body else {
        return Err(GatewayError::bad_request(
            "invalid_json",
            "the request body must be JSON: this route reads its items from it".to_owned(),
        ));
    };
    let Some(array) = body.pointer(&source.pointer).and_then(Value::as_array) else {
        return Err(GatewayError::bad_request(
            "invalid_items",
            format!("the request body has no array at '{}'", source.pointer),
        ));
    };
    array
        .iter()
        .enumerate()
        .map(|(index, element)| {
            let value = match &source.id {
                Some(field) => element.get(field),
                None => Some(element),
            };
            match value {
                Some(Value::String(text)) => Ok(text.clone()),
                Some(Value::Number(number)) if number.is_i64() || number.is_u64() => {
                    Ok(number.to_string())
                }
                _ => Err(GatewayError::bad_request(
                    "invalid_items",
                    match &source.id {
                        Some(field) => format!(
                            "item {index} at '{}' has no string or integer '{field}'",
                            source.pointer
                        ),
                        None => format!(
                            "item {index} at '{}' is not a string or an integer",
                            source.pointer
                        ),
                    },
                )),
            }
        })
        .collect()
}

/// The request attributes of the route; a source the request lacks gives no attribute.
pub(crate) fn attributes(
    route: &CompiledRoute,
    parts: &Parts,
    parameters: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|query| {
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    route
        .route
        .attributes
        .iter()
        .filter_map(|(name, source)| {
            let value = match source {
                AttributeSource::Query(parameter) => query
                    .iter()
                    .find(|(key, _)| key == parameter)
                    .map(|(_, value)| value.clone()),
                AttributeSource::Header(header) => header_text(&parts.headers, header),
                AttributeSource::Path(parameter) => parameters.get(parameter).cloned(),
                AttributeSource::Value(value) => Some(value.clone()),
            };
            value.map(|value| (name.clone(), value))
        })
        .collect()
}

/// The settle's attributes from the upstream's answer.
pub(crate) fn outcome(
    route: &CompiledRoute,
    headers: &HeaderMap,
    body: Option<&Value>,
) -> BTreeMap<String, String> {
    route
        .route
        .outcome
        .iter()
        .filter_map(|(name, source)| {
            let value = match source {
                OutcomeSource::Length(pointer) => body
                    .and_then(|body| body.pointer(pointer))
                    .and_then(Value::as_array)
                    .map(|array| array.len().to_string()),
                OutcomeSource::Pointer(pointer) => body
                    .and_then(|body| body.pointer(pointer))
                    .and_then(|value| match value {
                        Value::String(text) => Some(text.clone()),
                        Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
                        _ => None,
                    }),
                OutcomeSource::Header(header) => header_text(headers, header),
            };
            value.map(|value| (name.clone(), value))
        })
        .collect()
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// Cuts the array of items at the route's pointer to its first `admitted` elements.
pub(crate) fn cut_batch(route: &CompiledRoute, body: &mut Value, admitted: usize) {
    if let Some(source) = &route.route.items
        && let Some(array) = body
            .pointer_mut(&source.pointer)
            .and_then(Value::as_array_mut)
    {
        array.truncate(admitted);
    }
}

/// The policy's meta objects merged, later keys over earlier (authorize's, then
/// settle's); `None` when they hold nothing.
pub(crate) fn merged_meta(metas: &[&Value]) -> Option<Value> {
    let mut merged = serde_json::Map::new();
    for meta in metas {
        if let Value::Object(meta) = meta {
            merged.extend(meta.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    (!merged.is_empty()).then_some(Value::Object(merged))
}

/// Merges `meta` into `answer` under `key`, over what the answer has there; an answer
/// that is not a JSON object is left as it is.
pub(crate) fn merge_meta(answer: &mut Value, key: &str, meta: Value) {
    let (Value::Object(fields), Value::Object(meta)) = (answer, meta) else {
        return;
    };
    match fields.get_mut(key) {
        Some(Value::Object(existing)) => existing.extend(meta),
        _ => {
            fields.insert(key.to_owned(), Value::Object(meta));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::routes::{Route, Routes, TenantSource};

    fn route(items: &str, id: Option<&str>) -> Arc<CompiledRoute> {
        let routes = Routes::new(TenantSource::Header("x-tenant".into()))
            .route(Route::new(http::Method::POST, "/r", "op").items(items, id))
            .compile()
            .unwrap_or_else(|error| unreachable!("{error}"));
        routes
            .matching(&http::Method::POST, "/r")
            .map(|(route, _)| route)
            .unwrap_or_else(|| unreachable!("the route matches"))
    }

    #[test]
    fn a_cut_batch_keeps_the_first_items_and_everything_else() {
        let route = route("/batch/persons", Some("id"));
        let mut body = json!({
            "batch": {"persons": [{"id": "a"}, {"id": 7}, {"id": "c"}], "note": "kept"},
            "mode": "full"
        });
        let items = items(&route, Some(&body)).unwrap_or_else(|error| unreachable!("{error:?}"));
        assert_eq!(items, ["a", "7", "c"]);
        cut_batch(&route, &mut body, 2);
        assert_eq!(
            body,
            json!({"batch": {"persons": [{"id": "a"}, {"id": 7}], "note": "kept"}, "mode": "full"})
        );
    }

    #[test]
    fn items_that_are_not_strings_or_integers_are_refused() {
        let route = route("/ids", None);
        for body in [
            json!({"ids": [1.5]}),
            json!({"ids": [null]}),
            json!({"ids": [[1]]}),
            json!({"ids": "x"}),
        ] {
            let refused = items(&route, Some(&body)).err().map(|error| error.code);
            assert_eq!(refused, Some("invalid_items"), "{body}");
        }
        assert_eq!(
            items(&route, None).err().map(|error| error.code),
            Some("invalid_json")
        );
    }

    #[test]
    fn meta_merges_over_the_answers_own_and_leaves_non_objects_alone() {
        let meta = merged_meta(&[
            &json!({"held": 2, "reason": "x"}),
            &json!({"reason": "delivered"}),
        ]);
        let mut answer = json!({"data": [], "meta": {"page": 1}});
        merge_meta(&mut answer, "meta", meta.clone().unwrap_or_default());
        assert_eq!(
            answer["meta"],
            json!({"page": 1, "held": 2, "reason": "delivered"})
        );
        let mut list = json!([1, 2]);
        merge_meta(&mut list, "meta", meta.unwrap_or_default());
        assert_eq!(list, json!([1, 2]));
        assert_eq!(merged_meta(&[&json!({}), &Value::Null]), None);
    }
}
