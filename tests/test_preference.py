"""Chapter 16's pieces on a tiny random model with the chat tokens: sampling, pair building with any labeller, DPO training and
its implicit-reward accuracy, GRPO's loss (formula and TRL's GRPOTrainer._compute_loss with the k3 KL term) and a GRPO step;
RLAIF labellers and their agreement, the constitution's critic and reviser, SFT on answers, the accuracy gain and the table."""
import copy, random
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from conftest import require
from llm_lab.tasks import Task, make_tasks
from llm_lab.rlhf import kl_estimate, masked_mean
from llm_lab.rlhf import RewardModel, encode_replies, gold_prefers, gold_reward
from llm_lab.preference import (Rollout, sample_answers, chat_prompt_ids, evaluate_policy, win_rate, Pair, preference_pairs,
                                pair_logps, train_dpo, implicit_reward_accuracy, grpo_loss, train_grpo, accuracy_gain,
                                reward_model_labeller, agreement, relabel, critique, revise, train_on_answers, comparison_table)


def test_sample_answers(lm):
    model, tok = lm
    prompts = ['What is 1 + 2?', 'What is 3 + 4?', 'Sort these digits: 3 1 2']
    out = sample_answers(model, tok, prompts, n=3, max_new_tokens=5, generator=torch.Generator().manual_seed(0))
    end = tok.special_tokens['<|end|>']
    assert [len(o) for o in out] == [3, 3, 3]
    for p, rs in zip(prompts, out):
        for r in rs:
            assert r.prompt_ids == chat_prompt_ids(tok, p, 64) and 1 <= len(r.response_ids) <= 5
            assert end not in r.response_ids[:-1]                                  # cut after the first <|end|>
    greedy = sample_answers(model, tok, prompts, n=1, max_new_tokens=5, temperature=0)
    assert [g[0].text for g in greedy] == [g[0].text for g in sample_answers(model, tok, prompts, 1, 5, temperature=0)]


def test_pairs_dpo_and_eval(lm):
    model, tok = lm
    tasks = make_tasks(6, kinds=('add', 'sort'), seed=0)
    first_longer = lambda t, a, b: (len(a) > len(b)) - (len(a) < len(b))         # any labeller: prefers the longer answer
    pairs = preference_pairs(model, tok, tasks, labeller=first_longer, n=4, max_new_tokens=6, seed=0)
    assert pairs and all(len(p.chosen) > len(p.rejected) for p in pairs)
    c, r, nc, nr = pair_logps(model, pairs, tok.eot_id)
    assert c.shape == (len(pairs),) and (nc == torch.tensor([len(p.chosen_ids) for p in pairs])).all()
    ref = copy.deepcopy(model).requires_grad_(False)
    assert implicit_reward_accuracy(model, ref, pairs, tok.eot_id) == 0.0      # policy = reference: no pair is won yet
    policy = copy.deepcopy(model)
    hist = train_dpo(policy, ref, pairs, tok.eot_id, beta=0.5, steps=25, batch_size=8, lr=3e-3)
    assert hist['loss'][-1] < hist['loss'][0] and implicit_reward_accuracy(policy, ref, pairs, tok.eot_id) == 1.0
    ev = evaluate_policy(policy, ref, tok, tasks, max_new_tokens=6)
    assert set(ev) == {'gold', 'accuracy', 'kl', 'words', 'texts'} and ev['kl'] > 0
    assert abs(evaluate_policy(model, ref, tok, tasks, max_new_tokens=6)['kl']) < 1e-5
    t = Task('add', 'What is 1 + 1?', '2')
    assert win_rate([t, t], ['2', '3'], ['3', '3']) == 0.75


def test_grpo_loss_formula():
    g = torch.Generator().manual_seed(0)
    lp, ref = torch.randn(4, 6, generator=g) - 2, torch.randn(4, 6, generator=g) - 2
    old = lp + 0.3 * torch.randn(4, 6, generator=g)
    m, a = torch.rand(4, 6, generator=g) > 0.3, torch.randn(4, generator=g)
    m[:, 0] = True
    ratio = torch.exp(lp - old)
    per = -torch.min(ratio * a[:, None], ratio.clamp(0.8, 1.2) * a[:, None]) + 0.04 * kl_estimate(lp, ref, 'k3')
    assert torch.isclose(grpo_loss(lp, old, ref, a, m), masked_mean(per, m, -1).mean(), atol=1e-6)
    assert torch.isclose(grpo_loss(lp, old, ref, a, m, how='token'), masked_mean(per, m), atol=1e-6)


