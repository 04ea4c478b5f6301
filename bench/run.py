#!/usr/bin/env python3
"""End-to-end benchmark of segment-delta: the real handler over HTTP, the backfill command, and two references.

    python3 bench/run.py                 # full run: local lake and Azurite, 1M-event backfill (about 15 minutes)
    python3 bench/run.py --quick         # smoke run: 20k events, local lake only (under a minute)
    python3 bench/run.py --markdown      # also print README-ready table rows
    python3 bench/run.py --bin-dir new/ --versus old/ --skip fixed,ingest,sdk,baseline   # two builds side by side

It builds the release binaries (`segment-delta` and `bench-floor`, members of the workspace), honouring
CARGO_TARGET_DIR; `--no-build` or `--bin-dir` to use existing ones), generates the corpus once with the project's
generator, tests/fixtures/corpus.py (500-event /v1/batch bodies), starts Azurite (AZURITE_BLOB_BIN, default
~/.cache/segment-delta/node/node_modules/.bin/azurite-blob), then for each lake:

- saturation: a fresh handler, `--connections` keep-alive connections each sending the next body as soon as the
  previous one is acknowledged; events/s, MB/s, handler CPU (from /proc/<pid>/stat) and acknowledgement latency;
- fixed load: a fresh handler, bodies sent open-loop at `--rate` events/s (latency counted from the scheduled send
  time, so a slow answer delays nothing and hides nothing);
- ingest: `segment-delta ingest` of a `--ingest-events` JSONL file (wall, events/s, MB/s, CPU, peak RSS by wait4);
- sequential SDK: one analytics-python client with its defaults (one upload thread, 100 events per request, each
  request waiting for its answer) sending `--sdk-events` track calls; events/s from the first call to the end of
  `flush()`, when every event has been acknowledged, hence committed.

With `--versus DIR` (another build's two binaries, an earlier commit's say), every scenario but the baseline runs
with both builds, alternating, `--repeat` times (default 3), and a comparison follows the table: the range of each
figure per build and of the ratio in each pair, since a machine's speed can drift by more than a change moves it.

Each run reports peak RSS (VmHWM) and the Delta data files and commits written per 100k events. The references run
on the same data: the floor (`bench-floor`: parse, map and Parquet-encode in-process, no HTTP, no Delta) and a
baseline a user might write (`bench/baseline.py`: json + pyarrow + deltalake.write_deltalake per batch).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
KEY = "benchkey"
SCHEMA = "segment"
BATCH = 500
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published development account key; it guards nothing.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Processes: CPU time and peak memory from /proc


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def proc_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakWatcher:
    """Reads a child's VmHWM every 100 ms until it exits (wait4's ru_maxrss would also count the pages the child
    shared with this process between fork and exec)."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, proc_hwm_mib(self.pid))
            except (OSError, ValueError):
                return
            time.sleep(0.1)

    def stop(self) -> float:
        self.thread.join(timeout=1)
        return self.peak


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), {mem:.1f} GiB RAM, {platform.system()} {platform.release()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port} within {timeout} s")


# ---------------------------------------------------------------------------------------------------------------
# Binaries and corpus


def binaries(args) -> Path:
    if args.bin_dir:
        return Path(args.bin_dir)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    profile = "debug" if args.debug else "release"
    if not args.no_build:
        cmd = ["cargo", "build", "-p", "segment-delta", "-p", "segment-delta-bench", "--bin", "segment-delta", "--bin",
               "bench-floor"]
        if not args.debug:
            cmd.insert(2, "--release")
        log("building: " + " ".join(cmd))
        subprocess.run(cmd, cwd=REPO, check=True)
    return target / profile


def corpus(dir: Path, count: int, seed: int) -> Path:
    """One event a line, from the project's corpus generator; cached in `dir` by count and seed."""
    path = dir / f"events-{count}-s{seed}.jsonl"
    if not path.exists():
        log(f"generating {count} events (seed {seed})")
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            subprocess.run([sys.executable, str(REPO / "tests" / "fixtures" / "corpus.py"), "--count", str(count),
                            "--seed", str(seed)], stdout=out, check=True)
        tmp.rename(path)
    return path


