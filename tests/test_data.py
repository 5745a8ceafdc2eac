"Tests of llm_lab.data: sources, bad files, cleaning steps, de-identification, MinHash/LSH, packing, caching, checkers."
import json, os, random, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_lab.core import embedded_corpus
from llm_lab import data as D
from conftest import require

FIX = Path(__file__).parent / 'fixtures'


# ---------------------------------------------------------------- sources and bad files
def test_import_is_light():
    code = "import sys, llm_lab.data; print(any(m in sys.modules for m in ('datasets', 'sklearn', 'transformers')))"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'False'


def test_stdlib_docstrings():
    docs = D.stdlib_docstrings(('json', 'textwrap'))
    assert len(docs) == 2 and docs[0].startswith('json') and 'JSON' in docs[0]


@pytest.mark.parametrize('content,reason', [
    (b'', 'empty (0 bytes)'), (b'  \n\t\n', 'empty (only whitespace)'), (b'ab\x00cd', 'binary'),
    ('café'.encode('latin-1'), 'not UTF-8'), ('café'.encode('utf-8')[:-1], 'not UTF-8'), ('ok ✓'.encode(), None)])
def test_check_text_file(tmp_path, content, reason):
    f = tmp_path / 'f.txt'; f.write_bytes(content)
    got = D.check_text_file(f)
    assert (got is None) if reason is None else got.startswith(reason)
    assert D.check_text_file(tmp_path / 'nope.txt').startswith('missing')


def _bad_folder(tmp_path):
    (tmp_path / 'good.txt').write_text('one\n\ntwo\n')
    (tmp_path / 'stories.jsonl').write_text(json.dumps({'text': 'a story'}) + '\n')
    (tmp_path / 'empty.txt').write_bytes(b'')
    (tmp_path / 'latin.txt').write_bytes('crème'.encode('latin-1'))
    (tmp_path / 'blob.md').write_bytes(bytes(range(256)))
    return tmp_path


def test_read_documents_reports_every_bad_file(tmp_path):
    folder = _bad_folder(tmp_path)
    with pytest.warns(UserWarning) as rec:
        docs, skipped = D.read_documents(folder, sample_by='paragraph')
    assert sorted(docs) == ['a story', 'one', 'two']
    assert {Path(p).name for p in skipped} == {'empty.txt', 'latin.txt', 'blob.md'}
    assert 'empty' in skipped[str(folder / 'empty.txt')] and 'UTF-8' in skipped[str(folder / 'latin.txt')]
    assert 'binary' in skipped[str(folder / 'blob.md')]
    assert all(any(n in str(w.message) for w in rec) for n in ('empty.txt', 'latin.txt', 'blob.md'))


def test_read_documents_raise(tmp_path):
    folder = _bad_folder(tmp_path)
    with pytest.raises(D.BadInputError, match=r'(empty|latin|blob)\.'):
        D.read_documents(folder, on_bad='raise')
    with pytest.raises(FileNotFoundError, match='no corpus files'):
        D.read_documents(tmp_path / 'nothing-here' / '*.txt')
    with pytest.raises(ValueError, match='on_bad'):
        D.read_documents(folder, on_bad='ignore')


def test_read_jsonl_bad_lines(tmp_path):
    f = tmp_path / 'x.jsonl'
    f.write_text('{"text": "good"}\nnot json\n{"body": "no text field"}\n{"text": "also good"}\n')
    with pytest.warns(UserWarning, match='2 bad line'):
        docs, skipped = D.read_documents(f)
    assert docs == ['good', 'also good'] and 'line 2' in skipped[str(f)]
    with pytest.raises(D.BadInputError, match='line 2: not JSON'):
        D.read_documents(f, on_bad='raise')
    with pytest.warns(UserWarning, match='3 bad line'):
        assert D.read_documents(f, text_field='body')[0] == ['no text field']


