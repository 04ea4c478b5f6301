"""The lake on Azure Blob Storage, emulated by Azurite: the server writes through the `az://` store with the
emulator credential, and the tables are read back with deltalake over the Blob endpoint (and listed with
azure-storage-blob), nothing of the server's own storage code.

- the corpus, with the same checks as test_corpus.py;
- the Event Hub trigger: an invocation replayed to a second server process on the same lake lands once, because
  the partition's sequence number is committed with the rows (a Delta `txn` action), not kept in memory.
"""

import json
import uuid
from collections import Counter

import pytest

from conftest import (check_corpus_acknowledged, check_corpus_columns_and_types, check_corpus_no_discards,
                      check_corpus_sample_rows, check_corpus_specific_values, check_corpus_tables,
                      check_corpus_track_timestamps, read_discards, running_server, send_corpus)

KEY = "AZ-KEY"


# ---------------------------------------------------------------------------------------------------------------
# The corpus


@pytest.fixture(scope="module")
def loaded(corpus, azurite, tmp_path_factory):
    """A server on a lake in its own container, after all ten corpus bodies were acknowledged. They are sent all
    at once, so that they make few micro-batches: each commit to Azurite takes a while, and a micro-batch of the
    corpus commits to 46 tables."""
    lake = azurite.new_lake("corpus")
    with running_server(tmp_path_factory.mktemp("azurite-corpus"), lake,
                        SEGMENT_DELTA_SOURCES=f"{KEY}=segment") as server:
        yield send_corpus(server, corpus, key=KEY, one_by_one=0, threads=10)


CHECKS = [check_corpus_acknowledged, check_corpus_tables, check_corpus_no_discards, check_corpus_columns_and_types,
          check_corpus_sample_rows, check_corpus_specific_values, check_corpus_track_timestamps]


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_corpus_") for c in CHECKS])
def test_corpus(loaded, check):
    check(loaded)


def test_corpus_is_in_the_container_only(loaded):
    server = loaded.server
    started = server.stderr_path.read_text().splitlines()[0]
    assert "credential=storage emulator (Azurite)" in started and f'lake=Remote("{server.lake.uri}")' in started
    names = server.lake.blob_names("segment/order_completed")
    assert "segment/order_completed/_delta_log/00000000000000000000.json" in names
    assert any(n.endswith(".parquet") for n in names), names
    # Nothing on the local disk: no ./lake next to the server, nothing else in its working directory.
    assert sorted(p.name for p in server.workdir.iterdir()) == ["server.stderr"]


def test_abfss_lake_uri(azurite_lake, start_server):
    """The URI form a Function App is configured with reaches the same container."""
    abfss = f"abfss://{azurite_lake.container}@devstoreaccount1.dfs.core.windows.net/{azurite_lake.prefix}"
    server = start_server(azurite_lake, SEGMENT_DELTA_LAKE=abfss, SEGMENT_DELTA_SOURCES=f"{KEY}=web")
    events = [{"type": "track", "userId": "u1", "event": "Uri Form", "messageId": f"abfss-{i}",
               "properties": {"i": i}} for i in range(3)]
    r = server.post("/v1/batch", {"batch": events}, key=KEY)
    assert r.status_code == 200, r.text
    assert azurite_lake.tables("web") == {"tracks", "uri_form"}
    rows = sorted(azurite_lake.read("uri_form", "web").to_pylist(), key=lambda r: r["i"])
    assert [(r["id"], r["i"]) for r in rows] == [(f"abfss-{i}", i) for i in range(3)]


# ---------------------------------------------------------------------------------------------------------------
# The Event Hub trigger

PARTITION = {"FullyQualifiedNamespace": "segment-e2e.servicebus.windows.net", "EventHubName": "segment",
             "ConsumerGroup": "$Default"}


def app_id(partition: str) -> str:
    p = PARTITION
    return f"segment-delta/eventhub/{p['FullyQualifiedNamespace']}/{p['EventHubName']}/{p['ConsumerGroup']}/{partition}"


