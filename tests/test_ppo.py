"""Chapter 15's PPO: the clipped value loss, the per-token rewards and the KL controllers against their formulas (and the adaptive
controller against Ziegler et al.'s rule as TRL 0.x and OpenRLHF code it), the value head, and a short PPO run on a tiny random GPT whose
reward (how many even token ids a sequence has) rises, deterministically with a seed."""
import copy

import numpy as np
import pytest
import torch

from llm_lab.tasks import make_tasks
from llm_lab.rlhf import (PolicyWithValue, ppo_rewards, masked_whiten, clipped_value_loss, FixedKLController, AdaptiveKLController,
                          PPOConfig, train_ppo, masked_mean, gae)


def test_clipped_value_loss_formula():
    g = torch.Generator().manual_seed(0)
    B, T, c = 4, 7, 0.2
    old = torch.randn(B, T, generator=g)
    v = (old + 0.4 * torch.randn(B, T, generator=g)).requires_grad_()     # some moves inside the clip range, some outside
    ret = torch.randn(B, T, generator=g)
    m = torch.arange(T)[None] < torch.tensor([[7], [5], [2], [1]])
    loss, info = clipped_value_loss(v, old, ret, m, c)
    per = [max((v[b, t] - ret[b, t]).item() ** 2, (old[b, t] + min(max((v[b, t] - old[b, t]).item(), -c), c) - ret[b, t]).item() ** 2)
           for b in range(B) for t in range(T) if m[b, t]]
    assert loss.item() == pytest.approx(0.5 * sum(per) / len(per), abs=1e-6)
    assert 0 < info['vf_clip_frac'] < 1
    loss.backward()
    moved = (v - old).abs() > c
    clipped_wins = moved & ((old + (v - old).clamp(-c, c) - ret) ** 2 > (v - ret) ** 2)
    assert (v.grad[clipped_wins & m] == 0).all() and (v.grad[~m] == 0).all()   # no pull where the clipped branch is active, or off the mask
    assert (v.grad[(~moved) & m] != 0).all()


def test_clipped_value_loss_without_clip_is_half_mse():
    g = torch.Generator().manual_seed(1)
    v, old, ret = (torch.randn(3, 5, generator=g) for _ in range(3))
    m = torch.ones(3, 5, dtype=torch.bool)
    assert clipped_value_loss(v, old, ret, m, clip=1e6)[0].item() == pytest.approx(0.5 * ((v - ret) ** 2).mean().item(), rel=1e-6)


def test_ppo_rewards_and_whiten():
    g = torch.Generator().manual_seed(2)
    lp, ref = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    m = torch.arange(6)[None] < torch.tensor([[6], [4], [1]])
    s = torch.tensor([2.0, -1.0, 0.5])
    r, kl = ppo_rewards(s, lp, ref, m, beta=0.3)
    for b, n in enumerate((6, 4, 1)):
        want = -0.3 * (lp[b, :n] - ref[b, :n]); want[n - 1] += s[b]
        assert torch.allclose(r[b, :n], want, atol=1e-6) and (r[b, n:] == 0).all() and (kl[b, n:] == 0).all()
    w = masked_whiten(torch.randn(3, 6, generator=g) * 5 + 3, m)
    assert abs(w[m].mean().item()) < 1e-6 and w[m].std(unbiased=False).item() == pytest.approx(1, abs=1e-4) and (w[~m] == 0).all()


def _ziegler(beta, target, horizon, kls, n):
    "The adaptive rule as TRL 0.x (trl/trainer/utils.py) and OpenRLHF write it, in numpy."
    out = []
    for kl in kls:
        beta *= 1 + np.clip(kl / target - 1, -0.2, 0.2) * n / horizon
        out.append(beta)
    return out


