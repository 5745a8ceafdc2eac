"""Solutions to the exercises of chapter 09 (nbs/3_pretraining/09_pretraining.ipynb): try them yourself first.

Each function has the name of the notebook's stub; `CHECKS` maps it to the checker that grades it."""
import torch
import torch.nn as nn

from llm_lab.model import GPTConfig, forward_flops_per_token


def my_accumulated_grad(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, n_micro: int) -> torch.Tensor:
    "The gradient of ((x @ w - y)**2).mean() w.r.t. w, accumulated over n_micro micro-batches."
    for xm, ym in zip(x.chunk(n_micro), y.chunk(n_micro)):
        # each micro-batch's mean, divided by n_micro: the n_micro gradients then add up to the gradient of the full mean
        (((xm @ w - ym) ** 2).mean() / n_micro).backward()
    return w.grad


def my_train_step(model: nn.Module, opt: torch.optim.Optimizer, batches, grad_accum: int, grad_clip: float | None) -> float:
    "One optimizer step over grad_accum micro-batches; returns the mean micro-batch loss."
    losses = []
    for _ in range(grad_accum):
        x, y = next(batches)
        _, loss = model(x, y)
        (loss / grad_accum).backward()          # the gradients of the micro-batches add up in .grad
        losses.append(loss.detach())            # no .item() here: it would wait for the GPU after every micro-batch
    if grad_clip is not None:                   # clip once, on the whole accumulated gradient
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad()                             # ready for the next step
    return torch.stack(losses).mean().item()


def my_mfu(config: GPTConfig, tokens_per_s: float, peak: float) -> float:
    "Model-FLOPs utilisation as a fraction of the peak."
    train_flops_per_token = 3 * forward_flops_per_token(config)   # forward + backward (about twice the forward)
    return train_flops_per_token * tokens_per_s / peak


CHECKS = {
    'my_accumulated_grad': 'llm_lab.train:check_grad_accumulation',
    'my_train_step': 'llm_lab.train:check_train_step',
    'my_mfu': 'llm_lab.train:check_mfu',
}
