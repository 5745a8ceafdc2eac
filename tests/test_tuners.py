"""Chapter 13 from scratch (no peft needed): every registered method starts as the base model (where its paper says so),
trains only its own parameters, and the pieces keep their contracts (merge/unmerge, NF4, AdaLoRA's budget, prefix cache)."""
import pytest, torch
from llm_lab.model import GPT, GPTConfig, KVCache
from llm_lab.tuners import (TUNERS, apply_tuner, count_params, LoraConfig, QLoraConfig, AdaLoraConfig, RankAllocator, SVDLinear,
                            LoraLinear, NF4Linear, NF4_CODE, nf4_code_from_normal, nf4_quantize, nf4_dequantize, quantize_absmax,
                            dequantize_absmax, pack_4bit, unpack_4bit, PrefixConfig, PrefixCache, orth_regularizer, merge_lora,
                            LlamaAdapterConfig, train_tuner, lm_loss)

X = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
UNCHANGED_AT_INIT = {'lora', 'qlora', 'adalora', 'ia3', 'adapter', 'llama_adapter'}  # prompts/prefixes/gates change the output


def base(arch='gpt2'):
    torch.manual_seed(0)
    return GPT(getattr(GPTConfig, arch)(vocab_size=64, context_len=32, n_layer=2, n_head=4, d_model=32,
                                        **({'n_kv_head': 2} if arch == 'llama' else {}))).eval()


@pytest.mark.parametrize('method', sorted(TUNERS))
def test_every_method_trains_only_its_parameters(method):
    arch = 'llama' if method == 'llama_adapter' else 'gpt2'
    ref = base(arch)(X)[0]
    cfg = TUNERS[method](**({'total_step': 10, 'tinit': 1, 'tfinal': 2, 'delta_t': 1} if method == 'adalora' else {}))
    model = apply_tuner(base(arch), cfg)
    if method in UNCHANGED_AT_INIT: assert (model(X)[0] - ref).abs().max() < (0.05 if method == 'qlora' else 1e-6)
    trainable, total = count_params(model)
    assert 0 < trainable < total
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    if method == 'llama_adapter':
        for m in model.modules():
            if hasattr(m, 'gate') and isinstance(m.gate, torch.nn.Parameter): m.gate.data.fill_(0.5)
    before = model(X, Y)[1].item()
    train_tuner(model, X, Y, steps=10, batch_size=2, lr=1e-2, adalora=cfg if method == 'adalora' else None)
    assert model(X, Y)[1].item() < before
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_lora_merge_unmerge_and_merge_lora():
    model = apply_tuner(base(), LoraConfig(r=4, alpha=8, targets=('qkv_proj', 'down_proj')))
    for m in model.modules():
        if isinstance(m, LoraLinear): torch.nn.init.normal_(m.lora_B)
    want = model(X)[0]
    merged = merge_lora(model)
    assert not any(isinstance(m, LoraLinear) for m in merged.modules())
    assert (merged(X)[0] - want).abs().max() < 1e-4


def test_nf4_pieces():
    assert (nf4_code_from_normal() - NF4_CODE).abs().max() < 1e-6 and len(NF4_CODE) == 16 and 0.0 in NF4_CODE.tolist()
    w = torch.randn(4, 64)
    codes, absmax = nf4_quantize(w)
    assert torch.equal(unpack_4bit(pack_4bit(codes)), codes) and codes.max() <= 15
    assert torch.allclose(absmax, w.abs().amax(1)) and ((nf4_dequantize(codes, absmax) - w.view(-1)).abs() <= absmax.repeat_interleave(64) * 0.2).all()
    a = torch.rand(300)
    assert (dequantize_absmax(*quantize_absmax(a)) - a).abs().max() < a.abs().max() / 100
    with pytest.raises(TypeError, match='dequantise'): apply_tuner(base(), QLoraConfig()).blocks[0].attn.qkv_proj.merge()


def test_adalora_budget_prunes_to_target():
    cfg = AdaLoraConfig(init_r=6, target_r=2, total_step=30, tinit=3, tfinal=5, delta_t=1)
    model = apply_tuner(base(), cfg)
    for m in model.modules():
        if isinstance(m, SVDLinear): torch.nn.init.normal_(m.lora_E, std=0.1)
    assert orth_regularizer(model) > 0
    train_tuner(model, X, Y, steps=30, batch_size=2, adalora=cfg)
    ranks = [m.rank() for m in model.modules() if isinstance(m, SVDLinear)]
    assert sum(ranks) == 2 * len(ranks)
    alloc = RankAllocator(model, cfg)
    assert alloc.budget(0)[0] == 12 and alloc.budget(30)[0] == 4


def test_prefix_cache_is_a_longer_context():
    "A prefix of P keys/values equals running the real keys/values of P earlier tokens through a normal KV cache."
    model = base()
    ctx = torch.randint(0, 64, (1, 4))
    cache = KVCache(model.config, 1)
    model(ctx, kv_cache=cache)
    want = model(X[:1], kv_cache=cache)[0]
    keys = [cache.k[i][:, :, :4] for i in range(2)]; values = [cache.v[i][:, :, :4] for i in range(2)]
    got = model(X[:1], kv_cache=PrefixCache(keys, values))[0]
    assert (got - want).abs().max() < 1e-5


def test_errors():
    with pytest.raises(TypeError): apply_tuner(base(), object())
    with pytest.raises(ValueError, match='no module matched'): apply_tuner(base(), LoraConfig(targets=('nothing',)))
    with pytest.raises(ValueError): LoraConfig(r=0)
    with pytest.raises(ValueError): AdaLoraConfig(init_r=2, target_r=4)