def batch_bodies(events: Path, count: int, out: Path) -> list[bytes]:
    """The first `count` events as /v1/batch bodies of 500, exactly as `tests/fixtures/corpus.py --batch 500` prints
    them; also written to `out`, one a line, for the floor and the baseline."""
    bodies, chunk = [], []
    with open(events, "rb") as f:
        for i, line in enumerate(f):
            if i >= count:
                break
            chunk.append(line.rstrip(b"\n"))
            if len(chunk) == BATCH:
                bodies.append(b'{"batch":[' + b",".join(chunk) + b"]}")
                chunk = []
    if chunk:
        bodies.append(b'{"batch":[' + b",".join(chunk) + b"]}")
    out.write_bytes(b"\n".join(bodies) + b"\n")
    return bodies


def head_lines(src: Path, count: int, out: Path) -> Path:
    if out.exists():
        return out
    with open(src, "rb") as f, open(out, "wb") as o:
        for i, line in enumerate(f):
            if i >= count:
                break
            o.write(line)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Lakes


class Azurite:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        bin_path = os.environ.get("AZURITE_BLOB_BIN") or str(
            Path.home() / ".cache/segment-delta/node/node_modules/.bin/azurite-blob")
        if not os.access(bin_path, os.X_OK):
            raise SystemExit(f"azurite-blob not found at {bin_path}: npm install --prefix "
                             "~/.cache/segment-delta/node azurite@3, or set AZURITE_BLOB_BIN (or pass --lakes local)")
        (workdir / "azurite").mkdir(parents=True, exist_ok=True)
        self.log = open(workdir / "azurite.log", "ab")
        self.proc = subprocess.Popen(
            [bin_path, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location",
             str(workdir / "azurite"), "--silent", "--skipApiVersionCheck"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        wait_port(self.port, self.proc, "azurite-blob")
        from azure.storage.blob import BlobServiceClient
        self.service = BlobServiceClient.from_connection_string(
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT};")

    def stop(self) -> None:
        self.service.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@dataclass
class Lake:
    kind: str  # local | azurite
    env: dict
    root: Path | None = None
    azurite: Azurite | None = None
    container: str = ""

    def files(self) -> list[str]:
        """Every file under the lake root, relative to it."""
        if self.root is not None:
            return [str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()]
        client = self.azurite.service.get_container_client(self.container)
        return [b.name.split("/", 1)[1] for b in client.list_blobs(name_starts_with="lake/")]

    def counts(self) -> tuple[int, int]:
        """Parquet data files and JSON commits in every table of the schema."""
        names = self.files()
        data = sum(1 for n in names if n.endswith(".parquet") and "/_delta_log/" not in f"/{n}")
        commits = sum(1 for n in names if re.search(r"/_delta_log/\d{20}\.json$", n))
        return data, commits


# How many lakes of each name this run has made: a scenario run again (`--repeat`, `--versus`) gets a lake of its own.
LAKE_NAMES: dict[str, int] = {}


def new_lake(kind: str, workdir: Path, name: str, azurite: Azurite | None) -> Lake:
    name = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    LAKE_NAMES[name] = LAKE_NAMES.get(name, 0) + 1
    if LAKE_NAMES[name] > 1:
        name = f"{name}-{LAKE_NAMES[name]}"
    if kind == "local":
        root = workdir / "lakes" / name
        return Lake("local", {"SEGMENT_DELTA_LAKE": str(root)}, root=root)
    container = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]
    azurite.service.create_container(container)
    env = {"SEGMENT_DELTA_LAKE": f"az://{container}/lake", "SEGMENT_DELTA_STORAGE_EMULATOR": "true",
           "AZURITE_BLOB_STORAGE_URL": f"http://127.0.0.1:{azurite.port}"}
    return Lake("azurite", env, azurite=azurite, container=container)


def handler_env(lake: Lake, extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SEGMENT_DELTA_", "FUNCTIONS_", "AZURE_", "AZURITE_", "IDENTITY_", "MSI_"))}
    env.update({"SEGMENT_DELTA_SOURCES": f"{KEY}={SCHEMA}", "SEGMENT_DELTA_LOG_FORMAT": "text", "NO_COLOR": "1"})
    env.update(lake.env)
    env.update(extra)
    return env


class Handler:
    """`segment-delta serve` on a free port."""

    def __init__(self, bin_dir: Path, lake: Lake, workdir: Path, extra: dict):
        self.port = free_port()
        env = handler_env(lake, {**extra, "FUNCTIONS_CUSTOMHANDLER_PORT": str(self.port)})
        self.stderr = open(workdir / f"handler-{self.port}.log", "wb")
        self.proc = subprocess.Popen([str(bin_dir / "segment-delta"), "serve"], env=env, cwd=workdir,
                                     stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=self.stderr)
        wait_port(self.port, self.proc, "segment-delta serve")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        if self.proc.returncode != 0:
            raise SystemExit(f"segment-delta exited with {self.proc.returncode}; see {self.stderr.name}")


# ---------------------------------------------------------------------------------------------------------------
# Load


def post_loop(port: int, next_job, record) -> None:
    """One keep-alive connection: takes (body, scheduled time) jobs until there are none, records each answer."""
    auth = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    while True:
        job = next_job()
        if job is None:
            break
        body, scheduled = job
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        start = time.perf_counter() if scheduled == 0 else scheduled
        try:
            conn.request("POST", "/v1/batch", body=body,
                         headers={"Content-Type": "application/json", "Authorization": auth})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            status = 0
        record(time.perf_counter() - start, status)
    conn.close()


@dataclass
class LoadResult:
    wall: float
    latencies: list = field(default_factory=list)
    failed: int = 0
    loadgen_cpu: float = 0.0


def drive(port: int, bodies: list[bytes], connections: int, rate: float | None) -> LoadResult:
    """Sends every body: closed-loop on `connections` connections, or open-loop at `rate` events/s."""
    lock = threading.Lock()
    it = iter(range(len(bodies)))
    latencies, failed = [], [0]
    t0 = time.perf_counter() + 0.05

    def next_job():
        with lock:
            i = next(it, None)
        if i is None:
            return None
        return bodies[i], (t0 + i * BATCH / rate) if rate else 0

    def record(latency, status):
        with lock:
            latencies.append(latency)
            if status != 200:
                failed[0] += 1

    cpu0 = self_cpu()
    threads = [threading.Thread(target=post_loop, args=(port, next_job, record), daemon=True)
               for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return LoadResult(wall, sorted(latencies), failed[0], self_cpu() - cpu0)


def pct(sorted_values: list, p: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, round((len(sorted_values) - 1) * p))] * 1000


# ---------------------------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Row:
    scenario: str
    lake: str
    events: int
    wall: float
    bytes: int
    cpu: float  # CPU seconds of the process under test
    rss_mib: float = 0.0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    files: int | None = None
    commits: int | None = None
    failed: int = 0
    note: str = ""

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.wall

    @property
    def cores(self) -> float:
        return self.cpu / self.wall

    @property
    def per_core(self) -> float:
        return self.events / self.cpu if self.cpu > 0 else 0.0

    def per_100k(self, n: int | None) -> float | None:
        return None if n is None else n * 100_000 / self.events


def measured(handler: Handler, work):
    """Runs `work()` against a started handler, then stops it (kills it should `work` fail). Returns what `work`
    returned, the handler's CPU seconds during it and its peak RSS in MiB."""
    try:
        cpu0 = proc_cpu(handler.proc.pid)
        result = work()
        cpu = proc_cpu(handler.proc.pid) - cpu0
        rss = proc_hwm_mib(handler.proc.pid)
    except BaseException:
        handler.proc.kill()
        raise
    handler.stop()
    return result, cpu, rss


def http_scenario(args, bin_dir, workdir, lake_kind, azurite, name, bodies, connections, rate) -> Row:
    lake = new_lake(lake_kind, workdir, f"{lake_kind}-{name}", azurite)
    handler = Handler(bin_dir, lake, workdir, flush_settings(args))

    def work():
        az_cpu0 = proc_cpu(azurite.proc.pid) if lake_kind == "azurite" else 0.0
        result = drive(handler.port, bodies, connections, rate)
        return result, proc_cpu(azurite.proc.pid) - az_cpu0 if lake_kind == "azurite" else 0.0

    (result, az_cpu), cpu, rss = measured(handler, work)
    files, commits = lake.counts()
    events = len(bodies) * BATCH
    note = f"load generator {result.loadgen_cpu / result.wall:.2f} cores"
    if lake_kind == "azurite":
        note += f", Azurite {az_cpu / result.wall:.2f} cores"
    row = Row(name, lake_kind, events, result.wall, sum(map(len, bodies)), cpu, rss,
              pct(result.latencies, .50), pct(result.latencies, .95), pct(result.latencies, .99),
              files, commits, result.failed, note)
    log(f"{lake_kind} {name}: {row.events_per_s:.0f} events/s, p50 {row.p50:.0f} ms, p99 {row.p99:.0f} ms, "
        f"{row.cores:.2f} cores, {result.failed} failed")
    return row


def flush_settings(args) -> dict:
    extra = {}
    if args.flush_interval_ms:
        extra["SEGMENT_DELTA_FLUSH_INTERVAL_MS"] = str(args.flush_interval_ms)
    if args.flush_min_interval_ms is not None:
        extra["SEGMENT_DELTA_FLUSH_MIN_INTERVAL_MS"] = str(args.flush_min_interval_ms)
    for setting in args.set:
        name, _, value = setting.partition("=")
        extra[name] = value
    return extra


def sdk_scenario(args, bin_dir, workdir, lake_kind, azurite, count: int) -> Row:
    """One analytics-python client with its defaults, as an application would use it."""
    from segment.analytics.client import Client

    lake = new_lake(lake_kind, workdir, f"{lake_kind}-sdk", azurite)
    handler = Handler(bin_dir, lake, workdir, flush_settings(args))
    errors = []

    def work():
        client = Client(write_key=KEY, host=f"http://127.0.0.1:{handler.port}", on_error=lambda e, b: errors.append(e))
        started = time.perf_counter()
        for i in range(count):
            client.track(user_id=f"user-{i % 500}", event="Product Viewed",
                         properties={"product_id": f"p-{i}", "price": i % 100 + 0.5, "category": "shoes"})
        client.flush()
        wall = time.perf_counter() - started
        client.join()
        return wall

    wall, cpu, rss = measured(handler, work)
    files, commits = lake.counts()
    row = Row("sequential SDK", lake_kind, count, wall, 0, cpu, rss, files=files, commits=commits,
              failed=len(errors), note="analytics-python defaults: 100 events per request, one request at a time")
    log(f"{lake_kind} sequential SDK: {row.events_per_s:.0f} events/s, {len(errors)} failed")
    return row


def ingest_scenario(bin_dir, workdir, lake_kind, azurite, events_file: Path, count: int) -> Row:
    lake = new_lake(lake_kind, workdir, f"{lake_kind}-ingest", azurite)
    env = handler_env(lake, {})
    with open(workdir / f"ingest-{lake_kind}.log", "wb") as err:
        az_cpu0 = proc_cpu(azurite.proc.pid) if lake_kind == "azurite" else 0.0
        started = time.perf_counter()
        proc = subprocess.Popen([str(bin_dir / "segment-delta"), "ingest", "--schema", SCHEMA, str(events_file)],
                                env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        watcher = PeakWatcher(proc.pid)
        out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        az_cpu = proc_cpu(azurite.proc.pid) - az_cpu0 if lake_kind == "azurite" else 0.0
    if proc.returncode != 0:
        raise SystemExit(f"ingest failed ({proc.returncode}): see {err.name}\n{out}")
    m = re.search(r"^events\s+(\d+)", out, re.M)
    events = int(m.group(1)) if m else count
    files, commits = lake.counts()
    note = f"Azurite {az_cpu / wall:.2f} cores" if lake_kind == "azurite" else ""
    row = Row("ingest", lake_kind, events, wall, events_file.stat().st_size, usage.ru_utime + usage.ru_stime,
              watcher.stop(), files=files, commits=commits, note=note)
    log(f"{lake_kind} ingest: {row.events_per_s:.0f} events/s, {row.cores:.2f} cores, {row.rss_mib:.0f} MiB")
    return row


def floor_scenario(bin_dir, bodies_file: Path, threads: int) -> Row:
    out = subprocess.run([str(bin_dir / "bench-floor"), "--json", "--threads", str(threads), str(bodies_file)],
                         check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    row = Row("floor", "memory", r["events"], r["wall_s"], r["bytes"], r["cpu_s"], files=r["files"],
              note=f"{threads} threads, {r['parquet_bytes'] / 1e6:.1f} MB of Parquet")
    log(f"floor: {row.events_per_s:.0f} events/s, {row.per_core:.0f} events per CPU second")
    return row


def baseline_scenario(workdir: Path, bodies_file: Path, count: int) -> Row:
    lake = workdir / "lakes" / "baseline"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "baseline.py"), "--lake", str(lake),
                             "--events", str(count), str(bodies_file)], stdout=subprocess.PIPE)
    watcher = PeakWatcher(proc.pid)
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"baseline failed:\n{out}")
    r = json.loads(out.strip().splitlines()[-1])
    root = Lake("local", {}, root=lake)
    files, commits = root.counts()
    row = Row("baseline", "local", r["events"], r["seconds"], r["bytes"], usage.ru_utime + usage.ru_stime,
              watcher.stop(), files=files, commits=commits,
              note=f"python {platform.python_version()}, process wall {wall:.1f} s")
    # CPU over the writing only is not separable from start-up; scale it to the timed part.
    row.cpu = row.cpu * r["seconds"] / wall
    log(f"baseline: {row.events_per_s:.0f} events/s")
    return row


