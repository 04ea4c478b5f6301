#!/usr/bin/env python3
"""The loader a user might write instead of segment-delta: Python's json, pyarrow and deltalake's
write_deltalake, one append per table per 500-event /v1/batch body, properties flattened into columns and tables
widened with schema_mode="merge", one table per track event name as segment-delta does.

    python3 bench/baseline.py --lake /tmp/baseline-lake --events 10000 bodies.jsonl

Prints one JSON object: events, bytes, seconds, events_per_s. `bench/run.py` runs it as a reference.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import datetime

import pyarrow as pa
from deltalake import write_deltalake

TYPE_TABLES = {"track": "tracks", "identify": "identifies", "page": "pages", "screen": "screens",
               "group": "groups", "alias": "aliases"}
TIME_FIELDS = {"timestamp": "original_timestamp", "sentAt": "sent_at", "receivedAt": "received_at"}


def snake(name: str) -> str:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def flatten(obj: dict, prefix: str, out: dict) -> None:
    for key, value in obj.items():
        name = f"{prefix}_{key}" if prefix else key
        if isinstance(value, dict):
            flatten(value, name, out)
        elif isinstance(value, list):
            out[snake(name)] = json.dumps(value)
        elif value is not None:
            out[snake(name)] = value


def rows_of(event: dict, received_at: datetime) -> list[tuple[str, dict]]:
    kind = event.get("type")
    if kind not in TYPE_TABLES:
        return []
    row = {"id": event.get("messageId"), "anonymous_id": event.get("anonymousId"), "user_id": event.get("userId"),
           "received_at": received_at}
    for field, column in TIME_FIELDS.items():
        if isinstance(event.get(field), str):
            row[column] = datetime.fromisoformat(event[field].replace("Z", "+00:00"))
    for field in ("name", "category", "groupId", "previousId"):
        if field in event:
            row[snake(field)] = event[field]
    flatten(event.get("context") or {}, "context", row)
    row = {k: v for k, v in row.items() if v is not None}
    if kind != "track":
        flatten(event.get("properties") or event.get("traits") or {}, "", row)
        return [(TYPE_TABLES[kind], row)]
    row["event"], row["event_text"] = snake(event["event"]), event["event"]
    own = dict(row)
    flatten(event.get("properties") or {}, "", own)
    return [("tracks", row), (snake(event["event"]), own)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bodies", help="file of /v1/batch bodies, one a line")
    ap.add_argument("--lake", required=True)
    ap.add_argument("--events", type=int, default=10_000, help="stop after this many events")
    args = ap.parse_args()
    with open(args.bodies, "rb") as f:
        bodies = []
        count = 0
        for line in f:
            if count >= args.events:
                break
            if line.strip():
                bodies.append(line)
                count += line.count(b'"messageId"')
    events = nbytes = 0
    started = time.perf_counter()
    for body in bodies:
        received_at = datetime.now().astimezone()
        tables: dict[str, list[dict]] = {}
        batch = json.loads(body)["batch"]
        for event in batch:
            for table, row in rows_of(event, received_at):
                tables.setdefault(table, []).append(row)
        for table, rows in tables.items():
            write_deltalake(f"{args.lake}/segment/{table}", pa.Table.from_pylist(rows), mode="append",
                            schema_mode="merge")
        events += len(batch)
        nbytes += len(body)
    seconds = time.perf_counter() - started
    print(json.dumps({"events": events, "bytes": nbytes, "seconds": seconds, "events_per_s": events / seconds}))


if __name__ == "__main__":
    main()
