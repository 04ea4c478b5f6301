//! The front door every source shares: a request body is decoded and split into events (`body`), each event is
//! mapped to its rows and discards, and the host's invocation answers are built. HTTP, Event Hub, webhooks and the
//! backfill all come in here; none of them imports another.

pub mod body;

use serde_json::{Value, json};

use crate::layout::rows::{Discard, Mapped};
use crate::schema::rows::map_event;
use crate::segment::event::{Arrival, Event, FieldProblem, Invalid};
use crate::segment::json::{Json, Parsed};
use body::RawEvent;

/// Maps one raw event; anything that cannot be read lands whole in `discards`.
pub fn map_raw(raw: &body::RawEvent<'_>, arrival: &Arrival<'_>, implied_type: Option<&str>) -> Mapped {
    let reject = |reason: String| rejected(Invalid { reason, message_id: None, table: None }, raw, arrival);
    let Parsed { mut value, duplicates } = match raw.parse() {
        Ok(p) => p,
        Err(reason) => return reject(reason),
    };
    // The single-event endpoints say the type; Segment takes it from the path.
    if let (Some(t), Json::Object(o)) = (implied_type, &mut value) {
        let t = Json::Str(t.to_string().into());
        match o.iter_mut().find(|(k, _)| k == "type") {
            Some((_, v)) => *v = t,
            None => o.push(("type".into(), t)),
        }
    }
    // A privacy delete (as Segment sends it to destinations) names a user to forget; it is not a row.
    if value.get("type").and_then(Json::as_str) == Some("delete") {
        return match value.get("userId") {
            Some(Json::Str(u)) if !u.trim().is_empty() => Mapped { forget: Some(u.to_string()), ..Default::default() },
            Some(Json::Number(n)) => Mapped { forget: Some(n.to_string()), ..Default::default() },
            _ => reject("a delete event needs the userId of the user to forget".into()),
        };
    }
    match Event::from_json(value, arrival) {
        Ok(mut e) => {
            // A key sent twice: the later value is the event's, the earlier one is kept in `discards`.
            e.problems.extend(duplicates.into_iter().map(|d| FieldProblem {
                reason: format!("{:?} appears twice in the event; the later value is kept", d.path),
                field: d.path,
                value: d.earlier,
            }));
            map_event(e)
        }
        Err(invalid) => rejected(invalid, raw, arrival),
    }
}

/// Maps every event of a split body, and says about how many bytes the result holds in memory (the sum of each
/// event's [`Mapped::size_estimate`], taken as it is mapped, while its rows are in cache). The keys its shared
/// `context` repeats are kept once per body: that context is every event's, so each earlier value goes to
/// `discards` with the first event's.
pub fn map_body(parsed: &body::Parsed<'_>, arrival: &Arrival<'_>, implied_type: Option<&str>) -> (Vec<Mapped>, usize) {
    let mut size = 0;
    let mut events: Vec<Mapped> = parsed
        .events
        .iter()
        .map(|raw| {
            let mapped = map_raw(raw, arrival, implied_type);
            size += mapped.size_estimate();
            mapped
        })
        .collect();
    if let Some(first) = events.first_mut()
        && !parsed.context_repeats.is_empty()
    {
        size -= first.size_estimate();
        first.discards.extend(parsed.context_repeats.iter().map(|d| Discard {
            row_id: String::new(),
            table_name: String::new(),
            column_name: format!("context.{}", d.path),
            column_value: d.earlier.clone(),
            reason: format!(
                "\"context.{}\" appears twice in the batch's context; the later value is every event's",
                d.path
            ),
            received_at: arrival.received_at,
            offset: None,
        }));
        size += first.size_estimate();
    }
    (events, size)
}

/// An event that could not be read at all: kept whole in `discards`, with the reason.
fn rejected(invalid: Invalid, raw: &RawEvent<'_>, arrival: &Arrival<'_>) -> Mapped {
    Mapped {
        rows: Vec::new(),
        forget: None,
        discards: vec![Discard {
            row_id: invalid.message_id.unwrap_or_default(),
            table_name: invalid.table.unwrap_or_default().to_string(),
            column_name: String::new(),
            column_value: raw.text(),
            reason: invalid.reason,
            received_at: arrival.received_at,
            offset: None,
        }],
    }
}

/// The `Outputs`/`Logs`/`ReturnValue` answer the host expects.
pub fn invocation_answer(outputs: Value, logs: Vec<String>) -> Value {
    json!({"Outputs": outputs, "Logs": logs, "ReturnValue": null})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::layout::value::Scalar;

    #[test]
    fn a_key_repeated_in_the_batch_context_is_kept_once_per_body() {
        let text = br#"{"batch": [{"type": "track", "event": "A", "userId": "u", "messageId": "m1"},
            {"type": "identify", "userId": "u", "messageId": "m2"}],
            "context": {"ip": "1.1.1.1", "library": {"name": "a", "name": "b"}, "ip": "2.2.2.2"}}"#;
        let parsed = body::split(text, true, &Limits::default()).unwrap();
        let arrival =
            Arrival { received_at: 7, context: parsed.context.as_ref(), keep_received_at: false, sent_at: None };
        let (events, size) = map_body(&parsed, &arrival, None);
        // What the body holds in memory counts the discards of the repeated keys too.
        assert_eq!(size, events.iter().map(Mapped::size_estimate).sum::<usize>());
        // The later values are every event's.
        for m in &events {
            for r in &m.rows {
                let get = |c: &str| r.row.columns().find(|(n, _)| &**n == c).map(|(_, v)| v.clone());
                assert_eq!(get("context_ip"), Some(Scalar::Str("2.2.2.2".into())), "{}", r.table);
                assert_eq!(get("context_library_name"), Some(Scalar::Str("b".into())), "{}", r.table);
            }
        }
        // The earlier ones are in discards, once for the body.
        let kept: Vec<(&str, &str)> = events
            .iter()
            .flat_map(|m| &m.discards)
            .map(|d| (d.column_name.as_str(), d.column_value.as_str()))
            .collect();
        assert_eq!(kept, vec![("context.library.name", "\"a\""), ("context.ip", "\"1.1.1.1\"")]);
        assert!(events[0].discards.iter().all(|d| d.reason.contains("appears twice in the batch's context")));
    }
}
