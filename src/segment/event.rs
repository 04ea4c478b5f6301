//! A Segment event, validated: its type, ids, times and the objects that become columns.

use std::borrow::Cow;

use crate::segment::json::{Json, Keys, Object, get};

use crate::layout::value::{Micros, parse_timestamp};
use crate::segment::time::corrected_timestamp;

/// `messageId`s longer than this are refused, as Segment does.
pub const MAX_MESSAGE_ID_CHARS: usize = 100;

/// Top-level fields SDKs send for routing or bookkeeping; Segment stores none of them.
const IGNORED_FIELDS: &[&str] =
    &["integrations", "writeKey", "_metadata", "channel", "version", "projectId", "options"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

impl EventType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "track" => Self::Track,
            "identify" => Self::Identify,
            "page" => Self::Page,
            "screen" => Self::Screen,
            "group" => Self::Group,
            "alias" => Self::Alias,
            _ => return None,
        })
    }

    /// The table every event of this type lands in.
    pub fn table(self) -> &'static str {
        match self {
            Self::Track => "tracks",
            Self::Identify => "identifies",
            Self::Page => "pages",
            Self::Screen => "screens",
            Self::Group => "groups",
            Self::Alias => "aliases",
        }
    }
}

/// What the server knows about an event's arrival.
#[derive(Debug, Clone)]
pub struct Arrival<'a> {
    pub received_at: Micros,
    /// Batch-level `context`, merged under each item's own.
    pub context: Option<&'a Object<'a>>,
    /// Backfills keep the `receivedAt` recorded in the file; live traffic uses the arrival time.
    pub keep_received_at: bool,
    /// A batch body's `sentAt`, which SDKs send once for all its events.
    pub sent_at: Option<Micros>,
}

/// A field the event carried that cannot be stored as sent; the rest of the event still lands.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldProblem {
    pub field: String,
    pub value: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub kind: EventType,
    pub message_id: String,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub received_at: Micros,
    pub sent_at: Option<Micros>,
    pub original_timestamp: Option<Micros>,
    pub timestamp: Micros,
    /// track: the event name; page/screen: `name`; group: `groupId`; alias: `previousId`.
    pub event: Option<String>,
    pub name: Option<String>,
    pub category: Option<String>,
    pub group_id: Option<String>,
    pub previous_id: Option<String>,
    pub context: Object<'a>,
    /// `properties` (track, page, screen) or `traits` (identify, group).
    pub payload: Object<'a>,
    pub problems: Vec<FieldProblem>,
}

/// An event that cannot land in its table; it goes whole to `discards`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct Invalid {
    pub reason: String,
    pub message_id: Option<String>,
    /// The table the event was meant for, when its type says.
    pub table: Option<&'static str>,
}

/// A JSON scalar id (`"u1"` or `42`) as text.
fn id_text(v: &Json<'_>) -> Result<Option<String>, ()> {
    match v {
        Json::Null => Ok(None),
        Json::Str(s) if s.is_empty() => Ok(None),
        Json::Str(s) => Ok(Some(s.to_string())),
        Json::Number(n) => Ok(Some(n.to_string())),
        Json::Bool(_) | Json::Array(_) | Json::Object(_) => Err(()),
    }
}

/// Deep-merges `base` under `over`: keys of `over` win, objects merge key by key, and keys only `base` has follow
/// in its order.
fn merge_under<'a>(over: &mut Object<'a>, base: &Object<'a>) {
    // A batch context of many keys merged into many events of many keys: large objects are looked up by hash.
    let mut keys = Keys::default();
    keys.start(over, over.len());
    for (k, bv) in base {
        match keys.find(over, k) {
            None => keys.push(over, k.clone(), bv.clone()),
            Some(i) => {
                if let (Json::Object(o), Json::Object(b)) = (&mut over[i].1, bv) {
                    merge_under(o, b);
                }
            }
        }
    }
}

