//! The JSON of one event, read so that nothing it says is silently changed: a repeated key is reported (the
//! later value is kept, the earlier one goes to `discards`), and a number a BIGINT or a DOUBLE cannot hold as sent
//! — an integer outside the BIGINT range, a magnitude a double rounds to zero or infinity — is kept as its exact
//! text, a string. Nesting deeper than 128 levels is refused, as before.
//!
//! Keys and strings that need no unescaping are borrowed from the document, and an object is its members in order:
//! an event's few keys are found by comparing them, and only a large object is indexed while it is read.

use std::borrow::Cow;
use std::fmt;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Number;

use crate::layout::value::Scalar;
use crate::segment::scan::string_stop;

/// How deep objects and arrays may nest.
pub const MAX_DEPTH: usize = 128;

/// Objects with more members than this are indexed by hash while they are read; smaller ones are searched.
const SEARCHED: usize = 16;

/// A JSON value of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Object<'a>),
}

/// An object's members in the order they were sent, each key once.
pub type Object<'a> = Vec<(Cow<'a, str>, Json<'a>)>;

/// The value of `key` in an object.
pub fn get<'o, 'a>(object: &'o Object<'a>, key: &str) -> Option<&'o Json<'a>> {
    object.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Finds the members of an object being built by key: by comparing keys while it is small, through a table of
/// positions hashed with a per-process seed once it has more than `SEARCHED` members, so that an object of many
/// keys (which a sender chooses) costs no more per key.
#[derive(Default)]
pub struct Keys {
    table: HashTable<usize>,
    hasher: RandomState,
    indexed: bool,
}

impl Keys {
    /// Starts on `object`, which will have `len` members once built.
    pub fn start(&mut self, object: &Object<'_>, len: usize) {
        self.table.clear();
        self.indexed = len > SEARCHED;
        for at in 0..object.len() {
            self.index(object, at);
        }
    }

    /// Where `key` is in `object`.
    pub fn find(&self, object: &Object<'_>, key: &str) -> Option<usize> {
        if !self.indexed {
            return object.iter().position(|(k, _)| k == key);
        }
        self.table.find(self.hasher.hash_one(key), |&at| object[at].0 == key).copied()
    }

    /// Adds a member whose key `object` does not have yet.
    pub fn push<'a>(&mut self, object: &mut Object<'a>, key: Cow<'a, str>, value: Json<'a>) {
        object.push((key, value));
        self.index(object, object.len() - 1);
    }

    fn index(&mut self, object: &Object<'_>, at: usize) {
        if self.indexed {
            let hasher = &self.hasher;
            let hash = hasher.hash_one(object[at].0.as_ref());
            self.table.insert_unique(hash, at, |&i| hasher.hash_one(object[i].0.as_ref()));
        }
    }
}

impl<'a> Json<'a> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Json::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    /// The scalar a leaf gives a column. Null gives `None`: it creates no column. Arrays and objects give their JSON
    /// text.
    pub fn scalar(&self) -> Option<Scalar> {
        Some(match self {
            Json::Null => return None,
            Json::Bool(b) => Scalar::Bool(*b),
            Json::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Scalar::Int(i)
                } else if n.is_u64() {
                    Scalar::BigInt(n.to_string().into_boxed_str())
                } else {
                    Scalar::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Json::Str(s) => Scalar::from_string(s),
            Json::Array(_) | Json::Object(_) => Scalar::Str(self.to_string().into()),
        })
    }

    /// The value of `key`, when this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        self.as_object().and_then(|o| get(o, key))
    }
}

/// Compact JSON text, written exactly as serde_json writes the same value.
impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::Str(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(members) => {
                let mut map = serializer.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k.as_ref(), v)?;
                }
                map.end()
            }
        }
    }
}

impl From<&serde_json::Value> for Json<'static> {
    fn from(v: &serde_json::Value) -> Self {
        use serde_json::Value;
        match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(n.clone()),
            Value::String(s) => Json::Str(Cow::Owned(s.clone())),
            Value::Array(items) => Json::Array(items.iter().map(Json::from).collect()),
            Value::Object(o) => Json::Object(o.iter().map(|(k, v)| (Cow::Owned(k.clone()), Json::from(v))).collect()),
        }
    }
}

/// A key that appeared twice in one object: where (the dotted path of the key) and the value that lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub path: String,
    pub earlier: String,
}

/// An event's JSON, and what reading it had to set aside.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<'a> {
    pub value: Json<'a>,
    pub duplicates: Vec<Duplicate>,
}

