"""Tests of llm_lab.kernels.flash (chapter 19): FlashAttention forward and backward against float64 torch.

Through Triton's interpreter on a CPU (small shapes), compiled on a GPU. Tolerances per dtype, on the output
and on dq, dk, dv (inputs drawn from N(0, 1), errors measured against float64 SDPA on the same rounded inputs):
fp32 5e-6, fp16 5e-3, bf16 6e-2, a few times the largest error measured (P is rounded to the input dtype before the P·V and dS·K products, as in
every FlashAttention implementation).
"""
import math
import pytest
import torch
import torch.nn.functional as F
from llm_lab.core import has_triton, CheckFailed

pytestmark = pytest.mark.skipif(not has_triton(), reason="Triton is not installed (it has Linux wheels only): "
                                "pip install 'llm_lab[kernels]' to run the kernel tests")

from llm_lab.kernels import flash, ops

DEV = 'cuda' if (torch.cuda.is_available() and not ops.INTERPRETED) else 'cpu'
TOL = {torch.float32: 5e-6, torch.float16: 5e-3, torch.bfloat16: 6e-2}  # measured max 8e-7, 1.4e-3, 2.3e-2 (test_flash_matches_sdpa)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def compare(B, H, Tq, Tk, D, causal, dtype, scale=None, seed=0, configs=None):
    q, k, v = rand(B, H, Tq, D, seed=seed), rand(B, H, Tk, D, seed=seed + 1), rand(B, H, Tk, D, seed=seed + 2)
    do = rand(B, H, Tq, D, seed=seed + 3)
    q, k, v, do = (t.to(dtype).double() for t in (q, k, v, do))                  # the inputs as rounded
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*ref, is_causal=causal, scale=scale).backward(do)
    o_ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    got = [t.to(dtype).to(DEV).requires_grad_() for t in (q, k, v)]
    if configs is None:
        o = flash.flash_attention(*got, causal=causal, scale=scale)
        o.backward(do.to(dtype).to(DEV))
    else:                                                                          # one tile configuration, no autotuning
        sc = D ** -0.5 if scale is None else scale
        o, lse = flash._flash_forward(*got, causal, sc, config=configs[0])
        grads = flash._flash_backward(*got, o, lse, do.to(dtype).to(DEV), causal, sc, configs=configs[1:])
        for t, g in zip(got, grads): t.grad = g
    assert o.dtype == dtype and o.shape == (B, H, Tq, D)
    errs = {'o': (o.double().cpu() - o_ref).abs().max().item()}
    errs.update({n: (g.grad.double().cpu() - r.grad).abs().max().item() for n, g, r in zip('qkv', got, ref)})
    assert max(errs.values()) < TOL[dtype], errs


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('T,D', [(37, 16), (70, 64), (1, 32)])
def test_flash_matches_sdpa(T, D, dtype, causal):
    compare(1, 2, T, T, D, causal, dtype)


@pytest.mark.parametrize('D', [24, 40, 128])          # non-powers of two are padded; 128 is the largest supported
def test_flash_head_dims(D):
    compare(1, 1, 33, 33, D, True, torch.float32)


@pytest.mark.parametrize('Tq,Tk,causal', [(20, 45, False), (20, 45, True), (45, 20, True)])
def test_flash_unequal_lengths_top_left_causal(Tq, Tk, causal):
    compare(2, 1, Tq, Tk, 16, causal, torch.float32)   # causal is top-left aligned, like torch's is_causal


def test_flash_scale_and_batch():
    compare(3, 2, 17, 17, 16, True, torch.float32, scale=0.3)


def test_flash_strided_inputs_like_the_model():
    B, T, H, D = 2, 29, 3, 16
    qkv = torch.randn(B, T, 3, H, D, dtype=torch.float32).to(DEV)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))   # (B, H, T, D) views with odd strides, no copy
    assert not q.is_contiguous()
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (flash.flash_attention(q, k, v) - ref).abs().max() < 1e-5
    q2 = q.transpose(-1, -2).contiguous().transpose(-1, -2)       # last dim not contiguous: copied
    assert (flash.flash_attention(q2, k, v) - ref).abs().max() < 1e-5


