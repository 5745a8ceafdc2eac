"""The checkers of chapter 09's exercises: the stub is 'not written yet', correct variants pass, named mistakes are rejected with their hint."""

import pytest
import torch

from llm_lab.core import CheckFailed
from llm_lab.model import forward_flops_per_token
from llm_lab.train import check_grad_accumulation, check_mfu, check_train_step
from conftest import load_solution, stub

SOL = load_solution('09_pretraining.py')


@pytest.mark.parametrize('check', [check_grad_accumulation, check_mfu, check_train_step])
def test_stub_is_not_attempted(check):
    report = check(stub)
    assert report.attempted is False and not report.ok and 'not written yet' in str(report)


# ---------------------------------------------------------------- the training step
def step_zero_first(model, opt, batches, grad_accum, grad_clip):
    "Correct, written differently: zero first (set_to_none=False), a hand-written clip, the loss returned as a tensor."
    opt.zero_grad(set_to_none=False)
    total = 0.0
    for _ in range(grad_accum):
        x, y = next(batches)
        loss = model(x, y)[1] / grad_accum
        loss.backward(); total = total + loss.detach()
    if grad_clip is not None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        for g in grads: g.mul_(torch.clamp(grad_clip / (norm + 1e-6), max=1.0))
    opt.step()
    return total


def _step(bug):
    def step(model, opt, batches, grad_accum, grad_clip):
        losses = []
        for _ in range(grad_accum):
            x, y = next(batches)
            if bug == 'zero_grad_in_loop': opt.zero_grad()
            _, loss = model(x, y)
            (loss if bug == 'not_divided' else loss / grad_accum).backward()
            if bug == 'clip_in_loop' and grad_clip: torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            losses.append(loss.item())
        if grad_clip and bug != 'clip_in_loop': torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if bug != 'no_zero_grad': opt.zero_grad()
        return losses[-1] if bug == 'last_loss' else sum(losses) / len(losses)
    return step


def test_train_step_accepts_correct_variants():
    assert check_train_step(SOL.my_train_step).ok
    assert check_train_step(step_zero_first).ok


@pytest.mark.parametrize('bug,hint', [
    ('not_divided', 'divided by grad_accum'), ('clip_in_loop', 'clip once'), ('zero_grad_in_loop', 'once per optimizer step'),
    ('no_zero_grad', 'zero the gradients after opt.step()'), ('last_loss', 'expected the mean of the micro-batch losses')])
def test_train_step_rejects_named_mistakes(bug, hint):
    with pytest.raises(CheckFailed, match='expected') as e: check_train_step(_step(bug))
    assert hint in str(e.value), str(e.value)


# ---------------------------------------------------------------- gradient accumulation and MFU
def test_grad_accumulation_and_mfu_accept_solutions():
    assert check_grad_accumulation(SOL.my_accumulated_grad).ok and check_mfu(SOL.my_mfu).ok
    # another correct layout: one micro-batch at a time by index slicing, the loss summed then divided by B
    def by_slices(w, x, y, n):
        m = len(x) // n
        for i in range(n): (((x[i * m:(i + 1) * m] @ w - y[i * m:(i + 1) * m]) ** 2).sum() / len(x)).backward()
        return w.grad
    assert check_grad_accumulation(by_slices).ok


def _summed(w, x, y, n):
    for xm, ym in zip(x.chunk(n), y.chunk(n)): ((xm @ w - ym) ** 2).mean().backward()
    return w.grad


def _last_only(w, x, y, n):
    for xm, ym in zip(x.chunk(n), y.chunk(n)):
        w.grad = None; (((xm @ w - ym) ** 2).mean() / n).backward()
    return w.grad


@pytest.mark.parametrize('wrong,hint', [(_summed, 'divide each micro-batch'), (_last_only, None)])
def test_grad_accumulation_rejects(wrong, hint):
    with pytest.raises(CheckFailed) as e: check_grad_accumulation(wrong)
    assert hint is None or hint in str(e.value)


@pytest.mark.parametrize('wrong,hint', [
    (lambda c, tps, peak: forward_flops_per_token(c) * tps / peak, 'forward AND a backward'),       # forgot the backward pass
    (lambda c, tps, peak: 300 * forward_flops_per_token(c) * tps / peak, 'not a percentage'),       # a percentage
    (lambda c, tps, peak: 6 * c.num_params() * tps / peak if hasattr(c, 'num_params') else 0.0, None)])  # 6N: no attention, no config method
def test_mfu_rejects(wrong, hint):
    with pytest.raises(CheckFailed) as e: check_mfu(wrong)
    assert hint is None or hint in str(e.value)
