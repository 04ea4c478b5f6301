//! Request bodies: decompression within limits, write keys, and the split into events.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Read;

use crate::segment::json::Json;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::read::MultiGzDecoder;

use crate::config::Limits;
use crate::segment::scan::{self, ScanError};

/// Why a request is refused as a whole. Each says what was wrong and, for limits, which setting to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than {limit} bytes (SEGMENT_DELTA_MAX_REQUEST_BYTES)")]
    TooLarge { limit: usize },
    #[error("event {index} is {size} bytes, over the limit of {limit} bytes per event (SEGMENT_DELTA_MAX_EVENT_BYTES)")]
    EventTooLarge { index: usize, size: usize, limit: usize },
    #[error(
        "event {index} is {size} bytes once the batch context is merged into it, over the limit of {limit} bytes per event (SEGMENT_DELTA_MAX_EVENT_BYTES)"
    )]
    MergedTooLarge { index: usize, size: usize, limit: usize },
    #[error(
        "the batch context ({context} bytes) merged into each of its {events} events makes {total} bytes, over {limit} bytes (4 × SEGMENT_DELTA_MAX_REQUEST_BYTES)"
    )]
    ContextTooLarge { context: usize, events: usize, total: usize, limit: usize },
    #[error("batch has {count} events, over the limit of {limit} per request (SEGMENT_DELTA_MAX_BATCH_EVENTS)")]
    TooManyEvents { count: usize, limit: usize },
    #[error("body is not valid gzip: {0}")]
    Gzip(String),
    #[error("unsupported Content-Encoding {0:?}: send identity or gzip")]
    Encoding(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Shape(String),
}

impl BodyError {
    pub fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge { .. } => 413,
            BodyError::Encoding(_) => 415,
            _ => 400,
        }
    }
}

impl From<ScanError> for BodyError {
    fn from(e: ScanError) -> Self {
        BodyError::Json(e.to_string())
    }
}

/// Undoes `Content-Encoding`, refusing anything that grows past the request limit. An unencoded body is borrowed,
/// not copied.
pub fn decode<'a>(encoding: Option<&str>, raw: &'a [u8], limit: usize) -> Result<Cow<'a, [u8]>, BodyError> {
    let body = match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => Cow::Borrowed(raw),
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::with_capacity(raw.len() * 4);
            MultiGzDecoder::new(raw)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| BodyError::Gzip(e.to_string()))?;
            Cow::Owned(out)
        }
        Some(other) => return Err(BodyError::Encoding(other.to_string())),
    };
    if body.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(body)
}

/// The write key of an `Authorization: Basic` header: the user name, with or without the trailing colon.
pub fn basic_user(header: &str) -> Option<String> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
    Some(user.to_string())
}

/// One event of a request: its bytes, and its JSON when the split read it where it lay.
#[derive(Debug, Clone)]
pub struct RawEvent<'a> {
    pub bytes: &'a [u8],
    read: RefCell<Option<crate::segment::json::Parsed<'a>>>,
}

impl<'a> RawEvent<'a> {
    /// An event not read yet.
    pub fn new(bytes: &'a [u8]) -> RawEvent<'a> {
        RawEvent { bytes, read: RefCell::new(None) }
    }

    /// The raw text as it can be stored: UTF-8 as is, anything else as base64 so that nothing is lost.
    pub fn text(&self) -> String {
        match std::str::from_utf8(self.bytes) {
            Ok(s) => s.to_string(),
            Err(_) => format!("base64:{}", STANDARD.encode(self.bytes)),
        }
    }

    /// The event's JSON: the one the split read, taken (once), or the bytes parsed now.
    pub fn parse(&self) -> Result<crate::segment::json::Parsed<'a>, String> {
        if let Some(read) = self.read.take() {
            return Ok(read);
        }
        crate::segment::json::parse(self.bytes).map_err(|what| {
            if what.starts_with("recursion limit exceeded") {
                "the event is nested more than 128 levels deep".to_string()
            } else if std::str::from_utf8(self.bytes).is_err() {
                format!("the event is not valid UTF-8 (kept as base64): {what}")
            } else {
                format!("the event is not valid JSON: {what}")
            }
        })
    }
}

