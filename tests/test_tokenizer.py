"Tests for llm_lab.tokenizer: training, special tokens, round trips, GPT-2 files, parity with Hugging Face, checkers."
import json
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from llm_lab.core import CheckFailed, embedded_corpus
from llm_lab.tokenizer import (EOT, BPETokenizer, bytes_per_token, check_encode, check_get_pair_counts, check_merge,
                               encode_ids, get_pair_counts, learn_merges, merge, naive_bpe_merges, pretokenize,
                               token_html, utf8_decode, word_counts)
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
    transformers = pytest.importorskip('transformers')
    return transformers.GPT2TokenizerFast(vocab=str(gpt2_dir / 'vocab.json'), merges=str(gpt2_dir / 'merges.txt'))


@pytest.fixture(scope='module')
def hf_trained(docs, tmp_path_factory):
    "A ByteLevel BPE trained by HF `tokenizers`, and ours loaded from its GPT-2-format files."
    tokenizers = pytest.importorskip('tokenizers')
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
    assert BPETokenizer.train(['abc'], 258, special_tokens='<|x|>').special_tokens == {'<|x|>': 257}  # a str is one token


# ---------------------------------------------------------------- special tokens
def test_special_tokens_never_merged():
    texts = [f'hello{EOT}world{EOT}{EOT}hello<|pad|>'] * 50
    tok = BPETokenizer.train(texts, vocab_size=262, special_tokens=(EOT, '<|pad|>'))
    assert all(b'<|' not in v and b'|>' not in v for v in tok.vocab.values())
    ids = tok.encode(f'x{EOT}<|pad|>{EOT}y')
    assert ids == tok.encode('x') + [tok.eot_id, tok.special_tokens['<|pad|>'], tok.eot_id] + tok.encode('y')
    only_eot = tok.encode(f'{EOT}<|pad|>', allowed_special={EOT})
    assert only_eot[0] == tok.eot_id and tok.special_tokens['<|pad|>'] not in only_eot
    plain = tok.encode(EOT, allowed_special='none')
    assert tok.eot_id not in plain and tok.decode(plain) == EOT
    with pytest.raises(ValueError, match='not special tokens'): tok.encode('a', allowed_special={'<|nope|>'})


def test_overlapping_special_tokens_longest_wins():
    tok = BPETokenizer.train(['abc'], vocab_size=260, special_tokens=('<|a|>', '<|a|>b'))
    assert tok.encode('<|a|>bc') == [tok.special_tokens['<|a|>b'], tok.encode('c')[0]]


# ---------------------------------------------------------------- round trips
@SETTINGS
@given(s=any_text)
def test_roundtrip_any_unicode(tok, s):
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode(tok.encode(s, allowed_special='none')) == s


@pytest.mark.parametrize('s', ['你好世界，这是中文。', '😀👍🏽🇫🇷👩‍👩‍👧', 'e\u0301 n\u0303 a\u0308\u0301', '\x00\x01\x7f\x1b[31m\r\n\u2028',
                               '\ud800', 'a\udfffb\ud83d\ude00', '', ' ', '\n\n\n'])
def test_roundtrip_examples(tok, s):
    assert tok.decode(tok.encode(s)) == s


def test_decode_errors_and_tensors(tok):
    half = tok.encode('😀')[:1]
    assert tok.decode(half) == '\ufffd'
    with pytest.raises(ValueError, match='invalid UTF-8'): tok.decode(half, errors='strict')
    with pytest.raises(ValueError, match='not in this tokenizer'): tok.decode([1, 10_000])
    with pytest.raises(ValueError, match='not in this tokenizer'): tok.decode([1, 'x'])
    ids = tok.encode('hello world')
    assert tok.decode(torch.tensor(ids)) == 'hello world'
    with pytest.raises(ValueError, match='1-D'): tok.decode(torch.tensor([ids]))
    with pytest.raises(TypeError, match='expects a str'): tok.encode(b'bytes')
    assert utf8_decode(b'a\xed\xa0\x80b') == 'a\ud800b' and utf8_decode(b'a\xffb') == 'a\ufffdb'
    assert tok.encode_batch(['a b', 'c']) == [tok.encode('a b'), tok.encode('c')]


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
        assert ours.encode(d) == want and tok.encode(d) == want


