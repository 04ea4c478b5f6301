//! Nothing accepted is silently dropped: for generated events with hostile names, values and nesting, sent
//! through the body splitter and the event → rows mapping that the HTTP API uses, every value the event carries
//! is in one of its rows or in a discard, and an event that produces no row is kept whole in `discards`.
//!
//! Every checked value carries a token unique within its event (`‹n›` in strings and arrays, a number of the form
//! 7_000_000 + n), so that "is it somewhere" is a plain search in the row values and the discards' texts.

use proptest::prelude::*;
use segment_delta::config::Limits;
use segment_delta::intake::body;
use segment_delta::intake::map_raw;
use segment_delta::layout::rows::Mapped;
use segment_delta::segment::event::Arrival;
use serde_json::{Map, Value, json};

/// A key from pieces that stress normalisation and SQL quoting.
fn hostile_key() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("plan".to_string()),
        Just("Plan Name".to_string()),
        Just("plan_name".to_string()),
        Just("planName".to_string()),
        Just("`".to_string()),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just(";".to_string()),
        Just("--".to_string()),
        Just("/*".to_string()),
        Just("*/".to_string()),
        Just("\n".to_string()),
        Just("\u{0}".to_string()),
        Just(" ".to_string()),
        Just("id".to_string()),
        Just("user_id".to_string()),
        Just("received_at".to_string()),
        Just("context".to_string()),
        Just("DROP TABLE tracks".to_string()),
        Just("Ünïcödé".to_string()),
        Just("日本".to_string()),
        Just("2FA".to_string()),
        Just("x".repeat(300)),
        "[a-zA-Z0-9 _.$-]{1,12}",
    ];
    prop::collection::vec(piece, 0..4).prop_map(|p| p.concat())
}

/// A JSON tree whose leaves are placeholders (`null` stands for "a value goes here"), filled in afterwards so
/// that each leaf gets its own token.
#[derive(Debug, Clone)]
enum Tree {
    Leaf(u8),
    Null,
    Object(Vec<(String, Tree)>),
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![4 => (0u8..6).prop_map(Tree::Leaf), 1 => Just(Tree::Null)];
    leaf.prop_recursive(4, 24, 5, |inner| prop::collection::vec((hostile_key(), inner), 0..5).prop_map(Tree::Object))
}

/// Fills a tree with values, recording each leaf's token.
fn fill(t: &Tree, next: &mut u32, tokens: &mut Vec<String>) -> Value {
    match t {
        Tree::Null => Value::Null,
        Tree::Leaf(kind) => {
            *next += 1;
            let n = *next;
            let tag = format!("‹{n}›");
            let number = 7_000_000 + i64::from(n);
            let (value, token) = match kind {
                0 => (json!(format!("{tag} it's a `value`; --")), tag),
                1 => (json!(format!("{tag}\n/* */ \"quoted\"")), tag),
                2 => (json!(number), number.to_string()),
                3 => (json!(number as f64 + 0.25), format!("{number}.25")),
                4 => (json!([tag.clone(), {"in": "array"}]), tag),
                _ => (json!(format!("{tag}{}", "é".repeat(40))), tag),
            };
            tokens.push(token);
            value
        }
        Tree::Object(fields) => {
            let mut m = Map::new();
            for (k, v) in fields {
                if m.contains_key(k) {
                    continue; // a JSON object has each key once
                }
                let v = fill(v, next, tokens);
                m.insert(k.clone(), v);
            }
            Value::Object(m)
        }
    }
}

#[derive(Debug, Clone)]
struct Spec {
    kind: &'static str,
    user: Option<String>,
    event: String,
    message_id: Option<String>,
    payload: Tree,
    context: Tree,
    unknown: Option<(String, Tree)>,
    deep: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::sample::select(vec!["track", "identify", "page", "screen", "group", "alias", "click"]),
        prop::option::weighted(0.9, "[a-z0-9`';\" -]{1,10}"),
        prop_oneof![hostile_key(), Just(String::new())],
        prop::option::weighted(0.8, "[A-Za-z0-9`'\";/* -]{1,20}"),
        tree(),
        tree(),
        prop::option::weighted(0.3, (hostile_key(), tree())),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(kind, user, event, message_id, payload, context, unknown, deep)| Spec {
            kind,
            user,
            event,
            message_id,
            payload,
            context,
            unknown,
            deep,
        })
}