def test_fixtures_read_like_hub(tmp_path):
    stories, skipped = D.read_documents(FIX / 'tinystories.jsonl')
    assert len(stories) == 8 and not skipped
    hub = D.load_hub('json', data_files=str(FIX / 'tinystories.jsonl'), cache_dir=str(tmp_path))
    assert hub == stories
    assert D.load_hub('json', data_files=str(FIX / 'tinystories.jsonl'), limit=3, cache_dir=str(tmp_path)) == stories[:3]
    play = D.load_hub('text', data_files=str(FIX / 'shakespeare.txt'), sample_by='paragraph', cache_dir=str(tmp_path))
    assert play[0] == 'First Citizen:\nBefore we proceed any further, hear me speak.' and len(play) == 9
    assert play == D.read_documents(FIX / 'shakespeare.txt', sample_by='paragraph')[0]
    # a whole-file row (Tiny Shakespeare on the hub is one row per split) regrouped into paragraphs
    assert D.load_hub('text', data_files=str(FIX / 'shakespeare.txt'), sample_by='document', regroup='paragraph',
                      cache_dir=str(tmp_path)) == play


def test_load_hub_parquet_and_errors(tmp_path):
    pa = require('pyarrow'); pq = require('pyarrow.parquet')
    pq.write_table(pa.table({'story': ['x y z', 'a b c'], 'n': [1, 2]}), tmp_path / 'd.parquet')
    got = D.load_hub('parquet', data_files=str(tmp_path / 'd.parquet'), text_field='story', cache_dir=str(tmp_path / 'c'))
    assert got == ['x y z', 'a b c']
    with pytest.raises(KeyError, match="no 'text'"):
        D.load_hub('parquet', data_files=str(tmp_path / 'd.parquet'), cache_dir=str(tmp_path / 'c'))


def test_load_hub_named_corpus_calls_datasets(monkeypatch):
    datasets = require("datasets")
    calls = []
    class Fake(list):
        column_names = ['text']
        def __getitem__(self, k): return ['a\n', '', 'b\n', '\n', 'c'] if k == 'text' else list.__getitem__(self, k)
    monkeypatch.setattr(datasets, 'load_dataset', lambda **kw: calls.append(kw) or Fake())
    assert D.load_hub('wikitext-2') == ['a', 'b', 'c']  # one paragraph per non-empty row, as in WikiText
    assert calls[0] == dict(path='Salesforce/wikitext', name='wikitext-2-raw-v1', split='train')
    for spec in D.HUB_CORPORA.values(): assert '/' in spec['path'] and spec['text_field']


def test_load_corpus(tmp_path):
    assert D.load_corpus() == embedded_corpus()
    assert D.load_corpus('python-docs+stdlib')[:len(embedded_corpus())] == embedded_corpus()
    assert D.load_corpus(FIX / 'tinystories.jsonl') == D.read_documents(FIX / 'tinystories.jsonl')[0]
    assert D.load_corpus(str(FIX / 'shakespeare.txt'), sample_by='paragraph')[1] == 'All:\nSpeak, speak.'
    with pytest.raises(ValueError, match='unknown corpus'): D.load_corpus('tiny-stories')
    (tmp_path / 'e.txt').write_bytes(b'')
    with pytest.raises(D.BadInputError, match='e.txt'): D.load_corpus(tmp_path, on_bad='raise')


# ---------------------------------------------------------------- cleaning steps
def test_normalize_text():
    import unicodedata
    assert D.normalize_text('cafe\u0301') == 'caf\u00e9' == D.normalize_text('cafe\u0301', 'NFC')
    assert D.normalize_text('\ufb01 ＡＢ x²') == 'fi AB x2' and D.normalize_text('x²', 'NFC') == 'x²'
    assert D.normalize_text('a\u200bb\r\nc  \n\n\n\nd') == 'ab\nc\n\nd'
    assert D.normalize_text('def f():\n    return 1   \n') == 'def f():\n    return 1'  # indentation stays, trailing spaces go
    s = 'mixed ＦＵＬＬ\u00a0width\ufeff'
    assert D.normalize_text(D.normalize_text(s)) == D.normalize_text(s)
    assert unicodedata.is_normalized('NFKC', D.normalize_text(s))
    with pytest.raises(ValueError, match='form'): D.normalize_text('x', 'NFX')


