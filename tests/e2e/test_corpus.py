"""5,000 realistic events from the event corpus (tests/fixtures/corpus.py), sent as ten /v1/batch bodies (some gzipped, some at once), then
read back with deltalake and compared with what the corpus says. The checks live in conftest.py: test_azurite.py
runs the same ones against a lake on Azurite."""

import pytest

from conftest import (check_corpus_acknowledged, check_corpus_columns_and_types, check_corpus_no_discards,
                      check_corpus_sample_rows, check_corpus_specific_values, check_corpus_tables,
                      check_corpus_track_timestamps, running_server, send_corpus)


@pytest.fixture(scope="module")
def loaded(corpus, tmp_path_factory):
    """The server after all ten bodies were acknowledged: two one after the other, then eight over four threads."""
    with running_server(tmp_path_factory.mktemp("corpus")) as server:
        yield send_corpus(server, corpus)


def test_every_body_is_acknowledged(loaded):
    check_corpus_acknowledged(loaded)


def test_each_table_holds_exactly_its_events(loaded):
    check_corpus_tables(loaded)


def test_corpus_produces_no_discards(loaded):
    check_corpus_no_discards(loaded)


def test_order_completed_columns_and_types(loaded):
    check_corpus_columns_and_types(loaded)


def test_sample_rows_hold_what_the_events_say(loaded):
    check_corpus_sample_rows(loaded)


def test_specific_values(loaded):
    """A few columns spelled out, so a failure reads plainly."""
    check_corpus_specific_values(loaded)


def test_timestamps_of_every_track(loaded):
    check_corpus_track_timestamps(loaded)
