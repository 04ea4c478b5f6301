"""Storage failing under the server: Azurite stopped and started again mid-load, and, through a fault-injecting
proxy (faultproxy.py) between the server and Azurite, HTTP 500s, connection resets, answers lost after a commit
reached storage, and slow answers.

For every fault: a request is answered 200 only when its rows are committed, and otherwise 503 with Retry-After
(never another status); while storage is unreachable nothing is answered 200; once the fault is gone the same
process (never restarted) answers 200 again; the clients send what was refused once more, and then every event is
in `tracks` and in its event table exactly once.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from conftest import Azurite, azurite_blob_bin, go_snakecase, tail
from faultproxy import FaultProxy

KEY = "FAULT-KEY"
EVENT_NAMES = ["Fault Probe", "Fault Check"]
BODY_EVENTS = 100
CLIENT_THREADS = 3


def body(tag: str, b: int) -> bytes:
    events = [{"type": "track", "userId": f"u{n % 7}", "event": EVENT_NAMES[n % len(EVENT_NAMES)],
               "messageId": f"{tag}-{b}-{n}", "properties": {"n": n, "body": b, "ratio": n / 8}}
              for n in range(BODY_EVENTS)]
    return json.dumps({"batch": events}).encode()


@dataclass
class Answer:
    status: int | None
    retry_after: str | None
    text: str


def post(server, data: bytes) -> Answer:
    try:
        r = server.post("/v1/batch", data, key=KEY)
        return Answer(r.status_code, r.headers.get("Retry-After"), r.text)
    except requests.RequestException as e:
        return Answer(None, None, repr(e))


def check_exactly_once(lake, bodies: dict[int, bytes]) -> None:
    """Every event of every body once in tracks and once in its event table; nothing else in the lake."""
    want = {e["messageId"]: go_snakecase(e["event"]) for data in bodies.values() for e in json.loads(data)["batch"]}
    assert lake.tables() == {"tracks"} | {go_snakecase(n) for n in EVENT_NAMES}, "no other table (no discards)"
    tracks = Counter(lake.read("tracks").column("id").to_pylist())
    assert set(tracks) == set(want), (sorted(set(want) - set(tracks))[:5], sorted(set(tracks) - set(want))[:5])
    assert [i for i, c in tracks.items() if c > 1] == [], "written twice in tracks"
    for name in EVENT_NAMES:
        table = go_snakecase(name)
        rows = lake.read(table).to_pylist()
        ids = Counter(r["id"] for r in rows)
        assert set(ids) == {i for i, t in want.items() if t == table}, table
        assert [i for i, c in ids.items() if c > 1] == [], f"written twice in {table}"
        assert all(r["ratio"] == r["n"] / 8 and r["id"].endswith(f"-{r['body']}-{r['n']}") for r in rows), table


# ---------------------------------------------------------------------------------------------------------------
# Azurite of this module, restartable on the same port with the same data.


class RestartableAzurite(Azurite):
    def halt(self) -> None:
        """Stops the process (SIGTERM: Azurite keeps its data only when it can save it on the way out); from then
        on connections are refused."""
        self.proc.terminate()
        self.proc.wait(timeout=60)

    def restart(self) -> None:
        """Starts azurite-blob again on the same port and data directory."""
        cmd = [str(azurite_blob_bin()), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
               "--location", str(self.workdir / "data"), "--silent", "--skipApiVersionCheck"]
        for _attempt in range(50):
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            if self._wait_until_up():
                return
            time.sleep(0.2)  # the port may still be held by the killed process's sockets
        raise AssertionError(f"azurite-blob did not come back on port {self.port}:\n{tail(self.log_path)}")


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    path = azurite_blob_bin()
    if not path.is_file():
        pytest.fail(f"azurite-blob not found at {path}", pytrace=False)
    azurite = RestartableAzurite(tmp_path_factory.mktemp("fault-azurite")).start()
    proxy = FaultProxy(azurite.port).start()
    yield azurite, proxy
    proxy.stop()
    azurite.stop()


@pytest.fixture
def faulty(storage, start_server, request):
    """A server whose lake is on Azurite behind the proxy; the proxy passes everything when the test ends."""
    azurite, proxy = storage
    proxy.set("pass")
    lake = azurite.new_lake(request.node.name)
    # A shorter retry budget than the default 30 s: a request under a lasting fault gets its 503 sooner.
    env = {**lake.server_env(), "AZURITE_BLOB_STORAGE_URL": proxy.url, "SEGMENT_DELTA_WRITE_RETRY_SECS": "8"}
    server = start_server(lake, SEGMENT_DELTA_SOURCES=f"{KEY}=segment", **env)
    yield server, proxy
    proxy.set("pass")


# ---------------------------------------------------------------------------------------------------------------
# The fault matrix through the proxy

COMMIT = ("PUT ", "/_delta_log/0")  # the PUT of a Delta commit file


@dataclass
class Fault:
    mode: str
    every: int = 1
    only: tuple[str, ...] = ()
    delay_s: float = 0.0
    expect: str = "mixed"  # "503": every request under the fault refused; "200": all acknowledged; "mixed": either
    bodies: int = 4


FAULTS = {
    "http 500 on every request": Fault("500", expect="503", bodies=2),
    "http 500 on every 3rd request": Fault("500", every=3),
    "connection reset on every request": Fault("reset", expect="503", bodies=2),
    "connection reset on every 3rd request": Fault("reset", every=3),
    "answer to every 2nd commit lost after it landed": Fault("reset-after", every=2, only=COMMIT, expect="200"),
    "every answer delayed 0.25 s": Fault("delay", delay_s=0.25, expect="200", bodies=3),
    "http 500 on every commit": Fault("500", only=COMMIT, expect="503", bodies=1),
}


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
def test_fault(faulty, fault, record_property):
    server, proxy = faulty
    pid = server.proc.pid
    tag = f"{fault.mode}-{fault.every}"
    bodies = {b: body(tag, b) for b in range(fault.bodies + 2)}

    warm = post(server, bodies[0])  # the tables exist before the fault starts
    assert warm.status == 200, warm.text
    proxy.set(fault.mode, every=fault.every, delay_s=fault.delay_s, only=fault.only)
    under_fault = range(1, fault.bodies + 1)
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        answers = dict(zip(under_fault, pool.map(lambda b: post(server, bodies[b]), under_fault)))
    injected = sum(n for k, n in proxy.counts.items() if k == fault.mode)
    proxy.set("pass")

    statuses = Counter(a.status for a in answers.values())
    assert set(statuses) <= {200, 503}, {b: (a.status, a.text) for b, a in answers.items()}
    assert injected > 0, "the fault was never injected"
    refused = {b: a for b, a in answers.items() if a.status == 503}
    assert all(a.retry_after and int(a.retry_after) >= 1 for a in refused.values()), refused
    assert all(json.loads(a.text)["success"] is False for a in refused.values())
    if fault.expect == "503":
        assert statuses == {503: len(answers)}, "acknowledged while storage was failing"
    elif fault.expect == "200":
        assert statuses == {200: len(answers)}, {b: a.text for b, a in refused.items()}

    # Recovered without a restart: the refused requests again, and one more.
    assert server.proc.pid == pid and server.alive()
    again = {b: post(server, bodies[b]) for b in refused}
    assert {b: a.status for b, a in again.items()} == {b: 200 for b in refused}, {b: a.text for b, a in again.items()}
    last = post(server, bodies[fault.bodies + 1])
    assert last.status == 200, last.text
    check_exactly_once(server.lake, bodies)
    record_property("summary", f"{fault.mode} every {fault.every}{' on commits' if fault.only else ''}: "
                               f"{injected} faults injected; answers under fault {dict(statuses)}; "
                               f"after: all refused requests acknowledged on retry")


# ---------------------------------------------------------------------------------------------------------------
# Azurite itself stopped and started again while clients send


def test_azurite_stopped_and_restarted_mid_load(storage, start_server, request, record_property):
    azurite, _proxy = storage
    lake = azurite.new_lake(request.node.name)
    server = start_server(lake, SEGMENT_DELTA_SOURCES=f"{KEY}=segment")  # straight to Azurite
    pid = server.proc.pid
    bodies = {b: body("down", b) for b in range(16)}
    answers: dict[int, Answer] = {}
    refused_while_down = threading.Event()
    stopped = threading.Event()
    lock = threading.Lock()
    queue = iter(range(len(bodies)))

    def client() -> None:
        while True:
            with lock:
                b = next(queue, None)
            if b is None:
                return
            a = post(server, bodies[b])
            answers[b] = a
            if a.status != 200 and stopped.is_set():
                refused_while_down.set()

    threads = [threading.Thread(target=client) for _ in range(CLIENT_THREADS)]
    for t in threads:
        t.start()
    while sum(1 for a in list(answers.values()) if a.status == 200) < 2:
        assert any(t.is_alive() for t in threads), answers
        time.sleep(0.01)
    azurite.halt()
    stopped.set()
    acked_before = {b for b, a in list(answers.items()) if a.status == 200}
    assert refused_while_down.wait(300), "no request was refused while Azurite was down"
    refused_during = {b for b, a in list(answers.items()) if a.status != 200}
    azurite.restart()
    stopped.clear()
    for t in threads:
        t.join(300)
    assert len(answers) == len(bodies)

    statuses = Counter(a.status for a in answers.values())
    assert set(statuses) <= {200, 503}, {b: (a.status, a.text) for b, a in answers.items()}
    assert all(a.retry_after for a in answers.values() if a.status == 503)
    assert server.proc.pid == pid and server.alive()
    refused = [b for b, a in answers.items() if a.status != 200]
    again = {b: post(server, bodies[b]).status for b in refused}
    assert again == {b: 200 for b in refused}
    # What was acknowledged before the outage is still there, once; everything is there once after the retries.
    check_exactly_once(lake, bodies)
    record_property("summary", f"Azurite killed after {len(acked_before)} acknowledged requests; "
                               f"refused while down: {len(refused_during)}; answers overall {dict(statuses)}; "
                               f"all {len(refused)} refused requests acknowledged on retry")
