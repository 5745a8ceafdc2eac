"Tests for llm_lab.tokenizer: training, special tokens, round trips, GPT-2 files, parity with Hugging Face, checkers."
import json
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import require
from llm_lab.core import CheckFailed, embedded_corpus
from llm_lab.tokenizer import (EOT, BPETokenizer, bytes_per_token, check_encode, check_get_pair_counts, check_merge,
                               encode_ids, get_pair_counts, learn_merges, merge, naive_bpe_merges, pretokenize,
                               show_tokens, token_html, utf8_decode, word_counts)
from llm_lab.tokenizer import _bpe_heap, _bpe_simple

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope='module')
def docs():
    return embedded_corpus()


@pytest.fixture(scope='module')
def tok(docs):
    return BPETokenizer.train(docs[:40], vocab_size=700)


@pytest.fixture(scope='module')
def gpt2_dir(tok, tmp_path_factory):
    folder = tmp_path_factory.mktemp('gpt2')
    tok.save_gpt2_files(folder)
    return folder


@pytest.fixture(scope='module')
def hf_from_ours(gpt2_dir):
    transformers = require('transformers')
    return transformers.GPT2TokenizerFast(vocab=str(gpt2_dir / 'vocab.json'), merges=str(gpt2_dir / 'merges.txt'))


@pytest.fixture(scope='module')
def hf_trained(docs, tmp_path_factory):
    "A ByteLevel BPE trained by HF `tokenizers`, and ours loaded from its GPT-2-format files."
    tokenizers = require('tokenizers')
    hf = tokenizers.ByteLevelBPETokenizer()
    hf.train_from_iterator(docs[:40], vocab_size=700, special_tokens=[EOT], show_progress=False)
    folder = tmp_path_factory.mktemp('hf')
    hf.save_model(str(folder))
    return hf, BPETokenizer.from_gpt2_files(folder / 'vocab.json', folder / 'merges.txt')


# ---------------------------------------------------------------- text strategies
cjk = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
emoji = st.sampled_from(['😀', '👍🏽', '🇫🇷', '👩‍👩‍👧', '🧪', '❤️', '\U0001F9D1\u200D\U0001F4BB'])
combining = st.characters(categories=['Mn', 'Me', 'Mc'])
controls = st.characters(categories=['Cc', 'Cf', 'Zl', 'Zp'])
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=['Cs'])
ascii_words = st.sampled_from([' the', 'def', "'s", "'ll", ' ', '  ', '\n', '\t', '123', ' 4', '!!', EOT, '<|', '|>'])
valid_char = st.one_of(st.characters(), cjk, combining, controls, st.characters(max_codepoint=127))
valid_text = st.lists(st.one_of(valid_char, emoji, ascii_words), max_size=40).map(''.join)
any_text = st.lists(st.one_of(valid_char, emoji, ascii_words, surrogates), max_size=40).map(''.join)


# ---------------------------------------------------------------- primitives and training
def test_pretokenize_covers_text():
    s = "Hello world, it's 2024!\n\n   def f(x):  return x # 你好"
    assert ''.join(pretokenize(s)) == s
    assert pretokenize("it's 12 dogs") == ['it', "'s", ' 12', ' dogs']


def test_pair_counts_and_merge():
    assert get_pair_counts([1, 1, 1, 2]) == {(1, 1): 2, (1, 2): 1}
    assert merge([1, 1, 1], (1, 1), 9) == [9, 1]
    assert merge([1, 2, 3, 1, 2], (1, 2), 7) == [7, 3, 7]


def test_fast_training_equals_naive(docs):
    counts = word_counts(docs[:10])
    _, merges = learn_merges(counts, 256 + 120)
    assert list(merges) == naive_bpe_merges(counts, 120)


def test_tie_break_smallest_pair():
    # every pair occurs once: the rule picks the smallest (left, right) = (ord(' '), ord('c'))
    tok = BPETokenizer.train(['ab cd'], vocab_size=258, special_tokens=())
    assert list(tok.merges) == [(32, 99), (97, 98)]
    assert tok.merges[(32, 99)] == 256


def test_training_deterministic_and_layout(docs, tok):
    again = BPETokenizer.train(docs[:40], vocab_size=700)
    assert list(again.merges.items()) == list(tok.merges.items())
    assert tok.vocab_size == 700 and tok.eot_id == 699 and tok.special_tokens == {EOT: 699}
    assert sorted(tok.vocab) == list(range(699))
    assert len(set(tok.vocab.values())) == len(tok.vocab)


