"""Text encoding cut to the length of the longest query in a batch.

CLIP's text tower is causal and pools at the end-of-text token: a token attends only to those
before it, so the padding after the last end-of-text token of a batch changes no embedding.
open_clip's `encode_text` always runs all 77 positions; a 7-token query needs a tenth of that.
This is open_clip's own forward over the model's modules, on the first L positions, for the
towers where that is exact. A Hugging Face text tower (the multilingual models) masks its padding
and pools over the unmasked tokens, so it gets its own forward on tokens cut after the batch's
last non-padding one. Any other tower (non-causal, or pooled at the last position) keeps open_clip's
path.
"""

from __future__ import annotations

import open_clip
import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.transformer import text_global_pool

_END_POOLING = ("argmax", "eos")  # pooled at the end-of-text token, which trimming keeps


def trims(model: torch.nn.Module) -> bool:
    """Whether `encode_text` below is exact for this model."""
    return (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "attn_mask", None) is not None
        and model.text_pool_type in _END_POOLING
    )


def encode_text(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's CLIP.encode_text (unnormalised) over the positions up to the last
    end-of-text token of the batch; the same embedding, for a fraction of the work."""
    if _masked_hf_tower(model):
        used = (tokens != model.text.config.pad_token_id).any(dim=0).nonzero()
        return model.encode_text(tokens[:, : int(used.max()) + 1])
    if not trims(model):
        return model.encode_text(tokens)
    length = _used_length(model, tokens)
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    eos = getattr(model, "text_eos_id", None)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=eos)
    if model.text_projection is None:
        return x
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def _masked_hf_tower(model: torch.nn.Module) -> bool:
    text = getattr(model, "text", None)
    return isinstance(text, HFTextEncoder) and text.config.pad_token_id is not None


def _used_length(model: torch.nn.Module, tokens: torch.Tensor) -> int:
    if model.text_pool_type == "argmax":  # CLIP's end-of-text id is the largest in its vocabulary
        ends = tokens.argmax(dim=-1)
    else:
        ends = (tokens == model.text_eos_id).int().argmax(dim=-1)
    return int(ends.max()) + 1
