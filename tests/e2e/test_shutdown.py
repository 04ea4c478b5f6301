"""SIGTERM: requests already accepted are written and answered, then the server exits 0."""

import json
import signal
import threading
import time

import requests

from conftest import Server, generate, lake_tables, read_table, tables_of


def test_sigterm_finishes_accepted_requests(tmp_path):
    body = generate(500, seed=31, batch=500)[0]
    events = json.loads(body)["batch"]
    server = Server(tmp_path).start()
    answer = {}

    def send():
        try:
            r = server.post("/v1/batch", body)
            answer["r"] = (r.status_code, r.json())
        except requests.RequestException as e:
            answer["r"] = repr(e)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.15)  # the body is in, and its rows wait for the next flush
    server.proc.send_signal(signal.SIGTERM)
    sender.join(60)
    rc = server.proc.wait(timeout=60)
    server.stop()
    assert rc == 0, server.stderr()
    assert answer["r"] == (200, {"success": True})
    assert "stopped; everything accepted was written" in server.stderr()
    tracks = [e["messageId"] for e in events if e["type"] == "track"]
    assert sorted(read_table(server.lake, "segment", "tracks").column("id").to_pylist()) == sorted(tracks)
    assert lake_tables(server.lake) == {t for e in events for t in tables_of(e)}
