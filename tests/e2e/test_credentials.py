"""The storage credential the settings choose is the only one the server uses.

Azurite runs in OAuth mode over HTTPS (a certificate made here with the openssl CLI, which the server trusts through
SSL_CERT_FILE), so it takes both its well-known account key and bearer tokens. A fake Functions/App Service
managed-identity endpoint (IDENTITY_ENDPOINT/IDENTITY_HEADER) hands out tokens that Azurite's `basic` OAuth check
accepts or, for the negative cases, tokens it refuses.

Every server gets a stray, working AZURE_STORAGE_ACCOUNT_KEY (and its aliases) and a stray client secret in its
environment. With the managed identity chosen — by name or because IDENTITY_ENDPOINT is set — the rows arrive
through tokens from the fake endpoint; when the endpoint's token is refused or the endpoint fails, the request fails
and nothing is written, although the stray key would have worked (a control run naming `account-key` shows it
does). `segment-delta check` reports the same credential and the same outcome.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.storage.blob import BlobServiceClient

from conftest import (AZURITE_ACCOUNT, AZURITE_KEY, AZURITES, Azurite, AzuriteLake, azurite_blob_bin, binary,
                      clean_env, tail)

KEY = "cred-key"  # the source's write key
IDENTITY_SECRET = "x-identity-" + uuid.uuid4().hex  # what the platform puts in IDENTITY_HEADER
USER_ASSIGNED_CLIENT_ID = "5f0c6e1a-2d4b-4c8e-9a7f-3b1d2e4f6a80"
STORAGE_RESOURCE = "https://storage.azure.com"
STEP_TIMEOUT_S = 60
CHECK_TIMEOUT_S = 240


def whole_log(server) -> str:
    """Everything the server logged (`stderr()` is its tail): a secret must appear nowhere in it."""
    return Path(server.stderr_path).read_text(errors="replace")


def strays() -> dict[str, str]:
    """Credentials lying around in the server's environment that the settings do not choose. The account key is
    Azurite's real one: if anything picked it up, writes would succeed."""
    return {
        "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
        "AZURE_STORAGE_ACCESS_KEY": AZURITE_KEY,
        "AZURE_STORAGE_MASTER_KEY": AZURITE_KEY,
        "AZURE_CLIENT_SECRET": "stray-client-secret",
        "AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    }


# ---------------------------------------------------------------------------------------------------------------
# A certificate for Azurite's HTTPS endpoint


@dataclass
class Tls:
    ca: Path  # the certificate authority, what clients trust (SSL_CERT_FILE)
    cert: Path  # Azurite's certificate for IP 127.0.0.1, signed by the CA
    key: Path


def openssl() -> str:
    path = shutil.which("openssl") or ("/usr/bin/openssl" if Path("/usr/bin/openssl").is_file() else None)
    if path is None:
        pytest.fail("openssl not found: the HTTPS tests need the openssl CLI to make a certificate", pytrace=False)
    return path


def make_tls(directory: Path) -> Tls:
    """A CA and a server certificate it signed with subjectAltName IP:127.0.0.1 (rustls refuses a CA certificate
    presented as the server's own, so the two are kept apart)."""
    exe = openssl()
    (directory / "ca.cnf").write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n"
        "[dn]\nCN = segment-delta e2e test CA\n"
        "[v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier = hash\n")
    (directory / "leaf.cnf").write_text(
        "[leaf]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n")
    tls = Tls(ca=directory / "ca.pem", cert=directory / "cert.pem", key=directory / "key.pem")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        [exe, "req", "-x509", *ec, "-keyout", str(directory / "ca.key"), "-out", str(tls.ca), "-days", "2",
         "-config", str(directory / "ca.cnf")],
        [exe, "req", "-new", *ec, "-keyout", str(tls.key), "-out", str(directory / "leaf.csr"),
         "-subj", "/CN=127.0.0.1"],
        [exe, "x509", "-req", "-in", str(directory / "leaf.csr"), "-CA", str(tls.ca), "-CAkey",
         str(directory / "ca.key"), "-set_serial", str(int(time.time())), "-days", "2", "-out", str(tls.cert),
         "-extfile", str(directory / "leaf.cnf"), "-extensions", "leaf"],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr}"
    return tls


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))


