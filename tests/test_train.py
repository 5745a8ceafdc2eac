"""Tests of llm_lab.train and llm_lab.generate: config checks, accumulation, evaluation, exact resume, checkpoint errors, CLIs, checkers."""
import json, math, os, random, sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from llm_lab.data import RandomWindows
from llm_lab.model import GPT, GPTConfig
from llm_lab.tokenizer import BPETokenizer
from llm_lab.train import (TrainConfig, TrainState, Callback, make_optimizer, lr_at, train_step, evaluate, train,
                           save_checkpoint, load_checkpoint, read_checkpoint, rng_state, set_rng_state, split_docs,
                           corpus_tokens, unigram_loss, pretrain_cli, measure_throughput, save_state, load_state, param_groups,
                           peak_flops, plot_schedule, plot_losses, LossPlot)
from llm_lab.generate import load_for_generation, complete, generate_cli, next_token_probs, plot_temperature
from llm_lab.optim import AdamW, lr_warmup_cosine

V = 300

@pytest.fixture(scope='module')
def tok():
    return BPETokenizer.train(['the quick brown fox jumps over the lazy dog. ' * 20, 'def f(x): return x * 2\n' * 20], V)

@pytest.fixture(scope='module')
def ids():
    return np.random.default_rng(0).integers(0, V, 5000).astype(np.uint16)

def small(arch='gpt2', **kw):
    return getattr(GPTConfig, arch)(**{**dict(vocab_size=V, context_len=16, n_layer=2, n_head=2, d_model=32), **kw})

def run(ids, tok, out=None, resume=None, init_seed=0, crash_at=None, arch='gpt2', dropout=0.0, **kw):
    torch.manual_seed(init_seed)
    model = GPT(small(arch, dropout=dropout))
    cfg = TrainConfig(**{**dict(max_steps=8, batch_size=4, warmup_steps=2, eval_every=4, ckpt_every=4, out_dir=out), **kw})
    data = RandomWindows(ids, cfg.batch_size, model.config.context_len, seed=cfg.seed)
    class Crash(Callback):
        def on_step_end(self, state):
            if state.step == crash_at: raise KeyboardInterrupt
    return train(model, data, cfg, val=ids[:500], resume=resume, tokenizer=tok, callbacks=[Crash()] if crash_at else [])

def test_config_validation():
    for bad in (dict(max_steps=0), dict(batch_size=1.5), dict(warmup_steps=300), dict(lr=0), dict(optimizer='sgd'),
                dict(dtype='fp8'), dict(grad_clip=0)):
        with pytest.raises(ValueError): TrainConfig(**bad)
    c = TrainConfig(lr=1e-3)
    assert c.min_lr == 1e-4 and TrainConfig(**json.loads(json.dumps(asdict(c)))) == c

def test_optimizer_groups_cover_every_parameter_once():
    for arch in ('gpt2', 'llama'):
        m = GPT(small(arch))
        for which in ('torch', 'llm_lab'):
            opt = make_optimizer(m, TrainConfig(optimizer=which))
            ps = [p for g in opt.param_groups for p in g['params']]
            assert len({id(p) for p in ps}) == len(ps) and sum(p.numel() for p in ps) == m.num_params()
            assert all(p.dim() >= 2 for p in opt.param_groups[0]['params']) and opt.param_groups[1]['weight_decay'] == 0

def test_schedule():
    c = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0) and lr_at(100, c) == pytest.approx(0.1)
    assert all(lr_at(s, c) >= lr_at(s + 1, c) for s in range(10, 100))

