"""Adaptation and alignment: your file for the 'adaptation-alignment' assignment (see README.md).

Write every class and function below, then grade yourself with

    llm-lab check adaptation-alignment student.py
"""
from __future__ import annotations
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_lab.tuners import NF4_CODE  # the 16 NF4 levels of the QLoRA paper (chapter 13)


class MyLoraLinear(nn.Module):
    "base(x) + (alpha / r) · B A x, with merge() and unmerge()."
    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        raise NotImplementedError  # your code here: self.base, self.lora_A (r, in), self.lora_B (out, r), the scaling
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # your code here
    def merge(self):
        raise NotImplementedError  # your code here
    def unmerge(self):
        raise NotImplementedError  # your code here


def my_nf4_quantize(w: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    "codes (n,) in 0..15 and absmax (n // block_size,)"
    raise NotImplementedError  # your code here

def my_nf4_dequantize(codes: torch.Tensor, absmax: torch.Tensor, block_size: int) -> torch.Tensor:
    "weights (n,) = NF4_CODE[code] · absmax of the block"
    raise NotImplementedError  # your code here


def my_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    "(advantages, returns), (B, T) each, zero where mask is False."
    raise NotImplementedError  # your code here


def my_clipped_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    "Scalar clipped surrogate loss, mean over the masked tokens."
    raise NotImplementedError  # your code here


def my_dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
                ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    "(B,) DPO losses, one per preference pair."
    raise NotImplementedError  # your code here


def my_group_advantages(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    "(N, G) advantages, normalised within each group."
    raise NotImplementedError  # your code here
