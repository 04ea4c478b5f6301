"""End-to-end harness: runs the real `segment-delta` binary and reads what it wrote with the Python
`deltalake` package (delta-rs through pyarrow), a reader independent of the server's own code.

The binary comes from SEGMENT_DELTA_BIN, else `${CARGO_TARGET_DIR:-target}/debug/segment-delta` under the repo
root. The event corpus comes from the project's own generator, `tests/fixtures/corpus.py`. Tests of a lake on
Azure Blob Storage run against Azurite: AZURITE_BLOB_BIN, else
`$HOME/.cache/segment-delta/node/node_modules/.bin/azurite-blob` (`npm install --prefix
"$HOME/.cache/segment-delta/node" azurite@3`); those tests fail when it is missing.
"""

from __future__ import annotations

import base64
import contextlib
import gzip as gzip_module
import itertools
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest
import requests
from azure.storage.blob import BlobServiceClient
from deltalake import DeltaTable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
import corpus as corpus_module  # noqa: E402  (the project's event corpus generator)

FLUSH_INTERVAL_MS = "200"
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 60
HTTP_TIMEOUT_S = 120

# Servers running right now; their stderr is attached to the report of any test that fails meanwhile.
LIVE: list["Server"] = []


def binary() -> Path:
    explicit = os.environ.get("SEGMENT_DELTA_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or "target")
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "segment-delta"


@pytest.fixture(scope="session", autouse=True)
def _prerequisites():
    bin_path = binary()
    if not (bin_path.is_file() and os.access(bin_path, os.X_OK)):
        pytest.fail(f"segment-delta binary not found at {bin_path}: build it (cargo build) or set SEGMENT_DELTA_BIN",
                    pytrace=False)


# ---------------------------------------------------------------------------------------------------------------
# The corpus


def generate(count: int, seed: int = 7, batch: int = 0) -> list[bytes]:
    """The corpus (tests/fixtures/corpus.py) as JSON texts: one per event, or /v1/batch bodies of `batch` events."""
    return corpus_module.batch_bodies(count, seed, batch) if batch else corpus_module.event_lines(count, seed)


def go_snakecase(name: str) -> str:
    """go-snakecase for plain names (event names, the corpus's keys): non-alphanumerics separate words, camelCase
    splits before an upper-case letter that follows lower-case ones, acronym runs stay glued."""
    words = []
    for chunk in re.split(r"[^A-Za-z0-9]+", name):
        words += [w.lower() for w in re.findall(r"[A-Z0-9]*[a-z0-9]*", chunk) if w]
    return "_".join(words)


TYPE_TABLES = {"track": "tracks", "identify": "identifies", "page": "pages", "screen": "screens",
               "group": "groups", "alias": "aliases"}


def tables_of(event: dict) -> list[str]:
    tables = [TYPE_TABLES[event["type"]]]
    if event["type"] == "track":
        tables.append(go_snakecase(event["event"]))
    return tables


def parse_ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc)


def looks_like_timestamp(s: str) -> bool:
    return len(s) >= 19 and s[4] == "-" and s[7] == "-" and s[10] in "Tt " and s[13] == ":"


def flatten(obj: dict, prefix: str = "", out: dict | None = None) -> dict:
    """Warehouse columns of a JSON object: nested objects joined with `_`, snake_cased, nulls dropped."""
    out = {} if out is None else out
    for key, value in obj.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flatten(value, path, out)
        elif value is not None:
            out[go_snakecase(path)] = value
    return out


def expected_row(event: dict, table: str) -> dict:
    """Every column of `table` that `event` fills, with the value as sent (received_at, timestamp and uuid_ts are
    server-side and checked apart)."""
    kind = event["type"]
    row = {"id": event["messageId"], "anonymous_id": event.get("anonymousId"), "user_id": event.get("userId"),
           "sent_at": event.get("sentAt"), "original_timestamp": event.get("timestamp")}
    if kind == "track":
        row["event"] = go_snakecase(event["event"])
        row["event_text"] = event["event"]
    elif kind in ("page", "screen"):
        row["name"] = event.get("name")
        row["category"] = event.get("category")
    elif kind == "group":
        row["group_id"] = event["groupId"]
    elif kind == "alias":
        row["previous_id"] = event["previousId"]
    flatten(event.get("context") or {}, "context", row)
    if table not in ("tracks", "aliases"):
        flatten(event.get("properties") or event.get("traits") or {}, "", row)
    return {k: v for k, v in row.items() if v is not None}