def test_grad_accumulation_matches_big_batch(ids):
    x, y = RandomWindows(ids, 8, 16, seed=3).sample()
    out = []
    for accum in (1, 2, 4):
        torch.manual_seed(0); m = GPT(small())
        c = TrainConfig(batch_size=8 // accum, grad_accum=accum, warmup_steps=0, lr=1e-3)
        w0 = torch.cat([p.detach().flatten() for p in m.parameters()])
        loss, _ = train_step(m, torch.optim.SGD(m.parameters(), lr=1.0), iter([(x[i::accum], y[i::accum]) for i in range(accum)]), c)
        out.append((loss, w0 - torch.cat([p.detach().flatten() for p in m.parameters()])))  # the (clipped) gradient
    for loss, g in out[1:]:
        assert loss == pytest.approx(out[0][0], abs=1e-5) and torch.allclose(g, out[0][1], atol=1e-6, rtol=1e-4)

def test_evaluate_is_deterministic_and_checks_length(ids):
    m = GPT(small())
    a, b = evaluate(m, ids[:1000]), evaluate(m, ids[:1000], batch_size=3)
    assert a['loss'] == pytest.approx(b['loss'], rel=1e-5) and a['tokens'] == (999 // 16) * 16
    assert abs(a['loss'] - math.log(V)) < 0.3 and a['ppl'] == pytest.approx(math.exp(a['loss']))
    assert m.training  # restored
    with pytest.raises(ValueError, match='context_len'): evaluate(m, ids[:10])

def test_training_reduces_loss(ids, tok):
    # a repetitive stream is learnable in a few steps
    stream = np.tile(np.arange(50, dtype=np.uint16), 100)
    torch.manual_seed(0); m = GPT(small())
    c = TrainConfig(max_steps=30, batch_size=8, warmup_steps=3, eval_every=10, lr=1e-2)
    st = train(m, RandomWindows(stream, 8, 16, seed=0), c, val=stream[:400])
    assert st.step == 30 and len(st.history) == 30 and [e['step'] for e in st.evals] == [10, 20, 30]
    assert st.evals[-1]['loss'] < min(2.0, st.evals[0]['loss']) and st.tokens == 30 * 8 * 16

@pytest.mark.parametrize('optimizer,arch,dropout,accum', [('torch', 'gpt2', 0.0, 1), ('llm_lab', 'llama', 0.0, 2), ('torch', 'gpt2', 0.2, 1)])
def test_resume_is_exact(tmp_path, ids, tok, optimizer, arch, dropout, accum):
    kw = dict(optimizer=optimizer, arch=arch, dropout=dropout, grad_accum=accum)
    full = run(ids, tok, **kw)
    random.random(); np.random.rand(); torch.rand(3)  # disturb the global generators: the checkpoint must restore them
    with pytest.raises(KeyboardInterrupt): run(ids, tok, out=str(tmp_path / 'ck'), crash_at=4, **kw)
    assert read_checkpoint(tmp_path / 'ck')['state']['step'] == 4
    resumed = run(ids, tok, out=str(tmp_path / 'ck'), resume=tmp_path / 'ck', init_seed=99, **kw)
    assert [h['loss'] for h in resumed.history] == [h['loss'] for h in full.history]
    assert [e['loss'] for e in resumed.evals] == [e['loss'] for e in full.evals]
    assert not list(tmp_path.glob('ck/*.tmp')) and not list(tmp_path.glob('ck/.*'))

def test_checkpoint_errors(tmp_path, ids, tok):
    run(ids, tok, out=str(tmp_path / 'ck'), max_steps=4)
    ck = tmp_path / 'ck'
    assert {p.name for p in ck.iterdir()} == {'model.safetensors', 'config.json', 'optimizer.safetensors', 'tokenizer.json', 'trainer.json'}
    model, state, meta = load_checkpoint(ck)
    assert state.step == 4 and isinstance(model, GPT) and GPT.from_pretrained(ck).config == model.config
    with pytest.raises(FileNotFoundError, match='not a checkpoint folder'): read_checkpoint(tmp_path / 'nope')
    empty = tmp_path / 'empty'; empty.mkdir()
    with pytest.raises(FileNotFoundError, match='no trainer.json'): read_checkpoint(empty)
    import shutil
    for name, corrupt, err in [
        ('trunc', lambda d: open(d / 'model.safetensors', 'r+b').truncate(50), 'truncated'),
        ('swap', lambda d: (d / 'optimizer.safetensors').write_bytes(bytes(reversed((d / 'optimizer.safetensors').read_bytes()))), 'SHA-256'),
        ('json', lambda d: (d / 'trainer.json').write_text((d / 'trainer.json').read_text()[:100]), 'truncated or not JSON'),
        ('foreign', lambda d: (d / 'trainer.json').write_text('{"step": 1}'), 'not an llm_lab checkpoint'),
    ]:
        d = tmp_path / name; shutil.copytree(ck, d); corrupt(d)
        with pytest.raises(ValueError, match=err): load_checkpoint(d)
    d = tmp_path / 'missing'; shutil.copytree(ck, d); (d / 'optimizer.safetensors').unlink()
    with pytest.raises(FileNotFoundError, match='missing optimizer'): read_checkpoint(d)
    with pytest.raises(ValueError, match='model config differs'): load_checkpoint(ck, GPT(small(d_model=64)))

def test_rng_state_roundtrip_through_json():
    g = torch.Generator().manual_seed(5)
    class D: gen = g
    s = json.loads(json.dumps(rng_state(D)))
    a = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=g))
    set_rng_state(s, D)
    b = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=g))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])