def test_truncate_equals_smaller_training(docs, tok):
    small = BPETokenizer.train(docs[:40], vocab_size=400)
    cut = tok.truncate(400)
    assert list(cut.merges.items()) == list(small.merges.items()) and cut.special_tokens == small.special_tokens
    with pytest.raises(ValueError, match='vocab_size must be in'): tok.truncate(10)


def test_training_errors():
    with pytest.raises(ValueError, match='vocab_size'): BPETokenizer.train(['abc'], vocab_size=200)
    with pytest.raises(TypeError, match='must yield str'): BPETokenizer.train([b'abc'], vocab_size=300)
    with pytest.raises(ValueError, match='special tokens'): BPETokenizer.train(['abc'], 300, special_tokens=('',))
    with pytest.warns(RuntimeWarning, match='ran out of pairs'): BPETokenizer.train('abc', vocab_size=400)
    for empty in ([], [''], (t for t in []), [EOT, EOT + EOT]):
        with pytest.raises(ValueError, match='no text to train on'): BPETokenizer.train(empty, vocab_size=300)
    assert BPETokenizer.train(['abc'], 258, special_tokens='<|x|>').special_tokens == {'<|x|>': 257}  # a str is one token


# ---------------------------------------------------------------- special tokens
def test_special_tokens_never_merged():
    texts = [f'hello{EOT}world{EOT}{EOT}hello<|pad|>'] * 50
    tok = BPETokenizer.train(texts, vocab_size=262, special_tokens=(EOT, '<|pad|>'))
    assert all(b'<|' not in v and b'|>' not in v for v in tok.vocab.values())
    ids = tok.encode(f'x{EOT}<|pad|>{EOT}y', allowed_special='all')
    assert ids == tok.encode('x') + [tok.eot_id, tok.special_tokens['<|pad|>'], tok.eot_id] + tok.encode('y')
    assert tok.encode(f'x{EOT}y') == tok.encode(f'x{EOT}y', allowed_special='none') == tok.encode(f'x{EOT}y', allowed_special=set())
    only_eot = tok.encode(f'{EOT}<|pad|>', allowed_special={EOT})
    assert only_eot[0] == tok.eot_id and tok.special_tokens['<|pad|>'] not in only_eot
    plain = tok.encode(EOT, allowed_special='none')
    assert tok.eot_id not in plain and tok.decode(plain) == EOT
    with pytest.raises(ValueError, match='not special tokens'): tok.encode('a', allowed_special={'<|nope|>'})
    with pytest.raises(ValueError, match="'none', 'all' or a set"): tok.encode('a', allowed_special=EOT)


def test_overlapping_special_tokens_longest_wins():
    tok = BPETokenizer.train(['abc'], vocab_size=260, special_tokens=('<|a|>', '<|a|>b'))
    assert tok.encode('<|a|>bc', allowed_special='all') == [tok.special_tokens['<|a|>b'], tok.encode('c')[0]]


# ---------------------------------------------------------------- round trips
@SETTINGS
@given(s=any_text)
def test_roundtrip_any_unicode(tok, s):
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode(tok.encode(s, allowed_special='all')) == s


@pytest.mark.parametrize('s', ['你好世界，这是中文。', '😀👍🏽🇫🇷👩‍👩‍👧', 'e\u0301 n\u0303 a\u0308\u0301', '\x00\x01\x7f\x1b[31m\r\n\u2028',
                               '\ud800', 'a\udfffb\ud83d\ude00', '', ' ', '\n\n\n'])
def test_roundtrip_examples(tok, s):
    assert tok.decode(tok.encode(s)) == s


def test_decode_errors_and_tensors(tok):
    half = tok.encode('😀')[:1]
    assert tok.decode(half) == '\ufffd'
    with pytest.raises(ValueError, match='invalid UTF-8'): tok.decode(half, errors='strict')
    with pytest.raises(ValueError, match='token id 10000 is not in this tokenizer'): tok.decode([1, 10_000])
    with pytest.raises(ValueError, match='token id -1 is not in'): tok.decode([-1])
    with pytest.raises(TypeError, match='token ids must be ints'): tok.decode([1, 'x'])
    with pytest.raises(TypeError, match=r"token ids must be ints, got 1\.0"): tok.decode([1.0, 2.0])
    with pytest.raises(TypeError, match='token ids must be ints'): tok.decode(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match='token ids must be ints'): tok.decode([True])
    np = pytest.importorskip('numpy')
    assert tok.decode(np.array(tok.encode('hi there'))) == 'hi there'  # numpy integers are ids
    ids = tok.encode('hello world')
    assert tok.decode(torch.tensor(ids)) == 'hello world'
    with pytest.raises(ValueError, match='1-D'): tok.decode(torch.tensor([ids]))
    with pytest.raises(TypeError, match='expects a str'): tok.encode(b'bytes')
    assert utf8_decode(b'a\xed\xa0\x80b') == 'a\ud800b' and utf8_decode(b'a\xffb') == 'a\ufffdb'
    assert tok.encode_batch(['a b', f'c{EOT}']) == [tok.encode('a b'), tok.encode(f'c{EOT}')]
    assert tok.encode_batch([f'c{EOT}'], allowed_special='all') == [tok.encode(f'c{EOT}', allowed_special='all')]


