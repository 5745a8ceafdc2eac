"""Chapter 22 (serving): the paged KV cache and the engine against GPT.generate, speculative decoding, and `llm-lab serve`
driven over HTTP by the real `openai` client (a server on 127.0.0.1, a free port, in background threads)."""
import json, sys, threading, time

import pytest
import torch

from llm_lab.model import GPT, GPTConfig
from llm_lab.serve import (PagedKVCache, paged_forward, paged_greedy, Engine, speculative_generate, truncated_draft,
                           two_token_distribution, chat_prompt, serve_cli)
from llm_lab.zoo import pretrained

openai = pytest.importorskip('openai')
pytest.importorskip('fastapi'); pytest.importorskip('uvicorn')
httpx = pytest.importorskip('httpx')


@pytest.fixture(scope='module')
def tiny():
    return pretrained('tiny-gpt2')


def greedy_ids(model, prompt_ids, n):
    return model.generate(torch.tensor(prompt_ids), n, temperature=0)[len(prompt_ids):].tolist()


# --- the cache and the engine ----------------------------------------------------------------------------------------
def test_paged_greedy_equals_generate_both_block_styles(tiny):
    model, tok = tiny
    llama, _ = pretrained('tiny-llama')
    p = tok.encode('The class statement')
    for m in (model, llama):
        for bs in (1, 5, 16):
            assert paged_greedy(m, p, 12, block_size=bs) == m.generate(torch.tensor(p), 12, temperature=0).tolist()


def test_fork_shares_blocks_and_copy_on_write_keeps_outputs(tiny):
    model, tok = tiny
    c = PagedKVCache(model.config, 16, 4); c.add('a')
    la = paged_forward(model, c, ['a'], [tok.encode('The while statement is')])      # a length that is not a multiple of 4
    used = c.used_blocks(); c.fork('a', 'b')
    assert c.used_blocks() == used and c.tables['a'] == c.tables['b']
    x = int(la[0].argmax())
    lb = paged_forward(model, c, ['a', 'b'], [[x], [x]])
    assert torch.allclose(lb[0], lb[1], atol=1e-5) and c.tables['a'][-1] != c.tables['b'][-1]   # the last block was copied
    c.release('a'); c.release('b')
    assert c.used_blocks() == 0 and len(c.free) == 16
    with pytest.raises(MemoryError): _fill(model.config)


def _fill(cfg):
    c = PagedKVCache(cfg, 1, 4); c.add(0); c.append(0, 5)


def test_engine_mixed_lengths_equal_generate_and_free_everything(tiny):
    model, tok = tiny
    eng = Engine(model, max_batch=3, block_size=4)
    reqs = [eng.submit(tok.encode(s), 5 + 4 * i) for i, s in enumerate(['a', 'The for', 'Exceptions are raised', 'x = 1', 'def'])]
    eng.run_until_done()
    for r in reqs: assert r.output == greedy_ids(model, r.prompt, r.max_tokens) and r.finish_reason == 'length'
    assert eng.max_running == 3 and len(eng.cache.free) == eng.cache.num_blocks == eng.free_blocks


def test_abort_while_waiting_or_running(tiny):
    model, tok = tiny
    eng = Engine(model, max_batch=1)
    seen = []
    a, b = (eng.submit([1, 2, 3], 50, on_token=lambda r, t, reason: seen.append((r.id, reason))) for _ in range(2))
    eng.step(); eng.abort(a); eng.abort(b)                   # a is running, b still waits
    eng.run_until_done()
    assert a.finish_reason == b.finish_reason == 'abort' and b.output == [] and len(a.output) == 1
    assert seen.count((b.id, 'abort')) == 1 and seen.count((a.id, 'abort')) == 1 and eng.free_blocks == eng.cache.num_blocks


def test_static_policy_admits_only_into_an_empty_batch(tiny):
    model, tok = tiny
    out = {}
    for pol in ('static', 'continuous'):
        eng = Engine(model, max_batch=2, policy=pol)
        reqs = [eng.submit([1, 2, 3], m) for m in (2, 10, 2, 10)]
        eng.run_until_done(); out[pol] = (eng.steps, [r.output for r in reqs])
    assert out['static'][1] == out['continuous'][1] and out['continuous'][0] < out['static'][0]