impl<'a> Event<'a> {
    pub fn from_json(v: Json<'a>, arrival: &Arrival<'a>) -> Result<Event<'a>, Invalid> {
        let Json::Object(mut obj) = v else {
            return Err(Invalid { reason: "an event must be a JSON object".into(), message_id: None, table: None });
        };
        let message_id = match get(&obj, "messageId").map(id_text) {
            Some(Ok(Some(id))) => Some(id),
            Some(Ok(None)) | None => None,
            Some(Err(())) => {
                return Err(Invalid { reason: "messageId must be a string".into(), message_id: None, table: None });
            }
        };
        let invalid =
            |reason: String, table: Option<&'static str>| Invalid { reason, message_id: message_id.clone(), table };
        let kind = match get(&obj, "type") {
            Some(Json::Str(t)) => EventType::parse(t).ok_or_else(|| {
                invalid(
                    format!("unknown event type {t:?}: expected track, identify, page, screen, group or alias"),
                    None,
                )
            })?,
            Some(_) => return Err(invalid("type must be a string".into(), None)),
            None => return Err(invalid("the event has no type".into(), None)),
        };
        let table = Some(kind.table());
        if message_id.as_ref().is_some_and(|id| id.chars().count() > MAX_MESSAGE_ID_CHARS) {
            return Err(invalid(format!("messageId is longer than {MAX_MESSAGE_ID_CHARS} characters"), table));
        }
        let text_field = |name: &str| -> Result<Option<String>, Invalid> {
            match get(&obj, name).map(id_text) {
                None => Ok(None),
                Some(Ok(v)) => Ok(v),
                Some(Err(())) => Err(invalid(format!("{name} must be a string or a number"), table)),
            }
        };
        let screen_or_page = matches!(kind, EventType::Page | EventType::Screen);
        let user_id = text_field("userId")?;
        let anonymous_id = text_field("anonymousId")?;
        if user_id.is_none() && anonymous_id.is_none() {
            return Err(invalid("the event has neither userId nor anonymousId".into(), table));
        }
        let mut event = Event {
            kind,
            message_id: message_id.clone().unwrap_or_else(|| format!("api-{}", uuid::Uuid::new_v4())),
            user_id,
            anonymous_id,
            received_at: arrival.received_at,
            sent_at: None,
            original_timestamp: None,
            timestamp: arrival.received_at,
            event: None,
            name: if screen_or_page { text_field("name")? } else { None },
            category: if screen_or_page { text_field("category")? } else { None },
            group_id: if kind == EventType::Group { text_field("groupId")? } else { None },
            previous_id: if kind == EventType::Alias { text_field("previousId")? } else { None },
            context: Object::new(),
            payload: Object::new(),
            problems: Vec::new(),
        };
        match kind {
            EventType::Track => match get(&obj, "event") {
                Some(Json::Str(e)) if !e.is_empty() => event.event = Some(e.to_string()),
                Some(Json::Str(_)) | Some(Json::Null) | None => {
                    return Err(invalid("a track event needs a non-empty event name".into(), table));
                }
                Some(_) => return Err(invalid("event must be a string".into(), table)),
            },
            EventType::Group if event.group_id.is_none() => {
                return Err(invalid("a group event needs a groupId".into(), table));
            }
            EventType::Alias if event.previous_id.is_none() => {
                return Err(invalid("an alias event needs a previousId".into(), table));
            }
            _ => {}
        }

