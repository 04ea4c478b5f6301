"""The single-event endpoints (type implied by the path), /v1/import, gzip and the batch-level context."""

import pytest

from conftest import read_discards, rows_by_id, running_server

EVENTS = {
    "track": ({"event": "Button Clicked", "properties": {"button": "buy"}}, "button_clicked", {"button": "buy"}),
    "identify": ({"traits": {"email": "a@example.com"}}, "identifies", {"email": "a@example.com"}),
    "page": ({"name": "Home", "category": "Docs", "properties": {"path": "/"}}, "pages",
             {"name": "Home", "category": "Docs", "path": "/"}),
    "screen": ({"name": "Feed", "properties": {"tab": 2}}, "screens", {"name": "Feed", "tab": 2}),
    "group": ({"groupId": "g-1", "traits": {"plan": "pro"}}, "groups", {"group_id": "g-1", "plan": "pro"}),
    "alias": ({"previousId": "anon-1"}, "aliases", {"previous_id": "anon-1"}),
}


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("endpoints")) as server:
        yield server


@pytest.mark.parametrize("kind", list(EVENTS))
@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_single_event_endpoint(endpoints, kind, gzip):
    fields, table, columns = EVENTS[kind]
    message_id = f"single-{kind}-{gzip}"
    # The path gives the type, even against the body's.
    body = {"type": "identify" if kind != "identify" else "track", "userId": "u1", "messageId": message_id,
            "timestamp": "2026-11-01T12:00:00Z", **fields}
    r = endpoints.post(f"/v1/{kind}", body, gzip=gzip)
    assert r.status_code == 200 and r.json() == {"success": True}, r.text
    row = rows_by_id(endpoints.read(table))[message_id]
    assert row["user_id"] == "u1"
    assert {c: row[c] for c in columns} == columns
    if kind == "track":
        assert message_id in rows_by_id(endpoints.read("tracks"))


def test_import_is_batch(endpoints):
    body = {"batch": [{"type": "track", "userId": "u2", "event": "Imported", "messageId": "imp-1"}]}
    assert endpoints.post("/v1/import", body).status_code == 200
    assert list(rows_by_id(endpoints.read("imported"))) == ["imp-1"]


def test_batch_context_merges_under_each_events_context(endpoints):
    body = {"context": {"ip": "198.51.100.1", "library": {"name": "batch-lib", "version": "9"}},
            "integrations": {"All": False}, "writeKey": "any",
            "batch": [{"type": "track", "userId": "u3", "event": "Ctx Merged", "messageId": "ctx-1",
                       "context": {"library": {"version": "1"}}},
                      {"type": "track", "userId": "u3", "event": "Ctx Merged", "messageId": "ctx-2",
                       "context": {"ip": "203.0.113.5"}}]}
    assert endpoints.post("/v1/batch", body).status_code == 200
    rows = rows_by_id(endpoints.read("ctx_merged"))
    assert (rows["ctx-1"]["context_ip"], rows["ctx-1"]["context_library_name"], rows["ctx-1"]["context_library_version"]) \
        == ("198.51.100.1", "batch-lib", "1")
    assert (rows["ctx-2"]["context_ip"], rows["ctx-2"]["context_library_version"]) == ("203.0.113.5", "9")


def test_type_conflicts_become_null_and_discards(endpoints):
    """The first value fixes a column's type; a later value that cannot be cast losslessly is NULL plus a discard,
    one that can (integer into DOUBLE) is cast."""
    def send(mid, props):
        body = {"type": "track", "userId": "u4", "event": "Typed", "messageId": mid, "properties": props}
        assert endpoints.post("/v1/track", body).status_code == 200

    send("typed-1", {"amount": 1.5, "count": 3, "flag": True, "when": "2026-11-01T00:00:00Z"})
    send("typed-2", {"amount": 2, "count": "three", "flag": "yes", "when": "not a date"})
    rows = rows_by_id(endpoints.read("typed"))
    assert rows["typed-2"]["amount"] == 2.0
    assert (rows["typed-2"]["count"], rows["typed-2"]["flag"], rows["typed-2"]["when"]) == (None, None, None)
    lost = {(d["column_name"], d["column_value"]) for d in read_discards(endpoints.lake) if d["row_id"] == "typed-2"}
    assert lost == {("count", "three"), ("flag", "yes"), ("when", "not a date")}


def test_fields_that_cannot_be_stored_are_discarded_not_dropped(endpoints):
    body = {"type": "page", "userId": "u5", "messageId": "odd-1", "name": "Odd", "properties": "not an object",
            "colour": "red", "sentAt": "yesterday", "integrations": {"All": True}, "channel": "server",
            "originalTimestamp": "2026-11-01T08:00:00.000Z"}
    assert endpoints.post("/v1/page", body).status_code == 200
    row = rows_by_id(endpoints.read("pages"))["odd-1"]
    assert row["name"] == "Odd" and row["sent_at"] is None
    # Without sentAt there is nothing to correct: timestamp is the caller's (originalTimestamp here).
    assert str(row["original_timestamp"]) == str(row["timestamp"]) == "2026-11-01 08:00:00+00:00"
    lost = {d["column_name"]: (d["table_name"], d["column_value"]) for d in read_discards(endpoints.lake)
            if d["row_id"] == "odd-1"}
    assert lost == {"properties": ("pages", '"not an object"'), "colour": ("pages", '"red"'),
                    "sentAt": ("pages", "yesterday")}
