"""Unity Catalog kept in step while the lake is on Azurite: the server runs its DDL on the Databricks emulator,
which applies ADD COLUMNS to the Delta log in Azurite as Databricks does. Read back with Python deltalake."""

import pytest
import requests

from conftest import databricks_emulator

PAT = "dapi-e2e"
KEY = "CAT-KEY"


@pytest.fixture
def emulator(azurite_lake, tmp_path):
    with databricks_emulator(tmp_path, PAT, azurite_lake.server_env()) as url:
        yield url


def statements(url: str) -> list[dict]:
    return requests.get(f"{url}/_emulator/statements", timeout=10).json()["statements"]


def uc_columns(url: str, full: str) -> list[str]:
    t = requests.get(f"{url}/api/2.1/unity-catalog/tables/{full}", headers={"Authorization": f"Bearer {PAT}"},
                     timeout=10).json()
    return [c["name"] for c in t["columns"]]


def test_catalog_follows_the_azurite_lake(azurite_lake, start_server, emulator):
    server = start_server(azurite_lake, SEGMENT_DELTA_SOURCES=f"{KEY}=web", DATABRICKS_HOST=emulator,
                          DATABRICKS_TOKEN=PAT, DATABRICKS_CATALOG="main")

    def track(mid, props):
        event = {"type": "track", "userId": "u", "messageId": mid, "event": "Plan Chosen", "properties": props}
        return server.post("/v1/batch", {"batch": [event]}, key=KEY)

    assert track("p1", {"plan": "pro"}).status_code == 200
    first = [s["statement"] for s in statements(emulator)]
    assert "CREATE SCHEMA IF NOT EXISTS `main`.`web`" in first
    location = f"{azurite_lake.uri}/web/plan_chosen"
    assert first.count(f"CREATE TABLE IF NOT EXISTS `main`.`web`.`plan_chosen` USING DELTA LOCATION '{location}'") == 1
    assert uc_columns(emulator, "main.web.plan_chosen") == azurite_lake.read("plan_chosen", "web").column_names

    assert track("p2", {"plan": "team", "seats": 3}).status_code == 200
    added = [s["statement"] for s in statements(emulator)][len(first):]
    assert added == ["ALTER TABLE `main`.`web`.`plan_chosen` ADD COLUMNS (`seats` BIGINT)"]
    table = azurite_lake.read("plan_chosen", "web")
    assert uc_columns(emulator, "main.web.plan_chosen") == table.column_names
    assert {r["id"]: r["seats"] for r in table.to_pylist()} == {"p1": None, "p2": 3}

    before = len(statements(emulator))
    assert track("p3", {"plan": "free", "seats": 1}).status_code == 200
    assert len(statements(emulator)) == before, "an append that adds nothing runs no statement"
    assert all(s["state"] == "SUCCEEDED" for s in statements(emulator))
    assert azurite_lake.read("plan_chosen", "web").num_rows == 3