def test_data_helpers():
    docs = [f'doc {i}' for i in range(20)]
    tr, va = split_docs(docs)
    assert va == ['doc 3', 'doc 13'] and len(tr) == 18
    with pytest.raises(ValueError): split_docs(['a', 'b'])
    t, v = np.array([0, 0, 1]), np.array([0, 1])
    p = np.array([3, 2, 1]) / 6.0  # add-one smoothing over V=3
    assert unigram_loss(t, v, 3) == pytest.approx(-(math.log(p[0]) + math.log(p[1])) / 2)

def test_pretrain_and_generate_cli(tmp_path, capsys):
    out = tmp_path / 'run'
    flags = ['--out', str(out), '--steps', '6', '--n-layer', '1', '--d-model', '32', '--context-len', '16', '--eval-every', '3', '--vocab-size', '300']
    assert pretrain_cli(flags) == 0
    assert 'validation loss' in capsys.readouterr().out and read_checkpoint(out)['state']['step'] == 6
    assert pretrain_cli(flags) == 2 and 'already holds a checkpoint' in capsys.readouterr().err
    assert pretrain_cli(flags[:3] + ['12', '--resume']) == 0 and read_checkpoint(out)['state']['step'] == 12
    conf = tmp_path / 'c.json'
    conf.write_text(json.dumps({'model': {'arch': 'llama', 'n_layer': 1, 'd_model': 32, 'context_len': 16, 'vocab_size': 300},
                                'train': {'max_steps': 4, 'eval_every': 2}}))
    assert pretrain_cli(['--config', str(conf), '--out', str(tmp_path / 'llama')]) == 0
    assert read_checkpoint(tmp_path / 'llama')['model_config']['pos'] == 'rope'
    conf.write_text('{"model": ')
    assert pretrain_cli(['--config', str(conf), '--out', str(tmp_path / 'x')]) == 2 and 'not valid JSON' in capsys.readouterr().err
    conf.write_text('{"train": {"max_stepz": 3}}')
    assert pretrain_cli(['--config', str(conf), '--out', str(tmp_path / 'x')]) == 2 and 'max_stepz' in capsys.readouterr().err
    capsys.readouterr()
    assert generate_cli([str(out), '--prompt', 'the', '-n', '5', '--num-samples', '2']) == 0
    assert capsys.readouterr().out.count('--- sample') == 2
    assert generate_cli([str(tmp_path / 'nothing')]) == 2

def test_generation_helpers(tmp_path, ids, tok):
    run(ids, tok, out=str(tmp_path / 'ck'), max_steps=2)
    model, t = load_for_generation(tmp_path / 'ck')
    a = complete(model, t, 'the', 8, seed=1, num_samples=2)
    assert len(a) == 2 and a == complete(model, t, 'the', 8, seed=1, num_samples=2)
    assert isinstance(complete(model, t, '', 4)[0], str)
    p = next_token_probs(model, t, 'the quick', 0.5)
    assert p.shape == (V,) and float(p.sum()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError): next_token_probs(model, t, 'the', 0)
    (tmp_path / 'ck' / 'tokenizer.json').unlink()
    with pytest.raises(FileNotFoundError): load_for_generation(tmp_path / 'ck')

def test_measure_throughput():
    r = measure_throughput(GPT(small()), TrainConfig(batch_size=2), steps=1, warmup=1)
    assert r['tokens_per_s'] > 0 and r['mfu'] is None and r['params'] > 0
    r = measure_throughput(GPT(small()), TrainConfig(batch_size=2), steps=1, warmup=0, peak=1e12)
    assert 0 < r['mfu'] < 1


# ---------------------------------------------------------------- no host sync per micro-batch; compile
def _legacy_step(model, opt, batches, cfg):
    "The loop's step as it was: loss.item() after every micro-batch."
    total = 0.0
    for _ in range(cfg.grad_accum):
        x, y = next(batches)
        _, loss = model(x, y)
        (loss / cfg.grad_accum).backward()
        total += loss.item() / cfg.grad_accum
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float('inf'))
    opt.step(); opt.zero_grad()
    return total, float(norm)