/// The event's JSON, and the tokens of every value a row or a discard must hold.
fn build(s: &Spec) -> (Value, Vec<String>) {
    let mut tokens = Vec::new();
    let mut next = 0;
    let mut e = Map::new();
    e.insert("type".into(), json!(s.kind));
    if let Some(u) = &s.user {
        e.insert("userId".into(), json!(u));
    }
    if let Some(m) = &s.message_id {
        e.insert("messageId".into(), json!(m));
    }
    match s.kind {
        "track" => {
            e.insert("event".into(), json!(s.event));
        }
        "group" => {
            e.insert("groupId".into(), json!("g1"));
        }
        "alias" => {
            e.insert("previousId".into(), json!("p1"));
        }
        _ => {}
    }
    let mut payload = fill(&s.payload, &mut next, &mut tokens);
    if s.deep {
        for _ in 0..140 {
            payload = json!({ "deeper": payload });
        }
    }
    let payload_key = match s.kind {
        "identify" | "group" => "traits",
        _ => "properties",
    };
    e.insert(payload_key.into(), payload);
    e.insert("context".into(), fill(&s.context, &mut next, &mut tokens));
    if let Some((k, t)) = &s.unknown {
        let reserved = [
            "type",
            "userId",
            "messageId",
            "event",
            "groupId",
            "previousId",
            "properties",
            "traits",
            "context",
            "anonymousId",
            "name",
            "category",
            "timestamp",
            "originalTimestamp",
            "sentAt",
            "receivedAt",
            "integrations",
            "writeKey",
            "_metadata",
            "channel",
            "version",
            "projectId",
            "options",
        ];
        if !reserved.contains(&k.as_str()) {
            e.insert(k.clone(), fill(t, &mut next, &mut tokens));
        }
    }
    (Value::Object(e), tokens)
}

fn map_body(body: &[u8]) -> Vec<(String, Mapped)> {
    let limits = Limits { max_event_bytes: usize::MAX, max_request_bytes: usize::MAX, max_batch_events: usize::MAX };
    let parsed = body::split(body, true, &limits).expect("a batch body splits");
    let arrival = Arrival {
        received_at: 1_700_000_000_000_000,
        context: parsed.context.as_ref(),
        keep_received_at: false,
        sent_at: parsed.sent_at,
    };
    parsed.events.iter().map(|raw| (raw.text(), map_raw(raw, &arrival, None))).collect()
}

fn check(event: &Value, tokens: &[String], raw: &str, mapped: &Mapped) -> Result<(), TestCaseError> {
    let kind = event["type"].as_str().unwrap_or_default();
    if mapped.rows.is_empty() {
        // Not an event that can land: kept whole, as sent.
        prop_assert!(
            mapped.discards.iter().any(|d| d.column_value == raw && !d.reason.is_empty()),
            "an event with no row is not kept whole in discards: {:?}",
            mapped.discards
        );
        return Ok(());
    }
    prop_assert!(kind != "click", "an unknown type produced rows");
    let type_table = match kind {
        "track" => "tracks",
        "identify" => "identifies",
        "page" => "pages",
        "screen" => "screens",
        "group" => "groups",
        _ => "aliases",
    };
    prop_assert!(mapped.rows.iter().any(|r| r.table == type_table), "no {} row: {:?}", type_table, mapped.rows);
    if let Some(id) = event.get("messageId").and_then(Value::as_str) {
        prop_assert!(mapped.rows.iter().all(|r| &*r.row.id == id));
    }
    let values: Vec<String> = mapped
        .rows
        .iter()
        .flat_map(|r| r.row.columns().map(|(_, v)| v.to_text()))
        .chain(mapped.discards.iter().map(|d| d.column_value.clone()))
        .collect();
    for token in tokens {
        prop_assert!(
            values.iter().any(|v| v.contains(token.as_str())),
            "value {} is in no row and no discard\nrows: {:?}\ndiscards: {:?}",
            token,
            mapped.rows,
            mapped.discards
        );
    }
    // Every discard says why and which event it came from.
    for d in &mapped.discards {
        prop_assert!(!d.reason.is_empty());
        prop_assert_eq!(d.row_id.as_str(), &*mapped.rows[0].row.id);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_value_lands_in_a_row_or_a_discard(specs in prop::collection::vec(spec(), 1..4)) {
        let built: Vec<(Value, Vec<String>)> = specs.iter().map(build).collect();
        let items: Vec<String> = built.iter().map(|(e, _)| e.to_string()).collect();
        let body = format!("{{\"batch\":[{}]}}", items.join(","));
        let mapped = map_body(body.as_bytes());
        prop_assert_eq!(mapped.len(), built.len());
        for ((event, tokens), (raw, m)) in built.iter().zip(&mapped) {
            check(event, tokens, raw, m)?;
        }
    }
}
