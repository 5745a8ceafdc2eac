"""Solutions to chapter 06 (the Transformer), "Your turn". Try the exercises first: nbs/2_transformers/06_transformer.ipynb."""
import torch
import torch.nn as nn

from llm_lab.model import GPT, GPTConfig, KVCache, MultiHeadAttention, make_mlp, make_norm, rotate_half


class MyBlock(nn.Module):
    "Pre-norm block: x + attn(norm_1(x)), then + mlp(norm_2(...))."
    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        # the reference's names, so Block's weights load into this block (and GPT(config, block=MyBlock) trains it)
        self.norm_1 = make_norm(config)
        self.attn = MultiHeadAttention(config, layer_idx)
        self.norm_2 = make_norm(config)
        self.mlp = make_mlp(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, token_positions: torch.Tensor | None = None) -> torch.Tensor:
        # each sub-layer reads a normalised copy of the stream and adds its output to the stream itself
        h = x + self.attn(self.norm_1(x), kv_cache, token_positions)
        # the MLP reads the stream *after* attention has written to it
        return h + self.mlp(self.norm_2(h))


def my_decode_step(model: GPT, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
    "One step of cached generation from the model's parts: token (B, 1) at position cache.pos -> next-token logits (B, V)."
    x = model.tok_emb(token)                                                     # (B, 1, d)
    if model.pos_emb is not None:                                                # learned positions: the token sits at cache.pos
        x = x + model.pos_emb(torch.tensor([cache.pos], device=token.device))
    for block in model.blocks:                                                   # each block stores its k, v at cache.pos
        x = block(x, cache)                                                      # (RoPE uses cache.pos as its offset)
    cache.advance(1)                                                             # only now, once every layer has stored its keys
    return model.lm_head(model.norm_f(x))[:, -1]                                 # (B, V)


def my_rope(x: torch.Tensor, offset: int) -> torch.Tensor:
    "Rotary position embedding of (B, H, T, D) queries or keys at positions offset..offset+T-1 (rotate-half, theta 10000)."
    D, T = x.shape[-1], x.shape[-2]
    inv_freq = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)    # θ_i = 10000^(-2i/D), (D/2,)
    pos = torch.arange(offset, offset + T, dtype=torch.float32)                  # (T,)
    angles = torch.outer(pos, inv_freq)                                          # (T, D/2)
    angles = torch.cat([angles, angles], dim=-1)                                 # channel i and i + D/2 share an angle
    return x * angles.cos() + rotate_half(x) * angles.sin()                      # rotate each pair (x_i, x_{i+D/2})


CHECKS = {'MyBlock': 'llm_lab.model:check_block',
          'my_decode_step': 'llm_lab.model:check_decode_step',
          'my_rope': 'llm_lab.model:check_rope'}