        let payload_key = match kind {
            EventType::Identify | EventType::Group => "traits",
            EventType::Track | EventType::Page | EventType::Screen => "properties",
            EventType::Alias => "",
        };
        // The fields kept at the top level are at most these eight.
        for (key, value) in std::mem::replace(&mut obj, Object::with_capacity(8)) {
            match key.as_ref() {
                "type" | "messageId" | "userId" | "anonymousId" | "timestamp" | "originalTimestamp" | "sentAt"
                | "receivedAt" => {
                    obj.push((key, value));
                }
                "event" if kind == EventType::Track => {}
                "name" | "category" if screen_or_page => {}
                "groupId" if kind == EventType::Group => {}
                "previousId" if kind == EventType::Alias => {}
                "context" => event.take_object(key, value, |e| &mut e.context),
                k if k == payload_key => event.take_object(key, value, |e| &mut e.payload),
                k if IGNORED_FIELDS.contains(&k) => {}
                _ if value.is_null() => {}
                _ => event.problems.push(FieldProblem {
                    reason: format!("{key:?} is not a field of a {} event", payload_key_type(kind)),
                    field: key.into_owned(),
                    value: value.to_string(),
                }),
            }
        }
        if let Some(base) = arrival.context {
            merge_under(&mut event.context, base);
        }

        let received_at = if arrival.keep_received_at { event.time(&obj, "receivedAt") } else { None };
        event.received_at = received_at.unwrap_or(arrival.received_at);
        event.sent_at = event.time(&obj, "sentAt").or(arrival.sent_at);
        event.original_timestamp = event.time(&obj, "timestamp").or_else(|| event.time(&obj, "originalTimestamp"));
        event.timestamp = corrected_timestamp(event.received_at, event.sent_at, event.original_timestamp);
        Ok(event)
    }

    fn take_object(&mut self, key: Cow<'a, str>, value: Json<'a>, slot: impl FnOnce(&mut Self) -> &mut Object<'a>) {
        match value {
            Json::Object(m) => *slot(self) = m,
            Json::Null => {}
            other => self.problems.push(FieldProblem {
                reason: format!("{key} must be a JSON object"),
                field: key.into_owned(),
                value: other.to_string(),
            }),
        }
    }

    /// A time field; one that is present but not an ISO-8601 date-time is reported and left out.
    fn time(&mut self, obj: &Object<'_>, field: &str) -> Option<Micros> {
        let value = get(obj, field)?;
        if let Json::Str(s) = value
            && let Some(t) = parse_timestamp(s)
        {
            return Some(t);
        }
        match value {
            Json::Null => None,
            Json::Str(s) if s.is_empty() => None,
            other => {
                self.problems.push(FieldProblem {
                    field: field.to_string(),
                    value: other.as_str().map_or_else(|| other.to_string(), str::to_string),
                    reason: format!("{field} is not an ISO-8601 date-time"),
                });
                None
            }
        }
    }
}

