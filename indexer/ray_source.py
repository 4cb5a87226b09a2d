"""Encoded results from a Ray cluster: files decoded in Ray tasks on any node's CPUs, encoded by
actors (one per GPU, or one on a CPU when the cluster has none), results streamed back to the
driver, which plans and writes them like any other source's. Every node must read the paths the
driver found: the folders must be on a filesystem they share.

A decode task runs this machine's decode pipeline over its chunk (a capped worker process,
replaced if a file kills it), so hostile files cost what they cost locally; Ray retries a task
whose node or worker was lost.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from indexer.items import Encoded, Failed, Result, Seen
from indexer.pipeline import Batch, KnownContent, load_batches
from indexer.scan import FoundFile
from indexer.source import encode_file, encoded
from search.errors import ClipsearchError
from search.imaging import DEFAULT_MAX_PIXELS, InputLayout
from search.spec import ModelSpec

TASK_RETRIES = 3  # a task whose worker or node was lost runs again, up to this many times
IN_FLIGHT_PER_ACTOR = 3  # chunks decoded or being encoded ahead of the writer, per actor
# Files a decode task reads: each task starts its own capped decode process, so a chunk must
# be long enough to pay for that; it is also one encoder call and one catalog transaction.
FILES_PER_TASK = 256


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClipsearchError("--ray needs Ray: pip install 'clipsearch[ray]'") from None
    return ray


def decode_chunk(
    files: Sequence[FoundFile], layout: InputLayout, known: KnownContent, max_pixels: int
) -> Batch:
    """A chunk of files as one batch of Loaded, Seen or Failed, decoded by one capped worker
    process."""
    _check_shared({file.root for file in files})
    (batch,) = load_batches(files, layout, known, len(files), 1, max_pixels)
    return batch


def _check_shared(roots: set[str]) -> None:
    """A folder this node cannot open stops the run. Taken file by file as unreadable, a node
    without the share mounted would record every file it was given as failed, and drop the
    catalog rows of those already indexed."""
    for root in roots:
        if not (os.path.isdir(root) and os.access(root, os.R_OK | os.X_OK)):
            raise ClipsearchError(
                f"the Ray node {socket.gethostname()} cannot read {root}: every node needs "
                "the indexed folders at the same path, on a filesystem they share"
            )


class EncoderActor:
    """The collection's model on one GPU (or CPU) of the cluster, built from its identity, so
    every actor computes what the driver's own model would."""

    def __init__(self, spec: ModelSpec, device: str, max_pixels: int) -> None:
        from search.model import Encoder

        # Batches arrive read-only from Ray's object store, and the encoder only reads them:
        # torch's warning about that would be the first line of every actor's log.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        self.encoder = Encoder(spec, device)
        self.max_pixels = max_pixels

    def layout(self) -> InputLayout:
        return self.encoder.layout

    def encode(self, batch: Batch) -> list[Result]:
        return encoded(self.encoder, batch)

    def encode_one(self, seen: Seen) -> Encoded | Failed:
        return encode_file(self.encoder, seen, self.max_pixels)


class RaySource:
    def __init__(
        self,
        spec: ModelSpec,
        address: str | None = None,
        files_per_task: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        """Join the cluster at `address` (None: RAY_ADDRESS if set, else a local cluster)."""
        ray = self.ray = _ray()
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actor = ray.remote(EncoderActor).options(
            num_gpus=1 if gpus else 0,
            num_cpus=0 if gpus else 1,
            max_restarts=-1,
            max_task_retries=-1,
        )
        device = "cuda" if gpus else "cpu"
        self.actors = [actor.remote(spec, device, max_pixels) for _ in range(max(1, gpus))]
        self.layout = ray.get(self.actors[0].layout.remote())
        self.files_per_task = files_per_task or FILES_PER_TASK
        self.max_pixels = max_pixels
        self._decode = ray.remote(max_retries=TASK_RETRIES)(decode_chunk)

    def batches(self, files: Sequence[FoundFile], known: Iterable[str]) -> Iterator[list[Result]]:
        """Chunks in the order they finish, at most IN_FLIGHT_PER_ACTOR per actor at a time."""
        ray = self.ray
        known_ref = ray.put(KnownContent(known))  # 8 bytes a catalog image, sent once a node
        chunks = deque(
            files[start : start + self.files_per_task]
            for start in range(0, len(files), self.files_per_task)
        )
        pending: list[Any] = []
        while chunks or pending:
            while chunks and len(pending) < IN_FLIGHT_PER_ACTOR * len(self.actors):
                decoded = self._decode.remote(
                    chunks.popleft(), self.layout, known_ref, self.max_pixels
                )
                actor = self.actors[len(pending) % len(self.actors)]
                pending.append(actor.encode.remote(decoded))
            done, pending = ray.wait(pending, num_returns=1)
            yield self._get(done[0])

    def encode_one(self, seen: Seen) -> Encoded | Failed:
        return self._get(self.actors[0].encode_one.remote(seen))

    def _get(self, ref: Any) -> Any:
        """A task's result; our own errors raised on a node arrive as themselves (one line),
        not wrapped in the remote traceback."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, ClipsearchError):
                raise exc.cause from None
            raise
