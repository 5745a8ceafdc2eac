"""Chapter 17 (llm_lab.compress): parity with torch's reference ops, GPTQ = the OBQ loop, valid N:M masks, the Triton low-bit
kernel through the interpreter, and the GGUF round trip. Small random tensors and a tiny untrained GPT: no zoo, no download."""
import warnings
import pytest, torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from llm_lab.core import has_triton
from llm_lab.model import GPT, GPTConfig
from llm_lab.compress import (quantize, fake_quantize, fp8_fake_quantize, nf4_fake_quantize, hessian, gptq_quantize, obq_quantize,
                              layer_error, magnitude_mask, global_magnitude_masks, nm_mask, wanda_mask, compress_weights, model_bytes,
                              calibration_inputs, prune_neurons, prune_heads, distill_loss, shared_layers_model, pack_int4, unpack_int4,
                              lowbit_matmul, lowbit_matmul_reference, save_gguf, load_gguf, pareto_front, QTensor)


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig.gpt2(vocab_size=64, context_len=32, n_layer=2, n_head=4, d_model=64)).eval()


@pytest.mark.parametrize('scheme,gs', [('absmax', None), ('zeropoint', None), ('absmax', -1), ('zeropoint', -1), ('absmax', 16), ('zeropoint', 16)])
def test_quantize_equals_torch_reference_ops(scheme, gs):
    w = torch.randn(24, 48)
    qt = quantize(w, 8, scheme, gs)
    dtype = torch.qint8 if scheme == 'absmax' else torch.quint8
    zeros = lambda n: torch.zeros(n, dtype=torch.long) if qt.zero is None else qt.zero.reshape(-1).long()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        if gs is None: ref = torch.quantize_per_tensor(w, qt.scale.item(), int(zeros(1)[0]), dtype)
        else: ref = torch.quantize_per_channel(w.reshape(-1, 48 if gs == -1 else gs), qt.scale.reshape(-1).double(), zeros(qt.scale.numel()), 0, dtype)
    assert torch.equal(ref.int_repr().reshape(w.shape), qt.q)
    assert torch.allclose(ref.dequantize().reshape(w.shape), qt.dequantize())


def test_quantize_bytes_and_error_order():
    w = torch.randn(32, 64)
    assert quantize(w, 4, 'absmax', 32).nbytes() == 32 * 64 // 2 + 32 * 2 * 2     # packed codes + fp16 scales
    errs = [(w - fake_quantize(w, b, 'absmax', -1)).pow(2).mean() for b in (2, 3, 4, 8)]
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert (w - fp8_fake_quantize(w, 'e4m3')).abs().max() < 0.1 * w.abs().max()
    assert (w - nf4_fake_quantize(w, 32)).abs().max() < 0.3 * w.abs().max()
    with pytest.raises(ValueError, match='does not divide'): quantize(w, 4, 'absmax', 48)


def test_gptq_equals_obq_and_beats_rtn():
    torch.manual_seed(1)
    x = torch.randn(512, 24) @ torch.randn(24, 24)
    w, H = torch.randn(10, 24), hessian(x)
    for block in (1, 5, 24):
        assert torch.allclose(gptq_quantize(w, H, 3, block_size=block), obq_quantize(w, H, 3), atol=1e-6)
    assert layer_error(w, gptq_quantize(w, H, 3), x) < layer_error(w, fake_quantize(w, 3, 'absmax', -1), x)
    q = gptq_quantize(w, H, 4, group_size=8, act_order=True)
    assert q.shape == w.shape and layer_error(w, q, x) < layer_error(w, fake_quantize(w, 4, 'absmax', 8), x)


def test_magnitude_masks_equal_torch_prune():
    lin = nn.Linear(40, 30); prune.l1_unstructured(lin, 'weight', amount=0.37)
    assert torch.equal(lin.weight_mask, magnitude_mask(lin.weight_orig, 0.37))
    a, b = nn.Linear(20, 10), nn.Linear(10, 5)
    with torch.no_grad(): b.weight *= 4
    masks = global_magnitude_masks([a.weight, b.weight], 0.6)
    prune.global_unstructured([(a, 'weight'), (b, 'weight')], prune.L1Unstructured, amount=0.6)
    assert torch.equal(masks[0], a.weight_mask) and torch.equal(masks[1], b.weight_mask)