# --- speculative decoding --------------------------------------------------------------------------------------------
def test_speculative_greedy_identical_with_a_zoo_draft(tiny):
    draft_model, tok = tiny                                  # tiny-gpt2 drafts for tiny-llama: same tokenizer, other model
    target, _ = pretrained('tiny-llama')
    p = tok.encode('The for statement')
    want = target.generate(torch.tensor(p), 20, temperature=0).tolist()
    for k in (1, 4):
        out, st = speculative_generate(target, draft_model, p, 20, k=k)
        assert out == want and 0 < st['accepted'] <= st['drafted']
    assert speculative_generate(target, truncated_draft(target, 1), p, 20, k=3)[0] == want


def test_speculative_sampling_follows_the_target_distribution():
    from scipy.stats import chisquare
    small = GPTConfig(vocab_size=4, context_len=16, n_layer=1, n_head=2, d_model=16)
    torch.manual_seed(3); tgt = GPT(small).eval()
    torch.manual_seed(4); drf = GPT(small).eval()
    with torch.no_grad():
        for m in (tgt, drf): m.tok_emb.weight.mul_(5)
    exact = two_token_distribution(tgt, [0, 1]).flatten()
    assert 0.5 * (two_token_distribution(drf, [0, 1]).flatten() - exact).abs().sum() > 0.15
    g, N = torch.Generator().manual_seed(0), 400
    counts = torch.zeros(16)
    for _ in range(N):
        out, _ = speculative_generate(tgt, drf, [0, 1], 2, k=2, temperature=1.0, generator=g)
        counts[out[2] * 4 + out[3]] += 1
    keep = exact * N >= 5
    exp = exact[keep] * N
    assert chisquare(counts[keep].numpy(), (exp * counts[keep].sum() / exp.sum()).numpy()).pvalue > 1e-3


def test_chat_prompt_uses_the_sft_template_when_the_tokenizer_has_it(tiny):
    from llm_lab.tokenizer import BPETokenizer, EOT
    from llm_lab.zoo import CHAT_TOKENS
    from llm_lab.finetune import encode_chat
    msgs = [{'role': 'user', 'content': 'What is 2 + 2?'}]
    chat_tok = BPETokenizer.train(['What is two plus two? It is four. ' * 20], 300, special_tokens=[EOT, *CHAT_TOKENS])
    ids, stop_ids, stops = chat_prompt(chat_tok, msgs)
    assert ids == encode_chat(chat_tok, msgs, add_generation_prompt=True)[0] and stops == []
    assert chat_tok.special_tokens['<|end|>'] in stop_ids
    ids, stop_ids, stops = chat_prompt(tiny[1], msgs)                       # a base model: the plain template
    assert tiny[1].decode(ids) == 'User: What is 2 + 2?\nAssistant:' and '\nUser:' in stops


# --- the HTTP server ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def server(tiny):
    from llm_lab.serve import start_server
    model, tok = tiny
    h = start_server(model, tok, 'tiny-gpt2', max_batch=16)
    yield h
    h.close()


@pytest.fixture(scope='module')
def client(server):
    return openai.OpenAI(base_url=server.url, api_key='none', max_retries=0, timeout=60)


def test_list_models(client):
    assert [m.id for m in client.models.list()] == ['tiny-gpt2']
    assert client.models.retrieve('tiny-gpt2').id == 'tiny-gpt2'


def test_completion_greedy_equals_generate_with_usage(client, tiny):
    model, tok = tiny
    r = client.completions.create(model='tiny-gpt2', prompt='The for statement', max_tokens=20, temperature=0, seed=1)
    ids = tok.encode('The for statement')
    assert r.choices[0].text == tok.decode(greedy_ids(model, ids, 20))
    assert r.choices[0].finish_reason == 'length' and r.object == 'text_completion'
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(ids), 20, len(ids) + 20)


