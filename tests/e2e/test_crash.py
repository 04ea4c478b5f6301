"""kill -9 in the middle of a load, a restart on the same lake, then the clients' retries.

Client threads send 500-event /v1/batch bodies of the event corpus; once a few have been acknowledged the server
process is killed with SIGKILL while others are in flight. A new process starts on the same lake. Then:

- every event of a request answered 200 before the kill is in each of its tables exactly once;
- the clients send every request that got no answer again; all are answered 200;
- now every event is in each of its tables once or twice, twice only for events of requests that were not
  acknowledged before the kill (their table's commit landed, the answer never left the killed process, and the
  new process has no memory of that messageId); the two rows are the same event: same `id`, same values except
  the server-side `received_at`, `timestamp` and `uuid_ts`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import LIVE, Server, generate, lake_tables, read_table, tables_of

CLIENT_THREADS = 4
KEY = "CRASH-KEY"
SERVER_SIDE = {"received_at", "timestamp", "uuid_ts"}
# (bodies, acknowledged requests before the kill) per lake: Azurite commits more slowly, so fewer bodies.
LOADS = {"local": (8, 2), "azurite": (8, 2)}


def tracks_versions(lake) -> int:
    """How many commits `segment.tracks` has, from its `_delta_log` listing."""
    if isinstance(lake, Path):
        log = lake / "segment" / "tracks" / "_delta_log"
        return len(list(log.glob("*.json"))) if log.is_dir() else 0
    return sum(1 for n in lake.blob_names("segment/tracks/_delta_log") if n.endswith(".json"))


def send_until_killed(server: Server, bodies: list[bytes], kill_after: int) -> dict[int, int | str]:
    """Sends the bodies over CLIENT_THREADS threads. Once `kill_after` were acknowledged, waits for the next
    commit to `tracks` (a micro-batch whose requests are not answered yet, while its other tables are still being
    committed) and SIGKILLs the server. Returns each body's answer: the status, or the transport error's name for
    a request that got none."""
    answers: dict[int, int | str] = {}
    acked = threading.Semaphore(0)
    lock = threading.Lock()
    next_body = iter(range(len(bodies)))

    def client() -> None:
        while True:
            with lock:
                i = next(next_body, None)
            if i is None:
                return
            try:
                status = server.post("/v1/batch", bodies[i], key=KEY).status_code
            except requests.RequestException as e:
                status = type(e).__name__
            answers[i] = status
            if status == 200:
                acked.release()

    threads = [threading.Thread(target=client) for _ in range(CLIENT_THREADS)]
    for t in threads:
        t.start()
    for _ in range(kill_after):
        assert acked.acquire(timeout=300), f"fewer than {kill_after} requests acknowledged: {answers}"
    seen = tracks_versions(server.lake)
    while tracks_versions(server.lake) == seen and any(t.is_alive() for t in threads):
        time.sleep(0.005)
    server.proc.kill()
    server.proc.wait()
    LIVE.remove(server)
    for t in threads:
        t.join(300)
    assert len(answers) == len(bodies)
    return answers


def id_counts(lake, tables) -> dict[str, Counter]:
    return {t: Counter(read_table(lake, "segment", t).column("id").to_pylist()) for t in tables}


@pytest.mark.parametrize("where", ["local", "azurite"])
def test_kill_9_then_restart_then_retry(where, tmp_path, request, record_property):
    n_bodies, kill_after = LOADS[where]
    bodies = generate(500 * n_bodies, seed=41, batch=500)
    events_of = [json.loads(b)["batch"] for b in bodies]
    lake = request.getfixturevalue("azurite").new_lake(request.node.name) if where == "azurite" else None
    first = Server(tmp_path / "first", lake, SEGMENT_DELTA_SOURCES=f"{KEY}=segment").start()
    answers = send_until_killed(first, bodies, kill_after)
    assert all(a == 200 or isinstance(a, str) for a in answers.values()), answers  # no error answer
    acked = [i for i, a in answers.items() if a == 200]
    unacked = [i for i, a in answers.items() if a != 200]
    assert len(acked) >= kill_after

    # The same lake, a new process: the first's stderr is kept apart from the second's.
    second = Server(tmp_path / "second", lake, SEGMENT_DELTA_SOURCES=f"{KEY}=segment")
    if lake is None:
        second.lake = first.lake
        second.env["SEGMENT_DELTA_LAKE"] = str(first.lake)
    second.start()
    try:
        acked_tables = {t for i in acked for e in events_of[i] for t in tables_of(e)}
        assert acked_tables <= lake_tables(second.lake)
        before_retry = id_counts(second.lake, acked_tables)
        for i in acked:
            for e in events_of[i]:
                for t in tables_of(e):
                    assert before_retry[t][e["messageId"]] == 1, (t, e["messageId"], before_retry[t][e["messageId"]])

        # The clients retry what got no answer.
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            retried = list(pool.map(lambda i: second.post("/v1/batch", bodies[i], key=KEY).status_code, unacked))
        assert retried == [200] * len(unacked)

        all_tables = {t for events in events_of for e in events for t in tables_of(e)}
        assert lake_tables(second.lake) == all_tables, "no other table (no discards)"
        rows: dict[str, dict[str, list[dict]]] = {t: defaultdict(list) for t in all_tables}
        for t in all_tables:
            for row in read_table(second.lake, "segment", t).to_pylist():
                rows[t][row["id"]].append(row)
        acked_ids = {e["messageId"] for i in acked for e in events_of[i]}
        duplicated = []
        for events in events_of:
            for e in events:
                for t in tables_of(e):
                    copies = rows[t][e["messageId"]]
                    assert copies, f"{e['messageId']} lost from {t}"
                    if e["messageId"] in acked_ids:
                        assert len(copies) == 1, f"acknowledged {e['messageId']} is {len(copies)} times in {t}"
                        continue
                    assert len(copies) <= 2, f"{e['messageId']} is {len(copies)} times in {t}"
                    if len(copies) == 2:
                        a, b = ({k: v for k, v in r.items() if k not in SERVER_SIDE} for r in copies)
                        assert a == b, f"{t}: the two rows of {e['messageId']} differ"
                        duplicated.append((t, e["messageId"]))
        ids_in_lake = {i for by_id in rows.values() for i in by_id}
        assert ids_in_lake == {e["messageId"] for events in events_of for e in events}
    finally:
        rc = second.stop()
    assert rc == 0, second.stderr()
    unacked_events = sum(len(events_of[i]) for i in unacked)
    record_property("summary", (
        f"{where}: {len(bodies)} requests, {len(acked)} acknowledged before kill -9, {len(unacked)} retried "
        f"({unacked_events} events); rows written twice after the retry: {len(duplicated)} in "
        f"{len({t for t, _ in duplicated})} tables, from {len({i for _, i in duplicated})} events"))
