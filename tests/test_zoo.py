"""Tests of llm_lab.zoo on reduced-steps variants in a temporary cache: training, caching, determinism, the lock, errors."""
import json, os, subprocess, sys, threading, time
from pathlib import Path

import pytest
import torch

import llm_lab.zoo as zoo
from llm_lab.zoo import pretrained, zoo_info, zoo_dir, zoo_spec, file_lock, ZOO

@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('LLM_LAB_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'

def test_recipes_are_well_formed():
    assert {'tiny-gpt2', 'tiny-llama', 'small-gpt2', 'small-gpt2-sft'} <= set(ZOO)
    for name in ZOO:
        spec = zoo_spec(name)
        assert spec['name'] == name and spec['train']['max_steps'] >= 100
        assert spec.get('arch') in ('gpt2', 'llama') or (spec['base'] in ZOO and spec['trainer'].startswith('llm_lab.'))
        small = zoo_spec(name, 7)
        assert small['train']['max_steps'] == 7 and small['train']['warmup_steps'] <= 7 and small['train']['eval_every'] <= 7
    with pytest.raises(KeyError, match='tiny-gpt2'): zoo_spec('gpt-5')
    with pytest.raises(ValueError): zoo_spec('tiny-gpt2', 0)

def test_pretrained_trains_once_then_loads(cache, monkeypatch):
    model, tok = pretrained('tiny-gpt2', max_steps=3, verbose=False)
    folder = zoo_dir("tiny-gpt2", 3)
    assert folder.parent == cache / 'zoo' and folder.name == 'tiny-gpt2-3steps'
    info = zoo_info("tiny-gpt2", 3)
    for key in ('val_loss', 'unigram_val_loss', 'params', 'train_seconds', 'config', 'train_config', 'seed', 'evals', 'losses'):
        assert key in info
    assert info['params'] == model.num_params() and info['config']['pos'] == 'learned' and len(info["losses"]) == 3
    assert not model.training and model.config.vocab_size >= tok.vocab_size
    ids = torch.tensor([tok.encode('The for statement')])
    assert model.generate(ids, 3, temperature=0).shape == (1, ids.shape[1] + 3)
    def boom(*a, **k): raise AssertionError('should load from the cache, not train')
    monkeypatch.setattr(zoo, 'train_zoo_model', boom)
    m2, _ = pretrained('tiny-gpt2', max_steps=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), m2.state_dict().values()))
    with pytest.raises(FileNotFoundError, match='not trained yet'): zoo_info("tiny-llama", 2)

def test_training_is_deterministic(tmp_path, monkeypatch):
    weights = []
    for run in ('a', 'b'):
        monkeypatch.setenv('LLM_LAB_CACHE', str(tmp_path / run))
        m, _ = pretrained('tiny-llama', max_steps=2, verbose=False)
        weights.append(m.state_dict())
    assert m.config.pos == 'rope' and m.config.n_kv_head == 2
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert zoo_info("tiny-llama", 2)['val_loss'] == json.loads((tmp_path / 'a' / 'zoo' / 'tiny-llama-2steps' / 'meta.json').read_text())['val_loss']

def test_changed_recipe_or_broken_folder_retrains(cache, monkeypatch):
    pretrained('tiny-gpt2', max_steps=2, verbose=False)
    calls = []
    real = zoo.train_zoo_model
    monkeypatch.setattr(zoo, 'train_zoo_model', lambda *a, **k: calls.append(1) or real(*a, **k))
    (zoo_dir('tiny-gpt2', 2) / 'model.safetensors').unlink()
    pretrained('tiny-gpt2', max_steps=2, verbose=False)
    monkeypatch.setitem(ZOO, 'tiny-gpt2', {**ZOO['tiny-gpt2'], 'seed': 1})
    pretrained('tiny-gpt2', max_steps=2, verbose=False)
    assert len(calls) == 2 and zoo_info('tiny-gpt2', 2)['seed'] == 1
    assert not [p for p in (cache / 'zoo').iterdir() if '.tmp-' in p.name]

def test_file_lock_excludes_and_times_out(tmp_path):
    lock = tmp_path / 'x.lock'
    with file_lock(lock):
        with pytest.raises(TimeoutError, match='could not lock'):
            with file_lock(lock, timeout=0.3): pass
    with file_lock(lock, timeout=0.3): pass  # released

def test_concurrent_first_calls_train_once(cache):
    code = ("import sys; from llm_lab.zoo import pretrained, zoo_info; m, t = pretrained('tiny-gpt2', max_steps=2, verbose=True); "
            "print('CREATED', zoo_info('tiny-gpt2', 2)['created'], zoo_info('tiny-gpt2', 2)['train_seconds'])")
    env = {**os.environ, 'LLM_LAB_CACHE': str(cache), 'LLM_LAB_QUIET': '1', 'OMP_NUM_THREADS': '1'}
    procs = [subprocess.Popen([sys.executable, '-c', code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    trained = sum('validation loss' in err for _, err in outs)   # the summary line of train_zoo_model
    assert trained == 1, outs
    assert len({out.split('CREATED')[1] for out, _ in outs}) == 1   # both loaded the same model


def test_small_gpt2_recipe_and_lazy_sft_trainer(cache, monkeypatch):
    spec = zoo_spec('small-gpt2-sft', 3)
    assert spec['base_spec'] == zoo_spec('small-gpt2', 3) and spec['base_spec']['arch'] == 'gpt2'  # a changed base retrains the SFT model
    assert 'llm_lab.finetune' in spec['trainer']
    src = Path(zoo.__file__).read_text()
    assert 'from llm_lab.finetune' not in src and 'from .finetune' not in src   # imported lazily, never at module level
    calls = []
    def fake_trainer(spec, max_steps, verbose):   # stands in for chapter 12's SFT: the zoo must call the registered trainer
        calls.append(max_steps)
        model, tok = pretrained(spec['base'], max_steps=max_steps, verbose=False)
        return model, tok, {'val_loss': 0.0}
    import llm_lab.finetune as ft
    monkeypatch.setattr(ft, 'train_sft_zoo_model', fake_trainer)
    model, tok = pretrained('small-gpt2-sft', max_steps=3, verbose=False)
    assert calls == [3] and all(s in tok.special_tokens for s in zoo.CHAT_TOKENS)
    base = zoo_info('small-gpt2', 3)
    assert set(base['val_loss_per_corpus']) == {'python-docs', 'tasks'} and base['tokens_seen'] == 3 * 16 * 128
    assert base['params'] == model.num_params() and zoo_info('small-gpt2-sft', 3)['spec']['base'] == 'small-gpt2'