SERVER_SIDE_COLUMNS = {"received_at", "timestamp", "uuid_ts"}


def assert_row_matches(row: dict, event: dict, table: str) -> None:
    """The row holds exactly what the event says: each value typed as the warehouse types it, nothing else."""
    want = expected_row(event, table)
    where = f"{table} row {event['messageId']}"
    for column, sent in want.items():
        assert column in row, f"{where}: no column {column}"
        got = row[column]
        if isinstance(sent, (list,)):
            assert isinstance(got, str) and json.loads(got) == sent, f"{where}.{column}: {got!r} != JSON of {sent!r}"
        elif isinstance(sent, str) and looks_like_timestamp(sent):
            assert got == parse_ts(sent), f"{where}.{column}: {got!r} != {sent!r}"
        elif isinstance(sent, bool):
            assert got is sent, f"{where}.{column}: {got!r} != {sent!r}"
        else:
            assert got == sent and type(got) is type(sent), f"{where}.{column}: {got!r} != {sent!r}"
    extra = {c: v for c, v in row.items() if v is not None and c not in want and c not in SERVER_SIDE_COLUMNS}
    assert not extra, f"{where}: columns the event does not fill: {extra}"
    # Segment's clock-skew correction, to the microsecond.
    received = row["received_at"]
    if "sent_at" in want and "original_timestamp" in want:
        assert row["timestamp"] == received - (parse_ts(want["sent_at"]) - parse_ts(want["original_timestamp"])), where
    assert row["uuid_ts"] >= received, where


# The corpus through a server: 5,000 events as ten /v1/batch bodies, and what the tables must then hold. Shared by
# the local lake (test_corpus.py) and the lake on Azurite (test_azurite.py).

CORPUS_COUNT, CORPUS_BATCH = 5_000, 500
CORPUS_GZIPPED = {1, 4, 8}  # which bodies go gzip-compressed


@pytest.fixture(scope="session")
def corpus() -> tuple[list[bytes], list[dict]]:
    """The corpus's /v1/batch bodies and their events."""
    bodies = generate(CORPUS_COUNT, seed=7, batch=CORPUS_BATCH)
    assert len(bodies) == CORPUS_COUNT // CORPUS_BATCH
    events = [e for body in bodies for e in json.loads(body)["batch"]]
    assert len(events) == CORPUS_COUNT
    return bodies, events


@dataclass
class LoadedCorpus:
    server: "Server"
    events: list[dict]
    answers: list[tuple[int, int, str]]  # (body index, status, answer text)
    before: datetime
    after: datetime


def send_corpus(server: "Server", corpus, key: str | None = None, one_by_one: int = 2,
                threads: int = 4) -> LoadedCorpus:
    """Sends the corpus's bodies: `one_by_one` one after the other, then the rest over `threads` threads."""
    bodies, events = corpus
    before = datetime.now(timezone.utc)

    def send(i):
        r = server.post("/v1/batch", bodies[i], gzip=i in CORPUS_GZIPPED, key=key)
        return i, r.status_code, r.text

    answers = [send(i) for i in range(one_by_one)]
    with ThreadPoolExecutor(threads) as pool:
        answers += list(pool.map(send, range(one_by_one, len(bodies))))
    return LoadedCorpus(server, events, answers, before, datetime.now(timezone.utc))


def check_corpus_acknowledged(loaded: LoadedCorpus) -> None:
    bad = [(i, status, text) for i, status, text in loaded.answers
           if status != 200 or json.loads(text) != {"success": True}]
    assert not bad