def test_train_step_syncs_once_and_logs_the_same_losses(ids, monkeypatch):
    cfg = TrainConfig(batch_size=2, grad_accum=4, warmup_steps=0)
    runs = []
    for step in (_legacy_step, train_step):
        torch.manual_seed(0); m = GPT(small()); opt = make_optimizer(m, cfg)
        data = RandomWindows(ids, 2, 16, seed=1)
        runs.append([step(m, opt, data, cfg) for _ in range(3)])
    assert runs[0] == runs[1]  # losses and norms to the last bit
    calls = []
    def spy(name, real):
        def f(self, *a, **k):
            if sys._getframe(1).f_code.co_filename.endswith(os.path.join('llm_lab', 'train.py')): calls.append(name)
            return real(self, *a, **k)
        return f
    for name in ('item', 'tolist', '__float__', '__int__', '__bool__'): monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    torch.manual_seed(0); m = GPT(small()); batches = [RandomWindows(ids, 2, 16, seed=1).sample() for _ in range(4)]
    train_step(m, make_optimizer(m, cfg), iter(batches), cfg)
    assert calls == ['tolist'], calls  # the loop reads (losses, norm) once per optimizer step, never per micro-batch


def test_model_compiles_into_one_graph(ids):
    torch._dynamo.reset()
    x, y = RandomWindows(ids, 2, 16, seed=0).sample()
    ex = torch._dynamo.explain(GPT(small()))(x, y)
    assert ex.graph_count == 1 and ex.graph_break_count == 0, ex.break_reasons


def test_compile_flag_trains_the_compiled_model(ids, monkeypatch):
    compiled, graphs = [], []
    real = torch.compile
    def count_graphs(gm, example_inputs): graphs.append(gm); return gm.forward  # a backend that runs dynamo's graph as is
    def spy(model, **kw): compiled.append(model); return real(model, backend=count_graphs)
    monkeypatch.setattr(torch, 'compile', spy)
    torch._dynamo.reset()
    torch.manual_seed(0); m = GPT(small('llama'))
    a = train(m, RandomWindows(ids, 4, 16, seed=0), TrainConfig(max_steps=3, batch_size=4, warmup_steps=1, compile=True))
    assert compiled == [m] and len(graphs) == 1  # the loop ran the compiled model, traced once into one graph
    torch.manual_seed(0)
    b = train(GPT(small('llama')), RandomWindows(ids, 4, 16, seed=0), TrainConfig(max_steps=3, batch_size=4, warmup_steps=1))
    assert [h['loss'] for h in a.history] == pytest.approx([h['loss'] for h in b.history], rel=1e-5)


# ---------------------------------------------------------------- the trainer plug-in
def _plugin_run(ids, which='torch', **plugins):
    torch.manual_seed(0); m = GPT(small())
    c = TrainConfig(max_steps=6, batch_size=4, warmup_steps=2, optimizer=which)
    return [h['loss'] for h in train(m, RandomWindows(ids, 4, 16, seed=0), c, **plugins).history]


def test_plugged_in_optimizer_and_schedule_reproduce_the_default_run(ids):
    c = TrainConfig(max_steps=6, batch_size=4, warmup_steps=2)
    sched = lambda step: lr_warmup_cosine(step, c.lr, c.warmup_steps, c.max_steps, c.min_lr)
    ours = _plugin_run(ids, optimizer=lambda groups, cfg: AdamW(groups, lr=cfg.lr, betas=cfg.betas), schedule=sched)
    assert ours == _plugin_run(ids, which='llm_lab')
    theirs = _plugin_run(ids, optimizer=lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas), schedule=sched)
    assert theirs == _plugin_run(ids)
    slow = _plugin_run(ids, schedule=lambda step: 1e-5)  # the schedule is really used: another lr, another run
    assert slow[0] == theirs[0] and slow[1:] != theirs[1:]
    groups = param_groups(GPT(small()), c)
    assert [g['weight_decay'] for g in groups] == [c.weight_decay, 0.0]


def test_plugin_errors(ids):
    class NoGroups:
        def step(self): pass
        def zero_grad(self): pass
    with pytest.raises(TypeError, match='param_groups'): _plugin_run(ids, optimizer=lambda g, c: NoGroups())
    with pytest.raises(ValueError, match='learning rate of step 0'): _plugin_run(ids, schedule=lambda s: float('nan'))
    with pytest.raises(TypeError, match='schedule'): _plugin_run(ids, schedule=0.1)


# ---------------------------------------------------------------- one-file state of any module
@pytest.mark.parametrize('make_opt', [
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1),
    lambda ps: AdamW(ps, lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1),
    lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True)])