fn payload_key_type(kind: EventType) -> &'static str {
    match kind {
        EventType::Track => "track",
        EventType::Identify => "identify",
        EventType::Page => "page",
        EventType::Screen => "screen",
        EventType::Group => "group",
        EventType::Alias => "alias",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const NOW: Micros = 1_793_534_460_000_000; // 2026-11-01T12:01:00Z

    fn arrival() -> Arrival<'static> {
        Arrival { received_at: NOW, context: None, keep_received_at: false, sent_at: None }
    }

    fn ok(v: Value) -> Event<'static> {
        Event::from_json(Json::from(&v), &arrival()).expect("valid event")
    }

    fn bad(v: Value) -> String {
        Event::from_json(Json::from(&v), &arrival()).expect_err("invalid event").reason
    }

    #[test]
    fn validates_like_segment() {
        assert_eq!(bad(json!({"type": "track", "event": "X"})), "the event has neither userId nor anonymousId");
        assert_eq!(bad(json!({"type": "track", "userId": "u"})), "a track event needs a non-empty event name");
        assert_eq!(
            bad(json!({"type": "track", "userId": "u", "event": ""})),
            "a track event needs a non-empty event name"
        );
        assert!(bad(json!({"type": "click", "userId": "u"})).starts_with("unknown event type \"click\""));
        assert_eq!(bad(json!({"userId": "u"})), "the event has no type");
        assert_eq!(bad(json!({"type": "group", "userId": "u"})), "a group event needs a groupId");
        assert_eq!(bad(json!({"type": "alias", "userId": "u"})), "an alias event needs a previousId");
        assert_eq!(bad(json!({"type": "identify", "userId": {"a": 1}})), "userId must be a string or a number");
        assert_eq!(bad(json!([1])), "an event must be a JSON object");
        let long = "m".repeat(101);
        assert_eq!(
            bad(json!({"type": "identify", "userId": "u", "messageId": long})),
            "messageId is longer than 100 characters"
        );
        let e = ok(json!({"type": "identify", "userId": 42}));
        assert_eq!(e.user_id.as_deref(), Some("42"));
        assert!(e.message_id.starts_with("api-"));
    }

    #[test]
    fn corrects_clock_skew() {
        let e = ok(json!({"type": "track", "event": "E", "anonymousId": "a",
            "timestamp": "2026-11-01T12:10:00Z", "sentAt": "2026-11-01T12:11:00Z"}));
        assert_eq!(e.timestamp, parse_timestamp("2026-11-01T12:00:00Z").unwrap());
        assert_eq!(e.original_timestamp, parse_timestamp("2026-11-01T12:10:00Z"));
        assert_eq!(e.received_at, NOW);
        let e = ok(json!({"type": "track", "event": "E", "anonymousId": "a", "receivedAt": "2020-01-01T00:00:00Z"}));
        assert_eq!(e.received_at, NOW, "live traffic ignores a client's receivedAt");
    }

    #[test]
    fn keeps_problems_instead_of_dropping() {
        let e = ok(json!({"type": "page", "userId": "u", "sentAt": "yesterday", "properties": "oops",
            "colour": "red", "integrations": {"All": true}}));
        let fields: Vec<_> = e.problems.iter().map(|p| (p.field.as_str(), p.value.as_str())).collect();
        assert_eq!(fields, vec![("properties", "\"oops\""), ("colour", "\"red\""), ("sentAt", "yesterday")]);
        assert_eq!(e.sent_at, None);
        // A field of another event type is not silently ignored either.
        let e = ok(json!({"type": "track", "event": "E", "userId": "u", "name": "n", "groupId": "g"}));
        let fields: Vec<_> = e.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, vec!["name", "groupId"]);
    }

    #[test]
    fn batch_context_merges_under_the_event_context() {
        let batch = Json::from(&json!({"library": {"name": "lib", "version": "1"}, "ip": "1.1.1.1"}));
        let arrival = Arrival { received_at: NOW, context: batch.as_object(), keep_received_at: false, sent_at: None };
        let e = Event::from_json(
            Json::from(
                &json!({"type": "identify", "userId": "u", "context": {"ip": "2.2.2.2", "library": {"version": "2"}}}),
            ),
            &arrival,
        )
        .unwrap();
        assert_eq!(
            Json::Object(e.context),
            Json::from(&json!({"ip": "2.2.2.2", "library": {"version": "2", "name": "lib"}}))
        );
        // Many keys: merged by hash, with the same outcome.
        let many: serde_json::Map<String, Value> = (0..40).map(|i| (format!("k{i}"), json!(i))).collect();
        let mut event = json!({"type": "identify", "userId": "u", "context": many});
        event["context"]["k5"] = json!({"own": true});
        let base = Json::from(&json!({"k5": {"from_batch": 1}, "k7": "batch", "extra": "x"}));
        let arrival = Arrival { received_at: NOW, context: base.as_object(), keep_received_at: false, sent_at: None };
        let e = Event::from_json(Json::from(&event), &arrival).unwrap();
        assert_eq!(e.context.len(), 41);
        assert_eq!(get(&e.context, "k5"), Some(&Json::from(&json!({"own": true, "from_batch": 1}))));
        assert_eq!(get(&e.context, "k7"), Some(&Json::from(&json!(7))));
        assert_eq!(e.context[40], ("extra".into(), Json::from(&json!("x"))));
    }
}
