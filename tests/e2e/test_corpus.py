"""5,000 realistic events from the shared corpus, sent as ten /v1/batch bodies (some gzipped, some at once), then
read back with deltalake and compared with what the corpus says."""

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from conftest import (assert_row_matches, describe, expected_row, generate, go_snakecase, parse_ts, read_discards,
                      running_server, tables_of)

COUNT, BATCH = 5_000, 500
GZIPPED = {1, 4, 8}  # which bodies go gzip-compressed


@pytest.fixture(scope="module")
def corpus():
    bodies = generate(COUNT, seed=7, batch=BATCH)
    assert len(bodies) == COUNT // BATCH
    events = [e for body in bodies for e in json.loads(body)["batch"]]
    assert len(events) == COUNT
    return bodies, events


@pytest.fixture(scope="module")
def loaded(corpus, tmp_path_factory):
    """The server after all ten bodies were acknowledged: two one after the other, then eight over four threads."""
    bodies, events = corpus
    with running_server(tmp_path_factory.mktemp("corpus")) as server:
        before = datetime.now(timezone.utc)

        def send(i):
            r = server.post("/v1/batch", bodies[i], gzip=i in GZIPPED)
            return i, r.status_code, r.text

        answers = [send(0), send(1)]
        with ThreadPoolExecutor(4) as pool:
            answers += list(pool.map(send, range(2, len(bodies))))
        after = datetime.now(timezone.utc)
        yield server, events, answers, before, after


def test_every_body_is_acknowledged(loaded):
    _, _, answers, _, _ = loaded
    bad = [(i, status, text) for i, status, text in answers if status != 200 or json.loads(text) != {"success": True}]
    assert not bad


def test_each_table_holds_exactly_its_events(loaded):
    server, events, _, _, _ = loaded
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


def test_corpus_produces_no_discards(loaded):
    server, _, _, _, _ = loaded
    discards = read_discards(server.lake)
    assert not discards, f"{len(discards)} discards for a clean corpus:\n{describe(discards)}"


def test_order_completed_columns_and_types(loaded):
    server, events, _, _, _ = loaded
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


def pick(events, predicate, what):
    for e in events:
        if predicate(e):
            return e
    raise AssertionError(f"the corpus has no {what}")


def samples(events):
    lib = lambda e: e["context"]["library"]["name"]
    props = lambda e: e.get("properties", {})
    return [
        pick(events, lambda e: e.get("event") == "Order Completed" and props(e).get("coupon") and lib(e) == "analytics.js",
             "web Order Completed with a coupon"),
        pick(events, lambda e: e.get("event") == "Order Completed" and props(e).get("coupon") is None
             and lib(e) != "analytics.js", "mobile Order Completed without coupon"),
        pick(events, lambda e: e["type"] == "track" and "userId" not in e, "anonymous track"),
        pick(events, lambda e: e.get("event", "").startswith("Video"), "video event"),
        pick(events, lambda e: e.get("event") == "Experiment Viewed", "Experiment Viewed"),
        pick(events, lambda e: e["type"] == "page", "page"),
        pick(events, lambda e: e["type"] == "identify", "identify"),
        pick(events, lambda e: e["type"] == "screen", "screen"),
        pick(events, lambda e: e["type"] == "group", "group"),
        pick(events, lambda e: e["type"] == "alias", "alias"),
    ]


def test_sample_rows_hold_what_the_events_say(loaded):
    server, events, _, _, _ = loaded
    cache = {}
    checked = 0
    for event in samples(events):
        for table in tables_of(event):
            if table not in cache:
                cache[table] = {r["id"]: r for r in server.read(table).to_pylist()}
            row = cache[table].get(event["messageId"])
            assert row is not None, f"{event['messageId']} not in {table}"
            assert_row_matches(row, event, table)
            checked += 1
    assert checked >= 14


def test_specific_values(loaded):
    """A few columns spelled out, so a failure reads plainly."""
    server, events, _, _, _ = loaded
    e = samples(events)[0]
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


def test_timestamps_of_every_track(loaded):
    """For every track row: ids, sent_at and original_timestamp as sent, received_at within the sending window,
    timestamp skew-corrected from received_at, uuid_ts no earlier than received_at."""
    server, events, _, before, after = loaded
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
