"""Building the open_clip model a collection is tied to, and encoding images and text with it."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import pickle
import socket
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import open_clip
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

from search import languages, text
from search.errors import ModelError
from search.imaging import InputLayout, model_input
from search.spec import NO_WEIGHTS, ModelSpec

log = logging.getLogger(__name__)

# Random weights are drawn from a fixed seed so that the indexer and a later query process
# build the same model: a `--pretrained none` collection stays searchable.
RANDOM_WEIGHTS_SEED = 0
HUB_PROBE_SECONDS = 3.0
GPU_BATCH = 256  # images an encoder call on a GPU
# On a CPU, a batch holds as many pixels as 32 images of 224 px, and at most CPU_BATCH_MOST
# images. ViT-B-32 encodes 178 img/s at 32 and 125 at 128 (its activations leave the caches),
# while a 64 px model's per-call costs rule at 32: the indexer ran 2,330 img/s at 32 and 2,850
# at 128 or 256 (2 cores).
CPU_BATCH_PIXELS = 32 * 224 * 224
CPU_BATCH_MOST = 256
# Checkpoints that open_clip converts weight by weight (open_clip/convert.py), without the
# strict load that makes skipping the random start safe (see _RandomStartSkipped).
BIG_VISION_SUFFIXES = (".npz", ".npy")


def default_batch_size(device_type: str, size: int) -> int:
    """Images an encoder call on `device_type` ("cpu", "cuda") for inputs of `size` px."""
    if device_type == "cuda":
        return GPU_BATCH
    return max(1, min(CPU_BATCH_MOST, CPU_BATCH_PIXELS // size**2))


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


def _model_config(spec: ModelSpec) -> dict[str, Any] | None:
    """The spec's config, with the Hugging Face text model and tokenizer read from its local
    folder when it has one."""
    if not spec.text_model:
        return spec.config
    config = copy.deepcopy(spec.config or open_clip.get_model_config(spec.architecture))
    text = config["text_cfg"]
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if key in text:
            text[key] = spec.text_model
    return config


def _hugging_face_tokenizer(name: str) -> bool:
    text = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    return bool(text.get("hf_tokenizer_name"))


def _tokenizer(spec: ModelSpec, name: str) -> Callable[..., torch.Tensor]:
    """open_clip's tokenizer for the model. A Hugging Face one comes from the same folder or hub
    repository as the text tower's config, so loading it first turns a missing package, network
    or file into one line before the model build would fail with a long traceback."""
    from_hub = _hugging_face_tokenizer(name) and not spec.text_model
    try:
        with _offline_unless_reachable(spec) if from_hub else contextlib.nullcontext():
            tokenizer = open_clip.get_tokenizer(name)
    except ImportError as exc:
        raise ModelError(
            f"{spec.architecture} needs the Hugging Face libraries ({exc.name}): "
            "pip install 'clipsearch[multilingual]'"
        ) from None
    except OSError as exc:  # transformers: neither network nor a cached copy
        raise ModelError(_no_text_model(spec, exc)) from None
    return languages.by_language(tokenizer)


def _no_text_model(spec: ModelSpec, exc: BaseException) -> str:
    if spec.text_model:
        return f"cannot load the text model in {spec.text_model}: {str(exc).splitlines()[0]}"
    return (
        f"{spec.architecture} needs its Hugging Face text model and tokenizer, and there is no "
        "network and no cached copy. Prepare a local folder once on a machine with network "
        "(README: 'Multilingual models offline') and pass it with --text-model FOLDER"
    )


class _RandomStartSkipped(TorchFunctionMode):
    """Build a model without drawing the random weights that a checkpoint then replaces: open_clip
    loads a checkpoint strictly, so a weight it lacks is an error, never a leftover. ViT-B-32
    from a local checkpoint builds in 0.4 s instead of 1.05 (2 cores); larger models save more.
    A torch function mode holds for this thread only, unlike patching torch.nn.init. What the
    towers fill otherwise (constants, attention masks) is built as before."""

    FILLS = frozenset(
        {
            torch.Tensor.uniform_,
            torch.Tensor.normal_,
            torch.nn.init.uniform_,
            torch.nn.init.normal_,
            torch.nn.init.kaiming_uniform_,
        }
    )

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in self.FILLS:  # the tensor is left as allocated
            return args[0] if args else kwargs["tensor"]
        if func is torch.randn:  # open_clip's embeddings start as `scale * torch.randn(...)`
            kwargs.pop("generator", None)
            return torch.empty(*args, **kwargs)
        return func(*args, **kwargs)


def _loading(checkpoint: str | None) -> contextlib.AbstractContextManager[object]:
    """The context to build a model in whose weights `checkpoint` (a file, or a tag's download
    when None) replaces."""
    if checkpoint and Path(checkpoint).suffix in BIG_VISION_SUFFIXES:
        return contextlib.nullcontext()
    return _RandomStartSkipped()


def _load_failure(exc: Exception) -> str:
    """Why a checkpoint did not load, in one line: torch's messages run over several (a weight
    of the wrong shape is one line each)."""
    if isinstance(exc, pickle.UnpicklingError):
        return "not a file of weights (torch.load with weights_only=True refused it)"
    if isinstance(exc, EOFError):
        return "the file ends early (empty or cut short)"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
    said = " ".join(lines[:2]) + more
    return said if isinstance(exc, RuntimeError) else f"{type(exc).__name__} {said}".strip()


Built = tuple[torch.nn.Module, Callable[[Image.Image], Any]]  # the model, open_clip's preprocess


def _create(spec: ModelSpec, name: str) -> Built:
    if spec.pretrained == NO_WEIGHTS:
        return _with_random_weights(spec, name)
    if spec.pretrained == "file":
        return _from_file(spec, name)
    return _from_tag(spec, name)


def _with_random_weights(spec: ModelSpec, name: str) -> Built:
    log.warning(
        "RANDOM WEIGHTS: %s is built with --pretrained none; its search results mean "
        "nothing. Use it for tests and benchmarks only.",
        spec.architecture,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        # Random means random for a Hugging Face text tower too: no base weights fetched.
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=None, pretrained_text=False
        )
    return model, preprocess


def _from_file(spec: ModelSpec, name: str) -> Built:
    try:
        with _loading(spec.checkpoint), warnings.catch_warnings():
            # Which pickle protocol a file uses says nothing to a user: only the outcome.
            warnings.filterwarnings("ignore", "Detected pickle protocol")
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=spec.checkpoint
            )
    except Exception as exc:  # whatever a file makes of torch.load, it is not the weights
        raise ModelError(
            f"cannot load checkpoint {spec.checkpoint} into {name}: {_load_failure(exc)}"
        ) from None
    return model, preprocess


def _from_tag(spec: ModelSpec, name: str) -> Built:
    try:
        with _offline_unless_reachable(spec), _loading(None):
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=spec.pretrained
            )
    except RuntimeError as exc:
        raise ModelError(
            f"cannot get the {spec.architecture} {spec.pretrained} weights: no network and none "
            "cached. Download them once on a machine with network access (they are cached under "
            "~/.cache/huggingface), or pass a local checkpoint: 'clipsearch index FOLDER "
            f"--model {spec.architecture} --pretrained FILE.bin'. To try clipsearch offline "
            "with random weights (meaningless results): 'clipsearch index FOLDER --model "
            f"{spec.architecture} --pretrained none'"
        ) from exc
    return model, preprocess


def _input_layout(cfg: dict[str, Any]) -> tuple[InputLayout, Sequence[float], Sequence[float]]:
    """The model's eval preprocessing, as the decode workers and `encode_pixels` apply it."""
    size = cfg["size"]
    height, width = (size, size) if isinstance(size, int) else size
    mode = cfg.get("resize_mode") or "shortest"
    if height != width or mode not in ("shortest", "squash"):
        raise ModelError(
            f"the model's image preprocessing ({mode} resize to {height}x{width}) is not "
            "supported: clipsearch handles square inputs, resized shortest-side or squashed"
        )
    interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
    layout = InputLayout(int(height), squash=mode == "squash", interpolation=interpolation)
    return layout, cfg["mean"], cfg["std"]


