"""Building the open_clip model a collection is tied to, and encoding images and text with it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import open_clip
import torch
from PIL import Image

from search.errors import ModelError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
NO_WEIGHTS = "none"
# Random weights are drawn from a fixed seed so that the indexer and a later query process
# build the same model: a `--pretrained none` collection stays searchable.
RANDOM_WEIGHTS_SEED = 0
HUB_PROBE_SECONDS = 3.0


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a model: the manifest stores it and queries rebuild the model from it."""

    architecture: str
    pretrained: str  # an open_clip tag, "none", or "file"
    config: dict[str, Any] | None = None  # the model config, when it came from a JSON file
    checkpoint: str | None = None  # absolute path, when pretrained == "file"
    checkpoint_sha256: str | None = None

    @classmethod
    def from_args(cls, model: str | None, pretrained: str | None) -> ModelSpec:
        """Read `--model NAME|CONFIG.json` and `--pretrained TAG|FILE|none`."""
        model = model or DEFAULT_MODEL
        config = None
        architecture = model
        if model.endswith(".json") or os.path.sep in model:
            config = _read_model_config(Path(model))
            architecture = Path(model).stem
        elif open_clip.get_model_config(model) is None:
            raise ModelError(
                f"unknown model {model!r}: give an open_clip architecture "
                f"(e.g. {DEFAULT_MODEL}) or the path of a model-config JSON file"
            )
        if pretrained is None:
            pretrained = DEFAULT_PRETRAINED if config is None and model == DEFAULT_MODEL else ""
            if not pretrained:
                raise ModelError(f"--pretrained is required with --model {model}")
        if pretrained == NO_WEIGHTS:
            return cls(architecture, NO_WEIGHTS, config)
        if Path(pretrained).is_file():
            path = Path(pretrained).resolve()
            return cls(architecture, "file", config, str(path), sha256_file(path))
        if config is not None:
            raise ModelError(
                f"--pretrained {pretrained!r} is not a file; a model given as a config JSON "
                "takes a local checkpoint file or 'none'"
            )
        if not open_clip.get_pretrained_cfg(architecture, pretrained):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(architecture)) or "none"
            raise ModelError(
                f"--pretrained {pretrained!r} is neither a file nor a known tag of {architecture} "
                f"(known tags: {tags})"
            )
        return cls(architecture, pretrained, config)

    @property
    def embed_dim(self) -> int:
        config = self.config or open_clip.get_model_config(self.architecture)
        return int(config["embed_dim"])

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "pretrained": self.pretrained,
            "config": self.config,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "embed_dim": self.embed_dim,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(
            data["architecture"],
            data["pretrained"],
            data.get("config"),
            data.get("checkpoint"),
            data.get("checkpoint_sha256"),
        )

    def same_model(self, other: ModelSpec) -> bool:
        """Same weights and architecture; a checkpoint may move, its content may not change."""
        return (
            self.architecture == other.architecture
            and self.pretrained == other.pretrained
            and self.config == other.config
            and self.checkpoint_sha256 == other.checkpoint_sha256
        )

    def verify_checkpoint(self) -> None:
        """A collection found on disk names its checkpoint by path: make sure it is still the
        file the vectors came from."""
        if self.pretrained != "file":
            return
        assert self.checkpoint is not None
        if not Path(self.checkpoint).is_file():
            raise ModelError(
                f"the collection's checkpoint {self.checkpoint} is missing: put it back, "
                "or index into a new collection"
            )
        if sha256_file(self.checkpoint) != self.checkpoint_sha256:
            raise ModelError(f"checkpoint {self.checkpoint} changed since the collection was built")

    @property
    def name(self) -> str:
        """Short form for API responses: architecture/weights."""
        weights = (
            "checkpoint-" + str(self.checkpoint_sha256)[:12]
            if self.pretrained == "file"
            else self.pretrained
        )
        return f"{self.architecture}/{weights}"

    def describe(self) -> str:
        weights = {
            "file": f"checkpoint {self.checkpoint} (sha256 {str(self.checkpoint_sha256)[:12]})",
            NO_WEIGHTS: "random weights",
        }.get(self.pretrained, self.pretrained)
        source = " (config file)" if self.config else ""
        return f"{self.architecture}{source}, {weights}"


