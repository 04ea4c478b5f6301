"""Write keys: each configured key writes to its own schema; anything else is refused and writes nothing."""

import base64

import pytest

from conftest import read_discards, running_server

SOURCES = "K1=web,K2=ios"


def track(message_id, event="Signed Up", **extra):
    return {"type": "track", "userId": "u1", "event": event, "messageId": message_id, "properties": {"n": 1}, **extra}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("auth"), SEGMENT_DELTA_SOURCES=SOURCES) as server:
        yield server


def ids(server, schema, table="tracks"):
    if table not in server.tables(schema):
        return set()
    return set(server.read(table, schema).column("id").to_pylist())


def test_each_key_writes_to_its_schema(keyed):
    assert keyed.post("/v1/batch", {"batch": [track("web-1")]}, key="K1").status_code == 200
    assert keyed.post("/v1/track", track("ios-1"), key="K2").status_code == 200
    assert ids(keyed, "web") == {"web-1"} and ids(keyed, "web", "signed_up") == {"web-1"}
    assert ids(keyed, "ios") == {"ios-1"} and ids(keyed, "ios", "signed_up") == {"ios-1"}
    assert {p.name for p in keyed.lake.iterdir()} <= {"web", "ios"}


def test_key_in_the_body(keyed):
    r = keyed.post("/v1/batch", {"batch": [track("web-body-1")], "writeKey": "K1"})
    assert r.status_code == 200, r.text
    r = keyed.post("/v1/identify", {"userId": "u1", "messageId": "ios-body-1", "traits": {"a": 1}, "writeKey": "K2"})
    assert r.status_code == 200, r.text
    assert "web-body-1" in ids(keyed, "web") and "web-body-1" not in ids(keyed, "ios")
    assert ids(keyed, "ios", "identifies") == {"ios-body-1"}
    assert "identifies" not in keyed.tables("web")


def test_same_message_id_in_two_sources_lands_in_both(keyed):
    assert keyed.post("/v1/track", track("shared-1"), key="K1").status_code == 200
    assert keyed.post("/v1/track", track("shared-1"), key="K2").status_code == 200
    assert "shared-1" in ids(keyed, "web") and "shared-1" in ids(keyed, "ios")


def test_basic_user_without_colon(keyed):
    header = {"Authorization": "Basic " + base64.b64encode(b"K2").decode()}
    assert keyed.post("/v1/track", track("ios-nocolon-1"), headers=header).status_code == 200
    assert "ios-nocolon-1" in ids(keyed, "ios")


@pytest.mark.parametrize("how", ["wrong basic key", "wrong body key", "no key", "bad scheme",
                                 "wrong header beats good body key"])
def test_refused_requests_write_nothing(keyed, how):
    files_before = keyed.files()
    event = track(f"refused-{how}", event="Refused Event")
    body, key, headers = {"batch": [event]}, None, None
    if how == "wrong basic key":
        key = "K3"
    elif how == "wrong body key":
        body["writeKey"] = "k1"
    elif how == "bad scheme":
        headers = {"Authorization": "Bearer K1"}
    elif how == "wrong header beats good body key":
        key, body["writeKey"] = "nope", "K1"
    r = keyed.post("/v1/batch", body, key=key, headers=headers)
    assert r.status_code == 401, r.text
    answer = r.json()
    assert answer["success"] is False and ("write key" in answer["error"] or "Basic" in answer["error"])
    # Nothing new on disk: no table, no row, no discard.
    assert keyed.files() == files_before
    for schema in ("web", "ios", "segment"):
        assert "refused_event" not in keyed.tables(schema)
        assert not [d for d in read_discards(keyed.lake, schema) if "refused" in d["column_value"]]


def test_unknown_key_on_a_single_event_endpoint(keyed):
    files_before = keyed.files()
    r = keyed.post("/v1/track", track("refused-single", event="Refused Event"), key="nope")
    assert (r.status_code, r.json()) == (401, {"success": False, "error": "unknown write key"})
    assert keyed.files() == files_before


def test_local_mode_accepts_any_key_or_none(tmp_path):
    with running_server(tmp_path) as server:
        assert server.post("/v1/track", track("any-1"), key="whatever").status_code == 200
        assert server.post("/v1/track", track("none-1")).status_code == 200
        assert ids(server, "segment") == {"any-1", "none-1"}
