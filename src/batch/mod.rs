//! Group commit: rows from every request join the current micro-batch, which is written as one commit per
//! table when it is old, large or numerous enough. A request is answered only once its rows are committed.

pub mod dedup;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use crate::config::FlushPolicy;
use crate::delta::errors::Failure;
use crate::delta::registry::Admission;
use crate::delta::{Lakehouse, TableWrite, WriteError};
use crate::layout::rows::{Discard, Mapped, Row};
use crate::layout::value::now_micros;
use crate::layout::{DISCARDS, TableKind};
use dedup::{Fingerprints, KeySet, Recent, RowKey};

/// Tables written at once within one flush. A table's write is mostly waits on storage (its data files, then its
/// commit), so a flush of a few dozen tables takes about two of those rounds rather than six with eight at once.
const TABLE_CONCURRENCY: usize = 32;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error("too much data is waiting to be written ({buffered} bytes, limit {limit}); retry shortly")]
    Overloaded { buffered: usize, limit: usize },
    #[error("the server is shutting down; retry shortly")]
    ShuttingDown,
    #[error(transparent)]
    Write(Arc<WriteError>),
}

/// What one request brings: its schema and the mapped events.
#[derive(Debug, Default)]
pub struct Submission {
    pub schema: String,
    pub events: Vec<Mapped>,
    /// What it is charged against the buffer bound until the flush that writes it is done: the larger of its body
    /// size and what its events hold in memory (the sum of their [`Mapped::size_estimate`], which a batch context
    /// merged into every event or many small values can make larger than the body). Callers sum the latter as they
    /// map the events, while their rows are in cache.
    pub bytes: usize,
}

/// Counts that a flush reports, summed over a run (the ingest command prints them).
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub rows: BTreeMap<String, u64>,
    pub commits: u64,
    pub discards: u64,
    /// Rows a table already held from an earlier delivery of the same stream offsets.
    pub skipped: u64,
}

type TableId = (String, String);

struct Waiter {
    /// The tables whose commit the request still waits for.
    tables: BTreeSet<TableId>,
    /// What it is charged against the buffer bound until it is answered.
    bytes: usize,
    error: Option<Arc<WriteError>>,
    tx: oneshot::Sender<Result<(), SubmitError>>,
}

#[derive(Default)]
struct Pending {
    tables: BTreeMap<TableId, (TableKind, Vec<(RowKey, Row)>)>,
    discards: BTreeMap<String, Vec<(RowKey, Discard)>>,
    keys: KeySet,
    waiters: Vec<Waiter>,
    events: usize,
    bytes: usize,
    first_at: Option<Instant>,
    /// Holds what an earlier flush could not write: due without gathering.
    urgent: bool,
}

struct Inner {
    policy: FlushPolicy,
    lake: Arc<Lakehouse>,
    pending: Mutex<Pending>,
    committed: Mutex<Recent>,
    fingerprints: Fingerprints,
    /// Bytes accepted and not yet written (pending plus the flush in progress).
    buffered: AtomicUsize,
    wake: Notify,
    closing: std::sync::atomic::AtomicBool,
    /// Set on shutdown: every micro-batch is due at once.
    draining: std::sync::atomic::AtomicBool,
    totals: Mutex<Totals>,
}