def test_boilerplate_on_messy_page():
    page = (FIX / 'messy_page.txt').read_text()
    clean = D.strip_boilerplate(page)
    for junk in ('Home | News', 'cookies', 'ADVERTISEMENT', 'WIN $$$', 'All rights reserved', 'Share this', 'Read more',
                 'Skip to main content', 'Related: Ten tips'):
        assert junk not in clean, junk
    assert 'Why the standard library still matters' in clean
    assert 'The standard library is the part of that choice that is always there' in clean
    assert 'The modules that people reach for most often' in clean


def test_repeated_lines_and_step():
    pages = [f'SITE HEADER LINE\nArticle {i} says something different about topic {i}.\nfooter text of the site' for i in range(4)]
    rep = D.repeated_lines(pages, min_docs=3)
    assert set(rep) == {'site header line', 'footer text of the site'}
    assert D.repeated_lines(pages[:1] * 5, min_docs=3) == {}  # identical copies count once
    r = D.boilerplate_step(pages + ['Home | About | Contact'])
    assert r.docs == [f'Article {i} says something different about topic {i}.' for i in range(4)] and r.dropped == [4]


@pytest.mark.parametrize('text,lang', [
    ('The function returns the value of the expression, and it is called by the interpreter.', 'en'),
    ("La fonction renvoie la valeur de l'expression et elle est appelée par le programme.", 'fr'),
    ('Die Funktion gibt den Wert des Ausdrucks zurück, und sie wird von dem Programm aufgerufen.', 'de'),
    ('La función devuelve el valor de la expresión y es llamada por el programa.', 'es'),
    ('Функция возвращает значение выражения.', 'cyrillic'), ('x = [1, 2, 3]', 'unknown'), ('', 'unknown')])
def test_detect_language(text, lang):
    assert D.detect_language(text)[0] == lang


def test_quality_rules():
    good = ' '.join(embedded_corpus()[5].split()[:400])
    assert D.quality_issues(good) == []
    assert any('words' in i for i in D.quality_issues('too short to be a document'))
    spam = 'cheap watches buy cheap watches best cheap watches ' * 20
    assert any('gram' in i for i in D.quality_issues(spam))
    table = ' '.join(f'{i} {i * 3.5} {i ** 2} | the and of with' for i in range(60))
    assert any('letters' in i for i in D.quality_issues(table))
    sig = D.quality_signals('a b\na b\nc d e f')
    assert sig['dup_lines'] == pytest.approx(2 / 3) and sig['words'] == 8
    assert D.quality_issues(spam, rules={'max_top_ngram': {2: 1.0, 3: 1.0, 4: 1.0}, 'max_dup_ngram': {}, 'min_stop_words': 0,
                                         'max_dup_lines': 1, 'max_dup_line_chars': 1}) == []


# ---------------------------------------------------------------- de-identification
PII = [('mail jane.doe+x@mail.example.org now', 'mail <EMAIL> now'), ('from 192.168.0.1.', 'from <IP>.'),
       ('v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334 end', 'v6 <IP> end'), ('fe80::1 and 2001:db8::ff00:42:8329', '<IP> and <IP>'),
       ('SSN 078-05-1120', 'SSN <ID>'), ('card 4111 1111 1111 1111 ok', 'card <ID> ok'), ('card 4111-1111-1111-1111', 'card <ID>'),
       ('IBAN GB82 WEST 1234 5698 7654 32', 'IBAN <ID>'), ('passport number X1234567', 'passport number <ID>'),
       ('customer id: 88231907', 'customer id: <ID>'), ('call +44 20 7946 0958.', 'call <PHONE>.'),
       ('(555) 123-4567 or 555-123-4567 or 555.123.4567', '<PHONE> or <PHONE> or <PHONE>'), ('+1 415-555-0199', '<PHONE>')]
