//! Every function under `function/` is served by the binary on the path the Functions host will use, and
//! `host.json` starts the handler the way the binary expects.

mod common;

use common::Harness;
use serde_json::{Value, json};

fn function_dirs() -> Vec<(String, Value)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("function");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(e.path().join("function.json")).unwrap();
            (name, serde_json::from_str(&text).unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

async fn post(h: &Harness, path: &str, body: String) -> (u16, Value) {
    let res = warp::test::request()
        .method("POST")
        .path(path)
        .body(body)
        .reply(&segment_delta::sources::http::routes(h.state.clone()))
        .await;
    (res.status().as_u16(), serde_json::from_slice(res.body()).unwrap_or(Value::Null))
}

#[test]
fn host_json_starts_the_handler() {
    let host: Value =
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/host.json")).unwrap())
            .unwrap();
    let handler = &host["customHandler"];
    assert_eq!(handler["description"]["defaultExecutablePath"], "segment-delta");
    assert_eq!(handler["description"]["arguments"], json!(["serve"]));
    assert_eq!(handler["enableProxyingHttpRequest"], true);
    assert_eq!(host["extensions"]["http"]["routePrefix"], "");
}

#[tokio::test]
async fn every_function_is_served() {
    let functions = function_dirs();
    assert_eq!(functions.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), vec!["eventhub", "maintain", "segment"]);
    let h = Harness::new(|_| {});
    for (name, def) in functions {
        let trigger = &def["bindings"][0];
        match trigger["type"].as_str().unwrap() {
            "httpTrigger" => {
                // Proxied: the request arrives on its own path, which the route must cover.
                let route = trigger["route"].as_str().unwrap();
                assert_eq!(route, "v1/{*path}");
                let event = json!({"userId": "u", "event": "Routed", "messageId": format!("{name}-1")}).to_string();
                assert_eq!(post(&h, "/v1/track", event.clone()).await, (200, json!({"success": true})));
                // Not proxied: the invocation arrives on /<FunctionName>.
                let inv = json!({"Data": {"req": {"Url": "http://localhost/v1/track", "Method": "POST", "Headers": {},
                    "Params": {"path": "track"}, "Body": json!({"userId": "u", "event": "Routed", "messageId": format!("{name}-2")}).to_string()}},
                    "Metadata": {}});
                let (status, answer) = post(&h, &format!("/{name}"), inv.to_string()).await;
                assert_eq!((status, answer["Outputs"]["res"]["statusCode"].as_u64()), (200, Some(200)), "{answer}");
            }
            "eventHubTrigger" => {
                assert_eq!(
                    (trigger["cardinality"].as_str(), trigger["dataType"].as_str()),
                    (Some("many"), Some("string"))
                );
                assert_eq!(def["retry"]["maxRetryCount"], -1, "a failed batch must be retried, never skipped");
                let events = serde_json::to_string(&[
                    json!({"type": "track", "userId": "u", "event": "Routed", "messageId": "hub-1"}).to_string(),
                ])
                .unwrap();
                let inv = json!({"Data": {trigger["name"].as_str().unwrap(): events}, "Metadata": {"SequenceNumberArray": "[1]"}});
                let (status, answer) = post(&h, &format!("/{name}"), inv.to_string()).await;
                assert_eq!(status, 200, "{answer}");
            }
            "timerTrigger" => {
                // The schedule is an app setting (NCRONTAB), so operators change it without a deployment.
                assert_eq!(trigger["schedule"], "%SEGMENT_DELTA_MAINTENANCE_SCHEDULE%");
                let inv = json!({"Data": {"timer": {"Schedule": {"AdjustForDST": true}, "IsPastDue": false}},
                    "Metadata": {"sys": {"MethodName": name, "UtcNow": "2026-11-25T12:00:00Z"}}});
                let (status, answer) = post(&h, &format!("/{name}"), inv.to_string()).await;
                assert_eq!(status, 200, "{answer}");
                let logs = answer["Logs"].as_array().unwrap();
                assert!(
                    logs.iter().any(|l| l.as_str().unwrap().starts_with("segment.routed: files 1 -> 1")),
                    "{answer}"
                );
            }
            other => panic!("function {name} has a trigger this binary does not serve: {other}"),
        }
    }
    let mut ids: Vec<String> =
        h.table("segment", "routed").iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    assert_eq!(ids, vec!["hub-1", "segment-1", "segment-2"]);
}
