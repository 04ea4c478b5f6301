"""End-to-end harness: runs the real `segment-delta` binary and reads what it wrote with the Python
`deltalake` package (delta-rs through pyarrow), a reader independent of the server's own code.

The binary comes from SEGMENT_DELTA_BIN, else `${CARGO_TARGET_DIR:-target}/debug/segment-delta` under the repo
root. The shared corpus generator comes from SEGMENT_DELTA_SHARED, else `<repo>/../shared`.
"""

from __future__ import annotations

import base64
import contextlib
import gzip as gzip_module
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest
import requests
from deltalake import DeltaTable

REPO = Path(__file__).resolve().parents[2]
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


def shared_dir() -> Path:
    explicit = os.environ.get("SEGMENT_DELTA_SHARED")
    return Path(explicit) if explicit else (REPO.parent / "shared")


def generator() -> Path:
    return shared_dir() / "fixtures" / "generate_events.py"


@pytest.fixture(scope="session", autouse=True)
def _prerequisites():
    bin_path = binary()
    if not (bin_path.is_file() and os.access(bin_path, os.X_OK)):
        pytest.fail(f"segment-delta binary not found at {bin_path}: build it (cargo build) or set SEGMENT_DELTA_BIN",
                    pytrace=False)
    if not generator().is_file():
        pytest.fail(f"corpus generator not found at {generator()}: set SEGMENT_DELTA_SHARED", pytrace=False)


# ---------------------------------------------------------------------------------------------------------------
# The corpus


def generate(count: int, seed: int = 7, batch: int = 0) -> list[bytes]:
    """Lines printed by the shared generator: events, or /v1/batch bodies when `batch` is set."""
    cmd = [sys.executable, str(generator()), "--count", str(count), "--seed", str(seed)]
    if batch:
        cmd += ["--batch", str(batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, timeout=120).stdout
    return [line for line in out.splitlines() if line.strip()]


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


# ---------------------------------------------------------------------------------------------------------------
# The server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(overrides: dict[str, str]) -> dict[str, str]:
    """The caller's environment without any segment-delta or Functions setting, then the test's own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SEGMENT_DELTA_") and not k.startswith("FUNCTIONS_")}
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
    """One `segment-delta serve` process on a free port with its own lake."""

    def __init__(self, workdir: Path, **env: str):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lake = workdir / "lake"
        self.stderr_path = workdir / "server.stderr"
        self.env = {"SEGMENT_DELTA_LAKE": str(self.lake), "SEGMENT_DELTA_FLUSH_INTERVAL_MS": FLUSH_INTERVAL_MS,
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
                                             stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            if self._wait_until_up():
                LIVE.append(self)
                return self
            if "cannot listen" not in tail(self.stderr_path):
                break  # not a port race: don't retry
        raise AssertionError(f"segment-delta did not come up (exit {self.proc.poll()}):\n{tail(self.stderr_path)}")

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
        return {str(p.relative_to(self.lake)) for p in self.lake.rglob("*")} if self.lake.exists() else set()


def lake_tables(lake: Path, schema: str = "segment") -> set[str]:
    root = lake / schema
    if not root.is_dir():
        return set()
    return {p.name for p in root.iterdir() if (p / "_delta_log").is_dir()}


def read_table(lake: Path, schema: str, table: str) -> pa.Table:
    path = lake / schema / table
    assert DeltaTable.is_deltatable(str(path)), f"{schema}.{table} is not a Delta table (tables: {lake_tables(lake, schema)})"
    return DeltaTable(str(path)).to_pyarrow_table()


def rows_by_id(table: pa.Table) -> dict[str, dict]:
    rows = table.to_pylist()
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "duplicate ids in a table"
    return by_id


def read_discards(lake: Path, schema: str = "segment") -> list[dict]:
    if "discards" not in lake_tables(lake, schema):
        return []
    return read_table(lake, schema, "discards").to_pylist()


def describe(rows: list[dict], limit: int = 20) -> str:
    shown = [{k: (v[:200] + "..." if isinstance(v, str) and len(v) > 200 else v) for k, v in r.items()}
             for r in rows[:limit]]
    return json.dumps(shown, indent=1, default=str) + (f"\n... and {len(rows) - limit} more" if len(rows) > limit else "")


@contextlib.contextmanager
def running_server(workdir: Path, **env: str):
    """Starts a server, yields it, then SIGTERMs it and asserts a clean exit."""
    server = Server(workdir, **env).start()
    try:
        yield server
    finally:
        rc = server.stop()
        assert rc == 0, f"segment-delta exited with {rc} after SIGTERM:\n{server.stderr()}"


@pytest.fixture
def start_server(tmp_path):
    """Factory: `start_server(**env)` starts another server (each with a fresh lake); all are stopped after the
    test, and each must exit 0."""
    stack = contextlib.ExitStack()
    count = 0

    def start(**env: str) -> Server:
        nonlocal count
        count += 1
        return stack.enter_context(running_server(tmp_path / f"server{count}", **env))

    with stack:
        yield start


@pytest.fixture
def server(start_server) -> Server:
    """A server in local mode (any write key, schema `segment`); `.url` is its address."""
    return start_server()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for s in LIVE:
            report.sections.append((f"segment-delta stderr ({s.url}, {s.stderr_path})", s.stderr()))
    return report
