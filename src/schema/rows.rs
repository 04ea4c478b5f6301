//! An event becomes rows: one per table it lands in, with flattened, snake_cased columns, and a discard for
//! every value that cannot be stored as sent.

use std::rc::Rc;

use crate::layout::name::Name;
use crate::layout::rows::{Discard, Mapped, TableRow};
use crate::layout::rows::{Row, Shared};
use crate::layout::value::{Micros, Scalar, Text};
use crate::layout::{MAX_NAME_LEN, RESERVED_TABLES, TableKind};
use crate::schema::intern::{Named, Names, with_names};
use crate::schema::names::snake_case;
use crate::segment::event::{Event, EventType};
use crate::segment::json::{Json, Object};

/// The kind of table every event of a type lands in.
fn table_kind(kind: EventType) -> TableKind {
    match kind {
        EventType::Track => TableKind::Tracks,
        EventType::Identify => TableKind::Identifies,
        EventType::Page => TableKind::Pages,
        EventType::Screen => TableKind::Screens,
        EventType::Group => TableKind::Groups,
        EventType::Alias => TableKind::Aliases,
    }
}

/// The table a track event's own name gives, or why it has none.
pub fn event_table(name: &str) -> Result<String, String> {
    let t = snake_case(name);
    if t.is_empty() {
        return Err(format!("event name {name:?} has no letter or digit to make a table name from"));
    }
    if t.len() > MAX_NAME_LEN {
        return Err(format!("event name gives a table name longer than {MAX_NAME_LEN} characters"));
    }
    Ok(if RESERVED_TABLES.contains(&t.as_str()) { format!("_{t}") } else { t })
}

/// Which source of a column wins when two fill the same name: earlier sources always win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Fixed,
    Context,
    Payload,
}

#[derive(Clone, Copy)]
struct Slot {
    index: usize,
    source: Source,
    /// The place, in its source's list, of the key path that filled it.
    leaf: usize,
}

/// The slot of each column of the event's rows being built, by column number (see [`intern`]): an entry is the
/// event's only when its stamp is the event's, so that starting an event clears nothing. A track event's own row
/// continues the slots of its `tracks` row.
#[derive(Default)]
struct Slots {
    stamp: u32,
    by_number: Vec<(u32, Slot)>,
}

impl Slots {
    /// Forgets every slot: an event's first row starts.
    fn start(&mut self) {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            // Entries of 2^32 events ago would be taken for this event's.
            self.by_number.clear();
            self.stamp = 1;
        }
    }

    fn get_mut(&mut self, number: u32) -> Option<&mut Slot> {
        match self.by_number.get_mut(number as usize) {
            Some((stamp, slot)) if *stamp == self.stamp => Some(slot),
            _ => None,
        }
    }

    fn insert(&mut self, number: u32, slot: Slot) {
        let at = number as usize;
        if at >= self.by_number.len() {
            let unused = (0, Slot { index: 0, source: Source::Fixed, leaf: 0 });
            self.by_number.resize(at + 1, unused);
        }
        self.by_number[at] = (self.stamp, slot);
    }
}

/// The leaves of a flattened object, in order: each one's key path, and its column name (both shared, see
/// [`intern`]) and value. A row takes each leaf's name and value at most once, so they are moved into the row, not
/// copied; the paths stay, for the rule that settles two keys of one column.
#[derive(Default)]
struct Leaves {
    paths: Vec<Rc<str>>,
    /// The number of each leaf's column.
    numbers: Vec<u32>,
    items: Vec<(Name, Scalar)>,
}

impl Leaves {
    fn len(&self) -> usize {
        self.paths.len()
    }

    /// Empties the buffers for the next event; buffers an unusually large event grew are given back.
    fn clear(&mut self) {
        const KEPT: usize = 1024;
        if self.items.capacity() > KEPT {
            *self = Leaves::default();
        }
        self.paths.clear();
        self.numbers.clear();
        self.items.clear();
    }

    fn push(&mut self, (path, column, number): Named, value: Scalar) {
        self.paths.push(path);
        self.numbers.push(number);
        self.items.push((column, value));
    }
}

