"""Delta conformance: what the server does with tables that other engines made, with the protocol features they
carry, read back with two independent readers (Python deltalake and DuckDB's delta extension) and checked in the
log itself.

The tables are the golden tables under tests/fixtures/golden (copied, never written in place), tables Python
deltalake makes, and hand-made commits on top of either. A foreign table is appended to by sending track events
whose event name snake_cases to its name: `lake/segment/golden_primitives` receives `"event": "golden primitives"`.

- Column mapping (name and id): data files use physical names and field ids, new columns get the next ids.
- Refusals: check constraints, generated and identity columns, invariants, unknown features and newer protocols
  are refused by name over HTTP (500) and nothing is written.
- NOT NULL columns: a row without a value goes whole to `discards`, over HTTP and over the Event Hub invocation.
- Partitions: partition values in the log and in the directories, also after another writer re-partitions.
- In-commit timestamps, row tracking, deletion vectors, vacuum retention, commits whose answer is lost, and the
  `users` upsert on a target with rows deleted by a deletion vector.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from deltalake import DeltaTable, Field, Schema, write_deltalake

from conftest import (REPO, Azurite, binary, clean_env, deltalake_rows, deltalake_scan, duckdb_rows, expected_row,
                      go_snakecase, local_delta_log, parse_ts, read_discards)
from faultproxy import FaultProxy

GOLDEN = REPO / "tests" / "fixtures" / "golden"
SCHEMA = "segment"
TIMESTAMP = "2026-11-20T10:00:00.000Z"
SENT_AT = "2026-11-20T10:00:02.500Z"
WRITER_TXN = "segment-delta/writer/"
# The writer's own columns that a track event fills (anonymous_id only when the event has one).
FILLED_BY_TRACK = {"id", "user_id", "received_at", "sent_at", "timestamp", "original_timestamp", "uuid_ts", "event",
                   "event_text"}


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def place(lake: Path, fixture: str, name: str) -> Path:
    """A copy of a golden table at `<lake>/segment/<name>`."""
    dest = lake / SCHEMA / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(GOLDEN / fixture, dest)
    return dest


def table_dir(lake: Path, name: str) -> Path:
    return lake / SCHEMA / name


def event_name(table: str) -> str:
    """An event name that snake_cases to `table`."""
    name = table.replace("_", " ")
    assert go_snakecase(name) == table
    return name


def track(table: str, message_id: str, properties: dict, user: str = "u1") -> dict:
    return {"type": "track", "event": event_name(table), "userId": user, "messageId": message_id,
            "properties": properties, "timestamp": TIMESTAMP, "sentAt": SENT_AT}


def send(server, events: list[dict]):
    """One /v1/batch request; the answer comes once every table of it is committed (or failed)."""
    return server.post("/v1/batch", {"batch": events})


def send_ok(server, events: list[dict]) -> None:
    r = send(server, events)
    assert r.status_code == 200 and r.json() == {"success": True}, (r.status_code, r.text)


def canonical(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def normalised(rows: list[dict]) -> list[dict]:
    """Rows with timestamps as UTC ISO text and sorted, so that two readers' rows compare."""
    def value(v):
        if isinstance(v, datetime):
            return v.astimezone(timezone.utc).isoformat() if v.tzinfo else v.isoformat()
        return v
    return sorted(({k: value(v) for k, v in r.items()} for r in rows), key=canonical)


def read_both(path: Path) -> dict[str, list[dict]]:
    """The table's rows as each reader returns them."""
    return {"deltalake": deltalake_rows(path), "duckdb": duckdb_rows(path)}


def files_under(path: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every file of a table directory, with its size and, for log files, its content."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(path))
            out[rel] = (p.stat().st_size, p.read_bytes() if rel.startswith("_delta_log") else None)
    return out


def last_metadata(log: dict[int, list[dict]]) -> dict:
    meta = None
    for version in sorted(log):
        for action in log[version]:
            if "metaData" in action:
                meta = action["metaData"]
    assert meta is not None
    return meta


def last_protocol(log: dict[int, list[dict]]) -> dict:
    proto = None
    for version in sorted(log):
        for action in log[version]:
            if "protocol" in action:
                proto = action["protocol"]
    assert proto is not None
    return proto


def fields_of(meta: dict) -> dict[str, dict]:
    return {f["name"]: f for f in json.loads(meta["schemaString"])["fields"]}


def adds_after(log: dict[int, list[dict]], version: int) -> dict[int, list[dict]]:
    return {v: [a["add"] for a in actions if "add" in a] for v, actions in log.items() if v > version}


def check_writer_commits(log: dict[int, list[dict]], versions) -> None:
    """The writer's commits carry `commitInfo.txnId` (each its own), and no commit of the table has a `txn` of the
    old per-writer kind."""
    tokens = []
    for v in versions:
        infos = [a["commitInfo"] for a in log[v] if "commitInfo" in a]
        assert len(infos) == 1, f"version {v}: {len(infos)} commitInfo actions"
        token = infos[0].get("txnId")
        assert isinstance(token, str) and token, f"version {v}: commitInfo has no txnId: {infos[0]}"
        tokens.append(token)
    assert len(set(tokens)) == len(tokens), f"two commits with the same txnId: {tokens}"
    writer_txns = [(v, a["txn"]) for v, actions in log.items() for a in actions
                   if "txn" in a and a["txn"].get("appId", "").startswith(WRITER_TXN)]
    assert not writer_txns, f"txn actions of the writer's own kind: {writer_txns}"


def assert_new_row(row: dict, event: dict, table: str, dropped: tuple[str, ...] = ()) -> None:
    """A row the server wrote for `event`: every value the event fills, typed as the warehouse types it, and the
    properties in `dropped` (values a foreign column cannot take) null."""
    where = f"{table} row {event['messageId']}"
    want = expected_row(event, table)
    for column in dropped:
        want.pop(column, None)
        assert row.get(column) is None, f"{where}: {column} = {row.get(column)!r}, expected null (discarded)"
    for column, sent in want.items():
        assert column in row, f"{where}: no column {column} (columns: {sorted(row)})"
        got = row[column]
        if isinstance(sent, str) and len(sent) >= 19 and sent[4] == "-" and sent[10] in "T ":
            assert isinstance(got, datetime) and got == parse_ts(sent), f"{where}.{column}: {got!r} != {sent!r}"
        elif isinstance(sent, bool):
            assert got is sent, f"{where}.{column}: {got!r} != {sent!r}"
        else:
            assert got == sent and type(got) is type(sent), f"{where}.{column}: {got!r} != {sent!r}"
    received = row["received_at"]
    assert isinstance(received, datetime) and received.tzinfo is not None, where
    assert row["timestamp"] == received - (parse_ts(SENT_AT) - parse_ts(TIMESTAMP)), where
    # Whether a foreign table gets a `uuid_ts` column at all is checked by test_foreign_table_gets_the_writer_columns
    # alone, so that this one question does not hide what the other tests check.
    if "uuid_ts" in row:
        assert row["uuid_ts"] is not None and row["uuid_ts"] >= received, where


def split_rows(rows: list[dict], marker: str = "event") -> tuple[list[dict], dict[str, dict]]:
    """(rows the table had, {messageId: row} of rows the server wrote), told apart by `marker`, a column only the
    server's rows fill."""
    old = [r for r in rows if r.get(marker) is None]
    new = {}
    for r in rows:
        if r.get(marker) is not None:
            assert r["id"] not in new, f"id {r['id']} twice"
            new[r["id"]] = r
    return old, new


def check_old_rows_unchanged(before: list[dict], old_after: list[dict], new_columns: set[str], reader: str) -> None:
    for r in old_after:
        filled = {c: r[c] for c in new_columns if r.get(c) is not None}
        assert not filled, f"{reader}: an old row got values in new columns: {filled}"
    projected = [{k: r[k] for k in before[0]} for r in old_after] if before else old_after
    assert normalised(projected) == normalised(before), f"{reader}: old rows changed"


def discards_of(lake: Path, table: str) -> list[dict]:
    rows = read_discards(lake)
    duck = duckdb_rows(lake / SCHEMA / "discards") if rows else []
    assert normalised(rows) == normalised(duck), "the two readers disagree on discards"
    return [r for r in rows if r["table_name"] == table]


def maintain(lake: Path, *args: str, ok: bool = True, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(binary()), "maintain", *args],
                          env=clean_env({"SEGMENT_DELTA_LAKE": str(lake), **env}),
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if ok:
        assert proc.returncode == 0, f"maintain failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-5000:]}"
    return proc


def report_line(out: str, table: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith(f"{SCHEMA}.{table}:")]
    assert len(lines) == 1, f"no single report line for {table} in:\n{out}"
    return lines[0]


def write_commit(path: Path, version: int, actions: list[dict]) -> None:
    """A hand-made commit, written like a writer would (put-if-absent)."""
    target = path / "_delta_log" / f"{version:020d}.json"
    with open(target, "x") as f:
        f.write("".join(json.dumps(a) + "\n" for a in actions))


def now_ms() -> int:
    return int(time.time() * 1000)


def plain_table() -> pa.Table:
    return pa.table({
        "sku": pa.array(["a-1", "b-2"], pa.string()),
        "qty": pa.array([3, 4], pa.int64()),
        "price": pa.array([9.5, 0.25], pa.float64()),
        "ok": pa.array([True, False], pa.bool_()),
        "ts": pa.array([datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc), None], pa.timestamp("us", tz="UTC")),
        "day": pa.array(["2025-01-02", "2025-01-03"], pa.string()),
    })


