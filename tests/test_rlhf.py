"""Chapter 15's building blocks against their direct formulas on random inputs, against HF transformers (the same log-probs
from our GPT and its GPT2LMHeadModel twin), and against TRL's own loss code (DPOTrainer._compute_loss and
GRPOTrainer._compute_loss run on the same log-probs through a minimal stand-in for the trainer)."""
import copy, json, math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import require
from llm_lab.model import GPT, GPTConfig
from llm_lab.tasks import Task
from llm_lab.rlhf import (model_logits, token_logprobs, concat_responses, response_logprobs, token_entropy, masked_mean,
                          masked_sum_normalize, group_advantages, aggregate, pg_loss, clipped_pg_loss, kl_estimate, dpo_loss,
                          sequence_logps, pair_dpo_loss, sft_accumulate, gae, gold_reward, gold_prefers, load_preferences,
                          Preference)


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig.gpt2(vocab_size=64, context_len=32, n_layer=2, n_head=2, d_model=32)).eval()


def test_token_logprobs_formula():
    g = torch.Generator().manual_seed(0)
    logits, ids = torch.randn(3, 7, 11, generator=g), torch.randint(11, (3, 7), generator=g)
    lp = token_logprobs(logits, ids)
    want = torch.tensor([[torch.log_softmax(logits[b, t], -1)[ids[b, t + 1]] for t in range(6)] for b in range(3)])
    assert torch.allclose(lp, want, atol=1e-6)


def test_response_logprobs_masks_prompt_and_padding(tiny):
    ids, m = concat_responses([[1, 2, 3], [4]], [[5, 6], [7, 8, 9, 10]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 10]] and m.sum(-1).tolist() == [2, 4]
    lp, mk = response_logprobs(tiny, ids, m)
    assert mk.sum().item() == 6 and (lp[~mk] == 0).all()
    # each row alone (no padding) gives the same sequence log-prob: right padding changes nothing before it
    one = response_logprobs(tiny, torch.tensor([[1, 2, 3, 5, 6]]), torch.tensor([[0, 0, 0, 1, 1]]).bool())[0].sum()
    assert torch.isclose(lp[0].sum(), one, atol=1e-5)
    s, n = sequence_logps(tiny, [[1, 2, 3], [4]], [[5, 6], [7, 8, 9, 10]])
    assert torch.allclose(s, lp.sum(-1)) and n.tolist() == [2, 4]


def test_logprobs_match_hf(tiny):
    require('transformers')
    from llm_lab.finetune import to_hf_gpt2
    ids, m = concat_responses([[1, 2, 3], [4, 5]], [[6, 7], [8, 9, 10]], 0)
    with torch.no_grad():
        a, _ = response_logprobs(tiny, ids, m)
        b, _ = response_logprobs(to_hf_gpt2(tiny).eval(), ids, m)
    assert torch.allclose(a, b, atol=1e-4)


def test_entropy_and_masked_reductions():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 5, 9, generator=g) * 3
    p = torch.softmax(z.double(), -1)
    assert torch.allclose(token_entropy(z).double(), -(p * p.log()).sum(-1), atol=1e-5)
    assert torch.allclose(token_entropy(torch.zeros(2, 8)), torch.full((2,), math.log(8)))
    x, m = torch.randn(4, 6, generator=g), torch.rand(4, 6, generator=g) > 0.5
    m[:, 0] = True
    assert torch.isclose(masked_mean(x, m), x[m].mean())
    assert torch.allclose(masked_mean(x, m, -1), torch.stack([x[i][m[i]].mean() for i in range(4)]))
    assert torch.allclose(masked_sum_normalize(x, m, 10.0), torch.stack([x[i][m[i]].sum() / 10 for i in range(4)]))


def test_group_advantages():
    g = torch.Generator().manual_seed(2)
    r = torch.randn(5, 8, generator=g)
    a = group_advantages(r)
    assert torch.allclose(a, (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4))
    assert torch.allclose(group_advantages(r, scale=False), r - r.mean(1, keepdim=True))
    assert torch.allclose(a.mean(1), torch.zeros(5), atol=1e-6)
    assert (group_advantages(torch.ones(2, 4)) == 0).all()                 # equal rewards: no signal, no nan


