"""A collection written by an older release opens in this one: upgraded in place, under the
writer lock, with the same ids, vectors, generation and answers (tests/fixtures/schema-1)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from search.catalog import Catalog
from search.collection import Collection
from search.engine import SearchEngine
from search.migrations import SCHEMA_VERSION
from search.model import Encoder
from tests.conftest import (
    PYTHON,
    ask,
    build,
    copy_samples,
    in_namespace,
    one_line,
    read_only_mount,
    run_cli,
)

SCHEMA_1 = Path(__file__).with_name("fixtures") / "schema-1"


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """A writable copy of the schema-1 collection."""
    return Path(shutil.copytree(SCHEMA_1, tmp_path / "old"))


def stored_vectors(catalog: Path, table: str, column: str) -> dict[int, bytes]:
    with sqlite3.connect(catalog) as connection:
        return dict(connection.execute(f"SELECT id, {column} FROM {table}").fetchall())


def test_a_schema_1_collection_upgrades_in_place_and_answers_as_before(old: Path) -> None:
    before = stored_vectors(old / "catalog.sqlite", "images", "embedding")
    collection = Collection.open(old)
    assert collection.catalog.schema_version() == SCHEMA_VERSION
    assert json.loads((old / "manifest.json").read_text())["schema_version"] == SCHEMA_VERSION
    assert stored_vectors(old / "catalog.sqlite", "embeddings", "vector") == before
    assert collection.stats()["failed"] == 1
    expected = json.loads((old / "answers.json").read_text())
    index, generation = collection.load_vectors()
    assert generation == expected["generation"] and len(index) == len(before) == 12
    (old / f"vectors-{generation}.faiss").unlink()  # and rebuilt from the upgraded catalog
    rebuilt, _ = collection.load_vectors()
    for vectors in (index, rebuilt):
        for answer in expected["answers"]:
            query = np.frombuffer(before[answer["query_id"]], dtype=np.float32)
            scores, ids = vectors.search(query, 5)
            assert ids.tolist() == answer["ids"]
            np.testing.assert_allclose(scores, answer["scores"], rtol=0, atol=1e-6)


def test_an_upgraded_collection_is_indexed_and_opened_again(
    old: Path, tmp_path: Path, encoder
) -> None:
    collection = build(old, copy_samples(tmp_path / "photos"), encoder)
    assert collection.stats()["images"] == 24
    assert Collection.open(old).catalog.schema_version() == SCHEMA_VERSION  # nothing left to run


def test_an_upgraded_catalog_has_the_schema_of_a_new_one(old: Path, tmp_path: Path) -> None:
    Collection.open(old)
    fresh = tmp_path / "fresh.sqlite"
    Catalog(fresh).create_schema()

    def tables(path: Path) -> dict[str, list[tuple]]:
        with sqlite3.connect(path) as connection:
            names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master")]
            return {
                name: connection.execute(f"PRAGMA table_xinfo('{name}')").fetchall()
                + connection.execute(f"PRAGMA foreign_key_list('{name}')").fetchall()
                for name in names
            }

    assert tables(old / "catalog.sqlite") == tables(fresh)


def test_a_schema_4_catalog_holding_nan_answers_filters_once_upgraded(
    tmp_path: Path, encoder: Encoder
) -> None:
    """Schema 4 stored a JSONL catalog's NaN as Python writes it, and SQLite (before 3.42)
    then refused every filter and facet of the collection as "malformed JSON"."""
    collection = build(tmp_path / "data", copy_samples(tmp_path / "photos"), encoder)
    with sqlite3.connect(collection.catalog.path) as connection:
        for image_id, attributes in (
            (1, '{"price": NaN, "deep": [Infinity]}'),
            (2, '{"price": 2}'),
        ):
            connection.execute(
                "UPDATE images SET attributes = ? WHERE id = ?", (attributes, image_id)
            )
        connection.execute("ALTER TABLE roots DROP COLUMN catalog")  # schema 6's
        connection.execute("UPDATE meta SET value = 4 WHERE key = 'schema_version'")
    collection.catalog.engine.dispose()
    upgraded = Collection.open(tmp_path / "data")
    assert upgraded.catalog.schema_version() == SCHEMA_VERSION
    engine = SearchEngine(upgraded, encoder)
    assert engine.image(1).attributes == {"price": None, "deep": [None]}
    hits = ask(engine, text="anything", filters={"attr_price_max": 5}).hits
    assert [hit.record.id for hit in hits] == [2]


def test_a_newer_schema_is_refused_in_one_line(old: Path) -> None:
    with sqlite3.connect(old / "catalog.sqlite") as connection:
        connection.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION + 1,)
        )
    result = run_cli("stats", "--data-dir", str(old), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "from a newer clipsearch" in result.stderr.strip().splitlines()[-1]


def test_an_old_collection_on_a_read_only_mount_says_how_to_upgrade(old: Path) -> None:
    result = in_namespace(f"{read_only_mount(old)} {PYTHON} stats --data-dir {old}")
    assert result.returncode == 1 and "to upgrade it in place" in one_line(result.stderr)
    assert Collection.open(old).catalog.schema_version() == SCHEMA_VERSION  # once writable
