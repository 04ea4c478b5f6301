"""A small HTTP/1.1 proxy that injects storage faults between the server and Azurite.

Every request is read whole from the client (Content-Length or chunked framing), then, depending on the current
fault, answered with a 500, dropped with a TCP reset, delayed, or forwarded to the upstream on a fresh connection
(`Connection: close`, so the upstream's answer ends where its connection does). With `reset-after`, the request
reaches the upstream and its answer is thrown away with a reset: the client cannot tell whether it took effect.
With `500-after`, the request reaches the upstream and the client gets a 500 instead of the upstream's answer: a
client that retries a conditional PUT then finds the object it created itself.

    proxy = FaultProxy(upstream_port).start()
    proxy.set("500", every=3)      # every third request gets a 500
    proxy.set("down")              # connections are refused with a reset before any byte is read
    proxy.set("pass")
    proxy.upstream_port = other    # the upstream moved (a restarted Azurite)
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter

MODES = ("pass", "down", "500", "reset", "reset-after", "delay", "500-after")


class FaultProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1"):
        self.host = host
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.every = 1
        self.delay_s = 0.0
        self.only: tuple[bytes, ...] = ()
        self.counts: Counter[str] = Counter()  # "requests", "forwarded" and one count per fault injected
        self._seen = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "FaultProxy":
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="faultproxy-accept").start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()

    def set(self, mode: str, every: int = 1, delay_s: float = 0.0, only: tuple[str, ...] = ()) -> None:
        """The fault from now on: `mode` for one request in `every` (the others pass), `delay_s` for `delay`;
        with `only`, just for requests whose request line contains each of those strings (e.g. ("PUT ",
        "/_delta_log/0") for commits)."""
        assert mode in MODES, mode
        with self._lock:
            self.mode, self.every, self.delay_s, self._seen = mode, max(1, every), delay_s, 0
            self.only = tuple(o.encode() for o in only)

    def _decide(self, request: bytes) -> tuple[str, float]:
        with self._lock:
            self.counts["requests"] += 1
            line = request.split(b"\r\n", 1)[0]
            eligible = self.mode != "pass" and all(o in line for o in self.only)
            if eligible:
                self._seen += 1
            hit = eligible and self._seen % self.every == 0
            mode = self.mode if hit else "pass"
            self.counts[mode if mode != "pass" else "forwarded"] += 1
            return mode, self.delay_s

    # ------------------------------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        reader = _Reader(client)
        try:
            while True:
                if self.mode == "down":
                    with self._lock:
                        self.counts["down"] += 1
                    _reset(client)
                    return
                request = reader.request()
                if request is None:
                    break
                mode, delay_s = self._decide(request)
                if mode == "500":
                    client.sendall(_ERROR_500)
                    break
                if mode == "reset":
                    _reset(client)
                    return
                if mode == "delay":
                    time.sleep(delay_s)
                answer = self._forward(request)
                if answer is not None and mode == "500-after":
                    client.sendall(_ERROR_500)
                    break
                if answer is None or mode == "reset-after":
                    _reset(client)
                    return
                client.sendall(answer)
                break  # the upstream's answer said Connection: close
        except OSError:
            pass
        finally:
            client.close()

    def _forward(self, request: bytes) -> bytes | None:
        """Sends one request to the upstream on a new connection and returns its whole answer (None: no answer)."""
        try:
            with socket.create_connection((self.host, self.upstream_port), timeout=60) as up:
                up.sendall(request)
                chunks = []
                while True:
                    data = up.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
        except OSError:
            return None
        answer = b"".join(chunks)
        return answer or None


_ERROR_500 = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n"
              b"Content-Length: 0\r\nConnection: close\r\n\r\n")


def _reset(sock: socket.socket) -> None:
    """Closes with RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Reader:
    """Reads HTTP/1.1 requests off a client connection and rewrites each to close the upstream connection."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def _take_line(self) -> bytes | None:
        while b"\r\n" not in self.buf:
            if not self._fill():
                return None
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _take(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill():
                return None
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def request(self) -> bytes | None:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                return None
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = []
        length, chunked = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value.strip())
            elif key == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            if key in (b"connection", b"keep-alive", b"proxy-connection"):
                continue
            headers.append(line)
        if chunked:
            body = b""
            while True:
                size_line = self._take_line()
                if size_line is None:
                    return None
                size = int(size_line.split(b";")[0], 16)
                chunk = self._take(size + 2)
                if chunk is None:
                    return None
                body += chunk[:size]
                if size == 0:
                    while True:  # trailers
                        trailer = self._take_line()
                        if not trailer:
                            break
                    break
            headers = [h for h in headers if not h.lower().startswith(b"transfer-encoding")]
            headers.append(b"Content-Length: %d" % len(body))
        else:
            body = self._take(length) if length else b""
            if body is None:
                return None
        headers.append(b"Connection: close")
        return b"\r\n".join([lines[0], *headers]) + b"\r\n\r\n" + body
