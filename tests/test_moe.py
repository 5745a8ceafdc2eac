"""Chapter 14: the MoE layer in GPT, routing policies (capacity, expert choice, noisy top-k, shared experts), parity with
transformers' Mixtral sparse MoE block and load-balancing loss, and expert parallelism on 2 real processes."""
import math

import pytest
import torch
from conftest import require

from llm_lab.model import GPT, GPTConfig
from llm_lab.moe import (MoE, MoEConfig, moe_mlp, moe_aux_loss, moe_params, topk_route, load_balancing_loss, router_z_loss,
                         capacity_mask, ep_layer, expert_parallel_demo)

CFG = GPTConfig.llama(vocab_size=64, context_len=16, n_layer=2, n_head=2, d_model=32)


def _layer(seed=0, **kw):
    torch.manual_seed(seed)
    layer = MoE(CFG, MoEConfig(**kw))
    with torch.no_grad():
        for p in layer.parameters(): p.normal_(0, 0.3)
    return layer


def test_gpt_with_moe_trains_and_has_aux_loss():
    torch.manual_seed(0)
    m = GPT(CFG, mlp=moe_mlp(n_experts=4, top_k=2, z_loss_coef=1e-3)); opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    idx = torch.randint(0, 64, (4, 16)); losses = []
    for _ in range(15):
        _, loss = m(idx, idx.roll(-1, 1)); aux = moe_aux_loss(m); (loss + aux).backward(); opt.step(); opt.zero_grad()
        losses.append(loss.item())
    assert aux.item() > 0 and losses[-1] < losses[0] - 0.5


def test_router_gets_gradient_from_aux_loss_alone():
    layer = _layer(n_experts=4, top_k=2, aux_loss_coef=1.0)
    layer(torch.randn(2, 8, 32)); layer.aux_loss.backward()
    assert layer.router.weight.grad.abs().sum() > 0


def test_params_total_and_active():
    m = GPT(CFG, mlp=moe_mlp(n_experts=4, top_k=1, d_ff=64)); dense = GPT(GPTConfig.llama(**{**CFG.__dict__, 'd_ff': 64}))
    p = moe_params(m)
    assert p['active'] == dense.num_params() + 2 * 4 * 32                    # + the routers
    assert p['total'] - p['active'] == 2 * 3 * (2 * 64 * 32 + 32 * 64)        # three idle experts per layer


def test_topk_weights_sum_to_one_and_unnormalised_option():
    logits = torch.randn(10, 6)
    w, idx, probs = topk_route(logits, 2)
    assert torch.allclose(w.sum(-1), torch.ones(10)) and torch.equal(idx, probs.topk(2, -1).indices)
    w2, _, _ = topk_route(logits, 2, normalize=False)
    assert torch.allclose(w2, probs.topk(2, -1).values)


def test_balancing_loss_uniform_and_collapsed():
    E, k = 4, 2
    uniform = torch.zeros(8, E); uniform[torch.arange(8), torch.arange(8) % E] = 1e-3   # ties broken evenly, probs ~1/E
    assert abs(load_balancing_loss(uniform, k).item() - k) < 0.01
    collapsed = torch.zeros(8, E); collapsed[:, 0] = 10; collapsed[:, 1] = 9
    assert load_balancing_loss(collapsed, k).item() > 1.9 * k
    assert torch.isclose(router_z_loss(torch.zeros(3, E)), torch.tensor(math.log(E) ** 2))


def test_capacity_drops_tokens_in_priority_order():
    idx = torch.tensor([[0, 1], [0, 1], [0, 2], [1, 0]])   # first choices: 0,0,0,1
    keep = capacity_mask(idx, 3, capacity=2)
    assert keep.tolist() == [[True, True], [True, False], [False, True], [True, False]]
    layer = _layer(n_experts=4, top_k=2, capacity_factor=0.5); layer(torch.randn(2, 8, 32))
    assert layer.counts.max() <= math.ceil(0.5 * 16 * 2 / 4) and layer.counts.sum() < 32


def test_expert_choice_fills_every_expert():
    layer = _layer(n_experts=4, top_k=2, router='expert_choice')
    y = layer(torch.randn(2, 8, 32))
    assert layer.counts.tolist() == [8] * 4 and y.shape == (2, 8, 32)


def test_noisy_topk_only_while_training_and_shared_experts():
    layer = _layer(n_experts=4, top_k=1, noise=True, n_shared=1)
    x = torch.randn(2, 8, 32)
    layer.eval(); a, b = layer(x), layer(x)
    assert torch.equal(a, b)
    layer.train(); torch.manual_seed(1); c = layer(x); torch.manual_seed(2); d = layer(x)
    assert not torch.equal(c, d)
    layer.eval(); no_shared = a - layer.shared[0](x)
    layer.shared = torch.nn.ModuleList(); assert torch.allclose(layer(x), no_shared, atol=1e-6)


@pytest.mark.parametrize('E,k', [(8, 2), (4, 1), (6, 3)])
def test_equals_mixtral_block_and_its_loss(E, k):
    require('transformers')
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock, load_balancing_loss_func
    ours = _layer(n_experts=E, top_k=k).eval()
    hf = MixtralSparseMoeBlock(MixtralConfig(hidden_size=32, intermediate_size=ours.d_ff, num_local_experts=E,
                                             num_experts_per_tok=k, router_jitter_noise=0.0)).eval()
    with torch.no_grad():
        hf.gate.weight.copy_(ours.router.weight); hf.experts.gate_up_proj.copy_(ours.gate_up_proj); hf.experts.down_proj.copy_(ours.down_proj)
        x = torch.randn(3, 7, 32)
        assert (ours(x) - hf(x)).abs().max() < 1e-5
        logits = ours.router(x.reshape(-1, 32))
        assert abs(load_balancing_loss(logits, k) - load_balancing_loss_func((logits,), E, k)) < 1e-5


def test_expert_parallel_equals_single_process():
    from llm_lab.distributed import launch
    out = torch.cat(launch(expert_parallel_demo, 2, timeout=180))
    layer, x = ep_layer()
    with torch.no_grad(): assert (out - layer(x)).abs().max() < 1e-5
