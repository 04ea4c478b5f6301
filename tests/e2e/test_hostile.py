"""Hostile input mixed with valid events in one batch: the server stays up, the valid events land, and each bad
item or value is in `discards` with a reason, never silently dropped."""

import base64
import json

import pytest

from conftest import describe, read_discards, rows_by_id, running_server

DEPTH = 10_000


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def valid(n):
    return {"type": "track", "userId": f"u{n}", "event": "Valid Event", "messageId": f"valid-{n}",
            "timestamp": "2026-11-01T10:00:00.000Z", "properties": {"n": n, "label": f"ok {n}"}}


@pytest.fixture(scope="module")
def hostile_batch(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("hostile")) as server:
        yield send_hostile_batch(server)


def send_hostile_batch(server):
    deep = b'{"type":"track","userId":"u9","event":"Deep","messageId":"deep-1","properties":{"p":' \
        + b"[" * DEPTH + b"]" * DEPTH + b"}}"
    non_utf8 = b'{"type":"track","userId":"u9","event":"Bytes","messageId":"bytes-1","properties":{"s":"caf\xe9 \xff\xfe"}}'
    raw_nul = b'{"type":"track","userId":"u9","event":"Raw Nul","messageId":"rawnul-1","properties":{"s":"a\x00b"}}'
    items = {
        "valid-0": dumps(valid(0)),
        "deep": deep,
        "collide": dumps({"type": "track", "userId": "u9", "event": "Plan Chosen", "messageId": "collide-1",
                          "properties": {"Plan Name": "loser", "plan_name": "winner", "planName": "camel",
                                         "id": "evil-id", "user_id": "evil-user", "received_at": "2000-01-01T00:00:00Z",
                                         "event": "evil-event"}}),
        "non-utf8": non_utf8,
        "nul": dumps({"type": "track", "userId": "u9", "event": "Nul\u0000Event", "messageId": "nul-1",
                      "properties": {"v": "a\u0000b", "k\u0000ey": "kv", "\u0000": "only-nul"}}),
        "raw-nul": raw_nul,
        "valid-1": dumps(valid(1)),
        "sql": dumps({"type": "track", "userId": "u9", "event": "x`; DROP TABLE tracks; --", "messageId": "sql-1",
                      "properties": {"`drop`; table \"x\" 'y'": "v1", "a;b": "v2", "`": "v3", "\"": "v4",
                                     "quote\"inside": "v5"}}),
        "no-ids": dumps({"type": "track", "event": "Orphan", "messageId": "noids-1"}),
        "no-event": dumps({"type": "track", "userId": "u9", "messageId": "noevent-1"}),
        "bad-type": dumps({"type": "click", "userId": "u9", "messageId": "badtype-1"}),
        "not-object": b"42",
        "bad-json": b'{"type":"track","userId": tru}',
        "valid-2": dumps(valid(2)),
    }
    assert all(len(v) < 32 * 1024 for v in items.values())
    body = b'{"batch":[' + b",".join(items.values()) + b"]}"
    r = server.post("/v1/batch", body)
    assert r.status_code == 200 and r.json() == {"success": True}, r.text
    assert server.alive()
    return server, items


def discards_by(server):
    rows = read_discards(server.lake)
    assert rows, "no discards table"
    return rows


def test_valid_events_of_the_batch_land(hostile_batch):
    server, _ = hostile_batch
    rows = rows_by_id(server.read("valid_event"))
    assert sorted(rows) == ["valid-0", "valid-1", "valid-2"]
    for n in range(3):
        assert (rows[f"valid-{n}"]["n"], rows[f"valid-{n}"]["label"]) == (n, f"ok {n}")
    tracks = set(server.read("tracks").column("id").to_pylist())
    assert tracks == {"valid-0", "valid-1", "valid-2", "collide-1", "nul-1", "sql-1"}