def check_corpus_tables(loaded: LoadedCorpus) -> None:
    """Each table holds exactly the ids of its events, each once."""
    server, events = loaded.server, loaded.events
    want: dict[str, set[str]] = {}
    for e in events:
        for table in tables_of(e):
            want.setdefault(table, set()).add(e["messageId"])
    kinds = Counter(e["type"] for e in events)
    assert len(want["tracks"]) == kinds["track"]
    assert {t: len(want[t]) for t in ("pages", "identifies", "screens", "groups", "aliases")} == {
        "pages": kinds["page"], "identifies": kinds["identify"], "screens": kinds["screen"],
        "groups": kinds["group"], "aliases": kinds["alias"]}
    assert len(want) == 6 + 40, "the corpus has 40 track event names"

    assert server.tables() - {"discards"} == set(want)
    counts, missing, unexpected = {}, {}, {}
    for table, ids in want.items():
        got = server.read(table).column("id").to_pylist()
        counts[table] = len(got)
        if set(got) != ids:
            missing[table] = sorted(ids - set(got))[:5]
            unexpected[table] = sorted(set(got) - ids)[:5]
    assert counts == {t: len(ids) for t, ids in want.items()}
    assert not missing and not unexpected


def check_corpus_no_discards(loaded: LoadedCorpus) -> None:
    discards = read_discards(loaded.server.lake)
    assert not discards, f"{len(discards)} discards for a clean corpus:\n{describe(discards)}"


def check_corpus_columns_and_types(loaded: LoadedCorpus) -> None:
    server, events = loaded.server, loaded.events
    schema = server.read("order_completed").schema
    ts = pa.timestamp("us", tz="UTC")
    want = {
        "id": pa.string(), "anonymous_id": pa.string(), "user_id": pa.string(),
        "received_at": ts, "sent_at": ts, "timestamp": ts, "original_timestamp": ts, "uuid_ts": ts,
        "event": pa.string(), "event_text": pa.string(),
        "revenue": pa.float64(), "currency": pa.string(), "category": pa.string(), "order_id": pa.string(),
        "products": pa.string(), "shipping_method": pa.string(), "shipping_cost": pa.float64(),
        "shipping_address_city": pa.string(), "shipping_address_country": pa.string(), "coupon": pa.string(),
        "is_first_time": pa.bool_(), "item_count": pa.int64(),
        "context_library_name": pa.string(), "context_library_version": pa.string(), "context_ip": pa.string(),
        "context_user_agent": pa.string(), "context_network_wifi": pa.bool_(), "context_screen_width": pa.int64(),
        "context_screen_density": pa.int64(), "context_page_url": pa.string(), "context_campaign_name": pa.string(),
        "context_app_build": pa.string(), "context_os_version": pa.string(),
    }
    got = {f.name: f.type for f in schema}
    assert {c: got.get(c) for c in want} == want
    # No column that no Order Completed event fills (the camelCase/space keys only in their snake_case spelling).
    assert not {"isFirstTime", "item Count", "is_firsttime", "itemcount", "properties", "context"} & set(got)
    filled = set()
    for e in events:
        if e["type"] == "track" and e["event"] == "Order Completed":
            filled |= set(expected_row(e, "order_completed"))
    assert set(got) == filled | {"received_at", "timestamp", "uuid_ts"}

    identifies = {f.name: f.type for f in server.read("identifies").schema}
    assert identifies["created_at"] == ts and identifies["logins"] == pa.int64()
    assert identifies["company_employee_count"] == pa.int64() and identifies["address_postal_code"] == pa.string()
    assert {f.name: f.type for f in server.read("groups").schema}["employees"] == pa.int64()


def _pick(events, predicate, what):
    for e in events:
        if predicate(e):
            return e
    raise AssertionError(f"the corpus has no {what}")


def corpus_samples(events: list[dict]) -> list[dict]:
    """One event of each kind worth a close look; the first is a web Order Completed with a coupon."""
    lib = lambda e: e["context"]["library"]["name"]
    props = lambda e: e.get("properties", {})
    return [
        _pick(events, lambda e: e.get("event") == "Order Completed" and props(e).get("coupon")
              and lib(e) == "analytics.js", "web Order Completed with a coupon"),
        _pick(events, lambda e: e.get("event") == "Order Completed" and props(e).get("coupon") is None
              and lib(e) != "analytics.js", "mobile Order Completed without coupon"),
        _pick(events, lambda e: e["type"] == "track" and "userId" not in e, "anonymous track"),
        _pick(events, lambda e: e.get("event", "").startswith("Video"), "video event"),
        _pick(events, lambda e: e.get("event") == "Experiment Viewed", "Experiment Viewed"),
        _pick(events, lambda e: e["type"] == "page", "page"),
        _pick(events, lambda e: e["type"] == "identify", "identify"),
        _pick(events, lambda e: e["type"] == "screen", "screen"),
        _pick(events, lambda e: e["type"] == "group", "group"),
        _pick(events, lambda e: e["type"] == "alias", "alias"),
    ]