# ---------------------------------------------------------------------------------------------------------------
# Azurite with OAuth over HTTPS


class OAuthAzurite(Azurite):
    """`azurite-blob --oauth basic` over HTTPS: shared keys and bearer tokens are both accepted (a token's claims
    are checked, not its signature)."""

    def __init__(self, workdir: Path, tls: Tls):
        super().__init__(workdir)
        self.tls = tls

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> "OAuthAzurite":
        for _attempt in range(3):
            self.port = free_tcp_port()
            cmd = [str(azurite_blob_bin()), "--oauth", "basic", "--cert", str(self.tls.cert), "--key",
                   str(self.tls.key), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                   "--location", str(self.workdir / "data"), "--silent", "--skipApiVersionCheck"]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            if self._wait_until_up():
                self.service = BlobServiceClient(
                    self.blob_endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY},
                    connection_verify=str(self.tls.ca))
                self._wait_until_serving()
                AZURITES.append(self)
                return self
            if "EADDRINUSE" not in tail(self.log_path):
                break
        raise AssertionError(f"azurite-blob (OAuth, HTTPS) did not come up (exit {self.proc.poll()}):\n"
                             f"{tail(self.log_path)}")

    def _wait_until_serving(self) -> None:
        """The port accepts connections a moment before the HTTPS service answers; wait for an answer."""
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while True:
            try:
                self.service.get_service_properties()
                return
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.1)

    def new_lake(self, hint: str, prefix: str = "lake") -> "HttpsLake":
        lake = super().new_lake(hint, prefix)
        return HttpsLake(self, lake.container, lake.prefix)


class HttpsLake(AzuriteLake):
    """A lake in its own container of the HTTPS Azurite. The server reaches it as an ADLS Gen2 lake at another
    endpoint (SEGMENT_DELTA_STORAGE_ENDPOINT), never in emulator mode; the test reads it back with the account
    key, as an independent reader."""

    azurite: OAuthAzurite

    @property
    def abfss(self) -> str:
        return f"abfss://{self.container}@{AZURITE_ACCOUNT}.dfs.core.windows.net/{self.prefix}"

    def server_env(self) -> dict[str, str]:
        return {"SEGMENT_DELTA_LAKE": self.abfss, "SEGMENT_DELTA_STORAGE_ENDPOINT": self.azurite.blob_endpoint,
                "SSL_CERT_FILE": str(self.azurite.tls.ca)}

    @property
    def storage_options(self) -> dict[str, str]:
        # The reader's own HTTPS client: deltalake's wheel may not read SSL_CERT_FILE, and what is checked here is
        # the content, not the certificate.
        return {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY,
                "azure_storage_endpoint": self.azurite.blob_endpoint, "allow_invalid_certificates": "true"}

    def all_blobs(self) -> list[str]:
        """Every blob of the container, lake or not."""
        return [b.name for b in self.azurite.service.get_container_client(self.container).list_blobs()]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def oauth_azurite(tls, tmp_path_factory) -> OAuthAzurite:
    path = azurite_blob_bin()
    if not (path.is_file() and path.stat().st_mode & 0o111):
        pytest.fail(f"azurite-blob not found at {path}: install it with `npm install --prefix "
                    f"\"$HOME/.cache/segment-delta/node\" azurite@3` or set AZURITE_BLOB_BIN", pytrace=False)
    azurite = OAuthAzurite(tmp_path_factory.mktemp("azurite-oauth"), tls).start()
    yield azurite
    azurite.stop()


@pytest.fixture
def lake(oauth_azurite, request) -> HttpsLake:
    return oauth_azurite.new_lake(request.node.name)


# ---------------------------------------------------------------------------------------------------------------
# A fake managed-identity endpoint (the App Service / Functions protocol, api-version 2019-08-01)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: dict) -> str:
    """A JWT with these claims and a signature nobody checks (Azurite's `basic` OAuth level does not)."""
    header = {"alg": "RS256", "typ": "JWT", "kid": "segment-delta-e2e"}
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()),
                     b64url(b"not-a-real-signature")])