def test_deep_nesting_is_discarded_whole(hostile_batch):
    server, items = hostile_batch
    [d] = [d for d in discards_by(server) if "nested more than 128 levels" in d["reason"]]
    assert d["column_value"] == items["deep"].decode()
    assert "deep" not in server.tables()


def test_non_utf8_event_is_kept_as_base64(hostile_batch):
    server, items = hostile_batch
    [d] = [d for d in discards_by(server) if d["column_value"].startswith("base64:")]
    assert base64.b64decode(d["column_value"][len("base64:"):]) == items["non-utf8"]
    assert "UTF-8" in d["reason"]
    assert "bytes" not in server.tables()


def test_raw_nul_byte_is_invalid_json_kept_whole(hostile_batch):
    server, items = hostile_batch
    [d] = [d for d in discards_by(server) if d["column_value"] == items["raw-nul"].decode()]
    assert "not valid JSON" in d["reason"] and "control character" in d["reason"]


def test_escaped_nul_in_values_keys_and_names(hostile_batch):
    server, _ = hostile_batch
    row = rows_by_id(server.read("nul_event"))["nul-1"]
    assert row["event_text"] == "Nul\u0000Event" and row["event"] == "nul_event"
    assert row["v"] == "a\u0000b"
    assert row["k_ey"] == "kv"
    [d] = [d for d in discards_by(server) if d["row_id"] == "nul-1"]
    assert (d["column_name"], d["column_value"]) == ("\u0000", "only-nul")
    assert "no letter or digit" in d["reason"]


def test_name_collisions_keep_the_canonical_key(hostile_batch):
    server, _ = hostile_batch
    row = rows_by_id(server.read("plan_chosen"))["collide-1"]
    assert row["plan_name"] == "winner"
    assert row["id"] == "collide-1" and row["user_id"] == "u9" and row["event"] == "plan_chosen"
    assert row["received_at"].year == 2026
    lost = {(d["table_name"], d["column_name"], d["column_value"]): d["reason"]
            for d in discards_by(server) if d["row_id"] == "collide-1"}
    assert set(lost) == {("plan_chosen", "plan_name", "loser"), ("plan_chosen", "plan_name", "camel"),
                         ("plan_chosen", "id", "evil-id"), ("plan_chosen", "user_id", "evil-user"),
                         ("plan_chosen", "received_at", "2000-01-01T00:00:00Z"),
                         ("plan_chosen", "event", "evil-event")}, describe(list(lost))
    assert "both become column plan_name" in lost[("plan_chosen", "plan_name", "loser")]
    assert "reserved column id" in lost[("plan_chosen", "id", "evil-id")]
    assert "reserved column received_at" in lost[("plan_chosen", "received_at", "2000-01-01T00:00:00Z")]


def test_sql_metacharacters_are_snake_cased_away(hostile_batch):
    server, _ = hostile_batch
    assert "x_drop_table_tracks" in server.tables()
    row = rows_by_id(server.read("x_drop_table_tracks"))["sql-1"]
    assert row["event_text"] == "x`; DROP TABLE tracks; --"
    assert (row["drop_table_x_y"], row["a_b"], row["quote_inside"]) == ("v1", "v2", "v5")
    lost = {(d["column_name"], d["column_value"]) for d in discards_by(server) if d["row_id"] == "sql-1"}
    assert lost == {("`", "v3"), ('"', "v4")}
    # Every column name is a plain identifier.
    for table in server.tables():
        for name in server.read(table).column_names:
            assert name.replace("_", "").isalnum() and name == name.lower(), (table, name)


def test_invalid_events_are_discarded_with_a_reason(hostile_batch):
    server, items = hostile_batch
    reasons = {d["column_value"]: d for d in discards_by(server)}
    expect = {
        "no-ids": "neither userId nor anonymousId",
        "no-event": "needs a non-empty event name",
        "bad-type": 'unknown event type "click"',
        "not-object": "must be a JSON object",
        "bad-json": "not valid JSON",
    }
    for item, reason in expect.items():
        d = reasons.get(items[item].decode())
        assert d is not None, f"{item} is not in discards"
        assert reason in d["reason"], (item, d["reason"])
    assert reasons[items["no-ids"].decode()]["row_id"] == "noids-1"
    assert "orphan" not in server.tables()


