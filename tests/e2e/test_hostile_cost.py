"""A valid write key is public (browsers carry it), so every request must have a bounded cost: small bodies that
would expand into large ones are refused by name, and what is accepted builds no more than a fixed multiple of
its size. Each probe runs against a server under a memory cap and measures its peak resident memory."""

import gzip
import json

import pytest

from conftest import read_discards, running_server

MiB = 1 << 20
# The server's data segment may not grow past this (as `prlimit --data` would set it).
CAP = 1536 * MiB
# What one probe may add to the server's peak resident memory.
GROWTH = 300 * MiB


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("cost"), memory_cap=CAP) as server:
        yield server


def probe(server, body: bytes, *, gzipped: bool = True):
    """Sends one body and returns the answer and how much the peak resident memory grew over the resident memory
    before it."""
    before = server.memory()["VmRSS"]
    server.reset_peak()
    r = server.post("/v1/batch", gzip.compress(body) if gzipped else body,
                    headers={"Content-Encoding": "gzip"} if gzipped else None)
    growth = server.memory()["VmHWM"] - before
    print(f"probe of {len(body)} bytes: HTTP {r.status_code}, peak RSS growth {growth / MiB:.1f} MiB")
    assert server.alive()
    return r, growth


def tiny(n: int) -> dict:
    return {"type": "track", "userId": "u", "event": "Tiny", "messageId": f"tiny-{n}"}


def test_a_big_batch_context_merged_into_each_event_is_refused_by_name(capped):
    # 1,000 tiny items and a 3,000-key context: the context alone is over the event limit once merged.
    context = {f"k{i}": i for i in range(3000)}
    body = dumps({"batch": [tiny(i) for i in range(1000)], "context": context})
    assert len(body) < 128_000 and len(gzip.compress(body)) < 20_000
    r, growth = probe(capped, body)
    assert r.status_code == 400, r.text
    assert "merged" in r.json()["error"] and "SEGMENT_DELTA_MAX_EVENT_BYTES" in r.json()["error"]
    assert growth < GROWTH


def test_a_context_that_fits_each_event_but_not_the_whole_batch_is_refused(capped):
    # 25 KB of context merged into 2,500 events is 62 MB: over four times the request limit.
    context = {f"key{i}": "v" * 40 for i in range(500)}
    body = dumps({"batch": [tiny(i) for i in range(2500)], "context": context})
    assert len(body) < 200_000
    r, growth = probe(capped, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "batch context" in error and "4 × SEGMENT_DELTA_MAX_REQUEST_BYTES" in error
    assert growth < GROWTH


def test_an_accepted_batch_with_a_shared_context_lands_whole(capped):
    # 1.3 KB of context for each of 1,000 events is within the bounds: every event lands with it.
    context = {f"key{i}": i for i in range(150)}
    body = dumps({"batch": [tiny(i) for i in range(1000)], "context": context})
    r, growth = probe(capped, body)
    assert r.status_code == 200, r.text
    table = capped.read("tiny")
    assert table.num_rows == 1000
    assert table.column("context_key149").to_pylist() == [149] * 1000
    assert growth < GROWTH


def test_long_key_paths_cost_one_discard_per_subtree(capped):
    # Each event nests 2,000 leaves under one 12,000-character key: nothing under it can be a column.
    long_key = "k" * 12_000
    events = [{"type": "track", "userId": "u", "event": "Long Keys", "messageId": f"long-{n}",
               "properties": {"fine": n, long_key: {f"l{i}": 0 for i in range(2000)}}} for n in range(15)]
    body = dumps({"batch": events})
    assert all(len(dumps(e)) < 32 * 1024 for e in events)
    r, growth = probe(capped, body)
    assert r.status_code == 200, r.text
    assert growth < GROWTH
    table = capped.read("long_keys")
    assert sorted(table.column("fine").to_pylist()) == list(range(15))
    assert all(len(c) <= 255 for c in table.column_names)
    discards = [d for d in read_discards(capped.lake) if d["row_id"].startswith("long-")]
    assert len(discards) == 15, [d["column_name"] for d in discards]
    for d in discards:
        assert d["column_name"].startswith("kkkk") and len(d["column_name"]) <= 70
        assert "longer than 255" in d["reason"] and len(d["reason"]) < 300
        assert json.loads(d["column_value"]) == {f"l{i}": 0 for i in range(2000)}
    # What the discards hold is the events' own size, not a multiple of it.
    kept = sum(len(d["column_value"]) + len(d["reason"]) + len(d["column_name"]) for d in discards)
    assert kept < len(body)


# Tables ------------------------------------------------------------------------------------------------------------

def named(n: int, prefix: str = "Event") -> dict:
    return {"type": "track", "userId": "u", "event": f"{prefix} {n:05d}", "messageId": f"{prefix.lower()}-{n}",
            "properties": {"n": n}}


def test_5000_event_names_stop_at_the_table_limit_and_memory_stays_bounded(start_server):
    server = start_server(memory_cap=CAP)
    before = server.memory()["VmRSS"]
    for first in range(0, 5000, 2500):
        r = server.post("/v1/batch", {"batch": [named(n) for n in range(first, first + 2500)]}, gzip=True)
        assert r.status_code == 200, r.text
    peak = server.memory()["VmHWM"]
    print(f"5,000 event names: RSS {before / MiB:.0f} MiB before, peak {peak / MiB:.0f} MiB")
    assert peak < 512 * MiB
    tables = server.tables()
    events = tables - {"tracks", "discards"}
    assert len(events) == 4000, len(events)
    # Every event is in tracks; the 1,000 past the limit have their rows in discards, whole.
    assert server.read("tracks").num_rows == 5000
    past = [d for d in read_discards(server.lake) if "SEGMENT_DELTA_MAX_TABLES" in d["reason"]]
    assert len(past) == 1000
    assert {d["table_name"] for d in past}.isdisjoint(events)
    sample = past[0]
    assert json.loads(sample["column_value"])["n"] == sample["row_id"].split("-")[1]
    assert server.alive()


def test_a_normal_request_is_answered_while_thousands_of_new_tables_are_written(start_server):
    import threading
    import time

    def normal(n: int) -> dict:
        return {"type": "track", "userId": "u", "event": "Normal", "messageId": f"normal-{n}"}

    server = start_server(SEGMENT_DELTA_FLUSH_INTERVAL_MS="50")
    assert server.post("/v1/track", normal(0)).status_code == 200
    big = {}

    def send_big():
        big["r"] = server.post("/v1/batch", {"batch": [named(n, "Flood") for n in range(2500)]}, gzip=True)
        big["done"] = time.monotonic()

    flood = threading.Thread(target=send_big)
    flood.start()
    time.sleep(0.5)
    latencies = []
    for n in range(1, 6):
        started = time.monotonic()
        r = server.post("/v1/track", normal(n))
        latencies.append(time.monotonic() - started)
        assert r.status_code == 200, r.text
    last_normal = time.monotonic()
    flood.join()
    print(f"normal requests during a 2,500-table request: {[round(x, 2) for x in latencies]} s; "
          f"the big one was answered {big['done'] - last_normal:.1f} s after the last of them")
    assert big["r"].status_code == 200, big["r"].text
    # The big request was still being written when the normal ones were answered.
    assert big["done"] > last_normal
    assert max(latencies) < 3, latencies
    assert len(server.tables()) == 2500 + 2  # the flood's tables, normal, tracks
    assert server.read("normal").num_rows == 6
    assert server.read("tracks").num_rows == 2506
