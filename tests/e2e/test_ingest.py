"""`segment-delta ingest`: the backfill path loads files through the same pipeline and prints a summary."""

import gzip
import json
import re
import subprocess
from collections import Counter

import pytest

from conftest import (binary, clean_env, describe, generate, lake_tables, parse_ts, read_discards, read_table,
                      tables_of)


def run_ingest(lake, *args, timeout=300):
    env = clean_env({"SEGMENT_DELTA_LAKE": str(lake), "SEGMENT_DELTA_LOG_FORMAT": "text"})
    p = subprocess.run([str(binary()), "ingest", *map(str, args)], env=env, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"ingest exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr[-20000:]}"
    return p.stdout


def summary(stdout):
    """{'events': N, 'discards': N, 'rows': {'schema.table': N}} from the printed summary."""
    out = {"rows": {}}
    for line in stdout.splitlines():
        if m := re.fullmatch(r"rows\s+(\S+): (\d+)", line):
            out["rows"][m[1]] = int(m[2])
        elif m := re.fullmatch(r"(events|discards|commits)\s+(\d+)", line):
            out[m[1]] = int(m[2])
    return out


def test_ingest_gzipped_jsonl_corpus(tmp_path):
    lines = generate(5_000, seed=7)
    events = [json.loads(line) for line in lines]
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    lake = tmp_path / "lake"

    stdout = run_ingest(lake, "--schema", "backfill", path)

    want = Counter(t for e in events for t in tables_of(e))
    got = summary(stdout)
    assert got["events"] == 5_000, stdout
    assert got["discards"] == 0, stdout
    assert got["rows"] == {f"backfill.{t}": n for t, n in want.items()}, stdout
    assert re.search(r"^seconds\s+\d+\.\d+ \(\d+ events/s\)$", stdout, re.M), stdout

    assert lake_tables(lake, "backfill") == set(want)
    for table, n in want.items():
        ids = read_table(lake, "backfill", table).column("id").to_pylist()
        assert len(ids) == len(set(ids)) == n, table
    tracks = {e["messageId"] for e in events if e["type"] == "track"}
    assert set(read_table(lake, "backfill", "tracks").column("id").to_pylist()) == tracks
    assert not (lake / "segment").exists()


def test_ingest_json_array_batch_bodies_and_bad_lines(tmp_path):
    """A .json file (an array of events), a JSONL file of /v1/batch bodies with a batch context, and lines that are
    not events: every valid event lands, every bad line is a discard."""
    events = [json.loads(line) for line in generate(30, seed=3)]
    # A backfill keeps the receivedAt its file recorded (live traffic never does).
    events[0]["receivedAt"] = "2026-10-01T00:00:00.000Z"
    array_file = tmp_path / "array.json"
    array_file.write_text(json.dumps(events[:10], indent=2))
    batch_body = {"batch": events[10:25], "context": {"batchCtx": "yes", "library": {"name": "ignored"}}}
    jsonl = tmp_path / "mixed.jsonl"
    jsonl.write_bytes(b"\n".join([
        json.dumps(batch_body).encode(),
        b"",
        *[json.dumps(e).encode() for e in events[25:]],
        b'{"type": "track", "userId": "u1", "event": ',
        b'{"type": "track", "event": "No Ids", "messageId": "noids"}',
    ]) + b"\n")
    lake = tmp_path / "lake"

    got = summary(run_ingest(lake, array_file, jsonl))  # no --schema: local mode loads into `segment`

    assert got["events"] == 32 and got["discards"] == 2
    want = Counter(t for e in events for t in tables_of(e))
    assert got["rows"] == {f"segment.{t}": n for t, n in want.items()}
    discards = read_discards(lake)
    assert len(discards) == 2, describe(discards)
    assert {d["row_id"] for d in discards} == {"", "noids"}
    kept = next(r for r in read_table(lake, "segment", tables_of(events[0])[0]).to_pylist()
                if r["id"] == events[0]["messageId"])
    received = parse_ts(events[0]["receivedAt"])
    assert kept["received_at"] == received
    assert kept["timestamp"] == received - (parse_ts(events[0]["sentAt"]) - parse_ts(events[0]["timestamp"]))
    # The batch context reached the batch's events, under each event's own context.
    for e in events[10:25]:
        table = tables_of(e)[0]
        row = next(r for r in read_table(lake, "segment", table).to_pylist() if r["id"] == e["messageId"])
        assert row["context_batch_ctx"] == "yes"
        assert row["context_library_name"] == e["context"]["library"]["name"]


def test_ingest_refuses_a_missing_file(tmp_path):
    env = clean_env({"SEGMENT_DELTA_LAKE": str(tmp_path / "lake")})
    p = subprocess.run([str(binary()), "ingest", str(tmp_path / "missing.jsonl")], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0
    assert "missing.jsonl" in p.stderr


def test_ingest_one_hostile_item_does_not_sink_its_batch_line(tmp_path):
    ok = [{"type": "track", "userId": "u1", "event": "Fine", "messageId": f"ok-{i}"} for i in range(3)]
    deep = (b'{"type":"track","userId":"u1","event":"Deep","messageId":"deep-1","properties":{"p":'
            + b"[" * 200 + b"]" * 200 + b"}}")
    line = b'{"batch":[' + b",".join([json.dumps(ok[0]).encode(), deep, json.dumps(ok[1]).encode()]) + b"]}"
    path = tmp_path / "batches.jsonl"
    path.write_bytes(line + b"\n" + json.dumps(ok[2]).encode() + b"\n")
    lake = tmp_path / "lake"

    got = summary(run_ingest(lake, path))

    assert read_table(lake, "segment", "fine").column("id").to_pylist() == ["ok-0", "ok-1", "ok-2"]
    [d] = read_discards(lake)
    assert "nested more than 128 levels" in d["reason"] and d["column_value"] == deep.decode()
    assert (got["events"], got["discards"]) == (4, 1)


def test_ingesting_the_same_file_again_writes_nothing_twice(tmp_path):
    """A re-run of a backfill (or one resumed after a failure) skips what each table already holds; --force
    appends again on purpose."""
    lines = generate(2_000, seed=11)
    events = [json.loads(line) for line in lines]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    lake = tmp_path / "lake"
    want = Counter(t for e in events for t in tables_of(e))

    first = run_ingest(lake, path)
    assert re.search(r"^duplicates skipped 0$", first, re.M), first
    # The same content under another name is the same data.
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(path.read_bytes())
    second = run_ingest(lake, copy)
    skipped = int(re.search(r"^duplicates skipped (\d+)$", second, re.M)[1])
    assert skipped == sum(want.values()), second
    assert summary(second)["rows"] == {}, second
    for table, n in want.items():
        ids = read_table(lake, "segment", table).column("id").to_pylist()
        assert len(ids) == len(set(ids)) == n, table

    forced = run_ingest(lake, "--force", path)
    assert re.search(r"^duplicates skipped 0$", forced, re.M), forced
    for table, n in want.items():
        assert len(read_table(lake, "segment", table).column("id").to_pylist()) == 2 * n, table
