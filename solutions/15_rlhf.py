"""Solutions to the exercises of chapter 15 (RLHF), nbs/5_alignment/15_rlhf.ipynb.

Each function has the name of the stub it solves; `CHECKS` maps it to its checker in `llm_lab.rlhf`.
Try the exercise before reading on."""
import torch

CHECKS = {
    'my_gae': 'llm_lab.rlhf:check_gae',
    'my_clipped_loss': 'llm_lab.rlhf:check_clipped_loss',
    'my_value_loss': 'llm_lab.rlhf:check_value_loss',
}


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


def my_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float) -> torch.Tensor:
    "Scalar clipped value loss, half the mean over the masked tokens."
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)   # the prediction may move at most `clip` per batch
    worst = torch.max((values - returns) ** 2, (v_clipped - returns) ** 2)   # pessimistic: the larger error
    m = mask.float()
    return 0.5 * (worst * m).sum() / m.sum()
