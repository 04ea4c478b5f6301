"""Security: write keys and SQL identifiers.

- Requests whose write key is missing or wrong in ways test_auth.py does not cover (the key as the Basic password,
  near-miss keys, a key only inside a batch item, a non-string key, the Functions invocation shape, a gzipped
  body) are refused and write nothing: no file, no table, no discard.
- Names from event data cannot break out of SQL quoting: event and property names with backticks, quotes,
  semicolons, `--`, `/*`, newlines go through a server kept in step with Unity Catalog by the Databricks emulator.
  Every statement the emulator recorded parses (sqlglot, Databricks dialect) as exactly one statement of the kind
  expected, names only the normalised tables and columns, and succeeded; the columns of Unity Catalog and of the
  Delta tables are the normalised names, and names with no letter or digit are in `discards`.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
import requests
import sqlglot
from sqlglot import exp

from conftest import databricks_emulator, go_snakecase, read_discards, running_server

SOURCES = "K1=web,K2=ios"


# ---------------------------------------------------------------------------------------------------------------
# Write keys


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("security-keys"), SEGMENT_DELTA_SOURCES=SOURCES) as server:
        yield server


def basic(user_and_password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user_and_password.encode()).decode()}


def track(message_id: str, **extra) -> dict:
    return {"type": "track", "userId": "u1", "event": "Refused Event", "messageId": message_id,
            "properties": {"n": 1}, **extra}


REFUSED = {
    # name: (path, body, headers, gzip)
    "key as the Basic password": ("/v1/batch", {"batch": [track("r1")]}, basic(":K1"), False),
    "Basic key with a trailing space": ("/v1/batch", {"batch": [track("r2")]}, basic("K1 :"), False),
    "Basic key, a prefix of a real key": ("/v1/batch", {"batch": [track("r3")]}, basic("K:"), False),
    "Basic key, a real key plus a letter": ("/v1/batch", {"batch": [track("r4")]}, basic("K1x:"), False),
    "Basic key in another case": ("/v1/track", track("r5"), basic("k2:"), False),
    "Basic with nothing after it": ("/v1/batch", {"batch": [track("r6")]}, {"Authorization": "Basic "}, False),
    "Basic that is not base64": ("/v1/batch", {"batch": [track("r7")]}, {"Authorization": "Basic K1"}, False),
    "key only inside a batch item": ("/v1/batch", {"batch": [track("r8", writeKey="K1")]}, {}, False),
    "wrong key in the body of a single event": ("/v1/identify", {"userId": "u1", "messageId": "r9",
                                                                  "traits": {"refused": 1}, "writeKey": "K3"}, {},
                                                False),
    "wrong key in a gzipped body": ("/v1/batch", {"batch": [track("r10")], "writeKey": "K1 "}, {}, True),
    "wrong Basic key on /v1/import": ("/v1/import", {"batch": [track("r11")]}, basic("K9:"), False),
    "non-string key in the body": ("/v1/batch", {"batch": [track("r12")], "writeKey": ["K1"]}, {}, False),
    "empty key in the body": ("/v1/batch", {"batch": [track("r13")], "writeKey": ""}, {}, False),
}


def assert_nothing_written(server, files_before: set[str]) -> None:
    assert server.files() == files_before, "a refused request wrote something"
    for schema in ("web", "ios", "segment"):
        assert "refused_event" not in server.tables(schema)
        assert not [d for d in read_discards(server.lake, schema) if "refused" in d["column_value"].lower()]


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_refused_write_keys_write_nothing(keyed, case):
    # A first accepted write, so that "nothing new" is checked against a lake that has tables.
    assert keyed.post("/v1/track", track("accepted-1", event="Accepted Event"), key="K1").status_code == 200
    files_before = keyed.files()
    path, body, headers, gz = REFUSED[case]
    r = keyed.post(path, body, headers=headers, gzip=gz)
    assert r.status_code in (400, 401), (r.status_code, r.text)
    assert r.json()["success"] is False
    if case != "non-string key in the body":
        assert r.status_code == 401, r.text
    assert_nothing_written(keyed, files_before)


def test_functions_invocation_with_a_wrong_key_writes_nothing(keyed):
    files_before = keyed.files()
    for auth in (basic("K3:"), {}):
        invocation = {"Data": {"req": {"Url": "http://localhost/v1/batch", "Method": "POST",
                                       "Headers": {"Content-Type": ["application/json"],
                                                   **{k: [v] for k, v in auth.items()}},
                                       "Params": {"path": "batch"},
                                       "Body": json.dumps({"batch": [track("r-fn")]})}},
                      "Metadata": {}}
        r = keyed.post("/segment", invocation)
        assert r.status_code == 200, r.text
        res = r.json()["Outputs"]["res"]
        assert res["statusCode"] == 401 and json.loads(res["body"])["success"] is False, res
    assert_nothing_written(keyed, files_before)


# ---------------------------------------------------------------------------------------------------------------
# SQL identifiers from event data

PAT = "dapi-security"
KEY = "SQL-KEY"
SCHEMA = "web"

HOSTILE_EVENTS = ["x`; DROP TABLE tracks; --", "Plan /* c */ Chosen", "Line\nBreak'd \"Event\"",
                  "a';DELETE FROM web.tracks WHERE '1'='1"]
HOSTILE_PROPS = {"a`b": 1, "c; DROP TABLE web.tracks; --": "v", "/* x */ y": True, "it's": 1.5,
                 'say "hi"': "s", "new\nline": "n", "semi;colon`tick": 2, "back\\slash": "b",
                 "nested": {"k`; --": 1, "*/": "close"}}
LATER_PROPS = {"later`; ALTER TABLE x DROP COLUMN y; --": 3, "\"quoted\" -- tail": "t"}
NO_LETTERS = {"--": "dashes", "`": "tick", "/*": "comment", ";": "semi"}


@pytest.fixture
def emulator(tmp_path):
    with databricks_emulator(tmp_path, PAT) as url:
        yield url


def statements(url: str) -> list[dict]:
    return requests.get(f"{url}/_emulator/statements", timeout=10).json()["statements"]


def uc_columns(url: str, table: str) -> list[str]:
    t = requests.get(f"{url}/api/2.1/unity-catalog/tables/main.{SCHEMA}.{table}",
                     headers={"Authorization": f"Bearer {PAT}"}, timeout=10)
    assert t.status_code == 200, (table, t.text)
    return [c["name"] for c in t.json()["columns"]]


def flat_keys(props: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in props.items():
        path = f"{prefix}.{k}" if prefix else k
        out += flat_keys(v, path) if isinstance(v, dict) else [path]
    return out


def identifiers(statement: exp.Expression) -> set[str]:
    return {i.name for i in statement.find_all(exp.Identifier)}


def test_hostile_names_cannot_break_out_of_sql_quoting(tmp_path, emulator):
    check_hostile_names(tmp_path, emulator, tmp_path / "lake")


def test_quote_in_the_lake_path(tmp_path, emulator):
    """The lake's own path is the one string literal of the DDL: a quote in it stays inside the literal."""
    check_hostile_names(tmp_path, emulator, tmp_path / "it's a lake")