/// Builds one row's columns, resolving name collisions deterministically: a column filled by an earlier source
/// (fixed, then context, then properties/traits) keeps its value; within one source the key already spelled
/// like the column wins, then the smaller original key. Every losing value becomes a discard.
struct RowBuilder<'a> {
    /// Columns shared with the row built before, which this one continues; their places come first.
    prefix: &'a [(Name, Scalar)],
    cols: Vec<(Name, Scalar)>,
    /// By column number: equal names are one number within an event.
    slots: &'a mut Slots,
    id: &'a str,
    table: &'a str,
    received_at: Micros,
    discards: &'a mut Vec<Discard>,
    fixed: &'a [Named],
    context: &'a [Rc<str>],
    payload: &'a [Rc<str>],
}

impl<'a> RowBuilder<'a> {
    /// The key path of a source's leaf.
    fn path(&self, source: Source, leaf: usize) -> &'a Rc<str> {
        let (fixed, context, payload) = (self.fixed, self.context, self.payload);
        match source {
            Source::Fixed => &fixed[leaf].0,
            Source::Context => &context[leaf],
            Source::Payload => &payload[leaf],
        }
    }

    /// The column at `place` of the row, counting the shared ones first.
    fn col(&self, place: usize) -> Option<&(Name, Scalar)> {
        match place.checked_sub(self.prefix.len()) {
            None => self.prefix.get(place),
            Some(own) => self.cols.get(own),
        }
    }

    fn discard(&mut self, column: &str, value: String, reason: String) {
        self.discards.push(Discard {
            row_id: self.id.to_string(),
            table_name: self.table.to_string(),
            column_name: column.to_string(),
            column_value: value,
            reason,
            received_at: self.received_at,
            offset: None,
        });
    }

    /// Puts the column name (whose number is `number`) and value of a context or payload leaf.
    fn put(&mut self, source: Source, leaf: usize, column: Name, number: u32, value: Scalar) {
        let path: &str = self.path(source, leaf);
        if column.is_empty() {
            let reason = format!("{path:?} has no letter or digit to make a column name from");
            return self.discard(path, value.to_text(), reason);
        }
        if column.len() > MAX_NAME_LEN {
            let reason = format!("the key path gives a column name longer than {MAX_NAME_LEN} characters");
            return self.discard(&shortened(&column), value.to_text(), reason);
        }
        let (slot_source, slot_index, slot_leaf) = match self.slots.get_mut(number) {
            None => {
                let index = self.prefix.len() + self.cols.len();
                self.slots.insert(number, Slot { index, source, leaf });
                self.cols.push((column, value));
                return;
            }
            Some(slot) => (slot.source, slot.index, slot.leaf),
        };
        let column: &str = &column;
        // Spelled exactly like the column, then like it but for nesting, then the smaller original key.
        let rank = |p: &str| (p == column, p.replace('.', "_") == column, std::cmp::Reverse(p.to_string()));
        let slot_path: &str = self.path(slot_source, slot_leaf);
        let new_wins = source == slot_source && rank(path) > rank(slot_path);
        let (winner, loser_path, loser_value) = if new_wins {
            self.slots.get_mut(number).expect("slot").leaf = leaf;
            // Only a slot of the same source is taken over, and shared columns are of the sources before.
            let own = slot_index - self.prefix.len();
            let old = std::mem::replace(&mut self.cols[own].1, value);
            (path.to_string(), slot_path.to_string(), old)
        } else {
            (slot_path.to_string(), path.to_string(), value)
        };
        // The same value under both keys (analytics.js copies a page's name and category into its properties):
        // nothing is lost.
        if self.col(slot_index).is_some_and(|(c, v)| c.as_ref() == column && *v == loser_value) {
            return;
        }
        let reason = if slot_source == Source::Fixed && !new_wins {
            format!("{loser_path:?} would overwrite the reserved column {column}")
        } else {
            format!("{loser_path:?} and {winner:?} both become column {column}; {winner:?} is kept")
        };
        self.discard(column, loser_value.to_text(), reason);
    }
}

