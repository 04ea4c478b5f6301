"""Repeated messageIds (client retries) are acknowledged but written once."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import generate, read_discards, tables_of

N = 200


def counts(server):
    return {t: server.read(t).num_rows for t in server.tables()}


def expected_counts(events):
    out = {}
    for e in events:
        for t in tables_of(e):
            out[t] = out.get(t, 0) + 1
    return out


def test_same_batch_twice_lands_once(server):
    body = generate(N, seed=21, batch=N)[0]
    events = json.loads(body)["batch"]
    assert server.post("/v1/batch", body).status_code == 200
    first = counts(server)
    assert first == expected_counts(events)
    r = server.post("/v1/batch", body)
    assert r.status_code == 200 and r.json() == {"success": True}
    r = server.post("/v1/batch", body, gzip=True)
    assert r.status_code == 200
    assert counts(server) == first
    ids = server.read("tracks").column("id").to_pylist()
    assert len(ids) == len(set(ids))


def test_concurrent_duplicates_land_once(server):
    body = generate(N, seed=22, batch=N)[0]
    events = json.loads(body)["batch"]
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: server.post("/v1/batch", body).status_code, range(4)))
    assert statuses == [200] * 4
    assert counts(server) == expected_counts(events)


def test_overlapping_batches_write_only_new_events(server):
    events = [json.loads(line) for line in generate(300, seed=23)]
    a, b = events[:200], events[100:]
    assert server.post("/v1/batch", {"batch": a}).status_code == 200
    assert server.post("/v1/batch", {"batch": b}).status_code == 200
    # The same event twice within one batch, and once more on its own.
    dup = events[0]
    assert server.post("/v1/batch", {"batch": [dup, dup]}).status_code == 200
    assert server.post(f"/v1/{dup['type']}", dup).status_code == 200
    assert counts(server) == expected_counts(events)
    for table in server.tables():
        ids = server.read(table).column("id").to_pylist()
        assert len(ids) == len(set(ids)), table
    assert not read_discards(server.lake)


def test_repeated_invalid_event_is_discarded_once(server):
    bad = {"type": "track", "event": "No Ids", "messageId": "dup-bad-1"}
    for _ in range(3):
        assert server.post("/v1/batch", {"batch": [bad]}).status_code == 200
    discards = read_discards(server.lake)
    assert [d["row_id"] for d in discards] == ["dup-bad-1"]


def test_repeat_during_a_flush_does_not_duplicate_discards(server):
    """Copy 1 rides with 500 corpus events, so its flush takes a while; copies 2.. arrive during that flush."""
    repeated = [{"type": "track", "event": "No Ids", "messageId": "race-bad"},
                {"type": "track", "userId": "u1", "event": "Race Collide", "messageId": "race-coll",
                 "properties": {"A b": 1, "a_b": 2}}]
    big = json.loads(generate(500, seed=24, batch=500)[0])["batch"] + repeated
    first = {}
    sender = threading.Thread(target=lambda: first.setdefault("status", server.post("/v1/batch", {"batch": big}).status_code))
    sender.start()
    time.sleep(0.25)  # just past the 200 ms flush interval: copy 1 is being written now
    repeats = []
    while sender.is_alive() and len(repeats) < 200:
        repeats.append(server.post("/v1/batch", {"batch": repeated}).status_code)
    sender.join()
    assert first["status"] == 200 and repeats and set(repeats) == {200}
    assert server.read("race_collide").num_rows == 1
    discards = [(d["row_id"], d["column_name"]) for d in read_discards(server.lake) if d["row_id"].startswith("race-")]
    assert sorted(discards) == [("race-bad", ""), ("race-coll", "a_b")]
