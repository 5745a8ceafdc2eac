"""Solutions to the exercises of chapter 16 (Preference optimisation), nbs/5_alignment/16_preference.ipynb.

Each function has the name of the stub it solves; `CHECKS` maps it to its checker in `llm_lab.preference`.
Try the exercise before reading on."""
import torch
import torch.nn.functional as F

CHECKS = {
    'my_dpo_loss': 'llm_lab.preference:check_dpo_loss',
    'my_group_advantages': 'llm_lab.preference:check_group_advantages',
}


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
