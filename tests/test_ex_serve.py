"""The exercise checkers of chapter 22 (serving): the solutions and alternatives pass, the stubs are 'not attempted', and a
table of named wrong implementations is rejected with the expected hint."""

import pytest
import torch

from llm_lab.core import CheckFailed
from llm_lab.serve import check_append_slots, check_accept_or_resample, check_schedule_step, append_slots, schedule_step
from conftest import load_solution, stub

sol = load_solution('22_serving.py')


@pytest.mark.parametrize('check', [check_append_slots, check_accept_or_resample, check_schedule_step])
def test_stub_is_not_attempted(check):
    r = check(stub)
    assert not r.attempted and not r.ok


def _slots_loop(table, length, n, bs, free):      # allocates lazily, position by position (checks capacity first)
    if -(-(length + n) // bs) - len(table) > len(free): raise MemoryError
    out = []
    for p in range(length, length + n):
        if p // bs >= len(table): table.append(free.pop(0))   # takes from the front: any free block is fine
        out.append(table[p // bs] * bs + p % bs)
    return out


def _accept_ratio(p, q, x, u, g=None):             # divides, guarding q[x] == 0 (never drawn); inverse-CDF resample
    if q[x] > 0 and u < min(1.0, float(p[x] / q[x])): return True, x
    r = (p - q).clamp_min(0); r = r / r.sum()
    return False, int(torch.searchsorted(r.cumsum(0), torch.rand((), generator=g)).clamp(max=len(r) - 1))


def test_solutions_and_alternatives_pass():
    assert check_append_slots(sol.my_append_slots).ok and check_append_slots(append_slots).ok
    assert check_append_slots(_slots_loop).ok
    assert check_accept_or_resample(sol.my_accept_or_resample).ok and check_accept_or_resample(_accept_ratio).ok
    assert check_schedule_step(sol.my_schedule_step).ok and check_schedule_step(schedule_step).ok


# --- named wrong implementations -------------------------------------------------------------------------------------
def _logical_slots(t, length, n, bs, free): append_slots(t, length, n, bs, free); return list(range(length, length + n))
def _from_zero(t, length, n, bs, free): append_slots(t, length, n, bs, free); return [t[p // bs] * bs + p % bs for p in range(n)]
def _extra_block(t, length, n, bs, free):
    out = append_slots(t, length, n, bs, free)
    if (length + n) % bs == 0 and free: t.append(free.pop())       # opens a block when the last one is exactly full
    return out
def _no_memory_error(t, length, n, bs, free):
    try: return append_slots(t, length, n, bs, free)
    except MemoryError: return []

def _inverted_ratio(p, q, x, u, g=None):
    if p[x] > 0 and u < q[x] / p[x]: return True, x
    return sol.my_accept_or_resample(p, q, x, 2.0, g)
def _resample_from_p(p, q, x, u, g=None):
    if u * q[x] < p[x]: return True, x
    return False, int(torch.multinomial(p, 1, generator=g))
def _always_accept(p, q, x, u, g=None): return True, x

def _admit_before_retire(running, waiting, b, f):
    alive = [r for r in running if not r['done']]
    out = schedule_step(alive, waiting, b, f)
    return out | {'retired': [r['id'] for r in running if r['done']], 'free_blocks': out['free_blocks'] + sum(r['blocks'] for r in running if r['done'])}
def _overtaking(running, waiting, b, f):
    out = schedule_step(running, [], b, f); free, adm = out['free_blocks'], []
    for r in waiting:
        if len(out['running']) + len(adm) < b and r['blocks'] <= free: adm.append(r['id']); free -= r['blocks']
    return {'running': out['running'] + adm, 'retired': out['retired'], 'admitted': adm, 'free_blocks': free}
def _batch_ignored(running, waiting, b, f): return schedule_step(running, waiting, 10**6, f)

WRONG = [
    (check_append_slots, 'logical positions as slots', _logical_slots, 'logical positions'),
    (check_append_slots, 'slots of positions 0..n-1', _from_zero, 'length .. length+n-1'),
    (check_append_slots, 'a block too many at a full block', _extra_block, 'p % block_size == 0'),
    (check_append_slots, 'no MemoryError when out of blocks', _no_memory_error, None),
    (check_accept_or_resample, 'ratio q/p instead of p/q', _inverted_ratio, 'not q[x] / p[x]'),
    (check_accept_or_resample, 'resample from p, not the residual', _resample_from_p, 'residual max(p - q, 0)'),
    (check_accept_or_resample, 'always accept', _always_accept, None),
    (check_schedule_step, 'admits before retiring', _admit_before_retire, 'retire first'),
    (check_schedule_step, 'lets later requests overtake', _overtaking, 'first come, first served'),
    (check_schedule_step, 'ignores max_batch', _batch_ignored, None),
]


@pytest.mark.parametrize('check,name,fn,hint', WRONG, ids=[w[1] for w in WRONG])
def test_wrong_implementation_is_rejected(check, name, fn, hint):
    with pytest.raises(CheckFailed) as e: check(fn, seed=0)
    if hint: assert hint in str(e.value), str(e.value)