@pytest.mark.parametrize('n,m', [(2, 4), (1, 4), (4, 8)])
def test_nm_masks_valid_by_construction(n, m):
    s = torch.rand(7, 8 * m)
    mask = nm_mask(s, n, m)
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and (mask.view(7, -1, m).sum(-1) == n).all()
    kept, dropped = (s * mask).view(7, -1, m), (s + 9 * mask).view(7, -1, m)   # every kept score >= every dropped one
    assert (kept.amax(-1) >= 0).all() and ((s.view(7, -1, m) * mask.view(7, -1, m)).sum(-1) >= torch.topk(s.view(7, -1, m), n).values.sum(-1) - 1e-6).all()


def test_wanda_per_row(tiny):
    w, xn = torch.randn(6, 16), torch.rand(16)
    mask = wanda_mask(w, xn, 0.25)
    assert (mask.sum(1) == 12).all()


def test_structured_pruning_shrinks_and_runs(tiny):
    ids = torch.randint(0, 64, (2, 16))
    m = prune_neurons(tiny, 0.5)
    assert m.blocks[0].mlp.up_proj.weight.shape == (128, 64) and m(ids)[0].shape == (2, 16, 64)
    h = prune_heads(tiny, 2)
    assert h.blocks[0].attn.q_proj.weight.shape == (32, 64) and h.num_params() < tiny.num_params()
    assert torch.isfinite(h(ids)[0]).all()
    full = prune_heads(tiny, 4)                                       # keeping every head changes nothing
    assert torch.allclose(full(ids)[0], tiny(ids)[0], atol=1e-5)
    keep_all = prune_neurons(tiny, 1.0)
    assert torch.allclose(keep_all(ids)[0], tiny(ids)[0], atol=1e-5)


