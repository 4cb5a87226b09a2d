"""A stand-in for a Hugging Face XLM-R text model folder, made with no network: a config of the
size asked for and a tokenizer trained here on mixed Chinese and English lines, saved as
`save_pretrained` saves the real ones. With random weights it costs what the real model costs
(only the token counts differ a little); the tests use a tiny one.

    python benchmarks/stand_in_text_model.py /tmp/xlmr-b32/text          # xlm-roberta-base's shape
    python benchmarks/stand_in_text_model.py /tmp/xlmr-b32/text \
        --checkpoint-for xlm-roberta-base-ViT-B-32   # and random weights beside it, as a file

The second is the folder the README's offline recipe prepares on a connected machine (text/ and
open_clip_pytorch_model.bin), with random weights: the recipe can be followed with no network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


def text_model_folder(
    folder: Path,
    hidden: int = 768,
    layers: int = 12,
    heads: int = 12,
    vocab_size: int = 250_002,
    context: int = 512,
) -> Path:
    """config.json and tokenizer files of an XLM-R (xlm-roberta-base's shape by default)."""
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
        model_max_length=context,
    )
    fast.save_pretrained(folder)
    XLMRobertaConfig(
        vocab_size=max(vocab_size, tokenizer.get_vocab_size()),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=context + 2,  # RoBERTa's positions start after the padding id
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    ).save_pretrained(folder)
    return folder


def nllb_folder(folder: Path, hidden: int = 1024, layers: int = 12, context: int = 512) -> Path:
    """config.json and tokenizer files of an NLLB encoder (NLLB-200-distilled-600M's shape by
    default): an M2M100 config and NLLB's tokenizer, which marks each text with its language."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import M2M100Config, NllbTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    bpe.train_from_iterator(LINES * 20, BpeTrainer(vocab_size=400, special_tokens=specials))
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(pair) for pair in trained["merges"]]
    tokenizer = NllbTokenizer(vocab=trained["vocab"], merges=merges, src_lang="eng_Latn")
    tokenizer.model_max_length = context
    tokenizer.save_pretrained(folder)
    M2M100Config(
        vocab_size=len(tokenizer),  # the language codes come after the trained pieces
        d_model=hidden,
        encoder_layers=layers,
        decoder_layers=1,  # open_clip keeps the encoder only
        encoder_attention_heads=max(2, hidden // 64),
        decoder_attention_heads=max(2, hidden // 64),
        encoder_ffn_dim=4 * hidden,
        decoder_ffn_dim=4 * hidden,
        max_position_embeddings=context,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    ).save_pretrained(folder)
    return folder


def random_checkpoint(architecture: str, text_model: Path, path: Path) -> None:
    """The whole model's random weights, saved as an open_clip checkpoint file."""
    import torch

    from search.model import Encoder
    from search.spec import ModelSpec

    spec = ModelSpec.from_args(architecture, "none", str(text_model))
    torch.save(Encoder(spec, "cpu", exact=True).model.state_dict(), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--checkpoint-for", metavar="ARCHITECTURE")
    args = parser.parse_args()
    text_model_folder(args.folder)
    if args.checkpoint_for:
        path = args.folder.parent / "open_clip_pytorch_model.bin"
        random_checkpoint(args.checkpoint_for, args.folder, path)


if __name__ == "__main__":
    main()
