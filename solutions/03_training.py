"""Solutions to the exercises of chapter 03 (Training), nbs/1_foundations/03_training.ipynb.

Each function has the name of the stub it solves; `CHECKS` maps it to its checker in `llm_lab.optim`.
Try the exercise before reading on."""
import math

import torch

CHECKS = {
    'my_cross_entropy': 'llm_lab.optim:check_cross_entropy',
    'my_sgd_step': 'llm_lab.optim:check_sgd_step',
    'my_adam_step': 'llm_lab.optim:check_adam_step',
    'my_adamw_step': 'llm_lab.optim:check_adamw_step',
    'my_lr': 'llm_lab.optim:check_schedule',
}


def my_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    "Mean of log Σ e^z - z_y, with the row maximum factored out so that nothing overflows."
    m = logits.max(dim=-1, keepdim=True).values  # (N, 1)
    lse = m.squeeze(-1) + (logits - m).exp().sum(-1).log()  # (N,) log Σ_k e^{z_k}
    picked = logits[torch.arange(len(targets)), targets]  # (N,) z_y
    return (lse - picked).mean()


def my_sgd_step(param, grad, state, hp):
    "SGD as torch.optim.SGD does it: L2 decay into the gradient, velocity b = μb + g (b₁ = g₁), optional Nesterov."
    g = grad + hp['weight_decay'] * param
    if hp['momentum']:
        b = state.get('velocity')
        b = g.clone() if b is None else hp['momentum'] * b + g
        state['velocity'] = b
        g = g + hp['momentum'] * b if hp['nesterov'] else b
    return param - hp['lr'] * g


def _adam(param, grad, state, hp, decoupled: bool):
    "One Adam step; decoupled=True is AdamW."
    if not state: state.update(t=0, m=torch.zeros_like(param), v=torch.zeros_like(param))
    state['t'] += 1
    lr, wd = hp['lr'], hp['weight_decay']
    if decoupled: param = param * (1 - lr * wd)  # AdamW: shrink the weight itself
    else: grad = grad + wd * param  # Adam: L2, through the gradient (and so through m and v)
    state['m'] = hp['beta1'] * state['m'] + (1 - hp['beta1']) * grad
    state['v'] = hp['beta2'] * state['v'] + (1 - hp['beta2']) * grad * grad
    m_hat = state['m'] / (1 - hp['beta1'] ** state['t'])  # bias corrections: m and v started at 0
    v_hat = state['v'] / (1 - hp['beta2'] ** state['t'])
    return param - lr * m_hat / (v_hat.sqrt() + hp['eps'])  # eps outside the square root


def my_adam_step(param, grad, state, hp):
    "Adam with L2 weight decay (torch.optim.Adam)."
    return _adam(param, grad, state, hp, decoupled=False)


def my_adamw_step(param, grad, state, hp):
    "Adam with decoupled weight decay (torch.optim.AdamW)."
    return _adam(param, grad, state, hp, decoupled=True)


def my_lr(step, max_lr, warmup_steps, total_steps, min_lr):
    "Linear warmup (step s uses (s + 1)/warmup of max_lr), cosine decay to min_lr at total_steps, then min_lr."
    if step < warmup_steps: return max_lr * (step + 1) / warmup_steps
    if step >= total_steps: return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # in [0, 1)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))