/// A part of an event no column can be named after: a key path longer than a column name may be.
struct OverLong {
    /// The start of the path, for the discard's column name.
    path: String,
    length: usize,
    /// The value (a whole object when the path was too long before its leaves), as JSON.
    value: String,
}

/// Flattens an object with `_` into leaves, in order; arrays are kept as JSON text. `path` holds the prefix. A path
/// that grows longer than a column name can be is not followed: what is under it is set aside once, whole, so that
/// a long key over many leaves costs one discard and no name.
fn flatten(names: &mut Names, path: &mut String, obj: &Object<'_>, out: &mut Leaves, long: &mut Vec<OverLong>) {
    let prefix_len = path.len();
    for (k, v) in obj {
        if prefix_len > 0 {
            path.push('.');
        }
        path.push_str(k);
        if path.len() > MAX_NAME_LEN && !v.is_null() {
            long.push(OverLong { path: shortened(path), length: path.chars().count(), value: v.to_string() });
        } else {
            match v {
                Json::Object(inner) => flatten(names, path, inner, out, long),
                other => {
                    if let Some(s) = other.scalar() {
                        out.push(names.get(path), s);
                    }
                }
            }
        }
        path.truncate(prefix_len);
    }
}

/// The first characters of a long name, for a discard's column name.
fn shortened(name: &str) -> String {
    const KEEP: usize = 64;
    match name.char_indices().nth(KEEP) {
        Some((at, _)) => format!("{}…", &name[..at]),
        None => name.to_string(),
    }
}