def _read_model_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except OSError as exc:
        raise ModelError(f"cannot read model config {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ModelError(f"model config {path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
        raise ModelError(
            f"model config {path} needs the open_clip keys embed_dim, vision_cfg and text_cfg"
        )
    return config


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but torch sees no CUDA GPU")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


@contextlib.contextmanager
def _registered_config(config: dict[str, Any]) -> Iterator[str]:
    """Make a config JSON known to open_clip under a name no built-in can shadow."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    name = f"clipsearch-{digest}"
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(Path(folder, f"{name}.json"))
        yield name


def _hub_reachable(url: str) -> bool:
    """Connect to the hub within a few seconds; the name lookup is inside the bound too, since
    a resolver with no network can hang far longer than any socket timeout."""
    host = urlparse(url).hostname or "huggingface.co"
    reachable = threading.Event()

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, 443), HUB_PROBE_SECONDS):
            reachable.set()

    threading.Thread(target=probe, daemon=True).start()
    return reachable.wait(HUB_PROBE_SECONDS)


@contextlib.contextmanager
def _offline_unless_reachable(spec: ModelSpec) -> Iterator[None]:
    """Without a network, let huggingface_hub answer from its cache at once instead of retrying
    for most of a minute."""
    import huggingface_hub.constants as hub

    cfg = open_clip.get_pretrained_cfg(spec.architecture, spec.pretrained) or {}
    endpoint = cfg.get("url") or hub.ENDPOINT
    saved = hub.HF_HUB_OFFLINE
    if not saved and not _hub_reachable(endpoint):
        hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = saved


def _create(spec: ModelSpec, name: str) -> tuple[torch.nn.Module, Callable[[Image.Image], Any]]:
    if spec.pretrained == NO_WEIGHTS:
        log.warning(
            "RANDOM WEIGHTS: %s is built with --pretrained none; its search results mean "
            "nothing. Use it for tests and benchmarks only.",
            spec.architecture,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        return model, preprocess
    if spec.pretrained == "file":
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=spec.checkpoint
            )
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise ModelError(
                f"cannot load checkpoint {spec.checkpoint} into {name}: {exc}"
            ) from exc
        return model, preprocess
    try:
        with _offline_unless_reachable(spec):
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=spec.pretrained
            )
    except RuntimeError as exc:
        raise ModelError(
            f"cannot get the {spec.architecture} {spec.pretrained} weights: no network and none "
            "cached. Download them once on a machine with network access (they are cached under "
            "~/.cache/huggingface), or pass a local checkpoint with --pretrained FILE"
        ) from exc
    return model, preprocess


class Encoder:
    """One loaded model, shared by every query or indexing batch; outputs are L2-normalised
    float32 rows, so inner products are cosine similarities."""

    def __init__(self, spec: ModelSpec, device: str = "auto") -> None:
        self.spec = spec
        self.device = resolve_device(device)
        with contextlib.ExitStack() as stack:
            name = (
                stack.enter_context(_registered_config(spec.config))
                if spec.config
                else spec.architecture
            )
            model, self.preprocess = _create(spec, name)
            self.tokenizer = open_clip.get_tokenizer(name)
        # Half precision on CUDA doubles throughput; CPUs have no fast fp16 kernels.
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = model.to(self.device, dtype=self.dtype).eval()
        self.dim = spec.embed_dim
        size = self.model.visual.image_size
        self.image_size = max(size) if isinstance(size, tuple) else int(size)
        # JPEG draft decoding down to the model's input size stays indistinguishable from a
        # full decode once preprocessing has resized it: cosine 0.99999 on 12 MP photos with
        # ViT-B-32 (tests/test_model.py checks it on every run).
        self.decode_min_side = self.image_size
        log.info("model %s on %s (%s)", spec.describe(), self.device, self.dtype)

    @torch.inference_mode()
    def encode_batch(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode preprocessed images (N, 3, H, W), as the indexer's loader yields them."""
        pixels = pixels.to(self.device, dtype=self.dtype, non_blocking=True)
        return self._normalised(self.model.encode_image(pixels))

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.encode_batch(torch.stack([self.preprocess(image) for image in images]))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self._normalised(self.model.encode_text(tokens))

    @staticmethod
    def _normalised(features: torch.Tensor) -> np.ndarray:
        features = features.float()
        features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return features.cpu().numpy()
