//! Many writers, one table: commits/s, events/s, conflict retries per commit and commit latency as the number of
//! concurrent writers grows. Each writer is a separate `Lakehouse` (its own table handle and `txn` id), as
//! separate Function instances are.
//!
//! cargo run --release -p segment-delta-bench --bin bench-writers -- --lake /tmp/bench-lake --writers 1,2,4,8,16 --seconds 10
//! AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:10000 SEGMENT_DELTA_STORAGE_EMULATOR=true \
//!   cargo run --release -p segment-delta-bench --bin bench-writers -- --lake az://bench/run1

/// The handler's allocator.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::{Duration, Instant};

use clap::Parser;
use segment_delta::config::Lake;
use segment_delta::config::storage;
use segment_delta::delta::{Lakehouse, TableWrite};
use segment_delta::layout::TableKind;
use segment_delta::layout::rows::Row;
use segment_delta::layout::value::now_micros;
use segment_delta::layout::value::{Scalar, Text};

#[derive(Parser)]
struct Args {
    /// Lake root: a directory, or az:// / abfss:// (with the storage settings of the main binary).
    #[arg(long, default_value = "./bench-lake")]
    lake: String,
    /// Writer counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    writers: Vec<usize>,
    /// Seconds per writer count.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events per commit (without --rate).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Events per second offered to the table, split evenly across the writers, each committing what arrived.
    #[arg(long)]
    rate: Option<f64>,
    /// With --rate: a writer's commit starts no sooner than this after its previous one started (the handler's
    /// SEGMENT_DELTA_FLUSH_MIN_INTERVAL_MS).
    #[arg(long, default_value_t = 200)]
    min_interval_ms: u64,
    /// With --rate: most events one commit carries (the handler's SEGMENT_DELTA_FLUSH_MAX_EVENTS).
    #[arg(long, default_value_t = 100_000)]
    max_events: usize,
}

/// When a writer's next commit starts and how many events it carries.
enum Pace {
    /// `--batch` events, at once.
    Closed(usize),
    /// Events arrive at this many a second from the step's start; a commit takes what arrived, at most `max`, no
    /// sooner than `min_interval` after the previous commit started.
    Open { per_second: f64, min_interval: Duration, max: usize },
}

impl Pace {
    /// How many more events a writer commits in a step that ends at `deadline`, having sent `sent`.
    fn due(&self, started: Instant, deadline: Instant, sent: usize) -> usize {
        match *self {
            Pace::Closed(batch) => usize::from(Instant::now() < deadline) * batch,
            Pace::Open { per_second, .. } => {
                (((deadline - started).as_secs_f64() * per_second) as usize).saturating_sub(sent)
            }
        }
    }

    /// Waits for the next commit; gives its size and when its oldest event arrived.
    async fn next(&self, started: Instant, sent: usize, last: Option<Instant>) -> (usize, Instant) {
        match *self {
            Pace::Closed(batch) => (batch, Instant::now()),
            Pace::Open { per_second, min_interval, max } => {
                let arrival = |n: usize| started + Duration::from_secs_f64(n as f64 / per_second);
                // The next event must have arrived, and the interval since the last commit passed.
                let mut ready = arrival(sent + 1);
                if let Some(last) = last {
                    ready = ready.max(last + min_interval);
                }
                tokio::time::sleep_until(ready.into()).await;
                let arrived = (started.elapsed().as_secs_f64() * per_second) as usize;
                (arrived.saturating_sub(sent).clamp(1, max), arrival(sent + 1))
            }
        }
    }
}

fn rows(writer: usize, n: usize, start: usize) -> Vec<Row> {
    let received = now_micros();
    (0..n)
        .map(|i| {
            let id: Text = format!("w{writer}-{}", start + i).into();
            let text = |s: &str| Scalar::Str(s.into());
            Row::new(
                id.clone(),
                vec![
                    ("id".into(), Scalar::Str(id.clone())),
                    ("user_id".into(), text(&format!("u{}", i % 997))),
                    ("received_at".into(), Scalar::from(received)),
                    ("timestamp".into(), Scalar::from(received)),
                    ("event".into(), text("order_completed")),
                    ("event_text".into(), text("Order Completed")),
                    ("context_library_name".into(), text("analytics.js")),
                    ("context_ip".into(), text("203.0.113.9")),
                    ("context_page_url".into(), text("https://www.example.com/checkout")),
                ],
            )
        })
        .collect()
}