def physical_names(meta: dict) -> dict[str, str]:
    return {n: f["metadata"]["delta.columnMapping.physicalName"] for n, f in fields_of(meta).items()}


def data_file(path: Path, add: dict) -> Path:
    return path / urllib.parse.unquote(add["path"])


# ---------------------------------------------------------------------------------------------------------------
# 0. A foreign table without any feature


def test_foreign_table_gets_the_writer_columns(start_server):
    """A table another engine made gets the writer's own columns, nullable, the first time rows arrive: id,
    anonymous_id (when an event has one), user_id, received_at, sent_at, timestamp, original_timestamp, uuid_ts,
    event, event_text; its own columns of types the writer writes take values, the others go to discards."""
    server = start_server()
    name = "golden_primitives"
    path = place(server.lake, "data-reader-primitives", name)
    before = read_both(path)
    assert len(before["deltalake"]) == 11 and normalised(before["deltalake"]) == normalised(before["duckdb"])
    log0 = local_delta_log(path)
    fields0 = fields_of(last_metadata(log0))
    events = [track(name, "prim-1", {"as_long": 5, "as_double": 0.5, "as_string": "five", "as_boolean": True,
                                     "as_int": 5, "as_binary": "AQI=", "note": "n"}),
              dict(track(name, "prim-2", {"as_string": "anon"}), anonymousId="anon-2")]
    del events[1]["userId"]
    send_ok(server, events)
    log = local_delta_log(path)
    fields = fields_of(last_metadata(log))
    assert {n: fields[n] for n in fields0} == fields0
    new = {n: f for n, f in fields.items() if n not in fields0}
    assert all(f["nullable"] is True for f in new.values())
    types = {n: f["type"] for n, f in new.items()}
    want_types = {"id": "string", "anonymous_id": "string", "user_id": "string", "received_at": "timestamp",
                  "sent_at": "timestamp", "timestamp": "timestamp", "original_timestamp": "timestamp",
                  "uuid_ts": "timestamp", "event": "string", "event_text": "string", "note": "string"}
    assert {n: t for n, t in types.items() if n != "uuid_ts"} == {n: t for n, t in want_types.items()
                                                                   if n != "uuid_ts"}, types
    check_writer_commits(log, [v for v in log if v > max(log0)])
    after = read_both(path)
    for reader, rows in after.items():
        old, by_id = split_rows(rows)
        check_old_rows_unchanged(before[reader], old, set(new), reader)
        assert set(by_id) == {"prim-1", "prim-2"}, reader
        for e in events:
            assert_new_row(by_id[e["messageId"]], e, name,
                           dropped=("as_int", "as_binary") if e["messageId"] == "prim-1" else ())
    assert normalised(after["deltalake"]) == normalised(after["duckdb"])
    discards = {d["column_name"]: d for d in discards_of(server.lake, name)}
    assert set(discards) == {"as_int", "as_binary"}
    assert discards["as_int"]["row_id"] == "prim-1" and discards["as_int"]["column_value"] == "5"
    assert "integer" in discards["as_int"]["reason"] and "binary" in discards["as_binary"]["reason"]

    # uuid_ts, when the row was written, is one of the writer's columns like the others.
    assert types.get("uuid_ts") == "timestamp", f"no uuid_ts column was added; new columns: {sorted(types)}"
    for reader, rows in after.items():
        for row in split_rows(rows)[1].values():
            assert row["uuid_ts"] is not None and row["uuid_ts"] >= row["received_at"], (reader, row)


# ---------------------------------------------------------------------------------------------------------------
# 1. Column mapping


COLUMN_MAPPING_CASES = {
    "golden name mode": ("data-skipping-basic-stats-all-types-columnmapping-name", "name"),
    "golden id mode": ("data-skipping-basic-stats-all-types-columnmapping-id", "id"),
    "python name mode": (None, "name"),
}


@pytest.mark.parametrize("case", list(COLUMN_MAPPING_CASES), ids=list(COLUMN_MAPPING_CASES))
def test_column_mapping_append(start_server, case):
    fixture, mode = COLUMN_MAPPING_CASES[case]
    server = start_server()
    name = f"cm_{mode}_{'golden' if fixture else 'python'}"
    if fixture:
        path = place(server.lake, fixture, name)
        props = [{"as_long": 41, "as_double": 2.5, "as_string": "hello", "as_timestamp": "2024-05-06T07:08:09.123456Z",
                  "as_int": 7, "plan": "pro", "seats": 12},
                 {"as_long": -3, "as_string": "world", "plan": "free", "coupon": True}]
        dropped = ("as_int",)
    else:
        path = table_dir(server.lake, name)
        path.parent.mkdir(parents=True)
        write_deltalake(str(path), plain_table(), configuration={"delta.columnMapping.mode": mode})
        props = [{"sku": "c-3", "qty": 5, "price": 1.5, "ok": True, "ts": "2024-05-06T07:08:09.123456Z",
                  "day": "2024-05-06", "plan": "pro", "seats": 12},
                 {"sku": "d-4", "qty": -1, "plan": "free", "coupon": True}]
        dropped = ()
    log0 = local_delta_log(path)
    v0 = max(log0)
    meta0 = last_metadata(log0)
    fields0 = fields_of(meta0)
    max_id0 = int(meta0["configuration"]["delta.columnMapping.maxColumnId"])
    before = read_both(path)
    assert before["deltalake"] and normalised(before["deltalake"]) == normalised(before["duckdb"])

    events = [track(name, f"{name}-{i}", p) for i, p in enumerate(props)]
    send_ok(server, events)

    log = local_delta_log(path)
    meta = last_metadata(log)
    fields = fields_of(meta)
    # The old columns are untouched; the new ones follow, ids counting on from the old maximum.
    assert {n: fields[n] for n in fields0} == fields0
    new_names = [n for n in fields if n not in fields0]
    filled = set().union(*(set(expected_row(e, name)) for e in events)) | {"received_at", "timestamp"}
    assert set(new_names) - {"uuid_ts"} == filled - set(fields0) - set(dropped), new_names
    ids = [fields[n]["metadata"].get("delta.columnMapping.id") for n in new_names]
    assert ids == list(range(max_id0 + 1, max_id0 + 1 + len(new_names))), (new_names, ids)
    physical = [fields[n]["metadata"].get("delta.columnMapping.physicalName") for n in new_names]
    assert all(re.fullmatch(r"col-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", p or "")
               for p in physical), physical
    assert len(set(physical)) == len(physical)
    assert all(fields[n]["nullable"] is True for n in new_names)
    assert meta["configuration"]["delta.columnMapping.maxColumnId"] == str(max_id0 + len(new_names))
    assert meta["configuration"]["delta.columnMapping.mode"] == mode
    # maxColumnId moved in the commit that added the columns, with them.
    widening = [v for v in log if v > v0 and any("metaData" in a for a in log[v])]
    assert len(widening) == 1
    assert any("add" in a for a in log[widening[0]])

    # The new data files: physical names, field ids, statistics keyed by physical name.
    names = physical_names(meta)
    ids_by_physical = {names[n]: f["metadata"]["delta.columnMapping.id"] for n, f in fields.items()}
    new_adds = [a for adds in adds_after(log, v0).values() for a in adds]
    assert len(new_adds) >= 1
    for add in new_adds:
        schema = pq.read_schema(data_file(path, add))
        assert set(schema.names) <= set(names.values()), f"logical names in {add['path']}: {schema.names}"
        for column in ("id", "event", "plan"):
            assert names[column] in schema.names
        for f in schema:
            assert f.metadata and f.metadata.get(b"PARQUET:field_id") == str(ids_by_physical[f.name]).encode(), \
                (f.name, f.metadata)
        stats = json.loads(add["stats"])
        assert stats["numRecords"] == len(events)
        for kind in ("minValues", "maxValues", "nullCount"):
            assert set(stats.get(kind, {})) <= set(names.values()), (kind, stats.get(kind))
        assert names["plan"] in stats["nullCount"]
    check_writer_commits(log, [v for v in log if v > v0])

    after = read_both(path)
    for reader, rows in after.items():
        old, new = split_rows(rows)
        check_old_rows_unchanged(before[reader], old, set(new_names), reader)
        assert set(new) == {e["messageId"] for e in events}, reader
        for e in events:
            assert_new_row(new[e["messageId"]], e, name, dropped)
    assert normalised(after["deltalake"]) == normalised(after["duckdb"])
    if dropped:
        discards = discards_of(server.lake, name)
        assert [(d["row_id"], d["column_name"]) for d in discards] == [(f"{name}-0", "as_int")]
        assert "integer" in discards[0]["reason"] and discards[0]["column_value"] == "7"