def test_adaptive_kl_controller_formula():
    rng = np.random.default_rng(0)
    kls = list(rng.uniform(0, 12, 50))                                    # errors inside and outside the ±0.2 clip
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    got = []
    for kl in kls: ctl.update(kl, 256); got.append(ctl.value)
    assert np.allclose(got, _ziegler(0.2, 6.0, 10_000, kls, 256), rtol=1e-12)
    up = AdaptiveKLController(1.0, 1.0, 100); up.update(50.0, 10)        # far too far: capped at +20% * n / horizon
    assert up.value == pytest.approx(1.02)
    down = AdaptiveKLController(1.0, 1.0, 100); down.update(0.95, 10)    # 5% too close: -5% * n / horizon
    assert down.value == pytest.approx(1 - 0.05 * 0.1)
    fixed = FixedKLController(0.3); fixed.update(100.0, 64)
    assert fixed.value == 0.3
    with pytest.raises(ValueError, match='target'): AdaptiveKLController(0.1, 0.0, 10)


def test_config_validation():
    with pytest.raises(ValueError, match='minibatch_size'): PPOConfig(batch_size=10, minibatch_size=4)
    with pytest.raises(ValueError, match='steps'): PPOConfig(steps=0)


def test_value_head_shares_the_body(lm):
    model, tok = lm
    pv = PolicyWithValue(copy.deepcopy(model))
    ids = torch.randint(tok.vocab_size, (2, 9))
    logits, values = pv(ids)
    assert torch.allclose(logits, model(ids)[0], atol=1e-6) and values.shape == (2, 9) and (values == 0).all()
    values.sum().backward()
    assert pv.value_head.weight.grad is not None and pv.policy.tok_emb.weight.grad is not None


def _run(lm, steps, seed=0):
    model, tok = lm
    policy, ref = copy.deepcopy(model), copy.deepcopy(model).requires_grad_(False)
    def even_tokens(ids): return ((ids % 2 == 0) & (ids != tok.eot_id)).float().sum(-1)   # a reward any policy can learn
    cfg = PPOConfig(steps=steps, batch_size=16, minibatch_size=8, max_new_tokens=6, lr=3e-3, init_kl_coef=0.0, adaptive_kl=False,
                    missing_eos_penalty=0.0, seed=seed)
    return policy, train_ppo(policy, ref, even_tokens, tok, make_tasks(40, kinds=('add',), seed=0), cfg)


def test_tiny_ppo_run_raises_the_reward_deterministically(lm):
    policy, h = _run(lm, 20)
    assert set(h) >= {'reward', 'gold', 'accuracy', 'kl', 'beta', 'entropy', 'length', 'pg_loss', 'vf_loss', 'clip_frac'}
    assert all(len(v) == 20 for v in h.values())
    first, last = np.mean(h['reward'][:4]), np.mean(h['reward'][-4:])
    assert last > first + 1.0, h['reward']                                # measured 7.7 -> 9.8 even tokens
    assert h['kl'][0] == pytest.approx(0, abs=1e-5) and h['kl'][-1] > 0.5 # it starts at the reference and moves away
    _, h2 = _run(lm, 3)
    assert h2['reward'] == h['reward'][:3] and h2['kl'] == h['kl'][:3]    # same seed, same run



