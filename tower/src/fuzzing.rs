//! The body of the `gateway_request` fuzz target: what the layer reads from a client's
//! request and writes back, on any bytes. The first byte picks a route (items at the
//! top or nested, each element itself or a field of it; how many items are admitted);
//! the rest is the request body. The properties: reading the items, the attributes and
//! the outcome never panics; a body whose items read is cut to any admitted count N
//! and then reads as exactly the first N items, with everything else of the body
//! unchanged. The target panics when a property breaks (that is how libFuzzer sees a
//! finding).
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use creditgate::fuzzing::Target;
use http::Method;
use serde_json::Value;

use crate::extract;
use crate::routes::{AttributeSource, OutcomeSource, Route, Routes, TenantSource};

/// This crate's targets, as `fuzz/fuzz_targets/NAME.rs` and `fuzz/corpus/NAME` call them.
pub const TARGETS: &[(&str, Target)] = &[("gateway_request", gateway_request)];

pub fn gateway_request(data: &[u8]) {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    let (pointer, id) = match choice % 4 {
        0 => ("/persons", Some("email")),
        1 => ("/persons", None),
        2 => ("/batch/0/ids", None),
        _ => ("", Some("id")),
    };
    let routes = Routes::new(TenantSource::Header("x-tenant".to_owned()))
        .route(
            Route::new(Method::POST, "/r/{id}", "op")
                .items(pointer, id)
                .attribute("mode", AttributeSource::Query("mode".to_owned()))
                .attribute("who", AttributeSource::Path("id".to_owned()))
                .outcome("records", OutcomeSource::Length("/data".to_owned()))
                .outcome("count", OutcomeSource::Pointer("/meta/count".to_owned())),
        )
        .compile()
        .expect("the target's route compiles");
    let path = format!(
        "/r/{}",
        String::from_utf8_lossy(body).replace(['/', '?', '#'], "_")
    );
    let uri = format!("{path}?mode={}", String::from_utf8_lossy(body));
    let Some((route, parameters)) = routes.matching(&Method::POST, &path) else {
        return;
    };
    if let Ok(request) = http::Request::post(uri).body(()) {
        let (parts, ()) = request.into_parts();
        let _ = extract::attributes(&route, &parts, &parameters);
    }
    let json = serde_json::from_slice::<Value>(body).ok();
    let _ = extract::outcome(&route, &http::HeaderMap::new(), json.as_ref());
    let (Some(mut json), Ok(items)) = (json.clone(), extract::items(&route, json.as_ref())) else {
        return;
    };
    let admitted = usize::from(choice / 4) % (items.len() + 1);
    let before = json.clone();
    extract::cut_batch(&route, &mut json, admitted);
    let reread = extract::items(&route, Some(&json)).expect("a cut batch reads");
    assert_eq!(
        reread,
        items[..admitted],
        "the cut batch is not the first {admitted} items"
    );
    assert_eq!(
        without_items(before, pointer),
        without_items(json, pointer),
        "the cut changed more than the items"
    );
}

/// The body with the array of items emptied.
fn without_items(mut body: Value, pointer: &str) -> Value {
    if let Some(array) = body.pointer_mut(pointer).and_then(Value::as_array_mut) {
        array.clear();
    }
    body
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_committed_fuzz_input_passes_its_target() {
        creditgate::fuzzing::replay_committed(super::TARGETS);
    }
}