def test_pg_losses_formulas():
    g = torch.Generator().manual_seed(3)
    lp, m, r = torch.randn(4, 6, generator=g), torch.rand(4, 6, generator=g) > 0.3, torch.randn(4, generator=g)
    assert torch.isclose(pg_loss(lp, r, m), -(r * (lp * m).sum(-1)).mean())
    assert torch.isclose(pg_loss(lp, r, m, baseline=r.mean()), -((r - r.mean()) * (lp * m).sum(-1)).mean())
    old = lp + 0.5 * torch.randn(4, 6, generator=g)
    ratio = torch.exp(lp - old)
    want = -torch.min(ratio * r[:, None], ratio.clamp(0.8, 1.2) * r[:, None])
    assert torch.isclose(clipped_pg_loss(lp, old, r, m, 0.2)[0], want[m].mean(), atol=1e-6)
    want_hi = -torch.min(ratio * r[:, None], ratio.clamp(0.8, 1.28) * r[:, None])
    assert torch.isclose(clipped_pg_loss(lp, old, r, m, 0.2, eps_high=0.28, how='sequence')[0], masked_mean(want_hi, m, -1).mean(), atol=1e-6)
    assert torch.isclose(aggregate(want, m, 'constant', 10), (want * m).sum() / (4 * 10), atol=1e-6)
    with pytest.raises(ValueError): aggregate(want, m, 'tokens')


def test_baseline_lowers_variance_not_mean():
    "REINFORCE on a 3-armed bandit: the baseline leaves the mean gradient and cuts its variance."
    logits = torch.tensor([0.5, 0.0, -0.5], requires_grad=True)
    reward = torch.tensor([1.0, 2.0, 3.0]) + 5                               # all positive: no baseline is noisy
    g = torch.Generator().manual_seed(0)
    grads = {None: [], 'mean': []}
    for _ in range(400):
        a = torch.multinomial(torch.softmax(logits, 0).detach(), 8, replacement=True, generator=g)
        for b in grads:
            lp = torch.log_softmax(logits, 0)[a][:, None]
            base = None if b is None else (torch.softmax(logits, 0) * reward).sum().detach()
            grads[b].append(torch.autograd.grad(pg_loss(lp, reward[a], torch.ones_like(lp, dtype=torch.bool), base), logits)[0])
    g0, g1 = torch.stack(grads[None]), torch.stack(grads['mean'])
    assert torch.allclose(g0.mean(0), g1.mean(0), atol=0.15)
    assert g1.var(0).sum() < 0.2 * g0.var(0).sum()


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    lr = lp - ref
    assert torch.allclose(kl_estimate(lp, ref, 'k1'), lr) and torch.allclose(kl_estimate(lp, ref, 'k2'), lr ** 2 / 2)
    assert torch.allclose(kl_estimate(lp, ref, 'k3'), torch.exp(-lr) - 1 + lr)
    assert (kl_estimate(torch.randn(100), torch.randn(100), 'k3') >= 0).all()
    with pytest.raises(ValueError): kl_estimate(lp, ref, 'k4')


def test_dpo_loss_formulas():
    g = torch.Generator().manual_seed(4)
    pc, pr, rc, rr = (torch.randn(6, generator=g) * 3 - 10 for _ in range(4))
    lc, lr_ = torch.randint(1, 9, (6,), generator=g).float(), torch.randint(1, 9, (6,), generator=g).float()
    loss, rew_c, rew_r = dpo_loss(pc, pr, rc, rr, beta=0.3)
    assert torch.allclose(loss, -torch.log(torch.sigmoid(0.3 * ((pc - rc) - (pr - rr)))), atol=1e-5)
    assert torch.allclose(rew_c, 0.3 * (pc - rc)) and torch.allclose(rew_r, 0.3 * (pr - rr))
    ipo = dpo_loss(pc, pr, rc, rr, 0.3, 'ipo', lc, lr_)[0]
    assert torch.allclose(ipo, ((pc - rc) / lc - (pr - rr) / lr_ - 1 / 0.6) ** 2)
    assert torch.allclose(dpo_loss(pc, pr, rc, rr, 0.3, 'hinge')[0], torch.relu(1 - 0.3 * ((pc - rc) - (pr - rr))))
    with pytest.raises(ValueError): dpo_loss(pc, pr, rc, rr, 0.3, 'ipo')