def test_rollout_logprobs_are_those_of_the_sampling_temperature(lm):
    """At temperature T the answers come from softmax(logits / T): the old log-probs, the reference's and the update's must all use T
    (they used T = 1 before: the ratio was 1 but of the wrong distribution, and the KL was measured at another temperature)."""
    from llm_lab.rlhf import ppo_rollout, ppo_loss, token_logprobs, model_logits
    model, tok = lm
    policy, ref = PolicyWithValue(copy.deepcopy(model)), copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        for p in ref.parameters(): p.add_(0.05 * torch.randn_like(p))      # a reference that differs from the policy
    cfg = PPOConfig(batch_size=8, minibatch_size=8, max_new_tokens=5, temperature=0.5, missing_eos_penalty=0.0)
    def scores(ids): return torch.zeros(len(ids))
    b = ppo_rollout(policy, ref, scores, tok, make_tasks(8, kinds=('add',), seed=0), cfg, 0.1, torch.Generator().manual_seed(0))
    m = b['mask']
    with torch.no_grad():
        want = token_logprobs(model_logits(policy.policy, b['ids']) / 0.5, b['ids']) * m
        want_ref = token_logprobs(model_logits(ref, b['ids']) / 0.5, b['ids']) * m
        at_one = token_logprobs(model_logits(policy.policy, b['ids']), b['ids']) * m
    assert m.sum() > 8 and (want - at_one)[m].abs().max() > 0.1          # the temperature matters for these tokens
    assert torch.allclose(b['old_logps'], want, atol=1e-5)
    assert torch.allclose(b['kl'], ((want - want_ref) * m).sum(-1), atol=1e-4)
    policy.train()
    _, info = ppo_loss(policy, {k: b[k] for k in ('ids', 'mask', 'old_logps', 'old_values', 'advantages', 'returns')}, cfg)
    assert info['ratio'] == pytest.approx(1.0, abs=1e-6) and info['clip_frac'] == 0.0   # before any step the update sees the same policy


def test_first_minibatch_ratio_is_one_in_training(lm):
    "train_ppo's first update: the mean ratio over the first epoch's first minibatch is exactly 1 (same model, same tokens, same temperature)."
    from llm_lab import rlhf
    seen = []
    orig = rlhf.ppo_loss
    def spy(model, mb, cfg):
        loss, s = orig(model, mb, cfg); seen.append(s['ratio']); return loss, s
    rlhf.ppo_loss = spy
    try: _run(lm, 1)
    finally: rlhf.ppo_loss = orig
    assert seen[0] == pytest.approx(1.0, abs=1e-6) and len(seen) == 4    # 16 answers / 8 per minibatch * 2 epochs
    assert any(abs(r - 1) > 1e-4 for r in seen[1:])                       # later minibatches see the updated policy


def test_gold_reward_model_scores_what_the_sampler_answered(lm):
    from llm_lab.rlhf import GoldRewardModel, gold_reward, concat_responses, encode_replies
    from llm_lab.preference import sample_answers
    model, tok = lm
    tasks = make_tasks(12, kinds=('add',), seed=1)
    grm = GoldRewardModel(tok, tasks)
    rolls = [r[0] for r in sample_answers(model, tok, [t.prompt for t in tasks], 1, 6, 1.0, torch.Generator().manual_seed(0))]
    ids, _ = concat_responses([r.prompt_ids for r in rolls], [r.response_ids for r in rolls], tok.eot_id)
    assert grm(ids).tolist() == pytest.approx([gold_reward(t, r.text) for t, r in zip(tasks, rolls)])
    right = encode_replies(tok, [t.prompt for t in tasks], [t.answer for t in tasks], tok.eot_id)
    wrong = encode_replies(tok, [t.prompt for t in tasks], [t.answer + ' 7 7' for t in tasks], tok.eot_id)
    assert grm(right).tolist() == [1.0] * 12 and grm(wrong).tolist() == pytest.approx([-0.1] * 12)   # wrong, and two words too long
    with pytest.raises(KeyError, match='no task has the prompt'): GoldRewardModel(tok, tasks[1:])(right[:1])


def test_reference_sharing_the_policy_weights_is_refused(lm):
    model, tok = lm
    policy = copy.deepcopy(model)
    with pytest.raises(ValueError, match='share parameters'):
        train_ppo(policy, policy, lambda ids: torch.zeros(len(ids)), tok, make_tasks(8, kinds=('add',)), PPOConfig(steps=1, batch_size=8, minibatch_size=8))
    with pytest.raises(ValueError, match='share parameters'):
        train_ppo(PolicyWithValue(policy), policy, lambda ids: torch.zeros(len(ids)), tok, make_tasks(8, kinds=('add',)), PPOConfig(steps=1, batch_size=8, minibatch_size=8))
