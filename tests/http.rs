//! The Tracking API in process: every endpoint, auth, gzip, limits, bad input, and the Functions invocation
//! shape; each test reads the Delta tables back.

mod common;

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::Harness;
use serde_json::{Value, json};
use warp::http::StatusCode;

async fn post(h: &Harness, path: &str, body: impl Into<Vec<u8>>, key: Option<&str>) -> (StatusCode, Value) {
    let mut req =
        warp::test::request().method("POST").path(path).header("content-type", "application/json").body(body.into());
    if let Some(k) = key {
        req = req.header("authorization", format!("Basic {}", STANDARD.encode(format!("{k}:"))));
    }
    let res = req.reply(&segment_delta::sources::http::routes(h.state.clone())).await;
    let body = serde_json::from_slice(res.body()).unwrap_or(Value::Null);
    (res.status(), body)
}

fn ids(rows: &[serde_json::Map<String, Value>]) -> Vec<String> {
    let mut v: Vec<String> = rows.iter().map(|r| r["id"].as_str().unwrap_or_default().to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn host_ping_and_unknown_paths() {
    let h = Harness::new(|_| {});
    let res = warp::test::request()
        .method("GET")
        .path("/")
        .reply(&segment_delta::sources::http::routes(h.state.clone()))
        .await;
    assert_eq!(res.status(), 200);
    let (status, body) = post(&h, "/v1/nothing", "{}", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no such endpoint: /v1/nothing");
    let res = warp::test::request()
        .method("GET")
        .path("/v1/track")
        .reply(&segment_delta::sources::http::routes(h.state.clone()))
        .await;
    assert_eq!(res.status(), 405);
}

#[tokio::test]
async fn every_single_event_endpoint_lands_in_its_table() {
    let h = Harness::new(|_| {});
    for (path, body, table) in [
        (
            "/v1/track",
            json!({"userId": "u", "messageId": "t1", "event": "Signed Up", "properties": {"plan": "pro"}}),
            "signed_up",
        ),
        ("/v1/identify", json!({"userId": "u", "messageId": "i1", "traits": {"email": "u@x"}}), "identifies"),
        (
            "/v1/page",
            json!({"userId": "u", "messageId": "p1", "name": "Home", "properties": {"url": "https://x"}}),
            "pages",
        ),
        ("/v1/screen", json!({"userId": "u", "messageId": "s1", "name": "Feed"}), "screens"),
        ("/v1/group", json!({"userId": "u", "messageId": "g1", "groupId": "acme", "traits": {"seats": 5}}), "groups"),
        ("/v1/alias", json!({"userId": "u", "messageId": "a1", "previousId": "anon"}), "aliases"),
    ] {
        let (status, answer) = post(&h, path, body.to_string(), Some("any")).await;
        assert_eq!((status, answer), (StatusCode::OK, json!({"success": true})), "{path}");
        let rows = h.table("segment", table);
        assert_eq!(rows.len(), 1, "{table}");
        assert_eq!(rows[0]["user_id"], "u");
    }
    assert_eq!(ids(&h.table("segment", "tracks")), vec!["t1"]);
    assert_eq!(h.table("segment", "signed_up")[0]["plan"], "pro");
    assert_eq!(h.table("segment", "groups")[0]["seats"], 5);
    assert_eq!(h.table("segment", "groups")[0]["group_id"], "acme");
    assert_eq!(h.table("segment", "aliases")[0]["previous_id"], "anon");
    assert!(!h.exists("segment", "discards"));
}

#[tokio::test]
async fn batch_and_import_merge_context_and_take_the_body_key() {
    let h = Harness::new(|c| {
        c.sources =
            segment_delta::config::Sources::Keys(vec![(segment_delta::config::Secret::new("K1"), "web".into())]);
    });
    let body = json!({"writeKey": "K1", "context": {"library": {"name": "batchlib"}}, "batch": [
        {"type": "track", "event": "A", "anonymousId": "x", "messageId": "b1"},
        {"type": "identify", "userId": "u", "messageId": "b2", "context": {"library": {"version": "2"}}},
    ]});
    assert_eq!(post(&h, "/v1/batch", body.to_string(), None).await.0, 200);
    let body = json!({"batch": [{"type": "page", "userId": "u", "messageId": "b3"}]});
    assert_eq!(post(&h, "/v1/import", body.to_string(), Some("K1")).await.0, 200);
    let identifies = h.table("web", "identifies");
    assert_eq!(identifies[0]["context_library_name"], "batchlib");
    assert_eq!(identifies[0]["context_library_version"], "2");
    assert_eq!(ids(&h.table("web", "tracks")), vec!["b1"]);
    assert_eq!(ids(&h.table("web", "pages")), vec!["b3"]);
}

#[tokio::test]
async fn unknown_or_missing_keys_write_nothing() {
    let h = Harness::new(|c| {
        c.sources =
            segment_delta::config::Sources::Keys(vec![(segment_delta::config::Secret::new("K1"), "web".into())]);
    });
    let event = json!({"userId": "u", "event": "E"}).to_string();
    let (status, body) = post(&h, "/v1/track", event.clone(), Some("WRONG")).await;
    assert_eq!((status.as_u16(), body["error"].as_str()), (401, Some("unknown write key")));
    let (status, body) = post(&h, "/v1/track", event.clone(), None).await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().starts_with("missing write key"));
    let with_body_key = json!({"userId": "u", "event": "E", "writeKey": "nope"}).to_string();
    assert_eq!(post(&h, "/v1/track", with_body_key, None).await.0, 401);
    assert!(!h.exists("web", "tracks"));
    // Basic without the colon works too.
    let res = warp::test::request()
        .method("POST")
        .path("/v1/track")
        .header("authorization", format!("Basic {}", STANDARD.encode("K1")))
        .body(event)
        .reply(&segment_delta::sources::http::routes(h.state.clone()))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(h.table("web", "tracks").len(), 1);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn gzip_bodies_and_their_limit() {
    let h = Harness::new(|_| {});
    let body = json!({"batch": [{"type": "track", "userId": "u", "event": "Zipped", "messageId": "z1"}]}).to_string();
    let routes = segment_delta::sources::http::routes(h.state.clone());
    let res = warp::test::request()
        .method("POST")
        .path("/v1/batch")
        .header("content-encoding", "gzip")
        .body(gzip(body.as_bytes()))
        .reply(&routes)
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(ids(&h.table("segment", "zipped")), vec!["z1"]);
    // 2 MB of spaces compresses to a few KB but is over the 500 KB limit once inflated.
    let bomb = gzip(&vec![b' '; 2 * 1024 * 1024]);
    let res = warp::test::request()
        .method("POST")
        .path("/v1/batch")
        .header("content-encoding", "gzip")
        .body(bomb)
        .reply(&routes)
        .await;
    assert_eq!(res.status(), 413);
    assert!(String::from_utf8_lossy(res.body()).contains("SEGMENT_DELTA_MAX_REQUEST_BYTES"));
}

#[tokio::test]
async fn limits_are_enforced_and_named() {
    let h = Harness::new(|_| {});
    let big = format!(r#"{{"userId":"u","event":"E","properties":{{"s":"{}"}}}}"#, "x".repeat(600 * 1024));
    let (status, body) = post(&h, "/v1/track", big, None).await;
    assert_eq!(status, 413);
    assert!(body["error"].as_str().unwrap().contains("512000"));
    let event = format!(r#"{{"userId":"u","event":"E","properties":{{"s":"{}"}}}}"#, "x".repeat(33 * 1024));
    let (status, body) = post(&h, "/v1/track", event, None).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("32768 bytes per event"));
    let many: Vec<Value> =
        (0..2501).map(|i| json!({"type": "track", "userId": "u", "event": "E", "messageId": i.to_string()})).collect();
    let (status, body) = post(&h, "/v1/batch", json!({"batch": many}).to_string(), None).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("2501 events, over the limit of 2500"));
    assert!(!h.exists("segment", "tracks"), "a refused request writes nothing");
}

#[tokio::test]
async fn malformed_json_and_wrong_types() {
    let h = Harness::new(|_| {});
    for (path, body, needle) in [
        ("/v1/track", "{\"userId\": ", "malformed JSON"),
        ("/v1/batch", "[1,2]", "expected a JSON object"),
        ("/v1/batch", "{\"batch\": {}}", "\"batch\" must be an array"),
        ("/v1/batch", "{\"batch\": [], \"context\": 5}", "context must be an object"),
        ("/v1/batch", "{\"nope\": []}", "needs a \"batch\" array"),
    ] {
        let (status, answer) = post(&h, path, body, None).await;
        assert_eq!(status, 400, "{body}");
        assert!(answer["error"].as_str().unwrap().contains(needle), "{answer}");
    }
    // Items that are not events are kept in discards; the valid one lands.
    let body = r#"{"batch": [5, {"type": "track", "userId": "u", "event": "Ok", "messageId": "ok1"}, {"type": "track", "event": "NoId"}, {"type":"track","userId":"u","event":"E","properties":"str"}]}"#;
    assert_eq!(post(&h, "/v1/batch", body, None).await.0, 200);
    assert_eq!(ids(&h.table("segment", "ok")), vec!["ok1"]);
    let mut reasons: Vec<String> =
        h.table("segment", "discards").iter().map(|d| d["reason"].as_str().unwrap().to_string()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            "an event must be a JSON object",
            "properties must be a JSON object",
            "the event has neither userId nor anonymousId"
        ]
    );
}

#[tokio::test]
async fn types_are_fixed_by_the_first_value_and_casts_are_lossless() {
    let h = Harness::new(|_| {});
    let first = json!({"userId": "u", "messageId": "m1", "event": "E", "properties": {"n": 1, "x": 1.5, "s": "a", "t": "2026-11-01T00:00:00Z", "b": true}});
    assert_eq!(post(&h, "/v1/track", first.to_string(), None).await.0, 200);
    let second = json!({"userId": "u", "messageId": "m2", "event": "E", "properties": {"n": "ten", "x": 2, "s": 5, "t": "never", "b": 1}});
    assert_eq!(post(&h, "/v1/track", second.to_string(), None).await.0, 200);
    let cols = common::delta_columns(&h.dir.path().join("segment/e"));
    let typed: Vec<(&str, &str)> = cols
        .iter()
        .filter(|(n, _)| ["n", "x", "s", "t", "b"].contains(&n.as_str()))
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    assert_eq!(typed, vec![("n", "long"), ("x", "double"), ("s", "string"), ("t", "timestamp"), ("b", "boolean")]);
    let rows = h.table("segment", "e");
    let m2 = rows.iter().find(|r| r["id"] == "m2").unwrap();
    assert_eq!(
        (m2["n"].clone(), m2["x"].clone(), m2["s"].clone(), m2["t"].clone(), m2["b"].clone()),
        (Value::Null, json!(2.0), json!("5"), Value::Null, Value::Null)
    );
    let discards = h.table("segment", "discards");
    let mut lost: Vec<(String, String)> = discards
        .iter()
        .map(|d| (d["column_name"].as_str().unwrap().into(), d["column_value"].as_str().unwrap().into()))
        .collect();
    lost.sort();
    assert_eq!(lost, vec![("b".into(), "1".into()), ("n".into(), "ten".into()), ("t".into(), "never".into())]);
    assert!(discards.iter().all(|d| d["row_id"] == "m2" && d["table_name"] == "e"));
}

#[tokio::test]
async fn a_repeated_message_is_written_once() {
    let h = Harness::new(|_| {});
    let body = json!({"batch": [
        {"type": "track", "userId": "u", "event": "E", "messageId": "dup"},
        {"type": "track", "userId": "u", "event": "E", "messageId": "dup"},
    ]})
    .to_string();
    assert_eq!(post(&h, "/v1/batch", body.clone(), None).await.0, 200);
    assert_eq!(post(&h, "/v1/batch", body, None).await.0, 200);
    assert_eq!(ids(&h.table("segment", "tracks")), vec!["dup"]);
    assert_eq!(ids(&h.table("segment", "e")), vec!["dup"]);
}

#[tokio::test]
async fn backpressure_answers_503_with_retry_after() {
    let h = Harness::new(|c| {
        c.flush.interval = std::time::Duration::from_millis(500);
        c.flush.max_buffered_bytes = 100;
    });
    let routes = segment_delta::sources::http::routes(h.state.clone());
    let one = |id: &str| {
        json!({"userId": "u", "event": "E", "messageId": id, "properties": {"pad": "x".repeat(80)}}).to_string()
    };
    let first = {
        let (routes, body) = (routes.clone(), one("first"));
        tokio::spawn(
            async move { warp::test::request().method("POST").path("/v1/track").body(body).reply(&routes).await },
        )
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let res = warp::test::request().method("POST").path("/v1/track").body(one("second")).reply(&routes).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(ids(&h.table("segment", "tracks")), vec!["first"]);
}

#[tokio::test]
async fn functions_invocation_shape_answers_with_outputs_res() {
    let h = Harness::new(|_| {});
    let event = json!({"userId": "u", "event": "Invoked", "messageId": "inv1"}).to_string();
    let invocation = json!({
        "Data": {"req": {"Url": "https://app.azurewebsites.net/v1/track?x=1", "Method": "POST", "Query": {"x": "1"},
                          "Headers": {"Content-Type": ["application/json"], "Authorization": [format!("Basic {}", STANDARD.encode("k:"))]},
                          "Params": {"path": "track"}, "Body": event}},
        "Metadata": {"sys": {"MethodName": "segment", "UtcNow": "2026-11-25T00:00:00Z", "RandGuid": "g"}}
    });
    let (status, answer) = post(&h, "/segment", invocation.to_string(), None).await;
    assert_eq!(status, 200);
    assert_eq!(answer["Outputs"]["res"]["statusCode"], 200);
    let inner: Value = serde_json::from_str(answer["Outputs"]["res"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(inner, json!({"success": true}));
    assert!(answer["Logs"].is_array());
    assert_eq!(answer["ReturnValue"], Value::Null);
    assert_eq!(ids(&h.table("segment", "invoked")), vec!["inv1"]);
}

#[tokio::test]
async fn hostile_items_fail_alone() {
    let h = Harness::new(|_| {});
    let deep = format!(
        "{{\"type\":\"track\",\"userId\":\"u\",\"event\":\"Deep\",\"properties\":{{\"p\":{}{}}}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut body = Vec::new();
    body.extend_from_slice(b"{\"batch\":[");
    body.extend_from_slice(deep.as_bytes());
    body.extend_from_slice(
        b",{\"type\":\"track\",\"userId\":\"u\",\"event\":\"Bad\",\"properties\":{\"s\":\"\xff\xfe\"}}",
    );
    body.extend_from_slice(br#",{"type":"track","userId":"u\u0000x","event":"Good","messageId":"g1","properties":{"a`b; DROP TABLE x --":"v","nul\u0000key":"z\u0000"}}"#);
    body.extend_from_slice(b"]}");
    assert_eq!(post(&h, "/v1/batch", body, None).await.0, 200);
    let good = h.table("segment", "good");
    assert_eq!(good.len(), 1);
    assert_eq!(good[0]["user_id"], "u\u{0}x");
    assert_eq!(good[0]["a_b_drop_table_x"], "v");
    assert_eq!(good[0]["nul_key"], "z\u{0}");
    let discards = h.table("segment", "discards");
    assert_eq!(discards.len(), 2);
    assert!(discards.iter().any(|d| d["reason"] == "the event is nested more than 128 levels deep"));
    assert!(discards.iter().any(|d| d["column_value"].as_str().unwrap().starts_with("base64:")));
    assert!(!h.exists("segment", "deep"));
}

/// Adaptive group commit: requests arriving together share a commit, and however many arrive, a table gets at most
/// one commit per `min_interval` from this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_commits_bounded_by_the_minimum_interval() {
    let min_interval = std::time::Duration::from_millis(250);
    let h = std::sync::Arc::new(Harness::new(|c| c.flush.min_interval = min_interval));
    let started = std::time::Instant::now();
    let mut senders = Vec::new();
    for client in 0..16 {
        let h = h.clone();
        senders.push(tokio::spawn(async move {
            for n in 0..8 {
                let body = json!({"userId": "u", "event": "Tick", "messageId": format!("m-{client}-{n}")}).to_string();
                let (status, answer) = post(&h, "/v1/track", body, None).await;
                assert_eq!(status, 200, "{answer}");
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(h.table("segment", "tracks").len(), 128);
    let log = h.dir.path().join("segment/tracks/_delta_log");
    let commits = std::fs::read_dir(log)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count();
    // Version 0 creates the table; each later commit appends. 128 sequential-per-client requests, 16 at a time.
    let bound = (elapsed.as_secs_f64() / min_interval.as_secs_f64()).floor() as usize + 2;
    assert!(commits <= bound, "{commits} commits in {elapsed:?}: more than one per {min_interval:?}");
    assert!(commits < 128 / 4, "{commits} commits for 128 requests: requests arriving together should share them");
}