def check_corpus_sample_rows(loaded: LoadedCorpus) -> None:
    server, events = loaded.server, loaded.events
    cache = {}
    checked = 0
    for event in corpus_samples(events):
        for table in tables_of(event):
            if table not in cache:
                cache[table] = {r["id"]: r for r in server.read(table).to_pylist()}
            row = cache[table].get(event["messageId"])
            assert row is not None, f"{event['messageId']} not in {table}"
            assert_row_matches(row, event, table)
            checked += 1
    assert checked >= 14


def check_corpus_specific_values(loaded: LoadedCorpus) -> None:
    """A few columns spelled out, so a failure reads plainly."""
    server, events = loaded.server, loaded.events
    e = corpus_samples(events)[0]
    row = next(r for r in server.read("order_completed").to_pylist() if r["id"] == e["messageId"])
    p = e["properties"]
    assert row["event"] == "order_completed" and row["event_text"] == "Order Completed"
    assert row["revenue"] == p["revenue"] and row["item_count"] == p["item Count"]
    assert row["is_first_time"] is p["isFirstTime"]
    assert row["shipping_address_city"] == p["shipping"]["address"]["city"]
    assert json.loads(row["products"]) == p["products"]
    assert row["coupon"] == p["coupon"]
    assert row["context_library_name"] == "analytics.js"
    assert row["context_page_url"] == e["context"]["page"]["url"]
    assert row["original_timestamp"] == parse_ts(e["timestamp"])
    assert row["timestamp"] == row["received_at"] - (parse_ts(e["sentAt"]) - parse_ts(e["timestamp"]))


