"""The indexer against real folders, a real SQLite catalog and a real FAISS index."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, update

from indexer.items import Seen
from indexer.pipeline import KnownContent, Loaded, load_batches
from indexer.scan import FoundFile, scan
from indexer.slots import PixelSlots
from indexer.sync import Indexer
from search.catalog import ImageRecord, Root
from search.collection import Collection
from search.errors import CollectionError, StorageError
from search.imaging import decode_for_model
from search.model import Encoder
from search.spec import ModelSpec
from tests.conftest import SAMPLES, draw_photos


def reindex(collection: Collection, encoder: Encoder, folder: Path):
    return Indexer(collection, encoder, batch_size=4, workers=0, progress=False).run([folder])


def ids_by_path(collection: Collection) -> dict[str, int]:
    with collection.catalog.sessions() as session:
        return {r.path: r.id for r in session.scalars(select(ImageRecord))}


def moved_into_sub(photos: Path, *names: str) -> Path:
    sub = photos / "sub"
    sub.mkdir()
    for name in names:
        shutil.move(photos / name, sub / name)
    return sub


def assert_index_matches_catalog(collection: Collection) -> None:
    """Every vector maps to exactly one live catalog row, by id."""
    vectors, generation = collection.load_vectors()
    assert generation == collection.catalog.generation()
    assert collection.vectors_path(generation).exists()
    assert sorted(vectors.ids()) == sorted(ids_by_path(collection).values())


def test_first_run_indexes_every_sample(collection: Collection) -> None:
    paths = ids_by_path(collection)
    assert len(paths) == 12
    assert "red-apple.jpg" in paths
    assert_index_matches_catalog(collection)


def test_second_run_encodes_nothing(collection: Collection, encoder: Encoder, photos: Path) -> None:
    summary = reindex(collection, encoder, photos)
    assert (summary.added, summary.updated, summary.unchanged) == (0, 0, 12)
    assert summary.scanned == 12 and summary.removed == 0


def test_a_folder_given_twice_or_inside_another_is_indexed_once(
    tmp_path: Path, encoder: Encoder, photos: Path
) -> None:
    """`index X X` ended in SQLite's UNIQUE constraint; `index X X/sub` indexed sub's files
    twice, once under each root."""
    sub = moved_into_sub(photos, "red-apple.jpg")
    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
    indexer = Indexer(collection, encoder, batch_size=5, workers=0, progress=False)
    summary = indexer.run([sub, photos, Path(f"{photos}/"), sub / ".."])
    assert (summary.scanned, summary.added) == (12, 12)
    assert "sub/red-apple.jpg" in ids_by_path(collection)
    assert [root["path"] for root in collection.stats()["roots"]] == [str(photos)]
    assert_index_matches_catalog(collection)


def test_a_folder_inside_or_around_an_indexed_one_keeps_one_row_per_file(
    tmp_path: Path, encoder: Encoder, photos: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`index X/sub` then `index X` (or the other way round) stored sub's files twice, under
    two roots: every result list showed them twice."""
    sub = moved_into_sub(photos, "red-apple.jpg", "snowman.png", "rainbow.png")
    (sub / "broken.jpg").write_bytes(b"not a picture")
    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
    reindex(collection, encoder, sub)
    first = ids_by_path(collection)

    around = reindex(collection, encoder, photos)
    assert (around.added, around.unchanged, around.removed, around.failed) == (9, 3, 0, 1)
    after = ids_by_path(collection)
    assert len(after) == 12
    assert {after[f"sub/{path}"] for path in first} == set(first.values())  # ids kept
    failure = collection.stats()["failures"]
    assert [(f["root"], f["path"]) for f in failure] == [(str(photos), "sub/broken.jpg")]

    with caplog.at_level("INFO", logger="indexer"):
        inside = reindex(collection, encoder, sub)
    assert (inside.scanned, inside.added, inside.unchanged, inside.removed) == (13, 0, 12, 0)
    assert f"{sub} is inside {photos}, indexed already: scanning all of it" in caplog.messages
    assert ids_by_path(collection) == after
    assert [root["path"] for root in collection.stats()["roots"]] == [str(photos)]
    assert_index_matches_catalog(collection)


