"""The exercise checkers of chapter 11: each accepts the solution and another correct implementation, reports a stub as
not attempted without raising, and rejects a table of named wrong implementations (with the hint where one is given)."""

import pytest
import torch

from llm_lab.core import CheckFailed
from llm_lab.distributed import check_ring_all_reduce, check_zero1_step, check_1f1b_schedule
from conftest import load_solution, stub

sol = load_solution('11_distributed.py')


def test_stubs_not_attempted():
    for check in (check_ring_all_reduce, check_zero1_step, check_1f1b_schedule):
        r = check(stub)
        assert not r.attempted and not r.ok


def test_solutions_pass():
    assert check_ring_all_reduce(sol.my_ring_all_reduce, seed=0).ok
    assert check_zero1_step(sol.my_zero1_sgd_step, seed=0).ok
    assert check_1f1b_schedule(sol.my_1f1b_schedule, seed=0).ok


def ring_left(x, rank, world, send, recv):  # correct too: the ring runs the other way round
    return sol.my_ring_all_reduce(x, (world - rank) % world, world,
                                  lambda t, d: send(t, (world - d) % world), lambda t, s: recv(t, (world - s) % world))


def zero1_other_layout(param, grad, momentum, rank, world, all_gather, lr, mu):  # correct: views instead of slices
    k = param.numel() // world
    momentum.mul_(mu).add_(grad.view(world, k)[rank])
    return torch.stack(all_gather(param.view(world, k)[rank] - lr * momentum)).reshape(-1)


def test_alternative_correct_implementations_pass():
    assert check_ring_all_reduce(ring_left, seed=1).ok
    assert check_zero1_step(zero1_other_layout, seed=1).ok


def ring_everyone(x, rank, world, send, recv):
    for d in range(world):
        if d != rank: send(x, d)
    out = x.clone()
    for s in range(world):
        if s != rank: b = torch.empty_like(x); recv(b, s); out += b
    return out

def ring_adds_own(x, rank, world, send, recv):
    chunks = list(x.clone().reshape(-1).tensor_split(world)); right, left = (rank + 1) % world, (rank - 1) % world
    for s in range(world - 1):
        send(chunks[(rank - s) % world], right); buf = torch.empty_like(chunks[0]); recv(buf, left)
        chunks[(rank - s - 1) % world] += chunks[(rank - s - 1) % world]           # adds its own chunk, not the received one
    for s in range(world - 1):
        send(chunks[(rank + 1 - s) % world], right); recv(chunks[(rank - s) % world], left)
    return torch.cat(chunks).reshape(x.shape)

def ring_no_allgather(x, rank, world, send, recv):
    chunks = list(x.clone().reshape(-1).tensor_split(world)); right, left = (rank + 1) % world, (rank - 1) % world
    for s in range(world - 1):
        send(chunks[(rank - s) % world], right); buf = torch.empty_like(chunks[0]); recv(buf, left)
        chunks[(rank - s - 1) % world] += buf
    return torch.cat(chunks).reshape(x.shape)

def ring_in_place(x, rank, world, send, recv):
    out = sol.my_ring_all_reduce(x, rank, world, send, recv); x.copy_(out); return out

RING_WRONG = {
    'sends the whole tensor to everyone': (ring_everyone, 'never the whole tensor'),
    'adds its own chunk instead of the received one': (ring_adds_own, 'adds the one from the left'),
    'forgets the all-gather phase': (ring_no_allgather, 'reduce-scatter'),
    'modifies x in place': (ring_in_place, 'x.clone()'),
    'returns x unchanged': (lambda x, *a: x.clone(), None),
}

@pytest.mark.parametrize('name', list(RING_WRONG))
def test_ring_wrong_rejected(name):
    fn, hint = RING_WRONG[name]
    with pytest.raises(CheckFailed) as e: check_ring_all_reduce(fn, seed=0)
    if hint: assert hint in str(e.value)