def check_corpus_track_timestamps(loaded: LoadedCorpus) -> None:
    """For every track row: ids, sent_at and original_timestamp as sent, received_at within the sending window,
    timestamp skew-corrected from received_at, uuid_ts no earlier than received_at."""
    server, events, before, after = loaded.server, loaded.events, loaded.before, loaded.after
    by_id = {e["messageId"]: e for e in events if e["type"] == "track"}
    wrong = []
    for row in server.read("tracks").to_pylist():
        e = by_id[row["id"]]
        sent, original = parse_ts(e["sentAt"]), parse_ts(e["timestamp"])
        checks = {
            "user_id": row["user_id"] == e.get("userId"),
            "anonymous_id": row["anonymous_id"] == e.get("anonymousId"),
            "event": row["event"] == go_snakecase(e["event"]) and row["event_text"] == e["event"],
            "sent_at": row["sent_at"] == sent,
            "original_timestamp": row["original_timestamp"] == original,
            "received_at": before <= row["received_at"] <= after,
            "timestamp": row["timestamp"] == row["received_at"] - (sent - original),
            "uuid_ts": row["received_at"] <= row["uuid_ts"] <= after,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            wrong.append((row["id"], bad))
    assert not wrong, wrong[:10]


# ---------------------------------------------------------------------------------------------------------------
# The server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(overrides: dict[str, str]) -> dict[str, str]:
    """The caller's environment without any segment-delta, Functions, Azure or Azurite setting, then the test's
    own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SEGMENT_DELTA_", "FUNCTIONS_", "AZURE_", "AZURITE_", "IDENTITY_", "MSI_"))}
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def tail(path: Path, limit: int = 20_000) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    text = data[-limit:].decode("utf-8", "replace")
    return ("...\n" if len(data) > limit else "") + text


class Server:
    """One `segment-delta serve` process on a free port with its own lake: `<workdir>/lake`, or `lake` when given
    (a lake on Azurite, possibly shared with other servers)."""

    def __init__(self, workdir: Path, lake: "AzuriteLake | None" = None, *, memory_cap: int | None = None,
                 **env: str):
        self.workdir = workdir
        # A limit on the process's data segment (setrlimit RLIMIT_DATA, as `prlimit --data` sets it).
        self.memory_cap = memory_cap
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lake: Path | AzuriteLake = workdir / "lake" if lake is None else lake
        lake_env = {"SEGMENT_DELTA_LAKE": str(self.lake)} if lake is None else lake.server_env()
        self.stderr_path = workdir / "server.stderr"
        self.env = {**lake_env, "SEGMENT_DELTA_FLUSH_INTERVAL_MS": FLUSH_INTERVAL_MS,
                    "SEGMENT_DELTA_LOG_FORMAT": "text", "NO_COLOR": "1", **env}
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        for _attempt in range(3):
            self.port = free_port()
            env = clean_env({**self.env, "FUNCTIONS_CUSTOMHANDLER_PORT": str(self.port)})
            with open(self.stderr_path, "ab") as err:
                self.proc = subprocess.Popen([str(binary()), "serve"], env=env, cwd=self.workdir,
                                             stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                             preexec_fn=self._limits if self.memory_cap else None)
            if self._wait_until_up():
                LIVE.append(self)
                return self
            if "cannot listen" not in tail(self.stderr_path):
                break  # not a port race: don't retry
        raise AssertionError(f"segment-delta did not come up (exit {self.proc.poll()}):\n{tail(self.stderr_path)}")

    def _limits(self) -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (self.memory_cap, self.memory_cap))

    def memory(self) -> dict[str, int]:
        """The process's resident memory now and at its peak, in bytes (VmRSS and VmHWM)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        found = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
        return {k: int(v) * 1024 for k, v in found.items()}

    def reset_peak(self) -> None:
        """Starts measuring the peak resident memory afresh (writing 5 to clear_refs resets VmHWM)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def _wait_until_up(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if requests.get(self.url + "/", timeout=2).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        return False

    def stop(self) -> int:
        """SIGTERM, then the exit code (the server flushes what it accepted and exits 0)."""
        if self in LIVE:
            LIVE.remove(self)
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9999

    def stderr(self) -> str:
        return tail(self.stderr_path)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.get("/").status_code == 200

    # HTTP -------------------------------------------------------------------------------------------------------
    # Each request opens its own connection: keep-alive reuse is tested on its own (test_limits.py), so that a
    # problem there fails one test instead of whichever request happens to come next.

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=HTTP_TIMEOUT_S)

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, self.url + path, timeout=HTTP_TIMEOUT_S, **kwargs)

    def post(self, path: str, body, *, key: str | None = None, gzip: bool = False,
             headers: dict | None = None) -> requests.Response:
        """POSTs `body` (a dict/list is sent as JSON, str/bytes as is), optionally gzipped, with the write key as
        the Basic user name when `key` is given."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode("utf-8")
        h = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            h["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        if gzip:
            body = gzip_module.compress(body)
            h["Content-Encoding"] = "gzip"
        return requests.post(self.url + path, data=body, headers=h, timeout=HTTP_TIMEOUT_S)

    # The lake ---------------------------------------------------------------------------------------------------

    def tables(self, schema: str = "segment") -> set[str]:
        return lake_tables(self.lake, schema)

    def read(self, table: str, schema: str = "segment") -> pa.Table:
        return read_table(self.lake, schema, table)

    def files(self) -> set[str]:
        if isinstance(self.lake, AzuriteLake):
            return self.lake.files()
        return {str(p.relative_to(self.lake)) for p in self.lake.rglob("*")} if self.lake.exists() else set()


def lake_tables(lake: "Path | AzuriteLake", schema: str = "segment") -> set[str]:
    if isinstance(lake, AzuriteLake):
        return lake.tables(schema)
    root = lake / schema
    if not root.is_dir():
        return set()
    return {p.name for p in root.iterdir() if (p / "_delta_log").is_dir()}


def read_table(lake: "Path | AzuriteLake", schema: str, table: str) -> pa.Table:
    if isinstance(lake, AzuriteLake):
        return lake.read(table, schema)
    path = lake / schema / table
    assert DeltaTable.is_deltatable(str(path)), f"{schema}.{table} is not a Delta table (tables: {lake_tables(lake, schema)})"
    return DeltaTable(str(path)).to_pyarrow_table()


def rows_by_id(table: pa.Table) -> dict[str, dict]:
    rows = table.to_pylist()
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "duplicate ids in a table"
    return by_id


def read_discards(lake: "Path | AzuriteLake", schema: str = "segment") -> list[dict]:
    if "discards" not in lake_tables(lake, schema):
        return []
    return read_table(lake, schema, "discards").to_pylist()


def describe(rows: list[dict], limit: int = 20) -> str:
    shown = [{k: (v[:200] + "..." if isinstance(v, str) and len(v) > 200 else v) for k, v in r.items()}
             for r in rows[:limit]]
    return json.dumps(shown, indent=1, default=str) + (f"\n... and {len(rows) - limit} more" if len(rows) > limit else "")


# ---------------------------------------------------------------------------------------------------------------
# A second reader (DuckDB with its delta extension), Python deltalake's DataFusion scan (for the tables its pyarrow
# path does not read: deletion vectors, column mapping), and the raw log of a local table.


def duckdb_extension() -> Path:
    """The delta extension shipped by the PyPI package `duckdb-extension-delta` for the installed DuckDB (DuckDB's
    own `INSTALL delta` downloads it, which a machine without that network access cannot do)."""
    import duckdb
    import duckdb_extension_delta

    package = Path(duckdb_extension_delta.__file__).parent
    path = package / "extensions" / f"v{duckdb.__version__}" / "delta.duckdb_extension"
    assert path.is_file(), f"no delta extension for DuckDB {duckdb.__version__} at {path}"
    return path


def duckdb_rows(table_path: "Path | str") -> list[dict]:
    """Every row of the Delta table at `table_path` (a local directory) as DuckDB's `delta_scan` reads it, as
    dicts; timestamps with time zone come back in UTC."""
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"})
    try:
        con.execute(f"LOAD '{duckdb_extension()}'")
        con.execute("SET TimeZone = 'UTC'")
        location = str(table_path).replace("'", "''")
        cursor = con.execute(f"SELECT * FROM delta_scan('{location}')")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, values)) for values in cursor.fetchall()]
    finally:
        con.close()