def fast_dtype(device: torch.device) -> torch.dtype:
    """Half precision on CUDA doubles throughput. On a CPU with AMX tiles, bf16 weights run
    ViT-B-32 4x faster per image and text queries 1.5-2x faster than float32, with cosine
    >= 0.9999 to the float32 embedding (benchmarks/cpu_encoder.py); other CPUs emulate bf16, so
    they keep float32."""
    if device.type == "cuda":
        return torch.float16
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return torch.bfloat16 if amx() else torch.float32


class Encoder:
    """One loaded model, shared by every query or indexing batch; outputs are L2-normalised
    float32 rows, so inner products are cosine similarities."""

    def __init__(self, spec: ModelSpec, device: str = "auto", exact: bool = False) -> None:
        """`exact`: float32 on any device, for comparing with open_clip's reference."""
        self.spec = spec
        self.device = resolve_device(device)
        with contextlib.ExitStack() as stack:
            config = _model_config(spec)
            name = stack.enter_context(_registered_config(config)) if config else spec.architecture
            self._tokenizer_name = name  # open_clip keeps a registered config's name
            # A Hugging Face one first: it says in one line what is missing.
            self._tokenizer: Callable[..., torch.Tensor] | None = (
                _tokenizer(spec, name) if _hugging_face_tokenizer(name) else None
            )
            model, self.preprocess = _create(spec, name)
        self.dtype = torch.float32 if exact else fast_dtype(self.device)
        self.model = model.to(self.device, dtype=self.dtype).eval()
        if not exact:
            text.prepack(self.model)
        self.dim = spec.embed_dim
        self.layout, mean, std = _input_layout(self.model.visual.preprocess_cfg)
        std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        # (pixel / 255 - mean) / std as one multiply-add: see `floats`.
        self._scale = 1 / (255 * std)
        self._shift = -torch.tensor(mean, device=self.device).view(1, 3, 1, 1) / std
        log.info("model %s on %s (%s)", spec.describe(), self.device, self.dtype)

    @property
    def tokenizer(self) -> Callable[..., torch.Tensor]:
        """open_clip's own BPE tokenizer is built when a text is first encoded: 0.1 s that an
        indexing run whose collection has its tag prompts embedded already never spends."""
        if self._tokenizer is None:
            self._tokenizer = _tokenizer(self.spec, self._tokenizer_name)
        return self._tokenizer

    @property
    def logit_scale(self) -> float:
        """The temperature the model was trained with: its cosines times this are logits."""
        return float(self.model.logit_scale.detach().exp())

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        """Encode (N, H, W, 3) uint8 images laid out by `model_input`, as decode workers hand
        them over: the float conversion and normalisation of open_clip's preprocessing happen
        here, on the GPU when there is one."""
        return self._normalised(self.model.encode_image(self.floats(pixels).to(self.dtype)))

    def floats(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """open_clip's ToTensor and Normalize of (N, H, W, 3) uint8 pixels, to rounding: one
        multiply-add instead of a divide, a subtract and a divide, a quarter of the passes over
        the batch (ViT-B-32, 32 images, 2 cores: 20.8 -> 3.2 ms). The bytes are laid out as
        channels first before it: the same multiply-add over a strided view ran at half the
        speed (224 px: 4.4 -> 2.3 ms, identical floats)."""
        pixels = torch.as_tensor(pixels).to(self.device, non_blocking=True)
        channels_first = pixels.permute(0, 3, 1, 2).contiguous()
        return torch.mul(channels_first, self._scale).add_(self._shift)

    @property
    def batch_size(self) -> int:
        """Images an encoder call, by default."""
        return default_batch_size(self.device.type, self.layout.size)

    def staging(self, batch_size: int) -> np.ndarray:
        """A (batch_size, size, size, 3) uint8 buffer to assemble `encode_pixels` batches in,
        for a caller that reuses it: it costs no page faults then, and on CUDA it is
        page-locked, so the copy to the GPU is one DMA transfer."""
        shape = (batch_size, self.layout.size, self.layout.size, 3)
        pinned = self.device.type == "cuda"
        return torch.empty(shape, dtype=torch.uint8, pin_memory=pinned).numpy()

    def encode_images(self, pictures: Sequence[np.ndarray]) -> np.ndarray:
        """Encode upright (height, width, 3) uint8 RGB pictures of any size (`Picture.pixels`)."""
        return self.encode_pixels(np.stack([model_input(p, self.layout) for p in pictures]))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self._normalised(text.encode_text(self.model, tokens))

    @staticmethod
    def _normalised(features: torch.Tensor) -> np.ndarray:
        features = features.float()
        features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return features.cpu().numpy()