NOT_PII = ['released 2024-01-05 at 12:30:45', 'Python 3.12.1', 'parts 1.2.3.4.5', 'the value 18446744073709551615',
           'slice a[1::2] and b[::3]', 'invalid 999.1.1.1', 'card 4111 1111 1111 1112', 'costs $1,234.56', 'x+1 and +3.14',
           "format(120, '+010')", 'grammar a ::= b | c', 'ratio 3/4 and 10%', 'user@localhost', 'year 1999, page 123-45',
           'customer service is open', 'id(x) is unique', 'ISO 8601']


@pytest.mark.parametrize('text,want', PII)
def test_deidentify_positive(text, want):
    assert D.deidentify(text) == want


@pytest.mark.parametrize('text', NOT_PII)
def test_deidentify_negative(text):
    assert D.deidentify(text) == text and D.find_pii(text) == []


def test_deidentify_crawl_and_reference():
    crawl = D.sample_web_crawl(40, seed=3)
    planted = sorted(k for p in crawl for k in p['pii'])
    found = sorted(k for p in crawl for k, _ in D.find_pii(D.normalize_text(p['text'])))
    assert planted == found and planted
    assert [f for d in embedded_corpus() for f in D.find_pii(d)] == []  # no false positives on the reference


# ---------------------------------------------------------------- de-duplication
def test_exact_dedup():
    docs = ['A  b', 'x', 'a b', 'X ', 'y']
    r = D.exact_dedup_step(docs)
    assert r.docs == ['A  b', 'x', 'y'] and r.dropped == [2, 3]
    assert D.doc_hash('A b') == D.doc_hash('a   b') != D.doc_hash('A b', normalize=False)


def test_jaccard_matches_sklearn():
    jaccard_score = require('sklearn.metrics').jaccard_score
    rng = random.Random(0)
    for _ in range(50):
        a, b = set(rng.sample(range(40), rng.randint(1, 30))), set(rng.sample(range(40), rng.randint(0, 30)))
        vocab = sorted(a | b)
        assert D.jaccard(a, b) == pytest.approx(jaccard_score([v in a for v in vocab], [v in b for v in vocab]), abs=1e-12)
    assert D.jaccard(set(), set()) == 1.0 and D.jaccard({1}, set()) == 0.0


def test_shingles():
    assert D.shingles('A b c', k=5) == {'a b c'} and D.shingles('', k=3) == set()
    assert D.shingles('one two three four', k=2) == {'one two', 'two three', 'three four'}


def test_minhash_signature_reference_and_estimate():
    sh = D.shingles('the quick brown fox jumps over the lazy dog again and again', 3)
    sig = D.minhash_signature(sh, 64, seed=7)
    a, b = D.minhash_params(64, 7)
    import zlib
    want = [min((int(ai) * zlib.crc32(s.encode()) + int(bi)) % D.MINHASH_PRIME for s in sh) for ai, bi in zip(a, b)]
    assert sig.dtype == np.uint64 and sig.shape == (64,) and sig.tolist() == want  # plain-python big-int arithmetic
    assert np.array_equal(D.minhash_signature(set(), 8), np.full(8, D.MINHASH_PRIME, np.uint64))
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        A, B = D._related_shingle_sets(g)
        J, est = D.jaccard(A, B), D.minhash_similarity(D.minhash_signature(A, 256), D.minhash_signature(B, 256))
        assert abs(est - J) <= 5 * (J * (1 - J) / 256) ** 0.5 + 0.01


def test_lsh_candidates_match_bruteforce():
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 3, size=(40, 12)).astype(np.uint64)
    want = {(i, j) for i in range(40) for j in range(i + 1, 40)
            if any(np.array_equal(sigs[i, b * 3:(b + 1) * 3], sigs[j, b * 3:(b + 1) * 3]) for b in range(4))}
    assert D.lsh_candidates(sigs, 4, 3) == want
    with pytest.raises(ValueError, match='exceeds'): D.lsh_candidates(sigs, 5, 3)


