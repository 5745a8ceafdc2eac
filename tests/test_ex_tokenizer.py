"""The exercise checkers of chapter 04 (llm_lab.tokenizer): each accepts correct work written in other ways (other
tie-break rules, other loops), rejects the usual mistakes with a hint, and says 'not written yet' to the stub."""
from collections import Counter, defaultdict

import pytest

from llm_lab.core import CheckFailed
from llm_lab.tokenizer import (check_encode, check_get_pair_counts, check_merge, check_merge_update, check_train_bpe,
                               encode_ids, get_pair_counts, learn_merges, merge, naive_bpe_merges)


def stub(*args): raise NotImplementedError


@pytest.mark.parametrize('checker', [check_merge_update, check_train_bpe, check_encode, check_get_pair_counts, check_merge])
def test_stub_is_not_attempted(checker, capsys):
    report = checker(stub)
    assert not report.attempted and not report.ok and 'not written yet' in capsys.readouterr().out


# ---------------------------------------------------------------- exercise 1: the incremental merge step
def update_ok(words, freqs, pair_counts, where, pair, new_id):
    "Correct: the chapter's loop, deleting counts that reach 0 and stale `where` entries."
    for i in sorted(where.pop(pair)):
        w, f = words[i], freqs[i]
        for p in zip(w, w[1:]): pair_counts[p] -= f
        w = words[i] = merge(w, pair, new_id)
        for p in zip(w, w[1:]): pair_counts[p] += f; where[p].add(i)
    for p in [p for p, c in pair_counts.items() if c == 0]: del pair_counts[p]


def update_ok_counter(words, freqs, pair_counts, where, pair, new_id):
    "Correct, another way: the difference of two Counters per word; zero counts kept."
    for i in list(where[pair]):
        old, new = Counter(zip(words[i], words[i][1:])), None
        words[i] = merge(words[i], pair, new_id)
        new = Counter(zip(words[i], words[i][1:]))
        for p in old | new: pair_counts[p] += (new[p] - old[p]) * freqs[i]
        for p in new: where[p].add(i)


def update_recount(words, freqs, pair_counts, where, pair, new_id):
    "Wrong (not incremental): merges every word and recounts the whole corpus."
    for i, w in enumerate(words): words[i] = merge(w, pair, new_id)
    pair_counts.clear(); where.clear()
    for i, w in enumerate(words):
        for p in zip(w, w[1:]): pair_counts[p] += freqs[i]; where[p].add(i)


def update_unweighted(words, freqs, pair_counts, where, pair, new_id):
    "Wrong: adds the new pairs once per word, not × the word's count."
    for i in where.pop(pair):
        w, f = words[i], freqs[i]
        for p in zip(w, w[1:]): pair_counts[p] -= f
        w = words[i] = merge(w, pair, new_id)
        for p in zip(w, w[1:]): pair_counts[p] += 1; where[p].add(i)


def update_no_subtract(words, freqs, pair_counts, where, pair, new_id):
    "Wrong: adds the new pairs but never takes the old ones out."
    for i in where.pop(pair):
        w = words[i] = merge(words[i], pair, new_id)
        for p in zip(w, w[1:]): pair_counts[p] += freqs[i]; where[p].add(i)


def update_overlap(words, freqs, pair_counts, where, pair, new_id):
    "Wrong: merges overlapping occurrences (a a a -> X X), as a naive str.replace-like scan does."
    for i in where.pop(pair):
        w, f = words[i], freqs[i]
        for p in zip(w, w[1:]): pair_counts[p] -= f
        out, j = [], 0
        while j < len(w):
            if j + 1 < len(w) and (w[j], w[j + 1]) == pair: out.append(new_id); j += 1 if pair[0] == pair[1] and j + 2 < len(w) and w[j + 2] == pair[1] else 2
            else: out.append(w[j]); j += 1
        w = words[i] = out
        for p in zip(w, w[1:]): pair_counts[p] += f; where[p].add(i)


def update_forget_where(words, freqs, pair_counts, where, pair, new_id):
    "Wrong: updates the counts but not `where`, so later merges miss words."
    for i in where.pop(pair):
        w, f = words[i], freqs[i]
        for p in zip(w, w[1:]): pair_counts[p] -= f
        w = words[i] = merge(w, pair, new_id)
        for p in zip(w, w[1:]): pair_counts[p] += f


@pytest.mark.parametrize('fn', [update_ok, update_ok_counter])
def test_merge_update_accepts_correct(fn):
    assert check_merge_update(fn, trials=100, seed=0).ok


@pytest.mark.parametrize('name,fn,hint', [
    ('not incremental (recounts everything)', update_recount, 'visit only the words in where[pair]'),
    ('unweighted new pairs', update_unweighted, "weight each pair by its word's count"),
    ('old pairs never subtracted', update_no_subtract, 'must drop out'),
    ('overlapping merge', update_overlap, 'merge left to right and skip both ids'),
    ('where not updated', update_forget_where, 'add i to where[p]'),
])
def test_merge_update_rejects(name, fn, hint):
    with pytest.raises(CheckFailed) as e: check_merge_update(fn, trials=100, seed=0)
    assert 'expected' in str(e.value) or 'you visited' in str(e.value) or 'misses' in str(e.value)
    assert hint in str(e.value), (name, str(e.value))