# ---------------------------------------------------------------- save / load / GPT-2 files
def test_save_load_json(tok, tmp_path):
    path = tok.save(tmp_path / 'sub' / 'tok.json')
    back = BPETokenizer.load(path)
    assert back.vocab == tok.vocab and list(back.merges.items()) == list(tok.merges.items())
    assert back.special_tokens == tok.special_tokens and back.pattern == tok.pattern
    assert json.loads(path.read_text())['format'] == 'llm_lab.BPETokenizer'
    (tmp_path / 'other.json').write_text('{"model": {}}')
    with pytest.raises(ValueError, match='not a BPETokenizer file'): BPETokenizer.load(tmp_path / 'other.json')
    with pytest.raises(FileNotFoundError, match='no tokenizer file'): BPETokenizer.load(tmp_path / 'missing.json')


def test_gpt2_files_roundtrip(tok, gpt2_dir, tmp_path):
    back = BPETokenizer.load(gpt2_dir)
    assert back.vocab == tok.vocab and list(back.merges.items()) == list(tok.merges.items())
    assert back.special_tokens == tok.special_tokens
    lines = (gpt2_dir / 'merges.txt').read_text().splitlines()
    assert lines[0].startswith('#version') and len(lines) == 1 + len(tok.merges)
    with pytest.raises(FileNotFoundError, match='not found'): BPETokenizer.from_gpt2_files(tmp_path / 'v.json', tmp_path / 'm.txt')
    (tmp_path / 'm.txt').write_text('#version: 0.2\nĠ zzz\n')
    with pytest.raises(ValueError, match="token 'zzz'"): BPETokenizer.from_gpt2_files(gpt2_dir / 'vocab.json', tmp_path / 'm.txt')


def test_gpt2_files_missing_special_gets_next_id(gpt2_dir):
    t = BPETokenizer.from_gpt2_files(gpt2_dir / 'vocab.json', gpt2_dir / 'merges.txt', special_tokens=(EOT, '<|pad|>'))
    assert t.special_tokens == {EOT: 699, '<|pad|>': 700} and t.vocab_size == 701


# ---------------------------------------------------------------- parity with Hugging Face
def test_parity_with_hf_on_corpus(docs, tok, gpt2_dir, hf_from_ours):
    ours = BPETokenizer.from_gpt2_files(gpt2_dir / 'vocab.json', gpt2_dir / 'merges.txt')
    for d in docs[::4]:
        want = hf_from_ours(d)['input_ids']
        assert ours.encode(d, allowed_special='all') == want and tok.encode(d, allowed_special='all') == want


@SETTINGS
@given(s=valid_text)
def test_parity_with_hf_random_unicode(tok, hf_from_ours, s):
    assert tok.encode(s, allowed_special='all') == hf_from_ours(s)['input_ids']


@SETTINGS
@given(s=st.text(alphabet='abcdefghijklmnopqrstuvwxyzTé', min_size=65, max_size=600))
def test_parity_with_hf_long_pretokens(tok, hf_from_ours, s):
    "One long pre-token (more than 64 bytes) takes the heap path; it must still match HF."
    assert tok.encode(s, allowed_special='all') == hf_from_ours(s)['input_ids'] and tok.decode(tok.encode(s)) == s


@SETTINGS
@given(train=st.text(alphabet='ab c', max_size=80), ids=st.lists(st.sampled_from(b'abc'), max_size=150))
def test_heap_bpe_equals_simple(train, ids):
    _, merges = learn_merges(word_counts([train, train[::-1]]), 256 + 20)
    ranks = {p: r for r, p in enumerate(merges)}
    assert _bpe_heap(ids, ranks, merges) == _bpe_simple(ids, ranks, merges)


@SETTINGS
@given(s=valid_text)
def test_parity_with_hf_trained_files(hf_trained, s):
    hf, ours = hf_trained
    assert ours.encode(s, allowed_special='all') == hf.encode(s).ids


def test_compression_close_to_hf(docs, hf_trained):
    hf, _ = hf_trained
    ours = BPETokenizer.train(docs[:40], vocab_size=700)
    held = docs[60:70]
    hf_bpt = sum(len(d.encode()) for d in held) / sum(len(hf.encode(d).ids) for d in held)
    assert abs(bytes_per_token(ours, held) - hf_bpt) < 4e-3 * hf_bpt  # measured 0.1%: only tie-breaking differs