def test_lsh_params_and_probability():
    for t in (0.5, 0.7, 0.8, 0.9):
        b, r = D.lsh_params(t, 128)
        assert b * r <= 128 and D.candidate_probability(t, b, r) >= 0.95
    assert D.candidate_probability(1.0, 3, 4) == 1 and D.candidate_probability(0.0, 3, 4) == 0
    assert D.candidate_probability(0.5, 2, 1) == pytest.approx(0.75)


def test_near_dedup_precision_recall():
    paras = D._prose_paragraphs()
    docs, planted = D.plant_near_duplicates(random.Random(5).sample(paras, 120), 80, seed=1)
    for t in (0.6, 0.8):
        q = D.dedup_quality(docs, t)
        assert q['true_pairs'] >= 10 and q['precision'] == 1.0 and q['recall'] >= 0.9 and q['compared'] < 0.01
        q = D.dedup_quality(docs, t, verify='minhash')
        assert q['precision'] >= 0.85 and q['recall'] >= 0.85
    light = [(i, j) for i, j, rate in planted if rate < 0.01]
    pairs, clusters = D.near_duplicates(docs, 0.8)
    assert all((i, j) in pairs for i, j in light)
    r = D.near_dedup_step(docs, 0.8)
    assert all(j in r.dropped for _, j in light)


# ---------------------------------------------------------------- whole pipeline
def test_clean_corpus_on_crawl():
    crawl = D.sample_web_crawl()
    clean, reports = D.clean_corpus([p['text'] for p in crawl])
    fate = D.trace_drops(len(crawl), reports)
    for p, f in zip(crawl, fate):
        if p['kind'] in ('copy', 'spam', 'stub', 'shouting') or p['kind'].startswith('foreign'): assert f is not None, p['kind']
        if p['kind'] == 'near-copy' and p['edit_rate'] <= 0.01 and not crawl[p['of']]['pii']: assert f is not None
    kept = [f is None for p, f in zip(crawl, fate) if p['kind'] == 'article']
    assert sum(kept) >= 0.9 * len(kept)
    assert not any(D.find_pii(d) for d in clean)
    kept_pii = [k for p, f in zip(crawl, fate) if f is None for k in p['pii']]  # planted personal data in pages that survive
    assert kept_pii and all(sum(d.count(f'<{k}>') for d in clean) >= kept_pii.count(k) for k in set(kept_pii))
    assert reports[0].docs_in == len(crawl) and reports[-1].docs_out == len(clean)
    assert all('cookies' not in d.lower() for d in clean)
    assert str(reports[0]).startswith('normalize')


def test_parallel_equals_serial():
    docs = [p['text'] for p in D.sample_web_crawl(30, seed=4)]
    assert D.map_docs(D.normalize_text, docs, num_proc=2) == [D.normalize_text(d) for d in docs]
    one, _ = D.clean_corpus(docs)
    two, _ = D.clean_corpus(docs, num_proc=2)
    assert one == two


def test_outliers():
    import textwrap
    docs = [textwrap.fill(p, 70) for p in D._prose_paragraphs()[:40]]
    docs.append(docs[0].upper())
    r = D.outlier_step(docs)
    assert r.dropped == [40]
    digits = docs[:40] + [docs[1] + ' 12']  # MAD of the digit fraction is 0: the floor keeps this document
    assert D.outlier_step(digits).dropped == []


def test_clean_config_validation():
    with pytest.raises(ValueError, match='near_dedup'): D.CleanConfig(near_dedup=1.5)
    with pytest.raises(ValueError, match='normalize'): D.CleanConfig(normalize='nfc')
    with pytest.raises(ValueError, match='val_fraction'): D.DataConfig(val_fraction=1.0)
    ref = D.CleanConfig.reference(seed=3)
    assert ref.quality is False and ref.boilerplate_min_docs is None and ref.seed == 3
    assert D.DataConfig(clean={'quality': False}).clean == D.CleanConfig(quality=False)


# ---------------------------------------------------------------- tokenise, pack, sample
class BigVocab:
    "A tokenizer with a vocabulary too big for uint16 (ids spread above 65535), no eot."
    vocab_size = 70_000
    def encode(self, text): return [65_536 + (b * 37) % 4_000 for b in text.encode()]


