"""The real analytics.js in a real browser: @segment/analytics-next, at the version tests/browser/package.json pins,
in Debian's headless Chromium driven by Playwright, on a page served from an origin other than the server's.

analytics.js loads its settings from the server (`cdnURL` pointing at it: no Segment account, no CDN), then sends
each call either the default way (one fetch per event to /v1/t, /v1/i, /v1/p, /v1/g, /v1/a, as text/plain with the
write key as the Basic user name) or batched (/v1/b). Every request crosses origins, and the Authorization header
makes each one preflighted, so CORS is enforced as a browser enforces it. What lands is read back with DuckDB.

Needs /usr/bin/chromium (Debian's `chromium`), the Python package `playwright` (it downloads no browser here:
never `playwright install`), and tests/browser's locked npm packages, which scripts/setup installs under
~/.cache/segment-delta/browser/<hash of tests/browser's package.json and package-lock.json>. Each test fails, and
says how to install it, when one is missing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from conftest import REPO, assert_row_matches, describe, duckdb_rows, read_discards
from faultproxy import FaultProxy

BROWSER_DIR = REPO / "tests" / "browser"
PINNED = json.loads((BROWSER_DIR / "package.json").read_text())["dependencies"]["@segment/analytics-next"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # Without these Chromium keeps reaching out to Google's services on its own.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # No host name resolves, so a request for anything but 127.0.0.1 fails at once, inside the browser, where the
    # test sees it (requests it records), instead of going out to the network.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]

WRITE_KEY = "browser-write-key"
SOURCES = f"{WRITE_KEY}=segment"
BASIC = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
DEADLINE_S = 60  # for rows to land
PAGE_TIMEOUT_MS = 30_000  # for anything in the page


# ---------------------------------------------------------------------------------------------------------------
# What the test needs installed


def browser_modules() -> Path:
    """tests/browser's node_modules as scripts/setup installs them: a directory per lock."""
    digest = hashlib.sha256((BROWSER_DIR / "package.json").read_bytes()
                            + (BROWSER_DIR / "package-lock.json").read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "segment-delta" / "browser" / digest / "node_modules"


@pytest.fixture(scope="module")
def analytics_js() -> Path:
    """The UMD build of the pinned @segment/analytics-next (it defines window.AnalyticsNext)."""
    package = browser_modules() / "@segment" / "analytics-next"
    try:
        version = json.loads((package / "package.json").read_text())["version"]
    except OSError:
        version = None
    bundle = package / "dist" / "umd" / "index.js"
    if version != PINNED or not bundle.is_file():
        pytest.fail(f"@segment/analytics-next {PINNED} is not installed at {package} (found {version}): run "
                    f"scripts/setup", pytrace=False)
    return bundle


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium, headless, driven by Playwright."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`, which "
                    f"scripts/setup does)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: pip install -r tests/e2e/requirements.txt (or run "
                    "scripts/setup)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# ---------------------------------------------------------------------------------------------------------------
# The page, on origins of its own


class PageServer:
    """tests/browser/page.html, page.js and analytics.js (as /analytics-next.js) on a free port of 127.0.0.1: an
    origin other than the server's. Nothing else is served."""

    def __init__(self, analytics_js: Path):
        files = {"/page.html": (BROWSER_DIR / "page.html", "text/html; charset=utf-8"),
                 "/page.js": (BROWSER_DIR / "page.js", "text/javascript; charset=utf-8"),
                 "/analytics-next.js": (analytics_js, "text/javascript; charset=utf-8")}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                found = files.get(urlsplit(self.path).path)
                if found is None:
                    self.send_error(404)
                    return
                body = found[0].read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", found[1])
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="page-server", daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def page_server(analytics_js):
    """The page's origin, the one a server of these tests allows."""
    server = PageServer(analytics_js)
    yield server
    server.close()


@pytest.fixture(scope="module")
def other_page_server(analytics_js):
    """The same page on another origin, one that SEGMENT_DELTA_CORS_ORIGINS leaves out."""
    server = PageServer(analytics_js)
    yield server
    server.close()


@dataclass
class Exchange:
    """One request the page made and what became of it."""
    method: str
    url: str
    headers: dict[str, str]
    body: str | None
    status: int | None  # None when the browser got no answer it would use
    failure: str | None
    response_headers: dict[str, str]

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    def json(self) -> dict:
        return json.loads(self.body)


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Tab:
    """The page in a fresh browser context (no cookies or storage of another test), recording every request it
    makes and its console."""

    def __init__(self, browser, page_server: PageServer, *, clock: bool = False):
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.page.set_default_timeout(PAGE_TIMEOUT_MS)
        self.requests = []
        self.console: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r))
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"page error: {e}"))
        if clock:
            self.page.clock.install()
        self.url = f"{page_server.origin}/page.html"
        self.origin = page_server.origin
        self.page.goto(self.url)
        self.page.wait_for_function("() => window.pageTest && window.AnalyticsNext")
        self.user_agent = self.page.evaluate("() => navigator.userAgent")

    def close(self) -> None:
        self.context.close()

    def __enter__(self) -> "Tab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # In the page --------------------------------------------------------------------------------------------

    def load(self, settings: dict, options: dict | None = None) -> dict:
        """AnalyticsBrowser.load(settings, options), once analytics.js is ready."""
        return self.page.evaluate("([s, o]) => pageTest.load(s, o)", [settings, options])

    def call(self, method: str, *args) -> dict:
        """An analytics.js call: {"event": the event it built, "failed": why its delivery failed, or None}."""
        return self.page.evaluate("([m, a]) => pageTest.call(m, a)", [method, list(args)])

    def calls(self, *calls: tuple) -> list[dict]:
        """Several analytics.js calls made at once (in one task), each resolved as `call` resolves."""
        return self.page.evaluate("(cs) => Promise.all(cs.map(([m, ...a]) => pageTest.call(m, a)))",
                                  [list(c) for c in calls])

    def fetch(self, url: str, init: dict, gzip: bool = False) -> dict:
        """The page's own fetch: {"status", "type", "text"}, or {"error"} when the browser refused."""
        return self.page.evaluate("([u, i, g]) => pageTest.fetch(u, i, g)", [url, init, gzip])

    # What it sent -------------------------------------------------------------------------------------------

    def exchanges(self, origin: str | None = None) -> list[Exchange]:
        """The requests so far (to `origin`, when given), in the order the page made them, each with its answer
        (waited for when still under way) or failure."""
        self.page.evaluate("() => 0")  # delivers the request events the browser has reported so far
        out = []
        for r in list(self.requests):
            if origin is not None and origin_of(r.url) != origin:
                continue
            response = r.response()
            out.append(Exchange(r.method, r.url, r.all_headers(), r.post_data,
                                response.status if response else None, r.failure,
                                response.all_headers() if response else {}))
        return out

    def foreign(self, *origins: str) -> list[str]:
        """The URLs of requests to anything but the page's origin and `origins`."""
        self.page.evaluate("() => 0")
        allowed = {self.origin, *origins}
        return [f"{r.method} {r.url}" for r in list(self.requests)
                if urlsplit(r.url).scheme in ("http", "https") and origin_of(r.url) not in allowed]

    def report(self) -> str:
        lines = ["requests:"]
        for x in self.exchanges():
            lines.append(f"  {x.method} {x.url} -> {x.status if x.failure is None else x.failure}")
        lines.append("console:")
        lines += [f"  {line}" for line in self.console]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The lake