class _Tok:
    def encode(self, s): return [ord(c) % 64 for c in s]


def test_pair_dpo_loss_from_models(tiny):
    policy = copy.deepcopy(tiny)
    assert abs(pair_dpo_loss(policy, tiny, _Tok(), 'ab', 'cde', 'fg').item() - math.log(2)) < 1e-5  # policy = reference
    with torch.no_grad(): policy.lm_head.weight.add_(0.05 * torch.randn_like(policy.lm_head.weight))
    p, c, r = _Tok().encode('ab'), _Tok().encode('cde'), _Tok().encode('fg')
    lp, _ = sequence_logps(policy, [p, p], [c, r]); ref, _ = sequence_logps(tiny, [p, p], [c, r])
    want = -F.logsigmoid(0.1 * ((lp[0] - ref[0]) - (lp[1] - ref[1])))
    assert torch.isclose(pair_dpo_loss(policy, tiny, _Tok(), 'ab', 'cde', 'fg'), want, atol=1e-5)
    loss = pair_dpo_loss(policy, tiny, _Tok(), 'ab', 'cde', 'fg'); loss.backward()
    assert policy.lm_head.weight.grad is not None and all(p.grad is None for p in tiny.parameters())


def test_sft_accumulate_equals_full_batch(tiny):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(64, (6, 12), generator=g)
    labels = ids.masked_fill(torch.rand(6, 12, generator=g) < torch.linspace(0.1, 0.9, 6)[:, None], -100)
    m1, m2, m3 = (copy.deepcopy(tiny) for _ in range(3))
    l1 = sft_accumulate(m1, [(ids, labels)])
    l2 = sft_accumulate(m2, [(ids[:1], labels[:1]), (ids[1:4], labels[1:4]), (ids[4:], labels[4:])])
    assert abs(l1 - l2) < 1e-5 and abs(l1 - F.cross_entropy(model_logits(tiny, ids)[:, :-1].flatten(0, 1), labels[:, 1:].flatten()).item()) < 1e-5
    for p, q in zip(m1.parameters(), m2.parameters()): assert torch.allclose(p.grad, q.grad, atol=1e-6)
    # the naive 1/k scaling of per-micro-batch means is NOT the full-batch gradient when token counts differ
    for ids_, lab in [(ids[:1], labels[:1]), (ids[1:], labels[1:])]:
        (F.cross_entropy(model_logits(m3, ids_)[:, :-1].flatten(0, 1), lab[:, 1:].flatten()) / 2).backward()
    assert max((p.grad - q.grad).abs().max().item() for p, q in zip(m1.parameters(), m3.parameters())) > 1e-4


def test_gae_direct_formula():
    g = torch.Generator().manual_seed(6)
    B, T, gamma, lam = 3, 7, 0.9, 0.8
    r, v = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    lens = torch.tensor([7, 4, 1]); m = torch.arange(T)[None] < lens[:, None]
    adv, ret = gae(r, v, m, gamma, lam)
    for b in range(B):
        n = int(lens[b]); vv = torch.cat([v[b, :n], torch.zeros(1)])
        delta = r[b, :n] + gamma * vv[1:] - vv[:-1]
        want = torch.stack([sum((gamma * lam) ** l * delta[t + l] for l in range(n - t)) for t in range(n)])
        assert torch.allclose(adv[b, :n], want, atol=1e-5) and (adv[b, n:] == 0).all()
        assert torch.allclose(ret[b, :n], want + v[b, :n], atol=1e-5)


