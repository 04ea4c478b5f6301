//! The JSON of one event, read so that nothing it says is silently changed: a repeated key is reported (the
//! later value is kept, the earlier one goes to `discards`), and a number a BIGINT or a DOUBLE cannot hold as sent
//! — an integer outside the BIGINT range, a magnitude a double rounds to zero or infinity — is kept as its exact
//! text, a string. Nesting deeper than 128 levels is refused, as before.

use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// How deep objects and arrays may nest.
pub const MAX_DEPTH: usize = 128;

/// A key that appeared twice in one object: where (the dotted path of the key) and the value that lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub path: String,
    pub earlier: String,
}

/// An event's JSON, and what reading it had to set aside.
#[derive(Debug)]
pub struct Parsed {
    pub value: Value,
    pub duplicates: Vec<Duplicate>,
}

/// Parses one JSON document.
pub fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    // One check of the whole document; its strings are then slices of it. Only a document that fails it has each
    // string checked on its own, to say which one is not UTF-8.
    let text = std::str::from_utf8(bytes).ok();
    let mut p = Parser { b: bytes, text, i: 0, duplicates: Vec::new(), path: String::new(), members: Vec::new() };
    p.ws();
    let value = p.value(0)?;
    p.ws();
    if p.i != p.b.len() {
        return Err(p.error("trailing characters"));
    }
    Ok(Parsed { value, duplicates: p.duplicates })
}