/// Scratch space reused from event to event on one thread: its buffers keep their size, so that mapping an event
/// does not grow them again.
#[derive(Default)]
struct Scratch {
    slots: Slots,
    path: String,
    context: Leaves,
    payload: Leaves,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Maps a validated event to its rows and discards.
pub fn map_event(event: Event<'_>) -> Mapped {
    SCRATCH.with(|s| with_names(|names| map_event_with(event, names, &mut s.borrow_mut())))
}

fn map_event_with(event: Event<'_>, names: &mut Names, scratch: &mut Scratch) -> Mapped {
    let mut out = Mapped::default();
    let kind = event.kind;
    let id: Text = event.message_id.as_str().into();
    let own_table = match (&event.event, kind) {
        (Some(name), EventType::Track) => match event_table(name) {
            Ok(t) => Some(t),
            Err(reason) => {
                out.discards.push(Discard {
                    row_id: event.message_id.clone(),
                    table_name: "tracks".into(),
                    column_name: "event".into(),
                    column_value: name.clone(),
                    reason: format!("{reason}; the event is in tracks only, its properties follow"),
                    received_at: event.received_at,
                    offset: None,
                });
                for (k, v) in &event.payload {
                    out.discards.push(Discard {
                        row_id: event.message_id.clone(),
                        table_name: String::new(),
                        column_name: k.to_string(),
                        column_value: v.to_string(),
                        reason: "property of an event with no table name".into(),
                        received_at: event.received_at,
                        offset: None,
                    });
                }
                None
            }
        },
        _ => None,
    };

    // The `event` column is the event's table name as it was before a reserved name was prefixed.
    let event_column: Option<Scalar> = own_table.as_deref().map(|t| Scalar::Str(t.trim_start_matches('_').into()));
    let mut tables = Vec::with_capacity(2);
    tables.push((kind.table().to_string(), table_kind(kind), kind != EventType::Track));
    if let Some(t) = own_table {
        tables.push((t, TableKind::Event, true));
    }

    // Everything the tables of this event share is computed once.
    let text = |s: &str| Scalar::Str(s.into());
    let mut fixed: [(&str, Option<Scalar>); 13] = [
        ("id", Some(Scalar::Str(id.clone()))),
        ("anonymous_id", event.anonymous_id.as_deref().map(text)),
        ("user_id", event.user_id.as_deref().map(text)),
        ("received_at", Some(event.received_at.into())),
        ("sent_at", event.sent_at.map(Scalar::from)),
        ("timestamp", Some(event.timestamp.into())),
        ("original_timestamp", event.original_timestamp.map(Scalar::from)),
        ("event", event_column),
        ("event_text", event.event.as_deref().map(text)),
        ("name", event.name.as_deref().filter(|_| matches!(kind, EventType::Page | EventType::Screen)).map(text)),
        (
            "category",
            event.category.as_deref().filter(|_| matches!(kind, EventType::Page | EventType::Screen)).map(text),
        ),
        ("group_id", event.group_id.as_deref().filter(|_| kind == EventType::Group).map(text)),
        ("previous_id", event.previous_id.as_deref().filter(|_| kind == EventType::Alias).map(text)),
    ];
    let Scratch { slots, path, context, payload } = scratch;
    context.clear();
    payload.clear();
    let mut long = Vec::new();
    path.clear();
    path.push_str("context");
    flatten(names, path, &event.context, context, &mut long);
    if tables.iter().any(|(_, _, with_payload)| *with_payload) {
        path.clear();
        flatten(names, path, &event.payload, payload, &mut long);
    }
    for l in long {
        out.discards.push(Discard {
            row_id: event.message_id.clone(),
            table_name: tables[0].0.clone(),
            column_name: l.path,
            column_value: l.value,
            reason: format!(
                "a key path of {} characters is longer than {MAX_NAME_LEN} characters, the longest a column name may be; what is under it is kept here",
                l.length
            ),
            received_at: event.received_at,
            offset: None,
        });
    }

    // A track event's own table has the fixed columns of `tracks`, so its row is the `tracks` row, held once by
    // both, and its properties; the `tracks` row's discards are its own too, under its own name.
    let mut tracks: Option<(Shared, std::ops::Range<usize>)> = None;
    for (table, table_kind, with_payload) in tables {
        let prefix = tracks.as_ref().map(|(shared, _)| shared.clone());
        let mut b = RowBuilder {
            prefix: prefix.as_deref().unwrap_or_default(),
            cols: Vec::new(),
            slots,
            id: &event.message_id,
            table: &table,
            received_at: event.received_at,
            discards: &mut out.discards,
            fixed: names.fixed(table_kind),
            context: &context.paths,
            payload: &payload.paths,
        };
        let first_discard = b.discards.len();
        match tracks.take() {
            Some((_, discarded)) => {
                for at in discarded {
                    let again = Discard { table_name: table.clone(), ..b.discards[at].clone() };
                    b.discards.push(again);
                }
            }
            None => {
                let table_fixed = b.fixed;
                // The row's columns at most, reserved at once.
                let own_payload = if with_payload { payload.len() } else { 0 };
                b.cols.reserve_exact(table_fixed.len() + context.len() + own_payload);
                b.slots.start();
                // Every fixed column of the table is reserved, whether this event fills it or not. The first row
                // of an event takes its fixed values. A table's fixed columns come in the order of `fixed` (but
                // `uuid_ts`, which `fixed` lacks), so each is looked for after the one found before.
                let mut from = 0;
                for (leaf, (path, column, number)) in table_fixed.iter().enumerate() {
                    let value = match fixed[from..].iter().position(|(n, _)| *n == path.as_ref()) {
                        Some(at) => {
                            from += at + 1;
                            fixed[from - 1].1.take()
                        }
                        None => None,
                    };
                    let index = match value {
                        Some(v) => {
                            b.cols.push((column.clone(), v));
                            b.cols.len() - 1
                        }
                        None => usize::MAX,
                    };
                    b.slots.insert(*number, Slot { index, source: Source::Fixed, leaf });
                }
                // Only the first row of an event takes the context (a track event's own row shares it).
                for (leaf, (column, value)) in context.items.drain(..).enumerate() {
                    b.put(Source::Context, leaf, column, context.numbers[leaf], value);
                }
            }
        }
        if with_payload {
            b.cols.reserve_exact(payload.len());
            // Only one row of an event has the payload.
            for (leaf, (column, value)) in payload.items.drain(..).enumerate() {
                b.put(Source::Payload, leaf, column, payload.numbers[leaf], value);
            }
        }
        let (cols, discarded) = (b.cols, first_discard..b.discards.len());
        let row = if !with_payload && table_kind == TableKind::Tracks {
            let shared: Shared = cols.into();
            tracks = Some((shared.clone(), discarded));
            Row { id: id.clone(), shared: Some(shared), cols: Vec::new(), offset: None }
        } else {
            Row { id: id.clone(), shared: prefix, cols, offset: None }
        };
        out.rows.push(TableRow { table, kind: table_kind, row });
    }
    for p in event.problems {
        out.discards.push(Discard {
            row_id: event.message_id.clone(),
            table_name: kind.table().to_string(),
            column_name: p.field,
            column_value: p.value,
            reason: p.reason,
            received_at: event.received_at,
            offset: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::event::Arrival;
    use serde_json::{Value, json};

    const NOW: Micros = 1_793_534_460_000_000;

    fn map(v: Value) -> Mapped {
        let arrival = Arrival { received_at: NOW, context: None, keep_received_at: false, sent_at: None };
        map_event(Event::from_json(Json::from(&v), &arrival).expect("valid"))
    }

    fn cols(m: &Mapped, table: &str) -> Vec<(String, Scalar)> {
        let r = m.rows.iter().find(|r| r.table == table).unwrap_or_else(|| panic!("no row for {table}"));
        r.row.columns().map(|(n, v)| (n.to_string(), v.clone())).collect()
    }

    fn get(m: &Mapped, table: &str, col: &str) -> Option<Scalar> {
        cols(m, table).into_iter().find(|(n, _)| n == col).map(|(_, v)| v)
    }

    #[test]
    fn track_goes_to_tracks_and_its_own_table() {
        let m = map(json!({"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m1",
            "properties": {"revenue": 9.5, "item Count": 2, "isFirstTime": true,
                           "shipping": {"address": {"city": "Berlin"}}, "products": [{"sku": "a"}], "coupon": null},
            "context": {"library": {"name": "analytics.js"}, "userAgent": "UA"}}));
        assert_eq!(
            m.rows.iter().map(|r| (r.table.as_str(), r.kind)).collect::<Vec<_>>(),
            vec![("tracks", TableKind::Tracks), ("order_completed", TableKind::Event)]
        );
        assert_eq!(get(&m, "tracks", "revenue"), None, "tracks holds no properties");
        assert_eq!(get(&m, "tracks", "event"), Some(Scalar::Str("order_completed".into())));
        assert_eq!(get(&m, "tracks", "event_text"), Some(Scalar::Str("Order Completed".into())));
        assert_eq!(get(&m, "tracks", "context_library_name"), Some(Scalar::Str("analytics.js".into())));
        assert_eq!(get(&m, "tracks", "context_user_agent"), Some(Scalar::Str("UA".into())));
        assert_eq!(get(&m, "order_completed", "revenue"), Some(Scalar::Float(9.5)));
        assert_eq!(get(&m, "order_completed", "item_count"), Some(Scalar::Int(2)));
        assert_eq!(get(&m, "order_completed", "is_first_time"), Some(Scalar::Bool(true)));
        assert_eq!(get(&m, "order_completed", "shipping_address_city"), Some(Scalar::Str("Berlin".into())));
        assert_eq!(get(&m, "order_completed", "products"), Some(Scalar::Str(r#"[{"sku":"a"}]"#.into())));
        assert_eq!(get(&m, "order_completed", "coupon"), None, "null creates no column");
        assert_eq!(get(&m, "order_completed", "id"), Some(Scalar::Str("m1".into())));
        assert!(m.discards.is_empty());
    }

    #[test]
    fn each_type_routes_to_its_table() {
        for (v, table, col, want) in [
            (json!({"type": "identify", "userId": "u", "traits": {"email": "e@x"}}), "identifies", "email", "e@x"),
            (
                json!({"type": "page", "userId": "u", "name": "Home", "category": "Docs", "properties": {"path": "/"}}),
                "pages",
                "name",
                "Home",
            ),
            (json!({"type": "page", "userId": "u", "name": "Home", "category": "Docs"}), "pages", "category", "Docs"),
            (json!({"type": "screen", "userId": "u", "name": "Feed"}), "screens", "name", "Feed"),
            (
                json!({"type": "group", "userId": "u", "groupId": "g1", "traits": {"industry": "x"}}),
                "groups",
                "group_id",
                "g1",
            ),
            (json!({"type": "alias", "userId": "u", "previousId": "a1"}), "aliases", "previous_id", "a1"),
        ] {
            let m = map(v);
            assert_eq!(m.rows.len(), 1);
            assert_eq!(get(&m, table, col), Some(Scalar::Str(want.into())), "{table}.{col}");
            assert_eq!(get(&m, table, "user_id"), Some(Scalar::Str("u".into())), "{table}.user_id");
            assert!(get(&m, table, "received_at").is_some(), "{table}.received_at");
        }
    }

    #[test]
    fn collisions_are_deterministic_and_never_silent() {
        for props in [json!({"Plan Name": "a", "plan_name": "b"}), json!({"plan_name": "b", "Plan Name": "a"})] {
            let m = map(json!({"type": "identify", "userId": "u", "traits": props}));
            assert_eq!(get(&m, "identifies", "plan_name"), Some(Scalar::Str("b".into())));
            assert_eq!(m.discards.len(), 1);
            assert_eq!(m.discards[0].column_value, "a");
            assert!(m.discards[0].reason.contains("\"Plan Name\" and \"plan_name\" both become column plan_name"));
        }
        // Neither spelled like the column: the smaller original key wins, whatever the order.
        for props in [json!({"Plan-Name": 1, "Plan Name": 2}), json!({"Plan Name": 2, "Plan-Name": 1})] {
            let m = map(json!({"type": "identify", "userId": "u", "traits": props}));
            assert_eq!(get(&m, "identifies", "plan_name"), Some(Scalar::Int(2)));
            assert_eq!(m.discards[0].column_value, "1");
        }
        let m = map(json!({"type": "identify", "userId": "u", "traits": {"a": {"b": 1}, "a_b": 2}}));
        assert_eq!(get(&m, "identifies", "a_b"), Some(Scalar::Int(2)));
        assert_eq!(m.discards.len(), 1);
    }

    #[test]
    fn a_track_events_tables_share_its_context_and_each_reports_its_collisions() {
        let m = map(json!({"type": "track", "event": "Signed Up", "userId": "u", "messageId": "m",
            "context": {"userAgent": "b", "user_agent": "a", "ip": "1.1.1.1"},
            "properties": {"plan": "pro", "context_ip": "9"}}));
        let tracks = cols(&m, "tracks");
        let own = cols(&m, "signed_up");
        assert_eq!(own[..tracks.len()], tracks[..], "the event's table starts with the tracks row");
        assert_eq!(own[tracks.len()..], [("plan".to_string(), Scalar::Str("pro".into()))]);
        let (t, o) = (&m.rows[0].row, &m.rows[1].row);
        assert!(
            t.shared.as_ref().zip(o.shared.as_ref()).is_some_and(|(a, b)| std::sync::Arc::ptr_eq(a, b)),
            "held once"
        );
        // Held once, counted once: the event costs the buffer its columns once, and the property.
        let single = Mapped { rows: m.rows[..1].to_vec(), ..Default::default() }.size_estimate();
        let both = Mapped { rows: m.rows.clone(), ..Default::default() }.size_estimate();
        assert!(both - single < single / 2, "{single} then {both}");
        assert_eq!(get(&m, "tracks", "context_user_agent"), Some(Scalar::Str("a".into())));
        let lost: Vec<(&str, &str, &str)> = m
            .discards
            .iter()
            .map(|d| (d.table_name.as_str(), d.column_name.as_str(), d.column_value.as_str()))
            .collect();
        assert_eq!(
            lost,
            vec![
                ("tracks", "context_user_agent", "b"),
                ("signed_up", "context_user_agent", "b"),
                ("signed_up", "context_ip", "9"),
            ]
        );
        assert!(m.discards[1].reason.contains("\"context.userAgent\" and \"context.user_agent\" both become"));
    }

    #[test]
    fn reserved_columns_are_protected() {
        let m = map(json!({"type": "track", "event": "E", "userId": "real", "messageId": "m",
            "properties": {"user_id": "fake", "id": "x", "receivedAt": "2020-01-01T00:00:00Z", "event": "no", "context_ip": "9"},
            "context": {"ip": "1.1.1.1"}}));
        assert_eq!(get(&m, "e", "user_id"), Some(Scalar::Str("real".into())));
        assert_eq!(get(&m, "e", "id"), Some(Scalar::Str("m".into())));
        assert_eq!(get(&m, "e", "event"), Some(Scalar::Str("e".into())));
        assert_eq!(get(&m, "e", "context_ip"), Some(Scalar::Str("1.1.1.1".into())));
        let mut lost: Vec<&str> = m.discards.iter().map(|d| d.column_name.as_str()).collect();
        lost.sort();
        assert_eq!(lost, vec!["context_ip", "event", "id", "received_at", "user_id"]);
        // sent_at is reserved even when the event does not fill it.
        let m = map(json!({"type": "identify", "userId": "u", "traits": {"sent_at": "x"}}));
        assert_eq!(get(&m, "identifies", "sent_at"), None);
        assert_eq!(m.discards.len(), 1);
    }

    #[test]
    fn event_table_names() {
        assert_eq!(event_table("Order Completed").unwrap(), "order_completed");
        assert_eq!(event_table("2FA Enabled").unwrap(), "2fa_enabled");
        assert_eq!(event_table("Users").unwrap(), "_users");
        assert_eq!(event_table("discards").unwrap(), "_discards");
        assert!(event_table("$$$").is_err());
        assert!(event_table(&"a".repeat(300)).is_err());
        let m = map(json!({"type": "track", "event": "!!!", "userId": "u", "properties": {"p": 1}}));
        assert_eq!(m.rows.len(), 1, "still lands in tracks");
        assert_eq!(m.discards.len(), 2, "the name and each property are kept in discards");
    }

    #[test]
    fn unusable_names_are_discarded() {
        let m = map(json!({"type": "identify", "userId": "u", "traits": {"$$": 1, "ok": 2, "x": {"": 3}}}));
        assert_eq!(get(&m, "identifies", "ok"), Some(Scalar::Int(2)));
        assert_eq!(get(&m, "identifies", "x"), Some(Scalar::Int(3)), "an empty nested key adds nothing to the name");
        assert_eq!(m.discards.len(), 1);
        assert!(m.discards[0].reason.contains("no letter or digit"));
        let long = "k".repeat(300);
        let m = map(json!({"type": "identify", "userId": "u", "traits": {long.clone(): 1}}));
        assert!(m.discards[0].reason.contains("longer than 255"));
    }

    #[test]
    fn scratch_kept_between_events_maps_each_alone_and_a_large_one_is_not_kept() {
        let large: serde_json::Map<String, Value> = (0..3000).map(|i| (format!("p{i}"), json!(i))).collect();
        let m = map(json!({"type": "identify", "userId": "u", "traits": large, "context": {"ip": "1.1.1.1"}}));
        assert_eq!(get(&m, "identifies", "p2999"), Some(Scalar::Int(2999)));
        assert_eq!(cols(&m, "identifies").len(), 3000 + 5, "id, user_id, received_at, timestamp, context_ip");
        // The next event, mapped with the same buffers, has none of the first one's leaves or collisions.
        let m = map(json!({"type": "page", "userId": "u", "properties": {"p1": "x", "user_id": "v"}}));
        assert_eq!(get(&m, "pages", "p1"), Some(Scalar::Str("x".into())));
        assert_eq!((get(&m, "pages", "p2"), get(&m, "pages", "context_ip")), (None, None));
        assert_eq!(m.discards.len(), 1, "properties.user_id collides with the fixed column: {:?}", m.discards);
        SCRATCH.with(|s| {
            let s = s.borrow();
            assert!(s.payload.items.capacity() <= 1024, "{}", s.payload.items.capacity());
            assert!(s.payload.items.is_empty() && s.context.items.is_empty());
        });
    }
}