class _Acc:
    device = torch.device('cpu'); num_processes = 1; sync_gradients = True
    def gather(self, x): return x
    gather_for_metrics = gather
    def reduce(self, x, reduction='sum'): return x


@pytest.mark.parametrize('loss_type, how', [('grpo', 'sequence'), ('bnpo', 'token'), ('dr_grpo', 'constant')])
def test_grpo_loss_matches_trl_with_kl(loss_type, how):
    require('trl')
    from trl.trainer.grpo_trainer import GRPOTrainer
    g = torch.Generator().manual_seed(1)
    B, T, eps, beta = 6, 7, 0.2, 0.05
    lp = torch.randn(B, T, generator=g) - 2
    old, ref = lp + 0.3 * torch.randn(B, T, generator=g), lp + 0.5 * torch.randn(B, T, generator=g)
    mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (B,), generator=g)[:, None]).long()
    adv = torch.randn(B, generator=g)
    model = SimpleNamespace(training=True)
    self = SimpleNamespace(
        model=model, accelerator=_Acc(), aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level='token', beta=beta, loss_type=loss_type, epsilon_low=eps, epsilon_high=eps, use_vllm=False,
        current_gradient_accumulation_steps=1, max_completion_length=T, _entropy_bonus_enabled=False,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False), _metrics=defaultdict(lambda: defaultdict(list)),
        _get_per_token_logps_and_entropies=lambda *a, **k: (lp, torch.zeros_like(lp), None))
    inputs = {'prompt_ids': torch.zeros(B, 2, dtype=torch.long), 'prompt_mask': torch.ones(B, 2, dtype=torch.long),
              'completion_ids': torch.zeros(B, T, dtype=torch.long), 'completion_mask': mask, 'advantages': adv,
              'old_per_token_logps': old, 'ref_per_token_logps': ref}
    trl_loss = GRPOTrainer._compute_loss(self, model, inputs)
    assert torch.isclose(grpo_loss(lp, old, ref, adv, mask.bool(), eps, beta, how, T), trl_loss, atol=1e-6)
    assert self._metrics['train']['kl'][-1] == pytest.approx(masked_mean(kl_estimate(lp, ref, 'k3'), mask.bool()).item(), abs=1e-6)


def test_train_grpo_runs_and_moves(lm):
    model, tok = lm
    ref = copy.deepcopy(model).requires_grad_(False)
    policy = copy.deepcopy(model)
    longer = lambda t, text: float(len(text.split()))                         # any reward function of (task, text)
    hist = train_grpo(policy, ref, tok, make_tasks(8, kinds=('add',)), reward_fn=longer, steps=2, prompts_per_step=2,
                      group_size=4, max_new_tokens=5, lr=1e-3)
    assert set(hist) == {'reward', 'accuracy', 'length', 'kl'} and len(hist['reward']) == 2
    assert abs(hist['kl'][0]) < 1e-5                                          # the first batch is sampled from the reference
    assert any((p - q).abs().max() > 0 for p, q in zip(policy.parameters(), ref.parameters()))


def test_agreement_and_relabel(lm):
    model, tok = lm
    t = Task('add', 'What is 1 + 1?', '2')
    pairs = [Pair(t, [1], [2], [3], '2', '3'), Pair(t, [1], [4], [5], '2', '2 is it'), Pair(t, [1], [6], [7], 'x', 'y z')]
    shorter = lambda task, a, b: (len(a) < len(b)) - (len(a) > len(b))          # a toy AI labeller: the shorter reply wins
    assert agreement(shorter, pairs) == pytest.approx((0.5 + 1 + 1) / 3)       # a tie counts half
    assert agreement(gold_prefers, pairs) == 1.0 and agreement(lambda *a: -1, pairs) == 0.0
    out = relabel(pairs, lambda task, a, b: -1 if a == 'x' else (0 if b == '3' else 1))
    assert [(p.chosen, p.chosen_ids) for p in out] == [('2', [4]), ('y z', [7])]   # the tie dropped, the third swapped
    with pytest.raises(ValueError, match='no pairs'): agreement(shorter, [])