def test_flash_matches_llm_lab_attention_and_torch_blocked():
    from llm_lab.attention import scaled_dot_product_attention
    q, k, v = (rand(2, 2, 37, 32, seed=s).float().to(DEV) for s in range(3))
    for causal in (True, False):
        ref = scaled_dot_product_attention(q, k, v, is_causal=causal)
        assert (flash.flash_attention(q, k, v, causal) - ref).abs().max() < 1e-5
        o, lse = flash.flash_attention_torch(q, k, v, causal, block_m=8, block_n=16)
        assert (o - ref).abs().max() < 1e-5
        s = (q @ k.transpose(-1, -2)) / math.sqrt(32)
        if causal: s = s.masked_fill(torch.ones(37, 37, dtype=torch.bool, device=DEV).triu(1), -math.inf)
        assert (lse - torch.logsumexp(s, -1)).abs().max() < 1e-5


def test_flash_errors(monkeypatch):
    q = torch.randn(1, 2, 8, 16).to(DEV)
    with pytest.raises(ValueError, match='head dim 8 is not supported'): flash.flash_attention(*(torch.randn(1, 2, 8, 8).to(DEV),) * 3)
    with pytest.raises(ValueError, match='head dim 256'): flash.flash_attention(*(torch.randn(1, 1, 4, 256).to(DEV),) * 3)
    with pytest.raises(ValueError, match='repeat_kv'): flash.flash_attention(q, torch.randn(1, 1, 8, 16).to(DEV), torch.randn(1, 1, 8, 16).to(DEV))
    with pytest.raises(ValueError, match='4-d'): flash.flash_attention(q[0], q[0], q[0])
    with pytest.raises(TypeError, match='not supported'): flash.flash_attention(*(q.double(),) * 3)
    with pytest.raises(ValueError, match='at least one key'): flash.flash_attention(q, q[:, :, :0], q[:, :, :0])
    q = q.cpu()
    monkeypatch.setattr(ops, 'INTERPRETED', False)  # as if the kernels had been built for a GPU
    err, msg = (ValueError, r'\.cuda\(\)') if torch.cuda.is_available() else (RuntimeError, 'import llm_lab.kernels before triton')
    with pytest.raises(err, match=msg): flash.flash_attention(q, q, q)


@pytest.mark.parametrize('style', ['gpt2', 'llama'])
def test_gpt_with_triton_attention_matches_sdpa(style):
    from llm_lab.model import GPT, GPTConfig
    torch.manual_seed(0)
    extra = dict(norm='rmsnorm', mlp='swiglu', pos='rope', n_kv_head=1, bias=False) if style == 'llama' else {}
    cfg = dict(vocab_size=61, context_len=48, n_layer=2, n_head=2, d_model=32, **extra)   # head dim 16
    a, b = GPT(GPTConfig(attn_impl='sdpa', **cfg)).to(DEV), GPT(GPTConfig(attn_impl='triton', **cfg)).to(DEV)
    b.load_state_dict(a.state_dict())
    idx, tgt = torch.randint(0, 61, (2, 21)).to(DEV), torch.randint(0, 61, (2, 21)).to(DEV)
    (la, loss_a), (lb, loss_b) = a(idx, tgt), b(idx, tgt)
    loss_a.backward(); loss_b.backward()
    assert (la - lb).abs().max() < 1e-4 and abs(loss_a.item() - loss_b.item()) < 1e-5
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert (pa.grad - pb.grad).abs().max() < 1e-4, name


def test_attention_cost():
    f, nb = flash.attention_cost(1024, 64, flash=False)
    assert f == 4 * 1024**2 * 64 and nb == 2 * (4 * 1024 * 64 + 4 * 1024**2)
    f2, nb2 = flash.attention_cost(1024, 64, flash=True, block_m=128)
    assert f2 == f and nb2 == 2 * (2 * 1024 * 64 + 2 * 1024 * 64 * 8)