struct Parser<'a> {
    b: &'a [u8],
    /// The document as text, when it is all valid UTF-8.
    text: Option<&'a str>,
    i: usize,
    duplicates: Vec<Duplicate>,
    /// The dotted path of the object being read.
    path: String,
    /// The members of the objects being read, innermost last: an object is built once it is whole, at its size.
    members: Vec<(String, Value)>,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.i)
    }

    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        match self.b.get(self.i) {
            None => Err(self.error("EOF while parsing a value")),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected value")),
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, String> {
        if self.b[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(value)
        } else {
            Err(self.error("expected value"))
        }
    }

    fn nested(&self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH { Err("recursion limit exceeded".into()) } else { Ok(()) }
    }

    fn object(&mut self, depth: usize) -> Result<Value, String> {
        self.nested(depth)?;
        self.i += 1;
        let base = self.members.len();
        let result = self.members(depth);
        let members = self.members.drain(base..);
        result?;
        let mut map = Map::with_capacity(members.len());
        for (key, value) in members {
            match map.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                // The later value takes the earlier one's place.
                Entry::Occupied(mut slot) => {
                    let path = match self.path.as_str() {
                        "" => slot.key().clone(),
                        outer => format!("{outer}.{}", slot.key()),
                    };
                    let earlier = slot.insert(value);
                    self.duplicates.push(Duplicate { path, earlier: earlier.to_string() });
                }
            }
        }
        Ok(Value::Object(map))
    }

    /// Reads an object's members onto `members`, up to and including its closing brace.
    fn members(&mut self, depth: usize) -> Result<(), String> {
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.b.get(self.i) != Some(&b'"') {
                return Err(self.error("expected a key"));
            }
            let key = self.string()?;
            self.ws();
            if self.b.get(self.i) != Some(&b':') {
                return Err(self.error("expected ':'"));
            }
            self.i += 1;
            self.ws();
            let outer = self.path.len();
            if outer > 0 {
                self.path.push('.');
            }
            self.path.push_str(&key);
            let value = self.value(depth);
            self.path.truncate(outer);
            self.members.push((key, value?));
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, String> {
        self.nested(depth)?;
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Value::Array(items));
        }
        // Keys inside arrays are not columns: their repeats stay in the array's text.
        let path = std::mem::take(&mut self.path);
        let mut reported = std::mem::take(&mut self.duplicates);
        let result = loop {
            self.ws();
            match self.value(depth) {
                Ok(v) => items.push(v),
                Err(e) => break Err(e),
            }
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    break Ok(Value::Array(items));
                }
                _ => break Err(self.error("expected ',' or ']'")),
            }
        };
        self.path = path;
        std::mem::swap(&mut self.duplicates, &mut reported);
        result
    }

    /// A string token, unescaped. Plain strings are taken as they are; escapes are left to serde_json.
    fn string(&mut self) -> Result<String, String> {
        let start = self.i;
        let mut j = start + 1;
        let mut escaped = false;
        loop {
            let Some(at) = self.b.get(j..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) else {
                self.i = self.b.len();
                return Err(self.error("EOF while parsing a string"));
            };
            j += at;
            if self.b[j] == b'"' {
                break;
            }
            escaped = true;
            j += 2;
        }
        let token = &self.b[start..=j];
        if let Some(at) = token.iter().position(|c| *c < 0x20) {
            self.i = start + at;
            return Err(self.error("control character (\\u0000-\\u001F) found while parsing a string"));
        }
        self.i = j + 1;
        if escaped {
            return serde_json::from_slice(token).map_err(|e| format!("{e} in a string at byte {start}"));
        }
        // Quotes are ASCII, so both ends are character boundaries of a valid document.
        match self.text {
            Some(text) => Ok(text[start + 1..j].to_string()),
            None => std::str::from_utf8(&token[1..token.len() - 1])
                .map(str::to_string)
                .map_err(|_| format!("invalid unicode code point at byte {start}")),
        }
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        let b = self.b;
        let mut j = start;
        if b.get(j) == Some(&b'-') {
            j += 1;
        }
        let digits = |j: &mut usize| {
            let from = *j;
            while b.get(*j).is_some_and(u8::is_ascii_digit) {
                *j += 1;
            }
            *j > from
        };
        let int_start = j;
        if !digits(&mut j) {
            self.i = j;
            return Err(self.error("invalid number"));
        }
        if b[int_start] == b'0' && j - int_start > 1 {
            self.i = int_start + 1;
            return Err(self.error("invalid number"));
        }
        let mut integral = true;
        if b.get(j) == Some(&b'.') {
            integral = false;
            j += 1;
            if !digits(&mut j) {
                self.i = j;
                return Err(self.error("invalid number"));
            }
        }
        if matches!(b.get(j), Some(b'e' | b'E')) {
            integral = false;
            j += 1;
            if matches!(b.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if !digits(&mut j) {
                self.i = j;
                return Err(self.error("invalid number"));
            }
        }
        self.i = j;
        // ASCII digits and signs only: always UTF-8.
        let text = std::str::from_utf8(&b[start..j]).unwrap_or_default();
        if integral {
            if let Ok(n) = text.parse::<i64>() {
                return Ok(Value::Number(n.into()));
            }
            if let Ok(n) = text.parse::<u64>() {
                return Ok(Value::Number(n.into()));
            }
            return Ok(Value::String(text.to_string()));
        }
        let f: f64 = text.parse().map_err(|_| self.error("invalid number"))?;
        let mantissa_nonzero =
            text.split(['e', 'E']).next().is_some_and(|m| m.bytes().any(|c| (b'1'..=b'9').contains(&c)));
        if !f.is_finite() || (f == 0.0 && mantissa_nonzero) {
            return Ok(Value::String(text.to_string()));
        }
        Ok(Number::from_f64(f).map_or_else(|| Value::String(text.to_string()), Value::Number))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn value(s: &str) -> Value {
        parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}")).value
    }

    #[test]
    fn reads_what_serde_json_reads() {
        for s in [
            r#"{"a": 1, "b": [1, 2.5, -3e2, "x", null, true, false, {"c": {}}], "d": "é \" \\ \n \u00e9 \ud83d\ude00"}"#,
            "[]",
            "{}",
            "  0  ",
            "-0.0",
            "1E+2",
        ] {
            assert_eq!(value(s), serde_json::from_str::<Value>(s).unwrap(), "{s}");
        }
    }

    #[test]
    fn numbers_a_column_cannot_hold_are_kept_as_text() {
        assert_eq!(value("123456789012345678901234567890"), json!("123456789012345678901234567890"));
        assert_eq!(value("-9223372036854775809"), json!("-9223372036854775809"));
        assert_eq!(value("18446744073709551615"), json!(18446744073709551615u64));
        assert_eq!(value("-9223372036854775808"), json!(i64::MIN));
        assert_eq!(value("1e-400"), json!("1e-400"));
        assert_eq!(value("1e400"), json!("1e400"));
        assert_eq!(value("0e-400"), json!(0.0));
        assert_eq!(value("2.5"), json!(2.5));
    }

    #[test]
    fn repeated_keys_are_reported_with_the_value_that_lost() {
        let p = parse(
            br#"{"properties": {"plan": "a", "plan": {"x": 1}}, "userId": 1, "userId": 2, "l": [{"k": 1, "k": 2}]}"#,
        )
        .unwrap();
        assert_eq!(p.value["properties"]["plan"], json!({"x": 1}));
        assert_eq!(p.value["userId"], json!(2));
        assert_eq!(
            p.duplicates,
            vec![
                Duplicate { path: "properties.plan".into(), earlier: "\"a\"".into() },
                Duplicate { path: "userId".into(), earlier: "1".into() }
            ]
        );
    }

    #[test]
    fn malformed_and_too_deep_documents_are_refused() {
        for s in ["", "{", r#"{"a" 1}"#, "[1,]", "01", "1.", "tru", "\"a\u{1}\"", r#"{"a":1} x"#, "-", "1e"] {
            assert!(parse(s.as_bytes()).is_err(), "{s:?}");
        }
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert_eq!(parse(deep.as_bytes()).unwrap_err(), "recursion limit exceeded");
        let ok = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(parse(ok.as_bytes()).is_ok());
        assert!(parse(b"\"caf\xe9\"").is_err());
    }
}