/// Of a request's rows (or discards) for one table: drops those already committed and says whether any is left,
/// that is whether the request waits for the table's commit; of those, keeps only the ones not pending yet. A row
/// already waiting in this micro-batch (a retry racing its original) is not added twice, but the request still
/// waits for that table's commit: it is not acknowledged before its rows are written.
fn not_yet_pending<T>(entries: &mut Vec<(RowKey, T)>, committed: &Recent, pending: &mut KeySet) -> bool {
    entries.retain(|(key, _)| !committed.contains(key));
    if entries.is_empty() {
        return false;
    }
    entries.retain(|(key, _)| pending.insert(*key));
    true
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone)]
pub struct Batcher {
    inner: Arc<Inner>,
    flusher: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Batcher {
    pub fn start(lake: Arc<Lakehouse>, policy: FlushPolicy, dedup_capacity: usize) -> Batcher {
        let inner = Arc::new(Inner {
            policy,
            lake,
            pending: Mutex::new(Pending::default()),
            committed: Mutex::new(Recent::new(dedup_capacity)),
            fingerprints: Fingerprints::default(),
            buffered: AtomicUsize::new(0),
            wake: Notify::new(),
            closing: Default::default(),
            draining: Default::default(),
            totals: Mutex::new(Totals::default()),
        });
        let handle = tokio::spawn(flusher(inner.clone()));
        Batcher { inner, flusher: Arc::new(Mutex::new(Some(handle))) }
    }

    /// Adds a request's rows to the micro-batch and waits until they are committed.
    pub async fn submit(&self, sub: Submission) -> Result<(), SubmitError> {
        let inner = &self.inner;
        if inner.closing.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let limit = inner.policy.max_buffered_bytes;
        let buffered = inner.buffered.fetch_add(sub.bytes, Ordering::SeqCst);
        if buffered + sub.bytes > limit && buffered > 0 {
            inner.buffered.fetch_sub(sub.bytes, Ordering::SeqCst);
            return Err(SubmitError::Overloaded { buffered, limit });
        }
        let (tx, rx) = oneshot::channel();
        // Fingerprinted and grouped by table before the locks are taken: each table is then looked up once.
        let schema = sub.schema;
        let events = sub.events.len();
        // Table names are the senders' event names: found by a hash seeded per process.
        let mut by_table: HashMap<String, Rows, foldhash::fast::RandomState> = HashMap::default();
        let mut discards: Vec<(RowKey, Discard)> = Vec::new();
        for mapped in sub.events {
            for tr in mapped.rows {
                let key = inner.fingerprints.key((schema.as_str(), tr.table.as_str(), &*tr.row.id));
                by_table.entry(tr.table).or_insert_with(|| (tr.kind, Vec::new())).1.push((key, tr.row));
            }
            for d in mapped.discards {
                let key = inner.fingerprints.key((
                    schema.as_str(),
                    (d.row_id.as_str(), d.table_name.as_str(), d.column_name.as_str()),
                    (d.column_value.as_str(), d.reason.as_str()),
                ));
                discards.push((key, d));
            }
        }
        let added = {
            let committed = lock(&inner.committed);
            let mut pending = lock(&inner.pending);
            // Checked again under the lock the flusher reads it under: once the flusher has seen the server closing
            // with nothing pending, it is gone, and nothing added after would be answered.
            if inner.closing.load(Ordering::SeqCst) {
                drop(pending);
                inner.buffered.fetch_sub(sub.bytes, Ordering::SeqCst);
                return Err(SubmitError::ShuttingDown);
            }
            let p = &mut *pending;
            let mut tables = BTreeSet::new();
            for (table, (kind, mut rows)) in by_table {
                if !not_yet_pending(&mut rows, &committed, &mut p.keys) {
                    continue;
                }
                let id = (schema.clone(), table);
                if !rows.is_empty() {
                    p.tables.entry(id.clone()).or_insert_with(|| (kind, Vec::new())).1.append(&mut rows);
                }
                tables.insert(id);
            }
            if not_yet_pending(&mut discards, &committed, &mut p.keys) {
                tables.insert((schema.clone(), DISCARDS.to_string()));
                if !discards.is_empty() {
                    p.discards.entry(schema.clone()).or_default().append(&mut discards);
                }
            }
            p.events += events;
            if tables.is_empty() {
                false
            } else {
                p.bytes += sub.bytes;
                p.first_at.get_or_insert_with(Instant::now);
                p.waiters.push(Waiter { tables, bytes: sub.bytes, error: None, tx });
                true
            }
        };
        if !added {
            // Everything in it was committed before (a client retry): acknowledge without writing.
            inner.buffered.fetch_sub(sub.bytes, Ordering::SeqCst);
            return Ok(());
        }
        inner.wake.notify_one();
        rx.await.unwrap_or(Err(SubmitError::ShuttingDown))
    }

    pub fn totals(&self) -> Totals {
        lock(&self.inner.totals).clone()
    }

    /// Writes every micro-batch as soon as it has rows, without waiting for the interval.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
    }

