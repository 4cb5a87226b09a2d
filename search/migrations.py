"""The catalog's schema versions and the ordered steps that upgrade one to the next.

A user's collection is never refused or re-encoded because the code moved on: opening an older
catalog runs the steps it lacks, in order, in one transaction under the writer lock, and keeps
every id, vector and generation (so its saved index stays valid and answers as before). Each
step is frozen SQL, not the current models: the models describe the newest schema only.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, text

from search import jsontext


def _embeddings_apart(connection: Connection) -> None:
    """Schema 2: the embeddings leave the images table for their own. A filter scans the images
    table once per filter and generation; with a 2 KB vector in every row that scan read ten
    times the bytes it needed (20 GB at 10M images), and a page fetch carried them too."""
    connection.execute(
        text(
            "CREATE TABLE embeddings (id INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (id),"
            " FOREIGN KEY(id) REFERENCES images (id) ON DELETE CASCADE)"
        )
    )
    connection.execute(text("INSERT INTO embeddings (id, vector) SELECT id, embedding FROM images"))
    connection.execute(text("ALTER TABLE images DROP COLUMN embedding"))


def _root_ignore_rules(connection: Connection) -> None:
    """Schema 3: each indexed folder keeps the ignore rules its last run applied, for `stats`."""
    connection.execute(text("ALTER TABLE roots ADD COLUMN ignore_rules JSON NOT NULL DEFAULT '{}'"))


def _tags(connection: Connection) -> None:
    """Schema 4: zero-shot tags. Every image starts untagged; the next run tags it from its
    stored vector, with no image read again."""
    for statement in (
        "ALTER TABLE images ADD COLUMN tagged BOOLEAN DEFAULT '0' NOT NULL",
        "CREATE INDEX ix_images_untagged ON images (id) WHERE tagged = 0",
        "CREATE TABLE tags (id INTEGER NOT NULL, name VARCHAR NOT NULL, PRIMARY KEY (id), "
        "UNIQUE (name))",
        "CREATE TABLE image_tags (image_id INTEGER NOT NULL, tag_id INTEGER NOT NULL, "
        "score DOUBLE NOT NULL, PRIMARY KEY (image_id, tag_id), "
        "FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE, "
        "FOREIGN KEY(tag_id) REFERENCES tags (id) ON DELETE CASCADE)",
        "CREATE INDEX ix_image_tags_tag ON image_tags (tag_id)",
        "CREATE TABLE tag_prompts (model VARCHAR NOT NULL, vocabulary VARCHAR NOT NULL, "
        "scale DOUBLE NOT NULL, vectors BLOB NOT NULL, PRIMARY KEY (model, vocabulary))",
    ):
        connection.execute(text(statement))


def _finite_attributes(connection: Connection) -> None:
    """Schema 5: attributes as SQLite's JSON reads them. A JSONL catalog's NaN or Infinity was
    stored as Python writes it, and every filter and facet of the collection then failed as
    "malformed JSON"; such a value becomes null, as the indexer now reads it."""
    rows = connection.execute(
        text("SELECT id, attributes FROM images WHERE NOT json_valid(attributes)")
    )
    for image_id, attributes in rows.all():
        connection.execute(
            text("UPDATE images SET attributes = :attributes WHERE id = :id"),
            {"attributes": jsontext.dumps(jsontext.loads(attributes)), "id": image_id},
        )


def _root_catalog(connection: Connection) -> None:
    """Schema 6: a folder indexed from a catalog names its catalog file, so that a folder run
    over it (which would drop every product's attributes) is refused."""
    connection.execute(text("ALTER TABLE roots ADD COLUMN catalog VARCHAR"))


# STEPS[n] upgrades a catalog of schema n + 1 to schema n + 2; the release before migrations
# existed wrote schema 1 and no version row.
STEPS: tuple[Callable[[Connection], None], ...] = (
    _embeddings_apart,
    _root_ignore_rules,
    _tags,
    _finite_attributes,
    _root_catalog,
)
SCHEMA_VERSION = len(STEPS) + 1


def upgrade(connection: Connection, version: int) -> None:
    """Run the steps from `version` to SCHEMA_VERSION inside the caller's transaction."""
    for step in STEPS[version - 1 :]:
        step(connection)