def test_seeded_sampling_is_repeatable_and_n_choices(client):
    kw = dict(model='tiny-gpt2', prompt='A class', max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert a.choices[0].text == b.choices[0].text
    r = client.completions.create(**kw, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2] and r.choices[0].text == a.choices[0].text   # choice j uses seed + j
    assert len({c.text for c in r.choices}) > 1 and r.usage.completion_tokens == 36


def test_stop_string_cuts_and_finishes_with_stop(client, tiny):
    model, tok = tiny
    full = tok.decode(greedy_ids(model, tok.encode('The for statement'), 30))
    stop = full[10:13]
    assert stop and stop not in full[:10]
    r = client.completions.create(model='tiny-gpt2', prompt='The for statement', max_tokens=30, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:10] and r.choices[0].finish_reason == 'stop'
    s = client.completions.create(model='tiny-gpt2', prompt='The for statement', max_tokens=30, temperature=0, stop=stop, stream=True)
    chunks = list(s)
    assert ''.join(c.choices[0].text for c in chunks) == full[:10] and chunks[-1].choices[0].finish_reason == 'stop'


def test_streamed_chat_matches_non_streamed(client, tiny):
    msgs = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'What is a for loop?'}]
    kw = dict(model='tiny-gpt2', messages=msgs, max_tokens=25, temperature=0.7, seed=3)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={'include_usage': True}))
    text = ''.join(c.choices[0].delta.content or '' for c in chunks if c.choices)
    assert text == full.choices[0].message.content and full.choices[0].message.role == 'assistant'
    assert chunks[0].choices[0].delta.role == 'assistant'
    fin = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert fin == [full.choices[0].finish_reason] and fin[0] in ('stop', 'length')
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert full.usage.prompt_tokens == len(chat_prompt(tiny[1], msgs)[0])


def test_raw_sse_ends_with_done(server):
    with httpx.stream('POST', server.url + '/completions', json={'model': 'tiny-gpt2', 'prompt': 'x', 'max_tokens': 3, 'stream': True}) as r:
        lines = [l for l in r.iter_lines() if l]
    assert r.headers['content-type'].startswith('text/event-stream') and lines[-1] == 'data: [DONE]'
    assert all(l.startswith('data: ') for l in lines) and json.loads(lines[-2][6:])['choices'][0]['finish_reason'] == 'length'


@pytest.mark.parametrize('kw,param,code', [
    (dict(max_tokens=-3), 'max_tokens', 'invalid_value'),
    (dict(temperature=2.5), 'temperature', 'invalid_value'),
    (dict(top_p=1.5), 'top_p', 'invalid_value'),
    (dict(n=0), 'n', 'invalid_value'),
    (dict(prompt='for ' * 200), 'prompt', 'context_length_exceeded'),
    (dict(max_tokens=500), 'prompt', 'context_length_exceeded'),
    (dict(stop=['a', 'b', 'c', 'd', 'e']), 'stop', 'invalid_value'),
])
def test_invalid_parameters_are_400_in_openai_shape(client, kw, param, code):
    args = dict(model='tiny-gpt2', prompt='hello', max_tokens=5) | kw
    with pytest.raises(openai.BadRequestError) as e: client.completions.create(**args)
    err = e.value.body
    assert e.value.status_code == 400 and err['param'] == param and err['code'] == code and err['type'] == 'invalid_request_error'


def test_malformed_json_bad_messages_unknown_model(server, client):
    r = httpx.post(server.url + '/chat/completions', content=b'{"model": "tiny-gpt2", "messages": [', headers={'content-type': 'application/json'})
    assert r.status_code == 400 and set(r.json()['error']) == {'message', 'type', 'param', 'code'}
    with pytest.raises(openai.BadRequestError): client.chat.completions.create(model='tiny-gpt2', messages=[{'role': 'robot', 'content': 'hi'}])
    with pytest.raises(openai.NotFoundError) as e: client.completions.create(model='gpt-4o', prompt='hi')
    assert e.value.status_code == 404 and e.value.body['code'] == 'model_not_found'
    with pytest.raises(openai.NotFoundError): client.models.retrieve('gpt-4o')