def test_token_dtype_and_encode_docs():
    tok = D.ByteTokenizer()
    ids = D.encode_docs(['ab', 'é'], tok)
    assert ids.dtype == np.uint16 and ids.tolist() == [97, 98, 256, 195, 169, 256]
    assert tok.decode(ids.tolist()) == 'abé'
    big = D.encode_docs(['hi'], BigVocab())
    assert big.dtype == np.uint32 and big.max() >= 65536 and len(big) == 2  # no eot_id: nothing inserted
    assert D.token_dtype(65536) == np.uint16 and D.token_dtype(65537) == np.uint32
    class Broken:
        vocab_size = 10
        def encode(self, t): return [12]
    with pytest.raises(ValueError, match='outside its vocab_size'): D.encode_docs(['x'], Broken())
    with pytest.raises(TypeError, match='encode'): D.encode_docs(['x'], object())


def test_write_read_tokens(tmp_path):
    ids = np.arange(1000, dtype=np.uint16)
    D.write_tokens(tmp_path / 't.bin', ids)
    mm = D.read_tokens(tmp_path / 't.bin')
    assert isinstance(mm, np.memmap) and np.array_equal(mm, ids)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # no temp files left
    with open(tmp_path / 't.bin', 'r+b') as f: f.truncate(100)
    with pytest.raises(ValueError, match='truncated'): D.read_tokens(tmp_path / 't.bin')
    with pytest.raises(FileNotFoundError): D.read_tokens(tmp_path / 'missing.bin')
    with pytest.raises(ValueError, match='no tokens'): D.write_tokens(tmp_path / 'e.bin', np.zeros(0, np.uint16))
    with pytest.raises(ValueError, match='uint16/uint32'): D.write_tokens(tmp_path / 'e.bin', np.zeros(3, np.int64))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def boom(tmp): tmp.write_text('half'); raise RuntimeError('interrupted')
    with pytest.raises(RuntimeError): D.atomic_write(tmp_path / 'out.txt', boom)
    assert list(tmp_path.iterdir()) == []


def test_random_windows():
    data = np.arange(500, dtype=np.uint16)
    it = D.RandomWindows(data, batch_size=6, block_size=20, seed=3)
    x, y = next(it)
    assert x.shape == y.shape == (6, 20) and x.dtype == y.dtype == torch.int64 and x.device.type == 'cpu'
    assert torch.equal(y, x + 1) and torch.equal(x[:, 1:], y[:, :-1])  # arange data: y is x shifted by one
    assert (x[:, 0] <= 500 - 21).all()
    x2, _ = D.RandomWindows(data, 6, 20, seed=3).sample()
    assert torch.equal(x, x2)
    assert D.RandomWindows(data, 1, 499).sample()[0].shape == (1, 499)
    with pytest.raises(ValueError, match='at least 501 tokens'): D.RandomWindows(data, 2, 500)
    with pytest.raises(ValueError, match='batch_size'): D.RandomWindows(data, 0, 5)


# ---------------------------------------------------------------- prepare_data: cache and resume
def _corpus():
    return [p['text'] for p in D.sample_web_crawl(24, seed=2)]


