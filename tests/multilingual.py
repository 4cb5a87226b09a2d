"""A tiny multilingual CLIP built with no network, the way a user prepares a real one offline:
an XLM-R style Hugging Face text model folder (config + tokenizer, as `save_pretrained` writes
them), an open_clip model config whose text tower names that folder, and a checkpoint file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from benchmarks.stand_in_text_model import nllb_folder, text_model_folder
from tests.conftest import TINY_CONFIG

CONTEXT = 32


def model_config(path: Path, text_model: str, **text: str) -> Path:
    """An open_clip config: the tiny test vision tower, a Hugging Face text tower from
    `text_model` (a folder, or a hub name that --text-model replaces), pooled as `text` says
    (XLM-R's mean by default)."""
    config = json.loads(TINY_CONFIG.read_text())
    config["text_cfg"] = {
        "hf_model_name": text_model,
        "hf_tokenizer_name": text_model,
        "hf_pooler_type": "mean_pooler",
        "context_length": CONTEXT,
        **text,
    }
    path.write_text(json.dumps(config))
    return path


@dataclass
class Tiny:
    folder: Path  # the Hugging Face text model: config and tokenizer
    config: Path  # open_clip's model config naming that folder
    checkpoint: Path  # random weights, saved

    @property
    def args(self) -> list[str]:
        return ["--model", str(self.config), "--pretrained", str(self.checkpoint)]


def build(root: Path) -> Tiny:
    """The folder, the config, and the model's random weights saved as a checkpoint file."""
    import torch

    from search.model import Encoder
    from search.spec import ModelSpec

    sizes = {"hidden": 32, "layers": 2, "heads": 2, "vocab_size": 0, "context": CONTEXT}
    folder = text_model_folder(root / "xlmr", **sizes)
    config = model_config(root / "tiny-xlmr.json", str(folder))
    random = Encoder(ModelSpec.from_args(str(config), "none"), "cpu", exact=True)
    torch.save(random.model.state_dict(), root / "tiny-xlmr.pt")
    return Tiny(folder, config, root / "tiny-xlmr.pt")


def nllb_config(root: Path) -> Path:
    """A tiny NLLB-CLIP-style model: NLLB's tokenizer and an M2M100 encoder, pooled at the first
    token and projected linearly, as open_clip's nllb-clip configs do."""
    folder = nllb_folder(root / "nllb", hidden=32, layers=2, context=CONTEXT)
    pooling = {"hf_pooler_type": "cls_pooler", "hf_proj_type": "linear"}
    return model_config(root / "tiny-nllb.json", str(folder), **pooling)
