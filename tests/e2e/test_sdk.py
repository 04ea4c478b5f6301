"""Segment's own Python SDK (analytics-python) pointed at the server: every call type lands as Segment's
warehouse schema would have it."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from segment.analytics import Client
from segment.analytics.version import VERSION

from conftest import rows_by_id, running_server

T0 = datetime(2026, 11, 2, 9, 30, 0, 123000, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def sdk_server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("sdk")) as server:
        yield server


@pytest.fixture(scope="module")
def sdk_rows(sdk_server):
    server = sdk_server
    errors = []
    client = Client("sdk-write-key", host=server.url, sync_mode=True, on_error=lambda e, batch: errors.append(e),
                    max_retries=0, timeout=60)
    ctx = {"ip": "203.0.113.9", "app": {"name": "Shop", "version": "2.1"}}
    before = datetime.now(timezone.utc)
    client.identify("user-42", {"email": "ada@example.com", "plan": "pro", "logins": 7, "vip": True,
                                "createdAt": datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
                                "address": {"city": "Berlin"}},
                    context=ctx, timestamp=T0, message_id="sdk-identify-1")
    client.track("user-42", "Order Completed", {"revenue": 19.99, "item Count": 3, "isFirstTime": False,
                                                "products": [{"sku": "A-1", "qty": 2}], "coupon": None},
                 context=ctx, timestamp=T0 + timedelta(seconds=1), message_id="sdk-track-1")
    client.track(event="Video Played", anonymous_id="anon-7", properties={"position": 42},
                 timestamp=T0 + timedelta(seconds=2), message_id="sdk-track-2")
    client.page("user-42", "Docs", "Install", {"path": "/docs/install", "title": "Install"},
                timestamp=T0 + timedelta(seconds=3), message_id="sdk-page-1")
    client.screen("user-42", "Onboarding", "Welcome", {"variant": "b"},
                  timestamp=T0 + timedelta(seconds=4), message_id="sdk-screen-1")
    client.group("user-42", "acme-inc", {"name": "Acme", "employees": 250},
                 timestamp=T0 + timedelta(seconds=5), message_id="sdk-group-1")
    client.alias("anon-7", "user-42", timestamp=T0 + timedelta(seconds=6), message_id="sdk-alias-1")
    after = datetime.now(timezone.utc)
    assert not errors
    tables = ("identifies", "tracks", "order_completed", "video_played", "pages", "screens", "groups", "aliases")
    assert server.tables() == set(tables), "nothing else (no discards) for well-formed SDK calls"
    return {t: rows_by_id(server.read(t)) for t in tables}, before, after


def test_every_call_type_lands(sdk_rows):
    rows, _, _ = sdk_rows
    assert {t: sorted(r) for t, r in rows.items()} == {
        "identifies": ["sdk-identify-1"], "tracks": ["sdk-track-1", "sdk-track-2"],
        "order_completed": ["sdk-track-1"], "video_played": ["sdk-track-2"], "pages": ["sdk-page-1"],
        "screens": ["sdk-screen-1"], "groups": ["sdk-group-1"], "aliases": ["sdk-alias-1"]}
    for table, by_id in rows.items():
        for row in by_id.values():
            assert row["context_library_name"] == "analytics-python", (table, row["id"])
            assert row["context_library_version"] == VERSION, (table, row["id"])


def test_identify_traits(sdk_rows):
    row = sdk_rows[0]["identifies"]["sdk-identify-1"]
    assert (row["user_id"], row["anonymous_id"]) == ("user-42", None)
    assert (row["email"], row["plan"], row["logins"], row["vip"]) == ("ada@example.com", "pro", 7, True)
    assert row["created_at"] == datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert row["address_city"] == "Berlin"
    assert (row["context_ip"], row["context_app_name"], row["context_app_version"]) == ("203.0.113.9", "Shop", "2.1")
    assert row["original_timestamp"] == T0


def test_track_properties(sdk_rows):
    rows = sdk_rows[0]
    t = rows["tracks"]["sdk-track-1"]
    assert (t["event"], t["event_text"], t["user_id"]) == ("order_completed", "Order Completed", "user-42")
    assert "revenue" not in t, "tracks carries no properties"
    o = rows["order_completed"]["sdk-track-1"]
    assert (o["event"], o["event_text"]) == ("order_completed", "Order Completed")
    assert (o["revenue"], o["item_count"], o["is_first_time"]) == (19.99, 3, False)
    assert o["products"] is not None and json.loads(o["products"]) == [{"sku": "A-1", "qty": 2}]
    assert "coupon" not in o, "a null property creates no column"
    v = rows["video_played"]["sdk-track-2"]
    assert (v["anonymous_id"], v["user_id"], v["position"]) == ("anon-7", None, 42)
    assert v["original_timestamp"] == T0 + timedelta(seconds=2)


def test_page_screen_group_alias(sdk_rows):
    rows = sdk_rows[0]
    p = rows["pages"]["sdk-page-1"]
    assert (p["name"], p["category"], p["path"], p["title"]) == ("Install", "Docs", "/docs/install", "Install")
    s = rows["screens"]["sdk-screen-1"]
    assert (s["name"], s["category"], s["variant"]) == ("Welcome", "Onboarding", "b")
    g = rows["groups"]["sdk-group-1"]
    assert (g["group_id"], g["name"], g["employees"], g["user_id"]) == ("acme-inc", "Acme", 250, "user-42")
    a = rows["aliases"]["sdk-alias-1"]
    assert (a["previous_id"], a["user_id"]) == ("anon-7", "user-42")


def test_received_at_is_the_arrival_time(sdk_rows):
    rows, before, after = sdk_rows
    for table, by_id in rows.items():
        for row in by_id.values():
            assert before <= row["received_at"] <= row["uuid_ts"] <= after, (table, row["id"])


def test_batch_sent_at_corrects_clock_skew(sdk_rows):
    rows, before, after = sdk_rows
    row = rows["tracks"]["sdk-track-1"]
    assert row["sent_at"] is not None
    assert before <= row["sent_at"] <= after
    assert row["timestamp"] == row["received_at"] - (row["sent_at"] - row["original_timestamp"])