def hub_body(tag: str, i: int) -> tuple[str, list[tuple[str, str]]]:
    """An event body without messageId (only the sequence number can tell a redelivery) and the (table, user_id)
    rows it makes. Every seventh carries the write key, every tenth is a /v1/batch-shaped body of two tracks."""
    user = f"{tag}-{i}"
    if i % 10 == 0:
        body = {"batch": [{"type": "track", "userId": f"{user}a", "event": "Hub Batched"},
                          {"type": "track", "userId": f"{user}b", "event": "Hub Batched", "properties": {"i": i}}]}
        rows = [(table, f"{user}{part}") for part in "ab" for table in ("tracks", "hub_batched")]
    elif i % 5 == 4:
        body = {"type": "identify", "userId": user, "traits": {"plan": "pro", "i": i}}
        rows = [("identifies", user)]
    else:
        name = "Hub Order" if i % 2 else "Hub Click"
        body = {"type": "track", "userId": user, "event": name, "properties": {"i": i, "price": i / 4}}
        rows = [("tracks", user), (name.lower().replace(" ", "_"), user)]
    if i % 7 == 0:
        body["writeKey"] = KEY
    return json.dumps(body), rows


def invocation(tag: str, seqs: range, partition: str = "0") -> tuple[dict, Counter]:
    """The Functions host's Event Hub invocation for the events numbered `seqs` (their sequence numbers), and the
    rows they make."""
    bodies, rows = [], Counter()
    for i in seqs:
        body, made = hub_body(tag, i)
        bodies.append(body)
        rows.update(made)
    payload = {
        "Data": {"events": json.dumps(bodies)},
        "Metadata": {
            "PartitionContext": {**PARTITION, "PartitionId": partition},
            "SequenceNumberArray": json.dumps(list(seqs)),
            "sys": {"MethodName": "eventhub", "UtcNow": "2026-11-01T12:00:00Z", "RandGuid": str(uuid.uuid4())},
        },
    }
    return payload, rows


def deliver(server, payload) -> None:
    r = server.post("/eventhub", payload)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["Outputs"] == {} and answer["ReturnValue"] is None, answer
    assert any("committed" in line for line in answer["Logs"]), answer


def lake_rows(lake, schema: str) -> Counter:
    """(table, user_id) of every row in the schema."""
    rows = Counter()
    for table in lake.tables(schema):
        data = lake.read(table, schema)
        ids = data.column("id").to_pylist()
        assert None not in ids and len(set(ids)) == len(ids), f"{table}: missing or repeated ids"
        rows.update((table, u) for u in data.column("user_id").to_pylist())
    return rows


def test_eventhub_replay_to_another_process_lands_once(azurite_lake, start_server):
    env = {"SEGMENT_DELTA_SOURCES": f"{KEY}=hub"}  # events without a write key go to the only schema
    a = start_server(azurite_lake, **env)
    b = start_server(azurite_lake, **env)

    first, first_rows = invocation("p0", range(1, 61))
    deliver(a, first)
    assert lake_rows(azurite_lake, "hub") == first_rows
    # The host delivers the same batch again, to another instance (a fresh process: nothing in its memory).
    deliver(b, first)
    assert lake_rows(azurite_lake, "hub") == first_rows

    # A batch overlapping the committed one, to each process in turn: only 61..80 are new.
    second, _ = invocation("p0", range(41, 81))
    deliver(b, second)
    deliver(a, second)
    _, want = invocation("p0", range(1, 81))
    # Another partition's stream, with the same sequence numbers, is not a redelivery.
    other, other_rows = invocation("p1", range(1, 11), partition="1")
    deliver(b, other)
    deliver(a, other)
    want += other_rows

    got = lake_rows(azurite_lake, "hub")
    assert got == want, f"missing: {want - got}, extra: {got - want}"
    assert max(got.values()) == 1
    assert azurite_lake.tables("hub") == {"tracks", "identifies", "hub_order", "hub_click", "hub_batched"}
    assert not read_discards(azurite_lake, "hub")

    # Each table records each partition's last committed sequence number in a txn action.
    for table in azurite_lake.tables("hub"):
        last = {}
        for version, actions in sorted(azurite_lake.delta_log(table, "hub").items()):
            for action in actions:
                if "txn" in action:
                    last[action["txn"]["appId"]] = action["txn"]["version"]
        highest = max(i for i in range(1, 81) if any(t == table for t, _ in hub_body("p0", i)[1]))
        assert last.get(app_id("0")) == highest, (table, last)