/// What one writer did in a step.
#[derive(Default)]
struct Step {
    /// Commit latencies, from the commit's start.
    latencies: Vec<Duration>,
    /// For each commit, from the arrival of its oldest event to the commit's end.
    waits: Vec<Duration>,
    retries: u64,
    failed: u64,
    /// Events taken for commits, and those committed.
    sent: usize,
    committed: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate.is_finite() && rate > 0.0, "--rate must be a positive number of events per second");
    }
    anyhow::ensure!(args.max_events > 0, "--max-events must be at least 1");
    let lake = Lake::parse(&args.lake)?;
    let env = |k: &str| std::env::var(k).ok();
    let storage = storage::from_lookup(&lake, &env)?;
    match args.rate {
        None => println!(
            "lake {} ({}), {} events per commit, {} s per step",
            args.lake, storage.credential, args.batch, args.seconds
        ),
        Some(rate) => println!(
            "lake {} ({}), {rate} events/s offered to the table, split across the writers, each committing what \
             arrived at most once per {} ms, {} s per step",
            args.lake, storage.credential, args.min_interval_ms, args.seconds
        ),
    }
    println!(
        "| writers | s | commits | commits/s | events/s | events/commit | conflict retries/commit | p50 commit ms | p99 commit ms | p50 / p99 wait ms | failed |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let run = uuid::Uuid::new_v4().simple().to_string();
    for &n in &args.writers {
        let schema = format!("bench_{}_{n}", &run[..8]);
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..n {
            let lake = Lakehouse::new(lake.clone(), storage.options.clone(), 1000);
            let schema = schema.clone();
            let pace = match args.rate {
                None => Pace::Closed(args.batch),
                Some(rate) => Pace::Open {
                    per_second: rate / n as f64,
                    min_interval: Duration::from_millis(args.min_interval_ms),
                    max: args.max_events,
                },
            };
            tasks.push(tokio::spawn(async move {
                let mut s = Step::default();
                let mut last = None;
                // What arrives before the end is committed, so a step's time includes its last commits.
                loop {
                    let due = pace.due(started, deadline, s.sent);
                    if due == 0 {
                        break;
                    }
                    let (size, oldest) = pace.next(started, s.sent, last).await;
                    let size = size.min(due);
                    let t = Instant::now();
                    last = Some(t);
                    let write = TableWrite {
                        schema: &schema,
                        table: "tracks",
                        kind: TableKind::Tracks,
                        rows: rows(w, size, s.sent),
                    };
                    match lake.append(write, now_micros()).await {
                        Ok(written) => {
                            s.latencies.push(t.elapsed());
                            s.waits.push(oldest.elapsed());
                            s.retries += u64::from(written.conflict_retries);
                            s.committed += size;
                        }
                        Err(e) => {
                            s.failed += 1;
                            eprintln!("writer {w}: {e}");
                        }
                    }
                    s.sent += size;
                }
                (s, lake)
            }));
        }
        let (mut all, mut lakes) = (Step::default(), Vec::new());
        for t in tasks {
            let (s, lake) = t.await?;
            all.latencies.extend(s.latencies);
            all.waits.extend(s.waits);
            all.retries += s.retries;
            all.failed += s.failed;
            all.committed += s.committed;
            lakes.push(lake);
        }
        let Step { mut latencies, mut waits, retries, failed, committed, .. } = all;
        let secs = started.elapsed().as_secs_f64();
        for lake in lakes {
            lake.finish().await;
        }
        latencies.sort();
        waits.sort();
        let commits = latencies.len();
        println!(
            "| {n} | {secs:.1} | {commits} | {:.1} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} / {:.0} | {failed} |",
            commits as f64 / secs,
            committed as f64 / secs,
            committed as f64 / commits.max(1) as f64,
            retries as f64 / commits.max(1) as f64,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            percentile(&waits, 0.50),
            percentile(&waits, 0.99),
        );
    }
    Ok(())
}