    /// Stops taking requests, writes everything accepted, and waits for that to finish.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
        let handle = lock(&self.flusher).take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        self.inner.lake.finish().await;
    }
}

/// The earliest stream offset among `rows`, per stream.
fn earliest_offsets<'r>(rows: impl IntoIterator<Item = &'r Row>) -> HashMap<Arc<str>, i64> {
    let mut earliest: HashMap<Arc<str>, i64> = HashMap::new();
    for o in rows.into_iter().filter_map(|r| r.offset.as_ref()) {
        let e = earliest.entry(o.app_id.clone()).or_insert(o.seq);
        *e = (*e).min(o.seq);
    }
    earliest
}

/// Adaptive group commit: a micro-batch is written once it has gathered for `interval` after its first row (or at
/// once when it is full) and at least `min_interval` has passed since the previous flush started, or at once when
/// the server is stopping. Under light load a request waits about one commit; under heavy load flushes follow each
/// other every `min_interval` (or as fast as they finish) and batches grow, so each table gets a bounded number of
/// commits.
async fn flusher(inner: Arc<Inner>) {
    let mut last_start: Option<Instant> = None;
    loop {
        let (due, closing) = {
            let p = lock(&inner.pending);
            let closing = inner.closing.load(Ordering::SeqCst);
            let draining = closing || inner.draining.load(Ordering::SeqCst);
            let full = p.events >= inner.policy.max_events || p.bytes >= inner.policy.max_bytes || p.urgent;
            // A full micro-batch, or one holding what the last flush left, does not gather; it still waits for the
            // minimum interval, which bounds each table's commits under any load. Only shutdown skips it.
            let due = p.first_at.map(|t| {
                if draining {
                    return Instant::now();
                }
                let gathered = if full { Instant::now() } else { t + inner.policy.interval };
                last_start.map_or(gathered, |s| gathered.max(s + inner.policy.min_interval))
            });
            (due, closing)
        };
        match due {
            None if closing => return,
            None => inner.wake.notified().await,
            Some(due) if due > Instant::now() => {
                let sleep =
                    tokio::time::sleep(due.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
                tokio::select! {
                    _ = sleep => {}
                    _ = inner.wake.notified() => {}
                }
            }
            Some(_) => {
                let batch = std::mem::take(&mut *lock(&inner.pending));
                last_start = Some(Instant::now());
                write_batch(&inner, batch).await;
            }
        }
    }
}

/// A table's rows, with the keys that recognise them.
type Rows = (TableKind, Vec<(RowKey, Row)>);

/// The requests of a flush and the tables each still waits for. A request is answered as soon as the last of its
/// tables is committed (or has failed), not when the whole flush is done.
struct Waiting<'a> {
    inner: &'a Inner,
    list: Vec<Option<Waiter>>,
    by_table: HashMap<TableId, Vec<usize>>,
}

impl<'a> Waiting<'a> {
    fn new(inner: &'a Inner, waiters: Vec<Waiter>) -> Self {
        let mut by_table: HashMap<TableId, Vec<usize>> = HashMap::new();
        for (i, w) in waiters.iter().enumerate() {
            for t in &w.tables {
                by_table.entry(t.clone()).or_default().push(i);
            }
        }
        Waiting { inner, list: waiters.into_iter().map(Some).collect(), by_table }
    }

    /// A table is done: committed, or failed with `error`. Its requests now wait for `then` as well (the
    /// `discards` table, when the write set values aside), or are answered when nothing else is left.
    fn settle(&mut self, id: &TableId, error: Option<&Arc<WriteError>>, then: Option<&TableId>) {
        let Some(indices) = self.by_table.remove(id) else { return };
        for i in indices {
            let Some(w) = self.list[i].as_mut() else { continue };
            w.tables.remove(id);
            if let Some(e) = error {
                w.error.get_or_insert_with(|| e.clone());
            }
            if let Some(t) = then
                && w.tables.insert(t.clone())
            {
                self.by_table.entry(t.clone()).or_default().push(i);
            }
            if w.tables.is_empty()
                && let Some(w) = self.list[i].take()
            {
                answer(self.inner, w);
            }
        }
    }

