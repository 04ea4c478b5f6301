//! The floor under the handler's throughput: the same per-event work — split the `/v1/batch` body, parse and
//! validate each event, map it to its tables' rows, plan each table's columns, build its Arrow batch and encode it
//! as a Snappy Parquet file in memory, all as the handler does — with no HTTP, no micro-batch bookkeeping and no
//! Delta log. `bench/run.py`
//! compares the handler with it.
//!
//! cargo run --release -p segment-delta-bench --bin bench-floor -- --threads 2 batches.jsonl
//!
//! The input holds one `/v1/batch` body a line (`tests/fixtures/corpus.py --batch 500`). Bodies are dealt to the threads
//! in turn; each thread writes one Parquet file per table every `--chunk-events` events, as the handler writes one
//! file per table per micro-batch.

/// The handler's allocator.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use deltalake::kernel::{StructField, StructType};
use deltalake::parquet::arrow::ArrowWriter;
use segment_delta::config::{Config, Limits};
use segment_delta::delta::plan::{Plan, kernel_type};
use segment_delta::delta::{arrow, files};
use segment_delta::intake::body;
use segment_delta::intake::map_raw;
use segment_delta::layout::TableKind;
use segment_delta::layout::rows::{self, Row};
use segment_delta::layout::value::now_micros;
use segment_delta::segment::event::Arrival;

#[derive(Parser)]
struct Args {
    /// Files of `/v1/batch` bodies, one a line.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Threads working at once (the handler's runtime uses every core).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Events per Parquet file of each table (the handler's micro-batch).
    #[arg(long, default_value_t = 20_000)]
    chunk_events: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// CPU seconds (user + system) of this process so far, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name; USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

#[derive(Default)]
struct Counts {
    events: u64,
    rows: u64,
    discards: u64,
    files: u64,
    parquet_bytes: u64,
    /// CPU seconds spent mapping events (split, parse, validate, rows), building Arrow batches, encoding Parquet.
    map_s: f64,
    build_s: f64,
    encode_s: f64,
}

/// The columns a table has after an append: those the handler's plan gave it, as Delta fields.
fn widened(plan: &Plan) -> anyhow::Result<StructType> {
    let fields = plan.columns.iter().map(|(n, t)| StructField::new(n.clone(), kernel_type(*t), true));
    Ok(StructType::try_new(fields)?)
}

fn encode(batch: &deltalake::arrow::record_batch::RecordBatch) -> anyhow::Result<usize> {
    let schema = batch.schema();
    let columns =
        schema.fields().iter().zip(batch.columns()).map(|(f, values)| (f.as_ref(), values, f.name().as_str()));
    let props = files::writer_properties(columns).build();
    let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props))?;
    writer.write(batch)?;
    Ok(writer.into_inner()?.len())
}

/// Adds the time since `t` to `sum` and returns now.
fn lap(sum: &mut f64, t: f64) -> f64 {
    let now = thread_cpu();
    *sum += now - t;
    now
}

/// CPU seconds of the calling thread, from /proc/thread-self/schedstat (nanoseconds on the CPU): phases are timed
/// in CPU time so that other processes competing for the cores do not count.
fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|ns| ns.parse::<f64>().ok()))
        .map_or(0.0, |ns| ns / 1e9)
}

/// Writes one chunk: one Parquet file per table.
fn flush(
    tables: &mut HashMap<String, (TableKind, Vec<Row>)>,
    schemas: &mut HashMap<String, StructType>,
    counts: &mut Counts,
    max_columns: usize,
) -> anyhow::Result<()> {
    let uuid_ts = now_micros();
    for (table, (kind, rows)) in tables.drain() {
        let t = thread_cpu();
        // The columns as the handler plans an append while it builds the batch: the table's own, then the rows'
        // new ones.
        let mut plan = Plan::start(&table, schemas.get(&table), kind, max_columns);
        let (batch, discards) = arrow::build(&table, &mut plan, rows.iter(), uuid_ts)?;
        schemas.insert(table, widened(&plan)?);
        rows::free(rows);
        let t = lap(&mut counts.build_s, t);
        counts.rows += batch.num_rows() as u64;
        counts.discards += discards.len() as u64;
        counts.parquet_bytes += encode(&batch)? as u64;
        lap(&mut counts.encode_s, t);
        counts.files += 1;
    }
    Ok(())
}