def test_gold_preference():
    t = Task('add', 'What is 2 + 3?', '5')
    assert gold_reward(t, '5') == 1.0 and gold_reward(t, ' 5 ') == 1.0 and gold_reward(t, '6') == 0.0
    assert gold_reward(t, '5 is it') == pytest.approx(-0.1)                 # wrong (not exactly 5) and two extra words
    assert gold_prefers(t, '5', '6') == 1 and gold_prefers(t, '6', '5') == -1 and gold_prefers(t, '6', '7') == 0
    assert gold_prefers(t, '7', '7 or 8') == 1                              # both wrong: the concise one


def test_load_preferences(tmp_path):
    f = tmp_path / 'p.jsonl'
    recs = [{'prompt': 'Q1', 'chosen': 'good', 'rejected': 'bad'},
            {'prompt': [{'role': 'user', 'content': 'Q2'}], 'chosen': [{'role': 'user', 'content': 'Q2'}, {'role': 'assistant', 'content': 'yes'}],
             'rejected': [{'role': 'assistant', 'content': 'no'}]},
            {'prompt': 'Q3', 'completion': 'maybe', 'label': False}]
    f.write_text('\n'.join(json.dumps(r) for r in recs) + '\n\n')
    assert load_preferences(f) == [Preference('Q1', 'good', 'bad'), Preference('Q2', 'yes', 'no'), Preference('Q3', 'maybe', None, False)]
    f.write_text(json.dumps({'prompt': 'x', 'answer': 'y'}))
    with pytest.raises(ValueError, match='chosen'): load_preferences(f)


# --- TRL parity ------------------------------------------------------------------------------------------------
class _Acc:
    "The accelerator of one process: gathers and reductions are the identity."
    device = torch.device('cpu'); num_processes = 1; sync_gradients = True
    def gather(self, x): return x
    gather_for_metrics = gather
    def reduce(self, x, reduction='sum'): return x


def _completion_batch(g, B=4, P=3, T=6):
    "Per-token log-probs (policy, reference) of B chosen + B rejected completions of random lengths after a P-token prompt."
    lens = torch.randint(1, T + 1, (2 * B,), generator=g)
    cmask = torch.zeros(2 * B, P + T, dtype=torch.long)
    for i, n in enumerate(lens): cmask[i, P:P + n] = 1
    shift = cmask[:, 1:]
    lp = (torch.randn(2 * B, P + T - 1, generator=g) - 2) * shift
    ref = (torch.randn(2 * B, P + T - 1, generator=g) - 2) * shift
    return cmask, lp, ref


