"""Chapter 11: collectives, the ring all-reduce, data parallel (per parameter and bucketed), ZeRO-1/2/3, torch's DDP,
ZeroRedundancyOptimizer and FSDP2, each equal to single-process training; tensor parallelism (MLP, attention, a whole GPT
block) equal to the unsharded layers with its all-reduces counted; pipelines; the memory each strategy holds per rank equal to
chapter 21's formulas; with real processes (gloo on loopback). One process group runs every check (starting processes is the
slow part)."""
import pytest
import torch

from llm_lab.distributed import (launch, selftest_worker, train_single, toy_model, toy_batches, comm_bytes, ring_all_reduce,
                                 ThreadComm, state_bytes)
from llm_lab.model import GPT, GPTConfig, Block


@pytest.fixture(scope='module')
def runs():
    return launch(selftest_worker, 2, timeout=240)


def test_collectives(runs):
    xs = [r['collectives']['x'] for r in runs]; total = sum(xs)
    for r, o in enumerate(runs):
        o = o['collectives']
        assert torch.equal(o['broadcast'], xs[0]) and torch.equal(o['all_reduce'], total)
        assert torch.equal(o['reduce_scatter'], total.chunk(2)[r])
        assert torch.equal(o['all_gather'], torch.cat(xs))
        assert torch.equal(o['all_to_all'], torch.cat([x.chunk(2)[r] for x in xs]))


def test_ring_on_real_processes(runs):
    want = torch.arange(10, dtype=torch.float64) * 3   # rank 0 holds 1x, rank 1 2x
    for r in runs: assert torch.equal(r['ring'], want)


@pytest.mark.parametrize('world', [2, 3, 4, 5])
def test_ring_bytes_are_the_formula(world):
    xs = [torch.randn(world * 7, dtype=torch.float64) for _ in range(world)]
    comm = ThreadComm(world); outs = comm.run(ring_all_reduce, [(x,) for x in xs])
    assert all(torch.allclose(o, sum(xs)) for o in outs)
    assert comm.sent == [comm_bytes('all_reduce', world * 7 * 8, world)] * world
    assert comm_bytes('reduce_scatter', 100, world) + comm_bytes('all_gather', 100, world) == comm_bytes('all_reduce', 100, world)


@pytest.mark.parametrize('name', ['ddp_per_param', 'ddp_bucketed', 'zero1', 'zero2', 'zero3', 'torch_ddp', 'torch_zero', 'torch_fsdp2'])
def test_strategy_equals_single_process(runs, name):
    want = train_single(toy_model(seed=0), toy_batches(3))
    for r in runs:
        assert len(r['strategies'][name]['params']) == len(want)
        for a, b in zip(r['strategies'][name]['params'], want): assert (a - b).abs().max() < 1e-12


def test_zero3_compute_dtype_is_float32_rounding(runs):
    want = train_single(toy_model(seed=0), toy_batches(3))
    err = max((a - b).abs().max().item() for r in runs for a, b in zip(r['strategies']['zero3_f32']['params'], want))
    assert 1e-9 < err < 1e-5


def test_zero3_memory_per_rank_is_the_formula(runs):
    from llm_lab.cost import training_memory
    n = sum(p.numel() for p in toy_model().parameters())
    m3 = training_memory(n, precision='fp32', optimizer='adamw', zero_stage=3, dp=2)   # fp32 bytes; ours are float64: x2
    for r in runs:
        z = r['strategies']['zero3']
        assert z['held_after_forward'] == 0
        assert abs(z['param_bytes'] - 2 * m3['weights']) <= 3 * 8 and abs(z['grad_bytes'] - 2 * m3['gradients']) <= 3 * 8
        assert abs(z['opt_bytes'] - 2 * m3['optimizer']) <= 3 * 16


def test_zero_shards_optimizer_state(runs):
    full = runs[0]['strategies']['ddp_per_param']['opt_bytes']
    n = sum(p.numel() for p in toy_model().parameters())
    assert full == 2 * 8 * n                                   # AdamW: two float64 tensors per parameter
    for name in ('zero1', 'zero2'):
        per_rank = [r['strategies'][name]['opt_bytes'] for r in runs]
        assert sum(per_rank) <= full + 2 * 16 and max(per_rank) <= full / 2 + 16
    assert sum(r['strategies']['torch_zero']['opt_bytes'] for r in runs) == full   # whole parameters per rank: same total