/// Parses one JSON document.
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, String> {
    // One check of the whole document; its strings are then slices of it. Only a document that fails it has each
    // string checked on its own, to say which one is not UTF-8.
    let mut p = Parser::new(bytes, std::str::from_utf8(bytes).ok(), 0);
    p.ws();
    let value = p.value(0)?;
    p.ws();
    if p.i != p.b.len() {
        return Err(p.error("trailing characters"));
    }
    Ok(Parsed { value, duplicates: p.duplicates })
}

/// Reads the object that starts at byte `start` of `text` (a batch body) where it lies, and returns it with the
/// index just past its closing brace: what [`parse`] gives for those bytes alone. `None` when anything else is there
/// or the object is not valid, so that it is left to be split off and parsed on its own, which says what is wrong.
pub fn parse_object_at(text: &str, start: usize) -> Option<(Parsed<'_>, usize)> {
    if text.as_bytes().get(start) != Some(&b'{') {
        return None;
    }
    let mut p = Parser::new(text.as_bytes(), Some(text), start);
    let value = p.value(0).ok()?;
    Some((Parsed { value, duplicates: p.duplicates }, p.i))
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
    members: Object<'a>,
    /// The keys of the object being built.
    keys: Keys,
}

impl<'a> Parser<'a> {
    fn new(b: &'a [u8], text: Option<&'a str>, i: usize) -> Parser<'a> {
        Parser {
            b,
            text,
            i,
            duplicates: Vec::new(),
            // The dotted path of a typical event's deepest object fits without growing.
            path: String::with_capacity(64),
            // The members of the objects a typical event has open at once fit without growing.
            members: Vec::with_capacity(64),
            keys: Keys::default(),
        }
    }

    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.i)
    }

    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json<'a>, String> {
        match self.b.get(self.i) {
            None => Err(self.error("EOF while parsing a value")),
            Some(b'{') => self.object(depth + 1).map(Json::Object),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected value")),
        }
    }

    fn literal(&mut self, word: &str, value: Json<'a>) -> Result<Json<'a>, String> {
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

    fn object(&mut self, depth: usize) -> Result<Object<'a>, String> {
        self.nested(depth)?;
        self.i += 1;
        let base = self.members.len();
        if let Err(e) = self.members(depth) {
            self.members.truncate(base);
            return Err(e);
        }
        let n = self.members.len() - base;
        // A small object whose keys are all different, as nearly every one is, is taken as it was read, at once.
        let read = &self.members[base..];
        if n <= SEARCHED && !(1..n).any(|i| read[..i].iter().any(|(k, _)| *k == read[i].0)) {
            return Ok(self.members.split_off(base));
        }
        let mut object: Object<'a> = Vec::with_capacity(n);
        self.keys.start(&object, n);
        for (key, value) in self.members.drain(base..) {
            match self.keys.find(&object, &key) {
                None => self.keys.push(&mut object, key, value),
                // The later value takes the earlier one's place.
                Some(at) => {
                    let path = match self.path.as_str() {
                        "" => key.into_owned(),
                        outer => format!("{outer}.{key}"),
                    };
                    let earlier = std::mem::replace(&mut object[at].1, value);
                    self.duplicates.push(Duplicate { path, earlier: earlier.to_string() });
                }
            }
        }
        Ok(object)
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
            // A string, most values of an event, and an object are read here rather than through `value`, whose
            // result would be moved twice more on its way to `members`. Only an object needs the dotted path.
            let value = match self.b.get(self.i) {
                Some(b'"') => Json::Str(self.string()?),
                Some(b'{') => {
                    let outer = self.path.len();
                    if outer > 0 {
                        self.path.push('.');
                    }
                    self.path.push_str(&key);
                    let object = self.object(depth + 1);
                    self.path.truncate(outer);
                    Json::Object(object?)
                }
                _ => self.value(depth)?,
            };
            self.members.push((key, value));
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

    fn array(&mut self, depth: usize) -> Result<Json<'a>, String> {
        self.nested(depth)?;
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Json::Array(items));
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
                    break Ok(Json::Array(items));
                }
                _ => break Err(self.error("expected ',' or ']'")),
            }
        };
        self.path = path;
        std::mem::swap(&mut self.duplicates, &mut reported);
        result
    }

    /// A string token, unescaped. Plain strings are borrowed from the document; escapes are left to serde_json.
    /// Inlined where a key or a value is read: most of an event is short strings.
    #[inline(always)]
    fn string(&mut self) -> Result<Cow<'a, str>, String> {
        let b: &'a [u8] = self.b;
        let start = self.i;
        let mut j = start + 1;
        let mut escaped = false;
        loop {
            let Some(at) = b.get(j..).and_then(string_stop::<true>) else {
                self.i = b.len();
                return Err(self.error("EOF while parsing a string"));
            };
            j += at;
            match b[j] {
                b'"' => break,
                // The escaped character is skipped, so it is checked here.
                b'\\' if b.get(j + 1).is_none_or(|c| *c >= 0x20) => {
                    escaped = true;
                    j += 2;
                    continue;
                }
                b'\\' => j += 1,
                _ => {}
            }
            self.i = j;
            return Err(self.error("control character (\\u0000-\\u001F) found while parsing a string"));
        }
        let token = &b[start..=j];
        self.i = j + 1;
        if escaped {
            return serde_json::from_slice::<String>(token)
                .map(Cow::Owned)
                .map_err(|e| format!("{e} in a string at byte {start}"));
        }
        match self.text {
            // SAFETY: `text` is the document `b` holds the bytes of; `start` and `j` are the places of the quotes
            // around the string, so `start < j < text.len()`, and a quote is ASCII, so both ends of the slice are
            // character boundaries of the text.
            Some(text) => {
                debug_assert!(text.is_char_boundary(start + 1) && text.is_char_boundary(j));
                Ok(Cow::Borrowed(unsafe { text.get_unchecked(start + 1..j) }))
            }
            None => std::str::from_utf8(&token[1..token.len() - 1])
                .map(Cow::Borrowed)
                .map_err(|_| format!("invalid unicode code point at byte {start}")),
        }
    }

    fn number(&mut self) -> Result<Json<'a>, String> {
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
        let text: &'a str = std::str::from_utf8(&b[start..j]).unwrap_or_default();
        if integral {
            if let Ok(n) = text.parse::<i64>() {
                return Ok(Json::Number(n.into()));
            }
            if let Ok(n) = text.parse::<u64>() {
                return Ok(Json::Number(n.into()));
            }
            return Ok(Json::Str(Cow::Borrowed(text)));
        }
        let f: f64 = text.parse().map_err(|_| self.error("invalid number"))?;
        let mantissa_nonzero =
            text.split(['e', 'E']).next().is_some_and(|m| m.bytes().any(|c| (b'1'..=b'9').contains(&c)));
        if !f.is_finite() || (f == 0.0 && mantissa_nonzero) {
            return Ok(Json::Str(Cow::Borrowed(text)));
        }
        Ok(Number::from_f64(f).map_or(Json::Str(Cow::Borrowed(text)), Json::Number))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::value::ColumnType;
    use serde_json::{Value, json};

    fn value(s: &str) -> Json<'_> {
        parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}")).value
    }

    fn j(v: Value) -> Json<'static> {
        Json::from(&v)
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
            let theirs: Value = serde_json::from_str(s).unwrap();
            assert_eq!(value(s), j(theirs.clone()), "{s}");
            assert_eq!(value(s).to_string(), theirs.to_string(), "{s}");
        }
    }

    #[test]
    fn numbers_a_column_cannot_hold_are_kept_as_text() {
        assert_eq!(value("123456789012345678901234567890"), j(json!("123456789012345678901234567890")));
        assert_eq!(value("-9223372036854775809"), j(json!("-9223372036854775809")));
        assert_eq!(value("18446744073709551615"), j(json!(18446744073709551615u64)));
        assert_eq!(value("-9223372036854775808"), j(json!(i64::MIN)));
        assert_eq!(value("1e-400"), j(json!("1e-400")));
        assert_eq!(value("1e400"), j(json!("1e400")));
        assert_eq!(value("0e-400"), j(json!(0.0)));
        assert_eq!(value("2.5"), j(json!(2.5)));
    }

    #[test]
    fn repeated_keys_are_reported_with_the_value_that_lost() {
        let p = parse(
            br#"{"properties": {"plan": "a", "plan": {"x": 1}}, "userId": 1, "userId": 2, "l": [{"k": 1, "k": 2}]}"#,
        )
        .unwrap();
        assert_eq!(p.value.get("properties").and_then(|p| p.get("plan")), Some(&j(json!({"x": 1}))));
        assert_eq!(p.value.get("userId"), Some(&j(json!(2))));
        assert_eq!(
            p.duplicates,
            vec![
                Duplicate { path: "properties.plan".into(), earlier: "\"a\"".into() },
                Duplicate { path: "userId".into(), earlier: "1".into() }
            ]
        );
        // The path of a repeat goes through every object around it, whatever the values read before it.
        let p = parse(br#"{"context": {"list": [{"v": 0}], "name": "x", "app": {"v": 1, "v": 2}}}"#).unwrap();
        assert_eq!(p.duplicates, vec![Duplicate { path: "context.app.v".into(), earlier: "1".into() }]);
        // A large object is indexed while it is read: the same outcome, and the order of first appearance.
        let keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\": {i}")).collect();
        let many = format!("{{{}, \"k3\": \"again\", \"k39\": null}}", keys.join(", "));
        let p = parse(many.as_bytes()).unwrap();
        let o = p.value.as_object().unwrap();
        assert_eq!(o.len(), 40);
        assert_eq!(o[3], ("k3".into(), j(json!("again"))));
        assert_eq!(o[39], ("k39".into(), Json::Null));
        assert_eq!(
            o.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>(),
            (0..40).map(|i| format!("k{i}")).collect::<Vec<_>>()
        );
        assert_eq!(
            p.duplicates,
            vec![
                Duplicate { path: "k3".into(), earlier: "3".into() },
                Duplicate { path: "k39".into(), earlier: "39".into() }
            ]
        );
    }

    /// The scalar a JSON leaf gives a column.
    fn s(v: Value) -> Scalar {
        j(v).scalar().expect("not null")
    }

    #[test]
    fn first_value_fixes_the_type() {
        assert_eq!(s(json!(true)).natural_type(), ColumnType::Boolean);
        assert_eq!(s(json!(42)).natural_type(), ColumnType::BigInt);
        assert_eq!(s(json!(-42)).natural_type(), ColumnType::BigInt);
        assert_eq!(s(json!(4.5)).natural_type(), ColumnType::Double);
        assert_eq!(s(json!("hi")).natural_type(), ColumnType::String);
        assert_eq!(s(json!("2026-11-01T00:00:00Z")).natural_type(), ColumnType::Timestamp);
        assert_eq!(s(json!("2026-11-01")).natural_type(), ColumnType::String);
        assert_eq!(s(json!([1, 2])), Scalar::Str("[1,2]".into()));
        assert_eq!(s(json!(u64::MAX)).natural_type(), ColumnType::String);
    }

    #[test]
    fn lossless_casts_only() {
        assert_eq!(s(json!(3)).as_double(), Ok(3.0));
        assert!(s(json!(9_007_199_254_740_993_i64)).as_double().is_err());
        assert_eq!(s(json!(3.0)).as_bigint(), Ok(3));
        assert!(s(json!(3.5)).as_bigint().is_err());
        assert!(s(json!("3")).as_bigint().is_err());
        assert!(s(json!(1)).as_bool().is_err());
        assert!(s(json!("yesterday")).as_timestamp().is_err());
        assert!(s(json!(u64::MAX)).as_bigint().is_err());
        let e = s(json!("abc")).as_double().unwrap_err();
        assert_eq!(e.to_string(), "a STRING value cannot be stored in a DOUBLE column without loss");
    }

    #[test]
    fn anything_becomes_text() {
        assert_eq!(s(json!(true)).to_text(), "true");
        assert_eq!(s(json!(12)).to_text(), "12");
        assert_eq!(s(json!(1.5)).to_text(), "1.5");
        assert_eq!(s(json!(u64::MAX)).to_text(), "18446744073709551615");
        assert_eq!(s(json!("2026-11-01T00:00:00.000Z")).to_text(), "2026-11-01T00:00:00.000Z");
        assert_eq!(s(json!({"a": [1]})).to_text(), r#"{"a":[1]}"#);
    }

    #[test]
    fn leaves_become_scalars() {
        assert_eq!(value("null").scalar(), None);
        assert_eq!(value("true").scalar(), Some(Scalar::Bool(true)));
        assert_eq!(value("-42").scalar(), Some(Scalar::Int(-42)));
        assert_eq!(value("18446744073709551615").scalar(), Some(Scalar::BigInt("18446744073709551615".into())));
        assert_eq!(value("4.5").scalar(), Some(Scalar::Float(4.5)));
        assert_eq!(value("\"hi\"").scalar(), Some(Scalar::Str("hi".into())));
        assert!(matches!(value("\"2026-11-01T00:00:00Z\"").scalar(), Some(Scalar::Timestamp(..))));
        assert_eq!(value(r#"[1, {"b": "\u00e9"}]"#).scalar(), Some(Scalar::Str(r#"[1,{"b":"é"}]"#.into())));
    }

    #[test]
    fn control_characters_are_reported_where_they_are() {
        // In a plain string, right after a backslash, after an escape, and before a string's missing end: each is
        // reported at its own byte.
        for (s, at) in [("\"ab\u{1}\"", 3), ("\"a\\\u{1}\"", 3), ("\"\\n\u{1f}\"", 3), ("\"abcdefghij\u{0}", 11)] {
            let e = parse(s.as_bytes()).unwrap_err();
            // serde_json refuses them too (after a backslash, as an invalid escape).
            assert!(serde_json::from_str::<Value>(s).is_err(), "{s:?}");
            assert_eq!(
                e,
                format!("control character (\\u0000-\\u001F) found while parsing a string at byte {at}"),
                "{s:?}"
            );
        }
        assert_eq!(value(r#"["a\"b\\c\u00e9", "0123456789\"x"]"#), j(json!(["a\"b\\cé", "0123456789\"x"])));
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