def test_a_second_row_of_one_file_under_an_inner_root_goes(
    tmp_path: Path, encoder: Encoder, photos: Path
) -> None:
    """A catalog in a subfolder gives its images a root of their own beside the folder's (as
    an earlier release's `index X` then `index X/sub` did: a root no catalog marks); the next
    run over the folder keeps the folder's row of each file, with its vector, and drops the
    other."""
    sub = moved_into_sub(photos, "red-apple.jpg", "snowman.png")
    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
    reindex(collection, encoder, photos)
    before = ids_by_path(collection)
    (sub / "list.csv").write_text("image\nred-apple.jpg\nsnowman.png\n")
    indexer = Indexer(collection, encoder, batch_size=4, workers=0, progress=False)
    assert indexer.run_catalog(sub / "list.csv").added == 2
    assert collection.stats()["images"] == 14
    with collection.catalog.transaction() as session:
        session.execute(update(Root).values(catalog=None))

    summary = reindex(collection, encoder, photos)
    assert (summary.added, summary.unchanged, summary.removed) == (0, 12, 2)
    assert ids_by_path(collection) == before
    assert [root["path"] for root in collection.stats()["roots"]] == [str(photos)]
    assert_index_matches_catalog(collection)


def test_changed_deleted_moved_and_new_files(
    collection: Collection, encoder: Encoder, photos: Path
) -> None:
    before = ids_by_path(collection)
    shutil.copy2(SAMPLES / "snowman.png", photos / "red-apple.jpg")  # content changed
    (photos / "checkerboard.png").unlink()  # deleted
    (photos / "trips").mkdir()
    (photos / "rainbow.png").rename(photos / "trips" / "rainbow-renamed.png")  # moved
    shutil.copy2(SAMPLES / "yellow-flower.jpg", photos / "trips" / "flower-copy.jpg")  # copy

    summary = reindex(collection, encoder, photos)

    assert (summary.updated, summary.removed, summary.moved, summary.added) == (1, 1, 1, 1)
    after = ids_by_path(collection)
    assert "checkerboard.png" not in after
    assert after["red-apple.jpg"] == before["red-apple.jpg"]  # same id, new vector
    assert after["trips/rainbow-renamed.png"] == before["rainbow.png"]  # kept its id
    with collection.catalog.sessions() as session:
        apple = session.get(ImageRecord, after["red-apple.jpg"])
        snowman = session.get(ImageRecord, after["snowman.png"])
        copy = session.get(ImageRecord, after["trips/flower-copy.jpg"])
        flower = session.get(ImageRecord, after["yellow-flower.jpg"])
        np.testing.assert_array_equal(apple.vector, snowman.vector)
        np.testing.assert_array_equal(copy.vector, flower.vector)
    assert_index_matches_catalog(collection)


def test_an_id_is_never_handed_out_twice(
    collection: Collection, encoder: Encoder, photos: Path
) -> None:
    """A stale link to a deleted image must not show the next image added."""
    before = ids_by_path(collection)
    newest = max(before, key=before.__getitem__)
    (photos / newest).rename(photos.parent / "kept-aside")
    assert reindex(collection, encoder, photos).removed == 1
    shutil.copy2(SAMPLES / "snowman.png", photos / "new-a.png")
    draw_photos(photos / "new", 1, seed=7)  # new/new-000.jpg

    assert reindex(collection, encoder, photos).added == 2
    after = ids_by_path(collection)
    assert sorted([after["new-a.png"], after["new/new-000.jpg"]]) == [
        before[newest] + 1,
        before[newest] + 2,
    ]
    assert_index_matches_catalog(collection)


