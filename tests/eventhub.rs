//! The Event Hub trigger as the Functions host invokes it: exactly-once through Delta `txn` actions, across
//! redeliveries, overlaps, restarts and failures.

mod common;

use common::Harness;
use segment_delta::app::AppState;
use serde_json::{Value, json};

/// The host's invocation for events `seqs` of partition 0; bodies carry no messageId, so only the stream offset
/// can recognise a redelivery.
fn invocation(seqs: std::ops::RangeInclusive<i64>) -> String {
    let bodies: Vec<String> = seqs
        .clone()
        .map(|s| json!({"type": "track", "userId": format!("u{s}"), "event": "Hub Event", "properties": {"seq": s, "bad": if s % 5 == 0 { json!("x") } else { json!(s) }}}).to_string())
        .collect();
    let seq_list: Vec<i64> = seqs.collect();
    json!({
        "Data": {"events": serde_json::to_string(&bodies).unwrap()},
        "Metadata": {
            "PartitionContext": {"FullyQualifiedNamespace": "ns.servicebus.windows.net", "EventHubName": "segment", "ConsumerGroup": "$Default", "PartitionId": "0"},
            "SequenceNumberArray": serde_json::to_string(&seq_list).unwrap(),
            "sys": {"MethodName": "eventhub", "UtcNow": "2026-11-25T00:00:00Z", "RandGuid": "r"}
        }
    })
    .to_string()
}

async fn invoke(state: &AppState, body: String) -> (u16, Value) {
    let res = warp::test::request()
        .method("POST")
        .path("/eventhub")
        .header("content-type", "application/json")
        .body(body)
        .reply(&segment_delta::sources::http::routes(state.clone()))
        .await;
    (res.status().as_u16(), serde_json::from_slice(res.body()).unwrap_or(Value::Null))
}

fn seqs(h: &Harness, table: &str) -> Vec<i64> {
    let mut v: Vec<i64> = h.table("segment", table).iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn the_same_batch_twice_writes_once() {
    let h = Harness::new(|_| {});
    let (status, answer) = invoke(&h.state, invocation(1..=10)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ReturnValue"], Value::Null);
    assert!(answer["Logs"][0].as_str().unwrap().contains("sequence numbers 1..=10"));
    // The host retries, or the partition moved to another instance: same events, fresh process.
    assert_eq!(invoke(&h.sibling(|_| {}), invocation(1..=10)).await.0, 200);
    assert_eq!(invoke(&h.state, invocation(1..=10)).await.0, 200);
    assert_eq!(seqs(&h, "hub_event"), (1..=10).collect::<Vec<_>>());
    assert_eq!(h.table("segment", "tracks").len(), 10);
    // Values 5 and 10 of `bad` could not be cast: recorded once each, not once per delivery.
    assert_eq!(h.table("segment", "discards").len(), 2);
}

#[tokio::test]
async fn an_overlapping_batch_writes_only_the_new_events() {
    let h = Harness::new(|_| {});
    assert_eq!(invoke(&h.state, invocation(1..=10)).await.0, 200);
    assert_eq!(invoke(&h.sibling(|_| {}), invocation(6..=15)).await.0, 200);
    assert_eq!(seqs(&h, "hub_event"), (1..=15).collect::<Vec<_>>());
    assert_eq!(h.table("segment", "tracks").len(), 15);
    assert_eq!(h.table("segment", "discards").len(), 3);
}

#[tokio::test]
async fn a_crash_between_commit_and_answer_loses_and_doubles_nothing() {
    let h = Harness::new(|_| {});
    // The commit lands but the answer never reaches the host: the process dies with the response in hand.
    let first = h.sibling(|_| {});
    let (status, _) = invoke(&first, invocation(1..=20)).await;
    assert_eq!(status, 200);
    drop(first);
    // The host redelivers the batch (plus newer events) to a new instance.
    assert_eq!(invoke(&h.state, invocation(1..=25)).await.0, 200);
    assert_eq!(seqs(&h, "hub_event"), (1..=25).collect::<Vec<_>>());
    assert_eq!(h.table("segment", "tracks").len(), 25);
}

#[tokio::test]
async fn a_failed_write_answers_500_and_the_retry_completes_it() {
    let h = Harness::new(|_| {});
    // Make one table unwritable: a file where its directory should be.
    std::fs::create_dir_all(h.dir.path().join("segment")).unwrap();
    std::fs::write(h.dir.path().join("segment/hub_event"), b"not a directory").unwrap();
    let (status, answer) = invoke(&h.state, invocation(1..=5)).await;
    assert_eq!(status, 500);
    assert!(answer["Logs"][0].as_str().unwrap().contains("will be delivered again"), "{answer}");
    std::fs::remove_file(h.dir.path().join("segment/hub_event")).unwrap();
    assert_eq!(invoke(&h.state, invocation(1..=5)).await.0, 200);
    assert_eq!(seqs(&h, "hub_event"), (1..=5).collect::<Vec<_>>());
    assert_eq!(h.table("segment", "tracks").len(), 5, "tracks committed the first time and was not written again");
}

#[tokio::test]
async fn events_without_a_schema_fail_loudly() {
    let h = Harness::new(|c| {
        c.sources = segment_delta::config::Sources::Keys(vec![
            (segment_delta::config::Secret::new("K1"), "web".into()),
            (segment_delta::config::Secret::new("K2"), "ios".into()),
        ]);
        c.eventhub_schema = None;
    });
    let (status, answer) = invoke(&h.state, invocation(1..=2)).await;
    assert_eq!(status, 500);
    assert!(answer["Logs"][0].as_str().unwrap().contains("SEGMENT_DELTA_EVENTHUB_SCHEMA"));
}
