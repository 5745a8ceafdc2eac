"""The exercise checkers of chapter 21 (cost): the solution and an alternative pass, the stub is 'not attempted', and a table
of named wrong implementations is rejected with the expected hint."""

import pytest

from llm_lab.core import CheckFailed
from llm_lab.cost import (check_param_count, check_train_flops_per_token, check_training_memory, check_kv_cache_bytes,
                          param_breakdown, param_count, training_memory)
from conftest import load_solution, stub

sol = load_solution('21_cost.py')


@pytest.mark.parametrize('check', [check_param_count, check_train_flops_per_token, check_training_memory, check_kv_cache_bytes])
def test_stub_is_not_attempted(check):
    r = check(stub)
    assert not r.attempted and not r.ok


def test_solutions_and_alternatives_pass():
    assert check_param_count(sol.my_param_count).ok
    assert check_param_count(lambda s: int(param_breakdown(s)['total'])).ok
    assert check_train_flops_per_token(sol.my_train_flops_per_token).ok
    assert check_train_flops_per_token(lambda s, T: int(round(sol.my_train_flops_per_token(s, T)))).ok   # an int is fine
    assert check_training_memory(sol.my_training_memory).ok
    assert check_training_memory(lambda s, b: {k: v for k, v in training_memory(s, b, checkpointing='none', dropout=True).items()}).ok
    assert check_kv_cache_bytes(lambda s, b, t, k: 2 * s.n_layer * s.n_kv_head * s.head_dim * t * b * k).ok


def _no_head(s): return sol.my_param_count(s) - (0 if s.tie_embeddings else s.vocab_size * s.d_model)
def _no_pos(s): return sol.my_param_count(s) - (s.context_len * s.d_model if s.pos == 'learned' else 0)
def _mha_kv(s):
    from dataclasses import replace
    return sol.my_param_count(replace(s, n_kv_head=s.n_head))

WRONG_COUNTS = {'untied head forgotten': (_no_head, 'head'), 'learned positions forgotten': (_no_pos, 'positions'),
                'K/V counted with every query head (GQA ignored)': (_mha_kv, 'GQA')}


@pytest.mark.parametrize('name', WRONG_COUNTS)
def test_param_count_rejects(name):
    fn, hint = WRONG_COUNTS[name]
    with pytest.raises(CheckFailed, match=hint):
        check_param_count(fn, seed=0, trials=50)


def _fwd_only(s, T): return sol.my_train_flops_per_token(s, T) / 3
def _no_attention_core(s, T): return sol.my_train_flops_per_token(s, T) - 3 * s.n_layer * 4 * T * s.n_head * s.head_dim
def _no_head_flops(s, T): return sol.my_train_flops_per_token(s, T) - 3 * 2 * s.d_model * s.vocab_size
def _six_n(s, T): return 6.0 * param_count(s)

WRONG_FLOPS = {'forward only': (_fwd_only, 'backward'), 'attention scores and values left out': (_no_attention_core, 'QK'),
               'output head left out': (_no_head_flops, 'head'), '6N (no attention, embeddings counted)': (_six_n, None)}


@pytest.mark.parametrize('name', WRONG_FLOPS)
def test_train_flops_rejects(name):
    fn, hint = WRONG_FLOPS[name]
    with pytest.raises(CheckFailed, match=hint or 'expected'):
        check_train_flops_per_token(fn, seed=0)


def _edit(**parts):
    def fn(s, b):
        m = sol.my_training_memory(s, b); n = sol.my_param_count(s)
        m.update({k: v(s, b, n, m) for k, v in parts.items()}); return m
    return fn

WRONG_MEMORY = {
    'Adam with one moment (4 bytes)': (_edit(optimizer=lambda s, b, n, m: 4 * n), '8 bytes'),
    'no fp32 master weights': (_edit(master=lambda s, b, n, m: 0), 'master'),
    'fp32 gradients': (_edit(gradients=lambda s, b, n, m: 4 * n), 'gradients'),
    'logits forgotten': (_edit(activations=lambda s, b, n, m: m['activations'] - 4 * s.context_len * b * s.vocab_size), 'logits'),
    'attention s² terms forgotten (34 sbh only)': (_edit(activations=lambda s, b, n, m: s.n_layer * 34 * s.context_len * b * s.d_model
                                                         + 4 * s.context_len * b * s.vocab_size), 'attention scores'),
    'missing key': (lambda s, b: {'weights': 2 * param_count(s)}, 'keys'),
}


@pytest.mark.parametrize('name', WRONG_MEMORY)
def test_training_memory_rejects(name):
    fn, hint = WRONG_MEMORY[name]
    with pytest.raises(CheckFailed, match=hint):
        check_training_memory(fn, seed=0)