def test_prepare_data_cache_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv('LLM_LAB_CACHE', str(tmp_path))
    docs, tok = _corpus(), D.ByteTokenizer()
    cfg = D.DataConfig(shard_docs=8)
    calls = []
    a = D.prepare_data(docs, tok, cfg, on_shard=lambda s, i: calls.append((s, i)))
    assert a.path.parent == tmp_path / 'data' and a.path.name == D.data_key(docs, tok, cfg)
    assert calls and a.meta['docs']['val'] >= 1 and a.meta['dtype'] == 'uint16'
    n = len(calls)
    b = D.prepare_data(docs, tok, cfg, on_shard=lambda s, i: calls.append((s, i)))
    assert len(calls) == n and b.meta == a.meta  # cached: nothing recomputed
    assert D.data_key(docs, tok, D.DataConfig(shard_docs=8, seed=1)) != a.meta['key']
    assert D.data_key(docs[1:], tok, cfg) != a.meta['key'] and D.data_key(docs, BigVocab(), cfg) != a.meta['key']
    # the packed stream is the clean documents, each followed by eot
    clean = [json.loads(l)['text'] for l in (a.path / 'clean.jsonl').read_text().splitlines()]
    order = np.random.default_rng(cfg.seed).permutation(len(clean))
    val_docs = [clean[i] for i in sorted(order[:a.meta['docs']['val']].tolist())]
    assert np.array_equal(a.val, D.encode_docs(val_docs, tok))
    assert len(a.train) + len(a.val) == sum(len(d.encode()) + 1 for d in clean)
    x, y = next(a.batches('val', 2, 16))
    assert x.shape == (2, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert not list(a.path.glob('*.npy')) and not list(a.path.glob('.*'))


def test_prepare_data_resumes(tmp_path):
    docs, tok = _corpus(), D.ByteTokenizer()
    cfg = D.DataConfig(clean=None, shard_docs=4)
    class Stop(Exception): pass
    def stop(split, i):
        if split == 'train' and i == 2: raise Stop
    with pytest.raises(Stop): D.prepare_data(docs, tok, cfg, root=tmp_path / 'r', on_shard=stop)
    assert not (tmp_path / 'r' / 'meta.json').exists() and len(list((tmp_path / 'r').glob('train_*.npy'))) == 3
    done = []
    resumed = D.prepare_data(docs, tok, cfg, root=tmp_path / 'r', on_shard=lambda s, i: done.append((s, i)))
    assert ('train', 0) not in done and ('train', 3) in done and resumed.meta['shards_reused'] >= 3
    fresh = D.prepare_data(docs, tok, cfg, root=tmp_path / 'f')
    assert np.array_equal(resumed.train, fresh.train) and np.array_equal(resumed.val, fresh.val)


def test_prepare_data_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match='no documents left after cleaning'):
        D.prepare_data(['!!! ###', 'x'], D.ByteTokenizer(), root=tmp_path)
    with pytest.raises(TypeError, match='encode'):
        D.prepare_data(['some text'], object(), root=tmp_path / 'b')


def test_prepare_data_with_bpe(tmp_path):
    import llm_lab.tokenizer as tokmod
    docs = _corpus()
    bpe = tokmod.BPETokenizer.train(docs, vocab_size=300, special_tokens=('<|endoftext|>',))
    d = D.prepare_data(docs, bpe, D.DataConfig(shard_docs=8), root=tmp_path)
    assert d.meta['tokenizer']['eot_id'] == bpe.eot_id and int(np.max(d.train)) < bpe.vocab_size
    assert (np.asarray(d.train) == bpe.eot_id).sum() == d.meta['docs']['train']


# ---------------------------------------------------------------- properties (hypothesis)
from hypothesis import given, settings, strategies as st

_messy = st.text(alphabet=st.sampled_from(list('ab e\u0301\u00e9\ufb01\u00a0\u200b\r\n\t\x01 ²Ａ.')), max_size=40)
_piiish = st.text(alphabet=st.sampled_from(list('0123456789 .-:@()+abcxyzACB')), max_size=60)


@settings(max_examples=200, deadline=None)
@given(_messy, st.sampled_from(['NFC', 'NFKC']))
def test_normalize_is_idempotent(text, form):
    once = D.normalize_text(text, form)
    assert D.normalize_text(once, form) == once
    assert '\u200b' not in once and '\r' not in once and '\x01' not in once


@settings(max_examples=300, deadline=None)
@given(_piiish)
def test_deidentify_is_idempotent(text):
    once = D.deidentify(text)
    assert D.deidentify(once) == once