    /// After the flush: requests whose remaining tables were not carried over have nothing left to wait for and are
    /// answered; the others are returned, to wait in the next flush.
    fn finish(self, carried: &HashSet<TableId>) -> Vec<Waiter> {
        let mut rest = Vec::new();
        for mut w in self.list.into_iter().flatten() {
            w.tables.retain(|t| carried.contains(t));
            if w.tables.is_empty() {
                answer(self.inner, w);
            } else {
                rest.push(w);
            }
        }
        rest
    }
}

fn answer(inner: &Inner, w: Waiter) {
    let left = inner.buffered.fetch_sub(w.bytes, Ordering::SeqCst).saturating_sub(w.bytes);
    crate::metrics::buffered(left);
    let _ = w.tx.send(match w.error {
        None => Ok(()),
        Some(e) => Err(SubmitError::Write(e)),
    });
}

/// How one table of a flush ended.
enum Outcome {
    Written(Result<crate::delta::Written, WriteError>),
    /// Not started within the flush's time budget.
    Later(Vec<(RowKey, Row)>),
}

/// Per schema and stream, the earliest offset among `rows`.
fn note_earliest(into: &mut HashMap<String, HashMap<Arc<str>, i64>>, schema: &str, earliest: HashMap<Arc<str>, i64>) {
    let streams = into.entry(schema.to_string()).or_default();
    for (app, seq) in earliest {
        let h = streams.entry(app).or_insert(seq);
        *h = (*h).min(seq);
    }
}

/// Whether a discard comes from a stream position at or after `from`'s for its stream.
fn at_or_after(d: &Discard, from: Option<&HashMap<Arc<str>, i64>>) -> bool {
    match (d.offset.as_ref(), from) {
        (Some(o), Some(streams)) => streams.get(&o.app_id).is_some_and(|h| o.seq >= *h),
        _ => false,
    }
}

/// The row of a table the schema has no room for, kept whole in `discards`.
fn table_past_limit(schema: &str, table: &str, count: usize, row: &Row) -> Discard {
    let reason = format!(
        "schema {schema} already has {count} event tables, its limit (SEGMENT_DELTA_MAX_TABLES); the event is in \
         tracks, and its row for table {table} is kept here, as JSON"
    );
    Discard::whole_row(row, table, "", reason)
}

