"""Reference solution of the 'adaptation-alignment' pack (for instructors; `llm-lab check adaptation-alignment` gives it full marks)."""
import math
import torch
import torch.nn as nn
import torch.nn.functional as F
from llm_lab.tuners import NF4_CODE


# ---- from solutions/13_peft.py
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


# ---- from solutions/15_rlhf.py
def my_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    "(advantages, returns), (B, T) each, zero where mask is False."
    m = mask.float()
    r, v = rewards * m, values * m                 # padding holds no reward and no value (V after the last token is 0)
    B, T = v.shape
    adv = torch.zeros(B, T)
    running = torch.zeros(B)                       # A_{t+1}
    for t in range(T - 1, -1, -1):                 # backwards: A_t = delta_t + gamma * lam * A_{t+1}
        v_next = v[:, t + 1] if t + 1 < T else torch.zeros(B)
        delta = r[:, t] + gamma * v_next - v[:, t]
        running = (delta + gamma * lam * running) * m[:, t]
        adv[:, t] = running
    return adv, (adv + v) * m                      # value targets: the advantage plus the baseline it was measured from


def my_clipped_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    "Scalar clipped surrogate loss, mean over the masked tokens."
    ratio = torch.exp(logps - old_logps)                       # pi_theta / pi_old per token
    A = advantages[:, None]                                    # one advantage per response, for every token
    surrogate = torch.min(ratio * A, ratio.clamp(1 - eps, 1 + eps) * A)   # pessimistic: the smaller objective
    m = mask.float()
    return -(surrogate * m).sum() / m.sum()                    # mean over all response tokens of the batch


# ---- from solutions/16_preference.py
def my_dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
                ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    "(B,) DPO losses, one per preference pair."
    chosen_ratio = chosen_logps - ref_chosen_logps           # log pi/pi_ref of the chosen answer: its implicit reward / beta
    rejected_ratio = rejected_logps - ref_rejected_logps
    return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))   # Bradley-Terry on implicit rewards, stably


def my_group_advantages(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    "(N, G) advantages, normalised within each group."
    mean = rewards.mean(dim=-1, keepdim=True)                # each prompt's own baseline
    std = rewards.std(dim=-1, keepdim=True)                  # sample std (unbiased), like GRPO and TRL
    return (rewards - mean) / (std + eps)                    # eps: a group of equal rewards gives 0, not nan
