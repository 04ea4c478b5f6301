"""Connections from clients that hold a valid (public) key but not the rules: slow headers, slow or endless bodies,
wrong keys with big bodies, more connections than the server takes. Each is bounded in time and memory, and a
SIGTERM still ends the server promptly with such clients attached."""

import base64
import socket
import time

import pytest

MiB = 1 << 20
KEY = "conn-key"


def connect(server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def head(path: str = "/v1/track", *, length: int, key: str | None = KEY, expect: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"Content-Length: {length}"] + (["Expect: 100-continue"] if expect else [])
    if key is not None:
        lines.append("Authorization: Basic " + base64.b64encode(f"{key}:".encode()).decode())
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def closed(s: socket.socket, within: float) -> bool:
    """Whether the server closes the connection within `within` seconds (whatever it answered first)."""
    s.settimeout(within)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def answer(s: socket.socket, within: float = 5) -> tuple[int, bytes]:
    s.settimeout(within)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


@pytest.fixture
def keyed(start_server):
    def start(**env):
        return start_server(SEGMENT_DELTA_SOURCES=f"{KEY}=segment", **env)
    return start


def test_slow_header_senders_are_closed_at_the_header_deadline(keyed):
    server = keyed(SEGMENT_DELTA_HEADER_TIMEOUT_MS="1500")
    sockets = [connect(server) for _ in range(100)]
    started = time.monotonic()
    request = head(length=2)
    # One byte each, every 0.2 s: the headers would take 20 s.
    for i in range(5):
        for s in sockets:
            try:
                s.send(request[i:i + 1])
            except OSError:
                pass
        time.sleep(0.2)
    assert all(closed(s, within=5) for s in sockets)
    print(f"100 slow header senders closed after {time.monotonic() - started:.1f} s")
    # The server still serves.
    assert server.post("/v1/track", {"type": "track", "userId": "u", "event": "After"}, key=KEY).status_code == 200


def test_idle_connections_are_closed_too(keyed):
    server = keyed(SEGMENT_DELTA_HEADER_TIMEOUT_MS="1000")
    s = connect(server)
    assert closed(s, within=4)


def test_a_wrong_key_is_refused_before_a_big_body_is_read(keyed):
    server = keyed()
    s = connect(server)
    # Ten megabytes announced, none sent: the answer comes from the headers alone.
    s.sendall(head(length=10_000_000, key="wrong"))
    status, data = answer(s)
    assert status == 401, data
    assert b"unknown write key" in data
    assert b"connection: close" in data.lower()
    assert closed(s, within=5)
    # An unknown path is refused the same way.
    s = connect(server)
    s.sendall(head("/v1/nothing", length=10_000_000))
    assert answer(s)[0] == 404
    # A client waiting for leave to send its (small) body is answered at once too, not at the body deadline.
    s = connect(server)
    started = time.monotonic()
    s.sendall(head(length=1000, key="wrong", expect=True))
    status, data = answer(s)
    assert status == 401 and b"100 Continue" not in data, data
    assert closed(s, within=5)
    assert time.monotonic() - started < 3, "answered before the body deadline"


def test_a_client_still_sending_a_refused_body_reads_the_answer(keyed):
    """A refused request whose body is still arriving when the answer is ready (a wrong key, an unknown path, a body
    over the limit): the client sends its whole body, as HTTP clients do, then reads the answer that names what was
    wrong, not a reset connection."""
    server = keyed(SEGMENT_DELTA_MAX_REQUEST_BYTES="100000")
    body = b'{"type":"track","userId":"u","event":"E","properties":{"s":"' + b"x" * (3 * MiB) + b'"}}'
    cases = [("/v1/track", "wrong", 401, b"unknown write key"),
             ("/v1/nothing", KEY, 404, b"/v1/nothing"),
             ("/v1/track", KEY, 413, b"SEGMENT_DELTA_MAX_REQUEST_BYTES")]
    for path, key, status, names in cases * 3:
        s = connect(server)
        s.sendall(head(path, length=len(body), key=key) + body)
        # Everything the server sends until it closes the connection: the whole answer.
        s.settimeout(5)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        assert data.startswith(b"HTTP/1.1 %d " % status), (path, key, data)
        assert names in data and b"connection: close" in data.lower(), data
    assert server.post("/v1/track", {"type": "track", "userId": "u", "event": "After"}, key=KEY).status_code == 200


def test_a_body_being_dropped_holds_none_of_the_reading_budget(keyed):
    """A body past the size limit is read and dropped while its client sends the rest; meanwhile the bytes of it
    that were read are given back to the server's reading budget, so other requests are read at once."""
    server = keyed(SEGMENT_DELTA_MAX_REQUEST_BYTES="100000", SEGMENT_DELTA_MAX_READING_BYTES="100000")
    big = connect(server)
    # Past the limit, which is the whole budget here; the rest of the 3 MiB comes later.
    big.sendall(head(length=3 * MiB) + b"x" * 150_000)
    time.sleep(0.5)
    started = time.monotonic()
    r = server.post("/v1/track", {"type": "track", "userId": "u", "event": "Meanwhile"}, key=KEY)
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert took < 5, f"a small request waited {took:.1f} s for the budget"
    big.sendall(b"x" * (3 * MiB - 150_000))
    status, data = answer(big)
    assert status == 413 and b"SEGMENT_DELTA_MAX_REQUEST_BYTES" in data, data
    big.close()
    assert server.read("meanwhile").num_rows == 1


def test_a_body_that_does_not_arrive_in_time_gets_408(keyed):
    server = keyed(SEGMENT_DELTA_BODY_TIMEOUT_MS="1000")
    s = connect(server)
    s.sendall(head(length=1000) + b'{"type":"track"')
    status, data = answer(s, within=5)
    assert status == 408, data
    assert b"SEGMENT_DELTA_BODY_TIMEOUT_MS" in data


def test_connections_past_the_limit_are_closed_and_the_server_recovers(keyed):
    server = keyed(SEGMENT_DELTA_MAX_CONNECTIONS="20", SEGMENT_DELTA_HEADER_TIMEOUT_MS="30000")
    held = [connect(server) for _ in range(20)]
    time.sleep(0.3)
    # The connection of the start-up check may still have been counted while these were opened: the server closes
    # one of them then, which is opened again once that connection is gone, until the server holds all twenty.
    for _ in range(5):
        refused = [s for s in held if closed(s, within=0.05)]
        if not refused:
            break
        for s in refused:
            s.close()
        held = [s for s in held if s not in refused] + [connect(server) for _ in refused]
        time.sleep(0.3)
    else:
        raise AssertionError("twenty connections are within the limit, yet the server keeps closing some")
    extra = connect(server)
    assert closed(extra, within=3), "a connection past the limit is closed at once"
    for s in [extra, *held]:
        s.close()
    time.sleep(0.3)
    r = server.post("/v1/track", {"type": "track", "userId": "u", "event": "Recovered"}, key=KEY)
    assert r.status_code == 200, r.text


def test_bodies_being_read_share_a_byte_budget(keyed):
    # 200 keyless connections each send 499 KB of a 500 KB body and stop: without a budget that is 100 MB held.
    server = keyed(SEGMENT_DELTA_MAX_READING_BYTES=str(16 * MiB), SEGMENT_DELTA_BODY_TIMEOUT_MS="60000")
    before = server.memory()["VmRSS"]
    server.reset_peak()
    part = b"x" * 499_000
    sockets = []
    for _ in range(200):
        s = connect(server)
        s.setblocking(False)
        try:
            s.send(head(length=500_000, key=None))
            s.send(part)
        except BlockingIOError:
            pass  # the server is not reading: the rest stays in the kernel's buffers
        sockets.append(s)
    time.sleep(2)
    growth = server.memory()["VmHWM"] - before
    print(f"200 half-sent 500 KB bodies: peak RSS growth {growth / MiB:.1f} MiB")
    assert growth < 64 * MiB
    for s in sockets:
        s.close()
    time.sleep(0.5)
    r = server.post("/v1/track", {"type": "track", "userId": "u", "event": "Afterwards"}, key=KEY)
    assert r.status_code == 200, r.text


def test_sigterm_ends_the_server_promptly_with_slow_clients_attached(keyed):
    server = keyed()
    slow = [connect(server) for _ in range(100)]
    for s in slow[:50]:
        s.send(head(length=2)[:20])  # half a request line
    for s in slow[50:]:
        s.send(head(length=100_000) + b"{")  # a body that never ends
    r = server.post("/v1/track", {"type": "track", "userId": "u", "event": "Before Stop"}, key=KEY)
    assert r.status_code == 200
    started = time.monotonic()
    rc = server.stop()
    took = time.monotonic() - started
    print(f"SIGTERM with 100 slow clients: exited {rc} after {took:.1f} s")
    assert rc == 0, server.stderr()
    assert took < 30
    assert server.read("before_stop").num_rows == 1