async fn write_batch(inner: &Inner, mut batch: Pending) {
    let started = Instant::now();
    let uuid_ts = now_micros();
    // Rows a flush that finished after they were accepted has already committed.
    {
        let committed = lock(&inner.committed);
        for (_, rows) in batch.tables.values_mut() {
            rows.retain(|(k, _)| !committed.contains(k));
        }
        for discards in batch.discards.values_mut() {
            discards.retain(|(k, _)| !committed.contains(k));
        }
        batch.discards.retain(|_, d| !d.is_empty());
    }
    let mut waiting = Waiting::new(inner, std::mem::take(&mut batch.waiters));
    let discards_of = |schema: &str| (schema.to_string(), DISCARDS.to_string());

    // Tables that exist are written first, then at most `new_tables` new ones; the rows of further new tables wait
    // for the next flush, and those of tables past the schema's limit go to `discards`.
    let (mut known, mut fresh) = (Vec::new(), Vec::new());
    let mut carried: BTreeMap<TableId, Rows> = BTreeMap::new();
    for (id, (kind, rows)) in std::mem::take(&mut batch.tables) {
        if rows.is_empty() {
            continue;
        }
        let room = fresh.len() < inner.policy.new_tables;
        match inner.lake.admit(&id.0, &id.1, kind, room).await {
            Admission::Known => known.push((id, kind, rows)),
            Admission::New if room => fresh.push((id, kind, rows)),
            Admission::New => {
                carried.insert(id, (kind, rows));
            }
            Admission::Full(count) => {
                tracing::warn!(schema = %id.0, table = %id.1, rows = rows.len(), limit = count,
                    "schema has reached SEGMENT_DELTA_MAX_TABLES; the rows go to discards");
                let to = batch.discards.entry(id.0.clone()).or_default();
                to.extend(rows.into_iter().map(|(k, r)| (k, table_past_limit(&id.0, &id.1, count, &r))));
                waiting.settle(&id, None, Some(&discards_of(&id.0)));
            }
        }
    }
    if !carried.is_empty() {
        tracing::info!(tables = carried.len(), "new tables past the flush's limit wait for the next flush");
    }

    // Each table is written on its own task, so that building, encoding and dropping the rows of different
    // tables use every core.
    let budget = inner.policy.budget;
    let writes = known.into_iter().chain(fresh).map(|((schema, table), kind, rows)| {
        let lake = inner.lake.clone();
        async move {
            if started.elapsed() > budget {
                return ((schema, table), kind, Vec::new(), HashMap::new(), Outcome::Later(rows));
            }
            let (keys, rows): (Vec<RowKey>, Vec<Row>) = rows.into_iter().unzip();
            let earliest = earliest_offsets(&rows);
            let (s, t) = (schema.clone(), table.clone());
            let task =
                tokio::spawn(
                    async move { lake.append(TableWrite { schema: &s, table: &t, kind, rows }, uuid_ts).await },
                );
            let result = task.await.unwrap_or_else(|e| {
                Err(WriteError::new(&table, Failure::Unavailable(format!("the write stopped: {e}"))))
            });
            ((schema, table), kind, keys, earliest, Outcome::Written(result))
        }
    });
    let mut results = futures::stream::iter(writes).buffer_unordered(TABLE_CONCURRENCY);
    // Per schema and stream, the earliest offset of a row whose table write failed, or that waits.
    let mut failed_from: HashMap<String, HashMap<Arc<str>, i64>> = HashMap::new();
    let mut later_from: HashMap<String, HashMap<Arc<str>, i64>> = HashMap::new();
    while let Some((id, kind, keys, earliest, outcome)) = results.next().await {
        match outcome {
            Outcome::Later(rows) => {
                note_earliest(&mut later_from, &id.0, earliest_offsets(rows.iter().map(|(_, r)| r)));
                carried.insert(id, (kind, rows));
            }
            Outcome::Written(Ok(w)) => {
                {
                    // Counted before anyone is answered, so that a caller reading the totals after its answer sees
                    // its rows.
                    let mut totals = lock(&inner.totals);
                    totals.skipped += w.skipped as u64;
                    if w.rows > 0 {
                        totals.commits += 1;
                        *totals.rows.entry(format!("{}.{}", id.0, id.1)).or_default() += w.rows as u64;
                    }
                }
                lock(&inner.committed).extend(keys);
                let then = (!w.discards.is_empty()).then(|| discards_of(&id.0));
                for d in w.discards {
                    let key = inner.fingerprints.key((
                        id.0.as_str(),
                        id.1.as_str(),
                        d.row_id.as_str(),
                        d.column_name.as_str(),
                    ));
                    batch.discards.entry(id.0.clone()).or_default().push((key, d));
                }
                waiting.settle(&id, None, then.as_ref());
            }
            Outcome::Written(Err(e)) => {
                tracing::error!(schema = %id.0, table = %id.1, error = %e, "write failed");
                note_earliest(&mut failed_from, &id.0, earliest);
                waiting.settle(&id, Some(&Arc::new(e)), None);
            }
        }
    }
    drop(results);

    let mut carried_discards: BTreeMap<String, Vec<(RowKey, Discard)>> = BTreeMap::new();
    for (schema, discards) in std::mem::take(&mut batch.discards) {
        // The discards table records how far each stream was written: discards of a stream from where one of its
        // table writes failed are dropped (the events will be delivered again), and from where a table waits for
        // the next flush they wait too, or its offset would move past rows whose discards are still to come.
        let (discards, held): (Vec<_>, Vec<_>) = discards
            .into_iter()
            .filter(|(_, d)| !at_or_after(d, failed_from.get(&schema)))
            .partition(|(_, d)| !at_or_after(d, later_from.get(&schema)));
        if !held.is_empty() {
            carried_discards.insert(schema.clone(), held);
        }
        if discards.is_empty() {
            continue;
        }
        let id = discards_of(&schema);
        // What was set aside, in one line per micro-batch and schema: counts, never values.
        let summary = crate::ops::discards::summary(discards.iter().map(|(_, d)| d), 20);
        for (_, d) in &discards {
            crate::metrics::discarded(&schema, &d.table_name, &d.reason);
        }
        let (keys, rows): (Vec<RowKey>, Vec<Row>) = discards.into_iter().map(|(k, d)| (k, d.into_row())).unzip();
        let n = rows.len();
        match inner
            .lake
            .append(TableWrite { schema: &schema, table: DISCARDS, kind: TableKind::Discards, rows }, uuid_ts)
            .await
        {
            Ok(_) => {
                lock(&inner.committed).extend(keys);
                {
                    let mut totals = lock(&inner.totals);
                    totals.commits += 1;
                    totals.discards += n as u64;
                }
                tracing::warn!(schema = %schema, count = n, summary = %summary, "values set aside in discards");
                if !carried_discards.contains_key(&schema) {
                    waiting.settle(&id, None, None);
                }
            }
            Err(e) => {
                tracing::error!(schema = %schema, table = DISCARDS, error = %e, "write failed");
                waiting.settle(&id, Some(&Arc::new(e)), None);
            }
        }
    }
    // What waits goes back to the front of the next micro-batch, which is due at once.
    let mut waits: HashSet<TableId> = carried.keys().cloned().collect();
    waits.extend(carried_discards.keys().map(|s| discards_of(s)));
    let rest = waiting.finish(&waits);
    if waits.is_empty() {
        return;
    }
    let mut p = lock(&inner.pending);
    for (id, (kind, rows)) in carried {
        let fresh: Vec<_> = rows.into_iter().filter(|(k, _)| p.keys.insert(*k)).collect();
        let entry = p.tables.entry(id).or_insert_with(|| (kind, Vec::new()));
        entry.1.splice(0..0, fresh);
    }
    for (schema, discards) in carried_discards {
        let fresh: Vec<_> = discards.into_iter().filter(|(k, _)| p.keys.insert(*k)).collect();
        p.discards.entry(schema).or_default().splice(0..0, fresh);
    }
    p.waiters.splice(0..0, rest);
    p.first_at.get_or_insert_with(Instant::now);
    p.urgent = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Submission {
        /// A request's events, charged the larger of its `body` size and what they hold in memory, as the sources
        /// charge theirs.
        fn new(schema: String, events: Vec<Mapped>, body: usize) -> Submission {
            let built = events.iter().map(Mapped::size_estimate).sum();
            Submission { schema, events, bytes: body.max(built) }
        }
    }
    use crate::config::Lake;
    use crate::layout::rows::{Offset, TableRow};
    use crate::layout::value::Scalar;

    fn event(table: &str, id: &str, offset: Option<i64>, discard: bool) -> Mapped {
        let offset = offset.map(|seq| Offset { app_id: "hub/p0".into(), seq });
        let row = Row::new(
            id.into(),
            vec![("id".into(), Scalar::Str(id.into())), ("user_id".into(), Scalar::Str("u".into()))],
        );
        let discards = if discard {
            vec![Discard {
                row_id: id.into(),
                table_name: table.into(),
                column_name: "bad".into(),
                column_value: "x".into(),
                reason: "test".into(),
                received_at: 0,
                offset: None,
            }]
        } else {
            Vec::new()
        };
        Mapped { rows: vec![TableRow { table: table.into(), kind: TableKind::Event, row }], discards, forget: None }
            .with_offset(offset)
    }

    fn batcher(dir: &std::path::Path, policy: FlushPolicy) -> Batcher {
        let lake = Lakehouse::new(Lake::Local(dir.to_path_buf()), Default::default(), 100)
            .with_retry_budget(Duration::from_millis(200));
        Batcher::start(Arc::new(lake), policy, 1000)
    }

    fn rows(dir: &std::path::Path, table: &str) -> usize {
        let data = dir.join("s").join(table);
        std::fs::read_dir(&data).map_or(0, |d| {
            d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "parquet")).count()
        })
    }

    fn policy() -> FlushPolicy {
        FlushPolicy { interval: Duration::from_millis(20), ..FlushPolicy::default() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_commit_and_repeats_are_acknowledged_without_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let b = batcher(dir.path(), FlushPolicy { interval: Duration::from_millis(200), ..policy() });
        let sub = |id: &str| Submission { schema: "s".into(), events: vec![event("t", id, None, false)], bytes: 10 };
        let (x, y) = tokio::join!(b.submit(sub("a")), b.submit(sub("b")));
        x.unwrap();
        y.unwrap();
        assert_eq!(b.totals().commits, 1, "one micro-batch, one commit");
        b.submit(sub("a")).await.unwrap();
        assert_eq!(b.totals().commits, 1, "a repeat is acknowledged without a write");
        assert_eq!(rows(dir.path(), "t"), 1);
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_micro_batch_skips_the_gathering_but_not_the_minimum_interval() {
        let dir = tempfile::tempdir().unwrap();
        let policy = FlushPolicy {
            interval: Duration::from_secs(60),
            min_interval: Duration::from_millis(400),
            max_events: 1,
            ..policy()
        };
        let b = batcher(dir.path(), policy);
        let sub = |id: &str| Submission { schema: "s".into(), events: vec![event("t", id, None, false)], bytes: 10 };
        let start = Instant::now();
        // Each request fills a micro-batch: the first is written without gathering for a minute, and the next not
        // before the minimum interval after it.
        b.submit(sub("a")).await.unwrap();
        let first = start.elapsed();
        b.submit(sub("b")).await.unwrap();
        let second = start.elapsed();
        assert!(first < Duration::from_secs(30), "the full micro-batch did not gather: {first:?}");
        assert!(second >= Duration::from_millis(400), "the next flush waited for the minimum interval: {second:?}");
        assert_eq!((b.totals().commits, rows(dir.path(), "t")), (2, 2));
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_buffer_bound_requests_are_refused_and_nothing_waits() {
        let dir = tempfile::tempdir().unwrap();
        let policy = FlushPolicy { interval: Duration::from_secs(60), max_buffered_bytes: 1000, ..policy() };
        let b = batcher(dir.path(), policy);
        let first = Submission { schema: "s".into(), events: vec![event("t", "a", None, false)], bytes: 800 };
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.submit(first).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = Submission { schema: "s".into(), events: vec![event("t", "b", None, false)], bytes: 800 };
        let refused = b.submit(second).await;
        assert!(matches!(refused, Err(SubmitError::Overloaded { buffered: 800, limit: 1000 })), "{refused:?}");
        // A 1-byte body that built a row and a discard is charged what it built, which does not fit either.
        let built = Submission::new("s".into(), vec![event("t", "c", None, true)], 1);
        assert!(built.events[0].size_estimate() > 200 && built.bytes == built.events[0].size_estimate());
        let refused = b.submit(built).await;
        assert!(matches!(refused, Err(SubmitError::Overloaded { buffered: 800, .. })), "{refused:?}");
        b.shutdown().await;
        waiting.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_tables_past_a_flush_s_limit_wait_for_the_next_and_the_request_for_all_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let b = batcher(dir.path(), FlushPolicy { new_tables: 2, ..policy() });
        let events: Vec<Mapped> = (0..5).map(|i| event(&format!("t{i}"), &format!("e{i}"), None, false)).collect();
        b.submit(Submission { schema: "s".into(), events, bytes: 10 }).await.unwrap();
        for i in 0..5 {
            assert_eq!(rows(dir.path(), &format!("t{i}")), 1, "t{i} is written before the answer");
        }
        assert_eq!(b.totals().commits, 5);
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_of_event_tables_past_the_schema_s_limit_go_whole_to_discards() {
        let dir = tempfile::tempdir().unwrap();
        let limits = crate::config::TableLimits { max_tables: 2, ..Default::default() };
        let lake = Lakehouse::new(Lake::Local(dir.path().to_path_buf()), Default::default(), 100)
            .with_retry_budget(Duration::from_millis(200))
            .with_table_limits(limits);
        let b = Batcher::start(Arc::new(lake), policy(), 1000);
        let events: Vec<Mapped> = (0..3).map(|i| event(&format!("t{i}"), &format!("e{i}"), None, false)).collect();
        b.submit(Submission { schema: "s".into(), events, bytes: 10 }).await.unwrap();
        assert_eq!((rows(dir.path(), "t0"), rows(dir.path(), "t1"), rows(dir.path(), "t2")), (1, 1, 0));
        assert_eq!(b.totals().discards, 1);
        b.shutdown().await;
    }

    /// Makes `s/broken`, a table whose protocol this writer refuses.
    fn refused_table(dir: &std::path::Path) {
        let log = dir.join("s/broken/_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        let schema = serde_json::json!({"type": "struct", "fields": [{"name": "id", "type": "string", "nullable": true, "metadata": {}}]});
        let commit = [
            serde_json::json!({"protocol": {"minReaderVersion": 1, "minWriterVersion": 7, "writerFeatures": ["futureFeature"]}}),
            serde_json::json!({"metaData": {"id": "x", "format": {"provider": "parquet", "options": {}},
                "schemaString": schema.to_string(), "partitionColumns": [], "configuration": {}, "createdTime": 0}}),
        ];
        std::fs::write(log.join("00000000000000000000.json"), commit.map(|a| a.to_string()).join("\n") + "\n").unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_racing_its_original_waits_for_the_same_commit() {
        let dir = tempfile::tempdir().unwrap();
        refused_table(dir.path());
        let b = batcher(dir.path(), FlushPolicy { interval: Duration::from_millis(200), ..policy() });
        let sub = || Submission { schema: "s".into(), events: vec![event("broken", "e1", None, true)], bytes: 10 };
        let (original, retry) = tokio::join!(b.submit(sub()), b.submit(sub()));
        assert!(original.is_err(), "{original:?}");
        assert!(retry.is_err(), "the retry shares the failed commit, so it is not acknowledged: {retry:?}");
        let good = || Submission { schema: "s".into(), events: vec![event("good", "e2", None, false)], bytes: 10 };
        let (original, retry) = tokio::join!(b.submit(good()), b.submit(good()));
        original.unwrap();
        retry.unwrap();
        assert_eq!(rows(dir.path(), "good"), 1, "the row is written once");
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_s_discards_wait_for_its_failed_table() {
        let dir = tempfile::tempdir().unwrap();
        refused_table(dir.path());
        let b = batcher(dir.path(), policy());
        // Event 1 goes to a good table, event 2 to the refused one; both carry a discard.
        let sub = Submission {
            schema: "s".into(),
            events: vec![event("good", "e1", Some(1), true), event("broken", "e2", Some(2), true)],
            bytes: 10,
        };
        assert!(b.submit(sub).await.is_err());
        b.shutdown().await;
        let discards =
            crate::delta::table::log_store(dir.path().join("s/discards").to_str().unwrap(), &Default::default())
                .unwrap();
        let state = crate::delta::table::TableState::load(&discards, None).await.unwrap().unwrap();
        let seen = crate::delta::log::txn_version(&discards, state.version, "hub/p0").await.unwrap();
        assert_eq!(seen, Some(1), "the discards table's offset stops before the event whose table failed");
    }
}