fn work(bodies: &[&[u8]], chunk_events: usize) -> anyhow::Result<Counts> {
    let limits = Limits::default();
    let max_columns = Config::default().max_columns;
    let mut counts = Counts::default();
    let mut tables: HashMap<String, (TableKind, Vec<Row>)> = HashMap::new();
    let mut schemas: HashMap<String, StructType> = HashMap::new();
    let mut discards = Vec::new();
    let mut in_chunk = 0;
    for text in bodies {
        let t = thread_cpu();
        let parsed = body::split(text, true, &limits)?;
        let arrival = Arrival {
            received_at: now_micros(),
            context: parsed.context.as_ref(),
            keep_received_at: false,
            sent_at: parsed.sent_at,
        };
        for raw in &parsed.events {
            let mapped = map_raw(raw, &arrival, None);
            for tr in mapped.rows {
                tables.entry(tr.table).or_insert_with(|| (tr.kind, Vec::new())).1.push(tr.row);
            }
            discards.extend(mapped.discards);
            counts.events += 1;
            in_chunk += 1;
        }
        lap(&mut counts.map_s, t);
        if in_chunk >= chunk_events {
            if !discards.is_empty() {
                let rows = std::mem::take(&mut discards).into_iter().map(|d| d.into_row()).collect();
                tables.insert("discards".into(), (TableKind::Discards, rows));
            }
            flush(&mut tables, &mut schemas, &mut counts, max_columns)?;
            in_chunk = 0;
        }
    }
    if !discards.is_empty() {
        let rows = discards.into_iter().map(|d| d.into_row()).collect();
        tables.insert("discards".into(), (TableKind::Discards, rows));
    }
    flush(&mut tables, &mut schemas, &mut counts, max_columns)?;
    Ok(counts)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut data = Vec::new();
    for f in &args.files {
        data.push(std::fs::read(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?);
    }
    let bodies: Vec<&[u8]> = data.iter().flat_map(|d| d.split(|b| *b == b'\n')).filter(|l| !l.is_empty()).collect();
    let bytes: usize = bodies.iter().map(|b| b.len()).sum();
    let threads = args.threads.max(1);
    let shares: Vec<Vec<&[u8]>> =
        (0..threads).map(|t| bodies.iter().skip(t).step_by(threads).copied().collect()).collect();

    let (cpu0, started) = (cpu_seconds(), Instant::now());
    let results: Vec<anyhow::Result<Counts>> = std::thread::scope(|s| {
        let handles: Vec<_> = shares.iter().map(|share| s.spawn(|| work(share, args.chunk_events / threads))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a thread panicked")))).collect()
    });
    let (wall, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let mut total = Counts::default();
    for r in results {
        let c = r?;
        total.events += c.events;
        total.rows += c.rows;
        total.discards += c.discards;
        total.files += c.files;
        total.parquet_bytes += c.parquet_bytes;
        total.map_s += c.map_s;
        total.build_s += c.build_s;
        total.encode_s += c.encode_s;
    }
    let events_per_s = total.events as f64 / wall;
    let mb_per_s = bytes as f64 / 1e6 / wall;
    let per_core = if cpu > 0.0 { total.events as f64 / cpu } else { 0.0 };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "events": total.events, "bytes": bytes, "rows": total.rows, "discards": total.discards,
                "files": total.files, "parquet_bytes": total.parquet_bytes, "threads": threads,
                "wall_s": wall, "cpu_s": cpu, "events_per_s": events_per_s, "mb_per_s": mb_per_s,
                "events_per_cpu_s": per_core,
                "map_s": total.map_s, "build_s": total.build_s, "encode_s": total.encode_s,
            })
        );
    } else {
        println!("events      {} ({:.1} MB of JSON) on {threads} threads", total.events, bytes as f64 / 1e6);
        println!(
            "rows        {} in {} Parquet files ({:.1} MB)",
            total.rows,
            total.files,
            total.parquet_bytes as f64 / 1e6
        );
        println!("discards    {}", total.discards);
        println!("wall        {wall:.2} s, cpu {cpu:.2} s");
        println!(
            "phases      map {:.2} s, Arrow {:.2} s, Parquet {:.2} s (CPU, summed over threads)",
            total.map_s, total.build_s, total.encode_s
        );
        println!("throughput  {events_per_s:.0} events/s, {mb_per_s:.1} MB/s, {per_core:.0} events per CPU second");
    }
    Ok(())
}
