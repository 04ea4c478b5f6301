"""`segment-delta maintain`: compaction, checkpoints, vacuum and the users upsert, checked with the Python
`deltalake` reader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from deltalake import DeltaTable

from conftest import binary, clean_env, databricks_emulator, read_table, running_server

SCHEMA = "segment"


def maintain(lake, *args: str, **env: str) -> str:
    """Runs `segment-delta maintain` on the lake and returns what it printed; it must succeed."""
    lake_env = {"SEGMENT_DELTA_LAKE": str(lake)} if isinstance(lake, Path) else lake.server_env()
    proc = subprocess.run([str(binary()), "maintain", *args], env=clean_env({**lake_env, **env}),
                          capture_output=True, timeout=300)
    out = proc.stdout.decode()
    assert proc.returncode == 0, f"maintain failed ({proc.returncode}):\n{out}\n{proc.stderr.decode()[-5000:]}"
    return out


def report_line(out: str, table: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith(f"{SCHEMA}.{table}:")]
    assert len(lines) == 1, f"no single report line for {table} in:\n{out}"
    return lines[0]


def page(i: int) -> dict:
    return {"type": "page", "messageId": f"page-{i:05d}", "userId": f"user-{i % 7}", "name": "Home",
            "properties": {"path": f"/p/{i}", "n": i, "ratio": i / 4}, "timestamp": "2026-11-01T10:00:00.000Z"}


def table_path(lake: Path, table: str) -> Path:
    return lake / SCHEMA / table


def sorted_rows(lake: Path, table: str) -> list[dict]:
    return sorted(read_table(lake, SCHEMA, table).to_pylist(), key=lambda r: r["id"])


def send_pages(server, ids, key: str | None = None) -> list[int]:
    """One request per page, each acknowledged only after its commit: one commit per page."""
    acked = []
    for i in ids:
        r = server.post("/v1/page", page(i), key=key)
        assert r.status_code == 200, r.text
        acked.append(i)
    return acked


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """A lake whose `pages` table got 500 one-row appends."""
    work = tmp_path_factory.mktemp("maintain")
    with running_server(work, SEGMENT_DELTA_FLUSH_INTERVAL_MS="1") as server:
        send_pages(server, range(500))
    lake = work / "lake"
    dt = DeltaTable(str(table_path(lake, "pages")))
    assert len(dt.file_uris()) == 500
    return lake, sorted_rows(lake, "pages")


def test_500_small_appends_compact_to_what_the_target_implies(small_files, tmp_path):
    lake0, before = small_files
    lake = tmp_path / "lake"
    shutil.copytree(lake0, lake)
    path = table_path(lake, "pages")
    sizes = sum(os.path.getsize(u.removeprefix("file://")) for u in DeltaTable(str(path)).file_uris())

    # A target of a quarter of the data: about four files.
    target = sizes // 4
    out = maintain(lake, "--table", "segment.pages", SEGMENT_DELTA_TARGET_FILE_SIZE=str(target))
    files = DeltaTable(str(path)).file_uris()
    assert 4 <= len(files) <= 6, (len(files), out)
    assert f"files 500 -> {len(files)}" in report_line(out, "pages")
    assert sorted_rows(lake, "pages") == before

    # The default target (128 MiB): one file, same rows, and a checkpoint of the newest version.
    out = maintain(lake)
    dt = DeltaTable(str(path))
    assert len(dt.file_uris()) == 1, out
    assert sorted_rows(lake, "pages") == before
    version = dt.version()
    assert (path / "_delta_log" / f"{version:020}.checkpoint.parquet").is_file()
    assert json.loads((path / "_delta_log" / "_last_checkpoint").read_text())["version"] == version
    history = dt.history()
    assert history[0]["operation"] == "OPTIMIZE"

    # Nothing left to do: the next run commits nothing.
    out = maintain(lake)
    assert DeltaTable(str(path)).version() == version
    assert "files 1 -> 1, bytes" in report_line(out, "pages") and "commits 0" in report_line(out, "pages")


def test_compaction_racing_a_writer_loses_and_doubles_nothing(tmp_path):
    with running_server(tmp_path, SEGMENT_DELTA_FLUSH_INTERVAL_MS="1") as server:
        acked = send_pages(server, range(150))
        stop = threading.Event()
        errors: list[str] = []

        def writer():
            i = 1000
            while not stop.is_set():
                r = server.post("/v1/page", page(i))
                if r.status_code == 200:
                    acked.append(i)
                else:
                    errors.append(r.text)
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            outs = [maintain(server.lake, "--table", "segment.pages") for _ in range(3)]
        finally:
            stop.set()
            t.join()
    assert not errors
    rows = read_table(server.lake, SCHEMA, "pages").to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a row was doubled"
    assert set(ids) == {page(i)["messageId"] for i in acked}, "an acknowledged row is missing"
    assert len(acked) > 150, "the writer made no appends during the compactions"
    # The compactions did their work between the appends.
    assert len(DeltaTable(str(table_path(server.lake, "pages"))).file_uris()) < len(acked) / 2, outs


def test_vacuum_keeps_every_file_the_current_version_reads(small_files, tmp_path):
    lake0, before = small_files
    lake = tmp_path / "lake"
    shutil.copytree(lake0, lake)
    path = table_path(lake, "pages")
    maintain(lake)  # compaction: 500 files removed, one added
    # Every file is made ten days old, and a file no version references is added.
    orphan = path / "part-orphan-0000.parquet"
    shutil.copy(next(path.glob("*.parquet")), orphan)
    old = time.time() - 10 * 24 * 3600
    for f in path.glob("*.parquet"):
        os.utime(f, (old, old))
    out = maintain(lake, SEGMENT_DELTA_VACUUM_RETENTION_HOURS="24")
    assert not orphan.exists(), out
    dt = DeltaTable(str(path))
    for uri in dt.file_uris():
        assert Path(uri.removeprefix("file://")).is_file(), f"vacuum deleted {uri}, which the table reads"
    assert sorted_rows(lake, "pages") == before
    assert "vacuumed 0" not in report_line(out, "pages")


def test_vacuum_retention_under_a_day_is_refused(tmp_path):
    proc = subprocess.run([str(binary()), "maintain"], capture_output=True, timeout=60,
                          env=clean_env({"SEGMENT_DELTA_LAKE": str(tmp_path / "lake"),
                                         "SEGMENT_DELTA_VACUUM_RETENTION_HOURS": "1"}))
    assert proc.returncode != 0
    assert b"SEGMENT_DELTA_VACUUM_RETENTION_HOURS" in proc.stderr and b"24 hours" in proc.stderr


def identify(mid: str, user: str | None, ts: str, traits: dict, anonymous: str | None = None) -> dict:
    event = {"type": "identify", "messageId": mid, "timestamp": ts, "traits": traits}
    if user is not None:
        event["userId"] = user
    if anonymous is not None:
        event["anonymousId"] = anonymous
    return event


def users(lake: Path) -> dict[str, dict]:
    rows = read_table(lake, SCHEMA, "users").to_pylist()
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "two users rows for one user"
    return by_id


def traits_of(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("id", "received_at", "uuid_ts") and v is not None}


def test_users_upsert_keeps_the_latest_value_of_each_trait(tmp_path):
    t = "2026-11-0{}T10:00:00.000Z".format
    with running_server(tmp_path) as server:
        lake = server.lake
        r = server.post("/v1/batch", {"batch": [
            identify("i1", "u1", t(2), {"name": "Ann", "plan": "free"}),
            identify("i2", "u2", t(2), {"name": "Bob"}),
        ]})
        assert r.status_code == 200, r.text
        maintain(lake)
        assert {u: traits_of(row) for u, row in users(lake).items()} == {
            "u1": {"name": "Ann", "plan": "free"}, "u2": {"name": "Bob"}}

        # Same user twice in one batch, out of order; a trait omitted; an anonymous identify.
        r = server.post("/v1/batch", {"batch": [
            identify("i3", "u1", t(5), {"plan": "pro"}),
            identify("i4", "u1", t(4), {"plan": "team", "email": "ann@example.com"}),
            identify("i5", "u3", t(4), {"name": "Cy", "address": {"city": "Oslo"}}),
            identify("i6", None, t(6), {"name": "Nobody"}, anonymous="anon-1"),
        ]})
        assert r.status_code == 200, r.text
        maintain(lake)
        got = users(lake)
        assert {u: traits_of(row) for u, row in got.items()} == {
            "u1": {"name": "Ann", "plan": "pro", "email": "ann@example.com"},
            "u2": {"name": "Bob"},
            "u3": {"name": "Cy", "address_city": "Oslo"}}
        identifies = {r["id"]: r for r in read_table(lake, SCHEMA, "identifies").to_pylist()}
        assert got["u1"]["received_at"] == identifies["i3"]["received_at"]
        assert set(got["u1"]) >= {"id", "received_at", "uuid_ts"}
        assert not any(c.startswith("context_") or c in ("user_id", "anonymous_id") for c in got["u1"])

        # A later run gets an identify older than what u2 has: the newer name stays; the new trait lands.
        r = server.post("/v1/batch", {"batch": [
            identify("i7", "u2", t(1), {"name": "Robert", "age": 30}),
        ]})
        assert r.status_code == 200, r.text
        maintain(lake)
        got = users(lake)
        assert traits_of(got["u2"]) == {"name": "Bob", "age": 30}
        assert traits_of(got["u1"]) == {"name": "Ann", "plan": "pro", "email": "ann@example.com"}

    # A run with nothing new changes nothing.
    version = DeltaTable(str(table_path(lake, "users"))).version()
    maintain(lake)
    assert DeltaTable(str(table_path(lake, "users"))).version() == version


def test_accounts_from_groups(tmp_path):
    with running_server(tmp_path) as server:
        r = server.post("/v1/batch", {"batch": [
            {"type": "group", "messageId": "g1", "userId": "u1", "groupId": "acme", "timestamp": "2026-11-01T00:00:00Z",
             "traits": {"name": "Acme", "employees": 10}},
            {"type": "group", "messageId": "g2", "userId": "u2", "groupId": "acme", "timestamp": "2026-11-02T00:00:00Z",
             "traits": {"employees": 12}},
        ]})
        assert r.status_code == 200, r.text
        maintain(server.lake)
        rows = read_table(server.lake, SCHEMA, "accounts").to_pylist()
    assert [(r["id"], r["name"], r["employees"]) for r in rows] == [("acme", "Acme", 12)]


def test_maintain_on_azurite(azurite_lake, tmp_path):
    sources = {"SEGMENT_DELTA_SOURCES": "k1=segment"}
    with running_server(tmp_path, azurite_lake, SEGMENT_DELTA_FLUSH_INTERVAL_MS="1", **sources) as server:
        send_pages(server, range(40), key="k1")
    before = sorted(azurite_lake.read("pages", SCHEMA).to_pylist(), key=lambda r: r["id"])
    assert len(before) == 40
    out = maintain(azurite_lake, **sources)
    assert "files 40 -> 1" in report_line(out, "pages")
    assert sorted(azurite_lake.read("pages", SCHEMA).to_pylist(), key=lambda r: r["id"]) == before


def test_large_tables_are_optimized_by_databricks(tmp_path):
    """With Unity Catalog kept and SEGMENT_DELTA_DATABRICKS_OPTIMIZE_BYTES reached, compaction is Databricks'
    `OPTIMIZE` on the warehouse; smaller tables are compacted in process."""
    pat, key = "dapi-maintain", "MKEY"
    with databricks_emulator(tmp_path, pat) as url:
        catalog = {"DATABRICKS_HOST": url, "DATABRICKS_TOKEN": pat, "DATABRICKS_CATALOG": "main",
                   "SEGMENT_DELTA_SOURCES": f"{key}={SCHEMA}"}
        with running_server(tmp_path / "server", SEGMENT_DELTA_FLUSH_INTERVAL_MS="1", **catalog) as server:
            send_pages(server, range(30), key=key)
        lake = server.lake
        before = sorted_rows(lake, "pages")
        pages_bytes = sum(os.path.getsize(u.removeprefix("file://"))
                          for u in DeltaTable(str(table_path(lake, "pages"))).file_uris())
        out = maintain(lake, SEGMENT_DELTA_DATABRICKS_OPTIMIZE_BYTES=str(pages_bytes), **catalog)
        ran = [s["statement"] for s in requests.get(f"{url}/_emulator/statements", timeout=10).json()["statements"]]
    assert "compacted by Databricks OPTIMIZE" in report_line(out, "pages")
    assert [s for s in ran if s.startswith("OPTIMIZE")] == [f"OPTIMIZE `main`.`{SCHEMA}`.`pages`"], ran
    assert "files 30 -> 1" in report_line(out, "pages")
    assert sorted_rows(lake, "pages") == before
    assert DeltaTable(str(table_path(lake, "pages"))).history()[0]["operation"] == "OPTIMIZE"


def test_a_run_past_its_time_budget_resumes_where_it_stopped(tmp_path):
    # Six tables, two maintained at once, no time budget: each run maintains the first two it starts, and the
    # next run starts from the first table the previous one left.
    with running_server(tmp_path / "srv") as server:
        for n in range(5):
            r = server.post("/v1/track", {"type": "track", "userId": "u", "event": f"Step {n}", "messageId": f"s{n}"})
            assert r.status_code == 200, r.text
    lake = tmp_path / "srv" / "lake"
    every = sorted(f"{SCHEMA}.{t}" for t in os.listdir(lake / SCHEMA))
    assert len(every) == 6  # tracks and five event tables
    env = {"SEGMENT_DELTA_MAINTENANCE_CONCURRENCY": "2", "SEGMENT_DELTA_MAINTENANCE_BUDGET_SECS": "0"}
    seen = []
    for _ in range(3):
        out = maintain(lake, **env)
        done = [line.split(":")[0] for line in out.splitlines() if line.startswith(f"{SCHEMA}.")]
        assert len(done) == 2, out
        seen.extend(done)
    assert seen == every, "three runs took every table once, in order"
    # The turns go round: after the last table, the first.
    cursor = lake / "_segment_delta" / "maintenance-cursor"
    assert cursor.read_text() == every[0]
    out = maintain(lake, **env)
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith(f"{SCHEMA}.")] == every[:2]
    assert cursor.read_text() == every[2]
    # Within its budget, a run takes every table, from where the last one stopped, and clears the cursor.
    out = maintain(lake, SEGMENT_DELTA_MAINTENANCE_CONCURRENCY="3")
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith(f"{SCHEMA}.")] == every[2:] + every[:2]
    assert cursor.read_text() == ""
