"""Chapter 16's pieces on a tiny random model with the chat tokens: sampling, pair building with any labeller, DPO training and
its implicit-reward accuracy, GRPO's loss (formula and TRL's GRPOTrainer._compute_loss with the k3 KL term) and a GRPO step."""
import copy
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from conftest import require
from llm_lab.model import GPT, GPTConfig
from llm_lab.tokenizer import BPETokenizer, EOT
from llm_lab.tasks import Task, make_tasks
from llm_lab.rlhf import kl_estimate, masked_mean
from llm_lab.preference import (Rollout, sample_answers, chat_prompt_ids, evaluate_policy, win_rate, Pair, preference_pairs,
                                pair_logps, train_dpo, implicit_reward_accuracy, grpo_loss, train_grpo)


@pytest.fixture(scope='module')
def lm():
    docs = [f"What is {a} + {b}? {a + b}. Sort these digits: 3 1 2" for a in range(10) for b in range(10)]
    tok = BPETokenizer.train(docs, 300, special_tokens=[EOT, '<|user|>', '<|assistant|>', '<|end|>'])
    torch.manual_seed(0)
    model = GPT(GPTConfig.gpt2(vocab_size=tok.vocab_size, context_len=64, n_layer=2, n_head=2, d_model=32)).eval()
    return model, tok


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