# ---------------------------------------------------------------------------------------------------------------
# 2. Refusals


def python_plain(path: Path) -> None:
    write_deltalake(str(path), plain_table())


def with_constraint(path: Path) -> None:
    python_plain(path)
    DeltaTable(str(path)).alter.add_constraint({"qty_positive": "qty > 0"})


def with_generated_column(path: Path) -> None:
    DeltaTable.create(str(path), Schema([Field("qty", "long"),
                                         Field("qty2", "long", metadata={"delta.generationExpression": "qty * 2"})]))
    write_deltalake(str(path), pa.table({"qty": pa.array([5], pa.int64()), "qty2": pa.array([10], pa.int64())}),
                    mode="append")


def with_invariant(path: Path) -> None:
    invariant = json.dumps({"expression": {"expression": "qty > 0"}})
    DeltaTable.create(str(path), Schema([Field("qty", "long", metadata={"delta.invariants": invariant}),
                                         Field("sku", "string")]))
    write_deltalake(str(path), pa.table({"qty": pa.array([5], pa.int64()), "sku": ["a"]}), mode="append")


def golden(fixture: str):
    def make(path: Path) -> None:
        shutil.copytree(GOLDEN / fixture, path)
    return make


def hand_made(protocol: dict, config: dict | None = None, field_metadata: dict | None = None):
    """A Python-made plain table, then a commit that sets `protocol` (and configuration or field metadata)."""
    def make(path: Path) -> None:
        python_plain(path)
        log = local_delta_log(path)
        meta = dict(last_metadata(log))
        meta["configuration"] = {**meta["configuration"], **(config or {})}
        if field_metadata:
            schema = json.loads(meta["schemaString"])
            for f in schema["fields"]:
                f["metadata"] = {**f["metadata"], **field_metadata.get(f["name"], {})}
            meta["schemaString"] = json.dumps(schema)
        write_commit(path, max(log) + 1, [
            {"commitInfo": {"timestamp": now_ms(), "operation": "SET TBLPROPERTIES", "operationParameters": {},
                            "engineInfo": "conformance-test"}},
            {"protocol": protocol},
            {"metaData": meta},
        ])
    return make


LEGACY = ["appendOnly", "invariants"]
REFUSALS = {
    "check constraint": (with_constraint, "checkConstraints", "qty_positive"),
    "generated column": (with_generated_column, "generatedColumns", None),
    "column invariant": (with_invariant, "invariants", None),
    "golden generated column": (golden("dbr_8_1_generated_columns"), "generatedColumns", None),
    "golden identity column": (golden("issue-2152"), "identityColumns", None),
    "golden collations": (golden("collations-table"), "collations", None),
    "unknown writer feature": (hand_made({"minReaderVersion": 1, "minWriterVersion": 7,
                                          "writerFeatures": [*LEGACY, "frobnicateFiles"]}), "frobnicateFiles", None),
    "column default": (hand_made({"minReaderVersion": 1, "minWriterVersion": 7,
                                  "writerFeatures": [*LEGACY, "allowColumnDefaults"]},
                                 field_metadata={"sku": {"CURRENT_DEFAULT": "'none'"}}), "allowColumnDefaults", None),
    "materialized partition columns": (hand_made({"minReaderVersion": 1, "minWriterVersion": 7,
                                                  "writerFeatures": [*LEGACY, "materializePartitionColumns"]}),
                                       "materializePartitionColumns", None),
    "iceberg compatibility": (hand_made({"minReaderVersion": 1, "minWriterVersion": 7,
                                         "writerFeatures": [*LEGACY, "icebergCompatV2"]},
                                        config={"delta.enableIcebergCompatV2": "true"}), "icebergCompatV2", None),
    "catalog-managed commits": (hand_made({"minReaderVersion": 3, "minWriterVersion": 7,
                                           "readerFeatures": ["catalogManaged"],
                                           "writerFeatures": [*LEGACY, "catalogManaged", "inCommitTimestamp"]}),
                                "catalogManaged", None),
    "catalog-owned commits (preview)": (hand_made({"minReaderVersion": 3, "minWriterVersion": 7,
                                                   "readerFeatures": ["catalogOwned-preview"],
                                                   "writerFeatures": [*LEGACY, "catalogOwned-preview",
                                                                      "inCommitTimestamp"]}),
                                        "catalogOwned-preview", None),
    "writer version 8": (hand_made({"minReaderVersion": 1, "minWriterVersion": 8}), "writer version 8", None),
    "reader version 4": (hand_made({"minReaderVersion": 4, "minWriterVersion": 2}), "reader version 4", None),
    "golden reader version 99": (golden("deltalog-invalid-protocol-version"), "reader version 99", None),
}


# Features no reader here reads either: for these only the files are compared.
UNREADABLE = {"reader version 99", "reader version 4", "catalogManaged", "catalogOwned-preview"}


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
def test_refused_tables(start_server, case):
    make, feature, detail = REFUSALS[case]
    server = start_server()
    name = "refused_" + re.sub(r"[^a-z0-9]+", "_", case).strip("_")
    path = table_dir(server.lake, name)
    path.parent.mkdir(parents=True)
    make(path)
    files_before = files_under(path)
    before = {}
    for reader, read in (("deltalake", deltalake_rows), ("duckdb", duckdb_rows)):
        try:
            before[reader] = normalised(read(path))
        except Exception as e:  # a reader that cannot read the table: only the log and the files are compared
            before[reader] = f"refused: {type(e).__name__}"
    if feature not in UNREADABLE:
        assert any(isinstance(v, list) for v in before.values()), before

    event = track(name, f"{name}-1", {"sku": "x", "qty": 5, "note": "n"})
    r = send(server, [event])
    assert r.status_code == 500, (r.status_code, r.text)
    answer = r.json()
    assert answer["success"] is False

    # Nothing written: same files, byte for byte in the log, and the same rows for every reader that reads it.
    assert files_under(path) == files_before
    for reader, read in (("deltalake", deltalake_rows), ("duckdb", duckdb_rows)):
        if isinstance(before[reader], list):
            assert normalised(read(path)) == before[reader], reader

    error = answer["error"]
    prefix = (f"write failed, nothing was acknowledged: table {name}: refused to append this table: "
              f"it uses the Delta feature {feature} (")
    assert error.startswith(prefix) and error.endswith("); nothing was written"), error
    if detail:
        assert detail in error, error
    # The same request again: refused the same way (the refusal is not a cached state that lapses).
    r2 = send(server, [dict(event, messageId=f"{name}-2")])
    assert r2.status_code == 500 and r2.json()["error"].startswith(prefix), r2.text
    assert files_under(path) == files_before
    # The other table of the request, `tracks`, was written.
    for reader, rows in read_both(table_dir(server.lake, "tracks")).items():
        assert sorted(t["id"] for t in rows) == [f"{name}-1", f"{name}-2"], reader


