"""Values are stored as sent or set aside with a reason, never silently changed: numbers no BIGINT or DOUBLE can
hold keep their digits as STRING, dates outside years 1-9999 stay text, a key sent twice leaves its earlier value
in `discards` (once per body for a batch's shared context), and clock-skew correction never produces a time
readers cannot hold."""

import pyarrow as pa
import pytest

from conftest import duckdb_rows, read_discards, rows_by_id, running_server

BIG = "123456789012345678901234567890"
BELOW_BIGINT = "-9223372036854775809"


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("exact")) as server:
        body = (
            '{"batch":['
            # Numbers written as JSON numbers, not strings: the text is what must survive.
            '{"type":"track","userId":"u1","event":"Exact","messageId":"n-1",'
            f'"properties":{{"big":{BIG},"below":{BELOW_BIGINT},"tiny":1e-400,"huge":1e400,'
            '"max":9223372036854775807,"fine":2.5}},'
            '{"type":"track","userId":"u1","event":"Exact","messageId":"d-1",'
            '"properties":{"year0":"0000-01-01T00:00:00Z","year10000":"10000-01-01T00:00:00Z",'
            '"ok":"2026-11-01T10:00:00Z"}},'
            '{"type":"track","userId":"u1","event":"Exact","messageId":"dup-1",'
            '"properties":{"plan":"first","plan":"second","nested":{"k":1,"k":2}}},'
            # A device clock thousands of years ahead: skew correction would leave year 1.
            '{"type":"track","userId":"u1","event":"Skewed","messageId":"skew-1",'
            '"timestamp":"0005-06-01T00:00:00Z","sentAt":"9999-01-01T00:00:00Z"}'
            "]}"
        )
        r = server.post("/v1/batch", body.encode())
        assert r.status_code == 200, r.text
        yield server


def test_numbers_beyond_bigint_keep_their_digits(landed):
    table = landed.read("exact")
    schema = table.schema
    for column in ("big", "below", "tiny", "huge"):
        assert schema.field(column).type == pa.string(), (column, schema)
    assert schema.field("max").type == pa.int64()
    assert schema.field("fine").type == pa.float64()
    row = rows_by_id(table)["n-1"]
    assert row["big"] == BIG and row["below"] == BELOW_BIGINT
    assert row["tiny"] == "1e-400" and row["huge"] == "1e400"
    assert row["max"] == 9223372036854775807 and row["fine"] == 2.5
    # An independent reader sees the same digits.
    [duck] = [r for r in duckdb_rows(landed.lake / "segment" / "exact") if r["id"] == "n-1"]
    assert duck["big"] == BIG and duck["below"] == BELOW_BIGINT


def test_dates_outside_years_1_to_9999_stay_text(landed):
    table = landed.read("exact")
    assert table.schema.field("year0").type == pa.string()
    assert table.schema.field("year10000").type == pa.string()
    assert pa.types.is_timestamp(table.schema.field("ok").type)
    row = rows_by_id(table)["d-1"]
    assert row["year0"] == "0000-01-01T00:00:00Z" and row["year10000"] == "10000-01-01T00:00:00Z"


def test_a_key_sent_twice_keeps_the_later_value_and_discards_the_earlier(landed):
    row = rows_by_id(landed.read("exact"))["dup-1"]
    assert row["plan"] == "second" and row["nested_k"] == 2
    found = {d["column_name"]: d for d in read_discards(landed.lake) if d["row_id"] == "dup-1"}
    assert set(found) == {"properties.plan", "properties.nested.k"}, found
    assert found["properties.plan"]["column_value"] == '"first"'
    assert found["properties.nested.k"]["column_value"] == "1"
    # Event-level problems are filed under the table of the event type.
    assert all("appears twice" in d["reason"] and d["table_name"] == "tracks" for d in found.values())


def test_a_key_sent_twice_in_a_batch_context_is_kept_once_per_body(landed):
    body = (
        '{"batch":[{"type":"track","userId":"u1","event":"Shared","messageId":"ctx-1"},'
        '{"type":"track","userId":"u1","event":"Shared","messageId":"ctx-2"}],'
        '"context":{"locale":"de-DE","locale":"en-US"}}'
    )
    r = landed.post("/v1/batch", body.encode())
    assert r.status_code == 200, r.text
    rows = rows_by_id(landed.read("shared"))
    assert [rows[i]["context_locale"] for i in ("ctx-1", "ctx-2")] == ["en-US", "en-US"]
    found = [d for d in read_discards(landed.lake) if d["column_name"] == "context.locale"]
    assert [d["column_value"] for d in found] == ['"de-DE"'], found
    assert "appears twice in the batch's context" in found[0]["reason"]


def test_skew_correction_never_leaves_the_timestamp_range(landed):
    table = landed.read("skewed")
    row = rows_by_id(table)["skew-1"]
    # The correction would give a date before year 1; the caller's own time is kept instead.
    assert row["timestamp"].year == 5 and row["original_timestamp"].year == 5
    # pandas (nanosecond timestamps) cannot hold year 5, but the column reads back without error as objects.
    assert table.column("timestamp").to_pylist()[0].isoformat().startswith("0005-06-01")
