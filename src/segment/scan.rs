//! A non-recursive pass over a request body that finds where each batch item starts and ends.
//!
//! serde_json stops at 128 levels of nesting, and a batch is one JSON document: a single hostile item would
//! make the whole batch unreadable. Splitting first lets every item be parsed (and fail) on its own. An item can
//! also be read where it lies during the pass (see [`ItemReader`]), so that a valid event is gone through once.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed JSON at byte {offset}: {what}")]
pub struct ScanError {
    pub offset: usize,
    pub what: &'static str,
}

/// The top level of a JSON object body: each key with the byte range of its value.
#[derive(Debug, Default)]
pub struct TopLevel {
    pub fields: Vec<(String, Range<usize>)>,
    /// The byte ranges of the items of the array under the key asked for (its last occurrence), found in the same
    /// pass; `None` when that field is missing or not an array.
    pub items: Option<Vec<Range<usize>>>,
}

impl TopLevel {
    pub fn get(&self, key: &str) -> Option<Range<usize>> {
        self.fields.iter().rev().find(|(k, _)| k == key).map(|(_, r)| r.clone())
    }
}

fn err<T>(offset: usize, what: &'static str) -> Result<T, ScanError> {
    Err(ScanError { offset, what })
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` below `n` (at most 0x80). The lowest byte flagged is exact; a byte above it
/// may be flagged wrongly, which does not matter to a search for the first.
#[inline]
fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS
}

/// Where the first byte of `b` is a quote, a backslash or, when `CONTROLS`, a control character (below 0x20): what
/// ends or interrupts the plain text of a JSON string. Eight bytes at a time, with no set-up cost: an event's
/// strings are mostly short.
#[inline]
pub fn string_stop<const CONTROLS: bool>(b: &[u8]) -> Option<usize> {
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let mut hits = below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1);
        if CONTROLS {
            hits |= below(x, 0x20);
        }
        if hits != 0 {
            return Some(at + hits.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let stop = |c: &u8| *c == b'"' || *c == b'\\' || (CONTROLS && *c < 0x20);
    chunks.remainder().iter().position(stop).map(|p| at + p)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// `b[i]` is an opening quote; returns the index just past the closing quote.
fn skip_string(b: &[u8], i: usize) -> Result<usize, ScanError> {
    let mut j = i + 1;
    while let Some(at) = b.get(j..).and_then(string_stop::<false>) {
        j += at;
        if b[j] == b'"' {
            return Ok(j + 1);
        }
        j += 2;
    }
    err(i, "unterminated string")
}

/// Returns the end of the JSON value starting at `i` (after whitespace). Nesting depth is a counter, not
/// recursion, so any depth is safe. Only the boundaries are checked here; the value is parsed later.
pub fn skip_value(b: &[u8], i: usize) -> Result<usize, ScanError> {
    let start = skip_ws(b, i);
    let Some(&first) = b.get(start) else {
        return err(start, "expected a value, found the end of the body");
    };
    match first {
        b'"' => skip_string(b, start),
        b'{' | b'[' => {
            let mut stack: Vec<u8> = vec![first];
            let mut j = start + 1;
            while let Some(&c) = b.get(j) {
                match c {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => stack.push(c),
                    b'}' | b']' => {
                        let open = if c == b'}' { b'{' } else { b'[' };
                        if stack.pop() != Some(open) {
                            return err(j, "mismatched bracket");
                        }
                        if stack.is_empty() {
                            return Ok(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            err(start, "unclosed object or array")
        }
        b',' | b':' | b'}' | b']' => err(start, "expected a value"),
        _ => {
            let mut j = start;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                j += 1;
            }
            Ok(j)
        }
    }
}

/// Reads an array's item where it lies while the body is scanned: given the item's place in the array and the index
/// of its first byte, returns the index just past it when it read the item, which must be where the scanner finds
/// its end, or `None` to leave the item to the scanner.
pub type ItemReader<'r> = &'r mut dyn FnMut(usize, usize) -> Option<usize>;

/// Splits a top-level JSON object into its fields, and the array under the key `items_of` into its items: one pass
/// over a batch body.
pub fn top_level_object(b: &[u8], items_of: Option<&str>) -> Result<TopLevel, ScanError> {
    top_level_object_reading(b, items_of, &mut |_, _| None)
}

/// [`top_level_object`], with each item of the array under `items_of` offered to `read` first: an item it reads is
/// not scanned again.
pub fn top_level_object_reading(b: &[u8], items_of: Option<&str>, read: ItemReader<'_>) -> Result<TopLevel, ScanError> {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return err(i, "expected a JSON object");
    }
    i = skip_ws(b, i + 1);
    let mut out = TopLevel::default();
    if b.get(i) == Some(&b'}') {
        return finish(b, i + 1, out);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return err(i, "expected a field name");
        }
        let key_end = skip_string(b, i)?;
        let key: String = serde_json::from_slice(&b[i..key_end]).or(err(i, "invalid field name"))?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return err(i, "expected ':' after a field name");
        }
        let value_start = skip_ws(b, i + 1);
        let value_end = if items_of == Some(key.as_str()) {
            if b.get(value_start) == Some(&b'[') {
                let (items, end) = items_from(b, value_start, read)?;
                out.items = Some(items);
                end
            } else {
                out.items = None;
                skip_value(b, value_start)?
            }
        } else {
            skip_value(b, value_start)?
        };
        out.fields.push((key, value_start..value_end));
        i = skip_ws(b, value_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return finish(b, i + 1, out),
            _ => return err(i, "expected ',' or '}'"),
        }
    }
}

fn finish(b: &[u8], i: usize, out: TopLevel) -> Result<TopLevel, ScanError> {
    let end = skip_ws(b, i);
    if end != b.len() {
        return err(end, "unexpected data after the JSON object");
    }
    Ok(out)
}

/// Splits a JSON array (the bytes of `range`) into the byte ranges of its items.
pub fn array_items(b: &[u8], range: Range<usize>) -> Result<Vec<Range<usize>>, ScanError> {
    array_items_reading(b, range, &mut |_, _| None)
}

/// [`array_items`], with each item offered to `read` first.
pub fn array_items_reading(
    b: &[u8],
    range: Range<usize>,
    read: ItemReader<'_>,
) -> Result<Vec<Range<usize>>, ScanError> {
    let i = skip_ws(b, range.start);
    if b.get(i) != Some(&b'[') || i >= range.end {
        return err(i, "expected a JSON array");
    }
    items_from(b, i, read).map(|(items, _)| items)
}

/// The items of the array whose `[` is at `open`, and the index just past its `]`.
fn items_from(b: &[u8], open: usize, read: ItemReader<'_>) -> Result<(Vec<Range<usize>>, usize), ScanError> {
    let mut i = skip_ws(b, open + 1);
    let mut items = Vec::new();
    if b.get(i) == Some(&b']') {
        return Ok((items, i + 1));
    }
    loop {
        let end = match read(items.len(), i) {
            Some(end) => end,
            None => skip_value(b, i)?,
        };
        items.push(i..end);
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => return Ok((items, i + 1)),
            None => return err(open, "unclosed object or array"),
            _ => return err(i, "expected ',' or ']' in an array"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_stops_are_found_as_a_byte_by_byte_search_finds_them() {
        // Every stop at every place of runs of every length up to 40, among bytes that look like stops to a careless
        // word-wise search: just above and below them, and the high bytes of UTF-8.
        let fillers = [b'a', b'!', b'#', b'[', b']', 0x20, 0x21, 0x7f, 0x80, 0xc3, 0xa9, 0xff];
        let stops = [b'"', b'\\', 0x00, 0x01, 0x0a, 0x1f];
        for len in 0..40 {
            for (k, &filler) in fillers.iter().enumerate() {
                let mut b: Vec<u8> = (0..len).map(|i| fillers[(k + i * 7) % fillers.len()].max(filler)).collect();
                let naive = |b: &[u8], controls: bool| {
                    b.iter().position(|&c| c == b'"' || c == b'\\' || (controls && c < 0x20))
                };
                assert_eq!(string_stop::<true>(&b), naive(&b, true), "{b:?}");
                assert_eq!(string_stop::<false>(&b), naive(&b, false), "{b:?}");
                for at in 0..len {
                    for &stop in &stops {
                        let kept = b.clone();
                        b[at] = stop;
                        assert_eq!(string_stop::<true>(&b), naive(&b, true), "{b:?}");
                        assert_eq!(string_stop::<false>(&b), naive(&b, false), "{b:?}");
                        // A second stop after the first must not hide it.
                        if at + 3 < len {
                            b[at + 3] = b'"';
                            assert_eq!(string_stop::<true>(&b), naive(&b, true), "{b:?}");
                            assert_eq!(string_stop::<false>(&b), naive(&b, false), "{b:?}");
                        }
                        b = kept;
                    }
                }
            }
        }
    }

    /// The batch's items, found in the pass over the whole body and checked against a split of the array alone.
    fn items(body: &str) -> Vec<&str> {
        let top = top_level_object(body.as_bytes(), Some("batch")).unwrap();
        let one_pass = top.items.clone().unwrap();
        let r = top.get("batch").unwrap();
        assert_eq!(array_items(body.as_bytes(), r).unwrap(), one_pass);
        one_pass.into_iter().map(|r| &body[r]).collect()
    }

    #[test]
    fn splits_batch_items() {
        let body = r#" {"batch": [ {"a":"x]}\"{"} , [1,[2]],"s", 12 ,true,null ], "writeKey":"k"} "#;
        assert_eq!(items(body), vec![r#"{"a":"x]}\"{"}"#, "[1,[2]]", r#""s""#, "12", "true", "null"]);
        let top = top_level_object(body.as_bytes(), None).unwrap();
        assert_eq!(&body[top.get("writeKey").unwrap()], r#""k""#);
        assert_eq!(top.items, None);
        assert!(items(r#"{"batch":[]}"#).is_empty());
    }

    #[test]
    fn the_last_field_of_the_name_gives_the_items() {
        let top = |body: &str| top_level_object(body.as_bytes(), Some("batch")).unwrap().items;
        assert_eq!(items(r#"{"batch":{"x":[1]},"batch":[1, "2"]}"#), vec!["1", r#""2""#]);
        assert_eq!(top(r#"{"batch":[1],"batch":{"x":[1]}}"#), None);
        assert_eq!(top(r#"{"context":[1]}"#), None);
    }

    #[test]
    fn deep_nesting_needs_no_stack() {
        let deep = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
        let body = format!(r#"{{"batch":[{{"type":"track"}},{{"p":{deep}}}]}}"#);
        let got = items(&body);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], r#"{"type":"track"}"#);
    }

    #[test]
    fn reports_where_the_json_breaks() {
        for (body, what) in [
            ("", "expected a JSON object"),
            ("[1]", "expected a JSON object"),
            (r#"{"batch": [1, 2"#, "unclosed object or array"),
            (r#"{"batch": [{"a":1} "#, "unclosed object or array"),
            (r#"{"batch": [1 2]}"#, "expected ',' or ']' in an array"),
            (r#"{"a": "unterminated}"#, "unterminated string"),
            (r#"{"a": 1} x"#, "unexpected data after the JSON object"),
            (r#"{"a": [1}]}"#, "mismatched bracket"),
            (r#"{a: 1}"#, "expected a field name"),
        ] {
            let e = top_level_object(body.as_bytes(), None)
                .and_then(|t| match t.get("batch") {
                    Some(r) => array_items(body.as_bytes(), r).map(|_| ()),
                    None => Ok(()),
                })
                .unwrap_err();
            assert_eq!(e.what, what, "{body}");
            let one_pass = top_level_object(body.as_bytes(), Some("batch")).unwrap_err();
            assert_eq!(one_pass.what, what, "{body}, in one pass");
        }
    }
}