def test_distill_loss_matches_kl_and_t2():
    s, t = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    for T in (1.0, 3.0):
        p = torch.softmax(t / T, -1)
        want = (p * (p.log() - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
        assert torch.allclose(distill_loss(s, t, T), want, atol=1e-6)
    assert distill_loss(t, t, 2.0).abs() < 1e-6


def test_sharing_bytes_calibration(tiny):
    cfg = tiny.config
    shared = shared_layers_model(cfg)
    assert shared.blocks[0].block is shared.blocks[1].block and shared.num_params() < GPT(cfg).num_params()
    X = calibration_inputs(tiny, torch.randint(0, 64, (200,)).numpy(), n_windows=2)
    assert X['blocks.0.mlp.up_proj'].shape == (64, 64) and X['blocks.1.mlp.down_proj'].shape == (64, 256)
    assert model_bytes(tiny, 4) < model_bytes(tiny, 8) < model_bytes(tiny)
    assert pareto_front([1, 2, 3, 4], [5, 6, 1, 2]) == [0, 2]


@pytest.mark.skipif(not has_triton(), reason='Triton is not installed (Linux only)')
@pytest.mark.parametrize('bits,shape', [(8, (5, 37, 64, 32)), (4, (3, 70, 128, 32)), (4, (17, 33, 96, 96))])
def test_lowbit_kernel_equals_dequantise_then_matmul(bits, shape):
    M, N, K, gs = shape
    torch.manual_seed(0)
    w, x = torch.randn(N, K), torch.randn(M, K)
    qt = quantize(w, bits, 'absmax', gs)
    codes = pack_int4(qt.q) if bits == 4 else qt.q
    if bits == 4: assert torch.equal(unpack_int4(codes), qt.q)
    y = lowbit_matmul(x, codes, qt.scale, gs, bits)
    assert torch.allclose(y, lowbit_matmul_reference(x, codes, qt.scale, gs, bits), atol=1e-4)
    assert torch.allclose(y, x @ qt.dequantize().T, atol=1e-4)


def test_gguf_round_trip(tiny, tmp_path):
    pytest.importorskip('gguf')
    ids = torch.randint(0, 64, (1, 16))
    back = load_gguf(save_gguf(tiny, tmp_path / 'm.gguf', 'F32'))
    assert torch.allclose(back(ids)[0], tiny(ids)[0], atol=1e-5)          # lossless type: identical model
    q8 = load_gguf(save_gguf(tiny, tmp_path / 'q8.gguf', 'Q8_0'))
    ours = compress_weights(tiny, lambda n, w: fake_quantize(w, 8, 'absmax', 32))
    for n, p in q8.named_parameters(): assert torch.allclose(p, ours.get_parameter(n), atol=1e-4), n


def test_llm_int8_and_smoothquant_with_planted_outliers():
    from llm_lab.compress import int8_matmul, int8_outlier_matmul, w8a8_matmul, smooth_scales, fold_smoothing
    torch.manual_seed(2)
    x, w = torch.randn(256, 64), torch.randn(32, 64) * 0.1
    ref = lambda x, w: x @ w.T
    err = lambda y, x, w: float(((y - ref(x, w)) ** 2).sum() / (ref(x, w) ** 2).sum())
    xo = x.clone(); xo[:, [3, 30]] *= 30                                     # two outlier features
    assert err(int8_outlier_matmul(x, w), x, w) == pytest.approx(err(int8_matmul(x, w), x, w))   # no outliers: plain int8
    assert err(int8_outlier_matmul(xo, w), xo, w) < 0.1 * err(int8_matmul(xo, w), xo, w)
    s = smooth_scales(xo.abs().amax(0), w, 0.5)
    assert torch.allclose((xo / s) @ (w * s).T, ref(xo, w), atol=1e-4)      # smoothing is exact in float
    assert err(w8a8_matmul(xo / s, w * s), xo, w) < 0.5 * err(w8a8_matmul(xo, w), xo, w)
    norm, lin = nn.LayerNorm(64), nn.Linear(64, 32)
    with torch.no_grad(): norm.weight.uniform_(0.5, 2); norm.bias.normal_()
    before = lin(norm(x)); fold_smoothing(norm, [lin], s)
    assert torch.allclose(lin(norm(x)), before, atol=1e-4)                 # folded: the same function


def test_int8_kv_cache(tiny):
    from llm_lab.model import KVCache
    from llm_lab.compress import Int8KVCache
    ids = torch.randint(0, 64, (2, 32))
    with torch.no_grad():
        full = tiny(ids)[0]
        caches = {c: c(tiny.config, 2) for c in (KVCache, Int8KVCache)}
        got = {c: torch.cat([tiny(ids[:, :20], kv_cache=k)[0]] + [tiny(ids[:, t:t + 1], kv_cache=k)[0] for t in range(20, 32)], 1)
               for c, k in caches.items()}
    assert (got[Int8KVCache] - full).abs().max() < 0.05 * full.abs().max()
    D = tiny.config.d_model // tiny.config.n_head
    assert caches[Int8KVCache].nbytes() * 4 == caches[KVCache].nbytes() * (1 + 2 / D)
    with pytest.raises(ValueError, match='sequences'): Int8KVCache(tiny.config, 3).update(0, torch.zeros(2, 4, 1, D), torch.zeros(2, 4, 1, D))


def test_bits_per_weight_formats_and_cost():
    from llm_lab.compress import bits_per_weight
    from llm_lab.cost import estimate_inference, inference_memory, param_count, get_model, PRECISION_BYTES
    w = torch.randn(16, 64)
    for b, g, zp in [(4, 32, False), (4, 16, True), (8, 64, False), (3, 32, True)]:
        assert bits_per_weight(f'int{b}', g, zero_point=zp) == quantize(w, b, 'zeropoint' if zp else 'absmax', g).nbytes() * 8 / w.numel()
    assert bits_per_weight('int4-g128') == 4.125 and bits_per_weight('int8') == 8 and bits_per_weight('fp8') == 8
    assert round(bits_per_weight('nf4'), 3) == 4.127 and bits_per_weight('nf4', double_quant=False) == 4.5
    gguf = pytest.importorskip('gguf')
    for fmt in ('Q8_0', 'Q4_0'):
        packed = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType[fmt])
        assert packed.nbytes * 8 / w.numel() == bits_per_weight(fmt)
    with pytest.raises(ValueError, match='int formats'): bits_per_weight('int4x')
    with pytest.raises(ValueError, match='unknown format'): bits_per_weight('q4')
    assert PRECISION_BYTES['int4'] == 0.5 and PRECISION_BYTES['bf16'] == 2
    spec = get_model('llama2-7b').spec
    assert inference_memory(spec, weight_format='Q4_0')['weights'] == param_count(spec) * 4.5 / 8
    bf16, q4 = estimate_inference(spec, batch=1), estimate_inference(spec, batch=1, weight_format='int4-g128')
    assert q4.memory['weights'] == param_count(spec) * 4.125 / 8 and q4.weight_format == 'int4-g128'
    assert q4.usd_per_million_tokens < 0.3 * bf16.usd_per_million_tokens < bf16.usd_per_million_tokens
    assert estimate_inference(spec, batch=1, weight_format='bf16').usd_per_million_tokens == pytest.approx(bf16.usd_per_million_tokens)


def test_cubic_sparsity_schedule():
    from llm_lab.compress import cubic_sparsity
    for t in range(11):
        assert cubic_sparsity(t, 10, 0.9) == pytest.approx(0.9 * (1 - (1 - t / 10) ** 3))           # Zhu & Gupta: s_f(1 − (1 − t/n)³)
        assert cubic_sparsity(t, 10, 0.9, 0.2) == pytest.approx(0.9 + (0.2 - 0.9) * (1 - t / 10) ** 3)
    assert cubic_sparsity(-3, 10, 0.9) == 0.0 and cubic_sparsity(99, 10, 0.9) == pytest.approx(0.9)  # clipped to [0, n]
    steps = [cubic_sparsity(t, 10, 0.9) for t in range(11)]
    gains = [b - a for a, b in zip(steps, steps[1:])]
    assert all(later < earlier for earlier, later in zip(gains, gains[1:]))                       # each step prunes less than the last
    with pytest.raises(ValueError, match='initial <= final'): cubic_sparsity(1, 10, 1.0)
    with pytest.raises(ValueError, match='n_steps'): cubic_sparsity(1, 0, 0.5)


@pytest.mark.parametrize('n_prunes', [1, 3])
def test_prune_finetune_keeps_pruned_weights_zero(tiny, n_prunes):
    from llm_lab.compress import prune_finetune, linear_layers, magnitude_mask, cubic_sparsity
    tokens = torch.randint(0, 64, (2000,)).numpy()
    snapshot = {k: v.clone() for k, v in tiny.state_dict().items()}
    pruned, hist = prune_finetune(tiny, tokens, 0.8, steps=8, n_prunes=n_prunes, prune_every=2, batch_size=2, block_size=16, lr=1e-2)
    assert hist['sparsity'][-1] == pytest.approx(0.8) and len(hist['loss']) == 8
    assert hist['sparsity'][0] == pytest.approx(0.8 if n_prunes == 1 else cubic_sparsity(1, 3, 0.8))
    before, after = linear_layers(tiny), linear_layers(pruned)
    for name, m in after.items():
        zeros = m.weight == 0
        assert zeros.float().mean() == pytest.approx(0.8, abs=1 / m.weight.numel())     # exactly the final sparsity...
        if n_prunes == 1:                                                                # ...and the one-shot mask never moved:
            assert torch.equal(zeros, magnitude_mask(before[name].weight, 0.8) == 0)    # pruned at step 0, still zero after 8 Adam steps
        assert not torch.equal(m.weight[~zeros], before[name].weight[~zeros])           # while the kept weights trained
    assert all(torch.equal(a, b) for a, b in zip(tiny.state_dict().values(), snapshot.values()))   # the input model is left unchanged
    with pytest.raises(ValueError, match='do not fit'): prune_finetune(tiny, tokens, 0.8, steps=4, n_prunes=3, prune_every=2)


def test_shared_and_factorised_models():
    from dataclasses import replace
    from llm_lab.model import KVCache
    from llm_lab.compress import factorize_embeddings
    cfg = GPTConfig.gpt2(vocab_size=64, context_len=32, n_layer=3, n_head=4, d_model=32)
    torch.manual_seed(0)
    shared = shared_layers_model(cfg).eval()
    assert shared.num_params() == GPT(replace(cfg, n_layer=1)).num_params()            # 3 layers, the parameters of 1
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        full, cache = shared(ids)[0], KVCache(cfg, 2)
        stepped = torch.cat([shared(ids[:, :5], kv_cache=cache)[0]] + [shared(ids[:, t:t + 1], kv_cache=cache)[0] for t in range(5, 12)], 1)
    assert (stepped - full).abs().max() < 1e-5                                          # each layer keeps its own keys/values
    assert all(k is not None for k in cache.k)
    fact = factorize_embeddings(GPT(cfg), 8)
    assert GPT(cfg).num_params() - fact.num_params() == 64 * 32 - (64 * 8 + 8 * 32)
    logits, loss = fact(ids, ids)
    assert logits.shape == (2, 12, 64) and torch.isfinite(loss)
    loss.backward(); assert fact.tok_emb.small.weight.grad is not None                 # the head is tied: gradients reach the table
    with pytest.raises(ValueError, match='tied head'): factorize_embeddings(GPT(replace(cfg, tie_embeddings=False)), 8)