# ---------------------------------------------------------------- GPU tiles, autotuning buckets, decode path (issue 11)
@pytest.mark.parametrize('i', range(max(len(flash.FWD_CONFIGS), len(flash.DKDV_CONFIGS), len(flash.DQ_CONFIGS))))
def test_flash_gpu_tile_configs(i):
    "Every autotuning candidate of the GPU through the interpreter (which autotunes one 32x32 tile only), ragged and causal."
    pick = lambda cs: cs[i % len(cs)]
    configs = (pick(flash.FWD_CONFIGS), pick(flash.DKDV_CONFIGS), pick(flash.DQ_CONFIGS))
    compare(1, 2, 150, 150, 64 if i % 2 else 32, causal=bool(i % 2 == 0), dtype=torch.float32, configs=configs)


@pytest.mark.parametrize('config', flash.FWD_DECODE_CONFIGS, ids=str)
def test_flash_decode_tile_configs(config):
    compare(2, 2, 3, 150, 32, causal=False, dtype=torch.float32, configs=(config, flash.DKDV_CONFIGS[0], flash.DQ_CONFIGS[0]))


def test_decode_steps_use_the_short_tile_kernel(monkeypatch):
    used = []
    for name in ('_fwd', '_fwd_decode'):
        tuned = getattr(flash, name)
        monkeypatch.setattr(flash, name, type('Spy', (), {'__getitem__': lambda self, grid, t=tuned, n=name: used.append(n) or t[grid],
                                                          'fn': tuned.fn})())
    q, kv = torch.randn(1, 2, 1, 32).to(DEV), torch.randn(1, 2, 57, 32).to(DEV)
    ref = F.scaled_dot_product_attention(q, kv, kv)
    assert (flash.flash_attention(q, kv, kv, causal=False) - ref).abs().max() < 1e-5 and used == ['_fwd_decode']
    flash.flash_attention(*(torch.randn(1, 1, 40, 16).to(DEV),) * 3)
    assert used[-1] == '_fwd'
    assert all(bm == 16 for bm, *_ in flash.FWD_DECODE_CONFIGS) and flash.DECODE_MAX_TQ <= 16


def test_autotune_key_is_bucketed():
    for tuned in (flash._fwd, flash._fwd_decode, flash._bwd_dkdv, flash._bwd_dq):
        assert 'Tq' not in tuned.keys and 'Tk' not in tuned.keys and {'TQ_KEY', 'TK_KEY'} <= set(tuned.keys)
    buckets = {flash._bucket(n) for n in range(1025, 2049)}
    assert buckets == {2048} and flash._bucket(1) == 16 and flash._bucket(2049) == 4096
    # a KV-cache generation from 100 to 1100 tokens re-tunes once per doubling, not once per token
    assert len({flash._bucket(n) for n in range(100, 1101)}) == 5


def test_dropout_is_refused_not_dropped():
    q = torch.randn(1, 1, 8, 16).to(DEV)
    with pytest.raises(ValueError, match='dropout'): flash.flash_attention(q, q, q, dropout_p=0.1)
    assert (flash.flash_attention(q, q, q, dropout_p=0.0) - F.scaled_dot_product_attention(q, q, q, is_causal=True)).abs().max() < 1e-5


def test_flash_mixed_dtypes_compute_in_q_dtype():
    q, k, v = rand(1, 2, 20, 16, seed=1), rand(1, 2, 20, 16, seed=2), rand(1, 2, 20, 16, seed=3)
    o = flash.flash_attention(q.bfloat16().to(DEV), k.float().to(DEV), v.float().to(DEV))   # as under autocast
    ref = F.scaled_dot_product_attention(*(t.bfloat16().double() for t in (q, k, v)), is_causal=True)
    assert o.dtype == torch.bfloat16 and (o.double().cpu() - ref).abs().max() < TOL[torch.bfloat16]