# ---------------------------------------------------------------------------------------------------------------
# 3. NOT NULL columns


def not_null_table(path: Path) -> list[dict]:
    schema = pa.schema([pa.field("qty", pa.int64(), nullable=False), pa.field("sku", pa.string(), nullable=False),
                        pa.field("note", pa.string())])
    write_deltalake(str(path), pa.table({"qty": [1], "sku": ["first"], "note": [None]}, schema=schema))
    fields = fields_of(last_metadata(local_delta_log(path)))
    assert fields["qty"]["nullable"] is False and fields["sku"]["nullable"] is False
    return [{"qty": 1, "sku": "first", "note": None}]


def check_not_null_outcome(lake: Path, path: Path, name: str, old: list[dict], kept: list[dict],
                           refused: dict[str, tuple[str, dict]]) -> None:
    """The table holds the old rows and exactly `kept`; discards hold each refused row once, naming its column."""
    for reader, rows in read_both(path).items():
        old_after = [r for r in rows if r.get("event") is None]
        assert normalised([{k: r[k] for k in ("qty", "sku", "note")} for r in old_after]) == normalised(old), reader
        new = {r["id"]: r for r in rows if r.get("event") is not None}
        assert len(new) == len([r for r in rows if r.get("event") is not None]), f"{reader}: an id twice"
        assert set(new) == {e["messageId"] for e in kept}, reader
        for e in kept:
            row = new[e["messageId"]]
            assert row["qty"] == e["properties"]["qty"] and row["sku"] == e["properties"]["sku"], reader
            assert row["note"] == e["properties"].get("note"), reader
            assert row["user_id"] == e["userId"] and row["event_text"] == e["event"], reader
    discards = discards_of(lake, name)
    got = Counter(d["row_id"] for d in discards)
    assert got == Counter({mid: 1 for mid in refused}), got
    for d in discards:
        column, props = refused[d["row_id"]]
        assert d["column_name"] == column, d
        assert "NOT NULL" in d["reason"] and column in d["reason"], d["reason"]
        whole = json.loads(d["column_value"])
        assert whole["id"] == d["row_id"] and whole["event"] == name, whole
        for k, v in props.items():
            assert whole[k] == str(v).lower() if isinstance(v, bool) else whole[k] == str(v), (k, whole)


def test_not_null_columns_over_http(start_server):
    server = start_server()
    name = "nn_orders"
    path = table_dir(server.lake, name)
    path.parent.mkdir(parents=True)
    old = not_null_table(path)
    events = [
        track(name, "nn-1", {"qty": 2, "sku": "second", "note": "hi"}),
        track(name, "nn-2", {"sku": "no qty"}),
        track(name, "nn-3", {"qty": 4}),
        track(name, "nn-4", {"note": "neither"}),
        track(name, "nn-5", {"qty": 6, "sku": "sixth"}),
    ]
    r = send(server, events)
    assert r.status_code == 200 and r.json() == {"success": True}, r.text
    check_not_null_outcome(server.lake, path, name, old, [events[0], events[4]], {
        "nn-2": ("qty", {"sku": "no qty"}), "nn-3": ("sku", {"qty": 4}), "nn-4": ("qty", {"note": "neither"})})
    # A request whose only row is refused is still answered 200: the row is in discards.
    r = send(server, [track(name, "nn-6", {"note": "alone"})])
    assert r.status_code == 200, r.text
    assert [d["column_name"] for d in discards_of(server.lake, name) if d["row_id"] == "nn-6"] == ["qty"]
    fields = fields_of(last_metadata(local_delta_log(path)))
    assert fields["qty"]["nullable"] is False and fields["sku"]["nullable"] is False


def eventhub_invocation(bodies: list[dict], seqs: list[int]) -> dict:
    """The Functions host's Event Hub invocation (cardinality many, dataType string): events and metadata arrays as
    JSON text."""
    return {
        "Data": {"events": json.dumps([json.dumps(b) for b in bodies])},
        "Metadata": {
            "PartitionContext": {"FullyQualifiedNamespace": "ns.servicebus.windows.net", "EventHubName": "segment",
                                 "ConsumerGroup": "$Default", "PartitionId": "3"},
            "SequenceNumberArray": json.dumps(seqs),
            "EnqueuedTimeUtcArray": json.dumps(["2026-11-20T10:00:03Z"] * len(bodies)),
            "sys": {"MethodName": "eventhub", "UtcNow": "2026-11-20T10:00:04Z", "RandGuid": str(uuid.uuid4())},
        },
    }


def test_not_null_columns_over_eventhub(start_server):
    server = start_server(SEGMENT_DELTA_EVENTHUB_SCHEMA=SCHEMA)
    name = "nn_hub"
    path = table_dir(server.lake, name)
    path.parent.mkdir(parents=True)
    old = not_null_table(path)
    events = [track(name, "hub-1", {"qty": 2, "sku": "kept"}), track(name, "hub-2", {"qty": 3}),
              track(name, "hub-3", {"qty": 4, "sku": "kept too"})]
    invocation = eventhub_invocation(events, [101, 102, 103])
    r = server.post("/eventhub", invocation)
    assert r.status_code == 200, r.text
    refused = {"hub-2": ("sku", {"qty": 3})}
    check_not_null_outcome(server.lake, path, name, old, [events[0], events[2]], refused)
    # The host delivers the same batch again: nothing is written twice, in the table or in discards.
    r = server.post("/eventhub", invocation)
    assert r.status_code == 200, r.text
    check_not_null_outcome(server.lake, path, name, old, [events[0], events[2]], refused)


# ---------------------------------------------------------------------------------------------------------------
# 4. Partitioned tables


def partition_timestamp(s: str) -> datetime:
    """A timestamp partition value in any of the protocol's spellings, as UTC."""
    s = s.replace("T", " ").removesuffix("Z")
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in s else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(s, fmt).replace(tzinfo=timezone.utc)


def check_partition_files(path: Path, adds: list[dict], partition_columns: list[str],
                          physical: dict[str, str]) -> None:
    """Each file's partitionValues are keyed by the partition columns' physical names, and the file is where its
    path says."""
    keys = {physical.get(c, c) for c in partition_columns}
    for add in adds:
        assert set(add["partitionValues"]) == keys, add["partitionValues"]
        assert data_file(path, add).is_file(), add["path"]


def check_partition_dirs(path: Path, adds: list[dict], partition_columns: list[str],
                         physical: dict[str, str]) -> None:
    """Each file is under one `<physical name>=<escaped value>/` directory per partition column (Hive style, as
    Spark and Python deltalake lay them out), whose value, unescaped once, is the file's partition value
    (`__HIVE_DEFAULT_PARTITION__` for null)."""
    keys = {physical.get(c, c) for c in partition_columns}
    for add in adds:
        rel = urllib.parse.unquote(add["path"])  # the log's path is a URI: on disk it is this
        assert (path / rel).is_file(), rel
        dirs = dict(d.partition("=")[::2] for d in rel.split("/")[:-1])
        assert set(dirs) == keys, rel
        for key, escaped in dirs.items():
            value = add["partitionValues"][key]
            on_disk = "__HIVE_DEFAULT_PARTITION__" if value is None else urllib.parse.unquote(escaped)
            assert on_disk == ("__HIVE_DEFAULT_PARTITION__" if value is None else value), \
                f"directory {key}={escaped} holds a file of partition value {value!r} ({rel})"