def wait_for_rows(server, want: dict[str, set[str]]) -> dict[str, dict[str, dict]]:
    """Polls the lake until each table of `want` holds at least its ids, then reads those tables with DuckDB:
    table → id → row."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        missing, problem = {}, None
        tables = server.tables()
        for table, ids in want.items():
            have = set()
            if table in tables:
                try:
                    have = set(server.read(table).column("id").to_pylist())
                except Exception as e:  # a table whose first commit is still being written
                    problem = f"{table}: {e}"
            if ids - have:
                missing[table] = sorted(ids - have)
        if not missing:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"not in the lake after {DEADLINE_S}s: {missing} (tables: {sorted(tables)}"
                                 + (f"; last read error {problem}" if problem else "") + ")")
        time.sleep(0.1)
    out = {}
    for table in want:
        rows = duckdb_rows(server.lake / "segment" / table)
        out[table] = {r["id"]: r for r in rows}
        assert len(out[table]) == len(rows), f"{table}: an id twice"
    return out


def assert_nothing_else_lands(server, unwanted: str) -> None:
    """After requests that must not have been written: a track sent from here (no Origin) lands, and the tables
    then hold that event and nothing else. A request accepted before it would have landed with or before it."""
    sentinel = f"sentinel-{time.monotonic_ns()}"
    r = server.post("/v1/t", {"event": "Sentinel", "userId": "sentinel", "messageId": sentinel}, key=WRITE_KEY)
    assert r.status_code == 200, r.text
    rows = wait_for_rows(server, {"tracks": {sentinel}, "sentinel": {sentinel}})
    assert server.tables() == {"tracks", "sentinel"}, f"{unwanted}: tables {sorted(server.tables())}"
    assert set(rows["tracks"]) == {sentinel}, f"{unwanted} landed: {sorted(rows['tracks'])}"


# ---------------------------------------------------------------------------------------------------------------
# The checks common to every event analytics.js sent


def check_browser_columns(row: dict, tab: Tab, where: str) -> None:
    """The columns analytics.js fills from the browser, spelled out."""
    checks = {
        "context_page_url": (row.get("context_page_url"), tab.url),
        "context_page_path": (row.get("context_page_path"), "/page.html"),
        "context_page_title": (row.get("context_page_title"), "segment-delta browser test"),
        "context_user_agent": (row.get("context_user_agent"), tab.user_agent),
        "context_library_name": (row.get("context_library_name"), "analytics.js"),
        "context_library_version": (row.get("context_library_version"), f"next-{PINNED}"),
    }
    wrong = {c: got for c, (got, want) in checks.items() if got != want}
    assert not wrong, f"{where}: {wrong} (wanted {({c: want for c, (_, want) in checks.items()})})"
    assert isinstance(row["anonymous_id"], str) and row["anonymous_id"], where


def check_no_discards(server, tables: set[str]) -> None:
    """Nothing but `tables`: what analytics.js sends is stored whole. (It copies a page's name and category into
    its properties, with the same values as the event's own.)"""
    discards = read_discards(server.lake)
    assert not discards, f"discards for what analytics.js sent:\n{describe(discards)}"
    assert server.tables() == tables


def check_event_posts(posts: list[Exchange], tab: Tab) -> None:
    """Each answered 200, carried the write key in its body and as the Basic user name, and came back with
    Access-Control-Allow-Origin for the page (the browser would have refused the answer otherwise)."""
    for x in posts:
        where = f"{x.method} {x.path}\n{tab.report()}"
        assert x.failure is None and x.status == 200, where
        assert x.headers.get("content-type") == "text/plain", where
        assert x.headers.get("authorization") == BASIC, where
        assert x.json()["writeKey"] == WRITE_KEY, where
        assert x.response_headers.get("access-control-allow-origin") in (tab.origin, "*"), where


# ---------------------------------------------------------------------------------------------------------------
# The tests


def test_settings_the_client_loads(start_server):
    """What AnalyticsBrowser.load fetches from `${cdnURL}/v1/projects/${writeKey}/settings`: the Segment.io
    integration pointing back at the server (analytics.js posts to `${protocol}://${apiHost}/<t|i|p|s|g|a>`, or
    `/b` when batching), and nothing that would make it load code from elsewhere or report to Segment."""
    server = start_server(SEGMENT_DELTA_SOURCES=SOURCES)
    origin = "https://shop.example"
    r = requests.get(f"{server.url}/v1/projects/{WRITE_KEY}/settings", headers={"Origin": origin}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers.get("Access-Control-Allow-Origin") in (origin, "*"), r.headers
    settings = r.json()
    assert list(settings["integrations"]) == ["Segment.io"], "another integration makes analytics.js load " \
        "device-mode code (the ajs-destination bundle) from the CDN"
    segment = settings["integrations"]["Segment.io"]
    assert segment["apiKey"] == WRITE_KEY, "analytics.js sends the settings' apiKey as the events' writeKey"
    assert segment["apiHost"] == f"127.0.0.1:{server.port}/v1", segment
    assert segment.get("protocol") == "http", segment
    assert not settings.get("remotePlugins"), settings
    assert not any((settings.get("enabledMiddleware") or {}).values()), settings
    assert not (settings.get("middlewareSettings") or {}).get("routingRules"), settings
    assert not settings.get("legacyVideoPluginsEnabled"), settings
    assert (settings.get("metrics") or {}).get("sampleRate") == 0, \
        "else analytics.js posts usage metrics to https://api.segment.io/v1/m every 30 seconds"

    unknown = requests.get(f"{server.url}/v1/projects/not-a-source/settings", timeout=30)
    assert unknown.status_code == 404, unknown.text

    public = start_server(SEGMENT_DELTA_SOURCES=SOURCES, SEGMENT_DELTA_PUBLIC_URL="https://collect.example.com")
    segment = public.get(f"/v1/projects/{WRITE_KEY}/settings").json()["integrations"]["Segment.io"]
    assert (segment["apiHost"], segment.get("protocol")) == ("collect.example.com/v1", "https"), segment


def test_default_delivery(start_server, chromium, page_server):
    """AnalyticsBrowser.load with cdnURL at the server, then one call of each kind: each is one POST to its own
    path, and each lands as Segment's warehouse schema has it."""
    server = start_server(SEGMENT_DELTA_SOURCES=SOURCES)
    with Tab(chromium, page_server) as tab:
        loaded = tab.load({"writeKey": WRITE_KEY, "cdnURL": server.url})
        assert loaded["version"] == PINNED
        results = [
            # While still anonymous: the anonymous id becomes the previous id. (Once a user is identified,
            # analytics.js sends that user's id as an alias's userId, whatever the call says.)
            tab.call("alias", "browser-user-1"),
            tab.call("identify", "browser-user-1", {"email": "ada@example.com", "plan": "pro", "logins": 3,
                                                    "vip": True, "address": {"city": "Berlin"}}),
            tab.call("track", "Browser Checkout", {"revenue": 12.5, "items": 3, "coupon": "SPRING",
                                                   "firstOrder": True}),
            tab.call("page", "Docs", "Install", {"section": "setup"}),
            tab.call("group", "acme-browser", {"name": "Acme", "employees": 12}),
            tab.call("screen", "Onboarding", "Welcome", {"variant": "b"}),
        ]
        assert [r["failed"] for r in results] == [None] * 6, tab.report()
        sent = tab.exchanges(server.url)
        assert [(x.method, x.path) for x in sent] == [
            ("GET", f"/v1/projects/{WRITE_KEY}/settings"), ("POST", "/v1/a"), ("POST", "/v1/i"),
            ("POST", "/v1/t"), ("POST", "/v1/p"), ("POST", "/v1/g"), ("POST", "/v1/s")], tab.report()
        assert sent[0].status == 200, tab.report()
        check_event_posts(sent[1:], tab)
        assert not tab.foreign(server.url), tab.report()

    events = {x.json()["messageId"]: x.json() for x in sent[1:]}
    ids = [r["event"]["messageId"] for r in results]
    assert list(events) == ids
    alias, identify, track, page, group, screen = ids
    rows = wait_for_rows(server, {"identifies": {identify}, "tracks": {track}, "browser_checkout": {track},
                                  "pages": {page}, "groups": {group}, "aliases": {alias}, "screens": {screen}})
    for table, by_id in rows.items():
        assert len(by_id) == 1, f"{table}: {sorted(by_id)}"
        for message_id, row in by_id.items():
            assert_row_matches(row, events[message_id], table)
            check_browser_columns(row, tab, f"{table} row {message_id}")

    row = rows["identifies"][identify]
    assert (row["user_id"], row["email"], row["plan"], row["logins"], row["vip"], row["address_city"]) == (
        "browser-user-1", "ada@example.com", "pro", 3, True, "Berlin")
    row = rows["browser_checkout"][track]
    assert (row["user_id"], row["event"], row["event_text"], row["revenue"], row["items"], row["coupon"],
            row["first_order"]) == ("browser-user-1", "browser_checkout", "Browser Checkout", 12.5, 3, "SPRING", True)
    assert rows["tracks"][track]["event"] == "browser_checkout"
    row = rows["pages"][page]
    assert (row["name"], row["category"], row["section"], row["url"], row["path"]) == (
        "Install", "Docs", "setup", tab.url, "/page.html")
    row = rows["groups"][group]
    assert (row["group_id"], row["name"], row["employees"]) == ("acme-browser", "Acme", 12)
    row = rows["screens"][screen]
    assert (row["name"], row["category"], row["variant"]) == ("Welcome", "Onboarding", "b")
    row = rows["aliases"][alias]
    assert (row["user_id"], row["previous_id"]) == ("browser-user-1", row["anonymous_id"])
    # The anonymous id analytics.js keeps in the browser is the same on every event.
    assert len({by_id[i]["anonymous_id"] for by_id in rows.values() for i in by_id}) == 1
    check_no_discards(server, set(rows))


def test_batching_delivery(start_server, chromium, page_server):
    """The batching delivery strategy: events go to /v1/b, several to a request: the first three together when
    the third fills the batch, the fourth alone when the batch timeout passes."""
    server = start_server(SEGMENT_DELTA_SOURCES=SOURCES)
    batching = {"strategy": "batching", "config": {"size": 3, "timeout": 3000}}
    with Tab(chromium, page_server) as tab:
        tab.load({"writeKey": WRITE_KEY, "cdnURL": server.url},
                 {"integrations": {"Segment.io": {"deliveryStrategy": batching}}})
        results = tab.calls(("identify", "batch-user", {"plan": "team"}),
                            ("track", "Batch Started", {"step": 1}),
                            ("page", "Batch page"))
        results.append(tab.call("track", "Batch Finished", {"step": 2, "ok": True}))
        assert [r["failed"] for r in results] == [None] * 4, tab.report()
        ids = [r["event"]["messageId"] for r in results]
        identify, started, page, finished = ids
        rows = wait_for_rows(server, {"identifies": {identify}, "tracks": {started, finished},
                                      "batch_started": {started}, "pages": {page}, "batch_finished": {finished}})
        sent = tab.exchanges(server.url)
        assert [(x.method, x.path) for x in sent] == [
            ("GET", f"/v1/projects/{WRITE_KEY}/settings"), ("POST", "/v1/b"), ("POST", "/v1/b")], tab.report()
        check_event_posts(sent[1:], tab)
        assert not tab.foreign(server.url), tab.report()

    batches = [x.json() for x in sent[1:]]
    assert [[e["messageId"] for e in b["batch"]] for b in batches] == [[identify, started, page], [finished]]
    events = {}
    for body in batches:
        for event in body["batch"]:
            assert "sentAt" not in event, "analytics.js sends one sentAt per batch"
            events[event["messageId"]] = {**event, "sentAt": body["sentAt"]}  # the batch's, for each event
    for table, by_id in rows.items():
        for message_id, row in by_id.items():
            assert_row_matches(row, events[message_id], table)
            check_browser_columns(row, tab, f"{table} row {message_id}")
    assert rows["identifies"][identify]["plan"] == "team"
    assert rows["batch_finished"][finished]["ok"] is True
    assert rows["pages"][page]["name"] == "Batch page"
    check_no_discards(server, set(rows))


def test_preflighted_requests_from_an_allowed_origin(start_server, chromium, page_server):
    """With SEGMENT_DELTA_CORS_ORIGINS naming the page's origin: the preflight grants what the browser asks for,
    and the page's own requests, with JSON and with a gzip body, go through, as does analytics.js itself."""
    server = start_server(SEGMENT_DELTA_SOURCES=SOURCES,
                          SEGMENT_DELTA_CORS_ORIGINS=f"https://shop.example,{page_server.origin}")
    asked = ["authorization", "content-type", "content-encoding"]
    preflight = server.request("OPTIONS", "/v1/t", headers={
        "Origin": page_server.origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": ",".join(asked)})
    assert preflight.status_code == 204, preflight.text
    h = preflight.headers
    assert h.get("Access-Control-Allow-Origin") == page_server.origin, h
    assert "POST" in {m.strip().upper() for m in h.get("Access-Control-Allow-Methods", "").split(",")}, h
    allowed = {a.strip().lower() for a in h.get("Access-Control-Allow-Headers", "").split(",")}
    assert not set(asked) - allowed, (f"not granted: {sorted(set(asked) - allowed)}", h)
    assert int(h.get("Access-Control-Max-Age", "0")) > 0, h

    with Tab(chromium, page_server) as tab:
        tab.load({"writeKey": WRITE_KEY, "cdnURL": server.url})
        tracked = tab.call("track", "Allowed Origin", {"via": "analytics.js"})
        assert tracked["failed"] is None, tab.report()

        json_event = {"type": "track", "event": "Allowed Origin", "userId": "page-user",
                      "messageId": "page-json", "properties": {"via": "json"}}
        answer = tab.fetch(f"{server.url}/v1/t", {"method": "POST", "body": json.dumps(json_event), "headers": {
            "Content-Type": "application/json", "Authorization": BASIC}})
        assert answer.get("status") == 200, (answer, tab.report())
        assert json.loads(answer["text"]) == {"success": True}, answer

        gzip_batch = {"writeKey": WRITE_KEY, "batch": [{"type": "track", "event": "Allowed Origin",
                                                        "anonymousId": "page-anon", "messageId": "page-gzip",
                                                        "properties": {"via": "gzip"}}]}
        answer = tab.fetch(f"{server.url}/v1/b", {"method": "POST", "body": json.dumps(gzip_batch), "headers": {
            "Content-Type": "application/json", "Content-Encoding": "gzip"}}, gzip=True)
        assert answer.get("status") == 200, (answer, tab.report())
        sent = tab.exchanges(server.url)
        assert [(x.method, x.path) for x in sent] == [
            ("GET", f"/v1/projects/{WRITE_KEY}/settings"), ("POST", "/v1/t"), ("POST", "/v1/t"), ("POST", "/v1/b")], \
            tab.report()
        assert [x.response_headers.get("access-control-allow-origin") for x in sent] == [page_server.origin] * 4, \
            "the allowed origin echoed, not *, when SEGMENT_DELTA_CORS_ORIGINS lists origins"
        assert sent[2].headers.get("content-type") == "application/json"
        assert sent[3].headers.get("content-encoding") == "gzip"
        assert not tab.foreign(server.url), tab.report()

    ids = {tracked["event"]["messageId"], "page-json", "page-gzip"}
    rows = wait_for_rows(server, {"tracks": ids, "allowed_origin": ids})
    assert {r["id"]: r["via"] for r in rows["allowed_origin"].values()} == {
        tracked["event"]["messageId"]: "analytics.js", "page-json": "json", "page-gzip": "gzip"}
    assert not {"discards"} & server.tables()


def test_a_retry_gets_through(start_server, chromium, page_server):
    """analytics.js sends an event again when its request failed, with an X-Retry-Count header: the retry's
    preflight asks for that header, so unless the server allows it every retry is refused and the event lost.
    Here the server sits behind a proxy that fails the second POST (a 500 of its own)."""
    server = start_server(SEGMENT_DELTA_SOURCES=SOURCES)
    preflight = server.request("OPTIONS", "/v1/t", headers={
        "Origin": page_server.origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-retry-count"})
    allowed = {a.strip().lower() for a in preflight.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert "x-retry-count" in allowed, ("X-Retry-Count is not in Access-Control-Allow-Headers", preflight.headers)

    proxy = FaultProxy(server.port).start()
    try:
        proxy.set("500", every=2, only=("POST ",))  # the second POST, and only it of the three
        with Tab(chromium, page_server) as tab:
            # Through the proxy: the settings point analytics.js back at it (the Host it was asked under).
            tab.load({"writeKey": WRITE_KEY, "cdnURL": proxy.url})
            first = tab.call("track", "Retry Check", {"attempt": "first"})
            with tab.page.expect_request(lambda r: r.method == "POST" and "x-retry-count" in r.headers,
                                         timeout=PAGE_TIMEOUT_MS) as retry:
                second = tab.call("track", "Retry Check", {"attempt": "second"})
            response = retry.value.response()  # once answered, or None when the browser refused it
            assert response is not None and response.status == 200, tab.report()
            posts = [x for x in tab.exchanges(proxy.url) if x.method == "POST"]
            # The proxy's 500 carries no CORS header: to the page, a network error.
            assert [(x.status, x.headers.get("x-retry-count")) for x in posts] == [
                (200, None), (None, None), (200, "1")], tab.report()
    finally:
        proxy.stop()
    ids = {first["event"]["messageId"], second["event"]["messageId"]}
    rows = wait_for_rows(server, {"tracks": ids, "retry_check": ids})
    assert sorted(r["attempt"] for r in rows["retry_check"].values()) == ["first", "second"]


def test_other_origin_is_refused(start_server, chromium, page_server, other_page_server):
    """From an origin SEGMENT_DELTA_CORS_ORIGINS leaves out, the browser refuses: analytics.js cannot load its
    settings, its events (preflighted: they carry Authorization) are never sent, and neither is the page's own
    JSON request. Nothing lands."""
    server = start_server(SEGMENT_DELTA_SOURCES=SOURCES, SEGMENT_DELTA_CORS_ORIGINS=page_server.origin)
    preflight = server.request("OPTIONS", "/v1/t", headers={
        "Origin": other_page_server.origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.headers.get("Access-Control-Allow-Origin") in (None, ""), preflight.headers
    settings = server.get(f"/v1/projects/{WRITE_KEY}/settings").json()

    with Tab(chromium, other_page_server) as tab:
        from playwright.sync_api import Error as PlaywrightError

        with pytest.raises(PlaywrightError, match="Failed to fetch"):
            tab.load({"writeKey": WRITE_KEY, "cdnURL": server.url})
        sent = tab.exchanges(server.url)
        assert [(x.method, x.path) for x in sent] == [("GET", f"/v1/projects/{WRITE_KEY}/settings")], tab.report()
        assert sent[0].failure is not None, f"the settings reached the page\n{tab.report()}"

        # With the settings handed over, analytics.js tries: the preflight is refused, the POST never sent.
        tab.load({"writeKey": WRITE_KEY, "cdnSettings": settings})
        tab.call("track", "Refused Origin", {"via": "analytics.js"})
        posts = [x for x in tab.exchanges(server.url) if x.method == "POST"]  # the first try, maybe retries
        assert posts and all(x.path == "/v1/t" and x.failure is not None for x in posts), tab.report()

        answer = tab.fetch(f"{server.url}/v1/t", {"method": "POST", "headers": {
            "Content-Type": "application/json", "Authorization": BASIC}, "body": json.dumps({
                "type": "track", "event": "Refused Origin", "userId": "u", "messageId": "refused-json"})})
        assert "error" in answer, answer
        assert not tab.foreign(server.url), tab.report()
    assert_nothing_else_lands(server, "a request from an origin not allowed")


def test_other_origin_simple_request_does_not_land(start_server, chromium, page_server, other_page_server):
    """A request a browser sends without a preflight (text/plain, no Authorization: the write key in the body)
    reaches the server whatever its Origin; the browser only hides the answer from the page. So it is the server
    that must refuse an origin SEGMENT_DELTA_CORS_ORIGINS leaves out, or the event lands."""
    server = start_server(SEGMENT_DELTA_SOURCES=SOURCES, SEGMENT_DELTA_CORS_ORIGINS=page_server.origin)
    with Tab(chromium, other_page_server) as tab:
        event = {"type": "track", "event": "Refused Origin", "userId": "u", "messageId": "refused-simple",
                 "writeKey": WRITE_KEY}
        answer = tab.fetch(f"{server.url}/v1/t", {"method": "POST", "mode": "no-cors",
                                                  "headers": {"Content-Type": "text/plain"}, "body": json.dumps(event)})
        assert answer.get("type") == "opaque", answer  # sent, and answered; the page may not read the answer
        sent = tab.exchanges(server.url)
        assert [(x.method, x.path) for x in sent] == [("POST", "/v1/t")], tab.report()
    assert_nothing_else_lands(server, "a simple POST from an origin not in SEGMENT_DELTA_CORS_ORIGINS")


def test_the_page_talks_to_nobody_else(start_server, chromium, page_server):
    """Past analytics.js's 30-second metrics timer (the page's clock run forward), the page has still only talked
    to its own origin and the server: analytics.js posts its usage metrics to `https://${metrics.host}/m`,
    api.segment.io/v1 unless the settings say otherwise, as long as `metrics.sampleRate` is above 0."""
    server = start_server(SEGMENT_DELTA_SOURCES=SOURCES)
    with Tab(chromium, page_server, clock=True) as tab:
        tab.load({"writeKey": WRITE_KEY, "cdnURL": server.url})
        tracked = tab.call("track", "Clock Run", {"n": 1})
        assert tracked["failed"] is None, tab.report()
        tab.page.clock.run_for("00:31")
        # Any request the timers made is under way by now; one more of the page's own comes after it.
        assert tab.fetch(f"{tab.origin}/page.js", {})["status"] == 200
        assert not tab.foreign(server.url), (
            "the page reached beyond the page's origin and the server; for analytics.js's metrics the settings "
            f"need \"metrics\": {{\"sampleRate\": 0}}\n{tab.report()}")
    wait_for_rows(server, {"clock_run": {tracked["event"]["messageId"]}})