@pytest.mark.parametrize('loss_type', ['sigmoid', 'ipo', 'hinge'])
def test_dpo_loss_matches_trl(loss_type):
    require('trl')
    from trl.trainer.dpo_trainer import DPOTrainer
    g = torch.Generator().manual_seed(7)
    cmask, lp, ref = _completion_batch(g)
    B, beta = 4, 0.25
    out = SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=torch.zeros_like(lp), is_top1=torch.zeros_like(lp, dtype=torch.bool))
    fake_model = lambda **kw: out
    fake_model.training = True
    self = SimpleNamespace(model=fake_model, accelerator=_Acc(), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
                           f_divergence_type='reverse_kl', loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=0.0,
                           use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    ref_seq = ref.sum(-1)
    inputs = {'input_ids': torch.zeros_like(cmask), 'attention_mask': torch.ones_like(cmask), 'completion_mask': cmask,
              'ref_chosen_logps': ref_seq[:B], 'ref_rejected_logps': ref_seq[B:]}
    trl_loss = DPOTrainer._compute_loss(self, fake_model, inputs, return_outputs=False)
    s, n = lp.sum(-1), cmask.sum(-1).float()
    ours, rc, rr = dpo_loss(s[:B], s[B:], ref_seq[:B], ref_seq[B:], beta, loss_type, n[:B], n[B:])
    assert torch.isclose(ours.mean(), trl_loss, atol=1e-5), (ours.mean(), trl_loss)
    assert self._metrics['train']['rewards/accuracies'][-1] == pytest.approx((rc > rr).float().mean().item())


@pytest.mark.parametrize('loss_type, how', [('grpo', 'sequence'), ('bnpo', 'token'), ('dr_grpo', 'constant')])
def test_clipped_loss_matches_trl_grpo(loss_type, how):
    require('trl')
    from trl.trainer.grpo_trainer import GRPOTrainer
    g = torch.Generator().manual_seed(8)
    B, T, eps = 6, 7, 0.2
    lp = torch.randn(B, T, generator=g) - 2
    old = lp + 0.3 * torch.randn(B, T, generator=g)
    mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (B,), generator=g)[:, None]).long()
    adv = torch.randn(B, generator=g)
    fake_model = SimpleNamespace(training=True)
    self = SimpleNamespace(
        model=fake_model, accelerator=_Acc(), aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level='token', beta=0.0, loss_type=loss_type, epsilon_low=eps, epsilon_high=eps, use_vllm=False,
        current_gradient_accumulation_steps=1, max_completion_length=T, _entropy_bonus_enabled=False,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False), _metrics=defaultdict(lambda: defaultdict(list)),
        _get_per_token_logps_and_entropies=lambda *a, **k: (lp, torch.zeros_like(lp), None))
    inputs = {'prompt_ids': torch.zeros(B, 2, dtype=torch.long), 'prompt_mask': torch.ones(B, 2, dtype=torch.long),
              'completion_ids': torch.zeros(B, T, dtype=torch.long), 'completion_mask': mask, 'advantages': adv,
              'old_per_token_logps': old}
    trl_loss = GRPOTrainer._compute_loss(self, fake_model, inputs)
    ours = clipped_pg_loss(lp, old, adv, mask.bool(), eps, how=how, max_len=T)[0]
    assert torch.isclose(ours, trl_loss, atol=1e-6), (ours, trl_loss)


def test_bradley_terry_loss_formula():
    from llm_lab.rlhf import bradley_terry_loss
    g = torch.Generator().manual_seed(0)
    rc, rr = torch.randn(17, generator=g) * 3, torch.randn(17, generator=g) * 3
    assert torch.allclose(bradley_terry_loss(rc, rr), -F.logsigmoid(rc - rr).mean(), atol=1e-6)
    assert torch.allclose(bradley_terry_loss(rc, rr, margin=0.5), -F.logsigmoid(rc - rr - 0.5).mean(), atol=1e-6)
    assert abs(bradley_terry_loss(rc, rc).item() - math.log(2)) < 1e-6        # equal rewards: log 2
    assert torch.allclose(bradley_terry_loss(rc + 7, rr + 7), bradley_terry_loss(rc, rr))  # only differences matter


def test_reward_model_pools_last_token_and_head_trains(tiny):
    from llm_lab.rlhf import RewardModel, train_reward_model, pair_margins
    torch.manual_seed(0)
    rm = RewardModel(copy.deepcopy(tiny), pad_id=0)
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    assert torch.allclose(rm(ids)[0], rm(ids[:1, :3])[0], atol=1e-5)         # the padding is ignored
    # a tiny synthetic task: chosen sequences end in token 3, rejected ones in token 4; only the head trains
    g = torch.Generator().manual_seed(0)
    body = torch.randint(5, 60, (64, 6), generator=g)
    chosen, rejected = torch.cat([body, torch.full((64, 1), 3)], 1), torch.cat([body, torch.full((64, 1), 4)], 1)
    for p in rm.body.parameters(): p.requires_grad_(False)
    before = rm.body.state_dict()['tok_emb.weight'].clone()
    losses = train_reward_model(rm, chosen[:48], rejected[:48], steps=60, batch_size=16, lr=3e-2)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    assert (pair_margins(rm, chosen[48:], rejected[48:]) > 0).all()           # held-out rows
    assert torch.equal(before, rm.body.state_dict()['tok_emb.weight'])       # the body did not move