def test_partitioned_golden_table(start_server):
    server = start_server()
    name = "golden_partitions"
    path = place(server.lake, "data-reader-partition-values", name)
    before = read_both(path)
    assert len(before["deltalake"]) == 3
    assert normalised(before["deltalake"]) == normalised(before["duckdb"])
    log0 = local_delta_log(path)
    events = [
        track(name, "p-1", {"as_long": 7, "as_boolean": True, "as_double": 2.5, "as_string": "a b/c=d%e:f",
                            "as_string_lit_null": "null", "as_timestamp": "2024-05-06T07:08:09.123456Z",
                            "value": "new one", "as_int": 3}),
        track(name, "p-2", {"as_long": -1, "as_boolean": False, "as_string": "ü€", "value": "new two"}),
    ]
    send_ok(server, events)
    log = local_delta_log(path)
    adds = [a for v in adds_after(log, max(log0)).values() for a in v]
    assert len(adds) == 2, "one file per partition"
    partition_columns = last_metadata(log)["partitionColumns"]
    assert partition_columns == last_metadata(log0)["partitionColumns"]
    by_long = {a["partitionValues"]["as_long"]: a for a in adds}
    assert set(by_long) == {"7", "-1"}
    first, second = dict(by_long["7"]["partitionValues"]), dict(by_long["-1"]["partitionValues"])
    assert partition_timestamp(first.pop("as_timestamp")) == datetime(2024, 5, 6, 7, 8, 9, 123456, timezone.utc)
    assert first == {"as_int": None, "as_long": "7", "as_byte": None, "as_short": None, "as_boolean": "true",
                     "as_float": None, "as_double": "2.5", "as_string": "a b/c=d%e:f", "as_string_lit_null": "null",
                     "as_date": None, "as_big_decimal": None}
    assert second == {"as_int": None, "as_long": "-1", "as_byte": None, "as_short": None, "as_boolean": "false",
                      "as_float": None, "as_double": None, "as_string": "ü€", "as_string_lit_null": None,
                      "as_date": None, "as_timestamp": None, "as_big_decimal": None}
    check_partition_files(path, adds, partition_columns, {})
    check_writer_commits(log, [v for v in log if v > max(log0)])

    new_columns = set(fields_of(last_metadata(log))) - set(fields_of(last_metadata(log0)))
    after = read_both(path)
    for reader, rows in after.items():
        old, new = split_rows(rows)
        check_old_rows_unchanged(before[reader], old, new_columns, reader)
        assert set(new) == {"p-1", "p-2"}, reader
        assert_new_row(new["p-1"], events[0], name, dropped=("as_int",))
        assert_new_row(new["p-2"], events[1], name)
        for column in ("as_int", "as_byte", "as_short", "as_float", "as_date", "as_big_decimal",
                       "as_list_of_records", "as_nested_struct"):
            assert new["p-1"][column] is None and new["p-2"][column] is None, (reader, column)
        assert new["p-2"]["as_string_lit_null"] is None and new["p-2"]["as_timestamp"] is None
    assert normalised(after["deltalake"]) == normalised(after["duckdb"])
    assert [(d["row_id"], d["column_name"]) for d in discards_of(server.lake, name)] == [("p-1", "as_int")]
    check_partition_dirs(path, adds, partition_columns, {})


def test_partitioned_python_table(start_server):
    server = start_server()
    name = "py_by_day"
    path = table_dir(server.lake, name)
    path.parent.mkdir(parents=True)
    write_deltalake(str(path), plain_table(), partition_by=["day"])
    before = read_both(path)
    log0 = local_delta_log(path)
    events = [track(name, "d-1", {"sku": "s1", "qty": 1, "day": "2026-11-20"}),
              track(name, "d-2", {"sku": "s2", "qty": 2, "day": "2026-11-20"}),
              track(name, "d-3", {"sku": "s3", "day": "x/y z=%"}),
              track(name, "d-4", {"sku": "s4"})]
    send_ok(server, events)
    log = local_delta_log(path)
    adds = [a for v in adds_after(log, max(log0)).values() for a in v]
    days = sorted((a["partitionValues"]["day"] or "") for a in adds)
    assert days == ["", "2026-11-20", "x/y z=%"], days
    check_partition_files(path, adds, ["day"], {})
    for add in adds:
        assert json.loads(add["stats"])["numRecords"] == (2 if add["partitionValues"]["day"] == "2026-11-20" else 1)
    new_columns = set(fields_of(last_metadata(log))) - set(fields_of(last_metadata(log0)))
    after = read_both(path)
    for reader, rows in after.items():
        old, new = split_rows(rows)
        check_old_rows_unchanged(before[reader], old, new_columns, reader)
        assert set(new) == {e["messageId"] for e in events}
        for e in events:
            assert_new_row(new[e["messageId"]], e, name)
        assert new["d-4"]["day"] is None
    assert normalised(after["deltalake"]) == normalised(after["duckdb"])
    check_partition_dirs(path, adds, ["day"], {})


def test_repartitioned_by_another_writer_while_open(start_server):
    """Another writer replaces the table's metadata (overwrite with a new partitioning) while the server holds the
    table open: the server's next append follows the new partitioning."""
    server = start_server()
    name = "repartitioned"
    path = table_dir(server.lake, name)
    first = [track(name, f"r-{i}", {"n": i}, user=f"user-{i % 2}") for i in range(4)]
    send_ok(server, first[:2])
    send_ok(server, first[2:])  # the server has the table open and cached
    current = DeltaTable(str(path)).to_pyarrow_table()
    assert current.num_rows == 4
    write_deltalake(str(path), current, mode="overwrite", schema_mode="overwrite", partition_by=["user_id"])
    replaced = max(local_delta_log(path))
    assert last_metadata(local_delta_log(path))["partitionColumns"] == ["user_id"]

    later = [track(name, f"r-{i}", {"n": i}, user=f"user-{i % 3}") for i in range(4, 10)]
    send_ok(server, later)
    log = local_delta_log(path)
    adds = [a for v in adds_after(log, replaced).values() for a in v]
    assert adds, "nothing committed after the overwrite"
    assert sorted(a["partitionValues"].get("user_id") for a in adds) == ["user-0", "user-1", "user-2"], \
        [a["partitionValues"] for a in adds]
    check_partition_files(path, adds, ["user_id"], {})
    check_writer_commits(log, [v for v in log if v > replaced])
    assert last_metadata(log)["partitionColumns"] == ["user_id"]
    after = read_both(path)
    for reader, rows in after.items():
        by_id = {r["id"]: r for r in rows}
        assert len(by_id) == len(rows) == 10, reader
        for e in first + later:
            assert_new_row(by_id[e["messageId"]], e, name)
    assert normalised(after["deltalake"]) == normalised(after["duckdb"])
    check_partition_dirs(path, adds, ["user_id"], {})


# ---------------------------------------------------------------------------------------------------------------
# 5. In-commit timestamps


def in_commit_timestamps(log: dict[int, list[dict]], first: int) -> list[int]:
    """The inCommitTimestamp of every commit from `first` on; each commit's first action must be its commitInfo."""
    out = []
    for v in sorted(x for x in log if x >= first):
        head = log[v][0]
        assert "commitInfo" in head, f"version {v}: first action is {list(head)}"
        ict = head["commitInfo"].get("inCommitTimestamp")
        assert isinstance(ict, int), f"version {v}: no inCommitTimestamp: {head}"
        out.append(ict)
    return out


