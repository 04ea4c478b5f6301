"""Four `segment-delta serve` processes writing the same tables of one lake on Azurite at once, each flushing
every 50 ms, so that their Delta commits race all the time: creating the tables, appending, and adding columns
(each process brings a column of its own a few batches in, a metadata change the others' commits conflict with).

Every request must be acknowledged, and every acknowledged event must be in `tracks` and in its event table exactly
once. The number of commits (from the Delta log) and of commit-conflict retries (from the servers' "committed"
log lines) are reported in the session summary.
"""

import json
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest

from conftest import go_snakecase

WRITERS = 4
EVENTS_PER_WRITER = 3_000
BATCH = 250
CLIENT_THREADS = 3  # per process
EVENT_NAMES = ["Order Completed", "Product Viewed", "Cart Updated"]
OWN_COLUMN_FROM_BATCH = 4  # from this batch on, writer w's events carry a property `w<w>_late`
KEY = "MANY-KEY"
SCHEMA = "shared"


def commit_lines(stderr: str) -> list[dict[str, str]]:
    """The fields of the server's `committed table=... rows=... conflicts=...` log lines (text format)."""
    return [dict(re.findall(r"(\w+)=(\S+)", line.split(" committed ", 1)[1]))
            for line in stderr.splitlines() if " INFO " in line and " committed " in line]


def message_id(w: int, n: int) -> str:
    return f"w{w}-{n:05d}"


def batch(w: int, b: int) -> list[dict]:
    events = []
    for n in range(b * BATCH, (b + 1) * BATCH):
        props = {"n": n, "writer": w, "price": n / 4}
        if b >= OWN_COLUMN_FROM_BATCH:
            props[f"w{w}_late"] = n
        events.append({"type": "track", "userId": f"u{n % 97}", "event": EVENT_NAMES[n % len(EVENT_NAMES)],
                       "messageId": message_id(w, n), "properties": props,
                       "timestamp": "2026-11-01T12:00:00.000Z", "sentAt": "2026-11-01T12:00:01.000Z"})
    return events


def trouble(stderr: str, limit: int = 40) -> str:
    """The server's log lines other than INFO, for a failure message."""
    lines = [line for line in stderr.splitlines() if " INFO " not in line]
    return "\n".join(lines[-limit:])


@pytest.fixture
def written(azurite_lake, start_server):
    """The servers, and each request's (status, answer) by (writer, batch), after all were sent."""
    servers = [start_server(azurite_lake, SEGMENT_DELTA_SOURCES=f"{KEY}={SCHEMA}", SEGMENT_DELTA_FLUSH_INTERVAL_MS="50")
               for _ in range(WRITERS)]
    batches = EVENTS_PER_WRITER // BATCH
    bodies = {(w, b): json.dumps({"batch": batch(w, b)}) for w in range(WRITERS) for b in range(batches)}
    answers: dict[tuple[int, int], tuple[int | None, str]] = {}

    def send(w: int, b: int) -> None:
        try:
            r = servers[w].post("/v1/batch", bodies[(w, b)], key=KEY)
            answers[(w, b)] = (r.status_code, r.text)
        except Exception as e:  # noqa: BLE001 - a transport error is an unacknowledged request like any other
            answers[(w, b)] = (None, repr(e))

    def writer(w: int) -> None:
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            list(pool.map(lambda b: send(w, b), range(batches)))

    started = time.monotonic()
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(writer, range(WRITERS)))
    seconds = time.monotonic() - started
    assert len(answers) == len(bodies)
    return servers, answers, seconds