@pytest.mark.parametrize('to_file', [False, True])
def test_save_state_round_trip_is_exact(tmp_path, ids, make_opt, to_file):
    import io
    def fit(m, o, data, n):
        out = []
        for _ in range(n):
            x, y = next(data); loss = m(x, y)[1]; loss.backward(); o.step(); o.zero_grad(); out.append(loss.item())
        return out
    torch.manual_seed(0); m1 = GPT(small(dropout=0.1)); o1 = make_opt(m1.parameters()); d1 = RandomWindows(ids, 2, 16, seed=0)
    fit(m1, o1, d1, 3)
    f = tmp_path / 's.safetensors' if to_file else io.BytesIO()
    save_state(f, m1, o1, step=3, extra={'name': 'run', 'shape': (2, 16)}, data=d1)
    after = fit(m1, o1, d1, 3)
    torch.manual_seed(1); m2 = GPT(small(dropout=0.1)); o2 = make_opt(m2.parameters()); d2 = RandomWindows(ids, 2, 16, seed=9)
    if not to_file: f.seek(0)
    got = load_state(f, m2, o2, data=d2)
    assert got == {'step': 3, 'extra': {'name': 'run', 'shape': (2, 16)}}
    strip = lambda o: [{k: v for k, v in g.items() if k != 'params'} for g in o.param_groups]
    fresh = make_opt(m1.parameters()); fresh.load_state_dict(o1.state_dict())
    assert strip(o2) == strip(o1) == strip(fresh)  # betas stay a tuple
    assert fit(m2, o2, d2, 3) == after            # the resumed run is the same run (dropout included)
    assert m2.lm_head.weight is m2.tok_emb.weight  # the tie survives


def test_save_state_errors(tmp_path):
    m = nn.Linear(3, 2)
    save_state(tmp_path / 'w', m)
    with pytest.raises(ValueError, match='holds no optimizer'): load_state(tmp_path / 'w', m, torch.optim.SGD(m.parameters(), lr=1))
    with pytest.raises(ValueError, match='does not fit'): load_state(tmp_path / 'w', nn.Linear(3, 4))
    (tmp_path / 't').write_bytes((tmp_path / 'w').read_bytes()[:40])
    with pytest.raises(ValueError, match='truncated'): load_state(tmp_path / 't', m)
    with pytest.raises(TypeError, match='without pickle'): save_state(tmp_path / 'x', m, extra={'f': len})


# ---------------------------------------------------------------- peaks from the one catalog; plots; sampling errors
def test_peak_flops_from_the_hardware_catalog(monkeypatch):
    from llm_lab.hardware import get_gpu
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda d=None: 'NVIDIA H100 PCIe')
    assert peak_flops('cuda') == get_gpu('h100-pcie').peak_flops('bf16') == 756e12
    assert peak_flops('cuda', 'fp32') == get_gpu('h100-pcie').peak_flops('fp32')
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda d=None: 'Some Future GPU')
    assert peak_flops('cuda') is None and peak_flops('cpu') is None


def test_plots_draw(tmp_path, ids, tok):
    import matplotlib.pyplot as plt
    assert len(plot_schedule(50, 5).lines) == 1
    st = run(ids, tok, max_steps=4, ckpt_every=0)
    ax = plot_losses(st, baseline=5.0)
    assert len(ax.lines) == 3
    cb = LossPlot(every=2); cb.on_train_begin(st, TrainConfig()); cb.on_train_end(st)
    run(ids, tok, out=str(tmp_path / 'ck'), max_steps=2)
    model, t = load_for_generation(tmp_path / 'ck')
    ax = plot_temperature(model, t, 'the', 0.5, top=5)
    assert len(ax.patches) == 5 and 'entropy' in ax.get_title()
    with pytest.raises(ValueError, match='top'): plot_temperature(model, t, 'the', top=0)
    plt.close('all')


@pytest.mark.parametrize('kw,arg', [(dict(temperature=-0.5), 'temperature'), (dict(temperature=float('nan')), 'temperature'),
                                    (dict(top_p=0.0), 'top_p'), (dict(top_p=1.5), 'top_p'), (dict(top_k=0), 'top_k'),
                                    (dict(max_new_tokens=-1), 'max_new_tokens'), (dict(num_samples=0), 'num_samples')])
def test_sampling_settings_are_checked(tmp_path_factory, ids, tok, kw, arg):
    folder = tmp_path_factory.getbasetemp() / 'gen-ck'
    if not folder.exists(): run(ids, tok, out=str(folder), max_steps=2)
    model, t = load_for_generation(folder)
    with pytest.raises(ValueError, match=arg): complete(model, t, 'the', **{'max_new_tokens': 3, **kw})


def test_generate_cli_names_a_bad_setting(tmp_path, ids, tok, capsys):
    run(ids, tok, out=str(tmp_path / 'ck'), max_steps=2)
    assert generate_cli([str(tmp_path / 'ck'), '--top-p', '1.5']) == 2 and 'top_p' in capsys.readouterr().err