def test_in_commit_timestamps_enabled_on_a_writer_table(start_server):
    server = start_server()
    name = "ict_orders"
    path = table_dir(server.lake, name)
    events = [track(name, f"ict-{i}", {"n": i, "label": f"l{i}"}) for i in range(8)]
    send_ok(server, events[:2])
    send_ok(server, events[2:4])
    log = local_delta_log(path)
    enable = max(log) + 1
    meta = dict(last_metadata(log))
    ts = now_ms()
    meta["configuration"] = {**meta["configuration"], "delta.enableInCommitTimestamps": "true",
                             "delta.inCommitTimestampEnablementVersion": str(enable),
                             "delta.inCommitTimestampEnablementTimestamp": str(ts)}
    write_commit(path, enable, [
        {"commitInfo": {"timestamp": ts, "inCommitTimestamp": ts, "operation": "SET TBLPROPERTIES",
                        "operationParameters": {"properties": "{\"delta.enableInCommitTimestamps\":\"true\"}"},
                        "engineInfo": "conformance-test"}},
        {"protocol": {"minReaderVersion": 1, "minWriterVersion": 7,
                      "writerFeatures": ["appendOnly", "invariants", "inCommitTimestamp"]}},
        {"metaData": meta},
    ])
    send_ok(server, events[4:6])  # the server held the table open from before
    send_ok(server, events[6:])
    out = maintain(server.lake, "--table", f"{SCHEMA}.{name}").stdout
    line = report_line(out, name)
    assert "compaction skipped" not in line and "FAILED" not in line, line

    log = local_delta_log(path)
    assert max(log) >= enable + 3, "two appends and a compaction after the enablement"
    assert any(a.get("commitInfo", {}).get("operation") == "OPTIMIZE" for v in log if v > enable for a in log[v])
    icts = in_commit_timestamps(log, enable)
    assert icts[0] == ts
    assert all(b > a for a, b in zip(icts, icts[1:])), icts
    check_writer_commits(log, [v for v in log if v > enable])
    protocol = last_protocol(log)
    assert "inCommitTimestamp" in protocol["writerFeatures"]
    assert last_metadata(log)["configuration"]["delta.enableInCommitTimestamps"] == "true"
    after = read_both(path)
    for reader, rows in after.items():
        by_id = {r["id"]: r for r in rows}
        assert len(by_id) == len(rows) == len(events), reader
        for e in events:
            assert_new_row(by_id[e["messageId"]], e, name)
    assert normalised(after["deltalake"]) == normalised(after["duckdb"])


def test_in_commit_timestamps_golden_cdc_table(start_server):
    server = start_server()
    name = "cdc_ict"
    path = place(server.lake, "cdc_ict_table", name)
    log0 = local_delta_log(path)
    last_ict = log0[max(log0)][0]["commitInfo"]["inCommitTimestamp"]
    before = read_both(path)
    assert len(before["deltalake"]) == 2
    assert normalised(before["deltalake"]) == normalised(before["duckdb"])
    events = [track(name, "c-1", {"name": "Zed", "age": 5}), track(name, "c-2", {"name": "Yan"})]
    send_ok(server, events)
    send_ok(server, [track(name, "c-3", {"name": "Xia"})])
    events.append(track(name, "c-3", {"name": "Xia"}))
    log = local_delta_log(path)
    icts = in_commit_timestamps(log, max(log0) + 1)
    assert len(icts) == 2 and last_ict < icts[0] < icts[1], (last_ict, icts)
    adds = [a for v in adds_after(log, max(log0)).values() for a in v]
    assert [a["partitionValues"] for a in adds] == [{"birthyear": None}] * 2
    check_partition_files(path, adds, ["birthyear"], {})
    check_partition_dirs(path, adds, ["birthyear"], {})
    check_writer_commits(log, [v for v in log if v > max(log0)])
    new_columns = set(fields_of(last_metadata(log))) - set(fields_of(last_metadata(log0)))
    after = read_both(path)
    for reader, rows in after.items():
        old, new = split_rows(rows)
        check_old_rows_unchanged(before[reader], old, new_columns, reader)
        assert set(new) == {"c-1", "c-2", "c-3"}, reader
        for e in events:
            assert_new_row(new[e["messageId"]], e, name, dropped=("age",))
            assert new[e["messageId"]]["birthyear"] is None
    assert normalised(after["deltalake"]) == normalised(after["duckdb"])
    assert [(d["row_id"], d["column_name"]) for d in discards_of(server.lake, name)] == [("c-1", "age")]


# ---------------------------------------------------------------------------------------------------------------
# 6. Row tracking


def rename_writer_feature(path: Path, old: str, new: str) -> None:
    """The table's protocol with one writer feature named differently (in its only commit)."""
    commit = path / "_delta_log" / f"{0:020d}.json"
    lines = []
    for line in commit.read_text().splitlines():
        action = json.loads(line)
        if "protocol" in action:
            action["protocol"]["writerFeatures"] = [new if f == old else f
                                                    for f in action["protocol"]["writerFeatures"]]
        lines.append(json.dumps(action))
    commit.write_text("\n".join(lines) + "\n")
    (path / "_delta_log" / f"{0:020d}.crc").unlink(missing_ok=True)


ROW_TRACKING_CASES = {"as written (writer feature liquid)": False, "clustering named clustering": True}


@pytest.mark.parametrize("case", list(ROW_TRACKING_CASES), ids=list(ROW_TRACKING_CASES))
def test_row_tracking_golden_liquid_table(start_server, case):
    server = start_server()
    name = "rows_tracked"
    path = place(server.lake, "table_with_liquid_clustering", name)
    if ROW_TRACKING_CASES[case]:
        rename_writer_feature(path, "liquid", "clustering")
    log0 = local_delta_log(path)
    mark0 = json.loads(next(a["domainMetadata"]["configuration"] for a in log0[0] if "domainMetadata" in a
                            and a["domainMetadata"]["domain"] == "delta.rowTracking"))["rowIdHighWaterMark"]
    assert mark0 == 9
    before = {"deltalake": deltalake_scan(path).to_pylist(), "duckdb": duckdb_rows(path)}
    assert sorted(r["id"] for r in before["duckdb"]) == list(range(10))
    assert normalised(before["deltalake"]) == normalised(before["duckdb"])

    batches = [[track(name, f"rt-{i}", {"n": i}) for i in range(3)],
               [track(name, f"rt-{i}", {"n": i}) for i in range(3, 8)]]
    for events in batches:
        r = send(server, events)
        assert r.status_code == 200, r.text
    log = local_delta_log(path)
    versions = sorted(v for v in log if v > 0)
    assert len(versions) == 2, versions
    mark = mark0
    for v in versions:
        adds = [a["add"] for a in log[v] if "add" in a]
        assert adds
        for add in sorted(adds, key=lambda a: a["baseRowId"]):
            assert add["baseRowId"] == mark + 1, (v, add["baseRowId"], mark)
            assert add["defaultRowCommitVersion"] == v, add
            mark += json.loads(add["stats"])["numRecords"]
        domains = [a["domainMetadata"] for a in log[v] if "domainMetadata" in a]
        assert [d["domain"] for d in domains] == ["delta.rowTracking"], domains
        assert json.loads(domains[0]["configuration"])["rowIdHighWaterMark"] == mark
        assert domains[0]["removed"] is False
    assert mark == mark0 + 8
    check_writer_commits(log, versions)

    # The table's own `id` is a BIGINT: a messageId cannot be cast into it, so it is null and recorded in discards.
    after = {"deltalake": deltalake_scan(path).to_pylist(), "duckdb": duckdb_rows(path)}
    for reader, rows in after.items():
        old = [r for r in rows if r.get("event") is None]
        assert sorted(r["id"] for r in old) == list(range(10)), reader
        new = sorted((r for r in rows if r.get("event") is not None), key=lambda r: r["n"])
        assert [r["n"] for r in new] == list(range(8)), reader
        for r in new:
            assert r["id"] is None and r["user_id"] == "u1" and r["event"] == name, (reader, r)
    assert normalised(after["deltalake"]) == normalised(after["duckdb"])
    discarded = discards_of(server.lake, name)
    assert sorted((d["row_id"], d["column_name"]) for d in discarded) == sorted((f"rt-{i}", "id") for i in range(8))

    out = maintain(server.lake, "--table", f"{SCHEMA}.{name}").stdout
    line = report_line(out, name)
    assert "compaction skipped: " in line and "rowTracking" in line, line
    assert max(local_delta_log(path)) == versions[-1], "maintain committed to a row-tracking table"


# ---------------------------------------------------------------------------------------------------------------
# 7. Deletion vectors


