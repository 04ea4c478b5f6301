"""What an operator sees: liveness and readiness, Prometheus metrics that move with the traffic, settings with
units and a warning for misspelt ones, `check` on a good and a broken setup, and discards made visible (one log
line per micro-batch, and the `discards` command)."""

import re
import shutil
import subprocess
import time

import requests

from conftest import binary, clean_env

KEY = "ops-key"


def metric(text: str, name: str, **labels) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def run(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary()), *args], capture_output=True, text=True, env=clean_env(env or {}), timeout=120)


def test_health_and_readiness_follow_the_lake(start_server):
    server = start_server()
    state = server.lake / "_segment_delta"
    # The lake cannot be written: its state directory is a file.
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text("in the way")
    assert server.get("/health").status_code == 200
    r = server.get("/ready")
    assert r.status_code == 503, r.text
    assert r.json()["components"]["lake"]["ok"] is False and "cannot write" in r.json()["components"]["lake"]["error"]
    state.unlink()
    time.sleep(5.2)  # readiness answers are reused for 5 s
    r = server.get("/ready")
    assert r.status_code == 200, r.text
    assert r.json() == {"ready": True, "components": {"lake": r.json()["components"]["lake"]}}
    assert "local directory" in r.json()["components"]["lake"]["detail"]
    assert list(state.iterdir()) == [], "the probe object is deleted"


def test_metrics_move_with_the_traffic(start_server):
    server = start_server(SEGMENT_DELTA_SOURCES=f"{KEY}=segment")
    before = server.get("/metrics")
    assert before.status_code == 200 and before.headers["Content-Type"].startswith("text/plain")
    events = [{"type": "track", "userId": "u", "event": "Metered", "messageId": f"m{i}", "properties": {"n": i}}
              for i in range(5)]
    events.append({"type": "track", "userId": "u", "event": "Metered", "messageId": "m-bad",
                   "properties": {"n": "not a number"}})
    assert server.post("/v1/batch", {"batch": events[:5]}, key=KEY).status_code == 200
    assert server.post("/v1/batch", {"batch": events[5:]}, key=KEY).status_code == 200
    assert server.post("/v1/track", events[0], key="wrong").status_code == 401
    text = server.get("/metrics").text
    assert metric(text, "segment_delta_events_received_total", source="http") == 6
    assert metric(text, "segment_delta_events_accepted_total", source="http") == 6
    assert metric(text, "segment_delta_rows_written_total", schema="segment", table="metered") == 6
    assert metric(text, "segment_delta_rows_written_total", schema="segment", table="tracks") == 6
    assert metric(text, "segment_delta_discards_total", schema="segment", table="metered", kind="type_mismatch") == 1
    assert metric(text, "segment_delta_requests_total", endpoint="batch", status="200") == 2
    assert metric(text, "segment_delta_requests_total", endpoint="event", status="401") == 1
    assert metric(text, "segment_delta_requests_refused_total", reason="write_key") == 1
    assert metric(text, "segment_delta_ack_seconds_count", source="http") == 2
    assert metric(text, "segment_delta_commit_seconds_count") >= 3  # metered, tracks, discards
    assert metric(text, "segment_delta_buffered_bytes") == 0


def test_settings_take_units_and_misspellings_are_named(start_server):
    server = start_server(SEGMENT_DELTA_FLUSH_INTERVAL_MS="250ms", SEGMENT_DELTA_MAX_REQUEST_BYTES="1MiB",
                          SEGMENT_DELTA_MAX_COLUMS="5")
    big = {"type": "track", "userId": "u", "event": "Big", "properties": {"s": "x" * 600_000}}
    r = server.post("/v1/track", big)
    # Over the 32 KiB event limit, but not the 1 MiB request limit (the default 500 KiB would give 413).
    assert r.status_code == 400 and "SEGMENT_DELTA_MAX_EVENT_BYTES" in r.text, r.text
    assert "SEGMENT_DELTA_MAX_COLUMS is not a setting and is ignored; did you mean SEGMENT_DELTA_MAX_COLUMNS?" \
        in server.stderr()
    bad = run("check", env={"SEGMENT_DELTA_LAKE": str(server.lake), "SEGMENT_DELTA_FLUSH_INTERVAL_MS": "soon"})
    assert bad.returncode != 0 and 'SEGMENT_DELTA_FLUSH_INTERVAL_MS: "soon" is not a duration' in bad.stderr


def test_help_lists_each_command_s_settings():
    out = run("maintain", "--help").stdout
    assert "SEGMENT_DELTA_VACUUM_RETENTION_HOURS [default: 168h]" in out
    assert "SEGMENT_DELTA_CORS_ORIGINS" not in out
    assert "SEGMENT_DELTA_CORS_ORIGINS [default: *]" in run("serve", "--help").stdout


