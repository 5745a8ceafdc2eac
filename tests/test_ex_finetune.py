"""The exercise checkers of chapter 12 reject named wrong implementations (with their hint), report stubs as not attempted,
and accept alternative correct implementations."""
import pytest
import torch
import torch.nn.functional as F

from llm_lab.core import CheckFailed
from llm_lab.finetune import check_sft_loss, check_last_token_pool, check_packing_mask


def stub(*args): raise NotImplementedError


@pytest.mark.parametrize('check', [check_sft_loss, check_last_token_pool, check_packing_mask])
def test_stub_is_not_attempted(check, capsys):
    report = check(stub)
    assert report.attempted is False and not report.ok
    assert 'not written yet' in capsys.readouterr().out


# --- sft loss ------------------------------------------------------------------------------------------------
def sft_no_shift(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

def sft_counts_masked(logits, labels):
    l = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].clamp_min(0).flatten(), reduction='none')
    return l.mean()

def sft_mean_of_rows(logits, labels):  # averages per row first: wrong when rows have different numbers of labels
    return torch.stack([F.cross_entropy(lo[:-1], la[1:], ignore_index=-100) for lo, la in zip(logits, labels)]).mean()

@pytest.mark.parametrize('fn, hint', [(sft_no_shift, 'labels[:, 1:]'), (sft_counts_masked, 'left out of the mean'),
                                      (sft_mean_of_rows, None)], ids=['no shift', 'masked tokens counted', 'mean of row means'])
def test_sft_loss_rejects(fn, hint):
    with pytest.raises(CheckFailed) as e: check_sft_loss(fn, trials=20, seed=0)
    if hint: assert hint in str(e.value)

def test_sft_loss_accepts_alternative():
    def manual(logits, labels):
        t = labels[:, 1:]; keep = t != -100
        logp = logits[:, :-1].log_softmax(-1).gather(-1, t.clamp_min(0)[..., None])[..., 0]
        return -(logp * keep).sum() / keep.sum()
    assert check_sft_loss(manual, seed=1).ok


# --- last-token pooling ---------------------------------------------------------------------------------------
def pool_last_position(h, ids, pad): return h[:, -1]
def pool_first_pad(h, ids, pad): return h[torch.arange(len(h)), (ids == pad).int().argmax(-1)]
def pool_count_minus_one(h, ids, pad):  # right if pads only trail and the pad id never occurs in the text; here ids >= 10 so...
    return h[torch.arange(len(h)), (ids != pad).sum(-1) - 1]

@pytest.mark.parametrize('fn, hint', [(pool_last_position, 'position -1'), (pool_first_pad, 'off by one')],
                         ids=['last position', 'first pad position'])
def test_pool_rejects(fn, hint):
    with pytest.raises(CheckFailed) as e: check_last_token_pool(fn, trials=30, seed=0)
    assert hint in str(e.value)

def test_pool_accepts_alternative():
    assert check_last_token_pool(pool_count_minus_one, seed=2).ok   # another correct way for right padding


# --- packing mask ---------------------------------------------------------------------------------------------
def mask_docs_only(d): return d[:, :, None] == d[:, None, :]
def mask_causal_only(d): T = d.shape[-1]; return torch.ones(len(d), T, T, dtype=torch.bool).tril()
def mask_upper(d): T = d.shape[-1]; return (d[:, :, None] == d[:, None, :]) & torch.ones(T, T, dtype=torch.bool).triu()

@pytest.mark.parametrize('fn, hint', [(mask_docs_only, 'causal mask'), (mask_causal_only, 'previous documents'), (mask_upper, None)],
                         ids=['same document only', 'causal only', 'transposed (future)'])
def test_packing_rejects(fn, hint):
    with pytest.raises(CheckFailed) as e: check_packing_mask(fn, trials=30, seed=0)
    if hint: assert hint in str(e.value)

def test_packing_accepts_alternative():
    def loops(d):
        N, T = d.shape
        out = torch.zeros(N, T, T, dtype=torch.long)            # ints, not bools: also accepted
        for n in range(N):
            for i in range(T):
                for j in range(i + 1): out[n, i, j] = int(d[n, i] == d[n, j])
        return out.bool()
    assert check_packing_mask(loops, seed=3).ok
