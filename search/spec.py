"""What identifies a collection's model, read from the command line or the manifest.

Kept apart from search.model so that opening a collection (stats, an indexer run with nothing to
encode) does not import torch and open_clip.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from search.errors import ModelError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
NO_WEIGHTS = "none"

# Text towers and tokenizers trained on many languages, by the names open_clip gives them (model
# names, Hugging Face ids) and by the model_type of a local Hugging Face config.
MULTILINGUAL_MARKERS = ("xlm-roberta", "nllb", "m2m_100", "i18n", "mt5", "multilingual")
# A local text-model folder, as `save_pretrained` writes it: the config and one tokenizer form.
TEXT_CONFIG = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "spiece.model", "vocab.json")
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json", "merges.txt")


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
    text_model: str | None = None  # absolute path of a local Hugging Face text-model folder
    text_model_sha256: str | None = None  # of its config and tokenizer files

    @classmethod
    def from_args(
        cls,
        model: str | None,
        pretrained: str | None,
        text_model: str | None = None,
        recorded: ModelSpec | None = None,
    ) -> ModelSpec:
        """Read `--model NAME|CONFIG.json`, `--pretrained TAG|FILE|none` and `--text-model
        FOLDER`. `recorded`: the model of the collection they are given for. What open_clip
        checked when the collection recorded it (a name, a tag, a Hugging Face text tower) is
        not checked again: importing open_clip takes about 3 s, five times what a re-run with
        nothing to do takes without it."""
        spec = cls._from_model_args(model, pretrained, recorded)
        if text_model is None:
            return spec
        checked = _checked(recorded, spec.architecture, spec.config)
        if not (checked and checked.text_model):
            _check_hf_text(spec)
        folder = Path(text_model).resolve()
        return replace(spec, text_model=str(folder), text_model_sha256=text_model_digest(folder))

    @classmethod
    def _from_model_args(
        cls, model: str | None, pretrained: str | None, recorded: ModelSpec | None
    ) -> ModelSpec:
        model = model or DEFAULT_MODEL
        config = None
        architecture = model
        if model.endswith(".json") or os.path.sep in model:
            config = _read_model_config(Path(model))
            architecture = Path(model).stem
        checked = _checked(recorded, architecture, config)
        if config is not None:
            dim = int(config["embed_dim"])
        else:
            dim = checked.embed_dim if checked else _architecture_dim(model)
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
        if not (checked and checked.pretrained == pretrained):
            _check_tag(architecture, pretrained)
        return cls(architecture, pretrained, dim, config)

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "pretrained": self.pretrained,
            "config": self.config,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "text_model": self.text_model,
            "text_model_sha256": self.text_model_sha256,
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
            data.get("text_model"),
            data.get("text_model_sha256"),
        )

    def same_model(self, other: ModelSpec) -> bool:
        """Same weights, architecture and tokenizer; a checkpoint or a text-model folder may
        move, their content may not change."""
        return self.identity == other.identity

    @property
    def identity(self) -> str:
        """What `same_model` compares, as one digest: the key of what a model computed once."""
        fields = [
            self.architecture,
            self.pretrained,
            self.config,
            self.checkpoint_sha256,
            self.text_model_sha256,
            self.embed_dim,
        ]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    @property
    def multilingual(self) -> bool:
        """Whether the text side was trained on many languages (by its names; no import)."""
        text = (self.config or {}).get("text_cfg", {})
        names = [self.text_model, text.get("hf_model_name"), text.get("hf_tokenizer_name")]
        # A local folder by its config's model_type, whatever the folder is called.
        names += [_model_type(Path(name)) for name in names if name and Path(name).is_dir()]
        found = " ".join(str(name).lower() for name in [self.architecture, *names] if name)
        return any(marker in found for marker in MULTILINGUAL_MARKERS)

    def verify_files(self) -> None:
        """A collection found on disk names its checkpoint and text-model folder by path: make
        sure they are still what the vectors came from."""
        if self.text_model:
            if not Path(self.text_model).is_dir():
                raise ModelError(
                    f"the collection's text model folder {self.text_model} is missing: put it "
                    "back, or index into a new collection"
                )
            if text_model_digest(Path(self.text_model)) != self.text_model_sha256:
                raise ModelError(
                    f"the text model in {self.text_model} changed since the collection was built"
                )
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
        text = f", text model from {self.text_model}" if self.text_model else ""
        return f"{self.architecture}{source}, {weights}{text}"


def text_model_digest(folder: Path) -> str:
    """The sha256 of a local text model's config and tokenizer files, in name order; one line
    saying what is missing when the folder is not complete."""
    if not folder.is_dir():
        raise ModelError(f"--text-model {folder}: not a folder")
    if not (folder / TEXT_CONFIG).is_file():
        raise ModelError(
            f"--text-model {folder} has no {TEXT_CONFIG}: save it there with "
            "transformers.AutoConfig.from_pretrained(NAME).save_pretrained(FOLDER)"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(
            f"--text-model {folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)}): save it "
            "there with transformers.AutoTokenizer.from_pretrained(NAME).save_pretrained(FOLDER)"
        )
    digest = hashlib.sha256()
    for name in sorted((TEXT_CONFIG, *TOKENIZER_FILES, *TOKENIZER_EXTRAS)):
        if (folder / name).is_file():
            digest.update(f"{name}\n{sha256_file(folder / name)}\n".encode())
    return digest.hexdigest()


def _checked(
    recorded: ModelSpec | None, architecture: str, config: dict[str, Any] | None
) -> ModelSpec | None:
    """`recorded`, if it is this architecture: open_clip checked its names when it was made."""
    if recorded is None or (recorded.architecture, recorded.config) != (architecture, config):
        return None
    return recorded


def _architecture_dim(name: str) -> int:
    """The embedding width of an architecture open_clip knows by name."""
    import open_clip  # only here: opening an existing collection must not pay for it

    config = open_clip.get_model_config(name)
    if config is None:
        raise ModelError(
            f"unknown model {name!r}: give an open_clip architecture "
            f"(e.g. {DEFAULT_MODEL}) or the path of a model-config JSON file"
        )
    return int(config["embed_dim"])


def _check_tag(architecture: str, pretrained: str) -> None:
    import open_clip

    if not open_clip.get_pretrained_cfg(architecture, pretrained):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(architecture)) or "none"
        raise ModelError(
            f"--pretrained {pretrained!r} is neither a file nor a known tag of {architecture} "
            f"(known tags: {tags})"
        )


def _check_hf_text(spec: ModelSpec) -> None:
    import open_clip

    text = (spec.config or open_clip.get_model_config(spec.architecture) or {})["text_cfg"]
    if not {"hf_model_name", "hf_tokenizer_name"} & set(text):
        raise ModelError(
            f"--text-model is for models with a Hugging Face text tower or tokenizer (such as "
            f"xlm-roberta-base-ViT-B-32); {spec.architecture} has its own"
        )


def _model_type(folder: Path) -> str:
    try:
        return str(json.loads((folder / TEXT_CONFIG).read_text()).get("model_type", ""))
    except (OSError, ValueError, AttributeError):
        return ""


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
