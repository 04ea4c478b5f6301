//! The Event Hub trigger: the host's invocation (`POST /eventhub` with `Data`/`Metadata`) becomes events with
//! their partition's sequence numbers, written exactly once through Delta `txn` actions.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::batch::{Submission, SubmitError};
use crate::config::Sources;
use crate::intake::{body, invocation_answer, map_body};
use crate::layout::rows::{Discard, Mapped, Offset};
use crate::layout::value::{Micros, now_micros, parse_timestamp};
use crate::segment::event::Arrival;

/// The Event Hub-triggered function's name (its folder under `function/`).
pub const EVENTHUB_FUNCTION: &str = "eventhub";

/// One event as delivered: its body and, when the host says, its sequence number and enqueued time.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub body: Vec<u8>,
    pub seq: Option<i64>,
    pub enqueued: Option<Micros>,
}

/// An invocation's events and the stream they come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `segment-delta/eventhub/<namespace>/<hub>/<consumer group>/<partition>`, when the host names the partition.
    pub app_id: Option<Arc<str>>,
    pub events: Vec<Delivered>,
}

/// The host double-encodes arrays and strings (JSON text inside a JSON string); accept both forms.
fn decoded(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| v.clone()),
        other => other.clone(),
    }
}

fn text(v: &Value) -> Option<String> {
    match decoded(v) {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An event body: JSON as is; a string that is not JSON but is base64 of JSON is decoded.
fn event_body(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => {
            let t = s.trim_start();
            if !t.starts_with('{')
                && !t.starts_with('[')
                && let Ok(bytes) = STANDARD.decode(s.trim())
                && bytes.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b == b'{' || *b == b'[')
            {
                return bytes;
            }
            s.clone().into_bytes()
        }
        other => other.to_string().into_bytes(),
    }
}