def test_reward_model_labeller(lm):
    model, tok = lm
    rm = RewardModel(copy.deepcopy(model), tok.eot_id)
    t = Task('add', 'What is 1 + 2?', '3')
    lab = reward_model_labeller(rm, tok, tok.eot_id)
    s = lab(t, '3', '4')
    assert s in (-1, 1) and lab(t, '4', '3') == -s and lab(t, '3', '3') == 0     # antisymmetric, a tie for equal replies
    ids = encode_replies(tok, [t.prompt] * 2, ['3', '4'], tok.eot_id)
    with torch.no_grad(): r = rm(ids)
    assert s == (1 if r[0] > r[1] else -1)


@pytest.mark.parametrize('prompt, reply, broken, revised', [
    ('How many times does cat appear in: cat dog cat?', 'Sure! 2 cats', ['no filler', 'a number'], '2'),
    ('What is 3 + 4?', '7', [], '7'),
    ('Sort these digits: 3 1 2', '1 2 3 3 9', ['the given items'], '1 2 3'),
    ('Reverse the order of these words: rock salt milk', 'salt door', ['the given items'], 'salt rock milk'),
    ('Reverse the order of these words: cat dog', 'The answer is dog cat', ['no filler', 'the given items'], 'dog cat'),
    ('Join these words with commas: cat dog', 'cat,dog', [], 'cat,dog'),                 # not a list to re-arrange
    ('Which keyword is this about? The ___ statement: loops.', 'for', [], 'for'),        # a colon, but no list
])
def test_critique_and_revise(prompt, reply, broken, revised):
    assert critique(prompt, reply) == broken
    assert revise(prompt, reply) == revised
    assert critique(prompt, revise(prompt, reply)) == []                               # a revision passes its own critic


def test_revise_improves_gold_never_hurts():
    tasks = make_tasks(60, kinds=('sort', 'count', 'reverse', 'add'), seed=2)
    rng = random.Random(0)
    replies = [rng.choice(['Sure! ', '', 'The answer is ']) + t.answer + rng.choice(['', ' 9', ' cat']) for t in tasks]
    before = [gold_reward(t, r) for t, r in zip(tasks, replies)]
    after = [gold_reward(t, revise(t.prompt, r)) for t, r in zip(tasks, replies)]
    assert all(a >= b for a, b in zip(after, before)) and sum(after) > sum(before) + 10


def test_train_on_answers(lm):
    model, tok = lm
    policy = copy.deepcopy(model)
    tasks = make_tasks(8, kinds=('add',), seed=0)
    losses = train_on_answers(policy, tok, tasks, [t.answer for t in tasks], steps=30, batch_size=8, lr=3e-3)
    assert losses[-1] < 0.5 * losses[0]


def test_accuracy_gain_and_table():
    t = [Task('add', f'What is {i} + 0?', str(i)) for i in range(4)]
    gain, se, se_paired = accuracy_gain(t, ['0', '1', '2', 'x'], ['0', 'x', 'x', 'x'])
    assert gain == pytest.approx(0.5) and se == pytest.approx((0.25 * 0.75 / 4) ** 0.5)
    assert se_paired == pytest.approx(torch.tensor([0., 1, 1, 0]).std().item() / 2)
    with pytest.raises(ValueError, match='same number'): accuracy_gain(t, ['0'], ['0', '1', '2', '3'])
    df = comparison_table({'SFT': {'gold': 0.5, 'accuracy': 0.4, 'kl': 0.0}, 'DPO': {'gold': 0.6, 'accuracy': 0.5, 'kl': 0.2, 'win_rate': 0.55}})
    assert list(df.index) == ['SFT', 'DPO'] and df.loc['SFT', 'win vs SFT'] == 0.5 and df.loc['DPO', 'KL to ref'] == 0.2


def test_dpo_nll_weight_keeps_chosen_likely(lm):
    model, tok = lm
    tasks = make_tasks(6, kinds=('add', 'sort'), seed=0)
    first_longer = lambda t, a, b: (len(a) > len(b)) - (len(a) < len(b))
    pairs = preference_pairs(model, tok, tasks, labeller=first_longer, n=4, max_new_tokens=6, seed=0)
    ref = copy.deepcopy(model).requires_grad_(False)
    chosen = {}
    for w in (0.0, 1.0):
        policy = copy.deepcopy(model)
        train_dpo(policy, ref, pairs, tok.eot_id, beta=0.5, steps=20, batch_size=8, lr=3e-3, nll_weight=w)
        with torch.no_grad(): c, _, nc, _ = pair_logps(policy, pairs, tok.eot_id)
        chosen[w] = (c / nc).mean().item()
    assert chosen[1.0] > chosen[0.0] + 0.3                                   # RPO's NLL term holds the chosen answers up (measured +0.8)
