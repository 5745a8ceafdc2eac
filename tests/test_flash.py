"""Tests of llm_lab.kernels.flash (chapter 19): FlashAttention forward and backward against float64 torch.

Through Triton's interpreter on a CPU (small shapes), compiled on a GPU. Tolerances per dtype, on the output
and on dq, dk, dv (inputs drawn from N(0, 1), errors measured against float64 SDPA on the same rounded inputs):
fp32 2e-4, fp16 1e-2, bf16 8e-2 (P is rounded to the input dtype before the P·V and dS·K products, as in
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
TOL = {torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 8e-2}


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def compare(B, H, Tq, Tk, D, causal, dtype, scale=None, seed=0):
    q, k, v = rand(B, H, Tq, D, seed=seed), rand(B, H, Tk, D, seed=seed + 1), rand(B, H, Tk, D, seed=seed + 2)
    do = rand(B, H, Tq, D, seed=seed + 3)
    q, k, v, do = (t.to(dtype).double() for t in (q, k, v, do))                  # the inputs as rounded
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*ref, is_causal=causal, scale=scale).backward(do)
    o_ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    got = [t.to(dtype).to(DEV).requires_grad_() for t in (q, k, v)]
    o = flash.flash_attention(*got, causal=causal, scale=scale)
    o.backward(do.to(dtype).to(DEV))
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
    with pytest.raises(TypeError, match='one dtype'): flash.flash_attention(q, q.half(), q)
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


def test_checkers_accept_references():
    assert flash.check_online_logsumexp(flash._lse_ref).ok
    assert flash.check_flash_forward(lambda q, k, v, c: flash.flash_attention_torch(q, k, v, c)[0]).ok
    assert flash.check_attention_backward(flash._attn_backward_ref).ok


def test_checkers_reject_wrong_answers():
    def lse_no_rescale(x, block):  # forgets to rescale the running sum when the max grows
        m, l = torch.full(x.shape[:1], -math.inf), torch.zeros(x.shape[:1])
        for j in range(0, x.shape[1], block):
            m_new = torch.maximum(m, x[:, j:j + block].amax(1))
            l = l + torch.exp(x[:, j:j + block] - m_new[:, None]).sum(1)
            m = m_new
        return m + torch.log(l)
    with pytest.raises(CheckFailed, match='online log-sum-exp'): flash.check_online_logsumexp(lse_no_rescale)

    def forward_no_causal(q, k, v, causal):  # ignores the mask
        return F.scaled_dot_product_attention(q, k, v)
    with pytest.raises(CheckFailed, match='attention forward'): flash.check_flash_forward(forward_no_causal)

    def backward_no_delta(q, k, v, do, causal):  # dS = P ∘ dP, forgetting the softmax's δ term
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if causal: s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), -math.inf)
        p = torch.softmax(s, -1)
        dp = do @ v.transpose(-1, -2)
        ds = p * dp / math.sqrt(q.shape[-1])
        return ds @ k, ds.transpose(-1, -2) @ q, p.transpose(-1, -2) @ do
    with pytest.raises(CheckFailed, match='attention backward'): flash.check_attention_backward(backward_no_delta)