def test_every_discard_row_is_complete(hostile_batch):
    server, _ = hostile_batch
    rows = discards_by(server)
    assert len(rows) == 8 + 1 + 6 + 2  # whole events, the NUL key, collisions, the SQL-ish keys
    for d in rows:
        assert d["reason"] and d["received_at"] is not None and d["uuid_ts"] >= d["received_at"], d


def test_one_megabyte_string_is_413_and_harmless(server):
    event = {"type": "track", "userId": "u1", "event": "Huge", "messageId": "huge-1",
             "properties": {"s": "x" * (1024 * 1024)}}
    r = server.post("/v1/batch", {"batch": [valid(7), event]})
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert "512000" in error and "SEGMENT_DELTA_MAX_REQUEST_BYTES" in error
    r = server.post("/v1/track", event)
    assert r.status_code == 413 and "SEGMENT_DELTA_MAX_REQUEST_BYTES" in r.json()["error"]
    assert server.alive()
    assert server.files() == set()
    assert server.post("/v1/batch", {"batch": [valid(8)]}).status_code == 200
    assert server.read("valid_event").column("id").to_pylist() == ["valid-8"]


WIDE = 5_000


def test_5000_properties_fill_1000_columns_and_the_rest_is_discarded(start_server):
    server = start_server(SEGMENT_DELTA_MAX_EVENT_BYTES="1000000", SEGMENT_DELTA_MAX_REQUEST_BYTES="2000000")
    props = {f"prop{i:04d}": i for i in range(WIDE)}
    event = {"type": "track", "userId": "u1", "event": "Wide Event", "messageId": "wide-1", "properties": props}
    assert len(json.dumps(event)) > 32 * 1024
    r = server.post("/v1/track", event)
    assert r.status_code == 200, r.text

    table = server.read("wide_event")
    assert table.num_columns == 1000 and table.num_rows == 1
    row = table.to_pylist()[0]
    fixed = {"id", "anonymous_id", "user_id", "received_at", "sent_at", "timestamp", "original_timestamp", "uuid_ts",
             "event", "event_text"}
    assert fixed <= set(row)
    kept = set(row) - fixed
    assert all(row[c] == int(c[4:]) for c in kept)

    # The values the table has no room for: one discard for the row, holding them all as a JSON object.
    [d] = [d for d in read_discards(server.lake) if d["row_id"] == "wide-1"]
    dropped = json.loads(d["column_value"])
    assert len(dropped) == WIDE - len(kept) == WIDE + len(fixed) - 1000
    assert kept | set(dropped) == set(props) and not kept & set(dropped)
    assert all(v == str(int(c[4:])) for c, v in dropped.items())
    assert d["table_name"] == "wide_event" and d["column_name"] == ""
    assert "limit of 1000 columns" in d["reason"] and "SEGMENT_DELTA_MAX_COLUMNS" in d["reason"]
    assert server.read("tracks").column("id").to_pylist() == ["wide-1"]

    # A full table still takes rows: known columns are filled, new ones go to discards.
    r = server.post("/v1/track", {"type": "track", "userId": "u2", "event": "Wide Event", "messageId": "wide-2",
                                  "properties": {"prop0000": 42, "brand_new": "x"}})
    assert r.status_code == 200, r.text
    table = server.read("wide_event")
    assert table.num_columns == 1000 and table.num_rows == 2
    row2 = rows_by_id(table)["wide-2"]
    assert row2["user_id"] == "u2"
    assert row2["prop0000"] == (42 if "prop0000" in kept else None)
    [late] = [d for d in read_discards(server.lake) if d["row_id"] == "wide-2"]
    assert set(json.loads(late["column_value"])) == {"brand_new"} | ({"prop0000"} - kept)
    assert server.alive()
