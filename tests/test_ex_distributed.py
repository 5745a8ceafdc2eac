"""The exercise checkers of chapter 11: each accepts the solution and another correct implementation, reports a stub as
not attempted without raising, and rejects a table of named wrong implementations (with the hint where one is given)."""
import importlib.util
from pathlib import Path

import pytest
import torch

from llm_lab.core import CheckFailed
from llm_lab.distributed import check_ring_all_reduce, check_zero1_step

_spec = importlib.util.spec_from_file_location('sol11', Path(__file__).resolve().parents[1] / 'solutions' / '11_distributed.py')
sol = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(sol)


def stub(*a): raise NotImplementedError


def test_stubs_not_attempted():
    for check in (check_ring_all_reduce, check_zero1_step):
        r = check(stub)
        assert not r.attempted and not r.ok


def test_solutions_pass():
    assert check_ring_all_reduce(sol.my_ring_all_reduce, seed=0).ok
    assert check_zero1_step(sol.my_zero1_sgd_step, seed=0).ok


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