@SETTINGS
@given(s=valid_text)
def test_parity_with_hf_random_unicode(tok, hf_from_ours, s):
    assert tok.encode(s) == hf_from_ours(s)['input_ids']


@SETTINGS
@given(s=st.text(alphabet='abcdefghijklmnopqrstuvwxyzTé', min_size=65, max_size=600))
def test_parity_with_hf_long_pretokens(tok, hf_from_ours, s):
    "One long pre-token (more than 64 bytes) takes the heap path; it must still match HF."
    assert tok.encode(s) == hf_from_ours(s)['input_ids'] and tok.decode(tok.encode(s)) == s


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
    assert ours.encode(s) == hf.encode(s).ids


def test_compression_close_to_hf(docs, hf_trained):
    hf, _ = hf_trained
    ours = BPETokenizer.train(docs[:40], vocab_size=700)
    held = docs[60:70]
    hf_bpt = sum(len(d.encode()) for d in held) / sum(len(hf.encode(d).ids) for d in held)
    assert abs(bytes_per_token(ours, held) - hf_bpt) < 0.05 * hf_bpt


# ---------------------------------------------------------------- widget
def test_token_html(tok):
    out = token_html(tok, f'a <b> & 😀{EOT}\n')
    assert '&lt;' in out and '&gt;' in out and '&amp;' in out and 'bytes per token' in out
    assert str(tok.eot_id) in out and '↵' in out


# ---------------------------------------------------------------- checkers
def test_checkers_accept_references():
    assert check_get_pair_counts(get_pair_counts).ok
    assert check_merge(merge).ok
    assert check_encode(encode_ids).ok


def non_overlapping_counts(ids):
    "Wrong: skips the second of two overlapping pairs."
    out, i = {}, 0
    while i < len(ids) - 1:
        p = (ids[i], ids[i + 1]); out[p] = out.get(p, 0) + 1
        i += 2 if ids[i] == ids[i + 1] else 1
    return out


def distinct_pairs(ids):
    "Wrong: counts each pair once."
    return {p: 1 for p in zip(ids, ids[1:])}


def merge_right_to_left(ids, pair, new_id):
    "Wrong: resolves overlaps from the right."
    return merge(ids[::-1], pair[::-1], new_id)[::-1]


def merge_overlapping(ids, pair, new_id):
    "Wrong: replaces a pair but forgets to skip its second element."
    out, i = [], 0
    while i < len(ids):
        out.append(new_id if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair) else ids[i])
        i += 1
    return out


def encode_first_pair(ids, merges):
    "Wrong: merges the first mergeable pair from the left, ignoring rank."
    while True:
        for p in zip(ids, ids[1:]):
            if p in merges: ids = merge(ids, p, merges[p]); break
        else: return ids


def encode_most_frequent(ids, merges):
    "Wrong: merges the most frequent mergeable pair of the sequence."
    while True:
        counts = {p: c for p, c in get_pair_counts(ids).items() if p in merges}
        if not counts: return ids
        p = max(counts, key=counts.get); ids = merge(ids, p, merges[p])


def encode_single_pass(ids, merges):
    "Wrong: applies only the single lowest-ranked merge, once."
    ranks = {p: r for r, p in enumerate(merges)}
    pairs = [p for p in zip(ids, ids[1:]) if p in ranks]
    if not pairs: return ids
    p = min(pairs, key=ranks.get)
    return merge(ids, p, merges[p])


@pytest.mark.parametrize('checker,wrong', [
    (check_get_pair_counts, non_overlapping_counts), (check_get_pair_counts, distinct_pairs),
    (check_merge, merge_right_to_left), (check_merge, merge_overlapping),
    (check_encode, encode_first_pair), (check_encode, encode_most_frequent), (check_encode, encode_single_pass)])
def test_checkers_reject_wrong(checker, wrong):
    with pytest.raises(CheckFailed, match='trial'):
        checker(wrong, trials=60, seed=0)
    report = checker(wrong, trials=60, seed=1, raise_on_fail=False)
    assert not report.ok and 'expected' in report.failure
