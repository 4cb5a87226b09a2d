"""A tiny multilingual CLIP built with no network, the way a user prepares a real one offline:
an XLM-R style Hugging Face text model folder (config + tokenizer, as `save_pretrained` writes
them), an open_clip model config whose text tower names that folder, and a checkpoint file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import TINY_CONFIG

# Mixed Chinese and English lines for the tokenizer to learn its pieces from.
LINES = [
    "海边的日落",
    "一只猫坐在草地上",
    "草地上的狗",
    "红色的苹果和绿色的叶子",
    "雪人站在雪地里",
    "城市夜景的灯光",
    "a cat sitting on the grass",
    "a dog on the beach at sunset",
    "a red apple with green leaves",
    "a snowman in the snow",
    "city lights at night",
    "两个人在市场上买水果",
]
CONTEXT = 32


def text_model_folder(folder: Path) -> Path:
    """config.json and tokenizer files of a 2-layer XLM-R, in `folder`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids 0-4
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token="<unk>")
    tokenizer.train_from_iterator(LINES * 20, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>",
        model_max_length=CONTEXT,
    )
    fast.save_pretrained(folder)
    XLMRobertaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=CONTEXT + 2,  # RoBERTa's positions start after the padding id
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    ).save_pretrained(folder)
    return folder


def model_config(path: Path, text_model: str) -> Path:
    """An open_clip config: the tiny test vision tower, an XLM-R text tower from `text_model`
    (a folder, or a hub name that --text-model replaces)."""
    config = json.loads(TINY_CONFIG.read_text())
    config["text_cfg"] = {
        "hf_model_name": text_model,
        "hf_tokenizer_name": text_model,
        "hf_pooler_type": "mean_pooler",
        "context_length": CONTEXT,
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

    folder = text_model_folder(root / "xlmr")
    config = model_config(root / "tiny-xlmr.json", str(folder))
    random = Encoder(ModelSpec.from_args(str(config), "none"), "cpu", exact=True)
    torch.save(random.model.state_dict(), root / "tiny-xlmr.pt")
    return Tiny(folder, config, root / "tiny-xlmr.pt")
