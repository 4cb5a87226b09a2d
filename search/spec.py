"""What identifies a collection's model, read from the command line or the manifest.

Kept apart from search.model so that opening a collection (stats, an indexer run with nothing to
encode) does not import torch and open_clip.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import ModelError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
NO_WEIGHTS = "none"


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
    embed_dim: int
    config: dict[str, Any] | None = None  # the model config, when it came from a JSON file
    checkpoint: str | None = None  # absolute path, when pretrained == "file"
    checkpoint_sha256: str | None = None

    @classmethod
    def from_args(cls, model: str | None, pretrained: str | None) -> ModelSpec:
        """Read `--model NAME|CONFIG.json` and `--pretrained TAG|FILE|none`."""
        import open_clip  # only here: opening an existing collection must not pay for it

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
        dim = int((config or open_clip.get_model_config(model))["embed_dim"])
        if pretrained is None:
            pretrained = DEFAULT_PRETRAINED if config is None and model == DEFAULT_MODEL else ""
            if not pretrained:
                raise ModelError(f"--pretrained is required with --model {model}")
        if pretrained == NO_WEIGHTS:
            return cls(architecture, NO_WEIGHTS, dim, config)
        if Path(pretrained).is_file():
            path = Path(pretrained).resolve()
            return cls(architecture, "file", dim, config, str(path), sha256_file(path))
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
        return cls(architecture, pretrained, dim, config)

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
            int(data["embed_dim"]),
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
            and self.embed_dim == other.embed_dim
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