def storage_token(audience: str = STORAGE_RESOURCE, lifetime_s: int = 3600) -> tuple[str, int]:
    """A token for Azure Storage as Entra ID issues them, and its expiry (Unix seconds)."""
    now = int(time.time())
    tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    claims = {"aud": audience, "iss": f"https://sts.windows.net/{tenant}/", "iat": now - 60, "nbf": now - 60,
              "exp": now + lifetime_s, "oid": str(uuid.uuid4()), "sub": "function-app-identity", "tid": tenant,
              "ver": "1.0"}
    return jwt(claims), now + lifetime_s


@dataclass
class IdentityCall:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int


@dataclass
class FakeIdentity:
    """A token endpoint as the Functions host serves one at IDENTITY_ENDPOINT. `mode`:

    - "ok": a storage token Azurite accepts;
    - "wrong-audience": a well-formed token for another resource (Azurite refuses it: 403);
    - "no-identity": HTTP 400, as the platform answers when the app has no such identity;
    - "error": HTTP 500, as when the platform cannot get a token for now (object_store retries it).

    A request without the right `x-identity-header` gets 401 and no token.
    """

    secret: str
    mode: str = "ok"
    calls: list[IdentityCall] = field(default_factory=list)

    def __post_init__(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                status, body = fake.answer(url.path, query, self.headers)
                fake.calls.append(IdentityCall(url.path, query, {k.lower(): v for k, v in self.headers.items()},
                                               status))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-identity", daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/msi/token"

    def answer(self, path, query, headers) -> tuple[int, dict]:
        if path != "/msi/token":
            return 404, {"error": "not_found"}
        if headers.get("x-identity-header") != self.secret:
            return 401, {"error": "invalid_request", "error_description": "x-identity-header missing or wrong"}
        if query.get("api-version") != ["2019-08-01"] or query.get("resource", [""])[0].rstrip("/") != STORAGE_RESOURCE:
            return 400, {"error": "invalid_request", "error_description": f"unexpected query {query}"}
        if self.mode == "no-identity":
            return 400, {"error": "invalid_request", "error_description": "Identity not found"}
        if self.mode == "error":
            return 500, {"error": "unknown_error", "error_description": "the identity is not available"}
        audience = STORAGE_RESOURCE if self.mode == "ok" else "https://management.azure.com/"
        token, expires_on = storage_token(audience)
        body = {"access_token": token, "expires_on": str(expires_on), "resource": query["resource"][0],
                "token_type": "Bearer"}
        if "client_id" in query:
            body["client_id"] = query["client_id"][0]
        return 200, body

    def granted(self) -> list[IdentityCall]:
        return [c for c in self.calls if c.status == 200]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def identity():
    fake = FakeIdentity(IDENTITY_SECRET)
    yield fake
    fake.close()


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def managed_identity_env(lake: HttpsLake, identity: FakeIdentity, **extra: str) -> dict[str, str]:
    """What a Function App with a managed identity has, plus the strays."""
    return {**lake.server_env(), "SEGMENT_DELTA_SOURCES": f"{KEY}=web", "IDENTITY_ENDPOINT": identity.endpoint,
            "IDENTITY_HEADER": identity.secret, **strays(), **extra}


def events(tag: str, n: int = 3) -> list[dict]:
    return [{"type": "track", "userId": f"{tag}-user", "event": "Credential Checked", "messageId": f"{tag}-{i}",
             "properties": {"i": i}} for i in range(n)]


def started_line(server) -> str:
    lines = [l for l in server.stderr().splitlines() if "serving the Segment Tracking API" in l]
    assert lines, server.stderr()
    return lines[0]


def run_check(workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`segment-delta check` with the server's settings (and the same strays)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([str(binary()), "check"], env=clean_env({"SEGMENT_DELTA_LOG_FORMAT": "text",
                                                                   "NO_COLOR": "1", **env}),
                          cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=CHECK_TIMEOUT_S)


