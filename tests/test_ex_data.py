"""The checkers of chapter 08's exercises: the stub is 'not written yet', other correct implementations pass, named mistakes are rejected with their hint."""
import hashlib, re, zlib

import numpy as np
import pytest

from llm_lab.core import CheckFailed
from llm_lab import data as D
from conftest import load_solution, stub

SOL = load_solution('08_data.py')


@pytest.mark.parametrize('check', [D.check_minhash_signature, D.check_lsh_candidates, D.check_deidentify, D.check_jaccard,
                                   D.check_candidate_probability])
def test_stub_is_not_attempted(check):
    report = check(stub)
    assert report.attempted is False and not report.ok and 'not written yet' in str(report)


# ---------------------------------------------------------------- MinHash signatures
def _md5_family(s, n):  # another valid family: md5 of "i:shingle", 48 bits
    if not s: return np.zeros(n, np.uint64)
    return np.array([min(int(hashlib.md5(f'{i}:{x}'.encode()).hexdigest()[:12], 16) for x in s) for i in range(n)])


def test_minhash_accepts_valid_families():
    assert D.check_minhash_signature(SOL.my_minhash_signature).ok
    assert D.check_minhash_signature(lambda s, n: D.minhash_signature(s, n, seed=3)).ok
    assert D.check_minhash_signature(_md5_family, trials=8).ok


MINHASH_WRONG = {
    'tiled: 64 hash functions repeated to fill 256': (lambda s, n: np.tile(D.minhash_signature(s, 64), n // 64), 'each position needs its own'),
    "Python's salted hash()": (lambda s, n: np.array([min((hash((i, x)) for x in s), default=0) for i in range(n)]), 'salted per process'),
    'salted hash() of the bytes': (lambda s, n: np.array([min((hash(f'{i}{x}'.encode()) for x in s), default=0) for i in range(n)]), 'salted per process'),
    'one hash function for every position': (lambda s, n: np.full(n, min((zlib.crc32(x.encode()) for x in s), default=0)), 'each position needs its own'),
    'not deterministic': (lambda s, n: np.random.default_rng().integers(0, 2**31, n), 'the same set'),
    'wrong length': (lambda s, n: D.minhash_signature(s, n)[: n // 2], 'shape'),
    'shifted copies of one hash (correlated positions)': (lambda s, n: min((zlib.crc32(x.encode()) for x in s), default=0) + np.arange(n), None),
    'not a random permutation family': (lambda s, n: np.array([max(D.shingle_hashes(s), default=0) % (i + 2) for i in range(n)]), None),
}


@pytest.mark.parametrize('name', MINHASH_WRONG)
def test_minhash_rejects(name):
    wrong, hint = MINHASH_WRONG[name]
    with pytest.raises(CheckFailed) as e: D.check_minhash_signature(wrong)
    assert hint is None or hint in str(e.value), str(e.value)


def test_salted_hash_simulation_restores_builtins():
    import builtins
    real = builtins.hash
    with D._hash_of_another_process(7): assert hash('x') != real('x')
    assert builtins.hash is real


# ---------------------------------------------------------------- LSH banding
def _lsh_list_reversed(sigs, bands, rows):  # correct: a list, pairs as (j, i), numpy-int indices, tuple keys
    out = []
    for b in range(bands):
        seen = {}
        for i in range(len(sigs)):
            key = tuple(sigs[i, b * rows:(b + 1) * rows])
            out += [(np.int64(i), j) for j in seen.get(key, [])]
            seen.setdefault(key, []).append(i)
    return out


def test_lsh_accepts_correct_variants():
    assert D.check_lsh_candidates(SOL.my_lsh_candidates).ok
    assert D.check_lsh_candidates(D.lsh_candidates).ok
    assert D.check_lsh_candidates(_lsh_list_reversed).ok


def _cut(extra):
    def f(sigs, bands, rows):
        pairs = set()
        for b in range(bands):
            for i in range(len(sigs)):
                for j in range(i + 1, len(sigs)):
                    if np.array_equal(sigs[i, b * rows:(b + 1) * rows + extra], sigs[j, b * rows:(b + 1) * rows + extra]): pairs.add((i, j))
        return pairs
    return f


LSH_WRONG = {
    'band one column too wide': (_cut(1), 'one column too wide'),
    'band one column too narrow': (_cut(-1), 'one column too narrow'),
    'bands and rows swapped': (lambda s, b, r: D.lsh_candidates(s[:, :b * r], r, b), 'swapped'),
    'all bands must match': (lambda s, b, r: D._lsh_variant(s, b, r, 'all_bands'), 'ANY one band'),
    'whole signature split into bands': (lambda s, b, r: D._lsh_variant(s, b, r, 'split_all'), 'first bands*rows columns'),
    'documents paired with themselves': (lambda s, b, r: D.lsh_candidates(s, b, r) | {(i, i) for i in range(len(s))}, 'never its own candidate'),
    'no pairs at all': (lambda s, b, r: set(), None),
}


@pytest.mark.parametrize('name', LSH_WRONG)
def test_lsh_rejects(name):
    wrong, hint = LSH_WRONG[name]
    with pytest.raises(CheckFailed, match='missing') as e: D.check_lsh_candidates(wrong)
    assert hint is None or hint in str(e.value), str(e.value)


# ---------------------------------------------------------------- de-identification, Jaccard, the S-curve
def test_other_checkers_accept_solutions_and_references():
    assert D.check_deidentify(SOL.my_deidentify).ok and D.check_deidentify(D.deidentify).ok
    assert D.check_jaccard(D.jaccard).ok and D.check_candidate_probability(D.candidate_probability).ok


@pytest.mark.parametrize('wrong', [
    lambda t: re.sub(r'[\w.+-]+@[\w-]+(\.[\w-]+)+', '<EMAIL>', t),                      # e-mails only
    lambda t: re.sub(r'\d[\d .:-]{6,}\d', '<PHONE>', D.deidentify(t)),                  # every run of digits: dates and versions too
    lambda t: t])
def test_check_deidentify_rejects(wrong):
    with pytest.raises(CheckFailed): D.check_deidentify(wrong, trials=60)


@pytest.mark.parametrize('wrong', [
    lambda a, b: len(a & b) / max(len(a) + len(b), 1),        # Dice-like denominator
    lambda a, b: len(a & b) / len(a | b),                      # crashes on two empty sets
    lambda a, b: len(a & b) / max(len(a | b), 1)])             # two empty sets give 0, not 1
def test_check_jaccard_rejects(wrong):
    with pytest.raises(CheckFailed): D.check_jaccard(wrong, trials=60)


@pytest.mark.parametrize('wrong', [lambda s, b, r: s ** (r * b), lambda s, b, r: 1 - (1 - s ** b) ** r,
                                   lambda s, b, r: (1 - (1 - s) ** r) ** b])
def test_check_candidate_probability_rejects(wrong):
    with pytest.raises(CheckFailed): D.check_candidate_probability(wrong)
