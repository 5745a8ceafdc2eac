"""Solutions to the exercises of chapter 04 (byte-level BPE tokenizer).

Each function has the name of the notebook's stub; `CHECKS` maps it to the checker in `llm_lab.tokenizer`
that must accept it (tests/test_solutions.py runs them all)."""
from collections import defaultdict

from llm_lab.tokenizer import merge

CHECKS = {
    'my_merge_update': 'llm_lab.tokenizer:check_merge_update',
    'my_train_bpe': 'llm_lab.tokenizer:check_train_bpe',
    'my_encode': 'llm_lab.tokenizer:check_encode',
}


def my_merge_update(words, freqs, pair_counts, where, pair, new_id):
    "Merge `pair` into `new_id` in every word that contains it, updating `pair_counts` and `where` incrementally."
    for i in where.pop(pair, ()):            # only the words that contain the pair (maybe a stale few: harmless)
        w, f = words[i], freqs[i]
        for p in zip(w, w[1:]):              # take the word's old pairs out of the counts...
            pair_counts[p] -= f
        w = words[i] = merge(w, pair, new_id)
        for p in zip(w, w[1:]):              # ...and put its new pairs in
            pair_counts[p] += f
            where[p].add(i)
    pair_counts.pop(pair, None)              # its count is 0 now


def my_train_bpe(counts, num_merges):
    "The merged pairs, in order; merge k creates token id 256 + k."
    words, freqs = [list(w) for w in counts], list(counts.values())
    pair_counts, where = defaultdict(int), defaultdict(set)
    for i, w in enumerate(words):                      # count every pair once, at the start
        for p in zip(w, w[1:]):
            pair_counts[p] += freqs[i]
            where[p].add(i)
    merges = []
    while len(merges) < num_merges:
        live = {p: c for p, c in pair_counts.items() if c > 0}
        if not live: break                             # every word is a single token
        pair = max(live, key=lambda p: (live[p], -p[0], -p[1]))  # highest count; ties: smallest pair, as the chapter
        my_merge_update(words, freqs, pair_counts, where, pair, 256 + len(merges))  # incremental: no recount
        merges.append(pair)
    return merges


def my_encode(ids, merges):
    "The token ids after applying the merges, lowest rank first."
    ranks = {pair: r for r, pair in enumerate(merges)}
    ids = list(ids)
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float('inf')))  # the earliest learned pair present
        if pair not in ranks: break                                                # nothing left to merge
        ids = merge(ids, pair, merges[pair])
    return ids