def test_check_passes_on_a_good_setup_and_names_what_is_broken(tmp_path):
    lake = tmp_path / "lake"
    good = run("check", env={"SEGMENT_DELTA_LAKE": str(lake)})
    assert good.returncode == 0, good.stdout + good.stderr
    assert "[pass] lake writable" in good.stdout and "all checks passed" in good.stdout
    assert "storage credential in effect: local directory" in good.stdout
    (lake / "_segment_delta").rmdir()
    (lake / "_segment_delta").write_text("in the way")
    broken = run("check", env={"SEGMENT_DELTA_LAKE": str(lake)})
    assert broken.returncode != 0
    assert "[FAIL] lake not writable" in broken.stdout
    # A remote lake without write keys can be checked, and says what serving it lacks.
    remote = run("check", env={"SEGMENT_DELTA_LAKE": "abfss://c@nowhere.dfs.core.windows.net/x",
                               "SEGMENT_DELTA_STORAGE_CREDENTIAL": "account-key",
                               "AZURE_STORAGE_ACCOUNT_KEY": "a2V5", "AZURE_STORAGE_ACCOUNT_NAME": "nowhere"})
    assert remote.returncode != 0 and "[FAIL] SEGMENT_DELTA_SOURCES: must map" in remote.stdout


def test_discards_are_summarised_in_the_log_and_by_the_discards_command(start_server):
    server = start_server()
    secret = "card-4111111111111111"
    batch = [{"type": "track", "userId": "u", "event": "Paid", "messageId": f"p{i}", "properties": {"amount": i}}
             for i in range(3)]
    batch += [{"type": "track", "userId": "u", "event": "Paid", "messageId": f"bad{i}",
               "properties": {"amount": secret}} for i in range(2)]
    batch.append({"type": "click", "messageId": "weird"})
    assert server.post("/v1/batch", {"batch": batch}).status_code == 200
    lines = [line for line in server.stderr().splitlines() if "values set aside in discards" in line]
    assert len(lines) == 1, server.stderr()
    assert "count=3" in lines[0] and "paid.amount (type_mismatch) x2" in lines[0]
    assert secret not in lines[0], "values are never logged"
    out = run("discards", "--schema", "segment", "--since", "1h", env={"SEGMENT_DELTA_LAKE": str(server.lake)})
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert rows[0].split()[:3] == ["2", "paid", "amount"] and ("(bad0)" in rows[0] or "(bad1)" in rows[0])
    assert "3 discards in 2 groups" in out.stdout
    only = run("discards", "--schema", "segment", "--table", "paid", env={"SEGMENT_DELTA_LAKE": str(server.lake)})
    assert "2 discards in 1 groups" in only.stdout
    # Nothing received in the last second... of a minute from now: --since filters by arrival.
    time.sleep(1.1)
    recent = run("discards", "--schema", "segment", "--since", "1s", env={"SEGMENT_DELTA_LAKE": str(server.lake)})
    assert "no discards" in recent.stdout or "0 discards" in recent.stdout, recent.stdout
    shutil.rmtree(server.lake / "segment" / "discards")
    assert "no discards in segment" in run("discards", "--schema", "segment",
                                           env={"SEGMENT_DELTA_LAKE": str(server.lake)}).stdout


def test_ingest_dry_run_reports_and_writes_nothing(start_server, tmp_path):
    server = start_server()
    assert server.post("/v1/track", {"type": "track", "userId": "u", "event": "Known", "properties": {"a": 1}}) \
        .status_code == 200
    server.stop()
    files_before = {p: p.stat().st_mtime for p in server.lake.rglob("*")}
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join([
        '{"type":"track","userId":"u","event":"Known","properties":{"a":2,"b":"new"}}',
        '{"type":"track","userId":"u","event":"Brand New","properties":{"x":1}}',
        '{"type":"click"}',
        '{"type":"delete","userId":"u9"}',
    ]) + "\n")
    out = run("ingest", "--dry-run", str(events), env={"SEGMENT_DELTA_LAKE": str(server.lake)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "dry run: nothing was written"
    assert "rows     segment.known: 1, 1 new columns: b" in lines
    assert any(line.startswith("rows     segment.brand_new: 1, new table with") for line in lines), lines
    assert "rows     segment.tracks: 2" in lines
    assert "discards (no table): 1 (other)" in lines
    assert "deletes  1 users would be forgotten" in lines
    assert {p: p.stat().st_mtime for p in server.lake.rglob("*")} == files_before