def assert_identity_calls(identity: FakeIdentity, client_id: str | None) -> None:
    """Each token request followed the protocol: the platform's secret header, the storage resource, the
    user-assigned identity's client id when one is configured."""
    assert identity.calls, "the managed-identity endpoint was never called"
    for call in identity.calls:
        assert call.path == "/msi/token"
        assert call.headers.get("x-identity-header") == IDENTITY_SECRET
        assert call.query["api-version"] == ["2019-08-01"]
        assert call.query["resource"][0].rstrip("/") == STORAGE_RESOURCE
        assert call.query.get("client_id") == ([client_id] if client_id else None), call.query
        # No other credential rides along to the token endpoint.
        assert "authorization" not in call.headers


def assert_rows(lake: HttpsLake, tag: str, n: int) -> None:
    assert lake.tables("web") == {"tracks", "credential_checked"}
    names = lake.blob_names("web/credential_checked")
    assert "web/credential_checked/_delta_log/00000000000000000000.json" in names, names
    assert any(name.endswith(".parquet") for name in names), names
    rows = sorted(lake.read("credential_checked", "web").to_pylist(), key=lambda r: r["i"])
    assert [(r["id"], r["user_id"], r["i"]) for r in rows] == [(f"{tag}-{i}", f"{tag}-user", i) for i in range(n)]
    assert sorted(lake.read("tracks", "web").column("id").to_pylist()) == sorted(f"{tag}-{i}" for i in range(n))


def assert_nothing_written(lake: HttpsLake) -> None:
    assert lake.all_blobs() == [], f"blobs written although the chosen credential was refused: {lake.all_blobs()}"


# ---------------------------------------------------------------------------------------------------------------
# The tests