def test_many_writers_one_lake(written, azurite_lake, record_property):
    servers, answers, seconds = written

    failed = {k: v for k, v in answers.items() if v[0] != 200 or json.loads(v[1]) != {"success": True}}
    assert not failed, (
        f"{len(failed)} of {len(answers)} requests not acknowledged, e.g. {sorted(failed.items())[:5]}\n"
        + "\n".join(f"--- server {i} ({s.stderr_path}):\n{trouble(s.stderr())}" for i, s in enumerate(servers)))

    acked = {message_id(w, n): EVENT_NAMES[n % len(EVENT_NAMES)]
             for (w, b) in answers for n in range(b * BATCH, (b + 1) * BATCH)}
    assert len(acked) == WRITERS * EVENTS_PER_WRITER
    event_tables = {go_snakecase(name) for name in EVENT_NAMES}
    assert azurite_lake.tables(SCHEMA) == {"tracks"} | event_tables, "no other table (no discards)"

    # Every acknowledged event exactly once in tracks and in its event table, and nothing else.
    tracks = Counter(azurite_lake.read("tracks", SCHEMA).column("id").to_pylist())
    assert set(tracks) == set(acked), (f"missing {sorted(set(acked) - set(tracks))[:10]}, "
                                       f"unexpected {sorted(set(tracks) - set(acked))[:10]}")
    assert [i for i, c in tracks.items() if c > 1] == []
    for name in EVENT_NAMES:
        table = go_snakecase(name)
        data = azurite_lake.read(table, SCHEMA)
        ids = Counter(data.column("id").to_pylist())
        want = {i for i, n in acked.items() if n == name}
        assert set(ids) == want, (table, sorted(want - set(ids))[:10], sorted(set(ids) - want)[:10])
        assert [i for i, c in ids.items() if c > 1] == [], table
        # The values, and each writer's own late column: filled exactly on that writer's later events.
        types = {f.name: f.type for f in data.schema}
        late = [f"w{w}_late" for w in range(WRITERS)]
        assert {c: types.get(c) for c in ["n", "writer", "price", *late]} == {
            "n": pa.int64(), "writer": pa.int64(), "price": pa.float64(), **{c: pa.int64() for c in late}}
        wrong = []
        for row in data.to_pylist():
            w, n = row["writer"], row["n"]
            if row["id"] != message_id(w, n) or row["price"] != n / 4:
                wrong.append((row["id"], "n/writer/price"))
            for other in range(WRITERS):
                expected = n if other == w and n >= OWN_COLUMN_FROM_BATCH * BATCH else None
                if row[late[other]] != expected:
                    wrong.append((row["id"], late[other], row[late[other]]))
        assert not wrong, (table, wrong[:10])

    # The Delta log: consecutive versions, and no writer's commit (its own commitInfo txnId) twice.
    commits, creates, schema_changes, writers_seen = {}, {}, {}, {}
    for table in sorted({"tracks"} | event_tables):
        log = azurite_lake.delta_log(table, SCHEMA)
        assert sorted(log) == list(range(len(log))), f"{table}: versions {sorted(log)}"
        txns = [(a["commitInfo"]["writerId"], a["commitInfo"]["txnId"]) for actions in log.values() for a in actions
                if "commitInfo" in a and "writerId" in a["commitInfo"]]
        assert len(txns) == len(set(txns)), f"{table}: a writer's commit is in the log twice"
        added = sum(json.loads(a["add"]["stats"])["numRecords"] for actions in log.values() for a in actions
                    if "add" in a and a["add"].get("stats"))
        assert added == sum(1 for name in acked.values() if table in ("tracks", go_snakecase(name))), table
        commits[table] = len(log)
        creates[table] = sum(1 for actions in log.values() for a in actions if "protocol" in a)
        schema_changes[table] = sum(1 for actions in log.values() for a in actions if "metaData" in a) - creates[table]
        writers_seen[table] = len({app for app, _ in txns})
    assert set(writers_seen.values()) == {WRITERS}, writers_seen

    # What the servers say they did: "committed" lines, conflict retries.
    logged_commits, conflicts = Counter(), Counter()
    for s in servers:
        for line in commit_lines(s.stderr_path.read_text()):
            table = line["table"].split(".", 1)[1]
            conflicts[table] += int(line["conflicts"])
            logged_commits[table] += int(line["rows"]) > 0
    record_property("summary", (
        f"{WRITERS} processes x {EVENTS_PER_WRITER} events in {len(answers)} requests, all acknowledged, in "
        f"{seconds:.1f} s; Delta commits per table {commits} (total {sum(commits.values())}; of them CREATE TABLE "
        f"{creates}, column additions {schema_changes}); commits the servers logged {dict(logged_commits)}; "
        f"conflict retries {dict(conflicts)} (total {sum(conflicts.values())})"))


RACE_NAMES = ["Race A", "Race B", "Race C", "Race D"]


def test_concurrent_first_writes_create_each_table_once(azurite_lake, start_server):
    """All processes write the first rows of the same new tables at the same moment: each table is created once
    (one protocol action, one table id), the others append, and every process's own column keeps its value."""
    servers = [start_server(azurite_lake, SEGMENT_DELTA_SOURCES=f"{KEY}={SCHEMA}", SEGMENT_DELTA_FLUSH_INTERVAL_MS="50")
               for _ in range(WRITERS)]
    barrier = threading.Barrier(WRITERS)

    def first_write(w: int) -> int:
        events = [{"type": "track", "userId": "u", "event": name, "messageId": f"{go_snakecase(name)}-{w}",
                   "properties": {f"only_{w}": w}} for name in RACE_NAMES]
        barrier.wait()
        return servers[w].post("/v1/batch", {"batch": events}, key=KEY).status_code

    with ThreadPoolExecutor(WRITERS) as pool:
        assert list(pool.map(first_write, range(WRITERS))) == [200] * WRITERS

    problems = []
    for table in sorted(azurite_lake.tables(SCHEMA)):
        log = azurite_lake.delta_log(table, SCHEMA)
        creates = [v for v, actions in sorted(log.items()) if any("protocol" in a for a in actions)]
        ids = {a["metaData"]["id"] for actions in log.values() for a in actions if "metaData" in a}
        if creates != [0] or len(ids) != 1:
            problems.append(f"{table}: protocol actions at versions {creates}, {len(ids)} table ids")
        if table != "tracks":
            rows = {r["id"]: r for r in azurite_lake.read(table, SCHEMA).to_pylist()}
            for w in range(WRITERS):
                value = rows.get(f"{table}-{w}", {}).get(f"only_{w}")
                if value != w:
                    problems.append(f"{table}: {table}-{w}.only_{w} reads {value!r}, sent {w}")
    assert not problems, "\n".join(problems)