def test_data_parallel_around_gpt(runs):
    torch.manual_seed(0)   # rank 0's init, which DataParallel broadcasts
    cfg = GPTConfig.gpt2(vocab_size=64, context_len=16, n_layer=2, n_head=2, d_model=32)
    m = GPT(cfg).double(); opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        idx = torch.randint(0, 64, (4, 16), generator=g)
        opt.zero_grad(); m(idx, idx.roll(-1, 1))[1].backward(); opt.step()
    for r in runs:
        for a, b in zip(r['gpt'], m.parameters()): assert (a - b.detach()).abs().max() < 1e-6


def test_launch_reports_worker_errors():
    with pytest.raises(RuntimeError, match='rank'):
        launch(comm_bytes, 1)   # comm_bytes(rank, world) misses an argument: the traceback comes back


def test_pretrain_ddp_equals_one_process_and_resumes_on_one(tmp_path):
    """`llm-lab pretrain --ddp` on 2 processes (global batch 8) logs the losses of a 1-process run; its rank-0 checkpoint
    resumes on 1 process exactly like the 1-process run's own checkpoint."""
    import json
    from pydoc_data.topics import topics
    from llm_lab.distributed import pretrain_worker
    from llm_lab.train import pretrain_cli
    (tmp_path / 'c.jsonl').write_text('\n'.join(json.dumps({'text': t}) for t in list(topics.values())[:60]))
    base = ['--data', str(tmp_path / 'c.jsonl'), '--vocab-size', '300', '--n-layer', '1', '--d-model', '32', '--n-head', '2',
            '--context-len', '32', '--batch-size', '8', '--eval-every', '3', '--warmup-steps', '1', '--lr', '3e-3']
    assert pretrain_cli(base + ['--out', str(tmp_path / 'one'), '--steps', '3']) == 0
    assert launch(pretrain_worker, 2, base + ['--out', str(tmp_path / 'two'), '--steps', '3']) == [0, 0]
    assert not (tmp_path / 'two' / 'trainer.json.tmp').exists()
    for run in ('one', 'two'): assert pretrain_cli(base + ['--out', str(tmp_path / run), '--steps', '6', '--resume']) == 0
    one, two = (json.loads((tmp_path / run / 'trainer.json').read_text())['state'] for run in ('one', 'two'))
    assert len(one['history']) == len(two['history']) == 6 and len(one['evals']) == len(two['evals']) == 2
    for a, b in zip(one['history'], two['history']): assert abs(a['loss'] - b['loss']) < 1e-5   # measured: 5e-7
    for a, b in zip(one['evals'], two['evals']): assert abs(a['loss'] - b['loss']) < 1e-5


def test_tensor_parallel_mlp_equals_unsharded(runs):
    for o in runs:
        assert max(float(o['tp'][k]) for k in ('out', 'x_grad', 'up_w_grad', 'up_b_grad', 'down_w_grad', 'down_b_grad')) < 1e-12
        assert o['tp']['params_per_rank'] < 0.51 * o['tp']['params_full']


@pytest.mark.parametrize('kind', ['gpipe', '1f1b'])
def test_pipeline_equals_unsharded_with_the_bubble_of_the_formula(runs, kind):
    from llm_lab.distributed import pipeline_schedule, _simulate_pipeline
    for r, o in enumerate(runs):
        assert o['pp'][kind]['grad_err'] < 1e-12
        assert 1 / 5 - 0.05 < o['pp'][kind]['bubble'] < 0.5   # measured in wall time: never below (p-1)/(m+p-1)=0.2; load adds waiting
    assert abs(float(runs[1]['pp'][kind]['loss']) - float(runs[1]['pp']['want_loss'])) < 1e-12
    assert [o['pp'][kind]['peak_in_flight'] for o in runs] == ([4, 4] if kind == 'gpipe' else [2, 1])
    for p, m in ((2, 4), (3, 1), (4, 8), (5, 3)):   # the schedule itself, timed by the simulator (F 1, B 2): exactly (p-1)/(m+p-1)
        ends = _simulate_pipeline([pipeline_schedule(kind, s, p, m) for s in range(p)])[1]
        assert abs(1 - m * 3 / max(ends) - (p - 1) / (m + p - 1)) < 1e-12
    for m in (1, 3, 8):   # every micro-batch once forward and once backward, backward after its forward
        for s in range(3):
            order = pipeline_schedule(kind, s, 3, m)
            assert sorted(order) == sorted([('F', i) for i in range(m)] + [('B', i) for i in range(m)])
            assert all(order.index(('F', i)) < order.index(('B', i)) for i in range(m))