@pytest.mark.parametrize("fixture", ["dv-partitioned-with-checkpoint", "dv-with-columnmapping"])
def test_deletion_vector_tables(start_server, fixture):
    server = start_server()
    name = re.sub(r"[^a-z0-9]+", "_", fixture)
    path = place(server.lake, fixture, name)
    log0 = local_delta_log(path)
    meta0 = last_metadata(log0)
    mapped = meta0["configuration"].get("delta.columnMapping.mode") == "name"
    before = {"deltalake": deltalake_scan(path).to_pylist(), "duckdb": duckdb_rows(path)}
    assert len(before["duckdb"]) == 35, "37 records, 2 deleted by deletion vectors"
    assert normalised(before["deltalake"]) == normalised(before["duckdb"])
    events = [track(name, f"dv-{i}", {"col2": f"new{i}"}) for i in range(3)]
    events.append(track(name, "dv-3", {"col2": "with part", "part": 4, "col1": 99}))
    send_ok(server, events)
    log = local_delta_log(path)
    adds = [a for v in adds_after(log, max(log0)).values() for a in v]
    physical = physical_names(last_metadata(log)) if mapped else {}
    assert adds
    for add in adds:
        assert "deletionVector" not in add or add["deletionVector"] is None
        assert list(add["partitionValues"].values()) == [None]
    check_partition_files(path, adds, ["part"], physical)
    check_partition_dirs(path, adds, ["part"], physical)
    check_writer_commits(log, [v for v in log if v > max(log0)])
    new_columns = set(fields_of(last_metadata(log))) - set(fields_of(meta0))
    after = {"deltalake": deltalake_scan(path).to_pylist(), "duckdb": duckdb_rows(path)}
    for reader, rows in after.items():
        old, new = split_rows(rows)
        check_old_rows_unchanged(before[reader], old, new_columns, reader)
        assert set(new) == {e["messageId"] for e in events}, reader
        for e in events:
            assert_new_row(new[e["messageId"]], e, name, dropped=("part", "col1"))
    assert normalised(after["deltalake"]) == normalised(after["duckdb"])
    assert sorted(d["column_name"] for d in discards_of(server.lake, name)) == ["col1", "part"]


# ---------------------------------------------------------------------------------------------------------------
# 8. Vacuum retention


def age_removed_file(path: Path, removed: str, days: float) -> None:
    """Makes a removed file look `days` old: its remove action's deletionTimestamp and its mtime."""
    when = time.time() - days * 86400
    found = False
    for commit in sorted((path / "_delta_log").glob("*.json")):
        lines = []
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "remove" in action and action["remove"]["path"] == removed:
                action["remove"]["deletionTimestamp"] = int(when * 1000)
                found = True
            lines.append(json.dumps(action))
        commit.write_text("\n".join(lines) + "\n")
    assert found, removed
    os.utime(path / urllib.parse.unquote(removed), (when, when))


def removed_paths(path: Path) -> list[str]:
    return [a["remove"]["path"] for actions in local_delta_log(path).values() for a in actions if "remove" in a]


def test_vacuum_keeps_the_longer_of_both_retentions(tmp_path):
    lake = tmp_path / "lake"
    name = "vacuumed"
    path = table_dir(lake, name)
    path.parent.mkdir(parents=True)
    t = plain_table()
    write_deltalake(str(path), t.slice(0, 1))
    write_deltalake(str(path), t.slice(0, 1), mode="overwrite")  # removes the first file
    [ten_days] = removed_paths(path)
    write_deltalake(str(path), t.slice(1, 1), mode="overwrite")  # removes the second
    [three_days] = [p for p in removed_paths(path) if p != ten_days]
    DeltaTable(str(path)).alter.set_table_properties({"delta.deletedFileRetentionDuration": "interval 30 days"})
    age_removed_file(path, ten_days, 10)
    age_removed_file(path, three_days, 3)
    live = DeltaTable(str(path)).file_uris()
    assert len(live) == 1
    want = normalised(t.slice(1, 1).to_pylist())

    # The table keeps removed files 30 days, the loader 7: a 10-day-old file stays.
    out = maintain(lake, SEGMENT_DELTA_VACUUM_RETENTION_HOURS="168").stdout
    assert "vacuumed 0" in report_line(out, name), out
    assert (path / ten_days).is_file() and (path / three_days).is_file()

    # The table keeps them 1 day, the loader 7: the 10-day-old file goes, the 3-day-old one stays.
    DeltaTable(str(path)).alter.set_table_properties({"delta.deletedFileRetentionDuration": "interval 1 days"})
    out = maintain(lake, SEGMENT_DELTA_VACUUM_RETENTION_HOURS="168").stdout
    assert "vacuumed 1" in report_line(out, name), out
    assert not (path / ten_days).exists()
    assert (path / three_days).is_file()
    assert DeltaTable(str(path)).file_uris() == live and all(Path(u.removeprefix("file://")).is_file() for u in live)
    for reader, rows in read_both(path).items():
        assert normalised(rows) == want, reader

    # The loader's retention, 48 hours, is now the longer: the 3-day-old file goes too.
    out = maintain(lake, SEGMENT_DELTA_VACUUM_RETENTION_HOURS="48").stdout
    assert "vacuumed 1" in report_line(out, name), out
    assert not (path / three_days).exists()
    for reader, rows in read_both(path).items():
        assert normalised(rows) == want, reader


# ---------------------------------------------------------------------------------------------------------------
# 9. Commit answers lost after the commit landed, over HTTP on Azurite


COMMIT_PUT = ("PUT ", "/_delta_log/0")


def download_table(lake, table: str, dest: Path) -> Path:
    """A local copy of a table on Azurite, to read it with both readers."""
    prefix = f"{SCHEMA}/{table}/"
    for blob in lake.blob_names(f"{SCHEMA}/{table}"):
        target = dest / blob[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(lake.download(blob))
    return dest


def test_lost_commit_answers_write_each_event_once(tmp_path_factory, start_server, tmp_path, record_property):
    azurite = Azurite(tmp_path_factory.mktemp("conformance-azurite")).start()
    proxy = FaultProxy(azurite.port).start()
    try:
        lake = azurite.new_lake("lost-answers")
        env = {**lake.server_env(), "AZURITE_BLOB_STORAGE_URL": proxy.url, "SEGMENT_DELTA_WRITE_RETRY_SECS": "10"}
        server = start_server(lake, SEGMENT_DELTA_SOURCES="LOST-KEY=segment", **env)
        name = "lost_answers"
        warm = server.post("/v1/track", track(name, "warm", {"n": -1}), key="LOST-KEY")
        assert warm.status_code == 200, warm.text
        # Every other commit PUT reaches Azurite, which stores it; the server is told 500.
        proxy.set("500-after", every=2, only=COMMIT_PUT)
        events = [track(name, f"lost-{i}", {"n": i}) for i in range(24)]
        statuses: Counter = Counter()
        lock = threading.Lock()

        def deliver(e: dict) -> int:
            for attempt in range(20):
                try:
                    r = server.post("/v1/track", e, key="LOST-KEY")
                    status, text = r.status_code, r.text
                except requests.RequestException as exc:
                    status, text = None, repr(exc)
                with lock:
                    statuses[status] += 1
                if status == 200:
                    return attempt
                assert status in (503, None), (status, text)
                time.sleep(0.2)
            raise AssertionError(f"{e['messageId']} never acknowledged")

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(deliver, events))
        injected = proxy.counts["500-after"]
        proxy.set("pass")
        assert injected >= 5, proxy.counts
        record_property("summary", f"{injected} commit answers replaced by 500 after the commit landed; "
                                   f"answers to the clients: {dict(statuses)}")
        tables = {}
        for table in ("tracks", name):
            local = download_table(lake, table, tmp_path / table)
            log = local_delta_log(local)
            check_writer_commits(log, sorted(log)[1:])
            tables[table] = read_both(local)
        want = {e["messageId"] for e in events} | {"warm"}
        for table, by_reader in tables.items():
            for reader, rows in by_reader.items():
                ids = Counter(r["id"] for r in rows)
                assert set(ids) == want, (table, reader, sorted(want - set(ids))[:5])
                twice = [i for i, c in ids.items() if c > 1]
                assert not twice, f"{table} ({reader}): written more than once: {twice}"
                for e in events:
                    row = next(r for r in rows if r["id"] == e["messageId"])
                    assert row["user_id"] == "u1" and row["event_text"] == e["event"], (table, reader, row)
                    if table == name:
                        assert row["n"] == e["properties"]["n"], (reader, row)
    finally:
        proxy.stop()
        azurite.stop()