def test_bad_files_are_recorded_and_skipped(
    collection: Collection, encoder: Encoder, photos: Path
) -> None:
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "notes.png").write_text("not an image")
    data = (SAMPLES / "city-skyline-night.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (photos / "loop").mkdir()
    (photos / "loop" / "back").symlink_to(photos, target_is_directory=True)

    summary = reindex(collection, encoder, photos)

    assert summary.failed == 3 and summary.unchanged == 12 and summary.added == 0
    failures = {f["path"]: f["reason"] for f in collection.stats()["failures"]}
    assert set(failures) == {"empty.jpg", "notes.png", "truncated.jpg"}
    assert "empty" in failures["empty.jpg"]
    assert len(ids_by_path(collection)) == 12  # nothing indexed before was lost

    (photos / "notes.png").unlink()
    summary = reindex(collection, encoder, photos)
    assert summary.failed == 2
    assert collection.stats()["failed"] == 2


def test_a_collection_refuses_another_model(collection: Collection) -> None:
    spec = ModelSpec.from_args("ViT-B-32", "none")
    with pytest.raises(CollectionError, match="will not mix"):
        Collection.create_or_open(collection.root, spec)
    assert Collection.create_or_open(collection.root, None).spec == collection.spec


def test_stale_vectors_are_rebuilt_from_the_catalog(collection: Collection) -> None:
    """After a crash between a catalog commit and the index save, the catalog wins."""
    generation = collection.catalog.generation()
    saved = collection.vectors_path(generation)
    stale = collection.vectors_path(generation - 1)
    saved.rename(stale)
    vectors, loaded_generation = collection.load_vectors()
    assert loaded_generation == generation
    assert sorted(vectors.ids()) == sorted(ids_by_path(collection).values())


def test_only_one_indexer_at_a_time(collection: Collection, encoder: Encoder, photos: Path) -> None:
    with collection.writer(), pytest.raises(CollectionError, match="another"):
        reindex(collection, encoder, photos)
    assert not collection.writer_active()


@pytest.mark.parametrize("workers", [0, 2])
def test_pipeline_hands_every_new_file_to_the_encoder_in_batches(
    encoder: Encoder, photos: Path, workers: int
) -> None:
    files = [f for f in scan(photos) if isinstance(f, FoundFile)]
    known = frozenset({hashlib.sha256((photos / "snowman.png").read_bytes()).hexdigest()})
    batches = list(load_batches(files, encoder.layout, KnownContent(known), 5, workers))
    assert sum(len(batch) for batch in batches) == 12
    if workers == 0:
        assert [len(batch) for batch in batches] == [5, 5, 2]
    for batch in batches:
        loaded = sum(isinstance(item, Loaded) for item in batch)
        assert batch.pixels.shape == (loaded, 64, 64, 3)
    items = [item for batch in batches for item in batch]
    reused = [item for item in items if isinstance(item, Seen)]
    assert [i.file.path for i in reused] == ["snowman.png"]  # known content: not decoded


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_indexing_on_the_gpu_gives_the_cpu_vectors(
    tmp_path: Path, photos: Path, collection: Collection, tiny_spec: ModelSpec
) -> None:
    """Decode workers, shared pixel slots, a page-locked batch and fp16 on the GPU: the same
    images as the CPU's float32 path, within half precision."""
    gpu = Collection.create_or_open(tmp_path / "gpu", tiny_spec)
    Indexer(gpu, Encoder(tiny_spec, "cuda"), batch_size=4, workers=2, progress=False).run([photos])
    cpu_vectors, gpu_vectors = vectors_by_path(collection), vectors_by_path(gpu)
    assert gpu_vectors.keys() == cpu_vectors.keys()
    for path, vector in gpu_vectors.items():
        assert float(vector @ cpu_vectors[path]) > 0.99, path


def vectors_by_path(collection: Collection) -> dict[str, np.ndarray]:
    with collection.catalog.sessions() as session:
        return {r.path: r.vector for r in session.scalars(select(ImageRecord))}


def test_no_room_for_the_decoders_buffers_is_one_line() -> None:
    """Reserved up front: a full disk (or a small /dev/shm) stops the run with a reason, not a
    worker with SIGBUS half-way through."""
    with pytest.raises(StorageError, match=r"^no room for the decoders' \d+ MB of buffers: "):
        PixelSlots(rows=1000, depth=1000, size=10_000)  # 300 TB


def test_each_file_gets_its_own_pixels_when_the_encoder_is_slower_than_the_decoders(
    encoder: Encoder, tmp_path: Path
) -> None:
    """Workers hand pixels over in slots they reuse, and batches come in buffers that go round.
    While the encoder lags, workers run ahead of what has been read; each file must still come
    with its own pixels (a worker that was sent more files than it has slots once overwrote
    unread pixels: files got others' vectors)."""
    draw_photos(tmp_path / "photos", 240, seed=4)
    files = [f for f in scan(tmp_path / "photos") if isinstance(f, FoundFile)]
    seen = 0
    for batch in load_batches(files, encoder.layout, KnownContent([]), 32, 2):
        time.sleep(0.05)  # an encoder call
        for item, pixels in zip(batch, batch.pixels, strict=True):
            assert isinstance(item, Loaded)
            expected = decode_for_model(item.file.absolute.read_bytes(), encoder.layout).pixels
            assert np.array_equal(pixels, expected), item.file.path
            seen += 1
    assert seen == len(files) == 240