def test_parallel_block_equals_the_gpt2_block(runs):
    """ParallelBlock on 2 ranks (float32): the output, the input gradient and each of the Block's 12 weight gradients (this
    rank's slice) equal chapter 6's unsharded Block; so does a Llama-style attention (RoPE, grouped-query heads)."""
    names = {n for n, _ in Block(GPTConfig.gpt2(d_model=32, n_head=4, context_len=8)).named_parameters()}
    for o in runs:
        t = o['tp_block']
        assert set(t['grads']) == names
        errs = [float(t['out']), float(t['x_grad']), *(float(v) for v in t['grads'].values())]
        assert max(errs) < 1e-5                         # float32 rounding; measured 1.9e-6 on values up to 11
        assert float(t['llama_out']) < 1e-5 and float(t['llama_x_grad']) < 1e-5
        assert t['params_per_rank'] == (t['params_full'] - 192) // 2 + 192   # norms and row-parallel biases replicated


def test_parallel_block_runs_two_all_reduces_each_way(runs):
    act = 2 * 8 * 32 * 4                                # (B, T, d) float32
    for o in runs:
        calls = o['tp_block']['calls']
        assert calls == [('forward', act)] * 2 + [('backward', act)] * 2
        assert sum(comm_bytes('all_reduce', b, 2) for _, b in calls) == 4 * comm_bytes('all_reduce', act, 2)


def test_parallel_attention_needs_whole_heads(runs):
    msg = runs[0]['tp_block']['bad_heads']
    assert msg is not None and 'n_head (3)' in msg and 'divisible by the 2 ranks' in msg


def test_measured_memory_per_strategy_is_the_cost_formula(runs):
    """The bytes each rank holds (params, grads, optimizer state) under every strategy equal chapter 21's training_memory;
    ZeroOptimizer's own slice and TP's replicated norms/biases are the two differences, checked to the byte."""
    from llm_lab.cost import training_memory
    from llm_lab.distributed import block_stack
    n = sum(p.numel() for p in block_stack().parameters())
    layout = {'single': {}, 'ddp': dict(dp=2), 'torch_ddp': dict(dp=2), 'zero1': dict(zero_stage=1, dp=2),
              'zero2': dict(zero_stage=2, dp=2), 'zero3': dict(zero_stage=3, dp=2), 'torch_fsdp2': dict(zero_stage=3, dp=2),
              'tp': dict(tp=2), 'pp': dict(pp=2)}
    assert set(runs[0]['measure']) == set(layout) and set(runs[1]['measure']) == set(layout) - {'single'}
    for r in runs:
        for k, o in r['measure'].items():
            f = training_memory(n, precision='fp32', optimizer='adamw', **layout[k])
            extra = 192 * 4 if k == 'tp' else 0           # 2 blocks x 192 replicated parameters, half of them beyond the formula's 1/2
            assert (o['params'], o['grads'], o['optimizer']) == (f['weights'] + extra, f['gradients'] + extra, f['optimizer'] + 2 * extra), k
            assert o['master'] == (2 * n if k in ('zero1', 'zero2') else 0)
            assert o['sec_per_step'] > 0


def test_step_comm_bytes_is_the_ring_formulas():
    from llm_lab.distributed import step_comm_bytes
    n, L, d, T, B = 1e9, 32, 4096, 2048, 64
    ddp = step_comm_bytes(n, L, d, T, B, dp=8)
    assert ddp == {'data': 2 * 7 / 8 * n * 2, 'tensor': 0.0, 'pipeline': 0.0, 'total': 2 * 7 / 8 * n * 2}
    for z in (1, 2): assert step_comm_bytes(n, L, d, T, B, zero_stage=z, dp=8) == ddp      # reduce-scatter + all-gather
    assert step_comm_bytes(n, L, d, T, B, zero_stage=3, dp=8)['data'] == 1.5 * ddp['data']
    tp = step_comm_bytes(n, L, d, T, B, dp=2, tp=4)
    assert tp['data'] == comm_bytes('all_reduce', n / 4 * 2, 2)
    assert tp['tensor'] == 4 * L * comm_bytes('all_reduce', B / 2 * T * d * 2, 4)          # 4 all-reduces per block
    pp = step_comm_bytes(n, L, d, T, B, dp=2, pp=4)
    assert pp['tensor'] == 0 and pp['pipeline'] == 2 * B / 2 * T * d * 2 and pp['data'] == comm_bytes('all_reduce', n / 4 * 2, 2)
    assert step_comm_bytes(n, L, d, T, B) == {'data': 0.0, 'tensor': 0.0, 'pipeline': 0.0, 'total': 0.0}   # one GPU sends nothing
    with pytest.raises(ValueError, match='zero_stage'): step_comm_bytes(n, L, d, T, B, zero_stage=4)
    with pytest.raises(ValueError, match='divide'): step_comm_bytes(n, L, d, T, B, pp=5)
    with pytest.raises(ValueError, match='tp must be a positive int'): step_comm_bytes(n, L, d, T, B, tp=0)