def deltalake_scan(table_path: "Path | str") -> pa.Table:
    """The table as Python deltalake's DataFusion scan reads it (column mapping and deletion vectors included)."""
    return pa.RecordBatchReader.from_stream(DeltaTable(str(table_path)).scan()).read_all()


def deltalake_rows(table_path: "Path | str") -> list[dict]:
    """Every row as Python deltalake reads it: `to_pyarrow_table()`, or its DataFusion scan for the tables whose
    reader features the pyarrow path does not support (deletion vectors, column mapping on 3/7, ...) and for
    column-mapped tables (on a 2/5 protocol the pyarrow path of deltalake 1.6 returns every column null)."""
    dt = DeltaTable(str(table_path))
    if dt.metadata().configuration.get("delta.columnMapping.mode", "none").lower() != "none":
        return deltalake_scan(table_path).to_pylist()
    try:
        return dt.to_pyarrow_table().to_pylist()
    except Exception as e:  # deltalake.exceptions.DeltaProtocolError
        if "not yet supported by the deltalake reader" not in str(e):
            raise
    return deltalake_scan(table_path).to_pylist()


def local_delta_log(table_path: "Path | str") -> dict[int, list[dict]]:
    """A local table's JSON commits: version → its actions, in file order."""
    commits = {}
    for path in sorted((Path(table_path) / "_delta_log").glob("*.json")):
        if re.fullmatch(r"\d{20}\.json", path.name):
            commits[int(path.stem)] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return commits


@contextlib.contextmanager
def running_server(workdir: Path, lake: "AzuriteLake | None" = None, *, memory_cap: int | None = None,
                   **env: str):
    """Starts a server, yields it, then SIGTERMs it and asserts a clean exit."""
    server = Server(workdir, lake, memory_cap=memory_cap, **env).start()
    try:
        yield server
    finally:
        rc = server.stop()
        assert rc == 0, f"segment-delta exited with {rc} after SIGTERM:\n{server.stderr()}"