/// The events of a body, with what the body carries for all of them.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub events: Vec<RawEvent<'a>>,
    pub write_key: Option<String>,
    pub context: Option<crate::segment::json::Object<'a>>,
    /// Keys repeated in that context: the later value is every event's, the earlier one is kept in `discards`.
    pub context_repeats: Vec<crate::segment::json::Duplicate>,
    /// A batch body's `sentAt`, for the events that carry none of their own.
    pub sent_at: Option<crate::layout::value::Micros>,
}

fn field<T: serde::de::DeserializeOwned>(body: &[u8], r: std::ops::Range<usize>, what: &str) -> Result<T, BodyError> {
    serde_json::from_slice(&body[r]).map_err(|e| BodyError::Shape(format!("{what}: {e}")))
}

/// Splits what Segment's Webhooks destinations send: one event, a JSON array of events (batching), or a batch
/// body.
pub fn split_webhook<'a>(body: &'a [u8], limits: &Limits) -> Result<Parsed<'a>, BodyError> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(body.len());
    if body.get(start) == Some(&b'[') {
        let mut reads = Reads::new(body);
        let items = reads.array(start..body.len())?;
        check_items(&items, limits)?;
        return Ok(Parsed::whole(reads.events(items), None));
    }
    let mut reads = Reads::new(body);
    let top = reads.top_level(Some("batch"))?;
    let batch = top.get("batch").is_some();
    split_top(body, top, reads, batch, limits)
}

/// Splits a `/v1/batch` body (`{"batch": [...], "context": {...}, "writeKey": "..."}`) or a single-event body.
pub fn split<'a>(body: &'a [u8], batch: bool, limits: &Limits) -> Result<Parsed<'a>, BodyError> {
    let mut reads = Reads::new(body);
    let top = reads.top_level(batch.then_some("batch"))?;
    split_top(body, top, reads, batch, limits)
}

/// The events of a batch read where they lie while the body is scanned, so that each is gone through once: only
/// when the body is valid UTF-8, and only events that are valid JSON objects. The others are parsed on their own
/// later, which says what is wrong with them.
struct Reads<'a> {
    body: &'a [u8],
    text: Option<&'a str>,
    /// One per item of the array being scanned, in order.
    read: Vec<Option<crate::segment::json::Parsed<'a>>>,
}

impl<'a> Reads<'a> {
    fn new(body: &'a [u8]) -> Reads<'a> {
        Reads { body, text: std::str::from_utf8(body).ok(), read: Vec::new() }
    }

    /// The body's top level, with the items of the array under `items_of` read where they lie.
    fn top_level(&mut self, items_of: Option<&str>) -> Result<scan::TopLevel, ScanError> {
        let body = self.body;
        scan::top_level_object_reading(body, items_of, &mut |n, at| self.read(n, at))
    }

    /// The items of the array at `range` of the body, read where they lie.
    fn array(&mut self, range: std::ops::Range<usize>) -> Result<Vec<std::ops::Range<usize>>, ScanError> {
        let body = self.body;
        scan::array_items_reading(body, range, &mut |n, at| self.read(n, at))
    }

    /// Reads item `n` of an array, which starts at `at`: the index just past it when it was read.
    fn read(&mut self, n: usize, at: usize) -> Option<usize> {
        if n == 0 {
            // A key repeated in the body starts its array again, and the last one is the batch.
            self.read.clear();
        }
        let read = self.text.and_then(|text| crate::segment::json::parse_object_at(text, at));
        let end = read.as_ref().map(|(_, end)| *end);
        self.read.push(read.map(|(parsed, _)| parsed));
        end
    }

    /// The events of `items`, each with its JSON when it was read.
    fn events(mut self, items: Vec<std::ops::Range<usize>>) -> Vec<RawEvent<'a>> {
        if self.read.len() != items.len() {
            self.read.clear();
        }
        let (body, mut read) = (self.body, self.read.into_iter());
        items.into_iter().map(|r| RawEvent { bytes: &body[r], read: RefCell::new(read.next().flatten()) }).collect()
    }
}

