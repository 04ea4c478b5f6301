//! The request body path of the Tracking API on arbitrary bytes: decoding (gzip), splitting a batch or single
//! event body, and mapping each event to rows. Nothing panics, every event the splitter yields ends up as rows
//! or, if it produces none, kept whole in a discard, and an event the splitter read where it lay is the event its
//! bytes give when parsed alone.

#![no_main]

use libfuzzer_sys::fuzz_target;
use segment_delta::config::Limits;
use segment_delta::intake::map_raw;
use segment_delta::intake::body;
use segment_delta::segment::event::Arrival;
use segment_delta::segment::scan;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits::default();
    let batch = mode & 1 == 1;
    let encoding = (mode & 2 == 2).then_some("gzip");
    let Ok(decoded) = body::decode(encoding, rest, limits.max_request_bytes) else {
        return;
    };
    assert!(decoded.len() <= limits.max_request_bytes);
    let Ok(parsed) = body::split(&decoded, batch, &limits) else {
        return;
    };
    assert!(parsed.events.len() <= limits.max_batch_events);
    let arrival = Arrival {
        received_at: 1_700_000_000_000_000,
        context: parsed.context.as_ref(),
        keep_received_at: false,
        sent_at: parsed.sent_at,
    };
    let implied = if batch { None } else { Some(["track", "identify", "page"][usize::from(mode >> 2) % 3]) };
    // Events read where they lie while the body was split are what the scan and a parse of each alone give.
    if batch && let Ok(top) = scan::top_level_object(&decoded, Some("batch")) {
        let scanned = top.items.unwrap_or_default();
        assert_eq!(parsed.events.len(), scanned.len());
        for (raw, r) in parsed.events.iter().zip(scanned) {
            assert_eq!(raw.bytes, &decoded[r]);
            assert_eq!(raw.clone().parse(), body::RawEvent::new(raw.bytes).parse());
        }
    }
    for raw in &parsed.events {
        assert!(raw.bytes.len() <= limits.max_event_bytes);
        let mapped = map_raw(raw, &arrival, implied);
        if mapped.rows.is_empty() {
            assert!(
                mapped.discards.iter().any(|d| d.column_value == raw.text()),
                "an event with no row must be kept whole in discards"
            );
        }
        for d in &mapped.discards {
            assert!(!d.reason.is_empty());
        }
        let _ = body::split_unlimited(raw.bytes);
    }
});
