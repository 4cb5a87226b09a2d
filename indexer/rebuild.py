"""Changing a collection's model in place: every image embedded again by the new model into a
table beside the old vectors, while servers go on answering with the old model, then one switch
(search/collection.py) after which servers load the new model. Ids, paths, attributes and
links stay; the old vectors go only with the switch.

The work is committed batch by batch under the writer lock, so an interrupted rebuild resumes
with the images it had not done yet. A file that cannot be read again is recorded as failed and
leaves the collection at the switch: there is no vector of the new model for it.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select, text
from tqdm import tqdm

from indexer.items import Encoded, Failed, Result
from indexer.pipeline import KnownContent, load_batches
from indexer.scan import FoundFile
from indexer.source import default_workers, encoded
from search.catalog import Failure, ImageRecord, Root
from search.collection import Collection, load_encoder
from search.imaging import DEFAULT_MAX_PIXELS
from search.sandbox import start_fork_server
from search.spec import ModelSpec

NEXT_INSERT = text("INSERT INTO next_embeddings (id, vector) VALUES (:id, :vector)")


def rebuild(
    collection: Collection,
    spec: ModelSpec,
    device: str = "auto",
    batch_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool | None = None,
) -> int:
    """Move the collection to `spec`; returns how many images were embedded by this run."""
    with collection.writer():
        collection.begin_rebuild(spec)
        todo = _remaining(collection)
        if todo:
            _embed(collection, spec, todo, device, batch_size, max_pixels, progress)
        collection.switch_model()
    return len(todo)


def _remaining(collection: Collection) -> dict[FoundFile, int]:
    """Each image not yet embedded by the next model, as the file to read, with its id."""
    with collection.catalog.sessions() as session:
        image = ImageRecord
        rows = session.execute(
            select(image.id, Root.path.label("root"), image.path, image.size, image.mtime_ns)
            .join(Root, Root.id == image.root_id)
            .where(text("images.id NOT IN (SELECT id FROM next_embeddings)"))
        )
        return {FoundFile(r.root, r.path, r.size, r.mtime_ns): r.id for r in rows}


def _embed(
    collection: Collection,
    spec: ModelSpec,
    todo: dict[FoundFile, int],
    device: str,
    batch_size: int | None,
    max_pixels: int,
    progress: bool | None,
) -> None:
    start_fork_server()  # the decode workers' imports overlap the model's loading
    encoder = load_encoder(spec, device)
    size = batch_size or encoder.batch_size
    batches = load_batches(
        list(todo), encoder.layout, KnownContent([]), size, default_workers(), max_pixels
    )
    no_bar = None if progress is None else not progress
    with tqdm(total=len(todo), unit="img", desc="rebuilding", disable=no_bar) as bar:
        for batch in batches:
            _write(collection, todo, encoded(encoder, batch))
            bar.update(len(batch))


def _write(collection: Collection, ids: dict[FoundFile, int], batch: Iterable[Result]) -> None:
    vectors, failures = [], []
    for item in batch:
        if isinstance(item, Encoded):
            vectors.append({"id": ids[item.file], "vector": item.vector.tobytes()})
        elif isinstance(item, Failed):
            failures.append(item)
    with collection.catalog.transaction() as session:
        if vectors:
            session.execute(NEXT_INSERT, vectors)
        for failed in failures:
            root = session.scalar(select(Root).where(Root.path == failed.file.root))
            session.add(
                Failure(
                    root_id=root.id,
                    path=failed.file.path,
                    size=failed.file.size,
                    mtime_ns=failed.file.mtime_ns,
                    reason=f"{failed.reason} (while changing model)",
                )
            )
