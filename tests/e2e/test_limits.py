"""Requests refused as a whole: the right status, a JSON error that says why (and which setting), nothing
written, and the server still up."""

import gzip
import json
import socket

import pytest

from conftest import running_server


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("limits")) as server:
        yield server


@pytest.fixture
def refused(limited):
    """Checks after the test that the lake is still empty and the server still answers."""
    yield limited
    assert limited.files() == set(), "a refused request wrote something"
    assert limited.alive()


def track(i=0, **props):
    return {"type": "track", "userId": "u1", "event": "Too Much", "messageId": f"m-{i}", "properties": props}


def error_of(r, status):
    assert r.status_code == status, r.text
    answer = r.json()
    assert answer["success"] is False and isinstance(answer["error"], str), answer
    return answer["error"]


@pytest.mark.parametrize("body", [b'{"batch": [', b"not json", b'{"batch": [{"type": "track"}] trailing',
                                  b"", b'{"batch": {"type": "track"}}', b"[1, 2]"])
def test_malformed_batch_is_400(refused, body):
    error = error_of(refused.post("/v1/batch", body), 400)
    assert "JSON" in error or "batch" in error


def test_malformed_single_event_is_400(refused):
    error = error_of(refused.post("/v1/track", b'{"userId": "u1", "event": '), 400)
    assert "JSON" in error


def test_too_many_events_is_400_naming_the_limit(refused):
    body = {"batch": [track(i) for i in range(2_501)]}
    assert len(json.dumps(body)) < 512_000
    error = error_of(refused.post("/v1/batch", body), 400)
    assert "2501" in error and "2500" in error and "SEGMENT_DELTA_MAX_BATCH_EVENTS" in error


def test_at_the_batch_limit_is_fine(tmp_path):
    with running_server(tmp_path) as server:
        r = server.post("/v1/batch", {"batch": [track(i) for i in range(2_500)]})
        assert r.status_code == 200, r.text
        assert server.read("tracks").num_rows == 2_500
        assert server.read("too_much").num_rows == 2_500


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/track"])
def test_event_over_32_kb_is_400_naming_the_limit(refused, path):
    event = track(big="x" * 33 * 1024)
    body = {"batch": [track(1), event]} if path == "/v1/batch" else event
    error = error_of(refused.post(path, body), 400)
    assert "32768" in error and "SEGMENT_DELTA_MAX_EVENT_BYTES" in error


def test_body_over_500_kb_is_413(refused):
    body = {"batch": [track(i, pad="p" * 30_000) for i in range(20)]}
    assert len(json.dumps(body)) > 512_000
    error = error_of(refused.post("/v1/batch", body), 413)
    assert "512000" in error and "SEGMENT_DELTA_MAX_REQUEST_BYTES" in error


def test_gzip_bomb_is_413(refused):
    bomb = gzip.compress(b" " * (20 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 64 * 1024
    r = refused.post("/v1/batch", bomb, headers={"Content-Encoding": "gzip"})
    error = error_of(r, 413)
    assert "512000" in error and "SEGMENT_DELTA_MAX_REQUEST_BYTES" in error


def test_gzip_bomb_of_valid_json_is_413(refused):
    body = b'{"batch": [' + b",".join([json.dumps(track(i)).encode() for i in range(2_000)] * 3) + b"]}"
    r = refused.post("/v1/batch", gzip.compress(body), headers={"Content-Encoding": "gzip"})
    error_of(r, 413)


def test_broken_gzip_and_unknown_encoding(refused):
    assert "gzip" in error_of(refused.post("/v1/batch", b"not gzip at all", headers={"Content-Encoding": "gzip"}), 400)
    assert "br" in error_of(refused.post("/v1/batch", b"{}", headers={"Content-Encoding": "br"}), 415)


@pytest.mark.parametrize("path", ["/v1/nope", "/v2/track", "/track", "/v1/track/extra", "/v1/"])
def test_unknown_path_is_404(refused, path):
    assert path.rstrip("/") in error_of(refused.post(path, track()), 404)


def test_wrong_method_is_405(refused):
    r = refused.get("/v1/batch")
    error_of(r, 405)
    r = refused.request("DELETE", "/")
    error_of(r, 405)


def test_ping(refused):
    r = refused.get("/")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def http_exchange(sock, request: bytes) -> tuple[int, dict, bytes]:
    """Sends one request on an open connection and reads one response (Content-Length framed)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response; got {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside a response body")
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def test_connection_after_413_is_closed_explicitly_or_reusable(limited):
    big = json.dumps(track(s="x" * (2 * 1024 * 1024))).encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", limited.port), timeout=30) as sock:
            status, headers, body = http_exchange(
                sock, b"POST /v1/track HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(big) + big)
            assert status == 413 and b"SEGMENT_DELTA_MAX_REQUEST_BYTES" in body
            if headers.get("connection", "").lower() == "close":
                continue  # announced: a client opens a new connection
            # Not announced, so a client may send its next request on this connection: it must be answered.
            status, _, _ = http_exchange(sock, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert status == 200