@pytest.fixture
def start_server(tmp_path):
    """Factory: `start_server(**env)` starts another server (each with a fresh local lake, or on `lake=` when
    given); all are stopped after the test, and each must exit 0."""
    stack = contextlib.ExitStack()
    count = 0

    def start(lake: "AzuriteLake | None" = None, *, memory_cap: int | None = None, **env: str) -> Server:
        nonlocal count
        count += 1
        return stack.enter_context(running_server(tmp_path / f"server{count}", lake, memory_cap=memory_cap, **env))

    with stack:
        yield start


@pytest.fixture
def server(start_server) -> Server:
    """A server in local mode (any write key, schema `segment`); `.url` is its address."""
    return start_server()


# ---------------------------------------------------------------------------------------------------------------
# Azurite: a lake on (emulated) Azure Blob Storage

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development account key (published in its documentation; it guards nothing).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_START_TIMEOUT_S = 60

# Azurite processes running right now; the log of one that died is attached to the report of a failing test.
AZURITES: list["Azurite"] = []


def azurite_blob_bin() -> Path:
    explicit = os.environ.get("AZURITE_BLOB_BIN")
    if explicit:
        return Path(explicit)
    return Path.home() / ".cache" / "segment-delta" / "node" / "node_modules" / ".bin" / "azurite-blob"


class Azurite:
    """One `azurite-blob` process on a free port, keeping its data under `workdir`."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.log_path = workdir / "azurite.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.service: BlobServiceClient | None = None
        self._containers = itertools.count(1)

    @property
    def url(self) -> str:
        """What the server takes as AZURITE_BLOB_STORAGE_URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def blob_endpoint(self) -> str:
        return f"{self.url}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.blob_endpoint};")

    def start(self) -> "Azurite":
        for _attempt in range(3):
            self.port = free_port()
            cmd = [str(azurite_blob_bin()), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                   "--location", str(self.workdir / "data"), "--silent", "--skipApiVersionCheck"]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            if self._wait_until_up():
                self.service = BlobServiceClient.from_connection_string(self.connection_string)
                AZURITES.append(self)
                return self
            if "EADDRINUSE" not in tail(self.log_path):
                break  # not a port race: don't retry
        raise AssertionError(f"azurite-blob did not come up (exit {self.proc.poll()}):\n{tail(self.log_path)}")

    def _wait_until_up(self) -> bool:
        deadline = time.monotonic() + AZURITE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        return False

    def stop(self) -> None:
        """Stops it; the data are disposable, so it is not given long to close its connections."""
        if self in AZURITES:
            AZURITES.remove(self)
        if self.service is not None:
            self.service.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def new_lake(self, hint: str, prefix: str = "lake") -> "AzuriteLake":
        """A lake in a new container named after `hint` (a test's name)."""
        name = re.sub(r"[^a-z0-9]+", "-", hint.lower())[:50].strip("-") or "lake"
        container = f"{name}-{next(self._containers)}"
        self.service.create_container(container)
        return AzuriteLake(self, container, prefix)