# ---------------------------------------------------------------- exercise 2: the trainer
def train_heap(counts, num_merges):
    "Correct: the library's fast trainer (ties: smallest pair), with fresh ids."
    return naive_bpe_merges(counts, num_merges)


def train_largest_tie(counts, num_merges):
    "Correct too: ties go to the LARGEST pair; the checker accepts any tie-break rule."
    words, merges = [(list(w), c) for w, c in counts.items()], []
    for k in range(num_merges):
        pairs = Counter()
        for w, c in words:
            for p in zip(w, w[1:]): pairs[p] += c
        if not pairs: break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best); words = [(merge(w, best, 256 + k), c) for w, c in words]
    return merges


def train_unweighted(counts, num_merges):
    "Wrong: counts each pair once per distinct word, ignoring how often the word occurs."
    return naive_bpe_merges({w: 1 for w in counts}, num_merges)


def train_stale(counts, num_merges):
    "Wrong: counts pairs once and never updates them after a merge."
    pairs = Counter()
    for w, c in counts.items():
        for p in zip(w, w[1:]): pairs[p] += c
    return [p for p, _ in pairs.most_common(num_merges)]


def train_wrong_ids(counts, num_merges):
    "Wrong: numbers the new tokens from 255 (an off-by-one in the ids)."
    words, merges = [(list(w), c) for w, c in counts.items()], []
    for k in range(num_merges):
        pairs = Counter()
        for w, c in words:
            for p in zip(w, w[1:]): pairs[p] += c
        if not pairs: break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best); words = [(merge(w, best, 300 + k), c) for w, c in words]
    return merges


def train_one_short(counts, num_merges):
    "Wrong: an off-by-one loop that learns one merge too few."
    return naive_bpe_merges(counts, num_merges)[:-1] if num_merges > 1 else naive_bpe_merges(counts, num_merges)


@pytest.mark.parametrize('fn', [train_heap, train_largest_tie])
def test_train_bpe_accepts_any_tie_break(fn):
    assert check_train_bpe(fn, trials=100, seed=0).ok


def test_train_bpe_accepts_the_library_trainer():
    "learn_merges (lazy heap, incremental counts) is a valid trainer when no two merges spell the same bytes."
    def via_library(counts, n):
        vocab, merges = learn_merges(counts, 256 + n)
        assert all(new == 256 + k for k, new in enumerate(merges.values()))
        return list(merges)
    assert check_train_bpe(via_library, trials=100, seed=1).ok


@pytest.mark.parametrize('name,fn,hint', [
    ('ignores word counts', train_unweighted, "not once per word"),
    ('stale counts', train_stale, 'your counts are stale'),
    ('new ids off by one', train_wrong_ids, 'merge k must get the new id 256 + k'),
    ('one merge short', train_one_short, 'stop only at num_merges'),
])
def test_train_bpe_rejects(name, fn, hint):
    with pytest.raises(CheckFailed) as e: check_train_bpe(fn, trials=100, seed=0)
    assert 'inputs: counts=' in str(e.value) and hint in str(e.value), (name, str(e.value))


# ---------------------------------------------------------------- exercise 3: the encoder
def encode_one_pass(ids, merges):
    "Correct, another way: each merge once, in rank order, over the whole sequence."
    for pair, new in merges.items(): ids = merge(ids, pair, new)
    return ids


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


@pytest.mark.parametrize('fn', [encode_ids, encode_one_pass])
def test_encode_accepts_correct(fn):
    assert check_encode(fn, trials=100, seed=0).ok


@pytest.mark.parametrize('name,fn,hint', [
    ('first pair, not lowest rank', encode_first_pair, 'wrong order of merges'),
    ('most frequent pair', encode_most_frequent, 'wrong order of merges'),
    ('stops after one merge', encode_single_pass, 'keep going until no adjacent pair has a rank'),
])
def test_encode_rejects(name, fn, hint):
    with pytest.raises(CheckFailed) as e: check_encode(fn, trials=100, seed=0)
    assert 'expected' in str(e.value) and hint in str(e.value), (name, str(e.value))


# ---------------------------------------------------------------- the warm-up checkers
def non_overlapping_counts(ids):
    "Wrong: skips the second of two overlapping pairs."
    out, i = {}, 0
    while i < len(ids) - 1:
        p = (ids[i], ids[i + 1]); out[p] = out.get(p, 0) + 1
        i += 2 if ids[i] == ids[i + 1] else 1
    return out


def merge_right_to_left(ids, pair, new_id):
    "Wrong: resolves overlaps from the right."
    return merge(ids[::-1], pair[::-1], new_id)[::-1]


def test_warmup_checkers():
    assert check_get_pair_counts(lambda ids: dict(Counter(zip(ids, ids[1:]))), seed=0).ok
    assert check_merge(merge, seed=0).ok
    with pytest.raises(CheckFailed, match='expected'): check_get_pair_counts(non_overlapping_counts, trials=60, seed=0)
    with pytest.raises(CheckFailed, match='expected'): check_merge(merge_right_to_left, trials=60, seed=0)