fn array(v: Option<&Value>) -> Vec<Value> {
    match v.map(decoded) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// Reads the host's invocation body.
pub fn parse_invocation(payload: &[u8]) -> Result<Delivery, String> {
    let inv: Value = serde_json::from_slice(payload).map_err(|e| format!("invocation is not valid JSON: {e}"))?;
    let data = inv.get("Data").ok_or("invocation has no Data")?;
    let events = match data.get("events").map(decoded) {
        Some(Value::Array(a)) => a,
        Some(Value::Null) | None => return Err("invocation has no Data.events".into()),
        Some(single) => vec![single],
    };
    let meta = inv.get("Metadata").cloned().unwrap_or(Value::Null);
    let mut seqs: Vec<Option<i64>> =
        array(meta.get("SequenceNumberArray")).iter().map(|v| text(v)?.parse().ok()).collect();
    let system = array(meta.get("SystemPropertiesArray"));
    if seqs.len() != events.len() && system.len() == events.len() {
        seqs = system.iter().map(|p| p.get("SequenceNumber").and_then(text).and_then(|s| s.parse().ok())).collect();
    }
    if seqs.len() != events.len() {
        seqs = vec![None; events.len()];
    }
    let enqueued: Vec<Option<Micros>> = array(meta.get("EnqueuedTimeUtcArray"))
        .iter()
        .map(|v| text(v).and_then(|s| parse_timestamp(&s)))
        .chain(std::iter::repeat(None))
        .take(events.len())
        .collect();
    let ctx = meta.get("PartitionContext").map(decoded).unwrap_or(Value::Null);
    let part = |k: &str| ctx.get(k).and_then(text);
    let app_id =
        match (part("FullyQualifiedNamespace"), part("EventHubName"), part("ConsumerGroup"), part("PartitionId")) {
            (Some(ns), Some(hub), Some(cg), Some(p)) => {
                Some(format!("segment-delta/eventhub/{ns}/{hub}/{cg}/{p}").into())
            }
            _ => None,
        };
    let events = events
        .iter()
        .zip(seqs)
        .zip(enqueued)
        .map(|((e, seq), enqueued)| Delivered { body: event_body(e), seq, enqueued })
        .collect();
    Ok(Delivery { app_id, events })
}

/// The schema an event body goes to: its write key's, else the Event Hub default. An unknown key is reported.
fn schema_for<'a>(sources: &'a Sources, default: Option<&'a str>, key: Option<&str>) -> Result<&'a str, String> {
    match key {
        Some(k) => match sources.schema_for(Some(k)) {
            Some(s) => Ok(s),
            None => default.ok_or_else(|| {
                "an event carries an unknown write key and SEGMENT_DELTA_EVENTHUB_SCHEMA is not set".into()
            }),
        },
        None => default.or_else(|| sources.schema_for(None)).ok_or_else(|| {
            "an event carries no write key and SEGMENT_DELTA_EVENTHUB_SCHEMA is not set, so it has no schema".into()
        }),
    }
}

/// Maps every delivered event into one submission per schema, each charged the bytes of its own messages.
pub fn map_delivery(
    delivery: &Delivery,
    sources: &Sources,
    default: Option<&str>,
) -> Result<BTreeMap<String, Submission>, String> {
    let mut out: BTreeMap<String, Submission> = BTreeMap::new();
    for d in &delivery.events {
        let offset = match (&delivery.app_id, d.seq) {
            (Some(app_id), Some(seq)) => Some(Offset { app_id: app_id.clone(), seq }),
            _ => None,
        };
        let received_at = d.enqueued.unwrap_or_else(now_micros);
        let parsed = body::split_unlimited(&d.body);
        let (events, key, context, sent_at) =
            (&parsed.events, parsed.write_key.as_deref(), parsed.context.as_ref(), parsed.sent_at);
        let unknown_key = key.is_some_and(|k| sources.schema_for(Some(k)).is_none());
        let schema = schema_for(sources, default, key)?;
        let arrival = Arrival { received_at, context, keep_received_at: true, sent_at };
        let bucket = out
            .entry(schema.to_string())
            .or_insert_with(|| Submission { schema: schema.to_string(), ..Default::default() });
        let (mapped_events, built) = if unknown_key {
            let unknown = events
                .iter()
                .map(|raw| Mapped {
                    rows: Vec::new(),
                    discards: vec![Discard {
                        row_id: String::new(),
                        table_name: String::new(),
                        column_name: String::new(),
                        column_value: raw.text(),
                        reason: "the event carries an unknown write key".into(),
                        received_at,
                        offset: None,
                    }],
                    forget: None,
                })
                .collect();
            (unknown, 0)
        } else {
            map_body(&parsed, &arrival, None)
        };
        // A body is charged what it built, when that is more than its bytes.
        bucket.bytes += d.body.len().max(built);
        bucket.events.extend(mapped_events.into_iter().map(|m| m.with_offset(offset.clone())));
    }
    Ok(out)
}

/// Handles `POST /eventhub`: answers 200 once every event is committed (or was already), 500 otherwise so that
/// the host's retry policy sends the batch again.
pub async fn invocation(state: &AppState, payload: Vec<u8>) -> (u16, Value) {
    let fail = |message: String| {
        tracing::error!(error = %message, "event hub invocation failed");
        (500, invocation_answer(json!({}), vec![message]))
    };
    let delivery = match parse_invocation(&payload) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    drop(payload);
    let config = &state.config;
    let by_schema = match map_delivery(&delivery, &config.sources, config.eventhub_schema.as_deref()) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let n = delivery.events.len();
    let seqs: Vec<i64> = delivery.events.iter().filter_map(|e| e.seq).collect();
    let range = match (seqs.iter().min(), seqs.iter().max()) {
        (Some(a), Some(b)) => format!(" (sequence numbers {a}..={b})"),
        _ => String::new(),
    };
    // The delivery's text is freed before the wait for the commit: the rows hold what they need.
    drop(delivery);
    let deletes: Vec<(String, Vec<String>)> = by_schema
        .values()
        .map(|s| (s.schema.clone(), super::users_to_forget(&s.events)))
        .filter(|(_, users)| !users.is_empty())
        .collect();
    crate::metrics::received("eventhub", n);
    let started = std::time::Instant::now();
    let submissions = by_schema.into_values().map(|submission| state.batcher.submit(submission));
    let results: Vec<Result<(), SubmitError>> = futures::future::join_all(submissions).await;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        return fail(format!("not committed, the batch will be delivered again: {e}"));
    }
    crate::metrics::accepted("eventhub", n, started.elapsed());
    for (schema, users) in deletes {
        if let Err(e) = super::apply_deletes(config, &schema, &users).await {
            return fail(format!("{e}; the batch will be delivered again"));
        }
    }
    (200, invocation_answer(json!({}), vec![format!("committed {n} events{range}")]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_payload(events: &[&str], seqs: &[i64]) -> Vec<u8> {
        // As the host builds it: arrays and strings serialised into JSON strings.
        let events = serde_json::to_string(events).unwrap();
        let seqs = serde_json::to_string(seqs).unwrap();
        json!({
            "Data": {"events": events},
            "Metadata": {
                "PartitionContext": {"FullyQualifiedNamespace": "ns.servicebus.windows.net", "EventHubName": "segment",
                                     "ConsumerGroup": "$Default", "PartitionId": "3"},
                "SequenceNumberArray": seqs,
                "EnqueuedTimeUtcArray": serde_json::to_string(&vec!["2026-11-01T12:00:00Z"; 2]).unwrap(),
                "PartitionKey": "\"k\"",
                "sys": {"MethodName": "eventhub", "UtcNow": "2026-11-01T12:00:01Z", "RandGuid": "x"}
            }
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn reads_the_double_encoded_host_payload() {
        let b64 = STANDARD.encode(r#"{"type":"track","userId":"u","event":"B"}"#);
        let d = parse_invocation(&host_payload(&[r#"{"type":"track","userId":"u","event":"A"}"#, &b64], &[41, 42]))
            .unwrap();
        assert_eq!(d.app_id.as_deref(), Some("segment-delta/eventhub/ns.servicebus.windows.net/segment/$Default/3"));
        assert_eq!(d.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![Some(41), Some(42)]);
        assert_eq!(d.events[1].body, br#"{"type":"track","userId":"u","event":"B"}"#.to_vec());
        assert_eq!(d.events[0].enqueued, parse_timestamp("2026-11-01T12:00:00Z"));
    }

    #[test]
    fn accepts_real_arrays_and_system_properties() {
        let p = json!({"Data": {"events": [{"type": "identify", "userId": "u"}]},
            "Metadata": {"SystemPropertiesArray": [{"SequenceNumber": 7}]}});
        let d = parse_invocation(p.to_string().as_bytes()).unwrap();
        assert_eq!(d.events[0].seq, Some(7));
        assert_eq!(d.app_id, None);
        assert!(parse_invocation(b"{}").unwrap_err().contains("no Data"));
    }

    #[test]
    fn schema_from_write_key_or_default() {
        let sources = Sources::Keys(vec![(crate::config::Secret::new("K1"), "web".into())]);
        let d = parse_invocation(&host_payload(
            &[
                r#"{"type":"track","userId":"u","event":"A","writeKey":"K1"}"#,
                r#"{"batch":[{"type":"track","userId":"u","event":"B"}]}"#,
            ],
            &[1, 2],
        ))
        .unwrap();
        let m = map_delivery(&d, &sources, Some("hub")).unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["hub", "web"]);
        assert_eq!(m["web"].events[0].rows[0].row.offset.as_ref().map(|o| o.seq), Some(1));
        assert!(map_delivery(&d, &sources, None).unwrap_err().contains("SEGMENT_DELTA_EVENTHUB_SCHEMA"));
    }

    #[test]
    fn each_schema_is_charged_the_bytes_of_its_own_messages() {
        // One message carries a batch of three events, the other a single event: the schema of the batch holds
        // three mapped events but is charged only its one message's bytes. Padded with blanks, each message is
        // larger than what its events build.
        let sources = Sources::Keys(vec![(crate::config::Secret::new("K1"), "web".into())]);
        let pad = " ".repeat(20_000);
        let batch = format!(
            r#"{{"batch":[{{"type":"track","userId":"u","event":"B"}},{{"type":"track","userId":"u","event":"C"}},{{"type":"track","userId":"u","event":"D"}}]}}{pad}"#
        );
        let single = format!(r#"{{"type":"track","userId":"u","event":"A","writeKey":"K1"}}{pad}"#);
        let d = parse_invocation(&host_payload(&[&single, &batch], &[1, 2])).unwrap();
        let m = map_delivery(&d, &sources, Some("hub")).unwrap();
        let built = |s: &Submission| s.events.iter().map(Mapped::size_estimate).sum::<usize>();
        assert!(built(&m["hub"]) < batch.len() && built(&m["web"]) < single.len());
        assert_eq!((m["hub"].events.len(), m["hub"].bytes), (3, batch.len()));
        assert_eq!((m["web"].events.len(), m["web"].bytes), (1, single.len()));
        assert_eq!(m.values().map(|s| s.bytes).sum::<usize>(), d.events.iter().map(|e| e.body.len()).sum::<usize>());
        // Unpadded, each is charged what its events build, which is more than its bytes.
        let d = parse_invocation(&host_payload(&[single.trim_end(), batch.trim_end()], &[1, 2])).unwrap();
        let m = map_delivery(&d, &sources, Some("hub")).unwrap();
        assert!(built(&m["hub"]) > batch.trim_end().len());
        assert_eq!((m["hub"].bytes, m["web"].bytes), (built(&m["hub"]), built(&m["web"])));
    }
}
