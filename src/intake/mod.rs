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
