"""Text encoding cut to the length of the longest query in a batch.

CLIP's text tower is causal and pools at the end-of-text token: a token attends only to those
before it, so the padding after the last end-of-text token of a batch changes no embedding.
open_clip's `encode_text` always runs all 77 positions; a 7-token query needs a tenth of that.
This is open_clip's own forward over the model's modules, on the first L positions, for the
towers where that is exact. A Hugging Face text tower (the multilingual models) masks its padding
and pools over the unmasked tokens, so it gets its own forward on tokens cut after the batch's
last non-padding one. Any other tower (non-causal, or pooled at the last position) keeps open_clip's
path.

On a CPU the text tower's linear layers get their weights packed once into oneDNN's own layout
(`prepack`): an unpacked bf16 linear re-lays its weight out on every call, which is most of what
a one-query encode costs (ViT-B-32, 2 cores: 8.3 ms unpacked, 5.8 ms packed, the same outputs).
"""

from __future__ import annotations

import open_clip
import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.transformer import ResidualAttentionBlock, text_global_pool

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


def prepack(model: torch.nn.Module) -> bool:
    """Give the text tower's blocks packed copies of their weights, in place, where that computes
    what the block computed (open_clip's self-attention blocks, on a CPU whose torch has oneDNN's
    packed linear). Whether it did. The parameters stay, so the state dict is unchanged; the
    packed copies cost the tower's linear weights once more (76 MB for ViT-B-32 in bf16) and
    follow no later `.to()` or `load_state_dict`."""
    blocks = getattr(getattr(model, "transformer", None), "resblocks", [])
    packable = [block for block in blocks if _packable(block)]
    for block in packable:
        block.attn = _PackedSelfAttention(block.attn)
        block.mlp.c_fc = _PackedLinear(block.mlp.c_fc)
        block.mlp.c_proj = _PackedLinear(block.mlp.c_proj)
    return bool(packable)


def _packable(block: torch.nn.Module) -> bool:
    """An unmodified open_clip block whose attention only ever sees its own input (no cross
    attention), batch first, on the CPU."""
    attn = getattr(block, "attn", None)
    return (
        hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and torch.backends.mkldnn.is_available()
        and type(block) is ResidualAttentionBlock
        and not hasattr(block, "ln_1_kv")
        and isinstance(attn, torch.nn.MultiheadAttention)
        and attn.batch_first
        and attn.in_proj_weight is not None
        and attn.in_proj_bias is not None
        and attn.bias_k is None
        and attn.in_proj_weight.device.type == "cpu"
        and all(isinstance(block.mlp.get_submodule(n), torch.nn.Linear) for n in ("c_fc", "c_proj"))
    )


def _packed(weight: torch.Tensor) -> torch.Tensor:
    # Laid out for batches of 16 rows; any other count computes the same, the hint only tunes.
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 16)


def _linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class _PackedLinear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias  # the state dict's, unchanged
        self._packed = _packed(linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self._packed, self.bias)


class _PackedSelfAttention(torch.nn.Module):
    """nn.MultiheadAttention's forward for a block's self-attention, as open_clip calls it, over
    packed projections: query, key and value are one input."""

    def __init__(self, attn: torch.nn.MultiheadAttention) -> None:
        super().__init__()
        self.heads = attn.num_heads
        self.in_proj_weight, self.in_proj_bias = attn.in_proj_weight, attn.in_proj_bias
        self.out_proj = _PackedLinear(attn.out_proj)
        self._in_proj = _packed(attn.in_proj_weight)

    def forward(
        self,
        x: torch.Tensor,
        _key: torch.Tensor,
        _value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        batch, length, width = x.shape
        qkv = _linear(x, self._in_proj, self.in_proj_bias)
        q, k, v = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width)), None