def test_managed_identity_named_is_the_credential_used(lake, identity, start_server, tmp_path):
    """SEGMENT_DELTA_STORAGE_CREDENTIAL=managed-identity on an abfss:// lake: the rows arrive with tokens from the
    identity endpoint; the stray account key and client secret change nothing."""
    env = managed_identity_env(lake, identity, SEGMENT_DELTA_STORAGE_CREDENTIAL="managed-identity")
    server = start_server(lake, **env)
    line = started_line(server)
    assert "credential=managed identity (system-assigned)" in line, line
    assert AZURITE_KEY not in whole_log(server) and "stray-client-secret" not in whole_log(server)

    r = server.post("/v1/batch", {"batch": events("named")}, key=KEY)
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}
    assert_rows(lake, "named", 3)
    assert identity.granted(), identity.calls
    assert_identity_calls(identity, client_id=None)

    ready = server.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["components"]["lake"]["ok"] is True

    done = run_check(tmp_path / "check", env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "storage credential in effect: managed identity (system-assigned)" in done.stdout, done.stdout
    assert "[pass] lake writable: wrote and deleted a probe object with the managed identity (system-assigned) " \
           "credential" in done.stdout, done.stdout
    assert AZURITE_KEY not in done.stdout + done.stderr


def test_managed_identity_chosen_by_identity_endpoint(lake, identity, start_server, tmp_path):
    """No SEGMENT_DELTA_STORAGE_CREDENTIAL: IDENTITY_ENDPOINT makes it the managed identity, ahead of the client
    secret the environment also offers; AZURE_CLIENT_ID selects the user-assigned identity. The lake is given as
    az://container/prefix with the account in AZURE_STORAGE_ACCOUNT_NAME."""
    env = managed_identity_env(lake, identity, SEGMENT_DELTA_LAKE=lake.uri, AZURE_STORAGE_ACCOUNT_NAME=AZURITE_ACCOUNT,
                               AZURE_CLIENT_ID=USER_ASSIGNED_CLIENT_ID)
    server = start_server(lake, **env)
    line = started_line(server)
    assert f"credential=managed identity (user-assigned, client id {USER_ASSIGNED_CLIENT_ID})" in line, line

    r = server.post("/v1/batch", {"batch": events("implicit", 4)}, key=KEY)
    assert r.status_code == 200, r.text
    assert_rows(lake, "implicit", 4)
    assert identity.granted(), identity.calls
    assert_identity_calls(identity, client_id=USER_ASSIGNED_CLIENT_ID)

    done = run_check(tmp_path / "check", env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (f"storage credential in effect: managed identity (user-assigned, client id {USER_ASSIGNED_CLIENT_ID})"
            in done.stdout), done.stdout
    assert "[pass] lake writable" in done.stdout, done.stdout


def test_the_stray_key_would_work(lake, start_server):
    """The control for the refusals below: the same stray key, named as the credential, writes to the same
    Azurite over the same endpoint. It is the choice, not the key, that keeps it out."""
    env = {**lake.server_env(), "SEGMENT_DELTA_SOURCES": f"{KEY}=web", **strays(),
           "SEGMENT_DELTA_STORAGE_CREDENTIAL": "account-key", "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT}
    server = start_server(lake, **env)
    assert "credential=storage account key" in started_line(server)
    r = server.post("/v1/batch", {"batch": events("key", 2)}, key=KEY)
    assert r.status_code == 200, r.text
    assert_rows(lake, "key", 2)


@pytest.mark.parametrize("mode,implicit", [("wrong-audience", False), ("wrong-audience", True),
                                           ("no-identity", False)],
                         ids=["token-refused-named", "token-refused-implicit", "no-identity-named"])
def test_refused_identity_writes_nothing(lake, identity, start_server, tmp_path, mode, implicit):
    """The identity endpoint's token is refused by storage, or the endpoint refuses to give one: the request fails
    and nothing is written, although the stray account key in the environment would have been accepted. (When
    deltalake merged the AZURE_* variables into the store's options, the key won.)"""
    identity.mode = mode
    extra = {} if implicit else {"SEGMENT_DELTA_STORAGE_CREDENTIAL": "managed-identity"}
    env = managed_identity_env(lake, identity, SEGMENT_DELTA_WRITE_RETRY_SECS="2", **extra)
    server = start_server(lake, **env)
    assert "credential=managed identity (system-assigned)" in started_line(server)

    r = server.post("/v1/batch", {"batch": events("refused")}, key=KEY)
    assert r.status_code in (500, 503), (r.status_code, r.text)
    assert r.json().get("success") is not True, r.text
    assert_identity_calls(identity, client_id=None)
    if mode == "wrong-audience":
        assert identity.granted(), "the endpoint gave a token"
        # The token reached storage and storage refused it: not a TLS or connection failure.
        assert "403 Forbidden" in server.stderr() and "Invalid token audience" in server.stderr()
    else:
        assert not identity.granted()
        assert "Identity not found" in server.stderr()
    assert_nothing_written(lake)

    ready = server.get("/ready")
    assert ready.status_code == 503, ready.text
    assert ready.json()["components"]["lake"]["ok"] is False, ready.text
    assert_nothing_written(lake)

    calls_before_check = len(identity.calls)
    done = run_check(tmp_path / "check", env)
    out = done.stdout
    assert done.returncode != 0, out + done.stderr
    assert "storage credential in effect: managed identity (system-assigned)" in out, out
    assert "[FAIL] lake not writable" in out, out
    assert "[pass] lake writable" not in out, out
    assert len(identity.calls) > calls_before_check, "check did not ask the identity endpoint for a token"
    assert_nothing_written(lake)
    assert AZURITE_KEY not in out + done.stderr + whole_log(server)


def test_identity_endpoint_failing_check(lake, identity, tmp_path):
    """The identity endpoint answers 500 (object_store retries it, then gives up): `segment-delta check` names the
    managed identity and fails the lake probe; the stray key does not step in."""
    identity.mode = "error"
    env = managed_identity_env(lake, identity, SEGMENT_DELTA_STORAGE_CREDENTIAL="managed-identity")
    done = run_check(tmp_path / "check", env)
    out = done.stdout
    assert done.returncode != 0, out + done.stderr
    assert "storage credential in effect: managed identity (system-assigned)" in out, out
    fail = [l for l in out.splitlines() if l.startswith("[FAIL] lake not writable")]
    assert fail and "500" in fail[0] and "/msi/token" in fail[0], out
    assert "[pass] lake writable" not in out, out
    assert len(identity.calls) > 1 and not identity.granted(), "object_store retries a 500 from the endpoint"
    assert_identity_calls(identity, client_id=None)
    assert_nothing_written(lake)
    assert AZURITE_KEY not in out + done.stderr
