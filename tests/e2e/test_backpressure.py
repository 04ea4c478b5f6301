"""Offered load above what the server can write: with SEGMENT_DELTA_MAX_BUFFERED_BYTES small, many clients at once
get 503 with Retry-After instead of being buffered, the process's peak memory stays under a bound derived from
the settings, a refused request writes nothing, and every acknowledged event is there once.

The bound on the peak resident set (VmHWM): the process's own peak after a warm-up (tables created and cached),
plus what it may hold on top of that:
- the bytes accepted and not yet written, at most SEGMENT_DELTA_MAX_BUFFERED_BYTES, plus the requests being parsed
  and mapped (at most one a runtime worker, i.e. a core), each at most SEGMENT_DELTA_MAX_REQUEST_BYTES, all
  turned into rows, Arrow batches and Parquet buffers: EXPANSION bytes of memory per byte of JSON (about 12
  measured on the corpus, 20 allowed);
- the bodies of every open request being read, one per client, as they come.
Measured on a 2-core machine with 32 clients sending these bodies at once: about 30 MiB over the baseline with a
1 MB buffer bound, about 140 MiB with the default bound (256 MiB), which lets every request wait in memory.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from conftest import generate

MAX_BUFFERED = 1_000_000
MAX_REQUEST = 512_000  # the default SEGMENT_DELTA_MAX_REQUEST_BYTES
EXPANSION = 20
CLIENTS = 16
BODIES = 16


def vm_hwm(pid: int) -> int:
    """Peak resident set size of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def test_overload_is_refused_and_memory_stays_bounded(start_server, record_property):
    bodies = generate(500 * (BODIES + 2), seed=51, batch=500)
    assert all(len(b) <= MAX_REQUEST for b in bodies)
    events_of = [json.loads(b)["batch"] for b in bodies]
    server = start_server(SEGMENT_DELTA_MAX_BUFFERED_BYTES=str(MAX_BUFFERED))
    pid = server.proc.pid

    for warm in bodies[:2]:  # every table of the corpus exists and is cached
        assert server.post("/v1/batch", warm).status_code == 200
    baseline = vm_hwm(pid)

    def send(i: int):
        r = server.post("/v1/batch", bodies[i])
        return i, r.status_code, r.headers.get("Retry-After"), r.json()

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(send, range(2, len(bodies))))
    peak = vm_hwm(pid)
    workers = os.cpu_count() or 1
    bound = baseline + EXPANSION * (MAX_BUFFERED + workers * MAX_REQUEST) + CLIENTS * MAX_REQUEST

    statuses = Counter(status for _, status, _, _ in answers)
    assert set(statuses) == {200, 503}, statuses  # above capacity: some refused, some written
    refused = [i for i, status, _, _ in answers if status == 503]
    for i, _, retry_after, answer in answers:
        if i in refused:
            assert retry_after is not None and int(retry_after) >= 1
            assert answer["success"] is False and "too much data is waiting to be written" in answer["error"]
        else:
            assert answer == {"success": True}
    assert peak <= bound, (f"peak RSS {peak / 2**20:.1f} MiB over the bound {bound / 2**20:.1f} MiB "
                           f"(baseline {baseline / 2**20:.1f} MiB)")

    # Acknowledged: there once. Refused: not there at all.
    tracks = Counter(server.read("tracks").column("id").to_pylist())
    acked = [0, 1] + [i for i, status, _, _ in answers if status == 200]
    for i in acked:
        for e in events_of[i]:
            if e["type"] == "track":
                assert tracks[e["messageId"]] == 1, e["messageId"]
    assert not [e["messageId"] for i in refused for e in events_of[i] if e["messageId"] in tracks]

    # Refused clients that come back after Retry-After are written (three of them: the buffer bound keeps
    # micro-batches small, so writing all again would take a while and show nothing more).
    def retry(i: int) -> int:
        while True:
            r = server.post("/v1/batch", bodies[i])
            if r.status_code != 503:
                return r.status_code
            time.sleep(int(r.headers["Retry-After"]))

    back = refused[:3]
    with ThreadPoolExecutor(len(back)) as pool:
        assert list(pool.map(retry, back)) == [200] * len(back)
    tracks = Counter(server.read("tracks").column("id").to_pylist())
    written = [0, 1] + [i for i, status, _, _ in answers if status == 200] + back
    want = {e["messageId"] for i in written for e in events_of[i] if e["type"] == "track"}
    assert set(tracks) == want and set(tracks.values()) == {1}
    assert "discards" not in server.tables()
    record_property("summary", (
        f"{len(answers)} requests from {CLIENTS} clients at once: {dict(statuses)}; peak RSS "
        f"{peak / 2**20:.1f} MiB, baseline {baseline / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB"))