# ---------------------------------------------------------------------------------------------------------------
# 10. The users upsert when the target has rows deleted by a deletion vector
#
# Python deltalake never writes deletion vectors, so one is written here as Databricks would: a `u` (relative
# path) deletion vector file holding a portable 64-bit roaring bitmap of the deleted row indexes.

Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
DV_MAGIC = 1681511377  # the portable RoaringBitmapArray magic number of the Delta protocol


def z85_encode(data: bytes) -> str:
    assert len(data) % 4 == 0
    out = []
    for i in range(0, len(data), 4):
        n = int.from_bytes(data[i:i + 4], "big")
        chunk = []
        for _ in range(5):
            n, r = divmod(n, 85)
            chunk.append(Z85[r])
        out.extend(reversed(chunk))
    return "".join(out)


def roaring64(positions: list[int]) -> bytes:
    """Row indexes as a portable 64-bit roaring bitmap: bitmaps by high 32 bits, each a 32-bit roaring bitmap in the
    portable format with array containers only (small sets)."""
    import struct
    highs: dict[int, list[int]] = {}
    for p in sorted(set(positions)):
        highs.setdefault(p >> 32, []).append(p & 0xFFFFFFFF)
    out = struct.pack("<Q", len(highs))
    for high, lows in sorted(highs.items()):
        containers: dict[int, list[int]] = {}
        for low in lows:
            containers.setdefault(low >> 16, []).append(low & 0xFFFF)
        assert all(len(c) <= 4096 for c in containers.values())
        keys = sorted(containers)
        header = struct.pack("<II", 12346, len(keys))  # no run containers; offsets follow the descriptions
        header += b"".join(struct.pack("<HH", k, len(containers[k]) - 1) for k in keys)
        offset = len(header) + 4 * len(keys)
        offsets, bodies = b"", b""
        for k in keys:
            body = b"".join(struct.pack("<H", v) for v in containers[k])
            offsets += struct.pack("<I", offset)
            bodies += body
            offset += len(body)
        out += struct.pack("<I", high) + header + offsets + bodies
    return out


def write_deletion_vector(table: Path, positions: list[int]) -> dict:
    """A deletion vector file at the table root; returns its descriptor for an `add` action."""
    import struct
    import zlib
    token = uuid.uuid4()
    data = struct.pack("<I", DV_MAGIC) + roaring64(positions)
    content = b"\x01" + struct.pack(">I", len(data)) + data + struct.pack(">I", zlib.crc32(data))
    (table / f"deletion_vector_{token}.bin").write_bytes(content)
    return {"storageType": "u", "pathOrInlineDv": z85_encode(token.bytes), "offset": 1,
            "sizeInBytes": len(data), "cardinality": len(set(positions))}


def live_adds(log: dict[int, list[dict]]) -> list[dict]:
    """The add actions of the newest version, from the JSON commits (the table has no checkpoint)."""
    live = {}
    for v in sorted(log):
        for a in log[v]:
            if "add" in a:
                live[a["add"]["path"]] = a["add"]
            elif "remove" in a:
                live.pop(a["remove"]["path"], None)
    return list(live.values())


def delete_rows_with_a_deletion_vector(table: Path, ids: set[str]) -> None:
    """A commit as Databricks makes one for `DELETE ... WHERE id IN ids` on a table with deletion vectors enabled:
    the protocol gains the feature, the file holding the rows is re-added with a deletion vector."""
    log = local_delta_log(table)
    live = live_adds(log)
    assert len(live) == 1, live
    [add] = live
    column = pq.read_table(data_file(table, add), columns=["id"]).column("id").to_pylist()
    positions = [i for i, v in enumerate(column) if v in ids]
    assert len(positions) == len(ids)
    meta = dict(last_metadata(log))
    meta["configuration"] = {**meta["configuration"], "delta.enableDeletionVectors": "true"}
    ts = now_ms()
    write_commit(table, max(log) + 1, [
        {"commitInfo": {"timestamp": ts, "operation": "DELETE", "operationParameters": {"predicate": "[]"},
                        "engineInfo": "conformance-test"}},
        {"protocol": {"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["deletionVectors"],
                      "writerFeatures": ["appendOnly", "invariants", "deletionVectors"]}},
        {"metaData": meta},
        {"remove": {"path": add["path"], "deletionTimestamp": ts, "dataChange": True, "extendedFileMetadata": True,
                    "partitionValues": add["partitionValues"], "size": add["size"]}},
        {"add": {**add, "modificationTime": add["modificationTime"], "dataChange": True,
                 "deletionVector": write_deletion_vector(table, positions)}},
    ])


def identify(mid: str, user: str, traits: dict) -> dict:
    return {"type": "identify", "messageId": mid, "userId": user, "traits": traits, "timestamp": TIMESTAMP,
            "sentAt": SENT_AT}


def users_by_reader(lake: Path) -> dict[str, dict[str, dict]]:
    path = table_dir(lake, "users")
    out = {"deltalake": {r["id"]: r for r in deltalake_rows(path)}, "duckdb": {r["id"]: r for r in duckdb_rows(path)}}
    assert normalised(list(out["deltalake"].values())) == normalised(list(out["duckdb"].values()))
    return out


def test_users_upsert_with_deleted_rows_in_the_target(start_server, tmp_path):
    server = start_server()
    lake = server.lake
    send_ok(server, [identify(f"i{n}", f"u{n}", {"plan": f"p{n}", "seats": n}) for n in range(1, 5)])
    maintain(lake)
    users = table_dir(lake, "users")
    assert set(users_by_reader(lake)["duckdb"]) == {"u1", "u2", "u3", "u4"}

    delete_rows_with_a_deletion_vector(users, {"u2"})
    [dv] = [a["deletionVector"] for a in live_adds(local_delta_log(users))]
    for reader, rows in users_by_reader(lake).items():
        assert set(rows) == {"u1", "u3", "u4"}, f"{reader} does not apply the deletion vector"
    kept = users_by_reader(lake)

    # A new user, held by no file: the file with the deletion vector is left as it is, u2 stays deleted.
    send_ok(server, [identify("i5", "u5", {"plan": "p5", "seats": 5})])
    out = maintain(lake).stdout
    line = report_line(out, "users")
    assert "FAILED" not in line and "compaction skipped: " in line and "deletion vectors" in line, line
    live = live_adds(local_delta_log(users))
    assert len(live) == 2, live
    assert [a["deletionVector"] for a in live if a.get("deletionVector")] == [dv], live
    for reader, rows in users_by_reader(lake).items():
        assert set(rows) == {"u1", "u3", "u4", "u5"}, reader
        for u in ("u1", "u3", "u4"):
            assert normalised([rows[u]]) == normalised([kept[reader][u]]), (reader, u)
        assert rows["u5"]["plan"] == "p5" and rows["u5"]["seats"] == 5, rows["u5"]

    # A user held by the file with the deletion vector: the upsert cannot rewrite it, says so, and writes nothing.
    send_ok(server, [identify("i6", "u3", {"plan": "p3b"})])
    files_before = files_under(users)
    before = users_by_reader(lake)
    proc = maintain(lake, ok=False)
    assert proc.returncode != 0, proc.stdout
    # The failed upsert has a line of its own (the users table is then maintained as any other table).
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"{SCHEMA}.users:")]
    failed = [ln for ln in lines if "FAILED" in ln]
    assert len(failed) == 1 and "upsert from identifies" in failed[0] and "deletion vector" in failed[0], lines
    assert "FAILED" not in report_line(proc.stdout, "identifies"), proc.stdout
    # No commit and no data file added or removed (a checkpoint of the current version may be written).
    def commits_and_data(files: dict) -> dict:
        return {k: v for k, v in files.items()
                if not (k.startswith("_delta_log/") and ("checkpoint" in k or k.endswith(".crc")))}
    assert commits_and_data(files_under(users)) == commits_and_data(files_before)
    assert users_by_reader(lake) == before