@settings(max_examples=100, deadline=None)
@given(st.sets(st.text(min_size=1, max_size=6), max_size=20), st.sets(st.text(min_size=1, max_size=6), max_size=20))
def test_minhash_of_union_is_elementwise_min(a, b):
    sa, sb, su = (D.minhash_signature(x, 32, seed=1) for x in (a, b, a | b))
    assert np.array_equal(su, np.minimum(sa, sb))
    assert 0.0 <= D.jaccard(a, b) == D.jaccard(b, a) <= 1.0


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 300), st.integers(1, 8), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_random_windows_are_slices(n, batch, block, seed):
    block = min(block, n - 1)
    data = np.random.default_rng(seed).integers(0, 65535, n).astype(np.uint16)
    x, y = D.RandomWindows(data, batch, block, seed=seed).sample()
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        starts = [i for i in range(n - block) if data[i:i + block].tolist() == row_x]
        assert any(data[i + 1:i + block + 1].tolist() == row_y for i in starts)


# ---------------------------------------------------------------- special tokens, bad input, optional datasets, plots
def test_literal_endoftext_in_a_document_is_text():
    from llm_lab.tokenizer import BPETokenizer
    docs = _corpus()
    bpe = BPETokenizer.train(docs, vocab_size=300, special_tokens=('<|endoftext|>',))
    doc = 'The string <|endoftext|> inside a page is just text.'
    ids = D.encode_docs([doc, 'next'], bpe)
    assert ids.tolist().count(bpe.eot_id) == 2 and ids[-1] == bpe.eot_id        # the two appended separators only
    first = ids[:ids.tolist().index(bpe.eot_id)].tolist()
    assert bpe.decode(first) == doc and len(first) > 5                          # the literal was encoded as text
    d = D.prepare_data([doc] * 3 + docs, bpe, D.DataConfig(clean=None, val_fraction=0.0), root=_tmp_root())
    assert (np.asarray(d.train) == bpe.eot_id).sum() == len(docs) + 3
    class Leaky(D.ByteTokenizer):  # a tokenizer that still turns the string into the special id
        def encode(self, text): return [256 if text.startswith('<|endoftext|>', i) else b for i, b in enumerate(text.encode())]
    with pytest.raises(ValueError, match='end-of-text id 256'): D.encode_docs(['a <|endoftext|> b'], Leaky())


def _tmp_root():
    import tempfile
    return Path(tempfile.mkdtemp())


@pytest.mark.parametrize('call,arg', [
    (lambda: D.candidate_probability(1.5, 4, 2), "s \\(a Jaccard"), (lambda: D.candidate_probability(-0.1, 4, 2), "s \\(a Jaccard"),
    (lambda: D.candidate_probability(0.5, 0, 2), 'bands'), (lambda: D.candidate_probability(0.5, 2, 1.5), 'rows'),
    (lambda: D.lsh_candidates(np.zeros(8, np.uint64), 2, 2), 'signatures'), (lambda: D.lsh_candidates(np.zeros((3, 8), np.uint64), 0, 2), 'bands'),
    (lambda: D.lsh_params(0.8, num_perm=0), 'num_perm'), (lambda: D.minhash_params(0), 'num_perm'), (lambda: D.shingles('a b', 0), 'k'),
    (lambda: D.lsh_params(1.2), 'threshold')])
def test_bad_arguments_are_named(call, arg):
    with pytest.raises(ValueError, match=arg): call()


def test_map_docs_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'datasets', None)  # as if not installed
    assert D.map_docs(str.upper, ['a', 'b']) == ['A', 'B']  # one process needs nothing
    with pytest.raises(ImportError, match=r'pip install "llm_lab\[hub\]"'): D.map_docs(str.upper, ['a', 'b', 'c', 'd'], num_proc=2)


def test_plots_draw():
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    docs = D._prose_paragraphs()[:12]
    ax = D.plot_lsh(4, 2, docs=docs + [d.upper() for d in docs], num_perm=16)
    assert ax.get_title() == 'LSH with 4 bands × 2 rows' and len(ax.lines) >= 2
    texts = docs + docs[:3]
    reports = [D.normalize_step(texts), D.exact_dedup_step(texts)]
    ax = D.plot_funnel(reports)
    assert len(ax.patches) == 2 * (len(reports) + 1)
    with pytest.raises(ValueError, match='num_perm'): D.plot_lsh(8, 4, docs=docs, num_perm=16)
    plt.close('all')