def test_api_key_required_when_set(tiny):
    from llm_lab.serve import start_server
    model, tok = tiny
    h = start_server(model, tok, 'tiny-gpt2', api_key='sekret')
    try:
        for key in ('wrong', None):
            c = openai.OpenAI(base_url=h.url, api_key=key or 'x', max_retries=0)
            if key is None: c = c.with_options(default_headers={'Authorization': ''})
            with pytest.raises(openai.AuthenticationError) as e: c.models.list()
            assert e.value.status_code == 401 and e.value.body['code'] == 'invalid_api_key'
        ok = openai.OpenAI(base_url=h.url, api_key='sekret', max_retries=0)
        assert ok.completions.create(model='tiny-gpt2', prompt='a', max_tokens=2).usage.completion_tokens == 2
    finally: h.close()


def test_16_concurrent_streams_are_batched_independent_and_undisturbed(server, client, tiny):
    model, tok = tiny
    prompts = [f'{w} statement' for w in ('The for', 'The while', 'The if', 'A class', 'The import', 'The try', 'The with', 'A def',
                                           'The return', 'The raise', 'The pass', 'The del', 'The global', 'The assert', 'An async', 'The yield')]
    lengths = [8 + (3 * i) % 17 for i in range(16)]
    results, errors = [None] * 16, []
    def stream(i):
        try:
            s = client.completions.create(model='tiny-gpt2', prompt=prompts[i], max_tokens=lengths[i], temperature=0, stream=True)
            results[i] = ''.join(c.choices[0].text for c in s)
        except Exception as e: errors.append(e)
    def bad(_):
        for kw in (dict(max_tokens=-1), dict(temperature=9)):
            try: client.completions.create(model='tiny-gpt2', prompt='x', **kw)
            except openai.BadRequestError: pass
        httpx.post(server.url + '/completions', content=b'{nope')
    before = server.engine.max_running
    server.engine.max_running = 0
    threads = [threading.Thread(target=stream, args=(i,)) for i in range(16)] + [threading.Thread(target=bad, args=(j,)) for j in range(3)]
    for t in threads: t.start()
    for t in threads: t.join(60)
    assert not errors, errors
    for i in range(16): assert results[i] == tok.decode(greedy_ids(model, tok.encode(prompts[i]), lengths[i])), i
    assert server.engine.max_running > 4                   # requests were decoded together, not one by one
    assert not server.engine.running and not server.engine.waiting and server.engine.free_blocks == server.engine.cache.num_blocks
    server.engine.max_running = max(before, server.engine.max_running)


def test_client_disconnect_aborts_its_sequence(server):
    with httpx.stream('POST', server.url + '/completions', json={'model': 'tiny-gpt2', 'prompt': 'x', 'max_tokens': 120, 'stream': True}) as r:
        next(r.iter_lines())
    t0 = time.monotonic()
    while (server.engine.running or server.engine.waiting) and time.monotonic() - t0 < 10: time.sleep(0.05)
    assert not server.engine.running and server.engine.tokens > 0


def test_cli_errors_and_import_without_fastapi(monkeypatch, capsys):
    import importlib.util, llm_lab
    assert serve_cli(['no-such-model']) == 2 and 'neither a checkpoint folder nor a zoo model' in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, 'fastapi', None); monkeypatch.setitem(sys.modules, 'uvicorn', None)   # as if not installed
    spec = importlib.util.spec_from_file_location('llm_lab._serve_without_fastapi', llm_lab.serve.__file__)
    fresh = importlib.util.module_from_spec(spec); monkeypatch.setitem(sys.modules, spec.name, fresh)
    spec.loader.exec_module(fresh)                                                                         # imports fine
    assert fresh.serve_cli(['tiny-gpt2']) == 2 and 'pip install "llm_lab[serve]"' in capsys.readouterr().err