/// [`split`], given the body's top level (with the batch's items when `batch`).
fn split_top<'a>(
    body: &'a [u8],
    mut top: scan::TopLevel,
    reads: Reads<'a>,
    batch: bool,
    limits: &Limits,
) -> Result<Parsed<'a>, BodyError> {
    let write_key = match top.get("writeKey") {
        Some(r) => field::<Option<String>>(body, r, "writeKey must be a string")?,
        None => None,
    };
    if !batch {
        if body.len() > limits.max_event_bytes {
            return Err(BodyError::EventTooLarge { index: 0, size: body.len(), limit: limits.max_event_bytes });
        }
        return Ok(Parsed::whole(vec![RawEvent::new(body)], write_key));
    }
    if top.get("batch").is_none() {
        return Err(BodyError::Shape("a batch body needs a \"batch\" array".into()));
    }
    let Some(items) = top.items.take() else {
        return Err(BodyError::Shape("\"batch\" must be an array".into()));
    };
    check_items(&items, limits)?;
    // The batch context is merged into every event: the merged events are held to the event limit, and all of them
    // together to a multiple of the request limit, so that a small body cannot make a large request.
    let context_range = top.get("context");
    let context_len = context_range.as_ref().map_or(0, |r| r.len());
    if context_len > 0 {
        let merged = |r: &std::ops::Range<usize>| r.len().saturating_add(context_len);
        if let Some((index, r)) = items.iter().enumerate().find(|(_, r)| merged(r) > limits.max_event_bytes) {
            return Err(BodyError::MergedTooLarge { index, size: merged(r), limit: limits.max_event_bytes });
        }
        let total = items.iter().map(merged).fold(0usize, usize::saturating_add);
        let limit = limits.max_request_bytes.saturating_mul(4);
        if total > limit {
            return Err(BodyError::ContextTooLarge { context: context_len, events: items.len(), total, limit });
        }
    }
    let (context, context_repeats) = match context_range {
        Some(r) => match crate::segment::json::parse(&body[r]).map(|p| (p.value, p.duplicates)) {
            Ok((Json::Object(map), repeats)) => (Some(map), repeats),
            Ok((Json::Null, _)) => (None, Vec::new()),
            Ok(_) => return Err(BodyError::Shape("context must be an object".into())),
            Err(e) => return Err(BodyError::Shape(format!("context must be an object: {e}"))),
        },
        None => (None, Vec::new()),
    };
    let sent_at = match top.get("sentAt") {
        Some(r) => match field::<Option<String>>(body, r, "sentAt must be a string")? {
            Some(s) => Some(
                crate::layout::value::parse_timestamp(&s)
                    .ok_or_else(|| BodyError::Shape(format!("sentAt {s:?} is not an ISO-8601 date-time")))?,
            ),
            None => None,
        },
        None => None,
    };
    let events = reads.events(items);
    Ok(Parsed { events, write_key, context, context_repeats, sent_at })
}

/// Holds a body's events to the limits on their number and their size.
fn check_items(items: &[std::ops::Range<usize>], limits: &Limits) -> Result<(), BodyError> {
    if items.len() > limits.max_batch_events {
        return Err(BodyError::TooManyEvents { count: items.len(), limit: limits.max_batch_events });
    }
    if let Some((index, r)) = items.iter().enumerate().find(|(_, r)| r.len() > limits.max_event_bytes) {
        return Err(BodyError::EventTooLarge { index, size: r.len(), limit: limits.max_event_bytes });
    }
    Ok(())
}

