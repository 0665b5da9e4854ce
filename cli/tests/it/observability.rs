//! What an operator watches: `GET /metrics` (docs/gateways.md, "Metrics"), scraped from
//! a real `creditgate serve` before and after known traffic, every counter moving by
//! what that traffic did (read off the answers themselves); and the log, whose lines
//! of a decision name its tenant and transaction.

use std::collections::BTreeMap;

use serde_json::json;

use crate::support::{HttpGate, Server, uuid};

const TENANT: &str = "acme";

/// One scrape: every sample, keyed `name{label="value",...}` with the labels sorted.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    fn of(gate: &HttpGate) -> Self {
        let response = ureq::get(&format!("http://{}/metrics", gate.server.address()))
            .call()
            .expect("GET /metrics");
        assert_eq!(response.status(), 200);
        assert!(
            response.content_type() == "text/plain",
            "{}",
            response.content_type()
        );
        let text = response.into_string().expect("exposition text");
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let key = match series.split_once('{') {
                Some((name, labels)) => {
                    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                    labels.sort_unstable();
                    format!("{name}{{{}}}", labels.join(","))
                }
                None => series.to_owned(),
            };
            samples.insert(key, value.parse().expect("a sample's value"));
        }
        Self(samples)
    }

    fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }
}

fn sum(amounts: &serde_json::Value) -> f64 {
    amounts.as_object().map_or(0, |amounts| {
        amounts.values().filter_map(|v| v.as_i64()).sum::<i64>()
    }) as f64
}

#[test]
fn metrics_count_exactly_what_known_traffic_did() {
    let gate = HttpGate::start("smarte");
    let before = Scrape::of(&gate);
    // The start-up's own decisions on a fresh ledger: the policy registered, activated.
    assert_eq!(
        before.get("creditgate_decisions_total{kind=\"policy\"}"),
        1.0
    );
    assert_eq!(
        before.get("creditgate_decisions_total{kind=\"activate\"}"),
        1.0
    );

    gate.server
        .grant(TENANT, "default", 10, &format!("g-{}", uuid()));
    let (mut held, mut charged, mut released) = (0.0, 0.0, 0.0);
    for n in 0..3 {
        let id = format!("t{n}");
        let (status, answer) = gate.server.post(
            "/v1/authorize",
            json!({"transaction_id": id, "tenant": TENANT, "operation": "person.enrich", "items": ["a", "b"]}),
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["admitted"], true, "{answer}");
        held += sum(&answer["held"]);
        charged += sum(&answer["charged"]);
        let (status, receipt) = gate.server.post(
            "/v1/settle",
            json!({"transaction_id": id, "status": 200, "attributes": {"records": "1"}}),
        );
        assert_eq!(status, 200, "{receipt}");
        charged += sum(&receipt["charged"]);
        released += sum(&receipt["released"]);
    }
    let (status, refused) = gate.server.post(
        "/v1/authorize",
        json!({"transaction_id": "r1", "tenant": TENANT, "operation": "search"}),
    );
    assert_eq!((status, &refused["admitted"]), (200, &json!(false)));
    let code = refused["error"]["code"].as_str().expect("a refusal's code");
    // A call refused by the meter itself: counted as the call's error, not a decision.
    let (status, _) = gate.server.post(
        "/v1/authorize",
        json!({"tenant": "", "operation": "person.enrich"}),
    );
    assert_eq!(status, 400);

    let after = Scrape::of(&gate);
    let moved = |key: &str| after.get(key) - before.get(key);
    assert_eq!(moved("creditgate_decisions_total{kind=\"grant\"}"), 1.0);
    assert_eq!(moved("creditgate_decisions_total{kind=\"authorize\"}"), 4.0);
    assert_eq!(moved("creditgate_decisions_total{kind=\"settle\"}"), 3.0);
    assert_eq!(
        moved("creditgate_authorizations_total{operation=\"person.enrich\",outcome=\"admitted\"}"),
        3.0
    );
    assert_eq!(
        moved("creditgate_authorizations_total{operation=\"search\",outcome=\"rejected\"}"),
        1.0
    );
    assert_eq!(
        moved(&format!("creditgate_rejections_total{{code=\"{code}\"}}")),
        1.0
    );
    let credits = |entry: &str| {
        moved(&format!(
            "creditgate_credits_total{{balance=\"default\",entry=\"{entry}\"}}"
        ))
    };
    assert_eq!(credits("grant"), 10.0);
    assert!(
        held > 0.0 && released > 0.0,
        "the traffic held and released"
    );
    assert_eq!(credits("hold"), held);
    assert_eq!(credits("capture") + credits("charge"), charged);
    assert_eq!(credits("release"), released);
    assert_eq!(
        moved("creditgate_call_seconds_count{call=\"authorize\"}"),
        5.0
    );
    assert_eq!(moved("creditgate_call_seconds_count{call=\"settle\"}"), 3.0);
    assert_eq!(
        moved("creditgate_call_errors_total{call=\"authorize\",code=\"invalid_request\"}"),
        1.0
    );
    assert_eq!(
        moved("creditgate_policy_fuel_count{call=\"authorize\"}"),
        4.0
    );
    assert_eq!(after.get("creditgate_open_holds"), 0.0);
    assert!(after.get("creditgate_batch_decisions_count") >= 1.0);
    assert!(after.get("creditgate_commit_seconds_count") >= 1.0);
}

/// A decision's log lines name its tenant and transaction, though they are written on
/// the sequencer's thread, not the caller's: a policy failure, logged at debug.
#[test]
fn a_decisions_log_lines_name_its_tenant_and_transaction() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("serve.log");
    let server = Server::start_in_shell(
        &format!(
            "export CREDITGATE_LOG=creditgate=debug && exec 2>'{}'",
            log.display()
        ),
        Some("hostile"),
        dir.path().join("ledger.db"),
        None,
        &[],
    );
    let (status, body) = server.post(
        "/v1/authorize",
        json!({"transaction_id": "traced-1", "tenant": "tenant-7", "operation": "burn-fuel", "items": ["a"]}),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("policy_fuel_exhausted")),
        "{body}"
    );
    drop(server);
    let text = std::fs::read_to_string(&log).expect("the server's log");
    let line = text
        .lines()
        .find(|line| line.contains("a decision failed closed"))
        .unwrap_or_else(|| panic!("no failure logged:\n{text}"));
    assert!(
        line.contains("tenant=tenant-7") && line.contains("transaction=traced-1"),
        "{line}"
    );
}
