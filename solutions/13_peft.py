"""Solutions to chapter 13's exercises (nbs/4_adaptation/13_peft.ipynb): a LoRA layer, NF4 quantisation both ways, attention
with a prefix. Each has the name of the stub it solves; CHECKS maps it to its checker in llm_lab.tuners."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_lab.tuners import NF4_CODE


class MyLoraLinear(nn.Module):
    "base(x) + (alpha / r) · B A x, with merge() and unmerge()."
    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base, self.scaling, self.merged = base, alpha / r, False          # alpha / r, not r / alpha
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))         # (r, in): random
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))        # (out, r): zero, so nothing changes at step 0

    def delta(self) -> torch.Tensor:                                         # (out, in)
        return self.scaling * self.lora_B @ self.lora_A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged: return y                                             # the update already sits in W
        return y + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T

    @torch.no_grad()
    def merge(self):
        if not self.merged: self.base.weight += self.delta(); self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged: self.base.weight -= self.delta(); self.merged = False


def my_nf4_quantize(w: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    "codes (n,) in 0..15 and absmax (n // block_size,)"
    blocks = w.reshape(-1, block_size)                                      # (n_blocks, block)
    absmax = blocks.abs().amax(dim=1)                                       # one constant per block
    normed = blocks / absmax[:, None]                                       # in [-1, 1]
    codes = (normed[..., None] - NF4_CODE).abs().argmin(dim=-1)             # nearest NF4 level
    return codes.reshape(-1), absmax


def my_nf4_dequantize(codes: torch.Tensor, absmax: torch.Tensor, block_size: int) -> torch.Tensor:
    "weights (n,) = NF4_CODE[code] · absmax of the block"
    return NF4_CODE[codes.long()] * absmax.repeat_interleave(block_size)


def my_prefix_attention(q, k, v, prefix_k, prefix_v):
    "Every query sees the whole prefix and the real keys up to its own position."
    T, P = q.shape[2], prefix_k.shape[2]
    K, V = torch.cat([prefix_k, k], dim=2), torch.cat([prefix_v, v], dim=2)  # (B, H, P+T, D)
    scores = q @ K.transpose(-2, -1) / math.sqrt(q.shape[-1])               # (B, H, T, P+T)
    allowed = torch.ones(T, P + T, dtype=torch.bool).tril(diagonal=P)       # bottom-right causal: query i sees keys <= P + i
    return F.softmax(scores.masked_fill(~allowed, float('-inf')), dim=-1) @ V


CHECKS = {'MyLoraLinear': 'llm_lab.tuners:check_lora_layer', 'my_nf4_quantize': 'llm_lab.tuners:check_nf4_quantize',
          'my_nf4_dequantize': 'llm_lab.tuners:check_nf4_dequantize', 'my_prefix_attention': 'llm_lab.tuners:check_prefix_attention'}