def z_momentum_copy(param, grad, momentum, rank, world, all_gather, lr, mu):
    k = param.numel() // world; m = mu * momentum + grad[rank * k:(rank + 1) * k]   # momentum not kept
    return torch.cat(all_gather(param[rank * k:(rank + 1) * k] - lr * m))

def z_wrong_slice(param, grad, momentum, rank, world, all_gather, lr, mu):
    k = param.numel() // world; r = (rank + 1) % world
    momentum.mul_(mu).add_(grad[r * k:(r + 1) * k]); return torch.cat(all_gather(param[r * k:(r + 1) * k] - lr * momentum))

def z_no_gather(param, grad, momentum, rank, world, all_gather, lr, mu):
    k = param.numel() // world; momentum.mul_(mu).add_(grad[rank * k:(rank + 1) * k])
    p = param.clone(); p[rank * k:(rank + 1) * k] -= lr * momentum; return p

def z_grad_not_momentum(param, grad, momentum, rank, world, all_gather, lr, mu):
    k = param.numel() // world; momentum.mul_(mu).add_(grad[rank * k:(rank + 1) * k])
    return torch.cat(all_gather(param[rank * k:(rank + 1) * k] - lr * grad[rank * k:(rank + 1) * k]))

ZERO_WRONG = {
    'momentum not updated in place': (z_momentum_copy, 'in place'),
    "another rank's slice": (z_wrong_slice, None),
    'no all-gather (other slices stale)': (z_no_gather, 'all_gather'),
    'steps with the gradient, not the momentum': (z_grad_not_momentum, None),
}

@pytest.mark.parametrize('name', list(ZERO_WRONG))
def test_zero1_wrong_rejected(name):
    fn, hint = ZERO_WRONG[name]
    with pytest.raises(CheckFailed) as e: check_zero1_step(fn, seed=0)
    if hint: assert hint in str(e.value)


def f1b_by_simulation(stage, stages, micro):   # correct too: built by a different rule (a forward whenever fewer than p - stage are held)
    order, f, b = [], 0, 0
    while b < micro:
        if f < micro and f - b < stages - stage: order.append(('F', f)); f += 1
        else: order.append(('B', b)); b += 1
    return order


def f1b_gpipe(stage, stages, micro): return [('F', i) for i in range(micro)] + [('B', i) for i in range(micro)]

def f1b_no_warmup(stage, stages, micro): return [x for i in range(micro) for x in (('F', i), ('B', i))]

def f1b_warmup_too_long(stage, stages, micro):
    warm = min(stages - stage, micro); order, f = [('F', i) for i in range(warm)], warm
    for b in range(micro):
        if f < micro: order.append(('F', f)); f += 1
        order.append(('B', b))
    return order

def f1b_backward_first(stage, stages, micro): return [x for i in range(micro) for x in (('B', i), ('F', i))]

def f1b_missing_last(stage, stages, micro): return sol.my_1f1b_schedule(stage, stages, micro)[:-1]

F1B_WRONG = {
    'GPipe order (holds all m)': (f1b_gpipe, 'that is GPipe'),
    'no warm-up (one forward, one backward from the start)': (f1b_no_warmup, 'warm-up forwards'),
    'warm-up of p - stage forwards': (f1b_warmup_too_long, 'not p - stage'),
    'backward before its forward': (f1b_backward_first, 'before its forward'),
    'forgets the last backward': (f1b_missing_last, 'once for each'),
}

def test_1f1b_alternative_passes():
    assert check_1f1b_schedule(f1b_by_simulation, seed=1).ok


@pytest.mark.parametrize('name', list(F1B_WRONG))
def test_1f1b_wrong_rejected(name):
    fn, hint = F1B_WRONG[name]
    with pytest.raises(CheckFailed) as e: check_1f1b_schedule(fn, seed=0)
    if hint: assert hint in str(e.value)