# ---------------------------------------------------------------- widget
def test_token_html_and_show_tokens(tok, capsys):
    text = f'a <b> & 😀{EOT}\n'
    out = token_html(tok, text, allowed_special='all')
    assert '&lt;' in out and '&gt;' in out and '&amp;' in out and 'bytes per token' in out and '↵' in out
    assert f'id {tok.eot_id} ·' in out and 'font-weight:bold' in out  # the special token, shown as one bold token
    plain = token_html(tok, text)  # default: the special string is text, spelled out in ordinary tokens
    assert f'id {tok.eot_id} ·' not in plain and 'font-weight:bold' not in plain
    show_tokens(tok, text, allowed_special='all')
    assert 'HTML' in capsys.readouterr().out  # outside a notebook, IPython prints the display object's repr


# ---------------------------------------------------------------- streaming
def _chunks(text, cuts):
    "Split `text` at the sorted positions `cuts`."
    bounds = [0, *sorted(c % (len(text) + 1) for c in cuts), len(text)]
    return (text[a:b] for a, b in zip(bounds, bounds[1:]))


stream_text = st.lists(st.one_of(valid_char, emoji, ascii_words, st.sampled_from(["'ll", "'re", "'", 'r', 'e', '   ', ' \n ', '<|endof', 'text|>'])),
                       max_size=60).map(''.join)


@SETTINGS
@given(s=stream_text, cuts=st.lists(st.integers(0, 10_000), max_size=30), allowed=st.sampled_from(['none', 'all']))
def test_encode_iterable_equals_encode_any_chunking(tok, s, cuts, allowed):
    "Across every chunk boundary (words, runs of spaces, contractions, special tokens cut in two), streaming = whole."
    assert list(tok.encode_iterable(_chunks(s, cuts), allowed, buffer_chars=1)) == tok.encode(s, allowed)


def test_encode_iterable_large_text_bounded_memory(tok, docs):
    "A generator over ~0.5 MB of lines: ids are yielded lazily, identical to encoding the whole, with a bounded buffer."
    text = '\n'.join(docs)  # every kind of boundary the corpus has
    seen = {'max_pending': 0}
    def lines():
        for line in text.splitlines(keepends=True): yield line
    it = tok.encode_iterable(lines(), buffer_chars=1 << 13)
    first = next(it)  # lazily: the first id comes before the generator is exhausted
    streamed = [first, *it]
    assert streamed == tok.encode(text)
    # the buffer stays bounded: encode_iterable never holds more than buffer_chars + the longest line + a pre-token
    import llm_lab.tokenizer as T
    real_cut, sizes = T.BPETokenizer._safe_cut, []
    def spy(self, buf, rx, hold): sizes.append(len(buf)); return real_cut(self, buf, rx, hold)
    T.BPETokenizer._safe_cut = spy
    try: assert list(tok.encode_iterable(lines(), buffer_chars=1 << 13)) == streamed
    finally: T.BPETokenizer._safe_cut = real_cut
    longest_line = max(map(len, text.splitlines(keepends=True)))
    assert len(sizes) > 50 and max(sizes) <= (1 << 13) + 2 * longest_line + 64, (max(sizes), longest_line)


def test_encode_iterable_errors(tok):
    with pytest.raises(TypeError, match='chunks must be str'): list(tok.encode_iterable([b'abc']))
    assert list(tok.encode_iterable('hello world')) == tok.encode('hello world')  # one str is one chunk
    assert list(tok.encode_iterable([])) == []


# ---------------------------------------------------------------- damaged files
def test_truncated_json_names_the_file(tok, tmp_path, gpt2_dir):
    path = tok.save(tmp_path / 'tok.json')
    path.write_text(path.read_text()[:500])
    with pytest.raises(ValueError, match=r'tok\.json is not valid JSON .*truncated'): BPETokenizer.load(path)
    bad = tmp_path / 'gpt2'; bad.mkdir()
    (bad / 'vocab.json').write_text((gpt2_dir / 'vocab.json').read_text()[:300])
    (bad / 'merges.txt').write_text((gpt2_dir / 'merges.txt').read_text())
    with pytest.raises(ValueError, match=r'vocab\.json is not valid JSON'): BPETokenizer.load(bad)
    state = json.loads(tok.save(tmp_path / 'ok.json').read_text())
    del state['merges']; (tmp_path / 'damaged.json').write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r'damaged\.json: a damaged BPETokenizer file'): BPETokenizer.load(tmp_path / 'damaged.json')