class AzuriteLake:
    """A lake at `az://<container>/<prefix>` on Azurite. Read back with deltalake through the Blob endpoint and
    the account key, and listed with azure-storage-blob: nothing of the server's own storage setup."""

    def __init__(self, azurite: Azurite, container: str, prefix: str):
        self.azurite = azurite
        self.container = container
        self.prefix = prefix.strip("/")

    @property
    def uri(self) -> str:
        return f"az://{self.container}/{self.prefix}"

    def __str__(self) -> str:
        return self.uri

    def server_env(self) -> dict[str, str]:
        return {"SEGMENT_DELTA_LAKE": self.uri, "SEGMENT_DELTA_STORAGE_EMULATOR": "true",
                "AZURITE_BLOB_STORAGE_URL": self.azurite.url}

    @property
    def storage_options(self) -> dict[str, str]:
        # Not `use_emulator`: deltalake's Azure store then ignores the endpoint option and reads
        # AZURITE_BLOB_STORAGE_URL from this process's environment (or assumes port 10000).
        return {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY,
                "azure_storage_endpoint": self.azurite.blob_endpoint, "allow_http": "true"}

    def blob_names(self, under: str = "") -> list[str]:
        """Blob names below the lake root (or below `under` in it), relative to the lake root."""
        start = f"{self.prefix}/{under.strip('/')}/" if under.strip("/") else f"{self.prefix}/"
        client = self.azurite.service.get_container_client(self.container)
        return [b.name[len(self.prefix) + 1:] for b in client.list_blobs(name_starts_with=start)]

    def download(self, name: str) -> bytes:
        """A blob's content, by its name relative to the lake root."""
        client = self.azurite.service.get_container_client(self.container)
        return client.download_blob(f"{self.prefix}/{name}").readall()

    def files(self) -> set[str]:
        return set(self.blob_names())

    def tables(self, schema: str = "segment") -> set[str]:
        return {parts[1] for parts in (n.split("/") for n in self.blob_names(schema))
                if len(parts) > 3 and parts[2] == "_delta_log"}

    def table_uri(self, schema: str, table: str) -> str:
        return f"{self.uri}/{schema}/{table}"

    def read(self, table: str, schema: str = "segment") -> pa.Table:
        if not self.blob_names(f"{schema}/{table}/_delta_log"):
            raise AssertionError(f"{schema}.{table} is not a Delta table (tables: {self.tables(schema)})")
        return DeltaTable(self.table_uri(schema, table), storage_options=self.storage_options).to_pyarrow_table()

    def delta_log(self, table: str, schema: str = "segment") -> dict[int, list[dict]]:
        """The table's commits: version → its actions, from the `_delta_log/<version>.json` blobs."""
        commits = {}
        for name in self.blob_names(f"{schema}/{table}/_delta_log"):
            m = re.fullmatch(r".*/_delta_log/(\d{20})\.json", name)
            if m:
                text = self.download(name).decode("utf-8")
                commits[int(m.group(1))] = [json.loads(line) for line in text.splitlines() if line.strip()]
        return commits


@pytest.fixture(scope="session")
def azurite(tmp_path_factory) -> Azurite:
    """Azurite's Blob service, once for the session."""
    path = azurite_blob_bin()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"azurite-blob not found at {path}: install it with `npm install --prefix "
                    f"\"$HOME/.cache/segment-delta/node\" azurite@3` or set AZURITE_BLOB_BIN", pytrace=False)
    server = Azurite(tmp_path_factory.mktemp("azurite")).start()
    yield server
    server.stop()


@pytest.fixture
def azurite_lake(azurite, request) -> AzuriteLake:
    """A lake in a container of its own for this test."""
    return azurite.new_lake(request.node.name)


# ---------------------------------------------------------------------------------------------------------------
# Reporting


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for s in LIVE:
            report.sections.append((f"segment-delta stderr ({s.url}, {s.stderr_path})", s.stderr()))
        for a in AZURITES:
            if a.proc is not None and a.proc.poll() is not None:
                report.sections.append((f"azurite-blob exited with {a.proc.returncode} ({a.log_path})",
                                        tail(a.log_path)))
    return report


def pytest_terminal_summary(terminalreporter):
    """Figures a test chose to report (`record_property("summary", ...)`), e.g. commits and conflicts."""
    lines = [f"{r.nodeid}: {value}" for reports in terminalreporter.stats.values() for r in reports
             if getattr(r, "when", None) == "call"
             for name, value in getattr(r, "user_properties", ()) if name == "summary"]
    if lines:
        terminalreporter.write_sep("-", "segment-delta figures")
        for line in lines:
            terminalreporter.write_line(line)


@contextlib.contextmanager
def databricks_emulator(workdir: Path, token: str, env: dict[str, str] | None = None):
    """The project's Databricks emulator on a free port with catalog `main`; yields its base URL."""
    exe = binary().parent / "databricks-emulator"
    assert exe.exists(), f"{exe} is missing: build it with `cargo build --workspace`"
    with open(workdir / "emulator.stderr", "ab") as err:
        proc = subprocess.Popen([str(exe), "--port", "0", "--token", token, "--catalog", "main",
                                 "--warehouse-start-ms", "100"], env=clean_env(env or {}), stdout=subprocess.PIPE,
                                stderr=err, stdin=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on "), line
        yield line.removeprefix("listening on ")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
