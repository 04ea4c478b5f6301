"""The other ways Segment data arrives: analytics.js' short paths and CORS, the settings it loads, the requests the
mobile SDKs make, Segment's own Webhooks destinations (signed), and privacy deletes."""

import base64
import gzip
import hashlib
import hmac
import json
import subprocess
import uuid

import pytest
import requests

from conftest import binary, clean_env, duckdb_rows, deltalake_rows, read_discards, rows_by_id

KEY = "src-key"
OTHER = "other-key"


@pytest.fixture
def keyed(start_server):
    def start(**env):
        return start_server(SEGMENT_DELTA_SOURCES=f"{KEY}=segment,{OTHER}=other", **env)
    return start


def event(kind: str, n: int, **fields) -> dict:
    base = {"messageId": f"{kind}-{n}", "timestamp": "2026-11-01T10:00:00.000Z", "anonymousId": f"anon-{n}"}
    return {**base, **fields}


# analytics.js paths and CORS ----------------------------------------------------------------------------------

def test_analytics_js_short_paths_take_text_plain_with_the_key_in_the_body(keyed):
    server = keyed()
    calls = {
        "t": event("t", 1, event="Button Clicked", properties={"label": "buy"}),
        "i": event("i", 1, userId="u1", traits={"email": "a@example.com"}),
        "p": event("p", 1, name="Home", properties={"path": "/"}),
        "s": event("s", 1, name="Main"),
        "g": event("g", 1, userId="u1", groupId="g1", traits={"name": "Acme"}),
        "a": event("a", 1, userId="u1", previousId="anon-1"),
    }
    for letter, body in calls.items():
        r = requests.post(f"{server.url}/v1/{letter}", data=json.dumps({**body, "writeKey": KEY}),
                          headers={"Content-Type": "text/plain"}, timeout=30)
        assert r.status_code == 200, (letter, r.text)
    assert rows_by_id(server.read("button_clicked"))["t-1"]["label"] == "buy"
    assert rows_by_id(server.read("identifies"))["i-1"]["email"] == "a@example.com"
    assert rows_by_id(server.read("pages"))["p-1"]["name"] == "Home"
    # analytics.js copies a page's name into its properties too: the same value twice loses nothing, no discard.
    r = requests.post(f"{server.url}/v1/p", data=json.dumps({**event("p", 2, name="Docs", category="Help",
                      properties={"name": "Docs", "category": "Help", "path": "/docs"}), "writeKey": KEY}), timeout=30)
    assert r.status_code == 200
    assert not [d for d in read_discards(server.lake) if d["row_id"] == "p-2"]
    assert rows_by_id(server.read("screens"))["s-1"]["name"] == "Main"
    assert rows_by_id(server.read("groups"))["g-1"]["group_id"] == "g1"
    assert rows_by_id(server.read("aliases"))["a-1"]["previous_id"] == "anon-1"
    # /v1/b is a batch.
    batch = {"batch": [{**event("b", 1, event="Batched"), "type": "track"}], "writeKey": KEY}
    r = requests.post(f"{server.url}/v1/b", data=json.dumps(batch), headers={"Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 200, r.text
    assert server.read("batched").num_rows == 1
    # A wrong key in the body is refused like anywhere else.
    r = requests.post(f"{server.url}/v1/t", data=json.dumps({**calls["t"], "writeKey": "nope"}), timeout=30)
    assert r.status_code == 401


def test_preflight_and_answers_carry_cors_headers_for_allowed_origins(keyed):
    server = keyed(SEGMENT_DELTA_CORS_ORIGINS="https://shop.example")
    r = requests.options(f"{server.url}/v1/t", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}, timeout=30)
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert r.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    allowed = r.headers["Access-Control-Allow-Headers"].lower()
    assert all(h in allowed for h in ("content-type", "authorization", "content-encoding"))
    assert int(r.headers["Access-Control-Max-Age"]) > 0
    r = requests.post(f"{server.url}/v1/t", data=json.dumps({**event("c", 1, event="Cors"), "writeKey": KEY}),
                      headers={"Origin": "https://shop.example"}, timeout=30)
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    # Errors carry it too, so that the page can read them.
    r = requests.post(f"{server.url}/v1/t", data=b"{", headers={"Origin": "https://shop.example"}, timeout=30)
    assert r.status_code == 400 and r.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    # analytics.js retries with X-Retry-Count: the preflight grants what the browser asks for.
    r = requests.options(f"{server.url}/v1/t", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-retry-count"}, timeout=30)
    assert "x-retry-count" in r.headers["Access-Control-Allow-Headers"].lower()
    # Another origin gets no CORS header (its browser refuses the answer), and a simple POST from it, which needs
    # no preflight, writes nothing.
    r = requests.options(f"{server.url}/v1/t", headers={"Origin": "https://evil.example"}, timeout=30)
    assert r.status_code == 403
    assert "Access-Control-Allow-Origin" not in r.headers
    assert "Access-Control-Allow-Methods" not in r.headers
    r = requests.post(f"{server.url}/v1/t", data=json.dumps({**event("c", 2, event="Evil"), "writeKey": KEY}),
                      headers={"Origin": "https://evil.example", "Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 403 and "SEGMENT_DELTA_CORS_ORIGINS" in r.json()["error"]
    assert "evil" not in server.tables()


def test_settings_point_analytics_js_back_at_the_handler(keyed):
    server = keyed()
    r = requests.get(f"{server.url}/v1/projects/{KEY}/settings", timeout=30)
    assert r.status_code == 200, r.text
    io = r.json()["integrations"]["Segment.io"]
    assert io["apiKey"] == KEY
    assert io["apiHost"] == f"127.0.0.1:{server.port}/v1" and io["protocol"] == "http"
    assert r.json()["remotePlugins"] == []
    # Behind a proxy (the Functions front end), the forwarded host and scheme.
    r = requests.get(f"{server.url}/v1/projects/{KEY}/settings", timeout=30,
                     headers={"X-Forwarded-Host": "app.example.net", "X-Forwarded-Proto": "https"})
    io = r.json()["integrations"]["Segment.io"]
    assert (io["apiHost"], io["protocol"]) == ("app.example.net/v1", "https")
    assert requests.get(f"{server.url}/v1/projects/unknown/settings", timeout=30).status_code == 404


def test_settings_use_the_public_url_when_set(keyed):
    server = keyed(SEGMENT_DELTA_PUBLIC_URL="https://ingest.example.com")
    io = requests.get(f"{server.url}/v1/projects/{KEY}/settings", timeout=30).json()["integrations"]["Segment.io"]
    assert (io["apiHost"], io["protocol"]) == ("ingest.example.com/v1", "https")


# Mobile SDKs ----------------------------------------------------------------------------------------------------

def mobile_event(library: str, n: int) -> dict:
    return {
        "type": "track", "event": "Level Completed", "properties": {"level": n},
        "messageId": f"{library}-{n}", "anonymousId": "device-anon-1", "userId": "player-7",
        "timestamp": "2026-11-01T10:00:00.000Z",
        "context": {"library": {"name": library, "version": "1.16.0"},
                    "device": {"model": "Pixel 8", "type": "android"}, "os": {"name": "Android", "version": "15"},
                    "app": {"name": "Game", "version": "3.2", "build": "320"}, "network": {"wifi": True},
                    "screen": {"width": 1080, "height": 2400}, "locale": "en-US", "timezone": "Europe/Berlin",
                    "instanceId": str(uuid.uuid4())},
        "integrations": {}, "_metadata": {"bundled": [], "unbundled": [], "bundledIds": []},
    }


def test_analytics_kotlin_upload(keyed):
    # As analytics-kotlin's HTTPClient sends it: POST <apiHost>/b, text/plain, gzip, chunked, the key in the body.
    server = keyed()
    body = json.dumps({"batch": [mobile_event("analytics-kotlin", n) for n in range(3)],
                       "sentAt": "2026-11-01T10:00:01.000Z", "writeKey": KEY}).encode()

    def chunks():
        data = gzip.compress(body)
        for i in range(0, len(data), 100):
            yield data[i:i + 100]

    r = requests.post(f"{server.url}/v1/b", data=chunks(), timeout=30, headers={
        "Content-Type": "text/plain", "Content-Encoding": "gzip", "User-Agent": "analytics-kotlin/1.16.0"})
    assert r.status_code == 200, r.text
    rows = rows_by_id(server.read("level_completed"))
    assert sorted(rows) == ["analytics-kotlin-0", "analytics-kotlin-1", "analytics-kotlin-2"]
    row = rows["analytics-kotlin-1"]
    assert row["level"] == 1 and row["context_library_name"] == "analytics-kotlin"
    assert row["context_device_model"] == "Pixel 8"


def test_analytics_swift_upload(keyed):
    # As analytics-swift sends its batch file: JSON with the key at the end, no Authorization header.
    server = keyed()
    events = ",".join(json.dumps(mobile_event("analytics-swift", n)) for n in range(2))
    body = f'{{"batch":[{events}],"sentAt":"2026-11-01T10:00:01.000Z","writeKey":"{KEY}"}}'
    r = requests.post(f"{server.url}/v1/b", data=body.encode(), timeout=30, headers={
        "Content-Type": "application/json; charset=utf-8", "User-Agent": "analytics-ios/1.7.0",
        "Accept-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    rows = rows_by_id(server.read("level_completed"))
    assert rows["analytics-swift-0"]["context_library_name"] == "analytics-swift"


# Segment's Webhooks destinations --------------------------------------------------------------------------------

def signed(body: bytes, key: str = KEY) -> dict:
    return {"Content-Type": "application/json",
            "X-Signature": hmac.new(key.encode(), body, hashlib.sha1).hexdigest()}


def forwarded(n: int, **fields) -> dict:
    return {"type": "track", "event": "Order Placed", "userId": f"buyer-{n}", "messageId": f"seg-{n}",
            "properties": {"total": 10 * n}, "timestamp": "2026-11-01T09:00:00.000Z",
            "sentAt": "2026-11-01T09:00:01.000Z", "receivedAt": "2026-11-01T09:00:02.345Z",
            "originalTimestamp": "2026-11-01T08:59:59.000Z", **fields}


def test_signed_webhook_single_array_and_batch_land_with_segment_s_fields(keyed):
    server = keyed()
    single = json.dumps(forwarded(1)).encode()
    r = server.request("POST", "/v1/webhook", data=single, headers=signed(single))
    assert r.status_code == 200, r.text
    array = json.dumps([forwarded(2), forwarded(3)]).encode()
    r = server.request("PUT", "/v1/webhook", data=array, headers=signed(array))
    assert r.status_code == 200, r.text
    batch = json.dumps({"batch": [forwarded(4)]}).encode()
    r = server.request("PATCH", "/v1/webhook", data=batch, headers=signed(batch))
    assert r.status_code == 200, r.text
    rows = rows_by_id(server.read("order_placed"))
    assert sorted(rows) == ["seg-1", "seg-2", "seg-3", "seg-4"]
    row = rows["seg-1"]
    # Segment received it first: its receivedAt is kept, and the times are as it sent them.
    assert row["received_at"].isoformat().startswith("2026-11-01T09:00:02.345")
    assert row["sent_at"].isoformat().startswith("2026-11-01T09:00:01")
    assert row["total"] == 10 and row["user_id"] == "buyer-1"


def test_a_batch_signed_by_its_first_event_as_segment_signs_batches(keyed):
    # Webhooks (Actions) with batching: the body is an array, the signature that of the first event.
    server = keyed()
    first = json.dumps(forwarded(7), separators=(",", ":")).encode()
    body = b"[" + first + b"," + json.dumps(forwarded(8), separators=(",", ":")).encode() + b"]"
    r = server.request("POST", "/v1/webhook", data=body, headers=signed(first))
    assert r.status_code == 200, r.text
    assert sorted(server.read("order_placed").column("id").to_pylist()) == ["seg-7", "seg-8"]
    # The first event's signature does not pass for a body that starts with another event.
    swapped = b"[" + json.dumps(forwarded(9)).encode() + b"," + first + b"]"
    assert server.request("POST", "/v1/webhook", data=swapped, headers=signed(first)).status_code == 401


def test_a_wrong_or_missing_signature_writes_nothing(keyed):
    server = keyed()
    body = json.dumps(forwarded(5)).encode()
    for headers in ({"X-Signature": "00" * 20}, signed(body, "not-a-key"), {"X-Signature": "zz"}, {}):
        r = server.request("POST", "/v1/webhook", data=body, headers={"Content-Type": "application/json", **headers})
        assert r.status_code == 401, (headers, r.text)
    # A signature of another body does not pass either.
    r = server.request("POST", "/v1/webhook", data=body, headers=signed(body + b" "))
    assert r.status_code == 401
    assert server.files() == set()


def test_the_signing_key_picks_the_schema_and_replays_are_written_once(keyed):
    server = keyed()
    body = json.dumps(forwarded(6)).encode()
    for _ in range(3):  # Segment retries
        r = server.request("POST", "/v1/webhook", data=body, headers=signed(body, OTHER))
        assert r.status_code == 200, r.text
    assert server.read("order_placed", schema="other").column("id").to_pylist() == ["seg-6"]
    assert "order_placed" not in server.tables()


# Privacy deletes ------------------------------------------------------------------------------------------------

def people_events(user: str, n: int) -> list[dict]:
    return [
        {"type": "identify", "userId": user, "messageId": f"{user}-id-{n}", "traits": {"email": f"{user}@example.com"}},
        {"type": "track", "userId": user, "event": "Paid", "messageId": f"{user}-tr-{n}",
         "properties": {"amount": n, "bad": {"too": "deep" * 3}, "when": "2026-11-01T10:00:00Z"}},
        {"type": "page", "userId": user, "name": "Home", "messageId": f"{user}-pg-{n}"},
        # A value that cannot be stored as sent: a discard row of this user's event.
        {"type": "track", "userId": user, "event": "Paid", "messageId": f"{user}-tr-bad-{n}",
         "properties": {"amount": "not a number"}},
    ]


def all_rows(lake, schema="segment") -> dict[str, list[dict]]:
    out = {}
    for table in sorted((lake / schema).iterdir()):
        if (table / "_delta_log").is_dir():
            out[table.name] = duckdb_rows(table)
    return out


def mentions(rows: list[dict], user: str) -> list[dict]:
    return [r for r in rows if user in json.dumps(r, default=str)]


def forget_cli(lake, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary()), "forget", "--schema", "segment", *args], capture_output=True, text=True,
                          env=clean_env({"SEGMENT_DELTA_LAKE": str(lake)}), timeout=300)


def test_forget_removes_a_user_from_every_table_and_keeps_history(start_server, tmp_path):
    server = start_server()
    for n in range(3):
        body = {"batch": people_events("alice", n) + people_events("bob", n)}
        assert server.post("/v1/batch", body).status_code == 200
    lake = server.lake
    before = all_rows(lake)
    assert mentions(before["paid"], "alice") and mentions(before["discards"], "alice-tr-bad")
    versions = {t: len(list((lake / "segment" / t / "_delta_log").glob("*.json"))) for t in before}

    done = forget_cli(lake, "--user-id", "alice")
    assert done.returncode == 0, done.stderr
    assert "segment.paid: 6 rows removed" in done.stdout, done.stdout
    after = all_rows(lake)
    for table, rows in after.items():
        assert not mentions(rows, "alice"), (table, mentions(rows, "alice")[:3])
        # Other users' rows are untouched.
        key = lambda r: json.dumps(r, default=str, sort_keys=True)  # noqa: E731
        assert sorted(map(key, mentions(rows, "bob"))) == sorted(map(key, mentions(before[table], "bob"))), table
    # Python deltalake agrees.
    for table in ("paid", "identifies", "pages", "tracks", "discards"):
        assert not [r for r in deltalake_rows(lake / "segment" / table) if "alice" in json.dumps(r, default=str)]
    # Time travel still shows the rows until vacuum removes the files.
    from deltalake import DeltaTable
    old = DeltaTable(str(lake / "segment" / "paid"), version=versions["paid"] - 1).to_pyarrow_table()
    assert "alice" in json.dumps(old.to_pylist(), default=str)
    log = DeltaTable(str(lake / "segment" / "paid")).history(1)[0]
    assert log["operation"] == "DELETE"
    # Again: nothing more to remove.
    again = forget_cli(lake, "--user-id", "alice")
    assert again.returncode == 0 and "0 rows removed" in again.stdout.splitlines()[-1], again.stdout


def test_a_delete_event_forgets_the_user_after_writing_what_came_before(keyed):
    server = keyed()
    for n in range(2):
        assert server.post("/v1/batch", {"batch": people_events("carol", n) + people_events("dave", n)},
                           key=KEY).status_code == 200
    delete = json.dumps({"type": "delete", "userId": "carol", "messageId": "del-1",
                         "context": {}, "timestamp": "2026-11-02T00:00:00Z"}).encode()
    r = server.request("POST", "/v1/webhook", data=delete, headers=signed(delete))
    assert r.status_code == 200, r.text
    assert r.json()["deleted"]["paid"] == 4
    after = all_rows(server.lake)
    assert all(not mentions(rows, "carol") for rows in after.values())
    assert mentions(after["paid"], "dave")
    # A delete without a user is set aside with its reason.
    r = server.post("/v1/batch", {"batch": [{"type": "delete", "messageId": "del-2"}]}, key=KEY)
    assert r.status_code == 200
    [d] = [d for d in read_discards(server.lake) if "del-2" in d["column_value"]]
    assert "needs the userId" in d["reason"]