def check_hostile_names(tmp_path, emulator, lake):
    with running_server(tmp_path / "server", SEGMENT_DELTA_LAKE=str(lake), SEGMENT_DELTA_SOURCES=f"{KEY}={SCHEMA}",
                        DATABRICKS_HOST=emulator, DATABRICKS_TOKEN=PAT, DATABRICKS_CATALOG="main") as server:
        server.lake = lake
        first = [{"type": "track", "userId": "u1", "event": name, "messageId": f"h{i}",
                  "properties": {**HOSTILE_PROPS, **NO_LETTERS}} for i, name in enumerate(HOSTILE_EVENTS)]
        first.append({"type": "identify", "userId": "u1", "messageId": "id1", "traits": HOSTILE_PROPS})
        r = server.post("/v1/batch", {"batch": first}, key=KEY)
        assert r.status_code == 200, r.text
        # A second request adds columns to the existing tables: ALTER TABLE ... ADD COLUMNS.
        later = [{"type": "track", "userId": "u1", "event": name, "messageId": f"l{i}", "properties": LATER_PROPS}
                 for i, name in enumerate(HOSTILE_EVENTS)]
        later.append({"type": "identify", "userId": "u1", "messageId": "id2", "traits": LATER_PROPS})
        r = server.post("/v1/batch", {"batch": later}, key=KEY)
        assert r.status_code == 200, r.text

        event_tables = {go_snakecase(n) for n in HOSTILE_EVENTS}
        property_columns = {go_snakecase(k) for k in flat_keys({**HOSTILE_PROPS, **LATER_PROPS})}
        assert all(re.fullmatch(r"[a-z0-9_]+", t) for t in event_tables | property_columns)
        assert server.tables(SCHEMA) == {"tracks", "identifies", "discards"} | event_tables

        # The Delta tables and Unity Catalog agree, on normalised names only.
        table_columns = {}
        for table in sorted(server.tables(SCHEMA)):
            data = server.read(table, SCHEMA)
            assert uc_columns(emulator, table) == data.column_names, table
            assert all(re.fullmatch(r"[a-z0-9_]+", c) for c in data.column_names), (table, data.column_names)
            table_columns[table] = set(data.column_names)
            if table not in ("tracks", "discards"):
                assert property_columns <= set(data.column_names), (table, property_columns - set(data.column_names))
                rows = {r["id"]: r for r in data.to_pylist()}
                if table == "identifies":
                    assert rows["id1"]["a_b"] == 1 and rows["id1"]["it_s"] == 1.5
                else:
                    h = next(v for k, v in rows.items() if k.startswith("h"))
                    assert (h["a_b"], h["c_drop_table_web_tracks"], h["say_hi"]) == (1, "v", "s")
                    assert h["x_y"] is True and h["nested_k"] == 1 and h["back_slash"] == "b"

        # Names with no letter or digit are kept in discards, with their values.
        discarded = {(d["row_id"], d["column_name"]): d for d in read_discards(lake, SCHEMA)}
        for i in range(len(HOSTILE_EVENTS)):
            for name, value in NO_LETTERS.items():
                d = discarded.get((f"h{i}", name))
                assert d is not None and value in d["column_value"], (f"h{i}", name)

        # Every statement: one statement, of an expected kind, naming only normalised identifiers.
        allowed = {"main", SCHEMA} | set(table_columns) | set().union(*table_columns.values())
        recorded = statements(emulator)
        assert recorded, "no statement ran"
        kinds = []
        for s in recorded:
            sql = s["statement"]
            assert s["state"] == "SUCCEEDED", s
            parsed = sqlglot.parse(sql, read="databricks")
            assert len(parsed) == 1, f"{sql!r} is {len(parsed)} statements"
            stmt = parsed[0]
            if isinstance(stmt, exp.Create) and stmt.args.get("kind") == "SCHEMA":
                kinds.append("CREATE SCHEMA")
            elif isinstance(stmt, exp.Create) and stmt.args.get("kind") == "TABLE":
                kinds.append("CREATE TABLE")
                table = stmt.this.name
                location = [lit.this for lit in stmt.find_all(exp.Literal) if lit.is_string]
                assert location == [str(lake / SCHEMA / table)], (sql, location)
            elif isinstance(stmt, exp.Alter) and stmt.args.get("kind") == "TABLE":
                kinds.append("ALTER TABLE ADD COLUMNS")
                assert re.fullmatch(r"ALTER TABLE `main`\.`web`\.`[a-z0-9_]+` ADD COLUMNS \(.*\)", sql, re.S), sql
                added = {c.name for c in stmt.find_all(exp.ColumnDef)}
                assert added and added <= table_columns[stmt.this.name], (sql, added)
            else:
                raise AssertionError(f"unexpected statement {sql!r}")
            assert identifiers(stmt) <= allowed, (sql, identifiers(stmt) - allowed)
        assert kinds.count("CREATE SCHEMA") >= 1
        assert kinds.count("CREATE TABLE") == len(server.tables(SCHEMA))
        assert "ALTER TABLE ADD COLUMNS" in kinds