# ---------------------------------------------------------------------------------------------------------------
# Report

COLUMNS = ["scenario", "lake", "events", "events/s", "MB/s", "cores", "events/s per core", "p50 ms", "p95 ms",
           "p99 ms", "peak RSS MiB", "files/100k ev", "commits/100k ev", "failed"]


def cells(r: Row) -> list[str]:
    num = lambda v, fmt="{:.0f}": "–" if v is None else fmt.format(v)
    return [r.scenario, r.lake, str(r.events), num(r.events_per_s), num(r.mb_per_s, "{:.1f}"), num(r.cores, "{:.2f}"),
            num(r.per_core), num(r.p50), num(r.p95), num(r.p99), num(r.rss_mib or None),
            num(r.per_100k(r.files), "{:.1f}"), num(r.per_100k(r.commits), "{:.1f}"), str(r.failed)]


def report(rows: list[Row], args, markdown: bool, load_before: float) -> None:
    print(f"machine: {machine()}; load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after "
          "(other processes compete for the cores when it is above the handler's own use)")
    print(f"corpus: {BATCH}-event /v1/batch bodies (~{rows[0].bytes / rows[0].events:.0f} bytes/event); "
          f"flush gather {args.flush_interval_ms or 20} ms, min interval "
          f"{200 if args.flush_min_interval_ms is None else args.flush_min_interval_ms} ms; saturation on {args.connections} connections; "
          f"fixed load {args.rate} events/s" + "".join(f"; {s}" for s in args.set))
    table = [COLUMNS] + [cells(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    for i, row in enumerate(table):
        print("  ".join(c.rjust(w) if j > 1 else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("notes:")
    for r in rows:
        if r.note:
            print(f"  {r.scenario} ({r.lake}): {r.note}")
    floor = None
    base = next((r for r in rows if r.scenario == "baseline"), None)
    print("ratios:")
    for r in rows:
        # A run's floor comes before its other scenarios.
        if r.scenario == "floor":
            floor = r
        if r.scenario not in ("saturation", "ingest"):
            continue
        parts = []
        if floor:
            parts.append(f"floor/handler {floor.events_per_s / r.events_per_s:.2f}x events/s, "
                         f"{floor.per_core / r.per_core:.2f}x events per CPU second")
        if base:
            parts.append(f"handler/baseline {r.events_per_s / base.events_per_s:.1f}x events/s")
        print(f"  {r.scenario} ({r.lake}): " + "; ".join(parts))
    if markdown:
        print()
        print("| " + " | ".join(COLUMNS) + " |")
        print("|" + "|".join(["---"] * 2 + ["---:"] * (len(COLUMNS) - 2)) + "|")
        for r in rows:
            print("| " + " | ".join(cells(r)) + " |")


def compare(before: list[list[Row]], after: list[list[Row]], names: tuple[str, str]) -> None:
    """Each scenario of the runs of two builds, alternating: the range of each figure, and of the ratio in each pair."""
    print(f"versus: {names[0]} → {names[1]}, {len(after)} alternating run(s) of each")
    def span(vals: list[float], fmt: str = "{:,.0f}") -> str:
        lo, hi = fmt.format(min(vals)), fmt.format(max(vals))
        return lo if lo == hi else f"{lo}–{hi}"

    for first in after[0]:
        key = (first.scenario, first.lake)
        pairs = [(next(r for r in b if (r.scenario, r.lake) == key), next(r for r in a if (r.scenario, r.lake) == key))
                 for b, a in zip(before, after)]
        parts = []
        for label, get in (("events per CPU second", lambda r: r.per_core), ("events/s", lambda r: r.events_per_s)):
            ratios = [get(a) / get(b) for b, a in pairs if get(b) > 0]
            parts.append(f"{label} {span([get(b) for b, _ in pairs])} → {span([get(a) for _, a in pairs])}"
                         + (f" ({span(ratios, '{:.2f}')}x in each pair)" if ratios else ""))
        for label, get in (("p50 ms", lambda r: r.p50), ("p99 ms", lambda r: r.p99),
                           ("peak RSS MiB", lambda r: r.rss_mib or None)):
            if all(get(r) is not None for pair in pairs for r in pair):
                parts.append(f"{label} {span([get(b) for b, _ in pairs])} → {span([get(a) for _, a in pairs])}")
        print(f"  {key[0]} ({key[1]}): " + "; ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k events, local lake, short fixed load, small backfill")
    ap.add_argument("--events", type=int, help="events sent at saturation (default 200k; --quick 20k)")
    ap.add_argument("--rate", type=int, default=5_000, help="fixed offered load, events/s (default 5000)")
    ap.add_argument("--seconds", type=float, help="duration of the fixed load (default 20; --quick 3)")
    ap.add_argument("--connections", type=int, default=64, help="connections at saturation (default 64)")
    ap.add_argument("--ingest-events", type=int, help="events of the backfill file (default 1M; --quick 20k)")
    ap.add_argument("--baseline-events", type=int, help="events through the baseline (default 10k; --quick 1k)")
    ap.add_argument("--lakes", default="local,azurite", help="comma-separated: local, azurite")
    ap.add_argument("--flush-interval-ms", type=int, default=0, help="SEGMENT_DELTA_FLUSH_INTERVAL_MS (default: unset)")
    ap.add_argument("--flush-min-interval-ms", type=int,
                    help="SEGMENT_DELTA_FLUSH_MIN_INTERVAL_MS (default: unset)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="another setting of the handler (the handler sees no SEGMENT_DELTA_* variable of this "
                         "process's environment); repeatable, printed with the results")
    ap.add_argument("--sdk-events", type=int, help="track calls of the sequential SDK client (default 5k; --quick 1k)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--debug", action="store_true", help="use (and build) the debug binaries")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build")
    ap.add_argument("--bin-dir", help="directory holding segment-delta and bench-floor (implies --no-build)")
    ap.add_argument("--versus", metavar="DIR",
                    help="another build's segment-delta and bench-floor (an earlier commit's, say): every scenario "
                         "but the baseline runs with those and with these, alternating, and a comparison follows")
    ap.add_argument("--repeat", type=int, help="runs of each build with --versus (default 3)")
    ap.add_argument("--workdir", help="keep lakes, logs and corpus here instead of a temporary directory")
    ap.add_argument("--corpus-dir", help="cache the generated corpus here")
    ap.add_argument("--skip", default="", help="comma-separated scenarios to skip: saturation, fixed, sdk, "
                                                "ingest, floor, baseline")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = ap.parse_args()
    defaults = {"events": (200_000, 20_000), "seconds": (20, 3), "ingest_events": (1_000_000, 20_000),
                "baseline_events": (10_000, 1_000), "sdk_events": (5_000, 1_000)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.quick:
        args.lakes = "local" if args.lakes == ap.get_default("lakes") else args.lakes
    if args.repeat is not None and not args.versus:
        raise SystemExit("--repeat goes with --versus")
    if args.repeat is not None and args.repeat < 1:
        raise SystemExit(f"--repeat {args.repeat}: a count of runs, 1 or more")
    load_before = os.getloadavg()[0]
    skip = set(filter(None, args.skip.split(",")))
    lakes = [k for k in args.lakes.split(",") if k]
    bin_dir = binaries(args)
    versus = Path(args.versus) if args.versus else None
    for d in filter(None, (versus, bin_dir)):
        for exe in ("segment-delta", "bench-floor"):
            if not os.access(d / exe, os.X_OK):
                raise SystemExit(f"{d / exe} not found: build it or pass --bin-dir / --versus")
    repeat = args.repeat or 3

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="segment-delta-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    corpus_dir = Path(args.corpus_dir) if args.corpus_dir else workdir
    corpus_dir.mkdir(parents=True, exist_ok=True)
    fixed_events = max(BATCH, int(args.rate * args.seconds) // BATCH * BATCH)
    http_events = max(args.events, fixed_events)
    need = max(http_events, 0 if "ingest" in skip else args.ingest_events)
    events_file = corpus(corpus_dir, need, args.seed)
    bodies = batch_bodies(events_file, http_events, workdir / "bodies.jsonl")
    saturation_bodies = bodies[:args.events // BATCH]
    fixed_bodies = bodies[:fixed_events // BATCH]
    ingest_file = None
    if "ingest" not in skip:
        ingest_file = head_lines(events_file, args.ingest_events,
                                 corpus_dir / f"events-{args.ingest_events}-s{args.seed}.jsonl")
    log(f"workdir {workdir}; binaries {bin_dir}")

    saturation_file = workdir / "saturation-bodies.jsonl"
    if "floor" not in skip:
        saturation_file.write_bytes(b"\n".join(saturation_bodies) + b"\n")

    def run(bin_dir: Path) -> list[Row]:
        """Every scenario but the baseline, with the binaries of `bin_dir`."""
        rows: list[Row] = []
        if "floor" not in skip:
            rows.append(floor_scenario(bin_dir, saturation_file, os.cpu_count() or 2))
        for kind in lakes:
            if "saturation" not in skip:
                rows.append(http_scenario(args, bin_dir, workdir, kind, azurite, "saturation", saturation_bodies,
                                          args.connections, None))
            if "fixed" not in skip:
                name = f"fixed {args.rate}/s"
                # Enough connections that a send never waits for a free one at the offered rate.
                connections = max(8, args.connections)
                rows.append(http_scenario(args, bin_dir, workdir, kind, azurite, name, fixed_bodies, connections,
                                          args.rate))
            if "sdk" not in skip:
                rows.append(sdk_scenario(args, bin_dir, workdir, kind, azurite, args.sdk_events))
            if "ingest" not in skip:
                rows.append(ingest_scenario(bin_dir, workdir, kind, azurite, ingest_file, args.ingest_events))
        return rows

    # The runs of the other build and of this one.
    before: list[list[Row]] = []
    after: list[list[Row]] = []
    azurite = Azurite(workdir) if "azurite" in lakes else None
    try:
        for i in range(repeat if versus else 1):
            if versus:
                log(f"run {i + 1} of {repeat}: {versus}")
                before.append(run(versus))
                log(f"run {i + 1} of {repeat}: {bin_dir}")
            after.append(run(bin_dir))
        rows = [r for each in after for r in each]
        if "baseline" not in skip:
            rows.append(baseline_scenario(workdir, workdir / "bodies.jsonl", args.baseline_events))
    finally:
        if azurite:
            azurite.stop()
    report(rows, args, args.markdown, load_before)
    if versus:
        compare(before, after, (str(versus), str(bin_dir)))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