impl<'a> Parsed<'a> {
    /// Events that share nothing but the write key.
    fn whole(events: Vec<RawEvent<'a>>, write_key: Option<String>) -> Parsed<'a> {
        Parsed { events, write_key, context: None, context_repeats: Vec::new(), sent_at: None }
    }
}

/// Splits a body that the API's size limits do not apply to (a backfill line, an Event Hub event): a
/// `{"batch": [...]}` body item by item, any other JSON object as one event. Anything that cannot be split is one
/// event, so that it is discarded whole with its reason.
pub fn split_unlimited(text: &[u8]) -> Parsed<'_> {
    let unlimited = Limits { max_event_bytes: usize::MAX, max_request_bytes: usize::MAX, max_batch_events: usize::MAX };
    let mut reads = Reads::new(text);
    reads
        .top_level(Some("batch"))
        .ok()
        .and_then(|top| {
            let is_batch = top.get("batch").is_some();
            split_top(text, top, reads, is_batch, &unlimited).ok()
        })
        .unwrap_or_else(|| Parsed::whole(vec![RawEvent::new(text)], None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_is_bounded_after_decompression() {
        let data = vec![b' '; 10_000];
        assert_eq!(decode(Some("gzip"), &gz(&data), 10_000).unwrap().len(), 10_000);
        assert_eq!(decode(Some("gzip"), &gz(&data), 9_999), Err(BodyError::TooLarge { limit: 9_999 }));
        assert!(matches!(decode(Some("gzip"), b"not gzip", 100), Err(BodyError::Gzip(_))));
        assert_eq!(decode(Some("br"), &[], 100), Err(BodyError::Encoding("br".into())));
    }

    #[test]
    fn basic_auth_with_or_without_colon() {
        assert_eq!(basic_user(&format!("Basic {}", STANDARD.encode("KEY:"))).as_deref(), Some("KEY"));
        assert_eq!(basic_user(&format!("basic {}", STANDARD.encode("KEY"))).as_deref(), Some("KEY"));
        assert_eq!(basic_user("Bearer abc"), None);
        assert_eq!(basic_user("Basic !!!"), None);
    }

    #[test]
    fn limits_name_the_setting() {
        let limits = Limits { max_event_bytes: 20, max_request_bytes: 1000, max_batch_events: 2 };
        let e = split(br#"{"batch":[{},{},{}]}"#, true, &limits).unwrap_err();
        assert_eq!(e, BodyError::TooManyEvents { count: 3, limit: 2 });
        let e = split(br#"{"batch":[{},{"a":"0123456789012345"}]}"#, true, &limits).unwrap_err();
        assert!(
            e.to_string().contains("event 1 is 24 bytes") && e.to_string().contains("SEGMENT_DELTA_MAX_EVENT_BYTES")
        );
        let e = split(br#"{"batch":{}}"#, true, &limits).unwrap_err();
        assert_eq!(e.to_string(), "\"batch\" must be an array");
    }

    type Event<'a> = (Vec<u8>, Result<crate::segment::json::Parsed<'a>, String>);

    /// Every event of `body` as [`split`] gives it (its bytes, and its JSON or why it has none) and as the plain scan
    /// and a parse of each item's bytes alone give it.
    fn read_and_scanned(body: &[u8]) -> (Vec<Event<'_>>, Vec<Event<'_>>, usize) {
        let split = split(body, true, &Limits::default()).unwrap();
        let read_in_place = split.events.iter().filter(|e| e.read.borrow().is_some()).count();
        let read = split.events.iter().map(|e| (e.bytes.to_vec(), e.parse())).collect();
        let top = scan::top_level_object(body, Some("batch")).unwrap();
        let scanned = top
            .items
            .unwrap()
            .into_iter()
            .map(|r| (body[r.clone()].to_vec(), RawEvent::new(&body[r]).parse()))
            .collect();
        (read, scanned, read_in_place)
    }

    #[test]
    fn events_read_in_place_are_the_events_parsed_alone() {
        // `CTRL` stands for a raw control character, which JSON does not allow in a string.
        let body = r#"{"batch": [ {"a": 1, "b": {"c": "x\"y", "d": [1, {"e": null}]}},
            {"k": 1, "k": {"m": 2, "m": 3}} ,{"s": "été", "n": -1.5e3, "big": 123456789012345678901234567890},
            {"a": tru}, 17, "text", [1, 2], {}, {"x": "CTRL"}],
            "batch": [{"type": "track", "event": "A"}, {"t": "é"}, {"broken": }, {"deep": {"deep": {"deep": 1}}},
            {"x": "aCTRL"}],
            "writeKey": "K"}"#
            .replace("CTRL", "\u{1}");
        let (read, scanned, read_in_place) = read_and_scanned(body.as_bytes());
        assert_eq!(read, scanned);
        // The last `batch` is the batch; its three valid objects were read in place, the broken ones parsed alone.
        assert_eq!(read.len(), 5);
        assert_eq!(read_in_place, 3);
        assert!(read[2].1.as_ref().unwrap_err().contains("not valid JSON"), "{:?}", read[2].1);
        assert!(read[4].1.as_ref().unwrap_err().contains("control character"), "{:?}", read[4].1);
        // Repeated keys are reported as a parse of the event alone reports them.
        let one = br#"{"batch": [{"k": 1, "k": {"m": 2, "m": 3}}, {"n": 1}]}"#;
        let (read, scanned, read_in_place) = read_and_scanned(one);
        assert_eq!((read.len(), read_in_place), (2, 2));
        assert_eq!(read, scanned);
        let repeats = &read[0].1.as_ref().unwrap().duplicates;
        assert_eq!(repeats.iter().map(|d| d.path.as_str()).collect::<Vec<_>>(), ["k.m", "k"]);
        // A body that is not all UTF-8 has each event parsed alone, so that the one at fault says so.
        let mixed = b"{\"batch\": [{\"a\": 1}, {\"b\": \"\xff\"}]}";
        let (read, scanned, read_in_place) = read_and_scanned(mixed);
        assert_eq!((read.len(), read_in_place), (2, 0));
        assert_eq!(read, scanned);
        assert!(read[1].1.as_ref().unwrap_err().contains("not valid UTF-8"));
        // Deeper than the parser goes: parsed alone, and refused for its depth.
        let deep = format!("{{\"batch\": [{}1{}, {{}}]}}", "{\"a\":".repeat(200), "}".repeat(200));
        let (read, scanned, read_in_place) = read_and_scanned(deep.as_bytes());
        assert_eq!((read.len(), read_in_place), (2, 1));
        assert_eq!(read, scanned);
        assert_eq!(read[0].1.as_ref().unwrap_err(), "the event is nested more than 128 levels deep");
    }

    #[test]
    fn bad_items_fail_alone() {
        let body =
            b"{\"batch\":[{\"a\":1},{\"b\":\"\xff\"},{\"c\":tru}],\"writeKey\":\"K\",\"context\":{\"ip\":\"1\"}}";
        let p = split(body, true, &Limits::default()).unwrap();
        assert_eq!(p.write_key.as_deref(), Some("K"));
        assert_eq!(crate::segment::json::get(&p.context.unwrap(), "ip").and_then(Json::as_str), Some("1"));
        assert!(p.events[0].parse().is_ok());
        assert!(p.events[1].parse().unwrap_err().contains("not valid UTF-8"));
        assert!(p.events[1].text().starts_with("base64:"));
        assert!(p.events[2].parse().unwrap_err().contains("not valid JSON"));
        let deep = format!("{{\"p\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            RawEvent::new(deep.as_bytes()).parse().unwrap_err(),
            "the event is nested more than 128 levels deep"
        );
    }
}
